//! HTTP caching rules, each test named after the RFC section it checks
//! (RFC 9111 caching, RFC 9110 semantics, RFC 5861 stale extensions), run
//! against the in-memory store and against a real Redis.

mod support;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Mutex,
    },
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use support::{reply, status, Origin, RedisServer};
use tower::{util::BoxCloneService, ServiceBuilder, ServiceExt};
use tower_redis_cache::{CachePolicy, CookiePolicy, RedisCacheLayer, RedisCacheLayerBuilder};

type Svc =
    BoxCloneService<Request<Full<Bytes>>, Response<tower_redis_cache::CacheBody<Body>>, Infallible>;

/// Where the layer stores: the in-memory store or a Redis of the test's own.
enum Backend {
    Memory,
    Redis(RedisServer),
}

impl Backend {
    fn builder(&self) -> RedisCacheLayerBuilder {
        let b = RedisCacheLayer::builder().store_timeout(Duration::from_secs(2));
        match self {
            Backend::Memory => b,
            Backend::Redis(r) => b.redis_url(r.url()),
        }
    }
}

struct Cache {
    svc: Svc,
    origin: Origin,
    handle: tower_redis_cache::CacheHandle,
}

/// What a client got.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn age(&self) -> u64 {
        self.header("age").map_or(0, |a| a.parse().unwrap())
    }
}

async fn cache<F>(backend: &Backend, policy: CachePolicy, script: F) -> Cache
where
    F: Fn(&Request<Bytes>, usize) -> Response<Body> + Send + Sync + 'static,
{
    cache_with(
        backend.builder().default_policy(policy),
        Origin::new(script),
    )
    .await
}

async fn cache_with(builder: RedisCacheLayerBuilder, origin: Origin) -> Cache {
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(origin.clone());
    // Let a Redis store connect before the first request.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Cache {
        svc: BoxCloneService::new(svc),
        origin,
        handle,
    }
}

impl Cache {
    async fn send(&self, req: Request<Full<Bytes>>) -> Got {
        let res = self.svc.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Got {
        self.send(req("GET", uri, headers)).await
    }
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::default()).unwrap()
}

fn origin_driven() -> CachePolicy {
    CachePolicy::new().origin_driven()
}

fn http_date(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(t)
}

// ---------------------------------------------------------------- freshness

async fn rfc9111_3_handle_put_stores_as_the_layer_would_after_a_miss(b: Backend) {
    let c = cache(&b, origin_driven(), |_, n| {
        reply(&[("cache-control", "max-age=600")], format!("call {n}"))
    })
    .await;
    // Fresh for one second by its own `max-age`, and without a `Date`.
    let put = Response::builder()
        .header("cache-control", "max-age=1")
        .body(Bytes::from("put"))
        .unwrap();
    assert!(c.handle.put(&"/short".parse().unwrap(), put).await.unwrap());
    let hit = c.get("/short", &[]).await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("HIT", "put"));
    assert!(
        hit.header("date").is_some(),
        "a stored response without Date gets one (RFC 9110 §6.6.1)"
    );
    // Not storable by a shared cache: `private` (as the layer decides).
    let private = Response::builder()
        .header("cache-control", "private, max-age=600")
        .body(Bytes::from("private"))
        .unwrap();
    assert!(!c
        .handle
        .put(&"/private".parse().unwrap(), private)
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = c.get("/short", &[]).await;
    assert_eq!(
        (after.x_cache(), after.body.as_str()),
        ("MISS", "call 1"),
        "the put response's own max-age=1 decides its freshness"
    );
}

async fn rfc9111_4_2_1_max_age_and_s_maxage_decide_freshness(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        let cc = if p.uri().path() == "/shared" {
            "max-age=3600, s-maxage=1"
        } else {
            "max-age=1"
        };
        reply(&[("cache-control", cc)], format!("call {n}"))
    })
    .await;
    for path in ["/own", "/shared"] {
        let first = c.get(path, &[]).await;
        assert_eq!(first.x_cache(), "MISS");
        let hit = c.get(path, &[]).await;
        assert_eq!(
            (hit.x_cache(), hit.body.as_str()),
            ("HIT", first.body.as_str())
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for path in ["/own", "/shared"] {
        let after = c.get(path, &[]).await;
        assert_eq!(after.x_cache(), "MISS", "{path} must be stale after 1 s");
    }
    assert_eq!(c.origin.calls(), 4);
}

async fn rfc9111_4_2_1_expires_minus_date_and_an_invalid_expires_is_stale(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        let expires = if p.uri().path() == "/bad" {
            "0".to_owned()
        } else {
            http_date(3600)
        };
        reply(
            &[
                ("date", &http_date(0)),
                ("expires", &expires),
                ("etag", "\"e\""),
            ],
            format!("call {n}"),
        )
    })
    .await;
    c.get("/good", &[]).await;
    assert_eq!(c.get("/good", &[]).await.x_cache(), "HIT");
    c.get("/bad", &[]).await;
    let again = c.get("/bad", &[]).await;
    assert_ne!(again.x_cache(), "HIT", "Expires: 0 is already expired");
    assert_eq!(c.origin.calls(), 3);
}

async fn rfc9111_4_2_dates_in_other_formats_several_expires_and_a_bad_age(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        // An hour ahead, as RFC 850 in lower case, with its Date the same way.
        let hour = http_date(3600).to_ascii_lowercase();
        let now = http_date(0).to_ascii_lowercase();
        let mut r = reply(&[("date", now.as_str())], format!("call {n}"));
        let h = r.headers_mut();
        match p.uri().path() {
            "/lower" => {
                h.insert("expires", hour.parse().unwrap());
            }
            "/two-expires" => {
                h.append("expires", hour.parse().unwrap());
                h.append("expires", hour.parse().unwrap());
                h.insert("etag", "\"e\"".parse().unwrap());
            }
            _ => {
                // Age "30.5" is not an integer: ignored, so not 30 s old.
                h.insert("cache-control", "max-age=60".parse().unwrap());
                h.insert("age", "30.5".parse().unwrap());
            }
        }
        r
    })
    .await;
    c.get("/lower", &[]).await;
    assert_eq!(c.get("/lower", &[]).await.x_cache(), "HIT");
    c.get("/two-expires", &[]).await;
    let again = c.get("/two-expires", &[]).await;
    assert_ne!(again.x_cache(), "HIT", "several Expires lines mean stale");
    c.get("/bad-age", &[]).await;
    let hit = c.get("/bad-age", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(
        hit.age() < 5,
        "an invalid Age is ignored: age {}",
        hit.age()
    );
    assert_eq!(c.origin.calls(), 4);
}

