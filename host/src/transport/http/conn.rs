//! Connections: the bounds that hold before any request is routed or any key is checked. A
//! socket that sends nothing, half a request line or half its headers is closed after
//! `http.header_timeout`; an idle keep-alive connection after `http.keepalive_timeout`; past
//! `http.max_connections` a new connection gets a one-line 503 and is closed at once. A
//! request's body is bounded by the body middleware in `mod.rs` (`http.body_timeout`).
//!
//! The clocks live in the socket wrapper ([`Guarded`]): hyper reads through it, and when a
//! read would wait, the wrapper arms the deadline of the connection's phase. A connection is
//! `Waiting` (fresh, or between requests), `Head` (bytes of a request arrived, the request is
//! not routed yet) or `Busy` (requests in flight; [`track`] marks them from routing until the
//! response body is dropped). A busy connection has no clock here: an SSE response that runs
//! for an hour is not idle, and its body reads are bounded by the body middleware.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics as m;

const HEADER_TIMEOUT: &str = "http.header_timeout";

/// The connection bounds (`http.header_timeout`, `http.keepalive_timeout`,
/// `http.max_connections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// The listening socket with its connection bound.
pub(crate) struct Listener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: Limits,
}

impl Listener {
    pub(crate) fn new(inner: TcpListener, limits: Limits) -> Listener {
        Listener {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
        }
    }
}

/// What a request knows of its connection (as `ConnectInfo<Peer>`).
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    state: Arc<Mutex<Phase>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Peer {
        stream.remote_addr().clone()
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Nothing of a request has arrived since `since`; closed after `limit` (the setting
    /// named `key`).
    Waiting {
        since: Instant,
        limit: Duration,
        key: &'static str,
    },
    /// Part of a request head arrived at `since`.
    Head { since: Instant },
    /// This many requests are routed and not yet answered to the end.
    Busy(usize),
}

impl axum::serve::Listener for Listener {
    type Io = Guarded;
    type Addr = Peer;

    async fn accept(&mut self) -> (Guarded, Peer) {
        loop {
            let (tcp, _) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors (or a connection reset while queued): wait a
                    // little rather than spin; the connections that hold them will end.
                    tracing::error!("accept error: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Streams are many small writes: do not let Nagle hold a chunk back for an ACK.
            let _ = tcp.set_nodelay(true);
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                refuse(tcp, self.limits.max_connections);
                continue;
            };
            metrics::gauge!(m::CONNECTIONS).increment(1.0);
            let state = Arc::new(Mutex::new(Phase::Waiting {
                since: Instant::now(),
                limit: self.limits.header_timeout,
                key: HEADER_TIMEOUT,
            }));
            let io = Guarded {
                tcp,
                state: state.clone(),
                limits: self.limits,
                deadline: None,
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                _permit: permit,
            };
            return (io, Peer { state });
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        self.inner.local_addr()?;
        Ok(Peer {
            state: Arc::new(Mutex::new(Phase::Busy(0))),
        })
    }
}

/// Past `http.max_connections`: a short 503 if the socket takes it now, then close.
fn refuse(tcp: TcpStream, max: usize) {
    metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
    tracing::warn!(
        "connection refused: {max} connections are open (http.max_connections); raise it, \
         or the open-file limit it derives from"
    );
    let body = format!(
        "{{\"detail\":\"the server has {max} connections open (http.max_connections); retry shortly\"}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(answer.as_bytes());
}

/// A TCP stream whose reads time out by the connection's phase.
pub(crate) struct Guarded {
    tcp: TcpStream,
    state: Arc<Mutex<Phase>>,
    limits: Limits,
    /// The instant `sleep` is armed for, if armed.
    deadline: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    }
}

impl Guarded {
    /// The deadline of the current phase, moving `Waiting` to `Head` when bytes arrived.
    fn deadline(&self, got_bytes: bool) -> Option<(Instant, &'static str)> {
        let mut phase = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if got_bytes {
            if let Phase::Waiting { .. } = *phase {
                *phase = Phase::Head {
                    since: Instant::now(),
                };
            }
            return None;
        }
        match *phase {
            Phase::Waiting { since, limit, key } => Some((since + limit, key)),
            Phase::Head { since } => Some((since + self.limits.header_timeout, HEADER_TIMEOUT)),
            Phase::Busy(_) => None,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadline(true);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let Some((deadline, key)) = this.deadline(false) else {
                    return Poll::Pending;
                };
                if this.deadline != Some(deadline) {
                    this.sleep.as_mut().reset(deadline);
                    this.deadline = Some(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        metrics::counter!(m::CONNECTIONS_TIMED_OUT, "timeout" => key).increment(1);
                        tracing::debug!("connection closed: nothing complete within {key}");
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("nothing complete within {key}"),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Marks the connection busy from routing until the response body is dropped (sent or
/// abandoned); then its keep-alive clock starts.
pub(crate) async fn track(
    axum::extract::State(limits): axum::extract::State<Limits>,
    request: Request,
    next: Next,
) -> Response {
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<Peer>>().cloned() else {
        return next.run(request).await;
    };
    {
        let mut phase = peer.state.lock().unwrap_or_else(|e| e.into_inner());
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
    }
    let done = Done {
        state: peer.state,
        keepalive: limits.keepalive_timeout,
    };
    let response = next.run(request).await;
    response.map(|body| {
        Body::new(Tracked {
            inner: body,
            _done: done,
        })
    })
}

/// Ends a request's busy mark when dropped.
struct Done {
    state: Arc<Mutex<Phase>>,
    keepalive: Duration,
}

impl Drop for Done {
    fn drop(&mut self) {
        let mut phase = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Waiting {
                since: Instant::now(),
                limit: self.keepalive,
                key: "http.keepalive_timeout",
            },
        };
    }
}

/// A response body that carries its request's busy mark.
struct Tracked {
    inner: Body,
    _done: Done,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The default `http.max_connections`: three quarters of the open-file limit, leaving the
/// rest for op workers, upstream LLM and MCP connections, plugin libraries and flow files.
pub(crate) fn default_max_connections() -> usize {
    let limit = open_file_limit().unwrap_or(1024);
    (limit.saturating_mul(3) / 4).clamp(64, 1 << 20) as usize
}

fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit for the call to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
            return Some(limit.rlim_cur as u64);
        }
        None
    }
    #[cfg(not(unix))]
    {
        None
    }
}
