//! The product API from the original FastAPI example, on axum with
//! tower-redis-cache.
//!
//! Run it with `cargo run --example products` (in-memory store), or with
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --example products` (a
//! cluster URL such as `redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001`
//! works too). `CACHE_L1=1` adds the in-process tier in front of Redis.
//! `PORT` changes the port (default 3000). Then:
//!
//! ```text
//! curl -i localhost:3000/products/7                      # x-cache: MISS, then HIT
//! curl -i 'localhost:3000/products?category=books&page=1&per_page=5'
//! curl -i -X POST localhost:3000/products/batch -H 'content-type: application/json' \
//!      -d '[{"id":"500","name":"Lamp","category":"home","price":19.5,"in_stock":true}]'
//! curl -i -X PATCH localhost:3000/products/7/stock -H 'content-type: application/json' \
//!      -d '{"in_stock":false}'
//! curl localhost:3000/stats
//! ```
//!
//! The patterns it shows, next to the Python originals:
//! - cache-aside per item (`get_or_set`): the layer caches `GET /products/{id}`;
//! - cached list queries: `GET /products?...`, one entry per normalized query,
//!   tracking parameters (`utm_*`, `fbclid`, `gclid`) left out of the key;
//! - batch writes through a pipeline: `POST /products/batch` writes each item's
//!   entry with `CacheHandle::put_many`, one Redis round trip;
//! - invalidation on a stock update: `PATCH /products/{id}/stock` removes
//!   every cached page of the item, under any alias of its URL
//!   (`/products/7?ref=x`, `/products/%37`: they share the tag
//!   `product:7`), and every list page (they share the tag `product-lists`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
    Extension, Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tower_redis_cache::{
    store::{LocalTier, RedisStore, TieredStore},
    CacheHandle, CachePolicy, CacheTags, RedisCacheLayer, RedisCacheLayerBuilder,
};

/// A product, with the fields of the original example.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub category: String,
    pub price: f64,
    pub in_stock: bool,
    #[serde(default = "now_rfc3339")]
    pub created_at: String,
}

/// One page of products.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProductList {
    pub items: Vec<Product>,
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The simulated database: a map behind a 20 ms delay that counts its reads.
pub struct Db {
    products: RwLock<BTreeMap<String, Product>>,
    reads: AtomicU64,
    delay: Duration,
}

impl Db {
    /// 100 products in three categories.
    pub fn seeded() -> Arc<Self> {
        let categories = ["electronics", "books", "garden"];
        let products = (1..=100)
            .map(|i| {
                let category = categories[i % 3];
                let p = Product {
                    id: i.to_string(),
                    name: format!("{category} product {i}"),
                    category: category.to_owned(),
                    price: (i as f64 * 9.99 * 100.0).round() / 100.0,
                    in_stock: i % 2 == 0,
                    created_at: now_rfc3339(),
                };
                (p.id.clone(), p)
            })
            .collect();
        Arc::new(Self {
            products: RwLock::new(products),
            reads: AtomicU64::new(0),
            delay: Duration::from_millis(20),
        })
    }

    /// How many reads reached the database.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    async fn read<T>(&self, f: impl FnOnce(&BTreeMap<String, Product>) -> T) -> T {
        self.reads.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.delay).await;
        f(&*self.products.read().await)
    }
}

#[derive(Clone)]
struct AppState {
    db: Arc<Db>,
    cache: CacheHandle,
}

/// The tag of every cached list page.
const LIST_TAG: &str = "product-lists";

/// The tag of every cached page of one product. The layer keys a page by
/// its URL as sent, so `/products/7`, `/products/7?utm_source=x` and
/// `/products/%37` are three entries; the tag, made from the id the handler
/// read, reaches them all.
fn product_tag(id: &str) -> String {
    format!("product:{id}")
}

/// The cache configuration of this API, on whatever store `builder` has.
pub fn cache_layer(
    builder: RedisCacheLayerBuilder,
) -> Result<RedisCacheLayer, tower_redis_cache::Error> {
    builder
        .prefix("api")
        .version("v1")
        .default_policy(
            CachePolicy::new()
                .namespace("products")
                .ttl(Duration::from_secs(900))
                .jitter(0.1)
                // Tracking parameters neither split the cache nor reach the
                // handlers: `/products/7?utm_source=mail` is `/products/7`.
                .ignore_params(["utm_*", "fbclid", "gclid"]),
        )
        .route("/products/{id}", CachePolicy::new())
        // Every list page carries the tag `product-lists`, so one call drops
        // them all, whatever their query strings.
        .route(
            "/products",
            CachePolicy::new().tags(|_, _| vec![LIST_TAG.to_owned()]),
        )
        .route("/stats", CachePolicy::bypass())
        .bypass_unmatched(true)
        .build()
}

/// The API, with `cache` in front of every route.
pub fn router(db: Arc<Db>, cache: RedisCacheLayer) -> Router {
    let state = AppState {
        db,
        cache: cache.handle(),
    };
    Router::new()
        .route("/products/{id}", get(get_product))
        .route("/products", get(list_products))
        .route("/products/batch", post(create_batch))
        .route("/products/{id}/stock", patch(update_stock))
        .route("/stats", get(stats))
        .layer(cache)
        .with_state(state)
}

