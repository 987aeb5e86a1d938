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

use std::{
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc, Mutex, MutexGuard, Weak,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::{
    clients::Client,
    error::ErrorKind,
    interfaces::{ClientLike, ClusterInterface, EventInterface, TrackingInterface},
    prelude::{Builder, ServerConfig},
    types::{cluster::ClusterRouting, config::Server, RespVersion},
};
use moka::{sync::Cache, Expiry};
use tokio::sync::Notify;

use self::topology::{Slots, Topology};

use super::{
    generations::Generations, BoxFuture, Fence, Fenced, Fetched, KeyHasher, RedisStore, Store,
    Write,
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
                u32::try_from(k.len() + v.bytes.len())
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

    /// Takes fred's current view of the cluster: the slots that changed
    /// owner get a new version (nothing read before is served) and their
    /// entries are dropped; trackers of nodes that left are closed; the
    /// refresh task is woken to track new primaries.
    fn apply_routing(&self, routing: &ClusterRouting) {
        // An empty table is a topology not known (yet), not one without
        // owners: keep the current one rather than close every tracker.
        if routing.slots().is_empty() {
            return;
        }
        let owners = topology::owners(routing);
        let (moved, retired, tracked, first) = {
            let mut topology = self.topology();
            if topology.owners == owners {
                return;
            }
            let first = topology.owners.iter().all(Option::is_none);
            let (moved, retired) = topology.set_owners(owners);
            topology.sync(&self.slots, |i| moved[i]);
            let tracked = topology.trackers.len();
            (moved, retired, tracked, first)
        };
        let count = moved.iter().filter(|m| **m).count();
        let gone: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(_, local)| {
                moved[usize::from(local.slot)] || moved[usize::from(local.generation_slot)]
            })
            .map(|(k, _)| k)
            .collect();
        for key in &gone {
            self.drop_key(key);
        }
        // Generations are few and read again on the next miss.
        self.generations.clear();
        for e in &self.epochs {
            e.fetch_add(1, SeqCst);
        }
        if !first {
            tracing::info!(
                moved_slots = count,
                dropped = gone.len(),
                tracked_nodes = tracked,
                retired_nodes = retired.len(),
                "cache L1: cluster topology changed; entries of moved slots dropped"
            );
        }
        for client in retired {
            tokio::spawn(async move {
                let _ = client.quit().await;
            });
        }
        self.wake.notify_one();
    }

    /// Follows the topology changes fred sees on a pool client (after a
    /// `MOVED`, a lost connection, a resync).
    fn follow(shared: &Arc<Self>, client: &Client) {
        let weak = Arc::downgrade(shared);
        let client_ = client.clone();
        super::listen(client.cluster_change_rx(), move |_| {
            let shared = weak.upgrade();
            if let Some(shared) = &shared {
                if let Some(routing) = client_.cached_cluster_state() {
                    shared.apply_routing(&routing);
                }
            }
            std::future::ready(shared.is_some())
        });
    }

    /// Reads a cluster's topology again every `every`, and opens tracking
    /// connections to primaries (or the single Redis) that have none, when
    /// woken or on time.
    async fn refresh_topology(weak: Weak<Self>, wake: Arc<Notify>, every: Duration) {
        loop {
            let on_time = tokio::time::timeout(every, wake.notified()).await.is_err();
            let Some(shared) = weak.upgrade() else {
                return;
            };
            if on_time && shared.clustered {
                let client = shared.redis.pool().next().clone();
                if let Err(error) = client.sync_cluster().await {
                    tracing::debug!(%error, "cache L1: cluster topology not read");
                }
                if let Some(routing) = client.cached_cluster_state() {
                    shared.apply_routing(&routing);
                }
            }
            // Failures are retried on the next round.
            let _ = Self::open_missing(&shared, false).await;
        }
    }

    /// Opens a tracking connection to each primary that has none. With
    /// `strict`, the first that cannot be opened fails the call.
    async fn open_missing(shared: &Arc<Self>, strict: bool) -> Result<(), Error> {
        let missing = shared.topology().missing();
        for server in missing {
            match Self::open_tracker(shared, &server).await {
                Ok(()) => {
                    shared.topology().failing.remove(&server);
                }
                Err(error) if strict => return Err(error),
                Err(error) => {
                    if shared.topology().failing.insert(server.clone()) {
                        tracing::warn!(
                            %server, %error,
                            "cache L1 tracking connection not opened; keys of this node not served from L1"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens the tracking connection to `server` and switches tracking on.
    /// A refusal of `CLIENT TRACKING` is no error: the node's keys stay
    /// off the L1, with a warning.
    async fn open_tracker(shared: &Arc<Self>, server: &Server) -> Result<(), Error> {
        let pool_client = shared.redis.pool().next();
        let mut config = pool_client.client_config();
        if shared.clustered {
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
        }
        config.version = RespVersion::RESP3;
        let mut builder = Builder::from_config(config);
        if let Some(policy) = pool_client.client_reconnect_policy() {
            builder.set_policy(policy);
        }
        let client = builder
            .build()
            .map_err(|e| Error::config(format!("tracking client: {e}")))?;
        // A node that does not answer must not hold up the refresh task.
        let within = pool_client.connection_config().connection_timeout + Duration::from_secs(1);
        let connected = match tokio::time::timeout(within, client.init()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {within:?}")),
        };
        if let Err(e) = connected {
            let _ = client.quit().await;
            return Err(Error::Store(StoreError::Backend(format!(
                "tracking connection: {e}"
            ))));
        }
        let id = {
            let mut topology = shared.topology();
            if !topology.owns_slots(server) {
                None
            } else {
                let id = topology.next_id();
                let tracker = topology::Tracker {
                    id,
                    client: client.clone(),
                    up: false,
                    losses: 0,
                };
                if let Some(old) = topology.trackers.insert(server.clone(), tracker) {
                    tokio::spawn(async move {
                        let _ = old.client.quit().await;
                    });
                }
                Some(id)
            }
        };
        // The node left meanwhile.
        let Some(id) = id else {
            let _ = client.quit().await;
            return Ok(());
        };
        Self::watch(shared, &client, server, id);
        let tracking = client.start_tracking(shared.prefixes.clone(), true, false, false, false);
        let tracked = tokio::time::timeout(within, tracking)
            .await
            .unwrap_or_else(|_| {
                Err(fred::error::Error::new(
                    ErrorKind::Timeout,
                    "no answer to CLIENT TRACKING",
                ))
            });
        match tracked {
            Ok(()) => {
                if shared.tracker_restored(server, id, 0) == Some(false) && shared.clustered {
                    tracing::info!(%server, "cache L1 tracking on; keys of this node served from L1");
                }
                Ok(())
            }
            Err(e) => {
                let refused = refused(&e);
                shared.retire(server, id, refused.then_some(&e));
                let _ = client.quit().await;
                if refused {
                    Ok(())
                } else {
                    Err(Error::Store(StoreError::Backend(format!(
                        "CLIENT TRACKING: {e}"
                    ))))
                }
            }
        }
    }

    /// Closes the tracker `id` of `server` after `CLIENT TRACKING` failed:
    /// the refresh task opens a new one, unless the server refused it
    /// (`refused` holds its answer; then the node's keys stay off the L1,
    /// with a warning).
    fn retire(
        &self,
        server: &Server,
        id: u64,
        refused: Option<&fred::error::Error>,
    ) -> Option<Client> {
        let mut topology = self.topology();
        let retired = match topology.trackers.get(server) {
            Some(t) if t.id == id => topology.trackers.remove(server).map(|t| t.client),
            _ => None,
        };
        topology.sync(&self.slots, |_| false);
        let Some(error) = refused else {
            return retired;
        };
        if topology.refused.insert(server.clone()) {
            drop(topology);
            tracing::warn!(
                %server, %error,
                "cache L1 off: Redis refused CLIENT TRACKING, which keeps the L1 coherent; \
                 every lookup of this node's keys goes to Redis (allow `client|tracking` \
                 to the cache's user to use the L1)"
            );
        }
        retired
    }

    /// Marks the tracker `id` of `server` down, and the slots of its node
    /// with it. Whether it was up; `None` when that tracker was closed since.
    fn tracker_lost(&self, server: &Server, id: u64) -> Option<bool> {
        let mut topology = self.topology();
        let tracker = topology.trackers.get_mut(server).filter(|t| t.id == id)?;
        tracker.losses += 1;
        let was = std::mem::replace(&mut tracker.up, false);
        topology.sync(&self.slots, |_| false);
        Some(was)
    }

    /// Marks the tracker `id` of `server` up, unless its connection was lost
    /// again since `losses` was read: the slots of its node get a new
    /// version (nothing read before is served). Whether it was up; `None`
    /// when that tracker was closed since.
    fn tracker_restored(&self, server: &Server, id: u64, losses: u64) -> Option<bool> {
        let mut topology = self.topology();
        let tracker = topology.trackers.get_mut(server).filter(|t| t.id == id)?;
        let was = tracker.up;
        if tracker.losses != losses {
            return Some(was);
        }
        tracker.up = true;
        let topology = &*topology;
        topology.sync(&self.slots, |i| topology.owners[i].as_ref() == Some(server));
        Some(was)
    }

    /// Wires a tracking client's events to the tier. Events dropped because
    /// a listener fell behind count as the worst they could have been: a
    /// flush, a lost connection, a reconnection.
    fn watch(shared: &Arc<Self>, client: &Client, server: &Server, id: u64) {
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
        let server_ = server.clone();
        super::listen(client.error_rx(), move |error| {
            let shared = weak.upgrade();
            let current = shared.as_ref().and_then(|shared| {
                let was = shared.tracker_lost(&server_, id)?;
                if was {
                    let error =
                        error.map_or_else(|| "events missed".to_owned(), |(e, _)| e.to_string());
                    tracing::warn!(
                        server = %server_, %error,
                        "cache L1 tracking connection lost; L1 flushed and bypassed for this node"
                    );
                }
                shared.flush();
                Some(())
            });
            std::future::ready(current.is_some())
        });
        let weak = Arc::downgrade(shared);
        let server = server.clone();
        super::listen(client.reconnect_rx(), move |_| {
            let weak = weak.clone();
            let server = server.clone();
            async move {
                let Some(shared) = weak.upgrade() else {
                    return false;
                };
                let (client, losses) = {
                    let topology = shared.topology();
                    match topology.trackers.get(&server).filter(|t| t.id == id) {
                        Some(t) => (t.client.clone(), t.losses),
                        None => return false,
                    }
                };
                let tracked = client
                    .start_tracking(shared.prefixes.clone(), true, false, false, false)
                    .await;
                match tracked {
                    Ok(()) => {
                        shared.flush();
                        // Whatever was read before is of unknown freshness.
                        match shared.tracker_restored(&server, id, losses) {
                            Some(false) => tracing::info!(
                                %server,
                                "cache L1 tracking restored; L1 back in use"
                            ),
                            Some(true) => {}
                            None => return false,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(
                            %server, %error,
                            "cache L1 tracking not restored; L1 bypassed for this node until a new tracking connection is opened"
                        );
                        let refused = refused(&error).then_some(&error);
                        if let Some(client) = shared.retire(&server, id, refused) {
                            let _ = client.quit().await;
                        }
                        return false;
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

/// Whether `CLIENT TRACKING` failed because the server refused it (an error
/// reply such as `NOPERM ...` or `ERR unknown command ...`), rather than on
/// the way there.
fn refused(error: &fred::error::Error) -> bool {
    let code = error.details().split(' ').next().unwrap_or("");
    !matches!(
        error.kind(),
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled
    ) && code.len() >= 2
        && code.bytes().all(|b| b.is_ascii_uppercase())
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

#[cfg(test)]
mod tests {
    use fred::error::{Error, ErrorKind};

    #[test]
    fn only_an_error_reply_of_the_server_is_a_refusal() {
        let refusal = |kind, details: &str| super::refused(&Error::new(kind, details.to_owned()));
        assert!(refusal(
            ErrorKind::Unknown,
            "NOPERM this user has no permissions to run the 'client|tracking' command"
        ));
        assert!(refusal(
            ErrorKind::Unknown,
            "ERR unknown command 'CLIENT', with args beginning with: 'TRACKING'"
        ));
        assert!(!refusal(
            ErrorKind::Unknown,
            "Too many failed write attempts."
        ));
        assert!(!refusal(ErrorKind::IO, "ERR connection reset"));
        assert!(!refusal(ErrorKind::Timeout, "Request timed out."));
        assert!(!refusal(ErrorKind::Canceled, "Canceled."));
    }
}
