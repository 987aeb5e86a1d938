//! The Redis store, through fred: a connection pool built from a URL
//! (`redis://`, `rediss://`, `redis-cluster://`), with a command timeout, a
//! reconnect policy and a bounded command queue.

use std::{
    collections::HashMap,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use fred::{
    prelude::{
        Builder, ClientLike, Config, Expiration, KeysInterface, LuaInterface, Options, Pool,
        ReconnectPolicy, SetOptions, SortedSetsInterface,
    },
    types::{scan::Scanner, ClusterHash, CustomCommand, ExpireOptions},
};
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::{generations::Tracked, BoxFuture, Fence, Fenced, Fetched, Store, Write};
use crate::error::{Error, StoreError};

/// A [`Store`] on Redis (standalone or Cluster) through a fred connection pool.
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

/// An entry read waiting for its batch: the key and where its value goes.
type Waiting = (String, oneshot::Sender<Result<Option<Bytes>, StoreError>>);

/// Entry reads of concurrent hits, sent together (see [`RedisStore::read_entry`]).
#[derive(Default)]
struct Batch {
    /// The reads waiting, and the budget they were asked with.
    waiting: std::sync::Mutex<(Vec<Waiting>, Duration)>,
    /// Entry reads asked for and not yet answered (or given up).
    reading: AtomicUsize,
}

impl Batch {
    /// The reads waiting and their budget; the next read starts a new batch.
    fn take(&self) -> (Vec<Waiting>, Duration) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut waiting.0), waiting.1)
    }
}

/// A batch's task before it has taken its reads. Dropped unpolled (its
/// runtime shut down), it answers them as failed: left waiting, they would
/// keep every later read from starting a batch of its own.
struct Unsent(Option<Arc<Batch>>);

impl Unsent {
    fn take(mut self) -> (Vec<Waiting>, Duration) {
        self.0.take().map(|batch| batch.take()).unwrap_or_default()
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        if let Some(batch) = self.0.take() {
            for (_, tx) in batch.take().0 {
                let _ = tx.send(Err(StoreError::Unavailable));
            }
        }
    }
}

/// Counts one entry read in [`Batch::reading`] while it lives.
struct Reading<'a>(&'a AtomicUsize);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The most keys one batched `MGET` asks for; a larger batch is split.
const MAX_BATCH: usize = 128;

impl RedisStore {
    /// Reads the entry at `key` within `budget`: at once when no other entry
    /// read is under way, else together with the reads of other requests
    /// that are ready to run now.
    ///
    /// The first read of a batch schedules a task that yields once (so every
    /// task that is ready on this runtime runs first) and then sends what has
    /// gathered: a `GET` for one read, an `MGET` for several. Under load that
    /// is one command, one write and one reply for many hits, instead of one
    /// each: fred's per-command work and Redis's per-command and per-read
    /// work are shared. With one request at a time nothing waits: a lone
    /// read is a plain `GET`. A read is never older than its request,
    /// because a batch is taken before it is sent and later reads start the
    /// next one. A read with another budget than its batch's goes out alone.
    fn read_entry<'a>(
        &'a self,
        client: &'a fred::prelude::Client,
        key: &'a str,
        generation: u64,
        budget: Duration,
    ) -> BoxFuture<'a, Result<Fetched, StoreError>> {
        let alone = move |reading: Option<Reading<'a>>| -> BoxFuture<'a, _> {
            Box::pin(async move {
                let _reading = reading;
                let client = client.with_options(&within(budget));
                let value = get_entry(&client, key, budget).await?;
                Ok(Fetched::new(value, generation))
            })
        };
        let Some(batch) = &self.batch else {
            return alone(None);
        };
        let others = batch.reading.fetch_add(1, Relaxed);
        let reading = Some(Reading(&batch.reading));
        if others == 0 {
            return alone(reading);
        }
        // The batch's task needs a runtime (a request outside one goes alone).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return alone(reading);
        };
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut waiting = batch.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let (reads, batch_budget) = &mut *waiting;
            if reads.is_empty() {
                *batch_budget = budget;
            } else if *batch_budget != budget {
                drop(waiting);
                return alone(reading);
            }
            reads.push((key.to_owned(), tx));
            reads.len() == 1
        };
        if first {
            let unsent = Unsent(Some(batch.clone()));
            let store = self.clone();
            runtime.spawn(async move {
                tokio::task::yield_now().await;
                let reads = unsent.take();
                store.send_batch(reads).await;
            });
        }
        // Without fred's 5 KB future: the batch's task holds that.
        Box::pin(async move {
            let _reading = reading;
            let value = rx.await.unwrap_or(Err(StoreError::Unavailable))?;
            Ok(Fetched::new(value, generation))
        })
    }

    /// Sends the reads gathered so far and hands each its value.
    async fn send_batch(&self, (reads, budget): (Vec<Waiting>, Duration)) {
        let client = match self.client() {
            Ok(client) => client.with_options(&within(budget)),
            Err(down) => {
                for (_, tx) in reads {
                    let _ = tx.send(Err(down.clone()));
                }
                return;
            }
        };
        let mut reads = reads.into_iter();
        let sends = std::iter::from_fn(|| {
            let chunk: Vec<Waiting> = reads.by_ref().take(MAX_BATCH).collect();
            (!chunk.is_empty()).then(|| send_reads(&client, chunk, budget))
        });
        futures_util::future::join_all(sends).await;
    }
}

