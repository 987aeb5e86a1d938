//! [`CacheHandle`]: invalidation, direct writes and statistics, cloned into
//! application state or taken from request extensions.

use std::{borrow::Cow, collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Response, Uri};
use serde::Serialize;

use crate::{
    breaker::BreakerState,
    core::CacheCore,
    entry,
    error::{Error, StoreError},
    replay::{self, Item, Outcome},
    store::Write,
    tags::take_tags,
};

/// A cheap, cloneable handle to one layer's cache.
///
/// Get it from [`RedisCacheLayer::handle`](crate::RedisCacheLayer::handle) (for
/// axum state) or, inside a handler behind the layer, from the request
/// extensions; with the `axum` feature it is also an extractor. Every clone
/// talks to the same store, with the same keys and policies, as the layer.
///
/// Invalidations never fail because of the store: one the store does not
/// confirm within [`handle_timeout`](crate::RedisCacheLayerBuilder::handle_timeout)
/// (Redis down or slow, circuit breaker open) is queued and replayed once
/// the store answers, and until then this layer serves no hit (see
/// [`Invalidation`]). `Err` means bad input only.
///
/// ```no_run
/// # async fn run(handle: tower_redis_cache::CacheHandle) -> Result<(), tower_redis_cache::Error> {
/// // One page (every host and variant of it).
/// handle.invalidate_path("/products/42").await?;
/// // Every cached page under /products (all query strings).
/// let done = handle.invalidate_prefix("/products").await?;
/// // A whole namespace, in O(1).
/// handle.invalidate_namespace("products").await?;
/// if done.queued {
///     println!("Redis is away: the invalidation is replayed when it is back");
/// } else {
///     println!("{} hits so far, {} pages dropped", handle.stats().hits, done.removed);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    core: Arc<CacheCore>,
}

/// What an invalidation through [`CacheHandle`] did.
///
/// Either the store confirmed it within the handle's time budget
/// (`queued == false`), or it was queued (`queued == true`): the store failed,
/// did not answer in time, or the circuit breaker was open (or earlier
/// invalidations still wait). A queued invalidation is replayed, in order, by
/// a background task as soon as the store answers again, and until the
/// queue is empty this layer serves no hit and writes nothing: every
/// cacheable request goes to the service (`x-cache: BYPASS`). Other
/// instances sharing the store see it once it is replayed. See
/// [`CacheHandle::drain`] for shutting down with invalidations queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Invalidation {
    /// How many entries the store removed (0 when queued, and for a
    /// namespace bump, which leaves its entries to expire on their TTL).
    pub removed: u64,
    /// For [`CacheHandle::invalidate_namespace`] confirmed by the store: the
    /// namespace's generation after the bump.
    pub generation: Option<u64>,
    /// Not confirmed yet: queued for replay.
    pub queued: bool,
}

impl Invalidation {
    fn done(removed: u64) -> Self {
        Self {
            removed,
            generation: None,
            queued: false,
        }
    }

    fn queued() -> Self {
        Self {
            removed: 0,
            generation: None,
            queued: true,
        }
    }
}

