//! Process-isolated ops (`isolation: process`): ops that segfault, abort, overflow their stack,
//! spin ignoring cancellation or allocate without end take down their worker process, never
//! the host; the error names the op and the cause, and the next call is served. Driven over
//! HTTP, MCP (stdio) and `flowhost run`, as users would.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::util::*;

const FLOWS: &str = r#"
segv:
  flow_content: SegvOp()
  isolation: process
abort:
  flow_content: AbortOp()
  isolation: process
overflow:
  flow_content: OverflowOp()
  isolation: process
spin:
  flow_content: SpinOp()
  isolation: process
  limits: {idle_timeout: 1}
hog:
  flow_content: HogOp()
  isolation: process
  limits: {max_memory_mb: 128}
segv_stream:
  flow_content: SegvOp()
  stream: true
  isolation: process
echo:
  flow_content: EchoOp()
  isolation: process
ticks:
  flow_content: TickOp(n=100000, interval_ms=20)
  stream: true
  isolation: process
count:
  flow_content: CountOp(n=20000)
  stream: true
  isolation: process
"#;

/// (flow, what the error must say)
const CRASHES: &[(&str, &str)] = &[
    ("segv", "op SegvOp crashed: signal 11 (SIGSEGV)"),
    ("abort", "op AbortOp crashed: signal 6 (SIGABRT)"),
    ("overflow", "op OverflowOp crashed: stack overflow"),
    (
        "hog",
        "op HogOp crashed: exceeded limits.max_memory_mb (128 MiB)",
    ),
    ("spin", "no chunk within limits.idle_timeout (1s)"),
];

const TEN_S: Duration = Duration::from_secs(10);