async fn rfc9110_15_2_an_interim_status_from_the_service_is_never_stored(b: Backend) {
    let c = cache(&b, origin_driven(), |_, n| {
        status(103, &[("cache-control", "max-age=60")], format!("call {n}"))
    })
    .await;
    assert_eq!(c.get("/early", &[]).await.status, 103);
    let again = c.get("/early", &[]).await;
    assert_ne!(again.x_cache(), "HIT");
    assert_eq!(c.origin.calls(), 2);
}

async fn rfc9213_a_handler_overrides_its_routes_ttl_with_the_caches_own_field(b: Backend) {
    let own = http::HeaderName::from_static("api-cache-control");
    let c = cache_with(
        b.builder()
            .own_cache_control(own)
            .default_policy(CachePolicy::new().ttl(Duration::from_secs(60))),
        Origin::new(|p, n| {
            let own = match p.uri().path() {
                "/no-store" => "no-store",
                "/short" => "max-age=1",
                "/invalid" => "max-age=1, ;;",
                _ => "max-age=600",
            };
            reply(
                &[
                    ("api-cache-control", own),
                    ("cdn-cache-control", "no-store"),
                ],
                format!("call {n}"),
            )
        }),
    )
    .await;
    // Never sent on, stored or not.
    let first = c.get("/no-store", &[]).await;
    assert!(first.header("api-cache-control").is_none());
    assert_eq!(c.get("/no-store", &[]).await.x_cache(), "MISS");
    // A shorter and a longer freshness than the route's 60 s.
    c.get("/short", &[]).await;
    c.get("/long", &[]).await;
    let hit = c.get("/long", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.header("api-cache-control").is_none());
    // CDN-Cache-Control is for CDNs: a policy-driven route does not read it.
    c.get("/invalid", &[]).await;
    assert_eq!(c.get("/invalid", &[]).await.x_cache(), "HIT");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_ne!(
        c.get("/short", &[]).await.x_cache(),
        "HIT",
        "max-age=1 ran out"
    );
    // The invalid field was ignored: the route's TTL still holds.
    assert_eq!(c.get("/invalid", &[]).await.x_cache(), "HIT");
}

async fn rfc9111_4_2_2_no_heuristic_freshness_unless_configured(b: Backend) {
    let lm = http_date(-100_000);
    let script = move |_: &Request<Bytes>, n: usize| {
        reply(&[("last-modified", lm.as_str())], format!("call {n}"))
    };
    let off = cache(&b, origin_driven(), script.clone()).await;
    off.get("/h", &[]).await;
    assert_ne!(off.get("/h", &[]).await.x_cache(), "HIT");
    let on = cache_with(
        b.builder()
            .prefix("heuristic")
            .default_policy(origin_driven().heuristic_freshness(0.1)),
        Origin::new(script),
    )
    .await;
    on.get("/h", &[]).await;
    assert_eq!(on.get("/h", &[]).await.x_cache(), "HIT");
    assert_eq!(on.origin.calls(), 1);
}

async fn rfc9111_4_2_3_age_includes_the_upstream_age(b: Backend) {
    let c = cache(&b, origin_driven(), |_, _| {
        reply(&[("cache-control", "max-age=3600"), ("age", "100")], "aged")
    })
    .await;
    let miss = c.get("/a", &[]).await;
    assert_eq!(
        miss.header("age"),
        Some("100"),
        "the origin's Age passes through"
    );
    let hit = c.get("/a", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!((100..=102).contains(&hit.age()), "age {}", hit.age());
    // max-age counts the upstream age: 100 s old with max-age=50 is stale.
    let stale = cache_with(
        b.builder().prefix("old").default_policy(origin_driven()),
        Origin::new(|_, _| reply(&[("cache-control", "max-age=50"), ("age", "100")], "old")),
    )
    .await;
    stale.get("/a", &[]).await;
    assert_ne!(stale.get("/a", &[]).await.x_cache(), "HIT");
}

async fn rfc9110_6_6_1_date_is_kept_and_added_when_missing(b: Backend) {
    let date = "Wed, 21 Oct 2015 07:28:00 GMT";
    let c = cache(&b, CachePolicy::new(), move |p, _| {
        if p.uri().path() == "/dated" {
            reply(&[("date", date)], "x")
        } else {
            reply(&[], "x")
        }
    })
    .await;
    c.get("/dated", &[]).await;
    let hit = c.get("/dated", &[]).await;
    assert_eq!((hit.x_cache(), hit.header("date")), ("HIT", Some(date)));
    let miss = c.get("/undated", &[]).await;
    let added = miss.header("date").expect("a Date is added").to_owned();
    let hit = c.get("/undated", &[]).await;
    assert_eq!(hit.header("date"), Some(added.as_str()));
}

async fn rfc9111_3_policy_driven_ttl_may_be_shortened_by_max_age(b: Backend) {
    let script = |_: &Request<Bytes>, n: usize| {
        reply(&[("cache-control", "max-age=1")], format!("call {n}"))
    };
    let policy = CachePolicy::new()
        .ttl(Duration::from_secs(3600))
        .jitter(0.0);
    let plain = cache(&b, policy.clone(), script).await;
    let respecting = cache_with(
        b.builder()
            .prefix("respect")
            .default_policy(policy.respect_max_age(true)),
        Origin::new(script),
    )
    .await;
    plain.get("/p", &[]).await;
    respecting.get("/p", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        plain.get("/p", &[]).await.x_cache(),
        "HIT",
        "the TTL decides"
    );
    assert_eq!(respecting.get("/p", &[]).await.x_cache(), "MISS");
}

// ---------------------------------------------------------------- response directives

async fn rfc9111_5_2_2_4_no_cache_response_is_revalidated_every_time(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        if p.headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            status(304, &[("etag", "\"v1\"")], "")
        } else {
            reply(
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
                format!("body {n}"),
            )
        }
    })
    .await;
    let first = c.get("/n", &[]).await;
    let second = c.get("/n", &[]).await;
    assert_eq!(c.origin.calls(), 2, "every use goes to the origin");
    assert_eq!(c.origin.last_headers()["if-none-match"], "\"v1\"");
    assert_eq!(second.x_cache(), "REVALIDATED");
    assert_eq!(
        (second.status, second.body.as_str()),
        (200, first.body.as_str())
    );
}

