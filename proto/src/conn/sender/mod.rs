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
//! The page is cut into fixed segments: segment `i` covers page bytes
//! `i·size .. min((i+1)·size, len)`; the last one carries FIN (an empty page
//! is one empty FIN segment). The scoreboard holds only segments between the
//! cumulative acknowledgment and the next new one, so its size is bounded by
//! the window, not by the page.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::cc::{Controller, RateSample};
use crate::recovery::{RangeSet, RttEstimator};
use crate::time::after;

/// Pacing lets this much sending time accumulate while idle, so that timer
/// granularity (a millisecond in most runtimes) does not cost rate.
const PACING_BURST: Duration = Duration::from_millis(2);
/// The client's longest delayed-ACK wait, added to the probe timeout when
/// only one segment is out (RFC 8985 §7.2 WCDelAckT).
const PEER_ACK_DELAY: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegState {
    InFlight,
    Sacked,
    Lost,
}

/// One segment on the scoreboard.
#[derive(Debug, Clone, Copy)]
struct Seg {
    len: u32,
    state: SegState,
    /// Latest transmission.
    sent_at: Instant,
    transmissions: u32,
    /// Delivery-rate state when it was (last) sent
    /// (draft-cheng-iccrg-delivery-rate-estimation §3.2).
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    app_limited: bool,
    /// The caller's tag from the first transmission (the server's ack
    /// field), so that a retransmission goes out unchanged.
    tag: u32,
}

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
    page_len: u64,
    segment: u64,
    fast: bool,
    /// Number of segments of the page (at least one).
    total: u64,
    /// First segment not cumulatively acknowledged.
    una: u64,
    /// Next segment never sent.
    nxt: u64,
    /// Segments `una .. nxt`.
    board: VecDeque<Seg>,
    /// Segments selectively acknowledged (delivered), as ranges of segment
    /// numbers: a SACK block costs the ranges it meets and the segments it
    /// newly reports, never its width. A left edge sent again after an RTO
    /// stays here, so it is not counted as delivered twice.
    sacked: RangeSet,
    /// Segments examined by acknowledgment processing, for the tests that
    /// bound the work one ACK can cause.
    pub(crate) ack_work: u64,
    /// Transmissions in the order they happened: (time, segment, nth
    /// transmission). RACK walks it from the oldest; entries for segments
    /// since acknowledged or sent again are skipped.
    sent_order: VecDeque<(Instant, u64, u32)>,
    /// Segments declared lost, to send again.
    lost: VecDeque<u64>,
    /// Bytes sent and neither delivered nor declared lost (RFC 6675 "pipe").
    in_flight: u64,
    pub(crate) rtt: RttEstimator,
    min_rtt: Option<Duration>,
    cc: Box<dyn Controller>,
    peer_window: u64,
    /// RACK (RFC 8985 §6.1): transmission time and segment of the most
    /// recently sent segment that was delivered, and its RTT.
    rack: Option<(Instant, u64)>,
    rack_rtt: Duration,
    rto_deadline: Option<Instant>,
    tlp_deadline: Option<Instant>,
    reorder_deadline: Option<Instant>,
    /// A tail-loss probe is due (it may exceed the window by one segment).
    probe_due: bool,
    /// A probe was sent and no acknowledgment has delivered data since
    /// (RFC 8985 §7.2: no new probe timer until then).
    tlp_outstanding: bool,
    /// Largest receive window believed, whatever the client offers: keeps
    /// the scoreboard and sequence distances bounded (RFC 7323 §2.3).
    window_cap: u64,
    next_send: Option<Instant>,
    /// Delivery-rate estimation state.
    delivered: u64,
    delivered_time: Option<Instant>,
    first_sent_time: Option<Instant>,
    pub(crate) retransmissions: u64,
}

