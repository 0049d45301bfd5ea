//! The state machines packet by packet, as smoltcp's socket tests do: hand
//! crafted datagrams in, exact datagrams out. Plus property tests that feed
//! both sides arbitrary datagrams at arbitrary times.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anon_proto::wire::{Flags, HEADER_LEN, Header, Seq};
use anon_proto::{ClientConfig, ClientConn, Server, ServerConfig};
use anon_sim::{FixedIsn, client_addr};
use bytes::Bytes;
use proptest::prelude::*;

mod common;
use common::{ACK, FIN, SYN, dgram};

fn server(page: &[u8]) -> Server {
    Server::new(ServerConfig::default(), Bytes::copy_from_slice(page), Box::new(FixedIsn(100)))
}

fn sends(s: &mut Server, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(to) = s.poll_transmit(now, &mut buf) {
        out.push((to, buf.clone()));
    }
    out
}

fn client_sends(c: &mut ClientConn, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while c.poll_transmit(now, &mut buf) {
        out.push(buf.clone());
    }
    out
}

fn page(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A server with one client past the handshake; returns the first data
/// segment it sent.
fn established(page_len: usize) -> (Server, SocketAddr, Instant, Vec<u8>) {
    let now = Instant::now();
    let peer = client_addr(0);
    let mut s = server(&page(page_len));
    s.handle(now, peer, &dgram(5000, 0, SYN, &[]));
    assert_eq!(sends(&mut s, now), [(peer, dgram(100, 5001, ACK | SYN, &[]))]);
    s.handle(now, peer, &dgram(5001, 101, ACK, &[]));
    let first = sends(&mut s, now);
    assert_eq!(first.len(), 1);
    (s, peer, now, first[0].1.clone())
}

#[test]
fn server_duplicate_syn_gets_the_same_syn_ack() {
    let now = Instant::now();
    let peer = client_addr(0);
    let mut s = server(b"hello");
    s.handle(now, peer, &dgram(5000, 0, SYN, &[]));
    let first = sends(&mut s, now);
    s.handle(now, peer, &dgram(5000, 0, SYN, &[]));
    assert_eq!(sends(&mut s, now), first);
    // A SYN with another ISN from the same address while the handshake is
    // incomplete: the client restarted, the handshake starts over.
    s.handle(now, peer, &dgram(9, 0, SYN, &[]));
    assert_eq!(sends(&mut s, now), [(peer, dgram(100, 10, ACK | SYN, &[]))]);
    assert_eq!(s.connection_count(), 1);
    assert_eq!(s.stats().accepted, 2);
    // The old handshake's ACK no longer fits; the new one does.
    s.handle(now, peer, &dgram(5001, 101, ACK, &[]));
    assert!(sends(&mut s, now).is_empty());
    s.handle(now, peer, &dgram(10, 101, ACK, &[]));
    assert_eq!(sends(&mut s, now), [(peer, dgram(101, 11, ACK | FIN, b"hello"))]);
    // Once established, a stray SYN changes nothing.
    s.handle(now, peer, &dgram(77, 0, SYN, &[]));
    assert!(sends(&mut s, now).is_empty());
}

#[test]
fn server_sends_at_most_three_syn_acks_per_syn() {
    let now = Instant::now();
    let peer = client_addr(0);
    let mut s = server(b"hello");
    s.handle(now, peer, &dgram(5000, 0, SYN, &[]));
    let mut syn_acks = sends(&mut s, now).len();
    let mut t = now;
    while let Some(next) = s.poll_timeout() {
        t = next;
        s.handle_timeout(t);
        syn_acks += sends(&mut s, t).len();
    }
    assert_eq!(syn_acks, 3, "no amplification beyond 3x for a forged SYN");
    assert_eq!(s.connection_count(), 0, "freed at the idle timeout");
    assert_eq!(t - now, ServerConfig::default().idle_timeout);
}

#[test]
fn server_accepts_a_tcp_style_fin_ack() {
    let (mut s, peer, now, _) = established(100);
    // FIN counted as a sequence number: 101 + 100 + 1.
    s.handle(now, peer, &dgram(5002, 202, ACK | FIN, &[]));
    assert_eq!(s.stats().completed, 1);
    // But a plain ACK one past the end is for data never sent.
    let (mut s, peer, now, _) = established(100);
    s.handle(now, peer, &dgram(5002, 202, ACK, &[]));
    assert_eq!(s.stats().unexpected, 1);
    assert_eq!(s.connection_count(), 1);
}

#[test]
fn client_repeats_a_lost_handshake_ack_on_its_own_timer() {
    let (mut c, now) = connected_client();
    let t = c.poll_timeout().unwrap();
    assert!(t - now <= Duration::from_secs(1));
    c.handle_timeout(t);
    assert_eq!(client_sends(&mut c, t), [dgram(5001, 101, ACK, &[])]);
    // The first segment stops that timer: only the idle deadline is left.
    c.handle(t, &dgram(101, 5002, ACK, b"abc"));
    let _ = client_sends(&mut c, t);
    assert_eq!(c.poll_timeout().unwrap() - t, ClientConfig::default().idle_timeout);
}

#[test]
fn server_data_segments_and_fin() {
    let (mut s, peer, now, first) = established(600);
    assert_eq!(first, dgram(101, 5002, ACK, &page(600)[..512]));
    s.handle(now, peer, &dgram(5002, 613, ACK, &[]));
    assert_eq!(sends(&mut s, now), [(peer, dgram(613, 5003, ACK | FIN, &page(600)[512..]))]);
    s.handle(now, peer, &dgram(5003, 701, ACK | FIN, &[]));
    assert_eq!(s.connection_count(), 0);
    assert_eq!(s.stats().completed, 1);
}

#[test]
fn server_old_and_duplicate_acks_change_nothing() {
    let (mut s, peer, now, _) = established(2000);
    s.handle(now, peer, &dgram(5002, 613, ACK, &[]));
    let second = sends(&mut s, now);
    assert_eq!(second.len(), 1);
    // The same ACK again, the handshake ACK again: no new segment.
    s.handle(now, peer, &dgram(5002, 613, ACK, &[]));
    s.handle(now, peer, &dgram(5001, 101, ACK, &[]));
    assert!(sends(&mut s, now).is_empty());
    // An ACK for data never sent fits nothing.
    let before = s.stats().unexpected;
    s.handle(now, peer, &dgram(5003, 613 + 513, ACK, &[]));
    assert!(sends(&mut s, now).is_empty());
    assert_eq!(s.stats().unexpected, before + 1);
    // The real next ACK moves on.
    s.handle(now, peer, &dgram(5003, 1125, ACK, &[]));
    let third = sends(&mut s, now);
    assert_eq!(third[0].1[..12], dgram(1125, 5004, ACK, &[])[..]);
}

#[test]
fn server_retransmits_unchanged_with_backoff() {
    let (mut s, _peer, now, first) = established(2000);
    let rto = s.poll_timeout().unwrap() - now;
    assert_eq!(rto, Duration::from_millis(50), "RTO floor after a zero-length RTT sample");
    let t1 = now + rto;
    s.handle_timeout(t1);
    let again = sends(&mut s, t1);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, first, "a retransmission is the same packet");
    // RFC 6298 §5.5: the next timeout is twice as long.
    assert_eq!(s.poll_timeout().unwrap() - t1, rto * 2);
    assert_eq!(s.stats().retransmissions, 1);
}

