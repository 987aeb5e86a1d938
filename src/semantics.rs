//! The HTTP caching rules (RFC 9111, with RFC 9110 for validators and RFC 5861
//! for the stale extensions), as pure functions over header maps: parsing
//! `Cache-Control`, computing freshness and age, selecting `Vary` variants,
//! evaluating conditional requests and merging a `304`.
//!
//! Nothing here touches the store or the clock; callers pass times in.

use std::time::{Duration, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

/// The largest delta-seconds value kept (RFC 9111 §1.2.2: 2^31).
const MAX_DELTA: u64 = 2_147_483_648;

/// The `Cache-Control` directives the cache acts on, from a request or a
/// response. Durations are in seconds. A directive given twice keeps its
/// first value (RFC 9111 §4.2.1); a malformed value counts as `0`, the most
/// restrictive reading. An item that does not follow the grammar grants
/// nothing, and a `no-store`, `no-cache` or `private` token anywhere in it
/// counts as that directive, unqualified.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    /// `max-stale` without a value accepts any staleness: `u64::MAX`.
    pub(crate) max_stale: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    /// Header fields named by `no-cache="..."` or `private="..."`: not
    /// stored.
    pub(crate) omit: Vec<String>,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers`.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            let Ok(line) = std::str::from_utf8(line.as_bytes()) else {
                continue;
            };
            for item in directives(line) {
                cc.apply(item);
            }
        }
        cc
    }

    /// Request directives: `Pragma: no-cache` stands for `no-cache` when the
    /// request has no `Cache-Control` (RFC 9111 §5.4).
    pub(crate) fn parse_request(headers: &HeaderMap) -> Self {
        let mut cc = Self::parse(headers);
        if !headers.contains_key(header::CACHE_CONTROL)
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
        {
            cc.no_cache = true;
        }
        cc
    }

    fn apply(&mut self, item: Item<'_>) {
        let (name, arg) = match item {
            Item::Directive { name, arg } => (name, arg),
            Item::Malformed(raw) => return self.apply_malformed(raw),
        };
        let value = arg.map(Arg::text);
        let seconds = || value.map_or(0, parse_seconds);
        let set = |slot: &mut Option<u64>, v: u64| {
            if slot.is_none() {
                *slot = Some(v);
            }
        };
        // The qualified forms (`no-cache="set-cookie"`, `private="x"`) name
        // header fields that must not be reused: they are left out of the
        // stored response, which may be stored and reused. Only a quoted,
        // non-empty list of field names qualifies (RFC 9111 §5.2.2.4,
        // §5.2.2.7); any other argument (`private=x`, `private=`,
        // `private=""`) reads as the unqualified, stricter directive.
        let qualified = || match arg {
            Some(Arg::Quoted(list)) => field_list(list),
            _ => None,
        };
        match name.to_ascii_lowercase().as_str() {
            "no-store" => self.no_store = true,
            "no-cache" => match qualified() {
                Some(fields) => self.omit.extend(fields),
                None => self.no_cache = true,
            },
            "private" => match qualified() {
                Some(fields) => self.omit.extend(fields),
                None => self.private = true,
            },
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "only-if-cached" => self.only_if_cached = true,
            "max-age" => set(&mut self.max_age, seconds()),
            "s-maxage" => set(&mut self.s_maxage, seconds()),
            "max-stale" => set(&mut self.max_stale, value.map_or(u64::MAX, parse_seconds)),
            "min-fresh" => set(&mut self.min_fresh, seconds()),
            "stale-while-revalidate" => set(&mut self.stale_while_revalidate, seconds()),
            "stale-if-error" => set(&mut self.stale_if_error, seconds()),
            _ => {}
        }
    }

    /// A malformed item (`private ="x"`, `max-age=60;private`): what it
    /// grants (a lifetime, `public`) is ignored, and any `no-store`,
    /// `no-cache` or `private` token in it counts as that directive,
    /// unqualified. A sender that garbled a restriction still meant it.
    fn apply_malformed(&mut self, raw: &str) {
        for token in raw.split(|c: char| !c.is_ascii() || !is_tchar(c as u8)) {
            if token.eq_ignore_ascii_case("no-store") {
                self.no_store = true;
            } else if token.eq_ignore_ascii_case("no-cache") {
                self.no_cache = true;
            } else if token.eq_ignore_ascii_case("private") {
                self.private = true;
            }
        }
    }

    /// Whether a stored response may be served to a request carrying
    /// `Authorization` (RFC 9111 §3.5).
    pub(crate) fn allows_authorized(&self) -> bool {
        self.public || self.s_maxage.is_some() || self.must_revalidate
    }

    /// Whether a stale response must not be served without revalidation
    /// (`must-revalidate`; for a shared cache also `proxy-revalidate` and
    /// `s-maxage`, RFC 9111 §5.2.2).
    pub(crate) fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// One item of a `Cache-Control` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item<'a> {
    /// `token [ "=" ( token / quoted-string ) ]`.
    Directive { name: &'a str, arg: Option<Arg<'a>> },
    /// Anything else (whitespace around `=`, an argument that is neither a
    /// token nor a whole quoted-string, a name that is not a token): the
    /// item as sent.
    Malformed(&'a str),
}

/// A directive's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg<'a> {
    /// Unquoted (possibly empty, as in `max-age=`).
    Token(&'a str),
    /// A quoted-string, without its quotes.
    Quoted(&'a str),
}

impl<'a> Arg<'a> {
    fn text(self) -> &'a str {
        match self {
            Arg::Token(t) | Arg::Quoted(t) => t,
        }
    }
}

/// A `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Splits a `Cache-Control` line into its items (RFC 9111 §5.2): commas
/// inside a quoted-string do not split, and a quoted argument is unquoted.
/// An item that does not follow the grammar is returned as
/// [`Item::Malformed`], for the caller to read restrictively.
fn directives(line: &str) -> Vec<Item<'_>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for i in 0..=bytes.len() {
        let b = bytes.get(i).copied();
        if quoted {
            match b {
                _ if escaped => escaped = false,
                Some(b'\\') => escaped = true,
                Some(b'"') => quoted = false,
                _ => {}
            }
            if b.is_some() {
                continue;
            }
        }
        match b {
            Some(b'"') => quoted = true,
            Some(b',') | None => {
                let item = line[start..i].trim_matches([' ', '\t']);
                if !item.is_empty() {
                    out.push(item_of(item));
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// Parses one item, trimmed and not empty.
fn item_of(item: &str) -> Item<'_> {
    let Some((name, rest)) = item.split_once('=') else {
        return if is_token(item) {
            Item::Directive {
                name: item,
                arg: None,
            }
        } else {
            Item::Malformed(item)
        };
    };
    if !is_token(name) {
        return Item::Malformed(item);
    }
    let arg = if let Some(quoted) = rest.strip_prefix('"') {
        // The closing quote must end the item.
        let mut escaped = false;
        let close = quoted.bytes().position(|b| {
            let closes = !escaped && b == b'"';
            escaped = !escaped && b == b'\\';
            closes
        });
        match close {
            Some(c) if c + 1 == quoted.len() => Arg::Quoted(&quoted[..c]),
            _ => return Item::Malformed(item),
        }
    } else if rest.is_empty() || is_token(rest) {
        Arg::Token(rest)
    } else {
        return Item::Malformed(item);
    };
    Item::Directive {
        name,
        arg: Some(arg),
    }
}

/// The field names of a qualified `no-cache="..."` or `private="..."`;
/// `None` when the list is empty or holds anything but field names.
fn field_list(list: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for field in list.split(',').map(|f| f.trim_matches([' ', '\t'])) {
        if field.is_empty() {
            continue;
        }
        if !is_token(field) {
            return None;
        }
        names.push(field.to_ascii_lowercase());
    }
    (!names.is_empty()).then_some(names)
}

/// delta-seconds: the leading digits (`3600.5` is 3600); no digits is `0`,
/// a value too large is capped at 2^31.
fn parse_seconds(v: &str) -> u64 {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return 0;
    }
    v[..digits]
        .parse::<u64>()
        .unwrap_or(MAX_DELTA)
        .min(MAX_DELTA)
}

/// Why a response is never stored, whatever the route says: `Set-Cookie`
/// (unless the route strips it), `no-store`, `private`, `Vary: *`.
/// `None` means it may be stored.
pub(crate) fn refuse_to_store(
    headers: &HeaderMap,
    cc: &CacheControl,
    strip_set_cookie: bool,
) -> Option<&'static str> {
    if cc.no_store {
        Some("response says no-store")
    } else if cc.private {
        Some("response is private")
    } else if !strip_set_cookie && headers.contains_key(header::SET_COOKIE) {
        Some("response sets a cookie")
    } else if matches!(vary(headers), Vary::Any) {
        Some("response says Vary: *")
    } else {
        None
    }
}

/// Statuses a shared cache may store without explicit freshness (RFC 9110
/// §15.1); `206` is left out because ranges are not cached.
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether an origin-driven cache may store a response with this status at
/// all: final, not partial, not a `304` (RFC 9111 §3).
pub(crate) fn storable_status(status: StatusCode) -> bool {
    status.as_u16() >= 200 && !matches!(status.as_u16(), 206 | 304)
}

/// Parses an HTTP date into seconds since the Unix epoch.
pub(crate) fn http_date(value: Option<&HeaderValue>) -> Option<u64> {
    let t = httpdate::parse_http_date(value?.to_str().ok()?.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Formats seconds since the Unix epoch as an HTTP date.
pub(crate) fn format_http_date(secs: u64) -> HeaderValue {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    HeaderValue::try_from(httpdate::fmt_http_date(t)).expect("an HTTP date is a valid header")
}

/// The freshness lifetime a shared cache gives a response (RFC 9111 §4.2.1),
/// in milliseconds: `s-maxage`, `max-age`, `Expires` minus `Date`, then the
/// heuristic (`fraction` of the time since `Last-Modified`) when one is
/// configured. `response_ms` stands in for a missing `Date`.
pub(crate) fn freshness_lifetime_ms(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    response_ms: u64,
    heuristic: Option<f64>,
) -> u64 {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return s * 1000;
    }
    let date = http_date(headers.get(header::DATE)).unwrap_or(response_ms / 1000);
    if headers.contains_key(header::EXPIRES) {
        // An invalid `Expires` (such as "0") means already expired.
        return http_date(headers.get(header::EXPIRES))
            .map_or(0, |expires| expires.saturating_sub(date) * 1000);
    }
    match (heuristic, http_date(headers.get(header::LAST_MODIFIED))) {
        (Some(fraction), Some(modified)) if heuristically_cacheable(status) || cc.public => {
            (date.saturating_sub(modified) as f64 * 1000.0 * fraction) as u64
        }
        _ => 0,
    }
}

/// The response's age when it arrived (RFC 9111 §4.2.3,
/// `corrected_initial_age`), in milliseconds.
pub(crate) fn initial_age_ms(headers: &HeaderMap, request_ms: u64, response_ms: u64) -> u64 {
    // `Date` has one-second resolution: it is read as the end of its second,
    // so a response just made never looks up to a second old.
    let apparent = http_date(headers.get(header::DATE))
        .map_or(0, |date| response_ms.saturating_sub(date * 1000 + 999));
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .map_or(0, |v| parse_seconds(v.trim()));
    let corrected = (age_value * 1000).saturating_add(response_ms.saturating_sub(request_ms));
    apparent.max(corrected)
}

/// What a response's `Vary` says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Vary {
    /// No `Vary`: one response for every request.
    None,
    /// `Vary: *`: never served from the cache.
    Any,
    /// The request headers that select the response: lower case, sorted,
    /// without duplicates.
    Headers(Vec<String>),
}

pub(crate) fn vary(headers: &HeaderMap) -> Vary {
    let mut names: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.iter().any(|n| n == "*") {
        return Vary::Any;
    }
    if names.is_empty() {
        return Vary::None;
    }
    names.sort();
    names.dedup();
    Vary::Headers(names)
}

/// A digest of the request header values that `names` select: two requests
/// share a variant when their values are equal after normalization (lines
/// joined with `,`, whitespace around list items dropped, case kept except
/// for the names). An absent header differs from an empty one.
pub(crate) fn variant_id(request: &HeaderMap, names: &[String]) -> String {
    let mut hash = Sha256::new();
    for name in names {
        hash.update(name.as_bytes());
        let mut values = request.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            hash.update(b"\x01");
            continue;
        }
        hash.update(b"\x00");
        let mut first = true;
        for value in values {
            for item in value.as_bytes().split(|b| *b == b',') {
                if !first {
                    hash.update(b",");
                }
                first = false;
                hash.update(item.trim_ascii());
            }
        }
        hash.update(b"\x00");
    }
    let digest = hash.finalize();
    let mut id = String::with_capacity(24);
    crate::key::push_hex(&mut id, &digest[..12]);
    id
}

