//! MCP over Streamable HTTP: the `/mcp` service the HTTP transport mounts, and its
//! `Mcp-Param-*` header check (SEP-2243) run before a `tools/call` reaches the server.

use std::sync::Arc;

use serde_json::{json, Value};

use super::ask::is_2026;
use super::handler::FlowTools;
use crate::catalog::Catalog;
use crate::exec;

/// Checks a POST to `/mcp` before rmcp reads it, and words rmcp's refusal of a body it
/// cannot read as JSON-RPC.
///
/// SEP-2243 custom headers (2026-07-28): a flow's input property with `x-mcp-header: Name` is
/// mirrored by the client in an `Mcp-Param-Name` header (literal, or `=?base64?...?=`) so
/// proxies can route on it. A `tools/call` whose header is missing, undecodable or different
/// from the body is refused (-32020, HTTP 400) before it runs.
///
/// A body that is not JSON, or JSON that is not a JSON-RPC message, is answered 400 with a
/// JSON-RPC error (-32700 parse error, -32600 invalid request), as over stdio; rmcp itself
/// answers 415 and a line of text.
pub(crate) async fn check_requests(
    axum::extract::State((catalog, limit)): axum::extract::State<(Arc<Catalog>, usize)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    // The body middleware has read it whole already (under the same limit).
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body could not be read: {err}"),
            )
                .into_response()
        }
    };
    // The headers are a 2026-07-28 feature (older clients never send them), and only tools
    // with an `x-mcp-header` property have any: everything else passes unchecked.
    let modern = parts
        .headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_2026);
    if modern && catalog.snapshot().mcp_param_headers {
        // Only for a tool this caller may call: the check must not tell others what exists.
        let caller = parts.extensions.get::<Arc<crate::auth::Caller>>().cloned();
        if let Some((id, problem)) =
            param_header_problem(&catalog, &parts.headers, &bytes, caller.as_deref())
        {
            return json_rpc_error(axum::http::StatusCode::BAD_REQUEST, id, -32020, problem);
        }
    }
    let response = next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes.clone()),
        ))
        .await;
    if response.status() != axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return response;
    }
    // rmcp answers 415 both to another Content-Type (a real 415, kept) and to a body it could
    // not read as JSON-RPC (reworded).
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let Some(detail) = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.strip_prefix("fail to deserialize request body "))
    else {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(text));
    };
    let (id, code, message) = match serde_json::from_slice::<Value>(&bytes) {
        Err(err) => (
            Value::Null,
            -32700,
            format!("parse error: the body is not JSON ({err})"),
        ),
        Ok(value) => (
            value.get("id").cloned().unwrap_or(Value::Null),
            -32600,
            format!("invalid request: the body is JSON but not a JSON-RPC 2.0 message ({detail})"),
        ),
    };
    json_rpc_error(axum::http::StatusCode::BAD_REQUEST, id, code, message)
}

fn json_rpc_error(
    status: axum::http::StatusCode,
    id: Value,
    code: i64,
    message: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// What is wrong with a `tools/call`'s `Mcp-Param-*` headers, with the request id.
fn param_header_problem(
    catalog: &Catalog,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    caller: Option<&crate::auth::Caller>,
) -> Option<(Value, String)> {
    use base64::Engine as _;
    let message: Value = serde_json::from_slice(body).ok()?;
    if message["method"] != "tools/call" {
        return None;
    }
    let name = message["params"]["name"].as_str()?;
    if !caller.is_some_and(|c| c.may_call(name)) {
        return None;
    }
    let snapshot = catalog.snapshot();
    let flow = snapshot.get(name)?.flow.clone()?;
    let arguments = &message["params"]["arguments"];
    for (property, schema) in flow.spec.input_schema["properties"].as_object()? {
        let Some(header) = schema.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let header_name = format!("Mcp-Param-{header}");
        let in_body = match arguments.get(property) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => Some(other.to_string()),
        };
        let problem = match (headers.get(&header_name), in_body) {
            (None, None) => continue,
            (None, Some(_)) => format!(
                "header {header_name} is missing: it must carry arguments.{property} (x-mcp-header)"
            ),
            (Some(_), None) => {
                format!("header {header_name} is set but arguments.{property} is not in the body")
            }
            (Some(value), Some(expected)) => {
                let raw = String::from_utf8_lossy(value.as_bytes()).into_owned();
                let decoded = match raw
                    .strip_prefix("=?base64?")
                    .and_then(|rest| rest.strip_suffix("?="))
                {
                    Some(encoded) => match base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                    {
                        Some(text) => text,
                        None => {
                            return Some((
                                message["id"].clone(),
                                format!(
                                "header {header_name} is not valid Base64 inside =?base64?...?="
                            ),
                            ))
                        }
                    },
                    None => raw,
                };
                if decoded == expected {
                    continue;
                }
                format!("header {header_name} does not match arguments.{property} in the body")
            }
        };
        return Some((message["id"].clone(), problem));
    }
    None
}

