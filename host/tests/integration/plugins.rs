//! Plugin loading with real libraries: several at once, hot replacement with a call in
//! flight, unchanged files, refused files, duplicate ops, and panicking ops.

use std::sync::Arc;
use std::time::Duration;

use flowhost::chunk::ChunkKind;
use flowhost::ops::Plugins;
use serde_json::json;

use crate::util::*;

const FIXTURE_FLOWS: &str = "tick:\n  flow_content: FixtureTickOp(n=6, interval_ms=100)\n  stream: true\nlong_tick:\n  flow_content: FixtureTickOp(n=100000, interval_ms=50)\n  stream: true\nversion:\n  flow_content: VersionOp()\n";

#[test]
fn two_plugin_libraries_load_at_once() {
    let plugins = plugin_folder(&[
        (&op_basic(), &so("op_basic")),
        (&fixture("op_fixture"), &so("op_fixture")),
    ]);
    let mut loader = Plugins::new(vec![plugins.path().to_path_buf()]);
    let report = loader.scan();
    assert_eq!(report.loaded.len(), 2, "{report:?}");
    let registry = loader.registry();
    assert!(registry.errors.is_empty(), "{:?}", registry.errors);
    assert_eq!(
        registry.get("EchoOp").unwrap().library.plugin_name,
        "op-basic"
    );
    assert_eq!(
        registry.get("VersionOp").unwrap().library.plugin_name,
        "op-fixture"
    );

    // The same through the binary: both plugins' ops, as valid JSON.
    let dir = plugins.path().to_str().unwrap();
    let (code, out, err) = flowhost(&["ops", "--json", "--no-default-plugins", "--plugins", dir]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("ops --json is JSON");
    let names: Vec<&str> = listed["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["name"].as_str().unwrap())
        .collect();
    for name in [
        "CountOp",
        "EchoOp",
        "FailOp",
        "FixtureTickOp",
        "GenSystemPromptOp",
        "PanicOp",
        "TickOp",
        "VersionOp",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let fixture_op = listed["ops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["name"] == "VersionOp")
        .unwrap();
    assert_eq!(fixture_op["plugin_version"], "0.1.0");
    assert_eq!(fixture_op["sdk_version"], op_sdk::ffi::SDK_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_library_serves_new_calls_while_old_calls_finish() {
    let plugins = plugin_folder(&[(&fixture("op_fixture"), &so("op_fixture"))]);
    let flows = folder(&[("f.yaml", FIXTURE_FLOWS)]);
    let catalog = catalog(flows.path(), &[plugins.path().to_path_buf()]);
    let _watching =
        flowhost::catalog::watch::start(catalog.clone(), Duration::from_millis(50)).unwrap();

    // A run of ~80 minutes: still running on v1 whenever v2 goes live.
    let mut old_run = start(&catalog, "long_tick", json!({}));
    let mut first = Vec::new();
    assert!(old_run.next_batch(&mut first).await);
    assert_eq!(first[0].text, "v1 tick 0\n");

    // Install the rebuilt library the way `cp` to a temp name + `mv` does.
    let generation = catalog.snapshot().generation;
    let staging = plugins.path().join(".staging.tmp");
    std::fs::copy(fixture("op_fixture_v2"), &staging).unwrap();
    std::fs::rename(&staging, plugins.path().join(so("op_fixture"))).unwrap();
    let cat = catalog.clone();
    let took = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(5), || {
            cat.snapshot().generation > generation
        })
    })
    .await
    .unwrap()
    .expect("the replaced library was reloaded");
    eprintln!("library replaced -> served in {took:?}");

    let (chunks, outcome) = run(&catalog, "version", json!({})).await;
    assert_eq!(texts(&chunks), ["v2"]);
    assert_eq!(outcome.answer, "v2");
    let snapshot = catalog.snapshot();
    assert_eq!(
        snapshot
            .registry
            .get("VersionOp")
            .unwrap()
            .library
            .plugin_version,
        "0.2.0"
    );

    // The call that started on v1 goes on, on v1, after v2 went live (it keeps ticking: the
    // overlap is real, not a run that ended before the swap), and stops when cancelled.
    let mut rest = first;
    let mut batch = Vec::new();
    let seen = rest.len();
    while rest.len() < seen + 3 {
        assert!(old_run.next_batch(&mut batch).await, "the old run ended");
        rest.append(&mut batch);
    }
    old_run.cancel_token().cancel();
    while old_run.next_batch(&mut batch).await {
        rest.append(&mut batch);
    }
    let outcome = old_run.finish().await;
    let ticks: Vec<String> = texts(&rest)
        .into_iter()
        .filter(|t| t.contains("tick"))
        .collect();
    assert!(ticks.len() < 100_000, "it ran to its end");
    assert_eq!(
        ticks,
        (0..ticks.len())
            .map(|i| format!("v1 tick {i}\n"))
            .collect::<Vec<_>>()
    );
    // The fixture op stops at the cancel and answers with its version.
    assert_eq!(outcome.answer, "v1");

    // Installing by plain copy over the file works too.
    let generation = catalog.snapshot().generation;
    std::fs::copy(fixture("op_fixture"), plugins.path().join(so("op_fixture"))).unwrap();
    let cat = catalog.clone();
    let reloaded = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(5), || {
            cat.snapshot()
                .registry
                .get("VersionOp")
                .unwrap()
                .library
                .plugin_version
                == "0.1.0"
        })
    })
    .await
    .unwrap();
    let snapshot = catalog.snapshot();
    assert!(
        reloaded.is_some(),
        "copied-over library was not reloaded: generation {} -> {}, errors {:?}",
        generation,
        snapshot.generation,
        snapshot.registry.errors
    );
    let (chunks, _) = run(&catalog, "version", json!({})).await;
    assert_eq!(texts(&chunks), ["v1"]);
}

