//! The discovery routes: what a caller may see of the catalog (`GET /flows`, `/ops`,
//! `/resources`, `/resources/read`, `/prompts`, `/prompts/{name}`, `/openapi.json`), each
//! filtered by the caller's grant, and the RFC 9728 protected-resource metadata.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::guard::{self, Who};
use super::state::AppState;
use super::{openapi, request};

pub(crate) async fn list_flows(
    State(state): State<AppState>,
    Extension(caller): Who,
) -> Json<Value> {
    Json(
        state
            .catalog
            .snapshot()
            .flows_json(|name| caller.may_call(name), caller.grant.is_all()),
    )
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: RFC 9728's metadata (when `auth.jwt` is
/// set): where to get a token for this server, and the scopes it knows.
pub(crate) async fn metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let suffix = request
        .uri()
        .path()
        .strip_prefix(guard::METADATA_PATH)
        .unwrap_or_default();
    let resource = format!("{}{suffix}", guard::base_url(&headers));
    match state.auth.resource_metadata(&resource) {
        Some(document) => Json(document).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "this server takes no OAuth tokens (auth.jwt is not set)",
        )
        .into_response(),
    }
}

/// `GET /resources`: what `resources/list` and `resources/templates/list` give an MCP client.
pub(crate) async fn list_resources(
    State(state): State<AppState>,
    Extension(caller): Who,
) -> Json<Value> {
    let listed =
        crate::catalog::content::list(&state.catalog.snapshot(), |name| caller.may_call(name));
    Json(json!({"resources": listed["resources"], "resourceTemplates": listed["templates"]}))
}

/// `GET /prompts`: what `prompts/list` gives an MCP client.
pub(crate) async fn list_prompts(
    State(state): State<AppState>,
    Extension(caller): Who,
) -> Json<Value> {
    let listed =
        crate::catalog::content::list(&state.catalog.snapshot(), |name| caller.may_call(name));
    Json(json!({"prompts": listed["prompts"]}))
}

#[derive(serde::Deserialize)]
pub(crate) struct ReadQuery {
    uri: Option<String>,
}

/// `GET /resources/read?uri=...`: MCP's `resources/read` result.
pub(crate) async fn read_resource(
    State(state): State<AppState>,
    Extension(caller): Who,
    axum::extract::Query(query): axum::extract::Query<ReadQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(uri) = query.uri.filter(|u| !u.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "GET /resources/read needs ?uri=... (a URI from GET /resources, e.g. flow://echo_flow)",
        ));
    };
    if let Some(flow) = crate::catalog::content::flow_of_uri(&uri) {
        if caller.refused(flow, state.catalog.snapshot().get(flow).is_some()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                request::not_yours(flow),
            ));
        }
    }
    let snapshot = state.catalog.snapshot();
    let contents = content_call(move || crate::catalog::content::read(&snapshot, &uri)).await?;
    Ok(Json(json!({"contents": contents})))
}

/// `GET /prompts/{name}?arg=value...`: MCP's `prompts/get` result.
pub(crate) async fn get_prompt(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(arguments): axum::extract::Query<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    prompt_messages(&state, name, arguments).await
}

/// `POST /prompts/{name}` with the arguments as a JSON object body.
pub(crate) async fn get_prompt_post(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let arguments = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "the body must be a JSON object of prompt arguments",
                ))
            }
            Err(err) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {err}"),
                ))
            }
        }
    };
    prompt_messages(&state, name, arguments).await
}

/// One prompt's messages for the HTTP routes (HTTP has nobody to answer a prompt's questions).
pub(crate) async fn prompt_messages(
    state: &AppState,
    name: String,
    arguments: Map<String, Value>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.catalog.snapshot();
    let result = content_call(move || {
        crate::catalog::content::prompt(&snapshot, &name, &arguments, &Map::new())
    })
    .await?;
    Ok(Json(result))
}

/// Runs plugin content code (may block) off the runtime threads; maps failures to statuses.
pub(crate) async fn content_call<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::catalog::content::ContentError> + Send + 'static,
) -> Result<T, ApiError> {
    use crate::catalog::content::ContentError;
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(ContentError::NotFound(message))) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, message))
        }
        Ok(Err(ContentError::Invalid(message))) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message))
        }
        Ok(Err(asks @ ContentError::NeedsInput(_))) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{asks}; over HTTP there is nobody to ask"),
        )),
        Ok(Err(ContentError::Failed(message))) => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, message))
        }
        Err(err) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the read failed: {err}"),
        )),
    }
}

pub(crate) async fn list_ops(State(state): State<AppState>) -> Json<Value> {
    let mut ops = state.catalog.snapshot().ops_json();
    // The outside MCP servers (`external_mcp`): up or down, restarts, calls, errors, tools.
    if let Some(upstreams) = crate::upstream::get() {
        ops["mcp_servers"] = upstreams.status_json();
    }
    Json(ops)
}

pub(crate) async fn openapi_json(
    State(state): State<AppState>,
    Extension(caller): Who,
) -> Json<Value> {
    Json(openapi::document(
        &state.catalog.snapshot(),
        state.auth.required(),
        &caller,
    ))
}
