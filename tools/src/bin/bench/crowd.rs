//! `anon-bench crowd`: a crowd of client processes fetching one page at
//! once, on loopback. N `anonclient`s against one `anonserver`, then N
//! `curl`s against nginx serving the same file (one process, as our server
//! is, with a minimal configuration written into a temporary folder). The
//! figure is the wall time from starting the first process to the last
//! exit, with every file checked byte for byte. The processes are spawned
//! one after another (a few milliseconds each here); how long that took is
//! shown too, as it is part of both wall times.
//!
//! A third crowd asks a secure-mode proxy (`anonserver --fetch-allow`) for
//! the same page by URL (`anonclient --url`), with nginx as the origin and
//! the page already in the proxy's cache (one client fetched it before):
//! the proxy's cached case against nginx serving the file itself.
//!
//! Every crowd's CPU is counted too: its clients' (all their threads, spawn
//! to exit) and its server's over the crowd. On loopback a crowd is bound
//! by CPU, so these say where a wall time comes from. Last, in process,
//! what secure mode adds to one transfer of the page, both ends together:
//! the protocol cores over the simulator's link, without the sockets and
//! processes every crowd has, so a floor of what the proxy's crowd needs
//! beyond the plaintext crowd's CPU.

use std::io::{self, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anon_sim::{LinkConfig, SecureSetup, Setup, Sim, SimEndpoint, SimPeer};
use anon_tools::process::{Proc, ServerProcess, client_command, reported_secs};

use super::procfs::{children_cpu_seconds, cpu_seconds};

/// Options of `anon-bench crowd`.
#[derive(Debug, Clone)]
pub struct Options {
    pub bins: PathBuf,
    pub clients: usize,
    pub size: usize,
    pub runs: usize,
    /// How long one crowd may take before it counts as failed.
    pub timeout: Duration,
}

/// What one crowd did.
#[derive(Debug)]
struct Crowd {
    /// Start of the first process to the last exit.
    wall: Duration,
    /// Start of the first process to the start of the last: the share of
    /// `wall` that is this bench spawning them one by one.
    spawned: Duration,
    /// Each process, spawn to exit.
    process: Vec<Duration>,
    /// What the clients say the transfer took (anonclient only).
    reported: Vec<Duration>,
    /// CPU seconds of the client processes, all of them together.
    clients_cpu: f64,
    /// CPU seconds of the server over the crowd.
    server_cpu: f64,
}

impl Crowd {
    fn cpu(&self) -> f64 {
        self.clients_cpu + self.server_cpu
    }
}

/// Starts every command at once (as fast as they can be spawned), waits for
/// all within `timeout`, checks every output against `page`; `server` is
/// the pid of the process that serves them.
fn crowd(commands: Vec<(Command, PathBuf)>, page: &[u8], timeout: Duration, server: u32) -> io::Result<Crowd> {
    // cutime counts every child of this process reaped meanwhile: the crowd
    // is the only one, as nothing else is spawned until it has ended.
    let (clients_before, server_before) = (children_cpu_seconds()?, cpu_seconds(server)?);
    let start = Instant::now();
    let mut procs = Vec::with_capacity(commands.len());
    for (mut cmd, out) in commands {
        procs.push((Proc::spawn(&mut cmd)?, out));
    }
    let spawned = start.elapsed();
    let deadline = start + timeout;
    let mut failures = Vec::new();
    let (mut last_exit, mut process, mut reported) = (start, Vec::new(), Vec::new());
    for (mut p, out) in procs {
        match p.wait(deadline.saturating_duration_since(Instant::now())) {
            Ok(status) if status.success() => {}
            Ok(status) => failures.push(format!("{status}: {:?}", p.stderr)),
            Err(e) => failures.push(e.to_string()),
        }
        last_exit = last_exit.max(p.exited_at().unwrap_or_else(Instant::now));
        process.extend(p.run_time());
        reported.extend(reported_secs(&p.stderr).map(Duration::from_secs_f64));
        match std::fs::read(&out) {
            Ok(got) if got == page => {}
            Ok(got) => failures.push(format!("{}: {} bytes, not the page", out.display(), got.len())),
            Err(e) => failures.push(format!("{}: {e}", out.display())),
        }
    }
    if let Some(first) = failures.first() {
        return Err(io::Error::other(format!("{} of the clients failed; the first: {first}", failures.len())));
    }
    Ok(Crowd {
        wall: last_exit.saturating_duration_since(start),
        spawned,
        process,
        reported,
        clients_cpu: children_cpu_seconds()? - clients_before,
        server_cpu: cpu_seconds(server)? - server_before,
    })
}

/// nginx in the foreground, one process, serving `root` on 127.0.0.1.
struct Nginx {
    proc: Proc,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, root: &Path, within: Duration) -> io::Result<Nginx> {
        // A port that was free a moment ago; nginx fails to start if taken.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let temp = dir.join("nginx-temp");
        std::fs::create_dir_all(&temp)?;
        let d = |p: &Path| p.display().to_string();
        // master_process off: one process serves, as one anonserver does;
        // no access log, as anonserver's packet log is the client's job.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log {err} warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  keepalive_timeout 0;\n  default_type application/octet-stream;\n  \
             client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n  \
             uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  \
             server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    root {root};\n    expires 1h;\n  }}\n}}\n",
            pid = d(&dir.join("nginx.pid")),
            err = d(&dir.join("nginx-error.log")),
            t = d(&temp),
            root = d(root),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        // -e: the error log before the configuration is read, which would
        // otherwise be the system's /var/log/nginx/error.log.
        let mut proc = Proc::spawn(
            Command::new("nginx")
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.join("nginx-error.log")),
        )?;
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + within;
        // It says nothing when ready: ask until it answers (404 for "/" is an
        // answer), bounded by the deadline.
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(1))).build().into();
        loop {
            match agent.get(&url).call() {
                Ok(_) | Err(ureq::Error::StatusCode(_)) => return Ok(Nginx { proc, port }),
                Err(_) if Instant::now() < deadline && proc.exited_at().is_none() => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
                    let _ = proc.signal("TERM");
                    let _ = proc.wait(Duration::from_secs(5));
                    return Err(io::Error::other(format!(
                        "nginx does not answer on {url}: {e}; stderr {:?}; error log: {}",
                        proc.stderr,
                        log.trim()
                    )));
                }
            }
        }
    }

    fn stop(mut self) -> io::Result<()> {
        self.proc.signal("TERM")?;
        self.proc.wait(Duration::from_secs(10)).map(drop)
    }
}

