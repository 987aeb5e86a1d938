//! No undo by a racing fill: a miss that read the database before an update
//! and stores its page after the update's invalidation must not bring the old
//! page back. Each test holds a slow miss between its database read and its
//! store, updates the database, invalidates (an entry, a tag or a path
//! prefix) through the same or another instance, lets the miss finish, and
//! asserts that no reader on any instance gets the old page afterwards, and
//! that a page computed after the invalidation is stored again.

mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/hashmap_store.rs"]
mod hashmap_store;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use axum::Router;
use http::{Method, Uri};
use support::{reply, req_get, send, Origin, RedisServer};
use tower_redis_cache::{
    store::{MemoryStore, Store},
    CacheHandle, CachePolicy, RedisCacheLayer,
};

/// The database (one version for every item) and the origin that reads
/// it: `GET /items/{id}` answers `item {id} v{version}`, tagged `item:{id}`.
struct Database {
    version: Arc<AtomicUsize>,
    origin: Origin,
}

impl Database {
    fn new() -> Self {
        let version = Arc::new(AtomicUsize::new(0));
        let read = version.clone();
        let origin = Origin::new(move |req, _| {
            let id = req.uri().path().trim_start_matches("/items/");
            let tag = format!("item:{id}");
            reply(
                &[("cache-tag", tag.as_str())],
                format!("item {id} v{}", read.load(SeqCst)),
            )
        });
        Self { version, origin }
    }
}

struct Instance {
    app: Router,
    handle: CacheHandle,
}

fn instance(store: impl Store, db: &Database) -> Instance {
    let cache = RedisCacheLayer::builder()
        .prefix("race")
        .store(store)
        .default_policy(CachePolicy::new().ttl(Duration::from_secs(900)))
        .route("/items/{id}", CachePolicy::new().namespace("items"))
        .build()
        .unwrap();
    let handle = cache.handle();
    let app = db.origin.router().layer(cache);
    Instance { app, handle }
}

#[derive(Debug, Clone, Copy)]
enum How {
    Entry,
    Tag,
    Prefix,
}

async fn invalidate(handle: &CacheHandle, how: How, id: usize) {
    let done = match how {
        How::Entry => {
            let uri: Uri = format!("/items/{id}").parse().unwrap();
            handle.invalidate(&Method::GET, &uri).await
        }
        How::Tag => handle.invalidate_tags([format!("item:{id}")]).await,
        How::Prefix => handle.invalidate_prefix("/items/").await,
    }
    .unwrap();
    assert!(!done.queued, "the store confirmed the invalidation");
}

/// Holds a miss for `/items/{id}` on `filler` between its read and its
/// store, updates the item and invalidates it through `writer`, then lets the
/// miss store. Every instance must then serve the new version, and the page
/// computed after the invalidation must be stored (a hit follows).
async fn slow_miss_across(
    db: &Database,
    filler: &Instance,
    writer: &Instance,
    readers: &[&Instance],
    how: How,
    id: usize,
) {
    let uri = format!("/items/{id}");
    let before = db.version.load(SeqCst);
    let mut hold = db.origin.hold_next();
    let slow = tokio::spawn({
        let app = filler.app.clone();
        let uri = uri.clone();
        async move { send(&app, req_get(&uri)).await }
    });
    hold.entered().await;
    let after = db.version.fetch_add(1, SeqCst) + 1;
    invalidate(&writer.handle, how, id).await;
    hold.release();
    let (_, x, body) = slow.await.unwrap();
    assert_eq!((x.as_str(), body), ("MISS", format!("item {id} v{before}")));
    let fenced = filler.handle.stats().fills_fenced;
    assert!(fenced > 0, "{how:?}: the slow miss was not fenced off");
    for (n, reader) in readers.iter().enumerate() {
        for _ in 0..2 {
            let (status, x, body) = send(&reader.app, req_get(&uri)).await;
            assert_eq!(status, 200);
            assert_eq!(
                body,
                format!("item {id} v{after}"),
                "{how:?}: reader {n} got the page from before the invalidation ({x})"
            );
        }
    }
    // The page read after the invalidation was stored: the last read hit.
    let (_, x, _) = send(&readers[0].app, req_get(&uri)).await;
    assert_eq!(x, "HIT", "{how:?}: nothing is stored after a fenced miss");
}

