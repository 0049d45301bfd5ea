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
/// Rounds over which the ACK-aggregation maximum is kept once the pipe is
/// full (draft-ietf-ccwg-bbr "BBRExtraAckedFilterLen"); one in Startup.
const EXTRA_ACKED_ROUNDS: u64 = 10;
/// Most ACK aggregation believed, as time at the estimated bandwidth
/// (Linux tcp_bbr's bbr_extra_acked_max_us): a receiver that stalls (a
/// disk sync, say) and then acknowledges a burst does not widen the window
/// past that.
const MAX_EXTRA_ACKED_TIME: Duration = Duration::from_millis(100);
/// Pacing time worth of data in one send quantum (draft-ietf-ccwg-bbr
/// BBRSetSendQuantum): what a GSO batch carries at once.
const SEND_QUANTUM_TIME: Duration = Duration::from_millis(1);
/// Largest send quantum: one GSO batch (64 KiB, the draft's cap too).
const MAX_SEND_QUANTUM: u64 = 64 * 1024;

/// A windowed maximum over rounds (the draft's windowed max filter): the
/// largest value of each round, the newest last, kept for a number of
/// rounds.
#[derive(Debug, Clone, Default)]
struct RoundMax(VecDeque<(u64, u64)>);

impl RoundMax {
    /// Takes `value` for `round` and forgets rounds `window` or more before
    /// it.
    fn update(&mut self, round: u64, value: u64, window: u64) {
        match self.0.back_mut() {
            Some((r, v)) if *r == round => *v = (*v).max(value),
            _ => self.0.push_back((round, value)),
        }
        while self.0.front().is_some_and(|&(r, _)| r + window <= round) {
            self.0.pop_front();
        }
    }

    fn get(&self) -> u64 {
        self.0.iter().map(|&(_, v)| v).max().unwrap_or(0)
    }
}

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
    bw_samples: RoundMax,
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
    /// ACK aggregation (draft-ietf-ccwg-bbr BBRUpdateACKAggregation): bytes
    /// acknowledged since `aggregation_start` and the per-round maxima of
    /// what that ran ahead of the estimated bandwidth, newest last.
    aggregation_start: Option<Instant>,
    aggregated: u64,
    extra_acked: RoundMax,
}

impl Bbr {
    /// A controller for segments of `mss` bytes; `rtt` from the handshake
    /// paces the first flight (draft-ietf-ccwg-bbr "BBRInitPacingRate").
    pub fn new(mss: u64, rtt: Option<Duration>) -> Self {
        Bbr {
            mss,
            state: State::Startup,
            bw_samples: RoundMax::default(),
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
            aggregation_start: None,
            aggregated: 0,
            extra_acked: RoundMax::default(),
        }
    }

