//! The two layers every request passes. On the routes, [`every_request`]: the guard's checks
//! and the caller (`guard.rs`), the body read whole under its limits, request counting,
//! `Connection: close` while draining, no proxy buffering for event streams. Around the
//! router, [`around_router`]: the connection's busy mark and the request's log line (a failed
//! request's too). Knows nothing of routes.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::guard;
use super::state::AppState;
use crate::metrics as m;
use crate::telemetry::Cx;

/// What every request passes on every route, in one layer (each layer of a router costs a
/// deep clone of the layers under it, a boxed `Next` and a boxed future on every request):
/// the `Host`, `Origin` and content-type checks ([`guard::refuse`]), who the caller is
/// ([`guard::authorize`]), the body read whole ([`read_body`]), then on the way out what
/// [`decorate`] adds.
pub(crate) async fn every_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(refused) = guard::refuse(&state.policy, &request) {
        return refused;
    }
    let route = request.extensions().get::<MatchedPath>().cloned();
    let admitted = async {
        let request = guard::authorize(&state.policy, request).await?;
        read_body(&state, request).await
    };
    let response = match admitted.await {
        Ok(request) => next.run(request).await,
        Err(refused) => refused,
    };
    decorate(&state.ready, route.as_ref(), response)
}

/// What every answer gets on its way out:
///
/// - counted in `flowhost_http_requests_total` by route and status;
/// - an event stream (FlowLLM SSE, OpenAI stream, MCP) tells nginx not to buffer it, so a
///   proxy with its default `proxy_buffering on` still streams chunk by chunk;
/// - while draining, every answer closes its connection: a proxy holding idle keep-alive
///   connections to this replica would otherwise send a request on one just as shutdown
///   closes it (nginx does not retry a POST it has sent). New connections are still accepted
///   until the drain delay ends, then refused, which a proxy does retry elsewhere.
fn decorate(ready: &AtomicBool, route: Option<&MatchedPath>, mut response: Response) -> Response {
    count(
        route.map_or("unmatched", MatchedPath::as_str),
        response.status(),
    );
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

/// Counts an answer in `flowhost_http_requests_total`. The counter of each route and status
/// is kept by the thread that first counts it (the registry's lookup and two label strings
/// per request, before); a thread keeps at most [`COUNTERS`] of them.
fn count(route: &str, status: StatusCode) {
    use std::cell::RefCell;
    const COUNTERS: usize = 256;
    thread_local! {
        static KEPT: RefCell<Vec<(u16, Box<str>, metrics::Counter)>> = const { RefCell::new(Vec::new()) };
    }
    let code = status.as_u16();
    let register = || metrics::counter!(m::REQUESTS, "route" => route.to_string(), "status" => code.to_string());
    let counted = KEPT.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        if let Some((_, _, counter)) = kept.iter().find(|(c, r, _)| *c == code && **r == *route) {
            counter.increment(1);
            return true;
        }
        if kept.len() >= COUNTERS {
            return false;
        }
        let counter = register();
        counter.increment(1);
        kept.push((code, route.into(), counter));
        true
    });
    if counted != Ok(true) {
        register().increment(1);
    }
}

/// Reads the whole request body before a handler sees it, bounded by `http.body_limit` and
/// `http.body_timeout` however it arrives (`Content-Length` or chunked, any route, `/mcp`
/// included): 413 from `Content-Length` alone before any of the body is read, 413 as soon as a
/// streamed body passes the limit, 408 when the body has not all arrived in time. Runs after
/// the key check, so nobody without the key makes the host read a body.
async fn read_body(state: &AppState, request: Request) -> Result<Request, Response> {
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
        return Err(too_large());
    }
    let streamed = request.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !streamed {
        return Ok(request);
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
                    return Err(too_large());
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
        Ok(Err(None)) => return Err(too_large()),
        Ok(Err(Some(err))) => {
            return Err(closing(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {err}"),
            )))
        }
        Err(_) => {
            return Err(closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}s (http.body_timeout); {received} bytes came",
                    timeout.as_secs_f64()
                ),
            )))
        }
    }
    let body = if chunks.len() == 1 {
        chunks.pop().unwrap_or_default()
    } else {
        chunks.concat().into()
    };
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
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

/// What every request gets around the router (one layer: a layer around the router costs a
/// clone of the router and two boxes per request):
///
/// - its connection is marked busy until the answer's body is done ([`super::conn::busy`]);
/// - its log line, `finished processing request method=… uri=… latency_ms=… status=…` at
///   `info` once the answer's head is ready (a stream's when it starts), inside a `request`
///   span with the trace and span ids when the request is traced (`--log-format json` lines
///   then carry `span.trace_id` and `span.span_id`, and so do the lines logged while it is
///   served, its body's polls included: [`super::conn::carry`]). A 5xx answer is also a
///   warning (503: the host saying "not now" on purpose: draining, admission, connection
///   caps) or an error, naming the request's method and URI. One event and no span otherwise:
///   tower-http's `TraceLayer` made a span per request on every route (its fields formatted
///   into a string, entered on every poll), a sixth of a small request's CPU at `info`.
pub(crate) async fn around_router(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let busy = super::conn::busy(&request);
    let started = std::time::Instant::now();
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let logged = tracing::enabled!(tracing::Level::INFO);
    let span = logged
        .then(|| request.extensions().get::<Cx>().and_then(Cx::ids))
        .flatten()
        .map(|(trace_id, span_id)| {
            tracing::info_span!("request", trace_id = %trace_id, span_id = %span_id)
        });
    let response = match &span {
        Some(span) => next.run(request).instrument(span.clone()).await,
        None => next.run(request).await,
    };
    let status = response.status();
    let latency_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    {
        let _in_span = span.as_ref().map(tracing::Span::enter);
        if logged {
            tracing::info!(
                method = %method,
                uri = %uri,
                latency_ms,
                status = status.as_u16(),
                "finished processing request"
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(method = %method, uri = %uri, latency_ms, "answered 503 (busy or draining)");
        } else if status.is_server_error() {
            tracing::error!(method = %method, uri = %uri, latency_ms, "request failed: {status}");
        }
    }
    super::conn::carry(response, busy, span)
}
