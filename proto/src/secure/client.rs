//! The secure-mode client: the plaintext core's [`ClientConn`] inside the
//! handshake and the sealed datagrams (docs/PROTOCOL.md §8). It never falls
//! back to a plaintext mode.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Instant;

use rand::RngCore;

use super::handshake::{self, COOKIE_LEN, Initiator, Outer, OuterTime, SessionKeys, field};
use super::keys::{PublicKey, StaticSecret};
use super::packet::{self, PN_LEN, ReplayWindow, TOKEN_LEN};
use super::proxy::PageMeta;
use super::{SECURE_MAX_SEGMENT, WallClock};
use crate::config::{ClientConfig, FastClient};
use crate::conn::{ClientConn, ClientEvent, ClientStats, ConnectionError, Mode, Refusal};
use crate::page::{STREAMED, StreamEnd, TRAILER_LEN};
use crate::wire::ext::Answer;
use crate::wire::{Flags, Header};

/// Secure-mode settings of a client.
#[derive(Debug, Clone)]
pub struct SecureClientConfig {
    /// The server's static public key, from the bridge line.
    pub server: PublicKey,
    /// The client's static key, for a server that lists its clients; a
    /// fresh one for each run otherwise.
    pub key: Option<StaticSecret>,
    /// The page asked for; empty for the server's default.
    pub page: String,
    /// A URL for a proxy server to fetch and serve (docs/PROTOCOL.md §9),
    /// asked for instead of `page`.
    pub url: Option<String>,
    /// Resume: the client has the first `.0` bytes of the page whose
    /// SHA-256 is `.1`, and asks for the rest (docs/PROTOCOL.md §9.6).
    pub resume: Option<(u64, [u8; 32])>,
    /// The wall clock, for the first message's timestamp.
    pub clock: WallClock,
}

/// Counters of the secure layer of a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecureClientStats {
    /// First messages sent (one per inner SYN).
    pub initiations: u64,
    /// Datagrams that did not authenticate, dropped.
    pub not_ours: u64,
    /// Authenticated datagrams seen before, dropped.
    pub replayed: u64,
    /// Datagrams sent with a token used before (none fresh was left).
    pub token_reuses: u64,
    /// Fresh tokens received.
    pub tokens_received: u64,
    /// Cookies received from a server under load (docs/PROTOCOL.md §8.3,
    /// rule 1), each answered with a first message that carries it.
    pub cookies: u64,
}

/// One line for a key log (`ANON_KEYLOG`), from which the dissector
/// decodes a connection: `ANON_SECURE <c2s key> <c2s iv> <c2s hp> <s2c
/// key> <s2c iv> <s2c hp>`, in hex.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyLog(pub String);

impl std::fmt::Debug for KeyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLog(..)")
    }
}

