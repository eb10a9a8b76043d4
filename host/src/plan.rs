//! The compiled plan of a flow: what `lang::compile` builds from a flow spec and `exec` runs —
//! the compiled [`Flow`] (its tree of [`Node`]s, its input and output checks), and the settings
//! it runs under ([`Limits`], [`Isolation`], [`TaskSupport`], each op call's [`Policy`]). Knows
//! nothing of how it is built or run; it keeps the [`Spec`] it was compiled from (a flow as its
//! file describes it, which `lang` reads).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ops::OpHandle;

/// One flow as written in a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub(crate) name: String,
    pub(crate) file: PathBuf,
    /// 1-based line of the flow's key in the file.
    pub(crate) line: usize,
    pub flow_content: String,
    pub(crate) stream: bool,
    pub description: String,
    /// The input schema as a full JSON Schema object (FlowLLM's short form is converted).
    pub(crate) input_schema: Value,
    pub(crate) limits: Limits,
    /// `isolation:` in the YAML: where this flow's ops run (else the plugin's or the default).
    pub(crate) isolation: Option<Isolation>,
    /// `output_schema:` the JSON Schema (an object schema) the flow's answer follows: MCP's
    /// `outputSchema`, with the answer as `structuredContent`, checked against it.
    pub(crate) output_schema: Option<Value>,
    /// `icon:` MCP icons (`[{src, mimeType?, sizes?}]`) from a URL / data URI, a mapping, or a
    /// list of either.
    pub(crate) icons: Vec<Value>,
    /// The flow's own YAML (its name and spec, as written in its file).
    pub(crate) source: String,
    /// `task:` whether MCP clients that speak the tasks extension get a task for a call.
    pub(crate) task: TaskSupport,
    /// `task_after:` seconds a call may run (or ask the client) before it becomes a task
    /// (default `lang`'s `DEFAULT_TASK_AFTER`; 0: at once).
    pub(crate) task_after: Duration,
    /// `on_crash:` what an async run of this flow does when the host running it dies.
    pub(crate) on_crash: OnCrash,
    /// Where `flow_content`'s text starts, to map expression positions to file positions.
    pub(crate) content_origin: Origin,
}

