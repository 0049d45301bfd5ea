//! The secure server under a flood of valid first messages (a leaked bridge
//! line): a budget of Noise reads, and once it is spent, a cookie that
//! proves a source address before its message is read (WireGuard's cookie
//! reply and mac2, §5.4.7 of its paper; docs/PROTOCOL.md §8.3, rule 1).
//!
//! Reading a first message costs two X25519 operations and more (250 µs
//! here), and anyone with the bridge line can make fresh ones from spoofed
//! addresses. While reads stay within their budget nothing changes. Beyond
//! it, a message is read only if it carries the cookie of its source
//! address, which the server sent that address in a reply (so the sender
//! receives there: no spoofing), and then only within that source's own
//! budget and a second budget for all such reads together. Cookie replies
//! have a budget of their own too, ten times the reads' (each costs an
//! AEAD seal and a MAC, a hundredth of a read), and the messages they
//! answer are remembered in the replay filter (so that a replay gets
//! silence) within a budget as large as the reads', so that the filter's
//! load stays bounded (docs/PROTOCOL.md §8.3, rules 1 and 5).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A cookie's length.
pub(crate) const COOKIE_LEN: usize = 16;

/// A cookie's secret is replaced this often; the one before stays valid
/// for as long again, so a cookie works for 2 to 4 minutes.
const EPOCH: Duration = Duration::from_secs(120);

/// Sources whose budgets are kept at most; beyond, all are forgotten (each
/// starts full again, which only helps the sources, never a spoofer).
const MAX_SOURCES: usize = 65_536;

/// A token bucket of Noise reads: `rate` a second, up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Option<Instant>,
}

impl Budget {
    pub(crate) fn new(rate: u32, burst: u32) -> Budget {
        let burst = f64::from(burst.max(1));
        Budget { tokens: burst, rate: f64::from(rate), burst, at: None }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + secs * self.rate).min(self.burst);
        }
        self.at = Some(self.at.map_or(now, |a| a.max(now)));
    }

    /// Whether a read is left now (none is taken).
    pub(crate) fn has(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes a read if one is left.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let has = self.has(now);
        if has {
            self.tokens -= 1.0;
        }
        has
    }
}

/// What the server decides about a first message before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Admit {
    /// Read it.
    Read,
    /// Under load and without its source's cookie: send the cookie, and
    /// remember the message in the replay filter if `remember`.
    SendCookie { remember: bool },
    /// Under load, with its cookie, but its source's budget (or that of
    /// all such reads) is spent; or without it, and the budget of cookie
    /// replies is spent: drop it unread.
    Limited,
}

/// The server's budgets and cookie secrets.
pub(crate) struct Load {
    global: Budget,
    /// Reads of messages with a valid cookie, all sources together.
    with_cookie: Budget,
    replies: Budget,
    remembered: Budget,
    per_source_rate: u32,
    per_source_burst: u32,
    sources: HashMap<IpAddr, Budget>,
    /// The current secret and the one before, the epoch of the current
    /// one, counted from `base`.
    secrets: [Zeroizing<[u8; 32]>; 2],
    base: Option<Instant>,
    epoch: u64,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load").field("global", &self.global).field("sources", &self.sources.len()).finish()
    }
}

impl Load {
    /// `reads` Noise reads a second in all before cookies are asked for
    /// (bursts of a tenth of a second's); as many cookie replies, and as
    /// many reads of messages with a valid cookie, at most `per_source` a
    /// second of them from one source (bursts of as many).
    pub(crate) fn new(reads: u32, per_source: u32, rng: &mut dyn RngCore) -> Load {
        let mut secrets = [Zeroizing::new([0u8; 32]), Zeroizing::new([0u8; 32])];
        for s in &mut secrets {
            rng.fill_bytes(&mut s[..]);
        }
        let burst = (reads / 10).max(1);
        Load {
            global: Budget::new(reads, burst),
            with_cookie: Budget::new(reads, burst),
            replies: Budget::new(reads.saturating_mul(10), burst.saturating_mul(10)),
            remembered: Budget::new(reads, burst),
            per_source_rate: per_source,
            per_source_burst: per_source.max(1),
            sources: HashMap::new(),
            secrets,
            base: None,
            epoch: 0,
        }
    }

