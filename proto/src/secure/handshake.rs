//! The secure-mode handshake (docs/PROTOCOL.md §8.2, §8.3): Noise IK through the
//! `snow` crate, inside an outer layer keyed by the server's public key, with
//! the request and the inner fast-mode SYN as its payloads.
//!
//! ```text
//! handshake datagram: nonce (24) | XChaCha20-Poly1305(K_obfs, nonce,
//!                     noise length (2) | Noise message | zero padding) | tag (16)
//! ```

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};

use super::keys::{PublicKey, StaticSecret, obfuscation_key};
pub(crate) use super::load::COOKIE_LEN;
use super::packet::{DirectionKeys, KeyMaterial};

/// The Noise protocol: IK (the client knows the server's static key in
/// advance, and sends its own encrypted in the first message), X25519,
/// ChaCha20-Poly1305, BLAKE2s: WireGuard's choices.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a message of another protocol or version
/// cannot complete this one.
const PROLOGUE: &[u8] = b"anon secure v1";

/// The outer layer's nonce.
pub const OUTER_NONCE_LEN: usize = 24;
/// The outer layer's tag.
pub const OUTER_TAG_LEN: usize = 16;
/// Outer nonce, Noise length and tag.
pub const OUTER_OVERHEAD: usize = OUTER_NONCE_LEN + 2 + OUTER_TAG_LEN;
/// Noise IK's first message beyond its payload: e (32), s sealed (48), the
/// payload's tag (16).
pub const NOISE_MSG1_OVERHEAD: usize = 32 + 48 + 16;
/// Noise IK's second message beyond its payload: e (32), the payload's tag.
pub const NOISE_MSG2_OVERHEAD: usize = 32 + 16;

/// The shortest handshake datagram: anything shorter is not one.
pub const MIN_HANDSHAKE_LEN: usize = OUTER_OVERHEAD + NOISE_MSG2_OVERHEAD;

/// The outer layer of handshake datagrams.
pub(crate) struct Outer(XChaCha20Poly1305);

impl std::fmt::Debug for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outer(..)")
    }
}

impl Outer {
    pub(crate) fn new(server: &PublicKey) -> Outer {
        let key = obfuscation_key(server);
        Outer(XChaCha20Poly1305::new((&*key).into()))
    }

