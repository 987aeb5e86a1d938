//! Where entries live: the [`Store`] trait and its two implementations,
//! [`RedisStore`] (fred) and [`MemoryStore`] (in-process, the embedded default).
//!
//! The layer calls a store through `Arc<dyn Store>` and runs every call under
//! its time budget; a store only has to report failures, never to hide them.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;

use crate::{entry::Entry, error::StoreError};

mod generations;
mod memory;
mod redis;
#[cfg(feature = "l1")]
mod tiered;

#[cfg(feature = "l1")]
#[cfg_attr(docsrs, doc(cfg(feature = "l1")))]
pub use self::tiered::{LocalTier, TieredStore};
pub use self::{
    memory::MemoryStore,
    redis::{RedisStore, RedisStoreBuilder},
};

/// The hasher of the in-process caches' keys. Keys are request paths a
/// client chooses, so it is seeded per cache (foldhash's `RandomState`); it
/// costs a fraction of the standard library's SipHash on every lookup.
pub(crate) type KeyHasher = foldhash::quality::RandomState;

/// Runs `on` in a task of its own for every event a fred client broadcasts
/// on `events` (invalidations, errors, reconnections), and with `None` when
/// the task fell behind and events were dropped. fred's own `on_*` listeners
/// stop for good at that point, which would leave a tracker deaf to every
/// later invalidation. Ends when the client is gone or `on` returns false.
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

/// The result of [`Store::fetch`]: the stored value (if any) and the current
/// generation of its namespace (0 when none was ever set). Build it with
/// [`Fetched::new`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Fetched {
    /// The stored bytes, if the key exists.
    pub value: Option<Bytes>,
    /// The namespace generation read in the same round trip.
    pub generation: u64,
    /// The value already decoded (kept by the in-process tier so that a hit
    /// there is not decoded again).
    pub(crate) decoded: Option<Arc<Entry>>,
}

impl Fetched {
    /// A fetched value and its namespace generation.
    pub fn new(value: Option<Bytes>, generation: u64) -> Self {
        Self {
            value,
            generation,
            decoded: None,
        }
    }
}

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

/// What a fill's write is conditional on: the invalidation counter read
/// before the service was called, and the marker keys of everything the
/// write touches (its entry keys, its tag indexes, every path prefix). An
/// invalidation raises the markers of what it removes to a new counter
/// value ([`Store::raise_fence`]) before removing it; a write whose markers
/// hold a value above [`counter`](Self::counter) read a page from before
/// that invalidation, and is not stored ([`Store::put_fenced`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Fence {
    /// The invalidation counter, read before the service was called.
    pub counter: u64,
    /// The marker keys the write is checked against; an absent one counts
    /// as 0.
    pub markers: Vec<String>,
    /// The cross-instance lock the writer holds (key, token): a store that
    /// can release it in the write's round trip does so whether or not the
    /// write lands, if it still holds the token, and says so in
    /// [`Fenced::unlocked`]; otherwise the layer releases it afterwards.
    pub unlock: Option<(String, String)>,
}

/// What [`Store::put_fenced`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fenced {
    /// The writes were stored (no marker rose above the fence's counter).
    pub stored: bool,
    /// The lock of [`Fence::unlock`] was released in the same call.
    pub unlocked: bool,
}

impl Fenced {
    /// A fenced write's outcome.
    pub fn new(stored: bool, unlocked: bool) -> Self {
        Self { stored, unlocked }
    }
}

/// How long an invalidation's markers live. A fill that read the counter
/// longer ago than half of it does not write (its markers may be gone).
pub(crate) const FENCE_WINDOW: Duration = Duration::from_secs(120);

