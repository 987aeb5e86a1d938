//! Tag (surrogate-key) invalidation, on a standalone Redis and on a cluster.

mod support;

use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::Uri;
use support::{keys, reply, req_get, request, send, Origin, RedisServer};
use tower_redis_cache::{
    fred::{
        prelude::{ClientLike, KeysInterface, SortedSetsInterface},
        types::{CustomCommand, Value},
    },
    CachePolicy, CacheTags, RedisCacheLayer,
};

/// `/{ns}/{id}?header=a,b&ext=c`: tags through the response header and the
/// response extension.
fn tagging_origin() -> Router {
    Origin::new(|req, n| {
        let mut res = reply(
            &[],
            format!("{} call {n}", req.uri().path().trim_start_matches('/')),
        );
        for (name, value) in req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|p| p.split_once('='))
        {
            match name {
                "header" => {
                    res.headers_mut()
                        .insert("cache-tag", value.parse().unwrap());
                }
                "ext" => {
                    res.extensions_mut()
                        .insert(CacheTags::new(value.split(',')));
                }
                _ => {}
            }
        }
        res
    })
    .router()
}

async fn tagged_layer(redis: &RedisServer) -> RedisCacheLayer {
    RedisCacheLayer::builder()
        .prefix("tags")
        .store(redis.store().await)
        // Batches of 500 tagged writes and walks of thousands of members:
        // room for them on a loaded machine (the budget is not what these
        // tests are about).
        .handle_timeout(Duration::from_secs(10))
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
    let cache = tagged_layer(&redis).await;
    let handle = cache.handle();
    let app = tagging_origin().layer(cache);
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
    let app = tagging_origin().layer(tagged_layer(&redis).await);
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
        .default_policy(
            CachePolicy::new()
                .ttl(Duration::from_millis(300))
                .jitter(0.0),
        )
        .build()
        .unwrap();
    let app = tagging_origin().layer(cache);
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
    let app = tagging_origin().layer(cache);
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
    let app = tagging_origin().layer(cache);
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

/// Stores `/a/{i}` for every `i` in `ids`, tagged `tag`, in batches.
async fn fill(handle: &tower_redis_cache::CacheHandle, ids: std::ops::Range<usize>, tag: &str) {
    let ids: Vec<usize> = ids.collect();
    for chunk in ids.chunks(500) {
        let batch = chunk.iter().map(|i| {
            let res = http::Response::builder()
                .header("cache-tag", tag)
                .body(Bytes::from(format!("item {i}")))
                .unwrap();
            (format!("/a/{i}").parse::<Uri>().unwrap(), res)
        });
        assert_eq!(handle.put_many(batch).await.unwrap(), chunk.len());
    }
}

/// The stored entries (every key but the tag indexes).
async fn entries(client: &tower_redis_cache::fred::prelude::Client) -> Vec<String> {
    let mut all = keys(client).await;
    all.retain(|k| !k.contains("#tag:"));
    all
}

/// A client per node (one on a single Redis).
fn nodes(
    client: &tower_redis_cache::fred::prelude::Client,
) -> Vec<tower_redis_cache::fred::prelude::Client> {
    if !client.is_clustered() {
        return vec![client.clone()];
    }
    client.split_cluster().expect("a client per cluster node")
}

async fn admin(client: &tower_redis_cache::fred::prelude::Client, args: &[&str]) -> Value {
    let name: &'static str = Box::leak(args[0].to_owned().into_boxed_str());
    client
        .custom(
            CustomCommand::new_static(name, None, false),
            args[1..].to_vec(),
        )
        .await
        .unwrap()
}

async fn a_large_tag_is_invalidated_in_short_commands(redis: RedisServer) {
    use tower_redis_cache::store::Store;
    let store = redis.store().await;
    let handle = tagged_layer(&redis).await.handle();
    fill(&handle, 0..5_000, "big").await;
    fill(&handle, 5_000..5_010, "other").await;
    let client = redis.client().await;
    let nodes = nodes(&client);
    for node in &nodes {
        node.init().await.unwrap();
        admin(node, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]).await;
        admin(node, &["CONFIG", "SET", "slowlog-max-len", "100000"]).await;
        admin(node, &["SLOWLOG", "RESET"]).await;
    }
    let removed = store
        .invalidate_tags(&["tags:v1:#tag:big".to_owned()])
        .await
        .unwrap();
    assert_eq!(removed, 5_000);
    assert_eq!(entries(&client).await.len(), 10, "only `other` is left");
    let exists: u64 = client.exists("tags:v1:#tag:big").await.unwrap();
    assert_eq!(exists, 0, "the emptied index is gone");
    // Every command Redis ran meanwhile worked on at most a page of the
    // index: none named thousands of keys, none read the index whole.
    let mut commands = 0;
    for node in &nodes {
        admin(node, &["CONFIG", "SET", "slowlog-log-slower-than", "10000"]).await;
        let Value::Array(log) = admin(node, &["SLOWLOG", "GET", "-1"]).await else {
            panic!("SLOWLOG GET answers an array");
        };
        for entry in log {
            let Value::Array(fields) = entry else {
                continue;
            };
            let Some(Value::Array(args)) = fields.get(3) else {
                continue;
            };
            let args: Vec<String> = args.iter().filter_map(|a| a.as_string()).collect();
            // Past 32 arguments, the log keeps 31 and counts the rest.
            let more: usize = args
                .last()
                .and_then(|a| a.strip_prefix("... ("))
                .and_then(|a| a.strip_suffix(" more arguments)"))
                .map_or(0, |n| n.parse().unwrap());
            let name = args[0].to_uppercase();
            assert!(
                args.len() + more <= 1_000,
                "{name} with {} arguments",
                args.len() + more
            );
            assert!(
                !(name == "ZRANGE" && args.get(2..4) == Some(&["0".into(), "-1".into()])),
                "the index was read whole: {args:?}"
            );
            commands += 1;
        }
    }
    assert!(commands > 10, "the slow log saw the walk: {commands}");
}

