//! Runs that outlive this process (`store.path`): reading a run another process keeps (a
//! restart, another host sharing the store), and the keeper: the task that renews this
//! process's leases, passes on cancels asked of its runs elsewhere, forgets runs past their
//! bounds, and resumes the runs whose owner died.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use serde_json::{json, Map, Value};

use super::drive::Restored;
use super::kept::{chunk_of, event_of, owner_is_dead, Durable};
use super::store::{rfc3339, Record};
use super::REPLAY_BATCH;
use crate::chunk::{Chunk, ChunkKind};
use crate::exec;
use crate::plan::OnCrash;
use crate::store::RunRow;
use crate::transport::http::state::AppState;

/// A run as found: one this process drives, or one only the store has.
pub(super) enum Found {
    Here(Arc<Record>),
    Kept(Box<RunRow>),
}

/// Looks in this process, then in the durable store.
pub(super) async fn find(state: &AppState, id: &str, subject: &str) -> Option<Found> {
    if let Some(record) = state.runs.get(id) {
        // Another subject's run is not there, for this caller.
        return (&*record.subject == subject).then_some(Found::Here(record));
    }
    let durable = state.runs.durable.as_ref()?;
    let owned = id.to_string();
    // Past its retention it is gone, whether or not the keeper has deleted it yet.
    let keep = state.runs.retention.keep.as_millis() as i64;
    let now = crate::store::now_ms();
    match durable.call(move |b| b.run(&owned)).await {
        Ok(row) => row
            .filter(|row| row.finished_ms.is_none_or(|at| now - at < keep))
            .filter(|row| subject_of(row) == subject)
            .map(|row| Found::Kept(Box::new(row))),
        Err(err) => {
            tracing::error!("{err}");
            None
        }
    }
}

/// A kept run as `GET /runs/{id}` shows it (the same fields as a run driven here).
pub(super) fn row_json(row: &RunRow) -> Value {
    let at = |ms: i64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    let mut value = json!({
        "run_id": row.id,
        "flow": row.flow,
        "status": row.status,
        "created_at": at(row.created_ms),
        "status_url": format!("/runs/{}", row.id),
        "events_url": format!("/runs/{}/events", row.id),
        "chunks": row.chunks,
    });
    if row.truncated {
        value["events_truncated"] = json!(true);
    }
    if row.resumes > 0 {
        value["resumes"] = json!(row.resumes);
    }
    if let Some(finished) = row.finished_ms {
        value["finished_at"] = json!(at(finished));
        value["answer"] = row
            .answer
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or(Value::Null);
        value["success"] = json!(row.status == "completed");
        let mut metadata = json!({"flow_id": row.id});
        if let Some(error) = &row.error {
            metadata["error"] = json!(error);
        }
        let failed: Option<Value> = row
            .failed_ops
            .as_deref()
            .and_then(|f| serde_json::from_str(f).ok());
        if let Some(Value::Array(failed)) =
            failed.filter(|f| f.as_array().is_some_and(|a| !a.is_empty()))
        {
            metadata["failed_ops"] = Value::Array(failed);
        }
        value["metadata"] = metadata;
    }
    value
}

