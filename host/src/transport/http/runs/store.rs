//! The runs this process drives: each run's record (status, chunks so far, who waits on it),
//! retention (`runs:` section) and idempotency keys. Bounded in count and bytes. With a
//! durable store (`store.path`, [`Durable`]) the driver (`drive.rs`) also writes every kept
//! chunk, checkpoint and ending there, so the run outlives this process; without one, runs
//! live in this process's memory only.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::kept::Durable;
use crate::chunk::Chunk;

/// `runs:` in the config: how long and how many finished runs are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Retention {
    /// How long a finished run stays readable (`runs.retention`, seconds).
    pub(crate) keep: Duration,
    /// Runs kept at most, running ones included (`runs.max_runs`).
    pub(crate) max_runs: usize,
    /// Runs running at once (`runs.max_running`): each holds op threads; past it a new
    /// async run is refused with 503 + Retry-After.
    pub(crate) max_running: usize,
    /// Memory the kept chunks may take across all runs (`runs.max_bytes`), counted as they
    /// really cost (the chunk, its text's allocation, its slot in the log); a run's own log
    /// stops growing at a quarter of it, and every log stops when the total is reached.
    pub(crate) max_bytes: usize,
}

impl Retention {
    /// The bounds as the durable store applies them.
    pub(crate) fn bounds(&self) -> crate::store::Bounds {
        crate::store::Bounds {
            keep_ms: self.keep.as_millis() as i64,
            max_runs: self.max_runs,
            max_bytes: self.max_bytes as u64,
        }
    }
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep: Duration::from_secs(3600),
            max_runs: 1000,
            max_running: 256,
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

/// Chunks a log page holds: a log grows a page at a time, so its memory is known before it
/// is taken (a doubling `Vec` would take twice what it holds, in one step).
const PAGE: usize = 1024;

/// A run's kept chunks, in pages of [`PAGE`].
#[derive(Default)]
pub(super) struct Log {
    pages: Vec<Vec<Chunk>>,
    len: usize,
}

impl Log {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The chunks from `from` on, at most `max` of them.
    pub(super) fn range(&self, from: usize, max: usize) -> impl Iterator<Item = &Chunk> {
        let end = self.len.min(from.saturating_add(max));
        (from.min(end)..end).map(move |i| &self.pages[i / PAGE][i % PAGE])
    }

    /// What keeping `chunk` next costs: the chunk, its text's allocation, and a new page when
    /// the last one is full.
    pub(super) fn cost(&self, chunk: &Chunk) -> usize {
        let page = if self.len.is_multiple_of(PAGE) {
            PAGE * std::mem::size_of::<Chunk>() + std::mem::size_of::<Vec<Chunk>>()
        } else {
            0
        };
        page + allocation(chunk.text.capacity())
    }

    pub(super) fn push(&mut self, chunk: Chunk) {
        if self.len.is_multiple_of(PAGE) {
            self.pages.push(Vec::with_capacity(PAGE));
        }
        if let Some(page) = self.pages.last_mut() {
            page.push(chunk);
            self.len += 1;
        }
    }
}

/// What the allocator takes for `bytes` of heap: nothing for none, else the size with its
/// header rounded up to 16, at least 32 (glibc's malloc).
pub(super) fn allocation(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        ((bytes + 8).div_ceil(16) * 16).max(32)
    }
}

