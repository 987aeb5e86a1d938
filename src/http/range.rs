//! Range requests (RFC 9110 §14): the `Range` and `If-Range` fields of a
//! request, which parts of a complete representation they ask for, and the
//! `multipart/byteranges` form of several parts (§14.6).
//!
//! The cache takes both fields off a request it serves (the origin is asked
//! for the complete response, which is what is stored) and answers the
//! range itself from the complete `200`. Only the `bytes` unit is known;
//! anything the rules below do not accept leaves the `Range` field ignored,
//! and the complete `200` is the answer (§14.2 allows a server to ignore
//! the field).

use http::{header, HeaderMap, HeaderValue};

use super::date::{http_date, strict_http_date};

/// At most this many ranges in one `Range` field; a field with more is
/// ignored, against a request that asks for one representation many times
/// over (RFC 9110 §14.2, §17.15).
pub(crate) const MAX_RANGES: usize = 16;

/// Ranges closer than this many bytes are sent as one part: a part's own
/// header lines cost about as much (RFC 9110 §14.6 allows it).
const COALESCE_GAP: u64 = 80;

/// One `range-spec` of the `bytes` unit (RFC 9110 §14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-`.
    Int { first: u64, last: Option<u64> },
    /// `-length`: the last `length` bytes.
    Suffix(u64),
}

/// The `If-Range` field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IfRange {
    Absent,
    One(HeaderValue),
    /// Several lines: never true.
    Invalid,
}

/// A request's `Range` (and `If-Range`), taken off the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeRequest {
    specs: Vec<Spec>,
    if_range: IfRange,
    /// The request is a `HEAD`: the answer has the headers of a `GET`'s
    /// and no body.
    pub(crate) head: bool,
}

/// What a range request gets from a representation of a known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The complete `200`: the `Range` field is ignored.
    Full,
    /// `416` with `Content-Range: bytes */length`: no range overlaps the
    /// representation (RFC 9110 §15.5.17).
    Unsatisfiable,
    /// `206` with these ranges (first and last byte, inclusive): one is a
    /// single part with `Content-Range`, several are
    /// `multipart/byteranges`. Overlapping and close ranges are merged; the
    /// others keep the order they were asked in (RFC 9110 §14.6).
    Parts(Vec<(u64, u64)>),
}

/// Removes `Range` and `If-Range` from a request, and returns what the
/// cache answers for them: `None` when there is no valid `bytes` range to
/// answer (no `Range`, another unit, a syntax error, several `Range` lines,
/// more than [`MAX_RANGES`] ranges), then the complete response is served.
/// An `If-Range` without `Range` is ignored (RFC 9110 §13.1.5).
pub(crate) fn take_range(headers: &mut HeaderMap, head: bool) -> Option<RangeRequest> {
    let if_range = match headers.get_all(header::IF_RANGE).iter().count() {
        0 => IfRange::Absent,
        1 => headers
            .remove(header::IF_RANGE)
            .map_or(IfRange::Absent, IfRange::One),
        _ => {
            headers.remove(header::IF_RANGE);
            IfRange::Invalid
        }
    };
    let lines = headers.get_all(header::RANGE).iter().count();
    let range = headers.remove(header::RANGE)?;
    if lines != 1 {
        return None;
    }
    let specs = parse(range.to_str().ok()?)?;
    Some(RangeRequest {
        specs,
        if_range,
        head,
    })
}

/// Parses a `Range` field value of the `bytes` unit (RFC 9110 §14.1.2).
fn parse(value: &str) -> Option<Vec<Spec>> {
    let (unit, set) = value.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    // `1#range-spec`: a list, where empty elements are allowed (§5.6.1).
    for element in set.split(',') {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            continue;
        }
        if specs.len() == MAX_RANGES {
            return None;
        }
        let (first, last) = element.split_once('-')?;
        let spec = if first.is_empty() {
            Spec::Suffix(digits(last)?)
        } else {
            let first = digits(first)?;
            let last = if last.is_empty() {
                None
            } else {
                Some(digits(last)?)
            };
            // §14.1.1: an int-range whose last-pos is less than its
            // first-pos is invalid.
            if last.is_some_and(|last| last < first) {
                return None;
            }
            Spec::Int { first, last }
        };
        specs.push(spec);
    }
    (!specs.is_empty()).then_some(specs)
}

/// `1*DIGIT`, saturating: a position past any length means the end.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

