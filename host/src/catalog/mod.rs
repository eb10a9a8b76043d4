//! The catalog: what is served. Holds the current immutable [`Snapshot`] (flows compiled against
//! the op registry) behind an `ArcSwap`, and rebuilds it when flow files or plugins change.
//! Knows nothing of transports or of how changes are noticed (`watch` calls [`Catalog::reload`]).

mod compile;
pub(crate) mod content;
mod exposed;
mod refs;
pub mod watch;

/// A flow as its file describes it (what `Entry::spec` holds).
pub use crate::plan::Spec;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch as signal;

use crate::lang::{self, Diagnostic, Severity};
use crate::ops::{Plugins, Registry};
use crate::plan::{Flow, McpCatalog};
use compile::{add_note, compile_entry};

/// One flow as served: live (`flow` is `Some`) or broken (`flow` is `None`, `error` says why).
/// A live flow can carry an error too: its file's newest version failed and the last good
/// version is still serving.
#[derive(Clone, Debug)]
pub struct Entry {
    pub spec: Arc<Spec>,
    pub flow: Option<Arc<Flow>>,
    pub error: Option<Diagnostic>,
}

impl Entry {
    pub fn status(&self) -> &'static str {
        match (&self.flow, &self.error) {
            (Some(_), None) => "live",
            (Some(_), Some(_)) => "stale",
            (None, _) => "broken",
        }
    }
}

/// An immutable view of everything served. A reload builds a new one; requests in flight keep
/// the one they started with.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub registry: Arc<Registry>,
    pub flows: BTreeMap<String, Entry>,
    /// Every flow-file problem (including those attached to flows).
    pub diagnostics: Vec<Diagnostic>,
    /// Some live flow has an input property with `x-mcp-header` (MCP's `Mcp-Param-*`
    /// headers then need checking); found once per reload, not per request.
    pub(crate) mcp_param_headers: bool,
    /// The outside MCP servers' tools this snapshot was compiled against.
    pub(crate) mcp: Arc<McpCatalog>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.flows.get(name)
    }

    pub(crate) fn live(&self) -> impl Iterator<Item = (&String, &Arc<Flow>)> {
        self.flows
            .iter()
            .filter_map(|(name, entry)| entry.flow.as_ref().map(|flow| (name, flow)))
    }

    /// Every flow with its status, and every error, as `flowhost flows --json` and `GET /flows`
    /// show them.
    /// The flows `visible` lets through; the files' errors only when `errors` (a caller
    /// that may not see every flow must not read the names in them).
    pub(crate) fn flows_json(
        &self,
        visible: impl Fn(&str) -> bool,
        errors: bool,
    ) -> serde_json::Value {
        let flows: Vec<serde_json::Value> = self
            .flows
            .iter()
            .filter(|(name, _)| visible(name))
            .map(|(name, entry)| {
                serde_json::json!({
                    "name": name,
                    "status": entry.status(),
                    "stream": entry.spec.stream,
                    "description": entry.spec.description,
                    "file": entry.spec.file,
                    "input_schema": entry.spec.input_schema,
                    "flow_content": entry.spec.flow_content,
                    "error": entry.error.as_ref().map(|d| d.to_string()),
                })
            })
            .collect();
        let errors: Vec<String> = match errors {
            true => self.errors().map(|d| d.to_string()).collect(),
            false => Vec::new(),
        };
        serde_json::json!({"generation": self.generation, "flows": flows, "errors": errors})
    }

    /// A hash of the served flow set (each flow's name, status and definition, in name
    /// order), the same on every replica serving the same flows wherever their files live.
    pub(crate) fn flows_hash(&self) -> String {
        let mut text = String::new();
        for (name, entry) in &self.flows {
            let spec = &entry.spec;
            text.push_str(&format!(
                "{name}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{:?}\n",
                entry.status(),
                spec.flow_content,
                spec.stream,
                spec.description,
                spec.input_schema,
                spec.limits,
                spec.isolation,
            ));
        }
        format!("{:016x}", crate::util::stable_hash(text.as_bytes()))
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// Flow errors plus plugins that failed to load.
    pub(crate) fn error_count(&self) -> usize {
        self.errors().count() + self.registry.errors.len()
    }

    /// Ops served, counted across plugins.
    pub(crate) fn op_count(&self) -> usize {
        self.registry.ops.len()
    }

    /// The loaded plugins as `[{name, version, file}]`, for health pages.
    pub(crate) fn plugins_json(&self) -> serde_json::Value {
        self.registry
            .libraries
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.plugin_name, "version": l.plugin_version, "file": l.path,
                })
            })
            .collect()
    }

    /// Ops, plugins and plugin errors as `GET /ops` shows them.
    pub(crate) fn ops_json(&self) -> serde_json::Value {
        self.registry.to_json()
    }

    /// What plugins are served (FNV-1a over their content hashes), the same in every replica.
    pub(crate) fn plugins_hash(&self) -> String {
        self.registry.plugins_hash()
    }
}

