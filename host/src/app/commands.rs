//! The commands' bodies: `ops`, `flows`, `check`, `config`, `new-op` and `run`, each a function
//! over the configuration that prints its output to stdout (tables, or JSON lines) and
//! returns an exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::serve::{load_catalog_listing, load_catalog_with, run_options_with_flows, runtime};
use crate::app::config::{self, Config};
use crate::exec;

fn print(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|err| format!("cannot write to stdout: {err}"))
}

pub(super) fn ops(config: &Config, as_json: bool) -> Result<ExitCode, String> {
    let mut plugins = crate::ops::Plugins::new(config.plugin_dirs.clone());
    plugins.scan();
    let registry = plugins.registry();
    for error in &registry.errors {
        tracing::warn!("{error}");
    }
    let servers = upstream_status(config)?;
    if as_json {
        let mut listed = registry.to_json();
        if let Some(servers) = servers {
            listed["mcp_servers"] = servers;
        }
        print(&serde_json::to_string_pretty(&listed).unwrap_or_default())?;
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
        if let Some(servers) = &servers {
            print_upstreams(servers)?;
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

/// The outside MCP servers' state once started (`external_mcp`; None without any), for
/// `flowhost ops`; their lines go to stdout in the text form.
fn upstream_status(config: &Config) -> Result<Option<Value>, String> {
    if config.upstream.servers.is_empty() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    let status = runtime.block_on(async {
        super::serve::start_upstreams(config)
            .await
            .map(|upstreams| upstreams.status_json())
    });
    Ok(status)
}

/// One line per outside MCP server: its state and tools.
fn print_upstreams(servers: &Value) -> Result<(), String> {
    for server in servers.as_array().into_iter().flatten() {
        let tools: Vec<&str> = server["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let state = match server["reason"].as_str() {
            Some(reason) => format!("down ({reason})"),
            None => "up".to_string(),
        };
        print(&format!(
            "MCP server {}: {state}, {} tool(s): {}  [external_mcp; McpOp(mcp_name=\"{}\", tool_name=...)]",
            server["name"].as_str().unwrap_or_default(),
            tools.len(),
            tools.join(", "),
            server["name"].as_str().unwrap_or_default(),
        ))?;
    }
    Ok(())
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no plugin folder (--no-default-plugins and no --plugins)".to_string();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn flows(config: &Config, as_json: bool) -> Result<ExitCode, String> {
    let catalog = load_catalog_listing(config)?;
    let snapshot = catalog.snapshot();
    if as_json {
        print(
            &serde_json::to_string_pretty(&snapshot.flows_json(|_| true, true)).unwrap_or_default(),
        )?;
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

pub(super) fn check(config: &Config) -> Result<ExitCode, String> {
    let catalog = load_catalog_listing(config)?;
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

pub(super) fn show_config(config: &Config) -> Result<ExitCode, String> {
    let value = json!({
        "source": config.source,
        "backend": format!("{:?}", config.backend).to_lowercase(),
        "http": {
            "host": config.http.host,
            "port": config.http.port,
            "api_key": config.http.api_key.as_ref().map(|_| "(set)"),
            "allowed_hosts": config.http.effective_allowed_hosts(),
            "cors_origins": config.http.cors_origins,
            "body_limit": config.http.body_limit,
            "header_timeout": config.http.header_timeout.as_secs_f64(),
            "body_timeout": config.http.body_timeout.as_secs_f64(),
            "keepalive_timeout": config.http.keepalive_timeout.as_secs_f64(),
            "max_connections": config.http.connection_limits().max_connections,
            "keepalive_secs": config.http.keepalive.as_secs_f64(),
            "shutdown_timeout": config.http.shutdown_timeout.as_secs_f64(),
            "drain_delay": config.http.drain_delay.as_secs_f64(),
            "mcp_stateless": config.http.mcp_stateless,
            "mcp_max_sessions": config.http.mcp_max_sessions,
            "mcp_state_key": config.http.mcp_state_key.as_ref().map_or("(random per process)", |_| "(set)"),
        },
        "flows_dir": config.flow_dirs,
        "plugin_dirs": config.plugin_dirs,
        "enabled_flows": config.filter.enabled,
        "disabled_flows": config.filter.disabled,
        "llm": config.llm.models.iter().map(|(name, model)| (name.clone(), json!({
            "backend": "openai_compatible",
            "model_name": model.model_name,
            "params": model.params,
            "base_url": model.base_url.as_deref().map(crate::llm::shown_url),
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
        "max_op_threads": config.ops.max_op_threads,
        "ops": {
            "max_concurrency": config.ops.max_concurrency,
            "max_queue": config.ops.max_queue,
            "isolation": config.ops.isolation.default,
            "max_workers": config.ops.max_workers,
            "worker_idle_timeout": config.ops.worker_idle_timeout.as_secs_f64(),
            "inline": config.ops.isolation.inline,
        },
        "cache": {"dir": config.cache_dir},
        "runs": {
            "retention": config.http.runs.keep.as_secs_f64(),
            "max_runs": config.http.runs.max_runs,
            "max_running": config.http.runs.max_running,
            "max_bytes": config.http.runs.max_bytes,
        },
        "store": {
            "url": config.store.url.as_deref().map(crate::store::shown_url),
            "path": config.store.path.as_ref().map_or_else(|| ":memory:".to_string(), |p| p.display().to_string()),
            "lease": config.store.lease.as_secs_f64(),
            "max_resumes": config.store.max_resumes,
        },
        "auth": {
            "keys": config.auth.keys.iter()
                .map(|key| (key.name.clone(), json!({
                    "flows": key.flows,
                    "rate": key.rate.map(|r| r.to_string()),
                })))
                .collect::<Map<String, Value>>(),
            "jwt": config.auth.jwt.as_ref().map(|jwt| json!({
                "issuer": jwt.issuer,
                "audience": jwt.audience,
                "jwks_url": jwt.jwks_url,
                "algorithms": jwt.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
                "leeway": jwt.leeway.as_secs_f64(),
                "flows": jwt.flows,
                "scope_prefix": jwt.scope_prefix,
                "rate": jwt.rate.map(|r| r.to_string()),
            })),
        },
        "audit": {
            "path": config.auth.audit.path.as_ref().map(|p| p.display().to_string()),
            "inputs": config.auth.audit.inputs,
            "max_bytes": config.auth.audit.max_bytes,
        },
        "telemetry": crate::telemetry::describe(&config.telemetry, &|name| std::env::var(name).ok()),
        "external_mcp": crate::upstream::settings::describe(&config.upstream),
        "plugins": config.ops.isolation.plugins.iter()
            .map(|(name, isolation)| (name.clone(), json!({"isolation": isolation})))
            .collect::<Map<String, Value>>(),
    });
    print(&serde_json::to_string_pretty(&value).unwrap_or_default())?;
    Ok(ExitCode::SUCCESS)
}

/// `flowhost auth hash-key`: the SHA-256 of the key on stdin (its first line, trimmed).
pub(super) fn hash_key() -> Result<ExitCode, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|err| format!("cannot read the key from stdin: {err}"))?;
    let key = line.trim();
    if key.is_empty() {
        return Err(
            "no key on stdin: pipe one in, e.g. `openssl rand -hex 32 | tee key.txt | flowhost auth hash-key`"
                .into(),
        );
    }
    print(&crate::auth::hash_key(key))?;
    Ok(ExitCode::SUCCESS)
}

/// `flowhost audit verify FILE...`: 0 when the chain holds (with the count and the last
/// line's hash), 1 naming the first line where it breaks.
pub(super) fn verify_audit(files: &[PathBuf]) -> Result<ExitCode, String> {
    match crate::auth::audit::verify(files) {
        Ok(verified) => {
            print(&format!(
                "ok: {} line(s), chain intact{}; last line's SHA-256 {}",
                verified.lines,
                if verified.from_start {
                    " from the first line of the trail"
                } else {
                    " (the first file starts after a rotation: give the files before it to check where it joins)"
                },
                verified.last
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            eprintln!("flowhost audit verify: {problem}");
            Ok(ExitCode::from(1))
        }
    }
}

pub(super) fn new_op(request: crate::app::scaffold::Request) -> Result<ExitCode, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("no current folder: {e}"))?;
    let written = crate::app::scaffold::new_op(&request, &cwd)?;
    for (path, change) in &written {
        let verb = match change {
            crate::app::scaffold::Change::Created => "created",
            crate::app::scaffold::Change::Edited => "edited ",
        };
        print(&format!("{verb} {}", path.display()))?;
    }
    let plugin = request.plugin.clone().unwrap_or_else(|| {
        written
            .iter()
            .map(|(p, _)| p)
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

/// Builds the request body from `--input` and `key=value` fields (fields win). The flow's
/// input schema decides a field's type: a `string` property keeps `007` or `true` as text;
/// other fields are typed as FlowLLM types them (true/false, numbers, JSON, else text).
pub(crate) fn input_object(
    input: Option<&str>,
    fields: &[String],
    schema: &Value,
) -> Result<Map<String, Value>, String> {
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
        let declared = &schema["properties"][key]["type"];
        let text = declared == "string"
            || declared
                .as_array()
                .is_some_and(|types| types.iter().all(|t| t == "string" || t == "null"));
        let value = if text {
            Value::String(value.to_string())
        } else {
            config::typed_value(value)
        };
        object.insert(key.to_string(), value);
    }
    Ok(object)
}

pub(super) fn run_flow(
    config: &Config,
    name: &str,
    input: Option<&str>,
    fields: &[String],
) -> Result<ExitCode, String> {
    let runtime = runtime(config)?;
    let upstreams = runtime.block_on(super::serve::start_upstreams(config));
    let mcp = upstreams.as_ref().map(|u| u.catalog()).unwrap_or_default();
    let catalog = Arc::new(load_catalog_with(config, mcp));
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
    let input = input_object(input, fields, &flow.spec.input_schema)?;
    let input = flow.check_input(input).map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|(field, message)| format!("  {field}: {message}"))
            .collect();
        format!("invalid input for flow `{name}`:\n{}", lines.join("\n"))
    })?;
    let options = run_options_with_flows(config, &catalog, None);
    let outcome = runtime.block_on(async {
        let outcome = stream_to_stdout(flow, input, options).await;
        // What the run cached is written before the process ends.
        crate::exec::cache::flush(std::time::Duration::from_secs(10)).await;
        outcome
    })?;
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