/// The result of evaluating a request's `If-None-Match` /
/// `If-Modified-Since` against a stored response (RFC 9110 §13.2.2).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap, stored_at_ms: u64) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || etag.is_some_and(|etag| weak_eq(tag, etag)));
    }
    let Some(since) = http_date(request.get(header::IF_MODIFIED_SINCE)) else {
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

/// The request fields the cache acts on, found in one pass over the
/// request's field names: cheaper than a hash lookup for each of them, and
/// nearly free for the few fields most requests carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestFields {
    /// `Range` or a precondition meant for the origin (`If-Match`,
    /// `If-Unmodified-Since`, `If-Range`): the cache does not answer it.
    pub(crate) passes_through: bool,
    /// `Cache-Control` or `Pragma`: request directives to parse.
    pub(crate) directives: bool,
    pub(crate) authorization: bool,
    pub(crate) cookie: bool,
    /// `If-None-Match` or `If-Modified-Since`: a conditional the cache
    /// answers itself.
    pub(crate) conditional: bool,
}

impl RequestFields {
    #[cfg(test)]
    pub(crate) fn scan(request: &HeaderMap) -> Self {
        let mut fields = Self::default();
        for name in request.keys() {
            fields.note(name);
        }
        fields
    }

    /// Takes note of one field name of the request (the layer walks the
    /// names once, for these and its own checks).
    #[inline]
    pub(crate) fn note(&mut self, name: &HeaderName) {
        if name == header::CACHE_CONTROL || name == header::PRAGMA {
            self.directives = true;
        } else if name == header::AUTHORIZATION {
            self.authorization = true;
        } else if name == header::COOKIE {
            self.cookie = true;
        } else if name == header::IF_NONE_MATCH || name == header::IF_MODIFIED_SINCE {
            self.conditional = true;
        } else if name == header::RANGE
            || name == header::IF_MATCH
            || name == header::IF_UNMODIFIED_SINCE
            || name == header::IF_RANGE
        {
            self.passes_through = true;
        }
    }
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

/// Headers that describe one connection (RFC 9110 §7.6.1), including those
/// the message's `Connection` header names.
pub(crate) fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    const FIXED: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
    ];
    FIXED.contains(&name.as_str())
        || name == header::PROXY_AUTHORIZATION
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
}

