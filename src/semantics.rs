//! The HTTP rules the layer applies, in one place: which requests may use the
//! cache and which responses may be stored.

use http::{header, HeaderMap};

/// Whether a `Cache-Control` header in `headers` carries `directive`
/// (case-insensitive, with or without a `=value`).
pub(crate) fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.split('=').next().unwrap_or("").trim())
        .any(|d| d.eq_ignore_ascii_case(directive))
}

/// Why a response is not stored even though its route and status allow it.
/// `None` means it may be stored.
pub(crate) fn refuse_to_store(headers: &HeaderMap) -> Option<&'static str> {
    if headers.contains_key(header::SET_COOKIE) {
        Some("response sets a cookie")
    } else if has_directive(headers, "no-store") {
        Some("response says no-store")
    } else if has_directive(headers, "private") {
        Some("response is private")
    } else if headers.contains_key(header::VARY) {
        // Variants selected by request headers are not supported yet: serving
        // one variant for every request would be wrong, so such responses pass.
        Some("response varies by request headers")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn directives_are_found_in_lists_and_any_case() {
        let h = with(header::CACHE_CONTROL, "max-age=60, No-Store");
        assert!(has_directive(&h, "no-store"));
        assert!(has_directive(&h, "max-age"));
        assert!(!has_directive(&h, "no-cache"));
        assert!(!has_directive(&HeaderMap::new(), "no-store"));
    }

    #[test]
    fn unsafe_responses_are_refused() {
        assert!(refuse_to_store(&with(header::SET_COOKIE, "a=b")).is_some());
        assert!(refuse_to_store(&with(header::CACHE_CONTROL, "private, max-age=9")).is_some());
        assert!(refuse_to_store(&with(header::CACHE_CONTROL, "no-store")).is_some());
        assert!(refuse_to_store(&with(header::VARY, "accept-language")).is_some());
        assert!(refuse_to_store(&with(header::CACHE_CONTROL, "public, max-age=9")).is_none());
    }
}
