//! Tag (surrogate-key) invalidation: pages say which records they show, and
//! a write drops exactly the pages that showed the record it changed.
//!
//! ```text
//! cargo run --example tags
//! curl -i localhost:3003/articles/1              # tagged article:1, author:ada
//! curl -i localhost:3003/authors/ada/articles    # tagged author:ada, article:1, article:2
//! curl -i localhost:3003/articles/3              # tagged article:3, author:bob
//! curl -X PUT localhost:3003/articles/1 -d 'New title'
//! # /articles/1 and /authors/ada/articles are misses again; /articles/3 is still a hit
//! ```
//!
//! Tags come from three places: a `cache-tag` response header (stripped
//! before the client sees it), a `CacheTags` response extension, or a
//! policy's `tags` function. `REDIS_URL` selects Redis (in-memory store
//! without it), `PORT` the port.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tower_redis_cache::{
    CacheHandle, CachePolicy, CacheTags, RedisCacheLayer, RedisCacheLayerBuilder,
};

/// id -> (author, title)
pub type Articles = Arc<Mutex<BTreeMap<u32, (String, String)>>>;

pub fn seeded() -> Articles {
    let mut m = BTreeMap::new();
    m.insert(1, ("ada".to_owned(), "Notes on the engine".to_owned()));
    m.insert(2, ("ada".to_owned(), "On numbers".to_owned()));
    m.insert(3, ("bob".to_owned(), "Bridges".to_owned()));
    Arc::new(Mutex::new(m))
}

pub fn cache_layer(
    builder: RedisCacheLayerBuilder,
) -> Result<RedisCacheLayer, tower_redis_cache::Error> {
    builder
        .prefix("tags")
        .default_policy(CachePolicy::new().ttl(Duration::from_secs(600)))
        // Every page of this route also carries the `articles` tag, from the
        // policy (the handlers add the per-record tags).
        .route(
            "/authors/{name}/articles",
            CachePolicy::new().tags(|_, _| vec!["articles".to_owned()]),
        )
        .build()
}

async fn article(State(db): State<Articles>, Path(id): Path<u32>) -> Response {
    let Some((author, title)) = db.lock().unwrap().get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "no such article\n").into_response();
    };
    // Tags from a header: `cache-tag` is read and removed by the layer.
    (
        [("cache-tag", format!("article:{id} author:{author}"))],
        format!("#{id} {title} by {author}\n"),
    )
        .into_response()
}

async fn by_author(State(db): State<Articles>, Path(name): Path<String>) -> Response {
    let db = db.lock().unwrap();
    let mine: Vec<(u32, String)> = db
        .iter()
        .filter(|(_, (a, _))| *a == name)
        .map(|(id, (_, t))| (*id, t.clone()))
        .collect();
    // Tags from an extension: one per article listed, plus the author.
    let mut tags = CacheTags::new([format!("author:{name}")]);
    let mut body = format!("articles by {name}:\n");
    for (id, title) in &mine {
        tags.0.push(format!("article:{id}"));
        body.push_str(&format!("  #{id} {title}\n"));
    }
    let mut res = body.into_response();
    res.extensions_mut().insert(tags);
    res
}

async fn edit(
    State(db): State<Articles>,
    cache: CacheHandle,
    Path(id): Path<u32>,
    title: String,
) -> Response {
    if let Some(entry) = db.lock().unwrap().get_mut(&id) {
        entry.1 = title.trim().to_owned();
    } else {
        return (StatusCode::NOT_FOUND, "no such article\n").into_response();
    }
    // Every page that showed this article: its own page and the author lists.
    match cache.invalidate_tags([format!("article:{id}")]).await {
        Ok(done) if done.queued => {
            "updated; cache purge queued until Redis answers\n".into_response()
        }
        Ok(done) => format!("updated; {} cached pages dropped\n", done.removed).into_response(),
        Err(e) => (StatusCode::OK, format!("updated; cache not purged: {e}\n")).into_response(),
    }
}

pub fn router(db: Articles, cache: RedisCacheLayer) -> Router {
    Router::new()
        .route("/articles/{id}", get(article).put(edit))
        .route("/authors/{name}/articles", get(by_author))
        .with_state(db)
        .layer(cache)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = RedisCacheLayer::builder();
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("cache store: Redis at {url}");
            builder = builder.redis_url(url);
        }
        _ => println!("cache store: in-memory (set REDIS_URL to use Redis)"),
    }
    let app = router(seeded(), cache_layer(builder)?);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3003);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://127.0.0.1:{port}  (try: curl -i http://127.0.0.1:{port}/articles/1)"
    );
    axum::serve(listener, app).await?;
    Ok(())
}
