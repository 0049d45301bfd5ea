//! End to end: the real binaries on loopback, against a local HTTP origin
//! that the test starts. Every wait is bounded.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anon_tools::origin::Origin;
use anon_tools::process::{Proc, ServerProcess, free_udp_port, spawn_client};

const SERVER: &str = env!("CARGO_BIN_EXE_anonserver");
const CLIENT: &str = env!("CARGO_BIN_EXE_anonclient");
const READY: Duration = Duration::from_secs(30);
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

fn page(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ salt).collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Every line of a packet log has the PROTOCOL.md §4 form.
fn assert_log_format(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    for line in text.lines() {
        let mut words = line.split(' ');
        assert!(matches!(words.next(), Some("SEND" | "RECV")), "{line:?}");
        assert!(words.next().unwrap().parse::<u32>().is_ok(), "{line:?}");
        assert!(words.next().unwrap().parse::<u32>().is_ok(), "{line:?}");
        let flags: Vec<&str> = words.collect();
        let order = ["ACK", "SYN", "FIN"];
        let mut last = None;
        for f in &flags {
            let pos = order.iter().position(|o| o == f);
            assert!(pos.is_some() && pos > last, "{line:?}");
            last = pos;
        }
    }
    text.lines().count()
}

fn fetch(port: u16, dir: &Path, name: &str, extra: &[&str]) -> (Proc, PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let log = dir.join(format!("{name}.log"));
    let proc = spawn_client(Path::new(CLIENT), port, &log, &out, extra).unwrap();
    (proc, out, log)
}

/// A client that reports its progress on stderr (debug level), so a test can
/// wait for "connecting" and "connected".
fn fetch_verbose(port: u16, dir: &Path, name: &str, extra: &[&str]) -> (Proc, PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let proc = Proc::spawn(
        Command::new(CLIENT)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-l"])
            .arg(dir.join(format!("{name}.log")))
            .arg("-f")
            .arg(&out)
            .args(extra)
            .env("RUST_LOG", "debug"),
    )
    .unwrap();
    (proc, out)
}

#[test]
fn twenty_concurrent_clients_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let body = page(300_000, 1);
    let origin = Origin::serve(body.clone()).unwrap();
    // Through a redirect, as real pages often are.
    let server_log = dir.path().join("server.log");
    let mut server = ServerProcess::start(Path::new(SERVER), &server_log, &origin.redirect_url(), &[], READY).unwrap();

    // Fifteen in fast mode (the default), five asking for the baseline.
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let extra: &[&str] = if i < 5 { &["--no-fast"] } else { &[] };
            (i < 5, fetch(server.port, dir.path(), &format!("c{i}"), extra))
        })
        .collect();
    let mut client_lines = 0;
    for (baseline, (mut proc, out, log)) in clients {
        let status = proc.wait(CLIENT_DEADLINE).unwrap();
        assert!(status.success(), "client failed: {:?}", proc.stderr);
        assert!(std::fs::read(&out).unwrap() == body, "{} differs from the page", out.display());
        client_lines += assert_log_format(&log);
        if baseline {
            // Stop-and-wait: 586 segments of 512 bytes (the last 480), each
            // received (and acknowledged) at least once.
            let text = std::fs::read_to_string(&log).unwrap();
            let segments: std::collections::HashSet<&str> = text
                .lines()
                .filter(|l| l.starts_with("RECV") && !l.ends_with("SYN"))
                .map(|l| l.split(' ').nth(1).unwrap())
                .collect();
            assert_eq!(segments.len(), 300_000usize.div_ceil(512), "{}", log.display());
        }
    }
    let status = server.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{:?}", server.proc.stderr);
    // The log is complete once the server has exited: every datagram either
    // side sent was logged by its sender and, loss aside, its receiver.
    let server_lines = assert_log_format(&server_log);
    assert!(server_lines >= 15 * 300_000 / 1200 + 5 * 2 * 300_000 / 512, "{server_lines}");
    assert!(client_lines >= server_lines * 9 / 10, "{client_lines} vs {server_lines}");
    let stopped = server.proc.stderr.iter().find(|l| l.contains("stopped")).unwrap();
    assert!(stopped.contains("completed=20"), "{stopped}");
    // No stray temporary files beside the outputs.
    assert!(files_in(dir.path()).iter().all(|n| !n.ends_with(".part")));
}

