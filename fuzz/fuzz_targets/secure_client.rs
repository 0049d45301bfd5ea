//! The secure-mode client fed arbitrary datagrams before and after a real
//! handshake with an in-process SecureServer, mutations of the real
//! server's datagrams, answers crafted around fuzzer-chosen payloads (an
//! independent responder holding the server's key) and sealed datagrams
//! forged under the session keys (its key log's, or the crafted
//! handshake's) around fuzzer-chosen bodies and inner datagrams.
//!
//! Invariants: no panic; deadlines finite; every datagram the client sends
//! is a first message under the outer layer while it has no keys, and a
//! sealed datagram that opens under its key log's client-to-server keys,
//! with a well-formed body and inner header, once it has them.
#![no_main]

mod secure_wire;

use std::time::{Duration, Instant};

use anon_proto::secure::{SecureClient, SecureClientConfig, SecureServer, SecureServerConfig, WallClock};
use anon_proto::wire::{Flags, Header, Seq};
use anon_proto::{ClientConfig, ServerConfig};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use secure_wire::{Edit, Keys, Outer, field, mutate};

#[derive(Debug, Arbitrary)]
struct Inner {
    seq: u32,
    /// Acknowledge the client's ISN + 1 plus this (`None`: any value).
    ack: Option<u16>,
    any_ack: u32,
    flags: u8,
    /// A well-formed fast-mode answer (segment size, page length) first.
    answer: Option<(u16, u16)>,
    payload: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Raw(Vec<u8>),
    Plain {
        seq: u32,
        ack: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    /// The real server's next datagram, unchanged.
    FromServer,
    /// The real server's last datagram, edited.
    MutatedServer(Vec<Edit>),
    /// The client's datagrams so far go to the real server.
    ToServer,
    /// An answer to one of the client's first messages, around these
    /// payload fields.
    Answer {
        attempt: u8,
        seed: u8,
        tokens: Vec<u8>,
        inner: Option<Inner>,
        error: Option<u8>,
        extra: Vec<(u8, Vec<u8>)>,
        raw: Option<Vec<u8>>,
        pad: u16,
        ad_wrong: bool,
    },
    /// A sealed datagram under the session keys around this body.
    Forged {
        crafted: bool,
        pn: Option<u64>,
        flags: u8,
        inner: Inner,
        token: bool,
        pad: u8,
        raw: Option<Vec<u8>>,
    },
    Wait {
        millis: u16,
    },
    RunTimers,
    Consume(u16),
}

#[derive(Debug, Arbitrary)]
struct Input {
    handshake_first: bool,
    seed: u8,
    steps: Vec<Step>,
}

const CLIENT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 7000);

/// The client's ISN, from the inner SYN in a first message's payload.
fn client_isn(payload: &[u8]) -> Option<u32> {
    let inner = secure_wire::fields(payload).into_iter().find(|(k, _)| *k == field::INNER)?.1;
    Header::decode(&inner).ok().map(|(h, _)| h.seq.0)
}

fn inner_bytes(spec: &Inner, isn: Option<u32>) -> Vec<u8> {
    let ack = match (spec.ack, isn) {
        (Some(off), Some(isn)) => isn.wrapping_add(1).wrapping_add(u32::from(off)),
        _ => spec.any_ack,
    };
    let mut payload = Vec::new();
    if let Some((segment, page_len)) = spec.answer {
        payload.extend_from_slice(b"ANON\x01\x02");
        payload.extend_from_slice(&(4u16 + 10 + 34).to_be_bytes());
        payload.extend_from_slice(&[3, 2]);
        payload.extend_from_slice(&segment.to_be_bytes());
        payload.extend_from_slice(&[4, 8]);
        payload.extend_from_slice(&u64::from(page_len).to_be_bytes());
        payload.extend_from_slice(&[5, 32]);
        payload.extend_from_slice(&[0x5a; 32]);
    }
    payload.extend(spec.payload.iter().take(1400));
    let mut d = Vec::new();
    Header::new(Seq(spec.seq), Seq(ack), Flags::from_word(u32::from(spec.flags & 7))).encode(&payload, &mut d);
    d
}

/// Takes what the client sends, and checks each datagram.
fn drain_client(
    client: &mut SecureClient,
    now: Instant,
    outer: &Outer,
    buf: &mut Vec<u8>,
    out: &mut Vec<Vec<u8>>,
    firsts: &mut Vec<Vec<u8>>,
) {
    let mut n = 0;
    while client.poll_transmit(now, buf) {
        n += 1;
        assert!(n <= 4096, "unbounded transmits");
        assert!(buf.len() <= 1232, "oversized client datagram: {}", buf.len());
        match client.key_log() {
            None => {
                assert!(outer.open(buf, b"").is_some(), "a datagram without keys that is no first message");
                if firsts.len() < 8 {
                    firsts.push(buf.clone());
                }
            }
            Some(log) => {
                let keys = secure_wire::parse_key_log(&log.0).expect("a well-formed key log line");
                let (_, body) = keys.c2s.open(buf, 24).expect("sealed under the key log's keys");
                let (inner, _) = secure_wire::parse_body(&body).expect("a well-formed body");
                Header::decode(inner).expect("an inner header");
            }
        }
        if out.len() < 256 {
            out.push(buf.clone());
        }
    }
}

