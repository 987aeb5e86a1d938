//! A cache store of your own: `Store` over a `HashMap`, in one process.
//! `cargo run --example hashmap_store` sends one request twice through the
//! layer on it: a miss, then a hit.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};
use tower_redis_cache::{
    store::{BoxFuture, PathPrefix, Store, Write},
    RedisCacheLayer, StoreError,
};

/// Values with their expiry, tag indexes and counters, behind one lock.
/// Clones share the maps, as layers sharing one backend would. (It never
/// drops an expired value unless it is written again or deleted: a real
/// store bounds its size.)
#[derive(Debug, Clone, Default)]
pub struct HashMapStore(Arc<Mutex<Maps>>);

#[derive(Debug, Default)]
struct Maps {
    values: HashMap<String, (Bytes, Instant)>,
    /// Tag index key → the keys written with that tag (a key written again
    /// without it stays listed: its tag's invalidation then removes it too,
    /// which is safe).
    tags: HashMap<String, HashSet<String>>,
    counters: HashMap<String, u64>,
}

impl HashMapStore {
    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The answer of a store that never waits.
fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, StoreError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl Store for HashMapStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        let value = self
            .maps()
            .values
            .get(key)
            .and_then(|(value, expires)| (*expires > Instant::now()).then(|| value.clone()));
        ready(value)
    }

    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut maps = self.maps();
        for w in writes {
            let expires = Instant::now() + w.ttl;
            maps.values
                .insert(w.key.clone(), (w.value.clone(), expires));
            for tag in &w.tags {
                let index = maps.tags.entry(tag.clone()).or_default();
                index.insert(w.key.clone());
            }
        }
        ready(())
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut maps = self.maps();
        let deleted = keys.iter().filter(|k| maps.values.remove(*k).is_some());
        ready(deleted.count() as u64)
    }

    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a PathPrefix,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut maps = self.maps();
        let before = maps.values.len();
        maps.values.retain(|key, _| !prefix.matches(key));
        ready((before - maps.values.len()) as u64)
    }

    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut maps = self.maps();
        let mut deleted = 0;
        for tag in tag_keys {
            for key in maps.tags.remove(tag).unwrap_or_default() {
                deleted += u64::from(maps.values.remove(&key).is_some());
            }
        }
        ready(deleted)
    }

    fn counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        ready(self.maps().counters.get(key).copied().unwrap_or(0))
    }

    fn increment<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut maps = self.maps();
        let counter = maps.counters.entry(key.to_owned()).or_insert(0);
        *counter += 1;
        ready(*counter)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = RedisCacheLayer::builder()
        .store(HashMapStore::default())
        .build()?;
    let service = cache.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
    }));
    for _ in 0..2 {
        let request = Request::new(Full::new(Bytes::new()));
        let response = service.clone().oneshot(request).await?;
        println!("x-cache: {:?}", response.headers()["x-cache"]);
    }
    Ok(())
}
