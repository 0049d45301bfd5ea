//! Helpers shared by the simulation tests.
#![allow(dead_code)]

use std::time::Duration;

use anon_proto::wire::{Flags, Header, Seq};
use anon_proto::{ClientConfig, Linger, ServerConfig};
use anon_sim::{Datagram, DropFilter, LinkConfig, Report, SERVER_ADDR, Setup, Sim, page};

/// Settings under which even 30% loss each way must finish: waits far longer
/// than any backoff the loss can cause, in virtual time (which costs nothing).
pub fn patient(setup: &mut Setup) {
    let long = Duration::from_secs(3600);
    setup.server = ServerConfig { idle_timeout: long, ..ServerConfig::default() };
    setup.client = ClientConfig {
        connect_timeout: long,
        idle_timeout: long,
        linger: Linger::Fixed(long),
        fast: setup.client.fast,
        ..ClientConfig::default()
    };
}

/// A scenario whose client offers nothing: the baseline exchange.
pub fn baseline(seed: u64, link: LinkConfig, page: Vec<u8>) -> Setup {
    let mut setup = Setup::new(seed, link, page);
    setup.client.fast = None;
    setup
}

/// Runs a scenario to the end and checks that every client got the page
/// byte-exact and that the server completed and freed every connection.
pub fn run_and_check(setup: Setup) -> (Sim, Report) {
    let seed = setup.seed;
    let page = setup.page.clone();
    let clients = setup.clients;
    let mut sim = Sim::new(setup);
    let report = sim.run(Duration::from_secs(24 * 3600), 50_000_000);
    check(&sim, &report, &page, clients, seed);
    (sim, report)
}

pub fn check(sim: &Sim, report: &Report, page: &[u8], clients: usize, seed: u64) {
    let ctx = format!("seed {seed} (replay with ANON_SIM_SEED={seed}), page {} bytes", page.len());
    assert!(report.quiescent, "{ctx}: did not finish: {report:?}");
    for (i, c) in sim.clients.iter().enumerate() {
        assert_eq!(c.conn.outcome(), Some(&Ok(())), "{ctx}: client {i} failed");
        assert!(c.data == page, "{ctx}: client {i} got {} bytes, not the page", c.data.len());
    }
    assert_eq!(report.server.completed, clients as u64, "{ctx}: server completions: {report:?}");
    assert_eq!(report.server.given_up, 0, "{ctx}: server gave up: {report:?}");
}

pub const ACK: Flags = Flags::ACK;
pub const SYN: Flags = Flags::SYN;
pub const FIN: Flags = Flags::FIN;

/// One datagram: a header and its payload.
pub fn dgram(seq: u32, ack: u32, flags: Flags, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    Header::new(Seq(seq), Seq(ack), flags).encode(payload, &mut d);
    d
}

/// Which packet of the exchange a datagram is.
pub fn is_syn(d: &Datagram) -> bool {
    flags(d) == Some(Flags::SYN)
}
/// The server's final ACK of a fast-mode FIN|ACK: ACK alone, no payload.
pub fn is_final_ack(d: &Datagram) -> bool {
    d.from == SERVER_ADDR && d.bytes.len() == 12 && flags(d) == Some(Flags::ACK)
}
pub fn is_syn_ack(d: &Datagram) -> bool {
    flags(d) == Some(Flags::SYN | Flags::ACK)
}
/// A client's pure ACK (the handshake ACK is the first one).
pub fn is_client_ack(d: &Datagram) -> bool {
    d.to == SERVER_ADDR && flags(d) == Some(Flags::ACK)
}
pub fn is_server_fin(d: &Datagram) -> bool {
    d.from == SERVER_ADDR && flags(d).is_some_and(|f| f.contains(Flags::FIN))
}
pub fn is_client_fin_ack(d: &Datagram) -> bool {
    d.to == SERVER_ADDR && flags(d) == Some(Flags::ACK | Flags::FIN)
}

fn flags(d: &Datagram) -> Option<Flags> {
    Header::decode(&d.bytes).ok().map(|(h, _)| h.flags)
}

/// Drops the first `n` datagrams that match `pred`.
pub fn drop_first(n: usize, pred: fn(&Datagram) -> bool) -> DropFilter {
    let mut left = n;
    Box::new(move |d, _| {
        if left > 0 && pred(d) {
            left -= 1;
            true
        } else {
            false
        }
    })
}

/// Each control packet (SYN, SYN|ACK, handshake ACK, FIN, FIN|ACK) lost
/// once, twice and three times in a row on an otherwise clean link, with
/// the default (non-patient) settings, for every size; `make` builds the
/// scenario, `also` checks more on each finished run.
/// `also` gets the run, the kind of packet lost and how many times.
pub fn control_packet_losses(
    make: fn(u64, LinkConfig, Vec<u8>) -> Setup,
    sizes: &[usize],
    also: impl Fn(&Sim, &str, usize),
) {
    type Kind = (&'static str, fn(&Datagram) -> bool);
    let kinds: [Kind; 5] = [
        ("SYN", is_syn),
        ("SYN|ACK", is_syn_ack),
        ("handshake ACK", is_client_ack),
        ("FIN", is_server_fin),
        ("FIN|ACK", is_client_fin_ack),
    ];
    for (name, pred) in kinds {
        for n in 1..=3 {
            for &size in sizes {
                let mut setup = make(n as u64, LinkConfig::clean(std::time::Duration::from_millis(10)), page(size, 1));
                if name == "FIN|ACK" && n == 3 {
                    // Three lost FIN|ACKs outlast the adaptive TIME-WAIT by design.
                    patient(&mut setup);
                }
                let page_bytes = setup.page.clone();
                let mut sim = Sim::new(setup);
                sim.net.set_filter(drop_first(n, pred));
                let report = sim.run(std::time::Duration::from_secs(2 * 3600), 1_000_000);
                assert_eq!(sim.net.dropped, n as u64, "{name} x{n}: filter did not fire");
                check(&sim, &report, &page_bytes, 1, n as u64);
                also(&sim, name, n);
            }
        }
    }
}
