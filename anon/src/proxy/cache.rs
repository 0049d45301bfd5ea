//! The server's cache of fetched pages: bounded in bytes and entries,
//! least recently used out first, reuse as a shared cache allows (RFC 9111).
//!
//! Kept simple: only responses with an explicit lifetime or a validator
//! are stored (no heuristic freshness, RFC 9111 §4.2.2), a stale entry is
//! never served without revalidation, and the only request headers that
//! ever differ are the conditional ones, so `Vary` needs no secondary keys
//! (`Vary: *` makes a response [`Freshness::no_store`]).
//!
//! Used from one thread; the clock is passed in.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anon_proto::page::Page;

use super::origin::{FetchedPage, Freshness, Validators};

/// Entries kept at most, whatever their size: bounds the index.
pub const MAX_ENTRIES: usize = 65_536;

/// A stored response.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The body and its SHA-256.
    pub page: Arc<Page>,
    /// The status it came with.
    pub status: u16,
    /// The URL after redirects.
    pub final_url: String,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// What to revalidate with.
    pub validators: Validators,
    /// How long it may be reused.
    pub freshness: Freshness,
    stored_at: Instant,
}

impl Entry {
    /// An entry for a page received at `now`. Hashes the body: call it on
    /// the fetch thread, not the server loop.
    pub fn from_fetched(fetched: FetchedPage, now: Instant) -> Entry {
        Entry {
            page: fetched.hashed.unwrap_or_else(|| Arc::new(Page::new(fetched.body))),
            status: fetched.status,
            final_url: fetched.final_url,
            content_type: fetched.content_type,
            validators: fetched.validators,
            freshness: fetched.freshness,
            stored_at: now,
        }
    }

    /// When the response was received (or last revalidated).
    pub fn stored_at(&self) -> Instant {
        self.stored_at
    }

    /// Its age at `now` (RFC 9111 §4.2.3, the origin's `Age` already taken
    /// off [`Freshness::max_age`]).
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// Whether it may be served at `now` without asking the origin.
    pub fn is_fresh(&self, now: Instant) -> bool {
        !self.freshness.no_cache && self.freshness.max_age.is_some_and(|m| self.age(now) < m)
    }

    /// Whether storing it can ever be of use: not forbidden, and either
    /// fresh for a while or revalidatable.
    fn storable(&self, now: Instant) -> bool {
        !self.freshness.no_store && (self.is_fresh(now) || !self.validators.is_empty())
    }

    /// Bytes it holds: the body and the strings kept with it (the key is
    /// counted by the cache).
    fn cost(&self) -> u64 {
        let strings = self.final_url.len()
            + self.content_type.as_ref().map_or(0, String::len)
            + self.validators.etag.as_ref().map_or(0, String::len)
            + self.validators.last_modified.as_ref().map_or(0, String::len);
        self.page.len().saturating_add(strings as u64)
    }
}

/// The answer to a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Serve it as it is.
    Fresh(Arc<Entry>),
    /// Revalidate it with its validators first (RFC 9111 §4.3); serve it
    /// on a 304 after [`Cache::refresh`].
    Stale(Arc<Entry>),
    /// Fetch the page.
    Miss,
}

#[derive(Debug)]
struct Slot {
    entry: Arc<Entry>,
    /// Position in the LRU order.
    used: u64,
    /// Bytes counted for it, key included.
    cost: u64,
}

/// Pages by URL (in the normal form of `ParsedUrl::to_key`).
#[derive(Debug)]
pub struct Cache {
    max_bytes: u64,
    max_entries: usize,
    bytes: u64,
    slots: HashMap<Arc<str>, Slot>,
    /// Use counter → key, oldest first.
    lru: BTreeMap<u64, Arc<str>>,
    clock: u64,
}

impl Cache {
    /// A cache of at most `max_bytes` and [`MAX_ENTRIES`] entries.
    pub fn new(max_bytes: u64) -> Cache {
        Cache::with_limits(max_bytes, MAX_ENTRIES)
    }

