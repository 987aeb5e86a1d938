//! Miss: single-flight in this process, the cross-instance lock, the
//! service (with a stale entry standing in for its failure), and the
//! background refresh of entries served stale.

use std::{
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use http::{Request, Response, StatusCode};

use super::{
    fill::fill,
    plan::Plan,
    respond::{cached_response, serve_entry, Via},
    CachedBody, Inner,
};
use crate::{
    body::CacheBody,
    core::{bump, CacheCore},
    entry::{self, Entry, Freshness},
    http::selects,
    stampede::{Coalesced, Handover, HeldLock, Join, Waited},
    status::{cache_status, mark, CacheStatus, Detail, Fwd},
};

/// The response to a request that went to the service, and the entry
/// waiting requests may be served, if any.
pub(crate) type Filled<B, E> = Result<(Response<CacheBody<B>>, Option<Handover>), E>;

/// The rest of a request that found nothing it may serve: single-flight in
/// this process, the cross-instance lock, and the service (revalidating
/// `stale` when it has validators).
// Not an `async fn`, for the reason given at `serve`.
#[allow(clippy::manual_async_fn)]
pub(crate) fn miss<S, ReqBody, ResBody>(
    core: Arc<CacheCore>,
    inner: S,
    req: Request<ReqBody>,
    mut plan: Plan,
    stale: Option<Arc<Entry>>,
    generation: Option<u64>,
) -> impl Future<Output = Result<Response<CacheBody<ResBody>>, S::Error>>
where
    S: Inner<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: CachedBody,
{
    async move {
        if plan.cc.only_if_cached {
            // RFC 9111 §5.2.1.7: nothing usable is stored, and the client does
            // not want the origin asked.
            bump(&core.counters.misses);
            let mut response = Response::new(CacheBody::empty());
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            mark(
                core.settings.status_header.as_ref(),
                response.headers_mut(),
                CacheStatus::Miss,
            );
            let detail = Detail {
                key: Some(plan.key()),
                detail: Some("only-if-cached"),
                ..Detail::default()
            };
            cache_status(
                core.settings.cache_status.as_ref(),
                response.headers_mut(),
                Detail {
                    fwd: Some(Fwd::UriMiss),
                    ..detail
                },
            );
            return Ok(response);
        }
        if generation.is_some() {
            bump(&core.counters.misses);
        } else {
            bump(&core.counters.bypasses);
            let reason = if core.replay.pending() {
                "invalidations wait for the store to confirm them: no entry is served meanwhile"
            } else {
                "the store did not answer (see the store failure logged before)"
            };
            crate::status::bypassed(req.method(), req.uri(), reason);
        }
        if plan.head {
            return Ok(call_origin(&core, inner, req, &plan, generation, stale)
                .await?
                .0);
        }

        // One request per key in this process goes on; the others wait for it.
        // A waiter released without a result (the leader's response could not be
        // shared, was never fresh, or is another variant) goes straight to the
        // service. A leader holds its waiters for at most `coalesce_timeout`:
        // then they join again, one of them leads a new flight and the others
        // wait for it (once: a second wait that runs out goes to the service).
        let mut released = false;
        let mut took_over = false;
        let guard = if core.settings.single_flight {
            let hold = core.settings.coalesce_timeout;
            let mut join = core.flights.join(plan.key(), hold);
            let mut rejoined = false;
            loop {
                let follower = match join {
                    Join::Leader(guard) => {
                        plan.followers = Some(guard.followers());
                        took_over = rejoined;
                        break Some(guard);
                    }
                    Join::Follower(follower) => follower,
                };
                // A lock this request took in its lookup is this process's:
                // the leader holds it and releases it.
                plan.lock = None;
                let handover = match follower.wait().await {
                    Waited::TimedOut if !rejoined => {
                        rejoined = true;
                        join = core.flights.join(plan.key(), hold);
                        continue;
                    }
                    Waited::Published(handover) => Some(handover),
                    Waited::Released | Waited::TimedOut => None,
                };
                // A response that was never fresh is not reused for a request
                // that was not forwarded (see `Entry::never_fresh`).
                let usable = handover.as_ref().and_then(|handover| {
                    let entry = handover.entry()?;
                    (!entry.never_fresh() && selects(entry, req.headers(), plan.shared_only))
                        .then(|| (entry.clone(), handover.outcome))
                });
                if let Some((entry, outcome)) = usable {
                    bump(&core.counters.coalesced);
                    let now = entry::now_ms();
                    return Ok(serve_entry(
                        &core,
                        entry,
                        req.headers(),
                        &plan,
                        outcome,
                        Via::Collapsed,
                        now,
                    ));
                }
                released = true;
                break None;
            }
        } else {
            None
        };

        // One instance per key goes on; the others wait for its entry. (A
        // request whose lookup took the lock already holds it. One that took
        // over from a stalled leader does not wait for the lock that leader
        // holds.)
        if generation.is_some()
            && !released
            && !took_over
            && core.settings.distributed_lock
            && plan.lock.is_none()
        {
            let lock_key = core.keys.lock_key(&plan.rule.namespace, plan.key());
            // A request revalidating what it found counts only an entry stored
            // after that one.
            let replaces = stale.as_ref().map(|e| e.stored_at_ms);
            match core
                .coalesce(
                    plan.key(),
                    &lock_key,
                    &plan.rule.generation_key,
                    true,
                    replaces,
                )
                .await
            {
                Coalesced::Entry(entry)
                    if !entry.never_fresh() && selects(&entry, req.headers(), plan.shared_only) =>
                {
                    bump(&core.counters.coalesced);
                    let now = entry::now_ms();
                    let response = serve_entry(
                        &core,
                        entry.clone(),
                        req.headers(),
                        &plan,
                        CacheStatus::Hit,
                        Via::Collapsed,
                        now,
                    );
                    if let Some(guard) = guard {
                        guard.publish(Handover::decoded(entry, CacheStatus::Hit));
                    }
                    return Ok(response);
                }
                Coalesced::Locked(token) => plan.lock = Some(HeldLock::new(lock_key, token)),
                Coalesced::Entry(_) | Coalesced::Proceed => {}
            }
        }

        let result = call_origin(&core, inner, req, &plan, generation, stale).await;
        // Released by the entry's write when there was one; else now, off the
        // response's path.
        if let Some(held) = plan.lock.filter(|h| !h.released.load(Relaxed)) {
            let core = core.clone();
            tokio::spawn(async move { core.unlock(&held).await });
        }
        let (response, handover) = result?;
        if let (Some(guard), Some(handover)) = (guard, handover) {
            guard.publish(handover);
        }
        Ok(response)
    }
}

/// Calls the service and stores what may be stored; a stored entry that is
/// at hand is revalidated with its validators. When the service fails (an
/// error, a 5xx, or no answer within `origin_timeout`) and that entry may
/// stand in for a failure (stale-if-error), serves it instead. Returns the
/// response and, if it can be shared with waiting requests, the entry they
/// should get.
pub(crate) async fn call_origin<S, ReqBody, ResBody>(
    core: &Arc<CacheCore>,
    inner: S,
    req: Request<ReqBody>,
    plan: &Plan,
    generation: Option<u64>,
    stored: Option<Arc<Entry>>,
) -> Filled<ResBody, S::Error>
where
    S: Inner<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: CachedBody,
{
    let now = entry::now_ms();
    let fallback = stored
        .as_ref()
        .filter(|e| {
            !e.must_revalidate
                && !e.never_fresh()
                && matches!(
                    e.freshness(now),
                    Freshness::StaleWhileRevalidate | Freshness::StaleIfError
                )
        })
        .cloned();
    let Some(stale) = fallback else {
        let call = fill(
            core.clone(),
            inner,
            req,
            plan.clone(),
            generation,
            stored,
            false,
        );
        return call.await;
    };
    let fetched = fill(
        core.clone(),
        inner,
        req,
        plan.clone(),
        generation,
        Some(stale.clone()),
        true,
    );
    let answer = match core.settings.origin_timeout {
        None => fetched.await.ok(),
        // The call goes on in its own task: if it answers after the limit,
        // its response still refreshes the entry.
        Some(limit) => match tokio::time::timeout(limit, tokio::spawn(fetched)).await {
            Ok(Ok(result)) => result.ok(),
            _ => None,
        },
    };
    if let Some(answer) = answer.filter(|(r, _)| !r.status().is_server_error()) {
        return Ok(answer);
    }
    bump(&core.counters.stale);
    tracing::debug!(key = %plan.key(), "service failed; serving the stale entry");
    let response = cached_response(
        core,
        stale.clone(),
        plan,
        CacheStatus::Stale,
        Via::ServiceFailed,
        now,
    );
    let handover = Handover::decoded(stale, CacheStatus::Stale);
    Ok((response, Some(handover)))
}

/// Refreshes an entry in the background (stale-while-revalidate, early
/// refresh): at most one refresh per key in this process, and with the
/// cross-instance lock at most one across instances; the client has already
/// been served.
pub(crate) fn refresh_in_background<S, ReqBody, ResBody>(
    core: Arc<CacheCore>,
    inner: S,
    req: Request<ReqBody>,
    plan: Plan,
    generation: u64,
    replaces: u64,
) where
    S: Inner<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: CachedBody,
{
    let Join::Leader(guard) = core
        .flights
        .join(plan.key(), core.settings.coalesce_timeout)
    else {
        return; // already being refreshed here
    };
    tokio::spawn(async move {
        let mut plan = plan;
        if core.settings.distributed_lock {
            let lock_key = core.keys.lock_key(&plan.rule.namespace, plan.key());
            match core
                .coalesce(
                    plan.key(),
                    &lock_key,
                    &plan.rule.generation_key,
                    false,
                    Some(replaces),
                )
                .await
            {
                Coalesced::Locked(token) => plan.lock = Some(HeldLock::new(lock_key, token)),
                // Fresh again, or another instance is refreshing it.
                _ => return,
            }
        }
        bump(&core.counters.background_refreshes);
        if let Ok((_, Some(handover))) =
            call_origin(&core, inner, req, &plan, Some(generation), None).await
        {
            guard.publish(handover);
        }
        if let Some(held) = &plan.lock {
            core.unlock(held).await;
        }
    });
}
