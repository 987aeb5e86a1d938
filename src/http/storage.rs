//! Storing responses (RFC 9111 §3): whether a response may be stored, and
//! for how long. The layer after a miss and `CacheHandle::put` decide with
//! the same function, [`storable`].

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::{
    date::format_http_date,
    freshness::{freshness_lifetime_ms, heuristically_cacheable, initial_age_ms, Heuristic},
    vary, CacheControl, Vary,
};
use crate::{
    entry::{Extra, Lifetimes},
    policy::Resolved,
};

/// Whether a response may be stored under the route's `rule`, and how: its
/// lifetimes and the HTTP facts stored with it; `None` when it is not
/// stored. `cc` is the response's `Cache-Control`; `shared_only` says the
/// request carried credentials the route does not open itself to (then only
/// a response that allows sharing is stored, RFC 9111 §3.5); `request_ms`
/// and `response_ms` are when the request went out and the response came
/// back.
///
/// A response that may be stored gets a `Date` if it has none (RFC 9110
/// §6.6.1: a recipient that caches a response without one adds it), and a
/// `200` gets `Accept-Ranges: bytes` if it has no `Accept-Ranges`.
pub(crate) fn storable(
    rule: &Resolved,
    status: StatusCode,
    headers: &mut HeaderMap,
    cc: &CacheControl,
    shared_only: bool,
    request_ms: u64,
    response_ms: u64,
) -> Option<(Lifetimes, Extra)> {
    if (shared_only && !allows_authorized(headers, cc))
        || refuse_to_store(headers, cc, rule.http.strip_set_cookie).is_some()
    {
        return None;
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, format_http_date(response_ms / 1000));
    }
    let stored = lifetimes(
        rule,
        status,
        headers,
        cc,
        shared_only,
        request_ms,
        response_ms,
    )?;
    // The cache answers range requests from a stored `200` (RFC 9110 §14.3).
    if status == StatusCode::OK && !headers.contains_key(header::ACCEPT_RANGES) {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    Some(stored)
}

/// Whether the response may be served to requests with credentials (RFC
/// 9111 §3.5). Only `Cache-Control` can say so: a targeted field (RFC
/// 9213) never opens up what the trust rules keep out of the shared cache.
fn allows_authorized(headers: &HeaderMap, cc: &CacheControl) -> bool {
    if cc.targeted {
        CacheControl::parse(headers).allows_authorized()
    } else {
        cc.allows_authorized()
    }
}

/// Why a response is never stored, whatever the route says: `Set-Cookie`
/// (unless the route strips it), `no-store`, `private`, `Vary: *`.
/// `None` means it may be stored.
pub(crate) fn refuse_to_store(
    headers: &HeaderMap,
    cc: &CacheControl,
    strip_set_cookie: bool,
) -> Option<&'static str> {
    if cc.no_store {
        Some("response says no-store")
    } else if cc.private {
        Some("response is private")
    } else if !strip_set_cookie && headers.contains_key(header::SET_COOKIE) {
        Some("response sets a cookie")
    } else if matches!(vary(headers), Vary::Any) {
        Some("response says Vary: *")
    } else {
        None
    }
}

