//! What the simulator needs of a server and a client, so that one loop runs
//! the plaintext core and secure mode alike.

use std::net::SocketAddr;
use std::time::Instant;

use anon_proto::secure::{SecureClient, SecureServer};
use anon_proto::wire::Header;
use anon_proto::{ClientConn, ConnectionError, Server, ServerStats};

/// A server endpoint under simulation.
pub trait SimEndpoint {
    /// A datagram from `from`.
    fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]);
    /// Timers due.
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram into `buf` (cleared first) and its destination.
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<SocketAddr>;
    /// The next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Open connections.
    fn connection_count(&self) -> usize;
    /// Drops pending events.
    fn drain_events(&mut self);
    /// Counters.
    fn stats(&self) -> ServerStats;
    /// The header the packet log shows for a datagram just sent.
    fn sent_header(&self, datagram: &[u8]) -> Option<Header>;
    /// The header the packet log shows for a datagram just handled.
    fn received_header(&self, datagram: &[u8]) -> Option<Header>;
}

/// A client connection under simulation.
pub trait SimPeer {
    /// A datagram from the server.
    fn handle(&mut self, now: Instant, datagram: &[u8]);
    /// Timers due.
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram into `buf`.
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool;
    /// The next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Page bytes ready.
    fn readable(&self) -> &[u8];
    /// Takes `n` of them.
    fn consume(&mut self, n: usize);
    /// The whole page is in.
    fn is_finished(&self) -> bool;
    /// How it ended, once it has.
    fn outcome(&self) -> Option<&Result<(), ConnectionError>>;
    /// Drops pending events.
    fn drain_events(&mut self);
    /// The header the packet log shows for a datagram just sent.
    fn sent_header(&self, datagram: &[u8]) -> Option<Header>;
    /// The header the packet log shows for a datagram just handled.
    fn received_header(&self, datagram: &[u8]) -> Option<Header>;
}

fn plain_header(datagram: &[u8]) -> Option<Header> {
    Header::decode(datagram).ok().map(|(h, _)| h)
}

impl SimEndpoint for Server {
    fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        Server::handle(self, now, from, datagram);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Server::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<SocketAddr> {
        Server::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Server::poll_timeout(self)
    }
    fn connection_count(&self) -> usize {
        Server::connection_count(self)
    }
    fn drain_events(&mut self) {
        while self.poll_event().is_some() {}
    }
    fn stats(&self) -> ServerStats {
        Server::stats(self)
    }
    fn sent_header(&self, datagram: &[u8]) -> Option<Header> {
        plain_header(datagram)
    }
    fn received_header(&self, datagram: &[u8]) -> Option<Header> {
        plain_header(datagram)
    }
}

impl SimEndpoint for SecureServer {
    fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.handle_kind(now, from, datagram);
    }
    fn handle_timeout(&mut self, now: Instant) {
        SecureServer::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<SocketAddr> {
        buf.clear();
        self.poll_transmit_append(now, buf).map(|t| t.peer)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        SecureServer::poll_timeout(self)
    }
    fn connection_count(&self) -> usize {
        SecureServer::connection_count(self)
    }
    fn drain_events(&mut self) {
        while self.poll_event().is_some() {}
    }
    fn stats(&self) -> ServerStats {
        SecureServer::stats(self)
    }
    fn sent_header(&self, datagram: &[u8]) -> Option<Header> {
        // A plaintext datagram (plaintext on too) has no inner header; a
        // refusal has none to show.
        if self.last_sent_was_plain() { plain_header(datagram) } else { self.last_inner_sent() }
    }
    fn received_header(&self, datagram: &[u8]) -> Option<Header> {
        if self.last_was_plain() { plain_header(datagram) } else { self.last_inner() }
    }
}

impl SimPeer for ClientConn {
    fn handle(&mut self, now: Instant, datagram: &[u8]) {
        ClientConn::handle(self, now, datagram);
    }
    fn handle_timeout(&mut self, now: Instant) {
        ClientConn::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        ClientConn::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ClientConn::poll_timeout(self)
    }
    fn readable(&self) -> &[u8] {
        ClientConn::readable(self)
    }
    fn consume(&mut self, n: usize) {
        ClientConn::consume(self, n);
    }
    fn is_finished(&self) -> bool {
        ClientConn::is_finished(self)
    }
    fn outcome(&self) -> Option<&Result<(), ConnectionError>> {
        ClientConn::outcome(self)
    }
    fn drain_events(&mut self) {
        while self.poll_event().is_some() {}
    }
    fn sent_header(&self, datagram: &[u8]) -> Option<Header> {
        plain_header(datagram)
    }
    fn received_header(&self, datagram: &[u8]) -> Option<Header> {
        plain_header(datagram)
    }
}

impl SimPeer for SecureClient {
    fn handle(&mut self, now: Instant, datagram: &[u8]) {
        SecureClient::handle(self, now, datagram);
    }
    fn handle_timeout(&mut self, now: Instant) {
        SecureClient::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        SecureClient::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        SecureClient::poll_timeout(self)
    }
    fn readable(&self) -> &[u8] {
        SecureClient::readable(self)
    }
    fn consume(&mut self, n: usize) {
        SecureClient::consume(self, n);
    }
    fn is_finished(&self) -> bool {
        SecureClient::is_finished(self)
    }
    fn outcome(&self) -> Option<&Result<(), ConnectionError>> {
        SecureClient::outcome(self)
    }
    fn drain_events(&mut self) {
        while self.poll_event().is_some() {}
    }
    fn sent_header(&self, _: &[u8]) -> Option<Header> {
        self.last_inner_sent()
    }
    fn received_header(&self, _: &[u8]) -> Option<Header> {
        self.last_inner_received()
    }
}
