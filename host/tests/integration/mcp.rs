//! MCP over stdio: the real binary, driven by an independent client (rmcp's) and by raw
//! JSON-RPC lines for what a well-behaved client never sends.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientRequest, ProgressNotificationParam,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::util::*;

const FLOWS: &str = r#"
echo:
  flow_content: EchoOp()
  description: "echo the query"
  input_schema:
    query: {type: string, required: true}
count:
  flow_content: CountOp(n=25)
  stream: true
ticks:
  flow_content: TickOp(n=100000, interval_ms=20)
  stream: true
slow:
  flow_content: TickOp(n=2, interval_ms=1500)
  stream: true
fail:
  flow_content: FailOp(message="no luck")
"#;

#[derive(Clone, Default)]
struct Collector {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    list_changed: Arc<AtomicUsize>,
}

impl ClientHandler for Collector {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().expect("lock").push(params);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.fetch_add(1, Ordering::SeqCst);
    }
}

type Client = RunningService<RoleClient, Collector>;

/// Spawns `flowhost serve --transport stdio` and connects rmcp's client; stderr lines are
/// collected.
async fn connect(flows: &std::path::Path) -> (Client, Collector, Arc<Mutex<Vec<String>>>) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhost"));
    command
        .args(["serve", "--transport", "stdio", "--flows"])
        .arg(flows)
        .env("NO_COLOR", "1");
    let (transport, stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowhost");
    let lines = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = stderr {
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().expect("lock").push(line);
            }
        });
    }
    let collector = Collector::default();
    let client = collector
        .clone()
        .serve(transport)
        .await
        .expect("initialize");
    (client, collector, lines)
}

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_string())
        .with_arguments(arguments.as_object().cloned().expect("an object"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_call_and_progress_in_order() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let (client, collector, _) = connect(flows.path()).await;
    let info = client.peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().unwrap().name, "flowhost");
    assert!(info.capabilities.tools.as_ref().unwrap().list_changed == Some(true));

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for name in ["echo", "count", "ticks", "slow", "fail"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let echo = tools.iter().find(|t| t.name == "echo").unwrap();
    assert_eq!(echo.input_schema["required"], json!(["query"]));

    let result = client
        .call_tool(call("echo", json!({"query": "hi"})))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false));
    assert_eq!(result.content[0].as_text().unwrap().text, "hi");
    assert_eq!(result.structured_content.as_ref().unwrap()["answer"], "hi");

    // The echo call's one progress notification lands on a task of its own: wait for it
    // before counting the next call's.
    let started = Instant::now();
    while collector.progress.lock().unwrap().is_empty()
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        collector.progress.lock().unwrap().len(),
        1,
        "the echo's progress"
    );
    collector.progress.lock().unwrap().clear();
    let result = client.call_tool(call("count", json!({}))).await.unwrap();
    assert_eq!(
        result.content[0].as_text().unwrap().text,
        "hello ".repeat(25)
    );
    // The client handles notifications on tasks of their own: let them land.
    let started = Instant::now();
    while collector.progress.lock().unwrap().len() < 25
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let progress = collector.progress.lock().unwrap().clone();
    assert_eq!(progress.len(), 25, "one progress notification per chunk");
    assert!(progress
        .iter()
        .all(|p| p.progress_token == progress[0].progress_token));
    // rmcp's client handles each notification on a task of its own, so arrival order here is
    // not wire order; the raw-stdio test below checks the order on the wire.
    let mut values: Vec<f64> = progress.iter().map(|p| p.progress).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, (1..=25).map(f64::from).collect::<Vec<_>>());
    assert!(progress
        .iter()
        .all(|p| p.message.as_deref() == Some("hello ")));

    let failed = client.call_tool(call("fail", json!({}))).await.unwrap();
    assert_eq!(failed.is_error, Some(true));
    assert_eq!(
        failed.content[0].as_text().unwrap().text,
        "FailOp failed: no luck"
    );

    let invalid = client
        .call_tool(call("echo", json!({"query": 3})))
        .await
        .unwrap();
    assert_eq!(invalid.is_error, Some(true));
    assert!(invalid.content[0]
        .as_text()
        .unwrap()
        .text
        .contains("query: 3 is not of type \"string\""));

    let unknown = client.call_tool(call("nope", json!({}))).await;
    assert!(unknown.is_err(), "unknown tool is a protocol error");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_flow_file_announces_the_new_tool_list() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let (client, collector, _) = connect(flows.path()).await;
    assert_eq!(client.list_all_tools().await.unwrap().len(), 5);
    std::fs::write(
        flows.path().join("more.yaml"),
        "added_tool:\n  flow_content: EchoOp()\n  description: new\n",
    )
    .unwrap();
    let started = Instant::now();
    while collector.list_changed.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no tools/list_changed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tools = client.list_all_tools().await.unwrap();
    assert!(
        tools.iter().any(|t| t.name == "added_tool"),
        "new list has the new flow"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_stops_its_op_and_others_go_on() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let (client, collector, stderr) = connect(flows.path()).await;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(call("ticks", json!({}))));
    let handle = client
        .peer()
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    let started = Instant::now();
    while collector.progress.lock().unwrap().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no progress from the running call"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A slow call does not block other calls on the same connection.
    let echo = client
        .call_tool(call("echo", json!({"query": "meanwhile"})))
        .await
        .unwrap();
    assert_eq!(echo.content[0].as_text().unwrap().text, "meanwhile");

    handle.cancel(Some("test".into())).await.unwrap();
    let started = Instant::now();
    let stopped = loop {
        if let Some(line) = stderr
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("ops stopped in"))
            .cloned()
        {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no report of the op stopping: {:?}",
            stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("{stopped}");
    // The op ticks every 20 ms: two seconds later a running op would have sent ~100 more; a
    // stopped one sends none (some already on their way may still land).
    let count = collector.progress.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = collector.progress.lock().unwrap().len();
    assert!(
        after < count + 40,
        "progress after cancel: {count} -> {after}"
    );
    client.cancel().await.unwrap();
}