async fn rfc9111_5_2_2_4_qualified_no_cache_leaves_the_named_fields_out(b: Backend) {
    let c = cache(&b, origin_driven(), |_, n| {
        reply(
            &[
                (
                    "cache-control",
                    "max-age=60, no-cache=\"x-user\", private=\"x-secret\"",
                ),
                ("x-user", "alice"),
                ("x-secret", "s"),
                ("x-shared", "yes"),
            ],
            format!("call {n}"),
        )
    })
    .await;
    let miss = c.get("/q", &[]).await;
    assert_eq!(
        miss.header("x-user"),
        Some("alice"),
        "the client that caused it gets them"
    );
    let hit = c.get("/q", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!((hit.header("x-user"), hit.header("x-secret")), (None, None));
    assert_eq!(hit.header("x-shared"), Some("yes"));
}

async fn rfc9111_5_2_2_2_must_revalidate_forbids_serving_stale(b: Backend) {
    let policy = origin_driven()
        .stale_while_revalidate(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(60));
    let c = cache(&b, policy, |p, n| {
        let cc = if p.uri().path() == "/strict" {
            "max-age=1, must-revalidate"
        } else {
            "max-age=1"
        };
        if n > 2 {
            return status(500, &[], "down");
        }
        reply(&[("cache-control", cc)], format!("call {n}"))
    })
    .await;
    c.get("/strict", &[]).await;
    c.get("/lax", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.get("/lax", &[]).await.x_cache(), "STALE");
    let strict = c.get("/strict", &[]).await;
    assert_eq!(
        strict.status, 500,
        "a must-revalidate response is never served stale"
    );
}

async fn rfc5861_stale_while_revalidate_from_the_response(b: Backend) {
    let c = cache(&b, origin_driven(), |_, n| {
        reply(
            &[("cache-control", "max-age=1, stale-while-revalidate=60")],
            format!("call {n}"),
        )
    })
    .await;
    c.get("/s", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = c.get("/s", &[]).await;
    assert_eq!((stale.x_cache(), stale.body.as_str()), ("STALE", "call 1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = c.get("/s", &[]).await;
    assert_eq!((fresh.x_cache(), fresh.body.as_str()), ("HIT", "call 2"));
}

async fn rfc5861_stale_if_error_from_the_response(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        if n > 1 {
            return status(503, &[], "down");
        }
        let cc = if p.uri().path() == "/covered" {
            "max-age=1, stale-if-error=60"
        } else {
            "max-age=1"
        };
        reply(&[("cache-control", cc)], format!("call {n}"))
    })
    .await;
    c.get("/covered", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = c.get("/covered", &[]).await;
    assert_eq!(
        (stale.status, stale.x_cache(), stale.body.as_str()),
        (200, "STALE", "call 1")
    );
}

async fn rfc9111_3_no_store_private_and_set_cookie_are_never_stored(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        let h: &[(&str, &str)] = match p.uri().path() {
            "/no-store" => &[("cache-control", "max-age=60, no-store")],
            "/private" => &[("cache-control", "max-age=60, private")],
            _ => &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        };
        reply(h, format!("call {n}"))
    })
    .await;
    for path in ["/no-store", "/private", "/cookie"] {
        c.get(path, &[]).await;
        assert_eq!(c.get(path, &[]).await.x_cache(), "MISS", "{path}");
    }
    let stripped = cache_with(
        b.builder()
            .prefix("strip")
            .default_policy(origin_driven().strip_set_cookie(true)),
        Origin::new(|_, n| {
            reply(
                &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
                format!("{n}"),
            )
        }),
    )
    .await;
    let miss = stripped.get("/cookie", &[]).await;
    assert_eq!(
        miss.header("set-cookie"),
        Some("s=1"),
        "the client that caused it keeps it"
    );
    let hit = stripped.get("/cookie", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("set-cookie"), None, "never replayed to others");
}

async fn rfc9111_5_2_2_7_a_malformed_private_or_no_store_is_never_stored(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        let cc = match p.uri().path() {
            "/spaced" => "max-age=60, private =\"x-user\"",
            "/semicolon" => "s-maxage=60, max-age=60;private",
            "/empty" => "max-age=60, private=",
            "/unquoted" => "max-age=60, private=x-user",
            "/no-store" => "max-age=60, no-store =\"x\"",
            _ => "max-age=60",
        };
        reply(&[("cache-control", cc)], format!("user page {n}"))
    })
    .await;
    c.get("/control", &[]).await;
    assert_eq!(c.get("/control", &[]).await.x_cache(), "HIT");
    for path in ["/spaced", "/semicolon", "/empty", "/unquoted", "/no-store"] {
        let first = c.get(path, &[]).await;
        let second = c.get(path, &[]).await;
        assert_eq!(second.x_cache(), "MISS", "{path} was stored");
        assert_ne!(first.body, second.body, "{path} was served to another");
    }
}

async fn rfc9110_7_6_1_hop_by_hop_headers_are_not_stored(b: Backend) {
    let c = cache(&b, CachePolicy::new(), |_, _| {
        reply(
            &[
                ("connection", "x-session-hint"),
                ("x-session-hint", "abc"),
                ("keep-alive", "timeout=5"),
                ("x-kept", "yes"),
            ],
            "x",
        )
    })
    .await;
    c.get("/h", &[]).await;
    let hit = c.get("/h", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("x-kept"), Some("yes"));
    for gone in ["connection", "x-session-hint", "keep-alive"] {
        assert_eq!(hit.header(gone), None, "{gone}");
    }
}

// ---------------------------------------------------------------- request directives

