//! What /proc says about a process: CPU time and memory, for the figures
//! every bench subcommand reports.

use std::io;
use std::process::Command;

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on
/// Linux when it cannot be asked).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t: &f64| t > 0.0)
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user and system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    // utime and stime: fields 14 and 15 of stat(5).
    stat_seconds(&format!("/proc/{pid}/stat"), 14, 15)
}

/// The sum of fields `a` and `b` (numbered from 1, as stat(5) does) of a
/// /proc stat file, clock ticks, in seconds.
fn stat_seconds(path: &str, a: usize, b: usize) -> io::Result<f64> {
    // First: its first call runs getconf, which a reading of this
    // process's children's times taken before it would miss.
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name (field 2), which is in parentheses and
    // may hold spaces: field n is at n - 3 after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        f.get(n.saturating_sub(3))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other(format!("{path}: no field {n}")))
    };
    Ok((field(a)? + field(b)?) / ticks)
}

/// Resident and peak memory of a process, in KiB.
pub fn memory_kib(pid: u32) -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// CPU seconds (user and system) of this process's children that have
/// exited and been waited for, as getrusage(RUSAGE_CHILDREN) counts them:
/// the difference across a crowd is what its client processes used, all
/// their threads included, from spawn to exit.
pub fn children_cpu_seconds() -> io::Result<f64> {
    // cutime and cstime: fields 16 and 17 of stat(5).
    stat_seconds("/proc/self/stat", 16, 17)
}
