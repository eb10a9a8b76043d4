//! A call to an outside server's tool: waiting for its session, the request with its
//! trace context, the call's route (progress, questions), its deadline and cancellation (told
//! to the server), a hung server found by a ping and its session ended.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
    ClientRequest, ProgressToken, RequestMetaObject, ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions, RoleClient};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::session::{Route, Routed, Server, PING_TIMEOUT, WAIT_FOR_UP};
use super::{Ask, Call, CallError, Reply};

impl Server {
    /// The open session's peer, waiting up to [`WAIT_FOR_UP`] for one (a session whose
    /// connection closed counts as none: the supervisor is about to notice).
    async fn peer(&self, cancel: &CancellationToken) -> Result<Peer<RoleClient>, CallError> {
        let open = |peer: &Option<Peer<RoleClient>>| {
            peer.as_ref().filter(|p| !p.is_transport_closed()).cloned()
        };
        let mut up = self.up.subscribe();
        if let Some(peer) = open(&up.borrow()) {
            return Ok(peer);
        }
        self.wake.notify_one();
        let waited = tokio::select! {
            waited = tokio::time::timeout(WAIT_FOR_UP, up.wait_for(|p| open(p).is_some())) => waited,
            _ = cancel.cancelled() => return Err(CallError { message: "cancelled".into(), retry: false }),
        };
        if let Ok(Ok(peer)) = waited {
            if let Some(peer) = open(&peer) {
                return Ok(peer);
            }
        }
        let why = self
            .lock()
            .down
            .clone()
            .unwrap_or_else(|| "starting".into());
        Err(CallError {
            message: format!(
                "MCP server `{}` is down ({why}); it is being restarted",
                self.name()
            ),
            retry: true,
        })
    }

