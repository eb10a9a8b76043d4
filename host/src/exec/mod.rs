//! The executor: runs a compiled flow into a stream of chunks. Serial steps share one context;
//! parallel branches run on copies and merge in declaration order; a failure cancels the rest.
//! Knows nothing of HTTP, MCP or files: callers hand it a flow and an input object.

pub mod admission;
pub mod batch;
pub mod cache;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use crate::chunk::{Chunk, ChunkKind};
use crate::plan::{Flow, Isolation, Limits, Node, Step, SubStep};

/// How a run is driven.
#[derive(Clone, Debug)]
pub struct Options {
    /// Chunks held between op threads and the consumer before producers wait.
    pub buffer: usize,
    /// Keep the concatenated answer chunks for [`Outcome::answer`] (non-stream callers).
    pub collect_answer: bool,
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
}

/// A client ops may ask through the host (op-sdk 0.1.3 `ctx.sample` / `ctx.elicit`).
pub trait Asker: Send + Sync {
    /// `service` is `sample` (MCP `CreateMessageRequest` params in, `CreateMessageResult`
    /// out), `elicit` (`ElicitRequest` params in, `ElicitResult` out) or `roots` (`{}` in,
    /// `ListRootsResult` out).
    /// `name`: the op's name for the question (2026-07-28 input requests are keyed by it), if
    /// it gave one.
    fn ask(&self, service: &'static str, request: Value, name: Option<String>) -> AskFuture;
}

pub type AskFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, AskError>> + Send>>;

/// A shared [`Asker`].
#[derive(Clone)]
pub struct Client(pub Arc<dyn Asker>);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

/// Why the client was not asked, or what it answered instead of a result.
#[derive(Debug)]
pub enum AskError {
    /// The client cannot be asked this (no capability, or its protocol has no way): `sample`
    /// falls back to the LLM service.
    Unsupported(String),
    /// It was asked and refused or failed.
    Failed(String),
}

/// Finds a live flow by name (`FlowOp`); given by whoever owns the catalog.
#[derive(Clone)]
pub struct FlowLookup(Arc<FindFlow>);

type FindFlow = dyn Fn(&str) -> Option<Arc<Flow>> + Send + Sync;

impl FlowLookup {
    pub fn new(find: impl Fn(&str) -> Option<Arc<Flow>> + Send + Sync + 'static) -> FlowLookup {
        FlowLookup(Arc::new(find))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Flow>> {
        (self.0)(name)
    }
}

impl std::fmt::Debug for FlowLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowLookup")
    }
}

/// `FlowOp` inside `FlowOp` at most this deep (cycles are refused when flows load; this
/// bounds one made by a reload in the middle of a run).
const MAX_FLOW_DEPTH: u32 = 16;

/// A line an op wrote with `ctx.log`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub level: op_sdk::Level,
    pub op: &'static str,
    pub message: String,
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
    pub fn bounded(capacity: usize) -> (LogSink, tokio::sync::mpsc::Receiver<LogLine>) {
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
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The answer a non-stream caller collects is capped at this many bytes unless the flow sets
/// `limits.max_output_bytes`.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

impl Default for Options {
    fn default() -> Options {
        Options {
            buffer: 1024,
            collect_answer: true,
            logs: None,
            llm: None,
            admission: crate::exec::admission::Global::default(),
            isolation: Arc::default(),
            flows: None,
            client: None,
        }
    }
}

/// The op that failed and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub op: &'static str,
    pub message: String,
    /// The op's worker process died or was killed (`isolation: process`).
    pub crashed: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.crashed {
            write!(f, "op {} crashed: {}", self.op, self.message)
        } else {
            write!(f, "{} failed: {}", self.op, self.message)
        }
    }
}

/// Where ops run: `isolation` in a flow's YAML wins, then the plugin's setting
/// (`plugins.<name>.isolation`), then the default (`ops.isolation`).
#[derive(Clone, Debug, Default)]
pub struct IsolationPolicy {
    pub default: Isolation,
    pub plugins: std::collections::HashMap<String, Isolation>,
    /// `ops.inline`: whether proven-fast in-process ops may run on the runtime thread.
    pub inline: Inline,
}

