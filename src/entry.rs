//! The stored form of a response.
//!
//! Layout: the 4-byte magic `TRC` + format version, a big-endian `u32` length,
//! that many bytes of JSON metadata (status, headers, stored-at, TTL, namespace
//! generation), then the raw body bytes (no base64). Decoding checks every part
//! and returns `None` for anything unexpected: a value that does not decode is a
//! miss, never a panic.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 3] = b"TRC";
const FORMAT: u8 = 1;
const HEAD_LEN: usize = MAGIC.len() + 1 + 4;

/// Headers recomputed when served, or never shared; not stored. Hop-by-hop
/// headers (and those `Connection` names) are not stored either.
const NOT_STORED: [HeaderName; 3] = [header::CONTENT_LENGTH, header::AGE, header::SET_COOKIE];

/// What the primary key of a response with `Vary` holds: the request headers
/// that select a variant, and the nonce that names this set of variants (a
/// new nonce on every change of `Vary` or after an invalidation, so variants
/// written before can never be selected again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marker {
    #[serde(rename = "n")]
    pub(crate) names: Vec<String>,
    #[serde(rename = "i")]
    pub(crate) nonce: String,
}

/// The HTTP facts stored with an entry beyond its lifetimes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extra {
    /// The response's age when it was received (RFC 9111 §4.2.3).
    pub(crate) initial_age_ms: u64,
    /// Never served stale without revalidation.
    pub(crate) must_revalidate: bool,
    /// May be served to requests carrying `Authorization`.
    pub(crate) shared: bool,
    /// The variant id of the request that produced it, for a response with
    /// `Vary`.
    pub(crate) variant: Option<String>,
    /// Set on the marker stored at the primary key of a varying response.
    pub(crate) marker: Option<Marker>,
}

#[derive(Serialize, Deserialize)]
struct Meta<'a> {
    /// Status code.
    s: u16,
    /// Headers as name/value pairs, in order.
    #[serde(borrow)]
    h: Vec<(Text<'a>, Text<'a>)>,
    /// Stored at, milliseconds since the Unix epoch.
    t: u64,
    /// Fresh for this many milliseconds (the jittered TTL).
    l: u64,
    /// Stale-while-revalidate window after that, in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    w: u64,
    /// Stale-if-error window after freshness, in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    e: u64,
    /// Kept for revalidation after freshness, in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    r: u64,
    /// How long the origin took to produce it, in milliseconds (for early
    /// refresh).
    #[serde(default, skip_serializing_if = "is_zero")]
    d: u64,
    /// The namespace generation the entry was written under.
    #[serde(default, skip_serializing_if = "is_zero")]
    g: u64,
    /// The age the response had when it was received, in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    a: u64,
    /// Must be revalidated once stale.
    #[serde(default, skip_serializing_if = "is_false")]
    m: bool,
    /// May be served to requests carrying `Authorization`.
    #[serde(default, skip_serializing_if = "is_false")]
    p: bool,
    /// The variant id (responses with `Vary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    /// A `Vary` marker instead of a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<Marker>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// A string that borrows from the stored value when it has no escapes (a
/// `Cow<str>` inside a tuple would always be copied).
#[derive(Serialize)]
#[serde(transparent)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// How long an entry is fresh, and how long it may be served stale after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    pub(crate) fresh: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    /// How long past freshness it is kept to be revalidated (responses with
    /// a validator).
    pub(crate) revalidate: Duration,
}

impl Lifetimes {
    /// How long the store keeps the entry: fresh plus the longest window after.
    pub(crate) fn store_ttl(&self) -> Duration {
        self.fresh
            + self
                .stale_while_revalidate
                .max(self.stale_if_error)
                .max(self.revalidate)
    }
}

/// Where an entry stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    /// Past its TTL, inside the stale-while-revalidate window.
    StaleWhileRevalidate,
    /// Past its TTL and the revalidate window, inside the stale-if-error one:
    /// served only when the origin fails.
    StaleIfError,
    Expired,
}