    /// A new secret every epoch, epochs counted from the first use: a
    /// cookie is valid in its epoch and the next, 2 to 4 minutes.
    fn rotate(&mut self, now: Instant, rng: &mut dyn RngCore) {
        let base = *self.base.get_or_insert(now);
        let epoch = now.saturating_duration_since(base).as_secs() / EPOCH.as_secs();
        if epoch <= self.epoch {
            return;
        }
        let [current, previous] = &mut self.secrets;
        if epoch == self.epoch + 1 {
            std::mem::swap(current, previous);
        } else {
            rng.fill_bytes(&mut previous[..]);
        }
        rng.fill_bytes(&mut current[..]);
        self.epoch = epoch;
    }

    fn cookie_under(secret: &[u8; 32], peer: SocketAddr) -> [u8; COOKIE_LEN] {
        let mut out = [0u8; COOKIE_LEN];
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else { return out };
        let ip = match peer.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        mac.update(&ip);
        mac.update(&peer.port().to_be_bytes());
        let tag = mac.finalize().into_bytes();
        out.copy_from_slice(tag.get(..COOKIE_LEN).unwrap_or(&[0; COOKIE_LEN]));
        out
    }

    /// The cookie for `peer` now.
    pub(crate) fn cookie(&mut self, now: Instant, peer: SocketAddr, rng: &mut dyn RngCore) -> [u8; COOKIE_LEN] {
        self.rotate(now, rng);
        Self::cookie_under(&self.secrets[0], peer)
    }

    /// Whether `cookie` is `peer`'s, under the current secret or the one
    /// before (compared in constant time). None (all zero, which is
    /// public) costs no MAC.
    fn valid(&self, peer: SocketAddr, cookie: &[u8]) -> bool {
        cookie.iter().any(|&b| b != 0)
            && self.secrets.iter().any(|s| bool::from(Self::cookie_under(s, peer).ct_eq(cookie)))
    }

