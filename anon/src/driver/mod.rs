//! The I/O drivers: they own the UDP socket and the clock, and move
//! datagrams and time between them and the sans-IO core.

pub mod client;
pub mod server;
pub mod udp;

/// Largest UDP payload: a receive buffer this large never truncates.
pub(crate) const MAX_DATAGRAM: usize = 65_535;

/// Sleeps until `deadline`, or forever without one (the other branches of
/// the driver's `select!` then decide).
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
