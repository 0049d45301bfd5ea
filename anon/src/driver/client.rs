//! The client's socket loop: one connection, the page streamed to a
//! temporary file beside OUTFILE and renamed over it once complete.

use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anon_proto::Belongs;
use anon_proto::page::CHECKPOINT;
use anon_proto::secure::SecureClient;
use anon_proto::{ClientConn, ClientEvent, ClientStats, ConnectionError, Mode};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::udp::BatchSocket;
use crate::packet_log::{Direction, PacketLog, Shown};

/// What the client loop drives: a plaintext [`ClientConn`] or a
/// [`SecureClient`] (which wraps one). Only what the packet log shows of a
/// datagram, and the key log, differ.
pub trait Connection {
    /// See [`ClientConn::handle`].
    fn handle(&mut self, now: Instant, datagram: &[u8]);
    /// See [`ClientConn::poll_transmit`].
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool;
    /// See [`ClientConn::poll_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// See [`ClientConn::handle_timeout`].
    fn handle_timeout(&mut self, now: Instant);
    /// See [`ClientConn::abort`].
    fn abort(&mut self, error: ConnectionError);
    /// See [`ClientConn::poll_event`].
    fn poll_event(&mut self) -> Option<ClientEvent>;
    /// The plaintext connection (inside, in secure mode).
    fn conn(&self) -> &ClientConn;
    /// See [`ClientConn::readable`].
    fn readable(&self) -> &[u8];
    /// See [`ClientConn::consume`].
    fn consume(&mut self, n: usize);
    /// What the log shows of the datagram just handled.
    fn shown_received(&self) -> Shown;
    /// What the log shows of the datagram just written.
    fn shown_sent(&self) -> Shown;
    /// The key log line (`ANON_KEYLOG`), once a secure handshake is done.
    fn key_log(&self) -> Option<&str> {
        None
    }
    /// What the origin said of a page asked for by URL (secure mode).
    fn meta(&self) -> Option<&anon_proto::secure::PageMeta> {
        None
    }
    /// Where the server resumed the transfer (secure mode, `--continue`).
    fn resumed_from(&self) -> Option<u64> {
        None
    }
    /// The length and SHA-256 the page must have, once known: from the
    /// answer, or for a streamed page from its trailer at the end.
    fn whole(&self) -> Option<(u64, [u8; 32])> {
        let answer = self.conn().answer().filter(|a| a.page_len != anon_proto::page::STREAMED);
        answer.map(|a| (a.page_len, a.page_sha256))
    }
    /// See [`ClientConn::outcome`].
    fn outcome(&self) -> Option<&Result<(), ConnectionError>> {
        self.conn().outcome()
    }
    /// Page bytes received.
    fn received(&self) -> u64 {
        self.conn().received()
    }
    /// Whether where the page starts is known (the answer is in; for a
    /// streamed page, its head too).
    fn start_known(&self) -> bool {
        self.conn().answer().is_some()
    }
}

impl Connection for ClientConn {
    fn handle(&mut self, now: Instant, datagram: &[u8]) {
        ClientConn::handle(self, now, datagram);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        ClientConn::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ClientConn::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        ClientConn::handle_timeout(self, now);
    }
    fn abort(&mut self, error: ConnectionError) {
        ClientConn::abort(self, error);
    }
    fn poll_event(&mut self) -> Option<ClientEvent> {
        ClientConn::poll_event(self)
    }
    fn conn(&self) -> &ClientConn {
        self
    }
    fn readable(&self) -> &[u8] {
        ClientConn::readable(self)
    }
    fn consume(&mut self, n: usize) {
        ClientConn::consume(self, n);
    }
    fn shown_received(&self) -> Shown {
        Shown::Raw
    }
    fn shown_sent(&self) -> Shown {
        Shown::Raw
    }
}

