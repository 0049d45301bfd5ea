//! Fast-mode extension messages (docs/PROTOCOL.md §6): the offer a client
//! puts in its SYN payload, the answer a server puts in its SYN|ACK payload,
//! and the acknowledgment information a fast-mode client puts in the payload
//! of its ACKs.
//!
//! Offer and answer share one layout:
//!
//! ```text
//!  0..4  magic "ANON" (0x414e4f4e)
//!  4     version (1)
//!  5     message type: 1 = offer, 2 = answer
//!  6..8  length of the options that follow (u16)
//!  8..   options: type (u8), length (u8), value (length bytes)
//! ```
//!
//! Unknown option types are skipped; padding is option type 0 of any length.
//! A message that is malformed anywhere (wrong magic or version, lengths that
//! run past the end, a known option with the wrong length) is ignored as a
//! whole, and the connection stays in baseline mode.

use std::fmt;

/// "ANON".
pub const MAGIC: u32 = 0x414e_4f4e;
/// The only version this implementation speaks.
pub const VERSION: u8 = 1;
const TYPE_OFFER: u8 = 1;
const TYPE_ANSWER: u8 = 2;
const PREFIX_LEN: usize = 8;

/// Option types.
mod opt {
    pub const PAD: u8 = 0;
    pub const MAX_SEGMENT: u8 = 1;
    pub const RECV_WINDOW: u8 = 2;
    pub const SEGMENT: u8 = 3;
    pub const PAGE_LEN: u8 = 4;
    pub const PAGE_SHA256: u8 = 5;
}

/// Largest payload a fast-mode segment may carry: 1500-byte MTU minus IPv6
/// (40) and UDP (8) headers and our 12-byte header. It fits IPv4 as well.
pub const MAX_SEGMENT: u16 = 1500 - 40 - 8 - 12;

/// The segment size a server picks by default: with our header, UDP and
/// IPv6 headers it makes 1260 bytes, within the IPv6 minimum MTU of 1280
/// (RFC 8200 §5), so it crosses any path without fragmentation (as QUIC's
/// 1200-byte datagrams do, RFC 9000 §14). Datagrams are sent with Don't
/// Fragment set.
pub const DEFAULT_SEGMENT: u16 = 1200;

/// Length of a SYN|ACK carrying an [`Answer`]: the offer is padded so that
/// its SYN is at least this long (no amplification, PROTOCOL.md §6).
pub const ANSWER_DATAGRAM_LEN: usize = super::HEADER_LEN + Answer::ENCODED_LEN;

/// A client's offer of fast mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Largest segment payload the client accepts.
    pub max_segment: u16,
    /// Bytes the client buffers beyond its cumulative acknowledgment.
    pub recv_window: u32,
}

/// A server's acceptance of an offer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Payload bytes per data segment (all but the last are this long).
    pub segment: u16,
    /// Length of the page.
    pub page_len: u64,
    /// SHA-256 of the page.
    pub page_sha256: [u8; 32],
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.page_sha256.iter().take(8).map(|b| format!("{b:02x}")).collect();
        f.debug_struct("Answer")
            .field("segment", &self.segment)
            .field("page_len", &self.page_len)
            .field("page_sha256", &format_args!("{hex}…"))
            .finish()
    }
}

fn put_prefix(kind: u8, options_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(options_len as u16).to_be_bytes());
}

fn put_opt(kind: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// Walks the options of a message of type `kind`, calling `f(type, value)`
/// for each; `None` if the message is malformed or not of that type.
fn parse(payload: &[u8], kind: u8, mut f: impl FnMut(u8, &[u8]) -> Option<()>) -> Option<()> {
    let magic = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
    let (&version, &msg_type) = (payload.get(4)?, payload.get(5)?);
    if magic != MAGIC || version != VERSION || msg_type != kind {
        return None;
    }
    let len = usize::from(u16::from_be_bytes(payload.get(6..8)?.try_into().ok()?));
    let mut rest = payload.get(PREFIX_LEN..PREFIX_LEN.checked_add(len)?)?;
    while let [kind, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        f(*kind, value)?;
        rest = tail.get(usize::from(*len)..)?;
    }
    // A lone trailing byte is a truncated option.
    rest.is_empty().then_some(())
}

fn be<const N: usize>(value: &[u8]) -> Option<[u8; N]> {
    value.try_into().ok()
}

impl Offer {
    /// Encodes the offer as a SYN payload, padded so that the SYN is as long
    /// as the SYN|ACK that would answer it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut options = Vec::with_capacity(32);
        put_opt(opt::MAX_SEGMENT, &self.max_segment.to_be_bytes(), &mut options);
        put_opt(opt::RECV_WINDOW, &self.recv_window.to_be_bytes(), &mut options);
        let unpadded = PREFIX_LEN + options.len();
        if unpadded < Answer::ENCODED_LEN {
            let pad = (Answer::ENCODED_LEN - unpadded).saturating_sub(2);
            put_opt(opt::PAD, &vec![0; pad], &mut options);
        }
        put_prefix(TYPE_OFFER, options.len(), out);
        out.extend_from_slice(&options);
    }

    /// Reads an offer from a SYN payload; `None` for no offer or a malformed
    /// one. Both options are required; unknown ones are skipped.
    pub fn decode(payload: &[u8]) -> Option<Offer> {
        let (mut max_segment, mut recv_window) = (None, None);
        parse(payload, TYPE_OFFER, |kind, value| {
            match kind {
                opt::MAX_SEGMENT => max_segment = Some(u16::from_be_bytes(be(value)?)),
                opt::RECV_WINDOW => recv_window = Some(u32::from_be_bytes(be(value)?)),
                _ => {}
            }
            Some(())
        })?;
        Some(Offer { max_segment: max_segment?, recv_window: recv_window? })
    }
}

