//! The secure-mode server (a fixed key, two small pages, plaintext off or
//! on) fed arbitrary datagrams from arbitrary addresses, real datagrams of
//! two seeded secure clients (first messages, sealed datagrams, the
//! conversation carried on both ways), mutations and replays of them, and
//! time advances with its timers run.
//!
//! Invariants: no panic; state stays within its bounds; and the server is
//! silent to what did not authenticate: until a client's real sealed
//! datagram has reached it, it sends at most two secure datagrams (an
//! answer and its early segment) per distinct real first message it was
//! given (none at all without one; a replay, a mutation or random bytes
//! draw nothing), none longer than the longest of them, and no more bytes
//! in all than those first messages had.
#![no_main]

mod secure_wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anon_proto::secure::{
    FetchedPage, PageMeta, SecureClient, SecureClientConfig, SecureServer, SecureServerConfig, WallClock,
};
use anon_proto::wire::{Flags, Header, Seq};
use anon_proto::{ClientConfig, ServerConfig};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use secure_wire::{Edit, mutate};

/// What a client asks for: a page name, or (after "url:") a URL, which
/// the server hands to its stand-in driver below.
const PAGES: [&str; 6] = ["", "index", "news", "missing", "url:https://a.example/x", "url:https://a.example/y"];
const MAX_FETCHING: usize = 2;
const MAX_CONNECTIONS: usize = 4;
const MAX_PENDING: usize = 3;
/// Small, so that the fuzzer meets a loaded replay filter.
const REPLAY_FILTER_BITS: usize = 512;

#[derive(Debug, Arbitrary)]
enum Step {
    /// Arbitrary bytes.
    Raw {
        peer: u8,
        bytes: Vec<u8>,
    },
    /// A plaintext header, so that plaintext on gets past decoding.
    Plain {
        peer: u8,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    /// The client's next datagram, unchanged, from its address or another.
    Client {
        client: bool,
        peer: Option<u8>,
    },
    /// A client's last datagram (or first message), edited.
    Mutated {
        client: bool,
        first: bool,
        peer: u8,
        edits: Vec<Edit>,
    },
    /// One delivered before, again.
    Replay {
        index: u8,
        peer: u8,
    },
    /// The server's datagrams so far go to both clients.
    ToClients,
    /// Both ways for a few rounds: every client datagram to the server,
    /// every server datagram to the clients, time moving on.
    Converse {
        rounds: u8,
        millis: u8,
    },
    Wait {
        millis: u16,
    },
    RunTimers,
}

#[derive(Debug, Arbitrary)]
struct Input {
    plaintext: bool,
    seed: u8,
    pages: [u8; 2],
    steps: Vec<Step>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Sealed,
}

struct Client {
    conn: SecureClient,
    addr: SocketAddr,
    last: Option<Vec<u8>>,
    last_first: Option<Vec<u8>>,
}

struct Books {
    /// Every datagram a client produced, and what it was.
    produced: HashMap<Vec<u8>, Kind>,
    /// Real first messages delivered (each counted once).
    firsts: HashSet<Vec<u8>>,
    firsts_bytes: usize,
    longest_first: usize,
    /// A real sealed datagram was delivered: data may flow from then on.
    sealed: bool,
    secure_sent: usize,
    secure_bytes: usize,
    delivered: Vec<(Vec<u8>, SocketAddr)>,
}

fn addr(peer: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, peer % 5], 5000 + u16::from(peer % 3)))
}

fn page(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ salt).collect()
}