impl Connection for SecureClient {
    fn handle(&mut self, now: Instant, datagram: &[u8]) {
        SecureClient::handle(self, now, datagram);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        SecureClient::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        SecureClient::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        SecureClient::handle_timeout(self, now);
    }
    fn abort(&mut self, error: ConnectionError) {
        SecureClient::abort(self, error);
    }
    fn poll_event(&mut self) -> Option<ClientEvent> {
        SecureClient::poll_event(self)
    }
    fn conn(&self) -> &ClientConn {
        SecureClient::conn(self)
    }
    fn readable(&self) -> &[u8] {
        SecureClient::readable(self)
    }
    fn consume(&mut self, n: usize) {
        SecureClient::consume(self, n);
    }
    fn shown_received(&self) -> Shown {
        self.last_inner_received().map_or(Shown::Opaque, Shown::Inner)
    }
    fn shown_sent(&self) -> Shown {
        self.last_inner_sent().map_or(Shown::Opaque, Shown::Inner)
    }
    fn key_log(&self) -> Option<&str> {
        SecureClient::key_log(self).map(|k| k.0.as_str())
    }
    fn meta(&self) -> Option<&anon_proto::secure::PageMeta> {
        SecureClient::meta(self)
    }
    fn resumed_from(&self) -> Option<u64> {
        SecureClient::resumed_from(self)
    }
    fn whole(&self) -> Option<(u64, [u8; 32])> {
        SecureClient::whole(self)
    }
    fn outcome(&self) -> Option<&Result<(), ConnectionError>> {
        SecureClient::outcome(self)
    }
    fn received(&self) -> u64 {
        SecureClient::received(self)
    }
    fn start_known(&self) -> bool {
        SecureClient::start_known(self)
    }
}

/// How the client loop reports.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A progress bar on stderr (drawn only on a terminal).
    pub progress: bool,
    /// Where to append the key log line once a secure handshake completes
    /// (`ANON_KEYLOG`).
    pub key_log: Option<PathBuf>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailed {
    /// The protocol gave up (timeouts, refused).
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// OUTFILE or its temporary file could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The socket failed.
    #[error("network error: {0}")]
    Socket(io::Error),
    /// SIGINT or SIGTERM arrived first.
    #[error("interrupted")]
    Interrupted,
    /// The page does not match the length or SHA-256 the server announced.
    #[error("the page does not match what the server announced ({0}); nothing written")]
    Integrity(&'static str),
}

/// What a successful fetch did.
#[derive(Debug, Clone)]
pub struct FetchSummary {
    /// Page length in bytes.
    pub bytes: u64,
    /// From the first SYN to the whole page hashed and written (before the
    /// final sync and rename).
    pub elapsed: Duration,
    /// Packets the client sent again.
    pub retransmissions: u64,
    /// What the origin said of a page asked for by URL.
    pub meta: Option<anon_proto::secure::PageMeta>,
    /// From the first SYN to the first page byte received (curl's
    /// `time_starttransfer`); `None` for an empty page.
    pub first_byte: Option<Duration>,
}

/// The temporary file the page streams into; dropped (and so deleted)
/// unless the page completes and it is renamed over OUTFILE.
///
/// A thread of its own hashes and writes the page, so that on a fast link
/// the socket loop keeps one core for receiving and acknowledging while
/// SHA-256 and the file system's copy run on another (together they were a
/// third of the client's time on loopback). The queue between them is
/// bounded, so memory stays bounded whatever the page size: when the disk
/// is slower than the network, the loop waits for it.
#[derive(Debug)]
pub struct Output {
    path: PathBuf,
    /// Page bytes not yet handed to the writer, sent in chunks.
    pending: Vec<u8>,
    chunks: Option<std::sync::mpsc::SyncSender<Chunk>>,
    /// Chunks the writer is done with, to be filled again: a fresh 256 KiB
    /// buffer per chunk cost page faults and zeroing on the receiving
    /// thread. At most QUEUED_CHUNKS + 3 buffers exist (queued, being
    /// written, one blocked in the send, and the one being filled).
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<io::Result<Written>>>,
    /// Set when the page will not be kept: the writer skips what is queued.
    abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `--continue`: where an unfinished page is kept, and once the page is
    /// known (the answer), what identifies it.
    partial: Option<Partial>,
    /// Set once the transfer's start is known.
    begun: bool,
    whole: Option<Whole>,
}

/// What the writer gets: first where the page starts, then its bytes.
#[derive(Debug)]
enum Chunk {
    /// The page starts with this many bytes of the partial file.
    Begin(u64),
    Data(Vec<u8>),
}

/// The whole page a transfer is for: its length and digest, from the
/// server's answer (with the prefix a resumed transfer kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole {
    /// The page's length.
    pub len: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// `--continue`'s files beside OUTFILE: `.NAME.anon-partial` holds the
/// first bytes of the page, `.NAME.anon-partial.meta` what they are of (the
/// request, and when the server said it, the whole page's length and
/// SHA-256; a streamed page's are known only at its end). Written when a
/// transfer stops unfinished, read by the next run, removed once the page
/// is in place.
#[derive(Debug, Clone)]
pub struct Partial {
    data: PathBuf,
    meta: PathBuf,
    /// Names the server and the page asked for: a partial file of another
    /// request is not resumed.
    request: String,
}

/// What a partial file holds, as far as it can be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Bytes of the page resumed from: the partial file's, down to a
    /// resume point (a multiple of [`CHECKPOINT`]).
    pub have: u64,
    /// Their SHA-256, which the server checks (docs/PROTOCOL.md §9.6).
    pub prefix_sha256: [u8; 32],
    /// The whole page, when known.
    pub whole: Option<Whole>,
}

