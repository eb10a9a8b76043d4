//! The exporter's queue: a span that ends is written as OTLP protobuf by the thread that ends
//! it into one bounded buffer (`OTEL_BSP_MAX_QUEUE_SIZE` spans, 2,048), and one thread sends
//! the buffer in batches (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512) to the OTLP receiver. A full
//! buffer drops the span at once and counts it
//! (`flowhost_trace_spans_dropped_total{reason="queue_full"}`): a stopped or hanging receiver
//! never slows a run.
//!
//! Nothing is allocated per span on the way out: the two span buffers take turns (the runs
//! fill one while the thread sends the other), and a batch is sent as a small head (the
//! envelope's resource and scope) and its spans where the queue wrote them ([`Parts`]), both
//! lent to the HTTP client and given back when it is done with them ([`Lent`]). A fresh body
//! per batch was a large allocation freed on another thread, its pages given back to the
//! system and faulted in again on every batch; then a copy of every batch into one body.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanContext, TraceState};
use opentelemetry::KeyValue;

use super::record::Record;
use super::settings::Resolved;

/// What the runs and the exporter's thread share.
#[derive(Debug)]
pub(super) struct Queue {
    state: Mutex<State>,
    /// Wakes the thread: a batch is full, or the queue closed. A span
    /// that does not fill a batch wakes nobody (a wake per span was a context switch per
    /// span: a third of a traced request's time).
    wake: Condvar,
    capacity: usize,
    batch: usize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct State {
    /// The spans written so far (`ScopeSpans.spans` fields, one after another).
    spans: Vec<u8>,
    count: usize,
    /// Where each whole batch ends in `spans`.
    cuts: Vec<usize>,
    closed: bool,
}

/// The most a buffer keeps between batches: a burst of large spans (an op's `ctx.span` may set
/// long attributes) grows the buffers, and they go back to this once it has been sent.
const KEEP: usize = 4 << 20;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn dropped(reason: &'static str) -> &'static metrics::Counter {
    static FULL: OnceLock<metrics::Counter> = OnceLock::new();
    static FAILED: OnceLock<metrics::Counter> = OnceLock::new();
    let cell = if reason == "queue_full" {
        &FULL
    } else {
        &FAILED
    };
    cell.get_or_init(|| metrics::counter!(crate::metrics::SPANS_DROPPED, "reason" => reason))
}

fn exported() -> &'static metrics::Counter {
    static EXPORTED: OnceLock<metrics::Counter> = OnceLock::new();
    EXPORTED.get_or_init(|| metrics::counter!(crate::metrics::SPANS_EXPORTED))
}

impl Queue {
    /// Queues an ended span, written here (on the caller's thread) into the queue's buffer,
    /// or drops and counts it when the queue is full or closed. Written under the lock: its
    /// attributes were written as they were set, what is left is ids, times and a copy.
    pub(super) fn push(&self, context: &SpanContext, record: &Record, end: u64) {
        // Made before the lock (a caller's `tracestate`: rare).
        let trace_state =
            (*context.trace_state() != TraceState::NONE).then(|| context.trace_state().header());
        let mut state = lock(&self.state);
        if state.closed || state.count >= self.capacity {
            drop(state);
            dropped("queue_full").increment(1);
            return;
        }
        super::otlp::span(
            &mut state.spans,
            (context, trace_state.as_deref()),
            record,
            end,
        );
        state.count += 1;
        if state.count.is_multiple_of(self.batch) {
            let at = state.spans.len();
            state.cuts.push(at);
            if state.count == self.batch {
                self.wake.notify_one();
            }
        }
    }

