//! The main job, end to end, on one machine with no internet: a local HTTP
//! origin serves a page, `anonserver` downloads it and serves it over UDP,
//! several `anonclient`s fetch it at once, and every file is checked.
//!
//! Run it with `bash scripts/demo.sh`, which builds the binaries first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anon::units;
use anon_tools::origin::Origin;
use anon_tools::process::{ServerProcess, bin_dir, describe_exit, reported_secs, spawn_client};
use clap::Parser;
use rand::RngCore;

/// Serve a local page with anonserver and fetch it with concurrent anonclients.
#[derive(Debug, Parser)]
struct Args {
    /// Number of concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Page size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    /// Folder with anonserver and anonclient (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Folder for logs and fetched files (default: a temporary folder, removed).
    #[arg(long)]
    keep_in: Option<PathBuf>,
}

/// How long all the clients together may take.
const CLIENTS_WITHIN: Duration = Duration::from_secs(120);

/// `min / median / max` of `times`, in seconds.
fn spread(mut times: Vec<Duration>) -> String {
    times.sort();
    match (times.first(), times.get(times.len() / 2), times.last()) {
        (Some(min), Some(median), Some(max)) => format!(
            "min {:.3} s, median {:.3} s, max {:.3} s",
            min.as_secs_f64(),
            median.as_secs_f64(),
            max.as_secs_f64()
        ),
        _ => "-".to_string(),
    }
}

fn make_page(size: usize) -> Vec<u8> {
    let mut page = b"<!doctype html><title>anon demo</title><pre>\n".to_vec();
    let mut noise = vec![0u8; size.saturating_sub(page.len())];
    rand::rng().fill_bytes(&mut noise);
    page.extend(noise);
    page.truncate(size);
    page
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("anon-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let bins = match args.bin_dir {
        Some(d) => d,
        None => bin_dir()?,
    };
    let temp = tempfile::tempdir()?;
    let dir = args.keep_in.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;

    let page = make_page(args.size);
    let origin = Origin::serve(page.clone())?;
    println!("origin    {} ({} bytes, {})", origin.url(), page.len(), units::size(page.len() as u64));

    let server_log = dir.join("server.log");
    let mut server =
        ServerProcess::start(&bins.join("anonserver"), &server_log, &origin.url(), &[], Duration::from_secs(30))?;
    println!("server    udp 127.0.0.1:{} (pid {})", server.port, server.proc.pid());

    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let out = dir.join(format!("page-{i}.html"));
        let log = dir.join(format!("client-{i}.log"));
        // Not --quiet: the success line carries the client's own transfer time.
        clients.push((out.clone(), log.clone(), spawn_client(&bins.join("anonclient"), server.port, &log, &out, &[])?));
    }
    let deadline = started + CLIENTS_WITHIN;
    let (mut ok, mut process_times, mut transfer_times) = (0, Vec::new(), Vec::new());
    for (i, (out, log, mut proc)) in clients.into_iter().enumerate() {
        let status = proc.wait(deadline.saturating_duration_since(Instant::now()));
        let same = std::fs::read(&out).map(|got| got == page).unwrap_or(false);
        let lines = std::fs::read_to_string(&log).map(|l| l.lines().count()).unwrap_or(0);
        let success = matches!(&status, Ok(s) if s.success());
        let verdict = if success && same { "ok" } else { "FAILED" };
        let exit = match &status {
            Ok(s) => describe_exit(*s),
            Err(e) => e.to_string(),
        };
        let process = proc.run_time();
        let transfer = reported_secs(&proc.stderr).map(Duration::from_secs_f64);
        let secs = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.3} s", d.as_secs_f64()));
        // The client's own line (below) has its rate, from its exact time.
        println!(
            "client {i:<2} {verdict:<6} {exit}, process {}, transfer {}, {lines} log lines{}",
            secs(process),
            secs(transfer),
            proc.stderr.iter().map(|l| format!("\n          {l}")).collect::<String>()
        );
        process_times.extend(process);
        transfer_times.extend(transfer);
        ok += usize::from(verdict == "ok");
    }
    let wall = started.elapsed();
    let status = server.stop(Duration::from_secs(10))?;
    let server_lines = std::fs::read_to_string(&server_log).map(|l| l.lines().count()).unwrap_or(0);
    println!("server    {} after SIGTERM, {server_lines} log lines", describe_exit(status));
    let total = (page.len() * ok) as u64;
    println!(
        "summary   {ok}/{} clients got the page byte-exact in {:.2} s ({} in all)",
        args.clients,
        wall.as_secs_f64(),
        units::rate(total, wall)
    );
    // What a user waits for (spawn to exit) beside what the client times
    // itself (first SYN to the last byte written).
    println!("          process time  (spawn to exit)  {}", spread(process_times));
    println!("          transfer time (client's own)   {}", spread(transfer_times));
    if args.keep_in.is_none() {
        println!("          (files were in a temporary folder; --keep-in DIR keeps them)");
    }
    Ok(ok == args.clients && status.success())
}