impl Partial {
    /// The partial files of OUTFILE `path`, for `request` (a single line).
    pub fn new(path: &Path, request: &str) -> Partial {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = crate::files::folder_of(path);
        Partial {
            data: dir.join(format!(".{name}.anon-partial")),
            meta: dir.join(format!(".{name}.anon-partial.meta")),
            request: request.replace(['\n', '\r'], " "),
        }
    }

    /// What a previous run left for this request: `None` when there is
    /// nothing, it is of another request, or it does not add up.
    /// Reads the partial file's prefix up to its last resume point and
    /// hashes it (at most the page's size, once per run).
    pub fn load(&self) -> Option<Resume> {
        let text = std::fs::read_to_string(&self.meta).ok()?;
        let mut lines = text.lines();
        if lines.next() != Some("anon-partial 2") || lines.next()? != format!("request {}", self.request) {
            return None;
        }
        let whole = match (lines.next(), lines.next()) {
            (Some(len), Some(sha)) => {
                let len: u64 = len.strip_prefix("length ")?.parse().ok()?;
                let hex = sha.strip_prefix("sha256 ")?;
                let mut sha256 = [0u8; 32];
                for (i, byte) in sha256.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(Whole { len, sha256 })
            }
            _ => None,
        };
        let kept = std::fs::metadata(&self.data).ok()?.len();
        let have = kept - kept % CHECKPOINT;
        if have == 0 || whole.is_some_and(|w| have >= w.len) {
            return None;
        }
        let mut sha256 = Sha256::new();
        let read = read_prefix(&self.data, have, |part| {
            sha256.update(part);
            Ok(())
        })
        .ok()?;
        (read == have).then(|| Resume { have, prefix_sha256: sha256.finalize().into(), whole })
    }

    /// Keeps `file`'s first bytes as the partial page: synced, renamed
    /// into place, then the meta file (so a meta file always describes
    /// synced data).
    fn keep(&self, temp: NamedTempFile, whole: Option<Whole>) -> io::Result<()> {
        temp.as_file().sync_all()?;
        let _ = std::fs::remove_file(&self.meta);
        temp.persist(&self.data).map_err(|e| e.error)?;
        let mut text = format!("anon-partial 2\nrequest {}\n", self.request);
        if let Some(whole) = whole {
            let hex: String = whole.sha256.iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!("length {}\nsha256 {hex}\n", whole.len));
        }
        crate::files::write_atomically(&self.meta, ".tmp", text.as_bytes())
    }

    /// Removes both files (the page is complete, or they were of another).
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.meta);
        let _ = std::fs::remove_file(&self.data);
    }
}

