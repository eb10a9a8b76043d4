//! The `flowhost` binary as a user runs it.

use serde_json::Value;

use crate::util::*;

#[test]
fn check_prints_each_problem_and_fails() {
    let flows = folder(&[
        ("good.yaml", "fine:\n  flow_content: EchoOp()\n"),
        (
            "bad.yaml",
            "oops:\n  flow_content: EchoOp() >> CuontOp(n=3)\n",
        ),
    ]);
    let dir = flows.path().to_str().unwrap();
    let (code, out, err) = flowhost(&["check", "--flows", dir]);
    assert_eq!(code, 1, "{out}{err}");
    let first = out.lines().next().unwrap();
    assert_eq!(
        first,
        format!("{dir}/bad.yaml:2:29: error: flow `oops`: unknown op `CuontOp`; did you mean `CountOp`?")
    );
    assert!(
        out.contains("\n              ^"),
        "caret under the op: {out}"
    );
    assert!(
        err.contains("1 flow(s) live, 1 broken, 1 error(s)"),
        "{err}"
    );

    std::fs::remove_file(flows.path().join("bad.yaml")).unwrap();
    let (code, out, _) = flowhost(&["check", "--flows", dir]);
    assert_eq!((code, out.as_str()), (0, ""));
}

#[test]
fn run_writes_json_lines_then_a_summary() {
    let flows = folder(&[(
        "f.yaml",
        "echo:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string, required: true}\nfail:\n  flow_content: FailOp(n=1, message=\"nope\")\n",
    )]);
    let dir = flows.path().to_str().unwrap();
    let (code, out, err) = flowhost(&["run", "echo", "--flows", dir, "query=hello there"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["chunk_type"], "answer");
    assert_eq!(lines[0]["chunk"], "hello there");
    assert_eq!(lines[0]["done"], false);
    assert_eq!(lines[0]["metadata"]["op"], "EchoOp");
    assert_eq!(lines[1]["answer"], "hello there");
    assert_eq!(lines[1]["success"], true);
    assert_eq!(lines[1]["flow_id"], lines[0]["flow_id"]);

    let (code, out, _) = flowhost(&["run", "echo", "--flows", dir, "--input", r#"{"query": 42}"#]);
    assert_eq!(code, 2);
    assert!(out.is_empty());

    let (code, out, _) = flowhost(&["run", "fail", "--flows", dir]);
    assert_eq!(code, 1);
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["success"], false);
    assert_eq!(summary["error"], "FailOp failed: nope");

    let (code, _, err) = flowhost(&["run", "nope", "--flows", dir]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no flow named `nope`") && err.contains("echo, fail"),
        "{err}"
    );
}

#[test]
fn invalid_input_names_the_field() {
    let flows = folder(&[("f.yaml", "echo:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string, required: true}\n    n: {type: integer}\n")]);
    let dir = flows.path().to_str().unwrap();
    let (code, _, err) = flowhost(&["run", "echo", "--flows", dir, "query=5", "n=five"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("n: \"five\" is not of type \"integer\""),
        "{err}"
    );
    let (_, _, err) = flowhost(&["run", "echo", "--flows", dir]);
    assert!(
        err.contains("query: \"query\" is a required property"),
        "{err}"
    );
}

#[test]
fn flows_lists_status_and_the_default_folder_works() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let dir = root.join("flows");
    let (code, out, err) = flowhost(&["flows", "--json", "--flows", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let status = |name: &str| {
        listed["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["status"].clone())
    };
    for flow in [
        "echo_flow",
        "echo_stream_flow",
        "count_stream_flow",
        "serial_flow",
        "parallel_flow",
    ] {
        assert_eq!(status(flow), Some(Value::from("live")), "{flow}");
    }
    // The LLM demo flow is listed with a reason until its op exists.
    let demo = listed["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "demo_stream_http_flow")
        .unwrap();
    if demo["status"] == "broken" {
        assert!(demo["error"].as_str().unwrap().contains("StreamChatOp"));
    }

    let (code, out, _) = flowhost(&[
        "run",
        "parallel_flow",
        "--flows",
        dir.to_str().unwrap(),
        "query=hi",
    ]);
    assert_eq!(code, 0);
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["answer"], "hi");
}

#[test]
fn config_overrides_are_typed_and_layered() {
    let dir = folder(&[("c.yaml", "http: {port: 1234}\nenable_logo: false\n")]);
    let config = dir.path().join("c.yaml");
    let (code, out, err) = flowhost(&[
        "config",
        "-c",
        config.to_str().unwrap(),
        "http.host=0.0.0.0",
        "debounce_ms=20",
        "llm.default.params={\"temperature\":0.6}",
    ]);
    assert_eq!(code, 0, "{err}");
    let value: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["http"]["port"], 1234);
    assert_eq!(value["http"]["host"], "0.0.0.0");
    assert_eq!(value["debounce_ms"], 20);
    assert_eq!(value["llm"]["default"]["params"]["temperature"], 0.6);

    let (code, _, err) = flowhost(&["config", "-c", config.to_str().unwrap(), "http.port=lots"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("c.yaml: http.port: expected a port number (0 to 65535; 0 picks a free one), got \"lots\""),
        "{err}"
    );
    let (code, _, err) = flowhost(&["config", "http.max_connections=many"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("http.max_connections: expected a whole number, got \"many\""),
        "{err}"
    );

    // Sizes and durations take units.
    let (code, out, err) = flowhost(&[
        "config",
        "http.body_limit=64KiB",
        "http.header_timeout=500ms",
        "runs.retention=2h",
        "runs.max_bytes=1MB",
    ]);
    assert_eq!(code, 0, "{err}");
    let value: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["http"]["body_limit"], 65536);
    assert_eq!(value["http"]["header_timeout"], 0.5);
    assert_eq!(value["runs"]["retention"], 7200.0);
    assert_eq!(value["runs"]["max_bytes"], 1_000_000);
    let (code, _, err) = flowhost(&["config", "http.body_timeout=soon"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("http.body_timeout: expected a duration in seconds (10, 2.5, \"10s\", \"500ms\", \"2m\"), got \"soon\""),
        "{err}"
    );
}

#[test]
fn help_and_version() {
    let (code, out, _) = flowhost(&["--help"]);
    assert_eq!(code, 0);
    for command in ["ops", "flows", "check", "run"] {
        assert!(out.contains(command), "{out}");
    }
    let (code, out, _) = flowhost(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("flowhost {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Issue 22, items 2 and 3: no flow vanishes. A field mistake, a bad schema or a YAML syntax
/// error (with a caret and a hint) leaves every flow the file names listed as broken, and
/// asking for one says why, in `flows`, `run` and over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_flow_is_listed_and_says_why_wherever_it_is_asked_for() {
    let flows = folder(&[
        (
            "fields.yaml",
            "typo:\n  flow_content: EchoOp()\n  flow_contnet: EchoOp()\nbad_schema:\n  flow_content: EchoOp()\n  input_schema:\n    q: {type: strin}\n",
        ),
        (
            "basic.yaml",
            "echo_flow:\n  flow_content: EchoOp()\n  description: \"x\"\n\tstream: true\nsecond:\n  flow_content: EchoOp()\n",
        ),
    ]);
    let dir = flows.path().to_str().unwrap();
    let (code, out, err) = flowhost(&["flows", "--flows", dir, "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let status = |name: &str| {
        listed["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {out}"))["status"]
            .clone()
    };
    for name in ["typo", "bad_schema", "echo_flow", "second"] {
        assert_eq!(status(name), "broken", "{name}");
    }
    let (code, out, err) = flowhost(&["run", "echo_flow", "--flows", dir, "query=hi"]);
    assert_ne!(code, 0);
    let said = out + &err;
    assert!(
        said.contains("basic.yaml does not parse (line 4)"),
        "{said}"
    );
    assert!(said.contains("hint: YAML does not allow tabs"), "{said}");
    assert!(!said.contains("no flow named"), "{said}");
    let (_, out, err) = flowhost(&["run", "typo", "--flows", dir]);
    let said = out + &err;
    assert!(said.contains("did you mean `flow_content`?"), "{said}");
    let server = Server::start(flows.path(), &[]);
    flowhost::llm::tls_init();
    let response = reqwest::Client::new()
        .post(server.url("/bad_schema"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not a valid JSON Schema"),
        "{body}"
    );
}

/// Issue 22, items 1 and 6: `run` types `key=value` by the flow's schema (a string field keeps
/// `007` and `true` as text); a flows folder that does not exist stops `check` and `serve`.
#[test]
fn run_types_fields_by_the_schema_and_a_missing_folder_is_an_error() {
    let flows = folder(&[(
        "f.yaml",
        "echo:\n  flow_content: EchoOp()\n  input_schema:\n    query: {type: string, required: true}\n",
    )]);
    let dir = flows.path().to_str().unwrap();
    for value in ["007", "true", "1e3"] {
        let (code, out, err) =
            flowhost(&["run", "echo", "--flows", dir, &format!("query={value}")]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("\"answer\":\"{value}\"")), "{out}");
    }
    let (code, out, err) = flowhost(&["check", "--flows", "/no/such/folder"]);
    assert_eq!(code, 1, "{out}{err}");
    let (code, _, err) = flowhost(&["serve", "--flows", "/no/such/folder", "--port", "0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("the flows folder /no/such/folder does not exist"),
        "{err}"
    );
}

/// Issue 22 (friction): FlowLLM writes `stream: yes` (PyYAML's boolean); an unknown log level
/// is refused with the valid ones instead of silencing every log line.
#[test]
fn yes_is_a_boolean_and_an_unknown_log_level_is_refused() {
    let flows = folder(&[(
        "f.yaml",
        "s:\n  flow_content: EchoOp()\n  stream: yes\nj:\n  flow_content: EchoOp()\n  stream: Off\n",
    )]);
    let dir = flows.path().to_str().unwrap();
    let (code, out, err) = flowhost(&["flows", "--flows", dir, "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let stream = |name: &str| {
        listed["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()["stream"]
            .clone()
    };
    assert_eq!(stream("s"), true);
    assert_eq!(stream("j"), false);
    let (code, _, err) = flowhost(&["flows", "--flows", dir, "--log", "verbose"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`verbose` is not a level; use one of trace, debug, info, warn, error, off"),
        "{err}"
    );
}

/// Issue 22, item 4: `flowhost config` prints every effective key it was given, secrets
/// redacted (the API key, credentials in an LLM `base_url`).
#[test]
fn config_prints_every_effective_key_with_secrets_redacted() {
    let flows = folder(&[("f.yaml", "echo:\n  flow_content: EchoOp()\n")]);
    let dir = flows.path().to_str().unwrap();
    let (code, out, err) = flowhost(&[
        "config",
        "--flows",
        dir,
        "http.body_limit=100",
        "http.drain_delay=2",
        "http.header_timeout=5",
        "http.api_key=k3y-secret",
        "llm.default.base_url=https://llm.example/v1?api-key=query-secret",
        "runs.max_running=7",
    ]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["http"]["body_limit"], 100);
    assert_eq!(shown["http"]["drain_delay"], 2.0);
    assert_eq!(shown["http"]["header_timeout"], 5.0);
    assert_eq!(shown["http"]["keepalive_timeout"], 60.0);
    assert_eq!(shown["runs"]["max_running"], 7);
    assert!(shown["http"]["max_connections"].as_u64().unwrap() >= 64);
    assert!(
        !out.contains("k3y-secret") && !out.contains("query-secret"),
        "{out}"
    );
    assert_eq!(
        shown["llm"]["default"]["base_url"],
        "https://llm.example/v1?api-key=***"
    );
}

#[test]
fn check_warns_of_an_argument_the_op_does_not_know_and_names_an_unbuilt_op() {
    let flows = folder(&[(
        "f.yaml",
        "count:\n  flow_content: CountOp(nn=3)\nprompt:\n  flow_content: GenSystemPromptOp(templat=\"x\")\n",
    )]);
    let dir = flows.path().to_str().unwrap();
    let (code, out, err) = flowhost(&["check", "--flows", dir]);
    // CountOp's schema allows more properties: a warning, and the flow stays live.
    assert!(
        out.contains(&format!("{dir}/f.yaml:2:17: warning: flow `count`: CountOp: argument `nn` is not one the op knows (did you mean `n`?)")),
        "{out}"
    );
    // GenSystemPromptOp's forbids them: an error.
    assert!(
        out.contains(&format!("{dir}/f.yaml:4:17: error: flow `prompt`: GenSystemPromptOp: unknown argument `templat` (did you mean `template`?)")),
        "{out}"
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("1 flow(s) live, 1 broken, 1 error(s)"),
        "{err}"
    );

    // An op a plugin crate of the workspace defines but no built library has yet.
    let workspace = folder(&[
        ("Cargo.toml", "[workspace]\nmembers = []\n"),
        ("plugins/op-shout/src/lib.rs", "mod shout;\n"),
        (
            "plugins/op-shout/src/shout.rs",
            "pub struct ShoutOpTwo;\npub struct ShoutOp;\n",
        ),
        ("flows/s.yaml", "shout:\n  flow_content: ShoutOp()\n"),
    ]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .arg("check")
        .current_dir(workspace.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        out.contains("unknown op `ShoutOp`: plugins/op-shout/src/shout.rs defines it, but it is not built yet: `cargo build --workspace`"),
        "{out}"
    );
}
