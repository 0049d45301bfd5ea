//! `anonclient --serve`: a local web front end, so that a browser can read
//! the web through the tunnel.
//!
//! - `GET /`: an address field.
//! - `GET /go?url=URL`: URL fetched through the tunnel; HTML is rewritten
//!   ([`rewrite`]) so that its links, images, scripts and forms come back
//!   here, never to the origin.
//! - `GET /form/<URL>?fields`: a GET form's submission, sent on to `/go`.
//! - `GET http://host/path` (a browser using this as its HTTP proxy): the
//!   page through the tunnel, unchanged. CONNECT is refused: https through
//!   a proxy needs it, and it would hand the tunnel's server only an
//!   encrypted stream it cannot fetch for us.
//!
//! Each request runs on a thread of its own, at most [`MAX_REQUESTS`] at
//! once; each fetch is one tunnel connection ([`tunnel`]).

pub mod rewrite;
pub mod tunnel;

use std::fs::File;
use std::io::{self, Read, Seek};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anon_proto::ConnectionError;
use anon_proto::conn::Refusal;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};
use url::Url;

use crate::driver::client::FetchFailed;
pub use tunnel::Tunnel;

/// Requests handled at once; beyond, 503.
pub const MAX_REQUESTS: usize = 16;
/// The longest request target taken: a URL of the tunnel's largest,
/// percent-encoded (three bytes each) under `/go?url=`.
const MAX_TARGET: usize = 8 << 10;

type Reply = Response<Box<dyn Read + Send>>;

/// What the request threads share.
#[derive(Debug)]
struct Shared {
    tunnel: Tunnel,
    /// Fetched pages land here, and are unlinked as soon as they are open.
    dir: PathBuf,
    next: AtomicU64,
    listen: SocketAddr,
    active: AtomicUsize,
}

