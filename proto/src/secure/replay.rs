//! The first messages a server has seen, against replay (docs/PROTOCOL.md
//! §8.3, rule 5): two generations of a Bloom filter over the client's
//! ephemeral key, in memory fixed at start whatever arrives.
//!
//! An exact set would have to grow with the handshakes of the last ten
//! minutes or, once full, refuse every new one: a client that holds the
//! bridge line could then fill it from spoofed sources and lock every
//! honest client out. A Bloom filter never forgets a message it holds (no
//! replay passes) and never fills up; a flood only raises the chance that a
//! fresh first message is taken for a replay, and a client whose message is
//! dropped so sends another with a new ephemeral key on its timer. At the
//! default size that chance stays below 0.3% even at twice the first
//! messages one core can read (docs/PROTOCOL.md §8.3, rule 5; the estimate
//! is [`ReplayFilter::false_positive_rate`]).

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit};

/// Bit positions set per message: the optimum, ln 2 * bits per entry,
/// for about 10 bits an entry; at the default's worst load (28 bits an
/// entry) more would do little better.
const PROBES: u32 = 7;

/// The largest generation, 512 MiB (256 MiB on 32-bit): a bound on what a setting can
/// allocate.
pub(crate) const MAX_BITS: usize = 1 << (if usize::BITS > 32 { 32 } else { 31 });

/// Two generations of a Bloom filter (a "rotating" filter): entries go into
/// the current one; every `period` the current one becomes the previous one
/// and the previous one is cleared. An entry is therefore remembered for at
/// least one period and at most two.
pub(crate) struct ReplayFilter {
    /// AES-128 under a random key as the hash (a PRF): peers choose the
    /// ephemeral keys, and must not choose where their bits fall.
    hash: Aes128,
    generations: [Generation; 2],
    /// Bits a generation, less one (a power of two less one).
    mask: u64,
    /// Index of the current generation.
    current: usize,
    /// When the current generation began, and how long each lasts.
    began_ms: u64,
    period_ms: u64,
}

struct Generation {
    words: Vec<u64>,
    /// Bits set, for the estimate of false positives.
    set: u64,
    /// Entries added.
    entries: u64,
}

impl Generation {
    fn new(bits: usize) -> Generation {
        // Zeroed memory the OS maps lazily: pages cost only when touched.
        Generation { words: vec![0; bits / 64], set: 0, entries: 0 }
    }

    fn clear(&mut self) {
        if self.set > 0 {
            self.words.fill(0);
        }
        self.set = 0;
        self.entries = 0;
    }

    fn fill(&self) -> f64 {
        self.set as f64 / (self.words.len() as f64 * 64.0)
    }
}

impl std::fmt::Debug for ReplayFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayFilter").field("entries", &self.entries()).finish_non_exhaustive()
    }
}

impl ReplayFilter {
    /// A filter of `bits` bits a generation (rounded up to a power of two,
    /// between 64 and [`MAX_BITS`]), generations of `period_ms`, starting
    /// at `now_ms`.
    pub(crate) fn new(key: &[u8; 16], bits: usize, period_ms: u64, now_ms: u64) -> ReplayFilter {
        let bits = bits.clamp(64, MAX_BITS).next_power_of_two();
        ReplayFilter {
            hash: Aes128::new(&(*key).into()),
            generations: [Generation::new(bits), Generation::new(bits)],
            mask: bits as u64 - 1,
            current: 0,
            began_ms: now_ms,
            period_ms: period_ms.max(1),
        }
    }

