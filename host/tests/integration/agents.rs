//! Agents: `ReactAgentOp() << {...}` against a scripted OpenAI-compatible upstream that asks
//! for tool calls, through the real binary over HTTP (SSE and JSON), the OpenAI route and MCP.
//! The upstream records every request, so the test checks the exact tools sent, the tool
//! calls fed back and their results.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::util::*;

/// A scripted upstream: each request gets the next script (the last repeats) as SSE.
pub(crate) struct Scripted {
    pub(crate) url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    /// Each request's `traceparent` header (traces.rs).
    pub(crate) traceparents: Arc<Mutex<Vec<Option<String>>>>,
    /// Each request's `tracestate` headers, as they came (traces.rs).
    pub(crate) tracestates: Arc<Mutex<Vec<Vec<String>>>>,
}

#[derive(Clone)]
struct Scripts {
    queue: Arc<Mutex<VecDeque<Vec<Value>>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
    tracestates: Arc<Mutex<Vec<Vec<String>>>>,
}

async fn completions(
    State(scripts): State<Scripts>,
    headers: axum::http::HeaderMap,
    body: String,
) -> impl IntoResponse {
    scripts
        .traceparents
        .lock()
        .expect("the scripted upstream")
        .push(
            headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
    scripts
        .tracestates
        .lock()
        .expect("the scripted upstream")
        .push(
            headers
                .get_all("tracestate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect(),
        );
    scripts
        .bodies
        .lock()
        .expect("the scripted upstream")
        .push(serde_json::from_str(&body).unwrap_or(Value::Null));
    let deltas = {
        let mut queue = scripts.queue.lock().expect("lock");
        if queue.len() > 1 {
            queue.pop_front().expect("a script")
        } else {
            queue.front().cloned().unwrap_or_default()
        }
    };
    let mut text = String::new();
    for delta in deltas {
        let chunk =
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]});
        text.push_str(&format!("data: {chunk}\n\n"));
    }
    text.push_str("data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 10, \"completion_tokens\": 5, \"total_tokens\": 15}}\n\n");
    text.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], text)
}

impl Scripted {
    pub(crate) async fn start(scripts: Vec<Vec<Value>>) -> Scripted {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let traceparents = Arc::new(Mutex::new(Vec::new()));
        let tracestates = Arc::new(Mutex::new(Vec::new()));
        let state = Scripts {
            queue: Arc::new(Mutex::new(scripts.into())),
            bodies: bodies.clone(),
            traceparents: traceparents.clone(),
            tracestates: tracestates.clone(),
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the scripted upstream");
        let url = format!(
            "http://{}/v1",
            listener.local_addr().expect("the scripted upstream")
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Scripted {
            url,
            bodies,
            traceparents,
            tracestates,
        }
    }

    /// `flowhost serve` on `flows` with this upstream as its default LLM.
    fn host(&self, flows: &std::path::Path) -> Server {
        Server::start_with_env(
            flows,
            &[],
            &[("FLOW_LLM_BASE_URL", &self.url), ("FLOW_LLM_API_KEY", "k")],
        )
    }

    pub(crate) fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("lock").clone()
    }
}

async fn post_json(client: &reqwest::Client, server: &Server, path: &str, body: Value) -> Value {
    client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("a JSON answer")
}

fn tool_call(index: u64, id: &str, name: &str, arguments: &str) -> Value {
    json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]})
}

fn more_arguments(index: u64, arguments: &str) -> Value {
    json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
}

/// One turn asking for two tools at once (arguments split across deltas), then the answer.
pub(crate) fn two_tools_then_answer() -> Vec<Vec<Value>> {
    vec![
        vec![
            json!({"role": "assistant", "content": null}),
            tool_call(0, "call_echo", "echo", "{\"query\": "),
            more_arguments(0, "\"ping\"}"),
            tool_call(1, "call_count", "count", "{\"n\": 3}"),
        ],
        vec![
            json!({"content": "Echo said ping; "}),
            json!({"content": "count said xxx."}),
        ],
    ]
}

const FLOWS: &str = r#"
agent_stream:
  flow_content: 'ReactAgentOp(max_steps=3) << {"echo": EchoOp(), "count": CountOp(text="x")}'
  stream: true
agent_json:
  flow_content: |
    agent = ReactAgentOp(max_steps=3)
    agent.ops.echo = EchoOp()
    agent.ops.count = CountOp(text="x")
    agent
agent_broken_tool:
  flow_content: 'ReactAgentOp() << {"broken": FailOp(message="disk on fire"), "echo": EchoOp()}'
agent_short:
  flow_content: ReactAgentOp(max_steps=2) << [EchoOp()]
