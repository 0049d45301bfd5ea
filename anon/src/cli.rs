//! Command lines of `anonserver` and `anonclient` (PROTOCOL.md §5), their
//! exit codes, and the glue from arguments to drivers.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anon_proto::cc::Algorithm;
use anon_proto::secure::{
    Bridge, PublicKey, SecureClient, SecureClientConfig, SecureServer, SecureServerConfig, StaticSecret, WallClock,
};
use anon_proto::{ClientConfig, ClientConn, ConnectionError, FastClient, Server, ServerConfig};
use bytes::Bytes;
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::driver;
use crate::driver::client::{FetchFailed, Output, Partial};
use crate::fetch::{FetchLimits, Source, fetch};
use crate::packet_log::PacketLog;
use crate::proxy::origin::OriginFetcher;
use crate::proxy::policy::{FetchPolicy, UrlPattern};
use crate::proxy::service::{Proxy, ProxyLimits};

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
    /// The page could not be downloaded: by anonserver at start, or, for
    /// `anonclient --url`, by the proxy server from the origin. Nothing is
    /// written.
    Download = 4,
    /// A local file could not be used: log or output not writable, key
    /// file or allow list unreadable or malformed, a key file in the way.
    LocalFile = 5,
    /// Secure mode: the server completed the handshake and refused the
    /// request (no page of that name, a URL it does not fetch, busy).
    /// Nothing is written.
    Refused = 6,
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
  4    the page could not be downloaded: by anonserver at start, or for
       anonclient --url by the server (the origin was unreachable or timed out,
       answered an HTTP error, or the page is too large)
  5    a local file could not be used (log or output not writable, key file or
       allow list unreadable or malformed, keygen: the key file exists)
  6    secure mode: the server refused the request (no page of that name, a URL
       the server does not fetch, the server busy)
  130  interrupted by SIGINT or SIGTERM before the page was complete (anonclient)";

const SERVER_EXAMPLES: &str = "\
Example:
  anonserver -p 30000 -l /tmp/server.log -w www.example.com

Secure mode:
  anonserver keygen /etc/anon/server.key
  anonserver -p 30000 -l /tmp/server.log --key /etc/anon/server.key \\
      --bridge-host vpn.example.org -w news=https://example.org/ -w about=https://example.org/about
  `anonserver keygen FILE` writes a new private key to FILE (mode 0600; it
  replaces an existing file only with --force) and prints its public key; a
  client key for --allow-clients is made the same way.
  The server prints its bridge line, anon://KEY@HOST:PORT, on standard output
  (and in its log); hand it to the clients (anonclient --bridge). It is all a
  client needs; without it, the port looks like one that drops everything:
  the server answers nothing that does not prove knowledge of its public key.";

const CLIENT_EXAMPLES: &str = "\
Example:
  anonclient -s 192.168.2.1 -p 30000 -l /tmp/client.log -f page.html

Secure mode:
  anonclient --bridge anon://KEY@vpn.example.org:30000 -l /tmp/client.log -f page.html --page news
  With ANON_KEYLOG=FILE in the environment, the client appends the
  connection's keys to FILE (created with mode 0600) once the handshake is
  done, for the Wireshark dissector; anyone with that file can read the
  transfer.";

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
///
/// With --key, secure mode: pages travel encrypted and authenticated, every
/// datagram looks like random bytes to anyone without the server's public
/// key, and the server answers nothing that does not prove it holds that
/// key. `anonserver keygen FILE` makes a key.
#[derive(Debug, Parser)]
#[command(
    name = "anonserver",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ANON_GIT_REV"), ")"),
    after_help = format!("{SERVER_EXAMPLES}\n\n{EXIT_CODES}"),
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct ServerArgs {
    /// `keygen`: make a key instead of serving.
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// UDP port to listen on (1-65535).
    #[arg(short, long, value_parser = parse_port, required = true)]
    pub port: Option<u16>,
    /// Packet log file, appended to: one line per datagram sent or received.
    /// `-s` is accepted as well, as in the assignment. In secure mode a line
    /// shows the header of the datagram sealed inside (page sequence
    /// numbers, as in plaintext fast mode); datagrams that do not
    /// authenticate get no line, only a count.
    #[arg(short, long = "log", short_alias = 's', value_name = "LOGFILE", required = true)]
    pub log: Option<PathBuf>,
    /// A page to serve: an http or https URL (redirects are followed), a bare
    /// host meaning http://, a file:// URL, or a local file. In secure mode
    /// it may be given several times, each page with a name
    /// (NAME=URL; NAME is up to 64 of A-Z a-z 0-9 . _ -); a page without one
    /// is named after the last segment of its path, or its host when the
    /// path is empty (<https://example.org/a/b.html> is b.html). The first page
    /// is the default, and the one plaintext clients get. Every page is
    /// downloaded at start.
    #[arg(
        short,
        long = "web",
        value_name = "[NAME=]URL",
        value_parser = parse_page,
        required_unless_present = "fetch_allow"
    )]
    pub web: Vec<PageArg>,
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
    /// Secure mode, with the private key in FILE (created, mode 0600, with a
    /// new key when there is no such file). Plaintext clients then get
    /// silence, unless --plaintext. Secure segments are at most 1160 bytes
    /// (--max-segment caps them further); --no-fast applies to plaintext
    /// clients only.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Secure mode: serve only the clients whose public key is in FILE (one
    /// base64url key per line, # comments); any other client gets silence.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub allow_clients: Option<PathBuf>,
    /// Secure mode: serve the plaintext modes on the same port as well (the
    /// first page), for clients without the bridge line. A prober can then
    /// tell that something serves here.
    #[arg(long, requires = "key")]
    pub plaintext: bool,
    /// Secure mode: first messages read a second (reading and answering
    /// one costs about 330 µs, mostly Diffie-Hellman work) before the
    /// server is under load; then it sends as many cookie
    /// replies a second (each as long as an answer) and reads only first
    /// messages that carry the cookie of their source address, as many a
    /// second in all and at most --handshake-rate-per-source from one
    /// source (docs/PROTOCOL.md §8.3, rule 1).
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "key",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub handshake_rate: u32,
    /// Secure mode, under load: first messages with a valid cookie read a
    /// second from one source (as --max-per-source counts sources).
    #[arg(long, value_name = "N", default_value_t = 20, requires = "key",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub handshake_rate_per_source: u32,
    /// Secure mode: the host name or address that clients reach the server
    /// by, for the bridge line. Needed when listening on every address (the
    /// default, or --bind 0.0.0.0 or ::) or behind NAT; otherwise the
    /// bridge line names the --bind address.
    #[arg(long, value_name = "NAME", value_parser = parse_bridge_host, requires = "key")]
    pub bridge_host: Option<String>,
    /// Secure mode, the proxy: a client may ask for any URL this pattern
    /// matches (anonclient --url), which the server then fetches, caches
    /// and serves. PATTERN is `SCHEME://HOST[:PORT]/PATH`: the scheme http,
    /// https or *; the host exact, * or *.example.org (the domain and its
    /// subdomains); the port * or a number (default: the scheme's); * in
    /// the path matches anything. Repeatable. Every redirect must match a
    /// pattern too. Without it, clients get only the -w pages: the server
    /// is never an open proxy by default.
    #[arg(long, value_name = "PATTERN", value_parser = parse_fetch_pattern, requires = "key")]
    pub fetch_allow: Vec<UrlPattern>,
    /// The proxy may fetch from loopback, private, link-local and this
    /// host's own addresses (refused otherwise, on the address of every
    /// connection, redirects included): for tests and private deployments.
    #[arg(long, requires = "fetch_allow")]
    pub fetch_private: bool,
    /// The proxy's page cache, in MiB: pages whose Cache-Control allows it
    /// are kept and shared by every client, and revalidated with the origin
    /// (ETag, Last-Modified) once stale.
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    pub cache_size: u64,
    /// The proxy refuses a page larger than this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1 << 12))]
    pub fetch_max_size: u64,
    /// The proxy's memory for pages, in MiB: the pages fetched that are
    /// still in memory (cached, or served to a client) plus the largest
    /// page each fetch under way may bring (--fetch-max-size). A fetch that
    /// would pass it is refused (the client is told the server is busy);
    /// cached pages are still served.
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub fetch_memory: u64,
    /// The proxy fetches at most this many pages from origins at once;
    /// more requests wait their turn.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub fetch_concurrency: u16,
    /// The proxy's deadline for fetching one page, redirects included.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    pub fetch_timeout: Duration,
}

