//! The exporter's queue: ended spans go into a bounded channel (`OTEL_BSP_MAX_QUEUE_SIZE`,
//! 2,048) and one thread sends them in batches to the OTLP receiver. A full queue drops the
//! span at once and counts it (`flowhost_trace_spans_dropped_total{reason="queue_full"}`): a
//! stopped or hanging receiver never slows a run. The SDK's own batch processor counts its
//! drops too, but only says so in a log line at shutdown; /metrics needs the count live.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};

use super::settings::Resolved;

enum Message {
    Span(Box<SpanData>),
    /// Send what is queued, then answer.
    Flush(SyncSender<()>),
}

/// The processor the provider calls as spans end.
#[derive(Debug)]
struct Queue {
    tx: Mutex<Option<SyncSender<Message>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Builds the exporter and the provider, and starts the exporter's thread.
pub(super) fn start(resolved: &Resolved) -> Result<(SdkTracerProvider, SdkTracer), String> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(resolved.endpoint.clone())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_headers(resolved.headers.clone().into_iter().collect());
    if let Some(timeout) = resolved.timeout {
        builder = builder.with_timeout(timeout);
    }
    let mut exporter = builder
        .build()
        .map_err(|err| format!("telemetry: cannot build the OTLP exporter: {err}"))?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(resolved.resource.clone())
        .build();
    exporter.set_resource(&resource);
    let (tx, rx) = mpsc::sync_channel(resolved.queue);
    let (batch, delay) = (resolved.batch, resolved.delay);
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || send_batches(exporter, rx, batch, delay))
        .map_err(|err| format!("telemetry: cannot start the exporter's thread: {err}"))?;
    let queue = Queue {
        tx: Mutex::new(Some(tx)),
        thread: Mutex::new(Some(thread)),
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue)
        .with_sampler(resolved.sampler.clone())
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("flowhost");
    Ok((provider, tracer))
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let sent = match tx.as_ref() {
            Some(tx) => match tx.try_send(Message::Span(Box::new(span))) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            metrics::counter!(crate::metrics::SPANS_DROPPED, "reason" => "queue_full").increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (ack, done) = mpsc::sync_channel(1);
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        tx.send(Message::Flush(ack))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        done.recv_timeout(Duration::from_secs(30))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(30)))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Closing the channel ends the thread after it has sent what is queued.
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(tx) = tx else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        drop(tx);
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

/// The exporter's thread: a batch goes when it is full, when `delay` has passed since the
/// last one, on a flush, and at the end.
fn send_batches(
    exporter: opentelemetry_otlp::SpanExporter,
    rx: Receiver<Message>,
    size: usize,
    delay: Duration,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(size);
    let mut next = Instant::now() + delay;
    let mut last_warning: Option<Instant> = None;
    let mut send = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        match futures_executor::block_on(exporter.export(std::mem::take(batch))) {
            Ok(()) => metrics::counter!(crate::metrics::SPANS_EXPORTED).increment(count),
            Err(err) => {
                metrics::counter!(crate::metrics::SPANS_DROPPED, "reason" => "export_failed")
                    .increment(count);
                // One line a minute at most: a receiver that is down would fill the log.
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!("telemetry: {count} spans not exported: {err} (counted in flowhost_trace_spans_dropped_total)");
                }
            }
        }
    };
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                if batch.len() >= size {
                    send(&mut batch);
                }
            }
            Ok(Message::Flush(ack)) => {
                send(&mut batch);
                let _ = ack.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch);
                next = Instant::now() + delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                let _ = exporter.shutdown();
                return;
            }
        }
    }
}
