//! Durable async runs (`store.path`): a run survives `kill -9` of its host and is resumed
//! from the op that was running; hosts that share a store answer for each other's runs;
//! `Last-Event-ID`; `on_crash: fail`; where the store is (and is not) created.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::util::{client, folder, Server};

/// Three ops in a row: `a` is done fast, `b` ticks for about 6 s, `c` is done fast.
const TICKS: &str = "ticks:\n  flow_content: TickOp(n=2, interval_ms=10, text=\"a\") >> TickOp(n=30, interval_ms=200, text=\"b\") >> TickOp(n=2, interval_ms=10, text=\"c\")\n";

fn uninterrupted_answer() -> String {
    let mut answer = String::from("a 0\na 1\n");
    for i in 0..30 {
        answer.push_str(&format!("b {i}\n"));
    }
    answer.push_str("c 0\nc 1\n");
    answer
}

/// The SSE events of a body: (id, data) pairs.
fn events(body: &str) -> Vec<(Option<u64>, String)> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(rest) = line.strip_prefix("data:") {
                    data.push_str(rest);
                } else if let Some(rest) = line.strip_prefix("id:") {
                    id = rest.trim().parse().ok();
                }
            }
            (id, data)
        })
        .collect()
}

async fn post_async(server: &Server, flow: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .post(server.url(&format!("/{flow}")))
        .header("prefer", "respond-async")
        .json(&json!({}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("POST async")
}

async fn run_id(server: &Server, flow: &str) -> String {
    let accepted: Value = post_async(server, flow, None)
        .await
        .json()
        .await
        .expect("a JSON answer");
    accepted["run_id"].as_str().expect("a run id").to_string()
}

async fn status(server: &Server, id: &str) -> Value {
    client()
        .get(server.url(&format!("/runs/{id}")))
        .send()
        .await
        .expect("GET /runs/{id}")
        .json()
        .await
        .expect("a JSON answer")
}

/// The whole event stream of run `id` (after `Last-Event-ID` `last`, when given).
async fn events_body(server: &Server, id: &str, last: Option<&str>) -> String {
    let mut request = client().get(server.url(&format!("/runs/{id}/events")));
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    request
        .send()
        .await
        .expect("GET /runs/{id}/events")
        .text()
        .await
        .expect("the events")
}

/// Reads a run's live events until `seen` holds for what arrived so far.
async fn follow_until(server: &Server, id: &str, seen: impl Fn(&str) -> bool) -> String {
    let response = client()
        .get(server.url(&format!("/runs/{id}/events")))
        .send()
        .await
        .expect("GET /runs/{id}/events");
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(bytes)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&bytes));
            if seen(&text) {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "not seen within 60 s: {text}");
    text
}

async fn wait_status(server: &Server, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = status(server, id).await;
        if last["status"] == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {id} never became {want}: {last}");
}

