//! Configuration: an optional `flowhost.yaml` (FlowLLM-like keys), FlowLLM-style `key=value`
//! overrides, then command-line flags, validated into one [`Config`]. No clap type gets past
//! this module; nothing else reads the environment or the config file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::catalog::Filter;
use crate::transport::http::Settings as Http;

/// The validated configuration every command runs from.
#[derive(Clone, Debug)]
pub struct Config {
    pub backend: Backend,
    pub http: Http,
    pub flow_dirs: Vec<PathBuf>,
    pub plugin_dirs: Vec<PathBuf>,
    pub filter: Filter,
    /// The LLMs ops can call (FlowLLM's `llm:` section plus the environment).
    pub llm: crate::llm::Config,
    pub watch: bool,
    pub debounce: Duration,
    /// Upper bound of threads running ops at once.
    pub max_op_threads: usize,
    /// Runs of all flows at once (`ops.max_concurrency`, or FlowLLM's
    /// `http.limit_concurrency`); `None`: no limit.
    pub max_concurrency: Option<usize>,
    /// Runs that may wait for a turn past `max_concurrency` (`ops.max_queue`).
    pub max_queue: usize,
    /// Where ops run: `ops.isolation` and `plugins.<name>.isolation`.
    pub isolation: crate::exec::IsolationPolicy,
    /// Worker processes alive at once (`ops.max_workers`).
    pub max_workers: usize,
    /// `cache.dir`: where `enable_cache=True` calls are also kept as files.
    pub cache_dir: Option<PathBuf>,
    /// The config file that was read, if any.
    pub source: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Http,
    /// MCP over stdio (FlowLLM calls this backend `mcp`).
    #[serde(alias = "mcp")]
    Stdio,
}