/// Raw JSON-RPC lines over the binary's stdin/stdout.
struct Raw {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Where the server's stderr (its log) goes.
    log: tempfile::NamedTempFile,
}

impl Raw {
    fn spawn(flows: &std::path::Path) -> Raw {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
            .args(["serve", "--transport", "stdio", "--flows"])
            .arg(flows)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.reopen().expect("log file")))
            .kill_on_drop(true)
            .spawn()
            .expect("raw stdio");
        let stdin = child.stdin.take().expect("raw stdio");
        let stdout = BufReader::new(child.stdout.take().expect("raw stdio")).lines();
        Raw {
            child,
            stdin,
            stdout,
            log,
        }
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("raw stdio");
        self.stdin.write_all(b"\n").await.expect("raw stdio");
        self.stdin.flush().await.expect("raw stdio");
    }

    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .expect("a reply within 10 s")
            .expect("raw stdio")
            .expect("stdout open");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
    }

    async fn initialize(&mut self) {
        self.send(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#).await;
        assert_eq!(self.recv().await["result"]["protocolVersion"], "2025-11-25");
        self.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_huge_lines_get_errors_and_reading_goes_on() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let mut raw = Raw::spawn(flows.path());
    raw.initialize().await;

    raw.send("this is not json {").await;
    let reply = raw.recv().await;
    assert_eq!(reply["error"]["code"], -32700, "{reply}");
    assert_eq!(reply["id"], Value::Null);

    raw.send(r#"{"jsonrpc":"2.0","id":41,"params":{}}"#).await;
    let reply = raw.recv().await;
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert_eq!(reply["id"], 41);

    raw.send(r#"[{"jsonrpc":"2.0","id":42,"method":"ping"}]"#)
        .await;
    assert_eq!(raw.recv().await["error"]["code"], -32600);

    raw.send(r#"{"jsonrpc":"2.0","id":45,"method":"no/such"}"#)
        .await;
    let reply = raw.recv().await;
    assert_eq!(reply["error"]["code"], -32601, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("method not found: no/such"),
        "{reply}"
    );
    raw.send(r#"{"jsonrpc":"2.0","id":46,"method":"tools/call","params":{"name":"nope"}}"#)
        .await;
    assert_eq!(raw.recv().await["error"]["code"], -32602);

    // 17 MiB on one line: over the 16 MiB limit.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":43,"method":"tools/call","params":{{"name":"echo","arguments":{{"query":"{}"}}}}}}"#,
        "x".repeat(17 << 20)
    );
    raw.send(&huge).await;
    let reply = raw.recv().await;
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over the limit"),
        "{reply}"
    );

    raw.send(r#"{"jsonrpc":"2.0","id":44,"method":"tools/call","params":{"name":"echo","arguments":{"query":"still here"}}}"#).await;
    let reply = raw.recv().await;
    assert_eq!(reply["id"], 44);
    assert_eq!(reply["result"]["content"][0]["text"], "still here");

    // End of input ends the server.
    drop(raw.stdin);
    let status = tokio::time::timeout(Duration::from_secs(5), raw.child.wait())
        .await
        .expect("exit on EOF")
        .unwrap();
    assert!(status.success());
    // The log says what happened in words, never as Rust `Debug` dumps.
    let log = std::fs::read_to_string(raw.log.path()).unwrap();
    assert!(
        log.contains("MCP session ended: the client closed stdin"),
        "{log}"
    );
    for dump in ["ErrorData {", "Ok(", "Some(", "ErrorCode("] {
        assert!(!log.contains(dump), "{dump} in the log:\n{log}");
    }
}

/// stdin may be a socket (Node's `child_process` hands one over), whose buffer holds more than
/// one 64 KiB read: a message longer than that, sent at once, is read whole, not left waiting.
#[test]
fn a_long_message_on_a_socket_stdin_is_read_whole() {
    use std::io::{BufRead, Write};
    let flows = folder(&[("f.yaml", FLOWS)]);
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args(["serve", "--transport", "stdio", "--log", "error", "--flows"])
        .arg(flows.path())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // A host that waits for what it already has would hang this test: killed after 60 s.
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let pid = child.id() as libc::pid_t;
    std::thread::spawn(move || {
        if watch.recv_timeout(Duration::from_secs(60))
            == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            // SAFETY: kill(2) on the child this test started and still owns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    ours.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    let mut ask = |ours: &mut std::os::unix::net::UnixStream, message: String| {
        ours.write_all(format!("{message}\n").as_bytes()).unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:.200}", line))
    };
    ask(&mut ours, r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#.to_string());
    ours.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .unwrap();
    for size in [10, 150_000, 10, 400_000] {
        let query = "x".repeat(size);
        let reply = ask(
            &mut ours,
            format!(
                r#"{{"jsonrpc":"2.0","id":{size},"method":"tools/call","params":{{"name":"echo","arguments":{{"query":"{query}"}}}}}}"#
            ),
        );
        assert_eq!(reply["id"], size);
        assert_eq!(
            reply["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .len(),
            size
        );
    }
    drop(ours);
    assert!(child.wait().unwrap().success());
    drop(done);
}

/// The host reads stdin ahead for a moment after each answer (`lines.rs`, `ReadAhead`): what
/// arrives then, whole, in pieces, several messages at once, or the end of input, reaches the
/// server in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_an_answer_arrive_whole_and_in_order() {
    use tokio::io::AsyncWriteExt;
    let flows = folder(&[("f.yaml", FLOWS)]);
    let mut raw = Raw::spawn(flows.path());
    raw.initialize().await;
    let call = |id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"query":"q{id}"}}}}}}"#
        )
    };
    for id in 1..=200u32 {
        let line = call(id);
        if id % 3 == 0 {
            // In three pieces, the last ones after the read-ahead's window.
            let (a, rest) = line.split_at(10);
            let (b, c) = rest.split_at(rest.len() / 2);
            for piece in [a, b] {
                raw.stdin.write_all(piece.as_bytes()).await.unwrap();
                raw.stdin.flush().await.unwrap();
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            raw.send(c).await;
        } else {
            raw.send(&line).await;
        }
        let reply = raw.recv().await;
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["result"]["content"][0]["text"], format!("q{id}"));
    }
    // Three messages in one write, a malformed one in the middle: three answers (the reader
    // answers the malformed line itself, so not necessarily in that order).
    let batch = format!("{}\n{{oops\n{}\n", call(301), call(302));
    raw.stdin.write_all(batch.as_bytes()).await.unwrap();
    raw.stdin.flush().await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let reply = raw.recv().await;
        answers.push(match reply["id"].as_u64() {
            Some(id) => {
                assert_eq!(reply["result"]["content"][0]["text"], format!("q{id}"));
                id.to_string()
            }
            None => reply["error"]["code"].to_string(),
        });
    }
    answers.sort();
    assert_eq!(answers, ["-32700", "301", "302"]);
    // A last call and the end of input together: answered, then the server ends.
    raw.send(&call(400)).await;
    drop(raw.stdin);
    let line = tokio::time::timeout(Duration::from_secs(10), raw.stdout.next_line())
        .await
        .expect("a reply within 10 s")
        .unwrap()
        .expect("the answer before the end");
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["id"], 400);
    let status = tokio::time::timeout(Duration::from_secs(5), raw.child.wait())
        .await
        .expect("exit on EOF")
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_malformed_body_and_an_unknown_method_get_json_rpc_errors() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let http = client();
    let post = |body: &'static str, session: Option<String>| {
        let mut request = http
            .post(server.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(id) = session {
            request = request.header("mcp-session-id", id);
        }
        request.send()
    };
    for (body, code) in [
        ("garbage", -32700),
        ("[1", -32700),
        (r#"{"hello": 1}"#, -32600),
    ] {
        let response = post(body, None).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["jsonrpc"], "2.0");
        assert_eq!(reply["id"], Value::Null);
        assert_eq!(reply["error"]["code"], code, "{body}: {reply}");
    }
    // Another media type is rmcp's own 415, kept as it is.
    let other = http
        .post(server.url("/mcp"))
        .header("content-type", "application/json-patch+json")
        .header("accept", "application/json, text/event-stream")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 415);
    // JSON that is not JSON-RPC keeps its id in the error.
    let response = post(r#"{"id": 7, "hello": 1}"#, None).await.unwrap();
    let reply: Value = response.json().await.unwrap();
    assert_eq!(
        (reply["id"].clone(), reply["error"]["code"].clone()),
        (json!(7), json!(-32600))
    );
    let response = post(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#,
        None,
    )
    .await
    .unwrap();
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    post(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        Some(session.clone()),
    )
    .await
    .unwrap();
    let text = post(
        r#"{"jsonrpc":"2.0","id":2,"method":"no/such"}"#,
        Some(session),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        text.contains(r#""code":-32601,"message":"method not found: no/such"#),
        "{text}"
    );
    let log = server.log();
    assert!(!log.contains("ErrorData {"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_2026_07_28_discover_and_call() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let mut raw = Raw::spawn(flows.path());
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    raw.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}})
            .to_string(),
    )
    .await;
    let reply = raw.recv().await;
    let versions = reply["result"]["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"));
    assert!(
        versions.contains(&json!("2026-07-28")) && versions.contains(&json!("2025-11-25")),
        "{reply}"
    );

    raw.send(
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta}})
            .to_string(),
    )
    .await;
    let reply = raw.recv().await;
    assert!(
        reply["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "echo"),
        "{reply}"
    );

    let mut call_meta = meta.clone();
    call_meta["progressToken"] = json!("p");
    raw.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "count", "arguments": {}, "_meta": call_meta}}).to_string()).await;
    let mut progress = 0;
    loop {
        let message = raw.recv().await;
        if message["method"] == "notifications/progress" {
            progress += 1;
            assert_eq!(
                message["params"]["progress"], progress as f64,
                "progress in wire order"
            );
            assert_eq!(message["params"]["progressToken"], "p");
            continue;
        }
        assert_eq!(message["id"], 3, "{message}");
        assert_eq!(message["result"]["content"][0]["text"], "hello ".repeat(25));
        break;
    }
    assert_eq!(progress, 25);
}

