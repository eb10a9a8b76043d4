//! The flow language: `flow_content` expressions and the YAML flow files, parsed with
//! diagnostics and compiled against the op registry into a plan (`crate::plan`).
//!
//! `expr` parses `flow_content`; `spec` reads a flow file into specs; `schema` handles the
//! flow's schemas; `compile` binds a spec to the registry; `diagnostics` is what they report.

mod compile;
mod diagnostics;
pub(crate) mod expr;
mod mcp;
mod schema;
mod spec;

pub(crate) use compile::compile;
pub use diagnostics::Diagnostic;
pub(crate) use diagnostics::{short_number, Severity};
pub(crate) use mcp::{exposed, upstream_tool_gone};
pub use spec::parse_file;
pub use spec::FileFlows;

pub(crate) use spec::{is_flow_file, list_files, path_problem};
