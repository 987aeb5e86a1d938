//! Key derivation: `{prefix}:{version}:{namespace}:{METHOD}:{path}?{query}`.
//!
//! Keys are readable for ordinary URLs so operators can find them with
//! `redis-cli --scan`. Query parameters are sorted by name (values of a repeated
//! name keep their order), so `?a=1&b=2` and `?b=2&a=1` share an entry. Past
//! [`READABLE_LIMIT`] bytes the query (or, for a very long path, the tail of the
//! path) is replaced by a SHA-256 digest after a `#` marker; `#` can never occur
//! in a request's path or query, so a hashed key cannot collide with a readable
//! one. Everything taken from a request is glob-escaped before it enters a SCAN
//! pattern, so no request can widen an invalidation.

use std::borrow::Cow;

use http::Method;
use sha2::{Digest, Sha256};

use crate::{
    authority::{forwarded_authority, request_authority, BadAuthority},
    error::Error,
};

/// Path plus query longer than this many bytes is hashed.
pub(crate) const READABLE_LIMIT: usize = 512;

/// The longest origin part of a key (`https://` and a 253-byte host with a
/// port, or an IPv6 literal), and the space after it.
const MAX_ORIGIN: usize = 280;

/// The marker that starts a digest inside a key.
const HASH_MARKER: char = '#';

/// Which parts of the request's origin go into the key, and which
/// forwarding headers are trusted for them.
#[derive(Clone, Debug, Default)]
pub(crate) struct OriginKey {
    pub(crate) host: bool,
    pub(crate) scheme: bool,
    pub(crate) host_header: Option<http::HeaderName>,
    pub(crate) proto_header: Option<http::HeaderName>,
}

impl OriginKey {
    /// The origin part of a key for this request: `""` when neither host nor
    /// scheme is keyed, else `//host`, `http:` or `http://host`. The host is
    /// the request's authority as [`request_authority`] gives it (or the
    /// trusted forwarding header's), never repaired: a request whose
    /// authority is refused cannot be keyed, and passes uncached.
    ///
    /// [`request_authority`]: crate::request_authority
    pub(crate) fn of(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<String, BadAuthority> {
        if !self.host && !self.scheme {
            return Ok(String::new());
        }
        let scheme = match (uri.scheme_str(), self.proto_header.as_ref()) {
            (Some(s), _) => s.to_ascii_lowercase(),
            (None, Some(name)) => match headers.get(name) {
                None => "http".to_owned(),
                Some(v) => {
                    let first = v.to_str().ok().and_then(|v| v.split(',').next());
                    match first.map(|v| v.trim().to_ascii_lowercase()) {
                        Some(s) if s == "http" || s == "https" => s,
                        _ => return Err(BadAuthority::Invalid),
                    }
                }
            },
            (None, None) => "http".to_owned(),
        };
        let mut out = String::new();
        if self.scheme {
            if !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            {
                return Err(BadAuthority::Invalid);
            }
            out.push_str(&scheme);
            out.push(':');
        }
        if self.host {
            let forwarded = self
                .host_header
                .as_ref()
                .and_then(|name| forwarded_authority(headers, name, &scheme));
            let host = match forwarded {
                Some(host) => host?,
                None => request_authority(uri, headers, &scheme)?,
            };
            out.push_str("//");
            out.push_str(&host);
        }
        Ok(out)
    }

    /// The origin parts of every host a request names, each read alone:
    /// the target's authority and each `Host` field. For an unsafe request
    /// whose authority is refused (it is never keyed, but the origin may
    /// still act on one of its hosts), so that each can be invalidated.
    pub(crate) fn candidates(&self, uri: &http::Uri, headers: &http::HeaderMap) -> Vec<String> {
        let mut out = Vec::new();
        if uri.authority().is_some() {
            out.extend(self.of(uri, &http::HeaderMap::new()).ok());
        }
        let path_only = http::Uri::from_static("/");
        for host in headers.get_all(http::header::HOST) {
            let mut alone = headers.clone();
            alone.insert(http::header::HOST, host.clone());
            out.extend(self.of(&path_only, &alone).ok());
        }
        out.sort();
        out.dedup();
        out
    }

    /// The origin part of a key for an absolute URI given to the handle
    /// (no request headers): `Err` when the host is keyed and `uri` names
    /// none.
    pub(crate) fn of_uri(&self, uri: &http::Uri) -> Result<String, BadAuthority> {
        self.of(uri, &http::HeaderMap::new())
    }
}

/// Skips the origin part (`http://host `, `//host `, `http: `) at the start
/// of a key's target, leaving the path. The origin ends with a space, which
/// never occurs in a request target or in a keyed origin.
fn strip_origin(target: &str) -> &str {
    target.split_once(' ').map_or(target, |(_, path)| path)
}

/// The fixed part of every key this layer writes: `{prefix}:{version}:`.
#[derive(Clone, Debug)]
pub(crate) struct KeySpace {
    base: String,
}

impl KeySpace {
    pub(crate) fn new(prefix: &str, version: &str) -> Result<Self, Error> {
        check_component("prefix", prefix)?;
        check_component("version", version)?;
        Ok(Self {
            base: format!("{prefix}:{version}:"),
        })
    }

