//! The L1 tier on a Redis Cluster whose topology changes under it: a
//! resharding to a new master, a failover to a replica, and a server that
//! refuses client tracking. And the layer behind Redis Sentinel, through a
//! failover.
#![cfg(feature = "l1")]

mod support;

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use axum::Router;
use http::{Method, Uri};
use support::{req_get, send, Captured, Origin, RedisServer, SentinelSet};
use tower_redis_cache::{
    fred::{prelude::KeysInterface, util::redis_keyslot},
    store::{LocalTier, RedisStore, TieredStore},
    CacheHandle, CachePolicy, RedisCacheLayer,
};

/// The longest an invalidation may take to reach another instance's L1
/// (docs/tiers.md).
const PROPAGATION_BOUND: Duration = Duration::from_millis(200);

/// Shared by every instance: each answer is told from any other.
static ORIGIN: LazyLock<Origin> = LazyLock::new(Origin::items);

struct Instance {
    app: Router,
    handle: CacheHandle,
    store: TieredStore,
}

async fn instance_on(store: RedisStore) -> Instance {
    let store = TieredStore::connect(store, LocalTier::new().track_prefix("l1:"))
        .await
        .unwrap();
    let cache = RedisCacheLayer::builder()
        .prefix("l1")
        .store(store.clone())
        .route("/items/{id}", CachePolicy::new().namespace("items"))
        .build()
        .unwrap();
    let handle = cache.handle();
    let app = ORIGIN.router().layer(cache);
    Instance { app, handle, store }
}

async fn instance(redis: &RedisServer) -> Instance {
    instance_on(redis.store().await).await
}

/// Reads `uri` through `i` until it is a HIT; its body.
async fn warm(i: &Instance, uri: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, x_cache, body) = send(&i.app, req_get(uri)).await;
        assert_eq!(status, 200);
        if x_cache == "HIT" {
            return body;
        }
        assert!(Instant::now() < deadline, "{uri} never became a HIT");
        // Let the write's own invalidation arrive: a fill racing with it is
        // (rightly) discarded.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn uris() -> Vec<String> {
    (0..12).map(|i| format!("/items/{i}")).collect()
}

fn slot_of(i: &Instance, uri: &str) -> u16 {
    let key = i
        .handle
        .key_for(&Method::GET, &uri.parse::<Uri>().unwrap())
        .unwrap();
    redis_keyslot(key.as_bytes())
}

