//! One URL through the tunnel: the same connection and socket loop as
//! `anonclient --url` ([`driver::client::run`] with a [`anon_proto::secure::SecureClient`]),
//! on the calling thread, into a file.

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anon_proto::ClientConfig;
use anon_proto::secure::{PublicKey, StaticSecret};

use crate::driver;
use crate::driver::client::{FetchFailed, FetchSummary, Output};
use crate::packet_log::PacketLog;

/// What every fetch needs: the server and the keys, the connection's
/// settings, and the packet log shared by all fetches.
#[derive(Debug)]
pub struct Tunnel {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// The server's public key.
    pub server_key: PublicKey,
    /// This client's key, for servers that list their clients.
    pub client_key: Option<StaticSecret>,
    /// Timeouts and fast mode, as for `anonclient --url`.
    pub config: ClientConfig,
    /// `-l`: every fetch's datagrams are appended to it.
    pub log: Option<Arc<Mutex<File>>>,
    /// `ANON_KEYLOG`.
    pub key_log: Option<PathBuf>,
}

impl Tunnel {
    /// Fetches `url` into `dest` (written beside it and renamed once
    /// complete, as `-f` is). Each fetch has its own socket and its own
    /// current-thread runtime, on the caller's thread.
    pub fn fetch(&self, url: &str, dest: &Path) -> Result<FetchSummary, FetchFailed> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(FetchFailed::Socket)?;
        let log = match &self.log {
            Some(file) => PacketLog::to_writer(LineSink { file: Arc::clone(file), partial: Vec::new() }),
            None => PacketLog::to_writer(io::sink()),
        }
        .map_err(FetchFailed::Socket)?;
        let output = Output::create(dest)?;
        let socket = driver::udp::connect_client(self.server).map_err(FetchFailed::Socket)?;
        let socket = {
            let _guard = rt.enter();
            driver::udp::BatchSocket::new(socket).map_err(FetchFailed::Socket)?
        };
        let connect = crate::cli::secure_connect(
            self.server_key,
            self.client_key.clone(),
            String::new(),
            Some(url.to_owned()),
            None,
            self.config.clone(),
        );
        let options = driver::client::Options { progress: false, key_log: self.key_log.clone() };
        // No interrupt of its own: a stop signal ends the whole process.
        rt.block_on(driver::client::run(self.server, socket, connect, log, output, options, std::future::pending()))
    }
}

/// A packet log's sink that hands the shared file whole lines only, so
/// that fetches running at once never interleave within a line (the log's
/// writer flushes its buffer wherever it happens to fill).
struct LineSink {
    file: Arc<Mutex<File>>,
    partial: Vec<u8>,
}

impl LineSink {
    fn write_out(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut file = self.file.lock().map_err(|_| io::Error::other("the packet log's lock is poisoned"))?;
        file.write_all(bytes)
    }
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.partial.extend_from_slice(buf);
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            let rest = self.partial.split_off(end + 1);
            let lines = std::mem::replace(&mut self.partial, rest);
            self.write_out(&lines)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            let _ = self.write_out(&rest);
        }
    }
}