    /// Moves the generations on to `now_ms`.
    pub(crate) fn expire(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.began_ms);
        if elapsed < self.period_ms {
            return;
        }
        if elapsed >= self.period_ms.saturating_mul(2) {
            // Quiet for two periods: nothing is left to remember.
            for g in &mut self.generations {
                g.clear();
            }
            self.began_ms = now_ms;
            return;
        }
        self.current ^= 1;
        if let Some(g) = self.generations.get_mut(self.current) {
            g.clear();
        }
        self.began_ms = self.began_ms.saturating_add(self.period_ms);
    }

    /// The bit positions of `key` (double hashing, Kirsch and Mitzenmacher).
    fn positions(&self, key: &[u8; 16]) -> impl Iterator<Item = usize> + use<> {
        let mut block = aes::Block::from(*key);
        self.hash.encrypt_block(&mut block);
        let block: [u8; 16] = block.into();
        let (lo, hi) = block.split_at(8);
        let h1 = u64::from_le_bytes(lo.try_into().unwrap_or_default());
        let h2 = u64::from_le_bytes(hi.try_into().unwrap_or_default()) | 1;
        let mask = self.mask;
        (0..u64::from(PROBES)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
    }

    /// Whether `key` was (probably) added in the last one to two periods:
    /// never false for one that was.
    pub(crate) fn contains(&self, key: &[u8; 16]) -> bool {
        self.generations
            .iter()
            .any(|g| self.positions(key).all(|p| g.words.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0)))
    }

    /// Adds `key` to the current generation.
    pub(crate) fn insert(&mut self, key: &[u8; 16]) {
        let positions = self.positions(key);
        let Some(g) = self.generations.get_mut(self.current) else { return };
        for p in positions {
            if let Some(w) = g.words.get_mut(p / 64) {
                let bit = 1 << (p % 64);
                if *w & bit == 0 {
                    *w |= bit;
                    g.set += 1;
                }
            }
        }
        g.entries += 1;
    }

    /// Entries added in the two generations remembered.
    pub(crate) fn entries(&self) -> u64 {
        self.generations.iter().map(|g| g.entries).sum()
    }

    /// The chance that a fresh key is taken for one seen, from how full the
    /// two generations are: 1 - (1 - f1^k)(1 - f2^k).
    pub(crate) fn false_positive_rate(&self) -> f64 {
        let miss = |g: &Generation| 1.0 - g.fill().powi(PROBES as i32);
        1.0 - self.generations.iter().map(miss).product::<f64>()
    }

    /// Bytes of filter, fixed at start.
    #[cfg(test)]
    pub(crate) fn memory(&self) -> usize {
        self.generations.iter().map(|g| g.words.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn key(i: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&i.to_le_bytes());
        k[8..].copy_from_slice(&(!i).to_le_bytes());
        k
    }

    #[test]
    fn every_key_added_is_found_until_it_expires() {
        let mut f = ReplayFilter::new(&[7; 16], 1 << 14, 1_000, 0);
        for i in 0..500 {
            f.insert(&key(i));
        }
        assert!((0..500).all(|i| f.contains(&key(i))), "a replay passed");
        // Still there through the next generation, gone after two.
        f.expire(1_999);
        assert!((0..500).all(|i| f.contains(&key(i))));
        f.expire(2_000);
        let left = (0..500).filter(|&i| f.contains(&key(i))).count();
        assert_eq!(left, 0, "kept past two periods");
        assert_eq!(f.entries(), 0);
    }

    #[test]
    fn an_entry_added_late_in_a_generation_lives_a_whole_period_more() {
        let mut f = ReplayFilter::new(&[1; 16], 1 << 12, 1_000, 0);
        f.expire(999);
        f.insert(&key(1));
        f.expire(1_000);
        f.insert(&key(2));
        f.expire(1_999);
        assert!(f.contains(&key(1)) && f.contains(&key(2)));
        f.expire(2_000);
        assert!(!f.contains(&key(1)) && f.contains(&key(2)));
        // A long silence clears both at once.
        f.expire(10_000);
        assert!(!f.contains(&key(2)));
    }

    #[test]
    fn false_positives_match_the_estimate_and_stay_rare_at_the_design_load() {
        // 14 bits an entry, as the default holds a million entries.
        let bits = 1 << 18;
        let n = bits / 14;
        let mut f = ReplayFilter::new(&[3; 16], bits, 1_000, 0);
        for i in 0..n as u64 {
            f.insert(&key(i));
        }
        let trials = 200_000u64;
        let hits = (0..trials).filter(|i| f.contains(&key(1 << 40 | i))).count() as f64 / trials as f64;
        let estimate = f.false_positive_rate();
        assert!(estimate < 0.002, "estimate {estimate}");
        assert!(hits < 3.0 * estimate + 1e-4, "measured {hits}, estimated {estimate}");
        // A flood 5x the design load: many false positives, no lost entry.
        for i in 0..(4 * n) as u64 {
            f.insert(&key(1 << 50 | i));
        }
        assert!(f.false_positive_rate() > 0.2);
        assert!((0..n as u64).all(|i| f.contains(&key(i))));
    }

    #[test]
    fn sizes_round_up_to_a_power_of_two_and_a_saturated_filter_says_so() {
        assert_eq!(ReplayFilter::new(&[9; 16], 0, 1_000, 0).memory(), 2 * 64 / 8);
        assert_eq!(ReplayFilter::new(&[9; 16], 100, 1_000, 0).memory(), 2 * 128 / 8);
        let mut f = ReplayFilter::new(&[9; 16], 1 << 16, 1_000, 0);
        assert_eq!(f.memory(), 2 * (1 << 16) / 8);
        for i in 0..100_000 {
            f.insert(&key(i));
        }
        assert!(f.false_positive_rate() > 0.99, "saturated, and says so");
        // A period too long to add up: no overflow, nothing forgotten.
        let mut f = ReplayFilter::new(&[9; 16], 1 << 10, u64::MAX, u64::MAX - 5);
        f.insert(&key(1));
        f.expire(u64::MAX);
        assert!(f.contains(&key(1)));
    }
}
