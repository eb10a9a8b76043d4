//! Held under attack (issue 23), through the real binary with raw sockets where a hostile
//! client would use them: slow clients, too many connections, bodies that dodge the limit.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

const FLOWS: &str = "echo:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string}\n\
long_stream:\n  flow_content: TickOp(n=12, interval_ms=250)\n  stream: true\n";

fn address(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the socket (or `limit` passes); returns what it sent.
async fn read_to_close(socket: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_after_the_timeouts_while_ready_stays_fast() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(
        flows.path(),
        &[
            "http.header_timeout=1",
            "http.body_timeout=1.5",
            "http.keepalive_timeout=2",
        ],
    );
    let address = address(&server);
    let client = client();
    // Every slow form, 30 sockets each: nothing, half a request line, half the headers, half
    // a body, a chunked body that stops, and an idle keep-alive connection.
    let forms: [&[u8]; 5] = [
        b"",
        b"GET /hea",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: appl",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\": ",
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"query\":\r\n",
    ];
    let opened = Instant::now();
    let mut sockets = Vec::new();
    for (kind, form) in forms.iter().enumerate() {
        for _ in 0..30 {
            let mut socket = TcpStream::connect(&address).await.unwrap();
            socket.write_all(form).await.unwrap();
            sockets.push((kind, socket));
        }
    }
    let mut idle = Vec::new();
    for _ in 0..30 {
        let mut socket = TcpStream::connect(&address).await.unwrap();
        socket
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(socket);
    }
    // A stream that runs past every timeout is not idle: it must reach its end.
    let stream = {
        let client = client.clone();
        let url = server.url("/long_stream");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    // While they are held, the host answers.
    let asked = Instant::now();
    let response = client.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    eprintln!(
        "figure: /ready with 180 slow sockets held answered in {:.1} ms",
        asked.elapsed().as_secs_f64() * 1e3
    );
    let response = client
        .post(server.url("/echo"))
        .json(&json!({"query": "still here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Each is closed: the head forms without an answer, the body forms with a 408.
    for (kind, mut socket) in sockets {
        let got = read_to_close(&mut socket, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("slow form {kind} was not closed"));
        if kind >= 3 {
            assert!(got.starts_with("HTTP/1.1 408"), "form {kind}: {got}");
            assert!(got.contains("http.body_timeout"), "form {kind}: {got}");
        } else {
            assert_eq!(got, "", "form {kind}");
        }
    }
    for mut socket in idle {
        let got = read_to_close(&mut socket, Duration::from_secs(20)).await;
        assert_eq!(
            got.as_deref(),
            Some(""),
            "an idle keep-alive connection stays open"
        );
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(1),
        "closed before the timeouts"
    );
    let events = stream.await.unwrap();
    assert_eq!(
        events.matches("data:").count(),
        12 + 1,
        "the long stream was cut: {events}"
    );
    assert!(
        server
            .metric(&client, "flowhost_http_connections_timed_out_total")
            .await
            >= 90.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_new_one_gets_503_at_once() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["http.max_connections=20"]);
    let address = address(&server);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&address).await.unwrap());
    }
    // Let the host accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(&address).await.unwrap();
    let got = read_to_close(&mut extra, Duration::from_secs(10))
        .await
        .expect("the extra connection was not closed");
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("http.max_connections"), "{got}");
    assert!(got.to_lowercase().contains("retry-after: 1"), "{got}");
    drop(held);
    // Freed, the host serves again (and counted the refusal).
    let client = client();
    let ok = wait_async(Duration::from_secs(10), || async {
        client
            .get(server.url("/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok.is_some(), "no answer after the held connections closed");
    assert!(
        server
            .metric(&client, "flowhost_http_connections_refused_total")
            .await
            >= 1.0
    );
    assert!(server.log().contains("http.max_connections"));
}

/// One request on a fresh socket; the raw answer.
async fn raw(address: &str, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(address).await.expect("connect");
    socket.write_all(request).await.expect("send");
    read_to_close(&mut socket, Duration::from_secs(20))
        .await
        .expect("no answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_body_limit_holds_on_every_route_however_the_body_arrives() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["http.body_limit=2000"]);
    let address = address(&server);
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"query":"{}"}}}}}}"#,
        "x".repeat(5000)
    );
    let chunked = |path: &str| {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for piece in big.as_bytes().chunks(1000) {
            request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            request.extend_from_slice(piece);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        request
    };
    for path in ["/mcp", "/echo", "/v1/chat/completions"] {
        let got = raw(&address, &chunked(path)).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{path}: {got}");
        assert!(got.contains("http.body_limit"), "{path}: {got}");
        let declared = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        );
        let got = raw(&address, declared.as_bytes()).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{path}: {got}");
    }
    // Under the limit, a chunked body is served whole.
    let small = r#"{"query": "chunked"}"#;
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\n",
        small.len()
    );
    let got = raw(&address, request.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let body: Value = serde_json::from_str(got.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["answer"], "chunked");
}

