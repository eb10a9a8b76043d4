//! The HTTP transport (axum): FlowLLM-compatible `POST /{flow}` (SSE for stream flows, JSON
//! otherwise), discovery routes, the docs page, metrics, and the OpenAI-compatible API in
//! `openai.rs`. Knows nothing of plugins: it looks flows up in the catalog's current snapshot
//! and hands them to the executor.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

use crate::catalog::{Catalog, Snapshot};
use crate::chunk::Chunk;
use crate::config::Http as Options;
use crate::exec::{self, Run};
use crate::flow::Flow;
use crate::metrics as m;

pub use super::error::ApiError;
use super::guard::{self, Policy};
use super::{openai, openapi};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalog>,
    pub options: Arc<Options>,
    /// Fires when the shutdown deadline passes: streams still running are ended.
    pub hard_stop: CancellationToken,
    /// What every run starts with (the LLM service).
    pub run_options: exec::Options,
    /// False from the moment a drain begins (`GET /ready` answers 503).
    pub ready: Arc<AtomicBool>,
    policy: Policy,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl AppState {
    pub fn new(catalog: Arc<Catalog>, options: Options, run_options: exec::Options) -> AppState {
        AppState {
            catalog,
            policy: Policy::new(&options),
            options: Arc::new(options),
            hard_stop: CancellationToken::new(),
            run_options,
            ready: Arc::new(AtomicBool::new(true)),
            metrics: m::handle(),
        }
    }
}

/// The whole HTTP API. Flow routes are not registered one by one: `POST /{flow}` looks the
/// flow up in the snapshot of the moment, so reloads need no new router.
pub fn router(state: AppState) -> Router {
    let docs = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/docs",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/openapi.json"),
        title: Some("flowhost API"),
    });
    let router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/flows", get(list_flows))
        .route("/ops", get(list_ops))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/{flow}", post(run_flow))
        .with_state(state.clone())
        .nest_service(
            "/mcp",
            super::mcp::http_service(
                state.catalog.clone(),
                state.run_options.clone(),
                state.options.mcp_stateless,
                state.hard_stop.clone(),
            ),
        )
        .merge(docs.layer(middleware::from_fn(docs_page)))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.policy.clone(),
            guard::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            reject_oversized,
        ))
        .layer(middleware::from_fn(count_requests))
        .layer(middleware::from_fn(no_proxy_buffering))
        .layer(middleware::from_fn_with_state(
            state.ready.clone(),
            close_while_draining,
        ))
        .layer(DefaultBodyLimit::max(state.options.body_limit))
        .layer(middleware::from_fn_with_state(
            state.policy.clone(),
            guard::check_request,
        ));
    // CORS answers preflights before the checks see them; the checks still refuse the real
    // request of an origin CORS does not list.
    let router = match guard::cors(&state.options) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
            .on_request(())
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
    )
}

/// The `/docs` page: Swagger UI on the host's own assets, plus what an API key needs. The page
/// loads without the key; the OpenAPI document behind it does not, so the page sends the key
/// it was given (asked for once on a 401, kept in the tab's sessionStorage) with every request,
/// the document's own included. The Authorize button sets it too.
async fn docs_page(request: Request, next: Next) -> Response {
    if !matches!(request.uri().path(), "/docs" | "/docs/") {
        return next.run(request).await;
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DOCS_PAGE,
    )
        .into_response()
}

const DOCS_PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8" />
  <meta name="viewport" content="width=device-width, initial-scale=1" />
  <title>flowhost API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css" />
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
  const KEY = "flowhost-api-key";
  window.onload = () => {
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      persistAuthorization: true,
      requestInterceptor: (req) => {
        const key = sessionStorage.getItem(KEY);
        if (key && !req.headers.Authorization) req.headers.Authorization = "Bearer " + key;
        return req;
      },
      responseInterceptor: (res) => {
        if (res.status === 401 && res.url.endsWith("/openapi.json")) {
          const key = window.prompt("This flowhost needs its API key:");
          if (key) { sessionStorage.setItem(KEY, key.trim()); window.location.reload(); }
        }
        return res;
      },
      onComplete: () => {
        const key = sessionStorage.getItem(KEY);
        if (key) window.ui.preauthorizeApiKey("bearer", key);
      },
    });
  };
