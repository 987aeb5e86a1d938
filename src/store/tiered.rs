//! The two-tier store: an in-process L1 (moka) in front of Redis, kept
//! coherent by Redis client-side caching.
//!
//! A RESP3 connection per Redis node subscribes to invalidations in broadcast
//! mode (`CLIENT TRACKING ON BCAST`, optionally per key prefix): whenever a key
//! is written, deleted or expires on the server, every instance drops it from
//! its L1. While any tracking connection is down the L1 is flushed and
//! bypassed; when it is back, tracking is switched on again and the L1 starts
//! empty. Each fill of the L1 is checked against the invalidations that
//! arrived while it was being read, so a late fill cannot bring back an
//! invalidated value.

use std::{
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::{
    clients::Client,
    interfaces::{ClientLike, EventInterface, TrackingInterface},
    prelude::{Builder, ServerConfig},
    types::RespVersion,
};
use moka::{sync::Cache, Expiry};

use super::{generations::Generations, BoxFuture, Fetched, KeyHasher, RedisStore, Store, Write};
use crate::error::{Error, StoreError};

/// The size and scope of the in-process tier.
///
/// ```
/// use tower_redis_cache::store::LocalTier;
/// let tier = LocalTier::new()
///     .max_bytes(32 * 1024 * 1024)
///     .max_entries(50_000)
///     .track_prefix("api:");
/// # let _ = tier;
/// ```
#[derive(Debug, Clone)]
pub struct LocalTier {
    max_bytes: u64,
    max_entries: u64,
    max_ttl: Duration,
    prefixes: Vec<String>,
}

impl Default for LocalTier {
    /// 64 MiB, 100 000 entries, at most 10 minutes per entry, every key tracked.
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_entries: 100_000,
            max_ttl: Duration::from_secs(600),
            prefixes: Vec::new(),
        }
    }
}

impl LocalTier {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The most bytes (keys and values) the tier holds; least recently used
    /// entries go first past it.
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max;
        self
    }

    /// The most entries the tier holds.
    pub fn max_entries(mut self, max: u64) -> Self {
        self.max_entries = max;
        self
    }

    /// The longest an entry stays in the tier, whatever its TTL in Redis.
    pub fn max_ttl(mut self, max: Duration) -> Self {
        self.max_ttl = max;
        self
    }

    /// Tracks only keys starting with `prefix` (e.g. the layer's `"api:"`);
    /// may be given several times. Without any, every key of the Redis
    /// server is tracked: fine for a Redis dedicated to the cache, wasteful
    /// on a shared one.
    pub fn track_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }
}

/// A [`Store`]: an in-process tier in front of a [`RedisStore`], coherent
/// across instances through Redis client tracking.
///
/// A hit in the tier costs no network round trip. Every instance drops an
/// entry from its tier as soon as Redis tells it the key changed; this
/// instance's own invalidations drop it at once.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_redis_cache::Error> {
/// use tower_redis_cache::store::{LocalTier, RedisStore, TieredStore};
///
/// let redis = RedisStore::builder("redis://127.0.0.1:6379").connect().await?;
/// let store = TieredStore::connect(redis, LocalTier::new().track_prefix("api:")).await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TieredStore {
    shared: Arc<Shared>,
}

struct Shared {
    redis: RedisStore,
    entries: Cache<String, Local, KeyHasher>,
    generations: Generations,
    /// How many tracking connections are down; the tier is used only at 0.
    down: AtomicU64,
    /// Whether tracking was switched on everywhere at least once.
    started: AtomicBool,
    /// Invalidations seen, striped by key hash: a fill is kept only if its
    /// stripe did not move while the value was read.
    epochs: [AtomicU64; STRIPES],
    /// The tracking clients, owned here so they live as long as the tier.
    trackers: Mutex<Vec<Client>>,
    prefixes: Vec<String>,
    max_ttl: Duration,
}

const STRIPES: usize = 64;

#[derive(Clone)]
struct Local {
    bytes: Bytes,
    /// Decoded once, when the tier is filled.
    entry: Arc<crate::entry::Entry>,
    ttl: Duration,
}

struct LocalExpiry;

