//! A shared cache must never serve a response that is wrong for the client
//! receiving it: requests shaped to poison a key, against the layer on a
//! real Redis.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{header, Method, Request, Uri};
use support::{read, req_get, send, Origin, RedisServer};
use tower::ServiceExt;
use tower_redis_cache::{fred::prelude::KeysInterface, CachePolicy, RedisCacheLayer};

/// An origin whose answers reflect what it was sent (host, language, body,
/// method override, query), as an origin that reads them would, and vary
/// by language.
fn reflecting() -> Origin {
    Origin::reflecting().header("vary", "accept-language")
}

async fn layer(redis: &RedisServer, key_host: bool) -> RedisCacheLayer {
    RedisCacheLayer::builder()
        .store(redis.store().await)
        .prefix("trust")
        .default_policy(CachePolicy::new().ttl(Duration::from_secs(60)))
        .key_host(key_host)
        .build()
        .unwrap()
}

fn get_with(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::get(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_host_cannot_be_keyed_passes_uncached_and_poisons_nothing() {
    let redis = RedisServer::start();
    let app = reflecting().router().layer(layer(&redis, true).await);
    let attacks = [
        get_with("http://victim.example/page", &[("host", "evil.example")]),
        get_with("/page", &[("host", "victim.example/")]),
        get_with("/page", &[("host", "victim.example#")]),
        get_with(
            "/page",
            &[("host", "victim.example"), ("host", "evil.example")],
        ),
        get_with("/page", &[]),
    ];
    for attack in attacks {
        let (_, x, _) = send(&app, attack).await;
        assert_eq!(x, "BYPASS");
    }
    let (_, x, body) = send(&app, get_with("/page", &[("host", "victim.example")])).await;
    assert_eq!(x, "MISS");
    assert!(body.starts_with("host=victim.example "), "{body}");
    // One host, however it is spelled, is one key.
    let (_, x, again) = send(
        &app,
        get_with(
            "http://VICTIM.example:80/page",
            &[("host", "victim.example")],
        ),
    )
    .await;
    assert_eq!((x.as_str(), again.as_str()), ("HIT", body.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_7_6_1_fields_named_in_connection_shape_neither_key_nor_variant() {
    let redis = RedisServer::start();
    let app = reflecting().router().layer(layer(&redis, true).await);
    // `Connection: host` would make the key read a host the app never sees.
    let (_, x, _) = send(
        &app,
        get_with(
            "/page",
            &[("connection", "host"), ("host", "victim.example")],
        ),
    )
    .await;
    assert_eq!(x, "BYPASS", "no host is left to key");
    // `Connection: accept-language` on a route that varies on it.
    let (_, _, first) = send(
        &app,
        get_with(
            "/page",
            &[
                ("host", "victim.example"),
                ("connection", "accept-language"),
                ("accept-language", "de"),
            ],
        ),
    )
    .await;
    assert!(first.contains("lang=- "), "{first}");
    let (_, _, de) = send(
        &app,
        get_with(
            "/page",
            &[("host", "victim.example"), ("accept-language", "de")],
        ),
    )
    .await;
    assert!(de.contains("lang=de "), "a German client got {de:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_or_a_method_override_is_never_stored() {
    let redis = RedisServer::start();
    let app = reflecting().router().layer(layer(&redis, false).await);
    let with_body = Request::get("/page")
        .header(header::CONTENT_LENGTH, "4")
        .body(Body::from("evil"))
        .unwrap();
    let (_, x, body) = send(&app, with_body).await;
    assert_eq!(x, "BYPASS");
    assert!(body.contains("body=[evil]"), "{body}");
    let (_, x, _) = send(
        &app,
        get_with("/page", &[("x-http-method-override", "DELETE")]),
    )
    .await;
    assert_eq!(x, "BYPASS");
    let (_, x, body) = send(&app, req_get("/page")).await;
    assert_eq!(x, "MISS");
    assert!(
        body.contains("body=[]") && body.contains("override=-"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_never_leads_the_flight_others_wait_on() {
    let redis = RedisServer::start();
    // Each call takes 300 ms.
    let origin = Origin::reflecting().delay(Duration::from_millis(300));
    let app = origin.router().layer(layer(&redis, false).await);
    let with_body = Request::get("/slow")
        .header(header::CONTENT_LENGTH, "4")
        .body(Body::from("evil"))
        .unwrap();
    let poisoner = tokio::spawn(app.clone().oneshot(with_body));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let plain = tokio::spawn(app.clone().oneshot(req_get("/slow")));
    let (_, x, body) = read(plain.await.unwrap().unwrap()).await;
    assert_eq!(x, "MISS");
    assert!(body.contains("body=[]"), "the plain GET got {body:?}");
    let (_, x, _) = read(poisoner.await.unwrap().unwrap()).await;
    assert_eq!(x, "BYPASS");
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc3986_6_2_2_spellings_of_one_url_share_an_entry_and_every_invalidation() {
    let redis = RedisServer::start();
    let cache = layer(&redis, false).await;
    let handle = cache.handle();
    let app = reflecting().router().layer(cache);
    let (_, x, _) = send(&app, req_get("/items/7?q=%41%2c")).await;
    assert_eq!(x, "MISS");
    let (_, x, _) = send(&app, req_get("/items/%37?q=A%2C")).await;
    assert_eq!(x, "HIT");
    // Parameters an origin may read as one name are not reordered.
    let (_, x, _) = send(&app, req_get("/items/7?a=2&%61=1")).await;
    let (_, y, _) = send(&app, req_get("/items/7?%61=1&a=2")).await;
    assert_eq!((x.as_str(), y.as_str()), ("MISS", "MISS"));
    // An invalidation by any spelling removes the entry.
    handle
        .invalidate(&Method::GET, &Uri::from_static("/items/%37?q=%41%2C"))
        .await
        .unwrap();
    let (_, x, _) = send(&app, req_get("/items/7?q=A%2C")).await;
    assert_eq!(x, "MISS");
    handle.invalidate_prefix("/items/%37").await.unwrap();
    let (_, x, _) = send(&app, req_get("/items/7?q=A%2C")).await;
    assert_eq!(x, "MISS", "the prefix is normalised as keys are");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_of_the_previous_key_format_is_a_miss_during_a_rolling_deploy() {
    let redis = RedisServer::start();
    let cache = layer(&redis, false).await;
    let key = cache
        .handle()
        .key_for(&Method::GET, &Uri::from_static("/page"))
        .unwrap();
    let old = reflecting().router().layer(cache);
    send(&old, req_get("/page")).await;
    assert_eq!(send(&old, req_get("/page")).await.1, "HIT");
    // The same entry as an instance of key format 1 (entry format 4) would
    // have written it.
    let client = redis.client().await;
    let mut value: Vec<u8> = client.get::<Vec<u8>, _>(&key).await.unwrap();
    assert_eq!(&value[..3], b"TRC");
    value[3] = 0x84;
    let _: () = client
        .set(&key, value.as_slice(), None, None, false)
        .await
        .unwrap();
    // A new instance never serves it.
    let fresh = reflecting().router().layer(layer(&redis, false).await);
    let (_, x, _) = send(&fresh, req_get("/page")).await;
    assert_eq!(x, "MISS");
}