impl RangeRequest {
    /// Whether the range is to be answered for a `200` with `response`'s
    /// headers: without `If-Range`, or when it matches (RFC 9110 §13.1.5).
    /// For a representation whose bytes only its entity tag names
    /// (`tag_only`: a gzip member the cache made), a date never matches.
    pub(crate) fn applies_to(&self, response: &HeaderMap, tag_only: bool) -> bool {
        match &self.if_range {
            IfRange::Absent => true,
            IfRange::Invalid => false,
            IfRange::One(value) => if_range_holds(value, response, tag_only),
        }
    }

    /// The parts of a representation of `length` bytes this request gets.
    pub(crate) fn resolve(&self, length: u64) -> Answer {
        if length == 0 {
            // Nothing to take a part of.
            return Answer::Full;
        }
        let end = length - 1;
        // §14.1.3: positions past the end stand for the end; a suffix longer
        // than the representation is all of it.
        let mut parts: Vec<(u64, u64)> = self
            .specs
            .iter()
            .filter_map(|spec| match *spec {
                Spec::Int { first, last } => {
                    (first < length).then(|| (first, last.map_or(end, |l| l.min(end))))
                }
                Spec::Suffix(n) => (n > 0).then(|| (length - n.min(length), end)),
            })
            .collect();
        if parts.is_empty() {
            return Answer::Unsatisfiable;
        }
        coalesce(&mut parts);
        Answer::Parts(parts)
    }
}

/// Merges ranges that overlap or lie within [`COALESCE_GAP`] of each other
/// into the first of them; the others keep their order.
fn coalesce(parts: &mut Vec<(u64, u64)>) {
    let near = |a: (u64, u64), b: (u64, u64)| {
        a.0 <= b.1.saturating_add(COALESCE_GAP + 1) && b.0 <= a.1.saturating_add(COALESCE_GAP + 1)
    };
    'again: loop {
        for i in 0..parts.len() {
            for j in i + 1..parts.len() {
                if near(parts[i], parts[j]) {
                    let b = parts.remove(j);
                    let a = &mut parts[i];
                    *a = (a.0.min(b.0), a.1.max(b.1));
                    continue 'again;
                }
            }
        }
        return;
    }
}

/// RFC 9110 §13.1.5: an entity-tag matches the response's by the strong
/// comparison (a weak tag never does); a date matches when it is exactly
/// the response's `Last-Modified` and that is a strong validator, at least
/// a second before the response's `Date` (§8.8.2.2). Anything else does
/// not match.
fn if_range_holds(value: &HeaderValue, response: &HeaderMap, tag_only: bool) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let text = text.trim();
    if text.starts_with('"') || text.starts_with("W/") {
        return is_strong_tag(text)
            && response
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|etag| etag.trim() == text);
    }
    if tag_only {
        return false;
    }
    let (Some(date), Some(modified), Some(sent)) = (
        strict_http_date(Some(value)),
        http_date(response.get(header::LAST_MODIFIED)),
        http_date(response.get(header::DATE)),
    ) else {
        return false;
    };
    date == modified && modified < sent
}

/// RFC 9111 §3.4: whether a `206` from the origin is a part of the stored
/// response, so that its header fields may update the stored ones: both
/// carry the same strong entity tag.
pub(crate) fn same_representation(stored: &HeaderMap, partial: &HeaderMap) -> bool {
    let tag = |h: &HeaderMap| {
        h.get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| is_strong_tag(t))
            .map(str::to_owned)
    };
    matches!((tag(stored), tag(partial)), (Some(a), Some(b)) if a == b)
}

/// `"opaque"`, not `W/"opaque"` (RFC 9110 §8.8.3).
fn is_strong_tag(tag: &str) -> bool {
    tag.len() >= 2
        && tag.starts_with('"')
        && tag.ends_with('"')
        && !tag[1..tag.len() - 1].contains('"')
}

/// The `Content-Range` of one part: `bytes first-last/length`.
pub(crate) fn content_range(first: u64, last: u64, length: u64) -> HeaderValue {
    HeaderValue::try_from(format!("bytes {first}-{last}/{length}"))
        .expect("digits are a valid header value")
}

/// The `Content-Range` of a `416`: `bytes */length`.
pub(crate) fn unsatisfied_range(length: u64) -> HeaderValue {
    HeaderValue::try_from(format!("bytes */{length}")).expect("digits are a valid header value")
}

/// A `multipart/byteranges` body (RFC 9110 §14.6) of several parts of one
/// representation, laid out before the bytes are at hand, so that a `HEAD`
/// gets its length without them.
#[derive(Debug)]
pub(crate) struct Multipart {
    /// `multipart/byteranges; boundary=...`.
    pub(crate) content_type: HeaderValue,
    /// The body's length in bytes.
    pub(crate) length: u64,
    /// Each part: the delimiter and header lines before it, and its range.
    parts: Vec<(String, (u64, u64))>,
    closing: String,
}

