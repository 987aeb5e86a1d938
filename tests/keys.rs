//! Keys users shape (ignored and listed query parameters, key headers, a key
//! function), invalidation by path, and one layer shared by services on
//! different hosts: what clients see, on a real Redis and on the in-memory
//! store.

mod support;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use axum::{extract::Request, routing::get, Router};
use http::{HeaderName, Method, Uri};
use support::{read, req_get, send, RedisServer};
use tower::ServiceExt;
use tower_redis_cache::{
    store::{MemoryStore, RedisStore, Store},
    CacheHandle, CachePolicy, Error, RedisCacheLayer, RedisCacheLayerBuilder,
};

/// The stores every test runs on: the in-memory one, and a Redis started
/// for the test (kept alive by the returned server).
async fn stores() -> (RedisServer, Vec<(&'static str, Arc<dyn StoreMaker>)>) {
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .pool_size(2)
        .connect()
        .await
        .expect("connect to the test Redis");
    let makers: Vec<(&'static str, Arc<dyn StoreMaker>)> = vec![
        ("memory", Arc::new(MemoryStore::default)),
        ("redis", Arc::new(move || store.clone())),
    ];
    (redis, makers)
}

trait StoreMaker: Send + Sync {
    fn with(&self, builder: RedisCacheLayerBuilder) -> RedisCacheLayerBuilder;
}

impl<F, S> StoreMaker for F
where
    F: Fn() -> S + Send + Sync,
    S: Store,
{
    fn with(&self, builder: RedisCacheLayerBuilder) -> RedisCacheLayerBuilder {
        builder.store(self())
    }
}

/// An app whose handler answers with the query and `x-tenant` it saw and
/// a call count; `calls` counts calls.
fn app(cache: RedisCacheLayer, calls: Arc<AtomicUsize>) -> Router {
    let handler = move |req: Request| {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let tenant = req
                .headers()
                .get("x-tenant")
                .map_or("-", |v| v.to_str().unwrap_or("?"))
                .to_owned();
            let query = req.uri().query().unwrap_or("").to_owned();
            format!("call {n} query [{query}] tenant {tenant}")
        }
    };
    Router::new()
        .route("/items/{id}", get(handler.clone()))
        .route("/search", get(handler))
        .layer(cache)
}

