//! The client side of a connection: handshake (with the fast-mode offer),
//! reception, FIN|ACK and TIME-WAIT (PROTOCOL.md §2–3, docs/PROTOCOL.md §6).
//!
//! Once the first segment has arrived the client never retransmits on its
//! own: like a TCP receiver it answers what it receives, and the server's
//! timers drive recovery. A retransmitted packet is sent again unchanged; the
//! client's sequence number moves by one only when it has something new to
//! say (PROTOCOL.md §2).
//!
//! In baseline mode only the next in-order segment is taken and every one is
//! acknowledged. In fast mode segments beyond a gap are kept (up to the
//! receive window, which bounds this memory) and reported in SACK blocks,
//! and in-order segments are acknowledged every `ack_every` segments or
//! after `max_ack_delay`, whichever comes first; anything out of order is
//! acknowledged at once.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::{ConnectionError, Mode};
use crate::config::{ClientConfig, FastClient, Linger};
use crate::recovery::RttEstimator;
use crate::time::after;
use crate::wire::ext::{AckInfo, Answer, MAX_SACK_BLOCKS, Offer};
use crate::wire::{Flags, Header, Seq};

/// What happened on a client connection, for the driver to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The handshake completed, in this mode.
    Connected(Mode),
    /// The server's FIN arrived after every byte before it: the page is
    /// complete in [`ClientConn::readable`] and what was consumed before.
    Finished {
        /// Length of the page in bytes.
        len: u64,
    },
    /// The connection is over (after TIME-WAIT, or on an error);
    /// [`ClientConn::outcome`] says how.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// RFC 9293 SYN-SENT: our SYN is out, waiting for SYN|ACK.
    SynSent,
    /// Receiving the page.
    Established,
    /// FIN received and answered; answering retransmissions until `until`.
    TimeWait {
        until: Instant,
    },
    Closed,
}

/// Counters of one client connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Datagrams handed to [`ClientConn::handle`].
    pub datagrams_received: u64,
    /// Datagrams that could not be decoded or fit no state.
    pub datagrams_dropped: u64,
    /// Datagrams produced by [`ClientConn::poll_transmit`].
    pub datagrams_sent: u64,
    /// Packets sent again unchanged.
    pub retransmissions: u64,
    /// Payload bytes received more than once.
    pub duplicate_bytes: u64,
}

/// Fast-mode reception state.
#[derive(Debug, Default)]
struct Reassembly {
    /// Segments beyond a gap, by page offset.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Page offset where the FIN segment ends, once seen.
    fin_at: Option<u64>,
    /// In-order segments not yet acknowledged.
    unacked: u32,
    /// When a delayed acknowledgment is due.
    ack_deadline: Option<Instant>,
    /// Offset of the most recently received out-of-order segment: its
    /// block is reported first (RFC 2018 §4).
    latest: Option<u64>,
}

/// One client connection, with no I/O and no clock: feed it datagrams and
/// time, take datagrams and a deadline out.
///
/// Call order, as in quinn-proto: after [`handle`](Self::handle) or
/// [`handle_timeout`](Self::handle_timeout), drain
/// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event),
/// consume [`readable`](Self::readable), then sleep until
/// [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct ClientConn {
    config: ClientConfig,
    state: State,
    mode: Mode,
    /// The server's answer, in fast mode.
    answer: Option<Answer>,
    /// The handshake completed at some point.
    connected: bool,
    /// Our initial sequence number.
    isn: Seq,
    /// The server's initial sequence number, once known.
    peer_isn: Seq,
    /// Next page byte expected from the server (RFC 9293 RCV.NXT).
    rcv_nxt: Seq,
    /// Page bytes received in order so far.
    received: u64,
    /// The last packet we built; a retransmission sends it again unchanged.
    last: Header,
    last_payload: Vec<u8>,
    /// `last` must be (re)sent.
    send_due: bool,
    /// Whether `last` has been sent more than once (Karn's rule).
    last_resent: bool,
    /// When `last` was first sent, for RTT samples.
    last_sent_at: Option<Instant>,
    rtt: RttEstimator,
    /// SYN and handshake-ACK retransmission deadline.
    rto_deadline: Option<Instant>,
    /// Give-up deadline: connect timeout, then idle timeout.
    give_up_at: Instant,
    reasm: Reassembly,
    readable: Vec<u8>,
    events: VecDeque<ClientEvent>,
    outcome: Option<Result<(), ConnectionError>>,
    stats: ClientStats,
}

