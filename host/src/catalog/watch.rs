//! Watches the flow and plugin folders and asks the catalog to reload. Knows nothing of what
//! flows or plugins contain: it only routes file events (debounced, filtered) to
//! [`Catalog::reload`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use crate::catalog::Catalog;
use crate::lang;
use crate::ops::plugin;

/// Keeps the watcher alive; dropping it stops watching.
pub struct Watching {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// What an event touches.
#[derive(Debug, Default, PartialEq, Eq)]
struct Routed {
    flows: bool,
    plugins: bool,
}

/// Starts watching the catalog's folders. Editor save bursts within `debounce` become one
/// reload.
pub fn start(catalog: Arc<Catalog>, debounce: Duration) -> Result<Watching, String> {
    let flow_dirs = catalog.flow_dirs();
    let plugin_dirs = catalog.plugin_dirs();
    let handler = {
        let catalog = catalog.clone();
        let flow_dirs = flow_dirs.clone();
        let plugin_dirs = plugin_dirs.clone();
        move |result: DebounceEventResult| {
            let routed = match result {
                Ok(events) => {
                    let mut routed = Routed::default();
                    for event in &events {
                        if event.need_rescan() {
                            routed = Routed {
                                flows: true,
                                plugins: true,
                            };
                            break;
                        }
                        route(
                            &event.kind,
                            &event.paths,
                            &flow_dirs,
                            &plugin_dirs,
                            &mut routed,
                        );
                    }
                    routed
                }
                Err(errors) => {
                    for err in errors {
                        tracing::warn!("file watcher error: {err}; rescanning everything");
                    }
                    Routed {
                        flows: true,
                        plugins: true,
                    }
                }
            };
            if routed.flows || routed.plugins {
                survive_panics(|| catalog.reload(routed.flows, routed.plugins));
            }
        }
    };
    let mut debouncer = new_debouncer(debounce, None, handler)
        .map_err(|err| format!("cannot start the file watcher: {err}"))?;
    for dir in flow_dirs.iter().chain(plugin_dirs.iter()) {
        if let Err(err) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {}: {err}; changes there need a restart",
                dir.display()
            );
        }
    }
    Ok(Watching {
        _debouncer: debouncer,
    })
}

/// Runs one reload; a bug in it must not end the watcher: it is reported, the last snapshot
/// keeps serving, and the next change is loaded again. Returns whether it completed.
fn survive_panics(reload: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(reload)) {
        Ok(()) => true,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(
                "reload failed with an internal error ({message}); the last good flows keep \
                 serving and the next change is loaded again"
            );
            false
        }
    }
}

fn route(
    kind: &EventKind,
    paths: &[PathBuf],
    flow_dirs: &[PathBuf],
    plugin_dirs: &[PathBuf],
    routed: &mut Routed,
) {
    // Reading a file emits access events, and `touch` only changes metadata: neither can
    // change what is served.
    match kind {
        EventKind::Access(_) => return,
        EventKind::Modify(notify::event::ModifyKind::Metadata(_)) => return,
        _ => {}
    }
    for path in paths {
        let Some(dir) = path.parent() else { continue };
        if flow_dirs.iter().any(|d| d == dir)
            && (lang::is_flow_file(path) || is_configmap_swap(path))
        {
            routed.flows = true;
        }
        if plugin_dirs.iter().any(|d| d == dir) && plugin::is_library_name(path) {
            routed.plugins = true;
        }
    }
}

/// Kubernetes mounts a ConfigMap as symlinks through `..data`, swapped atomically on update.
fn is_configmap_swap(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn a_panicking_reload_is_reported_and_the_next_one_runs() {
        let mut runs = 0;
        assert!(!survive_panics(|| panic!("a bug in a reload")));
        assert!(survive_panics(|| runs += 1));
        assert_eq!(runs, 1);
    }

    #[test]
    fn routes_only_what_can_change_the_catalog() {
        let flows = vec![PathBuf::from("/f")];
        let plugins = vec![PathBuf::from("/p")];
        let check = |kind: EventKind, path: &str, expected: (bool, bool)| {
            let mut routed = Routed::default();
            route(&kind, &[PathBuf::from(path)], &flows, &plugins, &mut routed);
            assert_eq!((routed.flows, routed.plugins), expected, "{kind:?} {path}");
        };
        let write = EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any));
        check(write, "/f/a.yaml", (true, false));
        check(
            EventKind::Create(CreateKind::File),
            "/f/b.yml",
            (true, false),
        );
        check(
            EventKind::Remove(RemoveKind::File),
            "/f/a.yaml",
            (true, false),
        );
        check(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/f/a.yaml",
            (true, false),
        );
        check(
            EventKind::Access(AccessKind::Any),
            "/f/a.yaml",
            (false, false),
        );
        check(
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
            "/f/a.yaml",
            (false, false),
        );
        check(write, "/f/.a.yaml.swp", (false, false));
        check(write, "/f/a.yaml~", (false, false));
        check(write, "/f/4913", (false, false));
        check(
            EventKind::Create(CreateKind::Any),
            "/f/..data",
            (true, false),
        );
        check(write, "/p/libop_x.so", (false, true));
        check(write, "/p/flowhost", (false, false));
        check(write, "/elsewhere/a.yaml", (false, false));
    }
}
