//! `BENCH_MODE=bodies`: the layer's hits on list and catalogue bodies of
//! 10 KiB to 1 MiB next to nginx's `proxy_cache` in front of the same
//! handler, for clients with and without `Accept-Encoding: gzip`; what
//! each response costs on the wire; and what one entry costs in Redis.
//! The crate root's doc says how to run it.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    extract::Path,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use bytes::Bytes;
use http::{
    header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE},
    Method, Request, StatusCode, Uri,
};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt;
use tower_redis_cache::{
    fred::{
        prelude::{Client, ClientLike},
        types::CustomCommand,
    },
    store::{LocalTier, Store, TieredStore},
    CachePolicy, RedisCacheLayer,
};

use crate::{corpus::Corpus, env, median, redis_usage, serve, support::RedisServer, thread_cpu_us};

/// Keys per body size: `/items/0` to `/items/99`.
const KEYS: usize = 100;

const TARGETS: [&str; 4] = [
    "A plain handler (floor)",
    "C layer, Redis, hits",
    "D layer, L1 tier, hits",
    "N nginx proxy_cache, hits",
];
const A: usize = 0;
const C: usize = 1;
const D: usize = 2;
const N: usize = 3;
const CLIENTS: [&str; 2] = ["identity", "gzip"];

/// What the handler sends with every body: JSON, and fresh for an hour to
/// nginx (which takes `max-age` over `proxy_cache_valid`) as to the layer
/// (whose default policy-driven freshness takes its policy's TTL, also an
/// hour), so no entry expires during a run.
fn cacheable(body: Bytes) -> Response {
    (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The layer as C and D use it: an hour's TTL, bodies up to `max_body`,
/// and a store budget of 1 s instead of 50 ms: 32 concurrent reads of
/// 1 MiB entries take longer than 50 ms, and a read past its budget goes to
/// the handler, which would measure A instead of a hit (the run checks
/// that every response was a hit).
fn layer(prefix: &str, store: impl Store, max_body: usize) -> RedisCacheLayer {
    RedisCacheLayer::builder()
        .prefix(prefix)
        .default_policy(CachePolicy::new().ttl(Duration::from_secs(3600)))
        .max_body_bytes(max_body)
        .store_timeout(Duration::from_secs(1))
        .store(store)
        .build()
        .unwrap()
}

/// One corpus at one size: its handler (A), and A behind the layer on
/// Redis (C) and on the L1 tier (D).
struct Set {
    corpus: Corpus,
    size: usize,
    /// The length of each key's body.
    lens: Arc<Vec<usize>>,
    addrs: [SocketAddr; 3],
}

async fn set_up(redis: &RedisServer, corpus: Corpus, size: usize, max_body: usize) -> Set {
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..KEYS as u64)
            .map(|n| corpus.body(size, n))
            .collect::<Vec<_>>(),
    );
    for b in bodies.iter().take(2) {
        serde_json::from_slice::<serde::de::IgnoredAny>(b)
            .unwrap_or_else(|e| panic!("the {} corpus made invalid JSON: {e}", corpus.name()));
    }
    let lens = Arc::new(bodies.iter().map(Bytes::len).collect::<Vec<_>>());
    let app = || {
        let bodies = bodies.clone();
        Router::new().route(
            "/items/{n}",
            get(move |Path(n): Path<usize>| {
                let body = bodies.get(n).cloned();
                async move {
                    match body {
                        Some(b) => cacheable(b),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            }),
        )
    };
    let a = serve(app()).await;
    let name = format!("{}-{size}", corpus.name());
    let c = serve(app().layer(layer(
        &format!("bodies-{name}"),
        redis.store().await,
        max_body,
    )))
    .await;
    let l1 = format!("bodiesl1-{name}");
    let tiered = TieredStore::connect(
        redis.store().await,
        LocalTier::new()
            .max_bytes((KEYS * size * 2 + (16 << 20)) as u64)
            .track_prefix(format!("{l1}:")),
    )
    .await
    .unwrap();
    let d = serve(app().layer(layer(&l1, tiered, max_body))).await;
    Set {
        corpus,
        size,
        lens,
        addrs: [a, c, d],
    }
}

/// A `TcpStream` that counts the bytes read from it: what came over the
/// wire, headers, chunk framing and all.
struct Counting {
    inner: tokio::net::TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.read
                .fetch_add((buf.filled().len() - before) as u64, Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client connection whose reads add to `read`.
async fn connect(addr: SocketAddr, read: Arc<AtomicU64>) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(Counting {
        inner: stream,
        read,
    }))
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// What one response was.
struct Got {
    hit: bool,
    gzip: bool,
}

/// Sends `GET /items/{n}` (with `Accept-Encoding: gzip` when `gzip`) and
/// reads the whole body. An unencoded body must be the key's whole body;
/// a gzip-encoded one is only accepted when asked for.
async fn get_item(
    sender: &mut SendRequest<Empty<Bytes>>,
    n: usize,
    len: usize,
    gzip: bool,
    label: &str,
) -> Got {
    let mut req = Request::get(format!("/items/{n}")).header("host", "bench");
    if gzip {
        req = req.header(ACCEPT_ENCODING, "gzip");
    }
    // The connection may still be finishing the previous response.
    sender.ready().await.unwrap();
    let res = sender
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "{label}: status {}",
        res.status()
    );
    let hit = res.headers().get("x-cache").is_some_and(|v| v == "HIT");
    let encoding = res.headers().get(CONTENT_ENCODING).cloned();
    let mut body = res.into_body();
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len();
        }
    }
    let gzipped = match encoding {
        None => {
            assert_eq!(
                received, len,
                "{label}: /items/{n} came with another length than its body's"
            );
            false
        }
        Some(v) if v == "gzip" => {
            assert!(gzip, "{label}: a gzip body for a client that did not ask");
            true
        }
        Some(v) => panic!("{label}: unexpected Content-Encoding {v:?}"),
    };
    Got { hit, gzip: gzipped }
}

