//! Bodies stored gzip-compressed (docs/compression.md), attacked as shared
//! caches are attacked and as HTTP clients misbehave: client-controlled
//! fields that might make a later client get the wrong representation, every
//! path that serves an entry, origins of every kind, entries tampered with
//! in Redis, and Redis failing. Real Redis, real sockets.
//!
//! Each test states what a client must see.

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{Read, Write},
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, SystemTime},
};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use sha2::{Digest, Sha256};
use support::{Origin, RedisServer, Relay};
use tower_redis_cache::{
    fred::prelude::{Expiration, KeysInterface},
    store::{LocalTier, MemoryStore, RedisStore, TieredStore},
    CachePolicy, Compression, RedisCacheLayer, RedisCacheLayerBuilder,
};

/// Live heap bytes of this test binary, for the one test that checks how
/// much memory served entries keep.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the same
// arguments; the counter is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            LIVE.fetch_add(new_size, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

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

/// `len` bytes that do not compress (no repetition), as `text/plain`.
fn noise(len: usize) -> Bytes {
    let mut x = 0x9e37_79b9_u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A gzip member decoded as most clients do (one member, checksum checked).
fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// As clients that read every member of a gzip stream do (Go's
/// `compress/gzip`, Python's `gzip`, zcat).
fn gunzip_all(bytes: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An RFC 9530 digest field value: `sha-256=:<base64>:`.
fn sha256_field(bytes: &[u8]) -> String {
    format!("sha-256=:{}:", base64(&Sha256::digest(bytes)))
}

fn now() -> String {
    httpdate::fmt_http_date(SystemTime::now())
}

fn respond(code: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Body> {
    let mut b = Response::builder().status(code);
    for (n, v) in headers {
        b = b.header(*n, v.as_str());
    }
    b.body(Body::from(body.into())).unwrap()
}

/// The body `/list` and the other JSON paths send.
/// The gzip representation's entity tag for the stored member `member` of a
/// response tagged `tag`: the tag with `-gzip-` and the member's id (the
/// four header bytes gzip keeps for a modification time).
fn coded_tag(tag: &str, member: &[u8]) -> String {
    let id = u32::from_le_bytes(member[4..8].try_into().unwrap());
    let (weak, inner) = tag.strip_prefix("W/").map_or(("", tag), |t| ("W/", t));
    format!("{weak}{}-gzip-{id:08x}\"", &inner[..inner.len() - 1])
}

/// The member the cache stores for [`original`] at the default level (the
/// same bytes on every run: gzip output is deterministic for one level and
/// library), with its id in the header.
fn original_member() -> Vec<u8> {
    let mut member = gzip_at(&original(), 6);
    let mut crc = flate2::Crc::new();
    crc.update(&member[10..member.len() - 8]);
    member[4..8].copy_from_slice(&crc.sum().to_le_bytes());
    member
}

fn gzip_at(bytes: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

static V1_GZIP: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| coded_tag("\"v1\"", &original_member()));
static W_V1_GZIP: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| coded_tag("W/\"v1\"", &original_member()));

fn original() -> Bytes {
    list(20_000)
}

/// What the origin behind the cache answers. Every path is JSON of 20 KB
/// with `ETag: "v1"`, fresh for 60 s, and answers `If-None-Match: "v1"`
/// with a `304`, except:
/// - `/long`: 300 KB (above what the in-process tier keeps decoded);
/// - `/swr`: fresh for 1 s, then stale-while-revalidate for 60 s;
/// - `/sie`: fresh for 1 s, then stale-if-error for 60 s;
/// - `/nt304`: fresh for 1 s; its `304`s say `no-transform`;
/// - `/digest`: with `Content-Digest` and `Repr-Digest` of the body;
/// - `/weak`: a weak tag; `/noetag`: none; `/unquoted`: `ETag: v1`;
/// - `/cdn`: no `Cache-Control`, `CDN-Cache-Control: max-age=60, no-transform`;
/// - `/vary`: `Vary: Accept-Encoding`; `/varystar`: `Vary: *`;
/// - `/missing`: a 404 with the JSON body;
/// - `/t1023`, `/t1024`: text of that many bytes; `/random`: 20 KB of noise;
/// - `/encoded`: gzipped by the origin, `Vary: Accept-Encoding`;
///   `/identity`: `Content-Encoding: identity`;
/// - `/cookie`: with a `Set-Cookie`;
/// - `/bigput`: a short text (the tests put the entry by hand).
fn catalogue() -> Origin {
    Origin::new(|req, _| {
        let path = req.uri().path();
        let cc = match path {
            "/swr" => "max-age=1, stale-while-revalidate=60",
            "/sie" => "max-age=1, stale-if-error=60",
            "/nt304" => "max-age=1",
            _ => "max-age=60",
        };
        let named_v1 = req
            .headers()
            .get_all("if-none-match")
            .iter()
            .any(|v| v.to_str().unwrap().split(',').any(|t| t.trim() == "\"v1\""));
        let mut h: Vec<(&str, String)> = vec![
            ("date", now()),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT".into()),
        ];
        let etag = match path {
            "/weak" => Some("W/\"v1\""),
            "/noetag" => None,
            "/unquoted" => Some("v1"),
            _ => Some("\"v1\""),
        };
        if let Some(tag) = etag {
            h.push(("etag", tag.into()));
        }
        if named_v1 && etag == Some("\"v1\"") {
            let cc = if path == "/nt304" {
                "max-age=60, no-transform"
            } else {
                cc
            };
            h.push(("cache-control", cc.into()));
            return respond(304, &h, Bytes::new());
        }
        if path != "/cdn" {
            h.push(("cache-control", cc.into()));
        }
        let json = "application/json".to_string();
        let text = "text/plain; charset=utf-8".to_string();
        let body = match path {
            "/long" => list(300_000),
            "/t1023" => Bytes::from(vec![b'a'; 1023]),
            "/t1024" => Bytes::from(vec![b'a'; 1024]),
            "/random" => noise(20_000),
            "/bigput" => Bytes::from_static(b"from the origin"),
            _ => original(),
        };
        let kind = match path {
            "/t1023" | "/t1024" | "/random" | "/bigput" => text,
            _ => json,
        };
        h.push(("content-type", kind));
        match path {
            "/digest" => {
                h.push(("content-digest", sha256_field(&body)));
                h.push(("repr-digest", sha256_field(&body)));
            }
            "/cdn" => h.push(("cdn-cache-control", "max-age=60, no-transform".into())),
            "/vary" => h.push(("vary", "Accept-Encoding".into())),
            "/varystar" => h.push(("vary", "*".into())),
            "/identity" => h.push(("content-encoding", "identity".into())),
            "/cookie" => h.push(("set-cookie", "session=secret".into())),
            "/encoded" => {
                h.push(("content-encoding", "gzip".into()));
                h.push(("vary", "accept-encoding".into()));
                return respond(200, &h, gzip(&body));
            }
            "/missing" => return respond(404, &h, body),
            _ => {}
        }
        respond(200, &h, body)
    })
}

/// A response as a client read it off the socket (the body as sent, not
/// decoded), and whether it arrived whole.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    complete: bool,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or("<not text>"))
    }

    fn gzipped(&self) -> bool {
        self.headers
            .get_all("content-encoding")
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
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

/// Which representation a response must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Gzip,
    Identity,
    /// Either, but self-consistent.
    Any,
}

/// A complete `200` whose fields describe its body: `Content-Encoding:
/// gzip` if and only if the body is a gzip member of `original` (with the
/// `-gzip` tag and `Vary: Accept-Encoding`), `Content-Length` the length
/// sent, the origin's own tag otherwise.
#[track_caller]
fn assert_represents(got: &Got, original: &[u8], want: Want, what: &str) {
    assert!(got.complete, "{what}: the body did not arrive whole");
    assert_eq!(got.status, 200, "{what}: {got:?}");
    if let Some(len) = got.headers.get("content-length") {
        assert_eq!(
            len.to_str().unwrap(),
            got.body.len().to_string(),
            "{what}: content-length"
        );
    }
    let coded = got.gzipped();
    match want {
        Want::Gzip => assert!(coded, "{what}: expected the gzip representation"),
        Want::Identity => assert!(!coded, "{what}: expected the body as sent"),
        Want::Any => {}
    }
    if coded {
        assert_eq!(
            gunzip(&got.body).expect("gzip bytes with content-encoding gzip"),
            original,
            "{what}"
        );
        assert!(got.varies_on_accept_encoding(), "{what}: no Vary");
        let tag = got.header("etag");
        assert!(
            tag.is_empty() || tag == coded_tag(&format!("{}\"", &tag[..tag.len() - 15]), &got.body),
            "{what}: {tag}"
        );
    } else {
        assert!(
            got.body[..] == *original,
            "{what}: the body is not the origin's ({} bytes, gzip magic: {})",
            got.body.len(),
            got.body.starts_with(&[0x1f, 0x8b])
        );
        assert!(!got.header("etag").contains("-gzip"), "{what}");
    }
}

/// The layer in front of an origin, served on a loopback socket.
struct Site {
    addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
    origin: Origin,
    cache: RedisCacheLayer,
}

/// The builder every site starts from: origin-driven, a 2 s store budget.
fn base() -> RedisCacheLayerBuilder {
    RedisCacheLayer::builder()
        .prefix("gza")
        .store_timeout(Duration::from_secs(2))
        .default_policy(CachePolicy::new().origin_driven())
}

impl Site {
    async fn start(builder: RedisCacheLayerBuilder, origin: Origin) -> Arc<Self> {
        let cache = builder.build().unwrap();
        let app = origin.router().layer(cache.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Arc::new(Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            origin,
            cache,
        })
    }

    async fn on_redis(redis: &RedisServer) -> Arc<Self> {
        Self::start(base().store(redis.store().await), catalogue()).await
    }

    async fn send_raw(&self, method: &str, path: &str, headers: &[(&str, HeaderValue)]) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (n, v) in headers {
            req = req.header(*n, v.clone());
        }
        // A connection closed before the response's head (the layer found
        // the body broken before its first byte) is an incomplete response.
        let res = match self.client.request(req.body(Empty::new()).unwrap()).await {
            Ok(res) => res,
            Err(e) => {
                assert!(format!("{e:?}").contains("IncompleteMessage"), "{e:?}");
                return Got {
                    status: 0,
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                    complete: false,
                };
            }
        };
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let (body, complete) = match res.into_body().collect().await {
            Ok(b) => (b.to_bytes(), true),
            Err(_) => (Bytes::new(), false),
        };
        Got {
            status,
            headers,
            body,
            complete,
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let headers: Vec<_> = headers
            .iter()
            .map(|(n, v)| (*n, HeaderValue::from_str(v).unwrap()))
            .collect();
        self.send_raw(method, path, &headers).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        self.send("GET", path, headers).await
    }

    fn key(&self, path: &str) -> String {
        self.cache
            .handle()
            .key_for(&Method::GET, &path.parse().unwrap())
            .unwrap()
    }
}

// ---------------------------------------------------------------------------
// Client-controlled fields
// ---------------------------------------------------------------------------

/// Whether a client with these `Accept-Encoding` lines must get the body as
/// sent (`Some(false)`), must get gzip (`Some(true)`), or either.
fn ae_cases() -> Vec<(Vec<HeaderValue>, Option<bool>)> {
    let v = |s: &str| HeaderValue::from_str(s).unwrap();
    let huge = format!("{}gzip", "x-unknown-coding;q=0.5, ".repeat(700));
    vec![
        (vec![], Some(false)),
        (vec![v("gzip")], Some(true)),
        (vec![v("GZIP")], Some(true)),
        (vec![v("x-gzip")], Some(true)),
        (vec![v("gzip;q=0")], Some(false)),
        (vec![v("gzip; q=0.000")], Some(false)),
        (vec![v("*")], Some(true)),
        (vec![v("*;q=0")], Some(false)),
        (vec![v("identity;q=0")], Some(false)),
        (vec![v("identity;q=0, *;q=0")], Some(false)),
        (vec![v("br;q=1, *;q=0.1")], Some(true)),
        (vec![v("*, gzip;q=0")], Some(false)),
        (vec![v("gzip;q=0"), v("gzip")], None),
        (vec![v("gzip"), v("gzip;q=0")], None),
        (vec![v("gzip;q=nan")], None),
        (vec![v("gzip;q=1e9")], None),
        (vec![v("gzip;q=-1")], Some(false)),
        (vec![v("")], Some(false)),
        (vec![v(",,, ;;; ,")], Some(false)),
        (vec![v(&huge)], Some(true)),
        (
            vec![HeaderValue::from_bytes(b"\xffgzip\xfe, gzip").unwrap()],
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accept_encoding_a_client_sends_makes_a_later_client_get_the_wrong_representation() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    for (i, (lines, accepts)) in ae_cases().into_iter().enumerate() {
        let path = format!("/p/{i}");
        let headers: Vec<(&str, HeaderValue)> = lines
            .iter()
            .map(|v| ("accept-encoding", v.clone()))
            .collect();
        let want = match accepts {
            Some(true) => Want::Gzip,
            Some(false) => Want::Identity,
            None => Want::Any,
        };
        let what = format!("{lines:?}");
        // The client that stores, then the same client on a hit, then HEAD.
        let miss = site.send_raw("GET", &path, &headers).await;
        assert_eq!(miss.header("x-cache"), "MISS", "{what}");
        assert_represents(&miss, &original, want, &format!("miss {what}"));
        let hit = site.send_raw("GET", &path, &headers).await;
        assert_eq!(hit.header("x-cache"), "HIT", "{what}");
        assert_represents(&hit, &original, want, &format!("hit {what}"));
        assert_eq!(hit.gzipped(), miss.gzipped(), "{what}");
        let head = site.send_raw("HEAD", &path, &headers).await;
        for name in ["content-length", "content-encoding", "etag", "vary"] {
            assert_eq!(head.header(name), hit.header(name), "HEAD {name} {what}");
        }
        // Later clients of both kinds.
        let gz = site.get(&path, &[GZIP]).await;
        assert_represents(&gz, &original, Want::Gzip, &format!("gzip after {what}"));
        let plain = site.get(&path, &[]).await;
        assert_represents(
            &plain,
            &original,
            Want::Identity,
            &format!("plain after {what}"),
        );
    }
    assert_eq!(site.origin.calls(), ae_cases().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditionals_ranges_and_heads_that_store_or_pass_do_not_poison_the_entry() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    let firsts: Vec<Vec<(&str, &str)>> = vec![
        vec![GZIP, ("range", "bytes=0-99")],
        vec![("range", "bytes=0-99")],
        vec![GZIP, ("range", "bytes=0-9, 20-29")],
        vec![("range", "bytes=0-9, 20-29")],
        vec![GZIP, ("range", "bytes=0-99"), ("if-range", "\"v1\"")],
        vec![("range", "bytes=0-99"), ("if-range", V1_GZIP.as_str())],
        vec![GZIP, ("range", "bytes=99999999-")],
        vec![GZIP, ("if-none-match", V1_GZIP.as_str())],
        vec![("if-none-match", "\"v1\"")],
        vec![GZIP, ("if-none-match", "\"v1\"")],
        vec![("if-none-match", V1_GZIP.as_str())],
        vec![GZIP, ("if-none-match", "*")],
        vec![GZIP, ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    ];
    for (i, first) in firsts.iter().enumerate() {
        let path = format!("/t/{i}");
        let got = site.get(&path, first).await;
        let what = format!("first {first:?}");
        assert!(got.complete, "{what}");
        let gz = first.contains(&GZIP);
        // What the first client got describes what it got.
        match got.status {
            206 => {
                assert_eq!(got.gzipped(), gz, "{what}");
                let range = got.header("content-range").to_owned();
                // One part (a multipart answer names its parts inside).
                if let Some(spec) = range.strip_prefix("bytes ") {
                    let (span, total) = spec.split_once('/').unwrap();
                    let (a, b) = span.split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    assert_eq!(got.body.len(), b - a + 1, "{what}: {range}");
                    if !gz {
                        assert_eq!(total, original.len().to_string(), "{what}");
                        assert_eq!(got.body, original.slice(a..=b), "{what}");
                    } else {
                        assert!(total.parse::<usize>().unwrap() < original.len() / 4);
                        assert_eq!(&got.body[..3], &[0x1f, 0x8b, 8], "{what}");
                    }
                }
            }
            200 => {
                let want = if gz { Want::Gzip } else { Want::Identity };
                assert_represents(&got, &original, want, &what);
            }
            304 => {
                assert!(got.body.is_empty(), "{what}");
                assert!(got.varies_on_accept_encoding(), "{what}");
                let tag = if gz { V1_GZIP.as_str() } else { "\"v1\"" };
                assert_eq!(got.header("etag"), tag, "{what}");
            }
            416 => {
                assert!(!got.gzipped(), "{what}: a 416 has no content to code");
            }
            other => panic!("{what}: {other}"),
        }
        let gz = site.get(&path, &[GZIP]).await;
        assert_eq!(gz.header("x-cache"), "HIT", "{what}");
        assert_represents(&gz, &original, Want::Gzip, &format!("gzip after {what}"));
        let plain = site.get(&path, &[]).await;
        assert_represents(
            &plain,
            &original,
            Want::Identity,
            &format!("plain after {what}"),
        );
    }
    // HEAD first passes through and stores nothing; GETs after it are right.
    let head = site.send("HEAD", "/t/head", &[GZIP]).await;
    assert_eq!(head.status, 200);
    let gz = site.get("/t/head", &[GZIP]).await;
    assert_represents(&gz, &original, Want::Gzip, "gzip after HEAD");
    let plain = site.get("/t/head", &[]).await;
    assert_represents(&plain, &original, Want::Identity, "plain after HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_cache_control_directives_serve_and_revalidate_each_representation() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    // only-if-cached on a miss: 504, nothing stored.
    let got = site
        .get("/list", &[GZIP, ("cache-control", "only-if-cached")])
        .await;
    assert_eq!(got.status, 504);
    // no-store passes through (the origin's body as sent).
    let got = site
        .get("/list", &[GZIP, ("cache-control", "no-store")])
        .await;
    assert_represents(&got, &original, Want::Any, "no-store");
    site.get("/list", &[GZIP]).await;
    for cc in ["no-cache", "max-age=0"] {
        // Revalidated with the origin's own tag; each client's conditional
        // answered for the representation it gets.
        let gz = site
            .get(
                "/list",
                &[
                    GZIP,
                    ("cache-control", cc),
                    ("if-none-match", V1_GZIP.as_str()),
                ],
            )
            .await;
        assert_eq!(site.origin.last_headers()["if-none-match"], "\"v1\"");
        assert_eq!(
            (gz.status, gz.header("etag")),
            (304, V1_GZIP.as_str()),
            "{cc}"
        );
        let plain = site
            .get(
                "/list",
                &[("cache-control", cc), ("if-none-match", "\"v1\"")],
            )
            .await;
        assert_eq!(
            (plain.status, plain.header("etag")),
            (304, "\"v1\""),
            "{cc}"
        );
        let gz = site
            .get(
                "/list",
                &[GZIP, ("cache-control", cc), ("if-none-match", "\"v1\"")],
            )
            .await;
        assert_represents(&gz, &original, Want::Gzip, cc);
        let plain = site.get("/list", &[("cache-control", cc)]).await;
        assert_represents(&plain, &original, Want::Identity, cc);
        let plain = site.get("/list", &[("pragma", "no-cache")]).await;
        assert_represents(&plain, &original, Want::Identity, "pragma");
    }
    // no-store with a gzip tag: mapped back for the origin, the client's tag
    // given back; a plain client's own tag as it is.
    let gz = site
        .get(
            "/list",
            &[
                GZIP,
                ("cache-control", "no-store"),
                ("if-none-match", V1_GZIP.as_str()),
            ],
        )
        .await;
    assert_eq!((gz.status, gz.header("etag")), (304, V1_GZIP.as_str()));
    let plain = site
        .get(
            "/list",
            &[("cache-control", "no-store"), ("if-none-match", "\"v1\"")],
        )
        .await;
    assert_eq!((plain.status, plain.header("etag")), (304, "\"v1\""));
    for cc in ["max-stale=100", "min-fresh=1", "only-if-cached"] {
        let gz = site.get("/list", &[GZIP, ("cache-control", cc)]).await;
        assert_represents(&gz, &original, Want::Gzip, cc);
        let plain = site.get("/list", &[("cache-control", cc)]).await;
        assert_represents(&plain, &original, Want::Identity, cc);
    }
}

// ---------------------------------------------------------------------------
// Every path that serves an entry
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_followers_get_their_own_representation_not_the_leaders() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    for leader_gzip in [true, false] {
        let path = if leader_gzip { "/sf/gz" } else { "/sf/plain" };
        let mut hold = site.origin.hold_next();
        let leader = {
            let site = site.clone();
            let headers: Vec<(&str, &str)> = if leader_gzip { vec![GZIP] } else { vec![] };
            tokio::spawn(async move { site.get(path, &headers).await })
        };
        hold.entered().await;
        let kinds: Vec<Vec<(&'static str, &'static str)>> = vec![
            vec![],
            vec![GZIP],
            vec![("accept-encoding", "x-gzip")],
            vec![("accept-encoding", "gzip;q=0")],
            vec![GZIP, ("if-none-match", V1_GZIP.as_str())],
            vec![("if-none-match", "\"v1\"")],
        ];
        let followers: Vec<_> = kinds
            .iter()
            .cloned()
            .map(|headers| {
                let site = site.clone();
                tokio::spawn(async move { (headers.clone(), site.get(path, &headers).await) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        hold.release();
        let led = leader.await.unwrap();
        let want = if leader_gzip {
            Want::Gzip
        } else {
            Want::Identity
        };
        assert_represents(&led, &original, want, "leader");
        for follower in followers {
            let (headers, got) = follower.await.unwrap();
            let what = format!("follower {headers:?} of a gzip leader: {leader_gzip}");
            let gz = headers
                .iter()
                .any(|(_, v)| v.contains("gzip") && !v.contains("q=0"));
            let conditional = headers.iter().any(|(n, _)| *n == "if-none-match");
            if conditional {
                assert_eq!(got.status, 304, "{what}");
                let tag = if gz { V1_GZIP.as_str() } else { "\"v1\"" };
                assert_eq!(got.header("etag"), tag, "{what}");
            } else {
                let want = if gz { Want::Gzip } else { Want::Identity };
                assert_represents(&got, &original, want, &what);
            }
        }
    }
    assert_eq!(site.origin.calls(), 2, "one call per flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_and_stale_if_error_serve_each_representation() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    site.get("/swr", &[GZIP]).await;
    site.get("/sie", &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Stale-while-revalidate: served at once, refreshed behind.
    let plain = site.get("/swr", &[]).await;
    assert_eq!(plain.header("x-cache"), "STALE");
    assert_represents(&plain, &original, Want::Identity, "swr plain");
    let gz = site.get("/swr", &[GZIP]).await;
    assert_represents(&gz, &original, Want::Gzip, "swr gzip");
    // Stale-if-error: the origin fails, the stale entry stands in for it.
    site.origin.fail(true);
    for _ in 0..2 {
        let gz = site.get("/sie", &[GZIP]).await;
        assert_eq!(gz.header("x-cache"), "STALE");
        assert_represents(&gz, &original, Want::Gzip, "sie gzip");
        let plain = site.get("/sie", &[]).await;
        assert_represents(&plain, &original, Want::Identity, "sie plain");
        let head = site.send("HEAD", "/sie", &[]).await;
        assert_eq!(head.header("content-length"), original.len().to_string());
        assert!(!head.gzipped());
        let part = site.get("/sie", &[("range", "bytes=10-19")]).await;
        assert_eq!(part.body, original.slice(10..20));
        let gz = site
            .get("/sie", &[GZIP, ("if-none-match", V1_GZIP.as_str())])
            .await;
        assert!(gz.status == 304 || gz.gzipped(), "{gz:?}");
    }
    site.origin.fail(false);
}

async fn both_representations_everywhere(site: &Site, path: &str, original: &Bytes) {
    for round in 0..3 {
        let what = |s: &str| format!("{path} round {round}: {s}");
        let gz = site.get(path, &[GZIP]).await;
        assert_eq!(gz.header("x-cache"), "HIT", "{}", what("gzip"));
        assert_represents(&gz, original, Want::Gzip, &what("gzip"));
        let plain = site.get(path, &[]).await;
        assert_represents(&plain, original, Want::Identity, &what("plain"));
        let head = site.send("HEAD", path, &[]).await;
        assert_eq!(head.header("content-length"), original.len().to_string());
        assert!(!head.gzipped(), "{}", what("HEAD"));
        let head = site.send("HEAD", path, &[GZIP]).await;
        assert_eq!(head.header("content-length"), gz.body.len().to_string());
        assert!(head.gzipped(), "{}", what("HEAD gzip"));
        let part = site.get(path, &[("range", "bytes=5-14")]).await;
        assert_eq!((part.status, &part.body[..]), (206, &original[5..15]));
        let part = site.get(path, &[GZIP, ("range", "bytes=5-14")]).await;
        assert_eq!((part.status, &part.body[..]), (206, &gz.body[5..15]));
        let multi = site.get(path, &[("range", "bytes=0-1, 5-6")]).await;
        assert!(multi.complete && (multi.status == 206 || multi.body == *original));
        let coded = coded_tag("\"v1\"", &gz.body);
        let not = site
            .get(path, &[GZIP, ("if-none-match", coded.as_str())])
            .await;
        assert_eq!((not.status, not.header("etag")), (304, coded.as_str()));
        let not = site.get(path, &[("if-none-match", "\"v1\"")]).await;
        assert_eq!((not.status, not.header("etag")), (304, "\"v1\""));
        let other = site.get(path, &[("if-none-match", coded.as_str())]).await;
        assert_represents(&other, original, Want::Identity, &what("other tag"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_and_the_in_process_tier_serve_both_representations() {
    let memory = Site::start(base().store(MemoryStore::new(64 << 20)), catalogue()).await;
    let redis = RedisServer::start();
    let tiered = TieredStore::connect(redis.store().await, LocalTier::new().track_prefix("gza:"))
        .await
        .unwrap();
    let tier = Site::start(base().store(tiered), catalogue()).await;
    for site in [&memory, &tier] {
        for (path, body) in [("/list", original()), ("/long", list(300_000))] {
            let first = site.get(path, &[]).await;
            assert_represents(&first, &body, Want::Identity, "miss");
            both_representations_everywhere(site, path, &body).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_put_by_hand_is_served_like_a_stored_miss() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let body = original();
    let response = Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "max-age=60")
        .header("etag", "\"v1\"")
        .body(body.clone())
        .unwrap();
    assert!(site
        .cache
        .handle()
        .put(&"/list".parse().unwrap(), response)
        .await
        .unwrap());
    both_representations_everywhere(&site, "/list", &body).await;
    assert_eq!(site.origin.calls(), 0);
}

/// `CacheHandle::put` takes bodies of any size, but a compressed body that
/// decompresses past `max_body_bytes` is read back as a corrupt entry
/// (`CacheCore::assess`): a body put by hand above that size is stored as
/// given, and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_put_by_hand_over_max_body_bytes_is_served_not_deleted_as_corrupt() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    // Above the default max_body_bytes (1 MiB).
    let body = list(1_500_000);
    let response = Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "max-age=60")
        .body(body.clone())
        .unwrap();
    let handle = site.cache.handle();
    assert!(handle
        .put(&"/bigput".parse().unwrap(), response)
        .await
        .unwrap());
    let got = site.get("/bigput", &[GZIP]).await;
    assert_eq!(
        (got.header("x-cache"), handle.stats().corrupt_entries),
        ("HIT", 0),
        "the entry put by hand was read as corrupt and deleted"
    );
    assert_represents(&got, &body, Want::Any, "put");
}

/// A strong entity tag promises the same bytes (RFC 9110 §8.8.3), and
/// `If-Range` relies on it to splice a resumed download. The gzip
/// representation's tag names the stored member (its id follows `-gzip-`):
/// an instance with another `level` (a rolling deploy, another route
/// policy, another flate2) that stores the entry again makes other bytes
/// and so another tag, and `If-Range` with a date never matches a member
/// the cache made. A resumed range never splices two members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_range_of_the_gzip_representation_never_splices_two_members() {
    let redis = RedisServer::start();
    let at = |level| {
        base().default_policy(
            CachePolicy::new()
                .origin_driven()
                .compression(Compression::gzip().level(level)),
        )
    };
    let fast = Site::start(at(1).store(redis.store().await), catalogue()).await;
    let best = Site::start(at(9).store(redis.store().await), catalogue()).await;
    let client = redis.client().await;
    let original = original();
    let validators = [
        ("an entity tag", None),
        ("a date", Some("Sun, 06 Nov 1994 08:49:37 GMT")),
    ];
    for (i, (kind, date)) in validators.into_iter().enumerate() {
        let (first_site, then) = if i == 0 {
            (&fast, &best)
        } else {
            (&best, &fast)
        };
        let first = first_site
            .get("/list", &[GZIP, ("range", "bytes=0-99")])
            .await;
        assert_eq!((first.status, first.body.len()), (206, 100));
        assert!(first.gzipped());
        let validator = date.map_or_else(|| first.header("etag").to_owned(), str::to_owned);
        // The entry goes (evicted, expired, invalidated) and the other
        // instance stores it again.
        let _: i64 = client.del(first_site.key("/list")).await.unwrap();
        let rest = then
            .get(
                "/list",
                &[
                    GZIP,
                    ("range", "bytes=100-"),
                    ("if-range", validator.as_str()),
                ],
            )
            .await;
        if rest.status == 206 {
            let mut spliced = first.body.to_vec();
            spliced.extend_from_slice(&rest.body);
            assert!(
                gunzip(&spliced).is_ok_and(|b| b == original[..]),
                "If-Range with {kind} ({validator}) spliced two different gzip members"
            );
        }
        let _: i64 = client.del(first_site.key("/list")).await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Origin responses
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_responses_of_every_kind_reach_both_clients_right() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    // Compressed, with the tag each form of validator takes.
    for (path, gz_tag, plain_tag) in [
        ("/weak", W_V1_GZIP.as_str(), "W/\"v1\""),
        ("/noetag", "", ""),
        ("/vary", V1_GZIP.as_str(), "\"v1\""),
        ("/identity", V1_GZIP.as_str(), "\"v1\""),
        ("/cookie", V1_GZIP.as_str(), "\"v1\""),
    ] {
        site.get(path, &[GZIP]).await;
        let gz = site.get(path, &[GZIP]).await;
        // A response with Set-Cookie may not be stored at all.
        let want = if path == "/cookie" {
            Want::Any
        } else {
            Want::Gzip
        };
        assert_represents(&gz, &original, want, path);
        if gz.gzipped() {
            assert_eq!(gz.header("etag"), gz_tag, "{path}");
        }
        if gz.gzipped() {
            assert_eq!(gz.headers.get_all("content-encoding").iter().count(), 1);
        }
        let vary = gz.headers.get_all("vary").iter().count();
        assert!(vary <= 1 || path != "/vary", "{path}: Vary twice");
        let plain = site.get(path, &[]).await;
        assert_represents(&plain, &original, Want::Identity, path);
        assert_eq!(plain.header("etag"), plain_tag, "{path}");
        if path == "/cookie" {
            // Set-Cookie is never replayed from the cache.
            for got in [&gz, &plain] {
                assert!(
                    got.header("x-cache") != "HIT" || got.header("set-cookie").is_empty(),
                    "{path}"
                );
            }
        }
    }
    // A 404 stored compressed.
    site.get("/missing", &[GZIP]).await;
    let gz = site.get("/missing", &[GZIP]).await;
    assert_eq!(gz.status, 404);
    assert!(gz.gzipped() && gz.varies_on_accept_encoding());
    assert_eq!(gunzip(&gz.body).unwrap(), original);
    let plain = site.get("/missing", &[]).await;
    assert_eq!((plain.status, &plain.body), (404, &original));
    assert!(!plain.gzipped());
    // The threshold, noise, the origin's own coding, Vary: *.
    for (path, body, compressed) in [
        ("/t1023", Bytes::from(vec![b'a'; 1023]), false),
        ("/t1024", Bytes::from(vec![b'a'; 1024]), true),
        ("/random", noise(20_000), false),
    ] {
        site.get(path, &[]).await;
        let gz = site.get(path, &[GZIP]).await;
        assert_eq!(gz.header("x-cache"), "HIT", "{path}");
        let want = if compressed {
            Want::Gzip
        } else {
            Want::Identity
        };
        assert_represents(&gz, &body, want, path);
        let plain = site.get(path, &[]).await;
        assert_represents(&plain, &body, Want::Identity, path);
    }
    site.get("/encoded", &[GZIP]).await;
    let gz = site.get("/encoded", &[GZIP]).await;
    assert_eq!(gz.header("x-cache"), "HIT");
    assert_eq!(
        gz.header("etag"),
        "\"v1\"",
        "the origin's own coding keeps its tag"
    );
    assert_eq!(gunzip(&gz.body).unwrap(), original);
    let plain = site.get("/encoded", &[]).await;
    assert!(plain.complete);
    for headers in [&[GZIP][..], &[]] {
        let got = site.get("/varystar", headers).await;
        assert_represents(&got, &original, Want::Any, "vary *");
    }
}

/// RFC 9530: `Content-Digest` is the digest of the content as sent, and
/// `Repr-Digest` of the representation data, both after content coding.
/// A response carrying a digest of its bytes is stored as sent, so every
/// representation served matches the digest it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_fields_describe_the_bytes_of_the_representation_sent() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    site.get("/digest", &[]).await;
    for headers in [&[][..], &[GZIP]] {
        let got = site.get("/digest", headers).await;
        assert_eq!(got.header("x-cache"), "HIT");
        for name in ["content-digest", "repr-digest"] {
            let field = got.header(name);
            assert!(
                field.is_empty() || field == sha256_field(&got.body),
                "{name} of a response with content-encoding {:?} is not the \
                 digest of its bytes: {field}",
                got.header("content-encoding")
            );
        }
    }
}

/// RFC 9110 §7.7: a proxy MUST NOT transform the content of a response
/// that contains `no-transform`. A `304` that freshens an entry stored
/// compressed may now say `no-transform`: the entry is stored again as the
/// origin sent it, and no client gets gzip from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_that_says_no_transform_ends_the_gzip_representation() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    let first = site.get("/nt304", &[GZIP]).await;
    assert!(first.gzipped());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = site.get("/nt304", &[GZIP]).await;
    assert_eq!(revalidated.header("x-cache"), "REVALIDATED");
    let hit = site.get("/nt304", &[GZIP]).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    for got in [&revalidated, &hit] {
        assert!(got.header("cache-control").contains("no-transform"));
        assert!(
            !got.gzipped(),
            "a response that says no-transform was served with a content coding \
             the origin did not send ({})",
            got.header("x-cache")
        );
        assert_eq!(got.body, original);
    }
}

/// RFC 9111 §5.2.1.6: a request's `no-transform` asks intermediaries not to
/// transform the content: such a request gets the body as the origin sent
/// it, whatever its `Accept-Encoding`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_says_no_transform_gets_the_body_as_the_origin_sent_it() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    site.get("/list", &[]).await;
    let got = site
        .get("/list", &[GZIP, ("cache-control", "no-transform")])
        .await;
    assert_eq!(got.header("x-cache"), "HIT");
    assert_represents(&got, &original, Want::Identity, "request no-transform");
}

/// RFC 9213: a targeted field this cache reads (`CDN-Cache-Control` on an
/// origin-driven route) replaces `Cache-Control` for it, `no-transform`
/// included: such a body is stored as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transform_in_the_targeted_field_the_cache_obeys_keeps_the_body_as_sent() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    let original = original();
    site.get("/cdn", &[]).await;
    let got = site.get("/cdn", &[GZIP]).await;
    assert_eq!(
        got.header("x-cache"),
        "HIT",
        "stored under CDN-Cache-Control"
    );
    assert_represents(
        &got,
        &original,
        Want::Identity,
        "CDN-Cache-Control no-transform",
    );
}

/// Two representations with different bytes must not share an entity tag
/// (RFC 9110 §8.8.3). A stored tag the layer cannot rewrite (not a quoted
/// entity-tag) is left off the gzip representation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_that_cannot_be_suffixed_is_not_shared_by_both_representations() {
    let redis = RedisServer::start();
    let site = Site::on_redis(&redis).await;
    site.get("/unquoted", &[]).await;
    let gz = site.get("/unquoted", &[GZIP]).await;
    let plain = site.get("/unquoted", &[]).await;
    assert!(gz.gzipped() && !plain.gzipped());
    assert!(
        gz.header("etag").is_empty() || gz.header("etag") != plain.header("etag"),
        "both representations carry ETag: {}",
        gz.header("etag")
    );
}

// ---------------------------------------------------------------------------
// Entries tampered with in Redis
// ---------------------------------------------------------------------------

/// An entry value taken apart where tampering needs it (src/entry.rs,
/// format 5).
struct Stored {
    format: u8,
    /// Metadata from the status to the flags byte.
    head: Vec<u8>,
    decoded: Option<u64>,
    /// Variant, marker and header count.
    mid: Vec<u8>,
    /// The headers after `content-length`.
    rest: Vec<u8>,
    body: Vec<u8>,
}

fn varint(buf: &[u8], mut at: usize) -> (u64, usize) {
    let mut n = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[at];
        at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return (n, at);
        }
        shift += 7;
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

impl Stored {
    fn parse(value: &[u8]) -> Self {
        assert_eq!(&value[..3], b"TRC");
        let len = u32::from_be_bytes(value[4..8].try_into().unwrap()) as usize;
        let meta = &value[8..8 + len];
        let mut at = 2;
        for _ in 0..8 {
            at = varint(meta, at).1;
        }
        let flags = meta[at];
        at += 1;
        let head = meta[..at].to_vec();
        let decoded = (flags & 16 != 0).then(|| {
            let (n, next) = varint(meta, at);
            at = next;
            n
        });
        let mid_from = at;
        let str_len = |at: usize| u16::from_be_bytes([meta[at], meta[at + 1]]) as usize;
        if flags & 4 != 0 {
            at += 2 + str_len(at);
        }
        if flags & 8 != 0 {
            let names = str_len(at);
            at += 2;
            for _ in 0..=names {
                at += 2 + str_len(at);
            }
        }
        at += 2;
        let mid = meta[mid_from..at].to_vec();
        assert_eq!(meta[at], 1, "content-length comes first");
        let (digits, next) = varint(meta, at + 1);
        at = next + digits as usize;
        Self {
            format: value[3],
            head,
            decoded,
            mid,
            rest: meta[at..].to_vec(),
            body: value[8 + len..].to_vec(),
        }
    }

    fn build(&self) -> Bytes {
        let mut meta = self.head.clone();
        if let Some(n) = self.decoded {
            put_varint(&mut meta, n);
        }
        meta.extend_from_slice(&self.mid);
        meta.push(1);
        let length = self.body.len().to_string();
        put_varint(&mut meta, length.len() as u64);
        meta.extend_from_slice(length.as_bytes());
        meta.extend_from_slice(&self.rest);
        let mut out = b"TRC".to_vec();
        out.push(self.format);
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        Bytes::from(out)
    }
}

/// A site whose `path` was stored compressed by a gzip client, the stored
/// value taken apart, and a Redis client to write it back.
async fn stored_entry(
    redis: &RedisServer,
    path: &str,
) -> (
    Arc<Site>,
    Stored,
    String,
    tower_redis_cache::fred::prelude::Client,
    Bytes,
) {
    let site = Site::on_redis(redis).await;
    let gz = site.get(path, &[GZIP]).await;
    assert!(gz.gzipped());
    let key = site.key(path);
    let client = redis.client().await;
    let value: Bytes = client.get(&key).await.unwrap();
    let stored = Stored::parse(&value);
    assert_eq!(
        stored.body, gz.body,
        "the stored member is what gzip clients get"
    );
    assert_eq!(stored.decoded, Some(original().len() as u64));
    assert_eq!(stored.build(), value, "the value taken apart builds again");
    (site, stored, key, client, gz.body)
}

async fn write(client: &tower_redis_cache::fred::prelude::Client, key: &str, value: Bytes) {
    let _: tower_redis_cache::fred::types::Value = client
        .set(key, value, Some(Expiration::EX(60)), None, false)
        .await
        .unwrap();
}

/// A client that does not accept gzip must never get a wrong body
/// presented as complete (docs/compression.md, "Limits and failures").
#[track_caller]
fn assert_never_wrong_and_complete(got: &Got, original: &[u8], what: &str) {
    if got.complete && got.status == 200 && !got.gzipped() {
        assert!(
            got.body[..] == *original,
            "{what}: a wrong body of {} bytes (of {}) arrived as a complete response \
             (content-length {})",
            got.body.len(),
            original.len(),
            got.header("content-length")
        );
    }
}

/// One bit flipped in the member such that the deflate stream still decodes
/// to the same length (a literal turned into another literal of the same
/// code length): only the CRC-32 in the trailer can tell. The last chunk
/// is held back until the trailer is checked, so the client never has the
/// whole `Content-Length` of wrong bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_member_never_reaches_a_plain_client_as_a_complete_response() {
    let redis = RedisServer::start();
    let (site, mut stored, key, client, member) = stored_entry(&redis, "/list").await;
    let original = original();
    // Find a flip, from the middle of the deflate data on, that keeps the
    // length and changes the bytes.
    let flipped = (member.len() / 2..member.len() - 8)
        .flat_map(|at| (0..8).map(move |bit| (at, bit)))
        .find_map(|(at, bit)| {
            let mut m = member.to_vec();
            m[at] ^= 1 << bit;
            let mut out = Vec::new();
            let ok = flate2::read::DeflateDecoder::new(&m[10..m.len() - 8])
                .take(original.len() as u64 + 1)
                .read_to_end(&mut out)
                .is_ok();
            (ok && out.len() == original.len() && out != original[..]).then_some(m)
        })
        .expect("a bit whose flip keeps the decoded length");
    stored.body = flipped;
    write(&client, &key, stored.build()).await;
    for round in 0..3 {
        let plain = site.get("/list", &[]).await;
        assert_never_wrong_and_complete(&plain, &original, &format!("round {round}"));
        let head = site.send("HEAD", "/list", &[]).await;
        assert!(head.status == 200 || head.status == 504);
    }
}

/// A member whose trailer and entry agree on a decoded length shorter than
/// the stream: found before the last of `Content-Length` bytes is out, and
/// the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_runs_long_is_not_served_cut_to_a_complete_response() {
    let redis = RedisServer::start();
    let (site, mut stored, key, client, member) = stored_entry(&redis, "/list").await;
    let original = original();
    let mut body = member.to_vec();
    let n = body.len();
    body[n - 4..].copy_from_slice(&100u32.to_le_bytes());
    stored.body = body;
    stored.decoded = Some(100);
    write(&client, &key, stored.build()).await;
    let plain = site.get("/list", &[]).await;
    assert_never_wrong_and_complete(&plain, &original, "decoded length 100");
}

/// Bytes after the member (here a second member of the same length, so the
/// trailer check passes): a plain client must not get the first member's
/// body as complete while a gzip client that reads every member gets both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_member_do_not_make_the_two_representations_differ() {
    let redis = RedisServer::start();
    let (site, mut stored, key, client, member) = stored_entry(&redis, "/list").await;
    let original = original();
    let other: Vec<u8> = original.iter().rev().copied().collect();
    let mut body = member.to_vec();
    body.extend_from_slice(&gzip(&other));
    stored.body = body;
    write(&client, &key, stored.build()).await;
    let plain = site.get("/list", &[]).await;
    let gz = site.get("/list", &[GZIP]).await;
    if plain.complete && plain.status == 200 && gz.complete && gz.gzipped() {
        let seen_by_gzip_client = gunzip_all(&gz.body).unwrap();
        assert_eq!(
            plain.body.len(),
            seen_by_gzip_client.len(),
            "a plain client and a gzip client got different bodies from one entry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_foreign_and_oversized_members_are_misses_or_cut_short_never_wrong() {
    let redis = RedisServer::start();
    let (site, stored, key, client, member) = stored_entry(&redis, "/list").await;
    let original = original();
    let n = member.len();
    // Each tampering, and what is checked after it.
    let mut cases: Vec<(&str, Stored)> = Vec::new();
    let with = |body: Vec<u8>, decoded: Option<u64>| Stored {
        format: stored.format,
        head: stored.head.clone(),
        decoded,
        mid: stored.mid.clone(),
        rest: stored.rest.clone(),
        body,
    };
    let len = original.len() as u64;
    // The middle cut out, the trailer kept: the trailer check passes.
    let mut cut = member[..n / 2].to_vec();
    cut.extend_from_slice(&member[n - 8..]);
    cases.push(("truncated, trailer kept", with(cut, Some(len))));
    // A byte flipped early: the stream breaks while it is decoded.
    let mut early = member.to_vec();
    // The first deflate block's type: 3, which is reserved.
    early[10] |= 0b110;
    cases.push(("early flip", with(early, Some(len))));
    // Declared lengths the trailer agrees with modulo 2^32, or wildly off.
    cases.push(("+4 GiB", with(member.to_vec(), Some(len + (1 << 32)))));
    cases.push(("u64::MAX", with(member.to_vec(), Some(u64::MAX))));
    cases.push(("zero", with(member.to_vec(), Some(0))));
    // Not a gzip member at all, and an empty one.
    cases.push(("plain bytes", with(original.to_vec(), Some(len))));
    cases.push(("empty", with(Vec::new(), Some(0))));
    let mut magic = member.to_vec();
    magic[0] = b'x';
    cases.push(("bad magic", with(magic, Some(len))));
    let handle = site.cache.handle();
    for (what, value) in cases {
        // The first two pass the checks made when the entry is read, and
        // break while the body is decompressed; the others are refused
        // when read: a counted miss, deleted and stored again.
        let refused = !what.starts_with("truncated") && what != "early flip";
        let corrupt = handle.stats().corrupt_entries;
        write(&client, &key, value.build()).await;
        let plain = site.get("/list", &[]).await;
        assert_never_wrong_and_complete(&plain, &original, what);
        if refused {
            assert!(plain.complete, "{what}");
            assert_eq!(plain.header("x-cache"), "MISS", "{what}");
            assert_eq!(handle.stats().corrupt_entries, corrupt + 1, "{what}");
            let gz = site.get("/list", &[GZIP]).await;
            assert_eq!(gz.header("x-cache"), "HIT", "{what}");
            assert_represents(&gz, &original, Want::Gzip, what);
            continue;
        }
        assert!(!plain.complete, "{what}: served whole");
        let gz = site.get("/list", &[GZIP]).await;
        assert!(gz.complete && gz.gzipped(), "{what}");
        // Served as stored: a client that checks the member finds out.
        assert!(gunzip(&gz.body).is_err(), "{what}");
    }
    // Nothing panicked: the site still serves.
    write(&client, &key, stored.build()).await;
    let plain = site.get("/list", &[]).await;
    assert_represents(&plain, &original, Want::Identity, "restored");
}

// ---------------------------------------------------------------------------
// Redis failing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_off_or_restarted_around_compressed_entries_serves_right_bodies() {
    let mut redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let store = RedisStore::builder(relay.url())
        .pool_size(2)
        .connect()
        .await
        .unwrap();
    let site = Site::start(
        base()
            .store(store)
            .store_timeout(Duration::from_millis(300)),
        catalogue(),
    )
    .await;
    let original = original();
    site.get("/list", &[GZIP]).await;
    let hit = site.get("/list", &[]).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    // Redis stops answering for a while (every client paused), then only
    // refuses writes: hits, misses that store and misses whose write
    // times out all give each client its representation.
    for pause in ["CLIENT PAUSE 1200 ALL", "CLIENT PAUSE 1200 WRITE"] {
        assert!(redis.node_command(0, pause).contains("OK"), "{pause}");
        for i in 0..2 {
            let path = format!("/p/{pause}{i}").replace(' ', "-");
            let gz = site.get(&path, &[GZIP]).await;
            assert_represents(&gz, &original, Want::Any, pause);
            let plain = site.get(&path, &[]).await;
            assert_represents(&plain, &original, Want::Identity, pause);
            let gz = site.get("/list", &[GZIP]).await;
            assert_represents(&gz, &original, Want::Any, pause);
            let plain = site.get("/list", &[]).await;
            assert_represents(&plain, &original, Want::Identity, pause);
        }
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    relay.cut();
    for _ in 0..3 {
        let gz = site.get("/list", &[GZIP]).await;
        assert_represents(&gz, &original, Want::Any, "gzip, Redis cut off");
        let plain = site.get("/list", &[]).await;
        assert_represents(&plain, &original, Want::Identity, "plain, Redis cut off");
        let head = site.send("HEAD", "/list", &[]).await;
        assert!(!head.gzipped());
        let part = site.get("/list", &[GZIP, ("range", "bytes=0-9")]).await;
        assert!(part.complete && part.body.len() == 10);
    }
    relay.heal();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let gz = site.get("/list", &[GZIP]).await;
        assert_represents(&gz, &original, Want::Any, "gzip, healing");
        if gz.header("x-cache") == "HIT" {
            assert!(gz.gzipped());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never hit again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Killed and started again, empty.
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let plain = site.get("/list", &[]).await;
        assert_represents(&plain, &original, Want::Identity, "plain, restarted");
        let gz = site.get("/list", &[GZIP]).await;
        assert_represents(&gz, &original, Want::Any, "gzip, restarted");
        if gz.header("x-cache") == "HIT" {
            assert!(gz.gzipped());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never hit again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// The in-process stores promise a bound (`MemoryStore::new(max_bytes)`:
/// "at most max_bytes of keys and values"; `LocalTier::max_bytes`
/// likewise). The first plain hit of a shared compressed entry keeps its
/// decoded body beside it, and the stores weigh each compressed entry with
/// that body: clients that send no `Accept-Encoding` cannot make the store
/// hold more than its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_cannot_make_an_in_process_store_outgrow_its_bound() {
    // 250 KB of JSON that compresses about 1000 to 1.
    let body = Bytes::from(r#"{"id":1,"name":"the same item"},"#.repeat(7800));
    let origin = {
        let body = body.clone();
        Origin::new(move |_, _| {
            respond(
                200,
                &[
                    ("content-type", "application/json".into()),
                    ("cache-control", "max-age=600".into()),
                ],
                body.clone(),
            )
        })
    };
    const BOUND: u64 = 1 << 20;
    const ENTRIES: usize = 400;
    let site = Site::start(base().store(MemoryStore::new(BOUND)), origin).await;
    for i in 0..ENTRIES {
        let gz = site.get(&format!("/m/{i}"), &[GZIP]).await;
        assert!(gz.gzipped());
    }
    let stats = site.cache.handle().stats();
    assert!(stats.bytes_stored < BOUND, "{}", stats.bytes_stored);
    let before = LIVE.load(Relaxed);
    for i in 0..ENTRIES {
        // The store weighs each compressed entry with the decoded body it
        // may keep, so most of these were evicted to stay in bound.
        let plain = site.get(&format!("/m/{i}"), &[]).await;
        assert_eq!(plain.body.len(), body.len());
    }
    let grown = LIVE.load(Relaxed).saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "{} MB kept after plain hits on a store bounded at {} MB",
        grown >> 20,
        BOUND >> 20
    );
}
