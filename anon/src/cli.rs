//! Command lines of `anonserver` and `anonclient` (PROTOCOL.md §5), their
//! exit codes, and the glue from arguments to drivers.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anon_proto::cc::Algorithm;
use anon_proto::{ClientConfig, FastClient, Server, ServerConfig};
use bytes::Bytes;
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::driver;
use crate::driver::client::{FetchFailed, Output};
use crate::fetch::{FetchLimits, Source, fetch};
use crate::packet_log::PacketLog;

/// Exit statuses of both programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success; for the server, a clean stop on SIGINT or SIGTERM.
    Ok = 0,
    /// The transfer failed: no answer, refused, or the server went silent.
    Transfer = 1,
    /// Bad command line (the argument parser uses 2 as well).
    Usage = 2,
    /// The socket could not be set up: port in use or not permitted,
    /// server name not resolvable.
    Network = 3,
    /// The server could not download the page.
    Download = 4,
    /// A local file (log, output) could not be written.
    LocalFile = 5,
    /// Interrupted by SIGINT or SIGTERM before the page was complete (client).
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

const EXIT_CODES: &str = "\
Exit status:
  0    success (anonserver: stopped by SIGINT or SIGTERM)
  1    the transfer failed: no answer, connection refused, or the server went silent
  2    bad command line
  3    the socket could not be set up (port in use or not permitted, unknown host)
  4    the page could not be downloaded
  5    a local file (log, output) could not be written
  130  interrupted by SIGINT or SIGTERM before the page was complete (anonclient)";

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("port 0 is not a port a client can reach; use 1-65535".into()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(_) => Err("ports go up to 65535".into()),
        Err(_) => Err(format!("{s:?} is not a port number (1-65535)")),
    }
}

