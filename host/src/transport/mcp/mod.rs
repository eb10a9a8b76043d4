//! The MCP server (rmcp): every flow is a tool, stream flows included. Served over stdio
//! (newline-delimited JSON-RPC; this module owns the line reader so malformed and oversized
//! lines get JSON-RPC errors instead of silence) and over Streamable HTTP at `/mcp`. Knows
//! nothing of plugins: it reads the catalog's snapshots and runs flows with the executor.
//!
//! One job per file: `handler` (rmcp's `ServerHandler`: tools, resources, prompts,
//! announcements), `call` (running a flow for `tools/call`), `tasks` (calls that became MCP
//! tasks), `ask` (an op's questions to the client, input-required rounds), `logging` (op logs
//! as MCP log messages), `stdio`, `lines` and `known` (the stdio transport; `known` reads the
//! usual requests as their own type instead of rmcp's try-every-type union), `service` (the
//! Streamable HTTP endpoint and its `Mcp-Param-*` check), `access` (who calls: the HTTP
//! guard's caller or stdio's `local`, and who made each task).

mod access;
mod ask;
mod call;
mod handler;
mod known;
pub(crate) mod lines;
mod logging;
mod service;
mod stdio;
mod tasks;
mod traced;

pub(crate) use ask::set_state_key;
pub(crate) use service::{cap_sessions, check_requests, http_service, sessions, SessionOwners};
pub(crate) use stdio::{claim_stdout, serve_stdio, MAX_LINE_BYTES};
pub use stdio::{classify_line, Line};
pub(crate) use tasks::SharedTasks;
