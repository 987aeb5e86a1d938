//! [`CacheHandle`]: invalidation, direct writes and statistics, cloned into
//! application state or taken from request extensions.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use http::{Method, Response, Uri};
use serde::Serialize;

use crate::{
    breaker::BreakerState, core::CacheCore, entry, error::Error, semantics, store::Write,
    tags::take_tags,
};

/// A cheap, cloneable handle to one layer's cache.
///
/// Get it from [`RedisCacheLayer::handle`](crate::RedisCacheLayer::handle) (for
/// axum state) or, inside a handler behind the layer, from the request
/// extensions; with the `axum` feature it is also an extractor. Every clone
/// talks to the same store, with the same keys and policies, as the layer.
///
/// ```no_run
/// # async fn run(handle: tower_redis_cache::CacheHandle) -> Result<(), tower_redis_cache::Error> {
/// use http::{Method, Uri};
///
/// // One entry.
/// handle.invalidate(&Method::GET, &Uri::from_static("/products/42")).await?;
/// // Every cached page under /products (all query strings).
/// let removed = handle.invalidate_prefix("/products").await?;
/// // A whole namespace, in O(1).
/// handle.invalidate_namespace("products").await?;
/// println!("{} hits so far, {removed} pages dropped", handle.stats().hits);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    core: Arc<CacheCore>,
}

