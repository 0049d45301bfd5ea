//! The pacer: segments leave no faster than the congestion controller's
//! pacing rate, with a little credit so that timer granularity (and the
//! receiver's wake-ups) do not cost rate.

use std::time::{Duration, Instant};

use crate::time::after;

/// Pacing lets this much sending time accumulate while idle, so that timer
/// granularity (a millisecond in most runtimes) does not cost rate.
pub(super) const PACING_BURST: Duration = Duration::from_millis(2);
/// ... and at least this many segments' worth, as quinn-proto's pacer
/// allows a burst of at least ten datagrams: at a low rate two milliseconds
/// are one or two segments, and every one of them then costs the receiver a
/// wake-up and an ACK of its own. (100 clients at once on loopback, each
/// paced at its share of the CPU: 289 ACKs per 1 MiB page against 31
/// unpaced, and twice the completion time.)
const MIN_BURST_SEGMENTS: f64 = 10.0;
/// ... and, as quinn-proto's pacer also allows, what the window would send
/// in PACING_BURST at its own rate, up to this many segments. The rate is
/// the window over the path's minimum RTT, where quinn takes the smoothed
/// one: a sender whose RTT grows because the hosts' CPUs are busy (a crowd
/// on one machine) should not be held to ever smaller bursts for it. Where
/// the minimum RTT is shorter than PACING_BURST the whole window may go at
/// once, as a window that short cannot build much of a queue; on a 50 ms
/// path it is a twenty-fifth of the window, about 4 ms at the bottleneck
/// rate with BBR's window of two bandwidth-delay products. (With CUBIC over
/// a standing queue the window exceeds one BDP by the queue, and the burst
/// with it: still far from the whole windows unpaced TCP sends.) Credit
/// builds only while the sender waits, so a connection kept busy by its
/// ACKs sends no such burst. (100 secure clients of a 1 MiB page at once on
/// loopback: 65-89 ACKs per page against 110-132, and the crowd in
/// 0.84-1.02 s against 1.00-1.19 s, by hand.)
const MAX_BURST_SEGMENTS: f64 = 256.0;

#[derive(Debug, Default)]
pub(super) struct Pacer {
    /// Earliest time the next segment may leave; `None` when unpaced.
    next_send: Option<Instant>,
}

impl Pacer {
    /// A segment of `len` bytes left now; `rate` is the pacing rate in bytes
    /// per second (`None` or zero: no pacing); `window` the congestion
    /// window in bytes and the path's minimum RTT, once there is a sample.
    pub(super) fn on_sent(&mut self, now: Instant, len: u64, rate: Option<u64>, window: Option<(u64, Duration)>) {
        let Some(rate) = rate.filter(|&r| r > 0) else {
            self.next_send = None;
            return;
        };
        // Credit for at most PACING_BURST of sending time, ten segments of
        // this one's size (so eleven leave at once), or PACING_BURST of the
        // window's own rate, whichever is most; after idle or at the start
        // alike.
        let spacing = Duration::from_secs_f64(len.max(1) as f64 / rate as f64);
        let mut burst = PACING_BURST.max(spacing.mul_f64(MIN_BURST_SEGMENTS));
        if let Some((cwnd, min_rtt)) = window {
            // A zero RTT (a coarse clock) counts as the shortest there is.
            let rtt = min_rtt.as_secs_f64().max(1e-6);
            let bytes = (cwnd as f64 * PACING_BURST.as_secs_f64() / rtt).min(MAX_BURST_SEGMENTS * len.max(1) as f64);
            burst = burst.max(Duration::from_secs_f64(bytes / rate as f64));
        }
        // Where an Instant cannot go that far back (it counts from boot on
        // some systems), the 2 ms at least.
        let earliest = now.checked_sub(burst).or_else(|| now.checked_sub(PACING_BURST)).unwrap_or(now);
        let base = self.next_send.map_or(earliest, |t| t.max(earliest));
        self.next_send = Some(after(base, spacing));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero

    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Segments sent at `now` while the pacer allows (at most 1,000), with
    /// a congestion window and minimum RTT if `window`.
    fn burst(p: &mut Pacer, now: Instant, rate: u64, window: Option<(u64, Duration)>) -> u32 {
        let mut n = 0;
        while p.allows(now) && n < 1000 {
            p.on_sent(now, 1000, Some(rate), window);
            n += 1;
        }
        n
    }

    #[test]
    fn no_pacing_without_a_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert!(p.allows(t0));
        for rate in [None, Some(0)] {
            for _ in 0..10 {
                p.on_sent(t0, 1000, rate, None);
            }
            assert_eq!(p.next_send(), None, "{rate:?}");
            assert!(p.allows(t0));
        }
    }

