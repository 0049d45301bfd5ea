//! The delivery-rate sampler (draft-cheng-iccrg-delivery-rate-estimation):
//! each transmission takes a snapshot of the connection's delivery state
//! (§3.2); each acknowledgment turns the snapshot of the most recently sent
//! segment it delivers into one [`RateSample`] (§3.3).

use std::time::{Duration, Instant};

use crate::cc::RateSample;

/// The delivery state when a segment was (last) sent: the draft's
/// `P.delivered`, `P.delivered_time`, `P.first_sent_time` and
/// `P.is_app_limited`.
#[derive(Debug, Clone, Copy)]
pub(super) struct SendState {
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited: bool,
}

/// One newly delivered segment, as the sampler sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivery {
    pub index: u64,
    pub len: u64,
    /// Its latest transmission.
    pub sent_at: Instant,
    pub transmissions: u32,
    pub at_send: SendState,
}

/// The most recently sent segment an acknowledgment delivered: what its
/// rate sample, RTT sample and RACK update describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Newest {
    pub sent_at: Instant,
    pub index: u64,
    pub transmissions: u32,
}

/// The sample under construction while one acknowledgment is processed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AckSample {
    pub sample: RateSample,
    pub newest: Option<Newest>,
}

/// The connection's delivery counters (the draft's `C.delivered`,
/// `C.delivered_time`, `C.first_sent_time`).
#[derive(Debug, Clone, Default)]
pub(super) struct RateSampler {
    delivered: u64,
    delivered_time: Option<Instant>,
    first_sent_time: Option<Instant>,
}

impl RateSampler {
    /// Bytes delivered over the connection so far.
    pub(super) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// A segment leaves now; `flight_empty` says nothing was in flight
    /// before it, `app_limited` that the sender has nothing new after it.
    pub(super) fn on_send(&mut self, now: Instant, flight_empty: bool, app_limited: bool) -> SendState {
        if flight_empty {
            // §3.2: a new flight starts the clocks afresh, so that idle time
            // does not count as delivery time.
            self.first_sent_time = Some(now);
            self.delivered_time = Some(now);
        }
        SendState {
            delivered: self.delivered,
            delivered_time: self.delivered_time.unwrap_or(now),
            first_sent_time: self.first_sent_time.unwrap_or(now),
            app_limited,
        }
    }

    /// Accounts one newly delivered segment into `ack`. `min_rtt` is the
    /// path's minimum RTT before this acknowledgment.
    pub(super) fn on_delivered(&mut self, now: Instant, seg: Delivery, min_rtt: Option<Duration>, ack: &mut AckSample) {
        self.delivered += seg.len;
        self.delivered_time = Some(now);
        ack.sample.newly_acked += seg.len;
        // §3.3 UpdateRateSample: the sample describes the most recently sent
        // delivered segment (ties broken by segment number).
        let newer = ack.newest.is_none_or(|n| (seg.sent_at, seg.index) > (n.sent_at, n.index));
        if !newer {
            return;
        }
        ack.newest = Some(Newest { sent_at: seg.sent_at, index: seg.index, transmissions: seg.transmissions });
        let at_send = seg.at_send;
        let send_elapsed = seg.sent_at.saturating_duration_since(at_send.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(at_send.delivered_time);
        // §3.3: the longer of the two intervals, so that neither ACK
        // compression nor a send burst overstates the rate.
        let interval = send_elapsed.max(ack_elapsed);
        // §3.3: an interval shorter than the minimum RTT comes from ACK
        // compression or a spurious retransmission; no sample.
        let too_short = min_rtt.is_some_and(|m| interval < m);
        ack.sample.prior_delivered = at_send.delivered;
        ack.sample.app_limited = at_send.app_limited;
        self.first_sent_time = Some(seg.sent_at);
        let bytes = self.delivered.saturating_sub(at_send.delivered);
        ack.sample.delivery_rate =
            if interval.is_zero() || too_short { 0 } else { (bytes as f64 / interval.as_secs_f64()) as u64 };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn delivery(index: u64, len: u64, sent_at: Instant, at_send: SendState) -> Delivery {
        Delivery { index, len, sent_at, transmissions: 1, at_send }
    }

    /// Ten segments sent 1 ms apart from an empty flight, each acknowledged
    /// 50 ms after it left: the rate is the bytes delivered since the
    /// sampled segment's snapshot over the longer interval.
    #[test]
    fn rate_is_bytes_over_the_longer_of_send_and_ack_intervals() {
        let t0 = Instant::now();
        let mut r = RateSampler::default();
        let snaps: Vec<SendState> = (0..10u64).map(|i| r.on_send(t0 + ms(i), i == 0, false)).collect();
        // The first ACK, at 50 ms, delivers segment 0: its snapshot has
        // 0 delivered at time zero, so 1000 bytes over 50 ms.
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(50), delivery(0, 1000, t0, snaps[0]), None, &mut ack);
        assert_eq!(ack.sample.delivery_rate, 20_000);
        assert_eq!(ack.sample.newly_acked, 1000);
        assert_eq!(ack.newest.map(|n| n.index), Some(0));
        // Segment 9 left at 9 ms with nothing delivered (snapshot: delivered
        // 0 at time zero, first sent at zero); by 59 ms 2000 bytes arrived:
        // send_elapsed 9 ms, ack_elapsed 59 ms.
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(59), delivery(9, 1000, t0 + ms(9), snaps[9]), None, &mut ack);
        assert_eq!(r.delivered(), 2000);
        assert_eq!(ack.sample.delivery_rate, (2000.0 / 0.059) as u64);
        assert_eq!(ack.sample.prior_delivered, 0);
    }