/// Starts an async run; its id.
async fn start_async(client: &reqwest::Client, server: &Server, flow: &str, body: Value) -> String {
    let response = client
        .post(server.url(&format!("/{flow}")))
        .header("prefer", "respond-async")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("202 body");
    body["run_id"].as_str().expect("run_id").to_string()
}

async fn run_status(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    client
        .get(server.url(&format!("/runs/{id}")))
        .send()
        .await
        .expect("GET /runs")
        .json()
        .await
        .expect("status body")
}

/// Items 3 and 4: what async runs keep is counted as it costs, bounded by `runs.max_bytes`
/// across runs, and readers of a large run replay it a batch at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_runs_and_their_readers_stay_within_runs_max_bytes() {
    const MIB: u64 = 1024;
    let flows = folder(&[(
        "f.yaml",
        "count:\n  flow_content: CountOp()\n  stream: true\n",
    )]);
    let server = Server::start(flows.path(), &["runs.max_bytes=67108864"]);
    let client = client();
    // Warm up (runtime threads, op thread, allocator arenas) with one small run.
    let id = start_async(&client, &server, "count", json!({"n": 1000})).await;
    wait_async(Duration::from_secs(20), || async {
        run_status(&client, &server, &id).await["status"] == "completed"
    })
    .await
    .expect("the warm-up run did not complete");
    let baseline = server.rss_kib();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(start_async(&client, &server, "count", json!({"n": 1_000_000_000u64})).await);
    }
    for id in &ids {
        let truncated = wait_async(Duration::from_secs(120), || async {
            run_status(&client, &server, id).await["events_truncated"] == true
        })
        .await;
        assert!(truncated.is_some(), "run {id} never stopped keeping chunks");
    }
    let kept = server.rss_kib();
    eprintln!(
        "figure: five async runs of n=1e9 grew RSS by {} MiB (runs.max_bytes 64 MiB)",
        kept.saturating_sub(baseline) / MIB
    );
    // 64 MiB is the bound; allow as much again for what the runs hold in flight.
    assert!(
        kept.saturating_sub(baseline) < 128 * MIB,
        "five runs grew RSS by {} MiB (runs.max_bytes is 64 MiB)",
        kept.saturating_sub(baseline) / MIB
    );
    // Three readers of the largest log that read one batch and stop.
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut response = client
            .get(server.url(&format!("/runs/{}/events", ids[0])))
            .send()
            .await
            .expect("events");
        assert_eq!(response.status(), 200);
        let first = response.chunk().await.expect("a first batch");
        assert!(first.is_some_and(|b| b.starts_with(b"data:")));
        readers.push(response);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reading = server.rss_kib();
    eprintln!(
        "figure: three stalled readers of one run grew RSS by {} KiB",
        reading.saturating_sub(kept)
    );
    assert!(
        reading.saturating_sub(kept) < 24 * MIB,
        "three stalled readers grew RSS by {} MiB",
        reading.saturating_sub(kept) / MIB
    );
    drop(readers);
    for id in &ids {
        let response = client
            .delete(server.url(&format!("/runs/{id}")))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(response.status(), 200);
    }
}

/// Opens an MCP session over HTTP (initialize, then `notifications/initialized`); its id.
async fn mcp_open(client: &reqwest::Client, server: &Server) -> reqwest::Response {
    client
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "attacks", "version": "1"}}}),
        )
        .send()
        .await
        .expect("initialize")
}