/// A slow miss across an invalidation of something else is stored.
async fn slow_miss_across_another_invalidation(db: &Database, one: &Instance, how: How, id: usize) {
    let uri = format!("/items/{id}");
    let mut hold = db.origin.hold_next();
    let slow = tokio::spawn({
        let app = one.app.clone();
        let uri = uri.clone();
        async move { send(&app, req_get(&uri)).await }
    });
    hold.entered().await;
    invalidate(&one.handle, how, id + 1).await;
    hold.release();
    assert_eq!(slow.await.unwrap().1, "MISS");
    let (_, x, _) = send(&one.app, req_get(&uri)).await;
    assert_eq!(
        x, "HIT",
        "{how:?}: an invalidation of another item kept the page from being stored"
    );
}

async fn one_instance(store: impl Store) {
    let db = Database::new();
    let a = instance(store, &db);
    for (id, how) in [How::Entry, How::Tag, How::Prefix].into_iter().enumerate() {
        slow_miss_across(&db, &a, &a, &[&a], how, id + 1).await;
    }
    slow_miss_across_another_invalidation(&db, &a, How::Entry, 100).await;
    slow_miss_across_another_invalidation(&db, &a, How::Tag, 200).await;
}

async fn two_instances<S: Store>(make: impl Fn() -> S) {
    let db = Database::new();
    let a = instance(make(), &db);
    let b = instance(make(), &db);
    for (id, how) in [How::Entry, How::Tag, How::Prefix].into_iter().enumerate() {
        // The miss on one instance, the update through the other.
        slow_miss_across(&db, &a, &b, &[&a, &b], how, id + 1).await;
        slow_miss_across(&db, &b, &a, &[&b, &a], how, id + 11).await;
    }
}

#[tokio::test]
async fn memory_store_a_slow_miss_does_not_undo_an_invalidation() {
    one_instance(MemoryStore::default()).await;
}

/// A store of the user's, with none of the crate's fast paths: the layer's
/// defaults fence its fills with counters and markers read and written
/// through `Store`.
#[tokio::test]
async fn a_users_store_a_slow_miss_does_not_undo_an_invalidation() {
    one_instance(hashmap_store::HashMapStore::default()).await;
}

#[tokio::test]
async fn a_users_store_two_instances_a_slow_miss_does_not_undo_the_other_instances_invalidation() {
    let shared = hashmap_store::HashMapStore::default();
    two_instances(|| shared.clone()).await;
}

#[tokio::test]
async fn redis_a_slow_miss_does_not_undo_an_invalidation() {
    let redis = RedisServer::start();
    one_instance(redis.store().await).await;
}

#[tokio::test]
async fn redis_two_instances_a_slow_miss_does_not_undo_the_other_instances_invalidation() {
    let redis = RedisServer::start();
    let (one, two) = (redis.store().await, redis.store().await);
    let stores = std::sync::Mutex::new(vec![one, two]);
    two_instances(|| stores.lock().unwrap().pop().unwrap()).await;
}

#[tokio::test]
async fn redis_cluster_a_slow_miss_does_not_undo_the_other_instances_invalidation() {
    let redis = RedisServer::start_cluster();
    let (one, two) = (redis.store().await, redis.store().await);
    let stores = std::sync::Mutex::new(vec![one, two]);
    two_instances(|| stores.lock().unwrap().pop().unwrap()).await;
}

#[cfg(feature = "l1")]
#[tokio::test]
async fn l1_tier_two_instances_a_slow_miss_does_not_undo_the_other_instances_invalidation() {
    use tower_redis_cache::store::{LocalTier, TieredStore};
    let redis = RedisServer::start();
    let mut stores = Vec::new();
    for _ in 0..2 {
        let tier = LocalTier::new().track_prefix("race:");
        stores.push(
            TieredStore::connect(redis.store().await, tier)
                .await
                .unwrap(),
        );
    }
    let stores = std::sync::Mutex::new(stores);
    two_instances(|| stores.lock().unwrap().pop().unwrap()).await;
}
