//! Traces: the real binary exporting OTLP/HTTP to a receiver run by the test, which decodes
//! each export with the official `opentelemetry-proto` definitions. The span trees of a stream
//! flow, a non-stream flow, an agent flow (against the scripted upstream, which records the
//! `traceparent` it receives), an isolated op with a span of its own, an async run and an MCP
//! call with `_meta.traceparent`; a sampler that is off sends nothing; a receiver that hangs
//! slows no run and its drops are counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::{json, Value};

use crate::agents::{two_tools_then_answer, Scripted};
use crate::util::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// One exported span, as the receiver decoded it.
#[derive(Clone, Debug)]
struct Got {
    name: String,
    trace: String,
    id: String,
    parent: String,
    /// OTLP's SpanKind: 1 internal, 2 server, 3 client.
    kind: i32,
    attributes: HashMap<String, String>,
    /// How many attributes the span carried (more than `attributes` holds: a key sent twice).
    attribute_count: usize,
    /// 2: error.
    status: i32,
    message: String,
    events: Vec<String>,
    service: String,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// An OTLP/HTTP receiver on loopback; `hang` makes it never answer.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
    hang: Arc<AtomicBool>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[derive(Clone)]
struct Shared {
    spans: Arc<Mutex<Vec<Got>>>,
    hang: Arc<AtomicBool>,
}

/// `POST /v1/traces`: decodes the export and keeps its spans.
async fn receive(
    axum::extract::State(shared): axum::extract::State<Shared>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> &'static str {
    if shared.hang.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    assert_eq!(
        headers["content-type"], "application/x-protobuf",
        "OTLP/HTTP protobuf"
    );
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
    let mut got = shared.spans.lock().expect("spans");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            got.push(Got {
                name: span.name,
                trace: hex(&span.trace_id),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                kind: span.kind,
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                    .collect(),
                attribute_count: span.attributes.len(),
                status: span.status.as_ref().map_or(0, |s| s.code),
                message: span
                    .status
                    .as_ref()
                    .map(|s| s.message.clone())
                    .unwrap_or_default(),
                events: span.events.iter().map(|e| e.name.clone()).collect(),
                service: service.clone(),
            });
        }
    }
    "{}"
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let state = Shared {
            spans: spans.clone(),
            hang: hang.clone(),
        };
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            // A receiver that moved: the exporter follows, as the OTLP spec's clients do.
            .route(
                "/moved/v1/traces",
                axum::routing::post(|| async { axum::response::Redirect::permanent("/v1/traces") }),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the receiver");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, spans, hang }
    }

    /// The variables that send a host's traces here, sent every 100 ms.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.url.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ]
    }

    /// Waits until a span named `name` arrived (or 15 s), then returns every span so far.
    async fn wait_for(&self, name: &str) -> Vec<Got> {
        let found = wait_async(Duration::from_secs(15), || async {
            self.spans
                .lock()
                .expect("spans")
                .iter()
                .any(|s| s.name == name)
        })
        .await;
        let spans = self.spans.lock().expect("spans").clone();
        assert!(
            found.is_some(),
            "no span `{name}` arrived; got {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        spans
    }
}

fn host(flows: &std::path::Path, receiver: &Receiver, extra: &[(&str, &str)]) -> Server {
    let env = receiver.env();
    let mut envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envs.extend_from_slice(extra);
    Server::start_with_env(flows, &[], &envs)
}

/// `POST path` with a JSON body, inside the caller's trace (`TRACE`, `PARENT`) when `traced`,
/// its `tracestate` in two headers (one list, W3C says: the host joins them).
async fn post(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: Value,
    traced: bool,
) -> reqwest::Response {
    let mut request = client.post(server.url(path)).json(&body);
    if traced {
        request = request
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .header("tracestate", "caller=1")
            .header("tracestate", "proxy=2");
    }
    request.send().await.expect("POST")
}

