//! `anon-bench tftp`: anon's baseline mode against TFTP, the classic
//! stop-and-wait transfer over UDP with the same 512-byte blocks, on
//! loopback: `anonserver` and `anonclient --no-fast` against tftp-hpa's
//! `in.tftpd` (run here in the foreground, on a free port, with a temporary
//! root) and its `tftp` client. The figure is each client process's wall
//! time from spawn to exit, every file checked byte for byte.

use std::io;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anon_tools::process::{Proc, free_udp_port, reported_secs, spawn_client};

/// Options of `anon-bench tftp`.
#[derive(Debug, Clone)]
pub struct Options {
    pub bins: PathBuf,
    pub size: usize,
    pub runs: usize,
    /// How long one transfer may take before it counts as failed.
    pub timeout: Duration,
}

/// TFTP's blocks are numbered in 16 bits; past 65535 blocks of 512 bytes
/// (32 MiB) a transfer depends on both ends agreeing on a roll-over.
pub const MAX_SIZE: usize = 65_535 * 512 - 1;

/// `in.tftpd` in the foreground on 127.0.0.1:`port`, serving `root`.
struct Tftpd {
    proc: Proc,
    port: u16,
}

impl Tftpd {
    fn start(root: &Path, within: Duration) -> io::Result<Tftpd> {
        let port = free_udp_port()?;
        // -L: listen in the foreground; -s: chroot into the root (we are
        // root), so file names are relative to it.
        let mut proc =
            Proc::spawn(Command::new("in.tftpd").args(["-L", "-a", &format!("127.0.0.1:{port}"), "-s"]).arg(root))?;
        // It prints nothing when ready: a read request for a missing file
        // gets an ERROR packet once it listens.
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        probe.set_read_timeout(Some(Duration::from_millis(100)))?;
        let request = b"\x00\x01no-such-file\x00octet\x00";
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 516];
        while Instant::now() < deadline && proc.exited_at().is_none() {
            probe.send_to(request, ("127.0.0.1", port))?;
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                if buf.get(..2) == Some(b"\x00\x05".as_slice()) && n >= 4 {
                    return Ok(Tftpd { proc, port });
                }
            }
        }
        let _ = proc.signal("TERM");
        let _ = proc.wait(Duration::from_secs(5));
        Err(io::Error::other(format!("in.tftpd does not answer on 127.0.0.1:{port}; stderr {:?}", proc.stderr)))
    }

    fn stop(mut self) -> io::Result<()> {
        self.proc.signal("TERM")?;
        self.proc.wait(Duration::from_secs(10)).map(drop)
    }
}

/// One client process run to its end.
struct Fetch {
    process: Duration,
    reported: Option<Duration>,
}

fn finish(mut p: Proc, out: &Path, page: &[u8], timeout: Duration, what: &str) -> io::Result<Fetch> {
    let status = p.wait(timeout)?;
    if !status.success() {
        return Err(io::Error::other(format!("{what} failed ({status}): {:?}", p.stderr)));
    }
    if std::fs::read(out)? != page {
        return Err(io::Error::other(format!("{what}: the fetched file differs from the page")));
    }
    std::fs::remove_file(out)?;
    let process = p.run_time().ok_or_else(|| io::Error::other(format!("{what}: no exit time")))?;
    Ok(Fetch { process, reported: reported_secs(&p.stderr).map(Duration::from_secs_f64) })
}

fn median(v: &[Duration]) -> Duration {
    super::median(v.to_vec())
}

pub fn run(o: &Options) -> io::Result<()> {
    if o.size > MAX_SIZE {
        return Err(io::Error::other(format!("TFTP with 512-byte blocks carries at most {MAX_SIZE} bytes")));
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&out)?;
    // in.tftpd serves only world-readable files, and drops to an
    // unprivileged user that must be able to enter its root.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let page_file = root.join("page.bin");
    let (page, mut server) =
        super::serve_random_page(&o.bins, &page_file, o.size, &dir.path().join("server.log"), &[])?;
    std::fs::set_permissions(&page_file, std::fs::Permissions::from_mode(0o644))?;
    let tftpd = match Tftpd::start(&root, Duration::from_secs(10)) {
        Ok(t) => t,
        Err(e) => {
            let _ = server.stop(Duration::from_secs(10));
            return Err(e);
        }
    };
    let result = fetches(o, dir.path(), &out, &page, server.port, tftpd.port);
    let stopped = (server.stop(Duration::from_secs(10)), tftpd.stop());
    let (anon, tftp) = result?;
    stopped.0?;
    stopped.1?;

    let anon_process: Vec<Duration> = anon.iter().map(|f| f.process).collect();
    let anon_reported: Vec<Duration> = anon.iter().filter_map(|f| f.reported).collect();
    let tftp_process: Vec<Duration> = tftp.iter().map(|f| f.process).collect();
    let (a, t) = (median(&anon_process), median(&tftp_process));
    let rate = |d: Duration| anon::units::rate(o.size as u64, d);
    println!(
        "page {} bytes ({}), loopback, 512-byte stop-and-wait both, median of {}, byte-exact",
        o.size,
        anon::units::size(o.size as u64),
        o.runs
    );
    println!("{:<34} {:>10} {:>12} {:>12}", "client", "process s", "rate", "vs tftp");
    println!("{:<34} {:>10.3} {:>12} {:>11.2}x", "anonclient --no-fast", a.as_secs_f64(), rate(a), ratio(a, t));
    println!("{:<34} {:>10.3} {:>12} {:>11.2}x", "tftp (tftp-hpa, in.tftpd)", t.as_secs_f64(), rate(t), 1.0);
    if !anon_reported.is_empty() {
        let r = median(&anon_reported);
        println!(
            "anonclient's own transfer time (first SYN to the last byte written): {:.3} s ({})",
            r.as_secs_f64(),
            rate(r)
        );
    }
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// Alternates one anon and one tftp fetch per run, so that a slow spell of
/// the machine hits both.
fn fetches(
    o: &Options,
    dir: &Path,
    out: &Path,
    page: &[u8],
    anon_port: u16,
    tftp_port: u16,
) -> io::Result<(Vec<Fetch>, Vec<Fetch>)> {
    let (mut anon, mut tftp) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        let file = out.join("anon.bin");
        let p = spawn_client(&o.bins.join("anonclient"), anon_port, &dir.join("client.log"), &file, &["--no-fast"])?;
        anon.push(finish(p, &file, page, o.timeout, "anonclient")?);

        // tftp writes the file under its remote name, in its folder.
        let p = Proc::spawn(Command::new("tftp").current_dir(out).args([
            "127.0.0.1",
            &tftp_port.to_string(),
            "-m",
            "binary",
            "-c",
            "get",
            "page.bin",
        ]))?;
        tftp.push(finish(p, &out.join("page.bin"), page, o.timeout, "tftp")?);
    }
    Ok((anon, tftp))
}
