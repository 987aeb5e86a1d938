//! Content coding (RFC 9110 §8.4, §12.5.3): which responses the cache may
//! store gzip-compressed, which clients accept gzip, and the fields of the
//! two representations of such an entry: the stored bytes with
//! `Content-Encoding: gzip`, or the body as the origin sent it.

use http::{header, HeaderMap, HeaderValue};

/// Integrity fields that describe the bytes as the origin sent them
/// (RFC 9530 and its predecessors): a response carrying one is stored as
/// sent, so every representation served matches its digest.
const DIGESTS: [&str; 4] = ["content-digest", "repr-digest", "digest", "content-md5"];

/// Whether a response may be stored gzip-compressed: it has no content
/// coding of its own, is not a part, carries no digest of its bytes, its
/// type is one that compresses, and its `Cache-Control` does not say
/// `no-transform` (RFC 9111 §5.2.2.6; the caller checks the directives
/// the cache obeys, which may come from a targeted field).
pub(crate) fn may_compress(headers: &HeaderMap) -> bool {
    let identity = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .all(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    identity
        && !headers.contains_key(header::CONTENT_RANGE)
        && !DIGESTS.iter().any(|d| headers.contains_key(*d))
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(compressible_type)
        && !super::CacheControl::parse(headers).no_transform
}

/// Media types that are text, or text in structure (JSON, XML, JavaScript,
/// SVG, NDJSON, WebAssembly), by their type and subtype (parameters
/// ignored). Images, audio, video, archives and fonts other than SVG are
/// compressed already.
pub(crate) fn compressible_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    match kind {
        "text" => true,
        "application" => {
            matches!(
                sub,
                "json"
                    | "javascript"
                    | "ecmascript"
                    | "xml"
                    | "x-ndjson"
                    | "ndjson"
                    | "wasm"
                    | "x-www-form-urlencoded"
                    | "graphql"
                    | "problem+json"
                    | "geo+json"
                    | "manifest+json"
            ) || sub.ends_with("+json")
                || sub.ends_with("+xml")
        }
        "image" => sub == "svg+xml",
        _ => false,
    }
}

/// Whether the request's `Accept-Encoding` accepts gzip (RFC 9110 §12.5.3):
/// `gzip` or `x-gzip` with a weight above zero, or `*` above zero with gzip
/// not refused by name. No field, or an empty one, asks for the body as
/// it is.
pub(crate) fn accepts_gzip(request: &HeaderMap) -> bool {
    let mut star = false;
    for line in request.get_all(header::ACCEPT_ENCODING) {
        let Ok(line) = line.to_str() else {
            continue;
        };
        for item in line.split(',') {
            let mut params = item.split(';');
            let coding = params.next().unwrap_or_default().trim();
            let weight = params
                .filter_map(|p| p.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, q)| q.trim().parse::<f32>().unwrap_or(0.0));
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                return weight > 0.0;
            }
            if coding == "*" {
                star = weight > 0.0;
            }
        }
    }
    star
}

/// The suffix that marks the entity tag of the gzip representation, before
/// the eight hex digits of the member's id.
const SUFFIX: &str = "-gzip-";

/// The entity tag of the gzip representation of a stored response whose tag
/// is `etag`, for the stored member `id` names
/// ([`member_id`](crate::gzip::member_id)): the same opaque tag with
/// `-gzip-` and the id inside the quotes, keeping weakness (as Apache
/// httpd's mod_deflate adds `-gzip`). It is strong when the origin's is:
/// it names these bytes, and another encoding of the same response gets
/// another tag. `None` for a value that is not an entity tag.
pub(crate) fn coded_etag(etag: &HeaderValue, id: u32) -> Option<HeaderValue> {
    let (weak, inner) = split_tag(etag.to_str().ok()?)?;
    HeaderValue::try_from(format!("{weak}\"{inner}{SUFFIX}{id:08x}\"")).ok()
}