/// A running front end: its listening socket and the thread that accepts.
pub struct FrontEnd {
    server: Arc<Server>,
    accept: Option<std::thread::JoinHandle<()>>,
    /// Deleted (with any page still in it) when the front end is dropped.
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl FrontEnd {
    /// Listens on `listen` and serves until dropped.
    pub fn start(listen: SocketAddr, tunnel: Tunnel) -> io::Result<FrontEnd> {
        let server =
            Server::http(listen).map_err(|e| io::Error::new(io::ErrorKind::AddrNotAvailable, e.to_string()))?;
        let addr = server.server_addr().to_ip().unwrap_or(listen);
        let dir = tempfile::Builder::new().prefix("anonclient-serve.").tempdir()?;
        let shared = Arc::new(Shared {
            tunnel,
            dir: dir.path().to_path_buf(),
            next: AtomicU64::new(0),
            listen: addr,
            active: AtomicUsize::new(0),
        });
        let server = Arc::new(server);
        let accept = {
            let server = Arc::clone(&server);
            std::thread::Builder::new().name("frontend-accept".into()).spawn(move || accept_loop(&server, &shared))?
        };
        Ok(FrontEnd { server, accept: Some(accept), _dir: dir, addr })
    }
}

impl std::fmt::Debug for FrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontEnd").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        // Requests in flight are not waited for: the process is ending.
        self.server.unblock();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Decrements the count of requests in flight, however a request ends.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(server: &Server, shared: &Arc<Shared>) {
    for request in server.incoming_requests() {
        if shared.active.fetch_add(1, Ordering::AcqRel) >= MAX_REQUESTS {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            let _ = request.respond(error_page(503, "Busy", "Too many pages are loading at once; try again.", None));
            continue;
        }
        let slot = Slot(Arc::clone(shared));
        // The request moves into the thread; if the spawn fails it is
        // dropped unanswered (tiny_http then closes the connection).
        let spawned = std::thread::Builder::new().name("frontend-request".into()).spawn(move || {
            let reply = handle(&request, &slot.0);
            let _ = request.respond(reply);
            drop(slot);
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a request thread: {e}");
        }
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// Headers every answer carries: the browser sends no Referer (it would
/// name the front end's addresses, or worse, to an origin) and takes the
/// content type as given.
fn common_headers(content_type: &str) -> Vec<Header> {
    [("Content-Type", content_type), ("Referrer-Policy", "no-referrer"), ("X-Content-Type-Options", "nosniff")]
        .into_iter()
        .filter_map(|(n, v)| header(n, v))
        .collect()
}

/// Loads of a rewritten page stay on the front end: anything the rewriter
/// missed (a URL built by a script, one in a style sheet) fails rather than
/// reaching the origin directly, past the tunnel, where a censor sees it.
const CSP: &str = "default-src 'self' data: blob: 'unsafe-inline' 'unsafe-eval'; form-action 'self'";

fn reply(status: u16, headers: Vec<Header>, body: Box<dyn Read + Send>, len: Option<usize>) -> Reply {
    Response::new(StatusCode(status), headers, body, len, None)
}

fn html_reply(status: u16, html: String) -> Reply {
    let len = html.len();
    reply(status, common_headers("text/html; charset=utf-8"), Box::new(io::Cursor::new(html.into_bytes())), Some(len))
}

/// Escapes text for HTML, in content and in quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str, url: Option<&str>) -> String {
    let value = escape(url.unwrap_or_default());
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:sans-serif;max-width:50em;margin:2em auto\">\
         <form action=\"/go\" method=\"get\"><input name=\"url\" value=\"{value}\" size=\"60\" \
         placeholder=\"https://example.org/\" autofocus> <button>Go</button></form>{body}</body></html>\n",
        title = escape(title)
    )
}

fn index() -> Reply {
    html_reply(
        200,
        page(
            "anonclient",
            "<p>Pages open through the tunnel: the censor sees only encrypted datagrams to the server, \
             and the server's operator sees the addresses you visit.</p>",
            None,
        ),
    )
}

fn error_page(status: u16, title: &str, message: &str, url: Option<&str>) -> Reply {
    let about = url.map(|u| format!("<p><code>{}</code></p>", escape(u))).unwrap_or_default();
    html_reply(status, page(title, &format!("<h1>{}</h1>{about}<p>{}</p>", escape(title), escape(message)), url))
}

/// The HTTP status and the words for a failed fetch.
fn failure(e: &FetchFailed) -> (u16, &'static str, String) {
    match e {
        FetchFailed::Connection(ConnectionError::Rejected(why)) => {
            let status = match why {
                Refusal::NotAllowed => 403,
                Refusal::Busy => 503,
                Refusal::Timeout => 504,
                Refusal::NotFound => 404,
                _ => 502,
            };
            let what = if why.is_origin_failure() {
                format!("The server could not fetch the page: {why}.")
            } else {
                format!("The server refused the request: {why}.")
            };
            (status, "Cannot load the page", what)
        }
        FetchFailed::Connection(e @ (ConnectionError::ConnectTimeout(_) | ConnectionError::IdleTimeout(_))) => {
            (504, "The tunnel timed out", format!("{e}."))
        }
        FetchFailed::Connection(e) => (502, "The tunnel failed", format!("{e}.")),
        FetchFailed::Output { .. } => (500, "Cannot store the page", format!("{e}.")),
        FetchFailed::Interrupted => (503, "Stopping", "anonclient is stopping.".to_owned()),
        FetchFailed::Socket(_) | FetchFailed::Integrity(_) => (502, "The tunnel failed", format!("{e}.")),
    }
}

/// A scheme-and-authority target (`http://host/…`): a proxy request.
fn is_absolute(target: &str) -> bool {
    let head = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    head.starts_with("http://") || head.starts_with("https://")
}

/// Whether the Host header names this front end. Bound to loopback, it
/// answers only to loopback names, so that a web page the browser opens
/// elsewhere cannot reach it under a name of its own (DNS rebinding) and
/// read what it fetches.
fn host_allowed(request: &Request, listen: SocketAddr) -> bool {
    if !listen.ip().is_loopback() {
        return true;
    }
    let Some(host) = request.headers().iter().find(|h| h.field.equiv("Host")) else { return true };
    let host = host.value.as_str().to_ascii_lowercase();
    let port = listen.port();
    [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}"), listen.to_string()]
        .contains(&host)
}

fn handle(request: &Request, shared: &Shared) -> Reply {
    let target = request.url();
    match request.method() {
        Method::Get | Method::Head => {}
        Method::Connect => {
            return error_page(
                405,
                "CONNECT is not supported",
                "https through a proxy needs CONNECT, which this front end does not do. Type the https address \
                 into the front end's address field instead, or use it as a proxy for http:// addresses only.",
                None,
            );
        }
        _ => {
            return error_page(
                405,
                "Only GET",
                "The tunnel fetches pages with GET only: forms that POST cannot be sent.",
                None,
            );
        }
    }
    if target.len() > MAX_TARGET {
        return error_page(414, "Address too long", "The address is longer than the tunnel takes.", None);
    }
    if is_absolute(target) {
        // A browser set to use this as its HTTP proxy: the page as it is.
        return fetch(shared, target, false);
    }
    if !host_allowed(request, shared.listen) {
        return error_page(403, "Wrong host name", "This front end answers only to its loopback address.", None);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/" => index(),
        "/go" => {
            let url = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "url").map(|(_, v)| v);
            match url.as_deref().map(str::trim) {
                None | Some("") => index(),
                Some(url) if url.contains("://") => fetch(shared, url, true),
                // Typed without a scheme, as into a browser's address bar.
                Some(url) => fetch(shared, &format!("https://{url}"), true),
            }
        }
        _ => match path.strip_prefix("/form/") {
            Some(base) => form(base, query),
            None => error_page(
                404,
                "Not found",
                "Not an address of the front end: pages are at /go?url=ADDRESS. (A link built by a script or a style \
                 sheet may point here.)",
                None,
            ),
        },
    }
}

/// A GET form was sent: its target with the browser's query, by way of
/// `/go` (a redirect, so that the address bar and reloads show the page).
fn form(base: &str, query: &str) -> Reply {
    let base = percent_encoding::percent_decode_str(base).decode_utf8_lossy();
    let Ok(mut url) = Url::parse(&base) else {
        return error_page(400, "Bad form target", "The form's target is not an address.", None);
    };
    url.set_query((!query.is_empty()).then_some(query));
    let location = rewrite::go_link(&url);
    let mut headers = common_headers("text/html; charset=utf-8");
    headers.extend(header("Location", &location));
    let body = format!("<a href=\"{}\">continue</a>\n", escape(&location));
    let len = body.len();
    reply(303, headers, Box::new(io::Cursor::new(body.into_bytes())), Some(len))
}

fn is_html(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "text/html" || essence == "application/xhtml+xml"
}

/// Fetches `url` through the tunnel and answers with it, rewritten when
/// `rewrite` and it is HTML, streamed from its file otherwise.
fn fetch(shared: &Shared, url: &str, rewrite: bool) -> Reply {
    let max = anon_proto::secure::proxy::MAX_REQUEST_URL_LEN;
    if url.len() > max {
        return error_page(
            414,
            "Address too long",
            &format!("The tunnel takes addresses of at most {max} bytes."),
            Some(url),
        );
    }
    let parsed = match Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        _ => {
            return error_page(
                400,
                "Not a web address",
                "Only http:// and https:// addresses can be opened.",
                Some(url),
            );
        }
    };
    let dest = shared.dir.join(format!("{}.page", shared.next.fetch_add(1, Ordering::Relaxed)));
    let summary = match shared.tunnel.fetch(url, &dest) {
        Ok(s) => s,
        Err(e) => {
            let (status, title, message) = failure(&e);
            tracing::info!("{url}: {e}");
            return error_page(status, title, &message, Some(url));
        }
    };
    let file = File::open(&dest);
    // Open, it needs no name: nothing is left behind however the answer ends.
    let _ = std::fs::remove_file(&dest);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return error_page(500, "Cannot read the page", &e.to_string(), Some(url)),
    };
    let meta = summary.meta.as_ref();
    // The origin's words, printable ASCII only, for a header.
    let content_type = meta
        .map(|m| m.content_type.as_str())
        .filter(|t| !t.is_empty() && t.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .unwrap_or("application/octet-stream");
    if rewrite && is_html(content_type) {
        let page_url = meta.and_then(|m| Url::parse(&m.final_url).ok()).unwrap_or(parsed);
        let rewritten = tempfile::tempfile_in(&shared.dir).map_err(rewrite::RewriteError::from).and_then(|out| {
            let mut out = io::BufWriter::new(out);
            rewrite::rewrite_html(&mut io::BufReader::new(file), &mut out, &page_url)?;
            let mut out = out.into_inner().map_err(io::IntoInnerError::into_error)?;
            let len = out.stream_position()?;
            out.rewind()?;
            Ok((out, len))
        });
        return match rewritten {
            Ok((out, len)) => {
                let mut headers = common_headers(content_type);
                headers.extend(header("Content-Security-Policy", CSP));
                reply(200, headers, Box::new(out), usize::try_from(len).ok())
            }
            Err(e) => error_page(502, "Cannot show the page", &e.to_string(), Some(url)),
        };
    }
    let len = usize::try_from(summary.bytes).ok();
    if let Err(e) = file.rewind() {
        return error_page(500, "Cannot read the page", &e.to_string(), Some(url));
    }
    let mut headers = common_headers(content_type);
    if rewrite {
        headers.extend(header("Content-Security-Policy", CSP));
    }
    reply(200, headers, Box::new(file), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_it_echoes() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        let html = page("t", "", Some("\"><script>alert(1)</script>"));
        assert!(!html.contains("<script>") && html.contains("&quot;&gt;&lt;script&gt;"), "{html}");
    }

    #[test]
    fn content_types() {
        assert!(is_html("text/html; charset=utf-8") && is_html("Application/XHTML+XML") && !is_html("text/plain"));
        assert!(is_absolute("HTTP://x/") && is_absolute("https://x") && !is_absolute("/go?url=http://x"));
    }

    #[test]
    fn failures_map_to_statuses() {
        let rejected = |r| FetchFailed::Connection(ConnectionError::Rejected(r));
        assert_eq!(failure(&rejected(Refusal::Status(404))).0, 502);
        assert!(failure(&rejected(Refusal::Status(404))).2.contains("HTTP 404"));
        assert_eq!(failure(&rejected(Refusal::NotAllowed)).0, 403);
        assert_eq!(failure(&rejected(Refusal::Busy)).0, 503);
        assert_eq!(failure(&rejected(Refusal::Timeout)).0, 504);
        let timeout = FetchFailed::Connection(ConnectionError::ConnectTimeout(std::time::Duration::from_secs(1)));
        assert_eq!(failure(&timeout).0, 504);
    }
}
