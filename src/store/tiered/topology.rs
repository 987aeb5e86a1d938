//! Which keys the in-process tier may serve: one version per Redis Cluster
//! hash slot (a single one for one Redis), odd while the primary that owns
//! the slot is tracked, and the owner table it is derived from.
//!
//! An entry keeps the versions of its key's slot and of its generation
//! key's slot as they were when it was filled; a lookup serves it only if
//! both are unchanged. Losing a tracking connection, or a slot moving to
//! another primary, changes the version, so everything filled before stops
//! being served at once, without a lock on the hit path.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicU32, Ordering},
};

use fred::{
    clients::Client,
    types::{cluster::ClusterRouting, config::Server},
};

/// The number of hash slots of a Redis Cluster.
pub(super) const CLUSTER_SLOTS: usize = 16384;

/// One version per slot: even while the slot may not be served, odd while
/// its primary is tracked. Every change of state, and every change of owner,
/// moves it on.
pub(super) struct Slots {
    versions: Box<[AtomicU32]>,
}

impl Slots {
    /// All slots untracked: `CLUSTER_SLOTS` of them on a cluster, one
    /// otherwise.
    pub(super) fn new(clustered: bool) -> Self {
        let n = if clustered { CLUSTER_SLOTS } else { 1 };
        Self {
            versions: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.versions.len()
    }

    /// The slot of `key` (always 0 for a single Redis).
    pub(super) fn slot(&self, key: &str) -> u16 {
        if self.versions.len() == 1 {
            0
        } else {
            fred::util::redis_keyslot(key.as_bytes())
        }
    }

    /// The slot's version now.
    #[inline]
    pub(super) fn version(&self, slot: u16) -> u32 {
        self.versions
            .get(usize::from(slot))
            .map_or(0, |v| v.load(Ordering::SeqCst))
    }

    /// Whether a version is one of a tracked slot.
    #[inline]
    pub(super) fn tracked(version: u32) -> bool {
        version & 1 == 1
    }

    /// Whether every slot is tracked.
    pub(super) fn all_tracked(&self) -> bool {
        self.versions
            .iter()
            .all(|v| Self::tracked(v.load(Ordering::SeqCst)))
    }

    /// Puts slot `i` in state `tracked`. A `moved` slot gets a new version
    /// even when it stays tracked (its entries were read from another
    /// node). Only one writer at a time (the topology lock).
    fn set(&self, i: usize, tracked: bool, moved: bool) {
        let v = &self.versions[i];
        let now = v.load(Ordering::SeqCst);
        let mut next = now;
        if moved && Self::tracked(next) {
            next = next.wrapping_add(1);
        }
        if Self::tracked(next) != tracked {
            next = next.wrapping_add(1);
        }
        if next != now {
            v.store(next, Ordering::SeqCst);
        }
    }
}

/// A tracking connection to one node.
pub(super) struct Tracker {
    /// Tells this connection from an earlier one to the same node.
    pub(super) id: u64,
    pub(super) client: Client,
    /// Connected with `CLIENT TRACKING` on.
    pub(super) up: bool,
    /// How many times its connection was lost: tracking switched on again
    /// counts only if none was lost meanwhile.
    pub(super) losses: u64,
}

/// Who owns each slot, and the tracking connections to them. Changed under
/// a lock, off the hit path.
pub(super) struct Topology {
    /// The primary that owns each slot (`None`: no one known).
    pub(super) owners: Vec<Option<Server>>,
    pub(super) trackers: HashMap<Server, Tracker>,
    /// Nodes that refused `CLIENT TRACKING`: their slots stay off.
    pub(super) refused: HashSet<Server>,
    /// Nodes whose tracking connection failed to open, already warned about.
    pub(super) failing: HashSet<Server>,
    next_id: u64,
}

impl Topology {
    pub(super) fn new(slots: usize) -> Self {
        Self {
            owners: vec![None; slots],
            trackers: HashMap::new(),
            refused: HashSet::new(),
            failing: HashSet::new(),
            next_id: 0,
        }
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Takes a new owner table. Returns, per slot, whether its owner
    /// changed, and the trackers of nodes that own no slot any more (to be
    /// closed). Does not touch the slot versions (see [`Topology::sync`]).
    pub(super) fn set_owners(&mut self, owners: Vec<Option<Server>>) -> (Vec<bool>, Vec<Client>) {
        let moved: Vec<bool> = self
            .owners
            .iter()
            .zip(&owners)
            .map(|(old, new)| old != new)
            .collect();
        self.owners = owners;
        let primaries: HashSet<&Server> = self.owners.iter().flatten().collect();
        let mut retired = Vec::new();
        self.trackers.retain(|server, tracker| {
            let keep = primaries.contains(server);
            if !keep {
                retired.push(tracker.client.clone());
            }
            keep
        });
        self.refused.retain(|s| primaries.contains(s));
        self.failing.retain(|s| primaries.contains(s));
        (moved, retired)
    }

    /// Whether `server` owns any slot.
    pub(super) fn owns_slots(&self, server: &Server) -> bool {
        self.owners.iter().flatten().any(|s| s == server)
    }

    /// Brings every slot's version in line with its owner's tracker;
    /// `moved(i)` slots get a new version in any case.
    pub(super) fn sync(&self, slots: &Slots, moved: impl Fn(usize) -> bool) {
        for (i, owner) in self.owners.iter().enumerate().take(slots.len()) {
            let tracked = owner
                .as_ref()
                .and_then(|s| self.trackers.get(s))
                .is_some_and(|t| t.up);
            slots.set(i, tracked, moved(i));
        }
    }

    /// The primaries with no tracking connection, refused ones left out.
    pub(super) fn missing(&self) -> Vec<Server> {
        let mut missing: Vec<Server> = self
            .owners
            .iter()
            .flatten()
            .filter(|s| !self.trackers.contains_key(*s) && !self.refused.contains(*s))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        missing.sort();
        missing
    }
}

/// The owner of each slot in fred's view of the cluster.
pub(super) fn owners(routing: &ClusterRouting) -> Vec<Option<Server>> {
    let mut owners = vec![None; CLUSTER_SLOTS];
    for range in routing.slots() {
        let end = usize::from(range.end).min(CLUSTER_SLOTS - 1);
        for owner in owners
            .iter_mut()
            .take(end + 1)
            .skip(usize::from(range.start))
        {
            *owner = Some(range.primary.clone());
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_tracked_only_at_odd_versions_and_a_move_always_changes_it() {
        let slots = Slots::new(true);
        assert!(!Slots::tracked(slots.version(7)));
        slots.set(7, true, false);
        let first = slots.version(7);
        assert!(Slots::tracked(first));
        // Nothing changed: same version.
        slots.set(7, true, false);
        assert_eq!(slots.version(7), first);
        // Moved to another tracked owner: new version, still tracked.
        slots.set(7, true, true);
        let moved = slots.version(7);
        assert!(Slots::tracked(moved) && moved != first);
        // Its owner's tracking lost.
        slots.set(7, false, false);
        assert!(!Slots::tracked(slots.version(7)));
        assert!(!slots.all_tracked());
    }

    #[test]
    fn a_single_redis_has_one_slot() {
        let slots = Slots::new(false);
        assert_eq!(slots.len(), 1);
        assert_eq!(slots.slot("anything"), 0);
        assert_eq!(Slots::new(true).slot("foo"), 12182);
    }

    #[test]
    fn new_owners_report_moved_slots_and_missing_primaries() {
        let a = Server::new("a", 1);
        let b = Server::new("b", 2);
        let mut topology = Topology::new(4);
        let (moved, retired) = topology.set_owners(vec![
            Some(a.clone()),
            Some(a.clone()),
            Some(b.clone()),
            None,
        ]);
        assert_eq!(moved, [true, true, true, false]);
        assert!(retired.is_empty());
        assert_eq!(topology.missing(), [a.clone(), b.clone()]);
        topology.refused.insert(b.clone());
        assert_eq!(topology.missing(), std::slice::from_ref(&a));
        let (moved, _) = topology.set_owners(vec![
            Some(a.clone()),
            Some(b.clone()),
            Some(b.clone()),
            None,
        ]);
        assert_eq!(moved, [false, true, false, false]);
        // b left: it is forgotten, refused or not.
        topology.set_owners(vec![Some(a.clone()); 4]);
        assert!(topology.refused.is_empty());
        assert!(!topology.owns_slots(&b));
    }
}