impl Spec {
    /// The spec of a flow whose own spec does not parse: its name and place, nothing to run.
    pub(crate) fn unparsed(name: &str, file: &std::path::Path, line: usize) -> Spec {
        Spec {
            name: name.to_string(),
            file: file.to_path_buf(),
            line,
            flow_content: String::new(),
            stream: false,
            description: String::new(),
            input_schema: serde_json::json!({"type": "object"}),
            limits: Limits::default(),
            isolation: None,
            output_schema: None,
            icons: Vec::new(),
            source: String::new(),
            task: TaskSupport::default(),
            task_after: Duration::ZERO,
            on_crash: OnCrash::Resume,
            content_origin: Origin::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Origin {
    pub(crate) line: usize,
    pub(crate) col: usize,
    /// Block scalar (`|`/`>`): expression lines map to file lines, columns from `col`.
    pub(crate) block: bool,
}

/// A compiled, runnable flow.
#[derive(Debug)]
pub struct Flow {
    /// The flow's name, interned once here so runs can tag chunks without a lookup.
    pub(crate) name: &'static str,
    /// Its runs' span name (`run {name}`), made once.
    pub(crate) run_span: &'static str,
    pub(crate) spec: Arc<Spec>,
    pub(crate) root: Node,
    pub(crate) validator: Arc<jsonschema::Validator>,
    /// The `output_schema` check, when the flow declares one.
    pub(crate) output_validator: Option<Arc<jsonschema::Validator>>,
}

impl Flow {
    /// Checks a request body against the input schema and hands it back; one message per
    /// problem, naming the field (`query: "query" is a required property`).
    pub(crate) fn check_input(
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
    pub(crate) fn structured_output(&self, answer: &Value) -> Option<Result<Value, String>> {
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

/// `task:` in the YAML: MCP tasks (the 2026-07-28 `io.modelcontextprotocol/tasks` extension).
/// `optional` (the default): a client that declares the extension gets a task it polls, a
/// client that does not gets the result directly; `required`: clients without the extension
/// are refused; `forbidden`: always answered directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TaskSupport {
    #[default]
    Optional,
    Required,
    Forbidden,
}

/// `on_crash:` what a durable async run does when the host running it dies (kill -9, OOM, a
/// lost node): `resume` (the default) runs it on from the op that was running, with the ops
/// that completed restored from the store, not run again; `fail` ends it `failed` with
/// `interrupted: host stopped` (for flows whose ops must not run twice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnCrash {
    #[default]
    Resume,
    Fail,
}

/// Where ops run: on a thread of the host, or in a worker process that a crash cannot take
/// the host down with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Isolation {
    #[default]
    InProcess,
    Process,
}

/// Per-flow limits; `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Limits {
    pub(crate) first_chunk_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) total_timeout: Option<Duration>,
    pub(crate) max_output_bytes: Option<u64>,
    /// Runs of this flow at once (admission control); more wait in line.
    pub(crate) max_concurrency: Option<usize>,
    /// Runs that may wait for a turn (default: `max_concurrency`); more are refused (503).
    pub(crate) max_queue: Option<usize>,
    /// Memory an isolated op's worker may allocate (MiB); past it the worker is stopped.
    pub(crate) max_memory_mb: Option<u64>,
}

/// The longest timeout a flow or the configuration may set: a year. Longer is a typo, and
/// would overflow deadline arithmetic.
pub(crate) const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A compiled expression.
#[derive(Debug)]
pub(crate) enum Node {
    Call(Step),
    Seq(Vec<Arc<Node>>),
    Par(Vec<Arc<Node>>),
    /// `FlowOp(flow="name")`: another served flow, looked up when it runs (its live version).
    Flow(FlowRef),
    /// `McpOp(mcp_name=..., tool_name=...)`: a tool of an outside MCP server (`external_mcp`).
    Mcp(McpStep),
}

/// A call of an outside MCP server's tool (`McpOp`, FlowLLM's `BaseMcpOp`).
#[derive(Debug)]
pub(crate) struct McpStep {
    /// The server's name under `external_mcp`.
    pub(crate) server: String,
    pub(crate) tool: String,
    /// What the call goes by in chunks, logs and errors (`name=`, else the tool's name).
    pub(crate) name: &'static str,
    pub(crate) inputs: McpInputs,
    /// The context key the result's text is written to (`<tool>_result`; `output_key=`); its
    /// structured content, when it has some, goes to `<output_key>_structured`.
    pub(crate) output_key: String,
    /// `save_answer`: the result's text is also the step's answer.
    pub(crate) save_answer: bool,
    /// `timeout=` seconds, else the server's `timeout`.
    pub(crate) timeout: Option<Duration>,
    /// `max_retries` (made again only when the server failed, never for an `isError` result),
    /// `raise_exception`, `name`.
    pub(crate) policy: Policy,
}

/// Where a tool call's arguments come from.
#[derive(Debug)]
pub(crate) enum McpInputs {
    /// FlowLLM's way: each parameter of the tool's input schema from the context key of the
    /// same name (`input_schema_mapping` renames); a required one missing fails the call.
    Schema(Vec<McpParam>),
    /// The whole context (a tool served onward, `expose`: its caller's arguments as given).
    Whole,
}

#[derive(Debug)]
pub(crate) struct McpParam {
    pub(crate) name: String,
    pub(crate) context_key: String,
    pub(crate) required: bool,
}

/// The outside MCP servers' tools as they were last listed: what `McpOp` compiles against.
/// Filled by `upstream`; a server keeps its last list while it restarts.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct McpCatalog {
    pub(crate) servers: std::collections::BTreeMap<String, McpServer>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct McpServer {
    /// None until the server first listed its tools.
    pub(crate) tools: Option<Arc<[McpTool]>>,
    /// Why the server has not listed its tools yet, when it has not.
    pub(crate) pending: Option<String>,
    /// `expose`: its tools also served as flows named `<server><separator><tool>`.
    pub(crate) expose: Option<Expose>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct McpTool {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) input_schema: Value,
}

/// `external_mcp.<name>.expose`: which tools are served onward, and under what names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expose {
    pub(crate) separator: String,
    /// Tool names or glob patterns; empty: every tool.
    pub(crate) include: Vec<String>,
    pub(crate) exclude: Vec<String>,
}

impl Expose {
    /// Whether `tool` is served onward.
    pub(crate) fn admits(&self, tool: &str) -> bool {
        let matches = |patterns: &[String]| {
            patterns.iter().any(|p| {
                p == tool || glob::Pattern::new(p).is_ok_and(|pattern| pattern.matches(tool))
            })
        };
        (self.include.is_empty() || matches(&self.include)) && !matches(&self.exclude)
    }
}