fn parent_of<'a>(spans: &'a [Got], span: &Got) -> &'a Got {
    spans
        .iter()
        .find(|s| s.id == span.parent)
        .expect("a parent span")
}

fn one<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` in {spans:#?}");
    found[0]
}

/// The spans as an indented tree with their durations' order (for failure messages, and
/// README's picture of an agent run: `cargo test traces -- --nocapture`).
fn tree(spans: &[Got]) -> String {
    fn walk(spans: &[Got], parent: &str, depth: usize, out: &mut String) {
        for span in spans.iter().filter(|s| s.parent == parent) {
            let mut notes: Vec<String> = [
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.output_tokens",
                "flowhost.op.placement",
                "gen_ai.tool.name",
                "http.response.status_code",
            ]
            .iter()
            .filter_map(|k| span.attributes.get(*k).map(|v| format!("{k}={v}")))
            .collect();
            notes.extend(span.events.iter().map(|e| format!("event {e}")));
            out.push_str(&format!(
                "{}{}  {}\n",
                "  ".repeat(depth),
                span.name,
                notes.join(" ")
            ));
            walk(spans, &span.id, depth + 1, out);
        }
    }
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let mut out = String::new();
    let roots: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| !ids.contains(s.parent.as_str()))
        .map(|s| s.parent.as_str())
        .collect();
    for root in roots {
        walk(spans, root, 0, &mut out);
    }
    out
}

fn children<'a>(spans: &'a [Got], parent: &Got) -> Vec<&'a str> {
    let mut names: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent == parent.id)
        .map(|s| s.name.as_str())
        .collect();
    names.sort_unstable();
    names
}

const FLOWS: &str = r#"
serial_stream:
  flow_content: GenSystemPromptOp(template="be brief") >> CountOp(n=3, text="hi ")
  stream: true
echo_json:
  flow_content: EchoOp()
failing:
  flow_content: FailOp(message="disk on fire")
isolated_count:
  flow_content: CountOp(n=2)
  isolation: process
nested:
  flow_content: FlowOp(flow="echo_json")
slow_stream:
  flow_content: TickOp(n=50, interval_ms=100)
  stream: true
  limits: {total_timeout: 0.3}
agent:
  flow_content: 'ReactAgentOp(max_steps=3) << {"echo": EchoOp(), "count": CountOp(text="x")}'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_runs_are_span_trees_under_the_callers_trace() {
    let receiver = Receiver::start().await;
    let flows = folder(&[("flows.yaml", FLOWS)]);
    let server = host(
        flows.path(),
        &receiver,
        &[("OTEL_SERVICE_NAME", "flowhost-test")],
    );
    let client = client();
    // A stream flow, called inside the caller's trace.
    let text = post(
        &client,
        &server,
        "/serial_stream",
        json!({"query": "q"}),
        true,
    )
    .await
    .text()
    .await
    .expect("SSE");
    assert!(text.contains("hi "), "{text}");
    let spans = receiver.wait_for("POST /{flow}").await;
    let server_span = one(&spans, "POST /{flow}");
    assert_eq!(server_span.trace, TRACE, "the caller's trace is kept");
    assert_eq!(server_span.parent, PARENT);
    assert_eq!(server_span.kind, 2, "a server span");
    assert_eq!(server_span.service, "flowhost-test");
    assert_eq!(server_span.attr("http.request.method"), "POST");
    assert_eq!(server_span.attr("http.route"), "/{flow}");
    assert_eq!(server_span.attr("url.scheme"), "http");
    assert_eq!(server_span.attr("network.protocol.version"), "1.1");
    assert_eq!(server_span.attr("url.path"), "/serial_stream");
    assert_eq!(server_span.attr("http.response.status_code"), "200");
    assert_eq!(children(&spans, server_span), ["run serial_stream"]);
    let run = one(&spans, "run serial_stream");
    assert_eq!(run.attr("flowhost.flow"), "serial_stream");
    assert_eq!(run.attr("flowhost.run.outcome"), "ok");
    assert_eq!(run.attr("flowhost.run.chunks"), "3");
    assert_eq!(run.attr("flowhost.run.id").len(), 26);
    assert_eq!(
        children(&spans, run),
        ["op CountOp", "op GenSystemPromptOp"]
    );
    let count = one(&spans, "op CountOp");
    assert_eq!(count.attr("flowhost.op.plugin"), "op-basic");
    assert_eq!(count.attr("flowhost.op.name"), "CountOp");
    assert!(!count.attr("flowhost.op.plugin_version").is_empty());
    assert!(
        spans
            .iter()
            .all(|s| s.attribute_count == s.attributes.len()),
        "no attribute key sent twice: {spans:?}"
    );
    assert_eq!(count.attr("flowhost.op.attempts"), "1");
    assert!(
        ["inline", "pool"].contains(&count.attr("flowhost.op.placement")),
        "{count:?}"
    );
    // CountOp's own span (ctx.span), under its op span.
    assert_eq!(children(&spans, count), ["emit chunks"]);
    let own = one(&spans, "emit chunks");
    assert_eq!(own.attr("count.requested"), "3");
    assert_eq!(own.attr("count.sent"), "3");
    // The request's log lines carry the trace.
    assert!(
        server.log().contains(&format!("trace_id={TRACE}")),
        "{}",
        server.log()
    );

    // A JSON flow with no caller trace: a new one; a FlowOp nests the flow it runs.
    receiver.spans.lock().expect("spans").clear();
    let answer: Value = post(&client, &server, "/nested", json!({"query": "ping"}), false)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["answer"], "ping");
    let spans = receiver.wait_for("POST /{flow}").await;
    let server_span = one(&spans, "POST /{flow}");
    assert_ne!(server_span.trace, TRACE);
    assert_eq!(server_span.parent, "", "a root span");
    let run = one(&spans, "run nested");
    assert_eq!(run.parent, server_span.id);
    let flow_op = one(&spans, "FlowOp echo_json");
    assert_eq!(flow_op.parent, run.id);
    assert_eq!(children(&spans, flow_op), ["op EchoOp"]);
    assert!(spans.iter().all(|s| s.trace == server_span.trace));

    // A failing flow: the run and the op carry the error.
    receiver.spans.lock().expect("spans").clear();
    let _ = post(&client, &server, "/failing", json!({}), false).await;
    let spans = receiver.wait_for("run failing").await;
    let run = one(&spans, "run failing");
    assert_eq!(run.status, 2, "{run:?}");
    assert!(run.message.contains("disk on fire"), "{run:?}");
    assert_eq!(run.attr("flowhost.run.outcome"), "error");
    let op = one(&spans, "op FailOp");
    assert_eq!(op.status, 2);

    // A stream stopped by its time limit: the run span says so.
    receiver.spans.lock().expect("spans").clear();
    let text = post(&client, &server, "/slow_stream", json!({}), false)
        .await
        .text()
        .await
        .expect("SSE");
    assert!(text.contains("total_timeout"), "{text}");
    let spans = receiver.wait_for("run slow_stream").await;
    let run = one(&spans, "run slow_stream");
    assert_eq!(run.status, 2, "{run:?}");
    assert!(run.message.contains("total_timeout"), "{run:?}");
    assert_eq!(run.attr("flowhost.run.outcome"), "error");
    // What a stream logs while it is read carries its request's trace (the time limit's
    // warning comes from the body's poll, after the handler returned).
    let warned = wait_for(Duration::from_secs(5), || {
        server.log().contains("flow slow_stream timed out")
    });
    let log = server.log();
    assert!(warned.is_some(), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("flow slow_stream timed out"))
        .unwrap_or_default();
    assert!(line.contains(&format!("trace_id={}", run.trace)), "{line}");

    // An async run: its run span is in the trace of the POST that started it.
    receiver.spans.lock().expect("spans").clear();
    let accepted = client
        .post(server.url("/echo_json"))
        .header("prefer", "respond-async")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"query": "later"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(accepted.status(), 202);
    let spans = receiver.wait_for("run echo_json").await;
    let post = one(&spans, "POST /{flow}");
    let run = one(&spans, "run echo_json");
    assert_eq!(run.trace, TRACE);
    assert_eq!(run.parent, post.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_run_traces_its_llm_calls_and_tool_calls_and_the_upstream_gets_the_context() {
    let receiver = Receiver::start().await;
    let upstream = Scripted::start(two_tools_then_answer()).await;
    let flows = folder(&[("flows.yaml", FLOWS)]);
    let server = Server::start_with_env(
        flows.path(),
        &["telemetry.conventions=langfuse"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("FLOW_LLM_BASE_URL", &upstream.url),
            ("FLOW_LLM_API_KEY", "k"),
            ("FLOW_LLM_MODEL", "gpt-4o-mini"),
        ],
    );
    let answer: Value = post(
        &client(),
        &server,
        "/agent",
        json!({"query": "use the tools"}),
        true,
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(
        answer["answer"], "Echo said ping; count said xxx.",
        "{answer}"
    );
    let spans = receiver.wait_for("POST /{flow}").await;
    eprintln!("{}", tree(&spans));
    let agent = one(&spans, "op ReactAgentOp");
    // Langfuse's trace name on the run (set as the run's span starts).
    let run = parent_of(&spans, agent);
    assert!(run.name.starts_with("run ") && !run.attr("flowhost.flow").is_empty());
    assert_eq!(run.attr("langfuse.trace.name"), run.attr("flowhost.flow"));
    let mut under_agent = children(&spans, agent);
    under_agent.dedup();
    assert_eq!(
        under_agent,
        [
            "chat gpt-4o-mini",
            "execute_tool count",
            "execute_tool echo"
        ],
        "{spans:#?}"
    );
    let chats: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    assert_eq!(chats.len(), 2);
    for chat in &chats {
        assert_eq!(chat.kind, 3, "a client span");
        assert_eq!(chat.attr("gen_ai.operation.name"), "chat");
        assert_eq!(chat.attr("gen_ai.request.model"), "gpt-4o-mini");
        assert_eq!(chat.attr("gen_ai.usage.input_tokens"), "10");
        assert_eq!(chat.attr("gen_ai.usage.output_tokens"), "5");
        assert!(chat.events.contains(&"gen_ai.first_token".to_string()));
        // telemetry.conventions=langfuse adds Langfuse's names.
        assert_eq!(chat.attr("langfuse.observation.type"), "generation");
        assert_eq!(chat.trace, TRACE);
    }
    // The upstream received each chat span's own context.
    let sent = upstream.traceparents.lock().expect("headers").clone();
    let mut expected: Vec<String> = chats
        .iter()
        .map(|c| format!("00-{}-{}-01", c.trace, c.id))
        .collect();
    let mut sent: Vec<String> = sent
        .into_iter()
        .map(|t| t.expect("a traceparent"))
        .collect();
    expected.sort();
    sent.sort();
    assert_eq!(sent, expected);
    // And the caller's `tracestate`, its two headers as one list.
    let states = upstream.tracestates.lock().expect("headers").clone();
    assert_eq!(states.len(), 2, "{states:?}");
    for state in states {
        assert_eq!(state, ["caller=1,proxy=2"]);
    }
    for tool in ["echo", "count"] {
        let call = one(&spans, &format!("execute_tool {tool}"));
        assert_eq!(call.attr("gen_ai.tool.name"), tool);
        assert_eq!(call.attr("gen_ai.operation.name"), "execute_tool");
        assert_eq!(call.attr("langfuse.observation.type"), "tool");
        assert_eq!(children(&spans, call).len(), 1, "its op under it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_ops_spans_are_in_the_same_trace() {
    let receiver = Receiver::start().await;
    let flows = folder(&[("flows.yaml", FLOWS)]);
    let server = host(flows.path(), &receiver, &[]);
    let answer: Value = post(&client(), &server, "/isolated_count", json!({}), true)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["answer"], "hello hello ", "{answer}");
    receiver.wait_for("emit chunks").await;
    // The op span ends after the worker's span under it, and may come in a later export.
    let spans = receiver.wait_for("op CountOp").await;
    let op = one(&spans, "op CountOp");
    assert_eq!(op.attr("flowhost.op.placement"), "worker");
    let own = one(&spans, "emit chunks");
    assert_eq!(own.parent, op.id, "the worker's span is under its op span");
    assert_eq!(own.trace, TRACE);
    assert_eq!(own.attr("count.sent"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_call_continues_the_trace_in_its_meta() {
    use std::io::{BufRead, Write};
    let receiver = Receiver::start().await;
    let flows = folder(&[("flows.yaml", FLOWS)]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args(["serve", "--transport", "stdio", "--flows"])
        .arg(flows.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("flowhost serve --transport stdio");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let lines = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo_json", "arguments": {"query": "hi"}, "_meta": {"traceparent": format!("00-{TRACE}-{PARENT}-01")}}}),
    ];
    for line in &lines {
        writeln!(stdin, "{line}").expect("write");
    }
    let mut answers = 0;
    let mut line = String::new();
    while answers < 2 {
        line.clear();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "stdout ended"
        );
        if line.contains("\"id\":") {
            answers += 1;
        }
    }
    assert!(line.contains("\"hi\""), "{line}");
    let spans = receiver.wait_for("tools/call echo_json").await;
    let call = one(&spans, "tools/call echo_json");
    assert_eq!(call.trace, TRACE);
    assert_eq!(call.parent, PARENT);
    assert_eq!(call.kind, 2);
    assert_eq!(call.attr("mcp.method.name"), "tools/call");
    assert_eq!(call.attr("mcp.protocol.version"), "2025-11-25");
    assert_eq!(call.attr("gen_ai.tool.name"), "echo_json");
    assert_eq!(call.attr("network.transport"), "pipe");
    let run = one(&spans, "run echo_json");
    assert_eq!(run.parent, call.id);
    drop(stdin);
    let _ = child.wait();

    // Over /mcp without `_meta`: the call is under the HTTP request's span, which is under
    // the caller's `traceparent` header.
    receiver.spans.lock().expect("spans").clear();
    let server = host(flows.path(), &receiver, &[]);
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let text = client()
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo_json")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo_json", "arguments": {"query": "hi"}, "_meta": meta}}))
        .send()
        .await
        .expect("POST /mcp")
        .text()
        .await
        .expect("an answer");
    assert!(text.contains("\"hi\""), "{text}");
    let spans = receiver.wait_for("tools/call echo_json").await;
    let call = one(&spans, "tools/call echo_json");
    let post = spans
        .iter()
        .find(|s| s.attr("url.path") == "/mcp")
        .unwrap_or_else(|| panic!("no /mcp request span: {}", tree(&spans)));
    assert_eq!(post.parent, PARENT);
    assert_eq!(call.parent, post.id, "{}", tree(&spans));
    assert_eq!(call.attr("network.transport"), "tcp");
    assert_eq!(one(&spans, "run echo_json").parent, call.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_moved_is_followed() {
    // Batches go as pieces (no copy), which an HTTP client cannot send twice: on a 308 the
    // exporter sends them whole from then on, and the redirect is followed.
    let receiver = Receiver::start().await;
    let flows = folder(&[("flows.yaml", FLOWS)]);
    let moved = format!("{}/moved/v1/traces", receiver.url);
    let server = host(
        flows.path(),
        &receiver,
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", moved.as_str())],
    );
    let client = client();
    let runs = || {
        let spans = receiver.spans.lock().expect("spans");
        spans.iter().filter(|s| s.name == "run echo_json").count()
    };
    for round in 0..2 {
        let status = post(&client, &server, "/echo_json", json!({"query": "x"}), false)
            .await
            .status();
        assert_eq!(status, 200);
        // The first batch meets the redirect, the next ones go whole at once.
        let arrived = wait_async(Duration::from_secs(15), || async { runs() > round }).await;
        assert!(arrived.is_some(), "round {round}: {} runs arrived", runs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampler_that_is_off_sends_nothing() {
    let receiver = Receiver::start().await;
    let flows = folder(&[("flows.yaml", FLOWS)]);
    let server = host(
        flows.path(),
        &receiver,
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    );
    let client = client();
    for _ in 0..5 {
        let status = post(&client, &server, "/echo_json", json!({"query": "x"}), false)
            .await
            .status();
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(receiver.spans.lock().expect("spans").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_slows_no_run_and_its_drops_are_counted() {
    let receiver = Receiver::start().await;
    receiver.hang.store(true, Ordering::Relaxed);
    let flows = folder(&[("flows.yaml", FLOWS)]);
    let server = host(
        flows.path(),
        &receiver,
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "32"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
        ],
    );
    let client = client();
    // Each call makes three spans (request, run, op): 100 calls overflow a queue of 32 while
    // the exporter waits on the receiver.
    let started = std::time::Instant::now();
    for i in 0..100 {
        let answer: Value = post(
            &client,
            &server,
            "/echo_json",
            json!({"query": i.to_string()}),
            false,
        )
        .await
        .json()
        .await
        .expect("JSON");
        assert_eq!(answer["answer"], i.to_string());
    }
    let took = started.elapsed();
    // Not a timing test: a blocked exporter would hold the calls for its 30 s timeout.
    assert!(took < Duration::from_secs(25), "{took:?}");
    let dropped = server
        .metric(&client, "flowhost_trace_spans_dropped_total")
        .await;
    assert!(dropped >= 200.0, "dropped {dropped}");
}

/// A caller's trace it chose not to sample (`traceparent` flags `00`): under the default
/// parent-based sampler nothing is recorded, yet the LLM upstream still gets that trace,
/// unsampled (the spans under an unsampled one are not made at all); `always_on` records the
/// whole tree under the same header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_caller_trace_is_passed_on_and_always_on_still_records_it() {
    let receiver = Receiver::start().await;
    let upstream = Scripted::start(two_tools_then_answer()).await;
    let flows = folder(&[("flows.yaml", FLOWS)]);
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let server = host(
        flows.path(),
        &receiver,
        &[
            ("FLOW_LLM_BASE_URL", &upstream.url),
            ("FLOW_LLM_API_KEY", "k"),
            ("FLOW_LLM_MODEL", "gpt-4o-mini"),
        ],
    );
    let client = client();
    let answer: Value = client
        .post(server.url("/agent"))
        .header("traceparent", &unsampled)
        .json(&json!({"query": "use the tools"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        answer["answer"], "Echo said ping; count said xxx.",
        "{answer}"
    );
    let sent = upstream.traceparents.lock().expect("headers").clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for traceparent in sent {
        let traceparent = traceparent.expect("a traceparent");
        assert!(
            traceparent.starts_with(&format!("00-{TRACE}-")) && traceparent.ends_with("-00"),
            "{traceparent}"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(receiver.spans.lock().expect("spans").is_empty());
    drop(server);

    let server = host(
        flows.path(),
        &receiver,
        &[("OTEL_TRACES_SAMPLER", "always_on")],
    );
    let status = client
        .post(server.url("/echo_json"))
        .header("traceparent", &unsampled)
        .json(&json!({"query": "x"}))
        .send()
        .await
        .expect("POST")
        .status();
    assert_eq!(status, 200);
    let spans = receiver.wait_for("POST /{flow}").await;
    let post = one(&spans, "POST /{flow}");
    let run = one(&spans, "run echo_json");
    let op = one(&spans, "op EchoOp");
    assert_eq!((post.trace.as_str(), post.parent.as_str()), (TRACE, PARENT));
    assert_eq!(run.parent, post.id);
    assert_eq!(op.parent, run.id);
}
