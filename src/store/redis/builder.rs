//! The settings of a [`RedisStore`] and the fred pool they build.

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, Pool, ReconnectPolicy};

use super::{address, eviction::check_eviction, tracked::Tracked, RedisStore};
use crate::error::{Error, StoreError};

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
    /// `rediss://...` (TLS, with the `tls` feature),
    /// `redis-cluster://host:port?node=host2:port2...`, or, behind Redis
    /// Sentinel, `redis-sentinel://[user:pass@]sentinel1:26379[/db]?sentinelServiceName=mymaster&node=sentinel2:26379...`
    /// (the hosts are the sentinels; the store connects to the master they
    /// name and follows a failover). See `docs/managed-redis.md`.
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
    /// generation (`MGET`): less work per hit for the server.
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
            "redis"
                | "rediss"
                | "redis-cluster"
                | "rediss-cluster"
                | "redis-sentinel"
                | "rediss-sentinel"
        ) {
            return Err(Error::config(format!(
                "Redis URL scheme {scheme:?} is not supported: use redis://, rediss://, \
                 redis-cluster://, rediss-cluster://, redis-sentinel:// or rediss-sentinel://"
            )));
        }
        if scheme.ends_with("-sentinel") && !self.url.contains("sentinelServiceName=") {
            return Err(Error::config(
                "a redis-sentinel:// URL needs the service name of the master: \
                 redis-sentinel://sentinel1:26379/0?sentinelServiceName=mymaster&node=sentinel2:26379",
            ));
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
    ///
    /// If Redis does not answer within the connect timeout, that is logged
    /// once at `warn`, naming the server (never the password).
    pub fn build(self) -> Result<RedisStore, Error> {
        let timeout = self.connect_timeout;
        let store = self.start()?;
        let pool = store.pool.clone();
        tokio::spawn(async move {
            let error = match tokio::time::timeout(timeout, pool.wait_for_connect()).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no connection within {} ms", timeout.as_millis()),
            };
            tracing::warn!(
                store = %format_args!("Redis at {}", address(&pool.next().client_config())),
                %error,
                "cache store unreachable at start; requests pass through to the service \
                 until it answers (the pool keeps reconnecting)"
            );
        });
        Ok(store)
    }

    /// Builds the store and starts connecting, without a word.
    fn start(self) -> Result<RedisStore, Error> {
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
        let store = self.start()?;
        let url = address(&store.pool.next().client_config());
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

    #[test]
    fn logged_addresses_keep_the_user_and_drop_the_password() {
        for (url, logged) in [
            (
                "redis://app:pw1@10.0.0.1:6380/2",
                "redis://app@10.0.0.1:6380/2",
            ),
            (
                "redis-cluster://:pw2@10.0.0.1:7000?node=10.0.0.2:7001",
                "redis-cluster://10.0.0.1:7000?node=10.0.0.2:7001",
            ),
            (
                "redis-sentinel://:pw3@10.0.0.1:26379/1?sentinelServiceName=main&node=10.0.0.2:26380",
                "redis-sentinel://10.0.0.1:26379/1?sentinelServiceName=main&node=10.0.0.2:26380",
            ),
        ] {
            assert_eq!(address(&Config::from_url(url).unwrap()), logged, "{url}");
        }
    }

    #[tokio::test]
    async fn a_sentinel_url_without_a_service_name_fails_at_build() {
        let e = RedisStore::builder("redis-sentinel://127.0.0.1:26379")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("sentinelServiceName"), "{e}");
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let e = RedisStore::builder("redis://127.0.0.1:1")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("Tokio runtime"), "{e}");
    }
}