/// Counters of one layer tree since it was built (every clone of the layer
/// and of its handle counts into the same numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Responses served fresh from the cache.
    pub hits: u64,
    /// Cacheable requests that found no usable entry. Some of them were then
    /// answered by another request's result (see `coalesced`) instead of
    /// the service.
    pub misses: u64,
    /// Requests that passed through without the cache: not cacheable (method,
    /// route, headers) or the store failed.
    pub bypasses: u64,
    /// Stale entries served (`x-cache: STALE`): inside the
    /// stale-while-revalidate window, or because the service failed.
    pub stale: u64,
    /// Misses answered by another request's result: a request of this
    /// process that was already on its way to the service, or an entry another
    /// instance stored while this one waited for its lock.
    pub coalesced: u64,
    /// Misses that found another instance computing the entry and waited.
    pub lock_waits: u64,
    /// Of those, waits that ran out and went to the service anyway.
    pub lock_timeouts: u64,
    /// Background refreshes started (stale-while-revalidate and early refresh).
    pub background_refreshes: u64,
    /// Hits that triggered an early refresh.
    pub early_refreshes: u64,
    /// Stored responses revalidated with the service by a conditional request
    /// that it answered `304 Not Modified` (`x-cache: REVALIDATED`).
    pub revalidations: u64,
    /// `304 Not Modified` answers the cache gave to conditional requests.
    pub not_modified: u64,
    /// Successful `POST`/`PUT`/`PATCH`/`DELETE` requests whose target (and
    /// same-origin `Location`/`Content-Location`) were invalidated (confirmed
    /// by the store, or queued for replay).
    pub unsafe_invalidations: u64,
    /// Responses computed on a miss and not stored because an invalidation
    /// of their key, one of their tags or a path prefix ran while they were
    /// computed: they may show data from before it. Also those whose
    /// computation took longer than the fence window (60 s).
    pub fills_fenced: u64,
    /// Invalidations queued for replay because the store did not confirm
    /// them in time (failure, timeout, open breaker), namespace bumps that
    /// replaced dropped ones included.
    pub invalidations_queued: u64,
    /// Queued invalidations the store has confirmed since.
    pub invalidations_replayed: u64,
    /// Queued invalidations replaced by namespace bumps (the queue passed
    /// its bound, or they outlived every entry they could cover).
    pub invalidations_dropped: u64,
    /// Invalidations waiting for replay now. While this is not 0 the layer
    /// serves no hit.
    pub invalidations_pending: u64,
    /// The circuit breaker's state now.
    pub breaker: BreakerState,
    /// How often the circuit breaker opened (a failed probe reopening it
    /// counts too).
    pub breaker_trips: u64,
    /// How often the open breaker let a probe through (half-open).
    pub breaker_probes: u64,
    /// How often the breaker closed again after a successful probe.
    pub breaker_recoveries: u64,
    /// Store calls that failed or ran out of time (each sent its request to the
    /// service instead).
    pub store_errors: u64,
    /// Entries written.
    pub stores: u64,
    /// Bytes written, entries' metadata included.
    pub bytes_stored: u64,
    /// The bodies of the entries written, in bytes as the service sent them
    /// (before compression; see
    /// [`Compression`](crate::Compression)).
    pub body_bytes: u64,
    /// The same bodies as stored: compressed where that paid, as sent
    /// otherwise. `body_bytes_at_rest / body_bytes` is what compression
    /// saves.
    pub body_bytes_at_rest: u64,
    /// Stored values that did not decode (they were deleted and counted as misses).
    pub corrupt_entries: u64,
}

impl CacheHandle {
    pub(crate) fn new(core: Arc<CacheCore>) -> Self {
        Self { core }
    }

    /// The origin part of the key for `uri` (with `key_host`/`key_scheme`,
    /// from the URI itself: pass absolute URIs then).
    fn origin(&self, uri: &Uri) -> Option<String> {
        self.core.settings.origin_key.of_uri(uri).ok()
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        self.core.stats()
    }

