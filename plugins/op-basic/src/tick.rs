//! `TickOp`: one chunk every `interval_ms`, `n` times; stops at once when cancelled.

use std::time::Duration;

use op_sdk::{Args, ChunkKind, Context, Error, Op};
use serde_json::{json, Value};

pub struct TickOp {
    n: u64,
    interval: Duration,
    delay: Duration,
    text: String,
}

impl Op for TickOp {
    const NAME: &'static str = "TickOp";
    const DESCRIPTION: &'static str =
        "Emits `tick i` every `interval_ms` (default 100), `n` times (default 10), after `delay_ms`; stops on cancel";

    fn args_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": 0},
                "interval_ms": {"type": "integer", "minimum": 0},
                "delay_ms": {"type": "integer", "minimum": 0, "description": "silence before the first tick"},
                "text": {"type": "string"}
            }
        }))
    }

    fn new(args: &Args) -> Result<Self, Error> {
        Ok(TickOp {
            n: args.u64_or("n", 10)?,
            interval: Duration::from_millis(args.u64_or("interval_ms", 100)?),
            delay: Duration::from_millis(args.u64_or("delay_ms", 0)?),
            text: args.str_or("text", "tick")?.to_string(),
        })
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let mut ticks = 0u64;
        if !self.delay.is_zero() && !ctx.sleep(self.delay) {
            ctx.set("ticks", ticks);
            return Ok(());
        }
        for i in 0..self.n {
            if i > 0 && !ctx.sleep(self.interval) {
                break;
            }
            if !ctx.emit(ChunkKind::Answer, &format!("{} {i}\n", self.text)) {
                break;
            }
            ticks += 1;
        }
        ctx.set("ticks", ticks);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use op_sdk::testing::Harness;
    use serde_json::json;

    use super::TickOp;

    #[test]
    fn ticks_and_stops_when_the_consumer_goes() {
        let run = Harness::new()
            .args(json!({"n": 3, "interval_ms": 1000}))
            .run::<TickOp>()
            .unwrap();
        assert_eq!(run.answer_text(), "tick 0\ntick 1\ntick 2\n");
        assert_eq!(run.slept, std::time::Duration::from_secs(2));
        let cut = Harness::new()
            .args(json!({"n": 100}))
            .cancel_after(2)
            .run::<TickOp>()
            .unwrap();
        assert_eq!(cut.chunks.len(), 2, "stops at the first emit that fails");
        assert!(Harness::new()
            .args(json!({"n": "x"}))
            .run::<TickOp>()
            .is_err());
    }
}
