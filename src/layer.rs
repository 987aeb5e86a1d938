//! [`RedisCacheLayer`] and its builder: the configuration, validated once in
//! [`RedisCacheLayerBuilder::build`].

use std::{sync::Arc, time::Duration};

use http::HeaderName;
use tower_layer::Layer;

use crate::{
    core::{CacheCore, Settings, Targeted},
    error::Error,
    key::KeySpace,
    policy::{CachePolicy, Policies, Resolved, Rule},
    replay::ReplayConfig,
    service::CacheService,
    status::CacheStatusField,
    store::{MemoryStore, Store},
    CacheHandle,
};

/// A tower layer that caches responses in Redis (or in memory).
///
/// Cheap to clone: every clone, and every service it makes, shares one store,
/// one [`CacheHandle`] and one set of statistics. The host is not in the
/// key unless [`key_host`](RedisCacheLayerBuilder::key_host) is on: services
/// of different hosts behind clones of one layer (an axum router and a
/// plain hyper service, say) read each other's entries. Turn `key_host` on
/// for them, or give each its own layer with its own
/// [`prefix`](RedisCacheLayerBuilder::prefix) on one store.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use tower_redis_cache::{CachePolicy, RedisCacheLayer};
///
/// # fn run() -> Result<(), tower_redis_cache::Error> {
/// let cache = RedisCacheLayer::builder()      // in-memory store unless a Redis one is given
///     .prefix("api")
///     .version("v1")
///     .default_policy(CachePolicy::new().ttl(Duration::from_secs(60)))
///     .route("/products/{id}", CachePolicy::new().ttl(Duration::from_secs(900)))
///     .build()?;
/// let app: Router = Router::new()
///     .route("/products/{id}", get(|| async { "a product" }))
///     .layer(cache);
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCacheLayer {
    core: Arc<CacheCore>,
    /// What a route's policy fills its unset fields from: the default
    /// policy, resolved.
    base: Arc<Resolved>,
    /// The policy of the one route this layer caches, when it carries one.
    route: Option<Rule>,
}

impl RedisCacheLayer {
    /// Starts a configuration with the defaults listed on
    /// [`RedisCacheLayerBuilder`].
    pub fn builder() -> RedisCacheLayerBuilder {
        RedisCacheLayerBuilder::default()
    }

    /// The handle to this layer's cache: invalidation, direct writes, stats.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.core.clone())
    }

    /// A layer for the one route `pattern`, caching it with `policy` (what
    /// it leaves unset comes from the default policy), with this layer's
    /// store, handle and counters. The pattern is registered with this
    /// layer: layers of this cache around the route step aside for it, and
    /// the handle resolves the route's paths to `policy`. Used by
    /// [`CacheRouterExt::cached_route`](crate::CacheRouterExt::cached_route),
    /// which writes the pattern once for the router and the cache.
    pub(crate) fn carrying(&self, pattern: &str, policy: &CachePolicy) -> Result<Self, Error> {
        let rule = policy.resolve(&self.base, &format!("route {pattern:?}"), &self.core.keys)?;
        self.core.policies.carry(pattern, rule.clone())?;
        if let Some(rule) = &rule {
            self.core.replay.register(&self.core.keys, rule);
        }
        Ok(Self {
            core: self.core.clone(),
            base: self.base.clone(),
            route: Some(rule),
        })
    }
}

impl<S> Layer<S> for RedisCacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, self.core.clone(), self.route.clone())
    }
}

impl std::fmt::Debug for RedisCacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCacheLayer")
            .field("store", &self.core.store)
            .finish_non_exhaustive()
    }
}

enum StoreChoice {
    Memory,
    Store(Arc<dyn Store>),
    #[cfg(feature = "redis")]
    Url(String),
}

