//! TTL jitter: spreads the expiry of entries written together so they do not
//! all expire (and all miss) in the same instant.

use std::time::Duration;

/// `ttl` scaled by a uniform random factor in `1 - fraction ..= 1 + fraction`,
/// in whole milliseconds and never below one millisecond.
///
/// `fraction` is validated to `0.0..1.0` when the layer is built; `0.0` returns
/// `ttl` unchanged.
pub(crate) fn jittered(ttl: Duration, fraction: f64) -> Duration {
    if fraction == 0.0 {
        return ttl;
    }
    scale(ttl, fraction, rand::random_range(-1.0..=1.0))
}

/// The deterministic part of [`jittered`]: `unit` is in `-1.0..=1.0`.
fn scale(ttl: Duration, fraction: f64, unit: f64) -> Duration {
    let ms = ttl.as_millis() as f64 * (1.0 + fraction * unit);
    Duration::from_millis((ms.round() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_reaches_both_bounds_and_the_middle() {
        let ttl = Duration::from_secs(900);
        assert_eq!(scale(ttl, 0.1, -1.0), Duration::from_secs(810));
        assert_eq!(scale(ttl, 0.1, 0.0), ttl);
        assert_eq!(scale(ttl, 0.1, 1.0), Duration::from_secs(990));
    }

    #[test]
    fn zero_fraction_is_exact() {
        let ttl = Duration::from_millis(1234);
        assert!((0..100).all(|_| jittered(ttl, 0.0) == ttl));
    }

    #[test]
    fn jitter_stays_inside_bounds_and_spreads() {
        let ttl = Duration::from_secs(100);
        let draws: Vec<_> = (0..1000).map(|_| jittered(ttl, 0.2)).collect();
        assert!(draws
            .iter()
            .all(|d| *d >= Duration::from_secs(80) && *d <= Duration::from_secs(120)));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "jitter should spread values");
    }

    #[test]
    fn tiny_ttl_never_becomes_zero() {
        assert_eq!(
            scale(Duration::from_millis(1), 0.9, -1.0),
            Duration::from_millis(1)
        );
    }
}
