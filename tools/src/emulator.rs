//! A link emulator at the IP level, for benchmarks over a path with a rate,
//! a delay and impairments (this kernel has no netem).
//!
//! Two network namespaces each hold one end of the path: a TUN device whose
//! packets the emulator reads, passes through the simulator's own link model
//! ([`anon_sim::Network`]: seeded loss, bursty loss, duplication, jitter,
//! reordering, and a rate limit with a bounded tail-drop queue), and writes
//! into the other namespace's TUN device when they are due. Working on IP
//! packets, it carries TCP, QUIC and our protocol over the very same path.

use std::io;
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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Packets read from each end.
    pub received: [u64; 2],
    /// Packets written to the far end (duplicates included).
    pub delivered: [u64; 2],
    /// Packets lost by the loss settings (random and bursty loss).
    pub random_losses: [u64; 2],
    /// Packets dropped at a full bottleneck queue (tail drop).
    pub queue_drops: [u64; 2],
    /// Extra copies made.
    pub duplicated: u64,
    /// Writes the kernel refused.
    pub write_errors: u64,
}

/// Start of the line `anon-link` prints on stderr for each newline it
/// reads on stdin: the counters so far, as `key=value` words.
pub const COUNTERS: &str = "anon-link: counters";

impl Stats {
    /// The counters line ([`COUNTERS`] and `key=value` words).
    pub fn counters_line(&self) -> String {
        let mut line = COUNTERS.to_string();
        for (key, value) in self.fields() {
            line.push_str(&format!(" {key}={value}"));
        }
        line
    }

    /// Reads a [`counters_line`](Self::counters_line) back; `None` if it
    /// is not one or lacks a field.
    pub fn parse(line: &str) -> Option<Stats> {
        let words = line.split_once(COUNTERS)?.1;
        let get = |key: &str| {
            words.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        Some(Stats {
            received: [get("ab_in")?, get("ba_in")?],
            delivered: [get("ab_out")?, get("ba_out")?],
            random_losses: [get("ab_random_loss")?, get("ba_random_loss")?],
            queue_drops: [get("ab_queue_drop")?, get("ba_queue_drop")?],
            duplicated: get("duplicated")?,
            write_errors: get("write_errors")?,
        })
    }

    /// What happened between `earlier` and this.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let d = |[a0, a1]: [u64; 2], [b0, b1]: [u64; 2]| [a0.saturating_sub(b0), a1.saturating_sub(b1)];
        Stats {
            received: d(self.received, earlier.received),
            delivered: d(self.delivered, earlier.delivered),
            random_losses: d(self.random_losses, earlier.random_losses),
            queue_drops: d(self.queue_drops, earlier.queue_drops),
            duplicated: self.duplicated.saturating_sub(earlier.duplicated),
            write_errors: self.write_errors.saturating_sub(earlier.write_errors),
        }
    }

    fn fields(&self) -> [(&'static str, u64); 10] {
        let [ab_in, ba_in] = self.received;
        let [ab_out, ba_out] = self.delivered;
        let [ab_loss, ba_loss] = self.random_losses;
        let [ab_queue, ba_queue] = self.queue_drops;
        [
            ("ab_in", ab_in),
            ("ab_out", ab_out),
            ("ab_random_loss", ab_loss),
            ("ab_queue_drop", ab_queue),
            ("ba_in", ba_in),
            ("ba_out", ba_out),
            ("ba_random_loss", ba_loss),
            ("ba_queue_drop", ba_queue),
            ("duplicated", self.duplicated),
            ("write_errors", self.write_errors),
        ]
    }
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
/// Each newline read on stdin prints the counters so far on stderr.
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
            let mut bytes = [0u8; 64];
            // Straight from the descriptor: a buffered read could keep a
            // newline back where poll no longer sees it.
            match rustix::io::read(stdin, &mut bytes) {
                Ok(0) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break,
                Ok(n) => {
                    stats.duplicated = net.duplicated;
                    for _ in bytes.iter().take(n).filter(|&&b| b == b'\n') {
                        eprintln!("{}", stats.counters_line());
                    }
                }
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
                        // The model counts drops in both directions together;
                        // its counters' steps over one packet say which
                        // direction lost it, and why.
                        let (dropped, queue) = (net.dropped, net.queue_drops);
                        net.send(Instant::now(), from, to, buf.get(..n).unwrap_or_default());
                        let at_queue = net.queue_drops - queue;
                        if let Some(c) = stats.queue_drops.get_mut(dir) {
                            *c += at_queue;
                        }
                        // No drop filter is set here: every other drop is the
                        // random (or bursty) loss.
                        if let Some(c) = stats.random_losses.get_mut(dir) {
                            *c += net.dropped - dropped - at_queue;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    stats.duplicated = net.duplicated;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_line_reads_back() {
        let s = Stats {
            received: [1, 2],
            delivered: [3, 4],
            random_losses: [5, 6],
            queue_drops: [7, 8],
            duplicated: 9,
            write_errors: 10,
        };
        let line = s.counters_line();
        assert_eq!(Stats::parse(&line), Some(s));
        assert_eq!(Stats::parse(&format!("noise {line}")), Some(s));
        assert_eq!(Stats::parse("anon-link: ready"), None);
        assert_eq!(Stats::parse(&line.replace(" duplicated=9", "")), None);
        let later = Stats { random_losses: [15, 6], ..s };
        assert_eq!(later.since(&s).random_losses, [10, 0]);
        assert_eq!(s.since(&later).random_losses, [0, 0]);
    }
}
