//! The packet log: one line per datagram sent or received (PROTOCOL.md §4).
//!
//! The event loop only appends the 12-byte header of each datagram to a
//! batch; a writer thread formats the lines and writes them, so logging stays
//! off the critical path. Lines reach the file at least once a second and on
//! exit (both wait for the writer, so the file is complete when they return).
//! A write error is reported once and then logging stops: losing the log
//! must not stop a transfer.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anon_proto::wire::Header;

/// How often buffered lines reach the file, at the latest.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Records handed to the writer at once.
const BATCH: usize = 4096;
/// Batches in flight to the writer; beyond this the event loop waits (the
/// log loses nothing, and its memory stays bounded).
const QUEUE: usize = 16;

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

enum Msg {
    Records(Vec<(Direction, Header)>),
    /// Write everything out, then answer.
    Flush(SyncSender<()>),
}

/// An append-only packet log with a writer thread.
#[derive(Debug)]
pub struct PacketLog {
    batch: Vec<(Direction, Header)>,
    tx: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<()>>,
    /// When unflushed lines were first recorded.
    dirty_since: Option<Instant>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Records(r) => write!(f, "Records({})", r.len()),
            Msg::Flush(_) => f.write_str("Flush"),
        }
    }
}

fn write_loop(file: File, rx: Receiver<Msg>) {
    let mut out = Some(BufWriter::with_capacity(1 << 18, file));
    let fail = |out: &mut Option<BufWriter<File>>, e: io::Error| {
        tracing::warn!("packet log write failed, logging stops: {e}");
        *out = None;
    };
    for msg in rx {
        match msg {
            Msg::Records(records) => {
                let Some(w) = out.as_mut() else { continue };
                for (dir, header) in &records {
                    if let Err(e) = writeln!(w, "{} {}", dir.word(), header.log_fields()) {
                        fail(&mut out, e);
                        break;
                    }
                }
            }
            Msg::Flush(done) => {
                if let Some(w) = out.as_mut() {
                    if let Err(e) = w.flush() {
                        fail(&mut out, e);
                    }
                }
                let _ = done.send(());
            }
        }
    }
}

impl PacketLog {
    /// Opens `path` for appending (never truncating), creating it if needed,
    /// and starts its writer thread.
    pub fn open(path: &Path) -> io::Result<PacketLog> {
        let file = OpenOptions::new().append(true).create(true).open(path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new().name("packet-log".into()).spawn(move || write_loop(file, rx))?;
        Ok(PacketLog { batch: Vec::with_capacity(BATCH), tx: Some(tx), writer: Some(writer), dirty_since: None })
    }

    /// Logs the datagram if it has a header; datagrams too short to have one
    /// are not packets of the protocol and are not logged.
    pub fn record(&mut self, now: Instant, dir: Direction, datagram: &[u8]) {
        let Ok((header, _)) = Header::decode(datagram) else { return };
        self.record_header(now, dir, &header);
    }

    /// Logs one header.
    pub fn record_header(&mut self, now: Instant, dir: Direction, header: &Header) {
        if self.tx.is_none() {
            return;
        }
        self.batch.push((dir, *header));
        self.dirty_since.get_or_insert(now);
        if self.batch.len() >= BATCH {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let records = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Records(records)).is_err() {
                self.tx = None;
            }
        }
    }

    /// When the log must be flushed next, if it holds anything unwritten.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.dirty_since.map(|t| t + FLUSH_INTERVAL)
    }

    /// Flushes if the oldest unwritten line is a second old, without
    /// waiting for the writer (the event loop goes on meanwhile).
    pub fn flush_if_due(&mut self, now: Instant) {
        if self.flush_deadline().is_some_and(|t| now >= t) {
            self.request_flush(false);
        }
    }

    /// Writes every recorded line to the file, and waits until it is there.
    pub fn flush(&mut self) {
        self.request_flush(true);
    }

    fn request_flush(&mut self, wait: bool) {
        self.dirty_since = None;
        self.hand_over();
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if tx.send(Msg::Flush(done_tx)).is_ok() && wait {
            let _ = done_rx.recv();
        }
    }
}

impl Drop for PacketLog {
    fn drop(&mut self) {
        self.flush();
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
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
        // The periodic flush does not wait for the writer; an explicit one does.
        log.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier\nSEND 100 12346 ACK SYN\nRECV 12346 101 ACK\n");
    }
}