/// Reads the first `n` bytes of `path` (fewer if it is shorter), handing
/// each piece to `each`; returns how many there were.
fn read_prefix(path: &Path, n: u64, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<u64> {
    let mut prefix = std::io::Read::take(std::fs::File::open(path)?, n);
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    loop {
        let got = std::io::Read::read(&mut prefix, &mut buf)?;
        let Some(part) = buf.get(..got).filter(|p| !p.is_empty()) else { return Ok(read) };
        each(part)?;
        read += got as u64;
    }
}

/// What the writer thread wrote.
#[derive(Debug)]
struct Written {
    temp: NamedTempFile,
    sha256: [u8; 32],
    len: u64,
}

/// Starts the page's syncs while it is still arriving, so that the sync
/// before the rename waits for at most the last SYNC_EVERY bytes and the
/// one sync in flight: for 1 GiB on this machine's disk that sync alone had
/// taken 0.5 s, all of it after the last byte (curl and wget do not sync at
/// all; the rename's promise, a complete page or none, needs it across a
/// crash). A thread of its own calls fdatasync on a second handle of the
/// file every SYNC_EVERY bytes, so the writer never waits for the disk;
/// while it is behind, the requests in between fold into one. Small pages
/// never start it.
///
/// The two handles share one open file, and the kernel reports a failed
/// writeback once per open file: an error the thread sees is the page's,
/// returned by [`join`](Self::join), never left for the final sync (which
/// would then succeed).
#[derive(Debug, Default)]
struct Syncer {
    requests: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    synced_to: u64,
}

const SYNC_EVERY: u64 = 16 << 20;

impl Syncer {
    /// Whether `written` bytes in, a sync should start.
    fn due(&self, written: u64) -> bool {
        written >= self.synced_to + SYNC_EVERY
    }

    /// Asks for the file's first `written` bytes to go to disk, without
    /// waiting. The mark moves to the last whole period, so that a resumed
    /// page (whose first chunk is the whole kept prefix) asks once.
    fn sync(&mut self, file: &std::fs::File, written: u64) {
        self.synced_to = written - written % SYNC_EVERY;
        if self.requests.is_none() {
            // No second handle or thread: no head start, and the final
            // sync does all the work, as before.
            let Ok(file) = file.try_clone() else { return };
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let spawned = std::thread::Builder::new().name("page-sync".into()).spawn(move || {
                while rx.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            });
            let Ok(thread) = spawned else { return };
            self.requests = Some(tx);
            self.thread = Some(thread);
        }
        if let Some(tx) = &self.requests {
            // Full: a sync is pending and will cover these bytes too.
            // Disconnected: the thread stopped on an error, which join
            // returns.
            let _ = tx.try_send(());
        }
    }

    /// Waits for the sync under way, if any, and returns the first error a
    /// sync met.
    fn join(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        drop(self.requests.take());
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(io::Error::other("the sync thread panicked")),
        }
    }
}

impl Drop for Syncer {
    /// A writer that stops early (an error, an abandoned page) leaves no
    /// second handle of the file behind it.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How long the client polls its socket before sleeping, in baseline mode.
const BUSY_POLL: Duration = Duration::from_micros(100);

/// Bytes handed to the writer at once, and chunks queued at most (4 MiB).
const CHUNK: usize = 256 << 10;
const QUEUED_CHUNKS: usize = 16;

impl Output {
    /// Creates the temporary file in OUTFILE's folder, so the final rename
    /// stays within one file system and is atomic. Fails at once, before any
    /// network traffic, if OUTFILE cannot be a file there.
    pub fn create(path: &Path) -> Result<Output, FetchFailed> {
        Self::create_resumable(path, None)
    }

