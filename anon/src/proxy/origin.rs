//! Fetches a page from its origin for a client, within the operator's
//! [`FetchPolicy`]: every redirect hop's URL is checked against the
//! patterns, and every address connected to against the private ranges.
//!
//! The address check sits in the resolver ureq connects with, so the
//! address checked is the address connected to: a name that resolves to a
//! public address when checked and a private one when connecting (DNS
//! rebinding) has no second lookup to exploit.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ureq::http::{HeaderMap, StatusCode, Uri};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use anon_proto::page::{Page, Stream};

use super::policy::{Denied, FetchPolicy, ParsedUrl};
use crate::fetch::FetchLimits;

/// Redirects followed before giving up, as browsers and ureq do.
pub const MAX_REDIRECTS: usize = 10;
/// Longest ETag kept; longer ones are dropped (no revalidation by ETag).
const MAX_ETAG: usize = 256;
/// Longest Last-Modified kept (an HTTP date is 29 bytes).
const MAX_DATE: usize = 64;
/// Longest Content-Type kept.
const MAX_CONTENT_TYPE: usize = 256;
/// Freshness lifetimes are capped at 2^31 s (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 1 << 31;

/// Why a page could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// The URL, or a redirect's, is malformed or matches no pattern.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The host has only private or forbidden addresses.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No connection: host not found, refused, unreachable.
    #[error("origin unreachable: {0}")]
    Unreachable(String),
    /// The deadline passed, redirects and body included.
    #[error("origin timed out")]
    Timeout,
    /// The final response was not a success.
    #[error("HTTP {0}")]
    Status(u16),
    /// The page is larger than the limit (bytes).
    #[error("the page is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// Anything else: TLS, protocol errors, too many redirects.
    #[error("fetch failed: {0}")]
    Other(String),
}

impl From<Denied> for OriginError {
    fn from(d: Denied) -> OriginError {
        match d {
            Denied::NotAllowed(why) => OriginError::NotAllowed(why),
        }
    }
}

/// What a cached response is revalidated with (RFC 9110 §8.8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// The `ETag`, as sent (weak ones included).
    pub etag: Option<String>,
    /// The `Last-Modified` date, as sent.
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether there is nothing to revalidate with.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    fn from_headers(headers: &HeaderMap) -> Validators {
        Validators {
            etag: header(headers, "etag", MAX_ETAG).map(str::to_string),
            last_modified: header(headers, "last-modified", MAX_DATE).map(str::to_string),
        }
    }
}

/// How long a response may be reused, as a shared cache reads
/// Cache-Control (RFC 9111 §5.2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Freshness left when the response was received: `s-maxage`, else
    /// `max-age`, else `Expires` minus `Date`, less the `Age` the response
    /// already had (RFC 9111 §4.2). `None`: no explicit lifetime.
    pub max_age: Option<Duration>,
    /// Must not be stored: `no-store`, `private` (we are a shared cache) or
    /// `Vary: *` (never matches, RFC 9111 §4.1).
    pub no_store: bool,
    /// May be stored but must be revalidated before each reuse.
    pub no_cache: bool,
}

/// What a successful final response's headers say, before its body.
#[derive(Debug, Clone)]
pub struct Head {
    /// The status (2xx).
    pub status: u16,
    /// The URL after redirects, in normal form.
    pub final_url: String,
    /// The `Content-Type`, if short enough.
    pub content_type: Option<String>,
    /// The `Content-Length`, if given.
    pub content_length: Option<u64>,
}

/// Where a fetch's body may go as it arrives (docs/PROTOCOL.md §9.7).
pub trait BodySink {
    /// The final response's headers are in: a stream to append the body
    /// to, or `None` to read it whole first.
    fn start(&self, head: &Head) -> Option<Arc<Stream>>;
    /// More of the body is in the stream.
    fn grew(&self);
}

/// Reads every body whole.
struct Whole;

impl BodySink for Whole {
    fn start(&self, _: &Head) -> Option<Arc<Stream>> {
        None
    }
    fn grew(&self) {}
}

