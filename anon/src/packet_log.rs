//! The packet log: one line per datagram sent or received (PROTOCOL.md §4).
//!
//! The event loop only appends the 12-byte header of each datagram to a
//! batch; a writer thread formats the lines and writes them, so logging stays
//! off the critical path. Lines reach the file at least once a second and on
//! exit (both wait for the writer, so the file is complete when they return).
//! A write error is reported once and then logging stops: losing the log
//! must not stop a transfer.
//!
//! **A slow disk cannot stall transfers.** The queue to the writer is
//! bounded (16 batches of 4,096 lines) and the event loop never waits on
//! it: when the writer falls behind and the queue is full, the batch is
//! dropped and counted ([`LogStats::behind`]); the server reports the count
//! once per stats interval and in its metrics. While the disk keeps up,
//! every datagram is logged.
//!
//! **A flood cannot grow the log without bound.** Datagrams that belong to
//! no connection (strays, forgeries, SYNs answered with a cookie, and the
//! replies to them) go through [`PacketLog::record_stray`], which logs at
//! most [`STRAY_PER_SEC`] lines a second on average (bursts of
//! [`STRAY_BURST`]) and counts the rest ([`LogStats::stray`]).
//!
//! [`PacketLog::reopen`] (the server calls it on SIGHUP) makes the writer
//! reopen the path, so that logrotate can move the file away.
//!
//! **Secure mode** keeps the same line shape, `SEND|RECV <seq> <ack>
//! [flags]`, with the numbers of the fast-mode datagram sealed inside (the
//! inner header: byte sequence numbers of the page, as in plaintext fast
//! mode, not the secure layer's packet numbers, which no line shows). A
//! secure datagram with nothing to show (it did not authenticate: random
//! bytes, probes, forgeries, replays; or a refusal, whose answer carries no
//! inner datagram) gets no line, only a count ([`LogStats::opaque`]): its
//! bytes hold no header, and a line of noise would read like one.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anon_proto::Belongs;
use anon_proto::wire::{Flags, Header};

/// How often buffered lines reach the file, at the latest.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Records handed to the writer at once.
const BATCH: usize = 4096;
/// Batches in flight to the writer; beyond this batches are dropped and
/// counted, and the event loop goes on.
const QUEUE: usize = 16;
/// Lines a second, on average, for datagrams that belong to no connection.
pub const STRAY_PER_SEC: u64 = 200;
/// The largest burst of such lines.
pub const STRAY_BURST: u64 = 2_000;

/// Lines a second, on average, for repeats (see
/// [`PacketLog::record_repeat`]); ten times the strays' rate: an honest
/// connection's repeats are rare, and all of them fit.
pub const REPEAT_PER_SEC: u64 = 2_000;
/// The largest burst of such lines.
pub const REPEAT_BURST: u64 = 20_000;

/// A token bucket: `rate` tokens a second, at most `burst` held.
#[derive(Debug)]
struct Bucket {
    tokens: u64,
    refilled: Option<Instant>,
    token: Duration,
    burst: u64,
}

impl Bucket {
    fn new(rate: u64, burst: u64) -> Bucket {
        Bucket { tokens: burst, refilled: None, token: Duration::from_micros(1_000_000 / rate.max(1)), burst }
    }

