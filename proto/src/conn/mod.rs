//! Connection state machines: one per side, both sans-IO.
//!
//! - `client`: the client, which receives the page and acknowledges it.
//! - `server`: the server's handshake, then the transfer through its
//!   `sender`, then completion.
//! - `sender/`: the data sender both modes share (`mod.rs` composes the
//!   parts):
//!   - `scoreboard.rs`: segments between the cumulative acknowledgment and
//!     the next new one, their states, the SACK ranges, bytes in flight;
//!   - `loss.rs`: RACK (RFC 8985 §6), tail-loss probes (§7) and the RFC 6298
//!     retransmission timer;
//!   - `pacer.rs`: spacing at the congestion controller's pacing rate;
//!   - `rate.rs`: the delivery-rate sampler
//!     (draft-cheng-iccrg-delivery-rate-estimation) that feeds the
//!     controller.

mod client;
mod sender;
mod server;

use std::time::Duration;

pub use client::{ClientConn, ClientEvent, ClientStats};
pub(crate) use server::{Accepted, ServerConn, encode_syn_ack, negotiate};
pub use server::{CloseReason, ConnStats, Mode};

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
