//! Hostile peers, packet by packet: a server that tries to inflate the
//! client's memory or hold it forever, a client that tries to hold a server
//! connection forever, and a plain peer that drops SYNs with a payload.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use anon_proto::wire::ext::{AckInfo, Answer, Offer};
use anon_proto::wire::{HEADER_LEN, Header, Seq};
use anon_proto::{ClientConfig, ClientConn, ConnectionError, Mode, Server, ServerConfig};
use anon_sim::{Datagram, FixedIsn, LinkConfig, Setup, Sim, client_addr, page};
use bytes::Bytes;
use common::*;

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

/// 1,000 hostile fast-mode clients that each offer a 16 MiB window, SACK
/// everything they receive but never acknowledge the first segment: they
/// would hold 14,000 segments each. They arrive ten every 5 ms, so each can
/// grow before the next comes. The scoreboards of all connections together
/// stay within the server's memory budget, and honest clients that arrive
/// meanwhile complete.
#[test]
fn hostile_window_holders_stay_within_the_memory_budget() {
    use anon_proto::config::SEGMENT_COST;
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    let budget: u64 = 32 << 20;
    let config = ServerConfig { memory_budget: budget, max_per_source: 10_000, ..ServerConfig::default() };
    let body = page(4 << 20, 3);
    let start = Instant::now();
    let mut s = Server::new(config, Bytes::from(body.clone()), Box::new(FixedIsn(100)));
    let hostile_addr = |i: u32| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a09_0000 + i)), 50000);
    let mut offer = Vec::new();
    Offer { max_segment: 1200, recv_window: 16 << 20 }.encode(&mut offer);
    let n = 1000u32;
    // Highest page offset each hostile client has seen, and its next seq.
    let mut seen: HashMap<SocketAddr, (u64, u32)> = HashMap::new();
    let mut arrived = 0u32;
    let mut honest: Vec<ClientConn> = Vec::new();
    let mut honest_data: Vec<Vec<u8>> = Vec::new();
    let honest_addr = |i: usize| client_addr(i);
    let mut buf = Vec::new();
    let mut now = start;
    let mut max_tracked = 0;
    let tick = Duration::from_millis(5);
    while now < start + Duration::from_secs(20) {
        for _ in 0..10 {
            if arrived < n {
                s.handle(now, hostile_addr(arrived), &dgram(5000, 0, SYN, &offer));
                seen.insert(hostile_addr(arrived), (0, 5001));
                arrived += 1;
            }
        }
        // Server output, delivered at once.
        let mut to_honest: Vec<(usize, Vec<u8>)> = Vec::new();
        while let Some(to) = s.poll_transmit(now, &mut buf) {
            if let Some(e) = seen.get_mut(&to) {
                let (h, payload) = Header::decode(&buf).unwrap();
                if !h.flags.contains(SYN) {
                    e.0 = e.0.max(u64::from(h.seq.since(Seq(101)) as u32) + payload.len() as u64);
                }
            } else if let Some(i) = (0..honest.len()).find(|&i| honest_addr(i) == to) {
                to_honest.push((i, buf.clone()));
            }
        }
        for (i, d) in to_honest {
            honest[i].handle(now, &d);
        }
        max_tracked = max_tracked.max(s.tracked_segments());
        // Within the budget, plus the 16 segments any connection may keep in
        // flight under pressure.
        let allowed = budget / SEGMENT_COST + 16 * s.connection_count() as u64;
        assert!(s.tracked_segments() <= allowed, "{} segments tracked", s.tracked_segments());
        // Hostile ACKs: the handshake once, then SACK everything but the
        // first segment.
        for (&peer, e) in seen.iter_mut() {
            if e.1 == 5001 {
                s.handle(now, peer, &dgram(5001, 101, ACK, &[]));
                e.1 = 5002;
            } else if e.0 > 1200 {
                let info = AckInfo {
                    window: 16 << 20,
                    sack: [(Seq(101 + 1200), Seq(101 + e.0 as u32))].into_iter().collect(),
                };
                let mut p = Vec::new();
                info.encode(&mut p);
                s.handle(now, peer, &dgram(e.1, 101, ACK, &p));
                e.1 += 1;
            }
        }
        // Honest clients arrive once the hostile ones have had a second.
        if honest.is_empty() && now >= start + Duration::from_secs(1) {
            for i in 0..3 {
                honest.push(ClientConn::new(ClientConfig::default(), 7000 + i, now));
                honest_data.push(Vec::new());
            }
        }
        for (i, c) in honest.iter_mut().enumerate() {
            c.handle_timeout(now);
            while c.poll_transmit(now, &mut buf) {
                s.handle(now, honest_addr(i), &buf);
            }
            honest_data[i].extend_from_slice(c.readable());
            let k = c.readable().len();
            c.consume(k);
        }
        if !honest.is_empty() && honest.iter().all(|c| c.outcome().is_some()) {
            break;
        }
        now += tick;
        s.handle_timeout(now);
    }
    eprintln!("most segments tracked: {max_tracked}; {:?}", s.stats());
    assert!(max_tracked * SEGMENT_COST > budget / 2, "the budget never came under pressure: {max_tracked}");
    assert_eq!(honest.len(), 3);
    for (i, c) in honest.iter().enumerate() {
        assert_eq!(c.outcome(), Some(&Ok(())), "honest client {i}");
        assert!(honest_data[i] == body, "honest client {i}: {} bytes", honest_data[i].len());
    }
}

