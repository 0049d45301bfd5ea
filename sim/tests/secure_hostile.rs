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

use anon_proto::secure::{SecureServer, SecureServerConfig, SecureStats, StaticSecret, WallClock};
use anon_proto::wire::{Flags, Header};
use anon_proto::{ClientConfig, ClientConn, ConnectionError, Refusal, Server, ServerConfig};
use anon_sim::{LinkConfig, SERVER_ADDR, SIM_UNIX_MS, SecureSetup, Setup, Sim, SimClient, client_addr, page, seeds};
use bytes::Bytes;
use common::{SYN, dgram};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use secure::{clock, drain, first_datagram, first_message, secure_client, secure_server, server_key};

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

/// Feeds one probe and asserts the server says nothing.
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
            ("noise_reads", s.noise_reads),
            ("stale_handshakes", s.stale_handshakes),
            ("replayed_handshakes", s.replayed_handshakes),
            ("unlisted_clients", s.unlisted_clients),
            ("refused", s.refused),
            ("handshakes", s.handshakes),
            ("confirmed", s.confirmed),
            ("evicted", s.evicted),
            ("rejected", s.rejected),
            ("forged", s.forged),
            ("replayed", s.replayed),
            ("migrations", s.migrations),
            ("path_probes", s.path_probes),
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

/// A real first message draws exactly one answer and at most one early
/// segment, no longer together than it (docs/PROTOCOL.md §8.3); returns
/// the answer.
#[track_caller]
fn answered(server: &mut SecureServer, now: Instant, from: SocketAddr, msg: &[u8], what: &str) -> Vec<u8> {
    let early_before = server.secure_stats().early_segments;
    server.handle_kind(now, from, msg);
    let sent = drain(server, now);
    let early = server.secure_stats().early_segments - early_before;
    assert!(
        early <= 1 && sent.len() as u64 == 1 + early,
        "{what}: one answer, {early} early segments, {} datagrams",
        sent.len()
    );
    assert!(sent.iter().all(|d| d.0 == from), "{what}");
    let total: usize = sent.iter().map(|d| d.1.len()).sum();
    assert!(total <= msg.len(), "{what}: answer and early segment {total} > first message {}", msg.len());
    // The early segment takes what the answer leaves, but for 0 to 64
    // bytes, whatever the page's length.
    assert!(
        early == 0 || total + 64 >= msg.len(),
        "{what}: answer and early segment {total}, first message {}",
        msg.len()
    );
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

/// The replay filter must outlive every message it guards: a message whose
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
    // A millisecond later the message is stale anyway (the filter may
    // still hold it: it keeps a message one to two windows).
    let now = start + 2 * skew + Duration::from_millis(1);
    let before = server.secure_stats();
    silent(&mut server, now, prober(9), &msg, "stale");
    let why = moved(before, server.secure_stats());
    assert!(why == [("stale_handshakes", 1)] || why == [("replayed_handshakes", 1)], "{why:?}");
    // Two windows on, forgotten: dropped as stale by its clock alone.
    let now = start + 4 * skew + Duration::from_millis(2);
    let before = server.secure_stats();
    silent(&mut server, now, prober(9), &msg, "stale, forgotten");
    assert_eq!(moved(before, server.secure_stats()), vec![("stale_handshakes", 1)]);
}

/// The same edge for a message that arrives in the last millisecond of a
/// generation of the replay filter, the worst case for a filter that
/// forgets a generation at a time: it is still remembered when its clock
/// last passes, twice the skew later.
#[test]
fn a_replay_of_a_message_from_the_end_of_a_generation_gets_silence() {
    let (mut server, key, start) = probe_server(5, false);
    let skew = Duration::from_secs(300);
    // The server's filter began at `start`; a generation lasts 2 * skew + 1 ms.
    let late = start + 2 * skew;
    let ahead = WallClock { at: start, unix_ms: SIM_UNIX_MS + skew.as_millis() as u64 };
    let mut c = secure_client(key.public(), None, "index", ahead, 31, late);
    let msg = secure::first_datagram(&mut c, late);
    answered(&mut server, late, client_addr(0), &msg, "a message in a generation's last millisecond");
    let now = late + 2 * skew;
    let before = server.secure_stats();
    silent(&mut server, now, prober(9), &msg, "its replay at the edge");
    assert_eq!(moved(before, server.secure_stats()), vec![("replayed_handshakes", 1)]);
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
        assert_eq!(moved(before, server.secure_stats()), vec![("noise_reads", 1), ("unlisted_clients", 1)]);
        // Nor does sending it again draw anything, nor cost a read: it is
        // remembered like any other.
        let before = server.secure_stats();
        silent(&mut server, start, prober(seed as u32), &msg, "unlisted, again");
        assert_eq!(moved(before, server.secure_stats()), vec![("replayed_handshakes", 1)]);
    }
    no_state(&server, "unlisted clients");
    assert_eq!(server.replay_entries(), 8);
    let mut c = secure_client(key.public(), Some(listed), "index", clock(start), 61, start);
    let msg = secure::first_datagram(&mut c, start);
    answered(&mut server, start, client_addr(0), &msg, "listed");
}