/// Pattern 1: cache-aside per item. The handler only reads the database; the
/// layer serves repeats from the cache.
async fn get_product(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match s.db.read(|p| p.get(&id).cloned()).await {
        Some(product) => {
            let tags = CacheTags::new([product_tag(&product.id)]);
            (Extension(tags), Json(product)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "detail": "not found" })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    category: Option<String>,
    page: Option<usize>,
    per_page: Option<usize>,
}

/// Pattern 2: cached list queries, one entry per normalized query string.
async fn list_products(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let page = q.page.unwrap_or(1).max(1);
    let per_page = q.per_page.unwrap_or(20).clamp(1, 100);
    let category = q.category.filter(|c| !c.is_empty());
    let (total, items) =
        s.db.read(|products| {
            let matching: Vec<&Product> = products
                .values()
                .filter(|p| category.as_deref().is_none_or(|c| p.category == c))
                .collect();
            let items = matching
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|p| (*p).clone())
                .collect();
            (matching.len(), items)
        })
        .await;
    Json(ProductList {
        items,
        total,
        page,
        per_page,
    })
    .into_response()
}

/// Pattern 3: batch writes. Stores the products, then writes every item's
/// cache entry in one pipeline so the next read of each is a hit.
async fn create_batch(State(s): State<AppState>, Json(products): Json<Vec<Product>>) -> Response {
    {
        let mut db = s.db.products.write().await;
        for p in &products {
            db.insert(p.id.clone(), p.clone());
        }
    }
    let entries: Vec<_> = products
        .iter()
        .filter_map(|p| {
            let uri: Uri = format!("/products/{}", p.id).parse().ok()?;
            Some((uri, json_response(p)?))
        })
        .collect();
    // 0 when Redis did not take them in time: they are read from the
    // database then.
    let cached = match s.cache.put_many(entries).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "a product could not be cached");
            0
        }
    };
    // New products change the lists. Never a store error: an invalidation
    // Redis does not confirm in time is queued and replayed.
    let _ = s.cache.invalidate_tags([LIST_TAG]).await;
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "created": products.len(), "cached": cached })),
    )
        .into_response()
}

/// The exact response `GET /products/{id}` gives, as bytes for the cache.
fn json_response(p: &Product) -> Option<http::Response<bytes::Bytes>> {
    let body = serde_json::to_vec(p).ok()?;
    http::Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .extension(CacheTags::new([product_tag(&p.id)]))
        .body(body.into())
        .ok()
}

#[derive(Deserialize)]
struct StockUpdate {
    in_stock: bool,
}

/// Pattern 4: invalidation on a stock update: every cached page of the item
/// and every cached list page.
async fn update_stock(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(update): Json<StockUpdate>,
) -> Response {
    let product = {
        let mut db = s.db.products.write().await;
        let Some(p) = db.get_mut(&id) else {
            return (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "detail": "not found" })),
            )
                .into_response();
        };
        p.in_stock = update.in_stock;
        p.clone()
    };
    // The item's pages under every alias (`product:{id}`), and every list
    // page. Lists keep one shared tag rather than a tag per product they
    // show: that would spare only the pages without this product, for up to
    // 100 tag writes per page, and a batch insert (which shifts every page
    // and changes the totals) needs the shared tag anyway.
    //
    // The call waits at most the handle budget (100 ms). An invalidation
    // Redis does not confirm in time is queued and replayed once Redis
    // answers; until then this instance serves no hit, so no stale product.
    let tags = [product_tag(&id), LIST_TAG.to_owned()];
    match s.cache.invalidate_tags(tags).await {
        Ok(done) if done.queued => {
            tracing::info!("cache invalidation queued for replay after a stock update");
        }
        Ok(_) => {}
        // Only bad input is an error; a tag is never bad input here.
        Err(e) => tracing::warn!(error = %e, "cache invalidation refused"),
    }
    Json(product).into_response()
}

async fn stats(State(s): State<AppState>) -> Response {
    Json(serde_json::json!({ "db_reads": s.db.reads(), "cache": s.cache.stats() })).into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT={p:?} is not a port number"))?,
        Err(_) => 3000,
    };
    let l1 = std::env::var("CACHE_L1").is_ok_and(|v| v == "1");
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let store = match RedisStore::builder(&url).connect().await {
                Ok(store) => {
                    println!("cache store: Redis at {url}");
                    store
                }
                Err(e) => {
                    println!("cache store: Redis at {url} (not reachable yet: {e}; requests pass through until it is)");
                    RedisStore::builder(&url).build()?
                }
            };
            if !l1 {
                RedisCacheLayer::builder().store(store)
            } else {
                // An in-process tier in front of Redis, coherent across
                // instances through Redis client tracking on our key prefix.
                let tier = LocalTier::new().track_prefix("api:");
                match TieredStore::connect(store.clone(), tier).await {
                    Ok(tiered) => {
                        println!("cache L1: on (in-process tier, kept coherent by Redis client tracking)");
                        RedisCacheLayer::builder().store(tiered)
                    }
                    Err(e) => {
                        println!("cache L1: off ({e}); using Redis alone");
                        RedisCacheLayer::builder().store(store)
                    }
                }
            }
        }
        _ => {
            println!("cache store: in-memory (set REDIS_URL=redis://host:port to use Redis)");
            if l1 {
                println!("cache L1: CACHE_L1=1 needs REDIS_URL; the in-memory store is already in-process");
            }
            RedisCacheLayer::builder()
        }
    };
    let cache = cache_layer(builder)?;
    let handle = cache.handle();
    let app = router(Db::seeded(), cache);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{addr}  (try: curl -i http://{addr}/products/1)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Invalidations still queued (Redis was away) are lost when the process
    // exits: give them a few seconds.
    if !handle.drain(std::time::Duration::from_secs(5)).await {
        tracing::warn!(
            pending = handle.stats().invalidations_pending,
            "cache invalidations lost on shutdown"
        );
    }
    Ok(())
}