</script>
</body>
</html>
"##;

/// While draining, every answer closes its connection: a proxy holding idle keep-alive
/// connections to this replica would otherwise send a request on one just as shutdown closes
/// it (nginx does not retry a POST it has sent). New connections are still accepted until the
/// drain delay ends, then refused, which a proxy does retry elsewhere.
async fn close_while_draining(
    State(ready): State<Arc<AtomicBool>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if !ready.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Every event stream (FlowLLM SSE, OpenAI stream, MCP) tells nginx not to buffer it, so a
/// proxy with its default `proxy_buffering on` still streams chunk by chunk.
async fn no_proxy_buffering(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
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
    response
}

/// Answers 413 from `Content-Length` alone, before any of the body is read (streamed bodies
/// without a length are still cut at the limit while reading).
async fn reject_oversized(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.options.body_limit;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes (http.body_limit)"),
        )
        .into_response();
    }
    next.run(request).await
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics::counter!(m::REQUESTS, "route" => route, "status" => response.status().as_u16().to_string())
        .increment(1);
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}; flows are POST /{{flow}} (GET /flows lists them), docs at /docs",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Liveness. Without the key (when one is set) it says only that the host is up: no paths,
/// versions or flow names for whoever can reach the port.
async fn health(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    if !state.policy.authorized(&headers) {
        return Json(json!({"status": "healthy"}));
    }
    let snapshot = state.catalog.snapshot();
    Json(json!({
        "status": "healthy",
        "ready": state.ready.load(Ordering::Relaxed),
        "version": env!("CARGO_PKG_VERSION"),
        "flows": snapshot.flows.len(),
        "live_flows": snapshot.live().count(),
        "plugins": snapshot.registry.libraries.iter().map(|l| json!({
            "name": l.plugin_name, "version": l.plugin_version, "file": l.path,
        })).collect::<Vec<_>>(),
        "ops": snapshot.registry.ops.len(),
        "errors": snapshot.errors().count() + snapshot.registry.errors.len(),
        "generation": snapshot.generation,
        "flows_hash": snapshot.flows_hash(),
        "plugins_hash": snapshot.registry.plugins_hash(),
    }))
}

/// Readiness: 200 while serving, 503 while draining (after SIGTERM), so a proxy or the
/// endpoints controller stops sending before the host stops accepting.
async fn ready(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: the host is shutting down",
        )
        .into_response()
    }
}

async fn list_flows(State(state): State<AppState>) -> Json<Value> {
    Json(state.catalog.snapshot().flows_json())
}

async fn list_ops(State(state): State<AppState>) -> Json<Value> {
    Json(state.catalog.snapshot().registry.to_json())
}

async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(openapi::document(
        &state.catalog.snapshot(),
        state.options.api_key.is_some(),
    ))
}

async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            let snapshot = state.catalog.snapshot();
            let mut text = handle.render();
            // The served versions, so replicas serving different ones show up in a rollout.
            text.push_str(&format!(
                "# TYPE {info} gauge\n{info}{{flows_hash=\"{}\",plugins_hash=\"{}\"}} 1\n",
                snapshot.flows_hash(),
                snapshot.registry.plugins_hash(),
                info = m::SERVED_INFO,
            ));
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        None => ApiError::new(StatusCode::NOT_FOUND, "metrics are disabled").into_response(),
    }
}

/// A run refused by admission control: 503, `Retry-After`, and the reason naming the flow.
pub fn busy_response(busy: &crate::admission::Busy) -> Response {
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, busy.message.clone()).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, busy.retry_after.into());
    response
}

