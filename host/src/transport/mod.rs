//! Transports: how runs reach clients. They see the catalog's snapshots and the executor's
//! chunks, never plugins. `http/` serves FlowLLM's routes, the OpenAI API, async runs and the
//! playground; `mcp/` serves MCP over stdio and Streamable HTTP (mounted by `http/`).

pub(crate) mod http;
pub(crate) mod mcp;
