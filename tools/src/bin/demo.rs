//! The main job, end to end, on one machine with no internet: a local HTTP
//! origin serves a page, `anonserver` downloads it and serves it over UDP,
//! several `anonclient`s fetch it at once, and every file is checked.
//!
//! Run it with `bash scripts/demo.sh`, which builds the binaries first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anon_tools::origin::Origin;
use anon_tools::process::{ServerProcess, bin_dir, spawn_client};
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
    println!("origin    {} ({} bytes)", origin.url(), page.len());

    let server_log = dir.join("server.log");
    let mut server =
        ServerProcess::start(&bins.join("anonserver"), &server_log, &origin.url(), &[], Duration::from_secs(30))?;
    println!("server    udp 127.0.0.1:{} (pid {})", server.port, server.proc.pid());

    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let out = dir.join(format!("page-{i}.html"));
        let log = dir.join(format!("client-{i}.log"));
        clients.push((
            out.clone(),
            log.clone(),
            spawn_client(&bins.join("anonclient"), server.port, &log, &out, &["--quiet"])?,
        ));
    }
    let mut ok = 0;
    for (i, (out, log, mut proc)) in clients.into_iter().enumerate() {
        let status = proc.wait(Duration::from_secs(120))?;
        let same = std::fs::read(&out).map(|got| got == page).unwrap_or(false);
        let lines = std::fs::read_to_string(&log).map(|l| l.lines().count()).unwrap_or(0);
        let verdict = if status.success() && same { "ok" } else { "FAILED" };
        println!(
            "client {i:<2} {verdict:<6} exit {:?}, {:.2} s, {lines} log lines{}",
            status.code(),
            proc.age().as_secs_f64(),
            proc.stderr.iter().map(|l| format!("\n          {l}")).collect::<String>()
        );
        ok += usize::from(verdict == "ok");
    }
    let wall = started.elapsed();
    let status = server.stop(Duration::from_secs(10))?;
    let server_lines = std::fs::read_to_string(&server_log).map(|l| l.lines().count()).unwrap_or(0);
    println!("server    exit {:?} after SIGTERM, {server_lines} log lines", status.code());
    let total = (page.len() * ok) as f64;
    println!(
        "summary   {ok}/{} clients got the page byte-exact in {:.2} s ({:.1} MB/s in all)",
        args.clients,
        wall.as_secs_f64(),
        total / wall.as_secs_f64() / 1e6
    );
    if args.keep_in.is_none() {
        println!("          (files were in a temporary folder; --keep-in DIR keeps them)");
    }
    Ok(ok == args.clients && status.success())
}