    /// The key of one stored response, with the origin part (see
    /// [`OriginKey::of`]) and a space before the path.
    pub(crate) fn entry_key_at(
        &self,
        namespace: &str,
        method: &Method,
        origin: &str,
        path: &str,
        query: Option<&str>,
    ) -> String {
        if origin.is_empty() {
            self.entry_key(namespace, method, path, query)
        } else {
            self.entry_key(namespace, method, &format!("{origin} {path}"), query)
        }
    }

    /// The key of one stored response.
    pub(crate) fn entry_key(
        &self,
        namespace: &str,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let path = normalize_percent(path);
        let path: &str = &path;
        let query = query.map(normalize_query).filter(|q| !q.is_empty());
        let method = method.as_str();
        let mut key = String::with_capacity(
            self.base.len()
                + namespace.len()
                + method.len()
                + path.len().min(READABLE_LIMIT)
                + query.as_ref().map_or(0, |q| q.len().min(READABLE_LIMIT))
                + 72,
        );
        key.push_str(&self.base);
        key.push_str(namespace);
        key.push(':');
        key.push_str(method);
        key.push(':');
        let readable_len = path.len() + query.as_ref().map_or(0, |q| q.len() + 1);
        if readable_len <= READABLE_LIMIT {
            key.push_str(path);
            if let Some(q) = &query {
                key.push('?');
                key.push_str(q);
            }
        } else if path.len() <= READABLE_LIMIT {
            key.push_str(path);
            key.push('?');
            key.push(HASH_MARKER);
            push_digest(&mut key, &[query.as_deref().unwrap_or("").as_bytes()]);
        } else {
            key.push_str(&path[..floor_boundary(path, READABLE_LIMIT)]);
            key.push(HASH_MARKER);
            let q = query.as_deref().unwrap_or("");
            push_digest(&mut key, &[path.as_bytes(), b"?", q.as_bytes()]);
        }
        key
    }

    /// The key of the stored response for `GET uri` in `namespace` (its
    /// `Vary` marker, for a response with `Vary`), under the keyed `origin`.
    pub(crate) fn uri_key(&self, namespace: &str, origin: &str, uri: &http::Uri) -> String {
        self.entry_key_at(
            namespace,
            &http::Method::GET,
            origin,
            uri.path(),
            uri.query(),
        )
    }

    /// The key of the short lock that lets one instance compute the entry at
    /// `entry_key` (in `namespace`): the entry key with `LOCK` in place of
    /// the method. Entries are stored under `GET` only, so it is never an
    /// entry key, and prefix invalidation leaves it alone.
    pub(crate) fn lock_key(&self, namespace: &str, entry_key: &str) -> String {
        let at = self.base.len() + namespace.len() + 1;
        match entry_key
            .get(at..)
            .and_then(|rest| rest.strip_prefix("GET"))
        {
            Some(rest) => format!("{}LOCK{rest}", &entry_key[..at]),
            None => format!("{entry_key}#lock"),
        }
    }

    /// The key of a tag's index: a sorted set of the entry keys carrying the
    /// tag, scored by their expiry. `#` never occurs in a namespace, so it
    /// cannot collide with an entry key.
    pub(crate) fn tag_key(&self, tag: &str) -> String {
        format!("{}#tag:{tag}", self.base)
    }

    /// The key of the invalidation counter (see [`Fence`](crate::store::Fence)).
    /// `#` never occurs in a namespace, so it is never an entry key.
    pub(crate) fn fence_counter_key(&self) -> String {
        format!("{}#fence", self.base)
    }

    /// The fence marker of `key` (an entry key or a tag index key of this
    /// key space), raised by an invalidation that removes it.
    pub(crate) fn fence_key(&self, key: &str) -> String {
        let rest = key.strip_prefix(self.base.as_str()).unwrap_or(key);
        format!("{}#fence:{rest}", self.base)
    }

