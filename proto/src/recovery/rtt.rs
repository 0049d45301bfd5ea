//! Round-trip time estimation and the retransmission timeout (RFC 6298).

use std::time::Duration;

/// Bounds and starting point of the retransmission timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtoConfig {
    /// RTO before any RTT sample (RFC 6298 §2.1: 1 s).
    pub initial: Duration,
    /// Floor of the RTO. RFC 6298 §2.4 asks for 1 s; like Linux (200 ms) we go
    /// lower so that a loss on a LAN or loopback does not cost a second.
    pub min: Duration,
    /// Ceiling of the backed-off RTO (RFC 6298 §2.5: at least 60 s).
    pub max: Duration,
    /// Clock granularity G of RFC 6298 §2.
    pub granularity: Duration,
}

impl RtoConfig {
    /// `rto` within the floor and the ceiling (the floor wins if they
    /// cross).
    pub fn clamp(&self, rto: Duration) -> Duration {
        rto.clamp(self.min, self.max.max(self.min))
    }
}

impl Default for RtoConfig {
    fn default() -> Self {
        RtoConfig {
            initial: Duration::from_secs(1),
            min: Duration::from_millis(50),
            max: Duration::from_secs(60),
            granularity: Duration::from_millis(1),
        }
    }
}

/// SRTT, RTTVAR and the backed-off RTO of one connection (RFC 6298 §2).
#[derive(Debug, Clone)]
pub struct RttEstimator {
    config: RtoConfig,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Number of consecutive timeouts: the RTO is doubled this many times
    /// (RFC 6298 §5.5).
    backoff: u32,
}

impl RttEstimator {
    /// An estimator with no sample yet.
    pub fn new(config: RtoConfig) -> Self {
        RttEstimator { config, srtt: None, rttvar: Duration::ZERO, backoff: 0 }
    }

    /// Smoothed RTT, once there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Feeds one RTT measurement. By Karn's rule (RFC 6298 §3) the caller
    /// never measures a retransmitted segment.
    pub fn on_sample(&mut self, rtt: Duration) {
        match self.srtt {
            // RFC 6298 §2.2
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            // RFC 6298 §2.3, alpha = 1/8, beta = 1/4
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar.saturating_mul(3).saturating_add(err)) / 4;
                self.srtt = Some((srtt.saturating_mul(7).saturating_add(rtt)) / 8);
            }
        }
        // A new measurement "collapses" a backed-off RTO back to the value
        // computed from the estimate (RFC 6298 §5, after step 5.7).
        self.backoff = 0;
    }

    /// The RTO before backoff: SRTT + max(G, 4·RTTVAR), clamped (RFC 6298 §2).
    pub fn base_rto(&self) -> Duration {
        let raw = match self.srtt {
            None => self.config.initial,
            Some(srtt) => srtt.saturating_add(self.config.granularity.max(self.rttvar.saturating_mul(4))),
        };
        self.config.clamp(raw)
    }

    /// The RTO to arm the timer with now, backoff included.
    pub fn rto(&self) -> Duration {
        let factor = 1u32.checked_shl(self.backoff.min(16)).unwrap_or(u32::MAX);
        self.base_rto().saturating_mul(factor).min(self.config.max)
    }

    /// The timer expired: double the RTO (RFC 6298 §5.5).
    pub fn on_timeout(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    /// Forgets the backoff: the timeouts were not the path's doing (secure
    /// mode's move to a client's new address, docs/PROTOCOL.md §8.4).
    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }

    /// How many consecutive timeouts have happened.
    pub fn backoff(&self) -> u32 {
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn initial_rto_then_first_sample() {
        let mut e = RttEstimator::new(RtoConfig::default());
        assert_eq!(e.rto(), Duration::from_secs(1));
        e.on_sample(ms(100));
        // SRTT = 100, RTTVAR = 50, RTO = 100 + 200
        assert_eq!(e.rto(), ms(300));
        e.on_sample(ms(100));
        // RTTVAR = 3/4 * 50 = 37.5, RTO = 100 + 150
        assert_eq!(e.rto(), ms(250));
    }

    #[test]
    fn floor_and_backoff_and_ceiling() {
        let mut e = RttEstimator::new(RtoConfig::default());
        e.on_sample(Duration::from_micros(40));
        assert_eq!(e.rto(), ms(50));
        e.on_timeout();
        assert_eq!(e.rto(), ms(100));
        e.on_timeout();
        assert_eq!(e.rto(), ms(200));
        for _ in 0..100 {
            e.on_timeout();
        }
        assert_eq!(e.rto(), Duration::from_secs(60));
        e.on_sample(Duration::from_micros(40));
        assert_eq!(e.rto(), ms(50));
    }
}