    /// The key under which a `GET` (or `HEAD`) of `uri` is stored, as the
    /// layer derives it (useful with `redis-cli`): the query normalised and
    /// shaped as the route's policy keys it
    /// ([`CachePolicy::ignore_params`](crate::CachePolicy::ignore_params)).
    /// With [`key_host`](crate::RedisCacheLayerBuilder::key_host) on, pass
    /// an absolute URI (`http://shop.example/products/7`): the host is part
    /// of the key. For a policy with
    /// [`key_headers`](crate::CachePolicy::key_headers) or a
    /// [`key_fn`](crate::CachePolicy::key_fn), the key every entry of the
    /// URI starts with (each request's material follows it).
    ///
    /// `None` when the route is not cached, when `method` is neither `GET`
    /// nor `HEAD` (only their responses are stored: no key of another
    /// method ever exists), or when the host is keyed and `uri` names none.
    pub fn key_for(&self, method: &Method, uri: &Uri) -> Option<String> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let rule = self.core.policies.for_path(uri.path())?;
        let query = keyed_query(&rule, uri.query());
        Some(self.core.keys.entry_key_at(
            &rule.namespace,
            &Method::GET,
            &self.origin(uri)?,
            uri.path(),
            query.as_deref(),
        ))
    }

    /// Runs one invalidation under the handle budget and the breaker.
    async fn run(&self, item: Item) -> Invalidation {
        let namespace = matches!(item, Item::Namespace(_));
        match replay::invalidate(&self.core, item).await {
            Outcome::Done(n) if namespace => Invalidation {
                generation: Some(n),
                ..Invalidation::done(0)
            },
            Outcome::Done(n) => Invalidation::done(n),
            Outcome::Queued => Invalidation::queued(),
        }
    }

    /// Removes the stored response for `path` (a path with an optional
    /// query, such as `/items/7` or `/search?q=tv`): for every host when the
    /// host is keyed, every `Vary` variant and every value of the policy's
    /// key headers, `HEAD` included (it is served from the `GET` entry).
    /// The query is normalised and shaped as keys are (`?b=2&a=1` is
    /// `?a=1&b=2`; parameters the policy ignores do not count).
    ///
    /// Where the entry has one key (neither the host nor request headers in
    /// it) this is one delete; otherwise it is a scan, as
    /// [`invalidate_prefix`](Self::invalidate_prefix) is, kept to the
    /// path's own keys. `removed` counts the keys removed. `Err` for a path
    /// that does not start with `/` or is not a valid request target.
    ///
    /// ```no_run
    /// # async fn run(handle: tower_redis_cache::CacheHandle) {
    /// match handle.invalidate_path("/items/7").await {
    ///     Ok(done) if done.queued => tracing::warn!("Redis is away: replayed when it is back"),
    ///     Ok(_) => {}
    ///     Err(e) => tracing::error!(error = %e, "bad path"),
    /// }
    /// # }
    /// ```
    pub async fn invalidate_path(&self, path: &str) -> Result<Invalidation, Error> {
        let target = http::uri::PathAndQuery::try_from(path)
            .ok()
            .filter(|_| path.starts_with('/') && !path.contains('#'))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{path:?} is not a path: give one that starts with '/', such as \"/items/7\""
                ))
            })?;
        let origin = (!self.origin_keyed()).then(String::new);
        Ok(self.remove(origin, target.path(), target.query()).await)
    }

    /// Removes the stored response for `method` and `uri`: the `uri` form of
    /// [`invalidate_path`](Self::invalidate_path), for code that holds a
    /// [`Uri`]. `HEAD` means the `GET` entry it is served from. With
    /// [`key_host`](crate::RedisCacheLayerBuilder::key_host) (or
    /// `key_scheme`) on, an absolute `uri` removes that host's entry, and a
    /// relative one (`/items/7`) every host's, as `invalidate_path` does.
    ///
    /// `Err` for a method whose responses are never stored (anything but
    /// `GET` and `HEAD`), and for an absolute `uri` whose host cannot be
    /// keyed.
    pub async fn invalidate(&self, method: &Method, uri: &Uri) -> Result<Invalidation, Error> {
        if method != Method::GET && method != Method::HEAD {
            return Err(Error::Invalid(format!(
                "{method} {uri}: only GET and HEAD responses are stored, so there is no {method} \
                 entry; pass Method::GET, or call invalidate_path"
            )));
        }
        let origin = if !self.origin_keyed() {
            Some(String::new())
        } else if uri.authority().is_some() {
            Some(self.origin(uri).ok_or_else(|| {
                Error::Invalid(format!(
                    "{uri} names no valid host, and the key has the host (key_host): \
                     pass a URI with a valid host, or a path for every host"
                ))
            })?)
        } else {
            None
        };
        Ok(self.remove(origin, uri.path(), uri.query()).await)
    }

    /// Whether keys hold the host or the scheme.
    fn origin_keyed(&self) -> bool {
        let origin = &self.core.settings.origin_key;
        origin.host || origin.scheme
    }

    /// Removes the entries of `path` and `query` under `origin` (`None`:
    /// every host's).
    async fn remove(
        &self,
        origin: Option<String>,
        path: &str,
        query: Option<&str>,
    ) -> Invalidation {
        let core = &self.core;
        let Some(rule) = core.policies.for_path(path) else {
            return Invalidation::done(0);
        };
        let query = keyed_query(&rule, query);
        let material = rule.shape.as_deref().is_some_and(|s| s.has_material());
        let item = match origin {
            Some(origin) if !material => Item::Keys(vec![core.keys.entry_key_at(
                &rule.namespace,
                &Method::GET,
                &origin,
                path,
                query.as_deref(),
            )]),
            origin => Item::Path(crate::key::ExactPaths {
                namespaces: vec![rule.namespace.clone()],
                origin,
                path: path.to_owned(),
                queries: vec![query.map(Cow::into_owned)],
            }),
        };
        self.run(item).await
    }

    /// Removes every entry whose path starts with `path_prefix` (any query,
    /// any namespace of this layer's key space); `removed` says how many.
    /// `Err` only for a prefix that does not start with `/`.
    ///
    /// On Redis this is a SCAN with the prefix glob-escaped, then UNLINK of the
    /// matching keys, so its cost grows with the number of keys in Redis. A
    /// scan that outlasts the handle budget goes on in the background (the
    /// call returns queued).
    pub async fn invalidate_prefix(&self, path_prefix: &str) -> Result<Invalidation, Error> {
        if !path_prefix.starts_with('/') {
            return Err(Error::Invalid(format!(
                "path prefix {path_prefix:?} must start with '/'"
            )));
        }
        // Normalised as keys are: `/products/%38` is `/products/8`.
        let path_prefix = crate::key::normalize_percent(path_prefix).into_owned();
        Ok(self.run(Item::Prefix(path_prefix)).await)
    }

    /// Drops every entry of `namespace` in O(1): the namespace's generation is
    /// bumped, so entries written before are never served again (and expire on
    /// their TTL). Every instance sharing the store sees it at its next lookup.
    /// `generation` is the new generation when the store confirmed the bump;
    /// `Err` only for a name that cannot be a namespace.
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<Invalidation, Error> {
        crate::key::check_component("namespace", namespace).map_err(|e| match e {
            Error::Config(m) => Error::Invalid(m),
            other => other,
        })?;
        Ok(self.run(Item::Namespace(namespace.to_owned())).await)
    }

    /// Stores `response` as the cached answer to `GET uri`, exactly as the
    /// layer would after a miss (same key and namespace, the same decision on
    /// whether and how long: the route's TTL and jitter on a policy-driven
    /// route, the response's own freshness on an origin-driven one; a `Date`
    /// added when missing). Returns whether it was stored: `false`
    /// too when the store failed, did not answer within the handle budget, the
    /// breaker is open, or invalidations wait for replay (a lost cache write
    /// is safe: the next request misses). `Err` only for a response that
    /// cannot be stored (a header value that is not text).
    pub async fn put(&self, uri: &Uri, response: Response<Bytes>) -> Result<bool, Error> {
        Ok(self.put_many([(uri.clone(), response)]).await? == 1)
    }

    /// Stores many responses in one store round trip (one Redis pipeline), as
    /// [`put`](Self::put) does for one, within one handle budget. Returns how
    /// many were stored (0 when the store did not take them, as for `put`);
    /// a response its route would not cache (bypassed route, status not
    /// listed, `Set-Cookie`, `no-store`...) is skipped, and so is one for a
    /// route whose key holds request headers or a
    /// [`key_fn`](crate::CachePolicy::key_fn)'s material (a URI does not
    /// say which entry it would be).
    pub async fn put_many<I>(&self, responses: I) -> Result<usize, Error>
    where
        I: IntoIterator<Item = (Uri, Response<Bytes>)>,
    {
        struct Candidate {
            namespace: String,
            uri: Uri,
            parts: http::response::Parts,
            body: Bytes,
            /// The body's length as given, before compression.
            received: usize,
            lifetimes: entry::Lifetimes,
            extra: entry::Extra,
            tags: Vec<String>,
            origin: String,
            query: Option<String>,
        }
        let core = &self.core;
        let settings = &core.settings;
        let mut candidates = Vec::new();
        for (uri, response) in responses {
            let Some(rule) = core.policies.for_path(uri.path()) else {
                continue;
            };
            let rule = &*rule;
            // Its key needs the request's headers or the key function's
            // material, which a URI does not give.
            if rule.shape.as_deref().is_some_and(|s| s.has_material()) {
                continue;
            }
            let (mut parts, body) = response.into_parts();
            let tags = take_tags(
                &settings.tag_headers,
                rule.tagger.as_ref(),
                Some(&uri),
                &mut parts,
            );
            // A variant needs the request that selects it.
            if parts.headers.contains_key(http::header::VARY) {
                continue;
            }
            // Whether and how long: the layer's own decision after a miss.
            let targeted = &settings.targeted;
            let cc = crate::http::CacheControl::parse_response(
                &parts.headers,
                targeted.for_mode(rule.http.origin_driven()),
            );
            if let Some(own) = targeted.own() {
                parts.headers.remove(own);
            }
            let now = entry::now_ms();
            let status = parts.status;
            let Some((lifetimes, mut extra)) =
                crate::http::storable(rule, status, &mut parts.headers, &cc, false, now, now)
            else {
                continue;
            };
            // `no-cache="field"` and `private="field"`: not stored.
            for name in &cc.omit {
                parts.headers.remove(name.as_str());
            }
            // Checked before any store call, so bad input is an error
            // whatever the store does.
            if encode(&parts, &body, &lifetimes, &extra, 0, settings).is_none() {
                return Err(Error::Invalid(format!(
                    "response for {uri} has a header value that is not text"
                )));
            }
            let origin = self.origin(&uri).ok_or_else(|| {
                Error::Invalid(format!(
                    "{uri} names no valid host, and the key has the host (key_host): \
                     pass an absolute URI such as http://shop.example/products/7"
                ))
            })?;
            // Stored as the layer stores it after a miss; a body past
            // `max_body_bytes`, which the layer would not store, as given.
            let received = body.len();
            let compressed = if received <= settings.max_body_bytes && !cc.no_transform {
                crate::gzip::for_store(&rule.compression, &parts.headers, &body).await
            } else {
                None
            };
            let body = match compressed {
                Some(member) => {
                    extra.gzipped = Some(received as u64);
                    member
                }
                None => body,
            };
            candidates.push(Candidate {
                received,
                query: keyed_query(rule, uri.query()).map(Cow::into_owned),
                namespace: rule.namespace.clone(),
                origin,
                uri,
                parts,
                body,
                lifetimes,
                extra,
                tags: tags.iter().map(|t| core.keys.tag_key(t)).collect(),
            });
        }
        if candidates.is_empty() || core.replay.pending() || !core.allow_store() {
            return Ok(0);
        }
        let write = async {
            let mut generations: HashMap<&str, u64> = HashMap::new();
            let mut writes = Vec::with_capacity(candidates.len());
            for c in &candidates {
                let generation = match generations.get(c.namespace.as_str()) {
                    Some(g) => *g,
                    None => {
                        let key = core.keys.generation_key(&c.namespace);
                        let g = core.store.counter(&key).await?;
                        generations.insert(&c.namespace, g);
                        g
                    }
                };
                let Some(value) = encode(
                    &c.parts,
                    &c.body,
                    &c.lifetimes,
                    &c.extra,
                    generation,
                    settings,
                ) else {
                    continue;
                };
                let key = core.keys.entry_key_at(
                    &c.namespace,
                    &Method::GET,
                    &c.origin,
                    c.uri.path(),
                    c.query.as_deref(),
                );
                writes.push(Write {
                    key,
                    value,
                    ttl: c.lifetimes.store_ttl(),
                    tags: c.tags.clone(),
                });
            }
            core.store.put(&writes).await?;
            Ok::<_, StoreError>(writes)
        };
        let clock = CacheCore::clock();
        let budget = settings.handle_timeout;
        let result = tokio::time::timeout(budget, write)
            .await
            .unwrap_or(Err(StoreError::Timeout(budget)));
        core.account("put", clock, &result);
        match result {
            Ok(writes) => {
                core.count_writes(&writes);
                for c in &candidates {
                    core.count_body(c.received, c.body.len());
                }
                Ok(writes.len())
            }
            Err(_) => Ok(0),
        }
    }

    /// Removes every entry carrying any of `tags` (from its route policy, a
    /// `cache-tag`/`surrogate-key` response header or a
    /// [`CacheTags`](crate::CacheTags) extension), whatever its URL or
    /// namespace; `removed` says how many.
    ///
    /// On Redis each tag is a sorted set of entry keys, updated in the same
    /// round trip as the entry and pruned as entries expire; this reads each
    /// set and unlinks its entries one key at a time (safe on Redis Cluster).
    /// A walk that outlasts the handle budget goes on in the background (the
    /// call returns queued).
    pub async fn invalidate_tags<I, T>(&self, tags: I) -> Result<Invalidation, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let keys: Vec<String> = tags
            .into_iter()
            .map(|t| self.core.keys.tag_key(t.as_ref()))
            .collect();
        if keys.is_empty() {
            return Ok(Invalidation::done(0));
        }
        Ok(self.run(Item::Tags(keys)).await)
    }

    /// Replays the queued invalidations (see [`Invalidation`]) for up to
    /// `timeout`; whether the queue is empty at the end. Call it on graceful
    /// shutdown: an instance that exits with invalidations queued loses them,
    /// and other instances keep serving the entries they were meant to remove
    /// until those expire.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router, cache: tower_redis_cache::CacheHandle) -> std::io::Result<()> {
    /// use std::time::Duration;
    ///
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(async {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///     })
    ///     .await?;
    /// // Requests are done; give queued invalidations a few seconds.
    /// if !cache.drain(Duration::from_secs(5)).await {
    ///     eprintln!(
    ///         "{} cache invalidations lost on shutdown",
    ///         cache.stats().invalidations_pending
    ///     );
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.core.replay.start(&self.core);
        let deadline = tokio::time::Instant::now() + timeout;
        self.core.replay.drained(deadline).await
    }
}

