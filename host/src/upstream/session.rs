//! One outside server: its session (rmcp's client over a child's stdio or Streamable HTTP),
//! kept open by a supervisor task that lists the tools, waits for the session to end, and
//! opens it again with backoff (at once for a call that is waiting, at most twice a second);
//! the calls made to it; what it asks or reports during a call, routed to that call.
// Sampling and logging: deprecated by SEP-2577, part of the 2025 revisions the servers speak.
#![allow(deprecated)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
    ClientCapabilities, ClientInfo, ClientRequest, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, ErrorData, Implementation, LoggingMessageNotificationParam,
    ProgressNotificationParam, ProgressToken, RequestMetaObject, ServerResult,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestContext, RoleClient};
use rmcp::ServiceExt;
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::settings::{self, Transport};
use super::{Ask, Call, CallError, Progress, Reply};
use crate::plan::McpTool;

/// How long a session may take to open (spawn or connect, `initialize`, the first tool list).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait between two attempts to open a session.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a call waits for a server that is down to come back.
const WAIT_FOR_UP: Duration = Duration::from_secs(10);
/// How long a server has to answer a ping after a call timed out before it counts as hung.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Server {
    pub(super) config: settings::Server,
    state: Mutex<State>,
    /// The open session's peer (None while down); calls wait on it.
    up: watch::Sender<Option<Peer<RoleClient>>>,
    /// Attempts to open a session so far (the first listing waits for one).
    attempts: watch::Sender<u64>,
    /// A call is waiting for a session: skip the rest of the backoff.
    wake: Notify,
    /// Ends the current session (a hung server: its child is killed).
    end_session: Mutex<CancellationToken>,
    stopped: CancellationToken,
    changes: watch::Sender<u64>,
    routes: Mutex<Vec<Route>>,
    next_route: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
struct State {
    tools: Option<Arc<[McpTool]>>,
    /// Why the server is not up (None while it is).
    down: Option<String>,
    restarts: u64,
    pid: Option<u32>,
    /// The last line it wrote to stderr (a crash's last words).
    last_stderr: String,
    since: Option<Instant>,
}

/// A call in flight: where its progress and its server's questions go.
struct Route {
    id: u64,
    token: ProgressToken,
    progress: Option<Progress>,
    ask: Option<Arc<dyn Ask>>,
}

