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
    breaker::{Breaker, BreakerState},
    decoded::Decoded,
    entry::{self, Entry, Freshness},
    error::StoreError,
    flight::Flights,
    key::KeySpace,
    policy::Policies,
    replay::{Replay, ReplayConfig},
    store::{Backend, BoxFuture, Fetched, Write},
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
    breaker: Breaker,
    store_healthy: AtomicBool,
    /// The lock token of this layer's flight leaders (with single-flight on):
    /// a lock held with it belongs to this process, and the request leading
    /// the key here holds it, whichever request took it.
    token: String,
    /// Keys recently found stored.
    pub(crate) seen: Seen,
    /// Entries decoded lately, reused when a store returns the same bytes.
    decoded: Decoded,
    /// Cleared once the store showed it cannot take the lock in a lookup
    /// (`Backend::fetch_or_lock` gave `None`), so the layer stops preparing
    /// for it.
    prelocks: AtomicBool,
}

/// Keys a layer has recently found stored or stored itself, as bits of a
/// fixed table (128 KiB): a key not in it (new, or not met lately) is looked
/// up with the lock taken in the same round trip ([`Backend::fetch_or_lock`]).
/// A wrong answer only costs speed: a key taken as seen is looked up plainly
/// and locked after a miss; one taken as unseen and found stored takes a
/// lock it gives back. A quarter of the table (262 144 keys) fills before it
/// starts over, so a key space up to about that size settles on plain
/// lookups; a larger one takes and gives back a lock on more of its hits.
pub(crate) struct Seen {
    bits: Box<[AtomicU64]>,
    hasher: crate::store::KeyHasher,
    /// Bits set since the table was last cleared.
    set: AtomicU64,
}

impl Seen {
    const BITS: usize = 1 << 20;

    fn new() -> Self {
        Self {
            bits: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            hasher: crate::store::KeyHasher::default(),
            set: AtomicU64::new(0),
        }
    }

    fn slot(&self, key: &str) -> (usize, u64) {
        use std::hash::BuildHasher;
        let bit = (self.hasher.hash_one(key) as usize) % Self::BITS;
        (bit / 64, 1 << (bit % 64))
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        let (word, bit) = self.slot(key);
        self.bits[word].load(Relaxed) & bit != 0
    }

    /// Marks `key` seen. Once a quarter of the table has been set the table
    /// starts over, so that keys seen long ago (and colliding keys) do not
    /// pass as seen for ever.
    pub(crate) fn mark(&self, key: &str) {
        let (word, bit) = self.slot(key);
        if self.bits[word].load(Relaxed) & bit != 0 {
            return;
        }
        self.bits[word].fetch_or(bit, Relaxed);
        if self.set.fetch_add(1, Relaxed) + 1 >= (Self::BITS / 4) as u64 {
            self.set.store(0, Relaxed);
            for word in self.bits.iter() {
                word.store(0, Relaxed);
            }
        }
    }
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

/// The cross-instance lock of one key, as its holder keeps it.
pub(crate) struct HeldLock {
    pub(crate) key: String,
    pub(crate) token: String,
    /// Set once the entry's write released it in the same round trip.
    pub(crate) released: AtomicBool,
}

impl HeldLock {
    pub(crate) fn new(key: String, token: String) -> Arc<Self> {
        Arc::new(Self {
            key,
            token,
            released: AtomicBool::new(false),
        })
    }
}

/// The invalidation counter as a request read it before calling the
/// service: its write is fenced by it (see [`Fence`](crate::store::Fence)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FenceRead {
    pub(crate) counter: u64,
    pub(crate) at: Instant,
}

/// What waiting for another instance's computation gave.
pub(crate) enum Coalesced {
    /// Another instance stored the entry meanwhile.
    Entry(Arc<Entry>),
    /// This request holds the lock: it computes the entry.
    Locked(String),
    /// No lock (timed out, store failed): go to the service anyway.
    Proceed,
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
        Self {
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

    /// The token to take a key's cross-instance lock with: this process's
    /// when one request per key leads here (single-flight), so a lock taken
    /// by any request of this process is the leader's; a token of the
    /// request's own otherwise.
    pub(crate) fn lock_token(&self) -> String {
        if self.settings.single_flight {
            self.token.clone()
        } else {
            format!("{:032x}", rand::random::<u128>())
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
    async fn guarded<T>(
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
                    tracing::info!("cache store answers again; caching resumed");
                }
            }
            Err(e) => {
                bump(&self.counters.store_errors);
                self.breaker.record_failure();
                if self.store_healthy.swap(false, Relaxed) {
                    tracing::warn!(op, error = %e, "cache store failed; requests pass through to the service");
                } else {
                    tracing::debug!(op, error = %e, "cache store failed");
                }
            }
        }
    }

