//! Secure mode over the simulated network: transfers, named pages, an
//! address change mid-transfer (docs/PROTOCOL.md §8).

use std::time::Duration;

use anon_proto::{ConnectionError, Refusal};
use anon_sim::{LinkConfig, SecureSetup, Setup, Sim, client_addr, page, seeds};

fn lossy() -> LinkConfig {
    LinkConfig::hostile(0.05)
}

fn clean() -> LinkConfig {
    LinkConfig::clean(Duration::from_millis(10))
}

#[test]
fn secure_transfer_is_byte_exact_over_a_lossy_link() {
    for seed in seeds(8) {
        let body = page(300_000, seed);
        let mut setup = Setup::new(seed, lossy(), body.clone());
        setup.clients = 2;
        let mut sim = Sim::secure(setup, SecureSetup::new(seed));
        let report = sim.run(Duration::from_secs(120), 2_000_000);
        assert!(report.quiescent, "seed {seed}: {report:?}");
        for c in &sim.clients {
            assert_eq!(c.conn.outcome(), Some(&Ok(())), "seed {seed}");
            assert!(c.data == body, "seed {seed}: page differs");
            assert!(c.log.iter().any(|l| l.starts_with("RECV") && l.ends_with("ACK FIN")), "seed {seed}");
        }
        let s = sim.server.secure_stats();
        assert!(s.confirmed >= 2, "seed {seed}: {s:?}");
        assert_eq!(s.forged, 0, "seed {seed}: {s:?}");
        // Closed connections keep their keys through the TIME-WAIT only.
        let later = sim.now + Duration::from_secs(11);
        sim.server.handle_timeout(later);
        assert_eq!(sim.server.session_count(), (0, 0), "seed {seed}: state left after the end");
    }
}

/// A page in memory starts arriving one round trip after the first
/// message: its first bytes come in the early segment, right behind the
/// answer (docs/PROTOCOL.md §8.3), not after the client's first sealed
/// datagram has come back, half a round trip later.
#[test]
fn a_pages_first_bytes_come_with_the_answer() {
    let one_way = Duration::from_millis(50);
    for seed in seeds(4) {
        let body = page(100_000, seed);
        let setup = Setup::new(seed, LinkConfig::clean(one_way), body.clone());
        let mut sim = Sim::secure(setup, SecureSetup::new(seed));
        sim.run(one_way * 2 + Duration::from_millis(5), 100_000);
        let have = sim.clients[0].data.len();
        // The room an answer leaves is at least 1,200 - 576 bytes, less the
        // early datagram's 71 bytes and a slack of up to 64.
        assert!(have >= 489, "seed {seed}: {have} page bytes one round trip after the first message");
        assert!(body.starts_with(&sim.clients[0].data), "seed {seed}");
        let report = sim.run(Duration::from_secs(30), 1_000_000);
        assert!(report.quiescent, "seed {seed}: {report:?}");
        assert_eq!(sim.clients[0].conn.outcome(), Some(&Ok(())), "seed {seed}");
        assert!(sim.clients[0].data == body, "seed {seed}: page differs");
        assert_eq!(sim.server.secure_stats().early_segments, 1, "seed {seed}");
    }
}

#[test]
fn clients_ask_for_pages_by_name() {
    let first = page(10_000, 1);
    let second = page(20_000, 2);
    let mut secure = SecureSetup::new(3);
    secure.names = vec!["index".into(), "news".into()];
    secure.extra_pages = vec![second.clone()];
    for (ask, want) in [("news", &second), ("", &first), ("index", &first)] {
        let mut s = secure.clone();
        s.ask = ask.into();
        let mut sim = Sim::secure(Setup::new(3, clean(), first.clone()), s);
        sim.run(Duration::from_secs(30), 100_000);
        assert_eq!(sim.clients[0].conn.outcome(), Some(&Ok(())), "{ask}");
        assert!(sim.clients[0].data == *want, "{ask}");
    }
    let mut s = secure;
    s.ask = "missing".into();
    let mut sim = Sim::secure(Setup::new(3, clean(), first), s);
    sim.run(Duration::from_secs(30), 100_000);
    assert_eq!(sim.clients[0].conn.outcome(), Some(&Err(ConnectionError::Rejected(Refusal::NotFound))));
    assert!(sim.clients[0].data.is_empty());
}

