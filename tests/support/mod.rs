//! Test support: private `redis-server` processes (one, or a 3-master
//! cluster) on free loopback ports, started per test and killed on drop,
//! and the origin every test puts behind the layer ([`Origin`]).
//! Never touches a Redis the tests did not start.
#![allow(dead_code)]

mod origin;

// Each test binary uses a part.
#[allow(unused_imports)]
pub use origin::{reply, status, Hold, Origin, Seen};

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

/// One `redis-server` process.
struct Node {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    cluster: bool,
    /// A sentinel (`redis-server --sentinel`) watching the master on this
    /// port as `mymaster`.
    sentinel_of: Option<u16>,
}

/// A standalone Redis or a 3-master Redis Cluster, started for one test on
/// free loopback ports and torn down on drop.
pub struct RedisServer {
    nodes: Vec<Node>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl Node {
    fn start(cluster: bool) -> Self {
        Self::start_as(cluster, None)
    }

    fn start_as(cluster: bool, sentinel_of: Option<u16>) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "tower-redis-cache-test-{port}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut node = Self {
            child: None,
            port,
            dir,
            cluster,
            sentinel_of,
        };
        // A port found free can be taken before redis-server binds it (by
        // an outgoing connection's ephemeral port, or another test): then
        // the server exits at once, and the next free port is tried.
        for _ in 0..5 {
            if node.spawn() {
                return node;
            }
            node.port = free_port();
        }
        panic!("redis-server could not bind a free loopback port in 5 tries");
    }

    /// Starts redis-server on `self.port` and waits until it answers.
    /// `false` when it exited first (the port was taken).
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        if let Some(master) = self.sentinel_of {
            // A sentinel rewrites its configuration file: one of its own.
            let conf = self.dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor mymaster 127.0.0.1 {master} 1\n\
                     sentinel down-after-milliseconds mymaster 2000\n\
                     sentinel failover-timeout mymaster 5000\n"
                ),
            )
            .expect("sentinel.conf");
            command.arg(conf).arg("--sentinel");
        }
        command
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
            .stderr(Stdio::null());
        if self.cluster {
            let _ = std::fs::remove_file(self.dir.join("nodes.conf"));
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
            command.args(["--cluster-node-timeout", "2000"]);
        }
        let child = match command.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH; the integration tests start their own Redis. \
                 Install it (Debian/Ubuntu: `apt-get install redis-server`, macOS: \
                 `brew install redis`) or run `./scripts/test`, which installs it."
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return false;
                }
            }
            // Ours, not another server that holds the port.
            if self
                .command("INFO server")
                .contains(&format!("process_id:{pid}\r"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// Sends one inline command and returns the raw reply ("" on failure).
    fn command(&self, command: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(format!("{command}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Starts a standalone `redis-server` from PATH on a free port and waits
    /// until it answers.
    pub fn start() -> Self {
        Self {
            nodes: vec![Node::start(false)],
        }
    }

    /// Starts a 3-master Redis Cluster (no replicas) with
    /// `redis-cli --cluster create` and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start_cluster() -> Self {
        let nodes: Vec<Node> = (0..3).map(|_| Node::start(true)).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (it comes with redis-server) is needed to create the test cluster");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the test cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { nodes }
    }

    /// Starts the given topology.
    pub fn start_topology(cluster: bool) -> Self {
        if cluster {
            Self::start_cluster()
        } else {
            Self::start()
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    pub fn port(&self) -> u16 {
        self.nodes[0].port
    }

    pub fn url(&self) -> String {
        if self.is_cluster() {
            let others: Vec<String> = self.nodes[1..]
                .iter()
                .map(|n| format!("node=127.0.0.1:{}", n.port))
                .collect();
            format!(
                "redis-cluster://127.0.0.1:{}?{}",
                self.port(),
                others.join("&")
            )
        } else {
            format!("redis://127.0.0.1:{}", self.port())
        }
    }

    /// Kills the (standalone) server with SIGKILL and waits for it to exit.
    pub fn stop(&mut self) {
        assert!(
            !self.is_cluster(),
            "stop/restart are for the standalone server"
        );
        self.nodes[0].stop();
    }

    /// Starts the standalone server again on the same port (empty).
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.nodes[0].spawn(),
            "redis-server could not bind port {} again",
            self.nodes[0].port
        );
    }

    /// A store connected to this server. The connection gets 10 s: test
    /// binaries start many servers at once, and on a loaded machine the
    /// default 2 s has run out.
    pub async fn store(&self) -> RedisStore {
        RedisStore::builder(self.url())
            .pool_size(2)
            .connect_timeout(Duration::from_secs(10))
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

/// The ids of the test Redis's connections that have tracking on (flag `t`
/// in `CLIENT LIST`).
pub async fn tracking_clients(client: &Client) -> Vec<String> {
    use tower_redis_cache::fred::types::CustomCommand;
    let list: String = client
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["LIST"],
        )
        .await
        .unwrap();
    list.lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// Every key in the server (every node of a cluster), sorted.
pub async fn keys(client: &Client) -> Vec<String> {
    use futures_util::TryStreamExt;
    let found: Vec<_> = if client.is_clustered() {
        client
            .scan_cluster_buffered("*", Some(1000), None)
            .try_collect()
            .await
    } else {
        client
            .scan_buffered("*", Some(1000), None)
            .try_collect()
            .await
    }
    .unwrap();
    // Per-key locks live for the moment of a miss; they are not entries.
    let mut keys: Vec<String> = found
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .filter(|k| !k.contains(":LOCK:"))
        .collect();
    keys.sort();
    keys
}

/// Runs each named `async fn(RedisServer)` against a standalone Redis and
/// against a 3-master Redis Cluster, as two tests in modules `standalone` and
/// `cluster`.
#[macro_export]
macro_rules! on_both_topologies {
    ($($name:ident),* $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::RedisServer::start_topology(false)).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::RedisServer::start_topology(true)).await
                }
            )*
        }
    };
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

/// A body that yields `first ` at once and `second` only once `gate` fires:
/// a layer that buffered it before answering would never finish.
pub fn gated_body(
    gate: tokio::sync::oneshot::Receiver<()>,
) -> impl http_body::Body<Data = bytes::Bytes, Error = std::convert::Infallible> + Send + 'static {
    use bytes::Bytes;
    use http_body::Frame;
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from("first ")))).await;
        let _ = gate.await;
        let _ = tx.send(Ok(Frame::data(Bytes::from("second")))).await;
    });
    http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Reads a [`gated_body`] as a client would: the first chunk must arrive
