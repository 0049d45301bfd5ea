//! The client side of a connection: handshake (with the fast-mode offer),
//! reception, FIN|ACK, then LAST-ACK in fast mode (the server confirms the
//! FIN|ACK with a final ACK) or TIME-WAIT in baseline mode (PROTOCOL.md
//! §2–3, docs/PROTOCOL.md §6).
//!
//! Once the first segment has arrived the client never retransmits on its
//! own: like a TCP receiver it answers what it receives, and the server's
//! timers drive recovery. A retransmitted packet is sent again unchanged; the
//! client's sequence number moves by one only when it has something new to
//! say (PROTOCOL.md §2).
//!
//! In baseline mode only the next in-order segment is taken and every
//! segment received, duplicates included, is answered by an ACK of its own on
//! the wire (PROTOCOL.md §3), however many arrive in one receive batch. In
//! fast mode segments beyond a gap are kept (up to the
//! receive window, which bounds this memory) and reported in SACK blocks,
//! and in-order segments are acknowledged every `ack_every` segments or
//! after `max_ack_delay`, whichever comes first; anything out of order is
//! acknowledged at once. ACKs due while one receive batch is processed
//! collapse into the latest, which says everything the earlier ones would
//! (docs/PROTOCOL.md §6.3).
//!
//! A hostile server cannot inflate the client's memory: out-of-order
//! segments are kept only at segment boundaries, no longer than the
//! negotiated segment, within the announced page and the receive window.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::{ConnectionError, Mode};
use crate::config::{ClientConfig, FastClient, Linger};
use crate::recovery::RangeSet;
use crate::recovery::RttEstimator;
use crate::time::after;
use crate::wire::ext::{AckInfo, Answer, MAX_SACK_BLOCKS, Offer, SackBlocks};
use crate::wire::{Flags, Header, Seq};

/// SYNs sent with the fast-mode offer before one goes without it: a peer
/// that drops SYNs with a payload (a middlebox, or an implementation that
/// chokes on it) still gets a bare SYN, as TCP stacks retry without options
/// (RFC 7413 §4.1.3 does the same for Fast Open). From then on the offer
/// and the bare SYN alternate, so that a lossy path keeps its chance of
/// fast mode.
const OFFERS_BEFORE_BARE_SYN: u32 = 2;

/// RTT samples after which the linger's floor no longer applies: an early
/// sample's weight in SRTT is then (7/8)^32, about 1.4% (RFC 6298 §2).
const SETTLED_SAMPLES: u32 = 32;

/// What arrived, for [`ServerRtoBound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    SynAck,
    Data,
    EmptyFin,
}

/// A bound on the baseline server's retransmission timeout, from what the
/// client sees (docs/PROTOCOL.md §3, TIME-WAIT): the linger must outlast the
/// server's FIN retransmissions, and the client's own estimate is not the
/// server's.
///
/// In stop-and-wait the server sends a segment only once our packet that
/// asked for it has arrived, and samples from sending it to our ACK of it
/// (Karn's rule skips segments sent again). So each of its samples is at
/// most the time from our sending the packet that drew that segment to the
/// arrival of the next segment, which our ACK drew; the handshake's sample
/// is at most the time from our SYN to the first segment. With every sample
/// at most M, RFC 6298 keeps SRTT and RTTVAR at most M, so the RTO is at
/// most max(min RTO, 5M + G), if the server has a sample at all and has not
/// backed off since its last one. It has one once two segments with data
/// have come (the first one's ACK sampled), unless the first was sent again. A timer
/// that fired either shows (a duplicate, which makes the bound doubtful) or
/// delays the next segment by the RTO it backed off from, which M then
/// holds. Only a server following RFC 6298 with our constants (anonserver)
/// is bounded so; the linger uses the bound where it is shorter than the
/// client's own estimate with its floor, so against a server with longer
/// timers a lost FIN|ACK may go unanswered (docs/PROTOCOL.md §3).
#[derive(Debug, Clone, Default)]
struct ServerRtoBound {
    /// When our packet that drew the latest arrival (the SYN for the
    /// SYN|ACK, then our ACKs) was first sent.
    drew_latest: Option<Instant>,
    /// The largest bound on one of the server's samples.
    max_sample: Duration,
    /// Segments with new data so far.
    segments: u32,
    /// A sign that the server sent something again.
    doubtful: bool,
}