#[test]
fn unchanged_library_is_not_reloaded() {
    let plugins = plugin_folder(&[(&fixture("op_fixture"), &so("op_fixture"))]);
    let mut loader = Plugins::new(vec![plugins.path().to_path_buf()]);
    assert_eq!(loader.scan().loaded.len(), 1);
    let lib = plugins.path().join(so("op_fixture"));
    let before = loader.registry().get("VersionOp").unwrap().library.clone();
    // Same bytes written again: new mtime, same content.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&lib, std::fs::read(&lib).unwrap()).unwrap();
    let report = loader.scan();
    assert!(!report.changed(), "{report:?}");
    let after = loader.registry().get("VersionOp").unwrap().library.clone();
    assert!(Arc::ptr_eq(&before, &after), "the library was loaded again");

    // And with the watcher running, the catalog does not publish a new snapshot.
    let flows = folder(&[("f.yaml", FIXTURE_FLOWS)]);
    let catalog = catalog(flows.path(), &[plugins.path().to_path_buf()]);
    let _watching =
        flowhost::catalog::watch::start(catalog.clone(), Duration::from_millis(50)).unwrap();
    let generation = catalog.snapshot().generation;
    let loaded = catalog
        .snapshot()
        .registry
        .get("VersionOp")
        .unwrap()
        .library
        .clone();
    std::fs::write(&lib, std::fs::read(&lib).unwrap()).unwrap();
    // A marker after it: the watcher sees events in order, so once the marker is served the
    // rewrite was looked at too. The library is not reloaded.
    std::fs::write(
        flows.path().join("marker.yaml"),
        "marker:\n  flow_content: VersionOp()\n",
    )
    .unwrap();
    wait_for(Duration::from_secs(30), || {
        catalog.snapshot().get("marker").is_some()
    })
    .expect("the marker was served");
    let snapshot = catalog.snapshot();
    // At least the marker's snapshot (a loaded machine may see its create and its write in
    // two debounce windows); what matters is that the library was not loaded again.
    assert!(snapshot.generation > generation);
    let still = snapshot.registry.get("VersionOp").unwrap().library.clone();
    assert!(Arc::ptr_eq(&loaded, &still), "the library was loaded again");
}

