//! `anon-bench path`: anon against TCP and QUIC over the same emulated
//! paths (and clean loopback), every transport measured in the same run.
//!
//! The bench creates two network namespaces joined by `anon-link`, the IP
//! level link emulator, calibrates the emulator, and for each scenario and
//! page size runs: anon fast mode, anon baseline mode (on a smaller page:
//! one round trip per 512 bytes takes minutes at 50 ms), TCP with CUBIC and
//! with BBR (curl from a minimal HTTP server that sets the congestion control
//! per socket), and QUIC with quinn's CUBIC and BBR. Every server runs in
//! namespace A, every client in namespace B, each under a fresh process so
//! that its CPU time and peak RSS are its own.
//!
//! The time that counts is the client process's, from its spawn to its exit,
//! measured here around the child: what a user waits for, handshake, request,
//! teardown and all. The time each client reports for the transfer itself is
//! shown beside it. Over the emulator, each transfer also gets the emulator's
//! count of what it lost at random and at the full queue, and anon's server
//! its retransmissions, to see how much of the recovery was needed.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::time::{Duration, Instant};

use anon_tools::emulator::{self, Stats as LinkStats};
use anon_tools::process::{Proc, reported_first_byte, reported_secs};

/// Namespace names; fixed so that a run interrupted by Ctrl-C is cleaned up
/// by the next one.
const NS_A: &str = "anonbench-a";
const NS_B: &str = "anonbench-b";
const ADDR_A: &str = "10.201.0.1";
const ADDR_B: &str = "10.201.0.2";
const MIB: usize = 1 << 20;

/// Options of `anon-bench path`.
#[derive(Debug, Clone)]
pub struct Options {
    pub bins: PathBuf,
    /// Scenario names to run (empty: all).
    pub only: Vec<String>,
    /// Only the 10 MiB pages (and 100 MiB on loopback).
    pub quick: bool,
    /// Seconds one transfer may take before it counts as failed.
    pub timeout: u64,
    pub seed: u64,
    pub csv: Option<PathBuf>,
    /// Runs of every transport, interleaved; each row is the median run.
    pub runs: u32,
}

/// An emulated path (or loopback, `rate_mbit` 0 and no namespaces).
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    /// Through the emulator between the namespaces (else loopback).
    emulated: bool,
    /// Rate of the emulated link (0: unlimited).
    rate_mbit: f64,
    /// One-way delay; the round trip is twice this.
    delay_ms: f64,
    loss: f64,
    duplicate: f64,
    reorder: f64,
    sizes: Vec<usize>,
    /// Baseline mode's page (it needs one round trip per 512 bytes).
    baseline_size: usize,
}

