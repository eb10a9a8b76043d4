//! The run: its [`Options`], [`start`] (and [`admit_and_start`], which waits for the run's turn
//! first), the [`Run`] a caller reads chunks from under the flow's time and output limits, and
//! the [`Outcome`] it ends with. The walk over the plan is `walk.rs`.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use super::batch;
use super::client::Client;
use super::host::LogSink;
use super::place::{IsolationPolicy, Placement};
use super::walk::{run_node, Env, Failures, FlowLookup};
use crate::chunk::{Chunk, ChunkKind};
use crate::plan::{Flow, Limits};

/// How a run is driven.
#[derive(Clone, Debug)]
pub struct Options {
    /// Chunks held between op threads and the consumer before producers wait.
    pub buffer: usize,
    /// Keep the concatenated answer chunks for [`Outcome::answer`] (non-stream callers).
    pub collect_answer: bool,
    /// The output cap of a flow that sets no `limits.max_output_bytes`; None: 16 MiB when the
    /// answer is collected, else no cap.
    pub max_output_bytes: Option<u64>,
    /// Where op log lines go besides the host's log (MCP forwards them to the client).
    pub logs: Option<LogSink>,
    /// The LLM service ops call through their context.
    pub llm: Option<Arc<crate::llm::Service>>,
    /// The host-wide admission limit ([`admit_and_start`]).
    pub admission: crate::exec::admission::Global,
    /// Where ops run (in process, or in worker processes).
    pub isolation: Arc<IsolationPolicy>,
    /// The live flows by name, for `FlowOp` (the catalog's current snapshot).
    pub flows: Option<FlowLookup>,
    /// The client that can be asked things for the ops (`ctx.sample`, `ctx.elicit`): an MCP
    /// client; none over HTTP.
    pub client: Option<Client>,
    /// A durable run's journal (`exec::Journal`): completed calls are skipped, and each call
    /// that completes is followed by a checkpoint chunk for the run's keeper.
    pub journal: Option<Arc<super::journal::Journal>>,
    /// The span the run's span goes under (the request's); empty: no spans.
    pub(crate) trace: crate::telemetry::Cx,
}

/// The answer a non-stream caller collects is capped at this many bytes unless the flow sets
/// `limits.max_output_bytes`.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

impl Default for Options {
    fn default() -> Options {
        Options {
            buffer: 1024,
            collect_answer: true,
            max_output_bytes: None,
            logs: None,
            llm: None,
            admission: crate::exec::admission::Global::default(),
            isolation: Arc::default(),
            flows: None,
            client: None,
            journal: None,
            trace: Default::default(),
        }
    }
}

/// The op that failed and why.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Failure {
    pub(crate) op: &'static str,
    pub(crate) message: String,
    /// The op's worker process died or was killed (`isolation: process`).
    pub(crate) crashed: bool,
    /// How many times the op was called (`max_retries`); 0 when no op call failed (a flow's
    /// own failure).
    pub(crate) attempts: u32,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.crashed {
            write!(f, "op {} crashed: {}", self.op, self.message)?;
        } else {
            write!(f, "{} failed: {}", self.op, self.message)?;
        }
        if self.attempts > 1 {
            write!(f, " (called {} times, max_retries)", self.attempts)?;
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub flow_id: String,
    /// The context's `answer` if an op set one, else the concatenated answer chunks.
    pub answer: Value,
    /// The final context: the input plus every write.
    pub context: Map<String, Value>,
    pub error: Option<String>,
    /// Op failures the flow went on after (`raise_exception=False`), in the order they
    /// happened: `{"op", "error"}`.
    pub failed_ops: Vec<Value>,
    /// The failure was the host's or the op's machinery, not the op's answer: an op panicked,
    /// its worker crashed, or the run's task died (MCP tasks report these as `failed`).
    pub(crate) crashed: bool,
    /// Chunks the run sent, in all.
    pub chunks: usize,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.error.is_none()
    }
}

/// A running flow. Read it with [`Run::next_batch`]; dropping it cancels the run (a client
/// that goes away stops the ops at their next `emit`).
pub struct Run {
    pub flow_id: String,
    flow_name: &'static str,
    rx: batch::Receiver,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<Map<String, Value>, Failure>>>,
    input: Map<String, Value>,
    limits: Limits,
    started: TokioInstant,
    last_chunk: Option<TokioInstant>,
    output_bytes: u64,
    /// Chunks received so far.
    chunks: usize,
    answer: String,
    collect_answer: bool,
    /// Set when the consumer side ended the run (timeout, output limit).
    stopped: Option<String>,
    finished: bool,
    /// Failures the flow went on after (`raise_exception=False`).
    failed: Failures,
    /// The run's turn (admission control), given back when the run is dropped.
    _permit: Option<crate::exec::admission::Permit>,
    /// The run's span (`run {flow}`), ended with its outcome.
    span: crate::telemetry::Span,
    /// The text of the error chunk that ended the run, for the span's status.
    error_chunk: Option<String>,
}

