//! The scoreboard: the page cut into segments, and the state of each one
//! between the cumulative acknowledgment (`una`) and the next never sent
//! (`nxt`), with the bytes in flight.
//!
//! Segment `i` covers page bytes `i·size .. min((i+1)·size, len)`; the last
//! one carries FIN (an empty page is one empty FIN segment). Only segments
//! `una .. nxt` are held, so the board is bounded by the window, not by the
//! page. Segments selectively acknowledged are kept as ranges (a
//! [`RangeSet`]), so that an ACK costs the ranges its blocks meet and the
//! segments they newly report, never their width.

use std::collections::VecDeque;
use std::time::Instant;

use super::rate::{Delivery, SendState};
use crate::recovery::RangeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SegState {
    InFlight,
    Sacked,
    Lost,
}

/// One segment on the scoreboard.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seg {
    pub len: u32,
    pub state: SegState,
    /// Latest transmission.
    pub sent_at: Instant,
    pub transmissions: u32,
    /// Delivery-rate state when it was (last) sent.
    pub at_send: SendState,
    /// The caller's tag from the first transmission (the server's ack
    /// field), so that a retransmission goes out unchanged.
    pub tag: u32,
}

impl Seg {
    /// What the rate sampler needs of this segment, delivered.
    pub(super) fn delivery(&self, index: u64) -> Delivery {
        Delivery {
            index,
            len: u64::from(self.len),
            sent_at: self.sent_at,
            transmissions: self.transmissions,
            at_send: self.at_send,
        }
    }
}

/// What one transmission was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    /// Whether the segment was on the board already.
    pub retransmission: bool,
    /// Its tag from the first transmission.
    pub tag: u32,
    /// Transmissions so far, this one included.
    pub transmissions: u32,
}

/// The length a board is made with for a page whose length is not known
/// yet (a streamed page); no page is this long.
pub(super) const UNBOUNDED: u64 = u64::MAX;

#[derive(Debug)]
pub(super) struct Scoreboard {
    page_len: u64,
    segment: u64,
    /// Number of segments of the page (at least one).
    total: u64,
    /// First segment not cumulatively acknowledged.
    una: u64,
    /// Next segment never sent.
    nxt: u64,
    /// Segments `una .. nxt`.
    segs: VecDeque<Seg>,
    /// Segments selectively acknowledged (delivered), as ranges of segment
    /// numbers. A left edge sent again after an RTO stays here, so it is not
    /// counted as delivered twice.
    sacked: RangeSet,
    /// Segments declared lost, to send again, oldest first. Entries for
    /// segments delivered or sent again since are dropped lazily.
    lost: VecDeque<u64>,
    /// Bytes sent and neither delivered nor declared lost (RFC 6675 "pipe").
    in_flight: u64,
}

impl Scoreboard {
    /// A page of `page_len` bytes in segments of `segment` bytes (at least 1).
    pub(super) fn new(page_len: u64, segment: u64) -> Scoreboard {
        let segment = segment.max(1);
        Scoreboard {
            page_len,
            segment,
            total: page_len.div_ceil(segment).max(1),
            una: 0,
            nxt: 0,
            segs: VecDeque::new(),
            sacked: RangeSet::new(),
            lost: VecDeque::new(),
            in_flight: 0,
        }
    }

    /// The page's length; `None` for a board made [`UNBOUNDED`] whose
    /// length is not known yet.
    pub(super) fn page_len(&self) -> Option<u64> {
        (self.page_len != UNBOUNDED).then_some(self.page_len)
    }

    /// A streamed page's length, once known (docs/PROTOCOL.md §9.7): the
    /// board was made for an unbounded page, and every segment sent so far
    /// was a whole one ending at or before `page_len`, so none changes.
    pub(super) fn set_page_len(&mut self, page_len: u64) {
        self.page_len = page_len;
        // A segment already sent is never the one that carries FIN: the
        // page ends after it.
        self.total = page_len.div_ceil(self.segment).max(1).max(self.nxt + 1);
    }

