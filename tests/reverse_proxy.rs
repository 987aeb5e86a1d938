//! The reverse-proxy example over real sockets: a small origin server started
//! here, the proxy (origin-driven cache on a Redis of the test's own) in
//! front of it, and a hyper client.

mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/reverse_proxy.rs"]
mod reverse_proxy;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use support::{raw_http, reply, status, Origin, RedisServer};
use tower_redis_cache::RedisCacheLayer;

/// Starts the test origin on a loopback port; returns its address and the
/// origin (its calls, what it saw).
async fn origin() -> (SocketAddr, Origin) {
    let origin = Origin::new(respond);
    (origin.serve().await, origin)
}

fn respond(req: &Request<Bytes>, n: usize) -> Response<Body> {
    let target = req.uri().path_and_query().unwrap().as_str();
    let header = |name| {
        req.headers()
            .get(name)
            .map_or("-", |v: &http::HeaderValue| v.to_str().unwrap())
    };
    match req.uri().path() {
        "/fresh" => reply(
            &[("cache-control", "max-age=60")],
            format!("fresh {n} {target}"),
        ),
        "/etag" if header("if-none-match") == "\"e1\"" => {
            status(304, &[("etag", "\"e1\"")], Bytes::new())
        }
        "/etag" => reply(
            &[("cache-control", "max-age=0"), ("etag", "\"e1\"")],
            format!("etag {n}"),
        ),
        "/vary" => reply(
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            format!("{} {n}", header("accept-language")),
        ),
        "/vary-encoding" => reply(
            &[("cache-control", "max-age=60"), ("vary", "accept-encoding")],
            format!("{} {n}", header("accept-encoding")),
        ),
        "/upstream-status" => reply(
            &[
                ("cache-control", "max-age=60"),
                ("cache-status", "origin-cache; fwd=uri-miss"),
            ],
            format!("upstream {n}"),
        ),
        "/cdn" => reply(
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
            format!("cdn {n}"),
        ),
        "/cdn-invalid" => reply(
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=60, no-store;;"),
            ],
            format!("cdn-invalid {n}"),
        ),
        "/cdn-no-store" => reply(
            &[
                ("cache-control", "max-age=60"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
                ("cdn-cache-control", "no-store"),
            ],
            format!("cdn-no-store {n}"),
        ),
        "/cdn-cookie" => reply(
            &[
                ("cdn-cache-control", "public, max-age=60"),
                ("set-cookie", "session=abc"),
            ],
            format!("cdn-cookie {n}"),
        ),
        "/cdn-public" => reply(
            &[("cdn-cache-control", "public, s-maxage=60")],
            format!("cdn-public {n}"),
        ),
        "/modified" | "/modified-public" => {
            // Last modified 1 000 s ago, no explicit freshness.
            let now = std::time::SystemTime::now();
            let date = httpdate::fmt_http_date(now);
            let modified = httpdate::fmt_http_date(now - std::time::Duration::from_secs(1000));
            let mut fields = vec![
                ("date", date.as_str()),
                ("last-modified", modified.as_str()),
            ];
            if req.uri().path() == "/modified-public" {
                fields.push(("cache-control", "public"));
            }
            reply(&fields, format!("modified {n}"))
        }
        "/host" => reply(
            &[("cache-control", "max-age=60")],
            format!("host {} {n}", header("host")),
        ),
        "/body" => reply(
            &[("cache-control", "max-age=60")],
            format!("body [{}] {n}", String::from_utf8_lossy(req.body())),
        ),
        "/echo" => reply(
            &[
                ("cache-control", "no-store"),
                ("connection", "x-origin-hop"),
                ("x-origin-hop", "secret"),
            ],
            req.body().clone(),
        ),
        _ => status(404, &[], "missing"),
    }
}