    fn btl_bw(&self) -> u64 {
        self.bw_samples.get()
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

    /// Bytes sent back to back at the pacing rate (one GSO batch):
    /// a millisecond's worth, between 2 segments and 64 KiB.
    fn send_quantum(&self) -> u64 {
        // Startup's pacing rate never falls from its first value (the
        // initial window over the handshake RTT), which on a slow path with
        // a short RTT is far above the path: once there is an estimate, the
        // quantum is the model's rate, not that.
        let model = (self.pacing_gain() * self.btl_bw() as f64) as u64;
        let rate = if model > 0 { self.pacing_rate.min(model) } else { self.pacing_rate };
        // min then max, not clamp: a segment over 32 KiB makes the floor
        // the larger bound.
        ((rate as f64 * SEND_QUANTUM_TIME.as_secs_f64()) as u64).min(MAX_SEND_QUANTUM).max(2 * self.mss)
    }

    /// How far acknowledgments run ahead of the estimated bandwidth: data
    /// acknowledged in bursts (a receiver that answers once per receive
    /// batch, stretched or delayed ACKs, a link that aggregates) needs
    /// that much more in flight to keep sending between the bursts.
    /// At most 100 ms of the current estimate, as Linux applies its cap.
    fn extra_acked(&self) -> u64 {
        let cap = (self.btl_bw() as f64 * MAX_EXTRA_ACKED_TIME.as_secs_f64()) as u64;
        self.extra_acked.get().min(cap)
    }

    /// The in-flight target: two BDPs plus room for ACK aggregation, and
    /// never less than three send quanta, so that a batch can leave while
    /// two wait for their ACKs (draft-ietf-ccwg-bbr BBRUpdateMaxInflight,
    /// BBRQuantizationBudget).
    fn target(&self) -> u64 {
        match self.state {
            State::ProbeRtt { .. } => self.min_window(),
            // Startup paces fast but keeps in flight at most 2 BDPs
            // (BBRv3's startup cwnd gain): a buffer of one BDP absorbs the
            // overshoot instead of dropping it. (A cwnd gain of 2.885, as in
            // BBRv1, saturates a round earlier but drops ~15x more in
            // simulation, for the same completion time.)
            // The aggregation term only once the pipe is full, as Linux
            // adds it: in Startup the ACKs outrun an estimate that lags a
            // growing rate, and what they run ahead by is that growth.
            State::Startup | State::Drain | State::ProbeBw { .. } => {
                let extra = if self.filled_pipe { self.extra_acked() } else { 0 };
                self.bdp(CWND_GAIN).saturating_add(extra).max(3 * self.send_quantum()).saturating_add(3 * self.mss)
            }
        }
    }

    /// draft-ietf-ccwg-bbr BBRUpdateACKAggregation.
    fn update_aggregation(&mut self, now: Instant, newly_acked: u64) {
        let start = *self.aggregation_start.get_or_insert(now);
        let expected = (self.btl_bw() as f64 * now.saturating_duration_since(start).as_secs_f64()) as u64;
        // ACKs no faster than the estimate: a new interval starts here.
        let expected = if self.aggregated <= expected {
            self.aggregated = 0;
            self.aggregation_start = Some(now);
            0
        } else {
            expected
        };
        self.aggregated = self.aggregated.saturating_add(newly_acked);
        let extra = (self.aggregated - expected).min(self.cwnd);
        let rounds = if self.filled_pipe { EXTRA_ACKED_ROUNDS } else { 1 };
        self.extra_acked.update(self.round, extra, rounds);
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
        self.bw_samples.update(self.round, s.delivery_rate, BW_WINDOW_ROUNDS);
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
        self.update_aggregation(now, s.newly_acked);
        self.update_min_rtt(now, s.rtt);
        self.update_state(now, in_flight);
        let bw = self.btl_bw();
        if bw > 0 {
            let rate = (self.pacing_gain() * bw as f64) as u64;
            if self.filled_pipe || rate > self.pacing_rate {
                self.pacing_rate = rate;
            }
        }
        let target = self.target();
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
        // BBRSaveCwnd (draft-ietf-ccwg-bbr §5.6.4.4): in ProbeRTT the window
        // is already cut, and the one saved on entry is what to restore.
        self.prior_cwnd =
            if matches!(self.state, State::ProbeRtt { .. }) { self.prior_cwnd.max(self.cwnd) } else { self.cwnd };
        self.cwnd = self.min_window();
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn pacing_rate(&self) -> Option<u64> {
        Some(self.pacing_rate)
    }
}

#[cfg(test)]
mod tests {
    //! BBR driven directly with synthetic ACK sequences: a window sent at
    //! once, its ACKs back in turn, each with the delivery rate the path
    //! allowed.
    #![allow(clippy::disallowed_methods)] // any instant will do as time zero

    use super::*;

    const MSS: u64 = 1000;
    const RTT: Duration = Duration::from_millis(100);
    /// 100 Mbit/s: a bandwidth-delay product of 1.25 MB at `RTT`.
    const BW: u64 = 12_500_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Flow {
        bbr: Bbr,
        now: Instant,
        delivered: u64,
    }

    impl Flow {
        fn new() -> Flow {
            Flow::with(Bbr::new(MSS, Some(RTT)))
        }

        fn with(bbr: Bbr) -> Flow {
            Flow { bbr, now: Instant::now(), delivered: 0 }
        }

        /// One ACK of `bytes` at the current time, for data sent when
        /// `prior` bytes were delivered.
        fn ack(&mut self, bytes: u64, rate: u64, prior: u64, rtt: Duration, in_flight: u64) {
            self.delivered += bytes;
            let s = RateSample {
                newly_acked: bytes,
                delivery_rate: rate,
                app_limited: false,
                rtt: Some(rtt),
                delivered: self.delivered,
                prior_delivered: prior,
            };
            self.bbr.on_ack(self.now, &s, in_flight, rtt);
        }

        /// One round: the window sent at once, each segment's ACK back in
        /// turn over `max(RTT, window / rate)`, all measuring the `rate`
        /// (bytes/s) that `measure` gives for the window. Stops early after
        /// an ACK whose state `stop` accepts; returns the state after each.
        fn round_with(&mut self, measure: impl Fn(u64) -> f64, stop: impl Fn(&State) -> bool) -> Vec<State> {
            let flight = self.bbr.window();
            let rate = measure(flight);
            let duration = RTT.max(Duration::from_secs_f64(flight as f64 / rate));
            let (prior, start, acks) = (self.delivered, self.now, flight.div_ceil(MSS));
            let mut states = Vec::new();
            for k in 1..=acks {
                self.now = start + duration.mul_f64(k as f64 / acks as f64);
                let bytes = MSS.min(flight - (k - 1) * MSS);
                self.ack(bytes, rate as u64, prior, RTT, flight - (k * MSS).min(flight));
                states.push(self.bbr.state);
                if stop(&self.bbr.state) {
                    break;
                }
            }
            states
        }

        /// A round over a path of `bw` bytes/s (unlimited with `None`): the
        /// rate measured is the window's over `RTT`, at most `bw`.
        fn round(&mut self, bw: Option<u64>) -> Vec<State> {
            let path = move |flight: u64| {
                let ideal = flight as f64 / RTT.as_secs_f64();
                bw.map_or(ideal, |b| ideal.min(b as f64))
            };
            self.round_with(path, |_| false)
        }

        /// Rounds over a 100 Mbit/s path until the ACK that enters ProbeBW.
        fn run_to_probe_bw(&mut self) {
            let path = |flight: u64| (flight as f64 / RTT.as_secs_f64()).min(BW as f64);
            for _ in 0..20 {
                let states = self.round_with(path, |s| matches!(s, State::ProbeBw { .. }));
                if states.last().is_some_and(|s| matches!(s, State::ProbeBw { .. })) {
                    return;
                }
            }
            panic!("no ProbeBW: {:?}", self.bbr.state);
        }

        /// ACKs of one segment every 10 ms for `span`, at `BW` with `rtt`,
        /// `in_flight` given by the phase; returns the phases entered.
        fn cruise(&mut self, span: Duration, rtt: Duration, in_flight: impl Fn(f64) -> u64) -> Vec<usize> {
            let end = self.now + span;
            let mut phases = Vec::new();
            while self.now < end {
                self.now += ms(10);
                let gain = self.bbr.pacing_gain();
                self.ack(MSS, BW, self.delivered, rtt, in_flight(gain));
                if let State::ProbeBw { phase, .. } = self.bbr.state {
                    if phases.last() != Some(&phase) {
                        phases.push(phase);
                    }
                }
            }
            phases
        }
    }

    #[test]
    fn first_window_is_paced_over_the_handshake_rtt() {
        let b = Bbr::new(MSS, Some(RTT));
        assert_eq!(b.window(), 64 * MSS);
        assert_eq!(b.pacing_rate(), Some((4.0 * 64_000.0 / 0.1) as u64));
        // Without a handshake sample: ten segments, over a nominal 1 ms.
        let b = Bbr::new(MSS, None);
        assert_eq!(b.window(), 10 * MSS);
        assert_eq!(b.pacing_rate(), Some(40_000_000));
    }

    /// Startup adds 3 bytes per byte delivered: while the window is below
    /// two BDPs of the estimate, it grows 4x per round.
    #[test]
    fn startup_grows_the_window_fourfold_per_round() {
        let mut f = Flow::new();
        let mut windows = vec![f.bbr.window()];
        for _ in 0..4 {
            // Samples at 1 GB/s: the target (2 BDPs, 200 MB) is far away.
            let states = f.round_with(|_| 1e9, |_| false);
            assert!(states.iter().all(|s| *s == State::Startup));
            windows.push(f.bbr.window());
        }
        assert_eq!(windows, [64_000, 256_000, 1_024_000, 4_096_000, 16_384_000]);
        assert!(f.bbr.pacing_rate().unwrap() >= (4.0 * f.bbr.btl_bw() as f64) as u64 - 1);
    }

    /// Once the first window is delivered, Startup's window stops at two
    /// BDPs of the estimate plus three segments: with samples that measure
    /// the window itself, about 2x per round.
    #[test]
    fn startup_window_is_capped_at_two_bdps_of_the_estimate() {
        let mut f = Flow::new();
        f.round(None);
        // The first window grows 4x but for its last ACK, which delivers
        // the initial window in full with the window above the target.
        assert_eq!(f.bbr.window(), 256_000 - 3 * MSS);
        for _ in 0..3 {
            let flight = f.bbr.window();
            f.round(None);
            let target = 2 * flight + 3 * MSS;
            let w = f.bbr.window();
            assert!(w >= target - 1 && w < target + 3 * MSS, "{flight} -> {w}, target {target}");
            assert_eq!(f.bbr.state, State::Startup);
        }
    }

    /// Startup ends after three rounds in a row grow the bandwidth estimate
    /// by less than 25%: on a 12.5 MB/s path the per-round estimates are
    /// 0.64, 2.56, 5.2, 10.4, then 12.5 MB/s three times.
    #[test]
    fn startup_exits_to_drain_after_three_rounds_of_plateau() {
        let mut f = Flow::new();
        let mut estimates = Vec::new();
        let mut round = 0;
        while f.bbr.state == State::Startup {
            round += 1;
            assert!(round < 20, "still in Startup");
            let states = f.round(Some(BW));
            estimates.push(f.bbr.btl_bw());
            if states.contains(&State::Drain) {
                break;
            }
        }
        assert_eq!(round, 8, "estimates {estimates:?}");
        let plateau = estimates.get(4..7).unwrap();
        assert!(plateau.iter().all(|&bw| bw == BW), "{estimates:?}");
        let last_growth = estimates.get(3).unwrap();
        assert!(BW as f64 >= *last_growth as f64 && (BW as f64) < *last_growth as f64 * FULL_BW_GROWTH);
        assert!(estimates.get(..4).unwrap().windows(2).all(|w| w[1] as f64 >= w[0] as f64 * FULL_BW_GROWTH));
        assert!(f.bbr.filled_pipe);
    }

    /// Drain paces at a quarter of the estimate until in flight is down to
    /// one BDP, then ProbeBW starts cruising (gain 1).
    #[test]
    fn drain_until_one_bdp_in_flight_then_probe_bw() {
        let mut f = Flow::new();
        let mut seen = Vec::new();
        'rounds: for _ in 0..20 {
            let flight = f.bbr.window();
            let ideal = flight as f64 / RTT.as_secs_f64();
            let rate = ideal.min(BW as f64) as u64;
            let prior = f.delivered;
            for k in 1..=flight.div_ceil(MSS) {
                f.now += ms(1);
                let in_flight = flight - (k * MSS).min(flight);
                f.ack(MSS, rate, prior, RTT, in_flight);
                seen.push((f.bbr.state, in_flight, f.bbr.pacing_rate()));
                if matches!(f.bbr.state, State::ProbeBw { .. }) {
                    break 'rounds;
                }
            }
        }
        let bdp = (BW as f64 * RTT.as_secs_f64()) as u64;
        let drain: Vec<_> = seen.iter().filter(|(s, _, _)| *s == State::Drain).collect();
        assert!(!drain.is_empty());
        assert!(drain.iter().all(|&&(_, in_flight, rate)| in_flight > bdp && rate == Some(BW / 4)));
        let &(state, in_flight, rate) = seen.last().unwrap();
        assert!(matches!(state, State::ProbeBw { phase: 2, .. }), "{state:?}");
        assert!(in_flight <= bdp);
        assert_eq!(rate, Some(BW));
    }

    /// ProbeBW's cycle: cruise (gain 1) a min RTT per phase, probe at 1.25
    /// until 1.25 BDP is in flight, drain at 0.75 until one BDP is, cruise.
    #[test]
    fn probe_bw_cycles_its_pacing_gain() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        let bdp = BW as f64 * RTT.as_secs_f64();
        // In flight follows the gain: the probe puts its extra in flight,
        // the drain phase takes it out.
        let phases = f.cruise(ms(1200), RTT, |gain| (gain * bdp) as u64);
        assert_eq!(phases.get(..9), Some(&[2, 3, 4, 5, 6, 7, 0, 1, 2][..]), "{phases:?}");
        // The rate follows the phase.
        let mut rates = Vec::new();
        for _ in 0..120 {
            f.cruise(ms(10), RTT, |gain| (gain * bdp) as u64);
            let State::ProbeBw { phase, .. } = f.bbr.state else { panic!("{:?}", f.bbr.state) };
            rates.push((phase, f.bbr.pacing_rate().unwrap()));
        }
        for (phase, rate) in rates {
            assert_eq!(rate, (CYCLE[phase] * BW as f64) as u64, "phase {phase}");
        }
    }

