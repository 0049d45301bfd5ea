//! Fast mode over the simulated network: negotiation and fallback, then the
//! windowed transport under loss, bursts, duplication, reordering, wrap,
//! lost control packets, a one-segment receive window, large pages, and two
//! flows sharing a bottleneck.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::time::Duration;

use anon_proto::Mode;
use anon_proto::wire::ext::{ANSWER_DATAGRAM_LEN, DEFAULT_SEGMENT};
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
    assert_eq!(sim.clients[0].conn.mode(), Mode::Fast { segment: DEFAULT_SEGMENT });
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
    assert!(data[..data.len() - 1].iter().all(|&l| l == DEFAULT_SEGMENT as usize));
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
    assert!(done < ideal.mul_f64(1.2), "{done:?} vs ideal {ideal:?}");
}

#[test]
fn lossy_links_every_size() {
    for &size in &[0usize, 1, 1199, 1200, 1201, 100_000, 1 << 20] {
        for loss in [0.01, 0.1, 0.3] {
            for seed in seeds(if size > 100_000 { 3 } else { 30 }) {
                let mut setup = fast(seed, LinkConfig::hostile(loss), page(size, seed));
                patient(&mut setup);
                run_and_check(setup);
            }
        }
    }
}

/// Ideal transfer time over a bottleneck: size / rate + 2 RTT (handshake and
/// the last round trip).
fn ideal(size: usize, mbit: u64, rtt: Duration) -> Duration {
    Duration::from_secs_f64(size as f64 * 8.0 / (mbit as f64 * 1e6)) + rtt * 2
}

/// Time from the first SYN to the page being complete at the client.
fn transfer_time(setup: Setup) -> Duration {
    let (sim, _) = run_and_check(setup);
    sim.clients[0].finished_at.unwrap() - sim.start
}

#[test]
fn one_percent_random_loss_holds_the_rate() {
    let size = 10 << 20;
    let mut link = LinkConfig::bottleneck(100, Duration::from_millis(25));
    link.loss = 0.01;
    let ideal = ideal(size, 100, Duration::from_millis(50));
    for seed in seeds(3) {
        let bbr = transfer_time(fast(seed, link, page(size, seed)));
        eprintln!("1% loss, seed {seed}: {bbr:?} = {:.3}x ideal", bbr.as_secs_f64() / ideal.as_secs_f64());
        assert!(bbr < ideal.mul_f64(1.3), "seed {seed}: {bbr:?} vs ideal {ideal:?}");
        // A loss-based controller cannot hold the rate: BBR is the default.
        let mut cubic = fast(seed, link, page(size, seed));
        cubic.server.congestion = anon_proto::cc::Algorithm::Cubic;
        let cubic = transfer_time(cubic);
        assert!(bbr < cubic, "seed {seed}: BBR {bbr:?}, CUBIC {cubic:?}");
    }
}

#[test]
fn five_percent_loss_with_duplication_and_reordering() {
    let size = 10 << 20;
    let mut link = LinkConfig::bottleneck(100, Duration::from_millis(25));
    link.loss = 0.05;
    link.duplicate = 0.02;
    link.reorder = 0.05;
    link.reorder_delay = Duration::from_millis(10);
    let ideal = ideal(size, 100, Duration::from_millis(50));
    for seed in seeds(3) {
        let t = transfer_time(fast(seed, link, page(size, seed)));
        eprintln!("5% loss+dup+reorder, seed {seed}: {t:?} = {:.3}x ideal", t.as_secs_f64() / ideal.as_secs_f64());
        assert!(t < ideal.mul_f64(1.5), "seed {seed}: {t:?} vs ideal {ideal:?}");
    }
}

#[test]
fn bursty_loss() {
    for seed in seeds(20) {
        let mut link = LinkConfig::hostile(0.0);
        // Bursts of about 5 datagrams, 40% lost inside, every ~50 datagrams.
        link.burst = Some((0.02, 0.2, 0.4));
        let mut setup = fast(seed, link, page(300_000, seed));
        patient(&mut setup);
        run_and_check(setup);
    }
}

