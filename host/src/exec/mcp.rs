//! A step that calls an outside MCP server's tool (`McpOp`, FlowLLM's `BaseMcpOp`): its
//! arguments from the context, the call through `upstream` (progress as `think` chunks, the
//! server's sampling and elicitation through the run's asking path), its text as the answer
//! and into the context, `isError` as a failure; FlowLLM's `max_retries` (only when the server
//! failed), `raise_exception` and `timeout`.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::run::Failure;
use super::walk::Env;
use crate::chunk::{Chunk, ChunkKind};
use crate::plan::{McpInputs, McpStep};

pub(super) async fn run_mcp(
    step: &McpStep,
    context: &Map<String, Value>,
    env: &Env,
) -> Result<Map<String, Value>, Failure> {
    let name = step.name;
    let failure = |message: String, attempts: u32| Failure {
        op: name,
        message,
        crashed: false,
        attempts,
    };
    let arguments = match &step.inputs {
        McpInputs::Whole => context.clone(),
        McpInputs::Schema(params) => {
            let mut arguments = Map::new();
            for param in params {
                match context.get(&param.context_key) {
                    Some(value) => {
                        arguments.insert(param.name.clone(), value.clone());
                    }
                    None if param.required => {
                        return Err(failure(
                            format!(
                                "`{}` is required by tool `{}` of MCP server `{}`, and the flow context has no `{}` (pass it in the input, or make it optional with input_schema_optional=[\"{}\"])",
                                param.name, step.tool, step.server, param.context_key, param.name
                            ),
                            0,
                        ))
                    }
                    None => {}
                }
            }
            arguments
        }
    };
    let Some(upstreams) = crate::upstream::get() else {
        return Err(failure(
            format!(
                "this process runs no MCP servers (external_mcp), so `{}` of `{}` cannot be called",
                step.tool, step.server
            ),
            0,
        ));
    };
    let span = env.trace.start_with(
        crate::telemetry::Kind::Client,
        || format!("tools/call {}", step.tool),
        |attributes| {
            attributes.set("mcp.method.name", "tools/call");
            attributes.set("gen_ai.operation.name", "execute_tool");
            attributes.set("flowhost.mcp.server", &step.server);
        },
    );
    span.tool(&step.tool);
    span.role(crate::telemetry::Role::Tool);
    let progress_env = env.clone();
    // Progress after the call ended (rmcp hands notifications to tasks of their own) or going
    // backwards is dropped: the answer is the last chunk of the call.
    let finished = Arc::new(std::sync::Mutex::new((false, f64::MIN)));
    let seen = finished.clone();
    let progress: crate::upstream::Progress = Arc::new(move |done, total, message| {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.0 || done <= seen.1 {
            return;
        }
        seen.1 = done;
        let text = match (total, message) {
            (Some(total), Some(message)) => format!("{done}/{total} {message}"),
            (Some(total), None) => format!("{done}/{total}"),
            (None, Some(message)) => format!("{done} {message}"),
            (None, None) => format!("{done}"),
        };
        send_now(&progress_env, Chunk::text(ChunkKind::Think, name, text));
        drop(seen);
    });
    let ask: Arc<dyn crate::upstream::Ask> = Arc::new(Asking(env.clone()));
    let mut attempt = 1;
    let result = loop {
        let call = crate::upstream::Call {
            timeout: step.timeout,
            cancel: &env.cancel,
            progress: Some(progress.clone()),
            ask: Some(ask.clone()),
            meta: span
                .cx()
                .traceparent()
                .map(|tp| ("traceparent".to_string(), tp))
                .into_iter()
                .collect(),
        };
        match upstreams
            .call(&step.server, &step.tool, arguments.clone(), call)
            .await
        {
            Ok(reply) if reply.is_error => {
                let text = if reply.text.is_empty() {
                    "the tool reported an error and said nothing more".to_string()
                } else {
                    reply.text
                };
                break Err(failure(
                    format!(
                        "tool `{}` of MCP server `{}` failed: {text}",
                        step.tool, step.server
                    ),
                    attempt,
                ));
            }
            Ok(reply) => break Ok(reply),
            Err(err)
                if err.retry && attempt < step.policy.attempts && !env.cancel.is_cancelled() =>
            {
                let wait = crate::llm::backoff(attempt - 1);
                tracing::warn!(
                    op = name,
                    "{}; calling it again in {:.2}s (call {} of {}, max_retries)",
                    err.message,
                    wait.as_secs_f64(),
                    attempt + 1,
                    step.policy.attempts
                );
                metrics::counter!(crate::metrics::OP_RETRIES).increment(1);
                if span.is_recording() {
                    span.event(
                        "retry",
                        &[("exception.message", err.message.as_str().into())],
                    );
                }
                tokio::select! {
                    _ = env.cancel.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                attempt += 1;
            }
            Err(err) => break Err(failure(err.message, attempt)),
        }
    };
    finished.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
    let reply = match result {
        Ok(reply) => reply,
        Err(failure) => {
            span.fail(&failure.message);
            if !step.policy.tolerate_failure || env.cancel.is_cancelled() {
                return Err(failure);
            }
            // FlowLLM's way: the output says the call failed, and the flow goes on.
            let message = format!("{failure} (raise_exception=False: the flow goes on)");
            tracing::warn!(op = name, "{message}");
            metrics::counter!(crate::metrics::OP_FAILURES_TOLERATED).increment(1);
            if let Some(collect) = &env.collect {
                // An agent's tool call: the failure is what the model reads.
                collect
                    .answer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&message);
            }
            if env.collect.as_ref().is_none_or(|c| c.forward) {
                env.tx.push_final(Chunk {
                    tolerated: true,
                    attempts: failure.attempts.min(255) as u8,
                    ..Chunk::error(name, message)
                });
            }
            env.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((name, failure.message));
            let mut writes = Map::new();
            writes.insert(
                step.output_key.clone(),
                Value::String(format!("{name} execution failed!")),
            );
            return Ok(writes);
        }
    };
    let mut writes = Map::new();
    if let Some(structured) = reply.structured {
        writes.insert(format!("{}_structured", step.output_key), structured);
    }
    if step.save_answer {
        send(
            env,
            Chunk::text(ChunkKind::Answer, name, reply.text.clone()),
        )
        .await;
    }
    writes.insert(step.output_key.clone(), Value::String(reply.text));
    Ok(writes)
}

