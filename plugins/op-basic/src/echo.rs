//! `EchoOp`: the answer is the request's `query`.

use op_sdk::{Args, ChunkKind, Context, Error, Op, Tool};
use serde_json::json;

/// Streams the request's `query` back as one answer chunk and sets it as the answer.
pub struct EchoOp;

impl Op for EchoOp {
    const NAME: &'static str = "EchoOp";
    const DESCRIPTION: &'static str = "Answers with the request's `query`";

    fn tool() -> Option<Tool> {
        Some(Tool {
            name: "echo".into(),
            description: "Repeats the given text back".into(),
            input_schema: json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "the text to repeat"}},
                "required": ["query"]
            }),
        })
    }

    fn new(_args: &Args) -> Result<Self, Error> {
        Ok(EchoOp)
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let query = ctx.str("query")?.to_string();
        ctx.emit(ChunkKind::Answer, &query);
        ctx.set_answer(query);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use op_sdk::testing::Harness;
    use serde_json::json;

    use super::EchoOp;

    #[test]
    fn answers_with_the_query() {
        let run = Harness::new()
            .input(json!({"query": "hello"}))
            .run::<EchoOp>()
            .unwrap();
        assert_eq!(run.answer_text(), "hello");
        assert_eq!(run.writes["answer"], "hello");
        let err = Harness::new().run::<EchoOp>().unwrap_err();
        assert!(err.message().contains("query"), "{err:?}");
    }
}
