//! [`ResponseFuture`], the future of [`CacheService`](crate::CacheService).
//!
//! A request that bypasses the cache runs the inner future in place (no
//! allocation); a hit the store answers at once (the in-process store, the L1
//! tier) is ready when the future is made; any other cacheable request runs a
//! boxed state machine (lookup, inner call, store).

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use std::sync::Arc;

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::{
    body::CacheBody,
    core::CacheCore,
    status::{cache_status, mark, CacheStatus, Detail, Fwd},
    store::BoxFuture,
};

pin_project! {
    /// The response future of [`CacheService`](crate::CacheService).
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E>
    where
        B: Body,
    {
        Bypass {
            #[pin]
            future: F,
            core: Arc<CacheCore>,
            fwd: Fwd,
        },
        Aside {
            #[pin]
            future: F,
        },
        Cache {
            future: BoxFuture<'static, Result<Response<CacheBody<B>>, E>>,
        },
        Ready {
            response: Option<Response<CacheBody<B>>>,
        },
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    /// A request the cache does not handle; `fwd` says why in
    /// `Cache-Status`.
    pub(crate) fn bypass(future: F, core: Arc<CacheCore>, fwd: Fwd) -> Self {
        Self {
            state: State::Bypass { future, core, fwd },
        }
    }

    /// The inner service's response as it is: another layer of the same
    /// cache, inside this one, answered it.
    pub(crate) fn aside(future: F) -> Self {
        Self {
            state: State::Aside { future },
        }
    }

    pub(crate) fn cache(future: BoxFuture<'static, Result<Response<CacheBody<B>>, E>>) -> Self {
        Self {
            state: State::Cache { future },
        }
    }

    /// A response already made (a hit the store answered at once).
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Bypass { future, core, fwd } => {
                let (mut parts, body) = ready!(future.poll(cx))?.into_parts();
                let settings = &core.settings;
                settings.strip_cache_fields(&mut parts);
                mark(
                    settings.status_header.as_ref(),
                    &mut parts.headers,
                    CacheStatus::Bypass,
                );
                let detail = Detail {
                    fwd: Some(*fwd),
                    fwd_status: Some(parts.status),
                    ..Detail::default()
                };
                cache_status(settings.cache_status.as_ref(), &mut parts.headers, detail);
                Poll::Ready(Ok(Response::from_parts(parts, CacheBody::inner(body))))
            }
            StateProj::Aside { future } => {
                let (parts, body) = ready!(future.poll(cx))?.into_parts();
                Poll::Ready(Ok(Response::from_parts(parts, CacheBody::inner(body))))
            }
            StateProj::Cache { future } => future.as_mut().poll(cx),
            StateProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl<F, B: Body, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