    /// Appends a handshake datagram of exactly `len` bytes (at least the
    /// natural length) carrying `noise`, then `trailer` (a first message's
    /// [`OuterTime`]; nothing in an answer); returns its nonce. An answer
    /// is sealed with the first message's nonce as associated data, so
    /// that a client with several first messages out knows which one it
    /// answers without trying (a failed Noise read spends the handshake
    /// state).
    pub(crate) fn seal(
        &self,
        rng: &mut dyn RngCore,
        noise: &[u8],
        trailer: &[u8],
        len: usize,
        ad: &[u8],
        out: &mut Vec<u8>,
    ) -> [u8; OUTER_NONCE_LEN] {
        let start = out.len();
        let mut nonce = [0u8; OUTER_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&(noise.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        out.extend_from_slice(noise);
        out.extend_from_slice(trailer);
        let len = len.max(noise.len() + trailer.len() + OUTER_OVERHEAD);
        out.resize(start + len - OUTER_TAG_LEN, 0);
        let Some(body) = out.get_mut(start + OUTER_NONCE_LEN..) else { return nonce };
        match self.0.encrypt_in_place_detached(XNonce::from_slice(&nonce), ad, body) {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(_) => out.truncate(start),
        }
        nonce
    }

    /// The Noise message inside a handshake datagram, or `None` when it is
    /// not one of ours (random bytes, a flipped bit, another server's).
    pub(crate) fn open(&self, datagram: &[u8], ad: &[u8], scratch: &mut Vec<u8>) -> Option<std::ops::Range<usize>> {
        if datagram.len() < MIN_HANDSHAKE_LEN {
            return None;
        }
        let (nonce, rest) = datagram.split_at(OUTER_NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - OUTER_TAG_LEN);
        scratch.clear();
        scratch.extend_from_slice(ct);
        self.0.decrypt_in_place_detached(XNonce::from_slice(nonce), ad, scratch, Tag::from_slice(tag)).ok()?;
        let len = usize::from(u16::from_be_bytes(scratch.get(..2)?.try_into().ok()?));
        let range = 2..2 + len;
        scratch.get(range.clone())?;
        Some(range)
    }
}

/// A first message's clock in its outer layer, after the Noise message
/// (milliseconds since the Unix epoch, big-endian): checked before any
/// Diffie-Hellman work, so that a recorded first message replayed once the
/// replay filter has forgotten it costs the server no X25519 operation.
/// Only a holder of the bridge line can change it; the TIME field inside
/// the Noise payload stays the authenticated one (docs/PROTOCOL.md §8.3).
pub(crate) struct OuterTime;

impl OuterTime {
    /// Its length.
    pub(crate) const LEN: usize = 8;

    pub(crate) fn encode(unix_ms: u64) -> [u8; Self::LEN] {
        unix_ms.to_be_bytes()
    }

    /// The clock of the first message opened into `scratch`, its Noise
    /// message at `noise`.
    pub(crate) fn read(scratch: &[u8], noise: &std::ops::Range<usize>) -> Option<u64> {
        let bytes = scratch.get(noise.end..noise.end + Self::LEN)?;
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }

    /// The cookie after the clock (docs/PROTOCOL.md §8.3, rule 1): all
    /// zero when there is none (the padding is zero).
    pub(crate) fn cookie(scratch: &[u8], noise: &std::ops::Range<usize>) -> [u8; COOKIE_LEN] {
        cookie_at(scratch, noise.end + Self::LEN)
    }
}

/// The cookie at `at` of an opened handshake datagram (after a first
/// message's clock, or right after a cookie reply's empty Noise message):
/// all zero when the datagram ends before it.
pub(crate) fn cookie_at(scratch: &[u8], at: usize) -> [u8; COOKIE_LEN] {
    scratch.get(at..at + COOKIE_LEN).and_then(|c| c.try_into().ok()).unwrap_or([0; COOKIE_LEN])
}

/// Fields of the handshake payloads (docs/PROTOCOL.md §8.2.1): type (1),
/// length (2), value. Unknown types are skipped, so later versions can add
/// requests (a URL, a resume offset) without a new handshake.
pub mod field {
    /// The client's wall clock, milliseconds since the Unix epoch (u64).
    pub const TIME: u8 = 1;
    /// The client's connection ID, the same in every first message of one
    /// connection (8 bytes).
    pub const CONN_ID: u8 = 2;
    /// The name of the page asked for (UTF-8; empty: the default page).
    pub const PAGE: u8 = 3;
    /// An inner fast-mode datagram: the SYN in the first message, the
    /// SYN|ACK in the second.
    pub const INNER: u8 = 4;
    /// Connection tokens for the client (16 bytes each).
    pub const TOKENS: u8 = 5;
    /// The server refuses the request: a reason code (u8), then for an
    /// HTTP status refusal the status (u16); see [`crate::Refusal::encode`].
    pub const ERROR: u8 = 6;
    /// The URL asked for (UTF-8, an absolute http or https URL, at most
    /// [`MAX_URL_LEN`](crate::secure::proxy::MAX_URL_LEN) bytes): a proxy
    /// server fetches it; it takes the place of PAGE.
    pub const URL: u8 = 7;
    /// What the origin said of a fetched page: see
    /// [`PageMeta`](crate::secure::proxy::PageMeta).
    pub const META: u8 = 8;
    /// In a first message: the client has the first `offset` bytes of the
    /// page whose SHA-256 follows (u64, then 32 bytes) and asks for the
    /// rest. In an answer: the offset the transfer starts at (u64), when
    /// the server resumes (§9.6).
    pub const RESUME: u8 = 9;
}

/// Appends one payload field.
pub(crate) fn put_field(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(value.get(..value.len().min(usize::from(u16::MAX))).unwrap_or_default());
}

/// The fields of a payload, in order; stops at the first malformed one.
pub(crate) fn fields(mut payload: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&kind, rest) = payload.split_first()?;
        let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        let value = rest.get(2..2 + len)?;
        payload = rest.get(2 + len..)?;
        Some((kind, value))
    })
}