impl ClientConn {
    /// Starts a connection: the SYN with sequence number `isn` is ready to be
    /// sent, with a fast-mode offer if the configuration has one. `isn`
    /// should come from a CSPRNG (PROTOCOL.md §2).
    pub fn new(config: ClientConfig, isn: u32, now: Instant) -> Self {
        let isn = Seq(isn);
        let rtt = RttEstimator::new(config.rto);
        let mut offer = Vec::new();
        if let Some(fast) = config.fast {
            Offer { max_segment: fast.max_segment, recv_window: fast.recv_window }.encode(&mut offer);
        }
        ClientConn {
            give_up_at: after(now, config.connect_timeout),
            config,
            state: State::SynSent,
            mode: Mode::Baseline,
            answer: None,
            connected: false,
            isn,
            peer_isn: Seq(0),
            rcv_nxt: Seq(0),
            received: 0,
            last: Header::new(isn, Seq(0), Flags::SYN),
            last_payload: offer,
            send_due: true,
            last_resent: false,
            last_sent_at: None,
            rtt,
            rto_deadline: None,
            reasm: Reassembly::default(),
            readable: Vec::new(),
            events: VecDeque::new(),
            outcome: None,
            stats: ClientStats::default(),
        }
    }

    /// Processes one datagram received from the server.
    pub fn handle(&mut self, now: Instant, datagram: &[u8]) {
        self.stats.datagrams_received += 1;
        let Ok((header, payload)) = Header::decode(datagram) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let accepted = match self.state {
            State::SynSent => self.on_syn_sent(now, header, payload),
            State::Established | State::TimeWait { .. } => self.on_segment(now, header, payload),
            State::Closed => false,
        };
        if accepted {
            if matches!(self.state, State::Established) {
                self.give_up_at = after(now, self.config.idle_timeout);
            }
        } else {
            self.stats.datagrams_dropped += 1;
        }
    }

    fn on_syn_sent(&mut self, now: Instant, h: Header, payload: &[u8]) -> bool {
        // RFC 9293 §3.10.7.3: a SYN|ACK must acknowledge our SYN.
        if !(h.flags.contains(Flags::SYN | Flags::ACK) && h.ack == self.isn + 1) {
            return false;
        }
        // Fast mode only if we offered it and the answer is well formed; a
        // server that ignored the offer answers with a bare SYN|ACK.
        self.answer = self.config.fast.and_then(|_| Answer::decode(payload));
        self.mode = match self.answer {
            Some(a) => Mode::Fast { segment: a.segment },
            None => Mode::Baseline,
        };
        self.sample_rtt(now);
        self.peer_isn = h.seq;
        self.rcv_nxt = h.seq + 1;
        self.state = State::Established;
        self.connected = true;
        // The timer now guards the handshake ACK until the first segment.
        self.rto_deadline = None;
        self.events.push_back(ClientEvent::Connected(self.mode));
        self.send_new(Header::new(self.isn + 1, self.rcv_nxt, Flags::ACK), Vec::new());
        true
    }

    fn on_segment(&mut self, now: Instant, h: Header, payload: &[u8]) -> bool {
        if h.flags.contains(Flags::SYN) {
            // A duplicate SYN|ACK: our handshake ACK was lost or is late.
            if h.flags.contains(Flags::ACK) && h.seq == self.peer_isn && h.ack == self.isn + 1 {
                self.resend();
                return true;
            }
            return false;
        }
        if matches!(self.state, State::TimeWait { .. }) {
            // The server is still sending: it missed our FIN|ACK, which
            // acknowledges everything. Send it again.
            self.resend();
            return true;
        }
        // The server has our handshake ACK: its timer is no longer needed.
        self.rto_deadline = None;
        match self.fast() {
            None => self.on_baseline_segment(now, h, payload),
            Some(fast) => self.on_fast_segment(now, h, payload, fast),
        }
        true
    }