fn store_arg(dir: &Path) -> String {
    format!("store.path={}", dir.join("runs.db").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_kill_9_and_completed_ops_are_not_run_again() {
    let flows = folder(&[("t.yaml", TICKS)]);
    let store = tempfile::tempdir().unwrap();
    let mut first = Server::start(flows.path(), &[&store_arg(store.path())]);
    let id = run_id(&first, "ticks").await;
    // `a` completed and `b` is under way when the host dies.
    follow_until(&first, &id, |text| text.contains("b 2\\n")).await;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();

    let second = Server::start(flows.path(), &[&store_arg(store.path())]);
    let done = wait_status(&second, &id, "completed").await;
    assert_eq!(done["answer"], uninterrupted_answer(), "{done}");
    assert_eq!(done["resumes"], 1, "{done}");
    assert!(second.log().contains("resuming a run whose host stopped"));
    let body = events_body(&second, &id, None).await;
    let all = events(&body);
    assert_eq!(all.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    let chunks: Vec<(u64, Value)> = all
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(id, d)| {
            (
                id.expect("every event has an id"),
                serde_json::from_str(d).unwrap(),
            )
        })
        .collect();
    // Ids are the events' places, 0, 1, 2, ...
    assert!(chunks
        .iter()
        .enumerate()
        .all(|(i, (id, _))| *id == i as u64));
    let texts: Vec<&str> = chunks
        .iter()
        .map(|(_, c)| c["chunk"].as_str().unwrap_or_default())
        .collect();
    // The op that completed before the crash ran once; the one running ran again.
    assert_eq!(
        texts.iter().filter(|t| **t == "a 0\n").count(),
        1,
        "{texts:?}"
    );
    assert_eq!(
        texts.iter().filter(|t| **t == "c 0\n").count(),
        1,
        "{texts:?}"
    );
    assert!(
        texts.iter().filter(|t| **t == "b 0\n").count() == 2,
        "{texts:?}"
    );
    let marker = chunks
        .iter()
        .map(|(_, c)| c)
        .find(|c| c["metadata"]["resumed"] == true)
        .expect("a chunk says where the run resumed");
    assert_eq!(marker["metadata"]["op"], "TickOp");
    assert_eq!(marker["chunk_type"], "think");

    // A reader that reconnects with Last-Event-ID gets only what it missed.
    let body = events_body(&second, &id, Some("30")).await;
    let rest = events(&body);
    assert_eq!(rest[0].0, Some(31), "{body}");
    assert_eq!(rest.len(), chunks.len() - 31 + 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_sharing_a_store_file_answer_for_each_others_runs() {
    let flows = folder(&[("t.yaml", TICKS)]);
    let store = tempfile::tempdir().unwrap();
    let arg = store_arg(store.path());
    let mut a = Server::start(flows.path(), &[&arg]);
    let b = Server::start(flows.path(), &[&arg]);
    let c = Server::start(flows.path(), &[&arg]);
    any_host_answers(&mut a, &b, &c).await;
}

/// A real `redis-server` on a free port, stopped when dropped.
pub(crate) struct RedisServer {
    child: std::process::Child,
    pub(crate) url: String,
}

impl RedisServer {
    /// None (the test is skipped) when redis-server is not installed, except under CI
    /// (`scripts/redis` installs it), where that fails.
    pub(crate) fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let spawned = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "skipped: redis-server cannot start ({err}); `bash scripts/redis` installs it"
                );
                return None;
            }
            Err(err) => panic!("redis-server cannot start: {err} (bash scripts/redis installs it)"),
        };
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        let up = crate::util::wait_for(Duration::from_secs(10), || {
            use std::io::{Read, Write};
            let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let mut answer = [0u8; 7];
            socket.write_all(b"PING\r\n").is_ok()
                && socket.read_exact(&mut answer).is_ok()
                && &answer == b"+PONG\r\n"
        });
        assert!(up.is_some(), "redis-server did not answer PING");
        Some(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_sharing_a_redis_answer_for_each_others_runs() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let flows = folder(&[("t.yaml", TICKS)]);
    let arg = format!("store.url={}", redis.url);
    let mut a = Server::start(flows.path(), &[&arg]);
    let b = Server::start(flows.path(), &[&arg]);
    let c = Server::start(flows.path(), &[&arg]);
    assert!(a
        .log()
        .contains("async runs are kept in the Redis at redis://127.0.0.1:"));
    any_host_answers(&mut a, &b, &c).await;
    // A resumed run answers with Last-Event-ID on any host.
    let id = run_id(&b, "ticks").await;
    follow_until(&c, &id, |text| text.contains("b 1\\n")).await;
    drop(b);
    let done = wait_status(&c, &id, "completed").await;
    assert_eq!(done["answer"], uninterrupted_answer(), "{done}");
    let body = events_body(&c, &id, Some("9")).await;
    assert_eq!(events(&body)[0].0, Some(10), "{body}");
}

/// What hosts sharing a store do for each other's runs: A runs it, B and C answer for it.
async fn any_host_answers(a: &mut Server, b: &Server, c: &Server) {
    // Started on A, read on B: its status, and its events live on C while A runs it.
    let id = run_id(a, "ticks").await;
    let on_b = status(b, &id).await;
    assert_eq!(on_b["status"], "running", "{on_b}");
    let live = follow_until(c, &id, |text| text.contains("b 3\\n")).await;
    assert!(live.contains("a 0\\n"), "{live}");
    assert_eq!(status(b, &id).await["status"], "running");

    // Cancelled on B, stopped on A.
    let cancelled: Value = client()
        .delete(b.url(&format!("/runs/{id}")))
        .send()
        .await
        .expect("DELETE")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(status(a, &id).await["status"], "cancelled");

    // The same Idempotency-Key sent to two hosts at once starts one run.
    let (on_a, on_b) = tokio::join!(
        post_async(a, "ticks", Some("order-17")),
        post_async(b, "ticks", Some("order-17")),
    );
    let replayed = [&on_a, &on_b]
        .iter()
        .filter(|r| r.headers().contains_key("idempotent-replayed"))
        .count();
    assert_eq!(replayed, 1, "exactly one answer is the replay");
    let on_a: Value = on_a.json().await.expect("a JSON answer");
    let on_b: Value = on_b.json().await.expect("a JSON answer");
    assert_eq!(on_a["run_id"], on_b["run_id"]);
    let id = on_a["run_id"].as_str().expect("a run id").to_string();

    // A dies; whichever host ran it, the run ends on another, as if A had not died.
    follow_until(c, &id, |text| text.contains("b 1\\n")).await;
    a.child.kill().expect("kill -9");
    a.child.wait().expect("wait");
    let done = wait_status(c, &id, "completed").await;
    assert_eq!(done["answer"], uninterrupted_answer(), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_crash_fail_ends_the_run_instead() {
    let flows = folder(&[(
        "t.yaml",
        &format!(
            "{TICKS}careful:\n  flow_content: TickOp(n=30, interval_ms=200)\n  on_crash: fail\n"
        ),
    )]);
    let store = tempfile::tempdir().unwrap();
    let mut first = Server::start(flows.path(), &[&store_arg(store.path())]);
    let id = run_id(&first, "careful").await;
    let other = run_id(&first, "ticks").await;
    follow_until(&first, &id, |text| text.contains("tick 1\\n")).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // store.max_resumes=0: a run that would resume fails instead.
    let second = Server::start(
        flows.path(),
        &[&store_arg(store.path()), "store.max_resumes=0"],
    );
    let failed = wait_status(&second, &id, "failed").await;
    let error = failed["metadata"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("interrupted: host stopped"), "{failed}");
    assert!(error.contains("on_crash: fail"), "{failed}");
    let failed = wait_status(&second, &other, "failed").await;
    let error = failed["metadata"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("store.max_resumes"), "{failed}");
    assert!(!second.log().contains("resuming a run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_made_where_it_should_be_and_nowhere_else() {
    let flows = folder(&[("t.yaml", "echo:\n  flow_content: EchoOp()\n")]);
    // HTTP, no settings: `.flowhost/runs.db` in the working folder, and a run outlives the
    // process.
    let server = Server::start(flows.path(), &[]);
    assert!(server.home.path().join(".flowhost/runs.db").is_file());
    drop(server);
    let memory = Server::start(flows.path(), &["store.path=:memory:"]);
    assert!(!memory.home.path().join(".flowhost").exists());
    // MCP over stdio never writes into the folder of the tool that started it.
    let home = tempfile::tempdir().unwrap();
    // (stdin is closed before `initialize`: the session ends at once, and says so.)
    std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .current_dir(home.path())
        .args(["serve", "--transport", "stdio", "--flows"])
        .arg(flows.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!home.path().join(".flowhost").exists());
}

/// One 2026-07-28 request to a stateless `/mcp` (a client that speaks tasks); its answer.
async fn mcp(server: &Server, id: u64, method: &str, name: &str, params: Value) -> Value {
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
    });
    let mut params = params;
    params["_meta"] = meta;
    let text = client()
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .header("mcp-name", name)
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .send()
        .await
        .expect("POST /mcp")
        .text()
        .await
        .expect("an answer");
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no answer to {method}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tasks_answer_from_any_host_sharing_the_store() {
    let store = tempfile::tempdir().unwrap();
    mcp_tasks_across_hosts(&store_arg(store.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tasks_answer_from_any_host_sharing_a_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    mcp_tasks_across_hosts(&format!("store.url={}", redis.url)).await;
}

/// Two hosts with the store `arg`: a task made on one is followed and cancelled on the other.
async fn mcp_tasks_across_hosts(arg: &str) {
    let flows = folder(&[(
        "t.yaml",
        "slow:\n  flow_content: TickOp(n=50, interval_ms=200)\n  task_after: 0.1\nshort:\n  flow_content: TickOp(n=3, interval_ms=100)\n  task_after: 0.1\n",
    )]);
    let a = Server::start(flows.path(), &[arg, "http.mcp_stateless=true"]);
    let b = Server::start(flows.path(), &[arg, "http.mcp_stateless=true"]);

    // A task made on A runs to its end; B follows it and gets its result.
    let created = mcp(
        &a,
        1,
        "tools/call",
        "short",
        json!({"name": "short", "arguments": {}}),
    )
    .await;
    assert_eq!(created["result"]["resultType"], "task", "{created}");
    let task = created["result"]["taskId"]
        .as_str()
        .expect("taskId")
        .to_string();
    let mut last = Value::Null;
    for id in 10..200 {
        last = mcp(&b, id, "tasks/get", &task, json!({"taskId": task})).await;
        if last["result"]["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["result"]["status"], "completed", "{last}");
    assert_eq!(
        last["result"]["result"]["content"][0]["text"], "tick 0\ntick 1\ntick 2\n",
        "{last}"
    );

    // A task made on A is cancelled from B.
    let created = mcp(
        &a,
        2,
        "tools/call",
        "slow",
        json!({"name": "slow", "arguments": {}}),
    )
    .await;
    let task = created["result"]["taskId"]
        .as_str()
        .expect("taskId")
        .to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = mcp(&b, 3, "tasks/get", &task, json!({"taskId": task})).await;
    assert_eq!(seen["result"]["status"], "working", "{seen}");
    let cancelled = mcp(&b, 4, "tasks/cancel", &task, json!({"taskId": task})).await;
    assert!(cancelled.get("error").is_none(), "{cancelled}");
    for id in 20..100 {
        last = mcp(&b, id, "tasks/get", &task, json!({"taskId": task})).await;
        if last["result"]["status"] == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["result"]["status"], "cancelled", "{last}");
    assert_eq!(
        mcp(&a, 5, "tasks/get", &task, json!({"taskId": task})).await["result"]["status"],
        "cancelled"
    );
    // A task no host has is still an unknown task.
    let unknown = mcp(&b, 6, "tasks/get", "nope", json!({"taskId": "nope"})).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_op_cache_is_kept_in_the_store_across_a_restart() {
    let flows = folder(&[(
        "t.yaml",
        "cached:\n  flow_content: TickOp(n=2, interval_ms=10, enable_cache=True)\n",
    )]);
    let store = tempfile::tempdir().unwrap();
    let arg = store_arg(store.path());
    let call = |server: &Server| {
        client()
            .post(server.url("/cached"))
            .json(&json!({"query": "same"}))
            .send()
    };
    let first = Server::start(flows.path(), &[&arg]);
    assert_eq!(call(&first).await.unwrap().status(), 200);
    assert_eq!(
        first
            .metric(&client(), "flowhost_op_cache_misses_total")
            .await,
        1.0
    );
    drop(first);
    // A new process: its memory is empty, the store has the answer.
    let second = Server::start(flows.path(), &[&arg]);
    let answer: Value = call(&second).await.unwrap().json().await.unwrap();
    assert_eq!(answer["answer"], "tick 0\ntick 1\n", "{answer}");
    assert_eq!(
        second
            .metric(&client(), "flowhost_op_cache_hits_total")
            .await,
        1.0
    );
    assert_eq!(
        second
            .metric(&client(), "flowhost_op_cache_misses_total")
            .await,
        0.0
    );
}
