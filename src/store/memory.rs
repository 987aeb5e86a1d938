//! The in-process store: bounded by bytes, with a TTL per entry. It is the
//! default when no Redis is configured, so the layer works with no server.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, RwLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::{notification::RemovalCause, ops::compute::Op, sync::Cache, Expiry};

use super::{Backend, BoxFuture, Fence, Fenced, Fetched, KeyHasher, PathPrefix, Store, Write};
use crate::error::StoreError;

/// The most entries one tag index lists unless
/// [`MemoryStore::max_tag_members`] says otherwise.
const DEFAULT_MAX_TAG_MEMBERS: usize = 100_000;

/// How many locks the tag indexes are spread over (by the tag's hash).
const TAG_SHARDS: usize = 16;

/// An in-process [`Store`] (built on `moka`): bounded by total bytes, each entry
/// expiring after its own TTL.
///
/// Entries live in this process only: two instances of an app each have their
/// own, and an invalidation reaches only the instance it is called on. Use
/// [`RedisStore`](super::RedisStore) when several instances serve one site.
///
/// # Tags
///
/// Each tag has an index of the entries carrying it. Writing an entry costs
/// a constant amount of work per tag, whatever the number of entries
/// (amortised: an index is a hash map, which doubles now and then): an
/// entry that expires, is evicted, deleted or overwritten leaves its tags'
/// indexes when `moka` removes it (its removal listener, once per entry),
/// so no write ever scans an index. Each index has its own lock, held for
/// one insertion or removal, and the map of tags is spread over 16 locks;
/// requests that only read take none of them. An invalidation takes the
/// tag's index out whole and removes its entries holding no lock.
///
/// An index lists at most 100 000 entries (see
/// [`max_tag_members`](Self::max_tag_members)). A write whose tag index is
/// full is refused, not stored: an entry its tag's invalidation could not
/// reach would be served after that invalidation. The write still succeeds
/// for the layer (the response is served, uncached), the refusal is logged
/// at debug level and counted in [`refused_writes`](Self::refused_writes).
///
/// ```
/// use tower_redis_cache::store::MemoryStore;
/// let store = MemoryStore::new(64 * 1024 * 1024).max_tag_members(10_000);
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    entries: Cache<String, Value, KeyHasher>,
    generations: Arc<Mutex<HashMap<String, u64>>>,
    tags: Arc<Tags>,
    fences: Arc<Fences>,
}

/// The invalidation counters and the markers they raised (see [`Fence`]),
/// each marker with its expiry. A fenced write holds the lock for reading
/// while it checks and writes, and raising takes it for writing, so no
/// invalidation's markers go up between a write's check and its write.
#[derive(Default)]
struct Fences(RwLock<FenceState>);

#[derive(Default)]
struct FenceState {
    counters: HashMap<String, u64>,
    markers: HashMap<String, (u64, Instant), KeyHasher>,
    /// A marker for every key: set when the markers would pass
    /// [`Fences::MAX`], in place of them all.
    floor: Option<(u64, Instant)>,
    /// The size at which expired markers are dropped next.
    prune_at: usize,
}

impl Fences {
    /// Past this many markers, expired ones are dropped on the next raise
    /// (then past twice as many as are left, so the work stays amortised).
    const PRUNE: usize = 4096;
    /// The most markers kept: past it (invalidations of that many distinct
    /// keys within the window, which a client may cause through unsafe
    /// requests) they are replaced by one marker for every key, which fences
    /// more fills than needed and never fewer.
    const MAX: usize = 65_536;

    fn counter(&self, key: &str) -> u64 {
        let state = self.0.read().unwrap_or_else(|e| e.into_inner());
        state.counters.get(key).copied().unwrap_or(0)
    }

    fn raise(&self, counter_key: &str, markers: &[String], window: Duration) -> u64 {
        let mut state = self.0.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state.markers.len() >= state.prune_at.max(Self::PRUNE) {
            state.markers.retain(|_, (_, until)| *until > now);
            state.prune_at = (state.markers.len() * 2).max(Self::PRUNE);
        }
        let counter = state.counters.entry(counter_key.to_owned()).or_insert(0);
        *counter += 1;
        let raised = *counter;
        if state.markers.len() + markers.len() > Self::MAX {
            // Every marker was set within the window before now: one for
            // every key, until the window after now, covers them all.
            state.markers.clear();
            state.prune_at = Self::PRUNE;
            state.floor = Some((raised, now + window));
            return raised;
        }
        for marker in markers {
            state.markers.insert(marker.clone(), (raised, now + window));
        }
        raised
    }
}

