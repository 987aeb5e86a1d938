//! The `metrics` feature: what an exporter sees (run with
//! `cargo test --features metrics --test metrics`; `scripts/test` does).
#![cfg(feature = "metrics")]

mod support;

use axum::{routing::get, Router};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{req_get, request, send};
use tower_redis_cache::RedisCacheLayer;

#[tokio::test]
async fn outcomes_store_latency_and_bytes_are_exported_with_conventional_names() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let cache = RedisCacheLayer::builder().build().unwrap();
    // A JSON list, stored gzip-compressed.
    let list = format!("[{}0]", "{\"id\":1,\"name\":\"a product\"},".repeat(100));
    let list_len = list.len() as u64;
    let app = Router::new()
        .route("/p", get(|| async { "a page" }).post(|| async { "posted" }))
        .route(
            "/list",
            get(move || async move { ([("content-type", "application/json")], list) }),
        )
        .layer(cache);
    assert_eq!(send(&app, req_get("/p")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/p")).await.1, "HIT");
    assert_eq!(send(&app, req_get("/p")).await.1, "HIT");
    assert_eq!(send(&app, request("POST", "/p")).await.1, "BYPASS");
    assert_eq!(send(&app, req_get("/list")).await.1, "MISS");

    let mut counters = std::collections::HashMap::new();
    let mut fetches = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(samples)
                if name == "http_cache_store_duration_seconds{op=fetch}" =>
            {
                fetches = samples.len();
            }
            _ => {}
        }
    }
    assert_eq!(
        counters.get("http_cache_requests_total{outcome=HIT}"),
        Some(&2),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("http_cache_requests_total{outcome=MISS}"),
        Some(&2)
    );
    assert_eq!(
        counters.get("http_cache_requests_total{outcome=BYPASS}"),
        Some(&1)
    );
    assert_eq!(counters.get("http_cache_stored_entries_total{}"), Some(&2));
    // Bodies as the service sent them, and as stored.
    let received = counters["http_cache_stored_body_bytes_total{form=received}"];
    let at_rest = counters["http_cache_stored_body_bytes_total{form=at_rest}"];
    assert_eq!(received, 6 + list_len);
    assert!(at_rest < received / 4, "{at_rest} of {received}");
    assert!(counters
        .get("http_cache_stored_bytes_total{}")
        .is_some_and(|b| *b > 6));
    assert_eq!(fetches, 4, "one store lookup per GET");
}
