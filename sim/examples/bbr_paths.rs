//! Completion time and retransmissions of one fast-mode transfer over
//! simulated bottlenecks (a queue of one BDP, as the bench's emulator has):
//! the bench's 100 Mbit/s, 50 ms path and a slow one with a short RTT
//! (10 Mbit/s, 10 ms), over several seeds: for comparing changes to the
//! congestion controller. `cargo run --release -p anon-sim --example
//! bbr_paths [MiB] [seeds]`
use std::time::Duration;

use anon_sim::{LinkConfig, Setup, Sim, page};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let seeds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    for (mbit, one_way) in [(100, 25), (10, 5)] {
        let link = LinkConfig::bottleneck(mbit, Duration::from_millis(one_way));
        let (mut total, mut retx) = (0.0, 0);
        for seed in 1..=seeds {
            let body = page(mib << 20, seed);
            let mut sim = Sim::new(Setup::new(seed, link, body.clone()));
            let report = sim.run(Duration::from_secs(120), u64::MAX);
            let c = sim.clients.first();
            let ok = c.is_some_and(|c| c.data == body);
            let done = c.and_then(|c| c.finished_at).map_or(f64::NAN, |t| (t - sim.start).as_secs_f64());
            let n = report.server.retransmissions;
            println!(
                "{mbit} Mbit/s, {} ms RTT, seed {seed}: {done:.3} s, {n} retransmissions, byte-exact {ok}",
                2 * one_way
            );
            total += done;
            retx += n;
        }
        println!(
            "{mbit} Mbit/s: mean {:.3} s, {:.1} retransmissions",
            total / seeds as f64,
            retx as f64 / seeds as f64
        );
    }
}