fn with_tenant(uri: &str, tenant: &str) -> axum::http::Request<axum::body::Body> {
    let mut req = req_get(uri);
    req.headers_mut()
        .insert("x-tenant", tenant.parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_parameters_never_reach_the_handler_and_cannot_poison_the_page() {
    let (_redis, stores) = stores().await;
    for (name, store) in stores {
        let cache = store
            .with(RedisCacheLayer::builder().prefix(format!("ign-{name}")))
            .default_policy(CachePolicy::new().ignore_params(["utm_*", "fbclid", "gclid"]))
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app(cache, calls.clone());
        // The attacker's request fills the entry of the bare page...
        let (_, x, body) = send(&app, req_get("/items/7?utm_source=evil&fbclid=x")).await;
        assert_eq!(x, "MISS", "{name}");
        assert_eq!(
            body, "call 1 query [] tenant -",
            "{name}: the handler saw no ignored parameter"
        );
        // ...with exactly what the bare page shows: nothing it can poison.
        let (_, x, body) = send(&app, req_get("/items/7")).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("HIT", "call 1 query [] tenant -"),
            "{name}"
        );
        // Kept parameters stay in the key and reach the handler, in their order.
        let (_, x, body) = send(&app, req_get("/search?q=tv&utm_medium=mail&page=2&gclid=1")).await;
        assert_eq!(x, "MISS", "{name}");
        assert_eq!(body, "call 2 query [q=tv&page=2] tenant -", "{name}");
        let (_, x, _) = send(&app, req_get("/search?page=2&q=tv")).await;
        assert_eq!(x, "HIT", "{name}");
        // Another name is another parameter: in the key, seen by the handler.
        let (_, x, body) = send(&app, req_get("/items/7?UTM_source=x")).await;
        assert_eq!(x, "MISS", "{name}");
        assert_eq!(body, "call 3 query [UTM_source=x] tenant -", "{name}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_keys_only_its_parameters_and_forwarding_is_opt_in() {
    let (_redis, stores) = stores().await;
    for (name, store) in stores {
        let cache = store
            .with(RedisCacheLayer::builder().prefix(format!("only-{name}")))
            .route("/search", CachePolicy::new().key_params(["q", "page"]))
            .route(
                "/items/{id}",
                CachePolicy::new()
                    .ignore_params(["ref"])
                    .forward_ignored_params(true),
            )
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app(cache.clone(), calls);
        let (_, x, body) = send(&app, req_get("/search?q=tv&debug=1&Q=x")).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("MISS", "call 1 query [q=tv] tenant -")
        );
        let (_, x, _) = send(&app, req_get("/search?q=tv&session=9")).await;
        assert_eq!(x, "HIT", "{name}");
        // Forwarded: the handler sees it, the key does not hold it.
        let (_, x, body) = send(&app, req_get("/items/1?ref=home")).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("MISS", "call 2 query [ref=home] tenant -")
        );
        let (_, x, _) = send(&app, req_get("/items/1")).await;
        assert_eq!(x, "HIT", "{name}");
        // The handle keys a URI as the layer does.
        let handle = cache.handle();
        let key = handle
            .key_for(&Method::GET, &Uri::from_static("/search?page=1&x=1&q=a"))
            .unwrap();
        assert_eq!(
            key,
            format!("only-{name}:v1:default:GET:/search?page=1&q=a")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_1_key_headers_give_each_value_its_entry_and_join_vary() {
    let (_redis, stores) = stores().await;
    for (name, store) in stores {
        let cache = store
            .with(RedisCacheLayer::builder().prefix(format!("hdr-{name}")))
            .default_policy(CachePolicy::new().key_headers([HeaderName::from_static("x-tenant")]))
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app(cache, calls.clone());
        let res = app
            .clone()
            .oneshot(with_tenant("/items/1", "acme"))
            .await
            .unwrap();
        assert_eq!(
            res.headers()["vary"],
            "x-tenant",
            "{name}: for caches downstream"
        );
        let (_, x, body) = read(res).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("MISS", "call 1 query [] tenant acme")
        );
        let (_, x, body) = send(&app, with_tenant("/items/1", "globex")).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("MISS", "call 2 query [] tenant globex")
        );
        let (_, x, body) = send(&app, req_get("/items/1")).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("MISS", "call 3 query [] tenant -")
        );
        let res = app
            .clone()
            .oneshot(with_tenant("/items/1", "acme"))
            .await
            .unwrap();
        assert_eq!(res.headers()["vary"], "x-tenant", "{name}: hits keep it");
        let (_, x, body) = read(res).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("HIT", "call 1 query [] tenant acme")
        );
        let (_, x, body) = send(&app, with_tenant("/items/1", "globex")).await;
        assert_eq!(
            (x.as_str(), body.as_str()),
            ("HIT", "call 2 query [] tenant globex")
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_1_a_response_that_varies_beyond_the_key_headers_keeps_its_variants() {
    let cache = RedisCacheLayer::builder()
        .default_policy(CachePolicy::new().key_headers([HeaderName::from_static("x-tenant")]))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new()
        .route(
            "/page",
            get(move |req: Request| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let lang = req.headers().get("accept-language").cloned();
                async move {
                    (
                        [("vary", "accept-language")],
                        format!("call {n} {:?}", lang),
                    )
                }
            }),
        )
        .layer(cache);
    let get = |tenant: &str, lang: &str| {
        let mut req = with_tenant("/page", tenant);
        req.headers_mut()
            .insert("accept-language", lang.parse().unwrap());
        req
    };
    assert_eq!(send(&app, get("a", "en")).await.1, "MISS");
    assert_eq!(send(&app, get("a", "fr")).await.1, "MISS");
    assert_eq!(send(&app, get("b", "en")).await.1, "MISS");
    let res = app.clone().oneshot(get("a", "en")).await.unwrap();
    let vary: Vec<_> = res.headers().get_all("vary").iter().collect();
    assert_eq!(vary, ["accept-language", "x-tenant"]);
    let (_, x, body) = read(res).await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "call 1 Some(\"en\")"));
    let (_, x, body) = send(&app, get("a", "fr")).await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "call 2 Some(\"fr\")"));
    assert_eq!(send(&app, get("b", "en")).await.2, "call 3 Some(\"en\")");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_function_separates_what_it_returns() {
    #[derive(Clone)]
    struct Plan(&'static str);
    let cache = RedisCacheLayer::builder()
        .default_policy(CachePolicy::new().key_fn(|parts| {
            parts
                .extensions
                .get::<Plan>()
                .map_or("anonymous", |p| p.0)
                .to_owned()
        }))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(cache, calls.clone());
    let with_plan = |plan: &'static str| {
        let mut req = req_get("/items/1");
        req.extensions_mut().insert(Plan(plan));
        req
    };
    assert_eq!(send(&app, with_plan("pro")).await.1, "MISS");
    assert_eq!(send(&app, with_plan("free")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/items/1")).await.1, "MISS");
    let (_, x, body) = send(&app, with_plan("pro")).await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("HIT", "call 1 query [] tenant -")
    );
    assert_eq!(
        send(&app, req_get("/items/1")).await.2,
        "call 3 query [] tenant -"
    );
}

/// A layer keyed by host and tenant, ignoring `utm_*`: every way to
/// invalidate a page finds all of its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_path_finds_every_host_tenant_and_shaped_query() {
    let (_redis, stores) = stores().await;
    for (name, store) in stores {
        let cache = store
            .with(RedisCacheLayer::builder().prefix(format!("inv-{name}")))
            .key_host(true)
            .route(
                "/items/{id}",
                CachePolicy::new()
                    .namespace("items")
                    .ignore_params(["utm_*"])
                    .key_headers([HeaderName::from_static("x-tenant")]),
            )
            .build()
            .unwrap();
        let handle = cache.handle();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app(cache, calls);
        let on = |host: &str, tenant: &str, uri: &str| {
            let mut req = with_tenant(uri, tenant);
            req.headers_mut().insert("host", host.parse().unwrap());
            req
        };
        let fill = || async {
            for host in ["a.example", "b.example"] {
                for tenant in ["acme", "globex"] {
                    let (_, x, _) = send(&app, on(host, tenant, "/items/7?utm_source=x")).await;
                    assert_ne!(x, "BYPASS", "{name}");
                    let (_, x, _) = send(&app, on(host, tenant, "/items/7")).await;
                    assert_eq!(x, "HIT", "{name}");
                }
            }
            let (_, x, _) = send(&app, on("a.example", "acme", "/items/8")).await;
            assert_ne!(x, "BYPASS", "{name}");
        };
        let all_missed = || async {
            for host in ["a.example", "b.example"] {
                for tenant in ["acme", "globex"] {
                    let (_, x, _) = send(&app, on(host, tenant, "/items/7")).await;
                    assert_eq!(x, "MISS", "{name}: {host} {tenant}");
                }
            }
            // Another page is left alone.
            let (_, x, _) = send(&app, on("a.example", "acme", "/items/8")).await;
            assert_eq!(x, "HIT", "{name}");
        };

        fill().await;
        // The ignored parameter does not count: the same page.
        let done = handle
            .invalidate_path("/items/7?utm_campaign=z")
            .await
            .unwrap();
        assert!(!done.queued, "{name}");
        assert_eq!(done.removed, 4, "{name}: two hosts, two tenants");
        all_missed().await;

        fill().await;
        // A relative URI with the host keyed: every host's entries.
        let done = handle
            .invalidate(&Method::HEAD, &Uri::from_static("/items/7"))
            .await
            .unwrap();
        assert_eq!(done.removed, 4, "{name}");
        all_missed().await;

        fill().await;
        // An absolute one: that host's only.
        let done = handle
            .invalidate(&Method::GET, &Uri::from_static("http://b.example/items/7"))
            .await
            .unwrap();
        assert_eq!(done.removed, 2, "{name}");
        let (_, x, _) = send(&app, on("a.example", "globex", "/items/7")).await;
        assert_eq!(x, "HIT", "{name}");
        let (_, x, _) = send(&app, on("b.example", "globex", "/items/7")).await;
        assert_eq!(x, "MISS", "{name}");

        fill().await;
        let done = handle.invalidate_prefix("/items/").await.unwrap();
        assert_eq!(
            done.removed, 5,
            "{name}: /items/7 four times, /items/8 once"
        );
        let (_, x, _) = send(&app, on("b.example", "acme", "/items/7")).await;
        assert_eq!(x, "MISS", "{name}");
    }
}

