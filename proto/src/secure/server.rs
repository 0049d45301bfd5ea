//! The secure-mode server: the sans-IO [`Server`] inside the handshake and
//! the sealed datagrams (docs/PROTOCOL.md §8).
//!
//! Each secure connection is an inner fast-mode connection of an inner
//! [`Server`], filed under a virtual address from `100::/64` (RFC 6666's
//! discard prefix, never a real peer): the inner server keeps doing
//! recovery, congestion control and pacing, and this layer turns its
//! datagrams into secure ones and back. The real address of a connection
//! may change (NAT rebinding); its virtual address does not.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use rustc_hash::FxHashMap;

use super::handshake::{
    self, MIN_HANDSHAKE_LEN, NOISE_MSG2_OVERHEAD, OUTER_OVERHEAD, Outer, OuterTime, Responder, field,
};
use super::keys::{PublicKey, StaticSecret};
use super::load::{Admit, Load};
use super::packet::{self, PN_LEN, ReplayWindow, TOKEN_LEN, TokenKey};
use super::proxy::{FetchRequest, FetchedPage, MAX_URL_LEN, PageMeta};
use super::replay::ReplayFilter;
use super::{SECURE_MAX_SEGMENT, WallClock, handshake::SessionKeys};
use crate::Refusal;
use crate::config::ServerConfig;
use crate::conn::EarlyData;
use crate::endpoint::{Belongs, Server, ServerEvent, ServerStats, source_key};
use crate::page::{Body, Page, StreamView};
use crate::wire::Header;

/// Secure-mode settings of a server.
#[derive(Debug, Clone)]
pub struct SecureServerConfig {
    /// The server's static key; its public half is in the bridge line.
    pub key: StaticSecret,
    /// When set, only clients whose static key is listed get an answer.
    pub allow_clients: Option<HashSet<PublicKey>>,
    /// The name of each page, in the order the pages are given; the first
    /// is the default (asked for with an empty name).
    pub page_names: Vec<String>,
    /// A first message whose clock differs from ours by more than this is
    /// ignored; replays are remembered for twice as long.
    pub max_clock_skew: Duration,
    /// Handshakes answered but not yet confirmed by the client, at most;
    /// beyond this the oldest is forgotten.
    pub max_pending: usize,
    /// Bits of each of the replay filter's two generations (a power of
    /// two; fixed memory, a quarter of this in bytes in all): the more
    /// bits, the rarer a fresh first message taken for a replay under a
    /// flood (docs/PROTOCOL.md §8.3, rule 5).
    pub replay_filter_bits: usize,
    /// The wall clock, for the first message's timestamp.
    pub clock: WallClock,
    /// Whether clients may ask for pages by URL (docs/PROTOCOL.md §9): the
    /// driver then fetches them ([`SecureServer::poll_fetch`]); when false,
    /// such a request is refused as not allowed.
    pub fetch: bool,
    /// Requests being fetched at once, at most; beyond, refused as busy.
    pub max_fetching: usize,
    /// Requests from one source held at once, at most (by default all of
    /// them: many clients behind one address asking for a cached page are
    /// answered on the driver's next turn; the driver bounds each source's
    /// origin fetches, [`FetchRequest::source`]).
    pub max_fetching_per_source: usize,
    /// A request the driver has not answered after this long is refused
    /// (timed out), so that its state is bounded whatever the driver does.
    pub fetch_timeout: Duration,
    /// First messages read a second (each costs Diffie-Hellman work) before
    /// the server is under load and asks for cookies (docs/PROTOCOL.md
    /// §8.3, rule 1); bursts of a tenth of that.
    pub handshake_reads: u32,
    /// Under load, first messages with a valid cookie read a second from
    /// one source (as `--max-per-source` counts sources).
    pub handshake_reads_per_source: u32,
}

impl SecureServerConfig {
    /// Defaults around `key` and the page names.
    pub fn new(key: StaticSecret, page_names: Vec<String>, clock: WallClock) -> Self {
        SecureServerConfig {
            key,
            allow_clients: None,
            page_names,
            max_clock_skew: Duration::from_secs(300),
            max_pending: 4096,
            replay_filter_bits: 1 << 26,
            clock,
            fetch: false,
            max_fetching: 256,
            max_fetching_per_source: 256,
            fetch_timeout: Duration::from_secs(90),
            // A third of a core at 333 µs a message read and answered
            // (anon-bench handshakes).
            handshake_reads: 1000,
            handshake_reads_per_source: 20,
        }
    }
}

/// Counters of the secure layer, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecureStats {
    /// Datagrams that are neither sealed for a connection of ours nor a
    /// handshake under our key (random bytes, probes, other servers'
    /// traffic, plaintext when plaintext is off): dropped, never answered.
    pub not_ours: u64,
    /// Outer layer right, but the Noise message did not decrypt under our
    /// static key, or its payload was malformed.
    pub bad_handshakes: u64,
    /// First messages read under our static key: the Diffie-Hellman work
    /// (two X25519 operations each) that only a fresh message made with
    /// the bridge line costs, never a replay or a stale one.
    pub noise_reads: u64,
    /// First messages whose clock was too far from ours.
    pub stale_handshakes: u64,
    /// First messages seen before (a replay), ignored.
    pub replayed_handshakes: u64,
    /// Clients not on the allow list, ignored.
    pub unlisted_clients: u64,
    /// First messages from a source over `max_per_source`, or beyond
    /// `max_connections`, ignored.
    pub refused: u64,
    /// Handshakes answered.
    pub handshakes: u64,
    /// Handshakes the client confirmed with a sealed datagram.
    pub confirmed: u64,
    /// Unconfirmed handshakes forgotten because `max_pending` were open.
    pub evicted: u64,
    /// Requests refused with a reason (no such page).
    pub rejected: u64,
    /// Sealed datagrams that named a connection but did not authenticate.
    pub forged: u64,
    /// Authenticated datagrams seen before, dropped.
    pub replayed: u64,
    /// Connections moved to a new address of their client, once proven.
    pub migrations: u64,
    /// Path probes sent to a new address, to prove it before the
    /// connection moves there (docs/PROTOCOL.md §8.4, "Path validation").
    pub path_probes: u64,
    /// Early segments sent: a page's first bytes right after the answer,
    /// in what the first message's length leaves (docs/PROTOCOL.md §8.3).
    pub early_segments: u64,
    /// Pages asked for by URL, handed to the driver.
    pub fetch_requests: u64,
    /// First messages sent again while their URL was being fetched (the
    /// newest is answered).
    pub fetch_repeats: u64,
    /// Requests the driver did not answer within `fetch_timeout`.
    pub fetch_timeouts: u64,
    /// Under load: first messages answered with a cookie instead of being
    /// read (docs/PROTOCOL.md §8.3, rule 1).
    pub cookie_replies: u64,
    /// Under load: first messages with a valid cookie dropped unread, their
    /// source's budget spent.
    pub rate_limited: u64,
}

/// A datagram to send, and what the packet log needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub peer: SocketAddr,
    /// Its length, at the end of the buffer.
    pub len: usize,
    /// How it belongs (see [`Server::knows_kind`]).
    pub belongs: Belongs,
    /// The inner datagram's header, which the log shows; `None` for a
    /// plaintext datagram and for a refusal (which has no inner datagram).
    pub inner: Option<Header>,
    /// A plaintext datagram (plaintext on too): the log decodes it itself.
    pub plain: bool,
}

/// Whether attempt `cid` is answered and not yet confirmed: its early
/// segment may still go.
fn answered(sessions: &FxHashMap<u64, Session>, cid: u64) -> bool {
    sessions.get(&cid).is_some_and(|s| matches!(s.phase, Phase::Answered))
}

