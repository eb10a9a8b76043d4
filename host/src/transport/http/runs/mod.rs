//! Async runs over HTTP: `POST /{flow}` with `Prefer: respond-async` answers 202 at once and
//! the run goes on without the connection; `GET /runs/{id}` polls it, `GET /runs/{id}/events`
//! replays its chunks from the start and follows it live, `DELETE /runs/{id}` cancels it.
//! Runs are bounded in count and bytes and kept `runs.retention` after they end; an
//! `Idempotency-Key` header returns the run already started with that key. With a durable
//! store (`store.path`, the default) they outlive the process: any host sharing the store
//! answers for them, and a run whose host died is resumed (`durable.rs`).
//!
//! `store.rs` keeps the runs this process drives; `durable.rs` reads the ones only the store
//! has and keeps the leases; `drive.rs` starts and drives a run (and writes it to the
//! durable store); `kept.rs` is what both know of the durable store; this file is the HTTP side: the `Prefer` header, 202 with
//! `Location`, and the `/runs/{id}` routes.

mod drive;
mod durable;
pub(super) mod kept;
pub(super) mod store;

pub(crate) use self::durable::start_keeper;
use self::durable::Found;
pub(crate) use self::kept::Durable;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use self::store::Record;
pub(crate) use self::store::Retention;
use super::error::ApiError;
use super::guard::Who;
use super::state::AppState;
use crate::auth::Caller;
use crate::exec::Run;

/// Whether a request asked to run in the background (RFC 7240 `Prefer: respond-async`).
pub(crate) fn wants_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// An async run's input as kept (JSON text) and its hash (what an `Idempotency-Key` is
/// checked against).
pub(crate) fn fingerprint(input: &serde_json::Map<String, serde_json::Value>) -> (String, u64) {
    let text = serde_json::to_string(input).unwrap_or_default();
    let hash = crate::util::stable_hash(text.as_bytes());
    (text, hash)
}

/// `POST /{flow}` with `Prefer: respond-async`: 202, `Location: /runs/{id}`. `input_json` is
/// the run's input (kept, to resume it from) and `input` its hash.
pub(crate) async fn accept(
    state: &AppState,
    caller: &Caller,
    flow: &str,
    run: Run,
    headers: &HeaderMap,
    (input_json, input): (String, u64),
    (running, call): (store::Running, crate::auth::Call),
) -> Response {
    let key = idempotency_key(caller, headers).map(|key| (key, input));
    let subject = caller.owner.clone();
    let Some(durable) = &state.runs.durable else {
        let record = state.runs.start(flow, run, key, running, (subject, call));
        return accepted(&record.to_json(), &record.id, false);
    };
    let new = crate::store::NewRun {
        id: run.flow_id.clone(),
        flow: flow.to_string(),
        input: input_json,
        created_ms: crate::store::now_ms(),
        key: key.clone(),
        owner: durable.owner.clone(),
        lease_until_ms: durable.lease_until(),
        subject: subject.to_string(),
    };
    // Kept and started in a task of its own: a client that goes away while the row is being
    // written must not leave a kept run that nothing drives.
    let (runs, flow_name, bounds) = (
        state.runs.clone(),
        flow.to_string(),
        state.runs.retention.bounds(),
    );
    let backend = durable.backend.clone();
    let started = tokio::spawn(async move {
        let created = crate::store::call(&backend, move |b| b.create(&new, bounds)).await;
        match created {
            Ok(crate::store::Created::New) => Ok(Ok(runs.start(
                &flow_name,
                run,
                key,
                running,
                (subject, call),
            ))),
            // Another request (here or on another host) took the key first; this run goes
            // (dropping it cancels it).
            Ok(crate::store::Created::Existing { id, input: first }) => Ok(Err((id, first, call))),
            Err(err) => {
                call.end(crate::auth::Outcome::Error);
                Err(err)
            }
        }
    })
    .await
    .unwrap_or_else(|err| Err(format!("starting the run failed: {err}")));
    match started {
        Ok(Ok(record)) => accepted(&record.to_json(), &record.id, false),
        Ok(Err((id, first, mut call))) => {
            // This call is answered with the run its key started.
            call.run_id(&id);
            let answer = replay(state, caller, headers, &id, first != input).await;
            call.end(if answer.status().is_success() {
                crate::auth::Outcome::Ok
            } else {
                crate::auth::Outcome::Error
            });
            answer
        }
        Err(err) => {
            tracing::error!("{err}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot keep the run: {err}; retry shortly"),
            )
            .into_response()
        }
    }
}