/// One host usually holds a whole IPv6 /64: `max_per_source` counts IPv6
/// sources by /64 (and IPv4 ones by address, IPv4-mapped included), so one
/// /64 cannot take every slot by changing addresses.
#[test]
fn per_source_limit_counts_ipv6_by_prefix() {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    let now = Instant::now();
    let config = ServerConfig { max_per_source: 2, ..ServerConfig::default() };
    let mut s = Server::new(config, Bytes::from(page(1000, 1)), Box::new(FixedIsn(100)));
    let v6 =
        |net: u16, host: u16| SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, host)), 40000);
    for host in 1..=5 {
        s.handle(now, v6(1, host), &dgram(7, 0, SYN, &[]));
    }
    assert_eq!(s.connection_count(), 2);
    assert_eq!(s.stats().refused_per_source, 3);
    // Another /64 is another source.
    s.handle(now, v6(2, 1), &dgram(7, 0, SYN, &[]));
    assert_eq!(s.connection_count(), 3);
    // IPv4, plain and mapped, by address.
    let mapped = |last: u8| SocketAddr::new(IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, last).to_ipv6_mapped()), 1);
    let plain = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 2);
    s.handle(now, mapped(1), &dgram(7, 0, SYN, &[]));
    s.handle(now, plain, &dgram(7, 0, SYN, &[]));
    s.handle(now, SocketAddr::new(plain.ip(), 3), &dgram(7, 0, SYN, &[]));
    s.handle(now, mapped(2), &dgram(7, 0, SYN, &[]));
    assert_eq!(s.connection_count(), 6);
    assert_eq!(s.stats().refused_per_source, 4);
    // The prefixes are settings.
    use anon_proto::endpoint::source_key;
    let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
    assert_eq!(source_key(a, 32, 48), "2001:db8:1::".parse::<IpAddr>().unwrap());
    assert_eq!(source_key(a, 32, 128), a);
    assert_eq!(source_key(a, 32, 0), "::".parse::<IpAddr>().unwrap());
    let b: IpAddr = "198.51.100.77".parse().unwrap();
    assert_eq!(source_key(b, 24, 64), "198.51.100.0".parse::<IpAddr>().unwrap());
    assert_eq!(source_key(b, 200, 64), b);
}

