//! The server's data sender, shared by both modes: a scoreboard of segments
//! in flight, loss detection and retransmission, congestion and flow
//! control, pacing.
//!
//! Baseline mode is this sender held to one 512-byte segment in flight, with
//! only the RFC 6298 timer for recovery: stop-and-wait. Fast mode opens the
//! window to what the congestion controller and the client's receive window
//! allow, learns of losses from selective acknowledgments and RACK (RFC
//! 8985) instead of waiting for the timer, probes the tail (TLP) and paces.
//!
//! The parts, each with its own state and tests:
//!
//! - [`scoreboard`]: the segments between the cumulative acknowledgment and
//!   the next new one, their states, the SACK ranges, bytes in flight.
//! - [`loss`]: RACK, tail-loss probes and the retransmission timer.
//! - [`rate`]: the delivery-rate sampler that feeds the congestion
//!   controller (draft-cheng-iccrg-delivery-rate-estimation).
//! - [`pacer`]: spacing at the controller's pacing rate.
//!
//! This module composes them: [`Sender::on_ack`], [`Sender::poll_send`] and
//! [`Sender::handle_timeout`] call on each part in the order of the RFC
//! procedures.

mod loss;
mod pacer;
mod rate;
mod scoreboard;

use std::time::{Duration, Instant};

use crate::cc::Controller;
use crate::recovery::RttEstimator;
use loss::{Rack, RtoTimer, Tlp};
use pacer::Pacer;
use rate::{AckSample, Newest, RateSampler};
use scoreboard::Scoreboard;

/// What the sender wants sent next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Send {
    /// Segment number.
    pub index: u64,
    /// Whether it was sent before.
    pub retransmission: bool,
    /// The tag given when it was first sent.
    pub tag: u32,
}

/// How the sender behaves: baseline or fast.
#[derive(Debug)]
pub(crate) struct SenderParams {
    /// Payload bytes per segment.
    pub segment: u64,
    /// Fast mode: SACK, RACK-TLP, pacing, congestion control.
    pub fast: bool,
    /// The congestion controller (a fixed one-segment window in baseline).
    pub cc: Box<dyn Controller>,
    /// Bytes beyond the cumulative acknowledgment the client accepts.
    pub peer_window: u64,
    /// Cap on `peer_window`, whatever the client says.
    pub window_cap: u64,
}

#[derive(Debug)]
pub(crate) struct Sender {
    fast: bool,
    board: Scoreboard,
    /// Segments examined by acknowledgment processing, for the tests that
    /// bound the work one ACK can cause.
    pub(crate) ack_work: u64,
    /// The memory budget held a new segment back while the scoreboard held
    /// this many: nothing new is "sendable" until it holds fewer (an ACK
    /// shrinks it), so the connection does not ask for a pacing wake-up it
    /// cannot use (which would spin the event loop).
    budget_blocked: Option<u64>,
    pub(crate) rtt: RttEstimator,
    min_rtt: Option<Duration>,
    cc: Box<dyn Controller>,
    peer_window: u64,
    /// Largest receive window believed, whatever the client offers: keeps
    /// the scoreboard and sequence distances bounded (RFC 7323 §2.3).
    window_cap: u64,
    rack: Rack,
    tlp: Tlp,
    rto: RtoTimer,
    pacer: Pacer,
    rate: RateSampler,
    pub(crate) retransmissions: u64,
    /// Page bytes that exist to send: all of them, or for a page still
    /// arriving, what has arrived (docs/PROTOCOL.md §9.7).
    available: u64,
}

impl Sender {
    #[cfg(test)]
    pub(crate) fn new(page_len: u64, params: SenderParams, rtt: RttEstimator) -> Sender {
        Sender::growing(page_len, Some(page_len), params, rtt)
    }

