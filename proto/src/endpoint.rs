//! The server endpoint: one per UDP socket. It routes each datagram to the
//! connection of its source address, creates connections on SYN, keeps their
//! timers in one queue and hands out their datagrams in turn.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rand::RngCore;

use crate::config::ServerConfig;
use crate::conn::{Accepted, CloseReason, EarlyData, Mode, ServerConn, encode_syn_ack, negotiate};
use crate::cookie::{CookieJar, CookieMode};
use crate::page::{Body, Page};
use crate::wire::{Flags, Header, Seq};

/// How the endpoint hashes peer addresses, the key of every lookup a
/// datagram makes (several per datagram sent). Plaintext peers choose their
/// addresses, so those maps keep std's keyed SipHash against hash flooding;
/// behind the secure layer the peers are virtual addresses that the server
/// numbers itself, where FxHash is safe and SipHash had been a tenth of the
/// server's CPU in a 1 GiB transfer.
#[derive(Debug, Clone)]
pub(crate) enum PeerHasher {
    Keyed(RandomState),
    Numbered,
}

impl BuildHasher for PeerHasher {
    type Hasher = PeerHash;

    fn build_hasher(&self) -> PeerHash {
        match self {
            PeerHasher::Keyed(s) => PeerHash::Keyed(s.build_hasher()),
            PeerHasher::Numbered => PeerHash::Numbered(rustc_hash::FxHasher::default()),
        }
    }
}

pub(crate) enum PeerHash {
    Keyed(DefaultHasher),
    Numbered(rustc_hash::FxHasher),
}

/// Forwards the integer writes (an IPv6 address is hashed as one u128), so
/// FxHash keeps its word-sized steps; the signed ones fall through to these.
macro_rules! forward {
    ($($name:ident: $t:ty),*) => {$(
        fn $name(&mut self, x: $t) {
            match self {
                PeerHash::Keyed(h) => h.$name(x),
                PeerHash::Numbered(h) => h.$name(x),
            }
        }
    )*};
}

impl Hasher for PeerHash {
    fn finish(&self) -> u64 {
        match self {
            PeerHash::Keyed(h) => h.finish(),
            PeerHash::Numbered(h) => h.finish(),
        }
    }

    forward!(write: &[u8], write_u8: u8, write_u16: u16, write_u32: u32, write_u64: u64, write_u128: u128, write_usize: usize);
}

/// What happened on the server, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A SYN from a new client created a connection.
    Accepted {
        /// The client.
        peer: SocketAddr,
        /// The mode the handshake settles.
        mode: Mode,
    },
    /// A connection ended and was freed.
    Closed {
        /// The client.
        peer: SocketAddr,
        /// Why it ended.
        reason: CloseReason,
        /// Page bytes the client acknowledged.
        acked: u64,
        /// Datagrams sent again.
        retransmissions: u64,
    },
}

/// Counters of the whole endpoint, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams handed to [`Server::handle`].
    pub datagrams_received: u64,
    /// Shorter than a header.
    pub malformed: u64,
    /// Decoded, but fit no connection (no connection and not a SYN, or not
    /// acceptable in the connection's state).
    pub unexpected: u64,
    /// SYNs dropped because `max_connections` were open.
    pub refused_max_connections: u64,
    /// SYNs dropped because their source address had `max_per_source` open.
    pub refused_per_source: u64,
    /// SYNs dropped because the server is draining before it stops.
    pub refused_draining: u64,
    /// SYNs answered with a stateless SYN cookie (half-open limit reached).
    pub cookies_sent: u64,
    /// Connections rebuilt from a valid SYN cookie.
    pub cookies_accepted: u64,
    /// SYNs dropped because even the stateless reply queue was full.
    pub refused_syn_flood: u64,
    /// Connections created.
    pub accepted: u64,
    /// Of those, connections in fast mode.
    pub accepted_fast: u64,
    /// Connections whose client acknowledged the whole page.
    pub completed: u64,
    /// Connections given up on (idle timeout).
    pub given_up: u64,
    /// Datagrams produced by [`Server::poll_transmit`].
    pub datagrams_sent: u64,
    /// Page bytes sent, retransmissions included.
    pub payload_bytes_sent: u64,
    /// Datagrams sent again.
    pub retransmissions: u64,
    /// Final ACKs sent to fast-mode clients' FIN|ACKs (the first with the
    /// completion, more for FIN|ACKs sent again).
    pub final_acks: u64,
}