    /// 1000-byte segments at 1 MB/s leave 1 ms apart.
    #[test]
    fn rate_sets_the_spacing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut p = Pacer::default();
        burst(&mut p, t0, 1_000_000, None);
        let next = p.next_send().unwrap();
        assert_eq!(next, t0 + us(1000));
        assert!(!p.allows(next - us(1)) && p.allows(next));
        p.on_sent(next, 1000, Some(1_000_000), None);
        assert_eq!(p.next_send(), Some(next + us(1000)));
        p.on_sent(next, 1000, Some(4_000_000), None);
        assert_eq!(p.next_send(), Some(next + us(1250)), "a new rate applies from the next segment");
        // An empty segment (the FIN of an empty page) still takes a byte's
        // time, so the schedule moves.
        p.on_sent(next, 0, Some(1_000_000), None);
        assert_eq!(p.next_send(), Some(next + us(1251)));
    }

    /// After idle the credit is also 2 ms of the window's rate over the
    /// minimum RTT: 40 segments for a 200-segment window on 10 ms, the
    /// ten-segment floor on 100 ms, at most 256 on a near-zero or zero RTT;
    /// the largest of the three terms, not their sum.
    #[test]
    fn burst_credit_grows_with_the_windows_own_rate() {
        let t0 = Instant::now();
        let rate = 1_000_000; // a 1000-byte segment per millisecond
        let idle = t0 + Duration::from_secs(1);
        let mut p = Pacer::default();
        p.on_sent(t0, 1000, Some(rate), None);
        assert_eq!(burst(&mut p, idle, rate, Some((200_000, Duration::from_millis(10)))), 41);
        let mut p = Pacer::default();
        p.on_sent(t0, 1000, Some(rate), None);
        assert_eq!(burst(&mut p, idle, rate, Some((200_000, Duration::from_millis(100)))), 11);
        let mut p = Pacer::default();
        p.on_sent(t0, 1000, Some(rate), None);
        assert_eq!(burst(&mut p, idle, rate, Some((200_000, Duration::from_micros(1)))), 257);
        let mut p = Pacer::default();
        p.on_sent(t0, 1000, Some(rate), None);
        assert_eq!(burst(&mut p, idle, rate, Some((200_000, Duration::ZERO))), 257);
        // 2 ms at 50 MB/s is 100 segments, more than the window's 40: 100.
        let fast = 50_000_000;
        let mut p = Pacer::default();
        p.on_sent(t0, 1000, Some(fast), None);
        assert_eq!(burst(&mut p, idle, fast, Some((200_000, Duration::from_millis(10)))), 101);
    }

    /// PACING_BURST of credit, or ten segments' worth where that is more:
    /// at 1 ms per segment the first segment and ten more go at once, at
    /// 50 us per segment the first and 40 more (2 ms), from the start and
    /// after any idle time, never more.
    #[test]
    fn burst_credit_is_two_milliseconds_or_ten_segments_after_idle() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut p = Pacer::default();
        assert_eq!(burst(&mut p, t0, 1_000_000, None), 11);
        assert_eq!(burst(&mut p, t0 + us(1000), 1_000_000, None), 1, "no credit while busy");
        let idle = t0 + Duration::from_secs(10);
        assert_eq!(burst(&mut p, idle, 1_000_000, None), 11, "idle time does not add up");
        let later = idle + Duration::from_secs(10);
        assert_eq!(burst(&mut p, later, 20_000_000, None), 41);
        p.reset();
        assert!(p.allows(later) && p.next_send().is_none());
    }
}