fn spread(v: Vec<Duration>) -> String {
    Spread::of(v).map_or_else(
        || "-".to_string(),
        |s| format!("{:.3} / {:.3} / {:.3}", s.min.as_secs_f64(), s.median.as_secs_f64(), s.max.as_secs_f64()),
    )
}

/// The least, the median and the greatest of some times.
struct Spread {
    min: Duration,
    median: Duration,
    max: Duration,
}

impl Spread {
    /// `None` for no times.
    fn of(mut v: Vec<Duration>) -> Option<Spread> {
        v.sort();
        Some(Spread { min: *v.first()?, median: *v.get(v.len() / 2)?, max: *v.last()? })
    }
}

/// In milliseconds: "median (min-max)".
impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(f, "{:.2} ms ({:.2}-{:.2})", ms(self.median), ms(self.min), ms(self.max))
    }
}

pub fn run(o: &Options) -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root)?;
    let page_file = root.join("page.html");
    let (page, mut server) =
        super::serve_random_page(&o.bins, &page_file, o.size, &dir.path().join("server.log"), &[])?;
    let nginx = match Nginx::start(dir.path(), &root, Duration::from_secs(10)) {
        Ok(n) => n,
        Err(e) => {
            let _ = server.stop(Duration::from_secs(10));
            return Err(e);
        }
    };
    // The proxy: its own page is the same file; pages by URL come from nginx
    // (`expires 1h` gives them a lifetime, so they stay cached).
    let key = dir.path().join("proxy.key");
    let allow = format!("http://127.0.0.1:{}/*", nginx.port);
    let proxy = ServerProcess::start(
        &o.bins.join("anonserver"),
        &dir.path().join("proxy.log"),
        &page_file.to_string_lossy(),
        &["--key", &key.to_string_lossy(), "--fetch-allow", &allow, "--fetch-private"],
        Duration::from_secs(60),
    );
    let result = proxy.and_then(|mut proxy| {
        let bridge = proxy.proc.bridge_line().ok_or_else(|| io::Error::other("the proxy printed no bridge line"));
        let result = bridge.and_then(|bridge| {
            let servers = Servers {
                anon: (server.port, server.proc.pid()),
                nginx: (nginx.port, nginx.proc.pid()),
                proxy: proxy.proc.pid(),
                bridge,
            };
            runs(o, dir.path(), &page, &servers)
        });
        let stopped = proxy.stop(Duration::from_secs(10));
        result.and_then(|cpu| stopped.map(|_| cpu))
    });
    let stopped = (server.stop(Duration::from_secs(10)), nginx.stop());
    let cpu = result?;
    stopped.0?;
    stopped.1?;
    // With every server stopped, so that nothing else runs meanwhile.
    const ROUNDS: usize = 21;
    let (plain, secure) = in_process(&page, ROUNDS)?;
    let extra = secure.median.saturating_sub(plain.median).as_secs_f64();
    let floor = cpu.anon + o.clients as f64 * extra;
    println!(
        "in process, one transfer of the page, both ends, medians of {ROUNDS} (min-max): plaintext fast mode {plain}, \
         secure mode {secure}: {:.2} ms more per client; the anon crowd's CPU plus {} x that: {floor:.2} s, \
         {:.2}x nginx and curl's",
        extra * 1e3,
        o.clients,
        floor / cpu.nginx.max(1e-9)
    );
    Ok(())
}

