//! The server's socket loop: one UDP socket, one endpoint, every client.

use std::io;
use std::net::SocketAddr;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use anon_proto::secure::SecureServer;
use anon_proto::{Belongs, CloseReason, Server, ServerEvent, ServerStats};

use super::metrics::{Reporter, SecureSnapshot, Shared, Snapshot};
use super::udp::{BatchSocket, display_addr};
use super::{MAX_DATAGRAM, StopSignals};
use crate::packet_log::{Direction, PacketLog, Shown};
use crate::proxy::service::{FetchResult, Fetches, Proxy};

/// Datagrams taken from the socket, and sends, per wake-up before
/// the other side gets its turn (as quinn's work limiter does): a flood of
/// input cannot starve retransmissions, and a burst of timers cannot starve
/// the socket.
const RECV_BUDGET: usize = 512;
const SEND_BUDGET: usize = 256;
/// Bytes one GSO send carries at most (a UDP datagram's limit, with room).
const GSO_BYTES: usize = 60_000;

/// How the socket loop stops and reports.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// After a stop signal, how long transfers in flight may go on (new
    /// connections are refused meanwhile); a second signal stops at once.
    pub grace: Duration,
    /// A counters line in the log this often (`None`: never).
    pub stats_interval: Option<Duration>,
    /// Where to publish counters for the metrics endpoint.
    pub metrics: Option<Shared>,
    /// After a turn that received datagrams, poll the socket this long
    /// before sleeping (zero: never).
    pub busy_poll: Duration,
}

/// How the log records one datagram: how it belongs, and what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// How it belongs (which rate limit applies).
    pub belongs: Belongs,
    /// What the line shows.
    pub shown: Shown,
}

