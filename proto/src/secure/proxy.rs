//! What a proxy server and its driver exchange (docs/PROTOCOL.md §9): a
//! client asks for a URL in its first message; the core hands the request
//! to the driver, which fetches it (policy, cache, origin) and hands back
//! the page or a refusal. The core does no I/O: a fetch is an event out and
//! a call in, like a datagram.

use crate::page::Body;

/// Longest URL a server takes (the length browsers and servers commonly
/// accept); a longer one is refused as not allowed.
pub const MAX_URL_LEN: usize = 2048;
/// Longest URL that fits a first message of [`MSG1_MAX`](super::client::MSG1_MAX)
/// bytes (outer layer, its clock and a cookie, Noise, TIME, CONN_ID, the URL's field header and the
/// inner SYN with its offer): the longest a client asks for, so that no
/// handshake datagram needs fragmenting.
pub const MAX_REQUEST_URL_LEN: usize = super::client::MSG1_MAX
    - super::handshake::OUTER_OVERHEAD
    - super::handshake::NOISE_MSG1_OVERHEAD
    - super::handshake::OuterTime::LEN
    - super::handshake::COOKIE_LEN
    - (3 + 8)
    - (3 + 8)
    - 3
    - (3 + crate::wire::HEADER_LEN + crate::wire::ext::Answer::ENCODED_LEN);
/// Longest content type kept in [`PageMeta`].
pub const MAX_CONTENT_TYPE_LEN: usize = 255;

/// A URL a client asked for: the driver answers it with
/// [`SecureServer::fetch_done`](super::SecureServer::fetch_done) and the
/// same `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Names the request in the answer.
    pub id: u64,
    /// The URL, as the client sent it (UTF-8, within [`MAX_URL_LEN`]).
    pub url: String,
    /// The source the client counts against (its address, or the prefix
    /// `--source-prefix-v4`/`-v6` make one source), for per-source limits.
    pub source: std::net::IpAddr,
}

/// A fetched page, ready to serve, or one still arriving.
#[derive(Debug, Clone)]
pub struct FetchedPage {
    /// The page, hashed (shared with the driver's cache: no copy), or the
    /// stream it arrives in (docs/PROTOCOL.md §9.7).
    pub body: Body,
    /// What the origin said of it, for the answer; `None` for a stream,
    /// which starts with it (docs/PROTOCOL.md §9.7).
    pub meta: Option<PageMeta>,
}

/// What the origin said of a page, for the client's `--headers`: the
/// META field of the answer.
///
/// ```text
/// status (u16) | content type length (u8) | content type | final URL (rest)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageMeta {
    /// The HTTP status of the final response (a 2xx).
    pub status: u16,
    /// Its Content-Type, or empty.
    pub content_type: String,
    /// The URL after redirects, or empty when it did not fit the answer
    /// (the answer is never longer than the first message).
    pub final_url: String,
}

impl PageMeta {
    /// Appends the encoding, the final URL cut (at a character boundary)
    /// so that the whole takes at most `room` bytes, and dropped when
    /// even its start does not fit.
    pub fn encode(&self, room: usize, out: &mut Vec<u8>) {
        let ct = truncate(&self.content_type, MAX_CONTENT_TYPE_LEN);
        out.extend_from_slice(&self.status.to_be_bytes());
        out.push(ct.len() as u8);
        out.extend_from_slice(ct.as_bytes());
        let left = room.saturating_sub(3 + ct.len());
        // A cut URL would name another page: all of it or nothing.
        if self.final_url.len() <= left.min(MAX_URL_LEN) {
            out.extend_from_slice(self.final_url.as_bytes());
        }
    }

    /// Reads a META field; `None` when malformed.
    pub fn decode(value: &[u8]) -> Option<PageMeta> {
        let status = u16::from_be_bytes(value.get(..2)?.try_into().ok()?);
        let ct_len = usize::from(*value.get(2)?);
        let content_type = std::str::from_utf8(value.get(3..3 + ct_len)?).ok()?.to_owned();
        let url = value.get(3 + ct_len..)?;
        if url.len() > MAX_URL_LEN {
            return None;
        }
        let final_url = std::str::from_utf8(url).ok()?.to_owned();
        Some(PageMeta { status, content_type, final_url })
    }
}

/// The longest prefix of `s` within `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_a_long_url_is_dropped_not_cut() {
        let meta = PageMeta {
            status: 200,
            content_type: "text/html; charset=utf-8".into(),
            final_url: "https://a.b/c".into(),
        };
        let mut v = Vec::new();
        meta.encode(1000, &mut v);
        assert_eq!(PageMeta::decode(&v), Some(meta.clone()));
        v.clear();
        meta.encode(3 + meta.content_type.len() + 5, &mut v);
        assert_eq!(PageMeta::decode(&v), Some(PageMeta { final_url: String::new(), ..meta }));
        let long = PageMeta { status: 203, content_type: "é".repeat(200), final_url: String::new() };
        v.clear();
        long.encode(1000, &mut v);
        let got = PageMeta::decode(&v).unwrap();
        assert!(got.content_type.len() <= MAX_CONTENT_TYPE_LEN && long.content_type.starts_with(&got.content_type));
        for junk in [&[][..], &[0, 200], &[0, 200, 9, b'a'], &[0, 200, 1, 0xff]] {
            assert_eq!(PageMeta::decode(junk), None, "{junk:?}");
        }
    }
}