#[tokio::test]
async fn invalidate_path_is_one_delete_when_the_key_names_one_entry() {
    let cache = RedisCacheLayer::builder().build().unwrap();
    let handle = cache.handle();
    let app = app(cache, Arc::default());
    assert_eq!(send(&app, req_get("/search?b=2&a=1")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/search?a=1&b=2")).await.1, "HIT");
    let done = handle.invalidate_path("/search?a=%31&b=2").await.unwrap();
    assert_eq!(done.removed, 1);
    assert_eq!(send(&app, req_get("/search?a=1&b=2")).await.1, "MISS");
    // The default key format is as it was.
    assert_eq!(
        handle.key_for(&Method::HEAD, &Uri::from_static("/search?b=2&a=1")),
        Some("cache:v1:default:GET:/search?a=1&b=2".to_owned())
    );
}

#[tokio::test]
async fn methods_without_entries_and_bad_paths_are_refused() {
    let cache = RedisCacheLayer::builder().build().unwrap();
    let handle: CacheHandle = cache.handle();
    let uri = Uri::from_static("/items/7");
    assert_eq!(handle.key_for(&Method::POST, &uri), None);
    let e = handle.invalidate(&Method::POST, &uri).await.unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(e.to_string().contains("only GET and HEAD"), "{e}");
    for bad in [
        "items/7",
        "",
        "http://a.example/items/7",
        "/items/7#top",
        "/a b",
    ] {
        let e = handle.invalidate_path(bad).await.unwrap_err();
        assert!(e.to_string().contains("is not a path"), "{bad:?}: {e}");
    }
}

#[tokio::test]
async fn bad_key_settings_fail_at_build_with_what_to_fix() {
    let e = RedisCacheLayer::builder()
        .route(
            "/p",
            CachePolicy::new()
                .ignore_params(["utm_*"])
                .key_params(["q"]),
        )
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("route \"/p\"") && e.contains("not both"), "{e}");
    let e = RedisCacheLayer::builder()
        .default_policy(CachePolicy::new().ignore_params(["*utm"]))
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"*utm\"") && e.contains("ending in '*'"), "{e}");
}