    /// Like [`create`](Self::create); with `partial` (`--continue`), a
    /// transfer that stops unfinished keeps what it has there, and one that
    /// the server resumes starts with what is there.
    pub fn create_resumable(path: &Path, partial: Option<Partial>) -> Result<Output, FetchFailed> {
        let err = |source| FetchFailed::Output { path: path.to_path_buf(), source };
        let Some(name) = path.file_name() else {
            return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "not a file name")));
        };
        if path.is_dir() {
            return Err(err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory")));
        }
        let dir = crate::files::folder_of(path);
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".part")
            .tempfile_in(dir)
            .map_err(err)?;
        let (chunks, queue) = std::sync::mpsc::sync_channel::<Chunk>(QUEUED_CHUNKS);
        let (give_back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::clone(&abandoned);
        let prefix_from = partial.as_ref().map(|p| p.data.clone());
        let writer = std::thread::Builder::new()
            .name("page-writer".into())
            .spawn(move || {
                let mut file = BufWriter::with_capacity(1 << 16, temp);
                let mut sha256 = Sha256::new();
                let mut len = 0u64;
                let mut syncer = Syncer::default();
                for chunk in queue {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(io::Error::other("abandoned"));
                    }
                    let mut chunk = match chunk {
                        Chunk::Data(c) => c,
                        // A resumed page starts with the partial file's
                        // bytes, hashed like the rest.
                        Chunk::Begin(0) => continue,
                        Chunk::Begin(have) => {
                            let path = prefix_from.as_deref().ok_or_else(|| io::Error::other("no partial file"))?;
                            len += read_prefix(path, have, |part| {
                                sha256.update(part);
                                file.write_all(part)
                            })?;
                            if len != have {
                                return Err(io::Error::other("the partial file is shorter than it was"));
                            }
                            continue;
                        }
                    };
                    sha256.update(&chunk);
                    len += chunk.len() as u64;
                    file.write_all(&chunk)?;
                    if syncer.due(len) {
                        file.flush()?;
                        syncer.sync(file.get_ref().as_file(), len);
                    }
                    chunk.clear();
                    // The receiving side may be gone already; then it is freed.
                    let _ = give_back.send(chunk);
                }
                let temp = file.into_inner().map_err(|e| e.into_error())?;
                syncer.join()?;
                Ok(Written { temp, sha256: sha256.finalize().into(), len })
            })
            .map_err(err)?;
        Ok(Output {
            path: path.to_path_buf(),
            pending: Vec::with_capacity(CHUNK),
            chunks: Some(chunks),
            spare,
            writer: Some(writer),
            abandoned,
            partial,
            begun: false,
            whole: None,
        })
    }

    /// Once the server has said where the transfer starts: `from` bytes
    /// in, which the partial file holds (0: from the start), of the page
    /// `whole` when known. Before any page byte.
    fn begin(&mut self, from: u64, whole: Option<Whole>) -> Result<(), FetchFailed> {
        self.begun = true;
        self.whole = whole;
        match self.chunks.as_ref().map(|c| c.send(Chunk::Begin(from))) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.join().err().unwrap_or_else(|| self.failed(io::Error::other("the writer stopped")))),
        }
    }

    fn write(&mut self, mut data: &[u8]) -> Result<(), FetchFailed> {
        // Chunks of at most CHUNK bytes, whatever arrives at once (up to a
        // whole receive window when a hole fills): the queue's bound holds.
        while !data.is_empty() {
            let room = CHUNK - self.pending.len().min(CHUNK);
            let (now, rest) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = rest;
            if self.pending.len() >= CHUNK {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    /// Sends the pending bytes to the writer; its error, if it stopped.
    fn hand_over(&mut self) -> Result<(), FetchFailed> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.pending, next);
        match self.chunks.as_ref().map(|c| c.send(Chunk::Data(chunk))) {
            Some(Ok(())) => Ok(()),
            // The writer stopped: a write failed. Its error says why.
            _ => Err(self.join().err().unwrap_or_else(|| self.failed(io::Error::other("the writer stopped")))),
        }
    }

    fn failed(&self, source: io::Error) -> FetchFailed {
        FetchFailed::Output { path: self.path.clone(), source }
    }

    /// Ends the writer and returns what it wrote.
    fn join(&mut self) -> Result<Written, FetchFailed> {
        drop(self.chunks.take());
        match self.writer.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(written))) => Ok(written),
            Some(Ok(Err(e))) => Err(self.failed(e)),
            Some(Err(_)) => Err(self.failed(io::Error::other("the writer thread panicked"))),
            None => Err(self.failed(io::Error::other("the writer already ended"))),
        }
    }

    /// Checks what was written against the server's announcement, if any,
    /// then flushes, syncs and renames the complete page over OUTFILE, with
    /// the permissions a newly created file would get (the temporary file is
    /// private to its owner until then).
    ///
    /// `written_at` is set once every byte is hashed and written, before
    /// the sync: the time a transfer takes, as curl's `time_total` counts it.
    fn finish(mut self, whole: Option<(u64, [u8; 32])>, written_at: &mut Option<Instant>) -> Result<(), FetchFailed> {
        self.hand_over()?;
        let written = self.join()?;
        *written_at = Some(Instant::now());
        let whole = self.whole.or(whole.map(|(len, sha256)| Whole { len, sha256 }));
        if let Some(whole) = whole {
            // Nothing of a page that fails its check is kept for later.
            if written.len != whole.len {
                self.discard_partial();
                return Err(FetchFailed::Integrity("length"));
            }
            if written.sha256 != whole.sha256 {
                self.discard_partial();
                return Err(FetchFailed::Integrity("SHA-256"));
            }
        }
        let path = self.path.clone();
        let err = |source| FetchFailed::Output { path: path.clone(), source };
        set_default_mode(written.temp.as_file()).map_err(err)?;
        written.temp.as_file().sync_all().map_err(err)?;
        written.temp.persist(&path).map_err(|e| err(e.error))?;
        self.discard_partial();
        Ok(())
    }

    fn discard_partial(&mut self) {
        if let Some(p) = self.partial.take() {
            p.remove();
        }
    }
}

