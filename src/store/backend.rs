//! How the layer drives a store: [`Backend`], the public [`Store`] plus the
//! operations that only the built-in stores do well (reads of an entry and
//! its generation in one round trip, an answer without a future, the
//! cross-instance lock, fenced writes) and the reuse of decoded entries.
//!
//! [`MemoryStore`](super::MemoryStore), [`RedisStore`](super::RedisStore)
//! and [`TieredStore`](super::TieredStore) implement it and hand themselves
//! to the layer ([`Store::__backend`]). Any other store is wrapped in an
//! [`Adapter`], which takes every default below: correct, in more round
//! trips, and without a cross-instance lock.
//!
//! The trait is `pub` inside this private module so that the public
//! [`Store`] can name it in its hidden method, while no user can name,
//! implement or call it (the sealed-trait pattern). It is one trait object
//! for the layer: a hit makes the one virtual call it would make on
//! `dyn Store`.

// `pub` items of a private module: the sealed trait and the types its
// methods take, reachable only inside the crate.
#![allow(unreachable_pub)]

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;

use super::{BoxFuture, PathPrefix, Store, Write};
use crate::{entry::Entry, error::StoreError};

/// What a lookup read: the stored value (if any) and the current generation
/// of its namespace (0 when none was ever set).
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The stored bytes, if the key exists.
    pub(crate) value: Option<Bytes>,
    /// The namespace generation read with it.
    pub(crate) generation: u64,
    /// The value already decoded (kept by the in-process stores so that a
    /// hit there is not decoded again).
    pub(crate) decoded: Option<Arc<Entry>>,
}

impl Fetched {
    /// A fetched value and its namespace generation.
    pub(crate) fn new(value: Option<Bytes>, generation: u64) -> Self {
        Self {
            value,
            generation,
            decoded: None,
        }
    }
}

/// What a fill's write is conditional on: the invalidation counter read
/// before the service was called, and the marker keys of everything the
/// write touches (its entry keys, its tag indexes, every path prefix). An
/// invalidation raises the markers of what it removes to a new counter
/// value ([`Backend::raise_fence`]) before removing it; a write whose
/// markers hold a value above [`counter`](Self::counter) read a page from
/// before that invalidation, and is not stored ([`Backend::put_fenced`]).
#[derive(Debug, Clone)]
pub struct Fence {
    /// The invalidation counter, read before the service was called.
    pub(crate) counter: u64,
    /// The marker keys the write is checked against; an absent one counts
    /// as 0.
    pub(crate) markers: Vec<String>,
    /// The cross-instance lock the writer holds (key, token): a store that
    /// can release it in the write's round trip does so whether or not the
    /// write lands, if it still holds the token, and says so in
    /// [`Fenced::unlocked`]; otherwise the layer releases it afterwards.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only Redis locks
    pub(crate) unlock: Option<(String, String)>,
}

/// What [`Backend::put_fenced`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fenced {
    /// The writes were stored (no marker rose above the fence's counter).
    pub(crate) stored: bool,
    /// The lock of [`Fence::unlock`] was released in the same call.
    pub(crate) unlocked: bool,
}

impl Fenced {
    /// A fenced write's outcome.
    pub(crate) fn new(stored: bool, unlocked: bool) -> Self {
        Self { stored, unlocked }
    }
}

/// How long an invalidation's markers live. A fill that read the counter
/// longer ago than half of it does not write (its markers may be gone).
pub(crate) const FENCE_WINDOW: Duration = Duration::from_secs(120);

/// The operations the layer runs on a store. Every method has a default
/// built from the [`Store`] methods; the built-in stores override them.
pub trait Backend: Store {
    /// What the store is, for the line logged at start and the store
    /// failures: where it lives, never a password.
    fn describe(&self) -> String {
        "a store of your own".to_owned()
    }

    /// Reads `key` and the generation counter at `generation_key`, in one
    /// round trip where the backend allows it.
    fn fetch<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<Fetched, StoreError>> {
        Box::pin(async move {
            let (value, generation) =
                futures_util::future::try_join(self.get(key), self.counter(generation_key)).await?;
            Ok(Fetched::new(value, generation))
        })
    }

    /// Answers [`fetch`](Self::fetch) at once, without a future, when the
    /// store can: an in-process store, or a tier that holds the key. `None`
    /// sends the caller to `fetch`. A hit answered here is served without
    /// allocating a future for the request.
    fn fetch_now(&self, key: &str, generation_key: &str) -> Option<Result<Fetched, StoreError>> {
        let _ = (key, generation_key);
        None
    }

