//! Async runs over HTTP: `POST /{flow}` with `Prefer: respond-async` answers 202 at once and
//! the run goes on without the connection; `GET /runs/{id}` polls it, `GET /runs/{id}/events`
//! replays its chunks from the start and follows it live, `DELETE /runs/{id}` cancels it.
//! Runs live in this process's memory, bounded in count and bytes and kept `runs.retention`
//! after they end; an `Idempotency-Key` header returns the run already started with that key.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::state::AppState;
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

/// Whether a request asked to run in the background (RFC 7240 `Prefer: respond-async`).
pub(crate) fn wants_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

struct Progress {
    status: Status,
    chunks: Vec<Chunk>,
    bytes: usize,
    /// Chunks past the run's share of `max_bytes` were not kept.
    truncated: bool,
    answer: Value,
    error: Option<String>,
    failed_ops: Vec<Value>,
    finished: Option<(SystemTime, Instant)>,
}

/// One async run.
struct Record {
    id: String,
    flow: String,
    created: SystemTime,
    cancel: CancellationToken,
    cancel_requested: std::sync::atomic::AtomicBool,
    progress: Mutex<Progress>,
    /// Bumped on every change; event streams wait on it.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Record {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn to_json(&self) -> Value {
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

fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The runs of this process.
#[derive(Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
    retention: Retention,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, Arc<Record>>,
    /// Ids in the order they started (oldest first), for eviction.
    order: VecDeque<String>,
    /// (flow, Idempotency-Key) → run id.
    keys: HashMap<(String, String), String>,
}

impl Store {
    pub(crate) fn new(retention: Retention) -> Store {
        Store {
            inner: Mutex::default(),
            retention,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Option<Arc<Record>> {
        self.prune();
        self.lock().runs.get(id).cloned()
    }

    /// Drops runs past their retention, then the oldest finished ones while over the bounds.
    fn prune(&self) {
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
    fn start(self: &Arc<Self>, flow: &str, run: Run, key: Option<String>) -> Arc<Record> {
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
async fn drive(mut run: Run, record: &Record, share: usize) {
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

/// `POST /{flow}` with `Prefer: respond-async`: 202, `Location: /runs/{id}`.
pub(crate) fn accept(state: &AppState, flow: &str, run: Run, headers: &HeaderMap) -> Response {
    let key = idempotency_key(headers);
    let record = state.runs.start(flow, run, key);
    accepted(&record, false)
}

/// The run already started under this request's `Idempotency-Key`, if any.
pub(crate) fn existing(state: &AppState, flow: &str, headers: &HeaderMap) -> Option<Response> {
    let key = idempotency_key(headers)?;
    state.runs.prune();
    let id = state
        .runs
        .lock()
        .keys
        .get(&(flow.to_string(), key))
        .cloned()?;
    let record = state.runs.get(&id)?;
    Some(accepted(&record, true))
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_string)
}

fn accepted(record: &Record, replayed: bool) -> Response {
    let location = format!("/runs/{}", record.id);
    let mut response = (StatusCode::ACCEPTED, axum::Json(record.to_json())).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no run `{id}`: it never started here, or it ended more than runs.retention ago (runs live in the memory of the replica that started them)"),
    )
}

/// `GET /runs/{id}`.
pub(crate) async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.runs.get(&id) {
        Some(record) => axum::Json(record.to_json()).into_response(),
        None => not_found(&id).into_response(),
    }
}

/// `DELETE /runs/{id}`: cancels a running run (its ops see it at their next emit); a run that
/// already ended is left as it is.
pub(crate) async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(record) = state.runs.get(&id) else {
        return not_found(&id).into_response();
    };
    if record.lock().finished.is_none() {
        record
            .cancel_requested
            .store(true, std::sync::atomic::Ordering::Relaxed);
        record.cancel.cancel();
    }
    // Give the driver a moment to record the end, so the answer usually says `cancelled`.
    let mut changed = record.changed.subscribe();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while record.lock().finished.is_none() {
            if changed.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    axum::Json(record.to_json()).into_response()
}

/// `GET /runs/{id}/events`: every chunk from the start as FlowLLM's SSE events, then live
/// ones until the run ends, then `data:[DONE]`.
pub(crate) async fn events(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(record) = state.runs.get(&id) else {
        return not_found(&id).into_response();
    };
    let changed = record.changed.subscribe();
    let hard_stop = state.hard_stop.clone();
    let stream = futures_util::stream::unfold(
        (record, changed, 0usize, false),
        move |(record, mut changed, sent, done)| {
            let hard_stop = hard_stop.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let (text, now_sent, ended) = {
                        let progress = record.lock();
                        let mut text = String::new();
                        for chunk in &progress.chunks[sent.min(progress.chunks.len())..] {
                            text.push_str("data:");
                            chunk.write_json(&record.id, &mut text);
                            text.push_str("\n\n");
                        }
                        let ended = progress.finished.is_some();
                        if ended {
                            text.push_str("data:[DONE]\n\n");
                        }
                        (text, progress.chunks.len(), ended)
                    };
                    if !text.is_empty() {
                        let bytes = Bytes::from(text);
                        return Some((
                            Ok::<_, std::convert::Infallible>(bytes),
                            (record, changed, now_sent, ended),
                        ));
                    }
                    tokio::select! {
                        result = changed.changed() => if result.is_err() { return None; },
                        _ = hard_stop.cancelled() => return None,
                    }
                }
            }
        },
    );
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_respond_async_is_read_as_rfc_7240_writes_it() {
        let mut headers = HeaderMap::new();
        assert!(!wants_async(&headers));
        headers.insert("prefer", HeaderValue::from_static("wait=10, respond-async"));
        assert!(wants_async(&headers));
        headers.insert("prefer", HeaderValue::from_static("Respond-Async"));
        assert!(wants_async(&headers));
        headers.insert("prefer", HeaderValue::from_static("return=minimal"));
        assert!(!wants_async(&headers));
    }

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_350_000);
        assert_eq!(rfc3339(at), "2026-11-22T12:20:00Z");
    }
}