impl ServerRtoBound {
    /// Something new arrived at `now` (the SYN|ACK, a segment with new
    /// data, or a FIN of its own after them): `drew` is when our packet that
    /// asked for it was first sent. Only segments with data count towards
    /// the two after which the server has a sample: an empty FIN might have
    /// gone out before our ACK of the data.
    fn on_arrival(&mut self, now: Instant, drew: Option<Instant>, kind: Arrival) {
        if kind != Arrival::SynAck {
            match self.drew_latest {
                Some(t) => self.max_sample = self.max_sample.max(now.saturating_duration_since(t)),
                None => self.doubtful = true,
            }
        }
        if kind == Arrival::Data {
            self.segments = self.segments.saturating_add(1);
        }
        self.drew_latest = drew;
        if drew.is_none() {
            self.doubtful = true;
        }
    }

    /// The bound, when it holds.
    fn rto(&self, config: &crate::recovery::RtoConfig) -> Option<Duration> {
        let bound = self.max_sample.saturating_mul(5).saturating_add(config.granularity);
        (!self.doubtful && self.segments >= 2).then(|| config.clamp(bound))
    }
}

/// Packets queued for the wire at most. In baseline mode every segment
/// received queues one ACK; the driver drains the queue after each receive
/// batch, so this only bounds what a flood can queue.
const MAX_QUEUED: usize = 256;

/// Out-of-order segments kept at most, whatever the window and the
/// negotiated segment size: with a tiny segment size a hostile server could
/// otherwise fill the window with millions of tiny buffers.
const MAX_PENDING_SEGMENTS: usize = 16_384;

/// Longest streamed page taken (docs/PROTOCOL.md §9.7): a stream has no
/// announced length, so this bounds offsets instead (far beyond any page a
/// server fetches).
const MAX_STREAM: u64 = 1 << 48;

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
    /// The connection is over (after LAST-ACK or TIME-WAIT, or on an
    /// error); [`ClientConn::outcome`] says how.
    Closed,
}

