//! `anon-bench handshakes`: what a flood of valid secure first messages
//! (a leaked bridge line, spoofed sources) costs the secure server's one
//! thread, with its default read budget and cookies (docs/PROTOCOL.md §8.3,
//! rule 1) against the same server reading every message, in one run and
//! in process (no sockets: the protocol core's own cost per datagram).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anon_proto::secure::{SecureClient, SecureClientConfig, SecureServer, SecureServerConfig, StaticSecret, WallClock};
use anon_proto::{ClientConfig, ServerConfig};
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;

#[derive(Debug, Clone)]
pub struct Options {
    /// First messages in the flood.
    pub messages: usize,
    /// Their rate, in virtual time (the server's clock).
    pub rate: u32,
}

struct Outcome {
    cpu: Duration,
    reads: u64,
    cookie_replies: u64,
    sent_bytes: usize,
}

fn flood(key: &StaticSecret, budget: Option<u32>, msgs: &[Vec<u8>], o: &Options, t0: Instant) -> Outcome {
    let clock = WallClock { at: t0, unix_ms: 1_800_000_000_000 };
    let mut secure = SecureServerConfig::new(key.clone(), vec!["index".into()], clock);
    if let Some(b) = budget {
        secure.handshake_reads = b;
    }
    let pages = vec![Bytes::from(vec![7u8; 100_000])];
    let mut server =
        SecureServer::new(secure, ServerConfig::default(), pages, None, Box::new(StdRng::seed_from_u64(1)));
    let mut buf = Vec::new();
    let mut sent_bytes = 0;
    let start = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let now = t0 + Duration::from_secs_f64(i as f64 / f64::from(o.rate.max(1)));
        let from = SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i as u32), 40_000));
        server.handle_kind(now, from, m);
        while let Some(t) = server.poll_transmit_append(now, &mut buf) {
            sent_bytes += t.len;
            buf.clear();
        }
    }
    let cpu = start.elapsed();
    let s = server.secure_stats();
    Outcome { cpu, reads: s.noise_reads, cookie_replies: s.cookie_replies, sent_bytes }
}

pub fn run(o: &Options) -> io::Result<()> {
    let t0 = Instant::now();
    let key = StaticSecret::generate(&mut StdRng::seed_from_u64(5));
    let clock = WallClock { at: t0, unix_ms: 1_800_000_000_000 };
    eprintln!("making {} first messages…", o.messages);
    let msgs: Vec<Vec<u8>> = (0..o.messages)
        .map(|i| {
            let cfg = SecureClientConfig {
                server: key.public(),
                key: None,
                page: "index".into(),
                url: None,
                resume: None,
                clock,
            };
            let mut c = SecureClient::new(cfg, ClientConfig::default(), Box::new(StdRng::seed_from_u64(i as u64)), t0);
            let mut m = Vec::new();
            let _ = c.poll_transmit(t0, &mut m);
            m
        })
        .collect();
    let received: usize = msgs.iter().map(Vec::len).sum();
    let all = flood(&key, Some(u32::MAX), &msgs, o, t0);
    let budgeted = flood(&key, None, &msgs, o, t0);
    let secs = o.messages as f64 / f64::from(o.rate.max(1));
    println!(
        "{} valid first messages from as many spoofed sources, {} a second ({secs:.2} s of virtual time), in process",
        o.messages, o.rate
    );
    println!(
        "{:<32} {:>12} {:>14} {:>10} {:>14} {:>16}",
        "server", "CPU s", "us / message", "reads", "cookie replies", "bytes sent/recv"
    );
    for (name, r) in [("reads every message", &all), ("default budget, cookies", &budgeted)] {
        println!(
            "{:<32} {:>12.3} {:>14.1} {:>10} {:>14} {:>16.2}",
            name,
            r.cpu.as_secs_f64(),
            r.cpu.as_secs_f64() * 1e6 / o.messages as f64,
            r.reads,
            r.cookie_replies,
            r.sent_bytes as f64 / received.max(1) as f64
        );
    }
    println!(
        "CPU per second of flood: {:.2} s reading every message, {:.2} s with the budget ({:.1}x less)",
        all.cpu.as_secs_f64() / secs,
        budgeted.cpu.as_secs_f64() / secs,
        all.cpu.as_secs_f64() / budgeted.cpu.as_secs_f64().max(1e-9)
    );
    Ok(())
}
