//! `flowhost-bench compare`: the same workloads, one Rust load client, against flowhost
//! (release), FlowLLM 0.2.0.10 (../shared/peers/flowllm, fake LLM-free ops) and the floor (a
//! bare axum SSE server). Prints a markdown table and writes it with the JSON to target/bench/.
//! Loopback only; every phase is bounded in count and time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::sse::read_stream;

const BENCH_FLOWS: &str = "\
fake_stream_flow:
  flow_content: CountOp()
  stream: true
  input_schema:
    n: {type: integer}
fake_echo_flow:
  flow_content: EchoOp()
ticks:
  flow_content: TickOp(n=1000000, interval_ms=20)
  stream: true
slow:
  flow_content: TickOp(n=100000, interval_ms=1000)
  stream: true
";

pub(crate) struct Server {
    name: &'static str,
    pub(crate) url: String,
    child: Child,
    start_to_ready: Duration,
}

impl Server {
    /// The server process's CPU time so far (user + system, from /proc), in seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flowhost serve` of the build beside this binary on `port`, serving `flows`, without the
/// watcher, logging errors only (add settings with `.arg`).
pub(crate) fn serve_command(bin_dir: &Path, port: u16, flows: &Path) -> Command {
    let mut command = Command::new(bin_dir.join("flowhost"));
    command
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--no-watch",
            "--log",
            "error",
            "--flows",
        ])
        .arg(flows);
    command
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_ready(url: &str, child: &mut Child, limit: Duration) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{url}/health")).send().await {
            if response.status().is_success() {
                return started.elapsed();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{url}: server exited before it was ready ({status})");
        }
        assert!(
            started.elapsed() < limit,
            "{url} not ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn start(
    name: &'static str,
    mut command: Command,
    port: u16,
    limit: Duration,
) -> Server {
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    wait_ready(&url, &mut child, limit).await;
    Server {
        name,
        url,
        child,
        start_to_ready: started.elapsed(),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn single(server: &Server, n: u64) -> Value {
    let client = reqwest::Client::new();
    let url = format!("{}/fake_stream_flow", server.url);
    let (chunks, done, first, total, _) = read_stream(&client, &url, &json!({"n": n})).await;
    json!({
        "chunks": chunks, "expected": n, "done": done,
        "first_chunk_ms": first.as_secs_f64() * 1e3,
        "seconds": total.as_secs_f64(),
        "chunks_per_sec": chunks as f64 / total.as_secs_f64(),
    })
}

async fn concurrent(server: &Server, streams: usize, n: u64) -> Value {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let url = format!("{}/fake_stream_flow", server.url);
    let pid = server.child.id();
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { read_stream(&client, &url, &json!({"n": n})).await })
        })
        .collect();
    let mut received = 0u64;
    let mut with_done = 0;
    let mut failed = 0;
    let mut first = Vec::new();
    for task in tasks {
        match task.await {
            Ok((chunks, done, ttfc, _, status)) => {
                received += chunks;
                with_done += usize::from(done);
                failed += usize::from(status != 200 || chunks != n);
                first.push(ttfc.as_secs_f64() * 1e3);
            }
            Err(_) => failed += 1,
        }
    }
    let total = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    first.sort_by(f64::total_cmp);
    json!({
        "streams": streams, "per_stream": n,
        "seconds": total.as_secs_f64(),
        "ms": total.as_secs_f64() * 1e3,
        "received": received, "expected": streams as u64 * n,
        "with_done": with_done, "failed": failed,
        "first_chunk_ms_p50": first.get(first.len() / 2).copied().unwrap_or(0.0),
        "rss_peak_kib": peak.load(Ordering::Relaxed),
    })
}

