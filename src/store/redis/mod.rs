//! The Redis store, through fred: a connection pool built from a URL
//! (`redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://`), with a
//! command timeout, a reconnect policy and a bounded command queue.
//!
//! - `builder.rs`: the settings and the pool they build;
//! - `batch.rs`: entry reads of concurrent hits sent together;
//! - `commands.rs`: the commands and scripts of each operation;
//! - `cluster.rs`: the same operations where keys span hash slots;
//! - `tracked.rs`: namespace generations kept current by client tracking;
//! - `eviction.rs`: the check that Redis cannot evict what invalidation needs.

mod batch;
mod builder;
mod cluster;
mod commands;
mod eviction;
mod tracked;

use std::{pin::pin, sync::Arc, time::Duration};

use bytes::Bytes;
use fred::{
    prelude::{ClientLike, KeysInterface, LuaInterface, Pool},
    types::scan::Scanner,
};
use futures_util::StreamExt;

pub use self::builder::RedisStoreBuilder;
use self::{batch::Batch, commands::*, tracked::Tracked};
use super::{Backend, BoxFuture, Fence, Fenced, Fetched, PathPrefix, Store, Write};
use crate::error::StoreError;

/// A [`Store`] on Redis (standalone, Cluster, or a master behind Sentinel)
/// through a fred connection pool.
///
/// Build it from a URL with [`RedisStore::builder`], or wrap a pool you
/// already have with [`RedisStore::from_pool`]. While Redis is unreachable,
/// calls fail at once with [`StoreError::Unavailable`] (the layer then serves
/// from the inner service) and the pool keeps reconnecting in the background.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_redis_cache::Error> {
/// use std::time::Duration;
/// use tower_redis_cache::store::RedisStore;
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .pool_size(4)
///     .command_timeout(Duration::from_millis(250))
///     .connect()
///     .await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    /// Whether the pool speaks to a Cluster (read once from its config).
    clustered: bool,
    /// The namespace generations kept in process (a single Redis, built
    /// from a URL, unless switched off).
    generations: Option<Arc<Tracked>>,
    /// Entry reads waiting to go out together (`None`: each goes alone).
    batch: Option<Arc<Batch>>,
}

/// Where `config` points, as a URL without its password (for logs): the
/// scheme, the user, the host and port (each seed or sentinel node), the
/// database and the Sentinel service.
pub(crate) fn address(config: &fred::prelude::Config) -> String {
    use fred::prelude::ServerConfig;
    #[cfg(feature = "tls")]
    let s = if config.tls.is_some() { "s" } else { "" };
    #[cfg(not(feature = "tls"))]
    let s = "";
    let user = config
        .username
        .as_deref()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.database.map(|d| format!("/{d}")).unwrap_or_default();
    // fred lists the URL's host after its `node`s.
    let nodes = |hosts: &[fred::types::config::Server], mut query: Vec<String>| {
        let (first, others) = hosts
            .split_last()
            .map_or((String::new(), &[][..]), |(h, o)| {
                (format!("{}:{}", h.host, h.port), o)
            });
        query.extend(others.iter().map(|h| format!("node={}:{}", h.host, h.port)));
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        (first, query)
    };
    match &config.server {
        ServerConfig::Centralized { server } => {
            format!("redis{s}://{user}{}:{}{db}", server.host, server.port)
        }
        ServerConfig::Clustered { hosts, .. } => {
            let (first, query) = nodes(hosts, Vec::new());
            format!("redis{s}-cluster://{user}{first}{query}")
        }
        ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } => {
            let service = vec![format!("sentinelServiceName={service_name}")];
            let (first, query) = nodes(hosts, service);
            format!("redis{s}-sentinel://{user}{first}{db}{query}")
        }
        #[allow(unreachable_patterns)]
        _ => format!("{:?}", config.server),
    }
}

impl RedisStore {
    /// Wraps a fred pool the application built itself. It should be
    /// connected (or connecting) already.
    ///
    /// Such a store reads each namespace generation with its entry on every
    /// hit (see [`RedisStoreBuilder::track_generations`]).
    pub fn from_pool(pool: Pool) -> Self {
        let clustered = pool.next().is_clustered();
        Self {
            pool,
            clustered,
            generations: None,
            batch: Some(Arc::default()),
        }
    }