impl Sender {
    pub(crate) fn new(page_len: u64, params: SenderParams, rtt: RttEstimator) -> Sender {
        let segment = params.segment.max(1);
        Sender {
            page_len,
            segment,
            fast: params.fast,
            total: page_len.div_ceil(segment).max(1),
            una: 0,
            nxt: 0,
            board: VecDeque::new(),
            sacked: RangeSet::new(),
            ack_work: 0,
            sent_order: VecDeque::new(),
            lost: VecDeque::new(),
            in_flight: 0,
            rtt,
            min_rtt: None,
            cc: params.cc,
            peer_window: params.peer_window.min(params.window_cap),
            rack: None,
            rack_rtt: Duration::ZERO,
            rto_deadline: None,
            tlp_deadline: None,
            reorder_deadline: None,
            probe_due: false,
            tlp_outstanding: false,
            window_cap: params.window_cap,
            next_send: None,
            delivered: 0,
            delivered_time: None,
            first_sent_time: None,
            retransmissions: 0,
        }
    }

    /// Page byte range of segment `index`.
    pub(crate) fn range(&self, index: u64) -> (u64, u64) {
        let start = index.saturating_mul(self.segment).min(self.page_len);
        (start, start.saturating_add(self.segment).min(self.page_len))
    }

    /// Whether segment `index` is the last one (it carries FIN).
    pub(crate) fn is_last(&self, index: u64) -> bool {
        index + 1 == self.total
    }

    /// Page bytes cumulatively acknowledged.
    pub(crate) fn acked(&self) -> u64 {
        self.range(self.una).0
    }

    /// First byte never sent (the end of what may be acknowledged).
    pub(crate) fn sent_end(&self) -> u64 {
        self.range(self.nxt).0
    }

    /// Segments on the scoreboard: what this connection's memory grows with.
    pub(crate) fn tracked(&self) -> u64 {
        self.board.len() as u64
    }

    /// Whether every segment, the FIN one included, has been acknowledged.
    pub(crate) fn all_acked(&self) -> bool {
        self.una >= self.total
    }

    /// Position of segment `index` on the board, if it is there.
    fn slot(&self, index: u64) -> Option<usize> {
        usize::try_from(index.checked_sub(self.una)?).ok()
    }

    fn seg(&mut self, index: u64) -> Option<&mut Seg> {
        let at = self.slot(index)?;
        self.board.get_mut(at)
    }

