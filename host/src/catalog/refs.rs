//! `FlowOp` references between flows: a flow that runs one that does not exist, or that runs
//! itself through others, is marked broken with the chain.

use super::Snapshot;
use crate::lang::Diagnostic;

/// `FlowOp` references: a flow that runs a flow that does not exist, or that runs itself
/// through others, cannot run; it is marked broken with the chain.
pub(super) fn check_flow_refs(snapshot: &mut Snapshot) {
    let mut broken: Vec<(String, Diagnostic)> = Vec::new();
    for (name, entry) in &snapshot.flows {
        let Some(flow) = &entry.flow else {
            continue;
        };
        let mut refs = Vec::new();
        flow.root.flow_refs(&mut refs);
        for target in refs {
            let diagnostic = |message: String| Diagnostic {
                file: flow.spec.file.clone(),
                line: target.line,
                col: target.col,
                severity: crate::lang::Severity::Error,
                flow: Some(name.clone()),
                message,
            };
            if !snapshot.flows.contains_key(&target.name) {
                let known: Vec<&str> = snapshot.flows.keys().map(String::as_str).collect();
                let hint = crate::util::suggest::closest(&target.name, known.iter().copied())
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                broken.push((
                    name.clone(),
                    diagnostic(format!(
                        "flow `{name}`: FlowOp(flow=\"{}\"): no flow `{}` is defined{hint}",
                        target.name, target.name
                    )),
                ));
                break;
            }
            if let Some(chain) = cycle_from(snapshot, name, &target.name) {
                broken.push((
                    name.clone(),
                    diagnostic(format!(
                        "flow `{name}`: FlowOp makes a cycle: {} (a flow cannot run itself)",
                        chain.join(" → ")
                    )),
                ));
                break;
            }
        }
    }
    for (name, diagnostic) in broken {
        if let Some(entry) = snapshot.flows.get_mut(&name) {
            entry.flow = None;
            entry.error = Some(diagnostic.clone());
        }
        snapshot.diagnostics.push(diagnostic);
    }
}

/// The chain `start → next → ... → start` when following `FlowOp`s from `next` comes back.
fn cycle_from(snapshot: &Snapshot, start: &str, next: &str) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    let mut seen = std::collections::HashSet::new();
    fn walk(
        snapshot: &Snapshot,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut std::collections::HashSet<String>,
    ) -> bool {
        path.push(at.to_string());
        if at == start {
            return true;
        }
        if seen.insert(at.to_string()) {
            if let Some(flow) = snapshot.flows.get(at).and_then(|e| e.flow.as_ref()) {
                let mut refs = Vec::new();
                flow.root.flow_refs(&mut refs);
                for target in refs {
                    if walk(snapshot, start, &target.name, path, seen) {
                        return true;
                    }
                }
            }
        }
        path.pop();
        false
    }
    walk(snapshot, start, next, &mut path, &mut seen).then_some(path)
}