    /// Sends what is queued and stops the thread; waits for it at most `timeout`.
    pub(super) fn shutdown(&self, timeout: Duration) -> Result<(), String> {
        {
            let mut state = lock(&self.state);
            if state.closed {
                return Ok(());
            }
            // The thread sends what is queued, then ends.
            state.closed = true;
        }
        self.wake.notify_one();
        let Some(thread) = lock(&self.thread).take() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return Err(format!("not sent within {}s", timeout.as_secs_f64()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.join();
        Ok(())
    }
}

/// A request body lent to the HTTP client: its buffer comes back to `home` when the client
/// drops it.
struct Lent {
    body: Vec<u8>,
    home: Arc<Mutex<Vec<u8>>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut home = lock(&self.home);
        if home.capacity() < self.body.capacity() && self.body.capacity() <= KEEP {
            *home = std::mem::take(&mut self.body);
        }
    }
}

/// A request body sent as the pieces it is made of (the envelope's head, then the spans
/// where the queue wrote them): nothing copied into one buffer first.
struct Parts {
    pieces: std::collections::VecDeque<bytes::Bytes>,
    left: u64,
}

impl Parts {
    fn new<const N: usize>(pieces: [bytes::Bytes; N]) -> Parts {
        Parts {
            left: pieces.iter().map(|piece| piece.len() as u64).sum(),
            pieces: pieces
                .into_iter()
                .filter(|piece| !piece.is_empty())
                .collect(),
        }
    }
}

impl http_body::Body for Parts {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let piece = self.pieces.pop_front();
        if let Some(piece) = &piece {
            self.left -= piece.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|piece| Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// Sends export bodies to the receiver: reqwest on a runtime of the exporter's own thread.
struct Sender {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    /// Parsed once (reqwest parsed a text URL again on every send).
    endpoint: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    timeout: Duration,
    /// The resource's attributes, written once.
    resource: Vec<u8>,
    body: Arc<Mutex<Vec<u8>>>,
    /// The receiver redirects (307, 308): bodies go whole, so that reqwest can follow.
    whole: bool,
}

impl Sender {
    /// Sends one batch: `spans` as the queue wrote them, after a head the envelope needs.
    fn send(&mut self, spans: bytes::Bytes) -> Result<(), String> {
        let mut head = std::mem::take(&mut *lock(&self.body));
        super::otlp::envelope_head(
            &self.resource,
            ("flowhost", Some(env!("CARGO_PKG_VERSION"))),
            spans.len(),
            &mut head,
        );
        let head = bytes::Bytes::from_owner(Lent {
            body: head,
            home: self.body.clone(),
        });
        if !self.whole {
            let body = reqwest::Body::wrap(Parts::new([head.clone(), spans.clone()]));
            let status = self.post(body)?;
            // A body sent in pieces cannot be sent again, so reqwest hands back a 307 or 308
            // instead of following it: from now on this receiver gets whole bodies (a copy
            // per batch), which it follows as before.
            if !matches!(status.as_u16(), 307 | 308) {
                return answered(status);
            }
            self.whole = true;
        }
        let mut whole = Vec::with_capacity(head.len() + spans.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(&spans);
        answered(self.post(reqwest::Body::from(whole))?)
    }

    /// One POST of `body`; its status once the answer's body is read.
    fn post(&self, body: reqwest::Body) -> Result<reqwest::StatusCode, String> {
        let request = self
            .client
            .post(self.endpoint.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body);
        let timeout = self.timeout;
        // One deadline for the answer and its body (a partial success at most, read to keep
        // the connection); the messages never show the URL (it may carry credentials).
        self.runtime.block_on(async move {
            let answer = async move {
                let response = request
                    .send()
                    .await
                    .map_err(|err| format!("cannot reach the receiver: {}", err.without_url()))?;
                let status = response.status();
                let _ = response.bytes().await;
                Ok(status)
            };
            tokio::time::timeout(timeout, answer)
                .await
                .map_err(|_| format!("no answer within {}s", timeout.as_secs_f64()))?
        })
    }
}

fn answered(status: reqwest::StatusCode) -> Result<(), String> {
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}

/// Builds the sender and starts the exporter's thread.
pub(super) fn start(resolved: &Resolved) -> Result<Arc<Queue>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("telemetry: cannot start the exporter's runtime: {err}"))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &resolved.headers {
        let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) else {
            return Err(format!(
                "telemetry: the export header `{name}` is not a valid HTTP header (telemetry.headers, OTEL_EXPORTER_OTLP_HEADERS)"
            ));
        };
        headers.insert(name, value);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(resolved.timeout)
        .build()
        .map_err(|err| format!("telemetry: cannot build the HTTP client: {err}"))?;
    let endpoint = reqwest::Url::parse(&resolved.endpoint).map_err(|err| {
        format!(
            "telemetry: the traces endpoint `{}` is not a URL: {err} (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, telemetry.traces_endpoint or telemetry.endpoint)",
            super::settings::shown(&resolved.endpoint)
        )
    })?;
    let mut resource = resolved.resource.clone();
    resource.extend([
        KeyValue::new("telemetry.sdk.name", "flowhost"),
        KeyValue::new("telemetry.sdk.language", "rust"),
        KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ]);
    let sender = Sender {
        client,
        runtime,
        endpoint,
        headers,
        timeout: resolved.timeout,
        resource: super::otlp::resource(&resource),
        body: Arc::default(),
        whole: false,
    };
    let queue = Arc::new(Queue {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        capacity: resolved.queue,
        batch: resolved.batch,
        thread: Mutex::new(None),
    });
    let delay = resolved.delay;
    let thread = {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || send_batches(sender, &queue, delay))
            .map_err(|err| format!("telemetry: cannot start the exporter's thread: {err}"))?
    };
    *lock(&queue.thread) = Some(thread);
    Ok(queue)
}

/// The exporter's thread: a batch goes when it is full, when `delay` has passed, and at the
/// end.
fn send_batches(mut sender: Sender, queue: &Queue, delay: Duration) {
    let mut last_warning: Option<Instant> = None;
    let mut send = |batch: bytes::Bytes, count: usize| {
        let count = count as u64;
        match sender.send(batch) {
            Ok(()) => exported().increment(count),
            Err(err) => {
                dropped("export_failed").increment(count);
                // One line a minute at most: a receiver that is down would fill the log.
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!("telemetry: {count} spans not exported: {err} (counted in flowhost_trace_spans_dropped_total)");
                }
            }
        }
    };
    // Two buffers take turns: the runs fill one while this sends the other. The one being
    // sent is lent to the request bodies (each batch a slice of it) and comes back to
    // `home` when the last of them is dropped.
    let mut spans: Vec<u8> = Vec::new();
    let home: Arc<Mutex<Vec<u8>>> = Arc::default();
    let mut cuts: Vec<usize> = Vec::new();
    loop {
        let (closed, count) = {
            let mut state = lock(&queue.state);
            if state.count < queue.batch && !state.closed {
                state = queue
                    .wake
                    .wait_timeout(state, delay)
                    .map_or_else(|p| p.into_inner().0, |(state, _)| state);
            }
            std::mem::swap(&mut state.spans, &mut spans);
            std::mem::swap(&mut state.cuts, &mut cuts);
            let count = std::mem::take(&mut state.count);
            (state.closed, count)
        };
        let written = bytes::Bytes::from_owner(Lent {
            body: std::mem::take(&mut spans),
            home: home.clone(),
        });
        let mut from = 0;
        let mut left = count;
        for &cut in &cuts {
            send(written.slice(from..cut), queue.batch);
            from = cut;
            left -= queue.batch;
        }
        if left > 0 {
            send(written.slice(from..), left);
        }
        drop(written);
        // Back once the client dropped the bodies (a fresh one otherwise).
        spans = std::mem::take(&mut *lock(&home));
        spans.clear();
        cuts.clear();
        if closed {
            return;
        }
    }
}
