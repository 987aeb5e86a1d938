//! `Vary` (RFC 9111 §4.1): which request headers select a stored response,
//! and the variant a request selects.

use http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::entry::Entry;

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
    crate::hex::push(&mut id, &digest[..12]);
    id
}
/// Whether the stored `entry` answers a request with these headers (RFC
/// 9111 §4.1, §3.5): not a `Vary` marker, the variant the request selects,
/// and, when `shared_only` (the request carries credentials the route does
/// not open itself to), a response that allows sharing.
pub(crate) fn selects(entry: &Entry, headers: &HeaderMap, shared_only: bool) -> bool {
    if entry.marker.is_some() || (shared_only && !entry.shared) {
        return false;
    }
    match &entry.variant {
        None => true,
        Some(id) => match vary(&entry.headers) {
            Vary::Headers(names) => *variant_id(headers, &names) == **id,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers::with;

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
}
