//! Writes survive partitions: an invalidation Redis does not confirm is
//! queued, replayed once Redis answers, and no instance serves the old entry
//! after that (the writer serves none before either). Redis is reached
//! through a relay the tests cut and heal, or paused with `CLIENT PAUSE`.

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    routing::get,
    Json, Router,
};
use http::{Method, Uri};
use support::{req_get, request, send, RedisServer, Relay};
use tower_redis_cache::{
    fred::{interfaces::ClientLike, types::CustomCommand},
    store::{RedisStore, Store},
    CacheHandle, CachePolicy, RedisCacheLayer, RedisCacheLayerBuilder,
};

/// The "database" every instance reads: item id to its current text.
type Db = Arc<Mutex<HashMap<String, String>>>;

fn db() -> Db {
    let db: Db = Arc::default();
    for id in 1..=4 {
        db.lock()
            .unwrap()
            .insert(id.to_string(), format!("item {id} v1"));
    }
    db
}

struct Instance {
    app: Router,
    handle: CacheHandle,
}

/// One instance of the application: `GET /items/{id}` and `GET /lists/{name}`
/// cached (15 min), `PATCH /items/{id}` updates the database, then
/// invalidates the item's entry and every list page, and answers with whether
/// the invalidations were queued.
fn instance(
    store: impl Store,
    db: Db,
    configure: impl FnOnce(RedisCacheLayerBuilder) -> RedisCacheLayerBuilder,
) -> Instance {
    let cache = configure(
        RedisCacheLayer::builder()
            .prefix("part")
            .store(store)
            .default_policy(CachePolicy::new().ttl(Duration::from_secs(900)))
            .route("/items/{id}", CachePolicy::new().namespace("items"))
            .route("/lists/{name}", CachePolicy::new().namespace("lists"))
            .route(
                "/docs/{id}",
                CachePolicy::new()
                    .namespace("docs")
                    .invalidate_on_unsafe(true),
            ),
    )
    .build()
    .unwrap();
    let handle = cache.handle();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|State(db): State<Db>, Path(id): Path<String>| async move {
                db.lock().unwrap().get(&id).cloned().unwrap_or_default()
            })
            .patch(
                |State(db): State<Db>, cache: CacheHandle, Path(id): Path<String>| async move {
                    // The database update.
                    db.lock()
                        .unwrap()
                        .insert(id.clone(), format!("item {id} v2"));
                    let uri: Uri = format!("/items/{id}").parse().unwrap();
                    let item = cache.invalidate(&Method::GET, &uri).await.unwrap();
                    let lists = cache.invalidate_prefix("/lists/").await.unwrap();
                    Json(serde_json::json!({
                        "queued": [item.queued, lists.queued],
                    }))
                },
            ),
        )
        .route(
            "/lists/{name}",
            get(|Path(name): Path<String>| async move { format!("list {name}") }),
        )
        // The layer itself invalidates after a successful `PUT`.
        .route(
            "/docs/{id}",
            get(|State(db): State<Db>, Path(id): Path<String>| async move {
                let key = format!("doc {id}");
                db.lock().unwrap().get(&key).cloned().unwrap_or(key)
            })
            .put(|State(db): State<Db>, Path(id): Path<String>| async move {
                let key = format!("doc {id}");
                db.lock().unwrap().insert(key.clone(), format!("{key} v2"));
            }),
        )
        .with_state(db)
        .layer(cache);
    Instance { app, handle }
}

async fn redis_store(url: String) -> RedisStore {
    RedisStore::builder(url)
        .pool_size(2)
        .connect()
        .await
        .expect("connect to the test Redis")
}

