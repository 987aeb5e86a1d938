//! [`CacheRouterExt`]: a route and its cache policy, written once.

use axum::{routing::MethodRouter, Router};

use crate::{error::Error, CachePolicy, RedisCacheLayer};

/// Adds a route to an axum [`Router`] with the policy its cache applies,
/// so that the pattern is written once.
///
/// [`cached_route`](Self::cached_route) wraps the route's handlers in a
/// layer of `cache` that carries `policy` (what it leaves unset comes from
/// the layer's default policy) and shares the layer's store, handle and
/// counters. `cache` itself may wrap the whole router too (`.layer(cache)`,
/// for the other routes): it steps aside for this route, and the
/// [`CacheHandle`](crate::CacheHandle) resolves the route's paths to
/// `policy`, so `invalidate_path` finds what it stores. With
/// [`bypass_unmatched(true)`](crate::RedisCacheLayerBuilder::bypass_unmatched)
/// no typo can leave a route uncached: there is no second pattern to
/// mistype.
///
/// `Err` for a pattern axum 0.8 would refuse, one already given a policy
/// (on the builder or here), or a policy that does not validate: the
/// messages of [`build`](crate::RedisCacheLayerBuilder::build).
///
/// Register the route on the router that `cache` wraps: in a router
/// nested under a prefix, axum reports the route as the nested pattern
/// (`/api/items/{id}`), which is not the one registered.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use tower_redis_cache::{CachePolicy, CacheRouterExt, RedisCacheLayer};
///
/// # fn run() -> Result<(), tower_redis_cache::Error> {
/// let cache = RedisCacheLayer::builder().bypass_unmatched(true).build()?;
/// let app: Router = Router::new()
///     .cached_route(
///         "/items/{id}",
///         get(|| async { "an item" }),
///         &cache,
///         CachePolicy::new().namespace("items").ttl(Duration::from_secs(900)),
///     )?
///     .route("/health", get(|| async { "ok" }))
///     .layer(cache);
/// # let _ = app; Ok(()) }
/// ```
pub trait CacheRouterExt<S>: Sized {
    /// Adds `method_router` at `path`, cached by `cache` under `policy`.
    fn cached_route(
        self,
        path: &str,
        method_router: MethodRouter<S>,
        cache: &RedisCacheLayer,
        policy: CachePolicy,
    ) -> Result<Self, Error>;
}

impl<S: Clone + Send + Sync + 'static> CacheRouterExt<S> for Router<S> {
    fn cached_route(
        self,
        path: &str,
        method_router: MethodRouter<S>,
        cache: &RedisCacheLayer,
        policy: CachePolicy,
    ) -> Result<Self, Error> {
        let layer = cache.carrying(path, &policy)?;
        Ok(self.route(path, method_router.layer(layer)))
    }
}
