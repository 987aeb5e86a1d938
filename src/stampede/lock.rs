//! The cross-instance lock: one instance computes a missing entry while the
//! others wait for it (coalescing), polling the entry with the lock; the
//! holder gives the lock back after its write, or at once when it turns out
//! not to need it.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{
    core::{bump, CacheCore, Lookup},
    entry::{Entry, Freshness},
};

/// The cross-instance lock of one key, as its holder keeps it.
pub(crate) struct HeldLock {
    pub(crate) key: String,
    pub(crate) token: String,
    /// Set once the entry's write released it in the same round trip.
    pub(crate) released: AtomicBool,
}

impl HeldLock {
    pub(crate) fn new(key: String, token: String) -> Arc<Self> {
        Arc::new(Self {
            key,
            token,
            released: AtomicBool::new(false),
        })
    }
}

/// What waiting for another instance's computation gave.
pub(crate) enum Coalesced {
    /// Another instance stored the entry meanwhile.
    Entry(Arc<Entry>),
    /// This request holds the lock: it computes the entry.
    Locked(String),
    /// No lock (timed out, store failed): go to the service anyway.
    Proceed,
}

impl CacheCore {
    /// The token to take a key's cross-instance lock with: this process's
    /// when one request per key leads here (single-flight), so a lock taken
    /// by any request of this process is the leader's; a token of the
    /// request's own otherwise.
    pub(crate) fn lock_token(&self) -> String {
        if self.settings.single_flight {
            self.token.clone()
        } else {
            format!("{:032x}", rand::random::<u128>())
        }
    }

    /// Whether lookups may take the lock (the store has not refused to).
    pub(crate) fn prelocks(&self) -> bool {
        self.prelocks.load(Relaxed)
    }

    /// The lookup of a key not met lately, with the lock (`lock_key`,
    /// `token`) taken in the same round trip where the store can. Returns
    /// the lookup and whether this call set the lock.
    pub(crate) async fn lookup_or_lock(
        &self,
        key: &str,
        generation_key: &str,
        lock_key: &str,
        token: &str,
    ) -> (Lookup, bool) {
        if self.replay.pending() {
            return (Lookup::Failed, false);
        }
        let budget = self.settings.budget;
        let ttl = self.settings.lock_ttl;
        let Some(call) =
            self.store
                .fetch_or_lock(key, generation_key, lock_key, token, ttl, budget)
        else {
            // A store that cannot (the in-memory store) is not asked again.
            self.prelocks.store(false, Relaxed);
            return (self.lookup(key, generation_key).await, false);
        };
        match self.guarded("fetch", call, false).await {
            Ok((fetched, held)) => (self.classify(key, fetched).await, held),
            Err(_) => (Lookup::Failed, false),
        }
    }

    /// Takes the cross-instance lock for `key`, or waits (polling with
    /// backoff, up to the coalesce timeout, when `wait`) for the instance
    /// holding it to store the entry. Every poll is one round trip that also
    /// re-reads the entry, so an entry stored a moment ago is found, not
    /// recomputed. A refresh passes the `stored_at` of the entry it replaces:
    /// only a fresh entry stored after it counts as found.
    pub(crate) async fn coalesce(
        &self,
        key: &str,
        lock_key: &str,
        generation_key: &str,
        wait: bool,
        replaces: Option<u64>,
    ) -> Coalesced {
        if self.replay.pending() {
            return Coalesced::Proceed;
        }
        let token = self.lock_token();
        let deadline = Instant::now() + self.settings.coalesce_timeout;
        let mut delay = Duration::from_millis(2);
        let mut waited = false;
        loop {
            let call = self.store.lock_and_fetch(
                lock_key,
                &token,
                self.settings.lock_ttl,
                key,
                generation_key,
            );
            let Ok((locked, fetched)) = self.timed("lock", call).await else {
                return Coalesced::Proceed;
            };
            if let Lookup::Found { entry, now, .. } = self.classify(key, fetched).await {
                if entry.freshness(now) == Freshness::Fresh
                    && replaces.is_none_or(|old| entry.stored_at_ms > old)
                {
                    if locked {
                        let _ = self
                            .timed("unlock", self.store.unlock(lock_key, &token))
                            .await;
                    }
                    return Coalesced::Entry(entry);
                }
            }
            if locked {
                return Coalesced::Locked(token);
            }
            if !wait {
                return Coalesced::Proceed;
            }
            if !waited {
                waited = true;
                bump(&self.counters.lock_waits);
            }
            if Instant::now() + delay > deadline {
                bump(&self.counters.lock_timeouts);
                return Coalesced::Proceed;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Releases `held` unless a write already did.
    pub(crate) async fn unlock(&self, held: &HeldLock) {
        if !held.released.load(Relaxed) {
            let _ = self
                .timed("unlock", self.store.unlock(&held.key, &held.token))
                .await;
        }
    }
}

/// Releases, after the response, a lock the lookup took for a request that
/// will not compute the entry.
pub(crate) fn give_back_lock(core: &Arc<CacheCore>, lock: &mut Option<Arc<HeldLock>>) {
    if let Some(lock) = lock.take() {
        let core = core.clone();
        tokio::spawn(async move { core.unlock(&lock).await });
    }
}
