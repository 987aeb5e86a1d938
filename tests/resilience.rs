//! Stampedes, stale serving and store failures, against real redis-server
//! processes.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::{req_get, send, Origin, RedisServer};
use tower::{service_fn, Layer, ServiceExt};
use tower_redis_cache::{
    fred::prelude::{Expiration, KeysInterface, SetOptions},
    store::{BoxFuture, PathPrefix, RedisStore, RedisStoreBuilder, Store, Write},
    CachePolicy, RedisCacheLayer, RedisCacheLayerBuilder, StoreError,
};

async fn layer(
    redis: &RedisServer,
    configure: impl FnOnce(RedisCacheLayerBuilder) -> RedisCacheLayerBuilder,
) -> RedisCacheLayer {
    layer_on(redis.store().await, configure)
}

fn layer_on(
    store: RedisStore,
    configure: impl FnOnce(RedisCacheLayerBuilder) -> RedisCacheLayerBuilder,
) -> RedisCacheLayer {
    configure(RedisCacheLayer::builder().prefix("t").store(store))
        .build()
        .unwrap()
}

async fn a_thousand_concurrent_misses_through_four_instances_reach_the_origin_once(
    redis: RedisServer,
) {
    let origin = Origin::items().delay(Duration::from_millis(200));
    let mut apps = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..4 {
        // Each instance has its own Redis client (pool), all share one Redis.
        // The budget is generous: this test is about coalescing, and a lookup
        // that runs out of budget (1000 requests at once on a debug build)
        // rightly goes to the origin without waiting for any lock.
        let cache = layer(&redis, |b| b.store_timeout(Duration::from_secs(2))).await;
        handles.push(cache.handle());
        apps.push(origin.router().layer(cache));
    }
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let app = apps[i % 4].clone();
            tokio::spawn(async move { send(&app, req_get("/items/cold")).await })
        })
        .collect();
    let mut outcomes = std::collections::BTreeMap::new();
    for task in tasks {
        let (status, x, body) = task.await.unwrap();
        *outcomes.entry((status, x, body)).or_insert(0) += 1;
    }
    let outcomes: std::collections::BTreeMap<_, _> = outcomes
        .into_iter()
        .map(|((status, x, body), n)| (format!("{status} {x} {body}"), n))
        .collect();
    assert!(
        outcomes
            .keys()
            .all(|k| k.starts_with("200 ") && k.ends_with("item cold v1")),
        "{outcomes:?}"
    );
    assert_eq!(origin.calls(), 1, "outcomes: {outcomes:?}");
    assert!(
        !outcomes.keys().any(|k| k.contains("BYPASS")),
        "{outcomes:?}"
    );
    // Every request but the one that reached the origin was given its
    // response: by waiting for it (coalesced), or, when the machine ran it
    // late, by finding it stored (a hit).
    let coalesced: u64 = handles.iter().map(|h| h.stats().coalesced).sum();
    let hits: u64 = handles.iter().map(|h| h.stats().hits).sum();
    assert_eq!(coalesced + hits, 999, "{outcomes:?}");
    assert!(coalesced >= 1, "{outcomes:?}");
    assert!(handles.iter().map(|h| h.stats().lock_waits).sum::<u64>() >= 1);
}

/// Waits (up to 2 s) for `lock_key` to be released; fails the test if it
/// is not.
async fn released_soon(client: &tower_redis_cache::fred::prelude::Client, lock_key: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let held: u64 = client.exists(lock_key).await.unwrap();
        if held == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the lock was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes the lock of `/items/1` as another instance would; whether it was
/// free.
async fn take_lock(
    client: &tower_redis_cache::fred::prelude::Client,
    holder: &str,
    expiry: Expiration,
) -> bool {
    let taken: Option<String> = client
        .set(
            "t:v1:default:LOCK:/items/1",
            holder,
            Some(expiry),
            Some(SetOptions::NX),
            false,
        )
        .await
        .unwrap();
    taken.is_some()
}

async fn a_crashed_leader_costs_at_most_its_lock_ttl(redis: RedisServer) {
    let origin = Origin::items();
    let cache = layer(&redis, |b| b.coalesce_timeout(Duration::from_secs(5))).await;
    let handle = cache.handle();
    let app = origin.router().layer(cache);
    // Another instance took the lock and died: the lock expires in 300 ms.
    let client = redis.client().await;
    assert!(take_lock(&client, "dead-instance", Expiration::PX(300)).await);
    let started = Instant::now();
    let (status, x, _) = send(&app, req_get("/items/1")).await;
    let waited = started.elapsed();
    assert_eq!((status, x.as_str()), (200, "MISS"));
    assert!(
        waited >= Duration::from_millis(250),
        "went ahead while locked: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "waited past the lock's TTL: {waited:?}"
    );
    assert_eq!(origin.calls(), 1);
    assert_eq!(handle.stats().lock_waits, 1);
    // Its own lock is released after the write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let exists: u64 = client.exists("t:v1:default:LOCK:/items/1").await.unwrap();
    assert_eq!(exists, 0);
}

async fn a_first_hit_in_another_instance_leaves_no_lock_behind(redis: RedisServer) {
    let origin = Origin::items();
    let first = origin.router().layer(layer(&redis, |b| b).await);
    let second = origin.router().layer(layer(&redis, |b| b).await);
    assert_eq!(send(&first, req_get("/items/1")).await.1, "MISS");
    // New to the second instance: its lookup may take the lock, and must
    // give it back when the entry is there.
    assert_eq!(send(&second, req_get("/items/1")).await.1, "HIT");
    let client = redis.client().await;
    released_soon(&client, "t:v1:default:LOCK:/items/1").await;
    assert_eq!(origin.calls(), 1);
}

async fn a_lock_that_expired_and_was_taken_by_another_instance_is_left_alone(redis: RedisServer) {
    let origin = Origin::items().delay(Duration::from_millis(700));
    let cache = layer(&redis, |b| b.lock_ttl(Duration::from_millis(300))).await;
    let app = origin.router().layer(cache);
    let client = redis.client().await;
    let miss = tokio::spawn({
        let app = app.clone();
        async move { send(&app, req_get("/items/1")).await }
    });
    // The origin outlives the lock; another instance takes the key meanwhile.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        take_lock(&client, "other-instance", Expiration::EX(30)).await,
        "the lock did not expire"
    );
    let (status, x, _) = miss.await.unwrap();
    assert_eq!((status, x.as_str()), (200, "MISS"));
    // Our write did not release the other instance's lock.
    let holder: String = client.get("t:v1:default:LOCK:/items/1").await.unwrap();
    assert_eq!(holder, "other-instance");
}

