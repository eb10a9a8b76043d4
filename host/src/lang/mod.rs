//! The flow language: `flow_content` expressions and the YAML flow files, parsed with
//! diagnostics and compiled against the op registry into a plan (`crate::plan`).
//!
//! `expr` parses `flow_content`; `spec` reads a flow file into specs; `schema` handles the
//! flow's schemas; `compile` binds a spec to the registry; `diagnostics` is what they report.

mod compile;
mod diagnostics;
pub mod expr;
mod schema;
mod spec;

pub use compile::compile;
pub use diagnostics::{short_number, Diagnostic, Severity};
pub use spec::{is_flow_file, list_files, parse_file, FileFlows, Spec};