/// Shortest duration any option takes: a millisecond.
const MIN_SECS: f64 = 0.001;
/// Longest duration any option takes.
const MAX_SECS: f64 = 7.0 * 24.0 * 3600.0;

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    if secs < MIN_SECS {
        return Err(format!("at least {MIN_SECS} seconds"));
    }
    if secs > MAX_SECS {
        return Err(format!("at most {MAX_SECS} seconds (a week)"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// Like [`parse_secs`], with 0 allowed (meaning "never" or "at once").
fn parse_secs_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim().parse::<f64>() == Ok(0.0) { Ok(Duration::ZERO) } else { parse_secs(s) }
}

/// anonserver: download a web page once, then serve it over UDP to any number
/// of anonclients at once, until SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "anonserver", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ANON_GIT_REV"), ")"), after_help = format!("Example:\n  anonserver -p 30000 -l /tmp/server.log -w www.example.com\n\n{EXIT_CODES}"))]
pub struct ServerArgs {
    /// UDP port to listen on (1-65535).
    #[arg(short, long, value_parser = parse_port)]
    pub port: u16,
    /// Packet log file, appended to: one line per datagram sent or received.
    /// `-s` is accepted as well, as in the assignment.
    #[arg(short, long = "log", short_alias = 's', value_name = "LOGFILE")]
    pub log: PathBuf,
    /// The page to serve: an http or https URL (redirects are followed), a bare
    /// host meaning http://, a file:// URL, or a local file.
    #[arg(short, long = "web", value_name = "URL")]
    pub web: String,
    /// Address to listen on (default: every IPv6 and IPv4 address).
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Give up a connection whose client has been silent this long.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    pub idle_timeout: Duration,
    /// Refuse new connections beyond this many.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Refuse new connections from one source beyond this many open at once
    /// (high enough for a NAT in front of a whole site). A source is an IPv4
    /// address or an IPv6 /64 (see the prefix options).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_source: u32,
    /// Leading bits of an IPv4 address that make one source for
    /// --max-per-source.
    #[arg(long, value_name = "BITS", default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub source_prefix_v4: u8,
    /// Leading bits of an IPv6 address that make one source for
    /// --max-per-source (a host usually has a whole /64).
    #[arg(long, value_name = "BITS", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub source_prefix_v6: u8,
    /// Memory, in MiB, that the send scoreboards of all connections together
    /// may take. Past half of it, each connection's window shrinks to an
    /// equal share of the rest, so many clients holding large windows
    /// unacknowledged cannot exhaust the server.
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub memory_budget: u64,
    /// Keep at most this many half-open connections (SYN received, handshake
    /// not complete); beyond it SYNs get stateless SYN cookies, so a SYN
    /// flood cannot exhaust the server.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_half_open: usize,
    /// On SIGINT or SIGTERM, refuse new connections and give transfers in
    /// flight this long to finish (0: stop at once); a second signal stops
    /// at once.
    #[arg(long, value_name = "SECS", value_parser = parse_secs_or_zero, default_value = "10")]
    pub grace: Duration,
    /// Log a line of counters this often (0: never). Limits that refused
    /// connections are reported at the same pace, never once per packet.
    #[arg(long, value_name = "SECS", value_parser = parse_secs_or_zero, default_value = "60")]
    pub stats_interval: Duration,
    /// Serve the counters in the Prometheus text format over HTTP on this
    /// TCP address, e.g. 127.0.0.1:9464 (anyone who can reach it can read
    /// them; keep it local).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Refuse a page larger than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub max_page_size: u64,
    /// Deadline for downloading the page.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "60")]
    pub download_timeout: Duration,
    /// Refuse fast-mode offers: every client gets the baseline exchange.
    #[arg(long)]
    pub no_fast: bool,
    /// Congestion control of fast-mode connections.
    #[arg(long, value_enum, default_value_t = Congestion::Bbr)]
    pub congestion: Congestion,
    /// After a turn that received datagrams, poll the socket this many
    /// microseconds before sleeping (0: never). It saves the sleep and
    /// wake-up of each round trip of a stop-and-wait exchange on a LAN, at
    /// the cost of up to this much CPU per wake-up when traffic is sparse;
    /// an idle server sleeps at once.
    #[arg(long, value_name = "MICROS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub busy_poll: u64,
    /// Largest fast-mode segment payload, 1 to 1440 bytes. The default, 1200,
    /// fits the IPv6 minimum MTU of 1280 with all headers, so it crosses any
    /// tunnel (datagrams are sent with Don't Fragment set); 1440 fills a
    /// 1500-byte MTU.
    #[arg(long, value_name = "BYTES", default_value_t = 1200, value_parser = clap::value_parser!(u16).range(1..=1440))]
    pub max_segment: u16,
}

/// How a fast-mode client sends its ACKs (docs/PROTOCOL.md §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AckPolicy {
    /// The ACKs due within one receive batch collapse into one (default).
    Batch,
    /// Every ACK due goes out (every second segment), for measurements.
    Every,
}

/// Congestion controllers a server can use in fast mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Congestion {
    /// Model-based; holds its rate under random loss (default).
    Bbr,
    /// Loss-based, RFC 9438.
    Cubic,
}

/// anonclient: fetch the page an anonserver serves and write it to a file.
///
/// The file appears only once the whole page has arrived (it is written
/// beside OUTFILE and renamed): a failed transfer leaves no partial file.
#[derive(Debug, Parser)]
#[command(name = "anonclient", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ANON_GIT_REV"), ")"), after_help = format!("Example:\n  anonclient -s 192.168.2.1 -p 30000 -l /tmp/client.log -f page.html\n\n{EXIT_CODES}"))]
pub struct ClientArgs {
    /// The server's IPv4 or IPv6 address (or host name).
    #[arg(short, long, value_name = "SERVER-IP")]
    pub server: String,
    /// The server's UDP port (1-65535).
    #[arg(short, long, value_parser = parse_port)]
    pub port: u16,
    /// Packet log file, appended to: one line per datagram sent or received.
    #[arg(short, long = "log", value_name = "LOGFILE")]
    pub log: PathBuf,
    /// Where to write the page.
    #[arg(short, long = "file", value_name = "OUTFILE")]
    pub file: PathBuf,
    /// Give up when the server has not answered the handshake after this long.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    pub connect_timeout: Duration,
    /// Give up when the server has been silent this long during the transfer.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    pub timeout: Duration,
    /// Print nothing on success, and no progress bar (which is only ever
    /// shown on a terminal).
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not offer fast mode: ask for the assignment's baseline exchange.
    #[arg(long)]
    pub no_fast: bool,
    /// Fast mode's ACKs: `batch` collapses the ACKs due within one receive
    /// batch into one; `every` sends each (every second segment), for
    /// measuring the difference.
    #[arg(long, value_enum, default_value_t = AckPolicy::Batch)]
    pub ack_policy: AckPolicy,
}

