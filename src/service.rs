//! [`CacheService`]: the tower service and the path of one request.
//!
//! 1. Plan: only `GET` and `HEAD` on a route whose policy caches, without
//!    `Authorization` (unless the route allows it) or `Cache-Control: no-store`;
//!    anything else passes through untouched (`x-cache: BYPASS`).
//! 2. Lookup under the time budget: a fresh entry of the current namespace
//!    generation is served (`HIT`, with `age`); a `HEAD` is answered from the
//!    `GET` entry without a body.
//! 3. Miss: the inner service answers; if the policy and the response allow
//!    it and the body fits the size limit, it is stored with a jittered TTL
//!    (`MISS`). A store failure sends the request through (`BYPASS`).

use std::{
    mem,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{
    header::{AGE, AUTHORIZATION},
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response,
};
use http_body::Body;
use tower_service::Service;

use crate::{
    body::{collect_up_to, CacheBody, Collected},
    core::{bump, CacheCore, Coalesced, Lookup},
    entry::{self, Entry, Freshness},
    flight::{Flights, Join, Shared},
    future::ResponseFuture,
    policy::Resolved,
    semantics,
    store::Write,
    tags::take_tags,
    CacheHandle,
};

pub(crate) const HIT: &str = "HIT";
pub(crate) const MISS: &str = "MISS";
pub(crate) const BYPASS: &str = "BYPASS";
pub(crate) const STALE: &str = "STALE";

/// The service produced by [`RedisCacheLayer`](crate::RedisCacheLayer).
///
/// It keeps the inner service's error type: store failures are logged and
/// counted, never returned.
pub struct CacheService<S> {
    inner: S,
    core: Arc<CacheCore>,
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, core: Arc<CacheCore>) -> Self {
        Self { inner, core }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The handle of the cache this service uses.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.core.clone())
    }
}

impl<S: Clone> Clone for CacheService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: self.core.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some(plan) = plan(&self.core, &req) else {
            bump(&self.core.counters.bypasses);
            req.extensions_mut()
                .insert(CacheHandle::new(self.core.clone()));
            return ResponseFuture::bypass(self.inner.call(req), self.core.clone());
        };
        // The service that was polled ready goes into the future; a clone
        // (not yet ready) stays for the next poll_ready.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::cache(Box::pin(serve(self.core.clone(), inner, req, plan)))
    }
}

/// The inner service as the cache path needs it (its future may run in a
/// spawned task: a background refresh, a slow call past `origin_timeout`).
trait Inner<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> Inner<ReqBody, ResBody> for S
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
}

/// A response body the cache can buffer, share and hold across tasks.
trait CachedBody: Body<Data = Bytes, Error: Send + 'static> + Send + 'static {}

impl<B> CachedBody for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
}

/// What a cacheable request will use.
#[derive(Clone)]
struct Plan {
    rule: Arc<Resolved>,
    key: String,
    head: bool,
}

#[cfg(feature = "axum")]
fn matched_route<B>(req: &Request<B>) -> Option<&str> {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
fn matched_route<B>(_: &Request<B>) -> Option<&str> {
    None
}

fn plan<B>(core: &CacheCore, req: &Request<B>) -> Option<Plan> {
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        return None;
    }
    let uri = req.uri();
    let rule = core
        .policies
        .lookup(matched_route(req), uri.path())
        .as_ref()?;
    if !rule.allow_authorization && req.headers().contains_key(AUTHORIZATION) {
        return None;
    }
    if semantics::has_directive(req.headers(), "no-store") {
        return None;
    }
    Some(Plan {
        key: core
            .keys
            .entry_key(&rule.namespace, &Method::GET, uri.path(), uri.query()),
        rule: rule.clone(),
        head,
    })
}

