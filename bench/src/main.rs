//! `flowhost-bench`: measures the plugin boundary, the executor and live reload on this
//! machine, and prints one JSON document. Run it from a release build:
//! `cargo build --release --workspace && target/release/flowhost-bench`.
//! Figures, not pass/fail: targets live in design.md §9 and BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi_stable::std_types::RStr;
use flowhost::catalog::{Catalog, Filter};
use flowhost::exec;
use flowhost::ops::Plugins;
use op_sdk::ffi::HostCtx;
use serde_json::{json, Map, Value};

fn main() {
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("binary folder");
    let lib = bin_dir.join(format!("libop_basic.{}", std::env::consts::DLL_EXTENSION));
    assert!(
        lib.is_file(),
        "{} missing: cargo build --release --workspace",
        lib.display()
    );
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Map::new();
    report.insert("profile".into(), json!(profile));
    report.insert(
        "emit_across_boundary".into(),
        emit_across_boundary(&bin_dir),
    );
    report.insert("plugin_load".into(), plugin_load(&lib));
    report.insert("exec".into(), runtime.block_on(exec_throughput(&bin_dir)));
    report.insert("save_to_served".into(), save_to_served(&bin_dir));
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(report)).unwrap_or_default()
    );
}

/// A host that only counts: the cost of `emit` across the FFI boundary and nothing else.
struct CountingHost(AtomicU64);

impl HostCtx for CountingHost {
    fn emit(&self, _kind: u8, content: RStr<'_>, _json: bool) -> bool {
        self.0.fetch_add(
            content.len() as u64 / content.len().max(1) as u64,
            Ordering::Relaxed,
        );
        true
    }
    fn is_cancelled(&self) -> bool {
        false
    }
    fn sleep(&self, _millis: u64) -> bool {
        true
    }
    fn log(&self, _level: u8, _message: RStr<'_>) {}
}

fn emit_across_boundary(bin_dir: &Path) -> Value {
    let mut plugins = Plugins::new(vec![bin_dir.to_path_buf()]);
    plugins.scan();
    let registry = plugins.registry();
    let op = registry.get("CountOp").expect("CountOp loaded");
    let n = 20_000_000u64;
    let host = CountingHost(AtomicU64::new(0));
    let args = json!({"n": n}).to_string();
    let started = Instant::now();
    op.library
        .run("CountOp", &args, "{}", &host)
        .expect("CountOp runs");
    let took = started.elapsed();
    assert_eq!(host.0.load(Ordering::Relaxed), n);
    json!({
        "chunks": n,
        "seconds": took.as_secs_f64(),
        "chunks_per_sec": n as f64 / took.as_secs_f64(),
        "ns_per_emit": took.as_nanos() as f64 / n as f64,
    })
}

fn plugin_load(lib: &Path) -> Value {
    let rounds = 10;
    let mut times = Vec::new();
    for _ in 0..rounds {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(lib, dir.path().join(lib.file_name().expect("name"))).expect("copy");
        let started = Instant::now();
        let mut plugins = Plugins::new(vec![dir.path().to_path_buf()]);
        let report = plugins.scan();
        times.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(report.loaded.len(), 1);
    }
    times.sort_by(f64::total_cmp);
    json!({
        "library": lib,
        "bytes": std::fs::metadata(lib).map(|m| m.len()).unwrap_or(0),
        "ms_median": times[rounds / 2],
        "ms_min": times[0],
        "ms_max": times[rounds - 1],
    })
}

async fn exec_throughput(bin_dir: &Path) -> Value {
    let flows = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        flows.path().join("b.yaml"),
        "one:\n  flow_content: CountOp(n=5000000)\n  stream: true\n\
         serial3:\n  flow_content: CountOp(n=1000000) >> CountOp(n=1000000) >> CountOp(n=1000000)\n  stream: true\n\
         parallel2:\n  flow_content: CountOp(n=1500000) | CountOp(n=1500000)\n  stream: true\n",
    )
    .expect("write flows");
    let catalog = Catalog::load(
        vec![flows.path().to_path_buf()],
        vec![bin_dir.to_path_buf()],
        Filter::default(),
    );
    let mut out = Map::new();
    for (name, expected) in [
        ("one", 5_000_000usize),
        ("serial3", 3_000_000),
        ("parallel2", 3_000_000),
    ] {
        let flow = catalog
            .snapshot()
            .get(name)
            .and_then(|e| e.flow.clone())
            .expect("flow compiles");
        let options = exec::Options {
            collect_answer: false,
            ..exec::Options::default()
        };
        let started = Instant::now();
        let mut run = exec::start(flow, Map::new(), &options);
        let mut batch = Vec::new();
        let mut chunks = 0usize;
        let mut batches = 0usize;
        let mut first = None;
        while run.next_batch(&mut batch).await {
            if first.is_none() {
                first = Some(started.elapsed());
            }
            chunks += batch.len();
            batches += 1;
            batch.clear();
        }
        let took = started.elapsed();
        assert!(run.finish().await.success());
        assert_eq!(chunks, expected, "{name}: every chunk delivered");
        out.insert(
            name.into(),
            json!({
                "chunks": chunks,
                "seconds": took.as_secs_f64(),
                "chunks_per_sec": chunks as f64 / took.as_secs_f64(),
                "mean_batch": chunks as f64 / batches as f64,
                "first_chunk_ms": first.unwrap_or_default().as_secs_f64() * 1e3,
            }),
        );
    }
    Value::Object(out)
}

fn save_to_served(bin_dir: &Path) -> Value {
    let debounce = Duration::from_millis(50);
    let flows = tempfile::tempdir().expect("temp dir");
    let file: PathBuf = flows.path().join("s.yaml");
    std::fs::write(&file, "s:\n  flow_content: EchoOp()\n  description: v0\n").expect("write");
    let catalog = Arc::new(Catalog::load(
        vec![flows.path().to_path_buf()],
        vec![bin_dir.to_path_buf()],
        Filter::default(),
    ));
    let _watching = flowhost::watch::start(catalog.clone(), debounce).expect("watcher");
    let mut times = Vec::new();
    for round in 1..=20 {
        std::thread::sleep(Duration::from_millis(120));
        let text = format!("s:\n  flow_content: EchoOp()\n  description: v{round}\n");
        let started = Instant::now();
        std::fs::write(&file, &text).expect("write");
        let want = format!("v{round}");
        loop {
            if catalog
                .snapshot()
                .get("s")
                .is_some_and(|e| e.spec.description == want)
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                panic!("edit {round} not served within 5 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    json!({
        "debounce_ms": debounce.as_millis() as u64,
        "ms_median": times[times.len() / 2],
        "ms_p95": times[times.len() * 95 / 100],
        "ms_max": times[times.len() - 1],
        "ms_median_after_debounce": times[times.len() / 2] - debounce.as_secs_f64() * 1e3,
    })
}
