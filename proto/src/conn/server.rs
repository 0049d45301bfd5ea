//! The server side of a connection: the handshake (with the fast-mode
//! answer when the client offered it), then the page through the
//! [`Sender`], then completion on the client's FIN|ACK (PROTOCOL.md §2,
//! docs/PROTOCOL.md §6).
//!
//! The connection keeps byte offsets into the shared page, never a copy of
//! it, so a connection costs the same whatever the page size.

use std::time::{Duration, Instant};

use super::sender::{Sender, SenderParams};
use crate::cc::Fixed;
use crate::config::ServerConfig;
use crate::page::Body;
use crate::recovery::RttEstimator;
use crate::time::after;
use crate::wire::ext::{ANSWER_DATAGRAM_LEN, AckInfo, Answer, MAX_SACK_BLOCKS, MAX_SEGMENT, Offer};
use crate::wire::{BASELINE_SEGMENT, Flags, HEADER_LEN, Header, Seq};

/// SYN|ACK retransmissions on the server's own timer, per connection. With
/// the first transmission that makes at most three SYN|ACKs per SYN (the
/// bound QUIC sets on unvalidated peers, RFC 9000 §8.1), so a forged SYN
/// cannot make the server send much to its victim. A client whose handshake
/// ACK keeps getting lost repeats it on its own timer.
const MAX_SYN_ACK_RETRANSMITS: u32 = 2;

/// Smallest MAX_SEGMENT answered with fast mode.
const MIN_FAST_SEGMENT: u16 = 64;

/// How far past ISN + 1 the sequence number of a handshake ACK may be: the
/// client numbers each new ACK, and those sent before the server saw the
/// handshake were dropped.
const HANDSHAKE_SEQ_WINDOW: i32 = 1024;

/// The mode a SYN's payload settles, and the offer it carried: fast mode is
/// answered only to a well-formed offer in a SYN at least as long as the
/// SYN|ACK carrying the answer (no amplification).
pub(crate) fn negotiate(config: &ServerConfig, syn_payload: &[u8]) -> (Mode, Option<Offer>) {
    let offer = (config.fast && HEADER_LEN + syn_payload.len() >= ANSWER_DATAGRAM_LEN)
        .then(|| Offer::decode(syn_payload))
        .flatten()
        // Below 64 bytes a segment costs more in headers and scoreboard
        // entries than it carries (a 16 MiB window of 1-byte segments would
        // be 16 M entries): baseline, as a SYN cookie rounds it.
        .filter(|o| o.max_segment >= MIN_FAST_SEGMENT);
    let mode = match offer {
        Some(o) => Mode::Fast { segment: o.max_segment.min(config.max_segment).clamp(1, MAX_SEGMENT) },
        None => Mode::Baseline,
    };
    (mode, offer)
}

/// Appends the SYN|ACK for a client whose SYN had `peer_isn`, with the
/// fast-mode answer when the mode is fast.
pub(crate) fn encode_syn_ack(isn: Seq, peer_isn: Seq, mode: Mode, body: &Body, buf: &mut Vec<u8>) {
    Header::new(isn, peer_isn + 1, Flags::SYN | Flags::ACK).encode(&[], buf);
    if let Mode::Fast { segment } = mode {
        // A streamed page announces STREAMED: its length and digest come
        // in its trailer (docs/PROTOCOL.md §9.7).
        let (page_len, page_sha256) = body.announced();
        Answer { segment, page_len, page_sha256 }.encode(buf);
    }
}

/// How a datagram fitted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Not acceptable in the connection's state.
    No,
    /// Part of its exchange, and it moved something: the handshake, the
    /// cumulative acknowledgment, a SACK block that delivered data, the end.
    Progress,
    /// Acceptable, but it changed nothing: a duplicate SYN or ACK.
    Nothing,
}

/// Why a server connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client acknowledged the whole page with FIN|ACK.
    Completed,
    /// The client sent nothing acceptable for the idle timeout.
    IdleTimeout(Duration),
}

