//! Hostile peers, packet by packet: a server that tries to inflate the
//! client's memory or hold it forever, a client that tries to hold a server
//! connection forever, and a plain peer that drops SYNs with a payload.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use anon_proto::wire::ext::{AckInfo, Answer, Offer};
use anon_proto::wire::{Flags, HEADER_LEN, Header, Seq};
use anon_proto::{ClientConfig, ClientConn, ConnectionError, Mode, Server, ServerConfig};
use anon_sim::{Datagram, FixedIsn, LinkConfig, Setup, Sim, client_addr, page};
use bytes::Bytes;
use common::*;

const ACK: Flags = Flags::ACK;
const SYN: Flags = Flags::SYN;
const FIN: Flags = Flags::FIN;

fn dgram(seq: u32, ack: u32, flags: Flags, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    Header::new(Seq(seq), Seq(ack), flags).encode(payload, &mut d);
    d
}

fn drain(c: &mut ClientConn, now: Instant) -> usize {
    let mut buf = Vec::new();
    let mut n = 0;
    while c.poll_transmit(now, &mut buf) {
        n += 1;
    }
    n
}

/// A fast-mode client past its handshake with a server (ISN 100) that
/// announced a page of `page_len` bytes in segments of `segment`.
fn fast_client(window: u32, segment: u16, page_len: u64) -> (ClientConn, Instant) {
    let now = Instant::now();
    let mut config = ClientConfig::default();
    let mut fast = config.fast.unwrap();
    fast.recv_window = window;
    config.fast = Some(fast);
    let mut c = ClientConn::new(config, 5000, now);
    drain(&mut c, now);
    let mut answer = Vec::new();
    Answer { segment, page_len, page_sha256: [0; 32] }.encode(&mut answer);
    c.handle(now, &dgram(100, 5001, ACK | SYN, &answer));
    assert_eq!(c.mode(), Mode::Fast { segment });
    drain(&mut c, now);
    (c, now)
}

/// Today's attack: 60,000-byte segments at every 512-byte offset of an
/// 8 MiB window, the first segment withheld, then overlapping, unaligned
/// and out-of-range ones. The client holds at most its window (it used to
/// reach 537 MB), refuses and counts the rest, and still takes the real
/// segments and completes.
#[test]
fn hostile_server_cannot_inflate_the_client() {
    let window = 8 << 20;
    let segment = 1200u16;
    let page_len = 32u64 << 20;
    let (mut c, now) = fast_client(window, segment, page_len);
    let big = vec![0x5a; 60_000];
    let mut sent = 0u64;
    for offset in (512..u64::from(window)).step_by(512) {
        c.handle(now, &dgram(101 + offset as u32, 5002, ACK, &big));
        sent += 1;
    }
    // Unaligned overlapping segments of the right length, segments past the
    // announced page, a FIN short of it.
    for offset in (1300..u64::from(window)).step_by(700).filter(|o| o % u64::from(segment) != 0) {
        c.handle(now, &dgram(101 + offset as u32, 5002, ACK, &big[..usize::from(segment)]));
        sent += 1;
    }
    c.handle(now, &dgram(101 + page_len as u32, 5002, ACK, &big[..10]));
    c.handle(now, &dgram(101 + 2400, 5002, ACK | FIN, &big[..1200]));
    sent += 2;
    assert_eq!(c.buffered(), 0, "nothing refused may be kept");
    assert_eq!(c.stats().segments_refused, sent);
    // Real segments beyond the gap are kept, up to the window and no more.
    for i in 1..(u64::from(window) / 1200 + 50) {
        c.handle(now, &dgram(101 + (i * 1200) as u32, 5002, ACK, &big[..1200]));
    }
    assert!(c.buffered() <= u64::from(window), "{} buffered", c.buffered());
    assert!(c.buffered() > u64::from(window) - 2400, "{} buffered", c.buffered());
    // The same segments again: duplicates, nothing more held.
    let held = c.buffered();
    for i in 1..100u64 {
        c.handle(now, &dgram(101 + (i * 1200) as u32, 5002, ACK, &big[..1200]));
    }
    assert_eq!(c.buffered(), held);
    // The gap fills: everything buffered moves on in order.
    c.handle(now, &dgram(101, 5002, ACK, &big[..1200]));
    assert_eq!(c.buffered(), 0);
    assert_eq!(c.received(), held + 1200);
    // Bounded output: one ACK waiting, however many datagrams came.
    assert_eq!(drain(&mut c, now), 1);
}

/// A server that keeps sending duplicates and empty segments, but no new
/// page byte, cannot hold the client past its timeout.
#[test]
fn dripping_server_cannot_hold_the_client() {
    let (mut c, start) = fast_client(1 << 20, 1200, 10_000);
    c.handle(start, &dgram(101, 5002, ACK, &[7; 1200]));
    let mut now = start;
    while c.outcome().is_none() && now < start + Duration::from_secs(120) {
        now += Duration::from_millis(500);
        c.handle_timeout(now);
        c.handle(now, &dgram(101, 5002, ACK, &[7; 1200]));
        c.handle(now, &dgram(1301, 5002, ACK, &[]));
        drain(&mut c, now);
    }
    let idle = ClientConfig::default().idle_timeout;
    assert_eq!(c.outcome(), Some(&Err(ConnectionError::IdleTimeout(idle))));
    assert!(now - start <= idle + Duration::from_millis(500), "held for {:?}", now - start);
}