/// Bytes read from the origin at a time while streaming.
const READ_CHUNK: usize = 64 * 1024;

/// A successful response, read whole.
#[derive(Debug, Clone)]
pub struct FetchedPage {
    /// The final status (2xx).
    pub status: u16,
    /// The URL after redirects, in normal form.
    pub final_url: String,
    /// The `Content-Type`, if short enough.
    pub content_type: Option<String>,
    /// The page.
    pub body: Bytes,
    /// The page hashed already (it was streamed): no second hashing.
    pub hashed: Option<Arc<Page>>,
    /// From the final response's headers.
    pub freshness: Freshness,
    /// From the final response's headers.
    pub validators: Validators,
}

/// The result of a fetch.
#[derive(Debug, Clone)]
pub enum OriginResponse {
    /// A new page.
    Full(FetchedPage),
    /// 304: the cached page is still good, with these new lifetimes and
    /// validators (those of the request where the 304 repeats none).
    NotModified {
        /// From the 304 (RFC 9111 §4.3.4), or `None` when it has neither
        /// Cache-Control nor Expires: the stored lifetime then stands
        /// (§3.2: a 304 updates only the header fields it carries).
        freshness: Option<Freshness>,
        /// The 304's validators, else the ones sent.
        validators: Validators,
    },
}

/// The resolver's refusal, recognised again in the error ureq returns.
#[derive(Debug, thiserror::Error)]
#[error("{host} has only private or forbidden addresses ({addrs})")]
struct ForbiddenAddress {
    host: String,
    addrs: String,
}

/// ureq's resolver, keeping only the addresses the policy allows.
#[derive(Debug)]
struct GuardedResolver {
    policy: Arc<FetchPolicy>,
    inner: DefaultResolver,
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for addr in all.iter().filter(|a| self.policy.address_allowed(a.ip())) {
            // Both hold at most the same 16 addresses.
            let _ = kept.try_push(*addr);
        }
        if kept.is_empty() {
            let addrs: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
            let host = uri.host().unwrap_or_default().to_string();
            return Err(ureq::Error::Other(Box::new(ForbiddenAddress { host, addrs: addrs.join(", ") })));
        }
        Ok(kept)
    }
}

/// Fetches pages on demand. Blocking: run it on a worker thread.
#[derive(Debug)]
pub struct OriginFetcher {
    policy: Arc<FetchPolicy>,
    limits: FetchLimits,
    agent: ureq::Agent,
}

impl OriginFetcher {
    /// A fetcher obeying `policy`, each fetch within `limits`.
    pub fn new(policy: Arc<FetchPolicy>, limits: FetchLimits) -> OriginFetcher {
        let config = ureq::Agent::config_builder()
            // An environment proxy would resolve the origin's name itself,
            // out of our resolver's sight.
            .proxy(None)
            .http_status_as_error(false)
            // Redirects are followed here, each hop checked.
            .max_redirects(0)
            .timeout_global(Some(limits.timeout))
            .user_agent(concat!("anonserver/", env!("CARGO_PKG_VERSION")))
            .build();
        let resolver = GuardedResolver { policy: Arc::clone(&policy), inner: DefaultResolver::default() };
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
        OriginFetcher { policy, limits, agent }
    }

    /// Fetches `url`, following redirects. With `validators`, asks for the
    /// page only if changed (RFC 9110 §13.1.1, §13.1.3); they are sent on
    /// every hop, as the page they validate is the final one.
    pub fn fetch(&self, url: &str, validators: Option<&Validators>) -> Result<OriginResponse, OriginError> {
        self.fetch_into(url, validators, &Whole)
    }