/// Books one datagram the server sent, and checks what can be checked of
/// it alone: a secure one before any client was verified is an answer, no
/// longer than the longest real first message.
fn check_sent(books: &mut Books, plaintext: bool, has_inner: bool, d: &[u8]) {
    assert!(d.len() <= 1472, "oversized datagram: {}", d.len());
    // Plaintext answers (plaintext on) carry no inner header and a flags
    // word with its reserved bits zero; a secure refusal has no inner
    // header either, but its bytes look random.
    let word = d.get(8..12).map_or(u32::MAX, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    if !plaintext || has_inner || word >= 8 {
        books.secure_sent += 1;
        books.secure_bytes += d.len();
        if !books.sealed {
            assert!(
                d.len() <= books.longest_first,
                "answer of {} bytes to first messages of at most {}",
                d.len(),
                books.longest_first
            );
        }
    } else {
        Header::decode(d).expect("a plaintext datagram");
    }
}

fuzz_target!(|input: Input| {
    let start = Instant::now();
    let clock = WallClock { at: start, unix_ms: 1_800_000_000_000 };
    let key = secure_wire::secret(7);
    let mut secure = SecureServerConfig::new(key.clone(), vec!["index".into(), "news".into()], clock);
    secure.max_pending = MAX_PENDING;
    secure.replay_filter_bits = REPLAY_FILTER_BITS;
    secure.fetch = true;
    secure.max_fetching = MAX_FETCHING;
    secure.fetch_timeout = Duration::from_secs(5);
    let config = ServerConfig { max_connections: MAX_CONNECTIONS, max_per_source: 2, ..ServerConfig::default() };
    let pages = vec![Bytes::from(page(3000, 0)), Bytes::from(page(700, 1))];
    let plain = input.plaintext.then(|| ServerConfig { max_connections: 2, ..ServerConfig::default() });
    let mut server = SecureServer::new(secure, config, pages, plain, Box::new(StdRng::seed_from_u64(9)));

    let mut clients: Vec<Client> = (0..2u8)
        .map(|i| {
            let page = PAGES[usize::from(input.pages[usize::from(i)]) % PAGES.len()].to_owned();
            let url = page.strip_prefix("url:").map(str::to_owned);
            let cfg = SecureClientConfig { server: key.public(), key: Some(secure_wire::secret(100 + i)), page, url, resume: None, clock };
            let rng = Box::new(StdRng::seed_from_u64(u64::from(input.seed) * 2 + u64::from(i)));
            let conn = SecureClient::new(cfg, ClientConfig::default(), rng, start);
            Client { conn, addr: SocketAddr::from(([192, 0, 2, 1 + i], 6000)), last: None, last_first: None }
        })
        .collect();

    let mut now = start;
    let mut books = Books {
        produced: HashMap::new(),
        firsts: HashSet::new(),
        firsts_bytes: 0,
        longest_first: 0,
        sealed: false,
        secure_sent: 0,
        secure_bytes: 0,
        delivered: Vec::new(),
    };
    let mut to_clients: Vec<Vec<u8>> = Vec::new();
    let mut buf = Vec::new();

    let deliver = |server: &mut SecureServer, books: &mut Books, now: Instant, peer: SocketAddr, d: Vec<u8>| {
        match books.produced.get(&d) {
            Some(Kind::First) => {
                books.longest_first = books.longest_first.max(d.len());
                if books.firsts.insert(d.clone()) {
                    books.firsts_bytes += d.len();
                }
            }
            Some(Kind::Sealed) => books.sealed = true,
            None => {}
        }
        server.handle_kind(now, peer, &d);
        if books.delivered.len() < 64 {
            books.delivered.push((d, peer));
        }
    };

    for step in input.steps.into_iter().take(256) {
        match step {
            Step::Raw { peer, bytes } => deliver(&mut server, &mut books, now, addr(peer), bytes),
            Step::Plain { peer, seq, ack, flags, payload } => {
                let mut d = Vec::new();
                Header::new(Seq(seq), Seq(ack), Flags::from_word(u32::from(flags & 7))).encode(&payload, &mut d);
                deliver(&mut server, &mut books, now, addr(peer), d);
            }
            Step::Client { client, peer } => {
                let c = &mut clients[usize::from(client)];
                if c.conn.poll_transmit(now, &mut buf) {
                    let kind = if c.conn.key_log().is_some() { Kind::Sealed } else { Kind::First };
                    books.produced.insert(buf.clone(), kind);
                    c.last = Some(buf.clone());
                    if kind == Kind::First {
                        c.last_first = Some(buf.clone());
                    }
                    let peer = peer.map_or(c.addr, addr);
                    deliver(&mut server, &mut books, now, peer, buf.clone());
                }
            }
            Step::Mutated { client, first, peer, edits } => {
                let c = &clients[usize::from(client)];
                if let Some(d) = if first { &c.last_first } else { &c.last } {
                    let peer = if peer % 2 == 0 { c.addr } else { addr(peer) };
                    deliver(&mut server, &mut books, now, peer, mutate(d, &edits));
                }
            }
            Step::Replay { index, peer } => {
                if !books.delivered.is_empty() {
                    let (d, from) = books.delivered[usize::from(index) % books.delivered.len()].clone();
                    let peer = if peer % 2 == 0 { from } else { addr(peer) };
                    deliver(&mut server, &mut books, now, peer, d);
                }
            }
            Step::ToClients => {
                for d in to_clients.drain(..) {
                    for c in &mut clients {
                        c.conn.handle(now, &d);
                    }
                }
            }
            Step::Converse { rounds, millis } => {
                for _ in 0..rounds % 16 {
                    for c in &mut clients {
                        let mut n = 0;
                        while n < 64 && c.conn.poll_transmit(now, &mut buf) {
                            n += 1;
                            let kind = if c.conn.key_log().is_some() { Kind::Sealed } else { Kind::First };
                            books.produced.insert(buf.clone(), kind);
                            c.last = Some(buf.clone());
                            if kind == Kind::First {
                                c.last_first = Some(buf.clone());
                            }
                            deliver(&mut server, &mut books, now, c.addr, buf.clone());
                        }
                    }
                    let mut out = Vec::new();
                    let mut n = 0;
                    while n < 256 {
                        out.clear();
                        let Some(t) = server.poll_transmit_append(now, &mut out) else { break };
                        n += 1;
                        check_sent(&mut books, input.plaintext, t.inner.is_some(), &out);
                        for c in &mut clients {
                            c.conn.handle(now, &out);
                        }
                    }
                    now += Duration::from_millis(u64::from(millis));
                    server.handle_timeout(now);
                    for c in &mut clients {
                        if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                            c.conn.handle_timeout(now);
                        }
                    }
                }
            }
            Step::Wait { millis } => now += Duration::from_millis(u64::from(millis) * 8),
            Step::RunTimers => {
                if let Some(t) = server.poll_timeout() {
                    now = now.max(t);
                }
                server.handle_timeout(now);
                for c in &mut clients {
                    if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                        c.conn.handle_timeout(now);
                    }
                }
            }
        }

        // The driver: of the URLs asked for, one in five is never answered
        // (the core's deadline frees it), the others get the page, a
        // stream (growing, then complete or cut short) or a 404.
        while let Some(r) = server.poll_fetch() {
            let meta = PageMeta { status: 200, content_type: "text/html".into(), final_url: r.url.clone() };
            match r.id % 5 {
                0 => {}
                1 => {
                    let page = Arc::new(anon_proto::page::Page::new(Bytes::from(page(2000, 2))));
                    let body = anon_proto::page::Body::Whole(page);
                    server.fetch_done(now, r.id, Ok(FetchedPage { body, meta: Some(meta) }));
                }
                2 | 3 => {
                    let stream = Arc::new(anon_proto::page::Stream::new(0));
                    let view = anon_proto::page::StreamView::whole(Arc::clone(&stream));
                    server.fetch_done(now, r.id, Ok(FetchedPage { body: anon_proto::page::Body::Streaming(view), meta: None }));
                    stream.start(&meta);
                    stream.push(&page(3000, 3));
                    server.streams_grew(now);
                    if r.id % 5 == 2 {
                        stream.finish();
                    } else {
                        stream.fail(anon_proto::Refusal::Timeout);
                    }
                    server.streams_grew(now);
                }
                _ => server.fetch_done(now, r.id, Err(anon_proto::Refusal::Status(404))),
            }
        }
        assert!(server.fetching_count() <= MAX_FETCHING);

        // What the server sends, bounded per step.
        let mut sent = 0;
        loop {
            buf.clear();
            let Some(t) = server.poll_transmit_append(now, &mut buf) else { break };
            sent += 1;
            assert!(sent <= 4096, "unbounded transmits in one step");
            assert_eq!(t.len, buf.len());
            assert!(buf.len() <= 1472, "oversized datagram: {}", buf.len());
            check_sent(&mut books, input.plaintext, t.inner.is_some(), &buf);
            if to_clients.len() < 256 {
                to_clients.push(buf.clone());
            }
        }
        while server.poll_event().is_some() {}
        for c in &mut clients {
            while c.conn.poll_event().is_some() {}
        }

        let s = server.secure_stats();
        if !books.sealed {
            assert!(
                books.secure_sent <= 2 * books.firsts.len() && books.secure_bytes <= books.firsts_bytes,
                "{} secure datagrams, {} bytes, sent for {} real first messages of {} bytes ({s:?})",
                books.secure_sent,
                books.secure_bytes,
                books.firsts.len(),
                books.firsts_bytes
            );
        }
        assert!((s.handshakes + s.rejected) as usize <= books.firsts.len(), "{s:?}");
        let (sessions, virtuals) = server.session_count();
        assert!(virtuals <= MAX_CONNECTIONS, "{virtuals} connections");
        assert!(sessions <= 4 * MAX_CONNECTIONS, "{sessions} handshake attempts");
        if !input.plaintext {
            assert!(server.half_open_count() <= MAX_PENDING);
        }
        if let Some(t) = server.poll_timeout() {
            assert!(t < now + Duration::from_secs(3600), "deadline too far: {:?}", t - now);
        }
    }
    if secure_wire::debug() {
        eprintln!(
            "DEBUG firsts={} sealed={} sent={} {:?}",
            books.firsts.len(),
            books.sealed,
            books.secure_sent,
            server.secure_stats()
        );
    }
});