async fn rfc9111_5_2_1_4_request_no_cache_and_max_age_0_revalidate(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        if p.headers().contains_key("if-none-match") {
            status(
                304,
                &[("etag", "\"v\""), ("cache-control", "max-age=600")],
                "",
            )
        } else {
            reply(
                &[("cache-control", "max-age=600"), ("etag", "\"v\"")],
                format!("call {n}"),
            )
        }
    })
    .await;
    c.get("/r", &[]).await;
    assert_eq!(c.get("/r", &[]).await.x_cache(), "HIT");
    for h in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ] {
        let before = c.origin.calls();
        let got = c.get("/r", &[h]).await;
        assert_eq!(c.origin.calls(), before + 1, "{h:?} goes to the origin");
        assert_eq!(got.x_cache(), "REVALIDATED", "{h:?}");
        assert_eq!(got.body, "call 1");
    }
    // Pragma is ignored when Cache-Control is present.
    let got = c
        .get(
            "/r",
            &[("pragma", "no-cache"), ("cache-control", "max-stale")],
        )
        .await;
    assert_eq!(got.x_cache(), "HIT");
}

async fn rfc9111_5_2_1_request_max_stale_min_fresh_and_max_age(b: Backend) {
    let c = cache(&b, origin_driven(), |_, n| {
        reply(&[("cache-control", "max-age=2")], format!("call {n}"))
    })
    .await;
    c.get("/m", &[]).await;
    let f = c.get("/m", &[("cache-control", "min-fresh=60")]).await;
    assert_eq!(f.x_cache(), "MISS", "not fresh for another 60 s");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let s = c.get("/m", &[("cache-control", "max-stale=60")]).await;
    assert_eq!(s.x_cache(), "STALE", "max-stale accepts a stale response");
    let s = c.get("/m", &[("cache-control", "max-stale")]).await;
    assert_eq!(s.x_cache(), "STALE");
    let fresh = c.get("/m", &[]).await;
    assert_eq!(fresh.x_cache(), "MISS");
    let hit = c.get("/m", &[("cache-control", "max-age=30")]).await;
    assert_eq!(hit.x_cache(), "HIT");
}

async fn rfc9111_5_2_1_7_only_if_cached_is_a_504_on_a_miss(b: Backend) {
    let c = cache(&b, origin_driven(), |_, _| {
        reply(&[("cache-control", "max-age=60")], "x")
    })
    .await;
    let miss = c.get("/o", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(miss.status, 504);
    assert_eq!(c.origin.calls(), 0);
    c.get("/o", &[]).await;
    let hit = c.get("/o", &[("cache-control", "only-if-cached")]).await;
    assert_eq!((hit.status, hit.x_cache()), (200, "HIT"));
}

async fn rfc9111_5_2_1_5_request_no_store_is_not_stored_but_may_be_served(b: Backend) {
    let c = cache(&b, CachePolicy::new(), |_, n| {
        reply(&[], format!("call {n}"))
    })
    .await;
    c.get("/n", &[("cache-control", "no-store")]).await;
    assert_eq!(
        c.get("/n", &[]).await.x_cache(),
        "MISS",
        "the first was not stored"
    );
    let hit = c.get("/n", &[("cache-control", "no-store")]).await;
    assert_eq!(hit.x_cache(), "HIT");
}

async fn request_directives_can_be_ignored_on_a_route(b: Backend) {
    let c = cache(
        &b,
        CachePolicy::new().honor_request_cache_control(false),
        |_, n| reply(&[], format!("call {n}")),
    )
    .await;
    c.get("/i", &[]).await;
    let got = c.get("/i", &[("cache-control", "no-cache")]).await;
    assert_eq!(got.x_cache(), "HIT");
    assert_eq!(c.origin.calls(), 1);
}

// ---------------------------------------------------------------- Vary

async fn rfc9111_4_1_vary_stores_one_variant_per_selecting_header_value(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        let lang = p
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap());
        reply(
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            format!("{lang} {n}"),
        )
    })
    .await;
    let en = c.get("/v", &[("accept-language", "en")]).await;
    let fr = c.get("/v", &[("accept-language", "fr")]).await;
    assert_eq!((en.body.as_str(), fr.body.as_str()), ("en 1", "fr 2"));
    let en2 = c.get("/v", &[("accept-language", "en")]).await;
    let fr2 = c.get("/v", &[("accept-language", "fr")]).await;
    let none = c.get("/v", &[]).await;
    assert_eq!((en2.x_cache(), en2.body.as_str()), ("HIT", "en 1"));
    assert_eq!((fr2.x_cache(), fr2.body.as_str()), ("HIT", "fr 2"));
    assert_eq!((none.x_cache(), none.body.as_str()), ("MISS", "none 3"));
    // Normalized: whitespace around list items does not make a new variant.
    let c2 = cache_with(
        b.builder().prefix("norm").default_policy(origin_driven()),
        Origin::new(|_, n| {
            reply(
                &[("cache-control", "max-age=60"), ("vary", "accept")],
                format!("{n}"),
            )
        }),
    )
    .await;
    c2.get("/v", &[("accept", "text/html,application/json")])
        .await;
    let same = c2
        .get("/v", &[("accept", "text/html, application/json")])
        .await;
    assert_eq!(same.x_cache(), "HIT");
}

