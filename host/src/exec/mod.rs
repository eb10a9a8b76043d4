//! The executor: runs a compiled flow into a stream of chunks. Serial steps share one context;
//! parallel branches run on copies and merge in declaration order; a failure cancels the rest.
//! Knows nothing of HTTP, MCP or files: callers hand it a flow and an input object.

pub mod admission;
pub mod batch;
pub mod cache;
mod run;
pub mod worker;

pub use run::*;
