//! Lookup: the stored entry for a planned request, served when it is good
//! for it; the miss stage otherwise.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{
    miss::{miss, refresh_in_background},
    plan::Plan,
    respond::answer,
};
use crate::{
    body::CacheBody,
    core::{bump, CacheCore, HeldLock, Lookup},
    entry::Entry,
    http::{judge, selects, Use},
    status::CacheStatus,
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
        && selects(&entry, request, plan.authorized)
        && matches!(judge(&entry, now, &plan.cc), Use::Fresh);
    if !usable {
        return Err(entry);
    }
    bump(&core.counters.hits);
    Ok(answer(core, entry, request, plan, CacheStatus::Hit, now))
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
            } if selects(&entry, req.headers(), plan.authorized) => {
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
                        let response = answer(&core, entry, req.headers(), &plan, outcome, now);
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

/// Releases, after the response, a lock the lookup took for a request that
/// will not compute the entry.
pub(crate) fn give_back_lock(core: &Arc<CacheCore>, lock: &mut Option<Arc<HeldLock>>) {
    if let Some(lock) = lock.take() {
        let core = core.clone();
        tokio::spawn(async move { core.unlock(&lock).await });
    }
}
