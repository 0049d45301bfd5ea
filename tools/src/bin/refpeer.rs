//! `anon-ref`: the reference transports the bench measures anon against,
//! over the same paths:
//!
//! - `http-serve`: a minimal HTTP/1.1 server over TCP, with the congestion
//!   control chosen per socket (`TCP_CONGESTION`), for curl to fetch from;
//! - `quic-serve` / `quic-get`: one file over one QUIC stream with quinn,
//!   with its CUBIC or its BBR.
//!
//! Servers print `ready` on stderr once they listen; `quic-get` prints
//! `fetched N bytes in S s` (connection start to last byte), like anonclient.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

#[derive(Debug, Parser)]
#[command(about = "TCP and QUIC reference peers for anon-bench")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Cc {
    Cubic,
    Bbr,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Serves FILE to every HTTP GET over TCP; with --rate-mbit, no faster
    /// than that (an origin slower than the path behind it). Prints when
    /// each response's first body byte goes out (Unix time).
    HttpServe {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, value_enum)]
        cc: Cc,
        #[arg(long, default_value_t = 0.0)]
        rate_mbit: f64,
    },
    /// Serves FILE on one QUIC stream per connection; writes its
    /// self-signed certificate (DER) to CERT for the client to trust.
    QuicServe {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long, value_enum)]
        cc: Cc,
    },
    /// Fetches the file from a quic-serve into OUT.
    QuicGet {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum)]
        cc: Cc,
    },
}

fn main() -> ExitCode {
    let result = match Args::parse().what {
        What::HttpServe { listen, file, cc, rate_mbit } => http_serve(listen, &file, cc, rate_mbit),
        What::QuicServe { listen, file, cert, cc } => {
            runtime().and_then(|rt| rt.block_on(quic_serve(listen, file, cert, cc)))
        }
        What::QuicGet { connect, cert, out, cc } => {
            runtime().and_then(|rt| rt.block_on(quic_get(connect, cert, out, cc)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anon-ref: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

fn http_serve(listen: SocketAddr, file: &PathBuf, cc: Cc, rate_mbit: f64) -> io::Result<()> {
    let page: Arc<[u8]> = std::fs::read(file)?.into();
    let listener = TcpListener::bind(listen)?;
    eprintln!("anon-ref: ready");
    for stream in listener.incoming() {
        let stream = stream?;
        let page = Arc::clone(&page);
        let name: &[u8] = match cc {
            Cc::Cubic => b"cubic",
            Cc::Bbr => b"bbr",
        };
        socket2::SockRef::from(&stream).set_tcp_congestion(name)?;
        std::thread::spawn(move || -> io::Result<()> {
            // Read the request head, then send the page and close.
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                    break;
                }
            }
            let mut stream = stream;
            write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", page.len())?;
            let start = std::time::Instant::now();
            let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            eprintln!("anon-ref: first body byte at {:.6}", unix.as_secs_f64());
            if rate_mbit <= 0.0 {
                stream.write_all(&page)?;
                return stream.flush();
            }
            // Paced: each 16 KiB piece no sooner than the rate allows.
            let mut sent = 0usize;
            for piece in page.chunks(16 << 10) {
                let due = Duration::from_secs_f64(sent as f64 * 8.0 / (rate_mbit * 1e6));
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                stream.write_all(piece)?;
                sent += piece.len();
            }
            stream.flush()
        });
    }
    Ok(())
}

/// Windows large enough that neither side is window-limited on any bench
/// path (the 100 Mbit/s x 50 ms path needs 625 kB), like our 8 MiB.
fn transport(cc: Cc) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(16 << 20));
    t.receive_window(VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    t.max_idle_timeout(Some(VarInt::from_u32(30_000).into()));
    match cc {
        Cc::Cubic => t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Cc::Bbr => t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
    };
    t
}

async fn quic_serve(listen: SocketAddr, file: PathBuf, cert_out: PathBuf, cc: Cc) -> io::Result<()> {
    let page = bytes::Bytes::from(std::fs::read(file)?);
    let certified = rcgen::generate_simple_self_signed(vec!["anon-bench".to_string()]).map_err(io::Error::other)?;
    let cert = certified.cert.der().clone();
    std::fs::write(&cert_out, cert.as_ref())?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let mut config = quinn::ServerConfig::with_single_cert(vec![cert], key.into()).map_err(io::Error::other)?;
    config.transport_config(Arc::new(transport(cc)));
    let endpoint = quinn::Endpoint::server(config, listen)?;
    eprintln!("anon-ref: ready");
    while let Some(incoming) = endpoint.accept().await {
        let page = page.clone();
        tokio::spawn(async move {
            let serve = async {
                let conn = incoming.await?;
                let (mut send, mut recv) = conn.accept_bi().await?;
                recv.read_to_end(64).await.map_err(io::Error::other)?;
                send.write_chunk(page).await.map_err(io::Error::other)?;
                send.finish().map_err(io::Error::other)?;
                // Wait for the client to close, so the last data is acknowledged.
                conn.closed().await;
                Ok::<(), io::Error>(())
            };
            if let Err(e) = serve.await {
                eprintln!("anon-ref: connection: {e}");
            }
        });
    }
    Ok(())
}

async fn quic_get(connect: SocketAddr, cert: PathBuf, out: PathBuf, cc: Cc) -> io::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(std::fs::read(cert)?)).map_err(io::Error::other)?;
    let crypto = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).map_err(io::Error::other)?));
    config.transport_config(Arc::new(transport(cc)));
    let bind: SocketAddr = if connect.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(config);

    let start = Instant::now();
    let conn = endpoint.connect(connect, "anon-bench").map_err(io::Error::other)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"GET\n").await.map_err(io::Error::other)?;
    send.finish().map_err(io::Error::other)?;
    let mut file = tokio::fs::File::create(&out).await?;
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.map_err(io::Error::other)? {
        total += chunk.bytes.len() as u64;
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk.bytes).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    let elapsed = start.elapsed();
    conn.close(VarInt::from_u32(0), b"done");
    tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await.ok();
    eprintln!("anon-ref: fetched {total} bytes in {:.6} s", elapsed.as_secs_f64());
    Ok(())
}
