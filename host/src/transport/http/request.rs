//! Turning an HTTP request into a run's input, shared by the FlowLLM and OpenAI routes: the
//! flow lookup, the body parser, input validation, and the busy answer. Knows nothing of how
//! runs are answered.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::state::AppState;
use crate::auth::{Call, Caller, Limited};
use crate::catalog::Snapshot;
use crate::plan::Flow;

/// A flow a caller may not call, or one that does not exist, to a caller that may not see
/// every flow: the same words either way, so that a refusal says nothing of which flows exist.
pub(crate) fn not_yours(name: &str) -> String {
    format!("no flow `{name}` that this caller may call (GET /flows lists the flows it may)")
}

/// Looks a flow up for `caller`: 403 ([`not_yours`], counted and audited as `denied`) when it
/// may not call it, else as [`live_flow`].
pub(crate) fn callable_flow(
    state: &AppState,
    snapshot: &Snapshot,
    name: &str,
    caller: &Arc<Caller>,
    transport: &'static str,
) -> Result<Arc<Flow>, ApiError> {
    if caller.refused(name, snapshot.get(name).is_some()) {
        state.auth.deny(caller, transport, name);
        return Err(ApiError::new(StatusCode::FORBIDDEN, not_yours(name)));
    }
    live_flow(snapshot, name)
}

/// 429 with `Retry-After` and FlowLLM's `{"detail": ...}`.
pub(crate) fn limited_response(limited: &Limited) -> Response {
    let mut response =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, limited.message.clone()).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, limited.retry_after.into());
    response
}

/// [`crate::auth::Auth::start`] for an HTTP request: the audit line names the request's own
/// span when it is traced, else the `traceparent` the caller sent.
pub(crate) async fn start_call(
    state: &AppState,
    caller: &Arc<Caller>,
    transport: &'static str,
    flow: &str,
    (headers, trace): (&axum::http::HeaderMap, Option<&crate::telemetry::Cx>),
    input: &Map<String, Value>,
) -> Result<Call, Limited> {
    // Only an audit trail keeps it: not made for nothing on every traced request.
    let audits = state.auth.audits();
    let own = trace
        .filter(|_| audits)
        .and_then(crate::telemetry::Cx::traceparent);
    let traceparent = own.as_deref().or_else(|| {
        headers
            .get("traceparent")
            .filter(|_| audits)
            .and_then(|v| v.to_str().ok())
    });
    state
        .auth
        .start(caller, transport, flow, traceparent, input)
        .await
}

/// A run refused by admission control: 503, `Retry-After`, and the reason naming the flow.
pub(crate) fn busy_response(busy: &crate::exec::admission::Busy) -> Response {
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, busy.message.clone()).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, busy.retry_after.into());
    response
}

/// Looks a flow up for a request: 404 when unknown, 503 when broken with no good version.
pub(crate) fn live_flow(snapshot: &Snapshot, name: &str) -> Result<Arc<Flow>, ApiError> {
    let Some(entry) = snapshot.get(name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no flow named `{name}` (GET /flows lists the flows)"),
        ));
    };
    entry.flow.clone().ok_or_else(|| {
        let reason = entry
            .error
            .as_ref()
            .map_or_else(|| "unknown error".to_string(), |d| d.to_string());
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("flow `{name}` is broken and has no good version to serve: {reason}"),
        )
    })
}

/// Parses a request body into the input object: JSON object required, empty means `{}`.
pub fn parse_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the limit of {limit} bytes (http.body_limit)"),
            )
        } else {
            ApiError::new(rejection.status(), rejection.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!([{"loc": ["body"], "msg": format!("the body must be a JSON object, found {}", kind_of(&other)), "type": "type_error"}]),
        )),
        Err(err) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!([{"loc": ["body", err.line(), err.column()], "msg": format!("invalid JSON: {err}"), "type": "json_invalid"}]),
        )),
    }
}

pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks the input against the flow's schema: 422 naming each field, FastAPI's shape.
pub(crate) fn validate(
    flow: &Flow,
    input: Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    flow.check_input(input).map_err(|problems| {
        let detail: Vec<Value> = problems
            .into_iter()
            .map(|(field, message)| {
                let mut loc = vec![Value::from("body")];
                loc.extend(field.split('/').filter(|s| !s.is_empty()).map(Value::from));
                json!({"loc": loc, "msg": message, "type": "value_error"})
            })
            .collect();
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    })
}
