//! The whole MCP surface through the real binary: plugin resources, templates and prompts (the
//! fixture plugin op-conformance, built against op-sdk 0.1.3), flows as `flow://` resources,
//! subscriptions, ops that sample, elicit and list roots (2025 client requests, 2026-07-28
//! input-required rounds), tasks, `outputSchema` and icons; and the same content over HTTP.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::util::*;

const FLOWS: &str = r#"
echo:
  flow_content: EchoOp()
  description: "echo the query"
  icon: "data:image/svg+xml;base64,PHN2Zy8+"
  input_schema:
    query: {type: string, required: true}
shaped:
  flow_content: 'AnswerOp(answer={"city": "Paris", "population": 2102650})'
  output_schema:
    type: object
    properties:
      city: {type: string}
      population: {type: integer}
    required: [city, population]
misshaped:
  flow_content: 'AnswerOp(answer={"city": 7})'
  output_schema:
    type: object
    properties:
      city: {type: string}
ask_name:
  flow_content: |
    ElicitOp(key="user_name", message="What is your name?", reply="Hello, {name}!",
      schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
ask_isolated:
  flow_content: |
    ElicitOp(key="user_name", message="Name, from a worker?", reply="Hello from a worker, {name}!",
      schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
  isolation: process
ask_model:
  flow_content: SampleOp(prompt="Capital of France?", reply="model says {text}")
two_rounds:
  flow_content: |
    ElicitOp(key="first", message="First?", reply="first={v}",
      schema={"type": "object", "properties": {"v": {"type": "string"}}})
    >> ElicitOp(key="second", message="Second?", reply="second={v}",
      schema={"type": "object", "properties": {"v": {"type": "string"}}})
roots:
  flow_content: RootsOp()
slow:
  flow_content: WaitOp(seconds=0.5)
  task_after: 0.1
quick:
  flow_content: WaitOp(seconds=0.01)
  task_after: 30
ticking:
  flow_content: TickOp(n=6, interval_ms=150)
  stream: true
  task_after: 0.1
"#;

/// A flowhost speaking MCP on stdio, driven line by line.
struct Stdio2 {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Stdio2 {
    fn spawn(flows: &std::path::Path, plugins: &std::path::Path) -> Stdio2 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
            .args(["serve", "--transport", "stdio", "--flows"])
            .arg(flows)
            .arg("--plugins")
            .arg(plugins)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("flowhost on stdio");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Stdio2 {
            _child: child,
            stdin,
            stdout,
        }
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.expect("write");
        self.stdin.flush().await.expect("flush");
    }

    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(15), self.stdout.next_line())
            .await
            .expect("a message within 15 s")
            .expect("read")
            .expect("stdout open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The reply to request `id`, keeping the notifications and server requests met on the way.
    async fn reply(&mut self, id: u64, seen: &mut Vec<Value>) -> Value {
        loop {
            let message = self.recv().await;
            if message["id"] == id && message.get("method").is_none() {
                return message;
            }
            seen.push(message);
        }
    }

    async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.reply(id, &mut Vec::new()).await
    }

    /// A 2025-11-25 session whose client can sample, elicit and share roots.
    async fn initialize(&mut self) {
        let capabilities =
            json!({"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}});
        let reply = self
            .request(
                0,
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": capabilities,
                       "clientInfo": {"name": "test", "version": "1"}}),
            )
            .await;
        let server = &reply["result"]["capabilities"];
        assert_eq!(server["resources"]["subscribe"], true, "{reply}");
        assert_eq!(server["prompts"]["listChanged"], true, "{reply}");
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }
}

fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
    let plugins = plugin_folder(&[
        (&op_basic(), &so("op_basic")),
        (&fixture("op_conformance"), &so("op_conformance")),
    ]);
    (folder(&[("f.yaml", FLOWS)]), plugins)
}