async fn rfc9111_4_1_vary_star_is_never_served_and_a_changed_vary_is_followed(b: Backend) {
    let calls = AtomicUsize::new(0);
    let c = cache(&b, origin_driven(), move |p, n| {
        if p.uri().path() == "/star" {
            return reply(
                &[("cache-control", "max-age=60"), ("vary", "*")],
                format!("{n}"),
            );
        }
        // The first responses vary by Accept, later ones by X-Tenant.
        let vary = if calls.fetch_add(1, SeqCst) < 1 {
            "accept"
        } else {
            "x-tenant"
        };
        let tenant = p
            .headers()
            .get("x-tenant")
            .map_or("-", |v| v.to_str().unwrap());
        reply(
            &[("cache-control", "max-age=60"), ("vary", vary)],
            format!("{vary} {tenant} {n}"),
        )
    })
    .await;
    c.get("/star", &[]).await;
    assert_eq!(c.get("/star", &[]).await.x_cache(), "MISS");
    let (acc_a, acc_b) = (("accept", "text/a"), ("accept", "text/b"));
    let (ten_a, ten_b) = (("x-tenant", "a"), ("x-tenant", "b"));
    let first = c.get("/c", &[acc_a, ten_a]).await;
    assert_eq!(first.body, "accept a 3", "after two calls for /star");
    assert_eq!(c.get("/c", &[acc_a, ten_a]).await.x_cache(), "HIT");
    // Another Accept: a miss, and the origin now varies by tenant.
    let changed = c.get("/c", &[acc_b, ten_b]).await;
    assert_eq!(
        (changed.x_cache(), changed.body.as_str()),
        ("MISS", "x-tenant b 4")
    );
    // Selection now follows the new Vary: Accept no longer matters...
    let by_tenant = c.get("/c", &[acc_a, ten_b]).await;
    assert_eq!(
        (by_tenant.x_cache(), by_tenant.body.as_str()),
        ("HIT", "x-tenant b 4")
    );
    // ...and the variant stored under the old Vary is never selected again.
    let old = c.get("/c", &[acc_a, ten_a]).await;
    assert_eq!((old.x_cache(), old.body.as_str()), ("MISS", "x-tenant a 5"));
}

// ---------------------------------------------------------------- validators

async fn rfc9110_13_1_2_if_none_match_is_answered_with_304_from_the_cache(b: Backend) {
    let c = cache(&b, origin_driven(), |_, _| {
        reply(
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"abc\""),
                ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ("content-type", "text/plain"),
            ],
            "body",
        )
    })
    .await;
    // A conditional miss: the cache fetches the whole response, stores it,
    // and answers the condition itself.
    let first = c.get("/e", &[("if-none-match", "\"abc\"")]).await;
    assert_eq!((first.status, first.body.as_str()), (304, ""));
    assert!(!c.origin.last_headers().contains_key("if-none-match"));
    let hit = c.get("/e", &[("if-none-match", "W/\"abc\"")]).await;
    assert_eq!((hit.status, hit.x_cache()), (304, "HIT"));
    assert_eq!(hit.header("etag"), Some("\"abc\""));
    assert_eq!(hit.header("cache-control"), Some("max-age=60"));
    assert_eq!(
        hit.header("content-type"),
        None,
        "304s carry no body metadata"
    );
    let other = c.get("/e", &[("if-none-match", "\"zzz\"")]).await;
    assert_eq!((other.status, other.body.as_str()), (200, "body"));
    let ims = c
        .get(
            "/e",
            &[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")],
        )
        .await;
    assert_eq!(ims.status, 304);
    let older = c
        .get(
            "/e",
            &[("if-modified-since", "Wed, 21 Oct 2015 07:00:00 GMT")],
        )
        .await;
    assert_eq!(older.status, 200);
    assert_eq!(c.origin.calls(), 1);
}

async fn rfc9110_8_8_3_policy_mode_adds_a_strong_etag_stable_across_instances(b: Backend) {
    let script = |_: &Request<Bytes>, _: usize| reply(&[], "same bytes");
    let one = cache(&b, CachePolicy::new().etag(true), script).await;
    let two = cache_with(
        b.builder()
            .prefix("other")
            .default_policy(CachePolicy::new().etag(true)),
        Origin::new(script),
    )
    .await;
    let a = one.get("/t", &[]).await;
    let b2 = two.get("/t", &[]).await;
    let etag = a.header("etag").expect("an etag").to_owned();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"));
    assert_eq!(b2.header("etag"), Some(etag.as_str()));
    let not_modified = one.get("/t", &[("if-none-match", &etag)]).await;
    assert_eq!((not_modified.status, not_modified.x_cache()), (304, "HIT"));
}

async fn rfc9111_4_3_4_a_304_freshens_the_stored_response_and_updates_its_headers(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        if p.headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            status(
                304,
                &[
                    ("cache-control", "max-age=600"),
                    ("etag", "\"v1\""),
                    ("x-version", "2"),
                ],
                "",
            )
        } else {
            reply(
                &[
                    ("cache-control", "max-age=1"),
                    ("etag", "\"v1\""),
                    ("x-version", "1"),
                ],
                format!("body {n}"),
            )
        }
    })
    .await;
    c.get("/u", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revalidated = c.get("/u", &[]).await;
    assert_eq!(revalidated.x_cache(), "REVALIDATED");
    assert_eq!(revalidated.body, "body 1", "the stored body");
    assert_eq!(
        revalidated.header("x-version"),
        Some("2"),
        "the 304's headers"
    );
    assert_eq!(revalidated.header("content-length"), Some("6"));
    let hit = c.get("/u", &[]).await;
    assert_eq!((hit.x_cache(), hit.header("x-version")), ("HIT", Some("2")));
    assert_eq!(hit.header("cache-control"), Some("max-age=600"));
    assert_eq!(c.origin.calls(), 2);
    assert_eq!(c.handle.stats().revalidations, 1);
}

async fn rfc9111_4_3_5_head_is_answered_from_get_and_never_makes_an_entry(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        let body = if p.method() == http::Method::HEAD {
            String::new()
        } else {
            format!("get {n}")
        };
        reply(&[("cache-control", "max-age=60")], body)
    })
    .await;
    let head = c.send(req("HEAD", "/h", &[])).await;
    assert_eq!(head.status, 200);
    let get = c.get("/h", &[]).await;
    assert_eq!(
        (get.x_cache(), get.body.as_str()),
        ("MISS", "get 2"),
        "HEAD made no entry"
    );
    let head = c.send(req("HEAD", "/h", &[])).await;
    assert_eq!((head.x_cache(), head.body.as_str()), ("HIT", ""));
    assert_eq!(head.header("content-length"), Some("5"));
    assert_eq!(c.get("/h", &[]).await.body, "get 2");
}

// ---------------------------------------------------------------- invalidation

