//! The side-by-side load benchmark: `cargo bench --bench load`.
//!
//! Starts its own `redis-server` on a free loopback port, serves eleven targets
//! on loopback and drives each in turn with the same HTTP/1.1 load generator
//! (persistent connections, fixed concurrency and duration), for several
//! rounds; the ratios are taken within each round and their median reported:
//!
//! - A: a plain axum handler returning a ~200 B JSON body from memory (the floor);
//! - B: an axum handler doing exactly one fred GET of the stored body (the
//!   physical limit of a Redis-backed hit);
//! - C: the layer on Redis, every request a hit;
//! - C'': C with `batch_reads(false)`: every hit sends its own `GET`, none
//!   shares an `MGET` with concurrent hits;
//! - C': C with `track_generations(false)`: every hit reads the namespace
//!   generation with its entry (`MGET`), as before generation tracking;
//! - D: the layer with the in-process L1 tier, every request a hit;
//! - E: a miss-only workload over a 20 ms origin, with and without the layer;
//! - F: the layer with its Redis down (every request passes through), next to A;
//! - E': E's misses with the cross-instance lock turned off, to show what
//!   the lock costs (it rides on the lookup's and the write's round trips);
//! - E0: the same origin in a handler that does bare cache-aside by hand: one
//!   fred `GET` before it and one `SET` after it, awaited before the
//!   response (the physical limit of a Redis-backed miss, as B is of a hit).
//!
//! Server and generator each get one runtime thread, so on a 2-core machine
//! they do not fight over one core. The ratios matter, not the absolute
//! numbers. `BENCH_SECONDS` (per target and round), `BENCH_ROUNDS`,
//! `BENCH_CONCURRENCY` and `BENCH_BODY` (bytes) change the run.
//!
//! # Body sizes and nginx: `BENCH_MODE=bodies`
//!
//! `BENCH_MODE=bodies cargo bench --bench load` measures instead, for each
//! body size and for two kinds of client (identity: no `Accept-Encoding`;
//! gzip: `Accept-Encoding: gzip` on every request), one after another in
//! each round, over 100 keys (`/items/0` to `/items/99`, one body each):
//!
//! - A: a plain axum handler serving the bodies from memory (the floor);
//! - C: the layer on Redis, every request a hit (its store budget raised
//!   to 1 s: 32 concurrent 1 MiB reads outlast the default 50 ms);
//! - D: the layer with the in-process L1 tier, every request a hit;
//! - N: nginx's `proxy_cache` in front of the same handler A, every request
//!   a hit (one worker, keyed on the URI, `gzip on` for `application/json`
//!   at its default level 1, `gzip_proxied any`, `gzip_vary on`; its own
//!   temp dir and a free loopback port, so it needs no root). Without
//!   `nginx` on PATH (or `BENCH_NGINX`, a path to it) N is skipped and the
//!   run says so.
//!
//! Per target: requests/s, p50/p99, the bytes read from the socket per
//! response (headers included), the fraction of gzip-encoded responses
//! and the CPU per response; every unencoded body is checked to have the
//! key's length. Then the ratios C/A, D/A, C/N, D/N and bytes C/N (median
//! of the rounds), with the issue's targets, and Redis's `MEMORY USAGE` of
//! one stored entry per size for both corpora, next to the body's length.
//! `BENCH_SIZES` (bytes, comma-separated; default `10240,102400,1048576`)
//! and `BENCH_CORPUS` (`list`, the default: a JSON array of product
//! objects; `catalogue`: a catalogue page of varied names, descriptions,
//! prices and URLs that compresses less well; or `list,catalogue`) choose
//! the bodies; `BENCH_SECONDS`, `BENCH_ROUNDS` and `BENCH_CONCURRENCY` are
//! as above (default 2 s, 5 rounds, 32 connections: about 5 minutes per
//! corpus). `BENCH_BODY` is not read.

#[allow(unused_macros)]
#[path = "../tests/support/mod.rs"]
mod support;