    /// Processes an acknowledgment: everything before page offset `ack` is
    /// delivered, and so is every segment inside one of the `sacked` offset
    /// ranges. `ack` must lie between [`acked`](Self::acked) and
    /// [`sent_end`](Self::sent_end); `fin` says the FIN is acknowledged too.
    pub(crate) fn on_ack(&mut self, now: Instant, ack: u64, fin: bool, sacked: &[(u64, u64)], window: Option<u64>) {
        if let Some(w) = window {
            self.peer_window = w.min(self.window_cap);
        }
        let mut sample = RateSample::default();
        let mut newest: Option<(Instant, u64, u32)> = None;
        let una_before = self.una;
        // Cumulative: whole segments below `ack`; the FIN segment only with
        // the FIN acknowledged.
        while self.una < self.nxt {
            let (_, end) = self.range(self.una);
            let covered = end <= ack && (!self.is_last(self.una) || fin);
            if !covered {
                break;
            }
            let Some(seg) = self.board.pop_front() else { break };
            let index = self.una;
            self.una += 1;
            self.ack_work += 1;
            if !self.sacked.contains(index) {
                self.deliver(now, index, &seg, &mut sample, &mut newest);
            } else if seg.state == SegState::InFlight {
                // A SACKed left edge sent again after an RTO: delivered
                // already, but its copy was counted in flight.
                self.in_flight = self.in_flight.saturating_sub(u64::from(seg.len));
            }
        }
        if self.una != una_before {
            self.sacked.remove_below(self.una);
        }
        // Whole segments inside each block, never the last one (its FIN
        // needs the FIN|ACK): only those not known to be SACKed are visited.
        let last_sackable = self.nxt.min(self.total - 1);
        let mut known = std::mem::take(&mut self.sacked);
        for &(start, end) in sacked {
            let first = start.div_ceil(self.segment).max(self.una);
            let beyond = (end / self.segment).min(last_sackable);
            self.ack_work += 1;
            known.insert(first..beyond.max(first), |new| {
                for index in new {
                    self.ack_work += 1;
                    if let Some(seg) = self.seg(index) {
                        let copy = *seg;
                        seg.state = SegState::Sacked;
                        self.deliver(now, index, &copy, &mut sample, &mut newest);
                    }
                }
            });
        }
        self.sacked = known;
        if let Some((sent_at, index, transmissions)) = newest {
            // RTT from the most recently sent delivered segment; Karn's rule
            // for the RFC 6298 estimator, RFC 8985 §6.2 for RACK's own.
            let rtt = now.saturating_duration_since(sent_at);
            if transmissions == 1 {
                self.rtt.on_sample(rtt);
                sample.rtt = Some(rtt);
            }
            if transmissions == 1 || self.min_rtt.is_none_or(|m| rtt >= m) {
                self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                if self.rack.is_none_or(|r| (sent_at, index) > r) {
                    self.rack = Some((sent_at, index));
                    self.rack_rtt = rtt;
                }
            }
            sample.delivered = self.delivered;
            let min_rtt = self.min_rtt.unwrap_or(rtt);
            self.cc.on_ack(now, &sample, self.in_flight, min_rtt);
            self.probe_due = false;
            self.tlp_outstanding = false;
            self.tlp_deadline = None;
        }
        if self.fast {
            self.detect_losses(now);
        }
        self.prune_lost();
        if self.una != una_before || newest.is_some() {
            // RFC 6298 §5.2–5.3: restart the timer for what is left, or stop
            // it. A selective acknowledgment counts as new data too (as in
            // RFC 8985 §8), or one lost segment would let the timer run out
            // while SACKs show the path is delivering, and send the whole
            // window again.
            self.rto_deadline = None;
            if self.una < self.nxt {
                self.rto_deadline = Some(after(now, self.rtt.rto()));
            }
        }
        if self.una >= self.total {
            self.rto_deadline = None;
            self.tlp_deadline = None;
            self.reorder_deadline = None;
        } else if self.in_flight > 0 && newest.is_some() {
            self.arm_tlp(now);
        }
    }

    /// Accounts one newly delivered segment.
    fn deliver(
        &mut self,
        now: Instant,
        index: u64,
        seg: &Seg,
        sample: &mut RateSample,
        newest: &mut Option<(Instant, u64, u32)>,
    ) {
        if seg.state == SegState::InFlight {
            self.in_flight = self.in_flight.saturating_sub(u64::from(seg.len));
        }
        self.delivered += u64::from(seg.len);
        self.delivered_time = Some(now);
        sample.newly_acked += u64::from(seg.len);
        // The sample describes the most recently sent delivered segment.
        if newest.is_none_or(|(t, i, _)| (seg.sent_at, index) > (t, i)) {
            *newest = Some((seg.sent_at, index, seg.transmissions));
            let send_elapsed = seg.sent_at.saturating_duration_since(seg.first_sent_time);
            let ack_elapsed = now.saturating_duration_since(seg.delivered_time);
            let interval = send_elapsed.max(ack_elapsed);
            // draft-cheng §3.3: an interval shorter than the minimum RTT comes
            // from ACK compression or a spurious retransmission; no sample.
            let too_short = self.min_rtt.is_some_and(|m| interval < m);
            sample.prior_delivered = seg.delivered;
            sample.app_limited = seg.app_limited;
            self.first_sent_time = Some(seg.sent_at);
            let bytes = self.delivered.saturating_sub(seg.delivered);
            sample.delivery_rate =
                if interval.is_zero() || too_short { 0 } else { (bytes as f64 / interval.as_secs_f64()) as u64 };
        }
    }

