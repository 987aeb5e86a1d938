//! The one origin of the tests: a tower service that answers each request
//! from a script, counts its calls, keeps what it received, and can be made
//! slow, failing, or held at a chosen call. As a service it sits behind a
//! layer directly, as [`Origin::router`] behind an axum `Router`, and with
//! [`Origin::serve`] on a loopback socket.

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

/// How the origin answers: the request (its body read whole) and the call's
/// number, from 1.
pub type Script = dyn Fn(&Request<Bytes>, usize) -> Response<Body> + Send + Sync;

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The test origin. Clones share their calls, what was seen, and switches.
/// It answers `HEAD` as `GET` without the body.
#[derive(Clone)]
pub struct Origin {
    script: Arc<Script>,
    headers: Vec<(&'static str, &'static str)>,
    delay: Duration,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    failing: Arc<AtomicBool>,
    holds: Arc<Mutex<VecDeque<Held>>>,
}

/// A hold waiting for its call.
struct Held {
    /// Before the answer is computed (else after).
    first: bool,
    entered: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

impl Held {
    async fn wait(self) {
        let _ = self.entered.send(());
        let _ = self.release.await;
    }
}

/// A call held by [`Origin::hold_next`] or [`Origin::stall_next`] until
/// it is released.
pub struct Hold {
    entered: Option<oneshot::Receiver<()>>,
    release: oneshot::Sender<()>,
}

impl Hold {
    /// Waits until the held call is held.
    pub async fn entered(&mut self) {
        if let Some(entered) = self.entered.take() {
            tokio::time::timeout(Duration::from_secs(5), entered)
                .await
                .expect("a call reaches the origin")
                .expect("the origin is alive");
        }
    }

    /// Lets the held call answer.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

impl Origin {
    /// An origin that answers with `script`.
    pub fn new(
        script: impl Fn(&Request<Bytes>, usize) -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        Self {
            script: Arc::new(script),
            headers: Vec::new(),
            delay: Duration::ZERO,
            calls: Arc::default(),
            seen: Arc::default(),
            failing: Arc::default(),
            holds: Arc::default(),
        }
    }

    /// A small catalogue:
    /// - `/items/{id}`: `item {id} v{call}` (any method), `text/plain`;
    /// - `/status/{code}`: that status, `status {code} v{call}`;
    /// - `/cookie`: a `set-cookie`, `cookie v{call}`;
    /// - `/big`: 100 000 bytes;
    /// - anything else: 404 `missing`.
    pub fn items() -> Self {
        Self::new(|req, n| {
            let path = req.uri().path();
            if let Some(id) = path.strip_prefix("/items/") {
                reply(
                    &[("content-type", "text/plain; charset=utf-8")],
                    format!("item {id} v{n}"),
                )
            } else if let Some(code) = path.strip_prefix("/status/") {
                status(code.parse().unwrap(), &[], format!("status {code} v{n}"))
            } else if path == "/cookie" {
                reply(&[("set-cookie", "session=secret")], format!("cookie v{n}"))
            } else if path == "/big" {
                reply(&[], vec![b'x'; 100_000])
            } else {
                status(404, &[], "missing")
            }
        })
    }

    /// Any path: `{path} v{call}`, and `/items/{id}` tagged `item:{id}`.
    pub fn tagged_items() -> Self {
        Self::new(|req, n| {
            let path = req.uri().path();
            let body = format!("{path} v{n}");
            match path.strip_prefix("/items/") {
                Some(id) => reply(&[("cache-tag", format!("item:{id}").as_str())], body),
                None => reply(&[], body),
            }
        })
    }

    /// Answers every request with what it read: `host={host}
    /// lang={accept-language} override={x-http-method-override}
    /// query={query} body=[{body}] call={call}` (`-` for a missing field).
    pub fn reflecting() -> Self {
        Self::new(|req, n| {
            let field = |name| {
                req.headers()
                    .get(name)
                    .map_or("-", |v: &http::HeaderValue| v.to_str().unwrap())
            };
            reply(
                &[],
                format!(
                    "host={} lang={} override={} query={} body=[{}] call={n}",
                    field("host"),
                    field("accept-language"),
                    field("x-http-method-override"),
                    req.uri().query().unwrap_or_default(),
                    String::from_utf8_lossy(req.body()),
                ),
            )
        })
    }

    /// Every answer also carries `name: value`.
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Every call waits `delay` before it answers.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// While `failing`, every call answers 503 `origin down` instead.
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, SeqCst);
    }

    /// Holds the next call not yet held once it has computed its answer
    /// (read its data), until the returned [`Hold`] is released or dropped.
    pub fn hold_next(&self) -> Hold {
        self.hold(false)
    }

    /// Holds the next call not yet held before it computes its answer, until
    /// the returned [`Hold`] is released or dropped.
    pub fn stall_next(&self) -> Hold {
        self.hold(true)
    }

    fn hold(&self, first: bool) -> Hold {
        let (entered_tx, entered) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        self.holds.lock().unwrap().push_back(Held {
            first,
            entered: entered_tx,
            release: release_rx,
        });
        Hold {
            entered: Some(entered),
            release,
        }
    }

    /// How many requests reached the origin.
    pub fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    /// The requests the origin received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The headers of the last request the origin received.
    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .map(|s| s.headers.clone())
            .unwrap_or_default()
    }

    /// The origin as an axum `Router` (every path goes to it).
    pub fn router(&self) -> axum::Router {
        axum::Router::new().fallback_service(self.clone())
    }

    /// Serves the origin over HTTP/1 and HTTP/2 on a free loopback port.
    pub async fn serve(&self) -> SocketAddr {
        use hyper_util::{
            rt::{TokioExecutor, TokioIo},
            server::conn::auto,
            service::TowerToHyperService,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = TowerToHyperService::new(origin.clone());
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }
}

impl<B> tower::Service<Request<B>> for Origin
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        let hold = self.holds.lock().unwrap().pop_front();
        let origin = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("a request body").to_bytes();
            let req = Request::from_parts(parts, body);
            origin.seen.lock().unwrap().push(Seen {
                method: req.method().clone(),
                target: req
                    .uri()
                    .path_and_query()
                    .map_or("", |p| p.as_str())
                    .to_owned(),
                headers: req.headers().clone(),
                body: req.body().clone(),
            });
            let hold = match hold {
                Some(held) if held.first => {
                    held.wait().await;
                    None
                }
                hold => hold,
            };
            let mut res = if origin.failing.load(SeqCst) {
                status(503, &[], "origin down")
            } else {
                (origin.script)(&req, n)
            };
            // As an HTTP server does: the fields of a GET, no body.
            if req.method() == Method::HEAD {
                *res.body_mut() = Body::empty();
            }
            for (name, value) in &origin.headers {
                res.headers_mut()
                    .insert(*name, http::HeaderValue::from_static(value));
            }
            if let Some(held) = hold {
                held.wait().await;
            }
            if !origin.delay.is_zero() {
                tokio::time::sleep(origin.delay).await;
            }
            Ok(res)
        })
    }
}

/// A 200 with `headers` and `body`.
pub fn reply(headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    status(200, headers, body)
}

/// A response with status `code`, `headers` and `body`.
pub fn status(code: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut b = Response::builder().status(code);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Body::from(body.into())).unwrap()
}