/// The configuration of a [`RedisCacheLayer`]: the key space, the store and
/// how the layer talks to it, and the [`CachePolicy`]s (the default one and
/// one per route or path prefix) that say what is cached and for how long.
/// Nothing is checked until [`build`](Self::build), which names what to fix.
///
/// | setting | default |
/// |---|---|
/// | store | in-memory ([`MemoryStore`], 64 MiB) |
/// | `prefix` / `version` | `cache` / `v1` |
/// | `default_policy` (what every route inherits: TTL, jitter, namespace, statuses, stale windows, HTTP options) | [`CachePolicy::new`]: 60 s, jitter 0.1 (±10%), namespace `default`, `200 OK` only, no `Authorization`, no stale windows or early refresh, policy-driven freshness |
/// | routes and prefixes | none; unmatched routes use the default policy |
/// | `bypass_unmatched` | `false` |
/// | `status_header` | `x-cache` |
/// | `store_timeout` (the time budget of every store call) | 50 ms |
/// | `max_body_bytes` | 1 MiB |
/// | `single_flight` / `distributed_lock` | on / on |
/// | `lock_ttl` / `coalesce_timeout` | 5 s / 5 s |
/// | `origin_timeout` (with a stale entry at hand) | none |
/// | `tag_headers` | `cache-tag`, `surrogate-key` |
/// | `key_host` / `key_scheme` | off / off (the key is method, path and query) |
/// | `host_header` / `proto_header` (trusted forwarding headers) | none |
/// | `circuit_breaker` | open after 5 failures in a row, probe after 500 ms |
/// | `handle_timeout` (the time budget of a [`CacheHandle`](crate::CacheHandle) call) | 100 ms |
/// | `max_pending_invalidations` (replay queue bound) | 10 000 |
pub struct RedisCacheLayerBuilder {
    store: StoreChoice,
    prefix: String,
    version: String,
    routes: Vec<(String, CachePolicy)>,
    prefixes: Vec<(String, CachePolicy)>,
    bypass_unmatched: bool,
    status_header: Option<HeaderName>,
    store_timeout: Duration,
    max_body_bytes: usize,
    single_flight: bool,
    distributed_lock: bool,
    lock_ttl: Duration,
    coalesce_timeout: Duration,
    origin_timeout: Option<Duration>,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    handle_timeout: Duration,
    max_pending_invalidations: usize,
    tag_headers: Vec<HeaderName>,
    targeted: Vec<HeaderName>,
    own_cache_control: Option<HeaderName>,
    cache_status: Option<(String, bool)>,
    default_policy: CachePolicy,
    key_host: bool,
    key_scheme: bool,
    host_header: Option<HeaderName>,
    proto_header: Option<HeaderName>,
}

impl Default for RedisCacheLayerBuilder {
    fn default() -> Self {
        Self {
            store: StoreChoice::Memory,
            prefix: "cache".into(),
            version: "v1".into(),
            routes: Vec::new(),
            prefixes: Vec::new(),
            bypass_unmatched: false,
            status_header: Some(HeaderName::from_static("x-cache")),
            store_timeout: Duration::from_millis(50),
            max_body_bytes: 1024 * 1024,
            single_flight: true,
            distributed_lock: true,
            lock_ttl: Duration::from_secs(5),
            coalesce_timeout: Duration::from_secs(5),
            origin_timeout: None,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_millis(500),
            handle_timeout: Duration::from_millis(100),
            max_pending_invalidations: 10_000,
            tag_headers: vec![
                HeaderName::from_static("cache-tag"),
                HeaderName::from_static("surrogate-key"),
            ],
            targeted: vec![HeaderName::from_static("cdn-cache-control")],
            own_cache_control: None,
            cache_status: None,
            default_policy: CachePolicy::new(),
            key_host: false,
            key_scheme: false,
            host_header: None,
            proto_header: None,
        }
    }
}

