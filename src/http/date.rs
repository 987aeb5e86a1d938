//! HTTP dates (RFC 9110 §5.6.7), as seconds since the Unix epoch.
//!
//! Dates in responses (`Date`, `Expires`, `Last-Modified`) are read as RFC
//! 9111 §4.2 asks of a cache: the three formats of RFC 9110 (IMF-fixdate,
//! RFC 850, asctime) in any case, and the variations of the Internet
//! Message Format that other software still sends (a numeric or named time
//! zone, a missing or full day name, one-digit days, two-digit years).
//! Anything else is not a date. Conditional request fields are read
//! strictly ([`strict_http_date`]): RFC 9110 §13.1.3 has a recipient ignore
//! an `If-Modified-Since` that is not a valid HTTP-date.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// Parses a date of a response field into seconds since the Unix epoch;
/// `None` when it is not a date (or is before 1970).
pub(crate) fn http_date(value: Option<&HeaderValue>) -> Option<u64> {
    parse(value?.to_str().ok()?)
}

/// Parses an HTTP-date in one of the three formats of RFC 9110 §5.6.7,
/// exactly as written there.
pub(crate) fn strict_http_date(value: Option<&HeaderValue>) -> Option<u64> {
    let t = httpdate::parse_http_date(value?.to_str().ok()?.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Formats seconds since the Unix epoch as an HTTP date.
pub(crate) fn format_http_date(secs: u64) -> HeaderValue {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    HeaderValue::try_from(httpdate::fmt_http_date(t)).expect("an HTTP date is a valid header")
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const FULL_MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn parse(s: &str) -> Option<u64> {
    let (mut day, mut month, mut year, mut time, mut zone) = (None, None, None, None, None);
    let tokens = s
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|t| !t.is_empty());
    for token in tokens {
        let lower = token.to_ascii_lowercase();
        if let Some(offset) = zone_offset(&lower) {
            set(&mut zone, offset)?;
        } else if token.contains(':') {
            set(&mut time, clock(token)?)?;
        } else if let Some(m) = month_of(&lower) {
            set(&mut month, m)?;
        } else if DAYS.iter().any(|d| lower == d[..3] || lower == *d) {
            // A day name is redundant; RFC 9110 lets a recipient ignore it.
        } else if token.contains('-') {
            // RFC 850: `06-Nov-94`.
            let mut parts = lower.split('-');
            let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            set(&mut day, number(d, 2)?)?;
            set(&mut month, month_of(m)?)?;
            set(&mut year, year_of(y)?)?;
        } else if day.is_none() && token.len() <= 2 {
            day = Some(number(token, 2)?);
        } else if year.is_none() {
            year = Some(year_of(token)?);
        } else {
            return None;
        }
    }
    let (day, month, year, (h, m, sec)) = (day?, month?, year?, time?);
    if !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(h * 3600 + m * 60 + sec) - zone.unwrap_or(0);
    u64::try_from(secs).ok()
}

/// Sets `slot` once; a second value makes the date ambiguous.
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

fn number(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn month_of(lower: &str) -> Option<u32> {
    let at = MONTHS
        .iter()
        .position(|m| *m == lower)
        .or_else(|| FULL_MONTHS.iter().position(|m| *m == lower))?;
    Some(at as u32 + 1)
}

/// `hh:mm:ss` or `hh:mm`.
fn clock(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split(':');
    let h = number(parts.next()?, 2)?;
    let m = number(parts.next()?, 2)?;
    let sec = parts.next().map_or(Some(0), |s| number(s, 2))?;
    if parts.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some((h, m, sec.min(59)))
}

/// A time zone as seconds east of UTC: `GMT`, `UT`, `UTC`, `Z`, `±hhmm` and
/// the North American names of RFC 5322 §4.3.
fn zone_offset(lower: &str) -> Option<i64> {
    let hours = match lower {
        "gmt" | "ut" | "utc" | "z" => 0,
        "edt" => -4,
        "est" | "cdt" => -5,
        "cst" | "mdt" => -6,
        "mst" | "pdt" => -7,
        "pst" => -8,
        _ => {
            let (sign, digits) = match lower.as_bytes().first()? {
                b'+' => (1, &lower[1..]),
                b'-' => (-1, &lower[1..]),
                _ => return None,
            };
            if digits.len() != 4 {
                return None;
            }
            let n = i64::from(number(digits, 4)?);
            let (h, m) = (n / 100, n % 100);
            if h > 23 || m > 59 {
                return None;
            }
            return Some(sign * (h * 3600 + m * 60));
        }
    };
    Some(hours * 3600)
}

/// A four-digit year, or a two-digit one read as RFC 9110 §5.6.7 says: a
/// year more than 50 years ahead is the most recent past year with those
/// digits.
fn year_of(s: &str) -> Option<i64> {
    let n = i64::from(number(s, 4)?);
    let year = match s.len() {
        4 => n,
        2 => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let this_year = 1970 + (now / 31_556_952) as i64;
            let year = this_year / 100 * 100 + n;
            if year > this_year + 50 {
                year - 100
            } else {
                year
            }
        }
        _ => return None,
    };
    (year >= 1970).then_some(year)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_6_1994: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

    fn date(s: &str) -> Option<u64> {
        http_date(Some(&HeaderValue::from_str(s).unwrap()))
    }

    #[test]
    fn rfc9110_5_6_7_the_three_formats() {
        assert_eq!(date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(NOV_6_1994));
        assert_eq!(date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(NOV_6_1994));
        assert_eq!(date("Sun Nov  6 08:49:37 1994"), Some(NOV_6_1994));
    }

    #[test]
    fn rfc9111_4_2_dates_match_case_insensitively_and_tolerate_variations() {
        for s in [
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "06 Nov 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "Sun, 06 Nov 1994 09:49:37 +0100",
            "Sun, 06 Nov 1994 03:49:37 EST",
            "Sun, 06 November 1994 08:49:37 GMT",
            "  Sun,  06 Nov 1994   08:49:37 GMT  ",
        ] {
            assert_eq!(date(s), Some(NOV_6_1994), "{s}");
        }
        assert_eq!(date("Sun, 06 Nov 1994 08:49 GMT"), Some(NOV_6_1994 - 37));
    }

    #[test]
    fn rfc9110_5_6_7_a_two_digit_year_more_than_50_years_ahead_is_in_the_past() {
        assert_eq!(date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(NOV_6_1994));
        // 2000 + 20 is not more than 50 years ahead of today.
        assert_eq!(
            date("Friday, 06-Nov-20 08:49:37 GMT"),
            date("Fri, 06 Nov 2020 08:49:37 GMT")
        );
    }

    #[test]
    fn rfc9111_5_3_what_is_not_a_date_is_none() {
        for s in [
            "0",
            "-1",
            "",
            "never",
            "Sun, 06 Nov 1994",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun, 06 Nov 1994 08:49:37 GMT GMT",
            "Sun, 06 Nov 1994 08:49:37 +25:00",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Thu, 01 Jan 1960 00:00:00 GMT",
            "1994-11-06T08:49:37Z",
        ] {
            assert_eq!(date(s), None, "{s}");
        }
    }

    #[test]
    fn rfc9110_13_1_3_conditional_fields_are_read_strictly() {
        let lax = HeaderValue::from_static("sun, 06 nov 1994 08:49:37 gmt");
        assert_eq!(strict_http_date(Some(&lax)), None);
        let exact = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(strict_http_date(Some(&exact)), Some(NOV_6_1994));
    }

    #[test]
    fn formatted_dates_read_back() {
        let v = format_http_date(NOV_6_1994);
        assert_eq!(v, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(Some(&v)), Some(NOV_6_1994));
    }
}
