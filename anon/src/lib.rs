//! Drivers and programs around the sans-IO core in `anon-proto`.
//!
//! # Layout
//!
//! - [`driver`]: the UDP socket loops, one for the server endpoint and one for
//!   a client connection. They own the socket and the clock and move
//!   datagrams between them and the core.
//! - [`fetch`]: downloads the page the server serves (http, https, file).
//! - [`files`]: files written whole or not at all (key files, `--headers`,
//!   `--continue`'s records).
//! - [`frontend`]: `anonclient --serve`, a browser's way through the tunnel.
//! - [`proxy`]: pages fetched on demand for secure-mode clients: policy, origin, cache.
//! - [`packet_log`]: the `SEND`/`RECV` log file (PROTOCOL.md §4).
//! - [`keys`]: secure mode's key files, allow lists and key log.
//! - [`cli`]: command lines of both programs, exit codes and error reporting.
//! - [`units`]: sizes and rates as people read them, for the programs' output.
//!
//! The binaries in `src/bin` only parse arguments and call [`cli`].

pub mod cli;
pub mod driver;
pub mod fetch;
pub mod files;
pub mod frontend;
pub mod keys;
pub mod packet_log;
pub mod proxy;
pub mod units;