#[test]
fn sequence_numbers_wrap_around() {
    for &size in &[0usize, 1200, 1201, 300_000] {
        for seed in seeds(20) {
            let mut setup = fast(seed, LinkConfig::hostile(0.1), page(size, seed));
            patient(&mut setup);
            setup.client_isn = Some(u32::MAX - (seed as u32 % 4));
            setup.server_isn = Some(u32::MAX - 3000 - seed as u32 * 7);
            run_and_check(setup);
        }
    }
}

/// The client exits one round trip after the last byte: the server's final
/// ACK confirms its FIN|ACK, so no linger (docs/PROTOCOL.md §6.3).
#[test]
fn client_exits_one_round_trip_after_the_page() {
    let rtt = Duration::from_millis(40);
    for size in [0, 1200, 300_000] {
        let (sim, report) = run_and_check(fast(7, LinkConfig::clean(rtt / 2), page(size, 7)));
        let c = &sim.clients[0];
        let tail = c.closed_at.unwrap() - c.finished_at.unwrap();
        assert!(tail <= rtt + Duration::from_millis(1), "size {size}: closed {tail:?} after the page");
        assert_eq!(report.server.final_acks, 1);
    }
}

/// A lost final ACK: the client's FIN|ACK timer draws it again from the
/// server's TIME-WAIT record, well before the linger would end.
#[test]
fn lost_final_ack_is_recovered_by_the_fin_ack_timer() {
    let rtt = Duration::from_millis(40);
    for n in 1..=2 {
        let mut sim = Sim::new(fast(8, LinkConfig::clean(rtt / 2), page(50_000, 8)));
        sim.net.set_filter(drop_first(n, is_final_ack));
        let report = sim.run(Duration::from_secs(60), 1_000_000);
        check(&sim, &report, &page(50_000, 8), 1, 8);
        assert_eq!(sim.net.dropped, n as u64);
        let c = &sim.clients[0];
        let tail = c.closed_at.unwrap() - c.finished_at.unwrap();
        // The client's RTO after one 40 ms sample is 120 ms; then 240 ms.
        assert!(tail < Duration::from_millis(500), "x{n}: closed {tail:?} after the page");
        assert_eq!(report.server.final_acks, 1 + n as u64);
    }
}

/// With no final ACK at all (a server that never sends one, or a path that
/// loses them all) the client still exits, at the end of its linger.
#[test]
fn client_without_a_final_ack_exits_after_its_linger() {
    let mut sim = Sim::new(fast(9, LinkConfig::clean(Duration::from_millis(20)), page(50_000, 9)));
    sim.net.set_filter(drop_first(1000, is_final_ack));
    let report = sim.run(Duration::from_secs(60), 1_000_000);
    check(&sim, &report, &page(50_000, 9), 1, 9);
    let c = &sim.clients[0];
    let tail = c.closed_at.unwrap() - c.finished_at.unwrap();
    assert!(tail >= Duration::from_secs(1) && tail <= Duration::from_secs(10), "{tail:?}");
}

#[test]
fn control_packets_lost_once_twice_three_times() {
    control_packet_losses(fast, &[0, 1200, 100_000], |sim, lost, n| {
        // Two offers unanswered: the third SYN is bare and gets baseline;
        // the fourth carries the offer again.
        let mode = sim.clients[0].conn.mode();
        if lost == "SYN" && n == 2 {
            assert_eq!(mode, Mode::Baseline, "{lost} x{n}");
        } else {
            assert!(matches!(mode, Mode::Fast { .. }), "{lost} x{n}: {mode:?}");
        }
    });
}

#[test]
fn receive_window_of_one_segment() {
    for seed in seeds(10) {
        let mut setup = fast(seed, LinkConfig::hostile(0.05), page(50_000, seed));
        patient(&mut setup);
        let mut fast_client = setup.client.fast.unwrap();
        fast_client.recv_window = u32::from(DEFAULT_SEGMENT);
        setup.client.fast = Some(fast_client);
        run_and_check(setup);
    }
}

