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
    future::Future,
    mem,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    header::{self, AGE},
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
};
use http_body::Body;
use tower_service::Service;

use crate::{
    body::{collect_up_to, CacheBody, Collected},
    core::{bump, CacheCore, Coalesced, HeldLock, Lookup},
    entry::{self, Entry, Extra, Freshness, Lifetimes, Marker, Served},
    flight::{Join, Shared, Waited},
    future::ResponseFuture,
    http::{
        body_etag, judge, merge_not_modified, not_modified, same_origin, selects, storable,
        take_conditionals, variant_id, vary, CacheControl, Use, Vary, NOT_MODIFIED_HEADERS,
    },
    policy::{CookiePolicy, Resolved},
    store::Write,
    tags::take_tags,
    CacheHandle,
};

pub(crate) const HIT: &str = "HIT";
pub(crate) const MISS: &str = "MISS";
pub(crate) const BYPASS: &str = "BYPASS";
pub(crate) const STALE: &str = "STALE";
pub(crate) const REVALIDATED: &str = "REVALIDATED";

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
        let mut fields = crate::request::Fields::scan(req.headers());
        if fields.upgrade {
            bump(&self.core.counters.bypasses);
            req.extensions_mut()
                .insert(CacheHandle::new(self.core.clone()));
            return ResponseFuture::bypass(self.inner.call(req), self.core.clone());
        }
        if fields.connection {
            crate::request::strip_connection_fields(req.headers_mut());
            // What the rest of the path sees is the request without them
            // (a refusal found before stays).
            let refused = fields.refused;
            fields = crate::request::Fields::scan(req.headers());
            fields.refused = fields.refused.or(refused);
        }
        if let Some(targets) = unsafe_targets(&self.core, &req) {
            bump(&self.core.counters.bypasses);
            req.extensions_mut()
                .insert(CacheHandle::new(self.core.clone()));
            let call = self.inner.call(req);
            let core = self.core.clone();
            return ResponseFuture::cache(Box::pin(invalidate_after(core, call, targets)));
        }
        let Some(plan) = plan(&self.core, &req, &fields) else {
            bump(&self.core.counters.bypasses);
            req.extensions_mut()
                .insert(CacheHandle::new(self.core.clone()));
            return ResponseFuture::bypass(self.inner.call(req), self.core.clone());
        };
        // Wrapping the future in a span moves it; skip that (and making the
        // span) when nobody listens at debug level.
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        // A hit the store answers at once (the in-process store, the L1
        // tier) is served here: no future to allocate, no service to clone.
        let prefetched = match (!debug)
            .then(|| self.core.lookup_now(plan.key(), &plan.rule.generation_key))
            .flatten()
        {
            Some(Lookup::Found {
                entry,
                generation,
                now,
            }) => match serve_now(&self.core, entry, req.headers(), &plan, now) {
                Ok(response) => return ResponseFuture::ready(response),
                Err(entry) => Some(Lookup::Found {
                    entry,
                    generation,
                    now,
                }),
            },
            other => other,
        };
        // The service that was polled ready goes into the future; a clone
        // (not yet ready) stays for the next poll_ready.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        if !debug {
            let serve = serve(self.core.clone(), inner, req, plan, prefetched);
            return ResponseFuture::cache(Box::pin(serve));
        }
        let span = tracing::debug_span!(
            "http_cache",
            method = %req.method(),
            key = %plan.key(),
        );
        let serve = serve(self.core.clone(), inner, req, plan, None);
        ResponseFuture::cache(Box::pin(tracing::Instrument::instrument(serve, span)))
    }
}

/// The key of the stored response for `GET uri` under `rule`.
fn uri_key(core: &CacheCore, rule: &Resolved, origin: &str, uri: &http::Uri) -> String {
    core.keys.entry_key_at(
        &rule.namespace,
        &Method::GET,
        origin,
        uri.path(),
        uri.query(),
    )
}

/// What a request with an unsafe method may invalidate (RFC 9111 §4.4): its
/// target's key, and the origin and base path to resolve `Location` and
/// `Content-Location` against. `None` when the method is safe or the route
/// does not invalidate on unsafe methods.
struct UnsafeTargets {
    keys: Vec<String>,
    origin: String,
    authority: Option<String>,
    path: String,
}

