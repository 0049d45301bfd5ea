//! The server's counters for operators: a Prometheus text endpoint (on a
//! local TCP port when asked for) and a periodic line in the log.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anon_proto::ServerStats;
use anon_proto::secure::SecureStats;

use crate::packet_log::LogStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the endpoint reports: its counters and the gauges beside them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Counters since start.
    pub stats: ServerStats,
    /// Connections open now (half-open included).
    pub open: usize,
    /// Of those, connections whose handshake is incomplete.
    pub half_open: usize,
    /// Refusing new connections before a stop.
    pub draining: bool,
    /// What the packet log could not write.
    pub log: LogStats,
    /// The secure layer, in secure mode.
    pub secure: Option<SecureSnapshot>,
    /// The proxy, with `--fetch-allow`.
    pub proxy: Option<crate::proxy::service::ProxyStats>,
}

/// The secure layer's counters and the state it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecureSnapshot {
    /// Counters since start.
    pub stats: SecureStats,
    /// Handshake attempts held (with their keys).
    pub sessions: usize,
    /// First messages remembered against replay.
    pub replay_entries: usize,
    /// The estimated chance, in parts per million, that a fresh first
    /// message is taken for a replay (the replay filter's load).
    pub replay_false_positive_ppm: u64,
}

/// The latest snapshot, written by the socket loop and read by the endpoint.
pub type Shared = Arc<Mutex<Snapshot>>;

/// The snapshot in the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Snapshot) -> String {
    let st = &s.stats;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP anon_{name} {help}\n# TYPE anon_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "anon_{name}{labels} {value}");
        }
    };
    metric("connections_open", "gauge", "Connections open, half-open included.", &[("", s.open as u64)]);
    metric("connections_half_open", "gauge", "Connections whose handshake is incomplete.", &[("", s.half_open as u64)]);
    metric("draining", "gauge", "1 while refusing new connections before a stop.", &[("", u64::from(s.draining))]);
    metric(
        "connections_accepted_total",
        "counter",
        "Connections created, by mode.",
        &[("{mode=\"fast\"}", st.accepted_fast), ("{mode=\"baseline\"}", st.accepted.saturating_sub(st.accepted_fast))],
    );
    metric("connections_completed_total", "counter", "Transfers the client fully acknowledged.", &[("", st.completed)]);
    metric("connections_given_up_total", "counter", "Connections freed after the idle timeout.", &[("", st.given_up)]);
    metric(
        "syn_refused_total",
        "counter",
        "New connections refused, by the limit that refused them.",
        &[
            ("{limit=\"max_connections\"}", st.refused_max_connections),
            ("{limit=\"per_source\"}", st.refused_per_source),
            ("{limit=\"draining\"}", st.refused_draining),
            ("{limit=\"syn_flood\"}", st.refused_syn_flood),
        ],
    );
    metric(
        "syn_cookies_sent_total",
        "counter",
        "SYNs answered statelessly with a SYN cookie (half-open limit reached).",
        &[("", st.cookies_sent)],
    );
    metric(
        "syn_cookies_accepted_total",
        "counter",
        "Connections rebuilt from a valid SYN cookie.",
        &[("", st.cookies_accepted)],
    );
    metric("datagrams_received_total", "counter", "Datagrams received.", &[("", st.datagrams_received)]);
    metric("datagrams_malformed_total", "counter", "Datagrams shorter than a header.", &[("", st.malformed)]);
    metric(
        "datagrams_unexpected_total",
        "counter",
        "Datagrams that fit no connection or its state (strays, forgeries, duplicates).",
        &[("", st.unexpected)],
    );
    metric("datagrams_sent_total", "counter", "Datagrams sent.", &[("", st.datagrams_sent)]);
    metric(
        "payload_bytes_sent_total",
        "counter",
        "Page bytes sent, retransmissions included.",
        &[("", st.payload_bytes_sent)],
    );
    metric("retransmissions_total", "counter", "Datagrams sent again.", &[("", st.retransmissions)]);
    metric("final_acks_total", "counter", "Final ACKs sent to fast-mode FIN|ACKs.", &[("", st.final_acks)]);
    let mut dropped = vec![
        ("{reason=\"behind\"}", s.log.behind),
        ("{reason=\"stray\"}", s.log.stray),
        ("{reason=\"repeat\"}", s.log.repeat),
    ];
    let mut help =
        "Packet-log lines not written: the disk was behind, or datagrams of no connection beyond the stray rate.";
    // Only in secure mode: a plaintext server's output stays as it was.
    if s.secure.is_some() {
        dropped.push(("{reason=\"opaque\"}", s.log.opaque));
        help = "Packet-log lines not written: the disk was behind, datagrams of no connection beyond the stray rate, \
                repeats beyond theirs, or datagrams with no inner header to show (not authentic, or a refusal).";
    }
    metric("log_lines_dropped_total", "counter", help, &dropped);
    if let Some(secure) = &s.secure {
        render_secure(secure, &mut metric);
    }
    if let Some(proxy) = &s.proxy {
        render_proxy(proxy, &mut metric);
    }
    out
}

