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
        let legacy = manifest.with_file_name("op-legacy").join("Cargo.toml");
        let legacy_011 = manifest.with_file_name("op-legacy-011").join("Cargo.toml");
        let legacy_012 = manifest.with_file_name("op-legacy-012").join("Cargo.toml");
        for manifest in [&manifest, &legacy, &legacy_011, &legacy_012] {
            let status = Command::new(&cargo)
                .args(["build", "--quiet", "--manifest-path"])
                .arg(manifest)
                .arg("--target-dir")
                .arg(&target)
                .status()
                .expect("run cargo to build the fixture plugins");
            assert!(
                status.success(),
                "building the fixture plugins failed ({})",
                manifest.display()
            );
        }
        target.join("debug")
    });
    let lib = dir.join(format!("lib{name}.{}", std::env::consts::DLL_EXTENSION));
    assert!(lib.is_file(), "no fixture library {}", lib.display());
    lib
}

/// A temp folder with `files` (name, content; a name may hold folders) in it.
pub fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("make folders");
        std::fs::write(path, content).expect("write file");
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

/// Polls an async `condition` until it holds or `limit` passes; returns how long it took.
pub async fn wait_async<F, Fut>(limit: Duration, mut condition: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// An HTTP client (rustls with the host's crypto provider).
pub fn client() -> reqwest::Client {
    flowhost::llm::tls_init();
    reqwest::Client::new()
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

/// A `flowhost serve` process on a free port; killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    pub stderr: Arc<std::sync::Mutex<String>>,
    /// The process's working folder (where the default run store, `.flowhost/`, goes): its
    /// own, so tests never share a store unless they name one (`store.path=...`).
    pub home: tempfile::TempDir,
}

impl Server {
    /// Starts `flowhost serve --port 0 --flows DIR` plus `args`; waits for its banner.
    pub fn start(flows: &Path, args: &[&str]) -> Server {
        Server::start_with_env(flows, args, &[])
    }

    pub fn start_with_env(flows: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let home = tempfile::tempdir().expect("a working folder");
        let flows = std::path::absolute(flows).expect("an absolute flows path");
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowhost"))
            .current_dir(home.path())
            .args(["serve", "--port", "0", "--flows"])
            .arg(flows)
            .args(args)
            .envs(envs.iter().copied())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn flowhost serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    // Into the log first: a test reads it as soon as it has the URL.
                    {
                        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                        log.push_str(&line);
                        log.push('\n');
                    }
                    if let Some(at) = line.find("listening on http://") {
                        let url = line[at + "listening on ".len()..]
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let _ = tx.send(url);
                    }
                }
            });
        }
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "no banner from flowhost serve: {}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                )
            });
        Server {
            child,
            url,
            stderr: log,
            home,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sends SIGTERM, as a supervisor stopping the host does.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn log(&self) -> String {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether `text` reaches the log within `limit` (a line logged by a task of its own may
    /// come after the answer that followed it).
    pub fn logged(&self, text: &str, limit: Duration) -> bool {
        wait_for(limit, || self.log().contains(text)).is_some()
    }

    /// One sample of a Prometheus metric (summed over labels), or 0.
    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