/// `ops.inline`: `auto` lets an in-process op that has shown itself fast run on the runtime
/// thread that asked for it (see `ops::Speed`); `never` keeps every call on the op pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Inline {
    #[default]
    Auto,
    Never,
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
    pub crashed: bool,
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
    answer: String,
    collect_answer: bool,
    /// Set when the consumer side ended the run (timeout, output limit).
    stopped: Option<String>,
    finished: bool,
    /// Failures the flow went on after (`raise_exception=False`).
    failed: Failures,
    /// The run's turn (admission control), given back when the run is dropped.
    _permit: Option<crate::exec::admission::Permit>,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A flow id unique across runs and processes: start time, pid and a counter.
fn new_flow_id() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
    });
    format!(
        "{prefix}-{}",
        RUN_COUNTER.fetch_add(1, Ordering::Relaxed) + 1
    )
}

/// Starts a flow on the current tokio runtime.
pub fn start(flow: Arc<Flow>, input: Map<String, Value>, options: &Options) -> Run {
    let (tx, rx) = batch::channel(options.buffer);
    let cancel = CancellationToken::new();
    let flow_name = flow.name;
    let mut limits = flow.spec.limits.clone();
    if options.collect_answer && limits.max_output_bytes.is_none() {
        // A collected answer lives in memory whole: cap it.
        limits.max_output_bytes = Some(DEFAULT_MAX_ANSWER_BYTES);
    }
    let logs = options.logs.clone();
    let llm = options.llm.clone();
    let flows = options.flows.clone();
    let client = options.client.clone();
    let isolation = Placement {
        policy: options.isolation.clone(),
        flow: flow.spec.isolation,
        memory_mb: flow.spec.limits.max_memory_mb,
    };
    let failed = Failures::default();
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
            };
            let result = run_node(&flow.root, context, &env).await;
            if let Err(failure) = &result {
                env.tx
                    .push_final(Chunk::error(failure.op, failure.to_string()));
            }
            result
        })
    };
    Run {
        flow_id: new_flow_id(),
        flow_name,
        rx,
        cancel,
        task: Some(task),
        input,
        limits,
        started: TokioInstant::now(),
        last_chunk: None,
        output_bytes: 0,
        answer: String::new(),
        collect_answer: options.collect_answer,
        stopped: None,
        finished: false,
        failed,
        _permit: None,
    }
}

