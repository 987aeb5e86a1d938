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
};

use bytes::Bytes;
use http::{
    header::{AGE, AUTHORIZATION, CONTENT_LENGTH},
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response,
};
use http_body::Body;
use tower_service::Service;

use crate::{
    body::{collect_up_to, CacheBody, Collected},
    core::{bump, CacheCore, Lookup},
    entry::{self, Entry},
    future::ResponseFuture,
    jitter,
    policy::Resolved,
    semantics,
    store::Write,
    CacheHandle,
};

pub(crate) const HIT: &str = "HIT";
pub(crate) const MISS: &str = "MISS";
pub(crate) const BYPASS: &str = "BYPASS";

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
            return ResponseFuture::bypass(self.inner.call(req), self.core.status_header.clone());
        };
        // The service that was polled ready goes into the future; a clone
        // (not yet ready) stays for the next poll_ready.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::cache(Box::pin(serve(self.core.clone(), inner, req, plan)))
    }
}

/// What a cacheable request will use.
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

async fn serve<S, ReqBody, ResBody>(
    core: Arc<CacheCore>,
    mut inner: S,
    mut req: Request<ReqBody>,
    plan: Plan,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    let generation = match core.lookup(&plan.key, &plan.rule.generation_key).await {
        Lookup::Hit(entry) => {
            bump(&core.counters.hits);
            return Ok(hit_response(&core, entry, plan.head));
        }
        Lookup::Miss { generation } => {
            bump(&core.counters.misses);
            Some(generation)
        }
        Lookup::Failed => {
            bump(&core.counters.bypasses);
            None
        }
    };
    req.extensions_mut().insert(CacheHandle::new(core.clone()));
    let (mut parts, body) = inner.call(req).await?.into_parts();
    let storable = !plan.head
        && plan.rule.stores_status(parts.status)
        && semantics::refuse_to_store(&parts.headers).is_none();
    let body = match generation {
        Some(generation) if storable => match collect_up_to(body, core.max_body_bytes).await {
            Collected::Complete(bytes) => {
                let ttl = jitter::jittered(plan.rule.ttl, plan.rule.jitter);
                let encoded = entry::encode(
                    parts.status,
                    &parts.headers,
                    &bytes,
                    ttl,
                    generation,
                    core.status_header.as_ref(),
                );
                if let Some(value) = encoded {
                    // Awaited (under the budget) so the client's next request
                    // can already hit.
                    let _ = core
                        .write(&[Write {
                            key: plan.key,
                            value,
                            ttl,
                        }])
                        .await;
                }
                CacheBody::full(bytes)
            }
            Collected::NotStorable(body) => body,
        },
        _ => CacheBody::inner(body),
    };
    let outcome = if generation.is_some() { MISS } else { BYPASS };
    mark(core.status_header.as_ref(), &mut parts.headers, outcome);
    Ok(Response::from_parts(parts, body))
}

fn hit_response<B: Body>(core: &CacheCore, entry: Entry, head: bool) -> Response<CacheBody<B>> {
    let age = entry.age_secs(entry::now_ms());
    let len = entry.body.len();
    let body = if head {
        CacheBody::empty()
    } else {
        CacheBody::full(entry.body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(AGE, HeaderValue::from(age));
    mark(core.status_header.as_ref(), headers, HIT);
    response
}

/// Sets the cache-status header (when enabled).
pub(crate) fn mark(name: Option<&HeaderName>, headers: &mut HeaderMap, outcome: &'static str) {
    if let Some(name) = name {
        headers.insert(name.clone(), HeaderValue::from_static(outcome));
    }
}