/// Where one handshake attempt of a connection stands.
enum Phase {
    /// First message read; the answer goes out with the inner SYN|ACK.
    Pending(Box<Responder>),
    /// Answered; waiting for the client's first sealed datagram.
    Answered,
    /// The client has sent a sealed datagram: its address is verified.
    Confirmed,
}

/// One handshake attempt: a client that sent its first message again
/// (the answer was lost) makes a second attempt of the same connection,
/// with keys of its own; the first the client confirms wins.
struct Session {
    virt: SocketAddr,
    peer: SocketAddr,
    phase: Phase,
    keys: Option<SessionKeys>,
    next_pn: u64,
    replay: ReplayWindow,
    tokens_issued: u64,
    /// The length of the first message, which bounds the answer's, and
    /// its outer nonce, which the answer is bound to.
    msg1_len: usize,
    msg1_nonce: [u8; 24],
    /// Padding of the current run of datagrams and how many are left in
    /// it: runs of one length keep GSO batches whole.
    pad: usize,
    pad_left: u32,
    /// The newest datagram came from an address other than `peer` (which
    /// the client proved it receives at: at first the first message's,
    /// where the answer went), not yet proven.
    unproven: Option<Unproven>,
    /// The token serials of the newest probes and where each went: a
    /// datagram that carries one proves that address.
    probes: [Option<(u64, SocketAddr)>; PROBES_KEPT],
    /// In [`SecureServer::probes`].
    probe_queued: bool,
    /// Bytes the early segment's datagram may take: the first message's
    /// length less the answer's; 0 once it is sent or will never be.
    early_room: usize,
}

/// An address a connection may move to, once the client proves it
/// receives there (RFC 9000 §8.2 and §9, with tokens as challenges:
/// docs/PROTOCOL.md §8.4). Until then only probes go there.
struct Unproven {
    addr: SocketAddr,
    /// The packet number of the datagram that made it a candidate.
    first_pn: u64,
    /// Bytes of authenticated datagrams from there, and of probes sent
    /// there: never more than three times as many (RFC 9000 §8.1).
    received: u64,
    sent: u64,
}

impl Unproven {
    fn new(addr: SocketAddr, received: usize, first_pn: u64) -> Unproven {
        Unproven { addr, first_pn, received: received as u64, sent: 0 }
    }

    /// Whether `len` more bytes may go there.
    fn allows(&self, len: usize) -> bool {
        self.sent.saturating_add(len as u64) <= self.received.saturating_mul(AMPLIFICATION)
    }

    /// A probe of `len` bytes went there.
    fn probed(&mut self, len: usize) {
        self.sent = self.sent.saturating_add(len as u64);
    }
}

/// One secure connection, under its virtual address.
struct Virtual {
    /// Its attempts (session IDs), oldest first; one once confirmed.
    attempts: Vec<u64>,
    confirmed: Option<u64>,
    client: (SocketAddr, [u8; 8]),
    source: IpAddr,
    /// What the origin said of a fetched page, for the answer.
    meta: Option<Arc<PageMeta>>,
    /// Where a resumed transfer starts, for the answer.
    resumed: Option<u64>,
    /// Closed: kept (keys and all) until then, so that the inner TIME-WAIT
    /// can answer a FIN|ACK sent again.
    closed_until: Option<Instant>,
}

/// An authenticated first message, on its way to becoming a connection.
struct Opening {
    peer: SocketAddr,
    conn_id: [u8; 8],
    responder: Box<Responder>,
    /// The inner SYN.
    inner: Vec<u8>,
    msg1_len: usize,
    msg1_nonce: [u8; 24],
    /// The client has this prefix of the page with this digest.
    resume: Option<(u64, [u8; 32])>,
}

/// The page a new connection serves.
enum PageChoice {
    /// One given at start, by index.
    Index(usize),
    /// A fetched one, or one still arriving.
    Shared(Body),
}

/// A page in memory for a client that has its first `offset` bytes with
/// digest `sha`: the rest (and `resumed` set) if they are this page's
/// start at a resume point inside it, the whole page otherwise.
fn resume_whole(whole: Arc<Page>, (offset, sha): (u64, [u8; 32]), resumed: &mut Option<u64>) -> PageChoice {
    if whole.prefix_sha256(offset) == Some(sha) && offset < whole.len() {
        *resumed = Some(offset);
        PageChoice::Shared(Body::Whole(Arc::new(whole.resumed_from(offset))))
    } else {
        PageChoice::Shared(Body::Whole(whole))
    }
}

/// A request whose URL the driver is fetching.
struct Fetching {
    opening: Opening,
    source: IpAddr,
}

/// Attempts of one connection kept at most.
const MAX_ATTEMPTS: usize = 4;
/// Tokens in the answer.
const WELCOME_TOKENS: u64 = 4;
/// Datagrams of one length in a row.
const PAD_RUN: u32 = 64;
/// An unproven address is sent at most this many times what came from it
/// (RFC 9000 §8.1's factor).
const AMPLIFICATION: u64 = 3;
/// Probes of one address whose tokens still prove it.
const PROBES_KEPT: usize = 4;
/// Padding of a data datagram, drawn per run between these: a token
/// rides in it, so a datagram with one is as long as one without.
const PAD_MIN: usize = TOKEN_LEN;
const PAD_MAX: usize = 32;
/// A sealed server datagram around an inner header alone, at the widest
/// padding: a probe's length before sealing, and what an early segment's
/// room must leave beside its page bytes.
const SEALED_HEADER_MAX: usize = PN_LEN + packet::BODY_PREFIX + crate::wire::HEADER_LEN + PAD_MAX + packet::TAG_LEN;
/// An answer (a refusal too) is this long at least, plus 0 to
/// [`ANSWER_PAD_MAX`] bytes at random: its length then says nothing of
/// what it carries (a META up to about 280 bytes, a RESUME) while what
/// the first message's length leaves carries the page's first bytes (the
/// early segment, docs/PROTOCOL.md §8.3).
const ANSWER_LEN_MIN: usize = 512;
const ANSWER_PAD_MAX: usize = 64;
/// The early segment's room must leave at least this much for the page,
/// or it is not sent.
const MIN_EARLY_PAYLOAD: usize = 64;
/// The early segment's datagram is shorter than its room by up to this
/// much, at random, and padded to that length whatever the page's.
const EARLY_SLACK_MAX: usize = 64;
/// A first message shorter than a client ever sends (it pads to 1,200 to
/// 1,232 bytes) is dropped unread: an answer is always shorter than it.
const MIN_FIRST_MESSAGE_LEN: usize = 1200;
/// Refusals and cookie replies waiting to be sent, at most: beyond, a
/// cookie reply is not sent (the client sends its first message again on
/// its timer).
const MAX_OUTBOX: usize = 4096;

