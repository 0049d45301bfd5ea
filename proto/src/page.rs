//! The page a server serves: its bytes, shared by every connection, and
//! its SHA-256, announced to fast-mode clients.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// A page and its digest.
#[derive(Debug, Clone)]
pub struct Page {
    bytes: Bytes,
    sha256: [u8; 32],
}

impl Page {
    /// Wraps `bytes` (no copy) and computes its SHA-256 once.
    pub fn new(bytes: Bytes) -> Page {
        let sha256 = Sha256::digest(&bytes).into();
        Page { bytes, sha256 }
    }

    /// The content.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Its SHA-256.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// The page from `offset` on, for a resumed transfer: no copy, and the
    /// digest is still the whole page's, which the client checks its
    /// whole file against (docs/PROTOCOL.md §9.6).
    pub fn resumed_from(&self, offset: u64) -> Page {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.bytes.len());
        Page { bytes: self.bytes.slice(start..), sha256: self.sha256 }
    }

    /// Bytes `start..end`, or nothing if out of range.
    pub fn slice(&self, start: u64, end: u64) -> &[u8] {
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) => self.bytes.get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }
}
