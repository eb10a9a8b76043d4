//! The `flowhost` binary: parse arguments, set up logging to stderr, run the command.

use std::process::ExitCode;

use clap::Parser;
use flowhost::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| cli::default_log_filter(&cli.command).to_string());
    // stdout belongs to the command's output (and to the protocol in stdio mode).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    cli::run(cli)
}
