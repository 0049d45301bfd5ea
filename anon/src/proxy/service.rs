//! The proxy beside the server's socket loop: it takes the URLs the secure
//! core asks for, answers from the cache when it can, fetches from the
//! origin on a blocking worker otherwise (one fetch per URL however many
//! clients wait for it), and hands each page or refusal back to the core.
//! It runs on the loop's thread, so the cache needs no lock; only the
//! fetches run elsewhere.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use anon_proto::Refusal;
use anon_proto::page::{Body, Page, Stream, StreamView};
use anon_proto::secure::{FetchRequest, FetchedPage, PageMeta};
use tokio::sync::mpsc;

use super::cache::{Cache, Entry, Lookup};
use super::origin::{BodySink, Head, OriginError, OriginFetcher, OriginResponse};
use super::policy::FetchPolicy;

/// What the loop asks of the endpoint it drives: the secure core's two
/// calls.
pub trait Fetches {
    /// The next URL a client asked for.
    fn poll_fetch(&mut self) -> Option<FetchRequest>;
    /// The answer to request `id`.
    fn fetch_done(&mut self, now: Instant, id: u64, result: Result<FetchedPage, Refusal>);
    /// Streams handed over grew or ended.
    fn streams_grew(&mut self, now: Instant);
}

impl Fetches for anon_proto::secure::SecureServer {
    fn poll_fetch(&mut self) -> Option<FetchRequest> {
        anon_proto::secure::SecureServer::poll_fetch(self)
    }
    fn fetch_done(&mut self, now: Instant, id: u64, result: Result<FetchedPage, Refusal>) {
        anon_proto::secure::SecureServer::fetch_done(self, now, id, result);
    }
    fn streams_grew(&mut self, now: Instant) {
        anon_proto::secure::SecureServer::streams_grew(self, now);
    }
}

/// Counters of the proxy, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests answered from the cache without asking the origin.
    pub hits: u64,
    /// Requests that waited for a fetch another request had started.
    pub joined: u64,
    /// Requests to the origin (full and conditional).
    pub origin_requests: u64,
    /// Conditional requests the origin answered 304 Not Modified.
    pub revalidated: u64,
    /// Requests refused (policy, origin failure, memory).
    pub refused: u64,
    /// Requests refused because the pages in memory were at their budget.
    pub over_budget: u64,
}

/// Bounds on what fetching may hold.
#[derive(Debug, Clone, Copy)]
pub struct ProxyLimits {
    /// Bytes the cache keeps.
    pub cache_bytes: u64,
    /// Bytes of fetched pages in memory at once, cached or not (a page no
    /// longer cached lives on while a connection serves it), counting each
    /// fetch under way at its largest size. A fetch that would pass it is
    /// refused as busy; cached pages are still served.
    pub memory_bytes: u64,
    /// Largest page (the fetcher's limit), for the count above.
    pub max_page: u64,
    /// Origin fetches under way at once; more wait their turn.
    pub concurrency: usize,
    /// Origin fetches one source may have started and not finished (under
    /// way or waiting); beyond, refused as busy. Cache hits and requests
    /// that join a fetch under way do not count.
    pub per_source: usize,
    /// How long a stream may wait for its turn, and then how long it may
    /// run, before it ends as timed out whatever its fetch does (the
    /// fetch's own deadline plus a margin): a hung fetch holds neither its
    /// clients nor its URL.
    pub stream_deadline: std::time::Duration,
}

/// What a fetch's worker tells the loop.
enum Event {
    /// Some stream grew (one event for any number of pieces: the loop
    /// clears the flag when it takes it).
    Grew,
    /// The fetch ended.
    Done(Done),
}

/// The worker's side of a fetch: the body goes into the stream its
/// clients were answered with.
struct Sink {
    stream: Arc<Stream>,
    tx: mpsc::UnboundedSender<Event>,
    grew: Arc<AtomicBool>,
    max_page: u64,
}

impl BodySink for Sink {
    fn start(&self, head: &Head) -> Option<Arc<Stream>> {
        let meta = PageMeta {
            status: head.status,
            content_type: head.content_type.clone().unwrap_or_default(),
            final_url: head.final_url.clone(),
        };
        let expected = head.content_length.unwrap_or(0).min(self.max_page);
        self.stream.reserve(usize::try_from(expected).unwrap_or(0));
        self.stream.start(&meta);
        self.grew();
        Some(Arc::clone(&self.stream))
    }

