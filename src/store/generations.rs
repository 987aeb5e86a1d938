//! Namespace generations kept in process: a copy-on-write map read on every
//! hit without a lock, used by the Redis store's tracked generations and by
//! the in-process tier.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use super::KeyHasher;

/// Namespace generations read from Redis, each kept for at most `ttl`.
/// Every hit reads one and they change only on a namespace bump, so readers take no lock and share
/// no counter (`ArcSwap`); a change copies the map, which holds one value
/// per namespace.
pub(crate) struct Generations {
    map: ArcSwap<HashMap<String, (u64, Instant), KeyHasher>>,
    ttl: Duration,
}

impl Generations {
    /// A bound for a pathological number of namespaces: past it the map
    /// starts over (a cleared generation is only read from Redis again).
    const MAX: usize = 10_000;

    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            map: ArcSwap::from_pointee(HashMap::default()),
            ttl,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        let map = self.map.load();
        let &(generation, at) = map.get(key)?;
        (at.elapsed() < self.ttl).then_some(generation)
    }

    pub(crate) fn insert(&self, key: &str, generation: u64) {
        // Every fill of the tier reads the generation again: leave the map
        // alone (no copy, no contended swap) while it holds the same value
        // for less than half its time, and renew it after that.
        let known = self.map.load().get(key).copied();
        if known.is_some_and(|(g, at)| g == generation && at.elapsed() < self.ttl / 2) {
            return;
        }
        let at = Instant::now();
        self.map.rcu(|map| {
            let mut map = if map.len() >= Self::MAX {
                HashMap::default()
            } else {
                HashMap::clone(map)
            };
            map.insert(key.to_owned(), (generation, at));
            map
        });
    }

    pub(crate) fn remove(&self, key: &str) {
        // Called for every key written or dropped; most are entry keys.
        if !self.map.load().contains_key(key) {
            return;
        }
        self.map.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(key);
            map
        });
    }

    pub(crate) fn clear(&self) {
        self.map.store(Arc::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_copy_the_map_only_when_a_value_changes() {
        let gens = Generations::new(Duration::from_secs(60));
        assert_eq!(gens.get("g"), None);
        gens.insert("g", 3);
        assert_eq!(gens.get("g"), Some(3));
        let before = gens.map.load_full();
        gens.insert("g", 3);
        assert!(
            Arc::ptr_eq(&before, &gens.map.load_full()),
            "copied for nothing"
        );
        gens.insert("g", 4);
        assert_eq!(gens.get("g"), Some(4));
        gens.remove("g");
        assert_eq!(gens.get("g"), None);
    }

    #[test]
    fn a_generation_older_than_the_tier_ttl_is_not_used() {
        let gens = Generations::new(Duration::ZERO);
        gens.insert("g", 1);
        assert_eq!(gens.get("g"), None);
    }
}
