//! The flow's schemas: FlowLLM's short `input_schema` form (`param: {type, description,
//! required}`) turned into a JSON Schema object, for `input_schema` and `output_schema`. The
//! compiled flow checks input and output against them (`crate::plan::Flow`).

use serde_json::{json, Map, Value};

/// Turns FlowLLM's short form (`param: {type, description, required, enum, items}`) into a
/// JSON Schema object; a value that already is one (has `type: object`, `properties` or
/// `$schema`) is kept as is.
pub(crate) fn normalize_schema(schema: Value) -> Result<Value, String> {
    let Value::Object(map) = schema else {
        return Err("must be a mapping of parameter names to {type, description, required}".into());
    };
    let is_full = map.get("type").and_then(Value::as_str) == Some("object")
        || map.contains_key("properties")
        || map.contains_key("$schema");
    let schema = if is_full {
        Value::Object(map)
    } else {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for (param, spec) in map {
            let Value::Object(mut spec) = spec else {
                return Err(format!(
                    "parameter `{param}` must be a mapping such as {{type: string, description: ..., required: true}}"
                ));
            };
            match spec.remove("required") {
                Some(Value::Bool(true)) => required.push(Value::String(param.clone())),
                None | Some(Value::Bool(false)) => {}
                Some(other) => {
                    return Err(format!(
                        "parameter `{param}`: required must be true or false, found {other}"
                    ))
                }
            }
            properties.insert(param, Value::Object(spec));
        }
        let mut schema = json!({"type": "object", "properties": properties});
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
        schema
    };
    jsonschema::meta::validate(&schema).map_err(|err| format!("not a valid JSON Schema: {err}"))?;
    Ok(schema)
}