async fn mcp_session(client: &reqwest::Client, server: &Server) -> String {
    let response = mcp_open(client, server).await;
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_string();
    response.text().await.expect("initialize result");
    let response = mcp_post(
        client,
        server,
        &session,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(response.status(), 202);
    session
}

async fn mcp_post(
    client: &reqwest::Client,
    server: &Server,
    session: &str,
    message: Value,
) -> reqwest::Response {
    client
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-06-18")
        .json(&message)
        .send()
        .await
        .expect("POST /mcp")
}

/// A request's answer in a session (the JSON-RPC message in the SSE body).
async fn mcp_call(
    client: &reqwest::Client,
    server: &Server,
    session: &str,
    id: u64,
    method: &str,
    params: Value,
) -> Value {
    let response = mcp_post(
        client,
        server,
        session,
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
    )
    .await;
    let text = response.text().await.expect("answer");
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no answer to {method}: {text}"))
}

async fn mcp_close(client: &reqwest::Client, server: &Server, session: &str) {
    let response = client
        .delete(server.url("/mcp"))
        .header("mcp-session-id", session)
        .send()
        .await
        .expect("DELETE /mcp");
    assert!(response.status().is_success(), "{}", response.status());
}

/// Item 5: a session's subscriptions are bounded in number and URI length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_subscriptions_are_bounded_per_session() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    let session = mcp_session(&client, &server).await;
    let long = format!("flow://{}", "x".repeat(100_000));
    let answer = mcp_call(
        &client,
        &server,
        &session,
        2,
        "resources/subscribe",
        json!({"uri": long}),
    )
    .await;
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 2048"));
    for i in 0..100 {
        let uri = format!("flow://many/{i}");
        let answer = mcp_call(
            &client,
            &server,
            &session,
            10 + i,
            "resources/subscribe",
            json!({"uri": uri}),
        )
        .await;
        assert!(answer.get("error").is_none(), "{answer}");
    }
    let answer = mcp_call(
        &client,
        &server,
        &session,
        500,
        "resources/subscribe",
        json!({"uri": "flow://one/more"}),
    )
    .await;
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unsubscribe"));
    // Room again after an unsubscribe.
    mcp_call(
        &client,
        &server,
        &session,
        501,
        "resources/unsubscribe",
        json!({"uri": "flow://many/0"}),
    )
    .await;
    let answer = mcp_call(
        &client,
        &server,
        &session,
        502,
        "resources/subscribe",
        json!({"uri": "flow://one/more"}),
    )
    .await;
    assert!(answer.get("error").is_none(), "{answer}");
    mcp_close(&client, &server, &session).await;
}

/// Item 6: an ended session leaves nothing behind, and live sessions are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_mcp_sessions_free_their_memory_and_live_ones_are_capped() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["http.mcp_max_sessions=5"]);
    let client = client();
    let cycle = |n: usize| {
        let (client, server) = (&client, &server);
        async move {
            for _ in 0..n {
                let session = mcp_session(client, server).await;
                mcp_close(client, server, &session).await;
            }
        }
    };
    cycle(300).await;
    let warm = server.rss_kib();
    cycle(1500).await;
    let after = server.rss_kib();
    eprintln!(
        "figure: 1,500 MCP initialize → DELETE cycles grew RSS by {} KiB",
        after.saturating_sub(warm)
    );
    assert!(
        after.saturating_sub(warm) < 4 * 1024,
        "1,500 initialize → DELETE cycles grew RSS by {} KiB",
        after.saturating_sub(warm)
    );
    // Five live sessions is the cap: the sixth is refused until one ends.
    let mut live = Vec::new();
    for _ in 0..5 {
        live.push(mcp_session(&client, &server).await);
    }
    let refused = mcp_open(&client, &server).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("http.mcp_max_sessions"));
    // The live ones go on.
    let answer = mcp_call(&client, &server, &live[0], 7, "tools/list", json!({})).await;
    assert!(answer["result"]["tools"].is_array(), "{answer}");
    mcp_close(&client, &server, &live.pop().unwrap()).await;
    let session = mcp_session(&client, &server).await;
    mcp_close(&client, &server, &session).await;
}

