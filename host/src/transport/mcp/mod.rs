//! The MCP server (rmcp): every flow is a tool, stream flows included. Served over stdio
//! (newline-delimited JSON-RPC; this module owns the line reader so malformed and oversized
//! lines get JSON-RPC errors instead of silence) and over Streamable HTTP at `/mcp`. Knows
//! nothing of plugins: it reads the catalog's snapshots and runs flows with the executor.

pub mod lines;

use std::sync::Arc;

use futures_util::StreamExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode, ErrorData,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, JsonRpcMessage,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    NumberOrString, PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{
    NotificationContext, RequestContext, RxJsonRpcMessage, SubscriptionContext, TxJsonRpcMessage,
};
use rmcp::{RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::catalog::Catalog;
use crate::chunk::ChunkKind;
use crate::exec::{self, Run};
use crate::lang::flow::TaskSupport;

/// The MCP server for one connection (stdio) or one session (HTTP).
#[derive(Clone)]
pub struct FlowTools {
    catalog: Arc<Catalog>,
    run_options: exec::Options,
    /// The lowest op log level the client asked for with `logging/setLevel` (a rank, see
    /// [`level_rank`]); none until it asks.
    log_level: Arc<std::sync::atomic::AtomicU8>,
    /// Resource URIs this session subscribed to (`resources/subscribe`), with the fingerprint
    /// of what they read as when last announced.
    subscriptions: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Option<String>>>>,
    /// Calls that became tasks (shared by every session of this server).
    tasks: Arc<rmcp::task_manager::TaskManager>,
}

/// Op log lines held per call before more are dropped (and counted).
const LOG_LINES_PER_CALL: usize = 1024;

/// No `logging/setLevel` yet: op logs stay in the host's log.
const LOGS_OFF: u8 = u8::MAX;

impl FlowTools {
    pub fn new(catalog: Arc<Catalog>, run_options: exec::Options) -> FlowTools {
        FlowTools {
            catalog,
            run_options,
            log_level: Arc::new(std::sync::atomic::AtomicU8::new(LOGS_OFF)),
            subscriptions: Arc::default(),
            tasks: Arc::default(),
        }
    }

    /// Shares one task store between the sessions of a server (tasks outlive the request that
    /// made them, and stateless requests each get a fresh handler).
    fn with_tasks(mut self, tasks: Arc<rmcp::task_manager::TaskManager>) -> FlowTools {
        self.tasks = tasks;
        self
    }

    /// For stateless HTTP: there is no session to remember a `logging/setLevel` in (the next
    /// request may reach another replica), so op logs at info and above are sent with every
    /// call, as the spec lets a server decide when the client has not set a level.
    fn stateless(catalog: Arc<Catalog>, run_options: exec::Options) -> FlowTools {
        let tools = FlowTools::new(catalog, run_options);
        tools.log_level.store(
            logging::op_level_rank(op_sdk::Level::Info),
            std::sync::atomic::Ordering::Relaxed,
        );
        tools
    }

    /// The tools of the current snapshot: one per flow that can run.
    pub fn tools(&self) -> Vec<Tool> {
        let snapshot = self.catalog.snapshot();
        snapshot
            .live()
            .map(|(name, flow)| {
                let schema = match &flow.spec.input_schema {
                    Value::Object(map) => map.clone(),
                    _ => Map::new(),
                };
                let mut description = flow.spec.description.clone();
                if description.is_empty() {
                    // An agent picks tools by their description: say at least what it runs.
                    description = format!(
                        "Runs the flow `{name}`: {}",
                        flow.spec.flow_content.split_whitespace().collect::<Vec<_>>().join(" ")
                    );
                }
                if flow.spec.stream {
                    if !description.is_empty() {
                        description.push(' ');
                    }
                    description.push_str("(streams: pass a progressToken to receive chunks as progress notifications)");
                }
                let mut tool = Tool::new(name.clone(), description, Arc::new(schema));
                if let Some(Value::Object(output)) = &flow.spec.output_schema {
                    tool.output_schema = Some(Arc::new(output.clone()));
                }
                if !flow.spec.icons.is_empty() {
                    tool.icons = serde_json::from_value(Value::Array(flow.spec.icons.clone())).ok();
                }
                tool
            })
            .collect()
    }

    /// Runs one flow for `tools/call`. Failures the model should read are tool results with
    /// `isError`; only an unknown tool is a protocol error.
    async fn call(
        &self,
        name: &str,
        arguments: Map<String, Value>,
        context: &RequestContext<RoleServer>,
        exchange: Option<Arc<Exchange>>,
    ) -> Result<CallToolResponse, ErrorData> {
        let snapshot = self.catalog.snapshot();
        let Some(entry) = snapshot.get(name) else {
            return Err(ErrorData::new(
                ErrorCode::INVALID_PARAMS,
                format!("unknown tool `{name}`: tools/list names the tools (one per flow)"),
                None,
            ));
        };
        let Some(flow) = entry.flow.clone() else {
            let reason = entry
                .error
                .as_ref()
                .map_or_else(|| "unknown error".to_string(), |d| d.to_string());
            return Ok(response(failure(format!(
                "flow `{name}` is broken and has no good version: {reason}"
            ))));
        };
        drop(snapshot);
        let arguments = match flow.check_input(arguments) {
            Ok(arguments) => arguments,
            Err(problems) => {
                let lines: Vec<String> = problems
                    .iter()
                    .map(|(field, message)| {
                        if field.is_empty() {
                            message.clone()
                        } else {
                            format!("{field}: {message}")
                        }
                    })
                    .collect();
                return Ok(response(failure(format!(
                    "invalid arguments for `{name}`: {}",
                    lines.join("; ")
                ))));
            }
        };
        // Tasks (the 2026-07-28 extension): a client that declares it gets a task for a flow
        // that allows one, once the call has run `task_after`.
        let tasks_declared = context
            .client_capabilities()
            .is_some_and(|c| c.supports_tasks());
        let task_after = match (flow.spec.task, tasks_declared) {
            (TaskSupport::Forbidden, _) | (TaskSupport::Optional, false) => None,
            (TaskSupport::Optional | TaskSupport::Required, true) => Some(flow.spec.task_after),
            (TaskSupport::Required, false) => {
                return Err(ErrorData::missing_required_client_capability(
                    rmcp::model::ClientCapabilities::builder()
                        .enable_tasks()
                        .build(),
                ))
            }
        };
        let progress = context.meta.get_progress_token();
        // 2026-07-28 requests say in their own `_meta` whether they want log messages.
        #[allow(deprecated)] // logging: see the `logging` module
        let threshold = match &exchange {
            Some(_) => context
                .meta
                .log_level()
                .map_or(LOGS_OFF, logging::mcp_level_rank),
            None => self.log_level.load(std::sync::atomic::Ordering::Relaxed),
        };
        let (log_tx, mut log_rx) = exec::LogSink::bounded(LOG_LINES_PER_CALL);
        let log_sink = log_tx.clone();
        let task_slot: Arc<TaskSlot> = Arc::default();
        task_slot.at_once.store(
            task_after == Some(std::time::Duration::ZERO),
            std::sync::atomic::Ordering::Release,
        );
        let options = exec::Options {
            collect_answer: true,
            logs: (threshold != LOGS_OFF).then_some(log_tx),
            client: Some(exec::Client(Arc::new(ClientAsker {
                peer: context.peer.clone(),
                capabilities: context.client_capabilities(),
                exchange: exchange.clone(),
                task: task_slot.clone(),
            }))),
            ..self.run_options.clone()
        };
        let mut run = match exec::admit_and_start(flow.clone(), arguments, &options).await {
            Ok(run) => run,
            // The model reads why and can try again later.
            Err(busy) => return Ok(response(failure(busy.message))),
        };
        let flow_id = run.flow_id.clone();
        let mut batch = Vec::new();
        let mut gathered = Gathered::default();
        let mut sent = 0u64;
        // MRTR: once an op asks the client, the others get a moment to ask too; then the call
        // answers with every request and stops the run (the retry runs it again, answered).
        let mut asking: Option<tokio::time::Instant> = None;
        let asked = exchange.as_ref().map(|e| e.asked.clone());
        let task_at = task_after.map(|after| tokio::time::Instant::now() + after);
        loop {
            let escalate = task_at.is_some_and(|at| at <= tokio::time::Instant::now());
            if escalate && asking.is_none() {
                // rmcp fails a task still running at its TTL and forgets a finished one a TTL
                // after it ended: give the flow its whole time limit, plus 5 minutes to fetch.
                let ttl = flow
                    .spec
                    .limits
                    .total_timeout
                    .map_or(TASK_TTL_WITHOUT_LIMIT, |limit| limit + TASK_KEPT);
                let task = self.tasks.spawn(
                    rmcp::task_manager::TaskOptions::new()
                        .with_ttl_ms(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                        .with_poll_interval_ms(TASK_POLL_MS)
                        .with_status_message(format!("running flow {name}")),
                    move |task| {
                        task_slot.fill(task.clone());
                        Box::pin(finish_as_task(task, run, batch, gathered, log_rx, flow))
                    },
                );
                tracing::info!(tool = name, %flow_id, task = %task.task_id, "tools/call became a task");
                return Ok(CallToolResponse::Task(rmcp::model::CreateTaskResult::new(
                    task,
                )));
            }
            let more = tokio::select! {
                more = run.next_batch(&mut batch) => more,
                _ = tokio::time::sleep_until(task_at.unwrap_or_else(tokio::time::Instant::now)), if task_at.is_some() && asking.is_none() => continue,
                _ = async { asked.as_ref().expect("set").notified().await }, if asked.is_some() && asking.is_none() => {
                    asking = Some(tokio::time::Instant::now() + ASK_GRACE);
                    continue;
                }
                _ = tokio::time::sleep_until(asking.unwrap_or_else(tokio::time::Instant::now)), if asking.is_some() => {
                    run.cancel_token().cancel();
                    let _ = run.finish().await;
                    let exchange = exchange.as_ref().expect("asking needs an exchange");
                    return exchange.input_required().map(CallToolResponse::from);
                }
                Some(line) = log_rx.recv() => {
                    if op_level_rank(line.level) >= threshold {
                        forward_log(&context.peer, line).await;
                    }
                    continue;
                }
                _ = context.ct.cancelled() => {
                    let started = std::time::Instant::now();
                    run.cancel_token().cancel();
                    // The ops see the cancel at their next emit or sleep; report when they stop.
                    match tokio::time::timeout(std::time::Duration::from_secs(5), run.finish()).await {
                        Ok(_) => tracing::info!(
                            tool = name, %flow_id,
                            "tools/call cancelled by the client; ops stopped in {:.1} ms",
                            started.elapsed().as_secs_f64() * 1e3
                        ),
                        Err(_) => tracing::warn!(
                            tool = name, %flow_id,
                            "tools/call cancelled by the client; ops still running after 5 s"
                        ),
                    }
                    return Ok(response(failure("cancelled by the client".to_string())));
                }
            };
            if !more {
                break;
            }
            for chunk in batch.drain(..) {
                gathered.take(&chunk);
                let Some(token) = &progress else { continue };
                sent += 1;
                let message = match chunk.kind {
                    ChunkKind::Answer => chunk.text,
                    kind => format!("[{}] {}", kind.as_str(), chunk.text),
                };
                let param = ProgressNotificationParam::new(token.clone(), sent as f64)
                    .with_message(message);
                if context.peer.notify_progress(param).await.is_err() {
                    // The client is gone; dropping the run cancels it.
                    return Ok(response(failure("the client went away".to_string())));
                }
            }
        }
        let outcome = run.finish().await;
        if let Some(exchange) = &exchange {
            // An op asked just as the run ended (others failed because it stopped waiting).
            if exchange.has_requests() {
                return exchange.input_required().map(CallToolResponse::from);
            }
            // An op needed a capability the client did not declare, and nothing else answered.
            if let (Some(_), Some(missing)) = (&outcome.error, exchange.missing()) {
                return Err(missing);
            }
        }
        while let Ok(line) = log_rx.try_recv() {
            if op_level_rank(line.level) >= threshold {
                forward_log(&context.peer, line).await;
            }
        }
        let dropped = log_sink.dropped();
        if dropped > 0 && threshold != LOGS_OFF {
            let line = exec::LogLine {
                level: op_sdk::Level::Warn,
                op: "flowhost",
                message: format!("{dropped} op log line(s) of this call were dropped: the ops logged faster than they could be sent"),
            };
            forward_log(&context.peer, line).await;
        }
        Ok(response(tool_result(&flow, &outcome, gathered, &flow_id)))
    }
}

/// What a call keeps of its run's chunks besides the answer.
#[derive(Default)]
struct Gathered {
    think: String,
    tool_calls: Vec<Value>,
    usage: Value,
    /// Chunks seen.
    chunks: u64,
}

impl Gathered {
    fn take(&mut self, chunk: &crate::chunk::Chunk) {
        self.chunks += 1;
        match chunk.kind {
            ChunkKind::Think => self.think.push_str(&chunk.text),
            ChunkKind::Tool => self.tool_calls.push(chunk.content()),
            ChunkKind::Usage => self.usage = chunk.content(),
            ChunkKind::Answer | ChunkKind::Error => {}
        }
    }
}

/// A finished run as a tool result: the answer as content (a flow with `output_schema`: its
/// structure, checked), and `{answer, think, tool_calls, usage, flow_id}` as structured
/// content.
fn tool_result(
    flow: &crate::lang::flow::Flow,
    outcome: &exec::Outcome,
    gathered: Gathered,
    flow_id: &str,
) -> CallToolResult {
    if let (None, Some(structured)) = (&outcome.error, flow.structured_output(&outcome.answer)) {
        return match structured {
            Ok(value) => {
                let mut result =
                    CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
                result.structured_content = Some(value);
                result
            }
            Err(problem) => failure(format!("flow `{}`: {problem}", flow.name)),
        };
    }
    let content = answer_content(&outcome.answer);
    let mut structured = json!({
        "answer": outcome.answer,
        "think": gathered.think,
        "tool_calls": gathered.tool_calls,
        "usage": gathered.usage,
        "flow_id": flow_id,
    });
    if !outcome.failed_ops.is_empty() {
        structured["failed_ops"] = Value::Array(outcome.failed_ops.clone());
    }
    let mut result = match &outcome.error {
        None => CallToolResult::success(content),
        Some(error) => CallToolResult::error(vec![ContentBlock::text(error.clone())]),
    };
    result.structured_content = Some(structured);
    result
}

/// The rest of a call that became a task: runs to the end (or `tasks/cancel`) with nobody
/// waiting on the request; the result is kept for `tasks/get`.
async fn finish_as_task(
    task: rmcp::task_manager::TaskContext,
    mut run: Run,
    mut batch: Vec<crate::chunk::Chunk>,
    mut gathered: Gathered,
    mut logs: tokio::sync::mpsc::Receiver<exec::LogLine>,
    flow: Arc<crate::lang::flow::Flow>,
) -> Result<CallToolResult, rmcp::task_manager::TaskExit> {
    let flow_id = run.flow_id.clone();
    loop {
        let more = tokio::select! {
            more = run.next_batch(&mut batch) => more,
            // Nobody to send them to once the request has been answered.
            Some(_) = logs.recv() => continue,
            _ = task.cancelled() => {
                run.cancel_token().cancel();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), run.finish()).await;
                return Err(rmcp::task_manager::TaskExit::Cancelled);
            }
        };
        if !more {
            break;
        }
        // Progress is kept on the task: how far the run got, for `tasks/get`.
        if let Some(last) = batch.last() {
            let chunks = gathered.chunks + batch.len() as u64;
            let mut text: String = last.text.chars().take(120).collect();
            if text.len() < last.text.len() {
                text.push('…');
            }
            task.set_status_message(format!(
                "running flow {}: {chunks} chunk(s); last {}: {text}",
                flow.name,
                last.kind.as_str()
            ));
        }
        for chunk in batch.drain(..) {
            gathered.take(&chunk);
        }
    }
    let outcome = run.finish().await;
    // A crash is the host's failure, not the tool's answer: the task `failed`.
    if let (true, Some(error)) = (outcome.crashed, &outcome.error) {
        return Err(rmcp::task_manager::TaskExit::Error(
            ErrorData::internal_error(error.clone(), Some(json!({"flow_id": flow_id}))),
        ));
    }
    Ok(tool_result(&flow, &outcome, gathered, &flow_id))
}