fn parse_fetch_pattern(s: &str) -> Result<UrlPattern, String> {
    s.parse()
}

/// What `anonserver` can do besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum ServerCommand {
    /// Write a new private key (mode 0600) and print its public key.
    ///
    /// The key file is what `anonserver --key` reads; its public key is in
    /// the bridge line the server prints. A client key for an allow list
    /// (--allow-clients, anonclient --key) is made the same way.
    Keygen(KeygenArgs),
}

/// `anonserver keygen`'s arguments.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key.
    #[arg(value_name = "FILE", required_unless_present = "key", conflicts_with = "key")]
    pub file: Option<PathBuf>,
    /// Where to write the private key (the same as FILE).
    #[arg(long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Replace an existing file (otherwise keygen refuses).
    #[arg(long)]
    pub force: bool,
}

/// A page to serve: its name, and where to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageArg {
    /// The name secure clients ask for it by (`anonclient --page`).
    pub name: String,
    /// The URL, host or file it is downloaded from.
    pub url: String,
}

/// Longest page name.
const MAX_PAGE_NAME: usize = 64;

fn is_page_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PAGE_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_page_name(s: &str) -> Result<String, String> {
    if is_page_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!("a page name is 1 to {MAX_PAGE_NAME} of A-Z a-z 0-9 . _ -"))
    }
}

/// `-w [NAME=]URL`. A whole argument that names an existing local file is
/// a file, whatever `=` it holds (as `-w` always read it); otherwise
/// `NAME=` counts only when NAME is a page name, so that `=` in a URL's
/// query is left alone.
fn parse_page(s: &str) -> Result<PageArg, String> {
    if !Path::new(s).is_file() {
        if let Some((name, url)) = s.split_once('=') {
            if is_page_name(name) {
                if url.is_empty() {
                    return Err(format!("no URL after {name}="));
                }
                return Ok(PageArg { name: name.to_owned(), url: url.to_owned() });
            }
        }
    }
    Ok(PageArg { name: default_page_name(s), url: s.to_owned() })
}

/// The name of a page given without one: the last non-empty segment of its
/// path, or its host when the path has none, "index" when both are empty;
/// characters outside A-Z a-z 0-9 . _ - become `_`.
fn default_page_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let mut segments = rest.split('/');
    let host = segments.next().unwrap_or_default();
    let last = segments.rfind(|p| !p.is_empty()).unwrap_or(host);
    let name: String = last
        .chars()
        .take(MAX_PAGE_NAME)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    if name.is_empty() { "index".to_owned() } else { name }
}

fn parse_bridge_host(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_whitespace() || matches!(c, '@' | '/' | '?' | '#')) {
        return Err("a host name or an IP address".into());
    }
    Ok(s.to_owned())
}

fn parse_bridge(s: &str) -> Result<Bridge, String> {
    Bridge::parse(s).map_err(|e| e.to_string())
}

