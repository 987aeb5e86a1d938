//! The cache in front of a plain hyper 1 service (no axum): a `service_fn`
//! wrapped with `RedisCacheLayer`, served by hyper-util.
//!
//! `cargo run --example hyper_service`, then `curl -i localhost:3001/time`
//! twice: the second answer is a HIT with the same time. `REDIS_URL` and
//! `PORT` work as in the products example.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tower::{service_fn, Layer};
use tower_redis_cache::{CachePolicy, RedisCacheLayer};

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/time" => (
            StatusCode::OK,
            format!("{:?}\n", std::time::SystemTime::now()),
        ),
        "/" => (StatusCode::OK, "try /time\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = RedisCacheLayer::builder()
        .prefix("hyper")
        .default_policy(CachePolicy::new().ttl(Duration::from_secs(10)))
        .path_prefix("/time", CachePolicy::new().ttl(Duration::from_secs(5)));
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            // Not the URL itself: it may hold a password.
            println!("cache store: Redis (REDIS_URL)");
            builder = builder.redis_url(url);
        }
        _ => println!("cache store: in-memory"),
    }
    let cache = builder.build()?;
    let service = cache.layer(service_fn(handle));

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{addr}  (try: curl -i http://{addr}/time)");
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