fn unsafe_targets<B>(core: &CacheCore, req: &Request<B>) -> Option<UnsafeTargets> {
    // Any method not defined as safe (RFC 9110 §9.2.1), extension
    // methods included.
    if req.method().is_safe() {
        return None;
    }
    let uri = req.uri();
    let rule = core
        .policies
        .lookup(matched_route(req), uri.path())
        .as_ref()
        .filter(|r| r.http.invalidate_on_unsafe)?;
    // A request whose host cannot be keyed (two `Host` fields, a target
    // that disagrees with `Host`) may still change what the origin serves
    // under either host: every host it names is invalidated.
    let origins = match core.settings.origin_key.of(uri, req.headers()) {
        Ok(origin) => vec![origin],
        Err(_) => core.settings.origin_key.candidates(uri, req.headers()),
    };
    let origin = origins.first()?.clone();
    let keys = origins
        .iter()
        .map(|o| uri_key(core, rule, o, uri))
        .collect();
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = crate::request_authority(uri, req.headers(), scheme).ok();
    Some(UnsafeTargets {
        keys,
        origin,
        authority,
        path: uri.path().to_owned(),
    })
}

/// Runs an unsafe request, then, if it succeeded (2xx or 3xx), removes the
/// stored responses for its target and its same-origin `Location` and
/// `Content-Location` before answering.
async fn invalidate_after<F, B, E>(
    core: Arc<CacheCore>,
    call: F,
    mut targets: UnsafeTargets,
) -> Result<Response<CacheBody<B>>, E>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    let (mut parts, body) = call.await?.into_parts();
    for name in &core.settings.tag_headers {
        parts.headers.remove(name);
    }
    parts.extensions.remove::<crate::tags::CacheTags>();
    if parts.status.is_success() || parts.status.is_redirection() {
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(uri) = parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| same_origin(v, targets.authority.as_deref(), &targets.path))
            else {
                continue;
            };
            if let Some(rule) = core.policies.lookup(None, uri.path()).as_ref() {
                targets
                    .keys
                    .push(uri_key(&core, rule, &targets.origin, &uri));
            }
        }
        targets.keys.dedup();
        // Confirmed or queued for replay: either way no stale hit follows.
        crate::replay::invalidate(&core, crate::replay::Item::Keys(targets.keys)).await;
        bump(&core.counters.unsafe_invalidations);
    }
    mark(
        core.settings.status_header.as_ref(),
        &mut parts.headers,
        BYPASS,
    );
    Ok(Response::from_parts(parts, CacheBody::inner(body)))
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
    /// The key of the URI: where the response, or its `Vary` marker, lives.
    primary: String,
    /// The variant key, once a `Vary` marker was found at `primary`.
    variant: Option<String>,
    /// The `Vary` marker found at `primary`.
    marker: Option<Arc<Marker>>,
    head: bool,
    /// The request's `Cache-Control` (only `no-store` when the route ignores
    /// request directives).
    cc: CacheControl,
    /// The request carries `Authorization` and the route does not open
    /// itself to it, or `Cookie` under [`CookiePolicy::SharedOnly`]: only
    /// responses that allow sharing are served and stored.
    authorized: bool,
    /// The request carries `If-None-Match` or `If-Modified-Since`.
    conditional: bool,
    /// The cross-instance lock of the key, once this request holds it.
    lock: Option<Arc<HeldLock>>,
    /// How many requests in this process wait for this one's response,
    /// once it leads a flight.
    followers: Option<Arc<AtomicUsize>>,
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

/// The plan of a cacheable request; `None` passes it through. `fields` is
/// what the walk over the request's field names found (see
/// [`crate::request::Fields`]).
fn plan<B>(core: &CacheCore, req: &Request<B>, fields: &crate::request::Fields) -> Option<Plan> {
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        return None;
    }
    let uri = req.uri();
    let rule = core
        .policies
        .lookup(matched_route(req), uri.path())
        .as_ref()?;
    let headers = req.headers();
    let refused = fields.refused;
    let fields = fields.http;
    if fields.passes_through {
        return None;
    }
    if let Some(reason) = refused {
        tracing::debug!(reason, path = uri.path(), "passed through uncached");
        return None;
    }
    let cc = if !fields.directives {
        CacheControl::default()
    } else if rule.http.request_directives {
        CacheControl::parse_request(headers)
    } else {
        CacheControl {
            no_store: CacheControl::parse(headers).no_store,
            ..CacheControl::default()
        }
    };
    let cookies = if fields.cookie {
        rule.http.cookies
    } else {
        CookiePolicy::Ignore
    };
    if cookies == CookiePolicy::Pass {
        return None;
    }
    let origin = match core.settings.origin_key.of(uri, headers) {
        Ok(origin) => origin,
        Err(reason) => {
            tracing::debug!(%reason, path = uri.path(), "passed through uncached");
            return None;
        }
    };
    let key = uri_key(core, rule, &origin, uri);
    Some(Plan {
        primary: key,
        variant: None,
        marker: None,
        rule: rule.clone(),
        head,
        cc,
        authorized: (!rule.allow_authorization && fields.authorization)
            || cookies == CookiePolicy::SharedOnly,
        conditional: fields.conditional,
        lock: None,
        followers: None,
    })
}

