//! What the server may fetch for a client: URLs matching an operator's
//! `--fetch-allow` patterns, from addresses that are not private or the
//! server's own (unless `--fetch-private`).
//!
//! URLs are parsed by hand into one normal form ([`ParsedUrl`]), and that
//! form, not the client's text, is both matched and fetched, so the pattern
//! check and the request cannot read a URL differently.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::str::FromStr;

/// Longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// An absolute http or https URL in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// Lowercase, without a trailing dot; an IP address in its canonical
    /// form (IPv6 without brackets).
    pub host: String,
    /// The explicit port or the scheme's default.
    pub port: u16,
    /// The path, without dot segments, and the query; starts with `/`.
    pub path_and_query: String,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

impl ParsedUrl {
    /// Parses an absolute http or https URL, dropping any fragment.
    ///
    /// Refused: other schemes, userinfo (`user@host`), empty hosts, hosts
    /// with `%` or other characters outside letters, digits, `-`, `.` and `_`,
    /// numeric hosts that are not a plain dotted quad (`127.1`, `0x7f.1`,
    /// which resolvers read as addresses), control characters, whitespace,
    /// backslashes, non-ASCII (send punycode and percent-encoding), and URLs
    /// longer than [`MAX_URL_LEN`].
    pub fn parse(url: &str) -> Result<ParsedUrl, String> {
        if url.len() > MAX_URL_LEN {
            return Err(format!("URL longer than {MAX_URL_LEN} bytes"));
        }
        if let Some(c) = url.chars().find(|c| !c.is_ascii() || c.is_ascii_control() || *c == ' ' || *c == '\\') {
            return Err(format!("URL contains {c:?}"));
        }
        let url = url.split_once('#').map_or(url, |(before, _)| before);
        let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL (no scheme://)")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("unsupported scheme {scheme:?} (use http or https)"));
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(end);
        if authority.contains('@') {
            return Err("URL has userinfo (user@host)".into());
        }
        let (host, port) = split_host_port(authority)?;
        let host = normalize_host(host)?;
        let port = match port {
            Some(p) => parse_port(p)?,
            None => default_port(&scheme),
        };
        let path_and_query = normalize_path(path_and_query)?;
        let parsed = ParsedUrl { scheme, host, port, path_and_query };
        parsed.cross_check()?;
        Ok(parsed)
    }

    /// The URL in normal form (`scheme://host[:port]/path?query`, the port
    /// only when not the default): the cache key, and what is fetched.
    pub fn to_key(&self) -> String {
        let mut s = self.origin();
        s.push_str(&self.path_and_query);
        s
    }

    /// `scheme://host[:port]`, the port only when not the default.
    pub fn origin(&self) -> String {
        let mut s = format!("{}://{}", self.scheme, self.host_for_url());
        if self.port != default_port(&self.scheme) {
            s.push_str(&format!(":{}", self.port));
        }
        s
    }

    /// The host as written in a URL: IPv6 addresses in brackets.
    fn host_for_url(&self) -> String {
        if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() }
    }

    /// The normal form must read the same to the `http` crate that ureq
    /// uses, or we would check one URL and fetch another.
    fn cross_check(&self) -> Result<(), String> {
        let key = self.to_key();
        let uri: ureq::http::Uri = key.parse().map_err(|e| format!("not a valid URL: {e}"))?;
        let port = uri.port_u16().unwrap_or(default_port(&self.scheme));
        if uri.host() != Some(self.host_for_url().as_str()) || port != self.port {
            return Err("URL is ambiguous".into());
        }
        Ok(())
    }
}

impl std::fmt::Display for ParsedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_key())
    }
}

/// Splits `host[:port]` or `[v6][:port]`; the port may be absent.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.starts_with('[') {
        let close = authority.find(']').ok_or("unclosed [ in host")?;
        let (host, after) = authority.split_at(close + 1);
        return match after {
            "" => Ok((host, None)),
            _ => after.strip_prefix(':').map(|p| (host, Some(p))).ok_or_else(|| "junk after ]".to_string()),
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn parse_port(port: &str) -> Result<u16, String> {
    // An empty port means the default (RFC 3986 §3.2.3) but is never
    // needed; `+1` and the like are not ports.
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port {port:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("bad port {port:?}")),
    }
}

