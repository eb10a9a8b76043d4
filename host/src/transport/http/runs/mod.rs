//! Async runs over HTTP: `POST /{flow}` with `Prefer: respond-async` answers 202 at once and
//! the run goes on without the connection; `GET /runs/{id}` polls it, `GET /runs/{id}/events`
//! replays its chunks from the start and follows it live, `DELETE /runs/{id}` cancels it.
//! Runs live in this process's memory, bounded in count and bytes and kept `runs.retention`
//! after they end; an `Idempotency-Key` header returns the run already started with that key.

//!
//! `store.rs` keeps the runs; this file is the HTTP side: the `Prefer` header, 202 with
//! `Location`, and the `/runs/{id}` routes.

pub(super) mod store;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use self::store::Record;
pub(crate) use self::store::Retention;
use super::error::ApiError;
use super::state::AppState;
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

/// `POST /{flow}` with `Prefer: respond-async`: 202, `Location: /runs/{id}`.
pub(crate) fn accept(
    state: &AppState,
    flow: &str,
    run: Run,
    headers: &HeaderMap,
    input: u64,
    running: store::Running,
) -> Response {
    let key = idempotency_key(headers).map(|key| (key, input));
    let record = state.runs.start(flow, run, key, running);
    accepted(&record, false)
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
pub(crate) fn existing(
    state: &AppState,
    flow: &str,
    headers: &HeaderMap,
    input: u64,
) -> Option<Response> {
    let key = idempotency_key(headers)?;
    state.runs.prune();
    let (id, first) = state
        .runs
        .lock()
        .keys
        .get(&(flow.to_string(), key.clone()))
        .cloned()?;
    if first != input {
        return Some(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Idempotency-Key `{key}` was used for run {id} with a different body; send the same body to get that run, or a new key for a new run"),
            )
            .into_response(),
        );
    }
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
    if record.lock().finished.is_none()
        && !record
            .cancel_requested
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        metrics::counter!(crate::metrics::CANCELLATIONS).increment(1);
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

/// Chunks and bytes of one replay write.
const REPLAY_BATCH: usize = 256;
const REPLAY_BYTES: usize = 64 * 1024;

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
                    // At most a batch per write: a reader that does not read holds one batch,
                    // not a copy of the whole log.
                    let (text, now_sent, ended) = {
                        let progress = record.lock();
                        let mut text = String::new();
                        let mut now_sent = sent;
                        for chunk in progress.chunks.range(sent, REPLAY_BATCH) {
                            text.push_str("data:");
                            chunk.write_json(&record.id, &mut text);
                            text.push_str("\n\n");
                            now_sent += 1;
                            if text.len() >= REPLAY_BYTES {
                                break;
                            }
                        }
                        let ended =
                            progress.finished.is_some() && now_sent == progress.chunks.len();
                        if ended {
                            text.push_str("data:[DONE]\n\n");
                        }
                        (text, now_sent, ended)
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
}