/// How often a kept run another process drives is read again for new events.
const POLL: Duration = Duration::from_millis(100);
/// How often the keeper looks for cancels asked of this host's runs elsewhere (a `DELETE` on
/// another replica stops the op here within about this).
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// The events of a run only the store has, from `from` on, followed while its owner runs it:
/// each write is one batch of SSE events with their `id:`, then `data:[DONE]`.
pub(super) fn kept_events(
    state: &AppState,
    row: RunRow,
    from: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let durable = state.runs.durable.as_ref().map(|d| d.backend.clone());
    let hard_stop = state.hard_stop.clone();
    futures_util::stream::unfold((row, from, false), move |(mut row, sent, done)| {
        let durable = durable.clone();
        let hard_stop = hard_stop.clone();
        async move {
            if done {
                return None;
            }
            let backend = durable?;
            loop {
                let id = row.id.clone();
                let read = crate::store::call(&backend, move |b| {
                    let events = b.events(&id, sent as u64, REPLAY_BATCH)?;
                    let row = if events.is_empty() { b.run(&id)? } else { None };
                    Ok((events, row))
                })
                .await;
                let (events, fresh) = match read {
                    Ok(read) => read,
                    Err(err) => {
                        tracing::error!("{err}");
                        return None;
                    }
                };
                if !events.is_empty() {
                    let mut text = String::new();
                    let mut now_sent = sent;
                    for event in events {
                        // Numbered by their place in the store (the id a reader resumes from).
                        let seq = event.seq as usize;
                        super::write_event(&mut text, &row.id, seq, &chunk_of(event));
                        now_sent = seq + 1;
                    }
                    return Some((Ok(Bytes::from(text)), (row, now_sent, false)));
                }
                match fresh {
                    None => return None,
                    Some(fresh) => row = fresh,
                }
                if row.status != "running" && sent as u64 >= row.chunks {
                    return Some((
                        Ok(Bytes::from_static(b"data:[DONE]\n\n")),
                        (row, sent, true),
                    ));
                }
                // Until the next event is kept (Redis tells; SQLite is read again).
                let id = row.id.clone();
                let wait = crate::store::call(&backend, move |b| {
                    b.wait(&id, sent as u64, Duration::from_millis(500))
                });
                tokio::select! {
                    waited = wait => {
                        if let Err(err) = waited {
                            tracing::warn!("{err}");
                            tokio::time::sleep(POLL).await;
                        }
                    }
                    _ = hard_stop.cancelled() => return None,
                }
            }
        }
    })
}

/// Starts the keeper of this process's durable runs (nothing without a durable store).
pub(crate) fn start_keeper(state: &AppState) {
    if state.runs.durable.is_none() {
        return;
    }
    if let Some(durable) = &state.runs.durable {
        tracing::info!(
            "async runs are kept in the {} (store.path); they outlive this process",
            durable.backend.describe()
        );
    }
    let state = state.clone();
    tokio::spawn(async move {
        let Some(durable) = state.runs.durable.as_ref() else {
            return;
        };
        let renew_every = durable.settings.lease / 3;
        let mut last_renew = tokio::time::Instant::now();
        let mut last_scan: Option<tokio::time::Instant> = None;
        let mut undriven = std::collections::HashSet::new();
        loop {
            // One round at a time, and none once the process is stopping (its leases are
            // given up: renewing or taking runs now would keep them).
            let round = state.runs.keeper.lock().await;
            if state.runs.stopping() {
                return;
            }
            // Cancels asked elsewhere of runs driven here.
            let owner = durable.owner.clone();
            match durable.call(move |b| b.cancelled(&owner)).await {
                Ok(ids) => {
                    for id in ids {
                        if let Some(record) = state.runs.get(&id) {
                            super::cancel_here(&record);
                        }
                    }
                }
                Err(err) => tracing::warn!("{err}"),
            }
            if last_renew.elapsed() >= renew_every {
                last_renew = tokio::time::Instant::now();
                let (owner, until) = (durable.owner.clone(), durable.lease_until());
                let ids = state.runs.driven();
                if let Err(err) = durable.call(move |b| b.renew(&owner, &ids, until)).await {
                    tracing::warn!("{err}");
                }
            }
            if last_scan.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                last_scan = Some(tokio::time::Instant::now());
                durable.prune(state.runs.retention.bounds()).await;
                resume_orphans(&state, durable, &mut undriven).await;
            }
            drop(round);
            tokio::time::sleep(CANCEL_POLL).await;
        }
    });
}

