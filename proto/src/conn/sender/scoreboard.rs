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
