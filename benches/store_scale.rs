//! How the stores behave as the number of tagged entries grows:
//! `cargo bench --bench store_scale` (about 30 s; needs `redis-server`).
//!
//! (a) The layer on `MemoryStore` (the default store), on a tokio runtime
//! with 2 workers: the latency of a hit on one URL, first with nothing else
//! running, then while two tasks send `SCALE_ENTRIES` (default 100 000)
//! distinct URLs (`/products?x=N`), each a miss whose response is stored
//! with one tag common to all (`products`) and one of its own (`pN`). Each
//! hit first yields, so it waits its turn behind the writes as a request
//! arriving on a connection would. The writers (and the measurement) stop
//! together when the first is done, or after `SCALE_WRITE_SECONDS`
//! (default 20). Printed:
//! hit p50/p99/max in both phases and their ratio, the misses' own
//! p50/p99/max and rate, and the time to invalidate the common tag.
//!
//! (b) `RedisStore` on a `redis-server` the benchmark starts on a free port:
//! `SCALE_TAG_MEMBERS` (default 60 000) entries carrying one tag, then one
//! `invalidate_tags` of it. Printed: its time, the longest single command
//! Redis ran meanwhile (`SLOWLOG` with every command logged) and the longest
//! wait of a `GET` sent in a loop by another connection during it: what the
//! other clients of that Redis feel.

#[allow(unused_macros)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use tower::{Layer, Service, ServiceExt};
use tower_redis_cache::{
    fred::{
        prelude::{ClientLike, KeysInterface},
        types::{CustomCommand, Value},
    },
    store::{MemoryStore, Store},
    CacheBody, CachePolicy, RedisCacheLayer,
};

/// The store key of a tag's index, as the layer names it (prefix `scale`).
fn tag_key(tag: &str) -> String {
    format!("scale:v1:#tag:{tag}")
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50, p99 and max of `samples`, in microseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99), at(1.0))
}

/// A 200 B response carrying `tags` in its `cache-tag` header.
fn response(tags: &str) -> http::Response<Bytes> {
    http::Response::builder()
        .header("cache-tag", tags)
        .body(Bytes::from_static(&[b'x'; 200]))
        .expect("a response")
}

/// A layer on `store` that keeps entries for an hour.
fn layer(store: impl Store) -> RedisCacheLayer {
    RedisCacheLayer::builder()
        .prefix("scale")
        .default_policy(
            CachePolicy::new()
                .ttl(Duration::from_secs(3600))
                .jitter(0.0),
        )
        .store(store)
        .build()
        .expect("a layer")
}

/// The origin: a 200 B body, tagged `products` and `p{x}` for
/// `/products?x={x}`, `hot` for any other path.
async fn origin(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let tags = match req.uri().query().and_then(|q| q.strip_prefix("x=")) {
        Some(x) => format!("products,p{x}"),
        None => "hot".to_owned(),
    };
    Ok(Response::builder()
        .header("cache-tag", tags)
        .body(Full::new(Bytes::from_static(&[b'x'; 200])))
        .expect("a response"))
}

/// Sends `GET path` through `svc`; whether it was a hit.
async fn get<S>(svc: &mut S, path: &str) -> bool
where
    S: Service<Request<Full<Bytes>>, Response = Response<CacheBody<Full<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    let req = Request::get(path).body(Full::default()).expect("a request");
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("a response");
    let hit = res.headers().get("x-cache").is_some_and(|v| v == "HIT");
    res.into_body().collect().await.expect("a body");
    hit
}

/// Times hits on `/hot` through `svc` until `stop`, one sample per request.
/// Each request first yields, so it waits its turn on the runtime's workers
/// as a request arriving on a connection does.
/// Each sample comes with the number of entries written when it was taken.
async fn probe_hits<S>(
    mut svc: S,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    at_most: Duration,
) -> Vec<(Duration, u64)>
where
    S: Service<Request<Full<Bytes>>, Response = Response<CacheBody<Full<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    let mut samples = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    while !stop.load(Relaxed) && start.elapsed() < at_most {
        let at = written.load(Relaxed);
        let t = Instant::now();
        tokio::task::yield_now().await;
        let hit = get(&mut svc, "/hot").await;
        samples.push((t.elapsed(), at));
        assert!(hit, "the hot key must be a hit");
    }
    samples
}