    /// The probe phase lasts until the extra is in flight, or 4 min RTTs
    /// when it never gets there; the drain phase ends at once when in
    /// flight is already down to one BDP.
    #[test]
    fn probe_phase_waits_for_its_extra_in_flight() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        let bdp = (BW as f64 * RTT.as_secs_f64()) as u64;
        f.cruise(ms(2000), RTT, |_| bdp);
        // Find a probe phase, then time it from its start.
        while !matches!(f.bbr.state, State::ProbeBw { phase: 0, .. }) {
            f.cruise(ms(10), RTT, |_| bdp);
        }
        let State::ProbeBw { phase_start: start, .. } = f.bbr.state else { panic!() };
        while matches!(f.bbr.state, State::ProbeBw { phase: 0, .. }) {
            f.cruise(ms(10), RTT, |_| bdp);
        }
        let probe = f.now - start;
        assert!(probe > 4 * RTT && probe <= 4 * RTT + ms(10), "probed {probe:?}");
        let State::ProbeBw { phase, phase_start } = f.bbr.state else { panic!() };
        assert_eq!(phase, 1);
        f.cruise(ms(10), RTT, |_| bdp);
        assert!(matches!(f.bbr.state, State::ProbeBw { phase: 2, .. }), "drained in one ACK");
        assert_eq!(f.now - phase_start, ms(10));
    }

    /// Ten seconds without a lower RTT: ProbeRTT holds the window at four
    /// segments for 200 ms once in flight is that low, takes the new
    /// minimum, and restores the window.
    #[test]
    fn probe_rtt_after_the_min_rtt_expires() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        let bdp = (BW as f64 * RTT.as_secs_f64()) as u64;
        let before = f.bbr.window();
        assert!(before > 2 * bdp, "{before}");
        // A standing queue: every sample 20 ms above the minimum.
        let stamp = f.bbr.min_rtt_stamp.unwrap();
        f.cruise(ms(9990) - (f.now - stamp), RTT + ms(20), |_| bdp);
        assert!(matches!(f.bbr.state, State::ProbeBw { .. }));
        assert_eq!(f.bbr.min_rtt, Some(RTT));
        // The first ACK past 10 s: ProbeRTT, at most four segments.
        f.cruise(ms(20), RTT + ms(20), |_| bdp);
        assert_eq!(f.bbr.state, State::ProbeRtt { until: None });
        assert_eq!(f.bbr.window(), 4 * MSS);
        assert_eq!(f.bbr.min_rtt, Some(RTT + ms(20)), "the estimate is taken afresh");
        // In flight drains to four segments: 200 ms from then.
        f.now += ms(10);
        f.ack(MSS, BW, f.delivered, RTT + ms(20), 4 * MSS);
        let State::ProbeRtt { until: Some(until) } = f.bbr.state else { panic!("{:?}", f.bbr.state) };
        assert_eq!(until, f.now + PROBE_RTT_TIME);
        f.cruise(ms(190), RTT + ms(20), |_| 4 * MSS);
        assert!(matches!(f.bbr.state, State::ProbeRtt { .. }));
        assert_eq!(f.bbr.window(), 4 * MSS);
        f.cruise(ms(20), RTT + ms(20), |_| 4 * MSS);
        assert!(matches!(f.bbr.state, State::ProbeBw { phase: 2, .. }), "{:?}", f.bbr.state);
        assert!(f.bbr.window() >= before, "window restored: {} < {before}", f.bbr.window());
    }

    /// Loss is not a signal for this model: nothing changes.
    #[test]
    fn loss_changes_nothing() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        let before = format!("{:?}", f.bbr);
        let now = f.now;
        f.bbr.on_loss(now, 100 * MSS, now, f.bbr.window());
        f.bbr.on_sent(now, MSS, MSS);
        assert_eq!(format!("{:?}", f.bbr), before);
        // In Startup too.
        let mut s = Flow::new();
        s.round(None);
        let (w, rate) = (s.bbr.window(), s.bbr.pacing_rate());
        s.bbr.on_loss(s.now, w, s.now, 0);
        assert_eq!((s.bbr.window(), s.bbr.pacing_rate()), (w, rate));
    }

    /// An RTO drops the window to four segments and keeps the model (state,
    /// estimates, pacing rate); deliveries grow it back, by one byte per
    /// byte after Startup, up to the target.
    #[test]
    fn rto_restarts_the_window_from_its_floor() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        let (state, bw, rate) = (f.bbr.state, f.bbr.btl_bw(), f.bbr.pacing_rate());
        let full = f.bbr.window();
        f.bbr.on_rto(f.now);
        assert_eq!(f.bbr.window(), 4 * MSS);
        assert_eq!((f.bbr.state, f.bbr.btl_bw(), f.bbr.pacing_rate()), (state, bw, rate));
        f.now += ms(10);
        f.ack(4 * MSS, BW, f.delivered, RTT, 0);
        assert_eq!(f.bbr.window(), 8 * MSS, "one byte per byte delivered");
        for _ in 0..10 {
            f.round(Some(BW));
        }
        assert_eq!(f.bbr.window(), full, "back to the target");
        // In Startup the window regrows by three bytes per byte.
        let mut s = Flow::new();
        s.round(None);
        s.bbr.on_rto(s.now);
        s.ack(4 * MSS, 1_000_000_000, s.delivered, RTT, 0);
        assert_eq!(s.bbr.window(), 16 * MSS);
    }

    /// App-limited samples may raise the estimate, never lower it; a zero
    /// rate (no sample) is ignored.
    #[test]
    fn app_limited_samples_only_raise_the_estimate() {
        let mut b = Bbr::new(MSS, Some(RTT));
        let t0 = Instant::now();
        let sample = |rate, app_limited, delivered| RateSample {
            newly_acked: MSS,
            delivery_rate: rate,
            app_limited,
            rtt: Some(RTT),
            delivered,
            prior_delivered: delivered - MSS,
        };
        b.on_ack(t0, &sample(1_000_000, false, MSS), 0, RTT);
        assert_eq!(b.btl_bw(), 1_000_000);
        b.on_ack(t0 + ms(100), &sample(500_000, true, 2 * MSS), 0, RTT);
        b.on_ack(t0 + ms(200), &sample(0, false, 3 * MSS), 0, RTT);
        assert_eq!(b.btl_bw(), 1_000_000);
        b.on_ack(t0 + ms(300), &sample(2_000_000, true, 4 * MSS), 0, RTT);
        assert_eq!(b.btl_bw(), 2_000_000);
    }

    /// The estimate is a windowed maximum: a faster round ages out after
    /// ten rounds.
    #[test]
    fn bandwidth_estimate_forgets_after_ten_rounds() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        f.cruise(ms(10), RTT, |_| 0);
        assert_eq!(f.bbr.btl_bw(), BW);
        // Every ACK below is a round of its own (prior = delivered).
        for i in 0..BW_WINDOW_ROUNDS + 1 {
            f.now += ms(10);
            f.ack(MSS, BW / 2, f.delivered, RTT, 0);
            let expect = if i + 1 < BW_WINDOW_ROUNDS { BW } else { BW / 2 };
            assert_eq!(f.bbr.btl_bw(), expect, "round {i}");
        }
    }

    /// ACKs that come in bursts (a receiver answering once per receive
    /// batch, stretched ACKs) run ahead of the bandwidth estimate by the
    /// burst; the window makes room for that on top of its two BDPs, and
    /// forgets it ten rounds after the bursts stop.
    #[test]
    fn bursts_of_acks_widen_the_window_by_the_burst() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        let two_bdps = f.bbr.bdp(CWND_GAIN);
        // Smooth ACKs, one segment at the bandwidth's pace: nothing extra.
        let pace = Duration::from_secs_f64(MSS as f64 / BW as f64);
        for _ in 0..2_000 {
            f.now += pace;
            f.ack(MSS, BW, f.delivered, RTT, two_bdps);
        }
        assert!(f.bbr.extra_acked() <= 2 * MSS, "{}", f.bbr.extra_acked());
        assert!(f.bbr.window() <= two_bdps + 6 * MSS, "{} vs {two_bdps}", f.bbr.window());
        // The same bandwidth in one ACK every 20 ms: 250 kB at once.
        let burst = BW / 50;
        for _ in 0..5 {
            f.now += ms(20);
            f.ack(burst, BW, f.delivered, RTT, two_bdps);
        }
        assert!(f.bbr.extra_acked() >= burst, "{}", f.bbr.extra_acked());
        assert!(f.bbr.window() >= two_bdps + burst, "{} vs {}", f.bbr.window(), two_bdps + burst);
        // A pause, then smooth ACKs: nothing runs ahead any more. The last
        // burst is kept for ten rounds (ACKs, here), itself included, then
        // forgotten.
        f.now += ms(40);
        for _ in 0..EXTRA_ACKED_ROUNDS - 1 {
            f.now += pace;
            f.ack(MSS, BW, f.delivered, RTT, two_bdps);
        }
        assert!(f.bbr.extra_acked() >= burst, "{}", f.bbr.extra_acked());
        f.now += pace;
        f.ack(MSS, BW, f.delivered, RTT, two_bdps);
        assert!(f.bbr.extra_acked() <= 2 * MSS, "{}", f.bbr.extra_acked());
    }

    /// In Startup the ACKs outrun an estimate that lags a growing rate:
    /// the target does not add that; once the pipe is full it does.
    #[test]
    fn startup_adds_no_aggregation() {
        let mut f = Flow::new();
        // Two rounds to get an estimate, then bursts of a whole window in
        // one ACK each, measuring the same rate.
        f.round(Some(BW));
        f.round(Some(BW));
        for _ in 0..3 {
            f.now += RTT;
            let flight = f.bbr.window();
            f.ack(flight, BW / 4, f.delivered, RTT, 0);
        }
        assert_eq!(f.bbr.state, State::Startup);
        let extra = f.bbr.extra_acked();
        assert!(extra >= 100 * MSS, "the bursts were measured: {extra}");
        let without = f.bbr.bdp(CWND_GAIN).max(3 * f.bbr.send_quantum()) + 3 * MSS;
        assert_eq!(f.bbr.target(), without);
        f.bbr.filled_pipe = true;
        assert_eq!(f.bbr.target(), (f.bbr.bdp(CWND_GAIN) + extra).max(3 * f.bbr.send_quantum()) + 3 * MSS);
    }

    /// A receiver that stalls for a second and then acknowledges it all at
    /// once is believed for at most 100 ms of the bandwidth.
    #[test]
    fn aggregation_believed_is_at_most_100_ms_of_bandwidth() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        f.now += Duration::from_secs(1);
        f.ack(BW, BW, f.delivered, RTT, 0);
        assert_eq!(f.bbr.extra_acked(), BW / 10);
        assert!(f.bbr.window() <= f.bbr.bdp(CWND_GAIN) + BW / 10 + 3 * MSS, "{}", f.bbr.window());
    }

    /// On loopback the BDP is a few kilobytes (20 us at 1 GB/s), less than
    /// one GSO batch: the window still holds three send quanta of 64 KiB,
    /// so that a batch leaves while two wait for their ACKs
    /// (BBRQuantizationBudget). Without it the window was 2 BDPs + 3 MSS,
    /// 43 kB, and the sender waited on every ACK.
    #[test]
    fn window_holds_three_send_quanta_when_the_bdp_is_tiny() {
        let rtt = Duration::from_micros(20);
        let bw = 1_000_000_000;
        let mut f = Flow::with(Bbr::new(MSS, Some(rtt)));
        for _ in 0..1_000 {
            f.now += Duration::from_micros(10);
            f.ack(10 * MSS, bw, f.delivered, rtt, 10 * MSS);
        }
        let b = &f.bbr;
        assert!(matches!(b.state, State::ProbeBw { .. }), "{:?}", b.state);
        assert_eq!(b.send_quantum(), MAX_SEND_QUANTUM);
        assert!(b.window() >= 3 * MAX_SEND_QUANTUM, "{}", b.window());
        assert!(b.window() <= 3 * MAX_SEND_QUANTUM + 3 * MSS, "{}", b.window());
        // The floor of the quantum is two segments, whatever their size.
        let slow = Bbr::new(40_000, None);
        assert_eq!(slow.send_quantum(), 80_000);
    }

    /// Startup's first pacing rate comes from the handshake (64 segments in
    /// 1 ms here: 256 MB/s); once the path's 1.25 MB/s is measured, the
    /// quantum follows the model (4 x 1.25 kB), not that rate, so the
    /// floor of three quanta does not open the window past two BDPs on a
    /// slow path with a short RTT.
    #[test]
    fn the_quantum_follows_the_estimate_not_startups_first_rate() {
        let rtt = Duration::from_millis(5);
        let mut f = Flow::with(Bbr::new(MSS, Some(Duration::from_millis(1))));
        assert_eq!(f.bbr.send_quantum(), MAX_SEND_QUANTUM);
        for _ in 0..2 {
            f.now += Duration::from_micros(800);
            f.ack(MSS, 1_250_000, f.delivered, rtt, 0);
        }
        let b = &f.bbr;
        assert_eq!(b.state, State::Startup);
        assert_eq!(b.pacing_rate, 256_000_000);
        assert_eq!(b.send_quantum(), 5_000);
    }

    /// draft-ietf-ccwg-bbr BBRSaveCwnd keeps the larger of the saved and the
    /// current window when an RTO comes in ProbeRTT; here `on_rto` saves
    /// the ProbeRTT window (four segments) over the one saved on entering
    /// it, so leaving ProbeRTT restores four segments, not the old window.
    /// Deliveries regrow it (one byte per byte), so the cost is a few round
    /// trips below the target.
    #[test]
    fn rto_in_probe_rtt_keeps_the_window_to_restore() {
        let mut f = Flow::new();
        f.run_to_probe_bw();
        let before = f.bbr.window();
        let stamp = f.bbr.min_rtt_stamp.unwrap();
        f.cruise(ms(10_010) - (f.now - stamp), RTT + ms(20), |_| 0);
        assert!(matches!(f.bbr.state, State::ProbeRtt { .. }));
        f.bbr.on_rto(f.now);
        f.cruise(ms(300), RTT + ms(20), |_| 0);
        assert!(matches!(f.bbr.state, State::ProbeBw { .. }));
        assert!(f.bbr.window() >= before, "{} restored, {before} before ProbeRTT", f.bbr.window());
    }
}