    /// Baseline: take the next in-order bytes, acknowledge every segment.
    fn on_baseline_segment(&mut self, now: Instant, h: Header, payload: &[u8]) {
        // RFC 9293 §3.10.7.4: trim what we already have, take what is next.
        let offset = h.seq.since(self.rcv_nxt);
        if offset > 0 {
            // Beyond what we expect: a baseline server never sends ahead.
            // Repeat our acknowledgment so the sender learns where we are.
            self.resend();
            return;
        }
        let fresh = payload.get(offset.unsigned_abs() as usize..).unwrap_or(&[]);
        self.stats.duplicate_bytes += (payload.len() - fresh.len()) as u64;
        if !fresh.is_empty() {
            // Our last ACK drew this new segment: one round trip.
            self.sample_rtt(now);
            self.deliver(fresh);
        }
        // The FIN counts only when every byte before it is here.
        let fin_now = h.flags.contains(Flags::FIN) && h.seq + payload.len() as u32 == self.rcv_nxt;
        if fin_now {
            self.finish(now);
        } else if !fresh.is_empty() {
            self.send_new(Header::new(self.next_seq(), self.rcv_nxt, Flags::ACK), Vec::new());
        } else {
            // Old or duplicate data: acknowledge again what we have.
            self.resend();
        }
    }

