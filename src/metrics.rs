//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`); without the feature every function here is empty and
//! compiles away.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `http_cache_requests_total` | counter | `outcome`: `HIT`, `MISS`, `STALE`, `REVALIDATED`, `BYPASS` |
//! | `http_cache_not_modified_total` | counter | |
//! | `http_cache_store_duration_seconds` | histogram | `op`: `fetch`, `lock`, `fence`, `put`, `delete`, `unlock`, ... |
//! | `http_cache_store_errors_total` | counter | `op` |
//! | `http_cache_stored_entries_total` | counter | |
//! | `http_cache_stored_bytes_total` | counter | |
//! | `http_cache_stored_body_bytes_total` | counter | `form`: `received` (as the service sent them), `at_rest` (as stored, compressed where that paid) |
//! | `http_cache_corrupt_bodies_total` | counter | stored compressed bodies that did not decompress to their length while served |
//! | `http_cache_fills_fenced_total` | counter | |
//! | `http_cache_breaker_state` | gauge | 0 closed, 1 half-open, 2 open |
//! | `http_cache_breaker_trips_total` | counter | |
//! | `http_cache_invalidations_total` | counter | `outcome`: `queued`, `replayed`, `dropped` |
//! | `http_cache_invalidations_pending` | gauge | |

#[cfg(feature = "metrics")]
mod enabled {
    use std::time::Duration;

    use crate::BreakerState;

    pub(crate) fn request(outcome: &'static str) {
        metrics::counter!("http_cache_requests_total", "outcome" => outcome).increment(1);
    }

    pub(crate) fn not_modified() {
        metrics::counter!("http_cache_not_modified_total").increment(1);
    }

    pub(crate) fn store_call(op: &'static str, took: Duration, ok: bool) {
        metrics::histogram!("http_cache_store_duration_seconds", "op" => op)
            .record(took.as_secs_f64());
        if !ok {
            metrics::counter!("http_cache_store_errors_total", "op" => op).increment(1);
        }
    }

    pub(crate) fn stored(entries: usize, bytes: usize) {
        metrics::counter!("http_cache_stored_entries_total").increment(entries as u64);
        metrics::counter!("http_cache_stored_bytes_total").increment(bytes as u64);
    }

    pub(crate) fn fenced() {
        metrics::counter!("http_cache_fills_fenced_total").increment(1);
    }

    pub(crate) fn stored_body(received: usize, at_rest: usize) {
        metrics::counter!("http_cache_stored_body_bytes_total", "form" => "received")
            .increment(received as u64);
        metrics::counter!("http_cache_stored_body_bytes_total", "form" => "at_rest")
            .increment(at_rest as u64);
    }

    pub(crate) fn corrupt_body() {
        metrics::counter!("http_cache_corrupt_bodies_total").increment(1);
    }

    pub(crate) fn breaker(state: BreakerState, tripped: bool) {
        let value = match state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        };
        metrics::gauge!("http_cache_breaker_state").set(value);
        if tripped {
            metrics::counter!("http_cache_breaker_trips_total").increment(1);
        }
    }

    pub(crate) fn invalidation(outcome: &'static str, n: u64) {
        metrics::counter!("http_cache_invalidations_total", "outcome" => outcome).increment(n);
    }

    pub(crate) fn invalidations_pending(len: usize) {
        metrics::gauge!("http_cache_invalidations_pending").set(len as f64);
    }

    /// A clock for store latency, read only when metrics are on.
    pub(crate) fn start() -> Option<std::time::Instant> {
        Some(std::time::Instant::now())
    }
}

#[cfg(not(feature = "metrics"))]
mod enabled {
    use std::time::Duration;

    use crate::BreakerState;

    #[inline(always)]
    pub(crate) fn request(_: &'static str) {}

    #[inline(always)]
    pub(crate) fn not_modified() {}

    #[inline(always)]
    pub(crate) fn store_call(_: &'static str, _: Duration, _: bool) {}

    #[inline(always)]
    pub(crate) fn stored(_: usize, _: usize) {}

    #[inline(always)]
    pub(crate) fn fenced() {}

    pub(crate) fn stored_body(_: usize, _: usize) {}

    pub(crate) fn corrupt_body() {}

    #[inline(always)]
    pub(crate) fn breaker(_: BreakerState, _: bool) {}

    #[inline(always)]
    pub(crate) fn invalidation(_: &'static str, _: u64) {}

    #[inline(always)]
    pub(crate) fn invalidations_pending(_: usize) {}

    #[inline(always)]
    pub(crate) fn start() -> Option<std::time::Instant> {
        None
    }
}

pub(crate) use enabled::*;