/// No SYN draws a larger reply: after an offer, a bare SYN with the same
/// ISN (the client's fallback, or a spoofer's) gets no answer; the offer
/// again does. A handshake ACK numbered past ISN + 1 (the client's first ACK
/// was dropped) completes the handshake.
#[test]
fn bare_syn_after_an_offer_draws_nothing_larger() {
    let now = Instant::now();
    let peer = client_addr(0);
    let mut s = Server::new(ServerConfig::default(), Bytes::from(page(5000, 1)), Box::new(FixedIsn(100)));
    let mut offer = Vec::new();
    Offer { max_segment: 1200, recv_window: 1 << 20 }.encode(&mut offer);
    let mut buf = Vec::new();
    let mut replies = |s: &mut Server| {
        let mut out = Vec::new();
        while s.poll_transmit(now, &mut buf).is_some() {
            out.push(buf.len());
        }
        out
    };
    s.handle(now, peer, &dgram(5000, 0, SYN, &offer));
    assert_eq!(replies(&mut s), [HEADER_LEN + Answer::ENCODED_LEN]);
    for _ in 0..10 {
        s.handle(now, peer, &dgram(5000, 0, SYN, &[]));
        assert!(replies(&mut s).is_empty(), "a 12-byte SYN drew a 68-byte SYN|ACK");
    }
    s.handle(now, peer, &dgram(5000, 0, SYN, &offer));
    assert_eq!(replies(&mut s), [HEADER_LEN + Answer::ENCODED_LEN]);
    // A handshake ACK numbered ISN + 2.
    s.handle(now, peer, &dgram(5002, 101, ACK, &[]));
    assert!(!replies(&mut s).is_empty(), "data follows the handshake");
    assert_eq!(s.stats().unexpected, 0);
}

/// A streamed page (docs/PROTOCOL.md §9.7) has no announced length, so a
/// hostile server tries to move its end: a FIN that ends before bytes
/// already held, a second FIN elsewhere, data past the first FIN. Each is
/// refused and nothing refused is kept; the page still completes where the
/// first accepted FIN put it.
#[test]
fn hostile_server_cannot_move_a_streamed_pages_end() {
    let segment = 1000u16;
    let (mut c, now) = fast_client(1 << 20, segment, anon_proto::page::STREAMED);
    let data = vec![0x33u8; 1000];
    // Segments 0 and 2 in hand (1 missing): 1,000 in order, 1,000 held.
    c.handle(now, &dgram(101, 5002, ACK, &data));
    c.handle(now, &dgram(101 + 2000, 5002, ACK, &data));
    assert_eq!((c.received(), c.buffered()), (1000, 1000));
    let refused = c.stats().segments_refused;
    // A FIN that would end the page before the held segment 2.
    c.handle(now, &dgram(101 + 1000, 5002, ACK | FIN, &data[..500]));
    assert_eq!(c.stats().segments_refused, refused + 1, "a FIN before bytes held");
    // The real end: segment 3 short, with FIN, at 3,500.
    c.handle(now, &dgram(101 + 3000, 5002, ACK | FIN, &data[..500]));
    assert_eq!(c.stats().segments_refused, refused + 1, "the real FIN is taken");
    // Another FIN elsewhere, and data past the end: refused, not kept.
    let held = c.buffered();
    c.handle(now, &dgram(101 + 4000, 5002, ACK | FIN, &data[..200]));
    c.handle(now, &dgram(101 + 3500, 5002, ACK, &data[..500]));
    c.handle(now, &dgram(101 + 5000, 5002, ACK, &data));
    assert_eq!(c.stats().segments_refused, refused + 4, "the first FIN accepted fixed the end");
    assert_eq!(c.buffered(), held);
    assert!(!c.is_finished());
    // The gap fills: the page is complete at 3,500 bytes.
    c.handle(now, &dgram(101 + 1000, 5002, ACK, &data));
    assert!(c.is_finished());
    assert_eq!(c.received(), 3500);
    assert_eq!(c.buffered(), 0);
}
