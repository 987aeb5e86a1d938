//! Entry reads of concurrent hits, sent to Redis together.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use fred::prelude::{ClientLike, KeysInterface};
use tokio::sync::oneshot;

use super::{
    commands::{backend_within, get_entry, within},
    RedisStore,
};
use crate::{
    error::StoreError,
    store::{BoxFuture, Fetched},
};

/// An entry read waiting for its batch: the key and where its value goes.
type Waiting = (String, oneshot::Sender<Result<Option<Bytes>, StoreError>>);

/// Entry reads of concurrent hits, sent together (see [`RedisStore::read_entry`]).
#[derive(Default)]
pub(super) struct Batch {
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
    pub(super) fn read_entry<'a>(
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
        // Without fred's (large) command future: the batch's task holds that.
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
