//! The products example's routes end to end, on a real Redis.
#![cfg(all(feature = "axum", feature = "l1"))]

mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/products.rs"]
mod products;

use axum::{body::Body, Router};
use http::Request;
use serde_json::Value;
use support::{keys, read, req_get, RedisServer};
use tower::ServiceExt;
use tower_redis_cache::{fred::prelude::KeysInterface, RedisCacheLayer};

async fn app(redis: &RedisServer) -> (Router, std::sync::Arc<products::Db>) {
    let db = products::Db::seeded();
    let layer = products::cache_layer(
        RedisCacheLayer::builder()
            .store(redis.store().await)
            // These tests check what is cached and invalidated, not the budget:
            // a busy machine must not turn a write into a timeout.
            .store_timeout(std::time::Duration::from_secs(2)),
    )
    .unwrap();
    (products::router(db.clone(), layer), db)
}

fn json(method: &str, uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (u16, String, Value) {
    let (status, x, body) = read(app.clone().oneshot(req).await.unwrap()).await;
    (
        status,
        x,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

async fn items_and_lists_miss_then_hit_with_keys_and_jittered_ttls(redis: RedisServer) {
    let (app, db) = app(&redis).await;
    let (s, x, item) = call(&app, req_get("/products/7")).await;
    assert_eq!((s, x.as_str()), (200, "MISS"));
    assert_eq!(item["id"], "7");
    for field in ["name", "category", "price", "in_stock", "created_at"] {
        assert!(item.get(field).is_some(), "missing {field}");
    }
    let (_, x, again) = call(&app, req_get("/products/7")).await;
    assert_eq!((x.as_str(), &again), ("HIT", &item));

    let (_, x, list) = call(&app, req_get("/products?category=books&page=2&per_page=5")).await;
    assert_eq!(x, "MISS");
    assert_eq!(list["items"].as_array().unwrap().len(), 5);
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["category"] == "books"));
    let (_, x, same) = call(&app, req_get("/products?per_page=5&page=2&category=books")).await;
    assert_eq!((x.as_str(), &same), ("HIT", &list));
    assert_eq!(db.reads(), 2);

    let client = redis.client().await;
    let all = keys(&client).await;
    assert!(
        all.contains(&"api:v1:products:GET:/products/7".to_owned()),
        "{all:?}"
    );
    // 20 items give PTTLs spread inside 900 s ±10%.
    for i in 1..=20 {
        call(&app, req_get(&format!("/products/{i}"))).await;
    }
    let mut pttls = Vec::new();
    for i in 1..=20 {
        let pttl: i64 = client
            .pttl(format!("api:v1:products:GET:/products/{i}"))
            .await
            .unwrap();
        assert!((805_000..=990_000).contains(&pttl), "{pttl}");
        pttls.push(pttl);
    }
    pttls.sort();
    pttls.dedup();
    assert!(pttls.len() > 15, "TTLs are not spread: {pttls:?}");
}

async fn batch_insert_items_hit_on_first_read(redis: RedisServer) {
    let (app, db) = app(&redis).await;
    let batch = r#"[
        {"id":"501","name":"Lamp","category":"home","price":19.5,"in_stock":true},
        {"id":"502","name":"Desk","category":"home","price":120.0,"in_stock":false,
         "created_at":"2025-01-01T00:00:00Z"}
    ]"#;
    let (s, _, res) = call(&app, json("POST", "/products/batch", batch)).await;
    assert_eq!(s, 201);
    assert_eq!(res["cached"], 2);
    for (id, name) in [("501", "Lamp"), ("502", "Desk")] {
        let (s, x, p) = call(&app, req_get(&format!("/products/{id}"))).await;
        assert_eq!((s, x.as_str()), (200, "HIT"));
        assert_eq!(p["name"], name);
    }
    assert_eq!(db.reads(), 0);
    // The new category's list includes them.
    let (_, _, list) = call(&app, req_get("/products?category=home")).await;
    assert_eq!(list["total"], 2);
}

