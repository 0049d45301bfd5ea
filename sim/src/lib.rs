//! A seeded, replayable simulated network for the sans-IO protocol core.
//!
//! One [`Server`] endpoint and any number of [`ClientConn`]s (or, in secure
//! mode, one [`SecureServer`] and [`SecureClient`]s) exchange
//! datagrams over a virtual link that loses, duplicates, delays and reorders
//! them, with a virtual clock: a run is a pure function of its seed and
//! settings, and takes milliseconds whatever the simulated time. Set
//! `ANON_SIM_SEED` to replay one seed of a test that loops over seeds.

mod network;
mod peers;
pub mod proxy;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anon_proto::secure::{SecureClient, SecureClientConfig, SecureServer, SecureServerConfig, StaticSecret, WallClock};
use anon_proto::wire::Header;
use anon_proto::{ClientConfig, ClientConn, ConnectionError, Server, ServerConfig, ServerStats};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub use network::{Datagram, DropFilter, LinkConfig, Network};
pub use peers::{SimEndpoint, SimPeer};

/// An ISN source that always yields the same number, for exact traces.
#[derive(Debug, Clone, Copy)]
pub struct FixedIsn(pub u32);

impl RngCore for FixedIsn {
    fn next_u32(&mut self) -> u32 {
        self.0
    }
    fn next_u64(&mut self) -> u64 {
        u64::from(self.0)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        dst.fill(0);
    }
}

/// The server's address in every simulation.
pub const SERVER_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 30000);

/// Address of client `i`.
pub fn client_addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::new(Ipv4Addr::from(0x0a01_0000 + (i >> 8 & 0xff) * 256 + (i & 0xff)).into(), 40000 + (i % 20000) as u16)
}

/// One simulated client: its connection, what it received and its log.
#[derive(Debug)]
pub struct SimClient<C = ClientConn> {
    /// Its address (a test may change it mid-run: NAT rebinding).
    pub addr: SocketAddr,
    /// The connection under test.
    pub conn: C,
    /// Page bytes taken from the connection, in order.
    pub data: Vec<u8>,
    /// Its packet log, as the driver would write it.
    pub log: Vec<String>,
    /// Virtual time at which the page was complete.
    pub finished_at: Option<Instant>,
    /// Virtual time at which the connection ended (the process would exit).
    pub closed_at: Option<Instant>,
    /// Datagrams arrived and waiting for the client's next wake-up.
    inbox: Vec<Vec<u8>>,
    wake_at: Option<Instant>,
    /// Receive batches handled (wake-ups with datagrams).
    pub wakeups: u64,
}

/// A whole simulated scenario.
#[derive(Debug)]
pub struct Sim<S = Server, C = ClientConn> {
    /// The virtual clock.
    pub now: Instant,
    /// Virtual time zero.
    pub start: Instant,
    /// The server under test.
    pub server: S,
    /// The server's packet log.
    pub server_log: Vec<String>,
    /// The clients under test.
    pub clients: Vec<SimClient<C>>,
    /// The link between them.
    pub net: Network,
    /// When set, every datagram offered to the link: sender, header and
    /// payload length.
    pub trace: Option<Vec<(SocketAddr, Header, usize)>>,
    /// Prefix log lines with the virtual time in seconds (for debugging).
    pub timestamps: bool,
    /// How long a client takes to wake up once a datagram has arrived; what
    /// arrives meanwhile is handled with it, as one receive batch (recvmmsg,
    /// GRO), before the client sends anything. Zero: every arrival instant is
    /// a batch of its own.
    pub client_wakeup: Duration,
    buf: Vec<u8>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Report {
    /// Virtual time from start to the last event.
    pub elapsed: Duration,
    /// Loop iterations used.
    pub steps: u64,
    /// Whether every client and the server finished before the limits.
    pub quiescent: bool,
    /// Each client's outcome.
    pub outcomes: Vec<Option<Result<(), ConnectionError>>>,
    /// The server's counters.
    pub server: ServerStats,
}

/// Everything a scenario is made of.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Drives the link and, unless fixed below, the ISNs.
    pub seed: u64,
    /// The link's impairments.
    pub link: LinkConfig,
    /// The page the server serves.
    pub page: Vec<u8>,
    /// Server settings.
    pub server: ServerConfig,
    /// The server's ISN for every connection; drawn from the seed if `None`.
    pub server_isn: Option<u32>,
    /// Client settings.
    pub client: ClientConfig,
    /// Number of clients, all connecting at time zero.
    pub clients: usize,
    /// Client `i` uses this plus `i`; drawn from the seed if `None`.
    pub client_isn: Option<u32>,
}

impl Setup {
    /// One client over `link` for `page`, default settings.
    pub fn new(seed: u64, link: LinkConfig, page: Vec<u8>) -> Setup {
        Setup {
            seed,
            link,
            page,
            server: ServerConfig::default(),
            server_isn: None,
            client: ClientConfig::default(),
            clients: 1,
            client_isn: None,
        }
    }
}