impl Answer {
    /// Encoded length: prefix and three options.
    pub const ENCODED_LEN: usize = PREFIX_LEN + (2 + 2) + (2 + 8) + (2 + 32);

    /// Encodes the answer as a SYN|ACK payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_prefix(TYPE_ANSWER, Self::ENCODED_LEN - PREFIX_LEN, out);
        put_opt(opt::SEGMENT, &self.segment.to_be_bytes(), out);
        put_opt(opt::PAGE_LEN, &self.page_len.to_be_bytes(), out);
        put_opt(opt::PAGE_SHA256, &self.page_sha256, out);
    }

    /// Reads an answer from a SYN|ACK payload; `None` if absent or malformed.
    pub fn decode(payload: &[u8]) -> Option<Answer> {
        let (mut segment, mut page_len, mut page_sha256) = (None, None, None);
        parse(payload, TYPE_ANSWER, |kind, value| {
            match kind {
                opt::SEGMENT => segment = Some(u16::from_be_bytes(be(value)?)),
                opt::PAGE_LEN => page_len = Some(u64::from_be_bytes(be(value)?)),
                opt::PAGE_SHA256 => page_sha256 = Some(be(value)?),
                _ => {}
            }
            Some(())
        })?;
        let segment = segment.filter(|&s| s > 0)?;
        Some(Answer { segment, page_len: page_len?, page_sha256: page_sha256? })
    }
}

/// What a fast-mode client's ACK carries in its payload.
///
/// ```text
///  0..4   receive window (u32): bytes beyond the cumulative ack it accepts
///  4      number of SACK blocks n (u8, at most MAX_SACK_BLOCKS)
///  5..    n blocks: start (u32), end (u32) sequence numbers, end exclusive
///         (RFC 2018 §3); the most recently changed block first
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckInfo {
    /// Receive window beyond the cumulative acknowledgment.
    pub window: u32,
    /// Selective acknowledgments: `(start, end)` sequence numbers.
    pub sack: SackBlocks,
}

/// Most SACK blocks one ACK carries.
pub const MAX_SACK_BLOCKS: usize = 4;

/// Up to [`MAX_SACK_BLOCKS`] blocks, inline: decoding an ACK allocates
/// nothing (it is the server's hot path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SackBlocks {
    blocks: [(super::Seq, super::Seq); MAX_SACK_BLOCKS],
    len: usize,
}