/// The mode a connection runs in, settled by the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The assignment's exchange: stop-and-wait, 512-byte segments.
    Baseline,
    /// The negotiated extension.
    Fast {
        /// Payload bytes per segment.
        segment: u16,
    },
}

#[derive(Debug)]
enum State {
    /// RFC 9293 SYN-RECEIVED: our SYN|ACK is out, waiting for the ACK.
    SynReceived(Handshake),
    /// Sending the page.
    Established(Box<Sender>),
    Closed(CloseReason),
}

/// The SYN|ACK in flight.
#[derive(Debug)]
struct Handshake {
    rtt: RttEstimator,
    rto_deadline: Option<Instant>,
    send_due: bool,
    /// When it was first sent, for an RTT sample.
    sent_at: Option<Instant>,
    /// Sent again on the timer: no RTT sample (Karn's rule, RFC 6298 §3).
    /// A SYN|ACK repeated at once for a duplicate SYN does not count: the
    /// time since the first transmission is then a sample that can only be
    /// a little long, the safe side; without it, a duplicated SYN would
    /// leave the server at the initial 1 s RTO, far above the client's
    /// estimate and its TIME-WAIT.
    timed_out: bool,
    retransmits: u32,
    /// Secure mode's early segment (docs/PROTOCOL.md §8.3): the length of
    /// the longest sent before the handshake ACK, page bytes `0..len`. The
    /// handshake ACK may then acknowledge up to them (RFC 9293 §3.10.7.4:
    /// SND.UNA < SEG.ACK ≤ SND.NXT).
    early_len: u64,
}

/// What [`ServerConn::early_segment`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EarlyData {
    /// Appended a segment with this header and this many page bytes.
    Sent(Header, usize),
    /// Not enough of a streamed page yet: ask again when it grows.
    Later,
    /// None to send: the handshake is over, the mode is baseline, the page
    /// is empty, or there is no room.
    Never,
}

/// Counters of one server connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Datagrams produced.
    pub datagrams_sent: u64,
    /// Page bytes sent, retransmissions included.
    pub payload_bytes_sent: u64,
    /// Datagrams sent again.
    pub retransmissions: u64,
}

#[derive(Debug)]
pub(crate) struct ServerConn {
    state: State,
    mode: Mode,
    /// The page, or a stream still arriving: a streamed page's bytes are
    /// followed by its trailer, and offsets count in that stream.
    body: Body,
    /// Our initial sequence number: page byte `i` has sequence `isn + 1 + i`.
    isn: Seq,
    /// The client's initial sequence number.
    peer_isn: Seq,
    /// Latest client sequence number accepted; our ack field is this plus one.
    peer_seq: Seq,
    /// Receive window the client offered (fast mode).
    peer_window: u64,
    congestion: crate::cc::Algorithm,
    max_peer_window: u64,
    idle_timeout: Duration,
    idle_deadline: Instant,
    /// Page bytes acknowledged when the connection closed.
    acked_at_close: u64,
    /// Fast mode, completed: the sequence number of the client's FIN|ACK,
    /// which the final ACK acknowledges (docs/PROTOCOL.md §6.3).
    fin_ack_seq: Option<(Seq, Seq)>,
    pub(crate) stats: ConnStats,
}

impl ServerConn {
    /// A connection for a client whose SYN had sequence number `peer_isn`
    /// and the given payload; the SYN|ACK is ready to be sent. Fast mode is
    /// answered only to a well-formed offer in a SYN at least as long as the
    /// SYN|ACK carrying the answer (no amplification).
    pub(crate) fn new(
        config: &ServerConfig,
        body: Body,
        isn: u32,
        peer_isn: Seq,
        syn_payload: &[u8],
        now: Instant,
    ) -> Self {
        let (mode, offer) = negotiate(config, syn_payload);
        ServerConn {
            state: State::SynReceived(Handshake {
                rtt: RttEstimator::new(config.rto),
                rto_deadline: None,
                send_due: true,
                sent_at: None,
                timed_out: false,
                retransmits: 0,
                early_len: 0,
            }),
            mode,
            body,
            isn: Seq(isn),
            peer_isn,
            peer_seq: peer_isn,
            peer_window: offer.map_or(u64::MAX, |o| u64::from(o.recv_window)),
            congestion: config.congestion,
            max_peer_window: config.max_peer_window,
            idle_timeout: config.idle_timeout,
            idle_deadline: after(now, config.idle_timeout),
            acked_at_close: 0,
            fin_ack_seq: None,
            stats: ConnStats::default(),
        }
    }