/// One round of a hand-driven exchange at `now`: the server's timers, then
/// what it sends (delivered to the client when addressed to `at`), then what
/// the client sends, as if from `from`. Returns the bytes sent to `watch`
/// and the bytes the server received from there.
fn exchange(
    server: &mut SecureServer,
    client: &mut anon_proto::secure::SecureClient,
    now: Instant,
    at: SocketAddr,
    from: SocketAddr,
    watch: SocketAddr,
) -> (usize, usize) {
    server.handle_timeout(now);
    client.handle_timeout(now);
    let mut to_watch = 0;
    for (to, d) in drain(server, now) {
        if to == watch {
            to_watch += d.len();
        }
        if to == at {
            client.handle(now, &d);
        }
    }
    let mut from_watch = 0;
    for d in secure::drain_client(client, now) {
        if from == watch {
            from_watch += d.len();
        }
        server.handle_kind(now, from, &d);
    }
    (to_watch, from_watch)
}

/// A client whose address changes between the answer and its first sealed
/// datagram (a NAT rebinding at that moment) still confirms, from the new
/// address: a client with keys never sends a first message again, so
/// refusing to confirm from a new address would strand it. The new address
/// gets only probes, at most three times what came from there, until the
/// client answers one; then the connection moves there and the page
/// follows. A probe lost is made good by the next datagram from there (the
/// client's silence probe) (docs/PROTOCOL.md §8.4, "Path validation").
#[test]
fn a_client_that_moves_before_its_first_sealed_datagram_confirms_and_moves_once_proven() {
    let (old, new) = (client_addr(0), client_addr(1));
    for seed in seeds(4) {
        for lose_first_probe in [false, true] {
            let what = format!("seed {seed}, first probe lost: {lose_first_probe}");
            let (mut server, key, start) = probe_server(seed, false);
            let (mut c, msg) = first_message(key.public(), 950 + seed, clock(start), start);
            let answer = answered(&mut server, start, old, &msg, "the answer");
            c.handle(start, &answer);
            let (mut now, mut to_new, mut from_new) = (start, 0, 0);
            let mut lost = !lose_first_probe;
            for _ in 0..2_000 {
                if server.secure_stats().migrations > 0 {
                    break;
                }
                now += Duration::from_millis(5);
                server.handle_timeout(now);
                c.handle_timeout(now);
                for (to, d) in drain(&mut server, now) {
                    if to == new {
                        to_new += d.len();
                        if std::mem::replace(&mut lost, true) {
                            c.handle(now, &d);
                        }
                    }
                }
                for d in secure::drain_client(&mut c, now) {
                    from_new += d.len();
                    server.handle_kind(now, new, &d);
                }
                assert!(to_new <= 3 * from_new, "{what}: {to_new} bytes to an unproven address, {from_new} from it");
            }
            let s = server.secure_stats();
            assert_eq!((s.confirmed, s.migrations), (1, 1), "{what}: {s:?}");
            assert!(s.path_probes > u64::from(lose_first_probe), "{what}: {s:?}");
            // Proven: everything now goes to the new address.
            let mut later = 0;
            for _ in 0..4_000 {
                if c.outcome().is_some() {
                    break;
                }
                now += Duration::from_millis(5);
                let (to, _) = exchange(&mut server, &mut c, now, new, new, new);
                later += to;
            }
            assert_eq!(c.outcome(), Some(&Ok(())), "{what}: {:?}", server.secure_stats());
            assert!(later > secure::probe_page().len(), "{what}: the page went to the new address");
        }
    }
}

/// A client that holds the bridge line and aims its transfer at a victim,
/// sending its sealed datagrams from the victim's address (every one, or
/// every other one), gets nothing but probes sent there, at most three
/// times what it sent from there; the victim, who answers nothing, never
/// proves the address, and the page keeps going to the client's own,
/// proven, address.
#[test]
fn a_client_cannot_aim_its_page_at_a_victim() {
    let victim = prober(99);
    for seed in seeds(4) {
        for every_other in [false, true] {
            let what = format!("seed {seed}, every other datagram: {every_other}");
            let (mut server, mut c, start) = big_transfer(seed);
            let mut now = start;
            exchange(&mut server, &mut c, now, client_addr(0), client_addr(0), victim);
            let (mut to_victim, mut from_victim) = (0, 0);
            for round in 0..4_000 {
                if c.outcome().is_some() {
                    break;
                }
                now += Duration::from_millis(5);
                let from = if every_other && round % 2 == 1 { client_addr(0) } else { victim };
                let (to, sent) = exchange(&mut server, &mut c, now, client_addr(0), from, victim);
                to_victim += to;
                from_victim += sent;
                assert!(to_victim <= 3 * from_victim, "{what}: {to_victim} bytes to the victim for {from_victim}");
            }
            let s = server.secure_stats();
            assert!(from_victim > 0, "{what}: the attack ran");
            assert!(s.path_probes >= 3 && s.migrations == 0, "{what}: {s:?}");
            assert_eq!(c.outcome(), Some(&Ok(())), "{what}: the page went to the client: {s:?}");
        }
    }
}

/// A big page, so that a transfer lasts many rounds, and a client of it.
fn big_transfer(seed: u64) -> (SecureServer, anon_proto::secure::SecureClient, Instant) {
    let start = Instant::now();
    let key = server_key(seed);
    let config = SecureServerConfig::new(key.clone(), vec!["index".into()], clock(start));
    let pages = vec![Bytes::from(page(2_000_000, seed))];
    let rng = Box::new(StdRng::seed_from_u64(seed));
    let mut server = SecureServer::new(config, ServerConfig::default(), pages, None, rng);
    let (mut c, msg) = first_message(key.public(), 990 + seed, clock(start), start);
    let answer = answered(&mut server, start, client_addr(0), &msg, "the answer");
    c.handle(start, &answer);
    (server, c, start)
}

