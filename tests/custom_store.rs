//! The layer over a store of the user's (`examples/hashmap_store.rs`, the
//! example of the `Store` docs), which has none of the crate's fast paths:
//! hits, and every kind of invalidation. (Racing fills: `tests/races.rs`.)
#![cfg(feature = "axum")]

mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/hashmap_store.rs"]
mod hashmap_store;

use axum::Router;
use hashmap_store::HashMapStore;
use http::{Method, Uri};
use support::{req_get, send, Origin};
use tower_redis_cache::{CacheHandle, CachePolicy, RedisCacheLayer};

/// `/items/{id}` (namespace `items`, tagged `item:{id}`) and `/other/{id}`.
fn app(store: HashMapStore) -> (Router, CacheHandle) {
    let cache = RedisCacheLayer::builder()
        .store(store)
        .route("/items/{id}", CachePolicy::new().namespace("items"))
        .build()
        .unwrap();
    let handle = cache.handle();
    let app = Origin::tagged_items().router().layer(cache);
    (app, handle)
}

/// Whether `uri` is answered from the store (a second read, so a miss
/// stores it first).
async fn cached(app: &Router, uri: &str) -> bool {
    send(app, req_get(uri)).await.1 == "HIT"
}

#[tokio::test]
async fn hits_and_every_invalidation_work_on_a_users_store() {
    let (app, handle) = app(HashMapStore::default());
    for uri in ["/items/1", "/items/2", "/other/1"] {
        assert_eq!(send(&app, req_get(uri)).await.1, "MISS", "{uri}");
        assert!(cached(&app, uri).await, "{uri}");
    }
    // One entry.
    let uri = Uri::from_static("/items/1");
    let done = handle.invalidate(&Method::GET, &uri).await.unwrap();
    assert!(!done.queued, "{done:?}");
    assert_eq!(send(&app, req_get("/items/1")).await.1, "MISS");
    // A tag.
    let done = handle.invalidate_tags(["item:2"]).await.unwrap();
    assert_eq!((done.queued, done.removed), (false, 1), "{done:?}");
    assert_eq!(send(&app, req_get("/items/2")).await.1, "MISS");
    // A path prefix.
    assert!(cached(&app, "/other/1").await);
    let done = handle.invalidate_prefix("/other/").await.unwrap();
    assert_eq!((done.queued, done.removed), (false, 1), "{done:?}");
    assert_eq!(send(&app, req_get("/other/1")).await.1, "MISS");
    // A namespace: every item, not the rest.
    assert!(cached(&app, "/items/1").await && cached(&app, "/items/2").await);
    assert!(cached(&app, "/other/1").await);
    let done = handle.invalidate_namespace("items").await.unwrap();
    assert!(!done.queued, "{done:?}");
    for uri in ["/items/1", "/items/2"] {
        assert_eq!(send(&app, req_get(uri)).await.1, "MISS", "{uri}");
    }
    assert!(cached(&app, "/other/1").await);
    let stats = handle.stats();
    assert_eq!(stats.store_errors, 0, "{stats:?}");
}

#[tokio::test]
async fn layers_sharing_a_users_store_see_each_others_invalidations() {
    let store = HashMapStore::default();
    let (one, one_handle) = app(store.clone());
    let (two, _) = app(store);
    assert_eq!(send(&one, req_get("/items/1")).await.1, "MISS");
    assert_eq!(send(&two, req_get("/items/1")).await.1, "HIT");
    one_handle.invalidate_namespace("items").await.unwrap();
    assert_eq!(send(&two, req_get("/items/1")).await.1, "MISS");
}
