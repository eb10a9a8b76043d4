//! `FailOp` and `PanicOp`: fail on purpose, to exercise the host's error paths.

use op_sdk::{Args, ChunkKind, Context, Error, Op};

/// Emits `n` answer chunks (default 0), then returns an error with `message`.
pub struct FailOp {
    message: String,
    n: u64,
}

impl Op for FailOp {
    const NAME: &'static str = "FailOp";
    const DESCRIPTION: &'static str = "Emits `n` chunks (default 0), then fails with `message`";

    fn new(args: &Args) -> Result<Self, Error> {
        Ok(FailOp {
            message: args
                .str_or("message", "FailOp failed on purpose")?
                .to_string(),
            n: args.u64_or("n", 0)?,
        })
    }

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        for _ in 0..self.n {
            ctx.emit(ChunkKind::Answer, "before failure ");
        }
        Err(Error::new(self.message.clone()))
    }
}

/// Panics with `message`: the host must turn it into an error and keep serving.
pub struct PanicOp {
    message: String,
}

impl Op for PanicOp {
    const NAME: &'static str = "PanicOp";
    const DESCRIPTION: &'static str = "Panics with `message` (fault tests)";

    fn new(args: &Args) -> Result<Self, Error> {
        Ok(PanicOp {
            message: args
                .str_or("message", "PanicOp panicked on purpose")?
                .to_string(),
        })
    }

    fn execute(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        panic!("{}", self.message);
    }
}
