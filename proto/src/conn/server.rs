//! The server side of a connection: SYN|ACK, stop-and-wait data segments,
//! FIN on the last one, completion on the client's FIN|ACK (PROTOCOL.md §2).
//!
//! The sender keeps byte offsets into the shared page, never a copy of it, so
//! a connection costs the same whatever the page size.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::ServerConfig;
use crate::recovery::RttEstimator;
use crate::time::after;
use crate::wire::{BASELINE_SEGMENT, Flags, Header, Seq};

/// SYN|ACK retransmissions on the server's own timer, per connection. With
/// the first transmission that makes at most three SYN|ACKs per SYN (the
/// bound QUIC sets on unvalidated peers, RFC 9000 §8.1), so a forged SYN
/// cannot make the server send much to its victim. A client whose handshake
/// ACK keeps getting lost repeats it on its own timer.
const MAX_SYN_ACK_RETRANSMITS: u32 = 2;

/// Why a server connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client acknowledged the whole page with FIN|ACK.
    Completed,
    /// The client sent nothing acceptable for the idle timeout.
    IdleTimeout(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// RFC 9293 SYN-RECEIVED: our SYN|ACK is out, waiting for the ACK.
    SynReceived,
    /// Sending the page.
    Established,
    Closed(CloseReason),
}

/// The one packet in flight (stop-and-wait): the SYN|ACK or a data segment.
#[derive(Debug, Clone, Copy)]
struct Flight {
    /// Built once: a retransmission is the same packet (PROTOCOL.md §2).
    header: Header,
    /// Page offset and length of the payload.
    offset: u64,
    len: usize,
    /// When it was first sent, for an RTT sample.
    sent_at: Option<Instant>,
    /// Sent more than once (counted as a retransmission).
    retransmitted: bool,
    /// Sent again on the timer: no RTT sample (Karn's rule, RFC 6298 §3).
    /// A SYN|ACK repeated at once for a duplicate SYN does not count: the
    /// time since the first transmission is then a sample that can only be
    /// a little long, which is the safe side, and without it a duplicated
    /// SYN would leave the server at the initial 1 s RTO, far above the
    /// client's estimate and its TIME-WAIT.
    timed_out: bool,
}

/// Counters of one server connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub datagrams_sent: u64,
    pub payload_bytes_sent: u64,
    pub retransmissions: u64,
}

#[derive(Debug)]
pub(crate) struct ServerConn {
    state: State,
    page: Bytes,
    /// Our initial sequence number: page byte `i` has sequence `isn + 1 + i`.
    isn: Seq,
    /// The client's initial sequence number.
    peer_isn: Seq,
    /// Latest client sequence number accepted; our ack field is this plus one.
    peer_seq: Seq,
    /// Page bytes acknowledged (RFC 9293 SND.UNA, as an offset).
    snd_una: u64,
    flight: Flight,
    /// `flight` must be (re)sent.
    send_due: bool,
    rtt: RttEstimator,
    rto_deadline: Option<Instant>,
    /// SYN|ACKs sent again on the timer so far.
    syn_ack_retransmits: u32,
    idle_timeout: Duration,
    idle_deadline: Instant,
    pub(crate) stats: ConnStats,
}

impl ServerConn {
    /// A connection for a client whose SYN carried `peer_isn`; the SYN|ACK is
    /// ready to be sent.
    pub(crate) fn new(config: &ServerConfig, page: Bytes, isn: u32, peer_isn: Seq, now: Instant) -> Self {
        let isn = Seq(isn);
        ServerConn {
            state: State::SynReceived,
            page,
            isn,
            peer_isn,
            peer_seq: peer_isn,
            snd_una: 0,
            flight: Flight {
                header: Header::new(isn, peer_isn + 1, Flags::SYN | Flags::ACK),
                offset: 0,
                len: 0,
                sent_at: None,
                retransmitted: false,
                timed_out: false,
            },
            send_due: true,
            rtt: RttEstimator::new(config.rto),
            rto_deadline: None,
            syn_ack_retransmits: 0,
            idle_timeout: config.idle_timeout,
            idle_deadline: after(now, config.idle_timeout),
            stats: ConnStats::default(),
        }
    }

    fn seq_of(&self, offset: u64) -> Seq {
        // Truncation is the modulo-2^32 wrap of sequence numbers.
        self.isn + 1 + offset as u32
    }

    fn page_len(&self) -> u64 {
        self.page.len() as u64
    }

    /// Processes one datagram from this connection's client. Returns whether
    /// it fitted the connection's state.
    pub(crate) fn handle(&mut self, now: Instant, h: Header) -> bool {
        let accepted = match self.state {
            State::SynReceived => self.on_syn_received(now, h),
            State::Established => self.on_established(now, h),
            State::Closed(_) => false,
        };
        if accepted {
            self.idle_deadline = after(now, self.idle_timeout);
        }
        accepted
    }

    fn on_syn_received(&mut self, now: Instant, h: Header) -> bool {
        if h.flags.contains(Flags::SYN) {
            // PROTOCOL.md §3: a duplicate SYN gets the same SYN|ACK again.
            if !h.flags.contains(Flags::ACK) && h.seq == self.peer_isn {
                self.resend();
                return true;
            }
            return false;
        }
        // The handshake ACK: it acknowledges our SYN and follows the client's.
        if !(h.flags.contains(Flags::ACK) && h.ack == self.isn + 1 && h.seq == self.peer_isn + 1) {
            return false;
        }
        self.sample_rtt(now);
        self.peer_seq = h.seq;
        self.state = State::Established;
        // RFC 6298 §5.2: the SYN|ACK is acknowledged, stop its timer.
        self.rto_deadline = None;
        self.next_segment();
        true
    }

