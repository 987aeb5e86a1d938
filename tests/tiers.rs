//! The in-process L1 tier, kept coherent by Redis client tracking, with two
//! instances sharing one Redis (standalone and cluster).
#![cfg(feature = "l1")]

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use http::{Method, Uri};
use support::{req_get, send, Origin, RedisServer};
use tower_redis_cache::{
    fred::{
        prelude::{ClientLike, KeysInterface},
        types::CustomCommand,
    },
    store::{LocalTier, TieredStore},
    CacheHandle, CachePolicy, RedisCacheLayer,
};

/// The longest an invalidation may take to reach another instance's L1 in
/// these tests (docs/tiers.md states the same bound).
const PROPAGATION_BOUND: Duration = Duration::from_millis(200);

struct Instance {
    app: Router,
    handle: CacheHandle,
    store: TieredStore,
    origin: Origin,
}

async fn instance(redis: &RedisServer) -> Instance {
    let store = TieredStore::connect(redis.store().await, LocalTier::new().track_prefix("l1:"))
        .await
        .unwrap();
    let cache = RedisCacheLayer::builder()
        .prefix("l1")
        .store(store.clone())
        .route("/items/{id}", CachePolicy::new().namespace("items"))
        .build()
        .unwrap();
    let handle = cache.handle();
    let origin = Origin::tagged_items();
    let app = origin.router().layer(cache);
    Instance {
        app,
        handle,
        store,
        origin,
    }
}

/// Reads through `b` until it misses; how long that took.
async fn time_until_miss(b: &Instance, uri: &str) -> Duration {
    let started = Instant::now();
    loop {
        if send(&b.app, req_get(uri)).await.1 == "MISS" {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{uri} never dropped from L1"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn warm(i: &Instance, uri: &str) {
    send(&i.app, req_get(uri)).await;
    // Let the write's own invalidation arrive: a fill racing with it is
    // (rightly) discarded. The next HIT comes from Redis and fills the L1.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(send(&i.app, req_get(uri)).await.1, "HIT");
}

async fn an_invalidation_through_one_instance_drops_the_entry_from_every_l1(redis: RedisServer) {
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    assert!(a.store.is_coherent() && b.store.is_coherent());
    warm(&a, "/items/1").await;
    warm(&b, "/items/1").await;
    assert!(b.store.local_entries() >= 1, "B serves from its L1");

    // One entry.
    a.handle
        .invalidate(&Method::GET, &Uri::from_static("/items/1"))
        .await
        .unwrap();
    let took = time_until_miss(&b, "/items/1").await;
    assert!(took < PROPAGATION_BOUND, "stale L1 entry survived {took:?}");

    // A whole namespace (generation bump).
    warm(&a, "/items/2").await;
    warm(&b, "/items/2").await;
    a.handle.invalidate_namespace("items").await.unwrap();
    let took = time_until_miss(&b, "/items/2").await;
    assert!(
        took < PROPAGATION_BOUND,
        "namespace bump reached B's L1 after {took:?}"
    );

    // A tag.
    warm(&a, "/items/3").await;
    warm(&b, "/items/3").await;
    assert_eq!(
        a.handle.invalidate_tags(["item:3"]).await.unwrap().removed,
        1
    );
    let took = time_until_miss(&b, "/items/3").await;
    assert!(
        took < PROPAGATION_BOUND,
        "tag invalidation reached B's L1 after {took:?}"
    );

    // The invalidating instance itself never serves the old entry.
    warm(&a, "/items/4").await;
    a.handle.invalidate_prefix("/items/4").await.unwrap();
    assert_eq!(send(&a.app, req_get("/items/4")).await.1, "MISS");
}

async fn any_write_to_a_key_drops_it_from_l1(redis: RedisServer) {
    let b = instance(&redis).await;
    warm(&b, "/items/9").await;
    let raw = redis.client().await;
    let key = b
        .handle
        .key_for(&Method::GET, &Uri::from_static("/items/9"))
        .unwrap();
    let _: u64 = raw.del(key.as_str()).await.unwrap();
    let took = time_until_miss(&b, "/items/9").await;
    assert!(took < PROPAGATION_BOUND, "{took:?}");
    assert_eq!(b.origin.calls(), 2);
}

on_both_topologies!(
    an_invalidation_through_one_instance_drops_the_entry_from_every_l1,
    any_write_to_a_key_drops_it_from_l1,
);

async fn get_calls(client: &tower_redis_cache::fred::clients::Client) -> u64 {
    let info: String = client
        .custom(
            CustomCommand::new_static("INFO", None, false),
            vec!["commandstats"],
        )
        .await
        .unwrap();
    info.lines()
        .find(|l| l.starts_with("cmdstat_get:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_hits_make_no_redis_round_trip() {
    let redis = RedisServer::start();
    let a = instance(&redis).await;
    warm(&a, "/items/1").await;
    let admin = redis.client().await;
    let before = get_calls(&admin).await;
    for _ in 0..100 {
        assert_eq!(send(&a.app, req_get("/items/1")).await.1, "HIT");
    }
    assert_eq!(get_calls(&admin).await, before, "hits went to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracking_connection_flushes_and_bypasses_l1_until_it_is_back() {
    let redis = RedisServer::start();
    let b = instance(&redis).await;
    warm(&b, "/items/1").await;
    let admin = redis.client().await;
    let tracking = support::tracking_clients(&admin).await;
    assert_eq!(tracking.len(), 1, "{tracking:?}");
    let _: u64 = admin
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["KILL", "ID", tracking[0].as_str()],
        )
        .await
        .unwrap();
    // While tracking is down, nothing may be served from the L1: a change made
    // now would never be announced to it.
    let key = b
        .handle
        .key_for(&Method::GET, &Uri::from_static("/items/1"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.store.is_coherent() {
        assert!(
            Instant::now() < deadline,
            "the lost connection went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _: u64 = admin.del(key.as_str()).await.unwrap();
    assert_eq!(send(&b.app, req_get("/items/1")).await.1, "MISS");
    // Tracking comes back, and with it the L1.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.store.is_coherent() {
        assert!(Instant::now() < deadline, "tracking never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warm(&b, "/items/1").await;
    let before = get_calls(&admin).await;
    assert_eq!(send(&b.app, req_get("/items/1")).await.1, "HIT");
    assert_eq!(get_calls(&admin).await, before, "L1 in use again");
}
