//! The flow's schemas: FlowLLM's short `input_schema` form turned into JSON Schema, and a
//! compiled flow's input and output checked against its validators.

use serde_json::{json, Map, Value};

use super::compile::Flow;

impl Flow {
    /// Checks a request body against the input schema and hands it back; one message per
    /// problem, naming the field (`query: "query" is a required property`).
    pub fn check_input(
        &self,
        input: Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<(String, String)>> {
        let value = Value::Object(input);
        self.validate(&value)?;
        match value {
            Value::Object(map) => Ok(map),
            _ => Ok(Map::new()),
        }
    }

    /// The structured output of an answer when the flow declares `output_schema`: the answer
    /// as a JSON object (a string answer is parsed as JSON), checked against the schema.
    /// `None` when the flow declares none.
    pub fn structured_output(&self, answer: &Value) -> Option<Result<Value, String>> {
        let validator = self.output_validator.as_ref()?;
        let value = match answer {
            Value::String(text) => match serde_json::from_str::<Value>(text.trim()) {
                Ok(value) => value,
                Err(err) => {
                    return Some(Err(format!(
                        "the flow declares output_schema but its answer is not JSON: {err}"
                    )))
                }
            },
            other => other.clone(),
        };
        let problems: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        Some(if problems.is_empty() {
            Ok(value)
        } else {
            Err(format!(
                "the answer does not match the flow's output_schema: {}",
                problems.join("; ")
            ))
        })
    }

    fn validate(&self, input: &Value) -> Result<(), Vec<(String, String)>> {
        let problems: Vec<(String, String)> = self
            .validator
            .iter_errors(input)
            .map(|err| {
                let mut field = err.instance_path().to_string();
                if field.is_empty() {
                    // A missing required property is reported on the parent object.
                    if let jsonschema::error::ValidationErrorKind::Required { property } =
                        err.kind()
                    {
                        field = format!("/{}", property.as_str().unwrap_or_default());
                    }
                }
                (field.trim_start_matches('/').to_string(), err.to_string())
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Turns FlowLLM's short form (`param: {type, description, required, enum, items}`) into a
/// JSON Schema object; a value that already is one (has `type: object`, `properties` or
/// `$schema`) is kept as is.
pub fn normalize_schema(schema: Value) -> Result<Value, String> {
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
