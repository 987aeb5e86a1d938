//! The in-process store: bounded by bytes, with a TTL per entry. It is the
//! default when no Redis is configured, so the layer works with no server.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::{sync::Cache, Expiry};

use super::{BoxFuture, Fetched, KeyHasher, Store, Write};
use crate::error::StoreError;

/// An in-process [`Store`] (built on `moka`): bounded by total bytes, each entry
/// expiring after its own TTL.
///
/// Entries live in this process only: two instances of an app each have their
/// own, and an invalidation reaches only the instance it is called on. Use
/// [`RedisStore`](super::RedisStore) when several instances serve one site.
///
/// ```
/// use tower_redis_cache::store::MemoryStore;
/// let store = MemoryStore::new(64 * 1024 * 1024);
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    entries: Cache<String, Value, KeyHasher>,
    generations: Arc<Mutex<HashMap<String, u64>>>,
    /// Tag key → entry keys; pruned of evicted or expired keys on each write.
    tags: Arc<Mutex<HashMap<String, HashSet<String>>>>,
}

#[derive(Clone)]
struct Value {
    bytes: Bytes,
    /// Decoded once when written, so a hit does not parse the entry again.
    decoded: Option<Arc<crate::entry::Entry>>,
    ttl: Duration,
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
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Value| {
                u32::try_from(k.len() + v.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build_with_hasher(KeyHasher::default());
        Self {
            entries,
            generations: Arc::default(),
            tags: Arc::default(),
        }
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
            .finish()
    }
}

impl Store for MemoryStore {
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

    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        for w in writes {
            let value = Value {
                bytes: w.value.clone(),
                decoded: crate::entry::decode(&w.value).map(Arc::new),
                ttl: w.ttl,
            };
            self.entries.insert(w.key.clone(), value);
        }
        if writes.iter().any(|w| !w.tags.is_empty()) {
            let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
            for w in writes {
                for tag in &w.tags {
                    let keys = tags.entry(tag.clone()).or_default();
                    keys.retain(|k| self.entries.contains_key(k));
                    keys.insert(w.key.clone());
                }
            }
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

    fn delete_matching<'a>(
        &'a self,
        _pattern: &'a str,
        filter: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let keys: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(k, _)| filter(k))
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
        let keys: Vec<String> = {
            let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
            tag_keys
                .iter()
                .filter_map(|t| tags.remove(t))
                .flatten()
                .collect()
        };
        let removed = keys
            .iter()
            .filter(|k| self.entries.remove(*k).is_some())
            .count();
        Box::pin(std::future::ready(Ok(removed as u64)))
    }

    fn generation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(self.generation_now(key))))
    }

    fn bump_generation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let g = generations.entry(key.to_owned()).or_insert(0);
        *g += 1;
        Box::pin(std::future::ready(Ok(*g)))
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
    async fn delete_matching_and_generations() {
        let s = MemoryStore::default();
        s.put(&[
            write("a:1", b"x", 60_000),
            write("a:2", b"x", 60_000),
            write("b:1", b"x", 60_000),
        ])
        .await
        .unwrap();
        assert_eq!(
            s.delete_matching("a:*", &|k: &str| k.starts_with("a:"))
                .await
                .unwrap(),
            2
        );
        assert_eq!(s.delete(&["b:1".into(), "nope".into()]).await.unwrap(), 1);
        assert_eq!(s.fetch("x", "gen").await.unwrap().generation, 0);
        assert_eq!(s.bump_generation("gen").await.unwrap(), 1);
        assert_eq!(s.fetch("x", "gen").await.unwrap().generation, 1);
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
