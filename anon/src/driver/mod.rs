//! The I/O drivers: they own the UDP socket and the clock, and move
//! datagrams and time between them and the sans-IO core.

pub mod client;
pub mod server;
pub mod udp;

/// Largest UDP payload: a receive buffer this large never truncates.
pub(crate) const MAX_DATAGRAM: usize = 65_535;