async fn a_wait_that_runs_out_goes_to_the_origin(redis: RedisServer) {
    let origin = Origin::items();
    let cache = layer(&redis, |b| b.coalesce_timeout(Duration::from_millis(200))).await;
    let handle = cache.handle();
    let app = origin.router().layer(cache);
    let client = redis.client().await;
    let () = client
        .set(
            "t:v1:default:LOCK:/items/1",
            "slow-instance",
            Some(Expiration::EX(30)),
            None,
            false,
        )
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(send(&app, req_get("/items/1")).await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(origin.calls(), 1);
    let stats = handle.stats();
    assert_eq!((stats.lock_waits, stats.lock_timeouts), (1, 1));
    // Someone else's lock is not released by us.
    let holder: String = client.get("t:v1:default:LOCK:/items/1").await.unwrap();
    assert_eq!(holder, "slow-instance");
}

async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background(
    redis: RedisServer,
) {
    let origin = Origin::items().delay(Duration::from_millis(500));
    let cache = layer(&redis, |b| {
        b.route(
            "/items/{id}",
            CachePolicy::new()
                .ttl(Duration::from_millis(300))
                .jitter(0.0)
                .stale_while_revalidate(Duration::from_secs(30)),
        )
    })
    .await;
    let handle = cache.handle();
    let app = origin.router().layer(cache);
    assert_eq!(send(&app, req_get("/items/1")).await.2, "item 1 v1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Past the TTL: ten requests at once all get the stale entry at once.
    let started = Instant::now();
    let stale: Vec<_> =
        futures_util::future::join_all((0..10).map(|_| send(&app, req_get("/items/1")))).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "served without waiting for the origin"
    );
    for (status, x, body) in &stale {
        assert_eq!(
            (*status, x.as_str(), body.as_str()),
            (200, "STALE", "item 1 v1")
        );
    }
    // One background refresh replaced it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, x, body) = send(&app, req_get("/items/1")).await;
        if x == "HIT" {
            assert_eq!(body, "item 1 v2");
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.calls(), 2);
    let stats = handle.stats();
    assert_eq!(stats.background_refreshes, 1);
    assert!(stats.stale >= 10, "{stats:?}");
}

async fn a_failing_origin_is_covered_by_the_stale_entry(redis: RedisServer) {
    let origin = Origin::items();
    let cache = layer(&redis, |b| {
        b.default_policy(
            CachePolicy::new()
                .ttl(Duration::from_millis(200))
                .jitter(0.0)
                .stale_if_error(Duration::from_secs(30)),
        )
    })
    .await;
    let app = origin.router().layer(cache);
    assert_eq!(send(&app, req_get("/items/1")).await.2, "item 1 v1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    origin.fail(true);
    for _ in 0..3 {
        let (status, x, body) = send(&app, req_get("/items/1")).await;
        assert_eq!(
            (status, x.as_str(), body.as_str()),
            (200, "STALE", "item 1 v1")
        );
    }
    // Without a stale entry the failure goes through as it is.
    let (status, _, _) = send(&app, req_get("/items/2")).await;
    assert_eq!(status, 503);
    // Back up: a fresh answer replaces the stale one.
    origin.fail(false);
    let (status, x, _) = send(&app, req_get("/items/1")).await;
    assert_eq!((status, x.as_str()), (200, "MISS"));
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
}

async fn a_service_error_is_covered_by_the_stale_entry(redis: RedisServer) {
    // The origin behind a connection that can be made to fail.
    let (origin, fail) = (Origin::items(), Arc::new(AtomicBool::new(false)));
    let f = fail.clone();
    let service = service_fn(move |req: Request<Full<Bytes>>| {
        let failing = f.load(SeqCst);
        let answer = origin.clone().oneshot(req);
        async move {
            if failing {
                Err(std::io::Error::other("upstream connection reset"))
            } else {
                Ok(answer.await.unwrap())
            }
        }
    });
    let cache = layer(&redis, |b| {
        b.default_policy(
            CachePolicy::new()
                .ttl(Duration::from_millis(100))
                .jitter(0.0)
                .stale_if_error(Duration::from_secs(30)),
        )
    })
    .await;
    let svc = cache.layer(service);
    let get = |uri| Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    svc.clone().oneshot(get("/items/1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    fail.store(true, SeqCst);
    let res = svc
        .clone()
        .oneshot(get("/items/1"))
        .await
        .expect("the stale entry, not the error");
    assert_eq!(res.headers()["x-cache"], "STALE");
    assert!(
        svc.oneshot(get("/items/2")).await.is_err(),
        "no stale entry: the error passes"
    );
}

async fn early_refresh_renews_hot_entries_before_they_expire(redis: RedisServer) {
    let origin = Origin::items().delay(Duration::from_millis(30));
    let cache = layer(&redis, |b| {
        b.default_policy(
            CachePolicy::new()
                .ttl(Duration::from_millis(400))
                .jitter(0.0)
                .early_refresh(100.0),
        )
    })
    .await;
    let handle = cache.handle();
    let app = origin.router().layer(cache);
    send(&app, req_get("/items/1")).await;
    for _ in 0..10 {
        let (_, x, _) = send(&app, req_get("/items/1")).await;
        assert_eq!(x, "HIT");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = handle.stats();
    assert!(stats.early_refreshes >= 1, "{stats:?}");
    assert!(origin.calls() >= 2, "the refresh reached the origin");

    // Off by default.
    let origin = Origin::items().delay(Duration::from_millis(30));
    let cache = layer(&redis, |b| {
        b.version("v2")
            .default_policy(CachePolicy::new().ttl(Duration::from_millis(400)))
    })
    .await;
    let handle = cache.handle();
    let app = origin.router().layer(cache);
    for _ in 0..11 {
        send(&app, req_get("/items/1")).await;
    }
    assert_eq!((handle.stats().early_refreshes, origin.calls()), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_no_request_fails_and_hits_return_soon_after() {
    let mut redis = RedisServer::start();
    let origin = Origin::items().delay(Duration::from_millis(2));
    let cache = layer(&redis, |b| b).await;
    let app = origin.router().layer(cache);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (app, stop, log) = (app.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(SeqCst) {
                    let (status, x, _) =
                        send(&app, req_get(&format!("/items/{}", (w + i) % 5))).await;
                    log.lock().unwrap().push((Instant::now(), status, x));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop(); // SIGKILL
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let log = log.lock().unwrap();
    assert!(log.len() > 200, "load too light: {}", log.len());
    assert!(
        log.iter().all(|(_, status, _)| *status == 200),
        "a request failed"
    );
    assert!(
        log.iter().any(|(_, _, x)| x == "BYPASS"),
        "Redis was never seen down"
    );
    let first_hit = log
        .iter()
        .filter(|(t, _, x)| *t > back && x == "HIT")
        .map(|(t, _, _)| *t - back)
        .min()
        .expect("no hit after Redis came back");
    assert!(
        first_hit < Duration::from_secs(2),
        "first hit {first_hit:?} after Redis came back"
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_adds_at_most_the_budget_to_any_request() {
    use tower_redis_cache::fred::{prelude::ClientLike, types::CustomCommand};
    let redis = RedisServer::start();
    let origin = Origin::items().delay(Duration::from_millis(20));
    let budget = Duration::from_millis(50);
    let cache = layer(&redis, |b| b.store_timeout(budget)).await;
    let handle = cache.handle();
    let app = origin.router().layer(cache);
    send(&app, req_get("/items/0")).await;
    let admin = redis.client().await;
    let () = admin
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["PAUSE", "3000", "ALL"],
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, x, _) = send(&app, req_get(&format!("/items/{}", i % 5))).await;
                (status, x, started.elapsed())
            })
        })
        .collect();
    for t in tasks {
        let (status, x, took) = t.await.unwrap();
        assert_eq!((status, x.as_str()), (200, "BYPASS"));
        // Budget + origin time, with room for scheduling on a busy machine.
        assert!(
            took < budget + Duration::from_millis(20) + Duration::from_millis(400),
            "{took:?}"
        );
    }
    let stats = handle.stats();
    assert!(stats.breaker_trips >= 1, "{stats:?}");
    assert!(
        origin.calls() <= 6,
        "single-flight holds while the store is down: {}",
        origin.calls()
    );
}

async fn the_redis_lock_works_without_single_flight(redis: RedisServer) {
    let origin = Origin::items().delay(Duration::from_millis(100));
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(
            origin
                .router()
                .layer(layer(&redis, |b| b.single_flight(false)).await),
        );
    }
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let app = apps[i % 2].clone();
            tokio::spawn(async move { send(&app, req_get("/items/cold")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().2, "item cold v1");
    }
    assert_eq!(origin.calls(), 1);
}

async fn waiters_released_by_an_unshareable_response_call_the_service_themselves(
    redis: RedisServer,
) {
    let origin = Origin::items().delay(Duration::from_millis(100));
    origin.fail(true); // 503: not stored, not shared
    let app = origin.router().layer(layer(&redis, |b| b).await);
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, req_get("/items/1")).await })
        })
        .collect();
    for t in tasks {
        let (status, x, _) = t.await.unwrap();
        assert_eq!((status, x.as_str()), (503, "MISS"));
    }
    assert_eq!(origin.calls(), 5);
}

/// Sends `GET /items/1` through `svc`; the status and the body.
async fn get_body<S>(svc: S) -> (u16, String)
where
    S: tower::Service<
        Request<Full<Bytes>>,
        Response = Response<tower_redis_cache::CacheBody<axum::body::Body>>,
    >,
    S::Error: std::fmt::Debug,
{
    let req = Request::get("/items/1").body(Full::default()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn a_stalled_leader_holds_its_waiters_only_until_the_coalesce_timeout(redis: RedisServer) {
    // The first request's origin call hangs until it is released; later
    // calls answer after 100 ms.
    let origin = Origin::items().delay(Duration::from_millis(100));
    let mut stall = origin.hold_next();
    let cache = layer(&redis, |b| b.coalesce_timeout(Duration::from_millis(300))).await;
    let svc = cache.layer(origin.clone());
    let stalled = tokio::spawn(get_body(svc.clone()));
    // The first request leads and its origin call hangs.
    stall.entered().await;
    let waiters: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get_body(svc.clone())))
        .collect();
    for waiter in waiters {
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiter still waits on the stalled leader")
            .unwrap();
        assert_eq!(
            got,
            (200, "item 1 v2".to_owned()),
            "the new leader's response"
        );
    }
    assert_eq!(
        origin.calls(),
        2,
        "the stalled call and one new leader, not one call per waiter"
    );
    // The stalled request still answers its own client when it ends.
    stall.release();
    assert_eq!(stalled.await.unwrap(), (200, "item 1 v1".to_owned()));
}

async fn a_slow_origin_past_origin_timeout_is_covered_by_the_stale_entry_and_still_refreshes(
    redis: RedisServer,
) {
    let origin = Origin::items().delay(Duration::from_millis(600));
    let cache = layer(&redis, |b| {
        b.default_policy(
            CachePolicy::new()
                .ttl(Duration::from_millis(300))
                .jitter(0.0)
                .stale_if_error(Duration::from_secs(30)),
        )
        .origin_timeout(Duration::from_millis(100))
    })
    .await;
    let app = origin.router().layer(cache);
    assert_eq!(send(&app, req_get("/items/1")).await.2, "item 1 v1");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let started = Instant::now();
    let (status, x, body) = send(&app, req_get("/items/1")).await;
    assert_eq!(
        (status, x.as_str(), body.as_str()),
        (200, "STALE", "item 1 v1")
    );
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    // The slow answer lands in the cache when it comes.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, x, body) = send(&app, req_get("/items/1")).await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "item 1 v2"));
}

on_both_topologies!(
    a_thousand_concurrent_misses_through_four_instances_reach_the_origin_once,
    a_crashed_leader_costs_at_most_its_lock_ttl,
    a_lock_that_expired_and_was_taken_by_another_instance_is_left_alone,
    a_first_hit_in_another_instance_leaves_no_lock_behind,
    a_wait_that_runs_out_goes_to_the_origin,
    stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background,
    a_failing_origin_is_covered_by_the_stale_entry,
    a_service_error_is_covered_by_the_stale_entry,
    early_refresh_renews_hot_entries_before_they_expire,
    the_redis_lock_works_without_single_flight,
    waiters_released_by_an_unshareable_response_call_the_service_themselves,
    a_slow_origin_past_origin_timeout_is_covered_by_the_stale_entry_and_still_refreshes,
    a_stalled_leader_holds_its_waiters_only_until_the_coalesce_timeout,
);

/// A store whose Redis never answers: nothing listens on its port.
fn dead_store() -> RedisStore {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    RedisStore::builder(format!("redis://127.0.0.1:{port}"))
        .build()
        .unwrap()
}

#[tokio::test]
async fn with_redis_down_concurrent_misses_still_share_one_origin_call() {
    let origin = Origin::items().delay(Duration::from_millis(300));
    let cache = RedisCacheLayer::builder()
        .prefix("t")
        .store(dead_store())
        .build()
        .unwrap();
    let app = origin.router().layer(cache);
    let results =
        futures_util::future::join_all((0..20).map(|_| send(&app, req_get("/items/1")))).await;
    for (status, _, body) in &results {
        assert_eq!((*status, body.as_str()), (200, "item 1 v1"));
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn with_redis_down_a_response_nobody_waits_for_streams_through_unbuffered() {
    let cache = RedisCacheLayer::builder()
        .prefix("t")
        .store(dead_store())
        .build()
        .unwrap();
    let (open, gate) = tokio::sync::oneshot::channel::<()>();
    let gate = std::sync::Mutex::new(Some(gate));
    let inner = Origin::new(move |_, _| {
        let gate = gate.lock().unwrap().take().unwrap();
        Response::new(axum::body::Body::new(support::gated_body(gate)))
    });
    let svc = cache.layer(inner);
    let req = Request::get("/items/1")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), svc.oneshot(req))
        .await
        .expect("headers arrive before the body ends")
        .unwrap();
    assert_eq!(res.headers()["x-cache"], "BYPASS");
    support::assert_streams(res.into_body(), open).await;
}

/// The commands a test's Redis receives, in the order it runs them, read
/// from `redis-cli MONITOR`.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    fn start(redis: &RedisServer) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-cli (it comes with redis-server) is needed to watch commands");
        let stdout = child.stdout.take().expect("a piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let monitor = Self { child, lines };
        // MONITOR answers OK once it is watching.
        monitor.until(|line| line == "OK");
        monitor
    }

    /// The lines up to and including the first that `done` accepts.
    fn until(&self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("MONITOR showed no such command; it showed {seen:#?}"));
            let last = done(&line);
            seen.push(line);
            if last {
                return seen;
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client address MONITOR shows for a command line
/// (`1700000000.000000 [0 127.0.0.1:50000] "GET" "k"`).
fn connection(line: &str) -> &str {
    line.split(['[', ']']).nth(1).unwrap_or("")
}

#[tokio::test]
async fn the_lookup_of_a_new_key_sets_the_lock_before_it_reads_the_entry() {
    // Reads first would let a holder's write and unlock land between the
    // read and the lock: the read misses the entry, the lock is free again,
    // and the entry is computed twice. The stampede test meets that race
    // only now and then; the order of the commands shows it every time.
    let redis = RedisServer::start();
    let monitor = Monitor::start(&redis);
    let origin = Origin::items();
    let app = origin.router().layer(layer(&redis, |b| b).await);
    let outcome = send(&app, req_get("/items/1")).await.1;
    let lines = monitor.until(|line| line.contains(r#""MGET" "t:v1:default:GET:/items/1""#));
    let read = lines.last().unwrap();
    let lock = lines
        .iter()
        .find(|line| line.contains(r#""SET" "t:v1:default:LOCK:/items/1""#))
        .unwrap_or_else(|| panic!("the entry was read before its lock was taken: {lines:#?}"));
    assert!(lock.contains(r#""NX""#), "{lock}");
    assert_eq!(
        connection(lock),
        connection(read),
        "the lock and the read went out apart"
    );
    assert_eq!(outcome, "MISS");
    // And the miss then stored the entry, and only then released the lock.
    let rest = monitor.until(|line| line.contains(r#""DEL" "t:v1:default:LOCK:/items/1""#));
    assert!(
        rest.iter()
            .any(|line| line.contains(r#""SET" "t:v1:default:GET:/items/1""#)),
        "{rest:#?}"
    );
    assert_eq!(origin.calls(), 1);
}

/// The Redis commands one hit on `uri` sends, as MONITOR shows them
/// (a command of the test's own marks their end).
async fn hit_commands(
    app: &axum::Router,
    uri: &str,
    client: &tower_redis_cache::fred::prelude::Client,
    monitor: &Monitor,
) -> Vec<String> {
    assert_eq!(send(app, req_get(uri)).await.1, "HIT");
    let _: Option<String> = client.get("end-of-hit").await.unwrap();
    let mut lines = monitor.until(|line| line.contains(r#""end-of-hit""#));
    lines.pop();
    lines
}

/// The arguments of a MONITOR line.
fn args(line: &str) -> Vec<&str> {
    line.split('"').skip(1).step_by(2).collect()
}

/// Sends hits on `uri` until one is a lone `GET` of `key`: the store has
/// read the namespace generation on its tracking connection and keeps it.
/// Before that, every hit reads the entry and the generation in one `MGET`.
async fn until_the_generation_is_tracked(
    app: &axum::Router,
    uri: &str,
    key: &str,
    client: &tower_redis_cache::fred::prelude::Client,
    monitor: &Monitor,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = hit_commands(app, uri, client, monitor).await;
        if lines.len() == 1 && args(&lines[0]) == ["GET", key] {
            return;
        }
        for line in &lines {
            let args = args(line);
            let first_reads = (args.len() == 3 && args[..2] == ["MGET", key])
                || (args.len() == 2 && args[0] == "GET" && args[1].ends_with(":generation"));
            assert!(first_reads, "{lines:#?}");
        }
        assert!(
            Instant::now() < deadline,
            "the generation was never tracked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `app` behind `cache` on the test Redis, with `/items/1` stored once (its
/// lock released): later requests for it are hits.
async fn with_items_1_stored(
    redis: &RedisServer,
    cache: RedisCacheLayer,
) -> (
    axum::Router,
    Origin,
    tower_redis_cache::fred::prelude::Client,
) {
    let origin = Origin::items();
    let app = origin.router().layer(cache);
    assert_eq!(send(&app, req_get("/items/1")).await.1, "MISS");
    let client = redis.client().await;
    released_soon(&client, "t:v1:default:LOCK:/items/1").await;
    (app, origin, client)
}

#[tokio::test]
async fn a_hit_is_one_get_of_its_entry_once_the_generation_is_tracked() {
    // One round trip per hit, and one command: the namespace generation is
    // kept in process and Redis pushes its changes.
    let redis = RedisServer::start();
    let (app, origin, client) = with_items_1_stored(&redis, layer(&redis, |b| b).await).await;
    let monitor = Monitor::start(&redis);
    let key = "t:v1:default:GET:/items/1";
    until_the_generation_is_tracked(&app, "/items/1", key, &client, &monitor).await;
    for _ in 0..3 {
        let lines = hit_commands(&app, "/items/1", &client, &monitor).await;
        assert_eq!(lines.len(), 1, "one hit, one command: {lines:#?}");
        assert_eq!(args(&lines[0]), ["GET", key], "{lines:#?}");
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn without_tracking_a_hit_is_one_mget_that_also_reads_the_generation() {
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .track_generations(false)
        .connect()
        .await
        .unwrap();
    assert!(!store.tracks_generations());
    let cache = RedisCacheLayer::builder()
        .prefix("t")
        .store(store)
        .build()
        .unwrap();
    let (app, origin, client) = with_items_1_stored(&redis, cache).await;
    let monitor = Monitor::start(&redis);
    for _ in 0..3 {
        let lines = hit_commands(&app, "/items/1", &client, &monitor).await;
        assert_eq!(lines.len(), 1, "one hit, one command: {lines:#?}");
        assert_eq!(
            args(&lines[0]),
            [
                "MGET",
                "t:v1:default:GET:/items/1",
                "t:v1:default:generation"
            ],
            "{lines:#?}"
        );
    }
    assert_eq!(origin.calls(), 1);
}

/// Sends requests on `uri` until one is a `MISS`; fails the test if none is
/// within half a second (a push's delay, well below the second after which
/// an instance reads the generation again without one).
async fn misses_soon(app: &axum::Router, uri: &str) {
    let deadline = Instant::now() + Duration::from_millis(500);
    while send(app, req_get(uri)).await.1 != "MISS" {
        assert!(
            Instant::now() < deadline,
            "still served from before the namespace bump after 500 ms"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_bump_from_any_client_of_redis_reaches_a_tracking_instance_by_push() {
    let redis = RedisServer::start();
    let (app, origin, client) = with_items_1_stored(&redis, layer(&redis, |b| b).await).await;
    let key = "t:v1:default:GET:/items/1";
    {
        let monitor = Monitor::start(&redis);
        until_the_generation_is_tracked(&app, "/items/1", key, &client, &monitor).await;
    }
    // A bump by another program: only Redis's push can tell the instance.
    // Without it, the instance would learn of the bump when its copy of the
    // generation ages out (a second), which the bound here excludes.
    let _: u64 = client.incr("t:v1:default:generation").await.unwrap();
    misses_soon(&app, "/items/1").await;
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn the_tracking_connection_comes_back_after_it_is_killed_and_pushes_again() {
    use tower_redis_cache::fred::{prelude::ClientLike, types::CustomCommand};
    let redis = RedisServer::start();
    let store = redis.store().await;
    let probe = store.clone();
    let (app, origin, client) = with_items_1_stored(&redis, layer_on(store, |b| b)).await;
    let key = "t:v1:default:GET:/items/1";
    let monitor = Monitor::start(&redis);
    until_the_generation_is_tracked(&app, "/items/1", key, &client, &monitor).await;
    drop(monitor);

    // Kill the connection that has tracking on.
    let before = support::tracking_clients(&client).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let killed: u64 = client
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["KILL", "ID", before[0].as_str()],
        )
        .await
        .unwrap();
    assert_eq!(killed, 1);

    // Served from Redis all along, while tracking is switched on again on a
    // new connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
        let now = support::tracking_clients(&client).await;
        if probe.tracks_generations() && now.len() == 1 && now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tracking never came back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The generation is read again on the new connection; a bump then
    // reaches the instance by push, as before.
    let monitor = Monitor::start(&redis);
    until_the_generation_is_tracked(&app, "/items/1", key, &client, &monitor).await;
    drop(monitor);
    let _: u64 = client.incr("t:v1:default:generation").await.unwrap();
    misses_soon(&app, "/items/1").await;
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn a_burst_of_invalidations_larger_than_the_event_queue_leaves_tracking_working() {
    // fred queues 32 events per listener; its own listeners stop for good
    // when they fall further behind, and the store would then miss every
    // later push (and serve from before a bump until the one-second bound).
    const NAMESPACES: usize = 40;
    let redis = RedisServer::start();
    let cache = layer(&redis, |mut b| {
        for n in 0..NAMESPACES {
            b = b.route(
                format!("/items/{n}"),
                CachePolicy::new().namespace(format!("ns{n}")),
            );
        }
        b
    })
    .await;
    let origin = Origin::items();
    let app = origin.router().layer(cache);
    let client = redis.client().await;
    for n in 0..NAMESPACES {
        let uri = format!("/items/{n}");
        assert_eq!(send(&app, req_get(&uri)).await.1, "MISS");
        released_soon(&client, &format!("t:v1:ns{n}:LOCK:{uri}")).await;
    }
    let monitor = Monitor::start(&redis);
    for n in 0..NAMESPACES {
        let uri = format!("/items/{n}");
        let key = format!("t:v1:ns{n}:GET:{uri}");
        until_the_generation_is_tracked(&app, &uri, &key, &client, &monitor).await;
    }
    drop(monitor);
    // One command, forty pushes at once (the counters written with the
    // generation they already had: 0).
    let counters: Vec<(String, u64)> = (0..NAMESPACES)
        .map(|n| (format!("t:v1:ns{n}:generation"), 0))
        .collect();
    let () = client.mset(counters).await.unwrap();
    // Tracked again, then bumped: the push must still be heard.
    let monitor = Monitor::start(&redis);
    until_the_generation_is_tracked(&app, "/items/0", "t:v1:ns0:GET:/items/0", &client, &monitor)
        .await;
    drop(monitor);
    let _: u64 = client.incr("t:v1:ns0:generation").await.unwrap();
    misses_soon(&app, "/items/0").await;
}

/// Redis's count of read events (`total_reads_processed` in `INFO stats`).
async fn reads_processed(client: &tower_redis_cache::fred::prelude::Client) -> u64 {
    use tower_redis_cache::fred::prelude::ClientLike;
    let info: String = client
        .info(Some(tower_redis_cache::fred::types::InfoKind::Stats))
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats gives total_reads_processed")
}

/// A layer on a store of one connection (built by `configure`) in front of
/// the origin, with `/items/1` to `/items/{items}` stored and the namespace
/// generation tracked: later hits read their entry alone. Also a client and
/// a MONITOR of the test Redis.
async fn hits_on_one_connection(
    redis: &RedisServer,
    items: usize,
    configure: impl FnOnce(RedisStoreBuilder) -> RedisStoreBuilder,
) -> (
    axum::Router,
    Origin,
    tower_redis_cache::fred::prelude::Client,
    Monitor,
) {
    let store = configure(RedisStore::builder(redis.url()).pool_size(1))
        .connect()
        .await
        .unwrap();
    let (app, origin, client) = with_items_1_stored(redis, layer_on(store, |b| b)).await;
    for id in 2..=items {
        assert_eq!(send(&app, req_get(&format!("/items/{id}"))).await.1, "MISS");
        released_soon(&client, &format!("t:v1:default:LOCK:/items/{id}")).await;
    }
    let monitor = Monitor::start(redis);
    let key = "t:v1:default:GET:/items/1";
    until_the_generation_is_tracked(&app, "/items/1", key, &client, &monitor).await;
    (app, origin, client, monitor)
}

#[tokio::test]
async fn concurrent_hits_read_their_entries_in_one_mget_and_one_redis_read() {
    // Hits that arrive together share one command and one write: fred's
    // work per command and Redis's per command and per read are paid once
    // for the batch, not once per hit, and a key many of them want is asked
    // for once. Each hit still gets its own entry.
    const HITS: usize = 64;
    let redis = RedisServer::start();
    let (app, origin, client, monitor) = hits_on_one_connection(&redis, 4, |b| b).await;
    let key = |id: usize| format!("t:v1:default:GET:/items/{id}");
    let before = reads_processed(&client).await;
    let hits = futures_util::future::join_all(
        (0..HITS).map(|n| send(&app, req_get(&format!("/items/{}", n % 4 + 1)))),
    );
    for (n, (_, cache, body)) in hits.await.into_iter().enumerate() {
        let expected = format!("item {0} v{0}", n % 4 + 1);
        assert_eq!((cache.as_str(), body.as_str()), ("HIT", expected.as_str()));
    }
    // The first hit (nothing else under way, so sent at once), the batch of
    // the others, and this count's own `INFO`; room for one more piece.
    let reads = reads_processed(&client).await - before;
    assert!(
        reads <= 4,
        "{HITS} concurrent hits took Redis {reads} reads: their reads went out one by one"
    );
    let _: Option<String> = client.get("end-of-hits").await.unwrap();
    let mut lines = monitor.until(|line| line.contains(r#""end-of-hits""#));
    lines.pop();
    lines.retain(|line| !line.contains(r#""INFO""#));
    // Each command asks for each key once; every entry is read.
    let mut read = [false; 4];
    for line in &lines {
        let args = args(line);
        assert!(matches!(args[0], "GET" | "MGET"), "{line}");
        let mut asked = [false; 4];
        for k in &args[1..] {
            let id = (1..=4).find(|id| *k == key(*id)).expect("an entry key");
            assert!(
                !asked[id - 1],
                "a key asked for twice in one command: {line}"
            );
            asked[id - 1] = true;
            read[id - 1] = true;
        }
    }
    assert_eq!(read, [true; 4], "every entry read: {lines:#?}");
    assert!(
        lines.len() <= 3,
        "{HITS} hits, {} commands: {lines:#?}",
        lines.len()
    );
    assert_eq!(origin.calls(), 4);
}

#[test]
fn a_batch_whose_runtime_stops_before_it_is_sent_leaves_later_batches_working() {
    use std::{future::Future, task::Poll};
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();
    let app = main.block_on(async { hits_on_one_connection(&redis, 1, |b| b).await.0 });
    // Hits polled once on a runtime that then stops: the first is sent at
    // once, a later one waits for a batch whose task never runs. A hit may
    // complete on its first poll on a busy machine, so hits are started
    // until one is left waiting.
    let stopped = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut waiting = Vec::new();
    stopped.block_on(async {
        for _ in 0..8 {
            let mut hit = Box::pin(send(&app, req_get("/items/1")));
            let polled = std::future::poll_fn(|cx| Poll::Ready(hit.as_mut().poll(cx))).await;
            if polled.is_pending() {
                waiting.push(hit);
                if waiting.len() == 2 {
                    break;
                }
            }
        }
    });
    assert!(
        !waiting.is_empty(),
        "no hit was left waiting on the stopped runtime"
    );
    drop(waiting);
    drop(stopped);
    main.block_on(async {
        let hits = futures_util::future::join_all((0..16).map(|_| send(&app, req_get("/items/1"))));
        let answered = tokio::time::timeout(Duration::from_secs(5), hits)
            .await
            .expect("later concurrent hits are answered");
        for (_, cache, _) in answered {
            assert_eq!(cache, "HIT");
        }
    });
}

#[tokio::test]
async fn with_batch_reads_off_concurrent_hits_each_send_their_own_get() {
    const HITS: usize = 16;
    let redis = RedisServer::start();
    let (app, _origin, client, monitor) =
        hits_on_one_connection(&redis, 1, |b| b.batch_reads(false)).await;
    let key = "t:v1:default:GET:/items/1";
    let hits = futures_util::future::join_all((0..HITS).map(|_| send(&app, req_get("/items/1"))));
    for (_, cache, _) in hits.await {
        assert_eq!(cache, "HIT");
    }
    let _: Option<String> = client.get("end-of-hits").await.unwrap();
    let mut lines = monitor.until(|line| line.contains(r#""end-of-hits""#));
    lines.pop();
    assert_eq!(lines.len(), HITS, "{lines:#?}");
    for line in &lines {
        assert_eq!(args(line), ["GET", key], "{line}");
    }
}

#[tokio::test]
async fn with_the_breaker_open_an_invalidation_is_queued_without_touching_the_store() {
    use http::{Method, Uri};
    let origin = Origin::items();
    let cache = RedisCacheLayer::builder()
        .prefix("t")
        .store(dead_store())
        .circuit_breaker(2, Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = cache.handle();
    let app = origin.router().layer(cache);
    for i in 0..3 {
        send(&app, req_get(&format!("/items/{i}"))).await;
    }
    let before = handle.stats();
    assert_eq!(
        before.breaker,
        tower_redis_cache::BreakerState::Open,
        "{before:?}"
    );
    let started = Instant::now();
    let done = handle
        .invalidate(&Method::GET, &Uri::from_static("/items/1"))
        .await
        .unwrap();
    assert!(done.queued, "{done:?}");
    assert!(started.elapsed() < Duration::from_millis(50));
    let stored = handle
        .put(
            &Uri::from_static("/items/2"),
            Response::new(Bytes::from_static(b"x")),
        )
        .await
        .unwrap();
    assert!(!stored);
    // Neither the call nor its replay reached the store: the breaker stays
    // open for its whole cool-down.
    assert!(!handle.drain(Duration::from_millis(200)).await);
    let after = handle.stats();
    assert_eq!(after.store_errors, before.store_errors, "{after:?}");
    assert_eq!(after.invalidations_queued, 1);
    assert_eq!(after.invalidations_pending, 1);
}

/// The in-memory store, except that its first deletion panics (a bug in a
/// user's store, say).
#[derive(Debug, Default)]
struct PanicsOnce {
    inner: tower_redis_cache::store::MemoryStore,
    panicked: AtomicBool,
}

impl Store for PanicsOnce {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        self.inner.get(key)
    }

    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.put(writes)
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            if !self.panicked.swap(true, SeqCst) {
                panic!("a store bug");
            }
            self.inner.delete(keys).await
        })
    }

    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a PathPrefix,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.delete_prefix(prefix)
    }

    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.invalidate_tags(tag_keys)
    }

    fn counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.counter(key)
    }

    fn increment<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.increment(key)
    }
}

/// A store call that panics during an invalidation is a failed call: the
/// invalidation is queued and replayed, and hits come back once it is. (A
/// panic must not leave the queue waiting for ever on a call that will
/// never settle, with every request passing through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_whose_store_call_panics_is_replayed_and_hits_come_back() {
    let cache = RedisCacheLayer::builder()
        .store(PanicsOnce::default())
        .default_policy(CachePolicy::new().ttl(Duration::from_secs(60)))
        .build()
        .unwrap();
    let handle = cache.handle();
    let app = Origin::items().router().layer(cache);
    assert_eq!(send(&app, req_get("/items/1")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
    let done = handle
        .invalidate(&http::Method::GET, &http::Uri::from_static("/items/1"))
        .await
        .unwrap();
    assert!(
        done.queued,
        "a call that panicked is not confirmed: {done:?}"
    );
    assert!(
        handle.drain(Duration::from_secs(5)).await,
        "the panicked call is replayed"
    );
    let (_, x, body) = send(&app, req_get("/items/1")).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "item 1 v2"));
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
}