#[test]
fn server_drops_what_fits_no_connection() {
    let now = Instant::now();
    let mut s = server(b"x");
    for len in 0..HEADER_LEN {
        s.handle(now, client_addr(1), &vec![0xff; len]);
    }
    s.handle(now, client_addr(1), &dgram(1, 2, ACK, &[]));
    s.handle(now, client_addr(1), &dgram(1, 2, FIN, &[]));
    s.handle(now, client_addr(1), &dgram(1, 2, SYN | ACK, &[]));
    assert!(sends(&mut s, now).is_empty());
    assert_eq!(s.connection_count(), 0);
    assert_eq!(s.stats().malformed, HEADER_LEN as u64);
    assert_eq!(s.stats().unexpected, 3);
}

#[test]
fn server_refuses_connections_beyond_the_limit() {
    let now = Instant::now();
    let config = ServerConfig { max_connections: 2, ..ServerConfig::default() };
    let mut s = Server::new(config, Bytes::from_static(b"x"), Box::new(FixedIsn(1)));
    for i in 0..5 {
        s.handle(now, client_addr(i), &dgram(7, 0, SYN, &[]));
    }
    assert_eq!(s.connection_count(), 2);
    assert_eq!(sends(&mut s, now).len(), 2);
    assert_eq!(s.stats().refused_max_connections, 3);
}

fn connected_client() -> (ClientConn, Instant) {
    let now = Instant::now();
    let mut c = ClientConn::new(ClientConfig { fast: None, ..ClientConfig::default() }, 5000, now);
    assert_eq!(client_sends(&mut c, now), [dgram(5000, 0, SYN, &[])]);
    // Data before the handshake, and a SYN|ACK for another ISN: ignored.
    c.handle(now, &dgram(101, 5001, ACK, b"early"));
    c.handle(now, &dgram(100, 4242, ACK | SYN, &[]));
    assert!(client_sends(&mut c, now).is_empty());
    c.handle(now, &dgram(100, 5001, ACK | SYN, &[]));
    assert_eq!(client_sends(&mut c, now), [dgram(5001, 101, ACK, &[])]);
    (c, now)
}

