//! The client side of a connection: handshake, in-order reception, FIN|ACK
//! and TIME-WAIT (PROTOCOL.md §2–3).
//!
//! The client never sets its own retransmission timer once the handshake is
//! done: like a TCP receiver it answers what it receives, and the server's
//! timer drives recovery. A retransmitted packet is sent again unchanged; the
//! client's sequence number moves by one only when it has something new to
//! acknowledge (PROTOCOL.md §2).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ConnectionError;
use crate::config::{ClientConfig, Linger};
use crate::recovery::RttEstimator;
use crate::time::after;
use crate::wire::{Flags, Header, Seq};

/// What happened on a client connection, for the driver to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The handshake completed.
    Connected,
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
    /// FIN received and answered; answering retransmitted FINs until `until`.
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
    /// `last` must be (re)sent.
    send_due: bool,
    /// Whether `last` has been sent more than once (Karn's rule).
    last_resent: bool,
    /// When `last` was first sent, for RTT samples.
    last_sent_at: Option<Instant>,
    rtt: RttEstimator,
    /// SYN retransmission deadline (SYN-SENT only).
    rto_deadline: Option<Instant>,
    /// Give-up deadline: connect timeout, then idle timeout.
    give_up_at: Instant,
    readable: Vec<u8>,
    events: VecDeque<ClientEvent>,
    outcome: Option<Result<(), ConnectionError>>,
    stats: ClientStats,
}

impl ClientConn {
    /// Starts a connection: the SYN with sequence number `isn` is ready to be
    /// sent. `isn` should come from a CSPRNG (PROTOCOL.md §2).
    pub fn new(config: ClientConfig, isn: u32, now: Instant) -> Self {
        let isn = Seq(isn);
        let rtt = RttEstimator::new(config.rto);
        ClientConn {
            give_up_at: after(now, config.connect_timeout),
            config,
            state: State::SynSent,
            connected: false,
            isn,
            peer_isn: Seq(0),
            rcv_nxt: Seq(0),
            received: 0,
            last: Header::new(isn, Seq(0), Flags::SYN),
            send_due: true,
            last_resent: false,
            last_sent_at: None,
            rtt,
            rto_deadline: None,
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
            State::SynSent => self.on_syn_sent(now, header),
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

    fn on_syn_sent(&mut self, now: Instant, h: Header) -> bool {
        // RFC 9293 §3.10.7.3: a SYN|ACK must acknowledge our SYN. Any payload
        // is an extension answer, which a baseline client ignores.
        if !(h.flags.contains(Flags::SYN | Flags::ACK) && h.ack == self.isn + 1) {
            return false;
        }
        self.sample_rtt(now);
        self.peer_isn = h.seq;
        self.rcv_nxt = h.seq + 1;
        self.state = State::Established;
        self.connected = true;
        // The timer now guards the handshake ACK until the first segment.
        self.rto_deadline = None;
        self.events.push_back(ClientEvent::Connected);
        self.send_new(Header::new(self.isn + 1, self.rcv_nxt, Flags::ACK));
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
            // Only a retransmitted FIN needs an answer now: our FIN|ACK again.
            if h.flags.contains(Flags::FIN) {
                self.resend();
                return true;
            }
            return false;
        }
        // RFC 9293 §3.10.7.4: trim what we already have, take what is next.
        let offset = h.seq.since(self.rcv_nxt);
        if offset > 0 {
            // Beyond what we expect: a baseline server never sends ahead.
            // Repeat our acknowledgment so the sender learns where we are.
            self.resend();
            return false;
        }
        // The server has our handshake ACK: its timer is no longer needed.
        self.rto_deadline = None;
        let already = offset.unsigned_abs() as usize;
        let fresh = payload.get(already..).unwrap_or(&[]);
        self.stats.duplicate_bytes += (payload.len() - fresh.len()) as u64;
        if !fresh.is_empty() {
            // Our last ACK drew this new segment: one round trip.
            self.sample_rtt(now);
            self.readable.extend_from_slice(fresh);
            self.rcv_nxt = self.rcv_nxt + fresh.len() as u32;
            self.received += fresh.len() as u64;
        }
        // The FIN counts only when every byte before it is here.
        let fin_now = h.flags.contains(Flags::FIN) && h.seq + payload.len() as u32 == self.rcv_nxt;
        if fin_now {
            self.send_new(Header::new(self.last.seq + 1, self.rcv_nxt, Flags::ACK | Flags::FIN));
            let linger = match self.config.linger {
                Linger::Fixed(d) => d,
                Linger::Adaptive { min, max } => self.rtt.rto().saturating_mul(4).clamp(min, max.max(min)),
            };
            self.state = State::TimeWait { until: after(now, linger) };
            self.events.push_back(ClientEvent::Finished { len: self.received });
        } else if !fresh.is_empty() {
            self.send_new(Header::new(self.last.seq + 1, self.rcv_nxt, Flags::ACK));
        } else {
            // Old or duplicate data: acknowledge again what we have.
            self.resend();
        }
        true
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

    /// Queues a new packet; it becomes the one a retransmission repeats.
    fn send_new(&mut self, header: Header) {
        self.last = header;
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
        self.last.encode(&[], buf);
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
                Some(self.rto_deadline.map_or(self.give_up_at, |t| t.min(self.give_up_at)))
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
            State::SynSent | State::Established if self.rto_deadline.is_some_and(|t| now >= t) => {
                // RFC 6298 §5.4–5.5: retransmit the SYN or handshake ACK, back off.
                self.rtt.on_timeout();
                self.rto_deadline = None;
                self.send_due = true;
                self.last_resent = true;
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

    /// The current retransmission timeout estimate.
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }
}