/// while the origin is still holding the rest back; then `open` lets the
/// rest come.
pub async fn assert_streams<B>(body: B, open: tokio::sync::oneshot::Sender<()>)
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut body = body;
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk arrives before the origin finishes")
        .expect("a frame")
        .expect("a chunk");
    assert_eq!(first.into_data().expect("data"), "first ");
    open.send(()).expect("the origin waits");
    let rest = body.collect().await.expect("the rest").to_bytes();
    assert_eq!(rest, "second");
}

impl RedisServer {
    /// Sends one inline command (say `CONFIG SET maxmemory 100mb`) to node
    /// `node` (0 for a standalone server) and returns its raw reply.
    pub fn node_command(&self, node: usize, command: &str) -> String {
        self.nodes[node].command(command)
    }
}

/// A TCP relay on a free loopback port in front of a Redis port, to cut and
/// heal the network between a layer and Redis while both keep running.
/// `cut()` closes every open connection and closes new ones at once (the
/// client sees them refused); `heal()` lets connections through again.
pub struct Relay {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Self {
        use std::sync::{atomic::Ordering::SeqCst, Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port for the relay");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let (cut, open) = (cut.clone(), open.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if cut.load(SeqCst) {
                        drop(client);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        let Ok(mut server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                        else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    let mut open = open.lock().unwrap();
                    open.retain(|t| !t.is_finished());
                    open.push(task.abort_handle());
                }
            })
        };
        Self {
            port,
            cut,
            open,
            accept,
        }
    }

    /// `redis://` URL of the relay.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every open connection; new ones are closed as they come.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Cluster changes for the topology tests: nodes added, slots moved,
