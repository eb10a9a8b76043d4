//! The op host: the `ops::Host` an op calls back into during one call (emit, cancel, sleep,
//! log, chat, sub-ops, the client services), and where a run's op log lines go.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};

use super::place::Report;
use super::walk::{run_node, Collect, Env};
use crate::chunk::{Chunk, ChunkKind};
use crate::ops::Level;
use crate::plan::{Node, SubStep};

/// A line an op wrote with `ctx.log`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LogLine {
    pub(crate) level: Level,
    pub(crate) op: &'static str,
    pub(crate) message: String,
}

/// Where a run's op log lines go besides the host's log: a bounded channel, so an op that
/// logs faster than the client reads loses lines (counted here and in
/// `flowhost_op_logs_dropped_total`), never host memory.
#[derive(Clone, Debug)]
pub struct LogSink {
    tx: tokio::sync::mpsc::Sender<LogLine>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// A sink holding at most `capacity` lines, and its receiving end.
    pub(crate) fn bounded(capacity: usize) -> (LogSink, tokio::sync::mpsc::Receiver<LogLine>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (
            LogSink {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    fn send(&self, line: LogLine) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::LOGS_DROPPED).increment(1);
        }
    }

    /// Lines lost so far because the channel was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A span an op opened (`ctx.span`): its attributes are kept here and set when it ends, so
/// a key the op sets twice is sent once, with its last value.
pub(super) struct OwnSpan {
    id: u64,
    span: crate::telemetry::Span,
    attributes: Vec<(String, Value)>,
}

impl Drop for OwnSpan {
    fn drop(&mut self) {
        for (key, value) in &self.attributes {
            self.span.set_dynamic(key, value);
        }
    }
}

/// Chunks recorded for the cache, and their text bytes.
type Recorded = (Vec<Chunk>, usize);

/// The host context handed to one op call.
pub(super) struct OpHost {
    pub(super) op: &'static str,
    pub(super) runtime: tokio::runtime::Handle,
    /// The call runs on a runtime thread: waiting must go through `block_in_place`.
    pub(super) inline: bool,
    /// The call waited on a host service (sleep, LLM, a full buffer).
    pub(super) waited: AtomicBool,
    /// Chunks emitted (a failed call that emitted nothing may be made again).
    pub(super) emitted: AtomicU64,
    /// The chunks so far and their bytes, while recording for the cache; `None` once they
    /// outgrew what the cache keeps.
    pub(super) recording: Option<Mutex<Option<Recorded>>>,
    /// The sub-ops this call may call.
    pub(super) subs: Arc<[SubStep]>,
    /// The run the call belongs to: its channel, cancellation, log sink, LLM service.
    pub(super) env: Env,
    /// The op's own spans still open (`ctx.span`), innermost last; ended when the call ends
    /// at the latest.
    pub(super) spans: Mutex<Vec<OwnSpan>>,
}

impl OpHost {
    pub(super) fn report(&self) -> Report {
        Report {
            emitted: self.emitted.load(Ordering::Relaxed),
            recorded: self
                .recording
                .as_ref()
                .and_then(|r| r.lock().unwrap_or_else(|p| p.into_inner()).take())
                .map(|(chunks, _)| chunks),
            placement: "pool",
        }
    }

    fn record(&self, chunk: &Chunk) {
        let Some(recording) = &self.recording else {
            return;
        };
        let mut recording = recording.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((chunks, bytes)) = recording.as_mut() {
            *bytes += chunk.text.len();
            if *bytes > crate::exec::cache::MAX_ENTRY_BYTES {
                *recording = None;
            } else {
                chunks.push(chunk.clone());
            }
        }
    }

    /// Where what the op asks for goes: under its innermost open span, else under its call.
    fn trace(&self) -> crate::telemetry::Cx {
        let spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        spans
            .last()
            .map_or_else(|| self.env.trace.clone(), |own| own.span.cx())
    }

    /// Runs a wait of the op's: off the runtime thread when the call is inline.
    fn wait<R>(&self, wait: impl FnOnce() -> R) -> R {
        self.waited.store(true, Ordering::Relaxed);
        if self.inline {
            tokio::task::block_in_place(wait)
        } else {
            super::pool::waiting(wait)
        }
    }
}

impl crate::ops::Host for OpHost {
    #[inline]
    fn emit(&self, kind: u8, content: &str, json: bool) -> bool {
        let Some(kind) = ChunkKind::from_u8(kind) else {
            // A kind from a newer SDK: drop it, keep the op running.
            return !self.env.cancel.is_cancelled();
        };
        let chunk = Chunk {
            kind,
            json,
            op: self.op,
            text: content.to_owned(),
            tolerated: false,
            attempts: 0,
            resumed: false,
        };
        self.emitted.fetch_add(1, Ordering::Relaxed);
        if !self.inline {
            super::pool::progress();
        }
        self.record(&chunk);
        if let Some(collect) = &self.env.collect {
            if !collect.take(&chunk) {
                return !self.env.cancel.is_cancelled();
            }
        }
        match self.env.tx.try_push(chunk, &self.env.cancel) {
            Ok(open) => open,
            Err(chunk) => self.wait(|| self.env.tx.push(chunk, &self.env.cancel)),
        }
    }