/// Suggested `tasks/get` polling interval.
const TASK_POLL_MS: u64 = 500;

/// A task's TTL past its flow's `total_timeout`.
const TASK_KEPT: std::time::Duration = std::time::Duration::from_secs(300);

/// The TTL of a task whose flow has no `total_timeout`.
const TASK_TTL_WITHOUT_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The task a call became, once it has (asks then go through `tasks/update`).
#[derive(Default)]
struct TaskSlot {
    task: std::sync::Mutex<Option<rmcp::task_manager::TaskContext>>,
    set: tokio::sync::Notify,
    /// The call becomes a task before its ops can ask anything: their questions wait for it.
    at_once: std::sync::atomic::AtomicBool,
}

impl TaskSlot {
    fn fill(&self, task: rmcp::task_manager::TaskContext) {
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        self.set.notify_waiters();
    }

    fn get(&self) -> Option<rmcp::task_manager::TaskContext> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The task, waiting for it when the call becomes one at once.
    async fn wait(&self) -> Option<rmcp::task_manager::TaskContext> {
        loop {
            let set = self.set.notified();
            if let Some(task) = self.get() {
                return Some(task);
            }
            if !self.at_once.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            set.await;
        }
    }
}

fn response(result: CallToolResult) -> CallToolResponse {
    CallToolResponse::from(result)
}

