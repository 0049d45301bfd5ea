//! The proxy beside the server's socket loop: it takes the URLs the secure
//! core asks for, answers from the cache when it can, fetches from the
//! origin on a blocking worker otherwise (one fetch per URL however many
//! clients wait for it), and hands each page or refusal back to the core.
//! It runs on the loop's thread, so the cache needs no lock; only the
//! fetches run elsewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anon_proto::Refusal;
use anon_proto::secure::{FetchRequest, FetchedPage, PageMeta};
use tokio::sync::mpsc;

use super::cache::{Cache, Entry, Lookup};
use super::origin::{OriginError, OriginFetcher, OriginResponse};
use super::policy::FetchPolicy;

/// What the loop asks of the endpoint it drives: the secure core's two
/// calls.
pub trait Fetches {
    /// The next URL a client asked for.
    fn poll_fetch(&mut self) -> Option<FetchRequest>;
    /// The answer to request `id`.
    fn fetch_done(&mut self, now: Instant, id: u64, result: Result<FetchedPage, Refusal>);
}

impl Fetches for anon_proto::secure::SecureServer {
    fn poll_fetch(&mut self) -> Option<FetchRequest> {
        anon_proto::secure::SecureServer::poll_fetch(self)
    }
    fn fetch_done(&mut self, now: Instant, id: u64, result: Result<FetchedPage, Refusal>) {
        anon_proto::secure::SecureServer::fetch_done(self, now, id, result);
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
    /// Requests refused (policy, origin failure).
    pub refused: u64,
}

/// A finished fetch, from the worker.
struct Done {
    key: String,
    url: String,
    started: Instant,
    /// The page (hashed on the worker), a 304, or why not.
    outcome: Result<Fetched, OriginError>,
}

enum Fetched {
    Full(Arc<Entry>),
    NotModified(super::origin::Freshness, super::origin::Validators),
}

/// The proxy: policy, cache, fetches in flight.
pub struct Proxy {
    policy: Arc<FetchPolicy>,
    fetcher: Arc<OriginFetcher>,
    cache: Cache,
    /// By cache key: the requests waiting for its fetch, and the stale
    /// entry a conditional request revalidates.
    in_flight: HashMap<String, (Vec<u64>, Option<Arc<Entry>>)>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
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
    FetchedPage {
        page: Arc::clone(&entry.page),
        meta: PageMeta {
            status: entry.status,
            content_type: entry.content_type.clone().unwrap_or_default(),
            final_url: entry.final_url.clone(),
        },
    }
}

impl Proxy {
    /// A proxy under `policy`, fetching with `fetcher`, caching up to
    /// `cache_bytes` of pages.
    pub fn new(policy: Arc<FetchPolicy>, fetcher: OriginFetcher, cache_bytes: u64) -> Proxy {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Proxy {
            policy,
            fetcher: Arc::new(fetcher),
            cache: Cache::new(cache_bytes),
            in_flight: HashMap::new(),
            done_tx,
            done_rx,
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
        while let Some(FetchRequest { id, url }) = endpoint.poll_fetch() {
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
            if let Some((waiting, _)) = self.in_flight.get_mut(&key) {
                waiting.push(id);
                self.stats.joined += 1;
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
            self.start(now, key, stale.clone());
            self.in_flight.insert(parsed.to_key(), (vec![id], stale));
        }
    }

    fn start(&mut self, now: Instant, key: String, stale: Option<Arc<Entry>>) {
        self.stats.origin_requests += 1;
        let fetcher = Arc::clone(&self.fetcher);
        let tx = self.done_tx.clone();
        let url = key.clone();
        tokio::task::spawn_blocking(move || {
            let validators = stale.as_ref().map(|e| e.validators.clone());
            let outcome = fetcher.fetch(&url, validators.as_ref()).map(|r| match r {
                // Hashed here, off the loop's thread.
                OriginResponse::Full(page) => Fetched::Full(Arc::new(Entry::from_fetched(page, Instant::now()))),
                OriginResponse::NotModified { freshness, validators } => Fetched::NotModified(freshness, validators),
            });
            let _ = tx.send(Done { key, url, started: now, outcome });
        });
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

    /// Stores a finished fetch and answers everyone who waited for it.
    pub fn finish(&mut self, now: Instant, FetchResult(done): FetchResult, endpoint: &mut dyn Fetches) {
        let Some((waiting, stale)) = self.in_flight.remove(&done.key) else { return };
        let took = now.saturating_duration_since(done.started);
        let result = match done.outcome {
            Ok(Fetched::Full(entry)) => {
                let stored = self.cache.insert(done.key.clone(), Arc::clone(&entry), now);
                tracing::info!(
                    "fetched {} ({} bytes, HTTP {}) in {:.0?} for {} client(s){}",
                    done.url,
                    entry.page.len(),
                    entry.status,
                    took,
                    waiting.len(),
                    if stored { "" } else { "; not cached" }
                );
                Ok(served(&entry))
            }
            Ok(Fetched::NotModified(freshness, validators)) => {
                self.stats.revalidated += 1;
                let refreshed = self.cache.refresh(&done.key, freshness, validators, now).or(stale);
                match refreshed {
                    Some(entry) => {
                        tracing::info!("revalidated {} (304 Not Modified) in {took:.0?}", done.url);
                        Ok(served(&entry))
                    }
                    None => Err(Refusal::Failed),
                }
            }
            Err(e) => {
                tracing::info!("cannot fetch {}: {e}", done.url);
                Err(refusal(&e))
            }
        };
        if result.is_err() {
            self.stats.refused += waiting.len() as u64;
        }
        for id in waiting {
            endpoint.fetch_done(now, id, result.clone());
        }
    }
}

/// A finished fetch, opaque to the loop.
pub struct FetchResult(Done);

impl std::fmt::Debug for FetchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchResult").field("url", &self.0.url).finish_non_exhaustive()
    }
}
