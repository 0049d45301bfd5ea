//! The server's socket loop: one UDP socket, one endpoint, every client.

use std::io;
use std::net::SocketAddr;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use anon_proto::{Belongs, CloseReason, Server, ServerEvent, ServerStats};

use super::metrics::{Reporter, Shared, Snapshot};
use super::udp::{BatchSocket, display_addr};
use super::{MAX_DATAGRAM, StopSignals};
use crate::packet_log::{Direction, PacketLog};

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

/// Serves until a stop signal and the drain after it, then flushes the log
/// and returns the endpoint's counters.
pub async fn run(
    mut socket: BatchSocket,
    mut server: Server,
    mut log: PacketLog,
    signals: &mut StopSignals,
    options: Options,
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
    loop {
        let now = Instant::now();
        server.handle_timeout(now);
        tx.send(&socket, &mut server, &mut log, now).await;
        report_events(&mut server);
        log.flush_if_due(now);
        let snapshot = snapshot(&server, &log, draining.is_some());
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
        let deadline =
            [server.poll_timeout(), log.flush_deadline(), reporter.deadline(), draining].into_iter().flatten().min();
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
        let spin = &mut spin;
        let wait = async {
            if pending {
                tokio::task::yield_now().await;
                return;
            }
            if let Some(until) = spin_until {
                let mut got = socket.poll_readable();
                while !got && Instant::now() < until {
                    std::hint::spin_loop();
                    got = socket.poll_readable();
                }
                spin.result(got);
                if got {
                    // tokio learns of the readiness from its reactor: one
                    // turn of it (epoll with no wait), not a sleep.
                    tokio::task::yield_now().await;
                    return;
                }
            }
            super::sleep_until(deadline).await;
        };
        active = false;
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
                active = true;
                let mut taken = 0;
                while taken < RECV_BUDGET {
                    let now = Instant::now();
                    let got = socket.try_recv_batch(|from, datagram| {
                        // Datagrams that belong to no connection (strays,
                        // forgeries, SYNs answered with a cookie) are logged
                        // within a rate, so a flood cannot fill the disk.
                        match server.handle_kind(now, from, datagram) {
                            Belongs::Connection => log.record(now, Direction::Recv, datagram),
                            Belongs::Repeat => log.record_repeat(now, Direction::Recv, datagram),
                            Belongs::None => log.record_stray(now, Direction::Recv, datagram),
                        }
                    });
                    match got {
                        Ok(n) => {
                            taken += n.max(1);
                            if socket.drained() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors from earlier sends and the like: the
                        // connection's timers deal with the peer.
                        Err(e) => {
                            tracing::debug!("receive error: {e}");
                            taken += 1;
                        }
                    }
                }
            }
            () = wait => {}
        }
    }
    // What the last turn queued (the last client's final ACK, say) still
    // goes out.
    tx.send(&socket, &mut server, &mut log, Instant::now()).await;
    log.flush();
    let snapshot = snapshot(&server, &log, draining.is_some());
    reporter.last_word(&snapshot);
    super::metrics::log_counters(&server.stats(), server.connection_count(), "stopped");
    Ok(server.stats())
}

/// The counters and gauges the reporter and the metrics endpoint show.
fn snapshot(server: &Server, log: &PacketLog, draining: bool) -> Snapshot {
    Snapshot {
        stats: server.stats(),
        open: server.connection_count(),
        half_open: server.half_open_count(),
        draining,
        log: log.stats(),
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
    /// A datagram taken from the endpoint that did not fit the last batch:
    /// it starts the next one (one copy per batch boundary, not per
    /// datagram).
    held: Option<SocketAddr>,
    held_buf: Vec<u8>,
}

impl Transmitter {
    fn new() -> Self {
        Transmitter {
            batch: Vec::with_capacity(GSO_BYTES + MAX_DATAGRAM),
            held: None,
            held_buf: Vec::with_capacity(MAX_DATAGRAM),
        }
    }

    /// Whether a datagram waits for the next turn.
    fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// Up to SEND_BUDGET batches.
    async fn send(&mut self, socket: &BatchSocket, server: &mut Server, log: &mut PacketLog, now: Instant) {
        let Transmitter { batch, held, held_buf } = self;
        for _ in 0..SEND_BUDGET {
            batch.clear();
            let (dest, size) = match held.take() {
                Some(dest) => {
                    batch.extend_from_slice(held_buf);
                    (dest, held_buf.len())
                }
                None => match server.poll_transmit_append(now, batch) {
                    Some(first) => first,
                    None => break,
                },
            };
            // GSO: more datagrams for the same peer, each as long as the
            // first; a shorter one ends the batch. quinn-udp may turn GSO
            // off after a failure, so the limit is read for every batch.
            let max_segments = socket.max_segments();
            let mut count = 1;
            while count < max_segments && batch.len() + size <= GSO_BYTES {
                let end = batch.len();
                let Some((next, len)) = server.poll_transmit_append(now, batch) else { break };
                if next != dest || len > size {
                    held_buf.clear();
                    held_buf.extend_from_slice(batch.get(end..).unwrap_or_default());
                    batch.truncate(end);
                    *held = Some(next);
                    break;
                }
                count += 1;
                if len < size {
                    break;
                }
            }
            let known = server.knows_kind(dest);
            send_batch(socket, log, now, dest, known, batch, size, count).await;
        }
    }
}

/// Sends one batch of `count` datagrams of `size` bytes (the last may be
/// shorter) and logs each datagram that left. A GSO batch the kernel refuses
/// (no offload on the route, a segment over the MTU) is sent again one
/// datagram at a time; quinn-udp then stops batching for this socket.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn send_batch(
    socket: &BatchSocket,
    log: &mut PacketLog,
    now: Instant,
    dest: SocketAddr,
    known: Belongs,
    batch: &[u8],
    size: usize,
    count: usize,
) {
    let record = |log: &mut PacketLog, datagram: &[u8]| match known {
        Belongs::Connection => log.record(now, Direction::Send, datagram),
        Belongs::Repeat => log.record_repeat(now, Direction::Send, datagram),
        Belongs::None => log.record_stray(now, Direction::Send, datagram),
    };
    let segment_size = (count > 1).then_some(size);
    let result = match socket.send(dest, batch, segment_size).await {
        Err(e) if count > 1 => {
            tracing::debug!(peer = %display_addr(dest), "GSO send failed ({e}); sending one by one");
            let mut last = Ok(());
            for datagram in batch.chunks(size.max(1)) {
                last = socket.send(dest, datagram, None).await;
                if last.is_ok() {
                    record(log, datagram);
                }
            }
            return report_send_error(dest, last);
        }
        other => other,
    };
    if result.is_ok() {
        for datagram in batch.chunks(size.max(1)) {
            record(log, datagram);
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

fn report_events(server: &mut Server) {
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
    use super::SpinBackoff;

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