/// An upstream server's questions, asked the way an op's are (the run's client, `sample`
/// falling back to the LLM service).
struct Asking(Env);

impl crate::upstream::Ask for Asking {
    fn ask(&self, service: &'static str, request: Value) -> crate::upstream::AskFuture {
        let env = self.0.clone();
        Box::pin(async move { super::client::ask(&env, service, request, None).await })
    }
}

/// Sends a chunk into the run (or the sub-op call's collection); waits on a blocking thread
/// when the buffer is full.
async fn send(env: &Env, chunk: Chunk) {
    if let Some(chunk) = collect(env, chunk) {
        match env.tx.try_push(chunk, &env.cancel) {
            Ok(_) => {}
            Err(chunk) => {
                let (tx, cancel) = (env.tx.clone(), env.cancel.clone());
                let _ = tokio::task::spawn_blocking(move || tx.push(chunk, &cancel)).await;
            }
        }
    }
}

/// [`send`] from a callback that cannot wait: a full buffer drops progress.
fn send_now(env: &Env, chunk: Chunk) {
    if let Some(chunk) = collect(env, chunk) {
        let _ = env.tx.try_push(chunk, &env.cancel);
    }
}

/// Gathers a sub-op call's answer; gives the chunk back when it goes to the run's stream.
fn collect(env: &Env, chunk: Chunk) -> Option<Chunk> {
    match &env.collect {
        Some(collect) if !collect.take(&chunk) => None,
        _ => Some(chunk),
    }
}