fn parse_public_key(s: &str) -> Result<PublicKey, String> {
    PublicKey::from_base64(s).map_err(|e| e.to_string())
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
///
/// With --bridge (or --server-key), secure mode: the page travels encrypted
/// and authenticated, and the client never falls back to a plaintext mode.
#[derive(Debug, Parser)]
#[command(
    name = "anonclient",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ANON_GIT_REV"), ")"),
    after_help = format!("{CLIENT_EXAMPLES}\n\n{EXIT_CODES}"),
    group(clap::ArgGroup::new("secure").args(["bridge", "server_key"]))
)]
pub struct ClientArgs {
    /// The server's IPv4 or IPv6 address (or host name); required unless
    /// --bridge names the server.
    #[arg(short, long, value_name = "SERVER-IP", required_unless_present = "bridge", conflicts_with = "bridge")]
    pub server: Option<String>,
    /// The server's UDP port (1-65535); required unless --bridge names the
    /// server.
    #[arg(short, long, value_parser = parse_port, required_unless_present = "bridge", conflicts_with = "bridge")]
    pub port: Option<u16>,
    /// Packet log file, appended to: one line per datagram sent or received
    /// (optional with --serve: every fetch's datagrams).
    #[arg(short, long = "log", value_name = "LOGFILE", required_unless_present = "serve")]
    pub log: Option<PathBuf>,
    /// Where to write the page.
    #[arg(short, long = "file", value_name = "OUTFILE", required_unless_present = "serve")]
    pub file: Option<PathBuf>,
    /// Give up when the server has not answered the handshake after this
    /// long (default 10; with --url 60, since a proxy server answers once it
    /// has fetched the page).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub connect_timeout: Option<Duration>,
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
    /// Secure mode, with the server's bridge line (anon://KEY@HOST:PORT, as
    /// the server prints it): it names the server, so -s and -p are not
    /// given.
    #[arg(long, value_name = "LINE", value_parser = parse_bridge, conflicts_with = "no_fast")]
    pub bridge: Option<Bridge>,
    /// Secure mode, with the server's public key (base64url), and the server
    /// named by -s and -p.
    // A base64url key starts with '-' one time in 64: still the value.
    #[arg(long, value_name = "KEY", value_parser = parse_public_key, conflicts_with = "no_fast", allow_hyphen_values = true)]
    pub server_key: Option<PublicKey>,
    /// Secure mode: this client's private key (a file `anonserver keygen`
    /// writes), for a server that serves only the clients it lists
    /// (--allow-clients). Without it, each run makes a fresh key.
    #[arg(long, value_name = "FILE", requires = "secure")]
    pub key: Option<PathBuf>,
    /// Secure mode: the name of the page to fetch (the server's -w NAME=);
    /// without it, the server's first page.
    #[arg(long, value_name = "NAME", value_parser = parse_page_name, requires = "secure")]
    pub page: Option<String>,
    /// Secure mode: a URL for the server to fetch and serve (a proxy
    /// server, started with --fetch-allow). The request travels encrypted;
    /// the server's operator sees it, a censor does not.
    #[arg(long, value_name = "URL", value_parser = parse_url_arg, requires = "secure", conflicts_with = "page")]
    pub url: Option<String>,
    /// With --url: once the page is written, write what the origin said of
    /// it to FILE, as `curl -D` does: the status line, Content-Type,
    /// Content-Length, and the URL after redirects as Content-Location.
    #[arg(long, value_name = "FILE", requires = "url")]
    pub headers: Option<PathBuf>,
    /// Secure mode: resume an interrupted transfer, as `curl -C -` and
    /// `wget -c` do. A transfer that stops unfinished keeps what it has in
    /// `.OUTFILE.anon-partial` beside OUTFILE (with what identifies the
    /// page); the next run with --continue asks for the rest if the page is
    /// unchanged and starts over otherwise. OUTFILE still appears only once
    /// the page is complete and verified.
    #[arg(long = "continue", requires = "secure")]
    pub resume: bool,
    /// Secure mode: instead of fetching one page, serve a web front end on
    /// ADDR:PORT (default 127.0.0.1:8080) and fetch through the tunnel
    /// every page a browser opens there: http://127.0.0.1:8080/ has an
    /// address field, links and images of the pages shown come back
    /// through the tunnel too, and a browser set to use it as its HTTP
    /// proxy gets http:// pages unchanged (not https: no CONNECT). Anyone
    /// who can reach ADDR:PORT uses the tunnel: keep it on loopback.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:8080",
        requires = "secure",
        conflicts_with_all = ["file", "url", "page", "headers", "resume"]
    )]
    pub serve: Option<SocketAddr>,
}

fn parse_url_arg(s: &str) -> Result<String, String> {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err("an absolute http:// or https:// URL".into());
    }
    let max = anon_proto::secure::proxy::MAX_REQUEST_URL_LEN;
    if s.len() > max {
        return Err(format!("at most {max} bytes (a longer URL does not fit the first datagram)"));
    }
    Ok(s.to_owned())
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

/// The wall clock now, for secure mode's handshake timestamps: read once,
/// then carried forward by the monotonic clock.
fn wall_clock() -> WallClock {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    WallClock { at: std::time::Instant::now(), unix_ms }
}

/// `anonserver keygen`.
fn keygen_main(args: &KeygenArgs) -> ExitCode {
    const ME: &str = "anonserver keygen";
    let Some(path) = args.file.as_ref().or(args.key.as_ref()) else {
        return fail(ME, Exit::Usage, "no key file given");
    };
    match crate::keys::write_new_key(path, args.force) {
        Ok(key) => {
            eprintln!("{ME}: wrote a new private key to {} (mode 0600); its public key:", path.display());
            // Standard output carries the public key alone, for scripts; a
            // closed stdout is no reason to panic.
            let _ = writeln!(std::io::stdout(), "{}", key.public());
            Exit::Ok.into()
        }
        Err(e) => fail(ME, Exit::LocalFile, e),
    }
}