impl RedisCacheLayerBuilder {
    /// Uses Redis at `url` (`redis://`, `rediss://` with the `tls` feature,
    /// `redis-cluster://`), with
    /// [`RedisStore::builder`](crate::store::RedisStore::builder)'s defaults; it connects
    /// in the background when the layer is built.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), tower_redis_cache::Error> {
    /// let cache = tower_redis_cache::RedisCacheLayer::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .build()?;
    /// # let _ = cache; Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.store = StoreChoice::Url(url.into());
        self
    }

    /// Uses a store you built: a
    /// [`RedisStore`](crate::store::RedisStore) with your own settings, a
    /// [`MemoryStore`], or your own [`Store`].
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = StoreChoice::Store(Arc::new(store));
        self
    }

    /// The first part of every key (default `cache`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The second part of every key (default `v1`). Change it when the stored
    /// format of your responses changes: a `v2` layer never reads `v1` entries.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// A policy for one route pattern, in axum 0.8 syntax (`/products/{id}`,
    /// `/files/{*path}`). Matched through axum's `MatchedPath` when present and
    /// against the request path otherwise; the most specific pattern wins.
    pub fn route(mut self, pattern: impl Into<String>, policy: CachePolicy) -> Self {
        self.routes.push((pattern.into(), policy));
        self
    }

    /// A policy for every path starting with `prefix` that no route pattern
    /// matched; the longest prefix wins.
    pub fn path_prefix(mut self, prefix: impl Into<String>, policy: CachePolicy) -> Self {
        self.prefixes.push((prefix.into(), policy));
        self
    }

    /// When `true`, requests that match no route or prefix pass through
    /// uncached (default `false`: they use the [default policy](Self::default_policy)).
    pub fn bypass_unmatched(mut self, bypass: bool) -> Self {
        self.bypass_unmatched = bypass;
        self
    }

    /// The name of the header that says `HIT`, `MISS` or `BYPASS` (default
    /// `x-cache`).
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_redis_cache::RedisCacheLayer;
    ///
    /// let cache = RedisCacheLayer::builder()
    ///     .status_header(HeaderName::from_static("x-api-cache"))
    ///     .build()
    ///     .unwrap();
    /// # let _ = cache;
    /// ```
    pub fn status_header(mut self, name: HeaderName) -> Self {
        self.status_header = Some(name);
        self
    }

    /// Sends no cache-status header.
    pub fn without_status_header(mut self) -> Self {
        self.status_header = None;
        self
    }

    /// Adds a `Cache-Status` field (RFC 9211) to every response, naming this
    /// cache `name`: `hit` and `ttl` for a response served from the cache;
    /// `fwd` (`uri-miss`, `vary-miss`, `stale`, `request`, `bypass`,
    /// `method`), `fwd-status` and `stored` for one that went to the
    /// service; `collapsed` for a request that waited for another's
    /// response. With `show_key`, also the cache key (it names your routes
    /// and prefix: leave it off for public clients). Alongside the status
    /// header, or instead of it with
    /// [`without_status_header`](Self::without_status_header). Off by default.
    ///
    /// ```
    /// use tower_redis_cache::RedisCacheLayer;
    ///
    /// let cache = RedisCacheLayer::builder()
    ///     .cache_status("api-cache", false)
    ///     .without_status_header()
    ///     .build()
    ///     .unwrap();
    /// # let _ = cache;
    /// ```
    pub fn cache_status(mut self, name: impl Into<String>, show_key: bool) -> Self {
        self.cache_status = Some((name.into(), show_key));
        self
    }

    /// The targeted cache-control fields (RFC 9213) that origin-driven
    /// routes follow, most specific first (default: `CDN-Cache-Control`).
    /// The first one present with a valid, non-empty structured-field
    /// dictionary replaces `Cache-Control` and `Expires` for this cache's
    /// freshness and storability; an invalid one is ignored as a whole.
    /// These fields are sent on to clients, for the caches after this one.
    /// An empty list turns them off.
    ///
    /// They never open up what the trust rules keep out of the shared
    /// cache: a response with `Set-Cookie` is not stored, and one to a
    /// request with `Authorization` or a shared-only `Cookie` is stored
    /// only when its `Cache-Control` allows it.
    pub fn targeted_cache_control(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.targeted = names.into_iter().collect();
        self
    }

    /// This cache's own targeted field (RFC 9213), such as
    /// `api-cache-control`: followed before every other field, and removed
    /// from responses before they leave the layer, so it speaks to this
    /// cache alone. In policy-driven mode it is the only field read: a
    /// handler sets it to override its route's TTL for one response
    /// (`max-age=5`, `no-store`, `stale-while-revalidate=30`...).
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_redis_cache::RedisCacheLayer;
    ///
    /// let cache = RedisCacheLayer::builder()
    ///     .own_cache_control(HeaderName::from_static("api-cache-control"))
    ///     .build()
    ///     .unwrap();
    /// # let _ = cache;
    /// ```
    pub fn own_cache_control(mut self, name: HeaderName) -> Self {
        self.own_cache_control = Some(name);
        self
    }

    /// The time budget of every store call on the request path (default
    /// 50 ms). Past it the request goes to the inner service.
    pub fn store_timeout(mut self, budget: Duration) -> Self {
        self.store_timeout = budget;
        self
    }

    /// The largest body that is stored (default 1 MiB). Larger responses
    /// stream to the client untouched and are not stored.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// Whether concurrent misses on one key in this process make one call to
    /// the service, the others waiting for its result (default `true`).
    pub fn single_flight(mut self, enable: bool) -> Self {
        self.single_flight = enable;
        self
    }

    /// Whether a miss takes a short per-key lock in the store so that only one
    /// instance computes an entry while the others wait for it (default
    /// `true`; a store without locks, like the in-memory one, ignores it).
    pub fn distributed_lock(mut self, enable: bool) -> Self {
        self.distributed_lock = enable;
        self
    }

    /// How long a per-key lock lives at most (default 5 s): a crashed
    /// instance holds up the others for no longer than this.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long a request waits for another request's result (in this
    /// process, or another instance's entry) before calling the service
    /// itself (default 5 s). In this process it is also the longest a
    /// request leads the others: when it is up, its waiters gather once more
    /// behind a new leader instead of all calling the service, so a waiter
    /// waits at most about twice this.
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.coalesce_timeout = timeout;
        self
    }

    /// The response headers a handler can tag its entry with (default
    /// `cache-tag` and `surrogate-key`; values split on commas and spaces).
    /// They are removed from every response that passes the layer.
    pub fn tag_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.tag_headers = names.into_iter().collect();
        self
    }

    /// When a stale entry could stand in (inside its stale-if-error window),
    /// wait at most `limit` for the service before serving the stale entry
    /// (default: no limit). The service's answer, when it comes, still
    /// refreshes the entry.
    pub fn origin_timeout(mut self, limit: Duration) -> Self {
        self.origin_timeout = Some(limit);
        self
    }

    /// After `failures` store failures in a row, skip the store for
    /// `cooldown`, then let one probe through (default 5 and 500 ms).
    /// `failures` 0 turns the breaker off.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// The time budget of a [`CacheHandle`](crate::CacheHandle) call
    /// (invalidations, `put`, `put_many`; default 100 ms). Like lookups, these
    /// calls also go through the circuit breaker. An invalidation the store
    /// has not confirmed within it returns queued (its store call goes on in
    /// the background and is replayed if it fails); a write returns not
    /// stored. A handler never waits for the cache longer than this per call.
    pub fn handle_timeout(mut self, budget: Duration) -> Self {
        self.handle_timeout = budget;
        self
    }

    /// The most invalidations kept for replay (default 10 000). Past it the
    /// queued invalidations are replaced by bumps of every namespace they
    /// could touch (the entry's own namespace for an entry; every namespace
    /// of the layer for a prefix or tags), and counted as dropped: more is
    /// invalidated, nothing is missed. See
    /// [`Invalidation`](crate::Invalidation).
    pub fn max_pending_invalidations(mut self, max: usize) -> Self {
        self.max_pending_invalidations = max;
        self
    }

    /// The policy every route starts from, and the one requests that match
    /// no route or prefix use (unless [`bypass_unmatched`](Self::bypass_unmatched)):
    /// TTL, jitter, namespace, statuses, `Authorization`, stale windows,
    /// early refresh and the HTTP options ([`CachePolicy::origin_driven`],
    /// [`CachePolicy::etag`], [`CachePolicy::invalidate_on_unsafe`]...).
    /// What it leaves unset keeps [`CachePolicy`]'s defaults (60 s, jitter
    /// 0.1, namespace `default`, `200 OK` only, no `Authorization`, no stale
    /// windows, no early refresh, policy-driven freshness); a route's policy
    /// fills what it leaves unset from this one. A second call replaces the
    /// first.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_cache::{CachePolicy, RedisCacheLayer};
    ///
    /// let proxy_cache = RedisCacheLayer::builder()
    ///     .default_policy(
    ///         CachePolicy::new()
    ///             .origin_driven()
    ///             .stale_if_error(Duration::from_secs(300)),
    ///     )
    ///     .key_host(true)
    ///     .build()
    ///     .unwrap();
    /// # let _ = proxy_cache;
    /// ```
    pub fn default_policy(mut self, policy: CachePolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// Puts the request's host (and port) in the key, for a layer that serves
    /// several hosts whose responses differ. The host is the request's
    /// authority as [`request_authority`](crate::request_authority) gives
    /// it: the URI's authority, else the single `Host` field, lower case,
    /// without the default port. A request whose host it refuses (none,
    /// several `Host` fields, an invalid one, a URI authority that differs
    /// from `Host`) passes through uncached. A forwarding header is used
    /// only when named with [`host_header`](Self::host_header).
    pub fn key_host(mut self, enable: bool) -> Self {
        self.key_host = enable;
        self
    }

    /// Puts the scheme (`http`, `https`) in the key. It comes from the request
    /// URI, else the header named with [`proto_header`](Self::proto_header),
    /// else `http`.
    pub fn key_scheme(mut self, enable: bool) -> Self {
        self.key_scheme = enable;
        self
    }

    /// Trusts this header (such as `x-forwarded-host`) for the host in the
    /// key. Name it only when a proxy you run sets it on every request and
    /// strips what clients send; otherwise any client could write entries
    /// that other hosts' visitors are served.
    pub fn host_header(mut self, name: HeaderName) -> Self {
        self.host_header = Some(name);
        self
    }

    /// Trusts this header (such as `x-forwarded-proto`) for the scheme in the
    /// key, under the same conditions as [`host_header`](Self::host_header).
    pub fn proto_header(mut self, name: HeaderName) -> Self {
        self.proto_header = Some(name);
        self
    }

    /// Validates everything and builds the layer. With
    /// [`redis_url`](Self::redis_url) it must run inside a Tokio runtime.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_cache::{CachePolicy, RedisCacheLayer};
    ///
    /// let err = RedisCacheLayer::builder()
    ///     .default_policy(CachePolicy::new().ttl(Duration::ZERO))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("default policy: TTL is zero"));
    /// ```
    pub fn build(self) -> Result<RedisCacheLayer, Error> {
        let keys = KeySpace::new(&self.prefix, &self.version)?;
        let base = Resolved::defaults(&keys);
        let layer_rule = self
            .default_policy
            .resolve(&base, "default policy", &keys)?;
        let base = Arc::new(layer_rule.as_deref().cloned().unwrap_or(base));
        if self.store_timeout.is_zero() {
            return Err(Error::config(
                "store_timeout is zero: give the store a budget such as 50 ms",
            ));
        }
        if self.lock_ttl < Duration::from_millis(1) {
            return Err(Error::config(
                "lock_ttl is below 1 ms: give it about the time your slowest response takes, e.g. 5 s",
            ));
        }
        if self.handle_timeout.is_zero() {
            return Err(Error::config(
                "handle_timeout is zero: give handle calls a budget such as 100 ms",
            ));
        }
        if let Some(name) = self
            .own_cache_control
            .iter()
            .chain(&self.targeted)
            .find(|n| **n == http::header::CACHE_CONTROL || **n == http::header::PRAGMA)
        {
            return Err(Error::config(format!(
                "{name} cannot be a targeted cache-control field: name a field of its own, \
                 such as cdn-cache-control or api-cache-control"
            )));
        }
        let cache_status = match &self.cache_status {
            None => None,
            Some((name, key)) => Some(CacheStatusField::new(name, *key).ok_or_else(|| {
                Error::config(format!(
                    "cache_status name {name:?} is empty or not printable ASCII; \
                     use a name such as \"api-cache\""
                ))
            })?),
        };
        if self.max_pending_invalidations == 0 {
            return Err(Error::config(
                "max_pending_invalidations is zero: keep e.g. 10000 invalidations for replay",
            ));
        }
        if self.breaker_threshold > 0 && self.breaker_cooldown.is_zero() {
            return Err(Error::config(
                "circuit_breaker cool-down is zero: use e.g. 500 ms, or 0 failures to turn the breaker off",
            ));
        }
        let resolve = |rules: Vec<(String, CachePolicy)>, kind: &str| {
            rules
                .into_iter()
                .map(|(at, policy)| {
                    let rule = policy.resolve(&base, &format!("{kind} {at:?}"), &keys)?;
                    Ok((at, rule))
                })
                .collect::<Result<Vec<_>, Error>>()
        };
        let routes = resolve(self.routes, "route")?;
        let prefixes = resolve(self.prefixes, "path prefix")?;
        let default = if self.bypass_unmatched {
            None
        } else {
            layer_rule
        };
        let origin_key = crate::key::OriginKey {
            host: self.key_host,
            scheme: self.key_scheme,
            host_header: self.host_header,
            proto_header: self.proto_header,
        };
        let replay = replay_config(
            &keys,
            self.max_pending_invalidations,
            std::iter::once(&default)
                .chain(routes.iter().map(|(_, r)| r))
                .chain(prefixes.iter().map(|(_, r)| r))
                .flatten(),
        );
        let policies = Policies::new(default, routes, prefixes)?;
        let store: Arc<dyn Store> = match self.store {
            StoreChoice::Memory => Arc::new(MemoryStore::default()),
            StoreChoice::Store(store) => store,
            #[cfg(feature = "redis")]
            StoreChoice::Url(url) => Arc::new(crate::store::RedisStore::builder(url).build()?),
        };
        // The built-in stores drive themselves; any other through defaults.
        let store = store.__backend();
        let settings = Settings {
            status_header: self.status_header,
            budget: self.store_timeout,
            max_body_bytes: self.max_body_bytes,
            single_flight: self.single_flight,
            distributed_lock: self.distributed_lock,
            lock_ttl: self.lock_ttl,
            coalesce_timeout: self.coalesce_timeout,
            origin_timeout: self.origin_timeout,
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: self.breaker_cooldown,
            tag_headers: self.tag_headers,
            origin_key,
            handle_timeout: self.handle_timeout,
            targeted: Targeted::new(self.own_cache_control, self.targeted),
            cache_status,
        };
        let core = CacheCore::new(store, keys, policies, settings, replay);
        Ok(RedisCacheLayer {
            core: Arc::new(core),
            base,
            route: None,
        })
    }
}

