//! Single-flight within one process: the first miss on a key goes to the
//! service; later misses on the same key wait for its result instead of
//! calling the service too.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::watch;

use crate::{entry::Entry, status::CacheStatus};

/// What a leader hands its followers: the entry to serve and the cache
/// status to serve it with (`HIT`, or `STALE` when the service failed).
pub(crate) struct Handover {
    /// The entry, once decoded: a leader that stored a response hands over
    /// the encoded value, and the first follower that asks decodes it (a
    /// leader nobody waits for decodes nothing).
    entry: OnceLock<Option<Arc<Entry>>>,
    value: Bytes,
    pub(crate) outcome: CacheStatus,
}

impl Handover {
    /// An entry already at hand.
    pub(crate) fn decoded(entry: Arc<Entry>, outcome: CacheStatus) -> Self {
        Self {
            entry: OnceLock::from(Some(entry)),
            value: Bytes::new(),
            outcome,
        }
    }

    /// An entry as stored, decoded when a follower first asks for it.
    pub(crate) fn encoded(value: Bytes, outcome: CacheStatus) -> Self {
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

type Slot = watch::Receiver<Option<Arc<Handover>>>;

/// A flight in the map.
struct Flight {
    /// Where its result will appear.
    slot: Slot,
    /// How many followers joined it.
    followers: Arc<AtomicUsize>,
    /// Until when its leader holds it: a request that joins later replaces
    /// the flight and leads a new one.
    until: Instant,
}

type FlightMap = HashMap<String, Flight, crate::store::KeyHasher>;

#[derive(Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<FlightMap>>,
}

pub(crate) enum Join {
    Leader(FlightGuard),
    Follower(Follower),
}

/// A request waiting for a flight's leader.
pub(crate) struct Follower {
    slot: Slot,
    until: Instant,
}

/// How a follower's wait ended.
pub(crate) enum Waited {
    /// The leader's result.
    Published(Arc<Handover>),
    /// The leader ended without a result to share (an uncacheable response,
    /// an error, a dropped request).
    Released,
    /// The leader's hold ran out before it answered: its request may have
    /// stalled. Joining again finds the flight replaced (or replaces it).
    TimedOut,
}

/// Held by the request that goes to the service. Dropping it without
/// [`publish`](FlightGuard::publish) (an uncacheable response, an error, a
/// dropped request) lets the followers go to the service themselves.
pub(crate) struct FlightGuard {
    map: Arc<Mutex<FlightMap>>,
    key: String,
    tx: watch::Sender<Option<Arc<Handover>>>,
    followers: Arc<AtomicUsize>,
}

impl Flights {
    /// Joins the flight of `key`: as a follower while its leader holds it,
    /// as the leader of a new flight when there is none or when its leader
    /// has held it for `hold` already. A replaced leader's request goes on
    /// and still answers its own client (and any follower that still waits
    /// on it), but no longer keeps anyone waiting: a stalled request holds
    /// its key's waiters for at most `hold`.
    pub(crate) fn join(&self, key: &str, hold: Duration) -> Join {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(key).filter(|f| now < f.until) {
            flight.followers.fetch_add(1, Relaxed);
            return Join::Follower(Follower {
                slot: flight.slot.clone(),
                until: flight.until,
            });
        }
        let (tx, slot) = watch::channel(None);
        let followers = Arc::new(AtomicUsize::new(0));
        let flight = Flight {
            slot,
            followers: followers.clone(),
            until: now + hold,
        };
        map.insert(key.to_owned(), flight);
        Join::Leader(FlightGuard {
            map: self.map.clone(),
            key: key.to_owned(),
            tx,
            followers,
        })
    }
}

impl Follower {
    /// Waits for the leader, at most until its hold runs out.
    pub(crate) async fn wait(mut self) -> Waited {
        let until = tokio::time::Instant::from_std(self.until);
        match tokio::time::timeout_at(until, self.slot.wait_for(Option::is_some)).await {
            Ok(Ok(value)) => value.clone().map_or(Waited::Released, Waited::Published),
            Ok(Err(_)) => Waited::Released,
            Err(_) => Waited::TimedOut,
        }
    }
}

impl FlightGuard {
    /// How many requests joined this flight so far (a handle the leader's
    /// work can read without holding the guard).
    pub(crate) fn followers(&self) -> Arc<AtomicUsize> {
        self.followers.clone()
    }