/// Which flows to serve (FlowLLM's `enabled_flows` / `disabled_flows`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub(crate) enabled: Vec<String>,
    pub(crate) disabled: Vec<String>,
}

impl Filter {
    fn allows(&self, name: &str) -> bool {
        (self.enabled.is_empty() || self.enabled.iter().any(|n| n == name))
            && !self.disabled.iter().any(|n| n == name)
    }
}

struct FileState {
    text_hash: u64,
    parsed: lang::FileFlows,
    /// The last version that parsed as YAML; used while the file has a syntax error.
    last_parsed: Vec<Result<Spec, Diagnostic>>,
}

struct State {
    flow_dirs: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
    plugins: Plugins,
    /// Per flow name, the newest spec that compiled.
    last_good: HashMap<String, Arc<Spec>>,
    /// Per flow name, what the last snapshot served (a flow whose upstream tool went away
    /// keeps serving it).
    served: HashMap<String, Arc<Flow>>,
    /// Folders and entries named like flow files that cannot be read (line 0 diagnostics).
    path_problems: Vec<Diagnostic>,
    registry: Arc<Registry>,
    /// The outside MCP servers' tools flows compile against (`McpOp`).
    mcp: Arc<McpCatalog>,
    /// `mcp` changed since the last snapshot.
    mcp_changed: bool,
    filter: Filter,
}

/// The served state and its reload logic.
pub struct Catalog {
    current: ArcSwap<Snapshot>,
    state: Mutex<State>,
    changes: signal::Sender<u64>,
}

impl Catalog {
    /// Loads every plugin and flow file once.
    pub fn load(flow_dirs: Vec<PathBuf>, plugin_dirs: Vec<PathBuf>, filter: Filter) -> Catalog {
        Catalog::load_with(flow_dirs, plugin_dirs, filter, McpCatalog::default())
    }

    /// [`Catalog::load`], flows compiled against the outside MCP servers' tools (`mcp`).
    pub(crate) fn load_with(
        flow_dirs: Vec<PathBuf>,
        plugin_dirs: Vec<PathBuf>,
        filter: Filter,
        mcp: McpCatalog,
    ) -> Catalog {
        let plugins = Plugins::new(plugin_dirs);
        // Absolute (watch events carry absolute paths) but not canonical: a symlinked folder
        // stays the symlink, so a swapped link target is followed.
        let flow_dirs = flow_dirs
            .into_iter()
            .map(|dir| std::path::absolute(&dir).unwrap_or(dir))
            .collect();
        let (changes, _) = signal::channel(0);
        let catalog = Catalog {
            current: ArcSwap::from_pointee(Snapshot::default()),
            state: Mutex::new(State {
                flow_dirs,
                files: BTreeMap::new(),
                plugins,
                last_good: HashMap::new(),
                served: HashMap::new(),
                path_problems: Vec::new(),
                registry: Arc::new(Registry::default()),
                mcp: Arc::new(mcp),
                mcp_changed: false,
                filter,
            }),
            changes,
        };
        catalog.reload(true, true);
        catalog
    }

    /// The snapshot to serve a request from.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Finds the live version of a flow in the snapshot of the moment (`FlowOp`).
    pub fn lookup(self: &Arc<Self>) -> crate::exec::FlowLookup {
        let catalog = Arc::downgrade(self);
        crate::exec::FlowLookup::new(move |name| {
            catalog.upgrade()?.snapshot().get(name)?.flow.clone()
        })
    }

    /// The generation counter, bumped on every reload that changed something.
    pub(crate) fn subscribe(&self) -> signal::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn flow_dirs(&self) -> Vec<PathBuf> {
        self.lock().flow_dirs.clone()
    }