/// Secure mode's settings of a server, read from its files.
struct SecureSetup {
    key: StaticSecret,
    allow: Option<std::collections::HashSet<PublicKey>>,
}

fn secure_setup(args: &ServerArgs, key_path: &Path) -> Result<SecureSetup, crate::keys::KeyFileError> {
    let (key, created) = crate::keys::read_or_create_key(key_path)?;
    if created {
        tracing::info!("made a new key in {} (mode 0600)", key_path.display());
    }
    let allow = match &args.allow_clients {
        Some(path) => {
            let keys = crate::keys::read_allow_list(path)?;
            if keys.is_empty() {
                tracing::warn!("the allow list {} lists no client: every client gets silence", path.display());
            }
            Some(keys)
        }
        None => None,
    };
    Ok(SecureSetup { key, allow })
}

/// The bridge line's HOST: --bridge-host, or the address the socket is bound
/// to. Bound to every address, the server does not know which one clients
/// reach: the line says HOST, for the operator to replace.
fn bridge_host(args: &ServerArgs, local: Option<SocketAddr>) -> String {
    let literal = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    if let Some(host) = &args.bridge_host {
        return match host.parse::<IpAddr>() {
            Ok(ip) => literal(ip),
            Err(_) => host.clone(),
        };
    }
    match local.map(|a| a.ip()) {
        Some(ip) if !ip.is_unspecified() => literal(ip),
        _ => {
            tracing::warn!(
                "listening on every address: the bridge line says HOST; give --bridge-host with the name or address \
                 clients reach this server by"
            );
            "HOST".to_owned()
        }
    }
}

/// `anonserver`'s main.
pub fn server_main(args: ServerArgs) -> ExitCode {
    const ME: &str = "anonserver";
    if let Some(ServerCommand::Keygen(keygen)) = &args.command {
        return keygen_main(keygen);
    }
    // clap requires these unless a subcommand is given.
    let (Some(port), Some(log_path)) = (args.port, args.log.clone()) else {
        return fail(ME, Exit::Usage, "--port and --log are required");
    };
    if args.web.is_empty() && args.fetch_allow.is_empty() {
        return fail(ME, Exit::Usage, "--web is required (or --fetch-allow, with --key)");
    }
    if args.web.is_empty() && args.plaintext {
        return fail(ME, Exit::Usage, "--plaintext needs a page (-w) for the plaintext clients");
    }
    if args.web.len() > 1 && args.key.is_none() {
        return fail(
            ME,
            Exit::Usage,
            "several pages (-w) need secure mode (--key): plaintext clients cannot ask for one",
        );
    }
    for (i, page) in args.web.iter().enumerate() {
        if let Some(first) = args.web.iter().take(i).find(|p| p.name == page.name) {
            return fail(
                ME,
                Exit::Usage,
                format_args!(
                    "two pages are named {:?} ({} and {}): give each its own name (-w NAME=URL)",
                    page.name, first.url, page.url
                ),
            );
        }
    }
    // The port comes first (PROTOCOL.md §5): nothing else happens when it is
    // unusable.
    let socket = match driver::udp::bind_server(args.bind, port) {
        Ok(s) => s,
        Err(e) => return fail(ME, Exit::Network, format_args!("cannot listen on UDP port {port}: {e}")),
    };
    let secure = match &args.key {
        Some(path) => match secure_setup(&args, path) {
            Ok(s) => Some(s),
            Err(e) => return fail(ME, Exit::LocalFile, format_args!("cannot set up secure mode: {e}")),
        },
        None => None,
    };
    let log = match PacketLog::open(&log_path) {
        Ok(l) => l,
        Err(e) => return fail(ME, Exit::LocalFile, format_args!("cannot open log file {}: {e}", log_path.display())),
    };
    let limits = FetchLimits { max_bytes: args.max_page_size, timeout: args.download_timeout };
    let mut pages = Vec::with_capacity(args.web.len());
    for page in &args.web {
        match Source::parse(&page.url).and_then(|source| fetch(&source, limits)) {
            Ok(p) => pages.push(Bytes::from(p)),
            Err(e) => return fail(ME, Exit::Download, format_args!("cannot download {}: {e}", page.url)),
        }
    }
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
    let local_addr = socket.local_addr().ok();
    let local = local_addr.map(|a| a.to_string()).unwrap_or_default();
    let options = driver::server::Options {
        grace: args.grace,
        stats_interval: (!args.stats_interval.is_zero()).then_some(args.stats_interval),
        busy_poll: Duration::from_micros(args.busy_poll),
        metrics,
    };
    // The pages' SHA-256 are computed here, before the server says it is
    // ready (half a second for 1 GiB).
    let result = match secure {
        None => {
            let page = pages.into_iter().next().unwrap_or_default();
            let page_len = page.len();
            let server = Server::new(config, page, Box::new(StdRng::from_os_rng()));
            let web = args.web.first().map(|p| p.url.as_str()).unwrap_or_default();
            tracing::info!("serving {web} ({page_len} bytes) on udp {local}");
            rt.block_on(async {
                let socket = driver::udp::BatchSocket::new(socket)?;
                driver::server::run(socket, server, log, &mut signals, options, None).await
            })
        }
        Some(setup) => {
            let bridge =
                Bridge { key: setup.key.public(), address: format!("{}:{port}", bridge_host(&args, local_addr)) };
            let names: Vec<String> = args.web.iter().map(|p| p.name.clone()).collect();
            let listing: Vec<String> =
                args.web.iter().zip(&pages).map(|(p, b)| format!("{}={} ({} bytes)", p.name, p.url, b.len())).collect();
            let mut secure = SecureServerConfig::new(setup.key, names, wall_clock());
            secure.allow_clients = setup.allow;
            secure.handshake_reads = args.handshake_rate;
            secure.handshake_reads_per_source = args.handshake_rate_per_source;
            let proxy = (!args.fetch_allow.is_empty()).then(|| {
                let policy = FetchPolicy { patterns: args.fetch_allow.clone(), allow_private: args.fetch_private };
                let limits = FetchLimits { max_bytes: args.fetch_max_size << 20, timeout: args.fetch_timeout };
                let policy = std::sync::Arc::new(policy);
                let fetcher = OriginFetcher::new(std::sync::Arc::clone(&policy), limits);
                let limits = ProxyLimits {
                    cache_bytes: args.cache_size << 20,
                    memory_bytes: args.fetch_memory << 20,
                    max_page: args.fetch_max_size << 20,
                    concurrency: usize::from(args.fetch_concurrency),
                    per_source: 16,
                    // The fetch's own deadline is the operator's; the
                    // margin lets it be the one that ends a slow fetch.
                    stream_deadline: args.fetch_timeout + Duration::from_secs(5),
                };
                Proxy::new(policy, fetcher, limits)
            });
            if proxy.is_some() {
                secure.fetch = true;
                // The core's own deadline, past the fetcher's: it frees a
                // request whatever happens to the fetch.
                secure.fetch_timeout = args.fetch_timeout + Duration::from_secs(15);
                let private = if args.fetch_private { "; private addresses allowed" } else { "" };
                let patterns: Vec<String> = args.fetch_allow.iter().map(ToString::to_string).collect();
                tracing::info!(
                    "proxy: fetching on demand what matches {}{private}; cache {} MiB",
                    patterns.join(", "),
                    args.cache_size
                );
            }
            let plain = args.plaintext.then(|| config.clone());
            let server = SecureServer::new(secure, config, pages, plain, Box::new(StdRng::from_os_rng()));
            // The one line a client needs: alone on standard output, for
            // scripts, and in the log.
            let _ = writeln!(std::io::stdout(), "{bridge}");
            tracing::info!("bridge line: {bridge}");
            let plaintext = if args.plaintext { "plaintext modes too" } else { "plaintext clients get silence" };
            let listing = if listing.is_empty() { "no page of its own".to_owned() } else { listing.join(", ") };
            tracing::info!("serving {listing} on udp {local} in secure mode ({plaintext})");
            rt.block_on(async {
                let socket = driver::udp::BatchSocket::new(socket)?;
                driver::server::run(socket, server, log, &mut signals, options, proxy).await
            })
        }
    };
    // A fetch still on the blocking pool must not hold the exit up (the
    // runtime's drop would wait for it, up to --fetch-timeout).
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(_) => Exit::Ok.into(),
        Err(e) => fail(ME, Exit::Network, format_args!("socket error: {e}")),
    }
}

