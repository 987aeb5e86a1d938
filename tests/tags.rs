//! Tag (surrogate-key) invalidation, on a standalone Redis and on a cluster.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{Path, Query},
    response::IntoResponse,
    routing::get,
    Extension, Router,
};
use bytes::Bytes;
use http::Uri;
use support::{keys, req_get, request, send, RedisServer};
use tower_redis_cache::{
    fred::prelude::{KeysInterface, SortedSetsInterface},
    CachePolicy, CacheTags, RedisCacheLayer,
};

#[derive(serde::Deserialize)]
struct Tagging {
    header: Option<String>,
    ext: Option<String>,
}

/// `/{ns}/{id}?header=a,b&ext=c`: tags through the response header and the
/// response extension; counts origin calls.
fn app(calls: Arc<AtomicUsize>) -> Router {
    let handler = move |Path((ns, id)): Path<(String, String)>, Query(t): Query<Tagging>| {
        let n = calls.fetch_add(1, SeqCst) + 1;
        async move {
            let mut res = format!("{ns}/{id} call {n}").into_response();
            if let Some(h) = t.header {
                res.headers_mut().insert("cache-tag", h.parse().unwrap());
            }
            if let Some(e) = t.ext {
                return (Extension(CacheTags::new(e.split(','))), res).into_response();
            }
            res
        }
    };
    Router::new().route("/{ns}/{id}", get(handler.clone()).post(handler))
}

async fn tagged_layer(redis: &RedisServer) -> RedisCacheLayer {
    RedisCacheLayer::builder()
        .prefix("tags")
        .store(redis.store().await)
        .route("/a/{id}", CachePolicy::new().namespace("a"))
        .route(
            "/b/{id}",
            CachePolicy::new().namespace("b").tags(|uri, _| {
                vec![format!(
                    "b-item:{}",
                    uri.path().rsplit('/').next().unwrap_or("")
                )]
            }),
        )
        .build()
        .unwrap()
}

async fn tags_from_headers_extensions_and_policies_across_namespaces(redis: RedisServer) {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = tagged_layer(&redis).await;
    let handle = cache.handle();
    let app = app(calls.clone()).layer(cache);
    for uri in [
        "/a/1?header=product:1,shelf",
        "/a/2?ext=product:2,shelf",
        "/b/1?header=product:1",
        "/b/2",
        "/a/3",
    ] {
        let res = app.clone().oneshot_get(uri).await;
        assert_eq!(res.0, "MISS", "{uri}");
        assert!(!res.1, "tag header must not reach the client: {uri}");
        let res = app.clone().oneshot_get(uri).await;
        assert_eq!(res.0, "HIT", "{uri}");
        assert!(!res.1, "nor come back from the cache: {uri}");
    }
    assert_eq!(
        handle.invalidate_tags(["product:1"]).await.unwrap().removed,
        2
    );
    assert_eq!(
        handle.invalidate_tags(["product:1"]).await.unwrap().removed,
        0
    );
    assert_eq!(
        app.clone()
            .oneshot_get("/a/1?header=product:1,shelf")
            .await
            .0,
        "MISS"
    );
    assert_eq!(
        app.clone().oneshot_get("/b/1?header=product:1").await.0,
        "MISS"
    );
    assert_eq!(
        app.clone().oneshot_get("/a/2?ext=product:2,shelf").await.0,
        "HIT"
    );
    // A policy's tags.
    assert_eq!(
        handle
            .invalidate_tags(["b-item:2", "nothing"])
            .await
            .unwrap()
            .removed,
        1
    );
    assert_eq!(app.clone().oneshot_get("/b/2").await.0, "MISS");
    // Several tags at once; entries counted once.
    assert_eq!(
        handle
            .invalidate_tags(["shelf", "product:2"])
            .await
            .unwrap()
            .removed,
        2
    );
    assert_eq!(app.clone().oneshot_get("/a/3").await.0, "HIT");
}

async fn tag_headers_never_leave_the_layer_even_when_not_cached(redis: RedisServer) {
    let app = app(Arc::default()).layer(tagged_layer(&redis).await);
    let res = send(&app, request("POST", "/a/1?header=secret-tag")).await;
    assert_eq!(res.1, "BYPASS");
    let res = tower::ServiceExt::oneshot(app, request("POST", "/a/1?header=secret-tag"))
        .await
        .unwrap();
    assert!(!res.headers().contains_key("cache-tag"));
}

