//! The censor's classifiers against secure mode (issue 11, docs/PROTOCOL.md
//! §8): byte-position chi-square tests, a length histogram and one rule per
//! plaintext-mode signature, over 10,000 first datagrams and 10,000 data
//! datagrams each way. Every classifier must flag the plaintext modes
//! (baseline and fast) every time, and flag secure mode no more often than
//! it flags random bytes of the same lengths (the control), with the
//! false-positive rate each states.
//!
//! A "run" is one batch of [`RUN`] datagrams of one kind (first datagrams,
//! server to client, client to server): what a censor would judge a flow or
//! an address by. Each set of 10,000 is five runs.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "common/secure.rs"]
mod secure;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anon_proto::{ClientConfig, ClientConn};
use anon_sim::{Datagram, LinkConfig, SERVER_ADDR, SecureSetup, Setup, Sim, page};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use secure::{clock, secure_client};

/// Datagrams of each kind the censor collects.
const SET: usize = 10_000;
/// Datagrams per run (a censor's verdict).
const RUN: usize = 2_000;
/// A byte position is tested where at least this many datagrams have it:
/// five expected per value of the 256, the usual rule for chi-square.
const MIN_SAMPLES: usize = 5 * 256;
/// Positions counted from the end of the datagram (tags, padding).
const TAIL: usize = 64;
/// The false-positive rate of a run's chi-square verdict: each of the `m`
/// positions of the run is flagged at `RUN_ALPHA / m` (Bonferroni), so that
/// random bytes are flagged in at most 1% of runs.
const RUN_ALPHA: f64 = 0.01;
/// Per-position level for the position-by-position rate over a whole set.
const POS_ALPHA: f64 = 0.01;

// ---- statistics -----------------------------------------------------------