    /// [`fetch`](Self::fetch), bounded by `budget`: for a store whose client
    /// times every call anyway (fred does), so the request's lookup is timed
    /// once, not twice. The call fails with [`StoreError::Timeout`] once
    /// `budget` has passed, and the layer sets no timer of its own around
    /// it. `None` sends the layer to `fetch`, which it times itself.
    fn fetch_within<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
        budget: Duration,
    ) -> Option<BoxFuture<'a, Result<Fetched, StoreError>>> {
        let _ = (key, generation_key, budget);
        None
    }

    /// [`fetch_within`](Self::fetch_within) that also tries to take the
    /// short lock `lock_key` (holding `token`, expiring after `ttl`) in the
    /// same round trip, as [`lock_and_fetch`](Self::lock_and_fetch) does.
    /// Returns what was read and whether this call set the lock. A store may
    /// set it only when `key` holds nothing; when it sets it anyway and the
    /// key holds a value, the layer releases it.
    ///
    /// The layer calls it for keys it has not found stored lately, so that a
    /// miss costs one round trip less; keys it keeps finding stay on
    /// `fetch_within`. `None`: the store cannot, and the layer reads first
    /// and takes the lock after a miss; a layer that got `None` once does
    /// not ask again.
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

    /// Tries to take the short lock `lock_key` (holding `token`, expiring
    /// after `ttl`) and, in the same round trip, reads `key` and its
    /// generation as [`fetch`](Self::fetch) does. Returns whether the caller
    /// holds the lock: taken now, or already held with `token` (the layer
    /// uses one token per process for the request that leads a key there).
    ///
    /// The lock keeps several processes from computing one entry at once.
    /// The default takes no lock (always `true`): right for a store in one
    /// process, where the layer already lets one request per key through.
    fn lock_and_fetch<'a>(
        &'a self,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<(bool, Fetched), StoreError>> {
        let _ = (lock_key, token, ttl);
        let fetch = self.fetch(key, generation_key);
        Box::pin(async move { Ok((true, fetch.await?)) })
    }

    /// Releases `lock_key` if it still holds `token` (a lock that expired
    /// and was taken by someone else is left alone). The default has no
    /// lock to release.
    fn unlock<'a>(
        &'a self,
        lock_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (lock_key, token);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Reads the invalidation counter at `counter_key` (0 when unset). A
    /// request about to compute an entry reads it before calling the
    /// service, and writes with [`put_fenced`](Self::put_fenced).
    fn fence<'a>(&'a self, counter_key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.counter(counter_key)
    }

    /// Increments the counter at `counter_key` and raises each of `markers`
    /// to its new value (a marker already higher keeps its value), each
    /// marker living at least `window`; returns the new value. An
    /// invalidation calls it before it removes anything.
    ///
    /// The default increments the counter, reads the markers and writes
    /// those that are lower: two raises of one marker at once may leave the
    /// lower value (see [`Store`]).
    fn raise_fence<'a>(
        &'a self,
        counter_key: &'a str,
        markers: &'a [String],
        window: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let raised = self.increment(counter_key).await?;
            let values = read_markers(self, markers).await?;
            let writes: Vec<Write> = markers
                .iter()
                .zip(values)
                .filter(|(_, value)| value.is_none_or(|value| value < raised))
                .map(|(marker, _)| Write {
                    key: marker.clone(),
                    value: Bytes::from(raised.to_string()),
                    ttl: window,
                    tags: Vec::new(),
                })
                .collect();
            if !writes.is_empty() {
                self.put(&writes).await?;
            }
            Ok(raised)
        })
    }

    /// Writes as [`Store::put`] does, unless one of `fence.markers` holds a
    /// value above `fence.counter`: then nothing is written. The check and
    /// the writes must be one step as seen by `raise_fence` (a script, a
    /// lock), or the write checked again after it and taken back if a
    /// marker rose meanwhile.
    ///
    /// The default checks, writes, checks again, and deletes each value it
    /// wrote that is still there if a marker rose in between; it releases
    /// no lock.
    fn put_fenced<'a>(
        &'a self,
        writes: &'a [Write],
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Fenced, StoreError>> {
        Box::pin(async move {
            if raised(self, fence).await? {
                return Ok(Fenced::new(false, false));
            }
            // A write that failed may have landed in part, and one whose
            // second check failed was not checked: both are taken back as
            // one whose marker rose (removing is always safe).
            let written = self.put(writes).await;
            let raised_since = match &written {
                Ok(()) => raised(self, fence).await,
                Err(_) => Ok(true),
            };
            if written.is_ok() && matches!(raised_since, Ok(false)) {
                return Ok(Fenced::new(true, false));
            }
            let mut taken_back = Ok(0);
            for w in writes {
                // Only a value that is still the one written here; one that
                // cannot be read goes too (costing a miss at worst).
                let ours = match self.get(&w.key).await {
                    Ok(value) => value.as_ref() == Some(&w.value),
                    Err(_) => true,
                };
                if ours {
                    let deleted = self.delete(std::slice::from_ref(&w.key)).await;
                    taken_back = taken_back.and(deleted);
                }
            }
            written?;
            raised_since?;
            taken_back?;
            Ok(Fenced::new(false, false))
        })
    }
}

