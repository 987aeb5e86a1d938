//! Test support: a private `redis-server` on a free loopback port, started per
//! test and killed on drop. Never touches a Redis the tests did not start.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower_redis_cache::{
    fred::prelude::{Builder, Client, ClientLike, Config},
    store::RedisStore,
};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl RedisServer {
    /// Starts `redis-server` from PATH on a free port and waits until it answers.
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "tower-redis-cache-test-{port}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH; the integration tests start their own Redis. \
                 Install it (Debian/Ubuntu: `apt-get install redis-server`, macOS: \
                 `brew install redis`) or run `bash .ci/run`, which installs it."
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A store connected to this server, with short timeouts for tests.
    pub async fn store(&self) -> RedisStore {
        RedisStore::builder(self.url())
            .pool_size(2)
            .connect()
            .await
            .expect("connect to the test Redis")
    }

    /// A plain fred client, for looking at what the cache wrote.
    pub async fn client(&self) -> Client {
        let client = Builder::from_config(Config::from_url(&self.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.expect("connect test client");
        client
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every key in the server, sorted (test servers hold a handful).
pub async fn keys(client: &Client) -> Vec<String> {
    use tower_redis_cache::fred::{prelude::ClientLike as _, types::CustomCommand};
    let mut keys: Vec<String> = client
        .custom(CustomCommand::new_static("KEYS", None, false), vec!["*"])
        .await
        .unwrap();
    keys.sort();
    keys
}

/// A response's status, `x-cache`, and body as text.
pub async fn read<B>(res: Response<B>) -> (u16, String, String)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let status = res.status().as_u16();
    let x_cache = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, x_cache, String::from_utf8_lossy(&body).into_owned())
}

pub fn req_get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub fn request(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

/// Sends `req` through a clone of `app` and reads the answer.
pub async fn send(app: &axum::Router, req: Request<Body>) -> (u16, String, String) {
    use tower::ServiceExt;
    read(app.clone().oneshot(req).await.unwrap()).await
}