/// Draws snow's randomness (the ephemeral keys) from a seed the caller
/// took from its injected RNG: a simulated run replays exactly.
struct SeededResolver([u8; 32]);

struct SeededRng(rand_chacha::ChaCha20Rng);

impl Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRng(rand_chacha::ChaCha20Rng::from_seed(self.0))))
    }
    fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
        None
    }
    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

fn builder<'a>(seed: [u8; 32]) -> Option<Builder<'a>> {
    let params = NOISE_PARAMS.parse().ok()?;
    let resolver = FallbackResolver::new(Box::new(SeededResolver(seed)), Box::new(DefaultResolver));
    Builder::with_resolver(params, Box::new(resolver)).prologue(PROLOGUE).ok()
}

/// A connection's keys, both directions.
pub(crate) struct SessionKeys {
    pub(crate) send: DirectionKeys,
    pub(crate) recv: DirectionKeys,
    /// Client to server, then server to client: for the key log only, and
    /// erased as soon as the log line is written (the server never keeps it).
    pub(crate) material: Option<[KeyMaterial; 2]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// Noise's split, through HKDF into this protocol's keys. The raw split
/// keys are erased as soon as they are used.
fn session_keys(hs: &mut HandshakeState, initiator: bool) -> SessionKeys {
    let hash = hs.get_handshake_hash().to_vec();
    let (k1, k2) = hs.dangerously_get_raw_split();
    let (k1, k2) = (zeroize::Zeroizing::new(k1), zeroize::Zeroizing::new(k2));
    let (c2s, m1) = DirectionKeys::derive(&k1, &hash);
    let (s2c, m2) = DirectionKeys::derive(&k2, &hash);
    let (send, recv) = if initiator { (c2s, s2c) } else { (s2c, c2s) };
    SessionKeys { send, recv, material: Some([m1, m2]) }
}

/// The client's side of a handshake in progress.
pub(crate) struct Initiator(HandshakeState);

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator(..)")
    }
}

impl Initiator {
    /// Starts a handshake; returns it and the first Noise message, which
    /// carries `payload` (encrypted to the server's static key).
    pub(crate) fn start(
        server: &PublicKey,
        client: &StaticSecret,
        seed: [u8; 32],
        payload: &[u8],
    ) -> Option<(Initiator, Vec<u8>)> {
        let mut hs = builder(seed)?
            .local_private_key(client.private_bytes())
            .ok()?
            .remote_public_key(&server.0)
            .ok()?
            .build_initiator()
            .ok()?;
        let mut msg = vec![0u8; payload.len() + NOISE_MSG1_OVERHEAD];
        let n = hs.write_message(payload, &mut msg).ok()?;
        msg.truncate(n);
        Some((Initiator(hs), msg))
    }

    /// Reads the server's answer: its payload and the keys.
    pub(crate) fn finish(mut self, msg: &[u8]) -> Option<(Vec<u8>, SessionKeys)> {
        let mut payload = vec![0u8; msg.len()];
        let n = self.0.read_message(msg, &mut payload).ok()?;
        payload.truncate(n);
        Some((payload, session_keys(&mut self.0, true)))
    }
}

/// The server's side of a handshake whose first message it has read.
pub(crate) struct Responder(HandshakeState);

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder(..)")
    }
}

/// What a first message told the server.
#[derive(Debug)]
pub(crate) struct Initiation {
    pub(crate) responder: Responder,
    pub(crate) payload: Vec<u8>,
    /// The client's static key (authenticated by the handshake).
    pub(crate) client: PublicKey,
}

/// A first message's key in the replay filter: the first 16 bytes of the
/// client's ephemeral key, which no two honest handshakes share. IK sends
/// it first and in clear, so it is known before the Diffie-Hellman work of
/// reading the message.
pub(crate) fn replay_key(msg: &[u8]) -> Option<[u8; 16]> {
    msg.get(..16)?.try_into().ok()
}

