//! The `flowhost` binary: parse arguments, set up logging to stderr, run the command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use flowhost::{Cli, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| flowhost::default_log_filter(&cli).to_string());
    if let Err(problem) = flowhost::check_log_filter(&filter) {
        eprintln!("flowhost: {problem}");
        return ExitCode::from(2);
    }
    // stdout belongs to the command's output (and to the protocol in stdio mode). Colour only
    // for a person at a terminal: log files and shippers get plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false);
    // rmcp warns of every request it answered with an error as a Rust `Debug` dump of that
    // error; the client has the error, and a log line should be words.
    let no_dumps = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("rmcp")
            && *meta.level() == tracing::Level::WARN
            && meta.fields().field("error").is_some())
    });
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(colour).finish().with(no_dumps).init(),
        LogFormat::Json => logs.json().with_ansi(false).finish().with(no_dumps).init(),
    }
    flowhost::run(cli)
}
