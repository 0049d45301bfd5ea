//! BBR, after draft-ietf-ccwg-bbr in its simplest form (the v1 state
//! machine: Startup, Drain, ProbeBW, ProbeRTT): estimate the bottleneck
//! bandwidth (max of recent delivery rates) and the round-trip propagation
//! time (min of recent RTTs), pace at the bandwidth, keep about two
//! bandwidth-delay products in flight.
//!
//! Loss is not a signal here at all (like BBRv1; the current draft reacts to
//! loss above 2% per round), which is what keeps the rate up on a path with
//! random (non-congestive) loss, where loss-based algorithms collapse. The
//! pacing-gain cycle that probes for more bandwidth and drains the queue it
//! made is also what makes two BBR flows share a bottleneck.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Controller, RateSample, first_window, initial_window};

/// Startup's pacing gain. The draft's 2/ln(2) = 2.885 ("BBRStartupPacingGain")
/// is the smallest that doubles the delivery rate each round; with 4 and a
/// window growing 4x per round (`STARTUP_GROWTH`), Startup reaches the
/// bandwidth-delay product in half the rounds. For a 10 MiB page over
/// 100 Mbit/s and 50 ms that is 1.131 s to 1.089 s in the simulation (IW 32),
/// with two flows still sharing a bottleneck about equally.
const STARTUP_GAIN: f64 = 4.0;
/// Bytes added to the window per byte delivered in Startup (slow start's 1
/// doubles the window each round; 3 quadruples it).
const STARTUP_GROWTH: u64 = 3;
/// ProbeBW pacing-gain cycle: probe up, drain, cruise (six rounds).
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// ProbeBW in-flight target: two BDPs absorb delayed and stretched ACKs.
const CWND_GAIN: f64 = 2.0;
/// Rounds over which the bandwidth maximum is kept.
const BW_WINDOW_ROUNDS: u64 = 10;
/// How long a minimum RTT stays valid before ProbeRTT re-measures it.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// How long ProbeRTT holds the window at its minimum.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Startup ends when three rounds in a row grew the bandwidth by < 25%.
const FULL_BW_GROWTH: f64 = 1.25;
const FULL_BW_ROUNDS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Startup,
    Drain,
    ProbeBw { phase: usize, phase_start: Instant },
    ProbeRtt { until: Option<Instant> },
}

/// BBR congestion control.
#[derive(Debug, Clone)]
pub struct Bbr {
    mss: u64,
    state: State,
    /// Per-round maxima of the delivery rate, newest last.
    bw_samples: VecDeque<(u64, u64)>,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Option<Instant>,
    round: u64,
    next_round_delivered: u64,
    full_bw: u64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    cwnd: u64,
    /// Window saved on entering ProbeRTT, restored on leaving it.
    prior_cwnd: u64,
    /// Current pacing rate, bytes per second; it only grows until the pipe
    /// is full (draft-ietf-ccwg-bbr BBRSetPacingRateWithGain).
    pacing_rate: u64,
}

impl Bbr {
    /// A controller for segments of `mss` bytes; `rtt` from the handshake
    /// paces the first flight (draft-ietf-ccwg-bbr "BBRInitPacingRate").
    pub fn new(mss: u64, rtt: Option<Duration>) -> Self {
        Bbr {
            mss,
            state: State::Startup,
            bw_samples: VecDeque::new(),
            min_rtt: None,
            min_rtt_stamp: None,
            round: 0,
            next_round_delivered: 0,
            full_bw: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
            cwnd: first_window(mss, rtt),
            prior_cwnd: 0,
            // BBRInitPacingRate: the initial window over the handshake RTT,
            // or over a nominal millisecond without one.
            pacing_rate: (STARTUP_GAIN * first_window(mss, rtt) as f64
                / rtt.unwrap_or(Duration::from_millis(1)).as_secs_f64().max(1e-6)) as u64,
        }
    }

    fn btl_bw(&self) -> u64 {
        self.bw_samples.iter().map(|&(_, bw)| bw).max().unwrap_or(0)
    }

    fn bdp(&self, gain: f64) -> u64 {
        match self.min_rtt {
            Some(rtt) if self.btl_bw() > 0 => (gain * self.btl_bw() as f64 * rtt.as_secs_f64()) as u64,
            _ => initial_window(self.mss),
        }
    }

    fn pacing_gain(&self) -> f64 {
        match self.state {
            State::Startup => STARTUP_GAIN,
            State::Drain => 1.0 / STARTUP_GAIN,
            State::ProbeBw { phase, .. } => CYCLE.get(phase).copied().unwrap_or(1.0),
            State::ProbeRtt { .. } => 1.0,
        }
    }

    fn min_window(&self) -> u64 {
        4 * self.mss
    }

    fn update_bw(&mut self, s: &RateSample) {
        if s.prior_delivered >= self.next_round_delivered {
            self.next_round_delivered = s.delivered;
            self.round += 1;
            self.check_full_pipe();
        }
        // An app-limited sample only counts if it shows more bandwidth.
        if s.delivery_rate == 0 || (s.app_limited && s.delivery_rate < self.btl_bw()) {
            return;
        }
        match self.bw_samples.back_mut() {
            Some((round, bw)) if *round == self.round => *bw = (*bw).max(s.delivery_rate),
            _ => self.bw_samples.push_back((self.round, s.delivery_rate)),
        }
        while self.bw_samples.front().is_some_and(|&(r, _)| r + BW_WINDOW_ROUNDS <= self.round) {
            self.bw_samples.pop_front();
        }
    }

