//! The request fields the cache acts on, and the fields that belong to one
//! connection (RFC 9110 §7.6.1).

use http::{header, HeaderMap, HeaderName};

/// The request fields the cache acts on, found in one pass over the
/// request's field names: cheaper than a hash lookup for each of them, and
/// nearly free for the few fields most requests carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestFields {
    /// A precondition meant for the origin (`If-Match`,
    /// `If-Unmodified-Since`): the cache does not answer it.
    pub(crate) passes_through: bool,
    /// `Range` or `If-Range`: the cache answers the range from the complete
    /// response (see [`take_range`](super::take_range)).
    pub(crate) range: bool,
    /// `Cache-Control` or `Pragma`: request directives to parse.
    pub(crate) directives: bool,
    pub(crate) authorization: bool,
    pub(crate) cookie: bool,
    /// `If-None-Match` or `If-Modified-Since`: a conditional the cache
    /// answers itself.
    pub(crate) conditional: bool,
    /// `Accept-Encoding`: whether it accepts gzip is read when planned.
    pub(crate) accept_encoding: bool,
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
        } else if name == header::RANGE || name == header::IF_RANGE {
            self.range = true;
        } else if name == header::IF_MATCH || name == header::IF_UNMODIFIED_SINCE {
            self.passes_through = true;
        } else if name == header::ACCEPT_ENCODING {
            self.accept_encoding = true;
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
#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
            ("Accept-Encoding", "gzip"),
        ]);
        assert_eq!(
            all,
            RequestFields {
                passes_through: false,
                range: true,
                directives: true,
                authorization: true,
                cookie: true,
                conditional: true,
                accept_encoding: true,
            }
        );
        assert!(scan(&[("pragma", "no-cache")]).directives);
        assert!(scan(&[("if-modified-since", "x")]).conditional);
        assert!(scan(&[("if-range", "x")]).range);
        for precondition in ["if-match", "if-unmodified-since"] {
            assert!(
                scan(&[(precondition, "x")]).passes_through,
                "{precondition}"
            );
        }
    }
}