impl Drop for KeyLog {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Fresh tokens kept at most.
const MAX_TOKENS: usize = 64;
/// Handshake attempts kept at most: a late answer to an earlier first
/// message still completes the handshake.
const MAX_ATTEMPTS: usize = 4;
/// Shortest and longest first message: the length is drawn between them
/// (and never below the natural length). One band for every request, a
/// page by name or a URL, so that the length does not tell them apart; at
/// least 1,200 bytes, as a QUIC Initial is padded to leave its answer room
/// (RFC 9000 §14.1), since the answer is never longer (and a proxy's
/// carries what the origin said); at most 1,232, the IPv6 minimum MTU less
/// the IPv6 and UDP headers, the bound of every secure datagram.
const MSG1_MIN: usize = 1200;
/// Longest first message (unless a URL makes it longer: see
/// [`MAX_REQUEST_URL_LEN`](super::proxy::MAX_REQUEST_URL_LEN)).
pub const MSG1_MAX: usize = 1232;
/// Largest padding of a client datagram.
const PAD_MAX: usize = 48;

/// A secure-mode client; drive it like [`ClientConn`].
pub struct SecureClient {
    conn: ClientConn,
    secure: SecureClientConfig,
    key: StaticSecret,
    outer: Outer,
    conn_id: [u8; 8],
    rng: Box<dyn RngCore + Send>,
    /// First messages out: their handshake states and outer nonces.
    attempts: VecDeque<(Initiator, [u8; handshake::OUTER_NONCE_LEN])>,
    keys: Option<SessionKeys>,
    key_log: Option<KeyLog>,
    tokens: VecDeque<[u8; TOKEN_LEN]>,
    last_token: [u8; TOKEN_LEN],
    next_pn: u64,
    replay: ReplayWindow,
    scratch: Vec<u8>,
    body: Vec<u8>,
    stats: SecureClientStats,
    last_inner_received: Option<Header>,
    last_inner_sent: Option<Header>,
    meta: Option<PageMeta>,
    resumed: Option<u64>,
    /// A streamed page's META length and META, once read and consumed.
    stream_head: Option<usize>,
    /// A streamed page's trailer, read when the stream ended.
    stream_end: Option<StreamEnd>,
    /// The outcome when the stream's trailer says the page was cut short.
    failed: Option<Result<(), ConnectionError>>,
    /// The inner SYN of our first messages, the server's cookie for our
    /// address once it sent one, and whether a first message carrying it
    /// is due.
    syn: Vec<u8>,
    cookie: Option<[u8; COOKIE_LEN]>,
    cookie_due: bool,
    cookie_retried: bool,
}

impl std::fmt::Debug for SecureClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureClient").field("conn", &self.conn).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl SecureClient {
    /// Starts a connection. `config` is the inner connection's: secure mode
    /// forces fast mode (segments within [`SECURE_MAX_SEGMENT`]) and turns
    /// the bare-SYN fallback off. `rng` draws every random choice (a CSPRNG
    /// outside tests).
    pub fn new(
        secure: SecureClientConfig,
        config: ClientConfig,
        mut rng: Box<dyn RngCore + Send>,
        now: Instant,
    ) -> Self {
        let fast = config.fast.unwrap_or_default();
        let fast = FastClient { max_segment: fast.max_segment.min(SECURE_MAX_SEGMENT), ..fast };
        let config = ClientConfig { fast: Some(fast), bare_syn_fallback: false, probe_when_silent: true, ..config };
        let key = secure.key.clone().unwrap_or_else(|| StaticSecret::generate(&mut *rng));
        let mut conn_id = [0u8; 8];
        rng.fill_bytes(&mut conn_id);
        let conn = ClientConn::new(config, rng.next_u32(), now);
        SecureClient {
            conn,
            outer: Outer::new(&secure.server),
            secure,
            key,
            conn_id,
            rng,
            attempts: VecDeque::new(),
            keys: None,
            key_log: None,
            tokens: VecDeque::new(),
            last_token: [0; TOKEN_LEN],
            next_pn: 0,
            replay: ReplayWindow::default(),
            scratch: Vec::new(),
            body: Vec::new(),
            stats: SecureClientStats::default(),
            last_inner_received: None,
            last_inner_sent: None,
            meta: None,
            resumed: None,
            stream_head: None,
            stream_end: None,
            failed: None,
            syn: Vec::new(),
            cookie: None,
            cookie_due: false,
            cookie_retried: false,
        }
    }