async fn tag_indexes_are_pruned_and_expire(redis: RedisServer) {
    let cache = RedisCacheLayer::builder()
        .prefix("tags")
        .store(redis.store().await)
        .ttl(Duration::from_millis(300))
        .jitter(0.0)
        .build()
        .unwrap();
    let app = app(Arc::default()).layer(cache);
    for i in 0..5 {
        send(&app, req_get(&format!("/x/{i}?header=t"))).await;
    }
    let client = redis.client().await;
    let count: u64 = client.zcard("tags:v1:#tag:t").await.unwrap();
    assert_eq!(count, 5);
    let pttl: i64 = client.pttl("tags:v1:#tag:t").await.unwrap();
    assert!(
        pttl > 0 && pttl <= 300,
        "the index expires with its entries: {pttl}"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    send(&app, req_get("/x/new?header=t")).await;
    let count: u64 = client.zcard("tags:v1:#tag:t").await.unwrap();
    assert_eq!(count, 1, "expired entries are pruned from the index");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let left: Vec<String> = keys(&client).await;
    assert!(left.is_empty(), "nothing outlives its entries: {left:?}");
}

async fn concurrent_writes_and_invalidations_leave_no_untracked_entry(redis: RedisServer) {
    let cache = tagged_layer(&redis).await;
    let handle = cache.handle();
    let app = app(Arc::default()).layer(cache);
    let writers: Vec<_> = (0..60)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, req_get(&format!("/a/{i}?header=hot"))).await })
        })
        .collect();
    let purgers: Vec<_> = (0..5)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.invalidate_tags(["hot"]).await.unwrap() })
        })
        .collect();
    for w in writers {
        assert_eq!(w.await.unwrap().0, 200);
    }
    for p in purgers {
        p.await.unwrap();
    }
    handle.invalidate_tags(["hot"]).await.unwrap();
    // A walk past the handle budget finishes in the background.
    assert!(handle.drain(Duration::from_secs(5)).await);
    for i in 0..60 {
        let x = send(&app, req_get(&format!("/a/{i}?header=hot"))).await.1;
        assert_eq!(x, "MISS", "entry {i} survived the last invalidation");
    }
}

async fn batch_writes_carry_tags(redis: RedisServer) {
    let cache = tagged_layer(&redis).await;
    let handle = cache.handle();
    let app = app(Arc::default()).layer(cache);
    let batch = (1..=3).map(|i| {
        let res = http::Response::builder()
            .header("cache-tag", "batch")
            .body(Bytes::from(format!("item {i}")))
            .unwrap();
        (format!("/a/{i}").parse::<Uri>().unwrap(), res)
    });
    assert_eq!(handle.put_many(batch).await.unwrap(), 3);
    let (_, x, body) = send(&app, req_get("/a/1")).await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "item 1"));
    assert_eq!(handle.invalidate_tags(["batch"]).await.unwrap().removed, 3);
    let exists: u64 = redis
        .client()
        .await
        .exists("tags:v1:#tag:batch")
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

on_both_topologies!(
    tags_from_headers_extensions_and_policies_across_namespaces,
    tag_headers_never_leave_the_layer_even_when_not_cached,
    tag_indexes_are_pruned_and_expire,
    concurrent_writes_and_invalidations_leave_no_untracked_entry,
    batch_writes_carry_tags,
);

#[tokio::test]
async fn the_in_memory_store_keeps_tags_too() {
    let cache = RedisCacheLayer::builder().build().unwrap();
    let handle = cache.handle();
    let app = app(Arc::default()).layer(cache);
    send(&app, req_get("/a/1?header=t1")).await;
    send(&app, req_get("/a/2?ext=t1,t2")).await;
    send(&app, req_get("/a/3?header=t2")).await;
    assert_eq!(handle.invalidate_tags(["t1"]).await.unwrap().removed, 2);
    assert_eq!(send(&app, req_get("/a/3?header=t2")).await.1, "HIT");
    assert_eq!(send(&app, req_get("/a/1?header=t1")).await.1, "MISS");
}

/// `x-cache` and whether a `cache-tag` header reached the client.
trait OneshotGet {
    async fn oneshot_get(self, uri: &str) -> (String, bool);
}

impl OneshotGet for Router {
    async fn oneshot_get(self, uri: &str) -> (String, bool) {
        let res = tower::ServiceExt::oneshot(self, req_get(uri))
            .await
            .unwrap();
        let x = res
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            x.unwrap_or_default(),
            res.headers().contains_key("cache-tag"),
        )
    }
}
