//! `anon-bench load`: many concurrent clients against one real `anonserver`
//! on loopback. Each client is the protocol core's own [`ClientConn`] on its
//! own UDP socket (so its own source port), in fast or baseline mode, driven
//! by one task; every byte is checked against the page as it arrives.
//! Reports completion time, the server's peak memory, memory per connection
//! and CPU time.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anon_proto::{ClientConfig, ClientConn};
use anon_tools::process::ServerProcess;
use rand::{Rng, RngCore, SeedableRng};

/// Options of `anon-bench load`.
#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    pub size: usize,
    /// Share of clients that offer fast mode (the rest ask for baseline).
    pub fast_share: f64,
    /// Time over which the clients start.
    pub ramp: Duration,
    /// Deadline for the whole run.
    pub timeout: Duration,
    /// Meanwhile, one socket sends malformed and random datagrams to the
    /// server as fast as it can.
    pub storm: bool,
}

/// Sends junk to `server` from one socket as fast as the kernel takes it,
/// until `stop` is set (or an hour passes); returns the datagrams sent.
fn storm(server: SocketAddr, stop: Arc<std::sync::atomic::AtomicBool>) -> io::Result<u64> {
    use anon_proto::wire::{Flags, Header, Seq};
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut sent = 0u64;
    let mut d = Vec::with_capacity(1500);
    let started = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < Duration::from_secs(3600) {
        d.clear();
        match sent % 4 {
            // Shorter than a header.
            0 => d.extend(rng.random::<[u8; 8]>().into_iter().take((sent % 12) as usize % 8)),
            // A header with random numbers and flags (SYNs among them).
            1 => Header::new(Seq(rng.random()), Seq(rng.random()), Flags::from_word(rng.random::<u32>() & 7))
                .encode(&[], &mut d),
            // Random bytes, up to a full datagram.
            2 => d.extend((0..rng.random_range(12..1400)).map(|_| rng.random::<u8>())),
            // A forged ACK with a random SACK-like payload.
            _ => {
                Header::new(Seq(rng.random()), Seq(rng.random()), Flags::ACK).encode(&rng.random::<[u8; 20]>(), &mut d)
            }
        }
        if socket.send_to(&d, server).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

/// What one client saw.
enum Outcome {
    Done,
    Failed(String),
}

async fn client(server: SocketAddr, fast: bool, page: Arc<[u8]>, deadline: tokio::time::Instant) -> Outcome {
    let result = async {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(server).await?;
        let config =
            ClientConfig { fast: if fast { ClientConfig::default().fast } else { None }, ..ClientConfig::default() };
        let mut conn = ClientConn::new(config, rand::rng().random(), Instant::now());
        let mut rx = vec![0u8; 65_536];
        let mut tx = Vec::new();
        let mut offset = 0usize;
        loop {
            let now = Instant::now();
            while conn.poll_transmit(now, &mut tx) {
                // A send the kernel refuses is a lost datagram: timers cover it.
                let _ = socket.send(&tx).await;
            }
            let readable = conn.readable();
            if page.get(offset..offset + readable.len()) != Some(readable) {
                return Err(io::Error::other(format!("wrong bytes at offset {offset}")));
            }
            offset += readable.len();
            let n = readable.len();
            conn.consume(n);
            while conn.poll_event().is_some() {}
            if let Some(outcome) = conn.outcome() {
                return match outcome {
                    Ok(()) if offset == page.len() => Ok(()),
                    Ok(()) => Err(io::Error::other(format!("finished after {offset} of {} bytes", page.len()))),
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
            }
            let wake = conn.poll_timeout().map(tokio::time::Instant::from_std).unwrap_or(deadline).min(deadline);
            tokio::select! {
                got = socket.recv(&mut rx) => {
                    if let Ok(n) = got {
                        conn.handle(Instant::now(), rx.get(..n).unwrap_or_default());
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(io::Error::other(format!("deadline, {offset} bytes received")));
                    }
                    conn.handle_timeout(Instant::now());
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// CPU seconds and resident/peak memory (KiB) of a process.
fn usage(pid: u32) -> io::Result<(f64, u64, u64)> {
    let (rss, hwm) = super::procfs::memory_kib(pid)?;
    Ok((super::procfs::cpu_seconds(pid)?, rss, hwm))
}

pub fn run(bins: &Path, o: &Options) -> io::Result<()> {
    let mut page = vec![0u8; o.size];
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut page);
    let dir = tempfile::tempdir()?;
    let page_file = dir.path().join("page");
    std::fs::write(&page_file, &page)?;
    let limit = (o.clients * 2).to_string();
    let mut server = ServerProcess::start(
        &bins.join("anonserver"),
        &dir.path().join("server.log"),
        &page_file.to_string_lossy(),
        &["--max-per-source", &limit, "--max-connections", &limit, "--stats-interval", "0"],
        Duration::from_secs(60),
    )?;
    let pid = server.proc.pid();
    let (cpu_before, idle_kib, _) = usage(pid)?;
    let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
    let page: Arc<[u8]> = page.into();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = o.storm.then(|| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || storm(addr, stop))
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let start = Instant::now();
    let (done, failures) = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + o.timeout;
        let mut tasks = tokio::task::JoinSet::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        for i in 0..o.clients {
            // Start times spread evenly over the ramp.
            let at = tokio::time::Instant::now() + o.ramp.mul_f64(i as f64 / o.clients.max(1) as f64);
            let fast = rng.random_bool(o.fast_share.clamp(0.0, 1.0));
            let page = Arc::clone(&page);
            tasks.spawn(async move {
                tokio::time::sleep_until(at).await;
                (fast, client(addr, fast, page, deadline).await)
            });
        }
        let mut done = [0usize; 2];
        let mut failures = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((fast, Outcome::Done)) => {
                    if let Some(d) = done.get_mut(usize::from(fast)) {
                        *d += 1;
                    }
                }
                Ok((_, Outcome::Failed(why))) => failures.push(why),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (done, failures)
    });
    let elapsed = start.elapsed();
    let (cpu_after, _, peak_kib) = usage(pid)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let storm_sent = match storm.map(|t| t.join()) {
        Some(Ok(Ok(n))) => Some(n),
        Some(Ok(Err(e))) => return Err(e),
        Some(Err(_)) => return Err(io::Error::other("the storm thread panicked")),
        None => None,
    };
    let stopped = server.stop(Duration::from_secs(30))?;
    let per_conn = peak_kib.saturating_sub(idle_kib) * 1024 / o.clients.max(1) as u64;
    println!(
        "{} clients ({} fast, {} baseline) of a {}-byte page, started over {:?}, on loopback",
        o.clients, done[1], done[0], o.size, o.ramp
    );
    println!("  all byte-exact: {}", failures.is_empty());
    if let Some(n) = storm_sent {
        println!("  meanwhile {n} junk datagrams from one socket ({:.0} per second)", n as f64 / elapsed.as_secs_f64());
    }
    println!("  completion time: {:.2} s", elapsed.as_secs_f64());
    println!("  server: idle RSS {idle_kib} KiB, peak RSS {peak_kib} KiB, {per_conn} bytes per connection at peak");
    println!("  server CPU time: {:.2} s; exit {stopped}", cpu_after - cpu_before);
    if let Some(stats) = server.proc.stderr.iter().find(|l| l.contains("stopped")) {
        println!("  server: {}", stats.split("  INFO ").last().unwrap_or(stats));
    }
    if !failures.is_empty() {
        let mut sample = failures.clone();
        sample.truncate(5);
        return Err(io::Error::other(format!("{} clients failed, e.g. {sample:?}", failures.len())));
    }
    Ok(())
}
