//! Secure-mode data datagrams: packet numbers, the AEAD, header protection,
//! connection tokens, padding and the replay window (docs/PROTOCOL.md §8.4).
//!
//! ```text
//! client to server:  token (16) | masked PN (8) | sealed body | tag (16)
//! server to client:               masked PN (8) | sealed body | tag (16)
//! sealed body:       flags (1) | inner length (2) | inner datagram
//!                    | [token (16) if flags & TOKEN] | zero padding
//! ```
//!
//! The inner datagram is a plaintext fast-mode datagram (header and
//! payload): secure mode carries the one transport, it does not copy it.

use aes::Aes128;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::AeadInOut;
use aes_gcm::aead::inout::InOutBuf;

use super::keys::derive;

/// A connection token: AES-128 of the server's connection ID and a serial.
pub const TOKEN_LEN: usize = 16;
/// The packet number, masked on the wire.
pub const PN_LEN: usize = 8;
/// The AEAD's tag.
pub const TAG_LEN: usize = 16;
/// Flags and inner length, before the inner datagram.
pub const BODY_PREFIX: usize = 3;
/// Bytes of ciphertext sampled for the header protection mask.
const SAMPLE_LEN: usize = 16;
/// The body carries a fresh token for the client.
const FLAG_TOKEN: u8 = 1;

/// Overhead of a server-to-client datagram beyond its inner datagram and
/// padding.
pub const S2C_OVERHEAD: usize = PN_LEN + BODY_PREFIX + TAG_LEN;
/// Overhead of a client-to-server datagram beyond its inner datagram and
/// padding.
pub const C2S_OVERHEAD: usize = TOKEN_LEN + PN_LEN + BODY_PREFIX + TAG_LEN;

/// The keys of one direction of one connection.
pub(crate) struct DirectionKeys {
    aead: Aes256Gcm,
    iv: [u8; 12],
    hp: Aes128,
}

impl std::fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectionKeys(..)")
    }
}

/// What a key log line holds for one direction (hex in the file).
pub(crate) struct KeyMaterial {
    pub(crate) key: zeroize::Zeroizing<[u8; 32]>,
    pub(crate) iv: zeroize::Zeroizing<[u8; 12]>,
    pub(crate) hp: zeroize::Zeroizing<[u8; 16]>,
}

/// The IV is not a key, but it is secret all the same (RFC 9001 §5.3):
/// wiped like the keys beside it, which wipe themselves.
impl Drop for DirectionKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.iv);
    }
}

impl DirectionKeys {
    /// Keys of one direction from its Noise transport key and the
    /// handshake hash: HKDF-SHA256 with distinct labels, so the AEAD key,
    /// its IV and the header-protection key are independent.
    pub(crate) fn derive(noise_key: &[u8; 32], handshake_hash: &[u8]) -> (DirectionKeys, KeyMaterial) {
        let key = derive::<32>(handshake_hash, noise_key, b"anon data key");
        let iv = derive::<12>(handshake_hash, noise_key, b"anon data iv");
        let hp = derive::<16>(handshake_hash, noise_key, b"anon header protection");
        let keys = DirectionKeys::from_material(&key, &iv, &hp);
        (keys, KeyMaterial { key, iv, hp })
    }

    pub(crate) fn from_material(key: &[u8; 32], iv: &[u8; 12], hp: &[u8; 16]) -> DirectionKeys {
        DirectionKeys { aead: Aes256Gcm::new(&(*key).into()), iv: *iv, hp: Aes128::new(&(*hp).into()) }
    }

    fn nonce(&self, pn: u64) -> [u8; 12] {
        // RFC 9001 §5.3: the IV XOR the packet number, which never repeats.
        let mut n = self.iv;
        for (b, p) in n.iter_mut().skip(4).zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        n
    }

    fn mask(&self, sample: &[u8]) -> [u8; 16] {
        let mut block = [0u8; 16];
        for (b, s) in block.iter_mut().zip(sample) {
            *b = *s;
        }
        let mut block = aes::Block::from(block);
        self.hp.encrypt_block(&mut block);
        block.into()
    }

