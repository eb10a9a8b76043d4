//! Compiling a flow spec against the op registry: binding op names (suggesting the closest
//! known one), checking each call's arguments with the op, taking the host's per-op keywords
//! out into a [`Policy`], and building the validators. Produces the plan (`crate::plan`);
//! runs nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::diagnostics::{Diagnostic, Severity};
use super::expr::{self, Expr};
use crate::ops::Registry;
use crate::plan::Spec;
use crate::plan::{Flow, FlowRef, McpCatalog, Node, Policy, Step, SubStep, POLICY_KEYWORDS};

/// Compiles a spec against the ops that exist now: parses `flow_content`, binds every op name
/// (suggesting the closest known one), checks every call's arguments with the op itself, and
/// builds the input validator. Also returns its warnings: an argument an op's `args_schema`
/// does not name (the op ignores it; most likely a typo), with the closest name it does.
pub(crate) fn compile(
    spec: Arc<Spec>,
    registry: &Registry,
    mcp: &McpCatalog,
) -> Result<(Flow, Vec<Diagnostic>), Diagnostic> {
    let expr = expr::parse(&spec.flow_content)
        .map_err(|err| spec.at_expr(err.pos, format!("flow_content: {}", err.message)))?;
    let mut warnings = Vec::new();
    let root = bind(&spec, &expr, (registry, mcp), &mut warnings)?;
    let validator = jsonschema::validator_for(&spec.input_schema).map_err(|err| {
        spec.diagnostic(
            (spec.line, 1),
            format!("flow `{}`: input_schema: {err}", spec.name),
        )
    })?;
    let output_validator = match &spec.output_schema {
        None => None,
        Some(schema) => Some(Arc::new(jsonschema::validator_for(schema).map_err(
            |err| {
                spec.diagnostic(
                    (spec.line, 1),
                    format!("flow `{}`: output_schema: {err}", spec.name),
                )
            },
        )?)),
    };
    let flow = Flow {
        name: crate::ops::intern(&spec.name),
        run_span: crate::ops::intern(&format!("run {}", spec.name)),
        spec,
        root,
        validator: Arc::new(validator),
        output_validator,
    };
    Ok((flow, warnings))
}

/// What op names bind to: the plugins' ops and the outside MCP servers' tools.
type Bindings<'a> = (&'a Registry, &'a McpCatalog);

fn bind(
    spec: &Spec,
    expr: &Expr,
    bindings: Bindings<'_>,
    warnings: &mut Vec<Diagnostic>,
) -> Result<Node, Diagnostic> {
    match expr {
        Expr::Call(call) if call.name == FLOW_OP => bind_flow_op(spec, call).map(Node::Flow),
        Expr::Call(call) if super::mcp::is_mcp_op(&call.name) => {
            super::mcp::bind_mcp_op(spec, call, bindings.1).map(|(step, _)| Node::Mcp(step))
        }
        Expr::Call(call) if call.name == super::mcp::MCP_TOOLS => Err(spec.at_expr(
            call.pos,
            format!("{} lists a server's tools for an agent: attach it with `<<` (ReactAgentOp() << [McpTools(mcp_name=\"…\")]); to call one tool, use McpOp(mcp_name=\"…\", tool_name=\"…\")", call.name),
        )),
        Expr::Call(call) => bind_call(spec, call, bindings, warnings).map(Node::Call),
        Expr::Seq(items) => Ok(Node::Seq(
            items
                .iter()
                .map(|item| bind(spec, item, bindings, warnings).map(Arc::new))
                .collect::<Result<_, _>>()?,
        )),
        Expr::Par(items) => Ok(Node::Par(
            items
                .iter()
                .map(|item| bind(spec, item, bindings, warnings).map(Arc::new))
                .collect::<Result<_, _>>()?,
        )),
    }
}

/// The host's own op: runs another served flow inside this one.
pub(crate) const FLOW_OP: &str = "FlowOp";

