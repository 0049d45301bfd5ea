//! The prober and the hostile peer against secure mode (issue 11,
//! docs/PROTOCOL.md §8): the server says nothing to a datagram that does not
//! prove it holds the server's public key, counts what it drops, keeps its
//! state bounded under a flood of valid first messages, sends no more to an
//! unverified address than it received from it, and frees what a connection
//! held once it is over.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;
#[path = "common/secure.rs"]
mod secure;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anon_proto::secure::{SecureServer, SecureStats, StaticSecret, WallClock};
use anon_proto::wire::{Flags, Header};
use anon_proto::{ClientConfig, ClientConn, ConnectionError, Refusal, Server, ServerConfig};
use anon_sim::{LinkConfig, SERVER_ADDR, SIM_UNIX_MS, SecureSetup, Setup, Sim, SimClient, client_addr, page, seeds};
use bytes::Bytes;
use common::{SYN, dgram};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use secure::{clock, drain, first_message, secure_client, secure_server, server_key};

/// A prober's address.
fn prober(i: u32) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(0x0ac8_0000 + i).into(), 50_000 + (i % 10_000) as u16)
}

/// A server for the probes, and its virtual time zero.
fn probe_server(seed: u64, plaintext: bool) -> (SecureServer, StaticSecret, Instant) {
    let start = Instant::now();
    let key = server_key(seed);
    let s = secure_server(&key, seed, start, plaintext, |_, _| {});
    (s, key, start)
}

/// Feeds one probe and asserts the server says nothing and keeps nothing.
#[track_caller]
fn silent(server: &mut SecureServer, now: Instant, from: SocketAddr, probe: &[u8], what: &str) {
    server.handle_kind(now, from, probe);
    let sent = drain(server, now);
    assert!(sent.is_empty(), "{what}: the server answered {} bytes", sent.first().map_or(0, |d| d.1.len()));
}

/// The counters that moved from `before` to `after`, by name.
fn moved(before: SecureStats, after: SecureStats) -> Vec<(&'static str, u64)> {
    let named = |s: &SecureStats| {
        [
            ("not_ours", s.not_ours),
            ("bad_handshakes", s.bad_handshakes),
            ("stale_handshakes", s.stale_handshakes),
            ("replayed_handshakes", s.replayed_handshakes),
            ("replay_cache_full", s.replay_cache_full),
            ("unlisted_clients", s.unlisted_clients),
            ("refused", s.refused),
            ("handshakes", s.handshakes),
            ("confirmed", s.confirmed),
            ("evicted", s.evicted),
            ("rejected", s.rejected),
            ("forged", s.forged),
            ("replayed", s.replayed),
            ("migrations", s.migrations),
        ]
    };
    named(&before).into_iter().zip(named(&after)).filter(|(b, a)| a.1 != b.1).map(|(b, a)| (b.0, a.1 - b.1)).collect()
}

/// Nothing kept for a probe.
#[track_caller]
fn no_state(server: &SecureServer, what: &str) {
    assert_eq!(server.session_count(), (0, 0), "{what}");
    assert_eq!(server.connection_count(), 0, "{what}");
    assert_eq!(server.half_open_count(), 0, "{what}");
}

/// A real first message draws exactly one answer, no longer than it.
#[track_caller]
fn answered(server: &mut SecureServer, now: Instant, from: SocketAddr, msg: &[u8], what: &str) -> Vec<u8> {
    server.handle_kind(now, from, msg);
    let sent = drain(server, now);
    assert_eq!(sent.len(), 1, "{what}: one answer");
    assert_eq!(sent[0].0, from, "{what}");
    assert!(sent[0].1.len() <= msg.len(), "{what}: answer {} > first message {}", sent[0].1.len(), msg.len());
    sent.into_iter().next().unwrap().1
}

// ---- the prober -----------------------------------------------------------

/// Random bytes of every length up to 1,500, twice each: silence, counted
/// as not ours, nothing kept. Also with a live connection on the server,
/// so that random "tokens" meet a table that is not empty.
#[test]
fn random_bytes_of_any_length_get_silence() {
    let (mut server, key, start) = probe_server(1, false);
    let mut rng = StdRng::seed_from_u64(1);
    let mut n = 0;
    for round in 0..2 {
        if round == 1 {
            // A live handshake: one session and its tokens on the server.
            let (_, msg) = first_message(key.public(), 5, clock(start), start);
            answered(&mut server, start, client_addr(0), &msg, "live");
        }
        let before = server.secure_stats();
        for len in 0..=1500 {
            let mut probe = vec![0u8; len];
            rng.fill_bytes(&mut probe);
            silent(&mut server, start, prober(len as u32), &probe, &format!("{len} random bytes"));
            n += 1;
        }
        assert_eq!(moved(before, server.secure_stats()), vec![("not_ours", 1501)], "round {round}");
        if round == 0 {
            no_state(&server, "random bytes");
        }
    }
    assert_eq!(n, 3002);
}