    /// The fence marker raised by every path-prefix invalidation: one for
    /// the key space, since a prefix covers keys not written yet.
    pub(crate) fn prefix_fence_key(&self) -> String {
        format!("{}#fence-prefix", self.base)
    }

    /// What every key of this key space starts with: `{prefix}:{version}:`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The key holding a namespace's generation counter.
    ///
    /// It has a single `:` after the namespace, while every entry key has
    /// `:{METHOD}:/...` there, so the two never collide.
    pub(crate) fn generation_key(&self, namespace: &str) -> String {
        format!("{}{namespace}:generation", self.base)
    }

    /// A SCAN pattern that every entry under `path_prefix` (in any namespace and
    /// method) matches. Use [`KeySpace::is_under_path_prefix`] for the exact test.
    pub(crate) fn prefix_pattern(&self, path_prefix: &str) -> String {
        // A keyed origin (`//host `) takes part of the key's readable bytes,
        // so a long path is cut earlier than `READABLE_LIMIT`: the pattern
        // keeps no more of the prefix than any key keeps of its path.
        let head = &path_prefix[..floor_boundary(path_prefix, READABLE_LIMIT - MAX_ORIGIN)];
        // No `:` before the path: a keyed origin (`http://host`) may sit
        // between the method and the path.
        format!("{}*:*{}*", glob_escape(&self.base), glob_escape(head))
    }

    /// Whether `key` is an entry of this key space whose path starts with
    /// `path_prefix`. An entry whose path was too long to keep readable counts
    /// when its readable head could start with the prefix (removing too much is
    /// safe; leaving a stale entry is not).
    pub(crate) fn is_under_path_prefix(&self, key: &str, path_prefix: &str) -> bool {
        let Some(rest) = key.strip_prefix(&self.base) else {
            return false;
        };
        let Some((namespace, rest)) = rest.split_once(':') else {
            return false;
        };
        if namespace.starts_with('#') {
            return false; // a tag index
        }
        // Entries are stored under GET only; other method parts (lock keys)
        // are not entries.
        let Some(("GET", target)) = rest.split_once(':') else {
            return false;
        };
        let target = strip_origin(target);
        if target.starts_with(path_prefix) {
            return true;
        }
        match target.find(HASH_MARKER) {
            // `{path head}#digest`: the path was cut, so the prefix may go on
            // past it. (`#v` and `#k`, a variant's or key material's marker,
            // follow a whole path.)
            Some(i)
                if !target[..i].contains('?')
                    && target[i + 1..].starts_with(|c: char| c.is_ascii_hexdigit()) =>
            {
                path_prefix.starts_with(&target[..i])
            }
            _ => false,
        }
    }

    /// Whether `key` is an entry of `paths`: one of its path and query
    /// pairs, in one of its namespaces, under its origin, as a whole entry,
    /// a `Vary` variant or a variant of key material (`#k`).
    pub(crate) fn is_entry_of(&self, key: &str, paths: &ExactPaths) -> bool {
        let Some(rest) = key.strip_prefix(&self.base) else {
            return false;
        };
        let Some((namespace, rest)) = rest.split_once(':') else {
            return false;
        };
        if namespace.starts_with('#')
            || !(paths.namespaces.is_empty() || paths.namespaces.iter().any(|n| n == namespace))
        {
            return false;
        }
        let Some(("GET", target)) = rest.split_once(':') else {
            return false;
        };
        let origin = target.split_once(' ').map_or("", |(origin, _)| origin);
        if paths.origin.as_deref().is_some_and(|o| o != origin) {
            return false;
        }
        paths.queries.iter().any(|query| {
            let entry = self.entry_key_at(
                namespace,
                &Method::GET,
                origin,
                &paths.path,
                query.as_deref(),
            );
            key.strip_prefix(entry.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(HASH_MARKER))
        })
    }
}

/// The entries of one path (a [`CacheHandle::invalidate_path`] call): every
/// host's, every variant's, under every query form in `queries` (the
/// query as each policy that may hold the path keys it).
///
/// [`CacheHandle::invalidate_path`]: crate::CacheHandle::invalidate_path
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExactPaths {
    /// The namespaces that may hold the path; empty for every namespace.
    pub(crate) namespaces: Vec<String>,
    /// The origin part of the keys; `None` for every host.
    pub(crate) origin: Option<String>,
    pub(crate) path: String,
    pub(crate) queries: Vec<Option<String>>,
}

/// Normalises a query for the key: percent-encodings as
/// [`normalize_percent`] does, empty segments (`a=1&&b=2`) dropped, and
/// parameters sorted by name with a stable sort, so `?a=1&b=2` and
/// `?b=2&a=1` share an entry.
///
/// The sort compares names as an origin may decode them: percent-decoded,
/// `+` read as a space, ASCII case ignored. Parameters that some origin reads
/// as the same name therefore keep their order (`a=2&%61=1` is not
/// `%61=1&a=2`, `A=1&a=2` is not `a=2&A=1`), while the raw bytes of each
/// parameter stay as sent: `+` and `%20`, or `ids[]` and `ids%5B%5D`, never
/// become one another. Two queries share a key only when every such origin
/// reads the same values, in the same order, for every name. A query with a
/// `;` is not sorted: some origins split on it as on `&`.
pub(crate) fn normalize_query(query: &str) -> Cow<'_, str> {
    fn name(p: &str) -> &str {
        p.split_once('=').map_or(p, |(n, _)| n)
    }
    let normalized = normalize_percent(query);
    if normalized.contains(';') {
        // Some origins split parameters on `;` too: a parameter holding one
        // may be several, so none is moved.
        return normalized;
    }
    let in_order = {
        let q: &str = &normalized;
        q.split('&').all(|p| !p.is_empty())
            && q.split('&')
                .zip(q.split('&').skip(1))
                .all(|(a, b)| sort_name(name(a)) <= sort_name(name(b)))
    };
    if in_order {
        return normalized;
    }
    let mut parts: Vec<(Cow<'_, [u8]>, &str)> = normalized
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| (sort_name(name(p)), p))
        .collect();
    // `sort_by` is stable: parameters of one (decoded) name keep their order.
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(normalized.len());
    for (i, (_, p)) in parts.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(p);
    }
    Cow::Owned(out)
}