/// Waits for the flow's turn (its `limits.max_concurrency` / `max_queue`, then the host-wide
/// limit) and starts it; refuses at once with [`crate::exec::admission::Busy`] when a line is full.
/// The run holds its turn until it is dropped.
pub async fn admit_and_start(
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
                for chunk in out.iter() {
                    self.output_bytes += chunk.text.len() as u64;
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
        Outcome {
            flow_id: self.flow_id.clone(),
            answer,
            context,
            error,
            failed_ops,
            crashed,
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

impl Drop for Run {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.cancel();
        }
    }
}

type NodeFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Map<String, Value>, Failure>> + Send + 'a>,
>;

/// Runs a node on `context`; returns what it wrote, in write order.
/// Op failures a run went on after (`raise_exception=False`): the name and the message.
type Failures = Arc<Mutex<Vec<(&'static str, String)>>>;

/// What every op of a run shares: the chunk channel, cancellation, the log sink.
#[derive(Clone)]
struct Env {
    tx: batch::Sender,
    cancel: CancellationToken,
    logs: Option<LogSink>,
    llm: Option<Arc<crate::llm::Service>>,
    isolation: Placement,
    failed: Failures,
    /// Set for a sub-op call: its answer chunks are gathered here, and go to the run's stream
    /// only when the parent asked to forward them.
    collect: Option<Collect>,
    flows: Option<FlowLookup>,
    client: Option<Client>,
    /// `FlowOp`s this node runs inside.
    depth: u32,
}

/// Where a sub-op call's answer text is gathered.
#[derive(Clone)]
struct Collect {
    answer: Arc<Mutex<String>>,
    forward: bool,
}

/// Where this run's ops go, and the memory limit of their workers.
#[derive(Clone)]
struct Placement {
    policy: Arc<IsolationPolicy>,
    flow: Option<Isolation>,
    memory_mb: Option<u64>,
}

impl Placement {
    fn isolated(&self, plugin: &str) -> bool {
        let choice = self
            .flow
            .or_else(|| self.policy.plugins.get(plugin).copied())
            .unwrap_or(self.policy.default);
        choice == Isolation::Process
    }
}

fn run_node<'a>(node: &'a Node, context: Arc<Map<String, Value>>, env: &'a Env) -> NodeFuture<'a> {
    Box::pin(async move {
        match node {
            Node::Call(step) => run_step(step, &context, env).await,
            Node::Flow(target) => {
                let failure = |message: String| Failure {
                    op: "FlowOp",
                    message,
                    crashed: false,
                };
                let Some(flow) = env
                    .flows
                    .as_ref()
                    .and_then(|lookup| lookup.get(&target.name))
                else {
                    return Err(failure(format!(
                        "no live flow `{}` to run (GET /flows lists them)",
                        target.name
                    )));
                };
                if env.depth >= MAX_FLOW_DEPTH {
                    return Err(failure(format!(
                        "flows run each other more than {MAX_FLOW_DEPTH} deep (at `{}`)",
                        target.name
                    )));
                }
                let inner = Env {
                    depth: env.depth + 1,
                    ..env.clone()
                };
                run_node(&flow.root, context, &inner).await
            }
            Node::Seq(items) => {
                let mut context = context;
                let mut writes = Map::new();
                for item in items {
                    if env.cancel.is_cancelled() {
                        break;
                    }
                    let step_writes = run_node(item, context.clone(), env).await?;
                    if !step_writes.is_empty() {
                        let shared = Arc::make_mut(&mut context);
                        for (key, value) in &step_writes {
                            shared.insert(key.clone(), value.clone());
                        }
                        writes.extend(step_writes);
                    }
                }
                Ok(writes)
            }
            Node::Par(branches) => {
                let group = env.cancel.child_token();
                let mut set = JoinSet::new();
                for (index, branch) in branches.iter().enumerate() {
                    let branch = branch.clone();
                    let context = context.clone();
                    let branch_env = Env {
                        cancel: group.clone(),
                        ..env.clone()
                    };
                    set.spawn(
                        async move { (index, run_node(&branch, context, &branch_env).await) },
                    );
                }
                let mut results: Vec<Option<Map<String, Value>>> = vec![None; branches.len()];
                let mut first_failure = None;
                while let Some(joined) = set.join_next().await {
                    let (index, result) = match joined {
                        Ok(done) => done,
                        Err(join) => {
                            group.cancel();
                            first_failure.get_or_insert(Failure {
                                op: "flow",
                                message: format!("a parallel branch crashed: {join}"),
                                crashed: false,
                            });
                            continue;
                        }
                    };
                    match result {
                        Ok(writes) => results[index] = Some(writes),
                        Err(failure) => {
                            // The first failure wins; the siblings it cancels fail after it.
                            group.cancel();
                            first_failure.get_or_insert(failure);
                        }
                    }
                }
                if let Some(failure) = first_failure {
                    return Err(failure);
                }
                let mut writes = Map::new();
                for branch_writes in results.into_iter().flatten() {
                    writes.extend(branch_writes);
                }
                Ok(writes)
            }
        }
    })
}

/// One step with its policy (`Step::policy`): answered from the cache, called (again, after a
/// failure before any output, up to `max_retries` calls), and a failure either fails the run
/// or, with `raise_exception=False`, is recorded while the run goes on.
async fn run_step(
    step: &Step,
    context: &Map<String, Value>,
    env: &Env,
) -> Result<Map<String, Value>, Failure> {
    let name = step.name();
    let context_json = serde_json::to_string(context).map_err(|err| Failure {
        op: name,
        message: format!("context is not serialisable: {err}"),
        crashed: false,
    })?;
    let policy = &step.policy;
    let cache_key = policy.cache_ttl.map(|_| {
        crate::exec::cache::Key::of(
            step.op.library.hash,
            // The call's name tags its chunks.
            &format!("{}\u{0}{name}", step.op.name),
            &step.args_json,
            &context_json,
        )
    });
    if let Some(key) = cache_key {
        if let Some(hit) = crate::exec::cache::lookup(key).await {
            metrics::counter!(crate::metrics::CACHE_HITS).increment(1);
            replay(&hit, env).await;
            return Ok(hit.writes.clone());
        }
        metrics::counter!(crate::metrics::CACHE_MISSES).increment(1);
    }
    let mut attempt = 1;
    loop {
        let (result, report) = call_once(step, &context_json, env, cache_key.is_some()).await;
        let failure = match result {
            Ok(writes) => {
                if let (Some(key), Some(ttl), Some(chunks)) =
                    (cache_key, policy.cache_ttl, report.recorded)
                {
                    let cached = crate::exec::cache::Cached {
                        chunks,
                        writes: writes.clone(),
                    };
                    crate::exec::cache::store(key, cached, ttl);
                }
                return Ok(writes);
            }
            Err(failure) => failure,
        };
        if env.cancel.is_cancelled() {
            return Err(failure);
        }
        if attempt < policy.attempts && report.emitted == 0 {
            let wait = crate::llm::backoff(attempt - 1);
            tracing::warn!(
                op = name,
                "{failure}; calling it again in {:.2}s (call {} of {}, max_retries)",
                wait.as_secs_f64(),
                attempt + 1,
                policy.attempts
            );
            metrics::counter!(crate::metrics::OP_RETRIES).increment(1);
            tokio::select! {
                _ = env.cancel.cancelled() => return Err(failure),
                _ = tokio::time::sleep(wait) => {}
            }
            attempt += 1;
            continue;
        }
        if !policy.tolerate_failure {
            return Err(failure);
        }
        let message = format!("{failure} (raise_exception=False: the flow goes on)");
        tracing::warn!(op = name, "{message}");
        metrics::counter!(crate::metrics::OP_FAILURES_TOLERATED).increment(1);
        if env.collect.as_ref().is_none_or(|c| c.forward) {
            env.tx.push_final(Chunk {
                tolerated: true,
                ..Chunk::error(name, message)
            });
        }
        env.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, failure.message));
        return Ok(Map::new());
    }
}