    /// Seals the datagram being built at `buf[start..]`: `header_len` bytes
    /// of token (or none) and packet number, then the body. Appends the tag
    /// and masks the packet number.
    pub(crate) fn seal(&self, buf: &mut Vec<u8>, start: usize, header_len: usize, pn: u64) {
        let pn_at = start + header_len - PN_LEN;
        if let Some(slot) = buf.get_mut(pn_at..pn_at + PN_LEN) {
            slot.copy_from_slice(&pn.to_be_bytes());
        }
        let nonce = self.nonce(pn);
        let split = start + header_len;
        let Some((head, body)) = buf.get_mut(start..).map(|b| b.split_at_mut(header_len.min(b.len()))) else {
            return;
        };
        let Ok(tag) = self.aead.encrypt_inout_detached(&nonce.into(), head, body.into()) else {
            return;
        };
        buf.extend_from_slice(&tag);
        let mask = self.mask(buf.get(split..split + SAMPLE_LEN).unwrap_or_default());
        if let Some(slot) = buf.get_mut(pn_at..pn_at + PN_LEN) {
            for (b, m) in slot.iter_mut().zip(mask) {
                *b ^= m;
            }
        }
    }

    /// Opens `datagram` (`header_len` bytes of token and masked packet
    /// number first) into `out`, which receives the body. Returns the
    /// packet number, or `None` for anything that is not ours.
    pub(crate) fn open(&self, datagram: &[u8], header_len: usize, out: &mut Vec<u8>) -> Option<u64> {
        if datagram.len() < header_len + BODY_PREFIX + TAG_LEN {
            return None;
        }
        let (head, rest) = datagram.split_at(header_len);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        // The sample may run into the tag on a short datagram, as in QUIC.
        let mask = self.mask(rest.get(..SAMPLE_LEN)?);
        let mut ad = [0u8; TOKEN_LEN + PN_LEN];
        let ad = ad.get_mut(..header_len)?;
        ad.copy_from_slice(head);
        let pn_at = header_len - PN_LEN;
        for (b, m) in ad.get_mut(pn_at..)?.iter_mut().zip(mask) {
            *b ^= m;
        }
        let pn = u64::from_be_bytes(ad.get(pn_at..)?.try_into().ok()?);
        // Decrypted from the datagram straight into `out`, not copied
        // there first: one pass over the bytes less. Only what `out` grows
        // by is zeroed first.
        out.resize(ct.len(), 0);
        let nonce = self.nonce(pn);
        let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
        let buf = InOutBuf::new(ct, out.as_mut_slice()).ok()?;
        self.aead.decrypt_inout_detached(&nonce.into(), ad, buf, &tag.into()).ok()?;
        Some(pn)
    }
}

/// The body prefix for an inner datagram of `inner_len` bytes.
pub(crate) fn body_prefix_bytes(token: bool, inner_len: usize) -> [u8; BODY_PREFIX] {
    let [hi, lo] = (inner_len.min(usize::from(u16::MAX)) as u16).to_be_bytes();
    [if token { FLAG_TOKEN } else { 0 }, hi, lo]
}

/// Appends the body prefix for an inner datagram of `inner_len` bytes.
pub(crate) fn body_prefix(buf: &mut Vec<u8>, token: bool, inner_len: usize) {
    buf.extend_from_slice(&body_prefix_bytes(token, inner_len));
}

/// A decrypted body: the inner datagram and a token, if it carries one.
pub(crate) struct Body<'a> {
    pub(crate) inner: &'a [u8],
    pub(crate) token: Option<[u8; TOKEN_LEN]>,
}

/// Parses a decrypted body; `None` when its lengths do not add up (only a
/// buggy or hostile peer that holds the keys can send one).
pub(crate) fn parse_body(body: &[u8]) -> Option<Body<'_>> {
    let (&flags, rest) = body.split_first()?;
    let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let inner = rest.get(2..2 + len)?;
    let token =
        if flags & FLAG_TOKEN != 0 { Some(rest.get(2 + len..2 + len + TOKEN_LEN)?.try_into().ok()?) } else { None };
    Some(Body { inner, token })
}