/// Lowercases a host, drops one trailing dot (`example.org.` is
/// `example.org`) and refuses anything that is not a plain DNS name or a
/// canonical IP address.
fn normalize_host(host: &str) -> Result<String, String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("unclosed [ in host")?;
        // Ipv6Addr refuses zone ids (`%eth0`).
        let ip: Ipv6Addr = inner.parse().map_err(|_| format!("bad IPv6 address {inner:?}"))?;
        return Ok(ip.to_string());
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err("empty host".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))) {
        return Err(format!("host contains {c:?}"));
    }
    if name.len() > 253 || name.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(format!("bad host name {name:?}"));
    }
    // No top-level domain starts with a digit, but resolvers read `127.1`,
    // `2130706433` or `0x7f.0.0.1` as addresses: only a dotted quad passes.
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.starts_with(|c: char| c.is_ascii_digit()) {
        let ip: Ipv4Addr = name.parse().map_err(|_| format!("bad IPv4 address {name:?}"))?;
        return Ok(ip.to_string());
    }
    Ok(name.to_string())
}

/// Adds the `/` an empty path means, removes `.` and `..` segments (RFC
/// 3986 §5.2.4) so that `/public/../secret` is matched as the origin will
/// read it, and refuses percent-encoded dot segments.
fn normalize_path(path_and_query: &str) -> Result<String, String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                let lower = s.to_ascii_lowercase();
                // Encoded dots, slashes and backslashes, and `;` parameters
                // on a dot segment, are read by some origins as the path
                // structure they hide (`/public/..%2fsecret`, `..;/`):
                // refused, so that a path pattern means what it says.
                if ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
                    || lower.starts_with("..;")
                    || lower.starts_with(".;")
                {
                    return Err(
                        "URL path has an encoded dot, slash or backslash, or a dot segment with parameters".into()
                    );
                }
                out.push(s);
                continue;
            }
        }
        if last {
            out.push("");
        }
    }
    let mut s = format!("/{}", out.join("/"));
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    Ok(s)
}

/// A `--fetch-allow` pattern: `SCHEME://HOST[:PORT]/PATH`.
///
/// - SCHEME: `http`, `https` or `*` (either).
/// - HOST: a name or address (exact, case-insensitive), `*` (any host) or
///   `*.example.org` (example.org and its subdomains), as in Chrome's
///   extension match patterns.
/// - PORT: absent means the scheme's default port only, `*` any port.
/// - PATH: a glob over path and query where `*` matches any run of
///   characters (`/` included) and all else is literal; absent means `/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPattern {
    text: String,
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// The domain and its subdomains.
    Domain(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Default,
    Any,
    Exact(u16),
}

impl FromStr for UrlPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<UrlPattern, String> {
        let bad = |why: &str| format!("bad URL pattern {text:?}: {why} (expected SCHEME://HOST[:PORT]/PATH)");
        if text.len() > MAX_URL_LEN || text.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(bad("too long, or has spaces, control or non-ASCII characters"));
        }
        if text.contains('#') {
            return Err(bad("patterns have no fragment"));
        }
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme://"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => None,
            s @ ("http" | "https") => Some(s.to_string()),
            _ => return Err(bad("the scheme must be http, https or *")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("patterns have no userinfo"));
        }
        if authority.contains(['?', '\\']) {
            return Err(bad("the host ends at the first /"));
        }
        let (host, port) = split_host_port(authority).map_err(|e| bad(&e))?;
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::Exact(parse_port(p).map_err(|e| bad(&e))?),
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.contains('*') {
                return Err(bad("* is allowed only as the whole host or its first label"));
            }
            let domain = normalize_host(domain).map_err(|e| bad(&e))?;
            if domain.parse::<IpAddr>().is_ok() {
                return Err(bad("*. needs a domain name, not an address"));
            }
            HostPattern::Domain(domain)
        } else if host.contains('*') {
            return Err(bad("* is allowed only as the whole host or its first label"));
        } else {
            HostPattern::Exact(normalize_host(host).map_err(|e| bad(&e))?)
        };
        let path = if path.is_empty() { "/*".to_string() } else { path.to_string() };
        Ok(UrlPattern { text: text.to_string(), scheme, host, port, path })
    }
}

