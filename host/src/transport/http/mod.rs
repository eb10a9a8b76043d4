//! The HTTP transport (axum): the router and its layers, FlowLLM-compatible `POST /{flow}`
//! (SSE for stream flows, JSON otherwise), discovery routes, `/health` and `/ready`, metrics,
//! and serving with the drain on SIGTERM. The pieces it assembles have files of their own:
//! `guard` (request checks), `settings` (the `http` section), `state`, `request` (lookup,
//! body, validation), `sse`, `runs/` (async runs), `openai`, `openapi`, `docs`, `playground`,
//! `lifecycle`, `error`; the arrows run from here to them. Knows nothing of
//! plugins: it looks flows up in the catalog's current snapshot and hands them to the executor.

pub(crate) mod conn;
pub(crate) mod discovery;
pub(crate) mod docs;
pub(crate) mod error;
pub(crate) mod guard;
pub(crate) mod layers;
pub(crate) mod lifecycle;
pub(crate) mod openai;
pub(crate) mod openapi;
pub(crate) mod playground;
pub(crate) mod request;
pub(crate) mod runs;
pub(crate) mod settings;
pub(crate) mod sse;
pub(crate) mod state;
pub(crate) mod traced;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use self::discovery::{
    get_prompt, get_prompt_post, list_flows, list_ops, list_prompts, list_resources, metadata,
    openapi_json, read_resource,
};
use self::guard::Who;
use self::settings::Settings as Options;
use crate::auth::{Call, Outcome};
use crate::catalog::Catalog;
use crate::exec::{self, Run};
use crate::metrics as m;

pub use self::error::ApiError;
pub use self::request::parse_body;
pub(crate) use self::request::{busy_response, validate};
pub(crate) use self::runs::Durable;
pub(crate) use self::runs::Retention;
pub(crate) use self::settings::Settings;
pub(crate) use self::sse::{sse_response, FlowLlmEvents};
pub(crate) use self::state::AppState;

/// Every route [`router`] serves, as `(methods, path)`: the table the guard invariant is tested
/// against (each route is called without a key; only the public ones may answer) and that the
/// tidy test compares with the `.route(` calls below. `/mcp` is rmcp's service (GET, POST,
/// DELETE); `/docs/` stands for swagger-ui's pages.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/playground.js"),
    ("GET", "/playground.css"),
    ("GET", "/events"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/flows"),
    ("GET", "/ops"),
    ("GET", "/resources"),
    ("GET", "/resources/read"),
    ("GET", "/prompts"),
    ("GET POST", "/prompts/{name}"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{id}"),
    ("POST", "/v1/chat/completions"),
    ("GET DELETE", "/runs/{id}"),
    ("GET", "/runs/{id}/events"),
    ("GET", "/.well-known/oauth-protected-resource"),
    ("GET", "/.well-known/oauth-protected-resource/mcp"),
    ("GET POST", "/{flow}"),
    ("GET POST DELETE", "/mcp"),
    ("GET", "/docs/"),
];

/// The whole HTTP API. Flow routes are not registered one by one: `POST /{flow}` looks the
/// flow up in the snapshot of the moment, so reloads need no new router.
pub(crate) fn router(state: AppState) -> Router {
    let swagger = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/docs",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/openapi.json"),
        title: Some("flowhost API"),
    });
    let mcp_sessions = super::mcp::sessions();
    let router = Router::new()
        .route("/", get(playground::page))
        .route("/playground.js", get(playground::script))
        .route("/playground.css", get(playground::style))
        .route("/events", get(playground::events))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/flows", get(list_flows))
        .route("/ops", get(list_ops))
        .route("/resources", get(list_resources))
        .route("/resources/read", get(read_resource))
        .route("/prompts", get(list_prompts))
        .route("/prompts/{name}", get(get_prompt).post(get_prompt_post))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/runs/{id}", get(runs::status).delete(runs::cancel))
        .route("/runs/{id}/events", get(runs::events))
        .route("/.well-known/oauth-protected-resource", get(metadata))
        .route("/.well-known/oauth-protected-resource/mcp", get(metadata))
        .route("/{flow}", post(run_flow).get(flow_page))
        .with_state(state.clone())
        .nest_service(
            "/mcp",
            tower::ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(
                    (
                        mcp_sessions.clone(),
                        state.options.mcp_max_sessions,
                        super::mcp::SessionOwners::default(),
                    ),
                    super::mcp::cap_sessions,
                ))
                .layer(middleware::from_fn_with_state(
                    (state.catalog.clone(), state.options.body_limit),
                    super::mcp::check_requests,
                ))
                .service(super::mcp::http_service(
                    state.catalog.clone(),
                    state.run_options.clone(),
                    state.options.mcp_stateless,
                    state.hard_stop.clone(),
                    mcp_sessions,
                    state.runs.durable.as_ref().map(|d| d.shared_tasks()),
                    state.auth.clone(),
                )),
        )
        .merge(swagger.layer(middleware::from_fn(docs::docs_page)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            layers::every_request,
        ))
        .layer(DefaultBodyLimit::max(state.options.body_limit));
    // CORS answers preflights before the checks see them; the checks still refuse the real
    // request of an origin CORS does not list.
    match guard::cors(&state.options) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// `GET /{flow}`: flows are POSTed. A browser lands on the playground with the flow selected;