async fn wait_coherent(i: &Instance, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !i.store.is_coherent() {
        assert!(Instant::now() < deadline, "the L1 never came back {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 5 s for both instances to track `node` (a tier that never
/// does is caught by what follows).
async fn wait_for_tracking(redis: &RedisServer, node: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.tracking_connections(node) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Invalidates every uri through `a`; once the entries are gone from
/// Redis, `b` must not serve any of the bodies it served before (`before`,
/// by uri).
async fn update_through_a_and_check_b(
    redis: &RedisServer,
    a: &Instance,
    b: &Instance,
    before: &[(String, String)],
) {
    for (uri, _) in before {
        let uri = uri.parse::<Uri>().unwrap();
        // Right after a failover a command can fail once, on a connection
        // that learns of the new primary from its MOVED reply: retried.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = a.handle.invalidate(&Method::GET, &uri).await {
            assert!(Instant::now() < deadline, "invalidate {uri}: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let client = redis.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for (uri, _) in before {
        let key = a
            .handle
            .key_for(&Method::GET, &uri.parse::<Uri>().unwrap())
            .unwrap();
        while client.exists::<u64, _>(key.as_str()).await.unwrap_or(1) > 0 {
            assert!(Instant::now() < deadline, "{uri} never left Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(PROPAGATION_BOUND).await;
    let mut stale = Vec::new();
    for (uri, old) in before {
        let (status, x_cache, body) = send(&b.app, req_get(uri)).await;
        assert_eq!(status, 200);
        if &body == old {
            stale.push(format!("{uri} ({x_cache})"));
        }
    }
    assert!(
        stale.is_empty(),
        "B served entries invalidated through A: {stale:?}"
    );
}

/// Every uri stays in B's L1: reading them again makes no `GET` on `node`.
async fn served_from_l1(redis: &RedisServer, b: &Instance, uris: &[String], node: usize) {
    for uri in uris {
        warm(b, uri).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = redis.command_calls(node, "get");
        for uri in uris {
            assert_eq!(send(&b.app, req_get(uri)).await.1, "HIT");
        }
        if redis.command_calls(node, "get") == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "B's lookups of the moved keys keep going to Redis: the L1 is not in use for them"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_resharding_to_a_new_master_no_instance_serves_an_entry_changed_there() {
    let mut redis = RedisServer::start_cluster();
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let uris = uris();
    for uri in &uris {
        warm(&a, uri).await;
        warm(&b, uri).await;
    }

    // A fourth master takes the slots of half of the entries.
    let new = redis.add_master();
    let moved: Vec<String> = uris[..6].to_vec();
    for uri in &moved {
        redis.move_slot(slot_of(&a, uri), new);
    }

    // Traffic goes on: both instances read every entry again (from its new
    // node for those that moved) and keep it in their L1 when they may.
    let mut before = Vec::new();
    for uri in &uris {
        warm(&a, uri).await;
        before.push((uri.clone(), warm(&b, uri).await));
    }
    // The instances notice the change on a MOVED reply, or at their next
    // topology refresh (1 s): give them that long.
    wait_for_tracking(&redis, new).await;
    update_through_a_and_check_b(&redis, &a, &b, &before).await;

    // The new master is tracked by both, and B's L1 serves its keys again.
    wait_coherent(&b, "after the resharding").await;
    assert_eq!(
        redis.tracking_connections(new),
        2,
        "A and B track the new master"
    );
    served_from_l1(&redis, &b, &moved, new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_no_instance_serves_an_entry_changed_on_the_promoted_replica() {
    let mut redis = RedisServer::start_cluster();
    let replica = redis.add_replica(0);
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    let uris = uris();
    let on_0: Vec<String> = uris
        .iter()
        .filter(|uri| redis.slot_owner(slot_of(&a, uri)) == 0)
        .cloned()
        .collect();
    assert!(
        !on_0.is_empty(),
        "some entries live on the failed-over master"
    );
    for uri in &uris {
        warm(&a, uri).await;
        warm(&b, uri).await;
    }

    // The replica takes over; the old primary, now its replica, is cut off
    // from it (a partition): still up and reachable, it no longer sees the
    // writes.
    redis.failover(replica);
    redis.cut_off_replicas(replica);

    let mut before = Vec::new();
    for uri in &uris {
        warm(&a, uri).await;
        before.push((uri.clone(), warm(&b, uri).await));
    }
    wait_for_tracking(&redis, replica).await;
    update_through_a_and_check_b(&redis, &a, &b, &before).await;

    wait_coherent(&b, "after the failover").await;
    assert_eq!(
        redis.tracking_connections(replica),
        2,
        "A and B track the promoted replica"
    );
    served_from_l1(&redis, &b, &on_0, replica).await;
}

#[tokio::test]
async fn a_server_that_refuses_tracking_leaves_the_l1_off_with_a_warning() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A managed-Redis-like user: everything but the CLIENT command.
    let redis = RedisServer::start();
    let reply = redis.node_command(0, "ACL SETUSER cache on >pw ~* &* +@all -client");
    assert!(reply.starts_with("+OK"), "{reply}");
    let url = format!("redis://cache:pw@127.0.0.1:{}", redis.port());
    let store = || async {
        RedisStore::builder(url.as_str())
            .pool_size(2)
            .connect()
            .await
            .unwrap()
    };
    let a = instance_on(store().await).await;
    let b = instance_on(store().await).await;
    assert!(!a.store.is_coherent() && !b.store.is_coherent());
    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("L1 off"))
        .unwrap_or_else(|| panic!("no warning that the L1 is off:\n{text}"));
    assert!(warning.contains("CLIENT TRACKING"), "{warning}");
    assert!(warning.contains("NOPERM"), "the server's reason: {warning}");

    // Every lookup goes to Redis, with correct answers.
    let first = warm(&b, "/items/1").await;
    let gets = |r: &RedisServer| r.command_calls(0, "get") + r.command_calls(0, "mget");
    let before = gets(&redis);
    for _ in 0..5 {
        assert_eq!(
            send(&b.app, req_get("/items/1")).await,
            (200, "HIT".into(), first.clone())
        );
    }
    assert!(gets(&redis) >= before + 5, "every lookup reads Redis");
    assert_eq!(b.store.local_entries(), 0);
    a.handle
        .invalidate(&Method::GET, &Uri::from_static("/items/1"))
        .await
        .unwrap();
    let (_, x_cache, body) = send(&b.app, req_get("/items/1")).await;
    assert_eq!(x_cache, "MISS");
    assert_ne!(body, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_the_layer_caches_and_follows_a_failover() {
    let set = tokio::task::spawn_blocking(SentinelSet::start)
        .await
        .unwrap();
    let first_master = set.master_port();
    let store = RedisStore::builder(set.url()).connect().await.unwrap();
    let cache = RedisCacheLayer::builder()
        .prefix("sentinel")
        .store(store)
        .build()
        .unwrap();
    let origin = Origin::items();
    let app = origin.router().layer(cache);
    assert_eq!(send(&app, req_get("/items/1")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
    let key = "sentinel:v1:default:GET:/items/1";
    assert!(
        set.node_command(0, &format!("EXISTS {key}"))
            .starts_with(":1"),
        "the entry went to the master the sentinel named"
    );

    let set = tokio::task::spawn_blocking(move || {
        set.failover();
        set
    })
    .await
    .unwrap();
    assert_ne!(set.master_port(), first_master);

    // Every answer is the service's or the cache's, never an error; within
    // a few seconds a new entry is written to the promoted replica (a write
    // to the old master, now a replica, would be refused) and served.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, x_cache, body) = send(&app, req_get("/items/2")).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("item 2 v"), "{body}");
        if x_cache == "HIT" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no hit within 20 s of the failover (last: {x_cache})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(set.node_command(1, "ROLE").contains("master"));
    // The entry stored before the failover was replicated and is served.
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
}