/// `--headers`: what the origin said of the page, in the shape of `curl -D`
/// (an HTTP/1.1 header block), through a temporary file renamed into place.
fn write_headers(path: &Path, meta: Option<&anon_proto::secure::PageMeta>, len: u64) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut text = String::new();
    let status = meta.map_or(200, |m| m.status);
    let reason = ureq::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let _ = write!(text, "HTTP/1.1 {status} {reason}\r\n");
    if let Some(m) = meta {
        // What the origin sent travels encrypted but is still the origin's:
        // no line breaks of its own reach the file.
        let clean = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
        if !m.content_type.is_empty() {
            let _ = write!(text, "Content-Type: {}\r\n", clean(&m.content_type));
        }
        let _ = write!(text, "Content-Length: {len}\r\n");
        if !m.final_url.is_empty() {
            let _ = write!(text, "Content-Location: {}\r\n", clean(&m.final_url));
        }
    } else {
        let _ = write!(text, "Content-Length: {len}\r\n");
    }
    text.push_str("\r\n");
    crate::files::write_atomically(path, ".tmp", text.as_bytes())
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

/// Where a client connects, and how.
struct Target {
    /// The host as given (for messages) and its port.
    host: String,
    port: u16,
    /// Secure mode: the server's public key.
    server_key: Option<PublicKey>,
}

fn target(args: &ClientArgs) -> Result<Target, String> {
    if let Some(bridge) = &args.bridge {
        // Bridge::parse checked the HOST:PORT shape.
        let (host, port) = bridge.address.rsplit_once(':').ok_or("not a bridge line: expected anon://KEY@HOST:PORT")?;
        let port = parse_port(port)?;
        return Ok(Target { host: host.to_owned(), port, server_key: Some(bridge.key) });
    }
    match (&args.server, args.port) {
        (Some(host), Some(port)) => Ok(Target { host: host.clone(), port, server_key: args.server_key }),
        // clap requires both without --bridge.
        _ => Err("--server and --port are required without --bridge".into()),
    }
}

/// A secure connection's constructor, for [`driver::client::run`]: a page
/// by name, or a URL (`--url`, and each of the front end's fetches).
pub(crate) fn secure_connect(
    server_key: PublicKey,
    client_key: Option<StaticSecret>,
    page: String,
    url: Option<String>,
    resume: Option<(u64, [u8; 32])>,
    config: ClientConfig,
) -> impl FnOnce(std::time::Instant) -> SecureClient {
    let clock = wall_clock();
    move |now| {
        let secure = SecureClientConfig { server: server_key, key: client_key, page, url, resume, clock };
        SecureClient::new(secure, config, Box::new(StdRng::from_os_rng()), now)
    }
}

/// `--key`: the client's own key, read before anything is written.
fn client_key(args: &ClientArgs) -> Result<Option<StaticSecret>, ExitCode> {
    const ME: &str = "anonclient";
    let Some(path) = &args.key else { return Ok(None) };
    crate::keys::read_key(path).map(Some).map_err(|e| {
        let hint = match &e {
            crate::keys::KeyFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                " (`anonserver keygen FILE` makes one)"
            }
            _ => "",
        };
        fail(ME, Exit::LocalFile, format_args!("cannot use the key file: {e}{hint}"))
    })
}