    /// A cache of at most `max_bytes` and `max_entries` entries.
    pub fn with_limits(max_bytes: u64, max_entries: usize) -> Cache {
        Cache {
            max_bytes,
            max_entries: max_entries.max(1),
            bytes: 0,
            slots: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Bytes held: bodies, keys and the strings kept with them.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Looks `key` up at `now`. A stale entry without validators cannot be
    /// revalidated, so it is dropped and reported as a miss.
    pub fn lookup(&mut self, key: &str, now: Instant) -> Lookup {
        let Some(slot) = self.slots.get(key) else { return Lookup::Miss };
        let entry = Arc::clone(&slot.entry);
        if entry.is_fresh(now) {
            self.touch(key);
            Lookup::Fresh(entry)
        } else if !entry.validators.is_empty() {
            self.touch(key);
            Lookup::Stale(entry)
        } else {
            self.remove(key);
            Lookup::Miss
        }
    }

    /// Stores `entry` under `key`, replacing any older one and evicting the
    /// least recently used until it fits. False (and any older entry
    /// dropped, as the new response supersedes it) when it is not storable
    /// at `now` (no-store or private, or neither fresh nor revalidatable)
    /// or larger than the whole cache.
    pub fn insert(&mut self, key: String, entry: Arc<Entry>, now: Instant) -> bool {
        self.remove(&key);
        let cost = entry.cost().saturating_add(key.len() as u64);
        if !entry.storable(now) || cost > self.max_bytes {
            return false;
        }
        while self.bytes.saturating_add(cost) > self.max_bytes || self.slots.len() >= self.max_entries {
            let Some((_, oldest)) = self.lru.pop_first() else { break };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(slot.cost);
            }
        }
        let key: Arc<str> = key.into();
        self.clock += 1;
        self.lru.insert(self.clock, Arc::clone(&key));
        self.slots.insert(key, Slot { entry, used: self.clock, cost });
        self.bytes = self.bytes.saturating_add(cost);
        true
    }

    /// After a 304 for `key` (RFC 9111 §4.3.4): the body stays, lifetime
    /// and validators are the new ones, the age starts again at `now`.
    /// Returns the updated entry, or None when `key` is not held. Should the
    /// 304 say no-store, the entry is returned for this one use but dropped.
    pub fn refresh(
        &mut self,
        key: &str,
        freshness: Freshness,
        validators: Validators,
        now: Instant,
    ) -> Option<Arc<Entry>> {
        let slot = self.slots.get_mut(key)?;
        let mut entry = Entry::clone(&slot.entry);
        entry.freshness = freshness;
        entry.validators = validators;
        entry.stored_at = now;
        let entry = Arc::new(entry);
        if entry.freshness.no_store {
            self.remove(key);
            return Some(entry);
        }
        let cost = entry.cost().saturating_add(key.len() as u64);
        self.bytes = self.bytes.saturating_sub(slot.cost).saturating_add(cost);
        slot.cost = cost;
        slot.entry = Arc::clone(&entry);
        self.touch(key);
        // New validators may be longer; keep within the bound.
        while self.bytes > self.max_bytes && self.slots.len() > 1 {
            let Some((_, oldest)) = self.lru.pop_first() else { break };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(slot.cost);
            }
        }
        Some(entry)
    }

    /// Drops `key`'s entry, if any.
    pub fn remove(&mut self, key: &str) {
        if let Some(slot) = self.slots.remove(key) {
            self.lru.remove(&slot.used);
            self.bytes = self.bytes.saturating_sub(slot.cost);
        }
    }