async fn memory_store() {
    let entries = env("SCALE_ENTRIES", 100_000);
    let write_for = Duration::from_secs(env("SCALE_WRITE_SECONDS", 20));
    let store = MemoryStore::new(256 * 1024 * 1024);
    let svc = layer(store.clone()).layer(tower::service_fn(origin));
    assert!(!get(&mut svc.clone(), "/hot").await, "first a miss");

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let idle = probe_hits(
        svc.clone(),
        stop.clone(),
        written.clone(),
        Duration::from_secs(3),
    )
    .await;
    let mut idle: Vec<Duration> = idle.into_iter().map(|(d, _)| d).collect();

    // Two writers (misses on distinct URLs), one reader, on two workers.
    let started = Instant::now();
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let mut svc = svc.clone();
            let stop = stop.clone();
            let written = written.clone();
            tokio::spawn(async move {
                let mut took = Vec::with_capacity(entries as usize / 2);
                for i in (w..entries).step_by(2) {
                    if started.elapsed() > write_for || stop.load(Relaxed) {
                        break;
                    }
                    // A request from a connection: behind those already waiting.
                    tokio::task::yield_now().await;
                    let t = Instant::now();
                    let hit = get(&mut svc, &format!("/products?x={i}")).await;
                    took.push(t.elapsed());
                    written.fetch_add(1, Relaxed);
                    assert!(!hit, "each URL is new");
                }
                // The first writer done ends the measurement for all.
                stop.store(true, Relaxed);
                took
            })
        })
        .collect();
    let reader = tokio::spawn(probe_hits(
        svc.clone(),
        stop.clone(),
        written.clone(),
        write_for + Duration::from_secs(5),
    ));
    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await.expect("a writer"));
    }
    let wrote_for = started.elapsed();
    stop.store(true, Relaxed);
    let busy = reader.await.expect("the reader");
    let buckets: Vec<(u64, u64, Vec<Duration>)> = [0, 1_000, 5_000, 10_000, 50_000]
        .iter()
        .zip([1_000, 5_000, 10_000, 50_000, u64::MAX])
        .map(|(&from, to)| {
            let samples = busy
                .iter()
                .filter(|(_, at)| (from..to).contains(at))
                .map(|(d, _)| *d)
                .collect();
            (from, to, samples)
        })
        .collect();
    let mut busy: Vec<Duration> = busy.into_iter().map(|(d, _)| d).collect();
    let written = writes.len();
    let (i50, i99, imax) = percentiles(&mut idle);
    let (b50, b99, bmax) = percentiles(&mut busy);
    let (w50, w99, wmax) = percentiles(&mut writes);
    println!("(a) MemoryStore through the layer: hits on one URL, on 2 runtime workers, µs");
    println!("    phase                         p50      p99       max   samples");
    println!(
        "    no writes                {i50:>8.1} {i99:>8.1} {imax:>9.1} {:>9}",
        idle.len()
    );
    println!(
        "    while 2 tasks write      {b50:>8.1} {b99:>8.1} {bmax:>9.1} {:>9}",
        busy.len()
    );
    println!(
        "    ratio (writing / idle)   {:>8.2} {:>8.2}",
        b50 / i50,
        b99 / i99
    );
    println!("    while writing, by entries already written:");
    for (from, to, mut samples) in buckets {
        let (p50, p99, max) = percentiles(&mut samples);
        let to = if to == u64::MAX {
            format!("{entries}")
        } else {
            format!("{to}")
        };
        println!(
            "      {from:>6} to {to:>6}         {p50:>8.1} {p99:>8.1} {max:>9.1} {:>9}",
            samples.len()
        );
    }
    println!(
        "    misses stored: {written} of {entries} distinct tagged URLs in {:.2} s ({:.0}/s){}; \
         per miss p50 {w50:.1} µs, p99 {w99:.1} µs, max {wmax:.1} µs",
        wrote_for.as_secs_f64(),
        written as f64 / wrote_for.as_secs_f64(),
        if (written as u64) < entries {
            " (stopped: the time limit, or the other writer was done)"
        } else {
            ""
        },
    );
    let t = Instant::now();
    let removed = store
        .invalidate_tags(&[tag_key("products")])
        .await
        .expect("an invalidation");
    println!(
        "    invalidating the common tag: {removed} entries in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}

async fn command(client: &tower_redis_cache::fred::prelude::Client, args: &[&str]) -> Value {
    let name: &'static str = Box::leak(args[0].to_owned().into_boxed_str());
    client
        .custom(
            CustomCommand::new_static(name, None, false),
            args[1..].to_vec(),
        )
        .await
        .expect("an admin command")
}

async fn redis_store() {
    let members = env("SCALE_TAG_MEMBERS", 60_000);
    let redis = support::RedisServer::start();
    let store = redis.store().await;
    let handle = layer(store.clone()).handle();
    let admin = redis.client().await;
    let tag = tag_key("big");
    for chunk in 0..members.div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(members)).map(|i| {
            let uri: http::Uri = format!("/e/{i}").parse().expect("a URI");
            (uri, response("big"))
        });
        handle.put_many(batch).await.expect("filling the tag");
    }
    let listed: u64 =
        tower_redis_cache::fred::prelude::SortedSetsInterface::zcard(&admin, tag.as_str())
            .await
            .unwrap();
    assert_eq!(listed, members, "the tag lists every entry");
    let () = admin
        .set("scale:probe", "x", None, None, false)
        .await
        .unwrap();
    command(&admin, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]).await;
    command(&admin, &["CONFIG", "SET", "slowlog-max-len", "1000000"]).await;
    command(&admin, &["SLOWLOG", "RESET"]).await;

    // Another client's GETs while the tag is invalidated.
    let probe = redis.client().await;
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut sent = 0u64;
            while !done.load(Relaxed) {
                let t = Instant::now();
                let _: Option<Bytes> = probe.get("scale:probe").await.unwrap();
                longest = longest.max(t.elapsed());
                sent += 1;
            }
            (longest, sent)
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    let removed = store
        .invalidate_tags(std::slice::from_ref(&tag))
        .await
        .expect("invalidating the tag");
    let took = t.elapsed();
    done.store(true, Relaxed);
    let (probe_longest, probes) = prober.await.unwrap();

    command(
        &admin,
        &["CONFIG", "SET", "slowlog-log-slower-than", "1000000"],
    )
    .await;
    let log = command(&admin, &["SLOWLOG", "GET", "-1"]).await;
    let mut longest = (0i64, String::new());
    let mut commands = 0usize;
    let mut times = Vec::new();
    if let Value::Array(log) = log {
        for entry in log {
            let Value::Array(fields) = entry else {
                continue;
            };
            let (Some(Value::Integer(us)), Some(Value::Array(args))) =
                (fields.get(2), fields.get(3))
            else {
                continue;
            };
            // A command a script ran is logged too, from the address `?:0`:
            // its time is inside the script's.
            if fields
                .get(4)
                .and_then(|a| a.as_string())
                .is_some_and(|a| a.starts_with('?'))
            {
                continue;
            }
            let name = args
                .first()
                .and_then(|a| a.as_string())
                .unwrap_or_default()
                .to_uppercase();
            if ["SLOWLOG", "CONFIG", "GET"].contains(&name.as_str()) {
                continue;
            }
            commands += 1;
            times.push(Duration::from_micros(u64::try_from(*us).unwrap_or(0)));
            if *us > longest.0 {
                let shown: Vec<String> =
                    args.iter().take(4).filter_map(|a| a.as_string()).collect();
                longest = (*us, shown.join(" "));
            }
        }
    }
    let left: u64 = admin.exists(tag.as_str()).await.unwrap();
    println!("(b) RedisStore, one tag with {members} members, invalidate_tags");
    println!(
        "    removed {removed} entries in {:.1} ms; index left: {left}",
        took.as_secs_f64() * 1e3
    );
    println!(
        "    Redis commands run: {commands}; the longest took {} µs ({} ...)",
        longest.0, longest.1
    );
    let (p50, p99, _) = percentiles(&mut times);
    println!("    time per command: p50 {p50:.0} µs, p99 {p99:.0} µs");
    println!(
        "    another client's GET meanwhile: longest wait {:.2} ms over {probes} GETs",
        probe_longest.as_secs_f64() * 1e3
    );
    let _ = admin.quit().await;
}

fn main() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    };
    runtime().block_on(memory_store());
    runtime().block_on(redis_store());
}
