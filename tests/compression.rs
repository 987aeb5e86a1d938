//! Bodies stored gzip-compressed and served as stored (docs/compression.md),
//! over real sockets against a real Redis, for clients that accept gzip and
//! clients that do not.

mod support;

use std::{io::Read, net::SocketAddr, time::Duration};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use support::{Origin, RedisServer};
use tower_redis_cache::{
    store::{LocalTier, TieredStore},
    CachePolicy, Compression, RedisCacheLayer, RedisCacheLayerBuilder,
};

const GZIP: (&str, &str) = ("accept-encoding", "gzip, deflate, br");

/// A JSON list of about `len` bytes.
fn list(len: usize) -> Bytes {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() + 80 < len {
        s.push_str(&format!(
            r#"{{"id":{i},"name":"product {i}","category":"books","price":{}.99,"in_stock":true}},"#,
            i % 89
        ));
        i += 1;
    }
    s.push_str(r#"{"id":-1}]"#);
    Bytes::from(s)
}

/// The gzip representation's entity tag for a stored member of a response
/// tagged `"v1"`: `-gzip-` and the member's id (the four header bytes gzip
/// keeps for a modification time).
fn coded(member: &[u8]) -> String {
    let id = u32::from_le_bytes(member[4..8].try_into().unwrap());
    format!("\"v1-gzip-{id:08x}\"")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip member");
    out
}

/// What the origin behind the cache answers:
/// - `/list`: 20 KB of JSON, `ETag: "v1"`, `304` to `If-None-Match: "v1"`;
/// - `/stale`: the same, fresh for one second;
/// - `/long`: 200 KB of JSON;
/// - `/small`: 300 bytes of JSON;
/// - `/png`: 20 KB with an image type;
/// - `/exact`: 20 KB of JSON marked `no-transform`;
/// - `/encoded`: JSON the origin gzipped itself (`Vary: Accept-Encoding`).
fn origin() -> Origin {
    Origin::new(|req, _| {
        let b = Response::builder()
            .header(
                "date",
                httpdate::fmt_http_date(std::time::SystemTime::now()),
            )
            .header("etag", "\"v1\"")
            .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT");
        let path = req.uri().path();
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v.to_str().unwrap().split(',').any(|t| t.trim() == "\"v1\""))
            && path != "/exact"
        {
            let max_age = if path == "/stale" { 1 } else { 60 };
            return b
                .status(304)
                .header("cache-control", format!("max-age={max_age}"))
                .body(Body::empty())
                .unwrap();
        }
        let json = |b: http::response::Builder| b.header("content-type", "application/json");
        match path {
            "/list" => json(b)
                .header("cache-control", "max-age=60")
                .body(Body::from(list(20_000))),
            "/stale" => json(b)
                .header("cache-control", "max-age=1")
                .body(Body::from(list(20_000))),
            "/long" => json(b)
                .header("cache-control", "max-age=60")
                .body(Body::from(list(200_000))),
            "/small" => json(b)
                .header("cache-control", "max-age=60")
                .body(Body::from(list(300))),
            "/png" => b
                .header("content-type", "image/png")
                .header("cache-control", "max-age=60")
                .body(Body::from(list(20_000))),
            "/exact" => json(b)
                .header("cache-control", "max-age=60, no-transform")
                .body(Body::from(list(20_000))),
            "/encoded" => {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&list(20_000)).unwrap();
                json(b)
                    .header("cache-control", "max-age=60")
                    .header("content-encoding", "gzip")
                    .header("vary", "accept-encoding")
                    .body(Body::from(e.finish().unwrap()))
            }
            _ => b.status(404).body(Body::empty()),
        }
        .unwrap()
    })
}

/// A response as a client read it off the socket (the body as sent,
/// not decoded).
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn gzipped(&self) -> bool {
        self.header("content-encoding") == "gzip"
    }

    /// The body a user agent shows: decoded when it came gzipped.
    fn content(&self) -> Vec<u8> {
        if self.gzipped() {
            gunzip(&self.body)
        } else {
            self.body.to_vec()
        }
    }

    fn varies_on_accept_encoding(&self) -> bool {
        self.headers.get_all("vary").iter().any(|v| {
            v.to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("accept-encoding")
        })
    }
}

/// The layer in front of the origin, served on a loopback socket.
struct Site {
    addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
    origin: Origin,
    cache: RedisCacheLayer,
}

