//! The micro-benchmarks: the plugin boundary (emit across FFI, plugin load), the executor's
//! throughput, the LLM service's overhead against a scripted upstream, MCP over stdio (flowhost
//! and FlowLLM), and save → served for a flow file.

use flowhost::catalog::{Catalog, Filter};
use flowhost::exec;
use flowhost::ops::Plugins;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A host that only counts: the cost of `emit` across the FFI boundary and nothing else.
struct CountingHost(AtomicU64);

impl flowhost::ops::Host for CountingHost {
    fn emit(&self, _kind: u8, content: &str, _json: bool) -> bool {
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
    fn log(&self, _level: flowhost::ops::Level, _message: &str) {}
    fn chat_stream(
        &self,
        _request: &str,
        _on_chunk: &mut dyn FnMut(u8, &str, bool) -> bool,
    ) -> Result<String, String> {
        Err("no LLM in this benchmark".into())
    }
}

pub(crate) fn emit_across_boundary(bin_dir: &Path) -> Value {
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

pub(crate) fn plugin_load(lib: &Path) -> Value {
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

pub(crate) async fn exec_throughput(bin_dir: &Path) -> Value {
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
        let mut options = exec::Options::default();
        options.collect_answer = false;
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

/// A fast scripted OpenAI-compatible upstream: `tokens` content deltas, no delay, then `[DONE]`.
async fn scripted_upstream(tokens: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let mut body = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
    );
    for i in 0..tokens {
        body.push_str(&format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i} \"}}}}]}}\n\n"
        ));
    }
    body.push_str("data: [DONE]\n\n");
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                // Headers, then Content-Length bytes.
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..at]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if request.len() >= at + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(body.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

/// Time to first token and per-token cost of going through flowhost (HTTP SSE, StreamChatOp)
/// instead of calling the upstream directly, with an upstream that answers at once.
pub(crate) async fn llm_overhead(bin_dir: &Path) -> Value {
    use futures_util::StreamExt;
    flowhost::llm::tls_init();
    let tokens = 2000;
    let upstream = scripted_upstream(tokens).await;
    let flows = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        flows.path().join("c.yaml"),
        "chat:\n  flow_content: StreamChatOp()\n  stream: true\n",
    )
    .expect("flows");
    let mut child = std::process::Command::new(bin_dir.join("flowhost"))
        .args([
            "serve",
            "--port",
            "0",
            "--no-watch",
            "--log",
            "warn",
            "--flows",
        ])
        .arg(flows.path())
        .env("FLOW_LLM_BASE_URL", &upstream)
        .env("FLOW_LLM_API_KEY", "bench")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn flowhost");
    let stderr = child.stderr.take().expect("stderr");
    let url = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stderr).lines();
        loop {
            let line = lines.next().expect("banner").expect("stderr line");
            if let Some(at) = line.find("listening on ") {
                break line[at + 13..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        }
    };
    let client = reqwest::Client::new();
    let request =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let mut direct = Vec::new();
    let mut via = Vec::new();
    for _ in 0..30 {
        // Directly: first `data:` line with content.
        let started = Instant::now();
        let response = client
            .post(format!("{upstream}/chat/completions"))
            .json(&request)
            .send()
            .await
            .expect("upstream");
        let mut stream = response.bytes_stream();
        let mut first = None;
        let mut text = String::new();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.expect("bytes");
            if first.is_none() {
                first = Some(started.elapsed());
            }
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        direct.push((first.unwrap_or_default(), started.elapsed()));
        assert_eq!(text.matches("\"content\"").count(), tokens);

        // Through flowhost: first answer chunk, every token once and in order.
        let started = Instant::now();
        let response = client
            .post(format!("{url}/chat"))
            .json(&json!({"query": "hi"}))
            .send()
            .await
            .expect("flowhost");
        let mut stream = response.bytes_stream();
        let mut first = None;
        let mut text = String::new();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.expect("bytes");
            text.push_str(&String::from_utf8_lossy(&bytes));
            if first.is_none() && text.contains("\"chunk_type\":\"answer\"") {
                first = Some(started.elapsed());
            }
        }
        via.push((first.unwrap_or_default(), started.elapsed()));
        let answers: Vec<&str> = text
            .split("\n\n")
            .filter(|e| e.contains("\"chunk_type\":\"answer\""))
            .filter_map(|e| e.split("\"chunk\":\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(answers.len(), tokens, "every token delivered");
        assert!(
            answers
                .iter()
                .enumerate()
                .all(|(i, t)| *t == format!("t{i} ")),
            "tokens in order"
        );
        assert!(text.ends_with("data:[DONE]\n\n"));
    }
    let _ = child.kill();
    let _ = child.wait();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let mut direct_first: Vec<Duration> = direct.iter().map(|d| d.0).collect();
    let mut via_first: Vec<Duration> = via.iter().map(|d| d.0).collect();
    let mut direct_total: Vec<Duration> = direct.iter().map(|d| d.1).collect();
    let mut via_total: Vec<Duration> = via.iter().map(|d| d.1).collect();
    let (df, vf, dt, vt) = (
        median(&mut direct_first),
        median(&mut via_first),
        median(&mut direct_total),
        median(&mut via_total),
    );
    json!({
        "tokens_per_stream": tokens,
        "runs": direct.len(),
        "first_token_ms_direct": df,
        "first_token_ms_via_flowhost": vf,
        "first_token_added_ms": vf - df,
        "stream_ms_direct": dt,
        "stream_ms_via_flowhost": vt,
        "per_token_added_us": (vt - dt) * 1e3 / tokens as f64,
        "tokens_lost_or_reordered": 0,
    })
}

/// Sequential `tools/call` over stdio (one request in flight, like an agent), and progress
/// notifications per second for a streaming flow.
pub(crate) fn mcp_stdio(bin_dir: &Path) -> Value {
    let flows = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        flows.path().join("m.yaml"),
        "echo:\n  flow_content: EchoOp()\ncount:\n  flow_content: CountOp()\n  stream: true\n",
    )
    .expect("write flows");
    let mut command = std::process::Command::new(bin_dir.join("flowhost"));
    command
        .args([
            "serve",
            "--transport",
            "stdio",
            "--no-watch",
            "--log",
            "error",
            "--flows",
        ])
        .arg(flows.path());
    let mut report = mcp_stdio_rate(command, "echo", 20_000, Some("count"));
    let mut command = std::process::Command::new(bin_dir.join("flowhost"));
    command
        .args([
            "serve",
            "--transport",
            "stdio",
            "--no-watch",
            "--log",
            "error",
            "--flows",
        ])
        .arg(flows.path());
    report["surface"] = mcp_surface_rates(command, 20_000);
    report
}

/// Sequential requests of the rest of the surface over stdio: `resources/read` of a flow
/// resource, `prompts/list`, and `tools/call` from a 2026-07-28 client (per-request `_meta`).
fn mcp_surface_rates(mut command: std::process::Command, calls: usize) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the MCP server");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut rate = |what: &str, request: &dyn Fn(usize) -> String| {
        let started = Instant::now();
        for id in 1..=calls {
            // One write per message, newline included, as the official SDKs write them.
            stdin
                .write_all(format!("{}\n", request(id)).as_bytes())
                .expect("write");
            stdin.flush().expect("flush");
            loop {
                line.clear();
                assert!(
                    stdout.read_line(&mut line).expect("read") > 0,
                    "stdout closed"
                );
                if line.contains(&format!("\"id\":{id}")) {
                    break;
                }
            }
            assert!(!line.contains("\"error\""), "{what} {id} failed: {line}");
        }
        let per_sec = calls as f64 / started.elapsed().as_secs_f64();
        eprintln!("mcp: {per_sec:.0} sequential {what} per second");
        per_sec
    };
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}"#;
    let modern = rate("2026-07-28 tools/call", &|id| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"query":"q{id}"}},{meta}}}}}"#
        )
    });
    let read = rate("resources/read flow://echo", &|id| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"resources/read","params":{{"uri":"flow://echo",{meta}}}}}"#
        )
    });
    let prompts = rate("prompts/list", &|id| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"prompts/list","params":{{{meta}}}}}"#)
    });
    drop(stdin);
    let _ = child.wait();
    json!({
        "sequential": calls,
        "tools_call_2026_per_sec": modern,
        "resources_read_flow_per_sec": read,
        "prompts_list_per_sec": prompts,
    })
}