/// An op that prints to stdout (Rust's `println!` and C's `printf`) must not corrupt the
/// protocol stream: the prints land on stderr and the client's session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_printing_to_stdout_does_not_corrupt_the_protocol() {
    let flows = folder(&[(
        "f.yaml",
        "printer:\n  flow_content: PrintOp()\necho:\n  flow_content: EchoOp()\n",
    )]);
    let plugins = plugin_folder(&[(&fixture("op_unruly"), &so("op_unruly"))]);
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhost"));
    command
        .args(["serve", "--transport", "stdio", "--flows"])
        .arg(flows.path())
        .arg("--plugins")
        .arg(plugins.path())
        .env("NO_COLOR", "1");
    let (transport, stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowhost");
    let client = ().serve(transport).await.expect("initialize");
    for _ in 0..3 {
        let result = client
            .call_tool(call("printer", json!({})))
            .await
            .expect("the session survives the prints");
        assert_eq!(result.is_error, Some(false), "{result:?}");
        let echoed = client
            .call_tool(call("echo", json!({"query": "still here"})))
            .await
            .expect("echo after the prints");
        assert_eq!(
            echoed.structured_content.expect("structured")["answer"],
            "still here"
        );
    }
    client.cancel().await.expect("close");
    let mut log = String::new();
    let mut reader = BufReader::new(stderr.expect("stderr")).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(log.contains("stray println from PrintOp"), "{log}");
    assert!(log.contains("stray printf from PrintOp"), "{log}");
}