/// Logs diagnostics to stderr; `RUST_LOG` overrides the level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn fail(program: &str, code: Exit, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{program}: {msg}");
    code.into()
}

/// A single-threaded runtime with the stop signals registered in it.
fn runtime_with_signals() -> std::io::Result<(tokio::runtime::Runtime, driver::StopSignals)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let signals = {
        let _guard = rt.enter();
        driver::StopSignals::register()?
    };
    Ok((rt, signals))
}

/// `anonserver`'s main.
pub fn server_main(args: ServerArgs) -> ExitCode {
    const ME: &str = "anonserver";
    // The port comes first (PROTOCOL.md §5): nothing else happens when it is
    // unusable.
    let socket = match driver::udp::bind_server(args.bind, args.port) {
        Ok(s) => s,
        Err(e) => return fail(ME, Exit::Network, format_args!("cannot listen on UDP port {}: {e}", args.port)),
    };
    let log = match PacketLog::open(&args.log) {
        Ok(l) => l,
        Err(e) => return fail(ME, Exit::LocalFile, format_args!("cannot open log file {}: {e}", args.log.display())),
    };
    let limits = FetchLimits { max_bytes: args.max_page_size, timeout: args.download_timeout };
    let page = match Source::parse(&args.web).and_then(|source| fetch(&source, limits)) {
        Ok(p) => p,
        Err(e) => return fail(ME, Exit::Download, format_args!("cannot download {}: {e}", args.web)),
    };
    // Signals are handled before the server says it is ready, so a stop
    // request from then on always flushes the log.
    let (rt, mut signals) = match runtime_with_signals() {
        Ok(r) => r,
        Err(e) => return fail(ME, Exit::Network, format_args!("cannot start: {e}")),
    };
    let metrics = match args.metrics {
        Some(addr) => match rt.block_on(tokio::net::TcpListener::bind(addr)) {
            Ok(listener) => {
                let shared = driver::metrics::Shared::default();
                rt.spawn(driver::metrics::serve(listener, std::sync::Arc::clone(&shared)));
                tracing::info!("metrics on http://{addr}/metrics");
                Some(shared)
            }
            Err(e) => return fail(ME, Exit::Network, format_args!("cannot listen for metrics on TCP {addr}: {e}")),
        },
        None => None,
    };

    let config = ServerConfig {
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        max_per_source: args.max_per_source as usize,
        source_prefix_v4: args.source_prefix_v4,
        source_prefix_v6: args.source_prefix_v6,
        memory_budget: args.memory_budget << 20,
        max_half_open: args.max_half_open,
        fast: !args.no_fast,
        max_segment: args.max_segment,
        congestion: match args.congestion {
            Congestion::Bbr => Algorithm::Bbr,
            Congestion::Cubic => Algorithm::Cubic,
        },
        ..ServerConfig::default()
    };
    let page_len = page.len();
    // The page's SHA-256 is computed here, before the server says it is
    // ready (half a second for 1 GiB).
    let server = Server::new(config, Bytes::from(page), Box::new(StdRng::from_os_rng()));
    let local = socket.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!("serving {} ({page_len} bytes) on udp {local}", args.web);
    let result = rt.block_on(async {
        let socket = driver::udp::BatchSocket::new(socket)?;
        let options = driver::server::Options {
            grace: args.grace,
            stats_interval: (!args.stats_interval.is_zero()).then_some(args.stats_interval),
            busy_poll: Duration::from_micros(args.busy_poll),
            metrics,
        };
        driver::server::run(socket, server, log, &mut signals, options).await
    });
    match result {
        Ok(_) => Exit::Ok.into(),
        Err(e) => fail(ME, Exit::Network, format_args!("socket error: {e}")),
    }
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    // Brackets are allowed around IPv6 literals, as in URLs.
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"))
}

