//! `flowhost serve --dev`: watches the plugin crates' sources (`plugins/*/src`, their
//! `Cargo.toml`) and runs `cargo build` for a crate that changed. The rebuilt library lands in
//! a plugin folder the host already watches, so it goes live the usual way (calls in flight
//! finish on the old build; a build that fails leaves the loaded version serving). Knows
//! nothing of loading: it only turns saves into builds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use serde_json::Value;

/// A plugin crate of the workspace: its package name and folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Crate {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
}

/// What `--dev` needs to know before the host loads plugins.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) crates: Vec<Crate>,
    /// Where cargo puts the libraries of `profile` (add it to the plugin folders).
    pub(crate) out_dir: PathBuf,
    /// The cargo profile to build with: the one the running binary came from, so the rebuilt
    /// library lands beside it (its folder is a default plugin folder).
    pub(crate) profile: String,
    pub(crate) workspace: PathBuf,
}

/// Finds the plugin crates under `crates_dir` (packages with a `cdylib` target, per `cargo
/// metadata`) and the profile to build them with.
pub(crate) fn plan(crates_dir: &Path) -> Result<Plan, String> {
    let crates_dir = crates_dir.canonicalize().map_err(|err| {
        format!(
            "--dev: no plugin crate folder {} ({err}); run from the workspace root",
            crates_dir.display()
        )
    })?;
    let output = Command::new(cargo())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(&crates_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|err| format!("--dev needs cargo on PATH: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "--dev: `cargo metadata` failed in {} (is it inside a Cargo workspace?)",
            crates_dir.display()
        ));
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)
        .map_err(|err| format!("--dev: cannot read `cargo metadata`: {err}"))?;
    let mut crates = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let Some(manifest) = package["manifest_path"].as_str().map(PathBuf::from) else {
            continue;
        };
        let Some(dir) = manifest.parent() else {
            continue;
        };
        let cdylib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| {
                t["crate_types"]
                    .as_array()
                    .is_some_and(|types| types.iter().any(|k| k == "cdylib"))
            });
        if cdylib && dir.starts_with(&crates_dir) {
            crates.push(Crate {
                name: package["name"].as_str().unwrap_or_default().to_string(),
                dir: dir.to_path_buf(),
            });
        }
    }
    if crates.is_empty() {
        return Err(format!(
            "--dev: no plugin crates (cdylib packages of the workspace) under {}",
            crates_dir.display()
        ));
    }
    let target = PathBuf::from(metadata["target_directory"].as_str().unwrap_or("target"));
    let workspace = PathBuf::from(metadata["workspace_root"].as_str().unwrap_or("."));
    // Built into the running binary's folder when it is one of this workspace's profiles.
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let target = target.canonicalize().unwrap_or(target);
    let folder = exe_dir
        .filter(|dir| dir.parent() == Some(target.as_path()))
        .and_then(|dir| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "debug".to_string());
    let profile = if folder == "debug" {
        "dev".to_string()
    } else {
        folder.clone()
    };
    Ok(Plan {
        crates,
        out_dir: target.join(folder),
        profile,
        workspace,
    })
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Keeps the source watcher and the builder alive; dropping it stops both.
pub(crate) struct Dev {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Starts watching the crates' sources; a change builds the crates it touched, one build at
/// a time (changes during a build are built right after it).
pub(crate) fn start(plan: Plan) -> Result<Dev, String> {
    let (tx, rx) = mpsc::channel::<BTreeSet<String>>();
    let crates = plan.crates.clone();
    let mut debouncer = new_debouncer(
        Duration::from_millis(100),
        None,
        move |result: DebounceEventResult| {
            let Ok(events) = result else {
                return;
            };
            let changed: BTreeSet<String> = events
                .iter()
                .filter(|e| !e.kind.is_access())
                .flat_map(|e| e.paths.iter())
                .filter_map(|path| owner(&crates, path))
                .collect();
            if !changed.is_empty() {
                let _ = tx.send(changed);
            }
        },
    )
    .map_err(|err| format!("--dev: cannot watch the plugin sources: {err}"))?;
    for krate in &plan.crates {
        debouncer
            .watch(&krate.dir, RecursiveMode::Recursive)
            .map_err(|err| format!("--dev: cannot watch {}: {err}", krate.dir.display()))?;
    }
    tracing::info!(
        "dev: watching {} plugin crate(s) ({}); a saved source is rebuilt (cargo build --profile {}) into {}",
        plan.crates.len(),
        plan.crates
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        plan.profile,
        plan.out_dir.display()
    );
    std::thread::Builder::new()
        .name("dev-build".into())
        .spawn(move || builder(rx, &plan))
        .map_err(|err| format!("--dev: cannot start the builder: {err}"))?;
    Ok(Dev {
        _debouncer: debouncer,
    })
}

/// The crate a changed path belongs to: its sources, build script or manifest (not its own
/// `target/`).
fn owner(crates: &[Crate], path: &Path) -> Option<String> {
    let krate = crates.iter().find(|c| path.starts_with(&c.dir))?;
    let inside = path.strip_prefix(&krate.dir).ok()?;
    let first = inside.components().next()?.as_os_str().to_str()?;
    matches!(first, "src" | "Cargo.toml" | "build.rs").then(|| krate.name.clone())
}

fn builder(rx: mpsc::Receiver<BTreeSet<String>>, plan: &Plan) {
    while let Ok(mut wanted) = rx.recv() {
        // Saves that arrived meanwhile join this build.
        while let Ok(more) = rx.try_recv() {
            wanted.extend(more);
        }
        let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
        tracing::info!("dev: building {}", names.join(", "));
        let started = Instant::now();
        let mut command = Command::new(cargo());
        command
            .args(["build", "--profile", &plan.profile])
            .current_dir(&plan.workspace)
            .stdin(Stdio::null())
            // stdout may be a protocol stream (stdio mode): cargo's output goes to stderr.
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for name in &names {
            command.args(["-p", name]);
        }
        match command.status() {
            Ok(status) if status.success() => tracing::info!(
                "dev: built {} in {:.2}s; the plugin watcher loads it",
                names.join(", "),
                started.elapsed().as_secs_f64()
            ),
            Ok(status) => tracing::error!(
                "dev: {} failed to build ({status}); the loaded version stays live — fix the error above and save again",
                names.join(", ")
            ),
            Err(err) => tracing::error!("dev: cannot run cargo: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_belongs_to_the_crate_whose_sources_it_touches() {
        let crates = vec![
            Crate {
                name: "op-a".into(),
                dir: PathBuf::from("/w/plugins/op-a"),
            },
            Crate {
                name: "op-b".into(),
                dir: PathBuf::from("/w/plugins/op-b"),
            },
        ];
        let own = |p: &str| owner(&crates, Path::new(p));
        assert_eq!(own("/w/plugins/op-a/src/lib.rs").as_deref(), Some("op-a"));
        assert_eq!(own("/w/plugins/op-b/src/x/y.rs").as_deref(), Some("op-b"));
        assert_eq!(own("/w/plugins/op-b/Cargo.toml").as_deref(), Some("op-b"));
        assert_eq!(own("/w/plugins/op-b/target/debug/x.so"), None);
        assert_eq!(own("/w/plugins/op-b/README.md"), None);
        assert_eq!(own("/w/flows/f.yaml"), None);
    }
}
