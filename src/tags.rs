//! Tags (surrogate keys): names attached to entries so that one call drops
//! every entry carrying a name, whatever its URL.
//!
//! An entry's tags come from the route policy ([`CachePolicy::tags`]), from
//! response headers (`cache-tag` and `surrogate-key` by default, removed
//! before the response leaves the layer), or from a [`CacheTags`] response
//! extension set by the handler.
//!
//! [`CachePolicy::tags`]: crate::CachePolicy::tags

use std::sync::Arc;

use http::{response::Parts, HeaderName, Uri};

/// Tags for the entry of this response, set by a handler as a response
/// extension (it never reaches the client).
///
/// ```
/// use axum::{response::IntoResponse, Extension};
/// use tower_redis_cache::CacheTags;
///
/// async fn product() -> impl IntoResponse {
///     (Extension(CacheTags::new(["product:7", "category:books"])), "a product")
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTags(pub Vec<String>);

impl CacheTags {
    /// Tags from anything that yields strings.
    pub fn new<I, T>(tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self(tags.into_iter().map(Into::into).collect())
    }
}

/// The signature of a route's tag function.
type TagFn = dyn Fn(&Uri, &Parts) -> Vec<String> + Send + Sync;

/// A route's tag function: the request URI and the response head in, tags out.
#[derive(Clone)]
pub(crate) struct Tagger(pub(crate) Arc<TagFn>);

impl std::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tagger(..)")
    }
}

/// The longest tag kept; longer ones are dropped.
const MAX_TAG_LEN: usize = 256;

/// Removes the tag headers and the [`CacheTags`] extension from a response
/// that is not stored: tags are for the cache, never for the client.
pub(crate) fn strip_tags(headers: &[HeaderName], parts: &mut Parts) {
    for name in headers {
        parts.headers.remove(name);
    }
    parts.extensions.remove::<CacheTags>();
}

/// Collects the tags of a response and removes the tag headers and the
/// [`CacheTags`] extension from it (they are for the cache, not the client).
/// Tags that are empty, too long or hold control characters are dropped.
pub(crate) fn take_tags(
    headers_to_read: &[HeaderName],
    tagger: Option<&Tagger>,
    uri: Option<&Uri>,
    parts: &mut Parts,
) -> Vec<String> {
    let mut tags = Vec::new();
    for name in headers_to_read {
        if !parts.headers.contains_key(name) {
            continue;
        }
        for value in parts.headers.get_all(name) {
            if let Ok(v) = value.to_str() {
                tags.extend(
                    v.split([',', ' '])
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        parts.headers.remove(name);
    }
    if let Some(CacheTags(more)) = parts.extensions.remove::<CacheTags>() {
        tags.extend(more);
    }
    if let (Some(tagger), Some(uri)) = (tagger, uri) {
        tags.extend((tagger.0)(uri, parts));
    }
    tags.retain(|t| {
        let ok = !t.is_empty() && t.len() <= MAX_TAG_LEN && !t.chars().any(char::is_control);
        if !ok {
            tracing::debug!(tag = %t.escape_debug(), "tag dropped: empty, too long or not printable");
        }
        ok
    });
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Response};

    use super::*;

    #[test]
    fn tags_come_from_headers_extension_and_policy_and_leave_the_response() {
        let mut res = Response::new(());
        res.headers_mut()
            .append("cache-tag", HeaderValue::from_static("a, b"));
        res.headers_mut()
            .append("cache-tag", HeaderValue::from_static("c"));
        res.headers_mut()
            .insert("surrogate-key", HeaderValue::from_static("d e"));
        res.extensions_mut().insert(CacheTags::new(["f", "a"]));
        let (mut parts, ()) = res.into_parts();
        let tagger = Tagger(Arc::new(|uri: &Uri, p: &Parts| {
            vec![
                format!("path:{}", uri.path()),
                format!("status:{}", p.status.as_u16()),
            ]
        }));
        let names = [
            HeaderName::from_static("cache-tag"),
            HeaderName::from_static("surrogate-key"),
        ];
        let tags = take_tags(
            &names,
            Some(&tagger),
            Some(&Uri::from_static("/x")),
            &mut parts,
        );
        assert_eq!(
            tags,
            ["a", "b", "c", "d", "e", "f", "path:/x", "status:200"]
        );
        assert!(parts.headers.is_empty());
        assert!(parts.extensions.get::<CacheTags>().is_none());
    }

    #[test]
    fn bad_tags_are_dropped() {
        let mut res = Response::new(());
        res.extensions_mut().insert(CacheTags::new([
            "ok",
            "",
            "x".repeat(300).as_str(),
            "a\u{7}",
        ]));
        let (mut parts, ()) = res.into_parts();
        assert_eq!(take_tags(&[], None, None, &mut parts), ["ok"]);
    }
}