impl std::fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl UrlPattern {
    /// Whether `url` (in normal form) matches.
    pub fn matches(&self, url: &ParsedUrl) -> bool {
        let scheme = self.scheme.as_ref().is_none_or(|s| *s == url.scheme);
        let host = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => *h == url.host,
            HostPattern::Domain(d) => {
                url.host == *d || url.host.strip_suffix(d.as_str()).is_some_and(|sub| sub.ends_with('.'))
            }
        };
        let port = match self.port {
            PortPattern::Default => url.port == default_port(&url.scheme),
            PortPattern::Any => true,
            PortPattern::Exact(p) => url.port == p,
        };
        scheme && host && port && glob(self.path.as_bytes(), url.path_and_query.as_bytes())
    }
}

/// `*` matches any run of bytes, everything else itself. Backtracks only to
/// the last star, so the cost is at most the product of the lengths.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    loop {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
                continue;
            }
            Some(c) if s.get(i) == Some(c) => {
                p += 1;
                i += 1;
                continue;
            }
            None if i == s.len() => return true,
            _ => {}
        }
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp + 1;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Why a URL is not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The URL is malformed or matches no pattern.
    #[error("{0}")]
    NotAllowed(String),
}

/// The operator's rules for on-demand fetches.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    /// `--fetch-allow`: a URL must match one of these.
    pub patterns: Vec<UrlPattern>,
    /// `--fetch-private`: also fetch from private and own addresses.
    pub allow_private: bool,
}

impl FetchPolicy {
    /// Parses `url` and checks it against the patterns; the result is the
    /// URL to fetch and to key the cache with.
    pub fn check_url(&self, url: &str) -> Result<ParsedUrl, Denied> {
        let parsed = ParsedUrl::parse(url).map_err(|e| Denied::NotAllowed(format!("bad URL: {e}")))?;
        if self.patterns.iter().any(|p| p.matches(&parsed)) {
            Ok(parsed)
        } else {
            Err(Denied::NotAllowed(format!("{parsed} is not allowed (it matches no --fetch-allow pattern)")))
        }
    }

    /// Whether the server may connect to `addr`.
    pub fn address_allowed(&self, addr: IpAddr) -> bool {
        self.allow_private || !(forbidden_ip(addr) || is_own_address(addr))
    }
}

/// Addresses a web proxy must not reach for others: this host, private
/// networks, link-local, multicast, reserved and documentation ranges
/// (RFC 6890 special-purpose registries). IPv6 forms that carry an IPv4
/// address (mapped, compatible, NAT64) are judged by that address.
pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // 0.0.0.0/8 "this network", unspecified included
        || a == 10 // RFC 1918
        || a == 127 // loopback
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10 CGNAT
        || (a == 169 && b == 254) // link-local
        || (a == 172 && (16..32).contains(&b)) // RFC 1918
        || (a == 192 && b == 168) // RFC 1918
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 192.88.99.0/24 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15 benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match seg {
        // ::/96 IPv4-compatible (:: and ::1 included: 0.0.0.0 and 0.0.0.1).
        [0, 0, 0, 0, 0, 0, hi, lo] => forbidden_v4(embedded(hi, lo)),
        // ::ffff:0:0/96 IPv4-mapped.
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => forbidden_v4(embedded(hi, lo)),
        // 64:ff9b::/96 NAT64 (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => forbidden_v4(embedded(hi, lo)),
        // 64:ff9b:1::/48 local-use NAT64 (RFC 8215): reaches private networks.
        [0x64, 0xff9b, 1, ..] => true,
        // 100::/64 discard-only.
        [0x100, 0, 0, 0, ..] => true,
        // 2001:db8::/32 documentation.
        [0x2001, 0xdb8, ..] => true,
        // 2001::/32 Teredo: tunnels to an IPv4 address it hides.
        [0x2001, 0, ..] => true,
        // 2002::/16 6to4 (RFC 3056): judged by the IPv4 address it embeds.
        [0x2002, hi, lo, ..] => forbidden_v4(embedded(hi, lo)),
        [s0, ..] => {
            (s0 & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s0 & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (s0 & 0xffc0) == 0xfec0 // fec0::/10 old site-local
                || (s0 & 0xff00) == 0xff00 // multicast
                || (s0 & 0xfff0) == 0x3ff0 // 3fff::/20 documentation (RFC 9637)
        }
    }
}

