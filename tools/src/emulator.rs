//! A link emulator at the IP level, for benchmarks over a path with a rate,
//! a delay and impairments (this kernel has no netem).
//!
//! Two network namespaces each hold one end of the path: a TUN device whose
//! packets the emulator reads, passes through the simulator's own link model
//! ([`anon_sim::Network`]: seeded loss, bursty loss, duplication, jitter,
//! reordering, and a rate limit with a bounded tail-drop queue), and writes
//! into the other namespace's TUN device when they are due. Working on IP
//! packets, it carries TCP, QUIC and our protocol over the very same path.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anon_sim::{LinkConfig, Network};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use tun_rs::{DeviceBuilder, SyncDevice};

/// The two ends of the emulated path.
#[derive(Debug, Clone)]
pub struct Ends {
    /// Namespace of end A (the server side in the bench).
    pub ns_a: String,
    /// Namespace of end B (the client side).
    pub ns_b: String,
    /// Address of end A on the path.
    pub addr_a: Ipv4Addr,
    /// Address of end B on the path.
    pub addr_b: Ipv4Addr,
}

/// What crossed the emulator, per direction (index 0: A to B).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Packets read from each end.
    pub received: [u64; 2],
    /// Packets written to the far end (duplicates included).
    pub delivered: [u64; 2],
    /// Packets the model dropped (random, bursty or at a full queue).
    pub dropped: u64,
    /// Of those, drops at a full bottleneck queue.
    pub queue_drops: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Writes the kernel refused.
    pub write_errors: u64,
}

// The link model keys directions by sender address; these stand for the ends.
const FROM_A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(0, 0, 0, 1)), 1);
const FROM_B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(0, 0, 0, 2)), 2);

/// Runs `ip ARGS`; its stderr becomes the error.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Creates a TUN device, moves it into `ns` and gives it `local` with a
/// point-to-point route to `peer`.
fn tun_in(ns: &str, name: &str, local: Ipv4Addr, peer: Ipv4Addr) -> io::Result<SyncDevice> {
    let dev = DeviceBuilder::new().name(name).mtu(1500).build_sync()?;
    dev.set_nonblocking(true)?;
    ip(&["link", "set", name, "netns", ns])?;
    let (local, peer) = (local.to_string(), peer.to_string());
    ip(&["-n", ns, "addr", "add", &local, "peer", &peer, "dev", name])?;
    // A long transmit queue: the emulator, not the kernel, decides drops.
    ip(&["-n", ns, "link", "set", name, "txqueuelen", "10000", "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(dev)
}

/// Forwards packets between the two ends through the link model until
/// `until`, or until stdin reaches its end (how a parent process stops it).
pub fn run(ends: &Ends, config: LinkConfig, seed: u64, until: Instant) -> io::Result<Stats> {
    // Names are per process so that two emulators never collide.
    let pid = std::process::id();
    let a = tun_in(&ends.ns_a, &format!("emA{pid}"), ends.addr_a, ends.addr_b)?;
    let b = tun_in(&ends.ns_b, &format!("emB{pid}"), ends.addr_b, ends.addr_a)?;
    eprintln!("anon-link: ready");
    forward(&a, &b, config, seed, until)
}

fn forward(a: &SyncDevice, b: &SyncDevice, config: LinkConfig, seed: u64, until: Instant) -> io::Result<Stats> {
    let mut net = Network::new(config, StdRng::seed_from_u64(seed));
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 65536];
    let stdin = rustix::stdio::stdin();
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        while let Some(d) = net.pop_due(now) {
            let (dev, dir) = if d.from == FROM_A { (b, 0) } else { (a, 1) };
            match dev.send(&d.bytes) {
                Ok(_) => {
                    if let Some(n) = stats.delivered.get_mut(dir) {
                        *n += 1;
                    }
                }
                Err(_) => stats.write_errors += 1,
            }
        }
        let wait = net
            .next_delivery()
            .map_or(Duration::from_millis(100), |t| t.saturating_duration_since(now))
            .min(until.saturating_duration_since(now));
        let timeout = Timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos().into() };
        let mut fds =
            [PollFd::new(a, PollFlags::IN), PollFd::new(b, PollFlags::IN), PollFd::new(&stdin, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        if ready.get(2) == Some(&true) {
            let mut byte = [0u8; 64];
            if matches!(io::stdin().read(&mut byte), Ok(0) | Err(_)) {
                break;
            }
        }
        for (dir, (dev, from, to)) in [(a, FROM_A, FROM_B), (b, FROM_B, FROM_A)].into_iter().enumerate() {
            if ready.get(dir) != Some(&true) {
                continue;
            }
            // Bounded, so one busy direction cannot starve deliveries.
            for _ in 0..256 {
                match dev.recv(&mut buf) {
                    Ok(n) => {
                        if let Some(c) = stats.received.get_mut(dir) {
                            *c += 1;
                        }
                        net.send(Instant::now(), from, to, buf.get(..n).unwrap_or_default());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    stats.dropped = net.dropped;
    stats.queue_drops = net.queue_drops;
    stats.duplicated = net.duplicated;
    Ok(stats)
}