    /// Takes a token if there is one. The clock advances by the time the
    /// whole tokens took, so that fractions are not lost between frequent
    /// calls.
    fn take(&mut self, now: Instant) -> bool {
        match self.refilled {
            None => self.refilled = Some(now),
            Some(t) => {
                let since = now.saturating_duration_since(t);
                let fresh = (since.as_micros() / self.token.as_micros().max(1)) as u64;
                if fresh > 0 {
                    self.tokens = (self.tokens + fresh).min(self.burst);
                    // Below the burst, fresh < burst: the product fits.
                    let advance = self.token.saturating_mul(u32::try_from(fresh).unwrap_or(u32::MAX));
                    self.refilled = Some(if self.tokens == self.burst { now } else { t + advance });
                }
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What the log could not write, since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Lines dropped because the writer was behind (a slow disk).
    pub behind: u64,
    /// Lines of datagrams that belong to no connection, left out beyond
    /// the stray rate.
    pub stray: u64,
    /// Lines of repeats (datagrams that fit a connection but change
    /// nothing, and the answers to them), left out beyond their rate.
    pub repeat: u64,
    /// Secure-mode datagrams with no header to show (see the module
    /// documentation): counted, never logged.
    pub opaque: u64,
}

/// What the log shows of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// A plaintext datagram: its own 12-byte header.
    Raw,
    /// A secure-mode datagram: the header of the datagram sealed inside.
    Inner(Header),
    /// A secure-mode datagram with nothing to show: counted, not logged.
    Opaque,
}

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
    /// Write everything out, then open the path again (after logrotate).
    Reopen,
}

/// An append-only packet log with a writer thread.
#[derive(Debug)]
pub struct PacketLog {
    batch: Vec<(Direction, Header)>,
    tx: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<()>>,
    /// When unflushed lines were first recorded.
    dirty_since: Option<Instant>,
    /// Lines of datagrams of no connection, and of repeats.
    strays: Bucket,
    repeats: Bucket,
    /// A reopen asked for and not yet handed to the writer (its queue was
    /// full): tried again at the next flush.
    reopen_pending: bool,
    stats: LogStats,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Records(r) => write!(f, "Records({})", r.len()),
            Msg::Flush(_) => f.write_str("Flush"),
            Msg::Reopen => f.write_str("Reopen"),
        }
    }
}

/// Where the writer writes: a file, or anything else in tests.
type Sink = Box<dyn Write + Send>;

/// Opens the log for appending, never truncating.
fn open_append(path: &Path) -> io::Result<Sink> {
    Ok(Box::new(OpenOptions::new().append(true).create(true).open(path)?))
}