/// Sends a cached call's chunks into the run: at once while the buffer has room, the rest
/// from an op thread (a full buffer blocks, which the runtime thread must not).
async fn replay(hit: &Arc<crate::exec::cache::Cached>, env: &Env) {
    if let Some(collect) = &env.collect {
        let mut answer = collect.answer.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in hit.chunks.iter().filter(|c| c.kind == ChunkKind::Answer) {
            answer.push_str(&chunk.text);
        }
        if !collect.forward {
            return;
        }
    }
    let mut sent = 0;
    for chunk in &hit.chunks {
        match env.tx.try_push(chunk.clone(), &env.cancel) {
            Ok(true) => sent += 1,
            Ok(false) => return,
            Err(_) => break,
        }
    }
    if sent < hit.chunks.len() {
        let (hit, tx, cancel) = (hit.clone(), env.tx.clone(), env.cancel.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for chunk in &hit.chunks[sent..] {
                if !tx.push(chunk.clone(), &cancel) {
                    return;
                }
            }
        })
        .await;
    }
}

/// What one call did besides its result.
#[derive(Default)]
struct Report {
    /// Chunks the op emitted.
    emitted: u64,
    /// Its chunks, when recording for the cache and they fit.
    recorded: Option<Vec<Chunk>>,
}

/// One call of a step's op: inline, on the op pool, or in a worker process.
async fn call_once(
    step: &Step,
    context_json: &str,
    env: &Env,
    record: bool,
) -> (Result<Map<String, Value>, Failure>, Report) {
    let op_name = step.name();
    let host = OpHost {
        op: op_name,
        runtime: tokio::runtime::Handle::current(),
        inline: false,
        waited: AtomicBool::new(false),
        emitted: AtomicU64::new(0),
        recording: record.then(|| Mutex::new(Some((Vec::new(), 0)))),
        subs: step.subs.clone(),
        env: env.clone(),
    };
    let op = &step.op;
    let isolated = env.isolation.isolated(&op.library.plugin_name);
    let running = crate::metrics::ops_running();
    let joined = if !isolated
        && env.isolation.policy.inline == Inline::Auto
        && op.speed.inline()
        && host.runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    {
        // A proven-fast op runs right here (see `ops::Speed`); its waits leave the runtime
        // through `block_in_place`.
        let host = OpHost {
            inline: true,
            ..host
        };
        running.increment(1.0);
        let probe = crate::ops::Probe::start();
        let result = op
            .library
            .run(op.name, &step.args_json, context_json, &host)
            .map_err(crate::exec::worker::Error::Failed);
        op.speed
            .inlined(probe.finish(host.waited.load(Ordering::Relaxed)));
        running.decrement(1.0);
        Ok((result, host.report()))
    } else {
        let op = op.clone();
        let args = step.args_json.clone();
        let context_json = context_json.to_string();
        let memory_mb = env.isolation.memory_mb;
        tokio::task::spawn_blocking(move || {
            running.increment(1.0);
            let result = if isolated {
                crate::exec::worker::call(&op, &args, &context_json, &host, memory_mb)
            } else {
                let probe = op.speed.on_probation().then(crate::ops::Probe::start);
                let result = op.library.run(op.name, &args, &context_json, &host);
                let waited = host.waited.load(Ordering::Relaxed);
                match probe {
                    Some(probe) => op.speed.pooled(probe.finish(waited)),
                    // Past probation only a wait changes anything.
                    None if waited => op.speed.pooled(crate::ops::Call {
                        waited,
                        ..Default::default()
                    }),
                    None => {}
                }
                result.map_err(crate::exec::worker::Error::Failed)
            };
            running.decrement(1.0);
            (result, host.report())
        })
        .await
    };
    let failure = |message: String, crashed: bool| Failure {
        op: op_name,
        message,
        crashed,
    };
    let (result, report) = match joined {
        Ok(done) => done,
        // Whether it emitted is unknown: count it as having done so (no retry).
        Err(join) => {
            let report = Report {
                emitted: 1,
                recorded: None,
            };
            return (
                Err(failure(format!("op thread failed: {join}"), false)),
                report,
            );
        }
    };
    let result = match result {
        Ok(writes_json) => match serde_json::from_str(&writes_json) {
            Ok(Value::Object(writes)) => Ok(writes),
            _ => Err(failure(
                "returned context writes that are not a JSON object".into(),
                false,
            )),
        },
        Err(crate::exec::worker::Error::Failed(message)) => Err(failure(message, false)),
        Err(crate::exec::worker::Error::Crashed(message)) => Err(failure(message, true)),
    };
    (result, report)
}

