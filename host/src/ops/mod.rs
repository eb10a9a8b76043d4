//! The op registry: which ops exist, from which plugin file, and the plugin folders they were
//! loaded from. Knows nothing of flows or transports; `plugin.rs` below is the FFI.

pub(crate) mod plugin;
mod speed;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;

/// The op-sdk types the rest of the host names (only `ops` names op-sdk): a chunk's kind, an
/// op log line's level.
pub use op_sdk::{ChunkKind, Level};
pub use plugin::Library;
pub use speed::Speed;
pub use speed::PROBATION as PROBATION_CALLS;
pub(crate) use speed::{Call, Probe};

/// One op, bound to the library that provides it.
#[derive(Debug)]
pub struct OpHandle {
    pub(crate) name: &'static str,
    pub(crate) description: String,
    pub(crate) args_schema: Option<Value>,
    pub library: Arc<Library>,
    /// Where its calls run (inline or on the op pool), learnt from its calls.
    pub speed: Arc<Speed>,
    /// The tool description the op declares (`{name, description, input_schema}`), if any.
    pub tool: Option<Value>,
}

/// An op as a tool an agent can call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tool {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) input_schema: Value,
}

impl OpHandle {
    /// The op as a tool: what it declares, else FlowLLM's defaults (the op name in snake
    /// case without `_op`, the op's description, an object of any arguments).
    pub(crate) fn tool(&self) -> Tool {
        let declared = self.tool.as_ref();
        let text = |key: &str| {
            declared
                .and_then(|t| t.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Tool {
            name: text("name").unwrap_or_else(|| short_name(self.name)),
            description: text("description").unwrap_or_else(|| self.description.clone()),
            input_schema: declared
                .and_then(|t| t.get("input_schema"))
                .filter(|s| s.is_object())
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        }
    }
}

/// FlowLLM's short name of an op class: `LoadSkillOp` → `load_skill`.
pub(crate) fn short_name(op: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = op.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let after_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let before_lower = i > 0
                && chars.get(i + 1).is_some_and(|n| n.is_lowercase())
                && chars[i - 1].is_uppercase();
            if after_lower || before_lower {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(*c);
        }
    }
    out.strip_suffix("_op").map(str::to_string).unwrap_or(out)
}

/// An immutable view of the loaded ops; a plugin change builds a new one.
#[derive(Debug, Default)]
pub struct Registry {
    pub(crate) ops: BTreeMap<&'static str, Arc<OpHandle>>,
    pub(crate) libraries: Vec<Arc<Library>>,
    /// Plugin files that were refused, and op-name collisions.
    pub errors: Vec<PluginError>,
}

impl Registry {
    /// A hash of the loaded plugin set (names and content hashes, in name order), the same on
    /// every replica that loaded the same libraries.
    pub(crate) fn plugins_hash(&self) -> String {
        let mut parts: Vec<String> = self
            .libraries
            .iter()
            .map(|l| format!("{}={:016x}", l.plugin_name, l.hash))
            .collect();
        parts.sort();
        format!(
            "{:016x}",
            crate::util::stable_hash(parts.join("\n").as_bytes())
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    pub(crate) path: PathBuf,
    pub(crate) message: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<&Arc<OpHandle>> {
        self.ops.get(name)
    }

    /// The ops and the refused plugin files, as `flowhost ops --json` and `GET /ops` show them.
    pub(crate) fn to_json(&self) -> Value {
        let ops: Vec<Value> = self
            .ops
            .values()
            .map(|op| {
                let tool = op.tool();
                serde_json::json!({
                    "name": op.name,
                    "description": op.description,
                    "plugin": op.library.plugin_name,
                    "plugin_version": op.library.plugin_version,
                    "sdk_version": op.library.sdk_version,
                    "file": op.library.path,
                    "args_schema": op.args_schema,
                    "runs": op.speed.label(),
                    "tool": {
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.input_schema,
                    },
                })
            })
            .collect();
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|e| serde_json::json!({"file": e.path, "message": e.message}))
            .collect();
        let count = |listed: &Value, key: &str| listed[key].as_array().map_or(0, Vec::len);
        let plugins: Vec<Value> = self
            .libraries
            .iter()
            .map(|library| {
                let listed = library.content_list();
                serde_json::json!({
                    "name": library.plugin_name,
                    "version": library.plugin_version,
                    "sdk_version": library.sdk_version,
                    "file": library.path,
                    "ops": library.ops.len(),
                    "resources": count(&listed, "resources"),
                    "resource_templates": count(&listed, "templates"),
                    "prompts": count(&listed, "prompts"),
                })
            })
            .collect();
        serde_json::json!({"ops": ops, "plugins": plugins, "errors": errors})
    }

    /// The known op name closest to `name`, for "did you mean" hints.
    pub(crate) fn suggest(&self, name: &str) -> Option<&'static str> {
        crate::util::suggest::closest(name, self.ops.keys().copied())
    }
}

/// Interns op names so chunks can carry `&'static str` tags without allocating. Names of
/// reloaded plugins are mostly the same names, so the set stays small.
pub(crate) fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut guard = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let names = guard.get_or_insert_with(HashSet::new);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// What an op call may ask of whoever runs it: op-sdk's own `Host`, the trait the SDK's
/// `Context` talks to. One Rust trait on both sides of the ABI: in a plugin, op-sdk's FFI glue
/// implements it over `HostCtx` / `HostServices`; in the host, the executor's op host
/// (`exec/host.rs`) and a worker process's link back to the host (`exec/worker/child.rs`)
/// implement it, and `plugin.rs` adapts it to those FFI traits, wrapping every call in
/// `catch_unwind`, so nothing else in the host names abi_stable types.
pub use op_sdk::Host;

/// A log level from its number on the wire (the FFI and the worker protocol): 1 error, 2 warn,
/// 3 info, anything else debug.
pub(crate) fn level_from_number(level: u8) -> Level {
    match level {
        1 => Level::Error,
        2 => Level::Warn,
        3 => Level::Info,
        _ => Level::Debug,
    }
}

/// The plugin folders and what was loaded from each file. Owned by whoever reloads plugins.
pub struct Plugins {
    dirs: Vec<PathBuf>,
    slots: BTreeMap<(usize, PathBuf), Slot>,
}

struct Slot {
    stamp: Option<(SystemTime, u64)>,
    hash: u64,
    library: Option<Arc<Library>>,
    error: Option<String>,
}

/// What a scan did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub loaded: Vec<PathBuf>,
    pub(crate) refused: Vec<PathBuf>,
    pub(crate) removed: Vec<PathBuf>,
}

