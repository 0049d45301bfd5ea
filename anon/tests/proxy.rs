//! The proxy end to end (docs/PROTOCOL.md §9): real binaries on loopback, a
//! secure server with --fetch-allow, and a local origin the test starts,
//! which records every request it gets. Every wait is bounded.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anon_tools::origin::RecordingOrigin;
use anon_tools::process::{Proc, ServerProcess};

const SERVER: &str = env!("CARGO_BIN_EXE_anonserver");
const CLIENT: &str = env!("CARGO_BIN_EXE_anonclient");
const READY: Duration = Duration::from_secs(30);
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

fn page(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
}

/// A local origin with a few behaviours, by path, that records every
/// request it gets.
struct TestOrigin {
    origin: RecordingOrigin,
}

impl TestOrigin {
    fn start(fresh: Vec<u8>, revalidated: Vec<u8>) -> TestOrigin {
        let origin = RecordingOrigin::start(move |req| {
            let inm = req.header("If-None-Match");
            let h = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap();
            let response = match req.path.as_str() {
                "/page.html" => tiny_http::Response::from_data(fresh.clone())
                    .with_header(h("Content-Type", "text/html; charset=utf-8"))
                    .with_header(h("Cache-Control", "max-age=600")),
                // Not cacheable: clients that overlap share the fetch
                // itself, not a cached copy.
                "/slow.html" => {
                    std::thread::sleep(Duration::from_millis(800));
                    tiny_http::Response::from_data(fresh.clone()).with_header(h("Cache-Control", "no-store"))
                }
                "/old" => tiny_http::Response::from_data(Vec::new())
                    .with_status_code(302)
                    .with_header(h("Location", "/page.html")),
                "/away" => tiny_http::Response::from_data(Vec::new())
                    .with_status_code(302)
                    .with_header(h("Location", "http://localhost:1/elsewhere")),
                "/etag.html" if inm == Some("\"v1\"") => {
                    tiny_http::Response::from_data(Vec::new()).with_status_code(304).with_header(h("ETag", "\"v1\""))
                }
                "/etag.html" => tiny_http::Response::from_data(revalidated.clone())
                    .with_header(h("Cache-Control", "no-cache"))
                    .with_header(h("ETag", "\"v1\"")),
                "/big" => tiny_http::Response::from_data(vec![7u8; 3 << 20]),
                _ => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
            };
            response.boxed()
        })
        .unwrap();
        TestOrigin { origin }
    }

    fn base(&self) -> &str {
        self.origin.base()
    }

    fn url(&self, path: &str) -> String {
        self.origin.url(path)
    }

    /// How many requests for `path` the origin got, and the If-None-Match
    /// of the last.
    fn requests(&self, path: &str) -> (usize, Option<String>) {
        let seen = self.origin.seen();
        let of: Vec<_> = seen.iter().filter(|r| r.path == path).collect();
        (of.len(), of.last().and_then(|r| r.header("If-None-Match").map(str::to_owned)))
    }
}

