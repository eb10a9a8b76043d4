//! flowhost: a plugin host for LLM flows. The binary (`main.rs`) is glue over this library:
//! `app` turns arguments into a configuration and runs commands, `catalog` serves snapshots of
//! flows compiled (`lang`) against the `ops` registry, and `exec` runs a flow into a stream of
//! chunks that `transport` drives to clients. See ARCHITECTURE.md for the map and its
//! invariants.

pub mod app;
pub mod catalog;
pub mod chunk;
pub mod exec;
pub mod lang;
pub mod llm;
pub mod metrics;
pub mod ops;
pub mod plan;
pub mod transport;
pub mod util;

pub use app::cli;
pub use catalog::watch;
pub use lang::expr;
