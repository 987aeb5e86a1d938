//! The path of a cacheable request through the layer, one stage per file:
//!
//! 1. [`plan`]: only `GET` and `HEAD` on a route whose policy caches, without
//!    credentials the route does not accept or `Cache-Control: no-store`;
//!    anything else passes through untouched (`BYPASS`).
//! 2. [`lookup`]: the entry under the time budget; a fresh entry of the
//!    current namespace generation is served (`CacheStatus::Hit`, with `age`) by
//!    [`respond`]; a `HEAD` is answered from the `GET` entry without a body.
//! 3. [`miss`]: single-flight in this process and the cross-instance lock,
//!    then [`fill`]: the service answers and, if the route and the response
//!    allow it, the response is stored (`MISS`). A store failure sends the
//!    request through (`BYPASS`).
//! 4. [`range`]: a request's `Range`, taken off it before the lookup, is
//!    answered from the complete `200` that 2 or 3 produced.
//! 5. [`invalidate`]: an unsafe request that succeeds removes what it
//!    changed.
//!
//! [`CacheService`](crate::CacheService) only dispatches to these.

mod fill;
mod invalidate;
mod lookup;
mod miss;
mod plan;
mod range;
mod respond;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

pub(crate) use self::{
    invalidate::{invalidate_after, unsafe_targets},
    lookup::{serve, serve_now},
    plan::plan,
    range::answer_range,
};

/// The inner service as the cache path needs it (its future may run in a
/// spawned task: a background refresh, a slow call past `origin_timeout`).
pub(crate) trait Inner<ReqBody, ResBody>:
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
pub(crate) trait CachedBody:
    Body<Data = Bytes, Error: Send + 'static> + Send + 'static
{
}

impl<B> CachedBody for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
}
