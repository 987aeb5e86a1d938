//! The state one layer tree shares: store, key space, policies, settings and
//! counters. The service and the handle both work through it.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use http::HeaderName;

use crate::{
    entry::{self, Entry},
    error::StoreError,
    key::KeySpace,
    policy::Policies,
    store::{BoxFuture, Fetched, Store, Write},
    CacheStats,
};

pub(crate) struct CacheCore {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keys: KeySpace,
    pub(crate) policies: Policies,
    pub(crate) status_header: Option<HeaderName>,
    pub(crate) budget: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) counters: Counters,
    store_healthy: AtomicBool,
}

/// The outcome of a lookup.
pub(crate) enum Lookup {
    Hit(Entry),
    /// Not there (or unusable); the namespace generation to write under.
    Miss {
        generation: u64,
    },
    /// The store failed or timed out: pass through, do not write.
    Failed,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) bypasses: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) bytes_stored: AtomicU64,
    pub(crate) corrupt_entries: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl CacheCore {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        keys: KeySpace,
        policies: Policies,
        status_header: Option<HeaderName>,
        budget: Duration,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            store,
            keys,
            policies,
            status_header,
            budget,
            max_body_bytes,
            counters: Counters::default(),
            store_healthy: AtomicBool::new(true),
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            bypasses: c.bypasses.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            stores: c.stores.load(Relaxed),
            bytes_stored: c.bytes_stored.load(Relaxed),
            corrupt_entries: c.corrupt_entries.load(Relaxed),
        }
    }

    /// Runs a store call under the time budget, counting and logging failures.
    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        call: BoxFuture<'_, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = tokio::time::timeout(self.budget, call)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.budget)));
        match &result {
            Ok(_) => {
                if !self.store_healthy.load(Relaxed) && !self.store_healthy.swap(true, Relaxed) {
                    tracing::info!("cache store answers again; caching resumed");
                }
            }
            Err(e) => {
                bump(&self.counters.store_errors);
                if self.store_healthy.swap(false, Relaxed) {
                    tracing::warn!(op, error = %e, "cache store failed; requests pass through to the service");
                } else {
                    tracing::debug!(op, error = %e, "cache store failed");
                }
            }
        }
        result
    }

    pub(crate) async fn lookup(&self, key: &str, generation_key: &str) -> Lookup {
        let Ok(Fetched { value, generation }) = self
            .timed("fetch", self.store.fetch(key, generation_key))
            .await
        else {
            return Lookup::Failed;
        };
        let Some(value) = value else {
            return Lookup::Miss { generation };
        };
        match entry::decode(&value) {
            Some(e) if e.generation == generation && !e.is_expired(entry::now_ms()) => {
                Lookup::Hit(e)
            }
            // Written before the last namespace bump, or past its TTL.
            Some(_) => Lookup::Miss { generation },
            None => {
                bump(&self.counters.corrupt_entries);
                tracing::warn!(
                    key,
                    len = value.len(),
                    "cache entry does not decode; deleting it"
                );
                let _ = self
                    .timed("delete", self.store.delete(&[key.to_owned()]))
                    .await;
                Lookup::Miss { generation }
            }
        }
    }

    pub(crate) async fn write(&self, writes: &[Write]) -> Result<(), StoreError> {
        self.timed("put", self.store.put(writes)).await?;
        let bytes: usize = writes.iter().map(|w| w.value.len()).sum();
        self.counters.stores.fetch_add(writes.len() as u64, Relaxed);
        self.counters.bytes_stored.fetch_add(bytes as u64, Relaxed);
        Ok(())
    }
}
