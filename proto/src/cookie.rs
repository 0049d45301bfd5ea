//! SYN cookies (the idea of RFC 4987 §3.6): under a SYN flood the server
//! answers without keeping any state, and its initial sequence number carries
//! what the connection needs, authenticated with a secret. The client's
//! handshake ACK, which echoes that number plus one, rebuilds the connection.
//!
//! The 32-bit ISN (docs/PROTOCOL.md §7):
//!
//! ```text
//!  31     30     29..27    26..23   22..0
//! epoch  fast   segment   window   MAC (23 bits)
//! ```
//!
//! - `epoch`: parity of the key generation. Keys rotate every
//!   [`ROTATION`]; a cookie is checked against the key of its parity, so it
//!   is valid for one to two rotation periods and never after.
//! - `fast`, `segment`, `window`: the negotiated mode. The segment size is
//!   rounded down to one of [`SEGMENTS`]; the client's receive window to a
//!   power of two (`window` k ≥ 1 means 2^(k+10) bytes; 0 means one segment).
//! - MAC: the first 23 bits of SHA-256(key ‖ client address ‖ client port ‖
//!   client ISN ‖ the top byte above). The input has a fixed length, so
//!   SHA-256's length extension does not apply. An observer cannot predict
//!   the ISN without the key, and a blind forger guesses one in 2^23.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::time::after;
use crate::wire::Seq;

/// How often the cookie key is replaced.
pub const ROTATION: Duration = Duration::from_secs(60);

/// Segment sizes a cookie can carry; a negotiated size is rounded down to
/// one of them.
pub const SEGMENTS: [u16; 8] = [64, 256, 512, 1000, 1200, 1232, 1280, 1440];

const MAC_BITS: u32 = 23;
const MAC_MASK: u32 = (1 << MAC_BITS) - 1;

/// What a cookie carries about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieMode {
    Baseline,
    Fast {
        /// Payload bytes per segment.
        segment: u16,
        /// The client's receive window, rounded down.
        window: u64,
    },
}

impl CookieMode {
    /// The mode a cookie can carry for a negotiated segment and window:
    /// both rounded down (baseline if the segment is below every size).
    pub(crate) fn fast(segment: u16, window: u64) -> CookieMode {
        match SEGMENTS.iter().rev().find(|&&s| s <= segment) {
            Some(&segment) => {
                CookieMode::Fast { segment, window: decode_window(encode_window(segment, window), segment) }
            }
            None => CookieMode::Baseline,
        }
    }

    /// Bits 30–23 of the cookie, shifted down: fast, segment, window.
    fn bits(self) -> u32 {
        match self {
            CookieMode::Baseline => 0,
            CookieMode::Fast { segment, window } => {
                let index = SEGMENTS.iter().position(|&s| s == segment).unwrap_or(0) as u32;
                1 << 7 | index << 4 | encode_window(segment, window)
            }
        }
    }

    fn from_bits(bits: u32) -> CookieMode {
        if bits & 1 << 7 == 0 {
            return CookieMode::Baseline;
        }
        let segment = SEGMENTS.get((bits >> 4 & 7) as usize).copied().unwrap_or(512);
        CookieMode::Fast { segment, window: decode_window(bits & 15, segment) }
    }
}

fn encode_window(segment: u16, window: u64) -> u32 {
    if window < 2048 || window < u64::from(segment) * 2 {
        return 0;
    }
    (window.ilog2() - 10).min(15)
}

fn decode_window(k: u32, segment: u16) -> u64 {
    if k == 0 { u64::from(segment) } else { 1u64 << (k + 10) }
}

