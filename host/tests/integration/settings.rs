//! Settings that bound the host, each driven through the binary as a user sets it:
//! `runs.max_runs`, `ops.max_concurrency` (host-wide), `ops.max_workers`,
//! `ops.worker_idle_timeout` and the worker's check of the library it loads, the API key on
//! `/mcp` and `/runs/*`, and MCP op log lines dropped under pressure.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::util::*;

const FLOWS: &str = r#"
echo:
  flow_content: EchoOp()
  input_schema:
    query: {type: string, required: true}
ticks:
  flow_content: TickOp(n=100000, interval_ms=100)
  stream: true
isolated_ticks:
  flow_content: TickOp(n=5, interval_ms=100)
  stream: true
  isolation: process
isolated_echo:
  flow_content: EchoOp()
  isolation: process
"#;

const LONG: Duration = Duration::from_secs(20);

async fn start_async(client: &reqwest::Client, server: &Server, query: &str) -> String {
    let accepted: Value = client
        .post(server.url("/echo"))
        .header("prefer", "respond-async")
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    accepted["run_id"].as_str().expect("a run id").to_string()
}

/// `runs.max_runs`: past it, the oldest finished runs are forgotten (404) and the newest stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_max_runs_forgets_the_oldest_finished_runs() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["runs.max_runs=3"]);
    let client = client();
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = start_async(&client, &server, &format!("run {i}")).await;
        // Each finishes before the next starts, so the order of ending is the order here.
        let finished = wait_async(LONG, || async {
            let status: Value = client
                .get(server.url(&format!("/runs/{id}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            status["status"] == "completed"
        })
        .await;
        assert!(finished.is_some(), "run {i} did not finish");
        ids.push(id);
    }
    let mut statuses = Vec::new();
    for id in &ids {
        let response = client
            .get(server.url(&format!("/runs/{id}")))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 200, 200, 200]);
    let last: Value = client
        .get(server.url(&format!("/runs/{}", ids[4])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(last["answer"], "run 4", "{last}");
}

/// `ops.max_concurrency` bounds runs of every flow together: with 1 and no queue, a second
/// run of another flow is refused (503 + Retry-After) while one streams, and served after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_max_concurrency_bounds_the_runs_of_every_flow() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["ops.max_concurrency=1", "ops.max_queue=0"]);
    let client = client();
    let stream = client
        .post(server.url("/ticks"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    // The first tick proves the run holds its slot.
    let first = body.next().await.expect("a first event").unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("tick"),
        "{first:?}"
    );
    let refused = client
        .post(server.url("/echo"))
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let detail: Value = refused.json().await.unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("the host is busy: 1 runs at once (ops.max_concurrency)"),
        "{detail}"
    );
    // The client goes away (the run would tick for hours): its slot is free.
    drop(body);
    let served = wait_async(LONG, || async {
        client
            .post(server.url("/echo"))
            .json(&json!({"query": "x"}))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert!(served.is_some(), "{}", server.log());
}

/// The SSE `data:` events of one run, each with when it arrived.
async fn timed_events(client: reqwest::Client, url: String) -> Vec<(Instant, String)> {
    let response = client
        .post(url)
        .json(&json!({}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut events = Vec::new();
    while let Some(part) = stream.next().await {
        let text = String::from_utf8_lossy(&part.expect("a body part")).into_owned();
        for line in text.lines().filter(|l| l.starts_with("data:")) {
            events.push((Instant::now(), line.to_string()));
        }
    }
    events
}

fn workers_of(pid: u32) -> usize {
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    children
        .iter()
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("worker"))
        })
        .count()
}

/// `ops.max_workers=1`: two isolated runs at once take turns on one worker process (their
/// events do not interleave); `ops.worker_idle_timeout=5`: the idle worker then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_bounded_and_leave_when_idle() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(
        flows.path(),
        &["ops.max_workers=1", "ops.worker_idle_timeout=5"],
    );
    let client = client();
    let a = tokio::spawn(timed_events(client.clone(), server.url("/isolated_ticks")));
    let b = tokio::spawn(timed_events(client.clone(), server.url("/isolated_ticks")));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    for events in [&a, &b] {
        assert_eq!(events.last().unwrap().1, "data:[DONE]", "{events:?}");
        let ticks = events.iter().filter(|(_, e)| e.contains("tick")).count();
        assert_eq!(ticks, 5, "{events:?}");
    }
    // One worker: the second run's op starts only once the first's is over (its first tick
    // comes after the first run's fourth; each run's events are read by its own task, so the
    // two last-and-first events may arrive in either order).
    let (first, second) = if a[0].0 <= b[0].0 { (&a, &b) } else { (&b, &a) };
    let first_fourth_tick = first.iter().find(|(_, e)| e.contains("tick 3")).unwrap().0;
    let second_first_tick = second.iter().find(|(_, e)| e.contains("tick")).unwrap().0;
    assert!(
        second_first_tick > first_fourth_tick,
        "the runs' ticks interleaved: two workers ran at once: {:?} {:?}",
        first
            .iter()
            .map(|(t, e)| (t.duration_since(first[0].0), e))
            .collect::<Vec<_>>(),
        second
            .iter()
            .map(|(t, e)| (t.duration_since(first[0].0), e))
            .collect::<Vec<_>>()
    );
    assert_eq!(server.metric(&client, "flowhost_workers").await, 1.0);
    assert_eq!(workers_of(server.child.id()), 1);
    // Idle past ops.worker_idle_timeout: the worker process exits.
    let gone = wait_async(LONG, || async {
        server.metric(&client, "flowhost_workers").await == 0.0
            && workers_of(server.child.id()) == 0
    })
    .await;
    assert!(gone.is_some(), "the idle worker stayed: {}", server.log());
    // And the next call gets a fresh one.
    let echo: Value = client
        .post(server.url("/isolated_echo"))
        .json(&json!({"query": "again"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["answer"], "again");
}

/// A worker loads the plugin file itself: when the file on disk is no longer the one the host
/// loaded (rebuilt, not reloaded yet: here the watcher is off), the worker refuses it and the
/// call fails saying so, instead of running other code than the host checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_a_library_that_changed_since_the_host_loaded_it() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let plugins = plugin_folder(&[(&op_basic(), &so("op_basic"))]);
    let server = Server::start(
        flows.path(),
        &[
            "--no-watch",
            "--no-default-plugins",
            "--plugins",
            plugins.path().to_str().unwrap(),
        ],
    );
    let client = client();
    // Replace the file (a new inode, as a build does) with other bytes of the same library.
    let lib = plugins.path().join(so("op_basic"));
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.extend_from_slice(b"rebuilt");
    let fresh = plugins.path().join("fresh.tmp");
    std::fs::write(&fresh, &bytes).unwrap();
    std::fs::rename(&fresh, &lib).unwrap();
    let response = client
        .post(server.url("/isolated_echo"))
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let error = body["metadata"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("changed since the host loaded it"),
        "{body}\n{}",
        server.log()
    );
    // In-process ops are the loaded copy and go on.
    let echo: Value = client
        .post(server.url("/echo"))
        .json(&json!({"query": "still"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["answer"], "still");
}

/// With a key set, `/mcp` and `/runs/*` need it and work with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_opens_mcp_and_runs() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["--api-key", "s3cret"]);
    let client = client();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let mcp = |key: Option<&str>| {
        let mut request = client
            .post(server.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(mcp(None).await.unwrap().status(), 401);
    assert_eq!(mcp(Some("wrong")).await.unwrap().status(), 401);
    let opened = mcp(Some("s3cret")).await.unwrap();
    assert_eq!(opened.status(), 200);
    assert!(opened.headers().contains_key("mcp-session-id"));

    let accepted: Value = client
        .post(server.url("/echo"))
        .bearer_auth("s3cret")
        .header("prefer", "respond-async")
        .json(&json!({"query": "keyed"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["run_id"].as_str().expect("a run id");
    for path in [format!("/runs/{id}"), format!("/runs/{id}/events")] {
        let without = client.get(server.url(&path)).send().await.unwrap();
        assert_eq!(without.status(), 401, "{path}");
        let with = client
            .get(server.url(&path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(with.status(), 200, "{path}");
    }
    let without = client
        .delete(server.url(&format!("/runs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    let with = client
        .delete(server.url(&format!("/runs/{id}")))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert!(with.status().is_success(), "{}", with.status());
}

/// Op log lines an MCP client cannot take as fast as the op writes them are dropped, and the
/// client is told how many: what arrived plus what was dropped is what the op logged. (A
/// notification is written before the next is sent, so a client that stops reading holds
/// the call's forwarding, and the op's lines past the call's 1,024 are dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_mcp_log_lines_are_counted_to_the_client() {
    const LINES: usize = 5000;
    let flows = folder(&[(
        "f.yaml",
        &format!("chatty:\n  flow_content: LogOp(n={LINES}, delay_ms=0)\n"),
    )]);
    let plugins = plugin_folder(&[(&fixture("op_conformance"), &so("op_conformance"))]);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args([
            "serve",
            "--transport",
            "stdio",
            "--no-default-plugins",
            "--plugins",
        ])
        .arg(plugins.path())
        .arg("--flows")
        .arg(flows.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = async |line: &str| {
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    };
    send(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#).await;
    send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
    // Requests run concurrently: the level must be set before the call starts.
    send(r#"{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":"info"}}"#).await;
    loop {
        let line = stdout.next_line().await.unwrap().expect("stdout open");
        if serde_json::from_str::<Value>(&line).unwrap()["id"] == 1 {
            break;
        }
    }
    send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"chatty","arguments":{}}}"#).await;
    // Read nothing for a while: the pipe fills, the op keeps logging.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut arrived, mut dropped) = (0usize, None);
    loop {
        let line = tokio::time::timeout(LONG, stdout.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .expect("stdout open");
        let message: Value = serde_json::from_str(&line).unwrap();
        if message["method"] == "notifications/message" {
            let data = message["params"]["data"].as_str().unwrap_or_default();
            if let Some(at) = data.find(" op log line(s) of this call were dropped") {
                dropped = Some(data[..at].parse::<usize>().unwrap());
                assert_eq!(message["params"]["level"], "warning", "{message}");
            } else if data.starts_with("log line ") {
                arrived += 1;
            }
        }
        if message["id"] == 2 {
            assert_eq!(message["result"]["isError"], false, "{message}");
            break;
        }
    }
    let dropped = dropped
        .unwrap_or_else(|| panic!("the client is told lines were dropped (arrived {arrived})"));
    assert!(dropped > 0);
    assert_eq!(
        arrived + dropped,
        LINES,
        "arrived {arrived}, dropped {dropped}"
    );
}
