//! `anonclient --serve` end to end: real binaries on loopback, a local
//! origin the test starts (which records every request and its
//! User-Agent), and, when installed, headless Chromium loading pages
//! through the front end. Every wait is bounded; every process is killed
//! at the end.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anon_tools::origin::RecordingOrigin;
use anon_tools::process::{Proc, ServerProcess};

const SERVER: &str = env!("CARGO_BIN_EXE_anonserver");
const CLIENT: &str = env!("CARGO_BIN_EXE_anonclient");
const READY: Duration = Duration::from_secs(30);
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);
const HTTP_DEADLINE: Duration = Duration::from_secs(60);

const ONE: &str = r#"<!DOCTYPE html><html><head><title>one</title></head>
<body style="margin:0;background:#fff"><p><a id="next" href="/two.html">the second page</a></p>
<img id="red" src="/red.png" width="300" height="300"></body></html>"#;
const TWO: &str = "<!DOCTYPE html><html><body><p id=\"two\">This is the second page.</p></body></html>";

/// A solid red 32×32 PNG.
fn red_png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 32, 32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[255, 0, 0].repeat(32 * 32)).unwrap();
    writer.finish().unwrap();
    out
}

/// The origin of the pages, which records every request it gets.
struct Origin(RecordingOrigin);

impl Origin {
    fn start() -> Origin {
        let png = red_png();
        let origin = RecordingOrigin::start(move |req| {
            let ct = |v: &str| tiny_http::Header::from_bytes(&b"Content-Type"[..], v.as_bytes()).unwrap();
            let response =
                match req.path.as_str() {
                    "/one.html" => tiny_http::Response::from_data(ONE.as_bytes().to_vec())
                        .with_header(ct("text/html; charset=utf-8")),
                    "/two.html" => tiny_http::Response::from_data(TWO.as_bytes().to_vec())
                        .with_header(ct("text/html; charset=utf-8")),
                    "/red.png" => tiny_http::Response::from_data(png.clone()).with_header(ct("image/png")),
                    _ => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
                };
            response.boxed()
        })
        .unwrap();
        Origin(origin)
    }

    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    /// Every request: its path and User-Agent.
    fn seen(&self) -> Vec<(String, String)> {
        self.0
            .seen()
            .into_iter()
            .map(|r| (r.path.clone(), r.header("User-Agent").unwrap_or_default().to_owned()))
            .collect()
    }
}

/// A proxy server for the origin, and a front end in front of it.
struct Setup {
    server: ServerProcess,
    client: Proc,
    front: String,
}

fn start(dir: &Path, origin: &Origin) -> Setup {
    let own = dir.join("own.html");
    std::fs::write(&own, b"the server's own page").unwrap();
    let key = dir.join("server.key");
    let allow = format!("{}/*", origin.0.base());
    let server = ServerProcess::start(
        Path::new(SERVER),
        &dir.join("server.log"),
        own.to_str().unwrap(),
        &["--key", key.to_str().unwrap(), "--fetch-allow", &allow, "--fetch-private"],
        READY,
    )
    .unwrap();
    let bridge = server.proc.bridge_line().unwrap_or_else(|| panic!("no bridge line: {:?}", server.proc.stderr));
    // A TCP port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(CLIENT);
    cmd.args(["--bridge", &bridge, "--serve", &listen, "-l"]).arg(dir.join("client.log"));
    let mut client = Proc::spawn(&mut cmd).unwrap();
    let line = client.wait_for_line("front end on", READY).unwrap();
    assert!(line.contains(&format!("http://{listen}/")) && line.contains("loopback"), "{line}");
    Setup { server, client, front: format!("http://{listen}") }
}

impl Setup {
    fn stop(mut self) {
        self.client.signal("TERM").unwrap();
        assert!(self.client.wait(Duration::from_secs(10)).unwrap().success(), "{:?}", self.client.stderr);
        assert!(self.server.stop(Duration::from_secs(10)).unwrap().success());
    }
}