fuzz_target!(|input: Input| {
    let start = Instant::now();
    let clock = WallClock { at: start, unix_ms: 1_800_000_000_000 };
    let (server_private, server_public) = secure_wire::keypair_cached(3);
    let key = secure_wire::secret(3);
    let outer = Outer::new(&server_public);

    let secure = SecureServerConfig::new(key.clone(), vec!["index".into()], clock);
    let page: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let mut server = SecureServer::new(
        secure,
        ServerConfig::default(),
        vec![Bytes::from(page)],
        None,
        Box::new(StdRng::seed_from_u64(5)),
    );
    let cfg =
        SecureClientConfig { server: key.public(), key: Some(secure_wire::secret(4)), page: "index".into(), url: None, resume: None, clock };
    let rng = Box::new(StdRng::seed_from_u64(u64::from(input.seed)));
    let mut client = SecureClient::new(cfg, ClientConfig::default(), rng, start);

    let mut now = start;
    let mut buf = Vec::new();
    let mut from_client: Vec<Vec<u8>> = Vec::new();
    let mut firsts: Vec<Vec<u8>> = Vec::new();
    let mut from_server: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut last_server: Option<Vec<u8>> = None;
    let mut crafted: Option<Keys> = None;
    let mut crafted_isn: Option<u32> = None;
    let mut next_pn: u64 = 1 << 20;

    if input.handshake_first {
        for _ in 0..16 {
            drain_client(&mut client, now, &outer, &mut buf, &mut from_client, &mut firsts);
            for d in from_client.drain(..) {
                server.handle_kind(now, CLIENT, &d);
            }
            let mut answered = false;
            let mut out = Vec::new();
            while server.poll_transmit_append(now, &mut out).is_some() {
                client.handle(now, &out);
                out.clear();
                answered = true;
            }
            if client.key_log().is_some() || !answered {
                break;
            }
        }
    }

    for step in input.steps.into_iter().take(256) {
        match step {
            Step::Raw(bytes) => client.handle(now, &bytes),
            Step::Plain { seq, ack, flags, payload } => {
                let mut d = Vec::new();
                Header::new(Seq(seq), Seq(ack), Flags::from_word(u32::from(flags & 7))).encode(&payload, &mut d);
                client.handle(now, &d);
            }
            Step::FromServer => {
                if let Some(d) = from_server.pop_front() {
                    client.handle(now, &d);
                    last_server = Some(d);
                }
            }
            Step::MutatedServer(edits) => {
                if let Some(d) = &last_server {
                    client.handle(now, &mutate(d, &edits));
                }
            }
            Step::ToServer => {
                for d in from_client.drain(..) {
                    server.handle_kind(now, CLIENT, &d);
                }
            }
            Step::Answer { attempt, seed, tokens, inner, error, extra, raw, pad, ad_wrong } => {
                if firsts.is_empty() {
                    continue;
                }
                let msg1 = &firsts[usize::from(attempt) % firsts.len()];
                let Some(noise) = outer.open(msg1, b"") else { continue };
                let Some((hs, hello)) = secure_wire::respond(&server_private, [seed; 32], &noise) else { continue };
                let isn = client_isn(&hello);
                let payload = match raw {
                    Some(raw) => raw,
                    None => {
                        let mut p = Vec::new();
                        secure_wire::put_field(&mut p, field::TOKENS, &tokens);
                        if let Some(inner) = &inner {
                            secure_wire::put_field(&mut p, field::INNER, &inner_bytes(inner, isn));
                        }
                        if let Some(e) = error {
                            secure_wire::put_field(&mut p, field::ERROR, &[e]);
                        }
                        for (k, v) in extra.iter().take(4) {
                            secure_wire::put_field(&mut p, *k, v);
                        }
                        p
                    }
                };
                let Some((noise, keys)) = secure_wire::answer(hs, &payload) else { continue };
                let ad: &[u8] = if ad_wrong { b"" } else { &msg1[..24] };
                let d = outer.seal([seed ^ 0x55; 24], &noise, &[], usize::from(pad % 1400), ad);
                client.handle(now, &d);
                crafted = Some(keys);
                crafted_isn = isn;
            }
            Step::Forged { crafted: use_crafted, pn, flags, inner, token, pad, raw } => {
                let logged = client.key_log().and_then(|l| secure_wire::parse_key_log(&l.0));
                let keys = if use_crafted { crafted.as_ref() } else { logged.as_ref() };
                let Some(keys) = keys else { continue };
                let body = match raw {
                    Some(raw) => raw,
                    None => {
                        let inner = inner_bytes(&inner, crafted_isn);
                        let t = [0xa5u8; 16];
                        secure_wire::body(flags, &inner, token.then_some(&t[..]), usize::from(pad))
                    }
                };
                let pn = pn.unwrap_or_else(|| {
                    next_pn += 1;
                    next_pn
                });
                client.handle(now, &keys.s2c.seal(&[], pn, &body));
            }
            Step::Wait { millis } => now += Duration::from_millis(u64::from(millis) * 4),
            Step::RunTimers => {
                if let Some(t) = client.poll_timeout() {
                    now = now.max(t);
                }
                client.handle_timeout(now);
                server.handle_timeout(now);
            }
            Step::Consume(n) => client.consume(usize::from(n)),
        }
        drain_client(&mut client, now, &outer, &mut buf, &mut from_client, &mut firsts);
        buf.clear();
        let mut n = 0;
        while server.poll_transmit_append(now, &mut buf).is_some() {
            n += 1;
            assert!(n <= 4096, "unbounded server transmits");
            if from_server.len() < 256 {
                from_server.push_back(buf.clone());
            }
            buf.clear();
        }
        while client.poll_event().is_some() {}
        while server.poll_event().is_some() {}
        if let Some(t) = client.poll_timeout() {
            assert!(t < now + Duration::from_secs(3600), "deadline too far: {:?}", t - now);
        }
    }
    if secure_wire::debug() {
        eprintln!(
            "DEBUG keys={} crafted={} received={} {:?} {:?}",
            client.key_log().is_some(),
            crafted.is_some(),
            client.stats().datagrams_received,
            client.secure_stats(),
            client.outcome()
        );
    }
});
