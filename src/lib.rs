//! A Redis-backed HTTP response cache for any [tower](https://docs.rs/tower) service: axum routers and
//! handlers, plain hyper services, anything that takes an `http::Request`.
//!
//! [`RedisCacheLayer`] derives a key from the method, path and normalized query
//! (plus a prefix, version and namespace), stores the response in Redis with a
//! jittered TTL, and answers later requests from there with `x-cache: HIT` and
//! `age`. Per-route [`CachePolicy`]s choose TTL, jitter, namespace, cacheable
//! statuses, stale windows and tags; a [`CacheHandle`] invalidates one entry,
//! a path prefix, a tag or a whole namespace. Concurrent misses on one key make
//! one call to your service, across instances too. When Redis fails or is slow
//! the request goes to your service (fail-open, behind a circuit breaker): the
//! cache never turns into an error page.
//!
//! HTTP semantics follow RFC 9111: `no-store`, `private` and `Set-Cookie`
//! responses are never stored, `Vary` selects variants, `ETag` and
//! `Last-Modified` answer conditional requests with `304`, stale entries are
//! revalidated, and request directives are honoured. Freshness comes from
//! each route's TTL ([`FreshnessMode::PolicyDriven`], the default) or from the
//! response as a shared cache computes it ([`FreshnessMode::OriginDriven`],
//! for a cache in front of any origin; see `examples/reverse_proxy.rs`).
//!
//! Stores: [`store::RedisStore`] (standalone, Cluster or Sentinel),
//! [`store::TieredStore`] (an in-process tier in front of Redis, coherent
//! through client tracking) and [`store::MemoryStore`] (the default when no
//! Redis is configured).
//!
//! # Quick start
//!
//! The layer goes around the router; its [`CacheHandle`] goes into your
//! state (or comes as an extractor, [`CacheHandle`] implementing axum's
//! `FromRequestParts`) to invalidate after writes:
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{extract::{Path, State}, routing::get, Router};
//! use tower_redis_cache::{CacheHandle, CachePolicy, RedisCacheLayer};
//!
//! #[derive(Clone)]
//! struct AppState {
//!     cache: CacheHandle,
//! }
//!
//! async fn show(Path(id): Path<u64>) -> String {
//!     format!("product {id}") // runs on a miss only
//! }
//!
//! // From the state.
//! async fn update(State(s): State<AppState>, Path(id): Path<u64>) -> &'static str {
//!     // ... write to the database, then drop what it changed:
//!     if let Err(e) = s.cache.invalidate_path(&format!("/products/{id}")).await {
//!         // Bad input only: Redis being away queues the invalidation
//!         // (`Invalidation::queued`) and replays it. Log and answer.
//!         tracing::warn!(error = %e, "cache invalidation refused");
//!     }
//!     "updated"
//! }
//!
//! // As an extractor (any handler behind the layer).
//! async fn clear(cache: CacheHandle) -> &'static str {
//!     if let Err(e) = cache.invalidate_namespace("products").await {
//!         tracing::warn!(error = %e, "cache invalidation refused");
//!     }
//!     "cleared"
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = RedisCacheLayer::builder()
//!     // .redis_url("redis://127.0.0.1:6379")  // without it: the in-memory store
//!     .prefix("api")
//!     .version("v1")
//!     .route(
//!         "/products/{id}",
//!         CachePolicy::new().namespace("products").ttl(Duration::from_secs(900)),
//!     )
//!     .build()?;
//! let state = AppState { cache: cache.handle() };
//!
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(show).put(update))
//!     .route("/admin/clear", axum::routing::post(clear))
//!     .layer(cache)
//!     .with_state(state);
//! # let _ = app;
//! // axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Guide and examples
//!
//! The guide is the `docs/` folder of the crate's sources (readable on
//! docs.rs):
//! [getting started](https://docs.rs/crate/tower-redis-cache/latest/source/docs/getting-started.md),
//! [configuration](https://docs.rs/crate/tower-redis-cache/latest/source/docs/configuration.md),
//! [keys](https://docs.rs/crate/tower-redis-cache/latest/source/docs/keys.md),
//! [invalidation](https://docs.rs/crate/tower-redis-cache/latest/source/docs/invalidation.md),
//! [HTTP semantics](https://docs.rs/crate/tower-redis-cache/latest/source/docs/http-semantics.md),
//! [security](https://docs.rs/crate/tower-redis-cache/latest/source/docs/security.md),
//! [resilience](https://docs.rs/crate/tower-redis-cache/latest/source/docs/resilience.md),
//! [operations and logs](https://docs.rs/crate/tower-redis-cache/latest/source/docs/operations.md),
//! [Redis Cluster](https://docs.rs/crate/tower-redis-cache/latest/source/docs/cluster.md),
//! [managed Redis, Sentinel and TLS](https://docs.rs/crate/tower-redis-cache/latest/source/docs/managed-redis.md),
//! [the L1 tier](https://docs.rs/crate/tower-redis-cache/latest/source/docs/tiers.md),
//! [coming from fastapi-rc](https://docs.rs/crate/tower-redis-cache/latest/source/docs/migrating-from-fastapi-rc.md).
//!
//! The [examples](https://docs.rs/crate/tower-redis-cache/latest/source/examples/)
//! each run with one `cargo run --example <name>` from a clone:
//! [`products`](https://docs.rs/crate/tower-redis-cache/latest/source/examples/products.rs)
//! (an axum product API: state, invalidation by tag, batch writes),
//! [`per_route`](https://docs.rs/crate/tower-redis-cache/latest/source/examples/per_route.rs),
//! [`hyper_service`](https://docs.rs/crate/tower-redis-cache/latest/source/examples/hyper_service.rs)
//! (no axum),
//! [`hashmap_store`](https://docs.rs/crate/tower-redis-cache/latest/source/examples/hashmap_store.rs)
//! (a store of your own),
//! [`tags`](https://docs.rs/crate/tower-redis-cache/latest/source/examples/tags.rs),
//! [`reverse_proxy`](https://docs.rs/crate/tower-redis-cache/latest/source/examples/reverse_proxy.rs)
//! (a shared cache in front of any origin).
//!
//! # Features
//!
//! - `axum` (default): per-route policies through axum's `MatchedPath`, and
//!   [`CacheHandle`] as an extractor.
//! - `redis` (default): [`store::RedisStore`] and
//!   [`RedisCacheLayerBuilder::redis_url`], through fred (re-exported as
//!   [`fred`]). Without it the crate does not depend on fred: the in-memory
//!   store and stores of your own remain.
//! - `tls`: `rediss://` URLs (rustls); implies `redis`.
//! - `l1` (default): [`store::TieredStore`], the in-process tier in front of
//!   Redis, kept coherent across instances by Redis client tracking;
//!   implies `redis`.
//! - `metrics`: counters, a gauge and histograms through the
//!   [`metrics`](https://docs.rs/metrics) facade (`http_cache_requests_total`
//!   by outcome, store latency and errors by operation, bytes stored, breaker
//!   state); install any `metrics` exporter (Prometheus, StatsD...) to read
//!   them. [`CacheHandle::stats`] has the same numbers without the feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![deny(unsafe_code)]