impl Scenario {
    fn loopback(&self) -> bool {
        !self.emulated
    }
    fn rtt(&self) -> Duration {
        Duration::from_secs_f64(2.0 * self.delay_ms / 1000.0)
    }
    /// Size over rate plus two round trips (handshake and request).
    fn ideal(&self, size: usize) -> Option<Duration> {
        (self.rate_mbit > 0.0)
            .then(|| Duration::from_secs_f64(size as f64 * 8.0 / (self.rate_mbit * 1e6)) + self.rtt() * 2)
    }
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    let big = |v: Vec<usize>| if quick { vec![10 * MIB] } else { v };
    let path = |name, loss, duplicate, reorder, sizes| Scenario {
        name,
        emulated: true,
        rate_mbit: 100.0,
        delay_ms: 25.0,
        loss,
        duplicate,
        reorder,
        sizes,
        baseline_size: 128 << 10,
    };
    vec![
        Scenario {
            name: "loopback",
            emulated: false,
            rate_mbit: 0.0,
            delay_ms: 0.0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            // 10 MiB: the page a user waits for, where start-up and teardown
            // weigh; the large one: throughput.
            sizes: if quick { vec![10 * MIB, 100 * MIB] } else { vec![10 * MIB, 1024 * MIB] },
            baseline_size: 10 * MIB,
        },
        // 1 MiB: a page that is mostly handshake, start-up and teardown.
        path("100mbit-50ms", 0.0, 0.0, 0.0, if quick { vec![MIB, 10 * MIB] } else { vec![MIB, 10 * MIB, 100 * MIB] }),
        path("100mbit-50ms-loss1", 0.01, 0.0, 0.0, big(vec![10 * MIB, 100 * MIB])),
        path("100mbit-50ms-loss5-dup2-reorder5", 0.05, 0.02, 0.05, vec![10 * MIB]),
        Scenario {
            name: "20mbit-300ms-loss10",
            rate_mbit: 20.0,
            delay_ms: 150.0,
            loss: 0.10,
            // Stop-and-wait here: a segment and its ACK both get through with
            // probability 0.81, so each of the 512-byte segments costs about
            // 0.4 s (a round trip, and an RTO of about 0.4 s one time in
            // five): 128 KiB would take close to two minutes, 32 KiB about 30 s.
            baseline_size: 32 << 10,
            emulated: true,
            duplicate: 0.0,
            reorder: 0.0,
            sizes: vec![10 * MIB],
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    AnonFast,
    AnonSecure,
    /// Secure mode, the page asked for by URL from a proxy that has not
    /// fetched it yet: its origin (`anon-ref http-serve`) runs beside the
    /// server, on the server's side of the path.
    AnonProxy,
    /// The same with an origin slower than the path
    /// ([`SLOW_ORIGIN_MBIT`]): the page streams while it downloads.
    AnonProxySlow,
    AnonBaseline,
    TcpCubic,
    TcpBbr,
    QuicCubic,
    QuicBbr,
}

impl Transport {
    const ALL: [Transport; 9] = [
        Transport::AnonFast,
        Transport::AnonSecure,
        Transport::AnonProxy,
        Transport::AnonProxySlow,
        Transport::AnonBaseline,
        Transport::TcpCubic,
        Transport::TcpBbr,
        Transport::QuicCubic,
        Transport::QuicBbr,
    ];
    fn name(self) -> &'static str {
        match self {
            Transport::AnonFast => "anon fast",
            Transport::AnonSecure => "anon secure",
            Transport::AnonProxy => "anon proxy (uncached)",
            Transport::AnonProxySlow => "anon proxy (slow origin)",
            Transport::AnonBaseline => "anon baseline",
            Transport::TcpCubic => "TCP cubic (curl)",
            Transport::TcpBbr => "TCP bbr (curl)",
            Transport::QuicCubic => "QUIC cubic (quinn)",
            Transport::QuicBbr => "QUIC bbr (quinn)",
        }
    }
    fn is_reference(self) -> bool {
        !matches!(self, Transport::AnonFast | Transport::AnonSecure | Transport::AnonProxy | Transport::AnonProxySlow)
    }
    fn is_anon(self) -> bool {
        matches!(
            self,
            Transport::AnonFast
                | Transport::AnonSecure
                | Transport::AnonBaseline
                | Transport::AnonProxy
                | Transport::AnonProxySlow
        )
    }
    fn is_proxy(self) -> bool {
        matches!(self, Transport::AnonProxy | Transport::AnonProxySlow)
    }
}

/// One transfer's figures.
#[derive(Debug, Clone)]
struct Row {
    transport: Transport,
    size: usize,
    /// The client process, spawn to exit.
    process: Duration,
    /// The transfer time the client reports.
    transfer: Duration,
    client_cpu: f64,
    client_rss_kib: u64,
    server_cpu: f64,
    server_rss_kib: u64,
    /// anon's server: its retransmissions (from its counters at the stop).
    retransmissions: Option<u64>,
    /// What the emulator did to the packets of this transfer.
    link: Option<LinkStats>,
    /// A proxy's: the client's first page byte after the origin's first
    /// body byte (wall clocks; the client's wrappers' start not counted).
    first_byte_lag: Option<Duration>,
    /// A proxy's: the origin's own download time, curl beside the server.
    origin_alone: Option<Duration>,
}

/// The slow origin's rate: below the emulated paths' 100 Mbit/s.
const SLOW_ORIGIN_MBIT: f64 = 40.0;
/// Largest page the slow origin's row runs with.
const SLOW_ORIGIN_MAX_PAGE: usize = 100 * MIB;

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// The two namespaces; removed when dropped.
struct Testbed;

impl Testbed {
    fn create() -> io::Result<Testbed> {
        for ns in [NS_A, NS_B] {
            // Left over from an interrupted run: start clean.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            emulator::ip(&["netns", "add", ns])?;
            emulator::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(Testbed)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in [NS_A, NS_B] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A command, run inside `ns` when given.
fn in_ns(ns: Option<&str>, prog: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

/// The running emulator of one scenario; stopped by closing its stdin.
struct Link {
    proc: Proc,
    stdin: Option<ChildStdin>,
}

impl Link {
    fn start(bins: &Path, s: &Scenario, seed: u64) -> io::Result<Link> {
        let mut cmd = Command::new(bins.join("anon-link"));
        cmd.args(["--ns-a", NS_A, "--ns-b", NS_B, "--addr-a", ADDR_A, "--addr-b", ADDR_B])
            .args(["--rate-mbit", &s.rate_mbit.to_string(), "--delay-ms", &s.delay_ms.to_string()])
            .args(["--loss", &s.loss.to_string(), "--duplicate", &s.duplicate.to_string()])
            .args(["--reorder", &s.reorder.to_string(), "--reorder-ms", "10"])
            .args(["--seed", &seed.to_string(), "--max-seconds", "7200"]);
        let (mut proc, stdin) = Proc::spawn_with_stdin(&mut cmd)?;
        proc.wait_for_line("ready", Duration::from_secs(10))?;
        Ok(Link { proc, stdin: Some(stdin) })
    }

    /// The emulator's counters so far (it prints them for each newline).
    fn counters(&mut self) -> io::Result<LinkStats> {
        let stdin = self.stdin.as_mut().ok_or_else(|| io::Error::other("the emulator is stopped"))?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        let line = self.proc.wait_for_line(emulator::COUNTERS, Duration::from_secs(5))?;
        LinkStats::parse(&line).ok_or_else(|| io::Error::other(format!("cannot read {line:?}")))
    }

    /// Stops the emulator and returns its summary line.
    fn stop(mut self) -> io::Result<String> {
        drop(self.stdin.take());
        self.proc.wait(Duration::from_secs(10))?;
        Ok(self.proc.stderr.iter().rev().find(|l| l.contains("A->B")).cloned().unwrap_or_default())
    }
}

/// CPU seconds and peak RSS (KiB) of a running process.
fn proc_usage(pid: u32) -> io::Result<(f64, u64)> {
    Ok((super::procfs::cpu_seconds(pid)?, super::procfs::memory_kib(pid)?.1))
}

/// A client run to its end under `timeout` and GNU time.
struct ClientRun {
    stdout: String,
    stderr: String,
    /// Spawn to exit, wrappers included (see [`wrapper_overhead`]).
    wall: Duration,
    cpu: f64,
    rss_kib: u64,
}

fn run_client(ns: Option<&str>, argv: &[String], timeout: u64, dir: &Path) -> io::Result<ClientRun> {
    let timefile = dir.join("time.txt");
    let mut cmd = in_ns(ns, Path::new("timeout"));
    cmd.args(["--kill-after=5", &timeout.to_string(), "/usr/bin/time", "-o"])
        .arg(&timefile)
        .args(["-f", "%U %S %M"])
        .args(argv);
    let start = Instant::now();
    let out = cmd.output()?;
    let wall = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(io::Error::other(format!("{} failed ({}): {}", argv.join(" "), out.status, stderr.trim())));
    }
    let t = std::fs::read_to_string(&timefile)?;
    let v: Vec<f64> = t.lines().last().unwrap_or_default().split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match v.as_slice() {
        [user, sys, rss] => Ok(ClientRun { stdout, stderr, wall, cpu: user + sys, rss_kib: *rss as u64 }),
        _ => Err(io::Error::other(format!("cannot read {t:?} from /usr/bin/time"))),
    }
}

/// The bridge line of the key in `key_file` (created on first use, as
/// `anonserver --key` would): the bench reads the public key itself rather
/// than the server's output.
fn bridge_line(key_file: &Path, host: &str, port: u16) -> io::Result<String> {
    use anon_proto::secure::{Bridge, StaticSecret};
    if !key_file.exists() {
        use rand::SeedableRng;
        let key = StaticSecret::generate(&mut rand::rngs::StdRng::from_os_rng());
        std::fs::write(key_file, key.to_file_text().as_bytes())?;
    }
    let text = std::fs::read_to_string(key_file)?;
    let key = StaticSecret::from_file_text(&text).map_err(io::Error::other)?;
    Ok(Bridge { key: key.public(), address: format!("{host}:{port}") }.to_string())
}

/// True when both files hold the same bytes.
fn same_file(a: &Path, b: &Path) -> io::Result<bool> {
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    let (mut ra, mut rb) = (BufReader::new(File::open(a)?), BufReader::new(File::open(b)?));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        rb.read_exact(bb.get_mut(..n).unwrap_or_default())?;
        if ba.get(..n) != bb.get(..n) {
            return Ok(false);
        }
    }
}

fn write_page(path: &Path, size: usize, seed: u64) -> io::Result<()> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = io::BufWriter::new(File::create(path)?);
    let mut chunk = vec![0u8; MIB];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        let part = chunk.get_mut(..n).unwrap_or_default();
        rng.fill_bytes(part);
        f.write_all(part)?;
        left -= n;
    }
    // On disk before any transfer starts: otherwise the kernel may write
    // the page back during the first transfers, and a client that syncs
    // its output (anonclient does) would wait behind that writeback.
    f.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()
}

/// anonserver's retransmissions, from the counters line it logs as it stops
/// (`… retransmissions=N stopped`; RUST_LOG=info).
fn server_retransmissions(stderr: &[String]) -> Option<u64> {
    stderr
        .iter()
        .rev()
        .filter(|l| l.contains("stopped"))
        .find_map(|l| number_after(l, "retransmissions="))
        .map(|n| n as u64)
}

/// The time the client wrappers (`ip netns exec`, `timeout`, GNU time) add
/// to a process time: the median of a few runs of `true` under them.
fn wrapper_overhead(ns: Option<&str>, dir: &Path) -> io::Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(run_client(ns, &["true".to_string()], 10, dir)?.wall);
    }
    times.sort();
    Ok(times.get(times.len() / 2).copied().unwrap_or_default())
}