/// The path of a cacheable request: lookup, then (on a miss) single-flight in
/// this process, the cross-instance lock, and the service.
async fn serve<S, ReqBody, ResBody>(
    core: Arc<CacheCore>,
    inner: S,
    req: Request<ReqBody>,
    plan: Plan,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    let (stale, generation) = match core.lookup(&plan.key, &plan.rule.generation_key).await {
        Lookup::Found { entry, generation } => {
            let now = entry::now_ms();
            match entry.freshness(now) {
                fresh @ (Freshness::Fresh | Freshness::StaleWhileRevalidate) => {
                    let (outcome, refresh) = if fresh == Freshness::Fresh {
                        bump(&core.counters.hits);
                        let beta = plan.rule.early_refresh;
                        let due = beta > 0.0
                            && !plan.head
                            && entry.early_refresh_due(now, beta, 1.0 - rand::random::<f64>());
                        if due {
                            bump(&core.counters.early_refreshes);
                        }
                        (HIT, due)
                    } else {
                        bump(&core.counters.stale);
                        (STALE, !plan.head)
                    };
                    if refresh {
                        let replaces = entry.stored_at_ms;
                        let plan = plan.clone();
                        refresh_in_background(core.clone(), inner, req, plan, generation, replaces);
                    }
                    return Ok(cached_response(&core, entry, plan.head, outcome));
                }
                // Only good enough if the service fails.
                _ => (Some(entry), Some(generation)),
            }
        }
        Lookup::Miss { generation } => (None, Some(generation)),
        Lookup::Failed => (None, None),
    };
    bump(if generation.is_some() {
        &core.counters.misses
    } else {
        &core.counters.bypasses
    });
    if plan.head {
        return Ok(fetch(&core, inner, req, &plan, generation, stale).await?.0);
    }

    // One request per key in this process goes on; the others wait for it.
    // A waiter released without a result (the leader's response could not be
    // shared) goes straight to the service.
    let mut released = false;
    let guard = if core.settings.single_flight {
        match core.flights.join(&plan.key) {
            Join::Leader(guard) => Some(guard),
            Join::Follower(slot) => {
                if let Some(shared) = Flights::wait(slot, core.settings.coalesce_timeout).await {
                    bump(&core.counters.coalesced);
                    return Ok(cached_response(
                        &core,
                        shared.entry.clone(),
                        false,
                        shared.outcome,
                    ));
                }
                released = true;
                None
            }
        }
    } else {
        None
    };

    // One instance per key goes on; the others wait for its entry.
    let mut lock = None;
    if generation.is_some() && !released && core.settings.distributed_lock {
        let lock_key = core.keys.lock_key(&plan.rule.namespace, &plan.key);
        match core
            .coalesce(&plan.key, &lock_key, &plan.rule.generation_key, true, None)
            .await
        {
            Coalesced::Entry(entry) => {
                bump(&core.counters.coalesced);
                if let Some(guard) = guard {
                    guard.publish(Shared {
                        entry: entry.clone(),
                        outcome: HIT,
                    });
                }
                return Ok(cached_response(&core, entry, false, HIT));
            }
            Coalesced::Locked(token) => lock = Some((lock_key, token)),
            Coalesced::Proceed => {}
        }
    }

    let result = fetch(&core, inner, req, &plan, generation, stale).await;
    if let Some((lock_key, token)) = lock {
        let core = core.clone();
        tokio::spawn(async move {
            let _ = core
                .timed("unlock", core.store.unlock(&lock_key, &token))
                .await;
        });
    }
    let (response, shared) = result?;
    if let (Some(guard), Some(shared)) = (guard, shared) {
        guard.publish(shared);
    }
    Ok(response)
}

/// Calls the service and stores what may be stored. When the service fails
/// (an error, a 5xx, or no answer within `origin_timeout`) and a stale entry
/// is at hand, serves that instead. Returns the response and, if it can be
/// shared with waiting requests, the entry they should get.
async fn fetch<S, ReqBody, ResBody>(
    core: &Arc<CacheCore>,
    inner: S,
    req: Request<ReqBody>,
    plan: &Plan,
    generation: Option<u64>,
    stale: Option<Entry>,
) -> Result<(Response<CacheBody<ResBody>>, Option<Shared>), S::Error>
where
    S: Inner<ReqBody, ResBody>,
    ReqBody: Send + 'static,
    ResBody: CachedBody,
{
    let Some(stale) = stale else {
        return call_and_store(core.clone(), inner, req, plan.clone(), generation, false).await;
    };
    let fetched = call_and_store(core.clone(), inner, req, plan.clone(), generation, true);
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
    tracing::debug!(key = %plan.key, "service failed; serving the stale entry");
    let response = cached_response(core, stale.clone(), plan.head, STALE);
    let shared = Shared {
        entry: stale,
        outcome: STALE,
    };
    Ok((response, Some(shared)))
}