/// An entity tag's weakness prefix (`W/` or nothing) and its opaque part
/// without the quotes; `None` for a value that is not an entity tag.
fn split_tag(tag: &str) -> Option<(&str, &str)> {
    let tag = tag.trim();
    let (weak, opaque) = match tag.strip_prefix("W/") {
        Some(rest) => ("W/", rest),
        None => ("", tag),
    };
    Some((weak, opaque.strip_prefix('"')?.strip_suffix('"')?))
}

/// The stored tag a client's tag for the gzip representation stands for:
/// `"x-gzip-0123abcd"` gives `"x"` (weakness kept); `None` when it has no
/// such suffix.
pub(crate) fn uncoded_tag(tag: &str) -> Option<String> {
    let (weak, inner) = split_tag(tag)?;
    let (stored, id) = inner.split_at_checked(inner.len().checked_sub(8)?)?;
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let stored = stored.strip_suffix(SUFFIX)?;
    Some(format!("{weak}\"{stored}\""))
}

/// A request's `If-None-Match` with each tag of the gzip representation
/// followed by the stored tag it stands for, so the origin, which knows
/// only its own tags, can match them: the representations of one stored
/// response have the same content, so a `304` for either tells the client
/// that what it holds is current. (`If-Range` is never mapped: a part of
/// one representation does not complete the other.)
pub(crate) fn map_back_tags(request: &mut HeaderMap) {
    let Some(line) = joined(request, header::IF_NONE_MATCH) else {
        return;
    };
    let mut tags: Vec<String> = Vec::new();
    for tag in line.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        tags.push(tag.to_owned());
        if let Some(stored) = uncoded_tag(tag) {
            tags.push(stored);
        }
    }
    if let Ok(value) = HeaderValue::try_from(tags.join(", ")) {
        request.insert(header::IF_NONE_MATCH, value);
    }
}

/// The tag a `304` the origin sent for a mapped `If-None-Match` (see
/// [`map_back_tags`]) should carry for the client: the gzip
/// representation's tag the client sent for the origin's `etag`, when it
/// sent that one and not the origin's.
pub(crate) fn recoded_304_tag(sent: &HeaderMap, etag: &HeaderValue) -> Option<HeaderValue> {
    let origin = etag.to_str().ok()?.trim();
    let line = joined(sent, header::IF_NONE_MATCH)?;
    let tags = || line.split(',').map(str::trim);
    if tags().any(|t| t == origin) {
        return None;
    }
    let coded = tags().find(|t| uncoded_tag(t).as_deref() == Some(origin))?;
    HeaderValue::try_from(coded).ok()
}