impl<C> SimClient<C> {
    /// A client at `addr` (for a test that builds its own connections, or
    /// starts one mid-run).
    pub fn new(addr: SocketAddr, conn: C) -> Self {
        SimClient {
            addr,
            conn,
            data: Vec::new(),
            log: Vec::new(),
            finished_at: None,
            closed_at: None,
            inbox: Vec::new(),
            wake_at: None,
            wakeups: 0,
        }
    }
}

/// The wall clock of every simulation's virtual time zero (2027-01-15).
pub const SIM_UNIX_MS: u64 = 1_800_000_000_000;

/// What a secure-mode scenario adds to a [`Setup`].
#[derive(Debug, Clone)]
pub struct SecureSetup {
    /// The server's static key.
    pub key: StaticSecret,
    /// Names of the pages (`Setup::page` is the first; `extra_pages` follow).
    pub names: Vec<String>,
    /// Further pages, after `Setup::page`.
    pub extra_pages: Vec<Vec<u8>>,
    /// The page every client asks for.
    pub ask: String,
    /// Also serve plaintext clients.
    pub plaintext: bool,
}

impl SecureSetup {
    /// A key drawn from `seed`, one page named "index", asked for by name.
    pub fn new(seed: u64) -> SecureSetup {
        let key = StaticSecret::generate(&mut StdRng::seed_from_u64(seed ^ 0x005e_c02e));
        SecureSetup { key, names: vec!["index".into()], extra_pages: Vec::new(), ask: "index".into(), plaintext: false }
    }
}

impl Sim {
    /// Builds the scenario; every client's SYN is ready at time zero.
    pub fn new(setup: Setup) -> Sim {
        let start = virtual_zero();
        let mut rng = StdRng::seed_from_u64(setup.seed ^ 0x9e37_79b9_7f4a_7c15);
        let client_isn = setup.client_isn.unwrap_or_else(|| rng.next_u32());
        let server_isn: Box<dyn RngCore + Send> = match setup.server_isn {
            Some(isn) => Box::new(FixedIsn(isn)),
            None => Box::new(StdRng::seed_from_u64(rng.next_u64())),
        };
        let page = Bytes::from(setup.page);
        let server = Server::new(setup.server, page, server_isn);
        let clients = (0..setup.clients)
            .map(|i| {
                let conn = ClientConn::new(setup.client.clone(), client_isn.wrapping_add(i as u32), start);
                SimClient::new(client_addr(i), conn)
            })
            .collect();
        Sim::assemble(start, server, clients, setup.link, setup.seed)
    }
}

impl Sim<SecureServer, SecureClient> {
    /// A secure-mode scenario: every random choice (keys, nonces, padding,
    /// ISNs) is drawn from the seed, so a run replays exactly.
    pub fn secure(setup: Setup, secure: SecureSetup) -> Self {
        let start = virtual_zero();
        let clock = WallClock { at: start, unix_ms: SIM_UNIX_MS };
        let mut rng = StdRng::seed_from_u64(setup.seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut pages = vec![Bytes::from(setup.page)];
        pages.extend(secure.extra_pages.into_iter().map(Bytes::from));
        let config = SecureServerConfig::new(secure.key.clone(), secure.names, clock);
        let plain = secure.plaintext.then(|| setup.server.clone());
        let server_rng = Box::new(StdRng::seed_from_u64(rng.next_u64()));
        let server = SecureServer::new(config, setup.server, pages, plain, server_rng);
        let clients = (0..setup.clients)
            .map(|i| {
                let config = SecureClientConfig {
                    server: secure.key.public(),
                    key: None,
                    page: secure.ask.clone(),
                    url: None,
                    resume: None,
                    clock,
                };
                let conn_rng = Box::new(StdRng::seed_from_u64(rng.next_u64()));
                SimClient::new(client_addr(i), SecureClient::new(config, setup.client.clone(), conn_rng, start))
            })
            .collect();
        Sim::assemble(start, server, clients, setup.link, setup.seed)
    }
}

/// Any real instant works as virtual time zero: only differences count.
pub(crate) fn virtual_zero() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

impl<S: SimEndpoint, C: SimPeer> Sim<S, C> {
    /// A scenario of these endpoints.
    pub fn assemble(start: Instant, server: S, clients: Vec<SimClient<C>>, link: LinkConfig, seed: u64) -> Self {
        Sim {
            now: start,
            start,
            server,
            server_log: Vec::new(),
            clients,
            net: Network::new(link, StdRng::seed_from_u64(seed)),
            trace: None,
            timestamps: false,
            client_wakeup: Duration::ZERO,
            buf: Vec::with_capacity(2048),
        }
    }

    fn record(
        trace: &mut Option<Vec<(SocketAddr, Header, usize)>>,
        from: SocketAddr,
        datagram: &[u8],
        h: Option<Header>,
    ) {
        if let (Some(trace), Some(h)) = (trace.as_mut(), h) {
            trace.push((from, h, datagram.len().saturating_sub(anon_proto::wire::HEADER_LEN)));
        }
    }

