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
    /// A secure-mode server completed the handshake and refused the request.
    #[error("the server refused the request: {0}")]
    Rejected(Refusal),
}

/// Why a secure-mode server refused a request (docs/PROTOCOL.md §8.3, the
/// ERROR field); the code travels encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No page of that name.
    #[error("no page of that name")]
    NotFound,
    /// The request is not allowed.
    #[error("not allowed")]
    NotAllowed,
    /// A code this version does not know.
    #[error("reason code {0}")]
    Other(u8),
}

impl Refusal {
    /// The code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Refusal::NotFound => 1,
            Refusal::NotAllowed => 2,
            Refusal::Other(c) => c,
        }
    }

    /// The refusal of a code on the wire.
    pub fn from_code(code: u8) -> Refusal {
        match code {
            1 => Refusal::NotFound,
            2 => Refusal::NotAllowed,
            c => Refusal::Other(c),
        }
    }
}
