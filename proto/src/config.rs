//! Tunables of both endpoints, with the defaults the programs use.

use std::time::Duration;

use crate::recovery::RtoConfig;

/// How long a client keeps answering retransmitted FINs after its FIN|ACK
/// (PROTOCOL.md §3, like TCP's TIME-WAIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Four retransmission timeouts of the client's own estimate, within the
    /// given bounds: the server's first two retransmissions of a FIN whose
    /// FIN|ACK was lost come after one and three of its RTOs; one more is
    /// margin. The server's estimate can be well above the client's (a lost
    /// handshake ACK inflates its first sample), hence a floor of one
    /// second, the RFC 6298 initial RTO.
    Adaptive {
        /// Shortest linger.
        min: Duration,
        /// Longest linger.
        max: Duration,
    },
    /// Exactly this long.
    Fixed(Duration),
}

/// Settings of the server side.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Retransmission timer bounds.
    pub rto: RtoConfig,
    /// A connection whose client has sent nothing acceptable for this long is
    /// given up and freed.
    pub idle_timeout: Duration,
    /// New connections beyond this many are refused (their SYN is dropped).
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { rto: RtoConfig::default(), idle_timeout: Duration::from_secs(30), max_connections: 100_000 }
    }
}

/// Settings of the client side.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Retransmission timer bounds.
    pub rto: RtoConfig,
    /// Give up when the handshake has not completed after this long.
    pub connect_timeout: Duration,
    /// Give up when the server has sent nothing acceptable for this long.
    pub idle_timeout: Duration,
    /// TIME-WAIT after the FIN|ACK.
    pub linger: Linger,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            rto: RtoConfig::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            linger: Linger::Adaptive { min: Duration::from_secs(1), max: Duration::from_secs(10) },
        }
    }
}
