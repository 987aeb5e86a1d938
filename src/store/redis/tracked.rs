//! Namespace generations kept in process for a single Redis, so that a hit
//! reads its entry alone (`GET`) instead of the entry and its generation
//! (`MGET`).
//!
//! A connection of its own (RESP3, `CLIENT TRACKING ON`) reads each
//! generation the first time a hit needs it; Redis then remembers that the
//! connection read the key and pushes an invalidation when it changes (an
//! `INCR` from any instance, a `DEL`, an expiry, a flush). The push drops the
//! value here, and the next hit reads it again. A bump made through this
//! process drops it at once, before the bump's call returns.
//!
//! Whatever is in doubt is dropped: while the tracking connection is down
//! nothing is kept (hits read the generation with the entry, as without
//! tracking), a read that raced with an invalidation is not kept, and no
//! value is kept longer than [`MAX_AGE`], which bounds how stale a
//! generation can be if pushes stop arriving without the connection failing.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    time::Duration,
};

use bytes::Bytes;
use fred::{
    clients::Client,
    interfaces::{ClientLike, EventInterface, KeysInterface, TrackingInterface},
};

use super::commands::parse_generation;
use crate::store::generations::Generations;

/// The longest a generation is used without being read from Redis again.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);

/// A bound on the generation keys being read at once.
const MAX_READING: usize = 10_000;

/// The generations a single-Redis store keeps, current through client
/// tracking (see the module's documentation).
pub(crate) struct Tracked {
    /// Read on every hit without a lock.
    known: Generations,
    /// Serialises every change of `known` with the count of invalidations,
    /// so that a read that raced with one is never kept.
    changes: Mutex<Changes>,
    /// Tracking is on for the tracker's current connection.
    up: AtomicBool,
    tracker: Client,
}

#[derive(Default)]
struct Changes {
    /// Invalidations so far (pushes, bumps, connection losses).
    epoch: u64,
    /// Generation keys being read now, so that concurrent hits read once.
    reading: HashSet<String>,
}

impl Tracked {
    /// Wires `tracker` (a RESP3 client, not connected yet) and starts
    /// connecting it. Must run inside a Tokio runtime.
    pub(crate) fn start(tracker: Client) -> Arc<Self> {
        let this = Arc::new(Self {
            known: Generations::new(MAX_AGE),
            changes: Mutex::new(Changes::default()),
            up: AtomicBool::new(false),
            tracker,
        });
        let weak = Arc::downgrade(&this);
        crate::store::listen(this.tracker.invalidation_rx(), move |invalidation| {
            let this = weak.upgrade();
            if let Some(this) = &this {
                match invalidation {
                    Some(invalidation) => {
                        let keys: Vec<&str> = invalidation
                            .keys
                            .iter()
                            .filter_map(|k| k.as_str())
                            .collect();
                        if keys.is_empty() || keys.len() != invalidation.keys.len() {
                            // A flush, or a key that is not text.
                            this.drop_all();
                        } else {
                            this.drop_keys(&keys);
                        }
                    }
                    // Some were missed.
                    None => this.drop_all(),
                }
            }
            std::future::ready(this.is_some())
        });
        let weak = Arc::downgrade(&this);
        crate::store::listen(this.tracker.error_rx(), move |error| {
            let this = weak.upgrade();
            if let Some(this) = &this {
                if this.up.swap(false, Ordering::SeqCst) {
                    let error =
                        error.map_or_else(|| "events missed".to_owned(), |(e, _)| e.to_string());
                    tracing::warn!(
                        %error,
                        store = %format_args!("Redis at {}", super::address(&this.tracker.client_config())),
                        "cache lost the connection on which Redis announces namespace \
                         invalidations; until it is back each hit also reads its namespace's \
                         counter (MGET instead of GET): correct, a little more work for Redis"
                    );
                }
                this.drop_all();
            }
            std::future::ready(this.is_some())
        });
        // Also told of the first connection. A missed event is taken as a
        // reconnection: switching tracking on again does no harm.
        let weak = Arc::downgrade(&this);
        crate::store::listen(this.tracker.reconnect_rx(), move |_| {
            let weak = weak.clone();
            async move {
                let Some(tracker) = weak.upgrade().map(|this| this.tracker.clone()) else {
                    return false;
                };
                let on = tracker
                    .start_tracking(Vec::<String>::new(), false, false, false, false)
                    .await;
                if let Some(this) = weak.upgrade() {
                    match on {
                        Ok(()) => {
                            let mut changes = this.lock();
                            changes.epoch += 1;
                            this.known.clear();
                            this.up.store(true, Ordering::SeqCst);
                            tracing::info!(
                                store = %format_args!("Redis at {}", super::address(&tracker.client_config())),
                                "cache: Redis announces namespace invalidations to this \
                                 instance (CLIENT TRACKING on); each hit reads one key (GET)"
                            );
                        }
                        Err(error) => tracing::warn!(
                            %error,
                            store = %format_args!("Redis at {}", super::address(&tracker.client_config())),
                            "cache: Redis refused CLIENT TRACKING, so each hit also reads its \
                             namespace's counter (MGET instead of GET): correct, a little more \
                             work for Redis; allow `client|tracking` to the cache's Redis user, \
                             or build the store with track_generations(false)"
                        ),
                    }
                }
                true
            }
        });
        drop(this.tracker.connect());
        this
    }

    fn lock(&self) -> MutexGuard<'_, Changes> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether tracking is on now.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The generation at `key`, if it is known and current.
    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        if !self.is_up() {
            return None;
        }
        self.known.get(key)
    }

    /// Reads the generation at `key` on the tracking connection, in a task
    /// of its own, and keeps it unless an invalidation came first. Does
    /// nothing while tracking is off, when that key is being read already,
    /// or outside a Tokio runtime.
    pub(crate) fn learn(self: &Arc<Self>, key: &str) {
        // Checked before the lock too: while tracking is down, every hit
        // comes here.
        if !self.is_up() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let epoch = {
            let mut changes = self.lock();
            if !self.is_up()
                || changes.reading.len() >= MAX_READING
                || changes.reading.contains(key)
            {
                return;
            }
            changes.reading.insert(key.to_owned());
            changes.epoch
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let (tracker, key) = (self.tracker.clone(), key.to_owned());
        runtime.spawn(async move {
            let read: Result<Option<Bytes>, _> = tracker.get(key.as_str()).await;
            let Some(this) = weak.upgrade() else {
                return;
            };
            let mut changes = this.lock();
            changes.reading.remove(&key);
            let Ok(Ok(generation)) = read.map(parse_generation) else {
                return;
            };
            if changes.epoch != epoch || !this.is_up() {
                return;
            }
            this.known.insert(&key, generation);
        });
    }

    /// Drops what is known of `keys` (a push, or a bump made here).
    pub(crate) fn drop_keys(&self, keys: &[&str]) {
        let mut changes = self.lock();
        changes.epoch += 1;
        for key in keys {
            self.known.remove(key);
        }
    }

    fn drop_all(&self) {
        let mut changes = self.lock();
        changes.epoch += 1;
        self.known.clear();
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The connection's task holds the client: close it, or it would
        // stay connected (and reconnecting) for the life of the runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tracker = self.tracker.clone();
            runtime.spawn(async move {
                let _ = tracker.quit().await;
            });
        }
    }
}