/// A reference to another flow (`FlowOp(flow="name")`).
#[derive(Debug, Clone)]
pub(crate) struct FlowRef {
    pub(crate) name: String,
    /// Where `FlowOp` stands in the source (1-based line and column), for cycle reports.
    pub(crate) line: usize,
    pub(crate) col: usize,
}

impl Node {
    /// The ops this node calls, in source order (sub-ops after their parent; `FlowOp(flow=x)`
    /// for a flow).
    pub(crate) fn op_names(&self, out: &mut Vec<String>) {
        match self {
            Node::Call(step) => {
                out.push(step.op.name.to_string());
                for sub in step.subs.iter() {
                    sub.node.op_names(out);
                }
            }
            Node::Seq(items) | Node::Par(items) => {
                for item in items {
                    item.op_names(out);
                }
            }
            Node::Flow(flow) => out.push(format!("FlowOp(flow={})", flow.name)),
            Node::Mcp(mcp) => out.push(format!("McpOp({}.{})", mcp.server, mcp.tool)),
        }
    }

    /// Every flow this node runs through `FlowOp`, sub-ops included.
    pub(crate) fn flow_refs<'a>(&'a self, out: &mut Vec<&'a FlowRef>) {
        match self {
            Node::Call(step) => {
                for sub in step.subs.iter() {
                    sub.node.flow_refs(out);
                }
            }
            Node::Seq(items) | Node::Par(items) => {
                for item in items {
                    item.flow_refs(out);
                }
            }
            Node::Flow(flow) => out.push(flow),
            Node::Mcp(_) => {}
        }
    }
}

/// One op call: the op, its JSON arguments, and what the host does around the call.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) op: Arc<OpHandle>,
    pub(crate) args_json: Arc<str>,
    pub(crate) policy: Policy,
    /// Sub-ops attached with `<<`: what the op may call (an agent's tools).
    pub(crate) subs: Arc<[SubStep]>,
    /// Its calls' span name (`op {name}`), made once.
    pub(crate) span_name: &'static str,
}

/// A sub-op as its parent sees it: a tool with a name, a description and an input schema.
/// A `FlowOp` sub-op takes its description and schema from its flow when called.
#[derive(Debug)]
pub(crate) struct SubStep {
    pub(crate) name: String,
    pub(crate) description: String,
    /// JSON Schema of the arguments the parent calls it with (they become its context).
    pub(crate) input_schema: serde_json::Value,
    /// One op call, `FlowOp`, or an MCP server's tool.
    pub(crate) node: Node,
}

impl Step {
    /// The name the call goes by in chunks, logs and errors (`name=`, else the op's).
    pub(crate) fn name(&self) -> &'static str {
        self.policy.name.unwrap_or(self.op.name)
    }
}

/// FlowLLM's keywords every op takes, handled by the host and not passed to the op.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Policy {
    /// `max_retries`, FlowLLM's meaning: calls in all (1: no retry). Only a call that failed
    /// before it emitted anything is made again.
    pub(crate) attempts: u32,
    /// `raise_exception=False`: a failure is recorded and the flow goes on.
    pub(crate) tolerate_failure: bool,
    /// `enable_cache=True`: how long an answer is reused (`cache_expire_hours`, default 0.1).
    pub(crate) cache_ttl: Option<Duration>,
    /// `name=`: what the call is called in chunks, logs and errors.
    pub(crate) name: Option<&'static str>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            attempts: 1,
            tolerate_failure: false,
            cache_ttl: None,
            name: None,
        }
    }
}

/// The keywords [`Policy`] takes out of an op call's arguments (the compiler takes them in
/// this order).
/// Names a flow cannot take: `POST /{flow}` would meet the HTTP route of the same name
/// first. (A test in `transport/http` keeps this list equal to the routes' first segments.)
pub(crate) const RESERVED_FLOW_NAMES: [&str; 12] = [
    "docs",
    "events",
    "flows",
    "health",
    "mcp",
    "metrics",
    "ops",
    "prompts",
    "ready",
    "resources",
    "runs",
    "v1",
];

pub(crate) const POLICY_KEYWORDS: [&str; 5] = [
    "max_retries",
    "raise_exception",
    "enable_cache",
    "cache_expire_hours",
    "name",
];