#[test]
fn client_acks_in_order_and_repeats_for_old_data() {
    let (mut c, now) = connected_client();
    c.handle(now, &dgram(101, 5002, ACK, b"abc"));
    assert_eq!(client_sends(&mut c, now), [dgram(5002, 104, ACK, &[])]);
    // The same segment again: the same ACK again, unchanged.
    c.handle(now, &dgram(101, 5002, ACK, b"abc"));
    assert_eq!(client_sends(&mut c, now), [dgram(5002, 104, ACK, &[])]);
    // Overlap: only the new tail is taken.
    c.handle(now, &dgram(102, 5003, ACK, b"bcde"));
    assert_eq!(client_sends(&mut c, now), [dgram(5003, 106, ACK, &[])]);
    // A gap: nothing taken, the last ACK repeated.
    c.handle(now, &dgram(200, 5004, ACK, b"zz"));
    assert_eq!(client_sends(&mut c, now), [dgram(5003, 106, ACK, &[])]);
    assert_eq!(c.readable(), b"abcde");
    // A duplicate SYN|ACK after data: our latest packet again.
    c.handle(now, &dgram(100, 5001, ACK | SYN, &[]));
    assert_eq!(client_sends(&mut c, now), [dgram(5003, 106, ACK, &[])]);
    // The FIN: FIN|ACK, and the same FIN|ACK for a retransmitted FIN.
    c.handle(now, &dgram(106, 5004, ACK | FIN, b"f"));
    assert_eq!(client_sends(&mut c, now), [dgram(5004, 107, ACK | FIN, &[])]);
    assert!(c.is_finished());
    c.handle(now, &dgram(106, 5004, ACK | FIN, b"f"));
    assert_eq!(client_sends(&mut c, now), [dgram(5004, 107, ACK | FIN, &[])]);
    assert_eq!(c.readable(), b"abcdef");
    // TIME-WAIT ends by itself with success.
    let end = c.poll_timeout().unwrap();
    c.handle_timeout(end);
    assert_eq!(c.outcome(), Some(&Ok(())));
}

#[test]
fn client_syn_backoff_and_connect_timeout() {
    let now = Instant::now();
    let config = ClientConfig { connect_timeout: Duration::from_secs(4), fast: None, ..ClientConfig::default() };
    let mut c = ClientConn::new(config, 1, now);
    let mut t = now;
    let mut syns = 0;
    while c.outcome().is_none() {
        syns += client_sends(&mut c, t).len();
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
    }
    // SYNs at 0, 1 s and 3 s (RFC 6298: initial RTO 1 s, doubled each time).
    assert_eq!(syns, 3);
    assert_eq!(t - now, Duration::from_secs(4));
    assert!(matches!(c.outcome(), Some(Err(anon_proto::ConnectionError::ConnectTimeout(_)))));
}

/// The byte a well-behaved server would send at sequence number `seq`, so
/// that what the client delivers can be checked against its position.
fn byte_at(seq: u32) -> u8 {
    (seq % 251) as u8
}

