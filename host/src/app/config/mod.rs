//! Configuration: an optional `flowhost.yaml` (FlowLLM-like keys), FlowLLM-style `key=value`
//! overrides, then command-line flags, validated into one [`Config`] made of the sections the
//! parts own (`transport::http::Settings`, `llm::Config`, `catalog::Filter`,
//! `exec::IsolationPolicy`, ...). No clap type gets past this module; only `app/` reads the
//! environment and the config file. `raw` is serde's view, `keys` the unknown-key check,
//! `llm` the `llm:` section, `overrides` the `key=value` items, `units` durations and sizes
//! written with units (`10s`, `1MiB`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::catalog::Filter;
use crate::transport::http::Settings as Http;

/// The validated configuration every command runs from.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) backend: Backend,
    pub(crate) http: Http,
    pub(crate) flow_dirs: Vec<PathBuf>,
    pub(crate) plugin_dirs: Vec<PathBuf>,
    pub(crate) filter: Filter,
    /// The LLMs ops can call (FlowLLM's `llm:` section plus the environment).
    pub(crate) llm: crate::llm::Config,
    pub(crate) watch: bool,
    pub(crate) debounce: Duration,
    /// How the executor runs op calls (`ops:`, `plugins.<name>.isolation`, `max_op_threads`).
    pub(crate) ops: crate::exec::Settings,
    /// `cache.dir`: where `enable_cache=True` calls are also kept as files.
    pub(crate) cache_dir: Option<PathBuf>,
    /// `store:` where async runs are kept (HTTP; MCP over stdio keeps its tasks in memory).
    pub(crate) store: crate::store::Settings,
    /// `auth:` (named keys, bearer tokens) with `http.api_key`, and `audit:`.
    pub(crate) auth: crate::auth::Settings,
    /// `telemetry:` where traces go (the `OTEL_*` variables are applied when it starts).
    pub(crate) telemetry: crate::telemetry::Settings,
    /// `external_mcp:` the outside MCP servers flows may call (variables expanded).
    pub(crate) upstream: crate::upstream::Settings,
    /// The config file that was read, if any.
    pub(crate) source: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    Http,
    /// MCP over stdio (FlowLLM calls this backend `mcp`).
    #[serde(alias = "mcp")]
    Stdio,
}

/// What the command line adds on top of the file and the overrides.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flags {
    pub(crate) config: Option<PathBuf>,
    pub(crate) flows: Vec<PathBuf>,
    pub(crate) plugins: Vec<PathBuf>,
    /// Skip the folder of the flowhost binary (tests, isolated setups).
    pub(crate) no_default_plugins: bool,
    pub(crate) overrides: Vec<String>,
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) api_key: Option<String>,
    pub(crate) transport: Option<Backend>,
    pub(crate) no_watch: bool,
}

mod auth;
mod keys;
mod llm;
mod overrides;
mod raw;
mod telemetry;
mod units;

use keys::check_keys;
use llm::llm_config;
pub(crate) use overrides::{apply_override, typed_value};
use raw::{OneOrMany, Raw};

/// Threads that may run ops at once unless `max_op_threads` says otherwise.
pub(crate) const DEFAULT_MAX_OP_THREADS: usize = 10_000;

/// The file read when `--config` is not given, if it exists.
pub(crate) const DEFAULT_FILE: &str = "flowhost.yaml";