    pub(super) async fn call(
        self: &Arc<Self>,
        tool: &str,
        arguments: Map<String, Value>,
        call: Call<'_>,
    ) -> Result<Reply, CallError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.call_inner(tool, arguments, call).await;
        let outcome = match &result {
            Ok(reply) if !reply.is_error => "ok",
            Ok(_) => "tool_error",
            Err(_) => "error",
        };
        if outcome != "ok" {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!(crate::metrics::UPSTREAM_CALLS, "server" => self.config.name.clone(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn call_inner(
        self: &Arc<Self>,
        tool: &str,
        arguments: Map<String, Value>,
        call: Call<'_>,
    ) -> Result<Reply, CallError> {
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = Some(arguments);
        let options = || {
            let mut options = PeerRequestOptions::no_options();
            if !call.meta.is_empty() {
                let mut meta = RequestMetaObject::default();
                for (key, value) in &call.meta {
                    meta.0.insert(key.clone(), Value::String(value.clone()));
                }
                options.meta = Some(meta);
            }
            options
        };
        // A request that could not be sent never reached the server: sent again (once) on the
        // next session when the connection had just closed.
        let mut sent = 0;
        let (peer, mut handle, session) = loop {
            let peer = self.peer(call.cancel).await?;
            let session = self.sessions.load(Ordering::Relaxed);
            let request = ClientRequest::CallToolRequest(CallToolRequest::new(params.clone()));
            match peer.send_request_with_option(request, options()).await {
                Ok(handle) => break (peer, handle, session),
                Err(err) if sent == 0 => {
                    tracing::debug!(
                        server = self.name(),
                        "sending to MCP server `{}` failed ({err}); waiting for its next session",
                        self.name()
                    );
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => {
                    return Err(CallError {
                        message: format!(
                            "MCP server `{}`: sending the call failed: {err}",
                            self.name()
                        ),
                        retry: true,
                    })
                }
            }
        };
        let route = self.next_route.fetch_add(1, Ordering::Relaxed);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Route {
                id: route,
                token: handle.progress_token.clone(),
                progress: call.progress,
                ask: call.ask,
            });
        let mut pending = Pending {
            server: self,
            route,
            peer: peer.clone(),
            id: Some(handle.id.clone()),
        };
        let deadline = call.timeout.or(self.config.timeout);
        let answered = tokio::select! {
            answered = &mut handle.rx => answered,
            _ = call.cancel.cancelled() => {
                pending.cancel("cancelled by the flow's caller");
                return Err(CallError { message: "cancelled".into(), retry: false });
            }
            _ = sleep_or_never(deadline) => {
                pending.cancel("timed out");
                self.check_alive(peer, session);
                let seconds = deadline.map_or(0.0, |d| d.as_secs_f64());
                return Err(CallError {
                    message: format!("MCP server `{}` did not answer `{tool}` within {seconds}s (timeout)", self.name()),
                    retry: false,
                });
            }
        };
        pending.id = None;
        match answered {
            Ok(Ok(ServerResult::CallToolResult(result))) => Ok(reply(result)),
            Ok(Ok(_)) => Err(CallError {
                message: format!("MCP server `{}` answered `{tool}` with something other than a tool result (an input request or a task, which flowhost does not ask upstream servers for)", self.name()),
                retry: false,
            }),
            Ok(Err(rmcp::ServiceError::McpError(error))) => Err(CallError {
                message: format!("MCP server `{}` refused `{tool}`: {}", self.name(), error.message),
                retry: false,
            }),
            Ok(Err(err)) => Err(self.gone(tool, &err.to_string())),
            Err(_) => Err(self.gone(tool, "the session ended")),
        }
    }

    /// The session ended during a call to `tool`.
    fn gone(&self, tool: &str, detail: &str) -> CallError {
        // What it said on stderr stays in the host's log: it may hold what callers must not
        // see.
        let detail = match &self.config.transport {
            super::settings::Transport::Http { url, .. } => {
                detail.replace(url.as_str(), &super::settings::shown_url(url))
            }
            super::settings::Transport::Stdio { .. } => detail.to_string(),
        };
        CallError {
            message: format!(
                "MCP server `{}` went away during `{tool}` ({detail}: it crashed, exited or dropped the connection; its stderr is in the host's log); it is being restarted",
                self.name()
            ),
            retry: true,
        }
    }

    /// After a timeout: while a ping checks the server, new calls wait for the verdict; one
    /// that answers goes on serving, one that does not is hung, and its session is ended (the
    /// child killed) so the supervisor opens a new one.
    fn check_alive(self: &Arc<Self>, peer: Peer<RoleClient>, session: u64) {
        if self.sessions.load(Ordering::Relaxed) != session {
            return;
        }
        let end = self
            .end_session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let server = self.clone();
        self.up.send_if_modified(|up| {
            let current = up.as_ref().is_some_and(|p| !p.is_transport_closed());
            if current {
                *up = None;
            }
            current
        });
        tokio::spawn(async move {
            let ping = peer.send_request(ClientRequest::PingRequest(Default::default()));
            if tokio::time::timeout(PING_TIMEOUT, ping)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                server.up.send_if_modified(|up| {
                    let restore = up.is_none() && !peer.is_transport_closed();
                    if restore {
                        *up = Some(peer);
                    }
                    restore
                });
                return;
            }
            tracing::warn!(
                server = server.name(),
                "MCP server `{}` does not answer a ping: ending its session",
                server.name()
            );
            end.cancel();
        });
    }

    pub(super) fn route_of(&self, token: &ProgressToken) -> Option<Routed> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .find(|r| &r.token == token)
            .map(|r| (r.progress.clone(), r.ask.clone()))
    }

    /// Where a server's question goes: the call it names by progress token, else the one call
    /// in flight when there is exactly one (a server speaks for no call in particular, and
    /// another caller's client must never see its question).
    pub(super) fn asker(&self, token: Option<ProgressToken>) -> Option<Arc<dyn Ask>> {
        if let Some((_, ask)) = token.and_then(|t| self.route_of(&t)) {
            return ask;
        }
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        match routes.as_slice() {
            [only] => only.ask.clone(),
            _ => None,
        }
    }
}

/// A call's request while it waits: dropped unanswered (the run was dropped), it tells the
/// server the call is cancelled; its route goes either way.
struct Pending<'a> {
    server: &'a Server,
    route: u64,
    peer: Peer<RoleClient>,
    id: Option<rmcp::model::RequestId>,
}

impl Pending<'_> {
    fn cancel(&mut self, reason: &str) {
        if let Some(id) = self.id.take() {
            let peer = self.peer.clone();
            let reason = reason.to_string();
            tokio::spawn(async move {
                let _ = peer
                    .notify_cancelled(CancelledNotificationParam::new(Some(id), Some(reason)))
                    .await;
            });
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.cancel("the call was dropped");
        self.server
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| r.id != self.route);
    }
}

async fn sleep_or_never(deadline: Option<Duration>) {
    match deadline {
        Some(deadline) => tokio::time::sleep(deadline).await,
        None => std::future::pending().await,
    }
}

/// A tool result as text (text blocks one per line, a resource's text, other blocks as
/// JSON) and structured content.
fn reply(result: CallToolResult) -> Reply {
    let mut lines = Vec::new();
    for block in &result.content {
        let value = serde_json::to_value(block).unwrap_or(Value::Null);
        let text = match value["type"].as_str() {
            Some("text") => value["text"].as_str().map(str::to_string),
            Some("resource") => value["resource"]["text"].as_str().map(str::to_string),
            _ => None,
        };
        lines.push(text.unwrap_or_else(|| value.to_string()));
    }
    let mut text = lines.join("\n");
    if text.is_empty() {
        if let Some(structured) = &result.structured_content {
            text = structured.to_string();
        }
    }
    Reply {
        text,
        structured: result.structured_content,
        is_error: result.is_error.unwrap_or(false),
    }
}