/// Chunks recorded for the cache, and their text bytes.
type Recorded = (Vec<Chunk>, usize);

/// The host context handed to one op call.
struct OpHost {
    op: &'static str,
    runtime: tokio::runtime::Handle,
    /// The call runs on a runtime thread: waiting must go through `block_in_place`.
    inline: bool,
    /// The call waited on a host service (sleep, LLM, a full buffer).
    waited: AtomicBool,
    /// Chunks emitted (a failed call that emitted nothing may be made again).
    emitted: AtomicU64,
    /// The chunks so far and their bytes, while recording for the cache; `None` once they
    /// outgrew what the cache keeps.
    recording: Option<Mutex<Option<Recorded>>>,
    /// The sub-ops this call may call.
    subs: Arc<[SubStep]>,
    /// The run the call belongs to: its channel, cancellation, log sink, LLM service.
    env: Env,
}

impl OpHost {
    fn report(&self) -> Report {
        Report {
            emitted: self.emitted.load(Ordering::Relaxed),
            recorded: self
                .recording
                .as_ref()
                .and_then(|r| r.lock().unwrap_or_else(|p| p.into_inner()).take())
                .map(|(chunks, _)| chunks),
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

    /// Runs a wait of the op's: off the runtime thread when the call is inline.
    fn wait<R>(&self, wait: impl FnOnce() -> R) -> R {
        self.waited.store(true, Ordering::Relaxed);
        if self.inline {
            tokio::task::block_in_place(wait)
        } else {
            wait()
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
        };
        self.emitted.fetch_add(1, Ordering::Relaxed);
        self.record(&chunk);
        if let Some(collect) = &self.env.collect {
            if chunk.kind == ChunkKind::Answer {
                collect
                    .answer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&chunk.text);
            }
            if !collect.forward {
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

    fn log(&self, level: u8, message: &str) {
        let op = self.op;
        let level = match level {
            1 => op_sdk::Level::Error,
            2 => op_sdk::Level::Warn,
            3 => op_sdk::Level::Info,
            _ => op_sdk::Level::Debug,
        };
        match level {
            op_sdk::Level::Error => tracing::error!(op, "{message}"),
            op_sdk::Level::Warn => tracing::warn!(op, "{message}"),
            op_sdk::Level::Info => tracing::info!(op, "{message}"),
            op_sdk::Level::Debug => tracing::debug!(op, "{message}"),
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
            self.runtime.block_on(llm.chat_stream(
                &request,
                &self.env.cancel,
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
        let service: &'static str = match service {
            "sample" => "sample",
            "elicit" => "elicit",
            "roots" => "roots",
            other => {
                return Err(format!(
                    "no host service `{other}` (this flowhost offers sample, elicit and roots)"
                ))
            }
        };
        let mut request: Value = serde_json::from_str(request)
            .map_err(|err| format!("the {service} request is not valid JSON: {err}"))?;
        let name = match request.as_object_mut().and_then(|r| r.remove("name")) {
            Some(Value::String(name)) if !name.is_empty() => Some(name),
            _ => None,
        };
        let request = match service {
            "sample" => sampling_request(&request)?,
            _ => request,
        };
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
    /// `ctx.sample` / `ctx.elicit`: the client when it can answer; `sample` falls back to the
    /// LLM service.
    async fn ask(
        &self,
        service: &'static str,
        request: Value,
        name: Option<String>,
    ) -> Result<Value, String> {
        let unsupported = match &self.env.client {
            Some(client) => match client.0.ask(service, request.clone(), name).await {
                Ok(result) => return Ok(result),
                Err(AskError::Failed(message)) => return Err(message),
                Err(AskError::Unsupported(message)) => message,
            },
            None => "this run has no MCP client to ask (it came over HTTP)".to_string(),
        };
        match service {
            "sample" => {}
            "elicit" => return Err(format!(
                "cannot elicit: {unsupported}; elicitation needs an MCP client that shows the user a form (call this flow as an MCP tool from such a client)"
            )),
            _ => return Err(format!(
                "cannot list roots: {unsupported}; roots come from an MCP client that declares them"
            )),
        }
        let Some(llm) = &self.env.llm else {
            return Err(format!(
                "cannot sample: {unsupported}, and this host has no LLM service to fall back to (configure `llm:`)"
            ));
        };
        let chat = sampling_to_chat(&request);
        let reply = llm
            .chat_stream(&chat, &self.env.cancel, |_, _, _| true)
            .await
            .map_err(|err| {
                format!("cannot sample: {unsupported}; the LLM service failed: {err}")
            })?;
        Ok(serde_json::json!({
            "role": "assistant",
            "content": {"type": "text", "text": reply["answer"].as_str().unwrap_or_default()},
            "model": chat["llm"].as_str().unwrap_or("default"),
            "stopReason": "endTurn",
            "_meta": {"flowhost": {"answered_by": "llm service", "usage": reply["usage"]}},
        }))
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
        let env = Env {
            collect: Some(Collect {
                answer: answer.clone(),
                forward,
            }),
            ..self.env.clone()
        };
        let writes = run_node(&sub.node, Arc::new(arguments), &env)
            .await
            .map_err(|failure| failure.to_string())?;
        let answer = match writes.get("answer") {
            Some(answer) if !answer.is_null() => answer.clone(),
            _ => Value::String(std::mem::take(
                &mut *answer.lock().unwrap_or_else(|p| p.into_inner()),
            )),
        };
        Ok(serde_json::json!({"answer": answer, "writes": writes}))
    }
}

/// `ctx.sample`'s `{messages, options}` as MCP `CreateMessageRequest` params: string contents
/// become text blocks, `maxTokens` defaults to 1000.
fn sampling_request(request: &Value) -> Result<Value, String> {
    let Some(messages) = request["messages"].as_array() else {
        return Err("sample needs `messages`: a list of {role, content}".into());
    };
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            let content = match &m["content"] {
                Value::String(text) => serde_json::json!({"type": "text", "text": text}),
                other => other.clone(),
            };
            serde_json::json!({"role": m["role"].as_str().unwrap_or("user"), "content": content})
        })
        .collect();
    let mut params = match &request["options"] {
        Value::Object(options) => options.clone(),
        _ => Map::new(),
    };
    params.insert("messages".into(), Value::Array(messages));
    params
        .entry("maxTokens")
        .or_insert_with(|| Value::from(1000));
    Ok(Value::Object(params))
}

/// MCP sampling params as a chat request for the LLM service.
fn sampling_to_chat(params: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = params["systemPrompt"].as_str() {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    for m in params["messages"].as_array().into_iter().flatten() {
        let text = match &m["content"] {
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            block => block["text"].as_str().unwrap_or_default().to_string(),
        };
        messages.push(serde_json::json!({"role": m["role"], "content": text}));
    }
    let mut chat = serde_json::json!({"messages": messages});
    if let Some(max) = params.get("maxTokens") {
        chat["max_tokens"] = max.clone();
    }
    if let Some(t) = params.get("temperature") {
        chat["temperature"] = t.clone();
    }
    if let Some(stop) = params.get("stopSequences") {
        chat["stop"] = stop.clone();
    }
    chat
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_channel_is_bounded_and_counts_what_it_drops() {
        let (sink, mut rx) = LogSink::bounded(3);
        for i in 0..10 {
            sink.send(LogLine {
                level: op_sdk::Level::Info,
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