/// A server: the page, the connections, no sockets and no clock.
///
/// Drive it like quinn-proto's endpoint: feed datagrams with
/// [`handle`](Self::handle) and expired timers with
/// [`handle_timeout`](Self::handle_timeout); after each, drain
/// [`poll_transmit`](Self::poll_transmit) and
/// [`poll_event`](Self::poll_event); sleep until
/// [`poll_timeout`](Self::poll_timeout).
pub struct Server {
    config: ServerConfig,
    /// The pages served: plaintext clients get the first; a secure-mode
    /// client names one in its encrypted request (docs/PROTOCOL.md §8).
    pages: Vec<Arc<Page>>,
    /// Draws initial sequence numbers; a CSPRNG outside tests.
    isn_rng: Box<dyn RngCore + Send>,
    conns: HashMap<SocketAddr, Slot, PeerHasher>,
    /// Open connections per source (an address masked to its prefix, see
    /// [`source_key`]), for `max_per_source`.
    per_source: HashMap<IpAddr, usize>,
    /// Segments on all connections' scoreboards together, for the memory
    /// budget.
    tracked: u64,
    /// False once [`stop_accepting`](Self::stop_accepting) was called.
    accepting: bool,
    /// Connections in SYN-RECEIVED, for `max_half_open`.
    half_open: usize,
    cookies: CookieJar,
    /// Completed fast-mode connections, for a FIN|ACK sent again.
    time_wait: HashMap<SocketAddr, TimeWait, PeerHasher>,
    /// Their expiry, oldest first.
    time_wait_order: VecDeque<(Instant, SocketAddr)>,
    /// Stateless SYN|ACKs (cookies) and final ACKs waiting to be sent;
    /// bounded.
    stateless: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Connection datagrams sent since the last stateless one.
    stateless_turn: usize,
    /// Connection deadlines, earliest first. An entry is live only while it
    /// equals its connection's `scheduled`; others are skipped when popped.
    timers: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    /// Timers due in the current `handle_timeout` call.
    due: Vec<(Instant, SocketAddr)>,
    /// Connections that may have a datagram to send, in turn.
    ready: VecDeque<SocketAddr>,
    /// Connections serving a page still arriving, for
    /// [`streams_grew`](Self::streams_grew); entries of closed ones are
    /// dropped there.
    streaming: Vec<SocketAddr>,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
    /// The connection `poll_transmit` served last, and how many datagrams
    /// in a row.
    last_served: Option<SocketAddr>,
    burst: usize,
}

/// Segments any connection may keep in flight when the memory budget is
/// used up: enough for an honest transfer to go on at a modest rate while
/// hostile connections hold the budget, until their idle timeouts free it.
const PRESSURE_FLOOR: u64 = 16;

/// Datagrams one connection sends in a row before the next one's turn.
const TRANSMIT_BURST: usize = 32;
/// Stateless SYN|ACKs queued at most: a flood faster than the socket drains
/// them loses SYNs (counted), never memory.
const STATELESS_QUEUE: usize = 4096;

/// What a completed fast-mode connection leaves behind: about 100 bytes
/// with its map entry and expiry slot, not a
/// connection.
#[derive(Debug, Clone, Copy)]
struct TimeWait {
    /// The client's FIN|ACK: its sequence number and ack field.
    fin_seq: Seq,
    fin_ack: Seq,
    /// The final ACK that answers it.
    reply: Header,
    until: Instant,
    /// FIN|ACKs answered again; those answers are logged within the stray
    /// rate (a replay flood must not fill the log).
    repeats: u32,
}

/// `ip` masked to its first `v4` (IPv4) or `v6` (IPv6) bits; an IPv4-mapped
/// IPv6 address (a dual-stack socket's view of an IPv4 client) counts as
/// IPv4.
pub fn source_key(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    fn mask(bits: u8, width: u32) -> u128 {
        let bits = u32::from(bits).min(width);
        if bits == 0 { 0 } else { u128::MAX << (128 - bits) >> (128 - width) }
    }
    let ip = match ip {
        IpAddr::V6(v6addr) => v6addr.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4addr => v4addr,
    };
    match ip {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask(v4, 32) as u32).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask(v6, 128)).into()),
    }
}

/// How a datagram belongs, for the packet log (docs/PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belongs {
    /// Part of a connection's exchange: it moved something.
    Connection,
    /// It fits a connection but changes nothing (a SYN again, an ACK of
    /// nothing new, a FIN|ACK again in TIME-WAIT), or answers one.
    Repeat,
    /// It fits no connection (strays, forgeries, SYN cookies).
    None,
}

/// How a datagram for a known address fitted its connection.
enum Fit {
    /// Accepted, and part of the connection's exchange.
    Connection,
    /// Accepted (or refused while draining), but a SYN again for a
    /// half-open connection: not counted as unexpected, not logged in full.
    Repeat,
    /// Not acceptable in the connection's state.
    No,
}

#[derive(Debug)]
struct Slot {
    conn: ServerConn,
    /// Its scoreboard's size when last seen, for the endpoint's total.
    tracked: u64,
    /// SYN|ACKs sent from this slot, restarted handshakes included.
    syn_acks: u32,
    scheduled: Option<Instant>,
    in_ready: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("pages", &self.pages.len())
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `page`, shared by every connection. `isn_rng` draws the
    /// initial sequence numbers (PROTOCOL.md §2: a CSPRNG).
    pub fn new(config: ServerConfig, page: Bytes, isn_rng: Box<dyn RngCore + Send>) -> Self {
        Self::with_pages(config, vec![page], isn_rng)
    }

