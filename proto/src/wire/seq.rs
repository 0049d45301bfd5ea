//! Sequence numbers: 32-bit values compared modulo 2^32.
//!
//! Initial sequence numbers are random, so any transfer may wrap around
//! 2^32. Comparisons use serial-number arithmetic (RFC 1982 §3.2): `a` is
//! before `b` when `b - a`, taken modulo 2^32, lies in `1..2^31`.

use std::cmp::Ordering;
use std::fmt;
use std::ops::{Add, Sub};

/// A sequence or acknowledgment number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// The raw value as sent on the wire.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Signed distance from `earlier` to `self` (RFC 1982 §3.2).
    ///
    /// Positive when `self` is after `earlier`. Distances of exactly 2^31 are
    /// undefined by RFC 1982; they come out negative here, so such a number is
    /// treated as old, which is the safe reading for an acknowledgment.
    pub const fn since(self, earlier: Seq) -> i32 {
        self.0.wrapping_sub(earlier.0) as i32
    }

    /// The later of two sequence numbers in serial order.
    pub fn max(self, other: Seq) -> Seq {
        if other > self { other } else { self }
    }
}

impl Add<u32> for Seq {
    type Output = Seq;
    fn add(self, rhs: u32) -> Seq {
        Seq(self.0.wrapping_add(rhs))
    }
}

impl Sub<u32> for Seq {
    type Output = Seq;
    fn sub(self, rhs: u32) -> Seq {
        Seq(self.0.wrapping_sub(rhs))
    }
}

/// Serial-number order. Not a total order (it is not transitive across more
/// than half the number space), which is why `Ord` is not implemented.
impl PartialOrd for Seq {
    fn partial_cmp(&self, other: &Seq) -> Option<Ordering> {
        Some(self.since(*other).cmp(&0))
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around() {
        let near_end = Seq(u32::MAX - 1);
        assert_eq!(near_end + 3, Seq(1));
        assert!(Seq(1) > near_end);
        assert!(near_end < Seq(1));
        assert_eq!(Seq(1).since(near_end), 3);
        assert_eq!((Seq(1) - 3), near_end);
    }

    #[test]
    fn half_space_is_old() {
        assert!(Seq(1u32 << 31).since(Seq(0)) < 0);
    }

    proptest! {
        #[test]
        fn adding_moves_forward(a: u32, d in 1u32..(1 << 31)) {
            let a = Seq(a);
            prop_assert!(a + d > a);
            prop_assert!(a < a + d);
            prop_assert_eq!((a + d).since(a), d as i32);
            prop_assert_eq!((a + d) - d, a);
        }
    }
}
