//! [`CacheService`]: the tower service. It dispatches each request: an
//! upgrade passes through, an unsafe request goes to
//! [`invalidate`](crate::pipeline::invalidate), a cacheable one is
//! planned and looked up (see [`pipeline`](crate::pipeline)).

use std::{
    future::Future,
    mem,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::{
    body::CacheBody,
    core::{bump, CacheCore, Lookup},
    future::ResponseFuture,
    http::{take_range, RangeRequest},
    pipeline::{answer_range, invalidate_after, plan, serve, serve_now, unsafe_targets},
    policy::Rule,
    status::Fwd,
    CacheHandle,
};

/// The service produced by [`RedisCacheLayer`](crate::RedisCacheLayer).
///
/// It keeps the inner service's error type: store failures are logged and
/// counted, never returned.
pub struct CacheService<S> {
    inner: S,
    core: Arc<CacheCore>,
    /// The policy of the one route this service caches, when its layer
    /// carries one (see `CacheRouterExt::cached_route`).
    route: Option<Rule>,
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, core: Arc<CacheCore>, route: Option<Rule>) -> Self {
        Self { inner, core, route }
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
            route: self.route.clone(),
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
        let route = self.route.as_ref();
        // A route that carries its own policy is cached by the layer made
        // for it, inside this one.
        if route.is_none() && self.core.policies.carried_route(&req) {
            return ResponseFuture::aside(self.inner.call(req));
        }
        let mut checks = crate::request::RequestChecks::scan(req.headers());
        if checks.upgrade {
            crate::status::bypassed(req.method(), req.uri(), "an Upgrade request");
            bump(&self.core.counters.bypasses);
            req.extensions_mut()
                .insert(CacheHandle::new(self.core.clone()));
            return ResponseFuture::bypass(self.inner.call(req), self.core.clone(), Fwd::Bypass);
        }
        if checks.connection {
            crate::request::strip_connection_fields(req.headers_mut());
            // What the rest of the path sees is the request without them
            // (a refusal found before stays).
            let refused = checks.refused;
            checks = crate::request::RequestChecks::scan(req.headers());
            checks.refused = checks.refused.or(refused);
        }
        if let Some(targets) = unsafe_targets(&self.core, &req, route) {
            crate::status::bypassed(
                req.method(),
                req.uri(),
                "an unsafe method: not cached; what it changes is invalidated if it succeeds",
            );
            bump(&self.core.counters.bypasses);
            req.extensions_mut()
                .insert(CacheHandle::new(self.core.clone()));
            let call = self.inner.call(req);
            let core = self.core.clone();
            return ResponseFuture::cache(Box::pin(invalidate_after(core, call, targets)));
        }
        let Some(plan) = plan(&self.core, &mut req, &checks, route) else {
            bump(&self.core.counters.bypasses);
            req.extensions_mut()
                .insert(CacheHandle::new(self.core.clone()));
            let fwd = if req.method() == Method::GET || req.method() == Method::HEAD {
                Fwd::Bypass
            } else {
                Fwd::Method
            };
            return ResponseFuture::bypass(self.inner.call(req), self.core.clone(), fwd);
        };
        // The range is answered from the complete response: neither the
        // lookup nor the service sees `Range` or `If-Range`.
        let range = if checks.http.range {
            take_range(req.headers_mut(), plan.head)
        } else {
            None
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
                Ok(response) => {
                    let response = match &range {
                        Some(range) => answer_range(range, response),
                        None => response,
                    };
                    return ResponseFuture::ready(response);
                }
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
            return ranged(serve, range);
        }
        let span = tracing::debug_span!(
            "http_cache",
            method = %req.method(),
            key = %plan.key(),
        );
        let serve = serve(self.core.clone(), inner, req, plan, None);
        ranged(tracing::Instrument::instrument(serve, span), range)
    }
}

/// The future of a cacheable request, its response turned into the answer
/// to `range` when the request asked for one.
fn ranged<F, B, E>(
    serve: impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static,
    range: Option<RangeRequest>,
) -> ResponseFuture<F, B, E>
where
    B: Body<Data = Bytes> + Send + 'static,
{
    match range {
        None => ResponseFuture::cache(Box::pin(serve)),
        Some(range) => ResponseFuture::cache(Box::pin(async move {
            serve.await.map(|response| answer_range(&range, response))
        })),
    }
}