/// A proxy server: its own page is a local file; `extra` adds flags.
fn start_proxy(dir: &Path, extra: &[&str]) -> (ServerProcess, String) {
    let key = dir.join("server.key");
    let own = dir.join("own.html");
    std::fs::write(&own, b"the server's own page").unwrap();
    let mut args = vec!["--key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    let log = dir.join("server.log");
    let server = ServerProcess::start(Path::new(SERVER), &log, own.to_str().unwrap(), &args, READY).unwrap();
    let bridge = server.proc.bridge_line().unwrap_or_else(|| panic!("no bridge line: {:?}", server.proc.stderr));
    (server, bridge)
}

/// Starts a client asking for `url`; returns it with its output path.
fn ask(bridge: &str, dir: &Path, name: &str, url: &str, extra: &[&str]) -> (Proc, PathBuf) {
    let out = dir.join(format!("{name}.out"));
    let mut cmd = Command::new(CLIENT);
    cmd.args(["--bridge", bridge, "--url", url, "-q", "-l"])
        .arg(dir.join(format!("{name}.log")))
        .arg("-f")
        .arg(&out)
        .args(extra);
    (Proc::spawn(&mut cmd).unwrap(), out)
}

/// Runs a client for `url` to its end: exit code, output (if written),
/// standard error.
fn fetch(
    bridge: &str,
    dir: &Path,
    name: &str,
    url: &str,
    extra: &[&str],
) -> (Option<i32>, Option<Vec<u8>>, Vec<String>) {
    let (mut c, out) = ask(bridge, dir, name, url, extra);
    let status = c.wait(CLIENT_DEADLINE).unwrap();
    (status.code(), std::fs::read(&out).ok(), c.stderr.clone())
}

#[test]
fn pages_on_demand_cached_shared_revalidated_and_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let (fresh, revalidated) = (page(300_000, 1), page(50_000, 2));
    let origin = TestOrigin::start(fresh.clone(), revalidated.clone());
    let allow = format!("{}/*", origin.base());
    let (mut server, bridge) =
        start_proxy(dir.path(), &["--fetch-allow", &allow, "--fetch-private", "--fetch-max-size", "1"]);
    let d = dir.path();

    // A redirect is followed; --headers says where it ended and what it is.
    let headers = d.join("old.headers");
    let (code, out, err) = fetch(&bridge, d, "old", &origin.url("/old"), &["--headers", headers.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err:?}");
    assert!(out.unwrap() == fresh, "the page differs");
    let h = std::fs::read_to_string(&headers).unwrap();
    assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
    assert!(h.contains("Content-Type: text/html; charset=utf-8\r\n"), "{h}");
    assert!(h.contains(&format!("Content-Length: {}\r\n", fresh.len())), "{h}");
    assert!(h.contains(&format!("Content-Location: {}\r\n", origin.url("/page.html"))), "{h}");

    // Fresh in the cache: the second client costs the origin nothing.
    for name in ["first", "second"] {
        let (code, out, err) = fetch(&bridge, d, name, &origin.url("/page.html"), &[]);
        assert_eq!(code, Some(0), "{name}: {err:?}");
        assert!(out.unwrap() == fresh, "{name}: the page differs");
    }
    assert_eq!(origin.requests("/page.html").0, 2, "one through the redirect, one for the URL itself");

    // Four clients at once for a page not yet cached: one origin fetch.
    let clients: Vec<_> =
        (0..4).map(|i| ask(&bridge, d, &format!("crowd{i}"), &origin.url("/slow.html"), &[])).collect();
    for (mut c, out) in clients {
        assert!(c.wait(CLIENT_DEADLINE).unwrap().success(), "{:?}", c.stderr);
        assert!(std::fs::read(&out).unwrap() == fresh);
    }
    assert_eq!(origin.requests("/slow.html").0, 1, "concurrent requests share one fetch");
    let (code, _, err) = fetch(&bridge, d, "crowd-later", &origin.url("/slow.html"), &[]);
    assert_eq!(code, Some(0), "{err:?}");
    assert_eq!(origin.requests("/slow.html").0, 2, "no-store: a later request fetches again");

    // no-cache with an ETag: stored, revalidated on the next request (304),
    // served from the cache.
    for name in ["etag1", "etag2"] {
        let (code, out, err) = fetch(&bridge, d, name, &origin.url("/etag.html"), &[]);
        assert_eq!(code, Some(0), "{name}: {err:?}");
        assert!(out.unwrap() == revalidated, "{name}");
    }
    assert_eq!(origin.requests("/etag.html"), (2, Some("\"v1\"".into())), "a conditional request the second time");

    // Failures: a reason, a documented status, no file.
    let cases = [
        ("missing", origin.url("/missing"), 4, "HTTP 404"),
        ("big", origin.url("/big"), 4, "larger"),
        ("unlisted", "http://127.0.0.2:9/x".to_owned(), 6, "not allowed"),
        ("redirected-away", origin.url("/away"), 6, "not allowed"),
    ];
    for (name, url, want, says) in cases {
        let (code, out, err) = fetch(&bridge, d, name, &url, &[]);
        assert_eq!(code, Some(want), "{name}: {err:?}");
        assert!(out.is_none(), "{name}: a file was written");
        assert_eq!(err.len(), 1, "{name}: one line: {err:?}");
        assert!(err[0].contains(says), "{name}: {err:?}");
    }
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
    let fetched: Vec<&String> = server.proc.stderr.iter().filter(|l| l.contains("fetched ")).collect();
    assert_eq!(fetched.len(), 5, "{:?}", server.proc.stderr);
    assert!(fetched.iter().any(|l| l.contains("/slow.html") && l.contains("for 4 client(s)")), "{fetched:?}");
}

#[test]
fn private_origins_are_refused_unless_allowed_and_plaintext_clients_cannot_ask() {
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::start(page(1000, 3), Vec::new());
    let allow = format!("{}/*", origin.base());
    // The pattern allows the origin, but it is on loopback.
    let (mut server, bridge) = start_proxy(dir.path(), &["--fetch-allow", &allow]);
    let (code, out, err) = fetch(&bridge, dir.path(), "private", &origin.url("/page.html"), &[]);
    assert_eq!(code, Some(6), "{err:?}");
    assert!(out.is_none() && err[0].contains("not allowed"), "{err:?}");
    assert_eq!(origin.requests("/page.html").0, 0, "the origin was never asked");
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());

    // A proxy without a page of its own: URLs only; a page name is refused.
    let dir2 = tempfile::tempdir().unwrap();
    let key = dir2.path().join("k");
    let port = anon_tools::process::free_udp_port().unwrap();
    let mut cmd = Command::new(SERVER);
    cmd.args(["-p", &port.to_string(), "--bind", "127.0.0.1", "-l"])
        .arg(dir2.path().join("s.log"))
        .args(["--key", key.to_str().unwrap(), "--fetch-allow", &allow, "--fetch-private"])
        .env("RUST_LOG", "info");
    let mut server = Proc::spawn(&mut cmd).unwrap();
    server.wait_for_line("serving", READY).unwrap();
    let bridge = server.bridge_line().unwrap();
    let (code, out, err) = fetch(&bridge, dir2.path(), "only", &origin.url("/page.html"), &[]);
    assert_eq!(code, Some(0), "{err:?}");
    assert!(out.unwrap() == page(1000, 3));
    let mut cmd = Command::new(CLIENT);
    cmd.args(["--bridge", &bridge, "-q", "-l"]).arg(dir2.path().join("c.log")).arg("-f").arg(dir2.path().join("c.out"));
    let mut c = Proc::spawn(&mut cmd).unwrap();
    assert_eq!(c.wait(CLIENT_DEADLINE).unwrap().code(), Some(6), "no default page: {:?}", c.stderr);
    server.signal("TERM").unwrap();
    assert!(server.wait(Duration::from_secs(10)).unwrap().success());

    // --url needs secure mode; --fetch-allow needs --key.
    let mut cmd = Command::new(CLIENT);
    cmd.args(["-s", "127.0.0.1", "-p", "9", "-l", "/dev/null", "-f", "x", "--url", "http://a.b/"]);
    assert_eq!(cmd.output().unwrap().status.code(), Some(2));
    let mut cmd = Command::new(SERVER);
    cmd.args(["-p", "9", "-l", "/dev/null", "--fetch-allow", "http://*/*"]);
    assert_eq!(cmd.output().unwrap().status.code(), Some(2));
}