/// Sends one batch of entry reads: a `GET` for one, an `MGET` for several.
async fn send_reads<C: KeysInterface + Sync>(client: &C, reads: Vec<Waiting>, budget: Duration) {
    if let [(key, _)] = &reads[..] {
        let value = get_entry(client, key, budget).await;
        if let Some((_, tx)) = reads.into_iter().next() {
            let _ = tx.send(value);
        }
        return;
    }
    // A hot key is asked for by many hits at once: each key once, and every
    // read of it gets the same value (shared bytes, not a copy).
    let mut place: HashMap<&str, usize> = HashMap::with_capacity(reads.len());
    let mut keys: Vec<&str> = Vec::with_capacity(reads.len());
    let slots: Vec<usize> = reads
        .iter()
        .map(|(key, _)| {
            *place.entry(key.as_str()).or_insert_with(|| {
                keys.push(key.as_str());
                keys.len() - 1
            })
        })
        .collect();
    let asked = keys.len();
    let values: Result<Vec<Option<Bytes>>, _> = client.mget(keys).await;
    match values {
        Ok(values) if values.len() == asked => {
            for ((_, tx), slot) in reads.into_iter().zip(slots) {
                let _ = tx.send(Ok(values.get(slot).cloned().flatten()));
            }
        }
        Ok(values) => {
            let e = StoreError::Backend(format!(
                "MGET of {asked} keys answered {} values",
                values.len()
            ));
            for (_, tx) in reads {
                let _ = tx.send(Err(e.clone()));
            }
        }
        Err(e) => {
            let e = backend_within(e, budget);
            for (_, tx) in reads {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// Settings for a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    url: String,
    pool_size: usize,
    command_timeout: Duration,
    connect_timeout: Duration,
    reconnect: ReconnectPolicy,
    max_queued_commands: usize,
    track_generations: bool,
    batch_reads: bool,
}

impl RedisStore {
    /// Settings for a store at `url`: `redis://[user:pass@]host[:port][/db]`,
    /// `rediss://...` (TLS, with the `tls` feature) or
    /// `redis-cluster://host:port?node=host2:port2...`.
    ///
    /// Defaults: a pool of 4 connections, 1 s command timeout, 2 s connect
    /// timeout, reconnect forever with exponential backoff from 50 ms up to 1 s,
    /// at most 10 000 commands queued while disconnected.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            pool_size: 4,
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            reconnect: ReconnectPolicy::new_exponential(0, 50, 1_000, 2),
            max_queued_commands: 10_000,
            track_generations: true,
            batch_reads: true,
        }
    }

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

impl RedisStoreBuilder {
    /// How many connections the pool holds (at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long fred waits for one command before failing it. The layer's own
    /// time budget (usually shorter) still applies on the request path.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long one connection attempt may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// fred's reconnect policy (re-exported as
    /// `tower_redis_cache::fred::prelude::ReconnectPolicy`).
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// The most commands fred queues while reconnecting; past that, calls
    /// fail at once. `0` means unbounded.
    pub fn max_queued_commands(mut self, max: usize) -> Self {
        self.max_queued_commands = max;
        self
    }

    /// Whether the store keeps each namespace's generation in process, so
    /// that a hit reads its entry alone (`GET`) instead of the entry and the
    /// generation (`MGET`): about a tenth less work per hit for the server.
    /// Default: on. It applies to a single Redis; on a Cluster every hit
    /// reads the generation with the entry.
    ///
    /// A connection of its own (RESP3, `CLIENT TRACKING`) reads each
    /// generation once and Redis pushes every change of it:
    ///
    /// - a namespace bump made through this store is seen by its next hit,
    ///   as without tracking;
    /// - one made by another instance (or any other client of Redis) is seen
    ///   when Redis's push arrives, normally well under a millisecond after
    ///   the bump, instead of by the first hit that starts after it;
    /// - while the tracking connection is down, or Redis refuses `CLIENT
    ///   TRACKING` (some proxies, a user without `+@connection`), hits read
    ///   the generation with the entry, as with this off;
    /// - no generation is used for more than a second without being read
    ///   again, which bounds the delay if pushes stop arriving on a
    ///   connection that has not failed.
    ///
    /// Switch it off when another instance's namespace bump must be seen by
    /// every request that starts after the bump's call returns, and on Redis
    /// before 6.0, which has no RESP3: there the connection cannot be opened
    /// and keeps retrying.
    pub fn track_generations(mut self, on: bool) -> Self {
        self.track_generations = on;
        self
    }

    /// Whether the entry reads of concurrent hits go to Redis together, as
    /// one `MGET` (default: on). It applies where a hit reads its entry
    /// alone, that is with [`track_generations`](Self::track_generations)
    /// on a single Redis.
    ///
    /// A read goes out at once when no other entry read is under way, so one
    /// request at a time waits for nothing. Otherwise it waits until every
    /// task that is ready on the runtime has run (one yield), and the reads
    /// gathered by then share one command, one write and one reply. Under
    /// load that saves far more than the wait costs: see
    /// `docs/performance.md`. Each request still reads its own entry, after
    /// it arrived. Switch it off to send every read alone.
    pub fn batch_reads(mut self, on: bool) -> Self {
        self.batch_reads = on;
        self
    }

    /// Validates the settings and builds the pool without connecting it.
    fn pool(&self) -> Result<Pool, Error> {
        let scheme = self.url.split("://").next().unwrap_or("");
        if !self.url.contains("://") {
            return Err(Error::config(format!(
                "Redis URL {:?} has no scheme: use redis://host:port, rediss://host:port \
                 or redis-cluster://host:port",
                self.url
            )));
        }
        if scheme.starts_with("rediss") && !cfg!(feature = "tls") {
            return Err(Error::config(format!(
                "Redis URL {:?} asks for TLS: enable the `tls` feature of tower-redis-cache",
                self.url
            )));
        }
        if !matches!(
            scheme,
            "redis" | "rediss" | "redis-cluster" | "rediss-cluster"
        ) {
            return Err(Error::config(format!(
                "Redis URL scheme {scheme:?} is not supported: use redis://, rediss://, \
                 redis-cluster:// or rediss-cluster://"
            )));
        }
        if self.pool_size == 0 {
            return Err(Error::config("Redis pool size is 0: use at least 1"));
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config(
                "Redis command and connect timeouts must be above zero",
            ));
        }
        let config = Config::from_url(&self.url)
            .map_err(|e| Error::config(format!("Redis URL {:?} is not valid: {e}", self.url)))?;
        self.client_builder(config)
            .build_pool(self.pool_size)
            .map_err(|e| Error::config(format!("Redis client for {:?}: {e}", self.url)))
    }

    /// The connection that tracks namespace generations, on the pool's
    /// server: `None` on a Cluster or with tracking off.
    fn tracker(&self, pool: &Pool) -> Result<Option<fred::clients::Client>, Error> {
        if !self.track_generations || pool.next().is_clustered() {
            return Ok(None);
        }
        let mut config = pool.next().client_config();
        config.version = fred::types::RespVersion::RESP3;
        self.client_builder(config)
            .build()
            .map(Some)
            .map_err(|e| Error::config(format!("Redis tracking client for {:?}: {e}", self.url)))
    }

    /// A fred builder with these settings.
    fn client_builder(&self, config: Config) -> Builder {
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| p.default_command_timeout = self.command_timeout)
            .with_connection_config(|c| {
                c.connection_timeout = self.connect_timeout;
                c.internal_command_timeout = self.command_timeout.max(self.connect_timeout);
                c.max_command_buffer_len = self.max_queued_commands;
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .set_policy(self.reconnect.clone());
        builder
    }

    /// Builds the store and starts connecting in the background: the call
    /// returns at once, and until the connection is up the layer passes
    /// requests through. Must run inside a Tokio runtime.
    pub fn build(self) -> Result<RedisStore, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "a Redis store must be built inside a Tokio runtime (e.g. in #[tokio::main])",
            ));
        }
        let pool = self.pool()?;
        let tracker = self.tracker(&pool)?;
        if let Some(client) = pool.clients().first() {
            check_eviction(client.clone());
        }
        drop(pool.connect());
        let store = RedisStore::from_pool(pool);
        Ok(RedisStore {
            generations: tracker.map(Tracked::start),
            batch: store.batch.clone().filter(|_| self.batch_reads),
            ..store
        })
    }

    /// Builds the store and waits (up to the connect timeout) until every
    /// connection is up; an error if Redis cannot be reached. The pool keeps
    /// reconnecting after later outages either way.
    pub async fn connect(self) -> Result<RedisStore, Error> {
        let timeout = self.connect_timeout;
        let url = self.url.clone();
        let store = self.build()?;
        match tokio::time::timeout(timeout, store.pool.wait_for_connect()).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(e)) => Err(Error::Store(StoreError::Backend(format!(
                "cannot connect to {url}: {e}"
            )))),
            Err(_) => Err(Error::Store(StoreError::Backend(format!(
                "cannot connect to {url} within {} ms",
                timeout.as_millis()
            )))),
        }
    }
}

