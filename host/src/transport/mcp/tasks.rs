//! MCP tasks (the 2026-07-28 extension, rmcp's `TaskManager`): the rest of a `tools/call`
//! that became a task, its TTL and polling interval, and the slot through which an op's
//! questions go to `tasks/update` once the call is a task; `SharedTasks`, the tasks of every
//! host that shares the run store.

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
    record: Option<crate::auth::Call>,
) -> Result<CallToolResult, rmcp::task_manager::TaskExit> {
    let flow_id = run.flow_id.clone();
    let chunks_before = gathered.chunks;
    // The call's audit line, with the task's end (dropped on a cancel: `cancelled`).
    let mut record = record;
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
    if let Some(mut record) = record.take() {
        record.add_chunks((gathered.chunks - chunks_before) as usize);
        record.end(if outcome.error.is_some() {
            crate::auth::Outcome::Error
        } else {
            crate::auth::Outcome::Ok
        });
    }
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

/// MCP tasks shared through the durable run store (HTTP with `store.path` / `store.url`): the
/// host running a task writes its state there as it changes, and answers the cancels and input
/// responses other hosts leave for it; a host that does not have a task reads it from there.
/// So `tasks/get`, `tasks/update` and `tasks/cancel` answer from any replica.
pub(crate) struct SharedTasks {
    store: Arc<dyn crate::store::Backend>,
    owner: String,
}

/// How often the host running a task writes its state, and reads what others asked of it.
const MIRROR_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// A task still running whose host has not written it for this long is reported failed.
const SILENT_FOR_MS: i64 = 10_000;
/// The field of a kept task's state that names who made it.
const SUBJECT: &str = "_flowhost_subject";
/// Where [`SharedTasks::state`] hands on when the task was last written.
const UPDATED: &str = "_flowhost_updated_ms";

impl SharedTasks {
    pub(crate) fn new(store: Arc<dyn crate::store::Backend>, owner: String) -> SharedTasks {
        SharedTasks { store, owner }
    }

    async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn crate::store::Backend) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T, ErrorData> {
        crate::store::call(&self.store, call)
            .await
            .map_err(|err| ErrorData::internal_error(err, None))
    }

    /// Writes task `id` of `tasks` to the store until it ends (and a last time after), and
    /// passes on what other hosts asked of it.
    pub(crate) fn mirror(
        self: &Arc<Self>,
        tasks: Arc<rmcp::task_manager::TaskManager>,
        id: String,
        ttl_ms: u64,
        subject: Arc<str>,
    ) {
        let shared = self.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            let mut written = tokio::time::Instant::now();
            loop {
                let Ok(detailed) = tasks.get_task(&id) else {
                    return; // Expired here: it expires in the store too.
                };
                let done = matches!(
                    detailed.task.status,
                    rmcp::model::TaskStatus::Completed
                        | rmcp::model::TaskStatus::Failed
                        | rmcp::model::TaskStatus::Cancelled
                );
                // Who made it goes along: only they may read or cancel it elsewhere.
                let mut state = serde_json::to_value(&detailed).unwrap_or_default();
                if let Some(object) = state.as_object_mut() {
                    object.insert(SUBJECT.into(), json!(&*subject));
                }
                let state = state.to_string();
                // Written on every change, and every 2 s (other hosts see it is alive).
                if state != last || written.elapsed() >= std::time::Duration::from_secs(2) {
                    let now = crate::store::now_ms();
                    let row = crate::store::TaskRow {
                        id: id.clone(),
                        owner: shared.owner.clone(),
                        state: state.clone(),
                        updated_ms: now,
                        expires_ms: now + ttl_ms as i64,
                    };
                    if let Err(err) = shared.call(move |s| s.put_task(&row)).await {
                        tracing::warn!(task = id, "{}", err.message);
                    }
                    last = state;
                    written = tokio::time::Instant::now();
                }
                if done {
                    return;
                }
                let task_id = id.clone();
                let asked = shared
                    .call(move |s| s.task_requests(&task_id))
                    .await
                    .unwrap_or_default();
                for request in asked {
                    let outcome = if request == "cancel" {
                        tasks.cancel_task(&id)
                    } else {
                        let inputs: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_str(&request).unwrap_or_default();
                        tasks.update_task(&id, inputs)
                    };
                    if let Err(err) = outcome {
                        tracing::warn!(task = id, "{}", err.message);
                    }
                }
                tokio::time::sleep(MIRROR_EVERY).await;
            }
        });
    }

    /// `tasks/get` of a task another host runs (or ran).
    pub(crate) async fn get(
        &self,
        id: &str,
        subject: &str,
    ) -> Result<Option<rmcp::model::DetailedTask>, ErrorData> {
        let Some(mut state) = self.state(id, subject).await? else {
            return Ok(None);
        };
        let row_updated = state
            .get(UPDATED)
            .and_then(serde_json::Value::as_i64)
            .unwrap_or_default();
        if let Some(object) = state.as_object_mut() {
            object.remove(UPDATED);
        }
        let running = matches!(state["status"].as_str(), Some("working" | "input_required"));
        if running && crate::store::now_ms() - row_updated > SILENT_FOR_MS {
            // Its host stopped writing it: it is gone (MCP tasks do not resume).
            if let Some(object) = state.as_object_mut() {
                object.remove("inputRequests");
                object.remove("result");
                object.insert("status".into(), json!("failed"));
                object.insert(
                    "error".into(),
                    json!({"code": -32603, "message": "the host running this task stopped; call the tool again"}),
                );
            }
        }
        serde_json::from_value(state).map(Some).map_err(|err| {
            ErrorData::internal_error(format!("a kept task does not read: {err}"), None)
        })
    }

    /// `tasks/cancel` or `tasks/update` (`request` is `cancel` or the input responses as
    /// JSON) of a task another host runs; false when no host keeps it.
    pub(crate) async fn ask(
        &self,
        id: &str,
        subject: &str,
        request: String,
    ) -> Result<bool, ErrorData> {
        if self.state(id, subject).await?.is_none() {
            return Ok(false);
        }
        let task_id = id.to_string();
        self.call(move |s| s.ask_task(&task_id, &request)).await
    }

    /// A kept task's state, if `subject` made it (the subject taken out, the time it was
    /// written put in as [`UPDATED`]).
    async fn state(&self, id: &str, subject: &str) -> Result<Option<serde_json::Value>, ErrorData> {
        let task_id = id.to_string();
        let Some(row) = self.call(move |s| s.task(&task_id)).await? else {
            return Ok(None);
        };
        let mut state: serde_json::Value = serde_json::from_str(&row.state).map_err(|err| {
            ErrorData::internal_error(format!("a kept task does not read: {err}"), None)
        })?;
        let Some(object) = state.as_object_mut() else {
            return Ok(None);
        };
        let made_by = object.remove(SUBJECT);
        if made_by
            .as_ref()
            .and_then(|s| s.as_str())
            .unwrap_or("anonymous")
            != subject
        {
            return Ok(None);
        }
        object.insert(UPDATED.into(), json!(row.updated_ms));
        Ok(Some(state))
    }
}
