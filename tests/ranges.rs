//! Range requests (RFC 9110 §14) answered by the cache: over the tower
//! service on the in-memory store and on a real Redis, and over real sockets
//! through the reverse-proxy example.

mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/reverse_proxy.rs"]
mod reverse_proxy;

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use support::{Origin, RedisServer};
use tower::{util::BoxCloneService, ServiceBuilder, ServiceExt};
use tower_redis_cache::{CachePolicy, RedisCacheLayer, RedisCacheLayerBuilder};

/// The representation at `/doc`: 36 bytes.
const DOC: &str = "0123456789abcdefghijklmnopqrstuvwxyz";
const LAST_MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// The `n`-byte representation at `/big`: `a` to `z`, over and over.
fn big(n: usize) -> Bytes {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The small origin of these tests, for both the tower service and the
/// socket server: what it answers for a method, path and request headers.
fn respond(method: &str, path: &str, headers: &HeaderMap, big_len: usize) -> Response<Full<Bytes>> {
    let b = Response::builder();
    let body = |bytes: Bytes| {
        Full::new(if method == "HEAD" {
            Bytes::new()
        } else {
            bytes
        })
    };
    match path {
        "/doc" => {
            if headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
                return b
                    .status(304)
                    .header("etag", "\"v1\"")
                    .body(Full::default())
                    .unwrap();
            }
            b.header("cache-control", "max-age=60")
                .header("content-type", "text/plain")
                .header("content-length", DOC.len())
                .header("etag", "\"v1\"")
                .header("last-modified", LAST_MODIFIED)
                .header(
                    "date",
                    httpdate::fmt_http_date(std::time::SystemTime::now()),
                )
                .body(body(Bytes::from_static(DOC.as_bytes())))
        }
        "/big" => b
            .header("cache-control", "max-age=60")
            .header("content-type", "application/octet-stream")
            .header("content-length", big_len)
            .body(body(big(big_len))),
        // A part of the same representation (same strong tag) answering the
        // revalidation of a stored response that was never fresh.
        "/partial-update" if headers.contains_key("if-none-match") => b
            .status(206)
            .header("cache-control", "max-age=60")
            .header("etag", "\"v2\"")
            .header("x-version", "2")
            .header("content-type", "multipart/byteranges; boundary=x")
            .header("content-range", "bytes 0-1/36")
            .body(body(Bytes::from_static(b"01"))),
        "/partial-update" => b
            .header("cache-control", "max-age=0")
            .header("content-type", "text/plain")
            .header("etag", "\"v2\"")
            .header("x-version", "1")
            .body(body(Bytes::from_static(DOC.as_bytes()))),
        // An origin that answers a part, whatever it is asked.
        "/partial" => b
            .status(206)
            .header("cache-control", "max-age=60")
            .header("content-range", "bytes 0-1/36")
            .body(body(Bytes::from_static(b"01"))),
        // A route the cache does not serve: the origin sees the request as
        // the client sent it.
        _ => {
            let seen = headers
                .get("range")
                .map_or("-", |v| v.to_str().unwrap())
                .to_owned();
            b.header("cache-control", "max-age=60")
                .body(body(Bytes::from(seen)))
        }
    }
    .unwrap()
}

/// Where the layer stores: the in-memory store or a Redis of the test's own.
enum Backend {
    Memory,
    Redis(RedisServer),
}

impl Backend {
    fn both() -> [Backend; 2] {
        [Backend::Memory, Backend::Redis(RedisServer::start())]
    }

    async fn builder(&self) -> RedisCacheLayerBuilder {
        let b = RedisCacheLayer::builder()
            .store_timeout(Duration::from_secs(2))
            .path_prefix("/doc", CachePolicy::new().origin_driven())
            .path_prefix("/big", CachePolicy::new().origin_driven())
            .path_prefix("/partial", CachePolicy::new().origin_driven())
            .bypass_unmatched(true);
        match self {
            Backend::Memory => b,
            Backend::Redis(r) => b.store(r.store().await),
        }
    }
}

