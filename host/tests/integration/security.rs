//! Safe defaults, driven through the real binary as a web page or a rebinding attacker would:
//! foreign `Origin`s and `Host`s, non-JSON bodies, the API key, and configuration typos.

use serde_json::{json, Value};

use crate::util::*;

const FLOWS: &str =
    "echo:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string, required: true}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_page_cannot_run_flows_or_read_answers() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    // The "simple" request a page can send without a preflight.
    let response = client
        .post(server.url("/echo"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"query": "pwned"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("http.cors_origins"),
        "{body}"
    );
    // The same with JSON, on every route, /mcp included.
    for (method, path) in [
        ("POST", "/echo"),
        ("GET", "/flows"),
        ("GET", "/health"),
        ("POST", "/mcp"),
        ("POST", "/v1/chat/completions"),
    ] {
        let response = client
            .request(method.parse().unwrap(), server.url(path))
            .header("origin", "http://evil.example")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
    }
    // Without an Origin (curl, SDKs), a text/plain body is refused as such.
    let response = client
        .post(server.url("/echo"))
        .header("content-type", "text/plain")
        .body(r#"{"query": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("`text/plain`"),
        "{body}"
    );
    // The server's own pages (same origin) and plain JSON clients work; no CORS headers.
    let own = server.url("");
    let response = client
        .post(server.url("/echo"))
        .header("origin", own.trim_end_matches('/'))
        .json(&json!({"query": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // A preflight from a foreign page gets no permission either.
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/echo"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_get_cors() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(
        flows.path(),
        &["http.cors_origins=[\"https://app.example\"]"],
    );
    let client = client();
    let response = client
        .post(server.url("/echo"))
        .header("origin", "https://app.example")
        .json(&json!({"query": "ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = client
        .post(server.url("/echo"))
        .header("origin", "https://other.example")
        .json(&json!({"query": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_is_refused_on_every_route() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &[]);
    let client = client();
    for (method, path) in [
        ("GET", "/health"),
        ("GET", "/flows"),
        ("POST", "/echo"),
        ("POST", "/mcp"),
        ("GET", "/docs"),
    ] {
        let response = client
            .request(method.parse().unwrap(), server.url(path))
            .header("host", "evil.example:8002")
            .json(&json!({"query": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("http.allowed_hosts"),
            "{body}"
        );
    }
    for host in ["localhost:1234", "127.0.0.1"] {
        let response = client
            .get(server.url("/health"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
    // Configured names are accepted.
    let named = Server::start(flows.path(), &["http.allowed_hosts=[\"flowhost.svc\"]"]);
    let response = client
        .get(named.url("/health"))
        .header("host", "flowhost.svc:8002")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_health_says_little_and_docs_still_load() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["--api-key", "s3cret"]);
    let client = client();
    let bare: Value = client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bare, json!({"status": "healthy"}));
    let full: Value = client
        .get(server.url("/health"))
        .header("authorization", "bearer s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(full["status"], "healthy");
    assert!(
        full["plugins"].is_array() && full["flows_hash"].is_string(),
        "{full}"
    );
    for path in ["/docs", "/docs/swagger-ui.css"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} loads without the key");
        // Never framed by another site (clickjacking), like the playground.
        let headers = response.headers();
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(
            headers["content-security-policy"], "frame-ancestors 'none'",
            "{path}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
    }
    let openapi = client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(openapi.status(), 401);
    let openapi: Value = client
        .get(server.url("/openapi.json"))
        .header("authorization", "BEARER s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "Swagger UI's Authorize button needs the scheme"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposing_the_host_without_a_key_warns() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let server = Server::start(flows.path(), &["--host", "0.0.0.0"]);
    assert!(
        wait_for(std::time::Duration::from_secs(5), || server
            .log()
            .contains("without an API key"))
        .is_some(),
        "{}",
        server.log()
    );
    let quiet = Server::start(flows.path(), &[]);
    // The warning comes right after the banner, before any request is served: once a
    // request's log line is there, it would be too.
    {
        use std::io::{Read, Write};
        let mut socket =
            std::net::TcpStream::connect(quiet.url("").trim_start_matches("http://")).unwrap();
        socket
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert!(
        wait_for(std::time::Duration::from_secs(30), || quiet
            .log()
            .contains("uri=/health"))
        .is_some(),
        "{}",
        quiet.log()
    );
    assert!(!quiet.log().contains("without an API key"));
}

#[test]
fn configuration_typos_stop_the_host_and_check() {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let dir = flows.path().to_str().unwrap();
    for command in ["check", "flows", "config"] {
        let (code, _, err) = flowhost(&[command, "--flows", dir, "--set", "http.apikey=k"]);
        assert_eq!(code, 2, "{command}: {err}");
        assert!(
            err.contains("unknown key `http.apikey` (did you mean `http.api_key`?)"),
            "{command}: {err}"
        );
    }
    let (code, _, err) = flowhost(&["serve", "--flows", dir, "--port", "0", "http.keepalive=3"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `http.keepalive_secs`?"), "{err}");
    // FlowLLM's own settings are accepted, with a warning at the default level.
    let config = folder(&[(
        "c.yaml",
        "thread_pool_max_workers: 8\nhttp: {timeout_keep_alive: 5}\n",
    )]);
    let file = config.path().join("c.yaml");
    let (code, out, err) = flowhost(&["config", "-c", file.to_str().unwrap(), "--flows", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("`thread_pool_max_workers` is a FlowLLM setting"),
        "{err}"
    );
    // uvicorn's keep-alive is honoured as http.keepalive_timeout.
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["http"]["keepalive_timeout"], 5.0, "{out}");
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal_and_json_on_request() {
    let flows = folder(&[("f.yaml", "broken:\n  flow_content: NoSuchOp()\n")]);
    let dir = flows.path().to_str().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args(["run", "broken", "--flows", dir, "--log", "info"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!err.is_empty());
    assert!(!err.contains('\u{1b}'), "ANSI codes in a pipe: {err:?}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args([
            "run",
            "broken",
            "--flows",
            dir,
            "--log",
            "info",
            "--log-format",
            "json",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "{err}");
    for line in lines {
        let value: Value = serde_json::from_str(line).expect("one JSON object per log line");
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
    }
}