fn arb_datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        (any::<u32>(), any::<u32>(), 0u32..8, 0usize..600).prop_map(|(s, a, f, n)| dgram(
            s,
            a,
            Flags::from_word(f),
            &(0..n as u32).map(|i| byte_at(s.wrapping_add(i))).collect::<Vec<_>>()
        )),
        // Numbers near what the peers use, to reach deeper states.
        (0u32..2000, 0u32..2000, 0u32..8, 0usize..600).prop_map(|(s, a, f, n)| dgram(
            s,
            a,
            Flags::from_word(f),
            &(0..n as u32).map(|i| byte_at(s + i)).collect::<Vec<_>>()
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any datagrams, from a few peers, at any times: no panic, every
    /// datagram out decodes, no SYN|ACK is larger than a header, the
    /// connection limit holds, timers stay bounded.
    #[test]
    fn server_survives_arbitrary_input(
        steps in proptest::collection::vec((0usize..4, arb_datagram(), 0u64..3000), 1..60)
    ) {
        let config = ServerConfig { max_connections: 3, ..ServerConfig::default() };
        let mut s = Server::new(config, Bytes::from(page(1300)), Box::new(FixedIsn(0)));
        let mut now = Instant::now();
        for (peer, d, dt) in steps {
            now += Duration::from_millis(dt);
            s.handle(now, client_addr(peer), &d);
            s.handle_timeout(now);
            for (_, out) in sends(&mut s, now) {
                let (h, payload) = Header::decode(&out).unwrap();
                prop_assert!(payload.len() <= 512);
                // Data is the page at the segment's offset (server ISN 0).
                if !payload.is_empty() {
                    let offset = h.seq.get().wrapping_sub(1) as usize;
                    prop_assert_eq!(payload, &page(1300)[offset..offset + payload.len()]);
                }
                if h.flags.contains(SYN) {
                    prop_assert_eq!(out.len(), HEADER_LEN);
                }
            }
            prop_assert!(s.connection_count() <= 3);
            // Every wait is bounded: nothing is scheduled past the idle timeout.
            if let Some(t) = s.poll_timeout() {
                prop_assert!(t <= now + ServerConfig::default().idle_timeout);
            }
        }
    }

    /// Any datagrams at any times: no panic, and what the client hands out
    /// is always the byte stream in order: byte `i` is the one sent at
    /// sequence number `Is + 1 + i`.
    #[test]
    fn client_survives_arbitrary_input(
        steps in proptest::collection::vec((arb_datagram(), 0u64..3000), 1..60)
    ) {
        let mut now = Instant::now();
        let mut c = ClientConn::new(ClientConfig { fast: None, ..ClientConfig::default() }, 1000, now);
        let _ = client_sends(&mut c, now);
        c.handle(now, &dgram(0, 1001, ACK | SYN, &[]));
        let mut total = 0;
        for (d, dt) in steps {
            now += Duration::from_millis(dt);
            c.handle(now, &d);
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
            for out in client_sends(&mut c, now) {
                prop_assert_eq!(out.len(), HEADER_LEN);
            }
            for (i, &byte) in c.readable().iter().enumerate() {
                prop_assert_eq!(byte, byte_at(1 + (total + i) as u32));
            }
            total += c.readable().len();
            let n = c.readable().len();
            c.consume(n);
        }
    }
}

/// A plain server written here: it ignores the offer, answers with a bare
/// SYN|ACK and sends stop-and-wait. Our client, offering fast mode, must
/// finish in baseline mode with the exact baseline packets.
#[test]
fn fast_client_against_a_plain_server_falls_back_to_baseline() {
    let now = Instant::now();
    let mut c = ClientConn::new(ClientConfig::default(), 5000, now);
    let syn = client_sends(&mut c, now);
    assert_eq!(syn.len(), 1);
    assert_eq!(&syn[0][..HEADER_LEN], &dgram(5000, 0, SYN, &[])[..]);
    assert!(syn[0].len() >= anon_proto::wire::ext::ANSWER_DATAGRAM_LEN, "offer padded");
    c.handle(now, &dgram(100, 5001, ACK | SYN, &[]));
    assert_eq!(client_sends(&mut c, now), [dgram(5001, 101, ACK, &[])]);
    assert_eq!(c.mode(), anon_proto::Mode::Baseline);
    let body = page(1100);
    let mut seq = 101u32;
    for (client_seq, chunk) in (5002u32..).zip(body.chunks(512)) {
        let last = seq as usize - 101 + chunk.len() == body.len();
        let flags = if last { ACK | FIN } else { ACK };
        c.handle(now, &dgram(seq, client_seq, flags, chunk));
        seq += chunk.len() as u32;
        let expect = dgram(client_seq, seq, if last { ACK | FIN } else { ACK }, &[]);
        assert_eq!(client_sends(&mut c, now), [expect]);
    }
    assert!(c.is_finished());
    assert_eq!(c.readable(), &body[..]);
}

/// Offers that are malformed, too short to be answered without
/// amplification, or from a future version get the baseline exchange.
#[test]
fn server_answers_only_well_formed_padded_offers() {
    use anon_proto::wire::ext::{Offer, VERSION};
    let now = Instant::now();
    let mut good = Vec::new();
    Offer { max_segment: 1200, recv_window: 1 << 20 }.encode(&mut good);
    let mut future = good.clone();
    future[4] = VERSION + 1;
    let mut truncated = good.clone();
    truncated.truncate(20);
    let cases: [(&str, Vec<u8>, bool); 5] = [
        ("good", good.clone(), true),
        ("future version", future, false),
        ("truncated", truncated, false),
        ("random", vec![0x41; 200], false),
        ("unpadded", good[..18].to_vec(), false),
    ];
    for (i, (name, payload, fast)) in cases.into_iter().enumerate() {
        let mut s = server(&page(3000));
        let peer = client_addr(i);
        s.handle(now, peer, &dgram(7, 0, SYN, &payload));
        let out = sends(&mut s, now);
        assert_eq!(out.len(), 1, "{name}");
        let syn_ack = &out[0].1;
        assert_eq!(&syn_ack[..HEADER_LEN], &dgram(100, 8, ACK | SYN, &[])[..], "{name}");
        assert!(syn_ack.len() <= HEADER_LEN + payload.len(), "{name}: amplification");
        if fast {
            let answer = anon_proto::wire::ext::Answer::decode(&syn_ack[HEADER_LEN..]).unwrap();
            assert_eq!((answer.segment, answer.page_len), (1200, 3000));
        } else {
            assert_eq!(syn_ack.len(), HEADER_LEN, "{name}: baseline SYN|ACK");
        }
        assert_eq!(s.stats().accepted_fast, u64::from(fast), "{name}");
    }
}

/// A fast-mode connection past its handshake; returns the server, the peer,
/// the time and the server's ISN-relative first data sequence number.
fn fast_established(page_len: usize, window: u32) -> (Server, SocketAddr, Instant) {
    use anon_proto::wire::ext::Offer;
    let now = Instant::now();
    let peer = client_addr(0);
    let mut s = server(&page(page_len));
    let mut offer = Vec::new();
    Offer { max_segment: 1000, recv_window: window }.encode(&mut offer);
    s.handle(now, peer, &dgram(5000, 0, SYN, &offer));
    let out = sends(&mut s, now);
    assert!(out[0].1.len() > HEADER_LEN, "answered");
    s.handle(now + Duration::from_millis(10), peer, &dgram(5001, 101, ACK, &[]));
    (s, peer, now + Duration::from_millis(10))
}

fn ack_info(window: u32, sack: &[(u32, u32)]) -> Vec<u8> {
    let info = anon_proto::wire::ext::AckInfo { window, sack: sack.iter().map(|&(a, b)| (Seq(a), Seq(b))).collect() };
    let mut p = Vec::new();
    info.encode(&mut p);
    p
}

/// RFC 2018 §8: after a timeout the left edge is sent again even though it
/// was SACKed (the client may have discarded it).
#[test]
fn fast_rto_resends_a_sacked_left_edge() {
    let (mut s, peer, now) = fast_established(10_000, 1 << 20);
    // The paced first flight: all ten segments within a few milliseconds.
    let mut first = sends(&mut s, now);
    let mut at = now;
    while first.len() < 10 && at < now + Duration::from_millis(5) {
        at = s.poll_timeout().unwrap();
        s.handle_timeout(at);
        first.extend(sends(&mut s, at));
    }
    assert_eq!(first.len(), 10, "the whole page in the first flight");
    // SACK segments 1 and 2 (bytes 1000..3000), then acknowledge segment 0.
    let t = now + Duration::from_millis(10);
    s.handle(t, peer, &dgram(5002, 101, ACK, &ack_info(1 << 20, &[(1101, 3101)])));
    s.handle(t, peer, &dgram(5003, 1101, ACK, &ack_info(1 << 20, &[(1101, 3101)])));
    let _ = sends(&mut s, t);
    // Silence until the retransmission timer fires.
    let mut at = t;
    let mut resent = Vec::new();
    for _ in 0..20 {
        at = s.poll_timeout().unwrap();
        s.handle_timeout(at);
        resent.extend(sends(&mut s, at).into_iter().map(|(_, d)| Header::decode(&d).unwrap().0.seq));
        if resent.contains(&Seq(1101)) {
            break;
        }
    }
    assert!(resent.contains(&Seq(1101)), "left edge never sent again: {resent:?}");
    assert!(at - t < Duration::from_secs(5));
}

/// During an outage the server's sends back off like its RTO: tail-loss
/// probes do not keep firing at 2·SRTT.
#[test]
fn fast_sender_backs_off_during_an_outage() {
    let (mut s, _peer, now) = fast_established(1 << 20, 1 << 20);
    let mut sent = sends(&mut s, now).len();
    let initial = sent;
    let mut t = now;
    while let Some(next) = s.poll_timeout() {
        t = next;
        s.handle_timeout(t);
        sent += sends(&mut s, t).len();
    }
    assert_eq!(s.stats().given_up, 1);
    assert!(t - now >= ServerConfig::default().idle_timeout);
    // The initial window, then a few probes and backed-off retransmissions.
    assert!(sent - initial < 150, "{} datagrams after the first window", sent - initial);
}

/// A client claiming a huge receive window cannot make the server hold
/// more than its cap in flight.
#[test]
fn fast_receive_window_is_capped() {
    let (mut s, peer, now) = fast_established(64 << 20, u32::MAX);
    let mut t = now;
    let mut highest = 0u32;
    // Acknowledge nothing cumulatively but SACK everything sent, for a while.
    for round in 0..200u32 {
        for (_, d) in sends(&mut s, t) {
            let (h, p) = Header::decode(&d).unwrap();
            highest = highest.max(h.seq.get() + p.len() as u32);
        }
        t += Duration::from_millis(5);
        s.handle(t, peer, &dgram(5002 + round, 101, ACK, &ack_info(u32::MAX, &[(1101, highest)])));
        s.handle_timeout(t);
    }
    let outstanding = u64::from(highest - 101);
    assert!(outstanding <= ServerConfig::default().max_peer_window + 1000, "{outstanding}");
}

/// The endpoint serves one connection several datagrams in a row (what a
/// driver batches into one GSO send) before the next connection's turn.
#[test]
fn endpoint_sends_runs_per_connection() {
    use anon_proto::wire::ext::Offer;
    let now = Instant::now();
    let mut s = server(&page(1 << 20));
    let mut offer = Vec::new();
    Offer { max_segment: 1000, recv_window: 1 << 20 }.encode(&mut offer);
    for i in 0..2 {
        s.handle(now, client_addr(i), &dgram(5000, 0, SYN, &offer));
    }
    let _ = sends(&mut s, now);
    let t = now + Duration::from_millis(10);
    for i in 0..2 {
        s.handle(t, client_addr(i), &dgram(5001, 101, ACK, &[]));
    }
    // Let pacing credit build up, then take everything due.
    let t = t + Duration::from_millis(20);
    s.handle_timeout(t);
    let order: Vec<SocketAddr> = sends(&mut s, t).into_iter().map(|(to, _)| to).collect();
    assert!(order.len() >= 8, "{}", order.len());
    let runs = order.windows(2).filter(|w| w[0] != w[1]).count() + 1;
    assert!(runs <= order.len() / 3, "interleaved one by one: {order:?}");
    assert!(order.contains(&client_addr(0)) && order.contains(&client_addr(1)));
}

#[test]
fn server_refuses_connections_beyond_the_per_source_limit() {
    let now = Instant::now();
    let config = ServerConfig { max_per_source: 2, ..ServerConfig::default() };
    let mut s = Server::new(config, Bytes::from_static(b"x"), Box::new(FixedIsn(1)));
    let host = |port| SocketAddr::from(([10, 9, 9, 9], port));
    for port in 1000..1004 {
        s.handle(now, host(port), &dgram(7, 0, SYN, &[]));
    }
    assert_eq!(s.connection_count(), 2);
    assert_eq!(s.stats().refused_per_source, 2);
    assert_eq!(sends(&mut s, now).len(), 2, "only the two accepted get a SYN|ACK");
    // Another address is not affected.
    s.handle(now, SocketAddr::from(([10, 9, 9, 10], 1000)), &dgram(7, 0, SYN, &[]));
    assert_eq!(s.connection_count(), 3);
    // Once the half-open connections are given up, their slots are free again.
    let mut t = now;
    while let Some(next) = s.poll_timeout() {
        t = next;
        s.handle_timeout(t);
        let _ = sends(&mut s, t);
    }
    assert_eq!(s.connection_count(), 0);
    s.handle(t, host(2000), &dgram(7, 0, SYN, &[]));
    assert_eq!(s.connection_count(), 1);
}

#[test]
fn draining_server_refuses_new_connections_and_finishes_open_ones() {
    let (mut s, peer, now, first) = established(600);
    assert_eq!(Header::decode(&first).unwrap().1.len(), 512);
    s.stop_accepting();
    s.handle(now, client_addr(1), &dgram(9, 0, SYN, &[]));
    assert_eq!(s.stats().refused_draining, 1);
    assert!(sends(&mut s, now).is_empty(), "no SYN|ACK while draining");
    // The open connection goes on to its end.
    s.handle(now, peer, &dgram(5002, 613, ACK, &[]));
    let last = sends(&mut s, now);
    let (h, payload) = Header::decode(&last[0].1).unwrap();
    assert!(h.flags.contains(FIN));
    assert_eq!(payload, &page(600)[512..]);
    s.handle(now, peer, &dgram(5003, 613 + 88 + 1, ACK | FIN, &[]));
    assert_eq!(s.connection_count(), 0);
    assert_eq!(s.stats().completed, 1);
}

/// RFC 5961's reasoning: an attacker who knows the client's address and port
/// but not the sequence numbers sends SYNs, ACKs and FINs with numbers
/// outside the window. None of them may end, stall or corrupt the transfer.
#[test]
fn forged_packets_for_an_open_connection_change_nothing() {
    let (mut s, peer, now, first) = established(2000);
    let forged = [
        dgram(0x1234_5678, 0, SYN, &[]),
        dgram(5002, 101 + 0x4000_0000, ACK, &[]),
        dgram(5002, 101u32.wrapping_sub(0x4000_0000), ACK, &[]),
        dgram(0x9999_0000, 0x9999_0000, ACK | FIN, &[]),
        dgram(0x7777_0000, 0x7777_0000, FIN, &[]),
        dgram(5002, 0xdead_beef, ACK | SYN, &[]),
        dgram(5002, 0xdead_beef, ACK | SYN | FIN, &[]),
    ];
    let before = s.stats();
    for d in &forged {
        s.handle(now, peer, d);
        assert!(sends(&mut s, now).is_empty(), "answered a forgery {:?}", Header::decode(d));
    }
    assert_eq!(s.stats().unexpected, before.unexpected + forged.len() as u64);
    assert_eq!(s.connection_count(), 1);
    // The retransmission timer still runs for the genuine first segment.
    let rto = s.poll_timeout().unwrap();
    s.handle_timeout(rto);
    let again = sends(&mut s, rto);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, first, "sent again unchanged");
    // And the genuine next ACK moves the transfer on, byte exact, to its end.
    let mut t = rto;
    let mut ack = 613u32;
    let mut seq = 5002u32;
    let mut got = page(2000)[..512].to_vec();
    loop {
        s.handle(t, peer, &dgram(seq, ack, ACK, &[]));
        seq += 1;
        let out = sends(&mut s, t);
        let (h, payload) = Header::decode(&out[0].1).unwrap();
        assert_eq!(h.seq, Seq(ack));
        got.extend_from_slice(payload);
        ack += payload.len() as u32;
        if h.flags.contains(FIN) {
            s.handle(t, peer, &dgram(seq, ack + 1, ACK | FIN, &[]));
            break;
        }
        t += Duration::from_millis(1);
    }
    assert_eq!(got, page(2000));
    assert_eq!(s.stats().completed, 1);
}

