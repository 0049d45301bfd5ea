//! Secure mode (docs/PROTOCOL.md §8): the page travels encrypted and
//! authenticated, every datagram looks like random bytes to anyone without
//! the server's public key, and the server says nothing to a datagram that
//! does not prove it holds that key.
//!
//! The transport inside is the one the plaintext fast mode uses: each
//! secure datagram carries a fast-mode datagram, sealed. This module only
//! adds what secrecy needs around it:
//!
//! - [`keys`]: static keys, key files, bridge lines, key derivation;
//! - [`handshake`]: Noise IK (through `snow`) inside an outer layer keyed by
//!   the server's public key, and the request fields it carries;
//! - [`packet`]: sealed data datagrams: packet numbers apart from page
//!   offsets, AES-256-GCM, header protection, connection tokens, padding and
//!   the replay window;
//! - `replay`: the first messages a server has seen, in memory fixed at
//!   start;
//! - `load`: the server under a flood of valid first messages: a budget of
//!   Noise reads, then cookies that prove a source address;
//! - [`server`] and [`client`]: the two ends, each wrapping the plaintext
//!   core's state machines;
//! - [`proxy`]: pages asked for by URL, which the server's driver fetches
//!   (docs/PROTOCOL.md §9).

pub mod client;
pub mod handshake;
pub mod keys;
pub(crate) mod load;
pub mod packet;
pub mod proxy;
pub(crate) mod replay;
pub mod server;

use std::time::Instant;

pub use client::{KeyLog, SecureClient, SecureClientConfig, SecureClientStats};
pub use keys::{Bridge, KeyError, PublicKey, StaticSecret, parse_allow_list};
pub use proxy::{FetchRequest, FetchedPage, PageMeta};
pub use server::{SecureServer, SecureServerConfig, SecureStats, Transmit};

/// Largest inner segment payload in secure mode: with the inner header
/// (12), the secure overhead (27) and the largest padding (32), a data
/// datagram is at most 1,231 bytes, within the IPv6 minimum MTU with IPv6
/// and UDP headers (1,280), as the plaintext default is.
pub const SECURE_MAX_SEGMENT: u16 = 1160;

/// The wall clock, injected: the core reads no clock. `unix_ms` was the
/// time (milliseconds since the Unix epoch) at `at`.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// A monotonic instant.
    pub at: Instant,
    /// The wall-clock time then.
    pub unix_ms: u64,
}

impl WallClock {
    /// The wall-clock time at `now`.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        if now >= self.at {
            self.unix_ms.saturating_add(now.duration_since(self.at).as_millis() as u64)
        } else {
            self.unix_ms.saturating_sub(self.at.duration_since(now).as_millis() as u64)
        }
    }
}