async fn stock_update_invalidates_the_item_and_every_list_page(redis: RedisServer) {
    let (app, db) = app(&redis).await;
    let (_, _, before) = call(&app, req_get("/products/4")).await;
    assert_eq!(before["in_stock"], true);
    let lists = [
        "/products?category=electronics&per_page=50",
        "/products?page=1",
        "/products",
    ];
    for l in lists {
        call(&app, req_get(l)).await;
        assert_eq!(call(&app, req_get(l)).await.1, "HIT");
    }
    let reads = db.reads();

    let (s, x, updated) = call(
        &app,
        json("PATCH", "/products/4/stock", r#"{"in_stock":false}"#),
    )
    .await;
    assert_eq!((s, x.as_str()), (200, "BYPASS"));
    assert_eq!(updated["in_stock"], false);

    let (_, x, after) = call(&app, req_get("/products/4")).await;
    assert_eq!(
        (x.as_str(), &after["in_stock"]),
        ("MISS", &Value::Bool(false))
    );
    for l in lists {
        let (_, x, page) = call(&app, req_get(l)).await;
        assert_eq!(x, "MISS", "{l}");
        if let Some(p) = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "4")
        {
            assert_eq!(p["in_stock"], false, "{l}");
        }
    }
    assert_eq!(db.reads(), reads + 1 + lists.len() as u64);

    let (s, _, _) = call(
        &app,
        json("PATCH", "/products/999/stock", r#"{"in_stock":true}"#),
    )
    .await;
    assert_eq!(s, 404);
}

/// Every cached page of a product (its URL with a query is an entry of its
/// own; one written by a batch insert too; a percent-encoded spelling shares
/// the plain URL's entry) shows the new stock right after an update.
async fn every_alias_shows_the_new_stock_after_an_update(app: &Router) {
    let batch = r#"[{"id":"501","name":"Lamp","category":"home","price":19.5,"in_stock":true}]"#;
    assert_eq!(
        call(app, json("POST", "/products/batch", batch)).await.0,
        201
    );
    // With whether the alias has an entry of its own (`%38` is `8` in keys).
    // Tracking parameters are not in the key: `?utm_source=x` is the plain URL.
    let aliases = [
        ("/products/8", true),
        ("/products/8?ref=x", true),
        ("/products/8?utm_source=x", false),
        ("/products/%38", false),
        ("/products/501", true),
        ("/products/501?ref=x", true),
        ("/products/501?utm_source=x", false),
    ];
    for (alias, _) in aliases {
        let (s, _, p) = call(app, req_get(alias)).await;
        assert_eq!((s, &p["in_stock"]), (200, &Value::Bool(true)), "{alias}");
        let id = if alias.contains("501") { "501" } else { "8" };
        assert_eq!(p["id"], id, "{alias}");
        let (_, x, _) = call(app, req_get(alias)).await;
        assert_eq!(x, "HIT", "{alias}");
    }
    for id in ["8", "501"] {
        let update = json(
            "PATCH",
            &format!("/products/{id}/stock"),
            r#"{"in_stock":false}"#,
        );
        assert_eq!(call(app, update).await.0, 200);
    }
    for (alias, own_entry) in aliases {
        let (_, x, p) = call(app, req_get(alias)).await;
        let first = if own_entry { "MISS" } else { "HIT" };
        assert_eq!(
            (x.as_str(), &p["in_stock"]),
            (first, &Value::Bool(false)),
            "{alias}"
        );
        let (_, x, p) = call(app, req_get(alias)).await;
        assert_eq!(
            (x.as_str(), &p["in_stock"]),
            ("HIT", &Value::Bool(false)),
            "{alias}"
        );
    }
}

/// Links shared with tracking parameters read the page's one entry, and
/// leave no key of their own.
async fn tracking_parameters_stay_out_of_the_keys(redis: RedisServer) {
    let (app, db) = app(&redis).await;
    let (_, x, item) = call(&app, req_get("/products/7?utm_source=mail&utm_medium=x")).await;
    assert_eq!((x.as_str(), &item["id"]), ("MISS", &Value::from("7")));
    let (_, x, _) = call(&app, req_get("/products/7?fbclid=abc")).await;
    assert_eq!(x, "HIT");
    let (_, x, _) = call(&app, req_get("/products/7")).await;
    assert_eq!(x, "HIT");
    let (_, x, list) = call(&app, req_get("/products?category=books&gclid=1")).await;
    assert_eq!(x, "MISS");
    let (_, x, same) = call(
        &app,
        req_get("/products?utm_campaign=spring&category=books"),
    )
    .await;
    assert_eq!((x.as_str(), &same), ("HIT", &list));
    assert_eq!(db.reads(), 2);
    let all = keys(&redis.client().await).await;
    let entries: Vec<&String> = all.iter().filter(|k| k.contains(":GET:")).collect();
    assert_eq!(
        entries,
        [
            "api:v1:products:GET:/products/7",
            "api:v1:products:GET:/products?category=books"
        ],
        "{all:?}"
    );
}

async fn a_stock_update_reaches_every_alias_of_the_product(redis: RedisServer) {
    let (app, _) = app(&redis).await;
    every_alias_shows_the_new_stock_after_an_update(&app).await;
}

#[tokio::test]
async fn on_the_memory_store_a_stock_update_reaches_every_alias_of_the_product() {
    let layer = products::cache_layer(RedisCacheLayer::builder()).unwrap();
    let app = products::router(products::Db::seeded(), layer);
    every_alias_shows_the_new_stock_after_an_update(&app).await;
}

async fn stats_report_db_reads_and_are_never_cached(redis: RedisServer) {
    let (app, _) = app(&redis).await;
    call(&app, req_get("/products/1")).await;
    call(&app, req_get("/products/1")).await;
    let (_, x, stats) = call(&app, req_get("/stats")).await;
    assert_eq!(x, "BYPASS");
    assert_eq!(stats["db_reads"], 1);
    assert_eq!(stats["cache"]["hits"], 1);
    assert_eq!(stats["cache"]["misses"], 1);
    call(&app, req_get("/products/2")).await;
    let (_, _, stats) = call(&app, req_get("/stats")).await;
    assert_eq!(stats["db_reads"], 2);
}

#[tokio::test]
async fn redis_stopped_the_api_keeps_answering() {
    let mut redis = RedisServer::start();
    let (app, db) = app(&redis).await;
    call(&app, req_get("/products/3")).await;
    redis.stop();
    for _ in 0..10 {
        let (s, x, p) = call(&app, req_get("/products/3")).await;
        assert_eq!(
            (s, x.as_str(), &p["id"]),
            (200, "BYPASS", &Value::from("3"))
        );
    }
    let (s, _, _) = call(
        &app,
        json("PATCH", "/products/3/stock", r#"{"in_stock":true}"#),
    )
    .await;
    assert_eq!(s, 200, "a failed invalidation must not fail the update");
    let (s, _, res) = call(
        &app,
        json(
            "POST",
            "/products/batch",
            r#"[{"id":"9000","name":"x","category":"y","price":1.0,"in_stock":true}]"#,
        ),
    )
    .await;
    assert_eq!((s, &res["cached"]), (201, &Value::from(0)));
    assert_eq!(db.reads(), 11);
}

async fn a_burst_on_a_cold_product_reads_the_database_once(redis: RedisServer) {
    let (app, db) = app(&redis).await;
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { call(&app, req_get("/products/42")).await })
        })
        .collect();
    for r in burst {
        let (status, _, product) = r.await.unwrap();
        assert_eq!((status, &product["id"]), (200, &Value::from("42")));
    }
    assert_eq!(db.reads(), 1);
}

