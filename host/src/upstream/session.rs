//! One outside server: its session (rmcp's client over a child's stdio or Streamable HTTP),
//! kept open by a supervisor task that lists the tools, waits for the session to end, and
//! opens it again with backoff (at once for a call that is waiting, at most twice a second);
//! the calls made to it; what it asks or reports during a call, routed to that call.
// Sampling and logging: deprecated by SEP-2577, part of the 2025 revisions the servers speak.
#![allow(deprecated)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rmcp::model::ProgressToken;
use rmcp::service::{Peer, RoleClient};
use rmcp::ServiceExt;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::handler::Handler;
use super::settings::{self, Transport};
use super::{Ask, Progress};
use crate::plan::McpTool;

/// How long a session may take to open (spawn or connect, `initialize`, the first tool list).
pub(super) const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait between two attempts to open a session.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a call waits for a server that is down to come back.
pub(super) const WAIT_FOR_UP: Duration = Duration::from_secs(10);
/// How long a server has to answer a ping after a call timed out before it counts as hung.
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Server {
    pub(super) config: settings::Server,
    pub(super) state: Mutex<State>,
    /// The open session's peer (None while down); calls wait on it.
    pub(super) up: watch::Sender<Option<Peer<RoleClient>>>,
    /// Attempts to open a session so far (the first listing waits for one).
    pub(super) attempts: watch::Sender<u64>,
    /// A call is waiting for a session: skip the rest of the backoff.
    pub(super) wake: Notify,
    /// Ends the current session (a hung server: its child is killed).
    pub(super) end_session: Mutex<CancellationToken>,
    /// Sessions opened so far: a call's check of a hung server acts on its own session only.
    pub(super) sessions: AtomicU64,
    pub(super) stopped: CancellationToken,
    pub(super) changes: watch::Sender<u64>,
    pub(super) routes: Mutex<Vec<Route>>,
    pub(super) next_route: AtomicU64,
    pub(super) calls: AtomicU64,
    pub(super) errors: AtomicU64,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) tools: Option<Arc<[McpTool]>>,
    /// Why the server is not up (None while it is).
    pub(super) down: Option<String>,
    pub(super) restarts: u64,
    pub(super) pid: Option<u32>,
    /// The last line it wrote to stderr (a crash's last words).
    pub(super) last_stderr: String,
    pub(super) since: Option<Instant>,
}

/// Where a call's progress and its server's questions go.
pub(super) type Routed = (Option<Progress>, Option<Arc<dyn Ask>>);

/// A call in flight: where its progress and its server's questions go.
pub(super) struct Route {
    pub(super) id: u64,
    pub(super) token: ProgressToken,
    pub(super) progress: Option<Progress>,
    pub(super) ask: Option<Arc<dyn Ask>>,
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
            sessions: AtomicU64::new(0),
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

    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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
        kill_group(self.lock().pid.take());
    }

    pub(super) fn status_json(&self) -> Value {
        let state = self.lock();
        let transport = match &self.config.transport {
            Transport::Stdio { .. } => Value::from("stdio"),
            Transport::Http { url, sse, .. } => {
                let kind = if *sse { "sse" } else { "streamable_http" };
                serde_json::json!({ kind: settings::shown_url(url) })
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
            // Its own task: a panic in a session (a transport's) ends that session, not the
            // supervisor.
            let server = self.clone();
            let mut session = tokio::spawn(async move { server.session().await });
            let ended = tokio::select! {
                ended = &mut session => ended.unwrap_or_else(|err| Err(format!("the session failed: {err}"))),
                _ = self.stopped.cancelled() => {
                    session.abort();
                    return;
                }
            };
            self.up.send_replace(None);
            self.attempts.send_modify(|n| *n += 1);
            let reason = match ended {
                Ok(reason) => reason,
                Err(reason) => reason,
            };
            {
                let mut state = self.lock();
                // What it started goes with it (`npx` → `node`).
                kill_group(state.pid.take());
                // Its last words go to the log only (they may hold what callers must not see).
                let words = std::mem::take(&mut state.last_stderr);
                if words.is_empty() {
                    tracing::warn!(
                        server = self.name(),
                        "MCP server `{}` is down: {reason}",
                        self.name()
                    );
                } else {
                    tracing::warn!(
                        server = self.name(),
                        "MCP server `{}` is down: {reason}; its last words on stderr: {words}",
                        self.name()
                    );
                }
                state.down = Some(reason);
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
        self.sessions.fetch_add(1, Ordering::Relaxed);
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
                kill_group(self.lock().pid);
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
                // Its own process group: a restart or the host's exit kills what it started too
                // (`npx` → `node`).
                cmd.process_group(0);
                #[cfg(target_os = "linux")]
                // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
                unsafe {
                    cmd.pre_exec(|| {
                        // Killed when the thread that started it ends, which is the spawner
                        // thread below: with the host, however the host ends (kill -9
                        // included). Its own children see stdin close and exit.
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let (transport, stderr) = spawn(cmd)
                    .await
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
            Transport::Http {
                url,
                headers,
                sse: true,
            } => {
                let transport = super::sse::connect(url, headers, OPEN_TIMEOUT).await?;
                handler
                    .serve(transport)
                    .await
                    .map_err(|err| format!("`initialize` failed: {err}"))
            }
            Transport::Http { url, headers, .. } => {
                let config =
                    rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.as_str());
                let mut custom = std::collections::HashMap::new();
                for (name, value) in headers {
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name.as_bytes()),
                        http::HeaderValue::from_str(value),
                    ) {
                        custom.insert(name, value);
                    }
                }
                let config = config.custom_headers(custom);
                let transport = rmcp::transport::StreamableHttpClientTransport::from_config(config);
                handler.serve(transport).await.map_err(|err| {
                    let text = err
                        .to_string()
                        .replace(url.as_str(), &settings::shown_url(url));
                    format!("connecting or `initialize` failed: {text}")
                })
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

    /// The server said its tools changed: list them again (on the session that said so).
    pub(super) fn relist(self: &Arc<Self>, peer: Peer<RoleClient>) {
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
}

type Spawned = std::io::Result<(
    rmcp::transport::TokioChildProcess,
    Option<tokio::process::ChildStderr>,
)>;

/// Starts a stdio server from one thread that lives as long as the host: `PR_SET_PDEATHSIG`
/// fires when the thread that forked the child ends, and the runtime's threads come and go.
async fn spawn(command: tokio::process::Command) -> Spawned {
    type Job = (
        tokio::process::Command,
        tokio::runtime::Handle,
        tokio::sync::oneshot::Sender<Spawned>,
    );
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("mcp-spawner".into())
            .spawn(move || {
                for (command, runtime, reply) in rx {
                    // The child's pipes and reaper belong to the runtime that asked.
                    let _entered = runtime.enter();
                    let spawned = rmcp::transport::TokioChildProcess::builder(command)
                        .stderr(std::process::Stdio::piped())
                        .spawn();
                    let _ = reply.send(spawned);
                }
            });
        if let Err(err) = started {
            tracing::error!("cannot start the thread that starts MCP servers: {err}");
        }
        Mutex::new(tx)
    });
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = (command, tokio::runtime::Handle::current(), reply);
    let sent = spawner.lock().unwrap_or_else(|p| p.into_inner()).send(job);
    if sent.is_err() {
        return Err(std::io::Error::other(
            "the thread that starts MCP servers is gone",
        ));
    }
    answer.await.unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the thread that starts MCP servers is gone",
        ))
    })
}

/// Kills a stdio server's process group (what it started too).
pub(super) fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) {
        // SAFETY: a plain syscall; the group is the child's own (`process_group(0)`).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
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
