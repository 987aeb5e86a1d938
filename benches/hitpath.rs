//! The in-process hit path, for instruction counts: `N` requests through one
//! service on a current-thread runtime, with no network and no clock in the
//! loop, so `valgrind --tool=callgrind` counts the same instructions on every
//! run whatever else the machine is doing.
//!
//! ```text
//! cargo bench --features bench --bench hitpath --no-run
//! HITPATH=floor valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/hitpath-*
//! HITPATH=layer valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/hitpath-*
//! ```
//!
//! `floor` is a plain handler returning the 200 B body; `layer` is the same
//! handler behind the layer on the in-memory store, every request a hit;
//! `decode` decodes a stored 200 B entry (what a hit on Redis adds);
//! `miss` sends every request to a new URL through the layer on the
//! in-memory store (the CPU of a miss, without Redis), next to
//! `floor-paths`, the plain handler with the same URLs;
//! `down` is the layer with its Redis unreachable (target F);
//! `http-floor` and `http-tiered` serve A and D of the load benchmark with
//! axum on a loopback socket and send the requests one after the other over
//! one connection, so the count covers hyper, axum and a client too (not
//! the kernel);
//! `redis-get` is a handler doing one fred `GET` of the body and `redis` the
//! layer on `RedisStore`, every request a hit (B and C of the load
//! benchmark, in process: the count covers fred but not Redis);
//! `redis-miss` sends every request to a new URL through the layer on
//! `RedisStore` (E's CPU, without the origin's wait);
//! `redis-wide` is `redis` over 4 096 stored URLs in turn, more than the
//! layer keeps decoded entries for (its start-up stores them and hits each
//! once, so `HITPATH_N=0` subtracts that);
//! `tiered` is the layer on `TieredStore` (the L1 tier in front of a Redis
//! the harness starts), every request an L1 hit, as target D of the load
//! benchmark.
//! `HITPATH_BODY` (bytes) replaces the 200 B body with a JSON list of
//! about that size (compressed at rest from 1 KiB; the client sends no
//! `Accept-Encoding`, so a hit serves the body decoded).
//! Subtract a run with `HITPATH_N=0` from each to leave out start-up, and
//! divide by `N` (default 20 000). Without valgrind it prints the time per
//! request, which is only a rough guide.

use std::{
    convert::Infallible,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_redis_cache::{
    store::{MemoryStore, RedisStore, Store},
    CacheBody, RedisCacheLayer,
};

#[allow(unused_macros)]
#[path = "../tests/support/mod.rs"]
mod support;

const ITEM: &str = r#"{"id":"42","name":"Product 42","category":"electronics","price":299.99,"in_stock":true,"created_at":"2025-01-01T00:00:00Z","tags":["a","b","c"],"rating":4.5,"reviews":1234,"sku":"SKU-000042-XYZ"}"#;

/// The body every handler returns: one item (about 200 B), or with
/// `HITPATH_BODY` (bytes) a JSON list of that many bytes or a little less,
/// items numbered in turn.
static BODY: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
    let len: usize = std::env::var("HITPATH_BODY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len <= ITEM.len() {
        return Bytes::from_static(ITEM.as_bytes());
    }
    let mut list = String::from("[");
    let mut i = 0;
    loop {
        let item = ITEM.replace("42", &i.to_string());
        if list.len() + item.len() + 2 > len {
            break;
        }
        if i > 0 {
            list.push(',');
        }
        list.push_str(&item);
        i += 1;
    }
    list.push(']');
    Bytes::from(list)
});

async fn handler(_: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(BODY.clone()))
        .expect("a valid response"))
}

/// The benchmark's layer, on `store` (the in-memory store when `None`).
fn layer<S: Store>(store: Option<S>) -> RedisCacheLayer {
    let builder = RedisCacheLayer::builder().prefix("hitpath");
    match store {
        Some(store) => builder.store(store),
        None => builder,
    }
    .build()
    .expect("a layer")
}

/// The L1 tier in front of `redis`.
#[cfg(feature = "l1")]
async fn tiered(redis: &support::RedisServer) -> tower_redis_cache::store::TieredStore {
    use tower_redis_cache::store::{LocalTier, TieredStore};
    TieredStore::connect(
        redis.store().await,
        LocalTier::new().track_prefix("hitpath:"),
    )
    .await
    .expect("a tiered store")
}

/// The handler behind `layer`.
fn cached(
    layer: RedisCacheLayer,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<CacheBody<Full<Bytes>>>,
    Error = Infallible,
> + Clone {
    tower::ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(handler))
}

/// Responses the layer marked as hits (`x-cache: HIT`), printed with the
/// count so that a mode that stopped hitting shows.
static HITS: AtomicUsize = AtomicUsize::new(0);

fn tally<B>(res: &Response<B>) {
    if res.headers().get("x-cache").is_some_and(|v| v == "HIT") {
        HITS.fetch_add(1, Relaxed);
    }
}

async fn drive<S, B>(svc: S, n: usize) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    drive_paths(svc, n, |_| "/products/42".to_owned()).await
}

async fn drive_paths<S, B>(mut svc: S, n: usize, path: impl Fn(usize) -> String) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut bytes = 0;
    for i in 0..n {
        let req = Request::get(path(i))
            .body(Full::default())
            .expect("a request");
        let res = svc
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("a response");
        tally(&res);
        bytes += res
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
            .len();
    }
    bytes
}