/// Asks for every key with and without `Accept-Encoding: gzip` until a
/// whole pass of both is answered by hits (the layer stores after it
/// answers).
async fn warm(addr: SocketAddr, lens: &[usize], label: &str) {
    let mut sender = connect(addr, Arc::new(AtomicU64::new(0))).await;
    for _ in 0..50 {
        let mut all = true;
        for gzip in [false, true] {
            for (n, len) in lens.iter().enumerate() {
                all &= get_item(&mut sender, n, *len, gzip, label).await.hit;
            }
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{label}: not every key was a hit after 50 passes");
}

struct Run {
    /// Responses after the warm-up.
    requests: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    /// Responses, the warm-up's included (what bytes and CPU are divided
    /// by), and of those: hits and gzip-encoded ones.
    responses: u64,
    hits: u64,
    gzipped: u64,
    /// Bytes read from the sockets, the warm-up's included.
    bytes: u64,
    /// CPU time in microseconds per response: the server's (its runtime
    /// thread, or every nginx process), the generator's thread, Redis.
    cpu: [f64; 3],
}

/// What a row prints: one run's, or the medians over the rounds.
struct Line {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    bytes_per_response: f64,
    gzip_fraction: f64,
    cpu: [f64; 3],
}

impl Run {
    fn line(&self) -> Line {
        Line {
            rps: self.rps(),
            p50_us: self.p50_us,
            p99_us: self.p99_us,
            bytes_per_response: self.bytes_per_response(),
            gzip_fraction: self.gzip_fraction(),
            cpu: self.cpu,
        }
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn bytes_per_response(&self) -> f64 {
        self.bytes as f64 / self.responses.max(1) as f64
    }

    fn gzip_fraction(&self) -> f64 {
        self.gzipped as f64 / self.responses.max(1) as f64
    }
}

/// Drives `addr` with `concurrency` persistent connections for `warmup` +
/// `duration`, request `i` asking for key `i % KEYS`; latencies are
/// recorded after the warm-up only.
async fn drive(
    addr: SocketAddr,
    lens: Arc<Vec<usize>>,
    gzip: bool,
    concurrency: u64,
    warmup: Duration,
    duration: Duration,
    label: Arc<str>,
) -> Run {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (counter, lens, label) = (counter.clone(), lens.clone(), label.clone());
            tokio::spawn(async move {
                let read = Arc::new(AtomicU64::new(0));
                let mut sender = connect(addr, read.clone()).await;
                let mut latencies = Vec::with_capacity(100_000);
                let (mut responses, mut hits, mut gzipped) = (0u64, 0u64, 0u64);
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let n = counter.fetch_add(1, Relaxed) as usize % lens.len();
                    let got = get_item(&mut sender, n, lens[n], gzip, &label).await;
                    responses += 1;
                    hits += u64::from(got.hit);
                    gzipped += u64::from(got.gzip);
                    if now >= measure_from {
                        latencies.push(now.elapsed().as_micros() as u32);
                    }
                }
                // Every response was read whole: the count is complete.
                (latencies, responses, hits, gzipped, read.load(Relaxed))
            })
        })
        .collect();
    let mut all = Vec::new();
    let (mut responses, mut hits, mut gzipped, mut bytes) = (0, 0, 0, 0);
    for t in tasks {
        let (l, r, h, g, b) = t.await.unwrap();
        all.extend(l);
        (responses, hits, gzipped, bytes) = (responses + r, hits + h, gzipped + g, bytes + b);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    Run {
        requests: all.len() as u64,
        seconds: duration.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        responses,
        hits,
        gzipped,
        bytes,
        cpu: [f64::NAN; 3],
    }
}

/// One entry's `MEMORY USAGE` in Redis, stored by the layer for key 1 of
/// `corpus` at `size`: the body's length and the usage (`None` when the
/// entry did not appear within 5 s).
async fn memory_usage(
    redis: &RedisServer,
    admin: &Client,
    corpus: Corpus,
    size: usize,
    max_body: usize,
) -> (usize, Option<u64>) {
    let body = corpus.body(size, 1);
    let cache = layer(
        &format!("bodiesmem-{}-{size}", corpus.name()),
        redis.store().await,
        max_body,
    );
    let handle = cache.handle();
    let app = {
        let body = body.clone();
        Router::new()
            .route(
                "/items/{n}",
                get(move || {
                    let body = body.clone();
                    async move { cacheable(body) }
                }),
            )
            .layer(cache)
    };
    let key = handle
        .key_for(&Method::GET, &Uri::from_static("/items/1"))
        .unwrap();
    let usage = || async {
        let usage: Option<u64> = admin
            .custom(
                CustomCommand::new_static("MEMORY", None, false),
                vec!["USAGE", key.as_str()],
            )
            .await
            .unwrap();
        usage
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let req = Request::get("/items/1")
            .body(axum::body::Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let _ = res.into_body().collect().await.unwrap();
        if usage().await.is_some() {
            // Once stored, read it again a little later: what a
            // finished write left.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return (body.len(), usage().await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (body.len(), None)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// nginx with one `proxy_cache` server per [`Set`], in front of that set's
/// A, on free loopback ports, in a temp dir of its own (no root needed).
/// Stopped (SIGTERM) and its dir removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    ports: Vec<u16>,
    version: String,
}

impl Nginx {
    /// `Err` says why nginx is not there; a found nginx that does not start
    /// is a broken benchmark and panics with its log.
    fn start(upstreams: &[SocketAddr]) -> Result<Self, String> {
        let given = std::env::var("BENCH_NGINX").ok().filter(|b| !b.is_empty());
        let bin = given.clone().unwrap_or_else(|| "nginx".to_owned());
        let version = match Command::new(&bin).arg("-v").output() {
            Ok(out) => String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("nginx version: ")
                .to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(match given {
                    Some(b) => format!("BENCH_NGINX={b}: no such program"),
                    None => "`nginx` is not on PATH (Debian/Ubuntu: `apt-get install nginx`; \
                             or set BENCH_NGINX to its path)"
                        .to_owned(),
                })
            }
            Err(e) => return Err(format!("`{bin} -v` failed: {e}")),
        };
        let dir = std::env::temp_dir().join(format!(
            "tower-redis-cache-bench-nginx-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nginx temp dir");
        // As with redis-server, a port found free can be taken before
        // nginx binds it: then nginx exits, and other ports are tried.
        for _ in 0..5 {
            let ports: Vec<u16> = upstreams.iter().map(|_| free_port()).collect();
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(&dir, &ports, upstreams)).expect("nginx.conf");
            let log = std::fs::File::create(dir.join("stderr.log")).expect("nginx log");
            let child = Command::new(&bin)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start `{bin}`: {e}"));
            let mut nginx = Self {
                child,
                dir: dir.clone(),
                ports,
                version: version.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if matches!(nginx.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if nginx.ports.iter().all(|p| nginx_ready(*p)) {
                    return Ok(nginx);
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not answer within 10 s: {}",
                    nginx.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let log = nginx.log();
            if !log.contains("Address already in use") {
                panic!("nginx exited at start: {log}");
            }
            // Keep the dir for the next try.
            nginx.dir = PathBuf::new();
        }
        panic!("nginx could not bind free loopback ports in 5 tries");
    }

    fn log(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .collect::<Vec<_>>()
            .join("")
    }

    /// CPU time (user and system, microseconds) of the master and its
    /// children (the worker, the cache manager), from `/proc`; NaN
    /// elsewhere.
    fn cpu_us(&self) -> f64 {
        let pid = self.child.id();
        let mut pids = vec![pid.to_string()];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            pids.extend(children.split_whitespace().map(str::to_owned));
        }
        pids.iter()
            .map(|p| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                    return f64::NAN;
                };
                let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 2)..]
                    .split_whitespace()
                    .collect();
                let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
                match (ticks(11), ticks(12)) {
                    (Some(user), Some(system)) => (user + system) * 10_000.0,
                    _ => f64::NAN,
                }
            })
            .sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its worker and cache manager.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The configuration: one worker, no access log, gzip on for JSON at
/// nginx's default level (1), and per set a server on `ports[i]` with its
/// own `proxy_cache` zone in front of `upstreams[i]`, keyed on the URI.
/// `sendfile` is on, as in Debian's stock `nginx.conf` (a hit served from
/// a file ran at 2.5 times the requests/s of `sendfile off` at 100 KiB);
/// Debian's `tcp_nopush on` is left out: on loopback it held every
/// 100 KiB response about 40 ms (723 requests/s instead of 28 000).
/// `keepalive_requests` is raised so nginx does not close a connection
/// after 1 000 requests (the generator keeps its connections).
fn nginx_conf(dir: &std::path::Path, ports: &[u16], upstreams: &[SocketAddr]) -> String {
    let dir = dir.display();
    let mut conf = format!(
        r#"worker_processes 1;
daemon off;
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 75s;
    keepalive_requests 1000000000;
    client_body_temp_path "{dir}/client_body_temp";
    proxy_temp_path "{dir}/proxy_temp";
    fastcgi_temp_path "{dir}/fastcgi_temp";
    uwsgi_temp_path "{dir}/uwsgi_temp";
    scgi_temp_path "{dir}/scgi_temp";
    gzip on;
    gzip_types application/json;
    gzip_proxied any;
    gzip_vary on;
"#
    );
    for (i, (port, upstream)) in ports.iter().zip(upstreams).enumerate() {
        conf.push_str(&format!(
            r#"    proxy_cache_path "{dir}/cache{i}" levels=1:2 keys_zone=bench{i}:4m max_size=8g inactive=1h use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location = /__ready {{
            return 204;
        }}
        location / {{
            proxy_pass http://{upstream};
            proxy_cache bench{i};
            proxy_cache_key $uri;
            proxy_cache_valid 200 10m;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
"#
        ));
    }
    conf.push_str("}\n");
    conf
}

/// Whether nginx (not whatever else took the port) answers on `port`.
fn nginx_ready(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /__ready HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 204") && reply.to_ascii_lowercase().contains("server: nginx")
}

fn list_env(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The key of one measurement: round, set, client kind, target.
type At = (usize, usize, usize, usize);

/// The runs of one round, set and client kind.
struct Round<'a> {
    results: &'a BTreeMap<At, Run>,
    at: (usize, usize, usize),
}

impl Round<'_> {
    fn t(&self, target: usize) -> &Run {
        let (round, set, kind) = self.at;
        &self.results[&(round, set, kind, target)]
    }
}

pub fn run() {
    let seconds = env("BENCH_SECONDS", 2);
    let rounds = env("BENCH_ROUNDS", 5).max(1) as usize;
    let concurrency = env("BENCH_CONCURRENCY", 32);
    let sizes: Vec<usize> = list_env("BENCH_SIZES", "10240,102400,1048576")
        .iter()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("BENCH_SIZES: `{s}` is not a number of bytes"))
        })
        .collect();
    let corpora: Vec<Corpus> = list_env("BENCH_CORPUS", "list")
        .iter()
        .map(|s| {
            Corpus::parse(s)
                .unwrap_or_else(|| panic!("BENCH_CORPUS: `{s}` is not `list` or `catalogue`"))
        })
        .collect();
    let warmup = Duration::from_millis(500);
    let duration = Duration::from_secs(seconds);
    let max_body = sizes
        .iter()
        .max()
        .copied()
        .unwrap_or(0)
        .saturating_mul(2)
        .max(1 << 20);

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

    let (sets, admin) = server_rt.block_on(async {
        let mut sets = Vec::new();
        for &corpus in &corpora {
            for &size in &sizes {
                sets.push(set_up(&redis, corpus, size, max_body).await);
            }
        }
        (sets, redis.client().await)
    });
    let upstreams: Vec<SocketAddr> = sets.iter().map(|s| s.addrs[A]).collect();
    let nginx = Nginx::start(&upstreams);

    println!("tower-redis-cache load benchmark: body sizes (BENCH_MODE=bodies)");
    let targets = if nginx.is_ok() { 4 } else { 3 };
    let minutes =
        (sets.len() * 2 * targets * rounds) as f64 * (warmup + duration).as_secs_f64() / 60.0;
    println!(
        "corpora {}; sizes {} B; {KEYS} keys (/items/0..{}); concurrency {concurrency}; \
         {rounds} rounds of {seconds} s per target (after {warmup:?} warm-up each), about \
         {minutes:.1} min; server and generator on one thread each",
        corpora
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        sizes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        KEYS - 1
    );
    match &nginx {
        Ok(n) => println!(
            "nginx {}: proxy_cache in front of A, keyed on the URI, 1 worker, gzip on for \
             application/json at level 1, gzip_proxied any, gzip_vary on, sendfile on, \
             tcp_nopush off",
            n.version
        ),
        Err(why) => println!("nginx: its targets (N) are skipped: {why}"),
    }
    for set in &sets {
        let mean = set.lens.iter().sum::<usize>() as f64 / set.lens.len() as f64;
        println!(
            "bodies {} {} B: {mean:.0} B on average ({} to {})",
            set.corpus.name(),
            set.size,
            set.lens.iter().min().unwrap(),
            set.lens.iter().max().unwrap()
        );
    }

    // Every hit target answers every key with a hit before it is measured.
    server_rt.block_on(async {
        for (i, set) in sets.iter().enumerate() {
            let name = format!("{} {} B", set.corpus.name(), set.size);
            warm(set.addrs[C], &set.lens, &format!("C {name}")).await;
            warm(set.addrs[D], &set.lens, &format!("D {name}")).await;
            if let Ok(n) = &nginx {
                let addr = SocketAddr::from(([127, 0, 0, 1], n.ports[i]));
                warm(addr, &set.lens, &format!("N {name}")).await;
            }
        }
    });

    let mut results: BTreeMap<At, Run> = BTreeMap::new();
    let header = format!(
        "{:<9} {:>8} {:<8} {:<26} {:>9} {:>8} {:>8} {:>9} {:>5}  cpu: {:>7} {:>6} {:>6}",
        "corpus",
        "size B",
        "client",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "B/resp",
        "gzip",
        "server",
        "gen",
        "redis"
    );
    let row = |set: &Set, kind: usize, target: usize, m: &Line| {
        format!(
            "{:<9} {:>8} {:<8} {:<26} {:>9.0} {:>8.3} {:>8.3} {:>9.0} {:>5.2}       {:>7.1} {:>6.1} {:>6.1}",
            set.corpus.name(),
            set.size,
            CLIENTS[kind],
            TARGETS[target],
            m.rps,
            m.p50_us / 1000.0,
            m.p99_us / 1000.0,
            m.bytes_per_response,
            m.gzip_fraction,
            m.cpu[0],
            m.cpu[1],
            m.cpu[2],
        )
    };
    for round in 0..rounds {
        println!();
        println!("round {}:", round + 1);
        println!("{header}");
        for (s, set) in sets.iter().enumerate() {
            for (kind, client) in CLIENTS.iter().enumerate() {
                for target in [A, C, D, N] {
                    let addr = match (target, &nginx) {
                        (N, Ok(n)) => SocketAddr::from(([127, 0, 0, 1], n.ports[s])),
                        (N, Err(_)) => continue,
                        (t, _) => set.addrs[t],
                    };
                    let server_cpu = || match &nginx {
                        Ok(n) if target == N => n.cpu_us(),
                        _ => server_rt
                            .block_on(async { tokio::spawn(async { thread_cpu_us() }).await })
                            .unwrap(),
                    };
                    let generator_cpu = || {
                        client_rt
                            .block_on(async { tokio::spawn(async { thread_cpu_us() }).await })
                            .unwrap()
                    };
                    let label: Arc<str> = format!(
                        "{} {} {} B {}",
                        TARGETS[target],
                        set.corpus.name(),
                        set.size,
                        client
                    )
                    .into();
                    let (s0, g0) = (server_cpu(), generator_cpu());
                    let r0 = server_rt.block_on(redis_usage(&admin));
                    let mut m = client_rt.block_on(drive(
                        addr,
                        set.lens.clone(),
                        kind == 1,
                        concurrency,
                        warmup,
                        duration,
                        label.clone(),
                    ));
                    let (s1, g1) = (server_cpu(), generator_cpu());
                    let r1 = server_rt.block_on(redis_usage(&admin));
                    if target != A {
                        assert_eq!(m.hits, m.responses, "{label}: not every request was a hit");
                    }
                    let n = m.responses.max(1) as f64;
                    m.cpu = [(s1 - s0) / n, (g1 - g0) / n, (r1.0 - r0.0) / n];
                    println!("{}", row(set, kind, target, &m.line()));
                    results.insert((round, s, kind, target), m);
                }
            }
        }
    }

    let over_rounds = |s: usize, kind: usize, f: &dyn Fn(&Round) -> f64| {
        let values: Vec<f64> = (0..rounds)
            .map(|round| {
                f(&Round {
                    results: &results,
                    at: (round, s, kind),
                })
            })
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(values.into_iter()), lo, hi)
    };

    println!();
    println!("median of {rounds} rounds:");
    println!("{header}");
    for (s, set) in sets.iter().enumerate() {
        for kind in 0..CLIENTS.len() {
            for target in [A, C, D, N] {
                if target == N && nginx.is_err() {
                    continue;
                }
                let at = |f: &dyn Fn(&Run) -> f64| over_rounds(s, kind, &|r| f(r.t(target))).0;
                let m = Line {
                    rps: at(&|m| m.rps()),
                    p50_us: at(&|m| m.p50_us),
                    p99_us: at(&|m| m.p99_us),
                    bytes_per_response: at(&|m| m.bytes_per_response()),
                    gzip_fraction: at(&|m| m.gzip_fraction()),
                    cpu: [at(&|m| m.cpu[0]), at(&|m| m.cpu[1]), at(&|m| m.cpu[2])],
                };
                println!("{}", row(set, kind, target, &m));
            }
        }
    }
    println!(
        "(B/resp: bytes read from the socket per response, headers included; gzip: the \
         fraction of responses with Content-Encoding: gzip; CPU in microseconds per \
         response, warm-up included: the server's thread (for N every nginx process), the \
         generator's, Redis)"
    );

    println!();
    println!("ratios within each round: median (lowest .. highest)");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for (s, set) in sets.iter().enumerate() {
        for (kind, client) in CLIENTS.iter().enumerate() {
            let ratio = |f: &dyn Fn(&Round) -> f64| {
                let (m, lo, hi) = over_rounds(s, kind, f);
                format!("{m:.3} ({lo:.3} .. {hi:.3})")
            };
            let mut line = format!(
                "{:<9} {:>8} {:<8} C/A {}  D/A {}",
                set.corpus.name(),
                set.size,
                client,
                ratio(&|r| r.t(C).rps() / r.t(A).rps()),
                ratio(&|r| r.t(D).rps() / r.t(A).rps()),
            );
            if nginx.is_ok() {
                let (cn, _, _) = over_rounds(s, kind, &|r| r.t(C).rps() / r.t(N).rps());
                let (bytes, _, _) = over_rounds(s, kind, &|r| {
                    r.t(C).bytes_per_response() / r.t(N).bytes_per_response()
                });
                line.push_str(&format!(
                    "  C/N {}  D/N {}  bytes C/N {}",
                    ratio(&|r| r.t(C).rps() / r.t(N).rps()),
                    ratio(&|r| r.t(D).rps() / r.t(N).rps()),
                    ratio(&|r| r.t(C).bytes_per_response() / r.t(N).bytes_per_response()),
                ));
                line.push_str(&if kind == 1 {
                    format!(
                        "  (targets: C/N >= 2.0: {}; bytes C/N <= 1.1: {})",
                        verdict(cn >= 2.0),
                        verdict(bytes <= 1.1)
                    )
                } else if set.size > 64 * 1024 {
                    format!("  (C reaches N: {})", if cn >= 1.0 { "yes" } else { "no" })
                } else {
                    "  (target: no regression of C; compare with a run before the change)"
                        .to_owned()
                });
            }
            println!("{line}");
        }
    }

    println!();
    println!(
        "Redis MEMORY USAGE of one entry (/items/1, stored by the layer), both corpora \
         (target <= 0.40x the body for JSON bodies of 4 KiB and up):"
    );
    println!(
        "{:<9} {:>8} {:>9} {:>9} {:>7}",
        "corpus", "size B", "body B", "usage B", "x body"
    );
    let usages = server_rt.block_on(async {
        let mut usages = Vec::new();
        for corpus in [Corpus::List, Corpus::Catalogue] {
            for &size in &sizes {
                let (len, usage) = memory_usage(&redis, &admin, corpus, size, max_body).await;
                usages.push((corpus, size, len, usage));
            }
        }
        usages
    });
    for (corpus, size, len, usage) in usages {
        match usage {
            Some(usage) => {
                let ratio = usage as f64 / len as f64;
                println!(
                    "{:<9} {:>8} {:>9} {:>9} {:>7.3}  {}",
                    corpus.name(),
                    size,
                    len,
                    usage,
                    ratio,
                    if size >= 4096 {
                        verdict(ratio <= 0.4)
                    } else {
                        "(under 4 KiB: no target)"
                    }
                );
            }
            None => println!(
                "{:<9} {:>8} {:>9} {:>9}  (the layer stored no entry within 5 s)",
                corpus.name(),
                size,
                len,
                "-"
            ),
        }
    }
    drop(nginx);
    drop(redis);
}
