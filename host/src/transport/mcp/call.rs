//! The `tools/call` path: runs a flow for a tool call, sends its chunks as progress
//! notifications and its op logs as log messages, stops it on cancel, answers input-required
//! rounds, hands a long call over to a task, and makes the tool result (the answer as content,
//! checked against the flow's output schema when it has one).

use std::sync::Arc;

use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, ErrorCode, ErrorData, ProgressNotificationParam,
};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use serde_json::{json, Map, Value};

use super::ask::{ClientAsker, Exchange};
use super::handler::{FlowTools, LOGS_OFF};
use super::logging::{self, forward_log, op_level_rank};
use super::tasks::{finish_as_task, TaskSlot, TASK_KEPT, TASK_POLL_MS, TASK_TTL_WITHOUT_LIMIT};
use crate::auth::{Call, Caller, Outcome};
use crate::chunk::ChunkKind;
use crate::exec;
use crate::plan::TaskSupport;

/// Op log lines held per call before more are dropped (and counted).
const LOG_LINES_PER_CALL: usize = 1024;

impl FlowTools {
    /// `tools/call` by `caller`: a tool it may not call is a tool error (the same words for
    /// one that does not exist, to a caller that may not see every tool); past its rate limit,
    /// a tool error naming the limit; else the call, counted and audited.
    pub(crate) async fn call_as(
        &self,
        caller: &Arc<Caller>,
        name: &str,
        arguments: Map<String, Value>,
        context: &RequestContext<RoleServer>,
        exchange: Option<Arc<Exchange>>,
    ) -> Result<CallToolResponse, ErrorData> {
        let auth = &self.access.auth;
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let transport = if parts.is_some() { "mcp" } else { "mcp-stdio" };
        let span = super::traced::server_span(context, "tools/call", Some(name));
        span.tool(name);
        if span.is_recording() {
            span.set("gen_ai.operation.name", "execute_tool");
        }
        if caller.refused(name, self.catalog.snapshot().get(name).is_some()) {
            auth.deny(caller, transport, name);
            span.fail("denied");
            return Ok(response(failure(format!(
                "no tool `{name}` that this caller may call (tools/list names the tools it may)"
            ))));
        }
        // The audit line names the call's own span when there is one, else what the caller
        // sent (made only when there is an audit trail).
        let own = auth.audits().then(|| span.cx().traceparent()).flatten();
        let traceparent = own.as_deref().or_else(|| {
            parts
                .and_then(|p| p.headers.get("traceparent"))
                .and_then(|v| v.to_str().ok())
                .or_else(|| context.meta.get_traceparent())
        });
        let record = match auth
            .start(caller, transport, name, traceparent, &arguments)
            .await
        {
            Ok(record) => record,
            Err(limited) => return Ok(response(failure(limited.message))),
        };
        // A call that becomes a task takes its record along (ended with the task).
        let mut record = Some(record);
        let answered = self
            .call(
                caller,
                name,
                arguments,
                context,
                (exchange, span.cx()),
                &mut record,
            )
            .await;
        match &answered {
            Ok(CallToolResponse::Complete(result))
                if result.is_error == Some(true) && span.is_recording() =>
            {
                let text = result
                    .content
                    .iter()
                    .find_map(|c| c.as_text().map(|t| t.text.clone()))
                    .unwrap_or_default();
                span.set("error.type", "tool_error");
                span.fail(&text);
            }
            Err(err) => span.fail(&err.message),
            Ok(_) => {}
        }
        let Some(record) = record else {
            return answered;
        };
        record.end(match &answered {
            Ok(CallToolResponse::Complete(result)) if result.is_error == Some(true) => {
                Outcome::Error
            }
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Error,
        });
        answered
    }

    /// Runs one flow for `tools/call`. Failures the model should read are tool results with
    /// `isError`; only an unknown tool is a protocol error.
    async fn call(
        &self,
        caller: &Arc<Caller>,
        name: &str,
        arguments: Map<String, Value>,
        context: &RequestContext<RoleServer>,
        (exchange, trace): (Option<Arc<Exchange>>, crate::telemetry::Cx),
        record: &mut Option<Call>,
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
            trace,
            ..self.run_options.clone()
        };
        let mut run = match exec::admit_and_start(flow.clone(), arguments, &options).await {
            Ok(run) => run,
            // The model reads why and can try again later.
            Err(busy) => return Ok(response(failure(busy.message))),
        };
        let flow_id = run.flow_id.clone();
        if let Some(record) = record {
            record.run_id(&flow_id);
        }
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
                    {
                        let record = record.take();
                        move |task| {
                            task_slot.fill(task.clone());
                            Box::pin(finish_as_task(
                                task, run, batch, gathered, log_rx, flow, record,
                            ))
                        }
                    },
                );
                tracing::info!(tool = name, %flow_id, task = %task.task_id, "tools/call became a task");
                self.access.own(&task.task_id, caller, &self.tasks);
                if let Some(shared) = &self.shared_tasks {
                    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    shared.mirror(
                        self.tasks.clone(),
                        task.task_id.clone(),
                        ttl_ms,
                        caller.owner.clone(),
                    );
                }
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
            if let Some(record) = record {
                record.add_chunks(batch.len());
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
                level: exec::Level::Warn,
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
pub(crate) struct Gathered {
    think: String,
    tool_calls: Vec<Value>,
    usage: Value,
    /// Chunks seen.
    pub(crate) chunks: u64,
}

impl Gathered {
    pub(crate) fn take(&mut self, chunk: &crate::chunk::Chunk) {
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
pub(crate) fn tool_result(
    flow: &crate::plan::Flow,
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

fn failure(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}
