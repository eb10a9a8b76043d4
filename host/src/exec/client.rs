//! Asking the client for the ops (op-sdk 0.1.3 `ctx.sample` / `ctx.elicit` / `ctx.roots`):
//! the [`Asker`] a transport gives a run, and the op host's asking with its fall back to the
//! LLM service for `sample` (op-sdk's `{messages, options}` as a chat request). What a
//! question looks like on the wire is the transport's business.

use std::sync::Arc;

use serde_json::Value;

use super::host::OpHost;
use super::walk::Env;

/// A client ops may ask through the host (op-sdk 0.1.3 `ctx.sample` / `ctx.elicit`).
pub(crate) trait Asker: Send + Sync {
    /// `service` is `sample` (op-sdk's `{messages, options}` in, as the op gave it; an MCP
    /// `CreateMessageResult` out, which op-sdk's `Sampled` reads), `elicit` (`ElicitRequest`
    /// params in, `ElicitResult` out) or `roots` (`{}` in, `ListRootsResult` out).
    /// `name`: the op's name for the question (2026-07-28 input requests are keyed by it), if
    /// it gave one.
    fn ask(&self, service: &'static str, request: Value, name: Option<String>) -> AskFuture;
}

pub(crate) type AskFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, AskError>> + Send>>;

/// A shared [`Asker`].
#[derive(Clone)]
pub struct Client(pub(crate) Arc<dyn Asker>);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

/// Why the client was not asked, or what it answered instead of a result.
#[derive(Debug)]
pub(crate) enum AskError {
    /// The client cannot be asked this (no capability, or its protocol has no way): `sample`
    /// falls back to the LLM service.
    Unsupported(String),
    /// It was asked and refused or failed.
    Failed(String),
}

impl OpHost {
    /// `ctx.sample` / `ctx.elicit`: the client when it can answer; `sample` falls back to the
    /// LLM service.
    pub(super) async fn ask(
        &self,
        service: &'static str,
        request: Value,
        name: Option<String>,
    ) -> Result<Value, String> {
        ask(&self.env, service, request, name).await
    }
}

/// Asks the run's client (`sample`, `elicit`, `roots`) for an op or an upstream MCP server;
/// `sample` falls back to the LLM service.
pub(super) async fn ask(
    env: &Env,
    service: &'static str,
    request: Value,
    name: Option<String>,
) -> Result<Value, String> {
    let unsupported = match &env.client {
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
    let Some(llm) = &env.llm else {
        return Err(format!(
                "cannot sample: {unsupported}, and this host has no LLM service to fall back to (configure `llm:`)"
            ));
    };
    let chat = sample_to_chat(&request);
    let reply = llm
        .chat_traced(&chat, &env.cancel, &env.trace, |_, _, _| true)
        .await
        .map_err(|err| format!("cannot sample: {unsupported}; the LLM service failed: {err}"))?;
    Ok(serde_json::json!({
        "role": "assistant",
        "content": {"type": "text", "text": reply["answer"].as_str().unwrap_or_default()},
        "model": chat["llm"].as_str().unwrap_or("default"),
        "stopReason": "endTurn",
        "_meta": {"flowhost": {"answered_by": "llm service", "usage": reply["usage"]}},
    }))
}

/// `ctx.sample`'s `{messages, options}` (options in MCP's names: `systemPrompt`, `maxTokens`,
/// `temperature`, `stopSequences`) as a chat request for the LLM service.
fn sample_to_chat(request: &Value) -> Value {
    let options = request["options"].as_object();
    let option = |name: &str| options.and_then(|o| o.get(name));
    let mut messages = Vec::new();
    if let Some(system) = option("systemPrompt").and_then(Value::as_str) {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    for m in request["messages"].as_array().into_iter().flatten() {
        let text = match &m["content"] {
            Value::String(text) => text.clone(),
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            block => block["text"].as_str().unwrap_or_default().to_string(),
        };
        messages.push(
            serde_json::json!({"role": m["role"].as_str().unwrap_or("user"), "content": text}),
        );
    }
    let mut chat = serde_json::json!({"messages": messages});
    chat["max_tokens"] = option("maxTokens")
        .cloned()
        .unwrap_or_else(|| Value::from(1000));
    if let Some(t) = option("temperature") {
        chat["temperature"] = t.clone();
    }
    if let Some(stop) = option("stopSequences") {
        chat["stop"] = stop.clone();
    }
    chat
}