#[derive(Debug)]
enum State {
    /// RFC 9293 SYN-SENT: our SYN is out, waiting for SYN|ACK.
    SynSent {
        /// SYNs sent so far (with or without the offer).
        syns: u32,
    },
    /// Receiving the page; fast mode keeps what arrives beyond a gap.
    Established(Box<Reassembly>),
    /// Fast mode: FIN|ACK sent, waiting for the server's final ACK (RFC 9293
    /// LAST-ACK), sent again on our timer; closed at `until` regardless.
    LastAck {
        /// The FIN|ACK's sequence number: the final ACK acknowledges it.
        fin_seq: Seq,
        until: Instant,
    },
    /// Baseline: FIN received and answered; answering retransmissions until
    /// `until` (TIME-WAIT, PROTOCOL.md §3).
    TimeWait {
        until: Instant,
        /// How long after a FIN sent again: TIME-WAIT restarts then (RFC
        /// 9293 §3.10.7.4, "TIME-WAIT STATE"), as our FIN|ACK was lost.
        linger: Duration,
        /// Never past this, however many FINs come.
        cap: Instant,
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
    /// Of those, data segments refused because they could inflate the
    /// receive buffer: longer than the negotiated segment, beyond the
    /// announced page or the receive window, or not at a segment boundary.
    pub segments_refused: u64,
    /// Datagrams produced by [`ClientConn::poll_transmit`].
    pub datagrams_sent: u64,
    /// Packets sent again unchanged.
    pub retransmissions: u64,
    /// Payload bytes received more than once.
    pub duplicate_bytes: u64,
    /// ACKs sent again because the server went silent mid-transfer
    /// ([`ClientConfig::probe_when_silent`](crate::ClientConfig)).
    pub silence_probes: u64,
}

/// Fast-mode reception state.
#[derive(Debug, Default)]
struct Reassembly {
    /// Segments beyond a gap, by page offset: each starts at a segment
    /// boundary and none overlaps another.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Bytes in `pending`: at most the receive window.
    pending_bytes: u64,
    /// What `pending` covers, as ranges of page offsets: the SACK blocks,
    /// found in a few lookups however many segments are kept.
    ranges: RangeSet,
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

/// A packet the client builds: header and a small payload (a fast-mode
/// offer or ACK information; baseline packets have none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packet {
    header: Header,
    payload: Vec<u8>,
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
    last: Packet,
    /// The offer, kept for SYN retransmissions after a bare one.
    offer: Vec<u8>,
    /// Packets waiting for the wire, in order; `true` marks a repetition.
    queue: VecDeque<(Packet, bool)>,
    /// Whether `last` has been sent more than once (Karn's rule).
    last_resent: bool,
    /// When `last` was first sent, for RTT samples.
    last_sent_at: Option<Instant>,
    rtt: RttEstimator,
    /// RTT samples taken, for the baseline linger (see [`Linger`]).
    rtt_samples: u32,
    /// A bound on the server's RTO (baseline mode).
    server_rto: ServerRtoBound,
    /// A segment with new page bytes has arrived: the server has our
    /// handshake ACK. Until then our own timer repeats it.
    heard_data: bool,
    /// Silence probes sent since the last new page byte (for the back-off).
    silence_probes: u32,
    /// Retransmission deadline of the SYN, the handshake ACK, or the
    /// FIN|ACK in LAST-ACK.
    rto_deadline: Option<Instant>,
    /// Give-up deadline: the connect timeout, then the idle timeout, which
    /// only new page bytes push back (a server that keeps sending nothing
    /// new cannot hold the client).
    give_up_at: Instant,
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
        let syn = Packet { header: Header::new(isn, Seq(0), Flags::SYN), payload: offer.clone() };
        ClientConn {
            give_up_at: after(now, config.connect_timeout),
            config,
            state: State::SynSent { syns: 0 },
            mode: Mode::Baseline,
            answer: None,
            connected: false,
            isn,
            peer_isn: Seq(0),
            rcv_nxt: Seq(0),
            received: 0,
            queue: VecDeque::from([(syn.clone(), false)]),
            last: syn,
            offer,
            last_resent: false,
            last_sent_at: None,
            rtt,
            rtt_samples: 0,
            server_rto: ServerRtoBound::default(),
            heard_data: false,
            silence_probes: 0,
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
        let held = (self.received, self.buffered());
        let accepted = match self.state {
            State::SynSent { .. } => self.on_syn_sent(now, header, payload),
            State::Established(_) => self.on_segment(now, header, payload),
            State::LastAck { fin_seq, .. } => self.on_last_ack(header, payload, fin_seq),
            State::TimeWait { .. } => self.on_time_wait(now, header, payload),
            State::Closed => false,
        };
        if !accepted {
            self.stats.datagrams_dropped += 1;
        }
        // New page bytes, in order or kept beyond a gap: the only thing that
        // holds the give-up deadline off, and the proof that the server has
        // our handshake ACK (its timer is no longer needed). Secure mode's
        // early bytes come before that proof (docs/PROTOCOL.md §8.3): there
        // the silence probe, which a secure client always runs, repeats our
        // latest ACK, which the server takes as the handshake ACK.
        if self.received > held.0 || self.buffered() > held.1 {
            if matches!(self.state, State::Established(_)) {
                self.give_up_at = after(now, self.config.idle_timeout);
            }
            if !self.heard_data {
                self.heard_data = true;
                self.rto_deadline = None;
            }
            self.silence_probes = 0;
        }
        if self.config.probe_when_silent && self.heard_data && matches!(self.state, State::Established(_)) {
            self.rto_deadline = Some(after(now, self.silence_probe_interval()));
        }
    }

    /// How long a silent server waits for our latest ACK again: the RTO,
    /// doubled for each probe since the last new page byte, at most 60 s
    /// (RFC 6298 §5.5's back-off).
    fn silence_probe_interval(&self) -> Duration {
        let rto = self.rtt.rto();
        rto.saturating_mul(1 << self.silence_probes.min(6)).min(Duration::from_secs(60))
    }

