//! The circuit breaker in front of the store: after a run of failures the
//! layer stops calling the store for a cool-down, then lets one probe through.
//! Checking it on the request path is one atomic load.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed},
    time::{Duration, Instant},
};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The breaker's state, as [`CacheStats`](crate::CacheStats) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakerState {
    /// The store is called as usual.
    #[default]
    Closed,
    /// The store is skipped until the cool-down ends.
    Open,
    /// One probe call is deciding whether to close again.
    HalfOpen,
}

pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    /// A probe that has not reported back after this long is presumed lost
    /// (its request was dropped) and another one is allowed.
    probe_grace_ms: u64,
    state: AtomicU8,
    failures: AtomicU32,
    /// Milliseconds since `epoch` when the breaker opened or the probe began.
    since_ms: AtomicU64,
    /// Transitions to open (including a failed probe reopening it).
    pub(crate) trips: AtomicU64,
    /// Transitions to half-open (probes let through).
    pub(crate) probes: AtomicU64,
    /// Transitions back to closed.
    pub(crate) recoveries: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    /// `threshold` 0 disables the breaker.
    pub(crate) fn new(threshold: u32, cooldown: Duration, budget: Duration) -> Self {
        Self {
            threshold,
            cooldown_ms: cooldown.as_millis() as u64,
            probe_grace_ms: (budget * 2 + cooldown).as_millis() as u64,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            since_ms: AtomicU64::new(0),
            trips: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Relaxed) {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Whether a store call may go ahead now.
    pub(crate) fn allow(&self) -> bool {
        match self.state.load(Relaxed) {
            CLOSED => true,
            OPEN => {
                let since = self.since_ms.load(Relaxed);
                let now = self.now_ms();
                if now.saturating_sub(since) < self.cooldown_ms {
                    return false;
                }
                let probe = self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Relaxed, Relaxed)
                    .is_ok();
                if probe {
                    self.since_ms.store(now, Relaxed);
                    self.probes.fetch_add(1, Relaxed);
                    crate::metrics::breaker(BreakerState::HalfOpen, false);
                    tracing::info!("cache store circuit half-open: probing the store");
                }
                probe
            }
            _ => {
                let since = self.since_ms.load(Relaxed);
                let now = self.now_ms();
                now.saturating_sub(since) >= self.probe_grace_ms
                    && self
                        .since_ms
                        .compare_exchange(since, now, Relaxed, Relaxed)
                        .is_ok()
            }
        }
    }

    pub(crate) fn record_success(&self) {
        // Read first: a write on every successful call would bounce this
        // cache line between the cores serving requests.
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.state.load(Relaxed) != CLOSED && self.state.swap(CLOSED, Relaxed) != CLOSED {
            self.recoveries.fetch_add(1, Relaxed);
            crate::metrics::breaker(BreakerState::Closed, false);
            tracing::info!("cache store circuit closed: the store answers again");
        }
    }

    pub(crate) fn record_failure(&self) {
        if self.threshold == 0 {
            return;
        }
        if self.state.load(Relaxed) == HALF_OPEN {
            if self
                .state
                .compare_exchange(HALF_OPEN, OPEN, Relaxed, Relaxed)
                .is_ok()
            {
                self.since_ms.store(self.now_ms(), Relaxed);
                self.trips.fetch_add(1, Relaxed);
                crate::metrics::breaker(BreakerState::Open, true);
                tracing::warn!("cache store probe failed: circuit open again");
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures >= self.threshold
            && self
                .state
                .compare_exchange(CLOSED, OPEN, Relaxed, Relaxed)
                .is_ok()
        {
            self.since_ms.store(self.now_ms(), Relaxed);
            self.trips.fetch_add(1, Relaxed);
            crate::metrics::breaker(BreakerState::Open, true);
            tracing::warn!(
                failures,
                cooldown_ms = self.cooldown_ms,
                "cache store circuit open: requests skip the store during the cool-down"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_cooldown_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(30), Duration::from_millis(10));
        b.record_failure();
        b.record_failure();
        assert!(b.allow());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.trips.load(Relaxed), 1);
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one probe after the cool-down");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "only one probe at a time");
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
        let counts = |b: &Breaker| {
            (
                b.trips.load(Relaxed),
                b.probes.load(Relaxed),
                b.recoveries.load(Relaxed),
            )
        };
        assert_eq!(counts(&b), (1, 1, 1), "every transition is counted");
    }

    #[test]
    fn a_failed_probe_reopens_and_a_lost_probe_is_replaced() {
        let b = Breaker::new(1, Duration::from_millis(20), Duration::from_millis(5));
        b.record_failure();
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.allow());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.allow());
        // The probe never reports back; after the grace period another goes.
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(35));
        assert!(b.allow());
    }

    #[test]
    fn successes_reset_the_count_and_zero_disables() {
        let b = Breaker::new(2, Duration::from_secs(60), Duration::from_millis(10));
        b.record_failure();
        b.record_success();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        let off = Breaker::new(0, Duration::from_secs(60), Duration::from_millis(10));
        (0..100).for_each(|_| off.record_failure());
        assert!(off.allow());
    }
}
