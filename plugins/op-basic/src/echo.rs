//! `EchoOp`: the answer is the request's `query`.

use op_sdk::{Args, ChunkKind, Context, Error, Op};

/// Streams the request's `query` back as one answer chunk and sets it as the answer.
pub struct EchoOp;

impl Op for EchoOp {
    const NAME: &'static str = "EchoOp";
    const DESCRIPTION: &'static str = "Answers with the request's `query`";

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