/// The namespaces of the layer's rules and how long an entry of each stays
/// stored at most.
fn replay_config<'a>(
    keys: &KeySpace,
    bound: usize,
    rules: impl Iterator<Item = &'a Arc<Resolved>>,
) -> ReplayConfig {
    let mut config = ReplayConfig {
        bound,
        namespaces: Vec::new(),
    };
    for rule in rules {
        config.add(keys, rule);
    }
    config
}

impl std::fmt::Debug for RedisCacheLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCacheLayerBuilder")
            .field("prefix", &self.prefix)
            .field("version", &self.version)
            .field("default_policy", &self.default_policy)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: RedisCacheLayerBuilder) -> String {
        b.build().unwrap_err().to_string()
    }

    #[test]
    fn the_replay_queue_knows_each_namespace_and_its_longest_life() {
        let layer = RedisCacheLayer::builder()
            .prefix("t")
            .default_policy(CachePolicy::new().ttl(Duration::from_secs(100)).jitter(0.1))
            .route(
                "/a/{id}",
                CachePolicy::new()
                    .namespace("a")
                    .stale_if_error(Duration::from_secs(50)),
            )
            .route("/b/{id}", CachePolicy::new().namespace("a"))
            .path_prefix("/o/", CachePolicy::new().namespace("o").origin_driven())
            .build()
            .unwrap();
        let lives: Vec<(String, String, Option<Duration>)> = layer
            .core
            .replay
            .namespaces()
            .iter()
            .map(|n| (n.namespace.clone(), n.key_head.clone(), n.longest))
            .collect();
        assert_eq!(
            lives,
            vec![
                (
                    "default".into(),
                    "t:v1:default:".into(),
                    Some(Duration::from_secs(110))
                ),
                ("a".into(), "t:v1:a:".into(), Some(Duration::from_secs(160))),
                ("o".into(), "t:v1:o:".into(), None),
            ]
        );
    }

    #[test]
    fn bad_configurations_say_what_to_fix() {
        let b = RedisCacheLayer::builder;
        assert!(err(b().prefix("")).contains("prefix is empty"));
        assert!(err(b().version("v:1")).contains("version"));
        let default = |policy: CachePolicy| err(b().default_policy(policy));
        let e = default(CachePolicy::new().ttl(Duration::ZERO));
        assert!(e.contains("default policy: TTL is zero"), "{e}");
        assert!(default(CachePolicy::new().jitter(1.5)).contains("jitter 1.5 is outside"));
        assert!(default(CachePolicy::new().statuses([])).contains("no cacheable statuses"));
        for never in [103, 206, 304] {
            let status = http::StatusCode::from_u16(never).unwrap();
            let e = default(CachePolicy::new().statuses([http::StatusCode::OK, status]));
            assert!(
                e.contains(&format!("status {status} cannot be stored")),
                "{e}"
            );
        }
        assert!(default(CachePolicy::new().early_refresh(-1.0)).contains("early_refresh"));
        assert!(default(CachePolicy::new().namespace("a b")).contains("namespace"));
        assert!(err(b().store_timeout(Duration::ZERO)).contains("store_timeout"));
        assert!(err(b().lock_ttl(Duration::ZERO)).contains("lock_ttl"));
        assert!(err(b().circuit_breaker(3, Duration::ZERO)).contains("cool-down"));
        assert!(err(b().handle_timeout(Duration::ZERO)).contains("handle_timeout"));
        assert!(err(b().max_pending_invalidations(0)).contains("max_pending_invalidations"));
        let e = err(b().cache_status("caché", false));
        assert!(e.contains("cache_status name"), "{e}");
        let e = err(b().own_cache_control(http::header::CACHE_CONTROL));
        assert!(e.contains("cache-control cannot be a targeted"), "{e}");
        let e = err(b().targeted_cache_control([http::header::PRAGMA]));
        assert!(e.contains("pragma cannot be a targeted"), "{e}");
        let e = err(b().route("/p/{id}", CachePolicy::new().ttl(Duration::ZERO)));
        assert!(e.contains("route \"/p/{id}\": TTL is zero"), "{e}");
        assert!(err(b().route("p", CachePolicy::new())).contains("must start with '/'"));
        #[cfg(feature = "redis")]
        assert!(err(b().redis_url("redis://127.0.0.1:1")).contains("Tokio runtime"));
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn bad_urls_fail_at_build() {
        let e = err(RedisCacheLayer::builder().redis_url("127.0.0.1:6379"));
        assert!(e.contains("no scheme"), "{e}");
    }

    #[test]
    fn the_defaults_build() {
        assert!(RedisCacheLayer::builder().build().is_ok());
    }
}