    /// For peers that are virtual addresses numbered by the caller (the
    /// secure layer), never chosen by the network: cheaper hashing. Before
    /// any datagram.
    pub(crate) fn with_numbered_peers(mut self) -> Self {
        debug_assert!(self.conns.is_empty() && self.time_wait.is_empty(), "before any datagram");
        self.conns = HashMap::with_hasher(PeerHasher::Numbered);
        self.time_wait = HashMap::with_hasher(PeerHasher::Numbered);
        self
    }

    /// A server for several pages; the first is the one plaintext clients
    /// get. An empty list serves one empty page.
    pub fn with_pages(config: ServerConfig, pages: Vec<Bytes>, isn_rng: Box<dyn RngCore + Send>) -> Self {
        Self::with_shared_pages(config, pages.into_iter().map(|p| Arc::new(Page::new(p))).collect(), isn_rng)
    }

    /// Like [`with_pages`](Self::with_pages), with pages already hashed:
    /// servers side by side (secure and plaintext) share them, and each
    /// page's SHA-256 is computed once.
    pub fn with_shared_pages(
        config: ServerConfig,
        mut pages: Vec<Arc<Page>>,
        mut isn_rng: Box<dyn RngCore + Send>,
    ) -> Self {
        if pages.is_empty() {
            pages.push(Arc::new(Page::new(Bytes::new())));
        }
        let cookies = CookieJar::new(&mut *isn_rng);
        Server {
            half_open: 0,
            cookies,
            stateless: VecDeque::new(),
            stateless_turn: 0,
            time_wait: HashMap::with_hasher(PeerHasher::Keyed(RandomState::new())),
            time_wait_order: VecDeque::new(),
            config,
            pages,
            isn_rng,
            conns: HashMap::with_hasher(PeerHasher::Keyed(RandomState::new())),
            per_source: HashMap::new(),
            tracked: 0,
            accepting: true,
            timers: BinaryHeap::new(),
            due: Vec::new(),
            ready: VecDeque::new(),
            streaming: Vec::new(),
            events: VecDeque::new(),
            stats: ServerStats::default(),
            last_served: None,
            burst: 0,
        }
    }

    /// Processes one datagram received from `peer`. Returns whether it
    /// belongs to a connection, for the packet log: it fitted an established
    /// connection, opened or completed a handshake, or drew a completed
    /// one's final ACK again. Everything else returns false: malformed,
    /// refused, answered with a SYN cookie, stray (all counted), and SYNs
    /// again for a half-open connection (a duplicate or a restart: a flood
    /// of them from one address must not fill the log either).
    pub fn handle(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> bool {
        self.handle_kind(now, peer, datagram) == Belongs::Connection
    }

    /// Like [`handle`](Self::handle), and says how the datagram belongs,
    /// so that the packet log can rate repeats apart from strays.
    pub fn handle_kind(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Belongs {
        self.handle_for_page(now, peer, datagram, 0)
    }

    /// Like [`handle_kind`](Self::handle_kind), but a SYN that opens a new
    /// connection opens it for page `page` (an index into the pages given to
    /// [`with_pages`](Self::with_pages); out of range means the first).
    /// The secure layer calls it with the page its client asked for.
    pub fn handle_for_page(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8], page: usize) -> Belongs {
        self.handle_opening(now, peer, datagram, |s| Body::Whole(s.page(page)))
    }

    /// Like [`handle_for_page`](Self::handle_for_page), for a page not
    /// among those given at start (a proxy's fetched page, or one still
    /// arriving): a new connection holds it for as long as it lives.
    pub fn handle_with_page(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8], body: Body) -> Belongs {
        self.handle_opening(now, peer, datagram, |_| body)
    }

    /// Streamed pages grew or ended (docs/PROTOCOL.md §9.7): connections
    /// serving them may send again. The driver calls it after appending;
    /// it costs one step per connection still streaming.
    pub fn streams_grew(&mut self, now: Instant) {
        let mut streaming = std::mem::take(&mut self.streaming);
        streaming.retain(|peer| {
            let Some(slot) = self.conns.get_mut(peer) else { return false };
            let more = slot.conn.sync_stream(now);
            self.after_activity(now, *peer, false);
            more
        });
        // Connections opened during the calls above are kept too.
        streaming.append(&mut self.streaming);
        self.streaming = streaming;
    }

