//! What the layer tells an operator through `tracing`: the key and outcome of
//! each request, store failures once, and never a body or a secret.

mod support;

use std::time::Duration;

use axum::{routing::get, Router};
use support::{send, Captured, RedisServer};
use tower_redis_cache::RedisCacheLayer;

#[tokio::test]
async fn each_request_logs_its_key_and_outcome_and_a_dead_store_warns_once() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut redis = RedisServer::start();
    let cache = RedisCacheLayer::builder()
        .store(redis.store().await)
        .prefix("obs")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/secret-page", get(|| async { "BODY-CONTENT-42" }))
        .layer(cache);
    let req = |auth: bool| {
        let mut b = http::Request::get("/secret-page?token=x");
        if auth {
            b = b.header("authorization", "Bearer TOKEN-SECRET-7");
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    send(&app, req(false)).await;
    send(&app, req(false)).await;
    send(&app, req(true)).await;
    let text = logs.text();
    assert!(
        text.contains("key=obs:v1:default:GET:/secret-page?token=x"),
        "{text}"
    );
    assert!(
        text.contains("outcome=\"MISS\"") && text.contains("outcome=\"HIT\""),
        "{text}"
    );
    assert!(!text.contains("BODY-CONTENT-42"), "bodies are never logged");
    assert!(
        !text.contains("TOKEN-SECRET-7"),
        "request headers are never logged"
    );

    redis.stop();
    for _ in 0..5 {
        send(&app, req(false)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let text = logs.text();
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cache store failed"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning per outage, then debug lines:\n{text}"
    );
}