impl ScanReport {
    pub fn changed(&self) -> bool {
        !(self.loaded.is_empty() && self.refused.is_empty() && self.removed.is_empty())
    }
}

impl Plugins {
    pub fn new(dirs: Vec<PathBuf>) -> Plugins {
        let mut unique = Vec::new();
        for dir in dirs {
            let dir = dir.canonicalize().unwrap_or(dir);
            if !unique.contains(&dir) {
                unique.push(dir);
            }
        }
        Plugins {
            dirs: unique,
            slots: BTreeMap::new(),
        }
    }

    pub(crate) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Looks at every library file in the plugin folders: loads new and changed ones (by
    /// content hash), forgets deleted ones. A file that fails to load keeps its last good
    /// version live.
    pub fn scan(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let mut seen = HashSet::new();
        for (index, dir) in self.dirs.clone().iter().enumerate() {
            let Ok(entries) = std::fs::read_dir(dir) else {
                tracing::debug!(dir = %dir.display(), "plugin folder not readable");
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| plugin::is_library_name(p) && p.is_file())
                .collect();
            files.sort();
            for path in files {
                seen.insert((index, path.clone()));
                self.refresh(index, &path, &mut report);
            }
        }
        let gone: Vec<_> = self
            .slots
            .keys()
            .filter(|key| !seen.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            tracing::info!(plugin = %key.1.display(), "plugin file removed; its ops are gone");
            self.slots.remove(&key);
            report.removed.push(key.1);
        }
        report
    }

    fn refresh(&mut self, index: usize, path: &Path, report: &mut ScanReport) {
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let key = (index, path.to_path_buf());
        if let Some(slot) = self.slots.get(&key) {
            if stamp.is_some() && slot.stamp == stamp {
                return;
            }
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::debug!(plugin = %path.display(), %err, "cannot read plugin file yet");
                return;
            }
        };
        let hash = plugin::content_hash(&bytes);
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.stamp = stamp;
            if slot.hash == hash {
                tracing::debug!(plugin = %path.display(), "plugin file touched but unchanged; not reloaded");
                return;
            }
        }
        let started = std::time::Instant::now();
        match plugin::load(path, &bytes) {
            Ok(library) => {
                tracing::info!(
                    plugin = %path.display(),
                    name = %library.plugin_name,
                    version = %library.plugin_version,
                    ops = library.ops.len(),
                    ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
                    "plugin loaded"
                );
                self.slots.insert(
                    key,
                    Slot {
                        stamp,
                        hash,
                        library: Some(Arc::new(library)),
                        error: None,
                    },
                );
                report.loaded.push(path.to_path_buf());
            }
            Err(err) => {
                // Reported once, by whoever publishes the registry built from this scan.
                let message = err.to_string();
                tracing::debug!("plugin {} refused: {message}", path.display());
                let slot = self.slots.entry(key).or_insert(Slot {
                    stamp,
                    hash,
                    library: None,
                    error: None,
                });
                slot.hash = hash;
                slot.stamp = stamp;
                slot.error = Some(message);
                report.refused.push(path.to_path_buf());
            }
        }
    }

    /// The registry for what is loaded now. The first library (folder order, then file name)
    /// to export an op name keeps it; later ones are reported.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        for ((_, path), slot) in &self.slots {
            if let Some(error) = &slot.error {
                let message = if slot.library.is_some() {
                    format!("{error} (the previously loaded version stays live)")
                } else {
                    error.clone()
                };
                registry.errors.push(PluginError {
                    path: path.clone(),
                    message,
                });
            }
            let Some(library) = &slot.library else {
                continue;
            };
            registry.libraries.push(library.clone());
            for (meta, speed) in library.ops.iter().zip(&library.speeds) {
                let name = meta.name.as_str();
                if let Some(existing) = registry.ops.get(name) {
                    registry.errors.push(PluginError {
                        path: path.clone(),
                        message: format!(
                            "op {name} is also exported by {}; keeping that one",
                            existing.library.path.display()
                        ),
                    });
                    continue;
                }
                let args_schema = Some(meta.args_schema.as_str())
                    .filter(|s| !s.is_empty())
                    .and_then(|s| serde_json::from_str(s).ok());
                let name = intern(name);
                registry.ops.insert(
                    name,
                    Arc::new(OpHandle {
                        name,
                        description: meta.description.to_string(),
                        args_schema,
                        library: library.clone(),
                        speed: speed.clone(),
                        tool: library.tools.get(name).cloned(),
                    }),
                );
            }
        }
        registry
    }
}