/// Client disconnect → the op stops: read one chunk of an endless TickOp stream, drop the
/// connection, poll flowhost's `flowhost_ops_running` until it is 0.
async fn disconnect_to_stop(server: &Server) -> Value {
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for _ in 0..20 {
        let response = client
            .post(format!("{}/ticks", server.url))
            .json(&json!({}))
            .send()
            .await
            .expect("ticks");
        let mut stream = response.bytes_stream();
        let _ = stream.next().await;
        drop(stream);
        let dropped = Instant::now();
        loop {
            let text = client
                .get(format!("{}/metrics", server.url))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default();
            let running: f64 = text
                .lines()
                .find(|l| l.starts_with("flowhost_ops_running "))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(1.0);
            if running == 0.0 {
                times.push(dropped.elapsed().as_secs_f64() * 1e3);
                break;
            }
            assert!(
                dropped.elapsed() < Duration::from_secs(5),
                "op still running 5 s after the disconnect"
            );
        }
    }
    times.sort_by(f64::total_cmp);
    json!({"runs": times.len(), "ms_median": times[times.len() / 2], "ms_max": times[times.len() - 1],
           "note": "includes one /metrics round trip of polling"})
}

/// Many slow streams held open: each gets a tick a second; RSS per stream.
async fn slow_streams(server: &Server, streams: usize, hold: Duration) -> Value {
    let pid = server.child.id();
    let before = rss_kib(pid);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let ticks = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{}/slow", server.url));
            let (ticks, open, stop) = (ticks.clone(), open.clone(), stop.clone());
            tokio::spawn(async move {
                let Ok(response) = client.post(&url).json(&json!({})).send().await else {
                    return;
                };
                let mut stream = response.bytes_stream();
                let mut counted = false;
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                        Ok(Some(Ok(bytes))) => {
                            if !counted {
                                counted = true;
                                open.fetch_add(1, Ordering::Relaxed);
                            }
                            ticks.fetch_add(
                                memchr::memmem::find_iter(&bytes, b"\n\n").count() as u64,
                                Ordering::Relaxed,
                            );
                        }
                        Ok(_) => return,
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();
    let mut peak = before;
    while started.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(pid));
    }
    let established = open.load(Ordering::Relaxed);
    let received = ticks.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    json!({
        "streams": streams, "established": established, "held_s": hold.as_secs_f64(),
        "ticks_received": received,
        "ticks_expected_about": established as f64 * hold.as_secs_f64(),
        "rss_before_kib": before, "rss_peak_kib": peak,
        "rss_per_stream_kib": (peak.saturating_sub(before)) as f64 / streams.max(1) as f64,
    })
}