async fn two_instances_with_l1_a_stock_update_through_one_is_a_miss_on_the_other(
    redis: RedisServer,
) {
    use tower_redis_cache::store::{LocalTier, TieredStore};
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store =
            TieredStore::connect(redis.store().await, LocalTier::new().track_prefix("api:"))
                .await
                .unwrap();
        let db = products::Db::seeded();
        let layer = products::cache_layer(RedisCacheLayer::builder().store(store)).unwrap();
        instances.push((products::router(db.clone(), layer), db));
    }
    let (a, b) = (&instances[0].0, &instances[1].0);
    assert_eq!(call(a, req_get("/products/5")).await.1, "MISS");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for _ in 0..3 {
        assert_eq!(call(b, req_get("/products/5")).await.1, "HIT");
    }
    let (s, _, _) = call(
        a,
        json("PATCH", "/products/5/stock", r#"{"in_stock":true}"#),
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(call(b, req_get("/products/5")).await.1, "MISS");
    assert_eq!(
        instances[1].1.reads(),
        1,
        "B read its own database once, after the update"
    );
}

on_both_topologies!(
    two_instances_with_l1_a_stock_update_through_one_is_a_miss_on_the_other,
    items_and_lists_miss_then_hit_with_keys_and_jittered_ttls,
    batch_insert_items_hit_on_first_read,
    stock_update_invalidates_the_item_and_every_list_page,
    a_stock_update_reaches_every_alias_of_the_product,
    tracking_parameters_stay_out_of_the_keys,
    stats_report_db_reads_and_are_never_cached,
    a_burst_on_a_cold_product_reads_the_database_once,
);