/// One HTTP/1.1 request on its own connection: status, headers, body.
fn http(front: &str, request_line: &str, extra_headers: &str) -> (u16, String, Vec<u8>) {
    let addr = front.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HTTP_DEADLINE)).unwrap();
    stream.set_write_timeout(Some(HTTP_DEADLINE)).unwrap();
    let host = if extra_headers.contains("Host:") { String::new() } else { format!("Host: {addr}\r\n") };
    write!(stream, "{request_line} HTTP/1.1\r\n{host}{extra_headers}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no header end: {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn go(front: &str, url: &str) -> String {
    format!("{front}/go?url={}", url::form_urlencoded::byte_serialize(url.as_bytes()).collect::<String>())
}

#[test]
fn front_end_serves_rewrites_proxies_and_refuses_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let setup = start(dir.path(), &origin);
    let front = setup.front.clone();
    let path_of = |url: String| url.strip_prefix(&front).unwrap().to_owned();

    let (status, head, body) = http(&front, "GET /", "");
    assert_eq!(status, 200, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("<form action=\"/go\""));

    // HTML comes back rewritten, with the headers that keep the browser
    // on the front end.
    let (status, head, body) = http(&front, &format!("GET {}", path_of(go(&front, &origin.url("/one.html")))), "");
    assert_eq!(status, 200, "{head}");
    let body = String::from_utf8(body).unwrap();
    let two = path_of(go(&front, &origin.url("/two.html")));
    assert!(body.contains(&format!("href=\"{two}\"")), "{body}");
    for h in
        ["Content-Type: text/html; charset=utf-8", "Referrer-Policy: no-referrer", "X-Content-Type-Options: nosniff"]
    {
        assert!(head.contains(h), "{h}: {head}");
    }
    assert!(head.contains("Content-Security-Policy: default-src 'self'"), "{head}");

    // Anything else, byte for byte, with its type.
    let (status, head, body) = http(&front, &format!("GET {}", path_of(go(&front, &origin.url("/red.png")))), "");
    assert_eq!((status, body == red_png()), (200, true), "{head}");
    assert!(head.contains("Content-Type: image/png"), "{head}");

    // HEAD: the headers alone.
    let (status, head, body) = http(&front, &format!("HEAD {}", path_of(go(&front, &origin.url("/red.png")))), "");
    assert_eq!((status, body.len()), (200, 0), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", red_png().len())), "{head}");

    // A browser using the front end as its HTTP proxy: the page unchanged.
    let (status, head, body) = http(&front, &format!("GET {}", origin.url("/one.html")), "");
    assert_eq!((status, String::from_utf8(body).unwrap().as_str()), (200, ONE), "{head}");

    // A GET form's fields reach the page.
    let target =
        percent_encoding::utf8_percent_encode(&origin.url("/two.html"), percent_encoding::NON_ALPHANUMERIC).to_string();
    let (status, head, _) = http(&front, &format!("GET /form/{target}?q=a+b&x=1"), "");
    assert_eq!(status, 303, "{head}");
    let location = path_of(go(&front, &format!("{}?q=a+b&x=1", origin.url("/two.html"))));
    assert!(
        head.contains(&format!("Location: {location}\r\n")) || head.ends_with(&format!("Location: {location}")),
        "{head}"
    );

    // Failures: a status and the server's reason, on a page of their own.
    let long = format!("http://127.0.0.1/{}", "a".repeat(1000));
    let cases = [
        (format!("GET {}", path_of(go(&front, &origin.url("/missing")))), "", 502, "HTTP 404"),
        (format!("GET {}", path_of(go(&front, "http://127.0.0.2:9/x"))), "", 403, "not allowed"),
        (format!("GET {}", path_of(go(&front, &long))), "", 414, "at most 974 bytes"),
        (format!("GET {}", path_of(go(&front, "ftp://x/"))), "", 400, "http://"),
        ("CONNECT 127.0.0.1:443".to_owned(), "", 405, "CONNECT"),
        ("POST /go".to_owned(), "Content-Length: 0\r\n", 405, "GET only"),
        ("GET /".to_owned(), "Host: rebound.example:80\r\n", 403, "loopback"),
        ("GET /elsewhere".to_owned(), "", 404, "/go?url="),
    ];
    for (line, headers, want, says) in cases {
        let (status, head, body) = http(&front, &line, headers);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, want, "{line}: {head}\n{body}");
        assert!(body.contains(says) && body.contains("<!DOCTYPE html>"), "{line}: {body}");
    }
    assert!(origin.seen().iter().all(|(_, agent)| agent.starts_with("anonserver/")), "{:?}", origin.seen());

    setup.stop();
    // -l: every fetch's datagrams, whole lines.
    let log = std::fs::read_to_string(dir.path().join("client.log")).unwrap();
    assert!(log.lines().count() > 10, "{log}");
    assert!(log.lines().all(|l| l.starts_with("SEND ") || l.starts_with("RECV ")), "{log}");
}