/// How long other ops of a run may still ask the client after the first one did, before the
/// call answers with an input-required result.
const ASK_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// A tool result's content for a flow's answer. An answer that is a list of MCP content blocks
/// (objects with a `type` such as `text`, `image`, `audio`, `resource`) is returned as is, so a
/// flow can answer with images or resources; any other answer is one text block.
fn answer_content(answer: &Value) -> Vec<ContentBlock> {
    if let Value::Array(items) = answer {
        let blocks: Option<Vec<ContentBlock>> = items
            .iter()
            .map(|item| {
                item.get("type")?;
                serde_json::from_value(item.clone()).ok()
            })
            .collect();
        if let Some(blocks) = blocks.filter(|b| !b.is_empty()) {
            return blocks;
        }
    }
    let text = match answer {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    vec![ContentBlock::text(text)]
}

// MCP logging is deprecated by the 2026-07-28 revision (SEP-2577) but part of 2025-11-25,
// which flowhost serves too.
#[allow(deprecated)]
mod logging {
    use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
    use rmcp::service::Peer;
    use rmcp::RoleServer;

    use crate::exec::LogLine;

    /// Severity ranks shared by op levels and MCP levels (higher is more severe).
    pub fn mcp_level_rank(level: LoggingLevel) -> u8 {
        match level {
            LoggingLevel::Debug => 0,
            LoggingLevel::Info => 1,
            LoggingLevel::Notice => 2,
            LoggingLevel::Warning => 3,
            LoggingLevel::Error => 4,
            LoggingLevel::Critical => 5,
            LoggingLevel::Alert => 6,
            LoggingLevel::Emergency => 7,
        }
    }

    pub fn op_level_rank(level: op_sdk::Level) -> u8 {
        match level {
            op_sdk::Level::Debug => 0,
            op_sdk::Level::Info => 1,
            op_sdk::Level::Warn => 3,
            op_sdk::Level::Error => 4,
        }
    }

    pub async fn forward_log(peer: &Peer<RoleServer>, line: LogLine) {
        let level = match line.level {
            op_sdk::Level::Debug => LoggingLevel::Debug,
            op_sdk::Level::Info => LoggingLevel::Info,
            op_sdk::Level::Warn => LoggingLevel::Warning,
            op_sdk::Level::Error => LoggingLevel::Error,
        };
        let param =
            LoggingMessageNotificationParam::new(level, line.message.into()).with_logger(line.op);
        let _ = peer.notify_logging_message(param).await;
    }

    pub fn set_level(request: &rmcp::model::SetLevelRequestParams) -> u8 {
        mcp_level_rank(request.level)
    }
}

use logging::{forward_log, op_level_rank};

/// Asks the MCP client of one `tools/call` on behalf of its ops (`ctx.sample`, `ctx.elicit`,
/// `ctx.roots`). 2025 revisions: `sampling/createMessage`, `elicitation/create` and
/// `roots/list` requests to clients that declared the capability. 2026-07-28 (no
/// server-to-client requests): through the call's [`Exchange`].
struct ClientAsker {
    peer: rmcp::service::Peer<RoleServer>,
    /// What the client declared (per request in 2026-07-28, at initialize before).
    capabilities: Option<rmcp::model::ClientCapabilities>,
    /// Set for 2026-07-28 calls (multi round-trip requests).
    exchange: Option<Arc<Exchange>>,
    /// Set once the call became a task: questions wait for `tasks/update`.
    task: Arc<TaskSlot>,
}

/// The MCP method and client capability of each service.
fn service_method(service: &str) -> (&'static str, &'static str) {
    match service {
        "sample" => ("sampling/createMessage", "sampling"),
        "elicit" => ("elicitation/create", "elicitation"),
        _ => ("roots/list", "roots"),
    }
}

impl exec::Asker for ClientAsker {
    #[allow(deprecated)] // sampling and roots: deprecated by SEP-2577, part of the 2025 revisions
    fn ask(&self, service: &'static str, request: Value, name: Option<String>) -> exec::AskFuture {
        use exec::AskError;
        let peer = self.peer.clone();
        let (method, capability) = service_method(service);
        let declared = self
            .capabilities
            .as_ref()
            .is_some_and(|c| match capability {
                "sampling" => c.sampling.is_some(),
                "elicitation" => c.elicitation.is_some(),
                _ => c.roots.is_some(),
            });
        let exchange = self.exchange.clone();
        let slot = self.task.clone();
        Box::pin(async move {
            if let Some(task) = slot.wait().await {
                if !declared {
                    return Err(AskError::Unsupported(format!(
                        "the MCP client did not declare the {capability} capability"
                    )));
                }
                let request: rmcp::model::InputRequest =
                    serde_json::from_value(json!({"method": method, "params": request})).map_err(
                        |err| AskError::Failed(format!("not a valid MCP {method} request: {err}")),
                    )?;
                let key = name.unwrap_or_else(|| format!("{capability}-{}", uuid_like()));
                return task.request_input(key, request).await.map_err(|exit| {
                    AskError::Failed(match exit {
                        rmcp::task_manager::TaskExit::Cancelled => "the task was cancelled".into(),
                        rmcp::task_manager::TaskExit::Error(err) => err.message.to_string(),
                    })
                });
            }
            if let Some(exchange) = exchange {
                return exchange
                    .ask(method, capability, declared, request, name)
                    .await;
            }
            if !declared {
                return Err(AskError::Unsupported(format!(
                    "the MCP client did not declare the {capability} capability"
                )));
            }
            let failed = |err: rmcp::ServiceError| {
                AskError::Failed(format!("the MCP client's answer to {method} failed: {err}"))
            };
            let invalid = |err: serde_json::Error| {
                AskError::Failed(format!("not a valid MCP {method} request: {err}"))
            };
            let result = match service {
                "sample" => serde_json::to_value(
                    peer.create_message(serde_json::from_value(request).map_err(invalid)?)
                        .await
                        .map_err(failed)?,
                ),
                "elicit" => serde_json::to_value(
                    peer.create_elicitation(serde_json::from_value(request).map_err(invalid)?)
                        .await
                        .map_err(failed)?,
                ),
                _ => serde_json::to_value(peer.list_roots().await.map_err(failed)?),
            };
            result.map_err(|err| AskError::Failed(err.to_string()))
        })
    }
}

/// A fresh key for a task's question (keys must not repeat within a task).
fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "{:x}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// One 2026-07-28 `tools/call` round (SEP-2322 multi round-trip requests). The run is the same
/// code every round: what the client answered so far (`inputResponses`, plus the earlier
/// rounds' answers sealed in `requestState`) is looked up by a key made from the request, so
/// an op that asks the same thing again gets its answer at once; a new question becomes an
/// input request of this round's result. Nothing is kept between rounds on the server: any
/// replica sharing `http.mcp_state_key` can serve the next round.
pub struct Exchange {
    answers: Map<String, Value>,
    /// Questions of this round: key → `{method, params}`.
    requests: std::sync::Mutex<Map<String, Value>>,
    /// A capability an op needed that the client did not declare.
    missing: std::sync::Mutex<Option<&'static str>>,
    asked: Arc<tokio::sync::Notify>,
}

impl Exchange {
    /// Opens a round from the request's `requestState` and `inputResponses`. A state that was
    /// not sealed by this host (or a replica with the same key) is refused.
    fn open(
        request_state: Option<&str>,
        responses: Option<&std::collections::BTreeMap<String, Value>>,
    ) -> Result<Exchange, ErrorData> {
        let mut answers = match request_state {
            None => Map::new(),
            Some(sealed) => state_codec().open_json::<Map<String, Value>>(sealed).map_err(|err| {
                ErrorData::invalid_params(
                    format!("requestState failed its integrity check ({err}): it was changed, expired, or sealed by a host with another http.mcp_state_key; start the call again without it"),
                    None,
                )
            })?,
        };
        for (key, value) in responses.into_iter().flatten() {
            if !value.is_object() {
                return Err(ErrorData::invalid_params(
                    format!("inputResponses.{key} must be an object (the client's result for that input request: an ElicitResult, CreateMessageResult or ListRootsResult), found {value}"),
                    None,
                ));
            }
            answers.insert(key.clone(), value.clone());
        }
        Ok(Exchange {
            answers,
            requests: Default::default(),
            missing: Default::default(),
            asked: Arc::default(),
        })
    }

    async fn ask(
        &self,
        method: &'static str,
        capability: &'static str,
        declared: bool,
        params: Value,
        name: Option<String>,
    ) -> Result<Value, exec::AskError> {
        // The op's name for the question, else one made from the question itself: the same
        // every round, so the answer finds its way back.
        let key = name.unwrap_or_else(|| {
            format!(
                "{}-{:016x}",
                capability,
                crate::util::stable_hash(format!("{method}\u{0}{params}").as_bytes())
            )
        });
        if let Some(answer) = self.answers.get(&key) {
            return Ok(answer.clone());
        }
        if !declared {
            *self.missing.lock().unwrap_or_else(|p| p.into_inner()) = Some(capability);
            return Err(exec::AskError::Unsupported(format!(
                "the MCP client did not declare the {capability} capability in this request"
            )));
        }
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, json!({"method": method, "params": params}));
        self.asked.notify_one();
        // The call answers with the question and stops the run; this op waits until then.
        std::future::pending().await
    }

    fn has_requests(&self) -> bool {
        !self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn missing(&self) -> Option<ErrorData> {
        let capability = (*self.missing.lock().unwrap_or_else(|p| p.into_inner()))?;
        let mut required = Map::new();
        required.insert(capability.into(), json!({}));
        let required = serde_json::from_value(Value::Object(required)).ok()?;
        Some(ErrorData::missing_required_client_capability(required))
    }

    /// This round's result: the questions, and every answer so far sealed for the next round.
    fn input_required(&self) -> Result<rmcp::model::InputRequiredResult, ErrorData> {
        let requests =
            std::mem::take(&mut *self.requests.lock().unwrap_or_else(|p| p.into_inner()));
        let requests = serde_json::from_value(Value::Object(requests)).map_err(|err| {
            ErrorData::internal_error(
                format!("an op asked something MCP cannot carry: {err}"),
                None,
            )
        })?;
        let state = state_codec().seal_json(&self.answers).map_err(|err| {
            ErrorData::internal_error(format!("cannot seal the request state: {err}"), None)
        })?;
        Ok(rmcp::model::InputRequiredResult::new(
            Some(requests),
            Some(state),
        ))
    }
}

static STATE_CODEC: std::sync::OnceLock<rmcp::model::RequestStateCodec> =
    std::sync::OnceLock::new();

/// Sets the key `requestState` is sealed with (`http.mcp_state_key`: replicas behind one proxy
/// share it). Without one, each process draws a random key at its first use.
pub fn set_state_key(key: &str) -> Result<(), String> {
    let codec = rmcp::model::RequestStateCodec::try_new(key.as_bytes().to_vec())
        .map_err(|err| format!("http.mcp_state_key: {err} (use at least 32 bytes)"))?;
    let _ = STATE_CODEC.set(codec);
    Ok(())
}

fn state_codec() -> &'static rmcp::model::RequestStateCodec {
    STATE_CODEC.get_or_init(|| {
        let key: [u8; 32] = rand_key();
        rmcp::model::RequestStateCodec::new_unchecked(key.to_vec())
    })
}