    /// Makes `key` the most recently used.
    fn touch(&mut self, key: &str) {
        let Some((k, slot)) = self.slots.get_key_value(key) else { return };
        let k = Arc::clone(k);
        let old = slot.used;
        self.clock += 1;
        self.lru.remove(&old);
        self.lru.insert(self.clock, k);
        if let Some(slot) = self.slots.get_mut(key) {
            slot.used = self.clock;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const URL: &str = "http://a/";

    fn entry(body: usize, max_age: Option<u64>, etag: Option<&str>, now: Instant) -> Arc<Entry> {
        let fetched = FetchedPage {
            status: 200,
            final_url: URL.into(),
            content_type: None,
            body: Bytes::from(vec![b'x'; body]),
            hashed: None,
            freshness: Freshness { max_age: max_age.map(Duration::from_secs), ..Freshness::default() },
            validators: Validators { etag: etag.map(str::to_string), last_modified: None },
        };
        Arc::new(Entry::from_fetched(fetched, now))
    }

    /// Bytes an entry of `body` bytes under a key of `key` bytes costs.
    fn cost(body: usize, key: &str) -> u64 {
        (body + URL.len() + key.len()) as u64
    }

    #[test]
    fn fresh_until_max_age_then_stale_then_refreshed() {
        let t0 = Instant::now();
        let mut cache = Cache::new(1 << 20);
        assert!(cache.insert("k".into(), entry(10, Some(60), Some("\"v1\""), t0), t0));
        assert!(matches!(cache.lookup("k", t0 + Duration::from_secs(59)), Lookup::Fresh(_)));
        let Lookup::Stale(stale) = cache.lookup("k", t0 + Duration::from_secs(60)) else { panic!() };
        assert_eq!(stale.validators.etag.as_deref(), Some("\"v1\""));
        let t1 = t0 + Duration::from_secs(100);
        let fresh = Freshness { max_age: Some(Duration::from_secs(30)), ..Freshness::default() };
        let v2 = Validators { etag: Some("\"v2\"".into()), last_modified: None };
        let refreshed = cache.refresh("k", fresh, v2.clone(), t1).unwrap();
        assert_eq!(refreshed.validators, v2);
        assert_eq!(refreshed.stored_at(), t1);
        assert!(Arc::ptr_eq(&refreshed.page, &stale.page), "the body is kept");
        let Lookup::Fresh(now) = cache.lookup("k", t1 + Duration::from_secs(29)) else { panic!() };
        assert_eq!(now.validators, v2);
        assert!(matches!(cache.lookup("k", t1 + Duration::from_secs(30)), Lookup::Stale(_)));
        assert!(cache.refresh("other", fresh, Validators::default(), t1).is_none());
        assert_eq!(cache.bytes(), cost(10, "k") + 4);
    }

    #[test]
    fn stale_without_validators_is_a_miss() {
        let t0 = Instant::now();
        let mut cache = Cache::new(1 << 20);
        assert!(cache.insert("k".into(), entry(10, Some(5), None, t0), t0));
        assert!(matches!(cache.lookup("k", t0 + Duration::from_secs(4)), Lookup::Fresh(_)));
        assert!(matches!(cache.lookup("k", t0 + Duration::from_secs(5)), Lookup::Miss));
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }

    #[test]
    fn only_storable_responses_are_stored() {
        let t0 = Instant::now();
        let mut cache = Cache::new(1 << 20);
        let mut no_store = Entry::clone(&entry(10, Some(60), Some("\"v\""), t0));
        no_store.freshness.no_store = true;
        assert!(!cache.insert("k".into(), Arc::new(no_store), t0));
        // Neither a lifetime nor a validator: no heuristic freshness.
        assert!(!cache.insert("k".into(), entry(10, None, None, t0), t0));
        assert!(!cache.insert("k".into(), entry(10, Some(0), None, t0), t0));
        assert!(cache.is_empty());
        // no-cache with a validator: stored, always revalidated.
        let mut no_cache = Entry::clone(&entry(10, Some(60), Some("\"v\""), t0));
        no_cache.freshness.no_cache = true;
        assert!(cache.insert("k".into(), Arc::new(no_cache), t0));
        assert!(matches!(cache.lookup("k", t0), Lookup::Stale(_)));
        // A validator alone is enough.
        assert!(cache.insert("v".into(), entry(10, None, Some("\"v\""), t0), t0));
        assert!(matches!(cache.lookup("v", t0), Lookup::Stale(_)));
        // A later no-store response drops the older entry.
        let mut no_store = Entry::clone(&entry(10, Some(60), None, t0));
        no_store.freshness.no_store = true;
        assert!(!cache.insert("v".into(), Arc::new(no_store), t0));
        assert!(matches!(cache.lookup("v", t0), Lookup::Miss));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let t0 = Instant::now();
        let mut cache = Cache::new(3 * cost(100, "a"));
        for key in ["a", "b", "c"] {
            assert!(cache.insert(key.into(), entry(100, Some(60), None, t0), t0));
        }
        assert_eq!(cache.bytes(), 3 * cost(100, "a"));
        // Using a makes b the oldest.
        assert!(matches!(cache.lookup("a", t0), Lookup::Fresh(_)));
        assert!(cache.insert("d".into(), entry(100, Some(60), None, t0), t0));
        assert!(matches!(cache.lookup("b", t0), Lookup::Miss));
        for key in ["a", "c", "d"] {
            assert!(matches!(cache.lookup(key, t0), Lookup::Fresh(_)), "{key}");
        }
        // One big entry pushes out as many as it needs.
        assert!(cache.insert("e".into(), entry(200, Some(60), None, t0), t0));
        assert_eq!(cache.len(), 2);
        assert!(matches!(cache.lookup("d", t0), Lookup::Fresh(_)));
        assert!(cache.bytes() <= 3 * cost(100, "a"));
        // Replacing an entry counts its bytes once.
        assert!(cache.insert("d".into(), entry(10, Some(60), None, t0), t0));
        assert_eq!(cache.bytes(), cost(200, "e") + cost(10, "d"));
    }

    #[test]
    fn oversized_entry_is_refused() {
        let t0 = Instant::now();
        let mut cache = Cache::new(1000);
        assert!(cache.insert("small".into(), entry(10, Some(60), None, t0), t0));
        assert!(!cache.insert("big".into(), entry(1000, Some(60), None, t0), t0));
        assert!(matches!(cache.lookup("small", t0), Lookup::Fresh(_)), "nothing evicted for it");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn entry_count_is_bounded() {
        let t0 = Instant::now();
        let mut cache = Cache::with_limits(1 << 20, 2);
        for key in ["a", "b", "c"] {
            assert!(cache.insert(key.into(), entry(1, Some(60), None, t0), t0));
        }
        assert_eq!(cache.len(), 2);
        assert!(matches!(cache.lookup("a", t0), Lookup::Miss));
        assert_eq!(cache.bytes(), 2 * cost(1, "b"));
    }
}
