//! The flow language: `flow_content` expressions and the YAML flow files, parsed with
//! diagnostics and compiled against the op registry into a plan.

pub mod expr;
pub mod flow;
