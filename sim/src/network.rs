//! The virtual link: seeded loss, duplication, delay, jitter and reordering.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

/// Impairments of the link, the same in both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way delay every datagram gets.
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter`: reorders datagrams sent closer
    /// together than it.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by `reorder_delay` more, so
    /// that later ones overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Bottleneck rate of each sender's link, bytes per second (`None`:
    /// unlimited). Datagrams queue behind each other at this rate.
    pub rate: Option<u64>,
    /// Bytes the bottleneck queue holds; datagrams that would exceed it
    /// are dropped (tail drop).
    pub queue: u64,
    /// Bursty loss (Gilbert-Elliott): probability of entering the lossy
    /// state per datagram, of leaving it, and the loss rate inside it.
    pub burst: Option<(f64, f64, f64)>,
}

impl LinkConfig {
    /// A perfect link with the given one-way delay.
    pub fn clean(delay: Duration) -> Self {
        LinkConfig {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            rate: None,
            queue: u64::MAX,
            burst: None,
        }
    }

    /// A bottleneck of `mbit` Mbit/s with a one-way `delay` and a queue of
    /// one bandwidth-delay product (round trip).
    pub fn bottleneck(mbit: u64, delay: Duration) -> Self {
        let rate = mbit * 1_000_000 / 8;
        LinkConfig {
            rate: Some(rate),
            queue: (rate as f64 * (delay * 2).as_secs_f64()) as u64,
            ..LinkConfig::clean(delay)
        }
    }

    /// Every impairment at once: `loss`, with duplication, jitter and
    /// reordering of a tenth of the datagrams.
    pub fn hostile(loss: f64) -> Self {
        LinkConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            loss,
            duplicate: 0.05,
            reorder: 0.1,
            reorder_delay: Duration::from_millis(30),
            rate: None,
            queue: u64::MAX,
            burst: None,
        }
    }
}

/// A datagram on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender.
    pub from: SocketAddr,
    /// Receiver.
    pub to: SocketAddr,
    /// UDP payload.
    pub bytes: Vec<u8>,
}

/// Decides whether to drop a datagram, given it and how many datagrams were
/// sent before it: targeted loss for tests ("the first FIN|ACK").
pub type DropFilter = Box<dyn FnMut(&Datagram, u64) -> bool>;

/// A datagram waiting for its delivery time; equal times keep send order.
#[derive(Debug)]
struct Queued {
    at: Instant,
    order: u64,
    datagram: Datagram,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// The link: datagrams in flight, ordered by delivery time.
pub struct Network {
    config: LinkConfig,
    rng: StdRng,
    in_flight: BinaryHeap<Reverse<Queued>>,
    counter: u64,
    /// When each sender's bottleneck is free again.
    busy_until: HashMap<SocketAddr, Instant>,
    /// In the lossy state of the bursty-loss model.
    in_burst: bool,
    filter: Option<DropFilter>,
    /// Datagrams offered to the link.
    pub sent: u64,
    /// Datagrams lost (randomly or by the filter).
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Of the drops, those at a full bottleneck queue.
    pub queue_drops: u64,
    /// When set, every datagram offered to the link, bytes and all (before
    /// any loss): what an observer on the path sees.
    pub record: Option<Vec<Datagram>>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("config", &self.config)
            .field("in_flight", &self.in_flight.len())
            .field("sent", &self.sent)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// A link with the given impairments, drawing from `rng`.
    pub fn new(config: LinkConfig, rng: StdRng) -> Self {
        Network {
            config,
            rng,
            in_flight: BinaryHeap::new(),
            counter: 0,
            busy_until: HashMap::new(),
            in_burst: false,
            filter: None,
            sent: 0,
            dropped: 0,
            duplicated: 0,
            queue_drops: 0,
            record: None,
        }
    }

    /// Installs a targeted-loss filter, applied before random loss.
    pub fn set_filter(&mut self, filter: DropFilter) {
        self.filter = Some(filter);
    }

    /// Offers a datagram to the link at `now`.
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let d = Datagram { from, to, bytes: bytes.to_vec() };
        if let Some(record) = self.record.as_mut() {
            record.push(d.clone());
        }
        let index = self.sent;
        self.sent += 1;
        if let Some(filter) = self.filter.as_mut() {
            if filter(&d, index) {
                self.dropped += 1;
                return;
            }
        }
        if self.rng.random_bool(self.config.loss.clamp(0.0, 1.0)) {
            self.dropped += 1;
            return;
        }
        if let Some((enter, leave, loss)) = self.config.burst {
            let flip = if self.in_burst { leave } else { enter };
            if self.rng.random_bool(flip.clamp(0.0, 1.0)) {
                self.in_burst = !self.in_burst;
            }
            if self.in_burst && self.rng.random_bool(loss.clamp(0.0, 1.0)) {
                self.dropped += 1;
                return;
            }
        }
        // The bottleneck: serialise behind what is queued, drop at the tail.
        let mut now = now;
        if let Some(rate) = self.config.rate.filter(|&r| r > 0) {
            let free = self.busy_until.get(&from).copied().unwrap_or(now).max(now);
            let queued = ((free - now).as_secs_f64() * rate as f64) as u64;
            if queued + bytes.len() as u64 > self.config.queue {
                self.dropped += 1;
                self.queue_drops += 1;
                return;
            }
            let done = free + Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
            self.busy_until.insert(from, done);
            now = done;
        }
        if self.rng.random_bool(self.config.duplicate.clamp(0.0, 1.0)) {
            self.duplicated += 1;
            self.enqueue(now, d.clone());
        }
        self.enqueue(now, d);
    }

    fn enqueue(&mut self, now: Instant, d: Datagram) {
        let c = self.config;
        let mut delay = c.delay;
        if !c.jitter.is_zero() {
            delay += c.jitter.mul_f64(self.rng.random::<f64>());
        }
        if self.rng.random_bool(c.reorder.clamp(0.0, 1.0)) {
            delay += c.reorder_delay;
        }
        self.counter += 1;
        self.in_flight.push(Reverse(Queued { at: now + delay, order: self.counter, datagram: d }));
    }

    /// When the next datagram arrives, if any is in flight.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse(q)| q.at)
    }

    /// The next datagram due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        if self.next_delivery()? > now {
            return None;
        }
        self.in_flight.pop().map(|Reverse(q)| q.datagram)
    }

    /// Datagrams in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