impl Drop for Output {
    /// Not finished: the writer ends and its temporary file is deleted
    /// before this returns, so an interrupted client leaves no `.part`.
    fn drop(&mut self) {
        // `--continue`, once the page is known: what arrived is written out
        // and kept for the next run.
        if let (Some(partial), true) = (self.partial.take(), self.begun) {
            if self.hand_over().is_ok() {
                if let Ok(written) = self.join() {
                    // Less than a resume point is nothing to resume from
                    // (a stream cut short at once, say): what an earlier
                    // run kept, if anything, stays as it was.
                    if written.len < CHECKPOINT {
                        return;
                    }
                    let whole = self.whole;
                    match partial.keep(written.temp, whole) {
                        Ok(()) => tracing::info!(
                            "kept {} of {} bytes in {} (--continue resumes)",
                            written.len,
                            whole.map_or_else(|| "?".to_string(), |w| w.len.to_string()),
                            partial.data.display()
                        ),
                        Err(e) => tracing::warn!("cannot keep the partial page: {e}"),
                    }
                    return;
                }
            }
        }
        self.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(self.chunks.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(unix)]
fn set_default_mode(file: &std::fs::File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o666 & !umask()))
}

#[cfg(not(unix))]
fn set_default_mode(_: &std::fs::File) -> io::Result<()> {
    Ok(())
}

/// The process's umask, read from /proc (Linux 4.7+); 022 where unknown.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string())))
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022)
}

