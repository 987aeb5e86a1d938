//! The layer against a real Redis started for each test.

mod support;

use std::time::Duration;

use axum::{extract::Path, http::StatusCode, routing::get, Router};
use bytes::Bytes;
use http::{HeaderName, Method, Uri};
use support::{keys, read, req_get, request, send, Origin, RedisServer};
use tower::ServiceExt;
use tower_redis_cache::{
    fred::prelude::{Expiration, KeysInterface},
    CachePolicy, RedisCacheLayer, RedisCacheLayerBuilder,
};

async fn layer(
    redis: &RedisServer,
    b: impl FnOnce(RedisCacheLayerBuilder) -> RedisCacheLayerBuilder,
) -> RedisCacheLayer {
    b(RedisCacheLayer::builder()
        .prefix("test")
        .version("v1")
        .store(redis.store().await))
    .build()
    .unwrap()
}

async fn miss_then_hit_with_age_and_one_origin_call(redis: RedisServer) {
    let origin = Origin::items();
    let app = origin.router().layer(layer(&redis, |b| b).await);

    let (status, x, first) = send(&app, req_get("/items/1")).await;
    assert_eq!((status, x.as_str()), (200, "MISS"));
    let res = app.clone().oneshot(req_get("/items/1")).await.unwrap();
    assert_eq!(res.headers()["age"], "0");
    assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        res.headers()["content-length"],
        first.len().to_string().as_str()
    );
    let (status, x, second) = read(res).await;
    assert_eq!((status, x.as_str()), (200, "HIT"));
    assert_eq!(first, second);
    assert_eq!(origin.calls(), 1);

    let client = redis.client().await;
    assert_eq!(keys(&client).await, ["test:v1:default:GET:/items/1"]);
}