impl Expiry<String, Local> for LocalExpiry {
    fn expire_after_create(&self, _: &String, v: &Local, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

fn stripe(key: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % STRIPES
}

impl TieredStore {
    /// Puts a tier in front of `redis` and switches tracking on (one RESP3
    /// connection per Redis node; per primary on a cluster). Fails if the
    /// tracking connections cannot be opened.
    pub async fn connect(redis: RedisStore, tier: LocalTier) -> Result<Self, Error> {
        if tier.max_entries == 0 || tier.max_bytes == 0 {
            return Err(Error::config(
                "local tier max_bytes and max_entries must be above zero",
            ));
        }
        let floor = u32::try_from((tier.max_bytes / tier.max_entries).max(1)).unwrap_or(u32::MAX);
        let max_ttl = tier.max_ttl;
        let entries = Cache::builder()
            .max_capacity(tier.max_bytes)
            // Every entry weighs at least max_bytes / max_entries, so the
            // tier also never holds more than max_entries.
            .weigher(move |k: &String, v: &Local| {
                u32::try_from(k.len() + v.bytes.len())
                    .unwrap_or(u32::MAX)
                    .max(floor)
            })
            .expire_after(LocalExpiry)
            .build_with_hasher(KeyHasher::default());
        let generations = Generations::new(max_ttl);
        let shared = Arc::new(Shared {
            // The tier keeps the generations, kept current by its own
            // tracking: the store behind it reads them from Redis.
            redis: redis.without_tracked_generations(),
            entries,
            generations,
            down: AtomicU64::new(0),
            started: AtomicBool::new(false),
            epochs: std::array::from_fn(|_| AtomicU64::new(0)),
            trackers: Mutex::new(Vec::new()),
            prefixes: tier.prefixes,
            max_ttl,
        });
        Shared::start_tracking(&shared).await?;
        Ok(Self { shared })
    }

    /// The Redis store behind the tier.
    pub fn redis(&self) -> &RedisStore {
        &self.shared.redis
    }

    /// Reads through to Redis with `call` and keeps what it read in the
    /// tier, unless an invalidation of the entry or its namespace ran
    /// meanwhile.
    fn fill<'a, T: Send + 'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
        call: BoxFuture<'a, Result<T, StoreError>>,
        read: fn(&T) -> &Fetched,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let s = &self.shared;
        Box::pin(async move {
            let (entry_stripe, gen_stripe) = (stripe(key), stripe(generation_key));
            let before = (
                s.epochs[entry_stripe].load(SeqCst),
                s.epochs[gen_stripe].load(SeqCst),
            );
            let answer = call.await?;
            let fetched = read(&answer);
            let after = (
                s.epochs[entry_stripe].load(SeqCst),
                s.epochs[gen_stripe].load(SeqCst),
            );
            if s.coherent() && before == after {
                s.generations.insert(generation_key, fetched.generation);
                if let Some(value) = &fetched.value {
                    if let Some((entry, ttl)) = Shared::decode_for_tier(value, s.max_ttl) {
                        let local = Local {
                            bytes: value.clone(),
                            entry: Arc::new(entry),
                            ttl,
                        };
                        s.entries.insert(key.to_owned(), local);
                    }
                }
            }
            Ok(answer)
        })
    }

    /// Whether the tier is in use now (every tracking connection is up).
    pub fn is_coherent(&self) -> bool {
        self.shared.coherent()
    }

    /// How many entries the tier holds now.
    pub fn local_entries(&self) -> u64 {
        self.shared.entries.run_pending_tasks();
        self.shared.entries.entry_count()
    }
}

impl Shared {
    fn coherent(&self) -> bool {
        self.started.load(SeqCst) && self.down.load(SeqCst) == 0
    }

    fn flush(&self) {
        for e in &self.epochs {
            e.fetch_add(1, SeqCst);
        }
        self.entries.invalidate_all();
        self.generations.clear();
    }

    fn drop_key(&self, key: &str) {
        self.epochs[stripe(key)].fetch_add(1, SeqCst);
        self.entries.invalidate(key);
        self.generations.remove(key);
    }