/// 2026-07-28 request metadata.
fn meta(capabilities: Value) -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_resources_prompts_and_flow_resources_over_stdio() {
    let (flows, plugins) = setup();
    let mut mcp = Stdio2::spawn(flows.path(), plugins.path());
    mcp.initialize().await;

    let listed = mcp.request(1, "resources/list", json!({})).await;
    let uris: Vec<&str> = listed["result"]["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .filter_map(|r| r["uri"].as_str())
        .collect();
    assert!(uris.contains(&"flow://echo"), "{uris:?}");
    assert!(uris.contains(&"test://static-text"), "{uris:?}");
    let mut sorted = uris.clone();
    sorted.sort();
    assert_eq!(uris, sorted, "resources are listed in URI order");

    let flow = mcp
        .request(2, "resources/read", json!({"uri": "flow://echo"}))
        .await;
    let summary: Value = serde_json::from_str(
        flow["result"]["contents"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{flow}")),
    )
    .expect("the flow resource is JSON");
    assert_eq!(summary["status"], "live");
    assert_eq!(summary["ops"], json!(["EchoOp"]));
    assert!(
        summary["yaml"]
            .as_str()
            .is_some_and(|y| y.starts_with("echo:\n") && y.contains("flow_content: EchoOp()")),
        "{summary}"
    );

    let binary = mcp
        .request(3, "resources/read", json!({"uri": "test://static-binary"}))
        .await;
    let content = &binary["result"]["contents"][0];
    assert_eq!(content["mimeType"], "image/png");
    assert!(
        content["blob"]
            .as_str()
            .is_some_and(|b| b.starts_with("iVBOR")),
        "{binary}"
    );
    let templated = mcp
        .request(
            4,
            "resources/read",
            json!({"uri": "test://template/42/data"}),
        )
        .await;
    assert!(
        templated["result"]["contents"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Data for ID: 42")),
        "{templated}"
    );
    let templates = mcp.request(5, "resources/templates/list", json!({})).await;
    assert_eq!(
        templates["result"]["resourceTemplates"][0]["uriTemplate"],
        "test://template/{id}/data"
    );
    let missing = mcp
        .request(6, "resources/read", json!({"uri": "test://nothing"}))
        .await;
    assert_eq!(missing["error"]["code"], -32002, "{missing}");
    assert!(
        missing["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("test://nothing") && m.contains("resources/list")),
        "{missing}"
    );

    let prompt = mcp
        .request(
            7,
            "prompts/get",
            json!({"name": "test_prompt_with_arguments", "arguments": {"arg1": "A", "arg2": "B"}}),
        )
        .await;
    assert_eq!(
        prompt["result"]["messages"][0]["content"]["text"],
        "Prompt with arguments: arg1='A', arg2='B'"
    );
    let short = mcp
        .request(
            8,
            "prompts/get",
            json!({"name": "test_prompt_with_arguments", "arguments": {"arg1": "A"}}),
        )
        .await;
    assert_eq!(short["error"]["code"], -32602, "{short}");
    assert!(
        short["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`arg2`")),
        "{short}"
    );

    // A subscribed flow resource changes when its file does; a new flow changes the list.
    let subscribed = mcp
        .request(9, "resources/subscribe", json!({"uri": "flow://echo"}))
        .await;
    assert_eq!(subscribed["result"], json!({}), "{subscribed}");
    std::fs::write(
        flows.path().join("f.yaml"),
        FLOWS.replace("echo the query", "echo it back"),
    )
    .expect("edit the flow file");
    std::fs::write(
        flows.path().join("g.yaml"),
        "added:\n  flow_content: EchoOp()\n",
    )
    .expect("add a flow file");
    let mut updated = false;
    let mut list_changed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(updated && list_changed) && tokio::time::Instant::now() < deadline {
        let message = mcp.recv().await;
        match message["method"].as_str() {
            Some("notifications/resources/updated") => {
                assert_eq!(message["params"]["uri"], "flow://echo");
                updated = true;
            }
            Some("notifications/resources/list_changed") => list_changed = true,
            _ => {}
        }
    }
    assert!(
        updated && list_changed,
        "updated {updated}, list_changed {list_changed}"
    );
    let flow = mcp
        .request(10, "resources/read", json!({"uri": "flow://echo"}))
        .await;
    assert!(
        flow["result"]["contents"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("echo it back")),
        "{flow}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_ask_a_2025_client_and_tools_carry_output_schema_and_icons() {
    let (flows, plugins) = setup();
    let mut mcp = Stdio2::spawn(flows.path(), plugins.path());
    mcp.initialize().await;

    let tools = mcp.request(1, "tools/list", json!({})).await;
    let tools = tools["result"]["tools"].as_array().expect("tools").clone();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "tools/list is in name order");
    let tool = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .expect(name)
    };
    assert_eq!(
        tool("echo")["icons"][0]["src"],
        "data:image/svg+xml;base64,PHN2Zy8+"
    );
    assert_eq!(
        tool("shaped")["outputSchema"]["required"],
        json!(["city", "population"])
    );
    assert!(tool("echo").get("outputSchema").is_none());

    let shaped = mcp
        .request(2, "tools/call", json!({"name": "shaped", "arguments": {}}))
        .await;
    assert_eq!(
        shaped["result"]["structuredContent"],
        json!({"city": "Paris", "population": 2102650}),
        "{shaped}"
    );
    let misshaped = mcp
        .request(
            3,
            "tools/call",
            json!({"name": "misshaped", "arguments": {}}),
        )
        .await;
    assert_eq!(misshaped["result"]["isError"], true, "{misshaped}");
    assert!(
        misshaped["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("output_schema") && t.contains("/city")),
        "{misshaped}"
    );

    // The op's questions arrive as requests to the client, answered in the same call.
    mcp.send(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "ask_name", "arguments": {}}}))
        .await;
    let request = mcp.recv().await;
    assert_eq!(request["method"], "elicitation/create", "{request}");
    assert_eq!(request["params"]["message"], "What is your name?");
    mcp.send(json!({"jsonrpc": "2.0", "id": request["id"], "result": {"action": "accept", "content": {"name": "Ada"}}}))
        .await;
    let answered = mcp.reply(4, &mut Vec::new()).await;
    assert_eq!(
        answered["result"]["content"][0]["text"], "Hello, Ada!",
        "{answered}"
    );

    // The same from an op isolated in a worker process: the question crosses the worker
    // protocol, then the MCP connection.
    mcp.send(json!({"jsonrpc": "2.0", "id": 40, "method": "tools/call", "params": {"name": "ask_isolated", "arguments": {}}}))
        .await;
    let request = mcp.recv().await;
    assert_eq!(
        request["params"]["message"], "Name, from a worker?",
        "{request}"
    );
    mcp.send(json!({"jsonrpc": "2.0", "id": request["id"], "result": {"action": "accept", "content": {"name": "Grace"}}}))
        .await;
    let answered = mcp.reply(40, &mut Vec::new()).await;
    assert_eq!(
        answered["result"]["content"][0]["text"], "Hello from a worker, Grace!",
        "{answered}"
    );

    mcp.send(json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask_model", "arguments": {}}}))
        .await;
    let request = mcp.recv().await;
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    assert_eq!(
        request["params"]["messages"][0]["content"],
        json!({"type": "text", "text": "Capital of France?"})
    );
    mcp.send(json!({"jsonrpc": "2.0", "id": request["id"], "result": {
        "role": "assistant", "content": {"type": "text", "text": "Paris"},
        "model": "client-model", "stopReason": "endTurn"}}))
        .await;
    let answered = mcp.reply(5, &mut Vec::new()).await;
    assert_eq!(answered["result"]["content"][0]["text"], "model says Paris");

    mcp.send(json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "roots", "arguments": {}}}))
        .await;
    let request = mcp.recv().await;
    assert_eq!(request["method"], "roots/list", "{request}");
    mcp.send(json!({"jsonrpc": "2.0", "id": request["id"], "result": {"roots": [{"uri": "file:///work", "name": "work"}]}}))
        .await;
    let answered = mcp.reply(6, &mut Vec::new()).await;
    assert_eq!(
        answered["result"]["content"][0]["text"],
        "Client roots: file:///work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_answers_in_rounds_and_long_calls_become_tasks() {
    let (flows, plugins) = setup();
    let mut mcp = Stdio2::spawn(flows.path(), plugins.path());
    let asker = meta(json!({"elicitation": {}, "sampling": {}}));

    // Round 1: the question; round 2: the answer, with the sealed state of round 1.
    let first = mcp
        .request(
            1,
            "tools/call",
            json!({"name": "two_rounds", "arguments": {}, "_meta": asker}),
        )
        .await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    assert_eq!(
        result["inputRequests"]["first"]["method"],
        "elicitation/create"
    );
    let state = result["requestState"]
        .as_str()
        .expect("a request state")
        .to_string();
    let second = mcp
        .request(
            2,
            "tools/call",
            json!({"name": "two_rounds", "arguments": {}, "_meta": asker,
            "inputResponses": {"first": {"action": "accept", "content": {"v": "1"}}},
            "requestState": state}),
        )
        .await;
    let result = &second["result"];
    assert_eq!(result["resultType"], "input_required", "{second}");
    assert!(result["inputRequests"].get("second").is_some(), "{second}");
    let state = result["requestState"]
        .as_str()
        .expect("a request state")
        .to_string();
    let third = mcp
        .request(
            3,
            "tools/call",
            json!({"name": "two_rounds", "arguments": {}, "_meta": asker,
            "inputResponses": {"second": {"action": "accept", "content": {"v": "2"}}},
            "requestState": state.clone()}),
        )
        .await;
    assert_eq!(third["result"]["content"][0]["text"], "second=2", "{third}");

    // A state this host did not seal is refused.
    let mut tampered = state.into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let refused = mcp
        .request(
            4,
            "tools/call",
            json!({"name": "two_rounds", "arguments": {}, "_meta": asker,
            "inputResponses": {"second": {"action": "accept", "content": {"v": "2"}}},
            "requestState": String::from_utf8(tampered).expect("ascii")}),
        )
        .await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("integrity")),
        "{refused}"
    );

    // Without the capability and with no LLM service to fall back to: -32021.
    let no_sampling = mcp
        .request(
            5,
            "tools/call",
            json!({"name": "ask_model", "arguments": {}, "_meta": meta(json!({}))}),
        )
        .await;
    assert_eq!(no_sampling["error"]["code"], -32021, "{no_sampling}");
    assert!(no_sampling["error"]["data"]["requiredCapabilities"]
        .get("sampling")
        .is_some());

    // A client that speaks tasks gets a task for a call; tasks/get follows it to the end.
    let tasker = meta(json!({"extensions": {"io.modelcontextprotocol/tasks": {}}}));
    let created = mcp
        .request(
            6,
            "tools/call",
            json!({"name": "slow", "arguments": {}, "_meta": tasker}),
        )
        .await;
    assert_eq!(created["result"]["resultType"], "task", "{created}");
    let task_id = created["result"]["taskId"]
        .as_str()
        .expect("taskId")
        .to_string();
    let mut status = String::new();
    for id in 1000..1300 {
        let got = mcp
            .request(id, "tasks/get", json!({"taskId": task_id, "_meta": tasker}))
            .await;
        status = got["result"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if status == "completed" {
            assert_eq!(
                got["result"]["result"]["content"][0]["text"], "Computed after 0.5 s",
                "{got}"
            );
            break;
        }
        assert_eq!(status, "working", "{got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "completed");
    // A task keeps its progress: how many chunks so far, and the last one.
    let created = mcp
        .request(
            80,
            "tools/call",
            json!({"name": "ticking", "arguments": {}, "_meta": tasker}),
        )
        .await;
    let task_id = created["result"]["taskId"]
        .as_str()
        .expect("taskId")
        .to_string();
    let mut progress_seen = false;
    for id in 81..140 {
        let got = mcp
            .request(id, "tasks/get", json!({"taskId": task_id, "_meta": tasker}))
            .await;
        let message = got["result"]["statusMessage"].as_str().unwrap_or_default();
        progress_seen |= message.contains("chunk(s); last answer");
        if got["result"]["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(progress_seen, "tasks/get showed no progress");
    // A call quicker than `task_after` (30 s here, so a loaded machine cannot miss it)
    // answers directly, task or not.
    let quick = mcp
        .request(
            69,
            "tools/call",
            json!({"name": "quick", "arguments": {}, "_meta": tasker}),
        )
        .await;
    assert_eq!(
        quick["result"]["content"][0]["text"], "Computed after 0.01 s",
        "{quick}"
    );
    // Without the extension the same flow answers directly.
    let direct = mcp
        .request(
            70,
            "tools/call",
            json!({"name": "slow", "arguments": {}, "_meta": meta(json!({}))}),
        )
        .await;
    assert_eq!(
        direct["result"]["content"][0]["text"], "Computed after 0.5 s",
        "{direct}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_prompts_over_http_and_no_one_to_ask() {
    let (flows, plugins) = setup();
    let server = Server::start(
        flows.path(),
        &["--plugins", plugins.path().to_str().expect("utf-8")],
    );
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client.get(server.url(path));
        async move {
            let response = request.send().await.expect("GET");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let (status, listed) = get("/resources").await;
    assert_eq!(status, 200);
    assert!(listed["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .any(|r| r["uri"] == "flow://echo" && r["_meta"]["plugin"] == "flowhost"));
    assert_eq!(
        listed["resourceTemplates"][0]["_meta"]["plugin"],
        "op-conformance"
    );
    let (status, read) = get("/resources/read?uri=test://static-text").await;
    assert_eq!(status, 200);
    assert_eq!(
        read["contents"][0]["text"],
        "This is the content of the static text resource."
    );
    let (status, missing) = get("/resources/read?uri=test://nothing").await;
    assert_eq!(status, 404, "{missing}");
    let (status, no_uri) = get("/resources/read").await;
    assert_eq!(status, 400, "{no_uri}");
    let (_, ops) = get("/ops").await;
    let fixture = ops["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "op-conformance")
        .cloned()
        .expect("op-conformance listed");
    assert_eq!(fixture["sdk_version"], op_sdk::ffi::SDK_VERSION);
    assert_eq!(fixture["resources"], 3, "{fixture}");
    assert_eq!(fixture["resource_templates"], 1, "{fixture}");
    let (status, prompts) = get("/prompts").await;
    assert_eq!(status, 200);
    assert!(prompts["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .any(|p| p["name"] == "test_simple_prompt"));
    let (status, prompt) = get("/prompts/test_prompt_with_arguments?arg1=x&arg2=y").await;
    assert_eq!(status, 200, "{prompt}");
    assert_eq!(
        prompt["messages"][0]["content"]["text"],
        "Prompt with arguments: arg1='x', arg2='y'"
    );
    let posted: Value = client
        .post(server.url("/prompts/test_prompt_with_arguments"))
        .json(&json!({"arg1": "p"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert!(
        posted["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`arg2`")),
        "{posted}"
    );

    // Over HTTP nobody can answer an elicitation, and with no LLM service sampling fails too.
    let asked: Value = client
        .post(server.url("/ask_name"))
        .json(&json!({}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(asked["success"], false, "{asked}");
    let message = asked["metadata"]["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot elicit") && message.contains("MCP client"),
        "{asked}"
    );
    let sampled: Value = client
        .post(server.url("/ask_model"))
        .json(&json!({}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    let message = sampled["metadata"]["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot sample") && message.contains("no LLM is configured"),
        "{sampled}"
    );
}
