//! Live reload of flow files with the real watcher on temp folders: every way editors save,
//! broken saves, in-flight runs, and Kubernetes-style symlink swaps.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowhost::catalog::Catalog;
use flowhost::chunk::{Chunk, ChunkKind};
use serde_json::json;

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(30);

fn watched(flows: &Path) -> (Arc<Catalog>, flowhost::catalog::watch::Watching) {
    let catalog = catalog_with_basic(flows);
    let watching = flowhost::catalog::watch::start(catalog.clone(), Duration::from_millis(50))
        .expect("watcher");
    (catalog, watching)
}

fn flow_file(name: &str, text: &str) -> String {
    format!("{name}:\n  flow_content: TickOp(n=1, text=\"{text}\")\n")
}

fn served_text(catalog: &Catalog, name: &str) -> Option<String> {
    let snapshot = catalog.snapshot();
    let entry = snapshot.get(name)?;
    entry.flow.as_ref()?;
    Some(entry.spec.flow_content.clone())
}

#[test]
fn create_edit_rename_and_delete_are_served_live() {
    let flows = tempfile::tempdir().unwrap();
    let (catalog, _watching) = watched(flows.path());
    let file = flows.path().join("a.yaml");

    std::fs::write(&file, flow_file("a", "one")).unwrap();
    let took = wait_for(LIMIT, || {
        served_text(&catalog, "a").is_some_and(|t| t.contains("one"))
    });
    eprintln!("create visible after {took:?}");
    took.expect("created flow served");

    std::fs::write(&file, flow_file("a", "two")).unwrap();
    wait_for(LIMIT, || {
        served_text(&catalog, "a").is_some_and(|t| t.contains("two"))
    })
    .expect("in-place edit served");

    let tmp = flows.path().join("a.yaml.tmp");
    std::fs::write(&tmp, flow_file("a", "three")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    wait_for(LIMIT, || {
        served_text(&catalog, "a").is_some_and(|t| t.contains("three"))
    })
    .expect("edit by rename served");

    std::fs::remove_file(&file).unwrap();
    wait_for(LIMIT, || catalog.snapshot().get("a").is_none()).expect("deleted flow gone");
}

#[test]
fn vim_style_save_is_one_clean_reload() {
    let flows = folder(&[("v.yaml", &flow_file("v", "old"))]);
    let (catalog, _watching) = watched(flows.path());
    let dir = flows.path();
    // What vim does with `backupcopy=no`: swap file, probe file, move original to a backup,
    // write the new file, delete the backup; the swap file goes on changing.
    std::fs::write(dir.join(".v.yaml.swp"), "swap").unwrap();
    std::fs::write(dir.join("4913"), "").unwrap();
    std::fs::remove_file(dir.join("4913")).unwrap();
    std::fs::rename(dir.join("v.yaml"), dir.join("v.yaml~")).unwrap();
    std::fs::write(dir.join("v.yaml"), flow_file("v", "new")).unwrap();
    std::fs::remove_file(dir.join("v.yaml~")).unwrap();
    std::fs::write(dir.join(".v.yaml.swp"), "swap 2").unwrap();
    wait_for(LIMIT, || {
        served_text(&catalog, "v").is_some_and(|t| t.contains("new"))
    })
    .expect("vim save served");
    let snapshot = catalog.snapshot();
    assert_eq!(snapshot.flows.len(), 1, "{:?}", snapshot.flows.keys());
    assert!(
        snapshot.diagnostics.is_empty(),
        "{:?}",
        snapshot.diagnostics
    );
    // Swap-file churn alone does not reload anything: after it, a real edit is the one new
    // snapshot (the watcher sees events in order, so the churn was looked at first).
    let generation = snapshot.generation;
    std::fs::write(dir.join(".v.yaml.swp"), "swap 3").unwrap();
    std::fs::write(dir.join(".v.yaml.swp"), "swap 4").unwrap();
    // Past the 50 ms debounce, so the churn is a batch of its own: a reload for it would
    // make the edit the second new snapshot.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.join("v.yaml"), flow_file("v", "newer")).unwrap();
    wait_for(LIMIT, || {
        served_text(&catalog, "v").is_some_and(|t| t.contains("newer"))
    })
    .expect("the edit served");
    assert_eq!(catalog.snapshot().generation, generation + 1);
}

#[test]
fn a_broken_save_keeps_the_last_good_version() {
    let flows = folder(&[
        ("b.yaml", &flow_file("b", "good")),
        ("other.yaml", &flow_file("other", "x")),
    ]);
    let (catalog, _watching) = watched(flows.path());
    let file = flows.path().join("b.yaml");

    // YAML syntax error.
    std::fs::write(&file, "b:\n  flow_content: [unclosed\n").unwrap();
    wait_for(LIMIT, || catalog.snapshot().errors().count() > 0).expect("error reported");
    let snapshot = catalog.snapshot();
    let error = snapshot.errors().next().unwrap().to_string();
    assert!(
        error.starts_with(&format!(
            "{}:3:1: error: {} does not parse (line 3)",
            file.display(),
            file.display()
        )),
        "{error}"
    );
    assert!(error.contains("last good version"), "{error}");
    assert!(served_text(&catalog, "b").unwrap().contains("good"));
    assert!(served_text(&catalog, "other").is_some());

    // A bad expression: the flow keeps its last good version; the error has line and column.
    std::fs::write(&file, "b:\n  flow_content: TickOp(n=1) >> EchoOpp()\n").unwrap();
    wait_for(LIMIT, || {
        catalog
            .snapshot()
            .errors()
            .any(|d| d.message.contains("unknown op `EchoOpp`"))
    })
    .expect("expression error reported");
    let snapshot = catalog.snapshot();
    let entry = snapshot.get("b").unwrap();
    assert_eq!(entry.status(), "stale");
    let error = entry.error.as_ref().unwrap().to_string();
    assert!(
        error.starts_with(&format!("{}:2:32: error: flow `b`: unknown op `EchoOpp`; did you mean `EchoOp`? (the last good version of this flow stays live)", file.display())),
        "{error}"
    );
    assert!(served_text(&catalog, "b").unwrap().contains("good"));

    // Fixing it serves the fix and clears the error.
    std::fs::write(&file, flow_file("b", "fixed")).unwrap();
    wait_for(LIMIT, || {
        served_text(&catalog, "b").is_some_and(|t| t.contains("fixed"))
    })
    .expect("fix served");
    assert_eq!(catalog.snapshot().errors().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_before_an_edit_finishes_on_its_version() {
    let flows = folder(&[(
        "r.yaml",
        "r:\n  flow_content: TickOp(n=100000, interval_ms=50, text=\"old\")\n  stream: true\n",
    )]);
    let catalog = catalog_with_basic(flows.path());
    let _watching =
        flowhost::catalog::watch::start(catalog.clone(), Duration::from_millis(50)).unwrap();
    // Runs for ~80 minutes: whenever the edit goes live, this run is still in flight.
    let mut old = start(&catalog, "r", json!({}));
    let mut old_chunks = Vec::new();
    assert!(old.next_batch(&mut old_chunks).await);
    std::fs::write(
        flows.path().join("r.yaml"),
        "r:\n  flow_content: TickOp(n=2, interval_ms=10, text=\"new\")\n  stream: true\n",
    )
    .unwrap();
    let cat = catalog.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(LIMIT, || {
            served_text(&cat, "r").is_some_and(|t| t.contains("new"))
        })
    })
    .await
    .unwrap()
    .expect("edit served");
    let (new_chunks, _) = run(&catalog, "r", json!({})).await;
    assert_eq!(texts(&new_chunks), ["new 0\n", "new 1\n"]);
    // The old run goes on after the new version served a run, on the old version.
    let mut batch = Vec::new();
    let seen = old_chunks.len();
    while old_chunks.len() < seen + 3 {
        assert!(old.next_batch(&mut batch).await, "the old run ended");
        old_chunks.append(&mut batch);
    }
    old.cancel_token().cancel();
    let (more, _) = old.collect().await;
    old_chunks.extend(more);
    let ticks: Vec<&Chunk> = old_chunks
        .iter()
        .filter(|c| c.kind == ChunkKind::Answer)
        .collect();
    assert!(ticks.len() >= 4 && ticks.len() < 100_000, "{}", ticks.len());
    assert!(
        ticks.iter().all(|c| c.text.starts_with("old")),
        "{:?}",
        texts(&old_chunks)
    );
}

#[cfg(unix)]
#[test]
fn kubernetes_configmap_symlink_swap_is_followed() {
    use std::os::unix::fs::symlink;
    let mount = tempfile::tempdir().unwrap();
    let dir = mount.path();
    std::fs::create_dir(dir.join("..2026_01")).unwrap();
    std::fs::write(dir.join("..2026_01/k.yaml"), flow_file("k", "first")).unwrap();
    symlink("..2026_01", dir.join("..data")).unwrap();
    symlink("..data/k.yaml", dir.join("k.yaml")).unwrap();
    let (catalog, _watching) = watched(dir);
    assert!(served_text(&catalog, "k").unwrap().contains("first"));

    // The kubelet writes a new timestamped folder and swaps `..data` atomically.
    std::fs::create_dir(dir.join("..2026_02")).unwrap();
    std::fs::write(dir.join("..2026_02/k.yaml"), flow_file("k", "second")).unwrap();
    symlink("..2026_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_01")).unwrap();
    wait_for(LIMIT, || {
        served_text(&catalog, "k").is_some_and(|t| t.contains("second"))
    })
    .expect("swap followed");
    // A key added to the ConfigMap: a new file in the new folder and a new top-level link.
    std::fs::create_dir(dir.join("..2026_03")).unwrap();
    std::fs::write(dir.join("..2026_03/k.yaml"), flow_file("k", "second")).unwrap();
    std::fs::write(dir.join("..2026_03/k2.yaml"), flow_file("k2", "added")).unwrap();
    symlink("..2026_03", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    symlink("..data/k2.yaml", dir.join("k2.yaml")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_02")).unwrap();
    wait_for(LIMIT, || served_text(&catalog, "k2").is_some()).expect("new key served");
    // The dot-folders are never read as flow files: no duplicates, no diagnostics.
    let snapshot = catalog.snapshot();
    assert_eq!(
        snapshot.flows.keys().collect::<Vec<_>>(),
        ["k", "k2"],
        "{:?}",
        snapshot.diagnostics
    );
    assert!(
        snapshot.diagnostics.is_empty(),
        "{:?}",
        snapshot.diagnostics
    );
}

#[test]
fn a_symlinked_flow_folder_is_watched() {
    let real = folder(&[("s.yaml", &flow_file("s", "one"))]);
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("flows");
    #[cfg(unix)]
    std::os::unix::fs::symlink(real.path(), &link).unwrap();
    let (catalog, _watching) = watched(&link);
    assert!(served_text(&catalog, "s").is_some());
    std::fs::write(real.path().join("s.yaml"), flow_file("s", "two")).unwrap();
    wait_for(LIMIT, || {
        served_text(&catalog, "s").is_some_and(|t| t.contains("two"))
    })
    .expect("edit through symlink served");
}

#[test]
fn duplicate_flow_names_across_files_name_both() {
    let flows = folder(&[
        ("a.yaml", &flow_file("same", "a")),
        ("b.yaml", &flow_file("same", "b")),
    ]);
    let catalog = catalog_with_basic(flows.path());
    let snapshot = catalog.snapshot();
    assert!(snapshot
        .get("same")
        .unwrap()
        .spec
        .flow_content
        .contains("\"a\""));
    let error = snapshot.errors().next().unwrap().to_string();
    assert!(
        error.contains("b.yaml:1:1") && error.contains("a.yaml"),
        "{error}"
    );
}
