//! `anon-link`: the IP-level link emulator between two network namespaces
//! (see `anon_tools::emulator`). The bench starts one per scenario; by hand:
//!
//! ```text
//! ip netns add a; ip netns add b
//! anon-link --ns-a a --ns-b b --rate-mbit 100 --delay-ms 25 --loss 0.01
//! ```
//!
//! It runs until its stdin ends (a parent closes the pipe, or Ctrl-D) or
//! `--max-seconds` pass, then prints what it forwarded and dropped, split by
//! cause (random loss, queue overflow), and the same as a counters line.
//! Each newline on its stdin prints that counters line so far, so that a
//! parent can count what one transfer lost.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anon_sim::LinkConfig;
use anon_tools::emulator::{self, Ends};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Emulates a link (rate, delay, loss, duplication, reordering) between two network namespaces")]
struct Args {
    /// Namespace of end A (the server side).
    #[arg(long)]
    ns_a: String,
    /// Namespace of end B (the client side).
    #[arg(long)]
    ns_b: String,
    /// Address of end A.
    #[arg(long, default_value = "10.201.0.1")]
    addr_a: Ipv4Addr,
    /// Address of end B.
    #[arg(long, default_value = "10.201.0.2")]
    addr_b: Ipv4Addr,
    /// Rate of each direction in Mbit/s (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    rate_mbit: f64,
    /// Bottleneck queue in bytes (default: one bandwidth-delay product).
    #[arg(long)]
    queue_bytes: Option<u64>,
    /// One-way delay in milliseconds (the round trip is twice this).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Extra one-way delay, uniform in 0..JITTER milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Probability that a packet is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Bursty loss (Gilbert-Elliott): ENTER,LEAVE,LOSS probabilities.
    #[arg(long, value_parser = parse_burst)]
    burst: Option<(f64, f64, f64)>,
    /// Probability that a packet is delivered twice.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability that a packet is held back so later ones overtake it.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// How long a reordered packet is held back, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    reorder_ms: f64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds whatever happens.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
}

fn parse_burst(s: &str) -> Result<(f64, f64, f64), String> {
    let v: Vec<f64> =
        s.split(',').map(|p| p.trim().parse::<f64>().map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    match v.as_slice() {
        [enter, leave, loss] => Ok((*enter, *leave, *loss)),
        _ => Err("expected ENTER,LEAVE,LOSS".into()),
    }
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0) / 1000.0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let delay = ms(args.delay_ms);
    let mut link = if args.rate_mbit > 0.0 {
        let rate = (args.rate_mbit * 1e6 / 8.0) as u64;
        LinkConfig {
            rate: Some(rate),
            queue: (rate as f64 * (delay * 2).as_secs_f64()).max(64_000.0) as u64,
            ..LinkConfig::clean(delay)
        }
    } else {
        LinkConfig::clean(delay)
    };
    if let Some(q) = args.queue_bytes {
        link.queue = q;
    }
    link.jitter = ms(args.jitter_ms);
    link.loss = args.loss;
    link.burst = args.burst;
    link.duplicate = args.duplicate;
    link.reorder = args.reorder;
    link.reorder_delay = ms(args.reorder_ms);
    let ends = Ends { ns_a: args.ns_a, ns_b: args.ns_b, addr_a: args.addr_a, addr_b: args.addr_b };
    let until = Instant::now() + Duration::from_secs(args.max_seconds);
    match emulator::run(&ends, link, args.seed, until) {
        Ok(s) => {
            eprintln!(
                "anon-link: A->B {} in {} out ({} random losses, {} queue drops), \
                 B->A {} in {} out ({} random losses, {} queue drops), {} duplicated, {} write errors",
                s.received[0],
                s.delivered[0],
                s.random_losses[0],
                s.queue_drops[0],
                s.received[1],
                s.delivered[1],
                s.random_losses[1],
                s.queue_drops[1],
                s.duplicated,
                s.write_errors
            );
            eprintln!("{}", s.counters_line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("anon-link: {e}");
            ExitCode::FAILURE
        }
    }
}