/// A client whose address changes once it has the whole page, its FIN|ACK
/// sent from the old one: the server's final ACK to the old address is
/// lost, and its FIN|ACK sent again from the new one draws a probe that is
/// the final ACK (docs/PROTOCOL.md §8.4), so it exits about one RTO after
/// the move, not at the end of its linger (four RTOs).
#[test]
fn a_client_that_moves_during_its_final_exchange_exits_without_lingering() {
    let one_way = Duration::from_millis(20);
    for seed in seeds(4) {
        let body = page(200_000, seed);
        let mut sim = Sim::secure(Setup::new(seed, LinkConfig::clean(one_way), body.clone()), SecureSetup::new(seed));
        let mut t = Duration::from_millis(10);
        while !sim.clients[0].conn.is_finished() {
            sim.run(t, u64::MAX);
            t += Duration::from_millis(1);
            assert!(t < Duration::from_secs(30), "seed {seed}: never finished");
        }
        let moved_at = sim.now;
        let rto = sim.clients[0].conn.conn().rto();
        let mut moved = client_addr(0);
        moved.set_port(moved.port() + 1);
        sim.clients[0].addr = moved;
        while sim.clients[0].conn.outcome().is_none() {
            sim.run(t, u64::MAX);
            t += Duration::from_millis(1);
            assert!(t < Duration::from_secs(60), "seed {seed}: never ended");
        }
        let waited = sim.now - moved_at;
        assert_eq!(sim.clients[0].conn.outcome(), Some(&Ok(())), "seed {seed}");
        assert!(sim.clients[0].data == body, "seed {seed}");
        assert!(waited < rto * 2, "seed {seed}: {waited:?} after the move, RTO {rto:?}");
    }
}

#[test]
fn a_transfer_survives_an_address_change_and_the_two_halves_do_not_link() {
    for seed in seeds(4) {
        let body = page(2_000_000, seed);
        let link = LinkConfig { loss: 0.01, ..LinkConfig::bottleneck(50, Duration::from_millis(10)) };
        let mut sim = Sim::secure(Setup::new(seed, link, body.clone()), SecureSetup::new(seed));
        sim.trace = None;
        // Run until about half the page is in, then move the client to a new
        // port, as a NAT that rebinds does: the old address gets nothing more.
        let mut t = Duration::from_millis(50);
        while sim.clients[0].data.len() < body.len() / 2 {
            sim.run(t, u64::MAX);
            t += Duration::from_millis(5);
            assert!(t < Duration::from_secs(60), "seed {seed}: never got halfway");
        }
        let before: Vec<String> = sim.clients[0].log.clone();
        let mut moved = client_addr(0);
        moved.set_port(moved.port() + 1);
        sim.clients[0].addr = moved;
        let report = sim.run(Duration::from_secs(120), u64::MAX);
        assert!(report.quiescent, "seed {seed}");
        assert_eq!(
            sim.clients[0].conn.outcome(),
            Some(&Ok(())),
            "seed {seed}: {:?} {:?} {:?}",
            sim.server.secure_stats(),
            sim.clients[0].conn.secure_stats(),
            sim.clients[0].log.iter().rev().take(8).collect::<Vec<_>>()
        );
        assert!(sim.clients[0].data == body, "seed {seed}");
        let s = sim.server.secure_stats();
        assert_eq!(s.migrations, 1, "seed {seed}");
        // It moved once the client answered a probe at the new address.
        assert!(s.path_probes >= 1, "seed {seed}: {s:?}");
        assert!(sim.clients[0].log.len() > before.len());
        // Fresh tokens all along: no fixed field links the two halves.
        let c = sim.clients[0].conn.secure_stats();
        assert_eq!(c.token_reuses, 0, "seed {seed}: {c:?} {:?}", sim.clients[0].conn.stats());
    }
}
