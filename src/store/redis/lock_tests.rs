//! How the layer uses the cross-instance lock of a Redis store, counted at
//! the store's crate-private interface (the lock is not part of the public
//! [`Store`](crate::store::Store)).

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::prelude::KeysInterface;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::{tests::redis_server, RedisStore};
use crate::{
    error::StoreError,
    store::{Backend, BoxFuture, Fence, Fenced, Fetched, PathPrefix, Store, Write},
    RedisCacheLayer,
};

type StoreResult<T> = Result<T, StoreError>;

/// A `RedisStore` that counts the lock calls made to it.
#[derive(Debug)]
struct CountingLocks {
    redis: RedisStore,
    unlocks: Arc<AtomicUsize>,
    /// `lock_and_fetch` calls: a lock taken after the lookup.
    locks: Arc<AtomicUsize>,
    /// Lookups that may take the lock (`fetch_or_lock`), answered or not.
    locking_lookups: Arc<AtomicUsize>,
}

impl Store for CountingLocks {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<Bytes>>> {
        self.redis.get(key)
    }
    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, StoreResult<()>> {
        self.redis.put(writes)
    }
    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, StoreResult<u64>> {
        self.redis.delete(keys)
    }
    fn delete_prefix<'a>(&'a self, prefix: &'a PathPrefix) -> BoxFuture<'a, StoreResult<u64>> {
        self.redis.delete_prefix(prefix)
    }
    fn invalidate_tags<'a>(&'a self, tag_keys: &'a [String]) -> BoxFuture<'a, StoreResult<u64>> {
        self.redis.invalidate_tags(tag_keys)
    }
    fn counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<u64>> {
        self.redis.counter(key)
    }
    fn increment<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<u64>> {
        self.redis.increment(key)
    }
    fn __backend(self: Arc<Self>) -> Arc<dyn Backend> {
        self
    }
}

impl Backend for CountingLocks {
    fn fetch<'a>(&'a self, key: &'a str, gen: &'a str) -> BoxFuture<'a, StoreResult<Fetched>> {
        self.redis.fetch(key, gen)
    }
    fn fetch_within<'a>(
        &'a self,
        key: &'a str,
        gen: &'a str,
        budget: Duration,
    ) -> Option<BoxFuture<'a, StoreResult<Fetched>>> {
        self.redis.fetch_within(key, gen, budget)
    }
    fn fetch_or_lock<'a>(
        &'a self,
        key: &'a str,
        gen: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        budget: Duration,
    ) -> Option<BoxFuture<'a, StoreResult<(Fetched, bool)>>> {
        self.locking_lookups.fetch_add(1, SeqCst);
        self.redis
            .fetch_or_lock(key, gen, lock_key, token, ttl, budget)
    }
    fn lock_and_fetch<'a>(
        &'a self,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        key: &'a str,
        gen: &'a str,
    ) -> BoxFuture<'a, StoreResult<(bool, Fetched)>> {
        self.locks.fetch_add(1, SeqCst);
        self.redis.lock_and_fetch(lock_key, token, ttl, key, gen)
    }
    fn unlock<'a>(&'a self, lock_key: &'a str, token: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        self.unlocks.fetch_add(1, SeqCst);
        self.redis.unlock(lock_key, token)
    }
    fn fence<'a>(&'a self, counter_key: &'a str) -> BoxFuture<'a, StoreResult<u64>> {
        self.redis.fence(counter_key)
    }
    fn raise_fence<'a>(
        &'a self,
        counter_key: &'a str,
        markers: &'a [String],
        window: Duration,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        self.redis.raise_fence(counter_key, markers, window)
    }
    fn put_fenced<'a>(
        &'a self,
        writes: &'a [Write],
        fence: &'a Fence,
    ) -> BoxFuture<'a, StoreResult<Fenced>> {
        self.redis.put_fenced(writes, fence)
    }
}

/// The layer (prefix `t`) on `store` in front of an origin that answers
/// after `delay`, with 503 for paths under `/down/`, counting its calls.
fn app(
    store: CountingLocks,
    delay: Duration,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<crate::CacheBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send {
    let cache = RedisCacheLayer::builder()
        .prefix("t")
        .store(store)
        .build()
        .unwrap();
    let origin = service_fn(move |req: Request<Full<Bytes>>| {
        let n = calls.fetch_add(1, SeqCst) + 1;
        async move {
            tokio::time::sleep(delay).await;
            let status = if req.uri().path().starts_with("/down/") {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let body = Full::new(Bytes::from(format!("v{n}")));
            Ok::<_, Infallible>(Response::builder().status(status).body(body).unwrap())
        }
    });
    cache.layer(origin)
}

async fn send<S>(app: &S, uri: &str) -> (u16, String)
where
    S: Service<Request<Full<Bytes>>, Response = Response<crate::CacheBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let x = response.headers()["x-cache"].to_str().unwrap().to_owned();
    (response.status().as_u16(), x)
}

async fn counting(port: u16) -> CountingLocks {
    let redis = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
        .connect()
        .await
        .unwrap();
    CountingLocks {
        redis,
        unlocks: Arc::default(),
        locks: Arc::default(),
        locking_lookups: Arc::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_released_with_the_write_and_after_an_unstored_answer() {
    let server = redis_server();
    let store = counting(server.1).await;
    let unlocks = store.unlocks.clone();
    let client = store.redis.client().unwrap().clone();
    let app = app(store, Duration::ZERO, Arc::default());
    // Stored: the write released the lock in the same round trip, before
    // the response; no separate unlock follows.
    assert_eq!(send(&app, "/items/1").await, (200, "MISS".into()));
    let held: u64 = client.exists("t:v1:default:LOCK:/items/1").await.unwrap();
    assert_eq!(held, 0, "the lock outlived the response");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(unlocks.load(SeqCst), 0, "a separate unlock after the write");
    // Not stored (a 503): released right after the response, on its own.
    assert_eq!(send(&app, "/down/2").await.0, 503);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let held: u64 = client.exists("t:v1:default:LOCK:/down/2").await.unwrap();
        if held == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the lock was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(unlocks.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_a_new_key_takes_the_lock_in_its_lookup() {
    let server = redis_server();
    let store = counting(server.1).await;
    let (locks, locking_lookups) = (store.locks.clone(), store.locking_lookups.clone());
    let client = store.redis.client().unwrap().clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(store, Duration::from_millis(300), calls.clone());
    let miss = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "/items/1").await }
    });
    // While the origin computes, the key is locked against other instances.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let held: u64 = client.exists("t:v1:default:LOCK:/items/1").await.unwrap();
    assert_eq!(held, 1, "no lock while the entry is computed");
    assert_eq!(miss.await.unwrap(), (200, "MISS".into()));
    // The lookup took the lock: no lock round trip of its own.
    assert_eq!(locks.load(SeqCst), 0);
    let held: u64 = client.exists("t:v1:default:LOCK:/items/1").await.unwrap();
    assert_eq!(held, 0, "the lock outlived the response");
    // The layer stored the key: its lookups from now on only read.
    for _ in 0..3 {
        assert_eq!(send(&app, "/items/1").await.1, "HIT");
    }
    assert_eq!(locking_lookups.load(SeqCst), 1, "only the miss");
    assert_eq!(locks.load(SeqCst), 0);
    assert_eq!(calls.load(SeqCst), 1);
}