/// The answer to a request whose `Idempotency-Key` names run `id`: that run (replayed), or
/// 422 when the key came with another body.
async fn replay(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    id: &str,
    differs: bool,
) -> Response {
    let key = given_key(headers).unwrap_or_default();
    if differs {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Idempotency-Key `{key}` was used for run {id} with a different body; send the same body to get that run, or a new key for a new run"),
        )
        .into_response();
    }
    match durable::find(state, id, &caller.owner).await {
        Some(Found::Here(record)) => accepted(&record.to_json(), &record.id, true),
        Some(Found::Kept(row)) => accepted(&durable::row_json(&row), &row.id, true),
        None => not_found(id).into_response(),
    }
}

/// A place among `runs.max_running` for an async run about to start, or 503 + Retry-After.
pub(crate) fn place(state: &AppState) -> Result<store::Running, Box<Response>> {
    state.runs.try_running().ok_or_else(|| {
        metrics::counter!(crate::metrics::RUNS_REJECTED, "flow" => "(async)").increment(1);
        let max = state.options.runs.max_running;
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{max} async runs are running, the most this host runs at once (runs.max_running); retry shortly, or raise it"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Box::new(response)
    })
}

/// The run already started under this request's `Idempotency-Key`, if any; 422 when the key
/// was used with another input (`input` is a hash of this request's), as payment APIs answer.
pub(crate) async fn existing(
    state: &AppState,
    caller: &Caller,
    flow: &str,
    headers: &HeaderMap,
    input: u64,
) -> Option<Response> {
    let key = idempotency_key(caller, headers)?;
    state.runs.prune();
    let here = state
        .runs
        .lock()
        .keys
        .get(&(flow.to_string(), key.clone()))
        .cloned();
    let (id, first) = match (here, &state.runs.durable) {
        (Some(found), _) => found,
        (None, Some(durable)) => {
            let flow = flow.to_string();
            match durable.call(move |b| b.key(&flow, &key)).await {
                Ok(found) => found?,
                Err(err) => {
                    tracing::error!("{err}");
                    return None;
                }
            }
        }
        (None, None) => return None,
    };
    Some(replay(state, caller, headers, &id, first != input).await)
}

/// The request's `Idempotency-Key`, as sent.
fn given_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_string)
}

/// The key as kept: per caller (two callers' equal keys name two runs); as sent for the
/// anonymous caller of a host without auth (as kept before callers had owners).
fn idempotency_key(caller: &Caller, headers: &HeaderMap) -> Option<String> {
    given_key(headers).map(|key| match &*caller.owner {
        "anonymous" => key,
        owner => format!("{owner}\u{1f}{key}"),
    })
}

fn accepted(body: &serde_json::Value, id: &str, replayed: bool) -> Response {
    let location = format!("/runs/{id}");
    let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
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
        format!("no run `{id}`: it never started, or it ended more than runs.retention ago (with store.path=:memory:, runs live only in the memory of the host that started them)"),
    )
}

/// `GET /runs/{id}`.
pub(crate) async fn status(
    State(state): State<AppState>,
    axum::Extension(caller): Who,
    Path(id): Path<String>,
) -> Response {
    match durable::find(&state, &id, &caller.owner).await {
        Some(Found::Here(record)) => axum::Json(record.to_json()).into_response(),
        Some(Found::Kept(row)) => axum::Json(durable::row_json(&row)).into_response(),
        None => not_found(&id).into_response(),
    }
}

/// Cancels a run this process drives (its ops see it at their next emit).
fn cancel_here(record: &Record) {
    if record.lock().finished.is_none()
        && !record
            .cancel_requested
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        metrics::counter!(crate::metrics::CANCELLATIONS).increment(1);
        record.cancel.cancel();
    }
}

