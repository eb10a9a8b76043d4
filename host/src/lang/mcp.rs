//! The outside MCP servers' tools in flows: `McpOp(mcp_name=..., tool_name=...)` (and
//! FlowLLM's spelling, `BaseMcpOp`, with its defaults: three calls, failures tolerated),
//! `McpTools(mcp_name=..., include=[...], exclude=[...])` (a server's tools as an agent's
//! sub-ops), and the flows that serve a server's tools onward (`expose`). Bound against the
//! servers' tool lists as last listed ([`McpCatalog`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::diagnostics::Diagnostic;
use super::expr;
use crate::plan::{
    Expose, Flow, McpCatalog, McpInputs, McpParam, McpStep, McpTool, Node, Policy, Spec,
};

pub(super) const MCP_TOOLS: &str = "McpTools";

/// Ends the message of a flow naming a tool its server does not list (see
/// [`upstream_tool_gone`]).
const TOOL_GONE: &str = " (it is compiled again whenever the server's tools change)";

/// Whether a compile error is only that an outside MCP server does not list a tool (now):
/// the catalog keeps the flow it served.
pub(crate) fn upstream_tool_gone(error: &Diagnostic) -> bool {
    error
        .message
        .lines()
        .next()
        .is_some_and(|l| l.contains(TOOL_GONE))
}

/// `McpOp` or FlowLLM's `BaseMcpOp`.
pub(super) fn is_mcp_op(name: &str) -> bool {
    name == "McpOp" || name == "BaseMcpOp"
}

/// What `McpOp` takes besides FlowLLM's per-op keywords.
const MCP_OP_KEYWORDS: [&str; 10] = [
    "mcp_name",
    "tool_name",
    "save_answer",
    "input_schema_required",
    "input_schema_optional",
    "input_schema_deleted",
    "input_schema_mapping",
    "output_key",
    "timeout",
    "description",
];

