//! Traces over MCP: the server span of a request (the MCP semantic conventions: `{method}
//! {target}`, `mcp.method.name`, `mcp.session.id`, `mcp.protocol.version`), under the trace
//! context in the request's `params._meta` (SEP-414) when it carries one, else under the HTTP
//! request's span (`/mcp`), else a new trace (stdio).

use rmcp::service::RequestContext;
use rmcp::RoleServer;

use crate::telemetry::{Cx, Kind, Role, Span};

/// The span of one MCP request (`tools/call`, `resources/read`, `prompts/get`); empty when
/// tracing is off.
pub(crate) fn server_span(
    context: &RequestContext<RoleServer>,
    method: &'static str,
    target: Option<&str>,
) -> Span {
    if !crate::telemetry::enabled() {
        return Span::default();
    }
    let parts = context.extensions.get::<axum::http::request::Parts>();
    let parent = Cx::from_meta(&context.meta.0 .0)
        .or_else(|| parts.and_then(|p| p.extensions.get::<Cx>().cloned()))
        .unwrap_or_else(Cx::root);
    let span = parent.start_with(
        Kind::Server,
        || match target {
            Some(target) => format!("{method} {target}"),
            None => method.to_string(),
        },
        |attributes| {
            attributes.set("mcp.method.name", method);
            attributes.set("jsonrpc.request.id", context.id.to_string());
            attributes.set(
                "network.transport",
                if parts.is_some() { "tcp" } else { "pipe" },
            );
            if let Some(session) = parts
                .and_then(|p| p.headers.get("mcp-session-id"))
                .and_then(|v| v.to_str().ok())
            {
                attributes.set("mcp.session.id", session);
            }
            if let Some(info) = context.peer.peer_info() {
                attributes.set("mcp.protocol.version", info.protocol_version.to_string());
            }
        },
    );
    span.role(if method == "tools/call" {
        Role::Tool
    } else {
        Role::Chain
    });
    span
}