/// Looks a flow up for a request: 404 when unknown, 503 when broken with no good version.
pub fn live_flow(snapshot: &Snapshot, name: &str) -> Result<Arc<Flow>, ApiError> {
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

fn kind_of(value: &Value) -> &'static str {
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
pub fn validate(flow: &Flow, input: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
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

async fn run_flow(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let snapshot = state.catalog.snapshot();
    let flow = live_flow(&snapshot, &name)?;
    let input = parse_body(body, state.options.body_limit)?;
    let input = validate(&flow, input)?;
    let stream = flow.spec.stream;
    let options = exec::Options {
        collect_answer: !stream,
        ..state.run_options.clone()
    };
    let run = match exec::admit_and_start(flow, input, &options).await {
        Ok(run) => run,
        Err(busy) => return Ok(busy_response(&busy)),
    };
    if stream {
        Ok(sse_response(run, &state, FlowLlmEvents))
    } else {
        Ok(json_answer(run, &state).await)
    }
}

async fn json_answer(run: Run, state: &AppState) -> Response {
    let flow_id = run.flow_id.clone();
    let outcome = tokio::select! {
        outcome = run.finish() => outcome,
        _ = state.hard_stop.cancelled() => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down").into_response();
        }
    };
    match &outcome.error {
        None => Json(json!({
            "answer": outcome.answer,
            "success": true,
            "metadata": {"flow_id": flow_id},
        }))
        .into_response(),
        Some(error) => {
            metrics::counter!(m::FLOW_ERRORS).increment(1);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({
                    "answer": outcome.answer,
                    "success": false,
                    "metadata": {"flow_id": flow_id, "error": error},
                })),
            )
                .into_response()
        }
    }
}

/// How a stream of chunks is written as SSE events.
pub trait EventWriter: Send + 'static {
    fn chunks(&mut self, flow_id: &str, chunks: &[Chunk], out: &mut String);
    /// The closing events (`[DONE]`).
    fn done(&mut self, flow_id: &str, out: &mut String);
}

/// FlowLLM's wire form: `data:{chunk json}\n\n` per chunk, `data:[DONE]\n\n` at the end.
pub struct FlowLlmEvents;

impl EventWriter for FlowLlmEvents {
    fn chunks(&mut self, flow_id: &str, chunks: &[Chunk], out: &mut String) {
        for chunk in chunks {
            out.push_str("data:");
            chunk.write_json(flow_id, out);
            out.push_str("\n\n");
        }
    }

    fn done(&mut self, _flow_id: &str, out: &mut String) {
        out.push_str("data:[DONE]\n\n");
    }
}

struct Streaming<W> {
    run: Run,
    writer: W,
    batch: Vec<Chunk>,
    keepalive: Duration,
    hard_stop: CancellationToken,
    started: Instant,
    first_seen: bool,
    finished: bool,
}

impl<W> Drop for Streaming<W> {
    fn drop(&mut self) {
        metrics::gauge!(m::ACTIVE_STREAMS).decrement(1.0);
        if !self.finished {
            // The client went away first; dropping the run cancels it.
            metrics::counter!(m::CANCELLATIONS).increment(1);
            tracing::info!(flow_id = %self.run.flow_id, "client disconnected; run cancelled");
        }
    }
}