    fn on_syn_sent(&mut self, now: Instant, h: Header, payload: &[u8]) -> bool {
        // RFC 9293 §3.10.7.3: a SYN|ACK must acknowledge our SYN.
        if !(h.flags.contains(Flags::SYN | Flags::ACK) && h.ack == self.isn + 1) {
            return false;
        }
        // Fast mode only if we offered it and the answer is well formed; a
        // server that ignored the offer answers with a bare SYN|ACK.
        // An answer whose SEGMENT exceeds what we offered breaks §6.1: not
        // a valid answer.
        self.answer = self.config.fast.and_then(|f| Answer::decode(payload).filter(|a| a.segment <= f.max_segment));
        self.mode = match self.answer {
            Some(a) => Mode::Fast { segment: a.segment },
            None => Mode::Baseline,
        };
        // Our SYN sent again: the bound starts from its first sending,
        // and the server may have answered a later copy.
        if self.last_resent {
            self.server_rto.doubtful = true;
        }
        self.server_rto.on_arrival(now, self.last_sent_at, Arrival::SynAck);
        self.sample_rtt(now);
        self.peer_isn = h.seq;
        self.rcv_nxt = h.seq + 1;
        self.state = State::Established(Box::default());
        self.connected = true;
        // From now on only new page bytes hold the give-up deadline off.
        self.give_up_at = after(now, self.config.idle_timeout);
        // The timer now guards the handshake ACK until the first segment.
        self.rto_deadline = None;
        self.events.push_back(ClientEvent::Connected(self.mode));
        self.send_new(Header::new(self.isn + 1, self.rcv_nxt, Flags::ACK), Vec::new());
        true
    }

    /// A duplicate SYN|ACK after the handshake: our handshake ACK was lost
    /// or is late.
    fn is_dup_syn_ack(&self, h: Header) -> bool {
        h.flags.contains(Flags::SYN | Flags::ACK) && h.seq == self.peer_isn && h.ack == self.isn + 1
    }

    fn on_segment(&mut self, now: Instant, h: Header, payload: &[u8]) -> bool {
        if h.flags.contains(Flags::SYN) {
            if self.is_dup_syn_ack(h) {
                self.server_rto.doubtful = true;
                self.resend();
                return true;
            }
            return false;
        }
        match self.fast() {
            None => {
                self.on_baseline_segment(now, h, payload);
                true
            }
            Some(fast) => self.on_fast_segment(now, h, payload, fast),
        }
    }

    /// LAST-ACK: the final ACK closes; a retransmitted FIN (or any data
    /// segment: the server missed our FIN|ACK) draws the FIN|ACK again.
    fn on_last_ack(&mut self, h: Header, payload: &[u8], fin_seq: Seq) -> bool {
        if h.flags == Flags::ACK && payload.is_empty() && h.seq == self.rcv_nxt && h.ack == fin_seq + 1 {
            self.close(Ok(()));
            return true;
        }
        if h.flags.contains(Flags::SYN) && !self.is_dup_syn_ack(h) {
            return false;
        }
        self.resend();
        true
    }

    /// A FIN whose segment ends at the next byte we expect: it comes after
    /// every byte of the page (in TIME-WAIT, the same FIN again).
    fn is_fin_after_every_byte(&self, h: Header, payload: &[u8]) -> bool {
        h.flags.contains(Flags::FIN) && h.seq + payload.len() as u32 == self.rcv_nxt
    }

    /// TIME-WAIT: whatever the server still sends means it missed our
    /// FIN|ACK, which acknowledges everything: send it again.
    fn on_time_wait(&mut self, now: Instant, h: Header, payload: &[u8]) -> bool {
        if h.flags.contains(Flags::SYN) && !self.is_dup_syn_ack(h) {
            return false;
        }
        // The FIN sent again: our FIN|ACK was lost, and the one we send now
        // may be too. Wait for the next retransmission as long again.
        if self.is_fin_after_every_byte(h, payload) {
            if let State::TimeWait { until, linger, cap } = &mut self.state {
                *until = (*until).max(after(now, *linger).min(*cap));
            }
        }
        self.resend();
        true
    }