/// `DELETE /runs/{id}`: cancels a running run (its ops see it at their next emit); a run that
/// already ended is left as it is.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    axum::Extension(caller): Who,
    Path(id): Path<String>,
) -> Response {
    let record = match durable::find(&state, &id, &caller.owner).await {
        Some(Found::Here(record)) => record,
        Some(Found::Kept(row)) => return cancel_elsewhere(&state, *row).await,
        None => return not_found(&id).into_response(),
    };
    cancel_here(&record);
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

/// `DELETE /runs/{id}` of a run another process drives: the cancel is left in the store for
/// its owner (whose keeper reads it within 50 ms); the answer waits up to 2 s for the end.
async fn cancel_elsewhere(state: &AppState, row: crate::store::RunRow) -> Response {
    let Some(durable) = &state.runs.durable else {
        return not_found(&row.id).into_response();
    };
    let mut row = row;
    if row.status == "running" {
        let id = row.id.clone();
        if let Err(err) = durable.call(move |b| b.cancel(&id)).await {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err).into_response();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while row.status == "running" && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let id = row.id.clone();
            match durable.call(move |b| b.run(&id)).await {
                Ok(Some(fresh)) => row = fresh,
                _ => break,
            }
        }
    }
    axum::Json(durable::row_json(&row)).into_response()
}

/// Appends one chunk as an SSE event with its id (its place in the run's log). The id comes
/// after the data (SSE fields are read in any order): a reader that takes each event's first
/// line as its `data:` (FlowLLM's examples do) still does.
fn write_event(out: &mut String, run_id: &str, seq: usize, chunk: &crate::chunk::Chunk) {
    use std::fmt::Write as _;
    out.push_str("data:");
    chunk.write_json(run_id, out);
    let _ = write!(out, "\nid:{seq}\n\n");
}

/// Where a reconnecting client left off: the event after its `Last-Event-ID`.
fn resume_from(headers: &HeaderMap) -> usize {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(0, |last| last.saturating_add(1))
}

/// Chunks and bytes of one replay write.
const REPLAY_BATCH: usize = 256;
const REPLAY_BYTES: usize = 64 * 1024;

/// `GET /runs/{id}/events`: every chunk from the start (or after `Last-Event-ID`) as
/// FlowLLM's SSE events, each with its `id:`, then live ones until the run ends, then
/// `data:[DONE]`.
pub(crate) async fn events(
    State(state): State<AppState>,
    axum::Extension(caller): Who,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let from = resume_from(&headers);
    let record = match durable::find(&state, &id, &caller.owner).await {
        Some(Found::Here(record)) => record,
        Some(Found::Kept(row)) => {
            return event_stream(Body::from_stream(durable::kept_events(&state, *row, from)))
        }
        None => return not_found(&id).into_response(),
    };
    let changed = record.changed.subscribe();
    let hard_stop = state.hard_stop.clone();
    let stream = futures_util::stream::unfold(
        (record, changed, from, false),
        move |(record, mut changed, sent, done)| {
            let hard_stop = hard_stop.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    // At most a batch per write: a reader that does not read holds one batch,
                    // not a copy of the whole log.
                    let (text, now_sent, ended) = {
                        let progress = record.lock();
                        let mut text = String::new();
                        let mut now_sent = sent;
                        // What the durable store has, when there is one.
                        let visible = progress
                            .chunks
                            .len()
                            .min(record.visible.load(std::sync::atomic::Ordering::Relaxed));
                        let batch = REPLAY_BATCH.min(visible.saturating_sub(sent));
                        for chunk in progress.chunks.range(sent, batch) {
                            write_event(&mut text, &record.id, now_sent, chunk);
                            now_sent += 1;
                            if text.len() >= REPLAY_BYTES {
                                break;
                            }
                        }
                        let ended = progress.finished.is_some()
                            && now_sent >= progress.chunks.len()
                            && visible >= progress.chunks.len();
                        // Let go here: what was sent is kept; the rest is read from the store.
                        let let_go = now_sent >= visible.min(progress.chunks.len())
                            && record.let_go.load(std::sync::atomic::Ordering::Relaxed);
                        if ended && !record.let_go.load(std::sync::atomic::Ordering::Relaxed) {
                            text.push_str("data:[DONE]\n\n");
                        }
                        (text, now_sent, ended || let_go)
                    };
                    if !text.is_empty() {
                        let bytes = Bytes::from(text);
                        return Some((
                            Ok::<_, std::convert::Infallible>(bytes),
                            (record, changed, now_sent, ended),
                        ));
                    }
                    if ended {
                        return None;
                    }
                    tokio::select! {
                        result = changed.changed() => if result.is_err() { return None; },
                        _ = hard_stop.cancelled() => return None,
                    }
                }
            }
        },
    );
    event_stream(Body::from_stream(stream))
}

fn event_stream(body: Body) -> Response {
    let mut response = body.into_response();
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
}