/// The connection's settings from the command line. A page asked for by
/// URL waits for the server's fetch before the handshake completes.
fn client_config(args: &ClientArgs, by_url: bool) -> ClientConfig {
    let defaults = ClientConfig::default();
    let fast = defaults.fast.map(|f| FastClient { coalesce_acks: args.ack_policy == AckPolicy::Batch, ..f });
    ClientConfig {
        connect_timeout: args.connect_timeout.unwrap_or(Duration::from_secs(if by_url { 60 } else { 10 })),
        idle_timeout: args.timeout,
        fast: if args.no_fast { None } else { fast },
        ..defaults
    }
}

/// What every client run starts with, in this order: signals first (from
/// the moment a temporary file exists, SIGINT or SIGTERM must remove it
/// rather than kill the process), the server's address, then the client's
/// own key, when it has one, before anything is written.
fn client_start(
    args: &ClientArgs,
    target: &Target,
) -> Result<(tokio::runtime::Runtime, driver::StopSignals, SocketAddr, Option<StaticSecret>), ExitCode> {
    const ME: &str = "anonclient";
    let (rt, signals) =
        runtime_with_signals().map_err(|e| fail(ME, Exit::Network, format_args!("cannot start: {e}")))?;
    let server = resolve(&target.host, target.port)
        .map_err(|e| fail(ME, Exit::Network, format_args!("cannot resolve {}: {e}", target.host)))?;
    Ok((rt, signals, server, client_key(args)?))
}

/// `anonclient --serve`: the front end, until SIGINT or SIGTERM.
fn serve_main(args: &ClientArgs, listen: SocketAddr, target: &Target) -> ExitCode {
    const ME: &str = "anonclient";
    let Some(server_key) = target.server_key else {
        return fail(ME, Exit::Usage, "--serve needs secure mode (--bridge or --server-key)");
    };
    let (rt, mut signals, server, client_key) = match client_start(args, target) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let log = match &args.log {
        Some(path) => match std::fs::OpenOptions::new().append(true).create(true).open(path) {
            Ok(f) => Some(std::sync::Arc::new(std::sync::Mutex::new(f))),
            Err(e) => return fail(ME, Exit::LocalFile, format_args!("cannot open log file {}: {e}", path.display())),
        },
        None => None,
    };
    let tunnel = crate::frontend::Tunnel {
        server,
        server_key,
        client_key,
        config: client_config(args, true),
        log,
        key_log: std::env::var_os("ANON_KEYLOG").filter(|v| !v.is_empty()).map(PathBuf::from),
    };
    let front = match crate::frontend::FrontEnd::start(listen, tunnel) {
        Ok(f) => f,
        Err(e) => return fail(ME, Exit::Network, format_args!("cannot listen on TCP {listen}: {e}")),
    };
    let shown = match front.addr {
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V4(a) => a.to_string(),
    };
    if front.addr.ip().is_loopback() {
        eprintln!("{ME}: front end on http://{shown}/ (open it in a browser; it listens on loopback only)");
    } else {
        eprintln!(
            "{ME}: front end on http://{shown}/ (open it in a browser). Warning: it listens beyond loopback, and \
             anyone who can reach {shown} can use your tunnel"
        );
    }
    rt.block_on(signals.recv());
    drop(front);
    Exit::Ok.into()
}

