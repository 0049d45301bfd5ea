//! A SYN flood against the endpoint: many source addresses and ports, never
//! completing the handshake, while real clients connect. Bounded half-open
//! state, stateless SYN cookies once it is full, and the clients complete.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anon_proto::wire::ext::Offer;
use anon_proto::wire::{Flags, Header, Seq};
use anon_proto::{ClientConfig, ClientConn, Server, ServerConfig};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Client {
    addr: SocketAddr,
    conn: ClientConn,
    got: Vec<u8>,
}

fn flood_syn(rng: &mut StdRng) -> (SocketAddr, Vec<u8>) {
    let addr = SocketAddr::from((rng.random::<[u8; 4]>(), rng.random::<u16>()));
    let mut d = Vec::new();
    let mut payload = Vec::new();
    if rng.random_bool(0.5) {
        // Half the flood offers fast mode, to get the larger answer.
        Offer { max_segment: 1440, recv_window: 1 << 20 }.encode(&mut payload);
    }
    Header::new(Seq(rng.random()), Seq(0), Flags::SYN).encode(&payload, &mut d);
    (addr, d)
}

fn run(fast: bool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let page: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let max_half_open = 64;
    let config = ServerConfig { max_half_open, ..ServerConfig::default() };
    let mut server = Server::new(config, Bytes::from(page.clone()), Box::new(StdRng::seed_from_u64(seed + 1)));
    let start = Instant::now();
    let mut now = start;
    let mut buf = Vec::new();
    let mut clients: Vec<Client> = Vec::new();
    let client_config =
        ClientConfig { fast: if fast { ClientConfig::default().fast } else { None }, ..ClientConfig::default() };
    let mut flood_sent = 0u64;
    for step in 0..60_000u32 {
        // 20 flood SYNs per millisecond (20,000 per second), from the start.
        for _ in 0..20 {
            let (from, d) = flood_syn(&mut rng);
            server.handle(now, from, &d);
            flood_sent += 1;
        }
        // Five clients join once the half-open table is full.
        if step == 100 {
            assert_eq!(server.half_open_count(), max_half_open);
            for i in 0..5u16 {
                let addr = SocketAddr::from(([192, 0, 2, 1], 5000 + i));
                clients.push(Client {
                    addr,
                    conn: ClientConn::new(client_config.clone(), rng.random(), now),
                    got: Vec::new(),
                });
            }
        }
        for c in &mut clients {
            while c.conn.poll_transmit(now, &mut buf) {
                server.handle(now, c.addr, &buf);
            }
        }
        while let Some(to) = server.poll_transmit(now, &mut buf) {
            // Replies to the flood go nowhere.
            if let Some(c) = clients.iter_mut().find(|c| c.addr == to) {
                c.conn.handle(now, &buf);
            }
        }
        for c in &mut clients {
            let n = c.conn.readable().len();
            c.got.extend_from_slice(c.conn.readable());
            c.conn.consume(n);
        }
        assert!(server.half_open_count() <= max_half_open);
        assert!(server.connection_count() <= max_half_open + clients.len());
        if !clients.is_empty() && clients.iter().all(|c| c.conn.is_finished()) {
            break;
        }
        now += Duration::from_millis(1);
        server.handle_timeout(now);
        for c in &mut clients {
            c.conn.handle_timeout(now);
        }
    }
    for c in &clients {
        assert!(c.conn.is_finished(), "client {} did not finish: {:?}", c.addr, c.conn.outcome());
        assert!(c.got == page, "client {} got {} bytes", c.addr, c.got.len());
        assert_eq!(c.conn.mode() != anon_proto::Mode::Baseline, fast, "the cookie kept the mode");
    }
    let stats = server.stats();
    assert!(stats.cookies_sent > 1000, "{stats:?}");
    assert_eq!(stats.cookies_accepted, 5, "{stats:?}");
    eprintln!("{flood_sent} flood SYNs over {:?}; {stats:?}", now - start);
}

#[test]
fn clients_complete_during_a_syn_flood_fast_mode() {
    run(true, 1);
}

#[test]
fn clients_complete_during_a_syn_flood_baseline() {
    run(false, 2);
}
