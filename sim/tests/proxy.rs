//! Pages asked for by URL (docs/PROTOCOL.md §9) over the simulated network:
//! the secure server hands the URL to its driver (here a simulated fetcher),
//! serves what comes back, and tells the client why when nothing does.

use std::time::Duration;

use anon_proto::secure::{SecureServer, SecureServerConfig};
use anon_proto::{ClientConfig, ConnectionError, Refusal};
use anon_sim::proxy::{Origin, secure_proxy};
use anon_sim::{LinkConfig, page, seeds};

const URL: &str = "https://news.example.org/today.html";

fn clean() -> LinkConfig {
    LinkConfig::clean(Duration::from_millis(10))
}

fn client() -> ClientConfig {
    ClientConfig { connect_timeout: Duration::from_secs(60), ..ClientConfig::default() }
}

#[test]
fn a_url_is_fetched_served_byte_exact_and_described() {
    for seed in seeds(6) {
        let body = page(300_000, seed);
        // The client sends its first message at 0, 1, 3, 7 and 15 s (its SYN
        // timer) and keeps its last four attempts: only an answer to a newer
        // attempt than the first completes.
        let delay = Duration::from_secs(16);
        let mut sim = secure_proxy(seed, LinkConfig::hostile(0.05), &[URL, URL], delay, client(), |_| {});
        sim.server.add_page(URL, body.clone(), "text/html; charset=utf-8");
        let report = sim.run(Duration::from_secs(120), 2_000_000);
        assert!(report.quiescent, "seed {seed}: {report:?}");
        for c in &sim.clients {
            assert_eq!(c.conn.outcome(), Some(&Ok(())), "seed {seed}");
            assert!(c.data == body, "seed {seed}: page differs");
            let meta = c.conn.meta().expect("the answer says what the origin said");
            assert_eq!(
                (meta.status, meta.content_type.as_str(), meta.final_url.as_str()),
                (200, "text/html; charset=utf-8", URL)
            );
        }
        let s = sim.server.server.secure_stats();
        assert_eq!(s.fetch_requests, 2, "seed {seed}: {s:?}");
        // Four each, less what the lossy link dropped.
        assert!(s.fetch_repeats >= 6, "seed {seed}: first messages sent again while fetching: {s:?}");
        assert_eq!(sim.server.server.fetching_count(), 0);
        sim.server.server.handle_timeout(sim.now + Duration::from_secs(11));
        assert_eq!(sim.server.server.session_count(), (0, 0), "seed {seed}: state left after the end");
    }
}

#[test]
fn each_refusal_reaches_the_client_and_no_page_does() {
    let cases = [
        (Origin::Refuse(Refusal::Status(404)), Refusal::Status(404)),
        (Origin::Refuse(Refusal::Unreachable), Refusal::Unreachable),
        (Origin::Refuse(Refusal::TooLarge), Refusal::TooLarge),
        (Origin::Refuse(Refusal::NotAllowed), Refusal::NotAllowed),
    ];
    for (origin, want) in cases {
        let mut sim = secure_proxy(1, clean(), &[URL], Duration::from_millis(50), client(), |_| {});
        sim.server.origins.insert(URL.into(), origin);
        sim.run(Duration::from_secs(30), 100_000);
        assert_eq!(sim.clients[0].conn.outcome(), Some(&Err(ConnectionError::Rejected(want))));
        assert!(sim.clients[0].data.is_empty());
    }
    // A server that fetches nothing refuses every URL, without asking its driver.
    let mut sim = secure_proxy(2, clean(), &[URL], Duration::from_millis(50), client(), |c| c.fetch = false);
    sim.server.add_page(URL, page(1000, 1), "text/plain");
    sim.run(Duration::from_secs(30), 100_000);
    assert_eq!(sim.clients[0].conn.outcome(), Some(&Err(ConnectionError::Rejected(Refusal::NotAllowed))));
    assert!(sim.server.requested.is_empty());
}

#[test]
fn a_driver_that_never_answers_costs_a_bounded_wait() {
    let mut sim = secure_proxy(3, clean(), &[URL], Duration::from_millis(50), client(), |c| {
        c.fetch_timeout = Duration::from_secs(5);
    });
    sim.server.origins.insert(URL.into(), Origin::Hang);
    sim.run(Duration::from_secs(30), 100_000);
    assert_eq!(sim.clients[0].conn.outcome(), Some(&Err(ConnectionError::Rejected(Refusal::Timeout))));
    let s = sim.server.server.secure_stats();
    assert_eq!((s.fetch_timeouts, sim.server.server.fetching_count()), (1, 0), "{s:?}");
    // The refusal came at the server's deadline, not the client's.
    assert!(sim.now - sim.start < Duration::from_secs(7), "{:?}", sim.now - sim.start);
}