    pub(crate) fn plugin_dirs(&self) -> Vec<PathBuf> {
        self.lock().plugins.dirs().to_vec()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The outside MCP servers' tools changed (or were listed): flows using them compile
    /// again, and exposed tools are served as listed.
    pub(crate) fn set_mcp(&self, mcp: McpCatalog) {
        {
            let mut state = self.lock();
            if *state.mcp == mcp {
                return;
            }
            state.mcp = Arc::new(mcp);
            state.mcp_changed = true;
        }
        self.reload(false, false);
    }

    /// Rescans flow files and/or plugin folders; publishes a new snapshot if anything changed.
    pub(crate) fn reload(&self, flows: bool, plugins: bool) {
        let started = std::time::Instant::now();
        let mut state = self.lock();
        let mcp_changed = std::mem::take(&mut state.mcp_changed);
        let first = self.current.load().generation == 0;
        let mut plugins_changed = false;
        if plugins {
            let report = state.plugins.scan();
            if report.changed() || first {
                plugins_changed = report.changed();
                let registry = Arc::new(state.plugins.registry());
                for error in &registry.errors {
                    if !state.registry.errors.contains(error) {
                        tracing::warn!("{error}");
                    }
                }
                state.registry = registry;
            }
        }
        let flows_changed = flows && state.scan_flows();
        // Plugins list their resources and prompts again (what they offer may change).
        let mut content_changed = false;
        for library in &state.registry.libraries {
            content_changed |= library.refresh_content();
        }
        if !(flows_changed || plugins_changed || content_changed || mcp_changed || first) {
            return;
        }
        let generation = self.current.load().generation + 1;
        let snapshot = state.build(generation);
        drop(state);
        for diag in &snapshot.diagnostics {
            let previous = self.current.load();
            if !previous.diagnostics.contains(diag) {
                tracing::warn!("{diag}");
            }
        }
        let status = |wanted: &str| {
            snapshot
                .flows
                .values()
                .filter(|entry| entry.status() == wanted)
                .count()
        };
        tracing::info!(
            generation,
            flows = snapshot.flows.len(),
            live = status("live"),
            stale = status("stale"),
            broken = status("broken"),
            ops = snapshot.registry.ops.len(),
            ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            "catalog reloaded"
        );
        self.current.store(Arc::new(snapshot));
        self.changes.send_replace(generation);
    }
}

impl State {
    /// Re-reads the flow folders; returns whether any file's content changed.
    fn scan_flows(&mut self) -> bool {
        let mut seen = Vec::new();
        let mut changed = false;
        let mut problems = Vec::new();
        for dir in &self.flow_dirs {
            let files = match lang::list_files(dir) {
                Ok((files, found)) => {
                    problems.extend(found);
                    files
                }
                Err(message) => {
                    // An unreadable folder keeps what was last read from it, as a broken
                    // file keeps its last good version.
                    let kept: Vec<PathBuf> = self
                        .files
                        .keys()
                        .filter(|p| p.starts_with(dir))
                        .cloned()
                        .collect();
                    let note = if kept.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; the flows of the {} file(s) last read from it stay live",
                            kept.len()
                        )
                    };
                    problems.push(lang::path_problem(dir, format!("{message}{note}")));
                    seen.extend(kept);
                    continue;
                }
            };
            for path in files {
                seen.push(path.clone());
                let text = match std::fs::read(&path) {
                    Ok(bytes) => String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string()),
                    Err(err) => Err(err.to_string()),
                };
                let hash = match &text {
                    Ok(text) => crate::ops::plugin::content_hash(text.as_bytes()),
                    Err(message) => crate::ops::plugin::content_hash(message.as_bytes()) ^ 1,
                };
                if self.files.get(&path).is_some_and(|f| f.text_hash == hash) {
                    continue;
                }
                changed = true;
                let parsed = match &text {
                    Ok(text) => lang::parse_file(&path, text),
                    Err(message) => lang::FileFlows {
                        specs: Vec::new(),
                        diagnostics: vec![Diagnostic {
                            file: path.clone(),
                            line: 1,
                            col: 1,
                            severity: Severity::Error,
                            flow: None,
                            message: format!("cannot read flow file: {message}"),
                        }],
                    },
                };
                let last_parsed = match self.files.remove(&path) {
                    Some(old) if !parsed.diagnostics.is_empty() => {
                        if old.parsed.diagnostics.is_empty() {
                            old.parsed.specs
                        } else {
                            old.last_parsed
                        }
                    }
                    _ => Vec::new(),
                };
                self.files.insert(
                    path,
                    FileState {
                        text_hash: hash,
                        parsed,
                        last_parsed,
                    },
                );
            }
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(path));
        if problems != self.path_problems {
            self.path_problems = problems;
            changed = true;
        }
        changed || before != self.files.len()
    }

    fn build(&mut self, generation: u64) -> Snapshot {
        let mut snapshot = Snapshot {
            generation,
            registry: self.registry.clone(),
            ..Snapshot::default()
        };
        let mut owner: HashMap<String, PathBuf> = HashMap::new();
        snapshot
            .diagnostics
            .extend(self.path_problems.iter().cloned());
        for (path, file) in &self.files {
            let file_broken = !file.parsed.diagnostics.is_empty();
            for diag in &file.parsed.diagnostics {
                let mut diag = diag.clone();
                if !file.last_parsed.is_empty() {
                    add_note(
                        &mut diag.message,
                        "the last good version of this file stays live",
                    );
                }
                snapshot.diagnostics.push(diag);
            }
            let specs = if file_broken {
                &file.last_parsed
            } else {
                &file.parsed.specs
            };
            for item in specs {
                let (name, spec) = match item {
                    Ok(spec) => (spec.name.clone(), Some(spec)),
                    Err(diag) => (diag.flow.clone().unwrap_or_default(), None),
                };
                if !self.filter.allows(&name) {
                    continue;
                }
                if let Some(first) = owner.get(&name) {
                    snapshot.diagnostics.push(Diagnostic {
                        file: path.clone(),
                        line: spec.map_or(1, |s| s.line),
                        col: 1,
                        severity: Severity::Error,
                        flow: Some(name.clone()),
                        message: format!(
                            "flow `{name}` is also defined in {}; keeping that one",
                            first.display()
                        ),
                    });
                    continue;
                }
                owner.insert(name.clone(), path.clone());
                let entry = compile_entry(
                    &mut self.last_good,
                    (&self.registry, &self.mcp),
                    &name,
                    item,
                    self.served.get(&name),
                );
                if let Some(error) = &entry.error {
                    snapshot.diagnostics.push(error.clone());
                }
                snapshot.diagnostics.extend(entry.warnings.iter().cloned());
                if let Some(entry) = entry.into_entry(&name) {
                    snapshot.flows.insert(name, entry);
                }
            }
        }
        self.expose(&mut snapshot, &owner);
        snapshot.mcp = self.mcp.clone();
        // Flows whose file vanished or no longer defines them are gone, good version and all.
        self.last_good.retain(|name, _| owner.contains_key(name));
        self.served = snapshot
            .flows
            .iter()
            .filter(|(name, _)| owner.contains_key(*name))
            .filter_map(|(name, entry)| Some((name.clone(), entry.flow.clone()?)))
            .collect();
        refs::check_flow_refs(&mut snapshot);
        let param_headers = snapshot.live().any(|(_, flow)| {
            flow.spec.input_schema["properties"]
                .as_object()
                .is_some_and(|props| props.values().any(|p| p.get("x-mcp-header").is_some()))
        });
        snapshot.mcp_param_headers = param_headers;
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flows folder that cannot be read any more keeps the flows last read from it, and
    /// says why (a broken file keeps its last good version the same way).
    #[test]
    fn an_unreadable_folder_keeps_its_last_flows() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("flows");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "good:\n  flow_content: EchoOp()\n").unwrap();
        let catalog = Catalog::load(vec![dir.clone()], Vec::new(), Filter::default());
        assert!(catalog.snapshot().get("good").is_some());
        std::fs::rename(&dir, root.path().join("gone")).unwrap();
        catalog.reload(true, false);
        let snapshot = catalog.snapshot();
        assert!(
            snapshot.get("good").is_some(),
            "the last flows were dropped"
        );
        let said = snapshot
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .find(|d| d.contains("does not exist"))
            .expect("no diagnostic for the folder");
        assert!(
            said.contains("1 file(s) last read from it stay live"),
            "{said}"
        );
        assert!(said.starts_with(&dir.display().to_string()), "{said}");
    }
}