/// Streams a run as SSE. Every batch of chunks becomes one write; a quiet stream gets
/// keep-alive comments; a client that goes away drops the body, which cancels the run.
pub fn sse_response<W: EventWriter>(run: Run, state: &AppState, writer: W) -> Response {
    metrics::gauge!(m::ACTIVE_STREAMS).increment(1.0);
    let streaming = Streaming {
        run,
        writer,
        batch: Vec::new(),
        keepalive: state.options.keepalive,
        hard_stop: state.hard_stop.clone(),
        started: Instant::now(),
        first_seen: false,
        finished: false,
    };
    let body = futures_util::stream::unfold(streaming, |mut s| async move {
        if s.finished {
            return None;
        }
        let mut out = String::new();
        let flow_id = s.run.flow_id.clone();
        tokio::select! {
            more = s.run.next_batch(&mut s.batch) => {
                if more {
                    if !s.first_seen {
                        s.first_seen = true;
                        metrics::histogram!(m::FIRST_CHUNK).record(s.started.elapsed().as_secs_f64());
                    }
                    metrics::counter!(m::CHUNKS).increment(s.batch.len() as u64);
                    if s.batch.iter().any(|c| c.kind == crate::chunk::ChunkKind::Error) {
                        metrics::counter!(m::FLOW_ERRORS).increment(1);
                    }
                    s.writer.chunks(&flow_id, &s.batch, &mut out);
                    s.batch.clear();
                } else {
                    s.writer.done(&flow_id, &mut out);
                    s.finished = true;
                }
            }
            _ = tokio::time::sleep(s.keepalive) => {
                out.push_str(": keep-alive\n\n");
            }
            _ = s.hard_stop.cancelled() => {
                let chunk = Chunk::error("flowhost", "the server is shutting down; the stream was ended");
                s.writer.chunks(&flow_id, std::slice::from_ref(&chunk), &mut out);
                s.writer.done(&flow_id, &mut out);
                s.finished = true;
            }
        }
        Some((Ok::<_, Infallible>(Bytes::from(out)), s))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Serves HTTP until SIGINT/SIGTERM: stop accepting, let streams finish until the shutdown
/// deadline, then end the rest with an error chunk.
pub async fn serve(
    catalog: Arc<Catalog>,
    options: Options,
    run_options: exec::Options,
) -> Result<(), String> {
    let address = format!("{}:{}", options.host, options.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|err| format!("cannot listen on {address}: {err} (choose another with --port)"))?;
    let local = listener
        .local_addr()
        .map_err(|err| format!("cannot read the bound address: {err}"))?;
    let snapshot = catalog.snapshot();
    let shown_host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        local.ip().to_string()
    };
    let url = format!("http://{shown_host}:{}", local.port());
    eprintln!(
        "flowhost {} listening on {url} — {} flows ({} live), {} ops; docs {url}/docs",
        env!("CARGO_PKG_VERSION"),
        snapshot.flows.len(),
        snapshot.live().count(),
        snapshot.registry.ops.len(),
    );
    drop(snapshot);
    warn_if_exposed(&options, local.ip());
    let state = AppState::new(catalog.clone(), options.clone(), run_options);
    count_reloads(&catalog);
    let hard_stop = state.hard_stop.clone();
    let ready = state.ready.clone();
    let deadline = options.shutdown_timeout;
    let drain = options.drain_delay;
    let listening = super::lifecycle::Listening::of(&listener);
    // Streams are many small writes: do not let Nagle hold a chunk back for an ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            super::lifecycle::shutdown_signal().await;
            ready.store(false, Ordering::Relaxed);
            if !drain.is_zero() {
                tracing::info!(
                    "draining: /ready answers 503; still serving for {:.1}s (http.drain_delay)",
                    drain.as_secs_f64()
                );
                tokio::time::sleep(drain).await;
            }
            listening.quiesce(Duration::from_secs(1)).await;
            tracing::info!(
                "shutting down: no new connections; streams have {:.1}s to finish",
                deadline.as_secs_f64()
            );
            tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                hard_stop.cancel();
            });
        })
        .await
        .map_err(|err| format!("server error: {err}"))
}

/// A host reachable from other machines should say so when nothing guards it.
fn warn_if_exposed(options: &Options, bound: std::net::IpAddr) {
    if bound.is_loopback() {
        return;
    }
    if options.api_key.is_none() {
        tracing::warn!(
            "listening on {bound}, reachable from other machines, without an API key: anyone \
             who can reach this port can run every flow; set --api-key (or http.api_key)"
        );
    }
    if options.allowed_hosts.is_empty() {
        tracing::warn!(
            "requests are accepted only for the Host names {}; add the names clients use \
             (a Service, an Ingress, this machine's name) to http.allowed_hosts",
            options.effective_allowed_hosts().join(", ")
        );
    }
}

fn count_reloads(catalog: &Catalog) {
    let mut changes = catalog.subscribe();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            metrics::counter!(m::RELOADS).increment(1);
        }
    });
}