    /// Like [`fetch`](Self::fetch), the body going to the stream `sink`
    /// gives when the final response's headers are in. A body that then
    /// fails returns the error; the caller ends the stream with it.
    pub fn fetch_into(
        &self,
        url: &str,
        validators: Option<&Validators>,
        sink: &dyn BodySink,
    ) -> Result<OriginResponse, OriginError> {
        let deadline = Instant::now() + self.limits.timeout;
        let mut current = self.policy.check_url(url)?;
        for _hop in 0..=MAX_REDIRECTS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OriginError::Timeout);
            }
            let mut request = self.agent.get(current.to_key()).config().timeout_global(Some(left)).build();
            if let Some(v) = validators {
                if let Some(etag) = &v.etag {
                    request = request.header("if-none-match", etag);
                }
                if let Some(date) = &v.last_modified {
                    request = request.header("if-modified-since", date);
                }
            }
            let mut response = request.call().map_err(|e| self.map_error(e))?;
            let status = response.status();
            let headers = response.headers();
            if is_redirect(status) {
                if let Some(location) = header(headers, "location", super::policy::MAX_URL_LEN) {
                    let next = resolve_location(&current, location);
                    current = self
                        .policy
                        .check_url(&next)
                        .map_err(|Denied::NotAllowed(why)| OriginError::NotAllowed(format!("redirect: {why}")))?;
                    continue;
                }
            }
            if status == StatusCode::NOT_MODIFIED {
                let Some(sent) = validators else { return Err(OriginError::Status(304)) };
                let mut new = Validators::from_headers(headers);
                new.etag = new.etag.or_else(|| sent.etag.clone());
                new.last_modified = new.last_modified.or_else(|| sent.last_modified.clone());
                let carried = headers.contains_key("cache-control") || headers.contains_key("expires");
                let freshness = carried.then(|| freshness(headers, unix_now()));
                return Ok(OriginResponse::NotModified { freshness, validators: new });
            }
            // 206 is a part of a page, which must never be served as one.
            if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
                return Err(OriginError::Status(status.as_u16()));
            }
            let freshness = freshness(headers, unix_now());
            let validators = Validators::from_headers(headers);
            let content_type = header(headers, "content-type", MAX_CONTENT_TYPE).map(str::to_string);
            let content_length = header(headers, "content-length", 20).and_then(|v| v.parse::<u64>().ok());
            // Refused before a byte is sent on, rather than cut short.
            if content_length.is_some_and(|n| n > self.limits.max_bytes) {
                return Err(OriginError::TooLarge(self.limits.max_bytes));
            }
            let head = Head { status: status.as_u16(), final_url: current.to_key(), content_type, content_length };
            if let Some(stream) = sink.start(&head) {
                let page = self.stream_body(&mut response, &stream, sink)?;
                return Ok(OriginResponse::Full(FetchedPage {
                    status: head.status,
                    final_url: head.final_url,
                    content_type: head.content_type,
                    body: page.bytes().clone(),
                    hashed: Some(page),
                    freshness,
                    validators,
                }));
            }
            let Head { content_type, .. } = head;
            let body = response
                .body_mut()
                .with_config()
                .limit(self.limits.max_bytes)
                .read_to_vec()
                .map_err(|e| reading_body(self.map_error(e)))?;
            return Ok(OriginResponse::Full(FetchedPage {
                status: status.as_u16(),
                final_url: current.to_key(),
                content_type,
                // Read by doubling: without this, the spare capacity would
                // live as long as the page, uncounted by the budgets.
                body: Bytes::from({
                    let mut body = body;
                    body.shrink_to_fit();
                    body
                }),
                hashed: None,
                freshness,
                validators,
            }));
        }
        Err(OriginError::Other(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Reads the body into `stream` as it arrives, within the size limit
    /// and the deadline (ureq's, set on the request), telling `sink` of
    /// each piece; the page once complete.
    fn stream_body(
        &self,
        response: &mut ureq::http::Response<ureq::Body>,
        stream: &Stream,
        sink: &dyn BodySink,
    ) -> Result<Arc<Page>, OriginError> {
        use std::io::Read;
        let mut reader = response.body_mut().with_config().limit(self.limits.max_bytes).reader();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ureq wraps its own errors (the limit, a timeout) in
                    // the io::Error it returns.
                    let mapped = match e.into_inner().map(|inner| inner.downcast::<ureq::Error>()) {
                        Some(Ok(ureq)) => self.map_error(*ureq),
                        Some(Err(other)) => OriginError::Other(other.to_string()),
                        None => OriginError::Other("no detail".into()),
                    };
                    return Err(reading_body(mapped));
                }
            };
            stream.push(buf.get(..n).unwrap_or_default());
            sink.grew();
        }
        let page = stream.finish().ok_or_else(|| OriginError::Other("the stream was ended elsewhere".into()))?;
        sink.grew();
        Ok(page)
    }

    fn map_error(&self, e: ureq::Error) -> OriginError {
        use std::io::ErrorKind as K;
        match e {
            ureq::Error::Timeout(_) => OriginError::Timeout,
            ureq::Error::Io(io) => match io.kind() {
                K::TimedOut | K::WouldBlock => OriginError::Timeout,
                // Their kind reads better than "Connection refused (os error 111)".
                k @ (K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NetworkUnreachable
                | K::HostUnreachable
                | K::AddrNotAvailable
                | K::NotConnected) => OriginError::Unreachable(k.to_string()),
                _ => OriginError::Unreachable(io.to_string()),
            },
            ureq::Error::HostNotFound => OriginError::Unreachable("host not found".into()),
            ureq::Error::ConnectionFailed => OriginError::Unreachable("connection failed".into()),
            ureq::Error::BodyExceedsLimit(_) => OriginError::TooLarge(self.limits.max_bytes),
            ureq::Error::Other(inner) => match inner.downcast::<ForbiddenAddress>() {
                Ok(forbidden) => OriginError::Forbidden(forbidden.to_string()),
                Err(inner) => OriginError::Other(inner.to_string()),
            },
            other => OriginError::Other(other.to_string()),
        }
    }
}