#[test]
fn large_page_over_a_clean_bottleneck() {
    let size = 64 << 20;
    let t = transfer_time(fast(5, LinkConfig::bottleneck(1000, Duration::from_millis(5)), page(size, 5)));
    let ideal = ideal(size, 1000, Duration::from_millis(10));
    assert!(t < ideal.mul_f64(1.2), "{t:?} vs ideal {ideal:?}");
}

/// Two of our flows through one bottleneck share it about equally.
#[test]
fn two_flows_share_a_bottleneck() {
    let mut setup = fast(6, LinkConfig::bottleneck(100, Duration::from_millis(10)), page(40 << 20, 6));
    setup.clients = 2;
    let mut sim = Sim::new(setup);
    // Let them converge, then measure each one's share over two seconds.
    sim.run(Duration::from_secs(2), 50_000_000);
    let before: Vec<usize> = sim.clients.iter().map(|c| c.data.len()).collect();
    sim.run(Duration::from_secs(4), 50_000_000);
    let delta: Vec<f64> = sim.clients.iter().zip(&before).map(|(c, b)| (c.data.len() - b) as f64).collect();
    let share = delta[0] / (delta[0] + delta[1]);
    eprintln!("shares {share:.3} / {:.3}; {delta:?}", 1.0 - share);
    assert!((0.35..=0.65).contains(&share), "unequal shares: {delta:?}");
    // Together they fill the link (100 Mbit/s = 12.5 MB/s).
    assert!(delta[0] + delta[1] > 0.85 * 2.0 * 12.5e6, "{delta:?}");
}

/// docs/PROTOCOL.md §6.3 as the wire shows it: without receive batching
/// (a datagram per wake-up) the client ACKs every second in-order segment;
/// with batching, once per batch, however many segments the batch holds.
#[test]
fn acks_on_the_wire_follow_the_documented_policy() {
    use anon_proto::wire::Flags;
    let size = 4 << 20;
    let count = |sim: &Sim| {
        let trace = sim.trace.as_ref().unwrap();
        let data =
            trace.iter().filter(|(f, h, l)| *f == SERVER_ADDR && *l > 0 && !h.flags.contains(Flags::SYN)).count();
        // The client's ACKs after the handshake ACK, FIN|ACK aside.
        let acks = trace.iter().filter(|(f, h, _)| *f != SERVER_ADDR && h.flags == Flags::ACK).count() - 1;
        (data, acks)
    };
    // 100 Mbit/s: segments arrive 96 µs apart, each a batch of its own. A
    // queue that never overflows: a loss would draw immediate ACKs.
    let mut link = LinkConfig::bottleneck(100, Duration::from_millis(5));
    link.queue = u64::MAX;
    let mut sim = Sim::new(fast(11, link, page(size, 11)));
    sim.trace = Some(Vec::new());
    let report = sim.run(Duration::from_secs(60), 10_000_000);
    check(&sim, &report, &page(size, 11), 1, 11);
    let (data, acks) = count(&sim);
    eprintln!("unbatched: {data} segments, {acks} ACKs, {} retransmissions", report.server.retransmissions);
    assert!((acks as f64 - data as f64 / 2.0).abs() < data as f64 * 0.05, "{acks} ACKs for {data} segments");
    // 1 Gbit/s and a client that wakes 1 ms after a datagram arrives: about
    // 80 segments per batch, one ACK for each batch.
    link.rate = Some(1_000_000_000 / 8);
    let mut sim = Sim::new(fast(12, link, page(size, 12)));
    sim.trace = Some(Vec::new());
    sim.client_wakeup = Duration::from_millis(1);
    let report = sim.run(Duration::from_secs(60), 10_000_000);
    check(&sim, &report, &page(size, 12), 1, 12);
    let (data, acks) = count(&sim);
    let wakeups = sim.clients[0].wakeups as usize;
    eprintln!("batched: {data} segments in {wakeups} batches, {acks} ACKs");
    assert!(wakeups * 10 < data, "batches too small to tell: {wakeups} for {data}");
    assert!(acks <= wakeups, "{acks} ACKs for {wakeups} batches");
    assert!(acks * 10 >= wakeups * 9, "{acks} ACKs for {wakeups} batches");
}