/// A secure-mode server; drive it like [`Server`].
pub struct SecureServer {
    config: SecureServerConfig,
    inner: Server,
    plain: Option<Server>,
    /// Whose turn it is to transmit: secure connections or plaintext ones.
    plain_turn: bool,
    outer: Outer,
    tokens: TokenKey,
    rng: Box<dyn RngCore + Send>,
    /// By connection ID and by virtual address: keys this server chose
    /// (random IDs, a counter), so a fast hash needs no defence against
    /// chosen collisions; maps keyed by what peers choose keep SipHash.
    sessions: FxHashMap<u64, Session>,
    virtuals: FxHashMap<SocketAddr, Virtual>,
    by_client: HashMap<(SocketAddr, [u8; 8]), SocketAddr>,
    /// Unconfirmed connections, oldest first (stale entries skipped).
    pending: VecDeque<SocketAddr>,
    pending_count: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Closed connections' expiry, oldest first.
    closed: VecDeque<(Instant, SocketAddr)>,
    next_virtual: u64,
    max_per_source: usize,
    /// The prefixes that make one source (`--source-prefix-v4`/`-v6`).
    source_prefixes: (u8, u8),
    max_connections: usize,
    replay: ReplayFilter,
    load: Load,
    /// Requests being fetched, by request ID (a counter); by client, for
    /// first messages sent again meanwhile; by source; their deadlines,
    /// oldest first (answered ones skipped); and those the driver has not
    /// taken yet.
    fetching: FxHashMap<u64, Fetching>,
    fetching_by_client: HashMap<(SocketAddr, [u8; 8]), u64>,
    fetching_per_source: HashMap<IpAddr, usize>,
    fetch_deadlines: VecDeque<(Instant, u64)>,
    fetch_requests: VecDeque<FetchRequest>,
    next_fetch: u64,
    /// Answers written without a connection (refusals).
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Sessions whose unproven address is owed a probe (each at most once:
    /// `Session::probe_queued`).
    probes: VecDeque<u64>,
    /// Answered sessions whose early segment may go now, and those waiting
    /// for their streamed page to grow (moved back on each growth).
    early_ready: VecDeque<u64>,
    early_waiting: Vec<u64>,
    events: VecDeque<ServerEvent>,
    stats: SecureStats,
    scratch: Vec<u8>,
    body: Vec<u8>,
    last_inner: Option<Header>,
    last_plain: bool,
    last_sent: Option<Transmit>,
}

impl std::fmt::Debug for SecureServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureServer")
            .field("connections", &self.virtuals.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Where the 64-bit connection number goes in a virtual address (never on
/// the wire): the discard prefix 100::/64 (RFC 6666), the number in the low
/// 64 bits in the machine's byte order. The order matters: the address is
/// hashed as one native integer, and FxHash multiplies, which carries a bit
/// only upwards; a counter stored big-endian (on this little-endian machine,
/// its changing byte at the top of the word) left the bucket bits of
/// `virtuals` the same for every connection, and each lookup probed through
/// all of them.
fn virtual_addr(n: u64) -> SocketAddr {
    let mut octets = [0u8; 16];
    octets[..2].copy_from_slice(&0x0100_u16.to_be_bytes());
    octets[8..].copy_from_slice(&n.to_ne_bytes());
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), 1, 0, 0))
}