impl Plan {
    /// The key of this request's entry: the variant key once a `Vary`
    /// marker was found, else the URI's key.
    fn key(&self) -> &str {
        self.variant.as_deref().unwrap_or(&self.primary)
    }
}

/// The key of the variant a request selects under `marker`.
fn variant_key(primary: &str, marker: &Marker, headers: &HeaderMap) -> String {
    let id = variant_id(headers, &marker.names);
    format!("{primary}#v{}.{id}", marker.nonce)
}

/// A fresh entry the store answered at once, served without a future; the
/// entry back when it needs more (a `Vary` marker, another variant, a
/// revalidation, a refresh).
fn serve_now<B: Body>(
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
    Ok(answer(core, entry, request, plan, HIT, now))
}

/// The path of a cacheable request: lookup (unless `prefetched` holds its
/// result), then (on a miss) single-flight in this process, the
/// cross-instance lock, and the service.
// A plain function around an `async move` block, not an `async fn`: an
// `async fn` moves its arguments into locals, and its future would hold the
// request and the plan twice (1 432 bytes against 920, past the size glibc
// hands out from its per-thread cache).
#[allow(clippy::manual_async_fn)]
fn serve<S, ReqBody, ResBody>(
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
                plan.variant = Some(variant_key(&plan.primary, &marker, req.headers()));
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
                                (HIT, due)
                            }
                            Use::StaleWhileRevalidate => {
                                bump(&core.counters.stale);
                                (STALE, !plan.head)
                            }
                            _ => {
                                bump(&core.counters.stale);
                                (STALE, false)
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
fn give_back_lock(core: &Arc<CacheCore>, lock: &mut Option<Arc<HeldLock>>) {
    if let Some(lock) = lock.take() {
        let core = core.clone();
        tokio::spawn(async move { core.unlock(&lock).await });
    }
}

/// The rest of a request that found nothing it may serve: single-flight in
/// this process, the cross-instance lock, and the service (revalidating
/// `stale` when it has validators).
// Not an `async fn`, for the reason given at `serve`.
#[allow(clippy::manual_async_fn)]
fn miss<S, ReqBody, ResBody>(
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
                MISS,
            );
            return Ok(response);
        }
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
                let shared = match follower.wait().await {
                    Waited::TimedOut if !rejoined => {
                        rejoined = true;
                        join = core.flights.join(plan.key(), hold);
                        continue;
                    }
                    Waited::Shared(shared) => Some(shared),
                    Waited::Released | Waited::TimedOut => None,
                };
                // A response that was never fresh is not reused for a request
                // that was not forwarded (see `Entry::never_fresh`).
                let usable = shared.as_ref().and_then(|shared| {
                    let entry = shared.entry()?;
                    (!entry.never_fresh() && selects(entry, req.headers(), plan.authorized))
                        .then(|| (entry.clone(), shared.outcome))
                });
                if let Some((entry, outcome)) = usable {
                    bump(&core.counters.coalesced);
                    let now = entry::now_ms();
                    return Ok(answer(&core, entry, req.headers(), &plan, outcome, now));
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
                    if !entry.never_fresh() && selects(&entry, req.headers(), plan.authorized) =>
                {
                    bump(&core.counters.coalesced);
                    let now = entry::now_ms();
                    let response = answer(&core, entry.clone(), req.headers(), &plan, HIT, now);
                    if let Some(guard) = guard {
                        guard.publish(Shared::decoded(entry, HIT));
                    }
                    return Ok(response);
                }
                Coalesced::Locked(token) => plan.lock = Some(HeldLock::new(lock_key, token)),
                Coalesced::Entry(_) | Coalesced::Proceed => {}
            }
        }

        let result = fetch(&core, inner, req, &plan, generation, stale).await;
        // Released by the entry's write when there was one; else now, off the
        // response's path.
        if let Some(held) = plan.lock.filter(|h| !h.released.load(Relaxed)) {
            let core = core.clone();
            tokio::spawn(async move { core.unlock(&held).await });
        }
        let (response, shared) = result?;
        if let (Some(guard), Some(shared)) = (guard, shared) {
            guard.publish(shared);
        }
        Ok(response)
    }
}