/// Checks once, in a task of its own, that Redis cannot evict what
/// invalidation relies on (see [`eviction_risk`]), and warns if it can.
/// Listens to `client`'s connections (subscribed before it connects, so the
/// first is not missed) and reads the settings (see [`eviction_settings`])
/// from the server of each: on a single Redis once, on a Cluster from every
/// primary of the first connection, until one is found unsafe. Settings that
/// cannot be read are logged at `info` and end the check.
fn check_eviction(client: fred::prelude::Client) {
    use fred::interfaces::EventInterface;
    use tokio::sync::broadcast::error::RecvError;
    let mut connections = client.reconnect_rx();
    tokio::spawn(async move {
        let mut checked = std::collections::HashSet::new();
        loop {
            let server = match connections.recv().await {
                Ok(server) => server,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            if !checked.insert(server.clone()) {
                continue;
            }
            let (maxmemory, policy) = match eviction_settings(&client, &server).await {
                Ok(settings) => settings,
                Err(error) => {
                    tracing::info!(
                        %server, %error,
                        "could not read Redis's maxmemory-policy; check by hand that it cannot \
                         evict the cache's generation counters and tag indexes (docs/operations.md)"
                    );
                    return;
                }
            };
            let (maxmemory, policy) = (maxmemory.as_str(), policy.as_str());
            if let Some(risk) = eviction_risk(maxmemory, policy) {
                tracing::warn!(%server, maxmemory, maxmemory_policy = policy, "{risk}");
                return;
            }
            tracing::debug!(
                %server, maxmemory, maxmemory_policy = policy,
                "Redis eviction policy checked: it cannot evict what cache invalidation relies on"
            );
            let all_checked = client.is_connected()
                && client
                    .active_connections()
                    .iter()
                    .all(|s| checked.contains(s));
            if !client.is_clustered() || all_checked {
                return;
            }
        }
    });
}

/// `maxmemory` and `maxmemory-policy` of `server`: from `CONFIG GET`, or
/// where that is refused (managed Redis often forbids it) from `INFO memory`.
async fn eviction_settings(
    client: &fred::prelude::Client,
    server: &fred::types::config::Server,
) -> Result<(String, String), String> {
    async fn ask<R: fred::types::FromValue>(
        client: &fred::prelude::Client,
        server: &fred::types::config::Server,
        command: &'static str,
        args: Vec<&'static str>,
    ) -> Result<R, fred::error::Error> {
        let command = CustomCommand::new_static(command, None, false);
        if client.is_clustered() {
            client.with_cluster_node(server).custom(command, args).await
        } else {
            client.custom(command, args).await
        }
    }
    let config =
        ask::<HashMap<String, String>>(client, server, "CONFIG", vec!["GET", "maxmemory*"]);
    let config_error = match config.await {
        Ok(mut config) => match (
            config.remove("maxmemory"),
            config.remove("maxmemory-policy"),
        ) {
            (Some(maxmemory), Some(policy)) => return Ok((maxmemory, policy)),
            _ => "CONFIG GET maxmemory* lacks maxmemory or maxmemory-policy".to_owned(),
        },
        Err(e) => e.to_string(),
    };
    let info: String = ask(client, server, "INFO", vec!["memory"])
        .await
        .map_err(|e| format!("{config_error}; INFO memory: {e}"))?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    match (field("maxmemory"), field("maxmemory_policy")) {
        (Some(maxmemory), Some(policy)) => Ok((maxmemory, policy)),
        _ => Err(format!(
            "{config_error}; INFO memory lacks maxmemory or maxmemory_policy"
        )),
    }
}

/// What Redis's eviction can break, given `maxmemory` and
/// `maxmemory-policy`; `None` when it cannot break invalidation.
///
/// Entries and tag indexes expire (tag indexes with their longest-lived
/// entry); namespace generation counters never do. An evicted counter reads
/// as generation 0 again, so entries written under an earlier generation
/// match again; an evicted tag index loses the keys of entries that still
/// live, which `invalidate_tags` then misses. With `maxmemory` 0 nothing is
/// evicted; `noeviction` refuses writes instead.
fn eviction_risk(maxmemory: &str, policy: &str) -> Option<&'static str> {
    if maxmemory.trim() == "0" || policy == "noeviction" {
        None
    } else if policy.starts_with("allkeys-") {
        Some(
            "Redis may evict the cache's namespace generation counters and tag indexes \
             (maxmemory-policy allkeys-*): an evicted counter starts again at 0, so invalidated \
             entries can be served again, and an evicted tag index hides its entries from \
             invalidate_tags; set maxmemory-policy to noeviction, or to volatile-lru if no \
             response carries tags (docs/operations.md)",
        )
    } else if policy.starts_with("volatile-") {
        Some(
            "Redis may evict the cache's tag indexes while their entries live (they expire, so \
             maxmemory-policy volatile-* can evict them): invalidate_tags then misses those \
             entries; if responses carry tags, set maxmemory-policy to noeviction \
             (docs/operations.md)",
        )
    } else {
        Some(
            "Redis's maxmemory-policy is not one the cache knows, and may evict the cache's \
             namespace generation counters or tag indexes; set it to noeviction \
             (docs/operations.md)",
        )
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

fn backend(e: fred::error::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// fred's options for a command bounded by `budget` (fred's own timeout).
fn within(budget: Duration) -> Options {
    Options {
        timeout: Some(budget),
        ..Options::default()
    }
}

/// The error of a command run [`within`] `budget`: fred's timeout is the
/// budget running out.
fn backend_within(e: fred::error::Error, budget: Duration) -> StoreError {
    match e.kind() {
        fred::error::ErrorKind::Timeout => StoreError::Timeout(budget),
        _ => backend(e),
    }
}

/// `MGET key generation_key`. `client` carries `budget` as its timeout.
///
/// A typed command, not `custom_raw`: fred flushes the connection after
/// every custom command, while a typed one waits for the commands queued
/// behind it. Under load that batching is worth far more than the
/// conversion of the reply (see `docs/performance.md`).
async fn mget_pair<C: KeysInterface + Sync>(
    client: &C,
    key: &str,
    generation_key: &str,
    budget: Duration,
) -> Result<(Option<Bytes>, Option<Bytes>), StoreError> {
    client
        .mget((key, generation_key))
        .await
        .map_err(|e| backend_within(e, budget))
}

/// `GET key`, typed for the reason [`mget_pair`] is. `client` carries
/// `budget` as its timeout.
async fn get_entry<C: KeysInterface + Sync>(
    client: &C,
    key: &str,
    budget: Duration,
) -> Result<Option<Bytes>, StoreError> {
    entry_value(client.get(key).await).map_err(|e| backend_within(e, budget))
}

/// A `GET` reply for an entry key. A key holding another type (a hash, a
/// list: `WRONGTYPE`) holds a foreign value like any other, so it reads as
/// an empty value: that does not decode, and the layer counts it, deletes
/// it and treats the request as a miss (an `MGET` reads such a key as nil).
fn entry_value(
    reply: Result<Option<Bytes>, fred::error::Error>,
) -> Result<Option<Bytes>, fred::error::Error> {
    match reply {
        Err(e) if e.details().starts_with("WRONGTYPE") => Ok(Some(Bytes::new())),
        other => other,
    }
}

/// `SET lock_key token NX PX ttl`; the reply is null when another holds
/// the lock.
fn set_lock<'c, C: KeysInterface + Sync>(
    client: &'c C,
    lock_key: &'c str,
    token: &'c str,
    ttl: Duration,
) -> impl std::future::Future<Output = Result<fred::types::Value, fred::error::Error>> + Send + 'c {
    client.set(lock_key, token, Some(px(ttl)), Some(SetOptions::NX), false)
}

/// Whether `SET lock NX` set the lock: not when another holds it, nor when
/// Redis refused (say, under `maxmemory` with `noeviction`), which only
/// costs the layer the lock round trip after the lookup.
fn taken(reply: Result<fred::types::Value, fred::error::Error>) -> bool {
    reply.is_ok_and(|reply| !reply.is_null())
}

pub(super) fn parse_generation(raw: Option<Bytes>) -> Result<u64, StoreError> {
    match raw {
        None => Ok(0),
        Some(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                StoreError::Backend(format!(
                    "generation counter holds {:?}, not an integer",
                    String::from_utf8_lossy(&b)
                ))
            }),
    }
}