#[test]
fn malformed_storm_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let body = page(400_000, 2);
    let origin = Origin::serve(body.clone()).unwrap();
    let server_log = dir.path().join("server.log");
    let mut server =
        ServerProcess::start(Path::new(SERVER), &server_log, &origin.url(), &["--stats-interval", "1"], READY).unwrap();
    let port = server.port;
    let started = Instant::now();

    let clients: Vec<_> = (0..5).map(|i| fetch(port, dir.path(), &format!("c{i}"), &[])).collect();
    // A bounded storm from 16 sockets: short datagrams, headers with every
    // flag combination and random numbers, oversized junk.
    let storm = std::thread::spawn(move || {
        let mut sent = 0u64;
        let sockets: Vec<UdpSocket> = (0..16).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let mut x: u32 = 0x1234_5678;
        let started = Instant::now();
        for i in 0..60_000u32 {
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let datagram: Vec<u8> = match i % 4 {
                0 => x.to_be_bytes()[..(x % 12) as usize % 5].to_vec(),
                1 => [x.to_be_bytes(), x.rotate_left(7).to_be_bytes(), (x % 8).to_be_bytes()].concat(),
                2 => vec![0xff; 1400],
                _ => [x.to_be_bytes(), x.to_be_bytes(), (x | 0xffff_fff8).to_be_bytes(), [1, 2, 3, 4]].concat(),
            };
            let s = &sockets[(x % 16) as usize];
            if s.send_to(&datagram, ("127.0.0.1", port)).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let mut client_lines = 0;
    for (mut proc, out, log) in clients {
        let status = proc.wait(CLIENT_DEADLINE).unwrap();
        assert!(status.success(), "client failed during the storm: {:?}", proc.stderr);
        assert!(std::fs::read(&out).unwrap() == body);
        client_lines += assert_log_format(&log);
    }
    let sent = storm.join().unwrap();
    assert!(sent > 10_000, "storm too small: {sent}");
    // After the storm the server still serves new clients.
    let (mut proc, out, log) = fetch(port, dir.path(), "after", &[]);
    assert!(proc.wait(CLIENT_DEADLINE).unwrap().success());
    assert!(std::fs::read(&out).unwrap() == body);
    client_lines += assert_log_format(&log);

    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
    // The packet log: every datagram of the six transfers (on loopback
    // nothing is lost, so the server logs what the clients log), and of
    // the 45,000 storm datagrams with a header, no more than the stray and
    // repeat rates allow over the run.
    let server_lines = assert_log_format(&server_log) as u64;
    let secs = started.elapsed().as_secs() + 1;
    // The storm's SYNs from its 16 sockets open half-open connections, and
    // their SYNs again are repeats: they have a bucket of their own.
    use anon::packet_log::{REPEAT_BURST, REPEAT_PER_SEC, STRAY_BURST, STRAY_PER_SEC};
    let stray_bound = STRAY_BURST + STRAY_PER_SEC * secs + REPEAT_BURST + REPEAT_PER_SEC * secs;
    // A client's SYN sent again is logged within the stray rate, which the
    // storm may have used up: a little slack.
    assert!(server_lines + 100 >= client_lines as u64, "{server_lines} lines, the clients logged {client_lines}");
    assert!(
        server_lines <= client_lines as u64 + stray_bound,
        "{server_lines} lines, the clients {client_lines}, strays at most {stray_bound}: the storm was logged in full"
    );
    assert!(
        server.proc.stderr.iter().any(|l| l.contains("datagrams of no connection not logged")),
        "{:?}",
        server.proc.stderr
    );
    let stopped = server.proc.stderr.iter().find(|l| l.contains("stopped")).unwrap().clone();
    assert!(stopped.contains("completed=6"), "{stopped}");
    let malformed: u64 = stopped.split("malformed=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(malformed > 1000, "{stopped}");
}

fn run_server(args: &[&str]) -> (Option<i32>, Vec<String>, Duration) {
    let mut proc = Proc::spawn(Command::new(SERVER).args(args)).unwrap();
    let status = proc.wait(Duration::from_secs(30)).unwrap();
    (status.code(), proc.stderr.clone(), proc.age())
}

#[test]
fn bad_port_exits_nonzero_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let log = log.to_str().unwrap();
    for bad in ["0", "65536", "-5", "http", ""] {
        let (code, stderr, _) = run_server(&["-p", bad, "-l", log, "-w", "file:///dev/null"]);
        assert_eq!(code, Some(2), "port {bad:?}: {stderr:?}");
        assert!(stderr.iter().any(|l| l.contains("port") || l.contains("-p")), "port {bad:?}: {stderr:?}");
    }
    // A port in use: refused before the page is even looked at.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr, _) =
        run_server(&["-p", &port, "-l", log, "-w", "http://192.0.2.1/never", "--bind", "127.0.0.1"]);
    assert_eq!(code, Some(3), "{stderr:?}");
    assert_eq!(stderr.len(), 1, "one line: {stderr:?}");
    assert!(stderr[0].contains(&format!("cannot listen on UDP port {port}")), "{stderr:?}");
    assert!(!Path::new(log).exists(), "nothing happens after a bad port");
}

#[test]
fn page_that_cannot_be_downloaded_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let log = log.to_str().unwrap();
    let origin = Origin::serve(b"x".to_vec()).unwrap();
    let port = free_udp_port().unwrap().to_string();
    let missing_file = format!("file://{}", dir.path().join("none.html").display());
    for url in [origin.missing_url(), missing_file, "gopher://x".to_string()] {
        let (code, stderr, _) = run_server(&["-p", &port, "-l", log, "-w", &url, "--bind", "127.0.0.1"]);
        assert_eq!(code, Some(4), "{url}: {stderr:?}");
        assert_eq!(stderr.len(), 1, "{url}: one line: {stderr:?}");
        assert!(stderr[0].starts_with("anonserver: cannot download"), "{stderr:?}");
    }
    // Too large for the limit.
    let (code, stderr, _) = run_server(&["-p", &port, "-l", log, "-w", &origin.url(), "--max-page-size", "0"]);
    assert_eq!(code, Some(4), "{stderr:?}");
    assert!(stderr[0].contains("larger than the limit"), "{stderr:?}");
}

#[test]
fn no_server_client_fails_within_deadline_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listening: the kernel's port-unreachable ends it at once.
    let port = free_udp_port().unwrap();
    let (mut proc, out, _) = fetch(port, dir.path(), "refused", &[]);
    let status = proc.wait(Duration::from_secs(15)).unwrap();
    assert_eq!(status.code(), Some(1), "{:?}", proc.stderr);
    assert!(proc.stderr.iter().any(|l| l.contains("connection refused")), "{:?}", proc.stderr);
    assert!(!out.exists());

    // Something listening that never answers: the connect deadline ends it.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (mut proc, out, log) = fetch(port, dir.path(), "silent", &["--connect-timeout", "1.5"]);
    let status = proc.wait(Duration::from_secs(15)).unwrap();
    assert_eq!(status.code(), Some(1), "{:?}", proc.stderr);
    assert!(proc.age() >= Duration::from_millis(1500) && proc.age() < Duration::from_secs(5), "{:?}", proc.age());
    assert!(proc.stderr.iter().any(|l| l.contains("no answer from the server")), "{:?}", proc.stderr);
    assert!(!out.exists());
    // SYN at 0 and 1 s, each logged.
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.ends_with(" SYN")).count(), 2);
    // Only the two logs remain: no output, no temporary file.
    assert_eq!(files_in(dir.path()), ["refused.log", "silent.log"]);
}