/// A holder of the bridge line asks for thousands of URLs and never lets a
/// fetch finish: the requests held stay within the limits, the rest are
/// refused as busy, and an honest client from elsewhere still gets through.
#[test]
fn a_flood_of_url_requests_is_bounded_and_refused_as_busy() {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Instant;

    use anon_proto::secure::{SecureClient, SecureClientConfig, StaticSecret, WallClock};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let clock = WallClock { at: start, unix_ms: anon_sim::SIM_UNIX_MS };
    let key = StaticSecret::generate(&mut StdRng::seed_from_u64(9));
    let mut config = SecureServerConfig::new(key.clone(), vec!["index".into()], clock);
    config.fetch = true;
    config.max_fetching = 64;
    config.max_fetching_per_source = 8;
    // Every message read, all at one instant: this test is of the fetch
    // limits, not of the read budget (secure_hostile.rs has that).
    config.handshake_reads = 1_000_000;
    let pages = vec![bytes::Bytes::from_static(b"x")];
    let mut server =
        SecureServer::new(config, anon_proto::ServerConfig::default(), pages, None, Box::new(StdRng::seed_from_u64(1)));
    let ask = |seed: u64, url: String| {
        let cfg = SecureClientConfig {
            server: key.public(),
            key: None,
            page: String::new(),
            url: Some(url),
            resume: None,
            clock,
        };
        let mut c = SecureClient::new(cfg, ClientConfig::default(), Box::new(StdRng::seed_from_u64(seed)), start);
        let mut m = Vec::new();
        assert!(c.poll_transmit(start, &mut m));
        m
    };
    let mut busy_answers = 0;
    for i in 0..2_000u64 {
        // 200 sources, 10 requests each, every URL different.
        let ip = IpAddr::V4(Ipv4Addr::new(10, 9, (i % 200 / 250) as u8, (i % 200) as u8 + 1));
        let from = SocketAddr::new(ip, 1000 + (i / 200) as u16);
        let m = ask(i, format!("https://x.example/{i}"));
        server.handle_kind(start, from, &m);
        assert!(server.fetching_count() <= 64);
        let mut buf = Vec::new();
        while let Some(t) = server.poll_transmit_append(start, &mut buf) {
            assert!(t.len <= m.len(), "an answer longer than its first message");
            busy_answers += 1;
            buf.clear();
        }
    }
    assert_eq!(server.fetching_count(), 64);
    assert_eq!(busy_answers, 2_000 - 64, "every request beyond the limit is told it is busy");
    let mut taken = 0;
    while server.poll_fetch().is_some() {
        taken += 1;
    }
    assert_eq!(taken, 64);
    // One source alone gets at most its share, and is told it is busy.
    server.handle_timeout(start + Duration::from_secs(91));
    let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 8, 0, 1)), 999);
    for i in 0..12u64 {
        server.handle_kind(start, from, &ask(10_000 + i, format!("https://x.example/s{i}")));
    }
    assert_eq!(server.fetching_count(), 8, "a source's share");
    // The core's deadline frees them all, driver or not.
    server.handle_timeout(start + Duration::from_secs(182));
    assert_eq!(server.fetching_count(), 0);
    assert_eq!(server.secure_stats().fetch_timeouts, 64 + 8);
}

/// A URL request's first message leaves its answer room (at least 1,200
/// bytes) and never needs fragmenting (at most 1,232), up to the longest
/// URL a client asks for.
#[test]
fn url_first_messages_are_between_1200_and_1232_bytes() {
    use std::time::Instant;

    use anon_proto::secure::proxy::MAX_REQUEST_URL_LEN;
    use anon_proto::secure::{SecureClient, SecureClientConfig, StaticSecret, WallClock};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let clock = WallClock { at: start, unix_ms: anon_sim::SIM_UNIX_MS };
    let server = StaticSecret::generate(&mut StdRng::seed_from_u64(5)).public();
    let longest = format!("https://a.example/{}", "x".repeat(MAX_REQUEST_URL_LEN - 18));
    for (seed, url) in (0..40).map(|s| (s, if s % 2 == 0 { longest.clone() } else { URL.to_owned() })) {
        let cfg = SecureClientConfig { server, key: None, page: String::new(), url: Some(url), resume: None, clock };
        let mut c = SecureClient::new(cfg, ClientConfig::default(), Box::new(StdRng::seed_from_u64(seed)), start);
        let mut m = Vec::new();
        assert!(c.poll_transmit(start, &mut m));
        assert!((1200..=1232).contains(&m.len()), "seed {seed}: {} bytes", m.len());
    }
}