/// The number in `text` right after `key` (e.g. " in " → seconds).
fn number_after(text: &str, key: &str) -> Option<f64> {
    text.rsplit(key).next()?.split_whitespace().next()?.parse().ok()
}

struct Runner<'a> {
    opts: &'a Options,
    dir: PathBuf,
    port: u16,
}

impl Runner<'_> {
    fn next_port(&mut self) -> u16 {
        self.port += 1;
        self.port
    }

    /// One transfer of `page` (of `size` bytes) with `t` over scenario `s`,
    /// through `link` when it is emulated.
    fn transfer(
        &mut self,
        s: &Scenario,
        mut link: Option<&mut Link>,
        t: Transport,
        page: &Path,
        size: usize,
    ) -> io::Result<Row> {
        let (ns_a, ns_b) = if s.loopback() { (None, None) } else { (Some(NS_A), Some(NS_B)) };
        let host = if s.loopback() { "127.0.0.1" } else { ADDR_A };
        let port = self.next_port();
        let bins = &self.opts.bins;
        let out = self.dir.join("out");
        let _ = std::fs::remove_file(&out);
        let cert = self.dir.join("cert.der");
        let cc = |t| if matches!(t, Transport::TcpCubic | Transport::QuicCubic) { "cubic" } else { "bbr" };

        let key = self.dir.join("server.key");
        // The proxy's origin, beside the server.
        let origin_port = self.next_port();
        let mut origin = match t {
            Transport::AnonProxy | Transport::AnonProxySlow => {
                let rate = if t == Transport::AnonProxySlow { SLOW_ORIGIN_MBIT } else { 0.0 };
                let mut cmd = in_ns(ns_a, &bins.join("anon-ref"));
                cmd.args(["http-serve", "--listen", &format!("127.0.0.1:{origin_port}"), "--cc", "bbr"])
                    .args(["--rate-mbit", &rate.to_string(), "--file"])
                    .arg(page);
                let mut p = Proc::spawn(&mut cmd)?;
                p.wait_for_line("ready", Duration::from_secs(120))?;
                Some(p)
            }
            _ => None,
        };
        let origin_url = format!("http://127.0.0.1:{origin_port}/");
        // The origin's own download time, from beside the server.
        let origin_alone = match origin.as_mut() {
            Some(o) => {
                let argv = ["curl", "-sS", "-o", "/dev/null", &origin_url].map(str::to_string);
                let alone = run_client(ns_a, &argv, self.opts.timeout, &self.dir)?.wall;
                o.wait_for_line("first body byte", Duration::from_secs(10))?;
                Some(alone)
            }
            None => None,
        };
        let (mut server, ready) = match t {
            Transport::AnonProxy | Transport::AnonProxySlow => {
                let mut cmd = in_ns(ns_a, &bins.join("anonserver"));
                cmd.args(["-p", &port.to_string(), "--bind", host, "-l"])
                    .arg(self.dir.join("server.log"))
                    .arg("--key")
                    .arg(&key)
                    .args(["--fetch-allow", "http://127.0.0.1:*/*", "--fetch-private"])
                    .env("RUST_LOG", "info");
                // Room for the bench's largest page (1 GiB on loopback),
                // past the defaults of 100 MiB a page and 1 GiB in all.
                let mib = (size >> 20) + 1;
                cmd.args(["--fetch-max-size", &mib.to_string(), "--fetch-memory", &(2 * mib).max(1024).to_string()]);
                (Proc::spawn(&mut cmd)?, "serving")
            }
            Transport::AnonFast | Transport::AnonSecure | Transport::AnonBaseline => {
                let mut cmd = in_ns(ns_a, &bins.join("anonserver"));
                cmd.args(["-p", &port.to_string(), "--bind", host, "-l"])
                    .arg(self.dir.join("server.log"))
                    .arg("-w")
                    .arg(page)
                    .env("RUST_LOG", "info");
                if t == Transport::AnonSecure {
                    cmd.arg("--key").arg(&key);
                }
                (Proc::spawn(&mut cmd)?, "serving")
            }
            Transport::TcpCubic | Transport::TcpBbr => {
                let mut cmd = in_ns(ns_a, &bins.join("anon-ref"));
                cmd.args(["http-serve", "--listen", &format!("{host}:{port}"), "--cc", cc(t), "--file"]).arg(page);
                (Proc::spawn(&mut cmd)?, "ready")
            }
            Transport::QuicCubic | Transport::QuicBbr => {
                let mut cmd = in_ns(ns_a, &bins.join("anon-ref"));
                cmd.args(["quic-serve", "--listen", &format!("{host}:{port}"), "--cc", cc(t), "--file"])
                    .arg(page)
                    .arg("--cert")
                    .arg(&cert);
                (Proc::spawn(&mut cmd)?, "ready")
            }
        };
        server.wait_for_line(ready, Duration::from_secs(120))?;
        // CPU from here on: loading (and hashing) the page is not the transfer.
        let (cpu_at_ready, _) = proc_usage(server.pid())?;

        let path = |p: &Path| p.to_string_lossy().into_owned();
        let argv: Vec<String> = match t {
            Transport::AnonFast | Transport::AnonBaseline => {
                let mut v = vec![path(&bins.join("anonclient")), "-s".into(), host.into(), "-p".into()];
                v.extend([port.to_string(), "-l".into(), path(&self.dir.join("client.log")), "-f".into(), path(&out)]);
                if t == Transport::AnonBaseline {
                    v.push("--no-fast".into());
                }
                v
            }
            Transport::AnonSecure | Transport::AnonProxy | Transport::AnonProxySlow => {
                let bridge = bridge_line(&key, host, port)?;
                let mut v = vec![path(&bins.join("anonclient")), "--bridge".into(), bridge];
                v.extend(["-l".into(), path(&self.dir.join("client.log")), "-f".into(), path(&out)]);
                if t.is_proxy() {
                    v.extend(["--url".into(), origin_url.clone()]);
                }
                v
            }
            Transport::TcpCubic | Transport::TcpBbr => vec![
                "curl".into(),
                "-sS".into(),
                "-o".into(),
                path(&out),
                "-w".into(),
                "time_total %{time_total}\n".into(),
                format!("http://{host}:{port}/"),
            ],
            Transport::QuicCubic | Transport::QuicBbr => vec![
                path(&bins.join("anon-ref")),
                "quic-get".into(),
                "--connect".into(),
                format!("{host}:{port}"),
                "--cc".into(),
                cc(t).into(),
                "--cert".into(),
                path(&cert),
                "--out".into(),
                path(&out),
            ],
        };
        let link_before = link.as_deref_mut().map(Link::counters).transpose()?;
        let spawned_at = unix_now();
        let run = run_client(ns_b, &argv, self.opts.timeout, &self.dir);
        let usage = proc_usage(server.pid());
        let origin_first = origin.as_mut().and_then(|o| {
            let line = o.wait_for_line("first body byte", Duration::from_secs(10)).ok()?;
            line.rsplit(' ').next()?.parse::<f64>().ok()
        });
        let _ = server.signal("TERM");
        let _ = server.wait(Duration::from_secs(15));
        if let Some(o) = origin.as_mut() {
            let _ = o.signal("TERM");
            let _ = o.wait(Duration::from_secs(15));
        }
        // After the server's stop: its last packets (FIN, the drain) count too.
        let link_stats = match (link, link_before) {
            (Some(l), Some(before)) => Some(l.counters()?.since(&before)),
            _ => None,
        };
        let run = run?;
        let (server_cpu, server_rss_kib) = usage?;
        let server_cpu = server_cpu - cpu_at_ready;
        let client_lines: Vec<String> = run.stderr.lines().map(str::to_string).collect();
        let secs = match t {
            Transport::TcpCubic | Transport::TcpBbr => number_after(&run.stdout, "time_total "),
            Transport::QuicCubic | Transport::QuicBbr => number_after(&run.stderr, " in "),
            Transport::AnonFast
            | Transport::AnonSecure
            | Transport::AnonBaseline
            | Transport::AnonProxy
            | Transport::AnonProxySlow => reported_secs(&client_lines),
        }
        .ok_or_else(|| io::Error::other(format!("no time in {:?} {:?}", run.stdout, run.stderr)))?;
        let retransmissions = if t.is_anon() { server_retransmissions(&server.stderr) } else { None };
        if !same_file(page, &out)? {
            return Err(io::Error::other(format!("{}: the fetched file differs from the page", t.name())));
        }
        std::fs::remove_file(&out)?;
        Ok(Row {
            transport: t,
            size,
            process: run.wall,
            transfer: Duration::from_secs_f64(secs),
            client_cpu: run.cpu,
            client_rss_kib: run.rss_kib,
            server_cpu,
            server_rss_kib,
            retransmissions,
            link: link_stats,
            first_byte_lag: origin_first
                .zip(reported_first_byte(&client_lines))
                .map(|(origin, first)| Duration::from_secs_f64((spawned_at + first - origin).max(0.0))),
            origin_alone,
        })
    }
}