fn px(ttl: Duration) -> Expiration {
    Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

impl Store for RedisStore {
    fn fetch<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<Fetched, StoreError>> {
        Box::pin(async move {
            let client = self.client()?;
            // One command where both keys share a server; on a cluster they
            // may not share a slot, so two commands, sent together.
            let (value, generation): (Option<Bytes>, Option<Bytes>) = if client.is_clustered() {
                let value = pin!(client.get(key));
                let generation = pin!(client.get(generation_key));
                let (value, generation) = futures_util::future::join(value, generation).await;
                (
                    entry_value(value).map_err(backend)?,
                    generation.map_err(backend)?,
                )
            } else {
                client.mget((key, generation_key)).await.map_err(backend)?
            };
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
            // At once, without the 5 KB future of a command never sent.
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
        // The reads and `SET lock NX PX` in one round trip, no script: Redis
        // runs a script about twenty times slower than `MGET`, and a script
        // cannot span a cluster's slots; the price is a lock also taken when
        // the key turns out to hold a value, which the layer then releases.
        // The lock first, then the reads: a holder writes its entry before it
        // releases the lock, so a lock taken here after that release comes
        // with reads that see the entry. (Reads first could miss the entry
        // and then take the released lock: a second computation.) The
        // commands go out in the order `join` first polls them, which is
        // when fred hands each to the connection; a test watches the order
        // with MONITOR. The futures stay pinned where they are made: fred's
        // are about 5 KB each.
        let client = match self.client() {
            Ok(client) => client,
            // At once, without the 10 KB future of commands never sent: a
            // Redis that is down answers every request through here.
            Err(down) => return Some(Box::pin(std::future::ready(Err(down)))),
        };
        let options = within(budget);
        if self.clustered {
            return Some(Box::pin(async move {
                let client = client.with_options(&options);
                let lock = pin!(set_lock(&client, lock_key, token, ttl));
                let value = pin!(client.get::<Option<Bytes>, _>(key));
                let generation = pin!(client.get::<Option<Bytes>, _>(generation_key));
                let (lock, value, generation) =
                    futures_util::future::join3(lock, value, generation).await;
                let within = |e| backend_within(e, budget);
                let (value, generation) = (
                    entry_value(value).map_err(within)?,
                    generation.map_err(within)?,
                );
                Ok((
                    Fetched::new(value, parse_generation(generation)?),
                    taken(lock),
                ))
            }));
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

    fn delete_matching<'a>(
        &'a self,
        pattern: &'a str,
        filter: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client()?;
            let mut removed = 0;
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
                    .filter(|k| filter(k))
                    .map(str::to_owned)
                    .collect();
                removed += unlink_each(client, &keys).await?;
            }
            Ok(removed)
        })
    }

    fn generation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let raw: Option<Bytes> = self.client()?.get(key).await.map_err(backend)?;
            parse_generation(raw)
        })
    }

    fn bump_generation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let bumped = self.client()?.incr(key).await.map_err(backend);
            // Also when the reply was lost: the bump may have run.
            if let Some(generations) = &self.generations {
                generations.drop_keys(&[key]);
            }
            bumped
        })
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
        type Reads = (Option<Bytes>, Option<Bytes>, Option<Bytes>);
        fn held(
            token: &str,
            taken: Result<fred::types::Value, fred::error::Error>,
            (holder, value, generation): Reads,
        ) -> Result<(bool, Fetched), StoreError> {
            let taken = !taken.map_err(backend)?.is_null();
            let fetched = Fetched::new(value, parse_generation(generation)?);
            Ok((
                taken || holder.as_deref() == Some(token.as_bytes()),
                fetched,
            ))
        }
        if self.clustered {
            return Box::pin(async move {
                let client = self.client()?;
                let taken = pin!(set_lock(client, lock_key, token, ttl));
                let holder = pin!(client.get::<Option<Bytes>, _>(lock_key));
                let value = pin!(client.get::<Option<Bytes>, _>(key));
                let generation = pin!(client.get::<Option<Bytes>, _>(generation_key));
                let (taken, holder, value, generation) =
                    futures_util::future::join4(taken, holder, value, generation).await;
                let reads = (
                    holder.map_err(backend)?,
                    entry_value(value).map_err(backend)?,
                    generation.map_err(backend)?,
                );
                held(token, taken, reads)
            });
        }
        Box::pin(async move {
            let client = self.client()?;
            let taken = pin!(set_lock(client, lock_key, token, ttl));
            let reads = pin!(client.mget::<Reads, _>((lock_key, key, generation_key)));
            let (taken, reads) = futures_util::future::join(taken, reads).await;
            held(token, taken, reads.map_err(backend)?)
        })
    }

    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.remove_tagged(tag_keys, |_| {}))
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
            if !self.clustered {
                let keys: Vec<&str> = std::iter::once(counter_key)
                    .chain(markers.iter().map(String::as_str))
                    .collect();
                return client
                    .eval(RAISE_SCRIPT, keys, window_ms)
                    .await
                    .map_err(backend);
            }
            // On a Cluster the markers live on other nodes: the counter
            // first, then each marker with a script of its own key.
            let raised: u64 = client.incr(counter_key).await.map_err(backend)?;
            let value = raised.to_string();
            let calls = markers.iter().map(|marker| {
                let args = vec![value.as_str(), window_ms.as_str()];
                client.eval::<i64, _, _, _>(RAISE_ONE_SCRIPT, marker.as_str(), args)
            });
            for result in futures_util::future::join_all(calls).await {
                result.map_err(backend)?;
            }
            Ok(raised)
        })
    }

    fn put_fenced<'a>(
        &'a self,
        writes: &'a [Write],
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Fenced, StoreError>> {
        Box::pin(async move {
            let client = self.client()?;
            if !self.clustered {
                return put_fenced_script(client, writes, fence).await;
            }
            // Markers, entries and tag indexes live on several nodes: check,
            // write, and check again. A marker raised between the two checks
            // belongs to an invalidation that may have missed the write; the
            // write is then taken back (each entry only if it still holds
            // the value written here). The lock, on a node of its own, is
            // released with the second check.
            let release = async {
                let Some((lock_key, token)) = &fence.unlock else {
                    return Ok(false);
                };
                let _: i64 = client
                    .eval(UNLOCK_SCRIPT, lock_key.as_str(), token.as_str())
                    .await
                    .map_err(backend)?;
                Ok::<_, StoreError>(true)
            };
            if raised(client, fence).await? {
                return Ok(Fenced::new(false, release.await?));
            }
            self.put(writes).await?;
            let (raised_since, unlocked) =
                futures_util::future::join(raised(client, fence), release).await;
            let unlocked = unlocked?;
            if !raised_since? {
                return Ok(Fenced::new(true, unlocked));
            }
            let calls = writes.iter().map(|w| {
                client.eval::<i64, _, _, _>(TAKE_BACK_SCRIPT, w.key.as_str(), w.value.clone())
            });
            for result in futures_util::future::join_all(calls).await {
                result.map_err(backend)?;
            }
            Ok(Fenced::new(false, unlocked))
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

/// Increments the counter (`KEYS[1]`) and raises every marker (the other
/// keys) to its new value for `ARGV[1]` milliseconds; returns the new value.
const RAISE_SCRIPT: &str = "local n = redis.call('INCR', KEYS[1]) \
for i = 2, #KEYS do \
local v = tonumber(redis.call('GET', KEYS[i])) \
if not v or v < n then redis.call('SET', KEYS[i], n, 'PX', ARGV[1]) end end \
return n";

/// Raises one marker (`KEYS[1]`) to `ARGV[1]` for `ARGV[2]` milliseconds,
/// unless it already holds more.
const RAISE_ONE_SCRIPT: &str = "local v = tonumber(redis.call('GET', KEYS[1])) \
if not v or v < tonumber(ARGV[1]) then \
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 1";

/// Deletes `KEYS[1]` if it still holds `ARGV[1]`.
const TAKE_BACK_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// The fenced write on one Redis, as one script: `KEYS` are the markers
/// (`ARGV[2]` of them), the lock to release when `ARGV[4]` (its token) is
/// not empty, then each write's key followed by its tag indexes; `ARGV` are
/// the fence's counter, the number of markers, the time now (milliseconds),
/// the lock's token, then for each write its value, TTL (milliseconds) and
/// number of tags. Nothing is written when a marker holds more than the
/// counter (or anything but a number); the writes are those of
/// [`queue_writes`]. The lock is released after them, or alone, if it still
/// holds the token. Returns 1 when written, 0 when not.
const PUT_FENCED_SCRIPT: &str = "local c = tonumber(ARGV[1]) \
local m = tonumber(ARGV[2]) \
local ok = 1 \
for i = 1, m do \
local raw = redis.call('GET', KEYS[i]) \
if raw and not (tonumber(raw) and tonumber(raw) <= c) then ok = 0 end end \
local lock = m + 1 \
local k = m + 1 \
if ARGV[4] ~= '' then k = k + 1 end \
local now = tonumber(ARGV[3]) \
if ok == 1 then for a = 5, #ARGV, 3 do \
local key = KEYS[k] \
k = k + 1 \
local ttl = tonumber(ARGV[a + 1]) \
redis.call('SET', key, ARGV[a], 'PX', ttl) \
for t = 1, tonumber(ARGV[a + 2]) do \
local tag = KEYS[k] \
k = k + 1 \
redis.call('ZADD', tag, now + ttl, key) \
redis.call('ZREMRANGEBYSCORE', tag, '-inf', now) \
redis.call('PEXPIRE', tag, ttl, 'NX') \
redis.call('PEXPIRE', tag, ttl, 'GT') end end end \
if ARGV[4] ~= '' and redis.call('GET', KEYS[lock]) == ARGV[4] then \
redis.call('DEL', KEYS[lock]) end \
return ok";

async fn put_fenced_script(
    client: &fred::prelude::Client,
    writes: &[Write],
    fence: &Fence,
) -> Result<Fenced, StoreError> {
    let mut keys: Vec<&str> = fence.markers.iter().map(String::as_str).collect();
    let mut args: Vec<fred::types::Value> = Vec::with_capacity(4 + writes.len() * 3);
    args.push(fence.counter.to_string().into());
    args.push(fence.markers.len().to_string().into());
    args.push(crate::entry::now_ms().to_string().into());
    match &fence.unlock {
        Some((lock_key, token)) => {
            keys.push(lock_key);
            args.push(token.as_str().into());
        }
        None => args.push("".into()),
    }
    for w in writes {
        keys.push(&w.key);
        keys.extend(w.tags.iter().map(String::as_str));
        args.push(w.value.clone().into());
        args.push(w.ttl.as_millis().max(1).to_string().into());
        args.push(w.tags.len().to_string().into());
    }
    let written: i64 = client
        .eval(PUT_FENCED_SCRIPT, keys, args)
        .await
        .map_err(backend)?;
    Ok(Fenced {
        stored: written == 1,
        unlocked: fence.unlock.is_some(),
    })
}

/// Whether one of the fence's markers holds more than its counter (or
/// anything but a number).
async fn raised(client: &fred::prelude::Client, fence: &Fence) -> Result<bool, StoreError> {
    let pipe = client.pipeline();
    for marker in &fence.markers {
        let () = pipe.get(marker.as_str()).await.map_err(backend)?;
    }
    let values: Vec<Option<Bytes>> = pipe.all().await.map_err(backend)?;
    Ok(values
        .into_iter()
        .any(|v| parse_generation(v).map_or(true, |v| v > fence.counter)))
}

/// Queues `writes` on a pipeline: each value with `SET ... PX`, and its tag
/// indexes.
async fn queue_writes(
    pipe: &fred::clients::Pipeline<fred::clients::Client>,
    writes: &[Write],
) -> Result<(), StoreError> {
    let now = crate::entry::now_ms();
    for w in writes {
        let value = w.value.clone();
        let () = pipe
            .set(w.key.as_str(), value, Some(px(w.ttl)), None, false)
            .await
            .map_err(backend)?;
        let expires = now.saturating_add(w.ttl.as_millis() as u64) as f64;
        let ttl_ms = i64::try_from(w.ttl.as_millis()).unwrap_or(i64::MAX);
        for tag in &w.tags {
            // The index: entry keys scored by their expiry, pruned of
            // expired keys on every write, itself expiring after its
            // longest-lived entry.
            let tag = tag.as_str();
            let member = (expires, w.key.as_str());
            let () = pipe
                .zadd(tag, None, None, false, false, member)
                .await
                .map_err(backend)?;
            let () = pipe
                .zremrangebyscore(tag, f64::NEG_INFINITY, now as f64)
                .await
                .map_err(backend)?;
            for option in [ExpireOptions::NX, ExpireOptions::GT] {
                let () = pipe
                    .pexpire(tag, ttl_ms, Some(option))
                    .await
                    .map_err(backend)?;
            }
        }
    }
    Ok(())
}

/// How many members of a tag index one page of an invalidation asks for
/// (`ZSCAN ... COUNT`): each command of the walk works on about this many.
const TAG_PAGE: u32 = 256;

/// One `ZSCAN` page of the tag index `tag` from `cursor`: the next cursor
/// (`"0"` at the end) and the members read, each with its score.
async fn scan_tag(
    client: &fred::prelude::Client,
    tag: &str,
    cursor: &str,
) -> Result<(String, Vec<(String, String)>), StoreError> {
    let zscan = CustomCommand::new_static("ZSCAN", ClusterHash::Offset(0), false);
    let args: Vec<fred::types::Value> =
        vec![tag.into(), cursor.into(), "COUNT".into(), TAG_PAGE.into()];
    let reply: fred::types::Value = client.custom(zscan, args).await.map_err(backend)?;
    let fred::types::Value::Array(mut reply) = reply else {
        return Err(StoreError::Backend(format!("ZSCAN answered {reply:?}")));
    };
    let (Some(fred::types::Value::Array(items)), Some(next)) = (reply.pop(), reply.pop()) else {
        return Err(StoreError::Backend("ZSCAN answered no page".into()));
    };
    let next = next
        .as_string()
        .ok_or_else(|| StoreError::Backend("ZSCAN answered no cursor".into()))?;
    // Member, score, member, score...
    let mut items = items.into_iter();
    let mut page = Vec::with_capacity(items.len() / 2);
    while let (Some(member), Some(score)) = (items.next(), items.next()) {
        if let (Some(member), Some(score)) = (member.into_string(), score.into_string()) {
            page.push((member, score));
        }
    }
    Ok((next, page))
}

/// Removes each member of `page` from the index `tag` if it still has the
/// score it was read with. A member written again meanwhile (its entry
/// stored anew, with a new expiry as its score) stays listed: its new entry
/// must stay reachable by the next invalidation. One key, so one slot.
async fn unlist(
    client: &fred::prelude::Client,
    tag: &str,
    page: &[(String, String)],
) -> Result<(), StoreError> {
    let args: Vec<&str> = page
        .iter()
        .flat_map(|(member, score)| [member.as_str(), score.as_str()])
        .collect();
    let _: i64 = client
        .eval(UNLIST_SCRIPT, tag, args)
        .await
        .map_err(backend)?;
    Ok(())
}

/// `ZREM` of each member (odd arguments) whose score is still the one given
/// after it (even arguments).
const UNLIST_SCRIPT: &str = "local n = 0 \
for i = 1, #ARGV, 2 do \
local s = redis.call('ZSCORE', KEYS[1], ARGV[i]) \
if s and tonumber(s) == tonumber(ARGV[i + 1]) then \
n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end end \
return n";

/// UNLINKs `keys` and returns how many existed: one command on a single
/// Redis; on a Cluster one per hash slot, pipelined, so that no command
/// spans slots.
async fn unlink_batch(
    client: &fred::prelude::Client,
    clustered: bool,
    keys: &[String],
) -> Result<u64, StoreError> {
    if keys.is_empty() {
        return Ok(0);
    }
    if !clustered {
        return client.unlink(keys.to_vec()).await.map_err(backend);
    }
    let slots = fred::util::group_by_hash_slot(keys.iter().map(String::as_str)).map_err(backend)?;
    let pipe = client.pipeline();
    for keys in slots.into_values() {
        let () = pipe.unlink(Vec::from(keys)).await.map_err(backend)?;
    }
    let counts: Vec<u64> = pipe.all().await.map_err(backend)?;
    Ok(counts.into_iter().sum())
}

/// Compare-and-delete: only the holder of the token releases the lock.
const UNLOCK_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// UNLINKs keys one command each, in one pipeline, and reports which existed:
/// no multi-key command, so it never crosses Cluster hash slots.
async fn unlink_each_report(
    client: &fred::prelude::Client,
    keys: &[String],
) -> Result<Vec<bool>, StoreError> {
    match keys {
        [] => Ok(Vec::new()),
        [key] => {
            let count: u64 = client.unlink(key.as_str()).await.map_err(backend)?;
            Ok(vec![count > 0])
        }
        _ => {
            let pipe = client.pipeline();
            for key in keys {
                let () = pipe.unlink(key.as_str()).await.map_err(backend)?;
            }
            let counts: Vec<u64> = pipe.all().await.map_err(backend)?;
            Ok(counts.into_iter().map(|c| c > 0).collect())
        }
    }
}

/// How many of `keys` existed and were unlinked.
async fn unlink_each(client: &fred::prelude::Client, keys: &[String]) -> Result<u64, StoreError> {
    let existed = unlink_each_report(client, keys).await?;
    Ok(existed.into_iter().filter(|e| *e).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_fail_at_build_with_a_message() {
        for (url, words) in [
            ("localhost:6379", "no scheme"),
            ("http://localhost:6379", "not supported"),
            ("redis://", "not valid"),
        ] {
            let e = RedisStore::builder(url).build().unwrap_err().to_string();
            assert!(e.contains(words), "{url}: {e}");
        }
        let e = RedisStore::builder("redis://127.0.0.1:1")
            .pool_size(0)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("pool size"), "{e}");
    }

    /// A `redis-server` of its own on a free loopback port, killed on drop.
    struct Server(std::process::Child, u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn redis_server() -> Server {
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

    #[test]
    fn only_policies_that_cannot_evict_counters_or_tag_indexes_are_safe() {
        for (maxmemory, policy) in [
            ("0", "allkeys-lru"),
            ("0", "volatile-lru"),
            ("104857600", "noeviction"),
        ] {
            assert_eq!(eviction_risk(maxmemory, policy), None, "{policy}");
        }
        for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            let risk = eviction_risk("104857600", policy).unwrap();
            assert!(risk.contains("generation counters"), "{risk}");
            assert!(
                risk.contains("set maxmemory-policy to noeviction"),
                "{risk}"
            );
        }
        for policy in [
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            let risk = eviction_risk("104857600", policy).unwrap();
            assert!(risk.contains("tag indexes"), "{risk}");
            assert!(
                risk.contains("set maxmemory-policy to noeviction"),
                "{risk}"
            );
        }
        assert!(eviction_risk("104857600", "").is_some());
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let e = RedisStore::builder("redis://127.0.0.1:1")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("Tokio runtime"), "{e}");
    }
}
