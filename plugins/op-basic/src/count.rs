//! `CountOp`: emits `n` fixed answer chunks as fast as the consumer takes them (benchmarks).

use op_sdk::{Args, ChunkKind, Context, Error, Op};
use serde_json::{json, Value};

pub struct CountOp {
    n: Option<u64>,
    text: String,
}

impl Op for CountOp {
    const NAME: &'static str = "CountOp";
    const DESCRIPTION: &'static str =
        "Emits `n` answer chunks of `text` (n from the call, else the request's `n`, else 1000)";

    fn args_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 0}, "text": {"type": "string"}}
        }))
    }

    fn new(args: &Args) -> Result<Self, Error> {
        let n = match args.get("n") {
            None => None,
            Some(_) => Some(args.u64_or("n", 0)?),
        };
        Ok(CountOp {
            n,
            text: args.str_or("text", "hello ")?.to_string(),
        })
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let n = match self.n {
            Some(n) => n,
            None => match ctx.get("n") {
                None | Some(Value::Null) => 1000,
                Some(v) => v.as_u64().ok_or_else(|| {
                    Error::new(format!(
                        "input `n` must be a non-negative integer, found {v}"
                    ))
                })?,
            },
        };
        // A span of the op's own in the run's trace (nothing when the host does not trace).
        let span = ctx.span("emit chunks");
        span.set("count.requested", n);
        let mut sent = 0u64;
        while sent < n {
            if !ctx.emit(ChunkKind::Answer, &self.text) {
                break;
            }
            sent += 1;
        }
        span.set("count.sent", sent);
        drop(span);
        ctx.set("count", sent);
        Ok(())
    }
}