// In `benches/load/`, where cargo does not take them for benchmarks.
#[path = "load/bodies.rs"]
mod bodies;
#[path = "load/corpus.rs"]
mod corpus;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{extract::Path, routing::get, Router};
use bytes::Bytes;
use http::{header::CONTENT_TYPE, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::RedisServer;
use tower_redis_cache::{
    fred::{
        prelude::{ClientLike, Expiration, KeysInterface},
        types::CustomCommand,
    },
    store::{LocalTier, RedisStore, RedisStoreBuilder, Store, TieredStore},
    CachePolicy, RedisCacheLayer,
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A JSON body of about `len` bytes.
fn body(len: usize) -> Bytes {
    let mut s = String::from(
        r#"{"id":"7","name":"books product 7","category":"books","price":69.93,"in_stock":true,"created_at":"2026-11-25T17:35:03Z","note":""#,
    );
    while s.len() + 2 < len {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

struct Measured {
    requests: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    /// Every request sent, the warm-up's included (what the CPU times
    /// below are divided by).
    sent: u64,
    /// Responses that carried `x-cache: HIT`, the warm-up's included.
    hits: u64,
    /// CPU time of the server's thread, the generator's thread and Redis,
    /// in microseconds per request, and Redis's read events per request
    /// (NaN where the platform does not tell).
    cpu: Cpu,
}

#[derive(Clone, Copy)]
struct Cpu {
    server_us: f64,
    generator_us: f64,
    redis_us: f64,
    redis_reads: f64,
}

/// The columns [`Cpu`] prints under.
const CPU_HEADER: &str = "cpu: server  gen  redis  reads";

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "     {:>7.2} {:>4.1} {:>6.2} {:>6.2}",
            self.server_us, self.generator_us, self.redis_us, self.redis_reads
        )
    }
}

/// CPU time (user and system) of the calling thread, in microseconds, from
/// `/proc` (Linux); NaN elsewhere.
fn thread_cpu_us() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return f64::NAN;
    };
    // The fields after the command name (in parentheses): utime and stime
    // are the 12th and 13th, in clock ticks of 10 ms.
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 2)..]
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) * 10_000.0,
        _ => f64::NAN,
    }
}

/// Redis's CPU time (microseconds) and read events so far, from `INFO`.
async fn redis_usage(admin: &tower_redis_cache::fred::prelude::Client) -> (f64, f64) {
    let info: String = admin.info(None).await.unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        (field("used_cpu_user") + field("used_cpu_sys")) * 1e6,
        field("total_reads_processed"),
    )
}