    /// Fast: keep what fits the window, acknowledge with SACK blocks.
    fn on_fast_segment(&mut self, now: Instant, h: Header, payload: &[u8], fast: FastClient) {
        let rel = i64::from(h.seq.since(self.rcv_nxt));
        let start = self.received as i64 + rel;
        let end = start + payload.len() as i64;
        if h.flags.contains(Flags::FIN) && end >= 0 {
            self.reasm.fin_at = Some(end as u64);
        }
        let window_end = self.received + u64::from(fast.recv_window);
        let mut ack_now = false;
        if rel > 0 {
            // Beyond a gap: keep it if it fits the window, say so at once.
            let start = start as u64;
            if (end as u64) <= window_end && !payload.is_empty() {
                match self.reasm.pending.entry(start) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        self.stats.duplicate_bytes += payload.len() as u64;
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(payload.to_vec());
                    }
                }
                self.reasm.latest = Some(start);
            }
            ack_now = true;
        } else {
            let fresh = payload.get(rel.unsigned_abs() as usize..).unwrap_or(&[]);
            self.stats.duplicate_bytes += (payload.len() - fresh.len()) as u64;
            if fresh.is_empty() {
                // A duplicate: the sender may be missing our acknowledgment.
                ack_now = true;
            } else {
                self.deliver(fresh);
                self.reasm.unacked += 1;
                // Anything queued that now follows on?
                while let Some(entry) = self.reasm.pending.first_entry() {
                    let at = *entry.key();
                    if at > self.received {
                        break;
                    }
                    let data = entry.remove();
                    let skip = usize::try_from(self.received - at).unwrap_or(usize::MAX);
                    if let Some(tail) = data.get(skip..) {
                        self.deliver(tail);
                    }
                    // A gap was filled: report the new state at once.
                    ack_now = true;
                }
            }
        }
        if self.reasm.fin_at.is_some_and(|f| self.received >= f) {
            self.finish(now);
            return;
        }
        if ack_now || self.reasm.unacked >= fast.ack_every {
            self.send_fast_ack();
        } else if self.reasm.ack_deadline.is_none() {
            self.reasm.ack_deadline = Some(after(now, fast.max_ack_delay));
        }
    }

    fn fast(&self) -> Option<FastClient> {
        match self.mode {
            Mode::Fast { .. } => self.config.fast,
            Mode::Baseline => None,
        }
    }

    fn deliver(&mut self, data: &[u8]) {
        self.readable.extend_from_slice(data);
        self.rcv_nxt = self.rcv_nxt + data.len() as u32;
        self.received += data.len() as u64;
    }

    /// The page is complete: FIN|ACK, then TIME-WAIT.
    fn finish(&mut self, now: Instant) {
        let payload = self.ack_info(false);
        self.send_new(Header::new(self.next_seq(), self.rcv_nxt, Flags::ACK | Flags::FIN), payload);
        let linger = match self.config.linger {
            Linger::Fixed(d) => d,
            Linger::Adaptive { min, max } => self.rtt.rto().saturating_mul(4).clamp(min, max.max(min)),
        };
        self.state = State::TimeWait { until: after(now, linger) };
        self.reasm = Reassembly::default();
        self.events.push_back(ClientEvent::Finished { len: self.received });
    }

    /// The ACK payload in fast mode: window and SACK blocks (none in
    /// baseline mode, whose ACKs are bare headers).
    fn ack_info(&self, with_sack: bool) -> Vec<u8> {
        let Some(fast) = self.fast() else { return Vec::new() };
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        if with_sack {
            for (&at, data) in &self.reasm.pending {
                let end = at + data.len() as u64;
                match blocks.last_mut() {
                    Some((_, e)) if *e >= at => *e = (*e).max(end),
                    _ => blocks.push((at, end)),
                }
            }
            // RFC 2018 §4: the block with the latest arrival first, then the
            // others, highest first (the sender has the low ones' news).
            blocks.reverse();
            if let Some(latest) = self.reasm.latest {
                if let Some(i) = blocks.iter().position(|&(s, e)| s <= latest && latest < e) {
                    let b = blocks.remove(i);
                    blocks.insert(0, b);
                }
            }
            blocks.truncate(MAX_SACK_BLOCKS);
        }
        let base = self.rcv_nxt;
        let to_seq = |offset: u64| base + (offset - self.received) as u32;
        let info =
            AckInfo { window: fast.recv_window, sack: blocks.iter().map(|&(s, e)| (to_seq(s), to_seq(e))).collect() };
        let mut out = Vec::with_capacity(5 + 8 * MAX_SACK_BLOCKS);
        info.encode(&mut out);
        out
    }

    fn send_fast_ack(&mut self) {
        self.reasm.unacked = 0;
        self.reasm.ack_deadline = None;
        let payload = self.ack_info(true);
        if self.last.ack == self.rcv_nxt && self.last_payload == payload && !self.last.flags.contains(Flags::SYN) {
            // Nothing new to say: the same packet again.
            self.resend();
        } else {
            self.send_new(Header::new(self.next_seq(), self.rcv_nxt, Flags::ACK), payload);
        }
    }

    /// Takes an RTT sample from our last packet to what it drew, unless the
    /// packet was sent again (Karn's rule) or the sample is as long as the
    /// RTO: then the answer was most likely the server's retransmission,
    /// which the client cannot tell apart, and the sample would inflate
    /// TIME-WAIT.
    fn sample_rtt(&mut self, now: Instant) {
        if let (Some(sent), false) = (self.last_sent_at, self.last_resent) {
            let rtt = now.saturating_duration_since(sent);
            if rtt < self.rtt.rto() {
                self.rtt.on_sample(rtt);
            }
        }
    }

    /// Sequence number for a new packet: one more than the last one sent.
    /// A new packet that replaces one never sent takes over its number, so
    /// the numbers count packets on the wire (PROTOCOL.md §2).
    fn next_seq(&self) -> Seq {
        let unsent = self.send_due && self.last_sent_at.is_none() && !self.last_resent;
        if unsent && !self.last.flags.contains(Flags::SYN) { self.last.seq } else { self.last.seq + 1 }
    }

    /// Queues a new packet; it becomes the one a retransmission repeats.
    fn send_new(&mut self, header: Header, payload: Vec<u8>) {
        self.last = header;
        self.last_payload = payload;
        self.send_due = true;
        self.last_resent = false;
        self.last_sent_at = None;
    }

    /// Queues the last packet again, unchanged.
    fn resend(&mut self) {
        if !self.send_due {
            self.send_due = true;
            self.last_resent = true;
        }
    }

    /// Writes the next datagram to send into `buf` (cleared first) and
    /// returns true, or returns false when there is nothing to send.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        if !self.send_due || self.state == State::Closed {
            return false;
        }
        self.send_due = false;
        buf.clear();
        self.last.encode(&self.last_payload, buf);
        self.stats.datagrams_sent += 1;
        if self.last_resent {
            self.stats.retransmissions += 1;
        } else if self.last_sent_at.is_none() {
            self.last_sent_at = Some(now);
        }
        if self.state == State::SynSent || self.awaiting_first_segment() {
            // RFC 6298 §5.1/§5.6: (re)arm the timer with the current RTO. It
            // guards the SYN, then the handshake ACK: the server stops
            // repeating its SYN|ACK after a few tries (no amplification), so
            // a lost handshake ACK must be repeated from this side.
            self.rto_deadline = Some(after(now, self.rtt.rto()));
        }
        true
    }

    /// The earliest time at which [`handle_timeout`](Self::handle_timeout)
    /// must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::SynSent | State::Established => {
                [Some(self.give_up_at), self.rto_deadline, self.reasm.ack_deadline].into_iter().flatten().min()
            }
            State::TimeWait { until } => Some(until),
            State::Closed => None,
        }
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::SynSent | State::Established if now >= self.give_up_at => {
                let err = if self.state == State::SynSent {
                    ConnectionError::ConnectTimeout(self.config.connect_timeout)
                } else {
                    ConnectionError::IdleTimeout(self.config.idle_timeout)
                };
                self.close(Err(err));
            }
            State::SynSent | State::Established => {
                if self.rto_deadline.is_some_and(|t| now >= t) {
                    // RFC 6298 §5.4–5.5: retransmit the SYN or handshake ACK, back off.
                    self.rtt.on_timeout();
                    self.rto_deadline = None;
                    self.send_due = true;
                    self.last_resent = true;
                }
                if self.reasm.ack_deadline.is_some_and(|t| now >= t) {
                    self.send_fast_ack();
                }
            }
            State::TimeWait { until } if now >= until => self.close(Ok(())),
            _ => {}
        }
    }

    fn close(&mut self, outcome: Result<(), ConnectionError>) {
        self.state = State::Closed;
        self.send_due = false;
        self.outcome = Some(outcome);
        self.events.push_back(ClientEvent::Closed);
    }

    /// Aborts the connection locally, e.g. when the server is known to be
    /// unreachable. Nothing more is sent.
    pub fn abort(&mut self, error: ConnectionError) {
        if self.state != State::Closed {
            self.close(Err(error));
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Page bytes received in order and not yet consumed.
    pub fn readable(&self) -> &[u8] {
        &self.readable
    }

    /// Marks the first `n` readable bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.readable.drain(..n.min(self.readable.len()));
    }

    /// The mode the handshake settled (baseline until it completes).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The server's fast-mode answer: page length and SHA-256.
    pub fn answer(&self) -> Option<&Answer> {
        self.answer.as_ref()
    }

    /// Established, with nothing received from the server since its SYN|ACK.
    fn awaiting_first_segment(&self) -> bool {
        self.state == State::Established && self.last.seq == self.isn + 1
    }

    /// Whether the handshake has completed (it may have ended since).
    pub fn is_established(&self) -> bool {
        self.connected
    }

    /// Whether the whole page has arrived (the FIN was accepted).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::TimeWait { .. }) || self.outcome == Some(Ok(()))
    }

    /// How the connection ended, once it has.
    pub fn outcome(&self) -> Option<&Result<(), ConnectionError>> {
        self.outcome.as_ref()
    }

    /// Page bytes received in order so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Counters of this connection.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }
}