/// Item 8: entries named like flow files that cannot be read as one, and a folder that does
/// not exist, are diagnostics naming the path, in `check` and in `/flows`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_flow_folders_are_reported_path_by_path() {
    let flows = folder(&[("a.yaml", "good:\n  flow_content: EchoOp()\n")]);
    let dir = flows.path();
    std::os::unix::fs::symlink("loop2.yaml", dir.join("loop1.yaml")).unwrap();
    std::os::unix::fs::symlink("loop1.yaml", dir.join("loop2.yaml")).unwrap();
    std::os::unix::fs::symlink("nowhere.yaml", dir.join("dangling.yaml")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("x.yaml").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::fs::create_dir(dir.join("z.yaml")).unwrap();
    let expected = [
        ("dangling.yaml", "dangling symlink"),
        ("loop1.yaml", "symlink loop"),
        ("x.yaml", "not a regular file"),
        ("z.yaml", "a folder named like a flow file"),
    ];
    let (code, out, err) = flowhost(&["check", "--flows", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let err = out + &err;
    for (name, what) in expected {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("/{name}: error:")))
            .unwrap_or_else(|| panic!("{name} not reported: {err}"));
        assert!(line.contains(what), "{line}");
    }
    let (code, out, err) = flowhost(&["check", "--flows", "/no/such/flows/folder"]);
    assert_eq!(code, 1, "{err}");
    let err = out + &err;
    assert!(
        err.contains("/no/such/flows/folder: error: the flows folder does not exist"),
        "{err}"
    );
    // Served: the good flow runs, and /flows lists each problem.
    let server = Server::start(dir, &[]);
    let client = client();
    let listing: Value = client
        .get(server.url("/flows"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let errors = listing["errors"].to_string();
    for (name, _) in expected {
        assert!(
            errors.contains(name),
            "{name} missing from /flows errors: {errors}"
        );
    }
    let response = client
        .post(server.url("/good"))
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Item 9: a flow named like a route is a diagnostic, not a flow nobody can reach.
#[test]
fn a_flow_named_like_a_route_is_refused() {
    let flows = folder(&[(
        "f.yaml",
        "health:\n  flow_content: EchoOp()\nfine:\n  flow_content: EchoOp()\n",
    )]);
    let (code, out, err) = flowhost(&["check", "--flows", flows.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains("flow name `health` is taken by the host's own `/health` route"),
        "{out}"
    );
}

/// Item 9: async runs have a bound of their own (`runs.max_running`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_runs_past_runs_max_running_are_refused_with_retry_after() {
    let flows = folder(&[(
        "f.yaml",
        "slow:\n  flow_content: TickOp(n=100, interval_ms=100)\n  stream: true\n",
    )]);
    let server = Server::start(flows.path(), &["runs.max_running=3"]);
    let client = client();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(start_async(&client, &server, "slow", json!({})).await);
    }
    let refused = client
        .post(server.url("/slow"))
        .header("prefer", "respond-async")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("runs.max_running"),
        "{body}"
    );
    // A run that is not async is not counted against it.
    let direct = client
        .post(server.url("/slow"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    drop(direct);
    // One ends: room for another.
    let ended = client
        .delete(server.url(&format!("/runs/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let room = wait_async(Duration::from_secs(10), || async {
        client
            .post(server.url("/slow"))
            .header("prefer", "respond-async")
            .json(&json!({}))
            .send()
            .await
            .is_ok_and(|r| r.status() == 202)
    })
    .await;
    assert!(room.is_some(), "no room after a run ended");
}

/// The probes that held when issue 23's 49 attacks were run, kept so they go on holding:
/// auth bypass forms, path tricks, request smuggling, deep nesting, URI schemes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_that_held_stay_held() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["--api-key", "k3y-0123456789"]);
    let address = address(&server);
    let client = client();
    // Auth: every form but `Authorization: Bearer <key>` is refused.
    let body = json!({"query": "x"});
    for (name, value) in [
        ("authorization", "Bearer k3y-0123456789x"),
        ("authorization", "Bearer k3y-012345678"),
        ("authorization", "Basic azN5LTAxMjM0NTY3ODk6"),
        ("authorization", "k3y-0123456789"),
        ("authorization", "Bearer"),
        ("x-api-key", "k3y-0123456789"),
    ] {
        let response = client
            .post(server.url("/echo"))
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{name}: {value}");
    }
    for query in [
        "?api_key=k3y-0123456789",
        "?key=k3y-0123456789",
        "?token=k3y-0123456789",
    ] {
        let response = client
            .post(server.url(&format!("/echo{query}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{query}");
    }
    // Path tricks reach no route without the key (and none outside the API with it).
    for path in [
        "/health/../echo",
        "/%2e%2e/echo",
        "//echo",
        "/docs/../echo",
        "/docs/..%2fecho",
        "/playground.js/../flows",
        "/runs/..%2f..%2fetc%2fpasswd",
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let got = raw(&address, request.as_bytes()).await;
        let status: u16 = got[9..12].parse().unwrap();
        assert!(
            matches!(status, 400 | 401 | 404 | 405),
            "{path}: {}",
            got.lines().next().unwrap_or_default()
        );
    }
    // Smuggling: both Content-Length and chunked, or two lengths, never yield a second
    // request run by the host.
    let key = "Authorization: Bearer k3y-0123456789\r\n";
    for request in [
        format!("POST /echo HTTP/1.1\r\nHost: localhost\r\n{key}Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /echo HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        format!("POST /echo HTTP/1.1\r\nHost: localhost\r\n{key}Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}"),
        format!("POST /echo HTTP/1.1\r\nHost: localhost\r\n{key}Content-Type: application/json\r\nTransfer-Encoding: chunked, identity\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"),
    ] {
        let got = raw(&address, request.as_bytes()).await;
        assert!(
            got.matches("HTTP/1.1 200").count() <= 1,
            "a smuggled request was served: {got}"
        );
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let response = client
        .post(server.url("/echo"))
        .bearer_auth("k3y-0123456789")
        .header("content-type", "application/json")
        .body(format!("{{\"query\": {deep}}}"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    // URI schemes: a resource read never opens a file or a URL.
    for uri in [
        "file:///etc/passwd",
        "http://169.254.169.254/",
        "flow://../../etc/passwd",
    ] {
        let response = client
            .get(server.url(&format!(
                "/resources/read?uri={}",
                uri.replace(':', "%3A").replace('/', "%2F")
            )))
            .bearer_auth("k3y-0123456789")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_client_error(), "{uri}: {status} {text}");
        assert!(!text.contains("root:"), "{uri}: {text}");
    }
    // Still serving.
    let response = client
        .post(server.url("/echo"))
        .bearer_auth("k3y-0123456789")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