/// Reads `/items/1` through `at` until caching has resumed there (a `HIT`
/// or `MISS`, not `BYPASS`), asserting on every read that the new text is
/// served: from the first request on, never the old entry.
async fn never_stale_until_cached(at: &Instance, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut reads = 0;
    loop {
        let (status, x, body) = send(&at.app, req_get("/items/1")).await;
        reads += 1;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            "item 1 v2",
            "{who}: read {reads} ({x}) served the entry the update invalidated; stats {:?}",
            at.handle.stats()
        );
        if x != "BYPASS" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: caching never resumed; stats {:?}",
            at.handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cache outcome of `GET uri` once the store answers again: reads that
/// pass through (`BYPASS`: a connection still reconnecting) store nothing
/// and are retried.
async fn outcome(at: &Instance, uri: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let x = send(&at.app, req_get(uri)).await.1;
        if x != "BYPASS" || Instant::now() > deadline {
            return x;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fill(at: &Instance) {
    for uri in ["/items/1", "/items/2", "/lists/a"] {
        let (_, x, _) = send(&at.app, req_get(uri)).await;
        assert!(x == "MISS" || x == "HIT", "{uri}: {x}");
        assert_eq!(send(&at.app, req_get(uri)).await.1, "HIT", "{uri}");
    }
}

/// Cuts `relay`, sends the update through `writer`, checks it answered at
/// once with its invalidations queued, and heals.
async fn update_while_cut(writer: &Instance, relay: &Relay) {
    relay.cut();
    let started = Instant::now();
    let (status, _, body) = send(&writer.app, request("PATCH", "/items/1")).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"queued":[true,true]}"#);
    assert!(
        took < Duration::from_secs(1),
        "the handler waited {took:?} for an unreachable Redis"
    );
    // Still cut: the writer serves no hit.
    assert_eq!(
        send(&writer.app, req_get("/items/1")).await.2,
        "item 1 v2",
        "the writer served the old entry while its invalidation was queued"
    );
    relay.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_serves_no_stale_entry_after_a_partition() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let a = instance(redis_store(relay.url()).await, db(), |b| b);
    fill(&a).await;
    update_while_cut(&a, &relay).await;
    never_stale_until_cached(&a, "the writer").await;
    assert!(a.handle.drain(Duration::from_secs(10)).await);
    let stats = a.handle.stats();
    assert_eq!(stats.invalidations_pending, 0, "{stats:?}");
    assert!(stats.invalidations_queued >= 2, "{stats:?}");
    assert_eq!(
        stats.invalidations_replayed, stats.invalidations_queued,
        "{stats:?}"
    );
    // Replayed in Redis: the entry is gone and the list page too.
    assert_eq!(outcome(&a, "/lists/a").await, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_serve_no_stale_entry_once_the_writer_replayed() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let db = db();
    let a = instance(redis_store(relay.url()).await, db.clone(), |b| b);
    let b = instance(redis_store(redis.url()).await, db, |b| b);
    fill(&a).await;
    assert_eq!(send(&b.app, req_get("/items/1")).await.1, "HIT");
    update_while_cut(&a, &relay).await;
    never_stale_until_cached(&a, "the writer").await;
    assert!(a.handle.drain(Duration::from_secs(10)).await);
    never_stale_until_cached(&b, "the other instance").await;
    assert_eq!(outcome(&b, "/lists/a").await, "MISS");
}

#[cfg(feature = "l1")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_the_l1_tier_serve_no_stale_entry_once_the_writer_replayed() {
    use tower_redis_cache::store::{LocalTier, TieredStore};
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let db = db();
    let tiered = |store| async move {
        TieredStore::connect(store, LocalTier::new().track_prefix("part:"))
            .await
            .unwrap()
    };
    let a = instance(
        tiered(redis_store(relay.url()).await).await,
        db.clone(),
        |b| b,
    );
    let b = instance(tiered(redis_store(redis.url()).await).await, db, |b| b);
    fill(&a).await;
    fill(&b).await;
    update_while_cut(&a, &relay).await;
    never_stale_until_cached(&a, "the writer").await;
    assert!(a.handle.drain(Duration::from_secs(10)).await);
    // Redis tells the other instance's L1 about the replayed deletion
    // (docs/tiers.md: within 200 ms).
    tokio::time::sleep(Duration::from_millis(200)).await;
    never_stale_until_cached(&b, "the other instance").await;
    assert_eq!(outcome(&b, "/lists/a").await, "MISS");
}

/// Pauses every client of `redis` for 2 s, from a separate client.
async fn pause(redis: &RedisServer) {
    let admin = redis.client().await;
    let _: String = admin
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["PAUSE", "2000", "ALL"],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_holds_a_handler_for_the_handle_budget_only() {
    let redis = RedisServer::start();
    let a = instance(redis_store(redis.url()).await, db(), |b| b);
    fill(&a).await;
    pause(&redis).await;
    let started = Instant::now();
    let (status, _, body) = send(&a.app, request("PATCH", "/items/1")).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    // Two invalidations, each bounded by the 100 ms handle budget (without
    // it each waits for the client's 1 s command timeout: 2 s; 800 ms leaves
    // room for a busy machine and still shows that no call waited for it).
    assert!(
        took < Duration::from_millis(800),
        "the handler waited {took:?} for a stalled Redis"
    );
    assert_eq!(body, r#"{"queued":[true,true]}"#);
    never_stale_until_cached(&a, "the writer").await;
    assert!(a.handle.drain(Duration::from_secs(10)).await);
    let (_, x, body) = send(&a.app, req_get("/items/1")).await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "item 1 v2"));
    assert_eq!(outcome(&a, "/lists/a").await, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_bound_every_namespace_touched_is_bumped() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let a = instance(redis_store(relay.url()).await, db(), |b| {
        b.max_pending_invalidations(3)
    });
    fill(&a).await;
    for uri in ["/items/3", "/items/4"] {
        send(&a.app, req_get(uri)).await;
        assert_eq!(send(&a.app, req_get(uri)).await.1, "HIT", "{uri}");
    }
    let h = &a.handle;
    let item = |id: u32| format!("/items/{id}").parse::<Uri>().unwrap();
    relay.cut();
    for id in [1, 2, 3] {
        assert!(h.invalidate(&Method::GET, &item(id)).await.unwrap().queued);
    }
    assert_eq!(h.stats().invalidations_dropped, 0);
    // The fourth passes the bound: those not under way (at most two are: the
    // handle call that ran out of time and the replay) become one bump of
    // their namespace, `items`.
    assert!(h.invalidate(&Method::GET, &item(2)).await.unwrap().queued);
    let dropped = h.stats().invalidations_dropped;
    relay.heal();
    assert!(h.drain(Duration::from_secs(10)).await, "{:?}", h.stats());
    // Every entry of `items` is gone, the one never invalidated too; the
    // other namespace is untouched.
    assert_eq!(outcome(&a, "/items/4").await, "MISS");
    assert_eq!(outcome(&a, "/items/1").await, "MISS");
    assert_eq!(outcome(&a, "/lists/a").await, "HIT");
    assert!(dropped >= 2, "{:?}", h.stats());

    // A prefix can touch every namespace: past the bound, all are bumped.
    assert_eq!(outcome(&a, "/items/4").await, "HIT");
    relay.cut();
    assert!(h.invalidate(&Method::GET, &item(1)).await.unwrap().queued);
    assert!(h.invalidate(&Method::GET, &item(2)).await.unwrap().queued);
    assert!(h.invalidate_prefix("/nothing/").await.unwrap().queued);
    assert!(h.invalidate(&Method::GET, &item(2)).await.unwrap().queued);
    relay.heal();
    assert!(h.drain(Duration::from_secs(10)).await, "{:?}", h.stats());
    assert_eq!(outcome(&a, "/items/4").await, "MISS");
    assert_eq!(outcome(&a, "/lists/a").await, "MISS");
    assert!(h.stats().invalidations_dropped >= 4, "{:?}", h.stats());
}

/// The L1 tier answers hits from process memory (no future, no Redis): while
/// Redis stalls it still holds the entry the update invalidated, and the
/// queued invalidation keeps it from being served.
#[cfg(feature = "l1")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_l1_tier_a_queued_invalidation_keeps_in_process_hits_from_being_served() {
    use tower_redis_cache::store::{LocalTier, TieredStore};
    let redis = RedisServer::start();
    let store = TieredStore::connect(
        redis_store(redis.url()).await,
        LocalTier::new().track_prefix("part:"),
    )
    .await
    .unwrap();
    let a = instance(store, db(), |b| b);
    fill(&a).await;
    pause(&redis).await;
    let (status, _, body) = send(&a.app, request("PATCH", "/items/1")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"queued":[true,true]}"#));
    // Redis is still paused; the L1 holds the old entry.
    let (_, x, body) = send(&a.app, req_get("/items/1")).await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("BYPASS", "item 1 v2"),
        "served from the L1 while the invalidation was queued"
    );
    never_stale_until_cached(&a, "the writer").await;
    assert!(a.handle.drain(Duration::from_secs(10)).await);
    assert_eq!(outcome(&a, "/lists/a").await, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invalidation_after_an_unsafe_request_is_queued_and_replayed_too() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let a = instance(redis_store(relay.url()).await, db(), |b| b);
    send(&a.app, req_get("/docs/1")).await;
    assert_eq!(send(&a.app, req_get("/docs/1")).await.1, "HIT");
    relay.cut();
    let started = Instant::now();
    assert_eq!(send(&a.app, request("PUT", "/docs/1")).await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    relay.heal();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, x, body) = send(&a.app, req_get("/docs/1")).await;
        assert_eq!(body, "doc 1 v2", "read ({x}) served the invalidated entry");
        if x != "BYPASS" {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", a.handle.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = a.handle.stats();
    assert_eq!(stats.unsafe_invalidations, 1, "{stats:?}");
    assert!(stats.invalidations_queued >= 1, "{stats:?}");
}

/// On a Redis Cluster, the master holding the item's entry stalls (the
/// others answer): the handler still answers within the handle budget, and
/// once the master answers again and the queue is replayed the update is
/// visible. (A stall, `CLIENT PAUSE` on that master; a master cut off is
/// the test after this one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_stalled_master_holds_the_handler_for_the_budget_only() {
    use tower_redis_cache::fred::prelude::{Builder, Config, KeysInterface};
    let redis = RedisServer::start_cluster();
    let a = instance(redis_store(redis.url()).await, db(), |b| b);
    fill(&a).await;
    let key = a
        .handle
        .key_for(&Method::GET, &Uri::from_static("/items/1"))
        .unwrap();
    // The master that owns the entry's slot: the one that answers a plain
    // GET of it (the others answer MOVED).
    let url = redis.url();
    let ports = url
        .split(['/', '?', '&'])
        .filter_map(|part| part.rsplit(':').next()?.parse::<u16>().ok());
    let mut owner = None;
    for port in ports {
        let client =
            Builder::from_config(Config::from_url(&format!("redis://127.0.0.1:{port}")).unwrap())
                .build()
                .unwrap();
        client.init().await.unwrap();
        let read: Result<tower_redis_cache::fred::types::Value, _> = client.get(&key).await;
        if read.is_ok() {
            owner = Some(client);
            break;
        }
    }
    let owner = owner.expect("a master owns the entry's slot");
    let _: String = owner
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["PAUSE", "2000", "ALL"],
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (status, _, body) = send(&a.app, request("PATCH", "/items/1")).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        took < Duration::from_millis(800),
        "the handler waited {took:?} for a stalled master"
    );
    assert!(body.starts_with(r#"{"queued":[true"#), "{body}");
    never_stale_until_cached(&a, "the writer").await;
    assert!(a.handle.drain(Duration::from_secs(10)).await);
    let (_, x, body) = send(&a.app, req_get("/items/1")).await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "item 1 v2"));
}

/// Reads `uri` through `at` until caching has resumed there (not `BYPASS`),
/// asserting on every read that `want` is served: from the first request on,
/// never the entry the update invalidated.
async fn never_stale_until_cached_at(at: &Instance, uri: &str, want: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut reads = 0;
    loop {
        let (status, x, body) = send(&at.app, req_get(uri)).await;
        reads += 1;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            want,
            "{who}: read {reads} of {uri} ({x}) served the entry the update invalidated; \
             stats {:?}",
            at.handle.stats()
        );
        if x != "BYPASS" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: caching of {uri} never resumed; stats {:?}",
            at.handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On a Redis Cluster whose nodes announce relay ports (every client
/// connection goes through a relay), the relay of one master is cut: the
/// update handlers answer at once with their invalidations queued, the
/// writer serves no old entry, and once the relay heals and the writer has
/// drained its queue neither it nor a second instance serves an old entry,
/// whichever master held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_with_one_master_cut_off_no_instance_serves_a_stale_entry() {
    let (redis, relays) = RedisServer::start_cluster_behind_relays().await;
    let url = support::relayed_cluster_url(&relays);
    let db = db();
    let ids: Vec<String> = (1..=9).map(|id| id.to_string()).collect();
    for id in &ids {
        db.lock()
            .unwrap()
            .insert(id.clone(), format!("item {id} v1"));
    }
    let a = instance(redis_store(url.clone()).await, db.clone(), |b| b);
    let b = instance(redis_store(url).await, db, |b| b);
    for id in &ids {
        let uri = format!("/items/{id}");
        let x = outcome(&a, &uri).await;
        assert!(x == "MISS" || x == "HIT", "{uri}: {x}");
        assert_eq!(send(&a.app, req_get(&uri)).await.1, "HIT", "{uri}");
        assert_eq!(outcome(&b, &uri).await, "HIT", "{uri}");
    }
    // The master that owns each entry: the node that answers `EXISTS` for
    // its key rather than `MOVED`.
    let owner = |id: &str| {
        let uri: Uri = format!("/items/{id}").parse().unwrap();
        let key = a.handle.key_for(&Method::GET, &uri).unwrap();
        (0..3)
            .find(|&node| {
                redis
                    .node_command(node, &format!("EXISTS \"{key}\""))
                    .starts_with(":1")
            })
            .unwrap_or_else(|| panic!("no master holds the entry of {uri}"))
    };
    let owners: Vec<usize> = ids.iter().map(|id| owner(id)).collect();
    for node in 0..3 {
        assert!(
            owners.contains(&node),
            "master {node} holds none of the entries: {owners:?}"
        );
    }
    let cut = owners[0];
    // The items of the cut master first: from the first queued
    // invalidation on, every later one is queued behind it.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| owners[i] != cut);

    relays[cut].cut();
    for &i in &order {
        let id = &ids[i];
        let started = Instant::now();
        let (status, _, body) = send(&a.app, request("PATCH", &format!("/items/{id}"))).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(
            took < Duration::from_secs(1),
            "the handler waited {took:?} for an unreachable master"
        );
        if owners[i] == cut {
            assert!(body.starts_with(r#"{"queued":[true"#), "{body}");
        }
    }
    assert!(a.handle.stats().invalidations_pending > 0);
    // Still cut: the writer serves no hit, whatever master holds the entry.
    // (The other instance is not read here: it does not know about the
    // writer's queue, and may serve an old entry until the replay.)
    for id in &ids {
        let (_, x, body) = send(&a.app, req_get(&format!("/items/{id}"))).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("BYPASS", format!("item {id} v2").as_str()),
            "the writer served /items/{id} from the cache while its invalidation was queued"
        );
    }
    relays[cut].heal();
    for id in &ids {
        let want = format!("item {id} v2");
        never_stale_until_cached_at(&a, &format!("/items/{id}"), &want, "the writer").await;
    }
    assert!(
        a.handle.drain(Duration::from_secs(10)).await,
        "{:?}",
        a.handle.stats()
    );
    let stats = a.handle.stats();
    assert_eq!(
        stats.invalidations_replayed, stats.invalidations_queued,
        "{stats:?}"
    );
    for id in &ids {
        let want = format!("item {id} v2");
        never_stale_until_cached_at(&b, &format!("/items/{id}"), &want, "the other instance").await;
    }
    assert_eq!(outcome(&b, "/lists/a").await, "MISS");
}
