//! The application: the command line, its commands, the configuration they assemble, and the
//! wiring of `serve`. The only part that sees every other part.

pub(crate) mod cache_files;
pub(crate) mod cli;
mod commands;
pub(crate) mod config;
pub(crate) mod dev;
pub(crate) mod scaffold;
mod serve;