/// erfc(x), Numerical Recipes' Chebyshev fit: fractional error below 1.2e-7
/// everywhere, so tail probabilities far below 1e-6 stay accurate.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// P(X > x) for X chi-square with `k` degrees of freedom (Wilson-Hilferty:
/// (X/k)^(1/3) is close to normal; for k = 255 it is accurate far into the
/// tail).
fn chi2_sf(x: f64, k: f64) -> f64 {
    let v = 2.0 / (9.0 * k);
    let z = ((x / k).cbrt() - (1.0 - v)) / v.sqrt();
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The smallest `k` with P(Binomial(n, p) > k) < `tail`: a count above it
/// is not what chance gives.
fn binomial_bound(n: usize, p: f64, tail: f64) -> usize {
    let mut term = (1.0 - p).powf(n as f64);
    let mut cdf = term;
    let mut k = 0;
    while 1.0 - cdf >= tail && k < n {
        term *= (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p);
        k += 1;
        cdf += term;
    }
    k
}

/// The chi-square p-value of the byte values at one position.
fn position_p(counts: &[u32; 256], n: usize) -> f64 {
    let e = n as f64 / 256.0;
    let x: f64 = counts.iter().map(|&c| (f64::from(c) - e).powi(2) / e).sum();
    chi2_sf(x, 255.0)
}

/// The p-values of every position present in at least [`MIN_SAMPLES`] of
/// `set`: from the front, then from the back.
fn position_ps(set: &[Vec<u8>]) -> Vec<f64> {
    let longest = set.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for from_end in [false, true] {
        let limit = if from_end { TAIL.min(longest) } else { longest };
        for p in 0..limit {
            let mut counts = [0u32; 256];
            let mut n = 0;
            for d in set.iter().filter(|d| d.len() > p) {
                let i = if from_end { d.len() - 1 - p } else { p };
                counts[usize::from(d[i])] += 1;
                n += 1;
            }
            if n < MIN_SAMPLES {
                break;
            }
            out.push(position_p(&counts, n));
        }
    }
    out
}

/// Classifier (a) on one run: flagged when any position's p-value is below
/// `RUN_ALPHA / positions`.
fn chi_square_flags(run: &[Vec<u8>]) -> bool {
    let ps = position_ps(run);
    assert!(!ps.is_empty(), "a run must have positions to test");
    let cut = RUN_ALPHA / ps.len() as f64;
    ps.iter().any(|&p| p < cut)
}

/// Classifier (b) on one run: flagged when one length carries more than
/// [`TOP_LENGTH`] of the datagrams, or the lengths carry less than
/// [`MIN_LENGTH_BITS`] of entropy (fewer than four equally likely sizes):
/// a constant-size or few-size stream. Plaintext runs sit at 87% or more
/// and 0.8 bits or less; uniform lengths, at 0.5% and 8 bits or more.
const TOP_LENGTH: f64 = 0.25;
const MIN_LENGTH_BITS: f64 = 2.0;

fn length_stats(run: &[Vec<u8>]) -> (f64, f64) {
    let mut hist: HashMap<usize, usize> = HashMap::new();
    for d in run {
        *hist.entry(d.len()).or_default() += 1;
    }
    let n = run.len() as f64;
    let top = hist.values().copied().max().unwrap_or(0) as f64 / n;
    let bits = hist.values().map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum();
    (top, bits)
}

fn length_flags(run: &[Vec<u8>]) -> bool {
    let (top, bits) = length_stats(run);
    top > TOP_LENGTH || bits < MIN_LENGTH_BITS
}

/// Classifiers (c), one per plaintext signature, on one datagram.
fn magic_rule(d: &[u8]) -> bool {
    // Fast mode's offer and answer start with "ANON" right after the
    // 12-byte header (proto/src/wire/ext.rs).
    d.get(12..16) == Some(&b"ANON"[..])
}
fn flags_rule(d: &[u8]) -> bool {
    // The 32-bit flags word: only its three low bits are ever set.
    d.get(8..12).is_some_and(|w| u32::from_be_bytes(w.try_into().unwrap()) & !0b111 == 0)
}
fn syn_size_rule(d: &[u8]) -> bool {
    // A plaintext SYN: bare (baseline) or with the padded offer (fast).
    d.len() == 12 || d.len() == 68
}

/// Classifier (d), informative: the rule Wu et al. (USENIX Security 2023)
/// found the Great Firewall applying to the first data packet of a TCP
/// flow: block unless the bits set per byte average at most 3.4 or at
/// least 4.6, the first six bytes are printable, more than half are, or
/// more than 20 in a row are. Random bytes of a few hundred bytes match it
/// almost always: it flags exactly "looks fully encrypted", which secure
/// mode must look like to pass (a) to (c). (The paper's rule is for TCP;
/// secure mode runs over UDP.)
fn fully_encrypted_rule(d: &[u8]) -> bool {
    if d.is_empty() {
        return false;
    }
    let printable = |b: &u8| (0x20..=0x7e).contains(b);
    let bits = d.iter().map(|b| b.count_ones()).sum::<u32>() as f64 / d.len() as f64;
    let run = d.split(|b| !printable(b)).map(<[u8]>::len).max().unwrap_or(0);
    let exempt = bits <= 3.4
        || bits >= 4.6
        || d.iter().take(6).filter(|b| printable(b)).count() == 6
        || 2 * d.iter().filter(|b| printable(b)).count() > d.len()
        || run > 20;
    !exempt
}

// ---- the traffic ----------------------------------------------------------

/// What the censor collected of one mode.
struct Traffic {
    name: &'static str,
    first: Vec<Vec<u8>>,
    s2c: Vec<Vec<u8>>,
    c2s: Vec<Vec<u8>>,
}

impl Traffic {
    fn sets(&self) -> [(&'static str, &Vec<Vec<u8>>); 3] {
        [("first", &self.first), ("s2c", &self.s2c), ("c2s", &self.c2s)]
    }
}

/// Datagrams the link carried in transfers of `page_len` bytes, until each
/// direction has [`SET`]: server to client, client to server.
fn capture<F: FnMut(u64) -> Vec<Datagram>>(mut run: F) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut s2c, mut c2s) = (Vec::new(), Vec::new());
    for seed in 0..64 {
        if s2c.len() >= SET && c2s.len() >= SET {
            break;
        }
        let record = run(seed);
        for d in record {
            if d.from == SERVER_ADDR { &mut s2c } else { &mut c2s }.push(d.bytes);
        }
    }
    assert!(s2c.len() >= SET && c2s.len() >= SET, "captures too short: {} {}", s2c.len(), c2s.len());
    s2c.truncate(SET);
    c2s.truncate(SET);
    (s2c, c2s)
}

fn link() -> LinkConfig {
    LinkConfig { loss: 0.01, ..LinkConfig::bottleneck(50, Duration::from_millis(10)) }
}

