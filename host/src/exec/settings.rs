//! The executor's section of the configuration (`ops:`, with `plugins.<name>.isolation` and
//! the top-level `max_op_threads`): how many runs and op threads at once, where op calls run,
//! how many worker processes. The app assembles it; `app/serve.rs` applies it.

use super::place::IsolationPolicy;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Upper bound of threads running ops at once (`max_op_threads`).
    pub(crate) max_op_threads: usize,
    /// Runs of all flows at once (`ops.max_concurrency`, or FlowLLM's
    /// `http.limit_concurrency`); `None`: no limit.
    pub(crate) max_concurrency: Option<usize>,
    /// Runs that may wait for a turn past `max_concurrency` (`ops.max_queue`).
    pub(crate) max_queue: usize,
    /// Where ops run: `ops.isolation`, `ops.inline` and `plugins.<name>.isolation`.
    pub(crate) isolation: IsolationPolicy,
    /// Worker processes alive at once (`ops.max_workers`).
    pub(crate) max_workers: usize,
    /// How long an idle worker process waits for another call before it exits
    /// (`ops.worker_idle_timeout`).
    pub(crate) worker_idle_timeout: std::time::Duration,
}