impl Server {
    pub(super) fn start(config: settings::Server, changes: watch::Sender<u64>) -> Arc<Server> {
        let server = Arc::new(Server {
            config,
            state: Mutex::new(State {
                down: Some("starting".to_string()),
                ..State::default()
            }),
            up: watch::channel(None).0,
            attempts: watch::channel(0).0,
            wake: Notify::new(),
            end_session: Mutex::new(CancellationToken::new()),
            stopped: CancellationToken::new(),
            changes,
            routes: Mutex::new(Vec::new()),
            next_route: AtomicU64::new(1),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        tokio::spawn(server.clone().supervise());
        server
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once the first attempt to open a session ended (either way).
    pub(super) async fn listed(&self) {
        let mut attempts = self.attempts.subscribe();
        let _ = attempts.wait_for(|n| *n > 0).await;
    }

    pub(super) fn tools(&self) -> Option<Arc<[McpTool]>> {
        self.lock().tools.clone()
    }

    /// Why the tools are not known yet (None once they are).
    pub(super) fn pending(&self) -> Option<String> {
        let state = self.lock();
        match &state.tools {
            Some(_) => None,
            None => Some(state.down.clone().unwrap_or_else(|| "starting".into())),
        }
    }

    pub(super) fn stop(&self) {
        self.stopped.cancel();
    }

    pub(super) fn status_json(&self) -> Value {
        let state = self.lock();
        let transport = match &self.config.transport {
            Transport::Stdio { command, .. } => serde_json::json!({"stdio": command}),
            Transport::Http { url, .. } => {
                serde_json::json!({"streamable_http": shown_url(url)})
            }
        };
        serde_json::json!({
            "name": self.config.name,
            "state": if state.down.is_none() { "up" } else { "down" },
            "reason": state.down,
            "transport": transport,
            "pid": state.pid,
            "tools": state.tools.as_ref().map(|t| t.iter().map(|t| t.name.clone()).collect::<Vec<_>>()),
            "restarts": state.restarts,
            "calls": self.calls.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "expose": self.config.expose.is_some(),
        })
    }

    /// Keeps a session open until the host stops.
    async fn supervise(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            let opened = Instant::now();
            let ended = tokio::select! {
                ended = self.session() => ended,
                _ = self.stopped.cancelled() => return,
            };
            self.up.send_replace(None);
            self.attempts.send_modify(|n| *n += 1);
            let reason = match ended {
                Ok(reason) => reason,
                Err(reason) => reason,
            };
            {
                let mut state = self.lock();
                let words = std::mem::take(&mut state.last_stderr);
                let reason = if words.is_empty() {
                    reason
                } else {
                    format!("{reason}; its last words on stderr: {words}")
                };
                tracing::warn!(
                    server = self.name(),
                    "MCP server `{}` is down: {reason}",
                    self.name()
                );
                state.down = Some(reason);
                state.pid = None;
                state.restarts += 1;
            }
            metrics::gauge!(crate::metrics::UPSTREAM_UP, "server" => self.config.name.clone())
                .set(0.0);
            metrics::counter!(crate::metrics::UPSTREAM_RESTARTS, "server" => self.config.name.clone())
                .increment(1);
            if self.stopped.is_cancelled() {
                return;
            }
            // A session that served a while starts the backoff over.
            if opened.elapsed() > Duration::from_secs(60) {
                failures = 0;
            }
            let backoff = (Duration::from_millis(250) * 2u32.saturating_pow(failures.min(8)))
                .min(MAX_BACKOFF);
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = async {
                    self.wake.notified().await;
                    tokio::time::sleep(backoff.min(Duration::from_millis(500))).await;
                } => {}
                _ = self.stopped.cancelled() => return,
            }
        }
    }

    /// One session: opens it, serves until it ends; Ok(why it ended) or Err(why it did not
    /// open).
    async fn session(self: &Arc<Self>) -> Result<String, String> {
        let end = CancellationToken::new();
        *self.end_session.lock().unwrap_or_else(|p| p.into_inner()) = end.clone();
        let handler = Handler {
            server: Arc::downgrade(self),
        };
        let running = tokio::time::timeout(OPEN_TIMEOUT, self.open(handler))
            .await
            .map_err(|_| {
                format!(
                    "it did not answer `initialize` within {}s",
                    OPEN_TIMEOUT.as_secs()
                )
            })??;
        let peer = running.peer().clone();
        let tools = tokio::time::timeout(OPEN_TIMEOUT, peer.list_all_tools())
            .await
            .map_err(|_| {
                format!(
                    "it did not list its tools within {}s",
                    OPEN_TIMEOUT.as_secs()
                )
            })?
            .map_err(|err| format!("listing its tools failed: {err}"))?;
        self.set_tools(tools);
        {
            let mut state = self.lock();
            state.down = None;
            state.since = Some(Instant::now());
        }
        tracing::info!(server = self.name(), "MCP server `{}` is up", self.name());
        metrics::gauge!(crate::metrics::UPSTREAM_UP, "server" => self.config.name.clone()).set(1.0);
        self.up.send_replace(Some(peer));
        self.attempts.send_modify(|n| *n += 1);
        let closer = running.cancellation_token();
        let waiting = running.waiting();
        tokio::pin!(waiting);
        tokio::select! {
            quit = &mut waiting => Ok(match quit {
                Ok(rmcp::service::QuitReason::Closed) => "it closed the connection (it exited or crashed)".to_string(),
                Ok(reason) => format!("the session ended ({reason:?})"),
                Err(err) => format!("the session ended ({err})"),
            }),
            _ = end.cancelled() => {
                closer.cancel();
                let _ = waiting.await;
                Ok(format!("it stopped answering (no reply to a ping within {}s); restarted", PING_TIMEOUT.as_secs()))
            }
        }
    }

    /// Spawns the child or connects, and runs `initialize`.
    async fn open(
        self: &Arc<Self>,
        handler: Handler,
    ) -> Result<rmcp::service::RunningService<RoleClient, Handler>, String> {
        match &self.config.transport {
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args).env_clear().envs(env).kill_on_drop(true);
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                #[cfg(target_os = "linux")]
                // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
                unsafe {
                    cmd.pre_exec(|| {
                        // Killed with the host, however the host ends (kill -9 included).
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|err| format!("cannot start `{command}`: {err}"))?;
                self.lock().pid = transport.id();
                if let Some(stderr) = stderr {
                    tokio::spawn(forward_stderr(Arc::downgrade(self), stderr));
                }
                handler
                    .serve(transport)
                    .await
                    .map_err(|err| format!("`initialize` failed: {err}"))
            }
            Transport::Http { url, headers } => {
                let mut config =
                    rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.as_str());
                let mut custom = std::collections::HashMap::new();
                for (name, value) in headers {
                    if name.eq_ignore_ascii_case("authorization") {
                        let token = value.strip_prefix("Bearer ").unwrap_or(value);
                        config = config.auth_header(token.to_string());
                        continue;
                    }
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name.as_bytes()),
                        http::HeaderValue::from_str(value),
                    ) {
                        custom.insert(name, value);
                    }
                }
                let config = config.custom_headers(custom);
                let transport = rmcp::transport::StreamableHttpClientTransport::from_config(config);
                handler
                    .serve(transport)
                    .await
                    .map_err(|err| format!("connecting or `initialize` failed: {err}"))
            }
        }
    }

    fn set_tools(&self, listed: Vec<rmcp::model::Tool>) {
        let tools: Arc<[McpTool]> = listed
            .into_iter()
            .map(|tool| McpTool {
                name: tool.name.to_string(),
                description: tool.description.map(|d| d.to_string()).unwrap_or_default(),
                input_schema: Value::Object((*tool.input_schema).clone()),
            })
            .collect();
        let mut state = self.lock();
        if state.tools.as_deref() == Some(&*tools) {
            return;
        }
        tracing::info!(
            server = self.name(),
            tools = tools.len(),
            "MCP server `{}` lists {} tools",
            self.name(),
            tools.len()
        );
        state.tools = Some(tools);
        drop(state);
        self.changes.send_modify(|n| *n += 1);
    }

    /// The server said its tools changed: list them again.
    fn relist(self: &Arc<Self>) {
        let Some(peer) = self.up.borrow().clone() else {
            return;
        };
        let server = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(OPEN_TIMEOUT, peer.list_all_tools()).await {
                Ok(Ok(tools)) => server.set_tools(tools),
                Ok(Err(err)) => tracing::warn!(
                    server = server.name(),
                    "listing the tools of MCP server `{}` again failed: {err}",
                    server.name()
                ),
                Err(_) => tracing::warn!(
                    server = server.name(),
                    "MCP server `{}` did not list its tools within {}s",
                    server.name(),
                    OPEN_TIMEOUT.as_secs()
                ),
            }
        });
    }

    /// The open session's peer, waiting up to [`WAIT_FOR_UP`] for one.
    async fn peer(&self, cancel: &CancellationToken) -> Result<Peer<RoleClient>, CallError> {
        let mut up = self.up.subscribe();
        if let Some(peer) = up.borrow().clone() {
            return Ok(peer);
        }
        self.wake.notify_one();
        let waited = tokio::select! {
            waited = tokio::time::timeout(WAIT_FOR_UP, up.wait_for(Option::is_some)) => waited,
            _ = cancel.cancelled() => return Err(CallError { message: "cancelled".into(), retry: false }),
        };
        if let Ok(Ok(peer)) = waited {
            if let Some(peer) = peer.clone() {
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
        let peer = self.peer(call.cancel).await?;
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = Some(arguments);
        let mut options = PeerRequestOptions::no_options();
        if !call.meta.is_empty() {
            let mut meta = RequestMetaObject::default();
            for (key, value) in call.meta {
                meta.0.insert(key, Value::String(value));
            }
            options.meta = Some(meta);
        }
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let mut handle = peer
            .send_request_with_option(request, options)
            .await
            .map_err(|err| CallError {
                message: format!(
                    "MCP server `{}`: sending the call failed: {err}",
                    self.name()
                ),
                retry: true,
            })?;
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
                self.check_alive(peer);
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
        let words = self.lock().last_stderr.clone();
        let words = if words.is_empty() {
            String::new()
        } else {
            format!("; its last words on stderr: {words}")
        };
        CallError {
            message: format!(
                "MCP server `{}` went away during `{tool}` ({detail}: it crashed, exited or dropped the connection{words}); it is being restarted",
                self.name()
            ),
            retry: true,
        }
    }

    /// After a timeout: a server that does not answer a ping either is hung, and its session
    /// is ended (the child killed) so the supervisor opens a new one.
    fn check_alive(self: &Arc<Self>, peer: Peer<RoleClient>) {
        let server = self.clone();
        tokio::spawn(async move {
            let ping = peer.send_request(ClientRequest::PingRequest(Default::default()));
            if tokio::time::timeout(PING_TIMEOUT, ping).await.is_err() {
                tracing::warn!(
                    server = server.name(),
                    "MCP server `{}` does not answer a ping: ending its session",
                    server.name()
                );
                server
                    .end_session
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .cancel();
            }
        });
    }

    fn route_of(&self, token: &ProgressToken) -> Option<(Option<Progress>, Option<Arc<dyn Ask>>)> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .find(|r| &r.token == token)
            .map(|r| (r.progress.clone(), r.ask.clone()))
    }

    /// Where a server's question goes: the call it names by progress token, else the newest
    /// call in flight that can ask.
    fn asker(&self, token: Option<ProgressToken>) -> Option<Arc<dyn Ask>> {
        if let Some(ask) = token
            .and_then(|t| self.route_of(&t))
            .and_then(|(_, ask)| ask)
        {
            return Some(ask);
        }
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.iter().rev().find_map(|r| r.ask.clone())
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

/// A URL without credentials or query (for logs and `/ops`).
fn shown_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            format!(
                "{}://{}{}",
                uri.scheme_str().unwrap_or("http"),
                uri.host().unwrap_or_default(),
                uri.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + uri.path()
        }
        Err(_) => "(not a URL)".to_string(),
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

/// The server's stderr, line by line into the host's log under its name.
async fn forward_stderr(server: Weak<Server>, stderr: tokio::process::ChildStderr) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(server) = server.upgrade() else {
            return;
        };
        let line: String = line.chars().take(2000).collect();
        tracing::info!(target: "flowhost::upstream", server = server.name(), "{line}");
        server.lock().last_stderr = line;
    }
}

/// The client side of a session: what the server may ask and tell.
#[derive(Clone)]
pub(super) struct Handler {
    server: Weak<Server>,
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

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(server) = self.server.upgrade() {
            server.relist();
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