/// `anonclient`'s main.
pub fn client_main(args: ClientArgs) -> ExitCode {
    const ME: &str = "anonclient";
    let target = match target(&args) {
        Ok(t) => t,
        Err(e) => return fail(ME, Exit::Usage, e),
    };
    if let Some(listen) = args.serve {
        return serve_main(&args, listen, &target);
    }
    // clap requires both without --serve.
    let (Some(log_path), Some(file)) = (args.log.clone(), args.file.clone()) else {
        return fail(ME, Exit::Usage, "--log and --file are required (or --serve)");
    };
    let (rt, mut signals, server, client_key) = match client_start(&args, &target) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Local files first: a transfer that could not be saved is not started.
    let log = match PacketLog::open(&log_path) {
        Ok(l) => l,
        Err(e) => return fail(ME, Exit::LocalFile, format_args!("cannot open log file {}: {e}", log_path.display())),
    };
    // --continue: the partial files of this very request (server and page).
    let partial = match (&target.server_key, args.resume) {
        (Some(key), true) => {
            let what = match (&args.url, &args.page) {
                (Some(url), _) => format!("url {url}"),
                (None, Some(p)) => format!("page {p}"),
                (None, None) => "page".to_owned(),
            };
            Some(Partial::new(&file, &format!("{key} {}:{} {what}", target.host, target.port)))
        }
        _ => None,
    };
    let resume = partial.as_ref().and_then(Partial::load);
    if let Some(r) = &resume {
        match r.whole {
            Some(w) => tracing::info!("resuming: {} of {} bytes already here", r.have, w.len),
            None => tracing::info!("resuming: {} bytes already here", r.have),
        }
    }
    let resume = resume.map(|r| (r.have, r.prefix_sha256));
    let output = match Output::create_resumable(&file, partial) {
        Ok(o) => o,
        Err(e) => return fail(ME, Exit::LocalFile, e),
    };
    let socket = match driver::udp::connect_client(server) {
        Ok(s) => s,
        Err(e) => return fail(ME, Exit::Network, format_args!("cannot reach {server}: {e}")),
    };
    let config = client_config(&args, args.url.is_some());
    let socket = {
        let _guard = rt.enter();
        match driver::udp::BatchSocket::new(socket) {
            Ok(s) => s,
            Err(e) => return fail(ME, Exit::Network, format_args!("cannot set up the socket: {e}")),
        }
    };
    let options = driver::client::Options {
        progress: !args.quiet,
        // Only a secure connection has keys to log.
        key_log: std::env::var_os("ANON_KEYLOG").filter(|v| !v.is_empty()).map(PathBuf::from),
    };
    let interrupt = signals.recv();
    let result = match target.server_key {
        None => {
            let connect = |now| ClientConn::new(config, rand::random(), now);
            rt.block_on(driver::client::run(server, socket, connect, log, output, options, interrupt))
        }
        Some(server_key) => {
            let page = args.page.clone().unwrap_or_default();
            let url = args.url.clone();
            if let Some(key) = &client_key {
                tracing::debug!("client key {}", key.public());
            }
            let connect = secure_connect(server_key, client_key, page, url, resume, config);
            rt.block_on(driver::client::run(server, socket, connect, log, output, options, interrupt))
        }
    };
    match result {
        Ok(summary) => {
            if let Some(path) = &args.headers {
                if let Err(e) = write_headers(path, summary.meta.as_ref(), summary.bytes) {
                    return fail(ME, Exit::LocalFile, format_args!("cannot write {}: {e}", path.display()));
                }
            }
            if !args.quiet {
                let secs = summary.elapsed.as_secs_f64();
                let first = summary
                    .first_byte
                    .map_or(String::new(), |f| format!(", first byte after {:.3} s", f.as_secs_f64()));
                eprintln!(
                    "{ME}: wrote {} bytes ({}) to {} in {secs:.3} s ({}{first})",
                    summary.bytes,
                    crate::units::size(summary.bytes),
                    file.display(),
                    crate::units::rate(summary.bytes, summary.elapsed)
                );
            }
            Exit::Ok.into()
        }
        Err(FetchFailed::Connection(ConnectionError::Rejected(why))) => {
            let page = match (&args.url, &args.page) {
                (Some(url), _) => url.clone(),
                (None, Some(p)) => format!("page {p:?}"),
                (None, None) => "the default page".to_owned(),
            };
            if why.is_origin_failure() {
                fail(
                    ME,
                    Exit::Download,
                    format_args!("{server}: the server could not fetch {page}: {why}; nothing written"),
                )
            } else {
                fail(
                    ME,
                    Exit::Refused,
                    format_args!("{server}: the server refused the request for {page}: {why}; nothing written"),
                )
            }
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
        assert_eq!((s.port, s.web[0].url.as_str()), (Some(30000), "www.nytimes.com"));
        assert!(s.command.is_none() && s.key.is_none());
        let s = ServerArgs::try_parse_from(["anonserver", "-p", "30000", "-s", "/tmp/log", "-w", "x"]).unwrap();
        assert_eq!(s.log, Some(PathBuf::from("/tmp/log")));
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
        assert_eq!(
            (c.server.as_deref(), c.port, c.file.as_deref().and_then(Path::to_str)),
            (Some("192.168.2.1"), Some(6543), Some("test.txt"))
        );
        assert!(c.bridge.is_none() && c.server_key.is_none());
    }

    const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";

    /// base64url uses '-': a key that starts with it is the flag's value,
    /// not a flag (an end-to-end test met one by chance).
    #[test]
    fn a_server_key_may_start_with_a_hyphen() {
        let key = format!("-{}", &KEY[1..]);
        let c = ClientArgs::try_parse_from([
            "anonclient",
            "-s",
            "h",
            "-p",
            "1",
            "-l",
            "L",
            "-f",
            "F",
            "--server-key",
            &key,
        ])
        .unwrap();
        assert!(c.server_key.is_some());
    }

    #[test]
    fn secure_server_command_lines() {
        let s = ServerArgs::try_parse_from([
            "anonserver",
            "-p",
            "1",
            "-l",
            "l",
            "--key",
            "k",
            "-w",
            "a=http://x/?q=1",
            "-w",
            "https://x/y/b.html?z=2",
            "--allow-clients",
            "list",
            "--plaintext",
            "--bridge-host",
            "example.org",
        ])
        .unwrap();
        let pages: Vec<(&str, &str)> = s.web.iter().map(|p| (p.name.as_str(), p.url.as_str())).collect();
        assert_eq!(pages, [("a", "http://x/?q=1"), ("b.html", "https://x/y/b.html?z=2")]);
        assert!(s.plaintext && s.allow_clients.is_some());
        // The secure options need --key.
        for extra in [&["--plaintext"][..], &["--allow-clients", "f"], &["--bridge-host", "h"]] {
            let mut argv = vec!["anonserver", "-p", "1", "-l", "l", "-w", "w"];
            argv.extend_from_slice(extra);
            assert!(ServerArgs::try_parse_from(argv).is_err(), "{extra:?}");
        }
        for bad in ["h@x", "", "a b", "h/x"] {
            assert!(parse_bridge_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bridge_host_is_the_flag_or_the_bound_address() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["anonserver", "-p", "1", "-l", "l", "-w", "w", "--key", "k"];
            argv.extend_from_slice(extra);
            ServerArgs::try_parse_from(argv).unwrap()
        };
        let at = |a: &str| Some(a.parse::<SocketAddr>().unwrap());
        assert_eq!(bridge_host(&args(&[]), at("127.0.0.1:1")), "127.0.0.1");
        assert_eq!(bridge_host(&args(&[]), at("[::1]:1")), "[::1]");
        // Bound to every address: the operator has to say.
        assert_eq!(bridge_host(&args(&[]), at("[::]:1")), "HOST");
        assert_eq!(bridge_host(&args(&[]), at("0.0.0.0:1")), "HOST");
        assert_eq!(bridge_host(&args(&["--bridge-host", "vpn.example.org"]), at("[::]:1")), "vpn.example.org");
        assert_eq!(bridge_host(&args(&["--bridge-host", "2001:db8::1"]), at("[::]:1")), "[2001:db8::1]");
        // What the server prints, a client reads.
        let line = Bridge { key: PublicKey([3; 32]), address: format!("{}:1", bridge_host(&args(&[]), at("[::1]:1"))) };
        assert_eq!(Bridge::parse(&line.to_string()), Ok(line));
    }

    #[test]
    fn keygen_command_lines() {
        for argv in [&["anonserver", "keygen", "k"][..], &["anonserver", "keygen", "--key", "k"]] {
            let s = ServerArgs::try_parse_from(argv).unwrap();
            let Some(ServerCommand::Keygen(k)) = s.command else { panic!("{argv:?}") };
            assert_eq!(k.file.or(k.key), Some(PathBuf::from("k")));
            assert!(!k.force);
        }
        let s = ServerArgs::try_parse_from(["anonserver", "keygen", "k", "--force"]).unwrap();
        assert!(matches!(s.command, Some(ServerCommand::Keygen(KeygenArgs { force: true, .. }))));
        assert!(ServerArgs::try_parse_from(["anonserver", "keygen"]).is_err(), "a file is needed");
        assert!(ServerArgs::try_parse_from(["anonserver", "keygen", "a", "--key", "b"]).is_err());
        assert!(ServerArgs::try_parse_from(["anonserver", "-p", "1", "keygen", "k"]).is_err());
        assert!(ServerArgs::try_parse_from(["anonserver"]).is_err(), "serving needs -p -l -w");
    }

    #[test]
    fn page_names() {
        assert_eq!(parse_page("www.example.com").unwrap().name, "www.example.com");
        assert_eq!(parse_page("https://example.org/").unwrap().name, "example.org");
        assert_eq!(parse_page("https://example.org/news/").unwrap().name, "news");
        assert_eq!(parse_page("file:///tmp/a%20b.html").unwrap().name, "a_20b.html");
        assert_eq!(parse_page("file:///").unwrap().name, "index");
        assert_eq!(parse_page("x=y").unwrap(), PageArg { name: "x".into(), url: "y".into() });
        assert!(parse_page("x=").is_err());
        // As before: an empty URL is the download's error (exit 4).
        assert_eq!(parse_page("").unwrap(), PageArg { name: "index".into(), url: String::new() });
        // A long or odd "name" is part of the URL.
        let long = format!("{}=u", "n".repeat(65));
        assert_eq!(parse_page(&long).unwrap().url, long);
        assert!(parse_page_name("ok.-_9").is_ok());
        for bad in ["", "a b", "a/b", &"n".repeat(65)] {
            assert!(parse_page_name(bad).is_err(), "{bad:?}");
        }
        // An existing local file is a file, whatever its name holds.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a=b.html");
        std::fs::write(&file, "x").unwrap();
        let arg = parse_page(file.to_str().unwrap()).unwrap();
        assert_eq!((arg.name.as_str(), arg.url.as_str()), ("a_b.html", file.to_str().unwrap()));
    }

    #[test]
    fn secure_client_command_lines() {
        let bridge = format!("anon://{KEY}@[::1]:4000");
        let c = ClientArgs::try_parse_from(["anonclient", "--bridge", &bridge, "-l", "l", "-f", "f", "--page", "news"])
            .unwrap();
        let t = target(&c).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 4000));
        assert_eq!(t.server_key.map(|k| k.to_base64()).as_deref(), Some(KEY));
        let c = ClientArgs::try_parse_from([
            "anonclient",
            "--server-key",
            KEY,
            "-s",
            "h",
            "-p",
            "5",
            "-l",
            "l",
            "-f",
            "f",
            "--key",
            "k",
        ])
        .unwrap();
        let t = target(&c).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.server_key.is_some()), ("h", 5, true));
        let bad: [&[&str]; 6] = [
            // -s/-p with a bridge line, which names the server.
            &["--bridge", &bridge, "-s", "h"],
            // --server-key without -s/-p.
            &["--server-key", KEY],
            // --page and --key need secure mode.
            &["-s", "h", "-p", "5", "--page", "x"],
            &["-s", "h", "-p", "5", "--key", "k"],
            // Secure mode never falls back to the baseline.
            &["--bridge", &bridge, "--no-fast"],
            &["--bridge", "anon://short@h:1"],
        ];
        for extra in bad {
            let mut argv = vec!["anonclient", "-l", "l", "-f", "f"];
            argv.extend_from_slice(extra);
            assert!(ClientArgs::try_parse_from(argv).is_err(), "{extra:?}");
        }
    }

    #[test]
    fn serve_command_lines() {
        let bridge = format!("anon://{KEY}@127.0.0.1:4000");
        let parse = |extra: &[&str]| {
            let mut argv = vec!["anonclient"];
            argv.extend_from_slice(extra);
            ClientArgs::try_parse_from(argv)
        };
        let c = parse(&["--bridge", &bridge, "--serve"]).unwrap();
        assert_eq!(c.serve, Some("127.0.0.1:8080".parse().unwrap()));
        assert!(c.log.is_none() && c.file.is_none());
        let c = parse(&["--bridge", &bridge, "--serve", "[::1]:9000", "-l", "log"]).unwrap();
        assert_eq!((c.serve, c.log), (Some("[::1]:9000".parse().unwrap()), Some(PathBuf::from("log"))));
        let c = parse(&["--server-key", KEY, "-s", "h", "-p", "5", "--serve", "-q"]).unwrap();
        assert!(c.serve.is_some() && c.quiet);
        let bad: [&[&str]; 5] = [
            // Secure mode only.
            &["-s", "h", "-p", "5", "--serve"],
            // One page or the front end.
            &["--bridge", &bridge, "--serve", "-f", "out"],
            &["--bridge", &bridge, "--serve", "--url", "http://x/"],
            &["--bridge", &bridge, "--serve", "not-an-address"],
            // Without --serve, -l and -f are still required.
            &["--bridge", &bridge, "-l", "log"],
        ];
        for argv in bad {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
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