/// `McpOp(...)`: the step and the tool it is to an agent (its name, description and input
/// schema after `input_schema_*`).
pub(super) fn bind_mcp_op(
    spec: &Spec,
    call: &expr::Call,
    mcp: &McpCatalog,
) -> Result<(McpStep, crate::ops::Tool), Diagnostic> {
    let error = |message: String| spec.at_expr(call.pos, format!("{}: {message}", call.name));
    if !call.subs.is_empty() {
        return Err(error("takes no sub-ops".into()));
    }
    let mut args = call.args.clone();
    let flowllm = call.name == "BaseMcpOp";
    let policy = policy(&mut args, flowllm).map_err(&error)?;
    let tools = server_tools(&args, mcp).map_err(&error)?;
    let tool_name = text(&args, "tool_name")
        .map_err(&error)?
        .ok_or_else(|| error("needs `tool_name`, the tool to call".into()))?;
    let Some(tool) = tools.iter().find(|t| t.name == tool_name) else {
        let server = text(&args, "mcp_name").ok().flatten().unwrap_or_default();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        let hint = match crate::util::suggest::closest(&tool_name, names.iter().copied()) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("it lists {}", shown_list(&names)),
        };
        return Err(error(format!(
            "MCP server `{server}` has no tool `{tool_name}`; {hint}{TOOL_GONE}"
        )));
    };
    for key in args.keys() {
        if !MCP_OP_KEYWORDS.contains(&key.as_str()) {
            let hint = match crate::util::suggest::closest(key, MCP_OP_KEYWORDS.iter().copied()) {
                Some(near) => format!(" (did you mean `{near}`?)"),
                None => String::new(),
            };
            return Err(error(format!(
                "unknown argument `{key}`{hint}: McpOp takes {} and max_retries, raise_exception, name; the tool's own arguments come from the flow context",
                MCP_OP_KEYWORDS.join(", ")
            )));
        }
    }
    let server = text(&args, "mcp_name").map_err(&error)?.unwrap_or_default();
    let mut schema = tool.input_schema.clone();
    edit_schema(&mut schema, &args).map_err(&error)?;
    let mapping = match args.get("input_schema_mapping") {
        None => Map::new(),
        Some(Value::Object(map)) if map.values().all(Value::is_string) => map.clone(),
        Some(other) => {
            return Err(error(format!(
                "input_schema_mapping must map the tool's parameters to context keys ({{\"path\": \"file_path\"}}), not {other}"
            )))
        }
    };
    let save_answer = match args.get("save_answer") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(error(format!(
                "save_answer must be True or False, not {other}"
            )))
        }
    };
    let timeout = match args.get("timeout") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_f64()
                .filter(|s| *s > 0.0 && *s <= crate::plan::MAX_SECONDS)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| error(format!("timeout must be seconds above 0, not {value}")))?,
        ),
    };
    // FlowLLM writes `{short_name}_result`: `base_mcp_result`, or `name=` without `_op`.
    let output_key = match (
        text(&args, "output_key").map_err(&error)?,
        flowllm,
        policy.name,
    ) {
        (Some(key), _, _) => key,
        (None, true, Some(name)) => format!("{}_result", name.strip_suffix("_op").unwrap_or(name)),
        (None, true, None) => "base_mcp_result".to_string(),
        (None, false, name) => format!("{}_result", identifier(name.unwrap_or(&tool.name))),
    };
    let params = properties(&schema)
        .into_iter()
        .map(|(name, required)| McpParam {
            context_key: mapping
                .get(&name)
                .and_then(Value::as_str)
                .unwrap_or(&name)
                .to_string(),
            name,
            required,
        })
        .collect();
    let name = policy
        .name
        .unwrap_or_else(|| crate::ops::intern(&tool.name));
    let agent_tool = crate::ops::Tool {
        name: name.to_string(),
        description: match text(&args, "description").map_err(&error)? {
            Some(d) => d,
            None => tool.description.clone(),
        },
        input_schema: schema,
    };
    let step = McpStep {
        server,
        tool: tool.name.clone(),
        name,
        inputs: McpInputs::Schema(params),
        output_key,
        save_answer,
        timeout,
        policy,
    };
    Ok((step, agent_tool))
}

/// `McpTools(mcp_name=..., include=[...], exclude=[...])`: one step per tool the filters let
/// through (names or glob patterns; an `include` name that matches no tool is a mistake).
pub(super) fn bind_mcp_tools(
    spec: &Spec,
    call: &expr::Call,
    mcp: &McpCatalog,
) -> Result<Vec<(McpStep, crate::ops::Tool)>, Diagnostic> {
    let error = |message: String| spec.at_expr(call.pos, format!("{}: {message}", call.name));
    let mut args = call.args.clone();
    let policy = policy(&mut args, false).map_err(&error)?;
    if policy.name.is_some() {
        return Err(error("takes no `name` (each tool goes by its own)".into()));
    }
    let tools = server_tools(&args, mcp).map_err(&error)?;
    const KEYS: [&str; 4] = ["mcp_name", "include", "exclude", "timeout"];
    for key in args.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(error(format!(
                "unknown argument `{key}`: McpTools takes {}, max_retries and raise_exception",
                KEYS.join(", ")
            )));
        }
    }
    let list = |key: &str| -> Result<Vec<String>, Diagnostic> {
        match args.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| error(format!("{key} must be a list of tool names or patterns"))),
            Some(other) => Err(error(format!(
                "{key} must be a list of tool names or patterns, not {other}"
            ))),
        }
    };
    let filter = Expose {
        separator: String::new(),
        include: list("include")?,
        exclude: list("exclude")?,
    };
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    for wanted in &filter.include {
        let pattern = glob::Pattern::new(wanted).ok();
        if !names
            .iter()
            .any(|n| n == wanted || pattern.as_ref().is_some_and(|p| p.matches(n)))
        {
            let hint = match crate::util::suggest::closest(wanted, names.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("it lists {}", shown_list(&names)),
            };
            return Err(error(format!(
                "include: no tool `{wanted}`; {hint}{TOOL_GONE}"
            )));
        }
    }
    let mut out = Vec::new();
    for tool in tools.iter().filter(|t| filter.admits(&t.name)) {
        let mut one = expr::Call {
            name: "McpOp".to_string(),
            args: Map::new(),
            pos: call.pos,
            subs: Vec::new(),
        };
        for key in ["mcp_name", "timeout"] {
            if let Some(value) = args.get(key) {
                one.args.insert(key.to_string(), value.clone());
            }
        }
        one.args
            .insert("tool_name".into(), Value::String(tool.name.clone()));
        let (mut step, agent_tool) = bind_mcp_op(spec, &one, mcp)?;
        step.policy.attempts = policy.attempts;
        step.policy.tolerate_failure = policy.tolerate_failure;
        out.push((step, agent_tool));
    }
    if out.is_empty() {
        return Err(error("the filters leave no tool".into()));
    }
    Ok(out)
}

