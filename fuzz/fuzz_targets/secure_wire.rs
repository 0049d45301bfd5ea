//! An independent encoder of secure-mode datagrams (docs/PROTOCOL.md §8),
//! written from the wire format with the crates the core uses (snow,
//! chacha20poly1305, aes-gcm, aes, hkdf): the fuzz targets build valid
//! outer layers, Noise messages and sealed datagrams around fuzzer-chosen
//! contents with it, which the public API of `anon_proto::secure` cannot do
//! (its encoders are crate-private). Nothing here is hand-rolled
//! cryptography; it is only the framing.
#![allow(dead_code)]

use aes::Aes128;
use aes::cipher::BlockCipherEncrypt;
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::AeadInOut;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::{RngCore, SeedableRng};
use sha2::Sha256;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};

pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
pub const PROLOGUE: &[u8] = b"anon secure v1";
pub const OUTER_NONCE: usize = 24;
pub const OUTER_TAG: usize = 16;
pub const TOKEN_LEN: usize = 16;
pub const PN_LEN: usize = 8;

/// Payload field types (proto/src/secure/handshake.rs `field`).
pub mod field {
    pub const TIME: u8 = 1;
    pub const CONN_ID: u8 = 2;
    pub const PAGE: u8 = 3;
    pub const INNER: u8 = 4;
    pub const TOKENS: u8 = 5;
    pub const ERROR: u8 = 6;
}

fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let _ = Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out);
    out
}

/// The outer layer of handshake datagrams, keyed by the server's public key.
pub struct Outer(XChaCha20Poly1305);

impl Outer {
    pub fn new(server_public: &[u8; 32]) -> Outer {
        let key = hkdf::<32>(b"anon secure v1", server_public, b"handshake obfuscation");
        Outer(XChaCha20Poly1305::new((&key).into()))
    }

    /// nonce | seal(noise length | noise | trailer | zeros to `len`) | tag;
    /// a first message's trailer is its clock (u64 ms, big-endian).
    pub fn seal(&self, nonce: [u8; OUTER_NONCE], noise: &[u8], trailer: &[u8], len: usize, ad: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(&(noise.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        body.extend_from_slice(noise);
        body.extend_from_slice(trailer);
        let natural = noise.len() + trailer.len() + 2 + OUTER_NONCE + OUTER_TAG;
        body.resize(len.max(natural) - OUTER_NONCE - OUTER_TAG, 0);
        let mut out = nonce.to_vec();
        if let Ok(tag) = self.0.encrypt_in_place_detached(XNonce::from_slice(&nonce), ad, &mut body) {
            out.extend_from_slice(&body);
            out.extend_from_slice(&tag);
        }
        out
    }

    /// The Noise message inside, or `None`.
    pub fn open(&self, datagram: &[u8], ad: &[u8]) -> Option<Vec<u8>> {
        if datagram.len() < OUTER_NONCE + 2 + OUTER_TAG {
            return None;
        }
        let (nonce, rest) = datagram.split_at(OUTER_NONCE);
        let (ct, tag) = rest.split_at(rest.len() - OUTER_TAG);
        let mut body = ct.to_vec();
        self.0.decrypt_in_place_detached(XNonce::from_slice(nonce), ad, &mut body, tag.into()).ok()?;
        let len = usize::from(u16::from_be_bytes(body.get(..2)?.try_into().ok()?));
        body.get(2..2 + len).map(<[u8]>::to_vec)
    }
}

/// snow's randomness from a seed, so a fuzz input replays exactly.
struct Seeded([u8; 32]);
struct SeededRng(rand::rngs::StdRng);

impl Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for Seeded {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRng(rand::rngs::StdRng::from_seed(self.0))))
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

fn builder<'a>(seed: [u8; 32]) -> Builder<'a> {
    let params = NOISE_PARAMS.parse().expect("valid Noise parameters");
    let resolver = FallbackResolver::new(Box::new(Seeded(seed)), Box::new(DefaultResolver));
    Builder::with_resolver(params, Box::new(resolver)).prologue(PROLOGUE).expect("prologue")
}

/// A static X25519 key pair, from a seed.
pub fn keypair(seed: [u8; 32]) -> ([u8; 32], [u8; 32]) {
    let kp = builder(seed).generate_keypair().expect("keypair");
    (kp.private.try_into().expect("32 bytes"), kp.public.try_into().expect("32 bytes"))
}

/// The client's first Noise message carrying `payload`, and its state.
pub fn initiate(
    client_private: &[u8; 32],
    server_public: &[u8; 32],
    seed: [u8; 32],
    payload: &[u8],
) -> Option<(HandshakeState, Vec<u8>)> {
    let mut hs = builder(seed)
        .local_private_key(client_private)
        .ok()?
        .remote_public_key(server_public)
        .ok()?
        .build_initiator()
        .ok()?;
    let mut msg = vec![0u8; payload.len() + 200];
    let n = hs.write_message(payload, &mut msg).ok()?;
    msg.truncate(n);
    Some((hs, msg))
}

/// The client reads the answer: its payload and the session keys
/// (client to server, server to client).
pub fn finish(mut hs: HandshakeState, msg: &[u8]) -> Option<(Vec<u8>, Keys)> {
    let mut payload = vec![0u8; msg.len()];
    let n = hs.read_message(msg, &mut payload).ok()?;
    payload.truncate(n);
    Some((payload, session_keys(&mut hs)))
}

/// The server reads a first message: its state and payload.
pub fn respond(server_private: &[u8; 32], seed: [u8; 32], msg: &[u8]) -> Option<(HandshakeState, Vec<u8>)> {
    let mut hs = builder(seed).local_private_key(server_private).ok()?.build_responder().ok()?;
    let mut payload = vec![0u8; msg.len()];
    let n = hs.read_message(msg, &mut payload).ok()?;
    payload.truncate(n);
    Some((hs, payload))
}

/// The server's answer carrying `payload`, and the session keys.
pub fn answer(mut hs: HandshakeState, payload: &[u8]) -> Option<(Vec<u8>, Keys)> {
    let mut msg = vec![0u8; payload.len() + 100];
    let n = hs.write_message(payload, &mut msg).ok()?;
    msg.truncate(n);
    Some((msg, session_keys(&mut hs)))
}

/// Both directions' keys of a session.
pub struct Keys {
    pub c2s: DirKeys,
    pub s2c: DirKeys,
}

fn session_keys(hs: &mut HandshakeState) -> Keys {
    let hash = hs.get_handshake_hash().to_vec();
    let (k1, k2) = hs.dangerously_get_raw_split();
    let dir = |k: &[u8; 32]| {
        DirKeys::new(
            &hkdf::<32>(&hash, k, b"anon data key"),
            &hkdf::<12>(&hash, k, b"anon data iv"),
            &hkdf::<16>(&hash, k, b"anon header protection"),
        )
    };
    Keys { c2s: dir(&k1), s2c: dir(&k2) }
}

/// One direction's data keys.
pub struct DirKeys {
    aead: Aes256Gcm,
    iv: [u8; 12],
    hp: Aes128,
}

impl DirKeys {
    pub fn new(key: &[u8; 32], iv: &[u8; 12], hp: &[u8; 16]) -> DirKeys {
        DirKeys { aead: aes_gcm::KeyInit::new(&(*key).into()), iv: *iv, hp: aes::cipher::KeyInit::new(&(*hp).into()) }
    }