impl SecureServer {
    /// A secure server for `pages` (named in `secure.page_names`), with
    /// `config` for its connections; `plain`, when set, also serves
    /// plaintext clients on the same socket with that configuration.
    pub fn new(
        secure: SecureServerConfig,
        config: ServerConfig,
        pages: Vec<Bytes>,
        plain: Option<ServerConfig>,
        mut rng: Box<dyn RngCore + Send>,
    ) -> Self {
        let max_per_source = config.max_per_source;
        let source_prefixes = (config.source_prefix_v4, config.source_prefix_v6);
        let max_connections = config.max_connections;
        let inner_config = ServerConfig {
            // This layer bounds handshakes and sources by real address;
            // inside, every virtual address is its own source and no SYN
            // needs a cookie (the handshake already proved the key).
            max_per_source: usize::MAX,
            max_half_open: usize::MAX,
            fast: true,
            max_segment: config.max_segment.min(SECURE_MAX_SEGMENT),
            ..config
        };
        let mut seed = [0u8; 8];
        rng.fill_bytes(&mut seed);
        let inner_rng =
            Box::new(<rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(u64::from_le_bytes(seed)));
        let pages: Vec<Arc<Page>> = pages.into_iter().map(|p| Arc::new(Page::new(p))).collect();
        let inner = Server::with_shared_pages(inner_config, pages.clone(), inner_rng).with_numbered_peers();
        let plain = plain.map(|c| {
            rng.fill_bytes(&mut seed);
            let r = Box::new(<rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(u64::from_le_bytes(seed)));
            Server::with_shared_pages(c, pages.into_iter().take(1).collect(), r)
        });
        let mut token_key = zeroize::Zeroizing::new([0u8; 16]);
        rng.fill_bytes(&mut token_key[..]);
        let mut replay_key = [0u8; 16];
        rng.fill_bytes(&mut replay_key);
        // A message is remembered while its timestamp can pass the clock
        // check, up to twice the skew after it arrived (rule 5).
        let skew_ms = u64::try_from(secure.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
        let period = skew_ms.saturating_mul(2).saturating_add(1);
        let replay = ReplayFilter::new(&replay_key, secure.replay_filter_bits, period, secure.clock.unix_ms);
        let load = Load::new(secure.handshake_reads, secure.handshake_reads_per_source, &mut *rng);
        SecureServer {
            outer: Outer::new(&secure.key.public()),
            tokens: TokenKey::new(&token_key),
            config: secure,
            inner,
            plain,
            plain_turn: false,
            rng,
            sessions: FxHashMap::default(),
            virtuals: FxHashMap::default(),
            by_client: HashMap::new(),
            pending: VecDeque::new(),
            pending_count: 0,
            per_source: HashMap::new(),
            closed: VecDeque::new(),
            next_virtual: 1,
            max_per_source,
            source_prefixes,
            max_connections,
            replay,
            load,
            fetching: FxHashMap::default(),
            fetching_by_client: HashMap::new(),
            fetching_per_source: HashMap::new(),
            fetch_deadlines: VecDeque::new(),
            fetch_requests: VecDeque::new(),
            next_fetch: 1,
            outbox: VecDeque::new(),
            probes: VecDeque::new(),
            early_ready: VecDeque::new(),
            early_waiting: Vec::new(),
            events: VecDeque::new(),
            stats: SecureStats::default(),
            scratch: Vec::new(),
            body: Vec::new(),
            last_inner: None,
            last_plain: false,
            last_sent: None,
        }
    }

    /// Processes one datagram from `peer`; says how it belongs, for the
    /// packet log. For a secure datagram, [`last_inner`](Self::last_inner)
    /// then gives the inner header the log shows.
    pub fn handle_kind(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Belongs {
        self.last_inner = None;
        self.last_plain = false;
        let belongs = if let Some(b) = self.handle_sealed(now, peer, datagram) {
            b
        } else if let Some(b) = self.handle_initiation(now, peer, datagram) {
            b
        } else if let Some(plain) = &mut self.plain {
            self.last_plain = true;
            return plain.handle_kind(now, peer, datagram);
        } else {
            self.stats.not_ours += 1;
            Belongs::None
        };
        self.pump_events(now);
        belongs
    }

    /// The inner header of the last secure datagram handled, if it was one
    /// and authenticated.
    pub fn last_inner(&self) -> Option<Header> {
        self.last_inner
    }

    /// Whether the last datagram handled went to the plaintext server
    /// (plaintext on too): the log decodes it itself.
    pub fn last_was_plain(&self) -> bool {
        self.last_plain
    }

    /// A datagram sealed for one of our connections; `None` when it names
    /// none (then it may be a handshake).
    fn handle_sealed(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Option<Belongs> {
        if datagram.len() < packet::C2S_OVERHEAD {
            return None;
        }
        let (cid, serial) = self.tokens.open(datagram)?;
        let session = self.sessions.get_mut(&cid)?;
        let Some(keys) = session.keys.as_ref().filter(|_| serial < session.tokens_issued) else {
            self.stats.forged += 1;
            return Some(Belongs::None);
        };
        let Some(pn) = keys.recv.open(datagram, TOKEN_LEN + PN_LEN, &mut self.body) else {
            self.stats.forged += 1;
            return Some(Belongs::None);
        };
        let fresh = session.replay.accept(pn);
        // From the proven address, a datagram at least as new as the one
        // that made another address a candidate shows that the client is
        // still here: the candidate was a copy raced from elsewhere (then
        // the datagram itself is a duplicate), or the client came back.
        // Older ones (replays an observer recorded) do not count.
        if peer == session.peer && session.unproven.as_ref().is_some_and(|u| pn >= u.first_pn) {
            session.unproven = None;
            session.probes = [None; PROBES_KEPT];
        }
        if !fresh {
            self.stats.replayed += 1;
            return Some(Belongs::None);
        }
        let virt = session.virt;
        let newest = session.replay.highest() == Some(pn);
        // The token of a probe: the client read it where it went. From
        // wherever this datagram comes (RFC 9000 §8.2.2): a NAT that moves
        // the client again meanwhile still lets it prove the address.
        let mut moved = false;
        if let Some(&(_, to)) = session.probes.iter().flatten().find(|(s, _)| *s == serial) {
            session.probes = [None; PROBES_KEPT];
            if session.unproven.as_ref().is_some_and(|u| u.addr == to) {
                session.unproven = None;
            }
            if to != session.peer {
                session.peer = to;
                moved = true;
                self.stats.migrations += 1;
            }
        }
        if let Some(u) = session.unproven.as_mut().filter(|u| u.addr == peer) {
            u.received = u.received.saturating_add(datagram.len() as u64);
        }
        // Only the newest datagram says where the client is: a reordered or
        // delayed one is not news.
        if newest && peer != session.peer {
            if session.unproven.as_ref().is_none_or(|u| u.addr != peer) {
                session.unproven = Some(Unproven::new(peer, datagram.len(), pn));
            }
            // Probed on its newest datagrams, one probe waiting at a time:
            // a probe lost draws another when the client, hearing nothing,
            // says where it is again.
            if !session.probe_queued {
                session.probe_queued = true;
                self.probes.push_back(cid);
            }
        }
        if !matches!(session.phase, Phase::Confirmed) {
            session.phase = Phase::Confirmed;
            self.stats.confirmed += 1;
            self.confirm(virt, cid);
        }
        // Taken out for the call: no copy or allocation per datagram.
        let buf = std::mem::take(&mut self.body);
        let belongs = match packet::parse_body(&buf) {
            Some(body) => {
                self.last_inner = Header::decode(body.inner).ok().map(|(h, _)| h);
                let belongs = self.inner.handle_kind(now, virt, body.inner);
                if moved {
                    // What went to the old address since the client left it
                    // is lost: sent again now, not on a backed-off timer.
                    self.inner.path_changed(now, virt);
                }
                belongs
            }
            None => Belongs::None,
        };
        self.body = buf;
        Some(belongs)
    }

    /// Under load: the cookie of `peer`, in a reply shaped as an answer (the
    /// outer layer, the first message's nonce as associated data, an empty
    /// Noise message, then the cookie; as long as an answer), never longer
    /// than the first message.
    fn send_cookie(&mut self, now: Instant, peer: SocketAddr, msg1_nonce: &[u8; 24], msg1_len: usize) {
        if self.outbox.len() >= MAX_OUTBOX {
            return;
        }
        let cookie = self.load.cookie(now, peer, &mut *self.rng);
        let len = self.answer_len(0, msg1_len);
        let mut d = Vec::with_capacity(len);
        self.outer.seal(&mut *self.rng, &[], &cookie, len, msg1_nonce, &mut d);
        self.outbox.push_back((peer, d));
        self.stats.cookie_replies += 1;
    }

    /// The client confirmed attempt `cid`: the others are dropped.
    fn confirm(&mut self, virt: SocketAddr, cid: u64) {
        let Some(v) = self.virtuals.get_mut(&virt) else { return };
        if v.confirmed.is_none() {
            self.pending_count = self.pending_count.saturating_sub(1);
        }
        v.confirmed = Some(cid);
        for other in std::mem::take(&mut v.attempts) {
            if other != cid {
                self.sessions.remove(&other);
            }
        }
        v.attempts.push(cid);
        self.by_client.remove(&v.client);
    }

    /// A first message: `None` when the outer layer is not ours.
    fn handle_initiation(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Option<Belongs> {
        if datagram.len() < MIN_FIRST_MESSAGE_LEN {
            return None;
        }
        let range = self.outer.open(datagram, b"", &mut self.scratch)?;
        let msg1_nonce: [u8; 24] = datagram.get(..24)?.try_into().ok()?;
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let now_ms = self.config.clock.unix_ms(now);
        let skew = self.config.max_clock_skew.as_millis() as u64;
        // Neither a stale message nor a replay costs the Diffie-Hellman
        // work of reading it. The outer clock says when the message was
        // made, and the client's ephemeral key opens the Noise message in
        // clear: a recorded first message sent again at line rate, by
        // anyone who saw it, costs a comparison or a filter lookup instead
        // of two X25519 operations, whenever it comes.
        if OuterTime::read(&self.scratch, &range).is_none_or(|t| t.abs_diff(now_ms) > skew) {
            self.stats.stale_handshakes += 1;
            return Some(Belongs::None);
        }
        let cookie = OuterTime::cookie(&self.scratch, &range);
        let noise = self.scratch.get(range.clone())?;
        self.replay.expire(now_ms);
        let eph = handshake::replay_key(noise);
        if eph.is_some_and(|e| self.replay.contains(&e)) {
            self.stats.replayed_handshakes += 1;
            return Some(Belongs::None);
        }
        // Rule 1, under load: within the budget of reads, or with the
        // cookie of its source address within that source's.
        let (v4, v6) = self.source_prefixes;
        match self.load.admit(now, peer, source_key(peer.ip(), v4, v6), &cookie, &mut *self.rng) {
            Admit::Read => {}
            Admit::SendCookie { remember } => {
                // Remembered, so that a replay of it (a censor's, from its
                // own address) gets silence, not a cookie reply nor, once
                // the load has passed, an answer; within a budget, so that
                // this loads the filter no more than reads do.
                if let Some(e) = eph.filter(|_| remember) {
                    self.replay.insert(&e);
                }
                self.send_cookie(now, peer, &msg1_nonce, datagram.len());
                return Some(Belongs::None);
            }
            Admit::Limited => {
                self.stats.rate_limited += 1;
                return Some(Belongs::None);
            }
        }
        let noise = self.scratch.get(range)?;
        self.stats.noise_reads += 1;
        let Some(init) = Responder::read(&self.config.key, seed, noise) else {
            self.stats.bad_handshakes += 1;
            return Some(Belongs::None);
        };
        let mut hello = Hello::default();
        for (kind, value) in handshake::fields(&init.payload) {
            match kind {
                field::TIME => hello.time = value.try_into().ok().map(u64::from_be_bytes),
                field::CONN_ID => hello.conn_id = value.try_into().ok(),
                // Not UTF-8: a name with U+FFFD in it, which no page's has
                // (names are ASCII, `-w NAME=`) and which is not the empty
                // name of the default page, so the answer says not found.
                field::PAGE => hello.page = Some(String::from_utf8_lossy(value).into_owned()),
                // Not UTF-8: empty, which no pattern allows.
                field::URL => hello.url = Some(std::str::from_utf8(value).unwrap_or_default().to_owned()),
                field::INNER => hello.inner = Some(value.to_vec()),
                field::RESUME => {
                    if let (Some(off), Some(sha)) = (value.get(..8), value.get(8..40)) {
                        let off = u64::from_be_bytes(off.try_into().ok()?);
                        hello.resume = sha.try_into().ok().map(|sha| (off, sha));
                    }
                }
                _ => {}
            }
        }
        let (Some(time), Some(conn_id), Some(inner)) = (hello.time, hello.conn_id, hello.inner) else {
            self.stats.bad_handshakes += 1;
            return Some(Belongs::None);
        };
        if time.abs_diff(now_ms) > skew {
            self.stats.stale_handshakes += 1;
            return Some(Belongs::None);
        }
        // Noise read the message, which is longer than that key: always
        // there, and were it not, a bad handshake.
        let Some(eph) = eph else {
            self.stats.bad_handshakes += 1;
            return Some(Belongs::None);
        };
        // Remembered, an unlisted client's message too: its replays then
        // cost a lookup, not a read. (A client outside the list loads the
        // filter no more than any holder of the bridge line can.)
        self.replay.insert(&eph);
        if self.config.allow_clients.as_ref().is_some_and(|allow| !allow.contains(&init.client)) {
            self.stats.unlisted_clients += 1;
            return Some(Belongs::None);
        }
        // An authenticated first message from a client we serve: the log
        // shows its inner SYN (a refused request's included).
        self.last_inner = Header::decode(&inner).ok().map(|(h, _)| h);
        let opening = Opening {
            peer,
            conn_id,
            responder: Box::new(init.responder),
            inner,
            msg1_len: datagram.len(),
            msg1_nonce,
            resume: hello.resume,
        };
        if self.by_client.contains_key(&(peer, conn_id)) {
            // Another attempt of a connection we have (its answer was lost):
            // its page is chosen already.
            return self.open(now, opening, PageChoice::Index(0), None);
        }
        if let Some(url) = hello.url {
            return Some(self.request_fetch(now, opening, url));
        }
        let name = hello.page.unwrap_or_default();
        let page = match self.config.page_names.iter().position(|n| *n == name) {
            // A proxy may serve no page of its own.
            _ if self.config.page_names.is_empty() => None,
            None if name.is_empty() => Some(0),
            found => found,
        };
        let Some(page) = page else {
            self.refuse(opening, Refusal::NotFound);
            return Some(Belongs::None);
        };
        self.open(now, opening, PageChoice::Index(page), None)
    }

    /// Whether a new connection from `peer` would pass the per-source and
    /// total limits.
    fn has_room(&self, peer: SocketAddr) -> bool {
        let source = source_key(peer.ip(), self.source_prefixes.0, self.source_prefixes.1);
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        from_source < self.max_per_source && self.virtuals.len() < self.max_connections
    }

    /// A first message that asked for a URL: handed to the driver, and
    /// answered when it has fetched the page (or given up).
    fn request_fetch(&mut self, now: Instant, opening: Opening, url: String) -> Belongs {
        if !self.config.fetch || url.is_empty() || url.len() > MAX_URL_LEN {
            self.refuse(opening, Refusal::NotAllowed);
            return Belongs::None;
        }
        let client = (opening.peer, opening.conn_id);
        if let Some(f) = self.fetching_by_client.get(&client).and_then(|id| self.fetching.get_mut(id)) {
            // The client sent its first message again while we fetch: the
            // newest attempt is answered (the client keeps its latest few).
            f.opening = opening;
            self.stats.fetch_repeats += 1;
            return Belongs::Repeat;
        }
        if !self.has_room(opening.peer) {
            // Authenticated: it learns why rather than waiting in vain.
            self.stats.refused += 1;
            self.refuse(opening, Refusal::Busy);
            return Belongs::None;
        }
        let source = source_key(opening.peer.ip(), self.source_prefixes.0, self.source_prefixes.1);
        let from_source = self.fetching_per_source.get(&source).copied().unwrap_or(0);
        if self.fetching.len() >= self.config.max_fetching || from_source >= self.config.max_fetching_per_source {
            self.refuse(opening, Refusal::Busy);
            return Belongs::None;
        }
        let id = self.next_fetch;
        self.next_fetch += 1;
        *self.fetching_per_source.entry(source).or_default() += 1;
        self.fetching_by_client.insert(client, id);
        self.fetching.insert(id, Fetching { opening, source });
        self.fetch_deadlines.push_back((crate::time::after(now, self.config.fetch_timeout), id));
        // Answered requests leave stale deadlines behind.
        if self.fetch_deadlines.len() > 2 * self.fetching.len() + 64 {
            let fetching = &self.fetching;
            self.fetch_deadlines.retain(|(_, id)| fetching.contains_key(id));
        }
        self.fetch_requests.push_back(FetchRequest { id, url, source });
        self.stats.fetch_requests += 1;
        Belongs::Connection
    }

    /// The server's public key (the bridge line's).
    pub fn public_key(&self) -> PublicKey {
        self.config.key.public()
    }

    /// The next URL to fetch, for the driver; answer each with
    /// [`fetch_done`](Self::fetch_done).
    pub fn poll_fetch(&mut self) -> Option<FetchRequest> {
        self.fetch_requests.pop_front()
    }

    /// Requests being fetched (or waiting to be taken).
    pub fn fetching_count(&self) -> usize {
        self.fetching.len()
    }

    fn take_fetching(&mut self, id: u64) -> Option<Fetching> {
        let f = self.fetching.remove(&id)?;
        let client = (f.opening.peer, f.opening.conn_id);
        if self.fetching_by_client.get(&client) == Some(&id) {
            self.fetching_by_client.remove(&client);
        }
        if let std::collections::hash_map::Entry::Occupied(mut n) = self.fetching_per_source.entry(f.source) {
            *n.get_mut() = n.get().saturating_sub(1);
            if *n.get() == 0 {
                n.remove();
            }
        }
        Some(f)
    }

    /// The driver's answer to request `id`: the page, which the client's
    /// connection then serves, or why not, which the client is told. An
    /// unknown or already answered `id` (timed out) is ignored.
    pub fn fetch_done(&mut self, now: Instant, id: u64, result: Result<FetchedPage, Refusal>) {
        let Some(f) = self.take_fetching(id) else { return };
        match result {
            Err(why) => self.refuse(f.opening, why),
            Ok(fetched) if self.has_room(f.opening.peer) => {
                let meta = fetched.meta.map(Arc::new);
                let _ = self.open(now, f.opening, PageChoice::Shared(fetched.body), meta);
            }
            Ok(_) => {
                self.stats.refused += 1;
                self.refuse(f.opening, Refusal::Busy);
            }
        }
        self.pump_events(now);
    }

    /// Refuses requests the driver has not answered in time.
    fn expire_fetches(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.fetch_deadlines.front() {
            if deadline > now {
                break;
            }
            self.fetch_deadlines.pop_front();
            if let Some(f) = self.take_fetching(id) {
                self.stats.fetch_timeouts += 1;
                self.refuse(f.opening, Refusal::Timeout);
            }
        }
    }

    /// Makes a connection of an authenticated first message (or adds an
    /// attempt to the one it has), then hands the inner SYN in.
    fn open(
        &mut self,
        now: Instant,
        opening: Opening,
        page: PageChoice,
        meta: Option<Arc<PageMeta>>,
    ) -> Option<Belongs> {
        let Opening { peer, conn_id, responder, inner, msg1_len, msg1_nonce, resume } = opening;
        let client = (peer, conn_id);
        let mut resumed = None;
        // The client has the first `offset` bytes of a page whose SHA-256
        // is `sha` (docs/PROTOCOL.md §9.6): if they are this page's, it is
        // served from there. A page in memory says so now, in the answer;
        // one still arriving, in its stream once it has reached `offset`.
        let fresh = !self.by_client.contains_key(&client);
        let page = match (page, resume) {
            (PageChoice::Shared(Body::Streaming(view)), resume) => {
                PageChoice::Shared(Body::Streaming(StreamView { resume, ..view }))
            }
            (PageChoice::Index(i), Some(prefix)) if fresh => resume_whole(self.inner.page_at(i), prefix, &mut resumed),
            (PageChoice::Shared(Body::Whole(p)), Some(prefix)) if fresh => resume_whole(p, prefix, &mut resumed),
            (page, _) => page,
        };
        let virt = match self.by_client.get(&client).copied() {
            Some(virt) => virt,
            None => {
                let source = source_key(peer.ip(), self.source_prefixes.0, self.source_prefixes.1);
                let from_source = self.per_source.get(&source).copied().unwrap_or(0);
                if from_source >= self.max_per_source || self.virtuals.len() >= self.max_connections {
                    self.stats.refused += 1;
                    return Some(Belongs::None);
                }
                while self.pending_count >= self.config.max_pending.max(1) {
                    let Some(oldest) = self.pending.pop_front() else { break };
                    if self.virtuals.get(&oldest).is_some_and(|v| v.confirmed.is_none()) {
                        self.stats.evicted += 1;
                        self.remove(oldest);
                    }
                }
                let virt = virtual_addr(self.next_virtual);
                self.next_virtual += 1;
                self.virtuals.insert(
                    virt,
                    Virtual {
                        attempts: Vec::new(),
                        confirmed: None,
                        client,
                        source,
                        meta,
                        resumed,
                        closed_until: None,
                    },
                );
                *self.per_source.entry(source).or_default() += 1;
                self.by_client.insert(client, virt);
                self.pending.push_back(virt);
                self.pending_count += 1;
                // Confirmed connections leave stale entries behind.
                if self.pending.len() > 2 * self.pending_count + 64 {
                    let virtuals = &self.virtuals;
                    self.pending.retain(|v| virtuals.get(v).is_some_and(|v| v.confirmed.is_none()));
                }
                virt
            }
        };
        let cid = self.rng.next_u64();
        let v = self.virtuals.get_mut(&virt)?;
        if v.attempts.len() >= MAX_ATTEMPTS {
            let old = v.attempts.remove(0);
            self.sessions.remove(&old);
        }
        v.attempts.push(cid);
        self.sessions.insert(
            cid,
            Session {
                virt,
                peer,
                phase: Phase::Pending(responder),
                keys: None,
                next_pn: 0,
                replay: ReplayWindow::default(),
                tokens_issued: 0,
                unproven: None,
                probes: [None; PROBES_KEPT],
                probe_queued: false,
                early_room: 0,
                msg1_len,
                msg1_nonce,
                pad: 0,
                pad_left: 0,
            },
        );
        self.stats.handshakes += 1;
        // The inner SYN (a first one, or the same SYN again for an attempt
        // after a lost answer: then the inner server repeats its SYN|ACK).
        Some(match page {
            PageChoice::Index(i) => self.inner.handle_for_page(now, virt, &inner, i),
            PageChoice::Shared(p) => self.inner.handle_with_page(now, virt, &inner, p),
        })
    }

    /// Answers a handshake with a refusal: the client is authenticated,
    /// so it learns why; the answer is no longer than the first message.
    fn refuse(&mut self, opening: Opening, why: Refusal) {
        let mut payload = Vec::new();
        let mut value = Vec::with_capacity(3);
        why.encode(&mut value);
        handshake::put_field(&mut payload, field::ERROR, &value);
        let Some((noise, _keys)) = opening.responder.answer(&payload) else { return };
        let mut d = Vec::new();
        let len = self.answer_len(noise.len(), opening.msg1_len);
        self.outer.seal(&mut *self.rng, &noise, &[], len, &opening.msg1_nonce, &mut d);
        self.outbox.push_back((opening.peer, d));
        self.stats.rejected += 1;
    }

    /// An answer's length, a refusal's too: at least [`ANSWER_LEN_MIN`] (or
    /// its natural length if longer), plus 0 to [`ANSWER_PAD_MAX`] bytes
    /// at random, never more than the first message's (no amplification;
    /// a first message is at least [`MIN_FIRST_MESSAGE_LEN`], more than
    /// any natural length that fits in it, META's room included).
    fn answer_len(&mut self, noise_len: usize, msg1_len: usize) -> usize {
        let natural = noise_len + OUTER_OVERHEAD;
        let pad = (self.rng.next_u32() as usize) % (ANSWER_PAD_MAX + 1);
        natural.max(ANSWER_LEN_MIN).saturating_add(pad).min(msg1_len).max(natural)
    }

    /// Frees a connection's secure state and, if still there, its inner
    /// connection.
    fn remove(&mut self, virt: SocketAddr) {
        let Some(v) = self.virtuals.remove(&virt) else { return };
        for cid in v.attempts {
            self.sessions.remove(&cid);
        }
        if v.confirmed.is_none() {
            self.pending_count = self.pending_count.saturating_sub(1);
        }
        if self.by_client.get(&v.client) == Some(&virt) {
            self.by_client.remove(&v.client);
        }
        if let std::collections::hash_map::Entry::Occupied(mut n) = self.per_source.entry(v.source) {
            *n.get_mut() = n.get().saturating_sub(1);
            if *n.get() == 0 {
                n.remove();
            }
        }
        self.inner.forget(virt);
    }

    /// Moves the inner server's events out, with real addresses, and keeps
    /// the books: a closed connection's keys stay for the TIME-WAIT.
    fn pump_events(&mut self, now: Instant) {
        while let Some(event) = self.inner.poll_event() {
            let real = |s: &Self, virt: SocketAddr| {
                s.virtuals
                    .get(&virt)
                    .and_then(|v| v.attempts.last())
                    .and_then(|c| s.sessions.get(c))
                    .map_or(virt, |s| s.peer)
            };
            match event {
                ServerEvent::Accepted { peer, mode } => {
                    self.events.push_back(ServerEvent::Accepted { peer: real(self, peer), mode });
                }
                ServerEvent::Closed { peer, reason, acked, retransmissions } => {
                    self.events.push_back(ServerEvent::Closed {
                        peer: real(self, peer),
                        reason,
                        acked,
                        retransmissions,
                    });
                    let confirmed = self.virtuals.get(&peer).is_some_and(|v| v.confirmed.is_some());
                    if confirmed && reason == crate::CloseReason::Completed {
                        let until = crate::time::after(now, self.inner_time_wait());
                        if let Some(v) = self.virtuals.get_mut(&peer) {
                            v.closed_until = Some(until);
                        }
                        self.closed.push_back((until, peer));
                        // Bounded like the inner TIME-WAIT records.
                        while self.closed.len() > 65_536 {
                            if let Some((_, oldest)) = self.closed.pop_front() {
                                self.remove(oldest);
                            }
                        }
                    } else {
                        self.remove(peer);
                    }
                }
            }
        }
    }

    fn inner_time_wait(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn expire_closed(&mut self, now: Instant) {
        while let Some(&(until, virt)) = self.closed.front() {
            if until > now {
                break;
            }
            self.closed.pop_front();
            if self.virtuals.get(&virt).is_some_and(|v| v.closed_until.is_some_and(|u| u <= now)) {
                self.remove(virt);
            }
        }
    }

    /// Pages handed over as streams grew or ended (docs/PROTOCOL.md §9.7):
    /// the connections serving them may send more. The driver calls it
    /// after its fetches append.
    pub fn streams_grew(&mut self, now: Instant) {
        self.inner.streams_grew(now);
        // Each growth tries every waiting early segment again: at most one
        // per unconfirmed handshake, each waiting at most until its client
        // confirms (half a round trip) or the handshake is forgotten.
        let sessions = &self.sessions;
        self.early_ready.extend(self.early_waiting.drain(..).filter(|c| answered(sessions, *c)));
        self.pump_events(now);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Replay entries go when their time is up, not only when the next
        // first message comes.
        self.replay.expire(self.config.clock.unix_ms(now));
        self.inner.handle_timeout(now);
        if let Some(p) = &mut self.plain {
            p.handle_timeout(now);
        }
        self.expire_closed(now);
        self.expire_fetches(now);
        self.pump_events(now);
    }

    /// The earliest deadline for [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let closed = self.closed.front().map(|&(t, _)| t);
        let fetch = self.fetch_deadlines.front().map(|&(t, _)| t);
        [self.inner.poll_timeout(), self.plain.as_ref().and_then(Server::poll_timeout), closed, fetch]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether a datagram is waiting.
    pub fn has_pending_transmit(&self) -> bool {
        !self.outbox.is_empty()
            || !self.probes.is_empty()
            || !self.early_ready.is_empty()
            || self.inner.has_pending_transmit()
            || self.plain.as_ref().is_some_and(Server::has_pending_transmit)
    }

    /// Appends the next datagram to `buf`; `None` (and `buf` unchanged)
    /// when nothing is waiting.
    pub fn poll_transmit_append(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let t = self.next_transmit(now, buf);
        self.last_sent = t;
        t
    }

    /// The inner header of the last datagram from
    /// [`poll_transmit_append`](Self::poll_transmit_append), if secure.
    pub fn last_inner_sent(&self) -> Option<Header> {
        self.last_sent.and_then(|t| t.inner)
    }

    /// Whether the last datagram from
    /// [`poll_transmit_append`](Self::poll_transmit_append) was plaintext.
    pub fn last_sent_was_plain(&self) -> bool {
        self.last_sent.is_some_and(|t| t.plain)
    }

    fn next_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((peer, d)) = self.outbox.pop_front() {
            buf.extend_from_slice(&d);
            return Some(Transmit { peer, len: d.len(), belongs: Belongs::None, inner: None, plain: false });
        }
        while let Some(cid) = self.probes.pop_front() {
            if let Some(t) = self.probe(cid, buf) {
                return Some(t);
            }
        }
        while let Some(cid) = self.early_ready.pop_front() {
            if let Some(t) = self.early(cid, buf) {
                return Some(t);
            }
        }
        self.plain_turn = !self.plain_turn;
        if self.plain_turn {
            if let Some(t) = self.poll_plain(now, buf) {
                return Some(t);
            }
        }
        let t = self.poll_secure(now, buf);
        self.pump_events(now);
        t.or_else(|| self.poll_plain(now, buf))
    }

    fn poll_plain(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let plain = self.plain.as_mut()?;
        let (peer, len) = plain.poll_transmit_append(now, buf)?;
        Some(Transmit { peer, len, belongs: plain.knows_kind(peer), inner: None, plain: true })
    }

    fn poll_secure(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let start = buf.len();
        let prefix = PN_LEN + packet::BODY_PREFIX;
        loop {
            buf.truncate(start);
            buf.resize(start + prefix, 0);
            let Some((virt, inner_len)) = self.inner.poll_transmit_append(now, buf) else {
                buf.truncate(start);
                return None;
            };
            let belongs = self.inner.knows_kind(virt);
            let inner_at = start + prefix;
            let header = buf.get(inner_at..).and_then(|d| Header::decode(d).ok()).map(|(h, _)| h);
            let Some(v) = self.virtuals.get(&virt) else { continue };
            if let Some(cid) = v.confirmed {
                let Some(t) = self.seal_data(cid, buf, start, inner_len, None) else { continue };
                return Some(Transmit { belongs, inner: header, ..t });
            }
            // Not confirmed: the inner datagram is the SYN|ACK, which goes
            // out inside the answer of the newest attempt that has none
            // yet. A SYN|ACK repeated on the inner timer is not sent: only
            // a first message (sent again) draws an answer, so nothing is
            // sent to an unverified address beyond one answer per message.
            let inner: Vec<u8> = buf.get(inner_at..).unwrap_or_default().to_vec();
            buf.truncate(start);
            let newest = v
                .attempts
                .iter()
                .rev()
                .copied()
                .find(|c| self.sessions.get(c).is_some_and(|s| matches!(s.phase, Phase::Pending(_))));
            let Some(cid) = newest else { continue };
            if let Some(t) = self.answer(cid, &inner, buf) {
                return Some(Transmit { belongs, inner: header, ..t });
            }
        }
    }

    /// The path probe owed to `cid`'s unproven address: a payload-free
    /// inner segment that draws the client's ACK at once, sealed like any
    /// datagram with the next token, which that ACK carries back (the
    /// client spends its newest token first); once the transfer has
    /// completed, its final ACK, so that a client that moved during its
    /// final exchange need not wait out its linger. Within three times what
    /// came from there; `None` when nothing is owed or it does not fit.
    fn probe(&mut self, cid: u64, buf: &mut Vec<u8>) -> Option<Transmit> {
        let session = self.sessions.get_mut(&cid)?;
        session.probe_queued = false;
        let u = session.unproven.as_ref()?;
        // Its length before sealing, so that nothing is sealed in vain.
        if !u.allows(SEALED_HEADER_MAX) {
            return None;
        }
        let header = self.inner.empty_ack(session.virt)?;
        let start = buf.len();
        buf.resize(start + PN_LEN + packet::BODY_PREFIX, 0);
        buf.extend_from_slice(&header.to_bytes());
        let Some(t) = self.seal_data(cid, buf, start, crate::wire::HEADER_LEN, None) else {
            buf.truncate(start);
            return None;
        };
        let session = self.sessions.get_mut(&cid)?;
        let serial = session.tokens_issued.checked_sub(1)?;
        let u = session.unproven.as_mut()?;
        u.probed(t.len);
        let to = u.addr;
        session.probes.rotate_right(1);
        if let Some(newest) = session.probes.first_mut() {
            *newest = Some((serial, to));
        }
        self.stats.path_probes += 1;
        Some(Transmit { peer: to, inner: Some(header), ..t })
    }

    /// The early segment of attempt `cid`, answered and not yet confirmed:
    /// the page's first bytes in what the first message's length leaves
    /// after the answer, so that the client has them half a round trip
    /// after the answer rather than after its own first sealed datagram
    /// has come back (docs/PROTOCOL.md §8.3). `None` when it is not to go
    /// now (waiting for a streamed page's bytes, or none to send).
    fn early(&mut self, cid: u64, buf: &mut Vec<u8>) -> Option<Transmit> {
        let session = self.sessions.get_mut(&cid)?;
        if !matches!(session.phase, Phase::Answered) {
            session.early_room = 0;
            return None;
        }
        // Its length before sealing, so that the answer and it together
        // stay within the first message.
        let room = session.early_room;
        // A little shorter at random, so that the answer's and its lengths
        // do not add up to a fixed distance below the first message's.
        let slack = (self.rng.next_u32() as usize) % (EARLY_SLACK_MAX + 1);
        let max_payload = room.checked_sub(SEALED_HEADER_MAX + slack).filter(|&m| m >= MIN_EARLY_PAYLOAD)?;
        let virt = session.virt;
        let start = buf.len();
        buf.resize(start + PN_LEN + packet::BODY_PREFIX, 0);
        let sent = self.inner.early_segment(virt, max_payload, buf);
        let EarlyData::Sent(header, n) = sent else {
            buf.truncate(start);
            match sent {
                EarlyData::Later => {
                    // Stale entries (sessions confirmed, forgotten or
                    // removed) go at each growth, and here once they could
                    // outnumber the handshakes that may be waiting.
                    if self.early_waiting.len() >= 2 * self.config.max_pending * MAX_ATTEMPTS + 64 {
                        let sessions = &self.sessions;
                        self.early_waiting.retain(|c| answered(sessions, *c));
                    }
                    self.early_waiting.push(cid);
                }
                _ => session.early_room = 0,
            }
            return None;
        };
        // Padded to its room less the slack whatever the page's length, so
        // that a short page's length does not show.
        let Some(t) = self.seal_data(cid, buf, start, crate::wire::HEADER_LEN + n, Some(room - slack)) else {
            buf.truncate(start);
            return None;
        };
        debug_assert!(t.len <= room, "early segment {} > room {room}", t.len);
        if let Some(session) = self.sessions.get_mut(&cid) {
            session.early_room = 0;
        }
        self.stats.early_segments += 1;
        Some(Transmit { inner: Some(header), ..t })
    }

    /// Writes the answer of attempt `cid` around the inner SYN|ACK.
    fn answer(&mut self, cid: u64, inner: &[u8], buf: &mut Vec<u8>) -> Option<Transmit> {
        let session = self.sessions.get_mut(&cid)?;
        let Phase::Pending(responder) = std::mem::replace(&mut session.phase, Phase::Answered) else { return None };
        let mut payload = Vec::with_capacity(inner.len() + 100);
        let mut tokens = Vec::with_capacity(TOKEN_LEN * WELCOME_TOKENS as usize);
        for serial in 0..WELCOME_TOKENS {
            tokens.extend_from_slice(&self.tokens.make(cid, serial));
        }
        session.tokens_issued = WELCOME_TOKENS;
        handshake::put_field(&mut payload, field::TOKENS, &tokens);
        handshake::put_field(&mut payload, field::INNER, inner);
        if let Some(offset) = self.virtuals.get(&session.virt).and_then(|v| v.resumed) {
            handshake::put_field(&mut payload, field::RESUME, &offset.to_be_bytes());
        }
        if let Some(meta) = self.virtuals.get(&session.virt).and_then(|v| v.meta.as_deref()) {
            // In what the first message leaves: never longer than it.
            let room = session.msg1_len.saturating_sub(OUTER_OVERHEAD + NOISE_MSG2_OVERHEAD + payload.len() + 3);
            let mut value = Vec::new();
            meta.encode(room, &mut value);
            if value.len() <= room {
                handshake::put_field(&mut payload, field::META, &value);
            }
        }
        let (noise, mut keys) = responder.answer(&payload)?;
        keys.material = None;
        session.keys = Some(keys);
        let (peer, msg1_len, ad) = (session.peer, session.msg1_len, session.msg1_nonce);
        // The rest of the first message's length is the early segment's
        // (never more in all: no amplification).
        let len = self.answer_len(noise.len(), msg1_len);
        let start = buf.len();
        self.outer.seal(&mut *self.rng, &noise, &[], len, &ad, buf);
        let sent = buf.len() - start;
        if let Some(session) = self.sessions.get_mut(&cid) {
            session.early_room = msg1_len.saturating_sub(sent);
            self.early_ready.push_back(cid);
        }
        Some(Transmit { peer, len: sent, belongs: Belongs::Connection, inner: None, plain: false })
    }

    /// Seals the inner datagram at `buf[start + PN_LEN + 3..]` for attempt
    /// `cid`, padded as its run is, or to `len` bytes in all when given
    /// (and at least the run's padding).
    fn seal_data(
        &mut self,
        cid: u64,
        buf: &mut Vec<u8>,
        start: usize,
        inner_len: usize,
        len: Option<usize>,
    ) -> Option<Transmit> {
        let session = self.sessions.get_mut(&cid)?;
        if session.pad_left == 0 {
            session.pad = PAD_MIN + (self.rng.next_u32() as usize) % (PAD_MAX - PAD_MIN + 1);
            session.pad_left = PAD_RUN;
        }
        session.pad_left -= 1;
        // Every datagram brings the client a fresh token (in room the
        // padding makes anyway): it sends one per datagram and may send as
        // many datagrams as it receives.
        let with_token = true;
        if let Some(slot) = buf.get_mut(start + PN_LEN..start + PN_LEN + packet::BODY_PREFIX) {
            slot.copy_from_slice(&packet::body_prefix_bytes(with_token, inner_len));
        }
        let mut pad = session.pad;
        if with_token {
            buf.extend_from_slice(&self.tokens.make(cid, session.tokens_issued));
            session.tokens_issued += 1;
            pad -= TOKEN_LEN;
        }
        let fill = len.map_or(0, |l| (start + l).saturating_sub(buf.len() + packet::TAG_LEN));
        buf.resize(buf.len() + pad.max(fill), 0);
        let keys = session.keys.as_ref()?;
        keys.send.seal(buf, start, PN_LEN, session.next_pn);
        session.next_pn += 1;
        Some(Transmit {
            peer: session.peer,
            len: buf.len() - start,
            belongs: Belongs::Connection,
            inner: None,
            plain: false,
        })
    }

    /// The next event, real addresses in it.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front().or_else(|| self.plain.as_mut().and_then(Server::poll_event))
    }

    /// The inner (secure) server's counters.
    pub fn stats(&self) -> ServerStats {
        self.inner.stats()
    }

    /// The plaintext server's counters, when plaintext is on.
    pub fn plain_stats(&self) -> Option<ServerStats> {
        self.plain.as_ref().map(Server::stats)
    }

    /// The secure layer's counters.
    pub fn secure_stats(&self) -> SecureStats {
        self.stats
    }

    /// Open connections, secure and plaintext.
    pub fn connection_count(&self) -> usize {
        self.inner.connection_count() + self.plain.as_ref().map_or(0, Server::connection_count)
    }

    /// Handshakes not yet confirmed, and plaintext half-open connections.
    pub fn half_open_count(&self) -> usize {
        self.pending_count + self.plain.as_ref().map_or(0, Server::half_open_count)
    }

    /// Secure state held: attempts (with their keys) and connections.
    pub fn session_count(&self) -> (usize, usize) {
        (self.sessions.len(), self.virtuals.len())
    }

    /// First messages remembered against replay (in the replay filter's
    /// two generations).
    pub fn replay_entries(&self) -> usize {
        usize::try_from(self.replay.entries()).unwrap_or(usize::MAX)
    }

    /// The estimated chance that a fresh first message is taken for a
    /// replay, from how full the replay filter is (near 0 but under a
    /// flood of first messages under our key).
    pub fn replay_false_positive_rate(&self) -> f64 {
        self.replay.false_positive_rate()
    }

    /// Starts draining: no new connections, secure or plaintext.
    pub fn stop_accepting(&mut self) {
        self.inner.stop_accepting();
        if let Some(p) = &mut self.plain {
            p.stop_accepting();
        }
        self.config.max_pending = 0;
        self.max_connections = 0;
    }

    /// Segments on every scoreboard, secure and plaintext.
    pub fn tracked_segments(&self) -> u64 {
        self.inner.tracked_segments() + self.plain.as_ref().map_or(0, Server::tracked_segments)
    }
}

#[derive(Default)]
struct Hello {
    time: Option<u64>,
    conn_id: Option<[u8; 8]>,
    page: Option<String>,
    url: Option<String>,
    inner: Option<Vec<u8>>,
    resume: Option<(u64, [u8; 32])>,
}

/// The natural length of an answer carrying `inner_len` bytes of inner
/// datagram, for tests and the client's padding.
pub const fn answer_len(inner_len: usize) -> usize {
    OUTER_OVERHEAD + NOISE_MSG2_OVERHEAD + 3 + TOKEN_LEN * WELCOME_TOKENS as usize + 3 + inner_len
}

const _: () = assert!(MIN_HANDSHAKE_LEN <= answer_len(0));

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::{SEALED_HEADER_MAX, Unproven, packet, virtual_addr};

    /// hashbrown picks a bucket from a hash's low bits: consecutive
    /// connection numbers must spread over them, or every lookup in
    /// `virtuals` walks past every connection. They fill 1,678 of 4,096
    /// (FxHash's own consecutive integers: 1,998); stored big-endian they
    /// filled 4.
    #[test]
    fn virtual_addresses_spread_over_the_buckets() {
        let fx = rustc_hash::FxBuildHasher;
        let buckets: HashSet<u64> = (0..4096).map(|n| fx.hash_one(virtual_addr(n)) & 4095).collect();
        assert!(buckets.len() > 1024, "{} of 4096 buckets used", buckets.len());
    }

    /// RFC 9000 §8.1: three times what came from the address, and not a
    /// byte more; the smallest client datagram pays for the largest probe.
    #[test]
    fn an_unproven_address_gets_at_most_three_times_what_it_sent() {
        let mut u = Unproven::new("192.0.2.1:9".parse().unwrap_or_else(|_| unreachable!()), 100, 7);
        assert!(u.allows(300) && !u.allows(301));
        u.probed(250);
        assert!(u.allows(50) && !u.allows(51));
        let probe = SEALED_HEADER_MAX;
        assert!(Unproven::new(u.addr, packet::C2S_OVERHEAD, 7).allows(probe), "a probe of {probe} bytes");
    }
}
