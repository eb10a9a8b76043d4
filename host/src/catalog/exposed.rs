//! The tools of outside MCP servers with `expose`, served as flows named
//! `<server><separator><tool>` in the snapshot beside the flow files' flows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Entry, Snapshot, State};
use crate::lang;

impl State {
    /// The tools of servers with `expose`, served as flows (`<server><separator><tool>`); a
    /// flow file's flow of the same name wins, with a warning.
    pub(super) fn expose(&self, snapshot: &mut Snapshot, owner: &HashMap<String, PathBuf>) {
        for (server, view) in &self.mcp.servers {
            let (Some(expose), Some(tools)) = (&view.expose, &view.tools) else {
                continue;
            };
            for tool in tools.iter().filter(|t| expose.admits(&t.name)) {
                let flow = match lang::exposed(server, tool, expose) {
                    Ok(flow) => flow,
                    Err(message) => {
                        tracing::warn!("external_mcp.{server}.expose: {message}; not served");
                        continue;
                    }
                };
                let name = flow.name.to_string();
                if !self.filter.allows(&name) {
                    continue;
                }
                if snapshot.flows.contains_key(&name) && !owner.contains_key(&name) {
                    tracing::warn!(
                        "external_mcp.{server}.expose: tool `{}` would be served as `{name}`, which another served tool already is; not served (rename with expose.separator, or exclude one)",
                        tool.name
                    );
                    continue;
                }
                if let Some(file) = owner.get(&name) {
                    tracing::warn!(
                        "external_mcp.{server}.expose: tool `{}` would be served as `{name}`, which {} defines; the flow file's wins",
                        tool.name,
                        file.display()
                    );
                    continue;
                }
                snapshot.flows.insert(
                    name,
                    Entry {
                        spec: flow.spec.clone(),
                        flow: Some(Arc::new(flow)),
                        error: None,
                    },
                );
            }
        }
    }
}