    /// A datagram; `page` gives the page a SYN that opens a connection
    /// opens it for (called only then).
    fn handle_opening(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        datagram: &[u8],
        page: impl FnOnce(&Self) -> Body,
    ) -> Belongs {
        self.stats.datagrams_received += 1;
        let Ok((header, payload)) = Header::decode(datagram) else {
            self.stats.malformed += 1;
            return Belongs::None;
        };
        self.cookies.rotate(now, &mut *self.isn_rng);
        self.expire_time_wait(now);
        let bare_syn = header.flags.contains(Flags::SYN) && !header.flags.contains(Flags::ACK);
        let accepted = if self.conns.contains_key(&peer) {
            match self.handle_known(now, peer, header, payload, bare_syn) {
                Fit::Connection => true,
                Fit::Repeat => return Belongs::Repeat,
                Fit::No => false,
            }
        } else if header.flags == Flags::ACK | Flags::FIN {
            if self.handle_time_wait(peer, header) {
                return Belongs::Repeat;
            }
            false
        } else if header.flags == Flags::ACK {
            self.handle_cookie(now, peer, header)
        } else if bare_syn {
            let page = page(self);
            self.handle_syn(now, peer, header, payload, page)
        } else {
            // Only a bare SYN opens a connection (RFC 9293 LISTEN state).
            false
        };
        if !accepted {
            self.stats.unexpected += 1;
            return Belongs::None;
        }
        Belongs::Connection
    }

    /// Why a new connection from `peer` may not open now, as the counter to
    /// bump (docs/PROTOCOL.md §7.1).
    fn refusal(&mut self, peer: SocketAddr) -> Option<&mut u64> {
        let from_source = self.per_source.get(&self.source(peer)).copied().unwrap_or(0);
        if !self.accepting {
            Some(&mut self.stats.refused_draining)
        } else if self.conns.len() >= self.config.max_connections {
            Some(&mut self.stats.refused_max_connections)
        } else if from_source >= self.config.max_per_source {
            Some(&mut self.stats.refused_per_source)
        } else {
            None
        }
    }

    /// A datagram from an address with a connection.
    fn handle_known(&mut self, now: Instant, peer: SocketAddr, h: Header, payload: &[u8], bare_syn: bool) -> Fit {
        let Some(slot) = self.conns.get_mut(&peer) else { return Fit::No };
        let half_open = slot.conn.half_open_isn();
        let accepted = match half_open {
            // Draining: a handshake not complete is not a transfer in flight;
            // it does not start one now (docs/PROTOCOL.md §7.4).
            Some(_) if !self.accepting => {
                self.stats.refused_draining += 1;
                return Fit::Repeat;
            }
            // A new SYN from an address whose handshake is incomplete: the
            // client restarted (or a late duplicate opened this one). Start
            // over, as TCP does in SYN-RECEIVED, but within the first SYN's
            // idle deadline: SYNs with new ISNs cannot hold a half-open slot
            // for ever.
            Some(isn) if bare_syn && isn != h.seq => {
                let isn = self.isn_rng.next_u32();
                let deadline = slot.conn.idle_deadline();
                let page = slot.conn.body().clone();
                slot.conn = ServerConn::new(&self.config, page, isn, h.seq, payload, now);
                slot.conn.keep_idle_deadline(deadline);
                self.stats.accepted += 1;
                self.stats.accepted_fast += u64::from(slot.conn.mode() != Mode::Baseline);
                Accepted::Nothing
            }
            _ => slot.conn.handle(now, h, payload),
        };
        self.after_activity(now, peer, half_open.is_some());
        match accepted {
            Accepted::No => Fit::No,
            // A SYN again for a half-open connection, a duplicate ACK: they
            // fit, but a flood of them must not fill the log either.
            Accepted::Nothing => Fit::Repeat,
            Accepted::Progress => Fit::Connection,
        }
    }

    /// A FIN|ACK from an address with no connection: a completed client
    /// whose final ACK was lost gets it again, no larger (§6.3).
    fn handle_time_wait(&mut self, peer: SocketAddr, h: Header) -> bool {
        let tw = self.time_wait.get(&peer).copied();
        let Some(tw) = tw.filter(|t| t.fin_seq == h.seq && t.fin_ack == h.ack) else { return false };
        self.queue_final_ack(peer, tw.reply);
        if let Some(t) = self.time_wait.get_mut(&peer) {
            t.repeats = t.repeats.saturating_add(1);
        }
        true
    }

    /// An ACK from an address with no connection: the handshake ACK of a
    /// SYN cookie of ours, or a stray (docs/PROTOCOL.md §7.2).
    fn handle_cookie(&mut self, now: Instant, peer: SocketAddr, h: Header) -> bool {
        let Some(cookie) = self.cookies.check(now, peer, h.seq - 1, (h.ack - 1).0) else { return false };
        if let Some(counter) = self.refusal(peer) {
            *counter += 1;
            return false;
        }
        let (mode, window) = match cookie {
            CookieMode::Baseline => (Mode::Baseline, u64::MAX),
            CookieMode::Fast { segment, window } => (Mode::Fast { segment }, window),
        };
        let isn = (h.ack - 1).0;
        let conn = ServerConn::from_cookie(&self.config, Body::Whole(self.page(0)), isn, h.seq - 1, mode, window, now);
        self.insert(peer, conn, mode);
        self.stats.cookies_accepted += 1;
        self.after_activity(now, peer, false);
        true
    }

