//! The OpenAPI 3.1 document of what is served now, built from a snapshot on every request (so
//! a reload is reflected at once). 3.1 schema objects are JSON Schema, so each flow's
//! `input_schema` is embedded as is.

use serde_json::{json, Map, Value};

use crate::catalog::Snapshot;

pub(crate) fn document(snapshot: &Snapshot, api_key: bool, caller: &crate::auth::Caller) -> Value {
    let mut paths = Map::new();
    for (name, flow) in snapshot.live().filter(|(name, _)| caller.may_call(name)) {
        let spec = &flow.spec;
        let ok = if spec.stream {
            json!({
                "description": "Server-sent events: one `data:{FlowStreamChunk}` per chunk, then `data:[DONE]`",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}
            })
        } else {
            json!({
                "description": "The flow's answer",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowResponse"}}}
            })
        };
        let summary = if spec.description.is_empty() {
            name.clone()
        } else {
            spec.description.clone()
        };
        paths.insert(
            format!("/{name}"),
            json!({"post": {
                "operationId": name,
                "summary": summary,
                "description": format!("`{}`{}", spec.flow_content, if spec.stream { " (streaming)" } else { "" }),
                "tags": [if spec.stream { "stream flows" } else { "flows" }],
                "requestBody": {"required": true, "content": {"application/json": {"schema": spec.input_schema}}},
                "parameters": [
                    {"name": "Prefer", "in": "header", "required": false, "schema": {"type": "string", "enum": ["respond-async"]},
                     "description": "`respond-async`: answer 202 at once with `Location: /runs/{id}`; the run goes on without this connection"},
                    {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string"},
                     "description": "With `Prefer: respond-async`: the same key returns the run it started"}
                ],
                "responses": {
                    "200": ok,
                    "202": {"description": "Started in the background (`Prefer: respond-async`): `{run_id, status_url, events_url, status}`"},
                    "422": {"description": "The body does not match the input schema", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                    "500": {"description": "The flow failed (non-stream flows)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowResponse"}}}},
                    "503": {"description": "The flow is broken and has no good version"}
                }
            }}),
        );
    }
    for (path, summary) in [
        ("/health", "Liveness and what is loaded"),
        ("/flows", "Flows with their status and load errors"),
        ("/ops", "Loaded ops and refused plugins"),
        ("/resources", "Resources (`resources`: each flow as flow://{name}, and what plugins offer) and resource templates (`resourceTemplates`), as MCP's resources/list and resources/templates/list give them"),
        ("/prompts", "Prompts plugins offer, as MCP's prompts/list gives them"),
        ("/v1/models", "Flows as OpenAI models"),
    ] {
        paths.insert(
            path.to_string(),
            json!({"get": {"summary": summary, "tags": ["discovery"], "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}}),
        );
    }
    paths.insert(
        "/resources/read".into(),
        json!({"get": {
            "summary": "Read a resource: MCP's resources/read result (`contents`: `{uri, mimeType, text}` or `{uri, mimeType, blob}` in base64)",
            "description": "`flow://{name}` gives the flow's YAML (`yaml`), status, schemas, ops and load error as JSON. Other URIs are read by the plugin that lists them or whose template matches.",
            "tags": ["resources"],
            "parameters": [{"name": "uri", "in": "query", "required": true, "schema": {"type": "string"}, "example": "flow://echo_flow"}],
            "responses": {"200": {"description": "The contents"}, "400": {"description": "No `uri`"}, "404": {"description": "No such resource"}, "502": {"description": "The plugin failed"}}
        }}),
    );
    paths.insert(
        "/prompts/{name}".into(),
        json!({
            "get": {
                "summary": "A prompt's messages (MCP's prompts/get result); arguments as query parameters",
                "tags": ["prompts"],
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "`{description, messages: [{role, content}]}`"}, "404": {"description": "No such prompt"}, "422": {"description": "A required argument is missing"}}
            },
            "post": {
                "summary": "A prompt's messages, arguments as a JSON object body",
                "tags": ["prompts"],
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": {"type": "string"}}}}},
                "responses": {"200": {"description": "`{description, messages: [{role, content}]}`"}, "404": {"description": "No such prompt"}, "422": {"description": "A required argument is missing"}}
            }
        }),
    );
    paths.insert(
        "/runs/{id}".into(),
        json!({
            "get": {
                "summary": "An async run (started with `Prefer: respond-async` on POST /{flow})",
                "description": "`status` is running, completed, failed or cancelled; once done: `answer`, `success` and `metadata` (`flow_id`, `error`, `failed_ops`). Runs are kept `runs.retention` seconds after they end, in the memory of the replica that started them.",
                "tags": ["async runs"],
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The run"}, "404": {"description": "Unknown or expired"}}
            },
            "delete": {
                "summary": "Cancel an async run",
                "tags": ["async runs"],
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The run, `cancelled` unless it had already ended"}, "404": {"description": "Unknown or expired"}}
            }
        }),
    );
    paths.insert(
        "/runs/{id}/events".into(),
        json!({"get": {
            "summary": "An async run's chunks as server-sent events: replayed from the start, then live, then `data:[DONE]`",
            "tags": ["async runs"],
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "FlowLLM's SSE chunks", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "404": {"description": "Unknown or expired"}}
        }}),
    );
    paths.insert(
        "/events".into(),
        json!({"get": {
            "summary": "Catalog changes as server-sent events",
            "description": "`event: catalog` with `data:` {generation, flows_hash, plugins_hash, flows (as GET /flows), ops (as GET /ops)} at once and after every reload of a flow file or plugin; `: keep-alive` comments while quiet; the stream ends when the host drains. The playground (`GET /`) follows it.",
            "tags": ["discovery"],
            "responses": {"200": {"description": "An endless event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
        }}),
    );
    paths.insert(
        "/v1/chat/completions".into(),
        json!({"post": {
            "summary": "OpenAI-compatible chat completions; `model` names a flow",
            "tags": ["openai"],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["model", "messages"],
                "properties": {
                    "model": {"type": "string", "enum": snapshot.live().filter(|(n, _)| caller.may_call(n)).map(|(n, _)| n.clone()).collect::<Vec<_>>()},
                    "messages": {"type": "array", "items": {"type": "object"}},
                    "stream": {"type": "boolean"}
                }
            }}}},
            "responses": {"200": {"description": "chat.completion, or chat.completion.chunk events when streaming"}}
        }}),
    );
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "flowhost",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Flows served by flowhost (snapshot {}). Stream flows answer with server-sent events.",
                snapshot.generation
            ),
        },
        "paths": paths,
        "components": {"schemas": {
            "FlowResponse": {
                "type": "object",
                "properties": {
                    "answer": {"description": "string, object or array"},
                    "success": {"type": "boolean"},
                    "metadata": {"type": "object"}
                },
                "required": ["answer", "success", "metadata"]
            },
            "FlowStreamChunk": {
                "type": "object",
                "properties": {
                    "flow_id": {"type": "string"},
                    "chunk_type": {"enum": ["answer", "think", "tool", "usage", "error"]},
                    "chunk": {"description": "text, or JSON for tool and usage chunks"},
                    "done": {"type": "boolean"},
                    "metadata": {"type": "object"}
                }
            },
            "Error": {"type": "object", "properties": {"detail": {}}}
        }}
    });
    if api_key {
        document["components"]["securitySchemes"] =
            json!({"bearer": {"type": "http", "scheme": "bearer"}});
        document["security"] = json!([{"bearer": []}]);
    }
    document
}
