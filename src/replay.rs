//! Invalidations: how one runs against the store ([`Item::run`]: the fence
//! first, so that no fill that read before it can store after it, then the
//! removal or the namespace bump), and the replay queue: invalidations the
//! store did not confirm (it failed, ran out of time, or the circuit breaker
//! was open) wait here and are replayed in order by a background task once
//! the store answers again.
//!
//! While the queue holds anything, the layer serves no hit and writes
//! nothing: every lookup passes through to the service. Checking that on the
//! request path is one atomic load.
//!
//! A queue past its bound, and an item older than the longest life of the
//! entries it could cover, are replaced by bumps of the namespaces those
//! items can touch (themselves queued until confirmed).

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::{core::CacheCore, error::StoreError};

/// One invalidation, as it is replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// Entry keys to delete.
    Keys(Vec<String>),
    /// Every entry whose path starts with this prefix.
    Prefix(String),
    /// Tag index keys whose entries are deleted.
    Tags(Vec<String>),
    /// A namespace whose generation is bumped.
    Namespace(String),
    /// Every entry of one path (any host, variant or key material).
    Path(crate::key::ExactPaths),
}

impl Item {
    /// The operation's name in logs and in the `op` label of the store
    /// metrics (names that dashboards may match, so they stay as they are).
    fn op(&self) -> &'static str {
        match self {
            Item::Keys(_) => "delete",
            Item::Prefix(_) => "delete_matching",
            Item::Tags(_) => "invalidate_tags",
            Item::Namespace(_) => "bump_generation",
            Item::Path(_) => "delete_matching",
        }
    }

    /// Runs the invalidation against the store: how many entries went, or
    /// the namespace's new generation. A store call that panics is a failed
    /// call: the item stays queued (an unwinding task would leave it marked
    /// under way for ever, and every request passing through).
    pub(crate) async fn run(&self, core: &CacheCore) -> Result<u64, StoreError> {
        let call = std::panic::AssertUnwindSafe(self.call(core));
        futures_util::FutureExt::catch_unwind(call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Backend(format!(
                    "the store panicked during {}",
                    self.op()
                )))
            })
    }

    async fn call(&self, core: &CacheCore) -> Result<u64, StoreError> {
        let store = &core.store;
        let keys = &core.keys;
        // The fence first: a fill that read its page before this point and
        // writes after it is refused, whether its write lands before the
        // removal below (and is removed) or after it.
        let markers: Vec<String> = match self {
            Item::Keys(entries) | Item::Tags(entries) => {
                entries.iter().map(|k| keys.fence_key(k)).collect()
            }
            // A path's entries for hosts and key material not seen yet
            // cannot be named: the prefix fence covers them.
            Item::Prefix(_) | Item::Path(_) => vec![keys.prefix_fence_key()],
            Item::Namespace(_) => Vec::new(),
        };
        if !markers.is_empty() {
            let counter = keys.fence_counter_key();
            store
                .raise_fence(&counter, &markers, crate::store::FENCE_WINDOW)
                .await?;
        }
        match self {
            Item::Keys(keys) => store.delete(keys).await,
            Item::Prefix(prefix) => {
                store
                    .delete_prefix(&crate::store::PathPrefix::new(keys, prefix))
                    .await
            }
            Item::Path(paths) => {
                store
                    .delete_prefix(&crate::store::PathPrefix::exact(keys, paths))
                    .await
            }
            Item::Tags(tag_keys) => store.invalidate_tags(tag_keys).await,
            Item::Namespace(namespace) => {
                store.increment(&core.keys.generation_key(namespace)).await
            }
        }
    }
}

/// A namespace of the layer: the head of its entry keys and the longest
/// time an entry of it stays stored (`None`: no bound, the origin decides).
#[derive(Debug, Clone)]
pub(crate) struct NamespaceLife {
    pub(crate) namespace: String,
    pub(crate) key_head: String,
    pub(crate) longest: Option<Duration>,
}

/// What the queue needs to know about the layer.
#[derive(Debug, Clone)]
pub(crate) struct ReplayConfig {
    /// The most items kept before they are replaced by namespace bumps.
    pub(crate) bound: usize,
    /// Every namespace of the layer's policies.
    pub(crate) namespaces: Vec<NamespaceLife>,
}