    pub(crate) async fn lookup(&self, key: &str, generation_key: &str) -> Lookup {
        // Invalidations wait for replay: nothing from the store is served.
        if self.replay.pending() {
            return Lookup::Failed;
        }
        let budget = self.settings.budget;
        let result = match self.store.fetch_within(key, generation_key, budget) {
            Some(call) => self.guarded("fetch", call, false).await,
            None => {
                self.guarded("fetch", self.store.fetch(key, generation_key), true)
                    .await
            }
        };
        match result {
            Ok(fetched) => self.judge(key, fetched).await,
            Err(_) => Lookup::Failed,
        }
    }

    /// Whether lookups may take the lock (the store has not refused to).
    pub(crate) fn prelocks(&self) -> bool {
        self.prelocks.load(Relaxed)
    }

    /// The lookup of a key not met lately, with the lock (`lock_key`,
    /// `token`) taken in the same round trip where the store can. Returns
    /// the lookup and whether this call set the lock.
    pub(crate) async fn lookup_or_lock(
        &self,
        key: &str,
        generation_key: &str,
        lock_key: &str,
        token: &str,
    ) -> (Lookup, bool) {
        if self.replay.pending() {
            return (Lookup::Failed, false);
        }
        let budget = self.settings.budget;
        let ttl = self.settings.lock_ttl;
        let Some(call) =
            self.store
                .fetch_or_lock(key, generation_key, lock_key, token, ttl, budget)
        else {
            // A store that cannot (the in-memory store) is not asked again.
            self.prelocks.store(false, Relaxed);
            return (self.lookup(key, generation_key).await, false);
        };
        match self.guarded("fetch", call, false).await {
            Ok((fetched, held)) => (self.judge(key, fetched).await, held),
            Err(_) => (Lookup::Failed, false),
        }
    }

    /// Decides what a fetched value is worth.
    async fn judge(&self, key: &str, mut fetched: Fetched) -> Lookup {
        if fetched.decoded.is_none() {
            if let Some(value) = &fetched.value {
                fetched.decoded = self.decoded.decode(key, value);
            }
        }
        match Self::assess(fetched) {
            Ok(lookup) => lookup,
            Err((generation, len)) => {
                bump(&self.counters.corrupt_entries);
                tracing::warn!(key, len, "cache entry does not decode; deleting it");
                // Boxed: this rare path would otherwise make every lookup's
                // future (part of each request's) larger.
                let delete = async {
                    let _ = self
                        .timed("delete", self.store.delete(&[key.to_owned()]))
                        .await;
                };
                Box::pin(delete).await;
                Lookup::Miss { generation }
            }
        }
    }

    /// What a fetched value is worth; `Err` (its generation and length) for
    /// a value that does not decode.
    fn assess(fetched: Fetched) -> Result<Lookup, (u64, usize)> {
        let generation = fetched.generation;
        let Some(value) = fetched.value else {
            return Ok(Lookup::Miss { generation });
        };
        let decoded = match fetched.decoded {
            Some(entry) => Some(entry),
            None => entry::decode(&value).map(Arc::new),
        };
        let now = entry::now_ms();
        match decoded {
            Some(entry)
                if entry.generation == generation
                    && now.saturating_sub(entry.stored_at_ms) < entry.lives_ms() =>
            {
                Ok(Lookup::Found {
                    entry,
                    generation,
                    now,
                })
            }
            // Written before the last namespace bump, or past its life (a
            // store that expires lazily).
            Some(_) => Ok(Lookup::Miss { generation }),
            None => Err((generation, value.len())),
        }
    }

    /// The lookup, when the store answers without waiting (see
    /// [`Backend::fetch_now`]); `None` sends the caller to [`lookup`](Self::lookup).
    pub(crate) fn lookup_now(&self, key: &str, generation_key: &str) -> Option<Lookup> {
        // Invalidations wait for replay: the request passes through.
        if self.replay.pending() {
            return Some(Lookup::Failed);
        }
        // Only with the breaker closed: an open or probing one is the
        // asynchronous path's business.
        if self.breaker.state() != BreakerState::Closed {
            return None;
        }
        let clock = if tracing::enabled!(tracing::Level::TRACE) {
            Some(Instant::now())
        } else {
            crate::metrics::start()
        };
        let fetched = self.store.fetch_now(key, generation_key)?.ok()?;
        if let Some(clock) = clock {
            let took = clock.elapsed();
            crate::metrics::store_call("fetch", took, true);
            tracing::trace!(
                op = "fetch",
                took_us = took.as_micros() as u64,
                ok = true,
                "store call"
            );
        }
        self.breaker.record_success();
        Self::assess(fetched).ok()
    }

