//! Outside MCP servers (issue 27): what a call through `McpOp` adds. One sequential MCP
//! client (JSON-RPC lines over stdio, written here, the same for both) calls server-everything's
//! `echo` straight, then a flowhost tool whose flow is `McpOp(mcp_name="everything",
//! tool_name="echo")` (flowhost's stdio MCP, its upstream session over stdio). Then the same
//! flow over HTTP against FlowLLM 0.2.0.10's `BaseMcpOp` on the same upstream (its client opens
//! a session, and so starts the server, per call). Needs `scripts/mcp-upstreams` (and
//! FlowLLM's venv for the last figure).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::compare::{free_port, serve_command, start};

const CALLS: usize = 3000;
const FLOWLLM_CALLS: usize = 20;

fn workspace(bin_dir: &Path) -> PathBuf {
    bin_dir
        .parent()
        .and_then(Path::parent)
        .expect("the workspace")
        .to_path_buf()
}

/// Sequential `tools/call`s of `tool` over the server's stdio: calls per second, p50, p99.
fn stdio_calls(mut command: Command, tool: &str, calls: usize) -> Value {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the MCP server");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut send = |text: &str| {
        stdin.write_all(text.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    };
    let mut reply = |id: usize, line: &mut String| loop {
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
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#,
    );
    reply(0, &mut line);
    send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let mut times = Vec::with_capacity(calls);
    let warmup = 200;
    let started = Instant::now();
    let mut measured_from = started;
    for id in 1..=calls + warmup {
        if id == warmup + 1 {
            measured_from = Instant::now();
        }
        let at = Instant::now();
        send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"message":"hi {id}"}}}}}}"#
        ));
        reply(id, &mut line);
        assert!(
            line.contains(&format!("Echo: hi {id}")),
            "{tool} {id}: {line}"
        );
        if id > warmup {
            times.push(at.elapsed());
        }
    }
    let per_sec = calls as f64 / measured_from.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    summary(per_sec, &mut times)
}

fn summary(per_sec: f64, times: &mut [Duration]) -> Value {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    json!({
        "calls_per_sec": per_sec.round(),
        "p50_ms": (at(0.5) * 1000.0).round() / 1000.0,
        "p99_ms": (at(0.99) * 1000.0).round() / 1000.0,
    })
}

/// Sequential POSTs of a JSON flow: calls per second, p50, p99.
async fn http_calls(url: &str, calls: usize) -> Value {
    let client = reqwest::Client::new();
    let mut times = Vec::with_capacity(calls);
    let started = Instant::now();
    for i in 0..calls {
        let at = Instant::now();
        let body = client
            .post(url)
            .header("content-type", "application/json")
            .body(json!({"message": format!("hi {i}")}).to_string())
            .send()
            .await
            .expect("POST")
            .text()
            .await
            .expect("a body");
        assert!(body.contains(&format!("Echo: hi {i}")), "{url}: {body}");
        times.push(at.elapsed());
    }
    summary(calls as f64 / started.elapsed().as_secs_f64(), &mut times)
}