/// TCP (BBR, curl) over the emulator with no limit, then with a 100 Mbit/s
/// limit: the emulator must carry well above the rates it emulates.
fn calibrate(runner: &mut Runner<'_>) -> io::Result<()> {
    let page = runner.dir.join("calibration");
    write_page(&page, 100 * MIB, 7)?;
    for (rate, need) in [(0.0, 300.0), (100.0, 90.0)] {
        let s = Scenario {
            name: "calibration",
            emulated: true,
            rate_mbit: rate,
            delay_ms: 0.0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            sizes: vec![],
            baseline_size: 0,
        };
        let mut link = Link::start(&runner.opts.bins, &s, 1)?;
        let row = runner.transfer(&s, Some(&mut link), Transport::TcpBbr, &page, 100 * MIB);
        let summary = link.stop()?;
        let row = row?;
        // The link's own capacity: curl's transfer time, not its process's.
        let mbit = 100.0 * MIB as f64 * 8.0 / row.transfer.as_secs_f64() / 1e6;
        let what = if rate == 0.0 { "no limit".to_string() } else { format!("{rate} Mbit/s limit") };
        println!("calibration, {what}: TCP carried 100 MiB at {mbit:.0} Mbit/s (need > {need}) [{summary}]");
        if mbit < need {
            return Err(io::Error::other("the emulator is too slow on this machine for these scenarios"));
        }
    }
    std::fs::remove_file(&page)
}