    /// Called once per round: has Startup stopped finding more bandwidth?
    fn check_full_pipe(&mut self) {
        if self.filled_pipe {
            return;
        }
        let bw = self.btl_bw();
        if bw as f64 >= self.full_bw as f64 * FULL_BW_GROWTH {
            self.full_bw = bw;
            self.full_bw_rounds = 0;
        } else {
            self.full_bw_rounds += 1;
            self.filled_pipe = self.full_bw_rounds >= FULL_BW_ROUNDS;
        }
    }

    fn update_state(&mut self, now: Instant, in_flight: u64) {
        match self.state {
            State::Startup if self.filled_pipe => self.state = State::Drain,
            State::Drain if in_flight <= self.bdp(1.0) => {
                self.state = State::ProbeBw { phase: 2, phase_start: now };
            }
            State::ProbeBw { phase, phase_start } => {
                let rtt = self.min_rtt.unwrap_or(Duration::from_millis(10));
                let elapsed = now.saturating_duration_since(phase_start) > rtt;
                let gain = CYCLE.get(phase).copied().unwrap_or(1.0);
                // Probing lasts a round and until the extra is in flight;
                // draining ends as soon as the queue is gone.
                let advance = if gain > 1.0 {
                    elapsed && in_flight >= self.bdp(gain)
                } else if gain < 1.0 {
                    elapsed || in_flight <= self.bdp(1.0)
                } else {
                    elapsed
                };
                if advance || now.saturating_duration_since(phase_start) > rtt * 4 {
                    self.state = State::ProbeBw { phase: (phase + 1) % CYCLE.len(), phase_start: now };
                }
            }
            State::ProbeRtt { until: None } if in_flight <= self.min_window() => {
                self.state = State::ProbeRtt { until: Some(now + PROBE_RTT_TIME) };
            }
            State::ProbeRtt { until: Some(t) } if now >= t => {
                self.min_rtt_stamp = Some(now);
                self.cwnd = self.cwnd.max(self.prior_cwnd);
                self.state =
                    if self.filled_pipe { State::ProbeBw { phase: 2, phase_start: now } } else { State::Startup };
            }
            _ => {}
        }
    }

    fn update_min_rtt(&mut self, now: Instant, rtt: Option<Duration>) {
        let expired = self.min_rtt_stamp.is_some_and(|t| now.saturating_duration_since(t) > MIN_RTT_WINDOW);
        if let Some(rtt) = rtt {
            if self.min_rtt.is_none_or(|m| rtt <= m) || expired {
                self.min_rtt = Some(rtt);
                self.min_rtt_stamp = Some(now);
            }
        }
        // The draft enters ProbeRTT on expiry even when a sample refreshed
        // the estimate: that sample may carry a standing queue.
        if expired && !matches!(self.state, State::ProbeRtt { .. }) {
            self.prior_cwnd = self.cwnd;
            self.state = State::ProbeRtt { until: None };
        }
    }
}

impl Controller for Bbr {
    fn on_sent(&mut self, _: Instant, _: u64, _: u64) {}

    fn on_ack(&mut self, now: Instant, s: &RateSample, in_flight: u64, _min_rtt: Duration) {
        self.update_bw(s);
        self.update_min_rtt(now, s.rtt);
        self.update_state(now, in_flight);
        let bw = self.btl_bw();
        if bw > 0 {
            let rate = (self.pacing_gain() * bw as f64) as u64;
            if self.filled_pipe || rate > self.pacing_rate {
                self.pacing_rate = rate;
            }
        }
        // The in-flight target: a few BDPs plus room for ACK aggregation.
        let target = match self.state {
            State::ProbeRtt { .. } => self.min_window(),
            // Startup paces fast but keeps in flight at most 2 BDPs
            // (BBRv3's startup cwnd gain): a buffer of one BDP absorbs the
            // overshoot instead of dropping it. (A cwnd gain of 2.885, as in
            // BBRv1, saturates a round earlier but drops ~15x more in
            // simulation, for the same completion time.)
            State::Startup | State::Drain | State::ProbeBw { .. } => self.bdp(CWND_GAIN) + 3 * self.mss,
        };
        if self.filled_pipe {
            self.cwnd = self.cwnd.saturating_add(s.newly_acked).min(target);
        } else if self.cwnd < target || s.delivered < initial_window(self.mss) {
            // Startup: grow with what is delivered, as slow start does.
            self.cwnd = self.cwnd.saturating_add(STARTUP_GROWTH.saturating_mul(s.newly_acked));
        }
        self.cwnd = self.cwnd.max(self.min_window());
        if matches!(self.state, State::ProbeRtt { .. }) {
            self.cwnd = self.cwnd.min(self.min_window());
        }
    }

    fn on_loss(&mut self, _: Instant, _: u64, _: Instant, _: u64) {
        // Not a congestion signal for this model (see the module docs).
    }

    fn on_rto(&mut self, _: Instant) {
        // Everything in flight is presumed lost: restart the window from
        // its floor and let deliveries grow it back to the model's target.
        self.prior_cwnd = self.cwnd;
        self.cwnd = self.min_window();
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn pacing_rate(&self) -> Option<u64> {
        Some(self.pacing_rate)
    }
}
