//! The cache status of a response: what the layer did with it, counted,
//! logged and (when configured) sent in the status header.

use std::fmt::Display;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// What the layer did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Served fresh from the cache.
    Hit,
    /// Not found (or not usable): the service answered.
    Miss,
    /// Passed through without the cache.
    Bypass,
    /// Served stale from the cache.
    Stale,
    /// Revalidated with the service, which answered `304`.
    Revalidated,
}

impl CacheStatus {
    /// The value of the status header, and the metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
        }
    }
}

/// Counts and logs a request's outcome.
pub(crate) fn record(status: CacheStatus) {
    crate::metrics::request(status.as_str());
    tracing::debug!(outcome = status.as_str(), "cache outcome");
}

/// Logs at `debug` why a request is a `BYPASS`, with its method and path
/// (never its query, which may carry a secret). The fields are formatted
/// only when the level is enabled.
pub(crate) fn bypassed(method: &Method, uri: &Uri, reason: impl Display) {
    tracing::debug!(%method, path = uri.path(), %reason, "cache BYPASS");
}

/// Logs at `debug` why a response the cache looked up was not stored.
pub(crate) fn not_stored(method: &Method, uri: &Uri, reason: impl Display) {
    tracing::debug!(%method, path = uri.path(), %reason, "cache response not stored");
}

/// Counts a request's outcome and sets the status header (when enabled).
pub(crate) fn mark(name: Option<&HeaderName>, headers: &mut HeaderMap, status: CacheStatus) {
    record(status);
    if let Some(name) = name {
        headers.insert(name.clone(), HeaderValue::from_static(status.as_str()));
    }
}

/// The `Cache-Status` field (RFC 9211) a layer adds, when configured: this
/// cache's name as a structured-field token or string, and whether the key
/// is shown.
#[derive(Debug, Clone)]
pub(crate) struct CacheStatusField {
    name: String,
    key: bool,
}

impl CacheStatusField {
    /// `None` when `name` is empty or holds characters a structured-field
    /// string cannot (control characters, non-ASCII).
    pub(crate) fn new(name: &str, key: bool) -> Option<Self> {
        if name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return None;
        }
        let first = name.as_bytes()[0];
        let token = (first.is_ascii_alphabetic() || first == b'*')
            && name.bytes().all(|b| is_tchar(b) || b == b':' || b == b'/');
        let name = if token {
            name.to_owned()
        } else {
            let mut quoted = String::with_capacity(name.len() + 2);
            push_sf_string(&mut quoted, name);
            quoted
        };
        Some(Self { name, key })
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Why a request went to the service (RFC 9211 §2.2 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// The cache does not handle this request (policy, upgrade, store down).
    Bypass,
    /// Its method is not one the cache answers.
    Method,
    /// Nothing stored under its URI.
    UriMiss,
    /// Responses for the URI vary, and none for this request's variant.
    VaryMiss,
    /// A stored response was found but stale (or never fresh).
    Stale,
    /// A fresh response was found, but the request's directives refused it.
    Request,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Method => "method",
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Stale => "stale",
            Self::Request => "request",
        }
    }
}

/// What `Cache-Status` says about one response.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Detail<'a> {
    /// `None`: served from the cache without going to the service (`hit`).
    pub(crate) fwd: Option<Fwd>,
    pub(crate) fwd_status: Option<http::StatusCode>,
    pub(crate) stored: bool,
    /// Freshness left, in milliseconds (negative when stale).
    pub(crate) ttl_ms: Option<i128>,
    pub(crate) collapsed: bool,
    pub(crate) key: Option<&'a str>,
    pub(crate) detail: Option<&'static str>,
}

/// Appends this cache's member to the response's `Cache-Status` (after any
/// an upstream cache sent, RFC 9211 §2), when the layer is configured to.
pub(crate) fn cache_status(
    field: Option<&CacheStatusField>,
    headers: &mut HeaderMap,
    detail: Detail<'_>,
) {
    use std::fmt::Write;
    let Some(field) = field else {
        return;
    };
    let mut v = String::with_capacity(64);
    v.push_str(&field.name);
    match detail.fwd {
        None => v.push_str("; hit"),
        Some(fwd) => {
            let _ = write!(v, "; fwd={}", fwd.as_str());
            if let Some(status) = detail.fwd_status {
                let _ = write!(v, "; fwd-status={}", status.as_u16());
            }
        }
    }
    if detail.stored {
        v.push_str("; stored");
    }
    if let Some(ms) = detail.ttl_ms {
        // Whole seconds, to the nearest.
        let _ = write!(v, "; ttl={}", (ms + 500).div_euclid(1000));
    }
    if detail.collapsed {
        v.push_str("; collapsed");
    }
    if let Some(key) = detail.key.filter(|_| field.key) {
        if key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            v.push_str("; key=");
            push_sf_string(&mut v, key);
        }
    }
    if let Some(d) = detail.detail {
        let _ = write!(v, "; detail={d}");
    }
    if let Ok(value) = HeaderValue::from_str(&v) {
        headers.append(CACHE_STATUS, value);
    }
}

/// `Cache-Status` (RFC 9211).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

#[cfg(test)]
mod tests {
    use super::*;

    fn member(field: &CacheStatusField, detail: Detail<'_>) -> String {
        let mut h = HeaderMap::new();
        h.append(
            CACHE_STATUS,
            HeaderValue::from_static("origin; fwd=uri-miss"),
        );
        cache_status(Some(field), &mut h, detail);
        let all: Vec<_> = h.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(
            all[0], "origin; fwd=uri-miss",
            "upstream members come first"
        );
        all[1].to_str().unwrap().to_owned()
    }

    #[test]
    fn rfc9211_2_members_as_the_rfc_spells_them() {
        let f = CacheStatusField::new("api-cache", true).unwrap();
        let hit = Detail {
            ttl_ms: Some(59_400),
            key: Some("c:v1:default:GET:/a?q=\"x\""),
            ..Detail::default()
        };
        assert_eq!(
            member(&f, hit),
            r#"api-cache; hit; ttl=59; key="c:v1:default:GET:/a?q=\"x\"""#
        );
        let miss = Detail {
            fwd: Some(Fwd::UriMiss),
            fwd_status: Some(http::StatusCode::OK),
            stored: true,
            ttl_ms: Some(60_000),
            ..Detail::default()
        };
        assert_eq!(
            member(&f, miss),
            "api-cache; fwd=uri-miss; fwd-status=200; stored; ttl=60"
        );
        let stale = Detail {
            ttl_ms: Some(-1_200),
            ..Detail::default()
        };
        assert_eq!(member(&f, stale), "api-cache; hit; ttl=-1");
    }

    #[test]
    fn rfc9211_2_a_name_that_is_not_a_token_is_a_string() {
        let f = CacheStatusField::new("My Cache", false).unwrap();
        assert_eq!(member(&f, Detail::default()), r#""My Cache"; hit"#);
        assert!(CacheStatusField::new("", false).is_none());
        assert!(CacheStatusField::new("caché", false).is_none());
        assert!(CacheStatusField::new("a\nb", false).is_none());
        // The key is shown only when asked for.
        let f = CacheStatusField::new("c", false).unwrap();
        let keyed = Detail {
            key: Some("k"),
            ..Detail::default()
        };
        assert_eq!(member(&f, keyed), "c; hit");
    }
}
