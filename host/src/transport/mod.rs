//! Transports: how runs reach clients. They see the catalog's snapshots and the executor's
//! chunks, never plugins.

pub mod docs;
pub mod error;
pub mod guard;
pub mod http;
pub mod lifecycle;
pub mod lines;
pub mod mcp;
pub mod openai;
pub mod openapi;
pub mod playground;
pub mod request;
pub mod runs;
pub mod sse;
pub mod state;
