//! FlowLLM-style `a.b.c=value` overrides: where they land in the tree, and how a value is
//! typed (text settings stay text).

use serde_json::{Map, Value};

/// Settings that are text: a `key=value` override keeps them as written (`http.api_key=007`
/// stays `"007"`). A `*` stands for any one key.
pub(super) const TEXT_SETTINGS: &[&str] = &[
    "http.host",
    "http.api_key",
    "http.mcp_state_key",
    "llm.*.model_name",
    "llm.*.base_url",
    "llm.*.api_key",
    "llm.*.backend",
    "backend",
];

/// Applies one FlowLLM-style `a.b.c=value` override.
pub(crate) fn apply_override(tree: &mut Value, item: &str) -> Result<(), String> {
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

pub(super) fn is_text_setting(keys: &[&str]) -> bool {
    TEXT_SETTINGS.iter().any(|pattern| {
        let parts: Vec<&str> = pattern.split('.').collect();
        parts.len() == keys.len() && parts.iter().zip(keys).all(|(p, k)| *p == "*" || p == k)
    })
}

/// Types a command-line value the FlowLLM way: bool, int, float, JSON, else string.
pub(crate) fn typed_value(raw: &str) -> Value {
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
