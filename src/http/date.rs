//! HTTP dates (RFC 9110 §5.6.7), as seconds since the Unix epoch.

use std::time::{Duration, UNIX_EPOCH};

use http::HeaderValue;

/// Parses an HTTP date into seconds since the Unix epoch.
pub(crate) fn http_date(value: Option<&HeaderValue>) -> Option<u64> {
    let t = httpdate::parse_http_date(value?.to_str().ok()?.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Formats seconds since the Unix epoch as an HTTP date.
pub(crate) fn format_http_date(secs: u64) -> HeaderValue {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    HeaderValue::try_from(httpdate::fmt_http_date(t)).expect("an HTTP date is a valid header")
}