type Svc =
    BoxCloneService<Request<Full<Bytes>>, Response<tower_redis_cache::CacheBody<Body>>, Infallible>;

/// The layer in front of the test origin.
struct Cache {
    svc: Svc,
    origin: Origin,
}

/// What a client got.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::default()).unwrap()
}

impl Got {
    async fn read<B>(res: Response<B>) -> Self
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// The test origin as the shared test double.
fn test_origin(big_len: usize) -> Origin {
    Origin::new(move |req, _| {
        respond(
            req.method().as_str(),
            req.uri().path(),
            req.headers(),
            big_len,
        )
        .map(Body::new)
    })
}

async fn cache(builder: RedisCacheLayerBuilder, big_len: usize) -> Cache {
    let layer = builder.build().unwrap();
    let origin = test_origin(big_len);
    let svc = ServiceBuilder::new().layer(layer).service(origin.clone());
    Cache {
        svc: BoxCloneService::new(svc),
        origin,
    }
}

impl Cache {
    fn calls(&self) -> usize {
        self.origin.calls()
    }

    async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Got {
        let res = self.svc.clone().oneshot(request(method, uri, headers));
        Got::read(res.await.unwrap()).await
    }

    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Got {
        self.send("GET", uri, headers).await
    }
}

/// The parts of a `multipart/byteranges` answer: each part's header lines
/// and bytes. Checks the boundary and the framing.
fn multipart(got: &Got) -> Vec<(String, Vec<u8>)> {
    let content_type = got.header("content-type");
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("not multipart: {content_type}"));
    let body = got.body.as_ref();
    let closing = format!("\r\n--{boundary}--\r\n");
    assert!(body.ends_with(closing.as_bytes()), "{:?}", got.text());
    let body = &body[..body.len() - closing.len()];
    let delimiter = format!("--{boundary}\r\n");
    assert!(body.starts_with(delimiter.as_bytes()));
    let text = String::from_utf8(body[delimiter.len()..].to_vec()).unwrap();
    text.split(&format!("\r\n--{boundary}\r\n"))
        .map(|part| {
            let (head, data) = part.split_once("\r\n\r\n").unwrap();
            (head.to_owned(), data.as_bytes().to_vec())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_2_a_single_range_is_cut_from_the_stored_response() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        let full = c.get("/doc", &[]).await;
        assert_eq!((full.status, full.text()), (200, DOC));
        assert_eq!(full.header("accept-ranges"), "bytes");
        let part = c.get("/doc", &[("range", "bytes=0-4")]).await;
        assert_eq!(part.status, 206);
        assert_eq!(part.text(), "01234");
        assert_eq!(part.header("content-range"), "bytes 0-4/36");
        assert_eq!(part.header("content-length"), "5");
        assert_eq!(part.header("content-type"), "text/plain");
        assert_eq!(part.header("etag"), "\"v1\"");
        assert_eq!(part.header("x-cache"), "HIT");
        assert_eq!(c.calls(), 1, "the range is served from the entry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_1_2_open_and_suffix_ranges_and_positions_past_the_end() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        c.get("/doc", &[]).await;
        for (range, body, content_range) in [
            ("bytes=30-", "uvwxyz", "bytes 30-35/36"),
            ("bytes=-3", "xyz", "bytes 33-35/36"),
            ("bytes=34-1000", "yz", "bytes 34-35/36"),
            ("bytes=-1000", DOC, "bytes 0-35/36"),
        ] {
            let got = c.get("/doc", &[("range", range)]).await;
            assert_eq!(got.status, 206, "{range}");
            assert_eq!(got.text(), body, "{range}");
            assert_eq!(got.header("content-range"), content_range, "{range}");
        }
        assert_eq!(c.calls(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_6_several_ranges_are_sent_as_multipart_byteranges() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 1000).await;
        c.get("/big", &[]).await;
        // Two distant ranges in the order asked; the bytes 2000 and more are
        // past the end and left out.
        let got = c
            .get("/big", &[("range", "bytes=-2, 0-1, 2000-3000")])
            .await;
        assert_eq!(got.status, 206);
        assert_eq!(got.header("content-range"), "");
        assert_eq!(got.header("content-length"), got.body.len().to_string());
        let parts = multipart(&got);
        assert_eq!(parts.len(), 2);
        let media = "content-type: application/octet-stream";
        assert_eq!(
            parts[0],
            (
                format!("{media}\r\ncontent-range: bytes 998-999/1000"),
                big(1000)[998..].to_vec()
            )
        );
        assert_eq!(
            parts[1],
            (
                format!("{media}\r\ncontent-range: bytes 0-1/1000"),
                b"ab".to_vec()
            )
        );
        assert_eq!(c.calls(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_15_5_17_an_unsatisfiable_range_gets_416_with_the_length() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        c.get("/doc", &[]).await;
        for range in ["bytes=36-", "bytes=100-200, 50-", "bytes=-0"] {
            let got = c.get("/doc", &[("range", range)]).await;
            assert_eq!(got.status, 416, "{range}");
            assert_eq!(got.header("content-range"), "bytes */36", "{range}");
            assert_eq!(got.body.len(), 0);
        }
        // A syntax error or another unit: the Range field is ignored.
        for range in ["bytes=5-1", "items=0-1", "bytes=x"] {
            let got = c.get("/doc", &[("range", range)]).await;
            assert_eq!((got.status, got.text()), (200, DOC), "{range}");
        }
        assert_eq!(c.calls(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_13_1_5_if_range_with_a_strong_validator_gets_the_part_else_the_whole() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        c.get("/doc", &[]).await;
        for (if_range, status) in [
            ("\"v1\"", 206),
            ("\"v0\"", 200),
            ("W/\"v1\"", 200),
            (LAST_MODIFIED, 206),
            ("Sun, 06 Nov 1994 08:49:38 GMT", 200),
            ("garbage", 200),
        ] {
            let got = c
                .get("/doc", &[("range", "bytes=0-1"), ("if-range", if_range)])
                .await;
            assert_eq!(got.status, status, "{if_range}");
            let body = if status == 206 { "01" } else { DOC };
            assert_eq!(got.text(), body, "{if_range}");
            assert_eq!(got.header("x-cache"), "HIT");
        }
        // If-Range alone is ignored.
        let got = c.get("/doc", &[("if-range", "\"v0\"")]).await;
        assert_eq!((got.status, got.header("x-cache")), (200, "HIT"));
        assert_eq!(c.calls(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_a_miss_with_range_stores_the_complete_response_and_answers_206() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        let got = c
            .get("/doc", &[("range", "bytes=10-12"), ("if-range", "\"v1\"")])
            .await;
        assert_eq!((got.status, got.text()), (206, "abc"));
        assert_eq!(got.header("content-range"), "bytes 10-12/36");
        assert_eq!(got.header("x-cache"), "MISS");
        let asked = c.origin.seen()[0].headers.clone();
        assert!(
            !asked.contains_key("range") && !asked.contains_key("if-range"),
            "the origin is asked for the complete response: {asked:?}"
        );
        let full = c.get("/doc", &[]).await;
        assert_eq!((full.status, full.text()), (200, DOC));
        assert_eq!(full.header("x-cache"), "HIT");
        assert_eq!(c.calls(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_a_body_past_max_body_bytes_is_answered_from_the_stream_and_not_stored() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await.max_body_bytes(100), 1000).await;
        let expected = big(1000);
        let got = c.get("/big", &[("range", "bytes=500-509")]).await;
        assert_eq!(got.status, 206);
        assert_eq!(got.body, expected.slice(500..510));
        assert_eq!(got.header("content-range"), "bytes 500-509/1000");
        assert_eq!(got.header("content-length"), "10");
        let got = c.get("/big", &[("range", "bytes=-5")]).await;
        assert_eq!(got.body, expected.slice(995..));
        // Several parts of a stream: the whole of it.
        let got = c.get("/big", &[("range", "bytes=0-1, 900-901")]).await;
        assert_eq!((got.status, got.body.len()), (200, 1000));
        let got = c.get("/big", &[("range", "bytes=1000-")]).await;
        assert_eq!(
            (got.status, got.header("content-range")),
            (416, "bytes */1000")
        );
        assert_eq!(c.calls(), 4, "nothing was stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_a_route_the_cache_does_not_serve_reaches_the_origin_untouched() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        let got = c
            .get(
                "/elsewhere",
                &[("range", "bytes=0-1"), ("if-range", "\"x\"")],
            )
            .await;
        assert_eq!((got.status, got.text()), (200, "bytes=0-1"));
        assert_eq!(got.header("x-cache"), "BYPASS");
        let asked = c.origin.seen()[0].headers.clone();
        assert_eq!(asked.get("if-range").unwrap(), "\"x\"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_9_3_2_head_with_range_gets_the_headers_of_the_206_without_a_body() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 1000).await;
        // On a miss: the origin is asked HEAD without the range.
        let got = c.send("HEAD", "/doc", &[("range", "bytes=0-4")]).await;
        assert_eq!(got.status, 206);
        assert_eq!(got.header("content-range"), "bytes 0-4/36");
        assert_eq!(got.header("content-length"), "5");
        assert!(got.body.is_empty());
        c.get("/doc", &[]).await;
        let got = c.send("HEAD", "/doc", &[("range", "bytes=-6")]).await;
        assert_eq!(
            (
                got.status,
                got.header("content-range"),
                got.header("x-cache")
            ),
            (206, "bytes 30-35/36", "HIT")
        );
        assert!(got.body.is_empty());
        // Several parts: the length a GET's body has.
        c.get("/big", &[]).await;
        let head = c
            .send("HEAD", "/big", &[("range", "bytes=0-1,300-301")])
            .await;
        let get = c.get("/big", &[("range", "bytes=0-1,300-301")]).await;
        assert_eq!(multipart(&get).len(), 2);
        assert_eq!(head.status, 206);
        assert!(head.body.is_empty());
        assert!(head
            .header("content-type")
            .starts_with("multipart/byteranges; boundary="));
        assert_eq!(head.header("content-length"), get.body.len().to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_2_ranges_past_the_cap_or_overlapping_do_not_amplify_the_response() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        c.get("/doc", &[]).await;
        // The same bytes asked 16 times are sent once.
        let same = vec!["0-35"; 16].join(",");
        let got = c.get("/doc", &[("range", &format!("bytes={same}"))]).await;
        assert_eq!((got.status, got.text()), (206, DOC));
        assert_eq!(got.header("content-range"), "bytes 0-35/36");
        // Close ranges are one part.
        let got = c.get("/doc", &[("range", "bytes=0-0,2-2,4-4")]).await;
        assert_eq!((got.status, got.text()), (206, "01234"));
        // More than 16 ranges: the Range field is ignored.
        let many = (0..17).map(|i| format!("{i}-{i}")).collect::<Vec<_>>();
        let got = c
            .get("/doc", &[("range", &format!("bytes={}", many.join(",")))])
            .await;
        assert_eq!((got.status, got.text()), (200, DOC));
        assert_eq!(c.calls(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_3_a_206_from_the_origin_is_never_stored() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        for _ in 0..2 {
            let got = c.get("/partial", &[("range", "bytes=0-1")]).await;
            assert_eq!((got.status, got.text()), (206, "01"));
            assert_ne!(got.header("x-cache"), "HIT");
        }
        assert_eq!(c.calls(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_13_2_2_a_matching_if_none_match_gets_304_whatever_the_range() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        c.get("/doc", &[]).await;
        let got = c
            .get(
                "/doc",
                &[("range", "bytes=0-1"), ("if-none-match", "\"v1\"")],
            )
            .await;
        assert_eq!(got.status, 304);
        assert_eq!(got.header("content-range"), "");
        assert_eq!(c.calls(), 1);
    }
}

// Over real sockets: the reverse-proxy example on Redis.

struct Proxy {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    origin: Origin,
}

impl Proxy {
    async fn start(redis: &RedisServer, max_body_bytes: usize, big_len: usize) -> Self {
        let origin = test_origin(big_len);
        let upstream = origin.serve().await;
        let builder = RedisCacheLayer::builder()
            .store(redis.store().await)
            .max_body_bytes(max_body_bytes);
        let cache = reverse_proxy::cache_layer(builder).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: http::Uri = format!("http://{upstream}").parse().unwrap();
        tokio::spawn(reverse_proxy::serve(listener, upstream, cache, false));
        Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            origin,
        }
    }

    fn calls(&self) -> usize {
        self.origin.calls()
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let uri = format!("http://{}{path}", self.addr);
        let res = self.client.request(request(method, &uri, headers));
        Got::read(res.await.unwrap()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_ranges_through_the_proxy_are_answered_from_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis, 1024 * 1024, 1000).await;
    let got = proxy.send("GET", "/doc", &[("range", "bytes=0-4")]).await;
    assert_eq!((got.status, got.text()), (206, "01234"));
    assert_eq!(got.header("content-range"), "bytes 0-4/36");
    assert_eq!(got.header("x-cache"), "MISS");
    assert!(!proxy.origin.seen()[0].headers.contains_key("range"));

    let got = proxy.send("GET", "/doc", &[("range", "bytes=-3")]).await;
    assert_eq!((got.status, got.text()), (206, "xyz"));
    assert_eq!(got.header("x-cache"), "HIT");
    assert_eq!(got.header("accept-ranges"), "bytes");

    proxy.send("GET", "/big", &[]).await;
    let got = proxy
        .send("GET", "/big", &[("range", "bytes=0-0,999-999")])
        .await;
    assert_eq!((got.status, got.header("x-cache")), (206, "HIT"));
    let parts = multipart(&got);
    assert_eq!(parts[0].1, b"a");
    assert_eq!(parts[1].1, b"l");
    assert!(parts[1].0.ends_with("content-range: bytes 999-999/1000"));

    let got = proxy.send("GET", "/doc", &[("range", "bytes=99-")]).await;
    assert_eq!(
        (got.status, got.header("content-range")),
        (416, "bytes */36")
    );

    let got = proxy
        .send(
            "GET",
            "/doc",
            &[("range", "bytes=0-1"), ("if-range", "\"old\"")],
        )
        .await;
    assert_eq!((got.status, got.text()), (200, DOC));

    let got = proxy.send("HEAD", "/doc", &[("range", "bytes=1-2")]).await;
    assert_eq!(
        (got.status, got.header("content-length"), got.body.len()),
        (206, "2", 0)
    );
    assert_eq!(proxy.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_a_large_body_through_the_proxy_is_answered_from_the_stream() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis, 1000, 200_000).await;
    let expected = big(200_000);
    for round in 1..=2 {
        let got = proxy
            .send("GET", "/big", &[("range", "bytes=150000-150099")])
            .await;
        assert_eq!(got.status, 206);
        assert_eq!(got.header("content-range"), "bytes 150000-150099/200000");
        assert_eq!(got.body, expected.slice(150_000..150_100));
        assert_eq!(proxy.calls(), round, "nothing is stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_3_4_a_206_of_the_stored_representation_updates_its_fields() {
    for backend in Backend::both() {
        let c = cache(backend.builder().await, 0).await;
        let first = c.get("/partial-update", &[]).await;
        assert_eq!((first.status, first.header("x-version")), (200, "1"));
        // Stored never fresh: the next request revalidates, and the origin
        // answers with a part of the same representation.
        let second = c.get("/partial-update", &[]).await;
        assert_eq!(
            (second.status, second.text()),
            (200, DOC),
            "the whole stored body"
        );
        assert_eq!(
            second.header("x-version"),
            "2",
            "the part's fields update it"
        );
        assert_eq!(second.header("content-type"), "text/plain");
        assert!(second.header("content-range").is_empty());
        let third = c.get("/partial-update", &[("range", "bytes=0-2")]).await;
        assert_eq!((third.status, third.text()), (206, "012"));
        assert_eq!(third.header("x-cache"), "HIT");
        assert_eq!(third.header("x-version"), "2");
        assert_eq!(c.calls(), 2);
    }
}
