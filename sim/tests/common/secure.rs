//! Helpers of the secure-mode probe and censor tests: a server driven by
//! hand, real first messages, and what the server would send.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Instant;

use anon_proto::secure::{
    PublicKey, SecureClient, SecureClientConfig, SecureServer, SecureServerConfig, StaticSecret, WallClock,
};
use anon_proto::{ClientConfig, ServerConfig};
use anon_sim::SIM_UNIX_MS;
use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The wall clock of the simulations: `start` is [`SIM_UNIX_MS`].
pub fn clock(start: Instant) -> WallClock {
    WallClock { at: start, unix_ms: SIM_UNIX_MS }
}

/// A server key drawn from `seed`.
pub fn server_key(seed: u64) -> StaticSecret {
    StaticSecret::generate(&mut StdRng::seed_from_u64(seed ^ 0x5e4e_4e4b))
}

/// The page every probe server serves ("index").
pub fn probe_page() -> Vec<u8> {
    anon_sim::page(50_000, 9)
}

/// A secure server with key `key`, one page named "index", its clock at
/// `start`; `tweak` adjusts the settings before it is built.
pub fn secure_server(
    key: &StaticSecret,
    seed: u64,
    start: Instant,
    plaintext: bool,
    tweak: impl FnOnce(&mut SecureServerConfig, &mut ServerConfig),
) -> SecureServer {
    let mut secure = SecureServerConfig::new(key.clone(), vec!["index".into()], clock(start));
    // Tests feed hundreds of first messages at one instant: every one is
    // read unless a test sets a budget of reads (docs/PROTOCOL.md §8.3,
    // rule 1).
    secure.handshake_reads = 1_000_000;
    let mut config = ServerConfig::default();
    tweak(&mut secure, &mut config);
    let plain = plaintext.then(|| config.clone());
    let pages = vec![Bytes::from(probe_page())];
    SecureServer::new(secure, config, pages, plain, Box::new(StdRng::seed_from_u64(seed)))
}

/// A secure client of the server whose key is `server`, with every random
/// choice drawn from `seed`.
pub fn secure_client(
    server: PublicKey,
    key: Option<StaticSecret>,
    page: &str,
    clock: WallClock,
    seed: u64,
    now: Instant,
) -> SecureClient {
    let config = SecureClientConfig { server, key, page: page.into(), url: None, resume: None, clock };
    SecureClient::new(config, ClientConfig::default(), Box::new(StdRng::seed_from_u64(seed)), now)
}

/// The first datagram a client sends.
pub fn first_datagram(client: &mut SecureClient, now: Instant) -> Vec<u8> {
    let mut buf = Vec::new();
    assert!(client.poll_transmit(now, &mut buf), "a new client sends its first message");
    buf
}

/// A real client's first message and the client.
pub fn first_message(server: PublicKey, seed: u64, clock: WallClock, now: Instant) -> (SecureClient, Vec<u8>) {
    let mut c = secure_client(server, None, "index", clock, seed, now);
    let m = first_datagram(&mut c, now);
    (c, m)
}

/// Everything the server would send at `now`, in order.
pub fn drain(server: &mut SecureServer, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let mut buf = Vec::new();
        let Some(t) = server.poll_transmit_append(now, &mut buf) else { break };
        assert_eq!(t.len, buf.len());
        out.push((t.peer, buf));
    }
    out
}

/// Everything a client would send at `now`, in order.
pub fn drain_client(client: &mut SecureClient, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let mut buf = Vec::new();
        if !client.poll_transmit(now, &mut buf) {
            break;
        }
        out.push(buf);
    }
    out
}
