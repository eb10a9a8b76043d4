//! The runs this process drives: each run's record (status, chunks so far, who waits on it),
//! the task that drives a run to its end, retention (`runs:` section) and idempotency keys.
//! Bounded in count and bytes. With a durable store (`store.path`, [`Durable`]) every kept
//! chunk, checkpoint and ending is also written there before readers are woken, so the run
//! outlives this process; without one, runs live in this process's memory only.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::kept::{event_of, Durable};
use crate::chunk::Chunk;
use crate::exec::Run;

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
    fn cost(&self, chunk: &Chunk) -> usize {
        let page = if self.len.is_multiple_of(PAGE) {
            PAGE * std::mem::size_of::<Chunk>() + std::mem::size_of::<Vec<Chunk>>()
        } else {
            0
        };
        page + allocation(chunk.text.capacity())
    }

    fn push(&mut self, chunk: Chunk) {
        if self.len.is_multiple_of(PAGE) {
            self.pages.push(Vec::with_capacity(PAGE));
        }
        if let Some(page) = self.pages.last_mut() {
            page.push(chunk);
            self.len += 1;
        }
    }
}

/// What appending `more` bytes to `text` costs, and the capacity it then has (doubling,
/// done with `reserve_exact` so the cost is the one counted).
fn growth(text: &String, more: usize) -> (usize, usize) {
    let needed = text.len() + more;
    if needed <= text.capacity() {
        return (0, text.capacity());
    }
    let capacity = needed.max(text.capacity() * 2).max(64);
    (
        allocation(capacity).saturating_sub(allocation(text.capacity())),
        capacity,
    )
}

/// What the allocator takes for `bytes` of heap: nothing for none, else the size with its
/// header rounded up to 16, at least 32 (glibc's malloc).
fn allocation(bytes: usize) -> usize {
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
    pub(super) created: SystemTime,
    pub(super) cancel: CancellationToken,
    pub(super) cancel_requested: std::sync::atomic::AtomicBool,
    pub(super) progress: Mutex<Progress>,
    /// Bumped on every change; event streams wait on it.
    pub(super) changed: tokio::sync::watch::Sender<u64>,
    /// Times the run was resumed after its host stopped.
    pub(super) resumes: u32,
}

/// What a run brings along when this process takes it over.
pub(super) struct Restored {
    pub(super) created: SystemTime,
    /// Its chunks so far.
    pub(super) kept: Vec<Chunk>,
    /// The answer chunks among the first `answer_cut` count toward its answer (those after
    /// came from the op that was running, which runs again).
    pub(super) answer_cut: usize,
    pub(super) resumes: u32,
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
    fn prune_for(&self, need: usize) {
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

    /// Starts keeping `run`, driven to its end by a task of its own.
    pub(super) fn start(
        self: &Arc<Self>,
        flow: &str,
        run: Run,
        key: Option<(String, u64)>,
        running: Running,
    ) -> Arc<Record> {
        let fresh = Restored {
            created: SystemTime::now(),
            kept: Vec::new(),
            answer_cut: 0,
            resumes: 0,
        };
        self.adopt(flow, run, key, running, fresh)
    }

    /// [`Store::start`] for a run that may have kept chunks before (a resumed one).
    pub(super) fn adopt(
        self: &Arc<Self>,
        flow: &str,
        run: Run,
        key: Option<(String, u64)>,
        running: Running,
        restored: Restored,
    ) -> Arc<Record> {
        let Restored {
            created,
            kept,
            answer_cut,
            resumes,
        } = restored;
        let (changed, _) = tokio::sync::watch::channel(0);
        let mut progress = Progress {
            status: Status::Running,
            chunks: Log::default(),
            answer_text: String::new(),
            bytes: 0,
            truncated: false,
            answer: Value::Null,
            error: None,
            failed_ops: Vec::new(),
            finished: None,
        };
        for (index, chunk) in kept.into_iter().enumerate() {
            let cost = progress.chunks.cost(&chunk);
            if index < answer_cut && chunk.kind == crate::chunk::ChunkKind::Answer {
                progress.answer_text.push_str(&chunk.text);
            }
            if self.reserve(cost) {
                progress.bytes += cost;
            }
            progress.chunks.push(chunk);
        }
        let record = Arc::new(Record {
            id: run.flow_id.clone(),
            flow: flow.to_string(),
            created,
            cancel: run.cancel_token(),
            cancel_requested: std::sync::atomic::AtomicBool::new(false),
            progress: Mutex::new(progress),
            changed,
            resumes,
        });
        {
            let mut inner = self.lock();
            inner.runs.insert(record.id.clone(), record.clone());
            inner.order.push_back(record.id.clone());
            if let Some((key, input)) = key {
                inner
                    .keys
                    .insert((flow.to_string(), key), (record.id.clone(), input));
            }
        }
        self.prune();
        let driven = record.clone();
        let store = self.clone();
        tokio::spawn(async move {
            drive(run, &driven, &store).await;
            drop(running);
        });
        record
    }

    /// This process is stopping: its running runs are left for another host (or this one,
    /// restarted) to resume at once.
    pub(crate) async fn give_up(&self) {
        if let Some(durable) = &self.durable {
            durable.give_up().await;
        }
    }

    /// A place for one more running run, if `runs.max_running` leaves one.
    pub(crate) fn try_running(&self) -> Option<Running> {
        self.running.clone().try_acquire_owned().ok().map(Running)
    }

    /// Takes `cost` bytes of the total for a log, if they are left.
    fn reserve(&self, cost: usize) -> bool {
        let max = self.retention.max_bytes;
        self.kept
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
                kept.checked_add(cost).filter(|total| *total <= max)
            })
            .is_ok()
    }
}