    /// When the send interval is the longer one it decides: bytes that left
    /// over 100 ms are not taken as delivered in the 80 ms their ACKs took.
    #[test]
    fn send_interval_when_longer_bounds_the_rate() {
        let t0 = Instant::now();
        let mut r = RateSampler::default();
        let first = r.on_send(t0, true, false);
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(50), delivery(0, 1000, t0, first), None, &mut ack);
        // Segment 0's delivery moved first_sent_time to its send time (0)
        // and delivered_time to 50 ms; segment 1 leaves at 100 ms.
        let second = r.on_send(t0 + ms(100), false, false);
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(130), delivery(1, 1000, t0 + ms(100), second), None, &mut ack);
        // send_elapsed = 100 ms, ack_elapsed = 80 ms.
        assert_eq!(ack.sample.delivery_rate, 10_000, "1000 bytes over 100 ms, not over 80 ms");
    }

    #[test]
    fn interval_shorter_than_min_rtt_gives_no_sample() {
        let t0 = Instant::now();
        let mut r = RateSampler::default();
        let s = r.on_send(t0, true, false);
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(20), delivery(0, 1000, t0, s), Some(ms(30)), &mut ack);
        assert_eq!(ack.sample.delivery_rate, 0, "20 ms interval under a 30 ms min RTT");
        assert_eq!(ack.sample.newly_acked, 1000, "still counted as delivered");
        assert_eq!(r.delivered(), 1000);
        let s = r.on_send(t0 + ms(20), true, false);
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(50), delivery(1, 1000, t0 + ms(20), s), Some(ms(30)), &mut ack);
        assert_eq!(ack.sample.delivery_rate, 1000 * 1000 / 30, "an interval of exactly min RTT counts");
    }

    #[test]
    fn zero_interval_gives_no_sample() {
        let t0 = Instant::now();
        let mut r = RateSampler::default();
        let s = r.on_send(t0, true, false);
        let mut ack = AckSample::default();
        r.on_delivered(t0, delivery(0, 1000, t0, s), None, &mut ack);
        assert_eq!(ack.sample.delivery_rate, 0);
    }

    /// The sample carries the app-limited flag and prior_delivered of the
    /// most recently sent segment delivered, whatever order they come in.
    #[test]
    fn newest_segment_decides_app_limited_and_prior_delivered() {
        let t0 = Instant::now();
        let mut r = RateSampler::default();
        let a = r.on_send(t0, true, false);
        let b = r.on_send(t0 + ms(1), false, true);
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(40), delivery(1, 500, t0 + ms(1), b), None, &mut ack);
        r.on_delivered(t0 + ms(40), delivery(0, 1000, t0, a), None, &mut ack);
        assert!(ack.sample.app_limited, "segment 1 was sent app-limited and is the newest");
        assert_eq!(ack.newest.map(|n| n.index), Some(1));
        assert_eq!(ack.sample.newly_acked, 1500);
        // The flag is per segment: one sent with more to send is not.
        let c = r.on_send(t0 + ms(41), true, false);
        assert_eq!(c.delivered, 1500, "the snapshot holds what was delivered when it left");
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(80), delivery(2, 1000, t0 + ms(41), c), None, &mut ack);
        assert!(!ack.sample.app_limited);
        assert_eq!(ack.sample.prior_delivered, 1500);
    }

    /// Equal send times: the higher segment number is the newer one.
    #[test]
    fn ties_in_send_time_go_to_the_higher_segment() {
        let t0 = Instant::now();
        let mut r = RateSampler::default();
        let s = r.on_send(t0, true, false);
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(40), delivery(3, 1000, t0, s), None, &mut ack);
        r.on_delivered(t0 + ms(40), delivery(2, 1000, t0, s), None, &mut ack);
        assert_eq!(ack.newest.map(|n| n.index), Some(3));
    }

    /// After idle the clocks restart: the idle time is not delivery time.
    #[test]
    fn a_new_flight_restarts_the_clocks() {
        let t0 = Instant::now();
        let mut r = RateSampler::default();
        let s = r.on_send(t0, true, false);
        let mut ack = AckSample::default();
        r.on_delivered(t0 + ms(50), delivery(0, 1000, t0, s), None, &mut ack);
        let later = t0 + Duration::from_secs(5);
        let s = r.on_send(later, true, false);
        let mut ack = AckSample::default();
        r.on_delivered(later + ms(50), delivery(1, 1000, later, s), None, &mut ack);
        assert_eq!(ack.sample.delivery_rate, 20_000, "1000 bytes over 50 ms, not over 5 s");
        // Without the restart the snapshot would be the old delivery time.
        let stale = r.on_send(later + ms(60), false, false);
        assert_eq!(stale.delivered_time, later + ms(50));
    }
}
