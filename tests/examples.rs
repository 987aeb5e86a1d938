//! The per_route and tags examples do what their doc comments say, on a
//! Redis of the test's own.
#![cfg(feature = "axum")]

mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/per_route.rs"]
mod per_route;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/tags.rs"]
mod tags;

use support::{req_get, request, send, RedisServer};
use tower_redis_cache::RedisCacheLayer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_gives_each_route_its_own_policy() {
    let redis = RedisServer::start();
    let cache =
        per_route::cache_layer(RedisCacheLayer::builder().store(redis.store().await)).unwrap();
    let news = RedisCacheLayer::builder()
        .store(redis.store().await)
        .prefix("news")
        .build()
        .unwrap();
    let handle = cache.handle();
    let news_handle = news.handle();
    let app = per_route::router(cache, news);

    for path in [
        "/products/7",
        "/search?q=tv",
        "/search",
        "/assets/app.css",
        "/news",
    ] {
        let (_, first, body) = send(&app, req_get(path)).await;
        let (_, second, again) = send(&app, req_get(path)).await;
        assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"), "{path}");
        assert_eq!(body, again, "{path}");
    }
    let (_, x, _) = send(&app, req_get("/me")).await;
    assert_eq!(x, "BYPASS");

    // Each route's TTL and namespace, as the key and Redis say.
    let client = redis.client().await;
    let ttl = |key: String| {
        let client = client.clone();
        async move {
            use tower_redis_cache::fred::prelude::KeysInterface;
            client.pttl::<i64, _>(key).await.unwrap()
        }
    };
    let key = |h: &tower_redis_cache::CacheHandle, uri: &str| {
        h.key_for(&http::Method::GET, &uri.parse().unwrap())
            .unwrap()
    };
    let product = key(&handle, "/products/7");
    assert!(product.starts_with("per-route:v1:products:"), "{product}");
    let ms = ttl(product).await;
    assert!((810_000..=990_000).contains(&ms), "15 min ±10%: {ms}");
    let ms = ttl(key(&handle, "/search?q=tv")).await;
    assert!((29_000..=30_000).contains(&ms), "30 s exactly: {ms}");
    let ms = ttl(key(&handle, "/assets/app.css")).await;
    assert!(
        (77_760_000..=95_040_000).contains(&ms),
        "a day ±10% (the layer's jitter): {ms}"
    );
    assert!(key(&news_handle, "/news").starts_with("news:v1:"));
    assert!(handle
        .key_for(&http::Method::GET, &"/me".parse().unwrap())
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_drop_exactly_the_pages_that_showed_the_record() {
    let redis = RedisServer::start();
    let cache = tags::cache_layer(RedisCacheLayer::builder().store(redis.store().await)).unwrap();
    let app = tags::router(tags::seeded(), cache);
    let pages = [
        "/articles/1",
        "/authors/ada/articles",
        "/articles/3",
        "/authors/bob/articles",
    ];
    for page in pages {
        send(&app, req_get(page)).await;
        let (_, x, _) = send(&app, req_get(page)).await;
        assert_eq!(x, "HIT", "{page}");
    }
    let (_, _, tag_header) = send(&app, req_get("/articles/1")).await;
    assert!(!tag_header.contains("cache-tag"));

    let mut edit = request("PUT", "/articles/1");
    *edit.body_mut() = axum::body::Body::from("A new title");
    let (status, _, said) = send(&app, edit).await;
    assert_eq!(status, 200);
    assert!(said.contains("2 cached pages dropped"), "{said}");

    let (_, x, body) = send(&app, req_get("/articles/1")).await;
    assert_eq!((x.as_str(), body.trim()), ("MISS", "#1 A new title by ada"));
    let (_, x, body) = send(&app, req_get("/authors/ada/articles")).await;
    assert_eq!(x, "MISS");
    assert!(body.contains("A new title"));
    for untouched in ["/articles/3", "/authors/bob/articles"] {
        assert_eq!(send(&app, req_get(untouched)).await.1, "HIT", "{untouched}");
    }
}
