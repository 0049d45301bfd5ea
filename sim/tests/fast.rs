//! Fast mode over the simulated network: negotiation and fallback, then the
//! windowed transport under loss, bursts, duplication, reordering, wrap,
//! lost control packets, a one-segment receive window, large pages, and two
//! flows sharing a bottleneck.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::time::Duration;

use anon_proto::Mode;
use anon_proto::wire::ext::{ANSWER_DATAGRAM_LEN, MAX_SEGMENT};
use anon_sim::{LinkConfig, SERVER_ADDR, Setup, Sim, page, seeds};
use common::*;

fn fast(seed: u64, link: LinkConfig, page: Vec<u8>) -> Setup {
    Setup::new(seed, link, page)
}

#[test]
fn negotiates_fast_mode_and_stays_unamplified() {
    let mut sim = Sim::new(fast(1, LinkConfig::clean(Duration::from_millis(5)), page(100_000, 1)));
    sim.trace = Some(Vec::new());
    let report = sim.run(Duration::from_secs(60), 100_000);
    check(&sim, &report, &page(100_000, 1), 1, 1);
    assert_eq!(sim.clients[0].conn.mode(), Mode::Fast { segment: MAX_SEGMENT });
    assert_eq!(report.server.accepted_fast, 1);
    let trace = sim.trace.unwrap();
    let (_, syn, syn_len) = trace[0];
    let (_, syn_ack, syn_ack_len) = trace[1];
    assert!(syn.flags.contains(anon_proto::wire::Flags::SYN));
    assert!(syn_ack.flags.contains(anon_proto::wire::Flags::SYN));
    assert_eq!(syn_ack_len + 12, ANSWER_DATAGRAM_LEN);
    assert!(syn_len >= syn_ack_len, "SYN|ACK larger than its SYN");
    // Full-size segments, several in flight.
    let data: Vec<usize> = trace
        .iter()
        .filter(|(f, h, l)| *f == SERVER_ADDR && *l > 0 && !h.flags.contains(anon_proto::wire::Flags::SYN))
        .map(|t| t.2)
        .collect();
    assert_eq!(data.iter().sum::<usize>(), 100_000);
    assert!(data[..data.len() - 1].iter().all(|&l| l == MAX_SEGMENT as usize));
    let answer = sim.clients[0].conn.answer().copied().unwrap();
    assert_eq!(answer.page_len, 100_000);
}

#[test]
fn server_that_ignores_the_offer_gets_baseline() {
    let mut setup = fast(2, LinkConfig::hostile(0.1), page(5000, 2));
    patient(&mut setup);
    setup.server.fast = false;
    let (sim, report) = run_and_check(setup);
    assert_eq!(sim.clients[0].conn.mode(), Mode::Baseline);
    assert_eq!(report.server.accepted_fast, 0);
}

#[test]
fn clean_bottleneck_runs_near_the_link_rate() {
    // 100 Mbit/s, 50 ms RTT, 10 MiB: ideal is size / rate + 2 RTT.
    let size = 10 << 20;
    let (sim, report) = run_and_check(fast(3, LinkConfig::bottleneck(100, Duration::from_millis(25)), page(size, 3)));
    let done = sim.clients[0].finished_at.unwrap() - sim.start;
    let ideal = Duration::from_secs_f64(size as f64 * 8.0 / 100e6) + Duration::from_millis(100);
    eprintln!("{done:?} vs ideal {ideal:?}; {report:?}");
    assert!(done < ideal.mul_f64(1.3), "{done:?} vs ideal {ideal:?}");
}

#[test]
fn lossy_links_every_size() {
    for &size in &[0usize, 1, 1447, 1448, 1449, 100_000, 1 << 20] {
        for loss in [0.01, 0.1, 0.3] {
            for seed in seeds(if size > 100_000 { 3 } else { 30 }) {
                let mut setup = fast(seed, LinkConfig::hostile(loss), page(size, seed));
                patient(&mut setup);
                run_and_check(setup);
            }
        }
    }
}
