//! The keys flowhost reads in each section, and the check that refuses an unknown one with
//! its full path and the closest known key (FlowLLM's own keys are dropped with a warning).

use serde_json::Value;

/// The top-level keys flowhost reads (the fields of `Raw`).
pub(super) const KEYS: &[&str] = &[
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
    "store",
    "auth",
    "audit",
    "telemetry",
    "external_mcp",
    "flow",
];

/// The keys of the `ops` section (the fields of `RawOps`).
pub(super) const OPS_KEYS: &[&str] = &[
    "max_concurrency",
    "max_queue",
    "isolation",
    "max_workers",
    "worker_idle_timeout",
    "inline",
];

/// The keys of the `http` section (the fields of `RawHttp`).
pub(super) const HTTP_KEYS: &[&str] = &[
    "host",
    "port",
    "body_limit",
    "header_timeout",
    "body_timeout",
    "keepalive_timeout",
    "max_connections",
    "cors_origins",
    "allowed_hosts",
    "api_key",
    "keepalive_secs",
    "shutdown_timeout",
    "drain_delay",
    "mcp_stateless",
    "mcp_max_sessions",
    "mcp_state_key",
    "timeout_keep_alive",
    "limit_concurrency",
];

/// The keys of one `llm.<name>` entry (the fields of `RawLlm`).
pub(super) const LLM_KEYS: &[&str] = &[
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

/// Keys FlowLLM configs carry that flowhost has no use for: accepted with a warning.
pub(super) const FLOWLLM_KEYS: &[&str] = &[
    "mcp",
    "enable_logo",
    "thread_pool_max_workers",
    "language",
    "embedding_model",
    "vector_store",
    "ray_max_workers",
    "cmd",
    "disabled_flows_only",
];

/// Checks the keys of the sections flowhost owns. An unknown key there is an error naming its
/// full path and the closest known key (a typo must not silently fall back to a default);
/// FlowLLM's keys that flowhost does not use are dropped with a warning. The same rules hold
/// for the config file and for `key=value` overrides.
pub(super) fn check_keys(where_: &str, tree: &mut Value) -> Result<(), String> {
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
        const RUNS_KEYS: &[&str] = &["retention", "max_runs", "max_bytes", "max_running"];
        for key in runs.keys() {
            if !RUNS_KEYS.contains(&key.as_str()) {
                return Err(unknown_key(where_, &format!("runs.{key}"), key, RUNS_KEYS));
            }
        }
    }
    if let Some(Value::Object(store)) = map.get("store") {
        const STORE_KEYS: &[&str] = &["url", "path", "lease", "max_resumes"];
        for key in store.keys() {
            if !STORE_KEYS.contains(&key.as_str()) {
                return Err(unknown_key(
                    where_,
                    &format!("store.{key}"),
                    key,
                    STORE_KEYS,
                ));
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
pub(super) fn unknown_key(where_: &str, path: &str, key: &str, known: &[&str]) -> String {
    let prefix = path.strip_suffix(key).unwrap_or_default();
    match crate::util::suggest::closest(key, known.iter().copied()) {
        Some(best) => format!("{where_}: unknown key `{path}` (did you mean `{prefix}{best}`?)"),
        None => format!(
            "{where_}: unknown key `{path}` (known keys here: {})",
            known.join(", ")
        ),
    }
}