mod authority;
mod body;
mod breaker;
mod core;
mod decoded;
mod entry;
mod error;
mod future;
mod gzip;
mod handle;
mod hex;
mod http;
mod jitter;
mod key;
mod layer;
mod metrics;
mod pipeline;
mod policy;
mod replay;
mod request;
#[cfg(feature = "axum")]
mod routes;
mod service;
mod shape;
mod stampede;
mod status;
pub mod store;
mod tags;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use fred;
#[cfg(feature = "axum")]
pub use handle::MissingCacheHandle;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use routes::CacheRouterExt;
pub use {
    authority::{request_authority, BadAuthority},
    body::CacheBody,
    breaker::BreakerState,
    error::{Error, StoreError},
    future::ResponseFuture,
    handle::{CacheHandle, CacheStats, Invalidation},
    layer::{RedisCacheLayer, RedisCacheLayerBuilder},
    policy::{CachePolicy, Codec, Compression, CookiePolicy, FreshnessMode},
    service::CacheService,
    tags::CacheTags,
};

/// The Rust snippets of the README and the guide, compiled (and, unless
/// marked `no_run`, run) as doctests, so that what a reader copies builds.
#[cfg(all(doctest, feature = "axum", feature = "l1"))]
mod guide_snippets {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/getting-started.md")]
    struct GettingStarted;
    #[doc = include_str!("../docs/configuration.md")]
    struct Configuration;
    #[doc = include_str!("../docs/keys.md")]
    struct Keys;
    #[doc = include_str!("../docs/invalidation.md")]
    struct Invalidation;
    #[doc = include_str!("../docs/http-semantics.md")]
    struct HttpSemantics;
    #[doc = include_str!("../docs/security.md")]
    struct Security;
    #[doc = include_str!("../docs/resilience.md")]
    struct Resilience;
    #[doc = include_str!("../docs/operations.md")]
    struct Operations;
    #[doc = include_str!("../docs/cluster.md")]
    struct Cluster;
    #[doc = include_str!("../docs/managed-redis.md")]
    struct ManagedRedis;
    #[doc = include_str!("../docs/tiers.md")]
    struct Tiers;
    #[doc = include_str!("../docs/compression.md")]
    struct Compression;
    #[doc = include_str!("../docs/migrating-from-fastapi-rc.md")]
    struct MigratingFromFastapiRc;
    #[doc = include_str!("../docs/design.md")]
    struct Design;
    #[doc = include_str!("../docs/performance.md")]
    struct Performance;
}