/// An observer that sees the client's datagrams races a copy of each to
/// the server from its own address, and forwards to the client whatever
/// the server sends it (RFC 9000 §9.3.3's off-path forwarding). The
/// genuine datagram, arriving second, shows the client has not moved: the
/// connection stays, nothing but probes goes to the observer, and the
/// page completes.
#[test]
fn raced_copies_of_a_clients_datagrams_do_not_move_its_connection() {
    let observer = prober(77);
    let own = client_addr(0);
    for seed in seeds(4) {
        let (mut server, mut c, start) = big_transfer(seed);
        let (mut now, mut to_observer, mut from_observer) = (start, 0, 0);
        for round in 0..4_000u32 {
            if c.outcome().is_some() {
                break;
            }
            now += Duration::from_millis(5);
            server.handle_timeout(now);
            c.handle_timeout(now);
            for (to, d) in drain(&mut server, now) {
                if to == observer {
                    to_observer += d.len();
                }
                c.handle(now, &d);
            }
            for d in secure::drain_client(&mut c, now) {
                from_observer += d.len();
                server.handle_kind(now, observer, &d);
                // Half the time the server sends before the genuine one
                // comes: the probe reaches the observer, which forwards it.
                if round % 2 == 0 {
                    for (to, p) in drain(&mut server, now) {
                        if to == observer {
                            to_observer += p.len();
                        }
                        c.handle(now, &p);
                    }
                }
                server.handle_kind(now, own, &d);
            }
            assert!(to_observer <= 3 * from_observer, "seed {seed}: {to_observer} bytes to the observer");
        }
        let s = server.secure_stats();
        assert_eq!(c.outcome(), Some(&Ok(())), "seed {seed}: {s:?}");
        assert_eq!(s.migrations, 0, "seed {seed}: moved to the observer: {s:?}");
        assert!(s.path_probes > 0, "seed {seed}: the race was run: {s:?}");
    }
}

/// A NAT that gives every datagram a new source port (against RFC 4787's
/// REQ-2) and delivers what comes back only to its 2 newest: the client
/// proves a port with a later datagram, from another, and the transfer
/// goes on from port to port and completes.
#[test]
fn a_client_behind_a_nat_that_changes_port_every_datagram_completes() {
    for seed in seeds(4) {
        let (mut server, mut c, start) = big_transfer(seed);
        let mut now = start;
        let mut port = 0u16;
        for _ in 0..8_000 {
            if c.outcome().is_some() {
                break;
            }
            now += Duration::from_millis(5);
            server.handle_timeout(now);
            c.handle_timeout(now);
            for (to, d) in drain(&mut server, now) {
                let offset = to.port().wrapping_sub(client_addr(0).port());
                if port.wrapping_sub(offset) < 2 {
                    c.handle(now, &d);
                }
            }
            for d in secure::drain_client(&mut c, now) {
                port = port.wrapping_add(1);
                let mut from = client_addr(0);
                from.set_port(from.port().wrapping_add(port));
                server.handle_kind(now, from, &d);
            }
        }
        let s = server.secure_stats();
        assert_eq!(c.outcome(), Some(&Ok(())), "seed {seed}: {s:?}");
        assert!(s.migrations > 0, "seed {seed}: {s:?}");
    }
}

/// The per-source limit counts sources by the configured prefixes, as the
/// plaintext server does: with `source_prefix_v4` 24, two clients of one /24
/// are one source; with 32 (the default), two.
#[test]
fn the_per_source_limit_counts_by_the_configured_prefix() {
    let start = Instant::now();
    let key = server_key(9);
    for (prefix, second_answered) in [(24, false), (32, true)] {
        let mut server = secure_server(&key, 9, start, false, |_, c| {
            c.max_per_source = 1;
            c.source_prefix_v4 = prefix;
        });
        let mut a = secure_client(key.public(), None, "index", clock(start), 900, start);
        let msg = secure::first_datagram(&mut a, start);
        answered(&mut server, start, prober(1), &msg, "first client");
        let mut b = secure_client(key.public(), None, "index", clock(start), 901, start);
        let msg = secure::first_datagram(&mut b, start);
        let before = server.secure_stats();
        if second_answered {
            answered(&mut server, start, prober(2), &msg, "another /32");
        } else {
            silent(&mut server, start, prober(2), &msg, "the same /24");
            assert_eq!(moved(before, server.secure_stats()), vec![("noise_reads", 1), ("refused", 1)]);
        }
    }
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
        assert_eq!(moved(before, server.secure_stats()), vec![("noise_reads", 1), ("rejected", 1)], "seed {seed}");
        no_state(&server, "a refusal");
        c.handle(start, &refusal);
        assert_eq!(c.outcome(), Some(&Err(ConnectionError::Rejected(Refusal::NotFound))), "seed {seed}");
    }
}

// ---- sealed-data forgeries ------------------------------------------------