    /// Payload bytes per segment.
    pub(super) fn segment(&self) -> u64 {
        self.segment
    }

    /// Number of segments of the page.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// First segment not cumulatively acknowledged.
    pub(super) fn una(&self) -> u64 {
        self.una
    }

    /// Next segment never sent.
    pub(super) fn nxt(&self) -> u64 {
        self.nxt
    }

    /// Segments held.
    pub(super) fn len(&self) -> u64 {
        self.segs.len() as u64
    }

    pub(super) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Bytes in flight.
    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Page byte range of segment `index`.
    pub(super) fn range(&self, index: u64) -> (u64, u64) {
        let start = index.saturating_mul(self.segment).min(self.page_len);
        (start, start.saturating_add(self.segment).min(self.page_len))
    }

    /// Payload bytes of segment `index`.
    pub(super) fn len_of(&self, index: u64) -> u64 {
        let (start, end) = self.range(index);
        end - start
    }

    /// Whether segment `index` is the last one (it carries FIN).
    pub(super) fn is_last(&self, index: u64) -> bool {
        index + 1 == self.total
    }

    /// Position of segment `index` on the board, if it is there.
    fn slot(&self, index: u64) -> Option<usize> {
        usize::try_from(index.checked_sub(self.una)?).ok()
    }

    pub(super) fn get(&self, index: u64) -> Option<&Seg> {
        self.segs.get(self.slot(index)?)
    }

    fn get_mut(&mut self, index: u64) -> Option<&mut Seg> {
        let at = self.slot(index)?;
        self.segs.get_mut(at)
    }

    /// Records a transmission of segment `index`: the next new one, or one
    /// on the board sent again (which keeps its first tag).
    pub(super) fn record_send(&mut self, now: Instant, index: u64, tag: u32, at_send: SendState) -> Sent {
        let len = self.len_of(index);
        let stamp = Seg { len: len as u32, state: SegState::InFlight, sent_at: now, transmissions: 1, at_send, tag };
        match self.get_mut(index) {
            Some(seg) => {
                let was = seg.state;
                *seg = Seg { transmissions: seg.transmissions + 1, tag: seg.tag, ..stamp };
                let sent = Sent { retransmission: true, tag: seg.tag, transmissions: seg.transmissions };
                // A probe of a segment still in flight is not added twice.
                if was != SegState::InFlight {
                    self.in_flight += len;
                }
                sent
            }
            None => {
                // Not on the board: the next new segment.
                self.segs.push_back(stamp);
                self.nxt += 1;
                self.in_flight += len;
                Sent { retransmission: false, tag, transmissions: 1 }
            }
        }
    }

    /// Cumulative acknowledgment of everything before page offset `ack`:
    /// whole segments only, the FIN one only with `fin`. Calls `delivered`
    /// for each segment not delivered before (by a SACK); returns the
    /// segments examined.
    pub(super) fn on_cumulative_ack(&mut self, ack: u64, fin: bool, mut delivered: impl FnMut(u64, &Seg)) -> u64 {
        let una_before = self.una;
        let mut work = 0;
        while self.una < self.nxt {
            let (_, end) = self.range(self.una);
            let covered = end <= ack && (!self.is_last(self.una) || fin);
            if !covered {
                break;
            }
            let Some(seg) = self.segs.pop_front() else { break };
            let index = self.una;
            self.una += 1;
            work += 1;
            // A SACKed left edge sent again after an RTO is delivered
            // already, but its copy was counted in flight.
            if seg.state == SegState::InFlight {
                self.in_flight = self.in_flight.saturating_sub(u64::from(seg.len));
            }
            if !self.sacked.contains(index) {
                delivered(index, &seg);
            }
        }
        if self.una != una_before {
            self.sacked.remove_below(self.una);
        }
        work
    }