    fn is_cancelled(&self) -> bool {
        self.env.cancel.is_cancelled()
    }

    fn sleep(&self, millis: u64) -> bool {
        let duration = Duration::from_millis(millis);
        self.wait(|| {
            self.runtime.block_on(async {
                tokio::select! {
                    _ = self.env.cancel.cancelled() => false,
                    _ = tokio::time::sleep(duration) => true,
                }
            })
        })
    }

    fn log(&self, level: Level, message: &str) {
        let op = self.op;
        // In a trace, the line carries its ids (`span.trace_id`, `span.span_id` in JSON logs).
        let _in_trace = self.env.trace.ids().map(|(trace_id, span_id)| {
            tracing::error_span!("op", trace_id = %trace_id, span_id = %span_id).entered()
        });
        match level {
            Level::Error => tracing::error!(op, "{message}"),
            Level::Warn => tracing::warn!(op, "{message}"),
            Level::Info => tracing::info!(op, "{message}"),
            Level::Debug => tracing::debug!(op, "{message}"),
        }
        if let Some(logs) = &self.env.logs {
            logs.send(LogLine {
                level,
                op,
                message: message.to_string(),
            });
        }
    }

    fn chat_stream(
        &self,
        request: &str,
        on_chunk: &mut dyn FnMut(u8, &str, bool) -> bool,
    ) -> Result<String, String> {
        let Some(llm) = &self.env.llm else {
            return Err("this host was started without an LLM service".to_string());
        };
        let request: Value = serde_json::from_str(request)
            .map_err(|err| format!("the chat request is not valid JSON: {err}"))?;
        // The op thread waits here while the host's runtime drives the HTTP stream.
        self.wait(|| {
            self.runtime.block_on(llm.chat_traced(
                &request,
                &self.env.cancel,
                &self.trace(),
                |kind, text, json| on_chunk(kind as u8, text, json),
            ))
        })
        .map(|value| value.to_string())
        .map_err(|err| err.to_string())
    }

    fn sub_ops(&self) -> String {
        let list: Vec<Value> = self
            .subs
            .iter()
            .map(|sub| {
                let (mut description, mut input_schema) =
                    (sub.description.clone(), sub.input_schema.clone());
                // A flow is described by its live version.
                if let Node::Flow(target) = &sub.node {
                    let flow = self
                        .env
                        .flows
                        .as_ref()
                        .and_then(|lookup| lookup.get(&target.name));
                    if let Some(flow) = flow {
                        description = flow.spec.description.clone();
                        input_schema = flow.spec.input_schema.clone();
                    }
                    if description.is_empty() {
                        description = format!("runs the flow `{}`", target.name);
                    }
                    if !input_schema.is_object() {
                        input_schema = serde_json::json!({"type": "object", "properties": {}});
                    }
                }
                serde_json::json!({
                    "name": sub.name,
                    "description": description,
                    "input_schema": input_schema,
                })
            })
            .collect();
        Value::Array(list).to_string()
    }

    fn call(&self, service: &str, request: &str) -> Result<String, String> {
        if service == "span" {
            return Ok(self.span(request));
        }
        let service: &'static str = match service {
            "sample" => "sample",
            "elicit" => "elicit",
            "roots" => "roots",
            other => {
                return Err(format!(
                "no host service `{other}` (this flowhost offers sample, elicit, roots and span)"
            ))
            }
        };
        let mut request: Value = serde_json::from_str(request)
            .map_err(|err| format!("the {service} request is not valid JSON: {err}"))?;
        let name = match request.as_object_mut().and_then(|r| r.remove("name")) {
            Some(Value::String(name)) if !name.is_empty() => Some(name),
            _ => None,
        };
        if service == "sample" && !request["messages"].is_array() {
            return Err("sample needs `messages`: a list of {role, content}".into());
        }
        let cancel = self.env.cancel.clone();
        self.wait(|| {
            self.runtime.block_on(async {
                tokio::select! {
                    result = self.ask(service, request, name) => result,
                    _ = cancel.cancelled() => Err(format!("cancelled while waiting for {service}")),
                }
            })
        })
        .map(|value| value.to_string())
    }

    fn call_sub_ops(&self, calls: &str, forward: bool) -> String {
        let Ok(Value::Array(calls)) = serde_json::from_str::<Value>(calls) else {
            return "the sub-op calls are not a JSON array of {name, arguments}".into();
        };
        let calls = calls.iter().map(|call| async move {
            let result = self.call_sub_op(call, forward).await;
            match result {
                Ok(done) => serde_json::json!({"ok": done}),
                Err(message) => serde_json::json!({"error": message}),
            }
        });
        let results = self.wait(|| self.runtime.block_on(futures_util::future::join_all(calls)));
        Value::Array(results).to_string()
    }
}

