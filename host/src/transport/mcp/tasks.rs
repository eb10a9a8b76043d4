//! MCP tasks (the 2026-07-28 extension, rmcp's `TaskManager`): the rest of a `tools/call`
//! that became a task, its TTL and polling interval, and the slot through which an op's
//! questions go to `tasks/update` once the call is a task.

use std::sync::Arc;

use rmcp::model::{CallToolResult, ErrorData};
use serde_json::json;

use super::call::{tool_result, Gathered};
use crate::exec::{self, Run};

/// The rest of a call that became a task: runs to the end (or `tasks/cancel`) with nobody
/// waiting on the request; the result is kept for `tasks/get`.
pub(crate) async fn finish_as_task(
    task: rmcp::task_manager::TaskContext,
    mut run: Run,
    mut batch: Vec<crate::chunk::Chunk>,
    mut gathered: Gathered,
    mut logs: tokio::sync::mpsc::Receiver<exec::LogLine>,
    flow: Arc<crate::plan::Flow>,
) -> Result<CallToolResult, rmcp::task_manager::TaskExit> {
    let flow_id = run.flow_id.clone();
    loop {
        let more = tokio::select! {
            more = run.next_batch(&mut batch) => more,
            // Nobody to send them to once the request has been answered.
            Some(_) = logs.recv() => continue,
            _ = task.cancelled() => {
                run.cancel_token().cancel();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), run.finish()).await;
                return Err(rmcp::task_manager::TaskExit::Cancelled);
            }
        };
        if !more {
            break;
        }
        // Progress is kept on the task: how far the run got, for `tasks/get`.
        if let Some(last) = batch.last() {
            let chunks = gathered.chunks + batch.len() as u64;
            let mut text: String = last.text.chars().take(120).collect();
            if text.len() < last.text.len() {
                text.push('…');
            }
            task.set_status_message(format!(
                "running flow {}: {chunks} chunk(s); last {}: {text}",
                flow.name,
                last.kind.as_str()
            ));
        }
        for chunk in batch.drain(..) {
            gathered.take(&chunk);
        }
    }
    let outcome = run.finish().await;
    // A crash is the host's failure, not the tool's answer: the task `failed`.
    if let (true, Some(error)) = (outcome.crashed, &outcome.error) {
        return Err(rmcp::task_manager::TaskExit::Error(
            ErrorData::internal_error(error.clone(), Some(json!({"flow_id": flow_id}))),
        ));
    }
    Ok(tool_result(&flow, &outcome, gathered, &flow_id))
}

/// Suggested `tasks/get` polling interval.
pub(crate) const TASK_POLL_MS: u64 = 500;

/// A task's TTL past its flow's `total_timeout`.
pub(crate) const TASK_KEPT: std::time::Duration = std::time::Duration::from_secs(300);

/// The TTL of a task whose flow has no `total_timeout`.
pub(crate) const TASK_TTL_WITHOUT_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The task a call became, once it has (asks then go through `tasks/update`).
#[derive(Default)]
pub(crate) struct TaskSlot {
    task: std::sync::Mutex<Option<rmcp::task_manager::TaskContext>>,
    set: tokio::sync::Notify,
    /// The call becomes a task before its ops can ask anything: their questions wait for it.
    pub(crate) at_once: std::sync::atomic::AtomicBool,
}

impl TaskSlot {
    pub(crate) fn fill(&self, task: rmcp::task_manager::TaskContext) {
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        self.set.notify_waiters();
    }

    fn get(&self) -> Option<rmcp::task_manager::TaskContext> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The task, waiting for it when the call becomes one at once.
    pub(crate) async fn wait(&self) -> Option<rmcp::task_manager::TaskContext> {
        loop {
            let set = self.set.notified();
            if let Some(task) = self.get() {
                return Some(task);
            }
            if !self.at_once.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            set.await;
        }
    }
}