    /// A connection rebuilt from a valid SYN cookie: the handshake ACK has
    /// just arrived, so it starts sending at once. There is no RTT sample
    /// (the SYN|ACK's send time was not kept).
    pub(crate) fn from_cookie(
        config: &ServerConfig,
        body: Body,
        isn: u32,
        peer_isn: Seq,
        mode: Mode,
        peer_window: u64,
        now: Instant,
    ) -> Self {
        let mut conn = ServerConn::new(config, body, isn, peer_isn, &[], now);
        conn.mode = mode;
        conn.peer_window = peer_window;
        conn.peer_seq = peer_isn + 1;
        conn.start_sending(RttEstimator::new(config.rto));
        conn
    }

    /// What this connection serves.
    pub(crate) fn body(&self) -> &Body {
        &self.body
    }

    /// A streamed page grew (or ended): the sender learns how far it may
    /// go. A connection waiting on its page (everything sent acknowledged)
    /// is not idle while the page grows: the idle timeout runs from the
    /// later of the client's last progress and the page's. Returns false once the page's end is known
    /// (nothing more will come).
    pub(crate) fn sync_stream(&mut self, now: Instant) -> bool {
        if !self.body.is_streaming() {
            return false;
        }
        let (available, len) = self.body.available();
        if let State::Established(sender) = &mut self.state {
            // Only while it waits on the origin (everything sent is
            // acknowledged): a client that stopped acknowledging is not
            // kept alive by the page's growth.
            if available > sender.available() && sender.acked() == sender.sent_end() {
                self.idle_deadline = after(now, self.idle_timeout);
            }
            sender.grow(available, len);
        }
        len.is_none()
    }

    /// The mode the handshake settled.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Processes one datagram from this connection's client. Returns whether
    /// it fitted the connection's state.
    pub(crate) fn handle(&mut self, now: Instant, h: Header, payload: &[u8]) -> Accepted {
        let before = (self.acked(), self.half_open_isn().is_some(), self.closed());
        let delivered = self.delivered();
        let accepted = match self.state {
            State::SynReceived(_) => self.on_syn_received(now, h, payload),
            State::Established(_) => self.on_established(now, h, payload),
            State::Closed(_) => false,
        };
        if !accepted {
            return Accepted::No;
        }
        // Only progress (the handshake completing, the cumulative
        // acknowledgment moving) holds the idle deadline off: a client that
        // keeps sending SACKs or duplicates while never acknowledging the
        // first segment cannot hold a connection forever.
        if (self.acked(), self.half_open_isn().is_some(), self.closed()) != before {
            self.idle_deadline = after(now, self.idle_timeout);
            Accepted::Progress
        } else if self.delivered() != delivered {
            Accepted::Progress
        } else {
            Accepted::Nothing
        }
    }

    /// When the connection is given up unless it makes progress.
    pub(crate) fn idle_deadline(&self) -> Instant {
        self.idle_deadline
    }

    /// Keeps an earlier connection's idle deadline (a restarted handshake).
    pub(crate) fn keep_idle_deadline(&mut self, at: Instant) {
        self.idle_deadline = self.idle_deadline.min(at);
    }

    fn delivered(&self) -> u64 {
        match &self.state {
            State::Established(sender) => sender.delivered(),
            _ => 0,
        }
    }

