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
