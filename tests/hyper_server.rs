//! The layer in front of a plain hyper 1 service, over real sockets.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use support::{reply, Origin, RedisServer};
use tower::Layer;
use tower_redis_cache::RedisCacheLayer;

async fn a_hyper_server_behind_the_layer(redis: RedisServer) {
    let origin = Origin::new(|req, n| reply(&[], format!("{} call {n}", req.uri())));
    let cache = RedisCacheLayer::builder()
        .store(redis.store().await)
        .build()
        .unwrap();
    let service = cache.layer(origin.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut seen = Vec::new();
    for method in ["GET", "GET", "POST"] {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}/a?y=2&x=1"))
            .body(Empty::new())
            .unwrap();
        let res = client.request(req).await.unwrap();
        let x = res.headers()["x-cache"].to_str().unwrap().to_owned();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        seen.push((x, String::from_utf8(body.to_vec()).unwrap()));
    }
    assert_eq!(
        seen,
        [
            ("MISS".into(), "/a?y=2&x=1 call 1".into()),
            ("HIT".into(), "/a?y=2&x=1 call 1".into()),
            ("BYPASS".into(), "/a?y=2&x=1 call 2".into()),
        ]
    );
    assert_eq!(origin.calls(), 2);
}

on_both_topologies!(a_hyper_server_behind_the_layer,);
