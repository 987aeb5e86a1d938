//! What the layer tells an operator through `tracing`: the key and outcome of
//! each request, store failures once, and never a body or a secret.

mod support;

use std::time::Duration;

use axum::{
    routing::{get, post},
    Router,
};
use support::{send, Captured, RedisServer};
use tower_redis_cache::{store::RedisStore, CachePolicy, RedisCacheLayer};

/// Captures the log output of the current thread (the tests run on a
/// current-thread runtime, so tasks the layer spawns log here too) at
/// `level` and above.
fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// The log lines that contain every one of `words`.
fn lines_with(text: &str, words: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn each_request_logs_its_key_and_outcome_and_a_dead_store_warns_once() {
    let (logs, _guard) = capture(tracing::Level::DEBUG);

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
    let warnings = lines_with(&text, &["WARN", "cache store failed"]);
    assert_eq!(
        warnings.len(),
        1,
        "one warning per outage, then debug lines:\n{text}"
    );
    let address = format!("redis://127.0.0.1:{}", redis.port());
    assert!(
        warnings[0].contains(&address),
        "the warning names the Redis it could not reach: {}",
        warnings[0]
    );
    let bypass = lines_with(
        &text,
        &["cache BYPASS", "method=GET", "path=\"/secret-page\""],
    );
    assert!(
        bypass
            .iter()
            .any(|l| l.contains("the store did not answer")),
        "a BYPASS with the store down says so:\n{text}"
    );
}

#[tokio::test]
async fn build_logs_one_info_line_naming_the_store_without_its_password() {
    let (logs, _guard) = capture(tracing::Level::INFO);
    RedisCacheLayer::builder().prefix("shop").build().unwrap();
    let text = logs.text();
    let built = lines_with(&text, &["INFO", "cache layer built"]);
    assert_eq!(built.len(), 1, "{text}");
    assert!(
        built[0].contains("the in-memory store of this process (64 MiB")
            && built[0].contains("keys=shop:v1:*"),
        "{}",
        built[0]
    );

    let redis = RedisServer::start();
    let url = format!("redis://cache:s3cret-pw@127.0.0.1:{}/3", redis.port());
    let store = RedisStore::builder(&url).build().unwrap();
    RedisCacheLayer::builder().store(store).build().unwrap();
    let text = logs.text();
    let built = lines_with(&text, &["INFO", "cache layer built", "Redis at"]);
    assert_eq!(built.len(), 1, "{text}");
    assert!(
        built[0].contains(&format!(
            "Redis at redis://cache@127.0.0.1:{}/3",
            redis.port()
        )),
        "{}",
        built[0]
    );
    assert!(
        !text.contains("s3cret-pw"),
        "no password in the logs:\n{text}"
    );
}

#[tokio::test]
async fn a_redis_unreachable_at_start_is_a_warning_that_names_it() {
    let (logs, _guard) = capture(tracing::Level::INFO);
    // A port nothing listens on: bound, read and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let store = RedisStore::builder(format!("redis://:pw-never-logged@127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let _cache = RedisCacheLayer::builder().store(store).build().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let warning = loop {
        let text = logs.text();
        if let Some(line) = lines_with(&text, &["WARN", "unreachable at start"]).pop() {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning within 5 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        warning.contains(&format!("Redis at redis://127.0.0.1:{port}"))
            && warning.contains("requests pass through"),
        "{warning}"
    );
    assert!(!logs.text().contains("pw-never-logged"));
}

#[tokio::test]
async fn every_bypass_says_why_with_the_method_and_path() {
    let (logs, _guard) = capture(tracing::Level::DEBUG);
    let cache = RedisCacheLayer::builder()
        .bypass_unmatched(true)
        .max_body_bytes(8)
        .route("/cached", CachePolicy::new().invalidate_on_unsafe(true))
        .route("/big", CachePolicy::new())
        .route("/off", CachePolicy::bypass())
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/cached",
            get(|| async { "ok" }).post(|| async { "posted" }),
        )
        .route("/big", get(|| async { "a body longer than eight bytes" }))
        .route("/off", get(|| async { "off" }))
        .route("/unlisted", get(|| async { "unlisted" }))
        .route("/form", post(|| async { "posted" }))
        .layer(cache);
    let with = |method: &str, uri: &str, header: Option<(&str, &str)>| {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some((name, value)) = header {
            b = b.header(name, value);
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    // Method, target, a header, the status header, the reason logged.
    #[rustfmt::skip]
    let cases = [
        ("GET", "/unlisted", None, "BYPASS", "no route rule matches"),
        ("GET", "/off", None, "BYPASS", "CachePolicy::bypass()"),
        ("OPTIONS", "/cached", None, "BYPASS", "only GET and HEAD"),
        ("POST", "/cached", None, "BYPASS", "an unsafe method"),
        ("GET", "/cached", Some(("content-length", "3")), "BYPASS", "a GET or HEAD with a body"),
        ("GET", "/cached?user=1", Some(("if-match", "\"a\"")), "BYPASS", "a precondition field meant for the origin"),
        ("GET", "/big", None, "MISS", "larger than max_body_bytes"),
    ];
    for (method, uri, header, status, reason) in cases {
        let (_, x_cache, _) = send(&app, with(method, uri, header)).await;
        assert_eq!(x_cache, status, "{method} {uri}");
        let path = uri.split('?').next().unwrap();
        let (method_field, path_field) = (format!("method={method}"), format!("path={path:?}"));
        let text = logs.text();
        let lines = lines_with(&text, &["DEBUG", &method_field, &path_field, reason]);
        assert_eq!(lines.len(), 1, "{method} {uri}: {reason}:\n{text}");
    }
    // Not a BYPASS, but the operator sees why nothing was stored.
    let (_, x_cache, _) = send(
        &app,
        with("GET", "/cached", Some(("authorization", "Bearer x"))),
    )
    .await;
    assert_eq!(x_cache, "MISS");
    let (_, x_cache, _) = send(
        &app,
        with("GET", "/cached", Some(("cache-control", "no-store"))),
    )
    .await;
    assert_eq!(x_cache, "MISS");
    let text = logs.text();
    for reason in ["carries Authorization", "no-store"] {
        assert_eq!(
            lines_with(
                &text,
                &[
                    "cache response not stored",
                    "method=GET",
                    "path=\"/cached\"",
                    reason
                ]
            )
            .len(),
            1,
            "{reason}:\n{text}"
        );
    }
    assert!(
        !text.contains("user=1"),
        "the query is never in a BYPASS line"
    );
}
