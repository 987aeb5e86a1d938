//! Invalidation after an unsafe request (RFC 9111 §4.4): the `Location` and
//! `Content-Location` of a successful response invalidate their URIs when
//! they name the same origin.

/// `reference` (a `Location` or `Content-Location` value) resolved against
/// the request (its normalized `authority`, its `path`), when it points at
/// the same origin.
pub(crate) fn same_origin(
    reference: &str,
    authority: Option<&str>,
    path: &str,
) -> Option<http::Uri> {
    let uri: http::Uri = reference.trim().parse().ok()?;
    if let Some(theirs) = uri.authority() {
        let ours = authority?;
        let scheme = uri.scheme_str().unwrap_or("http");
        let theirs = crate::authority::normalize(theirs.as_str(), scheme).ok()?;
        return (theirs == ours).then_some(uri);
    }
    let target = uri.path();
    if target.starts_with('/') {
        return Some(uri);
    }
    // A relative reference: against the request path's directory.
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let resolved = match uri.query() {
        Some(q) => format!("{dir}{target}?{q}"),
        None => format!("{dir}{target}"),
    };
    resolved.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn rfc9111_4_4_only_same_origin_references_are_invalidated() {
        let ours = Some("shop.example");
        let at = |r: &str| same_origin(r, ours, "/products/7").map(|u| u.to_string());
        assert_eq!(at("/products/8").as_deref(), Some("/products/8"));
        assert_eq!(
            at("http://SHOP.example:80/x").as_deref(),
            Some("http://SHOP.example:80/x")
        );
        assert_eq!(at("http://other.example/x"), None);
        assert_eq!(same_origin("http://shop.example/x", None, "/"), None);
    }
}
