//! The command line: clap types and the commands they run. Argument parsing does no I/O;
//! [`crate::app::config::load`] turns the arguments into a `Config`, and each command is a function
//! over it that returns an exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::app::config::{self, Config, Flags};
use crate::catalog::Catalog;
use crate::exec;

#[derive(Debug, Parser)]
#[command(name = "flowhost", version, about = "A plugin host for LLM flows: hot-loaded op plugins, live-reloaded YAML flows, streamed over HTTP/SSE and MCP", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
pub enum Command {
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
        /// Require `Authorization: Bearer KEY` on every route but /health.
        #[arg(long, env = "FLOWHOST_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Do not watch flow and plugin folders for changes.
        #[arg(long)]
        no_watch: bool,
        /// Development: watch the plugin crates under ./plugins and `cargo build` the one
        /// whose sources change; the rebuilt library goes live as any plugin change does.
        #[arg(long, conflicts_with = "no_watch")]
        dev: bool,
        /// FlowLLM-style config overrides such as http.port=9000.
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
        /// Input fields as key=value (typed: true/false, numbers, JSON, else text).
        #[arg(value_name = "KEY=VALUE")]
        fields: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Create an op: a plugin crate in the workspace (or a new op in an existing one), with a
    /// unit test, and a sample flow using it. Never overwrites.
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
    /// Print the effective configuration as JSON.
    Config {
        #[command(flatten)]
        common: Common,
        /// FlowLLM-style overrides such as http.port=9000.
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Transport {
    Http,
    Stdio,
}

/// Options every command shares.
#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// Config file (default: ./flowhost.yaml if present).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Flow folder (repeatable; default: ./flows).
    #[arg(long = "flows", value_name = "DIR")]
    pub flows: Vec<PathBuf>,
    /// Extra plugin folder (repeatable); the folder of the flowhost binary is always searched.
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugins: Vec<PathBuf>,
    /// Do not load plugins from the folder of the flowhost binary.
    #[arg(long)]
    pub no_default_plugins: bool,
    /// A config override key=value (repeatable), as FlowLLM's command line takes them.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
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
pub fn default_log_filter(command: &Command) -> &'static str {
    match command {
        // `ops` has no other way to show a refused plugin; the others print flow problems
        // themselves, so repeating them as log lines is noise.
        Command::Ops { .. } => "warn",
        // In stdio mode stdout is the protocol; logs still go to stderr, where MCP clients
        // show them.
        Command::Serve { .. } => "info,rmcp=warn",
        // Warnings (settings flowhost ignores, refused plugins) must be seen at the default
        // level; flow problems are printed by the commands themselves.
        Command::Worker { .. } | Command::NewOp { .. } => "warn",
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

fn load_catalog(config: &Config) -> Catalog {
    Catalog::load(
        config.flow_dirs.clone(),
        config.plugin_dirs.clone(),
        config.filter.clone(),
    )
}

fn print(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|err| format!("cannot write to stdout: {err}"))
}

fn ops(config: &Config, as_json: bool) -> Result<ExitCode, String> {
    let mut plugins = crate::ops::Plugins::new(config.plugin_dirs.clone());
    plugins.scan();
    let registry = plugins.registry();
    for error in &registry.errors {
        tracing::warn!("{error}");
    }
    if as_json {
        print(&serde_json::to_string_pretty(&registry.to_json()).unwrap_or_default())?;
    } else {
        if registry.ops.is_empty() {
            eprintln!(
                "no ops loaded from {} (build plugins with `cargo build --workspace`, or pass --plugins DIR)",
                display_dirs(&config.plugin_dirs)
            );
        }
        let width = registry.ops.keys().map(|n| n.len()).max().unwrap_or(0);
        for op in registry.ops.values() {
            print(&format!(
                "{:width$}  {}  [{} {}, op-sdk {}, {}]",
                op.name,
                op.description,
                op.library.plugin_name,
                op.library.plugin_version,
                op.library.sdk_version,
                op.library.path.display(),
            ))?;
        }
        // What plugins offer besides ops (op-sdk 0.1.3), served as MCP resources and prompts.
        for library in &registry.libraries {
            let listed = library.content_list();
            let count = |key: &str| listed[key].as_array().map_or(0, Vec::len);
            let (resources, templates, prompts) =
                (count("resources"), count("templates"), count("prompts"));
            if resources + templates + prompts > 0 {
                print(&format!(
                    "{} also offers {resources} resource(s), {templates} resource template(s), {prompts} prompt(s)",
                    library.plugin_name
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn flows(config: &Config, as_json: bool) -> Result<ExitCode, String> {
    let catalog = load_catalog(config);
    let snapshot = catalog.snapshot();
    if as_json {
        print(&serde_json::to_string_pretty(&snapshot.flows_json()).unwrap_or_default())?;
        return Ok(ExitCode::SUCCESS);
    }
    if snapshot.flows.is_empty() {
        eprintln!("no flows in {}", display_dirs(&config.flow_dirs));
    }
    let width = snapshot.flows.keys().map(|n| n.len()).max().unwrap_or(0);
    for (name, entry) in &snapshot.flows {
        let kind = if entry.spec.stream { "stream" } else { "json" };
        let mut line = format!(
            "{name:width$}  {:6}  {kind:6}  {}",
            entry.status(),
            entry.spec.description
        );
        if let Some(error) = &entry.error {
            let first = error.message.lines().next().unwrap_or_default();
            line.push_str(&format!("\n{:width$}  ^ {first}", ""));
        }
        print(&line)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check(config: &Config) -> Result<ExitCode, String> {
    let catalog = load_catalog(config);
    let snapshot = catalog.snapshot();
    let mut errors = 0;
    for error in &snapshot.registry.errors {
        print(&format!(
            "{}: error: {}",
            error.path.display(),
            error.message
        ))?;
        errors += 1;
    }
    for diag in &snapshot.diagnostics {
        print(&diag.to_string())?;
        if diag.severity == crate::lang::Severity::Error {
            errors += 1;
        }
    }
    let live = snapshot.live().count();
    eprintln!(
        "{live} flow(s) live, {} broken, {errors} error(s)",
        snapshot.flows.len() - live
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn show_config(config: &Config) -> Result<ExitCode, String> {
    let value = json!({
        "source": config.source,
        "backend": format!("{:?}", config.backend).to_lowercase(),
        "http": {
            "host": config.http.host,
            "port": config.http.port,
            "mcp_stateless": config.http.mcp_stateless,
            "mcp_state_key": config.http.mcp_state_key.as_ref().map_or("(random per process)", |_| "(set)"),
        },
        "flows_dir": config.flow_dirs,
        "plugin_dirs": config.plugin_dirs,
        "enabled_flows": config.filter.enabled,
        "disabled_flows": config.filter.disabled,
        "llm": config.llm.models.iter().map(|(name, model)| (name.clone(), json!({
            "model_name": model.model_name,
            "params": model.params,
            "base_url": model.base_url,
            "api_key": model.api_key.as_ref().map(|_| "(set)"),
            "max_retries": model.max_retries,
            "timeouts_s": {
                "connect": model.timeouts.connect.as_secs_f64(),
                "first_token": model.timeouts.first_token.as_secs_f64(),
                "idle": model.timeouts.idle.as_secs_f64(),
                "total": model.timeouts.total.as_secs_f64(),
            },
        }))).collect::<Map<String, Value>>(),
        "watch": config.watch,
        "debounce_ms": config.debounce.as_millis() as u64,
        "max_op_threads": config.max_op_threads,
        "ops": {
            "max_concurrency": config.max_concurrency,
            "max_queue": config.max_queue,
            "isolation": config.isolation.default,
            "max_workers": config.max_workers,
            "inline": config.isolation.inline,
        },
        "cache": {"dir": config.cache_dir},
        "runs": {
            "retention": config.http.runs.keep.as_secs_f64(),
            "max_runs": config.http.runs.max_runs,
            "max_bytes": config.http.runs.max_bytes,
        },
        "plugins": config.isolation.plugins.iter()
            .map(|(name, isolation)| (name.clone(), json!({"isolation": isolation})))
            .collect::<Map<String, Value>>(),
    });
    print(&serde_json::to_string_pretty(&value).unwrap_or_default())?;
    Ok(ExitCode::SUCCESS)
}

fn new_op(request: crate::app::scaffold::Request) -> Result<ExitCode, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("no current folder: {e}"))?;
    let written = crate::app::scaffold::new_op(&request, &cwd)?;
    for path in &written {
        print(&format!("wrote {}", path.display()))?;
    }
    let plugin = request.plugin.clone().unwrap_or_else(|| {
        written
            .iter()
            .find(|p| {
                p.ends_with("Cargo.toml") && p.parent().is_some_and(|d| d.join("src").exists())
            })
            .and_then(|p| p.parent()?.file_name()?.to_str().map(str::to_string))
            .unwrap_or_default()
    });
    eprintln!(
        "next: cargo test -p {plugin} && cargo build --workspace, then flowhost serve (a rebuild while it runs goes live)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Builds the request body from `--input` and `key=value` fields (fields win).
pub fn input_object(input: Option<&str>, fields: &[String]) -> Result<Map<String, Value>, String> {
    let mut object = match input {
        None => Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err("--input must be a JSON object such as '{\"query\": \"hi\"}'".into())
            }
            Err(err) => return Err(format!("--input is not valid JSON: {err}")),
        },
    };
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!(
                "input field `{field}` is not key=value (for example query=hello)"
            ));
        };
        object.insert(key.to_string(), config::typed_value(value));
    }
    Ok(object)
}

/// A runtime for one-shot commands, with the same op thread bound as the server.
pub fn runtime(config: &Config) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.backend == config::Backend::Stdio {
        // One stdio connection: its protocol work fits one thread, and hops between worker
        // threads cost more than the work. Multi-threaded all the same, so that fast ops can
        // run inline and hand the runtime on when they wait (`ops::Speed`).
        builder.worker_threads(1);
    }
    builder
        .enable_all()
        .max_blocking_threads(config.max_op_threads)
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))
}

/// What every run starts with: the LLM service from the configuration.
fn run_options(config: &Config) -> exec::Options {
    crate::exec::worker::set_max_workers(config.max_workers);
    crate::exec::cache::set_files(config.cache_dir.clone().map(|dir| {
        Box::new(crate::app::cache_files::Folder::new(dir))
            as Box<dyn crate::exec::cache::CacheFiles>
    }));
    exec::Options {
        llm: Some(Arc::new(crate::llm::Service::new(config.llm.clone()))),
        admission: crate::exec::admission::Global::new(config.max_concurrency, config.max_queue),
        isolation: Arc::new(config.isolation.clone()),
        ..exec::Options::default()
    }
}

/// Run options that can run other flows (`FlowOp`) from `catalog`.
fn run_options_with_flows(
    config: &Config,
    catalog: &Arc<crate::catalog::Catalog>,
) -> exec::Options {
    exec::Options {
        flows: Some(catalog.lookup()),
        ..run_options(config)
    }
}

fn serve(config: &Config, dev: bool) -> Result<ExitCode, String> {
    if let Some(key) = &config.http.mcp_state_key {
        crate::transport::mcp::set_state_key(key)?;
    }
    if config.backend == config::Backend::Stdio {
        // Before any plugin is loaded: stray prints must never reach the protocol stream.
        crate::transport::mcp::claim_stdout()?;
    }
    let mut config = config.clone();
    let dev = if dev {
        let plan = crate::app::dev::plan(Path::new("plugins"))?;
        // Where the builds land must be a plugin folder.
        let known = config
            .plugin_dirs
            .iter()
            .any(|dir| dir.canonicalize().ok().as_deref() == Some(plan.out_dir.as_path()));
        if !known {
            config.plugin_dirs.push(plan.out_dir.clone());
        }
        // A rebuilt library only goes live through the plugin watcher.
        config.watch = true;
        Some(plan)
    } else {
        None
    };
    let config = &config;
    let runtime = runtime(config)?;
    runtime.block_on(async {
        let catalog = Arc::new(load_catalog(config));
        let _watching = if config.watch {
            Some(crate::catalog::watch::start(
                catalog.clone(),
                config.debounce,
            )?)
        } else {
            None
        };
        let _dev = dev.map(crate::app::dev::start).transpose()?;
        match config.backend {
            config::Backend::Http => {
                let options = run_options_with_flows(config, &catalog);
                crate::transport::http::serve(catalog, config.http.clone(), options).await
            }
            config::Backend::Stdio => {
                let snapshot = catalog.snapshot();
                tracing::info!(
                    "flowhost {} serving MCP on stdio: {} tools",
                    env!("CARGO_PKG_VERSION"),
                    snapshot.live().count()
                );
                drop(snapshot);
                let max_line = crate::transport::mcp::MAX_LINE_BYTES;
                let options = run_options_with_flows(config, &catalog);
                crate::transport::mcp::serve_stdio(catalog, options, max_line).await
            }
        }
    })?;
    // The stdio session ends when stdin closes; op threads still sleeping must not hold the
    // process open.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

fn run_flow(
    config: &Config,
    name: &str,
    input: Option<&str>,
    fields: &[String],
) -> Result<ExitCode, String> {
    let input = input_object(input, fields)?;
    let catalog = Arc::new(load_catalog(config));
    let snapshot = catalog.snapshot();
    let Some(entry) = snapshot.get(name) else {
        let known: Vec<&str> = snapshot.flows.keys().map(String::as_str).collect();
        return Err(format!(
            "no flow named `{name}` in {} (flows: {})",
            display_dirs(&config.flow_dirs),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    let Some(flow) = entry.flow.clone() else {
        let reason = entry
            .error
            .as_ref()
            .map_or("unknown error".to_string(), |d| d.to_string());
        return Err(format!("flow `{name}` is broken: {reason}"));
    };
    let input = flow.check_input(input).map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|(field, message)| format!("  {field}: {message}"))
            .collect();
        format!("invalid input for flow `{name}`:\n{}", lines.join("\n"))
    })?;
    let runtime = runtime(config)?;
    let options = run_options_with_flows(config, &catalog);
    let outcome = runtime.block_on(stream_to_stdout(flow, input, options))?;
    let mut summary = json!({
        "flow_id": outcome.flow_id,
        "answer": outcome.answer,
        "success": outcome.success(),
        "error": outcome.error,
    });
    if !outcome.failed_ops.is_empty() {
        summary["failed_ops"] = Value::Array(outcome.failed_ops.clone());
    }
    print(&summary.to_string())?;
    Ok(if outcome.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn stream_to_stdout(
    flow: Arc<crate::plan::Flow>,
    input: Map<String, Value>,
    options: exec::Options,
) -> Result<exec::Outcome, String> {
    let mut run = exec::start(flow, input, &options);
    let mut batch = Vec::new();
    let mut line = String::new();
    let stdout = std::io::stdout();
    while run.next_batch(&mut batch).await {
        line.clear();
        for chunk in batch.drain(..) {
            chunk.write_json(&run.flow_id, &mut line);
            line.push('\n');
        }
        let mut out = stdout.lock();
        // A closed pipe (`| head`) ends the run like a disconnected client.
        if out
            .write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return Err("stdout closed; run cancelled".into());
        }
    }
    Ok(run.finish().await)
}