impl Site {
    async fn start(builder: RedisCacheLayerBuilder) -> Self {
        let origin = origin();
        let cache = builder
            .prefix("gz")
            .store_timeout(Duration::from_secs(2))
            .default_policy(CachePolicy::new().origin_driven())
            .build()
            .unwrap();
        let app = origin.router().layer(cache.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            origin,
            cache,
        }
    }

    async fn on_redis(redis: &RedisServer) -> Self {
        Self::start(RedisCacheLayer::builder().store(redis.store().await)).await
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let res = self
            .client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        self.send("GET", path, headers).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_client_gets_the_stored_bytes_and_another_the_body_as_sent() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = list(20_000);

    // The miss that stores: the client gets what a hit will give it.
    let miss = site.get("/list", &[GZIP]).await;
    assert_eq!((miss.status, miss.header("x-cache")), (200, "MISS"));
    assert!(miss.gzipped());
    assert_eq!(miss.content(), original);
    let hit = site.get("/list", &[GZIP]).await;
    assert_eq!((hit.status, hit.header("x-cache")), (200, "HIT"));
    assert!(hit.gzipped());
    // The bytes stored, served as they are: no compression on a hit.
    assert_eq!(hit.body, miss.body);
    assert!(hit.body.len() * 4 < original.len(), "{}", hit.body.len());
    assert_eq!(hit.header("content-length"), hit.body.len().to_string());
    assert!(hit.varies_on_accept_encoding());
    assert_eq!(hit.header("etag"), coded(&hit.body));

    for accept in [
        None,
        Some(("accept-encoding", "identity")),
        Some(("accept-encoding", "gzip;q=0")),
    ] {
        let headers: Vec<_> = accept.into_iter().collect();
        let plain = site.get("/list", &headers).await;
        assert_eq!((plain.status, plain.header("x-cache")), (200, "HIT"));
        assert!(!plain.gzipped(), "{headers:?}");
        assert_eq!(plain.body, original);
        assert_eq!(plain.header("content-length"), original.len().to_string());
        assert_eq!(plain.header("etag"), "\"v1\"");
        assert!(plain.varies_on_accept_encoding());
    }
    assert_eq!(site.origin.calls(), 1);

    // Stored compressed, and the stats say by how much.
    let client = redis.client().await;
    let key = site
        .cache
        .handle()
        .key_for(&http::Method::GET, &"/list".parse().unwrap())
        .unwrap();
    let stored: Bytes = tower_redis_cache::fred::prelude::KeysInterface::get(&client, &key)
        .await
        .unwrap();
    assert!(
        stored.len() * 4 < original.len(),
        "{} bytes in Redis",
        stored.len()
    );
    let stats = site.cache.handle().stats();
    assert_eq!(stats.body_bytes, original.len() as u64);
    assert_eq!(stats.body_bytes_at_rest, hit.body.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_client_that_misses_gets_the_body_and_a_later_gzip_client_hits() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let miss = site.get("/list", &[]).await;
    assert_eq!(miss.header("x-cache"), "MISS");
    assert!(!miss.gzipped());
    assert_eq!(miss.body, list(20_000));
    assert!(miss.varies_on_accept_encoding());
    let hit = site.get("/list", &[GZIP]).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert!(hit.gzipped());
    assert_eq!(hit.content(), list(20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_9_3_2_head_has_the_fields_of_the_get_each_client_would_get() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    site.get("/list", &[]).await;
    for headers in [&[GZIP][..], &[]] {
        let get = site.get("/list", headers).await;
        let head = site.send("HEAD", "/list", headers).await;
        assert_eq!(head.header("x-cache"), "HIT");
        assert!(head.body.is_empty());
        for name in [
            "content-length",
            "content-encoding",
            "etag",
            "vary",
            "content-type",
        ] {
            assert_eq!(head.header(name), get.header(name), "{name} {headers:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_13_1_2_if_none_match_is_answered_for_the_representation_served() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    site.get("/list", &[]).await;
    let tag = coded(&site.get("/list", &[GZIP]).await.body);
    let tag = tag.as_str();
    // Each client's own tag: 304, with that tag.
    let gz = site.get("/list", &[GZIP, ("if-none-match", tag)]).await;
    assert_eq!(gz.status, 304);
    assert_eq!(gz.header("etag"), tag);
    assert!(gz.varies_on_accept_encoding());
    let plain = site.get("/list", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(plain.status, 304);
    assert_eq!(plain.header("etag"), "\"v1\"");
    // The other representation's tag: the body this client gets is not
    // the one it holds.
    let gz = site
        .get("/list", &[GZIP, ("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(gz.status, 200);
    assert!(gz.gzipped());
    let plain = site.get("/list", &[("if-none-match", tag)]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body, list(20_000));
    // A HEAD that misses goes to the origin with its conditional: the gzip
    // tag is mapped back to the origin's, and its 304 carries the client's.
    let calls = site.origin.calls();
    let head = site
        .send("HEAD", "/list?page=2", &[GZIP, ("if-none-match", tag)])
        .await;
    assert_eq!(site.origin.calls(), calls + 1);
    let seen = site.origin.last_headers();
    assert_eq!(seen["if-none-match"], format!("{tag}, \"v1\""));
    assert_eq!((head.status, head.header("etag")), (304, tag));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_14_ranges_are_of_the_representation_served() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = list(20_000);
    let stored = site.get("/list", &[GZIP]).await.body;
    let tag = coded(&stored);
    let tag = tag.as_str();

    let gz = site.get("/list", &[GZIP, ("range", "bytes=0-99")]).await;
    assert_eq!(gz.status, 206);
    assert!(gz.gzipped());
    assert_eq!(gz.body, stored.slice(0..100));
    assert_eq!(
        gz.header("content-range"),
        format!("bytes 0-99/{}", stored.len())
    );

    let plain = site.get("/list", &[("range", "bytes=100-199")]).await;
    assert_eq!(plain.status, 206);
    assert!(!plain.gzipped());
    assert_eq!(plain.body, original.slice(100..200));
    assert_eq!(
        plain.header("content-range"),
        format!("bytes 100-199/{}", original.len())
    );

    // If-Range with the tag of the representation served: the part; with
    // the other one's: the whole representation.
    let part = site
        .get("/list", &[GZIP, ("range", "bytes=0-9"), ("if-range", tag)])
        .await;
    assert_eq!((part.status, part.body.len()), (206, 10));
    let whole = site
        .get(
            "/list",
            &[GZIP, ("range", "bytes=0-9"), ("if-range", "\"v1\"")],
        )
        .await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, stored);
    let whole = site
        .get("/list", &[("range", "bytes=0-9"), ("if-range", tag)])
        .await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_reach_clients_as_sent_is_stored_as_sent() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    // `no-transform`, a type that does not compress, a body below the
    // threshold: stored and served as the origin sent them, to every client.
    for path in ["/exact", "/png", "/small"] {
        site.get(path, &[GZIP]).await;
        for headers in [&[GZIP][..], &[]] {
            let hit = site.get(path, headers).await;
            assert_eq!(hit.header("x-cache"), "HIT", "{path}");
            assert!(!hit.gzipped(), "{path}");
            assert_eq!(hit.header("etag"), "\"v1\"", "{path}");
            assert!(!hit.varies_on_accept_encoding(), "{path}");
        }
    }
    // What the origin encoded itself is stored as it was, under its own
    // `Vary`: the gzip client gets the origin's bytes.
    let first = site.get("/encoded", &[GZIP]).await;
    let again = site.get("/encoded", &[GZIP]).await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("etag"), "\"v1\"");
    assert_eq!(gunzip(&again.body), list(20_000));
    let stats = site.cache.handle().stats();
    assert_eq!(stats.body_bytes, stats.body_bytes_at_rest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_3_revalidating_a_compressed_entry_sends_the_origins_tag() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    site.get("/stale", &[GZIP]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let gz = site.get("/stale", &[GZIP]).await;
    assert_eq!(gz.header("x-cache"), "REVALIDATED");
    assert_eq!(site.origin.last_headers()["if-none-match"], "\"v1\"");
    assert!(gz.gzipped());
    assert_eq!(gz.content(), list(20_000));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let plain = site.get("/stale", &[]).await;
    assert_eq!(plain.header("x-cache"), "REVALIDATED");
    assert!(!plain.gzipped());
    assert_eq!(plain.body, list(20_000));
    assert_eq!(
        plain.header("content-length"),
        list(20_000).len().to_string()
    );
    let hit = site.get("/stale", &[]).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(hit.body, list(20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_body_that_would_decompress_past_max_body_bytes_is_a_counted_miss() {
    let redis = RedisServer::start();
    let big = Site::on_redis(&redis).await;
    big.get("/list", &[GZIP]).await;
    // Another instance on the same Redis that stores nothing over 10 KB: the
    // entry holds about 2 KB, but decompresses to 20 KB.
    let small = Site::start(
        RedisCacheLayer::builder()
            .store(redis.store().await)
            .max_body_bytes(10_000),
    )
    .await;
    let got = small.get("/list", &[]).await;
    assert_eq!(got.header("x-cache"), "MISS");
    assert_eq!(got.body, list(20_000));
    assert_eq!(small.origin.calls(), 1);
    assert_eq!(small.cache.handle().stats().corrupt_entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_stored_uncompressed_still_read_and_a_policy_can_turn_compression_off() {
    let redis = RedisServer::start();
    let off = Site::start(
        RedisCacheLayer::builder()
            .store(redis.store().await)
            .path_prefix(
                "/",
                CachePolicy::new()
                    .origin_driven()
                    .compression(Compression::off()),
            ),
    )
    .await;
    off.get("/list", &[GZIP]).await;
    let hit = off.get("/list", &[GZIP]).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert!(!hit.gzipped());
    // An instance that compresses reads the uncompressed entry as it is.
    let on = Site::on_redis(&redis).await;
    let hit = on.get("/list", &[GZIP]).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert!(!hit.gzipped());
    assert_eq!(hit.body, list(20_000));
    assert_eq!(on.origin.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_tier_serves_both_representations() {
    let redis = RedisServer::start();
    let tiered = TieredStore::connect(redis.store().await, LocalTier::new().track_prefix("gz:"))
        .await
        .unwrap();
    let site = Site::start(RedisCacheLayer::builder().store(tiered)).await;
    site.get("/list", &[]).await;
    for _ in 0..3 {
        let gz = site.get("/list", &[GZIP]).await;
        assert_eq!(gz.header("x-cache"), "HIT");
        assert!(gz.gzipped());
        assert_eq!(gz.content(), list(20_000));
        let plain = site.get("/list", &[]).await;
        assert_eq!(plain.header("x-cache"), "HIT");
        assert_eq!(plain.body, list(20_000));
        assert_eq!(
            plain.header("content-length"),
            list(20_000).len().to_string()
        );
        let head = site.send("HEAD", "/list", &[]).await;
        assert_eq!(
            head.header("content-length"),
            list(20_000).len().to_string()
        );
    }
}

#[test]
fn bad_compression_settings_fail_at_build_with_what_to_fix() {
    for (compression, says) in [
        (Compression::gzip().level(0), "level 0"),
        (Compression::gzip().level(10), "level 10"),
        (Compression::gzip().max_ratio(0.0), "max_ratio 0"),
        (Compression::gzip().max_ratio(1.5), "max_ratio 1.5"),
    ] {
        let err = RedisCacheLayer::builder()
            .path_prefix("/api", CachePolicy::new().compression(compression))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_body_streams_decompressed_in_chunks_and_ranges_cross_them() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = list(200_000);
    site.get("/long", &[GZIP]).await;
    let plain = site.get("/long", &[]).await;
    assert_eq!(plain.header("x-cache"), "HIT");
    assert_eq!(plain.body, original);
    // Across the boundary of the first two 32 KiB chunks.
    let part = site.get("/long", &[("range", "bytes=32700-32900")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, original.slice(32700..32901));
    let tail = site.get("/long", &[("range", "bytes=-10")]).await;
    assert_eq!(tail.body, original.slice(original.len() - 10..));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_put_by_hand_is_stored_as_the_layer_would_store_it() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let body = list(20_000);
    let response = Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "max-age=60")
        .header("etag", "\"p1\"")
        .body(body.clone())
        .unwrap();
    let handle = site.cache.handle();
    assert!(handle
        .put(&"/list".parse().unwrap(), response)
        .await
        .unwrap());
    let stats = handle.stats();
    assert_eq!(stats.body_bytes, body.len() as u64);
    assert!(stats.body_bytes_at_rest * 4 < stats.body_bytes);
    let gz = site.get("/list", &[GZIP]).await;
    assert_eq!(gz.header("x-cache"), "HIT");
    assert!(gz.gzipped());
    let id = u32::from_le_bytes(gz.body[4..8].try_into().unwrap());
    assert_eq!(gz.header("etag"), format!("\"p1-gzip-{id:08x}\""));
    assert_eq!(gz.content(), body);
    let plain = site.get("/list", &[]).await;
    assert_eq!(plain.body, body);
    assert_eq!(site.origin.calls(), 0);
}