impl Multipart {
    /// The layout of `parts` (inclusive ranges of a representation of
    /// `length` bytes whose media type is `content_type`), separated by
    /// `boundary` (1 to 70 characters of `bchars`, RFC 2046 §5.1.1).
    pub(crate) fn new(
        parts: &[(u64, u64)],
        length: u64,
        content_type: Option<&HeaderValue>,
        boundary: &str,
    ) -> Self {
        let media = content_type
            .and_then(|v| v.to_str().ok())
            .map(|t| format!("content-type: {t}\r\n"))
            .unwrap_or_default();
        let mut total = 0u64;
        let parts: Vec<(String, (u64, u64))> = parts
            .iter()
            .enumerate()
            .map(|(i, &(first, last))| {
                let lead = if i == 0 { "" } else { "\r\n" };
                let head = format!(
                    "{lead}--{boundary}\r\n{media}content-range: bytes {first}-{last}/{length}\r\n\r\n"
                );
                total += head.len() as u64 + (last - first + 1);
                (head, (first, last))
            })
            .collect();
        let closing = format!("\r\n--{boundary}--\r\n");
        total += closing.len() as u64;
        let content_type =
            HeaderValue::try_from(format!("multipart/byteranges; boundary={boundary}"))
                .expect("a boundary is a valid header value");
        Self {
            content_type,
            length: total,
            parts,
            closing,
        }
    }