/// Takes over and resumes the runs whose owner died or whose lease ran out, for the flows
/// this host serves; and this host's own runs that nothing here drives (a start that never got
/// going, a resume that failed half-way), once seen twice in a row (`undriven`).
async fn resume_orphans(
    state: &AppState,
    durable: &Durable,
    undriven: &mut std::collections::HashSet<String>,
) {
    let rows = match durable.call(|b| b.running()).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!("{err}");
            return;
        }
    };
    let now = crate::store::now_ms();
    let mut still = std::collections::HashSet::new();
    for row in rows {
        if state.runs.stopping() {
            return;
        }
        if row.owner == durable.owner {
            if state.runs.drives(&row.id) || !undriven.contains(&row.id) {
                if !state.runs.drives(&row.id) {
                    still.insert(row.id.clone());
                }
                continue;
            }
        } else if row.lease_until_ms > now && !owner_is_dead(&row.owner) {
            continue;
        }
        let Some(flow) = state
            .catalog
            .snapshot()
            .get(&row.flow)
            .and_then(|entry| entry.flow.clone())
        else {
            continue; // Not a flow served here: a host that serves it takes it.
        };
        let Some(running) = state.runs.try_running() else {
            return; // Full: the next scan tries again.
        };
        let (id, from, lease, owner, until) = (
            row.id.clone(),
            row.owner.clone(),
            row.lease_until_ms,
            durable.owner.clone(),
            durable.lease_until(),
        );
        match durable
            .call(move |b| b.claim(&id, &from, lease, &owner, until))
            .await
        {
            Ok(true) => {}
            Ok(false) => continue, // Another host took it first, or its owner renewed.
            Err(err) => {
                tracing::warn!("{err}");
                continue;
            }
        }
        let id = row.id.clone();
        if let Err(err) = resume(state, durable, row, flow, running).await {
            // Claimed but not driven: let it go at once, for the next scan (here or elsewhere).
            tracing::error!(run = id, "{err}; the run is left for another try");
            let owner = durable.owner.clone();
            let _ = durable.call(move |b| b.release(&owner, Some(&id))).await;
        }
    }
    *undriven = still;
}

/// Resumes one run this host just claimed: restores its kept chunks and completed calls, and
/// drives it on from the op that was running (or ends it: a cancel asked while its host was
/// gone, `on_crash: fail`, `store.max_resumes`).
async fn resume(
    state: &AppState,
    durable: &Durable,
    row: RunRow,
    flow: Arc<exec::Flow>,
    running: super::store::Running,
) -> Result<(), String> {
    let id = row.id.clone();
    let (events, checkpoints) = durable
        .call(move |b| Ok((b.events(&id, 0, usize::MAX)?, b.checkpoints(&id)?)))
        .await?;
    // The log by place: a place the store lost (it should not) keeps its number.
    let mut kept: Vec<Chunk> = Vec::with_capacity(events.len());
    for event in events {
        while (kept.len() as u64) < event.seq {
            kept.push(Chunk::text(
                ChunkKind::Think,
                "flowhost",
                "(an event the store lost)",
            ));
        }
        kept.push(chunk_of(event));
    }
    let checkpoints: Vec<(u64, exec::Checkpoint)> = checkpoints
        .into_iter()
        .filter_map(|(seq, text)| Some((seq, exec::Checkpoint::parse(&text)?)))
        .collect();
    let cut = (checkpoints.iter().map(|(seq, _)| *seq).max().unwrap_or(0) as usize).min(kept.len());
    let answer = completed_answer(&kept, checkpoints.iter().map(|(seq, _)| *seq as usize));
    let journal = exec::Journal::new(checkpoints.into_iter().map(|(_, c)| c));
    let next = journal.next_op(&flow).unwrap_or_else(|| "the flow".into());
    let input: Map<String, Value> = serde_json::from_str(&row.input).unwrap_or_default();
    let ending = if row.cancel_requested {
        Some((
            "cancelled",
            "cancelled while the host running it was gone".to_string(),
        ))
    } else {
        match flow.spec.on_crash {
            OnCrash::Fail => Some(("failed", "interrupted: host stopped (the flow says on_crash: fail)".to_string())),
            OnCrash::Resume if row.resumes >= durable.settings.max_resumes => Some(("failed", format!(
                "interrupted: host stopped, and the run was resumed {} times already (store.max_resumes)",
                row.resumes
            ))),
            OnCrash::Resume => None,
        }
    };
    if let Some((status, message)) = ending {
        // Ends it as it stands: the error, then the ending, in the store.
        let error = Chunk::error(crate::chunk::op_named(&next), message.clone());
        let event = event_of(&error);
        let end = crate::store::End {
            status,
            answer: Value::String(answer).to_string(),
            error: Some(message.clone()),
            failed_ops: "[]".into(),
            finished_ms: crate::store::now_ms(),
        };
        let (id, owner, seq, bytes, truncated) = (
            row.id.clone(),
            durable.owner.clone(),
            kept.len() as u64,
            row.bytes,
            row.truncated,
        );
        durable
            .call(move |b| {
                b.append(&id, &owner, seq, &[event], &[], bytes, truncated)?;
                b.finish(&id, &owner, &end)
            })
            .await?;
        tracing::warn!(run = row.id, flow = row.flow, "{message}");
        drop(running);
        return Ok(());
    }
    tracing::info!(
        run = row.id,
        flow = row.flow,
        "resuming a run whose host stopped (from {next}; {} chunks kept, {cut} before the op that was running)",
        kept.len()
    );
    metrics::counter!(crate::metrics::RUNS_RESUMED).increment(1);
    let stored = kept.len();
    kept.push(Chunk {
        resumed: true,
        ..Chunk::text(
            ChunkKind::Think,
            crate::chunk::op_named(&next),
            format!(
                "resumed: the host running this run stopped; it goes on from {next}, whose output after event {cut} is replaced by what follows"
            ),
        )
    });
    let options = exec::Options {
        collect_answer: false,
        max_output_bytes: Some(exec::DEFAULT_MAX_ANSWER_BYTES),
        journal: Some(Arc::new(journal)),
        // The request that started it was another process's: a new trace.
        trace: crate::telemetry::Cx::root(),
        ..state.run_options.clone()
    };
    let created = SystemTime::UNIX_EPOCH + Duration::from_millis(row.created_ms.max(0) as u64);
    let mut run = exec::start(flow, input, &options);
    run.flow_id = row.id.clone();
    let restored = Restored {
        created,
        kept,
        stored,
        answer,
        resumes: row.resumes + 1,
        subject: subject_of(&row).into(),
    };
    state
        .runs
        .adopt(&row.flow, run, None, running, restored, None);
    Ok(())
}

