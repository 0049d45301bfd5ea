//! Static keys, their files, bridge lines, and the keys derived from them
//! (docs/PROTOCOL.md §8.1).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use zeroize::{Zeroize, Zeroizing};

/// Length of an X25519 key, public or private.
pub const KEY_LEN: usize = 32;

/// The scheme of a bridge line.
pub const BRIDGE_SCHEME: &str = "anon://";

/// An X25519 public key: the server's, pinned by its clients, or a
/// client's, listed in the server's allow list.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// Unpadded base64url, as in bridge lines and allow lists.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses unpadded (or padded) base64url of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<PublicKey, KeyError> {
        decode_key(text).map(|k| PublicKey(*k))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// Why a key, key file or bridge line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64url, or not 32 bytes.
    #[error("not a key: expected 43 characters of base64url (32 bytes)")]
    Encoding,
    /// A key file with no key line.
    #[error("no key in the file")]
    Empty,
    /// A bridge line that is not `anon://KEY@HOST:PORT`.
    #[error("not a bridge line: expected anon://KEY@HOST:PORT")]
    Bridge,
    /// The key is the all-zero point or another low-order key.
    #[error("not a usable X25519 key")]
    Weak,
}

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let text = text.trim().trim_end_matches('=');
    let mut bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(text).map_err(|_| KeyError::Encoding)?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() != KEY_LEN {
        bytes.zeroize();
        return Err(KeyError::Encoding);
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// A static X25519 key pair. The private half is erased when dropped.
#[derive(Clone)]
pub struct StaticSecret {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticSecret").field("public", &self.public).finish_non_exhaustive()
    }
}

impl StaticSecret {
    /// A new key pair from `rng` (a CSPRNG outside tests).
    pub fn generate(rng: &mut dyn RngCore) -> StaticSecret {
        let mut private = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut private[..]);
        // Curve25519 clamping happens inside the DH; any 32 bytes are a key.
        StaticSecret::from_private(private)
    }

    fn from_private(private: Zeroizing<[u8; KEY_LEN]>) -> StaticSecret {
        let mut public = [0u8; KEY_LEN];
        if let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) {
            dh.set(&private[..]);
            if let Some(p) = dh.pubkey().get(..KEY_LEN) {
                public.copy_from_slice(p);
            }
        }
        StaticSecret { private, public: PublicKey(public) }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// The key file's text: a comment and the private key in base64url.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "# anon secure-mode private key: keep it secret (mode 0600).\n# public key: {}\n{}\n",
            self.public,
            URL_SAFE_NO_PAD.encode(&self.private[..])
        ))
    }

    /// Parses a key file: the first line that is neither empty nor a `#`
    /// comment is the private key in base64url.
    pub fn from_file_text(text: &str) -> Result<StaticSecret, KeyError> {
        let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).ok_or(KeyError::Empty)?;
        let key = StaticSecret::from_private(decode_key(line)?);
        if key.public.0 == [0u8; KEY_LEN] {
            return Err(KeyError::Weak);
        }
        Ok(key)
    }
}

/// Parses an allow list: one client public key per line, `#` comments and
/// empty lines skipped, anything after the key on its line ignored.
pub fn parse_allow_list(text: &str) -> Result<Vec<PublicKey>, (usize, KeyError)> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_whitespace().next().unwrap_or_default();
        keys.push(PublicKey::from_base64(key).map_err(|e| (n + 1, e))?);
    }
    Ok(keys)
}

/// What a client needs to reach a secure-mode server:
/// `anon://<base64url public key>@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// The server's static public key.
    pub key: PublicKey,
    /// `HOST:PORT`, as written (a name, an IPv4 address or `[IPv6]`).
    pub address: String,
}

impl Bridge {
    /// Parses a bridge line.
    pub fn parse(line: &str) -> Result<Bridge, KeyError> {
        let rest = line.trim().strip_prefix(BRIDGE_SCHEME).ok_or(KeyError::Bridge)?;
        let (key, address) = rest.split_once('@').ok_or(KeyError::Bridge)?;
        let address = address.trim_end_matches('/');
        let (host, port) = address.rsplit_once(':').ok_or(KeyError::Bridge)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(KeyError::Bridge);
        }
        Ok(Bridge { key: PublicKey::from_base64(key)?, address: address.to_owned() })
    }
}

impl fmt::Display for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{BRIDGE_SCHEME}{}@{}", self.key, self.address)
    }
}

/// HKDF-SHA256 (RFC 5869) of `ikm` under `salt`, expanded for `label`.
pub(crate) fn derive<const N: usize>(salt: &[u8], ikm: &[u8], label: &[u8]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    // N is at most 32 here, far below HKDF's limit of 255 hash lengths.
    let _ = hk.expand(label, &mut out[..]);
    out
}

/// The key of the outer layer of handshake datagrams, derived from the
/// server's public key: only those who hold the bridge line can tell a
/// handshake from random bytes (docs/PROTOCOL.md §8.2).
pub(crate) fn obfuscation_key(server: &PublicKey) -> Zeroizing<[u8; 32]> {
    derive::<32>(b"anon secure v1", &server.0, b"handshake obfuscation")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn key_file_round_trips_and_public_key_is_derived() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let key = StaticSecret::generate(&mut rng);
        let again = StaticSecret::from_file_text(&key.to_file_text()).expect("parses");
        assert_eq!(key.public(), again.public());
        assert_ne!(key.public().0, [0; 32]);
        assert_ne!(&key.public().0, key.private_bytes());
    }

    #[test]
    fn bridge_lines_parse_and_print() {
        let key = PublicKey([7; 32]);
        for address in ["127.0.0.1:4000", "[::1]:4000", "example.org:1"] {
            let b = Bridge { key, address: address.to_owned() };
            assert_eq!(Bridge::parse(&b.to_string()), Ok(b));
        }
        for bad in ["", "anon://", "anon://x@h:1", "http://AAAA@h:1", "anon://@h:1"] {
            assert!(Bridge::parse(bad).is_err(), "{bad}");
        }
        let no_port = format!("anon://{}@host", key);
        assert_eq!(Bridge::parse(&no_port), Err(KeyError::Bridge));
    }

    #[test]
    fn allow_list_names_the_bad_line() {
        let good = PublicKey([9; 32]).to_base64();
        let text = format!("# clients\n{good} alice\n\nnot-a-key\n");
        assert_eq!(parse_allow_list(&text), Err((4, KeyError::Encoding)));
        assert_eq!(parse_allow_list(&format!("{good}\n")), Ok(vec![PublicKey([9; 32])]));
    }
}