    /// The body, from the complete representation.
    pub(crate) fn body(&self, representation: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.length).unwrap_or(0));
        for (head, (first, last)) in &self.parts {
            out.extend_from_slice(head.as_bytes());
            let (first, last) = (*first as usize, *last as usize);
            out.extend_from_slice(&representation[first..=last]);
        }
        out.extend_from_slice(self.closing.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers::with;

    fn request(fields: &[(&'static str, &'static str)]) -> (Option<RangeRequest>, HeaderMap) {
        let mut h = with(fields);
        (take_range(&mut h, false), h)
    }

    fn answer(range: &'static str, length: u64) -> Option<Answer> {
        request(&[("range", range)]).0.map(|r| r.resolve(length))
    }

    fn parts(p: &[(u64, u64)]) -> Option<Answer> {
        Some(Answer::Parts(p.to_vec()))
    }

    #[test]
    fn rfc9110_14_1_2_byte_ranges_first_last_open_and_suffix() {
        assert_eq!(answer("bytes=0-499", 10_000), parts(&[(0, 499)]));
        assert_eq!(answer("bytes=500-999", 10_000), parts(&[(500, 999)]));
        assert_eq!(answer("bytes=9500-", 10_000), parts(&[(9500, 9999)]));
        assert_eq!(answer("bytes=-500", 10_000), parts(&[(9500, 9999)]));
        assert_eq!(answer("BYTES=0-0", 10), parts(&[(0, 0)]));
        assert_eq!(answer("bytes= 1-2 , ,", 10), parts(&[(1, 2)]));
    }

    #[test]
    fn rfc9110_14_1_3_positions_past_the_end_stand_for_the_end() {
        assert_eq!(answer("bytes=5-99999", 10), parts(&[(5, 9)]));
        assert_eq!(answer("bytes=-99999", 10), parts(&[(0, 9)]));
        assert_eq!(
            answer("bytes=0-99999999999999999999999999", 10),
            parts(&[(0, 9)])
        );
    }

    #[test]
    fn rfc9110_14_1_1_unsatisfiable_ranges_get_416() {
        assert_eq!(answer("bytes=10-", 10), Some(Answer::Unsatisfiable));
        assert_eq!(answer("bytes=-0", 10), Some(Answer::Unsatisfiable));
        assert_eq!(answer("bytes=20-30, 40-", 10), Some(Answer::Unsatisfiable));
        // One satisfiable range is enough; the others are left out.
        assert_eq!(answer("bytes=20-30, 2-3", 10), parts(&[(2, 3)]));
        // An empty representation has no part to send: the full answer.
        assert_eq!(answer("bytes=0-5", 0), Some(Answer::Full));
    }

    #[test]
    fn rfc9110_14_2_invalid_or_unknown_ranges_are_ignored() {
        for value in [
            "items=0-5",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1",
            "bytes=--1",
            "bytes =0-1",
            "bytes=0-1;x",
        ] {
            assert_eq!(answer(value, 100), None, "{value}");
        }
        // Two `Range` lines: not one ranges-specifier.
        let (range, h) = request(&[("range", "bytes=0-1"), ("range", "bytes=2-3")]);
        assert_eq!(range, None);
        assert!(!h.contains_key("range"));
    }

    #[test]
    fn rfc9110_14_2_more_than_the_cap_of_ranges_is_ignored() {
        let at_cap = (0..MAX_RANGES)
            .map(|i| format!("{}-{}", i * 1000, i * 1000))
            .collect::<Vec<_>>()
            .join(",");
        let mut h = HeaderMap::new();
        h.insert("range", format!("bytes={at_cap}").try_into().unwrap());
        let r = take_range(&mut h, false).expect("at the cap");
        assert!(matches!(r.resolve(1_000_000), Answer::Parts(p) if p.len() == MAX_RANGES));
        h.insert(
            "range",
            format!("bytes={at_cap},99999-99999").try_into().unwrap(),
        );
        assert_eq!(take_range(&mut h, false), None);
    }

    #[test]
    fn rfc9110_14_6_overlapping_and_close_ranges_are_coalesced_in_order() {
        // The same bytes asked many times are sent once.
        assert_eq!(
            answer("bytes=0-99,0-99,0-99,50-149", 1000),
            parts(&[(0, 149)])
        );
        // Close ranges merge; distant ones keep the order asked.
        assert_eq!(
            answer("bytes=900-949,0-9,20-29,-1", 1000),
            parts(&[(900, 999), (0, 29)])
        );
        assert_eq!(
            answer("bytes=500-509,0-9", 1000),
            parts(&[(500, 509), (0, 9)])
        );
    }

    #[test]
    fn rfc9110_13_1_5_if_range_strong_etag_or_strong_date() {
        let response = with(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("date", "Sun, 06 Nov 1994 09:00:00 GMT"),
        ]);
        let holds = |value: &'static str| {
            let (r, h) = request(&[("range", "bytes=0-1"), ("if-range", value)]);
            assert!(!h.contains_key("if-range"));
            r.unwrap().applies_to(&response, false)
        };
        assert!(holds("\"v1\""));
        assert!(!holds("\"v2\""));
        assert!(!holds("W/\"v1\""), "a weak tag never matches");
        assert!(holds("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!holds("Sun, 06 Nov 1994 08:49:38 GMT"));
        assert!(!holds("not a date"));
        // A gzip member the cache made: only its tag names its bytes.
        let tag_only = |value: &'static str| {
            let (r, _) = request(&[("range", "bytes=0-1"), ("if-range", value)]);
            r.unwrap().applies_to(&response, true)
        };
        assert!(tag_only("\"v1\""));
        assert!(!tag_only("Sun, 06 Nov 1994 08:49:37 GMT"));
        // A weak stored tag never matches either.
        let weak = with(&[("etag", "W/\"v1\"")]);
        let (r, _) = request(&[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")]);
        assert!(!r.unwrap().applies_to(&weak, false));
        // Without a Date a second later, Last-Modified is weak (§8.8.2.2).
        let close = with(&[
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let (r, _) = request(&[
            ("range", "bytes=0-1"),
            ("if-range", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!r.unwrap().applies_to(&close, false));
        // Two If-Range lines never match.
        let (r, _) = request(&[
            ("range", "bytes=0-1"),
            ("if-range", "\"v1\""),
            ("if-range", "\"v1\""),
        ]);
        assert!(!r.unwrap().applies_to(&response, false));
    }

    #[test]
    fn rfc9110_13_1_5_if_range_without_range_is_removed_and_ignored() {
        let (r, h) = request(&[("if-range", "\"v1\"")]);
        assert_eq!(r, None);
        assert!(h.is_empty());
    }

    #[test]
    fn rfc9110_14_6_multipart_byteranges_layout() {
        let representation = b"0123456789abcdefghij";
        let m = Multipart::new(
            &[(0, 1), (10, 12)],
            20,
            Some(&HeaderValue::from_static("text/plain")),
            "B",
        );
        assert_eq!(m.content_type, "multipart/byteranges; boundary=B");
        let body = m.body(representation);
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "--B\r\ncontent-type: text/plain\r\ncontent-range: bytes 0-1/20\r\n\r\n01\
             \r\n--B\r\ncontent-type: text/plain\r\ncontent-range: bytes 10-12/20\r\n\r\nabc\
             \r\n--B--\r\n"
        );
        assert_eq!(m.length, body.len() as u64);
        assert_eq!(content_range(0, 1, 20), "bytes 0-1/20");
        assert_eq!(unsatisfied_range(20), "bytes */20");
    }
}