    /// A bare SYN from an address with no connection: a new connection, a
    /// stateless SYN cookie under a flood, or a refusal.
    fn handle_syn(&mut self, now: Instant, peer: SocketAddr, h: Header, payload: &[u8], page: Body) -> bool {
        if let Some(counter) = self.refusal(peer) {
            *counter += 1;
            return false;
        }
        if self.half_open >= self.config.max_half_open {
            self.send_cookie(now, peer, h, payload);
            return false;
        }
        let isn = self.isn_rng.next_u32();
        let conn = ServerConn::new(&self.config, page, isn, h.seq, payload, now);
        let mode = conn.mode();
        self.insert(peer, conn, mode);
        self.half_open += 1;
        self.after_activity(now, peer, true);
        true
    }

    /// Under a SYN flood: answers without keeping state (§7.2).
    fn send_cookie(&mut self, now: Instant, peer: SocketAddr, h: Header, payload: &[u8]) {
        if self.stateless.len() >= STATELESS_QUEUE {
            self.stats.refused_syn_flood += 1;
            return;
        }
        let (mode, offer) = negotiate(&self.config, payload);
        let cookie_mode = match mode {
            Mode::Baseline => CookieMode::Baseline,
            Mode::Fast { segment } => CookieMode::fast(segment, offer.map_or(u64::MAX, |o| u64::from(o.recv_window))),
        };
        let mode = match cookie_mode {
            CookieMode::Baseline => Mode::Baseline,
            CookieMode::Fast { segment, .. } => Mode::Fast { segment },
        };
        let isn = self.cookies.make(now, peer, h.seq, cookie_mode);
        let mut d = Vec::new();
        // SYN cookies serve plaintext clients only, hence the first page.
        encode_syn_ack(Seq(isn), h.seq, mode, &Body::Whole(self.page(0)), &mut d);
        self.stateless.push_back((peer, d));
        self.stats.cookies_sent += 1;
    }

    /// Files a new connection and counts it.
    fn insert(&mut self, peer: SocketAddr, conn: ServerConn, mode: Mode) {
        if conn.body().is_streaming() {
            self.streaming.push(peer);
        }
        self.conns.insert(peer, Slot { conn, tracked: 0, syn_acks: 0, scheduled: None, in_ready: false });
        *self.per_source.entry(self.source(peer)).or_default() += 1;
        self.stats.accepted += 1;
        self.stats.accepted_fast += u64::from(mode != Mode::Baseline);
        self.events.push_back(ServerEvent::Accepted { peer, mode });
    }

    /// Queues a 12-byte datagram sent from no connection state (a final
    /// ACK); dropped when the stateless queue is full.
    /// It goes ahead of queued SYN cookies: under a SYN flood an honest
    /// client must not wait out its linger behind them.
    fn queue_final_ack(&mut self, peer: SocketAddr, header: Header) {
        if self.stateless.len() < STATELESS_QUEUE {
            let mut d = Vec::with_capacity(crate::wire::HEADER_LEN);
            header.encode(&[], &mut d);
            self.stateless.push_front((peer, d));
            self.stats.final_acks += 1;
        }
    }

    /// Remembers a completed fast-mode connection for `time_wait`.
    fn enter_time_wait(&mut self, now: Instant, peer: SocketAddr, tw: TimeWait) {
        if self.config.max_time_wait == 0 {
            return;
        }
        while self.time_wait.len() >= self.config.max_time_wait {
            let Some((until, oldest)) = self.time_wait_order.pop_front() else { break };
            // Only the record this entry was made for: one renewed by a later
            // completion has a later entry of its own.
            if self.time_wait.get(&oldest).is_some_and(|t| t.until == until) {
                self.time_wait.remove(&oldest);
            }
        }
        let until = crate::time::after(now, self.config.time_wait);
        self.time_wait.insert(peer, TimeWait { until, ..tw });
        self.time_wait_order.push_back((until, peer));
    }