impl ReplayConfig {
    /// Adds the namespace of `rule` and how long an entry of it stays
    /// stored at most: the TTL with its jitter and the longest window after
    /// it. An origin-driven rule takes its freshness from the response: no
    /// bound.
    pub(crate) fn add(&mut self, keys: &crate::key::KeySpace, rule: &crate::policy::Resolved) {
        let longest = (!rule.http.origin_driven()).then(|| {
            let fresh = rule.ttl.mul_f64(1.0 + rule.jitter.max(0.0));
            fresh
                + rule
                    .stale_while_revalidate
                    .max(rule.stale_if_error)
                    .max(rule.http.revalidate_window)
        });
        match self
            .namespaces
            .iter_mut()
            .find(|n| n.namespace == rule.namespace)
        {
            Some(n) => n.longest = n.longest.zip(longest).map(|(a, b)| a.max(b)),
            None => {
                let generation_key = keys.generation_key(&rule.namespace);
                let key_head = generation_key
                    .strip_suffix("generation")
                    .unwrap_or(&generation_key)
                    .to_owned();
                self.namespaces.push(NamespaceLife {
                    namespace: rule.namespace.clone(),
                    key_head,
                    longest,
                });
            }
        }
    }
}

struct Pending {
    id: u64,
    item: Item,
    since: Instant,
    /// Past this age the item is replaced by namespace bumps.
    limit: Option<Duration>,
    /// A store call for it is under way (the worker's, or a handle call that
    /// ran out of time): it is neither started again nor replaced.
    in_flight: bool,
}

#[derive(Default)]
struct State {
    items: VecDeque<Pending>,
    worker: bool,
    next_id: u64,
}

