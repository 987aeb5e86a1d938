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
//! Stores: [`store::RedisStore`] (standalone or Cluster),
//! [`store::TieredStore`] (an in-process tier in front of Redis, coherent
//! through client tracking) and [`store::MemoryStore`] (the default when no
//! Redis is configured).
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_redis_cache::{CachePolicy, RedisCacheLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = RedisCacheLayer::builder()
//!     // .redis_url("redis://127.0.0.1:6379")  // without it: the in-memory store
//!     .prefix("api")
//!     .version("v1")
//!     .route(
//!         "/products/{id}",
//!         CachePolicy::new().namespace("products").ttl(Duration::from_secs(900)),
//!     )
//!     .build()?;
//! let handle = cache.handle(); // keep it in your state to invalidate
//!
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(|| async { "a product" }))
//!     .layer(cache);
//! # let _ = (app, handle);
//! // axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! The guide in the repository's `docs/` folder covers keys, policies,
//! invalidation, failure behaviour and operations.
//!
//! # Features
//!
//! - `axum` (default): per-route policies through axum's `MatchedPath`, and
//!   [`CacheHandle`] as an extractor.
//! - `tls`: `rediss://` URLs (rustls).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![deny(unsafe_code)]

mod body;
mod breaker;
mod core;
mod entry;
mod error;
mod flight;
mod future;
mod handle;
mod jitter;
mod key;
mod layer;
mod policy;
mod semantics;
mod service;
pub mod store;
mod tags;

#[cfg(feature = "axum")]
pub use handle::MissingCacheHandle;
pub use {
    body::CacheBody,
    breaker::BreakerState,
    error::{Error, StoreError},
    fred,
    future::ResponseFuture,
    handle::{CacheHandle, CacheStats, NamespaceBump},
    layer::{RedisCacheLayer, RedisCacheLayerBuilder},
    policy::CachePolicy,
    service::CacheService,
    tags::CacheTags,
};