/// A flow id nobody can guess: async runs (`GET /runs/{id}`, `DELETE /runs/{id}`) are looked
/// up by it, so it carries no time, pid or counter, only 128 bits from a CSPRNG (rand's
/// thread-local ChaCha12, seeded from the OS), written as 26 characters of Crockford's base32
/// (lower case, no `i`, `l`, `o`, `u`).
fn new_flow_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bits: u128 = rand::rng().random();
    let mut id = [0u8; 26];
    for slot in id.iter_mut().rev() {
        *slot = ALPHABET[(bits & 31) as usize];
        bits >>= 5;
    }
    id.iter().map(|&c| char::from(c)).collect()
}

/// Starts a flow on the current tokio runtime.
pub fn start(flow: Arc<Flow>, input: Map<String, Value>, options: &Options) -> Run {
    let (tx, rx) = batch::channel(options.buffer);
    let cancel = CancellationToken::new();
    let flow_name = flow.name;
    let mut limits = flow.spec.limits.clone();
    if limits.max_output_bytes.is_none() {
        // A collected answer lives in memory whole: cap it.
        limits.max_output_bytes = options
            .max_output_bytes
            .or(options.collect_answer.then_some(DEFAULT_MAX_ANSWER_BYTES));
    }
    let logs = options.logs.clone();
    let llm = options.llm.clone();
    let flows = options.flows.clone();
    let client = options.client.clone();
    let journal = options.journal.clone();
    let isolation = Placement {
        policy: options.isolation.clone(),
        flow: flow.spec.isolation,
        memory_mb: flow.spec.limits.max_memory_mb,
    };
    let failed = Failures::default();
    let flow_id = new_flow_id();
    let span = options.trace.start_with(
        crate::telemetry::Kind::Internal,
        || flow.run_span,
        |attributes| {
            attributes.set("flowhost.run.id", &flow_id);
            attributes.flow(flow_name);
        },
    );
    span.role(crate::telemetry::Role::Chain);
    let trace = span.cx();
    let task = {
        let cancel = cancel.clone();
        let failed = failed.clone();
        let context = Arc::new(input.clone());
        tokio::spawn(async move {
            let env = Env {
                tx,
                cancel,
                logs,
                llm,
                isolation,
                failed,
                collect: None,
                flows,
                client,
                depth: 0,
                journal,
                trace,
            };
            let result = run_node(&flow.root, super::journal::ROOT, context, &env).await;
            if let Err(failure) = &result {
                env.tx.push_final(Chunk {
                    attempts: failure.attempts.min(255) as u8,
                    ..Chunk::error(failure.op, failure.to_string())
                });
            }
            result
        })
    };
    Run {
        flow_id,
        flow_name,
        rx,
        cancel,
        task: Some(task),
        input,
        limits,
        started: TokioInstant::now(),
        last_chunk: None,
        output_bytes: 0,
        chunks: 0,
        answer: String::new(),
        collect_answer: options.collect_answer,
        stopped: None,
        finished: false,
        failed,
        _permit: None,
        span,
        error_chunk: None,
    }
}

/// Waits for the flow's turn (its `limits.max_concurrency` / `max_queue`, then the host-wide
/// limit) and starts it; refuses at once with [`crate::exec::admission::Busy`] when a line is full.
/// The run holds its turn until it is dropped.
pub(crate) async fn admit_and_start(
    flow: Arc<Flow>,
    input: Map<String, Value>,
    options: &Options,
) -> Result<Run, crate::exec::admission::Busy> {
    let permit = crate::exec::admission::admit(&flow, &options.admission).await?;
    let mut run = start(flow, input, options);
    run._permit = Some(permit);
    Ok(run)
}