    /// Whether hits read their entry alone now: the store keeps namespace
    /// generations in process and its tracking connection is up (see
    /// [`RedisStoreBuilder::track_generations`]). `false` on a Cluster, for
    /// a store built with [`from_pool`](Self::from_pool), and while the
    /// tracking connection is down.
    pub fn tracks_generations(&self) -> bool {
        self.generations.as_ref().is_some_and(|g| g.is_up())
    }

    /// This store reading every generation from Redis: for a tier in front
    /// of it that keeps generations itself, so that two copies, each
    /// invalidated by its own push, never feed each other.
    #[cfg(feature = "l1")]
    pub(crate) fn without_tracked_generations(self) -> Self {
        Self {
            generations: None,
            ..self
        }
    }

    /// The fred pool, for commands of your own.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Unlinks every entry listed in the tag indexes and removes exactly
    /// those members from the indexes; returns how many entries existed.
    /// `walked` sees each page of members once their entries are unlinked.
    ///
    /// Each index is walked a page at a time (`ZSCAN` with a `COUNT` of
    /// [`TAG_PAGE`]): the page's entries are unlinked, then the page's
    /// members are removed from the index (see [`unlist`]), so no command
    /// works on more than about a page and other clients' commands run in
    /// between. Redis deletes the index once it is empty. Interrupted (an
    /// error, a dropped future), the walk leaves every entry still stored
    /// still listed: calling it again finishes the job. An entry tagged
    /// during the walk is either reached by it (unlinked and unlisted) or
    /// stays listed.
    pub(crate) async fn remove_tagged(
        &self,
        tag_keys: &[String],
        mut walked: impl FnMut(&[String]),
    ) -> Result<u64, StoreError> {
        let client = self.client()?;
        let mut removed = 0;
        for tag in tag_keys {
            let mut cursor = "0".to_owned();
            loop {
                let (next, page) = scan_tag(client, tag, &cursor).await?;
                if !page.is_empty() {
                    removed += self.remove_members(client, tag, &page).await?;
                    let members: Vec<String> = page.into_iter().map(|(m, _)| m).collect();
                    walked(&members);
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    /// One page of a tag's invalidation: unlinks the entries of `page`
    /// (members and their scores), then unlists them from the index `tag`.
    /// The order matters: stopped in between, every entry still stored is
    /// still listed. Returns how many entries existed.
    async fn remove_members(
        &self,
        client: &fred::prelude::Client,
        tag: &str,
        page: &[(String, String)],
    ) -> Result<u64, StoreError> {
        let members: Vec<String> = page.iter().map(|(m, _)| m.clone()).collect();
        let existed = unlink_batch(client, self.clustered, &members).await?;
        unlist(client, tag, page).await?;
        Ok(existed)
    }

    fn client(&self) -> Result<&fred::prelude::Client, StoreError> {
        let client = self.pool.next();
        if client.is_connected() {
            Ok(client)
        } else {
            Err(StoreError::Unavailable)
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("clients", &self.pool.size())
            .field("clustered", &self.pool.next().is_clustered())
            .field("tracks_generations", &self.tracks_generations())
            .field("batches_reads", &self.batch.is_some())
            .finish()
    }
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move { entry_value(self.client()?.get(key).await).map_err(backend) })
    }

    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client()?;
            if let [w] = writes {
                if w.tags.is_empty() {
                    let value = w.value.clone();
                    return client
                        .set::<(), _, _>(w.key.as_str(), value, Some(px(w.ttl)), None, false)
                        .await
                        .map_err(backend);
                }
            }
            let pipe = client.pipeline();
            queue_writes(&pipe, writes).await?;
            let _: Vec<fred::types::Value> = pipe.all().await.map_err(backend)?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move { unlink_each(self.client()?, keys).await })
    }

    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a PathPrefix,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client()?;
            let mut removed = 0;
            let pattern = prefix.glob();
            let mut pages = if client.is_clustered() {
                client.scan_cluster(pattern, Some(1000), None).boxed()
            } else {
                client.scan(pattern, Some(1000), None).boxed()
            };
            while let Some(page) = pages.next().await {
                let mut page = page.map_err(backend)?;
                let keys: Vec<String> = page
                    .take_results()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|k| k.as_str())
                    .filter(|k| prefix.matches(k))
                    .map(str::to_owned)
                    .collect();
                removed += unlink_each(client, &keys).await?;
            }
            Ok(removed)
        })
    }

    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.remove_tagged(tag_keys, |_| {}))
    }

    fn counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let raw: Option<Bytes> = self.client()?.get(key).await.map_err(backend)?;
            parse_generation(raw)
        })
    }

    fn increment<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let bumped = self.client()?.incr(key).await.map_err(backend);
            // Also when the reply was lost: the increment may have run.
            if let Some(generations) = &self.generations {
                generations.drop_keys(&[key]);
            }
            bumped
        })
    }

    fn __backend(self: Arc<Self>) -> Arc<dyn Backend> {
        self
    }
}