/// Fetches the page from `server` into `output`. Returns once the
/// connection is closed (after TIME-WAIT); the file is in place as soon as
/// the page is complete.
///
/// `connect` makes the connection at the start (its first SYN is due then).
pub async fn run<C: Connection>(
    server: SocketAddr,
    mut socket: BatchSocket,
    connect: impl FnOnce(Instant) -> C,
    mut log: PacketLog,
    output: Output,
    options: Options,
    interrupt: impl Future<Output = ()>,
) -> Result<FetchSummary, FetchFailed> {
    tokio::pin!(interrupt);
    let start = Instant::now();
    let mut conn = connect(start);
    let progress = options.progress;
    let mut output = Some(output);
    let mut finished_at = None;
    let mut first_byte = None;
    let mut bar: Option<ProgressBar> = None;
    let mut tx = Vec::with_capacity(64);
    let mut next_turn = start;
    tracing::debug!(%server, "connecting");
    let result = loop {
        let now = Instant::now();
        // Datagrams that arrived while the loop was busy (syncing the file,
        // say) go before timers: a retransmitted FIN that came during the
        // sync is answered even if TIME-WAIT ran out meanwhile.
        // A few batches at most, each answered before the next is read: the
        // ACKs that fall due within one receive batch collapse into one
        // (docs/PROTOCOL.md §6.3), never more than that.
        for _ in 0..4 {
            let more = match receive(&mut socket, &mut conn, &mut log, now, true) {
                Ok(_) => !socket.drained(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(e) => !on_socket_error(&mut conn, &e),
            };
            transmit(&mut conn, &mut socket, &mut log, server, now, &mut tx).await;
            if !more {
                break;
            }
        }
        conn.handle_timeout(now);
        transmit(&mut conn, &mut socket, &mut log, server, now, &mut tx).await;
        let readable = conn.readable();
        if let Some(out) = output.as_mut() {
            // A streamed page's length and digest are known only at its
            // end; what arrived is still kept for --continue.
            if !out.begun && conn.start_known() {
                let from = conn.resumed_from().unwrap_or(0);
                let whole = conn.whole().map(|(len, sha256)| Whole { len: from.saturating_add(len), sha256 });
                out.begin(from, whole)?;
            }
            out.write(readable)?;
        }
        let n = readable.len();
        if n > 0 && first_byte.is_none() {
            first_byte = Some(now - start);
        }
        conn.consume(n);
        if let (Some(bar), true) = (bar.as_ref(), n > 0) {
            bar.set_position(conn.received());
        }
        while let Some(event) = conn.poll_event() {
            match event {
                ClientEvent::Connected(mode) => {
                    tracing::debug!(?mode, "connected");
                    if let (Some(path), Some(line)) = (options.key_log.as_deref(), conn.key_log()) {
                        crate::keys::append_key_log(path, line);
                    }
                    if progress {
                        bar = Some(progress_bar(conn.whole().map(|(len, _)| len)));
                    }
                }
                ClientEvent::Finished { len } => {
                    if let Some(bar) = bar.take() {
                        bar.finish_and_clear();
                    }
                    match output.take() {
                        Some(out) => out.finish(conn.whole(), &mut finished_at)?,
                        None => finished_at = Some(Instant::now()),
                    }
                    tracing::debug!(bytes = len, "page complete");
                }
                ClientEvent::Closed => {}
            }
        }
        if let Some(outcome) = conn.outcome() {
            break outcome.clone();
        }
        log.flush_if_due(now);

        // Baseline mode has one datagram in flight, and the user waits for
        // every round trip: on a LAN the answer comes within tens of
        // microseconds. Receiving for that long before sleeping saves the
        // sleep and wake-up through epoll, the largest cost of a round trip
        // on loopback (the README's TFTP comparison); on a longer path it
        // costs BUSY_POLL of CPU per round trip. The receive is a system
        // call of its own: waiting for tokio's reactor to report the
        // datagram would cost an epoll call per round trip.
        let inner = conn.conn();
        if inner.mode() == Mode::Baseline && inner.is_established() && !inner.is_finished() && socket.drained() {
            // Signals reach tokio through its reactor, which a transfer
            // that never sleeps would not turn: one turn (epoll with no
            // wait) every REACTOR_TURN, so that Ctrl-C still stops it. Here,
            // with everything received so far answered and handed to the
            // writer.
            if Instant::now() >= next_turn {
                tokio::task::yield_now().await;
                next_turn = Instant::now() + super::REACTOR_TURN;
                if poll_now(interrupt.as_mut()) {
                    log.flush();
                    return Err(FetchFailed::Interrupted);
                }
            }
            let until = Instant::now() + BUSY_POLL;
            let got = loop {
                let now = Instant::now();
                // The last poll goes through tokio, which clears its
                // readiness if stale: the wait below then sleeps at once
                // instead of waking for nothing and polling again.
                let last = now >= until;
                match receive(&mut socket, &mut conn, &mut log, now, last) {
                    Ok(_) => break true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // Reported once (an ICMP message, say): the connection's
                    // timers decide, unless it ended it.
                    Err(e) => break on_socket_error(&mut conn, &e),
                }
                if last {
                    break false;
                }
                std::hint::spin_loop();
            };
            if got {
                continue;
            }
        }

        let deadline = [conn.poll_timeout(), log.flush_deadline()].into_iter().flatten().min();
        tokio::select! {
            biased;
            () = &mut interrupt => {
                if finished_at.is_some() {
                    // The page is safely in place; only TIME-WAIT is cut short.
                    break Ok(());
                }
                log.flush();
                return Err(FetchFailed::Interrupted);
            }
            ready = socket.readable() => {
                if let Err(e) = ready {
                    return Err(FetchFailed::Socket(e));
                }
            }
            () = super::sleep_until(deadline) => {}
        }
    };
    log.flush();
    let lost = log.stats().behind;
    if lost > 0 {
        tracing::warn!("packet log: {lost} lines dropped: the disk was slower than the transfer");
    }
    result?;
    let stats: ClientStats = conn.conn().stats();
    Ok(FetchSummary {
        bytes: conn.received(),
        elapsed: finished_at.unwrap_or_else(Instant::now) - start,
        retransmissions: stats.retransmissions,
        meta: conn.meta().cloned(),
        first_byte,
    })
}

/// Receives one batch and hands it to the connection, through tokio's
/// readiness (`via_tokio`) or with a system call whatever it says (busy
/// polling).
fn receive(
    socket: &mut BatchSocket,
    conn: &mut impl Connection,
    log: &mut PacketLog,
    now: Instant,
    via_tokio: bool,
) -> io::Result<usize> {
    let each = |_, datagram: &[u8]| {
        conn.handle(now, datagram);
        log.record_kind(now, Direction::Recv, datagram, Belongs::Connection, conn.shown_received());
    };
    if via_tokio { socket.try_recv_batch(each) } else { socket.recv_batch_now(each) }
}

/// Polls `f` once, without a waker that anything will call: whether it has
/// completed. The loop's `select!` polls it again with a real one.
fn poll_now<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
    f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_ready()
}