/// The CSV columns; a file that has other ones is refused, not mixed.
const CSV_HEADER: &str = "scenario,page_bytes,transport,process_s,transfer_s,mbit_per_s,ratio_to_ideal,\
anon_fast_over_this_process,anon_fast_over_this_transfer,client_cpu_s,client_peak_rss_kib,server_cpu_s,\
server_peak_rss_kib,server_retransmissions,link_ab_random_losses,link_ab_queue_drops,link_ba_random_losses,\
link_ba_queue_drops";

fn open_csv(path: &Path) -> io::Result<File> {
    let new = !path.exists() || std::fs::metadata(path)?.len() == 0;
    if !new {
        let first = std::fs::read_to_string(path)?.lines().next().unwrap_or_default().to_string();
        if first != CSV_HEADER {
            return Err(io::Error::other(format!(
                "{} has other columns (an older bench?); give a new file",
                path.display()
            )));
        }
    }
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
    if new {
        writeln!(f, "{CSV_HEADER}")?;
    }
    Ok(f)
}

pub fn run(opts: &Options) -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut runner = Runner { opts, dir: dir.path().to_path_buf(), port: 40000 };
    let wanted: Vec<Scenario> = scenarios(opts.quick)
        .into_iter()
        .filter(|s| opts.only.is_empty() || opts.only.iter().any(|o| o == s.name))
        .collect();
    if wanted.is_empty() {
        let names: Vec<&str> = scenarios(false).iter().map(|s| s.name).collect();
        return Err(io::Error::other(format!("no such scenario; there are: {}", names.join(", "))));
    }
    let mut csv = opts.csv.as_deref().map(open_csv).transpose()?;
    let emulated = wanted.iter().any(|s| !s.loopback());
    let _testbed = if emulated {
        let t = Testbed::create()?;
        calibrate(&mut runner)?;
        Some(t)
    } else {
        None
    };
    for (what, ns) in [("loopback", None), ("namespace", Some(NS_B))] {
        if ns.is_none() || emulated {
            let over = wrapper_overhead(ns, &runner.dir)?;
            println!(
                "process times include starting the client's wrappers ({what}: `timeout`, GNU time{}): {:.1} ms",
                if ns.is_some() { ", `ip netns exec`" } else { "" },
                over.as_secs_f64() * 1e3
            );
        }
    }
    for s in &wanted {
        let mut link = if s.loopback() { None } else { Some(Link::start(&opts.bins, s, opts.seed)?) };
        for &size in &s.sizes {
            let page = runner.dir.join("page");
            write_page(&page, size, opts.seed)?;
            let small = runner.dir.join("page-baseline");
            write_page(&small, s.baseline_size.min(size), opts.seed)?;
            let (mut all, mut failed): (Vec<Row>, Vec<(Transport, String)>) = (Vec::new(), Vec::new());
            if s.loopback() {
                // One transfer first, not reported. On this VM, memory the
                // guest has not used since boot is slow on first touch:
                // the 1 GiB fast-mode row, always first, took 3.4-3.6 s
                // (its client writing the page cache at a third of the
                // usual speed) and 1.04 s once all memory had been touched
                // once, while the later rows reused memory freed by the
                // earlier ones.
                eprintln!("{} {} MiB: warm-up, not reported…", s.name, size as f64 / MIB as f64);
                if let Err(e) = runner.transfer(s, None, Transport::AnonFast, &page, size) {
                    // With the table: the rows below may then be cold.
                    println!("{} {} MiB: the warm-up transfer failed: {e}", s.name, size / MIB);
                }
            }
            // Runs interleaved, one of each transport in turn, so that a
            // slow spell of the machine falls on all of them alike.
            for run in 1..=opts.runs {
                for t in Transport::ALL {
                    // The slow origin's row is for pages it sends within the
                    // proxy's fetch timeout (30 s at 40 Mbit/s: 140 MiB); 1 GiB
                    // would take it 3.6 minutes.
                    if t == Transport::AnonProxySlow && size > SLOW_ORIGIN_MAX_PAGE {
                        continue;
                    }
                    // A transport that failed once is not run again: its row
                    // says why.
                    if failed.iter().any(|(f, _)| *f == t) {
                        continue;
                    }
                    let (p, n) =
                        if t == Transport::AnonBaseline { (&small, s.baseline_size.min(size)) } else { (&page, size) };
                    let of = if opts.runs > 1 { format!(" (run {run} of {})", opts.runs) } else { String::new() };
                    eprintln!("{} {} MiB: {}{of}…", s.name, n as f64 / MIB as f64, t.name());
                    match runner.transfer(s, link.as_mut(), t, p, n) {
                        Ok(row) => all.push(row),
                        Err(e) => {
                            eprintln!("  failed: {e}");
                            // `timeout` exits 124 when it had to stop the client.
                            let mut why = if e.to_string().contains("exit status: 124") {
                                format!("no result within --timeout {} s", opts.timeout)
                            } else {
                                e.to_string().lines().next().unwrap_or_default().chars().take(100).collect()
                            };
                            if opts.runs > 1 {
                                // Its earlier runs' rows are not shown.
                                why = format!("in run {run} of {}, after {} that succeeded: {why}", opts.runs, run - 1);
                            }
                            failed.push((t, why));
                        }
                    }
                }
            }
            let rows = median_rows(&all, &failed);
            if opts.runs > 1 {
                println!(
                    "\n{} {} MiB: each row is the median of {} interleaved runs (process time); process s min / median / max:",
                    s.name,
                    size / MIB,
                    opts.runs
                );
                for r in &rows {
                    let runs = sorted_runs(&all, r.transport);
                    let secs = |r: Option<&&Row>| r.map_or(0.0, |r| r.process.as_secs_f64());
                    println!(
                        "  {:<22} {:.3} / {:.3} / {:.3}",
                        r.transport.name(),
                        secs(runs.first()),
                        r.process.as_secs_f64(),
                        secs(runs.last())
                    );
                }
            }
            report(s, size, &rows, csv.as_mut())?;
            for (t, why) in failed {
                println!("{:<20} failed: {why}", t.name());
            }
        }
        if let Some(link) = link {
            println!("  emulator: {}", link.stop()?);
        }
    }
    Ok(())
}