/// The response to a request that went to the service, and the entry
/// waiting requests may be served, if any.
type Answered<B, E> = Result<(Response<CacheBody<B>>, Option<Shared>), E>;

/// Calls the service and stores what may be stored; a stored entry that is
/// at hand is revalidated with its validators. When the service fails (an
/// error, a 5xx, or no answer within `origin_timeout`) and that entry may
/// stand in for a failure (stale-if-error), serves it instead. Returns the
/// response and, if it can be shared with waiting requests, the entry they
/// should get.
async fn fetch<S, ReqBody, ResBody>(
    core: &Arc<CacheCore>,
    inner: S,
    req: Request<ReqBody>,
    plan: &Plan,
    generation: Option<u64>,
    stored: Option<Arc<Entry>>,
) -> Answered<ResBody, S::Error>
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
        let call = call_and_store(
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
    let fetched = call_and_store(
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
    let response = cached_response(core, stale.clone(), plan.head, STALE, now);
    let shared = Shared::decoded(stale, STALE);
    Ok((response, Some(shared)))
}

/// Calls the service, then buffers and stores its response if the route and
/// the response allow it. With `stored`, the request carries its validators
/// and a `304` freshens it. With `has_fallback` (a stale entry will stand in
/// for a failure), a 5xx is never stored.
// Not an `async fn`, for the reason given at `serve`.
#[allow(clippy::manual_async_fn)]
fn call_and_store<S, ReqBody, ResBody>(
    core: Arc<CacheCore>,
    mut inner: S,
    mut req: Request<ReqBody>,
    plan: Plan,
    generation: Option<u64>,
    stored: Option<Arc<Entry>>,
    has_fallback: bool,
) -> impl Future<Output = Answered<ResBody, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    async move {
        req.extensions_mut().insert(CacheHandle::new(core.clone()));
        let may_store = !plan.head && !plan.cc.no_store;
        let (conditionals, request_headers) = if may_store {
            let conditionals = take_conditionals(req.headers_mut());
            (conditionals, req.headers().clone())
        } else {
            (HeaderMap::new(), HeaderMap::new())
        };
        // Revalidate what is stored: the service may answer 304.
        let revalidating = stored.filter(|_| may_store).filter(|e| {
            let h = &e.headers;
            h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED)
        });
        if let Some(stored) = &revalidating {
            let headers = req.headers_mut();
            if let Some(etag) = stored.headers.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = stored.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
        let uri = plan.rule.tagger.as_ref().map(|_| req.uri().clone());
        // Read before the service reads its data: an invalidation after this
        // point (of the key, a tag, a prefix) keeps the response from being
        // stored, since it may show data from before it. Without the counter
        // (the store failed) nothing is stored.
        let fence = if may_store && generation.is_some() {
            core.read_fence().await
        } else {
            None
        };
        let generation = generation.filter(|_| !may_store || fence.is_some());
        let started = Instant::now();
        let request_ms = entry::now_ms();
        let (mut parts, body) = inner.call(req).await?.into_parts();
        let response_ms = entry::now_ms();
        let mut outcome = if generation.is_some() { MISS } else { BYPASS };
        let mut body = Some(body);
        let mut known = None;
        if let (Some(stored), StatusCode::NOT_MODIFIED) = (&revalidating, parts.status) {
            // RFC 9111 §4.3.4: the stored response, with the 304's headers.
            bump(&core.counters.revalidations);
            let mut headers = stored.headers.clone();
            merge_not_modified(&mut headers, &parts.headers);
            parts.status = stored.status;
            parts.headers = headers;
            known = Some(stored.body.clone());
            body = None;
            if generation.is_some() {
                outcome = REVALIDATED;
            }
        }
        let tags = take_tags(
            &core.settings.tag_headers,
            plan.rule.tagger.as_ref(),
            uri.as_ref(),
            &mut parts,
        );
        let cc = CacheControl::parse(&parts.headers);
        // A failure a stale entry will stand in for is not stored.
        let covered_failure = has_fallback && parts.status.is_server_error();
        // With the store down nothing is written: the response is buffered
        // only for requests waiting on it, and otherwise passes through as it
        // streams.
        let wanted =
            generation.is_some() || plan.followers.as_ref().is_some_and(|f| f.load(Relaxed) > 0);
        let stamped = if may_store && wanted && !covered_failure {
            let status = parts.status;
            let authorized = plan.authorized;
            let times = (request_ms, response_ms);
            storable(
                &plan.rule,
                status,
                &mut parts.headers,
                &cc,
                authorized,
                times.0,
                times.1,
            )
        } else {
            None
        };
        let Some((lifetimes, mut extra)) = stamped else {
            mark(
                core.settings.status_header.as_ref(),
                &mut parts.headers,
                outcome,
            );
            let body = match (body, known) {
                (Some(body), _) => CacheBody::inner(body),
                (None, Some(bytes)) => CacheBody::full(bytes),
                (None, None) => CacheBody::empty(),
            };
            return Ok((Response::from_parts(parts, body), None));
        };
        // Buffered even when the store failed: requests waiting on this one get
        // the same response instead of calling the service themselves.
        let collected = match (body, known) {
            (None, Some(bytes)) => Collected::Complete(bytes),
            (Some(body), _) => collect_up_to(body, core.settings.max_body_bytes).await,
            (None, None) => Collected::Complete(Bytes::new()),
        };
        let mut shared = None;
        let body = match collected {
            Collected::Complete(bytes) => {
                if plan.rule.http.etag && !parts.headers.contains_key(header::ETAG) {
                    parts.headers.insert(header::ETAG, body_etag(&bytes));
                }
                let mut writes = Vec::with_capacity(2);
                let mut entry_key = plan.primary.clone();
                let status_header = core.settings.status_header.as_ref();
                let gen = generation.unwrap_or(0);
                if let Vary::Headers(names) = vary(&parts.headers) {
                    let marker = match &plan.marker {
                        Some(m) if m.names == names => Marker::clone(m),
                        _ => Marker {
                            names,
                            nonce: format!("{:08x}", rand::random::<u32>()),
                        },
                    };
                    entry_key = variant_key(&plan.primary, &marker, &request_headers);
                    extra.variant = Some(variant_id(&request_headers, &marker.names));
                    let index = Lifetimes {
                        fresh: lifetimes.store_ttl(),
                        stale_while_revalidate: Duration::ZERO,
                        stale_if_error: Duration::ZERO,
                        revalidate: Duration::ZERO,
                    };
                    let marker_extra = Extra {
                        marker: Some(marker),
                        ..Extra::default()
                    };
                    let value = entry::encode_with(
                        StatusCode::OK,
                        &HeaderMap::new(),
                        b"",
                        &index,
                        Duration::ZERO,
                        gen,
                        None,
                        &marker_extra,
                    );
                    if let Some(value) = value {
                        writes.push(Write {
                            key: plan.primary.clone(),
                            value,
                            ttl: lifetimes.store_ttl(),
                            tags: tags.iter().map(|t| core.keys.tag_key(t)).collect(),
                        });
                    }
                }
                // `no-cache="field"` and `private="field"`: those fields are
                // not stored.
                let omitted;
                let stored_headers = if cc.omit.is_empty() {
                    &parts.headers
                } else {
                    let mut h = parts.headers.clone();
                    for name in &cc.omit {
                        h.remove(name.as_str());
                    }
                    omitted = h;
                    &omitted
                };
                let encoded = entry::encode_with(
                    parts.status,
                    stored_headers,
                    &bytes,
                    &lifetimes,
                    started.elapsed(),
                    gen,
                    status_header,
                    &extra,
                );
                if let Some(value) = encoded {
                    // Decoded only if a follower asks for it.
                    shared = Some(Shared::encoded(value.clone(), outcome));
                    writes.push(Write {
                        key: entry_key,
                        value,
                        ttl: lifetimes.store_ttl(),
                        tags: tags.iter().map(|t| core.keys.tag_key(t)).collect(),
                    });
                    if let Some(fence) = fence.filter(|_| generation.is_some()) {
                        // Awaited (under the budget) so the client's next request
                        // can already hit. The lock, if held, is released in the
                        // same round trip where the store can.
                        let _ = core
                            .write_fenced(&writes, fence, plan.lock.as_deref())
                            .await;
                    }
                }
                if !conditionals.is_empty()
                    && parts.status == StatusCode::OK
                    && not_modified(&conditionals, &parts.headers, response_ms)
                {
                    bump(&core.counters.not_modified);
                    crate::metrics::not_modified();
                    let mut response = not_modified_response(&parts.headers);
                    mark(status_header, response.headers_mut(), outcome);
                    return Ok((response, shared));
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
        if let Ok((_, Some(shared))) = fetch(&core, inner, req, &plan, Some(generation), None).await
        {
            guard.publish(shared);
        }
        if let Some(held) = &plan.lock {
            core.unlock(held).await;
        }
    });
}

/// A stored entry as a response; `now` (milliseconds since the epoch) gives
/// its `age`.
fn cached_response<B: Body>(
    core: &CacheCore,
    entry: Arc<Entry>,
    head: bool,
    outcome: &'static str,
    now: u64,
) -> Response<CacheBody<B>> {
    let age = entry.age_secs(now);
    let status_header = core.settings.status_header.as_ref();
    // An entry only this request holds (decoded from the store's bytes) is
    // taken apart; one the in-process store or a flight shares is served
    // from its prepared headers.
    let (status, headers, body, marked) = match Arc::try_unwrap(entry) {
        Ok(entry) => (entry.status, entry.headers, entry.body, false),
        Err(shared) => {
            let (headers, marked) = served_headers(&shared, status_header, outcome);
            (shared.status, headers, shared.body.clone(), marked)
        }
    };
    let body = if head {
        CacheBody::empty()
    } else {
        CacheBody::full(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    let headers = response.headers_mut();
    // `content-length` comes with the decoded entry.
    headers.insert(AGE, age_value(age));
    if marked {
        record(outcome);
    } else {
        mark(status_header, headers, outcome);
    }
    response
}

/// The headers of a shared entry as a hit serves them, and whether they
/// already carry `outcome` in the cache-status field: a clone of the map
/// prepared on the entry's first hit, or a copy with room for the two fields
/// when the entry was prepared for another layer's status field.
fn served_headers(
    entry: &Entry,
    status_header: Option<&HeaderName>,
    outcome: &'static str,
) -> (HeaderMap, bool) {
    let served = entry.served.get_or_init(|| {
        let mut headers = copy_headers(&entry.headers);
        headers.insert(AGE, age_value(0));
        if let Some(name) = status_header {
            headers.insert(name.clone(), HeaderValue::from_static(HIT));
        }
        Served {
            status_header: status_header.cloned(),
            headers,
        }
    });
    if served.status_header.as_ref() == status_header {
        (
            served.headers.clone(),
            outcome == HIT || status_header.is_none(),
        )
    } else {
        (copy_headers(&entry.headers), false)
    }
}

/// A copy of stored headers with room for the `age` and cache-status fields
/// a served entry gets. A clone would be exactly full, and the first insert
/// would move every field to a larger allocation.
fn copy_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(stored.len() + 2);
    for (name, value) in stored {
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// Serves a stored entry, as a `304 Not Modified` when the request's
/// conditional headers match it (RFC 9111 §4.3.2).
fn answer<B: Body>(
    core: &CacheCore,
    entry: Arc<Entry>,
    request: &HeaderMap,
    plan: &Plan,
    outcome: &'static str,
    now: u64,
) -> Response<CacheBody<B>> {
    if entry.status == StatusCode::OK
        && plan.conditional
        && not_modified(request, &entry.headers, entry.stored_at_ms)
    {
        bump(&core.counters.not_modified);
        crate::metrics::not_modified();
        let age = entry.age_secs(now);
        let mut response = not_modified_response(&entry.headers);
        let headers = response.headers_mut();
        headers.insert(AGE, age_value(age));
        mark(core.settings.status_header.as_ref(), headers, outcome);
        return response;
    }
    cached_response(core, entry, plan.head, outcome, now)
}

/// A `304` with the headers RFC 9110 §15.4.5 asks for, from `stored`.
fn not_modified_response<B: Body>(stored: &HeaderMap) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    for name in NOT_MODIFIED_HEADERS.iter().chain([&header::LAST_MODIFIED]) {
        for value in stored.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
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

/// Counts and logs a request's outcome.
fn record(outcome: &'static str) {
    crate::metrics::request(outcome);
    tracing::debug!(outcome, "cache outcome");
}

/// Sets the cache-status header (when enabled).
pub(crate) fn mark(name: Option<&HeaderName>, headers: &mut HeaderMap, outcome: &'static str) {
    record(outcome);
    if let Some(name) = name {
        headers.insert(name.clone(), HeaderValue::from_static(outcome));
    }
}