/// A decoded entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) stored_at_ms: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) swr_ms: u64,
    pub(crate) sie_ms: u64,
    pub(crate) keep_ms: u64,
    pub(crate) delta_ms: u64,
    pub(crate) generation: u64,
    pub(crate) initial_age_ms: u64,
    pub(crate) must_revalidate: bool,
    pub(crate) shared: bool,
    pub(crate) variant: Option<Box<str>>,
    pub(crate) marker: Option<std::sync::Arc<Marker>>,
    pub(crate) body: Bytes,
}

impl Entry {
    /// The entry's current age in milliseconds: its age when received plus
    /// the time it has been stored.
    pub(crate) fn age_ms(&self, now_ms: u64) -> u64 {
        self.initial_age_ms
            .saturating_add(now_ms.saturating_sub(self.stored_at_ms))
    }

    /// The `Age` a client sees, in seconds.
    pub(crate) fn age_secs(&self, now_ms: u64) -> u64 {
        self.age_ms(now_ms) / 1000
    }

    /// Milliseconds of freshness left at `now_ms`; negative once stale.
    pub(crate) fn fresh_left_ms(&self, now_ms: u64) -> i128 {
        i128::from(self.stored_at_ms) + i128::from(self.ttl_ms) - i128::from(now_ms)
    }

    /// How long the store keeps it after it was stored, in milliseconds.
    pub(crate) fn lives_ms(&self) -> u64 {
        self.ttl_ms
            .saturating_add(self.swr_ms.max(self.sie_ms).max(self.keep_ms))
    }

    /// Where the entry stands at `now_ms` (a store that expires lazily may
    /// still return an expired one).
    pub(crate) fn freshness(&self, now_ms: u64) -> Freshness {
        let age = now_ms.saturating_sub(self.stored_at_ms);
        let past = age.checked_sub(self.ttl_ms);
        match past {
            None => Freshness::Fresh,
            Some(p) if p < self.swr_ms => Freshness::StaleWhileRevalidate,
            Some(p) if p < self.sie_ms => Freshness::StaleIfError,
            Some(_) => Freshness::Expired,
        }
    }

    /// The XFetch rule: refresh early with a probability that grows as expiry
    /// nears and with the time the origin needs (`delta`). `unit` is a uniform
    /// draw in `(0, 1]`.
    pub(crate) fn early_refresh_due(&self, now_ms: u64, beta: f64, unit: f64) -> bool {
        if beta <= 0.0 || self.delta_ms == 0 {
            return false;
        }
        let expiry = self.stored_at_ms.saturating_add(self.ttl_ms) as f64;
        now_ms as f64 - self.delta_ms as f64 * beta * unit.ln() >= expiry
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Encodes a response for storage. `None` when a header value is not text
/// (such a response is not stored).
pub(crate) fn encode(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    lifetimes: &Lifetimes,
    origin_time: Duration,
    generation: u64,
    skip: Option<&HeaderName>,
) -> Option<Bytes> {
    encode_with(
        status,
        headers,
        body,
        lifetimes,
        origin_time,
        generation,
        skip,
        &Extra::default(),
    )
}

/// [`encode`] with the HTTP facts of [`Extra`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_with(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    lifetimes: &Lifetimes,
    origin_time: Duration,
    generation: u64,
    skip: Option<&HeaderName>,
    extra: &Extra,
) -> Option<Bytes> {
    let mut h = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if NOT_STORED.contains(name)
            || skip == Some(name)
            || crate::semantics::is_hop_by_hop(name, headers)
        {
            continue;
        }
        h.push((
            Text(Cow::Borrowed(name.as_str())),
            Text(Cow::Borrowed(value.to_str().ok()?)),
        ));
    }
    let meta = Meta {
        s: status.as_u16(),
        h,
        t: now_ms(),
        l: lifetimes.fresh.as_millis() as u64,
        w: lifetimes.stale_while_revalidate.as_millis() as u64,
        e: lifetimes.stale_if_error.as_millis() as u64,
        r: lifetimes.revalidate.as_millis() as u64,
        d: origin_time.as_millis() as u64,
        g: generation,
        a: extra.initial_age_ms,
        m: extra.must_revalidate,
        p: extra.shared,
        x: extra.variant.clone(),
        v: extra.marker.clone(),
    };
    let json = serde_json::to_vec(&meta).ok()?;
    let mut out = BytesMut::with_capacity(HEAD_LEN + json.len() + body.len());
    out.put_slice(MAGIC);
    out.put_u8(FORMAT);
    out.put_u32(u32::try_from(json.len()).ok()?);
    out.put_slice(&json);
    out.put_slice(body);
    Some(out.freeze())
}