search_flow:
  flow_content: GenSystemPromptOp(template="unused") >> EchoOp()
  description: "searches the web (here: echoes the query)"
  input_schema:
    query: {type: string, description: "what to search for", required: true}
agent_with_flow:
  flow_content: ReactAgentOp() << [FlowOp(flow="search_flow")]
"#;

fn check_the_loop(bodies: &[Value]) {
    assert_eq!(bodies.len(), 2, "{bodies:#?}");
    let tools = bodies[0]["tools"].as_array().expect("tools sent");
    let names: Vec<&str> = tools
        .iter()
        .map(|t| {
            t["function"]["name"]
                .as_str()
                .expect("the scripted upstream")
        })
        .collect();
    assert_eq!(names, ["echo", "count"]);
    assert_eq!(tools[0]["type"], "function");
    // EchoOp declares itself as a tool (Op::tool); CountOp gets the defaults.
    assert_eq!(
        tools[0]["function"]["description"],
        "Repeats the given text back"
    );
    assert_eq!(
        tools[0]["function"]["parameters"]["required"],
        json!(["query"])
    );
    assert_eq!(
        tools[1]["function"]["parameters"],
        json!({"type": "object", "properties": {}})
    );
    assert_eq!(bodies[0]["tool_choice"], "auto");
    assert_eq!(
        bodies[0]["messages"],
        json!([{"role": "user", "content": "use the tools"}])
    );
    let messages = bodies[1]["messages"]
        .as_array()
        .expect("the scripted upstream");
    assert_eq!(messages.len(), 4, "{messages:#?}");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[1]["tool_calls"],
        json!([
            {"id": "call_echo", "type": "function", "function": {"name": "echo", "arguments": "{\"query\": \"ping\"}"}},
            {"id": "call_count", "type": "function", "function": {"name": "count", "arguments": "{\"n\": 3}"}}
        ])
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "call_echo", "content": "ping"})
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "call_count", "content": "xxx"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_loop_over_sse_json_openai_and_mcp() {
    let flows = folder(&[("agents.yaml", FLOWS)]);
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();

    // SSE: tool-call chunks, tool results, then the answer, then [DONE].
    let upstream = Scripted::start(two_tools_then_answer()).await;
    let server = upstream.host(flows.path());
    let body = client
        .post(server.url("/agent_stream"))
        .json(&json!({"query": "use the tools"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data:"))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(body.trim_end().ends_with("data:[DONE]"), "{body}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["chunk_type"].as_str().unwrap())
        .collect();
    let answer: String = events
        .iter()
        .filter(|e| e["chunk_type"] == "answer")
        .map(|e| e["chunk"].as_str().unwrap())
        .collect();
    assert_eq!(answer, "Echo said ping; count said xxx.", "{body}");
    assert!(!kinds.contains(&"error"), "{body}");
    let results: Vec<&Value> = events
        .iter()
        .filter(|e| e["chunk_type"] == "tool" && e["chunk"].get("result").is_some())
        .map(|e| &e["chunk"])
        .collect();
    assert_eq!(results.len(), 2, "{body}");
    assert_eq!(results[0]["result"], "ping");
    assert_eq!(results[1]["result"], "xxx");
    // The model's tool calls are streamed too, assembled from their deltas.
    assert!(
        events.iter().any(|e| e["chunk_type"] == "tool"
            && e["chunk"]["name"] == "echo"
            && e["chunk"]["arguments"] == "{\"query\": \"ping\"}"),
        "{body}"
    );
    check_the_loop(&upstream.bodies());
    drop(server);

    // JSON, the multi-line form of the same agent.
    let upstream = Scripted::start(two_tools_then_answer()).await;
    let server = upstream.host(flows.path());
    let reply = post_json(
        &client,
        &server,
        "/agent_json",
        json!({"query": "use the tools"}),
    )
    .await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["answer"], "Echo said ping; count said xxx.");
    check_the_loop(&upstream.bodies());
    drop(server);

    // The OpenAI route.
    let upstream = Scripted::start(two_tools_then_answer()).await;
    let server = upstream.host(flows.path());
    let reply = post_json(
        &client,
        &server,
        "/v1/chat/completions",
        json!({"model": "agent_json", "messages": [{"role": "user", "content": "use the tools"}]}),
    )
    .await;
    assert_eq!(
        reply["choices"][0]["message"]["content"], "Echo said ping; count said xxx.",
        "{reply}"
    );
    assert_eq!(upstream.bodies().len(), 2);
    assert_eq!(upstream.bodies()[1]["messages"][2]["content"], "ping");
    drop(server);

    // MCP over stdio: the agent flow is a tool.
    let upstream = Scripted::start(two_tools_then_answer()).await;
    use rmcp::ServiceExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhost"));
    command
        .args(["serve", "--transport", "stdio", "--flows"])
        .arg(flows.path())
        .env("FLOW_LLM_BASE_URL", &upstream.url)
        .env("FLOW_LLM_API_KEY", "k")
        .env("NO_COLOR", "1");
    let (transport, _) = rmcp::transport::TokioChildProcess::builder(command)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mcp = ().serve(transport).await.expect("MCP client connects");
    let result = mcp
        .call_tool(
            rmcp::model::CallToolRequestParams::new("agent_json").with_arguments(
                json!({"query": "use the tools"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        )
        .await
        .expect("tools/call");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(
        result.content[0].as_text().unwrap().text,
        "Echo said ping; count said xxx."
    );
    check_the_loop(&upstream.bodies());
    let _ = mcp.cancel().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tool_is_a_result_the_model_reads_and_max_steps_ends_the_loop() {
    let flows = folder(&[("agents.yaml", FLOWS)]);
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();
    let upstream = Scripted::start(vec![
        vec![tool_call(0, "c1", "broken", "{}")],
        vec![json!({"content": "The tool failed."})],
    ])
    .await;
    let server = upstream.host(flows.path());
    let reply = post_json(
        &client,
        &server,
        "/agent_broken_tool",
        json!({"query": "try"}),
    )
    .await;
    assert_eq!(reply["answer"], "The tool failed.", "{reply}");
    let fed_back = &upstream.bodies()[1]["messages"][2];
    assert_eq!(fed_back["role"], "tool");
    assert!(
        fed_back["content"]
            .as_str()
            .unwrap()
            .contains("disk on fire"),
        "{fed_back}"
    );
    drop(server);

    // A model that never stops calling tools: two model calls, then an answer saying so.
    let upstream = Scripted::start(vec![vec![tool_call(
        0,
        "again",
        "echo",
        "{\"query\": \"x\"}",
    )]])
    .await;
    let server = upstream.host(flows.path());
    let reply = post_json(&client, &server, "/agent_short", json!({"query": "loop"})).await;
    assert_eq!(reply["success"], true, "{reply}");
    assert!(
        reply["answer"].as_str().unwrap().contains("max_steps=2"),
        "{reply}"
    );
    assert_eq!(upstream.bodies().len(), 2);
}

/// A flow is an agent tool: its name, description and input schema are the tool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_is_a_tool_through_flow_op() {
    let flows = folder(&[("agents.yaml", FLOWS)]);
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();
    let upstream = Scripted::start(vec![
        vec![tool_call(0, "s1", "search_flow", "{\"query\": \"rust\"}")],
        vec![json!({"content": "Found: rust"})],
    ])
    .await;
    let server = upstream.host(flows.path());
    let reply = post_json(
        &client,
        &server,
        "/agent_with_flow",
        json!({"query": "look it up"}),
    )
    .await;
    assert_eq!(reply["answer"], "Found: rust", "{reply}");
    let bodies = upstream.bodies();
    let tool = &bodies[0]["tools"][0]["function"];
    assert_eq!(tool["name"], "search_flow");
    assert_eq!(
        tool["description"],
        "searches the web (here: echoes the query)"
    );
    assert_eq!(tool["parameters"]["properties"]["query"]["type"], "string");
    assert_eq!(tool["parameters"]["required"], json!(["query"]));
    assert_eq!(
        bodies[1]["messages"][2],
        json!({"role": "tool", "tool_call_id": "s1", "content": "rust"})
    );
}

/// `ctx.sample` over HTTP has no client to ask: the host's LLM service answers, with the
/// sampling request turned into a chat request (system prompt first, max_tokens kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_over_http_falls_back_to_the_llm_service() {
    let flows = folder(&[(
        "f.yaml",
        "ask_model:\n  flow_content: SampleOp(prompt=\"Capital of France?\", reply=\"model says {text}\")\n",
    )]);
    let plugins = plugin_folder(&[(&fixture("op_conformance"), &so("op_conformance"))]);
    let upstream = Scripted::start(vec![vec![json!({"content": "Paris"})]]).await;
    let server = Server::start_with_env(
        flows.path(),
        &["--plugins", plugins.path().to_str().expect("utf-8")],
        &[
            ("FLOW_LLM_BASE_URL", &upstream.url),
            ("FLOW_LLM_API_KEY", "k"),
        ],
    );
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();
    let answer = post_json(&client, &server, "/ask_model", json!({})).await;
    assert_eq!(answer["answer"], "model says Paris", "{answer}");
    let sent = upstream.bodies();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0]["messages"],
        json!([{"role": "user", "content": "Capital of France?"}])
    );
    assert_eq!(sent[0]["max_tokens"], 100);
}
