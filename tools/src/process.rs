//! Running the real `anonserver` and `anonclient` with bounded waits.
//!
//! Every wait is on an event (a line on the child's stderr, or its stderr
//! closing when it exits), bounded by a deadline; a child still running at
//! the deadline is killed.

use std::io::{self, BufRead, BufReader};
use std::net::UdpSocket;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A UDP port that was free a moment ago on 127.0.0.1.
pub fn free_udp_port() -> io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process whose stderr is read line by line; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub stderr: Vec<String>,
    started: Instant,
    /// When its stderr closed: its exit, for programs that keep stderr open
    /// to the end (ours, curl), whenever the parent gets round to waiting.
    closed: Arc<OnceLock<Instant>>,
}

impl Proc {
    /// Starts `cmd` with stderr captured and stdin, stdout closed.
    pub fn spawn(cmd: &mut Command) -> io::Result<Proc> {
        Self::spawn_inner(cmd.stdin(Stdio::null()))
    }

    /// Like [`spawn`](Self::spawn), with a pipe to its stdin: dropping the
    /// returned end is how to tell a child that reads it to stop.
    pub fn spawn_with_stdin(cmd: &mut Command) -> io::Result<(Proc, ChildStdin)> {
        let mut proc = Self::spawn_inner(cmd.stdin(Stdio::piped()))?;
        let stdin = proc.child.stdin.take().ok_or_else(|| io::Error::other("no stdin"))?;
        Ok((proc, stdin))
    }

