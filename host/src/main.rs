//! The `flowhost` binary: parse arguments, set up logging to stderr, run the command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use flowhost::{Cli, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// mimalloc: a non-stream request spent a quarter of its CPU in glibc's malloc and free
/// (`malloc_consolidate` included); with mimalloc the host serves ~45% more of them
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults commit its arena eagerly and keep freed pages for a second: 8 MiB more
/// idle RSS than glibc. These two keep the idle host as small as before. Set as defaults
/// before `main` (from `.init_array`), ahead of the allocations that create the first arena;
/// mimalloc's own `MIMALLOC_*` environment variables still override them.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static ALLOCATOR_OPTIONS: extern "C" fn() = {
    extern "C" fn set() {
        use libmimalloc_sys as mi;
        // mimalloc v3's `mi_option_e` (include/mimalloc.h); the crate names only some.
        const ARENA_EAGER_COMMIT: mi::mi_option_t = 4;
        const PURGE_DELAY: mi::mi_option_t = 15;
        // SAFETY: plain setters of mimalloc's option defaults, called once before any thread.
        unsafe {
            mi::mi_option_set_default(ARENA_EAGER_COMMIT, 0);
            mi::mi_option_set_default(PURGE_DELAY, 0);
        }
    }
    set
};

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
        .with_writer(flowhost::LogWriter)
        .with_target(false);
    // rmcp warns of every request it answered with an error ("response error", fields `id`
    // and `error`) as a Rust `Debug` dump of that error; the client has the error, and a log
    // line should be words. Its other warnings stay.
    let no_dumps = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("rmcp::service")
            && *meta.level() == tracing::Level::WARN
            && meta.fields().field("id").is_some()
            && meta.fields().field("error").is_some())
    });
    match cli.log_format {
        LogFormat::Text if colour => logs.with_ansi(true).finish().with(no_dumps).init(),
        // The same lines without colour, made faster (`util/plain.rs`; it writes the format
        // set above: time, level, spans, no target).
        LogFormat::Text => logs
            .with_ansi(false)
            .fmt_fields(flowhost::PlainFields)
            .event_format(flowhost::PlainLines)
            .finish()
            .with(no_dumps)
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).finish().with(no_dumps).init(),
    }
    flowhost::run(cli)
}
