//! `anon-secure-pcap`: one secure-mode transfer in the simulator (anon-sim,
//! seeded, so the same arguments give the same bytes), written as a classic
//! libpcap capture with the client's key log, for the dissector test
//! (wireshark/test.sh) and anyone trying wireshark/anon.lua and
//! anon-keylog-decrypt without running the programs.
//!
//! ```text
//! anon-secure-pcap --dir DIR [--size BYTES] [--seed N] [--loss P]
//! ```
//!
//! Writes into DIR:
//! - `secure.pcap`: every datagram either end offered to the link (a
//!   capture at the sender: the link's losses come after it), Ethernet
//!   framing, IPv4 and UDP with checksums; the simulator's addresses with
//!   their first octet made 127 (the server is 127.0.0.1:30000);
//! - `keylog.txt`: the client's key log line (`ANON_SECURE ...`), as the
//!   client writes it when `ANON_KEYLOG` names a file;
//! - `page.bin`: the page served;
//! - `truth.tsv`: per frame, the inner header the endpoint sealed in it:
//!   frame number, `c2s` or `s2c`, seq, ack and flags (as the dissector's
//!   summary: "SYN, ACK").

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;
use std::{cell::RefCell, fs};

use anon_proto::wire::{Flags, Header};
use anon_sim::{Datagram, LinkConfig, SERVER_ADDR, SIM_UNIX_MS, SecureSetup, Setup, Sim, page};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Writes a pcap of a simulated secure-mode transfer, with its key log")]
struct Args {
    /// Directory for secure.pcap, keylog.txt, page.bin and truth.tsv.
    #[arg(long)]
    dir: PathBuf,
    /// Page size in bytes.
    #[arg(long, default_value_t = 100_003)]
    size: usize,
    /// Seed of every random choice (keys, padding, the link).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Loss probability of the link (with duplication and reordering when
    /// not zero).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
}

/// A captured datagram: virtual time since the start, and the datagram.
type Captured = Vec<(Duration, Datagram)>;

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("anon-secure-pcap: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<String, String> {
    fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let body = page(args.size, args.seed);
    let link =
        if args.loss > 0.0 { LinkConfig::hostile(args.loss) } else { LinkConfig::clean(Duration::from_millis(10)) };
    let mut sim = Sim::secure(Setup::new(args.seed, link, body.clone()), SecureSetup::new(args.seed));
    sim.trace = Some(Vec::new());

    let captured: Rc<RefCell<Captured>> = Rc::default();
    let clock: Rc<RefCell<Duration>> = Rc::default();
    let (sink, at) = (Rc::clone(&captured), Rc::clone(&clock));
    sim.net.set_filter(Box::new(move |d: &Datagram, _| {
        sink.borrow_mut().push((*at.borrow(), d.clone()));
        false
    }));

    // Step the simulation a millisecond at a time, so that each datagram
    // gets the time it was sent (to the millisecond).
    let mut key_log = None;
    let mut t = Duration::ZERO;
    let quiescent = loop {
        t += Duration::from_millis(1);
        *clock.borrow_mut() = t;
        let report = sim.run(t, u64::MAX);
        if key_log.is_none() {
            key_log = sim.clients.first().and_then(|c| c.conn.key_log()).map(|k| k.0.clone());
        }
        if report.quiescent || t > Duration::from_secs(300) {
            break report.quiescent;
        }
    };
    let client = sim.clients.first().ok_or("no client")?;
    if !quiescent || client.conn.outcome() != Some(&Ok(())) || client.data != body {
        return Err(format!("the transfer did not complete: {:?}", client.conn.outcome()));
    }
    let key_log = key_log.ok_or("the client wrote no key log line")?;
    let trace = sim.trace.take().unwrap_or_default();
    let captured = captured.borrow();
    if trace.len() != captured.len() {
        return Err(format!("{} datagrams captured but {} traced", captured.len(), trace.len()));
    }

    let mut pcap = pcap_header();
    let mut truth = String::new();
    for (n, ((at, d), (from, h, _))) in captured.iter().zip(&trace).enumerate() {
        if *from != d.from {
            return Err(format!("frame {}: captured from {} but traced from {from}", n + 1, d.from));
        }
        pcap_record(&mut pcap, *at, d.from, d.to, &d.bytes)?;
        let dir = if d.to == SERVER_ADDR { "c2s" } else { "s2c" };
        truth.push_str(&format!("{}\t{dir}\t{}\t{}\t{}\n", n + 1, h.seq.0, h.ack.0, summary(h)));
    }
    let write = |name: &str, bytes: &[u8]| {
        let path = args.dir.join(name);
        fs::File::create(&path).and_then(|mut f| f.write_all(bytes)).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("secure.pcap", &pcap)?;
    write("keylog.txt", format!("# anon key log (simulated, seed {})\n{key_log}\n", args.seed).as_bytes())?;
    write("page.bin", &body)?;
    write("truth.tsv", truth.as_bytes())?;
    Ok(format!(
        "{} datagrams ({} to the server) of a {}-byte secure transfer in {:.3} s of virtual time written to {}",
        captured.len(),
        captured.iter().filter(|(_, d)| d.to == SERVER_ADDR).count(),
        body.len(),
        t.as_secs_f64(),
        args.dir.display()
    ))
}

/// The dissector's flags summary: `"SYN, ACK"`, `"FIN, ACK"`, `"ACK"`, `"<none>"`.
fn summary(h: &Header) -> String {
    let names: Vec<&str> = [(Flags::SYN, "SYN"), (Flags::FIN, "FIN"), (Flags::ACK, "ACK")]
        .into_iter()
        .filter(|(f, _)| h.flags.contains(*f))
        .map(|(_, n)| n)
        .collect();
    if names.is_empty() { "<none>".into() } else { names.join(", ") }
}

fn loopback(addr: SocketAddr) -> Result<(Ipv4Addr, u16), String> {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [_, b, c, d] = ip.octets();
            Ok((Ipv4Addr::new(127, b, c, d), addr.port()))
        }
        IpAddr::V6(_) => Err(format!("{addr}: only IPv4 is written")),
    }
}

fn pcap_header() -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&65_535u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    h
}

/// The ones' complement sum of `data` (RFC 1071), folded.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0)]));
    }
    if let Some(&last) = chunks.remainder().first() {
        sum += u32::from(last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pcap_record(
    out: &mut Vec<u8>,
    at: Duration,
    from: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) -> Result<(), String> {
    let ((src, sport), (dst, dport)) = (loopback(from)?, loopback(to)?);
    let udp_len = u16::try_from(8 + payload.len()).map_err(|_| "datagram too long")?;
    let ip_len = udp_len.checked_add(20).ok_or("datagram too long")?;
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(0, &ip);
    if let Some(slot) = ip.get_mut(10..12) {
        slot.copy_from_slice(&sum.to_be_bytes());
    }
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let pre = u32::from(!checksum(0, &pseudo));
    let sum = match checksum(pre, &udp) {
        0 => 0xffff,
        s => s,
    };
    if let Some(slot) = udp.get_mut(6..8) {
        slot.copy_from_slice(&sum.to_be_bytes());
    }
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    let wall = Duration::from_millis(SIM_UNIX_MS) + at;
    let len = u32::try_from(frame.len()).map_err(|_| "frame too long")?;
    out.extend_from_slice(&(wall.as_secs() as u32).to_le_bytes());
    out.extend_from_slice(&wall.subsec_micros().to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame);
    Ok(())
}