/// The same in fast mode, with forged SACK blocks: blocks outside what was
/// sent must not mark anything as received.
#[test]
fn forged_sack_blocks_are_ignored() {
    let (mut s, peer, now) = fast_established(5000, 1 << 20);
    let mut sent = sends(&mut s, now).len();
    let mut at = now;
    while sent < 5 && at < now + Duration::from_millis(5) {
        at = s.poll_timeout().unwrap();
        s.handle_timeout(at);
        sent += sends(&mut s, at).len();
    }
    assert_eq!(sent, 5, "the whole page in the first flight");
    let before = s.stats().unexpected;
    // Blocks beyond anything sent, and far behind.
    s.handle(at, peer, &dgram(5002, 101, ACK, &ack_info(1 << 20, &[(0x5000_0000, 0x5000_1000)])));
    s.handle(at, peer, &dgram(5002, 101, ACK, &ack_info(1 << 20, &[(1101, 0x7000_0000)])));
    s.handle(at, peer, &dgram(5002, 0x6000_0000, ACK, &ack_info(1 << 20, &[])));
    // The acknowledgment numbers of the first two are plausible (nothing new
    // acknowledged), so those count as duplicate ACKs; their blocks are
    // dropped. The third acknowledges data never sent.
    assert_eq!(s.stats().unexpected, before + 1, "{:?}", s.stats());
    // Nothing was taken as delivered: when the timer fires, every segment
    // is still outstanding and the first is sent again.
    let mut resent = Vec::new();
    for _ in 0..10 {
        at = s.poll_timeout().unwrap();
        s.handle_timeout(at);
        resent.extend(sends(&mut s, at).into_iter().map(|(_, d)| Header::decode(&d).unwrap().0.seq));
        if resent.contains(&Seq(101)) {
            break;
        }
    }
    assert!(resent.contains(&Seq(101)), "{resent:?}");
    assert_eq!(s.connection_count(), 1);
}

