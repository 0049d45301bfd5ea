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

/// A baseline transfer on loopback never sleeps (the client polls its socket
/// between round trips), and Ctrl-C still stops it: before, the signal
/// waited for the end of the page, and the client exited 0.
#[test]
fn a_busy_polling_client_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::serve(page(40 << 20, 9)).unwrap();
    let server =
        ServerProcess::start(Path::new(SERVER), &dir.path().join("server.log"), &origin.url(), &[], READY).unwrap();
    let (mut client, out) = fetch_verbose(server.port, dir.path(), "c", &["--no-fast"]);
    client.wait_for_line("connected", READY).unwrap();
    client.signal("INT").unwrap();
    let status = client.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(130), "{:?}", client.stderr);
    assert!(!out.exists());
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
    // The signal and the scrapes reach a server that busy polls a
    // stop-and-wait transfer and so never sleeps.
    server.proc.signal("TERM").unwrap();
    wait_for_metrics(metrics, Duration::from_secs(10), |t| metric(t, "anon_draining") == 1);
    // Stopped, the first client keeps its transfer in flight for as long as
    // the checks below take, however fast loopback is; continued, it reads
    // the server's retransmissions queued meanwhile and carries on.
    first.signal("STOP").unwrap();
    // A new client is refused while the first one finishes.
    let (mut late, late_out, late_log) = fetch(server.port, dir.path(), "late", &["--connect-timeout", "1"]);
    assert_eq!(late.wait(CLIENT_DEADLINE).unwrap().code(), Some(1), "{:?}", late.stderr);
    assert!(!late_out.exists());
    let text = scrape(metrics);
    assert!(metric(&text, "anon_syn_refused_total{limit=\"draining\"}") >= 1, "{text}");
    assert_eq!(metric(&text, "anon_connections_open"), 1, "the first transfer is still running:\n{text}");
    // The transfer in flight completes byte exact, then the server exits 0.
    first.signal("CONT").unwrap();
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

// ---------------------------------------------------------------------------
// Secure mode (issue 11): keys, bridge lines, pages by name, and silence to
// probers, end to end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Starts a secure server on 127.0.0.1 with its key in `key` (made when
/// missing), `-w first` and `extra`; returns it with its bridge line.
fn start_secure(log: &Path, key: &Path, first: &str, extra: &[&str]) -> (ServerProcess, String) {
    let mut args = vec!["--key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(Path::new(SERVER), log, first, &args, READY).unwrap();
    let bridge = bridge_of(&server);
    (server, bridge)
}

/// The bridge line the server logged before its "serving" line.
fn bridge_of(server: &ServerProcess) -> String {
    server.proc.bridge_line().unwrap_or_else(|| panic!("no bridge line: {:?}", server.proc.stderr))
}

/// A secure client with `--bridge`; `env` adds to its environment.
fn secure_client(
    bridge: &str,
    dir: &Path,
    name: &str,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> (Proc, PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(CLIENT);
    cmd.args(["--bridge", bridge, "-l"]).arg(&log).arg("-f").arg(&out).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    (Proc::spawn(&mut cmd).unwrap(), out, log)
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs a short command to its end (bounded) and returns its status,
/// standard output and standard error.
fn run_to_end(cmd: &mut Command, within: Duration) -> (Option<i32>, String, String) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    // Both pipes closing is the event: the program has exited.
    let result = rx.recv_timeout(within);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let (o, e) = result.expect("the command did not end in time");
    (status.code(), o, e)
}

/// A UDP relay between one client and the server that records the client's
/// first datagram and counts the datagrams each way.
struct Relay {
    port: u16,
    first: Arc<Mutex<Option<Vec<u8>>>>,
    to_server: Arc<AtomicU64>,
    from_server: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(server).unwrap();
        // Short read timeouts only let the threads see the stop flag.
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let port = front.local_addr().unwrap().port();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let first: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let (to_server, from_server, stop) =
            (Arc::<AtomicU64>::default(), Arc::<AtomicU64>::default(), Arc::<AtomicBool>::default());
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let up = {
            let (client, first, count, stop) =
                (Arc::clone(&client), Arc::clone(&first), Arc::clone(&to_server), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else { continue };
                    *client.lock().unwrap() = Some(from);
                    first.lock().unwrap().get_or_insert_with(|| buf[..n].to_vec());
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = back.send(&buf[..n]);
                }
            })
        };
        let down = {
            let (client, count, stop) = (Arc::clone(&client), Arc::clone(&from_server), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = back2.recv(&mut buf) else { continue };
                    count.fetch_add(1, Ordering::Relaxed);
                    if let Some(to) = *client.lock().unwrap() {
                        let _ = front2.send_to(&buf[..n], to);
                    }
                }
            })
        };
        Relay { port, first, to_server, from_server, stop, threads: vec![up, down] }
    }

    fn first(&self) -> Vec<u8> {
        self.first.lock().unwrap().clone().expect("the client sent nothing")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends `datagram` to the server from a fresh socket and returns whatever
/// comes back within `within` (nothing, for a silent server).
fn probe(port: u16, datagram: &[u8], within: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(datagram, ("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = vec![0u8; 65_536];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(e) => {
            assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}");
            None
        }
    }
}