/// The same in baseline mode, where the server drips the last segment.
#[test]
fn dripping_baseline_server_cannot_hold_the_client() {
    let start = Instant::now();
    let mut c = ClientConn::new(ClientConfig { fast: None, ..ClientConfig::default() }, 5000, start);
    drain(&mut c, start);
    c.handle(start, &dgram(100, 5001, ACK | SYN, &[]));
    c.handle(start, &dgram(101, 5002, ACK, b"abc"));
    let mut now = start;
    while c.outcome().is_none() && now < start + Duration::from_secs(120) {
        now += Duration::from_millis(500);
        c.handle_timeout(now);
        c.handle(now, &dgram(101, 5002, ACK, b"abc"));
        c.handle(now, &dgram(100, 5001, ACK | SYN, &[]));
        drain(&mut c, now);
    }
    let idle = ClientConfig::default().idle_timeout;
    assert_eq!(c.outcome(), Some(&Err(ConnectionError::IdleTimeout(idle))));
    assert!(now - start <= idle + Duration::from_millis(500));
}

/// A client that SACKs everything but never acknowledges the first segment
/// (and repeats duplicates) is given up at the idle timeout all the same.
#[test]
fn sacking_client_cannot_hold_a_server_connection() {
    let start = Instant::now();
    let peer = client_addr(0);
    let mut s = Server::new(ServerConfig::default(), Bytes::from(page(1 << 20, 1)), Box::new(FixedIsn(100)));
    let mut offer = Vec::new();
    Offer { max_segment: 1000, recv_window: 1 << 20 }.encode(&mut offer);
    s.handle(start, peer, &dgram(5000, 0, SYN, &offer));
    let mut buf = Vec::new();
    while s.poll_transmit(start, &mut buf).is_some() {}
    s.handle(start, peer, &dgram(5001, 101, ACK, &[]));
    let mut now = start;
    let mut seq = 5002;
    while s.connection_count() > 0 && now < start + Duration::from_secs(120) {
        now += Duration::from_millis(100);
        s.handle_timeout(now);
        while s.poll_transmit(now, &mut buf).is_some() {}
        let info = AckInfo { window: 1 << 20, sack: [(Seq(101 + 1000), Seq(101 + 64_000))].into_iter().collect() };
        let mut p = Vec::new();
        info.encode(&mut p);
        s.handle(now, peer, &dgram(seq, 101, ACK, &p));
        seq += 1;
    }
    let idle = ServerConfig::default().idle_timeout;
    assert_eq!(s.connection_count(), 0);
    assert_eq!(s.stats().given_up, 1);
    assert!(now - start <= idle + Duration::from_millis(100), "held for {:?}", now - start);
}

/// A plain peer (or a middlebox) that drops every SYN longer than the
/// 12-byte header: the client's third SYN goes bare and the transfer
/// completes in baseline mode.
#[test]
fn peer_that_drops_long_syns_gets_a_bare_syn() {
    fn long_syn(d: &Datagram) -> bool {
        is_syn(d) && d.bytes.len() > HEADER_LEN
    }
    for seed in 0..5 {
        let mut setup = Setup::new(seed, LinkConfig::clean(Duration::from_millis(10)), page(20_000, seed));
        setup.client.connect_timeout = Duration::from_secs(30);
        let mut sim = Sim::new(setup);
        sim.net.set_filter(drop_first(usize::MAX, long_syn));
        let report = sim.run(Duration::from_secs(120), 1_000_000);
        check(&sim, &report, &page(20_000, seed), 1, seed);
        assert_eq!(sim.clients[0].conn.mode(), Mode::Baseline);
        // Two offers, then the bare SYN.
        assert_eq!(sim.net.dropped, 2, "seed {seed}");
    }
}

/// Baseline mode answers every data segment with its own ACK, duplicates
/// included, even when several arrive before the client sends anything (one
/// receive batch).
#[test]
fn baseline_acks_every_segment_of_a_batch() {
    let now = Instant::now();
    let mut c = ClientConn::new(ClientConfig { fast: None, ..ClientConfig::default() }, 5000, now);
    drain(&mut c, now);
    c.handle(now, &dgram(100, 5001, ACK | SYN, &[]));
    drain(&mut c, now);
    // One batch: the segment, a duplicate of it, the next, a duplicate.
    c.handle(now, &dgram(101, 5002, ACK, b"abc"));
    c.handle(now, &dgram(101, 5002, ACK, b"abc"));
    c.handle(now, &dgram(104, 5003, ACK, b"de"));
    c.handle(now, &dgram(104, 5003, ACK, b"de"));
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while c.poll_transmit(now, &mut buf) {
        out.push(buf.clone());
    }
    assert_eq!(
        out,
        [
            dgram(5002, 104, ACK, &[]),
            dgram(5002, 104, ACK, &[]),
            dgram(5003, 106, ACK, &[]),
            dgram(5003, 106, ACK, &[])
        ]
    );
    assert_eq!(c.stats().retransmissions, 2);
}