/// The replay queue of one layer tree.
pub(crate) struct Replay {
    /// The number of items: the request path reads only this.
    len: AtomicUsize,
    state: Mutex<State>,
    /// Wakes the worker from its back-off (a new item, a drain).
    wake: Notify,
    /// Told whenever the queue shrinks.
    changed: Notify,
    config: std::sync::RwLock<ReplayConfig>,
    pub(crate) queued: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const LAST_BACKOFF: Duration = Duration::from_secs(1);

impl Replay {
    pub(crate) fn new(config: ReplayConfig) -> Self {
        Self {
            len: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            changed: Notify::new(),
            config: std::sync::RwLock::new(config),
            queued: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether any invalidation waits: while it does, no hit is served.
    #[inline]
    pub(crate) fn pending(&self) -> bool {
        self.len.load(Ordering::Acquire) != 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves a consistent queue (every
        // change is one push or removal), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, state: &State) {
        self.len.store(state.items.len(), Ordering::Release);
        crate::metrics::invalidations_pending(state.items.len());
    }

    fn config(&self) -> std::sync::RwLockReadGuard<'_, ReplayConfig> {
        // Only whole namespaces are ever added: a poisoned lock is used as is.
        self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn namespaces(&self) -> Vec<NamespaceLife> {
        self.config().namespaces.clone()
    }

    /// Adds the namespace of a rule made after the layer was built (a
    /// route registered with its own policy).
    pub(crate) fn register(&self, keys: &crate::key::KeySpace, rule: &crate::policy::Resolved) {
        let mut config = self.config.write().unwrap_or_else(|e| e.into_inner());
        config.add(keys, rule);
    }

    /// The namespace an entry key belongs to.
    fn namespace_of(&self, key: &str) -> Option<NamespaceLife> {
        self.config()
            .namespaces
            .iter()
            .find(|n| key.starts_with(n.key_head.as_str()))
            .cloned()
    }

    /// The longest life of any entry of the layer.
    fn longest(&self) -> Option<Duration> {
        self.config()
            .namespaces
            .iter()
            .try_fold(Duration::ZERO, |max, n| n.longest.map(|l| l.max(max)))
    }

    /// How long `item` is worth replaying: past the longest life of the
    /// entries it can cover, those entries are gone anyway.
    fn limit(&self, item: &Item) -> Option<Duration> {
        match item {
            Item::Keys(keys) => {
                keys.iter()
                    .try_fold(Duration::ZERO, |max, key| match self.namespace_of(key) {
                        Some(n) => n.longest.map(|l| l.max(max)),
                        None => self.longest().map(|l| l.max(max)),
                    })
            }
            Item::Prefix(_) | Item::Tags(_) | Item::Path(_) => self.longest(),
            // A bump is already what an item is replaced by.
            Item::Namespace(_) => None,
        }
    }

    /// The namespaces an item can touch.
    fn namespaces_of(&self, item: &Item, into: &mut BTreeSet<String>) {
        let all = |into: &mut BTreeSet<String>| {
            for n in &self.config().namespaces {
                into.insert(n.namespace.clone());
            }
        };
        match item {
            Item::Keys(keys) => {
                for key in keys {
                    match self.namespace_of(key) {
                        Some(n) => {
                            into.insert(n.namespace.clone());
                        }
                        None => all(into),
                    }
                }
            }
            Item::Path(paths) if !paths.namespaces.is_empty() => {
                into.extend(paths.namespaces.iter().cloned());
            }
            Item::Prefix(_) | Item::Tags(_) | Item::Path(_) => all(into),
            Item::Namespace(namespace) => {
                into.insert(namespace.clone());
            }
        }
    }

    fn push_locked(&self, state: &mut State, item: Item, in_flight: bool) -> u64 {
        let id = state.next_id;
        state.next_id += 1;
        let limit = self.limit(&item);
        state.items.push_back(Pending {
            id,
            item,
            since: Instant::now(),
            limit,
            in_flight,
        });
        self.queued.fetch_add(1, Ordering::Relaxed);
        crate::metrics::invalidation("queued", 1);
        id
    }

    /// Replaces items past their age, and every waiting item once the queue
    /// is past its bound, by bumps of the namespaces they can touch.
    fn compact(&self, state: &mut State) {
        let now = Instant::now();
        let over = state.items.len() > self.config().bound;
        let replace = |p: &Pending| {
            !p.in_flight
                && (over
                    || p.limit
                        .is_some_and(|limit| now.saturating_duration_since(p.since) > limit))
        };
        if !state.items.iter().any(replace) {
            return;
        }
        let mut namespaces = BTreeSet::new();
        let mut kept = VecDeque::with_capacity(state.items.len());
        let mut dropped = 0;
        for p in state.items.drain(..) {
            if replace(&p) {
                self.namespaces_of(&p.item, &mut namespaces);
                dropped += 1;
            } else {
                kept.push_back(p);
            }
        }
        state.items = kept;
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        crate::metrics::invalidation("dropped", dropped);
        tracing::warn!(
            dropped,
            namespaces = ?namespaces,
            "cache invalidations waited too long or too many wait: bumping their namespaces instead"
        );
        for namespace in namespaces {
            self.push_locked(state, Item::Namespace(namespace), false);
        }
    }

    /// Queues `item` for replay and makes sure the worker runs (a worker
    /// backing off from a failure is not woken: the store is not asked
    /// again sooner because more invalidations come).
    pub(crate) fn push(&self, core: &Arc<CacheCore>, item: Item) {
        let mut state = self.lock();
        self.push_locked(&mut state, item, false);
        self.compact(&mut state);
        self.publish(&state);
        self.start_locked(core, &mut state);
    }

    /// Queues `item` as under way: a handle call ran out of time while its
    /// store call goes on. [`settle`](Self::settle) says how it ended.
    pub(crate) fn push_in_flight(&self, core: &Arc<CacheCore>, item: Item) -> u64 {
        let mut state = self.lock();
        let id = self.push_locked(&mut state, item, true);
        self.compact(&mut state);
        self.publish(&state);
        self.start_locked(core, &mut state);
        id
    }

    /// Ends the in-flight item `id`: removed when its store call succeeded,
    /// left for the worker otherwise. `wake` (a handle call's item) wakes
    /// the worker, which may be waiting for it.
    pub(crate) fn settle(&self, id: u64, ok: bool, wake: bool) {
        let mut state = self.lock();
        if let Some(at) = state.items.iter().position(|p| p.id == id) {
            if ok {
                state.items.remove(at);
                self.replayed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::invalidation("replayed", 1);
            } else {
                state.items[at].in_flight = false;
            }
        }
        self.publish(&state);
        drop(state);
        self.changed.notify_waiters();
        if wake {
            self.wake.notify_one();
        }
    }

    fn start_locked(&self, core: &Arc<CacheCore>, state: &mut State) {
        if state.worker || state.items.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Without a runtime the queue waits for a drain.
            return;
        };
        state.worker = true;
        runtime.spawn(work(core.clone()));
    }

    /// Starts the worker if items wait and none runs, and wakes it from its
    /// back-off.
    pub(crate) fn start(&self, core: &Arc<CacheCore>) {
        let mut state = self.lock();
        self.start_locked(core, &mut state);
        drop(state);
        self.wake.notify_one();
    }

    /// Waits until the queue is empty or `deadline` passes; whether it is
    /// empty.
    pub(crate) async fn drained(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.pending() {
                return true;
            }
            // Woken on every change, and at least every 50 ms in case an item
            // was replaced rather than replayed.
            let until = deadline.min(tokio::time::Instant::now() + Duration::from_millis(50));
            let _ = tokio::time::timeout_at(until, changed).await;
            if tokio::time::Instant::now() >= deadline {
                return !self.pending();
            }
        }
    }
}

/// How a bounded invalidation ended.
pub(crate) enum Outcome {
    /// The store confirmed it: entries removed, or the new generation.
    Done(u64),
    /// Queued for replay.
    Queued,
}

enum Call {
    Running,
    /// Confirmed (`Some`) or failed and queued (`None`).
    Finished(Option<u64>),
    /// The caller stopped waiting; the item is queued as in flight.
    Abandoned(u64),
}

/// Runs `item` under the handle budget and the circuit breaker. The store
/// call runs in a task of its own: past the budget the caller gets
/// [`Outcome::Queued`] while the call goes on, and a failure queues the
/// item. An open breaker, or earlier items still waiting, queue it at once.
pub(crate) async fn invalidate(core: &Arc<CacheCore>, item: Item) -> Outcome {
    let replay = &core.replay;
    if replay.pending() || !core.allow_store() {
        replay.push(core, item);
        return Outcome::Queued;
    }
    let call = Arc::new(Mutex::new(Call::Running));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let core = core.clone();
        let call = call.clone();
        let item = item.clone();
        async move {
            let clock = CacheCore::clock();
            let result = item.run(&core).await;
            core.account(item.op(), clock, &result);
            let mut state = call.lock().unwrap_or_else(|e| e.into_inner());
            match *state {
                Call::Running | Call::Finished(_) => {
                    if result.is_err() {
                        core.replay.push(&core, item);
                    }
                    *state = Call::Finished(result.ok());
                    let _ = tx.send(());
                }
                Call::Abandoned(id) => {
                    drop(state);
                    core.replay.settle(id, result.is_ok(), true);
                }
            }
        }
    };
    tokio::spawn(task);
    let _ = tokio::time::timeout(core.settings.handle_timeout, rx).await;
    let mut state = call.lock().unwrap_or_else(|e| e.into_inner());
    match *state {
        Call::Finished(Some(n)) => Outcome::Done(n),
        Call::Finished(None) => Outcome::Queued,
        Call::Running | Call::Abandoned(_) => {
            let id = replay.push_in_flight(core, item);
            *state = Call::Abandoned(id);
            tracing::debug!("cache invalidation past the handle budget; queued while it runs");
            Outcome::Queued
        }
    }
}

/// The worker: replays the first waiting item, in order, backing off while
/// the store fails; ends when the queue is empty.
async fn work(core: Arc<CacheCore>) {
    let replay = &core.replay;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let next = {
            let mut state = replay.lock();
            replay.compact(&mut state);
            replay.publish(&state);
            if state.items.is_empty() {
                state.worker = false;
                drop(state);
                replay.changed.notify_waiters();
                return;
            }
            let next = state.items.iter_mut().find(|p| !p.in_flight).map(|p| {
                p.in_flight = true;
                (p.id, p.item.clone())
            });
            drop(state);
            next
        };
        let Some((id, item)) = next else {
            // Only items under way: wait until one of them settles.
            let _ = tokio::time::timeout(backoff, replay.wake.notified()).await;
            continue;
        };
        let result = if core.allow_store() {
            let clock = CacheCore::clock();
            let result = item.run(&core).await;
            core.account(item.op(), clock, &result);
            result
        } else {
            Err(StoreError::CircuitOpen)
        };
        match result {
            Ok(_) => {
                replay.settle(id, true, false);
                backoff = FIRST_BACKOFF;
                // A store that answers at once (the in-memory one) never
                // makes this task wait: let others run between items.
                tokio::task::yield_now().await;
                tracing::debug!(op = item.op(), "cache invalidation replayed");
            }
            Err(e) => {
                replay.settle(id, false, false);
                tracing::debug!(op = item.op(), error = %e, "cache invalidation replay failed; retrying");
                let _ = tokio::time::timeout(backoff, replay.wake.notified()).await;
                backoff = (backoff * 2).min(LAST_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(bound: usize) -> Replay {
        Replay::new(ReplayConfig {
            bound,
            namespaces: vec![
                NamespaceLife {
                    namespace: "a".into(),
                    key_head: "t:v1:a:".into(),
                    longest: Some(Duration::from_secs(60)),
                },
                NamespaceLife {
                    namespace: "b".into(),
                    key_head: "t:v1:b:".into(),
                    longest: Some(Duration::from_secs(600)),
                },
            ],
        })
    }

    fn items(r: &Replay) -> Vec<Item> {
        r.lock().items.iter().map(|p| p.item.clone()).collect()
    }

    #[test]
    fn limits_follow_the_entries_an_item_covers() {
        let r = replay(10);
        let keys = Item::Keys(vec!["t:v1:a:GET:/x".into()]);
        assert_eq!(r.limit(&keys), Some(Duration::from_secs(60)));
        assert_eq!(
            r.limit(&Item::Prefix("/x".into())),
            Some(Duration::from_secs(600))
        );
        assert_eq!(r.limit(&Item::Namespace("a".into())), None);
    }

    #[test]
    fn past_the_bound_items_become_bumps_of_the_namespaces_they_touch() {
        let r = replay(2);
        let mut state = r.lock();
        r.push_locked(&mut state, Item::Keys(vec!["t:v1:a:GET:/1".into()]), false);
        r.push_locked(&mut state, Item::Keys(vec!["t:v1:a:GET:/2".into()]), false);
        r.compact(&mut state);
        assert_eq!(state.items.len(), 2, "within the bound nothing changes");
        r.push_locked(&mut state, Item::Keys(vec!["t:v1:a:GET:/3".into()]), true);
        r.push_locked(&mut state, Item::Keys(vec!["t:v1:a:GET:/4".into()]), false);
        r.compact(&mut state);
        r.publish(&state);
        drop(state);
        // The item under way stays; the three others are one bump of `a`.
        assert_eq!(
            items(&r),
            vec![
                Item::Keys(vec!["t:v1:a:GET:/3".into()]),
                Item::Namespace("a".into()),
            ]
        );
        assert_eq!(r.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(r.queued.load(Ordering::Relaxed), 5);
        assert_eq!(r.len(), 2);
        // A tag can touch every namespace.
        let mut state = r.lock();
        r.push_locked(&mut state, Item::Tags(vec!["t:v1:#tag:x".into()]), false);
        r.compact(&mut state);
        drop(state);
        assert_eq!(
            items(&r),
            vec![
                Item::Keys(vec!["t:v1:a:GET:/3".into()]),
                Item::Namespace("a".into()),
                Item::Namespace("b".into()),
            ]
        );
    }

    #[test]
    fn items_past_their_age_become_bumps() {
        let r = replay(100);
        let mut state = r.lock();
        r.push_locked(&mut state, Item::Keys(vec!["t:v1:b:GET:/1".into()]), false);
        r.push_locked(&mut state, Item::Prefix("/p".into()), false);
        // The key of `b` lives 600 s at most: 601 s later it is replaced; the
        // prefix (600 s too, the longest of the layer) as well.
        for p in state.items.iter_mut() {
            p.since -= Duration::from_secs(601);
        }
        r.push_locked(&mut state, Item::Keys(vec!["t:v1:a:GET:/2".into()]), false);
        r.compact(&mut state);
        drop(state);
        assert_eq!(
            items(&r),
            vec![
                Item::Keys(vec!["t:v1:a:GET:/2".into()]),
                Item::Namespace("a".into()),
                Item::Namespace("b".into()),
            ]
        );
        assert_eq!(r.dropped.load(Ordering::Relaxed), 2);
    }
}
