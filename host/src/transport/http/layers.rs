//! The layers every request passes besides the guard: the body read whole under its limits,
//! request counting, `Connection: close` while draining, no proxy buffering for event
//! streams, and how a failed request is logged. Knows nothing of routes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::metrics as m;

/// What every answer gets on its way out, in one layer (each layer of a router costs a deep
/// clone of the layers under it on every request):
///
/// - counted in `flowhost_http_requests_total` by route and status;
/// - an event stream (FlowLLM SSE, OpenAI stream, MCP) tells nginx not to buffer it, so a
///   proxy with its default `proxy_buffering on` still streams chunk by chunk;
/// - while draining, every answer closes its connection: a proxy holding idle keep-alive
///   connections to this replica would otherwise send a request on one just as shutdown
///   closes it (nginx does not retry a POST it has sent). New connections are still accepted
///   until the drain delay ends, then refused, which a proxy does retry elsewhere.
pub(crate) async fn decorate(
    State(ready): State<Arc<AtomicBool>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let mut response = next.run(request).await;
    metrics::counter!(m::REQUESTS, "route" => route, "status" => response.status().as_u16().to_string())
        .increment(1);
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_stream {
        response.headers_mut().insert(
            "x-accel-buffering",
            axum::http::HeaderValue::from_static("no"),
        );
    }
    if !ready.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Reads the whole request body before a handler sees it, bounded by `http.body_limit` and
/// `http.body_timeout` however it arrives (`Content-Length` or chunked, any route, `/mcp`
/// included): 413 from `Content-Length` alone before any of the body is read, 413 as soon as a
/// streamed body passes the limit, 408 when the body has not all arrived in time. Runs after
/// the key check, so nobody without the key makes the host read a body.
pub(crate) async fn read_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    use futures_util::StreamExt;
    let limit = state.options.body_limit;
    let too_large = || {
        closing(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes (http.body_limit)"),
        ))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return too_large();
    }
    let streamed = request.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !streamed {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let mut data = body.into_data_stream();
    let mut chunks: Vec<axum::body::Bytes> = Vec::new();
    let mut received = 0usize;
    // A small body usually came with the head: take what is there without arming a timer.
    let mut outcome = None;
    while let Some(next) = futures_util::FutureExt::now_or_never(data.next()) {
        match next {
            None => {
                outcome = Some(Ok(()));
                break;
            }
            Some(Ok(chunk)) => {
                received += chunk.len();
                if received > limit {
                    return too_large();
                }
                chunks.push(chunk);
            }
            Some(Err(err)) => {
                outcome = Some(Err(Some(err.to_string())));
                break;
            }
        }
    }
    let timeout = state.options.body_timeout;
    let outcome = match outcome {
        Some(outcome) => Ok(outcome),
        None => {
            let read = async {
                while let Some(chunk) = data.next().await {
                    let chunk = chunk.map_err(|err| Some(err.to_string()))?;
                    received += chunk.len();
                    if received > limit {
                        return Err(None::<String>);
                    }
                    chunks.push(chunk);
                }
                Ok(())
            };
            tokio::time::timeout(timeout, read).await
        }
    };
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(None)) => return too_large(),
        Ok(Err(Some(err))) => {
            return closing(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {err}"),
            ))
        }
        Err(_) => {
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s (http.body_timeout); {received} bytes came",
                    timeout.as_secs_f64()
                ),
            ))
        }
    }
    let body = if chunks.len() == 1 {
        chunks.pop().unwrap_or_default()
    } else {
        chunks.concat().into()
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

/// An answer given before the request's body was all read ends its connection: what is left
/// of the body would be read as the next request.
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A 5xx answer in the log: a 503 is the host saying "not now" on purpose (draining,
/// admission, connection caps; the response says so) and is a warning; others are errors.
pub(crate) fn log_failure(
    failure: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    let ms = (latency.as_secs_f64() * 1e4).round() / 10.0;
    match failure {
        tower_http::classify::ServerErrorsFailureClass::StatusCode(code)
            if code == StatusCode::SERVICE_UNAVAILABLE =>
        {
            tracing::warn!(latency_ms = ms, "answered 503 (busy or draining)")
        }
        failure => tracing::error!(latency_ms = ms, "request failed: {failure}"),
    }
}
