//! The packet log: one line per datagram sent or received (PROTOCOL.md §4).
//!
//! Lines go through a large buffer, flushed at least once a second and on
//! exit, so the log costs a formatted write per datagram, not a system call.
//! A write error is reported once and then logging stops: losing the log must
//! not stop a transfer.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anon_proto::wire::Header;

/// How often buffered lines reach the file, at the latest.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Direction of a logged datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We sent it.
    Send,
    /// We received it.
    Recv,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Direction::Send => "SEND",
            Direction::Recv => "RECV",
        }
    }
}

/// An append-only, buffered packet log.
#[derive(Debug)]
pub struct PacketLog {
    out: Option<BufWriter<File>>,
    /// When unflushed lines were first buffered.
    dirty_since: Option<Instant>,
}

impl PacketLog {
    /// Opens `path` for appending (never truncating), creating it if needed.
    pub fn open(path: &Path) -> io::Result<PacketLog> {
        let file = OpenOptions::new().append(true).create(true).open(path)?;
        Ok(PacketLog { out: Some(BufWriter::with_capacity(1 << 16, file)), dirty_since: None })
    }

    /// Logs the datagram if it has a header; datagrams too short to have one
    /// are not packets of the protocol and are not logged.
    pub fn record(&mut self, now: Instant, dir: Direction, datagram: &[u8]) {
        let Ok((header, _)) = Header::decode(datagram) else { return };
        self.record_header(now, dir, &header);
    }

    /// Logs one header.
    pub fn record_header(&mut self, now: Instant, dir: Direction, header: &Header) {
        let Some(out) = self.out.as_mut() else { return };
        if let Err(e) = writeln!(out, "{} {}", dir.word(), header.log_fields()) {
            self.fail(&e);
            return;
        }
        self.dirty_since.get_or_insert(now);
    }

    /// When the buffer must be flushed next, if it holds anything.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.dirty_since.map(|t| t + FLUSH_INTERVAL)
    }

    /// Flushes if the oldest buffered line is a second old.
    pub fn flush_if_due(&mut self, now: Instant) {
        if self.flush_deadline().is_some_and(|t| now >= t) {
            self.flush();
        }
    }

    /// Writes every buffered line to the file.
    pub fn flush(&mut self) {
        self.dirty_since = None;
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                self.fail(&e);
            }
        }
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::warn!("packet log write failed, logging stops: {e}");
        self.out = None;
        self.dirty_since = None;
    }
}

impl Drop for PacketLog {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anon_proto::wire::{Flags, Seq};

    #[test]
    fn appends_lines_in_protocol_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "earlier\n").unwrap();
        let now = Instant::now();
        let mut log = PacketLog::open(&path).unwrap();
        log.record_header(now, Direction::Send, &Header::new(Seq(100), Seq(12346), Flags::ACK | Flags::SYN));
        log.record(now, Direction::Recv, &Header::new(Seq(12346), Seq(101), Flags::ACK).to_bytes());
        log.record(now, Direction::Recv, b"short");
        assert_eq!(log.flush_deadline(), Some(now + FLUSH_INTERVAL));
        log.flush_if_due(now);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier\n");
        log.flush_if_due(now + FLUSH_INTERVAL);
        assert_eq!(log.flush_deadline(), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier\nSEND 100 12346 ACK SYN\nRECV 12346 101 ACK\n");
    }
}
