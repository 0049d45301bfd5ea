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
pub(crate) use server::{Accepted, EarlyData, ServerConn, encode_syn_ack, negotiate};
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

/// Why a secure-mode server refused a request (docs/PROTOCOL.md §8.3 and
/// §9, the ERROR field); the code travels encrypted. The codes from 3 on
/// are a proxy's: the page asked for by URL could not be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No page of that name.
    #[error("no page of that name")]
    NotFound,
    /// The request is not allowed (a URL no `--fetch-allow` pattern
    /// matches, a private address, or a server that fetches nothing).
    #[error("not allowed")]
    NotAllowed,
    /// The origin could not be reached (name, connection or TLS).
    #[error("the origin could not be reached")]
    Unreachable,
    /// The origin did not deliver the page within the server's deadline.
    #[error("the origin timed out")]
    Timeout,
    /// The origin answered with this HTTP status, not a 2xx.
    #[error("the origin answered HTTP {0}")]
    Status(u16),
    /// The page is larger than the server accepts.
    #[error("the page is larger than the server accepts")]
    TooLarge,
    /// The server is fetching as much as it will at once; try again later.
    #[error("the server is busy fetching other pages")]
    Busy,
    /// The fetch failed otherwise (a malformed response, for one).
    #[error("the server could not fetch the page")]
    Failed,
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
            Refusal::Unreachable => 3,
            Refusal::Timeout => 4,
            Refusal::Status(_) => 5,
            Refusal::TooLarge => 6,
            Refusal::Busy => 7,
            Refusal::Failed => 8,
            Refusal::Other(c) => c,
        }
    }

    /// The ERROR field's value: the code, then for [`Refusal::Status`] the
    /// status (u16, big-endian).
    pub fn encode(self, out: &mut Vec<u8>) {
        out.push(self.code());
        if let Refusal::Status(status) = self {
            out.extend_from_slice(&status.to_be_bytes());
        }
    }

    /// The refusal an ERROR field's value carries; anything unknown or
    /// short is [`Refusal::Other`].
    pub fn decode(value: &[u8]) -> Refusal {
        let code = value.first().copied().unwrap_or(0);
        match code {
            1 => Refusal::NotFound,
            2 => Refusal::NotAllowed,
            3 => Refusal::Unreachable,
            4 => Refusal::Timeout,
            5 => match value.get(1..3) {
                Some(&[hi, lo]) => Refusal::Status(u16::from_be_bytes([hi, lo])),
                _ => Refusal::Other(code),
            },
            6 => Refusal::TooLarge,
            7 => Refusal::Busy,
            8 => Refusal::Failed,
            c => Refusal::Other(c),
        }
    }

    /// Whether the refusal is about fetching from the origin (the request
    /// itself was acceptable): the client's exit status tells them apart.
    pub fn is_origin_failure(self) -> bool {
        matches!(
            self,
            Refusal::Unreachable | Refusal::Timeout | Refusal::Status(_) | Refusal::TooLarge | Refusal::Failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn refusals_round_trip_and_junk_is_other() {
        let all = [
            Refusal::NotFound,
            Refusal::NotAllowed,
            Refusal::Unreachable,
            Refusal::Timeout,
            Refusal::Status(404),
            Refusal::Status(503),
            Refusal::TooLarge,
            Refusal::Busy,
            Refusal::Failed,
            Refusal::Other(200),
        ];
        for r in all {
            let mut v = Vec::new();
            r.encode(&mut v);
            assert_eq!(Refusal::decode(&v), r, "{v:?}");
        }
        assert_eq!(Refusal::decode(&[]), Refusal::Other(0));
        assert_eq!(Refusal::decode(&[5, 1]), Refusal::Other(5));
        assert!(Refusal::Status(404).is_origin_failure() && !Refusal::NotAllowed.is_origin_failure());
    }
}