/// The Streamable HTTP endpoint, mounted at `/mcp` by the HTTP transport. The `Host` and
/// `Origin` checks are the HTTP transport's (one `http.allowed_hosts` for every route), so
/// rmcp's own are off here. `stateless`: no sessions, every request answered by itself (any
/// replica behind a round-robin proxy can serve any request; see ARCHITECTURE.md).
pub(crate) fn http_service(
    catalog: Arc<Catalog>,
    run_options: exec::Options,
    stateless: bool,
    shutdown: tokio_util::sync::CancellationToken,
    sessions: Sessions,
    shared_tasks: Option<Arc<super::tasks::SharedTasks>>,
    auth: Arc<crate::auth::Auth>,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    FlowTools,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(!stateless)
        .with_cancellation_token(shutdown)
        .disable_allowed_hosts()
        .disable_allowed_origins();
    let tasks: Arc<rmcp::task_manager::TaskManager> = Arc::default();
    let access = super::handler::Access::http(auth);
    StreamableHttpService::new(
        move || {
            Ok(if stateless {
                FlowTools::stateless(catalog.clone(), run_options.clone())
            } else {
                FlowTools::new(catalog.clone(), run_options.clone())
            }
            .with_tasks(tasks.clone(), shared_tasks.clone())
            .with_access(access.clone()))
        },
        sessions,
        config,
    )
}

/// The live sessions of `/mcp` (shared by the service and [`cap_sessions`]).
pub(crate) type Sessions =
    Arc<rmcp::transport::streamable_http_server::session::local::LocalSessionManager>;

pub(crate) fn sessions() -> Sessions {
    Arc::default()
}

/// Past `http.mcp_max_sessions` live sessions, a request that would open another (a POST
/// without `Mcp-Session-Id`) gets 503 with `Retry-After` and a JSON-RPC error; the sessions
/// that exist go on. A session ends with DELETE or after rmcp's 5 minutes without a request.
///
/// A session belongs to the caller that opened it: a request of another caller naming it gets
/// rmcp's own answer for a session that does not exist.
pub(crate) async fn cap_sessions(
    axum::extract::State((sessions, max, owners)): axum::extract::State<(
        Sessions,
        usize,
        SessionOwners,
    )>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let owner = request
        .extensions()
        .get::<Arc<crate::auth::Caller>>()
        .map(|caller| caller.owner.clone());
    let session = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = &session {
        let bound = owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if bound.is_some_and(|bound| Some(bound) != owner) {
            return (
                axum::http::StatusCode::NOT_FOUND,
                "Not Found: Session not found",
            )
                .into_response();
        }
    }
    let opens = request.method() == axum::http::Method::POST
        && !request.headers().contains_key("mcp-session-id");
    if opens {
        let live = sessions.sessions.read().await.len();
        if live >= max {
            tracing::warn!(
                "MCP session refused: {live} are live (http.mcp_max_sessions); clients should DELETE the sessions they end"
            );
            let body = json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {"code": -32000, "message": format!("the server holds {live} MCP sessions, the most it keeps (http.mcp_max_sessions); retry later, or end unused sessions with DELETE")},
            });
            let mut response = (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(body),
            )
                .into_response();
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
            return response;
        }
    }
    let response = next.run(request).await;
    let opened = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let (None, Some(id), Some(owner)) = (session, opened, owner) {
        let live: std::collections::HashSet<String> =
            if owners.lock().unwrap_or_else(|p| p.into_inner()).len() >= max.saturating_mul(2) {
                sessions
                    .sessions
                    .read()
                    .await
                    .keys()
                    .map(|k| k.to_string())
                    .collect()
            } else {
                Default::default()
            };
        let mut owners = owners.lock().unwrap_or_else(|p| p.into_inner());
        if !live.is_empty() {
            // Forget the owners of sessions that ended.
            owners.retain(|id, _| live.contains(id));
        }
        owners.insert(id, owner);
    }
    response
}

/// Who opened each `/mcp` session (by session id).
pub(crate) type SessionOwners = Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<str>>>>;