/// The server's token key: a token is the AES-128 encryption of a
/// connection ID and a serial under a key only the server holds, so that
/// a client can be told apart without a fixed field on the wire and its
/// datagrams before and after an address change cannot be linked by
/// anyone else (docs/PROTOCOL.md §8.4).
pub(crate) struct TokenKey(Aes128);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub(crate) fn new(key: &[u8; 16]) -> TokenKey {
        TokenKey(Aes128::new(&(*key).into()))
    }

    pub(crate) fn make(&self, cid: u64, serial: u64) -> [u8; TOKEN_LEN] {
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&cid.to_be_bytes());
        block[8..].copy_from_slice(&serial.to_be_bytes());
        let mut block = aes::Block::from(block);
        self.0.encrypt_block(&mut block);
        block.into()
    }

    pub(crate) fn open(&self, token: &[u8]) -> Option<(u64, u64)> {
        let block: [u8; 16] = token.get(..TOKEN_LEN)?.try_into().ok()?;
        let mut block = aes::Block::from(block);
        self.0.decrypt_block(&mut block);
        let block: [u8; 16] = block.into();
        let (cid, serial) = block.split_at(8);
        Some((u64::from_be_bytes(cid.try_into().ok()?), u64::from_be_bytes(serial.try_into().ok()?)))
    }
}

/// Packet numbers seen, for dropping replays: the highest and a bitmap of
/// the 960 to 1,023 below it (RFC 6479's sliding window of 64-bit words,
/// as WireGuard keeps).
#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; WINDOW_WORDS],
}

const WINDOW_WORDS: usize = 16;

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { highest: None, bits: [0; WINDOW_WORDS] }
    }
}

impl ReplayWindow {
    /// Records `pn` (already authenticated); false when it was seen or is
    /// too old to tell.
    pub(crate) fn accept(&mut self, pn: u64) -> bool {
        let bit = |pn: u64| ((pn / 64) as usize % WINDOW_WORDS, 1u64 << (pn % 64));
        match self.highest {
            Some(h) if pn <= h => {
                // Too old when its word has been reused for newer numbers.
                if h / 64 - pn / 64 >= WINDOW_WORDS as u64 {
                    return false;
                }
                let (w, m) = bit(pn);
                let Some(word) = self.bits.get_mut(w) else { return false };
                if *word & m != 0 {
                    return false;
                }
                *word |= m;
                true
            }
            _ => {
                // Clear the words the window slides over; at most all of them.
                let from = self.highest.map_or(0, |h| h / 64 + 1);
                let to = pn / 64;
                if self.highest.is_none() || to - from.min(to) >= WINDOW_WORDS as u64 {
                    self.bits = [0; WINDOW_WORDS];
                } else {
                    for word in from..=to {
                        if let Some(w) = self.bits.get_mut(word as usize % WINDOW_WORDS) {
                            *w = 0;
                        }
                    }
                }
                let (w, m) = bit(pn);
                if let Some(word) = self.bits.get_mut(w) {
                    *word |= m;
                }
                self.highest = Some(pn);
                true
            }
        }
    }

    /// The highest packet number accepted.
    pub(crate) fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> DirectionKeys {
        DirectionKeys::from_material(&[seed; 32], &[seed ^ 1; 12], &[seed ^ 2; 16])
    }

    fn sealed(k: &DirectionKeys, token: Option<[u8; 16]>, inner: &[u8], pad: usize, pn: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        if let Some(t) = token {
            buf.extend_from_slice(&t);
        }
        buf.extend_from_slice(&[0; PN_LEN]);
        let header_len = buf.len();
        body_prefix(&mut buf, false, inner.len());
        buf.extend_from_slice(inner);
        buf.resize(buf.len() + pad, 0);
        k.seal(&mut buf, 0, header_len, pn);
        buf
    }

    #[test]
    fn seals_and_opens_both_layouts() {
        let k = keys(3);
        let mut out = Vec::new();
        for (token, pad) in [(None, 0), (Some([5u8; 16]), 40)] {
            let d = sealed(&k, token, b"inner datagram", pad, 77);
            let header_len = token.map_or(0, |_| TOKEN_LEN) + PN_LEN;
            assert_eq!(k.open(&d, header_len, &mut out), Some(77));
            let body = parse_body(&out).expect("body");
            assert_eq!(body.inner, b"inner datagram");
            assert!(body.token.is_none());
        }
    }