fn joined(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// Adds `Accept-Encoding` to the response's `Vary` (RFC 9110 §12.5.5): a
/// response whose coding depends on the request's says so. Nothing changes
/// when `Vary` already names it or is `*`.
pub(crate) fn vary_on_accept_encoding(headers: &mut HeaderMap) {
    let named = headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|n| {
            let n = n.trim_ascii();
            n == b"*" || n.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !named {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers::with;

    #[test]
    fn rfc9110_12_5_3_gzip_is_accepted_by_name_or_by_star_above_zero() {
        let accepts = |v: &'static str| accepts_gzip(&with(&[("accept-encoding", v)]));
        assert!(accepts("gzip"));
        assert!(accepts("br, gzip;q=0.5"));
        assert!(accepts("GZIP"));
        assert!(accepts("x-gzip"));
        assert!(accepts("deflate, *"));
        assert!(accepts("gzip ; q=1.0"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip;q=0.000"));
        assert!(!accepts("*, gzip;q=0"));
        assert!(!accepts("gzip;q=0, *"));
        assert!(!accepts("identity"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts(""));
        assert!(!accepts("gzip;q=nonsense"));
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(accepts_gzip(&with(&[
            ("accept-encoding", "br"),
            ("accept-encoding", "gzip")
        ])));
    }

    #[test]
    fn text_types_compress_and_coded_or_partial_or_no_transform_bodies_do_not() {
        let may = |pairs: &[(&'static str, &'static str)]| may_compress(&with(pairs));
        assert!(may(&[("content-type", "application/json")]));
        assert!(may(&[("content-type", "Application/JSON; charset=utf-8")]));
        assert!(may(&[("content-type", "text/html")]));
        assert!(may(&[("content-type", "application/ld+json")]));
        assert!(may(&[("content-type", "image/svg+xml")]));
        assert!(may(&[
            ("content-type", "text/plain"),
            ("content-encoding", "identity")
        ]));
        assert!(!may(&[("content-type", "image/png")]));
        assert!(!may(&[("content-type", "application/octet-stream")]));
        assert!(!may(&[("content-type", "application/zip")]));
        assert!(!may(&[]));
        assert!(!may(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip")
        ]));
        assert!(!may(&[
            ("content-type", "application/json"),
            ("content-encoding", "br")
        ]));
        assert!(!may(&[
            ("content-type", "application/json"),
            ("content-range", "bytes 0-1/2")
        ]));
        assert!(!may(&[
            ("content-type", "application/json"),
            ("cache-control", "max-age=60, No-Transform")
        ]));
        for digest in ["content-digest", "repr-digest", "digest", "content-md5"] {
            assert!(!may(&[("content-type", "application/json"), (digest, "x")]));
        }
    }

    #[test]
    fn the_gzip_representation_has_its_own_tag_that_maps_back() {
        let tag = |v: &'static str| coded_etag(&HeaderValue::from_static(v), 0xab);
        assert_eq!(tag("\"abc\"").unwrap(), "\"abc-gzip-000000ab\"");
        assert_eq!(tag("W/\"abc\"").unwrap(), "W/\"abc-gzip-000000ab\"");
        assert_eq!(tag("\"\"").unwrap(), "\"-gzip-000000ab\"");
        assert!(tag("abc").is_none());
        assert_eq!(uncoded_tag("\"abc-gzip-0123abcd\"").unwrap(), "\"abc\"");
        assert_eq!(uncoded_tag("W/\"abc-gzip-0123abcd\"").unwrap(), "W/\"abc\"");
        assert_eq!(uncoded_tag("\"abc\""), None);
        assert_eq!(uncoded_tag("\"abc-gzip\""), None);
        assert_eq!(uncoded_tag("\"abc-gzip-0123abcx\""), None);
        assert_eq!(uncoded_tag("\"é-gzip-0123abcd\"").unwrap(), "\"é\"");
        let mut request = with(&[
            ("if-none-match", "\"a-gzip-00000001\", \"b\""),
            ("if-none-match", "W/\"c-gzip-00000002\""),
        ]);
        map_back_tags(&mut request);
        assert_eq!(
            request.get(header::IF_NONE_MATCH).unwrap(),
            "\"a-gzip-00000001\", \"a\", \"b\", W/\"c-gzip-00000002\", W/\"c\""
        );
        let sent = with(&[("if-none-match", "\"a-gzip-00000001\"")]);
        let recoded = recoded_304_tag(&sent, &HeaderValue::from_static("\"a\""));
        assert_eq!(recoded.unwrap(), "\"a-gzip-00000001\"");
        let sent = with(&[("if-none-match", "\"a-gzip-00000001\", \"a\"")]);
        assert!(recoded_304_tag(&sent, &HeaderValue::from_static("\"a\"")).is_none());
    }

    #[test]
    fn rfc9110_12_5_5_vary_names_accept_encoding_once() {
        let mut h = with(&[("vary", "Origin")]);
        vary_on_accept_encoding(&mut h);
        vary_on_accept_encoding(&mut h);
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Origin", "accept-encoding"]);
        let mut h = with(&[("vary", "Origin, Accept-Encoding")]);
        vary_on_accept_encoding(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        let mut h = with(&[("vary", "*")]);
        vary_on_accept_encoding(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
    }
}