/// Mid-transfer, a hostile peer on the path sends the server: a real data
/// datagram again (from the client's address and from a third one), real
/// ones with a wrong tag, a flipped body bit or cut short (a valid token
/// each), a server datagram reflected back, and the client's first message
/// again. Nothing is answered, each is counted, the connection does not
/// move, and the transfer completes.
#[test]
fn sealed_forgeries_and_replays_are_dropped_and_move_nothing() {
    for seed in seeds(4) {
        let body = page(1_000_000, seed);
        let link = LinkConfig::bottleneck(20, Duration::from_millis(10));
        let mut sim = Sim::secure(Setup::new(seed, link, body.clone()), SecureSetup::new(seed));
        sim.net.record = Some(Vec::new());
        sim.run(Duration::from_millis(150), u64::MAX);
        // Everything recorded by now has been delivered 30 ms from now.
        let seen = sim.net.record.as_ref().unwrap().clone();
        sim.run(Duration::from_millis(200), u64::MAX);
        assert!(sim.clients[0].data.len() < body.len(), "seed {seed}: still mid-transfer");
        let me = client_addr(0);
        let c2s: Vec<&Vec<u8>> = seen.iter().filter(|d| d.to == SERVER_ADDR).map(|d| &d.bytes).collect();
        let s2c: Vec<&Vec<u8>> = seen.iter().filter(|d| d.from == SERVER_ADDR).map(|d| &d.bytes).collect();
        assert!(c2s.len() > 20, "seed {seed}: {} datagrams", c2s.len());
        let (first, data) = (c2s[0].clone(), c2s[c2s.len() - 1].clone());
        let third = prober(99);
        let now = sim.now;
        // Whatever was due has gone out: anything now is the probes' doing.
        assert!(drain(&mut sim.server, now).is_empty());
        let probes: Vec<(&str, SocketAddr, Vec<u8>, &str)> = {
            let mut v = vec![
                ("replay", me, data.clone(), "replayed"),
                ("replay from a third address", third, data.clone(), "replayed"),
                ("an older one again", third, c2s[c2s.len() / 2].clone(), "replayed"),
            ];
            let mut tag = data.clone();
            *tag.last_mut().unwrap() ^= 1;
            v.push(("wrong tag", me, tag.clone(), "forged"));
            v.push(("wrong tag, third address", third, tag, "forged"));
            let mut body_bit = data.clone();
            body_bit[30] ^= 0x10;
            v.push(("body bit", me, body_bit, "forged"));
            let mut pn_bit = data.clone();
            pn_bit[16] ^= 0x01;
            v.push(("packet number bit", me, pn_bit, "forged"));
            v.push(("cut short", me, data[..data.len() - 1].to_vec(), "forged"));
            v.push(("reflected", third, s2c[s2c.len() - 1].clone(), "not_ours"));
            v.push(("first message again", third, first.clone(), "replayed_handshakes"));
            v
        };
        for (what, from, bytes, counter) in probes {
            let before = sim.server.secure_stats();
            silent(&mut sim.server, now, from, &bytes, &format!("seed {seed}: {what}"));
            assert_eq!(moved(before, sim.server.secure_stats()), vec![(counter, 1)], "seed {seed}: {what}");
        }
        let report = sim.run(Duration::from_secs(60), u64::MAX);
        assert!(report.quiescent, "seed {seed}");
        assert_eq!(sim.clients[0].conn.outcome(), Some(&Ok(())), "seed {seed}");
        assert!(sim.clients[0].data == body, "seed {seed}");
        let s = sim.server.secure_stats();
        assert_eq!(s.migrations, 0, "seed {seed}: {s:?}");
        let record = sim.net.record.as_ref().unwrap();
        assert!(record.iter().all(|d| d.to != third), "seed {seed}: the server sent to the third address");
    }
    // (A genuine move, a datagram nobody delivered before arriving from a
    // new address, does move the connection: tests/secure.rs.)
}

// ---- the flood ------------------------------------------------------------

type SecureSim = Sim<SecureServer, anon_proto::secure::SecureClient>;

/// `flood` valid first messages of a leaked bridge line, one every `gap`
/// from the start, each from its own spoofed address (returned): one
/// static key for all (the allow list is off, `attacker` seeds it), a
/// fresh handshake and connection ID each (seeds from `seeds_from`).
fn spoofed_flood(
    sim: &mut SecureSim,
    key: &StaticSecret,
    flood: usize,
    gap: Duration,
    seeds_from: u64,
    attacker: u64,
) -> Vec<SocketAddr> {
    let start = sim.start;
    let attacker = Some(StaticSecret::generate(&mut StdRng::seed_from_u64(attacker)));
    let mut spoofed = Vec::with_capacity(flood);
    for i in 0..flood {
        let at = start + gap * i as u32;
        let mut c = secure_client(key.public(), attacker.clone(), "index", clock(start), seeds_from + i as u64, at);
        let msg = secure::first_datagram(&mut c, at);
        let from = prober(i as u32);
        sim.net.send(at, from, SERVER_ADDR, &msg);
        spoofed.push(from);
    }
    spoofed
}

/// Per address, from the simulator's record: datagrams and bytes to the
/// server, datagrams and bytes from it.
fn tally(sim: &SecureSim) -> HashMap<SocketAddr, (usize, usize, usize, usize)> {
    let mut tally: HashMap<SocketAddr, (usize, usize, usize, usize)> = HashMap::new();
    for d in sim.net.record.as_ref().unwrap() {
        if d.to == SERVER_ADDR {
            let e = tally.entry(d.from).or_default();
            e.0 += 1;
            e.1 += d.bytes.len();
        } else {
            let e = tally.entry(d.to).or_default();
            e.2 += 1;
            e.3 += d.bytes.len();
        }
    }
    tally
}

/// Sends `n` fresh first messages from spoofed addresses at `start`
/// (seeds from `seeds_from`), which spend the server's budget of reads
/// (and beyond it draw cookie replies); what they draw is drained.
fn spend_reads(server: &mut SecureServer, key: &StaticSecret, n: u32, seeds_from: u64, start: Instant) {
    for i in 0..n {
        let (_, msg) = first_message(key.public(), seeds_from + u64::from(i), clock(start), start);
        server.handle_kind(start, prober(i), &msg);
        drain(server, start);
    }
}

