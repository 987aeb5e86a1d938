//! The two-tier store: an in-process L1 (moka) in front of Redis, kept
//! coherent by Redis client-side caching.
//!
//! A RESP3 connection per Redis node (per primary on a cluster) subscribes
//! to invalidations in broadcast mode (`CLIENT TRACKING ON BCAST`, optionally
//! per key prefix): whenever a key is written, deleted or expires on the
//! server, every instance drops it from its L1. While a tracking connection
//! is down the L1 is flushed and the keys of that node are not served from
//! it; when it is back, tracking is switched on again. Each fill of the L1 is
//! checked against the invalidations that arrived while it was being read,
//! so a late fill cannot bring back an invalidated value.
//!
//! On a cluster the tier follows the topology (fred's cluster-change events,
//! and a periodic `CLUSTER SLOTS`): it opens a tracking connection to each
//! new primary, closes those of nodes that left, and drops every entry whose
//! slot changed owner. The keys of a primary are served from the L1 only
//! while it is tracked (see [`topology`]).

mod topology;
mod tracking;

use std::{
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::{
    interfaces::{ClientLike, ClusterInterface},
    prelude::ServerConfig,
    types::config::Server,
};
use moka::{sync::Cache, Expiry};
use tokio::sync::Notify;

use self::topology::{Slots, Topology};

use super::{
    generations::Generations, Backend, BoxFuture, Fence, Fenced, Fetched, KeyHasher, PathPrefix,
    RedisStore, Store, Write,
};
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
    topology_refresh: Duration,
}

impl Default for LocalTier {
    /// 64 MiB, 100 000 entries, at most 10 minutes per entry, every key
    /// tracked, a cluster's topology read again every second.
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_entries: 100_000,
            max_ttl: Duration::from_secs(600),
            prefixes: Vec::new(),
            topology_refresh: Duration::from_secs(1),
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

    /// On a Redis Cluster, how often the tier reads the topology again
    /// (`CLUSTER SLOTS`) to find primaries added by a resharding or promoted
    /// by a failover; fred's own topology changes (after a `MOVED`, a lost
    /// connection) are followed at once. Until the tier sees such a change,
    /// keys that moved to an untracked primary can be served from the L1
    /// after a change made there, so this bounds that window. Default 1 s;
    /// at least 10 ms. Also how often a tracking connection that could not
    /// be opened or switched on is tried again (on a single Redis, its only
    /// use).
    pub fn topology_refresh(mut self, every: Duration) -> Self {
        self.topology_refresh = every.max(Duration::from_millis(10));
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
    /// Per hash slot, whether its primary is tracked (see [`Slots`]).
    slots: Slots,
    /// Invalidations seen, striped by key hash: a fill is kept only if its
    /// stripe did not move while the value was read.
    epochs: [AtomicU64; STRIPES],
    /// The slots' owners and the tracking clients, owned here so they live
    /// as long as the tier.
    topology: Mutex<Topology>,
    /// Wakes the task that opens tracking connections to new primaries.
    wake: Arc<Notify>,
    clustered: bool,
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
    /// The key's hash slot and its version when the entry was read.
    slot: u16,
    version: u32,
    /// The same for the namespace's generation key.
    generation_slot: u16,
    generation_version: u32,
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
    /// connection per Redis node; per primary on a cluster, following the
    /// cluster's topology from then on). Fails if a tracking connection
    /// cannot be opened. A server that refuses `CLIENT TRACKING` (an ACL
    /// without the `client` command, a renamed command) does not fail the
    /// call: the L1 stays off for its keys, with a warning, and every lookup
    /// of them goes to Redis.
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
                u32::try_from(k.len() + v.bytes.len() + v.entry.decoded_reserve())
                    .unwrap_or(u32::MAX)
                    .max(floor)
            })
            .expire_after(LocalExpiry)
            .build_with_hasher(KeyHasher::default());
        let generations = Generations::new(max_ttl);
        let clustered = redis.pool().next().is_clustered();
        let slots = Slots::new(clustered);
        let topology = Mutex::new(Topology::new(slots.len()));
        let shared = Arc::new(Shared {
            // The tier keeps the generations, kept current by its own
            // tracking: the store behind it reads them from Redis.
            redis: redis.without_tracked_generations(),
            entries,
            generations,
            slots,
            epochs: std::array::from_fn(|_| AtomicU64::new(0)),
            topology,
            wake: Arc::new(Notify::new()),
            clustered,
            prefixes: tier.prefixes,
            max_ttl,
        });
        if clustered {
            for client in shared.redis.pool().clients() {
                Shared::follow(&shared, client);
            }
            if let Some(routing) = shared.redis.pool().next().cached_cluster_state() {
                shared.apply_routing(&routing);
            }
        } else {
            let config = shared.redis.pool().next().client_config();
            let server = match &config.server {
                ServerConfig::Centralized { server } => server.clone(),
                _ => Server::new("redis", 0),
            };
            let (_, retired) = shared.topology().set_owners(vec![Some(server)]);
            drop(retired);
        }
        Shared::open_missing(&shared, true).await?;
        tokio::spawn(Shared::refresh_topology(
            Arc::downgrade(&shared),
            shared.wake.clone(),
            tier.topology_refresh,
        ));
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
            let (slot, generation_slot) = (s.slots.slot(key), s.slots.slot(generation_key));
            let state = || {
                (
                    s.epochs[entry_stripe].load(SeqCst),
                    s.epochs[gen_stripe].load(SeqCst),
                    s.slots.version(slot),
                    s.slots.version(generation_slot),
                )
            };
            let before = state();
            let answer = call.await?;
            let fetched = read(&answer);
            let (_, _, version, generation_version) = before;
            if Slots::tracked(version) && Slots::tracked(generation_version) && before == state() {
                s.generations.insert(generation_key, fetched.generation);
                if let Some(value) = &fetched.value {
                    if let Some((entry, ttl)) = Shared::decode_for_tier(value, s.max_ttl) {
                        let local = Local {
                            bytes: value.clone(),
                            entry: Arc::new(entry),
                            ttl,
                            slot,
                            version,
                            generation_slot,
                            generation_version,
                        };
                        s.entries.insert(key.to_owned(), local);
                    }
                }
            }
            Ok(answer)
        })
    }

    /// Whether the tier is in use now for every key: every primary is
    /// tracked. `false` while a tracking connection is down, between a
    /// topology change and the tracking of the new primaries, and for good
    /// when the server refused `CLIENT TRACKING`.
    pub fn is_coherent(&self) -> bool {
        self.shared.slots.all_tracked()
    }

    /// How many entries the tier holds now.
    pub fn local_entries(&self) -> u64 {
        self.shared.entries.run_pending_tasks();
        self.shared.entries.entry_count()
    }
}