#[test]
fn ipv6_and_ipv4_clients_of_one_dual_stack_server() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let body = page(5000, 3);
    let page_file = dir.path().join("page.html");
    std::fs::write(&page_file, &body).unwrap();
    // A local path as the page, and the default dual-stack socket.
    let server_log = dir.path().join("server.log");
    let mut server =
        ServerProcess::start_on(Path::new(SERVER), None, &server_log, page_file.to_str().unwrap(), &[], READY).unwrap();
    for (name, addr) in [("v6", "::1"), ("v4", "127.0.0.1")] {
        let out = dir.path().join(name);
        let mut proc = Proc::spawn(
            Command::new(CLIENT)
                .args(["-s", addr, "-p", &server.port.to_string(), "-l"])
                .arg(dir.path().join(format!("{name}.log")))
                .arg("-f")
                .arg(&out),
        )
        .unwrap();
        assert!(proc.wait(CLIENT_DEADLINE).unwrap().success(), "{name}: {:?}", proc.stderr);
        assert!(std::fs::read(&out).unwrap() == body, "{name}");
    }
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn sigint_stops_server_cleanly_with_log_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::serve(page(2000, 4)).unwrap();
    let server_log = dir.path().join("server.log");
    std::fs::write(&server_log, "line from an earlier run\n").unwrap();
    let mut server = ServerProcess::start(Path::new(SERVER), &server_log, &origin.url(), &[], READY).unwrap();
    let (mut proc, _, client_log) = fetch(server.port, dir.path(), "c", &[]);
    assert!(proc.wait(CLIENT_DEADLINE).unwrap().success());
    server.proc.signal("INT").unwrap();
    let status = server.proc.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0));
    // Appended, not truncated; every line the client logged has its twin.
    let log = std::fs::read_to_string(&server_log).unwrap();
    assert!(log.starts_with("line from an earlier run\n"));
    let client = std::fs::read_to_string(&client_log).unwrap();
    assert_eq!(log.lines().count() - 1, client.lines().count(), "server:\n{log}\nclient:\n{client}");
}