fn peers_dir(repo: &Path) -> PathBuf {
    std::env::var_os("FLOWHOST_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("..").join("shared").join("peers"))
}

pub async fn run(bin_dir: &Path) -> Value {
    flowhost::llm::tls_init();
    let repo = bin_dir
        .parent()
        .and_then(Path::parent)
        .expect("repository root")
        .to_path_buf();
    let peers = peers_dir(&repo);
    let flows = tempfile::tempdir().expect("temp dir");
    std::fs::write(flows.path().join("bench.yaml"), BENCH_FLOWS).expect("bench flows");
    let slow = std::env::var("BENCH_SLOW_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000usize);
    let hold = Duration::from_secs(
        std::env::var("BENCH_SLOW_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );

    let mut report = Map::new();
    let mut servers: Vec<(&'static str, u64, u64)> = Vec::new();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for name in ["floor", "flowhost", "flowllm"] {
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        let port = free_port();
        let command = match name {
            "floor" => {
                let mut c = Command::new(std::env::current_exe().expect("exe"));
                c.args(["floor-server", &port.to_string()]);
                c
            }
            "flowhost" => {
                let mut c = serve_command(bin_dir, port, flows.path());
                c.arg(format!("max_op_threads={}", slow + 1024));
                c
            }
            _ => {
                let script = peers.join("flowllm").join("run.sh");
                if !script.is_file() {
                    eprintln!(
                        "skipping FlowLLM: {} not found (set FLOWHOST_PEERS)",
                        script.display()
                    );
                    continue;
                }
                let mut c = Command::new("bash");
                c.arg(script).arg(port.to_string());
                c
            }
        };
        eprintln!("== {name}");
        let server = start(name, command, port, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = rss_kib(server.child.id());
        let mut rows = Map::new();
        rows.insert(
            "start_to_ready_ms".into(),
            json!(server.start_to_ready.as_secs_f64() * 1e3),
        );
        rows.insert("idle_rss_kib".into(), json!(idle));
        eprintln!("   one stream of 10,000 chunks");
        rows.insert("single_10k".into(), single(&server, 10_000).await);
        let big = if name == "flowllm" { 20_000 } else { 1_000_000 };
        eprintln!("   one stream of {big} chunks");
        rows.insert("single_big".into(), single(&server, big).await);
        eprintln!("   100 concurrent streams x 100 chunks");
        rows.insert("concurrent_100".into(), concurrent(&server, 100, 100).await);
        eprintln!("   1,000 concurrent streams x 100 chunks");
        rows.insert(
            "concurrent_1000".into(),
            concurrent(&server, 1000, 100).await,
        );
        eprintln!("   non-stream requests, 32 clients, 5 s");
        rows.insert(
            "nonstream_32".into(),
            crate::load::nonstream(&server.url, "fake_echo_flow", 32, Duration::from_secs(5)).await,
        );
        rows.insert("loaded_rss_kib".into(), json!(rss_kib(server.child.id())));
        if name == "flowhost" {
            eprintln!("   client disconnect -> op stopped");
            rows.insert(
                "disconnect_to_stop".into(),
                disconnect_to_stop(&server).await,
            );
            if slow > 0 {
                eprintln!("   {slow} slow streams held {}s", hold.as_secs());
                rows.insert(
                    "slow_streams".into(),
                    slow_streams(&server, slow, hold).await,
                );
            }
        }
        servers.push((server.name, idle, 0));
        report.insert(name.into(), Value::Object(rows));
        drop(server);
    }
    if only.is_empty() || only.split(',').any(|o| o == "flowhost") {
        eprintln!("== flowhost in-process: save -> served, MCP stdio");
        report.insert(
            "flowhost_save_to_served".into(),
            crate::micro::save_to_served(bin_dir),
        );
        report.insert(
            "flowhost_mcp_stdio".into(),
            crate::micro::mcp_stdio(bin_dir),
        );
    }
    if only.is_empty() || only.split(',').any(|o| o == "flowllm") {
        eprintln!("== FlowLLM MCP stdio");
        if let Some(figures) = crate::micro::flowllm_mcp_stdio(&peers) {
            report.insert("flowllm_mcp_stdio".into(), figures);
        }
    }
    let _ = servers;
    Value::Object(report)
}

/// The markdown table: one row per figure, with ratios to FlowLLM and to the floor.
pub fn table(report: &Value) -> String {
    let get = |target: &str, path: &str| {
        report
            .get(target)
            .and_then(|t| t.pointer(path))
            .and_then(Value::as_f64)
    };
    let fmt = |v: Option<f64>, unit: &str| {
        v.map_or("—".to_string(), |v| format!("{} {unit}", human(v)))
    };
    let mut out = String::from("| figure | FlowLLM 0.2 | floor | flowhost | vs FlowLLM | vs floor | target |\n|---|---|---|---|---|---|---|\n");
    let mut row = |label: &str, path: &str, unit: &str, higher_better: bool, target: &str| {
        let (l, f, h) = (
            get("flowllm", path),
            get("floor", path),
            get("flowhost", path),
        );
        let ratio = |other: Option<f64>| match (h, other) {
            (Some(h), Some(o)) if h > 0.0 && o > 0.0 => {
                let r = if higher_better { h / o } else { o / h };
                format!("{}×", human(r))
            }
            _ => "—".into(),
        };
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {target} |\n",
            fmt(l, unit),
            fmt(f, unit),
            fmt(h, unit),
            ratio(l),
            ratio(f)
        ));
    };
    row(
        "one stream of 10,000 chunks: chunks/s",
        "/single_10k/chunks_per_sec",
        "/s",
        true,
        "",
    );
    row(
        "one stream of 10,000 chunks: first chunk",
        "/single_10k/first_chunk_ms",
        "ms",
        false,
        "< 2 ms",
    );
    row(
        "one big stream (1M chunks; FlowLLM 20k): chunks/s",
        "/single_big/chunks_per_sec",
        "/s",
        true,
        "within 3× of the floor",
    );
    row(
        "one big stream: first chunk",
        "/single_big/first_chunk_ms",
        "ms",
        false,
        "< 2 ms",
    );
    row(
        "100 concurrent streams × 100 chunks: total",
        "/concurrent_100/ms",
        "ms",
        false,
        "< 50 ms, none lost",
    );
    row(
        "100 × 100: chunks received (of 10,000)",
        "/concurrent_100/received",
        "",
        true,
        "",
    );
    row(
        "1,000 concurrent streams × 100 chunks: total",
        "/concurrent_1000/ms",
        "ms",
        false,
        "< 500 ms, none lost",
    );
    row(
        "1,000 × 100: chunks received (of 100,000)",
        "/concurrent_1000/received",
        "",
        true,
        "",
    );
    row(
        "1,000 × 100: streams ended with [DONE]",
        "/concurrent_1000/with_done",
        "",
        true,
        "",
    );
    row(
        "non-stream, 32 clients: requests/s",
        "/nonstream_32/requests_per_sec",
        "/s",
        true,
        "within 2× of the floor",
    );
    row(
        "non-stream, 32 clients: p99",
        "/nonstream_32/p99_ms",
        "ms",
        false,
        "",
    );
    row("idle RSS", "/idle_rss_kib", "KiB", false, "< 15 MiB");
    row(
        "RSS at peak of 1,000 × 100",
        "/concurrent_1000/rss_peak_kib",
        "KiB",
        false,
        "",
    );
    row("start to ready", "/start_to_ready_ms", "ms", false, "");
    let one = |path: &str| report.pointer(path).and_then(Value::as_f64);
    out.push_str(&format!(
        "| flow file saved → served (50 ms debounce) | no reload | — | {} median, {} p95 | | | < 100 ms after the debounce |\n",
        fmt(one("/flowhost_save_to_served/ms_median"), "ms"),
        fmt(one("/flowhost_save_to_served/ms_p95"), "ms"),
    ));
    out.push_str(&format!(
        "| client disconnect → op stopped | never | — | {} median, {} max | | | < 10 ms |\n",
        fmt(one("/flowhost/disconnect_to_stop/ms_median"), "ms"),
        fmt(one("/flowhost/disconnect_to_stop/ms_max"), "ms"),
    ));
    let flowllm_mcp = one("/flowllm_mcp_stdio/calls_per_sec");
    let flowhost_mcp = one("/flowhost_mcp_stdio/calls_per_sec");
    out.push_str(&format!(
        "| MCP stdio sequential tools/call | {} | — | {} | {} | | ≥ 20k /s |\n",
        fmt(flowllm_mcp, "/s"),
        fmt(flowhost_mcp, "/s"),
        match (flowhost_mcp, flowllm_mcp) {
            (Some(h), Some(l)) if l > 0.0 => format!("{}×", human(h / l)),
            _ => "—".into(),
        },
    ));
    out.push_str(&format!(
        "| slow streams (TickOp, 1 s) held: established / RSS per stream | — | — | {} of {} / {} | | | |\n",
        fmt(one("/flowhost/slow_streams/established"), ""),
        fmt(one("/flowhost/slow_streams/streams"), ""),
        fmt(one("/flowhost/slow_streams/rss_per_stream_kib"), "KiB"),
    ));
    out
}

fn human(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 10_000.0 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