/// 32 random bytes from the OS.
fn rand_key() -> [u8; 32] {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .expect("read /dev/urandom for the request-state key");
    key
}

/// Whether a protocol version is 2026-07-28 or later (dates compare as text).
fn is_2026(version: &str) -> bool {
    version >= rmcp::model::ProtocolVersion::V_2026_07_28.as_str()
}

/// Whether this request speaks 2026-07-28 or later (no server-to-client requests; questions
/// go back as input-required results).
fn speaks_2026(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|v| is_2026(v.as_str()))
}

/// A content request failed: unknown names are "resource not found" / invalid params.
fn content_error(error: crate::catalog::content::ContentError) -> ErrorData {
    use crate::catalog::content::ContentError;
    match error {
        ContentError::NotFound(message) => ErrorData::resource_not_found(message, None),
        ContentError::Invalid(message) => ErrorData::invalid_params(message, None),
        ContentError::Failed(message) => ErrorData::internal_error(message, None),
        asks @ ContentError::NeedsInput(_) => ErrorData::invalid_request(asks.to_string(), None),
    }
}

/// Runs plugin content code (author code that may block) off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::catalog::content::ContentError> + Send + 'static,
) -> Result<T, ErrorData> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ErrorData::internal_error(format!("the read failed: {err}"), None))?
        .map_err(content_error)
}