/// The operations the cache needs from a key-value store.
///
/// Implement it to put the cache on another backend; the crate's integration
/// tests show the behaviour each method must have. Futures must be `Send`;
/// the caller applies the time budget, so implementations need no timeout of
/// their own (a store whose client times its calls anyway can take the
/// lookup's budget over: see [`fetch_within`](Store::fetch_within)).
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Reads `key` and the generation counter at `generation_key`, in one round
    /// trip where the backend allows it.
    fn fetch<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<Fetched, StoreError>>;

    /// Answers [`fetch`](Self::fetch) at once, without a future, when the
    /// store can: an in-process store, or a tier that holds the key. `None`
    /// sends the caller to `fetch`. A hit answered here is served without
    /// allocating a future for the request. The default is `None`.
    fn fetch_now(&self, key: &str, generation_key: &str) -> Option<Result<Fetched, StoreError>> {
        let _ = (key, generation_key);
        None
    }

    /// [`fetch`](Self::fetch), bounded by `budget`: for a store whose client
    /// times every call anyway (fred does), so the request's lookup is timed
    /// once, not twice. Return the call here and make it fail with
    /// [`StoreError::Timeout`] once `budget` has passed; the layer then sets
    /// no timer of its own around it. `None` (the default) sends the layer to
    /// `fetch`, which it times itself.
    fn fetch_within<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
        budget: Duration,
    ) -> Option<BoxFuture<'a, Result<Fetched, StoreError>>> {
        let _ = (key, generation_key, budget);
        None
    }

    /// [`fetch_within`](Self::fetch_within) that also tries to take the short
    /// lock `lock_key` (holding `token`, expiring after `ttl`) in the same
    /// round trip, as [`lock_and_fetch`](Self::lock_and_fetch) does. Returns
    /// what was read and whether this call set the lock. A store may set it
    /// only when `key` holds nothing; when it sets it anyway and the key
    /// holds a value, the layer releases it.
    ///
    /// The layer calls it for keys it has not found stored lately, so that a
    /// miss costs one round trip less; keys it keeps finding stay on
    /// `fetch_within`. `None` (the default): the store cannot, and the layer
    /// reads first and takes the lock after a miss; a layer that got `None`
    /// once does not ask again.
    fn fetch_or_lock<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        budget: Duration,
    ) -> Option<BoxFuture<'a, Result<(Fetched, bool), StoreError>>> {
        let _ = (key, generation_key, lock_key, token, ttl, budget);
        None
    }

    /// Writes every value with its TTL, in one round trip where the backend
    /// allows it (a Redis pipeline).
    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes the given keys; returns how many existed.
    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Deletes every key for which `filter` returns true. `pattern` is a Redis
    /// glob that every such key matches (a backend may use it to narrow a
    /// scan); `filter` is the exact test. Returns how many keys were deleted.
    fn delete_matching<'a>(
        &'a self,
        pattern: &'a str,
        filter: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Reads a generation counter (0 when unset).
    fn generation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Increments a generation counter and returns the new value.
    fn bump_generation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Tries to take the short lock `lock_key` (holding `token`, expiring
    /// after `ttl`) and, in the same round trip, reads `key` and its
    /// generation as [`fetch`](Self::fetch) does. Returns whether the caller
    /// holds the lock: taken now, or already held with `token` (the layer
    /// uses one token per process for the request that leads a key there).
    ///
    /// The lock keeps several processes from computing one entry at once. The
    /// default takes no lock (always `true`): right for a store that lives in
    /// one process, where the layer already lets one request per key through.
    fn lock_and_fetch<'a>(
        &'a self,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<(bool, Fetched), StoreError>> {
        let _ = (lock_key, token, ttl);
        Box::pin(async move { Ok((true, self.fetch(key, generation_key).await?)) })
    }

    /// Deletes every entry listed in the given tag indexes and the index
    /// entries themselves; returns how many entries existed. An entry tagged
    /// while this runs is either removed with its listing or stays listed,
    /// never stored but unlisted; a call stopped halfway leaves every entry
    /// it did not remove listed, so calling it again finishes the job. The default reports that the store
    /// keeps no tag indexes.
    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let _ = tag_keys;
        Box::pin(std::future::ready(Err(StoreError::Backend(
            "this store keeps no tag indexes".into(),
        ))))
    }

    /// Reads the invalidation counter at `counter_key` (0 when unset). A
    /// request about to compute an entry reads it before calling the
    /// service, and writes with [`put_fenced`](Self::put_fenced).
    ///
    /// The default (with the defaults of [`raise_fence`](Self::raise_fence)
    /// and `put_fenced`) keeps no fences: a miss that read the database
    /// before an update may then store its page after the update's
    /// invalidation.
    fn fence<'a>(&'a self, counter_key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let _ = counter_key;
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Increments the counter at `counter_key` and raises each of `markers`
    /// to its new value (a marker already higher keeps its value), each
    /// marker living at least `window`; returns the new value. An
    /// invalidation calls it before it removes anything. The default does
    /// nothing and returns 0.
    fn raise_fence<'a>(
        &'a self,
        counter_key: &'a str,
        markers: &'a [String],
        window: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let _ = (counter_key, markers, window);
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Writes as [`put`](Self::put) does, unless one of `fence.markers` holds
    /// a value above `fence.counter`: then nothing is written. The check and
    /// the writes must be one step as seen by `raise_fence` (a script, a
    /// lock), or the write checked again after it and taken back if a
    /// marker rose meanwhile. The default writes unconditionally and
    /// releases no lock.
    fn put_fenced<'a>(
        &'a self,
        writes: &'a [Write],
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Fenced, StoreError>> {
        let _ = fence;
        Box::pin(async move { self.put(writes).await.map(|()| Fenced::new(true, false)) })
    }

    /// Releases `lock_key` if it still holds `token` (a lock that expired and
    /// was taken by someone else is left alone).
    fn unlock<'a>(
        &'a self,
        lock_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (lock_key, token);
        Box::pin(std::future::ready(Ok(())))
    }
}