/// A leaked bridge line: thousands of valid first messages from spoofed
/// addresses, 2,000 a second for a second, each address sending one. Honest
/// clients start during the flood and complete; the server's state stays
/// within `max_pending` all along; and no spoofed address is sent more
/// bytes than it sent, nor more than one datagram (the inner SYN|ACK's
/// retransmissions are never sent to an unverified address).
#[test]
fn a_flood_of_valid_first_messages_keeps_state_bounded_and_honest_clients_complete() {
    let seed = 7;
    let flood = 2000usize;
    let max_pending = 128;
    let key = server_key(seed);
    let mut setup = Setup::new(seed, LinkConfig::clean(Duration::from_millis(10)), page(1, 1));
    setup.clients = 0;
    let mut sim = Sim::secure(setup, SecureSetup { key: key.clone(), ..SecureSetup::new(seed) });
    sim.server = secure_server(&key, seed, sim.start, false, |s, _| s.max_pending = max_pending);
    sim.net.record = Some(Vec::new());
    let start = sim.start;
    let spoofed = spoofed_flood(&mut sim, &key, flood, Duration::from_micros(500), 10_000, 70);
    let want = secure::probe_page();
    let mut honest = 0;
    let mut peak = (0usize, 0usize, 0usize, 0usize);
    let bound = max_pending + 8;
    for slice in 1..=200u64 {
        let t = Duration::from_millis(10 * slice);
        if [200, 500, 800].contains(&t.as_millis()) {
            for _ in 0..2 {
                let now = sim.now;
                let c = secure_client(key.public(), None, "index", clock(start), 90 + honest as u64, now);
                sim.clients.push(SimClient::new(client_addr(honest), c));
                honest += 1;
            }
        }
        sim.run(t, u64::MAX);
        let (sessions, virtuals) = sim.server.session_count();
        let conns = sim.server.connection_count();
        let half = sim.server.half_open_count();
        peak = (peak.0.max(sessions), peak.1.max(virtuals), peak.2.max(conns), peak.3.max(half));
        assert!(virtuals <= bound && conns <= bound && half <= max_pending, "at {t:?}: {peak:?}");
        assert!(sessions <= 4 * bound, "at {t:?}: {sessions} sessions");
        assert!(sim.server.replay_entries() <= flood + 16 * honest);
    }
    let report = sim.run(Duration::from_secs(600), u64::MAX);
    assert!(report.quiescent, "{report:?}");
    for (i, c) in sim.clients.iter().enumerate() {
        assert_eq!(c.conn.outcome(), Some(&Ok(())), "honest client {i}");
        assert!(c.data == want, "honest client {i}");
    }
    let s = sim.server.secure_stats();
    println!("flood: {s:?}, peak (sessions, connections, inner connections, half-open) {peak:?}");
    assert_eq!(s.confirmed, honest as u64, "{s:?}");
    assert!(s.handshakes >= flood as u64, "{s:?}");
    assert!(s.evicted >= (flood - max_pending) as u64, "{s:?}");
    // No amplification, no retransmission to an unverified address.
    let tally = tally(&sim);
    // An answer and an early segment at most, together no longer than
    // the first message (docs/PROTOCOL.md §8.3).
    let mut sent = 0;
    for from in &spoofed {
        let (n_in, b_in, n_out, b_out) = tally[from];
        assert_eq!(n_in, 1);
        assert!((1..=2).contains(&n_out) && b_out <= b_in, "{from}: sent {n_out} datagrams, {b_out} bytes for {b_in}");
        sent += n_out;
    }
    // One answer each, the handshake the key lets anyone make, and its
    // early segment; nothing sent again.
    assert!(sent >= flood && sent as u64 <= flood as u64 + s.early_segments, "{sent} datagrams: {s:?}");
    assert_eq!(sim.server.session_count(), (0, 0), "state left after the flood");
}

/// The same leaked bridge line, 5,000 fresh first messages a second from
/// spoofed addresses, against a server that reads 500 a second: beyond
/// its budget it reads only messages with their source's cookie, which
/// the spoofer never gets (the replies go to the spoofed addresses), so
/// its Diffie-Hellman work stays within the budget while honest clients,
/// which get cookies and send their first message again with them,
/// complete. No spoofed address gets more than two datagrams (an answer
/// and its early segment, or a cookie reply), nor more bytes than it sent
/// (docs/PROTOCOL.md §8.3, rule 1).
#[test]
fn under_a_flood_the_server_reads_within_its_budget_and_cookies_let_honest_clients_in() {
    let seed = 11;
    let (flood, per_sec) = (5_000usize, 500u32);
    let key = server_key(seed);
    let mut setup = Setup::new(seed, LinkConfig::clean(Duration::from_millis(10)), page(1, 1));
    setup.clients = 0;
    let mut sim = Sim::secure(setup, SecureSetup { key: key.clone(), ..SecureSetup::new(seed) });
    sim.server = secure_server(&key, seed, sim.start, false, |s, _| s.handshake_reads = per_sec);
    sim.net.record = Some(Vec::new());
    let start = sim.start;
    let spoofed = spoofed_flood(&mut sim, &key, flood, Duration::from_micros(200), 20_000, 71);
    let mut honest = 0;
    for ms in [100u64, 400, 700] {
        sim.run(Duration::from_millis(ms), u64::MAX);
        let now = sim.now;
        let c = secure_client(key.public(), None, "index", clock(start), 95 + honest as u64, now);
        sim.clients.push(SimClient::new(client_addr(honest), c));
        honest += 1;
    }
    let report = sim.run(Duration::from_secs(120), u64::MAX);
    assert!(report.quiescent, "{report:?}");
    let want = secure::probe_page();
    for (i, c) in sim.clients.iter().enumerate() {
        assert_eq!(c.conn.outcome(), Some(&Ok(())), "honest client {i}");
        assert!(c.data == want, "honest client {i}");
    }
    // Each came during the flood; one that found a read left needed none.
    assert!(sim.clients.iter().any(|c| c.conn.secure_stats().cookies >= 1), "no honest client got a cookie");
    let s = sim.server.secure_stats();
    println!("flood with cookies: {s:?}");
    // The flood lasts one second: its budget and one burst (a tenth of
    // it), and the honest clients' first messages.
    let budget = u64::from(per_sec) + u64::from(per_sec / 10) + 4 * honest as u64;
    assert!(s.noise_reads <= budget, "{} reads for a budget of {budget}: {s:?}", s.noise_reads);
    assert!(s.cookie_replies >= (flood as u64).saturating_sub(budget), "{s:?}");
    let tally = tally(&sim);
    for from in &spoofed {
        let (_, b_in, n_out, b_out) = tally[from];
        assert!(n_out <= 2 && b_out <= b_in, "{from}: {n_out} datagrams, {b_out} bytes for {b_in}");
    }
}

