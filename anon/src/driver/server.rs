//! The server's socket loop: one UDP socket, one endpoint, every client.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use anon_proto::{CloseReason, Server, ServerEvent, ServerStats};

use super::MAX_DATAGRAM;
use super::udp::{BatchSocket, display_addr};
use crate::packet_log::{Direction, PacketLog};

/// Receive batches taken from the socket, and sends, per wake-up before
/// the other side gets its turn (as quinn's work limiter does): a flood of
/// input cannot starve retransmissions, and a burst of timers cannot starve
/// the socket.
const RECV_BUDGET: usize = 64;
const SEND_BUDGET: usize = 256;
/// Bytes one GSO send carries at most (a UDP datagram's limit, with room).
const GSO_BYTES: usize = 60_000;

/// Serves until `shutdown` completes, then flushes the log and returns the
/// endpoint's counters.
pub async fn run(
    mut socket: BatchSocket,
    mut server: Server,
    mut log: PacketLog,
    shutdown: impl Future<Output = ()>,
) -> io::Result<ServerStats> {
    tokio::pin!(shutdown);
    let max_segments = socket.max_segments();
    let mut tx = Vec::with_capacity(MAX_DATAGRAM);
    let mut batch = Vec::with_capacity(GSO_BYTES);
    // A datagram taken from the endpoint (and logged) that did not fit the
    // last batch: it starts the next one.
    let mut held: Option<SocketAddr> = None;
    loop {
        let now = Instant::now();
        server.handle_timeout(now);
        for _ in 0..SEND_BUDGET {
            let dest = match held.take() {
                Some(dest) => dest,
                None => match server.poll_transmit(now, &mut tx) {
                    Some(dest) => {
                        log.record(now, Direction::Send, &tx);
                        dest
                    }
                    None => break,
                },
            };
            // GSO: more datagrams for the same peer, each as long as the
            // first; a shorter one ends the batch.
            batch.clear();
            batch.extend_from_slice(&tx);
            let size = tx.len();
            let mut count = 1;
            while count < max_segments && batch.len() + size <= GSO_BYTES {
                let Some(next) = server.poll_transmit(now, &mut tx) else { break };
                log.record(now, Direction::Send, &tx);
                if next != dest || tx.len() > size {
                    held = Some(next);
                    break;
                }
                batch.extend_from_slice(&tx);
                count += 1;
                if tx.len() < size {
                    break;
                }
            }
            let segment_size = (count > 1).then_some(size);
            if let Err(e) = socket.send(dest, &batch, segment_size).await {
                // The retransmission timer covers datagrams the kernel refused.
                tracing::debug!(peer = %display_addr(dest), "send failed: {e}");
            }
        }
        report_events(&mut server);
        log.flush_if_due(now);

        // Sends left over from the budget: come straight back after reading.
        let pending = (held.is_some() || server.has_pending_transmit()).then_some(now);
        let deadline = [server.poll_timeout(), log.flush_deadline(), pending].into_iter().flatten().min();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            ready = socket.readable() => {
                ready?;
                for _ in 0..RECV_BUDGET {
                    let now = Instant::now();
                    let got = socket.try_recv_batch(|from, datagram| {
                        log.record(now, Direction::Recv, datagram);
                        server.handle(now, from, datagram);
                    });
                    match got {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors from earlier sends and the like: the
                        // connection's timers deal with the peer.
                        Err(e) => tracing::debug!("receive error: {e}"),
                    }
                }
            }
            () = super::sleep_until(deadline) => {}
        }
    }
    log.flush();
    Ok(server.stats())
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