    /// Baseline: take the next in-order bytes, acknowledge every segment.
    fn on_baseline_segment(&mut self, now: Instant, h: Header, payload: &[u8]) {
        // RFC 9293 §3.10.7.4: trim what we already have, take what is next.
        let offset = h.seq.since(self.rcv_nxt);
        if offset > 0 {
            // Beyond what we expect: a baseline server never sends ahead.
            // Repeat our acknowledgment so the sender learns where we are.
            self.server_rto.doubtful = true;
            self.resend();
            return;
        }
        let fresh = payload.get(offset.unsigned_abs() as usize..).unwrap_or(&[]);
        self.stats.duplicate_bytes += (payload.len() - fresh.len()) as u64;
        if fresh.len() < payload.len() || (payload.is_empty() && !h.flags.contains(Flags::FIN)) {
            // Sent again (or duplicated on the way): the server's timer
            // may have fired.
            self.server_rto.doubtful = true;
        }
        if !fresh.is_empty() {
            // Our last ACK drew this new segment: one round trip.
            self.sample_rtt(now);
            self.server_rto.on_arrival(now, self.last_sent_at, Arrival::Data);
            self.deliver(fresh);
        }
        // The FIN counts only when every byte before it is here.
        let fin_now = self.is_fin_after_every_byte(h, payload);
        if fin_now && fresh.is_empty() {
            // A FIN of its own after the data: if the server sent it on our
            // ACK of the last data, it sampled that.
            self.server_rto.on_arrival(now, self.last_sent_at, Arrival::EmptyFin);
        }
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
    /// Returns false for a segment refused as a threat to memory.
    fn on_fast_segment(&mut self, now: Instant, h: Header, payload: &[u8], fast: FastClient) -> bool {
        let Some(answer) = self.answer else { return false };
        let segment = u64::from(answer.segment.max(1));
        let rel = i64::from(h.seq.since(self.rcv_nxt));
        let start = self.received as i64 + rel;
        let len = payload.len() as u64;
        let end = start + payload.len() as i64;
        // docs/PROTOCOL.md §6.2: no segment is longer than SEGMENT, none
        // runs past PAGE_LEN, and the FIN segment ends exactly there. A
        // streamed page (§9.7) has no PAGE_LEN: its FIN says where it ends,
        // within MAX_STREAM, and every segment before it is whole.
        let fin = h.flags.contains(Flags::FIN);
        let streamed = answer.page_len == crate::page::STREAMED;
        let page_len = if streamed { MAX_STREAM } else { answer.page_len };
        let fin_mismatch = match &self.state {
            // The first FIN fixes the end; nothing may run past it, and no
            // other FIN end elsewhere, nor before bytes already here.
            State::Established(r) if streamed => match r.fin_at {
                Some(f) => end > f as i64 || (fin && end != f as i64),
                None => {
                    fin && (end < self.received as i64
                        || r.pending.last_key_value().is_some_and(|(at, d)| end < (*at + d.len() as u64) as i64))
                }
            },
            _ => fin && end != page_len as i64,
        };
        if len > segment || end > page_len as i64 || fin_mismatch {
            self.stats.segments_refused += 1;
            return false;
        }
        let State::Established(reasm) = &mut self.state else { return false };
        // Where a FIN ends the page; taken only once the segment is (a
        // streamed page's end is fixed by its first FIN accepted).
        let fin_at = if fin { Some(end as u64) } else { reasm.fin_at };
        let page_len = fin_at.unwrap_or(page_len);
        let window_end = self.received + u64::from(fast.recv_window);
        let mut ack_now = false;
        if rel > 0 {
            // Beyond a gap: kept only where a segment of the page starts and
            // with that segment's length (so kept pieces never overlap), and
            // within the window.
            let start = start as u64;
            let whole = (len == segment || end as u64 == page_len) && (len > 0 || fin);
            let fits = end as u64 <= window_end && reasm.pending.len() < MAX_PENDING_SEGMENTS;
            if start % segment != 0 || !whole || !fits {
                self.stats.segments_refused += 1;
                // Still say where we are: the sender may have lost track.
                // Not before the first data: that ACK would replace the
                // handshake ACK our timer repeats.
                if self.heard_data {
                    self.send_fast_ack();
                }
                return false;
            }
            reasm.fin_at = fin_at;
            match reasm.pending.entry(start) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    self.stats.duplicate_bytes += len;
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(payload.to_vec());
                    reasm.pending_bytes += len;
                    reasm.ranges.insert(start..start + len, |_| {});
                }
            }
            reasm.latest = Some(start);
            ack_now = true;
        } else {
            reasm.fin_at = fin_at;
            let fresh = payload.get(rel.unsigned_abs() as usize..).unwrap_or(&[]);
            self.stats.duplicate_bytes += (payload.len() - fresh.len()) as u64;
            if fresh.is_empty() {
                // A duplicate: the sender may be missing our acknowledgment.
                ack_now = true;
            } else {
                let mut taken = Vec::new();
                reasm.unacked += 1;
                let mut received = self.received + fresh.len() as u64;
                // Anything queued that now follows on? Trim what overlaps.
                while let Some(entry) = reasm.pending.first_entry() {
                    let at = *entry.key();
                    if at > received {
                        break;
                    }
                    let data = entry.remove();
                    reasm.pending_bytes -= data.len() as u64;
                    let skip = usize::try_from(received - at).unwrap_or(usize::MAX);
                    if let Some(tail) = data.get(skip..).filter(|t| !t.is_empty()) {
                        received += tail.len() as u64;
                        taken.push((data, skip));
                    }
                    // A gap was filled: report the new state at once.
                    ack_now = true;
                }
                reasm.ranges.remove_below(received);
                self.deliver(fresh);
                for (data, skip) in taken {
                    if let Some(tail) = data.get(skip..) {
                        self.deliver(tail);
                    }
                }
            }
        }
        let State::Established(reasm) = &mut self.state else { return true };
        if reasm.fin_at.is_some_and(|f| self.received >= f) {
            self.finish(now);
            return true;
        }
        if ack_now || reasm.unacked >= fast.ack_every {
            self.send_fast_ack();
        } else if reasm.ack_deadline.is_none() {
            reasm.ack_deadline = Some(after(now, fast.max_ack_delay));
        }
        true
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

