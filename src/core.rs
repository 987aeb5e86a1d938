//! The state one layer tree shares: store, key space, policies, settings,
//! counters, the circuit breaker and the in-process flights. The service and
//! the handle both work through it.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use http::HeaderName;

use crate::{
    breaker::Breaker,
    decoded::Decoded,
    entry::Entry,
    error::StoreError,
    key::KeySpace,
    policy::Policies,
    replay::{Replay, ReplayConfig},
    stampede::{Flights, Seen},
    store::{Backend, BoxFuture, Write},
    CacheStats,
};

/// The settings of a layer that are not per route.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) status_header: Option<HeaderName>,
    pub(crate) budget: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) single_flight: bool,
    pub(crate) distributed_lock: bool,
    pub(crate) lock_ttl: Duration,
    pub(crate) coalesce_timeout: Duration,
    pub(crate) origin_timeout: Option<Duration>,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) tag_headers: Vec<HeaderName>,
    pub(crate) origin_key: crate::key::OriginKey,
    /// The time budget of a [`CacheHandle`](crate::CacheHandle) call.
    pub(crate) handle_timeout: Duration,
    pub(crate) targeted: Targeted,
    pub(crate) cache_status: Option<crate::status::CacheStatusField>,
}

impl Settings {
    /// Removes what speaks to this cache alone from a response that is not
    /// stored: the tag fields and extension, and this cache's own targeted
    /// field.
    pub(crate) fn strip_cache_fields(&self, parts: &mut http::response::Parts) {
        crate::tags::strip_tags(&self.tag_headers, parts);
        if let Some(own) = self.targeted.own() {
            parts.headers.remove(own);
        }
    }
}

/// The targeted cache-control fields (RFC 9213) this cache follows, most
/// specific first: its own field (if any) at the head, then the others.
#[derive(Debug, Clone)]
pub(crate) struct Targeted {
    fields: Vec<HeaderName>,
    own: bool,
}

impl Targeted {
    pub(crate) fn new(own: Option<HeaderName>, others: Vec<HeaderName>) -> Self {
        let has_own = own.is_some();
        let others = others.into_iter().filter(|n| own.as_ref() != Some(n));
        Self {
            fields: own.clone().into_iter().chain(others).collect(),
            own: has_own,
        }
    }

    /// The fields a route follows: all of them in origin-driven mode; in
    /// policy-driven mode only this cache's own, with which a handler
    /// overrides its route's TTL for one response.
    pub(crate) fn for_mode(&self, origin_driven: bool) -> &[HeaderName] {
        if origin_driven {
            &self.fields
        } else {
            &self.fields[..usize::from(self.own)]
        }
    }

    /// This cache's own field: for this cache alone, never sent on.
    pub(crate) fn own(&self) -> Option<&HeaderName> {
        self.fields.first().filter(|_| self.own)
    }
}

pub(crate) struct CacheCore {
    pub(crate) store: Arc<dyn Backend>,
    pub(crate) keys: KeySpace,
    pub(crate) policies: Policies,
    pub(crate) settings: Settings,
    pub(crate) counters: Counters,
    pub(crate) flights: Flights,
    /// Invalidations the store has not confirmed yet.
    pub(crate) replay: Replay,
    pub(crate) breaker: Breaker,
    pub(crate) store_healthy: AtomicBool,
    /// The lock token of this layer's flight leaders (with single-flight on):
    /// a lock held with it belongs to this process, and the request leading
    /// the key here holds it, whichever request took it.
    pub(crate) token: String,
    /// Keys recently found stored.
    pub(crate) seen: Seen,
    /// Entries decoded lately, reused when a store returns the same bytes.
    pub(crate) decoded: Decoded,
    /// Cleared once the store showed it cannot take the lock in a lookup
    /// (`Backend::fetch_or_lock` gave `None`), so the layer stops preparing
    /// for it.
    pub(crate) prelocks: AtomicBool,
    /// What the store is and where (`Backend::describe`), for logs.
    pub(crate) store_name: Box<str>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) bypasses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) bytes_stored: AtomicU64,
    pub(crate) body_bytes: AtomicU64,
    pub(crate) body_bytes_at_rest: AtomicU64,
    pub(crate) corrupt_entries: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) lock_waits: AtomicU64,
    pub(crate) lock_timeouts: AtomicU64,
    pub(crate) background_refreshes: AtomicU64,
    pub(crate) early_refreshes: AtomicU64,
    pub(crate) revalidations: AtomicU64,
    pub(crate) not_modified: AtomicU64,
    pub(crate) unsafe_invalidations: AtomicU64,
    pub(crate) fills_fenced: AtomicU64,
}

