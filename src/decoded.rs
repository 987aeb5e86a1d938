//! Entries the layer decoded lately, found again by their stored bytes.
//!
//! A Redis hit brings the entry's bytes, and decoding them (the header map
//! above all) is the largest piece of the layer's own work on a hit. Bytes
//! equal to ones decoded before decode to the same entry, so the layer keeps
//! a decoded entry in each of a fixed number of slots (picked by the key's
//! hash) and reuses it when the bytes match: a comparison instead of a
//! decode. The key only picks the slot; the bytes decide, so an entry
//! rewritten in Redis, or another key in the same slot, is decoded afresh.
//!
//! A slot takes a new entry only when its key comes twice in a row among the
//! misses of that slot. Keeping an entry costs a copy of its bytes and,
//! because a kept entry is shared, its headers prepared once more; with more
//! keys in turn than slots, keeping every decode would cost each hit that
//! and reuse nothing. Hot keys win their slots; keys that come and go are
//! decoded as they would be without the slots.

use std::{
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use crate::{
    entry::{self, Entry},
    store::KeyHasher,
};

/// How many entries are kept (one per slot).
const SLOTS: usize = 512;

/// Values longer than this are decoded every time: comparing them would
/// cost more than decoding (which does not read the body), and 512 of them
/// at most 8 MiB in all.
const MAX_LEN: usize = 16 * 1024;

/// Values of compressed entries are kept up to this length: comparing them
/// costs far less than decompressing their bodies for clients that do not
/// accept gzip.
const MAX_COMPRESSED_LEN: usize = 32 * 1024;

/// The longest body a kept compressed entry may decode to. Its decoded body
/// is made on the first hit by a client that does not accept gzip and kept
/// with it, so later such hits skip decompression (about 10 µs per 10 KiB):
/// with their values, at most 48 MiB in all for entries such clients ask
/// for.
const MAX_DECODED: usize = 64 * 1024;

pub(crate) struct Decoded {
    slots: Box<[Slot]>,
    hasher: KeyHasher,
}

struct Slot {
    kept: ArcSwapOption<Kept>,
    /// The hash of the key of the slot's last miss.
    candidate: AtomicU64,
}

struct Kept {
    /// A copy of the stored bytes, which the entry points into (the bytes a
    /// store returns may share a larger buffer, which must not be held).
    bytes: Bytes,
    entry: Arc<Entry>,
}

impl Decoded {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    kept: ArcSwapOption::empty(),
                    candidate: AtomicU64::new(0),
                })
                .collect(),
            hasher: KeyHasher::default(),
        }
    }

    /// The entry `value` (stored at `key`) decodes to; `None` when it does
    /// not decode.
    pub(crate) fn decode(&self, key: &str, value: &Bytes) -> Option<Arc<Entry>> {
        let long = value.len() > MAX_LEN;
        if value.len() > MAX_COMPRESSED_LEN || (long && !entry::compressed(value)) {
            return entry::decode(value).map(Arc::new);
        }
        let hash = self.hasher.hash_one(key);
        let slot = &self.slots[hash as usize % SLOTS];
        if let Some(kept) = &*slot.kept.load() {
            if kept.bytes == *value {
                return Some(kept.entry.clone());
            }
        }
        if slot.candidate.swap(hash, Relaxed) != hash {
            // Not twice in a row: decoded for this request alone.
            return entry::decode(value).map(Arc::new);
        }
        let bytes = Bytes::copy_from_slice(value);
        let entry = Arc::new(entry::decode(&bytes)?);
        // A kept entry shared with a client that does not accept gzip keeps
        // its decoded body too (decompressed once, not on every hit): only
        // entries that decode to `MAX_DECODED` or less are kept, so the
        // slots stay within their bound.
        if entry.gzipped.is_some_and(|len| len > MAX_DECODED as u64) {
            return Some(entry);
        }
        slot.kept.store(Some(Arc::new(Kept {
            bytes,
            entry: entry.clone(),
        })));
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{header, HeaderMap, HeaderValue, StatusCode};

    use super::*;

    fn stored(body: &[u8]) -> Bytes {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        entry::encode(
            StatusCode::OK,
            &headers,
            body,
            &entry::Lifetimes {
                fresh: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                revalidate: Duration::ZERO,
            },
            Duration::ZERO,
            0,
            None,
        )
        .unwrap()
    }

    #[test]
    fn equal_bytes_give_the_entry_decoded_before_and_other_bytes_their_own() {
        let decoded = Decoded::new();
        // Kept from the second time in a row, then reused. One value: each
        // encoding carries the time it was stored.
        let value = stored(b"{\"v\":1}");
        let once = decoded.decode("k", &value).unwrap();
        let first = decoded.decode("k", &value.clone()).unwrap();
        let again = decoded
            .decode("k", &Bytes::copy_from_slice(&value))
            .unwrap();
        assert!(!Arc::ptr_eq(&once, &first));
        assert!(Arc::ptr_eq(&first, &again));
        // Rewritten under the same key: decoded afresh, never the old one.
        let changed = decoded.decode("k", &stored(b"{\"v\":2}")).unwrap();
        assert_eq!(&changed.body[..], b"{\"v\":2}");
        assert!(!Arc::ptr_eq(&first, &changed));
        // Whatever another key kept in the slot, its bytes decide.
        for n in 0..2 * SLOTS {
            let key = format!("k{n}");
            let body = format!("{{\"n\":{n}}}");
            for _ in 0..3 {
                let entry = decoded.decode(&key, &stored(body.as_bytes())).unwrap();
                assert_eq!(entry.body, body.as_bytes());
            }
        }
        assert!(decoded
            .decode("k", &Bytes::from_static(b"not an entry"))
            .is_none());
    }

    #[test]
    fn keys_that_come_in_turn_are_not_kept() {
        // More keys in turn than slots: keeping each would copy and evict
        // on every hit and never be reused.
        let decoded = Decoded::new();
        let values: Vec<Bytes> = (0..4 * SLOTS)
            .map(|n| stored(format!("{{\"n\":{n}}}").as_bytes()))
            .collect();
        let mut kept = 0;
        for _ in 0..2 {
            for (n, value) in values.iter().enumerate() {
                let entry = decoded.decode(&format!("k{n}"), value).unwrap();
                kept += usize::from(Arc::strong_count(&entry) > 1);
            }
        }
        // Only keys alone in their slot are kept (a few percent here).
        assert!(
            kept < values.len() / 4,
            "{kept} of {} kept",
            2 * values.len()
        );
    }

    #[test]
    fn a_value_over_the_limit_is_decoded_every_time() {
        let decoded = Decoded::new();
        let big = stored(&vec![b'x'; MAX_LEN + 1]);
        let first = decoded.decode("k", &big).unwrap();
        let again = decoded.decode("k", &big).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(first.body, again.body);
    }
}