    pub(crate) fn publish(self, handover: Handover) {
        let _ = self.tx.send(Some(Arc::new(handover)));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Only this guard's own flight: a replaced one is another leader's.
        if map
            .get(&self.key)
            .is_some_and(|f| f.slot.same_channel(&self.tx.subscribe()))
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

    const HOLD: Duration = Duration::from_secs(60);

    fn entry() -> Entry {
        entry::decode(&value(b"x")).unwrap()
    }

    #[tokio::test]
    async fn followers_get_the_leaders_result() {
        let flights = Flights::default();
        let Join::Leader(guard) = flights.join("k", HOLD) else {
            panic!("first is leader")
        };
        let Join::Follower(slot) = flights.join("k", HOLD) else {
            panic!("second follows")
        };
        assert_eq!(guard.followers().load(Relaxed), 1);
        let waiter = tokio::spawn(slot.wait());
        guard.publish(Handover::decoded(Arc::new(entry()), CacheStatus::Hit));
        let Waited::Published(got) = waiter.await.unwrap() else {
            panic!("a result")
        };
        assert_eq!(got.entry().expect("an entry").body, "x");
        assert!(
            matches!(flights.join("k", HOLD), Join::Leader(_)),
            "the flight is over"
        );
    }

    #[test]
    fn a_stored_value_is_decoded_once_when_a_follower_asks() {
        let handover = Handover::encoded(value(b"stored"), CacheStatus::Hit);
        let first = handover.entry().expect("an entry").clone();
        assert_eq!(first.body, "stored");
        // The same decoded entry for every follower.
        assert!(Arc::ptr_eq(&first, handover.entry().unwrap()));
        // A value that does not decode sends the followers to the service.
        assert!(
            Handover::encoded(Bytes::from_static(b"junk"), CacheStatus::Hit)
                .entry()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers_at_once() {
        let flights = Flights::default();
        let Join::Leader(guard) = flights.join("k", HOLD) else {
            panic!()
        };
        let Join::Follower(slot) = flights.join("k", HOLD) else {
            panic!()
        };
        let waiter = tokio::spawn(slot.wait());
        drop(guard);
        let started = std::time::Instant::now();
        assert!(matches!(waiter.await.unwrap(), Waited::Released));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn followers_stop_waiting_when_the_leaders_hold_ends() {
        let flights = Flights::default();
        let hold = Duration::from_millis(50);
        let Join::Leader(_guard) = flights.join("k", hold) else {
            panic!()
        };
        let Join::Follower(slot) = flights.join("k", hold) else {
            panic!()
        };
        assert!(matches!(slot.wait().await, Waited::TimedOut));
    }

    #[tokio::test]
    async fn a_leader_past_its_hold_is_replaced_and_keeps_only_its_own_flight() {
        let flights = Flights::default();
        let hold = Duration::from_millis(50);
        let Join::Leader(stalled) = flights.join("k", hold) else {
            panic!()
        };
        let Join::Follower(early) = flights.join("k", hold) else {
            panic!("joined within the hold")
        };
        tokio::time::sleep(hold).await;
        // The hold is over: the next request leads a new flight, and the
        // ones after it follow that one.
        let Join::Leader(next) = flights.join("k", hold) else {
            panic!("the stalled leader still holds the key")
        };
        let Join::Follower(late) = flights.join("k", hold) else {
            panic!("a second leader")
        };
        assert_eq!(next.followers().load(Relaxed), 1);
        // The stalled leader ends: the new flight stays.
        drop(stalled);
        assert!(matches!(early.wait().await, Waited::Released));
        let waiter = tokio::spawn(late.wait());
        next.publish(Handover::decoded(Arc::new(entry()), CacheStatus::Hit));
        assert!(matches!(waiter.await.unwrap(), Waited::Published(_)));
    }
}