impl Backend for RedisStore {
    fn describe(&self) -> String {
        format!("Redis at {}", address(&self.pool.next().client_config()))
    }

    fn fetch<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<Fetched, StoreError>> {
        Box::pin(async move {
            let client = self.client()?;
            if self.clustered {
                return cluster::fetch(client, key, generation_key).await;
            }
            // One command: both keys live on the one server.
            let (value, generation): (Option<Bytes>, Option<Bytes>) =
                client.mget((key, generation_key)).await.map_err(backend)?;
            Ok(Fetched::new(value, parse_generation(generation)?))
        })
    }

    fn fetch_within<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
        budget: Duration,
    ) -> Option<BoxFuture<'a, Result<Fetched, StoreError>>> {
        // fred times every command anyway: with the budget as that command's
        // timeout, the lookup carries one timer instead of two. On a cluster
        // the two reads are a pipeline, which the layer times.
        if self.clustered {
            return None;
        }
        let client = match self.client() {
            Ok(client) => client,
            // At once, without the future of a command never sent.
            Err(down) => return Some(Box::pin(std::future::ready(Err(down)))),
        };
        if let Some(generations) = &self.generations {
            // The generation known here: the entry alone, one `GET`.
            if let Some(generation) = generations.get(generation_key) {
                // The entry alone, read together with other hits' entries.
                return Some(self.read_entry(client, key, generation, budget));
            }
            generations.learn(generation_key);
        }
        Some(Box::pin(async move {
            let client = client.with_options(&within(budget));
            let (value, generation) = mget_pair(&client, key, generation_key, budget).await?;
            Ok(Fetched::new(value, parse_generation(generation)?))
        }))
    }

    fn fetch_or_lock<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        budget: Duration,
    ) -> Option<BoxFuture<'a, Result<(Fetched, bool), StoreError>>> {
        // The reads and `SET lock NX PX` in one round trip, no script: a
        // script costs Redis far more than `MGET` (docs/performance.md), and
        // it cannot span a cluster's slots; the price is a lock also taken when
        // the key turns out to hold a value, which the layer then releases.
        // The lock first, then the reads: a holder writes its entry before it
        // releases the lock, so a lock taken here after that release comes
        // with reads that see the entry. (Reads first could miss the entry
        // and then take the released lock: a second computation.) The
        // commands go out in the order `join` first polls them, which is
        // when fred hands each to the connection; a test watches the order
        // with MONITOR. The futures stay pinned where they are made: fred's
        // are large.
        let client = match self.client() {
            Ok(client) => client,
            // At once, without the futures of commands never sent: a
            // Redis that is down answers every request through here.
            Err(down) => return Some(Box::pin(std::future::ready(Err(down)))),
        };
        let options = within(budget);
        if self.clustered {
            return Some(Box::pin(cluster::fetch_or_lock(
                client,
                options,
                [key, generation_key, lock_key, token],
                ttl,
                budget,
            )));
        }
        Some(Box::pin(async move {
            let client = client.with_options(&options);
            let lock = pin!(set_lock(&client, lock_key, token, ttl));
            let reads = pin!(mget_pair(&client, key, generation_key, budget));
            let (lock, reads) = futures_util::future::join(lock, reads).await;
            let (value, generation) = reads?;
            Ok((
                Fetched::new(value, parse_generation(generation)?),
                taken(lock),
            ))
        }))
    }

    fn lock_and_fetch<'a>(
        &'a self,
        lock_key: &'a str,
        token: &'a str,
        ttl: Duration,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<(bool, Fetched), StoreError>> {
        // As in `fetch_or_lock`: plain commands on one connection, the lock
        // first, then the reads (the lock's holder, the entry, the
        // generation), each future pinned where it is made.
        if self.clustered {
            return Box::pin(async move {
                let client = self.client()?;
                cluster::lock_and_fetch(client, [lock_key, token, key, generation_key], ttl).await
            });
        }
        Box::pin(async move {
            let client = self.client()?;
            let taken = pin!(set_lock(client, lock_key, token, ttl));
            let reads = pin!(client.mget::<LockReads, _>((lock_key, key, generation_key)));
            let (taken, reads) = futures_util::future::join(taken, reads).await;
            held(token, taken, reads.map_err(backend)?)
        })
    }

    fn fence<'a>(&'a self, counter_key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let raw: Option<Bytes> = self.client()?.get(counter_key).await.map_err(backend)?;
            parse_generation(raw)
        })
    }

    fn raise_fence<'a>(
        &'a self,
        counter_key: &'a str,
        markers: &'a [String],
        window: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client()?;
            let window_ms = window.as_millis().to_string();
            if self.clustered {
                return cluster::raise_fence(client, counter_key, markers, &window_ms).await;
            }
            let keys: Vec<&str> = std::iter::once(counter_key)
                .chain(markers.iter().map(String::as_str))
                .collect();
            client
                .eval(RAISE_SCRIPT, keys, window_ms)
                .await
                .map_err(backend)
        })
    }

    fn put_fenced<'a>(
        &'a self,
        writes: &'a [Write],
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Fenced, StoreError>> {
        Box::pin(async move {
            let client = self.client()?;
            if self.clustered {
                return cluster::put_fenced(self, client, writes, fence).await;
            }
            put_fenced_script(client, writes, fence).await
        })
    }

    fn unlock<'a>(
        &'a self,
        lock_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let _: i64 = self
                .client()?
                .eval(UNLOCK_SCRIPT, lock_key, token)
                .await
                .map_err(backend)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod lock_tests;