fn plugins() -> tempfile::TempDir {
    plugin_folder(&[(&fixture("op_crash"), &so("op_crash"))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_ops_end_their_worker_not_the_host_http() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let plugins = plugins();
    let server = Server::start(
        flows.path(),
        &["--plugins", plugins.path().to_str().unwrap()],
    );
    let client = client();
    for (flow, cause) in CRASHES {
        let started = Instant::now();
        let response = client
            .post(server.url(&format!("/{flow}")))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500, "{flow}");
        let body: Value = response.json().await.unwrap();
        let error = body["metadata"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(cause),
            "{flow}: {body}\nhost log:\n{}",
            server.log()
        );
        // The host is alive and the next isolated call is served by a fresh worker.
        let after = Instant::now();
        let echo: Value = client
            .post(server.url("/echo"))
            .json(&json!({"query": "still here"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(echo["answer"], "still here", "after {flow}");
        eprintln!(
            "{flow}: reported in {:?}; next call served in {:?}",
            after - started,
            after.elapsed()
        );
    }
    // A crash mid-stream: an error chunk naming the cause, then [DONE].
    let body = client
        .post(server.url("/segv_stream"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("op SegvOp crashed: signal 11 (SIGSEGV)"),
        "{body}"
    );
    assert!(body.ends_with("data:[DONE]\n\n"), "{body}");
    // The spinning op's worker was killed, not left running.
    let killed = wait_async(TEN_S, || async {
        server
            .metric(&client, "flowhost_worker_crashes_total")
            .await
            >= 6.0
    })
    .await
    .is_some();
    assert!(killed, "crashes counted: {}", server.log());
    assert!(server.metric(&client, "flowhost_workers").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnect_reaches_an_isolated_op() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let plugins = plugins();
    let server = Server::start(
        flows.path(),
        &["--plugins", plugins.path().to_str().unwrap()],
    );
    let client = client();
    let response = client
        .post(server.url("/ticks"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(server.metric(&client, "flowhost_ops_running").await, 1.0);
    drop(stream);
    let started = Instant::now();
    assert!(
        wait_async(TEN_S, || async {
            server.metric(&client, "flowhost_ops_running").await == 0.0
        })
        .await
        .is_some(),
        "the isolated op kept running"
    );
    eprintln!(
        "disconnect -> isolated op stopped within {:?}",
        started.elapsed()
    );
    // Its worker stopped cleanly and is reused: no crash counted.
    assert_eq!(
        server
            .metric(&client, "flowhost_worker_crashes_total")
            .await,
        0.0
    );
    // Chunks stream through the worker in order.
    let body = client
        .post(server.url("/count"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.matches("\"chunk\":\"hello \"").count(), 20000);
    assert!(body.ends_with("data:[DONE]\n\n"));
}

#[test]
fn flowhost_run_reports_the_crash_and_exits_1() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let plugins = plugins();
    let (code, out, _) = flowhost(&[
        "run",
        "segv",
        "--flows",
        flows.path().to_str().unwrap(),
        "--plugins",
        plugins.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["success"], false);
    assert_eq!(last["error"], "op SegvOp crashed: signal 11 (SIGSEGV)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mcp_a_crash_is_a_tool_error_and_the_session_goes_on() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;
    use rmcp::ServiceExt;
    let flows = folder(&[("f.yaml", FLOWS)]);
    let plugins = plugins();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhost"));
    command
        .args(["serve", "--transport", "stdio", "--flows"])
        .arg(flows.path())
        .arg("--plugins")
        .arg(plugins.path())
        .env("NO_COLOR", "1");
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = ().serve(transport).await.unwrap();
    for (flow, cause) in CRASHES.iter().take(4) {
        let result = client
            .call_tool(CallToolRequestParams::new(flow.to_string()))
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(true), "{flow}");
        let text = &result.content[0].as_text().unwrap().text;
        assert!(text.contains(cause), "{flow}: {text}");
        let echo = client
            .call_tool(
                CallToolRequestParams::new("echo")
                    .with_arguments(json!({"query": "ok"}).as_object().cloned().unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(echo.content[0].as_text().unwrap().text, "ok");
    }
    client.cancel().await.unwrap();
}

/// A rebuilt library gets new workers; the process-wide default (`ops.isolation`) applies to
/// flows that do not say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_ops_follow_a_rebuilt_library() {
    let plugins = plugin_folder(&[(&fixture("op_fixture"), &so("op_fixture"))]);
    let flows = folder(&[("f.yaml", "version:\n  flow_content: VersionOp()\n")]);
    let server = Server::start(
        flows.path(),
        &[
            "--plugins",
            plugins.path().to_str().unwrap(),
            "ops.isolation=process",
        ],
    );
    let client = client();
    let ask = || async {
        client
            .post(server.url("/version"))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["answer"]
            .clone()
    };
    assert_eq!(ask().await, "v1");
    assert!(
        server.metric(&client, "flowhost_workers").await >= 1.0,
        "ran in a worker"
    );
    let staging = plugins.path().join(".staging.tmp");
    std::fs::copy(fixture("op_fixture_v2"), &staging).unwrap();
    std::fs::rename(&staging, plugins.path().join(so("op_fixture"))).unwrap();
    assert!(
        wait_async(TEN_S, || async { ask().await == "v2" })
            .await
            .is_some(),
        "{}",
        server.log()
    );
}

/// A parent op isolated in a worker still reaches its sub-ops (run by the host) and the LLM
/// service: both cross the worker protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_op_calls_its_sub_ops_through_the_host() {
    let flows = folder(&[(
        "f.yaml",
        "agent:\n  flow_content: Legacy012Op() << EchoOp()\n  stream: true\n  isolation: process\n",
    )]);
    let plugins = plugin_folder(&[
        (&fixture("op_legacy_012"), &so("op_legacy_012")),
        (&op_basic(), &so("op_basic")),
    ]);
    let server = Server::start(
        flows.path(),
        &["--plugins", plugins.path().to_str().expect("utf-8")],
    );
    flowhost::llm::tls_init();
    let body = reqwest::Client::new()
        .post(server.url("/agent"))
        .json(&json!({"query": "iso"}))
        .send()
        .await
        .expect("POST")
        .text()
        .await
        .expect("SSE");
    let chunks: Vec<String> = body
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data:"))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|event| event["chunk"].as_str().map(str::to_string))
        .collect();
    let text = chunks.join("");
    assert!(
        text.starts_with("legacy 0.1.2: iso; llm refused") && text.contains("; subs [\""),
        "{body}"
    );
    assert!(
        text.ends_with("-> \"sub\""),
        "the sub-op answered through the host: {text}"
    );
}
