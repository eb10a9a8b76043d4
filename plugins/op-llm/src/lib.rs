//! Chat ops over the host's LLM service (the seed's `GenSystemPromptOp() >> StreamChatOp()`).
//! Both read `system_prompt` and `messages` (or a bare `query`) from the context; call
//! arguments pick the LLM (`llm="name"`) and pass OpenAI parameters (`temperature=0.2`); a
//! request's `llm_params` object (what the OpenAI-compatible route passes) overrides them.

use op_sdk::{Args, ChatResponse, Context, Error, Op};
use serde_json::{json, Map, Value};

/// The chat request an op call makes: the conversation from the context, the call's
/// parameters.
struct Request {
    llm: String,
    params: Map<String, Value>,
}

impl Request {
    fn from_args(op: &str, args: &Args) -> Result<Request, Error> {
        let llm = args.str_or("llm", "default")?.to_string();
        let mut params = args.as_map().clone();
        params.remove("llm");
        for key in ["messages", "stream", "stream_options", "model"] {
            if params.contains_key(key) {
                return Err(Error::new(format!(
                    "{op} sets `{key}` itself; pass OpenAI parameters such as temperature or max_tokens"
                )));
            }
        }
        Ok(Request { llm, params })
    }

    fn body(&self, ctx: &Context<'_>) -> Result<Value, Error> {
        let mut messages: Vec<Value> = match ctx.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => messages.clone(),
            _ => match ctx.get("query") {
                Some(Value::String(query)) => vec![json!({"role": "user", "content": query})],
                _ => {
                    return Err(Error::new(
                        "no conversation: the request needs `query` (text) or `messages` (a list of {role, content})",
                    ))
                }
            },
        };
        let has_system = messages.iter().any(|m| m["role"] == "system");
        if let Some(Value::String(prompt)) = ctx.get("system_prompt") {
            if !prompt.is_empty() && !has_system {
                messages.insert(0, json!({"role": "system", "content": prompt}));
            }
        }
        let mut body = self.params.clone();
        // Sampling parameters of the request (the OpenAI-compatible route puts them here)
        // win over the flow's.
        if let Some(Value::Object(request)) = ctx.get("llm_params") {
            for (key, value) in request {
                if !matches!(
                    key.as_str(),
                    "llm" | "messages" | "stream" | "stream_options" | "model"
                ) {
                    body.insert(key.clone(), value.clone());
                }
            }
        }
        body.insert("llm".into(), Value::String(self.llm.clone()));
        body.insert("messages".into(), Value::Array(messages));
        Ok(Value::Object(body))
    }
}

fn record(ctx: &mut Context<'_>, response: ChatResponse) {
    if !response.think.is_empty() {
        ctx.set("think", response.think);
    }
    if !response.tool_calls.is_empty() {
        ctx.set("tool_calls", Value::Array(response.tool_calls));
    }
    if let Some(usage) = response.usage {
        ctx.set("usage", usage);
    }
    ctx.set_answer(response.answer);
}

fn schema() -> Option<Value> {
    Some(json!({
        "type": "object",
        "properties": {
            "llm": {"type": "string", "description": "a name from the host's llm: config (default: default)"},
            "temperature": {"type": "number"},
            "max_tokens": {"type": "integer"}
        },
        "additionalProperties": true
    }))
}

/// Streams think / answer / tool / usage chunks from the LLM as they arrive.
pub struct StreamChatOp {
    request: Request,
}

impl Op for StreamChatOp {
    const NAME: &'static str = "StreamChatOp";
    const DESCRIPTION: &'static str =
        "Streams a chat completion for `system_prompt` + `messages` (or `query`) from the host's LLM";

    fn args_schema() -> Option<Value> {
        schema()
    }

    fn new(args: &Args) -> Result<Self, Error> {
        Ok(StreamChatOp {
            request: Request::from_args(Self::NAME, args)?,
        })
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let body = self.request.body(ctx)?;
        let response = ctx.chat_stream(&body, |delta| ctx.forward(delta))?;
        record(ctx, response);
        Ok(())
    }
}

/// Asks the LLM and sets the whole answer at once (non-stream flows).
pub struct ChatOp {
    request: Request,
}

impl Op for ChatOp {
    const NAME: &'static str = "ChatOp";
    const DESCRIPTION: &'static str =
        "Answers `system_prompt` + `messages` (or `query`) with the host's LLM, in one piece";

    fn args_schema() -> Option<Value> {
        schema()
    }

    fn new(args: &Args) -> Result<Self, Error> {
        Ok(ChatOp {
            request: Request::from_args(Self::NAME, args)?,
        })
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let body = self.request.body(ctx)?;
        let response = ctx.chat(&body)?;
        record(ctx, response);
        Ok(())
    }
}

/// FlowLLM's `ReactAgentOp`: a tool-calling loop over the ops attached with `<<`.
///
/// Each step streams the model (think / answer / tool-call chunks go to the client), runs the
/// tools it asked for side by side, feeds their results back as `tool` messages and asks
/// again, until the model answers without calling a tool or `max_steps` model calls were
/// made. A tool that fails becomes a tool result the model can read.
pub struct ReactAgentOp {
    request: Request,
    max_steps: u64,
}

impl Op for ReactAgentOp {
    const NAME: &'static str = "ReactAgentOp";
    const DESCRIPTION: &'static str =
        "Answers `query` (or `messages`) with the host's LLM, calling the ops attached with `<<` as tools (max_steps model calls, default 5)";