    /// Selective acknowledgment of page-offset ranges `blocks`: whole
    /// segments inside a block, never the last one (its FIN needs the
    /// FIN|ACK, PROTOCOL.md §6.4). Calls `delivered` for each segment newly
    /// reported; returns the blocks and segments examined (segments already
    /// known SACKed cost nothing).
    pub(super) fn on_sack(&mut self, blocks: &[(u64, u64)], mut delivered: impl FnMut(u64, &Seg)) -> u64 {
        let last_sackable = self.nxt.min(self.total - 1);
        let mut work = 0;
        let Scoreboard { segment, una, segs, sacked, in_flight, .. } = self;
        for &(start, end) in blocks {
            let first = start.div_ceil(*segment).max(*una);
            let beyond = (end / *segment).min(last_sackable);
            work += 1;
            sacked.insert(first..beyond.max(first), |new| {
                for index in new {
                    work += 1;
                    let slot = index.checked_sub(*una).and_then(|d| usize::try_from(d).ok());
                    let Some(seg) = slot.and_then(|at| segs.get_mut(at)) else { continue };
                    let copy = *seg;
                    if copy.state == SegState::InFlight {
                        *in_flight = in_flight.saturating_sub(u64::from(copy.len));
                    }
                    seg.state = SegState::Sacked;
                    delivered(index, &copy);
                }
            });
        }
        work
    }

    /// Whether `index` is in flight from its `nth` transmission (and not
    /// since delivered, declared lost or sent again).
    pub(super) fn in_flight_from(&self, index: u64, nth: u32) -> bool {
        self.get(index).is_some_and(|s| s.state == SegState::InFlight && s.transmissions == nth)
    }

    /// Declares segment `index` lost and queues it to be sent again;
    /// returns its length, or `None` if it is not on the board.
    pub(super) fn mark_lost(&mut self, index: u64) -> Option<u64> {
        let seg = self.get_mut(index)?;
        let len = u64::from(seg.len);
        let released = if seg.state == SegState::InFlight { len } else { 0 };
        seg.state = SegState::Lost;
        self.in_flight = self.in_flight.saturating_sub(released);
        self.lost.push_back(index);
        Some(len)
    }

    /// RFC 6298 §5.4 with RFC 8985 §6.3: on an RTO every segment in flight
    /// is presumed lost, and so is the left edge even if SACKed (RFC 2018
    /// §8: a receiver may discard what it SACKed). The queue is rebuilt in
    /// segment order, so that sending resumes from the first.
    pub(super) fn mark_all_lost(&mut self) {
        for (offset, seg) in self.segs.iter_mut().enumerate() {
            let left_edge = offset == 0;
            if seg.state == SegState::InFlight {
                self.in_flight = self.in_flight.saturating_sub(u64::from(seg.len));
                seg.state = SegState::Lost;
            } else if left_edge {
                seg.state = SegState::Lost;
            }
        }
        let una = self.una;
        self.lost = (una..).zip(&self.segs).filter(|(_, s)| s.state == SegState::Lost).map(|(i, _)| i).collect();
    }

    /// Whether lost segments wait to be sent again (loss recovery).
    pub(super) fn in_recovery(&self) -> bool {
        !self.lost.is_empty()
    }

    /// Drops queue entries for segments no longer lost (delivered since, or
    /// already sent again), so that the front is always one to send.
    pub(super) fn prune_lost(&mut self) {
        while let Some(&index) = self.lost.front() {
            if self.get(index).is_some_and(|s| s.state == SegState::Lost) {
                break;
            }
            self.lost.pop_front();
        }
    }

    /// The first lost segment to send again (after pruning the queue).
    pub(super) fn next_lost(&mut self) -> Option<u64> {
        self.prune_lost();
        self.lost.front().copied()
    }

    /// Takes the front of the lost queue off (it is being sent).
    pub(super) fn pop_lost(&mut self) {
        self.lost.pop_front();
    }

    /// The lost segment at the front of the queue, as is (no pruning).
    pub(super) fn first_lost(&self) -> Option<&Seg> {
        self.lost.front().and_then(|&i| self.get(i)).filter(|s| s.state == SegState::Lost)
    }