async fn rfc9111_4_4_unsafe_methods_invalidate_target_and_same_origin_locations(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        if p.method() == http::Method::GET {
            return reply(
                &[("cache-control", "max-age=600")],
                format!("{} {n}", p.uri().path()),
            );
        }
        match p.uri().path() {
            "/items" => status(
                201,
                &[
                    ("location", "/items/1"),
                    ("content-location", "http://elsewhere.example/other"),
                ],
                "",
            ),
            "/fail" => status(500, &[], ""),
            _ => status(204, &[], ""),
        }
    })
    .await;
    for path in ["/items", "/items/1", "/other", "/fail", "/ext"] {
        c.get(path, &[]).await;
        assert_eq!(c.get(path, &[]).await.x_cache(), "HIT");
    }
    let posted = c
        .send(req("POST", "/items", &[("host", "shop.example")]))
        .await;
    assert_eq!(posted.status, 201);
    assert_eq!(c.get("/items", &[]).await.x_cache(), "MISS", "the target");
    assert_eq!(
        c.get("/items/1", &[]).await.x_cache(),
        "MISS",
        "its Location"
    );
    assert_eq!(
        c.get("/other", &[]).await.x_cache(),
        "HIT",
        "another origin is not ours"
    );
    c.send(req("M-SEARCH", "/ext", &[])).await;
    assert_eq!(
        c.get("/ext", &[]).await.x_cache(),
        "MISS",
        "any unsafe method"
    );
    c.send(req("DELETE", "/fail", &[])).await;
    assert_eq!(
        c.get("/fail", &[]).await.x_cache(),
        "HIT",
        "a failed request changes nothing"
    );
    // Policy-driven routes leave it to the handle unless asked.
    let p = cache_with(
        b.builder().prefix("policy"),
        Origin::new(|p, n| {
            if p.method() == http::Method::GET {
                reply(&[], format!("{n}"))
            } else {
                status(204, &[], "")
            }
        }),
    )
    .await;
    p.get("/x", &[]).await;
    p.send(req("PUT", "/x", &[])).await;
    assert_eq!(p.get("/x", &[]).await.x_cache(), "HIT");
}

// ---------------------------------------------------------------- safety

async fn rfc9111_3_5_authorization_only_with_a_response_that_allows_it(b: Backend) {
    let c = cache(&b, origin_driven(), |p, n| {
        let cc = if p.uri().path() == "/public" {
            "public, max-age=60"
        } else {
            "max-age=60"
        };
        reply(&[("cache-control", cc)], format!("{} {n}", p.uri().path()))
    })
    .await;
    let auth = [("authorization", "Bearer alice")];
    c.get("/mine", &auth).await;
    assert_eq!(c.get("/mine", &auth).await.x_cache(), "MISS", "not stored");
    // Stored for an anonymous request: still not served to Alice.
    c.get("/mine", &[]).await;
    assert_eq!(c.get("/mine", &[]).await.x_cache(), "HIT");
    assert_eq!(c.get("/mine", &auth).await.x_cache(), "MISS");
    c.get("/public", &auth).await;
    let hit = c.get("/public", &[("authorization", "Bearer bob")]).await;
    assert_eq!(hit.x_cache(), "HIT", "public allows it");
}

/// An origin that renders each user's own page from the session cookie, and
/// says nothing about caching unless `cc` is given.
fn user_page(cc: Option<&'static str>) -> impl Fn(&Request<Bytes>, usize) -> Response<Body> {
    move |p, n| {
        let user = p
            .headers()
            .get("cookie")
            .map_or("anonymous", |v| v.to_str().unwrap());
        let modified = http_date(-100_000);
        let mut headers = vec![("last-modified", modified.as_str())];
        headers.extend(cc.map(|cc| ("cache-control", cc)));
        reply(&headers, format!("account page of {user} ({n})"))
    }
}

async fn rfc9111_4_2_4_a_never_fresh_response_is_not_served_on_max_stale(b: Backend) {
    // Never fresh: no explicit freshness (with or without a validator),
    // max-age=0, an Expires in the past, no-cache.
    let past = http_date(-60);
    let c = cache(&b, origin_driven(), move |p, n| {
        let h: Vec<(&str, &str)> = match p.uri().path() {
            "/plain" => vec![],
            "/validated" => vec![("etag", "\"v\"")],
            "/zero" => vec![("cache-control", "max-age=0")],
            "/expired" => vec![("expires", past.as_str())],
            _ => vec![("cache-control", "no-cache")],
        };
        reply(&h, format!("{} {n}", p.uri().path()))
    })
    .await;
    for path in ["/plain", "/validated", "/zero", "/expired", "/no-cache"] {
        let first = c.get(path, &[]).await;
        for cc in ["max-stale", "max-stale=3600"] {
            let before = c.origin.calls();
            let other = c.get(path, &[("cache-control", cc)]).await;
            assert_eq!(
                c.origin.calls(),
                before + 1,
                "{path} {cc}: origin not asked"
            );
            assert_ne!(other.body, first.body, "{path} {cc}: served unrevalidated");
            assert_ne!(other.x_cache(), "STALE", "{path} {cc}");
        }
        let before = c.origin.calls();
        let head = c
            .send(req("HEAD", path, &[("cache-control", "max-stale")]))
            .await;
        assert_eq!(c.origin.calls(), before + 1, "{path}: HEAD not forwarded");
        assert_ne!(head.x_cache(), "STALE", "{path}: HEAD");
    }
}

async fn rfc9111_5_2_1_7_only_if_cached_never_gets_a_never_fresh_response(b: Backend) {
    let c = cache(&b, origin_driven(), user_page(None)).await;
    c.get("/account", &[]).await;
    for cc in ["only-if-cached", "max-stale, only-if-cached"] {
        let got = c.get("/account", &[("cache-control", cc)]).await;
        assert_eq!((got.status, got.body.as_str()), (504, ""), "{cc}");
    }
    assert_eq!(c.origin.calls(), 1, "only-if-cached never asks the origin");
}

async fn rfc5861_stale_if_error_never_serves_a_never_fresh_response(b: Backend) {
    let policy = origin_driven().stale_if_error(Duration::from_secs(600));
    let c = cache(&b, policy, |p, n| {
        if n > 1 {
            return status(503, &[], "down");
        }
        let cc = if p.uri().path() == "/directive" {
            "stale-if-error=600"
        } else {
            "public"
        };
        reply(&[("cache-control", cc)], format!("call {n}"))
    })
    .await;
    for path in ["/policy", "/directive"] {
        c.get(path, &[]).await;
    }
    for path in ["/policy", "/directive"] {
        let got = c.get(path, &[]).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (503, "down"),
            "{path}: a never-fresh entry stood in for the failure"
        );
    }
}