/// The query a key holds for `query` under `rule`: shaped as the policy
/// says.
fn keyed_query<'a>(rule: &crate::policy::Resolved, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    match rule.shape.as_deref().and_then(|s| s.query(query)) {
        Some(shaped) => Some(Cow::Owned(shaped)),
        None => query.map(Cow::Borrowed),
    }
}

/// A response given to [`CacheHandle::put_many`], encoded as the layer
/// stores one: `None` for a header value that is not text.
fn encode(
    parts: &http::response::Parts,
    body: &Bytes,
    lifetimes: &entry::Lifetimes,
    extra: &entry::Extra,
    generation: u64,
    settings: &crate::core::Settings,
) -> Option<Bytes> {
    entry::encode_with(
        parts.status,
        &parts.headers,
        body,
        lifetimes,
        Duration::ZERO,
        generation,
        settings.status_header.as_ref(),
        extra,
    )
}

impl std::fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheHandle")
            .field("store", &self.core.store)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum::{
        extract::FromRequestParts,
        response::{IntoResponse, Response},
    };
    use http::{request::Parts, StatusCode};

    use super::CacheHandle;

    /// The rejection of the [`CacheHandle`] extractor: the handler is not
    /// behind a [`RedisCacheLayer`](crate::RedisCacheLayer).
    #[derive(Debug, Clone, Copy)]
    #[non_exhaustive]
    pub struct MissingCacheHandle;

    impl std::fmt::Display for MissingCacheHandle {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "CacheHandle is missing: add RedisCacheLayer to this route (Router::layer \
                 or route_layer), or keep RedisCacheLayer::handle() in your state",
            )
        }
    }

    impl std::error::Error for MissingCacheHandle {}

    impl IntoResponse for MissingCacheHandle {
        fn into_response(self) -> Response {
            (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for CacheHandle {
        type Rejection = MissingCacheHandle;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<CacheHandle>()
                .cloned()
                .ok_or(MissingCacheHandle)
        }
    }
}

#[cfg(feature = "axum")]
pub use extract::MissingCacheHandle;
