//! The `llm:` section (FlowLLM's shape, plus timeouts and retries) and the environment's
//! `FLOW_LLM_*` / `OPENAI_*` fallbacks, as the LLM service's `Config`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::seconds;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLlm {
    #[serde(default = "openai_compatible")]
    pub(super) backend: String,
    pub(super) model_name: Option<String>,
    #[serde(default)]
    pub(super) params: Map<String, Value>,
    pub(super) base_url: Option<String>,
    pub(super) api_key: Option<String>,
    pub(super) connect_timeout: Option<f64>,
    pub(super) first_token_timeout: Option<f64>,
    pub(super) idle_timeout: Option<f64>,
    pub(super) total_timeout: Option<f64>,
    pub(super) max_retries: Option<u32>,
}

pub(super) fn openai_compatible() -> String {
    "openai_compatible".into()
}

/// FlowLLM's `llm:` section; `FLOW_LLM_BASE_URL` / `FLOW_LLM_API_KEY` (and `FLOW_LLM_MODEL`)
/// fill what entries leave out. Without a section there is one entry, `default`.
pub(super) fn llm_config(where_: &str, section: &Value) -> Result<crate::llm::Config, String> {
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
