//! flowhost: a plugin host for LLM flows. The binary (`main.rs`) is glue over this library:
//! `app` turns arguments into a configuration and runs commands, `catalog` serves snapshots of
//! flows compiled (`lang`) against the `ops` registry into a `plan`, and `exec` runs a flow into
//! a stream of chunks that `transport` drives to clients. See ARCHITECTURE.md for the map, the
//! parts' arrows and the invariants.
//!
//! The public API is what the binary, the integration tests and the benchmark use: loading and
//! watching a catalog, running a flow, the chunk, the LLM service, the plugin registry, and
//! the parsers of outside input (for the fuzz tests). Everything else is `pub(crate)`, and
//! `unreachable_pub` keeps it that way, so the compiler reports dead code.

#![deny(unreachable_pub)]

mod app;
mod auth;
pub mod catalog;
pub mod chunk;
pub mod exec;
mod lang;
pub mod llm;
mod metrics;
pub mod ops;
mod plan;
mod store;
mod telemetry;
mod transport;
mod upstream;
mod util;

pub use app::cli::{check_log_filter, default_log_filter, run, Cli, LogFormat};
pub use transport::http::ROUTES as HTTP_ROUTES;
pub use util::logs::{LogLine, LogWriter};
pub use util::plain::{PlainFields, PlainFieldsVisitor, PlainLines};

/// The parsers of outside input, for the fuzz tests: `flow_content`, a flow file, an HTTP
/// request body, an MCP stdio line.
pub mod parse {
    pub use crate::lang::parse_file as flow_file;
    pub use crate::lang::{Diagnostic, FileFlows};
    pub use crate::transport::http::{parse_body as http_body, ApiError};
    pub use crate::transport::mcp::{classify_line as mcp_line, Line as McpLine};

    /// Reads a bearer token's header and claims without checking them (None: not a JWT).
    pub fn jwt(token: &str) -> Option<String> {
        crate::auth::jwt::parse_unverified(token)
    }

    /// Whether a flow name passes glob patterns (`auth.keys[].flows`); Err for a bad one.
    pub fn flow_grant(patterns: &[String], flow: &str) -> Result<bool, String> {
        crate::auth::Grant::new(patterns).map(|grant| grant.allows(flow))
    }

    /// Checks an audit trail's hash chain through `files` (oldest first): the number of lines,
    /// or where it breaks.
    pub fn audit_chain(files: &[std::path::PathBuf]) -> Result<u64, String> {
        crate::auth::audit::verify(files).map(|v| v.lines)
    }

    /// Parses a `flow_content` expression; the error as a user reads it.
    pub fn flow_content(source: &str) -> Result<(), String> {
        crate::lang::expr::parse(source)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}
