//! Loss detection: RACK's time-based inference (RFC 8985 §6), tail-loss
//! probes (RFC 8985 §7) and the RFC 6298 retransmission timer as the last
//! resort. Each keeps its own state; the segments they declare lost are
//! marked on the [`Scoreboard`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::scoreboard::Scoreboard;
use crate::recovery::RttEstimator;
use crate::time::after;

/// The client's longest delayed-ACK wait, added to the probe timeout when
/// only one segment is out (RFC 8985 §7.2 WCDelAckT).
pub(super) const PEER_ACK_DELAY: Duration = Duration::from_millis(10);

/// What one RACK pass declared lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lost {
    pub bytes: u64,
    /// When the most recently sent of them left (one loss episode from the
    /// next, for the congestion controller).
    pub newest_sent: Instant,
}

/// RACK (RFC 8985 §6): the transmission order, and the most recently sent
/// segment known delivered.
#[derive(Debug, Default)]
pub(super) struct Rack {
    /// Transmission time and segment of the most recently sent segment that
    /// was delivered (RACK.xmit_ts with its segment as the tie-break).
    latest: Option<(Instant, u64)>,
    /// Its RTT (RACK.rtt).
    rtt: Duration,
    /// Transmissions in the order they happened: (time, segment, nth
    /// transmission). Walked from the oldest; entries for segments since
    /// acknowledged or sent again are skipped.
    sent_order: VecDeque<(Instant, u64, u32)>,
    /// When the oldest segment not yet due would be lost (RACK's reordering
    /// timer, RFC 8985 §6.2 step 5).
    reorder_deadline: Option<Instant>,
}

impl Rack {
    /// Segment `index` left now, for the `nth` time.
    pub(super) fn on_sent(&mut self, now: Instant, index: u64, nth: u32) {
        self.sent_order.push_back((now, index, nth));
    }

    /// RFC 8985 §6.2 step 2: a delivered segment sent at `sent_at`, whose
    /// RTT was `rtt`, becomes RACK's reference if it was sent more recently.
    /// The caller has already set aside samples that may be spurious.
    pub(super) fn on_delivered(&mut self, sent_at: Instant, index: u64, rtt: Duration) {
        if self.latest.is_none_or(|r| (sent_at, index) > r) {
            self.latest = Some((sent_at, index));
            self.rtt = rtt;
        }
    }

    pub(super) fn reorder_deadline(&self) -> Option<Instant> {
        self.reorder_deadline
    }

    pub(super) fn reorder_due(&self, now: Instant) -> bool {
        self.reorder_deadline.is_some_and(|t| now >= t)
    }

    pub(super) fn cancel_reorder_timer(&mut self) {
        self.reorder_deadline = None;
    }

    /// RFC 8985 §6.2 step 5: a segment sent before the reference and not
    /// delivered a reordering window after the reference's RTT is lost; the
    /// first one not yet due sets the reordering timer.
    pub(super) fn detect_losses(
        &mut self,
        now: Instant,
        srtt: Option<Duration>,
        min_rtt: Option<Duration>,
        board: &mut Scoreboard,
    ) -> Option<Lost> {
        let reference = self.latest?;
        let srtt = srtt.unwrap_or(self.rtt);
        // Step 4: RFC 8985 starts with no reordering window until the path has
        // shown reordering; in simulation (5% loss, 5% reordering, 10 MiB)
        // that cost more spurious retransmissions than it saved (1.32-1.38 s
        // against 1.27-1.29 s), so the window is always min_RTT/4.
        let reo_wnd = (min_rtt.unwrap_or(srtt) / 4).min(srtt);
        self.reorder_deadline = None;
        let mut lost: Option<Lost> = None;
        while let Some(&(sent_at, index, nth)) = self.sent_order.front() {
            if !board.in_flight_from(index, nth) {
                self.sent_order.pop_front();
                continue;
            }
            if (sent_at, index) >= reference {
                break;
            }
            let deadline = after(sent_at, self.rtt.saturating_add(reo_wnd));
            if now < deadline {
                self.reorder_deadline = Some(deadline);
                break;
            }
            self.sent_order.pop_front();
            if let Some(len) = board.mark_lost(index) {
                let bytes = lost.map_or(0, |l| l.bytes) + len;
                lost = Some(Lost { bytes, newest_sent: sent_at });
            }
        }
        lost
    }
}

/// Tail-loss probing (RFC 8985 §7): the probe timer, a probe waiting to be
/// sent, and one sent that no acknowledgment has answered yet.
#[derive(Debug, Default)]
pub(super) struct Tlp {
    deadline: Option<Instant>,
    probe_due: bool,
    /// RFC 8985 §7.2: no new probe timer until an acknowledgment delivers
    /// data after a probe.
    outstanding: bool,
}