/// A handler that answers with its name and a call count.
fn named(name: &'static str, calls: Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    get(move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move { format!("{name} {n}") }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_written_once_carries_its_policy_and_shares_the_cache() {
    use tower_redis_cache::CacheRouterExt;
    let (_redis, stores) = stores().await;
    for (name, store) in stores {
        let prefix = format!("own-{name}");
        let cache = store
            .with(RedisCacheLayer::builder().prefix(prefix.clone()))
            .bypass_unmatched(true)
            .build()
            .unwrap();
        let handle = cache.handle();
        let calls = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .cached_route(
                "/items/{id}",
                named("item", calls.clone()),
                &cache,
                CachePolicy::new()
                    .namespace("items")
                    .ignore_params(["utm_*"]),
            )
            .unwrap()
            .route("/other", named("other", calls.clone()))
            // The layer around every route steps aside for the one above.
            .layer(cache.clone());
        let (_, x, body) = send(&app, req_get("/items/1?utm_source=x")).await;
        assert_eq!((x.as_str(), body.as_str()), ("MISS", "item 1"), "{name}");
        let (_, x, body) = send(&app, req_get("/items/1")).await;
        assert_eq!((x.as_str(), body.as_str()), ("HIT", "item 1"), "{name}");
        let (_, x, _) = send(&app, req_get("/other")).await;
        assert_eq!(x, "BYPASS", "{name}: unmatched routes pass");
        // One set of counters, each request counted once.
        let stats = handle.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.bypasses),
            (1, 1, 1),
            "{name}"
        );
        // The handle knows the route's policy from its one pattern.
        assert_eq!(
            handle.key_for(&Method::GET, &Uri::from_static("/items/1?utm_medium=y")),
            Some(format!("{prefix}:v1:items:GET:/items/1"))
        );
        let done = handle
            .invalidate_path("/items/1?utm_campaign=z")
            .await
            .unwrap();
        assert_eq!(done.removed, 1, "{name}: one entry, not one per layer");
        let (_, x, body) = send(&app, req_get("/items/1")).await;
        assert_eq!((x.as_str(), body.as_str()), ("MISS", "item 3"), "{name}");
    }
}

#[tokio::test]
async fn a_route_written_once_without_the_outer_layer_is_cached_too() {
    use tower_redis_cache::CacheRouterExt;
    let cache = RedisCacheLayer::builder().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .cached_route(
            "/items/{id}",
            named("item", calls.clone()),
            &cache,
            CachePolicy::new(),
        )
        .unwrap()
        .route("/other", named("other", calls));
    assert_eq!(send(&app, req_get("/items/1")).await.1, "MISS");
    assert_eq!(send(&app, req_get("/items/1")).await.1, "HIT");
    assert_eq!(
        send(&app, req_get("/other")).await.1,
        "",
        "not behind the cache"
    );
}