/// An error while reading a body: the limit and the deadline keep their
/// reasons (the client is told them); anything else says where it came.
fn reading_body(e: OriginError) -> OriginError {
    match e {
        e @ (OriginError::Timeout | OriginError::TooLarge(_)) => e,
        other => OriginError::Other(format!("reading the page: {other}")),
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// A header's value if present once or more (the first), visible ASCII and
/// at most `max` bytes.
fn header<'a>(headers: &'a HeaderMap, name: &str, max: usize) -> Option<&'a str> {
    let value = headers.get(name)?;
    if value.len() > max {
        return None;
    }
    value.to_str().ok().map(str::trim).filter(|v| !v.is_empty())
}

/// A Location resolved against the URL it came from (RFC 9110 §10.2.2,
/// RFC 3986 §5.2); dot segments go when the result is parsed.
fn resolve_location(base: &ParsedUrl, location: &str) -> String {
    let has_scheme = location
        .split_once(':')
        .is_some_and(|(s, _)| s.starts_with(|c: char| c.is_ascii_alphabetic()) && s.bytes().all(is_scheme_byte));
    if has_scheme {
        location.to_string()
    } else if location.starts_with("//") {
        format!("{}:{location}", base.scheme)
    } else if location.starts_with('/') {
        format!("{}{location}", base.origin())
    } else {
        let path = base.path_and_query.split_once('?').map_or(base.path_and_query.as_str(), |(p, _)| p);
        if location.starts_with('?') || location.starts_with('#') {
            format!("{}{path}{location}", base.origin())
        } else {
            let dir = path.rfind('/').map_or("/", |i| path.get(..=i).unwrap_or("/"));
            format!("{}{dir}{location}", base.origin())
        }
    }
}

