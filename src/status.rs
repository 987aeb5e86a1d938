//! The cache status of a response: what the layer did with it, counted,
//! logged and (when configured) sent in the status header.

use http::{HeaderMap, HeaderName, HeaderValue};

/// What the layer did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Served fresh from the cache.
    Hit,
    /// Not found (or not usable): the service answered.
    Miss,
    /// Passed through without the cache.
    Bypass,
    /// Served stale from the cache.
    Stale,
    /// Revalidated with the service, which answered `304`.
    Revalidated,
}

impl CacheStatus {
    /// The value of the status header, and the metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
        }
    }
}

/// Counts and logs a request's outcome.
pub(crate) fn record(status: CacheStatus) {
    crate::metrics::request(status.as_str());
    tracing::debug!(outcome = status.as_str(), "cache outcome");
}

/// Counts a request's outcome and sets the status header (when enabled).
pub(crate) fn mark(name: Option<&HeaderName>, headers: &mut HeaderMap, status: CacheStatus) {
    record(status);
    if let Some(name) = name {
        headers.insert(name.clone(), HeaderValue::from_static(status.as_str()));
    }
}
