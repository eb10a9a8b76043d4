//! Driving a run this process keeps: starting it (or adopting one resumed from the durable
//! store), reading it to its end into its record within `runs.max_bytes`, and writing each
//! batch, its checkpoints and its end to the durable store when there is one (fenced: a host
//! that lost the run stops).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde_json::Value;

use super::kept::{event_of, Durable};
use super::store::{allocation, Log, Progress, Record, Running, Status, Store};
use crate::chunk::Chunk;
use crate::exec::Run;

/// What a run brings along when this process takes it over.
pub(super) struct Restored {
    pub(super) created: SystemTime,
    /// Its chunks so far.
    pub(super) kept: Vec<Chunk>,
    /// How many of `kept` the durable store has (the rest are new: a resumed run's marker).
    pub(super) stored: usize,
    /// The answer so far: the answer text of the calls that completed (not of the ones a
    /// crash interrupted, which run again).
    pub(super) answer: String,
    pub(super) resumes: u32,
    /// Who started it (only they may read or cancel it).
    pub(super) subject: std::sync::Arc<str>,
}

impl Store {
    /// Starts keeping `run`, driven to its end by a task of its own.
    pub(super) fn start(
        self: &Arc<Self>,
        flow: &str,
        run: Run,
        key: Option<(String, u64)>,
        running: Running,
        (subject, call): (Arc<str>, crate::auth::Call),
    ) -> Arc<Record> {
        let fresh = Restored {
            subject,
            created: SystemTime::now(),
            kept: Vec::new(),
            stored: 0,
            answer: String::new(),
            resumes: 0,
        };
        self.adopt(flow, run, key, running, fresh, Some(call))
    }

    /// [`Store::start`] for a run that may have kept chunks before (a resumed one).
    pub(super) fn adopt(
        self: &Arc<Self>,
        flow: &str,
        run: Run,
        key: Option<(String, u64)>,
        running: Running,
        restored: Restored,
        call: Option<crate::auth::Call>,
    ) -> Arc<Record> {
        let Restored {
            subject,
            created,
            kept,
            stored,
            answer,
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
        progress.answer_text = answer;
        for chunk in kept {
            let cost = progress.chunks.cost(&chunk);
            if self.reserve(cost) {
                progress.bytes += cost;
            }
            progress.chunks.push(chunk);
        }
        let record = Arc::new(Record {
            id: run.flow_id.clone(),
            flow: flow.to_string(),
            subject,
            created,
            cancel: run.cancel_token(),
            cancel_requested: std::sync::atomic::AtomicBool::new(false),
            progress: Mutex::new(progress),
            changed,
            resumes,
            visible: AtomicUsize::new(if self.durable.is_some() {
                stored
            } else {
                usize::MAX
            }),
            driving: std::sync::atomic::AtomicBool::new(true),
            let_go: std::sync::atomic::AtomicBool::new(false),
        });
        {
            let mut inner = self.lock();
            if let Some(old) = inner.runs.insert(record.id.clone(), record.clone()) {
                self.release_bytes(old.lock().bytes);
            }
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
            drive(run, &driven, &store, stored).await;
            drop(running);
            // The audit line of the call that started it, with how it ended.
            if let Some(mut call) = call {
                let progress = driven.lock();
                call.add_chunks(progress.chunks.len());
                call.end(match progress.status {
                    Status::Completed => crate::auth::Outcome::Ok,
                    Status::Cancelled => crate::auth::Outcome::Cancelled,
                    _ => crate::auth::Outcome::Error,
                });
            }
        });
        record
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

/// Reads a run to its end into its record, keeping chunks while its share and the total of
/// `runs.max_bytes` allow.
/// With a durable store, `persisted` chunks of the record are in it already.
pub(super) async fn drive(mut run: Run, record: &Record, store: &Store, persisted: usize) {
    let share = (store.retention.max_bytes / 4).max(1);
    let mut batch = Vec::new();
    // Chunks written to the durable store so far; checkpoints waiting to be.
    let mut persisted = persisted;
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
            if !keep_going(
                persist(durable, record, &mut persisted, &mut checkpoints).await,
                record,
                store,
            ) {
                return; // Dropping the run cancels its ops.
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
        // The end is stored before the run counts as ended here; tried again (a store may be
        // busy for a while), given up when another host took the run over or this process stops.
        let mut tries = 0u32;
        loop {
            if store.stopping() {
                return;
            }
            let written = match persist(durable, record, &mut persisted, &mut checkpoints).await {
                Persisted::Lost => Err(true),
                Persisted::Failed => Err(false),
                Persisted::Done => {
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
                    let (id, owner) = (record.id.clone(), durable.owner.clone());
                    match durable.call(move |b| b.finish(&id, &owner, &end)).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(true),
                        Err(err) => {
                            tracing::error!(run = record.id, "{err}");
                            Err(false)
                        }
                    }
                }
            };
            match written {
                Ok(()) => break,
                Err(true) => {
                    let_go(record, store, "another host took this run over");
                    return;
                }
                Err(false) if tries >= 5 => {
                    let_go(
                        record,
                        store,
                        "the run store keeps failing to record its end",
                    );
                    return;
                }
                Err(false) => {
                    tries += 1;
                    let wait = std::time::Duration::from_millis(200 << tries.min(4));
                    tokio::time::sleep(wait).await;
                }
            }
        }
        record.visible.store(usize::MAX, Ordering::Relaxed);
    }
    record.driving.store(false, Ordering::Relaxed);
    record.bump();
}

/// This process stops driving `record` (`why`): its ops are cancelled, it is forgotten here,
/// and readers here end without `[DONE]` (they read it again, from the store, with
/// `Last-Event-ID`).
fn let_go(record: &Record, store: &Store, why: &str) {
    tracing::warn!(run = record.id, "{why}: it stops here");
    record.cancel.cancel();
    store.forget(&record.id);
    record.let_go.store(true, Ordering::Relaxed);
    record.driving.store(false, Ordering::Relaxed);
    record.bump();
}

/// What writing a batch to the durable store came to.
enum Persisted {
    Done,
    /// Another host took the run over.
    Lost,
    /// The store failed; the batch is written with the next one.
    Failed,
}

/// Whether the driver goes on after `persisted`: not when another host took the run over or
/// when this process is stopping.
fn keep_going(persisted: Persisted, record: &Record, store: &Store) -> bool {
    if store.stopping() {
        return false;
    }
    match persisted {
        Persisted::Done | Persisted::Failed => true,
        Persisted::Lost => {
            let_go(
                record,
                store,
                "another host took this run over (this host's lease ran out)",
            );
            false
        }
    }
}

/// Writes the chunks the record kept since `persisted`, and the checkpoints taken, to the
/// durable store; then readers may see them (`Record::visible`).
async fn persist(
    durable: &Durable,
    record: &Record,
    persisted: &mut usize,
    checkpoints: &mut Vec<crate::store::Kept>,
) -> Persisted {
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
        return Persisted::Done;
    }
    let count = events.len();
    let (id, owner) = (record.id.clone(), durable.owner.clone());
    let taken = checkpoints.clone();
    let result = durable
        .call(move |b| {
            b.append(
                &id,
                &owner,
                first as u64,
                &events,
                &taken,
                bytes as u64,
                truncated,
            )
        })
        .await;
    match result {
        Ok(true) => {
            *persisted += count;
            checkpoints.clear();
            record.visible.store(*persisted, Ordering::Relaxed);
            Persisted::Done
        }
        Ok(false) => Persisted::Lost,
        Err(err) => {
            tracing::error!(run = record.id, "{err}; tried again with the next batch");
            Persisted::Failed
        }
    }
}
