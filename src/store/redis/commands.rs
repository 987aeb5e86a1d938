//! The Redis commands and scripts behind each store operation.

use std::time::Duration;

use bytes::Bytes;
use fred::{
    prelude::{
        ClientLike, Expiration, KeysInterface, LuaInterface, Options, SetOptions,
        SortedSetsInterface,
    },
    types::{ClusterHash, CustomCommand, ExpireOptions},
};

use crate::{
    error::StoreError,
    store::{Fence, Fenced, Fetched, Write},
};

pub(super) fn backend(e: fred::error::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// fred's options for a command bounded by `budget` (fred's own timeout).
pub(super) fn within(budget: Duration) -> Options {
    Options {
        timeout: Some(budget),
        ..Options::default()
    }
}

/// The error of a command run [`within`] `budget`: fred's timeout is the
/// budget running out.
pub(super) fn backend_within(e: fred::error::Error, budget: Duration) -> StoreError {
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
pub(super) async fn mget_pair<C: KeysInterface + Sync>(
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
pub(super) async fn get_entry<C: KeysInterface + Sync>(
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
pub(super) fn entry_value(
    reply: Result<Option<Bytes>, fred::error::Error>,
) -> Result<Option<Bytes>, fred::error::Error> {
    match reply {
        Err(e) if e.details().starts_with("WRONGTYPE") => Ok(Some(Bytes::new())),
        other => other,
    }
}

/// `SET lock_key token NX PX ttl`; the reply is null when another holds
/// the lock.
pub(super) fn set_lock<'c, C: KeysInterface + Sync>(
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
pub(super) fn taken(reply: Result<fred::types::Value, fred::error::Error>) -> bool {
    reply.is_ok_and(|reply| !reply.is_null())
}

/// The replies of a lock taken after a lookup: `SET lock NX`, then the
/// lock's holder, the entry and the generation.
pub(super) type LockReads = (Option<Bytes>, Option<Bytes>, Option<Bytes>);

/// Whether the caller holds the lock (taken now, or held with `token`
/// already), and what was read with it.
pub(super) fn held(
    token: &str,
    taken: Result<fred::types::Value, fred::error::Error>,
    (holder, value, generation): LockReads,
) -> Result<(bool, Fetched), StoreError> {
    let taken = !taken.map_err(backend)?.is_null();
    let fetched = Fetched::new(value, parse_generation(generation)?);
    Ok((
        taken || holder.as_deref() == Some(token.as_bytes()),
        fetched,
    ))
}

pub(crate) fn parse_generation(raw: Option<Bytes>) -> Result<u64, StoreError> {
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

pub(super) fn px(ttl: Duration) -> Expiration {
    Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

/// Increments the counter (`KEYS[1]`) and raises every marker (the other
/// keys) to its new value for `ARGV[1]` milliseconds; returns the new value.
pub(super) const RAISE_SCRIPT: &str = "local n = redis.call('INCR', KEYS[1]) \
for i = 2, #KEYS do \
local v = tonumber(redis.call('GET', KEYS[i])) \
if not v or v < n then redis.call('SET', KEYS[i], n, 'PX', ARGV[1]) end end \
return n";

/// The fenced write on one Redis, as one script: `KEYS` are the markers
/// (`ARGV[2]` of them), the lock to release when `ARGV[4]` (its token) is
/// not empty, then each write's key followed by its tag indexes; `ARGV` are
/// the fence's counter, the number of markers, the time now (milliseconds),
/// the lock's token, then for each write its value, TTL (milliseconds) and
/// number of tags. Nothing is written when a marker holds more than the
/// counter (or anything but a number); the writes are those of
/// [`queue_writes`]. The lock is released after them, or alone, if it still
/// holds the token. Returns 1 when written, 0 when not.
pub(super) const PUT_FENCED_SCRIPT: &str = "local c = tonumber(ARGV[1]) \
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

pub(super) async fn put_fenced_script(
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

/// Queues `writes` on a pipeline: each value with `SET ... PX`, and its tag
/// indexes.
pub(super) async fn queue_writes(
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
pub(super) const TAG_PAGE: u32 = 256;

/// One `ZSCAN` page of the tag index `tag` from `cursor`: the next cursor
/// (`"0"` at the end) and the members read, each with its score.
pub(super) async fn scan_tag(
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
pub(super) async fn unlist(
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
pub(super) const UNLIST_SCRIPT: &str = "local n = 0 \
for i = 1, #ARGV, 2 do \
local s = redis.call('ZSCORE', KEYS[1], ARGV[i]) \
if s and tonumber(s) == tonumber(ARGV[i + 1]) then \
n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end end \
return n";

/// UNLINKs `keys` and returns how many existed: one command on a single
/// Redis; on a Cluster one per hash slot, pipelined, so that no command
/// spans slots.
pub(super) async fn unlink_batch(
    client: &fred::prelude::Client,
    clustered: bool,
    keys: &[String],
) -> Result<u64, StoreError> {
    if keys.is_empty() {
        return Ok(0);
    }
    if clustered {
        return super::cluster::unlink_by_slot(client, keys).await;
    }
    client.unlink(keys.to_vec()).await.map_err(backend)
}

/// Compare-and-delete: only the holder of the token releases the lock.
pub(super) const UNLOCK_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// UNLINKs keys one command each, in one pipeline, and reports which existed:
/// no multi-key command, so it never crosses Cluster hash slots.
pub(super) async fn unlink_each_report(
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
pub(super) async fn unlink_each(
    client: &fred::prelude::Client,
    keys: &[String],
) -> Result<u64, StoreError> {
    let existed = unlink_each_report(client, keys).await?;
    Ok(existed.into_iter().filter(|e| *e).count() as u64)
}
