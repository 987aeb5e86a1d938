//! Keys lately found stored, so that a lookup of any other key (likely a
//! miss) takes the cross-instance lock in its own round trip.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Keys a layer has recently found stored or stored itself, as bits of a
/// fixed table (128 KiB): a key not in it (new, or not met lately) is looked
/// up with the lock taken in the same round trip ([`Backend::fetch_or_lock`](crate::store::Backend::fetch_or_lock)).
/// A wrong answer only costs speed: a key taken as seen is looked up plainly
/// and locked after a miss; one taken as unseen and found stored takes a
/// lock it gives back. A quarter of the table (262 144 keys) fills before it
/// starts over, so a key space up to about that size settles on plain
/// lookups; a larger one takes and gives back a lock on more of its hits.
pub(crate) struct Seen {
    bits: Box<[AtomicU64]>,
    hasher: crate::store::KeyHasher,
    /// Bits set since the table was last cleared.
    set: AtomicU64,
}

impl Seen {
    const BITS: usize = 1 << 20;

    pub(crate) fn new() -> Self {
        Self {
            bits: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            hasher: crate::store::KeyHasher::default(),
            set: AtomicU64::new(0),
        }
    }

    fn slot(&self, key: &str) -> (usize, u64) {
        use std::hash::BuildHasher;
        let bit = (self.hasher.hash_one(key) as usize) % Self::BITS;
        (bit / 64, 1 << (bit % 64))
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        let (word, bit) = self.slot(key);
        self.bits[word].load(Relaxed) & bit != 0
    }

    /// Marks `key` seen. Once a quarter of the table has been set the table
    /// starts over, so that keys seen long ago (and colliding keys) do not
    /// pass as seen for ever.
    pub(crate) fn mark(&self, key: &str) {
        let (word, bit) = self.slot(key);
        if self.bits[word].load(Relaxed) & bit != 0 {
            return;
        }
        self.bits[word].fetch_or(bit, Relaxed);
        if self.set.fetch_add(1, Relaxed) + 1 >= (Self::BITS / 4) as u64 {
            self.set.store(0, Relaxed);
            for word in self.bits.iter() {
                word.store(0, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn seen_keys_are_found_and_the_table_starts_over_when_a_quarter_is_set() {
        let seen = Seen::new();
        assert!(!seen.contains("t:v1:default:GET:/items/1"));
        seen.mark("t:v1:default:GET:/items/1");
        assert!(seen.contains("t:v1:default:GET:/items/1"));
        // Marking keys until the table starts over forgets the first one
        // (collisions only make a key look seen sooner).
        let mut forgotten = false;
        for i in 0..Seen::BITS {
            seen.mark(&format!("t:v1:default:GET:/other/{i}"));
            if !seen.contains("t:v1:default:GET:/items/1") {
                forgotten = true;
                break;
            }
        }
        assert!(forgotten, "a key seen once passes as seen for ever");
    }
}
