//! The request's authority (`host[:port]`), as the cache keys it.
//!
//! A shared cache that keys the host must key exactly the host the origin
//! will read, or one client can store a page under another host's key. The
//! rules, in [`request_authority`]:
//!
//! - the target's authority (an absolute-form request target, HTTP/2
//!   `:authority`) when there is one, else the single `Host` field;
//! - lower-cased, with the scheme's default port (`80` for `http`, `443` for
//!   `https`) and an empty port removed, and an IPv6 literal in its one
//!   canonical spelling (RFC 5952: `[0:0::1]` is `[::1]`);
//! - refused, never repaired: no authority at all, several `Host` fields, a
//!   value that is not a valid `host[:port]` (user information, characters
//!   outside a DNS name or an IP address, a bad port, an IPv6 literal that
//!   does not parse), or a target authority that disagrees with `Host`.
//!
//! The layer passes a refused request through uncached; the reverse proxy
//! example answers it `400 Bad Request`.

use std::{fmt, net::Ipv6Addr};

use http::{header, HeaderMap, HeaderName, Uri};

/// Why a request's authority cannot be keyed (see [`request_authority`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadAuthority {
    /// Neither the target nor a `Host` field names an authority.
    Missing,
    /// The request carries more than one `Host` field (or more than one
    /// value of the trusted forwarding header).
    SeveralHosts,
    /// The authority is not a valid `host[:port]`.
    Invalid,
    /// The target's authority and the `Host` field name different
    /// authorities: the origin may read either.
    Mismatch,
}

impl fmt::Display for BadAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "the request names no host",
            Self::SeveralHosts => "the request carries several Host fields",
            Self::Invalid => "the request's host is not a valid host[:port]",
            Self::Mismatch => "the request target's host and the Host field disagree",
        })
    }
}

impl std::error::Error for BadAuthority {}

/// The authority a request is for, normalised as the cache keys it:
/// `host` or `host:port`, lower case, without the default port of `scheme`
/// (`"http"` or `"https"`; any other scheme keeps every port).
///
/// ```
/// use http::{header::HOST, Request};
/// use tower_redis_cache::{request_authority, BadAuthority};
///
/// let req = Request::get("/x").header(HOST, "Shop.Example:80").body(()).unwrap();
/// assert_eq!(request_authority(req.uri(), req.headers(), "http").unwrap(), "shop.example");
///
/// let req = Request::get("http://victim.example/x")
///     .header(HOST, "evil.example")
///     .body(())
///     .unwrap();
/// assert_eq!(
///     request_authority(req.uri(), req.headers(), "http"),
///     Err(BadAuthority::Mismatch)
/// );
/// ```
pub fn request_authority(
    uri: &Uri,
    headers: &HeaderMap,
    scheme: &str,
) -> Result<String, BadAuthority> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadAuthority::SeveralHosts);
    }
    let host = host
        .map(|v| normalize(v.to_str().map_err(|_| BadAuthority::Invalid)?, scheme))
        .transpose()?;
    match (uri.authority(), host) {
        (Some(target), host) => {
            let target = normalize(target.as_str(), scheme)?;
            match host {
                Some(host) if host != target => Err(BadAuthority::Mismatch),
                _ => Ok(target),
            }
        }
        (None, Some(host)) => Ok(host),
        (None, None) => Err(BadAuthority::Missing),
    }
}

/// The authority from a trusted forwarding header (such as
/// `x-forwarded-host`): its single value (the first of a list), normalised
/// as [`request_authority`] does. `None` when the header is absent.
pub(crate) fn forwarded_authority(
    headers: &HeaderMap,
    name: &HeaderName,
    scheme: &str,
) -> Option<Result<String, BadAuthority>> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return Some(Err(BadAuthority::SeveralHosts));
    }
    let Ok(value) = value.to_str() else {
        return Some(Err(BadAuthority::Invalid));
    };
    let first = value.split(',').next().unwrap_or("").trim();
    Some(normalize(first, scheme))
}

