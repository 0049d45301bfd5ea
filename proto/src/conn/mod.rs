//! Connection state machines: one per side, both sans-IO.

mod client;
mod sender;
mod server;

use std::time::Duration;

pub use client::{ClientConn, ClientEvent, ClientStats};
pub use server::{CloseReason, ConnStats, Mode};
pub(crate) use server::{ServerConn, encode_syn_ack, negotiate};

/// Why a connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The server did not complete the handshake in time.
    #[error("no answer from the server within {0:?}")]
    ConnectTimeout(Duration),
    /// The peer sent nothing acceptable for too long.
    #[error("the peer went silent for {0:?}")]
    IdleTimeout(Duration),
    /// The server's port is closed (ICMP port unreachable).
    #[error("connection refused: nothing is listening on the server's port")]
    Refused,
}
