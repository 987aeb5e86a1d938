//! Lookup: the stored entry for a planned request, served when it is good
//! for it; the miss stage otherwise.

use std::{future::Future, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{
    miss::{miss, refresh_in_background},
    plan::Plan,
    respond::{serve_entry, Via},
};
use crate::{
    body::CacheBody,
    breaker::BreakerState,
    core::{bump, CacheCore, Lookup},
    entry,
    entry::Entry,
    http::{judge, selects, Use},
    stampede::{give_back_lock, HeldLock},
    status::CacheStatus,
    store::Fetched,
};

/// A fresh entry the store answered at once, served without a future; the
/// entry back when it needs more (a `Vary` marker, another variant, a
/// revalidation, a refresh).
pub(crate) fn serve_now<B: Body>(
    core: &CacheCore,
    entry: Arc<Entry>,
    request: &HeaderMap,
    plan: &Plan,
    now: u64,
) -> Result<Response<CacheBody<B>>, Arc<Entry>> {
    let usable = entry.marker.is_none()
        && plan.rule.early_refresh <= 0.0
        && selects(&entry, request, plan.shared_only)
        && matches!(judge(&entry, now, &plan.cc), Use::Fresh);
    if !usable {
        return Err(entry);
    }
    bump(&core.counters.hits);
    Ok(serve_entry(
        core,
        entry,
        request,
        plan,
        CacheStatus::Hit,
        Via::Lookup,
        now,
    ))
}

/// The path of a cacheable request: lookup (unless `prefetched` holds its
/// result), then (on a miss) single-flight in this process, the
/// cross-instance lock, and the service.
// A plain function around an `async move` block, not an `async fn`: an
// `async fn` moves its arguments into locals, and its future would hold the
// request and the plan twice (docs/performance.md has the sizes).
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<S, ReqBody, ResBody>(
    core: Arc<CacheCore>,
    inner: S,
    req: Request<ReqBody>,
    mut plan: Plan,
    prefetched: Option<Lookup>,
) -> impl Future<Output = Result<Response<CacheBody<ResBody>>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    async move {
        let gen_key = &plan.rule.generation_key;
        let mut unseen = false;
        let mut found = match prefetched {
            Some(found) => found,
            // A key not met lately is likely a miss: where the store can, its
            // lookup takes the lock in the same round trip, and the miss path
            // needs no round trip of its own for it. (Only a request that may go
            // on to compute the entry takes it; one served from the cache gives
            // it back.)
            None if core.settings.distributed_lock
                && core.settings.single_flight
                && core.prelocks()
                && !plan.head
                && !plan.cc.only_if_cached
                && !core.seen.contains(plan.key()) =>
            {
                unseen = true;
                let lock_key = core.keys.lock_key(&plan.rule.namespace, plan.key());
                let token = core.lock_token();
                // Boxed: this path (misses, first hits) would otherwise make
                // every request's future larger.
                let (found, held) =
                    Box::pin(core.lookup_or_lock(plan.key(), gen_key, &lock_key, &token)).await;
                if held {
                    plan.lock = Some(HeldLock::new(lock_key, token));
                }
                found
            }
            None => core.lookup(plan.key(), gen_key).await,
        };
        if let Lookup::Found { entry, .. } = &found {
            if unseen {
                core.seen.mark(plan.key());
            }
            if let Some(marker) = entry.marker.clone() {
                // A response with `Vary`: one more round trip for the variant,
                // whose lock is not the one the URI's lookup took.
                give_back_lock(&core, &mut plan.lock);
                plan.variant = Some(crate::key::variant_key(
                    &plan.primary,
                    &marker,
                    req.headers(),
                ));
                plan.marker = Some(marker);
                found = core.lookup(plan.key(), gen_key).await;
            }
        }
        let (stale, generation) = match found {
            Lookup::Found {
                entry,
                generation,
                now,
            } if selects(&entry, req.headers(), plan.shared_only) => {
                match judge(&entry, now, &plan.cc) {
                    Use::Revalidate => (Some(entry), Some(generation)),
                    usable => {
                        let (outcome, refresh) = match usable {
                            Use::Fresh => {
                                bump(&core.counters.hits);
                                let beta = plan.rule.early_refresh;
                                let due = beta > 0.0
                                    && !plan.head
                                    && entry.early_refresh_due(
                                        now,
                                        beta,
                                        1.0 - rand::random::<f64>(),
                                    );
                                if due {
                                    bump(&core.counters.early_refreshes);
                                }
                                (CacheStatus::Hit, due)
                            }
                            Use::StaleWhileRevalidate => {
                                bump(&core.counters.stale);
                                (CacheStatus::Stale, !plan.head)
                            }
                            _ => {
                                bump(&core.counters.stale);
                                (CacheStatus::Stale, false)
                            }
                        };
                        // Served from the cache: a lock the lookup took is not needed.
                        give_back_lock(&core, &mut plan.lock);
                        let replaces = entry.stored_at_ms;
                        let response = serve_entry(
                            &core,
                            entry,
                            req.headers(),
                            &plan,
                            outcome,
                            Via::Lookup,
                            now,
                        );
                        if refresh {
                            refresh_in_background(core, inner, req, plan, generation, replaces);
                        }
                        return Ok(response);
                    }
                }
            }
            Lookup::Found { generation, .. } | Lookup::Miss { generation } => {
                (None, Some(generation))
            }
            Lookup::Failed => (None, None),
        };
        // Boxed on its own: the hit path above stays a small future that is
        // cheap to create and move.
        Box::pin(miss(core, inner, req, plan, stale, generation)).await
    }
}

impl CacheCore {
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
            Ok(fetched) => self.classify(key, fetched).await,
            Err(_) => Lookup::Failed,
        }
    }

    /// Decides what a fetched value is worth.
    pub(crate) async fn classify(&self, key: &str, mut fetched: Fetched) -> Lookup {
        if fetched.decoded.is_none() {
            if let Some(value) = &fetched.value {
                fetched.decoded = self.decoded.decode(key, value);
            }
        }
        match Self::assess(fetched, self.settings.max_body_bytes) {
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
    /// a value that does not decode, or whose compressed body claims to
    /// decompress past `max_body` (the layer never stores such a body: the
    /// value is foreign or corrupt, and serving it to a client that does not
    /// accept gzip would decompress all of it).
    fn assess(fetched: Fetched, max_body: usize) -> Result<Lookup, (u64, usize)> {
        let generation = fetched.generation;
        let Some(value) = fetched.value else {
            return Ok(Lookup::Miss { generation });
        };
        let decoded = match fetched.decoded {
            Some(entry) => Some(entry),
            None => entry::decode(&value).map(Arc::new),
        }
        .filter(|e| e.gzipped.is_none_or(|len| len <= max_body as u64));
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
    /// [`Backend::fetch_now`](crate::store::Backend::fetch_now)); `None` sends the caller to [`lookup`](Self::lookup).
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
        Self::assess(fetched, self.settings.max_body_bytes).ok()
    }
}