/// A first message that drew a cookie reply was not read, but it is
/// remembered: a censor's replay of it from its own address gets silence,
/// under load and after it (a cookie reply or an answer would confirm the
/// server to someone without the bridge line).
#[test]
fn a_replay_of_a_message_answered_with_a_cookie_gets_silence() {
    let start = Instant::now();
    let key = server_key(13);
    let mut server = secure_server(&key, 13, start, false, |s, _| s.handshake_reads = 100);
    // The budget's burst: a tenth of a second's reads.
    spend_reads(&mut server, &key, 10, 50_000, start);
    let (_, msg) = first_message(key.public(), 60_000, clock(start), start);
    server.handle_kind(start, client_addr(1), &msg);
    assert_eq!(drain(&mut server, start).len(), 1, "a cookie reply");
    assert_eq!(server.secure_stats().cookie_replies, 1);
    let censor = prober(9_999);
    silent(&mut server, start, censor, &msg, "its replay under load");
    silent(&mut server, start + Duration::from_secs(60), censor, &msg, "its replay once the load has passed");
    assert_eq!(server.secure_stats().noise_reads, 10, "never read");
}

/// A client sends its first message again at once for a cookie only once
/// per first message its timer sends: a second cookie reply (here the
/// server's own, for another address; a forger's would do the same) draws
/// nothing until then.
#[test]
fn a_client_answers_one_cookie_reply_per_first_message() {
    let start = Instant::now();
    let key = server_key(14);
    let mut server = secure_server(&key, 14, start, false, |s, _| s.handshake_reads = 100);
    spend_reads(&mut server, &key, 10, 70_000, start);
    let (mut c, msg) = first_message(key.public(), 80_000, clock(start), start);
    server.handle_kind(start, client_addr(1), &msg);
    let reply = drain(&mut server, start);
    c.handle(start, &reply[0].1);
    assert_eq!(c.secure_stats().cookies, 1);
    let again = secure::first_datagram(&mut c, start);
    // From another address its cookie is no cookie: another cookie reply,
    // with that address's cookie, for the client's newest first message.
    server.handle_kind(start, client_addr(2), &again);
    let reply = drain(&mut server, start);
    assert_eq!(reply.len(), 1, "a second cookie reply");
    c.handle(start, &reply[0].1);
    assert_eq!(c.secure_stats().cookies, 1, "taken once per first message");
    assert!(!c.poll_transmit(start, &mut Vec::new()), "nothing sent again at once");
    assert_eq!(c.secure_stats().initiations, 2);
}

/// A source that holds its cookie (its address is real) and sends fresh
/// first messages with it as fast as it can gets its own budget of reads
/// while the server is under load, no more.
#[test]
fn under_load_one_real_source_gets_its_own_budget_of_reads() {
    let start = Instant::now();
    let key = server_key(12);
    let defaults = SecureServerConfig::new(key.clone(), Vec::new(), clock(start));
    let mut server = secure_server(&key, 12, start, false, |s, _| s.handshake_reads = defaults.handshake_reads);
    // Spend the global budget (a tenth of a second's reads) from spoofed
    // sources.
    spend_reads(&mut server, &key, 400, 30_000, start);
    let reads = server.secure_stats().noise_reads;
    let from = client_addr(5);
    let mut cookies = 0;
    for i in 0..100u64 {
        let (mut c, msg) = first_message(key.public(), 40_000 + i, clock(start), start);
        server.handle_kind(start, from, &msg);
        let replies = drain(&mut server, start);
        assert_eq!(replies.len(), 1, "message {i}: a cookie");
        assert!(replies[0].1.len() <= msg.len(), "message {i}: a cookie reply longer than its message");
        c.handle(start, &replies[0].1);
        assert_eq!(c.secure_stats().cookies, 1, "message {i}: the client took the cookie");
        let again = secure::first_datagram(&mut c, start);
        server.handle_kind(start, from, &again);
        if !drain(&mut server, start).is_empty() {
            cookies += 1;
        }
    }
    let s = server.secure_stats();
    let per_source = defaults.handshake_reads_per_source;
    assert_eq!(s.noise_reads - reads, u64::from(per_source), "{s:?}");
    assert_eq!(cookies, u64::from(per_source), "{s:?}");
    assert_eq!(s.rate_limited, 100 - u64::from(per_source), "{s:?}");
}

// ---- a secure client and a plaintext server -------------------------------