    /// The page is complete: FIN|ACK, then LAST-ACK (fast) or TIME-WAIT.
    fn finish(&mut self, now: Instant) {
        let payload = self.ack_info(false);
        let fin_seq = self.next_seq();
        self.send_new(Header::new(fin_seq, self.rcv_nxt, Flags::ACK | Flags::FIN), payload);
        // How long, and the longest it may become by restarting.
        let (linger, longest) = match self.config.linger {
            Linger::Fixed(d) => (d, d),
            Linger::Adaptive { min, max } => {
                // Four RTOs cover the server's first two FIN
                // retransmissions. The floor guards against a server whose
                // estimate is still inflated by its first samples: a server
                // timer at its initial value plus one of our RTOs, so that
                // the retransmission that timer sends arrives before the
                // linger ends, not with it. Once both sides have taken many
                // samples, the server's has converged as the client's has.
                // In baseline mode a bound on the server's RTO, where it
                // holds and is shorter, replaces that estimate
                // (ServerRtoBound).
                let floor = if self.rtt_samples >= SETTLED_SAMPLES {
                    Duration::ZERO
                } else {
                    min.saturating_add(self.rtt.rto())
                };
                let estimate = self.rtt.rto().saturating_mul(4).clamp(floor, max.max(floor));
                let bound = self.fast().is_none().then(|| self.server_rto.rto(&self.config.rto)).flatten();
                (bound.map_or(estimate, |b| estimate.min(b.saturating_mul(4).min(max))), max.max(min))
            }
        };
        let until = after(now, linger);
        self.state = if self.fast().is_some() {
            // The FIN|ACK is sent again on our own timer until the server's
            // final ACK comes: the common case exits one round trip after
            // the last byte.
            self.rto_deadline = Some(after(now, self.rtt.rto()));
            State::LastAck { fin_seq, until }
        } else {
            State::TimeWait { until, linger, cap: after(now, longest) }
        };
        self.events.push_back(ClientEvent::Finished { len: self.received });
    }

    /// The ACK payload in fast mode: window and SACK blocks (none in
    /// baseline mode, whose ACKs are bare headers).
    fn ack_info(&self, with_sack: bool) -> Vec<u8> {
        let Some(fast) = self.fast() else { return Vec::new() };
        let mut blocks = SackBlocks::default();
        let base = self.rcv_nxt;
        let to_seq = |r: std::ops::Range<u64>| {
            (base + r.start.saturating_sub(self.received) as u32, base + r.end.saturating_sub(self.received) as u32)
        };
        if let (true, State::Established(reasm)) = (with_sack, &self.state) {
            // RFC 2018 §4: the block with the latest arrival first, then the
            // others, highest first (the sender has the low ones' news).
            let first = reasm.latest.and_then(|l| reasm.ranges.containing(l));
            if let Some(r) = first.clone() {
                blocks.push(to_seq(r));
            }
            for r in reasm.ranges.iter().rev().filter(|r| Some(r) != first.as_ref()) {
                if !blocks.push(to_seq(r)) {
                    break;
                }
            }
        }
        let info = AckInfo { window: fast.recv_window, sack: blocks };
        let mut out = Vec::with_capacity(5 + 8 * MAX_SACK_BLOCKS);
        info.encode(&mut out);
        out
    }