    /// A sender for a page of which `available` bytes exist so far and
    /// whose length is `len` once known; see [`grow`](Self::grow).
    pub(crate) fn growing(available: u64, len: Option<u64>, params: SenderParams, rtt: RttEstimator) -> Sender {
        Sender {
            available: len.map_or(available, |l| available.min(l)),
            fast: params.fast,
            board: Scoreboard::new(len.unwrap_or(scoreboard::UNBOUNDED), params.segment),
            ack_work: 0,
            budget_blocked: None,
            rtt,
            min_rtt: None,
            cc: params.cc,
            peer_window: params.peer_window.min(params.window_cap),
            window_cap: params.window_cap,
            rack: Rack::default(),
            tlp: Tlp::default(),
            rto: RtoTimer::default(),
            pacer: Pacer::default(),
            rate: RateSampler::default(),
            retransmissions: 0,
        }
    }

    /// More of a streamed page has arrived: `available` bytes in all, and
    /// its length once known. Until then only whole segments go out, so
    /// segment boundaries stay where a known length would put them.
    pub(crate) fn grow(&mut self, available: u64, len: Option<u64>) {
        if let (Some(len), None) = (len, self.board.page_len()) {
            self.board.set_page_len(len);
        }
        self.available = self.available.max(available);
    }

    /// Page bytes that exist to send.
    pub(crate) fn available(&self) -> u64 {
        self.available
    }

    /// The page's length, once known.
    pub(crate) fn known_len(&self) -> Option<u64> {
        self.board.page_len()
    }

    /// Whether new segment `index` exists to be sent.
    fn exists(&self, index: u64) -> bool {
        index < self.board.total() && self.range(index).1 <= self.available
    }

    /// Page byte range of segment `index`.
    pub(crate) fn range(&self, index: u64) -> (u64, u64) {
        self.board.range(index)
    }

    /// Whether segment `index` is the last one (it carries FIN).
    pub(crate) fn is_last(&self, index: u64) -> bool {
        self.board.is_last(index)
    }

    /// Page bytes cumulatively acknowledged.
    pub(crate) fn acked(&self) -> u64 {
        self.range(self.board.una()).0
    }

    /// First byte never sent (the end of what may be acknowledged).
    pub(crate) fn sent_end(&self) -> u64 {
        self.range(self.board.nxt()).0
    }

    /// Segments on the scoreboard: what this connection's memory grows with.
    pub(crate) fn tracked(&self) -> u64 {
        self.board.len()
    }