impl OpHost {
    /// The `span` host service (op-sdk 0.1.4 `ctx.span`): `{"start": name}` answers
    /// `{"id": n}` (0: not traced); `{"set": n, "key", "value"}`, `{"event": n, "name"}`,
    /// `{"fail": n, "message"}`, `{"end": n}` answer `{}`.
    fn span(&self, request: &str) -> String {
        if !self.env.trace.is_on() {
            return r#"{"id":0}"#.to_string();
        }
        let Ok(request) = serde_json::from_str::<Value>(request) else {
            return r#"{"id":0}"#.to_string();
        };
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = request["start"].as_str() {
            let parent = spans
                .last()
                .map_or_else(|| self.env.trace.clone(), |own| own.span.cx());
            let op = self.op;
            let span = parent.start_with(
                crate::telemetry::Kind::Internal,
                || name.to_string(),
                |attributes| attributes.set("flowhost.op.name", op),
            );
            if !span.is_recording() {
                return r#"{"id":0}"#.to_string();
            }
            span.role(crate::telemetry::Role::Op);
            let id = spans.last().map_or(1, |own| own.id + 1);
            spans.push(OwnSpan {
                id,
                span,
                attributes: Vec::new(),
            });
            return serde_json::json!({"id": id}).to_string();
        }
        let find = |key: &str| request[key].as_u64();
        if let Some(id) = find("end") {
            spans.retain(|own| own.id != id);
        } else if let Some(id) = find("set") {
            if let (Some(own), Some(key)) = (
                spans.iter_mut().find(|own| own.id == id),
                request["key"].as_str(),
            ) {
                let value = request["value"].clone();
                match own.attributes.iter().position(|(k, _)| k == key) {
                    Some(at) => own.attributes[at].1 = value,
                    None if own.attributes.len() < 128 => {
                        own.attributes.push((key.to_string(), value))
                    }
                    None => {}
                }
            }
        } else if let Some(id) = find("event") {
            if let Some(own) = spans.iter().find(|own| own.id == id) {
                own.span
                    .event_named(request["name"].as_str().unwrap_or("event"));
            }
        } else if let Some(id) = find("fail") {
            if let Some(own) = spans.iter().find(|own| own.id == id) {
                own.span
                    .fail(request["message"].as_str().unwrap_or("failed"));
            }
        }
        "{}".to_string()
    }

    /// One sub-op call: `{name, arguments}` (arguments an object, or JSON text of one, as
    /// LLMs give them) → `{answer, writes}`.
    async fn call_sub_op(&self, call: &Value, forward: bool) -> Result<Value, String> {
        let name = call["name"].as_str().unwrap_or_default();
        let Some(sub) = self.subs.iter().find(|sub| sub.name == name) else {
            let known: Vec<&str> = self.subs.iter().map(|sub| sub.name.as_str()).collect();
            return Err(if known.is_empty() {
                format!(
                    "no sub-op `{name}`: none are attached to {} (attach them with `<<`)",
                    self.op
                )
            } else {
                format!("no sub-op `{name}`; {} has: {}", self.op, known.join(", "))
            });
        };
        let arguments = match &call["arguments"] {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            Value::String(text) if text.trim().is_empty() => Map::new(),
            Value::String(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(format!(
                        "the arguments for `{name}` are not a JSON object: {text}"
                    ))
                }
            },
            other => {
                return Err(format!(
                    "the arguments for `{name}` are not a JSON object: {other}"
                ))
            }
        };
        let answer = Arc::new(Mutex::new(String::new()));
        let span = self.trace().start_with(
            crate::telemetry::Kind::Internal,
            || format!("execute_tool {name}"),
            |attributes| attributes.set("gen_ai.operation.name", "execute_tool"),
        );
        span.tool(name);
        span.role(crate::telemetry::Role::Tool);
        let env = Env {
            collect: Some(Collect {
                answer: answer.clone(),
                forward,
            }),
            trace: span.cx(),
            ..self.env.clone()
        };
        let writes = run_node(&sub.node, super::journal::ROOT, Arc::new(arguments), &env)
            .await
            .map_err(|failure| {
                let message = failure.to_string();
                span.fail(&message);
                message
            })?;
        let answer = match writes.get("answer") {
            Some(answer) if !answer.is_null() => answer.clone(),
            _ => Value::String(std::mem::take(
                &mut *answer.lock().unwrap_or_else(|p| p.into_inner()),
            )),
        };
        Ok(serde_json::json!({"answer": answer, "writes": writes}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_channel_is_bounded_and_counts_what_it_drops() {
        let (sink, mut rx) = LogSink::bounded(3);
        for i in 0..10 {
            sink.send(LogLine {
                level: Level::Info,
                op: "T",
                message: i.to_string(),
            });
        }
        assert_eq!(sink.dropped(), 7);
        let mut kept = Vec::new();
        while let Ok(line) = rx.try_recv() {
            kept.push(line.message);
        }
        assert_eq!(kept, ["0", "1", "2"]);
    }
}
