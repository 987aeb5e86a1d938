//! Conditional requests (RFC 9110 §13) and `304 Not Modified`: answering
//! `If-None-Match` / `If-Modified-Since` from a stored response, and
//! freshening a stored response with a `304` (RFC 9111 §4.3.4).

use http::{header, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use super::{
    date::{http_date, strict_http_date},
    fields::is_hop_by_hop,
};

/// The result of evaluating a request's `If-None-Match` /
/// `If-Modified-Since` against a stored response (RFC 9110 §13.2.2).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap, stored_at_ms: u64) -> bool {
    not_modified_as(request, stored.get(header::ETAG), stored, stored_at_ms)
}

/// [`not_modified`] for a representation of the stored response whose tag
/// is `etag` (the gzip representation of an entry stored compressed has its
/// own).
pub(crate) fn not_modified_as(
    request: &HeaderMap,
    etag: Option<&HeaderValue>,
    stored: &HeaderMap,
    stored_at_ms: u64,
) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let etag = etag.and_then(|v| v.to_str().ok());
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || etag.is_some_and(|etag| weak_eq(tag, etag)));
    }
    let Some(since) = strict_http_date(request.get(header::IF_MODIFIED_SINCE)) else {
        return false;
    };
    let modified = http_date(stored.get(header::LAST_MODIFIED))
        .or_else(|| http_date(stored.get(header::DATE)))
        .unwrap_or(stored_at_ms / 1000);
    modified <= since
}

/// Weak comparison of two entity tags (RFC 9110 §8.8.3.2).
fn weak_eq(a: &str, b: &str) -> bool {
    let opaque = |t: &str| t.trim().strip_prefix("W/").unwrap_or(t.trim()).to_owned();
    let (a, b) = (opaque(a), opaque(b));
    a.starts_with('"') && a.len() >= 2 && a == b
}

/// Headers a `304` from the cache carries, taken from the stored response
/// (RFC 9110 §15.4.5).
pub(crate) const NOT_MODIFIED_HEADERS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// Updates stored headers from a `304` (RFC 9111 §4.3.4): every header the
/// `304` carries replaces the stored one of that name, except those that
/// describe the body or the connection.
pub(crate) fn merge_not_modified(stored: &mut HeaderMap, fresh: &HeaderMap) {
    for name in fresh.keys() {
        if name == header::CONTENT_LENGTH
            || name == header::CONTENT_ENCODING
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_RANGE
            || is_hop_by_hop(name, fresh)
        {
            continue;
        }
        stored.remove(name);
        for value in fresh.get_all(name) {
            stored.append(name.clone(), value.clone());
        }
    }
}

/// A strong entity tag computed from the body: the same bytes give the same
/// tag on every process and machine.
pub(crate) fn body_etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let mut tag = String::with_capacity(34);
    tag.push('"');
    crate::hex::push(&mut tag, &digest[..16]);
    tag.push('"');
    HeaderValue::try_from(tag).expect("hex is a valid header value")
}
/// Takes the conditional headers out of a request: the cache asks for the
/// whole response (to store it) and answers the condition itself.
pub(crate) fn take_conditionals(headers: &mut HeaderMap) -> HeaderMap {
    let mut taken = HeaderMap::new();
    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
        if let http::header::Entry::Occupied(e) = headers.entry(name) {
            let (name, values) = e.remove_entry_mult();
            for v in values {
                taken.append(name.clone(), v);
            }
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers::with;

    #[test]
    fn rfc9110_13_2_2_if_none_match_wins_over_if_modified_since() {
        let stored = with(&[
            ("etag", "\"v1\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert!(not_modified(
            &with(&[("if-none-match", "W/\"v1\"")]),
            &stored,
            0
        ));
        assert!(not_modified(
            &with(&[("if-none-match", "\"x\", \"v1\"")]),
            &stored,
            0
        ));
        assert!(not_modified(&with(&[("if-none-match", "*")]), &stored, 0));
        let both = with(&[
            ("if-none-match", "\"other\""),
            ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert!(!not_modified(&both, &stored, 0));
        let ims = |d| with(&[("if-modified-since", d)]);
        assert!(not_modified(
            &ims("Wed, 21 Oct 2015 07:28:00 GMT"),
            &stored,
            0
        ));
        assert!(!not_modified(
            &ims("Wed, 21 Oct 2015 07:27:59 GMT"),
            &stored,
            0
        ));
        assert!(!not_modified(&ims("garbage"), &stored, 0));
    }

    #[test]
    fn rfc9111_4_3_4_a_304_replaces_stored_headers_but_not_the_body_ones() {
        let mut stored = with(&[
            ("etag", "\"v1\""),
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
            ("x-kept", "yes"),
        ]);
        let fresh = with(&[
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("x-new", "1"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ]);
        merge_not_modified(&mut stored, &fresh);
        assert_eq!(stored["cache-control"], "max-age=60");
        assert_eq!(stored["content-length"], "5");
        assert_eq!(stored["x-new"], "1");
        assert_eq!(stored["x-kept"], "yes");
        assert!(!stored.contains_key("x-hop"));
        assert!(!stored.contains_key("connection"));
    }

    #[test]
    fn body_etags_are_strong_and_stable() {
        assert_eq!(body_etag(b"abc"), body_etag(b"abc"));
        assert_ne!(body_etag(b"abc"), body_etag(b"abd"));
        assert!(!body_etag(b"").to_str().unwrap().starts_with("W/"));
    }
}