fn secure_traffic() -> Traffic {
    // First messages: 10,000 clients, each with its own seed (the client's
    // static key is shared to save time: it is sealed inside the handshake,
    // so a censor sees nothing of it either way).
    let now = Instant::now();
    let server = secure::server_key(1).public();
    let shared = Some(secure::server_key(2));
    // Three X25519 operations each: two threads halve the wait.
    let make = |seeds: std::ops::Range<u64>| -> Vec<Vec<u8>> {
        seeds
            .map(|seed| {
                let mut c = secure_client(server, shared.clone(), "index", clock(now), seed, now);
                secure::first_datagram(&mut c, now)
            })
            .collect()
    };
    let half = SET as u64 / 2;
    let first = std::thread::scope(|s| {
        let a = s.spawn(|| make(0..half));
        let mut b = make(half..SET as u64);
        let mut first = a.join().unwrap();
        first.append(&mut b);
        first
    });
    let (s2c, c2s) = capture(|seed| {
        let mut setup = Setup::new(seed, link(), page(3_000_000, seed));
        setup.clients = 2;
        let mut sim = Sim::secure(setup, SecureSetup::new(seed));
        sim.net.record = Some(Vec::new());
        let report = sim.run(Duration::from_secs(300), 5_000_000);
        assert!(report.quiescent, "seed {seed}");
        sim.net.record.take().unwrap()
    });
    Traffic { name: "secure", first, s2c, c2s }
}

fn plaintext_traffic(fast: bool) -> Traffic {
    let now = Instant::now();
    let mut config = ClientConfig::default();
    if !fast {
        config.fast = None;
    }
    let mut rng = StdRng::seed_from_u64(u64::from(fast));
    let first = (0..SET)
        .map(|_| {
            let mut c = ClientConn::new(config.clone(), rng.next_u32(), now);
            let mut buf = Vec::new();
            assert!(c.poll_transmit(now, &mut buf));
            buf
        })
        .collect();
    let len = if fast { 3_000_000 } else { 1_500_000 };
    let (s2c, c2s) = capture(|seed| {
        let mut setup = Setup::new(seed, link(), page(len, seed));
        setup.clients = 2;
        setup.client = config.clone();
        let mut sim = Sim::new(setup);
        sim.net.record = Some(Vec::new());
        let report = sim.run(Duration::from_secs(3600), 50_000_000);
        assert!(report.quiescent, "seed {seed}");
        sim.net.record.take().unwrap()
    });
    Traffic { name: if fast { "fast" } else { "baseline" }, first, s2c, c2s }
}

/// Random bytes of the same lengths as `set`.
fn control_of(set: &[Vec<u8>], seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    set.iter()
        .map(|d| {
            let mut r = vec![0u8; d.len()];
            rng.fill_bytes(&mut r);
            r
        })
        .collect()
}

/// Runs flagged by `classify`, of the runs of `set`.
fn runs_flagged(set: &[Vec<u8>], classify: impl Fn(&[Vec<u8>]) -> bool) -> (usize, usize) {
    let runs: Vec<&[Vec<u8>]> = set.chunks(RUN).collect();
    (runs.iter().filter(|r| classify(r)).count(), runs.len())
}

fn pct(a: usize, b: usize) -> f64 {
    100.0 * a as f64 / b.max(1) as f64
}

// ---- the tests ------------------------------------------------------------