impl Responder {
    /// Reads a first message; `None` when it does not decrypt under our
    /// static key.
    pub(crate) fn read(server: &StaticSecret, seed: [u8; 32], msg: &[u8]) -> Option<Initiation> {
        let mut hs = builder(seed)?.local_private_key(server.private_bytes()).ok()?.build_responder().ok()?;
        let mut payload = vec![0u8; msg.len()];
        let n = hs.read_message(msg, &mut payload).ok()?;
        payload.truncate(n);
        let client = PublicKey(hs.get_remote_static()?.try_into().ok()?);
        Some(Initiation { responder: Responder(hs), payload, client })
    }

    /// Writes the answer carrying `payload`: the Noise message and the keys.
    pub(crate) fn answer(mut self, payload: &[u8]) -> Option<(Vec<u8>, SessionKeys)> {
        let mut msg = vec![0u8; payload.len() + NOISE_MSG2_OVERHEAD];
        let n = self.0.write_message(payload, &mut msg).ok()?;
        msg.truncate(n);
        Some((msg, session_keys(&mut self.0, false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_agrees_on_keys_and_carries_payloads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let server = StaticSecret::generate(&mut rng);
        let client = StaticSecret::generate(&mut rng);
        let (init, m1) = Initiator::start(&server.public(), &client, [1; 32], b"hello").expect("start");
        assert_eq!(m1.len(), 5 + NOISE_MSG1_OVERHEAD);
        let got = Responder::read(&server, [2; 32], &m1).expect("read");
        assert_eq!(got.payload, b"hello");
        assert_eq!(got.client, client.public());
        let (m2, server_keys) = got.responder.answer(b"welcome").expect("answer");
        assert_eq!(m2.len(), 7 + NOISE_MSG2_OVERHEAD);
        let (payload, client_keys) = init.finish(&m2).expect("finish");
        assert_eq!(payload, b"welcome");
        let (c, s) = (client_keys.material.expect("client"), server_keys.material.expect("server"));
        assert_eq!(*c[0].key, *s[0].key);
        assert_eq!(*c[1].hp, *s[1].hp);
        assert_ne!(*c[0].key, *c[1].key);
    }

    #[test]
    fn another_server_key_cannot_read_the_first_message() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let server = StaticSecret::generate(&mut rng);
        let other = StaticSecret::generate(&mut rng);
        let client = StaticSecret::generate(&mut rng);
        let (_, m1) = Initiator::start(&server.public(), &client, [1; 32], b"x").expect("start");
        assert!(Responder::read(&other, [2; 32], &m1).is_none());
    }

    #[test]
    fn outer_layer_round_trips_and_rejects_tampering() {
        let outer = Outer::new(&PublicKey([3; 32]));
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut d = Vec::new();
        outer.seal(&mut rng, &[0xaa; 100], &[], 300, b"ad", &mut d);
        assert_eq!(d.len(), 300);
        let mut scratch = Vec::new();
        let r = outer.open(&d, b"ad", &mut scratch).expect("opens");
        assert_eq!(&scratch[r], &[0xaa; 100][..]);
        assert!(outer.open(&d, b"other", &mut scratch).is_none());
        for i in [0, 30, 299] {
            let mut bad = d.clone();
            bad[i] ^= 0x40;
            assert!(outer.open(&bad, b"ad", &mut scratch).is_none());
        }
        assert!(Outer::new(&PublicKey([4; 32])).open(&d, b"ad", &mut scratch).is_none());
        assert!(outer.open(&d[..299], b"ad", &mut scratch).is_none());
    }

    #[test]
    fn fields_skip_the_unknown_and_stop_at_the_malformed() {
        let mut p = Vec::new();
        put_field(&mut p, field::PAGE, b"news");
        put_field(&mut p, 200, b"future");
        put_field(&mut p, field::TIME, &5u64.to_be_bytes());
        let all: Vec<_> = fields(&p).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], (field::PAGE, &b"news"[..]));
        p.extend_from_slice(&[field::PAGE, 0, 9, 1]);
        assert_eq!(fields(&p).count(), 3);
    }
}