/// `--continue`: a client that has the start of the page asks for the
/// rest from a resume point, with the SHA-256 of what it has; the server
/// sends only the rest when that is the page's start, the whole page
/// otherwise (docs/PROTOCOL.md §9.6), whether the page is in memory (the
/// answer says so) or still arriving (its stream says so once the page
/// has reached the point).
#[test]
fn a_transfer_resumes_from_the_clients_prefix_of_the_same_page_only() {
    use anon_proto::page::{CHECKPOINT, Page};
    use anon_proto::secure::{SecureClient, SecureClientConfig};
    use anon_sim::SimClient;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    let body = page(3 * CHECKPOINT as usize + 5000, 4);
    let prefix = |n: u64| Page::new(bytes::Bytes::from(body[..n as usize].to_vec())).sha256();
    let whole_sha = Page::new(bytes::Bytes::from(body.clone())).sha256();
    let point = 2 * CHECKPOINT;
    let cases = [
        (point, prefix(point), true),
        (point, [7u8; 32], false),
        // Not a resume point, or the whole page's digest: from the start.
        (point - 1, prefix(point - 1), false),
        (point, whole_sha, false),
    ];
    for streamed in [false, true] {
        for &(offset, digest, resumes) in &cases {
            let what = format!("streamed {streamed}, offset {offset}, resumes {resumes}");
            let mut sim = secure_proxy(5, LinkConfig::hostile(0.02), &[], Duration::from_millis(50), client(), |_| {});
            if streamed {
                let origin = streaming(&body, 8, Duration::from_millis(100), None);
                sim.server.origins.insert(URL.into(), origin);
            } else {
                sim.server.add_page(URL, body.clone(), "application/octet-stream");
            }
            let cfg = SecureClientConfig {
                server: sim.server.server_key,
                key: None,
                page: String::new(),
                url: Some(URL.into()),
                resume: Some((offset, digest)),
                clock: anon_proto::secure::WallClock { at: sim.start, unix_ms: anon_sim::SIM_UNIX_MS },
            };
            let conn = SecureClient::new(cfg, client(), Box::new(StdRng::seed_from_u64(1)), sim.start);
            sim.clients.push(SimClient::new(anon_sim::client_addr(0), conn));
            sim.run(Duration::from_secs(60), 1_000_000);
            let c = &sim.clients[0];
            assert_eq!(c.conn.outcome(), Some(&Ok(())), "{what}");
            let (_, sha) = c.conn.whole().expect("the page's digest");
            assert_eq!(sha, whole_sha, "{what}: the digest is the whole page's");
            if resumes {
                assert_eq!(c.conn.resumed_from(), Some(offset), "{what}");
                assert!(c.data == body[offset as usize..], "{what}: the rest of the page, and only that");
            } else {
                assert_eq!(c.conn.resumed_from(), None, "{what}");
                assert!(c.data == body, "{what}: the whole page");
            }
        }
    }
}

/// A page served while the origin still sends it: `pieces` pieces, one
/// every `gap`, the first `delay` after the request.
fn streaming(body: &[u8], pieces: usize, gap: Duration, fail: Option<Refusal>) -> Origin {
    let meta = anon_proto::secure::PageMeta {
        status: 200,
        content_type: "text/html".into(),
        final_url: format!("{URL}?final"),
    };
    Origin::Stream { body: std::sync::Arc::new(body.to_vec()), meta, pieces, gap, fail }
}

#[test]
fn a_streamed_page_arrives_while_the_origin_still_sends_it_and_is_verified_at_its_end() {
    for seed in seeds(4) {
        let body = page(2_000_000, seed);
        let link = if seed % 2 == 0 { clean() } else { LinkConfig::hostile(0.03) };
        let delay = Duration::from_millis(300);
        let gap = Duration::from_millis(500);
        let mut sim = secure_proxy(seed, link, &[URL], delay, client(), |_| {});
        sim.server.origins.insert(URL.into(), streaming(&body, 10, gap, None));
        // Just before the last piece: nine tenths are in the stream, and
        // the client has most of them already.
        let last_piece = delay + gap * 9;
        sim.run(last_piece - Duration::from_millis(1), 2_000_000);
        assert!(sim.server.stream_ends.is_empty(), "seed {seed}: the stream has not ended yet");
        let have = sim.clients[0].data.len();
        assert!(have >= 1_500_000, "seed {seed}: only {have} bytes while the origin was still sending");
        assert!(body.starts_with(&sim.clients[0].data), "seed {seed}: what arrived is the page's start");
        assert_eq!(sim.clients[0].conn.whole(), None, "seed {seed}: no length or digest before the end");
        let report = sim.run(Duration::from_secs(60), 4_000_000);
        assert!(report.quiescent, "seed {seed}: {report:?}");
        let c = &sim.clients[0];
        assert_eq!(c.conn.outcome(), Some(&Ok(())), "seed {seed}");
        assert!(c.data == body, "seed {seed}: page differs");
        let sha = anon_proto::page::Page::new(body.clone().into()).sha256();
        assert_eq!(c.conn.whole(), Some((body.len() as u64, sha)), "seed {seed}: the trailer's length and digest");
        let meta = c.conn.meta().expect("META starts the stream");
        assert_eq!((meta.status, meta.final_url.as_str()), (200, format!("{URL}?final").as_str()));
    }
}