/// A strong entity tag computed from the body: the same bytes give the same
/// tag on every process and machine.
pub(crate) fn body_etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let mut tag = String::with_capacity(34);
    tag.push('"');
    crate::key::push_hex(&mut tag, &digest[..16]);
    tag.push('"');
    HeaderValue::try_from(tag).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn cc(v: &'static str) -> CacheControl {
        CacheControl::parse(&with(&[("cache-control", v)]))
    }

    #[test]
    fn request_fields_are_found_in_one_pass_whatever_their_case() {
        let scan = |fields: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in fields {
                h.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            RequestFields::scan(&h)
        };
        assert_eq!(
            scan(&[("host", "a"), ("accept", "*/*")]),
            RequestFields::default()
        );
        let all = scan(&[
            ("Cache-Control", "no-cache"),
            ("Authorization", "Bearer x"),
            ("Cookie", "session=1"),
            ("If-None-Match", "\"a\""),
            ("Range", "bytes=0-1"),
        ]);
        assert_eq!(
            all,
            RequestFields {
                passes_through: true,
                directives: true,
                authorization: true,
                cookie: true,
                conditional: true,
            }
        );
        assert!(scan(&[("pragma", "no-cache")]).directives);
        assert!(scan(&[("if-modified-since", "x")]).conditional);
        for precondition in ["if-match", "if-unmodified-since", "if-range"] {
            assert!(
                scan(&[(precondition, "x")]).passes_through,
                "{precondition}"
            );
        }
    }

    #[test]
    fn rfc9111_5_2_directives_parse_in_any_case_and_with_quotes() {
        let c = cc("Max-Age=60, s-maxage=\"30\", No-Store, no-cache=\"set-cookie, x\", private");
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(30));
        assert!(c.no_store && c.private);
        assert!(!c.no_cache, "a qualified no-cache only omits fields");
        assert_eq!(c.omit, ["set-cookie", "x"]);
        assert!(!c.public);
        assert_eq!(cc("max-age=1, max-age=99").max_age, Some(1));
        assert_eq!(cc("max-age=-1").max_age, Some(0));
        assert_eq!(cc("max-age=1.5").max_age, Some(1));
        assert_eq!(cc("max-age=003600").max_age, Some(3600));
        assert_eq!(cc("max-age='3600'").max_age, Some(0));
        assert_eq!(cc("max-age =3600").max_age, None);
        assert_eq!(cc("max-age= 3600").max_age, None);
        assert_eq!(cc("ext=\"max-age=3600\", max-age=1").max_age, Some(1));
        let q = cc("no-cache=\"A, b\", private=\"c\", max-age=9");
        assert!(!q.no_cache && !q.private);
        assert_eq!(q.omit, ["a", "b", "c"]);
        assert_eq!(cc("max-age=99999999999999999999").max_age, Some(MAX_DELTA));
        assert_eq!(cc("max-stale").max_stale, Some(u64::MAX));
        assert_eq!(cc("max-stale=5").max_stale, Some(5));
    }

    #[test]
    fn rfc9111_5_2_2_7_a_malformed_restriction_counts_as_the_unqualified_directive() {
        for line in [
            "private =\"x\"",
            "private= \"x\"",
            "private=",
            "private=\"\"",
            "private=x",
            "private=\"x",
            "private=\"x\" y",
            "private=\"a b\"",
            "max-age=60;private",
            "max-age=60 private",
            "public, private;max-age=60",
            "max-age=60, PRIVATE=set-cookie",
        ] {
            let c = cc(line);
            assert!(c.private, "{line:?} is private");
            assert!(c.omit.is_empty(), "{line:?} names no field");
        }
        for line in [
            "no-cache =\"x\"",
            "no-cache=",
            "no-cache=x",
            "max-age=60;no-cache",
        ] {
            assert!(cc(line).no_cache, "{line:?} is no-cache");
        }
        for line in ["no-store =\"x\"", "no-store=x", "max-age=60;no-store"] {
            assert!(cc(line).no_store, "{line:?} is no-store");
        }
        // What a malformed item grants is ignored.
        let c = cc("max-age=60;private");
        assert_eq!(c.max_age, None);
        assert!(!cc("public;max-age=60").public);
        // A well-formed qualified form still only omits its fields, and a
        // restriction inside another directive's quoted argument is not one.
        let q = cc("private=\"set-cookie\", no-cache=\"x, y\", max-age=60");
        assert!(!q.private && !q.no_cache);
        assert_eq!(q.omit, ["set-cookie", "x", "y"]);
        assert_eq!(q.max_age, Some(60));
        let ext = cc("ext=\"private, no-store\", max-age=5");
        assert!(!ext.private && !ext.no_store);
        assert_eq!(ext.max_age, Some(5));
        // A comma inside a quoted argument does not end the item.
        assert_eq!(
            directives("a=\"x,y\", b"),
            [
                Item::Directive {
                    name: "a",
                    arg: Some(Arg::Quoted("x,y"))
                },
                Item::Directive {
                    name: "b",
                    arg: None
                }
            ]
        );
    }

    #[test]
    fn rfc9111_5_4_pragma_no_cache_only_without_cache_control() {
        let r = CacheControl::parse_request(&with(&[("pragma", "no-cache")]));
        assert!(r.no_cache);
        let r = CacheControl::parse_request(&with(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=5"),
        ]));
        assert!(!r.no_cache);
    }

    #[test]
    fn rfc9111_4_2_1_freshness_lifetime() {
        let ok = StatusCode::OK;
        let h = with(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(
            freshness_lifetime_ms(ok, &h, &CacheControl::parse(&h), 0, None),
            20_000
        );
        let h = with(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("expires", "Wed, 21 Oct 2015 07:29:00 GMT"),
        ]);
        assert_eq!(
            freshness_lifetime_ms(ok, &h, &CacheControl::default(), 0, None),
            60_000
        );
        let h = with(&[("expires", "0")]);
        assert_eq!(
            freshness_lifetime_ms(ok, &h, &CacheControl::default(), 0, None),
            0
        );
        let h = with(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("last-modified", "Wed, 21 Oct 2015 07:11:20 GMT"),
        ]);
        let none = CacheControl::default();
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, None), 0);
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, Some(0.1)), 100_000);
        let created = StatusCode::CREATED;
        assert_eq!(freshness_lifetime_ms(created, &h, &none, 0, Some(0.1)), 0);
    }

    #[test]
    fn rfc9111_4_2_3_age_takes_the_larger_of_upstream_age_and_apparent_age() {
        let date = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        let h = with(&[("date", "Wed, 21 Oct 2015 07:28:00 GMT"), ("age", "30")]);
        assert_eq!(initial_age_ms(&h, date + 1_000, date + 2_000), 31_000);
        assert_eq!(initial_age_ms(&h, date + 99_000, date + 100_999), 100_000);
        assert_eq!(initial_age_ms(&HeaderMap::new(), 10, 15), 5);
    }

    #[test]
    fn rfc9111_4_1_vary_selects_by_normalized_values() {
        assert_eq!(vary(&HeaderMap::new()), Vary::None);
        assert_eq!(vary(&with(&[("vary", "Accept, *")])), Vary::Any);
        assert_eq!(
            vary(&with(&[
                ("vary", "Accept-Language, accept"),
                ("vary", "Accept")
            ])),
            Vary::Headers(vec!["accept".into(), "accept-language".into()])
        );
        let names = vec!["accept-language".to_owned()];
        let a = variant_id(&with(&[("accept-language", "en, fr")]), &names);
        let b = variant_id(&with(&[("accept-language", "en ,fr")]), &names);
        let c = variant_id(
            &with(&[("accept-language", "en"), ("accept-language", "fr")]),
            &names,
        );
        let d = variant_id(&with(&[("accept-language", "de")]), &names);
        let absent = variant_id(&HeaderMap::new(), &names);
        let empty = variant_id(&with(&[("accept-language", "")]), &names);
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_ne!(a, d);
        assert_ne!(absent, empty);
    }

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
    fn unsafe_responses_are_refused() {
        let refuse = |h: HeaderMap| refuse_to_store(&h, &CacheControl::parse(&h), false);
        assert!(refuse(with(&[("set-cookie", "a=b")])).is_some());
        assert!(refuse_to_store(
            &with(&[("set-cookie", "a=b")]),
            &CacheControl::default(),
            true
        )
        .is_none());
        assert!(refuse(with(&[("cache-control", "private, max-age=9")])).is_some());
        assert!(refuse(with(&[("cache-control", "no-store")])).is_some());
        assert!(refuse(with(&[("vary", "*")])).is_some());
        assert!(refuse(with(&[("vary", "accept-language")])).is_none());
        assert!(refuse(with(&[("cache-control", "public, max-age=9")])).is_none());
    }

    #[test]
    fn body_etags_are_strong_and_stable() {
        assert_eq!(body_etag(b"abc"), body_etag(b"abc"));
        assert_ne!(body_etag(b"abc"), body_etag(b"abd"));
        assert!(!body_etag(b"").to_str().unwrap().starts_with("W/"));
    }
}