    /// Moves every queued datagram from the endpoints onto the link.
    fn flush_transmits(&mut self) {
        let now = self.now;
        let at = self.timestamps.then(|| now - self.start);
        while let Some(to) = self.server.poll_transmit(now, &mut self.buf) {
            let h = self.server.sent_header(&self.buf);
            self.server_log.extend(format_log_line(at, "SEND", h));
            Self::record(&mut self.trace, SERVER_ADDR, &self.buf, h);
            self.net.send(now, SERVER_ADDR, to, &self.buf);
        }
        for i in 0..self.clients.len() {
            let Some(c) = self.clients.get_mut(i) else { continue };
            while c.conn.poll_transmit(now, &mut self.buf) {
                let h = c.conn.sent_header(&self.buf);
                c.log.extend(format_log_line(at, "SEND", h));
                Self::record(&mut self.trace, c.addr, &self.buf, h);
                self.net.send(now, c.addr, SERVER_ADDR, &self.buf);
            }
            let readable = c.conn.readable();
            c.data.extend_from_slice(readable);
            let n = readable.len();
            c.conn.consume(n);
            if c.finished_at.is_none() && c.conn.is_finished() {
                c.finished_at = Some(now);
            }
            if c.closed_at.is_none() && c.conn.outcome().is_some() {
                c.closed_at = Some(now);
            }
            c.conn.drain_events();
        }
        self.server.drain_events();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.net.next_delivery();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        consider(self.server.poll_timeout());
        for c in &self.clients {
            consider(c.conn.poll_timeout());
            consider(c.wake_at);
        }
        next
    }

    /// Runs until nothing is left to do, or `max_time` of virtual time, or
    /// `max_steps` iterations.
    pub fn run(&mut self, max_time: Duration, max_steps: u64) -> Report {
        let mut steps = 0;
        let limit = self.start + max_time;
        loop {
            self.flush_transmits();
            let done = self.server.connection_count() == 0 && self.clients.iter().all(|c| c.conn.outcome().is_some());
            if done && self.net.in_flight() == 0 {
                break;
            }
            let Some(next) = self.next_deadline() else { break };
            if next > limit || steps >= max_steps {
                break;
            }
            steps += 1;
            self.now = self.now.max(next);
            let now = self.now;
            let at = self.timestamps.then(|| now - self.start);
            while let Some(d) = self.net.pop_due(now) {
                if d.to == SERVER_ADDR {
                    self.server.handle(now, d.from, &d.bytes);
                    let h = self.server.received_header(&d.bytes);
                    self.server_log.extend(format_log_line(at, "RECV", h));
                } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == d.to) {
                    if self.client_wakeup.is_zero() {
                        c.conn.handle(now, &d.bytes);
                        let h = c.conn.received_header(&d.bytes);
                        c.log.extend(format_log_line(at, "RECV", h));
                        c.wakeups += 1;
                    } else {
                        c.inbox.push(d.bytes);
                        c.wake_at.get_or_insert(now + self.client_wakeup);
                    }
                }
            }
            let timestamps = self.timestamps.then(|| now - self.start);
            for c in &mut self.clients {
                if c.wake_at.is_some_and(|t| t <= now) {
                    c.wake_at = None;
                    c.wakeups += 1;
                    for d in std::mem::take(&mut c.inbox) {
                        c.conn.handle(now, &d);
                        let h = c.conn.received_header(&d);
                        c.log.extend(format_log_line(timestamps, "RECV", h));
                    }
                }
            }
            self.server.handle_timeout(now);
            for c in &mut self.clients {
                if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                    c.conn.handle_timeout(now);
                }
            }
        }
        let quiescent = self.server.connection_count() == 0 && self.clients.iter().all(|c| c.conn.outcome().is_some());
        Report {
            elapsed: self.now - self.start,
            steps,
            quiescent,
            outcomes: self.clients.iter().map(|c| c.conn.outcome().cloned()).collect(),
            server: self.server.stats(),
        }
    }
}

/// The packet-log line for a datagram's header (the inner header in secure
/// mode), prefixed with the virtual time when `at` is set; `None` for a
/// datagram without one.
fn format_log_line(at: Option<Duration>, dir: &str, h: Option<Header>) -> Option<String> {
    let h = h?;
    Some(match at {
        Some(t) => format!("{:9.3} {dir} {}", t.as_secs_f64(), h.log_fields()),
        None => format!("{dir} {}", h.log_fields()),
    })
}

/// The seeds a test should run: `ANON_SIM_SEED` alone if set (to replay a
/// failure), else `0..count`.
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("ANON_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (0..count).collect(),
    }
}

/// A page of `len` bytes whose content depends on `seed`, so that a byte
/// delivered at the wrong offset is caught.
pub fn page(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(len as u64)).fill_bytes(&mut bytes);
    bytes
}