async fn rfc5861_stale_while_revalidate_never_serves_a_never_fresh_response(b: Backend) {
    let policy = origin_driven().stale_while_revalidate(Duration::from_secs(600));
    let c = cache(&b, policy, |p, n| {
        let cc = if p.uri().path() == "/directive" {
            "stale-while-revalidate=600"
        } else {
            "public"
        };
        reply(&[("cache-control", cc)], format!("call {n}"))
    })
    .await;
    for path in ["/policy", "/directive"] {
        let first = c.get(path, &[]).await;
        let second = c.get(path, &[]).await;
        assert_ne!(second.x_cache(), "STALE", "{path}");
        assert_ne!(second.body, first.body, "{path}: served unrevalidated");
    }
    assert_eq!(c.origin.calls(), 4);
}

async fn rfc9111_4_a_never_fresh_response_is_not_handed_to_coalesced_requests(b: Backend) {
    let origin = Origin::new(|p, n| {
        let user = p
            .headers()
            .get("x-user")
            .map_or("-", |v| v.to_str().unwrap());
        reply(&[], format!("page of {user} ({n})"))
    })
    .delay(Duration::from_millis(300));
    let c = cache_with(b.builder().default_policy(origin_driven()), origin).await;
    let users: Vec<String> = (0..5).map(|i| format!("user{i}")).collect();
    let pages = futures_util::future::join_all(
        users
            .iter()
            .map(|user| c.send(req("GET", "/me", &[("x-user", user.as_str())]))),
    )
    .await;
    for (user, page) in users.iter().zip(pages) {
        assert!(
            page.body.starts_with(&format!("page of {user} ")),
            "{user} got {}",
            page.body
        );
    }
    assert_eq!(c.origin.calls(), 5, "each request was forwarded");
}

async fn rfc9111_3_5_a_request_with_cookie_is_treated_like_one_with_authorization(b: Backend) {
    let alice = [("cookie", "session=alice")];
    let bob = [("cookie", "session=bob")];
    // A per-user page that forgot `private`, with explicit freshness.
    let c = cache(&b, origin_driven(), user_page(Some("max-age=600"))).await;
    let mine = c.get("/account", &alice).await;
    assert_eq!(mine.body, "account page of session=alice (1)");
    for (who, headers) in [
        ("bob", &bob[..]),
        (
            "bob, max-stale",
            &[bob[0], ("cache-control", "max-stale")][..],
        ),
        ("anonymous", &[][..]),
        (
            "anonymous, max-stale",
            &[("cache-control", "max-stale")][..],
        ),
    ] {
        let got = c.get("/account", headers).await;
        assert!(!got.body.contains("alice"), "{who} got {}", got.body);
    }
    // Stored for an anonymous request: not served to a request with a cookie.
    let anonymous = c.get("/account", &[]).await;
    assert_eq!(anonymous.x_cache(), "HIT");
    let got = c.get("/account", &bob).await;
    assert!(got.body.contains("session=bob"), "bob got {}", got.body);
    // A page without explicit freshness, with a cookie: never served to
    // another user, whatever they ask.
    let c = cache_with(
        b.builder().prefix("plain").default_policy(origin_driven()),
        Origin::new(user_page(None)),
    )
    .await;
    c.get("/account", &alice).await;
    for headers in [&bob[..], &[("cache-control", "max-stale")][..]] {
        let got = c.get("/account", headers).await;
        assert!(!got.body.contains("alice"), "{headers:?} got {}", got.body);
    }
    // A response that allows sharing is shared with requests with cookies.
    let c = cache_with(
        b.builder().prefix("public").default_policy(origin_driven()),
        Origin::new(user_page(Some("public, max-age=600"))),
    )
    .await;
    c.get("/logo", &alice).await;
    assert_eq!(c.get("/logo", &bob).await.x_cache(), "HIT");
}

async fn the_cookie_policy_can_pass_or_ignore_cookies(b: Backend) {
    let alice = [("cookie", "session=alice")];
    let ignore = cache_with(
        b.builder()
            .prefix("ignore")
            .default_policy(origin_driven().cookies(CookiePolicy::Ignore)),
        Origin::new(user_page(Some("max-age=600"))),
    )
    .await;
    ignore.get("/a", &alice).await;
    assert_eq!(ignore.get("/a", &[]).await.x_cache(), "HIT");
    let pass = cache_with(
        b.builder()
            .prefix("pass")
            .default_policy(origin_driven().cookies(CookiePolicy::Pass)),
        Origin::new(user_page(Some("public, max-age=600"))),
    )
    .await;
    pass.get("/a", &[]).await;
    assert_eq!(pass.get("/a", &[]).await.x_cache(), "HIT");
    let passed = pass.get("/a", &alice).await;
    assert_eq!(passed.x_cache(), "BYPASS");
    assert_eq!(pass.origin.calls(), 2);
    // Policy-driven mode ignores cookies unless told otherwise.
    let policy = cache_with(
        b.builder()
            .prefix("policy")
            .default_policy(CachePolicy::new()),
        Origin::new(user_page(None)),
    )
    .await;
    policy.get("/a", &alice).await;
    assert_eq!(policy.get("/a", &[]).await.x_cache(), "HIT");
    let shared_only = cache_with(
        b.builder()
            .prefix("policy-shared")
            .default_policy(CachePolicy::new().cookies(CookiePolicy::SharedOnly)),
        Origin::new(user_page(None)),
    )
    .await;
    shared_only.get("/a", &alice).await;
    assert_eq!(shared_only.get("/a", &[]).await.x_cache(), "MISS");
}

