//! A proxy server under simulation: the secure server and a stand-in for
//! its driver's fetcher. A URL the server hands out is answered after a
//! virtual delay from a table of origin pages, as the real driver answers
//! from its cache or the origin; a URL the driver never answers tests the
//! core's own deadline.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anon_proto::page::{Body, Page, Stream, StreamView};
use anon_proto::secure::{FetchedPage, PageMeta, SecureServer};
use anon_proto::wire::Header;
use anon_proto::{Refusal, ServerStats};
use bytes::Bytes;

use crate::SimEndpoint;

/// What the simulated origin does for one URL.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Serves this page, with this metadata.
    Page(Arc<Page>, PageMeta),
    /// The driver refuses the request so.
    Refuse(Refusal),
    /// Never answers (a hung driver).
    Hang,
    /// Answers at once with a stream, as the driver does for a page not
    /// cached; the origin's headers and first piece come after the delay,
    /// then the rest in `pieces` equal pieces in all, one every `gap`, and
    /// the stream ends: complete, or cut short with `fail` (docs/PROTOCOL.md
    /// §9.7).
    Stream { body: Arc<Vec<u8>>, meta: PageMeta, pieces: usize, gap: Duration, fail: Option<Refusal> },
}

/// A stream being fed.
struct Feeding {
    url: String,
    stream: Arc<Stream>,
    meta: PageMeta,
    body: Arc<Vec<u8>>,
    pieces: usize,
    gap: Duration,
    fail: Option<Refusal>,
    /// Pieces appended so far, and when the next is due.
    fed: usize,
    next_at: Instant,
}

/// A [`SecureServer`] with fetching on and a simulated fetcher.
pub struct ProxySim {
    /// The server.
    pub server: SecureServer,
    /// URL to origin behaviour; anything else is refused as not allowed.
    pub origins: HashMap<String, Origin>,
    /// How long a fetch takes (virtual time).
    pub delay: Duration,
    /// Fetches in progress: when each completes, its request ID and URL.
    due: VecDeque<(Instant, u64, String)>,
    /// Every URL handed out, in order (what the origin would have seen).
    pub requested: Vec<String>,
    /// The server's public key, for clients a test adds.
    pub server_key: anon_proto::secure::PublicKey,
    feeding: Vec<Feeding>,
    /// When each stream ended.
    pub stream_ends: Vec<Instant>,
    /// Streams started: a request for a URL whose stream is still being
    /// fed joins it, as the driver's single flight does.
    pub streams_started: usize,
}

impl std::fmt::Debug for ProxySim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySim")
            .field("server", &self.server)
            .field("requested", &self.requested)
            .finish_non_exhaustive()
    }
}

impl ProxySim {
    /// Wraps `server` (built with `SecureServerConfig::fetch` on).
    pub fn new(server: SecureServer, delay: Duration) -> ProxySim {
        let server_key = server.public_key();
        ProxySim {
            server,
            origins: HashMap::new(),
            delay,
            due: VecDeque::new(),
            requested: Vec::new(),
            server_key,
            feeding: Vec::new(),
            stream_ends: Vec::new(),
            streams_started: 0,
        }
    }

    /// Serves `body` at `url` with status 200.
    pub fn add_page(&mut self, url: &str, body: Vec<u8>, content_type: &str) {
        let meta = PageMeta { status: 200, content_type: content_type.into(), final_url: url.into() };
        self.origins.insert(url.into(), Origin::Page(Arc::new(Page::new(Bytes::from(body))), meta));
    }

    fn take_requests(&mut self, now: Instant) {
        while let Some(r) = self.server.poll_fetch() {
            self.requested.push(r.url.clone());
            if let Some(f) = self.feeding.iter().find(|f| f.url == r.url) {
                let body = Body::Streaming(StreamView::whole(Arc::clone(&f.stream)));
                self.server.fetch_done(now, r.id, Ok(FetchedPage { body, meta: None }));
                continue;
            }
            if let Some(Origin::Stream { body, meta, pieces, gap, fail }) = self.origins.get(&r.url) {
                let stream = Arc::new(Stream::new(0));
                self.streams_started += 1;
                self.feeding.push(Feeding {
                    url: r.url.clone(),
                    stream: Arc::clone(&stream),
                    meta: meta.clone(),
                    body: Arc::clone(body),
                    pieces: (*pieces).max(1),
                    gap: *gap,
                    fail: *fail,
                    fed: 0,
                    next_at: now + self.delay,
                });
                self.server.fetch_done(
                    now,
                    r.id,
                    Ok(FetchedPage { body: Body::Streaming(StreamView::whole(stream)), meta: None }),
                );
                continue;
            }
            self.due.push_back((now + self.delay, r.id, r.url));
        }
    }