impl Run {
    /// A handle that cancels this run from elsewhere (MCP `notifications/cancelled`).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Moves the next chunks into `out`. Returns `false` once the run has ended and every
    /// chunk was delivered. A timeout or the output limit ends the run with an `error` chunk.
    pub async fn next_batch(&mut self, out: &mut Vec<Chunk>) -> bool {
        if self.finished {
            return false;
        }
        let deadline = self.deadline();
        let received = match &deadline {
            Some((at, _)) => tokio::time::timeout_at(*at, self.rx.recv_batch(out)).await,
            None => Ok(self.rx.recv_batch(out).await),
        };
        match received {
            Ok(true) => {
                self.last_chunk = Some(TokioInstant::now());
                self.chunks += out.len();
                for chunk in out.iter() {
                    self.output_bytes += chunk.text.len() as u64;
                    if chunk.kind == ChunkKind::Error
                        && !chunk.tolerated
                        && self.span.is_recording()
                    {
                        self.error_chunk = Some(chunk.text.clone());
                    }
                    if self.collect_answer && chunk.kind == ChunkKind::Answer {
                        self.answer.push_str(&chunk.text);
                    }
                }
                if let Some(max) = self.limits.max_output_bytes {
                    if self.output_bytes > max {
                        self.stop(
                            out,
                            format!("flow {} exceeded its output limit of {max} bytes (limits.max_output_bytes)", self.flow_name),
                        );
                    }
                }
                true
            }
            Ok(false) => {
                self.finished = true;
                false
            }
            Err(_elapsed) => {
                let what = deadline.map(|(_, what)| what).unwrap_or_default();
                self.stop(out, format!("flow {} timed out: {what}", self.flow_name));
                true
            }
        }
    }

    fn deadline(&self) -> Option<(TokioInstant, String)> {
        let limits = &self.limits;
        let total = limits.total_timeout.map(|d| {
            (
                self.started + d,
                format!(
                    "not finished within limits.total_timeout ({}s)",
                    d.as_secs_f64()
                ),
            )
        });
        let quiet = match self.last_chunk {
            None => limits.first_chunk_timeout.map(|d| {
                (
                    self.started + d,
                    format!(
                        "no first chunk within limits.first_chunk_timeout ({}s)",
                        d.as_secs_f64()
                    ),
                )
            }),
            Some(last) => limits.idle_timeout.map(|d| {
                (
                    last + d,
                    format!("no chunk within limits.idle_timeout ({}s)", d.as_secs_f64()),
                )
            }),
        };
        match (total, quiet) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    fn stop(&mut self, out: &mut Vec<Chunk>, message: String) {
        tracing::warn!(flow = self.flow_name, flow_id = %self.flow_id, "{message}");
        self.cancel.cancel();
        out.push(Chunk::error(self.flow_name, message.clone()));
        if self.span.is_recording() {
            self.error_chunk = Some(message.clone());
        }
        self.stopped = Some(message);
        self.finished = true;
    }

    /// Reads the run to its end (dropping chunks not yet read) and reports how it ended.
    pub async fn finish(mut self) -> Outcome {
        let mut scratch = Vec::new();
        while self.next_batch(&mut scratch).await {
            scratch.clear();
        }
        let mut context = std::mem::take(&mut self.input);
        let mut crashed = false;
        let error = if let Some(message) = self.stopped.take() {
            // The op may ignore cancellation; do not wait for it.
            Some(message)
        } else {
            match self.task.take() {
                Some(task) => match task.await {
                    Ok(Ok(writes)) => {
                        context.extend(writes);
                        None
                    }
                    Ok(Err(failure)) => {
                        crashed = failure.crashed || failure.message.starts_with("panicked");
                        Some(failure.to_string())
                    }
                    Err(join) => {
                        crashed = true;
                        Some(format!("flow {} crashed: {join}", self.flow_name))
                    }
                },
                None => None,
            }
        };
        let answer = match context.get("answer") {
            Some(answer) if !answer.is_null() => answer.clone(),
            _ => Value::String(std::mem::take(&mut self.answer)),
        };
        let failed_ops = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(op, error)| serde_json::json!({"op": op, "error": error}))
            .collect();
        if let Some(error) = &error {
            self.error_chunk = Some(error.clone());
        }
        self.end_span(if error.is_some() { "error" } else { "ok" });
        Outcome {
            flow_id: self.flow_id.clone(),
            answer,
            context,
            error,
            failed_ops,
            crashed,
            chunks: self.chunks,
        }
    }

    /// Runs to the end, keeping every chunk.
    pub async fn collect(mut self) -> (Vec<Chunk>, Outcome) {
        let mut chunks = Vec::new();
        let mut batch = Vec::new();
        while self.next_batch(&mut batch).await {
            chunks.append(&mut batch);
        }
        (chunks, self.finish().await)
    }
}

impl Run {
    /// Ends the run's span with how the run ended (`ok`, `error`, `cancelled`).
    fn end_span(&mut self, outcome: &'static str) {
        if !self.span.is_recording() {
            return;
        }
        let outcome = match &self.error_chunk {
            Some(error) if outcome == "ok" || outcome == "error" => {
                self.span.fail(error);
                "error"
            }
            _ => outcome,
        };
        self.span.set_all(&[
            ("flowhost.run.outcome", outcome.into()),
            ("flowhost.run.chunks", (self.chunks as i64).into()),
        ]);
        self.span.end();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.cancel();
            self.end_span("cancelled");
        } else {
            self.end_span("ok");
        }
    }
}