fn is_scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads a shared cache's view of the response's lifetime (RFC 9111 §4.2,
/// §5.2.2); `now` (Unix seconds) stands in for a missing `Date`.
fn freshness(headers: &HeaderMap, now: u64) -> Freshness {
    let mut f = Freshness::default();
    let (mut max_age, mut s_maxage) = (None, None);
    for value in headers.get_all("cache-control") {
        let Ok(value) = value.to_str() else { continue };
        for (name, arg) in directives(value) {
            match name.to_ascii_lowercase().as_str() {
                "no-store" | "private" => f.no_store = true,
                "no-cache" => f.no_cache = true,
                // The first occurrence counts (RFC 9111 §4.2.1).
                "max-age" if max_age.is_none() => max_age = Some(delta_seconds(arg)),
                "s-maxage" if s_maxage.is_none() => s_maxage = Some(delta_seconds(arg)),
                _ => {}
            }
        }
    }
    if headers.get_all("vary").iter().any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|m| m.trim() == "*"))) {
        f.no_store = true;
    }
    let lifetime = s_maxage.or(max_age).or_else(|| {
        let expires = headers.get("expires")?;
        // An Expires that does not parse means already expired (RFC 9111 §5.3).
        let Some(expires) = expires.to_str().ok().and_then(parse_http_date) else { return Some(0) };
        let date = header(headers, "date", MAX_DATE).and_then(parse_http_date).unwrap_or(now);
        Some(expires.saturating_sub(date))
    });
    let age = header(headers, "age", 20).map_or(0, |a| delta_seconds(Some(a)));
    f.max_age = lifetime.map(|l| Duration::from_secs(l.saturating_sub(age).min(MAX_DELTA)));
    f
}

/// A delta-seconds value; an invalid one means stale (0), one too large
/// for us the cap (RFC 9111 §1.2.2).
fn delta_seconds(arg: Option<&str>) -> u64 {
    match arg {
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => a.parse().unwrap_or(MAX_DELTA),
        _ => 0,
    }
}

