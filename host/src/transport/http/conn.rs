//! Connections: the bounds that hold before any request is routed or any key is checked. A
//! socket that sends nothing, half a request line or half its headers is closed after
//! `http.header_timeout`; an idle keep-alive connection after `http.keepalive_timeout`; past
//! `http.max_connections` a new connection gets a one-line 503 and is closed at once. A
//! request's body is bounded by the body middleware in `mod.rs` (`http.body_timeout`).
//!
//! The clocks live in the socket wrapper ([`Guarded`]): hyper reads through it, and when a
//! read would wait, the wrapper arms the deadline of the connection's phase. A connection is
//! `Waiting` (fresh, or between requests), `Head` (bytes of a request arrived, the request is
//! not routed yet) or `Busy` (requests in flight; [`busy`] marks them from routing until the
//! response body is dropped). A busy connection has no clock here: an SSE response that runs
//! for an hour is not idle, and its body reads are bounded by the body middleware.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
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
    state: Arc<State>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// A connection's phase, in one atomic word (read on every read that would wait, written on
/// every request): the low 16 bits count requests in flight (busy when not 0), bit 16 says
/// whether bytes of a request head arrived, bit 17 whether a request was ever routed, and the
/// high bits hold when the phase began, in milliseconds since the connection was accepted.
#[derive(Debug)]
struct State {
    word: AtomicU64,
    accepted: Instant,
}

const BUSY: u64 = 0xffff;
const HEAD: u64 = 1 << 16;
const SERVED: u64 = 1 << 17;
const SINCE_SHIFT: u32 = 18;

impl State {
    fn new() -> State {
        State {
            word: AtomicU64::new(0),
            accepted: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    /// Bytes arrived: a waiting connection starts reading a head.
    fn bytes_arrived(&self) {
        let word = self.word.load(Ordering::Relaxed);
        if word & (BUSY | HEAD) == 0 {
            let head = (word & SERVED) | HEAD | (self.now_ms() << SINCE_SHIFT);
            let _ = self
                .word
                .compare_exchange(word, head, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// A request was routed.
    fn begin(&self) {
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let busy = (word & BUSY).saturating_add(1).min(BUSY);
                Some((word & !(BUSY | HEAD)) | SERVED | busy)
            });
    }

    /// A response was written to its end (or dropped).
    fn end(&self) {
        let now = self.now_ms();
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let busy = (word & BUSY).saturating_sub(1);
                Some(if busy == 0 {
                    SERVED | (now << SINCE_SHIFT)
                } else {
                    (word & !BUSY) | busy
                })
            });
    }

    /// The deadline of the phase and the setting that sets it; none while busy.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let word = self.word.load(Ordering::Relaxed);
        if word & BUSY != 0 {
            return None;
        }
        let since = self.accepted + Duration::from_millis(word >> SINCE_SHIFT);
        if word & HEAD != 0 || word & SERVED == 0 {
            // Reading a head, or a new connection that has sent nothing yet.
            Some((since + limits.header_timeout, HEADER_TIMEOUT))
        } else {
            Some((since + limits.keepalive_timeout, "http.keepalive_timeout"))
        }
    }
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
            let state = Arc::new(State::new());
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
            state: Arc::new(State::new()),
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
    state: Arc<State>,
    limits: Limits,
    /// The instant `sleep` is armed for, if armed. It is armed lazily: a deadline later than
    /// the armed one waits for the sleep to fire and is armed then (so a keep-alive
    /// connection serving a request a millisecond does not touch the timer per request).
    deadline: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
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
                    this.state.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => loop {
                let Some((deadline, key)) = this.state.deadline(&this.limits) else {
                    return Poll::Pending;
                };
                if this.deadline.is_none_or(|armed| armed > deadline) {
                    this.sleep.as_mut().reset(deadline);
                    this.deadline = Some(deadline);
                }
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The armed instant passed: the phase's own deadline may be later.
                this.deadline = None;
                if Instant::now() >= deadline {
                    metrics::counter!(m::CONNECTIONS_TIMED_OUT, "timeout" => key).increment(1);
                    tracing::debug!("connection closed: nothing complete within {key}");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing complete within {key}"),
                    )));
                }
            },
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

/// Marks the request's connection busy from routing until the response body is dropped
/// (sent or abandoned); then its keep-alive clock starts. [`carry`] hands the mark to the
/// response. Called by [`super::layers::around_router`].
pub(crate) fn busy(request: &Request) -> Option<Busy> {
    let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<Peer>>()?;
    peer.state.begin();
    Some(Busy(Done(peer.state.clone())))
}

/// A request's busy mark ([`busy`]).
pub(crate) struct Busy(Done);

/// The response, carrying the request's busy mark until its body is done, and its `tracing`
/// span, entered while the body is polled (what a stream logs carries the trace ids).
pub(crate) fn carry(
    response: Response,
    busy: Option<Busy>,
    span: Option<tracing::Span>,
) -> Response {
    if busy.is_none() && span.is_none() {
        return response;
    }
    response.map(|body| {
        Body::new(Tracked {
            inner: body,
            _done: busy.map(|Busy(done)| done),
            span,
        })
    })
}

/// Ends a request's busy mark when dropped.
struct Done(Arc<State>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that carries its request's busy mark and `tracing` span.
struct Tracked {
    inner: Body,
    _done: Option<Done>,
    span: Option<tracing::Span>,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let _in_span = this.span.as_ref().map(tracing::Span::enter);
        Pin::new(&mut this.inner).poll_frame(cx)
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