    /// Takes the cross-instance lock for `key`, or waits (polling with
    /// backoff, up to the coalesce timeout, when `wait`) for the instance
    /// holding it to store the entry. Every poll is one round trip that also
    /// re-reads the entry, so an entry stored a moment ago is found, not
    /// recomputed. A refresh passes the `stored_at` of the entry it replaces:
    /// only a fresh entry stored after it counts as found.
    pub(crate) async fn coalesce(
        &self,
        key: &str,
        lock_key: &str,
        generation_key: &str,
        wait: bool,
        replaces: Option<u64>,
    ) -> Coalesced {
        if self.replay.pending() {
            return Coalesced::Proceed;
        }
        let token = self.lock_token();
        let deadline = Instant::now() + self.settings.coalesce_timeout;
        let mut delay = Duration::from_millis(2);
        let mut waited = false;
        loop {
            let call = self.store.lock_and_fetch(
                lock_key,
                &token,
                self.settings.lock_ttl,
                key,
                generation_key,
            );
            let Ok((locked, fetched)) = self.timed("lock", call).await else {
                return Coalesced::Proceed;
            };
            if let Lookup::Found { entry, now, .. } = self.judge(key, fetched).await {
                if entry.freshness(now) == Freshness::Fresh
                    && replaces.is_none_or(|old| entry.stored_at_ms > old)
                {
                    if locked {
                        let _ = self
                            .timed("unlock", self.store.unlock(lock_key, &token))
                            .await;
                    }
                    return Coalesced::Entry(entry);
                }
            }
            if locked {
                return Coalesced::Locked(token);
            }
            if !wait {
                return Coalesced::Proceed;
            }
            if !waited {
                waited = true;
                bump(&self.counters.lock_waits);
            }
            if Instant::now() + delay > deadline {
                bump(&self.counters.lock_timeouts);
                return Coalesced::Proceed;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Reads the invalidation counter before the service computes an entry;
    /// `None` when the store failed (the entry is then not stored).
    pub(crate) async fn read_fence(&self) -> Option<FenceRead> {
        let at = Instant::now();
        let key = self.keys.fence_counter_key();
        let counter = self.timed("fence", self.store.fence(&key)).await.ok()?;
        Some(FenceRead { counter, at })
    }

    /// Writes what a request computed, unless an invalidation of anything
    /// the writes touch ran since `read` (then nothing is written, and
    /// `fills_fenced` counts it). The lock `held` is released in the same
    /// round trip where the store can (marked released then); otherwise its
    /// caller releases it.
    pub(crate) async fn write_fenced(
        &self,
        writes: &[Write],
        read: FenceRead,
        held: Option<&HeldLock>,
    ) -> Result<(), StoreError> {
        if self.replay.pending() {
            return Ok(());
        }
        if read.at.elapsed() >= crate::store::FENCE_WINDOW / 2 {
            // The markers of an invalidation that ran meanwhile may be gone.
            bump(&self.counters.fills_fenced);
            crate::metrics::fenced();
            return Ok(());
        }
        let mut markers = Vec::with_capacity(writes.len() * 2 + 1);
        markers.push(self.keys.prefix_fence_key());
        for w in writes {
            markers.push(self.keys.fence_key(&w.key));
            markers.extend(w.tags.iter().map(|t| self.keys.fence_key(t)));
        }
        markers.sort_unstable();
        markers.dedup();
        let fence = crate::store::Fence {
            counter: read.counter,
            markers,
            unlock: held.map(|h| (h.key.clone(), h.token.clone())),
        };
        let done = self
            .timed("put", self.store.put_fenced(writes, &fence))
            .await?;
        if let Some(held) = held {
            held.released.store(done.unlocked, Relaxed);
        }
        if done.stored {
            self.count_writes(writes);
        } else {
            bump(&self.counters.fills_fenced);
            crate::metrics::fenced();
            tracing::debug!(
                key = writes.last().map_or("", |w| w.key.as_str()),
                "not stored: an invalidation ran while the response was computed"
            );
        }
        Ok(())
    }

    /// Releases `held` unless a write already did.
    pub(crate) async fn unlock(&self, held: &HeldLock) {
        if !held.released.load(Relaxed) {
            let _ = self
                .timed("unlock", self.store.unlock(&held.key, &held.token))
                .await;
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
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn seen_keys_are_found_and_the_table_starts_over_when_a_quarter_is_set() {
        let seen = Seen::new();
        assert!(!seen.contains("t:v1:default:GET:/items/1"));
        seen.mark("t:v1:default:GET:/items/1");
        assert!(seen.contains("t:v1:default:GET:/items/1"));
        // Marking keys until the table starts over forgets the first one
        // (collisions only make a key look seen sooner).
        let mut forgotten = false;
        for i in 0..Seen::BITS {
            seen.mark(&format!("t:v1:default:GET:/other/{i}"));
            if !seen.contains("t:v1:default:GET:/items/1") {
                forgotten = true;
                break;
            }
        }
        assert!(forgotten, "a key seen once passes as seen for ever");
    }
}