/// A secure client sent to a plaintext-only server (a wrong port, an old
/// server): it sends only first messages, takes nothing the server sends,
/// never gets a page byte and ends with a connect timeout.
///
/// A plaintext server reads the three low bits of bytes 8..12 as flags and
/// ignores the rest (PROTOCOL.md §1), so it takes any datagram of 12 bytes
/// or more whose SYN bit is set and ACK bit clear for a SYN: a quarter of
/// all random byte strings. Secure datagrams cannot avoid that without a
/// fixed bit pattern at byte 11, which the censor's chi-square flags
/// (tests/censor.rs, "a bit kept clear"); so they are taken for a SYN as
/// often as random bytes are, no more, and the plaintext server answers
/// those with a bare baseline SYN|ACK, which the secure client drops.
#[test]
fn a_secure_client_against_a_plaintext_server_times_out_and_takes_nothing() {
    let (mut sent, mut taken) = (0usize, 0usize);
    for seed in seeds(24) {
        let start = Instant::now();
        let key = server_key(seed);
        let server = Server::new(
            ServerConfig::default(),
            Bytes::from(page(10_000, seed)),
            Box::new(StdRng::seed_from_u64(seed)),
        );
        let c = secure_client(key.public(), None, "index", clock(start), 800 + seed, start);
        let link = LinkConfig::clean(Duration::from_millis(10));
        let mut sim = Sim::assemble(start, server, vec![SimClient::new(client_addr(0), c)], link, seed);
        sim.net.record = Some(Vec::new());
        let report = sim.run(Duration::from_secs(120), 1_000_000);
        assert!(report.quiescent, "seed {seed}: {report:?}");
        let c = &sim.clients[0];
        assert!(
            matches!(c.conn.outcome(), Some(Err(ConnectionError::ConnectTimeout(_)))),
            "seed {seed}: {:?}",
            c.conn.outcome()
        );
        assert!(c.data.is_empty());
        let record = sim.net.record.as_ref().unwrap();
        let from_client: Vec<&Vec<u8>> = record.iter().filter(|d| d.to == SERVER_ADDR).map(|d| &d.bytes).collect();
        let to_client = record.len() - from_client.len();
        let stats = c.conn.secure_stats();
        assert_eq!(from_client.len() as u64, stats.initiations, "seed {seed}: only first messages");
        assert_eq!(stats.not_ours, to_client as u64, "seed {seed}: every answer dropped");
        for d in &from_client {
            let syn =
                Header::decode(d).is_ok_and(|(h, _)| h.flags.contains(Flags::SYN) && !h.flags.contains(Flags::ACK));
            taken += usize::from(syn);
            assert!(d.len() >= 360, "seed {seed}: a first message of {} bytes", d.len());
        }
        sent += from_client.len();
        assert_eq!(report.server.completed, 0);
        assert_eq!(report.server.payload_bytes_sent, 0, "seed {seed}: no page byte left the server");
    }
    // Random bytes are taken for a SYN with probability 1/4.
    let high = sent / 4 + 4 * ((sent as f64 * 3.0 / 16.0).sqrt() as usize) + 1;
    println!("plaintext server took {taken} of {sent} secure first messages for a SYN (random bytes: 1/4)");
    assert!(taken <= high, "{taken} of {sent} taken for a SYN; random bytes: at most {high}");
}

/// Answers and early segments have the same lengths whatever the page:
/// a page of 5 bytes, one of 2 MB, and a refusal (no such page) are
/// answered in one band of lengths, and the two early segments, padded to
/// what their answers leave, do not show the short page's length.
#[test]
fn answer_and_early_segment_lengths_do_not_show_the_page() {
    let mut answers: Vec<Vec<usize>> = vec![Vec::new(); 3];
    for seed in seeds(8) {
        for (i, page_len) in [5usize, 2_000_000, 0].into_iter().enumerate() {
            let start = Instant::now();
            let key = server_key(seed);
            let config = SecureServerConfig::new(key.clone(), vec!["index".into()], clock(start));
            let pages = vec![Bytes::from(page(page_len.max(1), seed))];
            let rng = Box::new(StdRng::seed_from_u64(seed));
            let mut server = SecureServer::new(config, ServerConfig::default(), pages, None, rng);
            let ask = if page_len == 0 { "missing" } else { "index" };
            let mut c = secure_client(key.public(), None, ask, clock(start), 70 + seed, start);
            let msg = first_datagram(&mut c, start);
            server.handle_kind(start, client_addr(0), &msg);
            let sent = drain(&mut server, start);
            let lens: Vec<usize> = sent.iter().map(|d| d.1.len()).collect();
            let what = format!("seed {seed}, page of {page_len} bytes: {lens:?} for {}", msg.len());
            assert!((512..=576).contains(&lens[0]), "{what}: the answer");
            if page_len == 0 {
                assert_eq!(lens.len(), 1, "{what}: a refusal has no early segment");
            } else {
                assert_eq!(lens.len(), 2, "{what}: answer and early segment");
                let total = lens[0] + lens[1];
                assert!(total <= msg.len() && total + 64 >= msg.len(), "{what}");
            }
            answers[i].push(lens[0]);
        }
    }
    // The answers' lengths are drawn, not fixed.
    for a in &answers {
        assert!(a.iter().collect::<HashSet<_>>().len() > 1, "{answers:?}");
    }
}

// ---- state is freed -------------------------------------------------------

