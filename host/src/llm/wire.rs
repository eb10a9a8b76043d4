//! The wire format of a chat completion: the request body sent (the model entry's name and
//! params under the op's request), and the streamed deltas accumulated into chunks and one
//! result (think, answer, tool calls, usage).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{Error, Model};
use crate::chunk::ChunkKind;

/// The request body: the entry's `model_name` and `params`, overridden by the op's request.
pub(super) fn request_body(model: &Model, request: &Value) -> Result<Value, Error> {
    let Some(messages) = request.get("messages").filter(|m| m.is_array()) else {
        return Err(Error::Failed(
            "a chat request needs `messages`: an array of {role, content}".into(),
        ));
    };
    let mut body = Map::new();
    body.insert("model".into(), Value::String(model.model_name.clone()));
    for (key, value) in &model.params {
        body.insert(key.clone(), value.clone());
    }
    if let Some(Value::Object(request)) = Some(request) {
        for (key, value) in request {
            if !matches!(
                key.as_str(),
                "llm" | "messages" | "stream" | "stream_options"
            ) {
                body.insert(key.clone(), value.clone());
            }
        }
    }
    body.insert("messages".into(), messages.clone());
    body.insert("stream".into(), Value::Bool(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    Ok(Value::Object(body))
}

/// What a stream has produced so far.
#[derive(Default)]
pub(super) struct Accumulated {
    answer: String,
    think: String,
    /// By tool-call index: id, name, arguments so far.
    tools: BTreeMap<u64, (String, String, String)>,
    usage: Option<Value>,
    pub(super) chunks: u64,
}

impl Accumulated {
    /// Takes one `chat.completion.chunk`; `false` when the consumer is gone.
    pub(super) fn absorb(
        &mut self,
        value: &Value,
        on_chunk: &mut impl FnMut(ChunkKind, &str, bool) -> bool,
    ) -> bool {
        self.chunks += 1;
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(delta) = value.pointer("/choices/0/delta") else {
            return true;
        };
        if let Some(text) = delta
            .get("reasoning_content")
            .or_else(|| delta.get("reasoning"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.think.push_str(text);
            if !on_chunk(ChunkKind::Think, text, false) {
                return false;
            }
        }
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.answer.push_str(text);
            if !on_chunk(ChunkKind::Answer, text, false) {
                return false;
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                let index = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(position as u64);
                let entry = self.tools.entry(index).or_default();
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    entry.0.push_str(id);
                }
                if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                    entry.1.push_str(name);
                }
                if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str)
                {
                    entry.2.push_str(arguments);
                }
            }
        }
        true
    }

    /// Emits the accumulated tool calls and usage; the final result, or `None` if the consumer
    /// went away.
    pub(super) fn finish(
        self,
        on_chunk: &mut impl FnMut(ChunkKind, &str, bool) -> bool,
    ) -> Option<Value> {
        let mut tool_calls = Vec::new();
        for (_, (id, name, arguments)) in self.tools {
            let call = json!({"id": id, "name": name, "arguments": arguments});
            if !on_chunk(ChunkKind::Tool, &call.to_string(), true) {
                return None;
            }
            tool_calls.push(call);
        }
        if let Some(usage) = &self.usage {
            if !on_chunk(ChunkKind::Usage, &usage.to_string(), true) {
                return None;
            }
        }
        Some(json!({
            "answer": self.answer,
            "think": self.think,
            "tool_calls": tool_calls,
            "usage": self.usage,
        }))
    }
}