/// The Chromium to run, or `None` (with a note) when there is none.
fn chromium() -> Option<String> {
    let bin = std::env::var("ANON_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let found = Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some(bin);
    }
    if std::env::var_os("ANON_REQUIRE_CHROMIUM").is_some_and(|v| v == "1") {
        panic!("{bin} is not installed, and ANON_REQUIRE_CHROMIUM=1");
    }
    // Past the test harness's capture, so that the skip shows.
    let _ =
        writeln!(std::io::stderr(), "frontend browser test skipped: {bin} is not installed (apt-get install chromium)");
    None
}

/// Runs headless Chromium on `url` with `args`, standard output to
/// `stdout`; bounded, and its whole process group killed at the end.
fn browse(bin: &str, profile: &Path, args: &[&str], url: &str, stdout: &Path) {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new("sh");
    // sh only redirects standard output, then becomes Chromium.
    cmd.args(["-c", "exec \"$0\" \"$@\" > \"$ANON_STDOUT\""])
        .arg(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-pings",
            "--hide-scrollbars",
            "--disable-crash-reporter",
            "--disable-breakpad",
            // No name resolves: nothing but loopback can be reached.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .env("ANON_STDOUT", stdout)
        .process_group(0);
    let mut proc = Proc::spawn(&mut cmd).unwrap();
    let status = proc.wait(BROWSER_DEADLINE);
    // Its helpers (renderer, zygote) are in its group.
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", proc.pid())]).output();
    let status = status.unwrap_or_else(|e| panic!("chromium: {e}"));
    assert!(status.success(), "chromium failed: {status:?}: {:?}", proc.stderr);
}

/// Pixels of `png` that are clearly red.
fn red_pixels(png: &Path) -> usize {
    let mut decoder = png::Decoder::new(std::fs::File::open(png).unwrap());
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()].chunks(channels).filter(|p| p[0] >= 200 && p[1] <= 60 && p[2] <= 60).count()
}

#[test]
fn a_real_browser_reads_pages_through_the_tunnel() {
    let Some(bin) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let setup = start(dir.path(), &origin);
    let front = setup.front.clone();
    let started = Instant::now();
    let one = go(&front, &origin.url("/one.html"));

    // The image reached the browser: a 300×300 block of red.
    let shot = dir.path().join("one.png");
    let profile = tempfile::tempdir().unwrap();
    browse(
        &bin,
        profile.path(),
        &[&format!("--screenshot={}", shot.display()), "--window-size=800,600"],
        &one,
        &dir.path().join("shot.out"),
    );
    let red = red_pixels(&shot);
    assert!(red >= 250 * 250, "{red} red pixels in the screenshot");

    // The link to two.html points at the front end.
    let dom = dir.path().join("one.dom");
    browse(&bin, profile.path(), &["--dump-dom"], &one, &dom);
    let dom = std::fs::read_to_string(&dom).unwrap();
    let two = go(&front, &origin.url("/two.html"));
    let href = two.strip_prefix(&front).unwrap();
    assert!(dom.contains(&format!("href=\"{href}\"")), "{dom}");

    // Following it shows the second page.
    let dom2 = dir.path().join("two.dom");
    browse(&bin, profile.path(), &["--dump-dom"], &format!("{front}{href}"), &dom2);
    let dom2 = std::fs::read_to_string(&dom2).unwrap();
    assert!(dom2.contains("This is the second page."), "{dom2}");
    let _ = writeln!(std::io::stderr(), "frontend: the browser part took {:.1} s", started.elapsed().as_secs_f64());

    // The origin saw the server only, never the browser.
    let seen = origin.seen();
    for path in ["/one.html", "/red.png", "/two.html"] {
        assert!(seen.iter().any(|(p, _)| p == path), "{path} never requested: {seen:?}");
    }
    assert!(seen.iter().all(|(_, agent)| agent.starts_with("anonserver/")), "{seen:?}");
    setup.stop();
}
