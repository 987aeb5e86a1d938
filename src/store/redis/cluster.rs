//! The store's operations on a Redis Cluster, where the keys of one
//! operation may live on several nodes: plain commands sent together
//! instead of one multi-key command or script.

use std::{pin::pin, time::Duration};

use bytes::Bytes;
use fred::prelude::{Client, ClientLike, KeysInterface, LuaInterface, Options};

use super::{
    commands::{
        backend, backend_within, entry_value, held, parse_generation, set_lock, taken,
        UNLOCK_SCRIPT,
    },
    RedisStore,
};
use crate::{
    error::StoreError,
    store::{Fence, Fenced, Fetched, Store, Write},
};

/// The entry and its generation: two `GET`s sent together (the keys may
/// not share a slot).
pub(super) async fn fetch(
    client: &Client,
    key: &str,
    generation_key: &str,
) -> Result<Fetched, StoreError> {
    let value = pin!(client.get(key));
    let generation = pin!(client.get(generation_key));
    let (value, generation) = futures_util::future::join(value, generation).await;
    let (value, generation): (Option<Bytes>, Option<Bytes>) = (
        entry_value(value).map_err(backend)?,
        generation.map_err(backend)?,
    );
    Ok(Fetched::new(value, parse_generation(generation)?))
}

/// `SET lock NX PX` and the two reads, sent together in that order, bounded
/// by `budget` (see `RedisStore::fetch_or_lock`).
pub(super) async fn fetch_or_lock(
    client: &Client,
    options: Options,
    [key, generation_key, lock_key, token]: [&str; 4],
    ttl: Duration,
    budget: Duration,
) -> Result<(Fetched, bool), StoreError> {
    let client = client.with_options(&options);
    let lock = pin!(set_lock(&client, lock_key, token, ttl));
    let value = pin!(client.get::<Option<Bytes>, _>(key));
    let generation = pin!(client.get::<Option<Bytes>, _>(generation_key));
    let (lock, value, generation) = futures_util::future::join3(lock, value, generation).await;
    let within = |e| backend_within(e, budget);
    let (value, generation) = (
        entry_value(value).map_err(within)?,
        generation.map_err(within)?,
    );
    Ok((
        Fetched::new(value, parse_generation(generation)?),
        taken(lock),
    ))
}

/// `SET lock NX PX`, then the lock's holder, the entry and the generation,
/// sent together.
pub(super) async fn lock_and_fetch(
    client: &Client,
    [lock_key, token, key, generation_key]: [&str; 4],
    ttl: Duration,
) -> Result<(bool, Fetched), StoreError> {
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
}

/// Raises one marker (`KEYS[1]`) to `ARGV[1]` for `ARGV[2]` milliseconds,
/// unless it already holds more.
pub(super) const RAISE_ONE_SCRIPT: &str = "local v = tonumber(redis.call('GET', KEYS[1])) \
if not v or v < tonumber(ARGV[1]) then \
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 1";

/// The counter first, then each marker with a script of its own key (the
/// markers live on other nodes).
pub(super) async fn raise_fence(
    client: &Client,
    counter_key: &str,
    markers: &[String],
    window_ms: &str,
) -> Result<u64, StoreError> {
    let raised: u64 = client.incr(counter_key).await.map_err(backend)?;
    let value = raised.to_string();
    let calls = markers.iter().map(|marker| {
        let args = vec![value.as_str(), window_ms];
        client.eval::<i64, _, _, _>(RAISE_ONE_SCRIPT, marker.as_str(), args)
    });
    for result in futures_util::future::join_all(calls).await {
        result.map_err(backend)?;
    }
    Ok(raised)
}

/// Deletes `KEYS[1]` if it still holds `ARGV[1]`.
pub(super) const TAKE_BACK_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Markers, entries and tag indexes live on several nodes: check, write,
/// and check again. A marker raised between the two checks belongs to an
/// invalidation that may have missed the write; the write is then taken
/// back (each entry only if it still holds the value written here). The
/// lock, on a node of its own, is released with the second check.
pub(super) async fn put_fenced(
    store: &RedisStore,
    client: &Client,
    writes: &[Write],
    fence: &Fence,
) -> Result<Fenced, StoreError> {
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
    // A write that failed may have landed in part, and one whose second
    // check failed was not checked: both are taken back as one whose
    // marker rose (removing is always safe; keeping could undo an
    // invalidation).
    let written = store.put(writes).await;
    let check = async {
        match &written {
            Ok(()) => raised(client, fence).await,
            Err(_) => Ok(true),
        }
    };
    let (raised_since, unlocked) = futures_util::future::join(check, release).await;
    if written.is_ok() && matches!(raised_since, Ok(false)) {
        return Ok(Fenced::new(true, unlocked?));
    }
    let calls = writes
        .iter()
        .map(|w| client.eval::<i64, _, _, _>(TAKE_BACK_SCRIPT, w.key.as_str(), w.value.clone()));
    let taken_back = futures_util::future::join_all(calls).await;
    written?;
    raised_since?;
    for result in taken_back {
        result.map_err(backend)?;
    }
    Ok(Fenced::new(false, unlocked?))
}

/// Whether one of the fence's markers holds more than its counter (or
/// anything but a number).
pub(super) async fn raised(
    client: &fred::prelude::Client,
    fence: &Fence,
) -> Result<bool, StoreError> {
    let pipe = client.pipeline();
    for marker in &fence.markers {
        let () = pipe.get(marker.as_str()).await.map_err(backend)?;
    }
    let values: Vec<Option<Bytes>> = pipe.all().await.map_err(backend)?;
    Ok(values
        .into_iter()
        .any(|v| parse_generation(v).map_or(true, |v| v > fence.counter)))
}

/// UNLINKs `keys`, one command per hash slot, pipelined, so that no command
/// spans slots; returns how many existed.
pub(super) async fn unlink_by_slot(client: &Client, keys: &[String]) -> Result<u64, StoreError> {
    let slots = fred::util::group_by_hash_slot(keys.iter().map(String::as_str)).map_err(backend)?;
    let pipe = client.pipeline();
    for keys in slots.into_values() {
        let () = pipe.unlink(Vec::from(keys)).await.map_err(backend)?;
    }
    let counts: Vec<u64> = pipe.all().await.map_err(backend)?;
    Ok(counts.into_iter().sum())
}