    fn complete_due(&mut self, now: Instant) {
        while let Some((at, id, url)) = self.due.front().cloned() {
            if at > now {
                break;
            }
            self.due.pop_front();
            let result = match self.origins.get(&url) {
                Some(Origin::Page(page, meta)) => {
                    Ok(FetchedPage { body: Body::Whole(Arc::clone(page)), meta: Some(meta.clone()) })
                }
                Some(Origin::Stream { .. }) => continue,
                Some(Origin::Refuse(why)) => Err(*why),
                Some(Origin::Hang) => continue,
                None => Err(Refusal::NotAllowed),
            };
            self.server.fetch_done(now, id, result);
        }
        self.take_requests(now);
        self.feed(now);
    }

    /// Appends the pieces due, ends the streams fed whole.
    fn feed(&mut self, now: Instant) {
        let mut grew = false;
        for f in &mut self.feeding {
            while f.fed < f.pieces && f.next_at <= now {
                let piece = f.body.len().div_ceil(f.pieces);
                let start = (f.fed * piece).min(f.body.len());
                let end = ((f.fed + 1) * piece).min(f.body.len());
                f.stream.start(&f.meta);
                f.stream.push(f.body.get(start..end).unwrap_or_default());
                f.fed += 1;
                f.next_at += f.gap;
                grew = true;
                if f.fed == f.pieces {
                    match f.fail {
                        Some(why) => f.stream.fail(why),
                        None => drop(f.stream.finish()),
                    }
                    self.stream_ends.push(now);
                }
            }
        }
        self.feeding.retain(|f| f.fed < f.pieces);
        if grew {
            self.server.streams_grew(now);
        }
    }
}

impl SimEndpoint for ProxySim {
    fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.server.handle_kind(now, from, datagram);
        self.take_requests(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.server.handle_timeout(now);
        self.complete_due(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<SocketAddr> {
        SimEndpoint::poll_transmit(&mut self.server, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let feeding = self.feeding.iter().map(|f| f.next_at).min();
        [self.server.poll_timeout(), self.due.iter().map(|d| d.0).min(), feeding].into_iter().flatten().min()
    }
    fn connection_count(&self) -> usize {
        self.server.connection_count() + self.server.fetching_count()
    }
    fn drain_events(&mut self) {
        self.server.drain_events();
    }
    fn stats(&self) -> ServerStats {
        self.server.stats()
    }
    fn sent_header(&self, datagram: &[u8]) -> Option<Header> {
        self.server.sent_header(datagram)
    }
    fn received_header(&self, datagram: &[u8]) -> Option<Header> {
        self.server.received_header(datagram)
    }
}

/// A proxy scenario: a secure server with fetching on (`tweak` adjusts its
/// settings), and one client per URL in `urls`, each asking for it; every
/// random choice is drawn from `seed`.
pub fn secure_proxy(
    seed: u64,
    link: crate::LinkConfig,
    urls: &[&str],
    delay: Duration,
    client: anon_proto::ClientConfig,
    tweak: impl FnOnce(&mut anon_proto::secure::SecureServerConfig),
) -> crate::Sim<ProxySim, anon_proto::secure::SecureClient> {
    use anon_proto::secure::{SecureClient, SecureClientConfig, SecureServerConfig, StaticSecret, WallClock};
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    let start = crate::virtual_zero();
    let clock = WallClock { at: start, unix_ms: crate::SIM_UNIX_MS };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let key = StaticSecret::generate(&mut rng);
    let mut config = SecureServerConfig::new(key.clone(), vec!["index".into()], clock);
    config.fetch = true;
    tweak(&mut config);
    let server_rng = Box::new(StdRng::seed_from_u64(rng.next_u64()));
    let pages = vec![Bytes::from_static(b"the default page")];
    let server = SecureServer::new(config, anon_proto::ServerConfig::default(), pages, None, server_rng);
    let clients = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let config = SecureClientConfig {
                server: key.public(),
                key: None,
                page: String::new(),
                url: Some((*url).into()),
                resume: None,
                clock,
            };
            let conn_rng = Box::new(StdRng::seed_from_u64(rng.next_u64()));
            crate::SimClient::new(crate::client_addr(i), SecureClient::new(config, client.clone(), conn_rng, start))
        })
        .collect();
    crate::Sim::assemble(start, ProxySim::new(server, delay), clients, link, seed)
}