    /// Drops queue entries for segments no longer lost (delivered since, or
    /// already sent again), so that the front is always one to send.
    fn prune_lost(&mut self) {
        while let Some(&index) = self.lost.front() {
            if self.seg(index).is_some_and(|s| s.state == SegState::Lost) {
                break;
            }
            self.lost.pop_front();
        }
    }

    /// RACK (RFC 8985 §6.2): a segment sent before the most recently sent
    /// delivered one, and not delivered itself a reordering window after
    /// the RTT, is lost.
    fn detect_losses(&mut self, now: Instant) {
        let Some(rack) = self.rack else { return };
        let srtt = self.rtt.srtt().unwrap_or(self.rack_rtt);
        // RFC 8985 §6.2 starts with no reordering window until the path has
        // shown reordering; in simulation (5% loss, 5% reordering, 10 MiB)
        // that cost more spurious retransmissions than it saved (1.32-1.38 s
        // against 1.27-1.29 s), so the window is always min_RTT/4.
        let reo_wnd = (self.min_rtt.unwrap_or(srtt) / 4).min(srtt);
        self.reorder_deadline = None;
        let mut lost_bytes = 0;
        let mut newest_lost = None;
        while let Some(&(sent_at, index, nth)) = self.sent_order.front() {
            let live = self.seg(index).is_some_and(|s| s.state == SegState::InFlight && s.transmissions == nth);
            if !live {
                self.sent_order.pop_front();
                continue;
            }
            if (sent_at, index) >= rack {
                break;
            }
            let deadline = sent_at + self.rack_rtt + reo_wnd;
            if now < deadline {
                self.reorder_deadline = Some(deadline);
                break;
            }
            self.sent_order.pop_front();
            if let Some(seg) = self.seg(index) {
                seg.state = SegState::Lost;
                let len = u64::from(seg.len);
                self.in_flight = self.in_flight.saturating_sub(len);
                lost_bytes += len;
                newest_lost = Some(sent_at);
                self.lost.push_back(index);
            }
        }
        if let Some(newest) = newest_lost {
            self.cc.on_loss(now, lost_bytes, newest, self.in_flight);
        }
    }

    fn arm_tlp(&mut self, now: Instant) {
        // RFC 8985 §7.2: only with no probe outstanding, not in loss
        // recovery, and not while the RTO is backed off.
        if !self.fast || self.tlp_outstanding || !self.lost.is_empty() || self.rtt.backoff() > 0 {
            return;
        }
        // PTO = 2·SRTT, plus the peer's ACK delay when one segment is out,
        // and never beyond the RTO.
        let Some(srtt) = self.rtt.srtt() else { return };
        let mut pto = srtt * 2;
        if self.in_flight <= self.segment {
            pto += PEER_ACK_DELAY;
        }
        let at = after(now, pto);
        self.tlp_deadline = Some(self.rto_deadline.map_or(at, |rto| at.min(rto)));
    }

    /// Whether a new segment fits the client's receive window.
    fn window_allows(&self, index: u64) -> bool {
        self.in_flight == 0 || self.range(index).1.saturating_sub(self.acked()) <= self.peer_window
    }

    fn cwnd_allows(&self, len: u64) -> bool {
        self.in_flight == 0 || self.in_flight + len <= self.cc.window()
    }