/// anything else gets 405 saying how to call it (404 when there is no such flow).
async fn flow_page(
    State(state): State<AppState>,
    Extension(caller): Who,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let exists = state.catalog.snapshot().get(&name).is_some();
    if caller.refused(&name, exists) {
        return ApiError::new(StatusCode::FORBIDDEN, request::not_yours(&name)).into_response();
    }
    if !exists {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route GET /{name} and no flow named `{name}` (GET /flows lists the flows)"),
        )
        .into_response();
    }
    let browser = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if browser {
        let to = format!("/#{name}");
        return (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    }
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("POST a JSON body to /{name} to run the flow (GET /flows describes it; the playground at / runs it in a browser)"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, axum::http::HeaderValue::from_static("POST"));
    response
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not served on {}; see /docs for each route's methods",
            request.method(),
            request.uri().path()
        ),
    )
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
async fn health(State(state): State<AppState>, caller: Option<Who>) -> Json<Value> {
    // Only a caller that may see every flow sees the counts, hashes and plugins.
    if !caller.is_some_and(|Extension(c)| c.grant.is_all()) {
        return Json(json!({"status": "healthy"}));
    }
    let snapshot = state.catalog.snapshot();
    Json(json!({
        "status": "healthy",
        "ready": state.ready.load(Ordering::Relaxed),
        "version": env!("CARGO_PKG_VERSION"),
        "flows": snapshot.flows.len(),
        "live_flows": snapshot.live().count(),
        "plugins": snapshot.plugins_json(),
        "ops": snapshot.op_count(),
        "errors": snapshot.error_count(),
        "generation": snapshot.generation,
        "flows_hash": snapshot.flows_hash(),
        "plugins_hash": snapshot.plugins_hash(),
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

async fn metrics(State(state): State<AppState>, Extension(caller): Who) -> Response {
    // Its labels name flows: an operator's view, for callers that may see every flow.
    if !caller.grant.is_all() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "/metrics is for callers that may see every flow (a key without `flows`, or http.api_key)",
        )
        .into_response();
    }
    match &state.metrics {
        Some(handle) => {
            let snapshot = state.catalog.snapshot();
            let mut text = handle.render();
            // The served versions, so replicas serving different ones show up in a rollout.
            text.push_str(&format!(
                "# TYPE {info} gauge\n{info}{{flows_hash=\"{}\",plugins_hash=\"{}\"}} 1\n",
                snapshot.flows_hash(),
                snapshot.plugins_hash(),
                info = m::SERVED_INFO,
            ));
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        None => ApiError::new(StatusCode::NOT_FOUND, "metrics are disabled").into_response(),
    }
}

async fn run_flow(
    State(state): State<AppState>,
    Extension(caller): Who,
    trace: Option<Extension<crate::telemetry::Cx>>,
    Path(name): Path<String>,
    mut request: Request,
) -> Result<Response, ApiError> {
    // The request's own headers, not the copy a `HeaderMap` extractor makes.
    let headers = std::mem::take(request.headers_mut());
    let body = <Bytes as axum::extract::FromRequest<()>>::from_request(request, &()).await;
    let snapshot = state.catalog.snapshot();
    let flow = request::callable_flow(&state, &snapshot, &name, &caller, "http")?;
    drop(snapshot);
    let input = parse_body(body, state.options.body_limit)?;
    let input = validate(&flow, input)?;
    let background = runs::wants_async(&headers);
    let transport = if background { "async" } else { "http" };
    let mut call = match request::start_call(
        &state,
        &caller,
        transport,
        &name,
        (&headers, trace.as_ref().map(|Extension(cx)| cx)),
        &input,
    )
    .await
    {
        Ok(call) => call,
        Err(limited) => return Ok(request::limited_response(&limited)),
    };
    let mut running = None;
    let (input_json, fingerprint) = if background {
        runs::fingerprint(&input)
    } else {
        Default::default()
    };
    // The async run's steps are boxed: their futures (the durable store's calls) would
    // otherwise make every request's future larger, moved whole into its box per request.
    if background {
        if let Some(existing) = Box::pin(runs::existing(
            &state,
            &caller,
            &name,
            &headers,
            fingerprint,
        ))
        .await
        {
            call.end(if existing.status().is_success() {
                Outcome::Ok
            } else {
                Outcome::Error
            });
            return Ok(existing);
        }
        match runs::place(&state) {
            Ok(place) => running = Some(place),
            Err(refused) => {
                call.end(Outcome::Error);
                return Ok(*refused);
            }
        }
    }
    let stream = flow.spec.stream;
    let options = exec::Options {
        // An async run's record builds its answer from the chunks it keeps, within
        // `runs.max_bytes`; the run itself still ends at the collected-answer cap.
        collect_answer: !stream && !background,
        max_output_bytes: background.then_some(exec::DEFAULT_MAX_ANSWER_BYTES),
        // A durable async run marks each completed call, to be resumed from it.
        journal: (background && state.runs.durable.is_some())
            .then(|| Arc::new(exec::Journal::default())),
        trace: trace.map(|Extension(cx)| cx).unwrap_or_default(),
        ..state.run_options.clone()
    };
    let run = match exec::admit_and_start(flow, input, &options).await {
        Ok(run) => run,
        Err(busy) => {
            call.end(Outcome::Error);
            return Ok(busy_response(&busy));
        }
    };
    call.run_id(&run.flow_id);
    if let Some(running) = running {
        return Ok(Box::pin(runs::accept(
            &state,
            &caller,
            &name,
            run,
            &headers,
            (input_json, fingerprint),
            (running, call),
        ))
        .await);
    }
    if stream {
        Ok(sse_response(run, &state, FlowLlmEvents, Some(call)))
    } else {
        Ok(json_answer(run, &state, call).await)
    }
}

async fn json_answer(run: Run, state: &AppState, mut call: Call) -> Response {
    let outcome = tokio::select! {
        outcome = run.finish() => outcome,
        _ = state.hard_stop.cancelled() => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down").into_response();
        }
    };
    call.add_chunks(outcome.chunks);
    call.end(if outcome.error.is_some() {
        Outcome::Error
    } else {
        Outcome::Ok
    });
    let status = if outcome.error.is_some() {
        metrics::counter!(m::FLOW_ERRORS).increment(1);
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    // Written straight from the outcome (a `json!` tree was a map of maps built and dropped
    // per request); the keys in the order a `json!` map had them (sorted).
    let body = FlowLlmAnswer {
        answer: &outcome.answer,
        metadata: AnswerMetadata {
            error: outcome.error.as_deref(),
            failed_ops: &outcome.failed_ops,
            flow_id: &outcome.flow_id,
        },
        success: outcome.error.is_none(),
    };
    (status, Json(body)).into_response()
}

/// FlowLLM's non-stream answer: `{"answer", "metadata": {"flow_id", "failed_ops"?, "error"?},
/// "success"}`.
#[derive(serde::Serialize)]
struct FlowLlmAnswer<'a> {
    answer: &'a Value,
    metadata: AnswerMetadata<'a>,
    success: bool,
}

#[derive(serde::Serialize)]
struct AnswerMetadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "<[Value]>::is_empty")]
    failed_ops: &'a [Value],
    flow_id: &'a str,
}

