//! The OpenAI-compatible API: `POST /v1/chat/completions` with `model` naming a flow (the last
//! user message becomes `query`, the messages are passed as `messages`), streaming
//! `chat.completion.chunk` events or answering one `chat.completion`; `GET /v1/models` lists
//! the flows. Any OpenAI SDK client can then stream from a flow.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::guard::Who;
use super::request::{callable_flow, not_yours, parse_body, start_call, validate};
use super::sse::{sse_response, EventWriter};
use super::state::AppState;
use crate::auth::Outcome;
use crate::chunk::{Chunk, ChunkKind};
use crate::exec;

/// The request fields passed to the chat ops (as the context's `llm_params`).
const LLM_PARAMS: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
];

/// OpenAI's own request fields: never taken as a flow's input.
const OPENAI_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "n",
    "user",
    "tools",
    "tool_choice",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "llm_params",
];

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, message: impl Into<String>, code: &str) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    (
        status,
        Json(json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

fn from_api_error(err: ApiError, code: &str) -> Response {
    let message = match &err.detail {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    error(err.status, message, code)
}

/// The usage of a flow whose ops reported none (no LLM call): zero tokens, not `null`.
fn no_usage() -> Value {
    json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`): a flow that can run, as a model.
pub(crate) async fn model(
    State(state): State<AppState>,
    axum::Extension(caller): Who,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if caller.refused(&id, state.catalog.snapshot().get(&id).is_some()) {
        return error(StatusCode::FORBIDDEN, not_yours(&id), "permission_denied");
    }
    match state.catalog.snapshot().get(&id).and_then(|e| e.flow.clone()) {
        Some(flow) => Json(model_json(&id, &flow)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("the model `{id}` does not exist: models are flow names (GET /v1/models lists them)"),
            "model_not_found",
        ),
    }
}

/// A flow as an OpenAI model object.
fn model_json(name: &str, flow: &crate::plan::Flow) -> Value {
    json!({
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "flowhost",
        "description": flow.spec.description,
    })
}

/// What is wrong with a sampling parameter's value, if anything (OpenAI's types).
fn param_problem(key: &str, value: &Value) -> Option<&'static str> {
    if value.is_null() {
        return None;
    }
    let ok = match key {
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => value.is_number(),
        "max_tokens" | "max_completion_tokens" => value.as_u64().is_some(),
        "seed" => value.is_i64() || value.is_u64(),
        "stop" => {
            value.is_string()
                || value
                    .as_array()
                    .is_some_and(|stops| stops.iter().all(Value::is_string))
        }
        _ => true,
    };
    (!ok).then_some(match key {
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => "a number",
        "max_tokens" | "max_completion_tokens" => "a non-negative integer",
        "seed" => "an integer",
        _ => "a string or an array of strings",
    })
}

pub(crate) async fn models(
    State(state): State<AppState>,
    axum::Extension(caller): Who,
) -> Json<Value> {
    let snapshot = state.catalog.snapshot();
    let data: Vec<Value> = snapshot
        .live()
        .filter(|(name, _)| caller.may_call(name))
        .map(|(name, flow)| model_json(name, flow))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// The text of a message's `content`: a string, or the text parts of a parts array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    axum::Extension(caller): Who,
    trace: Option<axum::Extension<crate::telemetry::Cx>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut request = match parse_body(body, state.options.body_limit) {
        Ok(request) => request,
        Err(err) => return from_api_error(err, "invalid_body"),
    };
    let Some(model) = request
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "`model` is required: the name of a flow (GET /v1/models lists them)",
            "missing_model",
        );
    };
    let messages = match request.remove("messages") {
        Some(Value::Array(messages)) => messages,
        None | Some(Value::Null) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`messages` is required: an array of {role, content}",
                "missing_messages",
            )
        }
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "`messages` must be an array of {{role, content}}, found {}",
                    super::request::kind_of(&other)
                ),
                "invalid_messages",
            )
        }
    };
    if let Some((key, problem)) = LLM_PARAMS
        .iter()
        .find_map(|key| param_problem(key, request.get(*key)?).map(|p| (*key, p)))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{key}` must be {problem}"),
            "invalid_parameter",
        );
    }
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let snapshot = state.catalog.snapshot();
    let flow = match callable_flow(&state, &snapshot, &model, &caller, "openai") {
        Ok(flow) => flow,
        Err(err) if err.status == StatusCode::FORBIDDEN => {
            return from_api_error(err, "permission_denied")
        }
        Err(err) if err.status == StatusCode::NOT_FOUND => {
            return error(
                StatusCode::NOT_FOUND,
                format!("the model `{model}` does not exist: models are flow names (GET /v1/models lists them)"),
                "model_not_found",
            )
        }
        Err(err) => return from_api_error(err, "flow_unavailable"),
    };
    let query = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(content_text);
    if let Some(n) = request.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`n` must be 1 (a flow answers once), found {n}"),
                "unsupported_n",
            );
        }
    }
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // The flow sees the conversation and, as `llm_params`, the sampling parameters the chat
    // ops send upstream over the flow's own; other OpenAI fields are not the flow's input.
    let mut params = Map::new();
    for key in LLM_PARAMS {
        if let Some(value) = request.remove(*key).filter(|v| !v.is_null()) {
            params.insert(key.to_string(), value);
        }
    }
    // The flow's other inputs may come as extra fields of the request (the OpenAI SDKs'
    // `extra_body`); OpenAI's own fields are not the flow's input.
    let mut input = Map::new();
    if let Some(properties) = flow.spec.input_schema["properties"].as_object() {
        for name in properties.keys() {
            if !OPENAI_FIELDS.contains(&name.as_str()) {
                if let Some(value) = request.remove(name) {
                    input.insert(name.clone(), value);
                }
            }
        }
    }
    if !params.is_empty() {
        input.insert("llm_params".into(), Value::Object(params));
    }
    // No user message: no `query`, so a flow that requires one says so (as POST /{flow} does).
    if let Some(query) = query {
        input.insert("query".into(), Value::String(query));
    }
    input.insert("messages".into(), Value::Array(messages));
    let input = match validate(&flow, input) {
        Ok(input) => input,
        Err(err) => {
            return from_api_error(
                ApiError::new(StatusCode::BAD_REQUEST, err.detail),
                "invalid_input",
            )
        }
    };
    drop(snapshot);
    let mut call = match start_call(
        &state,
        &caller,
        "openai",
        &model,
        (&headers, trace.as_ref().map(|axum::Extension(cx)| cx)),
        &input,
    )
    .await
    {
        Ok(call) => call,
        Err(limited) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                limited.message,
                "rate_limit_exceeded",
            );
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, limited.retry_after.into());
            return response;
        }
    };
    let options = exec::Options {
        collect_answer: !stream,
        trace: trace.map(|axum::Extension(cx)| cx).unwrap_or_default(),
        ..state.run_options.clone()
    };
    let run = match exec::admit_and_start(flow, input, &options).await {
        Ok(run) => run,
        Err(busy) => {
            call.end(Outcome::Error);
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                busy.message.clone(),
                "flow_busy",
            );
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, busy.retry_after.into());
            return response;
        }
    };
    call.run_id(&run.flow_id);
    let id = format!("chatcmpl-{}", run.flow_id);
    if stream {
        let writer = OpenAiEvents {
            id,
            model,
            created: unix_now(),
            sent_role: false,
            tool_calls: 0,
            usage: None,
            include_usage,
            failed: false,
        };
        return sse_response(run, &state, writer, Some(call));
    }
    let (chunks, outcome) = run.collect().await;
    call.add_chunks(chunks.len());
    call.end(if outcome.error.is_some() {
        Outcome::Error
    } else {
        Outcome::Ok
    });
    if let Some(message) = outcome.error {
        metrics::counter!(crate::metrics::FLOW_ERRORS).increment(1);
        return error(StatusCode::INTERNAL_SERVER_ERROR, message, "flow_error");
    }
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    let mut usage = no_usage();
    for chunk in &chunks {
        match chunk.kind {
            ChunkKind::Think => reasoning.push_str(&chunk.text),
            ChunkKind::Tool => tool_calls.push(tool_call(&chunk.content(), None)),
            ChunkKind::Usage => usage = chunk.content(),
            _ => {}
        }
    }
    let content = match outcome.answer {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    let finish_reason = if tool_calls.is_empty() {
        "stop"
    } else {
        message["tool_calls"] = Value::Array(tool_calls);
        "tool_calls"
    };
    Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }))
    .into_response()
}

