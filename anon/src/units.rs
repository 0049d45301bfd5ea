//! Sizes and rates for people: sizes in binary units (KiB, MiB, as `ls -h`
//! and file managers count them), rates in SI decimal units (kB/s, MB/s, as
//! curl and wget print them), each with three significant digits.
//!
//! Pure functions of their arguments: no value, however large or small,
//! makes them divide by zero or print `inf` or `NaN`.

use std::time::Duration;

const BINARY: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
const DECIMAL: [&str; 9] = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s", "PB/s", "EB/s", "ZB/s", "YB/s"];

/// `bytes` in binary units: `0 B`, `1023 B`, `1.00 KiB`, `10.0 MiB`, `16.0 EiB`.
pub fn size(bytes: u64) -> String {
    if bytes < 1024 {
        // Whole bytes are exact; "512 B" needs no decimals.
        return format!("{bytes} B");
    }
    scaled(bytes as f64, 1024.0, &BINARY)
}

/// The rate of `bytes` moved in `elapsed`, in SI units: `999 B/s`,
/// `1.00 MB/s`, `499 MB/s`. `n/a` when `elapsed` is zero and there were
/// bytes (no honest figure exists); `0 B/s` for no bytes at all.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    if bytes == 0 {
        return "0 B/s".to_string();
    }
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "n/a".to_string();
    }
    // At least 1 ns and at most u64::MAX bytes: the quotient is finite.
    scaled(bytes as f64 / secs, 1000.0, &DECIMAL)
}

/// `value` (finite, not negative) in the largest unit that keeps it at or
/// above 1, with three significant digits.
fn scaled(value: f64, base: f64, units: &[&str]) -> String {
    let mut v = value;
    let mut unit = 0;
    while unit + 1 < units.len() {
        // Move up when the value would print as `base` or more ("1024 KiB",
        // "1000 kB/s") once rounded: "1.00 MiB" reads better.
        if round3(v) < base {
            break;
        }
        v /= base;
        unit += 1;
    }
    if unit > 0 {
        // It rounded up to `base` below, so it is 1 here: print "1.00", not
        // "0.99" or "1.00" by the accident of 0.9995 in binary.
        v = v.max(1.0);
    }
    format!("{} {}", three_digits(v), units.get(unit).copied().unwrap_or_default())
}

/// `v` rounded as [`three_digits`] prints it.
fn round3(v: f64) -> f64 {
    let decimals = decimals(v);
    let scale = 10f64.powi(decimals as i32);
    (v * scale).round() / scale
}

/// Decimals that give three significant digits once rounded: 9.996 has 2
/// decimals before rounding but prints as "10.0".
fn decimals(v: f64) -> usize {
    if v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    }
}

fn three_digits(v: f64) -> String {
    let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
    format!("{v:.*}", decimals(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1), "1 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.00 KiB");
        assert_eq!(size(1536), "1.50 KiB");
        assert_eq!(size(10 * 1024 - 1), "10.0 KiB");
        assert_eq!(size(100 * 1024), "100 KiB");
        assert_eq!(size(1_048_575), "1.00 MiB");
        assert_eq!(size(10 << 20), "10.0 MiB");
        assert_eq!(size(1 << 30), "1.00 GiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn rates() {
        assert_eq!(rate(10_485_760, Duration::from_millis(21)), "499 MB/s");
        assert_eq!(rate(999, Duration::from_secs(1)), "999 B/s");
        assert_eq!(rate(999_499, Duration::from_secs(1)), "999 kB/s");
        assert_eq!(rate(999_500, Duration::from_secs(1)), "1.00 MB/s");
        assert_eq!(rate(1_234_567, Duration::from_secs(1)), "1.23 MB/s");
        assert_eq!(rate(1, Duration::from_nanos(1)), "1.00 GB/s");
        assert_eq!(rate(3, Duration::from_secs(2)), "1.50 B/s");
    }

    #[test]
    fn no_bytes_and_no_time() {
        assert_eq!(rate(0, Duration::ZERO), "0 B/s");
        assert_eq!(rate(0, Duration::from_secs(5)), "0 B/s");
        assert_eq!(rate(1, Duration::ZERO), "n/a");
        assert_eq!(rate(u64::MAX, Duration::ZERO), "n/a");
    }

    #[test]
    fn extremes_print_finite_numbers() {
        let times =
            [Duration::ZERO, Duration::from_nanos(1), Duration::from_micros(3), Duration::from_secs(1), Duration::MAX];
        let sizes = [0, 1, 511, 1023, 1024, 999_999, 1 << 40, u64::MAX - 1, u64::MAX];
        for &t in &times {
            for &b in &sizes {
                for s in [size(b), rate(b, t)] {
                    assert!(!s.contains("inf") && !s.contains("NaN"), "{b} bytes in {t:?}: {s}");
                    assert!(s.len() < 24, "{b} bytes in {t:?}: {s}");
                }
            }
        }
        assert_eq!(rate(u64::MAX, Duration::from_nanos(1)), "18447 YB/s");
        assert_eq!(rate(1, Duration::MAX), "0.00 B/s");
    }
}
