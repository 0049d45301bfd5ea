//! The sans-IO core of the anon transfer protocol.
//!
//! Nothing in this crate opens a socket or reads a clock: datagrams and the
//! current time go in, datagrams and the next timer deadline come out. The
//! drivers in the `anon` crate move them to and from a UDP socket; the
//! simulator in `anon-sim` moves them over a seeded, lossy virtual network.
//!
//! # Layout
//!
//! - [`wire`]: the 12-byte header, flags and wrapping sequence numbers.
//! - [`recovery`]: RTT estimation and the retransmission timeout (RFC 6298),
//!   and the range set the SACK scoreboard is kept in.
//! - [`cc`]: congestion control (BBR, CUBIC) behind one interface.
//! - [`conn`]: the client and server connection state machines, and the
//!   server's data sender (`conn/sender/`), built of parts that are read and
//!   tested alone: the scoreboard, loss detection (RACK-TLP and the RTO
//!   timer), the pacer and the delivery-rate sampler.
//! - [`secure`]: secure mode, which carries the same transport inside a
//!   Noise IK handshake and AEAD-sealed datagrams that look random.
//! - [`endpoint`]: the server endpoint, which routes datagrams to
//!   connections by source address and multiplexes their timers.
//! - [`page`]: the served page and its digest, shared by all connections.
//! - [`config`]: tunables and defaults.
//! - [`time`]: deadline arithmetic that cannot overflow.

pub mod cc;
pub mod config;
pub mod conn;
pub mod cookie;
pub mod endpoint;
pub mod page;
pub mod recovery;
pub mod secure;
pub mod time;
pub mod wire;

pub use config::{ClientConfig, FastClient, Linger, ServerConfig};
pub use conn::{ClientConn, ClientEvent, ClientStats, CloseReason, ConnectionError, Mode, Refusal};
pub use endpoint::{Belongs, Server, ServerEvent, ServerStats};
