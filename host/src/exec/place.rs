//! Where a call runs: the isolation policy (in process or in a worker process), and one call
//! of an op inline on the runtime thread, on the op pool, or in a worker.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::host::OpHost;
use super::run::Failure;
use super::walk::Env;
use crate::chunk::Chunk;
use crate::plan::Isolation;
use crate::plan::Step;

/// Where ops run: `isolation` in a flow's YAML wins, then the plugin's setting
/// (`plugins.<name>.isolation`), then the default (`ops.isolation`).
#[derive(Clone, Debug, Default)]
pub struct IsolationPolicy {
    pub(crate) default: Isolation,
    pub(crate) plugins: std::collections::HashMap<String, Isolation>,
    /// `ops.inline`: whether proven-fast in-process ops may run on the runtime thread.
    pub(crate) inline: Inline,
}

/// `ops.inline`: `auto` lets an in-process op that has shown itself fast run on the runtime
/// thread that asked for it (see `ops::Speed`); `never` keeps every call on the op pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Inline {
    #[default]
    Auto,
    Never,
}

/// Where this run's ops go, and the memory limit of their workers.
#[derive(Clone)]
pub(super) struct Placement {
    pub(super) policy: Arc<IsolationPolicy>,
    pub(super) flow: Option<Isolation>,
    pub(super) memory_mb: Option<u64>,
}

impl Placement {
    fn isolated(&self, plugin: &str) -> bool {
        let choice = self
            .flow
            .or_else(|| self.policy.plugins.get(plugin).copied())
            .unwrap_or(self.policy.default);
        choice == Isolation::Process
    }
}

/// What one call did besides its result.
#[derive(Default)]
pub(super) struct Report {
    /// Chunks the op emitted.
    pub(super) emitted: u64,
    /// Its chunks, when recording for the cache and they fit.
    pub(super) recorded: Option<Vec<Chunk>>,
    /// Where it ran: `inline`, `pool` or `worker`.
    pub(super) placement: &'static str,
}

/// Inline calls running now, in this process.
static INLINE_NOW: AtomicUsize = AtomicUsize::new(0);

/// A place for one inline call. Inline calls may hold all runtime workers but one at once
/// (one, on a runtime of one worker): a proven-fast op that turns slow on one input holds its
/// worker for the whole call, and if every worker held one, nothing else would run: no other
/// request, no `/ready`. Past the bound a call goes to the op pool, as before promotion.
struct InlineSlot;

impl InlineSlot {
    fn take(runtime: &tokio::runtime::Handle) -> Option<InlineSlot> {
        let max = runtime.metrics().num_workers().saturating_sub(1).max(1);
        INLINE_NOW
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()
            .map(|_| InlineSlot)
    }
}

impl Drop for InlineSlot {
    fn drop(&mut self) {
        INLINE_NOW.fetch_sub(1, Ordering::Release);
    }
}

/// Runs `call` on the op pool (`exec/pool.rs`) inside the main runtime's context (`main`):
/// what the op asks of the host spawns onto and blocks on the runtime that serves.
fn on_pool<R: Send + 'static>(
    main: tokio::runtime::Handle,
    call: impl FnOnce() -> R + Send + 'static,
) -> impl std::future::Future<Output = Result<R, String>> {
    super::pool::spawn(move || {
        let _main = main.enter();
        call()
    })
}

/// One call of a step's op: inline, on the op pool, or in a worker process; what it asks
/// for (spans, LLM calls, sub-ops) goes under `trace`.
pub(super) async fn call_once(
    step: &Step,
    context_json: &str,
    env: &Env,
    trace: &crate::telemetry::Cx,
    record: bool,
) -> (Result<Map<String, Value>, Failure>, Report) {
    let op_name = step.name();
    let host = OpHost {
        op: op_name,
        runtime: tokio::runtime::Handle::current(),
        inline: false,
        waited: AtomicBool::new(false),
        emitted: AtomicU64::new(0),
        recording: record.then(|| Mutex::new(Some((Vec::new(), 0)))),
        subs: step.subs.clone(),
        env: Env {
            trace: trace.clone(),
            ..env.clone()
        },
        spans: Mutex::new(Vec::new()),
    };
    let op = &step.op;
    let isolated = env.isolation.isolated(&op.library.plugin_name);
    let running = crate::metrics::ops_running();
    let slot = if !isolated
        && env.isolation.policy.inline == Inline::Auto
        && op.speed.inline()
        && host.runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    {
        InlineSlot::take(&host.runtime)
    } else {
        None
    };
    let joined = if let Some(slot) = slot {
        // A proven-fast op runs right here (see `ops::Speed`); its waits leave the runtime
        // through `block_in_place`.
        let host = OpHost {
            inline: true,
            ..host
        };
        running.increment(1.0);
        let probe = if op.speed.measure_inline() {
            crate::ops::Probe::start()
        } else {
            crate::ops::Probe::wall()
        };
        let result = op
            .library
            .run(op.name, &step.args_json, context_json, &host)
            .map_err(crate::exec::worker::Error::Failed);
        op.speed
            .inlined(probe.finish(host.waited.load(Ordering::Relaxed)));
        drop(slot);
        running.decrement(1.0);
        let mut report = host.report();
        report.placement = "inline";
        Ok((result, report))
    } else {
        let op = op.clone();
        let args = step.args_json.clone();
        let context_json = context_json.to_string();
        let memory_mb = env.isolation.memory_mb;
        on_pool(host.runtime.clone(), move || {
            running.increment(1.0);
            let result = if isolated {
                crate::exec::worker::call(&op, &args, &context_json, &host, memory_mb)
            } else {
                let probe = op.speed.on_probation().then(crate::ops::Probe::start);
                let result = op.library.run(op.name, &args, &context_json, &host);
                let waited = host.waited.load(Ordering::Relaxed);
                match probe {
                    Some(probe) => op.speed.pooled(probe.finish(waited)),
                    // Past probation only a wait changes anything.
                    None if waited => op.speed.pooled(crate::ops::Call {
                        waited,
                        ..Default::default()
                    }),
                    None => {}
                }
                result.map_err(crate::exec::worker::Error::Failed)
            };
            running.decrement(1.0);
            let mut report = host.report();
            report.placement = if isolated { "worker" } else { "pool" };
            (result, report)
        })
        .await
    };
    let failure = |message: String, crashed: bool| Failure {
        op: op_name,
        message,
        crashed,
        attempts: 1,
    };
    let (result, report) = match joined {
        Ok(done) => done,
        // Whether it emitted is unknown: count it as having done so (no retry).
        Err(join) => {
            let report = Report {
                emitted: 1,
                recorded: None,
                placement: if isolated { "worker" } else { "pool" },
            };
            return (
                Err(failure(format!("op thread failed: {join}"), false)),
                report,
            );
        }
    };
    let result = match result {
        Ok(writes_json) => match serde_json::from_str(&writes_json) {
            Ok(Value::Object(writes)) => Ok(writes),
            _ => Err(failure(
                "returned context writes that are not a JSON object".into(),
                false,
            )),
        },
        Err(crate::exec::worker::Error::Failed(message)) => Err(failure(message, false)),
        Err(crate::exec::worker::Error::Crashed(message)) => Err(failure(message, true)),
    };
    (result, report)
}
