//! Outside MCP servers (`external_mcp`) through the real binary: npm's
//! `@modelcontextprotocol/server-everything` (stdio) and a Python server written with the
//! official `mcp` SDK for the failure cases (host/tests/fixtures/upstream/failing.py), both
//! installed by `scripts/mcp-upstreams`. Flows call their tools over HTTP (JSON, SSE, `/v1`),
//! an agent calls two of them, a kill -9 and a hang are survived, a renamed tool takes its flow
//! down and back, and exposed tools are listed and called over flowhost's own MCP (stdio).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};

use crate::agents::Scripted;
use crate::util::*;

/// The installed upstreams: server-everything's launcher and the venv's python. None (the
/// test is skipped) when `scripts/mcp-upstreams` has not run, except under CI, where that is
/// a failure.
fn upstreams() -> Option<(PathBuf, PathBuf)> {
    let root = bin_dir()
        .parent()
        .and_then(|p| p.parent())
        .expect("the workspace")
        .to_path_buf();
    let everything = root.join("target/upstreams/node_modules/.bin/mcp-server-everything");
    let python = root.join("target/upstreams/venv/bin/python");
    if everything.is_file() && python.is_file() {
        return Some((everything, python));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the upstream MCP servers are not installed: run `bash scripts/mcp-upstreams`"
    );
    eprintln!("skipped: run `bash scripts/mcp-upstreams` to install the upstream MCP servers");
    None
}

fn failing_py() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream/failing.py")
}

/// A config naming server-everything as `everything` (its `echo` and `get-sum` exposed) and
/// the Python server as `py`.
fn config(everything: &std::path::Path, python: &std::path::Path) -> String {
    format!(
        "external_mcp:\n  everything:\n    command: {}\n    args: [stdio]\n    expose:\n      include: [echo, get-sum]\n  py:\n    command: {}\n    args: [{}]\n    timeout: 20\n",
        everything.display(),
        python.display(),
        failing_py().display()
    )
}

const FLOWS: &str = r#"
echo_flow:
  flow_content: McpOp(mcp_name="everything", tool_name="echo")
  input_schema:
    message: {type: string, required: true}
echo_query:
  flow_content: 'McpOp(mcp_name="everything", tool_name="echo", input_schema_mapping={"message": "query"})'
  input_schema:
    query: {type: string, required: true}
sum_flow:
  flow_content: BaseMcpOp(mcp_name="everything", tool_name="get-sum", name="sum") >> EchoOp()
  input_schema:
    a: {type: number}
    b: {type: number}
long_flow:
  flow_content: McpOp(mcp_name="everything", tool_name="trigger-long-running-operation")
  stream: true
  input_schema:
    duration: {type: number}
    steps: {type: number}
agent:
  flow_content: 'ReactAgentOp(max_steps=3) << [McpTools(mcp_name="everything", include=["echo", "get-sum"])]'
add_flow:
  flow_content: McpOp(mcp_name="py", tool_name="add")
slow_flow:
  flow_content: McpOp(mcp_name="py", tool_name="slow")
  stream: true
crash_flow:
  flow_content: McpOp(mcp_name="py", tool_name="crash")
hang_flow:
  flow_content: McpOp(mcp_name="py", tool_name="hang", timeout=1)
fail_flow:
  flow_content: McpOp(mcp_name="py", tool_name="fail")
rename_flow:
  flow_content: McpOp(mcp_name="py", tool_name="rename")
ask_flow:
  flow_content: McpOp(mcp_name="py", tool_name="ask_llm")
"#;

fn host(flows: &tempfile::TempDir, config: &str, envs: &[(&str, &str)]) -> Server {
    // In the flows folder, named so the flow loader passes it by.
    let path = flows.path().join("host-config.cfg");
    std::fs::write(&path, config).expect("write config");
    let path = path.to_str().expect("a path").to_string();
    Server::start_with_env(flows.path(), &["--config", &path], envs)
}

async fn post(client: &reqwest::Client, server: &Server, flow: &str, body: Value) -> Value {
    client
        .post(server.url(&format!("/{flow}")))
        .json(&body)
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("a JSON answer")
}