/// What the socket loop drives: the plaintext [`Server`], or a
/// [`SecureServer`] (which may serve plaintext clients beside). The loop,
/// its GSO batching, busy polling, draining and reports are the same for
/// both; only what the log shows of a datagram differs.
pub trait Endpoint {
    /// Processes one datagram; says how the log records it.
    fn handle(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Logged;
    /// Appends the next datagram to `buf`: its destination, its length, and
    /// how the log records it, or `None` to ask
    /// [`knows_kind`](Self::knows_kind) once the batch is built (the
    /// plaintext server's way, kept as it was).
    fn poll_transmit_append(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<(SocketAddr, usize, Option<Logged>)>;
    /// How datagrams just sent to `peer` belong (for the `None` above).
    fn knows_kind(&self, peer: SocketAddr) -> Belongs;
    /// See [`Server::handle_timeout`].
    fn handle_timeout(&mut self, now: Instant);
    /// See [`Server::poll_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// See [`Server::has_pending_transmit`].
    fn has_pending_transmit(&self) -> bool;
    /// See [`Server::poll_event`].
    fn poll_event(&mut self) -> Option<ServerEvent>;
    /// See [`Server::stop_accepting`].
    fn stop_accepting(&mut self);
    /// Open connections, half-open ones included.
    fn connection_count(&self) -> usize;
    /// Connections whose handshake is incomplete.
    fn half_open_count(&self) -> usize;
    /// The transport's counters, over every connection.
    fn stats(&self) -> ServerStats;
    /// The secure layer's counters and gauges, in secure mode.
    fn secure(&self) -> Option<SecureSnapshot> {
        None
    }
    /// The requests for pages by URL, on a server that takes them.
    fn fetches(&mut self) -> Option<&mut dyn Fetches> {
        None
    }
}

impl Endpoint for Server {
    fn handle(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Logged {
        Logged { belongs: self.handle_kind(now, peer, datagram), shown: Shown::Raw }
    }
    fn poll_transmit_append(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<(SocketAddr, usize, Option<Logged>)> {
        Server::poll_transmit_append(self, now, buf).map(|(peer, len)| (peer, len, None))
    }
    fn knows_kind(&self, peer: SocketAddr) -> Belongs {
        Server::knows_kind(self, peer)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Server::handle_timeout(self, now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Server::poll_timeout(self)
    }
    fn has_pending_transmit(&self) -> bool {
        Server::has_pending_transmit(self)
    }
    fn poll_event(&mut self) -> Option<ServerEvent> {
        Server::poll_event(self)
    }
    fn stop_accepting(&mut self) {
        Server::stop_accepting(self);
    }
    fn connection_count(&self) -> usize {
        Server::connection_count(self)
    }
    fn half_open_count(&self) -> usize {
        Server::half_open_count(self)
    }
    fn stats(&self) -> ServerStats {
        Server::stats(self)
    }
}

/// What the log shows of a datagram of a secure server: the inner header
/// when there is one; a plaintext datagram as it is; otherwise nothing.
fn secure_shown(inner: Option<anon_proto::wire::Header>, plain: bool) -> Shown {
    match inner {
        Some(header) => Shown::Inner(header),
        None if plain => Shown::Raw,
        None => Shown::Opaque,
    }
}

impl Endpoint for SecureServer {
    fn handle(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> Logged {
        let belongs = self.handle_kind(now, peer, datagram);
        Logged { belongs, shown: secure_shown(self.last_inner(), self.last_was_plain()) }
    }
    fn poll_transmit_append(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<(SocketAddr, usize, Option<Logged>)> {
        let t = SecureServer::poll_transmit_append(self, now, buf)?;
        Some((t.peer, t.len, Some(Logged { belongs: t.belongs, shown: secure_shown(t.inner, t.plain) })))
    }
    fn knows_kind(&self, _: SocketAddr) -> Belongs {
        // Every datagram came with its own (above); never asked.
        Belongs::None
    }
    fn handle_timeout(&mut self, now: Instant) {
        SecureServer::handle_timeout(self, now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        SecureServer::poll_timeout(self)
    }
    fn has_pending_transmit(&self) -> bool {
        SecureServer::has_pending_transmit(self)
    }
    fn poll_event(&mut self) -> Option<ServerEvent> {
        SecureServer::poll_event(self)
    }
    fn stop_accepting(&mut self) {
        SecureServer::stop_accepting(self);
    }
    fn connection_count(&self) -> usize {
        SecureServer::connection_count(self)
    }
    fn half_open_count(&self) -> usize {
        SecureServer::half_open_count(self)
    }
    fn stats(&self) -> ServerStats {
        match self.plain_stats() {
            Some(plain) => add_stats(SecureServer::stats(self), plain),
            None => SecureServer::stats(self),
        }
    }
    fn fetches(&mut self) -> Option<&mut dyn Fetches> {
        Some(self)
    }
    fn secure(&self) -> Option<SecureSnapshot> {
        let (sessions, _) = self.session_count();
        Some(SecureSnapshot {
            stats: self.secure_stats(),
            sessions,
            replay_entries: self.replay_entries(),
            replay_false_positive_ppm: (self.replay_false_positive_rate() * 1e6) as u64,
        })
    }
}

/// The counters of the secure connections and of the plaintext ones beside
/// them, together. Every field is named, so that a new counter cannot be
/// left out silently.
fn add_stats(a: ServerStats, b: ServerStats) -> ServerStats {
    let ServerStats {
        datagrams_received,
        malformed,
        unexpected,
        refused_max_connections,
        refused_per_source,
        refused_draining,
        cookies_sent,
        cookies_accepted,
        refused_syn_flood,
        accepted,
        accepted_fast,
        completed,
        given_up,
        datagrams_sent,
        payload_bytes_sent,
        retransmissions,
        final_acks,
    } = a;
    ServerStats {
        datagrams_received: datagrams_received + b.datagrams_received,
        malformed: malformed + b.malformed,
        unexpected: unexpected + b.unexpected,
        refused_max_connections: refused_max_connections + b.refused_max_connections,
        refused_per_source: refused_per_source + b.refused_per_source,
        refused_draining: refused_draining + b.refused_draining,
        cookies_sent: cookies_sent + b.cookies_sent,
        cookies_accepted: cookies_accepted + b.cookies_accepted,
        refused_syn_flood: refused_syn_flood + b.refused_syn_flood,
        accepted: accepted + b.accepted,
        accepted_fast: accepted_fast + b.accepted_fast,
        completed: completed + b.completed,
        given_up: given_up + b.given_up,
        datagrams_sent: datagrams_sent + b.datagrams_sent,
        payload_bytes_sent: payload_bytes_sent + b.payload_bytes_sent,
        retransmissions: retransmissions + b.retransmissions,
        final_acks: final_acks + b.final_acks,
    }
}

/// A finished fetch of the proxy, if there is one; never without.
async fn next_fetch(proxy: &mut Option<Proxy>) -> FetchResult {
    match proxy {
        Some(p) => p.next_done().await,
        None => std::future::pending().await,
    }
}

/// Serves until a stop signal and the drain after it, then flushes the log
/// and returns the endpoint's counters. With `proxy`, pages asked for by
/// URL are fetched through it.
pub async fn run<E: Endpoint>(
    mut socket: BatchSocket,
    mut server: E,
    mut log: PacketLog,
    signals: &mut StopSignals,
    options: Options,
    mut proxy: Option<Proxy>,
) -> io::Result<ServerStats> {
    let mut reporter = Reporter::new(Instant::now(), options.stats_interval);
    let mut hangup = super::Hangup::register();
    // Set by the first stop signal: the end of the grace period.
    let mut draining: Option<Instant> = None;
    let mut tx = Transmitter::new();
    // The last turn received datagrams (see busy polling below), and the
    // backoff that keeps fruitless polling rare when traffic is sparse.
    let mut active = false;
    let mut spin = SpinBackoff::default();
    let mut next_turn = Instant::now();
    let mut turn_due = false;
    loop {
        let now = Instant::now();
        server.handle_timeout(now);
        if let (Some(p), Some(f)) = (proxy.as_mut(), server.fetches()) {
            while let Some(done) = p.poll_done() {
                p.finish(now, done, f);
            }
            p.take(now, f);
            p.handle_timeout(now, f);
        }
        tx.send(&socket, &mut server, &mut log, now).await;
        report_events(&mut server);
        log.flush_if_due(now);
        let mut snapshot = snapshot(&server, &log, draining.is_some());
        snapshot.proxy = proxy.as_ref().map(Proxy::stats);
        reporter.tick(now, &snapshot);
        if let Some(shared) = &options.metrics {
            *shared.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
        }
        if let Some(end) = draining {
            // Half-open connections carry no transfer yet: they do not hold
            // the stop up.
            let in_flight = snapshot.open.saturating_sub(snapshot.half_open);
            if in_flight == 0 {
                tracing::info!("every transfer in flight has ended");
                break;
            }
            if now >= end {
                tracing::warn!("grace period over: {in_flight} transfers cut short");
                break;
            }
        }

        // Sends left over from the budget: yield to the I/O driver (reads
        // get their turn) and come straight back; no timer, which tokio
        // would round up to a millisecond.
        let pending = tx.holds() || server.has_pending_transmit();
        let streams = proxy.as_ref().and_then(Proxy::poll_timeout);
        let deadline = [server.poll_timeout(), log.flush_deadline(), reporter.deadline(), draining, streams]
            .into_iter()
            .flatten()
            .min();
        // Busy polling: right after a turn with traffic, the next datagram
        // of a stop-and-wait exchange is tens of microseconds away on a
        // LAN; polling for it costs less than sleeping and waking up
        // through epoll (the largest cost of such a round trip). Only after
        // traffic, so an idle server sleeps at once, and never past a
        // deadline.
        let spin_until = (!pending && active && !options.busy_poll.is_zero() && spin.take_turn()).then(|| {
            let until = Instant::now() + options.busy_poll;
            deadline.map_or(until, |d| d.min(until))
        });
        let mut turned = false;
        if turn_due {
            // A server that never sleeps would starve the other tasks on
            // its thread (the metrics endpoint) and tokio's reactor, through
            // which signals come: they get a turn (epoll with no wait) every
            // REACTOR_TURN, after the last datagrams were answered above;
            // then the signals are looked at below.
            tokio::task::yield_now().await;
            turn_due = false;
            next_turn = Instant::now() + super::REACTOR_TURN;
            turned = true;
        } else if let Some(until) = spin_until {
            // Each poll a receive of its own: waiting for tokio's reactor
            // to report the datagram would cost an epoll call per round
            // trip, the very cost polling saves. The last goes through
            // tokio, which clears its readiness if stale, so that the wait
            // below does not wake for nothing.
            let got = loop {
                let now = Instant::now();
                let last = now >= until;
                let r = receive_all(&mut socket, &mut server, &mut log, last);
                if r.taken > 0 || last {
                    break r.moved > 0;
                }
                std::hint::spin_loop();
            };
            spin.result(got);
            active = got;
            if got {
                turn_due = Instant::now() >= next_turn;
                continue;
            }
        } else {
            active = false;
        }
        let wait = async {
            if pending {
                tokio::task::yield_now().await;
            } else if !turned {
                super::sleep_until(deadline).await;
            }
        };
        tokio::select! {
            biased;
            () = super::hangup(&mut hangup) => {
                tracing::info!("SIGHUP: reopening the packet log");
                log.reopen(Instant::now());
            }
            () = signals.recv() => {
                if draining.is_some() {
                    tracing::warn!("second stop signal: stopping now");
                    break;
                }
                server.stop_accepting();
                let open = server.connection_count().saturating_sub(server.half_open_count());
                if open > 0 && !options.grace.is_zero() {
                    tracing::info!(
                        "stopping: new connections refused; {open} in flight get up to {:?} (a second signal stops at once)",
                        options.grace
                    );
                }
                // The loop's checks end it: at once when nothing is open.
                draining = Some(Instant::now() + options.grace);
            }
            ready = socket.readable() => {
                ready?;
                active = receive_all(&mut socket, &mut server, &mut log, true).moved > 0;
            }
            done = next_fetch(&mut proxy) => {
                if let (Some(p), Some(f)) = (proxy.as_mut(), server.fetches()) {
                    p.finish(Instant::now(), done, f);
                }
            }
            () = wait => {}
        }
    }
    // What the last turn queued (the last client's final ACK, say) still
    // goes out.
    tx.send(&socket, &mut server, &mut log, Instant::now()).await;
    log.flush();
    let mut snapshot = snapshot(&server, &log, draining.is_some());
    snapshot.proxy = proxy.as_ref().map(Proxy::stats);
    reporter.last_word(&snapshot);
    super::metrics::log_counters(&snapshot, "stopped");
    Ok(server.stats())
}

/// What one receive loop took.
struct Received {
    /// Datagrams, and errors (each counts as one against the budget).
    taken: usize,
    /// Datagrams that moved a connection's exchange: only these keep busy
    /// polling on, so that strays and forgeries cannot keep the server
    /// from sleeping.
    moved: usize,
}

/// Receives batches and hands them to the server until the socket's queue
/// is empty or RECV_BUDGET datagrams are taken. Through tokio's readiness
/// (`via_tokio`), or with system calls whatever it says (busy polling).
fn receive_all<E: Endpoint>(
    socket: &mut BatchSocket,
    server: &mut E,
    log: &mut PacketLog,
    via_tokio: bool,
) -> Received {
    let mut r = Received { taken: 0, moved: 0 };
    while r.taken < RECV_BUDGET {
        let now = Instant::now();
        let mut moved = 0;
        let each = |from, datagram: &[u8]| {
            // Datagrams that belong to no connection (strays, forgeries,
            // SYNs answered with a cookie) are logged within a rate, so a
            // flood cannot fill the disk.
            let Logged { belongs, shown } = server.handle(now, from, datagram);
            moved += usize::from(belongs == Belongs::Connection);
            log.record_kind(now, Direction::Recv, datagram, belongs, shown);
        };
        let got = if via_tokio { socket.try_recv_batch(each) } else { socket.recv_batch_now(each) };
        r.moved += moved;
        match got {
            Ok(n) => {
                r.taken += n.max(1);
                if socket.drained() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // ICMP errors from earlier sends and the like: the
            // connection's timers deal with the peer.
            Err(e) => {
                tracing::debug!("receive error: {e}");
                r.taken += 1;
            }
        }
    }
    r
}

/// The counters and gauges the reporter and the metrics endpoint show.
fn snapshot(server: &impl Endpoint, log: &PacketLog, draining: bool) -> Snapshot {
    Snapshot {
        stats: server.stats(),
        open: server.connection_count(),
        half_open: server.half_open_count(),
        draining,
        log: log.stats(),
        secure: server.secure(),
        // The loop adds the proxy's, which it holds.
        proxy: None,
    }
}

/// When traffic is sparse, polling before sleeping finds nothing and only
/// burns CPU: after each fruitless poll the next ones are skipped for twice
/// as many wake-ups as before (up to 64), and a poll that finds a datagram
/// brings polling back at once. Stop-and-wait traffic on a LAN, where every
/// poll finds the next datagram, keeps it on.
#[derive(Debug, Default)]
struct SpinBackoff {
    skip: u32,
    backoff: u32,
}

impl SpinBackoff {
    /// Whether to poll this time.
    fn take_turn(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// What the poll found.
    fn result(&mut self, found: bool) {
        if found {
            self.backoff = 0;
        } else {
            self.backoff = (self.backoff * 2).clamp(1, 64);
            self.skip = self.backoff;
        }
    }
}

/// Builds GSO batches from the endpoint's datagrams and sends them.
#[derive(Debug)]
struct Transmitter {
    /// The endpoint writes datagrams straight into the batch: the page is
    /// copied once, from memory into the batch.
    batch: Vec<u8>,
    /// How the log records each datagram of the batch (`None`: as the
    /// endpoint knows the destination once the batch is built).
    notes: Vec<Option<Logged>>,
    /// A datagram taken from the endpoint that did not fit the last batch:
    /// it starts the next one (one copy per batch boundary, not per
    /// datagram).
    held: Option<(SocketAddr, Option<Logged>)>,
    held_buf: Vec<u8>,
}

impl Transmitter {
    fn new() -> Self {
        Transmitter {
            batch: Vec::with_capacity(GSO_BYTES + MAX_DATAGRAM),
            notes: Vec::with_capacity(64),
            held: None,
            held_buf: Vec::with_capacity(MAX_DATAGRAM),
        }
    }

    /// Whether a datagram waits for the next turn.
    fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// Up to SEND_BUDGET batches.
    async fn send(&mut self, socket: &BatchSocket, server: &mut impl Endpoint, log: &mut PacketLog, now: Instant) {
        let Transmitter { batch, notes, held, held_buf } = self;
        for _ in 0..SEND_BUDGET {
            batch.clear();
            notes.clear();
            let (dest, size, note) = match held.take() {
                Some((dest, note)) => {
                    batch.extend_from_slice(held_buf);
                    (dest, held_buf.len(), note)
                }
                None => match server.poll_transmit_append(now, batch) {
                    Some(first) => first,
                    None => break,
                },
            };
            notes.push(note);
            // GSO: more datagrams for the same peer, each as long as the
            // first; a shorter one ends the batch. quinn-udp may turn GSO
            // off after a failure, so the limit is read for every batch. (A
            // secure server keeps a connection's datagrams one length in
            // runs, so its batches stay whole too.)
            let max_segments = socket.max_segments();
            let mut count = 1;
            while count < max_segments && batch.len() + size <= GSO_BYTES {
                let end = batch.len();
                let Some((next, len, note)) = server.poll_transmit_append(now, batch) else { break };
                if next != dest || len > size {
                    held_buf.clear();
                    held_buf.extend_from_slice(batch.get(end..).unwrap_or_default());
                    batch.truncate(end);
                    *held = Some((next, note));
                    break;
                }
                notes.push(note);
                count += 1;
                if len < size {
                    break;
                }
            }
            let known = server.knows_kind(dest);
            send_batch(socket, log, now, Batch { dest, known, notes, contents: batch, size, count }).await;
        }
    }
}

/// One GSO batch: `count` datagrams of `size` bytes (the last may be
/// shorter) to `dest`, and how the log records each.
struct Batch<'a> {
    dest: SocketAddr,
    /// How the endpoint knows `dest` now, for datagrams without a note.
    known: Belongs,
    notes: &'a [Option<Logged>],
    contents: &'a [u8],
    size: usize,
    count: usize,
}

/// Sends one batch and logs each datagram that left. A GSO batch the kernel
/// refuses (no offload on the route, a segment over the MTU) is sent again
/// one datagram at a time; quinn-udp then stops batching for this socket.
async fn send_batch(socket: &BatchSocket, log: &mut PacketLog, now: Instant, b: Batch<'_>) {
    let Batch { dest, known, notes, contents, size, count } = b;
    let record = |log: &mut PacketLog, i: usize, datagram: &[u8]| {
        let Logged { belongs, shown } =
            notes.get(i).copied().flatten().unwrap_or(Logged { belongs: known, shown: Shown::Raw });
        log.record_kind(now, Direction::Send, datagram, belongs, shown);
    };
    let segment_size = (count > 1).then_some(size);
    let result = match socket.send(dest, contents, segment_size).await {
        Err(e) if count > 1 => {
            tracing::debug!(peer = %display_addr(dest), "GSO send failed ({e}); sending one by one");
            let mut last = Ok(());
            for (i, datagram) in contents.chunks(size.max(1)).enumerate() {
                last = socket.send(dest, datagram, None).await;
                if last.is_ok() {
                    record(log, i, datagram);
                }
            }
            return report_send_error(dest, last);
        }
        other => other,
    };
    if result.is_ok() {
        for (i, datagram) in contents.chunks(size.max(1)).enumerate() {
            record(log, i, datagram);
        }
    }
    report_send_error(dest, result);
}

fn report_send_error(dest: SocketAddr, result: io::Result<()>) {
    if let Err(e) = result {
        // The retransmission timers cover datagrams the kernel refused.
        tracing::debug!(peer = %display_addr(dest), "send failed: {e}");
    }
}

fn report_events(server: &mut impl Endpoint) {
    while let Some(event) = server.poll_event() {
        match event {
            ServerEvent::Accepted { peer, mode } => {
                tracing::debug!(peer = %display_addr(peer), ?mode, "connection accepted")
            }
            ServerEvent::Closed { peer, reason: CloseReason::Completed, acked, retransmissions } => {
                tracing::info!(peer = %display_addr(peer), bytes = acked, retransmissions, "transfer complete")
            }
            ServerEvent::Closed { peer, reason: CloseReason::IdleTimeout(after), acked, .. } => {
                tracing::warn!(peer = %display_addr(peer), bytes = acked, "client silent for {after:?}, connection given up")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SpinBackoff, receive_all};

    /// Busy polling stays on only for datagrams that move a connection:
    /// garbage is received and counted, but does not keep the server from
    /// sleeping; a SYN that opens a connection does.
    #[test]
    fn only_a_connections_datagrams_count_as_traffic() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("temporary folder");
            let mut log = crate::packet_log::PacketLog::open(&dir.path().join("log")).expect("log");
            let std = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            std.set_nonblocking(true).expect("non-blocking");
            let addr = std.local_addr().expect("address");
            let mut socket = super::BatchSocket::new(std).expect("socket");
            let mut server = anon_proto::Server::new(
                anon_proto::ServerConfig::default(),
                bytes::Bytes::from_static(b"page"),
                Box::new(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1)),
            );
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut receive = |datagrams: &[&[u8]]| {
                for d in datagrams {
                    peer.send_to(d, addr).expect("send");
                }
                let mut r = super::Received { taken: 0, moved: 0 };
                for _ in 0..1000 {
                    let got = receive_all(&mut socket, &mut server, &mut log, false);
                    r.taken += got.taken;
                    r.moved += got.moved;
                    if r.taken >= datagrams.len() {
                        break;
                    }
                    std::thread::yield_now();
                }
                (r.taken, r.moved)
            };
            let garbage: &[u8] = &[0xff; 40];
            assert_eq!(receive(&[garbage, &[1, 2, 3], garbage]), (3, 0));
            let mut syn = Vec::new();
            anon_proto::wire::Header::new(
                anon_proto::wire::Seq(7),
                anon_proto::wire::Seq(0),
                anon_proto::wire::Flags::SYN,
            )
            .encode(&[], &mut syn);
            assert_eq!(receive(&[&syn]), (1, 1));
        });
    }

    /// Sparse traffic: fruitless polls back off to one in 65 wake-ups; a
    /// poll that finds a datagram brings polling back at once.
    #[test]
    fn busy_polling_backs_off_when_it_finds_nothing() {
        let mut s = SpinBackoff::default();
        let mut polls = 0;
        for _ in 0..1000 {
            if s.take_turn() {
                polls += 1;
                s.result(false);
            }
        }
        assert!((15..=25).contains(&polls), "{polls} fruitless polls in 1000 wake-ups");
        while !s.take_turn() {}
        s.result(true);
        assert!((0..100).all(|_| {
            let t = s.take_turn();
            s.result(true);
            t
        }));
    }
}
