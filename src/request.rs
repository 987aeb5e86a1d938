//! What the layer takes out of, or refuses in, a request before it keys it:
//! the fields that describe one connection, and requests whose response
//! depends on more than the key says.
//!
//! An origin must never see an input that the key ignores but that changes
//! the response, or one client could store what every other client is
//! served under the same key.

use http::{header, HeaderMap, HeaderName};

use crate::http::RequestFields;

/// What one pass over a request's fields found: the checks the layer makes
/// on every request, for the price of one walk over its field names.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestChecks {
    /// `Upgrade` (such as a WebSocket handshake): the request passes
    /// through untouched. Its `Connection: upgrade` is meant for the server
    /// that answers it, and its response is never stored.
    pub(crate) upgrade: bool,
    /// `Connection`, `Keep-Alive` or `Proxy-Connection`: fields to remove
    /// (see [`strip_connection_fields`]).
    pub(crate) connection: bool,
    /// Why a `GET` or `HEAD` must not be answered from, or stored in, the
    /// cache, whatever its route says:
    ///
    /// - a body (`Content-Length` above 0, or any `Transfer-Encoding`): an
    ///   origin that reads it could answer differently for the same key;
    /// - a method-override field (`X-HTTP-Method-Override`, `X-HTTP-Method`,
    ///   `X-Method-Override`): frameworks that honour them run another
    ///   method than the key says.
    pub(crate) refused: Option<&'static str>,
    /// The fields HTTP caching acts on (directives, `Authorization`,
    /// `Cookie`, conditionals), found in the same walk.
    pub(crate) http: RequestFields,
}

impl RequestChecks {
    pub(crate) fn scan(headers: &HeaderMap) -> Self {
        let mut fields = Self::default();
        for (name, value) in headers {
            if name == header::UPGRADE {
                fields.upgrade = true;
            } else if name == header::CONNECTION {
                fields.connection = true;
            } else if name == header::CONTENT_LENGTH {
                if value.as_bytes().iter().any(|b| *b != b'0') {
                    fields.refused = Some("a GET or HEAD with a body");
                }
            } else if name == header::TRANSFER_ENCODING {
                fields.refused = Some("a GET or HEAD with a body");
            } else {
                fields.http.note(name);
                match name.as_str() {
                    "keep-alive" | "proxy-connection" => fields.connection = true,
                    "x-http-method-override" | "x-http-method" | "x-method-override" => {
                        fields.refused = Some("a method-override field");
                    }
                    _ => {}
                }
            }
        }
        fields
    }
}

/// Removes `Connection` and every field it names (RFC 9110 §7.6.1), and
/// `Keep-Alive` and `Proxy-Connection`: they describe the client's
/// connection, not the request. Removed before the key, the `Vary` variant
/// and the service see the request, so a client cannot make the key or the
/// variant depend on a field the service never reads (`Connection: host`,
/// or `Connection: accept-language` on a route that varies on it).
/// `Content-Length` and `Transfer-Encoding` stay even when named: they
/// frame a body the service still reads, and hiding them would hide that
/// body from [`RequestChecks::refused`].
pub(crate) fn strip_connection_fields(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case("close"))
        .filter(|n| {
            !["content-length", "transfer-encoding"]
                .iter()
                .any(|f| n.eq_ignore_ascii_case(f))
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn rfc9110_7_6_1_connection_and_the_fields_it_names_are_removed() {
        let mut h = headers(&[
            ("connection", "Host, accept-language"),
            ("connection", "keep-alive, close"),
            ("host", "victim.example"),
            ("accept-language", "fr"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("accept", "text/html"),
        ]);
        strip_connection_fields(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn bodies_and_method_overrides_are_refused() {
        assert_eq!(
            RequestChecks::scan(&headers(&[("content-length", "0")])).refused,
            None
        );
        assert_eq!(
            RequestChecks::scan(&headers(&[("content-length", "00")])).refused,
            None
        );
        assert!(RequestChecks::scan(&headers(&[("content-length", "5")]))
            .refused
            .is_some());
        assert!(RequestChecks::scan(&headers(&[("content-length", "x")]))
            .refused
            .is_some());
        assert!(
            RequestChecks::scan(&headers(&[("transfer-encoding", "chunked")]))
                .refused
                .is_some()
        );
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
        ] {
            assert!(
                RequestChecks::scan(&headers(&[(name, "DELETE")]))
                    .refused
                    .is_some(),
                "{name}"
            );
        }
        assert_eq!(
            RequestChecks::scan(&headers(&[("accept", "*/*")])),
            RequestChecks::default()
        );
    }
}
