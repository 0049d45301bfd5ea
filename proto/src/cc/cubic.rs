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

#[cfg(test)]
mod tests {
    //! CUBIC driven directly with synthetic ACK sequences: a window's worth
    //! of one-segment ACKs per round trip.
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero

    use super::*;

    const MSS: u64 = 1000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Flow {
        c: Cubic,
        now: Instant,
        rtt: Duration,
    }

    impl Flow {
        fn new(rtt: Duration) -> Flow {
            Flow { c: Cubic::new(MSS, Some(rtt)), now: Instant::now(), rtt }
        }

        fn ack(&mut self, bytes: u64) {
            let s = RateSample { newly_acked: bytes, rtt: Some(self.rtt), ..RateSample::default() };
            self.c.on_ack(self.now, &s, 0, self.rtt);
        }

        /// One round trip: the window at its start acknowledged a segment
        /// at a time, evenly over the RTT.
        fn round(&mut self) {
            let flight = self.c.window();
            let acks = flight.div_ceil(MSS);
            let start = self.now;
            for k in 1..=acks {
                self.now = start + self.rtt.mul_f64(k as f64 / acks as f64);
                self.ack(MSS.min(flight - (k - 1) * MSS));
            }
        }

        /// A loss of a segment sent just now: a new episode.
        fn loss(&mut self) {
            self.now += ms(1);
            let sent = self.now;
            self.now += ms(1);
            self.c.on_loss(self.now, MSS, sent, 0);
        }
    }

    /// RFC 9438 §4.10 (RFC 5681): slow start adds a byte per byte
    /// delivered, doubling the window each round, paced at twice the window
    /// per RTT.
    #[test]
    fn slow_start_doubles_the_window_per_round() {
        let mut f = Flow::new(ms(100));
        assert_eq!(f.c.window(), 64 * MSS);
        let mut windows = vec![f.c.window()];
        for _ in 0..3 {
            f.round();
            windows.push(f.c.window());
        }
        assert_eq!(windows, [64_000, 128_000, 256_000, 512_000]);
        assert_eq!(f.c.pacing_rate(), Some((2.0 * 512_000.0 / 0.1) as u64));
        assert_eq!(Cubic::new(MSS, None).window(), 10 * MSS, "no handshake RTT: RFC 6928's ten");
    }

    /// RFC 9438 §4.6: one multiplicative decrease by β = 0.7 per episode;
    /// losses of segments sent before the reduction are the same episode.
    #[test]
    fn loss_reduces_the_window_by_beta_once_per_episode() {
        let mut f = Flow::new(ms(100));
        f.round();
        assert_eq!(f.c.window(), 128_000);
        let old = f.now;
        f.loss();
        assert_eq!(f.c.window(), 89_600);
        assert_eq!(f.c.ssthresh, 89_600, "out of slow start");
        assert_eq!(f.c.w_max, 128_000.0);
        assert_eq!(f.c.pacing_rate(), Some((1.2 * 89_600.0 / 0.1) as u64));
        // A segment sent before the reduction, lost: the same episode.
        f.c.on_loss(f.now + ms(5), MSS, old, 0);
        assert_eq!(f.c.window(), 89_600);
        // One sent after it: a new episode, with fast convergence (§4.7):
        // below the last W_max, the new W_max is cwnd·(1+β)/2.
        f.loss();
        assert_eq!(f.c.window(), (89_600.0 * BETA) as u64, "62,720 less the float rounding");
        assert!((f.c.w_max - 89_600.0 * 1.7 / 2.0).abs() < 1e-6, "{}", f.c.w_max);
    }

    /// RFC 9438 §4.2: after a reduction from W_max the window follows
    /// W_cubic(t) = C·(t−K)³ + W_max, concave up to W_max at t = K, convex
    /// beyond, with K = ∛(W_max·(1−β)/C).
    #[test]
    fn window_follows_the_cubic_curve_around_w_max() {
        let mut f = Flow::new(ms(100));
        // Out of slow start at 1000 segments.
        f.c.cwnd = 1000 * MSS;
        f.loss();
        assert_eq!(f.c.window(), 700 * MSS);
        let k = (300.0f64 / C).cbrt();
        assert!((f.c.k - k).abs() < 1e-9, "K = {} s", f.c.k);
        let epoch = f.c.epoch_start.unwrap();
        let w_max = 1000.0 * MSS as f64;
        // Window each second, for 2K seconds.
        let mut per_second = Vec::new();
        while f.now - epoch < Duration::from_secs_f64(2.0 * k) {
            f.round();
            let t = (f.now - epoch).as_secs_f64();
            let w = f.c.window() as f64;
            if t >= per_second.len() as f64 {
                per_second.push(w);
            }
            // It stays near the curve (it aims one RTT ahead); below
            // W_max until K, never far above.
            let curve = f.c.w_cubic(t);
            assert!((w - curve).abs() < 0.02 * w_max, "t {t:.1}: {w} vs W_cubic {curve}");
            if t < k - 0.5 {
                assert!(w < w_max, "t {t:.1}: {w}");
            }
        }
        let growth: Vec<f64> = per_second.windows(2).map(|w| w[1] - w[0]).collect();
        let before = (k - 1.0) as usize;
        // Concave: slower and slower towards K; convex: faster after it.
        assert!(growth.get(..before).unwrap().windows(2).all(|g| g[1] < g[0]), "{growth:?}");
        let after = (k + 1.0) as usize;
        assert!(growth.get(after..).unwrap().windows(2).all(|g| g[1] > g[0]), "{growth:?}");
        let at_k = per_second.get(k.round() as usize).unwrap();
        assert!((at_k - w_max).abs() < 0.01 * w_max, "{at_k} at K");
    }