/// Cache-Control's comma-separated `name[=value]` list, commas inside
/// quoted strings (`no-cache="a, b"`) not splitting it.
fn directives(value: &str) -> Vec<(&str, Option<&str>)> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(value.get(start..i).unwrap_or(""));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value.get(start..).unwrap_or(""));
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        })
        .collect()
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7) as
/// Unix seconds. The obsolete RFC 850 and asctime forms are not read: an
/// Expires in them counts as expired, which only costs a revalidation.
fn parse_http_date(s: &str) -> Option<u64> {
    let mut it = s.split_ascii_whitespace();
    let (weekday, day, month, year, time, zone) =
        (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || zone != "GMT" || !weekday.ends_with(',') || day.len() != 2 || year.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let day: u64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: u64 = year.parse().ok().filter(|y| *y >= 1970)?;
    let mut hms = time.split(':').map(|t| if t.len() == 2 { t.parse::<u64>().ok() } else { None });
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    // days_from_civil), years counted from March so leap days come last.
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y % 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::policy::UrlPattern;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// An origin on 127.0.0.1 answering up to `n` connections, one request
    /// each, with `answer(request head)`; the heads go to the receiver.
    fn origin(n: usize, answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..n {
                let Ok((mut s, _)) = listener.accept() else { return };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let reply = answer(&head);
                let _ = tx.send(head);
                let _ = s.write_all(&reply);
            }
        });
        (base, rx)
    }

    fn reply(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            .into_bytes()
    }

    fn path_of(head: &str) -> String {
        head.split_whitespace().nth(1).unwrap_or("").to_string()
    }

    fn fetcher(patterns: &[&str], allow_private: bool, max_bytes: u64, timeout: Duration) -> OriginFetcher {
        let patterns = patterns.iter().map(|p| p.parse::<UrlPattern>().unwrap()).collect();
        OriginFetcher::new(Arc::new(FetchPolicy { patterns, allow_private }), FetchLimits { max_bytes, timeout })
    }

    fn local(allow_private: bool) -> OriginFetcher {
        fetcher(&["http://127.0.0.1:*/*"], allow_private, 1 << 20, Duration::from_secs(5))
    }

    fn full(r: Result<OriginResponse, OriginError>) -> FetchedPage {
        match r {
            Ok(OriginResponse::Full(page)) => page,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fetches_a_page_with_its_headers() {
        let (base, heads) = origin(1, |_| {
            let h = "Content-Type: text/html\r\nCache-Control: public, max-age=60, s-maxage=120\r\nAge: 20\r\n\
                     ETag: \"v1\"\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
            reply("200 OK", h, "hello")
        });
        let page = full(local(true).fetch(&format!("{base}/a/../p?q=1#frag"), None));
        assert_eq!(page.status, 200);
        assert_eq!(page.final_url, format!("{base}/p?q=1"));
        assert_eq!(page.content_type.as_deref(), Some("text/html"));
        assert_eq!(&page.body[..], b"hello");
        assert_eq!(page.freshness, Freshness { max_age: Some(Duration::from_secs(100)), ..Freshness::default() });
        assert_eq!(page.validators.etag.as_deref(), Some("\"v1\""));
        assert_eq!(page.validators.last_modified.as_deref(), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        let head = heads.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(head.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("if-none-match"), "{head}");
    }

    #[test]
    fn private_origin_is_forbidden_without_fetch_private() {
        let (base, _heads) = origin(1, |_| reply("200 OK", "", "secret"));
        let got = local(false).fetch(&format!("{base}/"), None);
        assert!(matches!(&got, Err(OriginError::Forbidden(why)) if why.contains("127.0.0.1")), "{got:?}");
        // A name resolving to loopback too: the resolver, not the URL, decides.
        let port = base.rsplit(':').next().unwrap();
        let by_name = fetcher(&["http://localhost:*/*"], false, 1 << 20, Duration::from_secs(5));
        let got = by_name.fetch(&format!("http://localhost:{port}/"), None);
        assert!(matches!(&got, Err(OriginError::Forbidden(_))), "{got:?}");
    }

    #[test]
    fn follows_redirects_to_the_final_url() {
        let (base, _heads) = origin(4, |head| match path_of(head).as_str() {
            "/a" => reply("302 Found", "Location: /dir/b\r\n", ""),
            "/dir/b" => reply("301 Moved Permanently", "Location: c?x=1\r\n", ""),
            "/dir/c?x=1" => reply("307 Temporary Redirect", "Location: ../d\r\n", ""),
            "/d" => reply("200 OK", "", "done"),
            _ => reply("404 Not Found", "", ""),
        });
        let page = full(local(true).fetch(&format!("{base}/a"), None));
        assert_eq!(page.final_url, format!("{base}/d"));
        assert_eq!(&page.body[..], b"done");
    }

    #[test]
    fn redirect_to_a_disallowed_url_is_refused() {
        let (base, heads) = origin(2, |head| match path_of(head).as_str() {
            "/ok/a" => reply("302 Found", "Location: /secret\r\n", ""),
            _ => reply("302 Found", "Location: http://evil.invalid/\r\n", ""),
        });
        let f = fetcher(&["http://127.0.0.1:*/ok/*"], true, 1 << 20, Duration::from_secs(5));
        let got = f.fetch(&format!("{base}/ok/a"), None);
        assert!(matches!(&got, Err(OriginError::NotAllowed(why)) if why.contains("/secret")), "{got:?}");
        assert!(heads.recv_timeout(Duration::from_secs(5)).is_ok());
        // The disallowed URL was never asked for.
        assert!(heads.recv_timeout(Duration::from_millis(200)).is_err());
        assert!(matches!(f.fetch(&format!("{base}/secret"), None), Err(OriginError::NotAllowed(_))));
        assert!(matches!(f.fetch("http://evil.invalid/", None), Err(OriginError::NotAllowed(_))));
    }

    #[test]
    fn too_many_redirects_is_an_error() {
        let (base, _heads) = origin(MAX_REDIRECTS + 1, |_| reply("302 Found", "Location: /loop\r\n", ""));
        let got = local(true).fetch(&format!("{base}/loop"), None);
        assert!(matches!(&got, Err(OriginError::Other(why)) if why.contains("redirects")), "{got:?}");
    }

    #[test]
    fn error_statuses_are_errors() {
        let (base, _heads) = origin(2, |head| match path_of(head).as_str() {
            "/missing" => reply("404 Not Found", "", "nothing here"),
            _ => reply("304 Not Modified", "", ""),
        });
        let got = local(true).fetch(&format!("{base}/missing"), None);
        assert_eq!(got.unwrap_err(), OriginError::Status(404));
        assert_eq!(OriginError::Status(404).to_string(), "HTTP 404");
        // A 304 to a request without validators makes no sense.
        assert_eq!(local(true).fetch(&format!("{base}/x"), None).unwrap_err(), OriginError::Status(304));
    }

    #[test]
    fn unreachable_origin() {
        // A port nobody listens on: bind, learn it, close.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let got = local(true).fetch(&format!("http://127.0.0.1:{port}/"), None);
        assert_eq!(got.unwrap_err().to_string(), "origin unreachable: connection refused");
    }

    #[test]
    fn conditional_request_gets_not_modified() {
        let (base, heads) = origin(1, |head| {
            if head.to_ascii_lowercase().contains("if-none-match: \"v1\"") {
                reply("304 Not Modified", "Cache-Control: max-age=60\r\n", "")
            } else {
                reply("200 OK", "ETag: \"v2\"\r\n", "changed")
            }
        });
        let sent =
            Validators { etag: Some("\"v1\"".into()), last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT".into()) };
        match local(true).fetch(&format!("{base}/p"), Some(&sent)) {
            Ok(OriginResponse::NotModified { freshness, validators }) => {
                assert_eq!(freshness.and_then(|f| f.max_age), Some(Duration::from_secs(60)));
                assert_eq!(validators, sent);
            }
            other => panic!("{other:?}"),
        }
        let head = heads.recv_timeout(Duration::from_secs(5)).unwrap().to_ascii_lowercase();
        assert!(head.contains("if-modified-since: sun, 06 nov 1994 08:49:37 gmt"), "{head}");
    }

    #[test]
    fn a_304_without_lifetime_headers_leaves_the_stored_lifetime() {
        let (base, _heads) = origin(1, |_| reply("304 Not Modified", "ETag: \"v1\"\r\n", ""));
        let sent = Validators { etag: Some("\"v1\"".into()), last_modified: None };
        match local(true).fetch(&format!("{base}/p"), Some(&sent)) {
            Ok(OriginResponse::NotModified { freshness, validators }) => {
                assert_eq!(freshness, None, "RFC 9111 §3.2: only the fields the 304 carries change");
                assert_eq!(validators, sent);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_page_is_refused() {
        let (base, _heads) = origin(2, |head| match path_of(head).as_str() {
            "/sized" => reply("200 OK", "", &"x".repeat(5000)),
            _ => format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}", "x".repeat(5000)).into_bytes(),
        });
        let f = fetcher(&["http://127.0.0.1:*/*"], true, 1000, Duration::from_secs(5));
        assert_eq!(f.fetch(&format!("{base}/sized"), None).unwrap_err(), OriginError::TooLarge(1000));
        assert_eq!(f.fetch(&format!("{base}/unsized"), None).unwrap_err(), OriginError::TooLarge(1000));
    }

    #[test]
    fn slow_origin_hits_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else { return };
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
            // One byte every 100 ms: 100 s for the page; the deadline is 1 s.
            for _ in 0..1000 {
                if s.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let f = fetcher(&["http://127.0.0.1:*/*"], true, 1 << 20, Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(f.fetch(&format!("{base}/"), None).unwrap_err(), OriginError::Timeout);
        assert!(start.elapsed() < Duration::from_secs(4), "gave up after {:?}", start.elapsed());
    }

    #[test]
    fn the_deadline_covers_all_redirects() {
        // Each hop takes 300 ms; ten of them would take 3 s; the deadline is 1 s.
        let (base, _heads) = origin(MAX_REDIRECTS + 1, |_| {
            std::thread::sleep(Duration::from_millis(300));
            reply("302 Found", "Location: /again\r\n", "")
        });
        let f = fetcher(&["http://127.0.0.1:*/*"], true, 1 << 20, Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(f.fetch(&format!("{base}/again"), None).unwrap_err(), OriginError::Timeout);
        assert!(start.elapsed() < Duration::from_secs(2), "gave up after {:?}", start.elapsed());
    }

    fn headers(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn reads_cache_control_as_a_shared_cache() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(freshness(&headers(&[]), 0), Freshness::default());
        assert_eq!(freshness(&headers(&[("cache-control", "max-age=10")]), 0).max_age, secs(10));
        assert_eq!(freshness(&headers(&[("cache-control", "max-age=10, s-maxage=20")]), 0).max_age, secs(20));
        assert_eq!(freshness(&headers(&[("cache-control", "Max-Age=\"30\"")]), 0).max_age, secs(30));
        assert_eq!(freshness(&headers(&[("cache-control", "max-age=x")]), 0).max_age, secs(0));
        assert_eq!(freshness(&headers(&[("cache-control", "max-age=99999999999999999999")]), 0).max_age, secs(1 << 31));
        assert_eq!(
            freshness(&headers(&[("cache-control", "max-age=10"), ("cache-control", "max-age=99")]), 0).max_age,
            secs(10)
        );
        assert_eq!(freshness(&headers(&[("cache-control", "max-age=10"), ("age", "4")]), 0).max_age, secs(6));
        assert_eq!(freshness(&headers(&[("cache-control", "max-age=10"), ("age", "40")]), 0).max_age, secs(0));
        assert!(freshness(&headers(&[("cache-control", "private, max-age=10")]), 0).no_store);
        assert!(freshness(&headers(&[("cache-control", "no-store")]), 0).no_store);
        assert!(freshness(&headers(&[("vary", "accept, *")]), 0).no_store);
        assert!(!freshness(&headers(&[("vary", "accept-encoding")]), 0).no_store);
        let quoted = freshness(&headers(&[("cache-control", "no-cache=\"set-cookie, x\", max-age=5")]), 0);
        assert!(quoted.no_cache && !quoted.no_store);
        assert_eq!(quoted.max_age, secs(5));
    }

    #[test]
    fn reads_expires_against_date() {
        let secs = |s| Some(Duration::from_secs(s));
        let date = ("date", "Sun, 06 Nov 1994 08:49:37 GMT");
        let h = headers(&[date, ("expires", "Sun, 06 Nov 1994 09:49:37 GMT")]);
        assert_eq!(freshness(&h, 0).max_age, secs(3600));
        // max-age wins over Expires.
        let h = headers(&[date, ("expires", "Sun, 06 Nov 1994 09:49:37 GMT"), ("cache-control", "max-age=7")]);
        assert_eq!(freshness(&h, 0).max_age, secs(7));
        assert_eq!(freshness(&headers(&[date, ("expires", "0")]), 0).max_age, secs(0));
        assert_eq!(freshness(&headers(&[date, ("expires", "Sat, 05 Nov 1994 08:49:37 GMT")]), 0).max_age, secs(0));
        // Without Date, our clock.
        let h = headers(&[("expires", "Thu, 01 Jan 1970 00:01:40 GMT")]);
        assert_eq!(freshness(&h, 40).max_age, secs(60));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"), Some(1_709_164_800));
        for bad in ["", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "Sun, 06 Nov 1994 08:49:37 UTC"] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn resolves_relative_locations() {
        let base = ParsedUrl::parse("https://h:8443/a/b?q").unwrap();
        assert_eq!(resolve_location(&base, "http://o/x"), "http://o/x");
        assert_eq!(resolve_location(&base, "//o/x"), "https://o/x");
        assert_eq!(resolve_location(&base, "/x"), "https://h:8443/x");
        assert_eq!(resolve_location(&base, "x"), "https://h:8443/a/x");
        assert_eq!(resolve_location(&base, "?r"), "https://h:8443/a/b?r");
        assert_eq!(resolve_location(&base, "../x"), "https://h:8443/a/../x");
        assert_eq!(ParsedUrl::parse(&resolve_location(&base, "../../x")).unwrap().to_key(), "https://h:8443/x");
    }
}