/// A real first message cut at every length, and with each of its bits
/// flipped in turn: silence (the outer AEAD fails), nothing kept. The
/// message itself, sent last, is answered: the probes were near misses.
#[test]
fn truncated_and_bit_flipped_first_messages_get_silence() {
    for seed in seeds(3) {
        let (mut server, key, start) = probe_server(seed, false);
        let (_, msg) = first_message(key.public(), seed + 10, clock(start), start);
        let before = server.secure_stats();
        for len in 0..msg.len() {
            silent(&mut server, start, prober(1), &msg[..len], &format!("seed {seed}: cut at {len}"));
        }
        let mut flipped = msg.clone();
        for bit in 0..msg.len() * 8 {
            flipped[bit / 8] ^= 1 << (bit % 8);
            silent(&mut server, start, prober(2), &flipped, &format!("seed {seed}: bit {bit} flipped"));
            flipped[bit / 8] ^= 1 << (bit % 8);
        }
        // Longer: a byte appended moves the tag.
        let mut longer = msg.clone();
        longer.push(0);
        silent(&mut server, start, prober(3), &longer, "one byte more");
        let probes = msg.len() as u64 * 9 + 1;
        assert_eq!(moved(before, server.secure_stats()), vec![("not_ours", probes)], "seed {seed}");
        no_state(&server, "near misses");
        answered(&mut server, start, prober(4), &msg, "the message itself");
        assert_eq!(server.secure_stats().handshakes, 1);
    }
}

/// Plaintext SYNs, baseline and fast: silence while plaintext is off; with
/// plaintext on, the plaintext server answers them.
#[test]
fn plaintext_syns_get_silence_unless_plaintext_is_on() {
    let now = Instant::now();
    let bare = dgram(1000, 0, SYN, &[]);
    let mut fast_client = ClientConn::new(ClientConfig::default(), 2000, now);
    let mut fast = Vec::new();
    assert!(fast_client.poll_transmit(now, &mut fast));
    assert_eq!((bare.len(), fast.len()), (12, 68));
    for plaintext in [false, true] {
        let (mut server, _, start) = probe_server(3, plaintext);
        for (i, syn) in [&bare, &fast].into_iter().enumerate() {
            let from = prober(i as u32);
            let before = server.secure_stats();
            if plaintext {
                server.handle_kind(start, from, syn);
                let sent = drain(&mut server, start);
                assert_eq!(sent.len(), 1, "plaintext on: SYN {i} answered");
                let (h, _) = Header::decode(&sent[0].1).unwrap();
                assert_eq!(h.flags, Flags::SYN | Flags::ACK);
                assert!(sent[0].1.len() <= syn.len());
                assert_eq!(moved(before, server.secure_stats()), vec![]);
            } else {
                silent(&mut server, start, from, syn, &format!("plaintext SYN {i}"));
                assert_eq!(moved(before, server.secure_stats()), vec![("not_ours", 1)]);
                no_state(&server, "plaintext SYN");
            }
        }
        if plaintext {
            assert_eq!(server.plain_stats().unwrap().accepted, 2);
        }
    }
}

/// A real client's first message, replayed: from the same address and
/// from another, at once and minutes later: only the first is answered.
#[test]
fn a_replayed_first_message_gets_silence() {
    for seed in seeds(4) {
        let (mut server, key, start) = probe_server(seed, false);
        let (_, msg) = first_message(key.public(), seed + 20, clock(start), start);
        answered(&mut server, start, client_addr(0), &msg, "the original");
        let state = server.session_count();
        let before = server.secure_stats();
        silent(&mut server, start, client_addr(0), &msg, "replay, same address");
        silent(&mut server, start, prober(7), &msg, "replay, another address");
        let later = start + Duration::from_secs(299);
        server.handle_timeout(later);
        drain(&mut server, later);
        silent(&mut server, later, prober(8), &msg, "replay, minutes later");
        assert_eq!(moved(before, server.secure_stats()), vec![("replayed_handshakes", 3)], "seed {seed}");
        assert!(server.session_count().1 <= state.1, "seed {seed}: a replay made state");
    }
}

