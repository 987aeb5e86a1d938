//! Freshness and age (RFC 9111 §4.2): how long a response is fresh, how old
//! it is, and what a stored response is good for, for one request.

use http::{header, HeaderMap, StatusCode};

use super::{cache_control::parse_seconds, date::http_date, CacheControl};
use crate::entry::{Entry, Freshness};

/// Statuses a shared cache may store without explicit freshness (RFC 9110
/// §15.1); `206` is left out because ranges are not cached.
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The freshness lifetime a shared cache gives a response (RFC 9111 §4.2.1),
/// in milliseconds: `s-maxage`, `max-age`, `Expires` minus `Date`, then the
/// heuristic (`fraction` of the time since `Last-Modified`) when one is
/// configured. `response_ms` stands in for a missing `Date`.
pub(crate) fn freshness_lifetime_ms(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    response_ms: u64,
    heuristic: Option<f64>,
) -> u64 {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return s * 1000;
    }
    let date = http_date(headers.get(header::DATE)).unwrap_or(response_ms / 1000);
    if headers.contains_key(header::EXPIRES) {
        // An invalid `Expires` (such as "0") means already expired.
        return http_date(headers.get(header::EXPIRES))
            .map_or(0, |expires| expires.saturating_sub(date) * 1000);
    }
    match (heuristic, http_date(headers.get(header::LAST_MODIFIED))) {
        (Some(fraction), Some(modified)) if heuristically_cacheable(status) || cc.public => {
            (date.saturating_sub(modified) as f64 * 1000.0 * fraction) as u64
        }
        _ => 0,
    }
}

/// The response's age when it arrived (RFC 9111 §4.2.3,
/// `corrected_initial_age`), in milliseconds.
pub(crate) fn initial_age_ms(headers: &HeaderMap, request_ms: u64, response_ms: u64) -> u64 {
    // `Date` has one-second resolution: it is read as the end of its second,
    // so a response just made never looks up to a second old.
    let apparent = http_date(headers.get(header::DATE))
        .map_or(0, |date| response_ms.saturating_sub(date * 1000 + 999));
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .map_or(0, |v| parse_seconds(v.trim()));
    let corrected = (age_value * 1000).saturating_add(response_ms.saturating_sub(request_ms));
    apparent.max(corrected)
}
/// What a stored entry is good for, for one request (RFC 9111 §4.2, §4.3,
/// §5.2.1 and RFC 5861).
pub(crate) enum Use {
    /// Fresh enough: serve it.
    Fresh,
    /// Stale, inside its stale-while-revalidate window: serve it and refresh
    /// in the background.
    StaleWhileRevalidate,
    /// Stale, but the request's `max-stale` accepts it.
    AcceptedStale,
    /// Must be revalidated (or fetched) before it is served.
    Revalidate,
}

pub(crate) fn judge(entry: &Entry, now: u64, cc: &CacheControl) -> Use {
    let left = entry.fresh_left_ms(now);
    let age = i128::from(entry.age_ms(now));
    let ms = |s: u64| i128::from(s) * 1000;
    // Never fresh: only a revalidation makes it servable (a clock behind
    // the writer's must not make it look fresh either).
    if entry.never_fresh()
        || cc.no_cache
        || cc.max_age.is_some_and(|m| age >= ms(m))
        || cc.min_fresh.is_some_and(|m| left < ms(m))
    {
        return Use::Revalidate;
    }
    if left > 0 {
        return Use::Fresh;
    }
    if !entry.must_revalidate && cc.max_stale.is_some_and(|m| -left <= ms(m.min(1 << 40))) {
        return Use::AcceptedStale;
    }
    match entry.freshness(now) {
        Freshness::StaleWhileRevalidate if !entry.must_revalidate => Use::StaleWhileRevalidate,
        _ => Use::Revalidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers::with;

    #[test]
    fn rfc9111_4_2_1_freshness_lifetime() {
        let ok = StatusCode::OK;
        let h = with(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(
            freshness_lifetime_ms(ok, &h, &CacheControl::parse(&h), 0, None),
            20_000
        );
        let h = with(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("expires", "Wed, 21 Oct 2015 07:29:00 GMT"),
        ]);
        assert_eq!(
            freshness_lifetime_ms(ok, &h, &CacheControl::default(), 0, None),
            60_000
        );
        let h = with(&[("expires", "0")]);
        assert_eq!(
            freshness_lifetime_ms(ok, &h, &CacheControl::default(), 0, None),
            0
        );
        let h = with(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("last-modified", "Wed, 21 Oct 2015 07:11:20 GMT"),
        ]);
        let none = CacheControl::default();
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, None), 0);
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, Some(0.1)), 100_000);
        let created = StatusCode::CREATED;
        assert_eq!(freshness_lifetime_ms(created, &h, &none, 0, Some(0.1)), 0);
    }

    #[test]
    fn rfc9111_4_2_3_age_takes_the_larger_of_upstream_age_and_apparent_age() {
        let date = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        let h = with(&[("date", "Wed, 21 Oct 2015 07:28:00 GMT"), ("age", "30")]);
        assert_eq!(initial_age_ms(&h, date + 1_000, date + 2_000), 31_000);
        assert_eq!(initial_age_ms(&h, date + 99_000, date + 100_999), 100_000);
        assert_eq!(initial_age_ms(&HeaderMap::new(), 10, 15), 5);
    }
}
