//! Downloads the page the server serves: http and https (with redirects),
//! a bare host meaning `http://`, `file://` URLs and local paths
//! (PROTOCOL.md §5).
//!
//! The whole page is read, within a size limit and a deadline, before
//! anything is served: a partial page is an error, never served.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bounds on the download.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Largest page accepted, in bytes.
    pub max_bytes: u64,
    /// Deadline for the whole download, redirects included.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits { max_bytes: 1 << 30, timeout: Duration::from_secs(60) }
    }
}

/// Why the page could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL has a scheme other than http, https or file.
    #[error("unsupported URL scheme {0:?} (use http, https or file)")]
    Scheme(String),
    /// The HTTP request failed: connection, TLS, status, timeout, truncation.
    #[error("{0}")]
    Http(String),
    /// The page is larger than the limit.
    #[error("the page is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where a page comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An http or https URL.
    Http(String),
    /// A local file.
    File(PathBuf),
}

impl Source {
    /// Reads the `-w` argument: a URL with a scheme is taken by its scheme;
    /// without one, an existing local file is read, and anything else is a
    /// host (and path) fetched over `http://`.
    pub fn parse(arg: &str) -> Result<Source, FetchError> {
        if let Some((scheme, rest)) = arg.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "http" | "https" => Ok(Source::Http(arg.to_string())),
                "file" => Ok(Source::File(PathBuf::from(rest))),
                other => Err(FetchError::Scheme(other.to_string())),
            };
        }
        if Path::new(arg).is_file() {
            return Ok(Source::File(PathBuf::from(arg)));
        }
        Ok(Source::Http(format!("http://{arg}")))
    }
}

/// Loads the whole page into memory.
pub fn fetch(source: &Source, limits: FetchLimits) -> Result<Vec<u8>, FetchError> {
    match source {
        Source::Http(url) => fetch_http(url, limits),
        Source::File(path) => fetch_file(path, limits),
    }
}

fn fetch_http(url: &str, limits: FetchLimits) -> Result<Vec<u8>, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limits.timeout))
        .max_redirects(10)
        .user_agent(concat!("anonserver/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| FetchError::Http(e.to_string()))?;
    response.body_mut().with_config().limit(limits.max_bytes).read_to_vec().map_err(|e| match e {
        ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge(limits.max_bytes),
        other => FetchError::Http(other.to_string()),
    })
}

fn fetch_file(path: &Path, limits: FetchLimits) -> Result<Vec<u8>, FetchError> {
    let err = |source| FetchError::File { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(err)?;
    let mut page = Vec::new();
    // Read one byte past the limit to tell "exactly the limit" from "more".
    file.take(limits.max_bytes.saturating_add(1)).read_to_end(&mut page).map_err(err)?;
    if page.len() as u64 > limits.max_bytes {
        return Err(FetchError::TooLarge(limits.max_bytes));
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(Source::parse("www.example.com").unwrap(), Source::Http("http://www.example.com".into()));
        assert_eq!(Source::parse("https://a.b/c").unwrap(), Source::Http("https://a.b/c".into()));
        assert_eq!(Source::parse("HTTP://a.b").unwrap(), Source::Http("HTTP://a.b".into()));
        assert_eq!(Source::parse("file:///tmp/x").unwrap(), Source::File("/tmp/x".into()));
        assert!(matches!(Source::parse("ftp://a.b"), Err(FetchError::Scheme(s)) if s == "ftp"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("page.html");
        std::fs::write(&f, "hi").unwrap();
        let arg = f.to_str().unwrap();
        assert_eq!(Source::parse(arg).unwrap(), Source::File(f.clone()));
    }

    #[test]
    fn file_size_limit_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p");
        std::fs::write(&f, [7u8; 100]).unwrap();
        let limits = |max_bytes| FetchLimits { max_bytes, timeout: Duration::from_secs(1) };
        assert_eq!(fetch(&Source::File(f.clone()), limits(100)).unwrap().len(), 100);
        assert!(matches!(fetch(&Source::File(f.clone()), limits(99)), Err(FetchError::TooLarge(99))));
        assert!(matches!(fetch(&Source::File(dir.path().join("none")), limits(9)), Err(FetchError::File { .. })));
    }

    /// An origin on 127.0.0.1 that answers one request with `head` and then
    /// `body` in chunks of `chunk` bytes, `pause` apart, and closes.
    fn origin(head: &'static str, body: Vec<u8>, chunk: usize, pause: Duration) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(head.as_bytes());
            for part in body.chunks(chunk.max(1)) {
                if s.write_all(part).is_err() {
                    return;
                }
                std::thread::sleep(pause);
            }
        });
        url
    }

    #[test]
    fn truncated_response_is_an_error_not_a_short_page() {
        let url = origin("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", vec![b'x'; 500], 500, Duration::ZERO);
        let limits = FetchLimits { max_bytes: 1 << 20, timeout: Duration::from_secs(5) };
        let got = fetch(&Source::Http(url), limits);
        assert!(matches!(got, Err(FetchError::Http(_))), "{got:?}");
    }

    #[test]
    fn slow_origin_hits_the_download_deadline() {
        // One byte every 100 ms of a 1000-byte page: 100 s; the deadline is 1 s.
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        let url = origin(head, vec![b'x'; 1000], 1, Duration::from_millis(100));
        let start = std::time::Instant::now();
        let limits = FetchLimits { max_bytes: 1 << 20, timeout: Duration::from_secs(1) };
        let got = fetch(&Source::Http(url), limits);
        assert!(matches!(got, Err(FetchError::Http(_))), "{got:?}");
        assert!(start.elapsed() < Duration::from_secs(5), "gave up after {:?}", start.elapsed());
    }

    #[test]
    fn oversized_response_is_refused_with_or_without_a_length() {
        let limits = FetchLimits { max_bytes: 1000, timeout: Duration::from_secs(5) };
        let sized = origin("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", vec![b'x'; 5000], 5000, Duration::ZERO);
        assert!(matches!(fetch(&Source::Http(sized), limits), Err(FetchError::TooLarge(1000))));
        // No length: read until the connection closes, past the limit.
        let unknown = origin("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", vec![b'x'; 5000], 1000, Duration::ZERO);
        assert!(matches!(fetch(&Source::Http(unknown), limits), Err(FetchError::TooLarge(1000))));
    }
}
