//! The pacer: segments leave no faster than the congestion controller's
//! pacing rate, with a little credit so that timer granularity does not
//! cost rate.

use std::time::{Duration, Instant};

/// Pacing lets this much sending time accumulate while idle, so that timer
/// granularity (a millisecond in most runtimes) does not cost rate.
pub(super) const PACING_BURST: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
pub(super) struct Pacer {
    /// Earliest time the next segment may leave; `None` when unpaced.
    next_send: Option<Instant>,
}

impl Pacer {
    /// A segment of `len` bytes left now; `rate` is the pacing rate in bytes
    /// per second (`None` or zero: no pacing).
    pub(super) fn on_sent(&mut self, now: Instant, len: u64, rate: Option<u64>) {
        let Some(rate) = rate.filter(|&r| r > 0) else {
            self.next_send = None;
            return;
        };
        // Credit for at most PACING_BURST of sending time, after idle or at
        // the start alike.
        let earliest = now.checked_sub(PACING_BURST).unwrap_or(now);
        let base = self.next_send.map_or(earliest, |t| t.max(earliest));
        self.next_send = Some(base + Duration::from_secs_f64(len.max(1) as f64 / rate as f64));
    }

    /// Whether a segment may leave now.
    pub(super) fn allows(&self, now: Instant) -> bool {
        self.next_send.is_none_or(|t| t <= now)
    }

    /// When the next segment may leave, if paced.
    pub(super) fn next_send(&self) -> Option<Instant> {
        self.next_send
    }

    /// Forgets the schedule (after an RTO, resending starts at once).
    pub(super) fn reset(&mut self) {
        self.next_send = None;
    }
}