/// Sends everything the connection has queued.
async fn transmit(
    conn: &mut impl Connection,
    socket: &mut BatchSocket,
    log: &mut PacketLog,
    server: SocketAddr,
    now: Instant,
    tx: &mut Vec<u8>,
) {
    while conn.poll_transmit(now, tx) {
        log.record_kind(now, Direction::Send, tx, Belongs::Connection, conn.shown_sent());
        if let Err(e) = socket.send(server, tx, None).await {
            if on_socket_error(conn, &e) {
                break;
            }
        }
    }
}

/// A progress bar on stderr: bytes, rate and ETA when the length is known
/// (fast mode announces it), bytes and rate otherwise. indicatif draws
/// nothing when stderr is not a terminal, so pipes and CI logs stay clean.
fn progress_bar(len: Option<u64>) -> ProgressBar {
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {binary_bytes} {binary_bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    bar
}

/// Handles an error of the connected socket; returns whether the
/// connection is over.
///
/// ICMP port unreachable (ECONNREFUSED) before the handshake completes means
/// no server is listening: a hard error, as RFC 1122 §4.2.3.9 treats it for
/// TCP. After the handshake it is only a hint (it may be forged, RFC 5927),
/// and the idle timeout decides.
fn on_socket_error(conn: &mut impl Connection, e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::ConnectionRefused && !conn.conn().is_established() {
        conn.abort(ConnectionError::Refused);
        return true;
    }
    tracing::debug!("socket error: {e}");
    false
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::{SYNC_EVERY, Syncer};

    /// A sync is due once per SYNC_EVERY bytes, not at every chunk after
    /// the first (nor after a resumed page's long first chunk), and the
    /// thread it starts ends with the writer.
    #[test]
    fn the_page_is_synced_once_per_period() {
        let mut file = tempfile::tempfile().expect("temporary file");
        let mut syncer = Syncer::default();
        assert!(!syncer.due(SYNC_EVERY - 1));
        assert!(syncer.thread.is_none(), "a small page starts no thread");
        file.write_all(&[7; 4096]).expect("write");
        assert!(syncer.due(SYNC_EVERY));
        syncer.sync(&file, SYNC_EVERY);
        assert!(syncer.thread.is_some());
        assert!(!syncer.due(SYNC_EVERY + (256 << 10)), "due again before another period");
        assert!(syncer.due(2 * SYNC_EVERY));
        // A resumed page: 50 periods at once, then one more chunk.
        syncer.sync(&file, 50 * SYNC_EVERY + 5);
        assert!(!syncer.due(50 * SYNC_EVERY + 5 + (256 << 10)), "one sync covers the kept prefix");
        assert!(syncer.due(51 * SYNC_EVERY));
        syncer.join().expect("the syncs succeed");
    }

    /// A sync's error is the page's: join returns it (the final sync on
    /// the other handle would not see it again). fdatasync fails on a
    /// socket (EINVAL), which stands in for a disk that fails.
    #[test]
    fn a_failed_sync_is_reported() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(socket));
        let mut syncer = Syncer::default();
        syncer.sync(&file, SYNC_EVERY);
        assert!(syncer.join().is_err());
    }
}