/// Entry points for the crate's own benchmarks (`benches/micro.rs`,
/// `benches/hitpath.rs`), compiled only with the `bench` feature. Not part
/// of the API: no stability promise, may change in any release.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod __bench {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};

    /// Derives the key of `GET path?query`.
    pub fn entry_key(path: &str, query: Option<&str>) -> String {
        let keys = crate::key::KeySpace::new("api", "v1").expect("valid key parts");
        keys.entry_key("products", &Method::GET, path, query)
    }

    /// A key space, to derive many keys without rebuilding it.
    pub struct Keys(crate::key::KeySpace);

    impl Keys {
        /// `api:v1:`.
        pub fn new() -> Self {
            Self(crate::key::KeySpace::new("api", "v1").expect("valid key parts"))
        }

        /// The key of `GET path?query` in namespace `products`.
        pub fn entry_key(&self, path: &str, query: Option<&str>) -> String {
            self.0.entry_key("products", &Method::GET, path, query)
        }
    }

    impl Default for Keys {
        fn default() -> Self {
            Self::new()
        }
    }

    /// Encodes a 200 response with `headers` and `body`.
    pub fn encode(headers: &HeaderMap, body: &[u8]) -> Bytes {
        let lifetimes = crate::entry::Lifetimes {
            fresh: Duration::from_secs(900),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidate: Duration::ZERO,
        };
        crate::entry::encode(
            StatusCode::OK,
            headers,
            body,
            &lifetimes,
            Duration::ZERO,
            0,
            None,
        )
        .expect("text headers")
    }

    /// Decodes a stored value; the body length, or `None`.
    pub fn decode(value: &Bytes) -> Option<usize> {
        crate::entry::decode(value).map(|e| e.body.len())
    }

    /// A policy table of `routes` route patterns and `prefixes` prefixes.
    pub struct Policies(crate::policy::Policies);

    impl Policies {
        /// `/r{i}/{id}` for each route, `/p{i}/` for each prefix.
        pub fn new(routes: usize, prefixes: usize) -> Self {
            let keys = crate::key::KeySpace::new("api", "v1").expect("valid key parts");
            let base = crate::policy::Resolved::defaults(&keys);
            let policy = crate::CachePolicy::new();
            let rule = |what: String| policy.resolve(&base, &what, &keys).expect("valid rule");
            let routes = (0..routes)
                .map(|i| (format!("/r{i}/{{id}}"), rule(format!("r{i}"))))
                .collect();
            let prefixes = (0..prefixes)
                .map(|i| (format!("/p{i}/"), rule(format!("p{i}"))))
                .collect();
            let default = Some(std::sync::Arc::new(base.clone()));
            Self(crate::policy::Policies::new(default, routes, prefixes).expect("valid table"))
        }

        /// Whether a rule caches `path` (with axum's matched route, if any).
        pub fn lookup(&self, matched: Option<&str>, path: &str) -> bool {
            self.0.lookup(matched, path).is_some()
        }
    }
}
