//! Loss recovery: RTT estimation and retransmission timers, and the range
//! set the SACK scoreboard is kept in.

mod range_set;
mod rtt;

pub use range_set::RangeSet;
pub use rtt::{RtoConfig, RttEstimator};