fn bind_flow_op(spec: &Spec, call: &expr::Call) -> Result<FlowRef, Diagnostic> {
    let error = |message: String| spec.at_expr(call.pos, message);
    let mut names = call.args.keys().filter(|k| k.as_str() != "flow");
    if let Some(other) = names.next() {
        return Err(error(format!(
            "FlowOp takes one argument, `flow` (the name of another flow), not `{other}`"
        )));
    }
    let Some(name) = call.args.get("flow").and_then(Value::as_str) else {
        return Err(error(
            "FlowOp needs `flow`, the name of another flow: FlowOp(flow=\"search_flow\")".into(),
        ));
    };
    if !call.subs.is_empty() {
        return Err(error("FlowOp takes no sub-ops".into()));
    }
    if name == spec.name {
        return Err(error(format!("flow `{name}` runs itself through FlowOp")));
    }
    let (line, col) = spec.file_pos(call.pos);
    Ok(FlowRef {
        name: name.to_string(),
        line,
        col,
    })
}

fn bind_call(
    spec: &Spec,
    call: &expr::Call,
    bindings: Bindings<'_>,
    warnings: &mut Vec<Diagnostic>,
) -> Result<Step, Diagnostic> {
    let registry = bindings.0;
    let error = |message: String| spec.at_expr(call.pos, message);
    let Some(op) = registry.get(&call.name) else {
        let unbuilt = crate::ops::unbuilt_source(&call.name);
        let hint = match (unbuilt, registry.suggest(&call.name)) {
            (Some(source), _) => format!(
                ": {} defines it, but it is not built yet: `cargo build --workspace` (a running host loads it live)",
                source.display()
            ),
            (None, Some(known)) => format!("; did you mean `{known}`?"),
            (None, None) if registry.ops.is_empty() => {
                "; no plugins are loaded (build them with `cargo build --workspace`, or pass --plugins DIR)".to_string()
            }
            (None, None) => "; `flowhost ops` lists the known ops".to_string(),
        };
        return Err(error(format!("unknown op `{}`{hint}", call.name)));
    };
    let mut args = call.args.clone();
    let policy =
        take_policy(&mut args).map_err(|message| error(format!("{}: {message}", call.name)))?;
    let unknown = unknown_args(&op.args_schema, &args);
    if let Some((key, hint)) = unknown.first() {
        if forbids_extra(&op.args_schema) {
            return Err(error(format!(
                "{}: unknown argument `{key}`{hint}",
                call.name
            )));
        }
    }
    for (key, hint) in unknown {
        let mut warning = error(format!(
            "{}: argument `{key}` is not one the op knows{hint}; it is passed on, and most likely ignored",
            call.name
        ));
        warning.severity = Severity::Warning;
        warnings.push(warning);
    }
    let args_json = Value::Object(args).to_string();
    op.library
        .check(op.name, &args_json)
        .map_err(|message| error(format!("{}: {message}", call.name)))?;
    let mut subs: Vec<SubStep> = Vec::new();
    for sub in &call.subs {
        let bound: Vec<(Node, crate::ops::Tool)> = if sub.call.name == FLOW_OP {
            let flow = bind_flow_op(spec, &sub.call)?;
            // Described by its flow when called (it may change on reload).
            let tool = crate::ops::Tool {
                name: flow.name.clone(),
                description: String::new(),
                input_schema: Value::Null,
            };
            vec![(Node::Flow(flow), tool)]
        } else if super::mcp::is_mcp_op(&sub.call.name) {
            let (step, tool) = super::mcp::bind_mcp_op(spec, &sub.call, bindings.1)?;
            vec![(Node::Mcp(step), tool)]
        } else if sub.call.name == super::mcp::MCP_TOOLS {
            if sub.name.is_some() {
                return Err(spec.at_expr(
                    sub.call.pos,
                    "McpTools attaches several tools, each under its own name: it takes no name"
                        .into(),
                ));
            }
            super::mcp::bind_mcp_tools(spec, &sub.call, bindings.1)?
                .into_iter()
                .map(|(step, tool)| (Node::Mcp(step), tool))
                .collect()
        } else {
            let step = bind_call(spec, &sub.call, bindings, warnings)?;
            let mut tool = step.op.tool();
            if let Some(name) = step.policy.name {
                tool.name = name.to_string();
            }
            vec![(Node::Call(step), tool)]
        };
        for (node, tool) in bound {
            let name = sub.name.clone().unwrap_or(tool.name);
            if subs.iter().any(|s| s.name == name) {
                return Err(spec.at_expr(
                    sub.call.pos,
                    format!(
                        "two sub-ops of {} are named `{name}`: name them (`{} << {{\"{name}_2\": {}()}}`)",
                        call.name, call.name, sub.call.name,
                    ),
                ));
            }
            subs.push(SubStep {
                name,
                description: tool.description,
                input_schema: tool.input_schema,
                node,
            });
        }
    }
    Ok(Step {
        span_name: crate::ops::intern(&format!("op {}", policy.name.unwrap_or(op.name))),
        op: op.clone(),
        args_json: args_json.into(),
        policy,
        subs: subs.into(),
    })
}

