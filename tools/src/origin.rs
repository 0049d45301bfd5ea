//! A local HTTP origin on 127.0.0.1 that serves one page, for tests and the
//! demo: the server under test downloads from it instead of the internet.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running origin; stops when dropped.
pub struct Origin {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Origin {
    /// Serves `page` at `/page.html`, and a redirect to it at `/old`, on an
    /// ephemeral port of 127.0.0.1.
    pub fn serve(page: Vec<u8>) -> io::Result<Origin> {
        let server = tiny_http::Server::http("127.0.0.1:0").map_err(io::Error::other)?;
        let addr = server.server_addr().to_ip().ok_or_else(|| io::Error::other("origin has no IP address"))?;
        let server = Arc::new(server);
        let page: Arc<[u8]> = page.into();
        let thread = {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    let response = match request.url() {
                        "/page.html" => tiny_http::Response::from_data(page.to_vec())
                            .with_header(header("Content-Type", "text/html")),
                        "/old" => tiny_http::Response::from_data(Vec::new())
                            .with_status_code(301)
                            .with_header(header("Location", "/page.html")),
                        _ => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
                    };
                    let _ = request.respond(response);
                }
            })
        };
        Ok(Origin { server, thread: Some(thread), addr })
    }

    /// URL of the page.
    pub fn url(&self) -> String {
        format!("http://{}/page.html", self.addr)
    }

    /// URL that redirects to the page.
    pub fn redirect_url(&self) -> String {
        format!("http://{}/old", self.addr)
    }

    /// URL that answers 404.
    pub fn missing_url(&self) -> String {
        format!("http://{}/missing", self.addr)
    }
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| unreachable!("static header"))
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request a [`RecordingOrigin`] got: its target and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The request target (path and query).
    pub path: String,
    /// Every header, as sent.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A local origin on 127.0.0.1 that answers every request with `respond`
/// (one at a time, in order) and records each request, for tests that
/// check what reached the origin and how. Stops when dropped.
pub struct RecordingOrigin {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    base: String,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl RecordingOrigin {
    /// Starts it on an ephemeral port.
    pub fn start(respond: impl Fn(&Seen) -> tiny_http::ResponseBox + Send + 'static) -> io::Result<RecordingOrigin> {
        let server = tiny_http::Server::http("127.0.0.1:0").map_err(io::Error::other)?;
        let addr = server.server_addr().to_ip().ok_or_else(|| io::Error::other("origin has no IP address"))?;
        let server = Arc::new(server);
        let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
        let thread = {
            let (server, seen) = (Arc::clone(&server), Arc::clone(&seen));
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    let headers = request
                        .headers()
                        .iter()
                        .map(|h| (h.field.as_str().as_str().to_owned(), h.value.as_str().to_owned()))
                        .collect();
                    let got = Seen { path: request.url().to_owned(), headers };
                    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(got.clone());
                    let _ = request.respond(respond(&got));
                }
            })
        };
        Ok(RecordingOrigin { server, thread: Some(thread), base: format!("http://{addr}"), seen })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` there.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl std::fmt::Debug for RecordingOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingOrigin").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Drop for RecordingOrigin {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