/// All three classifiers over the same traffic (collected once: the
/// transfers are the slow part).
#[test]
fn censor_flags_plaintext_every_time_and_secure_mode_no_more_than_random_bytes() {
    let secure = secure_traffic();
    let plain = [plaintext_traffic(false), plaintext_traffic(true)];
    let controls: Vec<(&str, Vec<Vec<u8>>)> =
        secure.sets().iter().enumerate().map(|(i, (name, set))| (*name, control_of(set, 100 + i as u64))).collect();
    for (name, set) in secure.sets() {
        assert_eq!(set.len(), SET, "{name}");
    }

    // (a) Byte-position chi-square.
    let runs_per_mode = 3 * SET / RUN;
    let run_bound = binomial_bound(runs_per_mode, RUN_ALPHA, 1e-3);
    for t in &plain {
        for (name, set) in t.sets() {
            let (f, n) = runs_flagged(set, chi_square_flags);
            assert_eq!(f, n, "chi-square must flag every {} {name} run", t.name);
        }
    }
    let (mut sec_flagged, mut ctl_flagged) = (0, 0);
    let (mut sec_pos, mut ctl_pos, mut positions) = (0, 0, 0);
    for ((name, set), (_, control)) in secure.sets().iter().zip(&controls) {
        sec_flagged += runs_flagged(set, chi_square_flags).0;
        ctl_flagged += runs_flagged(control, chi_square_flags).0;
        let (s, c) = (position_ps(set), position_ps(control));
        assert_eq!(s.len(), c.len(), "{name}: the control has the same positions");
        let s_hits = s.iter().filter(|&&p| p < POS_ALPHA).count();
        let c_hits = c.iter().filter(|&&p| p < POS_ALPHA).count();
        let bound = binomial_bound(s.len(), POS_ALPHA, 1e-3);
        println!(
            "chi-square {name}: {} positions, {s_hits} flagged at 1% ({:.2}%), control {c_hits} ({:.2}%), bound {bound}; \
             smallest p {:.2e} vs control {:.2e}",
            s.len(),
            pct(s_hits, s.len()),
            pct(c_hits, c.len()),
            s.iter().copied().fold(1.0, f64::min),
            c.iter().copied().fold(1.0, f64::min),
        );
        assert!(c_hits <= bound, "{name}: the control itself is off ({c_hits} > {bound}): the test is miscalibrated");
        assert!(
            s_hits <= bound,
            "{name}: secure mode flagged at {s_hits} positions, random bytes give at most {bound}"
        );
        sec_pos += s_hits;
        ctl_pos += c_hits;
        positions += s.len();
    }
    println!(
        "chi-square runs flagged: plaintext {n}/{n}, secure {sec_flagged}/{runs_per_mode}, control {ctl_flagged}/{runs_per_mode} \
         (bound {run_bound}); positions flagged at 1%: secure {:.2}%, control {:.2}%",
        pct(sec_pos, positions),
        pct(ctl_pos, positions),
        n = 2 * runs_per_mode,
    );
    assert!(ctl_flagged <= run_bound, "control flagged in {ctl_flagged} runs: miscalibrated");
    assert!(sec_flagged <= run_bound, "secure mode flagged in {sec_flagged} runs; random bytes: at most {run_bound}");

    // (b) Length histogram. The control keeps no lengths of its own: its
    // lengths are uniform over the secure set's range.
    for t in &plain {
        for (name, set) in t.sets() {
            let (f, n) = runs_flagged(set, length_flags);
            let (top, bits) = length_stats(set);
            println!("lengths {} {name}: top {:.1}%, {bits:.2} bits", t.name, 100.0 * top);
            assert_eq!(f, n, "the length histogram must flag every {} {name} run", t.name);
        }
    }
    let mut rng = StdRng::seed_from_u64(7);
    let (mut sec_len, mut ctl_len) = (0, 0);
    for (name, set) in secure.sets() {
        let (lo, hi) = (set.iter().map(Vec::len).min().unwrap(), set.iter().map(Vec::len).max().unwrap());
        let control: Vec<Vec<u8>> = (0..set.len()).map(|_| vec![0; rng.random_range(lo..=hi)]).collect();
        let (top, bits) = length_stats(set);
        let (ctop, cbits) = length_stats(&control);
        println!(
            "lengths secure {name}: {lo}..={hi}, top {:.1}%, {bits:.2} bits; control top {:.1}%, {cbits:.2} bits",
            100.0 * top,
            100.0 * ctop
        );
        let worst =
            set.chunks(RUN).map(length_stats).fold((0.0f64, f64::MAX), |(t, b), (t2, b2)| (t.max(t2), b.min(b2)));
        println!("  worst secure {name} run: top {:.1}%, {:.2} bits", 100.0 * worst.0, worst.1);
        sec_len += runs_flagged(set, length_flags).0;
        ctl_len += runs_flagged(&control, length_flags).0;
    }
    println!("length runs flagged: secure {sec_len}/{runs_per_mode}, control {ctl_len}/{runs_per_mode}");
    assert_eq!(ctl_len, 0, "uniform lengths must pass");
    assert_eq!(sec_len, 0, "secure mode's lengths must not look constant");

    // (c) One rule per plaintext signature, datagram by datagram. The magic
    // is in fast mode's SYN (a baseline SYN has no payload to carry it); the
    // flags word is in every plaintext datagram; the sizes are the SYN's.
    let fast_first = &plain[1].first;
    assert!(fast_first.iter().all(|d| magic_rule(d)), "every fast SYN carries the magic");
    for t in &plain {
        for (name, set) in t.sets() {
            assert!(set.iter().all(|d| flags_rule(d)), "{} {name}: every datagram has the zero bits", t.name);
        }
        assert!(t.first.iter().all(|d| syn_size_rule(d)), "{}: every SYN has a SYN size", t.name);
    }
    type Rule = fn(&[u8]) -> bool;
    let rules: [(&str, Rule, bool); 3] =
        [("magic", magic_rule, false), ("flags word", flags_rule, false), ("SYN size", syn_size_rule, true)];
    for (rule, f, first_only) in rules {
        let (mut s, mut c, mut n) = (0, 0, 0);
        for ((name, set), (_, control)) in secure.sets().iter().zip(&controls) {
            if first_only && *name != "first" {
                continue;
            }
            s += set.iter().filter(|d| f(d)).count();
            c += control.iter().filter(|d| f(d)).count();
            n += set.len();
        }
        // Chance alone: 2^-32 (magic), 2^-29 (flags word), 0 (sizes: no
        // secure datagram is that short) per datagram.
        println!("rule {rule}: plaintext 100%, secure {s}/{n}, control {c}/{n}");
        assert_eq!(s, 0, "rule {rule} flagged {s} secure datagrams");
        assert_eq!(c, 0, "rule {rule} flagged {c} random ones");
    }

    // (d) The "fully encrypted" rule: secure mode matches it exactly as
    // often as random bytes do (that is its cost: see docs/PROTOCOL.md);
    // plaintext SYNs, mostly zero bytes, are exempt.
    for t in &plain {
        let hits = t.first.iter().filter(|d| fully_encrypted_rule(d)).count();
        println!("fully encrypted rule, {} first datagrams: {:.1}%", t.name, pct(hits, t.first.len()));
    }
    for ((name, set), (_, control)) in secure.sets().iter().zip(&controls) {
        let s = set.iter().filter(|d| fully_encrypted_rule(d)).count();
        let c = control.iter().filter(|d| fully_encrypted_rule(d)).count();
        println!("fully encrypted rule, secure {name}: {:.2}%, control {:.2}%", pct(s, set.len()), pct(c, set.len()));
        // Two-sided: as often as random, within chance (p = c/n).
        let p = (c as f64 / set.len() as f64).clamp(1e-4, 1.0 - 1e-4);
        let sd = (set.len() as f64 * p * (1.0 - p)).sqrt();
        assert!((s as f64 - c as f64).abs() <= 5.0 * sd + 2.0, "{name}: {s} vs control {c}");
    }
}