/// What the command line adds on top of the file and the overrides.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub flows: Vec<PathBuf>,
    pub plugins: Vec<PathBuf>,
    /// Skip the folder of the flowhost binary (tests, isolated setups).
    pub no_default_plugins: bool,
    pub overrides: Vec<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub api_key: Option<String>,
    pub transport: Option<Backend>,
    pub no_watch: bool,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct Raw {
    backend: Backend,
    http: RawHttp,
    flows_dir: OneOrMany,
    plugin_dirs: Vec<PathBuf>,
    enabled_flows: Vec<String>,
    disabled_flows: Vec<String>,
    llm: Value,
    watch: bool,
    debounce_ms: u64,
    max_op_threads: usize,
    ops: RawOps,
    plugins: std::collections::BTreeMap<String, RawPlugin>,
    cache: RawCache,
    runs: RawRuns,
    /// Allowed so a FlowLLM config can be read; flows are served from the flows folder.
    flow: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawOps {
    max_concurrency: Option<usize>,
    max_queue: Option<usize>,
    isolation: crate::plan::Isolation,
    max_workers: Option<usize>,
    inline: crate::exec::Inline,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawRuns {
    retention: f64,
    max_runs: usize,
    max_bytes: usize,
}

impl Default for RawRuns {
    fn default() -> RawRuns {
        let defaults = crate::transport::http::Retention::default();
        RawRuns {
            retention: defaults.keep.as_secs_f64(),
            max_runs: defaults.max_runs,
            max_bytes: defaults.max_bytes,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCache {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPlugin {
    isolation: Option<crate::plan::Isolation>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawHttp {
    host: String,
    port: u16,
    body_limit: usize,
    cors_origins: Vec<String>,
    allowed_hosts: Vec<String>,
    api_key: Option<String>,
    keepalive_secs: f64,
    shutdown_timeout: f64,
    drain_delay: f64,
    mcp_stateless: bool,
    mcp_state_key: Option<String>,
    /// FlowLLM's uvicorn settings; accepted, not used.
    timeout_keep_alive: Option<Value>,
    limit_concurrency: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Default for Raw {
    fn default() -> Raw {
        Raw {
            backend: Backend::Http,
            http: RawHttp::default(),
            flows_dir: OneOrMany::One(PathBuf::from("flows")),
            plugin_dirs: Vec::new(),
            enabled_flows: Vec::new(),
            disabled_flows: Vec::new(),
            llm: Value::Null,
            watch: true,
            debounce_ms: 50,
            // An op that waits (a tick, an LLM token) holds its thread; a small cap made 512
            // waiting streams starve every other flow. Waiting threads cost little on Linux
            // (stack touched, not reserved); the user-facing bound is admission control.
            max_op_threads: DEFAULT_MAX_OP_THREADS,
            ops: RawOps::default(),
            plugins: Default::default(),
            cache: RawCache::default(),
            runs: RawRuns::default(),
            flow: Value::Null,
        }
    }
}

impl Default for RawHttp {
    fn default() -> RawHttp {
        RawHttp {
            host: "127.0.0.1".into(),
            port: 8002,
            body_limit: 1024 * 1024,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            api_key: None,
            keepalive_secs: 15.0,
            shutdown_timeout: 10.0,
            drain_delay: 0.0,
            mcp_stateless: false,
            mcp_state_key: None,
            timeout_keep_alive: None,
            limit_concurrency: None,
        }
    }
}

/// The top-level keys flowhost reads (the fields of `Raw`).
const KEYS: &[&str] = &[
    "backend",
    "http",
    "flows_dir",
    "plugin_dirs",
    "enabled_flows",
    "disabled_flows",
    "llm",
    "watch",
    "debounce_ms",
    "max_op_threads",
    "ops",
    "plugins",
    "cache",
    "runs",
    "flow",
];

/// The keys of the `ops` section (the fields of `RawOps`).
const OPS_KEYS: &[&str] = &[
    "max_concurrency",
    "max_queue",
    "isolation",
    "max_workers",
    "inline",
];

/// The keys of the `http` section (the fields of `RawHttp`).
const HTTP_KEYS: &[&str] = &[
    "host",
    "port",
    "body_limit",
    "cors_origins",
    "allowed_hosts",
    "api_key",
    "keepalive_secs",
    "shutdown_timeout",
    "drain_delay",
    "mcp_stateless",
    "mcp_state_key",
    "timeout_keep_alive",
    "limit_concurrency",
];

/// FlowLLM's `http` keys that flowhost accepts and does not use.
const FLOWLLM_HTTP_KEYS: &[&str] = &["timeout_keep_alive"];

/// The keys of one `llm.<name>` entry (the fields of `RawLlm`).
const LLM_KEYS: &[&str] = &[
    "backend",
    "model_name",
    "params",
    "base_url",
    "api_key",
    "connect_timeout",
    "first_token_timeout",
    "idle_timeout",
    "total_timeout",
    "max_retries",
];

/// Settings that are text: a `key=value` override keeps them as written (`http.api_key=007`
/// stays `"007"`). A `*` stands for any one key.
const TEXT_SETTINGS: &[&str] = &[
    "http.host",
    "http.api_key",
    "http.mcp_state_key",
    "llm.*.model_name",
    "llm.*.base_url",
    "llm.*.api_key",
    "llm.*.backend",
    "backend",
];

/// Keys FlowLLM configs carry that flowhost has no use for: accepted with a warning.
const FLOWLLM_KEYS: &[&str] = &[
    "mcp",
    "enable_logo",
    "thread_pool_max_workers",
    "language",
    "embedding_model",
    "vector_store",
    "ray_max_workers",
    "external_mcp",
    "cmd",
    "disabled_flows_only",
];

/// Threads that may run ops at once unless `max_op_threads` says otherwise.
pub const DEFAULT_MAX_OP_THREADS: usize = 10_000;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_FILE: &str = "flowhost.yaml";

/// Builds the configuration: defaults, then the config file, then `key=value` overrides, then
/// flags.
pub fn load(flags: Flags) -> Result<Config, String> {
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
    let raw: Raw = serde_json::from_value(tree).map_err(|err| format!("{where_}: {err}"))?;
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
            port: flags.port.unwrap_or(raw.http.port),
            body_limit: raw.http.body_limit,
            cors_origins: raw.http.cors_origins,
            allowed_hosts: raw.http.allowed_hosts,
            api_key: flags
                .api_key
                .or(raw.http.api_key)
                .filter(|key| !key.is_empty()),
            keepalive: seconds(&where_, "http.keepalive_secs", raw.http.keepalive_secs)?,
            shutdown_timeout: seconds(&where_, "http.shutdown_timeout", raw.http.shutdown_timeout)?,
            drain_delay: if raw.http.drain_delay == 0.0 {
                Duration::ZERO
            } else {
                seconds(&where_, "http.drain_delay", raw.http.drain_delay)?
            },
            mcp_stateless: raw.http.mcp_stateless,
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
                keep: seconds(&where_, "runs.retention", raw.runs.retention)?,
                max_runs: raw.runs.max_runs.max(1),
                max_bytes: raw.runs.max_bytes.max(1),
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
        cache_dir: raw.cache.dir,
        source,
    })
}

/// Checks the keys of the sections flowhost owns. An unknown key there is an error naming its
/// full path and the closest known key (a typo must not silently fall back to a default);
/// FlowLLM's keys that flowhost does not use are dropped with a warning. The same rules hold
/// for the config file and for `key=value` overrides.
fn check_keys(where_: &str, tree: &mut Value) -> Result<(), String> {
    let Value::Object(map) = tree else {
        return Ok(());
    };
    let mut unknown = Vec::new();
    map.retain(|key, _| {
        if KEYS.contains(&key.as_str()) {
            return true;
        }
        if FLOWLLM_KEYS.contains(&key.as_str()) {
            tracing::warn!("{where_}: `{key}` is a FlowLLM setting that flowhost ignores");
        } else {
            unknown.push(key.clone());
        }
        false
    });
    if let Some(key) = unknown.first() {
        return Err(unknown_key(where_, key, key, KEYS));
    }
    if let Some(Value::Object(http)) = map.get_mut("http") {
        for key in http.keys() {
            if !HTTP_KEYS.contains(&key.as_str()) {
                return Err(unknown_key(where_, &format!("http.{key}"), key, HTTP_KEYS));
            }
            if FLOWLLM_HTTP_KEYS.contains(&key.as_str()) {
                tracing::warn!(
                    "{where_}: `http.{key}` is a FlowLLM (uvicorn) setting that flowhost ignores"
                );
            }
        }
    }
    if let Some(Value::Object(ops)) = map.get("ops") {
        for key in ops.keys() {
            if !OPS_KEYS.contains(&key.as_str()) {
                return Err(unknown_key(where_, &format!("ops.{key}"), key, OPS_KEYS));
            }
        }
    }
    if let Some(Value::Object(runs)) = map.get("runs") {
        const RUNS_KEYS: &[&str] = &["retention", "max_runs", "max_bytes"];
        for key in runs.keys() {
            if !RUNS_KEYS.contains(&key.as_str()) {
                return Err(unknown_key(where_, &format!("runs.{key}"), key, RUNS_KEYS));
            }
        }
    }
    if let Some(Value::Object(cache)) = map.get("cache") {
        for key in cache.keys() {
            if key != "dir" {
                return Err(unknown_key(where_, &format!("cache.{key}"), key, &["dir"]));
            }
        }
    }
    if let Some(Value::Object(plugins)) = map.get("plugins") {
        for (name, entry) in plugins {
            let Value::Object(entry) = entry else {
                continue;
            };
            for key in entry.keys() {
                if key != "isolation" {
                    return Err(unknown_key(
                        where_,
                        &format!("plugins.{name}.{key}"),
                        key,
                        &["isolation"],
                    ));
                }
            }
        }
    }
    if let Some(Value::Object(llm)) = map.get("llm") {
        for (name, entry) in llm {
            let Value::Object(entry) = entry else {
                continue;
            };
            for key in entry.keys() {
                if !LLM_KEYS.contains(&key.as_str()) {
                    return Err(unknown_key(
                        where_,
                        &format!("llm.{name}.{key}"),
                        key,
                        LLM_KEYS,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// "unknown key `http.apikey` (did you mean `http.api_key`?)".
fn unknown_key(where_: &str, path: &str, key: &str, known: &[&str]) -> String {
    let prefix = path.strip_suffix(key).unwrap_or_default();
    match crate::util::suggest::closest(key, known.iter().copied()) {
        Some(best) => format!("{where_}: unknown key `{path}` (did you mean `{prefix}{best}`?)"),
        None => format!(
            "{where_}: unknown key `{path}` (known keys here: {})",
            known.join(", ")
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLlm {
    #[serde(default = "openai_compatible")]
    backend: String,
    model_name: Option<String>,
    #[serde(default)]
    params: Map<String, Value>,
    base_url: Option<String>,
    api_key: Option<String>,
    connect_timeout: Option<f64>,
    first_token_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    total_timeout: Option<f64>,
    max_retries: Option<u32>,
}

fn openai_compatible() -> String {
    "openai_compatible".into()
}

/// FlowLLM's `llm:` section; `FLOW_LLM_BASE_URL` / `FLOW_LLM_API_KEY` (and `FLOW_LLM_MODEL`)
/// fill what entries leave out. Without a section there is one entry, `default`.
fn llm_config(where_: &str, section: &Value) -> Result<crate::llm::Config, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut entries: Map<String, Value> = match section {
        Value::Null => Map::new(),
        Value::Object(map) => map.clone(),
        _ => {
            return Err(format!(
                "{where_}: llm must map names to {{backend, model_name, params}}"
            ))
        }
    };
    if !entries.contains_key("default") {
        entries.insert("default".into(), Value::Object(Map::new()));
    }
    let mut config = crate::llm::Config::default();
    for (name, entry) in entries {
        let raw: RawLlm =
            serde_json::from_value(entry).map_err(|err| format!("{where_}: llm.{name}: {err}"))?;
        if raw.backend != "openai_compatible" {
            return Err(format!(
                "{where_}: llm.{name}.backend `{}` is not supported (use openai_compatible)",
                raw.backend
            ));
        }
        let defaults = crate::llm::Timeouts::default();
        let timeout = |key: &str, value: Option<f64>, default: Duration| match value {
            None => Ok(default),
            Some(v) => seconds(where_, &format!("llm.{name}.{key}"), v),
        };
        config.models.insert(
            name.clone(),
            crate::llm::Model {
                model_name: raw
                    .model_name
                    .or_else(|| env("FLOW_LLM_MODEL"))
                    .unwrap_or_else(|| "default".into()),
                params: raw.params,
                base_url: raw.base_url.or_else(|| env("FLOW_LLM_BASE_URL")),
                api_key: raw.api_key.or_else(|| env("FLOW_LLM_API_KEY")),
                timeouts: crate::llm::Timeouts {
                    connect: timeout("connect_timeout", raw.connect_timeout, defaults.connect)?,
                    first_token: timeout(
                        "first_token_timeout",
                        raw.first_token_timeout,
                        defaults.first_token,
                    )?,
                    idle: timeout("idle_timeout", raw.idle_timeout, defaults.idle)?,
                    total: timeout("total_timeout", raw.total_timeout, defaults.total)?,
                },
                max_retries: raw.max_retries.unwrap_or(2),
            },
        );
    }
    Ok(config)
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

/// Applies one FlowLLM-style `a.b.c=value` override.
pub fn apply_override(tree: &mut Value, item: &str) -> Result<(), String> {
    let Some((path, raw)) = item.split_once('=') else {
        return Err(format!(
            "override `{item}` is not key=value (for example http.port=9000)"
        ));
    };
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(format!("override `{item}`: `{path}` is not a dotted key"));
    }
    let mut node = tree;
    for key in &keys[..keys.len() - 1] {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let map = node.as_object_mut().ok_or("unreachable")?;
        node = map
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let last = keys[keys.len() - 1].to_string();
    let value = if is_text_setting(&keys) {
        Value::String(raw.to_string())
    } else {
        typed_value(raw)
    };
    node.as_object_mut()
        .ok_or("unreachable")?
        .insert(last, value);
    Ok(())
}

fn is_text_setting(keys: &[&str]) -> bool {
    TEXT_SETTINGS.iter().any(|pattern| {
        let parts: Vec<&str> = pattern.split('.').collect();
        parts.len() == keys.len() && parts.iter().zip(keys).all(|(p, k)| *p == "*" || p == k)
    })
}

/// Types a command-line value the FlowLLM way: bool, int, float, JSON, else string.
pub fn typed_value(raw: &str) -> Value {
    match raw {
        "true" | "True" => return Value::Bool(true),
        "false" | "False" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(int) = raw.parse::<i64>() {
        return Value::from(int);
    }
    if let Ok(float) = raw.parse::<f64>() {
        if float.is_finite() {
            return Value::from(float);
        }
    }
    if raw.starts_with('{') || raw.starts_with('[') || raw.starts_with('"') || raw == "null" {
        if let Ok(value) = serde_json::from_str(raw) {
            return value;
        }
    }
    Value::String(raw.to_string())
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
        assert_eq!((config.max_concurrency, config.max_queue), (Some(8), 8));
        let config = load_text("ops: {max_concurrency: 8, max_queue: 0}\n", &[]).unwrap();
        assert_eq!((config.max_concurrency, config.max_queue), (Some(8), 0));
        // uvicorn's limit_concurrency: refuse past it, no line.
        let config = load_text("http: {limit_concurrency: 64}\n", &[]).unwrap();
        assert_eq!((config.max_concurrency, config.max_queue), (Some(64), 0));
        let config = load_text("", &[]).unwrap();
        assert_eq!(config.max_concurrency, None);
        let err = load_text("ops: {max_concurency: 1}\n", &[]).unwrap_err();
        assert!(err.contains("did you mean `ops.max_concurrency`?"), "{err}");
        assert!(load_text("ops: {max_concurrency: 0}\n", &[]).is_err());
        let config = load_text(
            "ops: {isolation: process}\nplugins: {op-basic: {isolation: in_process}}\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.isolation.default, crate::plan::Isolation::Process);
        assert_eq!(
            config.isolation.plugins["op-basic"],
            crate::plan::Isolation::InProcess
        );
        let err = load_text("ops: {isolation: sandbox}\n", &[]).unwrap_err();
        assert!(err.contains("sandbox") && err.contains("process"), "{err}");
        let err = load_text("plugins: {op-basic: {isolaton: process}}\n", &[]).unwrap_err();
        assert!(
            err.contains("did you mean `plugins.op-basic.isolation`?"),
            "{err}"
        );
        assert_eq!(config.isolation.inline, crate::exec::Inline::Auto);
        let config = load_text("runs: {retention: 60, max_runs: 5}\n", &[]).unwrap();
        assert_eq!(config.http.runs.keep, Duration::from_secs(60));
        assert_eq!(config.http.runs.max_runs, 5);
        let err = load_text("runs: {retention_secs: 60}\n", &[]).unwrap_err();
        assert!(err.contains("did you mean `runs.retention`?"), "{err}");
        assert!(load_text("runs: {retention: 0}\n", &[]).is_err());
        let config = load_text("ops: {inline: never}\n", &[]).unwrap();
        assert_eq!(config.isolation.inline, crate::exec::Inline::Never);
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
            err.contains("c.yaml") && err.contains("invalid type"),
            "{err}"
        );
    }
}
