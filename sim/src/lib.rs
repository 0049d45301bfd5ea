//! A seeded, replayable simulated network for the sans-IO protocol core.
//!
//! One [`Server`] endpoint and any number of [`ClientConn`]s exchange
//! datagrams over a virtual link that loses, duplicates, delays and reorders
//! them, with a virtual clock: a run is a pure function of its seed and
//! settings, and takes milliseconds whatever the simulated time. Set
//! `ANON_SIM_SEED` to replay one seed of a test that loops over seeds.

mod network;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anon_proto::wire::Header;
use anon_proto::{ClientConfig, ClientConn, ConnectionError, Server, ServerConfig, ServerStats};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub use network::{Datagram, DropFilter, LinkConfig, Network};

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
pub struct SimClient {
    /// Its address.
    pub addr: SocketAddr,
    /// The connection under test.
    pub conn: ClientConn,
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
pub struct Sim {
    /// The virtual clock.
    pub now: Instant,
    /// Virtual time zero.
    pub start: Instant,
    /// The server under test.
    pub server: Server,
    /// The server's packet log.
    pub server_log: Vec<String>,
    /// The clients under test.
    pub clients: Vec<SimClient>,
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

impl Sim {
    /// Builds the scenario; every client's SYN is ready at time zero.
    pub fn new(setup: Setup) -> Sim {
        // Any real instant works as virtual time zero: only differences count.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(setup.seed ^ 0x9e37_79b9_7f4a_7c15);
        let client_isn = setup.client_isn.unwrap_or_else(|| rng.next_u32());
        let server_isn: Box<dyn RngCore + Send> = match setup.server_isn {
            Some(isn) => Box::new(FixedIsn(isn)),
            None => Box::new(StdRng::seed_from_u64(rng.next_u64())),
        };
        let page = Bytes::from(setup.page);
        let server = Server::new(setup.server, page, server_isn);
        let clients = (0..setup.clients)
            .map(|i| SimClient {
                addr: client_addr(i),
                conn: ClientConn::new(setup.client.clone(), client_isn.wrapping_add(i as u32), start),
                data: Vec::new(),
                log: Vec::new(),
                finished_at: None,
                closed_at: None,
                inbox: Vec::new(),
                wake_at: None,
                wakeups: 0,
            })
            .collect();
        Sim {
            now: start,
            start,
            server,
            server_log: Vec::new(),
            clients,
            net: Network::new(setup.link, StdRng::seed_from_u64(setup.seed)),
            trace: None,
            timestamps: false,
            client_wakeup: Duration::ZERO,
            buf: Vec::with_capacity(2048),
        }
    }

    /// The packet-log line for a datagram, prefixed with the virtual time
    /// when `timestamps` is set; `None` for a datagram without a header.
    fn log_line(&self, dir: &str, datagram: &[u8]) -> Option<String> {
        format_log_line(self.timestamps.then(|| self.now - self.start), dir, datagram)
    }

    fn record(trace: &mut Option<Vec<(SocketAddr, Header, usize)>>, from: SocketAddr, datagram: &[u8]) {
        if let (Some(trace), Ok((h, payload))) = (trace.as_mut(), Header::decode(datagram)) {
            trace.push((from, h, payload.len()));
        }
    }

    /// Moves every queued datagram from the endpoints onto the link.
    fn flush_transmits(&mut self) {
        let now = self.now;
        while let Some(to) = self.server.poll_transmit(now, &mut self.buf) {
            let line = self.log_line("SEND", &self.buf);
            self.server_log.extend(line);
            Self::record(&mut self.trace, SERVER_ADDR, &self.buf);
            self.net.send(now, SERVER_ADDR, to, &self.buf);
        }
        for i in 0..self.clients.len() {
            let Some(c) = self.clients.get_mut(i) else { continue };
            while c.conn.poll_transmit(now, &mut self.buf) {
                c.log.extend(format_log_line(self.timestamps.then(|| now - self.start), "SEND", &self.buf));
                Self::record(&mut self.trace, c.addr, &self.buf);
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
            while c.conn.poll_event().is_some() {}
        }
        while self.server.poll_event().is_some() {}
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
            while let Some(d) = self.net.pop_due(now) {
                let line = self.log_line("RECV", &d.bytes);
                if d.to == SERVER_ADDR {
                    self.server_log.extend(line);
                    self.server.handle(now, d.from, &d.bytes);
                } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == d.to) {
                    if self.client_wakeup.is_zero() {
                        c.log.extend(line);
                        c.conn.handle(now, &d.bytes);
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
                        c.log.extend(format_log_line(timestamps, "RECV", &d));
                        c.conn.handle(now, &d);
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

fn format_log_line(at: Option<Duration>, dir: &str, datagram: &[u8]) -> Option<String> {
    let (h, _) = Header::decode(datagram).ok()?;
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