struct Proxy {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Proxy {
    async fn start(redis: &RedisServer, upstream: SocketAddr) -> Self {
        let cache =
            reverse_proxy::cache_layer(RedisCacheLayer::builder().store(redis.store().await))
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: http::Uri = format!("http://{upstream}").parse().unwrap();
        tokio::spawn(reverse_proxy::serve(listener, upstream, cache, false));
        Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, HeaderMap, String) {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let res = self
            .client
            .request(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let (s, h, b) = self.send("GET", path, headers, "").await;
        let x = h
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap())
            .to_owned();
        (s, x, b)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_2_a_fresh_response_is_served_from_redis_with_the_query_forwarded() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (s, x, first) = proxy.get("/fresh?b=2&a=1", &[]).await;
    assert_eq!(
        (s, x.as_str(), first.as_str()),
        (200, "MISS", "fresh 1 /fresh?b=2&a=1")
    );
    let (_, x, again) = proxy.get("/fresh?a=1&b=2", &[]).await;
    assert_eq!((x.as_str(), again.as_str()), ("HIT", first.as_str()));
    assert_eq!(origin.calls(), 1);
    assert_eq!(origin.seen()[0].method, "GET");
    let (s, _, _) = proxy.get("/nothing", &[]).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_3_stale_responses_are_revalidated_with_the_origin() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (_, x, first) = proxy.get("/etag", &[]).await;
    assert_eq!((x.as_str(), first.as_str()), ("MISS", "etag 1"));
    let (s, x, second) = proxy.get("/etag", &[]).await;
    assert_eq!(
        (s, x.as_str(), second.as_str()),
        (200, "REVALIDATED", "etag 1")
    );
    assert_eq!(origin.calls(), 2);
    assert_eq!(origin.seen()[1].headers["if-none-match"], "\"e1\"");
    // The client's own validator: a 304 from the proxy.
    let (s, _, body) = proxy.get("/etag", &[("if-none-match", "\"e1\"")]).await;
    assert_eq!((s, body.as_str()), (304, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_1_variants_through_the_proxy() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    assert_eq!(
        proxy.get("/vary", &[("accept-language", "en")]).await.2,
        "en 1"
    );
    assert_eq!(
        proxy.get("/vary", &[("accept-language", "de")]).await.2,
        "de 2"
    );
    let (_, x, en) = proxy.get("/vary", &[("accept-language", "en")]).await;
    assert_eq!((x.as_str(), en.as_str()), ("HIT", "en 1"));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_4_a_post_through_the_proxy_invalidates_the_target() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    proxy.get("/fresh", &[]).await;
    assert_eq!(proxy.get("/fresh", &[]).await.1, "HIT");
    let (s, _, _) = proxy.send("POST", "/fresh", &[], "update").await;
    assert_eq!(s, 200);
    let (_, x, body) = proxy.get("/fresh", &[]).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "fresh 3 /fresh"));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_headers_and_bodies_are_forwarded_faithfully_minus_hop_by_hop() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let big = "x".repeat(300_000);
    let (s, headers, body) = proxy
        .send(
            "PUT",
            "/echo?q=1",
            &[
                ("x-custom", "kept"),
                ("connection", "x-client-hop"),
                ("x-client-hop", "dropped"),
                ("content-type", "text/plain"),
            ],
            &big,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body.len(), big.len(), "the body comes back whole");
    assert_eq!(
        headers.get("x-origin-hop"),
        None,
        "the origin's hop-by-hop headers stay behind"
    );
    let seen = origin.seen().remove(0);
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("PUT", "/echo?q=1")
    );
    let h = &seen.headers;
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["content-type"], "text/plain");
    assert!(h.get("x-client-hop").is_none());
    assert_eq!(seen.body.len(), big.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_naming_another_host_than_host_is_refused_not_keyed() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (s, _, _) = raw_http(
        proxy.addr,
        "GET http://victim.example/host HTTP/1.1\r\nhost: evil.example",
        "",
    )
    .await;
    assert_eq!(s, 400, "the origin may read either host");
    assert_eq!(origin.calls(), 0);
    let (s, x, body) = raw_http(proxy.addr, "GET /host HTTP/1.1\r\nhost: victim.example", "").await;
    assert_eq!((s, x.as_str()), (200, "MISS"));
    assert!(body.starts_with("host victim.example "), "{body}");
    // Both agreeing is fine, and keyed as one host.
    let (s, x, again) = raw_http(
        proxy.addr,
        "GET http://Victim.example:80/host HTTP/1.1\r\nhost: victim.example",
        "",
    )
    .await;
    assert_eq!((s, x.as_str(), again.as_str()), (200, "HIT", body.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_characters_a_key_would_drop_is_refused() {
    let redis = RedisServer::start();
    let (upstream, _origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    for host in [
        "victim.example/",
        "victim.example#",
        "victim.example?x",
        "user@victim.example",
        "victim.example:x",
        "[::1",
    ] {
        let (s, _, body) = raw_http(
            proxy.addr,
            &format!("GET /host HTTP/1.1\r\nhost: {host}"),
            "",
        )
        .await;
        assert!(
            s == 400 && !body.contains("host victim.example"),
            "{host}: {s} {body}"
        );
    }
    let (s, x, body) = raw_http(proxy.addr, "GET /host HTTP/1.1\r\nhost: victim.example", "").await;
    assert_eq!(
        (s, x.as_str()),
        (200, "MISS"),
        "nothing was stored for the victim"
    );
    assert!(body.starts_with("host victim.example "), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_fields_are_refused() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (s, _, _) = raw_http(
        proxy.addr,
        "GET /host HTTP/1.1\r\nhost: victim.example\r\nhost: evil.example",
        "",
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(origin.calls(), 0);
    let (_, x, body) = raw_http(proxy.addr, "GET /host HTTP/1.1\r\nhost: victim.example", "").await;
    assert_eq!(x, "MISS");
    assert!(body.starts_with("host victim.example "), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_is_sent_exactly_the_host_that_was_keyed_and_no_client_forwarding_fields() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (s, x, body) = raw_http(
        proxy.addr,
        "GET /host HTTP/1.1\r\nhost: Shop.Example:80\r\nx-forwarded-host: evil.example\r\n\
         forwarded: host=evil.example\r\nx-forwarded-proto: https",
        "",
    )
    .await;
    assert_eq!((s, x.as_str()), (200, "MISS"));
    assert!(body.starts_with("host shop.example "), "{body}");
    let h = origin.seen().remove(0).headers;
    assert_eq!(h["host"], "shop.example");
    for name in ["x-forwarded-host", "forwarded", "x-forwarded-proto"] {
        assert!(h.get(name).is_none(), "{name} reached the origin");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_never_stored() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (s, x, body) = raw_http(
        proxy.addr,
        "GET /body HTTP/1.1\r\nhost: shop.example\r\ncontent-length: 4",
        "evil",
    )
    .await;
    assert_eq!(
        (s, x.as_str(), body.as_str()),
        (200, "BYPASS", "body [evil] 1")
    );
    let (_, x, body) = raw_http(proxy.addr, "GET /body HTTP/1.1\r\nhost: shop.example", "").await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "body [] 2"));
    let (_, x, _) = raw_http(
        proxy.addr,
        "GET /body HTTP/1.1\r\nhost: shop.example\r\ntransfer-encoding: chunked",
        "4\r\nevil\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(x, "BYPASS");
    let (_, x, body) = raw_http(proxy.addr, "GET /body HTTP/1.1\r\nhost: shop.example", "").await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "body [] 2"));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_2_2_heuristic_freshness_serves_a_response_with_only_last_modified() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (_, x, first) = proxy.get("/modified", &[]).await;
    assert_eq!((x.as_str(), first.as_str()), ("MISS", "modified 1"));
    let (_, x, again) = proxy.get("/modified", &[]).await;
    assert_eq!((x.as_str(), again.as_str()), ("HIT", "modified 1"));
    assert_eq!(origin.calls(), 1);

    // A request with credentials gets no heuristic: the response is stored
    // (it is public) but only to be revalidated, so each such request
    // reaches the origin.
    let auth = [("authorization", "Bearer t")];
    let (_, _, first) = proxy.get("/modified-public", &auth).await;
    let (_, _, second) = proxy.get("/modified-public", &auth).await;
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("modified 2", "modified 3")
    );
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_1_accept_encoding_in_another_order_or_case_selects_the_same_variant() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (_, x, first) = proxy
        .get("/vary-encoding", &[("accept-encoding", "gzip, br")])
        .await;
    assert_eq!((x.as_str(), first.as_str()), ("MISS", "gzip, br 1"));
    for same in ["br, gzip", "BR,GZIP", " gzip ,br "] {
        let (_, x, body) = proxy
            .get("/vary-encoding", &[("accept-encoding", same)])
            .await;
        assert_eq!((x.as_str(), body.as_str()), ("HIT", "gzip, br 1"), "{same}");
    }
    let (_, x, other) = proxy
        .get("/vary-encoding", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!((x.as_str(), other.as_str()), ("MISS", "gzip 2"));
    // Accept-Language keeps its order: it can carry priority.
    let (_, x, _) = proxy.get("/vary", &[("accept-language", "en, fr")]).await;
    assert_eq!(x, "MISS");
    let (_, x, _) = proxy.get("/vary", &[("accept-language", "EN ,FR")]).await;
    assert_eq!(x, "HIT");
    let (_, x, _) = proxy.get("/vary", &[("accept-language", "fr, en")]).await;
    assert_eq!(x, "MISS");
    assert_eq!(origin.calls(), 4);
}

/// An origin that sends `103 Early Hints` before each final response, over
/// raw HTTP/1.1 (a hyper service cannot send one).
async fn early_hints_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let n = c.fetch_add(1, SeqCst) + 1;
                        let body = format!("final {n}");
                        let reply = format!(
                            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
                             HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\
                             content-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_15_2_an_interim_103_is_neither_stored_nor_served() {
    let redis = RedisServer::start();
    let (upstream, calls) = early_hints_origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let (s, h, body) = proxy.send("GET", "/page", &[], "").await;
    assert_eq!((s, body.as_str()), (200, "final 1"));
    assert_eq!(h["x-cache"], "MISS");
    assert!(
        h.get("link").is_none(),
        "the 103's fields are not merged in"
    );
    let (s, h, body) = proxy.send("GET", "/page", &[], "").await;
    assert_eq!((s, body.as_str()), (200, "final 1"));
    assert_eq!(h["x-cache"], "HIT", "the final response is what was stored");
    assert!(h.get("link").is_none());
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9213_2_2_cdn_cache_control_replaces_cache_control_for_this_cache() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    // Stored for 60 s although Cache-Control says no-store; both fields go
    // on to the client (the browser must not store it, caches after this
    // one may).
    let (_, h, body) = proxy.send("GET", "/cdn", &[], "").await;
    assert_eq!(
        (h["x-cache"].to_str().unwrap(), body.as_str()),
        ("MISS", "cdn 1")
    );
    let (_, h, body) = proxy.send("GET", "/cdn", &[], "").await;
    assert_eq!(
        (h["x-cache"].to_str().unwrap(), body.as_str()),
        ("HIT", "cdn 1")
    );
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["cdn-cache-control"], "max-age=60");
    assert_eq!(origin.calls(), 1);

    // An invalid targeted field is ignored as a whole: Cache-Control decides.
    proxy.get("/cdn-invalid", &[]).await;
    let (_, x, _) = proxy.get("/cdn-invalid", &[]).await;
    assert_eq!(x, "HIT");

    // A targeted no-store wins over Cache-Control and Expires.
    proxy.get("/cdn-no-store", &[]).await;
    let (_, x, body) = proxy.get("/cdn-no-store", &[]).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "cdn-no-store 4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9213_a_targeted_field_never_overrides_the_trust_rules() {
    let redis = RedisServer::start();
    let (upstream, origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    // Set-Cookie: never stored, whatever the targeted field says.
    proxy.get("/cdn-cookie", &[]).await;
    let (_, x, body) = proxy.get("/cdn-cookie", &[]).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "cdn-cookie 2"));
    // Authorization: only Cache-Control can allow sharing the response.
    let auth = [("authorization", "Bearer alice")];
    proxy.get("/cdn-public", &auth).await;
    let (_, x, body) = proxy.get("/cdn-public", &auth).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "cdn-public 4"));
    let (_, x, body) = proxy
        .get("/cdn-public", &[("authorization", "Bearer bob")])
        .await;
    assert_ne!(x, "HIT");
    assert_eq!(body, "cdn-public 5");
    // Without credentials the same response is stored.
    proxy.get("/cdn-public", &[]).await;
    let (_, x, _) = proxy.get("/cdn-public", &[]).await;
    assert_eq!(x, "HIT");
    assert_eq!(origin.calls(), 6);
}

/// This cache's member of `Cache-Status` (the last one).
fn cache_status(h: &HeaderMap) -> String {
    let all: Vec<_> = h.get_all("cache-status").iter().collect();
    all.last().map_or("", |v| v.to_str().unwrap()).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9211_cache_status_says_what_the_cache_did() {
    let redis = RedisServer::start();
    let (upstream, _origin) = origin().await;
    let proxy = Proxy::start(&redis, upstream).await;
    let name = "tower-redis-cache";

    let (_, h, _) = proxy.send("GET", "/fresh", &[], "").await;
    assert_eq!(
        cache_status(&h),
        format!("{name}; fwd=uri-miss; fwd-status=200; stored; ttl=60")
    );
    let (_, h, _) = proxy.send("GET", "/fresh", &[], "").await;
    let hit = cache_status(&h);
    assert!(
        hit == format!("{name}; hit; ttl=59") || hit == format!("{name}; hit; ttl=60"),
        "{hit}"
    );
    assert_eq!(h["x-cache"], "HIT", "alongside x-cache");

    // The request's directives refused a fresh response.
    let (_, h, _) = proxy
        .send("GET", "/fresh", &[("cache-control", "no-cache")], "")
        .await;
    assert!(
        cache_status(&h).starts_with(&format!("{name}; fwd=request; fwd-status=200; stored")),
        "{}",
        cache_status(&h)
    );

    // Stored never fresh, then revalidated with a 304.
    proxy.send("GET", "/etag", &[], "").await;
    let (_, h, _) = proxy.send("GET", "/etag", &[], "").await;
    assert!(
        cache_status(&h).starts_with(&format!("{name}; fwd=stale; fwd-status=304")),
        "{}",
        cache_status(&h)
    );

    // Another variant of a URI whose responses vary.
    proxy
        .send("GET", "/vary", &[("accept-language", "en")], "")
        .await;
    let (_, h, _) = proxy
        .send("GET", "/vary", &[("accept-language", "fr")], "")
        .await;
    assert!(
        cache_status(&h).starts_with(&format!("{name}; fwd=vary-miss")),
        "{}",
        cache_status(&h)
    );

    // An unsafe method.
    let (_, h, _) = proxy.send("POST", "/fresh", &[], "x").await;
    assert_eq!(
        cache_status(&h),
        format!("{name}; fwd=method; fwd-status=200")
    );

    // An upstream cache's member comes first, and is kept on hits.
    proxy.send("GET", "/upstream-status", &[], "").await;
    let (_, h, _) = proxy.send("GET", "/upstream-status", &[], "").await;
    let all: Vec<_> = h.get_all("cache-status").iter().collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0], "origin-cache; fwd=uri-miss");
    assert!(all[1]
        .to_str()
        .unwrap()
        .starts_with(&format!("{name}; hit")));
}