/// The secure layer's counters, `anon_secure_*`.
fn render_secure(s: &SecureSnapshot, metric: &mut impl FnMut(&str, &str, &str, &[(&str, u64)])) {
    let st = &s.stats;
    metric("secure_sessions", "gauge", "Secure handshake attempts held, with their keys.", &[("", s.sessions as u64)]);
    metric(
        "secure_replay_entries",
        "gauge",
        "First handshake messages remembered against replay.",
        &[("", s.replay_entries as u64)],
    );
    metric(
        "secure_replay_false_positive_ppm",
        "gauge",
        "Estimated chance, in parts per million, that a fresh first message is dropped as a replay: the replay filter's load (docs/PROTOCOL.md §8.3, rule 5).",
        &[("", s.replay_false_positive_ppm)],
    );
    metric(
        "secure_datagrams_dropped_total",
        "counter",
        "Datagrams dropped unanswered: not ours (random bytes, probes, plaintext when plaintext is off), sealed for a connection but not authentic, or authentic but seen before.",
        &[
            ("{reason=\"not_ours\"}", st.not_ours),
            ("{reason=\"forged\"}", st.forged),
            ("{reason=\"replayed\"}", st.replayed),
        ],
    );
    metric(
        "secure_handshakes_ignored_total",
        "counter",
        "First handshake messages under our key ignored (never answered), by reason.",
        &[
            ("{reason=\"bad\"}", st.bad_handshakes),
            ("{reason=\"stale\"}", st.stale_handshakes),
            ("{reason=\"replayed\"}", st.replayed_handshakes),
            ("{reason=\"unlisted_client\"}", st.unlisted_clients),
            ("{reason=\"limit\"}", st.refused),
        ],
    );
    metric("secure_handshakes_total", "counter", "Secure handshakes answered.", &[("", st.handshakes)]);
    metric(
        "secure_handshake_reads_total",
        "counter",
        "First handshake messages read under the static key (two X25519 operations each): fresh ones made with the bridge line only.",
        &[("", st.noise_reads)],
    );
    metric(
        "secure_handshakes_confirmed_total",
        "counter",
        "Secure handshakes the client confirmed with a sealed datagram.",
        &[("", st.confirmed)],
    );
    metric(
        "secure_handshakes_evicted_total",
        "counter",
        "Unconfirmed secure handshakes forgotten to make room for new ones.",
        &[("", st.evicted)],
    );
    metric(
        "secure_requests_rejected_total",
        "counter",
        "Authenticated requests refused with a reason (no page of that name).",
        &[("", st.rejected)],
    );
    metric(
        "secure_migrations_total",
        "counter",
        "Secure connections moved to a new, proven address of their client (NAT rebinding).",
        &[("", st.migrations)],
    );
    metric(
        "secure_path_probes_total",
        "counter",
        "Probes sent to a secure client's new address, to prove it before the connection moves there (docs/PROTOCOL.md §8.4).",
        &[("", st.path_probes)],
    );
    metric(
        "secure_early_segments_total",
        "counter",
        "Early segments sent: a page's first bytes right behind a secure answer, in what its first message's length leaves (docs/PROTOCOL.md §8.3).",
        &[("", st.early_segments)],
    );
    metric(
        "secure_cookie_replies_total",
        "counter",
        "Under load: secure first messages answered with a cookie for their source address instead of being read (docs/PROTOCOL.md §8.3, rule 1).",
        &[("", st.cookie_replies)],
    );
    metric(
        "secure_rate_limited_total",
        "counter",
        "Under load: secure first messages with a valid cookie dropped unread, their source's budget of reads spent.",
        &[("", st.rate_limited)],
    );
    metric(
        "secure_fetch_requests_total",
        "counter",
        "Pages asked for by URL (docs/PROTOCOL.md §9), handed to the proxy; first messages sent again while waiting; requests the proxy did not answer in time.",
        &[
            ("{event=\"asked\"}", st.fetch_requests),
            ("{event=\"repeated\"}", st.fetch_repeats),
            ("{event=\"timed_out\"}", st.fetch_timeouts),
        ],
    );
}