#[test]
fn server_killed_mid_transfer_client_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // Large enough that the transfer is still running when the server dies.
    let origin = Origin::serve(page(20 << 20, 5)).unwrap();
    let server_log = dir.path().join("server.log");
    let server = ServerProcess::start(Path::new(SERVER), &server_log, &origin.url(), &[], READY).unwrap();
    let (mut client, out) = fetch_verbose(server.port, dir.path(), "c", &["--timeout", "2"]);
    // Kill the server once the transfer has begun.
    client.wait_for_line("connected", READY).unwrap();
    server.proc.signal("KILL").unwrap();
    let killed = Instant::now();
    let status = client.wait(Duration::from_secs(15)).unwrap();
    assert_eq!(status.code(), Some(1), "{:?}", client.stderr);
    assert!(killed.elapsed() < Duration::from_secs(5), "gave up after {:?}", killed.elapsed());
    assert!(client.stderr.iter().any(|l| l.contains("went silent")), "{:?}", client.stderr);
    assert!(!out.exists());
    assert!(files_in(dir.path()).iter().all(|n| !n.ends_with(".part")), "{:?}", files_in(dir.path()));

    // A new server on the same port serves new clients at once.
    let port = server.port.to_string();
    let body = page(3000, 6);
    let origin = Origin::serve(body.clone()).unwrap();
    let mut again = Proc::spawn(Command::new(SERVER).args(["-p", &port, "-l"]).arg(&server_log).args([
        "-w",
        &origin.url(),
        "--bind",
        "127.0.0.1",
    ]))
    .unwrap();
    again.wait_for_line("serving", READY).unwrap();
    let (mut client, out, _) = fetch(server.port, dir.path(), "again", &[]);
    assert!(client.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", client.stderr);
    assert!(std::fs::read(&out).unwrap() == body);
}

#[test]
fn interrupted_client_exits_130_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // A server that never answers keeps the client in its handshake.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (mut client, out) = fetch_verbose(port, dir.path(), "c", &[]);
    // Once it is connecting, its temporary file exists and its signal
    // handlers are in place.
    client.wait_for_line("connecting", READY).unwrap();
    client.signal("INT").unwrap();
    let status = client.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(130), "{:?}", client.stderr);
    assert!(!out.exists());
    assert_eq!(files_in(dir.path()), ["c.log"]);
}

/// A fake fast-mode server written here announces a SHA-256 that does not
/// match the page it sends: the client refuses the page and writes nothing.
#[test]
fn page_not_matching_the_announced_digest_is_refused() {
    use anon_proto::wire::ext::Answer;
    use anon_proto::wire::{Flags, Header, Seq};
    let dir = tempfile::tempdir().unwrap();
    let fake = UdpSocket::bind("127.0.0.1:0").unwrap();
    fake.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let port = fake.local_addr().unwrap().port();
    let (mut client, out, _) = fetch(port, dir.path(), "c", &[]);
    let mut buf = [0u8; 2048];
    let (n, from) = fake.recv_from(&mut buf).unwrap();
    let (syn, _) = Header::decode(&buf[..n]).unwrap();
    assert!(syn.flags.contains(Flags::SYN) && n > 12, "a fast-mode offer");
    let body = b"hello, page";
    let answer = Answer { segment: 1400, page_len: body.len() as u64, page_sha256: [0xab; 32] };
    let mut d = Vec::new();
    Header::new(Seq(1000), syn.seq + 1, Flags::SYN | Flags::ACK).encode(&[], &mut d);
    answer.encode(&mut d);
    fake.send_to(&d, from).unwrap();
    // The handshake ACK, then the whole page in one FIN segment.
    let (n, _) = fake.recv_from(&mut buf).unwrap();
    let (ack, _) = Header::decode(&buf[..n]).unwrap();
    assert_eq!(ack.ack, Seq(1001));
    let mut d = Vec::new();
    Header::new(Seq(1001), ack.seq + 1, Flags::ACK | Flags::FIN).encode(body, &mut d);
    fake.send_to(&d, from).unwrap();
    let status = client.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(1), "{:?}", client.stderr);
    assert!(client.stderr.iter().any(|l| l.contains("SHA-256")), "{:?}", client.stderr);
    assert!(!out.exists());
    assert!(files_in(dir.path()).iter().all(|n| !n.ends_with(".part")));
}