    fn send_fast_ack(&mut self) {
        if let State::Established(reasm) = &mut self.state {
            reasm.unacked = 0;
            reasm.ack_deadline = None;
        }
        let payload = self.ack_info(true);
        let same = self.last.header.ack == self.rcv_nxt && self.last.payload == payload;
        if same && !self.last.header.flags.contains(Flags::SYN) {
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
                self.rtt_samples = self.rtt_samples.saturating_add(1);
            }
        }
    }

    /// Whether `last` is queued and has never been on the wire.
    fn last_unsent(&self) -> bool {
        self.last_sent_at.is_none()
            && !self.last_resent
            && self.queue.back().is_some_and(|(p, again)| !again && p.header == self.last.header)
    }

    /// Whether queued ACKs collapse into the latest (fast mode).
    fn coalescing(&self) -> bool {
        self.fast().is_some_and(|f| f.coalesce_acks)
    }

    /// Sequence number for a new packet: one more than the last one sent.
    /// In fast mode a new ACK replaces one still queued and takes over its
    /// number, so the numbers count packets on the wire (PROTOCOL.md §2).
    fn next_seq(&self) -> Seq {
        let replaces = self.coalescing() && self.last_unsent() && !self.last.header.flags.contains(Flags::SYN);
        if replaces { self.last.header.seq } else { self.last.header.seq + 1 }
    }

    /// Queues a new packet; it becomes the one a retransmission repeats.
    /// In fast mode it supersedes whatever is still queued: a later ACK says
    /// everything an earlier one would.
    fn send_new(&mut self, header: Header, payload: Vec<u8>) {
        if self.coalescing() {
            self.queue.clear();
        }
        self.last = Packet { header, payload };
        self.last_resent = false;
        self.last_sent_at = None;
        self.enqueue(false);
    }

    /// Queues the last packet again, unchanged. In fast mode a packet
    /// already waiting covers it.
    fn resend(&mut self) {
        if self.fast().is_some() && !self.queue.is_empty() {
            return;
        }
        self.enqueue(true);
    }