impl SackBlocks {
    /// Adds a block; false (and nothing added) when full.
    pub fn push(&mut self, block: (super::Seq, super::Seq)) -> bool {
        match self.blocks.get_mut(self.len) {
            Some(slot) => {
                *slot = block;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The blocks, in order.
    pub fn as_slice(&self) -> &[(super::Seq, super::Seq)] {
        self.blocks.get(..self.len).unwrap_or(&[])
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The first [`MAX_SACK_BLOCKS`]; the rest are left out.
impl FromIterator<(super::Seq, super::Seq)> for SackBlocks {
    fn from_iter<I: IntoIterator<Item = (super::Seq, super::Seq)>>(iter: I) -> Self {
        let mut blocks = SackBlocks::default();
        for b in iter.into_iter().take(MAX_SACK_BLOCKS) {
            blocks.push(b);
        }
        blocks
    }
}

impl AckInfo {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.window.to_be_bytes());
        let blocks = self.sack.as_slice();
        out.push(blocks.len() as u8);
        for (start, end) in blocks {
            out.extend_from_slice(&start.get().to_be_bytes());
            out.extend_from_slice(&end.get().to_be_bytes());
        }
    }

    /// Reads the information from an ACK payload; `None` if malformed.
    pub fn decode(payload: &[u8]) -> Option<AckInfo> {
        let window = u32::from_be_bytes(be(payload.get(0..4)?)?);
        let n = usize::from(*payload.get(4)?);
        if n > MAX_SACK_BLOCKS || payload.len() != 5 + 8 * n {
            return None;
        }
        let mut sack = SackBlocks::default();
        for i in 0..n {
            let at = 5 + 8 * i;
            let start = u32::from_be_bytes(be(payload.get(at..at + 4)?)?);
            let end = u32::from_be_bytes(be(payload.get(at + 4..at + 8)?)?);
            sack.push((super::Seq(start), super::Seq(end)));
        }
        Some(AckInfo { window, sack })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HEADER_LEN, Seq};
    use proptest::prelude::*;

    #[test]
    fn offer_is_padded_to_the_answer_length() {
        let mut p = Vec::new();
        Offer { max_segment: 1440, recv_window: 1 << 20 }.encode(&mut p);
        assert_eq!(p.len(), Answer::ENCODED_LEN);
        assert_eq!(Offer::decode(&p), Some(Offer { max_segment: 1440, recv_window: 1 << 20 }));
        let mut a = Vec::new();
        let answer = Answer { segment: 1440, page_len: 12345, page_sha256: [7; 32] };
        answer.encode(&mut a);
        assert_eq!(a.len(), Answer::ENCODED_LEN);
        assert_eq!(Answer::decode(&a), Some(answer));
        assert_eq!(ANSWER_DATAGRAM_LEN, HEADER_LEN + 56);
    }

    #[test]
    fn malformed_or_foreign_messages_are_ignored() {
        let mut p = Vec::new();
        Offer { max_segment: 1440, recv_window: 9 }.encode(&mut p);
        // Every truncation.
        for n in 0..p.len() {
            assert_eq!(Offer::decode(&p[..n]), None, "{n}");
        }
        // Wrong magic, version, type.
        for at in [0, 4, 5] {
            let mut q = p.clone();
            q[at] ^= 0x40;
            assert_eq!(Offer::decode(&q), None);
        }
        // A known option with the wrong length.
        let mut q = Vec::new();
        put_prefix(TYPE_OFFER, 7, &mut q);
        put_opt(opt::MAX_SEGMENT, &[1, 2, 3], &mut q);
        put_opt(opt::RECV_WINDOW, &[], &mut q);
        assert_eq!(Offer::decode(&q), None);
        // A missing required option.
        let mut q = Vec::new();
        put_prefix(TYPE_OFFER, 4, &mut q);
        put_opt(opt::MAX_SEGMENT, &[5, 0], &mut q);
        assert_eq!(Offer::decode(&q), None);
        // An answer is not an offer.
        let mut a = Vec::new();
        Answer { segment: 1, page_len: 0, page_sha256: [0; 32] }.encode(&mut a);
        assert_eq!(Offer::decode(&a), None);
    }

    #[test]
    fn unknown_options_are_skipped() {
        let mut q = Vec::new();
        let mut options = Vec::new();
        put_opt(200, &[1, 2, 3], &mut options);
        put_opt(opt::RECV_WINDOW, &5u32.to_be_bytes(), &mut options);
        put_opt(opt::MAX_SEGMENT, &600u16.to_be_bytes(), &mut options);
        put_prefix(TYPE_OFFER, options.len(), &mut q);
        q.extend_from_slice(&options);
        // Bytes after the declared options are not part of the message.
        q.extend_from_slice(b"trailing");
        assert_eq!(Offer::decode(&q), Some(Offer { max_segment: 600, recv_window: 5 }));
    }

    #[test]
    fn ack_info_round_trip_and_limits() {
        let info =
            AckInfo { window: 65536, sack: [(Seq(10), Seq(20)), (Seq(u32::MAX - 5), Seq(3))].into_iter().collect() };
        let mut p = Vec::new();
        info.encode(&mut p);
        assert_eq!(p.len(), 5 + 16);
        assert_eq!(AckInfo::decode(&p), Some(info));
        assert_eq!(AckInfo::decode(&p[..p.len() - 1]), None);
        let mut too_many = vec![0, 0, 0, 1, 5];
        too_many.extend([0u8; 40]);
        assert_eq!(AckInfo::decode(&too_many), None);
        assert_eq!(AckInfo::decode(&[]), None);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(p in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Offer::decode(&p);
            let _ = Answer::decode(&p);
            let _ = AckInfo::decode(&p);
        }

        #[test]
        fn offers_round_trip(max_segment: u16, recv_window: u32) {
            let offer = Offer { max_segment, recv_window };
            let mut p = Vec::new();
            offer.encode(&mut p);
            prop_assert!(p.len() + HEADER_LEN >= ANSWER_DATAGRAM_LEN);
            prop_assert_eq!(Offer::decode(&p), Some(offer));
        }
    }
}