fn render_proxy(p: &crate::proxy::service::ProxyStats, metric: &mut impl FnMut(&str, &str, &str, &[(&str, u64)])) {
    metric(
        "proxy_requests_total",
        "counter",
        "Requests for pages by URL, by how the proxy answered: from the cache, joined to a fetch under way, refused (policy, origin failure, memory budget).",
        &[
            ("{outcome=\"cache\"}", p.hits),
            ("{outcome=\"joined\"}", p.joined),
            ("{outcome=\"refused\"}", p.refused),
            ("{outcome=\"over_budget\"}", p.over_budget),
        ],
    );
    metric(
        "proxy_origin_requests_total",
        "counter",
        "Requests the proxy sent to origins, and those answered 304 Not Modified.",
        &[("{kind=\"all\"}", p.origin_requests), ("{kind=\"revalidated\"}", p.revalidated)],
    );
}

/// Serves the snapshot to every HTTP request on `listener`, until dropped.
/// Requests are read with a deadline, so a silent client holds nothing.
pub async fn serve(listener: TcpListener, shared: Shared) {
    // At most a few scrapes at once, each bounded in time: whoever reaches
    // the port cannot pile up connections or tasks on the server's thread.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: the pending connection stays
                // queued, so retrying at once would spin. Wait a little.
                tracing::debug!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let answer = async {
                // The request itself does not matter: read its head (bounded),
                // then answer with the counters.
                let mut head = [0u8; 2048];
                if stream.read(&mut head).await? == 0 {
                    return Ok(());
                }
                let snapshot = *shared.lock().unwrap_or_else(PoisonError::into_inner);
                let body = render(&snapshot);
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
        });
    }
}

/// Scrapes served at once.
const MAX_SCRAPES: usize = 4;

/// One line of the endpoint's counters in the log: the periodic report,
/// and the last word when the server stops. In secure mode the line has the
/// secure layer's counters too.
pub fn log_counters(s: &Snapshot, what: &str) {
    let (st, open) = (&s.stats, s.open);
    // The secure fields are `None` (and so left out of the line) without a
    // key: a plaintext server's line is as it was.
    let sec = s.secure.as_ref().map(|secure| &secure.stats);
    let field = |f: fn(&SecureStats) -> u64| sec.map(f);
    tracing::info!(
        open,
        accepted = st.accepted,
        completed = st.completed,
        given_up = st.given_up,
        malformed = st.malformed,
        unexpected = st.unexpected,
        cookies_sent = st.cookies_sent,
        cookies_accepted = st.cookies_accepted,
        bytes_sent = st.payload_bytes_sent,
        retransmissions = st.retransmissions,
        proxy_cache_hits = s.proxy.map(|p| p.hits),
        proxy_origin_requests = s.proxy.map(|p| p.origin_requests),
        proxy_refused = s.proxy.map(|p| p.refused),
        secure_handshakes = field(|x| x.handshakes),
        secure_confirmed = field(|x| x.confirmed),
        secure_rejected = field(|x| x.rejected),
        secure_not_ours = field(|x| x.not_ours),
        secure_forged = field(|x| x.forged),
        secure_replayed = field(|x| x.replayed),
        secure_bad_handshakes = field(|x| x.bad_handshakes),
        secure_stale_handshakes = field(|x| x.stale_handshakes),
        secure_replayed_handshakes = field(|x| x.replayed_handshakes),
        secure_unlisted_clients = field(|x| x.unlisted_clients),
        secure_refused = field(|x| x.refused),
        secure_evicted = field(|x| x.evicted),
        secure_migrations = field(|x| x.migrations),
        secure_path_probes = field(|x| x.path_probes),
        secure_early_segments = field(|x| x.early_segments),
        secure_cookie_replies = field(|x| x.cookie_replies),
        secure_rate_limited = field(|x| x.rate_limited),
        "{what}"
    );
}

/// The periodic report: a counters line every `interval`, and a warning
/// when a limit refused connections, at most once per `interval` (never one
/// line per packet, whatever a flood does).
#[derive(Debug)]
pub struct Reporter {
    interval: Option<Duration>,
    next: Option<Instant>,
    last: ServerStats,
    last_log: LogStats,
    last_secure: SecureStats,
}

impl Reporter {
    /// Reports every `interval` (`None`: never).
    pub fn new(now: Instant, interval: Option<Duration>) -> Self {
        Reporter {
            interval,
            next: interval.map(|i| now + i),
            last: ServerStats::default(),
            last_log: LogStats::default(),
            last_secure: SecureStats::default(),
        }
    }

    /// When [`tick`](Self::tick) wants to run next.
    pub fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Logs what is due at `now`.
    pub fn tick(&mut self, now: Instant, s: &Snapshot) {
        let (Some(next), Some(interval)) = (self.next, self.interval) else { return };
        if now < next {
            return;
        }
        self.next = Some(now + interval);
        log_counters(s, "stats");
        self.warn(s, &format!("in the last {interval:?}"));
    }

    /// At the stop: what the last interval has not reported yet.
    pub fn last_word(&mut self, s: &Snapshot) {
        self.warn(s, if self.interval.is_some() { "since the last report" } else { "in all" });
    }

