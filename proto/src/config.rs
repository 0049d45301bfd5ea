//! Tunables of both endpoints, with the defaults the programs use.

use std::time::Duration;

use crate::cc::Algorithm;
use crate::recovery::RtoConfig;
use crate::wire::ext;

/// How long a client keeps answering retransmitted FINs after its FIN|ACK
/// (PROTOCOL.md §3, like TCP's TIME-WAIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Four retransmission timeouts of the client's own estimate, within the
    /// given bounds: the server's first two retransmissions of a FIN whose
    /// FIN|ACK was lost come after one and three of its RTOs; one more is
    /// margin. The server's estimate can be well above the client's (a lost
    /// handshake ACK inflates its first sample), hence a floor of `min` (one
    /// second, the RFC 6298 initial RTO) plus one RTO, until the client has
    /// taken 32 RTT samples: by then the server, which samples every segment
    /// too, has converged, and the floor is the RTO's own minimum. In
    /// baseline mode, four of a bound on anonserver's RTO from what the
    /// client saw, where that is shorter (docs/PROTOCOL.md §3). A FIN sent
    /// again restarts it, up to `max` from the first FIN|ACK.
    Adaptive {
        /// Shortest linger.
        min: Duration,
        /// Longest linger.
        max: Duration,
    },
    /// Exactly this long.
    Fixed(Duration),
}

/// Bytes one segment on a sender's scoreboard is accounted at: its entry
/// (80 bytes), its transmission record (32), a loss-queue slot (8), times two
/// for the queues' spare capacity, rounded up.
pub const SEGMENT_COST: u64 = 256;

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
    /// New connections from one source beyond this many are refused, so one
    /// host cannot take every slot. High enough for a NAT in front of a
    /// whole site. A source is an IPv4 address within `source_prefix_v4` and
    /// an IPv6 address within `source_prefix_v6` bits: one host usually has
    /// a whole IPv6 /64 to draw addresses from.
    pub max_per_source: usize,
    /// Leading bits of an IPv4 address that make one source (32: the address).
    pub source_prefix_v4: u8,
    /// Leading bits of an IPv6 address that make one source (64: the /64).
    pub source_prefix_v6: u8,
    /// Memory the scoreboards of all connections together may take, in
    /// bytes (each segment in flight costs [`SEGMENT_COST`]). Once half of it
    /// is in use, a connection sends new segments only while its scoreboard
    /// is under an equal share of the other half: windows shrink under
    /// pressure, and the total stays within the budget.
    pub memory_budget: u64,
    /// Half-open connections (SYN received, handshake ACK not yet) kept at
    /// most; beyond this the server answers SYNs with stateless SYN cookies
    /// (docs/PROTOCOL.md §7), so a SYN flood cannot exhaust it.
    pub max_half_open: usize,
    /// Accept fast-mode offers (docs/PROTOCOL.md §6); when false, every
    /// client gets the baseline exchange.
    pub fast: bool,
    /// Congestion controller of fast-mode connections.
    pub congestion: Algorithm,
    /// Largest fast-mode segment payload the server sends.
    pub max_segment: u16,
    /// Largest receive window a fast-mode client is believed to have: bounds
    /// the per-connection scoreboard whatever the client claims.
    pub max_peer_window: u64,
    /// How long a completed fast-mode connection is remembered, so that a
    /// FIN|ACK sent again (the final ACK was lost) draws the final ACK again
    /// (TCP's TIME-WAIT, on the side that sent the first FIN). As long as
    /// the client's longest linger.
    pub time_wait: Duration,
    /// Completed connections remembered at most; the oldest is forgotten
    /// first (its client then lingers instead of exiting at once).
    pub max_time_wait: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            rto: RtoConfig::default(),
            idle_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            max_per_source: 1024,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            memory_budget: 256 << 20,
            max_half_open: 1024,
            fast: true,
            congestion: Algorithm::default(),
            max_segment: ext::DEFAULT_SEGMENT,
            max_peer_window: 16 << 20,
            time_wait: Duration::from_secs(10),
            max_time_wait: 65_536,
        }
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
    /// Fast mode to offer in the SYN, or `None` for the baseline exchange.
    pub fast: Option<FastClient>,
    /// After two unanswered offers, alternate with a bare SYN (a plain peer
    /// may drop long SYNs). Secure mode turns it off: it never falls back.
    pub bare_syn_fallback: bool,
    /// In fast mode, send the latest ACK again when the server has been
    /// silent for an RTO mid-transfer (backing off): after the client's
    /// address changed, the server learns the new one from it. Secure mode
    /// turns it on; plaintext modes keep the exchange as it is.
    pub probe_when_silent: bool,
}

/// What a client offers and how it acknowledges in fast mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastClient {
    /// Largest segment payload it accepts.
    pub max_segment: u16,
    /// Bytes it buffers beyond its cumulative acknowledgment: the bound on
    /// its reassembly memory.
    pub recv_window: u32,
    /// Acknowledge at least every this many in-order segments.
    pub ack_every: u32,
    /// Longest an in-order segment waits for its acknowledgment.
    pub max_ack_delay: Duration,
    /// ACKs that fall due while one receive batch is processed collapse into
    /// the latest (docs/PROTOCOL.md §6.3); `false` sends each of them, for
    /// measuring the difference.
    pub coalesce_acks: bool,
}

impl Default for FastClient {
    fn default() -> Self {
        FastClient {
            max_segment: ext::MAX_SEGMENT,
            recv_window: 8 << 20,
            ack_every: 2,
            max_ack_delay: Duration::from_millis(5),
            coalesce_acks: true,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            rto: RtoConfig::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            linger: Linger::Adaptive { min: Duration::from_secs(1), max: Duration::from_secs(10) },
            fast: Some(FastClient::default()),
            bare_syn_fallback: true,
            probe_when_silent: false,
        }
    }
}