    /// RFC 9438 §4.3: where Reno would grow faster (a small window, a short
    /// RTT) the window follows W_est, which gains α = 3(1−β)/(1+β)
    /// segments per round trip.
    #[test]
    fn reno_friendly_region_grows_by_alpha_per_round() {
        let mut f = Flow::new(ms(10));
        f.c.cwnd = 20 * MSS;
        f.loss();
        assert_eq!(f.c.window(), 14 * MSS);
        let epoch = f.c.epoch_start.unwrap();
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        let mut w = f.c.window() as f64;
        for round in 0..40 {
            f.round();
            let next = f.c.window() as f64;
            let t = (f.now - epoch).as_secs_f64();
            assert!(f.c.w_cubic(t) < f.c.w_est, "round {round}: the Reno-friendly region");
            // Per round: α segments (a little less, as the window grows
            // within the round; a little more, as it is W_est truncated).
            let gained = (next - w) / MSS as f64;
            assert!(gained > 0.9 * alpha && gained < 1.01 * alpha, "round {round}: {gained} segments");
            w = next;
        }
    }

    /// Losses never take the window below two segments (the timeout alone
    /// may go to one, RFC 5681 §3.1), and it grows back from there.
    #[test]
    fn window_never_below_the_minimum() {
        let mut f = Flow::new(ms(50));
        for _ in 0..30 {
            f.loss();
            assert!(f.c.window() >= minimum_window(MSS), "{}", f.c.window());
        }
        assert_eq!(f.c.window(), 2 * MSS);
        f.round();
        assert!(f.c.window() >= 2 * MSS);
        // RFC 9438 §4.8: the timeout goes to one segment, with ssthresh
        // floored at two.
        f.c.on_rto(f.now);
        assert_eq!(f.c.window(), MSS);
        assert_eq!(f.c.ssthresh, 2 * MSS);
    }

    /// RFC 9438 §4.8: after a timeout, slow start from one segment up to
    /// β·cwnd, then a new epoch whose K aims back at the old window.
    #[test]
    fn timeout_slow_starts_then_opens_a_new_epoch() {
        let mut f = Flow::new(ms(100));
        f.c.cwnd = 100 * MSS;
        f.loss();
        f.c.cwnd = 100 * MSS;
        let rto = f.now + ms(500);
        f.now = rto;
        f.c.on_rto(rto);
        assert_eq!((f.c.window(), f.c.ssthresh), (MSS, 70 * MSS));
        assert_eq!(f.c.w_max, 100_000.0);
        assert!(f.c.epoch_start.is_none());
        // A loss from before the timeout is not a new episode.
        f.c.on_loss(rto + ms(1), MSS, rto - ms(1), 0);
        assert_eq!(f.c.window(), MSS);
        let mut rounds = 0;
        while f.c.epoch_start.is_none() {
            f.round();
            rounds += 1;
        }
        // 1, 2, 4 .. 64 segments, then six more: ssthresh, and the ACK
        // after it opens the epoch.
        assert_eq!(rounds, 7);
        let k = (30.0f64 / C).cbrt();
        assert!((f.c.k - k).abs() < 1e-9, "K = {} s, from W_max 100 and cwnd 70 segments", f.c.k);
        assert!(f.c.window() > 70 * MSS && f.c.window() < 80 * MSS, "{}", f.c.window());
    }

    /// SRTT (for the pacing rate) is a 1/8 moving average; an ACK that
    /// delivers nothing changes nothing else.
    #[test]
    fn empty_ack_only_updates_srtt() {
        let mut f = Flow::new(ms(80));
        let w = f.c.window();
        f.rtt = ms(160);
        f.ack(0);
        assert_eq!(f.c.srtt, ms(90));
        assert_eq!(f.c.window(), w);
        assert_eq!(f.c.pacing_rate(), Some((2.0 * w as f64 / 0.09) as u64));
    }
}