#[derive(Clone)]
struct Value {
    bytes: Bytes,
    /// Decoded once when written, so a hit does not parse the entry again.
    decoded: Option<Arc<crate::entry::Entry>>,
    ttl: Duration,
    /// The tag indexes listing this entry.
    tags: Arc<[String]>,
    /// This write's number: an index forgets the key only for the write it
    /// listed, not for a later write of the same key.
    write: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tag indexes, spread over [`TAG_SHARDS`] maps by the tag's hash.
/// Lock order: a shard, then an index within it; never the other way.
struct Tags {
    shards: Vec<Mutex<HashMap<String, Arc<TagIndex>, KeyHasher>>>,
    hasher: KeyHasher,
    max_members: AtomicUsize,
    /// Writes refused because a tag index was full.
    refused: AtomicU64,
    next_write: AtomicU64,
}

/// One tag's entries: key → the number of the write that listed it.
#[derive(Default)]
struct TagIndex(Mutex<Members>);

#[derive(Default)]
struct Members {
    keys: HashMap<String, u64, KeyHasher>,
    /// Taken by an invalidation (or dropped when empty): no longer in its
    /// shard, and a write that listed a key here must not keep its entry.
    closed: bool,
}

impl Tags {
    fn new() -> Self {
        Self {
            shards: (0..TAG_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: KeyHasher::default(),
            max_members: AtomicUsize::new(DEFAULT_MAX_TAG_MEMBERS),
            refused: AtomicU64::new(0),
            next_write: AtomicU64::new(0),
        }
    }

    fn shard(&self, tag: &str) -> &Mutex<HashMap<String, Arc<TagIndex>, KeyHasher>> {
        &self.shards[self.hasher.hash_one(tag) as usize % TAG_SHARDS]
    }

    /// Lists `key` (written as `write`) in `tag`'s index; `None` when the
    /// index is full.
    fn join(&self, tag: &str, key: &str, write: u64) -> Option<Arc<TagIndex>> {
        loop {
            let index = lock(self.shard(tag))
                .entry(tag.to_owned())
                .or_default()
                .clone();
            let mut members = lock(&index.0);
            if members.closed {
                continue; // taken meanwhile: a new index is in its place
            }
            if let Some(listed) = members.keys.get_mut(key) {
                *listed = write;
            } else if members.keys.len() >= self.max_members.load(Relaxed) {
                return None;
            } else {
                members.keys.insert(key.to_owned(), write);
            }
            drop(members);
            return Some(index);
        }
    }

    /// Unlists `key` from `tag` if the index still lists it for `write`,
    /// and drops the index once empty.
    fn leave(&self, tag: &str, key: &str, write: u64) {
        let Some(index) = lock(self.shard(tag)).get(tag).cloned() else {
            return;
        };
        let empty = {
            let mut members = lock(&index.0);
            if members.keys.get(key) == Some(&write) {
                members.keys.remove(key);
            }
            members.keys.is_empty()
        };
        if empty {
            let mut shard = lock(self.shard(tag));
            if shard.get(tag).is_some_and(|i| Arc::ptr_eq(i, &index)) {
                let mut members = lock(&index.0);
                if members.keys.is_empty() {
                    members.closed = true;
                    drop(members);
                    shard.remove(tag);
                }
            }
        }
    }

    /// Takes `tag`'s index out (later writes start a new one) and returns
    /// the keys it listed.
    fn take(&self, tag: &str) -> HashMap<String, u64, KeyHasher> {
        let Some(index) = lock(self.shard(tag)).remove(tag) else {
            return HashMap::default();
        };
        let mut members = lock(&index.0);
        members.closed = true;
        std::mem::take(&mut members.keys)
    }
}

impl TagIndex {
    fn is_closed(&self) -> bool {
        lock(&self.0).closed
    }
}

struct PerEntryTtl;

impl Expiry<String, Value> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, value: &Value, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Value,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of keys and values; the least
    /// recently used entries are evicted past that.
    pub fn new(max_bytes: u64) -> Self {
        let tags = Arc::new(Tags::new());
        let listener = {
            let tags = tags.clone();
            // Whatever removed the entry (expiry, eviction, deletion, a new
            // value for its key), its tag indexes forget it: a constant
            // amount of work per tag, done once per entry. An index that
            // lists the key for a later write (the new value's tags) keeps it.
            move |key: Arc<String>, value: Value, _: RemovalCause| {
                for tag in value.tags.iter() {
                    tags.leave(tag, &key, value.write);
                }
            }
        };
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Value| {
                let tags: usize = v.tags.iter().map(|t| t.len() + k.len()).sum();
                let decoded = v.decoded.as_ref().map_or(0, |e| e.decoded_reserve());
                u32::try_from(k.len() + v.bytes.len() + tags + decoded).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(listener)
            .build_with_hasher(KeyHasher::default());
        Self {
            entries,
            generations: Arc::default(),
            tags,
            fences: Arc::default(),
        }
    }

    /// The most entries one tag index lists (default 100 000). A write whose tag's index is full is
    /// not stored (see [Tags](Self#tags)). Applies to every clone of this
    /// store.
    pub fn max_tag_members(self, max: usize) -> Self {
        self.tags.max_members.store(max, Relaxed);
        self
    }

    /// How many writes were refused because one of their tag indexes was
    /// full, since the store was made.
    pub fn refused_writes(&self) -> u64 {
        self.tags.refused.load(Relaxed)
    }

    /// Stores one write unless a tag index is full; whether it was stored.
    fn write(&self, w: &Write) -> bool {
        let mut tags: Vec<String> = w.tags.clone();
        tags.sort_unstable();
        tags.dedup();
        let decoded = crate::entry::decode(&w.value).map(Arc::new);
        let mut joined = Vec::with_capacity(tags.len());
        let mut full = None;
        // Under the key's lock, so that writes of one key list and store in
        // the same order. Listed first, stored second: a write its indexes
        // cannot list is never stored.
        self.entries
            .entry_by_ref(w.key.as_str())
            .and_compute_with(|_| {
                let write = self.tags.next_write.fetch_add(1, Relaxed);
                for tag in &tags {
                    match self.tags.join(tag, &w.key, write) {
                        Some(index) => joined.push(index),
                        None => {
                            for listed in &tags[..joined.len()] {
                                self.tags.leave(listed, &w.key, write);
                            }
                            full = Some(tag);
                            // An older value of the key would be stale now.
                            return Op::Remove;
                        }
                    }
                }
                Op::Put(Value {
                    bytes: w.value.clone(),
                    decoded,
                    ttl: w.ttl,
                    tags: tags.clone().into(),
                    write,
                })
            });
        if let Some(tag) = full {
            self.tags.refused.fetch_add(1, Relaxed);
            tracing::debug!(
                key = %w.key,
                tag = %tag,
                max = self.tags.max_members.load(Relaxed),
                "tag index full: entry not stored"
            );
            return false;
        }
        // An index invalidated between listing the key and storing the
        // entry has already looked for it: the entry goes too.
        if joined.iter().any(|index| index.is_closed()) {
            self.entries.invalidate(&w.key);
        }
        true
    }

    fn read(&self, key: &str, generation_key: &str) -> Fetched {
        let (value, decoded) = match self.entries.get(key) {
            Some(v) => (Some(v.bytes), v.decoded),
            None => (None, None),
        };
        let mut fetched = Fetched::new(value, self.generation_now(generation_key));
        fetched.decoded = decoded;
        fetched
    }

    fn generation_now(&self, key: &str) -> u64 {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if generations.is_empty() {
            return 0; // no namespace was ever bumped: skip hashing the key
        }
        generations.get(key).copied().unwrap_or(0)
    }

    /// How many keys `tag`'s index lists.
    #[cfg(test)]
    fn listed(&self, tag: &str) -> usize {
        lock(self.tags.shard(tag))
            .get(tag)
            .map_or(0, |index| lock(&index.0).keys.len())
    }
}

impl Default for MemoryStore {
    /// 64 MiB.
    fn default() -> Self {
        Self::new(64 * 1024 * 1024)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .field("refused_writes", &self.refused_writes())
            .finish()
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        let value = self.entries.get(key).map(|v| v.bytes);
        Box::pin(std::future::ready(Ok(value)))
    }

    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        for w in writes {
            self.write(w);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        let removed = keys
            .iter()
            .filter(|k| self.entries.remove(*k).is_some())
            .count();
        Box::pin(std::future::ready(Ok(removed as u64)))
    }

    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a PathPrefix,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let keys: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(k, _)| prefix.matches(k))
            .map(|(k, _)| k)
            .collect();
        let removed = keys
            .iter()
            .filter(|k| self.entries.remove(k.as_str()).is_some())
            .count();
        Box::pin(std::future::ready(Ok(removed as u64)))
    }

    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        // Each index is taken out whole (later writes start a new one), then
        // its entries are removed with no lock held that requests need,
        // yielding to the runtime between batches so that a large tag does
        // not hold a worker thread for the whole walk.
        Box::pin(async move {
            let mut removed = 0;
            let mut batch = 0;
            for tag in tag_keys {
                for key in self.tags.take(tag).into_keys() {
                    if self.entries.remove(&key).is_some() {
                        removed += 1;
                    }
                    batch += 1;
                    if batch == 1024 {
                        batch = 0;
                        tokio::task::yield_now().await;
                    }
                }
            }
            Ok(removed)
        })
    }

    fn counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(self.generation_now(key))))
    }

    fn increment<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let g = generations.entry(key.to_owned()).or_insert(0);
        *g += 1;
        Box::pin(std::future::ready(Ok(*g)))
    }

    fn __backend(self: Arc<Self>) -> Arc<dyn Backend> {
        self
    }
}

