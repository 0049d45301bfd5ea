//! `anon-bench holders`: many hostile clients that each hold a full window
//! unacknowledged, against one `anonserver` with a memory budget, on
//! loopback. Each offers a 16 MiB window, SACKs everything it receives but
//! never acknowledges the first segment. Reports the server's peak RSS
//! against its page and budget, and honest fetches meanwhile.

use std::io;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anon_proto::wire::ext::{AckInfo, Offer};
use anon_proto::wire::{Flags, Header, Seq};
use anon_tools::process::spawn_client;

/// Options of `anon-bench holders`.
#[derive(Debug, Clone)]
pub struct Options {
    pub bins: PathBuf,
    /// Hostile clients.
    pub holders: usize,
    /// Page size in bytes (at least a window, so that windows fill).
    pub size: usize,
    /// The server's --memory-budget, MiB.
    pub budget_mib: u64,
    /// Seconds the holders hold.
    pub seconds: u64,
}

pub fn run(opts: &Options) -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let budget = opts.budget_mib.to_string();
    let extra = ["--memory-budget", &budget, "--max-per-source", "100000", "--max-half-open", "100000"];
    let (page, mut server) =
        super::serve_random_page(&opts.bins, &dir.path().join("page"), opts.size, &dir.path().join("s.log"), &extra)?;
    let pid = server.proc.pid();
    let (idle_rss, _) = super::procfs::memory_kib(pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let hostile = {
        let (stop, port, n, secs) = (Arc::clone(&stop), server.port, opts.holders, opts.seconds);
        std::thread::spawn(move || hold(port, n, &stop, Duration::from_secs(secs)))
    };
    // Sample the server's memory while the holders hold; one honest fetch
    // halfway.
    let started = Instant::now();
    let mut honest = None;
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(opts.seconds) {
        if let Ok((_, hwm)) = super::procfs::memory_kib(pid) {
            peak = peak.max(hwm);
        }
        if honest.is_none() && started.elapsed() > Duration::from_secs(opts.seconds / 2) {
            let out = dir.path().join("honest");
            let t = Instant::now();
            let mut c = spawn_client(
                &opts.bins.join("anonclient"),
                server.port,
                &dir.path().join("c.log"),
                &out,
                &["--quiet"],
            )?;
            let ok = c.wait(Duration::from_secs(60))?.success() && std::fs::read(&out)? == page;
            honest = Some((ok, t.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let held = hostile.join().map_err(|_| io::Error::other("the holders panicked"))??;
    if let Ok((_, hwm)) = super::procfs::memory_kib(pid) {
        peak = peak.max(hwm);
    }
    let _ = server.stop(Duration::from_secs(15));
    println!(
        "{} hostile clients holding 16 MiB windows unacknowledged for {} s, page {} MiB, --memory-budget {} MiB",
        opts.holders,
        opts.seconds,
        opts.size >> 20,
        opts.budget_mib
    );
    println!("  holders: {} connected, {} data segments received in all", held.0, held.1);
    println!(
        "  server RSS: idle {} MiB, peak {} MiB (page {} MiB + budget {} MiB = {} MiB)",
        idle_rss >> 10,
        peak >> 10,
        opts.size >> 20,
        opts.budget_mib,
        (opts.size >> 20) as u64 + opts.budget_mib
    );
    match honest {
        Some((ok, t)) => println!(
            "  honest fetch meanwhile: {} in {:.3} s",
            if ok { "byte-exact" } else { "FAILED" },
            t.as_secs_f64()
        ),
        None => println!("  honest fetch meanwhile: not run"),
    }
    Ok(())
}

/// The holders: one nonblocking socket each, all from this thread. Returns
/// how many completed the handshake and the data segments received.
fn hold(port: u16, n: usize, stop: &AtomicBool, limit: Duration) -> io::Result<(usize, u64)> {
    struct Holder {
        socket: UdpSocket,
        isn: Seq,
        first: Option<Seq>,
        highest: u32,
        seq: Seq,
        fresh: bool,
    }
    let mut offer = Vec::new();
    Offer { max_segment: 1200, recv_window: 16 << 20 }.encode(&mut offer);
    let mut holders = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(("127.0.0.1", port))?;
        socket.set_nonblocking(true)?;
        let isn = Seq(rand::random());
        let mut syn = Vec::new();
        Header::new(isn, Seq(0), Flags::SYN).encode(&offer, &mut syn);
        let _ = socket.send(&syn);
        holders.push(Holder { socket, isn, first: None, highest: 0, seq: isn + 2, fresh: false });
    }
    let deadline = Instant::now() + limit + Duration::from_secs(5);
    let mut buf = vec![0u8; 65_536];
    let mut segments = 0u64;
    let mut last_syn = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let resend_syn = last_syn.elapsed() > Duration::from_secs(1);
        if resend_syn {
            last_syn = Instant::now();
        }
        let mut idle = true;
        for h in &mut holders {
            for _ in 0..64 {
                let Ok(len) = h.socket.recv(&mut buf) else { break };
                idle = false;
                let Ok((hdr, payload)) = Header::decode(buf.get(..len).unwrap_or_default()) else { continue };
                if hdr.flags.contains(Flags::SYN) {
                    let first = hdr.seq + 1;
                    h.first = Some(first);
                    let mut ack = Vec::new();
                    Header::new(h.isn + 1, first, Flags::ACK).encode(&[], &mut ack);
                    let _ = h.socket.send(&ack);
                    continue;
                }
                let Some(first) = h.first else { continue };
                segments += 1;
                h.highest = h.highest.max(hdr.seq.since(first).max(0) as u32 + payload.len() as u32);
                h.fresh = true;
            }
            if h.first.is_none() && resend_syn {
                let mut syn = Vec::new();
                Header::new(h.isn, Seq(0), Flags::SYN).encode(&offer, &mut syn);
                let _ = h.socket.send(&syn);
            }
            let Some(first) = h.first else { continue };
            if h.fresh && h.highest > 1200 {
                h.fresh = false;
                let info =
                    AckInfo { window: 16 << 20, sack: [(first + 1200, first + h.highest)].into_iter().collect() };
                let mut d = Vec::with_capacity(32);
                Header::new(h.seq, first, Flags::ACK).encode(&[], &mut d);
                info.encode(&mut d);
                h.seq = h.seq + 1;
                let _ = h.socket.send(&d);
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok((holders.iter().filter(|h| h.first.is_some()).count(), segments))
}