/// Calls the service, then buffers and stores its response if the route and
/// the response allow it. With `has_fallback` (a stale entry will stand in
/// for a failure), a 5xx is never stored.
async fn call_and_store<S, ReqBody, ResBody>(
    core: Arc<CacheCore>,
    mut inner: S,
    mut req: Request<ReqBody>,
    plan: Plan,
    generation: Option<u64>,
    has_fallback: bool,
) -> Result<(Response<CacheBody<ResBody>>, Option<Shared>), S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    req.extensions_mut().insert(CacheHandle::new(core.clone()));
    let uri = plan.rule.tagger.as_ref().map(|_| req.uri().clone());
    let started = Instant::now();
    let (mut parts, body) = inner.call(req).await?.into_parts();
    let tags = take_tags(
        &core.settings.tag_headers,
        plan.rule.tagger.as_ref(),
        uri.as_ref(),
        &mut parts,
    );
    let outcome = if generation.is_some() { MISS } else { BYPASS };
    // A failure a stale entry will stand in for is not stored.
    let covered_failure = has_fallback && parts.status.is_server_error();
    let storable = !(plan.head || covered_failure)
        && plan.rule.stores_status(parts.status)
        && semantics::refuse_to_store(&parts.headers).is_none();
    if !storable {
        mark(
            core.settings.status_header.as_ref(),
            &mut parts.headers,
            outcome,
        );
        return Ok((Response::from_parts(parts, CacheBody::inner(body)), None));
    }
    // Buffered even when the store failed: requests waiting on this one get
    // the same response instead of calling the service themselves.
    let mut shared = None;
    let body = match collect_up_to(body, core.settings.max_body_bytes).await {
        Collected::Complete(bytes) => {
            let lifetimes = plan.rule.lifetimes();
            let encoded = entry::encode(
                parts.status,
                &parts.headers,
                &bytes,
                &lifetimes,
                started.elapsed(),
                generation.unwrap_or(0),
                core.settings.status_header.as_ref(),
            );
            if let Some(value) = encoded {
                shared = entry::decode(&value).map(|entry| Shared { entry, outcome });
                if generation.is_some() {
                    let write = Write {
                        key: plan.key.clone(),
                        value,
                        ttl: lifetimes.store_ttl(),
                        tags: tags.iter().map(|t| core.keys.tag_key(t)).collect(),
                    };
                    // Awaited (under the budget) so the client's next request
                    // can already hit.
                    let _ = core.write(&[write]).await;
                }
            }
            CacheBody::full(bytes)
        }
        Collected::NotStorable(body) => body,
    };
    mark(
        core.settings.status_header.as_ref(),
        &mut parts.headers,
        outcome,
    );
    Ok((Response::from_parts(parts, body), shared))
}

/// Refreshes an entry in the background (stale-while-revalidate, early
/// refresh): at most one refresh per key in this process, and with the
/// cross-instance lock at most one across instances; the client has already
/// been served.
fn refresh_in_background<S, ReqBody, ResBody>(
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
    let Join::Leader(guard) = core.flights.join(&plan.key) else {
        return; // already being refreshed here
    };
    tokio::spawn(async move {
        let mut lock = None;
        if core.settings.distributed_lock {
            let lock_key = core.keys.lock_key(&plan.rule.namespace, &plan.key);
            match core
                .coalesce(
                    &plan.key,
                    &lock_key,
                    &plan.rule.generation_key,
                    false,
                    Some(replaces),
                )
                .await
            {
                Coalesced::Locked(token) => lock = Some((lock_key, token)),
                // Fresh again, or another instance is refreshing it.
                _ => return,
            }
        }
        bump(&core.counters.background_refreshes);
        if let Ok((_, Some(shared))) = fetch(&core, inner, req, &plan, Some(generation), None).await
        {
            guard.publish(shared);
        }
        if let Some((lock_key, token)) = lock {
            let _ = core
                .timed("unlock", core.store.unlock(&lock_key, &token))
                .await;
        }
    });
}

fn cached_response<B: Body>(
    core: &CacheCore,
    entry: Entry,
    head: bool,
    outcome: &'static str,
) -> Response<CacheBody<B>> {
    let age = entry.age_secs(entry::now_ms());
    let body = if head {
        CacheBody::empty()
    } else {
        CacheBody::full(entry.body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
    let headers = response.headers_mut();
    // `content-length` comes with the decoded entry.
    headers.insert(AGE, age_value(age));
    mark(core.settings.status_header.as_ref(), headers, outcome);
    response
}

/// `age` header values for the first hour, made once: serving a hit needs no
/// formatting or allocation for them.
fn age_value(age: u64) -> HeaderValue {
    static AGES: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..=3600u64).map(HeaderValue::from).collect());
    usize::try_from(age)
        .ok()
        .and_then(|i| AGES.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(age))
}

/// Sets the cache-status header (when enabled).
pub(crate) fn mark(name: Option<&HeaderName>, headers: &mut HeaderMap, outcome: &'static str) {
    if let Some(name) = name {
        headers.insert(name.clone(), HeaderValue::from_static(outcome));
    }
}
