//! The store of async runs: each run's record (status, chunks so far, who waits on it), the
//! task that drives a run to its end, retention (`runs:` section) and idempotency keys.
//! Bounded in count and bytes; runs live in this process's memory.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::chunk::Chunk;
use crate::exec::Run;

/// `runs:` in the config: how long and how many finished runs are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Retention {
    /// How long a finished run stays readable (`runs.retention`, seconds).
    pub(crate) keep: Duration,
    /// Runs kept at most, running ones included (`runs.max_runs`).
    pub(crate) max_runs: usize,
    /// Chunk bytes kept across all runs (`runs.max_bytes`); a run's own log stops growing at
    /// a quarter of it.
    pub(crate) max_bytes: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep: Duration::from_secs(3600),
            max_runs: 1000,
            max_bytes: 64 << 20,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

pub(super) struct Progress {
    pub(super) status: Status,
    pub(super) chunks: Vec<Chunk>,
    pub(super) bytes: usize,
    /// Chunks past the run's share of `max_bytes` were not kept.
    pub(super) truncated: bool,
    pub(super) answer: Value,
    pub(super) error: Option<String>,
    pub(super) failed_ops: Vec<Value>,
    pub(super) finished: Option<(SystemTime, Instant)>,
}

/// One async run.
pub(super) struct Record {
    pub(super) id: String,
    pub(super) flow: String,
    pub(super) created: SystemTime,
    pub(super) cancel: CancellationToken,
    pub(super) cancel_requested: std::sync::atomic::AtomicBool,
    pub(super) progress: Mutex<Progress>,
    /// Bumped on every change; event streams wait on it.
    pub(super) changed: tokio::sync::watch::Sender<u64>,
}

impl Record {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub(super) fn to_json(&self) -> Value {
        let progress = self.lock();
        let mut value = json!({
            "run_id": self.id,
            "flow": self.flow,
            "status": progress.status.as_str(),
            "created_at": rfc3339(self.created),
            "status_url": format!("/runs/{}", self.id),
            "events_url": format!("/runs/{}/events", self.id),
            "chunks": progress.chunks.len(),
        });
        if progress.truncated {
            value["events_truncated"] = json!(true);
        }
        if let Some((at, _)) = progress.finished {
            value["finished_at"] = json!(rfc3339(at));
            value["answer"] = progress.answer.clone();
            value["success"] = json!(progress.status == Status::Completed);
            let mut metadata = json!({"flow_id": self.id});
            if let Some(error) = &progress.error {
                metadata["error"] = json!(error);
            }
            if !progress.failed_ops.is_empty() {
                metadata["failed_ops"] = Value::Array(progress.failed_ops.clone());
            }
            value["metadata"] = metadata;
        }
        value
    }
}

pub(super) fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The runs of this process.
#[derive(Default)]
pub(crate) struct Store {
    pub(super) inner: Mutex<Inner>,
    pub(super) retention: Retention,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) runs: HashMap<String, Arc<Record>>,
    /// Ids in the order they started (oldest first), for eviction.
    pub(super) order: VecDeque<String>,
    /// (flow, Idempotency-Key) → run id.
    pub(super) keys: HashMap<(String, String), String>,
}

impl Store {
    pub(crate) fn new(retention: Retention) -> Store {
        Store {
            inner: Mutex::default(),
            retention,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, id: &str) -> Option<Arc<Record>> {
        self.prune();
        self.lock().runs.get(id).cloned()
    }

    /// Drops runs past their retention, then the oldest finished ones while over the bounds.
    pub(super) fn prune(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        let keep = self.retention.keep;
        let expired = |record: &Record| {
            record
                .lock()
                .finished
                .is_some_and(|(_, at)| now.duration_since(at) >= keep)
        };
        let gone: Vec<String> = inner
            .runs
            .iter()
            .filter(|(_, r)| expired(r))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            inner.runs.remove(&id);
        }
        let mut bytes: usize = inner.runs.values().map(|r| r.lock().bytes).sum();
        let mut index = 0;
        while (inner.runs.len() > self.retention.max_runs || bytes > self.retention.max_bytes)
            && index < inner.order.len()
        {
            let id = inner.order[index].clone();
            let finished = inner.runs.get(&id).map(|r| r.lock().finished.is_some());
            match finished {
                Some(true) => {
                    if let Some(record) = inner.runs.remove(&id) {
                        bytes -= record.lock().bytes;
                    }
                    inner.order.remove(index);
                }
                Some(false) => index += 1,
                None => {
                    inner.order.remove(index);
                }
            }
        }
        let Inner { runs, order, keys } = &mut *inner;
        order.retain(|id| runs.contains_key(id));
        keys.retain(|_, id| runs.contains_key(id));
    }

    /// Starts keeping `run`, driven to its end by a task of its own.
    pub(super) fn start(
        self: &Arc<Self>,
        flow: &str,
        run: Run,
        key: Option<String>,
    ) -> Arc<Record> {
        let (changed, _) = tokio::sync::watch::channel(0);
        let record = Arc::new(Record {
            id: run.flow_id.clone(),
            flow: flow.to_string(),
            created: SystemTime::now(),
            cancel: run.cancel_token(),
            cancel_requested: std::sync::atomic::AtomicBool::new(false),
            progress: Mutex::new(Progress {
                status: Status::Running,
                chunks: Vec::new(),
                bytes: 0,
                truncated: false,
                answer: Value::Null,
                error: None,
                failed_ops: Vec::new(),
                finished: None,
            }),
            changed,
        });
        {
            let mut inner = self.lock();
            inner.runs.insert(record.id.clone(), record.clone());
            inner.order.push_back(record.id.clone());
            if let Some(key) = key {
                inner
                    .keys
                    .insert((flow.to_string(), key), record.id.clone());
            }
        }
        self.prune();
        let share = (self.retention.max_bytes / 4).max(1);
        let driven = record.clone();
        tokio::spawn(async move { drive(run, &driven, share).await });
        record
    }
}

/// Reads a run to its end into its record.
pub(super) async fn drive(mut run: Run, record: &Record, share: usize) {
    let mut batch = Vec::new();
    while run.next_batch(&mut batch).await {
        {
            let mut progress = record.lock();
            for chunk in batch.drain(..) {
                if progress.bytes + chunk.text.len() > share {
                    progress.truncated = true;
                    continue;
                }
                progress.bytes += chunk.text.len();
                progress.chunks.push(chunk);
            }
        }
        record.bump();
    }
    let outcome = run.finish().await;
    let cancelled = record
        .cancel_requested
        .load(std::sync::atomic::Ordering::Relaxed);
    {
        let mut progress = record.lock();
        progress.status = match (&outcome.error, cancelled) {
            (_, true) => Status::Cancelled,
            (None, false) => Status::Completed,
            (Some(_), false) => Status::Failed,
        };
        if outcome.error.is_some() {
            metrics::counter!(crate::metrics::FLOW_ERRORS).increment(1);
        }
        progress.answer = outcome.answer;
        progress.error = outcome.error;
        progress.failed_ops = outcome.failed_ops;
        progress.finished = Some((SystemTime::now(), Instant::now()));
    }
    record.bump();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_350_000);
        assert_eq!(rfc3339(at), "2026-11-22T12:20:00Z");
    }
}
