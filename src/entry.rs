//! The stored form of a response.
//!
//! Layout (format 5): the 4-byte magic `TRC` + format byte, a big-endian
//! `u32` length, that many bytes of metadata, then the raw body bytes (no
//! base64). The metadata is binary:
//!
//! - the status as a big-endian `u16`;
//! - stored-at, fresh-for, stale-while-revalidate, stale-if-error, kept-for,
//!   origin time, namespace generation and initial age, as LEB128 varints
//!   (milliseconds, or a plain number); a fresh-for of `0` marks a
//!   response that was never fresh ([`Entry::never_fresh`]), so that fact
//!   needs no field of its own and entries of every version carry it;
//! - a flags byte: must-revalidate, shared, has a variant id, is a `Vary`
//!   marker, the body is stored gzip-compressed;
//! - for a compressed body, its decoded length (LEB128);
//! - the variant id, then the marker (names, nonce), each string a `u16`
//!   length and its bytes;
//! - a `u16` header count, then each header as a name and a value. The name
//!   is one byte: the field's place in [`KNOWN`] plus one, or `0` followed by
//!   a `u16` length and the name. The value is a LEB128 length and the bytes.
//!   The first header is always `content-length`, the stored body's
//!   length: it is checked against the body when decoded, and served
//!   without being formatted again.
//!
//! An entry whose body the cache compressed (docs/compression.md) holds the
//! origin's fields as they were (no `Content-Encoding`, the origin's `ETag`)
//! and the gzip member; the representation a client gets is made when it is
//! served. Versions before compression refuse the flag, so an instance of
//! such a version, sharing the Redis during a rolling deploy, reads these
//! entries as misses and never serves compressed bytes as the body.
//!
//! Entries of formats 1 (JSON metadata), 2 (every name spelled out, no
//! `content-length`) and 3 (this layout with the byte `3`) are misses, as
//! any value of another format is. Decoding checks every part and returns `None` for anything unexpected:
//! a value that does not decode is a miss, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

const MAGIC: &[u8; 3] = b"TRC";
/// Format 5, with the high bit set. That byte cannot follow ASCII in UTF-8,
/// so a Redis client that checks whether a reply is text (fred does on
/// every typed `GET`) stops at the fourth byte instead of reading through
/// the body. Formats 3 and 4 were the same layout with `3` and `4` here;
/// format 5 marks key format 2 (docs/keys.md): an instance of another key
/// format reads this one's entries as misses, and this one reads theirs as
/// misses, so instances of both, sharing one Redis during a rolling deploy,
/// never serve each other's entries under keys that meant other requests.
const FORMAT: u8 = 0x80 | 5;
const HEAD_LEN: usize = MAGIC.len() + 1 + 4;

/// Response fields stored as one byte: their place in this list plus one.
/// Entries in Redis name fields by these places, so the list only grows at
/// its end (and a change that reorders it needs a new format).
const KNOWN: [HeaderName; 31] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::DATE,
    header::CACHE_CONTROL,
    header::ETAG,
    header::LAST_MODIFIED,
    header::EXPIRES,
    header::VARY,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LOCATION,
    header::CONTENT_DISPOSITION,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
    header::X_CONTENT_TYPE_OPTIONS,
    header::X_FRAME_OPTIONS,
    header::STRICT_TRANSPORT_SECURITY,
    header::CONTENT_SECURITY_POLICY,
    header::REFERRER_POLICY,
    header::SERVER,
    header::LINK,
    header::LOCATION,
    header::RETRY_AFTER,
    header::ALLOW,
    header::PRAGMA,
];

/// The code of `content-length` in [`KNOWN`].
const CONTENT_LENGTH_CODE: u8 = 1;

/// Headers recomputed when served, or never shared; not stored. Hop-by-hop
/// headers (and those `Connection` names) are not stored either.
const NOT_STORED: [HeaderName; 3] = [header::CONTENT_LENGTH, header::AGE, header::SET_COOKIE];

/// What the primary key of a response with `Vary` holds: the request headers
/// that select a variant, and the nonce that names this set of variants (a
/// new nonce on every change of `Vary` or after an invalidation, so variants
/// written before can never be selected again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) names: Vec<String>,
    pub(crate) nonce: String,
}