/// A first message answered and never confirmed (a spoofed address, a
/// client that went away): the inner SYN|ACK's timer runs out with nothing
/// sent, and everything the handshake made is freed.
#[test]
fn an_unconfirmed_handshake_is_freed_and_its_retransmissions_never_sent() {
    for seed in seeds(4) {
        let (mut server, key, start) = probe_server(seed, false);
        let (_, msg) = first_message(key.public(), 900 + seed, clock(start), start);
        answered(&mut server, start, prober(1), &msg, "the answer");
        assert_eq!(server.session_count(), (1, 1));
        assert_eq!(server.half_open_count(), 1);
        let mut now = start;
        let mut wakeups = 0;
        while let Some(t) = server.poll_timeout() {
            assert!(t <= start + Duration::from_secs(600), "seed {seed}: timers beyond 10 minutes");
            now = now.max(t);
            server.handle_timeout(now);
            let sent = drain(&mut server, now);
            assert!(
                sent.is_empty(),
                "seed {seed}: sent {} datagrams to an unverified address at {:?}",
                sent.len(),
                now - start
            );
            wakeups += 1;
            assert!(wakeups < 1000);
            if server.connection_count() == 0 && server.session_count() == (0, 0) {
                break;
            }
        }
        assert!(wakeups > 1, "seed {seed}: the inner timer did fire");
        no_state(&server, "after the inner handshake timed out");
        println!("seed {seed}: unconfirmed handshake freed after {:?}, {wakeups} wake-ups", now - start);
    }
}

/// Finished transfers keep their keys through the TIME-WAIT only; a client
/// that vanished mid-transfer is given up at the idle timeout; either way
/// the server ends with nothing.
#[test]
fn state_is_freed_after_the_time_wait_and_after_a_vanished_client() {
    for seed in seeds(3) {
        let body = page(200_000, seed);
        let mut setup = Setup::new(seed, LinkConfig::hostile(0.02), body.clone());
        setup.clients = 3;
        let mut sim = Sim::secure(setup, SecureSetup::new(seed));
        let report = sim.run(Duration::from_secs(120), u64::MAX);
        assert!(report.quiescent, "seed {seed}");
        assert!(sim.clients.iter().all(|c| c.data == body), "seed {seed}");
        let (sessions, virtuals) = sim.server.session_count();
        assert!(sessions >= 1 && virtuals >= 1, "seed {seed}: keys kept for the TIME-WAIT");
        let end = sim.now + Duration::from_secs(10) + Duration::from_millis(1);
        sim.server.handle_timeout(end);
        assert_eq!(sim.server.session_count(), (0, 0), "seed {seed}");
        assert_eq!(sim.server.connection_count(), 0, "seed {seed}");
        assert_eq!(sim.server.half_open_count(), 0, "seed {seed}");
    }
    // A client that stops mid-transfer: its address goes dark.
    let body = page(2_000_000, 5);
    let mut sim = Sim::secure(
        Setup::new(5, LinkConfig::bottleneck(20, Duration::from_millis(10)), body.clone()),
        SecureSetup::new(5),
    );
    sim.run(Duration::from_millis(300), u64::MAX);
    assert!(sim.server.secure_stats().confirmed == 1 && sim.clients[0].data.len() < body.len());
    let mut now = sim.now;
    for _ in 0..10_000 {
        let Some(t) = sim.server.poll_timeout() else { break };
        now = now.max(t);
        sim.server.handle_timeout(now);
        drain(&mut sim.server, now);
        if sim.server.session_count() == (0, 0) && sim.server.connection_count() == 0 {
            break;
        }
    }
    assert!(now - sim.now <= Duration::from_secs(60), "given up after {:?}", now - sim.now);
    no_state(&sim.server, "after the idle timeout");
}

/// The replay filter never fills up: far more first messages than a
/// bounded set could hold are all answered, each replay of them gets
/// silence, and a message is forgotten only once its timestamp can no
/// longer pass the clock check (docs/PROTOCOL.md §8.3, rule 5).
#[test]
fn the_replay_filter_never_fills_up_and_forgets_only_stale_messages() {
    let start = Instant::now();
    let key = server_key(8);
    // 8,192 bits a generation: what 300 messages use leaves a fresh one
    // taken for a replay about once in 30,000.
    let mut server = secure_server(&key, 8, start, false, |s, c| {
        s.replay_filter_bits = 1 << 13;
        s.max_pending = 1_000;
        c.max_connections = 1_000;
        c.max_per_source = 1_000;
    });
    let mut msgs = Vec::new();
    for i in 0..300u64 {
        let (_, msg) = first_message(key.public(), 1000 + i, clock(start), start);
        answered(&mut server, start, prober(i as u32), &msg, &format!("message {i}"));
        msgs.push(msg);
    }
    assert_eq!(server.replay_entries(), 300);
    assert!(server.replay_false_positive_rate() < 1e-4, "{}", server.replay_false_positive_rate());
    for (i, msg) in msgs.iter().enumerate() {
        silent(&mut server, start, prober(5_000 + i as u32), msg, &format!("replay {i}"));
    }
    assert_eq!(server.secure_stats().replayed_handshakes, 300);
    assert_eq!(server.secure_stats().noise_reads, 300, "a replay was read");
    // After the window, the message is stale by its own clock, and
    // forgotten.
    let later = start + Duration::from_secs(1_201);
    let (_, msg) = first_message(key.public(), 2000, clock(start), later);
    answered(&mut server, later, prober(9_001), &msg, "a new message");
    assert_eq!(server.replay_entries(), 1, "the old generations are gone");
    let before = server.secure_stats();
    silent(&mut server, later, prober(9_002), &msgs[1], "an old replay");
    // Dropped by the outer clock, before any Diffie-Hellman work: a
    // forgotten replay costs no more than a remembered one.
    assert_eq!(moved(before, server.secure_stats()), vec![("stale_handshakes", 1)], "no noise read");
}