/// Builds the configuration: defaults, then the config file, then `key=value` overrides, then
/// flags.
pub(crate) fn load(flags: Flags) -> Result<Config, String> {
    let source = match &flags.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
    };
    let mut tree = match &source {
        Some(path) => read_file(path)?,
        None => Value::Object(Map::new()),
    };
    for item in &flags.overrides {
        apply_override(&mut tree, item)?;
    }
    let where_ = source
        .as_ref()
        .map_or("configuration".to_string(), |p| p.display().to_string());
    check_keys(&where_, &mut tree)?;
    let raw: Raw = serde_path_to_error::deserialize(tree).map_err(|err| {
        let key = err.path().to_string();
        let message = units::reword(&err.inner().to_string());
        if key == "." {
            format!("{where_}: {message}")
        } else {
            format!("{where_}: {key}: {message}")
        }
    })?;
    let api_key = flags
        .api_key
        .clone()
        .or(raw.http.api_key.clone())
        .filter(|key| !key.is_empty());
    let auth = auth::auth_settings(&where_, raw.auth.clone(), raw.audit.clone(), api_key)?;
    let telemetry = telemetry::telemetry_settings(&where_, raw.telemetry.clone())?;
    let upstream =
        crate::upstream::settings::parse(&raw.external_mcp, &|name| std::env::var(name).ok())
            .map_err(|err| format!("{where_}: {err}"))?;
    let mut flow_dirs = match raw.flows_dir {
        OneOrMany::One(dir) => vec![dir],
        OneOrMany::Many(dirs) => dirs,
    };
    if !flags.flows.is_empty() {
        flow_dirs = flags.flows;
    }
    let mut plugin_dirs = Vec::new();
    if !flags.no_default_plugins {
        plugin_dirs.extend(crate::ops::default_dir());
    }
    plugin_dirs.extend(raw.plugin_dirs);
    plugin_dirs.extend(flags.plugins);
    for dir in &plugin_dirs {
        if !dir.is_dir() {
            return Err(format!(
                "plugin folder {} does not exist (check --plugins or plugin_dirs)",
                dir.display()
            ));
        }
    }
    if raw.max_op_threads == 0 {
        return Err(format!("{where_}: max_op_threads must be at least 1"));
    }
    // FlowLLM's uvicorn `limit_concurrency` refuses past the limit at once: no line.
    let flowllm_limit = match &raw.http.limit_concurrency {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            format!("{where_}: http.limit_concurrency must be a positive integer, found {value}")
        })? as usize),
    };
    let max_concurrency = raw.ops.max_concurrency.or(flowllm_limit);
    if max_concurrency == Some(0) {
        return Err(format!(
            "{where_}: ops.max_concurrency must be at least 1 (leave it out for no limit)"
        ));
    }
    // A line as long as the limit by default; none under FlowLLM's setting.
    let max_queue = raw
        .ops
        .max_queue
        .unwrap_or(raw.ops.max_concurrency.unwrap_or(0));
    Ok(Config {
        backend: flags.transport.unwrap_or(raw.backend),
        http: Http {
            host: flags.host.unwrap_or(raw.http.host),
            port: flags.port.unwrap_or(raw.http.port.0),
            body_limit: raw.http.body_limit.0,
            header_timeout: seconds(&where_, "http.header_timeout", raw.http.header_timeout.0)?,
            body_timeout: seconds(&where_, "http.body_timeout", raw.http.body_timeout.0)?,
            // FlowLLM's (uvicorn's) name for it counts when ours is not set.
            keepalive_timeout: match (raw.http.keepalive_timeout, raw.http.timeout_keep_alive) {
                (Some(value), _) => seconds(&where_, "http.keepalive_timeout", value.0)?,
                (None, Some(value)) => seconds(&where_, "http.timeout_keep_alive", value.0)?,
                (None, None) => Duration::from_secs(60),
            },
            max_connections: match raw.http.max_connections {
                Some(0) => {
                    return Err(format!(
                        "{where_}: http.max_connections must be at least 1 (leave it out for three quarters of the open-file limit)"
                    ))
                }
                other => other,
            },
            cors_origins: raw.http.cors_origins,
            allowed_hosts: raw.http.allowed_hosts,
            api_key: flags
                .api_key
                .or(raw.http.api_key)
                .filter(|key| !key.is_empty()),
            keepalive: seconds(&where_, "http.keepalive_secs", raw.http.keepalive_secs.0)?,
            shutdown_timeout: seconds(&where_, "http.shutdown_timeout", raw.http.shutdown_timeout.0)?,
            drain_delay: if raw.http.drain_delay.0 == 0.0 {
                Duration::ZERO
            } else {
                seconds(&where_, "http.drain_delay", raw.http.drain_delay.0)?
            },
            mcp_stateless: raw.http.mcp_stateless,
            mcp_max_sessions: match raw.http.mcp_max_sessions {
                0 => {
                    return Err(format!(
                        "{where_}: http.mcp_max_sessions must be at least 1"
                    ))
                }
                n => n,
            },
            mcp_state_key: match raw.http.mcp_state_key.filter(|key| !key.is_empty()) {
                Some(key) if key.len() < 32 => {
                    return Err(format!(
                        "{where_}: http.mcp_state_key must be at least 32 bytes (it signs MCP requestState; e.g. `openssl rand -hex 32`), found {}",
                        key.len()
                    ))
                }
                other => other,
            },
            runs: crate::transport::http::Retention {
                keep: seconds(&where_, "runs.retention", raw.runs.retention.0)?,
                max_runs: raw.runs.max_runs.max(1),
                max_running: raw.runs.max_running.max(1),
                max_bytes: raw.runs.max_bytes.0.max(1),
            },
        },
        flow_dirs,
        plugin_dirs,
        filter: Filter {
            enabled: raw.enabled_flows,
            disabled: raw.disabled_flows,
        },
        llm: llm_config(&where_, &raw.llm)?,
        watch: raw.watch && !flags.no_watch,
        debounce: Duration::from_millis(raw.debounce_ms),
        ops: crate::exec::Settings {
            max_op_threads: raw.max_op_threads,
            max_concurrency,
            max_queue,
            isolation: crate::exec::IsolationPolicy {
                default: raw.ops.isolation,
                plugins: raw
                    .plugins
                    .into_iter()
                    .filter_map(|(name, p)| Some((name, p.isolation?)))
                    .collect(),
                inline: raw.ops.inline,
            },
            max_workers: raw.ops.max_workers.unwrap_or(64).max(1),
            worker_idle_timeout: seconds(
                &where_,
                "ops.worker_idle_timeout",
                raw.ops.worker_idle_timeout.0,
            )?,
        },
        cache_dir: raw.cache.dir,
        store: crate::store::Settings {
            path_is_default: raw.store.path.is_none(),
            url: match raw.store.url.filter(|url| !url.trim().is_empty()) {
                Some(url) if !url.starts_with("redis://") => {
                    return Err(format!(
                        "{where_}: store.url must be a Redis URL (redis://HOST:PORT/DB), found `{}`",
                        url.split('@').next_back().unwrap_or_default()
                    ))
                }
                other => other,
            },
            path: match raw.store.path {
                Some(path) if path.as_os_str() == ":memory:" => None,
                Some(path) if path.as_os_str().is_empty() => {
                    return Err(format!(
                        "{where_}: store.path is empty: name a file, or `:memory:` to keep runs in memory"
                    ))
                }
                Some(path) => Some(path),
                None => Some(crate::store::DEFAULT_PATH.into()),
            },
            lease: match seconds(&where_, "store.lease", raw.store.lease.0)? {
                lease if lease < Duration::from_millis(300) => {
                    return Err(format!(
                        "{where_}: store.lease must be at least 0.3 s (its owner renews it at a third of it)"
                    ))
                }
                lease => lease,
            },
            max_resumes: raw.store.max_resumes,
        },
        auth,
        telemetry,
        upstream,
        source,
    })
}

