//! Running the real `anonserver` and `anonclient` with bounded waits.
//!
//! Every wait is on an event (a line on the child's stderr, or its stderr
//! closing when it exits), bounded by a deadline; a child still running at
//! the deadline is killed.

use std::io::{self, BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
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
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| io::Error::other("no stderr"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, lines, stderr: Vec::new(), started: Instant::now() })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since it was started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
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
    Proc::spawn(
        Command::new(bin)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-l"])
            .arg(log)
            .arg("-f")
            .arg(out)
            .args(extra),
    )
}

/// The folder holding the workspace's binaries, next to the running one.
pub fn bin_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| io::Error::other("no parent folder"))
}