    /// The next segment to send, if the windows and the pacer allow one now.
    /// A new segment is stamped with `tag`; one sent again keeps its own. A
    /// new segment is sent only while fewer than `max_tracked` are on the
    /// scoreboard (the server's memory budget; one may always be).
    pub(crate) fn poll_send(&mut self, now: Instant, tag: u32, max_tracked: u64) -> Option<Send> {
        if self.next_send.is_some_and(|t| t > now) {
            return None;
        }
        let probe = std::mem::take(&mut self.probe_due);
        // Lost segments first, then new ones; a probe may go beyond the
        // congestion window by one segment (RFC 8985 §7.3).
        while let Some(&index) = self.lost.front() {
            if !self.seg(index).is_some_and(|s| s.state == SegState::Lost) {
                self.lost.pop_front();
                continue;
            }
            let (start, end) = self.range(index);
            if !(probe || self.cwnd_allows(end - start)) {
                self.probe_due = probe;
                return None;
            }
            self.lost.pop_front();
            let send = self.record_send(now, index, tag);
            self.prune_lost();
            if probe {
                self.after_probe(now);
            }
            return Some(send);
        }
        let room = self.board.is_empty() || (self.board.len() as u64) < max_tracked;
        if self.nxt < self.total && room {
            let (start, end) = self.range(self.nxt);
            if (probe || self.cwnd_allows(end - start)) && self.window_allows(self.nxt) {
                let index = self.nxt;
                self.nxt += 1;
                let send = self.record_send(now, index, tag);
                if probe {
                    self.after_probe(now);
                }
                return Some(send);
            }
        }
        if probe {
            // Nothing new may go: probe with the last segment in flight.
            let last = (self.una..self.nxt).rev().find(|&i| self.seg(i).is_some_and(|s| s.state == SegState::InFlight));
            if let Some(index) = last {
                let send = self.record_send(now, index, tag);
                self.after_probe(now);
                return Some(send);
            }
        }
        None
    }

    /// RFC 8985 §7.3: after a probe, the RTO guards the tail, not another
    /// probe.
    fn after_probe(&mut self, now: Instant) {
        self.tlp_outstanding = true;
        self.tlp_deadline = None;
        self.rto_deadline = Some(after(now, self.rtt.rto()));
    }

