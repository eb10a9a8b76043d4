//! The client side of a session (rmcp's `ClientHandler`): what an outside server may ask
//! (sampling, elicitation: through the asking path of the call in flight) and tell (progress
//! for a call, its tool list changed, log lines).
// Sampling and logging: deprecated by SEP-2577, part of the 2025 revisions the servers speak.
#![allow(deprecated)]

use std::sync::{Arc, Weak};

use rmcp::model::{
    ClientCapabilities, ClientInfo, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, ErrorData, Implementation, LoggingMessageNotificationParam,
    ProgressNotificationParam, ProgressToken,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient};
use serde_json::{Map, Value};

use super::session::Server;
use super::Ask;

/// The client side of a session: what the server may ask and tell.
#[derive(Clone)]
pub(super) struct Handler {
    pub(super) server: Weak<Server>,
}

impl rmcp::ClientHandler for Handler {
    fn get_info(&self) -> ClientInfo {
        let capabilities: ClientCapabilities = serde_json::from_value(
            serde_json::json!({"sampling": {}, "elicitation": {"form": {}}}),
        )
        .unwrap_or_default();
        ClientInfo::new(
            capabilities,
            Implementation::new("flowhost", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let ask = self.asker(params.meta.as_ref().and_then(|m| m.get_progress_token()))?;
        let mut raw = serde_json::to_value(&params).unwrap_or(Value::Null);
        let messages = raw["messages"].take();
        let mut options = Map::new();
        for key in [
            "systemPrompt",
            "maxTokens",
            "temperature",
            "stopSequences",
            "modelPreferences",
        ] {
            if let Some(value) = raw.get(key).filter(|v| !v.is_null()) {
                options.insert(key.to_string(), value.clone());
            }
        }
        let request = serde_json::json!({"messages": messages, "options": options});
        let answer = ask
            .ask("sample", request)
            .await
            .map_err(|err| ErrorData::internal_error(err, None))?;
        serde_json::from_value(answer).map_err(|err| {
            ErrorData::internal_error(
                format!("the sampling answer is not a CreateMessageResult: {err}"),
                None,
            )
        })
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let Ok(ask) = self.asker(None) else {
            return serde_json::from_value(serde_json::json!({"action": "decline"}))
                .map_err(|err| ErrorData::internal_error(err.to_string(), None));
        };
        let request = serde_json::to_value(&request).unwrap_or(Value::Null);
        match ask.ask("elicit", request).await {
            Ok(answer) => serde_json::from_value(answer).map_err(|err| {
                ErrorData::internal_error(
                    format!("the elicitation answer is not an ElicitResult: {err}"),
                    None,
                )
            }),
            // No client that shows forms: declined, as the MCP clients do.
            Err(message) => {
                tracing::info!("an MCP server's elicitation was declined: {message}");
                serde_json::from_value(serde_json::json!({"action": "decline"}))
                    .map_err(|err| ErrorData::internal_error(err.to_string(), None))
            }
        }
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let Some(server) = self.server.upgrade() else {
            return;
        };
        if let Some((Some(progress), _)) = server.route_of(&params.progress_token) {
            progress(params.progress, params.total, params.message);
        }
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        if let Some(server) = self.server.upgrade() {
            server.relist(context.peer);
        }
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(server) = self.server.upgrade() {
            tracing::info!(target: "flowhost::upstream", server = server.name(), level = ?params.level, "{}", params.data);
        }
    }
}

impl Handler {
    fn asker(&self, token: Option<ProgressToken>) -> Result<Arc<dyn Ask>, ErrorData> {
        self.server
            .upgrade()
            .and_then(|server| server.asker(token))
            .ok_or_else(|| {
                ErrorData::invalid_request(
                    "flowhost has no call in flight from this server that could ask a client or an LLM",
                    None,
                )
            })
    }
}