    /// Bytes delivered (acknowledged cumulatively or selectively) so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.rate.delivered()
    }

    /// Whether every segment, the FIN one included, has been acknowledged.
    pub(crate) fn all_acked(&self) -> bool {
        self.board.una() >= self.board.total()
    }

    /// Processes an acknowledgment: everything before page offset `ack` is
    /// delivered, and so is every segment inside one of the `sacked` offset
    /// ranges. `ack` must lie between [`acked`](Self::acked) and
    /// [`sent_end`](Self::sent_end); `fin` says the FIN is acknowledged too.
    pub(crate) fn on_ack(&mut self, now: Instant, ack: u64, fin: bool, sacked: &[(u64, u64)], window: Option<u64>) {
        if let Some(w) = window {
            self.peer_window = w.min(self.window_cap);
        }
        let una_before = self.board.una();
        // Mark what is delivered, cumulatively then selectively, sampling
        // the delivery rate as it goes (draft-cheng §3.3).
        let mut ack_sample = AckSample::default();
        let (rate, min_rtt) = (&mut self.rate, self.min_rtt);
        let mut delivered = |index, seg: &scoreboard::Seg| {
            rate.on_delivered(now, seg.delivery(index), min_rtt, &mut ack_sample);
        };
        self.ack_work += self.board.on_cumulative_ack(ack, fin, &mut delivered);
        self.ack_work += self.board.on_sack(sacked, &mut delivered);
        let progress = self.board.una() != una_before || ack_sample.newest.is_some();
        if let Some(newest) = ack_sample.newest {
            self.on_newest_delivered(now, newest, ack_sample);
        }
        if self.fast {
            self.detect_losses(now);
        }
        self.board.prune_lost();
        if progress {
            // RFC 6298 §5.2–5.3: restart the timer for what is left, or stop
            // it. A selective acknowledgment counts as new data too (as in
            // RFC 8985 §8), or one lost segment would let the timer run out
            // while SACKs show the path is delivering, and send the whole
            // window again.
            if self.board.una() < self.board.nxt() {
                self.rto.restart(now, self.rtt.rto());
            } else {
                self.rto.stop();
            }
        }
        if self.all_acked() {
            self.rto.stop();
            self.tlp.cancel_timer();
            self.rack.cancel_reorder_timer();
        } else if self.board.in_flight() > 0 && ack_sample.newest.is_some() {
            self.arm_tlp(now);
        }
    }

    /// The RTT, RACK and congestion-control updates from the most recently
    /// sent segment an acknowledgment delivered.
    fn on_newest_delivered(&mut self, now: Instant, newest: Newest, ack_sample: AckSample) {
        let mut sample = ack_sample.sample;
        let rtt = now.saturating_duration_since(newest.sent_at);
        // Karn's rule for the RFC 6298 estimator: only a segment sent once
        // measures the RTT.
        if newest.transmissions == 1 {
            self.rtt.on_sample(rtt);
            sample.rtt = Some(rtt);
        }
        // RFC 8985 §6.2 step 2: a retransmitted segment acknowledged sooner
        // than the minimum RTT was probably delivered by its first copy.
        // Before there is a minimum, none is taken: after a spurious RTO the
        // original's ACK, timed from the resend, would set the minimum to
        // microseconds for good (and with it RACK's window and the pacer's
        // bursts).
        if newest.transmissions == 1 || self.min_rtt.is_some_and(|m| rtt >= m) {
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
            self.rack.on_delivered(newest.sent_at, newest.index, rtt);
        }
        sample.delivered = self.rate.delivered();
        let min_rtt = self.min_rtt.unwrap_or(rtt);
        self.cc.on_ack(now, &sample, self.board.in_flight(), min_rtt);
        self.tlp.on_delivered();
    }

    /// RACK loss detection, and the congestion controller told of what it
    /// found.
    fn detect_losses(&mut self, now: Instant) {
        if let Some(lost) = self.rack.detect_losses(now, self.rtt.srtt(), self.min_rtt, &mut self.board) {
            self.cc.on_loss(now, lost.bytes, lost.newest_sent, self.board.in_flight());
        }
    }

    /// The probe timer, in fast mode only (baseline has the RTO alone).
    fn arm_tlp(&mut self, now: Instant) {
        if !self.fast {
            return;
        }
        let one_segment_out = self.board.in_flight() <= self.board.segment();
        self.tlp.arm(now, &self.rtt, self.board.in_recovery(), one_segment_out, self.rto.deadline());
    }

    /// Whether a new segment fits the client's receive window.
    fn window_allows(&self, index: u64) -> bool {
        self.board.in_flight() == 0 || self.range(index).1.saturating_sub(self.acked()) <= self.peer_window
    }

    fn cwnd_allows(&self, len: u64) -> bool {
        let in_flight = self.board.in_flight();
        in_flight == 0 || in_flight + len <= self.cc.window()
    }

    /// The next segment to send, if the windows and the pacer allow one now.
    /// A new segment is stamped with `tag`; one sent again keeps its own. A
    /// new segment is sent only while fewer than `max_tracked` are on the
    /// scoreboard (the server's memory budget; one may always be).
    pub(crate) fn poll_send(&mut self, now: Instant, tag: u32, max_tracked: u64) -> Option<Send> {
        if !self.pacer.allows(now) {
            return None;
        }
        // Lost segments first, then new ones; a probe may go beyond the
        // congestion window by one segment (RFC 8985 §7.3).
        let probe = self.tlp.take_probe();
        if let Some(index) = self.board.next_lost() {
            if !(probe || self.cwnd_allows(self.board.len_of(index))) {
                return None;
            }
            self.board.pop_lost();
            return Some(self.send(now, index, tag, probe));
        }
        let room = self.board.is_empty() || self.board.len() < max_tracked;
        self.budget_blocked = (!room).then(|| self.board.len());
        let index = self.board.nxt();
        if self.exists(index) && room {
            let fits = probe || self.cwnd_allows(self.board.len_of(index));
            if fits && self.window_allows(index) {
                return Some(self.send(now, index, tag, probe));
            }
        }
        if probe {
            // Nothing new may go: probe with the last segment in flight.
            if let Some(index) = self.board.last_in_flight() {
                return Some(self.send(now, index, tag, true));
            }
        }
        None
    }

    /// Sends segment `index`, as a tail-loss probe if `probe`.
    fn send(&mut self, now: Instant, index: u64, tag: u32, probe: bool) -> Send {
        let send = self.record_send(now, index, tag);
        self.board.prune_lost();
        if probe {
            // RFC 8985 §7.3: after a probe, the RTO guards the tail, not
            // another probe.
            self.tlp.on_probe_sent();
            self.rto.restart(now, self.rtt.rto());
        }
        send
    }

    fn record_send(&mut self, now: Instant, index: u64, tag: u32) -> Send {
        let len = self.board.len_of(index);
        // draft-cheng §3.2: snapshot the delivery state. The sender is
        // app-limited once no new segment is left after this one.
        let app_limited = !self.exists(self.board.nxt().max(index + 1));
        let at_send = self.rate.on_send(now, self.board.in_flight() == 0, app_limited);
        let sent = self.board.record_send(now, index, tag, at_send);
        if self.fast {
            self.rack.on_sent(now, index, sent.transmissions);
        }
        if sent.retransmission {
            self.retransmissions += 1;
        }
        self.cc.on_sent(now, len, self.board.in_flight());
        let window = self.min_rtt.map(|rtt| (self.cc.window(), rtt));
        self.pacer.on_sent(now, len, self.cc.pacing_rate(), window);
        self.rto.start(now, self.rtt.rto());
        if !sent.retransmission {
            self.arm_tlp(now);
        }
        Send { index, retransmission: sent.retransmission, tag: sent.tag }
    }

    /// Whether the windows allow a segment now (the pacer aside).
    fn has_sendable(&self) -> bool {
        if self.tlp.probe_due() {
            return true;
        }
        if let Some(seg) = self.board.first_lost() {
            return self.cwnd_allows(u64::from(seg.len));
        }
        let index = self.board.nxt();
        let budget = self.budget_blocked.is_none_or(|held| self.board.len() < held);
        budget && self.exists(index) && self.cwnd_allows(self.board.len_of(index)) && self.window_allows(index)
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let pacing = self.pacer.next_send().filter(|_| self.has_sendable());
        [self.rto.deadline(), self.tlp.deadline(), self.rack.reorder_deadline(), pacing].into_iter().flatten().min()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.rto.expired(now) {
            self.on_rto(now);
            return;
        }
        if self.rack.reorder_due(now) {
            self.detect_losses(now);
            self.board.prune_lost();
        }
        self.tlp.on_timeout(now);
    }

    /// RFC 6298 §5.4–5.6 with RFC 8985 §6.3: everything outstanding is
    /// presumed lost; resend from the first, back off.
    fn on_rto(&mut self, now: Instant) {
        self.rto.stop();
        self.tlp.reset();
        self.rack.cancel_reorder_timer();
        self.rtt.on_timeout();
        self.cc.on_rto(now);
        self.board.mark_all_lost();
        self.pacer.reset();
    }

    /// The client has moved. If the timer fired meanwhile, the old address
    /// had gone silent and what went there since is lost: resend everything
    /// outstanding at once, with the timer and its backoff started afresh
    /// (neither the losses nor the timeouts tell of congestion, so the
    /// controller keeps its state: a NAT rebinding changes the port, not
    /// the path, RFC 9000 §9.4). Without a timeout, ACKs kept coming and
    /// the recovery already knows what is lost.
    pub(crate) fn on_path_change(&mut self) {
        if self.rtt.backoff() == 0 {
            return;
        }
        self.rto.stop();
        self.tlp.reset();
        self.rack.cancel_reorder_timer();
        self.rtt.reset_backoff();
        self.board.mark_all_lost();
        self.pacer.reset();
    }

    pub(crate) fn wants_transmit(&self, now: Instant) -> bool {
        self.has_sendable() && self.pacer.allows(now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero

    use super::*;
    use crate::cc::Fixed;
    use crate::recovery::RtoConfig;

    const SEG: u64 = 1000;

    fn sender(page_len: u64, window: u64) -> Sender {
        sender_in_mode(page_len, window, true)
    }

    fn sender_in_mode(page_len: u64, window: u64, fast: bool) -> Sender {
        Sender::new(page_len, params(window, fast), RttEstimator::new(RtoConfig::default()))
    }

    /// Segments of SEG, a fixed window of `window` bytes, the client's too.
    fn params(window: u64, fast: bool) -> SenderParams {
        SenderParams { segment: SEG, fast, cc: Box::new(Fixed(window)), peer_window: window, window_cap: window }
    }

    /// Sends everything the windows allow at `now`.
    fn send_all(s: &mut Sender, now: Instant) -> Vec<Send> {
        std::iter::from_fn(|| s.poll_send(now, 0, u64::MAX)).collect()
    }

    /// A page still arriving (docs/PROTOCOL.md §9.7): only whole segments
    /// of what exists go out, and the end once the length is known, so
    /// segment boundaries are those a known length would have given.
    #[test]
    fn a_growing_page_sends_whole_segments_of_what_exists_then_its_end() {
        let now = Instant::now();
        let mut s = Sender::growing(0, None, params(100 * SEG, true), RttEstimator::new(RtoConfig::default()));
        assert!(send_all(&mut s, now).is_empty() && !s.wants_transmit(now), "nothing exists yet");
        s.grow(2 * SEG + 500, None);
        let sent: Vec<u64> = send_all(&mut s, now).iter().map(|x| x.index).collect();
        assert_eq!(sent, [0, 1], "not the part of a third segment");
        assert!(sent.iter().all(|&i| !s.is_last(i) && s.range(i).1 - s.range(i).0 == SEG));
        assert_eq!(s.known_len(), None);
        // The end: 3,200 bytes in all, the last segment short and FIN.
        s.grow(3 * SEG + 200, Some(3 * SEG + 200));
        let sent: Vec<u64> = send_all(&mut s, now).iter().map(|x| x.index).collect();
        assert_eq!(sent, [2, 3]);
        assert!(s.is_last(3) && s.range(3) == (3 * SEG, 3 * SEG + 200));
        assert_eq!(s.known_len(), Some(3 * SEG + 200));
        s.on_ack(now, 3 * SEG + 200, true, &[], None);
        assert!(s.all_acked());
    }

    /// A spurious RTO: the first copy's ACK comes just after the resend.
    /// That sample times the ACK from the resend, and must not become the
    /// minimum RTT; a later segment sent once sets it.
    #[test]
    fn a_resent_segment_does_not_set_the_first_minimum_rtt() {
        let mut s = sender(20 * SEG, 10 * SEG);
        let t0 = Instant::now();
        assert_eq!(send_all(&mut s, t0).len(), 10);
        let rto = s.poll_timeout().expect("the RTO is armed");
        s.handle_timeout(rto);
        assert_eq!(send_all(&mut s, rto).len(), 10, "all resent after the RTO");
        s.on_ack(rto + Duration::from_micros(5), 10 * SEG, false, &[], None);
        assert_eq!(s.min_rtt, None, "no minimum from resent segments");
        let at = rto + Duration::from_millis(1);
        assert_eq!(send_all(&mut s, at).len(), 10, "new segments, sent once");
        s.on_ack(at + Duration::from_millis(50), 20 * SEG, false, &[], None);
        assert_eq!(s.min_rtt, Some(Duration::from_millis(50)));
    }

    /// A move to a client's new address (secure mode): after a timeout,
    /// everything outstanding is sendable again at once and the backoff is
    /// gone; with no timeout (ACKs kept coming), nothing changes.
    #[test]
    fn a_path_change_resends_at_once_only_after_a_timeout() {
        let t0 = Instant::now();
        let mut s = sender(40 * SEG, 10 * SEG);
        assert_eq!(send_all(&mut s, t0).len(), 10);
        s.on_path_change();
        assert!(send_all(&mut s, t0).is_empty(), "no timeout: nothing to resend");
        let rto = s.poll_timeout().expect("the RTO is armed");
        s.handle_timeout(rto);
        assert_eq!(send_all(&mut s, rto).len(), 10, "resent on the timer");
        let second = s.poll_timeout().expect("armed again");
        assert!(second - rto > rto - t0, "backed off");
        // The client moved before the backed-off timer: resent now.
        let moved = rto + Duration::from_millis(1);
        s.on_path_change();
        assert_eq!(s.rtt.backoff(), 0);
        assert_eq!(send_all(&mut s, moved).len(), 10, "resent at once");
        let next = s.poll_timeout().expect("armed");
        assert!(next - moved <= rto - t0, "the timer starts afresh");
    }

    /// The hostile client of issue 10: a 16 MiB window, the first segment
    /// never acknowledged, everything else SACKed in 4 blocks per ACK, again
    /// and again. Each ACK costs a few lookups, not the window.
    #[test]
    fn repeated_wide_sack_blocks_cost_what_they_newly_report() {
        let window = 16 << 20;
        let mut s = sender(64 << 20, window);
        let t0 = Instant::now();
        let sent = send_all(&mut s, t0);
        let n = sent.len() as u64;
        assert!(n > 16_000, "{n} segments in flight");
        let end = n * SEG;
        let q = n / 4 * SEG;
        let blocks = [(SEG, q), (q, 2 * q), (2 * q, 3 * q), (3 * q, end)];
        let t1 = t0 + Duration::from_millis(20);
        s.on_ack(t1, 0, false, &blocks, Some(window));
        let first = s.ack_work;
        // Every segment but the first was newly reported, once.
        assert!(first <= n + 8, "{first} for {n} segments");
        for i in 0..10_000u32 {
            s.on_ack(t1 + Duration::from_micros(u64::from(i)), 0, false, &blocks, Some(window));
        }
        let per_ack = (s.ack_work - first) as f64 / 10_000.0;
        assert!(per_ack <= 8.0, "{per_ack} segments examined per repeated ACK");
        assert_eq!(s.acked(), 0);
        // Nothing delivered twice: the cumulative ACK of everything sent
        // delivers only the first segment.
        let delivered = s.rate.delivered();
        s.on_ack(t1 + Duration::from_secs(1), end, false, &[], Some(window));
        assert_eq!(s.rate.delivered() - delivered, SEG);
        assert_eq!(s.board.in_flight(), 0);
    }

    /// Held back by the memory budget, a connection asks for no wake-up it
    /// cannot use (an immediate pacing deadline would spin the event loop);
    /// an ACK that shrinks its scoreboard lets it send again.
    #[test]
    fn budget_held_sender_asks_for_no_wake_up() {
        let mut s = sender(1000 * SEG, 1000 * SEG);
        let t0 = Instant::now();
        let sent: Vec<Send> = std::iter::from_fn(|| s.poll_send(t0, 0, 5)).collect();
        assert_eq!(sent.len(), 5);
        // Before the RTO (1 s): only the pacer could ask for a wake-up.
        let later = t0 + Duration::from_millis(100);
        assert!(s.poll_send(later, 0, 5).is_none(), "the budget holds it back");
        assert!(!s.wants_transmit(later));
        assert!(s.poll_timeout().is_none_or(|t| t > later), "a wake-up it cannot use: {:?}", s.poll_timeout());
        s.on_ack(later, 2 * SEG, false, &[], None);
        assert!(s.wants_transmit(later));
        assert_eq!(std::iter::from_fn(|| s.poll_send(later, 0, 5)).count(), 2);
    }

    /// RFC 2018 §8: after an RTO the SACKed left edge is sent again, and its
    /// later acknowledgment does not count its bytes twice.
    #[test]
    fn sacked_left_edge_resent_after_rto_is_delivered_once() {
        let mut s = sender(10 * SEG, 100 * SEG);
        let t0 = Instant::now();
        assert_eq!(send_all(&mut s, t0).len(), 10);
        s.on_ack(t0 + Duration::from_millis(10), 0, false, &[(SEG, 3 * SEG + 500)], None);
        // Only whole segments: 1 and 2.
        assert_eq!(s.rate.delivered(), 2 * SEG);
        let rto = s.poll_timeout().unwrap().max(t0 + Duration::from_secs(2));
        s.handle_timeout(rto);
        let again = send_all(&mut s, rto);
        assert!(again.iter().all(|x| x.retransmission));
        assert_eq!(again.first().map(|x| x.index), Some(0), "left edge first");
        s.on_ack(rto + Duration::from_millis(10), 10 * SEG, true, &[], None);
        assert_eq!(s.rate.delivered(), 10 * SEG, "every byte delivered exactly once");
        assert_eq!(s.board.in_flight(), 0);
        assert!(s.all_acked());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One segment sent each millisecond from `t0`, as many as go.
    fn send_spaced(s: &mut Sender, t0: Instant) -> u64 {
        let mut n = 0;
        while s.poll_send(t0 + ms(n), 0, u64::MAX).is_some() {
            n += 1;
        }
        n
    }

    /// RFC 8985 §7: with one segment left unacknowledged the probe timer is
    /// 2·SRTT plus the peer's ACK delay; it resends the last segment, and
    /// the RTO (not another probe) guards the tail after it.
    #[test]
    fn tail_loss_probe_resends_the_last_segment() {
        let mut s = sender(10 * SEG, 100 * SEG);
        let t0 = Instant::now();
        assert_eq!(send_all(&mut s, t0).len(), 10);
        s.on_ack(t0 + ms(50), 9 * SEG, false, &[], None);
        assert_eq!(s.rtt.srtt(), Some(ms(50)));
        let pto = t0 + ms(50) + ms(100) + loss::PEER_ACK_DELAY;
        assert_eq!(s.poll_timeout(), Some(pto), "before the RTO at 200 ms");
        s.handle_timeout(pto - ms(1));
        assert!(!s.wants_transmit(pto - ms(1)));
        s.handle_timeout(pto);
        assert!(s.wants_transmit(pto));
        assert_eq!(s.poll_send(pto, 7, u64::MAX), Some(Send { index: 9, retransmission: true, tag: 0 }));
        assert_eq!(s.poll_send(pto, 7, u64::MAX), None, "one probe");
        assert_eq!(s.poll_timeout(), Some(pto + s.rtt.rto()), "the RTO guards the tail");
        s.on_ack(pto + ms(50), 10 * SEG, true, &[], None);
        assert!(s.all_acked());
        assert_eq!(s.poll_timeout(), None);
    }

    /// RFC 8985 §7.3: a probe sends new data if there is some, even one
    /// segment beyond the congestion window (not beyond the receive window).
    #[test]
    fn probe_sends_new_data_beyond_the_congestion_window() {
        let params = SenderParams {
            segment: SEG,
            fast: true,
            cc: Box::new(Fixed(3 * SEG)),
            peer_window: 100 * SEG,
            window_cap: 100 * SEG,
        };
        let mut s = Sender::new(10 * SEG, params, RttEstimator::new(RtoConfig::default()));
        let t0 = Instant::now();
        assert_eq!(send_all(&mut s, t0).len(), 3);
        s.on_ack(t0 + ms(50), SEG, false, &[], None);
        assert_eq!(send_all(&mut s, t0 + ms(50)).len(), 1, "the window refills");
        let pto = t0 + ms(150);
        assert_eq!(s.poll_timeout(), Some(pto), "2·SRTT with three segments out");
        s.handle_timeout(pto);
        assert_eq!(s.poll_send(pto, 0, u64::MAX), Some(Send { index: 4, retransmission: false, tag: 0 }));
        assert_eq!(s.board.in_flight(), 4 * SEG, "one over the window");
        assert!(!s.wants_transmit(pto));
    }

    /// RFC 8985 §6.2 through the sender: a SACK of later segments arms the
    /// reordering timer for the oldest; when it fires that one is lost and
    /// sent again at once.
    #[test]
    fn reordering_timer_then_loss_and_retransmission() {
        let mut s = sender(10 * SEG, 100 * SEG);
        let t0 = Instant::now();
        assert_eq!(send_spaced(&mut s, t0), 10);
        // Segments 5-8 SACKed at 50 ms: the newest, sent at 8 ms, gives a
        // 42 ms RTT, a 10.5 ms window, so segment 0 is lost at 52.5 ms.
        s.on_ack(t0 + ms(50), 0, false, &[(5 * SEG, 9 * SEG)], None);
        let due = t0 + ms(52) + Duration::from_micros(500);
        assert_eq!(s.poll_timeout(), Some(due));
        assert!(!s.wants_transmit(t0 + ms(50)), "nothing lost yet, nothing new");
        s.handle_timeout(due);
        assert_eq!(s.poll_send(due, 0, u64::MAX), Some(Send { index: 0, retransmission: true, tag: 0 }));
        assert_eq!(s.poll_send(due, 0, u64::MAX), None, "segment 1 is due a millisecond later");
        assert_eq!(s.poll_timeout(), Some(due + ms(1)));
        assert_eq!(s.retransmissions, 1);
    }

    /// Baseline mode has the RFC 6298 timer alone: no probe timer, and no
    /// RACK, whatever the acknowledgments say.
    #[test]
    fn baseline_mode_has_only_the_retransmission_timer() {
        let mut s = sender_in_mode(10 * SEG, 100 * SEG, false);
        let t0 = Instant::now();
        assert_eq!(send_spaced(&mut s, t0), 10);
        s.on_ack(t0 + ms(50), SEG, false, &[(5 * SEG, 9 * SEG)], None);
        let rto = t0 + ms(50) + s.rtt.rto();
        assert_eq!(s.poll_timeout(), Some(rto));
        s.handle_timeout(rto - ms(1));
        assert_eq!(s.poll_send(rto - ms(1), 0, u64::MAX), None, "nothing declared lost");
        s.handle_timeout(rto);
        assert_eq!(s.poll_send(rto, 0, u64::MAX).map(|x| x.index), Some(1));
    }

    /// RFC 8985 §7.2: after an RTO, no probe timer until an RTT sample
    /// collapses the backoff (Karn: a retransmitted segment gives none).
    #[test]
    fn no_probe_while_the_rto_is_backed_off() {
        let mut s = sender(4 * SEG, 100 * SEG);
        let t0 = Instant::now();
        assert_eq!(send_all(&mut s, t0).len(), 4);
        s.on_ack(t0 + ms(50), SEG, false, &[], None);
        // The probe at 150 ms goes unanswered; the RTO follows 150 ms later.
        s.handle_timeout(t0 + ms(150));
        assert_eq!(s.poll_send(t0 + ms(150), 0, u64::MAX).map(|x| x.index), Some(3));
        let rto = t0 + ms(300);
        assert_eq!(s.poll_timeout(), Some(rto));
        s.handle_timeout(rto);
        assert_eq!(s.rtt.backoff(), 1);
        let again: Vec<u64> = send_all(&mut s, rto).iter().map(|x| x.index).collect();
        assert_eq!(again, [1, 2, 3]);
        s.on_ack(rto + ms(50), 2 * SEG, false, &[], None);
        assert_eq!(s.tlp.deadline(), None);
        assert_eq!(s.poll_timeout(), Some(rto + ms(50) + ms(300)), "the doubled RTO alone");
    }
}