    fn expire_time_wait(&mut self, now: Instant) {
        while let Some(&(until, peer)) = self.time_wait_order.front() {
            if until > now {
                break;
            }
            self.time_wait_order.pop_front();
            // Only if it was not renewed by a later completion since.
            if self.time_wait.get(&peer).is_some_and(|t| t.until <= now) {
                self.time_wait.remove(&peer);
            }
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_time_wait(now);
        // Only entries due now: a connection re-filed for `now` or earlier
        // during this call (a pacing deadline that has passed, say) waits
        // for the next call, so this loop always ends.
        // A buffer kept between calls: no allocation per wake-up.
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        while let Some(&Reverse((at, peer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.push((at, peer));
        }
        for &(at, peer) in &due {
            let Some(slot) = self.conns.get_mut(&peer) else { continue };
            if slot.scheduled != Some(at) {
                continue; // stale entry
            }
            slot.scheduled = None;
            let was_half_open = slot.conn.half_open_isn().is_some();
            slot.conn.handle_timeout(now);
            self.after_activity(now, peer, was_half_open);
        }
        self.due = due;
    }

    /// Re-files a connection after anything happened to it: frees it when
    /// closed, else queues its transmit and its timer.
    fn after_activity(&mut self, now: Instant, peer: SocketAddr, was_half_open: bool) {
        let Some(slot) = self.conns.get_mut(&peer) else { return };
        if was_half_open && slot.conn.half_open_isn().is_none() {
            self.half_open = self.half_open.saturating_sub(1);
        }
        let tracked = slot.conn.tracked();
        self.tracked = (self.tracked + tracked).saturating_sub(slot.tracked);
        slot.tracked = tracked;
        if let Some(reason) = slot.conn.close_reason() {
            let conn = &slot.conn;
            match reason {
                CloseReason::Completed => self.stats.completed += 1,
                CloseReason::IdleTimeout(_) => self.stats.given_up += 1,
            }
            self.events.push_back(ServerEvent::Closed {
                peer,
                reason,
                acked: conn.acked(),
                retransmissions: conn.stats.retransmissions,
            });
            let final_ack = conn.final_ack().zip(conn.fin_ack());
            self.tracked = self.tracked.saturating_sub(slot.tracked);
            self.conns.remove(&peer);
            if let Some((reply, (fin_seq, fin_ack))) = final_ack {
                self.queue_final_ack(peer, reply);
                self.enter_time_wait(now, peer, TimeWait { fin_seq, fin_ack, reply, until: now, repeats: 0 });
            }
            let source = self.source(peer);
            if let Entry::Occupied(mut n) = self.per_source.entry(source) {
                *n.get_mut() = n.get().saturating_sub(1);
                if *n.get() == 0 {
                    n.remove();
                }
            }
            return;
        }
        if slot.conn.wants_transmit(now) && !slot.in_ready {
            slot.in_ready = true;
            self.ready.push_back(peer);
        }
        if let Some(at) = slot.conn.poll_timeout() {
            // One live heap entry per connection; an earlier deadline
            // replaces it, a later one waits for the current entry to fire.
            if slot.scheduled.is_none_or(|s| at < s) {
                slot.scheduled = Some(at);
                self.timers.push(Reverse((at, peer)));
            }
        }
    }

    /// Writes the next datagram to send into `buf` (cleared first) and
    /// returns its destination, or `None` when nothing is waiting.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<SocketAddr> {
        buf.clear();
        self.poll_transmit_append(now, buf).map(|(peer, _)| peer)
    }

    /// Appends the next datagram to send to `buf` and returns its
    /// destination and length; `buf` is unchanged when nothing is waiting.
    /// A driver builds a GSO batch with it: the page is copied once, from
    /// memory into the batch.
    #[must_use]
    pub fn poll_transmit_append(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<(SocketAddr, usize)> {
        let start = buf.len();
        // Stateless SYN|ACKs take turns with the connections (one per
        // TRANSMIT_BURST of theirs), so a flood cannot starve transfers.
        let connections_waiting = !self.ready.is_empty();
        if !connections_waiting || self.stateless_turn >= TRANSMIT_BURST {
            if let Some((peer, d)) = self.stateless.pop_front() {
                self.stateless_turn = 0;
                buf.extend_from_slice(&d);
                self.stats.datagrams_sent += 1;
                return Some((peer, buf.len() - start));
            }
        }
        self.stateless_turn = self.stateless_turn.saturating_add(1);
        let max_tracked = self.max_tracked();
        while let Some(peer) = self.ready.pop_front() {
            if self.last_served != Some(peer) {
                self.last_served = Some(peer);
                self.burst = 0;
            }
            let Some(slot) = self.conns.get_mut(&peer) else { continue };
            slot.in_ready = false;
            let before = slot.conn.stats;
            let was_half_open = slot.conn.half_open_isn().is_some();
            if slot.conn.poll_transmit(now, buf, max_tracked) {
                if was_half_open {
                    slot.syn_acks = slot.syn_acks.saturating_add(1);
                }
                let after = slot.conn.stats;
                self.stats.datagrams_sent += 1;
                self.stats.payload_bytes_sent += after.payload_bytes_sent - before.payload_bytes_sent;
                self.stats.retransmissions += after.retransmissions - before.retransmissions;
                // Serve one connection for a few datagrams in a row before the
                // next one's turn: consecutive datagrams to one peer are what
                // a driver can batch into one GSO send.
                self.burst += 1;
                if self.burst < TRANSMIT_BURST {
                    if slot.conn.wants_transmit(now) {
                        slot.in_ready = true;
                        self.ready.push_front(peer);
                    }
                } else {
                    self.burst = 0;
                }
                self.after_activity(now, peer, was_half_open);
                return Some((peer, buf.len() - start));
            }
        }
        None
    }

    /// How many segments one connection's scoreboard may hold before it
    /// sends another new one: no limit while under half the memory budget,
    /// then an equal share of the other half, and once the budget is used
    /// up, [`PRESSURE_FLOOR`] (docs/PROTOCOL.md §7.1). Shares taken when
    /// fewer connections were open are not given back by a peer that never
    /// acknowledges, so only the floor bounds the total: within the budget
    /// plus the floor per connection, whatever order connections came in.
    fn max_tracked(&self) -> u64 {
        let budget = self.config.memory_budget / crate::config::SEGMENT_COST;
        if self.tracked < budget / 2 {
            u64::MAX
        } else if self.tracked >= budget {
            PRESSURE_FLOOR
        } else {
            budget / 2 / (self.conns.len().max(1) as u64)
        }
    }

    /// Page `index`, or the first when out of range.
    fn page(&self, index: usize) -> Arc<Page> {
        let page = self.pages.get(index).or(self.pages.first());
        page.map_or_else(|| Arc::new(Page::new(Bytes::new())), Arc::clone)
    }

    /// Page `index` of those given at start (the first when out of range).
    pub fn page_at(&self, index: usize) -> Arc<Page> {
        self.page(index)
    }

    /// Pages served, the first being the default.
    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// The source a peer counts against for `max_per_source`.
    fn source(&self, peer: SocketAddr) -> IpAddr {
        source_key(peer.ip(), self.config.source_prefix_v4, self.config.source_prefix_v6)
    }

    /// How what was just sent to `peer` belongs, for the packet log: to a
    /// connection (anything to an established one, a half-open one's first
    /// SYN|ACK, the first final ACK); a repeat (SYN|ACKs again, final ACKs
    /// again: they answer datagrams a flood can repeat); or to none (SYN
    /// cookies).
    pub fn knows_kind(&self, peer: SocketAddr) -> Belongs {
        // One lookup for a connection's datagram: the TIME-WAIT records
        // only when no connection has the address.
        if let Some(slot) = self.conns.get(&peer) {
            return if slot.conn.half_open_isn().is_none() || slot.syn_acks <= 1 {
                Belongs::Connection
            } else {
                Belongs::Repeat
            };
        }
        match self.time_wait.get(&peer) {
            Some(t) if t.repeats == 0 => Belongs::Connection,
            Some(_) => Belongs::Repeat,
            None => Belongs::None,
        }
    }

    /// Whether what was just sent to `peer` belongs to a connection
    /// ([`knows_kind`](Self::knows_kind) says more).
    pub fn knows(&self, peer: SocketAddr) -> bool {
        self.knows_kind(peer) == Belongs::Connection
    }

    /// `peer`'s client has moved (secure mode, where `peer` is a virtual
    /// address, docs/PROTOCOL.md §8.4): what is outstanding is sent again
    /// at once.
    pub fn path_changed(&mut self, now: Instant, peer: SocketAddr) {
        let Some(slot) = self.conns.get_mut(&peer) else { return };
        let was_half_open = slot.conn.half_open_isn().is_some();
        slot.conn.on_path_change();
        self.after_activity(now, peer, was_half_open);
    }

    /// A payload-free segment that restates where `peer`'s transfer is, and
    /// draws the client's ACK at once, while the page is being sent; once
    /// the transfer has completed, its final ACK (docs/PROTOCOL.md §6.3),
    /// which ends the client's wait. Secure mode's path probe (§8.4).
    pub fn empty_ack(&self, peer: SocketAddr) -> Option<Header> {
        match self.conns.get(&peer) {
            Some(slot) => slot.conn.empty_ack().or_else(|| slot.conn.final_ack()),
            None => self.time_wait.get(&peer).map(|t| t.reply),
        }
    }

    /// Secure mode's early segment for `peer` (a virtual address) while
    /// its handshake ACK has not come: see [`EarlyData`]. Appended to `buf`.
    pub(crate) fn early_segment(&mut self, peer: SocketAddr, max_payload: usize, buf: &mut Vec<u8>) -> EarlyData {
        match self.conns.get_mut(&peer) {
            Some(slot) => slot.conn.early_segment(max_payload, buf),
            None => EarlyData::Never,
        }
    }

    /// Segments on every connection's scoreboard together.
    pub fn tracked_segments(&self) -> u64 {
        self.tracked
    }

    /// Whether a connection has a datagram waiting for
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn has_pending_transmit(&self) -> bool {
        !self.ready.is_empty() || !self.stateless.is_empty()
    }

    /// The earliest deadline at which [`handle_timeout`](Self::handle_timeout)
    /// should run. It may be early (a stale entry), never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Counters since start.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Open connections (half-open ones included).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections whose handshake is incomplete.
    pub fn half_open_count(&self) -> usize {
        self.half_open
    }

    /// Drops the connection of `peer` without a word, as if it had never
    /// been: the secure layer calls it when it evicts an unconfirmed
    /// handshake, whose inner connection must not hold a slot until its
    /// idle timeout.
    pub fn forget(&mut self, peer: SocketAddr) {
        let Some(slot) = self.conns.remove(&peer) else { return };
        if slot.conn.half_open_isn().is_some() {
            self.half_open = self.half_open.saturating_sub(1);
        }
        self.tracked = self.tracked.saturating_sub(slot.tracked);
        let source = self.source(peer);
        if let Entry::Occupied(mut n) = self.per_source.entry(source) {
            *n.get_mut() = n.get().saturating_sub(1);
            if *n.get() == 0 {
                n.remove();
            }
        }
    }

    /// Starts draining before a stop: SYNs that would open a new connection
    /// are dropped from now on (counted in `refused_draining`), connections
    /// already open go on to their end.
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero
    use std::time::Duration;

    use rand::SeedableRng;

    use super::*;
    use crate::wire::HEADER_LEN;

    fn server() -> Server {
        Server::new(
            ServerConfig::default(),
            Bytes::from_static(b"page"),
            Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(1)),
        )
    }

    /// Plaintext peers choose their addresses: their maps keep the keyed
    /// hash, and only the secure layer's inner server gives it up.
    #[test]
    fn peers_that_choose_their_addresses_get_the_keyed_hash() {
        let plain = server();
        assert!(matches!(plain.conns.hasher(), PeerHasher::Keyed(_)));
        assert!(matches!(plain.time_wait.hasher(), PeerHasher::Keyed(_)));
        let numbered = server().with_numbered_peers();
        assert!(matches!(numbered.conns.hasher(), PeerHasher::Numbered));
        assert!(matches!(numbered.time_wait.hasher(), PeerHasher::Numbered));
    }

    /// Secure mode's early segment (docs/PROTOCOL.md §8.3): the page's
    /// first bytes before the handshake ACK, which may then acknowledge
    /// them (the client's ACK of them, its handshake ACK lost); an ACK
    /// beyond them is no handshake ACK. The sender then starts from offset
    /// 0 as ever, and the client trims what it has.
    #[test]
    fn an_early_segment_may_be_acknowledged_by_the_handshake_ack() {
        let t0 = Instant::now();
        let page: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut s = Server::new(
            ServerConfig::default(),
            Bytes::from(page.clone()),
            Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(1)),
        );
        let mut c = crate::ClientConn::new(crate::ClientConfig::default(), 7, t0);
        let peer = SocketAddr::from(([10, 0, 0, 1], 4000));
        let (mut syn, mut syn_ack, mut early) = (Vec::new(), Vec::new(), Vec::new());
        assert!(c.poll_transmit(t0, &mut syn));
        s.handle(t0, peer, &syn);
        assert_eq!(s.poll_transmit(t0, &mut syn_ack), Some(peer));
        let isn = Header::decode(&syn_ack).unwrap().0.seq;
        // Nothing to send before the handshake but the early segment.
        assert_eq!(s.early_segment(peer, 0, &mut early), EarlyData::Never);
        let EarlyData::Sent(h, n) = s.early_segment(peer, 900, &mut early) else { panic!("no early segment") };
        assert_eq!((h.seq, h.flags, n, early.len()), (isn + 1, Flags::ACK, 900, HEADER_LEN + 900));
        assert!(s.poll_transmit(t0, &mut Vec::new()).is_none());

        let t1 = t0 + Duration::from_millis(25);
        c.handle(t1, &syn_ack);
        c.handle(t1, &early);
        assert_eq!(c.readable(), &page[..900]);
        // The handshake ACK, which acknowledges the SYN|ACK alone (so it
        // is the server's first RTT sample even when the early bytes came
        // in the same batch), is lost; then, on the delayed-ACK timer, the
        // ACK of the early bytes.
        let mut buf = Vec::new();
        assert!(c.poll_transmit(t1, &mut buf));
        assert_eq!(Header::decode(&buf).unwrap().0.ack, isn + 1, "the handshake ACK");
        while c.poll_transmit(t1, &mut buf) {}
        let t2 = c.poll_timeout().unwrap();
        c.handle_timeout(t2);
        let mut last = Vec::new();
        assert!(c.poll_transmit(t2, &mut last));
        let (h, _) = Header::decode(&last).unwrap();
        assert_eq!(h.ack, isn + 901, "the client acknowledges the early bytes");

        let beyond = Header::new(h.seq, isn + 902, Flags::ACK).to_bytes();
        s.handle(t2, peer, &beyond);
        assert!(s.poll_transmit(t2, &mut Vec::new()).is_none(), "an ACK beyond the early bytes");
        s.handle(t2, peer, &last);
        let mut first = Vec::new();
        assert_eq!(s.poll_transmit(t2, &mut first), Some(peer), "established by the ACK of the early bytes");
        let (h, payload) = Header::decode(&first).unwrap();
        assert_eq!(h.seq, isn + 1, "the sender starts at offset 0");
        c.handle(t2 + Duration::from_millis(25), &first);
        assert_eq!(c.readable(), &page[..payload.len()], "the client trims the overlap");
    }

    /// Both hashers find what was put in.
    #[test]
    fn both_hashers_find_their_keys() {
        for hasher in [PeerHasher::Keyed(RandomState::new()), PeerHasher::Numbered] {
            let mut map = HashMap::with_hasher(hasher);
            for port in 1..=1000u16 {
                map.insert(SocketAddr::from(([10, 0, 0, 1], port)), port);
            }
            assert!((1..=1000u16).all(|p| map.get(&SocketAddr::from(([10, 0, 0, 1], p))) == Some(&p)));
            assert_eq!(map.get(&SocketAddr::from(([10, 0, 0, 2], 1))), None);
        }
    }
}
