//! The compiled plan of a flow: what `flow::compile` builds from an expression and `exec` runs.
//! Knows nothing of how it is built or run.

use std::sync::Arc;
use std::time::Duration;

use crate::ops::OpHandle;

/// A compiled expression.
#[derive(Debug)]
pub enum Node {
    Call(Step),
    Seq(Vec<Arc<Node>>),
    Par(Vec<Arc<Node>>),
    /// `FlowOp(flow="name")`: another served flow, looked up when it runs (its live version).
    Flow(FlowRef),
}

/// A reference to another flow (`FlowOp(flow="name")`).
#[derive(Debug, Clone)]
pub struct FlowRef {
    pub name: String,
    /// Where `FlowOp` stands in the source (1-based line and column), for cycle reports.
    pub line: usize,
    pub col: usize,
}

impl Node {
    /// The ops this node calls, in source order (sub-ops after their parent; `FlowOp(flow=x)`
    /// for a flow).
    pub fn op_names(&self, out: &mut Vec<String>) {
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
        }
    }

    /// Every flow this node runs through `FlowOp`, sub-ops included.
    pub fn flow_refs<'a>(&'a self, out: &mut Vec<&'a FlowRef>) {
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
        }
    }
}

/// One op call: the op, its JSON arguments, and what the host does around the call.
#[derive(Debug)]
pub struct Step {
    pub op: Arc<OpHandle>,
    pub args_json: Arc<str>,
    pub policy: Policy,
    /// Sub-ops attached with `<<`: what the op may call (an agent's tools).
    pub subs: Arc<[SubStep]>,
}

/// A sub-op as its parent sees it: a tool with a name, a description and an input schema.
/// A `FlowOp` sub-op takes its description and schema from its flow when called.
#[derive(Debug)]
pub struct SubStep {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments the parent calls it with (they become its context).
    pub input_schema: serde_json::Value,
    /// One op call, or `FlowOp`.
    pub node: Node,
}

impl Step {
    /// The name the call goes by in chunks, logs and errors (`name=`, else the op's).
    pub fn name(&self) -> &'static str {
        self.policy.name.unwrap_or(self.op.name)
    }
}

/// FlowLLM's keywords every op takes, handled by the host and not passed to the op.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `max_retries`, FlowLLM's meaning: calls in all (1: no retry). Only a call that failed
    /// before it emitted anything is made again.
    pub attempts: u32,
    /// `raise_exception=False`: a failure is recorded and the flow goes on.
    pub tolerate_failure: bool,
    /// `enable_cache=True`: how long an answer is reused (`cache_expire_hours`, default 0.1).
    pub cache_ttl: Option<Duration>,
    /// `name=`: what the call is called in chunks, logs and errors.
    pub name: Option<&'static str>,
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

/// The keywords [`Policy`] takes out of an op call's arguments.
pub const POLICY_KEYWORDS: &[&str] = &[
    "max_retries",
    "raise_exception",
    "enable_cache",
    "cache_expire_hours",
    "name",
];