#[test]
fn bad_libraries_are_refused_in_one_line_each() {
    let plugins = plugin_folder(&[
        (&op_basic(), &so("op_basic")),
        (&fixture("not_plugin"), &so("not_plugin")),
        (&fixture("op_incompat"), &so("op_incompat")),
    ]);
    std::fs::write(
        plugins.path().join(so("op_x")),
        "this is a text file, not a library\n",
    )
    .unwrap();
    let dir = plugins.path().to_str().unwrap();
    let (code, out, err) = flowhost(&["ops", "--no-default-plugins", "--plugins", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("EchoOp"), "good plugins still load: {out}");
    let lines: Vec<&str> = err.lines().collect();
    let expect = [
        (so("op_x"), "not a loadable shared library"),
        (
            so("not_plugin"),
            "a shared library but not a flowhost plugin",
        ),
        (
            so("op_incompat"),
            "built against op-sdk 0.2.0, host speaks 0.1.x",
        ),
    ];
    for (file, reason) in expect {
        let about: Vec<&&str> = lines.iter().filter(|l| l.contains(&file)).collect();
        assert_eq!(about.len(), 1, "one line about {file}: {err}");
        assert!(
            about[0].contains(reason),
            "{file}: expected `{reason}` in {}",
            about[0]
        );
    }
}

#[test]
fn duplicate_op_names_keep_the_first_and_name_both_files() {
    let plugins = plugin_folder(&[
        (&op_basic(), &so("op_basic")),
        (&fixture("op_dup"), &so("op_dup")),
    ]);
    let mut loader = Plugins::new(vec![plugins.path().to_path_buf()]);
    loader.scan();
    let registry = loader.registry();
    assert_eq!(
        registry.get("EchoOp").unwrap().library.plugin_name,
        "op-basic"
    );
    assert!(registry.get("DupOnlyOp").is_some());
    let error = registry
        .errors
        .iter()
        .map(|e| e.to_string())
        .find(|e| e.contains("EchoOp"))
        .expect("a collision error");
    assert!(
        error.contains(&so("op_dup")) && error.contains(&so("op_basic")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_op_is_an_error_and_the_host_serves_on() {
    let flows = folder(&[(
        "f.yaml",
        "boom:\n  flow_content: PanicOp(message=\"kaboom\")\n  stream: true\necho:\n  flow_content: EchoOp()\n",
    )]);
    let catalog = catalog_with_basic(flows.path());
    for _ in 0..3 {
        let (chunks, outcome) = run(&catalog, "boom", json!({})).await;
        let last = chunks.last().expect("an error chunk");
        assert_eq!(last.kind, ChunkKind::Error);
        assert_eq!(last.op, "PanicOp");
        assert!(
            last.text.contains("PanicOp") && last.text.contains("kaboom"),
            "{}",
            last.text
        );
        assert!(!outcome.success());
        let (chunks, outcome) = run(&catalog, "echo", json!({"query": "still here"})).await;
        assert_eq!(texts(&chunks), ["still here"]);
        assert!(outcome.success());
    }
}

#[test]
fn flows_follow_their_ops_as_plugins_come_and_go() {
    let plugins = tempfile::tempdir().unwrap();
    let flows = folder(&[("f.yaml", FIXTURE_FLOWS)]);
    let catalog = catalog(flows.path(), &[plugins.path().to_path_buf()]);
    let _watching =
        flowhost::catalog::watch::start(catalog.clone(), Duration::from_millis(50)).unwrap();
    let status = |name: &str| catalog.snapshot().get(name).map(|e| e.status());
    assert_eq!(status("version"), Some("broken"));
    let error = catalog
        .snapshot()
        .get("version")
        .unwrap()
        .error
        .clone()
        .unwrap();
    assert!(error.message.contains("unknown op `VersionOp`"), "{error}");

    std::fs::copy(fixture("op_fixture"), plugins.path().join(so("op_fixture"))).unwrap();
    wait_for(Duration::from_secs(5), || status("version") == Some("live"))
        .expect("flow became live");

    std::fs::remove_file(plugins.path().join(so("op_fixture"))).unwrap();
    wait_for(Duration::from_secs(5), || {
        status("version") == Some("broken")
    })
    .expect("flow became broken");
    let error = catalog
        .snapshot()
        .get("version")
        .unwrap()
        .error
        .clone()
        .unwrap();
    assert!(error.message.contains("unknown op `VersionOp`"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_previous_op_sdk_still_loads_and_runs() {
    let plugins = plugin_folder(&[(&fixture("op_legacy"), &so("op_legacy"))]);
    let flows = folder(&[(
        "f.yaml",
        "legacy:\n  flow_content: LegacyOp()\n  stream: true\n",
    )]);
    let catalog = catalog(flows.path(), &[plugins.path().to_path_buf()]);
    let snapshot = catalog.snapshot();
    assert!(
        snapshot.registry.errors.is_empty(),
        "{:?}",
        snapshot.registry.errors
    );
    let op = snapshot.registry.get("LegacyOp").expect("LegacyOp loaded");
    assert_eq!(op.library.sdk_version, "0.1.0");
    assert_ne!(
        op_sdk::ffi::SDK_VERSION,
        "0.1.0",
        "the host's op-sdk moved on"
    );
    let (chunks, outcome) = run(&catalog, "legacy", json!({"query": "old"})).await;
    assert_eq!(texts(&chunks), ["legacy: old"]);
    assert_eq!(outcome.answer, "legacy: old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_op_sdk_0_1_1_still_loads_and_reaches_its_services() {
    let plugins = plugin_folder(&[(&fixture("op_legacy_011"), &so("op_legacy_011"))]);
    let flows = folder(&[("f.yaml", "legacy:\n  flow_content: Legacy011Op()\n")]);
    let catalog = catalog(flows.path(), &[plugins.path().to_path_buf()]);
    let snapshot = catalog.snapshot();
    assert!(
        snapshot.registry.errors.is_empty(),
        "{:?}",
        snapshot.registry.errors
    );
    let op = snapshot
        .registry
        .get("Legacy011Op")
        .expect("Legacy011Op loaded");
    assert_eq!(op.library.sdk_version, "0.1.1");
    assert_ne!(
        op_sdk::ffi::SDK_VERSION,
        "0.1.1",
        "the host's op-sdk moved on"
    );
    let (chunks, outcome) = run(&catalog, "legacy", json!({"query": "old"})).await;
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(
        texts(&chunks),
        ["legacy 0.1.1: old; llm refused (this host was started without an LLM service)"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_op_sdk_0_1_2_keeps_its_tool_sub_ops_and_llm() {
    let plugins = plugin_folder(&[
        (&fixture("op_legacy_012"), &so("op_legacy_012")),
        (&op_basic(), &so("op_basic")),
    ]);
    let flows = folder(&[(
        "f.yaml",
        "legacy:\n  flow_content: Legacy012Op() << EchoOp()\n",
    )]);
    let catalog = catalog(flows.path(), &[plugins.path().to_path_buf()]);
    let snapshot = catalog.snapshot();
    assert!(
        snapshot.registry.errors.is_empty(),
        "{:?}",
        snapshot.registry.errors
    );
    let op = snapshot
        .registry
        .get("Legacy012Op")
        .expect("Legacy012Op loaded");
    assert_eq!(op.library.sdk_version, "0.1.2");
    assert_eq!(
        op.tool.as_ref().map(|t| t["name"].clone()),
        Some(json!("legacy_012")),
        "its tool description survives the view change"
    );
    assert_eq!(
        *op.library.content_list(),
        json!({"resources": [], "templates": [], "prompts": []}),
        "a 0.1.2 plugin offers no content"
    );
    assert!(
        snapshot
            .get("legacy")
            .and_then(|e| e.flow.as_ref())
            .is_some(),
        "{:?}",
        snapshot.get("legacy").map(|e| &e.error)
    );
    let (chunks, outcome) = run(&catalog, "legacy", json!({"query": "old"})).await;
    assert!(outcome.success(), "{outcome:?}");
    let text = texts(&chunks).join("");
    assert!(
        text.starts_with(
            "legacy 0.1.2: old; llm refused (this host was started without an LLM service); subs ["
        ),
        "{text}"
    );
    assert!(text.ends_with("-> \"sub\""), "the sub-op answered: {text}");
}

/// Plugin copies are loaded from a private temp folder that is gone once the library is
/// mapped: nothing is left behind to prune, and nothing predictable to plant a library in.
#[test]
fn plugin_copies_leave_nothing_in_the_temp_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args(["ops", "--json"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let ops: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(ops.to_string().contains("EchoOp"), "{ops}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