    /// The buffer is reused: after a long datagram a short one leaves the
    /// short body alone in it, nothing of the long one after it.
    #[test]
    fn a_reused_buffer_holds_only_the_last_body() {
        let k = keys(3);
        let mut out = Vec::new();
        let long = sealed(&k, None, &[7u8; 900], 100, 1);
        assert_eq!(k.open(&long, PN_LEN, &mut out), Some(1));
        assert_eq!(out.len(), long.len() - PN_LEN - TAG_LEN);
        let short = sealed(&k, None, b"short", 0, 2);
        assert_eq!(k.open(&short, PN_LEN, &mut out), Some(2));
        assert_eq!(out.len(), BODY_PREFIX + 5);
        assert_eq!(parse_body(&out).expect("body").inner, b"short");
    }

    #[test]
    fn any_flipped_bit_or_other_key_fails() {
        let k = keys(3);
        let d = sealed(&k, None, b"0123456789abcdef", 5, 1);
        let mut out = Vec::new();
        for i in 0..d.len() * 8 {
            let mut bad = d.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(k.open(&bad, PN_LEN, &mut out), None, "bit {i}");
        }
        assert_eq!(keys(4).open(&d, PN_LEN, &mut out), None);
        for len in 0..d.len() {
            assert_eq!(k.open(&d[..len], PN_LEN, &mut out), None);
        }
    }

    #[test]
    fn the_same_inner_datagram_never_looks_the_same() {
        let k = keys(1);
        let a = sealed(&k, None, b"same", 0, 1);
        let b = sealed(&k, None, b"same", 0, 2);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < a.len() / 4);
    }

    /// Session keys are erased when a connection ends (issue 11): the
    /// cipher types that hold them wipe themselves on drop. This does not
    /// compile if the crates are built without their `zeroize` features
    /// (`aes` and `aes-gcm` with `features = ["zeroize"]` in the workspace
    /// Cargo.toml); `chacha20poly1305` always wipes its key. `aes-gcm`'s
    /// feature also turns on polyval's, whose `Drop` wipes the GHASH key
    /// and its powers (polyval 0.7.3, as locked). What nothing here can
    /// wipe without unsafe code: the Noise handshake state inside `snow`
    /// 0.10 (ephemeral and static private key copies, chaining key), which
    /// has no zeroize support.
    #[test]
    fn key_holding_types_wipe_themselves_on_drop() {
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        // Header protection and the server's token key.
        wipes_on_drop::<Aes128>();
        // Each direction's AEAD: its AES-256 key schedule and GHASH key.
        wipes_on_drop::<aes::Aes256>();
        wipes_on_drop::<Aes256Gcm>();
        // The outer layer of handshake datagrams (a key derived from the
        // public key, but wiped all the same).
        wipes_on_drop::<chacha20poly1305::XChaCha20Poly1305>();
        // Derived key material and the raw split keys.
        wipes_on_drop::<zeroize::Zeroizing<[u8; 32]>>();
        assert!(std::mem::needs_drop::<DirectionKeys>());
        assert!(std::mem::needs_drop::<TokenKey>());
    }

    #[test]
    fn tokens_round_trip() {
        let t = TokenKey::new(&[8; 16]);
        let tok = t.make(0xdead_beef, 3);
        assert_eq!(t.open(&tok), Some((0xdead_beef, 3)));
        assert_ne!(t.make(0xdead_beef, 4)[..8], tok[..8]);
    }

    #[test]
    fn replay_window_drops_repeats_and_the_too_old() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5));
        assert!(!w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(2000));
        assert!(!w.accept(5), "too old to tell");
        assert!(w.accept(1999));
        assert!(w.accept(2000 - 960));
        assert!(!w.accept(2000 - 1024));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
        assert_eq!(w.highest(), Some(u64::MAX));
    }

    #[test]
    fn replay_window_matches_a_set() {
        use std::collections::BTreeSet;
        let mut w = ReplayWindow::default();
        let mut seen = BTreeSet::new();
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let highest: u64 = seen.iter().next_back().copied().unwrap_or(0);
            let pn = (highest + 40).saturating_sub((x >> 33) % 1100);
            let expect = !seen.contains(&pn) && (seen.is_empty() || pn / 64 + WINDOW_WORDS as u64 > highest / 64);
            assert_eq!(w.accept(pn), expect, "pn {pn}, highest {highest}");
            if expect {
                seen.insert(pn);
            }
        }
    }
}