async fn age_grows_with_the_entry(redis: RedisServer) {
    let app = Origin::items().router().layer(layer(&redis, |b| b).await);
    app.clone().oneshot(req_get("/items/1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = app.oneshot(req_get("/items/1")).await.unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT");
    assert_eq!(res.headers()["age"], "1");
}

async fn query_order_is_normalized(redis: RedisServer) {
    let origin = Origin::items();
    let app = origin.router().layer(layer(&redis, |b| b).await);
    let (_, x, a) = send(&app, req_get("/items/1?page=2&category=tv")).await;
    assert_eq!(x, "MISS");
    let (_, x, b) = send(&app, req_get("/items/1?category=tv&page=2")).await;
    assert_eq!(x, "HIT");
    assert_eq!(a, b);
    let (_, x, _) = send(&app, req_get("/items/1?category=tv&page=3")).await;
    assert_eq!(x, "MISS");
    assert_eq!(origin.calls(), 2);
    assert_eq!(
        keys(&redis.client().await).await,
        [
            "test:v1:default:GET:/items/1?category=tv&page=2",
            "test:v1:default:GET:/items/1?category=tv&page=3"
        ]
    );
}

async fn ttl_jitter_stays_in_bounds_and_spreads_in_milliseconds(redis: RedisServer) {
    let app = Origin::items().router().layer(
        layer(&redis, |b| {
            b.default_policy(CachePolicy::new().ttl(Duration::from_secs(100)).jitter(0.1))
        })
        .await,
    );
    let started = std::time::Instant::now();
    for i in 0..200 {
        app.clone()
            .oneshot(req_get(&format!("/items/{i}")))
            .await
            .unwrap();
    }
    let client = redis.client().await;
    let mut pttls = Vec::new();
    for i in 0..200 {
        let pttl: i64 = client
            .pttl(format!("test:v1:default:GET:/items/{i}"))
            .await
            .unwrap();
        pttls.push(pttl);
    }
    // Entries written first have aged by the time the last PTTL is read.
    let aged = started.elapsed().as_millis() as i64;
    let (min, max) = (*pttls.iter().min().unwrap(), *pttls.iter().max().unwrap());
    assert!(
        min >= 90_000 - aged && max <= 110_000,
        "PTTLs {min}..{max} outside 100 s ±10% (written over {aged} ms)"
    );
    assert!(max - min > 10_000, "PTTLs {min}..{max} barely spread");
    let distinct: std::collections::HashSet<_> = pttls.iter().map(|p| p / 100).collect();
    assert!(
        distinct.len() > 50,
        "jitter should spread keys, got {} buckets",
        distinct.len()
    );

    // Jitter 0: every TTL is the configured one.
    let exact = Origin::items().router().layer(
        layer(&redis, |b| {
            b.version("exact")
                .default_policy(CachePolicy::new().ttl(Duration::from_secs(100)).jitter(0.0))
        })
        .await,
    );
    exact.oneshot(req_get("/items/x")).await.unwrap();
    let pttl: i64 = client
        .pttl("test:exact:default:GET:/items/x")
        .await
        .unwrap();
    assert!((99_000..=100_000).contains(&pttl), "{pttl}");
}

async fn a_v2_layer_never_reads_v1_entries_nor_another_prefix(redis: RedisServer) {
    let origin = Origin::items();
    let v1 = origin.router().layer(layer(&redis, |b| b).await);
    let v2 = origin
        .router()
        .layer(layer(&redis, |b| b.version("v2")).await);
    let other = origin
        .router()
        .layer(layer(&redis, |b| b.prefix("other")).await);
    assert_eq!(send(&v1, req_get("/items/1")).await.1, "MISS");
    assert_eq!(send(&v1, req_get("/items/1")).await.1, "HIT");
    assert_eq!(send(&v2, req_get("/items/1")).await.1, "MISS");
    assert_eq!(send(&other, req_get("/items/1")).await.1, "MISS");
    assert_eq!(origin.calls(), 3);
    // Invalidating through v2 leaves v1 alone.
    let h2 = layer(&redis, |b| b.version("v2")).await.handle();
    assert_eq!(h2.invalidate_prefix("/").await.unwrap().removed, 1);
    assert_eq!(send(&v1, req_get("/items/1")).await.1, "HIT");
}

async fn invalidate_one_entry(redis: RedisServer) {
    let cache = layer(&redis, |b| b).await;
    let handle = cache.handle();
    let origin = Origin::items();
    let app = origin.router().layer(cache);
    app.clone()
        .oneshot(req_get("/items/1?b=2&a=1"))
        .await
        .unwrap();
    app.clone().oneshot(req_get("/items/2")).await.unwrap();
    let uri = Uri::from_static("/items/1?a=1&b=2");
    assert_eq!(
        handle.invalidate(&Method::GET, &uri).await.unwrap().removed,
        1
    );
    assert_eq!(
        handle.invalidate(&Method::GET, &uri).await.unwrap().removed,
        0
    );
    assert_eq!(send(&app, req_get("/items/1?b=2&a=1")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/items/2")).await.1, "HIT");
    assert_eq!(origin.calls(), 3);
}

async fn invalidate_prefix_removes_exactly_the_paths_under_it(redis: RedisServer) {
    let cache = layer(&redis, |b| {
        b.route("/items/{id}", CachePolicy::new().namespace("items"))
    })
    .await;
    let handle = cache.handle();
    let app = Origin::items().router().layer(cache);
    for uri in [
        "/items/1",
        "/items/1?page=2",
        "/items/22",
        "/status/200",
        "/items/*",
    ] {
        assert_eq!(send(&app, req_get(uri)).await.1, "MISS", "{uri}");
    }
    // A glob character in the prefix matches only itself.
    assert_eq!(
        handle.invalidate_prefix("/items/*").await.unwrap().removed,
        1
    );
    assert_eq!(
        handle.invalidate_prefix("/items/1").await.unwrap().removed,
        2
    );
    assert_eq!(send(&app, req_get("/items/22")).await.1, "HIT");
    assert_eq!(send(&app, req_get("/status/200")).await.1, "HIT");
    assert_eq!(handle.invalidate_prefix("/items").await.unwrap().removed, 1);
    assert_eq!(send(&app, req_get("/status/200")).await.1, "HIT");
    assert_eq!(send(&app, req_get("/items/22")).await.1, "MISS");
    assert!(handle.invalidate_prefix("items").await.is_err());
}

async fn invalidate_namespace_is_a_generation_bump_seen_by_every_instance(redis: RedisServer) {
    let configure = |b: RedisCacheLayerBuilder| {
        b.route("/items/{id}", CachePolicy::new().namespace("items"))
            .route("/status/{code}", CachePolicy::new().namespace("statuses"))
    };
    let a = layer(&redis, configure).await;
    let b = layer(&redis, configure).await; // a second instance: own client, same Redis
    let origin = Origin::items();
    let app_a = origin.router().layer(a.clone());
    let app_b = origin.router().layer(b);
    for uri in ["/items/1", "/items/2", "/status/200"] {
        app_a.clone().oneshot(req_get(uri)).await.unwrap();
    }
    // Hits a while, so that each instance keeps the generation in process
    // (a single Redis; on a Cluster hits always read it from Redis).
    for _ in 0..10 {
        assert_eq!(send(&app_a, req_get("/items/2")).await.1, "HIT");
        assert_eq!(send(&app_b, req_get("/items/1")).await.1, "HIT");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let bump = a.handle().invalidate_namespace("items").await.unwrap();
    assert_eq!(bump.generation, Some(1));
    // The instance that bumped sees it at once; another one as soon as
    // Redis's push reaches it.
    assert_eq!(send(&app_a, req_get("/items/2")).await.1, "MISS");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while send(&app_b, req_get("/items/1")).await.1 != "MISS" {
        assert!(std::time::Instant::now() < deadline, "b never saw the bump");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(send(&app_a, req_get("/items/1")).await.1, "HIT");
    assert_eq!(send(&app_b, req_get("/status/200")).await.1, "HIT");
    assert!(a.handle().invalidate_namespace("no spaces").await.is_err());
}

async fn a_corrupt_or_foreign_value_is_a_miss_and_is_replaced(redis: RedisServer) {
    let cache = layer(&redis, |b| b).await;
    let handle = cache.handle();
    let origin = Origin::items();
    let app = origin.router().layer(cache);
    let client = redis.client().await;
    let key = "test:v1:default:GET:/items/1";
    for junk in [
        &b"not an entry"[..],
        b"TRC\x01\xff\xff\xff\xff{",
        b"TRC\x09future",
        b"",
    ] {
        let () = client
            .set(
                key,
                Bytes::copy_from_slice(junk),
                Some(Expiration::EX(60)),
                None,
                false,
            )
            .await
            .unwrap();
        let (status, x, body) = send(&app, req_get("/items/1")).await;
        assert_eq!((status, x.as_str()), (200, "MISS"), "{junk:?}");
        assert!(body.starts_with("item 1 v"), "{body}");
        assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
    }
    assert_eq!(handle.stats().corrupt_entries, 4);

    // A key of another type is foreign too: a miss, and replaced.
    let () = client.del(key).await.unwrap();
    let hset = tower_redis_cache::fred::types::CustomCommand::new_static(
        "HSET",
        tower_redis_cache::fred::types::ClusterHash::FirstKey,
        false,
    );
    let _: u64 = tower_redis_cache::fred::prelude::ClientLike::custom(
        &client,
        hset,
        vec![key, "field", "value"],
    )
    .await
    .unwrap();
    let (status, x, body) = send(&app, req_get("/items/1")).await;
    assert_eq!(
        (status, x.as_str()),
        (200, "MISS"),
        "a hash at the entry key"
    );
    assert!(body.starts_with("item 1 v"), "{body}");
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");

    // Junk on a route whose response is not stored is deleted, not kept.
    let key = "test:v1:default:GET:/status/404";
    let () = client.set(key, "junk", None, None, false).await.unwrap();
    assert_eq!(send(&app, req_get("/status/404")).await.0, 404);
    let exists: u64 = client.exists(key).await.unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn redis_stopped_mid_test_means_200_bypass_then_caching_resumes() {
    let mut redis = RedisServer::start();
    let cache = layer(&redis, |b| b).await;
    let handle = cache.handle();
    let origin = Origin::items();
    let app = origin.router().layer(cache);
    assert_eq!(send(&app, req_get("/items/1")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");

    redis.stop();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let (status, x, body) = send(&app, req_get("/items/1")).await;
        assert_eq!((status, x.as_str()), (200, "BYPASS"));
        assert!(body.starts_with("item 1 v"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let stats = handle.stats();
    assert!(stats.store_errors >= 5, "{stats:?}");
    assert!(
        stats.breaker_trips >= 1,
        "the breaker opened after repeated failures"
    );
    assert!(stats.bypasses >= 20, "{stats:?}");
    // The breaker is open: the invalidation is queued for replay, not an
    // error the caller must handle.
    assert!(
        handle
            .invalidate(&Method::GET, &Uri::from_static("/items/1"))
            .await
            .unwrap()
            .queued
    );

    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let x = send(&app, req_get("/items/1")).await.1;
        if x == "HIT" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "caching did not resume after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = handle.stats();
    assert_eq!(stats.breaker, tower_redis_cache::BreakerState::Closed);
    assert!(
        stats.breaker_probes >= 1 && stats.breaker_recoveries >= 1,
        "{stats:?}"
    );
}

async fn post_and_other_methods_pass_through(redis: RedisServer) {
    let origin = Origin::items();
    let app = origin.router().layer(layer(&redis, |b| b).await);
    for n in 1..=3 {
        let (status, x, body) = send(&app, request("POST", "/items/1")).await;
        assert_eq!((status, x.as_str()), (200, "BYPASS"));
        assert_eq!(body, format!("item 1 v{n}"));
    }
    assert!(keys(&redis.client().await).await.is_empty());
}

async fn only_allowed_statuses_are_stored(redis: RedisServer) {
    let origin = Origin::items();
    let app = origin.router().layer(layer(&redis, |b| b).await);
    for _ in 0..2 {
        assert_eq!(send(&app, req_get("/status/404")).await.1, "MISS");
        assert_eq!(send(&app, req_get("/status/500")).await.1, "MISS");
    }
    assert_eq!(origin.calls(), 4);

    let origin = Origin::items();
    let listed = origin.router().layer(
        layer(&redis, |b| {
            b.version("v404").route(
                "/status/{code}",
                CachePolicy::new().statuses([StatusCode::OK, StatusCode::NOT_FOUND]),
            )
        })
        .await,
    );
    let (s1, x1, b1) = send(&listed, req_get("/status/404")).await;
    let (s2, x2, b2) = send(&listed, req_get("/status/404")).await;
    assert_eq!(
        (s1, x1.as_str(), s2, x2.as_str()),
        (404, "MISS", 404, "HIT")
    );
    assert_eq!(b1, b2);
    assert_eq!(send(&listed, req_get("/status/200")).await.1, "MISS");
}

async fn cookies_authorization_and_no_store_are_not_cached(redis: RedisServer) {
    let origin = Origin::items();
    let app = origin.router().layer(layer(&redis, |b| b).await);
    for _ in 0..2 {
        let res = app.clone().oneshot(req_get("/cookie")).await.unwrap();
        assert!(res.headers().contains_key("set-cookie"));
        assert_eq!(res.headers()["x-cache"], "MISS");
        let authorized = http::Request::get("/items/1")
            .header("authorization", "Bearer a")
            .body(axum::body::Body::empty())
            .unwrap();
        // Looked up (a response that allows it could be served), never
        // stored: the origin's response does not say `public`.
        assert_eq!(send(&app, authorized).await.1, "MISS");
        let no_store = http::Request::get("/items/2")
            .header("cache-control", "no-store")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(send(&app, no_store).await.1, "MISS");
    }
    assert!(keys(&redis.client().await).await.is_empty());
}

async fn a_body_over_the_limit_reaches_the_client_whole_and_is_not_stored(redis: RedisServer) {
    let origin = Origin::items();
    let app = origin
        .router()
        .layer(layer(&redis, |b| b.max_body_bytes(10_000)).await);
    for _ in 0..2 {
        let (status, x, body) = send(&app, req_get("/big")).await;
        assert_eq!((status, x.as_str(), body.len()), (200, "MISS", 100_000));
    }
    assert_eq!(origin.calls(), 2);
    assert!(keys(&redis.client().await).await.is_empty());
}

async fn per_route_policies_in_one_layer(redis: RedisServer) {
    let cache = layer(&redis, |b| {
        b.default_policy(CachePolicy::new().ttl(Duration::from_secs(60)))
            .route(
                "/items/{id}",
                CachePolicy::new()
                    .namespace("items")
                    .ttl(Duration::from_secs(900))
                    .jitter(0.0),
            )
            .route("/cookie", CachePolicy::bypass())
            .path_prefix(
                "/status/",
                CachePolicy::new()
                    .namespace("statuses")
                    .ttl(Duration::from_secs(5))
                    .jitter(0.0),
            )
    })
    .await;
    let app = Origin::items().router().layer(cache);
    app.clone().oneshot(req_get("/items/1")).await.unwrap();
    app.clone().oneshot(req_get("/status/200")).await.unwrap();
    assert_eq!(send(&app, req_get("/cookie")).await.1, "BYPASS");
    let client = redis.client().await;
    let item: i64 = client.pttl("test:v1:items:GET:/items/1").await.unwrap();
    let status: i64 = client
        .pttl("test:v1:statuses:GET:/status/200")
        .await
        .unwrap();
    assert!((899_000..=900_000).contains(&item), "{item}");
    assert!((4_000..=5_000).contains(&status), "{status}");
}

async fn bypass_unmatched_caches_only_listed_routes(redis: RedisServer) {
    let cache = layer(&redis, |b| {
        b.bypass_unmatched(true)
            .route("/items/{id}", CachePolicy::new())
    })
    .await;
    let app = Origin::items().router().layer(cache);
    app.clone().oneshot(req_get("/items/1")).await.unwrap();
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
    assert_eq!(send(&app, req_get("/status/200")).await.1, "BYPASS");
}

async fn one_layer_per_route_with_route_layer_shares_one_handle(redis: RedisServer) {
    let cache = layer(&redis, |b| {
        b.default_policy(CachePolicy::new().namespace("items"))
    })
    .await;
    let handle = cache.handle();
    let origin = Origin::items();
    let inner = origin.router();
    let app = Router::new()
        .route(
            "/cached/{id}",
            get(|Path(id): Path<String>| async move { format!("cached {id}") }),
        )
        .route_layer(cache.clone())
        .route("/plain", get(|| async { "plain" }))
        .merge(
            Router::new()
                .route("/other/{id}", get(|| async { "other" }))
                .layer(cache),
        )
        .fallback_service(inner);
    assert_eq!(send(&app, req_get("/cached/1")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/cached/1")).await.1, "HIT");
    assert_eq!(send(&app, req_get("/plain")).await.1, "");
    assert_eq!(send(&app, req_get("/other/1")).await.1, "MISS");
    let stats = handle.stats();
    assert_eq!((stats.hits, stats.misses), (1, 2));
}

async fn status_header_can_be_renamed_or_turned_off(redis: RedisServer) {
    let renamed = Origin::items().router().layer(
        layer(&redis, |b| {
            b.status_header(HeaderName::from_static("cache-status"))
        })
        .await,
    );
    let res = renamed.oneshot(req_get("/items/1")).await.unwrap();
    assert_eq!(res.headers()["cache-status"], "MISS");
    assert!(!res.headers().contains_key("x-cache"));
    let off = Origin::items()
        .router()
        .layer(layer(&redis, |b| b.without_status_header()).await);
    let res = off.clone().oneshot(req_get("/items/1")).await.unwrap();
    assert!(!res.headers().contains_key("x-cache"));
    let res = off.oneshot(req_get("/items/1")).await.unwrap();
    assert!(res.headers().contains_key("age"), "a hit still carries age");
}

async fn handle_put_many_writes_entries_the_layer_then_serves(redis: RedisServer) {
    let cache = layer(&redis, |b| {
        b.route("/items/{id}", CachePolicy::new().namespace("items"))
    })
    .await;
    let handle = cache.handle();
    let origin = Origin::items();
    let app = origin.router().layer(cache);
    let written = handle
        .put_many((1..=3).map(|i| {
            let res = http::Response::builder()
                .header("content-type", "application/json")
                .body(Bytes::from(format!(r#"{{"id":"{i}","from":"batch"}}"#)))
                .unwrap();
            (format!("/items/{i}").parse::<Uri>().unwrap(), res)
        }))
        .await
        .unwrap();
    assert_eq!(written, 3);
    for i in 1..=3 {
        let (status, x, body) = send(&app, req_get(&format!("/items/{i}"))).await;
        assert_eq!((status, x.as_str()), (200, "HIT"));
        assert_eq!(body, format!(r#"{{"id":"{i}","from":"batch"}}"#));
    }
    assert_eq!(origin.calls(), 0);
    let not_stored = http::Response::builder()
        .status(500)
        .body(Bytes::new())
        .unwrap();
    assert!(!handle
        .put(&Uri::from_static("/items/9"), not_stored)
        .await
        .unwrap());
}

async fn the_handle_is_a_request_extension_and_an_axum_extractor(redis: RedisServer) {
    let cache = layer(&redis, |b| b).await;
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route(
            "/purge",
            axum::routing::post(|handle: tower_redis_cache::CacheHandle| async move {
                handle
                    .invalidate_prefix("/items")
                    .await
                    .unwrap()
                    .removed
                    .to_string()
            }),
        )
        .layer(cache);
    app.clone().oneshot(req_get("/items/1")).await.unwrap();
    app.clone().oneshot(req_get("/items/2")).await.unwrap();
    let (status, _, body) = send(&app, request("POST", "/purge")).await;
    assert_eq!((status, body.as_str()), (200, "2"));
    assert_eq!(send(&app, req_get("/items/1")).await.1, "MISS");

    // Without the layer the extractor says what is missing.
    let bare = Router::new().route(
        "/purge",
        axum::routing::post(|_: tower_redis_cache::CacheHandle| async { "" }),
    );
    let (status, _, body) = send(&bare, request("POST", "/purge")).await;
    assert_eq!(status, 500);
    assert!(body.contains("add RedisCacheLayer"), "{body}");
}

#[tokio::test]
async fn the_in_memory_store_behaves_the_same() {
    let origin = Origin::items();
    let cache = RedisCacheLayer::builder().build().unwrap();
    let handle = cache.handle();
    let app = origin.router().layer(cache);
    assert_eq!(send(&app, req_get("/items/1?b=1&a=2")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/items/1?a=2&b=1")).await.1, "HIT");
    assert_eq!(handle.invalidate_prefix("/items").await.unwrap().removed, 1);
    assert_eq!(send(&app, req_get("/items/1?a=2&b=1")).await.1, "MISS");
    handle.invalidate_namespace("default").await.unwrap();
    assert_eq!(send(&app, req_get("/items/1?a=2&b=1")).await.1, "MISS");
    assert_eq!(origin.calls(), 3);
}

async fn status_codes_from_routes_are_unchanged(redis: RedisServer) {
    let app = Origin::items().router().layer(layer(&redis, |b| b).await);
    let res = app.oneshot(req_get("/nowhere")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["x-cache"], "MISS");
}

on_both_topologies!(
    miss_then_hit_with_age_and_one_origin_call,
    age_grows_with_the_entry,
    query_order_is_normalized,
    ttl_jitter_stays_in_bounds_and_spreads_in_milliseconds,
    a_v2_layer_never_reads_v1_entries_nor_another_prefix,
    invalidate_one_entry,
    invalidate_prefix_removes_exactly_the_paths_under_it,
    invalidate_namespace_is_a_generation_bump_seen_by_every_instance,
    a_corrupt_or_foreign_value_is_a_miss_and_is_replaced,
    post_and_other_methods_pass_through,
    only_allowed_statuses_are_stored,
    cookies_authorization_and_no_store_are_not_cached,
    a_body_over_the_limit_reaches_the_client_whole_and_is_not_stored,
    per_route_policies_in_one_layer,
    bypass_unmatched_caches_only_listed_routes,
    one_layer_per_route_with_route_layer_shares_one_handle,
    status_header_can_be_renamed_or_turned_off,
    handle_put_many_writes_entries_the_layer_then_serves,
    the_handle_is_a_request_extension_and_an_axum_extractor,
    status_codes_from_routes_are_unchanged,
);