fn has_syn_line(log: &Path, dir: &str) -> bool {
    std::fs::read_to_string(log).unwrap().lines().any(|l| l.starts_with(dir) && l.ends_with(" SYN"))
}

/// The bridge line fetches byte exact; pages by name; an unknown name is a
/// refusal (exit 6, no file); the key file is made 0600; ANON_KEYLOG gets a
/// line; the packet logs show the inner headers.
#[test]
fn secure_fetch_by_bridge_line_named_pages_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (body, other) = (page(2 << 20, 9), page(70_000, 10));
    let (origin, origin2) = (Origin::serve(body.clone()).unwrap(), Origin::serve(other.clone()).unwrap());
    let key = dir.path().join("server.key");
    let server_log = dir.path().join("server.log");
    let metrics = free_tcp_port();
    let second = format!("other={}", origin2.url());
    let (mut server, bridge) = start_secure(
        &server_log,
        &key,
        &format!("main={}", origin.url()),
        &["-w", &second, "--metrics", &format!("127.0.0.1:{metrics}")],
    );
    // Made with mode 0600; the bridge line names the bound address and port.
    #[cfg(unix)]
    assert_eq!(mode_of(&key), 0o600);
    assert!(bridge.starts_with("anon://") && bridge.ends_with(&format!("@127.0.0.1:{}", server.port)), "{bridge}");
    assert!(!server.proc.stderr.iter().any(|l| l.contains("warning")), "{:?}", server.proc.stderr);

    let keylog = dir.path().join("keys.log");
    let (mut c, out, log) = secure_client(&bridge, dir.path(), "default", &[], &[("ANON_KEYLOG", &keylog)]);
    assert!(c.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", c.stderr);
    assert!(std::fs::read(&out).unwrap() == body, "the default page differs");
    let client_lines = assert_log_format(&log);
    // The log shows the inner exchange: the SYN, then page segments.
    assert!(has_syn_line(&log, "SEND"), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(client_lines >= body.len() / 1160, "{client_lines} lines");
    let text = std::fs::read_to_string(&keylog).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("ANON_SECURE ") && text.split(' ').count() == 7, "{text}");
    #[cfg(unix)]
    assert_eq!(mode_of(&keylog), 0o600);

    let (mut c, out, _) = secure_client(&bridge, dir.path(), "named", &["--page", "other", "-q"], &[]);
    assert!(c.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", c.stderr);
    assert!(std::fs::read(&out).unwrap() == other, "the named page differs");
    assert!(c.stderr.is_empty(), "-q: {:?}", c.stderr);

    // The key by flag, the server by -s and -p.
    let key_b64 = bridge.strip_prefix("anon://").unwrap().split('@').next().unwrap();
    let (mut c, out, _) = fetch(server.port, dir.path(), "by-key", &["--server-key", key_b64, "--page", "other"]);
    assert!(c.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", c.stderr);
    assert!(std::fs::read(&out).unwrap() == other);

    let (mut c, out, _) = secure_client(&bridge, dir.path(), "unknown", &["--page", "nope"], &[]);
    let status = c.wait(CLIENT_DEADLINE).unwrap();
    assert_eq!(status.code(), Some(6), "{:?}", c.stderr);
    assert_eq!(c.stderr.len(), 1, "one line: {:?}", c.stderr);
    assert!(c.stderr[0].contains("refused") && c.stderr[0].contains("\"nope\""), "{:?}", c.stderr);
    assert!(!out.exists());
    assert!(files_in(dir.path()).iter().all(|n| !n.ends_with(".part")));

    let text = scrape(metrics);
    assert_eq!(metric(&text, "anon_secure_handshakes_total"), 3, "refusals are counted apart:\n{text}");
    assert_eq!(metric(&text, "anon_secure_requests_rejected_total"), 1, "{text}");
    assert_eq!(metric(&text, "anon_secure_handshakes_confirmed_total"), 3, "{text}");
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
    let stopped = server.proc.stderr.iter().find(|l| l.contains("stopped")).unwrap();
    assert!(stopped.contains("completed=3") && stopped.contains("secure_rejected=1"), "{stopped}");
    // The server logged the inner SYN it received and every datagram.
    assert!(has_syn_line(&server_log, "RECV"));
    let server_lines = assert_log_format(&server_log);
    assert!(server_lines >= client_lines, "{server_lines} vs {client_lines}");
}

/// keygen writes a 0600 file and prints its public key, refuses to
/// overwrite without --force; a key file readable by others gets a warning,
/// and the server's bridge line carries the key's public half.
#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let keygen = |extra: &[&str]| run_to_end(Command::new(SERVER).arg("keygen").arg(&key).args(extra), READY);
    let (code, public, stderr) = keygen(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let public = public.trim().to_owned();
    assert_eq!(public.len(), 43, "{public:?}");
    assert!(stderr.contains("wrote a new private key"), "{stderr}");
    #[cfg(unix)]
    assert_eq!(mode_of(&key), 0o600);
    let text = std::fs::read_to_string(&key).unwrap();

    let (code, out, stderr) = keygen(&[]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(out.is_empty() && stderr.contains("exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text, "not overwritten");
    let (code, again, stderr) = keygen(&["--force"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_ne!(again.trim(), public);
    let public = again.trim().to_owned();

    // The same key, readable by everyone: the server warns and uses it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let origin = Origin::serve(b"x".to_vec()).unwrap();
    let (mut server, bridge) = start_secure(&dir.path().join("log"), &key, &origin.url(), &[]);
    assert!(bridge.starts_with(&format!("anon://{public}@")), "{bridge} vs {public}");
    #[cfg(unix)]
    assert!(
        server.proc.stderr.iter().any(|l| l.contains("WARN") && l.contains("open to others")),
        "{:?}",
        server.proc.stderr
    );
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());

    // Several pages need secure mode.
    let (code, stderr, _) =
        run_server(&["-p", "1", "-l", dir.path().join("l").to_str().unwrap(), "-w", "a", "-w", "b"]);
    assert_eq!(code, Some(2), "{stderr:?}");
}

/// With --allow-clients, an unlisted client gets nothing at all (it times
/// out; the relay saw no datagram from the server, the server logged
/// nothing), and a listed one is served.
#[test]
fn unlisted_client_gets_silence() {
    let dir = tempfile::tempdir().unwrap();
    let body = page(50_000, 11);
    let origin = Origin::serve(body.clone()).unwrap();
    let (listed, unlisted) = (dir.path().join("listed.key"), dir.path().join("unlisted.key"));
    let mut public = String::new();
    for k in [&listed, &unlisted] {
        let (code, out, err) = run_to_end(Command::new(SERVER).arg("keygen").arg(k), READY);
        assert_eq!(code, Some(0), "{err}");
        if public.is_empty() {
            public = out.trim().to_owned();
        }
    }
    let allow = dir.path().join("allow");
    std::fs::write(&allow, format!("# the one client\n{public} alice\n")).unwrap();
    let server_log = dir.path().join("server.log");
    let metrics = free_tcp_port();
    let (mut server, bridge) = start_secure(
        &server_log,
        &dir.path().join("server.key"),
        &origin.url(),
        &["--allow-clients", allow.to_str().unwrap(), "--metrics", &format!("127.0.0.1:{metrics}")],
    );
    let relay = Relay::start(([127, 0, 0, 1], server.port).into());
    let via_relay = bridge.replace(&format!(":{}", server.port), &format!(":{}", relay.port));
    for (name, extra) in [("fresh", &[][..]), ("unlisted", &["--key", unlisted.to_str().unwrap()][..])] {
        let mut args = vec!["--connect-timeout", "1.5"];
        args.extend_from_slice(extra);
        let (mut c, out, _) = secure_client(&via_relay, dir.path(), name, &args, &[]);
        assert_eq!(c.wait(CLIENT_DEADLINE).unwrap().code(), Some(1), "{:?}", c.stderr);
        assert!(c.stderr.iter().any(|l| l.contains("no answer from the server")), "{:?}", c.stderr);
        assert!(!out.exists());
    }
    assert!(relay.to_server.load(Ordering::Relaxed) >= 4, "the clients sent their first messages");
    assert_eq!(relay.from_server.load(Ordering::Relaxed), 0, "the server answered an unlisted client");
    let text = scrape(metrics);
    assert!(metric(&text, "anon_secure_handshakes_ignored_total{reason=\"unlisted_client\"}") >= 4, "{text}");

    let (mut c, out, log) = secure_client(&bridge, dir.path(), "listed", &["--key", listed.to_str().unwrap()], &[]);
    assert!(c.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", c.stderr);
    assert!(std::fs::read(&out).unwrap() == body);
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
    // The log is complete once the server has exited: the listed client's
    // datagrams, and nothing of the unlisted ones (no header to show).
    assert_eq!(assert_log_format(&server_log), assert_log_format(&log));
}

/// Probes get silence: random bytes, a plaintext client (plaintext off),
/// and a real client's first datagram replayed from another socket, as
/// well as bit-flipped and truncated copies of it.
#[test]
fn probes_get_silence() {
    let dir = tempfile::tempdir().unwrap();
    let body = page(100_000, 12);
    let origin = Origin::serve(body.clone()).unwrap();
    let metrics = free_tcp_port();
    let server_log = dir.path().join("server.log");
    let (mut server, bridge) = start_secure(
        &server_log,
        &dir.path().join("server.key"),
        &origin.url(),
        &["--metrics", &format!("127.0.0.1:{metrics}")],
    );
    let port = server.port;
    let quiet = Duration::from_millis(500);

    // Random bytes of many lengths, from one socket, then a wait.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let len = 1 + (next() % 1400) as usize;
        let d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        s.send_to(&d, ("127.0.0.1", port)).unwrap();
    }
    s.set_read_timeout(Some(quiet)).unwrap();
    assert!(s.recv_from(&mut [0u8; 2048]).is_err(), "random bytes were answered");

    // A plaintext client: its SYNs (fast-mode offer, then nothing else:
    // the fallback needs an answer) get nothing.
    let relay = Relay::start(([127, 0, 0, 1], port).into());
    let (mut c, out, _) = fetch(relay.port, dir.path(), "plain", &["--connect-timeout", "1.5"]);
    assert_eq!(c.wait(CLIENT_DEADLINE).unwrap().code(), Some(1), "{:?}", c.stderr);
    assert!(!out.exists());
    assert!(relay.to_server.load(Ordering::Relaxed) >= 2);
    assert_eq!(relay.from_server.load(Ordering::Relaxed), 0, "a plaintext SYN was answered");
    drop(relay);

    // A real secure client through a relay that keeps its first datagram.
    let relay = Relay::start(([127, 0, 0, 1], port).into());
    let via_relay = bridge.replace(&format!(":{port}"), &format!(":{}", relay.port));
    let (mut c, out, real_log) = secure_client(&via_relay, dir.path(), "real", &[], &[]);
    assert!(c.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", c.stderr);
    assert!(std::fs::read(&out).unwrap() == body);
    let first = relay.first();
    drop(relay);
    assert_eq!(probe(port, &first, quiet), None, "the replayed first datagram was answered");
    let mut flipped = first.clone();
    for i in [0, 30, first.len() / 2, first.len() - 1] {
        flipped[i] ^= 0x40;
        assert_eq!(probe(port, &flipped, quiet), None, "a bit-flipped first datagram (byte {i}) was answered");
        flipped[i] ^= 0x40;
    }
    assert_eq!(probe(port, &first[..first.len() - 1], quiet), None, "a truncated first datagram was answered");

    let text = scrape(metrics);
    assert!(metric(&text, "anon_secure_handshakes_ignored_total{reason=\"replayed\"}") >= 1, "{text}");
    assert!(metric(&text, "anon_secure_datagrams_dropped_total{reason=\"not_ours\"}") >= 300, "{text}");
    assert_eq!(metric(&text, "anon_secure_handshakes_total"), 1, "only the real client was answered:\n{text}");
    assert!(metric(&text, "anon_log_lines_dropped_total{reason=\"opaque\"}") >= 300, "{text}");
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
    // The probes left no line in the log: it holds the real client's
    // exchange, line for line.
    assert_eq!(assert_log_format(&server_log), assert_log_format(&real_log));
}

/// Under load (`--handshake-rate 5`: a burst of one read, then cookies),
/// clients that start together all get their page: those beyond the
/// budget get a cookie reply and send their first message again with it
/// (docs/PROTOCOL.md §8.3, rule 1), and the metrics count the replies.
#[test]
fn secure_clients_beyond_the_read_budget_get_in_with_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let body = page(50_000, 12);
    let origin = Origin::serve(body.clone()).unwrap();
    let key = dir.path().join("server.key");
    let metrics = free_tcp_port();
    let (mut server, bridge) = start_secure(
        &dir.path().join("server.log"),
        &key,
        &origin.url(),
        &["--handshake-rate", "5", "--metrics", &format!("127.0.0.1:{metrics}")],
    );
    let clients: Vec<_> = (0..6).map(|i| secure_client(&bridge, dir.path(), &format!("c{i}"), &["-q"], &[])).collect();
    for (mut c, out, _) in clients {
        assert!(c.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", c.stderr);
        assert!(std::fs::read(&out).unwrap() == body, "a page differs");
    }
    let text = scrape(metrics);
    assert_eq!(metric(&text, "anon_secure_handshakes_confirmed_total"), 6, "{text}");
    assert!(metric(&text, "anon_secure_cookie_replies_total") >= 1, "no client needed a cookie:\n{text}");
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
}

/// With --plaintext, plaintext clients (both modes) fetch the first page
/// from a secure server, and secure clients still fetch by name.
#[test]
fn plaintext_beside_secure_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (body, other) = (page(200_000, 13), page(3_000, 14));
    let (origin, origin2) = (Origin::serve(body.clone()).unwrap(), Origin::serve(other.clone()).unwrap());
    let server_log = dir.path().join("server.log");
    let second = format!("b={}", origin2.url());
    let (mut server, bridge) =
        start_secure(&server_log, &dir.path().join("k"), &origin.url(), &["-w", &second, "--plaintext"]);
    let (mut fast, fast_out, fast_log) = fetch(server.port, dir.path(), "fast", &[]);
    let (mut base, base_out, base_log) = fetch(server.port, dir.path(), "base", &["--no-fast"]);
    let (mut sec, sec_out, sec_log) = secure_client(&bridge, dir.path(), "secure", &["--page", "b"], &[]);
    for c in [&mut fast, &mut base, &mut sec] {
        assert!(c.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", c.stderr);
    }
    assert!(std::fs::read(&fast_out).unwrap() == body);
    assert!(std::fs::read(&base_out).unwrap() == body);
    assert!(std::fs::read(&sec_out).unwrap() == other);
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
    let client_lines = assert_log_format(&fast_log) + assert_log_format(&base_log) + assert_log_format(&sec_log);
    let server_lines = assert_log_format(&server_log);
    // Loopback loses nothing: each side logged each datagram.
    assert_eq!(server_lines, client_lines);
    let stopped = server.proc.stderr.iter().find(|l| l.contains("stopped")).unwrap();
    assert!(stopped.contains("completed=3"), "{stopped}");
}