/// Median CPU seconds of each kind of crowd.
struct CrowdCpu {
    anon: f64,
    nginx: f64,
}

/// The three servers of a run: port and pid of anonserver and nginx, the
/// proxy's pid and bridge line.
struct Servers {
    anon: (u16, u32),
    nginx: (u16, u32),
    proxy: u32,
    bridge: String,
}

/// `anonclient --bridge LINE --url URL` into `file`.
fn proxy_command(bins: &Path, bridge: &str, url: &str, log: &Path, file: &Path) -> Command {
    let mut cmd = Command::new(bins.join("anonclient"));
    cmd.args(["--bridge", bridge, "--url", url, "-l"]).arg(log).arg("-f").arg(file);
    cmd
}

fn runs(o: &Options, dir: &Path, page: &[u8], servers: &Servers) -> io::Result<CrowdCpu> {
    let (anon_port, anon_pid) = servers.anon;
    let (nginx_port, nginx_pid) = servers.nginx;
    let bridge = servers.bridge.as_str();
    println!(
        "{} clients at once, each fetching a {}-byte page ({}) once, on loopback; every file checked byte-exact",
        o.clients,
        o.size,
        anon::units::size(o.size as u64)
    );
    println!(
        "{:<4} {:>12} {:>12} {:>10} {:>13} {:>12} {:>14}   {:<26} {:<26} {:<26} {:<26}   CPU s, clients+server: anon / proxy / nginx",
        "run",
        "anon wall s",
        "nginx wall s",
        "anon/nginx",
        "proxy wall s",
        "proxy/nginx",
        "spawns s a/n",
        "anon process min/med/max",
        "anon transfer min/med/max",
        "curl process min/med/max",
        "proxy process min/med/max"
    );
    let out = dir.join("out");
    let url = format!("http://127.0.0.1:{nginx_port}/page.html");
    // The proxy's cache gets the page before the crowds come.
    std::fs::create_dir_all(&out)?;
    let warm = crowd(
        vec![(proxy_command(&o.bins, bridge, &url, &out.join("warm.log"), &out.join("warm")), out.join("warm"))],
        page,
        o.timeout,
        servers.proxy,
    )?;
    drop(warm);
    let mut ratios = Vec::new();
    let mut proxy_ratios = Vec::new();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for run in 0..o.runs {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let anon_cmds = (0..o.clients)
            .map(|i| {
                let file = out.join(format!("anon-{i}"));
                // Not --quiet: the success line has the client's own time.
                let log = out.join(format!("anon-{i}.log"));
                let cmd = client_command(&o.bins.join("anonclient"), anon_port, &log, &file, &[]);
                (cmd, file)
            })
            .collect();
        let anon = crowd(anon_cmds, page, o.timeout, anon_pid)?;
        let proxy_cmds = (0..o.clients)
            .map(|i| {
                let file = out.join(format!("proxy-{i}"));
                (proxy_command(&o.bins, bridge, &url, &out.join(format!("proxy-{i}.log")), &file), file)
            })
            .collect();
        let proxy = crowd(proxy_cmds, page, o.timeout, servers.proxy)?;
        let max_time = o.timeout.as_secs().max(1).to_string();
        let curl_cmds = (0..o.clients)
            .map(|i| {
                let file = out.join(format!("curl-{i}"));
                let mut cmd = Command::new("curl");
                cmd.args(["-s", "--max-time", &max_time, "-o"]).arg(&file).arg(&url);
                (cmd, file)
            })
            .collect();
        let curl = crowd(curl_cmds, page, o.timeout, nginx_pid)?;
        let ratio = anon.wall.as_secs_f64() / curl.wall.as_secs_f64().max(1e-9);
        ratios.push(ratio);
        let proxy_ratio = proxy.wall.as_secs_f64() / curl.wall.as_secs_f64().max(1e-9);
        proxy_ratios.push(proxy_ratio);
        for (v, c) in cpu.iter_mut().zip([&anon, &proxy, &curl]) {
            v.push(c.cpu());
        }
        let cpus = [&anon, &proxy, &curl].map(|c| format!("{:.2}+{:.2}", c.clients_cpu, c.server_cpu)).join(" / ");
        println!(
            "{:<4} {:>12.3} {:>12.3} {:>9.2}x {:>13.3} {:>11.2}x {:>14}   {:<26} {:<26} {:<26} {:<26}   {}",
            run + 1,
            anon.wall.as_secs_f64(),
            curl.wall.as_secs_f64(),
            ratio,
            proxy.wall.as_secs_f64(),
            proxy_ratio,
            format!("{:.2}/{:.2}", anon.spawned.as_secs_f64(), curl.spawned.as_secs_f64()),
            spread(anon.process),
            spread(anon.reported),
            spread(curl.process),
            spread(proxy.process),
            cpus
        );
        io::stdout().flush()?;
    }
    ratios.sort_by(f64::total_cmp);
    proxy_ratios.sort_by(f64::total_cmp);
    if let Some(m) = ratios.get(ratios.len() / 2).filter(|_| ratios.len() > 1) {
        println!("median anon/nginx over {} runs: {m:.2}x", ratios.len());
    }
    if let Some(m) = proxy_ratios.get(proxy_ratios.len() / 2).filter(|_| proxy_ratios.len() > 1) {
        println!("median proxy (cached, secure mode)/nginx over {} runs: {m:.2}x", proxy_ratios.len());
    }
    let [anon_cpu, proxy_cpu, nginx_cpu] = cpu.map(|v| super::median_f64(&v));
    println!(
        "CPU s of a crowd, median: anon {anon_cpu:.2}, proxy {proxy_cpu:.2}, nginx and curl {nginx_cpu:.2}: \
         proxy/nginx {:.2}x",
        proxy_cpu / nginx_cpu.max(1e-9)
    );
    Ok(CrowdCpu { anon: anon_cpu, nginx: nginx_cpu })
}

