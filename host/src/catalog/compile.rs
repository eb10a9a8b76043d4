//! Compiling one flow of a snapshot: its newest spec, else its last good one (kept live with
//! the new version's error), against the plugins' ops and the outside MCP servers' tools.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Entry, Spec};
use crate::lang::{self, Diagnostic};
use crate::ops::Registry;
use crate::plan::{Flow, McpCatalog, Node};

/// Compiles one flow, falling back to its last good spec when the new one fails. `served`:
/// what the last snapshot served under this name; when only an outside MCP server's tool
/// list made the same spec fail (a tool renamed or gone), that flow stays live (`stale`) and
/// is compiled again when the server lists the tool.
pub(super) fn compile_entry(
    last_good: &mut HashMap<String, Arc<Spec>>,
    (registry, mcp): (&Registry, &McpCatalog),
    name: &str,
    item: &Result<Spec, Diagnostic>,
    served: Option<&Arc<Flow>>,
) -> Pending {
    {
        let attempt = match item {
            Ok(spec) => {
                let spec = Arc::new(spec.clone());
                match lang::compile(spec.clone(), registry, mcp) {
                    Ok((flow, warnings)) => {
                        last_good.insert(name.to_string(), spec);
                        return Pending {
                            spec: Some(flow.spec.clone()),
                            flow: Some(Arc::new(flow)),
                            error: None,
                            warnings,
                        };
                    }
                    Err(diag) => (Some(spec), diag),
                }
            }
            Err(diag) => (None, diag.clone()),
        };
        let (new_spec, mut error) = attempt;
        if let (Some(flow), Some(spec)) = (served, &new_spec) {
            if *flow.spec == **spec
                && lang::upstream_tool_gone(&error)
                && ops_current(&flow.root, registry)
            {
                add_note(
                    &mut error.message,
                    "the flow stays live; its calls of that tool fail until the server lists it",
                );
                return Pending {
                    spec: Some(flow.spec.clone()),
                    flow: Some(flow.clone()),
                    error: Some(error),
                    warnings: Vec::new(),
                };
            }
        }
        if let Some(good) = last_good.get(name).cloned() {
            if new_spec.as_deref() != Some(&*good) {
                if let Ok((flow, _)) = lang::compile(good.clone(), registry, mcp) {
                    add_note(
                        &mut error.message,
                        "the last good version of this flow stays live",
                    );
                    return Pending {
                        spec: Some(good),
                        flow: Some(Arc::new(flow)),
                        error: Some(error),
                        warnings: Vec::new(),
                    };
                }
            }
        }
        Pending {
            spec: new_spec,
            flow: None,
            error: Some(error),
            warnings: Vec::new(),
        }
    }
}

/// Whether every op a flow calls is the registry's current one (a plugin reload makes a
/// served flow's ops old: it is compiled again, never kept).
fn ops_current(node: &Node, registry: &Registry) -> bool {
    match node {
        Node::Call(step) => {
            registry
                .ops
                .get(step.op.name)
                .is_some_and(|op| Arc::ptr_eq(op, &step.op))
                && step.subs.iter().all(|sub| ops_current(&sub.node, registry))
        }
        Node::Seq(items) | Node::Par(items) => items.iter().all(|i| ops_current(i, registry)),
        Node::Flow(_) | Node::Mcp(_) => true,
    }
}

/// Adds `(note)` to the first line of a message (later lines hold the source and caret).
pub(super) fn add_note(message: &mut String, note: &str) {
    let at = message.find('\n').unwrap_or(message.len());
    message.insert_str(at, &format!(" ({note})"));
}

pub(super) struct Pending {
    pub(super) spec: Option<Arc<Spec>>,
    pub(super) flow: Option<Arc<Flow>>,
    pub(super) error: Option<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
}

impl Pending {
    /// A flow whose spec never parsed is still listed, broken, with a spec that only names
    /// it: every flow its file names is listed, and says why wherever it is asked for.
    pub(super) fn into_entry(self, name: &str) -> Option<Entry> {
        let spec = match (self.spec, &self.error) {
            (Some(spec), _) => spec,
            (None, Some(error)) if !name.is_empty() => {
                Arc::new(Spec::unparsed(name, &error.file, error.line))
            }
            (None, _) => return None,
        };
        Some(Entry {
            spec,
            flow: self.flow,
            error: self.error,
        })
    }
}