#[cfg(test)]
mod tests {
    use fred::prelude::SortedSetsInterface;

    use super::*;

    /// A `redis-server` of its own on a free loopback port, killed on drop.
    pub(super) struct Server(std::process::Child, pub(super) u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub(super) fn redis_server() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let server = Server(child, port);
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on {port}");
    }

    #[tokio::test]
    async fn an_entry_written_again_during_its_tags_walk_stays_listed() {
        let server = redis_server();
        let store = RedisStore::builder(format!("redis://127.0.0.1:{}", server.1))
            .connect()
            .await
            .unwrap();
        let client = store.client().unwrap();
        for (key, expires) in [("a", 1000.0), ("b", 1000.0), ("c", 1000.0)] {
            let () = client.set(key, "v", None, None, false).await.unwrap();
            let () = client
                .zadd("tag", None, None, false, false, (expires, key))
                .await
                .unwrap();
        }
        let (next, page) = scan_tag(client, "tag", "0").await.unwrap();
        assert_eq!((next.as_str(), page.len()), ("0", 3));
        let members: Vec<String> = page.iter().map(|(m, _)| m.clone()).collect();
        assert_eq!(unlink_batch(client, false, &members).await.unwrap(), 3);
        // A request stores `b` again (a new expiry) before the page is
        // unlisted.
        let () = client.set("b", "new", None, None, false).await.unwrap();
        let () = client
            .zadd("tag", None, None, false, false, (2000.0, "b"))
            .await
            .unwrap();
        unlist(client, "tag", &page).await.unwrap();
        let listed: Vec<String> = client
            .zrange("tag", 0, -1, None, false, None, false)
            .await
            .unwrap();
        assert_eq!(listed, ["b"], "the stored `b` stays reachable");
        // The next walk removes it.
        assert_eq!(store.invalidate_tags(&["tag".into()]).await.unwrap(), 1);
        let left: u64 = client.exists(("b", "tag")).await.unwrap();
        assert_eq!(left, 0);
    }
}
