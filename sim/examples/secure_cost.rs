//! Wall time of one simulated transfer on a clean link, plaintext fast mode
//! against secure mode: the CPU that sealing and opening add (both ends in
//! one process, one core). `cargo run --release -p anon-sim --example
//! secure_cost [MiB]`
use std::time::{Duration, Instant};

use anon_sim::{LinkConfig, SecureSetup, Setup, Sim, page};

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let body = page(mib << 20, 1);
    let link = LinkConfig::clean(Duration::from_micros(50));
    for secure in [false, true] {
        let setup = Setup::new(1, link, body.clone());
        #[allow(clippy::disallowed_methods)]
        let t = Instant::now();
        let ok = if secure {
            let mut sim = Sim::secure(setup, SecureSetup::new(1));
            sim.run(Duration::from_secs(600), u64::MAX);
            sim.clients.first().is_some_and(|c| c.data == body)
        } else {
            let mut sim = Sim::new(setup);
            sim.run(Duration::from_secs(600), u64::MAX);
            sim.clients.first().is_some_and(|c| c.data == body)
        };
        let s = t.elapsed().as_secs_f64();
        let name = if secure { "secure" } else { "plaintext" };
        println!("{name:9} {mib} MiB: {s:.3} s wall ({:.2} s per GiB), byte-exact {ok}", s * 1024.0 / mib as f64);
    }
}