/// A served tool (`expose`) as a flow named `<server><separator><tool>`: the caller's
/// arguments go to the tool as given; its text is the answer.
pub(crate) fn exposed(server: &str, tool: &McpTool, expose: &Expose) -> Result<Flow, String> {
    let tool_part: String = tool
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = format!("{server}{}{tool_part}", expose.separator);
    let mut spec = Spec::unparsed(&name, &PathBuf::from(format!("external_mcp.{server}")), 0);
    spec.flow_content = format!("McpOp(mcp_name=\"{server}\", tool_name=\"{}\")", tool.name);
    spec.description = tool.description.clone();
    let mut schema = tool.input_schema.clone();
    if !schema.is_object() {
        schema = serde_json::json!({"type": "object"});
    }
    spec.input_schema = schema;
    spec.task_after = super::spec::DEFAULT_TASK_AFTER;
    spec.source = format!(
        "# tool `{}` of MCP server `{server}`, served onward (external_mcp.{server}.expose)\n",
        tool.name
    );
    let validator = jsonschema::validator_for(&spec.input_schema)
        .map_err(|err| format!("the input schema of tool `{}` of MCP server `{server}` is not valid JSON Schema: {err}", tool.name))?;
    let step = McpStep {
        server: server.to_string(),
        tool: tool.name.clone(),
        name: crate::ops::intern(&tool.name),
        inputs: McpInputs::Whole,
        output_key: format!("{}_result", identifier(&tool.name)),
        save_answer: true,
        timeout: None,
        policy: Policy::default(),
    };
    Ok(Flow {
        name: crate::ops::intern(&name),
        run_span: crate::ops::intern(&format!("run {name}")),
        spec: Arc::new(spec),
        root: Node::Mcp(step),
        validator: Arc::new(validator),
        output_validator: None,
    })
}

/// FlowLLM's per-op keywords; `BaseMcpOp` keeps FlowLLM's defaults (`max_retries=3`,
/// `raise_exception=False`). `enable_cache` is refused: a tool call acts on the world.
fn policy(args: &mut Map<String, Value>, flowllm: bool) -> Result<Policy, String> {
    if args.contains_key("enable_cache") || args.contains_key("cache_expire_hours") {
        return Err("enable_cache is for ops whose answer depends only on their input; an MCP tool's call is made every time".into());
    }
    let (retries, raise) = (
        args.contains_key("max_retries"),
        args.contains_key("raise_exception"),
    );
    let mut policy = super::compile::take_policy(args)?;
    if flowllm && !retries {
        policy.attempts = 3;
    }
    if flowllm && !raise {
        policy.tolerate_failure = true;
    }
    Ok(policy)
}