/// PROTOCOL.md §2: a retransmitted packet is sent again unchanged, the FIN
/// segment included, even after a plain ACK of its data moved the server's
/// idea of the client's sequence number.
#[test]
fn server_fin_retransmission_is_unchanged() {
    let (mut s, peer, now, first) = established(600);
    assert_eq!(first, dgram(101, 5002, ACK, &page(600)[..512]));
    s.handle(now, peer, &dgram(5002, 613, ACK, &[]));
    let fin = sends(&mut s, now);
    assert_eq!(fin, [(peer, dgram(613, 5003, ACK | FIN, &page(600)[512..]))]);
    // The data of the FIN segment acknowledged without the FIN.
    s.handle(now, peer, &dgram(5003, 701, ACK, &[]));
    assert!(sends(&mut s, now).is_empty());
    let at = s.poll_timeout().unwrap();
    s.handle_timeout(at);
    assert_eq!(sends(&mut s, at), fin, "the FIN went out changed");
}

/// The baseline linger (docs/PROTOCOL.md §3, TIME-WAIT): four of the
/// client's RTOs, at least 1 s while it has few RTT samples, unless a bound
/// on the server's RTO from what it saw is shorter: then four of that.
#[test]
fn baseline_linger_is_bounded_by_the_servers_rto() {
    /// The linger after `segments` segments 2 ms apart (`late_last` more
    /// before the last one), the SYN|ACK received twice or not, segment 1
    /// received twice or not, each ACK sent `ack_delay` after its segment
    /// (a slow client: the server's samples hold that, the client's not).
    fn linger(
        segments: u32,
        dup_syn_ack: bool,
        dup_segment: bool,
        ack_delay: Duration,
        late_last: Duration,
    ) -> Duration {
        let (mut c, start) = connected_client();
        if dup_syn_ack {
            c.handle(start, &dgram(100, 5001, ACK | SYN, &[]));
            assert_eq!(client_sends(&mut c, start).len(), 1);
        }
        let mut now = start;
        let mut seq = 101u32;
        for i in 0..segments {
            now += Duration::from_millis(2);
            let fin = i + 1 == segments;
            if fin {
                now += late_last;
            }
            let segment = dgram(seq, 5002 + i, if fin { ACK | FIN } else { ACK }, &[7; 512]);
            c.handle(now, &segment);
            if dup_segment && i == 1 {
                c.handle(now, &segment);
            }
            now += ack_delay;
            assert!(!client_sends(&mut c, now).is_empty());
            seq += 512;
        }
        assert!(c.is_finished());
        c.poll_timeout().unwrap() - now
    }
    let ms = Duration::from_millis;
    let none = ms(0);
    // Every sample of the server's at most 4 ms: its RTO is the 50 ms floor.
    let clean = linger(3, false, false, none, none);
    assert_eq!(clean, ms(200), "3 clean segments");
    // One segment: the server may have no sample at all (a connection
    // rebuilt from a SYN cookie has none of the handshake), so its RTO may
    // be the initial 1 s. A duplicate: its timer fired and backed off.
    for (what, l) in [
        ("1 segment", linger(1, false, false, none, none)),
        ("a duplicate SYN|ACK", linger(3, true, false, none, none)),
        ("a duplicate segment", linger(3, false, true, none, none)),
    ] {
        assert!(l >= Duration::from_secs(1), "{what}: {l:?}");
    }
    // The last segment 50 ms late (its first copy lost, say): the server's
    // timer backed off to 100 ms, its FIN comes again after 100 and 300 ms.
    let late = linger(3, false, false, none, ms(50));
    assert!(late > ms(300), "a late segment: {late:?}");
    // ACKs sent 100 ms late: the server's RTO is about 190 ms, its FIN
    // comes again after about 190 and 570 ms (the client's own RTO is 50);
    // the bound (about 2 s) is longer than the floor, which stays. What is
    // measured is from the FIN|ACK, sent 100 ms after the FIN came.
    let slow = linger(3, false, false, ms(100), none);
    assert!(slow > ms(600), "a slow client: {slow:?}");
    // Many samples: four of the client's RTOs, whatever happened early.
    let long = linger(40, true, false, none, none);
    assert!(long < ms(300), "40 segments: {long:?}");
}

/// TIME-WAIT restarts on a FIN sent again (RFC 9293 §3.10.7.4): the FIN|ACK
/// was lost, and the one sent now may be too.
#[test]
fn baseline_time_wait_restarts_on_a_fin_sent_again() {
    let (mut c, start) = connected_client();
    let fin = dgram(101, 5002, ACK | FIN, &[7; 100]);
    c.handle(start, &fin);
    assert_eq!(client_sends(&mut c, start).len(), 1);
    let first = c.poll_timeout().unwrap();
    let later = start + (first - start) / 2;
    c.handle(later, &fin);
    assert_eq!(client_sends(&mut c, later), [dgram(5002, 201, ACK | FIN, &[])], "the FIN|ACK again");
    let restarted = c.poll_timeout().unwrap();
    assert_eq!(restarted - later, first - start, "TIME-WAIT restarted");
    // Never past the longest linger, however many FINs come.
    let mut now = later;
    for _ in 0..100 {
        now += Duration::from_millis(500);
        c.handle(now, &fin);
        let _ = client_sends(&mut c, now);
    }
    assert_eq!(c.poll_timeout().unwrap(), start + Duration::from_secs(10), "the cap");
}