/// Reads a run to its end into its record, keeping chunks while its share and the total of
/// `runs.max_bytes` allow.
pub(super) async fn drive(mut run: Run, record: &Record, store: &Store) {
    let share = (store.retention.max_bytes / 4).max(1);
    let mut batch = Vec::new();
    // Chunks written to the durable store so far; checkpoints waiting to be.
    let mut persisted = record.lock().chunks.len();
    let mut checkpoints = Vec::new();
    while run.next_batch(&mut batch).await {
        if store.durable.is_some() {
            // A checkpoint is kept with the number of chunks before it, not as a chunk.
            let mut seq = record.lock().chunks.len();
            batch.retain(|chunk| {
                if chunk.op == crate::exec::CHECKPOINT_OP {
                    checkpoints.push((seq as u64, chunk.text.clone()));
                    false
                } else {
                    seq += 1;
                    true
                }
            });
        }
        // Oldest last, so each kept chunk is popped off the end.
        batch.reverse();
        let mut pruned = false;
        let mut need = 0;
        loop {
            let mut progress = record.lock();
            while !progress.truncated {
                let Some(next) = batch.last() else { break };
                let grow = next.kind == crate::chunk::ChunkKind::Answer;
                let answer_cost = if grow {
                    growth(&progress.answer_text, next.text.len())
                } else {
                    (0, progress.answer_text.capacity())
                };
                let cost = progress.chunks.cost(next) + answer_cost.0;
                if progress.bytes + cost > share {
                    progress.truncated = true;
                } else if store.reserve(cost) {
                    need = 0;
                    progress.bytes += cost;
                    if let Some(chunk) = batch.pop() {
                        if grow {
                            let room = answer_cost.1 - progress.answer_text.len();
                            progress.answer_text.reserve_exact(room);
                            progress.answer_text.push_str(&chunk.text);
                        }
                        progress.chunks.push(chunk);
                    }
                } else {
                    need = cost;
                    break;
                }
            }
            if progress.truncated || batch.is_empty() || pruned {
                progress.truncated |= !batch.is_empty();
                break;
            }
            // The total is spent: finished runs past their bounds may free some.
            drop(progress);
            store.prune_for(need);
            pruned = true;
        }
        batch.clear();
        if let Some(durable) = &store.durable {
            persist(durable, record, &mut persisted, &mut checkpoints).await;
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
        // An op's own answer wins; else the answer chunks the record kept.
        progress.answer = match outcome.answer {
            Value::String(text) if text.is_empty() => {
                Value::String(std::mem::take(&mut progress.answer_text))
            }
            answer => answer,
        };
        progress.error = outcome.error;
        progress.failed_ops = outcome.failed_ops;
        progress.finished = Some((SystemTime::now(), Instant::now()));
    }
    if let Some(durable) = &store.durable {
        persist(durable, record, &mut persisted, &mut checkpoints).await;
        let end = {
            let progress = record.lock();
            crate::store::End {
                status: progress.status.as_str(),
                answer: progress.answer.to_string(),
                error: progress.error.clone(),
                failed_ops: Value::Array(progress.failed_ops.clone()).to_string(),
                finished_ms: crate::store::now_ms(),
            }
        };
        let id = record.id.clone();
        if let Err(err) = durable.call(move |b| b.finish(&id, &end)).await {
            tracing::error!(run = record.id, "{err}");
        }
    }
    record.bump();
}

/// Writes the chunks the record kept since `persisted`, and the checkpoints taken, to the
/// durable store (readers are woken after it, so what they read is kept).
async fn persist(
    durable: &Durable,
    record: &Record,
    persisted: &mut usize,
    checkpoints: &mut Vec<crate::store::Kept>,
) {
    let (first, events, bytes, truncated) = {
        let progress = record.lock();
        let events: Vec<_> = progress
            .chunks
            .range(*persisted, usize::MAX)
            .map(event_of)
            .collect();
        (*persisted, events, progress.bytes, progress.truncated)
    };
    if events.is_empty() && checkpoints.is_empty() {
        return;
    }
    *persisted += events.len();
    let id = record.id.clone();
    let taken = std::mem::take(checkpoints);
    let result = durable
        .call(move |b| b.append(&id, first as u64, &events, &taken, bytes as u64, truncated))
        .await;
    if let Err(err) = result {
        tracing::error!(
            run = record.id,
            "{err}; the run goes on, but may not survive a restart"
        );
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
