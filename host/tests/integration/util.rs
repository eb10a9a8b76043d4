//! Shared test helpers: fixture plugin libraries (built once per test run), temp folders,
//! and running flows through a real catalog.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use flowhost::catalog::{Catalog, Filter};
use flowhost::chunk::Chunk;
use flowhost::exec::{self, Outcome};
use serde_json::{Map, Value};

/// The folder holding the `flowhost` binary and the workspace's plugin libraries.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_flowhost"))
        .parent()
        .expect("binary folder")
        .to_path_buf()
}

pub fn op_basic() -> PathBuf {
    let lib = bin_dir().join(format!("libop_basic.{}", std::env::consts::DLL_EXTENSION));
    assert!(
        lib.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        lib.display()
    );
    lib
}

/// The fixture plugin libraries of host/tests/fixtures, built once into target/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/Cargo.toml");
        let target = bin_dir().parent().expect("target folder").join("fixtures");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo to build the fixture plugins");
        assert!(status.success(), "building the fixture plugins failed");
        target.join("debug")
    });
    let lib = dir.join(format!("lib{name}.{}", std::env::consts::DLL_EXTENSION));
    assert!(lib.is_file(), "no fixture library {}", lib.display());
    lib
}

/// A temp folder with `files` (name, content) in it.
pub fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write file");
    }
    dir
}

/// A temp plugin folder with the given libraries copied in under the given file names.
pub fn plugin_folder(libs: &[(&Path, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (lib, name) in libs {
        std::fs::copy(lib, dir.path().join(name)).expect("copy library");
    }
    dir
}

pub fn so(name: &str) -> String {
    format!("lib{name}.{}", std::env::consts::DLL_EXTENSION)
}

/// A catalog over one flow folder with op-basic loaded.
pub fn catalog_with_basic(flows: &Path) -> Arc<Catalog> {
    catalog(flows, &[bin_dir()])
}

pub fn catalog(flows: &Path, plugin_dirs: &[PathBuf]) -> Arc<Catalog> {
    Arc::new(Catalog::load(
        vec![flows.to_path_buf()],
        plugin_dirs.to_vec(),
        Filter::default(),
    ))
}

pub fn input(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

/// Starts a flow of the current snapshot.
pub fn start(catalog: &Catalog, flow: &str, body: Value) -> exec::Run {
    let snapshot = catalog.snapshot();
    let entry = snapshot
        .get(flow)
        .unwrap_or_else(|| panic!("no flow {flow}"));
    let compiled = entry
        .flow
        .clone()
        .unwrap_or_else(|| panic!("flow {flow} is broken: {:?}", entry.error));
    exec::start(compiled, input(body), &exec::Options::default())
}

pub async fn run(catalog: &Catalog, flow: &str, body: Value) -> (Vec<Chunk>, Outcome) {
    start(catalog, flow, body).collect().await
}

pub fn texts(chunks: &[Chunk]) -> Vec<String> {
    chunks.iter().map(|c| c.text.clone()).collect()
}

/// Polls `condition` until it holds or `limit` passes; returns how long it took.
pub fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition().then(|| started.elapsed())
}

/// Runs the flowhost binary; returns (exit code, stdout, stderr).
pub fn flowhost(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run flowhost");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
