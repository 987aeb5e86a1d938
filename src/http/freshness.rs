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

/// Heuristic freshness (RFC 9111 §4.2.2): `fraction` of the time since
/// `Last-Modified`, at most `max_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Heuristic {
    pub(crate) fraction: f64,
    pub(crate) max_ms: u64,
}

/// The freshness lifetime a shared cache gives a response (RFC 9111 §4.2.1),
/// in milliseconds: `s-maxage`, `max-age`, `Expires` minus `Date`, then the
/// heuristic when one is given (only for statuses that allow it, or a
/// `public` response). `response_ms` stands in for a missing `Date`.
pub(crate) fn freshness_lifetime_ms(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    response_ms: u64,
    heuristic: Option<Heuristic>,
) -> u64 {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return s * 1000;
    }
    let date = http_date(headers.get(header::DATE)).unwrap_or(response_ms / 1000);
    let mut expires = headers.get_all(header::EXPIRES).iter();
    // A targeted field replaces `Expires` too (RFC 9213 §2.2).
    if let Some(first) = expires.next().filter(|_| !cc.targeted) {
        // An invalid `Expires` (such as "0") means already expired (§5.3),
        // and so do several (§4.2.1: the response is then stale).
        if expires.next().is_some() {
            return 0;
        }
        return http_date(Some(first)).map_or(0, |expires| expires.saturating_sub(date) * 1000);
    }
    match (heuristic, http_date(headers.get(header::LAST_MODIFIED))) {
        (Some(h), Some(modified)) if heuristically_cacheable(status) || cc.public => {
            let lifetime = (date.saturating_sub(modified) as f64 * 1000.0 * h.fraction) as u64;
            lifetime.min(h.max_ms)
        }
        _ => 0,
    }
}

/// The response's age when it arrived (RFC 9111 §4.2.3,
/// `corrected_initial_age`), in milliseconds. An `Age` that is not one
/// non-negative integer is ignored (§5.1).
pub(crate) fn initial_age_ms(headers: &HeaderMap, request_ms: u64, response_ms: u64) -> u64 {
    // `Date` has one-second resolution: it is read as the end of its second,
    // so a response just made never looks up to a second old.
    let apparent = http_date(headers.get(header::DATE))
        .map_or(0, |date| response_ms.saturating_sub(date * 1000 + 999));
    let mut ages = headers.get_all(header::AGE).iter();
    let age_value = match (ages.next(), ages.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .map_or(0, parse_seconds),
        _ => 0,
    };
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
        let tenth = Some(Heuristic {
            fraction: 0.1,
            max_ms: 86_400_000,
        });
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, tenth), 100_000);
        let created = StatusCode::CREATED;
        assert_eq!(freshness_lifetime_ms(created, &h, &none, 0, tenth), 0);
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_freshness_is_capped() {
        let ok = StatusCode::OK;
        let none = CacheControl::default();
        // Modified ten years before its Date: a tenth is a year, capped.
        let h = with(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("last-modified", "Fri, 21 Oct 2005 07:28:00 GMT"),
        ]);
        let capped = |max_ms| {
            Some(Heuristic {
                fraction: 0.1,
                max_ms,
            })
        };
        assert_eq!(
            freshness_lifetime_ms(ok, &h, &none, 0, capped(86_400_000)),
            86_400_000
        );
        assert_eq!(
            freshness_lifetime_ms(ok, &h, &none, 0, capped(5_000)),
            5_000
        );
        // Not for a status that is not heuristically cacheable, unless public.
        let teapot = StatusCode::IM_A_TEAPOT;
        assert_eq!(
            freshness_lifetime_ms(teapot, &h, &none, 0, capped(5_000)),
            0
        );
        let public = CacheControl::parse(&with(&[("cache-control", "public")]));
        assert_eq!(
            freshness_lifetime_ms(teapot, &h, &public, 0, capped(5_000)),
            5_000
        );
    }

    #[test]
    fn rfc9111_4_2_1_several_expires_lines_mean_stale() {
        let ok = StatusCode::OK;
        let none = CacheControl::default();
        let mut h = with(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("expires", "Wed, 21 Oct 2015 07:29:00 GMT"),
        ]);
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, None), 60_000);
        h.append("expires", "Wed, 21 Oct 2015 07:30:00 GMT".parse().unwrap());
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, None), 0);
        // Read in any case and in the other formats (RFC 9111 §4.2).
        let h = with(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("expires", "wednesday, 21-oct-15 07:29:00 gmt"),
        ]);
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, None), 60_000);
        let h = with(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            (
                "expires",
                "Wed, 21 Oct 2015 07:29:00 GMT, Wed, 21 Oct 2015 07:30:00 GMT",
            ),
        ]);
        assert_eq!(freshness_lifetime_ms(ok, &h, &none, 0, None), 0);
    }

    #[test]
    fn rfc9111_5_1_an_age_that_is_not_a_non_negative_integer_is_ignored() {
        let at = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        let date = ("date", "Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(
            initial_age_ms(&with(&[date, ("age", " 30 ")]), at, at),
            30_000
        );
        for bad in ["-30", "30.5", "30, 40", "30s", "", "thirty"] {
            assert_eq!(
                initial_age_ms(&with(&[date, ("age", bad)]), at, at),
                0,
                "{bad:?}"
            );
        }
        let mut two = with(&[date, ("age", "30")]);
        two.append("age", "40".parse().unwrap());
        assert_eq!(initial_age_ms(&two, at, at), 0);
        let huge = with(&[date, ("age", "99999999999999999999999")]);
        assert_eq!(initial_age_ms(&huge, at, at), 2_147_483_648_000);
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