/// One line as docs/PROTOCOL.md §4 has it (`SEND 100 12346 ACK SYN`),
/// the numbers by `itoa`: through `core::fmt` they were most of the log
/// thread's time, a few percent of each side's CPU at a gigabyte a second.
fn append_line(out: &mut Vec<u8>, dir: Direction, h: &Header) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(dir.word().as_bytes());
    out.push(b' ');
    out.extend_from_slice(n.format(h.seq.0).as_bytes());
    out.push(b' ');
    out.extend_from_slice(n.format(h.ack.0).as_bytes());
    for (flag, name) in [(Flags::ACK, " ACK"), (Flags::SYN, " SYN"), (Flags::FIN, " FIN")] {
        if h.flags.contains(flag) {
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.push(b'\n');
}

fn write_loop(sink: Sink, path: Option<std::path::PathBuf>, rx: Receiver<Msg>) {
    let mut out = Some(BufWriter::with_capacity(1 << 18, sink));
    let mut lines = Vec::new();
    let fail = |out: &mut Option<BufWriter<Sink>>, e: io::Error| {
        tracing::warn!("packet log write failed, logging stops: {e}");
        *out = None;
    };
    for msg in rx {
        match msg {
            Msg::Records(records) => {
                let Some(w) = out.as_mut() else { continue };
                lines.clear();
                for (dir, header) in &records {
                    append_line(&mut lines, *dir, header);
                }
                if let Err(e) = w.write_all(&lines) {
                    fail(&mut out, e);
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
            Msg::Reopen => {
                let Some(path) = &path else { continue };
                if let Some(w) = out.as_mut() {
                    if let Err(e) = w.flush() {
                        fail(&mut out, e);
                    }
                }
                // A log that failed is tried again: the operator may have
                // made room and rotated.
                match open_append(path) {
                    Ok(file) => {
                        out = Some(BufWriter::with_capacity(1 << 18, file));
                        tracing::info!("packet log reopened: {}", path.display());
                    }
                    Err(e) => tracing::warn!(
                        "cannot reopen the packet log {}: {e}; still writing the old one",
                        path.display()
                    ),
                }
            }
        }
    }
}

impl PacketLog {
    /// Opens `path` for appending (never truncating), creating it if needed,
    /// and starts its writer thread.
    pub fn open(path: &Path) -> io::Result<PacketLog> {
        let file = open_append(path)?;
        PacketLog::start(file, Some(path.to_path_buf()))
    }

    /// A log that writes to `sink` (tests: a slow disk).
    pub fn to_writer(sink: impl Write + Send + 'static) -> io::Result<PacketLog> {
        PacketLog::start(Box::new(sink), None)
    }

    fn start(sink: Sink, path: Option<std::path::PathBuf>) -> io::Result<PacketLog> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new().name("packet-log".into()).spawn(move || write_loop(sink, path, rx))?;
        Ok(PacketLog {
            batch: Vec::with_capacity(BATCH),
            tx: Some(tx),
            writer: Some(writer),
            dirty_since: None,
            strays: Bucket::new(STRAY_PER_SEC, STRAY_BURST),
            repeats: Bucket::new(REPEAT_PER_SEC, REPEAT_BURST),
            reopen_pending: false,
            stats: LogStats::default(),
        })
    }

    /// What could not be logged so far.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Logs a datagram that belongs to no connection, within the stray
    /// rate; beyond it the line is left out and counted.
    pub fn record_stray(&mut self, now: Instant, dir: Direction, datagram: &[u8]) {
        let Ok((header, _)) = Header::decode(datagram) else { return };
        self.record_stray_header(now, dir, &header);
    }

    fn record_stray_header(&mut self, now: Instant, dir: Direction, header: &Header) {
        if self.strays.take(now) {
            self.record_header(now, dir, header);
        } else {
            self.stats.stray += 1;
        }
    }

    fn record_repeat_header(&mut self, now: Instant, dir: Direction, header: &Header) {
        if self.repeats.take(now) {
            self.record_header(now, dir, header);
        } else {
            self.stats.repeat += 1;
        }
    }

    /// Logs a datagram as the endpoint says it belongs (a connection's in
    /// full, repeats and strays within their rates), showing what `shown`
    /// says: for a plaintext datagram ([`Shown::Raw`]) exactly what
    /// [`record`](Self::record), [`record_repeat`](Self::record_repeat) and
    /// [`record_stray`](Self::record_stray) do.
    pub fn record_kind(&mut self, now: Instant, dir: Direction, datagram: &[u8], belongs: Belongs, shown: Shown) {
        let header = match shown {
            Shown::Raw => match Header::decode(datagram) {
                Ok((header, _)) => header,
                Err(_) => return,
            },
            Shown::Inner(header) => header,
            Shown::Opaque => {
                self.stats.opaque += 1;
                return;
            }
        };
        match belongs {
            Belongs::Connection => self.record_header(now, dir, &header),
            Belongs::Repeat => self.record_repeat_header(now, dir, &header),
            Belongs::None => self.record_stray_header(now, dir, &header),
        }
    }

    /// Logs a datagram that fits a connection but changes nothing (a SYN
    /// again, an ACK of nothing new) or answers one, within a rate of its
    /// own: a flood of strays cannot crowd these out, and a connection
    /// that floods them cannot fill the disk.
    pub fn record_repeat(&mut self, now: Instant, dir: Direction, datagram: &[u8]) {
        let Ok((header, _)) = Header::decode(datagram) else { return };
        self.record_repeat_header(now, dir, &header);
    }

    /// Asks the writer to reopen the log's path (SIGHUP, after logrotate
    /// moved the file): lines recorded so far go to the old file. Never
    /// waits: behind a slow disk the request is retried at the next flush.
    pub fn reopen(&mut self, now: Instant) {
        self.hand_over();
        self.reopen_pending = true;
        self.try_reopen();
        if self.reopen_pending {
            self.dirty_since.get_or_insert(now);
        }
    }

    fn try_reopen(&mut self) {
        if !self.reopen_pending {
            return;
        }
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Reopen) {
            Ok(()) => self.reopen_pending = false,
            Err(mpsc::TrySendError::Full(_)) => {}
            Err(_) => self.tx = None,
        }
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
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Records(records)) {
            Ok(()) => {}
            // The writer is behind (a slow disk): drop, count, go on.
            Err(mpsc::TrySendError::Full(Msg::Records(lost))) => self.stats.behind += lost.len() as u64,
            Err(_) => self.tx = None,
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
            self.request_flush(Some(now));
        }
    }

    /// Writes every recorded line to the file, and waits until it is there.
    pub fn flush(&mut self) {
        self.request_flush(None);
    }

    /// Flushes; waits for the writer unless this is the periodic flush at
    /// `periodic`, which never waits.
    fn request_flush(&mut self, periodic: Option<Instant>) {
        self.dirty_since = None;
        self.hand_over();
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        match periodic {
            None => {
                // On exit and in tests: everything must reach the file.
                if self.reopen_pending {
                    if let Some(tx) = &self.tx {
                        let _ = tx.send(Msg::Reopen);
                    }
                    self.reopen_pending = false;
                }
                let Some(tx) = &self.tx else { return };
                if tx.send(Msg::Flush(done_tx)).is_ok() {
                    let _ = done_rx.recv();
                }
            }
            Some(now) => {
                self.try_reopen();
                let Some(tx) = &self.tx else { return };
                // If the queue is full the writer is busy anyway: ask again
                // in a second (not at once, which would spin the loop).
                if tx.try_send(Msg::Flush(done_tx)).is_err() || self.reopen_pending {
                    self.dirty_since = Some(now);
                }
            }
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

    proptest::proptest! {
        /// The fast formatting writes what the header's Display does.
        #[test]
        fn lines_match_the_headers_display(seq: u32, ack: u32, bits: u8, send: bool) {
            let h = Header::new(anon_proto::wire::Seq(seq), anon_proto::wire::Seq(ack), Flags::from_word(u32::from(bits)));
            let dir = if send { Direction::Send } else { Direction::Recv };
            let mut line = Vec::new();
            append_line(&mut line, dir, &h);
            proptest::prop_assert_eq!(String::from_utf8(line).unwrap(), format!("{} {}\n", dir.word(), h.log_fields()));
        }
    }

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

    /// A secure datagram's line shows the header given (the inner one),
    /// not its own bytes; an opaque one is counted, not logged; a plaintext
    /// one is decoded as ever.
    #[test]
    fn secure_datagrams_show_their_inner_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let now = Instant::now();
        let mut log = PacketLog::open(&path).unwrap();
        let noise = [0xa5u8; 40];
        let inner = Header::new(Seq(7), Seq(9), Flags::ACK);
        log.record_kind(now, Direction::Recv, &noise, Belongs::Connection, Shown::Inner(inner));
        log.record_kind(now, Direction::Recv, &noise, Belongs::None, Shown::Opaque);
        log.record_kind(now, Direction::Send, &noise, Belongs::Repeat, Shown::Opaque);
        let plain = Header::new(Seq(1), Seq(2), Flags::SYN).to_bytes();
        log.record_kind(now, Direction::Send, &plain, Belongs::None, Shown::Raw);
        log.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "RECV 7 9 ACK\nSEND 1 2 SYN\n");
        assert_eq!(log.stats(), LogStats { opaque: 2, ..LogStats::default() });
    }
}