    fn grew(&self) {
        if !self.grew.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Event::Grew);
        }
    }
}

/// A finished fetch, from the worker.
struct Done {
    /// Which fetch of `key` (one past its deadline may have been replaced).
    fetch: u64,
    key: String,
    url: String,
    started: Instant,
    /// The page (hashed on the worker), a 304, or why not.
    outcome: Result<Fetched, OriginError>,
}

enum Fetched {
    Full(Arc<Entry>),
    NotModified(Option<super::origin::Freshness>, super::origin::Validators),
}

/// A fetch waiting for its turn: its number, key, stream and stale entry.
type Queued = (u64, String, Arc<Stream>, Option<Arc<Entry>>);

/// A fetch under way.
struct InFlight {
    /// Numbers the fetch, to match its end.
    fetch: u64,
    /// When it ends as timed out if it has not ended.
    deadline: Instant,
    /// What its requests were answered with (later ones join it).
    stream: Arc<Stream>,
    /// The entry a conditional request revalidates.
    stale: Option<Arc<Entry>>,
    /// Requests it serves.
    clients: usize,
}

/// The proxy: policy, cache, fetches in flight.
pub struct Proxy {
    policy: Arc<FetchPolicy>,
    fetcher: Arc<OriginFetcher>,
    cache: Cache,
    /// By cache key, the fetch under way.
    in_flight: HashMap<String, InFlight>,
    /// Fetches waiting for a turn (their keys are in `in_flight`).
    queued: VecDeque<Queued>,
    /// By cache key, the source that started its fetch; and per source,
    /// how many it started that are not finished.
    started_by: HashMap<String, std::net::IpAddr>,
    per_source: HashMap<std::net::IpAddr, usize>,
    running: usize,
    /// Every fetched page, while anything (the cache, a connection) holds
    /// it: the memory budget counts them.
    live: Vec<(Weak<Page>, u64)>,
    /// Streams cut short, while a connection holds them: their bytes stay
    /// until then, counted too.
    failed: Vec<(Weak<Stream>, u64)>,
    next_fetch: u64,
    limits: ProxyLimits,
    done_tx: mpsc::UnboundedSender<Event>,
    done_rx: mpsc::UnboundedReceiver<Event>,
    /// Set by a worker that appended to a stream, cleared by the loop.
    grew: Arc<AtomicBool>,
    stats: ProxyStats,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("cached", &self.cache.len())
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The refusal a client is told for a failed fetch: the reason travels, the
/// details stay in the server's log.
pub fn refusal(e: &OriginError) -> Refusal {
    match e {
        OriginError::NotAllowed(_) | OriginError::Forbidden(_) => Refusal::NotAllowed,
        OriginError::Unreachable(_) => Refusal::Unreachable,
        OriginError::Timeout => Refusal::Timeout,
        OriginError::Status(s) => Refusal::Status(*s),
        OriginError::TooLarge(_) => Refusal::TooLarge,
        OriginError::Other(_) => Refusal::Failed,
    }
}

fn served(entry: &Entry) -> FetchedPage {
    FetchedPage { body: Body::Whole(Arc::clone(&entry.page)), meta: Some(meta_of(entry)) }
}

fn meta_of(entry: &Entry) -> PageMeta {
    PageMeta {
        status: entry.status,
        content_type: entry.content_type.clone().unwrap_or_default(),
        final_url: entry.final_url.clone(),
    }
}

/// The answer for a request that joins a fetch: its stream, which starts
/// with what the origin says (docs/PROTOCOL.md §9.7).
fn streamed(stream: &Arc<Stream>) -> FetchedPage {
    FetchedPage { body: Body::Streaming(StreamView::whole(Arc::clone(stream))), meta: None }
}

impl Proxy {
    /// A proxy under `policy`, fetching with `fetcher`, within `limits`.
    pub fn new(policy: Arc<FetchPolicy>, fetcher: OriginFetcher, limits: ProxyLimits) -> Proxy {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Proxy {
            policy,
            fetcher: Arc::new(fetcher),
            cache: Cache::new(limits.cache_bytes),
            in_flight: HashMap::new(),
            queued: VecDeque::new(),
            started_by: HashMap::new(),
            per_source: HashMap::new(),
            running: 0,
            live: Vec::new(),
            failed: Vec::new(),
            next_fetch: 0,
            limits,
            done_tx,
            done_rx,
            grew: Arc::new(AtomicBool::new(false)),
            stats: ProxyStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// Takes every request the endpoint has: answered at once from the
    /// cache or by the policy, or joined to a fetch (started if needed).
    /// Needs the tokio runtime (the fetch runs on its blocking pool).
    pub fn take(&mut self, now: Instant, endpoint: &mut dyn Fetches) {
        while let Some(FetchRequest { id, url, source }) = endpoint.poll_fetch() {
            let parsed = match self.policy.check_url(&url) {
                Ok(p) => p,
                Err(why) => {
                    tracing::info!("refused {url:?}: {why}");
                    self.stats.refused += 1;
                    endpoint.fetch_done(now, id, Err(Refusal::NotAllowed));
                    continue;
                }
            };
            let key = parsed.to_key();
            if let Some(f) = self.in_flight.get_mut(&key) {
                self.stats.joined += 1;
                f.clients += 1;
                endpoint.fetch_done(now, id, Ok(streamed(&f.stream)));
                continue;
            }
            let stale = match self.cache.lookup(&key, now) {
                Lookup::Fresh(entry) => {
                    self.stats.hits += 1;
                    tracing::debug!("{key}: from the cache");
                    endpoint.fetch_done(now, id, Ok(served(&entry)));
                    continue;
                }
                Lookup::Stale(entry) => Some(entry),
                Lookup::Miss => None,
            };
            if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source {
                tracing::info!("refused {key} for {source}: {} fetches of its own under way", self.limits.per_source);
                self.stats.refused += 1;
                endpoint.fetch_done(now, id, Err(Refusal::Busy));
                continue;
            }
            if self.held_bytes() > self.limits.memory_bytes.saturating_sub(self.limits.max_page) {
                tracing::warn!("refused {key}: the pages in memory are at the budget (--fetch-memory)");
                self.stats.over_budget += 1;
                self.stats.refused += 1;
                endpoint.fetch_done(now, id, Err(Refusal::Busy));
                continue;
            }
            // Answered at once: the client's handshake completes while the
            // origin is asked, and the page goes on as it arrives.
            let max_page = usize::try_from(self.limits.max_page).unwrap_or(usize::MAX);
            let stream = Arc::new(Stream::with_limit(0, max_page));
            endpoint.fetch_done(now, id, Ok(streamed(&stream)));
            self.next_fetch += 1;
            let fetch = self.next_fetch;
            let deadline = now + self.limits.stream_deadline;
            let f = InFlight { fetch, deadline, stream: Arc::clone(&stream), stale: stale.clone(), clients: 1 };
            self.in_flight.insert(key.clone(), f);
            *self.per_source.entry(source).or_default() += 1;
            self.started_by.insert(key.clone(), source);
            self.queued.push_back((fetch, key, stream, stale));
            self.start_queued(now);
        }
    }

    /// Bytes of fetched pages still in memory plus, for each fetch under
    /// way or waiting, the largest page it may bring. Forgets pages nothing
    /// holds any more.
    fn held_bytes(&mut self) -> u64 {
        self.live.retain(|(page, _)| page.strong_count() > 0);
        self.failed.retain(|(stream, _)| stream.strong_count() > 0);
        let live: u64 = self.live.iter().map(|&(_, n)| n).chain(self.failed.iter().map(|&(_, n)| n)).sum();
        let coming = (self.running + self.queued.len()) as u64;
        live.saturating_add(coming.saturating_mul(self.limits.max_page))
    }

    fn start_queued(&mut self, now: Instant) {
        while self.running < self.limits.concurrency.max(1) {
            let Some((fetch, key, stream, stale)) = self.queued.pop_front() else { break };
            // Its run has its own deadline, from now.
            match self.in_flight.get_mut(&key) {
                Some(f) if f.fetch == fetch => f.deadline = now + self.limits.stream_deadline,
                // Timed out while it waited: nothing to fetch for.
                _ => continue,
            }
            self.running += 1;
            self.start(now, fetch, key, stream, stale);
        }
    }

    fn start(&mut self, now: Instant, fetch: u64, key: String, stream: Arc<Stream>, stale: Option<Arc<Entry>>) {
        self.stats.origin_requests += 1;
        let fetcher = Arc::clone(&self.fetcher);
        let tx = self.done_tx.clone();
        let url = key.clone();
        let sink = Sink { stream, tx: tx.clone(), grew: Arc::clone(&self.grew), max_page: self.limits.max_page };
        tokio::task::spawn_blocking(move || {
            let validators = stale.as_ref().map(|e| e.validators.clone());
            // A panic must not wedge the URL: its waiters get an answer.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fetcher.fetch_into(&url, validators.as_ref(), &sink).map(|r| match r {
                    // Hashed here, off the loop's thread.
                    OriginResponse::Full(page) => Fetched::Full(Arc::new(Entry::from_fetched(page, Instant::now()))),
                    OriginResponse::NotModified { freshness, validators } => {
                        Fetched::NotModified(freshness, validators)
                    }
                })
            }))
            .unwrap_or_else(|_| Err(OriginError::Other("the fetch failed unexpectedly".into())));
            // A stream cut short (or never begun) ends with why: its
            // clients keep nothing.
            if let Err(e) = &outcome {
                sink.stream.fail(refusal(e));
            }
            let _ = tx.send(Event::Done(Done { fetch, key, url, started: now, outcome }));
        });
    }

    /// Removes the fetch of `key` and what counts it against its source.
    fn forget(&mut self, key: &str) -> Option<InFlight> {
        let f = self.in_flight.remove(key)?;
        if let Some(source) = self.started_by.remove(key) {
            if let std::collections::hash_map::Entry::Occupied(mut n) = self.per_source.entry(source) {
                *n.get_mut() = n.get().saturating_sub(1);
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
        Some(f)
    }

    /// The earliest stream deadline, for the loop's wake-up.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.values().map(|f| f.deadline).min()
    }

    /// Ends every stream past its deadline as timed out (its clients are
    /// told; a fetch still running is forgotten, and its end ignored).
    /// With none due it costs a look at the fetches under way, no more.
    pub fn handle_timeout(&mut self, now: Instant, endpoint: &mut dyn Fetches) {
        let late: Vec<String> =
            self.in_flight.iter().filter(|(_, f)| f.deadline <= now).map(|(k, _)| k.clone()).collect();
        if late.is_empty() {
            return;
        }
        for key in late {
            let Some(f) = self.forget(&key) else { continue };
            tracing::info!("{key}: no end within {:?}; timed out", self.limits.stream_deadline);
            self.stats.refused += f.clients as u64;
            f.stream.fail(Refusal::Timeout);
            self.failed.push((Arc::downgrade(&f.stream), f.stream.held_bytes()));
        }
        self.queued.retain(|(fetch, key, _, _)| self.in_flight.get(key).is_some_and(|f| f.fetch == *fetch));
        endpoint.streams_grew(now);
    }

    /// A fetch that has finished, if any, without waiting: the loop takes
    /// these every turn, so that a flood of datagrams (which keeps the
    /// socket ready) cannot hold completions back.
    pub fn poll_done(&mut self) -> Option<FetchResult> {
        self.done_rx.try_recv().ok().map(FetchResult)
    }

    /// Completes when a fetch has finished; hand it to
    /// [`finish`](Self::finish).
    pub async fn next_done(&mut self) -> FetchResult {
        match self.done_rx.recv().await {
            Some(done) => FetchResult(done),
            // We hold a sender: never closed.
            None => std::future::pending().await,
        }
    }

    /// Takes what a worker said: streams grew (the endpoint told), or a
    /// fetch finished (its stream ended, its page stored).
    pub fn finish(&mut self, now: Instant, FetchResult(event): FetchResult, endpoint: &mut dyn Fetches) {
        let done = match event {
            Event::Grew => {
                self.grew.store(false, Ordering::Release);
                endpoint.streams_grew(now);
                return;
            }
            Event::Done(done) => done,
        };
        self.running = self.running.saturating_sub(1);
        self.start_queued(now);
        // One past its deadline was ended and forgotten already.
        if self.in_flight.get(&done.key).is_none_or(|f| f.fetch != done.fetch) {
            return;
        }
        let Some(InFlight { stream, stale, clients, .. }) = self.forget(&done.key) else { return };
        let took = now.saturating_duration_since(done.started);
        match done.outcome {
            Ok(Fetched::Full(entry)) => {
                // Streamed as it came; a body read whole ends it here.
                if !stream.has_ended() && stream.finish_with(&meta_of(&entry), Arc::clone(&entry.page)).is_none() {
                    stream.fail(Refusal::Failed);
                }
                self.live.push((Arc::downgrade(&entry.page), entry.page.len()));
                // A redirected page is not kept under the URL asked for: the
                // redirect's own lifetime governs that URL (RFC 9111 §4),
                // and the final page's may be far longer.
                let stored =
                    entry.final_url == done.key && self.cache.insert(done.key.clone(), Arc::clone(&entry), now);
                tracing::info!(
                    "fetched {} ({} bytes, HTTP {}) in {:.0?} for {clients} client(s){}",
                    done.url,
                    entry.page.len(),
                    entry.status,
                    took,
                    if stored { "" } else { "; not cached" }
                );
            }
            Ok(Fetched::NotModified(freshness, validators)) => {
                self.stats.revalidated += 1;
                // Evicted meanwhile: the entry we revalidated goes back in.
                if let Some(stale) =
                    stale.as_ref().filter(|_| matches!(self.cache.lookup(&done.key, now), Lookup::Miss))
                {
                    self.cache.insert(done.key.clone(), Arc::clone(stale), now);
                }
                // A 304 without lifetime headers keeps the stored lifetime.
                let stored = stale.as_ref().map(|e| e.freshness).unwrap_or_default();
                let refreshed = self.cache.refresh(&done.key, freshness.unwrap_or(stored), validators, now).or(stale);
                match refreshed {
                    Some(entry) => {
                        tracing::info!("revalidated {} (304 Not Modified) in {took:.0?}", done.url);
                        // The stream ends as the cached page, no copy.
                        if stream.finish_with(&meta_of(&entry), Arc::clone(&entry.page)).is_none() {
                            stream.fail(Refusal::Failed);
                        }
                    }
                    None => stream.fail(Refusal::Failed),
                }
            }
            Err(e) => {
                tracing::info!("cannot fetch {}: {e}", done.url);
                self.stats.refused += clients as u64;
                stream.fail(refusal(&e));
                self.failed.push((Arc::downgrade(&stream), stream.held_bytes()));
            }
        }
        // Its end (the trailer) goes out.
        endpoint.streams_grew(now);
    }
}

