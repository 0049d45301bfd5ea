//! Deadline arithmetic that cannot panic, whatever durations a
//! configuration holds.

use std::time::{Duration, Instant};

/// About 30 years: later than any deadline that matters, early enough that
/// `Instant` arithmetic never overflows on any platform.
const FAR: Duration = Duration::from_secs(1 << 30);

/// `now + d`, saturating at a far-future instant instead of overflowing.
pub fn after(now: Instant, d: Duration) -> Instant {
    // Were even `FAR` out of range, an hour still is on every platform.
    now.checked_add(d.min(FAR)).or_else(|| now.checked_add(Duration::from_secs(3600))).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // any instant will do
    fn saturates() {
        let now = Instant::now() - Duration::from_secs(1);
        assert_eq!(after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(1 << 29));
    }
}