#[cfg(test)]
mod flood_tests {
    use super::*;
    use anon_proto::wire::{Flags, Seq};
    use std::sync::{Arc, Mutex};

    /// A disk that takes nothing until the test opens the gate.
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn header(i: u32) -> Header {
        Header::new(Seq(i), Seq(0), Flags::ACK)
    }

    /// The disk stalls: recording never waits for it; what does not fit the
    /// queue is dropped and counted, and what was queued is written, in
    /// order, once the disk comes back.
    #[test]
    fn a_stalled_disk_never_blocks_recording() {
        let open = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut log = PacketLog::to_writer(Gate { open: Arc::clone(&open), written: Arc::clone(&written) }).unwrap();
        let now = Instant::now();
        // Far more than the queue holds; none of these calls may block (if
        // one did, this test would hang: the gate is still closed).
        let total = (BATCH * (QUEUE + 8)) as u32;
        for i in 0..total {
            log.record_header(now, Direction::Send, &header(i));
            log.flush_if_due(now + FLUSH_INTERVAL * (i / 100_000));
        }
        let behind = log.stats().behind;
        assert!(behind > 0, "nothing dropped");
        // SIGHUP now must not wait for the disk either.
        log.reopen(now);
        // At most the queue, what the writer holds (its buffer takes a few
        // batches before the first write blocks) and the batch being filled
        // survive.
        assert!(u64::from(total) - behind <= (BATCH * (QUEUE + 6)) as u64, "{behind} dropped");
        {
            let (lock, cv) = &*open;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        log.flush();
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let lines = text.lines().count() as u64;
        assert_eq!(lines + behind, u64::from(total), "every line written or counted");
        assert!(text.starts_with("SEND 0 0 ACK\nSEND 1 0 ACK\n"));
    }

    /// A flood of strays logs at most the burst at once and the stray rate
    /// after; connection datagrams are logged whatever the strays did.
    #[test]
    fn strays_are_logged_within_the_rate() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
        let mut log = PacketLog::to_writer(Gate { open, written: Arc::clone(&written) }).unwrap();
        let t0 = Instant::now();
        let stray = header(7).to_bytes();
        // 10 seconds of 10,000 strays a second.
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..10 {
                log.record_stray(now, Direction::Recv, &stray);
            }
        }
        log.record_header(t0 + Duration::from_secs(10), Direction::Send, &header(1));
        log.flush();
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let strays = text.lines().filter(|l| *l == "RECV 7 0 ACK").count() as u64;
        assert!(strays <= STRAY_BURST + 10 * STRAY_PER_SEC, "{strays} stray lines");
        assert!(strays >= STRAY_BURST + 9 * STRAY_PER_SEC, "{strays} stray lines");
        assert_eq!(strays + log.stats().stray, 100_000);
        assert!(text.ends_with("SEND 1 0 ACK\n"));
    }

    /// Repeats have a bucket of their own: a stray flood that emptied the
    /// strays' bucket does not cost a connection's repeats their lines.
    #[test]
    fn a_stray_flood_does_not_crowd_out_repeats() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
        let mut log = PacketLog::to_writer(Gate { open, written: Arc::clone(&written) }).unwrap();
        let now = Instant::now();
        for _ in 0..(STRAY_BURST + 500) {
            log.record_stray(now, Direction::Recv, &header(7).to_bytes());
        }
        assert_eq!(log.stats().stray, 500);
        for _ in 0..100 {
            log.record_repeat(now, Direction::Recv, &header(9).to_bytes());
        }
        log.flush();
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().filter(|l| *l == "RECV 9 0 ACK").count(), 100);
        assert_eq!(log.stats().repeat, 0);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = PacketLog::open(&path).unwrap();
        let now = Instant::now();
        log.record_header(now, Direction::Send, &header(1));
        log.flush();
        std::fs::rename(&path, dir.path().join("log.1")).unwrap();
        log.record_header(now, Direction::Send, &header(2));
        log.reopen(now);
        log.record_header(now, Direction::Send, &header(3));
        log.flush();
        assert_eq!(std::fs::read_to_string(dir.path().join("log.1")).unwrap(), "SEND 1 0 ACK\nSEND 2 0 ACK\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "SEND 3 0 ACK\n");
    }
}