/// A tool chunk `{id, name, arguments}` as an OpenAI tool call.
fn tool_call(content: &Value, index: Option<usize>) -> Value {
    let arguments = match content.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".into(),
    };
    let mut call = json!({
        "id": content.get("id").cloned().unwrap_or(Value::Null),
        "type": "function",
        "function": {"name": content.get("name").cloned().unwrap_or(Value::Null), "arguments": arguments},
    });
    if let Some(index) = index {
        call["index"] = Value::from(index);
    }
    call
}

/// `chat.completion.chunk` events: `data: {...}\n\n`, then `data: [DONE]\n\n`.
struct OpenAiEvents {
    id: String,
    model: String,
    created: u64,
    sent_role: bool,
    tool_calls: usize,
    usage: Option<Value>,
    /// `stream_options.include_usage`: a last chunk with empty `choices` and the usage.
    include_usage: bool,
    failed: bool,
}

impl OpenAiEvents {
    fn event(&self, choices: Value, usage: Option<&Value>, out: &mut String) {
        let mut event = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            event["usage"] = usage.clone();
        }
        out.push_str("data: ");
        out.push_str(&event.to_string());
        out.push_str("\n\n");
    }

    fn delta(&mut self, mut delta: Value, out: &mut String) {
        if !self.sent_role {
            self.sent_role = true;
            delta["role"] = Value::from("assistant");
        }
        self.event(
            json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            None,
            out,
        );
    }
}