    fn spawn_inner(cmd: &mut Command) -> io::Result<Proc> {
        // Before the spawn, which returns only once the program is exec'd.
        let started = Instant::now();
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| io::Error::other("no stderr"))?;
        let (tx, lines) = mpsc::channel();
        let closed = Arc::new(OnceLock::new());
        let closed_by_reader = Arc::clone(&closed);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            // Read on to the end even when nobody listens any more, so that
            // the end is seen (and timed) when it comes; bytes, so that a
            // line that is not UTF-8 does not end the reading early.
            let mut listening = true;
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if listening {
                    let text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string();
                    listening = tx.send(text).is_ok();
                }
                line.clear();
            }
            let _ = closed_by_reader.set(Instant::now());
        });
        Ok(Proc { child, lines, stderr: Vec::new(), started, closed })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since it was started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// When it exited (its stderr closed), once it has.
    pub fn exited_at(&self) -> Option<Instant> {
        self.closed.get().copied()
    }

    /// Wall time from the spawn to the exit (its stderr closing), once it
    /// has exited; the same whenever and in whatever order it is waited for.
    pub fn run_time(&self) -> Option<Duration> {
        self.closed.get().map(|end| end.saturating_duration_since(self.started))
    }

    /// The bridge line a secure-mode `anonserver` logged at start (before
    /// its "serving" line), if it has.
    pub fn bridge_line(&self) -> Option<String> {
        self.stderr.iter().find_map(|l| l.split("bridge line: ").nth(1)).map(|b| b.trim().to_owned())
    }

    /// Waits until a stderr line contains `needle`, at most `within`.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> io::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => "timed out",
                        RecvTimeoutError::Disconnected => "process closed stderr",
                    };
                    return Err(io::Error::other(format!(
                        "no line with {needle:?} ({why}); stderr so far: {:?}",
                        self.stderr
                    )));
                }
            }
        }
    }

    /// Waits for the exit, at most `within` (its stderr closing is the
    /// event); kills the process and fails if it is still running then.
    pub fn wait(&mut self, within: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.stderr.push(line),
                Err(RecvTimeoutError::Disconnected) => return self.child.wait(),
                Err(RecvTimeoutError::Timeout) => {
                    self.child.kill()?;
                    self.child.wait()?;
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("process {} still running after {within:?}; stderr: {:?}", self.pid(), self.stderr),
                    ));
                }
            }
        }
    }

    /// Sends a signal by name ("TERM", "INT", "KILL").
    pub fn signal(&self, name: &str) -> io::Result<()> {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status()?;
        if status.success() { Ok(()) } else { Err(io::Error::other(format!("kill -{name} {} failed", self.pid()))) }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An exit status as people read it: `exit 0`, `signal 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => format!("{status}"),
    }
}

/// A running `anonserver`; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    /// The process.
    pub proc: Proc,
    /// Its UDP port on 127.0.0.1.
    pub port: u16,
}

impl ServerProcess {
    /// Starts `anonserver` on a free port of 127.0.0.1 with the given log
    /// and page, plus `extra` arguments, and waits (at most `ready_within`)
    /// until it says it is serving.
    pub fn start(
        bin: &Path,
        log: &Path,
        page_url: &str,
        extra: &[&str],
        ready_within: Duration,
    ) -> io::Result<ServerProcess> {
        Self::start_on(bin, Some("127.0.0.1"), log, page_url, extra, ready_within)
    }

    /// Like [`start`](Self::start), on `bind` (`None`: the server's default,
    /// every address).
    pub fn start_on(
        bin: &Path,
        bind: Option<&str>,
        log: &Path,
        page_url: &str,
        extra: &[&str],
        ready_within: Duration,
    ) -> io::Result<ServerProcess> {
        let port = free_udp_port()?;
        let mut cmd = Command::new(bin);
        cmd.args(["-p", &port.to_string(), "-l"]).arg(log).args(["-w", page_url]);
        if let Some(bind) = bind {
            cmd.args(["--bind", bind]);
        }
        let mut proc = Proc::spawn(cmd.args(extra).env("RUST_LOG", "info"))?;
        proc.wait_for_line("serving", ready_within)?;
        Ok(ServerProcess { proc, port })
    }

    /// Sends SIGTERM and waits at most `within` for the exit.
    pub fn stop(&mut self, within: Duration) -> io::Result<ExitStatus> {
        self.proc.signal("TERM")?;
        self.proc.wait(within)
    }
}

/// Starts `anonclient` for 127.0.0.1:`port`, writing `out` and `log`.
pub fn spawn_client(bin: &Path, port: u16, log: &Path, out: &Path, extra: &[&str]) -> io::Result<Proc> {
    Proc::spawn(&mut client_command(bin, port, log, out, extra))
}

/// The command [`spawn_client`] runs, for a caller that starts it later.
pub fn client_command(bin: &Path, port: u16, log: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["-s", "127.0.0.1", "-p", &port.to_string(), "-l"]).arg(log).arg("-f").arg(out).args(extra);
    cmd
}

/// The transfer time `anonclient` reports on its success line
/// (`anonclient: wrote N bytes (…) to FILE in SECS s (RATE)`), in seconds.
pub fn reported_secs(stderr: &[String]) -> Option<f64> {
    stderr.iter().filter(|l| l.contains(": wrote ")).find_map(|l| {
        // The last " in ": a file name may hold one too.
        l.rsplit(" in ").next()?.split_whitespace().next()?.parse::<f64>().ok().filter(|s| s.is_finite())
    })
}

/// The time to the first page byte that an `anonclient` success line
/// gives (`…, first byte after SECS s)`), in seconds.
pub fn reported_first_byte(stderr: &[String]) -> Option<f64> {
    stderr.iter().filter(|l| l.contains(": wrote ")).find_map(|l| {
        l.rsplit("first byte after ").next()?.split_whitespace().next()?.parse::<f64>().ok().filter(|s| s.is_finite())
    })
}

/// The folder holding the workspace's binaries, next to the running one.
pub fn bin_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| io::Error::other("no parent folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_client_success_line() {
        let line = |s: &str| vec!["anonclient: note".to_string(), s.to_string()];
        assert_eq!(
            reported_secs(&line("anonclient: wrote 10485760 bytes (10.0 MiB) to a in b.html in 0.021 s (499 MB/s)")),
            Some(0.021)
        );
        assert_eq!(reported_secs(&line("anonclient: wrote 0 bytes (0 B) to x in 0.000 s (0 B/s)")), Some(0.0));
        assert_eq!(reported_secs(&line("anonclient: cannot reach 127.0.0.1:1 in time")), None);
        assert_eq!(reported_secs(&line("anonclient: wrote 1 bytes (1 B) to x in inf s (n/a)")), None);
        let with_first = line("anonclient: wrote 5 bytes (5 B) to x in 0.300 s (17 B/s, first byte after 0.125 s)");
        assert_eq!(reported_secs(&with_first), Some(0.3));
        assert_eq!(reported_first_byte(&with_first), Some(0.125));
        assert_eq!(reported_first_byte(&line("anonclient: wrote 0 bytes (0 B) to x in 0.000 s (0 B/s)")), None);
        assert_eq!(reported_secs(&[]), None);
    }

    #[test]
    fn exit_statuses_read_as_numbers() {
        let status = |cmd: &str| Command::new("sh").args(["-c", cmd]).status().unwrap();
        assert_eq!(describe_exit(status("exit 0")), "exit 0");
        assert_eq!(describe_exit(status("exit 3")), "exit 3");
        assert_eq!(describe_exit(status("kill -9 $$")), "signal 9");
    }

    #[test]
    fn run_time_is_the_time_to_exit_not_to_the_wait() {
        let mut p = Proc::spawn(Command::new("sh").args(["-c", "sleep 0.1"])).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        p.wait(Duration::from_secs(10)).unwrap();
        let t = p.run_time().unwrap();
        assert!(t >= Duration::from_millis(100) && t < Duration::from_millis(800), "{t:?}");
    }
}
