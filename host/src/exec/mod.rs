//! The executor: runs a compiled flow into a stream of chunks. Serial steps share one context;
//! parallel branches run on copies and merge in declaration order; a failure cancels the rest.
//! Knows nothing of HTTP, MCP or files: callers hand it a flow and an input object.
//!
//! The parts: `run.rs` (options, starting a run, reading it, how it ended), `walk.rs` (the walk
//! over the plan), `step.rs` (a step's policy: cache, retries, tolerated failures), `place.rs`
//! (where a call runs: inline, op pool, worker process), `pool.rs` (the op pool's threads,
//! and the watch that lowers a call burning CPU in silence), `host.rs` (the `ops::Host` an op calls
//! back into), `client.rs` (asking the client for the ops), `admission.rs` (limits on runs at
//! once and waiting), `batch.rs` (the bounded channel from op threads to the reader),
//! `cache.rs` (the op answer cache), `journal.rs` (a durable run's completed calls), `settings.rs` (the `ops:` section), `worker/` (ops in
//! worker processes).

pub(crate) mod admission;
pub(crate) mod batch;
pub(crate) mod cache;
mod client;
mod host;
mod journal;
mod mcp;
mod place;
mod pool;
mod run;
mod settings;
mod step;
mod walk;
pub(crate) mod worker;

/// A [`LogLine`]'s level, for the transports (which do not name `ops`).
pub(crate) use crate::ops::Level;
/// The compiled flow a run starts from (built by the catalog).
pub use crate::plan::Flow;
/// Host-wide admission limits (`ops.max_concurrency`, `ops.max_queue`).
pub use admission::Global as Admission;
pub use client::Client;
pub(crate) use client::{AskError, AskFuture, Asker};
pub(crate) use host::LogLine;
pub use host::LogSink;
pub use journal::{Checkpoint, Journal, CHECKPOINT_OP};
pub(crate) use place::Inline;
pub use place::IsolationPolicy;
pub(crate) use pool::set_max_op_threads;
pub(crate) use run::admit_and_start;
pub use run::{start, Options, Outcome, Run, DEFAULT_MAX_ANSWER_BYTES};
pub(crate) use settings::Settings;
pub use walk::FlowLookup;
