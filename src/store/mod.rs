//! Where entries live: the [`Store`] trait and its implementations,
//! [`RedisStore`] (fred), [`TieredStore`] (an in-process tier in front of
//! Redis) and [`MemoryStore`] (in-process, the default).
//!
//! [`Store`] is the public contract, in storage terms. The layer drives a
//! store through a crate-private trait, `Backend` (in `backend.rs`), which
//! adds the fused round trips, the cross-instance lock and the fenced
//! writes: the built-in stores implement it directly, and any other store
//! gets correct, slower versions built from its [`Store`] methods. The
//! layer runs every call under its time budget; a store only has to report
//! failures, never to hide them.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;

use crate::{error::StoreError, key::KeySpace};

mod backend;
#[cfg(feature = "redis")]
mod generations;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "l1")]
mod tiered;

pub(crate) use self::backend::{Backend, Fence, Fenced, Fetched, FENCE_WINDOW};
pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "l1")]
#[cfg_attr(docsrs, doc(cfg(feature = "l1")))]
pub use self::tiered::{LocalTier, TieredStore};

/// `bytes` for a log line: whole mebibytes as such, else in bytes.
pub(crate) fn size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The hasher of the in-process caches' keys. Keys are request paths a
/// client chooses, so it is seeded per cache (foldhash's `RandomState`); it
/// costs a fraction of the standard library's SipHash on every lookup.
pub(crate) type KeyHasher = foldhash::quality::RandomState;

/// Runs `on` in a task of its own for every event a fred client broadcasts
/// on `events` (invalidations, errors, reconnections), and with `None` when
/// the task fell behind and events were dropped. fred's own `on_*` listeners
/// stop for good at that point, which would leave a tracker deaf to every
/// later invalidation. Ends when the client is gone or `on` returns false.
#[cfg(feature = "redis")]
pub(crate) fn listen<T, F, Fut>(mut events: tokio::sync::broadcast::Receiver<T>, mut on: F)
where
    T: Clone + Send + 'static,
    F: FnMut(Option<T>) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    use tokio::sync::broadcast::error::RecvError;
    tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(event) => Some(event),
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            };
            if !on(event).await {
                return;
            }
        }
    });
}

/// A boxed, `Send` future, as returned by [`Store`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One value to write, with its TTL (already jittered) and the tag indexes
/// it joins.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Write {
    /// The full key.
    pub key: String,
    /// The encoded entry.
    pub value: Bytes,
    /// Time to live; stores keep millisecond precision.
    pub ttl: Duration,
    /// Keys of the tag indexes that must list `key` (until it expires), written
    /// in the same round trip as the value.
    pub tags: Vec<String>,
}

/// The entries of one path-prefix invalidation: every entry whose path
/// starts with the prefix, in every namespace of the layer and, when the
/// host (or scheme) is part of the key, for every host. The layer builds
/// it; a store tests each key with [`matches`](Self::matches), and may
/// narrow its search with [`glob`](Self::glob) (a Redis `SCAN` pattern) or
/// [`key_start`](Self::key_start) (what every such key starts with).
///
/// The layer also builds one for a single path whose entries it cannot
/// name one by one ([`CacheHandle::invalidate_path`](crate::CacheHandle::invalidate_path)
/// with the host or request headers in the key): then `matches` accepts
/// only that path's entries, and [`path`](Self::path) is the path. A store
/// that decides with `matches` removes exactly those.
#[derive(Debug, Clone)]
pub struct PathPrefix {
    keys: KeySpace,
    path: String,
    glob: String,
    exact: Option<crate::key::ExactPaths>,
}

impl PathPrefix {
    /// The entries under `path` in the key space `keys`.
    pub(crate) fn new(keys: &KeySpace, path: &str) -> Self {
        Self {
            keys: keys.clone(),
            path: path.to_owned(),
            glob: keys.prefix_pattern(path),
            exact: None,
        }
    }

