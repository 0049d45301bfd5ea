//! `anon-bench sackflood`: what one hostile client costs the others. An
//! honest `anonclient` fetches a page several times in a row on loopback,
//! first alone, then while a hostile client (this process) holds a fast-mode
//! connection that offers a 16 MiB window, never acknowledges the first
//! segment and SACKs everything else in four blocks per ACK, as fast as one
//! socket sends. Reports the honest clients' process times (spawn to exit)
//! both ways, in one run.

use std::io;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anon_proto::wire::ext::{AckInfo, Offer};
use anon_proto::wire::{Flags, Header, Seq};
use anon_tools::process::spawn_client;

/// Options of `anon-bench sackflood`.
#[derive(Debug, Clone)]
pub struct Options {
    pub bins: PathBuf,
    /// Page size in bytes.
    pub size: usize,
    /// Honest fetches in a row, each way.
    pub fetches: usize,
}

pub fn run(opts: &Options) -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let (page, mut server) =
        super::serve_random_page(&opts.bins, &dir.path().join("page"), opts.size, &dir.path().join("s.log"), &[])?;
    let alone = fetches(opts, server.port, dir.path(), &page)?;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let hostile = {
        let (stop, acks, port) = (Arc::clone(&stop), Arc::clone(&acks), server.port);
        std::thread::spawn(move || hostile_client(port, &stop, &acks))
    };
    // Let the hostile connection open its window first.
    std::thread::sleep(Duration::from_millis(300));
    let flooded = fetches(opts, server.port, dir.path(), &page);
    stop.store(true, Ordering::Relaxed);
    let hostile = hostile.join().map_err(|_| io::Error::other("the hostile client panicked"))?;
    let flooded = flooded?;
    let _ = server.stop(Duration::from_secs(15));
    let (segments, sent) = hostile?;
    println!(
        "{} honest fetches of {} bytes in a row on loopback, alone and beside one hostile SACK client",
        opts.fetches, opts.size
    );
    println!("{:<8} {:>14} {:>14} {:>8}", "fetch", "alone s", "flooded s", "ratio");
    for (i, (a, f)) in alone.iter().zip(&flooded).enumerate() {
        println!("{:<8} {:>14.3} {:>14.3} {:>8.2}", i + 1, a, f, f / a.max(1e-9));
    }
    let (ma, mf) = (super::median_f64(&alone), super::median_f64(&flooded));
    println!("{:<8} {:>14.3} {:>14.3} {:>8.2}", "median", ma, mf, mf / ma.max(1e-9));
    println!(
        "hostile client: {} ACKs of 4 SACK blocks sent, {segments} segments received ({sent} bytes)",
        acks.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Process times of `opts.fetches` honest fetches, one after another.
fn fetches(opts: &Options, port: u16, dir: &Path, page: &[u8]) -> io::Result<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..opts.fetches {
        let out = dir.join(format!("out{i}"));
        let started = Instant::now();
        let mut client = spawn_client(&opts.bins.join("anonclient"), port, &dir.join("c.log"), &out, &["--quiet"])?;
        if !client.wait(Duration::from_secs(120))?.success() {
            return Err(io::Error::other(format!("honest client failed: {:?}", client.stderr)));
        }
        times.push(started.elapsed().as_secs_f64());
        if std::fs::read(&out)? != page {
            return Err(io::Error::other("honest client: the page differs"));
        }
        std::fs::remove_file(&out)?;
    }
    Ok(times)
}

/// The hostile peer: handshake with a 16 MiB window, then ACKs as fast as
/// its socket sends, each acknowledging the server's ISN + 1 (the first
/// segment never acknowledged) with four SACK blocks over everything seen so
/// far; what arrives meanwhile is read without waiting. Stops when told, or
/// after five minutes.
fn hostile_client(port: u16, stop: &AtomicBool, acks: &AtomicU64) -> io::Result<(u64, u64)> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let isn = Seq(rand::random());
    let mut offer = Vec::new();
    Offer { max_segment: 1200, recv_window: 16 << 20 }.encode(&mut offer);
    let mut syn = Vec::new();
    Header::new(isn, Seq(0), Flags::SYN).encode(&offer, &mut syn);
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(300);
    let server_isn = loop {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Ok((0, 0));
        }
        socket.send(&syn)?;
        if let Ok(n) = socket.recv(&mut buf) {
            if let Ok((h, _)) = Header::decode(buf.get(..n).unwrap_or_default()) {
                if h.flags.contains(Flags::SYN | Flags::ACK) {
                    break h.seq;
                }
            }
        }
    };
    let mut ack = Vec::new();
    Header::new(isn + 1, server_isn + 1, Flags::ACK).encode(&[], &mut ack);
    socket.send(&ack)?;
    let first = server_isn + 1;
    socket.set_nonblocking(true)?;
    let (mut highest, mut segments, mut bytes, mut seq) = (0u32, 0u64, 0u64, isn + 2);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Everything that arrived, without waiting.
        for _ in 0..64 {
            let Ok(n) = socket.recv(&mut buf) else { break };
            let Ok((h, payload)) = Header::decode(buf.get(..n).unwrap_or_default()) else { continue };
            if h.flags.contains(Flags::SYN) {
                socket.send(&ack)?;
                continue;
            }
            segments += 1;
            bytes += payload.len() as u64;
            highest = highest.max(h.seq.since(first).max(0) as u32 + payload.len() as u32);
        }
        if highest <= 2400 {
            std::thread::yield_now();
            continue;
        }
        // Four blocks that together cover everything past the first segment.
        let q = (highest - 1200) / 4 / 1200 * 1200;
        let blocks = (0..4u32).map(|i| {
            let start = 1200 + i * q;
            let end = if i == 3 { highest } else { 1200 + (i + 1) * q };
            (first + start, first + end)
        });
        let info = AckInfo { window: 16 << 20, sack: blocks.collect() };
        let mut d = Vec::with_capacity(64);
        Header::new(seq, first, Flags::ACK).encode(&[], &mut d);
        info.encode(&mut d);
        seq = seq + 1;
        match socket.send(&d) {
            Ok(_) => {
                acks.fetch_add(1, Ordering::Relaxed);
            }
            // The socket's buffer is full: as fast as it sends, no faster.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(_) => {}
        }
    }
    Ok((segments, bytes))
}
