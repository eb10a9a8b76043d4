//! Server-sent events: a run written as an event stream, one body write per batch of chunks,
//! keep-alive comments while quiet, the shutdown deadline; the FlowLLM wire form. The OpenAI
//! form is an [`EventWriter`] in `openai.rs`. Knows nothing of routes.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::state::AppState;
use crate::auth::Outcome;
use crate::chunk::Chunk;
use crate::exec::Run;
use crate::metrics as m;

/// How a stream of chunks is written as SSE events.
pub(crate) trait EventWriter: Send + 'static {
    fn chunks(&mut self, flow_id: &str, chunks: &[Chunk], out: &mut String);
    /// The closing events (`[DONE]`).
    fn done(&mut self, flow_id: &str, out: &mut String);
}

/// FlowLLM's wire form: `data:{chunk json}\n\n` per chunk, `data:[DONE]\n\n` at the end.
pub(crate) struct FlowLlmEvents;

impl EventWriter for FlowLlmEvents {
    fn chunks(&mut self, flow_id: &str, chunks: &[Chunk], out: &mut String) {
        for chunk in chunks {
            out.push_str("data:");
            chunk.write_json(flow_id, out);
            out.push_str("\n\n");
        }
    }

    fn done(&mut self, _flow_id: &str, out: &mut String) {
        out.push_str("data:[DONE]\n\n");
    }
}

struct Streaming<W> {
    run: Run,
    writer: W,
    batch: Vec<Chunk>,
    keepalive: Duration,
    hard_stop: CancellationToken,
    started: Instant,
    first_seen: bool,
    finished: bool,
    /// The call's record (audit, per-caller counts): ended with the stream.
    call: Option<crate::auth::Call>,
    errored: bool,
}

impl<W> Drop for Streaming<W> {
    fn drop(&mut self) {
        metrics::gauge!(m::ACTIVE_STREAMS).decrement(1.0);
        if !self.finished {
            // The client went away first; dropping the run cancels it.
            metrics::counter!(m::CANCELLATIONS).increment(1);
            tracing::info!(flow_id = %self.run.flow_id, "client disconnected; run cancelled");
        }
    }
}

/// Streams a run as SSE. Every batch of chunks becomes one write; a quiet stream gets
/// keep-alive comments; a client that goes away drops the body, which cancels the run.
pub(crate) fn sse_response<W: EventWriter>(
    run: Run,
    state: &AppState,
    writer: W,
    call: Option<crate::auth::Call>,
) -> Response {
    metrics::gauge!(m::ACTIVE_STREAMS).increment(1.0);
    let streaming = Streaming {
        run,
        writer,
        batch: Vec::new(),
        keepalive: state.options.keepalive,
        hard_stop: state.hard_stop.clone(),
        started: Instant::now(),
        first_seen: false,
        finished: false,
        call,
        errored: false,
    };
    let body = futures_util::stream::unfold(streaming, |mut s| async move {
        if s.finished {
            return None;
        }
        let mut out = String::new();
        let flow_id = s.run.flow_id.clone();
        tokio::select! {
            more = s.run.next_batch(&mut s.batch) => {
                if more {
                    if !s.first_seen {
                        s.first_seen = true;
                        metrics::histogram!(m::FIRST_CHUNK).record(s.started.elapsed().as_secs_f64());
                    }
                    metrics::counter!(m::CHUNKS).increment(s.batch.len() as u64);
                    if s.batch.iter().any(|c| c.kind == crate::chunk::ChunkKind::Error) {
                        metrics::counter!(m::FLOW_ERRORS).increment(1);
                        s.errored = true;
                    }
                    if let Some(call) = &mut s.call {
                        call.add_chunks(s.batch.len());
                    }
                    s.writer.chunks(&flow_id, &s.batch, &mut out);
                    s.batch.clear();
                } else {
                    s.writer.done(&flow_id, &mut out);
                    s.finished = true;
                    if let Some(call) = s.call.take() {
                        call.end(if s.errored { Outcome::Error } else { Outcome::Ok });
                    }
                }
            }
            _ = tokio::time::sleep(s.keepalive) => {
                out.push_str(": keep-alive\n\n");
            }
            _ = s.hard_stop.cancelled() => {
                let chunk = Chunk::error("flowhost", "the server is shutting down; the stream was ended");
                s.writer.chunks(&flow_id, std::slice::from_ref(&chunk), &mut out);
                s.writer.done(&flow_id, &mut out);
                s.finished = true;
                if let Some(call) = s.call.take() {
                    call.end(Outcome::Error);
                }
            }
        }
        Some((Ok::<_, Infallible>(Bytes::from(out)), s))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