/// Serves HTTP until SIGINT/SIGTERM: stop accepting, let streams finish until the shutdown
/// deadline, then end the rest with an error chunk.
pub(crate) async fn serve(
    catalog: Arc<Catalog>,
    options: Options,
    run_options: exec::Options,
    durable: Option<runs::Durable>,
    auth: Arc<crate::auth::Auth>,
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
    // In its place after the log lines of loading (tests and scripts wait for it).
    crate::util::logs::print(&format!(
        "flowhost {} listening on {url} — {} flows ({} live), {} ops; playground {url}/ , docs {url}/docs",
        env!("CARGO_PKG_VERSION"),
        snapshot.flows.len(),
        snapshot.live().count(),
        snapshot.op_count(),
    ));
    drop(snapshot);
    self::lifecycle::warn_if_exposed(&options, local.ip(), auth.required());
    let state = AppState::new(catalog.clone(), options.clone(), run_options, durable, auth);
    runs::start_keeper(&state);
    count_reloads(&catalog);
    let hard_stop = state.hard_stop.clone();
    let ready = state.ready.clone();
    let deadline = options.shutdown_timeout;
    let drain = options.drain_delay;
    let listening = self::lifecycle::Listening::of(&listener);
    let listener = conn::Listener::new(listener, options.connection_limits());
    let runs = state.runs.clone();
    // The server span, the busy mark and the request's log line go around the router, not on
    // each route: a layer on the router's routes clones the layers under it on every request,
    // one around it clones the router (a reference count). The span's layer only when there
    // are traces to make; the log line inside it, to carry its ids.
    let spans = tower::util::option_layer(
        crate::telemetry::enabled().then_some(traced::ServerSpans(ROUTES)),
    );
    let app = tower::Layer::layer(&middleware::from_fn(layers::around_router), router(state));
    let app = tower::Layer::layer(&spans, app);
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
        conn::Peer,
    >(app);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            self::lifecycle::shutdown_signal().await;
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
        .map_err(|err| format!("server error: {err}"));
    runs.give_up().await;
    served
}

