//! The 12-byte header that starts every datagram (PROTOCOL.md §1).
//!
//! ```text
//!  0..4   sequence number        u32, big-endian
//!  4..8   acknowledgment number  u32, big-endian
//!  8..12  flags word             u32, big-endian: ACK = 4, SYN = 2, FIN = 1
//! ```
//!
//! The 29 unused flag bits are sent as zero and ignored on receipt.

use std::fmt;
use std::ops::Range;

use super::Seq;

/// Byte ranges of the header fields.
mod field {
    use std::ops::Range;
    pub const SEQ: Range<usize> = 0..4;
    pub const ACK: Range<usize> = 4..8;
    pub const FLAGS: Range<usize> = 8..12;
}

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 12;

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The datagram is shorter than the 12-byte header.
    #[error("datagram of {0} bytes is shorter than the 12-byte header")]
    TooShort(usize),
}

/// The three control flags of the flags word.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// Finish: no more data from the sender.
    pub const FIN: Flags = Flags(1);
    /// Synchronize sequence numbers.
    pub const SYN: Flags = Flags(2);
    /// The acknowledgment number is valid.
    pub const ACK: Flags = Flags(4);
    const KNOWN: u32 = 0b111;

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The flags word as sent on the wire.
    pub const fn bits(self) -> u32 {
        self.0 as u32
    }

    /// Flags from a received word; unknown bits are ignored (PROTOCOL.md §1).
    pub const fn from_word(word: u32) -> Flags {
        Flags((word & Self::KNOWN) as u8)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Flag names in the order of the packet log: ACK, SYN, FIN (PROTOCOL.md §4).
impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in [(Flags::ACK, "ACK"), (Flags::SYN, "SYN"), (Flags::FIN, "FIN")] {
            if self.contains(flag) {
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({self})")
    }
}

/// A decoded header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Header {
    /// Sequence number of the first payload byte, or the ISN on a SYN.
    pub seq: Seq,
    /// Next sequence number the sender expects; meaningful with ACK.
    pub ack: Seq,
    /// Control flags.
    pub flags: Flags,
}

fn read_u32(buf: &[u8], range: Range<usize>) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(range)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

impl Header {
    /// A header with the given fields.
    pub const fn new(seq: Seq, ack: Seq, flags: Flags) -> Header {
        Header { seq, ack, flags }
    }

    /// Decodes the header at the start of `datagram` and returns it with the
    /// payload that follows.
    pub fn decode(datagram: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
        let too_short = DecodeError::TooShort(datagram.len());
        let (Some(seq), Some(ack), Some(word)) =
            (read_u32(datagram, field::SEQ), read_u32(datagram, field::ACK), read_u32(datagram, field::FLAGS))
        else {
            return Err(too_short);
        };
        let payload = datagram.get(HEADER_LEN..).ok_or(too_short)?;
        let header = Header { seq: Seq(seq), ack: Seq(ack), flags: Flags::from_word(word) };
        Ok((header, payload))
    }

    /// The 12 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let (seq, rest) = out.split_at_mut(4);
        let (ack, flags) = rest.split_at_mut(4);
        seq.copy_from_slice(&self.seq.get().to_be_bytes());
        ack.copy_from_slice(&self.ack.get().to_be_bytes());
        flags.copy_from_slice(&self.flags.bits().to_be_bytes());
        out
    }

    /// Appends the header and `payload` to `out`, forming one datagram.
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.reserve(HEADER_LEN + payload.len());
        out.extend_from_slice(&self.to_bytes());
        out.extend_from_slice(payload);
    }

    /// The fields of a packet-log line: `<seq> <ack> [ACK] [SYN] [FIN]`.
    pub fn log_fields(&self) -> LogFields<'_> {
        LogFields(self)
    }
}

/// Formats a header as the packet log wants it (PROTOCOL.md §4).
#[derive(Debug)]
pub struct LogFields<'a>(&'a Header);

impl fmt::Display for LogFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.0;
        write!(f, "{} {}", h.seq, h.ack)?;
        if h.flags != Flags::NONE {
            write!(f, " {}", h.flags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_big_endian() {
        let h = Header::new(Seq(0x01020304), Seq(0x0a0b0c0d), Flags::ACK | Flags::FIN);
        let mut out = Vec::new();
        h.encode(b"xy", &mut out);
        assert_eq!(out, [1, 2, 3, 4, 10, 11, 12, 13, 0, 0, 0, 5, b'x', b'y']);
    }

    #[test]
    fn log_fields_order_ack_syn_fin() {
        let h = Header::new(Seq(100), Seq(12346), Flags::SYN | Flags::ACK);
        assert_eq!(h.log_fields().to_string(), "100 12346 ACK SYN");
        let h = Header::new(Seq(7), Seq(0), Flags::NONE);
        assert_eq!(h.log_fields().to_string(), "7 0");
        let all = Header::new(Seq(1), Seq(2), Flags::FIN | Flags::SYN | Flags::ACK);
        assert_eq!(all.log_fields().to_string(), "1 2 ACK SYN FIN");
    }

    #[test]
    fn ignores_unknown_flag_bits() {
        let mut d = Header::new(Seq(1), Seq(2), Flags::SYN).to_bytes().to_vec();
        d[8] = 0xff;
        d[11] |= 0xf8;
        let (h, payload) = Header::decode(&d).unwrap();
        assert_eq!(h.flags, Flags::SYN);
        assert!(payload.is_empty());
    }

    #[test]
    fn rejects_short_datagrams() {
        for len in 0..HEADER_LEN {
            let d = vec![0xffu8; len];
            assert_eq!(Header::decode(&d), Err(DecodeError::TooShort(len)));
        }
    }

    fn any_flags() -> impl Strategy<Value = Flags> {
        (0u32..8).prop_map(Flags::from_word)
    }

    proptest! {
        #[test]
        fn round_trips(seq: u32, ack: u32, flags in any_flags(),
                       payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let h = Header::new(Seq(seq), Seq(ack), flags);
            let mut d = Vec::new();
            h.encode(&payload, &mut d);
            prop_assert_eq!(d.len(), HEADER_LEN + payload.len());
            let (back, rest) = Header::decode(&d).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(rest, &payload[..]);
        }

        #[test]
        fn decode_never_panics(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            match Header::decode(&d) {
                Ok((h, payload)) => {
                    prop_assert!(d.len() >= HEADER_LEN);
                    prop_assert_eq!(payload.len(), d.len() - HEADER_LEN);
                    // Re-encoding gives back the datagram with unknown bits cleared.
                    let mut again = Vec::new();
                    h.encode(payload, &mut again);
                    prop_assert_eq!(&again[..8], &d[..8]);
                    prop_assert_eq!(&again[12..], &d[12..]);
                }
                Err(DecodeError::TooShort(n)) => prop_assert!(n < HEADER_LEN && n == d.len()),
            }
        }
    }
}