/// The default plugin folder: where the running `flowhost` binary sits.
pub(crate) fn default_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
}

/// The source file of a plugin crate in this workspace (`plugins/*/src/**.rs`, the workspace
/// found above the running binary or the current folder) that defines `struct {op}`: an op
/// written (by `flowhost new-op`, say) but in no loaded library, so not built yet.
pub(crate) fn unbuilt_source(op: &str) -> Option<PathBuf> {
    fn search(dir: &Path, needle: &str, depth: usize) -> Option<PathBuf> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .collect();
        entries.sort();
        for path in entries {
            // Not through symlinks; regular files of a source's size only (never a FIFO).
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() && depth > 0 {
                if let Some(found) = search(&path, needle, depth - 1) {
                    return Some(found);
                }
            } else if meta.is_file()
                && meta.len() < 4 << 20
                && path.extension().is_some_and(|e| e == "rs")
            {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let defines = text.match_indices(needle).any(|(at, _)| {
                    !text[at + needle.len()..]
                        .starts_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if defines {
                    return Some(path);
                }
            }
        }
        None
    }
    let needle = format!("struct {op}");
    let starts = [std::env::current_dir().ok(), default_dir()];
    let roots = starts.iter().flatten().filter_map(|start| {
        start.ancestors().find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
        })
    });
    let (root, found) = roots.into_iter().find_map(|root| {
        let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("plugins"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("src"))
            .collect();
        crates.sort();
        let found = crates.iter().find_map(|src| search(src, &needle, 4))?;
        Some((root, found))
    })?;
    Some(
        found
            .strip_prefix(root)
            .map(Path::to_path_buf)
            .unwrap_or(found),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_names_follow_flowllm() {
        for (op, short) in [
            ("LoadSkillOp", "load_skill"),
            ("ReadReferenceFileOp", "read_reference_file"),
            ("EchoOp", "echo"),
            ("HTTPFetchOp", "http_fetch"),
            ("Op2Op", "op2"),
            ("search", "search"),
        ] {
            assert_eq!(super::short_name(op), short, "{op}");
        }
    }
}