/// The tools of the server `mcp_name` names.
fn server_tools(args: &Map<String, Value>, mcp: &McpCatalog) -> Result<Arc<[McpTool]>, String> {
    let Some(server) = args.get("mcp_name").and_then(Value::as_str) else {
        return Err("needs `mcp_name`, a server under external_mcp in the config".into());
    };
    let Some(found) = mcp.servers.get(server) else {
        let names: Vec<&str> = mcp.servers.keys().map(String::as_str).collect();
        return Err(match (names.is_empty(), crate::util::suggest::closest(server, names.iter().copied())) {
            (true, _) => format!("no MCP server `{server}`: the config has no external_mcp (add {server}: {{command: ..., args: [...]}} under external_mcp)"),
            (false, Some(near)) => format!("no MCP server `{server}` under external_mcp; did you mean `{near}`?"),
            (false, None) => format!("no MCP server `{server}` under external_mcp (it names {})", shown_list(&names)),
        });
    };
    match &found.tools {
        Some(tools) => Ok(tools.clone()),
        None => Err(format!(
            "MCP server `{server}` has not listed its tools yet ({}); the flow goes live when it does",
            found.pending.as_deref().unwrap_or("starting")
        )),
    }
}

/// `input_schema_required` / `_optional` / `_deleted` applied to a tool's schema.
fn edit_schema(schema: &mut Value, args: &Map<String, Value>) -> Result<(), String> {
    let names = |key: &str| -> Result<Vec<String>, String> {
        match args.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{key} must be a list of parameter names")),
            Some(other) => Err(format!(
                "{key} must be a list of parameter names, not {other}"
            )),
        }
    };
    let known: Vec<String> = properties(schema).into_iter().map(|(n, _)| n).collect();
    let check = |key: &str, list: &[String]| -> Result<(), String> {
        for name in list {
            if !known.contains(name) {
                let hint =
                    match crate::util::suggest::closest(name, known.iter().map(String::as_str)) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => format!(
                            "it takes {}",
                            shown_list(&known.iter().map(String::as_str).collect::<Vec<_>>())
                        ),
                    };
                return Err(format!("{key}: the tool has no parameter `{name}`; {hint}"));
            }
        }
        Ok(())
    };
    let (required, optional, deleted) = (
        names("input_schema_required")?,
        names("input_schema_optional")?,
        names("input_schema_deleted")?,
    );
    check("input_schema_required", &required)?;
    check("input_schema_optional", &optional)?;
    check("input_schema_deleted", &deleted)?;
    let Some(object) = schema.as_object_mut() else {
        return Ok(());
    };
    let mut req: Vec<String> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for name in &required {
        if !req.contains(name) {
            req.push(name.clone());
        }
    }
    req.retain(|n| !optional.contains(n) && !deleted.contains(n));
    if let Some(Value::Object(props)) = object.get_mut("properties") {
        for name in &deleted {
            props.remove(name);
        }
    }
    if req.is_empty() {
        object.remove("required");
    } else {
        object.insert(
            "required".into(),
            req.into_iter().map(Value::String).collect(),
        );
    }
    Ok(())
}

/// A schema's properties in order, each with whether it is required.
fn properties(schema: &Value) -> Vec<(String, bool)> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema["properties"]
        .as_object()
        .map(|props| {
            props
                .keys()
                .map(|k| (k.clone(), required.contains(&k.as_str())))
                .collect()
        })
        .unwrap_or_default()
}

fn text(args: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key} must be text, not {other}")),
    }
}

/// A context key made of a tool name (`get-sum` → `get_sum`).
fn identifier(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn shown_list(names: &[&str]) -> String {
    if names.is_empty() {
        return "no tools".into();
    }
    let mut shown: Vec<String> = names.iter().take(20).map(|n| format!("`{n}`")).collect();
    if names.len() > 20 {
        shown.push(format!("and {} more", names.len() - 20));
    }
    shown.join(", ")
}
