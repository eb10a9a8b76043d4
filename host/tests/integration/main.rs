//! flowhost's integration tests: real plugin libraries, the real file watcher, and the real
//! `flowhost` binary. One test binary (see `util` for the shared fixtures).

mod agents;
mod attacks;
mod auth;
mod cli;
mod durable;
mod executor;
mod fuzz;
mod http;
mod isolation;
mod llm;
mod mcp;
mod plugins;
mod policies;
mod reload;
mod security;
mod settings;
mod surface;
mod tidy;
mod traces;
mod upstream;
mod util;
