//! The server's socket loop: one UDP socket, one endpoint, every client.

use std::future::Future;
use std::io;
use std::time::Instant;

use anon_proto::{CloseReason, Server, ServerEvent, ServerStats};
use tokio::net::UdpSocket;

use super::MAX_DATAGRAM;
use super::udp::display_addr;
use crate::packet_log::{Direction, PacketLog};

/// Datagrams taken from the socket, and datagrams sent, per wake-up before
/// the other side gets its turn (as quinn's work limiter does): a flood of
/// input cannot starve retransmissions, and a burst of timers cannot starve
/// the socket.
const RECV_BUDGET: usize = 256;
const SEND_BUDGET: usize = 256;

/// Serves until `shutdown` completes, then flushes the log and returns the
/// endpoint's counters.
pub async fn run(
    socket: UdpSocket,
    mut server: Server,
    mut log: PacketLog,
    shutdown: impl Future<Output = ()>,
) -> io::Result<ServerStats> {
    tokio::pin!(shutdown);
    let mut rx = vec![0u8; MAX_DATAGRAM];
    let mut tx = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        let now = Instant::now();
        server.handle_timeout(now);
        for _ in 0..SEND_BUDGET {
            let Some(dest) = server.poll_transmit(now, &mut tx) else { break };
            log.record(now, Direction::Send, &tx);
            if let Err(e) = socket.send_to(&tx, dest).await {
                // The retransmission timer covers a datagram the kernel refused.
                tracing::debug!(peer = %display_addr(dest), "send failed: {e}");
            }
        }
        report_events(&mut server);
        log.flush_if_due(now);

        // Sends left over from the budget: come straight back after reading.
        let pending = server.has_pending_transmit().then_some(now);
        let deadline = [server.poll_timeout(), log.flush_deadline(), pending].into_iter().flatten().min();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            ready = socket.readable() => {
                ready?;
                for _ in 0..RECV_BUDGET {
                    match socket.try_recv_from(&mut rx) {
                        Ok((n, from)) => {
                            let now = Instant::now();
                            let datagram = rx.get(..n).unwrap_or_default();
                            log.record(now, Direction::Recv, datagram);
                            server.handle(now, from, datagram);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors from earlier sends and the like: the
                        // connection's timers deal with the peer.
                        Err(e) => tracing::debug!("receive error: {e}"),
                    }
                }
            }
            () = sleep => {}
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