/// Decodes a stored value; `None` for anything that is not an entry of this
/// format. The body shares `value`'s memory.
pub(crate) fn decode(value: &Bytes) -> Option<Entry> {
    let head = value.get(..HEAD_LEN)?;
    if &head[..3] != MAGIC || head[3] != FORMAT {
        return None;
    }
    let len = u32::from_be_bytes(head[4..8].try_into().ok()?) as usize;
    let json_end = HEAD_LEN.checked_add(len)?;
    let meta: Meta<'_> = serde_json::from_slice(value.get(HEAD_LEN..json_end)?).ok()?;
    let status = StatusCode::from_u16(meta.s).ok()?;
    let mut headers = HeaderMap::with_capacity(meta.h.len() + 1);
    for (Text(name), Text(v)) in meta.h {
        let value = match v {
            // Points into `value`: share its memory instead of copying.
            Cow::Borrowed(v) => HeaderValue::from_maybe_shared(value.slice_ref(v.as_bytes())),
            Cow::Owned(v) => HeaderValue::from_str(&v),
        };
        headers.append(HeaderName::from_bytes(name.as_bytes()).ok()?, value.ok()?);
    }
    // Set here, once per decode, so serving the entry (again and again from
    // the in-process tier) formats nothing.
    let body = value.slice(json_end..);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Some(Entry {
        status,
        headers,
        stored_at_ms: meta.t,
        ttl_ms: meta.l,
        swr_ms: meta.w,
        sie_ms: meta.e,
        keep_ms: meta.r,
        delta_ms: meta.d,
        generation: meta.g,
        initial_age_ms: meta.a,
        must_revalidate: meta.m,
        shared: meta.p,
        variant: meta.x.map(String::into_boxed_str),
        marker: meta.v.map(std::sync::Arc::new),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bytes {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\\x\""));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        encode(
            StatusCode::OK,
            &headers,
            b"{\"a\":1}",
            &lifetimes(9_000, 0, 0),
            Duration::from_millis(12),
            3,
            None,
        )
        .unwrap()
    }

    fn lifetimes(fresh: u64, swr: u64, sie: u64) -> Lifetimes {
        Lifetimes {
            fresh: Duration::from_millis(fresh),
            stale_while_revalidate: Duration::from_millis(swr),
            stale_if_error: Duration::from_millis(sie),
            revalidate: Duration::ZERO,
        }
    }

    #[test]
    fn freshness_windows() {
        let v = encode(
            StatusCode::OK,
            &HeaderMap::new(),
            b"",
            &lifetimes(1000, 500, 2000),
            Duration::ZERO,
            0,
            None,
        )
        .unwrap();
        let e = decode(&v).unwrap();
        let t = e.stored_at_ms;
        assert_eq!(e.freshness(t), Freshness::Fresh);
        assert_eq!(e.freshness(t + 999), Freshness::Fresh);
        assert_eq!(e.freshness(t + 1000), Freshness::StaleWhileRevalidate);
        assert_eq!(e.freshness(t + 1499), Freshness::StaleWhileRevalidate);
        assert_eq!(e.freshness(t + 1500), Freshness::StaleIfError);
        assert_eq!(e.freshness(t + 2999), Freshness::StaleIfError);
        assert_eq!(e.freshness(t + 3000), Freshness::Expired);
        assert_eq!(
            lifetimes(1000, 500, 2000).store_ttl(),
            Duration::from_millis(3000)
        );
        let plain = decode(&sample()).unwrap();
        assert_eq!(
            plain.freshness(plain.stored_at_ms + 9000),
            Freshness::Expired
        );
    }

    #[test]
    fn early_refresh_grows_near_expiry() {
        let e = decode(&sample()).unwrap(); // 9 s TTL, 12 ms origin time
        let t = e.stored_at_ms;
        // Far from expiry: never, even on the unluckiest draw.
        assert!(!e.early_refresh_due(t, 1.0, 1e-9));
        // 100 ms before expiry: only unlikely draws (ln(u) < -100/12).
        assert!(!e.early_refresh_due(t + 8_900, 1.0, 0.5));
        assert!(e.early_refresh_due(t + 8_900, 1.0, 1e-5));
        // A larger beta refreshes earlier.
        assert!(e.early_refresh_due(t + 8_900, 20.0, 0.5));
        assert!(!e.early_refresh_due(t + 8_900, 0.0, 1e-9));
    }

    #[test]
    fn round_trip_keeps_status_headers_body_and_drops_hop_by_hop() {
        let e = decode(&sample()).unwrap();
        assert_eq!(e.status, StatusCode::OK);
        assert_eq!(e.body, Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(e.ttl_ms, 9000);
        assert_eq!(e.generation, 3);
        assert_eq!(e.headers["content-type"], "application/json");
        let multi: Vec<_> = e.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(e.headers["etag"], "\"v1\\x\"");
        assert!(e.headers.get(header::CONNECTION).is_none());
        // The real length, whatever the response said.
        assert_eq!(e.headers[header::CONTENT_LENGTH], "7");
        assert_eq!(e.headers.get_all(header::CONTENT_LENGTH).iter().count(), 1);
    }

    #[test]
    fn body_is_raw_not_base64() {
        let v = sample();
        assert!(v.ends_with(b"{\"a\":1}"));
    }

    #[test]
    fn anything_malformed_is_none() {
        let good = sample();
        assert!(decode(&Bytes::new()).is_none());
        assert!(decode(&Bytes::from_static(b"hello world")).is_none());
        assert!(decode(&Bytes::from_static(b"{\"s\":200}")).is_none());
        for cut in 0..good.len() - 7 {
            assert!(decode(&good.slice(..cut)).is_none(), "truncated at {cut}");
        }
        let mut future = good.to_vec();
        future[3] = 2;
        assert!(decode(&Bytes::from(future)).is_none());
        let mut huge_len = good.to_vec();
        huge_len[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&Bytes::from(huge_len)).is_none());
        let mut bad_status = good.to_vec();
        let pos = bad_status.windows(5).position(|w| w == b"\"s\":2").unwrap();
        bad_status[pos + 4..pos + 7].copy_from_slice(b" 99");
        assert!(decode(&Bytes::from(bad_status)).is_none());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..2000usize {
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                v.push(state as u8);
            }
            if len > 8 {
                v[..4].copy_from_slice(b"TRC\x01");
                v[4..8].copy_from_slice(&((len as u32) % 64).to_be_bytes());
            }
            let _ = decode(&Bytes::from(v));
        }
    }

    #[test]
    fn non_text_header_values_are_not_stored() {
        let mut headers = HeaderMap::new();
        headers.insert("x-bin", HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap());
        assert!(encode(
            StatusCode::OK,
            &headers,
            b"",
            &lifetimes(1000, 0, 0),
            Duration::ZERO,
            0,
            None
        )
        .is_none());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn valid() -> Bytes {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        let l = Lifetimes {
            fresh: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(1),
            stale_if_error: Duration::ZERO,
            revalidate: Duration::ZERO,
        };
        encode(
            StatusCode::OK,
            &headers,
            b"hello",
            &l,
            Duration::from_millis(3),
            7,
            None,
        )
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_decode_to_none_or_an_entry_without_panicking(v in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&Bytes::from(v));
        }

        #[test]
        fn random_bytes_behind_our_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512), len in any::<u32>()) {
            let mut v = b"TRC\x01".to_vec();
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&tail);
            let _ = decode(&Bytes::from(v));
        }

        #[test]
        fn any_single_byte_change_or_truncation_of_a_valid_entry_is_safe(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let good = valid();
            let mut v = good.to_vec();
            let pos = pos % v.len();
            v[pos] = byte;
            if let Some(e) = decode(&Bytes::from(v)) {
                // Whatever decodes is a well-formed response.
                prop_assert!(e.status.as_u16() >= 100);
            }
            let cut = cut % good.len();
            let _ = decode(&good.slice(..cut));
        }

        #[test]
        fn future_format_versions_are_misses(version in 2u8..=255) {
            let mut v = valid().to_vec();
            v[3] = version;
            prop_assert!(decode(&Bytes::from(v)).is_none());
        }
    }
}