/// FlowLLM 0.2 as an MCP stdio server (its peers' serve.py with `backend=mcp`), if installed.
pub(crate) fn flowllm_mcp_stdio(peers: &Path) -> Option<Value> {
    let here = peers.join("flowllm");
    let python = std::path::PathBuf::from("/tmp/peers/flowllm-venv/bin/python");
    if !python.is_file() || !here.join("serve.py").is_file() {
        return None;
    }
    let rundir = std::env::temp_dir().join("flowllm-mcp-bench");
    let _ = std::fs::create_dir_all(&rundir);
    let mut command = std::process::Command::new(python);
    command
        .arg(here.join("serve.py"))
        .arg(format!(
            "config={}",
            here.join("flowllm_bench.yaml").display()
        ))
        .args(["backend=mcp", "mcp.transport=stdio"])
        .current_dir(&rundir)
        .env("PYTHONPATH", &here)
        .env("FLOW_APP_NAME", "FlowLLMBench")
        .stderr(std::process::Stdio::null());
    Some(mcp_stdio_rate(command, "fake_echo_flow", 300, None))
}

/// Sequential `tools/call` over stdio (one request in flight, like an agent), and progress
/// notifications per second for a streaming tool if there is one.
fn mcp_stdio_rate(
    mut command: std::process::Command,
    echo: &str,
    calls: usize,
    count: Option<&str>,
) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the MCP server");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    // One write per message, newline included, as the official SDKs write them.
    let mut send = |text: &str| {
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .expect("write");
        stdin.flush().expect("flush");
    };
    // Reads until the reply to `id` (servers may interleave notifications).
    let reply = |id: &str, line: &mut String, stdout: &mut BufReader<std::process::ChildStdout>| loop {
        line.clear();
        assert!(
            stdout.read_line(line).expect("read") > 0,
            "the MCP server closed stdout"
        );
        if line.contains(&format!("\"id\":{id}")) {
            return;
        }
    };
    send(
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#,
    );
    reply("0", &mut line, &mut stdout);
    send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let started = Instant::now();
    for id in 1..=calls {
        send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{echo}","arguments":{{"query":"q{id}"}}}}}}"#
        ));
        reply(&id.to_string(), &mut line, &mut stdout);
        assert!(!line.contains("\"error\""), "call {id} failed: {line}");
    }
    let call_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "mcp: {:.0} sequential tools/call per second",
        calls as f64 / call_secs
    );
    let mut report = json!({
        "sequential_calls": calls,
        "calls_per_sec": calls as f64 / call_secs,
        "us_per_call": call_secs * 1e6 / calls as f64,
    });
    if let Some(count) = count {
        let n = 200_000u64;
        let started = Instant::now();
        send(&format!(
            r#"{{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{{"name":"{count}","arguments":{{"n":{n}}},"_meta":{{"progressToken":"t"}}}}}}"#
        ));
        let mut notifications = 0u64;
        loop {
            line.clear();
            stdout.read_line(&mut line).expect("message");
            if line.contains("notifications/progress") {
                notifications += 1;
            } else if line.contains(r#""id":"c""#) {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(notifications, n);
        report["progress_notifications"] = json!(notifications);
        report["progress_per_sec"] = json!(notifications as f64 / secs);
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    report
}

pub(crate) fn save_to_served(bin_dir: &Path) -> Value {
    let debounce = Duration::from_millis(50);
    let flows = tempfile::tempdir().expect("temp dir");
    let file: PathBuf = flows.path().join("s.yaml");
    std::fs::write(&file, "s:\n  flow_content: EchoOp()\n  description: v0\n").expect("write");
    let catalog = Arc::new(Catalog::load(
        vec![flows.path().to_path_buf()],
        vec![bin_dir.to_path_buf()],
        Filter::default(),
    ));
    let _watching = flowhost::catalog::watch::start(catalog.clone(), debounce).expect("watcher");
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
