//! Socket setup: dual-stack server socket, client socket of the server's
//! family, generous kernel buffers.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel buffer size asked for; the kernel may grant less, which is fine.
const SOCKET_BUFFER: usize = 4 << 20;

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: many clients at once need room for bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    Ok(socket)
}

/// Binds the server's socket. Without an explicit address it listens on
/// every IPv6 and IPv4 address at once (`[::]` with IPV6_V6ONLY off), or on
/// every IPv4 address where the host has no IPv6.
pub fn bind_server(bind: Option<std::net::IpAddr>, port: u16) -> io::Result<std::net::UdpSocket> {
    let socket = match bind {
        Some(ip) => {
            let addr = SocketAddr::new(ip, port);
            let socket = socket_for(addr)?;
            socket.bind(&addr.into())?;
            socket
        }
        None => {
            let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
            let dual = socket_for(v6).and_then(|s| {
                s.set_only_v6(false)?;
                s.bind(&v6.into())?;
                Ok(s)
            });
            match dual {
                Ok(s) => s,
                Err(e) if is_no_ipv6(&e) => {
                    let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
                    let s = socket_for(v4)?;
                    s.bind(&v4.into())?;
                    s
                }
                Err(e) => return Err(e),
            }
        }
    };
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn is_no_ipv6(e: &io::Error) -> bool {
    // EAFNOSUPPORT (97) or EADDRNOTAVAIL on hosts with IPv6 disabled.
    e.raw_os_error() == Some(97) || e.kind() == io::ErrorKind::AddrNotAvailable
}

/// A client socket connected to `server`, so that only the server's
/// datagrams reach it and ICMP errors are reported.
pub fn connect_client(server: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = socket_for(server)?;
    socket.bind(&local.into())?;
    socket.connect(&server.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Undoes IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) for display.
pub fn display_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// A tokio UDP socket with batched I/O where the OS offers it (quinn-udp):
/// several datagrams per receive call (recvmmsg, GRO) and several
/// equal-sized datagrams to one peer per send call (GSO).
#[derive(Debug)]
pub struct BatchSocket {
    socket: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    /// Receive buffers, one per datagram (or GRO train) of a batch.
    rx: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
    /// Messages the last receive call returned.
    last_messages: usize,
}

/// Receive buffers per batch, and the size of each: a GRO train of 64
/// datagrams at most 1500 bytes, or one datagram of any size.
const RX_BATCH: usize = 8;
const RX_BUF: usize = 64 * 1024 + 1500 * 64;

impl BatchSocket {
    /// Wraps a bound (and, for a client, connected) non-blocking socket.
    /// Needs to run inside the tokio runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<BatchSocket> {
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(BatchSocket {
            socket,
            state,
            rx: (0..RX_BATCH).map(|_| vec![0u8; RX_BUF]).collect(),
            meta: vec![quinn_udp::RecvMeta::default(); RX_BATCH],
            last_messages: 0,
        })
    }

    /// Most datagrams one send call may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Waits until the socket is readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Receives one batch without waiting and hands every datagram in it to
    /// `each` (source, bytes). Returns the number of datagrams, or
    /// `WouldBlock` when none is waiting.
    pub fn try_recv_batch(&mut self, each: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        self.recv_batch(true, each)
    }

    /// As `try_recv_batch`, but always a system call, whatever tokio last
    /// learnt of the socket's readiness: for busy polling, which must not
    /// wait for a turn of tokio's reactor (an epoll call) to learn that a
    /// datagram came. tokio's readiness is left as it was, so the next wait
    /// for readability may wake once for nothing, but never misses a
    /// datagram: tokio clears readiness only when a receive through it
    /// found the socket empty, and edge-triggered epoll reports every
    /// arrival after that.
    pub fn recv_batch_now(&mut self, each: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        self.recv_batch(false, each)
    }

    fn recv_batch(&mut self, via_tokio: bool, mut each: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let BatchSocket { socket, state, rx, meta, last_messages } = self;
        let socket = &*socket;
        let mut slices: Vec<std::io::IoSliceMut<'_>> = rx.iter_mut().map(|b| std::io::IoSliceMut::new(b)).collect();
        *last_messages = 0;
        let mut recv = || state.recv(socket.into(), &mut slices, meta);
        let n = if via_tokio { socket.try_io(tokio::io::Interest::READABLE, recv)? } else { recv()? };
        *last_messages = n;
        let mut count = 0;
        for (m, buf) in meta.iter().zip(rx.iter()).take(n) {
            let data = buf.get(..m.len).unwrap_or_default();
            // A GRO train holds datagrams of `stride` bytes, the last shorter.
            for datagram in data.chunks(m.stride.max(1)) {
                each(m.addr, datagram);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Whether the last receive call found the socket's queue emptied: it
    /// returned fewer messages than it had buffers for. Reading again would
    /// only return `WouldBlock`; a loop that stops here answers first, which
    /// takes a system call off every round trip of stop-and-wait.
    pub fn drained(&self) -> bool {
        self.last_messages < RX_BATCH
    }

    /// Sends `contents` to `dest`: one datagram, or several of
    /// `segment_size` bytes each (the last may be shorter) with GSO.
    pub async fn send(&self, dest: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
        let transmit = quinn_udp::Transmit { destination: dest, ecn: None, contents, segment_size, src_ip: None };
        loop {
            match self
                .socket
                .try_io(tokio::io::Interest::WRITABLE, || self.state.try_send((&self.socket).into(), &transmit))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.socket.writable().await?,
                other => return other,
            }
        }
    }
}