/// The classifiers can fail: a secure-looking stream with one weakness of
/// the kinds a careless design has (a fixed byte, a byte of 255 values, a
/// per-flow constant field, a constant length) is flagged.
#[test]
fn the_classifiers_catch_small_weaknesses() {
    let mut rng = StdRng::seed_from_u64(11);
    let random = |rng: &mut StdRng, len: std::ops::Range<usize>| {
        let mut r = vec![0u8; rng.random_range(len)];
        rng.fill_bytes(&mut r);
        r
    };
    let run: Vec<Vec<u8>> = (0..RUN).map(|_| random(&mut rng, 300..700)).collect();
    assert!(!chi_square_flags(&run));
    assert!(!length_flags(&run));
    // A bit pattern a quarter of the values never take (a SYN bit kept
    // clear, say).
    let mut quarter = run.clone();
    for d in &mut quarter {
        d[11] &= !0b10;
    }
    assert!(chi_square_flags(&quarter), "a bit kept clear");
    let mut fixed = run.clone();
    for d in &mut fixed {
        d[17] = 0x42;
    }
    assert!(chi_square_flags(&fixed), "a fixed byte");
    // A connection ID: 8 bytes constant per flow, over 8 flows.
    let mut cid = run.clone();
    for (i, d) in cid.iter_mut().enumerate() {
        d[0..8].copy_from_slice(&(i as u64 % 8).to_be_bytes());
    }
    assert!(chi_square_flags(&cid), "a per-flow ID");
    // A tag-like trailer of low entropy at the end.
    let mut tail = run.clone();
    for d in &mut tail {
        let n = d.len();
        d[n - 1] &= 0x7f;
    }
    assert!(chi_square_flags(&tail), "a bit always clear at the end");
    let constant: Vec<Vec<u8>> = (0..RUN).map(|_| random(&mut rng, 1212..1213)).collect();
    assert!(length_flags(&constant), "one length");
    let few: Vec<Vec<u8>> = (0..RUN)
        .map(|i| {
            let mut d = random(&mut rng, 1212..1213);
            d.resize(1212 + 16 * (i % 3), 0);
            d
        })
        .collect();
    assert!(length_flags(&few), "three lengths");
}