/// Whether `ip` is an address of this host (any interface): binding a UDP
/// socket to it succeeds only then. No packet is sent. An IPv4-mapped
/// address is tried as the IPv4 address it reaches.
pub fn is_own_address(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ParsedUrl {
        ParsedUrl::parse(s).unwrap()
    }

    fn pat(s: &str) -> UrlPattern {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalizes_urls() {
        let u = url("HTTPS://Example.ORG./a/b/../c?x=1#frag");
        assert_eq!(u.scheme, "https");
        assert_eq!(u.host, "example.org");
        assert_eq!(u.port, 443);
        assert_eq!(u.path_and_query, "/a/c?x=1");
        assert_eq!(u.to_key(), "https://example.org/a/c?x=1");
        assert_eq!(url("http://example.org").path_and_query, "/");
        assert_eq!(url("http://example.org?q").path_and_query, "/?q");
        assert_eq!(url("http://example.org:80/").to_key(), "http://example.org/");
        assert_eq!(url("http://example.org:8080/").to_key(), "http://example.org:8080/");
        assert_eq!(url("http://[::1]:8080/x").host, "::1");
        assert_eq!(url("http://[::1]:8080/x").to_key(), "http://[::1]:8080/x");
        assert_eq!(url("http://[2001:DB8::0:1]/").host, "2001:db8::1");
        assert_eq!(url("http://127.0.0.1:9/").host, "127.0.0.1");
        assert_eq!(url("http://a/x/./y/.").path_and_query, "/x/y/");
        assert_eq!(url("http://a/../../x").path_and_query, "/x");
        assert_eq!(url("http://a/x/..").path_and_query, "/");
        // Dots in the query are not path segments.
        assert_eq!(url("http://a/x?p=/../y").path_and_query, "/x?p=/../y");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "ftp://example.org/",
            "example.org/",
            "//example.org/",
            "http://",
            "http:///x",
            "http://.",
            "http://user@example.org/",
            "http://example.org@evil.com/",
            "http://user:pw@example.org/",
            "http://exa%6dple.org/",
            "http://example.org /",
            "http://example.org/a b",
            "http://example.org/\n",
            "http://example.org\\@evil.com/",
            "http://exämple.org/",
            "http://a..b/",
            "http://example.org:0/",
            "http://example.org:65536/",
            "http://example.org:+80/",
            "http://example.org:/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://[::1%25eth0]/",
            "http://[::1/",
            "http://[::1]x/",
            "http://a:b:c/",
            "http://a/%2e%2e/secret",
            "http://a/x/.%2E/secret",
        ] {
            assert!(ParsedUrl::parse(bad).is_err(), "{bad} was accepted");
        }
        let long = format!("http://a/{}", "x".repeat(MAX_URL_LEN));
        assert!(ParsedUrl::parse(&long).is_err());
    }

    #[test]
    fn patterns_match_hosts_like_chrome() {
        let p = pat("https://*.example.org");
        assert!(p.matches(&url("https://example.org/")));
        assert!(p.matches(&url("https://a.b.example.org/x?y")));
        assert!(p.matches(&url("https://EXAMPLE.org./")));
        assert!(!p.matches(&url("https://example.org.evil.com/")));
        assert!(!p.matches(&url("https://evilexample.org/")));
        assert!(!p.matches(&url("https://evil.com/?x=.example.org")));
        assert!(!p.matches(&url("https://evil.com/.example.org")));
        assert!(!p.matches(&url("http://example.org/")), "scheme");
        assert!(!p.matches(&url("https://example.org:8443/")), "only the default port");
        let exact = pat("http://Example.org/");
        assert!(exact.matches(&url("http://example.org/")));
        assert!(!exact.matches(&url("http://example.org/x")), "the path is literal");
        assert!(!exact.matches(&url("http://www.example.org/")));
        assert!(pat("*://*/*").matches(&url("http://anything:80/")));
        assert!(pat("*://*/*").matches(&url("https://anything/")));
        assert!(!pat("*://*/*").matches(&url("https://anything:81/")));
        assert!(pat("*://*:*/*").matches(&url("https://anything:81/")));
        assert!(pat("http://127.0.0.1:8080/*").matches(&url("http://127.0.0.1:8080/a")));
        assert!(pat("http://[::1]:*/").matches(&url("http://[0::1]:5/")));
    }

    #[test]
    fn pattern_paths_are_globs_over_path_and_query() {
        let p = pat("https://example.org/docs/*.html");
        assert!(p.matches(&url("https://example.org/docs/a/b.html")));
        assert!(!p.matches(&url("https://example.org/docs/a.html?x")));
        assert!(!p.matches(&url("https://example.org/docs/../secret.html")));
        assert!(pat("https://example.org/a?b=*").matches(&url("https://example.org/a?b=1")));
        assert!(!pat("https://example.org/a?b=*").matches(&url("https://example.org/a")));
        assert!(pat("https://example.org/*a*b*").matches(&url("https://example.org/xxaxxbxx")));
        assert!(!pat("https://example.org/*a*b").matches(&url("https://example.org/xxbxxa")));
        assert!(glob(b"", b""));
        assert!(glob(b"**", b""));
        assert!(!glob(b"", b"a"));
    }

    #[test]
    fn refuses_bad_patterns() {
        for bad in [
            "example.org",
            "ftp://example.org/",
            "https://user@example.org/",
            "https://example.org/#x",
            "https://ex*ample.org/",
            "https://*example.org/",
            "https://a.*.org/",
            "https://*.*.org/",
            "https://*.1.2.3.4/",
            "https://example.org:x/",
            "https://example.org?x",
            "https://exa%6dple.org/",
            "https://example.org/a b",
            "https:///",
        ] {
            let got = bad.parse::<UrlPattern>();
            assert!(got.is_err(), "{bad} was accepted");
        }
        let msg = "https://a.*.org/".parse::<UrlPattern>().unwrap_err();
        assert!(msg.contains("a.*.org") && msg.contains("SCHEME://HOST"), "{msg}");
    }

    #[test]
    fn policy_checks_urls() {
        let policy = FetchPolicy { patterns: vec![pat("https://*.example.org")], allow_private: false };
        assert_eq!(policy.check_url("https://WWW.example.org/x").unwrap().to_key(), "https://www.example.org/x");
        let Err(Denied::NotAllowed(why)) = policy.check_url("https://evil.com/") else { panic!() };
        assert!(why.contains("evil.com") && why.contains("--fetch-allow"), "{why}");
        let Err(Denied::NotAllowed(why)) = policy.check_url("https://example.org@evil.com/") else { panic!() };
        assert!(why.contains("userinfo"), "{why}");
        assert!(FetchPolicy::default().check_url("https://example.org/").is_err());
        // Encodings that hide path structure from a path pattern.
        let public = FetchPolicy { patterns: vec![pat("https://h.example/public/*")], allow_private: false };
        assert!(public.check_url("https://h.example/public/a%20b.html?u=https%3A%2F%2Fx%2F").is_ok());
        for hidden in ["/public/..%2fsecret", "/public/%2e%2e%2fsecret", "/public/..;/secret", "/public/..%5csecret"] {
            assert!(public.check_url(&format!("https://h.example{hidden}")).is_err(), "{hidden}");
        }
    }

    #[test]
    fn forbidden_addresses() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "3fff::1",
            "2001::5ef5:79fd",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "192.88.99.1",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(forbidden_ip(addr), "{ip} should be forbidden");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2002:808:808::1",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(!forbidden_ip(addr), "{ip} should be allowed");
        }
    }

    #[test]
    fn own_addresses_and_the_policy() {
        assert!(is_own_address("127.0.0.1".parse().unwrap()));
        assert!(is_own_address("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_own_address("192.0.2.1".parse().unwrap()));
        let strict = FetchPolicy { patterns: vec![], allow_private: false };
        let open = FetchPolicy { patterns: vec![], allow_private: true };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!strict.address_allowed(lo));
        assert!(open.address_allowed(lo));
        assert!(strict.address_allowed("8.8.8.8".parse().unwrap()));
    }
}
