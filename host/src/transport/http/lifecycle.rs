//! How the HTTP server starts and stops: the warning when it listens unguarded, the shutdown signal,
//! and closing the listening socket without resetting connections a proxy already sent a request
//! on. Knows nothing of routes or flows.
//!
//! Closing a listening socket resets every connection still in its accept queue: a proxy that
//! had sent a POST on one gets a reset and (rightly) does not resend it. So at the end of the
//! drain the host first stops the kernel from queueing new connections (a socket filter that
//! drops incoming SYNs; the proxy's SYN retransmit later meets the closed port and is refused,
//! which every proxy retries elsewhere), then accepts what is queued, and only then closes.

use std::time::{Duration, Instant};

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The listening socket, to quiesce before it is closed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listening {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
}

impl Listening {
    pub(crate) fn of(listener: &tokio::net::TcpListener) -> Listening {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            Listening {
                fd: listener.as_raw_fd(),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = listener;
            Listening {}
        }
    }

    /// Stops new connections from being queued, then waits (up to `limit`) until the server
    /// has accepted every connection already queued. Linux only; elsewhere it returns at once.
    /// The caller must keep the listener open (and accepting) until this returns.
    pub(crate) async fn quiesce(self, limit: Duration) {
        #[cfg(target_os = "linux")]
        {
            if let Err(err) = drop_new_syns(self.fd) {
                tracing::warn!("cannot stop new connections before closing: {err}");
                return;
            }
            let started = Instant::now();
            // Handshakes already under way complete within a round trip; then the queue only
            // shrinks.
            tokio::time::sleep(Duration::from_millis(5)).await;
            while queued(self.fd) && started.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (limit, Instant::now());
        }
    }
}

/// Attaches a classic BPF socket filter that drops TCP segments with SYN set and ACK clear
/// (new connection attempts) and passes everything else, so handshakes under way complete.
/// A TCP socket filter sees the packet from the TCP header: byte 13 holds the flags.
#[cfg(target_os = "linux")]
fn drop_new_syns(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    const SO_ATTACH_FILTER: libc::c_int = 26;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut program = [
        op(0x30, 0, 0, 13),       // ldb [13]          TCP flags
        op(0x54, 0, 0, 0x12),     // and #(SYN|ACK)
        op(0x15, 0, 1, 0x02),     // jeq #SYN          ? drop : accept
        op(0x06, 0, 0, 0),        // ret #0            drop
        op(0x06, 0, 0, u32::MAX), // ret #-1           accept the whole segment
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at a valid program for the duration of the call; the kernel
    // copies it.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            std::ptr::addr_of!(fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a connection waits in the accept queue.
#[cfg(target_os = "linux")]
fn queued(fd: std::os::fd::RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & libc::POLLIN != 0
}

/// A host reachable from other machines should say so when nothing guards it.
pub(super) fn warn_if_exposed(
    options: &super::settings::Settings,
    bound: std::net::IpAddr,
    credentials: bool,
) {
    if bound.is_loopback() {
        return;
    }
    if !credentials {
        tracing::warn!(
            "listening on {bound}, reachable from other machines, without an API key: anyone \
             who can reach this port can run every flow; set --api-key (or http.api_key, \
             auth.keys, auth.jwt)"
        );
    }
    if options.allowed_hosts.is_empty() {
        tracing::warn!(
            "requests are accepted only for the Host names {}; add the names clients use \
             (a Service, an Ingress, this machine's name) to http.allowed_hosts",
            options.effective_allowed_hosts().join(", ")
        );
    }
}