/// One transfer of `page` over the simulator's clean link in plaintext
/// fast mode, `rounds` times after one not counted, then as many in secure
/// mode (a page asked for by name: the same transfer, sealed; the proxy's
/// crowd asks by URL, which adds the request's handling). Each is timed
/// from the first datagram to the end of the exchange, so without the
/// making of the client's static key and the server's start: both ends'
/// protocol cores on this thread, and the simulator's link and packet
/// logs, which cost the same in both modes.
///
/// In blocks, plaintext first: a secure run frees its server's replay
/// filter, megabytes, which raises glibc's dynamic mmap and trim thresholds
/// for the rest of the process; a plaintext transfer then reuses heap
/// pages instead of faulting them in again, and takes 0.98 ms instead of
/// 1.78 (by hand, and the same with the thresholds raised from the start
/// through MALLOC_TRIM_THRESHOLD_), where a secure one takes 2.9-3.0 ms
/// either way. A client process has the defaults: the plaintext block
/// runs under them, and the secure block is not slowed by the order.
fn in_process(page: &[u8], rounds: usize) -> io::Result<(Spread, Spread)> {
    let link = LinkConfig::clean(Duration::from_micros(50));
    let setup = |seed| Setup::new(seed, link, page.to_vec());
    let mut plain =
        (0..=rounds as u64).map(|seed| timed(Sim::new(setup(seed)), page)).collect::<io::Result<Vec<_>>>()?;
    let mut secure = (0..=rounds as u64)
        .map(|seed| timed(Sim::secure(setup(seed), SecureSetup::new(seed)), page))
        .collect::<io::Result<Vec<_>>>()?;
    // The first of each is not counted: it warms the caches.
    let spread = |v: Vec<Duration>| Spread::of(v).ok_or_else(|| io::Error::other("no in-process rounds"));
    Ok((spread(plain.split_off(1))?, spread(secure.split_off(1))?))
}

/// How long `sim` takes to run its exchange, which must end with its first
/// client holding the page, whole.
fn timed<S: SimEndpoint, C: SimPeer>(mut sim: Sim<S, C>, page: &[u8]) -> io::Result<Duration> {
    let t = Instant::now();
    let report = sim.run(Duration::from_secs(60), 1_000_000);
    let took = t.elapsed();
    let got = sim.clients.first().map(|c| c.data.as_slice());
    let ended = report.quiescent && report.outcomes.iter().all(|o| matches!(o, Some(Ok(()))));
    if ended && got == Some(page) {
        return Ok(took);
    }
    Err(io::Error::other(format!(
        "the in-process transfer failed: outcomes {:?}, quiescent {}, {} of {} bytes",
        report.outcomes,
        report.quiescent,
        got.map_or(0, <[u8]>::len),
        page.len()
    )))
}
