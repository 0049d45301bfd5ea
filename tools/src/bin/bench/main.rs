//! Measurements quoted in the README and issue notes, each from one run of
//! one command, with every figure and its reference measured together.
//!
//! - `anon-bench throughput`: a page over baseline mode on loopback with the
//!   release binaries, against the same page over TCP (HTTP from the local
//!   origin) in the same run.
//! - `anon-bench memory`: server memory with many connections open at once,
//!   for a small and a large page, to show what a connection costs.
//! - `anon-bench path`, `load`: see their modules.
//! - `anon-bench crowd`: many client processes at once, anon against nginx
//!   and curl.
//! - `anon-bench tftp`: baseline mode against TFTP (tftp-hpa).
//!
//! Run through `bash scripts/bench.sh …`, which builds in release mode first.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod crowd;
mod handshakes;
mod holders;
mod load;
mod path;
mod procfs;
mod sackflood;
mod tftp;

use anon_proto::wire::{Flags, Header, Seq};
use anon_tools::origin::Origin;
use anon_tools::process::{ServerProcess, bin_dir, reported_secs, spawn_client};
use clap::{Parser, Subcommand};
use rand::RngCore;

#[derive(Debug, Parser)]
struct Args {
    /// Folder with anonserver and anonclient (default: beside this program).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Baseline-mode transfer time on loopback, with TCP as the reference.
    Throughput {
        /// Page size in bytes.
        #[arg(long, default_value_t = 10 << 20)]
        size: usize,
        /// Transfers of each kind; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Leave out baseline mode (it takes minutes for large pages).
        #[arg(long)]
        no_baseline: bool,
        /// Also append the rows to this CSV file (header written if new).
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
    },
    /// anon against TCP (CUBIC, BBR) and QUIC (quinn CUBIC, BBR) over
    /// emulated paths between two network namespaces, and on loopback.
    /// Needs root (namespaces, TUN devices) and curl.
    Path {
        /// Run only this scenario (repeatable): loopback, 100mbit-50ms,
        /// 100mbit-50ms-loss1, 100mbit-50ms-loss5-dup2-reorder5,
        /// 20mbit-300ms-loss10.
        #[arg(long = "scenario")]
        only: Vec<String>,
        /// 10 MiB pages only (100 MiB on loopback): minutes, not half an hour.
        #[arg(long)]
        quick: bool,
        /// Seconds one transfer may take before it counts as failed.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Seed of the emulator's random choices and of the page.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also append the rows to this CSV file (header written if new).
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
        /// Runs of every transport, interleaved (a run of each in turn);
        /// each row is then the run with the median process time.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
        runs: u32,
    },
    /// Many concurrent clients (the protocol core's client, one socket
    /// each, both modes) against one server on loopback: all byte-exact,
    /// with completion time, server memory and CPU time.
    Load {
        /// Concurrent clients.
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Page size in bytes.
        #[arg(long, default_value_t = 100_000)]
        size: usize,
        /// Share of clients in fast mode; the rest ask for baseline.
        #[arg(long, default_value_t = 0.5)]
        fast_share: f64,
        /// Seconds over which the clients start.
        #[arg(long, default_value_t = 1.0)]
        ramp: f64,
        /// Seconds the whole run may take.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Meanwhile, flood the server with malformed and random datagrams
        /// from one socket, as fast as it sends.
        #[arg(long)]
        storm: bool,
    },
    /// N anonclient processes at once against one anonserver, N asking a
    /// secure-mode proxy for the page cached, and N curl processes against
    /// nginx serving the same file, on loopback: wall time from the first
    /// start to the last exit, and each crowd's CPU. Needs nginx and curl.
    Crowd {
        /// Client processes started together.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Page size in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        /// Runs: a crowd of each kind (anon, the proxy, nginx) per run.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Seconds one crowd may take before it counts as failed.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// anonclient --no-fast against tftp-hpa (in.tftpd and tftp), both
    /// 512-byte stop-and-wait, on loopback: client process times. Needs
    /// root (in.tftpd chroots into its folder).
    Tftp {
        /// Page size in bytes (at most 65535 blocks of 512 bytes).
        #[arg(long, default_value_t = 10 << 20)]
        size: usize,
        /// Transfers of each kind; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds one transfer may take before it counts as failed.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Honest anonclients fetching one after another on loopback, alone and
    /// beside one hostile client that SACKs everything but the first
    /// segment in four blocks per ACK: process times, in one run.
    Sackflood {
        /// Page size in bytes.
        #[arg(long, default_value_t = 4 << 20)]
        size: usize,
        /// Honest fetches in a row, each way.
        #[arg(long, default_value_t = 5)]
        fetches: usize,
    },
    /// Many hostile clients holding full windows unacknowledged against one
    /// anonserver with a memory budget: its peak RSS, and an honest fetch.
    Holders {
        /// Hostile clients.
        #[arg(long, default_value_t = 1000)]
        holders: usize,
        /// Page size in bytes.
        #[arg(long, default_value_t = 32 << 20)]
        size: usize,
        /// The server's --memory-budget in MiB.
        #[arg(long, default_value_t = 64)]
        budget: u64,
        /// Seconds the holders hold (under the server's 30 s idle timeout).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// A flood of valid secure first messages from spoofed sources (a
    /// leaked bridge line) against the secure server in process: its CPU
    /// with the default read budget and cookies, and reading every one.
    Handshakes {
        /// First messages in the flood.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Their rate a second, in the server's (virtual) time.
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
    },
    /// Server memory with this many connections open at once.
    Memory {
        /// Connections to hold open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bins = match args.bin_dir.map_or_else(bin_dir, Ok) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("anon-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.what {
        What::Throughput { size, runs, no_baseline, csv } => {
            throughput(&bins, size, runs.max(1), !no_baseline, csv.as_deref())
        }
        What::Memory { connections } => memory(&bins, connections),
        What::Load { clients, size, fast_share, ramp, timeout, storm } => load::run(
            &bins,
            &load::Options {
                clients,
                size,
                fast_share,
                ramp: Duration::from_secs_f64(ramp.max(0.0)),
                timeout: Duration::from_secs(timeout),
                storm,
            },
        ),
        What::Path { only, quick, timeout, seed, csv, runs } => {
            path::run(&path::Options { bins, only, quick, timeout, seed, csv, runs })
        }
        What::Crowd { clients, size, runs, timeout } => crowd::run(&crowd::Options {
            bins,
            clients: clients.max(1),
            size,
            runs: runs.max(1),
            timeout: Duration::from_secs(timeout),
        }),
        What::Holders { holders, size, budget, seconds } => {
            holders::run(&holders::Options { bins, holders, size, budget_mib: budget, seconds })
        }
        What::Handshakes { messages, rate } => handshakes::run(&handshakes::Options { messages, rate }),
        What::Sackflood { size, fetches } => {
            sackflood::run(&sackflood::Options { bins, size, fetches: fetches.max(1) })
        }
        What::Tftp { size, runs, timeout } => {
            tftp::run(&tftp::Options { bins, size, runs: runs.max(1), timeout: Duration::from_secs(timeout) })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anon-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn random_page(size: usize) -> Vec<u8> {
    let mut page = vec![0u8; size];
    rand::rng().fill_bytes(&mut page);
    page
}

/// Writes a random page of `size` bytes to `page_file` and starts
/// `anonserver` on it, logging to `log` (with `extra` arguments). Returns
/// the page, to check what clients fetch.
fn serve_random_page(
    bins: &Path,
    page_file: &Path,
    size: usize,
    log: &Path,
    extra: &[&str],
) -> io::Result<(Vec<u8>, ServerProcess)> {
    let page = random_page(size);
    std::fs::write(page_file, &page)?;
    let server = ServerProcess::start(
        &bins.join("anonserver"),
        log,
        &page_file.to_string_lossy(),
        extra,
        Duration::from_secs(60),
    )?;
    Ok((page, server))
}

fn median_f64(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Fetches the page `runs` times with `extra` client flags; returns the
/// median of the client's own timing (first SYN to last byte, without
/// TIME-WAIT) and the client's peak RSS in KiB.
fn fetch_runs(
    bins: &Path,
    port: u16,
    dir: &Path,
    page: &[u8],
    runs: usize,
    extra: &[&str],
) -> io::Result<(Duration, u64)> {
    let mut times = Vec::new();
    let mut peak = 0;
    for i in 0..runs {
        let out = dir.join(format!("out{i}"));
        let mut client = spawn_client(&bins.join("anonclient"), port, &dir.join("c.log"), &out, extra)?;
        let pid = client.pid();
        let mut rss = 0;
        // Sample the client's peak RSS while it runs (VmHWM survives until exit).
        while let Ok((_, hwm)) = procfs::memory_kib(pid) {
            rss = rss.max(hwm);
            if client.wait_for_line("wrote", Duration::from_millis(20)).is_ok() {
                break;
            }
        }
        peak = peak.max(rss);
        if !client.wait(Duration::from_secs(600))?.success() {
            return Err(io::Error::other(format!("client failed: {:?}", client.stderr)));
        }
        if std::fs::read(&out)? != page {
            return Err(io::Error::other("fetched page differs"));
        }
        std::fs::remove_file(&out)?;
        let secs =
            reported_secs(&client.stderr).ok_or_else(|| io::Error::other(format!("no time in {:?}", client.stderr)))?;
        times.push(Duration::from_secs_f64(secs));
    }
    Ok((median(times), peak))
}

fn throughput(bins: &Path, size: usize, runs: usize, with_baseline: bool, csv: Option<&Path>) -> io::Result<()> {
    let page = random_page(size);
    let origin = Origin::serve(page.clone())?;
    let dir = tempfile::tempdir()?;
    let mut server = ServerProcess::start(
        &bins.join("anonserver"),
        &dir.path().join("s.log"),
        &origin.url(),
        &[],
        Duration::from_secs(60),
    )?;
    let (fast, fast_rss) = fetch_runs(bins, server.port, dir.path(), &page, runs, &[])?;
    let baseline = if with_baseline {
        Some(fetch_runs(bins, server.port, dir.path(), &page, runs, &["--no-fast"])?)
    } else {
        None
    };
    server.stop(Duration::from_secs(10))?;

    let agent = ureq::Agent::new_with_defaults();
    let mut tcp = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let body = agent
            .get(&origin.url())
            .call()
            .map_err(io::Error::other)?
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(io::Error::other)?;
        tcp.push(start.elapsed());
        if body != page {
            return Err(io::Error::other("TCP page differs"));
        }
    }
    let tcp = median(tcp);
    let rate = |d: Duration| size as f64 * 8.0 / d.as_secs_f64() / 1e6;
    println!("page {size} bytes, loopback, median of {runs}, all measured in this run");
    println!("{:<30} {:>10} {:>12} {:>10} {:>14}", "transport", "time", "Mbit/s", "vs TCP", "client RSS KiB");
    let mut rows = vec![("anon fast mode", fast, Some(fast_rss))];
    if let Some((t, rss)) = baseline {
        rows.push(("anon baseline (stop-and-wait)", t, Some(rss)));
    }
    rows.push(("TCP (HTTP from the origin)", tcp, None));
    let mut csv_out = match csv {
        Some(path) => {
            let new = !path.exists();
            let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
            if new {
                writeln!(f, "scenario,page_bytes,transport,seconds,mbit_per_s,ratio_to_tcp,client_rss_kib")?;
            }
            Some(f)
        }
        None => None,
    };
    for (name, t, rss) in rows {
        let rss = rss.map_or("-".to_string(), |r| r.to_string());
        let ratio = t.as_secs_f64() / tcp.as_secs_f64();
        println!("{name:<30} {:>9.3}s {:>12.1} {ratio:>9.2}x {rss:>14}", t.as_secs_f64(), rate(t));
        if let Some(f) = csv_out.as_mut() {
            writeln!(f, "loopback,{size},{name},{:.6},{:.1},{ratio:.3},{rss}", t.as_secs_f64(), rate(t))?;
        }
    }
    if let Some((t, _)) = baseline {
        let segments = size.div_ceil(512);
        println!(
            "baseline: {:.1} us per 512-byte segment (one round trip each)",
            t.as_secs_f64() * 1e6 / segments as f64
        );
    }
    Ok(())
}

/// Completes `n` handshakes from `n` sockets and then goes silent, so the
/// server holds `n` established connections. Returns the sockets.
fn open_connections(server: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let isn = Seq(i as u32 * 7919);
        let mut d = Vec::new();
        Header::new(isn, Seq(0), Flags::SYN).encode(&[], &mut d);
        s.send(&d)?;
        sockets.push(s);
    }
    let mut buf = [0u8; 2048];
    for (i, s) in sockets.iter().enumerate() {
        let isn = Seq(i as u32 * 7919);
        let n = s.recv(&mut buf)?;
        let (h, _) = Header::decode(buf.get(..n).unwrap_or_default()).map_err(io::Error::other)?;
        if !h.flags.contains(Flags::SYN | Flags::ACK) || h.ack != isn + 1 {
            return Err(io::Error::other(format!("unexpected answer {h:?}")));
        }
        let mut d = Vec::new();
        Header::new(isn + 1, h.seq + 1, Flags::ACK).encode(&[], &mut d);
        s.send(&d)?;
    }
    // The first data segment on every socket shows the server has taken the
    // handshake ACK: all connections are established.
    for s in &sockets {
        let n = s.recv(&mut buf)?;
        let (h, _) = Header::decode(buf.get(..n).unwrap_or_default()).map_err(io::Error::other)?;
        if h.flags.contains(Flags::SYN) {
            return Err(io::Error::other("handshake ACK not taken"));
        }
    }
    Ok(sockets)
}

fn memory(bins: &Path, connections: usize) -> io::Result<()> {
    println!("server memory with {connections} connections held open after their handshake");
    println!("{:>12} {:>12} {:>12} {:>12} {:>14}", "page bytes", "idle KiB", "loaded KiB", "peak KiB", "B/connection");
    for size in [1024, 10 << 20] {
        let dir = tempfile::tempdir()?;
        let page_file = dir.path().join("page");
        std::fs::write(&page_file, random_page(size))?;
        let mut server = ServerProcess::start(
            &bins.join("anonserver"),
            &dir.path().join("s.log"),
            page_file.to_str().unwrap_or_default(),
            &["--idle-timeout", "120"],
            Duration::from_secs(60),
        )?;
        let pid = server.proc.pid();
        let (idle, _) = procfs::memory_kib(pid)?;
        let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
        let sockets = open_connections(addr, connections)?;
        let (loaded, peak) = procfs::memory_kib(pid)?;
        let per_conn = (loaded.saturating_sub(idle)) * 1024 / connections.max(1) as u64;
        println!("{size:>12} {idle:>12} {loaded:>12} {peak:>12} {per_conn:>14}");
        drop(sockets);
        server.stop(Duration::from_secs(10))?;
    }
    Ok(())
}