    fn nonce(&self, pn: u64) -> [u8; 12] {
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

    /// `prefix` (the token, or nothing) | masked PN | AEAD(body) | tag.
    pub fn seal(&self, prefix: &[u8], pn: u64, body: &[u8]) -> Vec<u8> {
        let mut out = prefix.to_vec();
        out.extend_from_slice(&pn.to_be_bytes());
        let header_len = out.len();
        let mut ct = body.to_vec();
        let Ok(tag) = self.aead.encrypt_inout_detached(&self.nonce(pn).into(), &out, ct.as_mut_slice().into()) else {
            return out;
        };
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        let mask = self.mask(out.get(header_len..header_len + 16).unwrap_or_default());
        for (b, m) in out.iter_mut().skip(header_len - PN_LEN).take(PN_LEN).zip(mask) {
            *b ^= m;
        }
        out
    }

    /// Opens a datagram whose header (token and PN) is `header_len` bytes:
    /// the packet number and the body.
    pub fn open(&self, datagram: &[u8], header_len: usize) -> Option<(u64, Vec<u8>)> {
        if datagram.len() < header_len + 3 + 16 {
            return None;
        }
        let (head, rest) = datagram.split_at(header_len);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let mask = self.mask(rest.get(..16)?);
        let mut ad = head.to_vec();
        for (b, m) in ad.iter_mut().skip(header_len - PN_LEN).zip(mask) {
            *b ^= m;
        }
        let pn = u64::from_be_bytes(ad.get(header_len - PN_LEN..)?.try_into().ok()?);
        let mut body = ct.to_vec();
        let tag: [u8; 16] = tag.try_into().ok()?;
        self.aead.decrypt_inout_detached(&self.nonce(pn).into(), &ad, body.as_mut_slice().into(), &tag.into()).ok()?;
        Some((pn, body))
    }
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The keys of a key log line (`ANON_SECURE` and six hex fields).
pub fn parse_key_log(line: &str) -> Option<Keys> {
    let mut it = line.split_whitespace();
    if it.next()? != "ANON_SECURE" {
        return None;
    }
    let c2s = DirKeys::new(&unhex(it.next()?)?, &unhex(it.next()?)?, &unhex(it.next()?)?);
    let s2c = DirKeys::new(&unhex(it.next()?)?, &unhex(it.next()?)?, &unhex(it.next()?)?);
    Some(Keys { c2s, s2c })
}

/// Appends one handshake payload field.
pub fn put_field(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let value = value.get(..value.len().min(usize::from(u16::MAX))).unwrap_or_default();
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The fields of a payload, until the first malformed one.
pub fn fields(mut payload: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((&kind, rest)) = payload.split_first() {
        let Some(len) = rest.get(..2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else { break };
        let Some(value) = rest.get(2..2 + len) else { break };
        out.push((kind, value.to_vec()));
        payload = &rest[2 + len..];
    }
    out
}

/// A sealed body: flags | inner length | inner | [token] | padding.
pub fn body(flags: u8, inner: &[u8], token: Option<&[u8]>, pad: usize) -> Vec<u8> {
    let mut b = vec![flags];
    b.extend_from_slice(&(inner.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    b.extend_from_slice(inner);
    if let Some(t) = token {
        b.extend_from_slice(t);
    }
    b.resize(b.len() + pad, 0);
    b
}

/// The inner datagram and token of a body, when its lengths add up.
pub fn parse_body(body: &[u8]) -> Option<(&[u8], Option<[u8; TOKEN_LEN]>)> {
    let (&flags, rest) = body.split_first()?;
    let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let inner = rest.get(2..2 + len)?;
    let token = if flags & 1 != 0 { Some(rest.get(2 + len..2 + len + TOKEN_LEN)?.try_into().ok()?) } else { None };
    Some((inner, token))
}

/// Edits a fuzzer applies to a real datagram.
#[derive(Debug, arbitrary::Arbitrary)]
pub enum Edit {
    Flip { at: u16, mask: u8 },
    Truncate { len: u16 },
    Splice { at: u16, bytes: Vec<u8> },
    Append(Vec<u8>),
    Remove { at: u16, len: u8 },
}

/// `d` with `edits` applied (at most 8; positions wrap).
pub fn mutate(d: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut d = d.to_vec();
    for e in edits.iter().take(8) {
        let n = d.len().max(1);
        match e {
            Edit::Flip { at, mask } => {
                if let Some(b) = d.get_mut(usize::from(*at) % n) {
                    *b ^= mask;
                }
            }
            Edit::Truncate { len } => d.truncate(usize::from(*len) % n),
            Edit::Splice { at, bytes } => {
                let at = usize::from(*at) % n;
                for (i, b) in bytes.iter().take(64).enumerate() {
                    if let Some(x) = d.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
            Edit::Append(bytes) => d.extend(bytes.iter().take(256)),
            Edit::Remove { at, len } => {
                let at = (usize::from(*at) % n).min(d.len());
                let end = (at + usize::from(*len)).min(d.len());
                d.drain(at..end);
            }
        }
    }
    d
}

/// Whether `ANON_FUZZ_DEBUG` is set: the targets then print what each input
/// reached (for judging the depth of a corpus with `-runs=0`).
pub fn debug() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("ANON_FUZZ_DEBUG").is_some())
}

/// Static key pairs by seed, made once per process: X25519 is the costly
/// part of an input, and the fuzzer gains nothing from fresh static keys.
pub fn keypair_cached(seed: u8) -> ([u8; 32], [u8; 32]) {
    static PAIRS: std::sync::OnceLock<Vec<([u8; 32], [u8; 32])>> = std::sync::OnceLock::new();
    PAIRS.get_or_init(|| (0..=255u8).map(|s| keypair([s; 32])).collect())[usize::from(seed)]
}

/// The core's static key of `keypair_cached(seed)`, made once per process.
pub fn secret(seed: u8) -> anon_proto::secure::StaticSecret {
    use base64::Engine as _;
    static SECRETS: std::sync::OnceLock<Vec<anon_proto::secure::StaticSecret>> = std::sync::OnceLock::new();
    SECRETS.get_or_init(|| {
        (0..=255u8)
            .map(|s| {
                let (private, public) = keypair_cached(s);
                let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(private);
                let key = anon_proto::secure::StaticSecret::from_file_text(&text).expect("a key file");
                assert_eq!(key.public().0, public, "the same X25519 public key");
                key
            })
            .collect()
    })[usize::from(seed)]
    .clone()
}