/// The replay cache must outlive every message it guards: a message whose
/// clock is as far ahead as allowed stays acceptable until the server's
/// clock is as far past it, twice the skew after it arrived. Replayed at
/// that very millisecond, it must still get silence.
#[test]
fn a_replay_at_the_edge_of_the_skew_window_gets_silence() {
    let (mut server, key, start) = probe_server(4, false);
    let skew = Duration::from_secs(300);
    let ahead = WallClock { at: start, unix_ms: SIM_UNIX_MS + skew.as_millis() as u64 };
    let mut c = secure_client(key.public(), None, "index", ahead, 30, start);
    let msg = secure::first_datagram(&mut c, start);
    answered(&mut server, start, client_addr(0), &msg, "a message from a clock ahead by the skew");
    for at in [2 * skew - Duration::from_millis(1), 2 * skew] {
        let now = start + at;
        let before = server.secure_stats();
        silent(&mut server, now, prober(9), &msg, &format!("replay {at:?} later"));
        assert_eq!(moved(before, server.secure_stats()), vec![("replayed_handshakes", 1)], "{at:?}");
    }
    // A millisecond later the message is stale anyway.
    let now = start + 2 * skew + Duration::from_millis(1);
    let before = server.secure_stats();
    silent(&mut server, now, prober(9), &msg, "stale");
    assert_eq!(moved(before, server.secure_stats()), vec![("stale_handshakes", 1)]);
}

/// Clocks outside the allowed skew, either way: silence, counted stale;
/// clocks just inside it are answered.
#[test]
fn a_first_message_with_a_clock_outside_the_skew_gets_silence() {
    let (mut server, key, start) = probe_server(5, false);
    let skew = 300_000i64;
    for (i, offset) in [skew + 1, -skew - 1, 3_600_000, -86_400_000].into_iter().enumerate() {
        let unix_ms = (SIM_UNIX_MS as i64 + offset) as u64;
        let mut c = secure_client(key.public(), None, "index", WallClock { at: start, unix_ms }, 40 + i as u64, start);
        let msg = secure::first_datagram(&mut c, start);
        let before = server.secure_stats();
        silent(&mut server, start, prober(i as u32), &msg, &format!("clock off by {offset} ms"));
        assert_eq!(moved(before, server.secure_stats()), vec![("stale_handshakes", 1)]);
    }
    no_state(&server, "stale messages");
    for (i, offset) in [skew, -skew, 0].into_iter().enumerate() {
        let unix_ms = (SIM_UNIX_MS as i64 + offset) as u64;
        let mut c = secure_client(key.public(), None, "index", WallClock { at: start, unix_ms }, 50 + i as u64, start);
        let msg = secure::first_datagram(&mut c, start);
        answered(&mut server, start, client_addr(i), &msg, &format!("clock off by {offset} ms"));
    }
}

/// With an allow list, an unlisted client (who does hold the server's key)
/// gets silence; a listed one is answered.
#[test]
fn an_unlisted_client_gets_silence() {
    let start = Instant::now();
    let key = server_key(6);
    let listed = StaticSecret::generate(&mut StdRng::seed_from_u64(60));
    let allow: HashSet<_> = [listed.public()].into_iter().collect();
    let mut server = secure_server(&key, 6, start, false, |s, _| s.allow_clients = Some(allow));
    for seed in 0..8 {
        let mut c = secure_client(key.public(), None, "index", clock(start), 600 + seed, start);
        let msg = secure::first_datagram(&mut c, start);
        let before = server.secure_stats();
        silent(&mut server, start, prober(seed as u32), &msg, "unlisted");
        assert_eq!(moved(before, server.secure_stats()), vec![("unlisted_clients", 1)]);
        // Nor does sending it again (a replay now) draw anything.
        silent(&mut server, start, prober(seed as u32), &msg, "unlisted, again");
    }
    no_state(&server, "unlisted clients");
    let mut c = secure_client(key.public(), Some(listed), "index", clock(start), 61, start);
    let msg = secure::first_datagram(&mut c, start);
    answered(&mut server, start, client_addr(0), &msg, "listed");
}

/// A client that proved the key but asks for a page the server does not
/// have gets a refusal: one datagram, no longer than its first message,
/// no state kept; the client ends with the reason.
#[test]
fn an_unknown_page_gets_a_refusal_no_longer_than_the_request() {
    for seed in seeds(40) {
        let (mut server, key, start) = probe_server(seed, false);
        let mut c = secure_client(key.public(), None, "no such page", clock(start), 700 + seed, start);
        let msg = secure::first_datagram(&mut c, start);
        let before = server.secure_stats();
        let refusal = answered(&mut server, start, client_addr(0), &msg, &format!("seed {seed}"));
        assert_eq!(moved(before, server.secure_stats()), vec![("rejected", 1)], "seed {seed}");
        no_state(&server, "a refusal");
        c.handle(start, &refusal);
        assert_eq!(c.outcome(), Some(&Err(ConnectionError::Rejected(Refusal::NotFound))), "seed {seed}");
    }
}