fn main() {
    let mode = std::env::var("HITPATH").unwrap_or_else(|_| "layer".into());
    let n: usize = std::env::var("HITPATH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let started = Instant::now();
        let bytes = match mode.as_str() {
            "floor" => drive(tower::service_fn(handler), n).await,
            "decode" => {
                use tower_redis_cache::__bench::{decode, encode};
                let mut headers = http::HeaderMap::new();
                headers.insert("content-type", "application/json".parse().expect("a value"));
                headers.insert(
                    "date",
                    "Wed, 25 Nov 2026 20:00:00 GMT".parse().expect("a value"),
                );
                headers.insert("etag", "\"8a4f0c2e\"".parse().expect("a value"));
                let value = encode(&headers, &BODY);
                (0..n)
                    .map(|_| decode(std::hint::black_box(&value)).unwrap_or(0))
                    .sum()
            }
            #[cfg(feature = "l1")]
            "tiered" => {
                let redis = support::RedisServer::start();
                let svc = cached(layer(Some(tiered(&redis).await)));
                // Stored, then read once from Redis into the tier; the rest
                // are L1 hits.
                drive(svc.clone(), 2).await + drive(svc, n).await
            }
            "miss" => {
                let svc = cached(layer(None::<MemoryStore>));
                drive_paths(svc, n, |i| format!("/products/{i}")).await
            }
            "down" => {
                // Nothing listens on the port: after the first failures the
                // breaker is open and every request passes through.
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                let store = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
                    .build()
                    .expect("a store");
                let svc = cached(layer(Some(store)));
                drive(svc.clone(), 10).await + drive(svc, n).await
            }
            #[cfg(feature = "l1")]
            "http-floor" | "http-tiered" | "http-redis-get" | "http-redis" => {
                http(mode.as_str(), n).await
            }
            "redis-get" | "redis" => redis(mode == "redis", n).await,
            "redis-wide" => {
                let redis = support::RedisServer::start();
                let svc = cached(layer(Some(redis.store().await)));
                let path = |i: usize| format!("/products/{}", i % 4096);
                drive_paths(svc.clone(), 2 * 4096, path).await + drive_paths(svc, n, path).await
            }
            "redis-miss" => {
                let redis = support::RedisServer::start();
                let svc = cached(layer(Some(redis.store().await)));
                drive_paths(svc, n, |i| format!("/products/{i}")).await
            }
            "floor-paths" => {
                drive_paths(tower::service_fn(handler), n, |i| format!("/products/{i}")).await
            }
            _ => {
                let svc = cached(layer(None::<MemoryStore>));
                // The first request stores the entry; the rest are hits.
                drive(svc.clone(), 1).await + drive(svc, n).await
            }
        };
        let took = started.elapsed();
        println!(
            "{mode}: {n} requests, {bytes} body bytes, {} hits, {:.0} ns per request",
            HITS.load(Relaxed),
            took.as_nanos() as f64 / n.max(1) as f64
        );
    });
}

/// Targets A (`http-floor`), B (`http-redis-get`), C (`http-redis`) and D
/// (`http-tiered`) of the load benchmark, served by axum on loopback and
/// driven by a hyper client in the same runtime.
#[cfg(feature = "l1")]
async fn http(mode: &str, n: usize) -> usize {
    use axum::{routing::get, Router};
    use tower_redis_cache::fred::prelude::KeysInterface;
    let redis = support::RedisServer::start();
    let json = |body: Bytes| ([(http::header::CONTENT_TYPE, "application/json")], body);
    let app = match mode {
        "http-tiered" => Router::new()
            .route(
                "/products/42",
                get(move || async move { json(BODY.clone()) }),
            )
            .layer(layer(Some(tiered(&redis).await))),
        "http-redis" => Router::new()
            .route(
                "/products/42",
                get(move || async move { json(BODY.clone()) }),
            )
            .layer(layer(Some(redis.store().await))),
        "http-redis-get" => {
            let pool = redis.store().await.pool().clone();
            let () = pool
                .set("hitpath:raw", BODY.clone(), None, None, false)
                .await
                .expect("a SET");
            Router::new().route(
                "/products/42",
                get(move || {
                    let pool = pool.clone();
                    async move {
                        let body: Bytes = pool.get("hitpath:raw").await.expect("a GET");
                        json(body)
                    }
                }),
            )
        }
        _ => Router::new().route(
            "/products/42",
            get(move || async move { json(BODY.clone()) }),
        ),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("a connection");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("a handshake");
    tokio::spawn(conn);
    let mut bytes = 0;
    // Two warm-up requests store the entry and fill the tier.
    for _ in 0..n + 2 {
        let req = Request::get("/products/42")
            .header("host", "bench")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("a request");
        let res = sender.send_request(req).await.expect("a response");
        tally(&res);
        bytes += res
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
            .len();
    }
    bytes
}

/// Targets B (`layered` false: one fred `GET` in the handler) and C (the
/// layer on Redis, every request a hit) of the load benchmark, in process.
async fn redis(layered: bool, n: usize) -> usize {
    use tower_redis_cache::fred::prelude::KeysInterface;
    let redis = support::RedisServer::start();
    let store = redis.store().await;
    if layered {
        let svc = cached(layer(Some(store)));
        return drive(svc.clone(), 1).await + drive(svc, n).await;
    }
    let pool = store.pool().clone();
    let () = pool
        .set("hitpath:raw", BODY.clone(), None, None, false)
        .await
        .expect("a SET");
    let svc = tower::service_fn(move |_: Request<Full<Bytes>>| {
        let pool = pool.clone();
        async move {
            let body: Bytes = pool.get("hitpath:raw").await.expect("a GET");
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("a valid response"),
            )
        }
    });
    drive(svc, n).await
}