/// The outcome of a lookup.
pub(crate) enum Lookup {
    /// An entry of the current generation, fresh or not: the caller decides
    /// whether it may be served, revalidated, or only stand in for a failure.
    Found {
        entry: Arc<Entry>,
        generation: u64,
        /// When it was judged (milliseconds since the epoch): the clock
        /// reading its freshness and `age` are computed from.
        now: u64,
    },
    /// Not there (or unusable); the namespace generation to write under.
    Miss { generation: u64 },
    /// The store failed, timed out, or the breaker is open: pass through,
    /// do not write.
    Failed,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl CacheCore {
    pub(crate) fn new(
        store: Arc<dyn Backend>,
        keys: KeySpace,
        policies: Policies,
        settings: Settings,
        replay: ReplayConfig,
    ) -> Self {
        let store_name = store.describe().into_boxed_str();
        tracing::info!(
            store = %store_name,
            keys = %format_args!("{}*", keys.base()),
            "cache layer built"
        );
        Self {
            store_name,
            replay: Replay::new(replay),
            breaker: Breaker::new(
                settings.breaker_threshold,
                settings.breaker_cooldown,
                settings.budget,
            ),
            store,
            keys,
            policies,
            settings,
            counters: Counters::default(),
            flights: Flights::default(),
            store_healthy: AtomicBool::new(true),
            token: format!("{:032x}", rand::random::<u128>()),
            seen: Seen::new(),
            decoded: Decoded::new(),
            prelocks: AtomicBool::new(true),
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            bypasses: c.bypasses.load(Relaxed),
            stale: c.stale.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            stores: c.stores.load(Relaxed),
            bytes_stored: c.bytes_stored.load(Relaxed),
            body_bytes: c.body_bytes.load(Relaxed),
            body_bytes_at_rest: c.body_bytes_at_rest.load(Relaxed),
            corrupt_entries: c.corrupt_entries.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            lock_waits: c.lock_waits.load(Relaxed),
            lock_timeouts: c.lock_timeouts.load(Relaxed),
            background_refreshes: c.background_refreshes.load(Relaxed),
            early_refreshes: c.early_refreshes.load(Relaxed),
            revalidations: c.revalidations.load(Relaxed),
            not_modified: c.not_modified.load(Relaxed),
            unsafe_invalidations: c.unsafe_invalidations.load(Relaxed),
            fills_fenced: c.fills_fenced.load(Relaxed),
            invalidations_queued: self.replay.queued.load(Relaxed),
            invalidations_replayed: self.replay.replayed.load(Relaxed),
            invalidations_dropped: self.replay.dropped.load(Relaxed),
            invalidations_pending: self.replay.len() as u64,
            breaker: self.breaker.state(),
            breaker_trips: self.breaker.trips.load(Relaxed),
            breaker_probes: self.breaker.probes.load(Relaxed),
            breaker_recoveries: self.breaker.recoveries.load(Relaxed),
        }
    }

    /// Runs a store call under the time budget and the circuit breaker,
    /// counting and logging failures.
    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        call: BoxFuture<'_, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.guarded(op, call, true).await
    }

    /// [`timed`](Self::timed), with the layer's own timer only when `timer`:
    /// a call the store bounds by the budget itself needs none.
    pub(crate) async fn guarded<T>(
        &self,
        op: &'static str,
        call: BoxFuture<'_, Result<T, StoreError>>,
        timer: bool,
    ) -> Result<T, StoreError> {
        if !self.breaker.allow() {
            return Err(StoreError::CircuitOpen);
        }
        let budget = self.settings.budget;
        let clock = Self::clock();
        let mut call = call;
        // A store that answers at once (the in-process tier, the memory
        // store) needs no timer. The timer is boxed: it would otherwise make
        // every future that awaits a store call (each request's) larger and
        // dearer to move, for a call that already allocates its own future.
        let result = match futures_util::FutureExt::now_or_never(&mut call) {
            Some(result) => result,
            None if !timer => call.await,
            None => Box::pin(tokio::time::timeout(budget, call))
                .await
                .unwrap_or(Err(StoreError::Timeout(budget))),
        };
        self.account(op, clock, &result);
        result
    }

    /// Whether the circuit breaker lets a store call through now.
    pub(crate) fn allow_store(&self) -> bool {
        self.breaker.allow()
    }

    /// A clock for a store call, read only when someone listens.
    pub(crate) fn clock() -> Option<Instant> {
        if tracing::enabled!(tracing::Level::TRACE) {
            Some(Instant::now())
        } else {
            crate::metrics::start()
        }
    }

    /// Counts and logs the end of a store call (started at `clock`), and
    /// tells the circuit breaker.
    pub(crate) fn account<T>(
        &self,
        op: &'static str,
        clock: Option<Instant>,
        result: &Result<T, StoreError>,
    ) {
        if let Some(clock) = clock {
            let took = clock.elapsed();
            crate::metrics::store_call(op, took, result.is_ok());
            tracing::trace!(
                op,
                took_us = took.as_micros() as u64,
                ok = result.is_ok(),
                "store call"
            );
        }
        match result {
            Ok(_) => {
                self.breaker.record_success();
                if !self.store_healthy.load(Relaxed) && !self.store_healthy.swap(true, Relaxed) {
                    tracing::info!(store = %self.store_name, "cache store answers again; caching resumed");
                }
            }
            Err(e) => {
                bump(&self.counters.store_errors);
                self.breaker.record_failure();
                if self.store_healthy.swap(false, Relaxed) {
                    tracing::warn!(
                        store = %self.store_name,
                        op,
                        error = %e,
                        "cache store failed; requests pass through to the service"
                    );
                } else {
                    tracing::debug!(store = %self.store_name, op, error = %e, "cache store failed");
                }
            }
        }
    }

    pub(crate) fn count_writes(&self, writes: &[Write]) {
        // Stored by this layer: the next lookup is likely a hit.
        for w in writes {
            self.seen.mark(&w.key);
        }
        let bytes: usize = writes.iter().map(|w| w.value.len()).sum();
        self.counters.stores.fetch_add(writes.len() as u64, Relaxed);
        self.counters.bytes_stored.fetch_add(bytes as u64, Relaxed);
        crate::metrics::stored(writes.len(), bytes);
    }

    /// Counts a body written: `received` bytes as the service sent it,
    /// `at_rest` as stored (compressed or not).
    pub(crate) fn count_body(&self, received: usize, at_rest: usize) {
        self.counters.body_bytes.fetch_add(received as u64, Relaxed);
        self.counters
            .body_bytes_at_rest
            .fetch_add(at_rest as u64, Relaxed);
        crate::metrics::stored_body(received, at_rest);
    }
}