    /// The entries of one path (every host, variant and key material).
    pub(crate) fn exact(keys: &KeySpace, paths: &crate::key::ExactPaths) -> Self {
        let path = crate::key::normalize_percent(&paths.path).into_owned();
        Self {
            keys: keys.clone(),
            glob: keys.prefix_pattern(&path),
            path,
            exact: Some(paths.clone()),
        }
    }

    /// The path prefix, as the layer normalised it (percent-encodings as
    /// in the keys).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether `key` is an entry under the prefix: the exact test, which
    /// no other key passes (not a lock, a tag index or a counter).
    pub fn matches(&self, key: &str) -> bool {
        match &self.exact {
            Some(paths) => self.keys.is_entry_of(key, paths),
            None => self.keys.is_under_path_prefix(key, &self.path),
        }
    }

    /// A Redis glob pattern (as `SCAN ... MATCH` takes it) that every
    /// matching key matches; other keys may match it too, so use it to
    /// narrow a scan, and [`matches`](Self::matches) to decide.
    pub fn glob(&self) -> &str {
        &self.glob
    }

    /// What every matching key starts with (the layer's
    /// `{prefix}:{version}:`): a store with ordered keys may scan from it.
    pub fn key_start(&self) -> &str {
        self.keys.base()
    }
}

/// A key-value store for the cache: values with a TTL, tag indexes, and
/// counters.
///
/// Implement it to put the cache on another backend; pass the store to
/// [`RedisCacheLayerBuilder::store`](crate::RedisCacheLayerBuilder::store).
/// Futures must be `Send`; the layer applies its time budget to every call,
/// so implementations need no timeout of their own, and a failure is
/// reported as a [`StoreError`] (the layer then serves from the inner
/// service).
///
/// The layer builds what it needs from these methods: a lookup reads the
/// entry and its namespace's generation counter; a namespace invalidation
/// increments that counter; a miss that is about to compute an entry reads
/// the invalidation counter first and, when it writes, checks the markers
/// an invalidation writes (plain values, read with [`get`](Self::get) and
/// written with [`put`](Self::put)), so that a page read before an
/// invalidation is not stored after it. Such a store takes no
/// cross-instance lock (one request per key still computes an entry in each
/// process) and does in several round trips what the built-in stores do in
/// one. Two invalidations of one key that run at once may leave its marker
/// at the lower of their values (a store without compare-and-set cannot do
/// better), which then fences fills against the earlier one only.
///
/// # Example
///
/// A complete store over a `HashMap` (`examples/hashmap_store.rs`, which
/// the crate's tests run the layer over):
///
#[doc = concat!("```\n", include_str!("../../examples/hashmap_store.rs"), "\n```")]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Reads the value at `key`: `None` when it is absent or expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>>;

    /// Writes every value with its TTL, and lists each under the tag
    /// indexes of its [`Write::tags`] (until it expires), in one round trip
    /// where the backend allows it. A value written again replaces the old
    /// one, with its new TTL and tags.
    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes the given keys; returns how many existed.
    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Deletes every key that `prefix` [`matches`](PathPrefix::matches);
    /// returns how many were deleted.
    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a PathPrefix,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Deletes every value listed in the given tag indexes, and the
    /// indexes; returns how many values existed. A value tagged while this
    /// runs is either removed with its listing or stays listed, never
    /// stored but unlisted; a call stopped halfway leaves every value it
    /// did not remove listed, so calling it again finishes the job.
    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Reads the counter at `key` (0 when it was never incremented).
    /// Counters do not expire.
    fn counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Increments the counter at `key` by one, atomically (concurrent
    /// increments all count), and returns its new value.
    fn increment<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// How the layer drives this store: the built-in stores answer with
    /// themselves, any other store with the crate's defaults built from the
    /// methods above. Not part of the API (its type cannot be named
    /// outside the crate).
    #[doc(hidden)]
    fn __backend(self: Arc<Self>) -> Arc<dyn Backend> {
        Arc::new(backend::Adapter(self))
    }
}
