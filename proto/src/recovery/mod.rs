//! Loss recovery: RTT estimation and retransmission timers.

mod rtt;

pub use rtt::{RtoConfig, RttEstimator};