    fn on_established(&mut self, now: Instant, h: Header) -> bool {
        if !h.flags.contains(Flags::ACK) || h.flags.contains(Flags::SYN) {
            // Late duplicates of the SYN, or packets no client sends here.
            return false;
        }
        let una = self.seq_of(self.snd_una);
        let advance = h.ack.since(una);
        let flight_len = self.flight.len as i32;
        if advance < 0 || advance > flight_len + i32::from(h.flags.contains(Flags::FIN)) {
            // Acknowledges data we never sent, or older than what is
            // acknowledged already: not for this connection state.
            return false;
        }
        let fin_flight = self.flight.header.flags.contains(Flags::FIN);
        let fin_acked = fin_flight && h.flags.contains(Flags::FIN);
        if fin_acked && (advance == flight_len || advance == flight_len + 1) {
            // The client's FIN|ACK covers the last byte and our FIN. A client
            // that counts the FIN as a sequence number, as TCP does, acks one
            // more: that is the same completion.
            self.sample_rtt(now);
            self.snd_una = self.page_len();
            self.close(CloseReason::Completed);
            return true;
        }
        if advance == 0 || (advance == flight_len && fin_flight) {
            // A duplicate ACK, or the last data acknowledged without the FIN:
            // the RTO will send the FIN segment again.
            return true;
        }
        self.peer_seq = self.peer_seq.max(h.seq);
        self.snd_una += advance as u64;
        if advance == flight_len {
            self.sample_rtt(now);
        }
        // RFC 6298 §5.2: everything outstanding is acknowledged; the timer
        // starts again with the next segment (§5.1).
        self.rto_deadline = None;
        self.next_segment();
        true
    }

    fn sample_rtt(&mut self, now: Instant) {
        if let (Some(sent), false) = (self.flight.sent_at, self.flight.timed_out) {
            self.rtt.on_sample(now.saturating_duration_since(sent));
        }
    }

    /// Prepares the segment that starts at `snd_una`.
    fn next_segment(&mut self) {
        let remaining = self.page_len().saturating_sub(self.snd_una);
        let len = remaining.min(BASELINE_SEGMENT as u64) as usize;
        let fin = self.snd_una + len as u64 == self.page_len();
        let flags = if fin { Flags::ACK | Flags::FIN } else { Flags::ACK };
        self.flight = Flight {
            header: Header::new(self.seq_of(self.snd_una), self.peer_seq + 1, flags),
            offset: self.snd_una,
            len,
            sent_at: None,
            retransmitted: false,
            timed_out: false,
        };
        self.send_due = true;
    }

    fn resend(&mut self) {
        self.send_due = true;
        self.flight.retransmitted = true;
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed(reason);
        self.send_due = false;
        self.rto_deadline = None;
    }

    /// Writes the next datagram into `buf` (cleared first); false when there
    /// is nothing to send.
    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        if !self.send_due || matches!(self.state, State::Closed(_)) {
            return false;
        }
        self.send_due = false;
        let start = usize::try_from(self.flight.offset).unwrap_or(usize::MAX);
        let payload = start.checked_add(self.flight.len).and_then(|end| self.page.get(start..end)).unwrap_or(&[]);
        buf.clear();
        self.flight.header.encode(payload, buf);
        self.stats.datagrams_sent += 1;
        self.stats.payload_bytes_sent += payload.len() as u64;
        if self.flight.retransmitted {
            self.stats.retransmissions += 1;
        }
        if self.flight.sent_at.is_none() {
            self.flight.sent_at = Some(now);
        }
        // RFC 6298 §5.1: start the timer if it is not running.
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(after(now, self.rtt.rto()));
        }
        true
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed(_) => None,
            _ => Some(self.rto_deadline.map_or(self.idle_deadline, |t| t.min(self.idle_deadline))),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        if now >= self.idle_deadline {
            self.close(CloseReason::IdleTimeout(self.idle_timeout));
            return;
        }
        if self.rto_deadline.is_some_and(|t| now >= t) {
            self.rto_deadline = None;
            if self.state == State::SynReceived {
                if self.syn_ack_retransmits >= MAX_SYN_ACK_RETRANSMITS {
                    // Silent from now on; the idle timeout frees the state.
                    return;
                }
                self.syn_ack_retransmits += 1;
            }
            // RFC 6298 §5.4–5.6: retransmit the earliest unacknowledged
            // segment, double the RTO, restart the timer when it is sent.
            self.rtt.on_timeout();
            self.flight.timed_out = true;
            self.resend();
        }
    }

    pub(crate) fn wants_transmit(&self) -> bool {
        self.send_due && !matches!(self.state, State::Closed(_))
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        match self.state {
            State::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// The client's ISN while the handshake is incomplete.
    pub(crate) fn half_open_isn(&self) -> Option<Seq> {
        (self.state == State::SynReceived).then_some(self.peer_isn)
    }

    pub(crate) fn is_established(&self) -> bool {
        self.state == State::Established
    }

    pub(crate) fn acked(&self) -> u64 {
        self.snd_una
    }
}
