//! The secure-mode server behind its authentication: an independent client
//! (secure_wire.rs: snow, chacha20poly1305, aes-gcm, written from the wire
//! format) wraps fuzzer-chosen bytes in valid layers, so that they reach
//! the parsers an outsider never reaches: Noise messages of any content in
//! a valid outer layer; valid first messages carrying any payload fields
//! (time, connection ID, page name, the inner SYN: any bytes); and, once
//! the server has answered, sealed datagrams under the session keys with
//! any body (flags, lengths, token, padding) and any inner datagram, any
//! packet number, and tokens real, reused or forged.
//!
//! Invariants: no panic; state within its bounds; every datagram the
//! server sends is the answer to one of our first messages (it opens under
//! the outer layer bound to that message's nonce, and is no longer than
//! it) or a sealed datagram that opens under a session's server-to-client
//! keys with a well-formed body and inner header.
#![no_main]

mod secure_wire;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anon_proto::ServerConfig;
use anon_proto::secure::{SecureServer, SecureServerConfig, WallClock};
use anon_proto::wire::{Flags, Header, Seq};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use secure_wire::{Keys, Outer, TOKEN_LEN, field};
use snow::HandshakeState;

const UNIX_MS: u64 = 1_800_000_000_000;

#[derive(Debug, Arbitrary)]
enum Syn {
    /// A SYN with this ISN and a payload (after an "ANON" offer prefix when
    /// `offer`).
    Header {
        isn: u32,
        ack: u32,
        flags: u8,
        offer: bool,
        payload: Vec<u8>,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Payload {
    /// The fields a client sends (all of them unless `omit` has its top
    /// bit set: then its low bits name those left out), and more.
    Hello {
        omit: u8,
        skew_s: i8,
        conn_id: u8,
        page: u8,
        syn: Syn,
        extra: Vec<(u8, Vec<u8>)>,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum TokenChoice {
    /// One the server gave.
    Given(u8),
    /// Sixteen bytes of the fuzzer's.
    Forged([u8; 16]),
}

#[derive(Debug, Arbitrary)]
enum Step {
    /// A valid outer layer around any Noise bytes.
    Outer {
        noise: Vec<u8>,
        pad: u16,
        nonce: u8,
    },
    /// A valid first message (a fresh client key, or one of two fixed).
    Initiate {
        client: u8,
        seed: u8,
        payload: Payload,
        pad: u16,
        peer: u8,
    },
    /// One of our first messages again, from any address.
    Again {
        attempt: u8,
        peer: u8,
    },
    /// A sealed datagram of a session the server answered.
    Sealed {
        session: u8,
        token: TokenChoice,
        pn: Option<u64>,
        flags: u8,
        seq: u32,
        ack: u32,
        inner_flags: u8,
        payload: Vec<u8>,
        body: Option<Vec<u8>>,
        pad: u8,
        peer: u8,
    },
    Raw {
        peer: u8,
        bytes: Vec<u8>,
    },
    Wait {
        millis: u16,
    },
    RunTimers,
}

#[derive(Debug, Arbitrary)]
struct Input {
    allow_list: bool,
    steps: Vec<Step>,
}

struct Attempt {
    datagram: Vec<u8>,
    hs: Option<HandshakeState>,
}

struct Session {
    keys: Keys,
    tokens: Vec<[u8; TOKEN_LEN]>,
    next_pn: u64,
    peer: SocketAddr,
}

fn addr(peer: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 2, peer % 6], 7000 + u16::from(peer % 2)))
}

fn hello(payload: &Payload, now_ms: u64) -> Vec<u8> {
    let (omit, skew_s, conn_id, page, syn, extra) = match payload {
        Payload::Raw(raw) => return raw.clone(),
        Payload::Hello { omit, skew_s, conn_id, page, syn, extra } => (omit, skew_s, conn_id, page, syn, extra),
    };
    let has = |bit: u8| omit & 0x80 == 0 || omit & (1 << bit) == 0;
    let mut p = Vec::new();
    if has(0) {
        let t = now_ms.saturating_add_signed(i64::from(*skew_s) * 4000);
        secure_wire::put_field(&mut p, field::TIME, &t.to_be_bytes());
    }
    if has(1) {
        secure_wire::put_field(&mut p, field::CONN_ID, &[*conn_id; 8]);
    }
    if has(2) {
        let name: &[u8] = match page % 4 {
            0 => b"",
            1 => b"index",
            2 => b"news",
            _ => b"\xff\xfe not utf-8",
        };
        secure_wire::put_field(&mut p, field::PAGE, name);
    }
    if has(3) {
        let d = match syn {
            Syn::Raw(raw) => raw.clone(),
            Syn::Header { isn, ack, flags, offer, payload } => {
                let mut body = Vec::new();
                if *offer {
                    body.extend_from_slice(b"ANON\x01\x01");
                }
                body.extend(payload.iter().take(1200));
                let mut d = Vec::new();
                Header::new(Seq(*isn), Seq(*ack), Flags::from_word(u32::from(*flags & 7))).encode(&body, &mut d);
                d
            }
        };
        secure_wire::put_field(&mut p, field::INNER, &d);
    }
    for (k, v) in extra.iter().take(4) {
        secure_wire::put_field(&mut p, *k, v);
    }
    p
}

fuzz_target!(|input: Input| {
    let start = Instant::now();
    let clock = WallClock { at: start, unix_ms: UNIX_MS };
    let key = secure_wire::secret(11);
    let server_public = key.public().0;
    let outer = Outer::new(&server_public);
    let fixed = [secure_wire::keypair_cached(1), secure_wire::keypair_cached(2)];
    let mut secure = SecureServerConfig::new(key, vec!["index".into(), "news".into()], clock);
    secure.max_pending = 4;
    // Small, so that the fuzzer meets a loaded filter's false positives.
    secure.replay_filter_bits = 256;
    if input.allow_list {
        secure.allow_clients = Some([anon_proto::secure::PublicKey(fixed[0].1)].into_iter().collect());
    }
    let config = ServerConfig { max_connections: 6, max_per_source: 3, ..ServerConfig::default() };
    let pages = vec![Bytes::from(vec![7u8; 2500]), Bytes::from(vec![9u8; 300])];
    let mut server = SecureServer::new(secure, config, pages, None, Box::new(StdRng::seed_from_u64(13)));

    let mut now = start;
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut sessions: Vec<Session> = Vec::new();
    let mut buf = Vec::new();

    for step in input.steps.into_iter().take(128) {
        match step {
            Step::Outer { noise, pad, nonce } => {
                let time = clock.unix_ms(now).to_be_bytes();
                let d = outer.seal([nonce; 24], &noise, &time, usize::from(pad % 1500), b"");
                server.handle_kind(now, addr(nonce), &d);
            }
            Step::Initiate { client, seed, payload, pad, peer } => {
                if attempts.len() >= 16 {
                    continue;
                }
                let fresh;
                let private = match client % 3 {
                    0 | 1 => &fixed[usize::from(client % 3)].0,
                    _ => {
                        fresh = secure_wire::keypair_cached(seed ^ 0x3c).0;
                        &fresh
                    }
                };
                let now_ms = clock.unix_ms(now);
                let Some((hs, noise)) =
                    secure_wire::initiate(private, &server_public, [seed; 32], &hello(&payload, now_ms))
                else {
                    continue;
                };
                let mut nonce = [seed; 24];
                nonce[..8].copy_from_slice(&(attempts.len() as u64).to_be_bytes());
                let d = outer.seal(nonce, &noise, &now_ms.to_be_bytes(), usize::from(pad % 1200), b"");
                server.handle_kind(now, addr(peer), &d);
                attempts.push(Attempt { datagram: d, hs: Some(hs) });
            }
            Step::Again { attempt, peer } => {
                if let Some(a) = attempts.get(usize::from(attempt) % attempts.len().max(1)) {
                    server.handle_kind(now, addr(peer), &a.datagram);
                }
            }
            Step::Sealed { session, token, pn, flags, seq, ack, inner_flags, payload, body, pad, peer } => {
                let n = sessions.len();
                let Some(s) = sessions.get_mut(usize::from(session) % n.max(1)) else { continue };
                let token = match token {
                    TokenChoice::Given(i) if !s.tokens.is_empty() => s.tokens[usize::from(i) % s.tokens.len()],
                    TokenChoice::Given(_) => [0; 16],
                    TokenChoice::Forged(t) => t,
                };
                let body = body.unwrap_or_else(|| {
                    let mut inner = Vec::new();
                    Header::new(Seq(seq), Seq(ack), Flags::from_word(u32::from(inner_flags & 7)))
                        .encode(&payload, &mut inner);
                    secure_wire::body(flags, &inner, (flags & 1 != 0).then_some(&token[..]), usize::from(pad))
                });
                let pn = pn.unwrap_or_else(|| {
                    s.next_pn += 1;
                    s.next_pn - 1
                });
                let d = s.keys.c2s.seal(&token, pn, &body);
                let peer = if peer % 2 == 0 { s.peer } else { addr(peer) };
                server.handle_kind(now, peer, &d);
            }
            Step::Raw { peer, bytes } => {
                server.handle_kind(now, addr(peer), &bytes);
            }
            Step::Wait { millis } => now += Duration::from_millis(u64::from(millis) * 8),
            Step::RunTimers => {
                if let Some(t) = server.poll_timeout() {
                    now = now.max(t);
                }
                server.handle_timeout(now);
            }
        }

        let mut sent = 0;
        loop {
            buf.clear();
            let Some(t) = server.poll_transmit_append(now, &mut buf) else { break };
            sent += 1;
            assert!(sent <= 4096, "unbounded transmits in one step");
            // An answer to one of our first messages?
            let answered = attempts.iter_mut().find_map(|a| {
                let nonce = a.datagram.get(..24)?;
                outer.open(&buf, nonce).map(|noise| (a, noise))
            });
            if let Some((a, noise)) = answered {
                assert!(buf.len() <= a.datagram.len(), "answer longer than the first message");
                let hs = a.hs.take().expect("one answer per first message");
                let (payload, keys) = secure_wire::finish(hs, &noise).expect("the answer completes the handshake");
                let mut tokens = Vec::new();
                for (k, v) in secure_wire::fields(&payload) {
                    if k == field::TOKENS {
                        tokens.extend(v.chunks_exact(TOKEN_LEN).filter_map(|t| <[u8; 16]>::try_from(t).ok()));
                    }
                }
                if !tokens.is_empty() {
                    sessions.push(Session { keys, tokens, next_pn: 0, peer: t.peer });
                }
                continue;
            }
            let opened = sessions.iter_mut().find_map(|s| s.keys.s2c.open(&buf, 8).map(|(_, body)| (s, body)));
            let (s, body) = opened.expect("every server datagram is an answer or sealed for a session");
            let (inner, token) = secure_wire::parse_body(&body).expect("a well-formed body");
            Header::decode(inner).expect("an inner header");
            if let Some(t) = token
                && s.tokens.len() < 64
            {
                s.tokens.push(t);
            }
        }
        while server.poll_event().is_some() {}
        let (attempts_held, virtuals) = server.session_count();
        assert!(virtuals <= 6 && attempts_held <= 24, "{attempts_held} attempts, {virtuals} connections");
    }
    if secure_wire::debug() {
        eprintln!("DEBUG attempts={} sessions={} {:?}", attempts.len(), sessions.len(), server.secure_stats());
    }
});
