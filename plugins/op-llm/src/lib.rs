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

op_sdk::export_plugin!(StreamChatOp, ChatOp);

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
