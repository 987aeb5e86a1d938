//! Several TTL policies on one axum router: each route gets its own TTL,
//! jitter, namespace, cacheable statuses or no caching at all, from one layer.
//!
//! ```text
//! cargo run --example per_route
//! curl -i localhost:3002/products/7        # 15 min, ±10%, namespace "products"
//! curl -i localhost:3002/search?q=tv       # 30 s exactly; 404s cached too
//! curl -i localhost:3002/assets/app.css    # a day, by path prefix
//! curl -i localhost:3002/me                # never cached (x-cache: BYPASS)
//! curl -i localhost:3002/news              # a separate layer on one route
//! ```
//!
//! `REDIS_URL` selects Redis (in-memory store without it), `PORT` the port.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    extract::{Path, Query},
    http::StatusCode,
    routing::get,
    Router,
};
use tower_redis_cache::{CachePolicy, RedisCacheLayer, RedisCacheLayerBuilder};

fn now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The shared layer: a default for unlisted routes, and one policy per route.
pub fn cache_layer(
    builder: RedisCacheLayerBuilder,
) -> Result<RedisCacheLayer, tower_redis_cache::Error> {
    builder
        .prefix("per-route")
        .default_policy(CachePolicy::new().ttl(Duration::from_secs(60))) // routes without a rule
        .route(
            "/products/{id}",
            CachePolicy::new()
                .namespace("products")
                .ttl(Duration::from_secs(900))
                .jitter(0.1),
        )
        .route(
            "/search",
            CachePolicy::new()
                .namespace("search")
                .ttl(Duration::from_secs(30))
                .jitter(0.0)
                .statuses([StatusCode::OK, StatusCode::NOT_FOUND]),
        )
        .path_prefix(
            "/assets/",
            CachePolicy::new()
                .namespace("assets")
                .ttl(Duration::from_secs(86_400))
                .etag(true),
        )
        .route("/me", CachePolicy::bypass())
        .build()
}

/// The router: `cache` on most routes, and a second layer of its own on
/// `/news` (`route_layer`), as a route that wants its own settings can do.
pub fn router(cache: RedisCacheLayer, news_cache: RedisCacheLayer) -> Router {
    let news = Router::new().route(
        "/news",
        get(|| async { format!("headlines at {}\n", now()) }).route_layer(news_cache),
    );
    Router::new()
        .route(
            "/products/{id}",
            get(|Path(id): Path<String>| async move { format!("product {id} at {}\n", now()) }),
        )
        .route(
            "/search",
            get(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    match q.get("q").filter(|q| !q.is_empty()) {
                        Some(q) => (StatusCode::OK, format!("results for {q} at {}\n", now())),
                        None => (StatusCode::NOT_FOUND, format!("no query at {}\n", now())),
                    }
                },
            ),
        )
        .route(
            "/assets/{*path}",
            get(|Path(path): Path<String>| async move { format!("/* {path} */\n") }),
        )
        .route("/me", get(|| async { format!("you, at {}\n", now()) }))
        .layer(cache)
        .merge(news)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = RedisCacheLayer::builder();
    let mut news = RedisCacheLayer::builder()
        .prefix("per-route-news")
        .default_policy(CachePolicy::new().ttl(Duration::from_secs(5)));
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("cache store: Redis at {url}");
            builder = builder.redis_url(url.clone());
            news = news.redis_url(url);
        }
        _ => println!("cache store: in-memory (set REDIS_URL to use Redis)"),
    }
    let app = router(cache_layer(builder)?, news.build()?);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3002);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://127.0.0.1:{port}  (try: curl -i http://127.0.0.1:{port}/products/7)"
    );
    axum::serve(listener, app).await?;
    Ok(())
}