    /// The most recently numbered segment in flight (a probe resends it).
    pub(super) fn last_in_flight(&self) -> Option<u64> {
        (self.una..self.nxt).rev().find(|&i| self.get(i).is_some_and(|s| s.state == SegState::InFlight))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero

    use std::collections::HashSet;
    use std::time::Duration;

    use super::super::rate::RateSampler;
    use super::*;
    use proptest::prelude::*;

    const SEG: u64 = 1000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn snap(now: Instant) -> SendState {
        RateSampler::default().on_send(now, true, false)
    }

    /// A board of `page` bytes with its first `n` segments sent, segment
    /// `i` at `t0 + i` ms with tag `i`.
    fn sent(page: u64, n: u64, t0: Instant) -> Scoreboard {
        let mut b = Scoreboard::new(page, SEG);
        for i in 0..n {
            let s = b.record_send(t0 + ms(i), b.nxt(), i as u32, snap(t0));
            assert_eq!(s, Sent { retransmission: false, tag: i as u32, transmissions: 1 });
        }
        b
    }

    /// Segments delivered by a cumulative ACK.
    fn cum(b: &mut Scoreboard, ack: u64, fin: bool) -> Vec<u64> {
        let mut got = Vec::new();
        b.on_cumulative_ack(ack, fin, |i, _| got.push(i));
        got
    }

    /// Segments delivered by a SACK.
    fn sack(b: &mut Scoreboard, blocks: &[(u64, u64)]) -> Vec<u64> {
        let mut got = Vec::new();
        b.on_sack(blocks, |i, _| got.push(i));
        got
    }

    fn state(b: &Scoreboard, i: u64) -> Option<SegState> {
        b.get(i).map(|s| s.state)
    }

    #[test]
    fn segments_cut_the_page_and_the_last_carries_fin() {
        let b = Scoreboard::new(2500, SEG);
        assert_eq!(b.total(), 3);
        assert_eq!((b.range(0), b.range(2), b.range(3)), ((0, 1000), (2000, 2500), (2500, 2500)));
        assert_eq!(b.len_of(2), 500);
        assert!(b.is_last(2) && !b.is_last(1));
        // An empty page is one empty FIN segment.
        let empty = Scoreboard::new(0, SEG);
        assert_eq!(empty.total(), 1);
        assert!(empty.is_last(0));
        assert_eq!(empty.len_of(0), 0);
        // A zero segment size is taken as one byte, not a division by zero.
        assert_eq!(Scoreboard::new(3, 0).total(), 3);
    }

    #[test]
    fn cumulative_ack_pops_whole_segments_only() {
        let t0 = Instant::now();
        let mut b = sent(10 * SEG, 5, t0);
        assert_eq!(b.in_flight(), 5 * SEG);
        assert_eq!(cum(&mut b, 2500, false), [0, 1], "segment 2 is only half acknowledged");
        assert_eq!((b.una(), b.nxt(), b.len()), (2, 5, 3));
        assert_eq!(b.in_flight(), 3 * SEG);
        assert!(b.get(1).is_none(), "popped off the board");
        assert!(cum(&mut b, 2500, false).is_empty(), "nothing new");
        let mut work = 0;
        let mut got = Vec::new();
        work += b.on_cumulative_ack(5 * SEG, false, |i, _| got.push(i));
        assert_eq!((got, work), (vec![2, 3, 4], 3));
        assert!(b.is_empty() && b.in_flight() == 0);
    }

    #[test]
    fn fin_segment_needs_the_fin_and_is_never_sacked() {
        let t0 = Instant::now();
        let mut b = sent(2500, 3, t0);
        assert!(sack(&mut b, &[(1000, 2500)]).contains(&1));
        assert_eq!(state(&b, 2), Some(SegState::InFlight), "a block over the FIN segment does not SACK it");
        assert_eq!(cum(&mut b, 2500, false), [0], "1 was SACKed; 2 needs the FIN");
        assert_eq!(b.una(), 2);
        assert_eq!(b.in_flight(), 500);
        assert_eq!(cum(&mut b, 2500, true), [2]);
        assert_eq!(b.una(), b.total());
        // The empty page's one segment, likewise.
        let mut e = sent(0, 1, t0);
        assert!(cum(&mut e, 0, false).is_empty());
        assert_eq!(cum(&mut e, 0, true), [0]);
    }

    #[test]
    fn sack_marks_whole_segments_once() {
        let t0 = Instant::now();
        let mut b = sent(10 * SEG, 8, t0);
        assert_eq!(sack(&mut b, &[(1500, 4200)]), [2, 3], "partial segments 1 and 4 are not SACKed");
        assert_eq!(state(&b, 2), Some(SegState::Sacked));
        assert_eq!(state(&b, 4), Some(SegState::InFlight));
        assert_eq!(b.in_flight(), 6 * SEG);
        // Known ranges cost nothing; only the new segment is reported.
        let mut got = Vec::new();
        let work = b.on_sack(&[(2000, 4000), (2000, 5000)], |i, _| got.push(i));
        assert_eq!(got, [4]);
        assert_eq!(work, 3, "two blocks and one new segment");
        // Beyond what was sent: ignored.
        assert!(sack(&mut b, &[(8000, 10_000)]).is_empty());
        // The cumulative ACK skips what SACKs delivered.
        assert_eq!(cum(&mut b, 6000, false), [0, 1, 5]);
    }

    #[test]
    fn in_flight_across_loss_retransmission_and_probe() {
        let t0 = Instant::now();
        let mut b = sent(10 * SEG, 4, t0);
        assert!(b.in_flight_from(1, 1));
        assert_eq!(b.mark_lost(1), Some(SEG));
        assert_eq!(b.in_flight(), 3 * SEG, "lost bytes leave the pipe");
        assert!(b.in_recovery());
        assert_eq!(b.next_lost(), Some(1));
        b.pop_lost();
        let again = b.record_send(t0 + ms(50), 1, 99, snap(t0));
        assert_eq!(again, Sent { retransmission: true, tag: 1, transmissions: 2 }, "keeps its first tag");
        assert_eq!(b.in_flight(), 4 * SEG, "back in the pipe");
        assert!(!b.in_flight_from(1, 1) && b.in_flight_from(1, 2));
        // A probe of a segment still in flight is not counted twice.
        assert_eq!(b.last_in_flight(), Some(3));
        b.record_send(t0 + ms(60), 3, 0, snap(t0));
        assert_eq!(b.in_flight(), 4 * SEG);
        // A lost segment SACKed later leaves the pipe only once.
        b.mark_lost(2);
        assert_eq!(b.in_flight(), 3 * SEG);
        assert_eq!(sack(&mut b, &[(2000, 3000)]), [2]);
        assert_eq!(b.in_flight(), 3 * SEG);
        assert_eq!(b.mark_lost(9), None, "not on the board");
    }

    #[test]
    fn lost_queue_skips_what_was_delivered_since() {
        let t0 = Instant::now();
        let mut b = sent(10 * SEG, 4, t0);
        b.mark_lost(1);
        b.mark_lost(2);
        sack(&mut b, &[(1000, 2000)]);
        assert!(b.first_lost().is_none(), "the front is stale until pruned");
        assert_eq!(b.next_lost(), Some(2));
        assert_eq!(b.first_lost().map(|s| s.len), Some(1000));
        cum(&mut b, 3000, false);
        assert_eq!(b.next_lost(), None);
        assert!(!b.in_recovery(), "pruned empty");
    }

    /// RFC 2018 §8: an RTO marks everything in flight lost and the left
    /// edge too, SACKed or not; other SACKed segments stay delivered.
    #[test]
    fn rto_marks_all_outstanding_lost_with_the_sacked_left_edge() {
        let t0 = Instant::now();
        let mut b = sent(10 * SEG, 5, t0);
        sack(&mut b, &[(1000, 3000)]);
        assert_eq!(cum(&mut b, 1000, false), [0]);
        // Now segment 1, SACKed, is the left edge.
        b.mark_lost(4);
        b.mark_all_lost();
        assert_eq!(b.in_flight(), 0);
        let states: Vec<_> = (1..5).map(|i| state(&b, i)).collect();
        use SegState::*;
        assert_eq!(states, [Some(Lost), Some(Sacked), Some(Lost), Some(Lost)]);
        let mut order = Vec::new();
        while let Some(i) = b.next_lost() {
            b.pop_lost();
            order.push(i);
            b.record_send(t0 + ms(100), i, 0, snap(t0));
        }
        assert_eq!(order, [1, 3, 4], "resent from the left edge, in order, each once");
        assert_eq!(b.in_flight(), 3 * SEG);
        // The left edge was delivered by its SACK: not again, but its copy
        // leaves the pipe.
        assert_eq!(cum(&mut b, 5000, false), [3, 4]);
        assert_eq!(b.in_flight(), 0);
    }

    proptest! {
        /// Any mix of sends, acknowledgments, losses, probes and timeouts:
        /// bytes in flight are exactly the segments in flight, the board is
        /// `una .. nxt`, and once everything is acknowledged every segment
        /// was delivered exactly once.
        #[test]
        fn nothing_is_delivered_twice(ops in proptest::collection::vec((0u8..7, 0u64..12, 0u64..12), 1..80)) {
            let t0 = Instant::now();
            let page = 11 * SEG + 300;
            let mut b = Scoreboard::new(page, SEG);
            let mut delivered = HashSet::new();
            let mut twice = Vec::new();
            let mut note = |i: u64, _: &Seg| if !delivered.insert(i) { twice.push(i) };
            for (step, (kind, x, y)) in ops.into_iter().enumerate() {
                let now = t0 + ms(step as u64);
                match kind {
                    0 | 1 if b.nxt() < b.total() => { b.record_send(now, b.nxt(), 0, snap(now)); }
                    2 => {
                        if let Some(i) = b.next_lost() {
                            b.pop_lost();
                            b.record_send(now, i, 0, snap(now));
                        }
                    }
                    3 => {
                        let ack = (b.una() + x % (b.nxt() - b.una() + 1)) * SEG;
                        b.on_cumulative_ack(ack.min(b.range(b.nxt()).0), y % 2 == 0, &mut note);
                    }
                    4 => {
                        let start = x * SEG + y * 100;
                        b.on_sack(&[(start, start + (y + 1) * 700)], &mut note);
                    }
                    5 => {
                        let i = b.una() + x;
                        if b.get(i).is_some_and(|s| s.state == SegState::InFlight) {
                            b.mark_lost(i);
                        }
                    }
                    6 if y < 3 => b.mark_all_lost(),
                    _ => {
                        if let Some(i) = b.last_in_flight() {
                            b.record_send(now, i, 0, snap(now));
                        }
                    }
                }
                let pipe: u64 = b.segs.iter().filter(|s| s.state == SegState::InFlight).map(|s| u64::from(s.len)).sum();
                prop_assert_eq!(b.in_flight(), pipe);
                prop_assert_eq!(b.len(), b.nxt() - b.una());
                for (i, s) in (b.una()..).zip(&b.segs) {
                    prop_assert!(s.state != SegState::Sacked || b.sacked.contains(i), "SACKed {} not in the set", i);
                }
            }
            // Finish: send the rest and acknowledge all.
            while b.nxt() < b.total() {
                b.record_send(t0, b.nxt(), 0, snap(t0));
            }
            b.on_cumulative_ack(page, true, &mut note);
            prop_assert!(twice.is_empty(), "delivered twice: {:?}", twice);
            prop_assert_eq!(delivered.len() as u64, b.total());
            prop_assert_eq!(b.in_flight(), 0);
            prop_assert!(b.is_empty());
        }
    }
}