    async fn start_tracking(shared: &Arc<Self>) -> Result<(), Error> {
        let pool_client = shared.redis.pool().next();
        let base = pool_client.client_config();
        let servers: Vec<(String, u16)> = if pool_client.is_clustered() {
            let mut servers: Vec<(String, u16)> = pool_client
                .active_connections()
                .into_iter()
                .map(|s| (s.host.to_string(), s.port))
                .collect();
            servers.sort();
            servers.dedup();
            servers
        } else {
            Vec::new()
        };
        let configs = if servers.is_empty() {
            vec![base.clone()]
        } else {
            servers
                .into_iter()
                .map(|(host, port)| {
                    let mut c = base.clone();
                    c.server = ServerConfig::new_centralized(host, port);
                    c
                })
                .collect()
        };
        let mut trackers = Vec::new();
        for mut config in configs {
            config.version = RespVersion::RESP3;
            let mut builder = Builder::from_config(config);
            if let Some(policy) = pool_client.client_reconnect_policy() {
                builder.set_policy(policy);
            }
            let client = builder
                .build()
                .map_err(|e| Error::config(format!("tracking client: {e}")))?;
            client.init().await.map_err(|e| {
                Error::Store(StoreError::Backend(format!("tracking connection: {e}")))
            })?;
            Self::watch(shared, &client);
            client
                .start_tracking(shared.prefixes.clone(), true, false, false, false)
                .await
                .map_err(|e| Error::Store(StoreError::Backend(format!("CLIENT TRACKING: {e}"))))?;
            trackers.push(client);
        }
        *shared.trackers.lock().unwrap_or_else(|e| e.into_inner()) = trackers;
        shared.flush();
        shared.started.store(true, SeqCst);
        Ok(())
    }

    /// Wires a tracking client's events to the tier. Events dropped because
    /// a listener fell behind count as the worst they could have been: a
    /// flush, a lost connection, a reconnection.
    fn watch(shared: &Arc<Self>, client: &Client) {
        let weak = Arc::downgrade(shared);
        super::listen(client.invalidation_rx(), move |invalidation| {
            let shared = weak.upgrade();
            if let Some(shared) = &shared {
                match invalidation {
                    // FLUSHALL / FLUSHDB, or some were missed.
                    None => shared.flush(),
                    Some(invalidation) if invalidation.keys.is_empty() => shared.flush(),
                    Some(invalidation) => {
                        for key in &invalidation.keys {
                            match key.as_str() {
                                Some(k) => shared.drop_key(k),
                                None => shared.flush(),
                            }
                        }
                    }
                }
            }
            std::future::ready(shared.is_some())
        });
        let weak = Arc::downgrade(shared);
        let this = client.clone();
        let up = Arc::new(AtomicBool::new(true));
        let up_on_error = up.clone();
        super::listen(client.error_rx(), move |error| {
            let shared = weak.upgrade();
            if let Some(shared) = &shared {
                if up_on_error.swap(false, SeqCst) {
                    shared.down.fetch_add(1, SeqCst);
                    let error =
                        error.map_or_else(|| "events missed".to_owned(), |(e, _)| e.to_string());
                    tracing::warn!(%error, "cache L1 tracking connection lost; L1 flushed and bypassed");
                }
                shared.flush();
            }
            std::future::ready(shared.is_some())
        });
        let weak = Arc::downgrade(shared);
        super::listen(client.reconnect_rx(), move |_server| {
            let weak = weak.clone();
            let this = this.clone();
            let up = up.clone();
            async move {
                let Some(shared) = weak.upgrade() else {
                    return false;
                };
                let tracked = this
                    .start_tracking(shared.prefixes.clone(), true, false, false, false)
                    .await;
                match tracked {
                    Ok(()) => {
                        shared.flush();
                        if !up.swap(true, SeqCst) {
                            shared.down.fetch_sub(1, SeqCst);
                        }
                        tracing::info!("cache L1 tracking restored; L1 back in use");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cache L1 tracking not restored; L1 stays bypassed");
                    }
                }
                true
            }
        });
    }