    fn record_send(&mut self, now: Instant, index: u64, tag: u32) -> Send {
        let (start, end) = self.range(index);
        let len = end - start;
        if self.in_flight == 0 {
            // draft-cheng §3.2: a new flight starts the clocks afresh.
            self.first_sent_time = Some(now);
            self.delivered_time = Some(now);
        }
        let app_limited = self.nxt >= self.total;
        let stamp = Seg {
            len: len as u32,
            state: SegState::InFlight,
            sent_at: now,
            transmissions: 1,
            delivered: self.delivered,
            delivered_time: self.delivered_time.unwrap_or(now),
            first_sent_time: self.first_sent_time.unwrap_or(now),
            app_limited,
            tag,
        };
        let mut tag = tag;
        let retransmission = match self.seg(index) {
            Some(seg) => {
                let was = seg.state;
                tag = seg.tag;
                *seg = Seg { transmissions: seg.transmissions + 1, tag, ..stamp };
                // A probe of a segment still in flight is not added twice.
                if was != SegState::InFlight {
                    self.in_flight += len;
                }
                true
            }
            None => {
                self.board.push_back(stamp);
                self.in_flight += len;
                false
            }
        };
        if self.fast {
            let nth = self.seg(index).map_or(1, |s| s.transmissions);
            self.sent_order.push_back((now, index, nth));
        }
        if retransmission {
            self.retransmissions += 1;
        }
        self.cc.on_sent(now, len, self.in_flight);
        if let Some(rate) = self.cc.pacing_rate().filter(|&r| r > 0) {
            // Credit for at most PACING_BURST of sending time, after idle
            // or at the start alike.
            let earliest = now.checked_sub(PACING_BURST).unwrap_or(now);
            let base = self.next_send.map_or(earliest, |t| t.max(earliest));
            self.next_send = Some(base + Duration::from_secs_f64(len.max(1) as f64 / rate as f64));
        } else {
            self.next_send = None;
        }
        // RFC 6298 §5.1: start the timer if it is not running.
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(after(now, self.rtt.rto()));
        }
        if !retransmission {
            self.arm_tlp(now);
        }
        Send { index, retransmission, tag }
    }

    /// Whether the windows allow a segment now (the pacer aside).
    fn has_sendable(&self) -> bool {
        if self.probe_due {
            return true;
        }
        let lost = self.lost.front().and_then(|&i| self.board.get(self.slot(i)?).filter(|s| s.state == SegState::Lost));
        if let Some(seg) = lost {
            return self.cwnd_allows(u64::from(seg.len));
        }
        if self.nxt < self.total {
            let (start, end) = self.range(self.nxt);
            return self.cwnd_allows(end - start) && self.window_allows(self.nxt);
        }
        false
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let pacing = self.next_send.filter(|_| self.has_sendable());
        [self.rto_deadline, self.tlp_deadline, self.reorder_deadline, pacing].into_iter().flatten().min()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.rto_deadline.is_some_and(|t| now >= t) {
            // RFC 6298 §5.4–5.6 with RFC 8985 §6.3: everything outstanding is
            // presumed lost; resend from the first, back off.
            self.rto_deadline = None;
            self.tlp_deadline = None;
            self.reorder_deadline = None;
            self.rtt.on_timeout();
            self.cc.on_rto(now);
            self.probe_due = false;
            self.tlp_outstanding = false;
            for index in self.una..self.nxt {
                // RFC 2018 §8: the left edge is sent again even if SACKed (a
                // receiver may discard what it SACKed).
                let left_edge = index == self.una;
                let mut released = 0;
                if let Some(seg) = self.seg(index).filter(|s| s.state == SegState::InFlight || left_edge) {
                    if seg.state == SegState::InFlight {
                        released = u64::from(seg.len);
                    }
                    seg.state = SegState::Lost;
                }
                self.in_flight = self.in_flight.saturating_sub(released);
            }
            self.lost =
                (self.una..self.nxt).filter(|&i| self.seg(i).is_some_and(|s| s.state == SegState::Lost)).collect();
            self.next_send = None;
            return;
        }
        if self.reorder_deadline.is_some_and(|t| now >= t) {
            self.detect_losses(now);
            self.prune_lost();
        }
        if self.tlp_deadline.is_some_and(|t| now >= t) {
            self.tlp_deadline = None;
            self.probe_due = true;
        }
    }

    pub(crate) fn wants_transmit(&self, now: Instant) -> bool {
        self.has_sendable() && self.next_send.is_none_or(|t| t <= now)
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
        let params = SenderParams {
            segment: SEG,
            fast: true,
            cc: Box::new(Fixed(window)),
            peer_window: window,
            window_cap: window,
        };
        Sender::new(page_len, params, RttEstimator::new(RtoConfig::default()))
    }

    /// Sends everything the windows allow at `now`.
    fn send_all(s: &mut Sender, now: Instant) -> Vec<Send> {
        std::iter::from_fn(|| s.poll_send(now, 0, u64::MAX)).collect()
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
        let delivered = s.delivered;
        s.on_ack(t1 + Duration::from_secs(1), end, false, &[], Some(window));
        assert_eq!(s.delivered - delivered, SEG);
        assert_eq!(s.in_flight, 0);
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
        assert_eq!(s.delivered, 2 * SEG);
        let rto = s.poll_timeout().unwrap().max(t0 + Duration::from_secs(2));
        s.handle_timeout(rto);
        let again = send_all(&mut s, rto);
        assert!(again.iter().all(|x| x.retransmission));
        assert_eq!(again.first().map(|x| x.index), Some(0), "left edge first");
        s.on_ack(rto + Duration::from_millis(10), 10 * SEG, true, &[], None);
        assert_eq!(s.delivered, 10 * SEG, "every byte delivered exactly once");
        assert_eq!(s.in_flight, 0);
        assert!(s.all_acked());
    }
}
