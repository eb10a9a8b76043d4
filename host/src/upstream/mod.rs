//! Outside MCP servers (`external_mcp`): one long-lived session per server (`session.rs`: a
//! stdio child the host owns, Streamable HTTP, or `sse.rs`: the HTTP+SSE transport of 2024-11-05), its tools listed at start and again when it
//! says they changed, restarted with backoff when it crashes or hangs, and the calls flows make
//! to it (`McpOp`, agents' tools, tools served onward). Knows nothing of flows or runs: tools
//! in, text and structured content out; what a call reports on the way (progress, questions
//! for a client) goes to what the caller gave.

mod call;
mod handler;
mod session;
pub(crate) mod settings;
mod sse;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub(crate) use settings::Settings;

use crate::plan::{McpCatalog, McpServer};
use session::Server;

/// The configured servers of this process.
pub(crate) struct Upstreams {
    servers: BTreeMap<String, Arc<Server>>,
    /// Bumped when a server's tools change (the catalog recompiles the flows that use them).
    changes: tokio::sync::watch::Sender<u64>,
}

static INSTALLED: OnceLock<Arc<Upstreams>> = OnceLock::new();

/// The servers of this process, once `start` ran (none in processes without `external_mcp`).
pub(crate) fn get() -> Option<&'static Arc<Upstreams>> {
    INSTALLED.get()
}

/// Asking the caller's client on an upstream server's behalf (its `sampling/createMessage`
/// and `elicitation/create` during a call). `service` is `sample` (op-sdk's
/// `{messages, options}` in, an MCP `CreateMessageResult` out) or `elicit` (MCP's params in,
/// an `ElicitResult` out): the same asking path ops use.
pub(crate) trait Ask: Send + Sync {
    fn ask(&self, service: &'static str, request: Value) -> AskFuture;
}

pub(crate) type AskFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send>>;

/// What a call reports on the way: progress (`progress`, `total`, `message`).
pub(crate) type Progress = Arc<dyn Fn(f64, Option<f64>, Option<String>) + Send + Sync>;

/// One call's options.
pub(crate) struct Call<'a> {
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) progress: Option<Progress>,
    pub(crate) ask: Option<Arc<dyn Ask>>,
    /// Request `_meta` entries (the trace context: `traceparent`, `tracestate`).
    pub(crate) meta: Vec<(String, String)>,
}

/// A tool's result.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The text of its content blocks, one per line (other blocks as JSON).
    pub(crate) text: String,
    pub(crate) structured: Option<Value>,
    /// `isError`: the tool ran and reported a failure (its text says which).
    pub(crate) is_error: bool,
}

/// Why a call has no result.
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) message: String,
    /// The server failed (down, crashed, closed the connection before answering): the same
    /// call may be made again. A timeout or a cancellation is not (the tool may have acted).
    pub(crate) retry: bool,
}

impl Upstreams {
    /// Starts a session for every server (on the current runtime) and makes them this
    /// process's. Waits up to `wait` for their first tool lists (a server that is slower goes
    /// on starting; the flows using it go live when it lists its tools).
    pub(crate) async fn start(settings: &Settings, wait: Duration) -> Arc<Upstreams> {
        // The recorder before the first gauge (a metric recorded before it is lost).
        let _ = crate::metrics::handle();
        let (changes, _) = tokio::sync::watch::channel(0);
        let changes_for = changes.clone();
        let servers = settings
            .servers
            .iter()
            .map(|(name, config)| {
                let server = Server::start(config.clone(), changes_for.clone());
                (name.clone(), server)
            })
            .collect();
        let upstreams = Arc::new(Upstreams { servers, changes });
        let first = upstreams.servers.values().map(|server| server.listed());
        let _ = tokio::time::timeout(wait, futures_util::future::join_all(first)).await;
        for (name, server) in &upstreams.servers {
            if let Some(why) = server.pending() {
                tracing::warn!(server = %name, "MCP server `{name}` has not listed its tools yet ({why}); flows using it go live when it does");
            }
        }
        if INSTALLED.set(upstreams.clone()).is_err() {
            tracing::warn!("MCP servers were started twice in one process; the first set serves");
        }
        upstreams
    }

    /// What flows compile against: each server's tools as last listed.
    pub(crate) fn catalog(&self) -> McpCatalog {
        McpCatalog {
            servers: self
                .servers
                .iter()
                .map(|(name, server)| {
                    let view = McpServer {
                        tools: server.tools(),
                        pending: server.pending(),
                        expose: server.config.expose.clone(),
                    };
                    (name.clone(), view)
                })
                .collect(),
        }
    }

    /// Changes of any server's tools (a counter).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Calls `tool` of `server` with `arguments`.
    pub(crate) async fn call(
        &self,
        server: &str,
        tool: &str,
        arguments: Map<String, Value>,
        call: Call<'_>,
    ) -> Result<Reply, CallError> {
        let Some(found) = self.servers.get(server) else {
            return Err(CallError {
                message: format!(
                    "no MCP server `{server}` (external_mcp names {})",
                    self.names()
                ),
                retry: false,
            });
        };
        found.call(tool, arguments, call).await
    }

    fn names(&self) -> String {
        if self.servers.is_empty() {
            return "none".to_string();
        }
        let names: Vec<&str> = self.servers.keys().map(String::as_str).collect();
        names.join(", ")
    }

    /// Each server's state, for `/ops` and `flowhost ops`.
    pub(crate) fn status_json(&self) -> Value {
        Value::Array(self.servers.values().map(|s| s.status_json()).collect())
    }
}

/// Stops every server's child process (at exit; they are also killed if the host dies).
pub(crate) fn stop_all() {
    if let Some(upstreams) = get() {
        for server in upstreams.servers.values() {
            server.stop();
        }
    }
}