/// `anonclient`'s main.
pub fn client_main(args: ClientArgs) -> ExitCode {
    const ME: &str = "anonclient";
    // Signals first: from the moment a temporary file exists, SIGINT or
    // SIGTERM must remove it rather than kill the process.
    let (rt, mut signals) = match runtime_with_signals() {
        Ok(r) => r,
        Err(e) => return fail(ME, Exit::Network, format_args!("cannot start: {e}")),
    };
    let server = match resolve(&args.server, args.port) {
        Ok(a) => a,
        Err(e) => return fail(ME, Exit::Network, format_args!("cannot resolve {}: {e}", args.server)),
    };
    // Local files first: a transfer that could not be saved is not started.
    let log = match PacketLog::open(&args.log) {
        Ok(l) => l,
        Err(e) => return fail(ME, Exit::LocalFile, format_args!("cannot open log file {}: {e}", args.log.display())),
    };
    let output = match Output::create(&args.file) {
        Ok(o) => o,
        Err(e) => return fail(ME, Exit::LocalFile, e),
    };
    let socket = match driver::udp::connect_client(server) {
        Ok(s) => s,
        Err(e) => return fail(ME, Exit::Network, format_args!("cannot reach {server}: {e}")),
    };
    let defaults = ClientConfig::default();
    let fast = defaults.fast.map(|f| FastClient { coalesce_acks: args.ack_policy == AckPolicy::Batch, ..f });
    let config = ClientConfig {
        connect_timeout: args.connect_timeout,
        idle_timeout: args.timeout,
        fast: if args.no_fast { None } else { fast },
        ..defaults
    };
    let socket = {
        let _guard = rt.enter();
        match driver::udp::BatchSocket::new(socket) {
            Ok(s) => s,
            Err(e) => return fail(ME, Exit::Network, format_args!("cannot set up the socket: {e}")),
        }
    };
    let progress = !args.quiet;
    let result = rt.block_on(driver::client::run(server, socket, config, log, output, progress, signals.recv()));
    match result {
        Ok(summary) => {
            if !args.quiet {
                let secs = summary.elapsed.as_secs_f64();
                eprintln!(
                    "{ME}: wrote {} bytes ({}) to {} in {secs:.3} s ({})",
                    summary.bytes,
                    crate::units::size(summary.bytes),
                    args.file.display(),
                    crate::units::rate(summary.bytes, summary.elapsed)
                );
            }
            Exit::Ok.into()
        }
        Err(e @ FetchFailed::Connection(_)) => fail(ME, Exit::Transfer, format_args!("{server}: {e}")),
        Err(e @ FetchFailed::Output { .. }) => fail(ME, Exit::LocalFile, e),
        Err(e @ FetchFailed::Socket(_)) => fail(ME, Exit::Transfer, e),
        Err(e @ FetchFailed::Integrity(_)) => fail(ME, Exit::Transfer, e),
        Err(FetchFailed::Interrupted) => fail(ME, Exit::Interrupted, "interrupted; no file written"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        ServerArgs::command().debug_assert();
        ClientArgs::command().debug_assert();
    }

    #[test]
    fn assignment_command_lines_parse() {
        let s =
            ServerArgs::try_parse_from(["anonserver", "-p", "30000", "-l", "/tmp/logfile", "-w", "www.nytimes.com"])
                .unwrap();
        assert_eq!((s.port, s.web.as_str()), (30000, "www.nytimes.com"));
        let s = ServerArgs::try_parse_from(["anonserver", "-p", "30000", "-s", "/tmp/log", "-w", "x"]).unwrap();
        assert_eq!(s.log, PathBuf::from("/tmp/log"));
        let c = ClientArgs::try_parse_from([
            "anonclient",
            "-s",
            "192.168.2.1",
            "-p",
            "6543",
            "-l",
            "LOGFILE",
            "-f",
            "test.txt",
        ])
        .unwrap();
        assert_eq!((c.server.as_str(), c.port, c.file.to_str()), ("192.168.2.1", 6543, Some("test.txt")));
    }

    #[test]
    fn bad_ports_are_refused() {
        for bad in ["0", "65536", "-1", "http", "", "99999999999"] {
            assert!(ServerArgs::try_parse_from(["anonserver", "-p", bad, "-l", "l", "-w", "w"]).is_err(), "{bad}");
        }
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port("1"), Ok(1));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "nan", "inf", "x", "1e30", "604801", "1e-10"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolves_literals() {
        assert_eq!(resolve("::1", 5).unwrap(), "[::1]:5".parse().unwrap());
        assert_eq!(resolve("[::1]", 5).unwrap(), "[::1]:5".parse().unwrap());
        assert_eq!(resolve("127.0.0.1", 5).unwrap(), "127.0.0.1:5".parse().unwrap());
    }
}
