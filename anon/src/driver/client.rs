//! The client's socket loop: one connection, the page streamed to a
//! temporary file beside OUTFILE and renamed over it once complete.

use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anon_proto::wire::ext::Answer;
use anon_proto::{ClientConfig, ClientConn, ClientEvent, ConnectionError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::udp::BatchSocket;
use crate::packet_log::{Direction, PacketLog};

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
#[derive(Debug, Clone, Copy)]
pub struct FetchSummary {
    /// Page length in bytes.
    pub bytes: u64,
    /// From the first SYN to the page being complete.
    pub elapsed: Duration,
    /// Packets the client sent again.
    pub retransmissions: u64,
}

/// The temporary file the page streams into; dropped (and so deleted)
/// unless the page completes and it is renamed over OUTFILE.
#[derive(Debug)]
pub struct Output {
    path: PathBuf,
    temp: BufWriter<NamedTempFile>,
    /// Digest and length of what was written, checked against a fast-mode
    /// server's announcement before the rename.
    sha256: Sha256,
    len: u64,
}

impl Output {
    /// Creates the temporary file in OUTFILE's folder, so the final rename
    /// stays within one file system and is atomic. Fails at once, before any
    /// network traffic, if OUTFILE cannot be a file there.
    pub fn create(path: &Path) -> Result<Output, FetchFailed> {
        let err = |source| FetchFailed::Output { path: path.to_path_buf(), source };
        let Some(name) = path.file_name() else {
            return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "not a file name")));
        };
        if path.is_dir() {
            return Err(err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory")));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".part")
            .tempfile_in(dir)
            .map_err(err)?;
        Ok(Output {
            path: path.to_path_buf(),
            temp: BufWriter::with_capacity(1 << 16, temp),
            sha256: Sha256::new(),
            len: 0,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), FetchFailed> {
        self.sha256.update(data);
        self.len += data.len() as u64;
        self.temp.write_all(data).map_err(|source| FetchFailed::Output { path: self.path.clone(), source })
    }

    /// Compares what was written with the server's announcement, if any.
    fn verify(&self, answer: Option<&Answer>) -> Result<(), FetchFailed> {
        let Some(answer) = answer else { return Ok(()) };
        if self.len != answer.page_len {
            return Err(FetchFailed::Integrity("length"));
        }
        let digest: [u8; 32] = self.sha256.clone().finalize().into();
        if digest != answer.page_sha256 {
            return Err(FetchFailed::Integrity("SHA-256"));
        }
        Ok(())
    }

    /// Flushes, syncs and renames the complete page over OUTFILE, with the
    /// permissions a newly created file would get (the temporary file is
    /// private to its owner until then).
    fn commit(self) -> Result<(), FetchFailed> {
        let path = self.path;
        let err = |source| FetchFailed::Output { path: path.clone(), source };
        let temp = self.temp.into_inner().map_err(|e| err(e.into_error()))?;
        set_default_mode(temp.as_file()).map_err(err)?;
        temp.as_file().sync_all().map_err(err)?;
        temp.persist(&path).map_err(|e| err(e.error))?;
        Ok(())
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
pub async fn run(
    server: SocketAddr,
    mut socket: BatchSocket,
    config: ClientConfig,
    mut log: PacketLog,
    output: Output,
    progress: bool,
    interrupt: impl Future<Output = ()>,
) -> Result<FetchSummary, FetchFailed> {
    tokio::pin!(interrupt);
    let start = Instant::now();
    let mut conn = ClientConn::new(config, rand::random(), start);
    let mut output = Some(output);
    let mut finished_at = None;
    let mut bar: Option<ProgressBar> = None;
    let mut tx = Vec::with_capacity(64);
    tracing::debug!(%server, "connecting");
    let result = loop {
        let now = Instant::now();
        // Datagrams that arrived while the loop was busy (syncing the file,
        // say) go before timers: a retransmitted FIN that came during the
        // sync is answered even if TIME-WAIT ran out meanwhile.
        // A few batches at most, so that acknowledgments go out between
        // them rather than one for hundreds of segments.
        for _ in 0..4 {
            let got = socket.try_recv_batch(|_, datagram| {
                log.record(now, Direction::Recv, datagram);
                conn.handle(now, datagram);
            });
            match got {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if on_socket_error(&mut conn, &e) {
                        break;
                    }
                }
            }
        }
        conn.handle_timeout(now);
        while conn.poll_transmit(now, &mut tx) {
            log.record(now, Direction::Send, &tx);
            if let Err(e) = socket.send(server, &tx, None).await {
                if on_socket_error(&mut conn, &e) {
                    break;
                }
            }
        }
        let readable = conn.readable();
        if let Some(out) = output.as_mut() {
            out.write(readable)?;
        }
        let n = readable.len();
        conn.consume(n);
        if let (Some(bar), true) = (bar.as_ref(), n > 0) {
            bar.set_position(conn.received());
        }
        while let Some(event) = conn.poll_event() {
            match event {
                ClientEvent::Connected(mode) => {
                    tracing::debug!(?mode, "connected");
                    if progress {
                        bar = Some(progress_bar(conn.answer().map(|a| a.page_len)));
                    }
                }
                ClientEvent::Finished { len } => {
                    finished_at = Some(Instant::now());
                    if let Some(bar) = bar.take() {
                        bar.finish_and_clear();
                    }
                    if let Some(out) = output.take() {
                        out.verify(conn.answer())?;
                        out.commit()?;
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
    result?;
    let stats = conn.stats();
    Ok(FetchSummary {
        bytes: conn.received(),
        elapsed: finished_at.unwrap_or_else(Instant::now) - start,
        retransmissions: stats.retransmissions,
    })
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
fn on_socket_error(conn: &mut ClientConn, e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::ConnectionRefused && !conn.is_established() {
        conn.abort(ConnectionError::Refused);
        return true;
    }
    tracing::debug!("socket error: {e}");
    false
}
