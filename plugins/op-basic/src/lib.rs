//! Basic ops that need no LLM: echo, system-prompt templating, counting and ticking (for
//! benchmarks and cancellation tests), one that burns CPU on request (the inline-stall test),
//! and two that fail on purpose (for fault tests).

mod burn;
mod count;
mod echo;
mod fail;
mod prompt;
mod tick;

pub use burn::BurnOp;
pub use count::CountOp;
pub use echo::EchoOp;
pub use fail::{FailOp, PanicOp};
pub use prompt::GenSystemPromptOp;
pub use tick::TickOp;

op_sdk::export_plugin!(
    EchoOp,
    GenSystemPromptOp,
    CountOp,
    TickOp,
    FailOp,
    PanicOp,
    BurnOp
);