async fn ops(client: &reqwest::Client, server: &Server, name: &str) -> Value {
    let ops: Value = client
        .get(server.url("/ops"))
        .send()
        .await
        .expect("GET /ops")
        .json()
        .await
        .expect("JSON");
    ops["mcp_servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

async fn status(client: &reqwest::Client, server: &Server, flow: &str) -> (String, String) {
    let flows: Value = client
        .get(server.url("/flows"))
        .send()
        .await
        .expect("GET /flows")
        .json()
        .await
        .expect("JSON");
    let entry = flows["flows"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == flow).cloned())
        .unwrap_or(Value::Null);
    (
        entry["status"].as_str().unwrap_or("missing").to_string(),
        entry["error"].to_string(),
    )
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_call_upstream_tools_over_json_sse_and_v1() {
    let Some((everything, python)) = upstreams() else {
        return;
    };
    flowhost::llm::tls_init();
    let flows = folder(&[("up.yaml", FLOWS)]);
    let server = host(&flows, &config(&everything, &python), &[]);
    let client = reqwest::Client::new();

    let reply = post(&client, &server, "echo_flow", json!({"message": "hi"})).await;
    assert_eq!(reply["answer"], "Echo: hi", "{reply}");
    // BaseMcpOp: its result in the context as `get_sum_result` (EchoOp has no `query`: the
    // flow goes on and fails there, as FlowLLM's would).
    let reply = post(&client, &server, "sum_flow", json!({"a": 2, "b": 3})).await;
    assert_eq!(reply["answer"], "The sum of 2 and 3 is 5.", "{reply}");
    // A missing required argument names the parameter and the context key.
    let reply = post(&client, &server, "echo_query", json!({"query": "q"})).await;
    assert_eq!(reply["answer"], "Echo: q", "{reply}");

    // SSE: the tool's progress notifications are `think` chunks before the answer.
    let body = client
        .post(server.url("/long_flow"))
        .json(&json!({"duration": 1, "steps": 2}))
        .send()
        .await
        .expect("POST")
        .text()
        .await
        .expect("SSE");
    let events: Vec<Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data:"))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("a chunk"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["chunk_type"] == "think" && e["chunk"] == "1/2"),
        "{body}"
    );
    assert!(
        events.iter().any(|e| e["chunk_type"] == "answer"
            && e["chunk"]
                .as_str()
                .unwrap_or_default()
                .contains("Long running operation completed")),
        "{body}"
    );

    // The OpenAI route: the last user message is `query`.
    let reply: Value = client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "echo_query", "messages": [{"role": "user", "content": "via openai"}]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        reply["choices"][0]["message"]["content"], "Echo: via openai",
        "{reply}"
    );

    // State and counts: /ops and /metrics.
    let state = ops(&client, &server, "everything").await;
    assert_eq!(state["state"], "up", "{state}");
    assert!(state["calls"].as_u64().unwrap_or(0) >= 5, "{state}");
    assert!(
        server
            .metric(&client, "flowhost_mcp_upstream_calls_total")
            .await
            >= 5.0
    );
    assert_eq!(
        server.metric(&client, "flowhost_mcp_upstream_up").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstreams_streamable_and_sse_serve_the_same_flows() {
    let Some((everything, _)) = upstreams() else {
        return;
    };
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();
    // server-everything's Streamable HTTP mode, then its HTTP+SSE (2024-11-05) mode, each on a
    // free port, run by the test.
    for (mode, path, kind) in [
        ("streamableHttp", "/mcp", "streamable-http"),
        ("sse", "/sse", "sse"),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut upstream = std::process::Command::new(&everything)
            .arg(mode)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server-everything over HTTP");
        eventually("server-everything listening", || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        let flows = folder(&[(
            "up.yaml",
            "echo_flow:\n  flow_content: McpOp(mcp_name=\"remote\", tool_name=\"echo\")\nlong_flow:\n  flow_content: McpOp(mcp_name=\"remote\", tool_name=\"trigger-long-running-operation\")\n  stream: true\n",
        )]);
        let config = format!(
            "external_mcp:\n  remote:\n    type: {kind}\n    url: http://127.0.0.1:{port}{path}\n    headers: {{X-Test: yes}}\n"
        );
        let server = host(&flows, &config, &[]);
        let reply = post(&client, &server, "echo_flow", json!({"message": kind})).await;
        assert_eq!(reply["answer"], format!("Echo: {kind}"), "{kind}: {reply}");
        let body = client
            .post(server.url("/long_flow"))
            .json(&json!({"duration": 1, "steps": 2}))
            .send()
            .await
            .expect("POST")
            .text()
            .await
            .expect("SSE");
        assert!(
            body.contains("\"chunk_type\":\"think\",\"chunk\":\"1/2\""),
            "{kind}: {body}"
        );
        assert_eq!(
            ops(&client, &server, "remote").await["state"],
            "up",
            "{kind}"
        );
        drop(server);
        let _ = upstream.kill();
        let _ = upstream.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_two_upstream_tools() {
    let Some((everything, python)) = upstreams() else {
        return;
    };
    flowhost::llm::tls_init();
    let flows = folder(&[("up.yaml", FLOWS)]);
    let tool_call = |index: u64, id: &str, name: &str, arguments: &str| json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]});
    let llm = Scripted::start(vec![
        vec![
            json!({"role": "assistant", "content": null}),
            tool_call(0, "c1", "echo", "{\"message\": \"ping\"}"),
            tool_call(1, "c2", "get-sum", "{\"a\": 2, \"b\": 3}"),
        ],
        vec![json!({"content": "done"})],
    ])
    .await;
    let server = host(
        &flows,
        &config(&everything, &python),
        &[("FLOW_LLM_BASE_URL", &llm.url), ("FLOW_LLM_API_KEY", "k")],
    );
    let client = reqwest::Client::new();
    let reply = post(&client, &server, "agent", json!({"query": "use the tools"})).await;
    assert_eq!(reply["answer"], "done", "{reply}");
    let bodies = llm.bodies();
    let names: Vec<&str> = bodies[0]["tools"]
        .as_array()
        .expect("tools sent")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(names, ["echo", "get-sum"]);
    // The upstream's own description and schema are what the model sees.
    assert_eq!(
        bodies[0]["tools"][1]["function"]["parameters"]["properties"]["a"]["type"],
        "number"
    );
    let messages = bodies[1]["messages"].as_array().expect("messages");
    assert_eq!(messages[2]["content"], "Echo: ping", "{messages:#?}");
    assert_eq!(
        messages[3]["content"], "The sum of 2 and 3 is 5.",
        "{messages:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_crashed_or_hung_server_fails_its_call_and_is_restarted() {
    let Some((everything, python)) = upstreams() else {
        return;
    };
    flowhost::llm::tls_init();
    let flows = folder(&[("up.yaml", FLOWS)]);
    let server = host(&flows, &config(&everything, &python), &[]);
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, &server, "add_flow", json!({"a": 2, "b": 3})).await["answer"],
        "5"
    );

    // kill -9 mid-call: the call ends with an error chunk naming the server.
    let first = ops(&client, &server, "py").await["pid"]
        .as_u64()
        .expect("a pid");
    let call = {
        let (client, url) = (client.clone(), server.url("/slow_flow"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"seconds": 30}))
                .send()
                .await
                .expect("POST")
                .text()
                .await
                .expect("SSE")
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let body = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends at once")
        .expect("the call");
    assert!(body.contains("\"chunk_type\":\"error\""), "{body}");
    assert!(
        body.contains("MCP server `py` went away during `slow`"),
        "{body}"
    );
    // The next call is served by the restarted server (a new process).
    let reply = post(&client, &server, "add_flow", json!({"a": 1, "b": 1})).await;
    assert_eq!(reply["answer"], "2", "{reply}");
    let state = ops(&client, &server, "py").await;
    assert_ne!(state["pid"].as_u64(), Some(first), "{state}");
    assert!(state["restarts"].as_u64().unwrap_or(0) >= 1, "{state}");

    // A crash: its last words on stderr are in the error.
    let reply = post(&client, &server, "crash_flow", json!({})).await;
    assert_eq!(reply["success"], false, "{reply}");
    let error = reply["metadata"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("MCP server `py` went away during `crash`"),
        "{reply}"
    );
    // The stderr line is read by its own task: it may reach the log just after the call ended.
    assert!(
        server.logged("crashing on purpose", Duration::from_secs(10)),
        "stderr goes to the host's log: {}",
        server.log()
    );

    // An isError result is an error, with the tool's text.
    let reply = post(&client, &server, "fail_flow", json!({"why": "on purpose"})).await;
    assert_eq!(reply["success"], false, "{reply}");
    assert!(
        reply["metadata"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("failing as asked: on purpose"),
        "{reply}"
    );

    // A hang: the call times out (timeout=1); the server answers no ping, so its session is
    // ended and a new one opened; the next call is served.
    let reply = post(&client, &server, "hang_flow", json!({})).await;
    assert!(
        reply["metadata"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("MCP server `py` did not answer `hang` within 1s"),
        "{reply}"
    );
    let reply = post(&client, &server, "add_flow", json!({"a": 20, "b": 22})).await;
    assert_eq!(reply["answer"], "42", "{reply}");
    assert!(
        server.logged("does not answer a ping", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    // The other server was never disturbed.
    assert_eq!(ops(&client, &server, "everything").await["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_the_upstream_call() {
    let Some((everything, python)) = upstreams() else {
        return;
    };
    flowhost::llm::tls_init();
    let flows = folder(&[("up.yaml", FLOWS)]);
    let server = host(&flows, &config(&everything, &python), &[]);
    let client = reqwest::Client::new();
    let mut response = client
        .post(server.url("/slow_flow"))
        .json(&json!({"seconds": 30}))
        .send()
        .await
        .expect("POST");
    // The stream is open (its first bytes may be a keep-alive); the client goes away.
    let _ = tokio::time::timeout(Duration::from_millis(800), response.chunk()).await;
    drop(response);
    eventually("the server to see notifications/cancelled", || async {
        server.log().contains("slow was cancelled")
    })
    .await;
    // The session is untouched: the next call is served at once.
    let reply = post(&client, &server, "add_flow", json!({"a": 1, "b": 2})).await;
    assert_eq!(reply["answer"], "3", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_tool_makes_its_flow_stale_then_live_again() {
    let Some((everything, python)) = upstreams() else {
        return;
    };
    flowhost::llm::tls_init();
    let flows = folder(&[("up.yaml", FLOWS)]);
    let server = host(&flows, &config(&everything, &python), &[]);
    let client = reqwest::Client::new();
    assert_eq!(status(&client, &server, "add_flow").await.0, "live");
    let reply = post(&client, &server, "rename_flow", json!({})).await;
    assert_eq!(reply["answer"], "add is now plus", "{reply}");
    // The same spec no longer compiles: the flow stays served, `stale`, with the reason; its
    // calls reach the server, which refuses the tool by name.
    eventually("add_flow stale", || async {
        let (status, error) = status(&client, &server, "add_flow").await;
        status == "stale"
            && error.contains("MCP server `py` has no tool `add`;")
            && error.contains("the flow stays live")
    })
    .await;
    let reply = post(&client, &server, "add_flow", json!({"a": 1, "b": 2})).await;
    assert_eq!(reply["success"], false, "{reply}");
    // A flow file saved while the tool is gone is broken (nothing good to serve).
    std::fs::write(
        flows.path().join("more.yaml"),
        "plus_flow:\n  flow_content: McpOp(mcp_name=\"py\", tool_name=\"plus\")\nadd_again:\n  flow_content: McpOp(mcp_name=\"py\", tool_name=\"add\")\n",
    )
    .expect("write a flow file");
    eventually("plus_flow live, add_again broken", || async {
        status(&client, &server, "plus_flow").await.0 == "live"
            && status(&client, &server, "add_again").await.0 == "broken"
    })
    .await;
    assert_eq!(
        post(&client, &server, "plus_flow", json!({"a": 2, "b": 2})).await["answer"],
        "4"
    );
    post(&client, &server, "rename_flow", json!({})).await;
    eventually("add_flow and add_again live again", || async {
        status(&client, &server, "add_flow").await.0 == "live"
            && status(&client, &server, "add_again").await.0 == "live"
    })
    .await;
    assert_eq!(
        post(&client, &server, "add_flow", json!({"a": 1, "b": 2})).await["answer"],
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_sampling_request_is_answered_by_the_hosts_llm() {
    let Some((everything, python)) = upstreams() else {
        return;
    };
    flowhost::llm::tls_init();
    let flows = folder(&[("up.yaml", FLOWS)]);
    let llm = Scripted::start(vec![vec![json!({"content": "forty-two"})]]).await;
    let server = host(
        &flows,
        &config(&everything, &python),
        &[("FLOW_LLM_BASE_URL", &llm.url), ("FLOW_LLM_API_KEY", "k")],
    );
    let client = reqwest::Client::new();
    // Over HTTP there is no client to ask: the host's LLM answers.
    let reply = post(
        &client,
        &server,
        "ask_flow",
        json!({"question": "the answer?"}),
    )
    .await;
    assert_eq!(reply["answer"], "the model said: forty-two", "{reply}");
    assert_eq!(
        llm.bodies()[0]["messages"],
        json!([{"role": "user", "content": "the answer?"}])
    );
}

/// `flowhost serve --transport stdio` on `flows` with `config`, for an MCP client.
fn stdio_host(flows: &tempfile::TempDir, config: &str) -> TokioChildProcess {
    let cfg = flows.path().join("host-config.cfg");
    std::fs::write(&cfg, config).expect("config");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhost"));
    command
        .args(["serve", "--transport", "stdio", "--config"])
        .arg(&cfg)
        .arg("--flows")
        .arg(flows.path())
        .env("NO_COLOR", "1");
    let (transport, _stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn flowhost");
    transport
}

/// A `tools/call` of `name` with `arguments`.
fn tool_call(name: &'static str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name).with_arguments(arguments.as_object().cloned().expect("args"))
}

/// A tool result's content blocks as JSON text.
fn content_text(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(&result.content)
        .expect("content")
        .to_string()
}

/// An MCP client that answers sampling requests itself (saying what it was asked).
#[derive(Clone)]
struct Sampler;

#[allow(deprecated)] // sampling: deprecated by SEP-2577, part of the 2025 revisions
impl rmcp::ClientHandler for Sampler {
    fn get_info(&self) -> rmcp::model::ClientInfo {
        let capabilities = serde_json::from_value(json!({"sampling": {}})).expect("capabilities");
        rmcp::model::ClientInfo::new(
            capabilities,
            rmcp::model::Implementation::new("sampler", "1"),
        )
    }

    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<rmcp::service::RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::model::ErrorData> {
        let asked = serde_json::to_value(&params).expect("params");
        let question = asked["messages"][0]["content"]["text"]
            .as_str()
            .unwrap_or_default();
        let answer = json!({
            "role": "assistant",
            "content": {"type": "text", "text": format!("the client read `{question}`")},
            "model": "sampler",
        });
        serde_json::from_value(answer)
            .map_err(|err| rmcp::model::ErrorData::internal_error(err.to_string(), None))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_sampling_request_goes_to_flowhosts_own_mcp_client() {
    let Some((everything, python)) = upstreams() else {
        return;
    };
    let flows = folder(&[("up.yaml", FLOWS)]);
    let transport = stdio_host(&flows, &config(&everything, &python));
    let client = Sampler.serve(transport).await.expect("initialize");
    let result = client
        .call_tool(tool_call("ask_flow", json!({"question": "two plus two?"})))
        .await
        .expect("tools/call");
    let text = content_text(&result);
    // py asked flowhost, flowhost asked this client, the answer went back up the chain.
    assert!(
        text.contains("the model said: the client read `two plus two?`"),
        "{text}"
    );
    client.cancel().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposed_tools_are_listed_and_called_over_flowhosts_mcp() {
    let Some((everything, python)) = upstreams() else {
        return;
    };
    flowhost::llm::tls_init();
    let flows = folder(&[(
        "up.yaml",
        "echo_flow:\n  flow_content: McpOp(mcp_name=\"everything\", tool_name=\"echo\")\n",
    )]);
    let transport = stdio_host(&flows, &config(&everything, &python));
    let client = ().serve(transport).await.expect("initialize");
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(names.contains(&"everything__echo"), "{names:?}");
    assert!(names.contains(&"everything__get-sum"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("everything__get-env")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("py__")),
        "py is not exposed: {names:?}"
    );
    let sum = tools
        .iter()
        .find(|t| t.name == "everything__get-sum")
        .expect("listed");
    assert_eq!(sum.input_schema["properties"]["a"]["type"], "number");
    let result = client
        .call_tool(tool_call("everything__get-sum", json!({"a": 1, "b": 2})))
        .await
        .expect("tools/call");
    let text = content_text(&result);
    assert!(text.contains("The sum of 1 and 2 is 3."), "{text}");
    client.cancel().await.expect("close");
}