/// Of each transport's runs, the one with the median process time (the
/// lower middle one of an even count); transports that failed in any run
/// are left out, as their failure is reported instead.
fn median_rows(all: &[Row], failed: &[(Transport, String)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for t in Transport::ALL {
        if failed.iter().any(|(f, _)| *f == t) {
            continue;
        }
        let runs = sorted_runs(all, t);
        if let Some(&row) = runs.get(runs.len().saturating_sub(1) / 2) {
            rows.push(row.clone());
        }
    }
    rows
}

/// A transport's runs, fastest process time first.
fn sorted_runs(all: &[Row], t: Transport) -> Vec<&Row> {
    let mut runs: Vec<&Row> = all.iter().filter(|r| r.transport == t).collect();
    runs.sort_by_key(|r| r.process);
    runs
}

/// At least three significant digits, so that a slow rate is not "0.0".
fn three_digits(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else if v >= 1.0 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

fn report(s: &Scenario, size: usize, rows: &[Row], mut csv: Option<&mut File>) -> io::Result<()> {
    let fast = rows.iter().find(|r| r.transport == Transport::AnonFast);
    let path = if s.loopback() {
        "clean loopback".to_string()
    } else {
        format!(
            "{} Mbit/s, RTT {} ms, loss {}%, duplication {}%, reordering {}%",
            s.rate_mbit,
            s.rtt().as_millis(),
            s.loss * 100.0,
            s.duplicate * 100.0,
            s.reorder * 100.0
        )
    };
    let ideal = s.ideal(size).map_or("-".into(), |d| format!("{:.3} s", d.as_secs_f64()));
    println!("\n== {} ({path}), page {} MiB, ideal {ideal}", s.name, size / MIB);
    println!(
        "process: the client's, spawn to exit (Mbit/s, x ideal and anon/this are of it); \
         transfer: as the client reports it"
    );
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "transport",
        "page MiB",
        "process s",
        "xfer s",
        "Mbit/s",
        "x ideal",
        "anon/this",
        "(xfer)",
        "cli CPU s",
        "cli MiB",
        "srv CPU s",
        "srv MiB"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for r in rows {
        let mbit = r.size as f64 * 8.0 / r.process.as_secs_f64().max(1e-9) / 1e6;
        let x_ideal = s.ideal(r.size).map(|i| r.process.as_secs_f64() / i.as_secs_f64());
        // Baseline ran a smaller page: compare it by rate, not by time.
        let same_page = fast.filter(|_| r.size == size);
        let over_process = same_page.map(|f| f.process.as_secs_f64() / r.process.as_secs_f64());
        let over_transfer = same_page.map(|f| f.transfer.as_secs_f64() / r.transfer.as_secs_f64());
        let reference = |v: Option<f64>| opt(v.filter(|_| r.transport.is_reference()));
        println!(
            "{:<20} {:>9.2} {:>9.3} {:>9.3} {:>9} {:>9} {:>9} {:>9} {:>9.2} {:>9.1} {:>9.2} {:>9.1}",
            r.transport.name(),
            r.size as f64 / MIB as f64,
            r.process.as_secs_f64(),
            r.transfer.as_secs_f64(),
            three_digits(mbit),
            opt(x_ideal),
            reference(over_process),
            reference(over_transfer),
            r.client_cpu,
            r.client_rss_kib as f64 / 1024.0,
            r.server_cpu,
            r.server_rss_kib as f64 / 1024.0,
        );
        if let Some(f) = csv.as_deref_mut() {
            let count = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
            let link = |f: fn(&LinkStats) -> u64| count(r.link.as_ref().map(f));
            writeln!(
                f,
                "{},{},{},{:.6},{:.6},{:.3},{},{},{},{:.2},{},{:.2},{},{},{},{},{},{}",
                s.name,
                r.size,
                r.transport.name(),
                r.process.as_secs_f64(),
                r.transfer.as_secs_f64(),
                mbit,
                opt(x_ideal),
                opt(over_process),
                opt(over_transfer),
                r.client_cpu,
                r.client_rss_kib,
                r.server_cpu,
                r.server_rss_kib,
                count(r.retransmissions),
                link(|l| l.random_losses[0]),
                link(|l| l.queue_drops[0]),
                link(|l| l.random_losses[1]),
                link(|l| l.queue_drops[1]),
            )?;
        }
    }
    let fastest_ref = rows.iter().filter(|r| r.transport.is_reference() && r.size == size).min_by_key(|r| r.process);
    if let (Some(f), Some(best)) = (fast, fastest_ref) {
        println!(
            "anon fast {:.3} s vs fastest reference {} {:.3} s (process times): {:.2}x its time",
            f.process.as_secs_f64(),
            best.transport.name(),
            best.process.as_secs_f64(),
            f.process.as_secs_f64() / best.process.as_secs_f64()
        );
    }
    let secure = rows.iter().find(|r| r.transport == Transport::AnonSecure && r.size == size);
    for px in rows.iter().filter(|r| r.transport.is_proxy() && r.size == size) {
        let Some(sec) = secure else { break };
        let alone = px.origin_alone.unwrap_or_default();
        let lag = px.first_byte_lag.map_or("-".into(), |l| format!("{:.0} ms", l.as_secs_f64() * 1e3));
        println!(
            "{}: {:.3} s process; anon secure with the page in memory {:.3} s + the origin's own download {:.3} s \
             = {:.3} s: {:.2}x that; first byte {lag} after the origin's (RTT {} ms)",
            px.transport.name(),
            px.process.as_secs_f64(),
            sec.process.as_secs_f64(),
            alone.as_secs_f64(),
            (sec.process + alone).as_secs_f64(),
            px.process.as_secs_f64() / (sec.process + alone).as_secs_f64(),
            s.rtt().as_millis()
        );
    }
    if let (Some(f), Some(sec)) = (fast, secure) {
        let gib = size as f64 / (1u64 << 30) as f64;
        println!(
            "anon secure / anon fast: {:.3}x process time, {:.3}x transfer time; throughput {:.0}% of fast's; \
             CPU s per GiB: secure client {:.2} server {:.2}, fast client {:.2} server {:.2}",
            sec.process.as_secs_f64() / f.process.as_secs_f64(),
            sec.transfer.as_secs_f64() / f.transfer.as_secs_f64(),
            100.0 * f.process.as_secs_f64() / sec.process.as_secs_f64(),
            sec.client_cpu / gib,
            sec.server_cpu / gib,
            f.client_cpu / gib,
            f.server_cpu / gib,
        );
        let quic = rows
            .iter()
            .filter(|r| matches!(r.transport, Transport::QuicCubic | Transport::QuicBbr) && r.size == size)
            .min_by_key(|r| r.process);
        if let Some(q) = quic {
            println!(
                "anon secure vs fastest quinn ({}): {:.2}x its throughput (process times)",
                q.transport.name(),
                q.process.as_secs_f64() / sec.process.as_secs_f64()
            );
        }
    }
    if rows.iter().any(|r| r.link.is_some()) {
        // Server to client (A->B) carries the data: its random losses are
        // what the sender had to repair; B->A carries ACKs (and requests).
        println!(
            "{:<20} {:>11} {:>11} {:>11} {:>11} {:>11} {:>13}",
            "emulator per run", "srv retx", "A->B loss", "A->B queue", "B->A loss", "B->A queue", "retx/A->B loss"
        );
        for r in rows {
            let Some(l) = &r.link else { continue };
            let retx = r.retransmissions.map_or("-".to_string(), |n| n.to_string());
            let per_loss = r
                .retransmissions
                .zip(l.random_losses.first().copied().filter(|&n| n > 0))
                .map(|(retx, lost)| retx as f64 / lost as f64);
            println!(
                "{:<20} {retx:>11} {:>11} {:>11} {:>11} {:>11} {:>13}",
                r.transport.name(),
                l.random_losses[0],
                l.queue_drops[0],
                l.random_losses[1],
                l.queue_drops[1],
                opt(per_loss)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(transport: Transport, process_ms: u64, client_cpu: f64) -> Row {
        Row {
            transport,
            size: MIB,
            process: Duration::from_millis(process_ms),
            transfer: Duration::from_millis(process_ms / 2),
            client_cpu,
            client_rss_kib: 0,
            server_cpu: 0.0,
            server_rss_kib: 0,
            retransmissions: None,
            link: None,
            first_byte_lag: None,
            origin_alone: None,
        }
    }

    #[test]
    fn each_row_is_the_median_run_and_failed_transports_are_left_out() {
        let all = [
            row(Transport::AnonFast, 300, 3.0),
            row(Transport::TcpBbr, 50, 0.5),
            row(Transport::AnonFast, 100, 1.0),
            row(Transport::AnonSecure, 900, 9.0),
            row(Transport::AnonFast, 200, 2.0),
            row(Transport::TcpBbr, 40, 0.4),
        ];
        let rows = median_rows(&all, &[(Transport::AnonSecure, "failed".into())]);
        let got: Vec<(Transport, f64)> = rows.iter().map(|r| (r.transport, r.client_cpu)).collect();
        // The whole run's figures, not a mix: the median fast run's CPU.
        // Of two runs, the lower middle one.
        assert_eq!(got, [(Transport::AnonFast, 2.0), (Transport::TcpBbr, 0.4)]);
    }
}