/// A call to a flow at its limit with a full line is a tool error the model can read (busy),
/// not a protocol error; the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_flow_is_a_tool_error() {
    let flows = folder(&[(
        "f.yaml",
        "gated:\n  flow_content: TickOp(n=100000, interval_ms=20)\n  stream: true\n  limits: {max_concurrency: 1, max_queue: 0}\necho:\n  flow_content: EchoOp()\n",
    )]);
    let (client, collector, _) = connect(flows.path()).await;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(call("gated", json!({}))));
    let handle = client
        .peer()
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    let started = Instant::now();
    while collector.progress.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the first call never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = client.call_tool(call("gated", json!({}))).await.unwrap();
    assert_eq!(busy.is_error, Some(true));
    let text = &busy.content[0].as_text().unwrap().text;
    assert!(text.contains("flow `gated` is busy"), "{text}");
    let echo = client
        .call_tool(call("echo", json!({"query": "unaffected"})))
        .await
        .unwrap();
    assert_eq!(echo.content[0].as_text().unwrap().text, "unaffected");
    handle.cancel(Some("done".into())).await.unwrap();
    client.cancel().await.unwrap();
}

/// Stdin that is a file (a recorded session): read by the blocking reader, every line
/// answered in order, a malformed one included, and the server ends at the end of the file.
#[test]
fn a_session_recorded_in_a_file_is_answered_whole() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let session = folder(&[(
        "session.jsonl",
        concat!(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"file","version":"1"}}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "\nnot json\n",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"query":"from a file"}}}"#,
        ),
    )]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args(["serve", "--transport", "stdio", "--no-watch", "--flows"])
        .arg(flows.path())
        .stdin(std::fs::File::open(session.path().join("session.jsonl")).unwrap())
        .stderr(Stdio::null())
        .output()
        .expect("run flowhost");
    assert!(output.status.success());
    let replies: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    let parse_error = replies
        .iter()
        .find(|r| r["error"]["code"] == -32700)
        .expect("a parse error");
    assert!(parse_error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("line 3"));
    let call = replies
        .iter()
        .find(|r| r["id"] == 1)
        .expect("the call's reply");
    assert_eq!(call["result"]["content"][0]["text"], "from a file");
}
