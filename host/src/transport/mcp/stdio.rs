//! MCP over stdio: newline-delimited JSON-RPC. Owns the framing (each stdin line classified;
//! malformed and oversized lines answered with JSON-RPC errors instead of silence), the
//! protocol's claim on stdout, and writing replies to it. Reading stdin lines is `lines.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use rmcp::model::{ErrorCode, ErrorData, JsonRpcMessage, NumberOrString};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::{RoleServer, ServiceExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::handler::FlowTools;
use crate::catalog::Catalog;
use crate::exec;

/// The largest stdio message accepted (a longer line gets an error and is skipped).
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Where protocol lines go: a private duplicate of the real stdout (see [`claim_stdout`]).
static PROTOCOL_OUT: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> =
    std::sync::OnceLock::new();

/// Keeps stdout for the protocol (see [`crate::util::stdio::take_stdout`]): protocol lines go to a
/// private duplicate, stray prints to stderr. Call it before plugins are loaded.
pub(crate) fn claim_stdout() -> Result<(), String> {
    let file = crate::util::stdio::take_stdout()?;
    let _ = PROTOCOL_OUT.set(std::sync::Mutex::new(file));
    Ok(())
}

/// Serves MCP on stdin/stdout until stdin closes. Only protocol lines go to stdout.
pub(crate) async fn serve_stdio(
    catalog: Arc<Catalog>,
    run_options: exec::Options,
    max_line: usize,
    auth: Arc<crate::auth::Auth>,
) -> Result<(), String> {
    let mut sink = StdoutSink::default();
    let incoming = match super::lines::pollable_stdin(max_line) {
        // A pipe: read by the server's own task as it asks for the next message (no thread
        // hop, and a client that writes faster than the server reads waits in the pipe).
        Some(reader) => {
            sink.ahead = reader.read_ahead();
            let asked = sink.in_flight.clone();
            let state = (reader, std::collections::VecDeque::new(), false, asked);
            futures_util::stream::unfold(
                state,
                move |(mut reader, mut pending, mut ended, asked)| async move {
                    loop {
                        if let Some(message) = pending.pop_front() {
                            return Some((message, (reader, pending, ended, asked)));
                        }
                        if ended {
                            return None;
                        }
                        let mut deliver = |message: RxJsonRpcMessage<RoleServer>| {
                            count_asked(&asked, &message);
                            pending.push_back(message);
                            true
                        };
                        match reader
                            .read(&mut |event| on_line(event, max_line, &mut deliver))
                            .await
                        {
                            Ok(more) => ended = !more,
                            Err(err) => {
                                tracing::error!("cannot read stdin: {err}");
                                ended = true;
                            }
                        }
                    }
                },
            )
            .boxed()
        }
        // A file or a terminal: a plain thread doing blocking reads.
        None => {
            let (to_server, from_reader) = mpsc::channel::<RxJsonRpcMessage<RoleServer>>(256);
            std::thread::Builder::new()
                .name("mcp-stdin".into())
                .spawn(move || {
                    let mut deliver = |message| to_server.blocking_send(message).is_ok();
                    if let Err(err) = super::lines::read_blocking(max_line, |event| {
                        on_line(event, max_line, &mut deliver)
                    }) {
                        tracing::error!("cannot read stdin: {err}");
                    }
                })
                .map_err(|err| format!("cannot start the stdin reader: {err}"))?;
            futures_util::stream::unfold(from_reader, |mut rx| async move {
                rx.recv().await.map(|message| (message, rx))
            })
            .boxed()
        }
    };
    let running = FlowTools::new(catalog, run_options)
        .with_access(super::handler::Access::local(auth))
        .serve((sink, incoming))
        .await
        .map_err(|err| format!("MCP session failed to start: {err}"))?;
    let reason = match running.waiting().await {
        Ok(rmcp::service::QuitReason::Closed) => "the client closed stdin".to_string(),
        Ok(rmcp::service::QuitReason::Cancelled) => "the server is shutting down".to_string(),
        Ok(rmcp::service::QuitReason::JoinError(err)) | Err(err) => {
            format!("an internal error ({err})")
        }
        Ok(_) => "the session's task ended".to_string(),
    };
    tracing::info!("MCP session ended: {reason}");
    Ok(())
}

/// Keeps the count of requests in flight (see [`StdoutSink`]): a request adds one, a
/// cancellation takes one off (a cancelled request may get no answer).
fn count_asked(asked: &AtomicU64, message: &RxJsonRpcMessage<RoleServer>) {
    match message {
        JsonRpcMessage::Request(_) => {
            asked.fetch_add(1, Ordering::Relaxed);
        }
        JsonRpcMessage::Notification(n)
            if matches!(
                n.notification,
                rmcp::model::ClientNotification::CancelledNotification(_)
            ) =>
        {
            let _ = asked.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        }
        _ => {}
    }
}