    fn closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    fn on_syn_received(&mut self, now: Instant, h: Header, payload: &[u8]) -> bool {
        let State::SynReceived(hs) = &mut self.state else { return false };
        if h.flags.contains(Flags::SYN) {
            // PROTOCOL.md §3: a duplicate SYN gets the same SYN|ACK again,
            // but never a larger one (no amplification): a bare SYN after an
            // offer (the client's fallback, docs/PROTOCOL.md §6.1) is left
            // unanswered, and the client's next SYN, with the offer, draws it.
            if !h.flags.contains(Flags::ACK) && h.seq == self.peer_isn {
                let fits = self.mode == Mode::Baseline || HEADER_LEN + payload.len() >= ANSWER_DATAGRAM_LEN;
                hs.send_due |= fits;
                return true;
            }
            return false;
        }
        // The handshake ACK: it acknowledges our SYN. Its sequence number is
        // the client's ISN + 1, or a little more if the client has sent ACKs
        // since that were lost or dropped (RFC 9293 §3.10.7.4: acceptable
        // within the window).
        // It may also acknowledge secure mode's early segment, whole or in
        // part; never more.
        let ahead = h.seq.since(self.peer_isn + 1);
        let acked = i64::from(h.ack.since(self.isn + 1));
        let early_len = hs.early_len as i64;
        if !(h.flags.contains(Flags::ACK)
            && (0..=early_len).contains(&acked)
            && (0..HANDSHAKE_SEQ_WINDOW).contains(&ahead))
        {
            return false;
        }
        let mut rtt = hs.rtt.clone();
        // An ACK of early bytes is no sample: the early segment may have
        // waited for the origin after the SYN|ACK, and the client delays
        // its ACK of data (the sender then starts as after a SYN cookie).
        if let (Some(sent), false, 0) = (hs.sent_at, hs.timed_out, acked) {
            rtt.on_sample(now.saturating_duration_since(sent));
        }
        self.peer_seq = h.seq;
        self.start_sending(rtt);
        true
    }

    fn start_sending(&mut self, rtt: RttEstimator) {
        let params = match self.mode {
            Mode::Baseline => SenderParams {
                segment: BASELINE_SEGMENT as u64,
                fast: false,
                cc: Box::new(Fixed(BASELINE_SEGMENT as u64)),
                peer_window: u64::MAX,
                window_cap: u64::MAX,
            },
            Mode::Fast { segment } => SenderParams {
                segment: u64::from(segment),
                fast: true,
                cc: self.congestion.build(u64::from(segment), rtt.srtt()),
                peer_window: self.peer_window,
                window_cap: self.max_peer_window,
            },
        };
        // RFC 6298 §5.2: the SYN|ACK is acknowledged; its timer goes with it.
        let (available, len) = self.body.available();
        self.state = State::Established(Box::new(Sender::growing(available, len, params, rtt)));
    }

    fn on_established(&mut self, now: Instant, h: Header, payload: &[u8]) -> bool {
        if !h.flags.contains(Flags::ACK) || h.flags.contains(Flags::SYN) {
            // Late duplicates of the SYN, or packets no client sends here.
            return false;
        }
        let fast = matches!(self.mode, Mode::Fast { .. });
        let isn = self.isn;
        let State::Established(sender) = &mut self.state else { return false };
        // The page's length as the sender knows it: unknown (unbounded)
        // while a streamed page has not ended.
        let page_len = sender.known_len().unwrap_or(u64::MAX);
        let acked = sender.acked();
        let una = isn + 1 + acked as u32;
        let advance = i64::from(h.ack.since(una));
        let fin = h.flags.contains(Flags::FIN);
        let in_flight = sender.sent_end() - acked;
        // A FIN|ACK may count the FIN as one more sequence number, as TCP does.
        let limit = in_flight as i64 + i64::from(fin && sender.sent_end() == page_len);
        if advance < 0 || advance > limit {
            // Acknowledges data we never sent, or older than what is
            // acknowledged already: not for this connection state.
            return false;
        }
        let ack = (acked + advance as u64).min(page_len);
        let info = if fast { AckInfo::decode(payload) } else { None };
        // Page-offset blocks, inline (no allocation per ACK); blocks outside
        // what is outstanding are ignored (docs/PROTOCOL.md §7.3).
        let mut sacked = [(0u64, 0u64); MAX_SACK_BLOCKS];
        let mut blocks = 0;
        for &(start, end) in info.as_ref().map_or(&[][..], |i| i.sack.as_slice()) {
            let s = start.since(una);
            let e = end.since(una);
            if s > 0 && e > s && (e as u64) <= in_flight {
                if let Some(slot) = sacked.get_mut(blocks) {
                    *slot = (acked + s as u64, acked + e as u64);
                    blocks += 1;
                }
            }
        }
        let sacked = sacked.get(..blocks).unwrap_or(&[]);
        if advance > 0 {
            self.peer_seq = self.peer_seq.max(h.seq);
        }
        sender.on_ack(now, ack, fin, sacked, info.map(|i| u64::from(i.window)));
        if sender.all_acked() {
            self.acked_at_close = page_len;
            self.fin_ack_seq = fast.then_some((h.seq, h.ack));
            self.state = State::Closed(CloseReason::Completed);
        }
        true
    }

