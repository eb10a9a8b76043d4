//! Resources and prompts: what plugins offer besides ops (op-sdk 0.1.3), and the flows
//! themselves as `flow://{name}` resources. Transport-neutral: MCP (`resources/*`,
//! `prompts/*`) and HTTP (`GET /resources`, `GET /prompts`) both read a catalog snapshot
//! through here. Plugin calls block (author code): callers run them off the async threads.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::catalog::Snapshot;
use crate::ops::Library;

/// The URI scheme of flow resources.
pub(crate) const FLOW_SCHEME: &str = "flow://";

/// Why a read or prompt request failed.
#[derive(Debug, PartialEq)]
pub(crate) enum ContentError {
    /// No resource or prompt by that name (MCP: resource not found / invalid params).
    NotFound(String),
    /// Bad arguments (a required prompt argument missing).
    Invalid(String),
    /// The plugin failed while reading.
    Failed(String),
    /// The prompt asks the client first: MCP input requests (`{key: {method, params}}`).
    NeedsInput(Value),
}

impl std::fmt::Display for ContentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContentError::NotFound(m) | ContentError::Invalid(m) | ContentError::Failed(m) => {
                f.write_str(m)
            }
            ContentError::NeedsInput(questions) => write!(
                f,
                "this prompt asks the user first ({}); only an MCP 2026-07-28 client can answer",
                questions
                    .as_object()
                    .map(|q| q.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Everything listed: `{resources, templates, prompts}` in MCP's shapes, each item with the
/// plugin that offers it under `_meta.plugin` (flows under `flowhost`). Resources and prompts
/// are ordered by URI / name, so lists are the same on every replica; when two plugins offer
/// the same URI or prompt name, the plugin whose name sorts first serves it.
/// The flow a `flow://NAME` URI names.
pub(crate) fn flow_of_uri(uri: &str) -> Option<&str> {
    uri.strip_prefix(FLOW_SCHEME)
}

pub(crate) fn list(snapshot: &Snapshot, visible: impl Fn(&str) -> bool) -> Value {
    let mut resources: Vec<Value> = Vec::new();
    let mut templates: Vec<Value> = Vec::new();
    let mut prompts: Vec<Value> = Vec::new();
    for (name, entry) in snapshot.flows.iter().filter(|(name, _)| visible(name)) {
        let mut item = json!({
            "uri": format!("{FLOW_SCHEME}{name}"),
            "name": name,
            "title": format!("flow {name}"),
            "description": format!("The flow's YAML and compiled summary ({}).", entry.status()),
            "mimeType": "application/json",
        });
        item["_meta"] = json!({"plugin": "flowhost"});
        resources.push(item);
    }
    for library in by_name(snapshot) {
        for (key, out) in [
            ("resources", &mut resources),
            ("templates", &mut templates),
            ("prompts", &mut prompts),
        ] {
            let listed = library.content_list();
            for item in listed[key].as_array().into_iter().flatten() {
                let mut item = item.clone();
                if let Some(map) = item.as_object_mut() {
                    map.remove("static");
                    map.insert("_meta".into(), json!({"plugin": library.plugin_name}));
                }
                out.push(item);
            }
        }
    }
    dedup_sorted(&mut resources, "uri");
    dedup_sorted(&mut templates, "uriTemplate");
    dedup_sorted(&mut prompts, "name");
    json!({"resources": resources, "templates": templates, "prompts": prompts})
}

/// Stable sort by `key`, keeping the first of equal keys (the plugin listed first).
fn dedup_sorted(items: &mut Vec<Value>, key: &str) {
    items.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
    items.dedup_by(|later, first| later[key] == first[key]);
}

/// Loaded libraries in plugin-name order (the order ties are settled in).
fn by_name(snapshot: &Snapshot) -> Vec<&Arc<Library>> {
    let mut libraries: Vec<&Arc<Library>> = snapshot.registry.libraries.iter().collect();
    libraries.sort_by(|a, b| a.plugin_name.cmp(&b.plugin_name));
    libraries
}

/// Who answers a read of `uri`: a flow, the plugin listing it, or the plugin with a matching
/// template.
enum Reader<'a> {
    Flow(&'a str),
    Plugin(&'a Arc<Library>),
}

fn reader<'a>(snapshot: &'a Snapshot, uri: &'a str) -> Option<Reader<'a>> {
    if let Some(name) = uri.strip_prefix(FLOW_SCHEME) {
        return snapshot
            .flows
            .contains_key(name)
            .then_some(Reader::Flow(name));
    }
    let libraries = by_name(snapshot);
    let listed = libraries.iter().find(|library| {
        library.content_list()["resources"]
            .as_array()
            .is_some_and(|list| list.iter().any(|r| r["uri"] == uri))
    });
    let templated = || {
        libraries.iter().find(|library| {
            library.content_list()["templates"]
                .as_array()
                .is_some_and(|list| {
                    list.iter().any(|t| {
                        t["uriTemplate"]
                            .as_str()
                            .is_some_and(|template| matches_template(template, uri))
                    })
                })
        })
    };
    listed
        .or_else(templated)
        .map(|library| Reader::Plugin(library))
}

/// A fingerprint of what reading `uri` would give, to tell subscribers when it changed: the
/// flow's definition and status, or the serving plugin's build. `None`: nothing serves it.
pub(crate) fn fingerprint(snapshot: &Snapshot, uri: &str) -> Option<String> {
    match reader(snapshot, uri)? {
        Reader::Flow(name) => Some(flow_resource(snapshot, name)?.to_string()),
        Reader::Plugin(library) => Some(format!("{}:{:016x}", library.plugin_name, library.hash)),
    }
}

/// Reads one resource: MCP's `contents` array. Blocks while a plugin reads.
pub(crate) fn read(snapshot: &Snapshot, uri: &str) -> Result<Vec<Value>, ContentError> {
    let not_found = || {
        ContentError::NotFound(format!(
            "no resource `{uri}`: resources/list (GET /resources) names the resources, resources/templates/list the templates"
        ))
    };
    match reader(snapshot, uri).ok_or_else(not_found)? {
        Reader::Flow(name) => {
            let summary = flow_resource(snapshot, name).ok_or_else(not_found)?;
            Ok(vec![json!({
                "uri": uri,
                "mimeType": "application/json",
                "text": serde_json::to_string_pretty(&summary).unwrap_or_default(),
            })])
        }
        Reader::Plugin(library) => {
            let reply = library
                .content(&json!({"method": "read", "uri": uri}))
                .map_err(|message| {
                    ContentError::NotFound(format!(
                        "plugin {} could not read `{uri}`: {message}",
                        library.plugin_name
                    ))
                })?;
            match reply.get("contents") {
                Some(Value::Array(contents)) if !contents.is_empty() => Ok(contents.clone()),
                _ => Err(ContentError::Failed(format!(
                    "plugin {} returned no contents for `{uri}`",
                    library.plugin_name
                ))),
            }
        }
    }
}

/// A flow as a resource: its YAML source and what it compiled to.
fn flow_resource(snapshot: &Snapshot, name: &str) -> Option<Value> {
    let entry = snapshot.get(name)?;
    let spec = &entry.spec;
    let mut ops: Vec<String> = Vec::new();
    if let Some(flow) = &entry.flow {
        flow.root.op_names(&mut ops);
    }
    Some(json!({
        "name": name,
        "status": entry.status(),
        "file": spec.file,
        "line": spec.line,
        "yaml": spec.source,
        "stream": spec.stream,
        "description": spec.description,
        "input_schema": spec.input_schema,
        "output_schema": spec.output_schema,
        "flow_content": spec.flow_content,
        "ops": ops,
        "error": entry.error.as_ref().map(|d| d.to_string()),
        "generation": snapshot.generation,
    }))
}

/// One prompt's messages (MCP `GetPromptResult`). Blocks while the plugin builds them.
/// `answers`: what the client answered to the prompt's questions so far (2026-07-28).
pub(crate) fn prompt(
    snapshot: &Snapshot,
    name: &str,
    arguments: &Map<String, Value>,
    answers: &Map<String, Value>,
) -> Result<Value, ContentError> {
    let found = by_name(snapshot).into_iter().find_map(|library| {
        let listed = library.content_list();
        let prompt = listed["prompts"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)?
            .clone();
        Some((library, prompt))
    });
    let Some((library, prompt)) = found else {
        return Err(ContentError::NotFound(format!(
            "no prompt `{name}`: prompts/list (GET /prompts) names the prompts"
        )));
    };
    let missing: Vec<&str> = prompt["arguments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["required"] == true)
        .filter_map(|a| a["name"].as_str())
        .filter(|arg| arguments.get(*arg).is_none_or(Value::is_null))
        .collect();
    if !missing.is_empty() {
        return Err(ContentError::Invalid(format!(
            "prompt `{name}` needs the argument(s) {}",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let reply = library
        .content(
            &json!({"method": "prompt", "name": name, "arguments": arguments, "answers": answers}),
        )
        .map_err(|message| {
            ContentError::Failed(format!(
                "plugin {} could not build prompt `{name}`: {message}",
                library.plugin_name
            ))
        })?;
    if let Some(questions) = reply.get("questions") {
        return Err(ContentError::NeedsInput(questions.clone()));
    }
    let mut result = json!({"messages": reply["messages"].clone()});
    if let Some(description) = prompt["description"].as_str().filter(|d| !d.is_empty()) {
        result["description"] = json!(description);
    }
    Ok(result)
}

/// Whether `uri` matches an RFC 6570 template of simple (`{var}`: no `/`) and reserved
/// (`{+var}`: anything) expressions; other operators match like reserved ones.
pub(crate) fn matches_template(template: &str, uri: &str) -> bool {
    // Literal pieces alternate with variables: "a{x}b{+y}" → ["a", x, "b", +y, ""].
    let mut pieces: Vec<(&str, bool)> = Vec::new(); // (literal that follows, var may hold '/')
    let mut rest = template;
    let first = match rest.find('{') {
        Some(i) => {
            let literal = &rest[..i];
            rest = &rest[i..];
            literal
        }
        None => return template == uri,
    };
    while let Some(stripped) = rest.strip_prefix('{') {
        let Some(end) = stripped.find('}') else {
            return false;
        };
        let expression = &stripped[..end];
        let wide = !expression.is_empty() && !expression.starts_with(char::is_alphanumeric);
        rest = &stripped[end + 1..];
        let next = rest.find('{').unwrap_or(rest.len());
        pieces.push((&rest[..next], wide));
        rest = &rest[next..];
    }
    let Some(mut remaining) = uri.strip_prefix(first) else {
        return false;
    };
    for (index, (literal, wide)) in pieces.iter().enumerate() {
        let last = index + 1 == pieces.len();
        let value_end = if literal.is_empty() {
            if last {
                remaining.len()
            } else {
                return false; // two variables in a row: ambiguous, refuse
            }
        } else if last {
            match remaining.strip_suffix(literal) {
                Some(value) => value.len(),
                None => return false,
            }
        } else {
            match remaining.find(literal) {
                Some(i) => i,
                None => return false,
            }
        };
        let value = &remaining[..value_end];
        if value.is_empty() || (!wide && value.contains('/')) {
            return false;
        }
        remaining = &remaining[value_end + literal.len()..];
    }
    remaining.is_empty()
}

#[cfg(test)]
mod tests {
    use super::matches_template;

    #[test]
    fn templates_match_simple_and_reserved_variables() {
        assert!(matches_template(
            "test://template/{id}/data",
            "test://template/123/data"
        ));
        assert!(!matches_template(
            "test://template/{id}/data",
            "test://template/1/2/data"
        ));
        assert!(!matches_template(
            "test://template/{id}/data",
            "test://template//data"
        ));
        assert!(!matches_template(
            "test://template/{id}/data",
            "test://template/1/datum"
        ));
        assert!(matches_template("file:///{+path}", "file:///a/b/c.txt"));
        assert!(!matches_template("file:///{path}", "file:///a/b"));
        assert!(matches_template("db://{table}", "db://users"));
        assert!(matches_template("plain://x", "plain://x"));
        assert!(!matches_template("plain://x", "plain://y"));
    }
}