async fn an_invalidation_stopped_halfway_leaves_every_entry_listed_and_can_be_finished(
    redis: RedisServer,
) {
    use tower_redis_cache::store::Store;
    let store = redis.store().await;
    let handle = tagged_layer(&redis).await.handle();
    let tag = "tags:v1:#tag:big".to_owned();
    fill(&handle, 0..5_000, "big").await;
    let client = redis.client().await;
    let walk = {
        let (store, tag) = (store.clone(), tag.clone());
        tokio::spawn(async move { store.invalidate_tags(&[tag]).await })
    };
    // The index shrinks a page at a time; stop the walk once it has begun.
    loop {
        let listed: u64 = client.zcard(tag.as_str()).await.unwrap();
        if listed > 0 && listed < 5_000 {
            break;
        }
        assert!(listed > 0, "the whole index went in one step");
    }
    walk.abort();
    let _ = walk.await;
    // A write after the stop is listed.
    fill(&handle, 9_000..9_001, "big").await;
    let listed: Vec<String> = client
        .zrange(tag.as_str(), 0, -1, None, false, None, false)
        .await
        .unwrap();
    let stored = entries(&client).await;
    assert!(
        stored.len() > 1 && stored.len() < 5_001,
        "the walk stopped halfway: {} entries left",
        stored.len()
    );
    for key in &stored {
        assert!(listed.contains(key), "{key} is stored but not listed");
    }
    assert!(stored.iter().any(|k| k.ends_with("/a/9000")));
    // Called again, the invalidation finishes the job.
    let removed = store
        .invalidate_tags(std::slice::from_ref(&tag))
        .await
        .unwrap();
    assert_eq!(removed, stored.len() as u64);
    assert_eq!(keys(&client).await, Vec::<String>::new());
}

on_both_topologies!(
    tags_from_headers_extensions_and_policies_across_namespaces,
    tag_headers_never_leave_the_layer_even_when_not_cached,
    tag_indexes_are_pruned_and_expire,
    concurrent_writes_and_invalidations_leave_no_untracked_entry,
    batch_writes_carry_tags,
    a_large_tag_is_invalidated_in_short_commands,
    an_invalidation_stopped_halfway_leaves_every_entry_listed_and_can_be_finished,
);

#[tokio::test]
async fn the_in_memory_store_keeps_tags_too() {
    let cache = RedisCacheLayer::builder().build().unwrap();
    let handle = cache.handle();
    let app = tagging_origin().layer(cache);
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