    /// Limits that refused connections and log lines not written since the
    /// last report, one line each.
    fn warn(&mut self, s: &Snapshot, period: &str) {
        let st = &s.stats;
        let refused = [
            (
                st.refused_max_connections - self.last.refused_max_connections,
                "the connection limit (--max-connections)",
            ),
            (st.refused_per_source - self.last.refused_per_source, "the per-address limit (--max-per-source)"),
            (st.refused_syn_flood - self.last.refused_syn_flood, "the stateless reply queue (SYN flood)"),
            (st.refused_draining - self.last.refused_draining, "draining before the stop"),
        ];
        for (n, limit) in refused {
            if n > 0 {
                tracing::warn!("{n} new connections refused {period}: {limit} was reached");
            }
        }
        let behind = s.log.behind - self.last_log.behind;
        if behind > 0 {
            tracing::warn!("packet log: {behind} lines dropped {period}: the disk is slower than the traffic");
        }
        let stray = s.log.stray - self.last_log.stray;
        if stray > 0 {
            tracing::warn!(
                "packet log: {stray} datagrams of no connection not logged {period} (more than {} a second)",
                crate::packet_log::STRAY_PER_SEC
            );
        }
        let repeat = s.log.repeat - self.last_log.repeat;
        if repeat > 0 {
            tracing::warn!(
                "packet log: {repeat} datagrams that changed nothing not logged {period} (more than {} a second)",
                crate::packet_log::REPEAT_PER_SEC
            );
        }
        if let Some(secure) = &s.secure {
            let (now, last) = (&secure.stats, &self.last_secure);
            let ignored = [
                (
                    now.refused - last.refused,
                    "secure handshakes ignored: the connection limit (--max-connections) or the per-address limit \
                     (--max-per-source) was reached",
                ),
                (
                    now.evicted - last.evicted,
                    "unconfirmed secure handshakes forgotten to make room: a flood of initiations under our key (has \
                     the bridge line leaked?)",
                ),
            ];
            for (n, what) in ignored {
                if n > 0 {
                    tracing::warn!("{n} {what} {period}");
                }
            }
            // A gauge, not a counter: said each interval while it lasts.
            if secure.replay_false_positive_ppm >= 10_000 {
                tracing::warn!(
                    "about {:.1}% of new secure handshakes are dropped as replays: the replay filter is loaded by a \
                     flood of initiations under our key (has the bridge line leaked?)",
                    secure.replay_false_positive_ppm as f64 / 10_000.0
                );
            }
            self.last_secure = *now;
        }
        self.last = *st;
        self.last_log = s.log;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_once_with_its_type() {
        let mut s = Snapshot { open: 3, draining: true, ..Snapshot::default() };
        s.stats.accepted = 10;
        s.stats.accepted_fast = 7;
        s.stats.refused_per_source = 4;
        let text = render(&s);
        assert!(text.contains("anon_connections_open 3\n"));
        assert!(text.contains("anon_draining 1\n"));
        assert!(text.contains("anon_connections_accepted_total{mode=\"fast\"} 7\n"));
        assert!(text.contains("anon_connections_accepted_total{mode=\"baseline\"} 3\n"));
        assert!(text.contains("anon_syn_refused_total{limit=\"per_source\"} 4\n"));
        // Every sample line belongs to a metric declared with HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE");
        }
        // A plaintext server shows nothing of secure mode.
        assert!(!text.contains("secure") && !text.contains("opaque"), "{text}");
    }

    #[test]
    fn secure_mode_adds_its_counters() {
        let mut s = Snapshot::default();
        let mut secure = SecureSnapshot { sessions: 2, replay_entries: 5, ..SecureSnapshot::default() };
        secure.stats.not_ours = 7;
        secure.stats.replayed_handshakes = 1;
        secure.stats.unlisted_clients = 3;
        s.secure = Some(secure);
        s.log.opaque = 9;
        s.proxy = Some(crate::proxy::service::ProxyStats { hits: 4, origin_requests: 2, ..Default::default() });
        let text = render(&s);
        for sample in [
            "anon_secure_sessions 2\n",
            "anon_secure_replay_entries 5\n",
            "anon_secure_datagrams_dropped_total{reason=\"not_ours\"} 7\n",
            "anon_secure_handshakes_ignored_total{reason=\"replayed\"} 1\n",
            "anon_secure_handshakes_ignored_total{reason=\"unlisted_client\"} 3\n",
            "anon_log_lines_dropped_total{reason=\"opaque\"} 9\n",
            "anon_proxy_requests_total{outcome=\"cache\"} 4\n",
            "anon_proxy_origin_requests_total{kind=\"all\"} 2\n",
        ] {
            assert!(text.contains(sample), "no {sample:?} in\n{text}");
        }
        // Each metric declared once, its samples together under it.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(declared.insert(line.to_owned()), "{line} twice");
        }
    }
}