/// A TCP port that was free a moment ago on 127.0.0.1.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The server's counters from its metrics endpoint.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    text
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Polls the metrics endpoint until `done` holds, at most `within`: the
/// counters are state to observe, with no event to wait on.
fn wait_for_metrics(port: u16, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = scrape(port);
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "not reached within {within:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_killed_mid_transfer_is_freed_within_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::serve(page(20 << 20, 7)).unwrap();
    let metrics = free_tcp_port();
    let server = ServerProcess::start(
        Path::new(SERVER),
        &dir.path().join("server.log"),
        &origin.url(),
        &["--idle-timeout", "1", "--metrics", &format!("127.0.0.1:{metrics}")],
        READY,
    )
    .unwrap();
    // Baseline mode: slow enough to be mid-transfer when it is killed.
    let (mut client, out) = fetch_verbose(server.port, dir.path(), "c", &["--no-fast"]);
    client.wait_for_line("connected", READY).unwrap();
    client.signal("KILL").unwrap();
    let killed = Instant::now();
    let text = wait_for_metrics(metrics, Duration::from_secs(10), |t| metric(t, "anon_connections_open") == 0);
    assert_eq!(metric(&text, "anon_connections_given_up_total"), 1, "{text}");
    assert_eq!(metric(&text, "anon_connections_completed_total"), 0, "{text}");
    // Freed after the idle timeout, not before, and not much after.
    let freed = killed.elapsed();
    assert!(freed >= Duration::from_millis(900) && freed < Duration::from_secs(4), "freed after {freed:?}");
    assert!(!out.exists());
}

#[test]
fn sigterm_drains_transfers_in_flight_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let body = page(40 << 20, 8);
    let origin = Origin::serve(body.clone()).unwrap();
    let metrics = free_tcp_port();
    let server_log = dir.path().join("server.log");
    let mut server = ServerProcess::start(
        Path::new(SERVER),
        &server_log,
        &origin.url(),
        &["--grace", "60", "--metrics", &format!("127.0.0.1:{metrics}")],
        READY,
    )
    .unwrap();
    let (mut first, out) = fetch_verbose(server.port, dir.path(), "first", &["--no-fast"]);
    first.wait_for_line("connected", READY).unwrap();
    server.proc.signal("TERM").unwrap();
    wait_for_metrics(metrics, Duration::from_secs(10), |t| metric(t, "anon_draining") == 1);
    // A new client is refused while the first one finishes.
    let (mut late, late_out, late_log) = fetch(server.port, dir.path(), "late", &["--connect-timeout", "1"]);
    assert_eq!(late.wait(CLIENT_DEADLINE).unwrap().code(), Some(1), "{:?}", late.stderr);
    assert!(!late_out.exists());
    let text = scrape(metrics);
    assert!(metric(&text, "anon_syn_refused_total{limit=\"draining\"}") >= 1, "{text}");
    assert_eq!(metric(&text, "anon_connections_open"), 1, "the first transfer is still running:\n{text}");
    // The transfer in flight completes byte exact, then the server exits 0.
    assert!(first.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", first.stderr);
    assert!(std::fs::read(&out).unwrap() == body);
    assert_eq!(server.proc.wait(Duration::from_secs(10)).unwrap().code(), Some(0));
    assert!(
        server.proc.stderr.iter().any(|l| l.contains("every transfer in flight has ended")),
        "{:?}",
        server.proc.stderr
    );
    // The log is complete: every datagram either client logged has its twin.
    let server_lines = std::fs::read_to_string(&server_log).unwrap().lines().count();
    let client_lines = assert_log_format(&dir.path().join("first.log")) + assert_log_format(&late_log);
    assert_eq!(server_lines, client_lines);
}