/// One stdin line: a message goes to `deliver`; malformed JSON gets -32700, JSON that is not a
/// JSON-RPC message -32600 (with its id when one can be read), an oversized line -32600.
/// Returns `false` when reading should stop (the server or stdout is gone).
fn on_line(
    event: super::lines::Event<'_>,
    max_line: usize,
    deliver: &mut impl FnMut(RxJsonRpcMessage<RoleServer>) -> bool,
) -> bool {
    let reply = match event {
        super::lines::Event::Line(number, line) => match classify_line(line, number) {
            Line::Empty => return true,
            Line::Message(message) => return deliver(*message),
            Line::Reply(reply) => *reply,
        },
        super::lines::Event::Oversized { number, bytes } => {
            tracing::warn!(
                "stdin line {number}: {bytes} bytes is over the {max_line}-byte limit; skipped"
            );
            JsonRpcMessage::error(
                ErrorData::invalid_request(
                    format!("message on line {number} is {bytes} bytes, over the limit of {max_line} bytes; it was skipped"),
                    None,
                ),
                None,
            )
        }
    };
    write_message(&reply).is_ok()
}

/// Writes one JSON-RPC message per line to stdout, from whichever task sends it. A pipe write
/// is cheap next to waking a writer thread for every message; the stdout lock keeps lines
/// whole when the stdin reader writes an error reply at the same time.
///
/// After the answer to the last request in flight it reads stdin ahead for a moment
/// ([`super::lines::ReadAhead::wait_for_next`]): a client calling one tool at a time then
/// never has to wake a parked thread of the host.
#[derive(Default)]
struct StdoutSink {
    buffer: Vec<u8>,
    /// Stdin's read-ahead side, when stdin is a pipe.
    ahead: Option<Arc<super::lines::ReadAhead>>,
    /// Requests read and not answered yet (a cancelled one counts as answered).
    in_flight: Arc<AtomicU64>,
    /// The buffer holds an answer.
    answered: bool,
}

impl futures_util::Sink<TxJsonRpcMessage<RoleServer>> for StdoutSink {
    type Error = std::io::Error;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn start_send(
        self: std::pin::Pin<&mut Self>,
        message: TxJsonRpcMessage<RoleServer>,
    ) -> Result<(), Self::Error> {
        let this = self.get_mut();
        if matches!(
            message,
            JsonRpcMessage::Response(_) | JsonRpcMessage::Error(_)
        ) {
            this.answered = true;
        }
        serde_json::to_writer(&mut this.buffer, &message)?;
        this.buffer.push(b'\n');
        Ok(())
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let result = write_stdout(&this.buffer);
        this.buffer.clear();
        if std::mem::take(&mut this.answered) {
            let left = this
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                })
                .map_or(0, |before| before.saturating_sub(1));
            if let (Some(ahead), Ok(()), 0) = (&this.ahead, &result, left) {
                ahead.wait_for_next();
            }
        }
        std::task::Poll::Ready(result)
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.poll_flush(cx)
    }
}

fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if bytes.is_empty() {
        return Ok(());
    }
    match PROTOCOL_OUT.get() {
        // One write per message keeps lines whole when the stdin reader answers a malformed
        // line at the same time.
        Some(out) => {
            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
            out.write_all(bytes)
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(bytes)?;
            stdout.flush()
        }
    }
}

fn write_message(message: &TxJsonRpcMessage<RoleServer>) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    write_stdout(&line)
}

/// What one stdin line is.
pub enum Line {
    /// Blank: ignored.
    Empty,
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    /// Not a message: the error to answer with.
    Reply(Box<TxJsonRpcMessage<RoleServer>>),
}

/// Classifies one stdin line (`number` is 1-based, for the error message). Malformed JSON is
/// -32700, JSON that is not a JSON-RPC message -32600 (with its id when one can be read).
pub fn classify_line(line: &[u8], number: u64) -> Line {
    let text = trim_ascii(line);
    if text.is_empty() {
        return Line::Empty;
    }
    if let Some(message) = super::known::request(text) {
        return Line::Message(Box::new(message));
    }
    match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(text) {
        Ok(message) => Line::Message(Box::new(message)),
        Err(err) if err.is_syntax() || err.is_eof() => {
            Line::Reply(Box::new(JsonRpcMessage::error(
                ErrorData::new(
                    ErrorCode::PARSE_ERROR,
                    format!("parse error on line {number}: {err}"),
                    None,
                ),
                None,
            )))
        }
        Err(err) => {
            let id = serde_json::from_slice::<Value>(text)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .and_then(|id| serde_json::from_value::<NumberOrString>(id).ok());
            Line::Reply(Box::new(JsonRpcMessage::error(
                ErrorData::invalid_request(
                    format!("invalid JSON-RPC message on line {number}: {err}"),
                    None,
                ),
                id,
            )))
        }
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}