fn seconds(where_: &str, key: &str, value: f64) -> Result<Duration, String> {
    if value.is_finite() && value > 0.0 && value <= crate::plan::MAX_SECONDS {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!(
            "{where_}: {key} must be a positive number of seconds up to a year, found {}",
            crate::lang::short_number(value)
        ))
    }
}

fn read_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read config file {}: {err}", path.display()))?;
    let value: Value = serde_yaml::from_str(&text).map_err(|err| {
        let (line, col) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
        format!("{}:{line}:{col}: invalid YAML: {err}", path.display())
    })?;
    match value {
        Value::Null => Ok(Value::Object(Map::new())),
        Value::Object(_) => Ok(value),
        _ => Err(format!(
            "{}: a config file is a mapping of keys (backend, http, llm, ...)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_are_typed() {
        let cases = [
            ("a=true", json!({"a": true})),
            ("a=False", json!({"a": false})),
            ("a=9000", json!({"a": 9000})),
            ("a=0.5", json!({"a": 0.5})),
            ("a=[1,2]", json!({"a": [1, 2]})),
            ("a={\"k\":1}", json!({"a": {"k": 1}})),
            ("a=hello world", json!({"a": "hello world"})),
            ("a={oops", json!({"a": "{oops"})),
            ("a.b.c=x", json!({"a": {"b": {"c": "x"}}})),
            ("a=", json!({"a": ""})),
        ];
        for (item, expected) in cases {
            let mut tree = json!({});
            apply_override(&mut tree, item).unwrap();
            assert_eq!(tree, expected, "{item}");
        }
        let mut tree = json!({"http": {"host": "h"}});
        apply_override(&mut tree, "http.port=1").unwrap();
        assert_eq!(tree, json!({"http": {"host": "h", "port": 1}}));
        assert!(apply_override(&mut tree, "noequals").is_err());
        assert!(apply_override(&mut tree, "a..b=1").is_err());
    }

    fn load_text(text: &str, overrides: &[&str]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, text).unwrap();
        load(Flags {
            config: Some(file),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            no_default_plugins: true,
            ..Flags::default()
        })
    }

    #[test]
    fn unknown_keys_in_owned_sections_are_errors_with_a_suggestion() {
        let cases = [
            (
                "http: {apikey: x}\n",
                "unknown key `http.apikey` (did you mean `http.api_key`?)",
            ),
            (
                "http: {cors_origin: [a]}\n",
                "did you mean `http.cors_origins`?",
            ),
            (
                "llm: {default: {model: m}}\n",
                "unknown key `llm.default.model`",
            ),
            (
                "llm: {small: {base_ur: u}}\n",
                "did you mean `llm.small.base_url`?",
            ),
            (
                "debounce: 5\n",
                "unknown key `debounce` (did you mean `debounce_ms`?)",
            ),
            (
                "http: {zzz: 1}\n",
                "unknown key `http.zzz` (known keys here: host, port",
            ),
        ];
        for (text, expected) in cases {
            let err = load_text(text, &[]).unwrap_err();
            assert!(
                err.contains("c.yaml") && err.contains(expected),
                "{text}: {err}"
            );
        }
        let err = load_text("", &["http.apikey=k"]).unwrap_err();
        assert!(err.contains("did you mean `http.api_key`?"), "{err}");
    }

    #[test]
    fn text_settings_keep_digits_as_text() {
        let config = load_text("", &["http.api_key=007123", "http.host=127.0.0.1"]).unwrap();
        assert_eq!(config.http.api_key.as_deref(), Some("007123"));
        let config = load_text("", &["llm.default.model_name=2024"]).unwrap();
        assert_eq!(config.llm.models["default"].model_name, "2024");
        // Numbers stay numbers where a number is meant.
        let config = load_text("", &["http.port=9001"]).unwrap();
        assert_eq!(config.http.port, 9001);
    }

    #[test]
    fn admission_limits_and_flowllm_limit_concurrency() {
        let config = load_text("ops: {max_concurrency: 8}\n", &[]).unwrap();
        assert_eq!(
            (config.ops.max_concurrency, config.ops.max_queue),
            (Some(8), 8)
        );
        let config = load_text("ops: {max_concurrency: 8, max_queue: 0}\n", &[]).unwrap();
        assert_eq!(
            (config.ops.max_concurrency, config.ops.max_queue),
            (Some(8), 0)
        );
        // uvicorn's limit_concurrency: refuse past it, no line.
        let config = load_text("http: {limit_concurrency: 64}\n", &[]).unwrap();
        assert_eq!(
            (config.ops.max_concurrency, config.ops.max_queue),
            (Some(64), 0)
        );
        let config = load_text("", &[]).unwrap();
        assert_eq!(config.ops.max_concurrency, None);
        let err = load_text("ops: {max_concurency: 1}\n", &[]).unwrap_err();
        assert!(err.contains("did you mean `ops.max_concurrency`?"), "{err}");
        assert!(load_text("ops: {max_concurrency: 0}\n", &[]).is_err());
        let config = load_text(
            "ops: {isolation: process}\nplugins: {op-basic: {isolation: in_process}}\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.ops.isolation.default,
            crate::plan::Isolation::Process
        );
        assert_eq!(
            config.ops.isolation.plugins["op-basic"],
            crate::plan::Isolation::InProcess
        );
        let err = load_text("ops: {isolation: sandbox}\n", &[]).unwrap_err();
        assert!(err.contains("sandbox") && err.contains("process"), "{err}");
        let err = load_text("plugins: {op-basic: {isolaton: process}}\n", &[]).unwrap_err();
        assert!(
            err.contains("did you mean `plugins.op-basic.isolation`?"),
            "{err}"
        );
        assert_eq!(config.ops.isolation.inline, crate::exec::Inline::Auto);
        let config = load_text("runs: {retention: 60, max_runs: 5}\n", &[]).unwrap();
        assert_eq!(config.http.runs.keep, Duration::from_secs(60));
        assert_eq!(config.http.runs.max_runs, 5);
        let err = load_text("runs: {retention_secs: 60}\n", &[]).unwrap_err();
        assert!(err.contains("did you mean `runs.retention`?"), "{err}");
        assert!(load_text("runs: {retention: 0}\n", &[]).is_err());
        let config = load_text("ops: {inline: never}\n", &[]).unwrap();
        assert_eq!(config.ops.isolation.inline, crate::exec::Inline::Never);
        let err = load_text("ops: {inline: always}\n", &[]).unwrap_err();
        assert!(err.contains("always") && err.contains("never"), "{err}");
    }

    /// The seed's FlowLLM config (FlowLLM's streaming-service guide), verbatim.
    const SEED: &str = "backend: http\nthread_pool_max_workers: 128\nhttp:\n  host: \"0.0.0.0\"\n  port: 8002\nflow:\n  demo_stream_http_flow:\n    flow_content: GenSystemPromptOp() >> StreamChatOp()\n    stream: true\n    description: \"AI assistant\"\n    input_schema:\n      query:\n        type: string\n        description: \"question\"\n        required: true\nllm:\n  default:\n    backend: openai_compatible\n    model_name: qwen3-30b-a3b-instruct-2507\n    params:\n      temperature: 0.6\nembedding_model:\n  default:\n    backend: openai_compatible\n    model_name: text-embedding-v4\n    params:\n      dimensions: 1024\nvector_store:\n  default:\n    backend: memory\n    embedding_model: default\n";

    #[test]
    fn the_seed_flowllm_config_keeps_loading() {
        let config = load_text(SEED, &[]).unwrap();
        assert_eq!(config.http.host, "0.0.0.0");
        assert_eq!(
            config.llm.models["default"].model_name,
            "qwen3-30b-a3b-instruct-2507"
        );
    }

    #[test]
    fn file_then_overrides_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "backend: http\nhttp: {host: 0.0.0.0, port: 1}\nthread_pool_max_workers: 8\ndisabled_flows: [x]\nflow: {a: {flow_content: EchoOp()}}\n",
        )
        .unwrap();
        let config = load(Flags {
            config: Some(file.clone()),
            overrides: vec!["http.port=9000".into()],
            host: Some("127.0.0.2".into()),
            no_default_plugins: true,
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(
            (config.http.host.as_str(), config.http.port),
            ("127.0.0.2", 9000)
        );
        assert_eq!(config.filter.disabled, vec!["x".to_string()]);
        assert_eq!(config.flow_dirs, vec![PathBuf::from("flows")]);

        let err = load(Flags {
            config: Some(file),
            overrides: vec!["http.port=high".into()],
            no_default_plugins: true,
            ..Flags::default()
        })
        .unwrap_err();
        assert!(
            err.contains("c.yaml: http.port: expected a port number"),
            "{err}"
        );
    }
}