impl Tlp {
    /// RFC 8985 §7.2: arms the probe timer, only with no probe outstanding,
    /// not in loss recovery and not while the RTO is backed off. PTO =
    /// 2·SRTT, plus the peer's ACK delay when one segment is out, and never
    /// beyond the RTO.
    pub(super) fn arm(
        &mut self,
        now: Instant,
        rtt: &RttEstimator,
        in_recovery: bool,
        one_segment_out: bool,
        rto_deadline: Option<Instant>,
    ) {
        if self.outstanding || in_recovery || rtt.backoff() > 0 {
            return;
        }
        let Some(srtt) = rtt.srtt() else { return };
        let mut pto = srtt * 2;
        if one_segment_out {
            pto += PEER_ACK_DELAY;
        }
        let at = after(now, pto);
        self.deadline = Some(rto_deadline.map_or(at, |rto| at.min(rto)));
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub(super) fn cancel_timer(&mut self) {
        self.deadline = None;
    }

    /// RFC 8985 §7.3: the probe timer fired; a probe is due.
    pub(super) fn on_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|t| now >= t) {
            self.deadline = None;
            self.probe_due = true;
        }
    }

    pub(super) fn probe_due(&self) -> bool {
        self.probe_due
    }

    /// Whether a probe is due; it is the caller's to send now or never.
    pub(super) fn take_probe(&mut self) -> bool {
        std::mem::take(&mut self.probe_due)
    }

    /// RFC 8985 §7.3: a probe went out; the RTO guards the tail now, not
    /// another probe.
    pub(super) fn on_probe_sent(&mut self) {
        self.outstanding = true;
        self.deadline = None;
    }

    /// An acknowledgment delivered data: the episode is over.
    pub(super) fn on_delivered(&mut self) {
        self.probe_due = false;
        self.outstanding = false;
        self.deadline = None;
    }

    /// The RTO fired: it has taken over.
    pub(super) fn reset(&mut self) {
        *self = Tlp::default();
    }
}

/// The retransmission timer (RFC 6298 §5).
#[derive(Debug, Default)]
pub(super) struct RtoTimer {
    deadline: Option<Instant>,
}

impl RtoTimer {
    /// RFC 6298 §5.1: start the timer if it is not running.
    pub(super) fn start(&mut self, now: Instant, rto: Duration) {
        if self.deadline.is_none() {
            self.restart(now, rto);
        }
    }

    /// RFC 6298 §5.3: restart it for what is left.
    pub(super) fn restart(&mut self, now: Instant, rto: Duration) {
        self.deadline = Some(after(now, rto));
    }

