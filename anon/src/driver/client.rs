//! The client's socket loop: one connection, the page streamed to a
//! temporary file beside OUTFILE and renamed over it once complete.

use std::future::Future;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anon_proto::{ClientConfig, ClientConn, ClientEvent, ConnectionError};
use tempfile::NamedTempFile;
use tokio::net::UdpSocket;

use super::MAX_DATAGRAM;
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
}

impl Output {
    /// Creates the temporary file in OUTFILE's folder, so the final rename
    /// stays within one file system and is atomic.
    pub fn create(path: &Path) -> Result<Output, FetchFailed> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".part")
            .tempfile_in(dir)
            .map_err(|source| FetchFailed::Output { path: path.to_path_buf(), source })?;
        Ok(Output { path: path.to_path_buf(), temp: BufWriter::with_capacity(1 << 16, temp) })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), FetchFailed> {
        self.temp.write_all(data).map_err(|source| FetchFailed::Output { path: self.path.clone(), source })
    }

    /// Flushes, syncs and renames the complete page over OUTFILE.
    fn commit(self) -> Result<(), FetchFailed> {
        let path = self.path;
        let err = |source| FetchFailed::Output { path: path.clone(), source };
        let temp = self.temp.into_inner().map_err(|e| err(e.into_error()))?;
        temp.as_file().sync_all().map_err(err)?;
        temp.persist(&path).map_err(|e| err(e.error))?;
        Ok(())
    }
}

/// Fetches the page from `server` into `output`. Returns once the
/// connection is closed (after TIME-WAIT); the file is in place as soon as
/// the page is complete.
pub async fn run(
    server: SocketAddr,
    socket: UdpSocket,
    config: ClientConfig,
    mut log: PacketLog,
    output: Output,
    interrupt: impl Future<Output = ()>,
) -> Result<FetchSummary, FetchFailed> {
    tokio::pin!(interrupt);
    let start = Instant::now();
    let mut conn = ClientConn::new(config, rand::random(), start);
    let mut output = Some(output);
    let mut finished_at = None;
    let mut rx = vec![0u8; MAX_DATAGRAM];
    let mut tx = Vec::with_capacity(64);
    tracing::debug!(%server, "connecting");
    let result = loop {
        let now = Instant::now();
        conn.handle_timeout(now);
        while conn.poll_transmit(now, &mut tx) {
            log.record(now, Direction::Send, &tx);
            if let Err(e) = socket.send(&tx).await {
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
        while let Some(event) = conn.poll_event() {
            match event {
                ClientEvent::Connected => tracing::debug!("connected"),
                ClientEvent::Finished { len } => {
                    finished_at = Some(Instant::now());
                    if let Some(out) = output.take() {
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
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut interrupt => {
                log.flush();
                return Err(FetchFailed::Interrupted);
            }
            r = socket.recv(&mut rx) => match r {
                Ok(n) => {
                    let now = Instant::now();
                    let datagram = rx.get(..n).unwrap_or_default();
                    log.record(now, Direction::Recv, datagram);
                    conn.handle(now, datagram);
                }
                Err(e) => {
                    on_socket_error(&mut conn, &e);
                }
            },
            () = sleep => {}
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