impl Backend for MemoryStore {
    fn describe(&self) -> String {
        let max = self.entries.policy().max_capacity().unwrap_or(0);
        format!(
            "the in-memory store of this process ({}; not shared with other instances)",
            crate::store::size(max)
        )
    }

    fn fetch<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<Fetched, StoreError>> {
        Box::pin(std::future::ready(Ok(self.read(key, generation_key))))
    }

    fn fetch_now(&self, key: &str, generation_key: &str) -> Option<Result<Fetched, StoreError>> {
        Some(Ok(self.read(key, generation_key)))
    }

    fn fence<'a>(&'a self, counter_key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(self.fences.counter(counter_key))))
    }

    fn raise_fence<'a>(
        &'a self,
        counter_key: &'a str,
        markers: &'a [String],
        window: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let raised = self.fences.raise(counter_key, markers, window);
        Box::pin(std::future::ready(Ok(raised)))
    }

    fn put_fenced<'a>(
        &'a self,
        writes: &'a [Write],
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Fenced, StoreError>> {
        let state = self.fences.0.read().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let above = |&(value, until): &(u64, Instant)| until > now && value > fence.counter;
        let raised = state.floor.as_ref().is_some_and(above)
            || fence
                .markers
                .iter()
                .any(|m| state.markers.get(m).is_some_and(above));
        if !raised {
            for w in writes {
                self.write(w);
            }
        }
        drop(state);
        // No locks in one process: nothing to release.
        Box::pin(std::future::ready(Ok(Fenced::new(!raised, false))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, value: &'static [u8], ttl_ms: u64) -> Write {
        Write {
            key: key.into(),
            value: Bytes::from_static(value),
            ttl: Duration::from_millis(ttl_ms),
            tags: Vec::new(),
        }
    }

    #[tokio::test]
    async fn entries_expire_after_their_own_ttl() {
        let s = MemoryStore::default();
        s.put(&[write("short", b"a", 30), write("long", b"b", 60_000)])
            .await
            .unwrap();
        assert!(s.fetch("short", "g").await.unwrap().value.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(s.fetch("short", "g").await.unwrap().value.is_none());
        assert!(s.fetch("long", "g").await.unwrap().value.is_some());
    }

    #[tokio::test]
    async fn delete_prefix_and_counters() {
        let s = MemoryStore::default();
        s.put(&[
            write("t:v1:default:GET:/a/1", b"x", 60_000),
            write("t:v1:other:GET:/a/2", b"x", 60_000),
            write("t:v1:default:GET:/b/1", b"x", 60_000),
        ])
        .await
        .unwrap();
        assert_eq!(s.delete_prefix(&prefix("/a/")).await.unwrap(), 2);
        let b1 = "t:v1:default:GET:/b/1".to_owned();
        assert_eq!(s.delete(&[b1, "nope".into()]).await.unwrap(), 1);
        assert_eq!(s.fetch("x", "gen").await.unwrap().generation, 0);
        assert_eq!(s.increment("gen").await.unwrap(), 1);
        assert_eq!(s.fetch("x", "gen").await.unwrap().generation, 1);
        assert_eq!(s.counter("gen").await.unwrap(), 1);
    }

    fn prefix(path: &str) -> PathPrefix {
        PathPrefix::new(&crate::key::KeySpace::new("t", "v1").unwrap(), path)
    }

    fn tagged(key: &str, tags: &[&str], ttl_ms: u64) -> Write {
        Write {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..write(key, b"x", ttl_ms)
        }
    }

    fn stored(s: &MemoryStore, key: &str) -> bool {
        s.read(key, "g").value.is_some()
    }

    #[tokio::test]
    async fn tag_indexes_forget_expired_entries_without_writes_to_their_tag() {
        let s = MemoryStore::default();
        for i in 0..50 {
            s.put(&[tagged(&format!("old:{i}"), &["old"], 30)])
                .await
                .unwrap();
        }
        assert_eq!(s.listed("old"), 50);
        // moka removes expired entries by its timer wheel, whose finest
        // slots span about a second.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        // Writes go on, none of them to the tag `old`.
        for i in 0..10 {
            s.put(&[tagged(&format!("new:{i}"), &["new"], 60_000)])
                .await
                .unwrap();
        }
        s.entries.run_pending_tasks();
        assert_eq!(s.listed("old"), 0, "expired entries leave their index");
        assert_eq!(s.listed("new"), 10);
    }

    #[tokio::test]
    async fn entries_deleted_or_evicted_leave_their_indexes() {
        let s = MemoryStore::new(20_000);
        let (a, b) = ("t:v1:default:GET:/a/1", "t:v1:default:GET:/b/1");
        s.put(&[tagged(a, &["t"], 60_000), tagged(b, &["t"], 60_000)])
            .await
            .unwrap();
        s.delete(&[a.into()]).await.unwrap();
        assert_eq!(s.listed("t"), 1);
        s.delete_prefix(&prefix("/b/")).await.unwrap();
        assert_eq!(s.listed("t"), 0);
        // Evicted for room.
        for i in 0..100 {
            s.put(&[Write {
                value: Bytes::from(vec![0u8; 1000]),
                ..tagged(&format!("big:{i}"), &["big"], 60_000)
            }])
            .await
            .unwrap();
        }
        s.entries.run_pending_tasks();
        let left = s.entries.entry_count() as usize;
        assert!(left < 100, "{left}");
        assert_eq!(s.listed("big"), left);
    }

    #[tokio::test]
    async fn a_write_its_full_tag_index_cannot_list_is_not_stored() {
        let s = MemoryStore::default().max_tag_members(3);
        for i in 0..3 {
            s.put(&[tagged(&format!("k{i}"), &["t"], 60_000)])
                .await
                .unwrap();
        }
        // The write succeeds for the caller (the response is served), but
        // nothing is stored that `t`'s invalidation could not reach.
        s.put(&[tagged("k3", &["u", "t"], 60_000)]).await.unwrap();
        assert!(!stored(&s, "k3"));
        assert_eq!(s.refused_writes(), 1);
        assert_eq!(s.listed("u"), 0, "nor listed under its other tags");
        // An older value of the key goes too: it would be stale.
        s.put(&[tagged("old", &["v"], 60_000)]).await.unwrap();
        s.put(&[tagged("old", &["t"], 60_000)]).await.unwrap();
        assert!(!stored(&s, "old"));
        // A key already listed may be written again.
        s.put(&[tagged("k0", &["t"], 60_000)]).await.unwrap();
        assert!(stored(&s, "k0"));
        assert_eq!(s.invalidate_tags(&["t".into()]).await.unwrap(), 3);
        s.put(&[tagged("k3", &["u", "t"], 60_000)]).await.unwrap();
        assert!(stored(&s, "k3"), "room again once the tag is invalidated");
        assert_eq!(s.invalidate_tags(&["t".into()]).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_rewritten_entry_is_listed_under_its_new_tags_only() {
        let s = MemoryStore::default();
        s.put(&[tagged("k", &["a", "b"], 60_000)]).await.unwrap();
        s.put(&[tagged("k", &["a", "c"], 60_000)]).await.unwrap();
        s.entries.run_pending_tasks();
        assert_eq!((s.listed("a"), s.listed("b"), s.listed("c")), (1, 0, 1));
        assert_eq!(s.invalidate_tags(&["b".into()]).await.unwrap(), 0);
        assert!(stored(&s, "k"));
        assert_eq!(s.invalidate_tags(&["c".into()]).await.unwrap(), 1);
        assert!(!stored(&s, "k"));
        assert_eq!(s.listed("a"), 0);
    }

    #[test]
    fn concurrent_writes_and_invalidations_leave_no_unlisted_entry() {
        let s = MemoryStore::default();
        std::thread::scope(|scope| {
            for t in 0..3 {
                let s = &s;
                scope.spawn(move || {
                    for round in 0..300 {
                        let key = format!("k{}", (round * 7 + t) % 40);
                        let tags: &[&str] = if round % 2 == 0 {
                            &["hot"]
                        } else {
                            &["hot", "x"]
                        };
                        let _ = futures_util::FutureExt::now_or_never(
                            s.put(&[tagged(&key, tags, 60_000)]),
                        );
                    }
                });
            }
            let s = &s;
            scope.spawn(move || {
                for _ in 0..200 {
                    let _ =
                        futures_util::FutureExt::now_or_never(s.invalidate_tags(&["hot".into()]));
                }
            });
        });
        futures_util::FutureExt::now_or_never(s.invalidate_tags(&["hot".into()]));
        for i in 0..40 {
            assert!(!stored(&s, &format!("k{i}")), "k{i} outlived its tag");
        }
    }

    #[tokio::test]
    async fn fence_markers_stay_bounded_and_still_fence_every_fill_in_flight() {
        let s = MemoryStore::default();
        let window = Duration::from_secs(120);
        // A fill reads the counter, then invalidations of more distinct keys
        // than the store keeps markers for run before it writes.
        let counter = s.fence("c").await.unwrap();
        let keys: Vec<String> = (0..Fences::MAX + 10).map(|i| format!("m:{i}")).collect();
        for chunk in keys.chunks(1000) {
            s.raise_fence("c", chunk, window).await.unwrap();
        }
        let kept = s.fences.0.read().unwrap().markers.len();
        assert!(kept <= Fences::MAX, "{kept} markers kept");
        // The fill's own key was among them: it must not store.
        let fence = Fence {
            counter,
            markers: vec!["m:3".into()],
            unlock: None,
        };
        let done = s
            .put_fenced(&[write("e", b"old", 60_000)], &fence)
            .await
            .unwrap();
        assert!(!done.stored, "a fill from before the invalidation stored");
        // A fill that read the counter afterwards stores.
        let fence = Fence {
            counter: s.fence("c").await.unwrap(),
            markers: vec!["m:3".into()],
            unlock: None,
        };
        let done = s
            .put_fenced(&[write("e", b"new", 60_000)], &fence)
            .await
            .unwrap();
        assert!(done.stored);
    }

    #[tokio::test]
    async fn bounded_by_bytes() {
        let s = MemoryStore::new(10_000);
        for i in 0..100 {
            let big = Bytes::from(vec![0u8; 1000]);
            s.put(&[Write {
                key: format!("k{i}"),
                value: big,
                ttl: Duration::from_secs(60),
                tags: Vec::new(),
            }])
            .await
            .unwrap();
        }
        s.entries.run_pending_tasks();
        assert!(s.entries.weighted_size() <= 10_000);
    }
}