/// What a fetch's worker said, opaque to the loop.
pub struct FetchResult(Event);

impl std::fmt::Debug for FetchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.0 {
            Event::Grew => "grew".into(),
            Event::Done(d) => format!("done {}", d.url),
        };
        f.debug_tuple("FetchResult").field(&what).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::fetch::FetchLimits;
    use crate::proxy::policy::UrlPattern;

    /// The core's side, recorded.
    #[derive(Default)]
    struct Core {
        asks: VecDeque<FetchRequest>,
        answers: Vec<(u64, Result<FetchedPage, Refusal>)>,
        grew: usize,
    }

    impl Fetches for Core {
        fn poll_fetch(&mut self) -> Option<FetchRequest> {
            self.asks.pop_front()
        }
        fn fetch_done(&mut self, _: Instant, id: u64, result: Result<FetchedPage, Refusal>) {
            self.answers.push((id, result));
        }
        fn streams_grew(&mut self, _: Instant) {
            self.grew += 1;
        }
    }

    /// The page an answer serves, once complete.
    fn page_of(body: &Body) -> Option<Arc<Page>> {
        match body {
            Body::Whole(p) => Some(Arc::clone(p)),
            Body::Streaming(s) => s.stream.page(),
        }
    }

    /// An origin on 127.0.0.1 serving `len` bytes at any path (slowly, so
    /// that requests overlap); returns its base URL and its request count.
    fn origin(len: usize) -> (String, Arc<Mutex<usize>>) {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let base = format!("http://{}", server.server_addr().to_ip().unwrap());
        let count = Arc::new(Mutex::new(0));
        let seen = Arc::clone(&count);
        std::thread::spawn(move || {
            for request in server.incoming_requests() {
                *seen.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(100));
                let _ = request.respond(tiny_http::Response::from_data(vec![1u8; len]));
            }
        });
        (base, count)
    }

    fn proxy(base: &str, limits: ProxyLimits) -> Proxy {
        let pattern: UrlPattern = format!("{base}/*").parse().unwrap();
        let policy = Arc::new(FetchPolicy { patterns: vec![pattern], allow_private: true });
        let fetcher = OriginFetcher::new(
            Arc::clone(&policy),
            FetchLimits { max_bytes: limits.max_page, timeout: Duration::from_secs(10) },
        );
        Proxy::new(policy, fetcher, limits)
    }

    /// Runs the proxy until `core` has `n` answers and no fetch is left
    /// under way (10 s at most).
    async fn answers(p: &mut Proxy, core: &mut Core, n: usize) {
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        p.take(Instant::now(), core);
        while core.answers.len() < n || p.running > 0 {
            tokio::select! {
                done = p.next_done() => p.finish(Instant::now(), done, core),
                () = &mut deadline => panic!("only {} of {n} answers", core.answers.len()),
            }
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    const LIMITS: ProxyLimits = ProxyLimits {
        cache_bytes: 1 << 20,
        memory_bytes: 64 << 20,
        max_page: 1 << 20,
        concurrency: 4,
        per_source: 16,
        stream_deadline: Duration::from_secs(15),
    };
    const HERE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn concurrent_requests_for_one_url_share_one_fetch_and_refusals_cost_nothing() {
        let (base, count) = origin(5000);
        let mut p = proxy(&base, LIMITS);
        let mut core = Core::default();
        for id in 1..=3 {
            core.asks.push_back(FetchRequest { id, url: format!("{base}/a"), source: HERE });
        }
        core.asks.push_back(FetchRequest { id: 4, url: "http://elsewhere.example/".into(), source: HERE });
        rt().block_on(answers(&mut p, &mut core, 4));
        assert_eq!(*count.lock().unwrap(), 1, "one origin request for three clients");
        let pages: Vec<_> = core.answers.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        assert_eq!(pages.len(), 3);
        let first = page_of(&pages[0].body).expect("complete");
        assert!(pages.iter().all(|f| page_of(&f.body).is_some_and(|p| Arc::ptr_eq(&p, &first))));
        assert_eq!(first.len(), 5000);
        // The answers came as the body started; its growth and end were told.
        assert!(pages.iter().all(|f| f.body.is_streaming()));
        assert!(core.grew >= 1);
        assert!(core.answers.iter().any(|(id, r)| *id == 4 && *r.as_ref().unwrap_err() == Refusal::NotAllowed));
        assert_eq!((p.stats().joined, p.stats().origin_requests), (2, 1));
    }

    #[test]
    fn fetches_beyond_the_memory_budget_are_refused_as_busy_until_pages_are_let_go() {
        let (base, _) = origin(1000);
        // Room for two pages of the largest size; one fetch at a time.
        let limits = ProxyLimits {
            cache_bytes: 0,
            memory_bytes: 2 << 20,
            max_page: 1 << 20,
            concurrency: 1,
            per_source: 16,
            stream_deadline: Duration::from_secs(15),
        };
        let mut p = proxy(&base, limits);
        let mut core = Core::default();
        for id in 1..=3 {
            core.asks.push_back(FetchRequest { id, url: format!("{base}/{id}"), source: HERE });
        }
        rt().block_on(answers(&mut p, &mut core, 3));
        let busy: Vec<u64> = core.answers.iter().filter(|(_, r)| r.is_err()).map(|(id, _)| *id).collect();
        assert_eq!(busy, [3], "{:?}", core.answers.iter().map(|(id, r)| (id, r.is_ok())).collect::<Vec<_>>());
        assert_eq!(p.stats().over_budget, 1);
        // The pages are still being served: the budget counts them.
        core.asks.push_back(FetchRequest { id: 4, url: format!("{base}/4"), source: HERE });
        rt().block_on(answers(&mut p, &mut core, 4));
        assert!(core.answers[3].1.is_ok(), "1000-byte pages leave room");
        core.answers.clear();
        assert_eq!(p.held_bytes(), 0, "nothing holds the pages any more");
    }
}

#[cfg(test)]
mod deadline_tests {
    use std::time::Duration;

    use super::*;
    use crate::fetch::FetchLimits;
    use crate::proxy::policy::UrlPattern;

    #[derive(Default)]
    struct Core {
        asks: VecDeque<FetchRequest>,
        answers: Vec<(u64, Result<FetchedPage, Refusal>)>,
    }

    impl Fetches for Core {
        fn poll_fetch(&mut self) -> Option<FetchRequest> {
            self.asks.pop_front()
        }
        fn fetch_done(&mut self, _: Instant, id: u64, result: Result<FetchedPage, Refusal>) {
            self.answers.push((id, result));
        }
        fn streams_grew(&mut self, _: Instant) {}
    }

    /// A fetch that hangs (an origin that never answers within the
    /// fetcher's own 10 s) ends at the stream deadline as timed out: its
    /// client is told, the URL is free for a new fetch, and the memory
    /// budget still counts what the cut stream holds while it is held.
    #[test]
    fn a_hung_fetch_ends_at_the_stream_deadline_and_frees_its_url() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let base = format!("http://{}", server.server_addr().to_ip().unwrap());
        // Takes requests, answers none (they are dropped when the test ends).
        let held = std::thread::spawn(move || server.incoming_requests().take(2).collect::<Vec<_>>());
        let pattern: UrlPattern = format!("{base}/*").parse().unwrap();
        let policy = Arc::new(FetchPolicy { patterns: vec![pattern], allow_private: true });
        let fetcher = OriginFetcher::new(
            Arc::clone(&policy),
            FetchLimits { max_bytes: 1 << 20, timeout: Duration::from_secs(10) },
        );
        let limits = ProxyLimits {
            cache_bytes: 1 << 20,
            memory_bytes: 64 << 20,
            max_page: 1 << 20,
            concurrency: 4,
            per_source: 16,
            stream_deadline: Duration::from_millis(300),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut p = Proxy::new(policy, fetcher, limits);
            let mut core = Core::default();
            let here = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
            core.asks.push_back(FetchRequest { id: 1, url: format!("{base}/slow"), source: here });
            let t0 = Instant::now();
            p.take(t0, &mut core);
            let Some((1, Ok(FetchedPage { body: Body::Streaming(view), meta: None }))) = core.answers.first().cloned()
            else {
                panic!("answered at once with a stream: {:?}", core.answers.len())
            };
            let deadline = p.poll_timeout().expect("a deadline");
            assert!(deadline <= t0 + Duration::from_millis(300));
            p.handle_timeout(deadline, &mut core);
            let body = Body::Streaming(view);
            let (n, end) = body.available();
            assert_eq!(end, Some(n), "the stream has ended");
            let mut bytes = Vec::new();
            body.copy(0, n, &mut bytes);
            let trailer = anon_proto::page::StreamEnd::decode(&bytes[bytes.len() - anon_proto::page::TRAILER_LEN..]);
            assert_eq!(trailer, Some(anon_proto::page::StreamEnd::Failed(Refusal::Timeout)));
            assert_eq!(p.poll_timeout(), None, "nothing left to time out");
            // The URL asked again: a new fetch, not the hung one's stream.
            core.asks.push_back(FetchRequest { id: 2, url: format!("{base}/slow"), source: here });
            p.take(deadline, &mut core);
            let Some((2, Ok(FetchedPage { body: Body::Streaming(again), .. }))) = core.answers.get(1).cloned() else {
                panic!("a second answer")
            };
            let Body::Streaming(first) = body else { unreachable!() };
            assert!(!Arc::ptr_eq(&first.stream, &again.stream), "a fresh stream");
            assert_eq!(p.stats().origin_requests, 2);
        });
        drop(held);
    }
}