/// Whenever the origin's first byte comes, the client's comes within a
/// round trip of it: at once (before the client can have confirmed, the
/// early segment carries it, docs/PROTOCOL.md §8.3), during the handshake,
/// or long after it.
#[test]
fn a_streamed_pages_first_byte_comes_one_round_trip_after_the_origins() {
    let rtt = Duration::from_millis(100);
    let body = page(200_000, 7);
    for delay in [0, 20, 70, 1_000].map(Duration::from_millis) {
        let mut sim = secure_proxy(7, LinkConfig::clean(rtt / 2), &[URL], delay, client(), |_| {});
        sim.server.origins.insert(URL.into(), streaming(&body, 4, Duration::from_millis(200), None));
        // The request reaches the server half a round trip after the start.
        let origin_first_byte = rtt / 2 + delay;
        sim.run(origin_first_byte + rtt, 1_000_000);
        let have = sim.clients[0].data.len();
        assert!(have > 0, "origin {delay:?} late: no page byte within one round trip of the origin's first");
        sim.run(Duration::from_secs(30), 1_000_000);
        assert!(sim.clients[0].data == body, "origin {delay:?} late");
    }
}

#[test]
fn a_stream_cut_short_reaches_the_client_as_the_reason_and_nothing_verifies() {
    for (fail, want) in [(Refusal::TooLarge, Refusal::TooLarge), (Refusal::Timeout, Refusal::Timeout)] {
        let body = page(400_000, 3);
        let mut sim = secure_proxy(3, clean(), &[URL], Duration::from_millis(50), client(), |_| {});
        sim.server.origins.insert(URL.into(), streaming(&body, 4, Duration::from_millis(100), Some(fail)));
        let report = sim.run(Duration::from_secs(60), 1_000_000);
        assert!(report.quiescent, "{report:?}");
        let c = &sim.clients[0];
        assert_eq!(c.conn.outcome(), Some(&Err(ConnectionError::Rejected(want))));
        assert_eq!(c.conn.whole(), None, "a page cut short has no length and digest to save it by");
    }
}

/// One stream, two clients: the second asks when the first has most of
/// the page already, joins the same stream and still gets the whole page
/// from its first byte (docs/PROTOCOL.md §9.7, sharing).
#[test]
fn a_client_that_joins_a_stream_late_gets_the_whole_page() {
    use anon_proto::secure::{SecureClient, SecureClientConfig};
    use anon_sim::SimClient;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    for seed in seeds(3) {
        let body = page(1_500_000, seed);
        let mut sim =
            secure_proxy(seed, LinkConfig::hostile(0.02), &[URL], Duration::from_millis(100), client(), |_| {});
        sim.server.origins.insert(URL.into(), streaming(&body, 10, Duration::from_millis(300), None));
        // Half the pieces are in, and most of them at the first client.
        sim.run(Duration::from_millis(100 + 300 * 5), 2_000_000);
        assert!(sim.clients[0].data.len() > 300_000, "seed {seed}: the first client is well under way");
        let cfg = SecureClientConfig {
            server: sim.server.server_key,
            key: None,
            page: String::new(),
            url: Some(URL.into()),
            resume: None,
            clock: anon_proto::secure::WallClock { at: sim.start, unix_ms: anon_sim::SIM_UNIX_MS },
        };
        let conn = SecureClient::new(cfg, client(), Box::new(StdRng::seed_from_u64(seed + 100)), sim.now);
        sim.clients.push(SimClient::new(anon_sim::client_addr(1), conn));
        let report = sim.run(Duration::from_secs(60), 4_000_000);
        assert!(report.quiescent, "seed {seed}: {report:?}");
        for (i, c) in sim.clients.iter().enumerate() {
            assert_eq!(c.conn.outcome(), Some(&Ok(())), "seed {seed}, client {i}");
            assert!(c.data == body, "seed {seed}, client {i}: page differs");
        }
        assert_eq!(sim.server.streams_started, 1, "seed {seed}: one origin fetch for both");
        assert_eq!(sim.server.requested.len(), 2);
    }
}