    fn args_schema() -> Option<Value> {
        let mut schema = schema()?;
        schema["properties"]["max_steps"] = json!({"type": "integer", "minimum": 1, "description": "model calls at most (default 5)"});
        Some(schema)
    }

    fn new(args: &Args) -> Result<Self, Error> {
        let max_steps = args.u64_or("max_steps", 5)?;
        if max_steps == 0 {
            return Err(Error::new("max_steps must be at least 1"));
        }
        let mut rest = args.as_map().clone();
        rest.remove("max_steps");
        Ok(ReactAgentOp {
            request: Request::from_args(Self::NAME, &Args::new(rest))?,
            max_steps,
        })
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let tools = ctx.sub_ops();
        if tools.is_empty() {
            return Err(Error::new(
                "ReactAgentOp has no tools: attach ops with `<<`, as in `ReactAgentOp() << [SearchOp(), ShoutOp()]`",
            ));
        }
        let mut body = self.request.body(ctx)?;
        body["tools"] = Value::Array(tools.iter().map(|t| t.openai_tool()).collect());
        if body.get("tool_choice").is_none() {
            body["tool_choice"] = json!("auto");
        }
        let mut usage = Map::new();
        for step in 1..=self.max_steps {
            let response = ctx.chat_stream(&body, |delta| ctx.forward(delta))?;
            add_usage(&mut usage, response.usage.as_ref());
            if response.tool_calls.is_empty() || ctx.is_cancelled() {
                ctx.set("agent_steps", step);
                if !usage.is_empty() {
                    ctx.set("usage", Value::Object(usage));
                }
                if !response.think.is_empty() {
                    ctx.set("think", response.think);
                }
                ctx.set_answer(response.answer);
                return Ok(());
            }
            let calls: Vec<(String, String, Value)> = response
                .tool_calls
                .iter()
                .map(|call| {
                    (
                        call["id"].as_str().unwrap_or_default().to_string(),
                        call["name"].as_str().unwrap_or_default().to_string(),
                        call["arguments"].clone(),
                    )
                })
                .collect();
            let messages = body["messages"]
                .as_array_mut()
                .expect("messages is an array");
            messages.push(json!({
                "role": "assistant",
                "content": if response.answer.is_empty() { Value::Null } else { Value::String(response.answer.clone()) },
                "tool_calls": calls.iter().map(|(id, name, arguments)| json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments_text(arguments)},
                })).collect::<Vec<_>>(),
            }));
            let asked: Vec<(&str, Value)> = calls
                .iter()
                .map(|(_, name, arguments)| (name.as_str(), arguments.clone()))
                .collect();
            let results = ctx.call_sub_ops(&asked, false);
            for ((id, name, _), result) in calls.iter().zip(results) {
                let content = match result {
                    Ok(done) => match done.answer {
                        Value::String(text) => text,
                        other => other.to_string(),
                    },
                    Err(err) => format!("error: {}", err.message()),
                };
                let shown = json!({"tool_call_id": id, "name": name, "result": content});
                if !ctx.emit_json(op_sdk::ChunkKind::Tool, &shown) {
                    return Ok(());
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
        }
        let answer = format!(
            "I stopped after {} steps without a final answer (max_steps={}).",
            self.max_steps, self.max_steps
        );
        ctx.emit(op_sdk::ChunkKind::Answer, &answer);
        ctx.set("agent_steps", self.max_steps);
        if !usage.is_empty() {
            ctx.set("usage", Value::Object(usage));
        }
        ctx.set_answer(answer);
        Ok(())
    }
}

/// Tool-call arguments as OpenAI sends them back: JSON text.
fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Sums token counts across the agent's model calls.
fn add_usage(total: &mut Map<String, Value>, usage: Option<&Value>) {
    let Some(Value::Object(usage)) = usage else {
        return;
    };
    for (key, value) in usage {
        if let Some(n) = value.as_u64() {
            let sum = total.get(key).and_then(Value::as_u64).unwrap_or(0) + n;
            total.insert(key.clone(), json!(sum));
        }
    }
}

op_sdk::export_plugin!(StreamChatOp, ChatOp, ReactAgentOp);

#[cfg(test)]
mod tests {
    use op_sdk::testing::Harness;
    use op_sdk::ChunkKind;
    use serde_json::json;

    use super::StreamChatOp;

    #[test]
    fn streams_the_model_and_sends_the_system_prompt_and_parameters() {
        let run = Harness::new()
            .args(json!({"temperature": 0.9}))
            .input(json!({"query": "hi", "system_prompt": "Be brief.", "llm_params": {"temperature": 0.1}}))
            .llm(|request| {
                assert_eq!(request["messages"][0], json!({"role": "system", "content": "Be brief."}));
                assert_eq!(request["messages"][1], json!({"role": "user", "content": "hi"}));
                assert_eq!(request["temperature"], 0.1, "the request's parameters win");
                Ok((
                    vec![(ChunkKind::Think, "hmm".into()), (ChunkKind::Answer, "Hello".into())],
                    json!({"answer": "Hello", "think": "hmm", "tool_calls": [], "usage": {"total_tokens": 3}}),
                ))
            })
            .run::<StreamChatOp>()
            .unwrap();
        assert_eq!(
            run.chunks,
            [
                (ChunkKind::Think, "hmm".to_string()),
                (ChunkKind::Answer, "Hello".to_string())
            ]
        );
        assert_eq!(run.writes["answer"], "Hello");
        assert_eq!(run.writes["usage"]["total_tokens"], 3);
    }
}