    /// Decides about a first message from `peer` that passed the outer
    /// layer, its clock and the replay filter, carrying `cookie` (all zero
    /// when it has none); `source` is its source key (an address, or an
    /// IPv6 prefix). A read it allows is taken from the budgets.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        source: IpAddr,
        cookie: &[u8],
        rng: &mut dyn RngCore,
    ) -> Admit {
        self.rotate(now, rng);
        if self.global.take(now) {
            return Admit::Read;
        }
        if !self.valid(peer, cookie) {
            if !self.replies.take(now) {
                return Admit::Limited;
            }
            return Admit::SendCookie { remember: self.remembered.take(now) };
        }
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.sources.clear();
        }
        let (rate, burst) = (self.per_source_rate, self.per_source_burst);
        let budget = self.sources.entry(source).or_insert_with(|| Budget::new(rate, burst));
        if !budget.has(now) || !self.with_cookie.take(now) {
            return Admit::Limited;
        }
        budget.take(now);
        Admit::Read
    }

    /// Sources whose budgets are kept.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero
    use rand::SeedableRng;

    use super::*;

    fn load(reads: u32, per_source: u32) -> (Load, rand_chacha::ChaCha8Rng) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        (Load::new(reads, per_source, &mut rng), rng)
    }

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], port))
    }

    #[test]
    fn within_the_budget_every_message_is_read_and_beyond_it_only_with_a_cookie() {
        let (mut l, mut rng) = load(100, 5);
        let t0 = Instant::now();
        let none = [0u8; COOKIE_LEN];
        // A tenth of a second's reads at once, then cookies are asked for.
        for i in 0..10 {
            assert_eq!(l.admit(t0, addr(1, 1000 + i), addr(1, 0).ip(), &none, &mut rng), Admit::Read, "{i}");
        }
        let peer = addr(1, 2000);
        let send = Admit::SendCookie { remember: true };
        assert_eq!(l.admit(t0, peer, peer.ip(), &none, &mut rng), send);
        let cookie = l.cookie(t0, peer, &mut rng);
        // Another address's cookie, or another port's, is no cookie.
        assert_eq!(l.admit(t0, addr(2, 2000), addr(2, 0).ip(), &cookie, &mut rng), send);
        assert_eq!(l.admit(t0, addr(1, 2001), peer.ip(), &cookie, &mut rng), send);
        // With its own, a source gets its own budget, and no more.
        for i in 0..5 {
            assert_eq!(l.admit(t0, peer, peer.ip(), &cookie, &mut rng), Admit::Read, "{i}");
        }
        assert_eq!(l.admit(t0, peer, peer.ip(), &cookie, &mut rng), Admit::Limited);
        // A second later the budgets have refilled.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.admit(t1, addr(3, 1), addr(3, 0).ip(), &none, &mut rng), Admit::Read);
        assert_eq!(l.sources(), 1);
    }

    #[test]
    fn a_cookie_lasts_from_one_epoch_to_two() {
        let (mut l, mut rng) = load(0, 5);
        let t0 = Instant::now();
        let peer = addr(9, 9);
        let none = [0u8; COOKIE_LEN];
        // The global budget's one burst read.
        assert_eq!(l.admit(t0, peer, peer.ip(), &none, &mut rng), Admit::Read);
        let cookie = l.cookie(t0, peer, &mut rng);
        let read = |l: &mut Load, rng: &mut rand_chacha::ChaCha8Rng, at: Instant| {
            !matches!(l.admit(at, peer, peer.ip(), &cookie, rng), Admit::SendCookie { .. })
        };
        assert!(read(&mut l, &mut rng, t0 + EPOCH - Duration::from_secs(1)));
        assert!(read(&mut l, &mut rng, t0 + EPOCH + Duration::from_secs(1)), "the secret before still counts");
        assert!(!read(&mut l, &mut rng, t0 + EPOCH * 2 + Duration::from_secs(2)), "two secrets later");
        // After a long silence both secrets are new.
        let (mut l, mut rng) = load(0, 5);
        let _ = l.admit(t0, peer, peer.ip(), &none, &mut rng);
        let cookie = l.cookie(t0, peer, &mut rng);
        assert!(matches!(l.admit(t0 + EPOCH * 10, peer, peer.ip(), &cookie, &mut rng), Admit::SendCookie { .. }));
    }

    #[test]
    fn the_sources_kept_are_bounded() {
        let (mut l, mut rng) = load(0, 1);
        let t0 = Instant::now();
        let _ = l.admit(t0, addr(0, 0), addr(0, 0).ip(), &[0; COOKIE_LEN], &mut rng);
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let peer = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 1));
            let cookie = l.cookie(t0, peer, &mut rng);
            let _ = l.admit(t0, peer, peer.ip(), &cookie, &mut rng);
        }
        assert!(l.sources() <= MAX_SOURCES);
        assert!(l.sources() < 100, "cleared when full: {}", l.sources());
    }

    #[test]
    fn cookie_replies_and_reads_with_cookies_have_budgets_of_their_own() {
        let (mut l, mut rng) = load(100, 1_000);
        let t0 = Instant::now();
        let none = [0u8; COOKIE_LEN];
        let mut admits = std::collections::HashMap::new();
        for i in 0..200u16 {
            *admits.entry(l.admit(t0, addr(1, i), addr(1, 0).ip(), &none, &mut rng)).or_insert(0) += 1;
        }
        // Ten reads, a hundred cookie replies of which ten remembered,
        // then silence.
        assert_eq!(admits[&Admit::Read], 10);
        assert_eq!(admits[&Admit::SendCookie { remember: true }], 10);
        assert_eq!(admits[&Admit::SendCookie { remember: false }], 90);
        assert_eq!(admits[&Admit::Limited], 90);
        // Many sources with cookies: ten reads in all, whatever each may.
        let mut read = 0;
        for i in 0..100u8 {
            let peer = addr(i, 7);
            let cookie = l.cookie(t0, peer, &mut rng);
            read += u32::from(l.admit(t0, peer, peer.ip(), &cookie, &mut rng) == Admit::Read);
        }
        assert_eq!(read, 10);
    }
}