#[tokio::test]
async fn a_route_written_once_refuses_what_build_refuses() {
    use std::time::Duration;
    use tower_redis_cache::CacheRouterExt;
    let cache = RedisCacheLayer::builder()
        .route("/taken/{id}", CachePolicy::new())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let add = |path: &str, policy: CachePolicy| {
        Router::new()
            .cached_route(path, named("x", calls.clone()), &cache, policy)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = add("/items/:id", CachePolicy::new());
    assert!(e.contains("write {id} instead"), "{e}");
    let e = add("/items/{id", CachePolicy::new());
    assert!(e.contains("unbalanced braces"), "{e}");
    let e = add("/taken/{id}", CachePolicy::new());
    assert!(e.contains("given twice"), "{e}");
    let e = add("/ok/{id}", CachePolicy::new().ttl(Duration::ZERO));
    assert!(e.contains("route \"/ok/{id}\": TTL is zero"), "{e}");
}

/// An axum router for `shop.example` and a plain service for
/// `admin.example` behind clones of one layer: without the host in the key
/// they read each other's entries; `key_host(true)`, or a layer per service
/// with its own prefix on one store, keeps them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_two_hosts_sharing_a_layer_need_the_host_in_the_key() {
    use axum::body::Body;
    use tower::ServiceBuilder;
    let redis = RedisServer::start();
    let store = redis.store().await;
    let on = |host: &str| {
        let mut req = req_get("/status");
        req.headers_mut().insert("host", host.parse().unwrap());
        req
    };
    let pair = |shop: RedisCacheLayer, admin: RedisCacheLayer| {
        let router = Router::new()
            .route("/status", get(|| async { "shop page" }))
            .layer(shop);
        let service = ServiceBuilder::new()
            .layer(admin)
            .service_fn(|_: Request| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("admin page")))
            });
        (router, service)
    };
    for (what, shop, admin) in [
        (
            "one layer",
            RedisCacheLayer::builder()
                .prefix("one")
                .store(store.clone()),
            None,
        ),
        (
            "one layer, key_host",
            RedisCacheLayer::builder()
                .prefix("host")
                .store(store.clone())
                .key_host(true),
            None,
        ),
        (
            "a prefix per service",
            RedisCacheLayer::builder()
                .prefix("shop")
                .store(store.clone()),
            Some(
                RedisCacheLayer::builder()
                    .prefix("admin")
                    .store(store.clone()),
            ),
        ),
    ] {
        let shop = shop.build().unwrap();
        let admin = admin.map_or_else(|| shop.clone(), |b| b.build().unwrap());
        let (router, service) = pair(shop, admin);
        let (_, x, body) = send(&router, on("shop.example")).await;
        assert_eq!((x.as_str(), body.as_str()), ("MISS", "shop page"), "{what}");
        let (_, x, body) = read(service.oneshot(on("admin.example")).await.unwrap()).await;
        if what == "one layer" {
            // The hazard docs/configuration.md warns of.
            assert_eq!((x.as_str(), body.as_str()), ("HIT", "shop page"), "{what}");
        } else {
            assert_eq!(
                (x.as_str(), body.as_str()),
                ("MISS", "admin page"),
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn rfc9111_4_4_an_unsafe_request_removes_every_tenants_entry_of_its_target() {
    let cache = RedisCacheLayer::builder()
        .default_policy(
            CachePolicy::new()
                .invalidate_on_unsafe(true)
                .ignore_params(["utm_*"])
                .key_headers([HeaderName::from_static("x-tenant")]),
        )
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/items/{id}",
        get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { format!("item {n}") }
        })
        .post(|| async { "updated" }),
    );
    let app = app.layer(cache);
    for tenant in ["acme", "globex"] {
        assert_eq!(send(&app, with_tenant("/items/7", tenant)).await.1, "MISS");
        assert_eq!(send(&app, with_tenant("/items/7", tenant)).await.1, "HIT");
    }
    let mut post = with_tenant("/items/7?utm_source=x", "acme");
    *post.method_mut() = Method::POST;
    assert_eq!(send(&app, post).await.0, 200);
    for tenant in ["acme", "globex"] {
        assert_eq!(
            send(&app, with_tenant("/items/7", tenant)).await.1,
            "MISS",
            "{tenant}"
        );
    }
}