/// The answer text of the calls that completed: answer chunks count once the checkpoint after
/// them is kept; what an interrupted call emitted (before a `resumed` marker, or at the end of
/// the log) does not, since that call runs again.
fn completed_answer(kept: &[Chunk], checkpoints: impl Iterator<Item = usize>) -> String {
    let marks: std::collections::BTreeSet<usize> = checkpoints.collect();
    let (mut done, mut pending) = (String::new(), String::new());
    for (seq, chunk) in kept.iter().enumerate() {
        if marks.contains(&seq) {
            done.push_str(&std::mem::take(&mut pending));
        }
        if chunk.resumed {
            pending.clear();
        } else if chunk.kind == ChunkKind::Answer {
            pending.push_str(&chunk.text);
        }
    }
    if marks.contains(&kept.len()) {
        done.push_str(&pending);
    }
    done
}

/// Who started a kept run (runs kept before runs had subjects: `anonymous`, the subject of
/// a host without auth).
pub(super) fn subject_of(row: &crate::store::RunRow) -> &str {
    if row.subject.is_empty() {
        "anonymous"
    } else {
        &row.subject
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_calls_output_is_not_in_the_answer_after_one_resume_or_two() {
        let answer = |text: &str| Chunk::text(ChunkKind::Answer, "T", text);
        let marker = Chunk {
            resumed: true,
            ..Chunk::text(ChunkKind::Think, "T", "resumed")
        };
        // a (done at 1) | b partial | marker | b again (done at 5) | c partial | marker | c
        let kept = vec![
            answer("a"),
            answer("b1"),
            marker.clone(),
            answer("b1"),
            answer("b2"),
            answer("c1"),
            marker,
            answer("c1"),
        ];
        assert_eq!(completed_answer(&kept[..2], [1].into_iter()), "a");
        assert_eq!(completed_answer(&kept, [1, 5].into_iter()), "ab1b2");
        assert_eq!(completed_answer(&kept, [1, 5, 8].into_iter()), "ab1b2c1");
    }
}