fn count_reloads(catalog: &Catalog) {
    let mut changes = catalog.subscribe();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            metrics::counter!(m::RELOADS).increment(1);
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_path_finds_the_route_the_router_serves_it_by() {
        use super::traced::route_of;
        use super::ROUTES;
        assert_eq!(route_of(ROUTES, "/echo_flow"), Some("/{flow}"));
        assert_eq!(route_of(ROUTES, "/mcp"), Some("/mcp"));
        assert_eq!(route_of(ROUTES, "/health"), Some("/health"));
        assert_eq!(
            route_of(ROUTES, "/runs/abc/events"),
            Some("/runs/{id}/events")
        );
        assert_eq!(route_of(ROUTES, "/runs/abc"), Some("/runs/{id}"));
        assert_eq!(route_of(ROUTES, "/v1/models/m"), Some("/v1/models/{id}"));
        assert_eq!(
            route_of(ROUTES, "/v1/chat/completions"),
            Some("/v1/chat/completions")
        );
        assert_eq!(route_of(ROUTES, "/"), Some("/"));
        assert_eq!(route_of(ROUTES, "/docs"), Some("/docs/"));
        assert_eq!(route_of(ROUTES, "/docs/swagger-ui.css"), Some("/docs/"));
        assert_eq!(route_of(ROUTES, "/mcp/"), Some("/mcp"));
        assert_eq!(route_of(ROUTES, "/a/b/c"), None);
        // Every template is found (none was refused by the matcher).
        for (_, template) in ROUTES {
            let path: String = template
                .split('/')
                .map(|part| if part.starts_with('{') { "x" } else { part })
                .collect::<Vec<_>>()
                .join("/");
            assert_eq!(route_of(ROUTES, &path), Some(*template), "{path}");
        }
        assert_eq!(route_of(ROUTES, "/runs//events"), None);
        // Asked again right away: a path of one segment a route serves is kept by the thread
        // and answered from there, the same as the matcher's answer; others are not kept.
        // More paths than a thread keeps: the oldest make room.
        use super::traced::route_by_matcher;
        let paths = [
            "/echo_flow",
            "/health",
            "/mcp/",
            "/",
            "/ready",
            "/flow_a",
            "/flow_b",
            "/flow_c",
            "/flow_d",
            "/flow_e",
            "/runs/abc",
            "/a/b/c",
            "/v1/models/m",
        ];
        for path in paths {
            let first = route_of(ROUTES, path);
            let (by_matcher, kept) = route_by_matcher(ROUTES, path);
            assert_eq!(route_of(ROUTES, path), first, "{path}");
            assert_eq!(by_matcher, first, "{path}");
            let one_segment = first.is_some_and(|route| !route[1..].contains('/'));
            assert_eq!(kept, one_segment, "{path}");
        }
        let fresh: Vec<String> = (0..8).map(|n| format!("/fresh_{n}")).collect();
        for path in &fresh {
            assert_eq!(route_of(ROUTES, path), Some("/{flow}"));
        }
        assert!(
            !route_by_matcher(ROUTES, "/flow_e").1,
            "the oldest made room"
        );
        assert!(fresh.iter().all(|path| route_by_matcher(ROUTES, path).1));
    }

    /// A flow named like a route's first segment is refused by the flow language: the list
    /// it refuses is exactly the routes'.
    #[test]
    fn reserved_flow_names_are_the_routes() {
        let mut segments: Vec<&str> = super::ROUTES
            .iter()
            .filter_map(|(_, path)| path.trim_start_matches('/').split('/').next())
            .filter(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
            .collect();
        segments.sort_unstable();
        segments.dedup();
        let mut reserved = crate::plan::RESERVED_FLOW_NAMES.to_vec();
        reserved.sort_unstable();
        assert_eq!(segments, reserved);
    }
}