/// `host[:port]` checked and normalised; see [`request_authority`].
pub(crate) fn normalize(raw: &str, scheme: &str) -> Result<String, BadAuthority> {
    let canonical;
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(BadAuthority::Invalid)?;
        let address = literal
            .parse::<Ipv6Addr>()
            .map_err(|_| BadAuthority::Invalid)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(BadAuthority::Invalid)?),
        };
        // One address, one spelling: `[0:0::1]` is `[::1]`.
        canonical = format!("[{address}]");
        (canonical.as_str(), port)
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        }
    };
    let bracketed = host.starts_with('[');
    if host.is_empty()
        || (!bracketed
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')))
    {
        return Err(BadAuthority::Invalid);
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u32 = p.parse().map_err(|_| BadAuthority::Invalid)?;
            if n > 65_535 {
                return Err(BadAuthority::Invalid);
            }
            let default = match scheme {
                "http" => Some(80),
                "https" => Some(443),
                _ => None,
            };
            (default != Some(n)).then_some(n)
        }
        Some(_) => return Err(BadAuthority::Invalid),
    };
    let mut out = host.to_ascii_lowercase();
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn authority(target: &str, hosts: &[&str]) -> Result<String, BadAuthority> {
        let uri: Uri = target.parse().unwrap();
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        let scheme = uri.scheme_str().unwrap_or("http").to_owned();
        request_authority(&uri, &headers, &scheme)
    }

    #[test]
    fn the_target_authority_wins_and_must_agree_with_host() {
        assert_eq!(authority("/x", &["A.Example"]).unwrap(), "a.example");
        assert_eq!(authority("http://A.example/x", &[]).unwrap(), "a.example");
        assert_eq!(
            authority("http://a.example/x", &["a.example:80"]).unwrap(),
            "a.example"
        );
        assert_eq!(
            authority("http://victim.example/x", &["evil.example"]),
            Err(BadAuthority::Mismatch)
        );
    }

    #[test]
    fn default_ports_go_and_other_ports_stay() {
        assert_eq!(authority("/x", &["a.example:80"]).unwrap(), "a.example");
        assert_eq!(authority("/x", &["a.example:"]).unwrap(), "a.example");
        assert_eq!(authority("/x", &["a.example:080"]).unwrap(), "a.example");
        assert_eq!(
            authority("/x", &["a.example:443"]).unwrap(),
            "a.example:443"
        );
        assert_eq!(
            authority("https://a.example:443/x", &[]).unwrap(),
            "a.example"
        );
        assert_eq!(
            authority("https://a.example:80/x", &[]).unwrap(),
            "a.example:80"
        );
        assert_eq!(authority("/x", &["[::1]:8080"]).unwrap(), "[::1]:8080");
        assert_eq!(authority("/x", &["[::1]:80"]).unwrap(), "[::1]");
        assert_eq!(authority("/x", &["[0:0::1]"]).unwrap(), "[::1]");
        assert_eq!(
            authority("/x", &["[::FFFF:7f00:1]"]).unwrap(),
            "[::ffff:127.0.0.1]"
        );
        assert_eq!(
            authority("/x", &["127.0.0.1:3000"]).unwrap(),
            "127.0.0.1:3000"
        );
    }

    #[test]
    fn nothing_is_silently_dropped_from_a_host() {
        for bad in [
            "victim.example/",
            "victim.example#",
            "victim.example?",
            "victim.example ",
            "user@victim.example",
            "victim.example:http",
            "victim.example:99999",
            "victim.example:1:2",
            "victim*.example",
            "[::1",
            "[::g]",
            "[::1]x",
            "[v1.x]",
            "",
            ":80",
        ] {
            assert_eq!(
                authority("/x", &[bad]),
                Err(BadAuthority::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn several_or_no_hosts_are_refused() {
        assert_eq!(
            authority("/x", &["a.example", "b.example"]),
            Err(BadAuthority::SeveralHosts)
        );
        assert_eq!(
            authority("/x", &["a.example", "a.example"]),
            Err(BadAuthority::SeveralHosts)
        );
        assert_eq!(authority("/x", &[]), Err(BadAuthority::Missing));
    }

    #[test]
    fn a_trusted_forwarding_header_is_one_value() {
        let name = HeaderName::from_static("x-forwarded-host");
        let mut h = HeaderMap::new();
        assert!(forwarded_authority(&h, &name, "http").is_none());
        h.append(
            &name,
            HeaderValue::from_static("Shop.example, proxy.internal"),
        );
        assert_eq!(
            forwarded_authority(&h, &name, "http").unwrap().unwrap(),
            "shop.example"
        );
        h.append(&name, HeaderValue::from_static("other.example"));
        assert_eq!(
            forwarded_authority(&h, &name, "http").unwrap(),
            Err(BadAuthority::SeveralHosts)
        );
    }
}
