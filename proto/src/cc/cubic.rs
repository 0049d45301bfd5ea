//! CUBIC (RFC 9438), on byte counts.

use std::time::{Duration, Instant};

use super::{Controller, RateSample, first_window, minimum_window};

/// RFC 9438 §4.6: multiplicative decrease factor.
const BETA: f64 = 0.7;
/// RFC 9438 §5.1: the cubic constant, in segments per second cubed.
const C: f64 = 0.4;

/// CUBIC congestion control.
#[derive(Debug, Clone)]
pub struct Cubic {
    mss: u64,
    cwnd: u64,
    ssthresh: u64,
    /// Window before the last reduction, in bytes (RFC 9438 W_max).
    w_max: f64,
    /// Time from the epoch start to reach `w_max` again (RFC 9438 K), s.
    k: f64,
    epoch_start: Option<Instant>,
    /// Reno-friendly estimate (RFC 9438 §4.3 W_est), bytes.
    w_est: f64,
    /// Segments sent before this instant belong to an episode already
    /// reacted to (one reduction per round, RFC 9438 §4.6).
    recovery_start: Option<Instant>,
    srtt: Duration,
}

impl Cubic {
    /// A controller for segments of `mss` bytes; `rtt` from the handshake
    /// seeds the pacing rate.
    pub fn new(mss: u64, rtt: Option<Duration>) -> Self {
        Cubic {
            mss,
            cwnd: first_window(mss, rtt),
            ssthresh: u64::MAX,
            w_max: 0.0,
            k: 0.0,
            epoch_start: None,
            w_est: 0.0,
            recovery_start: None,
            srtt: rtt.unwrap_or(Duration::from_millis(100)),
        }
    }

    fn w_cubic(&self, t: f64) -> f64 {
        // RFC 9438 §4.2, in bytes.
        let mss = self.mss as f64;
        C * (t - self.k).powi(3) * mss + self.w_max
    }
}

impl Controller for Cubic {
    fn on_sent(&mut self, _: Instant, _: u64, _: u64) {}

    fn on_ack(&mut self, now: Instant, s: &RateSample, _in_flight: u64, _min_rtt: Duration) {
        if let Some(rtt) = s.rtt {
            self.srtt = (self.srtt * 7 + rtt) / 8;
        }
        if s.newly_acked == 0 {
            return;
        }
        if self.cwnd < self.ssthresh {
            // RFC 9438 §4.10 / RFC 5681: slow start.
            self.cwnd = self.cwnd.saturating_add(s.newly_acked);
            return;
        }
        let mss = self.mss as f64;
        if self.epoch_start.is_none() {
            // RFC 9438 §4.2: a new epoch (after slow start, or a timeout)
            // computes K from where the window is now.
            self.epoch_start = Some(now);
            self.w_est = self.cwnd as f64;
            self.w_max = self.w_max.max(self.cwnd as f64);
            self.k = ((self.w_max - self.cwnd as f64) / mss / C).max(0.0).cbrt();
        }
        let epoch = self.epoch_start.unwrap_or(now);
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        // RFC 9438 §4.3: the Reno-friendly region.
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        self.w_est += alpha * mss * s.newly_acked as f64 / self.cwnd as f64;
        // RFC 9438 §4.4: aim for W_cubic one RTT ahead, at most 1.5x.
        let cwnd = self.cwnd as f64;
        let target = self.w_cubic(t + self.srtt.as_secs_f64()).clamp(cwnd, 1.5 * cwnd);
        let next = if self.w_cubic(t) < self.w_est {
            self.w_est
        } else {
            cwnd + (target - cwnd) / cwnd * s.newly_acked as f64
        };
        self.cwnd = (next as u64).max(self.cwnd);
    }

    fn on_loss(&mut self, now: Instant, _lost: u64, newest_sent: Instant, _in_flight: u64) {
        if self.recovery_start.is_some_and(|r| newest_sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        let cwnd = self.cwnd as f64;
        // RFC 9438 §4.7: fast convergence.
        self.w_max = if cwnd < self.w_max { cwnd * (1.0 + BETA) / 2.0 } else { cwnd };
        self.cwnd = ((cwnd * BETA) as u64).max(minimum_window(self.mss));
        self.ssthresh = self.cwnd;
        self.k = ((self.w_max - self.cwnd as f64) / self.mss as f64 / C).max(0.0).cbrt();
        self.epoch_start = Some(now);
        self.w_est = self.cwnd as f64;
    }

    fn on_rto(&mut self, now: Instant) {
        // RFC 9438 §4.8 with RFC 5681 §3.1: back to one segment.
        self.w_max = self.cwnd as f64;
        self.ssthresh = ((self.cwnd as f64 * BETA) as u64).max(minimum_window(self.mss));
        self.cwnd = self.mss;
        self.epoch_start = None;
        self.recovery_start = Some(now);
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn pacing_rate(&self) -> Option<u64> {
        // As Linux does: twice the window per RTT in slow start, 1.2 after.
        let gain = if self.cwnd < self.ssthresh { 2.0 } else { 1.2 };
        let rtt = self.srtt.as_secs_f64().max(1e-6);
        Some((gain * self.cwnd as f64 / rtt) as u64)
    }
}