/// replicas promoted, all through the same commands an operator would use.
impl RedisServer {
    /// Sends one inline command to node `node` and reads the whole reply (a
    /// bulk string of any length, or a short reply).
    pub fn node_command_full(&self, node: usize, command: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.nodes[node].port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(2000)));
        if s.write_all(format!("{command}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut reply = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            let n = s.read(&mut buf).unwrap_or(0);
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || reply_complete(&reply) {
                break;
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// The cluster id of node `node`.
    pub fn node_id(&self, node: usize) -> String {
        let reply = self.node_command_full(node, "CLUSTER MYID");
        let id = reply.lines().nth(1).unwrap_or("").trim().to_owned();
        assert_eq!(id.len(), 40, "CLUSTER MYID answered {reply:?}");
        id
    }

    /// The node that serves `slot` as primary, as node `seen_by` sees it.
    pub fn slot_owner_seen_by(&self, slot: u16, seen_by: usize) -> Option<usize> {
        let nodes = self.node_command_full(seen_by, "CLUSTER NODES");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                if range.starts_with('[') {
                    return false;
                }
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                match (start.trim().parse::<u16>(), end.trim().parse::<u16>()) {
                    (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                    _ => false,
                }
            });
            if owns {
                let port: u16 = fields[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())?;
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// The node that serves `slot` as primary (as node 0 sees it).
    pub fn slot_owner(&self, slot: u16) -> usize {
        self.slot_owner_seen_by(slot, 0)
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// Waits until every live node knows every other and reports
    /// `cluster_state:ok`.
    fn wait_cluster_settled(&self, what: &str) {
        let ids: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .map(|i| self.node_id(i))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let settled = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].child.is_some())
                .all(|i| {
                    let nodes = self.node_command_full(i, "CLUSTER NODES");
                    self.nodes[i]
                        .command("CLUSTER INFO")
                        .contains("cluster_state:ok")
                        && ids.iter().all(|id| nodes.contains(id.as_str()))
                });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn add_node(&mut self, replica_of: Option<usize>) -> usize {
        let node = Node::start(true);
        let new = format!("127.0.0.1:{}", node.port);
        let existing = format!("127.0.0.1:{}", self.nodes[0].port);
        let mut command = Command::new("redis-cli");
        command.args(["--cluster", "add-node", &new, &existing]);
        if let Some(master) = replica_of {
            let id = self.node_id(master);
            command.args(["--cluster-slave", "--cluster-master-id", &id]);
        }
        let output = command.output().expect("redis-cli");
        assert!(
            output.status.success(),
            "redis-cli --cluster add-node failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        self.wait_cluster_settled("after add-node");
        index
    }

    /// Adds an empty master to the cluster (`redis-cli --cluster add-node`)
    /// and returns its index once every node knows it.
    pub fn add_master(&mut self) -> usize {
        self.add_node(None)
    }

    /// Adds a replica of `master` and returns its index once it has synced.
    pub fn add_replica(&mut self, master: usize) -> usize {
        // The first sync would otherwise wait 5 s for more replicas.
        let reply = self.node_command(master, "CONFIG SET repl-diskless-sync-delay 0");
        assert!(reply.starts_with("+OK"), "{reply}");
        let replica = self.add_node(Some(master));
        // Synced, and known as the master's replica by every node (which a
        // manual failover needs for the other masters' votes).
        let (id, master_id) = (self.node_id(replica), self.node_id(master));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(self
            .node_command_full(replica, "INFO replication")
            .contains("master_link_status:up")
            && (0..self.nodes.len()).all(|i| {
                self.node_command_full(i, "CLUSTER NODES").lines().any(|l| {
                    l.starts_with(id.as_str()) && l.contains("slave") && l.contains(&master_id)
                })
            }))
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    /// Moves `slot` and its keys to node `to`, with the steps of
    /// `redis-cli --cluster reshard` (`SETSLOT IMPORTING`/`MIGRATING`,
    /// `MIGRATE`, `SETSLOT NODE` on every master), and waits until every
    /// node agrees.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.slot_owner(slot);
        if from == to {
            return;
        }
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let ok = |node: usize, command: String| {
            let reply = self.node_command_full(node, &command);
            assert!(reply.starts_with("+OK"), "{command}: {reply:?}");
        };
        ok(to, format!("CLUSTER SETSLOT {slot} IMPORTING {from_id}"));
        ok(from, format!("CLUSTER SETSLOT {slot} MIGRATING {to_id}"));
        loop {
            let reply = self.node_command_full(from, &format!("CLUSTER GETKEYSINSLOT {slot} 100"));
            let keys: Vec<&str> = reply
                .split("\r\n")
                .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
                .collect();
            if keys.is_empty() {
                break;
            }
            ok(
                from,
                format!(
                    "MIGRATE 127.0.0.1 {} \"\" 0 5000 KEYS {}",
                    self.nodes[to].port,
                    keys.join(" ")
                ),
            );
        }
        let masters: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != to && i != from)
            .filter(|&i| self.nodes[i].command("ROLE").contains("master"))
            .collect();
        for node in [to, from].into_iter().chain(masters) {
            ok(node, format!("CLUSTER SETSLOT {slot} NODE {to_id}"));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(0..self.nodes.len()).all(|i| self.slot_owner_seen_by(slot, i) == Some(to)) {
            assert!(
                Instant::now() < deadline,
                "slot {slot} never settled on node {to}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Promotes replica `replica` with `CLUSTER FAILOVER` and waits until
    /// every node sees it as a master and the cluster is ok.
    pub fn failover(&self, replica: usize) {
        let id = self.node_id(replica);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut asked: Option<Instant> = None;
        loop {
            // A manual failover that did not complete (it times out after
            // 5 s) is asked again.
            if asked.is_none_or(|at| at.elapsed() > Duration::from_secs(6)) {
                let reply = self.node_command_full(replica, "CLUSTER FAILOVER");
                assert!(reply.starts_with("+OK"), "CLUSTER FAILOVER: {reply:?}");
                asked = Some(Instant::now());
            }
            let promoted = (0..self.nodes.len()).all(|i| {
                self.node_command_full(i, "CLUSTER NODES")
                    .lines()
                    .any(|l| l.starts_with(id.as_str()) && l.contains("master"))
            });
            if promoted {
                break;
            }
            assert!(Instant::now() < deadline, "the replica was never promoted");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_cluster_settled("after failover");
    }

    /// The number of connections of node `node` that have tracking on.
    pub fn tracking_connections(&self, node: usize) -> usize {
        self.node_command_full(node, "CLIENT LIST")
            .lines()
            .filter(|l| {
                l.split(' ')
                    .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
            })
            .count()
    }

    /// How many times node `node` ran `command` (`INFO commandstats`).
    pub fn command_calls(&self, node: usize, command: &str) -> u64 {
        self.node_command_full(node, "INFO commandstats")
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Whether `reply` holds a whole RESP reply: a bulk string of its stated
/// length, or any other reply up to its first line's end (arrays are read
/// whole only when short enough for one read).
fn reply_complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply.first() != Some(&b'$') {
        return true;
    }
    match std::str::from_utf8(&reply[1..end])
        .ok()
        .and_then(|n| n.parse::<i64>().ok())
    {
        Some(len) if len >= 0 => reply.len() >= end + 2 + len as usize + 2,
        _ => true,
    }
}

impl RedisServer {
    /// Cuts primary `node` off from its replicas, as a partition would: it
    /// refuses their `PSYNC` from now on and drops their links, so they stay
    /// up and reachable to clients but no longer receive its writes.
    pub fn cut_off_replicas(&self, node: usize) {
        let reply = self.node_command_full(node, "ACL SETUSER default -psync -sync -replconf");
        assert!(reply.starts_with("+OK"), "{reply}");
        let reply = self.node_command_full(node, "CLIENT KILL TYPE replica");
        assert!(reply.starts_with(':'), "{reply}");
    }
}

/// A cluster whose clients all go through relays: every node announces the
/// port of a relay in front of it (`cluster-announce-port`, which is what
/// `CLUSTER SLOTS`/`SHARDS`/`NODES` and `MOVED` report), so cutting one relay
/// cuts every client off from that master while the nodes keep talking to
/// each other over the cluster bus (its port is left as it was: the node's
/// own port + 10000).
impl RedisServer {
    /// Starts a 3-master cluster and a relay in front of each node (relay
    /// `i` forwards to node `i`), and waits until every node announces the
    /// relays' ports for every master and reports `cluster_state:ok`.
    /// Connect with [`relayed_cluster_url`]. The helpers that map announced
    /// ports back to nodes (`slot_owner`...) do not apply to this cluster.
    pub async fn start_cluster_behind_relays() -> (RedisServer, Vec<Relay>) {
        let redis = Self::start_cluster();
        let mut relays = Vec::with_capacity(redis.nodes.len());
        for node in 0..redis.nodes.len() {
            let relay = Relay::start(redis.nodes[node].port).await;
            let reply = redis.node_command(
                node,
                &format!("CONFIG SET cluster-announce-port {}", relay.port),
            );
            assert!(reply.starts_with("+OK"), "cluster-announce-port: {reply:?}");
            relays.push(relay);
        }
        // Other nodes learn a node's announced port from its next ping.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let settled = (0..redis.nodes.len()).all(|node| {
                let nodes = redis.node_command_full(node, "CLUSTER NODES");
                redis.nodes[node]
                    .command("CLUSTER INFO")
                    .contains("cluster_state:ok")
                    && relays.iter().zip(&redis.nodes).all(|(r, n)| {
                        // The relay's port for clients, the node's own bus port.
                        nodes.contains(&format!(
                            "127.0.0.1:{}@{} ",
                            r.port,
                            u32::from(n.port) + 10000
                        ))
                    })
            });
            if settled {
                return (redis, relays);
            }
            assert!(
                Instant::now() < deadline,
                "the cluster nodes never announced the relays' ports"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `redis-cluster://` URL of a cluster started by
/// [`RedisServer::start_cluster_behind_relays`], every seed a relay.
pub fn relayed_cluster_url(relays: &[Relay]) -> String {
    let others: Vec<String> = relays[1..]
        .iter()
        .map(|r| format!("node=127.0.0.1:{}", r.port))
        .collect();
    format!(
        "redis-cluster://127.0.0.1:{}?{}",
        relays[0].port,
        others.join("&")
    )
}

/// One raw HTTP/1.1 exchange with the server at `addr`: `head` (request line
/// and fields, without the blank line) and `body` sent as bytes, so that
/// requests a client library would not build (absolute-form targets, two
/// `Host` lines, odd hosts, a body on a `GET`) reach it. Returns the
/// status, `x-cache` and body (bodies here are short, sent with
/// `content-length`).
pub async fn raw_http(addr: std::net::SocketAddr, head: &str, body: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nconnection: close\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let x_cache = head
        .lines()
        .find_map(|l| l.strip_prefix("x-cache: "))
        .unwrap_or("")
        .to_owned();
    (status, x_cache, body.to_owned())
}

/// A Redis master, one replica and one Redis Sentinel watching them as
/// `mymaster`, on free loopback ports, torn down on drop.
pub struct SentinelSet {
    /// The master at start, its replica, then the sentinel.
    nodes: Vec<Node>,
}

impl SentinelSet {
    /// Starts the master and its replica, waits until the replica is in
    /// sync, then starts the sentinel and waits until it knows the replica.
    pub fn start() -> Self {
        let master = Node::start(false);
        let replica = Node::start(false);
        let reply = replica.command(&format!("REPLICAOF 127.0.0.1 {}", master.port));
        assert!(reply.starts_with("+OK"), "REPLICAOF: {reply}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !replica
            .command("INFO replication")
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sentinel = Node::start_as(false, Some(master.port));
        let set = Self {
            nodes: vec![master, replica, sentinel],
        };
        let replica = format!("127.0.0.1:{}", set.nodes[1].port);
        while !set
            .sentinel("SENTINEL REPLICAS mymaster")
            .contains(&replica)
        {
            assert!(
                Instant::now() < deadline,
                "the sentinel never found the replica"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        set
    }

    /// `redis-sentinel://` URL of the sentinel, for service `mymaster`.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName=mymaster",
            self.nodes[2].port
        )
    }

    /// Sends one command to the sentinel and reads its reply.
    fn sentinel(&self, command: &str) -> String {
        self.nodes[2].command(command)
    }

    /// Sends one command to node `node` (0: the first master, 1: the first
    /// replica) and reads its reply.
    pub fn node_command(&self, node: usize, command: &str) -> String {
        self.nodes[node].command(command)
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> u16 {
        let reply = self.sentinel("SENTINEL GET-MASTER-ADDR-BY-NAME mymaster");
        reply
            .lines()
            .rev()
            .find_map(|l| l.trim().parse::<u16>().ok())
            .unwrap_or(0)
    }

    /// Asks the sentinel for a failover (`SENTINEL FAILOVER mymaster`) and
    /// waits until it names the replica as master, the replica says it is
    /// one, and the old master follows it.
    pub fn failover(&self) {
        let (old, new) = (self.nodes[0].port, self.nodes[1].port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = self.sentinel("SENTINEL FAILOVER mymaster");
            if reply.starts_with("+OK") {
                break;
            }
            // -NOGOODSLAVE until the sentinel has fresh news of the replica.
            assert!(Instant::now() < deadline, "SENTINEL FAILOVER: {reply}");
            std::thread::sleep(Duration::from_millis(100));
        }
        while !(self.master_port() == new
            && self.nodes[1].command("ROLE").contains("master")
            && self.nodes[0]
                .command("INFO replication")
                .contains(&format!("master_port:{new}")))
        {
            assert!(
                Instant::now() < deadline,
                "the failover from {old} to {new} did not complete"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Log output captured in memory, to give `tracing_subscriber`'s writer and
/// read back as text.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
