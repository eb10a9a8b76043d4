//! The `http` section of the configuration (and the `runs` retention it carries): what the
//! HTTP transport needs to serve. The app assembles it from the file, overrides and flags.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Largest accepted request body, in bytes, however it arrives.
    pub(crate) body_limit: usize,
    /// How long a connection may take to send a request's line and headers (from its first
    /// byte, or from the accept for a new connection).
    pub(crate) header_timeout: Duration,
    /// How long a request may take to send its whole body.
    pub(crate) body_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub(crate) keepalive_timeout: Duration,
    /// Open connections past which new ones get a 503 at once; None: three quarters of the
    /// open-file limit.
    pub(crate) max_connections: Option<usize>,
    /// Browser origins allowed besides the server's own (CORS and the `Origin` check); empty
    /// means none, `*` any.
    pub(crate) cors_origins: Vec<String>,
    /// `Host` names accepted on every route (any port); empty means the defaults: the
    /// localhost names and the bind address. `*` accepts any host.
    pub(crate) allowed_hosts: Vec<String>,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>`.
    pub(crate) api_key: Option<String>,
    /// Idle time before an SSE keep-alive comment.
    pub(crate) keepalive: Duration,
    /// How long streams may go on after SIGINT/SIGTERM before they are ended.
    pub(crate) shutdown_timeout: Duration,
    /// After SIGTERM, how long the host keeps serving (with `/ready` at 503) before it stops
    /// accepting, so a proxy or the endpoints controller stops sending first.
    pub(crate) drain_delay: Duration,
    /// Async runs: how long and how many are kept (`runs:` section).
    pub(crate) runs: super::runs::store::Retention,
    /// Serve `/mcp` without sessions: every request is answered by itself, so any replica
    /// behind a round-robin proxy can answer any request of any client.
    pub(crate) mcp_stateless: bool,
    /// Live `/mcp` sessions past which a new one is refused (503).
    pub(crate) mcp_max_sessions: usize,
    /// The key 2026-07-28 `requestState` values are sealed with (HMAC): replicas behind one
    /// proxy share it so any of them can serve a call's next round. None: a random key per
    /// process.
    pub(crate) mcp_state_key: Option<String>,
}

impl Settings {
    /// The connection bounds these settings give.
    pub(crate) fn connection_limits(&self) -> super::conn::Limits {
        super::conn::Limits {
            header_timeout: self.header_timeout,
            keepalive_timeout: self.keepalive_timeout,
            max_connections: self
                .max_connections
                .unwrap_or_else(super::conn::default_max_connections),
        }
    }

    /// The `Host` names accepted when `allowed_hosts` is empty.
    pub(crate) fn effective_allowed_hosts(&self) -> Vec<String> {
        if !self.allowed_hosts.is_empty() {
            return self.allowed_hosts.clone();
        }
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        let bind = self.host.trim_start_matches('[').trim_end_matches(']');
        if !hosts.iter().any(|h| h == bind) {
            hosts.push(bind.to_string());
        }
        hosts
    }
}
