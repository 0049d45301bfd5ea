//! A set of disjoint half-open `u64` ranges, as quinn-proto's range sets:
//! insertion costs in proportion to the ranges it touches (plus a
//! logarithm), never to the span it covers. The sender's SACK scoreboard
//! keeps the segments selectively acknowledged in one, so that an ACK whose
//! blocks repeat what is known costs a few lookups, however wide its blocks.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent ranges `start..end`, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// The range holding `x`, if any.
    pub fn containing(&self, x: u64) -> Option<Range<u64>> {
        self.map.range(..=x).next_back().filter(|&(_, &end)| x < end).map(|(&s, &e)| s..e)
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        self.map.range(..=x).next_back().is_some_and(|(_, &end)| x < end)
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds `range` and calls `new` for each part of it that was not in the
    /// set before, in order. Cost: the ranges it meets, not its length.
    pub fn insert(&mut self, range: Range<u64>, mut new: impl FnMut(Range<u64>)) {
        let Range { mut start, mut end } = range;
        if start >= end {
            return;
        }
        // A range that starts before and reaches `start` (or touches it)
        // merges with the new one.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                if e >= end {
                    return; // wholly known
                }
                self.map.remove(&s);
                start = s;
                // Only what lies past `e` is new.
                let mut cursor = e;
                self.absorb(&mut cursor, &mut end, &mut new);
                self.map.insert(start, end);
                return;
            }
        }
        let mut cursor = start;
        self.absorb(&mut cursor, &mut end, &mut new);
        self.map.insert(start, end);
    }

    /// Reports the gaps from `cursor` to `end` and removes the ranges that
    /// start within it, extending `end` over the last one.
    fn absorb(&mut self, cursor: &mut u64, end: &mut u64, new: &mut impl FnMut(Range<u64>)) {
        while let Some((&s, &e)) = self.map.range(*cursor..=*end).next() {
            if s > *cursor {
                new(*cursor..s);
            }
            self.map.remove(&s);
            *cursor = e.max(*cursor);
            if e >= *end {
                *end = e;
                return;
            }
        }
        if *cursor < *end {
            new(*cursor..*end);
        }
    }

    /// Removes everything below `x`.
    pub fn remove_below(&mut self, x: u64) {
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= x {
                break;
            }
            self.map.remove(&s);
            if e > x {
                self.map.insert(x, e);
                break;
            }
        }
    }

    /// Removes `x` alone.
    pub fn remove(&mut self, x: u64) {
        let Some((&s, &e)) = self.map.range(..=x).next_back() else { return };
        if x >= e {
            return;
        }
        self.map.remove(&s);
        if s < x {
            self.map.insert(s, x);
        }
        if x + 1 < e {
            self.map.insert(x + 1, e);
        }
    }

    /// The ranges, lowest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn insert(set: &mut RangeSet, r: Range<u64>) -> Vec<Range<u64>> {
        let mut new = Vec::new();
        set.insert(r, |n| new.push(n));
        new
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // lists of ranges, meant
    fn reports_only_what_is_new_and_merges() {
        let mut s = RangeSet::new();
        assert_eq!(insert(&mut s, 10..20), [10..20]);
        assert_eq!(insert(&mut s, 30..40), [30..40]);
        assert_eq!(insert(&mut s, 15..35), [20..30]);
        assert_eq!(s.iter().collect::<Vec<_>>(), [10..40]);
        assert!(insert(&mut s, 12..38).is_empty());
        assert_eq!(insert(&mut s, 0..50), [0..10, 40..50]);
        assert_eq!(insert(&mut s, 50..51), [50..51]);
        assert_eq!(s.len(), 1, "adjacent ranges merge");
        assert!(insert(&mut s, 5..5).is_empty());
        s.remove(20);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0..20, 21..51]);
        assert!(!s.contains(20) && s.contains(21) && s.contains(0) && !s.contains(51));
        s.remove_below(30);
        assert_eq!(s.iter().collect::<Vec<_>>(), [30..51]);
    }

    proptest! {
        /// Against a plain bitmap: the same membership, and the reported
        /// parts are exactly the new members, in order.
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((0u64..200, 0u64..40, 0u8..10), 1..60)) {
            let mut s = RangeSet::new();
            let mut bits = [false; 256];
            for (start, len, kind) in ops {
                match kind {
                    0 => { s.remove(start); bits[start as usize] = false; }
                    1 => { s.remove_below(start); bits[..start as usize].fill(false); }
                    _ => {
                        let end = start + len;
                        let mut expect = Vec::new();
                        for x in start..end {
                            if !bits[x as usize] { expect.push(x); bits[x as usize] = true; }
                        }
                        let got: Vec<u64> = insert(&mut s, start..end).into_iter().flatten().collect();
                        prop_assert_eq!(got, expect);
                    }
                }
                for x in 0..256u64 {
                    prop_assert_eq!(s.contains(x), bits[x as usize], "{}", x);
                }
                let ranges: Vec<_> = s.iter().collect();
                for w in ranges.windows(2) {
                    prop_assert!(w[0].end < w[1].start, "not disjoint and merged: {:?}", ranges);
                }
            }
        }
    }
}