/// Arguments a call passes that its op's `args_schema` does not name (FlowLLM's per-op keywords
/// excepted), each with a "did you mean" hint. None when the op publishes no properties.
fn unknown_args(schema: &Option<Value>, args: &Map<String, Value>) -> Vec<(String, String)> {
    let Some(known) = schema
        .as_ref()
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
    else {
        return Vec::new();
    };
    args.keys()
        .filter(|key| !known.contains_key(*key) && !POLICY_KEYWORDS.contains(&key.as_str()))
        .map(|key| {
            let hint = match crate::util::suggest::closest(key, known.keys().map(String::as_str)) {
                Some(near) => format!(" (did you mean `{near}`?)"),
                None if known.is_empty() => " (the op takes no arguments)".to_string(),
                None => {
                    let names: Vec<String> = known.keys().map(|k| format!("`{k}`")).collect();
                    format!(" (the op takes {})", names.join(", "))
                }
            };
            (key.clone(), hint)
        })
        .collect()
}

fn forbids_extra(schema: &Option<Value>) -> bool {
    schema
        .as_ref()
        .and_then(|s| s.get("additionalProperties"))
        .is_some_and(|extra| extra == &Value::Bool(false))
}

/// Takes FlowLLM's per-op keywords (`max_retries`, `raise_exception`, `enable_cache`,
/// `cache_expire_hours`, `name`) out of a call's arguments; the rest go to the op.
pub(super) fn take_policy(args: &mut Map<String, Value>) -> Result<Policy, String> {
    let mut policy = Policy::default();
    let [max_retries, raise_exception, enable_cache, cache_expire_hours, name] =
        POLICY_KEYWORDS.map(|keyword| args.remove(keyword));
    if let Some(value) = max_retries {
        policy.attempts = value
            .as_u64()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                format!("max_retries must be a whole number from 1 to 100 (calls in all, as in FlowLLM: 1 means no retry), not {value}")
            })? as u32;
    }
    if let Some(value) = raise_exception {
        policy.tolerate_failure = !value
            .as_bool()
            .ok_or_else(|| format!("raise_exception must be True or False, not {value}"))?;
    }
    let enable_cache = match enable_cache {
        Some(value) => value
            .as_bool()
            .ok_or_else(|| format!("enable_cache must be True or False, not {value}"))?,
        None => false,
    };
    let hours = match cache_expire_hours {
        Some(value) => value
            .as_f64()
            .filter(|h| *h > 0.0 && *h <= 24.0 * 366.0)
            .ok_or_else(|| {
                format!("cache_expire_hours must be a number of hours above 0 (at most a year), not {value}")
            })?,
        None => 0.1,
    };
    if enable_cache {
        policy.cache_ttl = Some(Duration::from_secs_f64(hours * 3600.0));
    }
    if let Some(value) = name {
        let name = value
            .as_str()
            .filter(|n| !n.is_empty() && n.len() <= 128 && !n.chars().any(char::is_control))
            .ok_or_else(|| format!("name must be a short text naming this call, not {value}"))?;
        policy.name = Some(crate::ops::intern(name));
    }
    Ok(policy)
}