    /// RFC 6298 §5.2: nothing is outstanding.
    pub(super) fn stop(&mut self) {
        self.deadline = None;
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub(super) fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero

    use super::super::rate::RateSampler;
    use super::super::scoreboard::SegState;
    use super::*;
    use crate::recovery::RtoConfig;

    const SEG: u64 = 1000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A 10-segment page with `n` segments sent, segment `i` at `t0 + i` ms,
    /// and RACK told of each transmission.
    fn sent(n: u64, t0: Instant) -> (Scoreboard, Rack) {
        let mut board = Scoreboard::new(10 * SEG, SEG);
        let mut rack = Rack::default();
        for i in 0..n {
            let at_send = RateSampler::default().on_send(t0, true, false);
            let s = board.record_send(t0 + ms(i), i, 0, at_send);
            rack.on_sent(t0 + ms(i), i, s.transmissions);
        }
        (board, rack)
    }

    fn state(b: &Scoreboard, i: u64) -> Option<SegState> {
        b.get(i).map(|s| s.state)
    }

    /// RFC 8985 §6.2: with segment 4 delivered after 50 ms and a 10 ms
    /// reordering window, segment `i < 4` is lost at `i + 60` ms, not before;
    /// until then the reordering timer waits for the oldest.
    #[test]
    fn rack_declares_loss_only_after_rack_rtt_plus_reordering_window() {
        let t0 = Instant::now();
        let (mut b, mut rack) = sent(6, t0);
        b.on_sack(&[(4 * SEG, 5 * SEG)], |_, _| {});
        rack.on_delivered(t0 + ms(4), 4, ms(50));
        let (srtt, min_rtt) = (Some(ms(50)), Some(ms(40)));
        assert_eq!(rack.detect_losses(t0 + ms(54), srtt, min_rtt, &mut b), None);
        assert_eq!(rack.reorder_deadline(), Some(t0 + ms(60)), "reordering timer for segment 0");
        assert!(!rack.reorder_due(t0 + ms(59)) && rack.reorder_due(t0 + ms(60)));
        assert_eq!(b.in_flight(), 5 * SEG);
        assert_eq!(rack.detect_losses(t0 + ms(60) - Duration::from_micros(1), srtt, min_rtt, &mut b), None);
        let lost = rack.detect_losses(t0 + ms(61), srtt, min_rtt, &mut b);
        assert_eq!(lost, Some(Lost { bytes: 2 * SEG, newest_sent: t0 + ms(1) }));
        assert_eq!(
            (state(&b, 0), state(&b, 1), state(&b, 2)),
            (Some(SegState::Lost), Some(SegState::Lost), Some(SegState::InFlight))
        );
        assert_eq!(rack.reorder_deadline(), Some(t0 + ms(62)));
        assert_eq!(b.next_lost(), Some(0));
        // Much later: 2 and 3 go too, but never the reference or what was
        // sent after it, and no timer is left to wait for.
        let lost = rack.detect_losses(t0 + ms(10_000), srtt, min_rtt, &mut b);
        assert_eq!(lost.map(|l| l.bytes), Some(2 * SEG));
        assert_eq!((state(&b, 4), state(&b, 5)), (Some(SegState::Sacked), Some(SegState::InFlight)));
        assert_eq!(rack.reorder_deadline(), None);
        assert_eq!(b.in_flight(), SEG);
        // Already declared: not counted again.
        assert_eq!(rack.detect_losses(t0 + ms(20_000), srtt, min_rtt, &mut b), None);
    }

    /// The window is min_RTT/4 (SRTT/4 without a min RTT), never more than
    /// SRTT; without SRTT, RACK's own RTT stands in.
    #[test]
    fn reordering_window_is_a_quarter_of_min_rtt_capped_at_srtt() {
        let t0 = Instant::now();
        let deadline = |srtt: Option<u64>, min_rtt: Option<u64>| {
            let (mut b, mut rack) = sent(2, t0);
            rack.on_delivered(t0 + ms(1), 1, ms(50));
            assert_eq!(rack.detect_losses(t0 + ms(51), srtt.map(ms), min_rtt.map(ms), &mut b), None);
            rack.reorder_deadline().map(|t| t - t0)
        };
        // Segment 0 sent at 0: 50 ms RACK RTT plus the window.
        assert_eq!(deadline(Some(50), Some(40)), Some(ms(60)));
        assert_eq!(deadline(Some(80), None), Some(ms(70)));
        assert_eq!(deadline(None, None), Some(ms(50) + ms(50) / 4));
        assert_eq!(deadline(Some(20), Some(400)), Some(ms(70)), "capped at SRTT");
    }

    /// An entry of an earlier transmission is skipped: a segment sent again
    /// is judged by its latest copy, which here left after the reference.
    #[test]
    fn rack_skips_transmissions_superseded_by_a_retransmission() {
        let t0 = Instant::now();
        let (mut b, mut rack) = sent(6, t0);
        b.mark_lost(1);
        b.pop_lost();
        let at_send = RateSampler::default().on_send(t0, true, false);
        let again = b.record_send(t0 + ms(30), 1, 0, at_send);
        rack.on_sent(t0 + ms(30), 1, again.transmissions);
        b.on_sack(&[(4 * SEG, 5 * SEG)], |_, _| {});
        rack.on_delivered(t0 + ms(4), 4, ms(50));
        let lost = rack.detect_losses(t0 + ms(70), Some(ms(50)), Some(ms(40)), &mut b);
        assert_eq!(lost, Some(Lost { bytes: 3 * SEG, newest_sent: t0 + ms(3) }), "0, 2 and 3");
        assert_eq!(state(&b, 1), Some(SegState::InFlight));
        // Its delivery moves the reference past segment 5.
        b.on_sack(&[(SEG, 2 * SEG)], |_, _| {});
        rack.on_delivered(t0 + ms(30), 1, ms(45));
        let lost = rack.detect_losses(t0 + ms(100), Some(ms(50)), Some(ms(40)), &mut b);
        assert_eq!(lost, Some(Lost { bytes: SEG, newest_sent: t0 + ms(5) }));
    }

    #[test]
    fn rack_reference_only_moves_to_later_transmissions() {
        let t0 = Instant::now();
        let (mut b, mut rack) = sent(4, t0);
        assert_eq!(rack.detect_losses(t0 + ms(10_000), Some(ms(50)), None, &mut b), None, "no reference yet");
        assert_eq!(b.in_flight(), 4 * SEG);
        rack.on_delivered(t0 + ms(2), 2, ms(50));
        // An older segment's delivery (with a longer RTT) changes nothing.
        rack.on_delivered(t0 + ms(1), 1, ms(500));
        rack.detect_losses(t0 + ms(51), Some(ms(50)), Some(ms(40)), &mut b);
        assert_eq!(rack.reorder_deadline(), Some(t0 + ms(60)), "RACK RTT is still 50 ms");
        rack.cancel_reorder_timer();
        assert_eq!(rack.reorder_deadline(), None);
    }

    fn estimator(srtt: Option<u64>) -> RttEstimator {
        let mut e = RttEstimator::new(RtoConfig::default());
        if let Some(s) = srtt {
            e.on_sample(ms(s));
        }
        e
    }

    /// RFC 8985 §7.2: PTO = 2·SRTT, plus the peer's ACK delay with one
    /// segment out, never beyond the RTO.
    #[test]
    fn probe_timeout_is_twice_srtt_plus_ack_delay_for_one_segment() {
        let t0 = Instant::now();
        let rtt = estimator(Some(100));
        let mut tlp = Tlp::default();
        tlp.arm(t0, &rtt, false, false, None);
        assert_eq!(tlp.deadline(), Some(t0 + ms(200)));
        tlp.arm(t0, &rtt, false, true, None);
        assert_eq!(tlp.deadline(), Some(t0 + ms(200) + PEER_ACK_DELAY));
        tlp.arm(t0, &rtt, false, false, Some(t0 + ms(150)));
        assert_eq!(tlp.deadline(), Some(t0 + ms(150)), "capped at the RTO");
        tlp.arm(t0, &rtt, false, false, Some(t0 + ms(900)));
        assert_eq!(tlp.deadline(), Some(t0 + ms(200)));
    }

    /// RFC 8985 §7.2: no probe timer while a probe is outstanding, in loss
    /// recovery, with the RTO backed off, or before any RTT sample.
    #[test]
    fn probe_is_armed_only_under_the_rfc_8985_conditions() {
        let t0 = Instant::now();
        let rtt = estimator(Some(100));
        let mut tlp = Tlp::default();
        tlp.arm(t0, &rtt, true, false, None);
        assert_eq!(tlp.deadline(), None, "in recovery");
        tlp.arm(t0, &estimator(None), false, false, None);
        assert_eq!(tlp.deadline(), None, "no SRTT");
        let mut backed_off = estimator(Some(100));
        backed_off.on_timeout();
        tlp.arm(t0, &backed_off, false, false, None);
        assert_eq!(tlp.deadline(), None, "RTO backed off");
        tlp.on_probe_sent();
        tlp.arm(t0, &rtt, false, false, None);
        assert_eq!(tlp.deadline(), None, "probe outstanding");
        // An acknowledgment that delivers data ends the episode.
        tlp.on_delivered();
        tlp.arm(t0, &rtt, false, false, None);
        assert_eq!(tlp.deadline(), Some(t0 + ms(200)));
    }

    #[test]
    fn probe_is_due_after_the_timeout_and_taken_once() {
        let t0 = Instant::now();
        let mut tlp = Tlp::default();
        tlp.arm(t0, &estimator(Some(100)), false, false, None);
        tlp.on_timeout(t0 + ms(199));
        assert!(!tlp.probe_due());
        tlp.on_timeout(t0 + ms(200));
        assert!(tlp.probe_due());
        assert_eq!(tlp.deadline(), None, "the timer is spent");
        assert!(tlp.take_probe());
        assert!(!tlp.take_probe() && !tlp.probe_due());
        // Delivery cancels a probe not yet sent, and its timer.
        tlp.arm(t0, &estimator(Some(100)), false, false, None);
        tlp.on_timeout(t0 + ms(300));
        tlp.on_delivered();
        assert!(!tlp.probe_due());
        // The RTO clears all of it.
        tlp.arm(t0, &estimator(Some(100)), false, false, None);
        tlp.on_probe_sent();
        tlp.reset();
        tlp.arm(t0, &estimator(Some(100)), false, false, None);
        assert_eq!(tlp.deadline(), Some(t0 + ms(200)), "not outstanding after the reset");
        tlp.cancel_timer();
        assert_eq!(tlp.deadline(), None);
    }

    /// RFC 6298 §5.1-5.3: started only if not running, restarted, stopped.
    #[test]
    fn rto_timer_starts_once_restarts_and_stops() {
        let t0 = Instant::now();
        let mut rto = RtoTimer::default();
        assert!(!rto.expired(t0 + ms(10_000)));
        rto.start(t0, ms(300));
        rto.start(t0 + ms(100), ms(300));
        assert_eq!(rto.deadline(), Some(t0 + ms(300)), "a running timer is not pushed back");
        assert!(!rto.expired(t0 + ms(299)) && rto.expired(t0 + ms(300)));
        rto.restart(t0 + ms(100), ms(300));
        assert_eq!(rto.deadline(), Some(t0 + ms(400)));
        rto.stop();
        assert_eq!(rto.deadline(), None);
        rto.restart(t0, Duration::MAX);
        assert!(rto.deadline().is_some_and(|t| t > t0 + Duration::from_secs(1 << 29)), "saturates, does not overflow");
    }
}
