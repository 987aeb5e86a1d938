//! Micro benchmarks of the hit path's pure parts:
//! `cargo bench --features bench --bench micro` (the `bench` feature opens
//! the crate's internal entry points to it).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{header, HeaderMap, HeaderValue};
use tower_redis_cache::__bench::{decode, encode, Keys, Policies};

fn keys(c: &mut Criterion) {
    let keys = Keys::new();
    let mut g = c.benchmark_group("key");
    g.bench_function("path only", |b| {
        b.iter(|| keys.entry_key(black_box("/products/42"), None))
    });
    g.bench_function("sorted query", |b| {
        b.iter(|| {
            keys.entry_key(
                black_box("/products"),
                Some(black_box("category=books&page=2&per_page=20")),
            )
        })
    });
    g.bench_function("query to sort", |b| {
        b.iter(|| {
            keys.entry_key(
                black_box("/products"),
                Some(black_box("per_page=20&page=2&category=books")),
            )
        })
    });
    let long = "x=".to_owned() + &"a".repeat(1000);
    g.bench_function("hashed (1 KB query)", |b| {
        b.iter(|| keys.entry_key(black_box("/search"), Some(black_box(long.as_str()))))
    });
    g.finish();
}

fn entries(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ETAG, HeaderValue::from_static("\"abc123\""));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    let mut g = c.benchmark_group("entry");
    for size in [200usize, 10 * 1024, 1024 * 1024] {
        let body = vec![b'x'; size];
        let value: Bytes = encode(&headers, &body);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &body, |b, body| {
            b.iter(|| encode(black_box(&headers), black_box(body)))
        });
        g.bench_with_input(BenchmarkId::new("decode", size), &value, |b, value| {
            b.iter(|| decode(black_box(value)))
        });
    }
    g.finish();
}

fn policies(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy lookup");
    for routes in [1usize, 10, 100] {
        let table = Policies::new(routes, routes);
        g.bench_with_input(BenchmarkId::new("matched route", routes), &table, |b, t| {
            b.iter(|| t.lookup(black_box(Some("/r0/{id}")), black_box("/r0/42")))
        });
        g.bench_with_input(BenchmarkId::new("path matching", routes), &table, |b, t| {
            b.iter(|| t.lookup(black_box(None), black_box("/r0/42")))
        });
        g.bench_with_input(BenchmarkId::new("prefix", routes), &table, |b, t| {
            b.iter(|| t.lookup(black_box(None), black_box("/p0/app.js")))
        });
    }
    g.finish();
}

criterion_group!(benches, keys, entries, policies);
criterion_main!(benches);