/// A parameter name as an origin may decode it, for sorting only:
/// percent-decoded, `+` as a space, ASCII lower case.
fn sort_name(name: &str) -> Cow<'_, [u8]> {
    if !name
        .bytes()
        .any(|b| b == b'%' || b == b'+' || b.is_ascii_uppercase())
    {
        return Cow::Borrowed(name.as_bytes());
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], escape_at(bytes, i)) {
            (_, Some(b)) => {
                out.push(b.to_ascii_lowercase());
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b.to_ascii_lowercase());
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// The byte a valid `%XX` at `i` encodes.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let hi = hex(*bytes.get(i + 1)?)?;
    let lo = hex(*bytes.get(i + 2)?)?;
    u8::try_from(hi * 16 + lo).ok()
}

/// Normalises percent-encodings in a path or query (RFC 3986 §6.2.2.1-2): an
/// encoded unreserved character (`%61`, `%7E`) is decoded, every other
/// encoding gets upper-case hex (`%2f` is `%2F`). Everything else is kept
/// byte for byte, invalid escapes included: `%2F` and `/`, `%20` and `+`
/// stay apart, since an origin may read them differently. The result is
/// normalised again unchanged.
#[inline]
pub(crate) fn normalize_percent(s: &str) -> Cow<'_, str> {
    // A plain loop: for the short paths and queries of most requests it
    // costs less than `str::find`'s searcher.
    match s.bytes().position(|b| b == b'%') {
        None => Cow::Borrowed(s),
        Some(first) => normalize_percent_from(s, first),
    }
}

/// [`normalize_percent`] of `s`, whose first `%` is at `first`.
fn normalize_percent_from(s: &str, first: usize) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    // With a `%` that starts no escape, decoding could make a new escape
    // (`%%36%31` would read `%61`): then only the hex case is normalised.
    let decode = (first..bytes.len()).all(|i| bytes[i] != b'%' || escape_at(bytes, i).is_some());
    let mut out: Option<Vec<u8>> = None;
    let mut i = first;
    while i < bytes.len() {
        let Some(b) = escape_at(bytes, i) else {
            if let Some(out) = &mut out {
                out.push(bytes[i]);
            }
            i += 1;
            continue;
        };
        let unreserved =
            decode && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        let upper = [
            b'%',
            HEX_UPPER[usize::from(b >> 4)],
            HEX_UPPER[usize::from(b & 0xf)],
        ];
        let same = !unreserved && bytes[i..i + 3] == upper;
        if !same && out.is_none() {
            out = Some(bytes[..i].to_vec());
        }
        if let Some(out) = &mut out {
            if unreserved {
                out.push(b);
            } else {
                out.extend_from_slice(&upper);
            }
        }
        i += 3;
    }
    match out {
        // Only ASCII escapes were replaced by ASCII: still UTF-8.
        Some(out) => Cow::Owned(
            String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        None => Cow::Borrowed(s),
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Escapes Redis glob metacharacters so `s` matches only itself in a pattern.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Checks a configured key part: non-empty, printable ASCII without
/// whitespace, `:` or glob characters.
pub(crate) fn check_component(what: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::config(format!(
            "{what} is empty: give a short name such as \"api\""
        )));
    }
    if value.len() > 64 {
        return Err(Error::config(format!(
            "{what} {value:?} is longer than 64 bytes: use a short name"
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, ':' | '*' | '?' | '[' | ']' | '\\' | '#'))
    {
        return Err(Error::config(format!(
            "{what} {value:?} contains {bad:?}: use letters, digits, '-', '_' or '.' \
             (':' separates key parts; whitespace and glob characters are not allowed)"
        )));
    }
    Ok(())
}

fn push_digest(key: &mut String, parts: &[&[u8]]) {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p);
    }
    crate::hex::push(key, &hasher.finalize()[..16]);
}