/// The cookie keys: the current one and the one before.
pub(crate) struct CookieJar {
    keys: [[u8; 32]; 2],
    /// Rotations so far; its parity picks the current key.
    generation: u64,
    next_rotation: Option<Instant>,
    /// When the last cookie was made: ACKs are checked as cookies only for
    /// two rotation periods after it (the lifetime of a cookie), so outside
    /// a flood a stray ACK costs no hash, and a late handshake ACK cannot
    /// rebuild a connection long finished.
    last_made: Option<Instant>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys.
        f.debug_struct("CookieJar").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl CookieJar {
    pub(crate) fn new(rng: &mut dyn RngCore) -> Self {
        let mut keys = [[0u8; 32]; 2];
        for k in &mut keys {
            rng.fill_bytes(k);
        }
        CookieJar { keys, generation: 0, next_rotation: None, last_made: None }
    }

    /// Replaces the older key once per [`ROTATION`], counted from the first
    /// call (the core has no clock of its own).
    pub(crate) fn rotate(&mut self, now: Instant, rng: &mut dyn RngCore) {
        match self.next_rotation {
            None => self.next_rotation = Some(after(now, ROTATION)),
            Some(t) if now >= t => {
                self.generation += 1;
                let slot = (self.generation % 2) as usize;
                if let Some(k) = self.keys.get_mut(slot) {
                    rng.fill_bytes(k);
                }
                self.next_rotation = Some(after(now, ROTATION));
            }
            Some(_) => {}
        }
    }

    fn mac(&self, parity: u32, peer: SocketAddr, peer_isn: Seq, top: u32) -> u32 {
        let key = self.keys.get(parity as usize).copied().unwrap_or_default();
        let ip = match peer.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let mut h = Sha256::new();
        h.update(key);
        h.update(ip);
        h.update(peer.port().to_be_bytes());
        h.update(peer_isn.0.to_be_bytes());
        h.update(top.to_be_bytes());
        let d = h.finalize();
        let mut first = [0u8; 4];
        first.copy_from_slice(d.get(..4).unwrap_or(&[0; 4]));
        u32::from_be_bytes(first) & MAC_MASK
    }

    /// The ISN of a stateless SYN|ACK to `peer`, whose SYN had `peer_isn`.
    pub(crate) fn make(&mut self, now: Instant, peer: SocketAddr, peer_isn: Seq, mode: CookieMode) -> u32 {
        self.last_made = Some(now);
        let parity = (self.generation % 2) as u32;
        let top = parity << 8 | mode.bits();
        debug_assert!(top < 1 << 9, "the cookie's top bits overflow");
        top << MAC_BITS | self.mac(parity, peer, peer_isn, top)
    }

    /// The mode carried by `cookie` if it is one of ours for this peer and
    /// client ISN, made with the current or the previous key.
    pub(crate) fn check(&self, now: Instant, peer: SocketAddr, peer_isn: Seq, cookie: u32) -> Option<CookieMode> {
        let recent = self.last_made.is_some_and(|t| now.saturating_duration_since(t) <= ROTATION * 2);
        if !recent {
            return None;
        }
        let top = cookie >> MAC_BITS;
        let parity = top >> 8 & 1;
        // Cookies of the previous key are fine, but not before any rotation
        // happened: that "previous" key was never used.
        if parity != (self.generation % 2) as u32 && self.generation == 0 {
            return None;
        }
        (self.mac(parity, peer, peer_isn, top) == cookie & MAC_MASK).then(|| CookieMode::from_bits(top & 0xff))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::disallowed_methods)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], port))
    }

    #[test]
    fn a_cookie_checks_only_for_its_peer_and_isn() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut jar = CookieJar::new(&mut rng);
        let t = Instant::now();
        let mode = CookieMode::fast(1200, 8 << 20);
        let c = jar.make(t, peer(1), Seq(77), mode);
        assert_eq!(c >> 30 & 1, 1, "bit 30 is the fast bit (PROTOCOL.md §7.2)");
        assert_eq!(jar.check(t, peer(1), Seq(77), c), Some(mode));
        assert_eq!(jar.check(t, peer(2), Seq(77), c), None);
        assert_eq!(jar.check(t, peer(1), Seq(78), c), None);
        assert_eq!(jar.check(t, peer(1), Seq(77), c ^ 1), None);
        assert_eq!(jar.check(t, peer(1), Seq(77), c ^ 1 << 30), None, "the mode bits are authenticated");
        let base = jar.make(t, peer(1), Seq(77), CookieMode::Baseline);
        assert_eq!(base >> 23 & 0xff, 0);
        assert_eq!(jar.check(t, peer(1), Seq(77), base), Some(CookieMode::Baseline));
    }

    #[test]
    fn modes_round_down_and_survive_the_trip() {
        assert_eq!(CookieMode::fast(1440, 16 << 20), CookieMode::Fast { segment: 1440, window: 16 << 20 });
        assert_eq!(CookieMode::fast(1300, 3_000_000), CookieMode::Fast { segment: 1280, window: 1 << 21 });
        assert_eq!(CookieMode::fast(1200, 1200), CookieMode::Fast { segment: 1200, window: 1200 });
        assert_eq!(CookieMode::fast(63, 1 << 20), CookieMode::Baseline);
        assert_eq!(CookieMode::fast(1000, u64::MAX), CookieMode::Fast { segment: 1000, window: 32 << 20 });
        for s in SEGMENTS {
            let m = CookieMode::fast(s, 1 << 20);
            assert_eq!(CookieMode::from_bits(m.bits()), m);
        }
    }

    #[test]
    fn cookies_expire_after_two_rotations() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut jar = CookieJar::new(&mut rng);
        let t0 = Instant::now();
        jar.rotate(t0, &mut rng);
        // Cookies of every generation, the odd ones (epoch bit 1) included.
        for g in 0..4u32 {
            let t = t0 + ROTATION * g;
            jar.rotate(t, &mut rng);
            let mode = CookieMode::fast(1440, 1 << 20);
            let c = jar.make(t, peer(5), Seq(9), mode);
            assert_eq!(c >> 31, g % 2, "bit 31 is the epoch parity");
            assert_eq!(jar.check(t, peer(5), Seq(9), c), Some(mode), "generation {g}");
            jar.rotate(t + ROTATION, &mut rng);
            assert_eq!(jar.check(t + ROTATION, peer(5), Seq(9), c), Some(mode), "valid through the next period");
            let mut later = CookieJar {
                keys: jar.keys,
                generation: jar.generation,
                next_rotation: jar.next_rotation,
                last_made: jar.last_made,
            };
            later.rotate(t + ROTATION * 2, &mut rng);
            assert_eq!(later.check(t + ROTATION * 2, peer(5), Seq(9), c), None, "its key is gone");
        }
        // Long after the last cookie, no ACK is checked at all.
        let c = jar.make(t0, peer(6), Seq(1), CookieMode::Baseline);
        assert!(jar.check(t0 + ROTATION * 3, peer(6), Seq(1), c).is_none());
    }

    #[test]
    fn blind_guesses_rarely_pass() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut jar = CookieJar::new(&mut rng);
        let t = Instant::now();
        let _ = jar.make(t, peer(8), Seq(1), CookieMode::Baseline);
        let passed = (0..200_000u32).filter(|&i| jar.check(t, peer(9), Seq(1), rng.next_u32() ^ i).is_some()).count();
        // Expected 200000 / 2^23 / 2 (half the guesses name the unused key).
        assert!(passed <= 3, "{passed}");
    }
}
