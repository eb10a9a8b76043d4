//! The HTTP transport, driven through the real binary with a real HTTP client.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::util::*;

const FLOWS: &str = r#"
echo:
  flow_content: EchoOp()
  input_schema:
    query: {type: string, description: "text", required: true}
echo_stream:
  flow_content: EchoOp()
  stream: true
  input_schema:
    query: {type: string, required: true}
    n: {type: integer}
fail_stream:
  flow_content: FailOp(n=2, message="broke mid-stream")
  stream: true
fail_json:
  flow_content: FailOp(message="no answer")
ticks:
  flow_content: TickOp(n=100000, interval_ms=20)
  stream: true
slow:
  flow_content: TickOp(n=2, interval_ms=700)
  stream: true
count:
  flow_content: CountOp()
  stream: true
broken:
  flow_content: NoSuchOp()
"#;

/// The SSE events of a response body (`data:` payloads).
fn events(body: &str) -> Vec<String> {
    // Line by line, as SSE is read (an async run's events carry an `id:` line too).
    body.split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data:")))
        .map(|data| data.trim_start().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_flow_sse_framing_byte_for_byte() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let response = client()
        .post(server.url("/echo_stream"))
        .json(&json!({"query": "hi \"there\"", "extra": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let body = response.text().await.unwrap();
    let first: Value = serde_json::from_str(&events(&body)[0]).unwrap();
    let flow_id = first["flow_id"].as_str().unwrap();
    assert_eq!(
        body,
        format!(
            "data:{{\"flow_id\":\"{flow_id}\",\"chunk_type\":\"answer\",\"chunk\":\"hi \\\"there\\\"\",\"done\":false,\"metadata\":{{\"op\":\"EchoOp\"}}}}\n\ndata:[DONE]\n\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_flows_and_every_error_status() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let post = |path: &str, body: String| {
        client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let ok: Value = post("/echo", json!({"query": "hello"}).to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["answer"], "hello");
    assert_eq!(ok["success"], true);
    assert!(ok["metadata"]["flow_id"].is_string());

    let failed = post("/fail_json", "{}".into()).await.unwrap();
    assert_eq!(failed.status(), 500);
    let failed: Value = failed.json().await.unwrap();
    assert_eq!(failed["success"], false);
    assert_eq!(failed["metadata"]["error"], "FailOp failed: no answer");

    // Validation applies to stream flows too, naming each field.
    for (path, body) in [
        ("/echo", json!({})),
        ("/echo_stream", json!({"query": 1, "n": "x"})),
    ] {
        let response = post(path, body.to_string()).await.unwrap();
        assert_eq!(response.status(), 422, "{path}");
        let detail: Value = response.json().await.unwrap();
        let fields: Vec<Value> = detail["detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["loc"][1].clone())
            .collect();
        assert!(fields.contains(&json!("query")), "{detail}");
        if path == "/echo_stream" {
            assert!(fields.contains(&json!("n")), "{detail}");
        }
    }
    let bad_json = post("/echo", "{not json".into()).await.unwrap();
    assert_eq!(bad_json.status(), 422);
    assert!(bad_json.text().await.unwrap().contains("invalid JSON"));

    let unknown = post("/nope", "{}".into()).await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown
        .text()
        .await
        .unwrap()
        .contains("no flow named `nope`"));

    let broken = post("/broken", "{}".into()).await.unwrap();
    assert_eq!(broken.status(), 503);
    assert!(broken
        .text()
        .await
        .unwrap()
        .contains("unknown op `NoSuchOp`"));

    // Refused from Content-Length alone: the 2 MiB body is never sent.
    let address = server.url.trim_start_matches("http://").to_string();
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(address).unwrap();
        socket
            .write_all(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n")
            .unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = vec![0u8; 4096];
        let n = socket.read(&mut reply).unwrap();
        String::from_utf8_lossy(&reply[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.contains("larger than the limit of 1048576 bytes"),
        "{reply}"
    );

    let wrong_method = client.get(server.url("/echo")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);

    // The host is still serving after all that.
    let health: Value = client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert!(health["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "op-basic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_stream_is_an_error_chunk_then_done() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let body = client()
        .post(server.url("/fail_stream"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = events(&body);
    assert_eq!(events.len(), 4, "{body}");
    let kinds: Vec<String> = events[..3]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["chunk_type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["answer", "answer", "error"]);
    let error: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(error["chunk"], "FailOp failed: broke mid-stream");
    assert_eq!(events[3], "[DONE]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_stops_the_op() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    for round in 1..=3 {
        let response = client
            .post(server.url("/ticks"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let mut stream = response.bytes_stream();
        let first = stream.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"data:"));
        assert_eq!(server.metric(&client, "flowhost_ops_running").await, 1.0);
        drop(stream);
        let started = Instant::now();
        loop {
            let running = server.metric(&client, "flowhost_ops_running").await;
            let cancelled = server.metric(&client, "flowhost_cancellations_total").await;
            if running == 0.0 && cancelled >= round as f64 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "op still running after disconnect"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!(
            "disconnect -> op stopped (observed) in {:?}",
            started.elapsed()
        );
    }
    assert_eq!(server.metric(&client, "flowhost_active_streams").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_grow_memory() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let response = client
        .post(server.url("/count"))
        .json(&json!({"n": 5_000_000}))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib();
    // 5M chunks of ~100 bytes would be ~500 MB if buffered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_kib();
    assert!(
        after < before + 20 * 1024,
        "RSS grew from {before} KiB to {after} KiB while the reader paused"
    );
    let mut received = 0usize;
    while let Some(bytes) = stream.next().await {
        received += bytes.unwrap().len();
    }
    assert!(received > 5_000_000 * 90, "received {received} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_flow_files_live() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let operation_ids = || async {
        let doc: Value = client
            .get(server.url("/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<String>>()
    };
    let status = |path: &'static str| {
        let request = client.post(server.url(path)).json(&json!({"query": "q"}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/added").await, 404);

    let file = flows.path().join("added.yaml");
    std::fs::write(
        &file,
        "added:\n  flow_content: EchoOp()\n  description: first\n",
    )
    .unwrap();
    wait_async(Duration::from_secs(30), || async {
        status("/added").await == 200
    })
    .await
    .expect("added flow served");
    assert!(operation_ids().await.contains(&"/added".to_string()));

    std::fs::write(&file, "added:\n  flow_content: GenSystemPromptOp(template=\"v2\") >> EchoOp()\n  description: second\n").unwrap();
    wait_async(Duration::from_secs(30), || async {
        let doc: Value = client
            .get(server.url("/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        doc["paths"]["/added"]["post"]["summary"] == "second"
    })
    .await
    .expect("edit visible in openapi.json");

    // A broken save keeps the last good version serving and shows up in /flows.
    std::fs::write(&file, "added:\n  flow_content: EchoOp(\n").unwrap();
    wait_async(Duration::from_secs(30), || async {
        let flows: Value = client
            .get(server.url("/flows"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "added" && f["status"] == "stale")
    })
    .await
    .expect("stale status reported");
    assert_eq!(status("/added").await, 200);

    std::fs::remove_file(&file).unwrap();
    wait_async(Duration::from_secs(30), || async {
        status("/added").await == 404
    })
    .await
    .expect("deleted flow gone");
    assert!(!operation_ids().await.contains(&"/added".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_completions_stream_and_answer() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let body = client
        .post(server.url("/v1/chat/completions"))
        .json(
            &json!({"model": "echo_stream", "stream": true, "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}]}
            ]}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "hello");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    let answer: Value = client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["content"], "hi");

    let models: Value = client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"echo_stream") && !ids.contains(&"broken"),
        "{ids:?}"
    );

    let missing = client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "nope", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_comments_while_idle() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["http.keepalive_secs=0.2"]);
    let body = client()
        .post(server.url("/slow"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\n\n: keep-alive\n\n"), "{body}");
    assert_eq!(events(&body).len(), 3);
}

/// The guard invariant over the router's whole route table (`ROUTES`, which the tidy test
/// keeps equal to the router): with a key set, every method of every route answers 401 without
/// it, except the public pages (health, readiness, the playground's files, the API docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_but_the_public_ones_needs_the_key() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["--api-key", "s3cret"]);
    let client = client();
    let public = [
        "/",
        "/playground.js",
        "/playground.css",
        "/health",
        "/ready",
        "/docs/",
        // Where a client learns how to get a token (404 here: no auth.jwt).
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ];
    let mut checked = 0;
    for (methods, path) in flowhost::HTTP_ROUTES {
        let concrete = path
            .replace("{flow}", "echo")
            .replace("{name}", "p")
            .replace("{id}", "r1");
        for method in methods.split(' ') {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = client.request(method.clone(), server.url(&concrete));
            if method == reqwest::Method::POST {
                request = request.json(&json!({"query": "x"}));
            }
            if concrete == "/mcp" {
                request = request.header("accept", "application/json, text/event-stream");
            }
            let status = request.send().await.unwrap().status();
            if public.contains(path) {
                assert_ne!(status, 401, "{method} {concrete} is public");
            } else {
                assert_eq!(status, 401, "{method} {concrete} answered without the key");
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} route methods checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_everything_but_health() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["--api-key", "s3cret"]);
    let client = client();
    assert_eq!(
        client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in ["/flows", "/openapi.json", "/metrics", "/v1/models"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        // No tokens configured: no resource metadata to point at.
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let wrong = client
        .post(server.url("/echo"))
        .bearer_auth("nope")
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .post(server.url("/echo"))
        .bearer_auth("s3cret")
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_streams_end_cleanly() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let mut server = Server::start(flows.path(), &["http.shutdown_timeout=4"]);
    let client = client();
    let response = client
        .post(server.url("/ticks"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    server.terminate();
    // Shutdown began: the host still runs (the stream has its 4 s) but takes no new
    // connection.
    let began = wait_for(Duration::from_secs(10), || {
        server.log().contains("shutting down: no new connections")
    });
    assert!(began.is_some(), "{}", server.log());
    assert!(server.child.try_wait().unwrap().is_none(), "exited already");
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let refused = fresh.get(server.url("/health")).send().await;
    assert!(
        refused.is_err(),
        "a new connection was served during shutdown: {refused:?}"
    );
    assert!(server.child.try_wait().unwrap().is_none(), "exited already");
    let mut rest = String::new();
    while let Some(bytes) = stream.next().await {
        rest.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
    }
    assert!(rest.contains("\"chunk_type\":\"error\",\"chunk\":\"the server is shutting down; the stream was ended\""), "{rest}");
    assert!(rest.ends_with("data:[DONE]\n\n"));
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "exit {exit:?}: {}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_and_its_assets_are_served_locally() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let page = client
        .get(server.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/openapi.json"));
    for asset in ["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"] {
        assert!(page.contains(asset), "page links {asset}");
        let response = client.get(server.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 10_000, "{asset}");
    }
    assert!(!page.contains("https://"), "no CDN links");
}

/// SIGTERM with a drain delay: `/ready` turns 503 at once while requests are still served,
/// then the host stops accepting; `/health` stays the liveness probe throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_before_it_stops_accepting() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let mut server = Server::start(flows.path(), &["http.drain_delay=3"]);
    let client = client();
    let ready = client.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let health: Value = client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hash = health["flows_hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 16);
    assert!(health["plugins_hash"].is_string());
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("flowhost_served_info{{flows_hash=\"{hash}\"")),
        "{metrics}"
    );
    let term = Instant::now();
    server.terminate();
    let draining = wait_async(Duration::from_secs(10), || async {
        client
            .get(server.url("/ready"))
            .send()
            .await
            .unwrap()
            .status()
            == 503
    })
    .await;
    assert!(
        draining.is_some(),
        "/ready did not turn 503: {}",
        server.log()
    );
    let echo = client
        .post(server.url("/echo"))
        .json(&json!({"query": "still served"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        echo.status(),
        200,
        "requests are still served while draining"
    );
    assert_eq!(
        client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{}", server.log());
    assert!(
        term.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        term.elapsed()
    );
    assert!(
        server.log().contains("http.drain_delay"),
        "{}",
        server.log()
    );
}

/// Every event stream tells nginx not to buffer it: FlowLLM SSE, the OpenAI stream and MCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_stream_disables_proxy_buffering() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let sse = client
        .post(server.url("/count"))
        .json(&json!({"n": 2}))
        .send()
        .await
        .unwrap();
    let openai = client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "count", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let mcp = client
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    for (name, response) in [("sse", sse), ("openai", openai), ("mcp", mcp)] {
        assert_eq!(response.status(), 200, "{name}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "{name}"
        );
        assert_eq!(response.headers()["x-accel-buffering"], "no", "{name}");
    }
}

/// Admission control: `limits.max_concurrency` runs at once, `limits.max_queue` waiting, the
/// rest refused at once with 503 + Retry-After naming the flow (OpenAI's error shape on its
/// route); queued and refused runs are counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_flow_queues_then_refuses() {
    let flows = folder(&[(
        "f.yaml",
        "gated:\n  flow_content: TickOp(n=1000, interval_ms=300)\n  stream: true\n  limits: {max_concurrency: 1, max_queue: 1}\nfree:\n  flow_content: EchoOp()\n",
    )]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let first = client
        .post(server.url("/gated"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    // The second waits in line: its run starts only once the first is over. (Each run would
    // tick for five minutes: the first holds its slot for as long as the test needs.)
    let second = {
        let (client, url) = (client.clone(), server.url("/gated"));
        tokio::spawn(async move {
            let response = client.post(url).json(&json!({})).send().await.unwrap();
            let status = response.status();
            let mut body = response.bytes_stream();
            let first_event = body.next().await.map(|part| part.unwrap());
            (status, first_event, Instant::now())
        })
    };
    wait_async(Duration::from_secs(30), || async {
        server.metric(&client, "flowhost_runs_queued").await >= 1.0
    })
    .await
    .expect("the second run waits in line");
    let third = client
        .post(server.url("/gated"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    // An expected 503 is a warning in the log, not an error.
    let logged = wait_for(Duration::from_secs(30), || {
        server.log().contains("answered 503 (busy or draining)")
    });
    assert!(logged.is_some(), "{}", server.log());
    assert!(!server.log().contains("ERROR"), "{}", server.log());
    let body: Value = third.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("flow `gated` is busy") && detail.contains("limits.max_concurrency"),
        "{detail}"
    );
    let openai = client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "gated", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(openai.status(), 503);
    let body: Value = openai.json().await.unwrap();
    assert_eq!(body["error"]["code"], "flow_busy", "{body}");
    // Other flows are not held up.
    let free = client
        .post(server.url("/free"))
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(free.status(), 200);
    assert!(
        !second.is_finished(),
        "the queued run started while the first ran"
    );
    // The client of the first run goes away: its run ends and the queued one starts.
    let released = Instant::now();
    drop(first);
    let (status, first_event, at) = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the queued run started")
        .unwrap();
    assert_eq!(status, 200);
    let first_event = String::from_utf8_lossy(&first_event.expect("an event")).into_owned();
    assert!(first_event.contains("tick 0"), "{first_event}");
    assert!(
        at >= released,
        "the queued run started before the first ended"
    );
    assert!(server.metric(&client, "flowhost_runs_rejected_total").await >= 2.0);
}

/// Waiting ops do not starve other flows: with 600 slow streams open (each op holds a thread
/// while it waits for its next tick; 512 threads used to be the cap), an unrelated JSON call
/// is answered while they are all still running (a starved call would wait for one to end,
/// minutes later). How fast it answers is a benchmark's figure (`flowhost-bench load URL
/// starvation`; 5,000 streams in BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_streams_do_not_starve_other_flows() {
    let flows = folder(&[(
        "f.yaml",
        "slow:\n  flow_content: TickOp(n=300, interval_ms=1000)\n  stream: true\necho:\n  flow_content: EchoOp()\n",
    )]);
    let server = Server::start(flows.path(), &[]);
    flowhost::llm::tls_init();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streams: Vec<_> = (0..600)
        .map(|_| {
            let (client, url, opened) = (client.clone(), server.url("/slow"), opened.clone());
            tokio::spawn(async move {
                let response = client.post(url).json(&json!({})).send().await.unwrap();
                let mut body = response.bytes_stream();
                body.next().await.unwrap().unwrap();
                opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Hold the stream until the test ends.
                while let Some(Ok(_)) = body.next().await {}
            })
        })
        .collect();
    let started = Instant::now();
    while opened.load(std::sync::atomic::Ordering::SeqCst) < 600 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "streams did not open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.metric(&client, "flowhost_ops_running").await >= 600.0);
    for i in 0..10 {
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            client
                .post(server.url("/echo"))
                .json(&json!({"query": format!("probe {i}")}))
                .send(),
        )
        .await
        .expect("an unrelated call waited for the streams")
        .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Answered while every stream still ran (each lasts five minutes).
    assert!(server.metric(&client, "flowhost_ops_running").await >= 600.0);
    for stream in streams {
        stream.abort();
    }
}

/// `GET /events`: the whole catalog at once, then again after an edit of a flow file; the
/// playground page and its assets load without the API key, the events do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_follows_flow_file_edits() {
    let flows = folder(&[("f.yaml", "echo:\n  flow_content: EchoOp()\n")]);
    let server = Server::start(flows.path(), &["--api-key", "k"]);
    let client = client();
    for path in ["/", "/playground.js", "/playground.css"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let page = client.get(server.url("/")).send().await.unwrap();
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("connect-src 'self'"));
    let refused = client.get(server.url("/events")).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    let response = client
        .get(server.url("/events"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut next_catalog = async || -> Value {
        loop {
            if let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if let Some(data) = event.strip_prefix("event: catalog\ndata: ") {
                    return serde_json::from_str(data.trim_end()).unwrap();
                }
                continue;
            }
            let bytes = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream stays open")
                .unwrap();
            text.push_str(std::str::from_utf8(&bytes).unwrap());
        }
    };
    let first = next_catalog().await;
    let names = |catalog: &Value| -> Vec<String> {
        catalog["flows"]["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&first), ["echo"]);
    assert!(first["ops"]["ops"].as_array().unwrap().len() > 3);
    std::fs::write(
        flows.path().join("f.yaml"),
        "echo:\n  flow_content: EchoOp()\nadded:\n  flow_content: EchoOp()\n",
    )
    .unwrap();
    let second = next_catalog().await;
    assert_eq!(names(&second), ["added", "echo"]);
    assert!(second["generation"].as_u64() > first["generation"].as_u64());
    assert_ne!(second["flows_hash"], first["flows_hash"]);
}

/// An async run's id is what `GET` / `DELETE /runs/{id}` trust, so it must not be guessable
/// from another one: 26 characters of base32 (128 random bits), no shared prefix, no counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_run_ids_are_unguessable() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let mut ids = Vec::new();
    for _ in 0..8 {
        let accepted: Value = client
            .post(server.url("/echo"))
            .header("prefer", "respond-async")
            .json(&json!({"query": "x"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(accepted["run_id"].as_str().unwrap().to_string());
    }
    let alphabet = "0123456789abcdefghjkmnpqrstvwxyz";
    for id in &ids {
        assert_eq!(id.len(), 26, "{id}");
        assert!(id.chars().all(|c| alphabet.contains(c)), "{id}");
    }
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    // Eight ids from one process in a row: with random ids, a common prefix of 6 characters
    // (28 bits: the first character carries 3) between any two of the 28 pairs is a one in
    // ~10 million event; an id built from the time, the pid or a counter shares far more.
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            let shared = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
            assert!(shared < 6, "{a} and {b} share a {shared}-character prefix");
        }
    }
    // The old form was `{time:x}{pid:x}-{counter}`: nothing of it remains.
    assert!(ids.iter().all(|id| !id.contains('-')), "{ids:?}");
}

/// `Prefer: respond-async`: 202 with `Location`, the run goes on without the connection;
/// poll it, replay its events from the start, cancel one, get the same run back for the same
/// `Idempotency-Key`, and see a finished run go after `runs.retention`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_runs_start_poll_replay_cancel_and_expire() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["--set", "runs.retention=2"]);
    let client = client();
    let start = |flow: &str, body: Value| {
        client
            .post(server.url(&format!("/{flow}")))
            .header("prefer", "respond-async")
            .json(&body)
    };

    // A stream flow in the background.
    let response = start("echo_stream", json!({"query": "later"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["preference-applied"], "respond-async");
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/runs/{}", accepted["run_id"].as_str().unwrap())
    );
    assert_eq!(accepted["status_url"], location.as_str());
    let done = wait_async(Duration::from_secs(10), || async {
        let run: Value = client
            .get(server.url(&location))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        run["status"] == "completed"
    })
    .await;
    assert!(done.is_some(), "the run never completed");
    let run: Value = client
        .get(server.url(&location))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["answer"], "later", "{run}");
    assert_eq!(run["success"], true);
    // Its events, replayed from the start, end with [DONE].
    let replay = client
        .get(server.url(&format!("{location}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["content-type"], "text/event-stream");
    let body = replay.text().await.unwrap();
    let replayed = events(&body);
    assert_eq!(
        replayed.last().map(String::as_str),
        Some("[DONE]"),
        "{body}"
    );
    let first: Value = serde_json::from_str(&replayed[0]).unwrap();
    assert_eq!(first["chunk"], "later");
    assert_eq!(first["chunk_type"], "answer");

    // Cancel an endless one; follow its events live until they end.
    let accepted: Value = start("ticks", json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["run_id"].as_str().unwrap().to_string();
    let mut live = client
        .get(server.url(&format!("/runs/{id}/events")))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap();
    assert!(first.unwrap().unwrap().starts_with(b"data:"));
    let cancelled: Value = client
        .delete(server.url(&format!("/runs/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let mut tail = String::new();
    while let Ok(Some(Ok(bytes))) = tokio::time::timeout(Duration::from_secs(30), live.next()).await
    {
        tail.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert!(tail.ends_with("data:[DONE]\n\n"), "{tail}");
    let stopped = wait_async(Duration::from_secs(30), || async {
        server.metric(&client, "flowhost_ops_running").await == 0.0
    })
    .await;
    assert!(stopped.is_some(), "the op kept running");

    // The same Idempotency-Key gives the same run.
    let once: Value = start("echo", json!({"query": "once"}))
        .header("idempotency-key", "k-1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = start("echo", json!({"query": "once"}))
        .header("idempotency-key", "k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["run_id"], once["run_id"]);

    // Unknown, and (after runs.retention = 2 s) gone.
    let missing = client.get(server.url("/runs/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gone = client.get(server.url(&location)).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let detail: Value = gone.json().await.unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains("runs.retention"),
        "{detail}"
    );
}

/// Issue 21: an op promoted to run inline that turns slow on one input must not stall the
/// host. `BurnOp` is fast (`ms` = 0) until promoted, then 2 × (runtime workers) calls each
/// burn 2 s of CPU at once while another client calls `EchoOp` every 5 ms and asks `/ready`.
/// Before the inline bound, those calls waited out the burn (3 s for 3 s calls); now at most
/// all workers but one run inline. Figures live in the benchmark (`flowhost-bench stall`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_inline_call_never_stalls_the_host() {
    let flows = folder(&[(
        "f.yaml",
        "burn:\n  flow_content: BurnOp()\necho:\n  flow_content: EchoOp()\n",
    )]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let placement = || async {
        let ops: Value = client
            .get(server.url("/ops"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ops["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["name"] == "BurnOp")
            .map(|op| op["runs"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let mut calls = 0;
    while placement().await != "inline" {
        assert!(calls < 2000, "BurnOp was never promoted to inline");
        let response = client
            .post(server.url("/burn"))
            .json(&json!({"ms": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        calls += 1;
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let burns: Vec<_> = (0..2 * workers)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/burn"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"ms": 10_000}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    // Every burn has started (each holds a thread, inline or not, for 10 s of CPU).
    let burning = wait_async(Duration::from_secs(30), || async {
        server.metric(&client, "flowhost_ops_running").await >= (2 * workers) as f64
    })
    .await;
    assert!(burning.is_some(), "the burns did not start");
    // The burns past the inline bound run on the op pool, where the watch lowers a call that
    // burns CPU without a chunk to nice 19, so the runtime's threads (nice 0) take the cores
    // from it whenever they want them.
    // All burns but the inline ones (at most all workers but one) run there.
    let pooled = 2 * workers - workers.saturating_sub(1).max(1);
    let lowered = wait_async(Duration::from_secs(5), || async {
        pool_nice(server.child.id())
            .iter()
            .filter(|&&n| n == 19)
            .count()
            >= pooled
    })
    .await;
    assert!(
        lowered.is_some(),
        "the burning pool threads were not lowered: {:?}",
        pool_nice(server.child.id())
    );
    assert!(
        server
            .metric(&client, "flowhost_op_calls_lowered_total")
            .await
            >= pooled as f64
    );
    let (mut worst_echo, mut worst_ready) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..20 {
        let asked = Instant::now();
        let response = client
            .post(server.url("/echo"))
            .json(&json!({"query": "still here"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        worst_echo = worst_echo.max(asked.elapsed());
        let asked = Instant::now();
        let response = client.get(server.url("/ready")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        worst_ready = worst_ready.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every answer came while all the burns still ran: a stalled host answers only once
    // they end. (The latency figures are `flowhost-bench stall`'s, in a release build.)
    assert!(
        burns.iter().all(|burn| !burn.is_finished()),
        "a burn ended before the probes were answered"
    );
    eprintln!("worst echo {worst_echo:?}, worst /ready {worst_ready:?} during {} slow inline-promoted calls (debug build)", 2 * workers);
    for burn in burns {
        assert_eq!(burn.await.unwrap(), 200);
    }
    // A burn that ended gives its thread back at normal priority (or the thread ends, where
    // the process may not raise a priority): later calls do not inherit nice 19.
    let restored = wait_async(Duration::from_secs(5), || async {
        pool_nice(server.child.id()).iter().all(|&n| n == 0)
    })
    .await;
    assert!(
        restored.is_some(),
        "pool threads after the burns: {:?}",
        pool_nice(server.child.id())
    );
}

/// The nice value of each op pool thread of process `pid` (`/proc/PID/task/*/stat`).
fn pool_nice(pid: u32) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            (comm.trim() == "flowhost-op").then_some(())?;
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // Field 19 (nice), counted from the state after the parenthesized name.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            fields.get(16)?.parse().ok()
        })
        .collect()
}

/// Issue 21: a streaming op that burns CPU to make its chunks keeps its pool thread at
/// normal priority (at nice 19 its consumer and the client took the cores from it: a
/// 1M-chunk stream ran 2-7× slower). Only a call that burns CPU without a chunk is lowered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_op_keeps_its_priority() {
    let flows = folder(&[(
        "f.yaml",
        "count:\n  flow_content: CountOp()\n  stream: true\n",
    )]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let mut response = client
        .post(server.url("/count"))
        .json(&json!({"n": 3_000_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (mut bytes, mut samples, mut lowered) = (0usize, 0, Vec::new());
    let mut last_sample = Instant::now();
    while let Some(piece) = response.chunk().await.unwrap() {
        bytes += piece.len();
        if last_sample.elapsed() > Duration::from_millis(20) {
            last_sample = Instant::now();
            let nice = pool_nice(server.child.id());
            samples += usize::from(!nice.is_empty());
            lowered.extend(nice.into_iter().filter(|&n| n != 0));
        }
    }
    assert!(bytes > 3_000_000, "the stream ended early: {bytes} bytes");
    assert!(
        samples >= 3,
        "the stream was too short to watch: {samples} samples"
    );
    assert!(
        lowered.is_empty(),
        "the stream's thread was lowered: {lowered:?}"
    );
}

/// Issue 22, item 7: an `Idempotency-Key` reused with another body is refused (422), as
/// payment APIs do; with the same body it returns the first run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_with_another_body_is_refused() {
    let flows = folder(&[(
        "f.yaml",
        "echo:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string}\n",
    )]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let post = |query: &'static str| {
        client
            .post(server.url("/echo"))
            .header("prefer", "respond-async")
            .header("idempotency-key", "order-7")
            .json(&json!({"query": query}))
            .send()
    };
    let first = post("one").await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = post("one").await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["run_id"], first["run_id"]);
    let other = post("two").await.unwrap();
    assert_eq!(other.status(), 422);
    let body: Value = other.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("order-7") && detail.contains("different body"),
        "{detail}"
    );
}

/// Issue 22, item 8: GET on a flow URL says how to call it (a browser lands on the
/// playground); an unknown path is 404; every such answer has the JSON `detail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_on_a_flow_url_says_how_to_call_it() {
    let flows = folder(&[("f.yaml", "echo:\n  flow_content: EchoOp()\n")]);
    let server = Server::start(flows.path(), &[]);
    flowhost::llm::tls_init();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(server.url("/echo")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("POST a JSON body to /echo"),
        "{body}"
    );
    let response = client
        .get(server.url("/echo"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/#echo");
    let response = client
        .get(server.url("/no_such_path"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no flow named `no_such_path`"),
        "{body}"
    );
    let response = client.put(server.url("/echo")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("PUT is not served"),
        "{body}"
    );
}

/// Issue 22, item 5: every family is in /metrics from the start (HELP, TYPE, 0); a DELETE
/// of a running async run is a cancellation; a failed OpenAI call is a flow error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_there_from_the_start_and_count_every_route() {
    let flows = folder(&[(
        "f.yaml",
        "slow:\n  flow_content: TickOp(n=50, interval_ms=100)\n  stream: true\nfails:\n  flow_content: FailOp(message=\"no\")\n",
    )]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "flowhost_flow_errors_total",
        "flowhost_cancellations_total",
        "flowhost_chunks_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} counter")),
            "{family}: {text}"
        );
        assert!(text.contains(&format!("\n{family} 0")), "{family}: {text}");
    }
    let started: Value = client
        .post(server.url("/slow"))
        .header("prefer", "respond-async")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["run_id"].as_str().unwrap();
    let response = client
        .delete(server.url(&format!("/runs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        server.metric(&client, "flowhost_cancellations_total").await,
        1.0
    );
    let response = client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "fails", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(
        server.metric(&client, "flowhost_flow_errors_total").await,
        1.0
    );
}

/// Issue 22, item 9 (the parts an SDK would not send): a `messages` that is not an array is
/// named as such; a flow's other inputs come as extra fields and are checked like POST's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_route_checks_its_body_like_post_does() {
    let flows = folder(&[(
        "f.yaml",
        "greet:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string, required: true}\n    lang: {type: string, required: true}\n",
    )]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let call = |body: Value| {
        client
            .post(server.url("/v1/chat/completions"))
            .json(&body)
            .send()
    };
    let response = call(json!({"model": "greet", "messages": "hi"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be an array"),
        "{body}"
    );
    let messages = json!([{"role": "user", "content": "hi"}]);
    let response = call(json!({"model": "greet", "messages": messages}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("lang"),
        "{body}"
    );
    let response = call(json!({"model": "greet", "messages": messages, "lang": "fr"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = call(json!({"model": "greet", "messages": messages, "lang": "fr", "seed": 1.5}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// Log lines reach stderr a millisecond's worth at a time while the host serves
/// (`util/logs.rs`): the banner still comes after the lines of loading, and every request's
/// line is there, whole, before the shutdown's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_log_lines_are_whole_in_order_and_none_is_lost() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let mut server = Server::start(flows.path(), &[]);
    let log = server.log();
    let broken = log
        .find("unknown op `NoSuchOp`")
        .expect("the broken flow's warning");
    let banner = log.find("listening on http://").expect("the banner");
    assert!(broken < banner, "{log}");
    let client = client();
    const REQUESTS: usize = 300;
    let calls = futures_util::stream::iter(0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            let url = server.url("/echo");
            async move {
                let response = client
                    .post(url)
                    .json(&json!({"query": format!("q{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    calls.await;
    server.terminate();
    let exited = wait_for(Duration::from_secs(20), || {
        server.child.try_wait().unwrap().is_some()
    });
    assert!(exited.is_some(), "{}", server.log());
    // The reader thread has the pipe's rest once the process is gone.
    let counted = wait_for(Duration::from_secs(5), || {
        server.log().matches("finished processing request").count() == REQUESTS
    });
    let log = server.log();
    assert!(
        counted.is_some(),
        "{} of {REQUESTS} request lines:\n{log}",
        log.matches("finished processing request").count()
    );
    for line in log
        .lines()
        .filter(|l| l.contains("finished processing request"))
    {
        assert!(
            line.starts_with("20") && line.ends_with("status=200"),
            "a torn line: {line}"
        );
    }
    let stopping = log.find("shutting down").expect("the shutdown line");
    let last_request = log
        .rfind("finished processing request")
        .expect("a request line");
    assert!(last_request < stopping, "{log}");
}

/// A host that cannot start serving writes the log lines of its loading before the error
/// that ends it: what is still waiting is written when serving ends, before the error.
#[test]
fn the_lines_before_a_failed_start_come_before_its_error() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("its address").port().to_string();
    for _ in 0..5 {
        let (code, _, stderr) = flowhost(&[
            "serve",
            "--no-watch",
            "--port",
            &port,
            "--flows",
            flows.path().to_str().expect("utf-8"),
        ]);
        assert_eq!(code, 2, "{stderr}");
        let warning = stderr.find("unknown op `NoSuchOp`").expect(&stderr);
        let error = stderr.find("cannot listen on").expect(&stderr);
        assert!(warning < error, "{stderr}");
    }
    // The same over stdio (lines written at once there), stdin closed before `initialize`.
    for _ in 0..5 {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
            .args(["serve", "--transport", "stdio", "--no-watch", "--flows"])
            .arg(flows.path())
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run flowhost");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let serving = stderr.find("serving MCP on stdio").expect(&stderr);
        let error = stderr.find("MCP session failed to start").expect(&stderr);
        assert!(serving < error, "{stderr}");
    }
}