/// The HTTP facts stored with an entry beyond its lifetimes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extra {
    /// The response's age when it was received (RFC 9111 §4.2.3).
    pub(crate) initial_age_ms: u64,
    /// Never served stale without revalidation. Also set on a response
    /// that was never fresh (see [`Entry::never_fresh`]).
    pub(crate) must_revalidate: bool,
    /// May be served to requests carrying `Authorization`.
    pub(crate) shared: bool,
    /// The variant id of the request that produced it, for a response with
    /// `Vary`.
    pub(crate) variant: Option<String>,
    /// Set on the marker stored at the primary key of a varying response.
    pub(crate) marker: Option<Marker>,
    /// The body is a gzip member the cache made, of a body this long.
    pub(crate) gzipped: Option<u64>,
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
    /// `Some(decoded length)` when the body is stored gzip-compressed by the
    /// cache; see [`crate::gzip`].
    pub(crate) gzipped: Option<u64>,
    pub(crate) body: Bytes,
    /// The headers as a hit serves them, made on the first hit of an entry
    /// the in-process store or tier shares; see [`Served`]. For a
    /// compressed body: the gzip representation's.
    pub(crate) served: std::sync::OnceLock<Served>,
    /// For a compressed body shared in process: the decoded representation's
    /// headers and body, made on its first hit by a client that does not
    /// accept gzip (`None` inside when the body does not decompress).
    pub(crate) decoded: std::sync::OnceLock<Option<(Served, Bytes)>>,
}

/// A shared entry's headers with `age` and the cache-status field already
/// in place (as `HIT`): a hit clones this map and overwrites `age`, instead
/// of copying every field into a new map.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The cache-status field name the map was made for.
    pub(crate) status_header: Option<HeaderName>,
    pub(crate) headers: HeaderMap,
}

impl Entry {
    /// The bytes a shared entry may come to hold beyond its stored value:
    /// the decoded body of a compressed one, kept for clients that do not
    /// accept gzip. The in-process stores weigh entries with it, so it stays
    /// within their `max_bytes`.
    pub(crate) fn decoded_reserve(&self) -> usize {
        self.gzipped.map_or(0, |len| len as usize)
    }

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

