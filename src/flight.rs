//! Single-flight within one process: the first miss on a key goes to the
//! service; later misses on the same key wait for its result instead of
//! calling the service too.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::watch;

use crate::entry::Entry;

/// What a leader hands its followers: the entry to serve and the cache
/// status to serve it with (`HIT`, or `STALE` when the service failed).
pub(crate) struct Shared {
    /// The entry, once decoded: a leader that stored a response hands over
    /// the encoded value, and the first follower that asks decodes it (a
    /// leader nobody waits for decodes nothing).
    entry: OnceLock<Option<Arc<Entry>>>,
    value: Bytes,
    pub(crate) outcome: &'static str,
}

impl Shared {
    /// An entry already at hand.
    pub(crate) fn decoded(entry: Arc<Entry>, outcome: &'static str) -> Self {
        Self {
            entry: OnceLock::from(Some(entry)),
            value: Bytes::new(),
            outcome,
        }
    }

    /// An entry as stored, decoded when a follower first asks for it.
    pub(crate) fn encoded(value: Bytes, outcome: &'static str) -> Self {
        Self {
            entry: OnceLock::new(),
            value,
            outcome,
        }
    }

    /// The entry; `None` if the value does not decode (the followers then
    /// call the service themselves).
    pub(crate) fn entry(&self) -> Option<&Arc<Entry>> {
        self.entry
            .get_or_init(|| crate::entry::decode(&self.value).map(Arc::new))
            .as_ref()
    }
}

type Slot = watch::Receiver<Option<Arc<Shared>>>;

/// A flight in the map: where its result will appear, and how many
/// followers joined it.
type Flight = (Slot, Arc<AtomicUsize>);

type FlightMap = HashMap<String, Flight, crate::store::KeyHasher>;

#[derive(Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<FlightMap>>,
}

pub(crate) enum Join {
    Leader(FlightGuard),
    Follower(Slot),
}

/// Held by the request that goes to the service. Dropping it without
/// [`publish`](FlightGuard::publish) (an uncacheable response, an error, a
/// dropped request) lets the followers go to the service themselves.
pub(crate) struct FlightGuard {
    map: Arc<Mutex<FlightMap>>,
    key: String,
    tx: watch::Sender<Option<Arc<Shared>>>,
    followers: Arc<AtomicUsize>,
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Join {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((rx, followers)) = map.get(key) {
            followers.fetch_add(1, Relaxed);
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        let followers = Arc::new(AtomicUsize::new(0));
        map.insert(key.to_owned(), (rx, followers.clone()));
        Join::Leader(FlightGuard {
            map: self.map.clone(),
            key: key.to_owned(),
            tx,
            followers,
        })
    }

    /// Waits up to `timeout` for the leader; `None` when it gave up or ran
    /// out of time.
    pub(crate) async fn wait(mut slot: Slot, timeout: Duration) -> Option<Arc<Shared>> {
        let waited = tokio::time::timeout(timeout, slot.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(value)) => value.clone(),
            _ => None,
        }
    }
}

impl FlightGuard {
    /// How many requests joined this flight so far (a handle the leader's
    /// work can read without holding the guard).
    pub(crate) fn followers(&self) -> Arc<AtomicUsize> {
        self.followers.clone()
    }

    pub(crate) fn publish(self, shared: Shared) {
        let _ = self.tx.send(Some(Arc::new(shared)));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|(rx, _)| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{self, Lifetimes};
    use http::{HeaderMap, StatusCode};

    /// A stored entry with `body`, as the store holds it.
    fn value(body: &'static [u8]) -> Bytes {
        let l = Lifetimes {
            fresh: Duration::from_secs(1),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidate: Duration::ZERO,
        };
        entry::encode(
            StatusCode::OK,
            &HeaderMap::new(),
            body,
            &l,
            Duration::ZERO,
            0,
            None,
        )
        .unwrap()
    }

    fn entry() -> Entry {
        entry::decode(&value(b"x")).unwrap()
    }

    #[tokio::test]
    async fn followers_get_the_leaders_result() {
        let flights = Flights::default();
        let Join::Leader(guard) = flights.join("k") else {
            panic!("first is leader")
        };
        let Join::Follower(slot) = flights.join("k") else {
            panic!("second follows")
        };
        assert_eq!(guard.followers().load(Relaxed), 1);
        let waiter = tokio::spawn(Flights::wait(slot, Duration::from_secs(5)));
        guard.publish(Shared::decoded(Arc::new(entry()), "HIT"));
        let got = waiter.await.unwrap().expect("a result");
        assert_eq!(got.entry().expect("an entry").body, "x");
        assert!(
            matches!(flights.join("k"), Join::Leader(_)),
            "the flight is over"
        );
    }

    #[test]
    fn a_stored_value_is_decoded_once_when_a_follower_asks() {
        let shared = Shared::encoded(value(b"stored"), "HIT");
        let first = shared.entry().expect("an entry").clone();
        assert_eq!(first.body, "stored");
        // The same decoded entry for every follower.
        assert!(Arc::ptr_eq(&first, shared.entry().unwrap()));
        // A value that does not decode sends the followers to the service.
        assert!(Shared::encoded(Bytes::from_static(b"junk"), "HIT")
            .entry()
            .is_none());
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers_at_once() {
        let flights = Flights::default();
        let Join::Leader(guard) = flights.join("k") else {
            panic!()
        };
        let Join::Follower(slot) = flights.join("k") else {
            panic!()
        };
        let waiter = tokio::spawn(Flights::wait(slot, Duration::from_secs(60)));
        drop(guard);
        let started = std::time::Instant::now();
        assert!(waiter.await.unwrap().is_none());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn followers_stop_waiting_at_the_bound() {
        let flights = Flights::default();
        let Join::Leader(_guard) = flights.join("k") else {
            panic!()
        };
        let Join::Follower(slot) = flights.join("k") else {
            panic!()
        };
        assert!(Flights::wait(slot, Duration::from_millis(20))
            .await
            .is_none());
    }
}