    fn enqueue(&mut self, again: bool) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
        }
        self.queue.push_back((self.last.clone(), again));
    }

    /// Writes the next datagram to send into `buf` (cleared first) and
    /// returns true, or returns false when there is nothing to send.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        if matches!(self.state, State::Closed) {
            return false;
        }
        let Some((packet, again)) = self.queue.pop_front() else { return false };
        buf.clear();
        packet.header.encode(&packet.payload, buf);
        self.stats.datagrams_sent += 1;
        let is_last = packet.header == self.last.header;
        if again || (is_last && self.last_sent_at.is_some()) {
            self.stats.retransmissions += 1;
            if is_last {
                self.last_resent = true;
            }
        } else if is_last {
            self.last_sent_at = Some(now);
        }
        match &mut self.state {
            State::SynSent { syns } => {
                *syns += 1;
                // RFC 6298 §5.1/§5.6: (re)arm the timer with the current RTO.
                self.rto_deadline = Some(after(now, self.rtt.rto()));
            }
            // It guards the handshake ACK too: the server stops repeating
            // its SYN|ACK after a few tries (no amplification), so a lost
            // handshake ACK must be repeated from this side.
            State::Established(_) if !self.heard_data => {
                self.rto_deadline = Some(after(now, self.rtt.rto()));
            }
            _ => {}
        }
        true
    }

    /// The earliest time at which [`handle_timeout`](Self::handle_timeout)
    /// must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::SynSent { .. } => [Some(self.give_up_at), self.rto_deadline].into_iter().flatten().min(),
            State::Established(reasm) => {
                [Some(self.give_up_at), self.rto_deadline, reasm.ack_deadline].into_iter().flatten().min()
            }
            State::LastAck { until, .. } => [Some(*until), self.rto_deadline].into_iter().flatten().min(),
            State::TimeWait { until, .. } => Some(*until),
            State::Closed => None,
        }
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let rto_due = self.rto_deadline.is_some_and(|t| now >= t);
        match &self.state {
            State::SynSent { .. } | State::Established(_) if now >= self.give_up_at => {
                let err = if matches!(self.state, State::SynSent { .. }) {
                    ConnectionError::ConnectTimeout(self.config.connect_timeout)
                } else {
                    ConnectionError::IdleTimeout(self.config.idle_timeout)
                };
                self.close(Err(err));
            }
            State::SynSent { syns } => {
                if rto_due {
                    // RFC 6298 §5.4–5.5: retransmit the SYN, back off; after
                    // two unanswered offers, alternate with a bare SYN.
                    let bare = self.config.bare_syn_fallback
                        && *syns >= OFFERS_BEFORE_BARE_SYN
                        && (*syns - OFFERS_BEFORE_BARE_SYN) % 2 == 0;
                    let payload = if bare { Vec::new() } else { self.offer.clone() };
                    self.retransmit_on_timer();
                    if let Some((p, _)) = self.queue.back_mut() {
                        p.payload = payload;
                    }
                }
            }
            State::Established(reasm) => {
                let ack_due = reasm.ack_deadline.is_some_and(|t| now >= t);
                if rto_due && self.heard_data {
                    // The server has gone silent mid-transfer: say where we
                    // are again, from wherever we are now (a NAT may have
                    // moved us: the server follows the new address).
                    self.silence_probes = self.silence_probes.saturating_add(1);
                    self.stats.silence_probes += 1;
                    self.send_fast_ack();
                    self.rto_deadline = Some(after(now, self.silence_probe_interval()));
                } else if rto_due {
                    self.retransmit_on_timer();
                }
                if ack_due {
                    self.send_fast_ack();
                }
            }
            State::LastAck { until, .. } | State::TimeWait { until, .. } if now >= *until => self.close(Ok(())),
            State::LastAck { .. } => {
                if rto_due {
                    self.retransmit_on_timer();
                    // The FIN|ACK's own timer: rearmed at once, since
                    // poll_transmit arms only the handshake's.
                    self.rto_deadline = Some(after(now, self.rtt.rto()));
                }
            }
            State::TimeWait { .. } | State::Closed => {}
        }
    }

    /// RFC 6298 §5.4–5.5: send the last packet again and back off.
    fn retransmit_on_timer(&mut self) {
        self.rtt.on_timeout();
        self.rto_deadline = None;
        if self.queue.is_empty() {
            self.enqueue(true);
        }
    }

    fn close(&mut self, outcome: Result<(), ConnectionError>) {
        self.state = State::Closed;
        self.queue.clear();
        self.rto_deadline = None;
        self.outcome = Some(outcome);
        self.events.push_back(ClientEvent::Closed);
    }

    /// Aborts the connection locally, e.g. when the server is known to be
    /// unreachable. Nothing more is sent.
    pub fn abort(&mut self, error: ConnectionError) {
        if !matches!(self.state, State::Closed) {
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

    /// Whether the handshake has completed (it may have ended since).
    pub fn is_established(&self) -> bool {
        self.connected
    }

    /// Whether the whole page has arrived (the FIN was accepted).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::LastAck { .. } | State::TimeWait { .. }) || self.outcome == Some(Ok(()))
    }

    /// How the connection ended, once it has.
    pub fn outcome(&self) -> Option<&Result<(), ConnectionError>> {
        self.outcome.as_ref()
    }

    /// The current retransmission timeout (RFC 6298), by which the FIN|ACK
    /// is sent again while the final ACK has not come.
    pub fn rto(&self) -> std::time::Duration {
        self.rtt.rto()
    }

    /// Page bytes received in order so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes held beyond a gap (fast mode): at most the receive window.
    pub fn buffered(&self) -> u64 {
        match &self.state {
            State::Established(reasm) => reasm.pending_bytes,
            _ => 0,
        }
    }

    /// Counters of this connection.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }
}
