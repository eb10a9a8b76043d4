//! The application: the command line, its commands, the configuration they assemble, and the
//! wiring of `serve`. The only part that sees every other part.

pub mod cache_files;
pub mod cli;
mod commands;
pub mod config;
pub mod dev;
pub mod scaffold;
mod serve;