/// A UDP relay in front of the server that forwards the server's datagrams
/// only while its budget lasts (negative: without limit), so a test can cut
/// a transfer partway, then let the next one through.
struct Relay {
    port: u16,
    budget: Arc<std::sync::atomic::AtomicI64>,
    forwarded: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(server_port: u16, budget: i64) -> Relay {
        use std::sync::atomic::Ordering::Relaxed;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let server: std::net::SocketAddr = ([127, 0, 0, 1], server_port).into();
        let budget = Arc::new(std::sync::atomic::AtomicI64::new(budget));
        let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (budget, forwarded, stop) = (Arc::clone(&budget), Arc::clone(&forwarded), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut client = None;
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    if from != server {
                        client = Some(from);
                        let _ = socket.send_to(&buf[..n], server);
                    } else if let Some(c) = client {
                        let left = budget.load(Relaxed);
                        if left != 0 {
                            if left > 0 {
                                budget.store(left - 1, Relaxed);
                            }
                            forwarded.fetch_add(1, Relaxed);
                            let _ = socket.send_to(&buf[..n], c);
                        }
                    }
                }
            })
        };
        Relay { port, budget, forwarded, stop, thread: Some(thread) }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `--continue`: a transfer cut partway keeps what it has beside OUTFILE
/// (no OUTFILE); the next run asks for the rest only, and ends with the
/// whole page verified and the partial files gone.
#[test]
fn an_interrupted_transfer_resumes_with_continue() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let body = page(8 << 20, 5);
    let origin = TestOrigin::start(body.clone(), Vec::new());
    let allow = format!("{}/*", origin.base());
    // The cut connection is still open at the end (its client went away):
    // a short grace.
    let (mut server, bridge) = start_proxy(dir.path(), &["--fetch-allow", &allow, "--fetch-private", "--grace", "1"]);
    let key = bridge.strip_prefix("anon://").unwrap().split('@').next().unwrap().to_owned();
    // About a third of the page's datagrams (8 MiB in 1,160-byte segments).
    let relay = Relay::start(server.port, 2_500);
    let out = dir.path().join("big.out");
    let run = |name: &str| {
        let mut cmd = Command::new(CLIENT);
        cmd.args(["--server-key", &key, "-s", "127.0.0.1", "-p", &relay.port.to_string()])
            .args(["--url", &origin.url("/page.html"), "--continue", "--timeout", "1", "-l"])
            .arg(dir.path().join(format!("{name}.log")))
            .arg("-f")
            .arg(&out);
        let mut c = Proc::spawn(&mut cmd).unwrap();
        let status = c.wait(CLIENT_DEADLINE).unwrap();
        (status.code(), c.stderr.clone())
    };
    let (code, err) = run("cut");
    assert_eq!(code, Some(1), "the server went silent: {err:?}");
    assert!(!out.exists(), "no OUTFILE for an unfinished page");
    let partial = dir.path().join(".big.out.anon-partial");
    let kept = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(kept > 1 << 20 && kept < body.len() as u64, "kept {kept} bytes: {err:?}");
    assert!(body.starts_with(&std::fs::read(&partial).unwrap()), "the partial file is the page's start");

    relay.budget.store(-1, Relaxed);
    relay.forwarded.store(0, Relaxed);
    let (code, err) = run("rest");
    assert_eq!(code, Some(0), "{err:?}");
    assert!(std::fs::read(&out).unwrap() == body, "the whole page, verified");
    // From the last resume point in what was kept.
    let have = kept - kept % anon_proto::page::CHECKPOINT;
    assert!(err.iter().any(|l| l.contains(&format!("resuming: {have} "))), "{err:?}");
    let rest_datagrams = (body.len() as u64 - have).div_ceil(1160);
    let sent = relay.forwarded.load(Relaxed);
    assert!(sent < rest_datagrams + 600, "{sent} datagrams for {rest_datagrams} of the rest: the whole page again?");
    assert!(!partial.exists() && !dir.path().join(".big.out.anon-partial.meta").exists(), "partial files left");
    drop(relay);
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
}