fn floor_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// The key of the variant a request with `headers` selects under the `Vary`
/// marker stored at `primary`: the nonce names the marker's set of
/// variants, the id the request's values of the marker's fields.
pub(crate) fn variant_key(
    primary: &str,
    marker: &crate::entry::Marker,
    headers: &http::HeaderMap,
) -> String {
    let id = crate::http::variant_id(headers, &marker.names);
    format!("{primary}#v{}.{id}", marker.nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Uri;

    fn space() -> KeySpace {
        KeySpace::new("api", "v1").unwrap()
    }

    fn key(uri: &str) -> String {
        let uri: Uri = uri.parse().unwrap();
        space().entry_key("products", &Method::GET, uri.path(), uri.query())
    }

    #[test]
    fn readable_layout() {
        assert_eq!(key("/products/1"), "api:v1:products:GET:/products/1");
        assert_eq!(
            key("/products?page=2&category=tv"),
            "api:v1:products:GET:/products?category=tv&page=2"
        );
    }

    #[test]
    fn query_order_does_not_matter_but_repeated_values_keep_order() {
        assert_eq!(key("/p?a=1&b=2"), key("/p?b=2&a=1"));
        assert_ne!(key("/p?a=1&a=2"), key("/p?a=2&a=1"));
        assert_eq!(key("/p?"), key("/p"));
        assert_eq!(key("/p?a=1&&b=2"), key("/p?b=2&a=1"));
        assert_ne!(key("/p?a"), key("/p?a="));
    }

    #[test]
    fn rfc3986_6_2_2_percent_encodings_are_normalised_in_path_and_query() {
        // Unreserved characters decoded, hex case upper.
        assert_eq!(key("/products/%38"), key("/products/8"));
        assert_eq!(key("/%7euser/a%2fb"), key("/~user/a%2Fb"));
        assert_eq!(key("/p?q=%41%2c"), key("/p?q=A%2C"));
        // Reserved characters are not their encodings.
        assert_ne!(key("/a%2Fb"), key("/a/b"));
        assert_ne!(key("/p?a=x%26b%3Dc"), key("/p?a=x&b=c"));
        // A lone `%` is kept, and never turns into an escape.
        assert_eq!(
            key("/p%%36%31"),
            "api:v1:products:GET:/p%%36%31",
            "no escape is made out of a lone %"
        );
        assert_eq!(key("/p%zz%2f"), "api:v1:products:GET:/p%zz%2F");
        // Prefixes are compared normalised, as the handle passes them.
        assert!(space().is_under_path_prefix(&key("/%a0!"), &normalize_percent("/%a0")));
    }

    #[test]
    fn parameters_that_an_origin_may_read_as_one_name_keep_their_order() {
        // `%61` is `a`: `a=2&%61=1` is a=[2,1], `%61=1&a=2` is a=[1,2].
        assert_ne!(key("/p?a=2&%61=1"), key("/p?%61=1&a=2"));
        assert_eq!(key("/p?a=2&%61=1"), key("/p?a=2&a=1"));
        // Case-insensitive origins: `A` and `a` keep their order.
        assert_ne!(key("/p?A=1&a=2"), key("/p?a=2&A=1"));
        // Form decoding: `+` and `%20` are one name; raw bytes kept.
        assert_ne!(key("/p?a+b=1&a%20b=2"), key("/p?a%20b=2&a+b=1"));
        assert_ne!(key("/p?q=a+b"), key("/p?q=a%20b"));
        // PHP reads `ids[]` and `ids%5B%5D` as one name.
        assert_ne!(key("/p?ids[]=1&ids%5B%5D=2"), key("/p?ids%5B%5D=2&ids[]=1"));
        assert_ne!(key("/p?ids[]=1"), key("/p?ids%5B%5D=1"));
        // Distinct names still sort.
        assert_eq!(key("/p?b=1&A=2"), key("/p?A=2&b=1"));
        assert_eq!(key("/p?b=1&A=2"), "api:v1:products:GET:/p?A=2&b=1");
    }

    #[test]
    fn long_queries_and_paths_are_hashed_and_distinct() {
        let long_q = format!("/p?x={}", "a".repeat(600));
        let long_q2 = format!("/p?x={}b", "a".repeat(600));
        let k = key(&long_q);
        assert!(k.starts_with("api:v1:products:GET:/p?#"), "{k}");
        assert!(k.len() < 100);
        assert_ne!(k, key(&long_q2));

        let long_p = format!("/{}", "s/".repeat(400));
        let k = key(&long_p);
        assert!(k.len() < READABLE_LIMIT + 80);
        assert_ne!(k, key(&format!("{long_p}x")));
        assert!(space().is_under_path_prefix(&k, "/s/s/"));
        assert!(space().is_under_path_prefix(&k, &long_p));
    }

    #[test]
    fn requests_cannot_produce_the_hash_marker() {
        for raw in ["/a#b", "/a?b=#c", "/a%23"] {
            if let Ok(uri) = raw.parse::<Uri>() {
                assert!(!uri.path().contains('#'), "{raw}");
                assert!(!uri.query().unwrap_or("").contains('#'), "{raw}");
            }
        }
    }

    #[test]
    fn prefix_matching_is_exact_about_structure() {
        let s = space();
        let k = key("/products/1");
        assert!(s.is_under_path_prefix(&k, "/products"));
        assert!(s.is_under_path_prefix(&k, "/products/"));
        assert!(!s.is_under_path_prefix(&k, "/orders"));
        // A path containing ":/products" is not under "/products".
        assert!(!s.is_under_path_prefix(&key("/a:/products"), "/products"));
        // Another version's keys are never matched.
        let v2 = KeySpace::new("api", "v2").unwrap();
        assert!(!v2.is_under_path_prefix(&k, "/products"));
        // Generation keys are not entries.
        assert!(!s.is_under_path_prefix(&s.generation_key("products"), "/"));
    }

    #[test]
    fn lock_keys_sit_beside_entries_and_are_not_entries() {
        let s = space();
        let k = key("/products/1?a=1");
        let lock = s.lock_key("products", &k);
        assert_eq!(lock, "api:v1:products:LOCK:/products/1?a=1");
        assert!(!s.is_under_path_prefix(&lock, "/products"));
        assert!(!s.is_under_path_prefix(&s.tag_key("GET:/products/1"), "/products"));
    }

    #[test]
    fn keyed_origins_separate_hosts_and_never_trust_forwarding_headers_unasked() {
        let req = |uri: &str, host: &str, fwd: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::HOST, host.parse().unwrap());
            h.insert("x-forwarded-host", fwd.parse().unwrap());
            (uri.parse::<http::Uri>().unwrap(), h)
        };
        let plain = OriginKey::default();
        let (u, h) = req("/p", "a.example", "evil.example");
        assert_eq!(plain.of(&u, &h).unwrap(), "");
        let host = OriginKey {
            host: true,
            ..OriginKey::default()
        };
        assert_eq!(host.of(&u, &h).unwrap(), "//a.example");
        let (abs, h2) = req("https://B.example:8443/p", "b.example:8443", "x");
        assert_eq!(host.of(&abs, &h2).unwrap(), "//b.example:8443");
        // The origin may read either host: not keyed.
        let (abs, h2) = req("https://b.example/p", "a.example", "x");
        assert_eq!(host.of(&abs, &h2), Err(BadAuthority::Mismatch));
        let trusting = OriginKey {
            host: true,
            scheme: true,
            host_header: Some(http::HeaderName::from_static("x-forwarded-host")),
            proto_header: Some(http::HeaderName::from_static("x-forwarded-proto")),
        };
        assert_eq!(trusting.of(&u, &h).unwrap(), "http://evil.example");
        let (u, mut h) = req("/p", "a.example", "Shop.example:443");
        h.insert("x-forwarded-proto", "HTTPS".parse().unwrap());
        assert_eq!(trusting.of(&u, &h).unwrap(), "https://shop.example");
        h.insert("x-forwarded-proto", "gopher".parse().unwrap());
        assert_eq!(trusting.of(&u, &h), Err(BadAuthority::Invalid));
        h.insert("x-forwarded-proto", "http".parse().unwrap());
        h.insert("x-forwarded-host", "shop.example/".parse().unwrap());
        assert_eq!(trusting.of(&u, &h), Err(BadAuthority::Invalid));
        let s = space();
        let k = s.entry_key_at(
            "default",
            &Method::GET,
            "http://a.example:80",
            "/products/1",
            None,
        );
        assert_eq!(k, "api:v1:default:GET:http://a.example:80 /products/1");
        assert!(s.is_under_path_prefix(&k, "/products"));
        assert!(!s.is_under_path_prefix(&k, "/orders"));
        let k = s.entry_key_at("default", &Method::GET, "//a.example", "/products/1", None);
        assert!(s.is_under_path_prefix(&k, "/products/"));
    }

    #[test]
    fn a_path_names_its_entries_for_every_host_variant_and_key_material() {
        let s = space();
        let paths = |origin: Option<&str>, query: Option<&str>| ExactPaths {
            namespaces: vec!["products".into()],
            origin: origin.map(str::to_owned),
            path: "/items/7".into(),
            queries: vec![query.map(str::to_owned)],
        };
        let at = |origin: &str, target: &str| {
            let uri: Uri = target.parse().unwrap();
            s.entry_key_at("products", &Method::GET, origin, uri.path(), uri.query())
        };
        let any = paths(None, None);
        for key in [
            at("", "/items/7"),
            at("//a.example", "/items/%37"),
            format!("{}#kx-tenant=acme", at("//b.example", "/items/7")),
            format!("{}#v0001.abc", at("", "/items/7")),
        ] {
            assert!(s.is_entry_of(&key, &any), "{key}");
        }
        for key in [
            at("", "/items/70"),
            at("", "/items/7?a=1"),
            at("", "/items/7/x"),
            s.lock_key("products", &at("", "/items/7")),
            s.entry_key("other", &Method::GET, "/items/7", None),
        ] {
            assert!(!s.is_entry_of(&key, &any), "{key}");
        }
        let one_host = paths(Some("//a.example"), Some("b=2&a=1"));
        assert!(s.is_entry_of(&at("//a.example", "/items/7?a=1&b=2"), &one_host));
        assert!(!s.is_entry_of(&at("//b.example", "/items/7?a=1&b=2"), &one_host));
        // A hashed query, with material after it.
        let long = format!("q={}", "x".repeat(600));
        let key = format!("{}#k@=1", at("", &format!("/items/7?{long}")));
        assert!(s.is_entry_of(&key, &paths(None, Some(&long))));
        // A variant's marker is not a cut path's digest.
        assert!(!s.is_under_path_prefix(&format!("{}#v1.a", at("", "/items/7")), "/items/70"));
    }

    #[test]
    fn glob_characters_are_escaped_in_patterns() {
        let p = space().prefix_pattern("/a*[b]?\\");
        assert_eq!(p, "api:v1:*:*/a\\*\\[b\\]\\?\\\\*");
    }

    #[test]
    fn components_are_validated_with_a_message() {
        assert!(KeySpace::new("", "v1")
            .unwrap_err()
            .to_string()
            .contains("prefix is empty"));
        let e = KeySpace::new("api", "v 1").unwrap_err().to_string();
        assert!(e.contains("version"), "{e}");
        assert!(KeySpace::new("a:b", "v1").is_err());
        assert!(KeySpace::new("a*", "v1").is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use http::Uri;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Whatever a client sends, the key is well formed, bounded, and starts
        /// with the layer's own parts.
        #[test]
        fn any_request_target_gives_a_bounded_key(target in "/[ -~]{0,1500}") {
            let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
            let s = KeySpace::new("api", "v1").unwrap();
            let k = s.entry_key("ns", &Method::GET, uri.path(), uri.query());
            prop_assert!(k.starts_with("api:v1:ns:GET:/"));
            prop_assert!(k.len() <= "api:v1:ns:GET:".len() + READABLE_LIMIT + 2 + 32);
            prop_assert!(s.is_under_path_prefix(&k, "/"));
            prop_assert!(s.is_under_path_prefix(&k, &normalize_percent(uri.path())));
            let q = uri.query().map(normalize_query);
            let again = s.entry_key("ns", &Method::GET, uri.path(), q.as_deref());
            prop_assert_eq!(k, again, "normalizing is idempotent");
        }

        /// Two requests share a key only if their paths are equal and their
        /// queries are the same parameters in another order.
        #[test]
        fn distinct_targets_give_distinct_keys(a in "/[a-c/]{0,6}(\\?[a-c=&]{0,8})?", b in "/[a-c/]{0,6}(\\?[a-c=&]{0,8})?") {
            let (ua, ub) = (a.parse::<Uri>().unwrap(), b.parse::<Uri>().unwrap());
            let s = KeySpace::new("api", "v1").unwrap();
            let ka = s.entry_key("ns", &Method::GET, ua.path(), ua.query());
            let kb = s.entry_key("ns", &Method::GET, ub.path(), ub.query());
            let norm = |u: &Uri| u.query().map(|q| normalize_query(q).into_owned()).unwrap_or_default();
            prop_assert_eq!(ka == kb, ua.path() == ub.path() && norm(&ua) == norm(&ub));
        }

        /// Two queries share a key only when every way an origin may read
        /// them (percent-encodings of reserved characters decoded or not,
        /// `+` as a space or not, names case-sensitive or not) gives the same
        /// values in the same order for every name.
        #[test]
        fn queries_share_a_key_only_when_every_origin_reads_them_alike(
            a in "(a|A|%61|%41|b|\\+|%20|%2B|\\[|%5B|=|1|2|&){0,10}",
            b in "(a|A|%61|%41|b|\\+|%20|%2B|\\[|%5B|=|1|2|&){0,10}",
        ) {
            let s = KeySpace::new("api", "v1").unwrap();
            let ka = s.entry_key("ns", &Method::GET, "/p", Some(&a));
            let kb = s.entry_key("ns", &Method::GET, "/p", Some(&b));
            if ka == kb {
                for decode in [false, true] {
                    for plus in [false, true] {
                        for fold in [false, true] {
                            prop_assert_eq!(
                                read(&a, decode, plus, fold),
                                read(&b, decode, plus, fold),
                                "{} and {} share a key", a, b
                            );
                        }
                    }
                }
            }
        }

        /// A glob-escaped string, used as a pattern, matches only itself.
        #[test]
        fn escaped_patterns_match_only_themselves(s in "[ -~]{0,20}", other in "[ -~]{0,20}") {
            let pattern = glob_escape(&s);
            prop_assert!(glob_match(&pattern, &s));
            prop_assert_eq!(glob_match(&pattern, &other), s == other);
        }
    }

    /// How one kind of origin reads a query: each name's values, in order.
    fn read(query: &str, decode: bool, plus: bool, fold: bool) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        let dec = |s: &str| -> Vec<u8> {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                // An encoded unreserved character is that character for
                // every origin (RFC 3986 §2.3); the rest only for those that
                // decode.
                let unreserved = |v: u8| v.is_ascii_alphanumeric() || b"-._~".contains(&v);
                match escape_at(b, i).filter(|v| decode || unreserved(*v)) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    _ => {
                        out.push(if plus && b[i] == b'+' { b' ' } else { b[i] });
                        i += 1;
                    }
                }
            }
            out
        };
        let mut names: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
        for p in query.split('&').filter(|p| !p.is_empty()) {
            let (n, v) = p.split_once('=').map_or((p, None), |(n, v)| (n, Some(v)));
            let mut n = dec(n);
            if fold {
                n.make_ascii_lowercase();
            }
            let v = v.map_or(b"\x00".to_vec(), dec);
            match names.iter_mut().find(|(k, _)| *k == n) {
                Some((_, vs)) => vs.push(v),
                None => names.push((n, vec![v])),
            }
        }
        names.sort();
        names
    }

    /// Redis's glob rules (`*`, `?`, `[...]`, `\` escapes), enough to check
    /// escaping.
    fn glob_match(pattern: &str, s: &str) -> bool {
        let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
        fn go(p: &[char], s: &[char]) -> bool {
            match p.first() {
                None => s.is_empty(),
                Some('*') => (0..=s.len()).any(|i| go(&p[1..], &s[i..])),
                Some('?') => !s.is_empty() && go(&p[1..], &s[1..]),
                Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && go(&p[2..], &s[1..]),
                Some('[') => {
                    let Some(end) = p.iter().position(|c| *c == ']') else {
                        return s.first() == Some(&'[') && go(&p[1..], &s[1..]);
                    };
                    !s.is_empty() && p[1..end].contains(&s[0]) && go(&p[end + 1..], &s[1..])
                }
                Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
            }
        }
        go(&p, &s)
    }
}
