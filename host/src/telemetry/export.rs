//! The exporter's queue: ended spans go into a bounded buffer (`OTEL_BSP_MAX_QUEUE_SIZE`,
//! 2,048) and one thread sends them in batches to the OTLP receiver. A full buffer drops the
//! span at once and counts it (`flowhost_trace_spans_dropped_total{reason="queue_full"}`): a
//! stopped or hanging receiver never slows a run. The SDK's own batch processor counts its
//! drops too, but only says so in a log line at shutdown; /metrics needs the count live.

use std::sync::mpsc::{self, SyncSender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span, SpanData, SpanProcessor};

use super::settings::Resolved;

/// What the processor and the exporter's thread share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: a batch is full, a flush is asked, or the queue closed. A span
    /// that does not fill a batch wakes nobody (a wake per span was a context switch per
    /// span: a third of a traced request's time).
    wake: Condvar,
    capacity: usize,
    batch: usize,
}

#[derive(Debug, Default)]
struct State {
    spans: Vec<SpanData>,
    /// Who waits for the queue to be sent (`force_flush`).
    waiters: Vec<SyncSender<()>>,
    closed: bool,
}

/// The processor the provider calls as spans end.
#[derive(Debug)]
struct Queue {
    shared: std::sync::Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
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

/// Sends export bodies to the receiver: reqwest on a runtime of the exporter's own thread.
struct Sender {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    endpoint: String,
    headers: reqwest::header::HeaderMap,
    timeout: Duration,
    resource: Vec<KeyValue>,
    body: Vec<u8>,
}

impl Sender {
    fn send(&mut self, spans: &[SpanData]) -> Result<(), String> {
        super::otlp::encode(
            &self.resource,
            ("flowhost", Some(env!("CARGO_PKG_VERSION"))),
            spans,
            &mut self.body,
        );
        let capacity = self.body.len();
        let body = std::mem::replace(&mut self.body, Vec::with_capacity(capacity));
        let request = self
            .client
            .post(&self.endpoint)
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
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the receiver answered HTTP {status}"))
                }
            };
            tokio::time::timeout(timeout, answer)
                .await
                .map_err(|_| format!("no answer within {}s", timeout.as_secs_f64()))?
        })
    }
}

/// Builds the sender and the provider, and starts the exporter's thread.
pub(super) fn start(resolved: &Resolved) -> Result<(SdkTracerProvider, SdkTracer), String> {
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
    let mut resource = resolved.resource.clone();
    resource.extend([
        KeyValue::new("telemetry.sdk.name", "opentelemetry"),
        KeyValue::new("telemetry.sdk.language", "rust"),
    ]);
    let sender = Sender {
        client,
        runtime,
        endpoint: resolved.endpoint.clone(),
        headers,
        timeout: resolved.timeout,
        resource,
        body: Vec::new(),
    };
    let shared = std::sync::Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        capacity: resolved.queue,
        batch: resolved.batch,
    });
    let delay = resolved.delay;
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || send_batches(sender, &shared, delay))
            .map_err(|err| format!("telemetry: cannot start the exporter's thread: {err}"))?
    };
    let queue = Queue {
        shared,
        thread: Mutex::new(Some(thread)),
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue)
        .with_sampler(resolved.sampler.clone())
        .build();
    let tracer = provider.tracer("flowhost");
    Ok((provider, tracer))
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let shared = &self.shared;
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed || state.spans.len() >= shared.capacity {
            drop(state);
            dropped("queue_full").increment(1);
            return;
        }
        state.spans.push(span);
        if state.spans.len() == shared.batch {
            shared.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (ack, done) = mpsc::sync_channel(1);
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.closed {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            state.waiters.push(ack);
        }
        self.shared.wake.notify_one();
        done.recv_timeout(Duration::from_secs(30))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(30)))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.closed {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            // The thread sends what is queued, then ends.
            state.closed = true;
        }
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(thread) = thread else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return Err(OTelSdkError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.join();
        Ok(())
    }
}

/// The exporter's thread: a batch goes when it is full, when `delay` has passed, on a flush,
/// and at the end.
fn send_batches(mut sender: Sender, shared: &Shared, delay: Duration) {
    let mut last_warning: Option<Instant> = None;
    let mut send = |batch: &[SpanData]| {
        let count = batch.len() as u64;
        match sender.send(batch) {
            Ok(()) => metrics::counter!(crate::metrics::SPANS_EXPORTED).increment(count),
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
    // Two buffers take turns: the processor fills one while this sends the other.
    let mut spans: Vec<SpanData> = Vec::new();
    loop {
        let (waiters, closed) = {
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.spans.len() < shared.batch && state.waiters.is_empty() && !state.closed {
                state = shared
                    .wake
                    .wait_timeout(state, delay)
                    .map_or_else(|p| p.into_inner().0, |(state, _)| state);
            }
            std::mem::swap(&mut state.spans, &mut spans);
            (std::mem::take(&mut state.waiters), state.closed)
        };
        for batch in spans.chunks(shared.batch) {
            send(batch);
        }
        spans.clear();
        for waiter in waiters {
            let _ = waiter.send(());
        }
        if closed {
            return;
        }
    }
}
