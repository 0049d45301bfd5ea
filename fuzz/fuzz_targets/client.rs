//! The client state machine fed arbitrary datagrams at arbitrary time steps:
//! it never panics, its deadlines are finite, and what it delivers in order
//! never exceeds what a server could have sent.
#![no_main]

use std::time::{Duration, Instant};

use anon_proto::wire::{Flags, Header, Seq};
use anon_proto::{ClientConfig, ClientConn};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Step {
    Datagram(Vec<u8>),
    Segment { seq: u32, ack: u32, flags: u8, payload: Vec<u8> },
    Wait { millis: u16 },
    RunTimers,
    Consume(u16),
}

#[derive(Debug, Arbitrary)]
struct Input {
    isn: u32,
    fast: bool,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let config = ClientConfig { fast: if input.fast { ClientConfig::default().fast } else { None }, ..ClientConfig::default() };
    let mut now = Instant::now();
    let mut client = ClientConn::new(config, input.isn, now);
    let mut buf = Vec::new();
    for step in input.steps.into_iter().take(512) {
        match step {
            Step::Datagram(bytes) => client.handle(now, &bytes),
            Step::Segment { seq, ack, flags, payload } => {
                let mut d = Vec::new();
                Header::new(Seq(seq), Seq(ack), Flags::from_word(u32::from(flags & 7))).encode(&payload, &mut d);
                client.handle(now, &d);
            }
            Step::Wait { millis } => now += Duration::from_millis(u64::from(millis)),
            Step::RunTimers => {
                if let Some(t) = client.poll_timeout() {
                    now = now.max(t);
                }
                client.handle_timeout(now);
            }
            Step::Consume(n) => client.consume(usize::from(n)),
        }
        while client.poll_transmit(now, &mut buf) {
            Header::decode(&buf).expect("the client sends well-formed datagrams");
        }
        while client.poll_event().is_some() {}
        if let Some(t) = client.poll_timeout() {
            assert!(t < now + Duration::from_secs(3600), "deadline too far: {:?}", t - now);
        }
    }
});