    /// Processes one datagram from the server.
    pub fn handle(&mut self, now: Instant, datagram: &[u8]) {
        self.last_inner_received = None;
        if self.keys.is_none() {
            self.handle_answer(now, datagram);
            return;
        }
        let Some(keys) = &self.keys else { return };
        let Some(pn) = keys.recv.open(datagram, PN_LEN, &mut self.body) else {
            self.stats.not_ours += 1;
            return;
        };
        if !self.replay.accept(pn) {
            self.stats.replayed += 1;
            return;
        }
        // The buffer is taken out for the call, so the inner datagram is
        // handed on where it was decrypted: no copy per datagram.
        let buf = std::mem::take(&mut self.body);
        if let Some(body) = packet::parse_body(&buf) {
            if let Some(t) = body.token {
                self.stats.tokens_received += 1;
                if self.tokens.len() >= MAX_TOKENS {
                    self.tokens.pop_front();
                }
                self.tokens.push_back(t);
            }
            self.last_inner_received = Header::decode(body.inner).ok().map(|(h, _)| h);
            self.conn.handle(now, body.inner);
        }
        self.body = buf;
        self.take_stream_head();
    }

    /// A streamed page starts with what the origin said (docs/PROTOCOL.md
    /// §9.7): read and consumed as soon as it is here, so that
    /// [`readable`](Self::readable) is the page alone.
    fn take_stream_head(&mut self) {
        if self.stream_head.is_some() || !self.streamed() {
            return;
        }
        let readable = self.conn.readable();
        let Some(&[hi, lo]) = readable.get(..2) else { return };
        let meta_end = 2 + usize::from(u16::from_be_bytes([hi, lo]));
        let len = meta_end + 8;
        let (Some(meta), Some(start)) = (readable.get(2..meta_end), readable.get(meta_end..len)) else { return };
        if !meta.is_empty() {
            self.meta = PageMeta::decode(meta);
        }
        let start = start.try_into().map_or(0, u64::from_be_bytes);
        self.conn.consume(len);
        self.stream_head = Some(len);
        // START is 0, or the resume point asked for: anything else would
        // put the page together wrong. A streamed page's start is START's
        // alone, whatever else the answer said.
        self.resumed = None;
        match self.secure.resume {
            _ if start == 0 => {}
            Some((offset, _)) if offset == start => self.resumed = Some(start),
            _ => self.conn.abort(ConnectionError::Rejected(Refusal::Failed)),
        }
    }

    /// The server's answer to one of our first messages: the outer layer
    /// names the attempt (its nonce is the answer's associated data).
    fn handle_answer(&mut self, now: Instant, datagram: &[u8]) {
        let found = (0..self.attempts.len()).rev().find_map(|i| {
            let (_, nonce) = self.attempts.get(i)?;
            self.outer.open(datagram, nonce, &mut self.scratch).map(|r| (i, r))
        });
        let Some((i, range)) = found else {
            self.stats.not_ours += 1;
            return;
        };
        // An empty Noise message: the server is under load and sends the
        // cookie of our address, which our next first message carries. Sent
        // again at once only for a new cookie in answer to our newest first
        // message, once per first message the inner SYN timer sends: forged
        // replies (a bridge-line holder on the path) cannot make us send
        // more than that, nor push out the attempt the server answers.
        if range.is_empty() {
            let cookie = handshake::cookie_at(&self.scratch, range.end);
            let newest = i + 1 == self.attempts.len();
            if newest && !self.cookie_retried && cookie != [0; COOKIE_LEN] && self.cookie != Some(cookie) {
                self.cookie = Some(cookie);
                self.cookie_due = self.conn.outcome().is_none();
                self.cookie_retried = true;
                self.stats.cookies += 1;
            }
            return;
        }
        let finished = match (self.attempts.remove(i), self.scratch.get(range)) {
            (Some((attempt, _)), Some(noise)) => attempt.finish(noise),
            _ => None,
        };
        let Some((payload, mut keys)) = finished else {
            self.stats.not_ours += 1;
            return;
        };
        self.attempts.clear();
        let mut inner = None;
        let mut refusal = None;
        for (kind, value) in handshake::fields(&payload) {
            match kind {
                field::TOKENS => {
                    for t in value.chunks_exact(TOKEN_LEN) {
                        if let Ok(t) = t.try_into() {
                            self.tokens.push_back(t);
                        }
                    }
                }
                field::INNER => inner = Some(value.to_vec()),
                field::ERROR => refusal = Some(Refusal::decode(value)),
                field::META => self.meta = PageMeta::decode(value),
                field::RESUME => {
                    self.resumed = value.try_into().ok().map(u64::from_be_bytes);
                }
                _ => {}
            }
        }
        if let Some(why) = refusal {
            self.conn.abort(ConnectionError::Rejected(why));
            return;
        }
        let Some(inner) = inner else {
            self.stats.not_ours += 1;
            return;
        };
        self.key_log = Some(key_log(&mut keys));
        self.keys = Some(keys);
        self.last_inner_received = Header::decode(&inner).ok().map(|(h, _)| h);
        self.conn.handle(now, &inner);
        // What the origin said is in the answer, or for a page that streams
        // at the stream's start. A server that does not fetch URLs (an
        // older one) answers with its own page: not the page asked for.
        if self.secure.url.is_some() && self.meta.is_none() && !self.streamed() {
            self.conn.abort(ConnectionError::Rejected(Refusal::NotAllowed));
        }
    }