impl EventWriter for OpenAiEvents {
    fn chunks(&mut self, _flow_id: &str, chunks: &[Chunk], out: &mut String) {
        // Consecutive text chunks of one kind in a batch become one delta.
        let mut index = 0;
        while index < chunks.len() {
            let kind = chunks[index].kind;
            match kind {
                ChunkKind::Answer | ChunkKind::Think => {
                    let mut text = String::new();
                    while index < chunks.len() && chunks[index].kind == kind {
                        text.push_str(&chunks[index].text);
                        index += 1;
                    }
                    let field = if kind == ChunkKind::Answer {
                        "content"
                    } else {
                        "reasoning_content"
                    };
                    self.delta(json!({ field: text }), out);
                    continue;
                }
                ChunkKind::Tool => {
                    let call = tool_call(&chunks[index].content(), Some(self.tool_calls));
                    self.tool_calls += 1;
                    self.delta(json!({"tool_calls": [call]}), out);
                }
                ChunkKind::Usage => self.usage = Some(chunks[index].content()),
                ChunkKind::Error => {
                    self.failed = true;
                    let event = json!({"error": {"message": chunks[index].text, "type": "flow_error", "param": null, "code": "flow_error"}});
                    out.push_str("data: ");
                    out.push_str(&event.to_string());
                    out.push_str("\n\n");
                }
            }
            index += 1;
        }
    }

    fn done(&mut self, _flow_id: &str, out: &mut String) {
        if !self.failed {
            if !self.sent_role {
                self.delta(json!({"content": ""}), out);
            }
            let reason = if self.tool_calls > 0 {
                "tool_calls"
            } else {
                "stop"
            };
            self.event(
                json!([{"index": 0, "delta": {}, "finish_reason": reason}]),
                None,
                out,
            );
            if self.include_usage {
                let usage = self.usage.take().unwrap_or_else(no_usage);
                self.event(json!([]), Some(&usage), out);
            }
        }
        out.push_str("data: [DONE]\n\n");
    }
}
