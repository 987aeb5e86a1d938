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
/// share a variant when their values are equal after normalisation (RFC
/// 9111 §4.1): lines joined with `,` and whitespace around list items
/// dropped for every field; for `Accept`, `Accept-Language` and
/// `Accept-Encoding`, also case and the whitespace inside an item (outside
/// quoted strings); and for `Accept-Encoding` alone the order of its items,
/// which carries no preference there (RFC 9110 §12.5.3; in `Accept` and
/// `Accept-Language` it can, §12.5.4). An absent header differs from an
/// empty one.
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
        let items = values.flat_map(|v| v.as_bytes().split(|b| *b == b','));
        match Normalise::of(name) {
            Normalise::Trim => hash_items(&mut hash, items.map(<[u8]>::trim_ascii)),
            Normalise::Case => hash_items(&mut hash, items.map(folded)),
            Normalise::CaseAndOrder => {
                let mut items: Vec<Vec<u8>> = items.map(folded).collect();
                items.sort_unstable();
                hash_items(&mut hash, items);
            }
        }
        hash.update(b"\x00");
    }
    let digest = hash.finalize();
    let mut id = String::with_capacity(24);
    crate::hex::push(&mut id, &digest[..12]);
    id
}

/// How much of a field's value may differ and still select the same variant.
enum Normalise {
    /// Whitespace around list items.
    Trim,
    /// Also case, and whitespace inside items.
    Case,
    /// Also the order of the items.
    CaseAndOrder,
}

impl Normalise {
    fn of(name: &str) -> Self {
        match name {
            "accept-encoding" => Self::CaseAndOrder,
            "accept" | "accept-language" => Self::Case,
            _ => Self::Trim,
        }
    }
}

fn hash_items<I: AsRef<[u8]>>(hash: &mut Sha256, items: impl IntoIterator<Item = I>) {
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            hash.update(b",");
        }
        hash.update(item.as_ref());
    }
}

/// A list item in lower case without whitespace, except inside quoted
/// strings, which are kept as they are.
fn folded(item: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(item.len());
    let (mut quoted, mut escaped) = (false, false);
    for &b in item {
        if quoted {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'"' {
            quoted = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b.to_ascii_lowercase());
        }
    }
    out
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

    #[test]
    fn rfc9111_4_1_accept_encoding_differing_in_order_case_or_space_selects_one_variant() {
        let names = vec!["accept-encoding".to_owned()];
        let id = |v: &'static str| variant_id(&with(&[("accept-encoding", v)]), &names);
        let gzip_br = id("gzip, br");
        for same in ["br, gzip", "GZIP,BR", " br ,  Gzip ", "br,gzip"] {
            assert_eq!(id(same), gzip_br, "{same}");
        }
        assert_eq!(id("gzip;q=1.0, br"), id("br, gzip ; q=1.0"));
        assert_ne!(id("gzip"), gzip_br);
        assert_ne!(id("gzip;q=0, br"), gzip_br);
    }

    #[test]
    fn rfc9110_12_5_4_accept_and_accept_language_keep_their_order() {
        for name in ["accept", "accept-language"] {
            let name: &'static str = name;
            let names = vec![name.to_owned()];
            let id = |v: &'static str| variant_id(&with(&[(name, v)]), &names);
            assert_eq!(id("en-GB, fr;q=0.5"), id("EN-gb ,FR; Q=0.5"), "{name}");
            assert_ne!(id("en, fr"), id("fr, en"), "{name}");
        }
        // A quoted string is kept as it is.
        let names = vec!["accept".to_owned()];
        let id = |v: &'static str| variant_id(&with(&[("accept", v)]), &names);
        assert_ne!(id("text/x;p=\"A b\""), id("text/x;p=\"ab\""));
        // Other fields keep their case.
        let names = vec!["x-tenant".to_owned()];
        let id = |v: &'static str| variant_id(&with(&[("x-tenant", v)]), &names);
        assert_ne!(id("Acme"), id("acme"));
    }
}