    /// Writes the next datagram into `buf` (cleared first); false when
    /// there is nothing to send.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        if std::mem::take(&mut self.cookie_due) && self.keys.is_none() && !self.syn.is_empty() {
            buf.clear();
            let syn = std::mem::take(&mut self.syn);
            let sent = self.initiate(now, &syn, buf);
            self.syn = syn;
            if sent {
                self.last_inner_sent = Header::decode(&self.syn).ok().map(|(h, _)| h);
                return true;
            }
        }
        let mut inner = std::mem::take(&mut self.scratch);
        let sent = loop {
            if !self.conn.poll_transmit(now, &mut inner) {
                break false;
            }
            let Ok((header, _)) = Header::decode(&inner) else { continue };
            buf.clear();
            if header.flags.contains(Flags::SYN) && !header.flags.contains(Flags::ACK) {
                if self.keys.is_none() && self.initiate(now, &inner, buf) {
                    self.last_inner_sent = Some(header);
                    self.syn.clone_from(&inner);
                    self.cookie_retried = false;
                    break true;
                }
                continue;
            }
            if self.keys.is_some() {
                self.seal(&inner, buf);
                self.last_inner_sent = Some(header);
                break true;
            }
        };
        self.scratch = inner;
        sent
    }

    /// A first message carrying the inner SYN.
    fn initiate(&mut self, now: Instant, syn: &[u8], buf: &mut Vec<u8>) -> bool {
        let mut payload = Vec::with_capacity(syn.len() + 64);
        handshake::put_field(&mut payload, field::TIME, &self.secure.clock.unix_ms(now).to_be_bytes());
        handshake::put_field(&mut payload, field::CONN_ID, &self.conn_id);
        match &self.secure.url {
            Some(url) => handshake::put_field(&mut payload, field::URL, url.as_bytes()),
            None => handshake::put_field(&mut payload, field::PAGE, self.secure.page.as_bytes()),
        }
        if let Some((offset, sha)) = self.secure.resume {
            let mut value = offset.to_be_bytes().to_vec();
            value.extend_from_slice(&sha);
            handshake::put_field(&mut payload, field::RESUME, &value);
        }
        handshake::put_field(&mut payload, field::INNER, syn);
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let Some((attempt, noise)) = Initiator::start(&self.secure.server, &self.key, seed, &payload) else {
            return false;
        };
        if self.attempts.len() >= MAX_ATTEMPTS {
            self.attempts.pop_front();
        }
        // The outer clock, then the server's cookie for our address if it
        // sent one (rule 1).
        let mut trailer = OuterTime::encode(self.secure.clock.unix_ms(now)).to_vec();
        if let Some(cookie) = self.cookie {
            trailer.extend_from_slice(&cookie);
        }
        let natural = noise.len() + trailer.len() + handshake::OUTER_OVERHEAD;
        let len = natural.max(MSG1_MIN + (self.rng.next_u32() as usize) % (MSG1_MAX - MSG1_MIN + 1));
        let nonce = self.outer.seal(&mut *self.rng, &noise, &trailer, len, b"", buf);
        self.attempts.push_back((attempt, nonce));
        self.stats.initiations += 1;
        true
    }

    /// Seals an inner datagram: a fresh token while we have one, the newest
    /// first, so that an answer to a datagram the server sent to a new
    /// address carries a token first sent there, which proves the address
    /// (docs/PROTOCOL.md §8.4, "Address changes").
    fn seal(&mut self, inner: &[u8], buf: &mut Vec<u8>) {
        let Some(keys) = &self.keys else { return };
        let token = match self.tokens.pop_back() {
            Some(t) => t,
            None => {
                self.stats.token_reuses += 1;
                self.last_token
            }
        };
        self.last_token = token;
        buf.extend_from_slice(&token);
        buf.extend_from_slice(&[0; PN_LEN]);
        packet::body_prefix(buf, false, inner.len());
        buf.extend_from_slice(inner);
        let pad = (self.rng.next_u32() as usize) % (PAD_MAX + 1);
        buf.resize(buf.len() + pad, 0);
        keys.send.seal(buf, 0, TOKEN_LEN + PN_LEN, self.next_pn);
        self.next_pn += 1;
    }

    /// The key log line of this connection, once the handshake is done.
    pub fn key_log(&self) -> Option<&KeyLog> {
        self.key_log.as_ref()
    }

    /// Takes the key log line out (a driver takes it as soon as the
    /// handshake is done, writes it if asked to, and drops it: it is erased
    /// then, not kept for the connection's life).
    pub fn take_key_log(&mut self) -> Option<KeyLog> {
        self.key_log.take()
    }

    /// The inner header of the last datagram handled (if it authenticated).
    pub fn last_inner_received(&self) -> Option<Header> {
        self.last_inner_received
    }

    /// The inner header of the last datagram written by
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn last_inner_sent(&self) -> Option<Header> {
        self.last_inner_sent
    }

    /// The secure layer's counters.
    pub fn secure_stats(&self) -> SecureClientStats {
        self.stats
    }

    /// The client's static public key (for a server's allow list).
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// The inner connection, for what this wrapper does not repeat.
    pub fn conn(&self) -> &ClientConn {
        &self.conn
    }

    /// Where the transfer starts in the page, when the server resumed it:
    /// the page bytes that arrive follow the client's first `offset`, and
    /// the answer's digest (or the trailer's) is the whole page's.
    pub fn resumed_from(&self) -> Option<u64> {
        self.resumed
    }

    /// Whether where the page starts is known: at the answer, or for a
    /// streamed page once its head (META, START) has arrived.
    pub fn start_known(&self) -> bool {
        self.conn.answer().is_some() && (!self.streamed() || self.stream_head.is_some())
    }

    /// What the origin said of a page asked for by URL (from the answer).
    pub fn meta(&self) -> Option<&PageMeta> {
        self.meta.as_ref()
    }

    /// See [`ClientConn::poll_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// See [`ClientConn::handle_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
    }

    /// See [`ClientConn::abort`].
    pub fn abort(&mut self, error: ConnectionError) {
        self.conn.abort(error);
    }

    /// See [`ClientConn::poll_event`]. For a streamed page the trailer is
    /// read when the stream ends: `Finished` then counts the page alone,
    /// and a page cut short never finishes (the outcome says why).
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        let event = self.conn.poll_event()?;
        let ClientEvent::Finished { len } = event else { return Some(event) };
        if !self.streamed() {
            return Some(event);
        }
        let readable = self.conn.readable();
        let trailer = readable.len().checked_sub(TRAILER_LEN).and_then(|at| readable.get(at..));
        // A stream that ended before its head is whole has no page to save.
        let trailer = trailer.filter(|_| self.stream_head.is_some());
        let page_len = len.saturating_sub((self.stream_head.unwrap_or(0) + TRAILER_LEN) as u64);
        match trailer.and_then(StreamEnd::decode) {
            Some(StreamEnd::Failed(why)) => {
                self.failed = Some(Err(ConnectionError::Rejected(why)));
                self.stream_end = Some(StreamEnd::Failed(why));
                self.poll_event()
            }
            Some(end @ StreamEnd::Complete { .. }) => {
                self.stream_end = Some(end);
                Some(ClientEvent::Finished { len: page_len })
            }
            // No trailer: a length nothing matches, so the check fails.
            None => {
                self.stream_end = Some(StreamEnd::Complete { len: u64::MAX, sha256: [0; 32] });
                Some(ClientEvent::Finished { len: page_len })
            }
        }
    }

    /// Whether the page streams (docs/PROTOCOL.md §9.7).
    fn streamed(&self) -> bool {
        self.conn.answer().is_some_and(|a| a.page_len == STREAMED)
    }

    /// The length and SHA-256 the page must have: the answer's, or for a
    /// streamed page its trailer's, once it has ended.
    pub fn whole(&self) -> Option<(u64, [u8; 32])> {
        match (self.streamed(), self.stream_end) {
            (false, _) => self.conn.answer().map(|a| (a.page_len, a.page_sha256)),
            (true, Some(StreamEnd::Complete { len, sha256 })) => Some((len, sha256)),
            (true, _) => None,
        }
    }

    /// Page bytes received: a stream's, less its META and trailer.
    pub fn received(&self) -> u64 {
        let all = self.conn.received();
        if self.streamed() { all.saturating_sub((self.stream_head.unwrap_or(0) + TRAILER_LEN) as u64) } else { all }
    }

    /// See [`ClientConn::readable`]. A streamed page holds back its last
    /// [`TRAILER_LEN`] bytes (they may be the trailer), and everything
    /// until its META has been read.
    pub fn readable(&self) -> &[u8] {
        let readable = self.conn.readable();
        match (self.streamed(), self.stream_head) {
            (false, _) => readable,
            (true, None) => &[],
            (true, Some(_)) => readable.get(..readable.len().saturating_sub(TRAILER_LEN)).unwrap_or(&[]),
        }
    }

    /// See [`ClientConn::consume`].
    pub fn consume(&mut self, n: usize) {
        self.conn.consume(n);
    }

    /// See [`ClientConn::mode`].
    pub fn mode(&self) -> Mode {
        self.conn.mode()
    }

    /// See [`ClientConn::answer`].
    pub fn answer(&self) -> Option<&Answer> {
        self.conn.answer()
    }

    /// See [`ClientConn::is_finished`].
    pub fn is_finished(&self) -> bool {
        self.conn.is_finished()
    }

    /// See [`ClientConn::outcome`]; a streamed page cut short is an error
    /// even though its connection closed cleanly.
    pub fn outcome(&self) -> Option<&Result<(), ConnectionError>> {
        match (self.conn.outcome(), &self.failed) {
            (Some(Ok(())), Some(failed)) => Some(failed),
            (outcome, _) => outcome,
        }
    }

    /// See [`ClientConn::stats`].
    pub fn stats(&self) -> ClientStats {
        self.conn.stats()
    }
}

/// The key log line, taking the raw key material out of `keys` (it is
/// erased when dropped here).
fn key_log(keys: &mut SessionKeys) -> KeyLog {
    let mut line = String::from("ANON_SECURE");
    for m in keys.material.take().iter().flatten() {
        for part in [&m.key[..], &m.iv[..], &m.hp[..]] {
            line.push(' ');
            for b in part {
                let _ = write!(line, "{b:02x}");
            }
        }
    }
    KeyLog(line)
}
