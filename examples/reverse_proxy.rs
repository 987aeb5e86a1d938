//! A standards-following shared HTTP cache in front of any origin: the layer
//! in origin-driven mode (RFC 9111) around a hyper client that forwards every
//! request to `UPSTREAM`.
//!
//! ```text
//! UPSTREAM=http://127.0.0.1:8000 cargo run --example reverse_proxy
//! curl -i http://127.0.0.1:8080/some/page     # x-cache: MISS, then HIT
//! ```
//!
//! - `UPSTREAM`: the origin (default `http://127.0.0.1:8000`).
//! - `LISTEN`: where the proxy listens (default `127.0.0.1:8080`).
//! - `REDIS_URL`: the store (`redis://...`, `redis-cluster://...`); the
//!   in-memory store when unset.
//! - `TRUST_FORWARDED=1`: keep the `X-Forwarded-*` and `Forwarded` fields
//!   clients send (only behind a proxy of yours that sets them and strips
//!   what clients send); by default they are dropped.
//!
//! Freshness, validators, `Vary`, request directives and invalidation by
//! unsafe methods all come from the origin's headers; `x-cache` says what the
//! cache did (`HIT`, `MISS`, `STALE`, `REVALIDATED`, `BYPASS`). Method, path,
//! query, headers (minus hop-by-hop ones) and bodies are forwarded as they
//! came. The host is part of the cache key, and the origin is sent exactly
//! the host that was keyed: a request whose host the cache cannot key (no
//! `Host`, several, an invalid one, or an absolute-form target naming
//! another host than `Host`) is answered `400 Bad Request`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tower::{service_fn, Layer, ServiceExt};
use tower_redis_cache::{request_authority, CachePolicy, RedisCacheLayer, RedisCacheLayerBuilder};

/// What the proxy answers with: the origin's body, streamed, or its own
/// short error body.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The cache layer of the proxy: origin-driven freshness (with a tenth of
/// the time since `Last-Modified`, at most a day, for responses that say
/// nothing), the host in the key, `x-cache` and `Cache-Status` (RFC 9211) on.
pub fn cache_layer(
    builder: RedisCacheLayerBuilder,
) -> Result<RedisCacheLayer, tower_redis_cache::Error> {
    builder
        .prefix("proxy")
        .default_policy(CachePolicy::new().origin_driven().heuristic_freshness(0.1))
        .key_host(true)
        .cache_status("tower-redis-cache", false)
        .build()
}

/// Removes the headers that describe one connection (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        headers.remove(name);
    }
}

/// Removes the forwarding fields (`Forwarded`, `X-Forwarded-*`) a client
/// sent: an origin that trusts them (for the host, the scheme, the client's
/// address) would otherwise answer what the client chose, under a key that
/// does not say so.
fn strip_forwarded(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| *n == header::FORWARDED || n.as_str().starts_with("x-forwarded-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Forwards one request to `upstream` and hands back its response. The
/// origin gets, as `Host`, exactly the authority the cache keyed.
async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstream: &Uri,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    // The same rule as the cache's key; the cache passed such a request
    // through uncached, and it goes no further.
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let host = match request_authority(&parts.uri, &parts.headers, scheme) {
        Ok(host) => host,
        Err(reason) => return error_owned(StatusCode::BAD_REQUEST, reason.to_string()),
    };
    let Ok(host) = HeaderValue::try_from(host) else {
        return error(StatusCode::BAD_REQUEST, "bad host");
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let target = Uri::builder()
        .scheme(upstream.scheme_str().unwrap_or("http"))
        .authority(upstream.authority().map_or("127.0.0.1", |a| a.as_str()))
        .path_and_query(path_and_query)
        .build();
    let Ok(target) = target else {
        return error(StatusCode::BAD_REQUEST, "bad request target");
    };
    parts.uri = target;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::HOST, host);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => {
            eprintln!("upstream error: {e}");
            error(StatusCode::BAD_GATEWAY, "upstream unreachable")
        }
    }
}

fn error(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    error_owned(status, message.to_owned())
}

fn error_owned(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(message))));
    *res.status_mut() = status;
    res
}

/// Serves the caching proxy on `listener` until the process ends. With
/// `trust_forwarded`, client-sent `Forwarded`/`X-Forwarded-*` fields reach
/// the cache and the origin; otherwise they are dropped first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    upstream: Uri,
    cache: RedisCacheLayer,
    trust_forwarded: bool,
) -> std::io::Result<()> {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let upstream = Arc::new(upstream);
    let cached = cache.layer(service_fn(move |req: Request<Incoming>| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move { Ok::<_, Infallible>(forward(&client, &upstream, req).await) }
    }));
    // Dropped before the cache sees the request: neither its key nor a
    // `Vary` variant can depend on them.
    let service = service_fn(move |mut req: Request<Incoming>| {
        if !trust_forwarded {
            strip_forwarded(req.headers_mut());
        }
        cached.clone().oneshot(req)
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                eprintln!("connection error: {e}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream: Uri = std::env::var("UPSTREAM")
        .unwrap_or_else(|_| "http://127.0.0.1:8000".into())
        .parse()
        .map_err(|e| format!("UPSTREAM is not a URL such as http://127.0.0.1:8000: {e}"))?;
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        return Err(
            "UPSTREAM must be an http:// URL with a host, e.g. http://127.0.0.1:8000".into(),
        );
    }
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()
        .map_err(|e| format!("LISTEN is not an address such as 127.0.0.1:8080: {e}"))?;
    let mut builder = RedisCacheLayer::builder();
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("cache store: Redis at {url}");
            builder = builder.redis_url(url);
        }
        _ => println!("cache store: in-memory (set REDIS_URL to use Redis)"),
    }
    let cache = cache_layer(builder)?;
    let trust_forwarded = std::env::var("TRUST_FORWARDED").is_ok_and(|v| v == "1");
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("caching proxy for {upstream} listening on http://{listen}");
    serve(listener, upstream, cache, trust_forwarded).await?;
    Ok(())
}
