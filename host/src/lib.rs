//! flowhost: a plugin host for LLM flows. The binary (`main.rs`) is glue over this library:
//! `config` turns arguments into a [`config::Config`], `catalog` serves snapshots of flows
//! compiled against the `ops` registry, `watch` reloads them live, and `exec` runs a flow into
//! a stream of chunks. See ARCHITECTURE.md for the map and its invariants.

pub mod batch;
pub mod catalog;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod exec;
pub mod expr;
pub mod flow;
pub mod llm;
pub mod metrics;
pub mod ops;
pub mod transport;
pub mod watch;