    /// Decodes a value read from Redis for the tier, with how long it may
    /// stay there: until the entry would leave Redis (fresh plus stale
    /// windows), capped by `max_ttl`. `None` for a value that does not decode.
    fn decode_for_tier(value: &Bytes, max: Duration) -> Option<(crate::entry::Entry, Duration)> {
        let entry = crate::entry::decode(value)?;
        let lives = entry.lives_ms();
        let left = (entry.stored_at_ms + lives).checked_sub(crate::entry::now_ms())?;
        Some((entry, Duration::from_millis(left).min(max)))
    }
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStore")
            .field("redis", &self.shared.redis)
            .field("coherent", &self.shared.coherent())
            .field("local_entries", &self.shared.entries.entry_count())
            .finish()
    }
}

impl Store for TieredStore {
    fn fetch<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
    ) -> BoxFuture<'a, Result<Fetched, StoreError>> {
        if let Some(fetched) = self.fetch_now(key, generation_key) {
            return Box::pin(std::future::ready(fetched));
        }
        let call = self.shared.redis.fetch(key, generation_key);
        self.fill(key, generation_key, call, |f| f)
    }

    fn fetch_within<'a>(
        &'a self,
        key: &'a str,
        generation_key: &'a str,
        budget: Duration,
    ) -> Option<BoxFuture<'a, Result<Fetched, StoreError>>> {
        if let Some(fetched) = self.fetch_now(key, generation_key) {
            return Some(Box::pin(std::future::ready(fetched)));
        }
        let call = self
            .shared
            .redis
            .fetch_within(key, generation_key, budget)?;
        Some(self.fill(key, generation_key, call, |f| f))
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
        if let Some(fetched) = self.fetch_now(key, generation_key) {
            return Some(Box::pin(std::future::ready(fetched.map(|f| (f, false)))));
        }
        let call =
            self.shared
                .redis
                .fetch_or_lock(key, generation_key, lock_key, token, ttl, budget)?;
        Some(self.fill(key, generation_key, call, |(f, _)| f))
    }

    fn fetch_now(&self, key: &str, generation_key: &str) -> Option<Result<Fetched, StoreError>> {
        let s = &self.shared;
        if !s.coherent() {
            return None;
        }
        let generation = s.generations.get(generation_key)?;
        let local = s.entries.get(key)?;
        let mut fetched = Fetched::new(Some(local.bytes), generation);
        fetched.decoded = Some(local.entry);
        Some(Ok(fetched))
    }

    fn put<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // The tier is filled on reads only: a write's own invalidation may
            // race with it, and a read checks for that.
            for w in writes {
                self.shared.drop_key(&w.key);
            }
            self.shared.redis.put(writes).await
        })
    }

    fn put_and_unlock<'a>(
        &'a self,
        writes: &'a [Write],
        lock_key: &'a str,
        token: &'a str,
        owned: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            for w in writes {
                self.shared.drop_key(&w.key);
            }
            self.shared
                .redis
                .put_and_unlock(writes, lock_key, token, owned)
                .await
        })
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let removed = self.shared.redis.delete(keys).await;
            keys.iter().for_each(|k| self.shared.drop_key(k));
            removed
        })
    }

    fn delete_matching<'a>(
        &'a self,
        pattern: &'a str,
        filter: &'a (dyn Fn(&str) -> bool + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let removed = self.shared.redis.delete_matching(pattern, filter).await;
            let local: Vec<Arc<String>> = self
                .shared
                .entries
                .iter()
                .filter(|(k, _)| filter(k))
                .map(|(k, _)| k)
                .collect();
            local.iter().for_each(|k| self.shared.drop_key(k));
            removed
        })
    }

    fn generation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.shared.redis.generation(key)
    }

    fn bump_generation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let bumped = self.shared.redis.bump_generation(key).await;
            self.shared.drop_key(key);
            bumped
        })
    }

    fn invalidate_tags<'a>(
        &'a self,
        tag_keys: &'a [String],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            // Page by page, every key walked: the tier drops what Redis
            // dropped even when the walk stops halfway.
            self.shared
                .redis
                .remove_tagged(tag_keys, |walked| {
                    walked.iter().for_each(|k| self.shared.drop_key(k))
                })
                .await
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
        self.shared
            .redis
            .lock_and_fetch(lock_key, token, ttl, key, generation_key)
    }

    fn unlock<'a>(
        &'a self,
        lock_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.shared.redis.unlock(lock_key, token)
    }
}