/// The markers' values, `None` for an absent one and `Some(u64::MAX)` for
/// one that holds anything but a number (it fences every write).
async fn read_markers<B: Backend + ?Sized>(
    store: &B,
    markers: &[String],
) -> Result<Vec<Option<u64>>, StoreError> {
    let reads = markers.iter().map(|marker| store.get(marker));
    let values = futures_util::future::try_join_all(reads).await?;
    Ok(values
        .into_iter()
        .map(|value| {
            value.map(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX)
            })
        })
        .collect())
}

/// Whether one of the fence's markers holds more than its counter.
async fn raised<B: Backend + ?Sized>(store: &B, fence: &Fence) -> Result<bool, StoreError> {
    let values = read_markers(store, &fence.markers).await?;
    Ok(values.into_iter().flatten().any(|v| v > fence.counter))
}

/// A [`Store`] the crate did not write, driven through the defaults of
/// [`Backend`].
pub(super) struct Adapter<S: ?Sized>(pub(super) Arc<S>);

impl<S: Store + ?Sized> fmt::Debug for Adapter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<S: Store + ?Sized> Store for Adapter<S> {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        self.0.get(key)
    }

    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put(writes)
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.0.delete(keys)
    }

    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a PathPrefix,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.0.delete_prefix(prefix)
    }

    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.0.invalidate_tags(tag_keys)
    }

    fn counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.0.counter(key)
    }

    fn increment<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.0.increment(key)
    }

    fn __backend(self: Arc<Self>) -> Arc<dyn Backend> {
        self
    }
}

impl<S: Store + ?Sized> Backend for Adapter<S> {
    fn describe(&self) -> String {
        format!("a store of your own ({})", std::any::type_name::<S>())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{
            atomic::{AtomicBool, Ordering::SeqCst},
            Mutex,
        },
    };

    use super::*;

    /// A store of plain values whose reads fail once `failing` is set.
    #[derive(Debug, Default)]
    struct Flaky {
        values: Mutex<HashMap<String, Bytes>>,
        failing: AtomicBool,
    }

    impl Store for Flaky {
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
            let got = if self.failing.load(SeqCst) {
                Err(StoreError::Backend("reads fail".into()))
            } else {
                Ok(self.values.lock().unwrap().get(key).cloned())
            };
            Box::pin(std::future::ready(got))
        }
        fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
            let mut values = self.values.lock().unwrap();
            for w in writes {
                values.insert(w.key.clone(), w.value.clone());
            }
            // The write lands; the fence's second check then fails.
            self.failing.store(true, SeqCst);
            Box::pin(std::future::ready(Ok(())))
        }
        fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
            let mut values = self.values.lock().unwrap();
            let n = keys.iter().filter(|k| values.remove(*k).is_some()).count();
            Box::pin(std::future::ready(Ok(n as u64)))
        }
        fn delete_prefix<'a>(
            &'a self,
            _: &'a PathPrefix,
        ) -> BoxFuture<'a, Result<u64, StoreError>> {
            Box::pin(std::future::ready(Ok(0)))
        }
        fn invalidate_tags<'a>(
            &'a self,
            _: &'a [String],
        ) -> BoxFuture<'a, Result<u64, StoreError>> {
            Box::pin(std::future::ready(Ok(0)))
        }
        fn counter<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
            Box::pin(std::future::ready(Ok(0)))
        }
        fn increment<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
            Box::pin(std::future::ready(Ok(1)))
        }
    }

    #[tokio::test]
    async fn a_fenced_write_whose_second_check_fails_is_taken_back() {
        let store = Adapter(Arc::new(Flaky::default()));
        let writes = [Write {
            key: "t:v1:default:GET:/p".into(),
            value: Bytes::from_static(b"old page"),
            ttl: Duration::from_secs(60),
            tags: Vec::new(),
        }];
        let fence = Fence {
            counter: 0,
            markers: vec!["t:v1:#fence:default:GET:/p".into()],
            unlock: None,
        };
        let done = store.put_fenced(&writes, &fence).await;
        assert!(done.is_err(), "an unchecked write is reported as failed");
        assert!(
            store.0.values.lock().unwrap().is_empty(),
            "a write that could not be checked against the fence stayed stored"
        );
    }
}
