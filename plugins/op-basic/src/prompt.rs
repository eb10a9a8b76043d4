//! `GenSystemPromptOp`: fills a template from the context into `system_prompt`, and turns a
//! bare `query` into `messages` for the chat op that follows (the seed's demo flow).

use op_sdk::{Args, Context, Error, Op};
use serde_json::{json, Value};

const DEFAULT_TEMPLATE: &str = "You are a helpful assistant. Answer the user's question clearly.";

pub struct GenSystemPromptOp {
    template: String,
}

impl Op for GenSystemPromptOp {
    const NAME: &'static str = "GenSystemPromptOp";
    const DESCRIPTION: &'static str =
        "Writes `system_prompt` from a template ({field} is replaced by context values) and `messages` from `query`";

    fn args_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"template": {"type": "string", "description": "prompt text; {field} placeholders read the context"}},
            "additionalProperties": false
        }))
    }

    fn new(args: &Args) -> Result<Self, Error> {
        if let Some(unknown) = args.as_map().keys().find(|k| *k != "template") {
            return Err(Error::new(format!(
                "unknown argument `{unknown}` (GenSystemPromptOp takes `template`)"
            )));
        }
        Ok(GenSystemPromptOp {
            template: args.str_or("template", DEFAULT_TEMPLATE)?.to_string(),
        })
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let prompt = fill(&self.template, ctx);
        ctx.set("system_prompt", prompt);
        let has_messages = matches!(ctx.get("messages"), Some(Value::Array(m)) if !m.is_empty());
        if !has_messages {
            if let Some(Value::String(query)) = ctx.get("query") {
                let messages = json!([{"role": "user", "content": query}]);
                ctx.set("messages", messages);
            }
        }
        Ok(())
    }
}

/// Replaces `{key}` with the context's value for `key` (strings as is, other values as JSON);
/// unknown keys stay as written so a typo shows in the prompt rather than vanishing.
fn fill(template: &str, ctx: &Context<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_key(&after[..close]) => {
                let key = &after[..close];
                match ctx.get(key) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(other) => out.push_str(&other.to_string()),
                    None => out.push_str(&rest[open..open + close + 2]),
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_key(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}