    fn close(&mut self, reason: CloseReason) {
        self.acked_at_close = self.acked();
        self.state = State::Closed(reason);
    }

    /// Appends the next datagram to `buf`; false (and `buf` unchanged) when
    /// there is nothing to send now. New segments only while fewer than
    /// `max_tracked` are on the scoreboard.
    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>, max_tracked: u64) -> bool {
        let peer_ack = self.peer_seq + 1;
        match &mut self.state {
            State::SynReceived(hs) => {
                if !hs.send_due {
                    return false;
                }
                hs.send_due = false;
                encode_syn_ack(self.isn, self.peer_isn, self.mode, &self.body, buf);
                if hs.sent_at.is_none() {
                    hs.sent_at = Some(now);
                } else {
                    self.stats.retransmissions += 1;
                }
                // RFC 6298 §5.1: start the timer if it is not running.
                if hs.rto_deadline.is_none() {
                    hs.rto_deadline = Some(after(now, hs.rtt.rto()));
                }
                self.stats.datagrams_sent += 1;
                true
            }
            State::Established(sender) => {
                let Some(send) = sender.poll_send(now, peer_ack.0, max_tracked) else { return false };
                let (start, end) = sender.range(send.index);
                let flags = if sender.is_last(send.index) { Flags::ACK | Flags::FIN } else { Flags::ACK };
                // Truncation is the modulo-2^32 wrap of sequence numbers. A
                // retransmission carries the ack field of its first
                // transmission: it goes out unchanged (PROTOCOL.md §2).
                let header = Header::new(self.isn + 1 + start as u32, Seq(send.tag), flags);
                buf.extend_from_slice(&header.to_bytes());
                self.body.copy(start, end, buf);
                self.stats.datagrams_sent += 1;
                self.stats.payload_bytes_sent += end - start;
                if send.retransmission {
                    self.stats.retransmissions += 1;
                }
                true
            }
            State::Closed(_) => false,
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let own = match &self.state {
            State::SynReceived(hs) => hs.rto_deadline,
            State::Established(sender) => sender.poll_timeout(),
            State::Closed(_) => return None,
        };
        Some(own.map_or(self.idle_deadline, |t| t.min(self.idle_deadline)))
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if now >= self.idle_deadline && !matches!(self.state, State::Closed(_)) {
            self.close(CloseReason::IdleTimeout(self.idle_timeout));
            return;
        }
        match &mut self.state {
            State::SynReceived(hs) => {
                if hs.rto_deadline.is_some_and(|t| now >= t) {
                    hs.rto_deadline = None;
                    if hs.retransmits >= MAX_SYN_ACK_RETRANSMITS {
                        // Silent from now on; the idle timeout frees the state.
                        return;
                    }
                    hs.retransmits += 1;
                    // RFC 6298 §5.4–5.6: send again, back off.
                    hs.rtt.on_timeout();
                    hs.timed_out = true;
                    hs.send_due = true;
                }
            }
            State::Established(sender) => sender.handle_timeout(now),
            State::Closed(_) => {}
        }
    }

    pub(crate) fn wants_transmit(&self, now: Instant) -> bool {
        match &self.state {
            State::SynReceived(hs) => hs.send_due,
            State::Established(sender) => sender.wants_transmit(now),
            State::Closed(_) => false,
        }
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        match self.state {
            State::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// The final ACK that confirms a fast-mode client's FIN|ACK, once the
    /// transfer has completed: sequence number just past the page, ack field
    /// one past the FIN|ACK's sequence number, ACK alone, no payload
    /// (docs/PROTOCOL.md §6.3). Baseline mode has none (PROTOCOL.md §2).
    pub(crate) fn final_ack(&self) -> Option<Header> {
        let (fin_ack_seq, _) = self.fin_ack_seq?;
        Some(Header::new(self.isn + 1 + self.acked_at_close as u32, fin_ack_seq + 1, Flags::ACK))
    }

    /// The client moved to a new address (secure mode, docs/PROTOCOL.md
    /// §8.4): see [`Sender::on_path_change`].
    pub(crate) fn on_path_change(&mut self) {
        if let State::Established(sender) = &mut self.state {
            sender.on_path_change();
        }
    }

    /// A segment without payload that restates where the transfer is:
    /// sequence number at the first byte not yet acknowledged, so that it is
    /// never beyond what the client holds and draws its ACK at once (a
    /// duplicate, docs/PROTOCOL.md §6.3); our usual ack field. Only while
    /// sending the page: secure mode's path probe (§8.4).
    pub(crate) fn empty_ack(&self) -> Option<Header> {
        let State::Established(sender) = &self.state else { return None };
        Some(Header::new(self.isn + 1 + sender.acked() as u32, self.peer_seq + 1, Flags::ACK))
    }

    /// Secure mode's early segment (docs/PROTOCOL.md §8.3): while the
    /// handshake ACK has not come, the page's first bytes, at most
    /// `max_payload` and one segment, in a segment like the first the
    /// sender will send (sequence number ISN + 1, the handshake's ack
    /// field, ACK, never FIN), appended to `buf`. The sender does not track
    /// it: it sends its own first segment from offset 0 as usual, which the
    /// client trims; the early bytes only let the client have them half a
    /// round trip sooner. A streamed page's is sent once `max_payload`
    /// bytes (or the whole stream) are in. Sent again for each attempt of
    /// the handshake, within that attempt's room.
    pub(crate) fn early_segment(&mut self, max_payload: usize, buf: &mut Vec<u8>) -> EarlyData {
        let (State::SynReceived(hs), Mode::Fast { segment }) = (&mut self.state, self.mode) else {
            return EarlyData::Never;
        };
        let (available, len) = self.body.available();
        let want = (max_payload as u64).min(u64::from(segment)).min(len.unwrap_or(u64::MAX));
        if want == 0 {
            return EarlyData::Never;
        }
        if available < want {
            return EarlyData::Later;
        }
        hs.early_len = hs.early_len.max(want);
        let header = Header::new(self.isn + 1, self.peer_seq + 1, Flags::ACK);
        buf.extend_from_slice(&header.to_bytes());
        self.body.copy(0, want, buf);
        self.stats.datagrams_sent += 1;
        self.stats.payload_bytes_sent += want;
        EarlyData::Sent(header, want as usize)
    }

    /// The client's FIN|ACK that completed a fast-mode transfer: its
    /// sequence number and ack field, exactly as received.
    pub(crate) fn fin_ack(&self) -> Option<(Seq, Seq)> {
        self.fin_ack_seq
    }

    /// Segments on this connection's scoreboard.
    pub(crate) fn tracked(&self) -> u64 {
        match &self.state {
            State::Established(sender) => sender.tracked(),
            _ => 0,
        }
    }

    /// The client's ISN while the handshake is incomplete.
    pub(crate) fn half_open_isn(&self) -> Option<Seq> {
        matches!(self.state, State::SynReceived(_)).then_some(self.peer_isn)
    }

    /// Page bytes the client acknowledged.
    pub(crate) fn acked(&self) -> u64 {
        match &self.state {
            State::SynReceived(_) => 0,
            State::Established(sender) => sender.acked(),
            State::Closed(_) => self.acked_at_close,
        }
    }
}