impl Shared {
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

    fn topology(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|e| e.into_inner())
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

impl Drop for Shared {
    /// Closes the tracking connections with the tier.
    fn drop(&mut self) {
        let trackers = std::mem::take(&mut self.topology().trackers);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for (_, tracker) in trackers {
                runtime.spawn(async move {
                    let _ = tracker.client.quit().await;
                });
            }
        }
    }
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStore")
            .field("redis", &self.shared.redis)
            .field("coherent", &self.shared.slots.all_tracked())
            .field("local_entries", &self.shared.entries.entry_count())
            .finish()
    }
}

impl Store for TieredStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        self.shared.redis.get(key)
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

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let removed = self.shared.redis.delete(keys).await;
            keys.iter().for_each(|k| self.shared.drop_key(k));
            removed
        })
    }

    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a PathPrefix,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let removed = self.shared.redis.delete_prefix(prefix).await;
            let local: Vec<Arc<String>> = self
                .shared
                .entries
                .iter()
                .filter(|(k, _)| prefix.matches(k))
                .map(|(k, _)| k)
                .collect();
            local.iter().for_each(|k| self.shared.drop_key(k));
            removed
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

    fn counter<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.shared.redis.counter(key)
    }

    fn increment<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let bumped = self.shared.redis.increment(key).await;
            self.shared.drop_key(key);
            bumped
        })
    }

    fn __backend(self: Arc<Self>) -> Arc<dyn Backend> {
        self
    }
}

impl Backend for TieredStore {
    fn describe(&self) -> String {
        let max = self.shared.entries.policy().max_capacity().unwrap_or(0);
        format!(
            "{} with an in-process L1 tier ({})",
            self.shared.redis.describe(),
            crate::store::size(max)
        )
    }

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
        let generation = s.generations.get(generation_key)?;
        let local = s.entries.get(key)?;
        // Read while its slots were tracked, by the same owners.
        if s.slots.version(local.slot) != local.version
            || s.slots.version(local.generation_slot) != local.generation_version
        {
            return None;
        }
        let mut fetched = Fetched::new(Some(local.bytes), generation);
        fetched.decoded = Some(local.entry);
        Some(Ok(fetched))
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
    fn fence<'a>(&'a self, counter_key: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.shared.redis.fence(counter_key)
    }

    fn raise_fence<'a>(
        &'a self,
        counter_key: &'a str,
        markers: &'a [String],
        window: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.shared.redis.raise_fence(counter_key, markers, window)
    }

    fn put_fenced<'a>(
        &'a self,
        writes: &'a [Write],
        fence: &'a Fence,
    ) -> BoxFuture<'a, Result<Fenced, StoreError>> {
        Box::pin(async move {
            for w in writes {
                self.shared.drop_key(&w.key);
            }
            self.shared.redis.put_fenced(writes, fence).await
        })
    }
}