/// The origin's body in two halves: the second only once the test says so
/// (30 s at most), so the test can see the client has the first half while
/// the origin still sends.
struct Gated {
    body: Vec<u8>,
    at: usize,
    half: usize,
    release: Option<std::sync::mpsc::Receiver<()>>,
}

impl std::io::Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.half {
            if let Some(rx) = self.release.take() {
                let _ = rx.recv_timeout(Duration::from_secs(30));
            }
        }
        let end = if self.at < self.half { self.half } else { self.body.len() };
        let n = buf.len().min(end - self.at);
        buf[..n].copy_from_slice(&self.body[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A page not yet cached streams (docs/PROTOCOL.md §9.7): the client
/// writes its first bytes while the origin has sent only half, and the
/// file appears, verified, once the rest is in.
#[test]
fn a_page_streams_to_the_client_while_the_origin_still_sends_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let body = page(4 << 20, 9);
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some(gate));
    let served = body.clone();
    let origin = RecordingOrigin::start(move |_| {
        let reader =
            Gated { body: served.clone(), at: 0, half: served.len() / 2, release: gate.lock().unwrap().take() };
        let ct = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/octet-stream"[..]).unwrap();
        tiny_http::Response::new(200.into(), vec![ct], reader, Some(served.len()), None).boxed()
    })
    .unwrap();
    let allow = format!("{}/*", origin.base());
    let (mut server, bridge) = start_proxy(d, &["--fetch-allow", &allow, "--fetch-private"]);
    let headers = d.join("s.headers");
    let (mut client, out) = ask(&bridge, d, "s", &origin.url("/big.bin"), &["--headers", headers.to_str().unwrap()]);

    // The client's temporary file (.s.out.XXXX.part) grows past a megabyte
    // while the origin holds the second half back.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let written = || {
        std::fs::read_dir(d)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".s.out."))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    while written() < 1 << 20 {
        assert!(std::time::Instant::now() < deadline, "the client got no page bytes while the origin sent half");
        assert!(client.exited_at().is_none(), "the client ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!out.exists(), "OUTFILE before the page is complete and verified");
    release.send(()).unwrap();
    let status = client.wait(CLIENT_DEADLINE).unwrap();
    assert_eq!(status.code(), Some(0), "{:?}", client.stderr);
    assert!(std::fs::read(&out).unwrap() == body, "the page differs");
    let h = std::fs::read_to_string(&headers).unwrap();
    assert!(h.starts_with("HTTP/1.1 200 OK\r\n") && h.contains("Content-Type: application/octet-stream\r\n"), "{h}");
    assert!(server.stop(Duration::from_secs(10)).unwrap().success());
}