pub(super) struct Progress {
    pub(super) status: Status,
    pub(super) chunks: Log,
    /// The kept answer chunks, concatenated (the run's answer unless an op sets one).
    pub(super) answer_text: String,
    /// What the kept chunks and `answer_text` cost in memory (see [`Log::cost`]).
    pub(super) bytes: usize,
    /// The log stopped: keeping the next chunk would have passed the run's share or the total
    /// of `runs.max_bytes`. What was kept is a prefix of the run.
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
    /// Who started it: only they may read or cancel it.
    pub(super) subject: std::sync::Arc<str>,
    pub(super) created: SystemTime,
    pub(super) cancel: CancellationToken,
    pub(super) cancel_requested: std::sync::atomic::AtomicBool,
    pub(super) progress: Mutex<Progress>,
    /// Bumped on every change; event streams wait on it.
    pub(super) changed: tokio::sync::watch::Sender<u64>,
    /// Times the run was resumed after its host stopped.
    pub(super) resumes: u32,
    /// How many of its chunks readers may see: with a durable store, those written to it (so
    /// what a reader saw is kept); without one, all (`usize::MAX`).
    pub(super) visible: AtomicUsize,
    /// This process drives it: true until its end is stored (or it is let go).
    pub(super) driving: std::sync::atomic::AtomicBool,
    /// This process let it go (another host took it over, or the store kept failing): readers
    /// here end without `[DONE]` and read it again from the store.
    pub(super) let_go: std::sync::atomic::AtomicBool,
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
        if self.resumes > 0 {
            value["resumes"] = json!(self.resumes);
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
pub(crate) struct Store {
    pub(super) inner: Mutex<Inner>,
    /// Where runs are also kept, when they outlive the process.
    pub(crate) durable: Option<Durable>,
    pub(super) retention: Retention,
    /// What every kept log costs, together (bounded by `retention.max_bytes`).
    kept: AtomicUsize,
    /// One permit per running run (`retention.max_running`).
    running: Arc<tokio::sync::Semaphore>,
    /// Set when the process stops ([`Store::give_up`]).
    stopping: std::sync::atomic::AtomicBool,
    /// Held by the keeper for each of its rounds (`durable.rs`), so that stopping waits for one.
    pub(super) keeper: tokio::sync::Mutex<()>,
}

/// A running run's place among `runs.max_running`.
pub(crate) struct Running(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

#[derive(Default)]
pub(super) struct Inner {
    pub(super) runs: HashMap<String, Arc<Record>>,
    /// Ids in the order they started (oldest first), for eviction.
    pub(super) order: VecDeque<String>,
    /// (flow, Idempotency-Key) → run id and a hash of the input it was started with.
    pub(super) keys: HashMap<(String, String), (String, u64)>,
}

impl Store {
    pub(crate) fn new(retention: Retention, durable: Option<Durable>) -> Store {
        Store {
            inner: Mutex::default(),
            durable,
            running: Arc::new(tokio::sync::Semaphore::new(retention.max_running.max(1))),
            retention,
            kept: AtomicUsize::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            keeper: tokio::sync::Mutex::new(()),
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
        self.prune_for(0);
    }

    /// [`Store::prune`], making room for `need` more bytes of logs as well.
    pub(super) fn prune_for(&self, need: usize) {
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
            if let Some(record) = inner.runs.remove(&id) {
                self.kept.fetch_sub(record.lock().bytes, Ordering::Relaxed);
            }
        }
        let mut bytes: usize = inner.runs.values().map(|r| r.lock().bytes).sum();
        let mut index = 0;
        while (inner.runs.len() > self.retention.max_runs
            || bytes.saturating_add(need) > self.retention.max_bytes)
            && index < inner.order.len()
        {
            let id = inner.order[index].clone();
            let finished = inner.runs.get(&id).map(|r| r.lock().finished.is_some());
            match finished {
                Some(true) => {
                    if let Some(record) = inner.runs.remove(&id) {
                        let freed = record.lock().bytes;
                        bytes -= freed;
                        self.kept.fetch_sub(freed, Ordering::Relaxed);
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
        keys.retain(|_, (id, _)| runs.contains_key(id));
    }

    /// Whether this process drives run `id` (it is here and has not ended).
    pub(super) fn drives(&self, id: &str) -> bool {
        self.lock()
            .runs
            .get(id)
            .is_some_and(|r| r.driving.load(Ordering::Relaxed))
    }

    /// The runs this process drives.
    pub(super) fn driven(&self) -> Vec<String> {
        self.lock()
            .runs
            .iter()
            .filter(|(_, r)| r.driving.load(Ordering::Relaxed))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Forgets run `id` here (its bytes go back to `runs.max_bytes`).
    pub(super) fn forget(&self, id: &str) {
        let gone = self.lock().runs.remove(id);
        if let Some(record) = gone {
            self.release_bytes(record.lock().bytes);
        }
    }

    /// `bytes` of kept logs are no longer kept.
    pub(super) fn release_bytes(&self, bytes: usize) {
        self.kept.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// This process is stopping: its drivers write nothing more (their runs are resumed
    /// elsewhere or after a restart).
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// This process is stopping: its running runs are left for another host (or this one,
    /// restarted) to resume at once.
    pub(crate) async fn give_up(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        // The keeper's round under way ends first (it may be renewing or taking a run).
        let _round = self.keeper.lock().await;
        if let Some(durable) = &self.durable {
            durable.give_up().await;
        }
    }

    /// A place for one more running run, if `runs.max_running` leaves one.
    pub(crate) fn try_running(&self) -> Option<Running> {
        self.running.clone().try_acquire_owned().ok().map(Running)
    }

    /// Takes `cost` bytes of the total for a log, if they are left.
    pub(super) fn reserve(&self, cost: usize) -> bool {
        let max = self.retention.max_bytes;
        self.kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                kept.checked_add(cost).filter(|total| *total <= max)
            })
            .is_ok()
    }
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