/// The result of [`CacheHandle::invalidate_namespace`].
///
/// A namespace bump makes every existing entry of the namespace unreachable at
/// once without touching them, so how many entries that was is not known; they
/// are left to expire on their TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceBump {
    /// The namespace's generation after the bump.
    pub generation: u64,
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
    /// same-origin `Location`/`Content-Location`) were invalidated.
    pub unsafe_invalidations: u64,
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

    /// The key under which a GET of `uri` is stored, as the layer derives it
    /// (useful with `redis-cli`). `None` when the route is not cached. With
    /// [`key_host`](crate::RedisCacheLayerBuilder::key_host) on, pass an
    /// absolute URI (`http://shop.example/products/7`): the host is part of
    /// the key.
    pub fn key_for(&self, method: &Method, uri: &Uri) -> Option<String> {
        let rule = self.core.policies.lookup(None, uri.path()).as_ref()?;
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        Some(self.core.keys.entry_key_at(
            &rule.namespace,
            method,
            &self.origin(uri)?,
            uri.path(),
            uri.query(),
        ))
    }

    /// Removes the one entry for `method` and `uri` (query order does not
    /// matter; `HEAD` means the `GET` entry it is served from). Returns how many
    /// entries were removed (0 or 1).
    pub async fn invalidate(&self, method: &Method, uri: &Uri) -> Result<u64, Error> {
        let Some(key) = self.key_for(method, uri) else {
            return Ok(0);
        };
        Ok(self.core.store.delete(&[key]).await?)
    }

    /// Removes every entry whose path starts with `path_prefix` (any query,
    /// any namespace of this layer's key space). Returns how many were removed.
    ///
    /// On Redis this is a SCAN with the prefix glob-escaped, then UNLINK of the
    /// matching keys, so its cost grows with the number of keys in Redis.
    pub async fn invalidate_prefix(&self, path_prefix: &str) -> Result<u64, Error> {
        if !path_prefix.starts_with('/') {
            return Err(Error::Invalid(format!(
                "path prefix {path_prefix:?} must start with '/'"
            )));
        }
        // Normalised as keys are: `/products/%38` is `/products/8`.
        let path_prefix: &str = &crate::key::normalize_percent(path_prefix);
        let keys = &self.core.keys;
        let pattern = keys.prefix_pattern(path_prefix);
        let filter = |key: &str| keys.is_under_path_prefix(key, path_prefix);
        Ok(self.core.store.delete_matching(&pattern, &filter).await?)
    }

    /// Drops every entry of `namespace` in O(1): the namespace's generation is
    /// bumped, so entries written before are never served again (and expire on
    /// their TTL). Every instance sharing the store sees it at its next lookup.
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<NamespaceBump, Error> {
        crate::key::check_component("namespace", namespace).map_err(|e| match e {
            Error::Config(m) => Error::Invalid(m),
            other => other,
        })?;
        let key = self.core.keys.generation_key(namespace);
        let generation = self.core.store.bump_generation(&key).await?;
        Ok(NamespaceBump { generation })
    }

    /// Stores `response` as the cached answer to `GET uri`, exactly as the
    /// layer would after a miss (same key, namespace, TTL and jitter, same
    /// rules for what may be stored). Returns whether it was stored.
    pub async fn put(&self, uri: &Uri, response: Response<Bytes>) -> Result<bool, Error> {
        Ok(self.put_many([(uri.clone(), response)]).await? == 1)
    }

    /// Stores many responses in one store round trip (one Redis pipeline), as
    /// [`put`](Self::put) does for one. Returns how many were stored; a
    /// response its route would not cache (bypassed route, status not listed,
    /// `Set-Cookie`, `no-store`...) is skipped.
    pub async fn put_many<I>(&self, responses: I) -> Result<usize, Error>
    where
        I: IntoIterator<Item = (Uri, Response<Bytes>)>,
    {
        let mut generations: HashMap<String, u64> = HashMap::new();
        let mut writes = Vec::new();
        for (uri, response) in responses {
            let Some(rule) = self.core.policies.lookup(None, uri.path()).as_ref() else {
                continue;
            };
            let (mut parts, body) = response.into_parts();
            let settings = &self.core.settings;
            let tags = take_tags(
                &settings.tag_headers,
                rule.tagger.as_ref(),
                Some(&uri),
                &mut parts,
            );
            if !rule.stores_status(parts.status)
                || semantics::refuse_to_store(
                    &parts.headers,
                    &semantics::CacheControl::parse(&parts.headers),
                    rule.http.strip_set_cookie,
                )
                .is_some()
                // A variant needs the request that selects it.
                || parts.headers.contains_key(http::header::VARY)
            {
                continue;
            }
            let generation = match generations.get(&rule.namespace) {
                Some(g) => *g,
                None => {
                    let key = self.core.keys.generation_key(&rule.namespace);
                    let g = self.core.store.generation(&key).await?;
                    generations.insert(rule.namespace.clone(), g);
                    g
                }
            };
            let lifetimes = rule.lifetimes();
            let value = entry::encode(
                parts.status,
                &parts.headers,
                &body,
                &lifetimes,
                std::time::Duration::ZERO,
                generation,
                self.core.settings.status_header.as_ref(),
            )
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "response for {uri} has a header value that is not text"
                ))
            })?;
            let key = self.core.keys.entry_key_at(
                &rule.namespace,
                &Method::GET,
                &self.origin(&uri).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{uri} names no valid host, and the key has the host (key_host): \
                         pass an absolute URI such as http://shop.example/products/7"
                    ))
                })?,
                uri.path(),
                uri.query(),
            );
            writes.push(Write {
                key,
                value,
                ttl: lifetimes.store_ttl(),
                tags: tags.iter().map(|t| self.core.keys.tag_key(t)).collect(),
            });
        }
        if !writes.is_empty() {
            self.core.store.put(&writes).await?;
            self.core.count_writes(&writes);
        }
        Ok(writes.len())
    }

    /// Removes every entry carrying any of `tags` (from its route policy, a
    /// `cache-tag`/`surrogate-key` response header or a
    /// [`CacheTags`](crate::CacheTags) extension), whatever its URL or
    /// namespace. Returns how many entries were removed.
    ///
    /// On Redis each tag is a sorted set of entry keys, updated in the same
    /// round trip as the entry and pruned as entries expire; this reads each
    /// set and unlinks its entries one key at a time (safe on Redis Cluster).
    pub async fn invalidate_tags<I, T>(&self, tags: I) -> Result<u64, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let keys: Vec<String> = tags
            .into_iter()
            .map(|t| self.core.keys.tag_key(t.as_ref()))
            .collect();
        Ok(self.core.store.invalidate_tags(&keys).await?)
    }
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