/// Whether an origin-driven cache may store a response with this status at
/// all: final, not partial, not a `304` (RFC 9111 §3).
pub(crate) fn storable_status(status: StatusCode) -> bool {
    status.as_u16() >= 200 && !matches!(status.as_u16(), 206 | 304)
}
/// How long a response is fresh and kept, and the HTTP facts stored with it,
/// by the route's mode. `None` when the response is not to be stored.
fn lifetimes(
    rule: &Resolved,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    shared_only: bool,
    request_ms: u64,
    response_ms: u64,
) -> Option<(Lifetimes, Extra)> {
    let mut lifetimes = rule.lifetimes();
    let mut extra = Extra {
        initial_age_ms: initial_age_ms(headers, request_ms, response_ms),
        shared: rule.allow_authorization || allows_authorized(headers, cc),
        ..Extra::default()
    };
    let ms = |s: u64| Duration::from_millis(s.saturating_mul(1000));
    if rule.http.origin_driven() {
        let explicit = cc.max_age.is_some()
            || cc.s_maxage.is_some()
            || (!cc.targeted && headers.contains_key(header::EXPIRES));
        if !storable_status(status) || !(explicit || cc.public || heuristically_cacheable(status)) {
            return None;
        }
        // A request with credentials gets only what the response says
        // explicitly: no heuristic.
        let heuristic = rule
            .http
            .heuristic
            .filter(|_| !shared_only)
            .map(|fraction| Heuristic {
                fraction,
                max_ms: u64::try_from(rule.http.heuristic_max.as_millis()).unwrap_or(u64::MAX),
            });
        let lifetime = freshness_lifetime_ms(status, headers, cc, response_ms, heuristic);
        lifetimes.fresh = if cc.no_cache {
            Duration::ZERO
        } else {
            Duration::from_millis(lifetime.saturating_sub(extra.initial_age_ms))
        };
        // A response that is not fresh when it arrives is never served
        // without a revalidation (see `Entry::never_fresh`): it is stored
        // as must-revalidate, without windows for serving it stale.
        extra.must_revalidate = cc.no_cache || cc.forbids_stale() || lifetimes.fresh.is_zero();
        if extra.must_revalidate {
            lifetimes.stale_while_revalidate = Duration::ZERO;
            lifetimes.stale_if_error = Duration::ZERO;
        } else {
            if let Some(s) = cc.stale_while_revalidate {
                lifetimes.stale_while_revalidate = ms(s);
            }
            if let Some(s) = cc.stale_if_error {
                lifetimes.stale_if_error = ms(s);
            }
        }
    } else {
        if !rule.stores_status(status) {
            return None;
        }
        if cc.targeted {
            // This cache's own field, set by the handler: it overrides the
            // route's TTL and windows for this response.
            if let Some(s) = cc.s_maxage.or(cc.max_age) {
                lifetimes.fresh = ms(s);
            }
            if cc.no_cache {
                lifetimes.fresh = Duration::ZERO;
            }
            if let Some(s) = cc.stale_while_revalidate {
                lifetimes.stale_while_revalidate = ms(s);
            }
            if let Some(s) = cc.stale_if_error {
                lifetimes.stale_if_error = ms(s);
            }
        } else if rule.http.respect_max_age {
            if let Some(s) = cc.s_maxage.or(cc.max_age) {
                lifetimes.fresh = lifetimes.fresh.min(ms(s));
            }
        }
        if lifetimes.fresh.is_zero() {
            // `max-age=0` respected: kept only to be revalidated.
            extra.must_revalidate = true;
            lifetimes.stale_while_revalidate = Duration::ZERO;
            lifetimes.stale_if_error = Duration::ZERO;
        }
    }
    // Kept past freshness: to be revalidated, or served to a request whose
    // `max-stale` accepts it.
    lifetimes.revalidate = rule.http.revalidate_window;
    (!lifetimes.store_ttl().is_zero()).then_some((lifetimes, extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers::with;

    #[test]
    fn unsafe_responses_are_refused() {
        let refuse = |h: HeaderMap| refuse_to_store(&h, &CacheControl::parse(&h), false);
        assert!(refuse(with(&[("set-cookie", "a=b")])).is_some());
        assert!(refuse_to_store(
            &with(&[("set-cookie", "a=b")]),
            &CacheControl::default(),
            true
        )
        .is_none());
        assert!(refuse(with(&[("cache-control", "private, max-age=9")])).is_some());
        assert!(refuse(with(&[("cache-control", "no-store")])).is_some());
        assert!(refuse(with(&[("vary", "*")])).is_some());
        assert!(refuse(with(&[("vary", "accept-language")])).is_none());
        assert!(refuse(with(&[("cache-control", "public, max-age=9")])).is_none());
    }

    #[test]
    fn rfc9111_4_2_2_no_heuristic_for_a_request_with_credentials() {
        let keys = crate::key::KeySpace::new("t", "v1").unwrap();
        let rule = crate::policy::CachePolicy::new()
            .origin_driven()
            .heuristic_freshness(0.1)
            .resolve(&Resolved::defaults(&keys), "test", &keys)
            .unwrap()
            .unwrap();
        let fresh_for = |shared_only: bool| {
            let mut h = with(&[
                ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ("last-modified", "Wed, 21 Oct 2015 07:11:20 GMT"),
                ("cache-control", "public"),
            ]);
            let cc = CacheControl::parse(&h);
            let at = 1_445_412_480_000;
            storable(&rule, StatusCode::OK, &mut h, &cc, shared_only, at, at)
                .map(|(lifetimes, _)| lifetimes.fresh)
        };
        assert_eq!(fresh_for(false), Some(Duration::from_secs(100)));
        // Stored (public allows it), but only to be revalidated.
        assert_eq!(fresh_for(true), Some(Duration::ZERO));
    }
}