impl Measured {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Drives `addr` with `concurrency` persistent connections for `warmup` +
/// `duration`; latencies are recorded after the warm-up only.
async fn drive(
    addr: SocketAddr,
    path: Arc<dyn Fn(u64) -> String + Send + Sync>,
    concurrency: u64,
    warmup: Duration,
    duration: Duration,
) -> Measured {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let path = path.clone();
            let counter = counter.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut latencies = Vec::with_capacity(100_000);
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let n = counter.fetch_add(1, Relaxed);
                    let req = Request::get(path(n))
                        .header("host", "bench")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let res = sender.send_request(req).await.unwrap();
                    assert!(res.status().is_success(), "status {}", res.status());
                    if res.headers().get("x-cache").is_some_and(|v| v == "HIT") {
                        hits.fetch_add(1, Relaxed);
                    }
                    let _ = res.into_body().collect().await.unwrap();
                    if now >= measure_from {
                        latencies.push(now.elapsed().as_micros() as u32);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    let sent = counter.clone();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    Measured {
        requests: all.len() as u64,
        seconds: duration.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        sent: sent.load(Relaxed),
        hits: hits.load(Relaxed),
        cpu: Cpu {
            server_us: f64::NAN,
            generator_us: f64::NAN,
            redis_us: f64::NAN,
            redis_reads: f64::NAN,
        },
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `app` behind the layer on `store`, its entries under `prefix` for an hour.
fn cached(app: Router, prefix: &str, store: impl Store) -> Router {
    app.layer(
        RedisCacheLayer::builder()
            .prefix(prefix)
            .default_policy(CachePolicy::new().ttl(Duration::from_secs(3600)))
            .store(store)
            .build()
            .unwrap(),
    )
}

/// A store on the benchmark's Redis with B's and C's pool of two
/// connections and the settings `configure` makes.
async fn store_with(
    redis: &RedisServer,
    configure: impl FnOnce(RedisStoreBuilder) -> RedisStoreBuilder,
) -> RedisStore {
    configure(RedisStore::builder(redis.url()).pool_size(2))
        .connect()
        .await
        .unwrap()
}

fn json(body: Bytes) -> ([(http::HeaderName, &'static str); 1], Bytes) {
    ([(CONTENT_TYPE, "application/json")], body)
}

fn main() {
    match std::env::var("BENCH_MODE").as_deref() {
        Err(_) | Ok("") | Ok("default") => {}
        Ok("bodies") => return bodies::run(),
        Ok(other) => panic!("BENCH_MODE={other}: unknown; `bodies`, or unset for the default run"),
    }
    let seconds = env("BENCH_SECONDS", 2);
    // Five rounds: one round disturbed by the machine (a round at 0.67 amid
    // rounds near 1.0 is seen on a shared 2-core VM) does not move the median.
    let rounds = env("BENCH_ROUNDS", 5).max(1);
    let concurrency = env("BENCH_CONCURRENCY", 32);
    let body_len = env("BENCH_BODY", 200) as usize;
    let warmup = Duration::from_millis(500);
    let duration = Duration::from_secs(seconds);

    let redis = RedisServer::start();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let payload = body(body_len);

    let (targets, memory, admin) = server_rt.block_on(async {
        let from_memory = {
            let b = payload.clone();
            move || {
                let b = b.clone();
                async move { json(b) }
            }
        };
        // A: the floor.
        let a = serve(Router::new().route("/item", get(from_memory.clone()))).await;

        // B: one fred GET per request.
        let store = redis.store().await;
        let pool = store.pool().clone();
        let () = pool
            .set("bench:raw", payload.clone(), None, None, false)
            .await
            .unwrap();
        let b = serve(Router::new().route(
            "/item",
            get(move || {
                let pool = pool.clone();
                async move {
                    let v: Bytes = pool.get("bench:raw").await.unwrap();
                    json(v)
                }
            }),
        ))
        .await;

        // C: the layer on Redis.
        let store_c = redis.store().await;
        let layer_c = RedisCacheLayer::builder()
            .prefix("bench")
            .default_policy(CachePolicy::new().ttl(Duration::from_secs(3600)))
            .store(store_c.clone())
            .build()
            .unwrap();
        let handle_c = layer_c.handle();
        let c = serve(
            Router::new()
                .route("/item", get(from_memory.clone()))
                .layer(layer_c),
        )
        .await;

        // C': C reading the namespace generation with every entry (`MGET`),
        // as without generation tracking.
        let c_untracked = serve(cached(
            Router::new().route("/item", get(from_memory.clone())),
            "benchuntracked",
            store_with(&redis, |b| b.track_generations(false)).await,
        ))
        .await;

        // C'': C sending every entry read alone (no `MGET` batches).
        let c_unbatched = serve(cached(
            Router::new().route("/item", get(from_memory.clone())),
            "benchunbatched",
            store_with(&redis, |b| b.batch_reads(false)).await,
        ))
        .await;

        // D: the layer with the L1 tier.
        let tiered = TieredStore::connect(
            redis.store().await,
            LocalTier::new().track_prefix("benchl1:"),
        )
        .await
        .unwrap();
        let layer_d = RedisCacheLayer::builder()
            .prefix("benchl1")
            .default_policy(CachePolicy::new().ttl(Duration::from_secs(3600)))
            .store(tiered)
            .build()
            .unwrap();
        let d = serve(
            Router::new()
                .route("/item", get(from_memory.clone()))
                .layer(layer_d),
        )
        .await;

        // E: a 20 ms origin, every request a new URL.
        let slow = {
            let b = payload.clone();
            move |Path(_n): Path<u64>| {
                let b = b.clone();
                async move {
                    // A thread sleep (high-resolution timer): tokio's timer
                    // ticks in whole milliseconds, which would round the
                    // layer's fraction of a millisecond to 0 or 1 ms.
                    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(20)))
                        .await
                        .unwrap();
                    json(b)
                }
            }
        };
        let e_plain = serve(Router::new().route("/miss/{n}", get(slow.clone()))).await;
        let layer_e = RedisCacheLayer::builder()
            .prefix("benchmiss")
            .default_policy(CachePolicy::new().ttl(Duration::from_secs(60)))
            .store(redis.store().await)
            .build()
            .unwrap();
        let e_layer = serve(
            Router::new()
                .route("/miss/{n}", get(slow.clone()))
                .layer(layer_e),
        )
        .await;
        // E without the cross-instance lock: what its round trip costs.
        let layer_e_unlocked = RedisCacheLayer::builder()
            .prefix("benchmissnolock")
            .default_policy(CachePolicy::new().ttl(Duration::from_secs(60)))
            .distributed_lock(false)
            .store(redis.store().await)
            .build()
            .unwrap();
        let e_unlocked = serve(
            Router::new()
                .route("/miss/{n}", get(slow))
                .layer(layer_e_unlocked),
        )
        .await;

        // E0: cache-aside by hand around the same origin: a GET that
        // misses, the origin, a SET awaited before the response.
        let e_floor = {
            let pool = redis.store().await.pool().clone();
            let b = payload.clone();
            serve(Router::new().route(
                "/miss/{n}",
                get(move |Path(n): Path<u64>| {
                    let (pool, b) = (pool.clone(), b.clone());
                    async move {
                        let key = format!("benchfloor:{n}");
                        let cached: Option<Bytes> = pool.get(key.as_str()).await.unwrap();
                        assert!(cached.is_none(), "E0 asks for new keys only");
                        tokio::task::spawn_blocking(|| {
                            std::thread::sleep(Duration::from_millis(20))
                        })
                        .await
                        .unwrap();
                        let () = pool
                            .set(
                                key.as_str(),
                                b.clone(),
                                Some(Expiration::EX(60)),
                                None,
                                false,
                            )
                            .await
                            .unwrap();
                        json(b)
                    }
                }),
            ))
            .await
        };

        // F: Redis unreachable (nothing listens on the port).
        let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let layer_f = RedisCacheLayer::builder()
            .prefix("benchdown")
            .store(
                RedisStore::builder(format!("redis://127.0.0.1:{dead_port}"))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let f = serve(
            Router::new()
                .route("/item", get(from_memory.clone()))
                .layer(layer_f),
        )
        .await;

        // Warm the hit targets and read what one entry costs in Redis.
        for addr in [c, d, c_untracked, c_unbatched] {
            let _ = client_get(addr, "/item").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = client_get(addr, "/item").await;
        }
        assert!(
            store_c.tracks_generations(),
            "C's store should keep the namespace generation in process"
        );
        let key = handle_c
            .key_for(&http::Method::GET, &http::Uri::from_static("/item"))
            .unwrap();
        let admin = redis.client().await;
        let usage: u64 = admin
            .custom(
                CustomCommand::new_static("MEMORY", None, false),
                vec!["USAGE", key.as_str()],
            )
            .await
            .unwrap();
        (
            [
                a,
                b,
                c,
                d,
                e_plain,
                e_layer,
                f,
                e_unlocked,
                e_floor,
                c_untracked,
                c_unbatched,
            ],
            usage,
            admin,
        )
    });

    println!("tower-redis-cache load benchmark");
    println!(
        "body {} B, concurrency {concurrency}, {rounds} rounds of {seconds} s per target \
         (after {warmup:?} warm-up each), server and generator on one thread each",
        payload.len()
    );
    let item: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(|_| "/item".to_owned());
    let miss: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(|n| format!("/miss/{n}"));
    let names = [
        "A plain handler (floor)",
        "B one fred GET (limit)",
        "C layer, Redis, hits",
        "D layer, L1 tier, hits",
        "E origin 20 ms, no layer",
        "E origin 20 ms, layer (misses)",
        "F layer, Redis down (bypass)",
        "E' layer, misses, no Redis lock",
        "E0 handler: GET, origin, SET",
        "C' layer, Redis, hits, MGET",
        "C'' layer, Redis, hits, unbatched",
    ];
    // Every round drives each target once, in turn: a machine that slows
    // down or speeds up during the run moves all targets of a round alike,
    // and the ratios are taken within each round.
    let mut rounds_results: Vec<Vec<Measured>> = Vec::new();
    let mut offset = 0u64;
    for round in 1..=rounds {
        println!();
        println!(
            "round {round}: {:<23} {:>10} {:>10} {:>10} {CPU_HEADER}",
            "target", "req/s", "p50 ms", "p99 ms"
        );
        let mut results = Vec::new();
        for (i, addr) in targets.iter().enumerate() {
            let path = if i == 4 || i == 5 || i == 7 || i == 8 {
                // E gets new URLs in every round.
                let (base, miss) = (offset, miss.clone());
                offset += 10_000_000;
                Arc::new(move |n| miss(base + n)) as Arc<dyn Fn(u64) -> String + Send + Sync>
            } else {
                item.clone()
            };
            let server_cpu =
                || server_rt.block_on(async { tokio::spawn(async { thread_cpu_us() }).await });
            let generator_cpu =
                || client_rt.block_on(async { tokio::spawn(async { thread_cpu_us() }).await });
            let (s0, g0) = (server_cpu().unwrap(), generator_cpu().unwrap());
            let r0 = server_rt.block_on(redis_usage(&admin));
            let mut m = client_rt.block_on(drive(*addr, path, concurrency, warmup, duration));
            // C, D, C' and C'' measure hits: every response must be one.
            if [2, 3, 9, 10].contains(&i) {
                assert_eq!(m.hits, m.sent, "{}: not every request was a hit", names[i]);
            }
            let (s1, g1) = (server_cpu().unwrap(), generator_cpu().unwrap());
            let r1 = server_rt.block_on(redis_usage(&admin));
            let n = m.sent.max(1) as f64;
            m.cpu = Cpu {
                server_us: (s1 - s0) / n,
                generator_us: (g1 - g0) / n,
                redis_us: (r1.0 - r0.0) / n,
                redis_reads: (r1.1 - r0.1) / n,
            };
            println!(
                "         {:<32} {:>10.0} {:>10.3} {:>10.3} {}",
                names[i],
                m.rps(),
                m.p50_us / 1000.0,
                m.p99_us / 1000.0,
                m.cpu
            );
            results.push(m);
        }
        rounds_results.push(results);
    }
    let ratios: Vec<Ratios> = rounds_results.iter().map(|r| Ratios::of(r)).collect();
    println!();
    println!("median of {rounds} rounds:");
    println!(
        "{:<32} {:>10} {:>10} {:>10} {CPU_HEADER}",
        "target", "req/s", "p50 ms", "p99 ms"
    );
    for (i, name) in names.iter().enumerate() {
        let at = |f: &dyn Fn(&Measured) -> f64| median(rounds_results.iter().map(|r| f(&r[i])));
        let cpu = Cpu {
            server_us: at(&|m| m.cpu.server_us),
            generator_us: at(&|m| m.cpu.generator_us),
            redis_us: at(&|m| m.cpu.redis_us),
            redis_reads: at(&|m| m.cpu.redis_reads),
        };
        println!(
            "{:<32} {:>10.0} {:>10.3} {:>10.3} {cpu}",
            name,
            at(&|m| m.rps()),
            at(&|m| m.p50_us / 1000.0),
            at(&|m| m.p99_us / 1000.0)
        );
    }
    println!(
        "(CPU in microseconds per request, warm-up included: the server's thread, \
         the generator's, Redis; reads: Redis's read events per request)"
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let summary = |f: &dyn Fn(&Ratios) -> f64| {
        let values: Vec<f64> = ratios.iter().map(f).collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(values.into_iter()), lo, hi)
    };
    println!();
    println!("ratios within each round: median (lowest .. highest)");
    let (cb, lo, hi) = summary(&|r| r.cb);
    println!(
        "C/B requests/s  {cb:.3} ({lo:.3} .. {hi:.3})  (target >= 0.90: {})",
        verdict(cb >= 0.90)
    );
    let (cb99, lo, hi) = summary(&|r| r.cb99);
    println!(
        "C/B p99         {cb99:.3} ({lo:.3} .. {hi:.3})  (target <= 1.20: {})",
        verdict(cb99 <= 1.20)
    );
    let (cb, lo, hi) = summary(&|r| r.c_untracked_b);
    println!(
        "C'/B requests/s {cb:.3} ({lo:.3} .. {hi:.3})  (C reading the generation with every entry: track_generations(false))"
    );
    let (cb, lo, hi) = summary(&|r| r.c_unbatched_b);
    println!(
        "C''/B requests/s {cb:.3} ({lo:.3} .. {hi:.3})  (C sending each hit's read alone: batch_reads(false))"
    );
    let (da, lo, hi) = summary(&|r| r.da);
    println!(
        "D/A requests/s  {da:.3} ({lo:.3} .. {hi:.3})  (target >= 0.90: {})",
        verdict(da >= 0.90)
    );
    let (added, lo, hi) = summary(&|r| r.e_added_ms);
    println!(
        "E added p50     {added:.3} ms ({lo:.3} .. {hi:.3})  (target <= 0.300 ms: {})",
        verdict(added <= 0.3)
    );
    let (unlocked, lo, hi) = summary(&|r| r.e_unlocked_added_ms);
    println!(
        "E' added p50    {unlocked:.3} ms ({lo:.3} .. {hi:.3})  (misses without the cross-instance lock: what the lock costs)"
    );
    let (floor, lo, hi) = summary(&|r| r.e_floor_added_ms);
    println!(
        "E0 added p50    {floor:.3} ms ({lo:.3} .. {hi:.3})  (a GET and a SET around the origin in a handler: the floor of a Redis-backed miss)"
    );
    let (beyond, lo, hi) = summary(&|r| r.e_added_ms - r.e_floor_added_ms);
    println!(
        "E - E0 p50      {beyond:.3} ms ({lo:.3} .. {hi:.3})  (what the layer adds to a miss beyond that floor)"
    );
    let (fa, _, _) = summary(&|r| r.fa);
    let (f_added, _, _) = summary(&|r| r.f_added_ms);
    println!(
        "F/A requests/s  {fa:.3}, added p50 {f_added:.3} ms  (Redis down: the layer's cost on a pass-through)"
    );
    let overhead = memory as i64 - payload.len() as i64;
    println!(
        "Redis MEMORY USAGE of one entry: {memory} B for a {} B body, {overhead} B more  (target <= 256: {})",
        payload.len(),
        verdict(overhead <= 256)
    );
    drop(redis);
}

/// The ratios of one round.
struct Ratios {
    cb: f64,
    c_untracked_b: f64,
    c_unbatched_b: f64,
    cb99: f64,
    da: f64,
    e_added_ms: f64,
    e_unlocked_added_ms: f64,
    e_floor_added_ms: f64,
    fa: f64,
    f_added_ms: f64,
}

impl Ratios {
    fn of(r: &[Measured]) -> Self {
        let (a, b, c, d, e0, e1, f, e2, e3, c2, c3) = (
            &r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6], &r[7], &r[8], &r[9], &r[10],
        );
        Self {
            cb: c.rps() / b.rps(),
            c_untracked_b: c2.rps() / b.rps(),
            c_unbatched_b: c3.rps() / b.rps(),
            cb99: c.p99_us / b.p99_us,
            da: d.rps() / a.rps(),
            e_added_ms: (e1.p50_us - e0.p50_us) / 1000.0,
            e_unlocked_added_ms: (e2.p50_us - e0.p50_us) / 1000.0,
            e_floor_added_ms: (e3.p50_us - e0.p50_us) / 1000.0,
            fa: f.rps() / a.rps(),
            f_added_ms: (f.p50_us - a.p50_us) / 1000.0,
        }
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn client_get(addr: SocketAddr, path: &str) -> Bytes {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "bench")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes()
}
