//! The command line: clap types, the default log filter per command, and the dispatch to the
//! commands (`commands.rs`) and `serve` (`serve.rs`). Argument parsing does no I/O;
//! [`crate::app::config::load`] turns the arguments into a `Config`, and each command is a
//! function over it that returns an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use super::commands::{check, flows, new_op, ops, run_flow, show_config};
use super::serve::serve;
use crate::app::config::{self, Config, Flags};

#[derive(Debug, Parser)]
#[command(name = "flowhost", version, about = "A plugin host for LLM flows: hot-loaded op plugins, live-reloaded YAML flows, streamed over HTTP/SSE and MCP", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log filter for stderr (error, warn, info, debug, or a RUST_LOG-style filter).
    #[arg(long, global = true, env = "FLOWHOST_LOG")]
    pub log: Option<String>,
    /// Log line format on stderr: `text`, or `json` (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FLOWHOST_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve the flows over HTTP (SSE and JSON, FlowLLM-compatible; OpenAI-compatible API).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to bind (default 127.0.0.1; 0.0.0.0 exposes the host to the network).
        #[arg(long)]
        host: Option<String>,
        /// Port (default 8002, FlowLLM's; 0 picks a free one).
        #[arg(long, short)]
        port: Option<u16>,
        /// `http` (default) or `stdio` (MCP: JSON-RPC lines on stdin/stdout).
        #[arg(long, value_enum)]
        transport: Option<Transport>,
        /// Require `Authorization: Bearer KEY` on every route but /health, /ready, the /docs
        /// page and the playground page (/, /playground.js, /playground.css).
        #[arg(long, env = "FLOWHOST_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Do not watch flow and plugin folders for changes.
        #[arg(long)]
        no_watch: bool,
        /// Development: watch the plugin crates under ./plugins and `cargo build` the one
        /// whose sources change; the rebuilt library goes live as any plugin change does.
        #[arg(long, conflicts_with = "no_watch")]
        dev: bool,
        /// FlowLLM-style config overrides such as http.port=9000 (applied after --set: for the
        /// same key, this wins).
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// List the ops of every loaded plugin.
    Ops {
        #[command(flatten)]
        common: Common,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the flows and their status (live, stale, broken).
    Flows {
        #[command(flatten)]
        common: Common,
        /// Print JSON (`{"flows": [...], "errors": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check flow files and plugins; print every problem as file:line:col: message.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Run one flow and write its chunks to stdout as JSON lines, then a summary line.
    Run {
        /// The flow to run.
        flow: String,
        /// The request body as a JSON object.
        #[arg(long, short)]
        input: Option<String>,
        /// Input fields as key=value (a `string` field of the flow's schema keeps the text; others are typed: true/false, numbers, JSON, else text).
        #[arg(value_name = "KEY=VALUE")]
        fields: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Create an op: a plugin crate in the workspace (or a new op in an existing one), with a
    /// unit test, and a sample flow using it. Writes only new files, except two it edits: the
    /// workspace Cargo.toml (a new crate joins `members`) and an existing crate's lib.rs
    /// (the new op's module and registration).
    NewOp {
        /// The op's name: CamelCase ending in `Op` (ShoutOp).
        op: String,
        /// The plugin crate to create or add to (default: op-<name>, e.g. op-shout).
        #[arg(long)]
        plugin: Option<String>,
        /// Where plugin crates live, relative to the workspace root.
        #[arg(long, default_value = "plugins")]
        dir: PathBuf,
        /// The flow folder for the sample flow, relative to the workspace root.
        #[arg(long, default_value = "flows")]
        flows: PathBuf,
    },
    /// Runs op calls for a host in a separate process (`isolation: process`); started by the
    /// host itself, never by hand.
    #[command(name = "__worker", hide = true)]
    Worker {
        library: PathBuf,
        hash: String,
        memory_mb: String,
    },
    /// Keys and tokens: `flowhost auth hash-key` prints what `auth.keys.NAME.key_sha256`
    /// holds for a key read from stdin.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// The audit trail: `flowhost audit verify FILE...` checks its hash chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the effective configuration as JSON.
    Config {
        #[command(flatten)]
        common: Common,
        /// FlowLLM-style overrides such as http.port=9000.
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuthCommand {
    /// Read a key from stdin (one line) and print its SHA-256, for `auth.keys.NAME.key_sha256`
    /// (the key itself never goes in the config).
    HashKey,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit file's hash chain; name the first line where it breaks. Give rotated
    /// files first, oldest first (audit.jsonl.1 audit.jsonl.2 audit.jsonl), to check the chain
    /// across them; a file alone is checked from its first line.
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Transport {
    Http,
    Stdio,
}

/// Options every command shares.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct Common {
    /// Config file (default: ./flowhost.yaml if present).
    #[arg(long, short = 'c')]
    pub(crate) config: Option<PathBuf>,
    /// Flow folder (repeatable; default: ./flows).
    #[arg(long = "flows", value_name = "DIR")]
    pub(crate) flows: Vec<PathBuf>,
    /// Extra plugin folder (repeatable); the folder of the flowhost binary is always searched.
    #[arg(long = "plugins", value_name = "DIR")]
    pub(crate) plugins: Vec<PathBuf>,
    /// Do not load plugins from the folder of the flowhost binary.
    #[arg(long)]
    pub(crate) no_default_plugins: bool,
    /// A config override key=value (repeatable), as FlowLLM's command line takes them;
    /// positional KEY=VALUE items are applied after these (for the same key they win).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,
}

impl Common {
    fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            flows: self.flows.clone(),
            plugins: self.plugins.clone(),
            no_default_plugins: self.no_default_plugins,
            overrides: self.set.clone(),
            ..Flags::default()
        }
    }
}

/// The log filter a command uses unless told otherwise.
/// Refuses a log filter that would silently log nothing: each directive is a level
/// (`trace`, `debug`, `info`, `warn`, `error`, `off`) or `target=level`. (`tracing`'s own
/// parser takes `verbose` as a target name and shows only that target.)
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "log filter `{filter}`: `{level}` is not a level; use one of {} (or target=level, e.g. info,flowhost=debug)",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

pub fn default_log_filter(cli: &Cli) -> &'static str {
    match &cli.command {
        // `ops` has no other way to show a refused plugin; the others print flow problems
        // themselves, so repeating them as log lines is noise.
        Command::Ops { .. } => "warn",
        // In stdio mode stdout is the protocol; logs still go to stderr, where MCP clients
        // show them.
        Command::Serve { .. } => "info,rmcp=warn",
        // Warnings (settings flowhost ignores, refused plugins) must be seen at the default
        // level; flow problems are printed by the commands themselves.
        Command::Worker { .. }
        | Command::NewOp { .. }
        | Command::Auth { .. }
        | Command::Audit { .. } => "warn",
        Command::Flows { .. }
        | Command::Check { .. }
        | Command::Run { .. }
        | Command::Config { .. } => "error,flowhost::app::config=warn",
    }
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> ExitCode {
    crate::ops::plugin::set_abi_debug(std::env::var_os("FLOWHOST_ABI_DEBUG").is_some());
    let result = match cli.command {
        Command::Serve {
            common,
            host,
            port,
            transport,
            api_key,
            no_watch,
            dev,
            overrides,
        } => {
            let mut flags = common.flags();
            flags.host = host;
            flags.port = port;
            flags.transport = transport.map(|t| match t {
                Transport::Http => config::Backend::Http,
                Transport::Stdio => config::Backend::Stdio,
            });
            flags.api_key = api_key;
            flags.no_watch = no_watch;
            flags.overrides.extend(overrides);
            with_config(flags, |config| serve(&config, dev))
        }
        Command::Ops { common, json } => with_config(common.flags(), |config| ops(&config, json)),
        Command::Flows { common, json } => {
            with_config(common.flags(), |config| flows(&config, json))
        }
        Command::Check { common } => with_config(common.flags(), |config| check(&config)),
        Command::Run {
            flow,
            input,
            fields,
            common,
        } => with_config(common.flags(), |config| {
            run_flow(&config, &flow, input.as_deref(), &fields)
        }),
        Command::NewOp {
            op,
            plugin,
            dir,
            flows,
        } => new_op(crate::app::scaffold::Request {
            op,
            plugin,
            dir,
            flows,
        }),
        Command::Worker {
            library,
            hash,
            memory_mb,
        } => {
            let hash = u64::from_str_radix(&hash, 16).unwrap_or_default();
            let memory_mb = memory_mb.parse().ok();
            let code = crate::exec::worker::child::main(&library, hash, memory_mb);
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
        Command::Auth {
            command: AuthCommand::HashKey,
        } => super::commands::hash_key(),
        Command::Audit {
            command: AuditCommand::Verify { files },
        } => super::commands::verify_audit(&files),
        Command::Config { common, overrides } => {
            let mut flags = common.flags();
            flags.overrides.extend(overrides);
            with_config(flags, |config| show_config(&config))
        }
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("flowhost: {message}");
            ExitCode::from(2)
        }
    }
}

fn with_config(
    flags: Flags,
    command: impl FnOnce(Config) -> Result<ExitCode, String>,
) -> Result<ExitCode, String> {
    command(config::load(flags)?)
}
