//! Wire codec: the header, its flags and sequence-number arithmetic.
//!
//! Everything here checks lengths before reading; nothing panics on any input.

pub mod ext;
mod header;
mod seq;

pub use header::{DecodeError, Flags, HEADER_LEN, Header, LogFields};
pub use seq::Seq;

/// Payload bytes per data segment in baseline mode (PROTOCOL.md §2).
pub const BASELINE_SEGMENT: usize = 512;
