//! The I/O drivers: they own the UDP socket and the clock, and move
//! datagrams and time between them and the sans-IO core.

pub mod client;
pub mod metrics;
pub mod server;
pub mod udp;

/// Largest UDP payload: a receive buffer this large never truncates.
pub(crate) const MAX_DATAGRAM: usize = 65_535;

/// How often a driver that busy polls (and so never sleeps) lets tokio's
/// reactor turn: signals come through it, and the server's metrics endpoint
/// is another task on its thread.
pub(crate) const REACTOR_TURN: std::time::Duration = std::time::Duration::from_millis(1);

/// Sleeps until `deadline`, or forever without one (the other branches of
/// the driver's `select!` then decide).
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// SIGHUP, for reopening the packet log (logrotate). Without a handler the
/// default action would end the server.
#[derive(Debug)]
pub struct Hangup {
    #[cfg(unix)]
    sig: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Registers the handler; needs to run inside the runtime. Where it
    /// cannot be registered, [`hangup`] never completes.
    pub fn register() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Hangup { sig: signal(SignalKind::hangup()).ok() }
        }
        #[cfg(not(unix))]
        Hangup {}
    }
}

/// Completes on the next SIGHUP.
pub async fn hangup(h: &mut Hangup) {
    #[cfg(unix)]
    if let Some(sig) = h.sig.as_mut() {
        if sig.recv().await.is_some() {
            return;
        }
    }
    let _ = h;
    std::future::pending::<()>().await
}

/// SIGINT and SIGTERM, handled from the moment this is created (tokio's
/// `ctrl_c` would register only on its first poll): a signal from then on
/// stops the program cleanly instead of killing it.
#[derive(Debug)]
pub struct StopSignals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Registers the handlers; needs to run inside the runtime.
    pub fn register() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Completes on the next signal; can be awaited again for the one after.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