async fn the_host_is_in_the_key_only_when_configured_and_forwarding_headers_are_not_trusted(
    b: Backend,
) {
    let script = |p: &Request<Bytes>, _: usize| {
        let host = p.headers().get("host").map_or("-", |v| v.to_str().unwrap());
        reply(&[("cache-control", "max-age=60")], host.to_owned())
    };
    let c = cache_with(
        b.builder().default_policy(origin_driven()).key_host(true),
        Origin::new(script),
    )
    .await;
    let a = c.get("/k", &[("host", "a.example")]).await;
    let b1 = c.get("/k", &[("host", "b.example")]).await;
    assert_eq!(
        (a.body.as_str(), b1.body.as_str()),
        ("a.example", "b.example")
    );
    let poisoned = c
        .get(
            "/k",
            &[("host", "a.example"), ("x-forwarded-host", "b.example")],
        )
        .await;
    assert_eq!(
        (poisoned.x_cache(), poisoned.body.as_str()),
        ("HIT", "a.example")
    );
    // The handle takes absolute URIs when the host is keyed.
    let uri: http::Uri = "http://a.example/k".parse().unwrap();
    assert_eq!(
        c.handle
            .invalidate(&http::Method::GET, &uri)
            .await
            .unwrap()
            .removed,
        1
    );
    assert_eq!(
        c.get("/k", &[("host", "a.example")]).await.x_cache(),
        "MISS"
    );
    assert_eq!(c.get("/k", &[("host", "b.example")]).await.x_cache(), "HIT");
}

// ---------------------------------------------------------------- bodies

async fn a_body_that_is_not_stored_streams_through_unbuffered(b: Backend) {
    let (open, gate) = tokio::sync::oneshot::channel::<()>();
    let gate = Mutex::new(Some(gate));
    let origin = Origin::new(move |_, _| {
        let gate = gate.lock().unwrap().take().unwrap();
        Response::builder()
            .header("cache-control", "no-store")
            .body(Body::new(support::gated_body(gate)))
            .unwrap()
    });
    let c = cache_with(b.builder().default_policy(origin_driven()), origin).await;
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        c.svc.clone().oneshot(req("GET", "/s", &[])),
    )
    .await
    .expect("headers arrive before the body ends")
    .unwrap();
    support::assert_streams(res.into_body(), open).await;
}

async fn trailers_survive_and_such_a_response_is_not_stored(b: Backend) {
    use http_body_util::StreamBody;
    let origin = Origin::new(|_, _| {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = vec![
            Ok(http_body::Frame::data(Bytes::from("data"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        Response::builder()
            .header("cache-control", "max-age=60")
            .body(Body::new(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap()
    });
    let c = cache_with(b.builder().default_policy(origin_driven()), origin).await;
    for _ in 0..2 {
        let res = c.svc.clone().oneshot(req("GET", "/t", &[])).await.unwrap();
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "data");
    }
    assert_eq!(c.origin.calls(), 2);
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Redis(super::support::RedisServer::start())).await
                }
            )*
        }
    };
}

on_both_stores!(
    rfc9111_4_2_1_max_age_and_s_maxage_decide_freshness,
    rfc9111_4_2_1_expires_minus_date_and_an_invalid_expires_is_stale,
    rfc9111_4_2_2_no_heuristic_freshness_unless_configured,
    rfc9111_4_2_dates_in_other_formats_several_expires_and_a_bad_age,
    rfc9110_15_2_an_interim_status_from_the_service_is_never_stored,
    rfc9213_a_handler_overrides_its_routes_ttl_with_the_caches_own_field,
    rfc9111_4_2_3_age_includes_the_upstream_age,
    rfc9110_6_6_1_date_is_kept_and_added_when_missing,
    rfc9111_3_policy_driven_ttl_may_be_shortened_by_max_age,
    rfc9111_3_handle_put_stores_as_the_layer_would_after_a_miss,
    rfc9111_5_2_2_4_no_cache_response_is_revalidated_every_time,
    rfc9111_5_2_2_4_qualified_no_cache_leaves_the_named_fields_out,
    rfc9111_5_2_2_2_must_revalidate_forbids_serving_stale,
    rfc5861_stale_while_revalidate_from_the_response,
    rfc5861_stale_if_error_from_the_response,
    rfc9111_3_no_store_private_and_set_cookie_are_never_stored,
    rfc9111_5_2_2_7_a_malformed_private_or_no_store_is_never_stored,
    rfc9110_7_6_1_hop_by_hop_headers_are_not_stored,
    rfc9111_5_2_1_4_request_no_cache_and_max_age_0_revalidate,
    rfc9111_5_2_1_request_max_stale_min_fresh_and_max_age,
    rfc9111_5_2_1_7_only_if_cached_is_a_504_on_a_miss,
    rfc9111_5_2_1_5_request_no_store_is_not_stored_but_may_be_served,
    request_directives_can_be_ignored_on_a_route,
    rfc9111_4_1_vary_stores_one_variant_per_selecting_header_value,
    rfc9111_4_1_vary_star_is_never_served_and_a_changed_vary_is_followed,
    rfc9110_13_1_2_if_none_match_is_answered_with_304_from_the_cache,
    rfc9110_8_8_3_policy_mode_adds_a_strong_etag_stable_across_instances,
    rfc9111_4_3_4_a_304_freshens_the_stored_response_and_updates_its_headers,
    rfc9111_4_3_5_head_is_answered_from_get_and_never_makes_an_entry,
    rfc9111_4_4_unsafe_methods_invalidate_target_and_same_origin_locations,
    rfc9111_3_5_authorization_only_with_a_response_that_allows_it,
    rfc9111_4_2_4_a_never_fresh_response_is_not_served_on_max_stale,
    rfc9111_5_2_1_7_only_if_cached_never_gets_a_never_fresh_response,
    rfc5861_stale_if_error_never_serves_a_never_fresh_response,
    rfc5861_stale_while_revalidate_never_serves_a_never_fresh_response,
    rfc9111_4_a_never_fresh_response_is_not_handed_to_coalesced_requests,
    rfc9111_3_5_a_request_with_cookie_is_treated_like_one_with_authorization,
    the_cookie_policy_can_pass_or_ignore_cookies,
    the_host_is_in_the_key_only_when_configured_and_forwarding_headers_are_not_trusted,
    a_body_that_is_not_stored_streams_through_unbuffered,
    trailers_survive_and_such_a_response_is_not_stored,
);
