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

/// Headers that describe one connection or are recomputed when served; never
/// stored.
const NOT_STORED: [HeaderName; 10] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::AGE,
    header::SET_COOKIE,
];

#[derive(Serialize, Deserialize)]
struct Meta<'a> {
    /// Status code.
    s: u16,
    /// Headers as name/value pairs, in order.
    #[serde(borrow)]
    h: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Stored at, milliseconds since the Unix epoch.
    t: u64,
    /// TTL in milliseconds.
    l: u64,
    /// The namespace generation the entry was written under.
    g: u64,
}

/// A decoded entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) stored_at_ms: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) generation: u64,
    pub(crate) body: Bytes,
}

impl Entry {
    /// Seconds since the entry was stored (the `Age` a client sees).
    pub(crate) fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// Whether the entry outlived its TTL (a store that expires lazily may
    /// still return it).
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.stored_at_ms) >= self.ttl_ms
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
    ttl: Duration,
    generation: u64,
    skip: Option<&HeaderName>,
) -> Option<Bytes> {
    let mut h = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if NOT_STORED.contains(name) || skip == Some(name) {
            continue;
        }
        h.push((
            Cow::Borrowed(name.as_str()),
            Cow::Borrowed(value.to_str().ok()?),
        ));
    }
    let meta = Meta {
        s: status.as_u16(),
        h,
        t: now_ms(),
        l: ttl.as_millis() as u64,
        g: generation,
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
    let mut headers = HeaderMap::with_capacity(meta.h.len());
    for (name, v) in meta.h {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(&v).ok()?,
        );
    }
    Some(Entry {
        status,
        headers,
        stored_at_ms: meta.t,
        ttl_ms: meta.l,
        generation: meta.g,
        body: value.slice(json_end..),
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
            Duration::from_secs(9),
            3,
            None,
        )
        .unwrap()
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
        assert!(e.headers.get(header::CONTENT_LENGTH).is_none());
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
            Duration::from_secs(1),
            0,
            None
        )
        .is_none());
    }
}
