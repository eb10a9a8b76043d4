//! Admission control: how many runs of a flow (and of all flows) may run at once, and how many
//! may wait for a turn. A run past both is refused at once with [`Busy`], which transports turn
//! into 503 + `Retry-After` (HTTP), OpenAI's error shape, or an MCP tool error. Knows nothing of
//! transports or of what a run does; a [`Permit`] is held for the run's whole life.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics as m;
use crate::plan::Flow;

/// One limit: a number of slots and a bounded line of waiters.
#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    max_queue: usize,
    waiting: AtomicUsize,
}

impl Gate {
    fn new(max_concurrency: usize, max_queue: usize) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            max_queue,
            waiting: AtomicUsize::new(0),
        }
    }

    /// A slot now, or after waiting in line; `None` when the line is full.
    async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        // Join the line only if there is room in it.
        let mut waiting = self.waiting.load(Ordering::Relaxed);
        loop {
            if waiting >= self.max_queue {
                return None;
            }
            match self.waiting.compare_exchange_weak(
                waiting,
                waiting + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => waiting = now,
            }
        }
        let queued = metrics::gauge!(m::RUNS_QUEUED);
        queued.increment(1.0);
        // The line is left however this ends, a cancelled caller included.
        struct InLine<'a>(&'a AtomicUsize, metrics::Gauge);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
                self.1.decrement(1.0);
            }
        }
        let _in_line = InLine(&self.waiting, queued);
        self.slots.clone().acquire_owned().await.ok()
    }
}

/// The process-wide limit (`ops.max_concurrency`, or FlowLLM's `http.limit_concurrency`).
#[derive(Clone, Debug, Default)]
pub struct Global {
    gate: Option<Arc<Gate>>,
}

impl Global {
    /// `max_concurrency` runs of any flows at once, `max_queue` more waiting; `None`: no limit.
    pub(crate) fn new(max_concurrency: Option<usize>, max_queue: usize) -> Global {
        Global {
            gate: max_concurrency.map(|n| Arc::new(Gate::new(n.max(1), max_queue))),
        }
    }
}

/// Held by a run while it runs; dropping it frees the slots.
#[derive(Debug)]
pub(crate) struct Permit {
    _flow: Option<OwnedSemaphorePermit>,
    _global: Option<OwnedSemaphorePermit>,
}

/// A run refused because its flow (or the host) is at its limit and the line is full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Busy {
    pub(crate) flow: String,
    pub(crate) message: String,
    /// Seconds a client should wait before retrying.
    pub(crate) retry_after: u64,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Per-flow gates, by flow name; rebuilt when a reload changes the flow's numbers, so runs in
/// flight keep the slots of the gate they entered.
fn gates() -> &'static Mutex<HashMap<String, Arc<Gate>>> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Gate>>>> = OnceLock::new();
    GATES.get_or_init(Mutex::default)
}

fn flow_gate(flow: &Flow) -> Option<Arc<Gate>> {
    let limits = &flow.spec.limits;
    let max_concurrency = limits.max_concurrency?;
    let max_queue = limits.max_queue.unwrap_or(max_concurrency);
    let mut gates = gates().lock().unwrap_or_else(|p| p.into_inner());
    let gate = gates
        .entry(flow.name.to_string())
        .or_insert_with(|| Arc::new(Gate::new(max_concurrency, max_queue)));
    if gate.max_concurrency != max_concurrency || gate.max_queue != max_queue {
        *gate = Arc::new(Gate::new(max_concurrency, max_queue));
    }
    Some(gate.clone())
}

/// Waits for a turn to run `flow` (its own limit, then the global one), or refuses at once
/// when a line is full.
pub(crate) async fn admit(flow: &Flow, global: &Global) -> Result<Permit, Busy> {
    let refuse = |message: String| {
        metrics::counter!(m::RUNS_REJECTED, "flow" => flow.name).increment(1);
        tracing::warn!(flow = flow.name, "{message}");
        Busy {
            flow: flow.name.to_string(),
            message,
            retry_after: 1,
        }
    };
    let own = match flow_gate(flow) {
        None => None,
        Some(gate) => match gate.enter().await {
            Some(permit) => Some(permit),
            None => {
                return Err(refuse(format!(
                    "flow `{}` is busy: {} runs at once (limits.max_concurrency) and {} waiting \
                     (limits.max_queue); retry later",
                    flow.name, gate.max_concurrency, gate.max_queue
                )))
            }
        },
    };
    let all = match &global.gate {
        None => None,
        Some(gate) => match gate.enter().await {
            Some(permit) => Some(permit),
            None => {
                return Err(refuse(format!(
                    "the host is busy: {} runs at once (ops.max_concurrency) and {} waiting \
                     (ops.max_queue); flow `{}` was not started; retry later",
                    gate.max_concurrency, gate.max_queue, flow.name
                )))
            }
        },
    };
    Ok(Permit {
        _flow: own,
        _global: all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_admits_queues_then_refuses() {
        let gate = Arc::new(Gate::new(2, 1));
        let a = gate.enter().await.expect("slot 1");
        let _b = gate.enter().await.expect("slot 2");
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter().await.is_some() })
        };
        tokio::task::yield_now().await;
        while gate.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(gate.enter().await.is_none(), "the line holds one");
        drop(a);
        assert!(
            waiter.await.expect("join"),
            "the waiter gets the freed slot"
        );
        assert_eq!(gate.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_line() {
        let gate = Arc::new(Gate::new(1, 1));
        let _a = gate.enter().await.expect("slot");
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter().await.is_some() })
        };
        while gate.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(gate.waiting.load(Ordering::Relaxed), 0);
    }
}
