//! Basic ops that need no LLM: echo, system-prompt templating, counting and ticking (for
//! benchmarks and cancellation tests), and two that fail on purpose (for fault tests).

mod count;
mod echo;
mod fail;
mod prompt;
mod tick;

pub use count::CountOp;
pub use echo::EchoOp;
pub use fail::{FailOp, PanicOp};
pub use prompt::GenSystemPromptOp;
pub use tick::TickOp;

op_sdk::export_plugin!(EchoOp, GenSystemPromptOp, CountOp, TickOp, FailOp, PanicOp);