/// What a session announces after a reload: which lists changed, and which subscribed
/// resources read differently now.
#[derive(Default)]
struct Announced {
    resources: String,
    prompts: String,
}

impl Announced {
    fn of(snapshot: &crate::catalog::Snapshot) -> Announced {
        let listed = crate::catalog::content::list(snapshot);
        Announced {
            resources: format!("{}{}", listed["resources"], listed["templates"]),
            prompts: listed["prompts"].to_string(),
        }
    }
}

fn failure(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

impl ServerHandler for FlowTools {
    #[allow(deprecated)] // logging: see the `logging` module
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .enable_resources_subscribe()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("flowhost", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Each tool runs a flowhost flow. Stream flows send their chunks as progress \
             notifications when the call carries a progressToken; the result holds the answer \
             as text and {answer, think, tool_calls, usage} as structured content (a flow with \
             an output schema answers with that structure). Resources: each flow as \
             flow://{name}, and what plugins offer; prompts come from plugins.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = request.arguments.clone().unwrap_or_default();
        let exchange = if speaks_2026(&context) {
            Some(Arc::new(Exchange::open(
                request.request_state.as_deref(),
                request.input_responses.as_ref(),
            )?))
        } else {
            None
        };
        self.call(&request.name, arguments, &context, exchange)
            .await
    }

    #[allow(deprecated)] // logging: see the `logging` module
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.log_level.store(
            logging::set_level(&request),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, ErrorData> {
        self.tasks
            .get_task(&request.task_id)
            .map(rmcp::model::GetTaskResult::new)
    }

    async fn update_task(
        &self,
        request: rmcp::model::UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks.cancel_task(&request.task_id)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let listed = crate::catalog::content::list(&self.catalog.snapshot());
        serde_json::from_value(json!({"resources": listed["resources"], "resultType": "complete"}))
            .map_err(|err| {
                ErrorData::internal_error(
                    format!("a plugin listed a malformed resource: {err}"),
                    None,
                )
            })
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let listed = crate::catalog::content::list(&self.catalog.snapshot());
        serde_json::from_value(
            json!({"resourceTemplates": listed["templates"], "resultType": "complete"}),
        )
        .map_err(|err| {
            ErrorData::internal_error(format!("a plugin listed a malformed template: {err}"), None)
        })
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let snapshot = self.catalog.snapshot();
        let uri = request.uri.clone();
        let contents = blocking(move || crate::catalog::content::read(&snapshot, &uri))
            .await
            .map_err(|mut error| {
                if error.code == ErrorCode::RESOURCE_NOT_FOUND {
                    error.data = Some(json!({"uri": request.uri}));
                }
                error
            })?;
        let result: ReadResourceResult =
            serde_json::from_value(json!({"contents": contents, "resultType": "complete"}))
                .map_err(|err| {
                    ErrorData::internal_error(
                        format!(
                            "the plugin returned malformed contents for `{}`: {err}",
                            request.uri
                        ),
                        None,
                    )
                })?;
        Ok(result.into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let fingerprint =
            crate::catalog::content::fingerprint(&self.catalog.snapshot(), &request.uri);
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request.uri, fingerprint);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let listed = crate::catalog::content::list(&self.catalog.snapshot());
        serde_json::from_value(json!({"prompts": listed["prompts"], "resultType": "complete"}))
            .map_err(|err| {
                ErrorData::internal_error(
                    format!("a plugin listed a malformed prompt: {err}"),
                    None,
                )
            })
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let snapshot = self.catalog.snapshot();
        let name = request.name.clone();
        let arguments = request.arguments.clone().unwrap_or_default();
        // 2026-07-28: a prompt may ask the user first (input-required results).
        let exchange = match speaks_2026(&context) {
            true => Some(Exchange::open(
                request.request_state.as_deref(),
                request.input_responses.as_ref(),
            )?),
            false => None,
        };
        let answers = exchange
            .as_ref()
            .map(|e| e.answers.clone())
            .unwrap_or_default();
        let result = match tokio::task::spawn_blocking(move || {
            crate::catalog::content::prompt(&snapshot, &name, &arguments, &answers)
        })
        .await
        {
            Ok(Err(crate::catalog::content::ContentError::NeedsInput(Value::Object(
                questions,
            )))) if exchange.is_some() => {
                let exchange = exchange.expect("checked");
                *exchange.requests.lock().unwrap_or_else(|p| p.into_inner()) = questions;
                return exchange.input_required().map(GetPromptResponse::from);
            }
            Ok(result) => result.map_err(content_error)?,
            Err(err) => {
                return Err(ErrorData::internal_error(
                    format!("the prompt failed: {err}"),
                    None,
                ))
            }
        };
        let mut result = result;
        result["resultType"] = json!("complete");
        let result: GetPromptResult = serde_json::from_value(result).map_err(|err| {
            ErrorData::internal_error(
                format!("prompt `{}` has malformed messages: {err}", request.name),
                None,
            )
        })?;
        Ok(result.into())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Sessions of the initialize era hear about reloads on their own channel.
        let mut changes = self.catalog.subscribe();
        changes.mark_unchanged();
        let peer = context.peer.clone();
        let catalog = self.catalog.clone();
        let subscriptions = self.subscriptions.clone();
        tokio::spawn(async move {
            let mut announced = Announced::of(&catalog.snapshot());
            while changes.changed().await.is_ok() {
                let snapshot = catalog.snapshot();
                let now = Announced::of(&snapshot);
                let mut sent = peer.notify_tool_list_changed().await;
                if now.resources != announced.resources {
                    sent = sent.and(peer.notify_resource_list_changed().await);
                }
                if now.prompts != announced.prompts {
                    sent = sent.and(peer.notify_prompt_list_changed().await);
                }
                announced = now;
                let updated: Vec<String> = {
                    let mut subscribed = subscriptions.lock().unwrap_or_else(|p| p.into_inner());
                    subscribed
                        .iter_mut()
                        .filter_map(|(uri, last)| {
                            let fingerprint = crate::catalog::content::fingerprint(&snapshot, uri);
                            (fingerprint != *last).then(|| {
                                *last = fingerprint;
                                uri.clone()
                            })
                        })
                        .collect()
                };
                for uri in updated {
                    let param = rmcp::model::ResourceUpdatedNotificationParam::new(uri);
                    sent = sent.and(peer.notify_resource_updated(param).await);
                }
                if sent.is_err() {
                    break;
                }
            }
        });
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        // 2026-07-28 clients subscribe with `subscriptions/listen` instead.
        let mut changes = self.catalog.subscribe();
        changes.mark_unchanged();
        let accepted = context.accepted().clone();
        let wants = |flag: Option<bool>| flag == Some(true);
        let mut announced = Announced::of(&self.catalog.snapshot());
        let mut fingerprints: Vec<(String, Option<String>)> = {
            let snapshot = self.catalog.snapshot();
            accepted
                .resource_subscriptions
                .iter()
                .flatten()
                .map(|uri| {
                    (
                        uri.clone(),
                        crate::catalog::content::fingerprint(&snapshot, uri),
                    )
                })
                .collect()
        };
        loop {
            tokio::select! {
                _ = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let snapshot = self.catalog.snapshot();
                    let now = Announced::of(&snapshot);
                    let sink = context.sink();
                    let mut sent = Ok(());
                    if wants(accepted.tools_list_changed) {
                        sent = sent.and(sink.notify_tool_list_changed().await);
                    }
                    if wants(accepted.resources_list_changed) && now.resources != announced.resources {
                        sent = sent.and(sink.notify_resource_list_changed().await);
                    }
                    if wants(accepted.prompts_list_changed) && now.prompts != announced.prompts {
                        sent = sent.and(sink.notify_prompt_list_changed().await);
                    }
                    announced = now;
                    for (uri, last) in &mut fingerprints {
                        let fingerprint = crate::catalog::content::fingerprint(&snapshot, uri);
                        if fingerprint != *last {
                            *last = fingerprint;
                            sent = sent.and(sink.notify_resource_updated(uri.clone()).await);
                        }
                    }
                    if sent.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The largest stdio message accepted (a longer line gets an error and is skipped).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Where protocol lines go: a private duplicate of the real stdout (see [`claim_stdout`]).
static PROTOCOL_OUT: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> =
    std::sync::OnceLock::new();

/// Keeps stdout for the protocol (see [`crate::util::stdio::take_stdout`]): protocol lines go to a
/// private duplicate, stray prints to stderr. Call it before plugins are loaded.
pub fn claim_stdout() -> Result<(), String> {
    let file = crate::util::stdio::take_stdout()?;
    let _ = PROTOCOL_OUT.set(std::sync::Mutex::new(file));
    Ok(())
}

/// Serves MCP on stdin/stdout until stdin closes. Only protocol lines go to stdout.
pub async fn serve_stdio(
    catalog: Arc<Catalog>,
    run_options: exec::Options,
    max_line: usize,
) -> Result<(), String> {
    let incoming = match self::lines::pollable_stdin(max_line) {
        // A pipe: read by the server's own task as it asks for the next message (no thread
        // hop, and a client that writes faster than the server reads waits in the pipe).
        Some(reader) => {
            let state = (reader, std::collections::VecDeque::new(), false);
            futures_util::stream::unfold(
                state,
                move |(mut reader, mut pending, mut ended)| async move {
                    loop {
                        if let Some(message) = pending.pop_front() {
                            return Some((message, (reader, pending, ended)));
                        }
                        if ended {
                            return None;
                        }
                        let mut deliver = |message| {
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
                    if let Err(err) = self::lines::read_blocking(max_line, |event| {
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
        .serve((StdoutSink::default(), incoming))
        .await
        .map_err(|err| format!("MCP session failed to start: {err}"))?;
    let reason = running.waiting().await;
    tracing::info!("MCP session ended: {reason:?}");
    Ok(())
}

/// One stdin line: a message goes to `deliver`; malformed JSON gets -32700, JSON that is not a
/// JSON-RPC message -32600 (with its id when one can be read), an oversized line -32600.
/// Returns `false` when reading should stop (the server or stdout is gone).
fn on_line(
    event: self::lines::Event<'_>,
    max_line: usize,
    deliver: &mut impl FnMut(RxJsonRpcMessage<RoleServer>) -> bool,
) -> bool {
    let reply = match event {
        self::lines::Event::Line(number, line) => match classify_line(line, number) {
            Line::Empty => return true,
            Line::Message(message) => return deliver(*message),
            Line::Reply(reply) => *reply,
        },
        self::lines::Event::Oversized { number, bytes } => {
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
#[derive(Default)]
struct StdoutSink {
    buffer: Vec<u8>,
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

/// SEP-2243 custom headers (2026-07-28): a flow's input property with `x-mcp-header: Name` is
/// mirrored by the client in an `Mcp-Param-Name` header (literal, or `=?base64?...?=`) so
/// proxies can route on it. A `tools/call` whose header is missing, undecodable or different
/// from the body is refused (-32020, HTTP 400) before it runs.
pub async fn check_param_headers(
    axum::extract::State((catalog, limit)): axum::extract::State<(Arc<Catalog>, usize)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // The headers are a 2026-07-28 feature (older clients never send them), and only tools
    // with an `x-mcp-header` property have any: everything else passes unread.
    let modern = request
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_2026);
    if request.method() != axum::http::Method::POST
        || !modern
        || !catalog.snapshot().mcp_param_headers
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body could not be read: {err}"),
            )
                .into_response()
        }
    };
    if let Some((id, problem)) = param_header_problem(&catalog, &parts.headers, &bytes) {
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": -32020, "message": problem},
        });
        return (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// What is wrong with a `tools/call`'s `Mcp-Param-*` headers, with the request id.
fn param_header_problem(
    catalog: &Catalog,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Option<(Value, String)> {
    use base64::Engine as _;
    let message: Value = serde_json::from_slice(body).ok()?;
    if message["method"] != "tools/call" {
        return None;
    }
    let name = message["params"]["name"].as_str()?;
    let snapshot = catalog.snapshot();
    let flow = snapshot.get(name)?.flow.clone()?;
    let arguments = &message["params"]["arguments"];
    for (property, schema) in flow.spec.input_schema["properties"].as_object()? {
        let Some(header) = schema.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let header_name = format!("Mcp-Param-{header}");
        let in_body = match arguments.get(property) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => Some(other.to_string()),
        };
        let problem = match (headers.get(&header_name), in_body) {
            (None, None) => continue,
            (None, Some(_)) => format!(
                "header {header_name} is missing: it must carry arguments.{property} (x-mcp-header)"
            ),
            (Some(_), None) => {
                format!("header {header_name} is set but arguments.{property} is not in the body")
            }
            (Some(value), Some(expected)) => {
                let raw = String::from_utf8_lossy(value.as_bytes()).into_owned();
                let decoded = match raw
                    .strip_prefix("=?base64?")
                    .and_then(|rest| rest.strip_suffix("?="))
                {
                    Some(encoded) => match base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                    {
                        Some(text) => text,
                        None => {
                            return Some((
                                message["id"].clone(),
                                format!(
                                "header {header_name} is not valid Base64 inside =?base64?...?="
                            ),
                            ))
                        }
                    },
                    None => raw,
                };
                if decoded == expected {
                    continue;
                }
                format!("header {header_name} does not match arguments.{property} in the body")
            }
        };
        return Some((message["id"].clone(), problem));
    }
    None
}

/// The Streamable HTTP endpoint, mounted at `/mcp` by the HTTP transport. The `Host` and
/// `Origin` checks are the HTTP transport's (one `http.allowed_hosts` for every route), so
/// rmcp's own are off here. `stateless`: no sessions, every request answered by itself (any
/// replica behind a round-robin proxy can serve any request; see ARCHITECTURE.md).
pub fn http_service(
    catalog: Arc<Catalog>,
    run_options: exec::Options,
    stateless: bool,
    shutdown: tokio_util::sync::CancellationToken,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    FlowTools,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(!stateless)
        .with_cancellation_token(shutdown)
        .disable_allowed_hosts()
        .disable_allowed_origins();
    let tasks: Arc<rmcp::task_manager::TaskManager> = Arc::default();
    StreamableHttpService::new(
        move || {
            Ok(if stateless {
                FlowTools::stateless(catalog.clone(), run_options.clone())
            } else {
                FlowTools::new(catalog.clone(), run_options.clone())
            }
            .with_tasks(tasks.clone()))
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
