//! Who may call what, through the real binary: `flowhost auth hash-key`, the config's refusals
//! of unsafe auth settings, named keys that see and call only their flows on every route,
//! runs and idempotency keys per subject, rate limits (shared by two hosts through a real
//! redis-server), and `flowhost audit verify`. Bearer tokens against a JWKS, the OpenAI and
//! MCP clients and the playground are driven by real clients in host/tests/clients/test_auth.py.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::util::*;

const FLOWS: &str = "\
echo_a:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string, required: true}\n\
echo_b:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string, required: true}\n\
count_c:\n  flow_content: CountOp(n=3)\n  stream: true\n";

fn hash(key: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args(["auth", "hash-key"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("a helper step");
    writeln!(child.stdin.take().expect("a helper step"), "{key}").expect("a helper step");
    let output = child.wait_with_output().expect("a helper step");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .expect("a helper step")
        .trim()
        .to_string()
}

/// A config file with keys `alpha` (echo_a, 3 calls a minute), `beta` (echo_b, count_c)
/// and `root` (every flow), plus `extra` YAML.
fn config(dir: &std::path::Path, extra: &str) -> String {
    let path = dir.join("flowhost.yaml");
    std::fs::write(
        &path,
        format!(
            "auth:\n  keys:\n    alpha: {{key_sha256: \"{}\", flows: [\"echo_a\"], rate: \"3/min\"}}\n    beta: {{key_sha256: \"{}\", flows: [\"echo_b\", \"count_*\"]}}\n    root: {{key_sha256: \"{}\"}}\n{extra}",
            hash("alpha-key"),
            hash("beta-key"),
            hash("root-key")
        ),
    )
    .expect("a helper step");
    path.display().to_string()
}

#[test]
fn hash_key_prints_the_sha256_of_the_key_on_stdin() {
    // sha256("alpha-key"), as `printf alpha-key | sha256sum` prints it.
    assert_eq!(
        hash("alpha-key"),
        "677509799af78b2efa2f2af71d0f906e0a0c50c048efd3b515625f788e92b99a"
    );
    assert_ne!(hash("alpha-key"), hash("beta-key"));
    assert_eq!(
        hash("  alpha-key  "),
        hash("alpha-key"),
        "the line is trimmed"
    );
    let (code, _, err) = flowhost(&["auth", "hash-key"]);
    assert_eq!(code, 2);
    assert!(err.contains("no key on stdin"), "{err}");
}

#[test]
fn the_config_refuses_unsafe_auth_settings() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = |fields: &str| {
        format!("auth:\n  jwt:\n    issuer: https://issuer.example\n    jwks_url: http://127.0.0.1:9/jwks.json\n{fields}")
    };
    for (yaml, expected) in [
        (jwt(""), "auth.jwt.audience is required"),
        (
            jwt("    audience: a\n    algorithms: [HS256]\n"),
            "`HS256` is never accepted",
        ),
        (
            jwt("    audience: a\n    algorithms: [none]\n"),
            "`none` is never accepted",
        ),
        (
            "auth:\n  keys:\n    x: {key: plain}\n".to_string(),
            "auth.keys.x.key: keys are not written in the config",
        ),
        (
            "auth:\n  keys:\n    x: {key_sha256: abc}\n".to_string(),
            "auth.keys.x.key_sha256: expected 64 hex digits",
        ),
        (
            format!(
                "auth:\n  keys:\n    x: {{key_sha256: \"{}\", rate: 10/fortnight}}\n",
                "a".repeat(64)
            ),
            "auth.keys.x.rate: `10/fortnight` is not a rate",
        ),
        (
            format!(
                "auth:\n  keys:\n    x: {{key_sha256: \"{}\", flows: [\"[oops\"]}}\n",
                "a".repeat(64)
            ),
            "auth.keys.x.flows: `[oops` is not a valid glob pattern",
        ),
        ("audit:\n  pth: x\n".to_string(), "audit"),
        (
            format!("auth:\n  keys:\n    default: {{key_sha256: \"{}\"}}\n", "a".repeat(64)),
            "`default` cannot name a key",
        ),
        (
            format!("auth:\n  keys:\n    \"jwt:alice\": {{key_sha256: \"{}\"}}\n", "a".repeat(64)),
            "cannot name a key",
        ),
        (
            "auth:\n  jwt:\n    issuer: i\n    audience: a\n    jwks_url: http://auth.example/jwks.json\n".to_string(),
            "auth.jwt.jwks_url must be https://",
        ),
        (
            "auth:\n  jwt:\n    issuer: i\n    audience: a\n    jwks_url: http://localhost.evil.example/jwks.json\n".to_string(),
            "auth.jwt.jwks_url must be https://",
        ),
    ] {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let (code, _, err) = flowhost(&["config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{yaml}");
        assert!(err.contains(expected), "{yaml}\n→ {err}");
    }
}

async fn flow_names(client: &reqwest::Client, server: &Server, key: &str) -> Vec<String> {
    let body: Value = client
        .get(server.url("/flows"))
        .bearer_auth(key)
        .send()
        .await
        .expect("a helper step")
        .json()
        .await
        .expect("a helper step");
    body["flows"]
        .as_array()
        .expect("a helper step")
        .iter()
        .map(|f| f["name"].as_str().expect("a helper step").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_keys_see_and_call_only_their_flows() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let server = Server::start(flows.path(), &["--config", &config]);
    let client = client();
    assert_eq!(flow_names(&client, &server, "alpha-key").await, ["echo_a"]);
    assert_eq!(
        flow_names(&client, &server, "beta-key").await,
        ["count_c", "echo_b"]
    );
    assert_eq!(flow_names(&client, &server, "root-key").await.len(), 3);
    // Every other listing agrees.
    let get = |path: &'static str, key: &'static str| {
        let request = client.get(server.url(path)).bearer_auth(key);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let openapi = get("/openapi.json", "alpha-key").await;
    let paths: Vec<&String> = openapi["paths"].as_object().unwrap().keys().collect();
    assert!(paths.iter().any(|p| *p == "/echo_a"), "{paths:?}");
    assert!(!paths.iter().any(|p| *p == "/echo_b" || *p == "/count_c"));
    let models = get("/v1/models", "beta-key").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["count_c", "echo_b"]);
    let resources = get("/resources", "alpha-key").await.to_string();
    assert!(resources.contains("flow://echo_a") && !resources.contains("flow://echo_b"));
    // Only a caller that may see every flow reads /health's details.
    assert!(get("/health", "alpha-key").await.get("flows").is_none());
    assert_eq!(get("/health", "root-key").await["flows"], 3);
    // Calling: its own flow runs; another's and a missing one get the same 403.
    let call = |flow: &str, key: &'static str| {
        client
            .post(server.url(&format!("/{flow}")))
            .bearer_auth(key)
            .json(&json!({"query": "hi"}))
            .send()
    };
    let ok = call("echo_a", "alpha-key").await.unwrap();
    assert_eq!(ok.status(), 200);
    let forbidden = call("echo_b", "alpha-key").await.unwrap();
    assert_eq!(forbidden.status(), 403);
    let forbidden: Value = forbidden.json().await.unwrap();
    let missing = call("no_such_flow", "alpha-key").await.unwrap();
    assert_eq!(missing.status(), 403);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(
        forbidden["detail"].as_str().unwrap().replace("echo_b", "X"),
        missing["detail"]
            .as_str()
            .unwrap()
            .replace("no_such_flow", "X"),
        "a refusal says nothing of which flows exist"
    );
    let read = client
        .get(server.url("/resources/read?uri=flow://echo_b"))
        .bearer_auth("alpha-key")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 403);
    // A key that may call everything still gets the helpful 404.
    assert_eq!(
        call("no_such_flow", "root-key").await.unwrap().status(),
        404
    );
    // Counted per subject.
    let metrics = client
        .get(server.url("/metrics"))
        .bearer_auth("root-key")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flowhost_calls_total{subject=\"alpha\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("flowhost_calls_total{subject=\"alpha\",outcome=\"denied\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_idempotency_keys_belong_to_their_subject() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let server = Server::start(flows.path(), &["--config", &config]);
    let client = client();
    let start = |key: &'static str, idempotency: &'static str| {
        client
            .post(server.url("/count_c"))
            .bearer_auth(key)
            .header("prefer", "respond-async")
            .header("idempotency-key", idempotency)
            .json(&json!({}))
            .send()
    };
    let first = start("beta-key", "k1").await.unwrap();
    assert_eq!(first.status(), 202);
    let run: Value = first.json().await.unwrap();
    let id = run["run_id"].as_str().unwrap().to_string();
    // The same key from the same subject: the same run.
    let again: Value = start("beta-key", "k1").await.unwrap().json().await.unwrap();
    assert_eq!(again["run_id"], id.as_str());
    // From another subject: a run of its own.
    let other = start("root-key", "k1").await.unwrap();
    assert_eq!(other.status(), 202);
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["run_id"], id.as_str());
    for (method, path) in [
        ("GET", format!("/runs/{id}")),
        ("GET", format!("/runs/{id}/events")),
        ("DELETE", format!("/runs/{id}")),
    ] {
        let status = |key: &'static str| {
            client
                .request(method.parse().unwrap(), server.url(&path))
                .bearer_auth(key)
                .send()
        };
        assert_eq!(
            status("root-key").await.unwrap().status(),
            404,
            "{method} {path}"
        );
        assert_eq!(
            status("alpha-key").await.unwrap().status(),
            404,
            "{method} {path}"
        );
        assert_eq!(
            status("beta-key").await.unwrap().status(),
            200,
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_one_bucket_across_hosts_sharing_a_redis() {
    let Some(redis) = crate::durable::RedisServer::start() else {
        return;
    };
    let flows = folder(&[("f.yaml", FLOWS)]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let store = format!("store.url={}", redis.url);
    let a = Server::start(flows.path(), &["--config", &config, &store]);
    let b = Server::start(flows.path(), &["--config", &config, &store]);
    let client = client();
    let call = |server: &Server| {
        client
            .post(server.url("/echo_a"))
            .bearer_auth("alpha-key")
            .json(&json!({"query": "hi"}))
            .send()
    };
    // alpha may make 3 calls a minute, wherever it sends them.
    assert_eq!(call(&a).await.unwrap().status(), 200);
    assert_eq!(call(&b).await.unwrap().status(), 200);
    assert_eq!(call(&a).await.unwrap().status(), 200);
    let limited = call(&b).await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&retry),
        "one call back every 20 s: {retry}"
    );
    let body: Value = limited.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("`alpha` may make 3/min calls"),
        "{body}"
    );
    assert_eq!(call(&a).await.unwrap().status(), 429);
    // Other subjects have buckets of their own; listings are not counted.
    assert_eq!(flow_names(&client, &a, "alpha-key").await, ["echo_a"]);
    let beta = client
        .post(a.url("/echo_b"))
        .bearer_auth("beta-key")
        .json(&json!({"query": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(beta.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_a_chain_that_verify_checks() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit").join("audit.jsonl");
    let config = config(
        dir.path(),
        &format!("audit:\n  path: {}\n  inputs: true\n", audit.display()),
    );
    let server = Server::start(flows.path(), &["--config", &config]);
    let client = client();
    for (flow, key) in [
        ("echo_a", "alpha-key"),
        ("echo_b", "alpha-key"),
        ("echo_b", "beta-key"),
        ("count_c", "beta-key"),
    ] {
        client
            .post(server.url(&format!("/{flow}")))
            .bearer_auth(key)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .json(&json!({"query": "secret input"}))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let lines = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    wait_for(std::time::Duration::from_secs(5), || lines().len() == 4).expect("4 audit lines");
    let lines = lines();
    let seen: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["subject"].as_str().unwrap(),
                l["flow"].as_str().unwrap(),
                l["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("alpha", "echo_a", "ok"),
            ("alpha", "echo_b", "denied"),
            ("beta", "echo_b", "ok"),
            ("beta", "count_c", "ok"),
        ]
    );
    assert_eq!(lines[3]["chunks"], 3);
    assert_eq!(lines[0]["input"]["query"], "secret input");
    assert_eq!(
        lines[0]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(lines[0]["run_id"].is_string());
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("alpha-key"), "never the credential");
    let (code, out, err) = flowhost(&["audit", "verify", audit.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok: 4 line(s), chain intact"), "{out}");
    // An edited line breaks the chain there.
    std::fs::write(&audit, text.replacen("\"beta\"", "\"alpha\"", 1)).unwrap();
    let (code, _, err) = flowhost(&["audit", "verify", audit.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(":3: line 3 was edited"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_session_belongs_to_the_caller_that_opened_it() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let server = Server::start(flows.path(), &["--config", &config]);
    let client = client();
    let opened = client
        .post(server.url("/mcp"))
        .bearer_auth("alpha-key")
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let list = |key: &'static str| {
        client
            .post(server.url("/mcp"))
            .bearer_auth(key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18")
            .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            .send()
    };
    // Another caller naming it: as if it did not exist.
    let other = list("beta-key").await.unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(other.text().await.unwrap(), "Not Found: Session not found");
    let deleted = client
        .delete(server.url("/mcp"))
        .bearer_auth("root-key")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 404);
    // Its own caller goes on.
    let own = list("alpha-key").await.unwrap();
    assert_eq!(own.status(), 200);
    let text = own.text().await.unwrap();
    assert!(
        text.contains("echo_a") && !text.contains("echo_b"),
        "{text}"
    );
}