pub async fn run(bin_dir: &Path) -> Value {
    flowhost::llm::tls_init();
    let everything =
        workspace(bin_dir).join("target/upstreams/node_modules/.bin/mcp-server-everything");
    if !everything.is_file() {
        return json!({"skipped": "run `bash scripts/mcp-upstreams` first"});
    }
    let dir = tempfile::tempdir().expect("a temp folder");
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).expect("flows folder");
    std::fs::write(
        flows.join("m.yaml"),
        "mcp_echo:\n  flow_content: McpOp(mcp_name=\"everything\", tool_name=\"echo\")\n  input_schema:\n    message: {type: string, required: true}\n",
    )
    .expect("flow file");
    let config = dir.path().join("flowhost.yaml");
    std::fs::write(
        &config,
        format!(
            "external_mcp:\n  everything:\n    command: {}\n    args: [stdio]\n",
            everything.display()
        ),
    )
    .expect("config");

    eprintln!("== upstream: {CALLS} sequential echo calls straight to server-everything (stdio)");
    let mut direct = Command::new(&everything);
    direct.arg("stdio");
    let direct = tokio::task::spawn_blocking(move || stdio_calls(direct, "echo", CALLS))
        .await
        .expect("direct");
    eprintln!("   {direct}");

    eprintln!("== upstream: the same through flowhost's MCP (stdio) and McpOp");
    let mut via = Command::new(bin_dir.join("flowhost"));
    via.args([
        "serve",
        "--transport",
        "stdio",
        "--no-watch",
        "--log",
        "error",
        "--config",
    ])
    .arg(&config)
    .arg("--flows")
    .arg(&flows);
    let through = tokio::task::spawn_blocking(move || stdio_calls(via, "mcp_echo", CALLS))
        .await
        .expect("through flowhost");
    eprintln!("   {through}");
    let added =
        through["p50_ms"].as_f64().unwrap_or(0.0) - direct["p50_ms"].as_f64().unwrap_or(0.0);

    eprintln!("== upstream: the flow over HTTP, flowhost");
    let port = free_port();
    let mut command = serve_command(bin_dir, port, &flows);
    command.arg("--config").arg(&config);
    let server = start("flowhost", command, port, Duration::from_secs(60)).await;
    let flowhost_http = http_calls(&format!("{}/mcp_echo", server.url), CALLS).await;
    drop(server);
    eprintln!("   {flowhost_http}");

    let flowllm = flowllm(&everything, dir.path()).await;
    json!({
        "calls": CALLS,
        "direct_stdio": direct,
        "flowhost_mcp_stdio_mcpop": through,
        "added_p50_ms": (added * 1000.0).round() / 1000.0,
        "flowhost_http_mcpop": flowhost_http,
        "flowllm_http_basemcpop": flowllm,
    })
}

/// FlowLLM 0.2.0.10 serving the same flow with `BaseMcpOp` on the same upstream.
async fn flowllm(everything: &Path, dir: &Path) -> Value {
    let peers = std::env::var("FLOWHOST_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("../shared/peers"));
    let python = PathBuf::from("/tmp/peers/flowllm-venv/bin/python");
    let serve = peers.join("flowllm/serve.py");
    if !python.is_file() || !serve.is_file() {
        return json!({"skipped": "FlowLLM's venv is missing: bash ../shared/peers/flowllm/setup.sh"});
    }
    let port = free_port();
    let config = dir.join("flowllm.yaml");
    std::fs::write(
        &config,
        format!(
            "backend: http\nenable_logo: false\nthread_pool_max_workers: 16\nhttp:\n  host: \"127.0.0.1\"\n  port: {port}\nexternal_mcp:\n  everything:\n    command: {}\n    args: [stdio]\nflow:\n  mcp_echo:\n    flow_content: BaseMcpOp(mcp_name=\"everything\", tool_name=\"echo\")\n    description: echo through MCP\n    input_schema:\n      message:\n        type: string\n        description: text\n        required: true\n",
            everything.display()
        ),
    )
    .expect("FlowLLM config");
    let rundir = dir.join("flowllm-run");
    std::fs::create_dir_all(&rundir).expect("run folder");
    let mut command = Command::new(python);
    command
        .current_dir(&rundir)
        .env("FLOW_APP_NAME", "FlowLLMBench")
        .env("PYTHONPATH", peers.join("flowllm"))
        .arg(&serve)
        .arg(format!("config={}", config.display()))
        .arg("http.host=127.0.0.1")
        .arg(format!("http.port={port}"));
    eprintln!(
        "== upstream: the flow over HTTP, FlowLLM 0.2.0.10 BaseMcpOp ({FLOWLLM_CALLS} calls)"
    );
    let server = start("flowllm", command, port, Duration::from_secs(120)).await;
    let figures = http_calls(&format!("{}/mcp_echo", server.url), FLOWLLM_CALLS).await;
    drop(server);
    eprintln!("   {figures}");
    figures
}