    /// Whether the response was never fresh: its freshness lifetime when
    /// stored was zero (`no-cache`, `max-age=0`, an `Expires` in the past,
    /// no explicit freshness and no heuristic, or older on arrival than its
    /// lifetime). Such an entry is kept only to be revalidated: it is never
    /// served without a successful revalidation, whatever the request
    /// accepts (`max-stale`, `only-if-cached`) and whatever the windows
    /// (stale-while-revalidate, stale-if-error) say. Read from the stored
    /// fresh-for, so entries written by earlier versions are judged the
    /// same way.
    pub(crate) fn never_fresh(&self) -> bool {
        self.ttl_ms == 0
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
/// (such a response is not stored). The layer stores with [`encode_with`];
/// this is its short form for the crate's tests and benchmarks.
#[cfg(any(test, feature = "bench"))]
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
    let mut meta = BytesMut::with_capacity(64 + 48 * headers.len());
    meta.put_u16(status.as_u16());
    for n in [
        now_ms(),
        lifetimes.fresh.as_millis() as u64,
        lifetimes.stale_while_revalidate.as_millis() as u64,
        lifetimes.stale_if_error.as_millis() as u64,
        lifetimes.revalidate.as_millis() as u64,
        origin_time.as_millis() as u64,
        generation,
        extra.initial_age_ms,
    ] {
        put_varint(&mut meta, n);
    }
    let flags = u8::from(extra.must_revalidate)
        | u8::from(extra.shared) << 1
        | u8::from(extra.variant.is_some()) << 2
        | u8::from(extra.marker.is_some()) << 3
        | u8::from(extra.gzipped.is_some()) << 4;
    meta.put_u8(flags);
    if let Some(decoded) = extra.gzipped {
        put_varint(&mut meta, decoded);
    }
    if let Some(variant) = &extra.variant {
        put_str(&mut meta, variant.as_bytes())?;
    }
    if let Some(marker) = &extra.marker {
        meta.put_u16(u16::try_from(marker.names.len()).ok()?);
        for name in &marker.names {
            put_str(&mut meta, name.as_bytes())?;
        }
        put_str(&mut meta, marker.nonce.as_bytes())?;
    }
    let count_at = meta.len();
    meta.put_u16(0);
    // The body's own length first, whatever the response said.
    let length = body.len().to_string();
    meta.put_u8(CONTENT_LENGTH_CODE);
    put_varint(&mut meta, length.len() as u64);
    meta.put_slice(length.as_bytes());
    let mut count: u16 = 1;
    for (name, value) in headers {
        if NOT_STORED.contains(name)
            || skip == Some(name)
            || crate::http::is_hop_by_hop(name, headers)
        {
            continue;
        }
        // Only text values are stored (a response with another is not).
        let value = value.to_str().ok()?;
        match KNOWN.iter().position(|known| known == name) {
            Some(at) => meta.put_u8(at as u8 + 1),
            None => {
                meta.put_u8(0);
                put_str(&mut meta, name.as_str().as_bytes())?;
            }
        }
        put_varint(&mut meta, value.len() as u64);
        meta.put_slice(value.as_bytes());
        count = count.checked_add(1)?;
    }
    meta[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    let mut out = BytesMut::with_capacity(HEAD_LEN + meta.len() + body.len());
    out.put_slice(MAGIC);
    out.put_u8(FORMAT);
    out.put_u32(u32::try_from(meta.len()).ok()?);
    out.put_slice(&meta);
    out.put_slice(body);
    Some(out.freeze())
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn put_str(out: &mut BytesMut, s: &[u8]) -> Option<()> {
    out.put_u16(u16::try_from(s.len()).ok()?);
    out.put_slice(s);
    Some(())
}

/// Reads the metadata; every read checks its bounds.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    /// A LEB128 length and that many bytes.
    fn value(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?).ok()
    }
}

/// The number `text` spells in decimal digits; `None` for anything else or
/// a number past `usize`.
fn digits(text: &[u8]) -> Option<usize> {
    text.iter().try_fold(0usize, |n, &d| {
        let d = d.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(usize::from(d))
    })
}

/// Whether a stored value says its body is compressed (its flags, read
/// without decoding the rest; `false` for anything that is not an entry).
pub(crate) fn compressed(value: &[u8]) -> bool {
    let Some(meta) = value.get(HEAD_LEN..) else {
        return false;
    };
    if value[..3] != *MAGIC || value[3] != FORMAT {
        return false;
    }
    let mut r = Reader { buf: meta };
    let mut flags = || {
        r.u16()?;
        for _ in 0..8 {
            r.varint()?;
        }
        r.u8()
    };
    flags().is_some_and(|f| f & 16 != 0)
}

/// Decodes a stored value; `None` for anything that is not an entry of this
/// format. The body and the header values share `value`'s memory.
pub(crate) fn decode(value: &Bytes) -> Option<Entry> {
    let head = value.get(..HEAD_LEN)?;
    if &head[..3] != MAGIC || head[3] != FORMAT {
        return None;
    }
    let len = u32::from_be_bytes(head[4..8].try_into().ok()?) as usize;
    let meta_end = HEAD_LEN.checked_add(len)?;
    let mut r = Reader {
        buf: value.get(HEAD_LEN..meta_end)?,
    };
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let mut n = [0u64; 8];
    for slot in &mut n {
        *slot = r.varint()?;
    }
    let [stored_at_ms, ttl_ms, swr_ms, sie_ms, keep_ms, delta_ms, generation, initial_age_ms] = n;
    let flags = r.u8()?;
    if flags >> 5 != 0 {
        return None;
    }
    let gzipped = if flags & 16 != 0 {
        Some(r.varint()?)
    } else {
        None
    };
    let variant = if flags & 4 != 0 {
        Some(Box::from(r.str()?))
    } else {
        None
    };
    let marker = if flags & 8 != 0 {
        let count = r.u16()?;
        let names = (0..count)
            .map(|_| r.str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        let nonce = r.str()?.to_owned();
        Some(std::sync::Arc::new(Marker { names, nonce }))
    } else {
        None
    };
    let count = usize::from(r.u16()?);
    // Each header takes at least 2 bytes: a count the metadata cannot hold
    // is corrupt (and must not size the map).
    if count == 0 || count > r.buf.len() / 2 {
        return None;
    }
    let body = value.slice(meta_end..);
    // The stored `content-length` comes first and must be the body's.
    if r.u8()? != CONTENT_LENGTH_CODE {
        return None;
    }
    let length = r.value()?;
    if length.is_empty() || digits(length)? != body.len() {
        return None;
    }
    // Room for `age` and the cache-status header, so serving the entry does
    // not grow the map.
    // A compressed body's representations add up to two more.
    let room = if gzipped.is_some() { 4 } else { 2 };
    let mut headers = HeaderMap::try_with_capacity(count + room).ok()?;
    // Points into `value`: shares its memory, and is served as it is.
    let length = HeaderValue::from_maybe_shared(value.slice_ref(length)).ok()?;
    headers.insert(header::CONTENT_LENGTH, length);
    for _ in 1..count {
        let name = match r.u8()? {
            0 => {
                let len = usize::from(r.u16()?);
                HeaderName::from_bytes(r.take(len)?).ok()?
            }
            // Only one `content-length`, the one checked above.
            CONTENT_LENGTH_CODE => return None,
            code => KNOWN.get(usize::from(code) - 1)?.clone(),
        };
        if name == header::CONTENT_LENGTH {
            return None;
        }
        let v = HeaderValue::from_maybe_shared(value.slice_ref(r.value()?)).ok()?;
        headers.append(name, v);
    }
    if !r.buf.is_empty() {
        return None;
    }
    if gzipped.is_some_and(|len| !crate::gzip::plausible(&body, len)) {
        return None;
    }
    Some(Entry {
        status,
        headers,
        stored_at_ms,
        ttl_ms,
        swr_ms,
        sie_ms,
        keep_ms,
        delta_ms,
        generation,
        initial_age_ms,
        must_revalidate: flags & 1 != 0,
        shared: flags & 2 != 0,
        variant,
        marker,
        gzipped,
        body,
        served: std::sync::OnceLock::new(),
        decoded: std::sync::OnceLock::new(),
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

    /// How many bytes the eight varints after the status take in `v`.
    fn meta_varints_len(v: &[u8]) -> usize {
        let mut at = HEAD_LEN + 2;
        for _ in 0..8 {
            while v[at] & 0x80 != 0 {
                at += 1;
            }
            at += 1;
        }
        at - HEAD_LEN - 2
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, n);
            let mut r = Reader { buf: &out };
            assert_eq!(r.varint(), Some(n));
            assert!(r.buf.is_empty());
        }
        // Eleven continuation bytes never decode.
        let mut r = Reader { buf: &[0xff; 11] };
        assert_eq!(r.varint(), None);
    }

    #[test]
    fn a_compressed_body_round_trips_and_a_foreign_one_is_refused() {
        let body = br#"[{"id":1,"name":"a"},{"id":2,"name":"b"},{"id":3,"name":"c"}]"#.repeat(40);
        let member = crate::gzip::compress(&body, 6, 1.0).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let value = |stored: &[u8], decoded: u64| {
            let extra = Extra {
                gzipped: Some(decoded),
                ..Extra::default()
            };
            encode_with(
                StatusCode::OK,
                &headers,
                stored,
                &Lifetimes {
                    fresh: Duration::from_secs(60),
                    stale_while_revalidate: Duration::ZERO,
                    stale_if_error: Duration::ZERO,
                    revalidate: Duration::ZERO,
                },
                Duration::ZERO,
                0,
                None,
                &extra,
            )
            .unwrap()
        };
        let e = decode(&value(&member, body.len() as u64)).expect("decodes");
        assert!(compressed(&value(&member, body.len() as u64)));
        assert!(!compressed(
            &value(&member, body.len() as u64)[..HEAD_LEN + 3]
        ));
        assert_eq!(e.gzipped, Some(body.len() as u64));
        assert_eq!(e.body, member);
        // The stored fields are the origin's; `content-length` is the
        // stored member's.
        assert_eq!(e.headers[header::ETAG], "\"v1\"");
        assert!(!e.headers.contains_key(header::CONTENT_ENCODING));
        assert_eq!(
            e.headers[header::CONTENT_LENGTH],
            member.len().to_string().as_str()
        );
        // A decoded length the member's trailer does not give, or a body
        // that is not a gzip member, is a miss.
        assert!(decode(&value(&member, body.len() as u64 + 1)).is_none());
        assert!(decode(&value(&body, body.len() as u64)).is_none());
    }

    #[test]
    fn markers_and_variants_round_trip() {
        let extra = Extra {
            initial_age_ms: 30_000,
            must_revalidate: true,
            shared: true,
            variant: Some("abc123".into()),
            marker: Some(Marker {
                names: vec!["accept".into(), "accept-language".into()],
                nonce: "0badf00d".into(),
            }),
            gzipped: None,
        };
        let v = encode_with(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            b"",
            &lifetimes(5, 6, 7),
            Duration::from_millis(8),
            9,
            None,
            &extra,
        )
        .unwrap();
        let e = decode(&v).unwrap();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!((e.ttl_ms, e.swr_ms, e.sie_ms, e.delta_ms), (5, 6, 7, 8));
        assert_eq!((e.generation, e.initial_age_ms), (9, 30_000));
        assert!(e.must_revalidate && e.shared);
        assert_eq!(e.variant.as_deref(), Some("abc123"));
        assert_eq!(e.marker.as_deref(), extra.marker.as_ref());
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
        // Cut anywhere, the body included: the stored length no longer
        // matches.
        for cut in 0..good.len() {
            assert!(decode(&good.slice(..cut)).is_none(), "truncated at {cut}");
        }
        let mut longer = good.to_vec();
        longer.push(b' ');
        assert!(decode(&Bytes::from(longer)).is_none());
        let mut future = good.to_vec();
        future[3] = FORMAT + 1;
        assert!(decode(&Bytes::from(future)).is_none());
        let mut huge_len = good.to_vec();
        huge_len[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&Bytes::from(huge_len)).is_none());
        // The status right after the length: 99 is not a status.
        let mut bad_status = good.to_vec();
        bad_status[HEAD_LEN..HEAD_LEN + 2].copy_from_slice(&99u16.to_be_bytes());
        assert!(decode(&Bytes::from(bad_status)).is_none());
        // Unknown flags, and bytes left over in the metadata, are refused.
        let mut flags = good.to_vec();
        let at = HEAD_LEN + 2 + meta_varints_len(&good);
        flags[at] |= 0x80;
        assert!(decode(&Bytes::from(flags)).is_none());
        // An entry of format 1 (JSON metadata) is a miss.
        let json = b"TRC\x01\x00\x00\x00\x0b{\"s\":200,\"h\":[]}";
        assert!(decode(&Bytes::from_static(json)).is_none());
        // A field code past the known names, and a second content-length.
        let fields = HEAD_LEN + 2 + meta_varints_len(&good) + 1 + 2;
        let first = fields + 1 + 1 + 1; // content-length: code, length 1, "7"
        assert_eq!(good[fields], CONTENT_LENGTH_CODE);
        for code in [KNOWN.len() as u8 + 1, 255, CONTENT_LENGTH_CODE] {
            let mut bad = good.to_vec();
            bad[first] = code;
            assert!(decode(&Bytes::from(bad)).is_none(), "code {code}");
        }
    }

    #[test]
    fn known_field_names_take_one_byte_and_others_are_spelled_out() {
        let v = sample();
        let has = |needle: &[u8]| v.windows(needle.len()).any(|w| w == needle);
        assert!(!has(b"content-type") && !has(b"etag") && !has(b"content-length"));
        assert!(has(b"x-multi"));
        let e = decode(&v).unwrap();
        assert_eq!(e.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(e.headers.get_all("x-multi").iter().count(), 2);
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
                v[..3].copy_from_slice(MAGIC);
                v[3] = FORMAT;
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
            let mut v = MAGIC.to_vec();
            v.push(FORMAT);
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
        fn an_entry_stops_being_utf8_at_its_format_byte(body in proptest::collection::vec(b' '..=b'~', 0..300)) {
            // A client's text check reads four bytes of it, whatever the body.
            let l = Lifetimes {
                fresh: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                revalidate: Duration::ZERO,
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            let value = encode(StatusCode::OK, &headers, &body, &l, Duration::ZERO, 0, None).unwrap();
            prop_assert_eq!(std::str::from_utf8(&value).unwrap_err().valid_up_to(), 3);
        }

        #[test]
        fn other_format_versions_are_misses(version in (0u8..=255).prop_filter("not ours", |v| *v != FORMAT)) {
            let mut v = valid().to_vec();
            v[3] = version;
            prop_assert!(decode(&Bytes::from(v)).is_none());
        }
    }
}
