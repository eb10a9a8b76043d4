//! Property tests over everything that parses outside input: the `flow_content` parser, the
//! flow YAML loader, the MCP stdio framing, the HTTP body parser, bearer tokens' JWT header
//! and claims, the audit chain reader and the flow-grant globs. Each must never panic and
//! must answer within a bounded time, whatever the input. CI runs a short pass
//! (`PROPTEST_CASES=2000`); a long one is `PROPTEST_CASES=200000 cargo test --test
//! integration fuzz` (see README).

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;

/// Per case: far above what a sane input takes (microseconds), far below a hang.
const BOUND: Duration = Duration::from_secs(10);

fn timed<T>(what: &str, input: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    assert!(
        started.elapsed() < BOUND,
        "{what} took {:?} on {input:?}",
        started.elapsed()
    );
    out
}

/// Text shaped like flow YAML: keys flowhost knows, indentation, flow mappings, numbers.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("flow:\n".to_string()),
        Just("x:\n".to_string()),
        Just("  flow_content: ".to_string()),
        Just("EchoOp() >> CountOp(n=3) | TickOp()".to_string()),
        Just("  stream: true\n".to_string()),
        Just("  limits: {total_timeout: 1e300, idle_timeout: -1, max_output_bytes: 18446744073709551616}\n".to_string()),
        Just("  limits:\n    first_chunk_timeout: .nan\n".to_string()),
        Just("  input_schema:\n    query: {type: string, required: true}\n".to_string()),
        Just("  input_schema: {type: object, properties: {a: {type: [1, {}]}}}\n".to_string()),
        Just("  description: \"d\"\n".to_string()),
        Just("&a [*a]\n".to_string()),
        Just("- - - -\n".to_string()),
        Just("? \n".to_string()),
        "[ -~\n]{0,12}",
    ];
    proptest::collection::vec(token, 0..12).prop_map(|parts| parts.concat())
}

fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\"jsonrpc\":\"2.0\"".to_string()),
        Just("\"id\":".to_string()),
        Just("\"method\":\"tools/call\"".to_string()),
        Just("\"params\":{\"name\":\"x\",\"arguments\":{}}".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("1e999".to_string()),
        Just("null".to_string()),
        Just("\"\\ud800\"".to_string()),
        "[ -~]{0,8}",
    ];
    proptest::collection::vec(token, 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn flow_content_parser(input in "\\PC{0,200}") {
        timed("expr::parse", &input, || { let _ = flowhost::parse::flow_content(&input); });
    }

    #[test]
    fn flow_yaml_loader_on_anything(input in "\\PC{0,300}") {
        timed("flow::parse_file", &input, || flowhost::parse::flow_file(Path::new("f.yaml"), &input));
    }

    #[test]
    fn flow_yaml_loader_on_flow_shaped_text(input in yamlish()) {
        let parsed = timed("flow::parse_file", &input, || flowhost::parse::flow_file(Path::new("f.yaml"), &input));
        for diagnostic in &parsed.diagnostics {
            prop_assert!(diagnostic.line >= 1 && diagnostic.col >= 1, "{diagnostic}");
        }
    }

    #[test]
    fn mcp_stdio_framing(input in prop_oneof![jsonish(), "\\PC{0,200}"]) {
        use flowhost::parse::{mcp_line as classify_line, McpLine as Line};
        let line = timed("classify_line", &input, || classify_line(input.as_bytes(), 1));
        if let Line::Reply(reply) = line {
            // Every answer to a bad line is itself one valid JSON-RPC error line.
            let text = serde_json::to_string(&reply).expect("serializable");
            prop_assert!(!text.contains('\n'));
            let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            prop_assert!(value["error"]["code"].is_i64(), "{text}");
        }
    }

    #[test]
    fn mcp_stdio_framing_on_bytes(input in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = flowhost::parse::mcp_line(&input, 1);
    }

    #[test]
    fn http_body_parser(input in prop_oneof![jsonish(), "\\PC{0,200}"]) {
        use flowhost::parse::http_body as parse_body;
        let body = axum::body::Bytes::from(input.clone());
        match timed("parse_body", &input, || parse_body(Ok(body), 1 << 20)) {
            Ok(map) => prop_assert!(serde_json::to_string(&map).is_ok()),
            Err(err) => prop_assert!(err.status.is_client_error(), "{err:?}"),
        }
    }

    #[test]
    fn jwt_parser(input in prop_oneof![jwtish(), "\\PC{0,300}"]) {
        let _ = timed("jwt", &input, || flowhost::parse::jwt(&input));
    }

    #[test]
    fn flow_grant_globs(
        patterns in proptest::collection::vec(prop_oneof![globish(), "\\PC{0,20}"], 0..4),
        flow in "\\PC{0,30}",
    ) {
        let allowed = timed("grant", &flow, || flowhost::parse::flow_grant(&patterns, &flow));
        // Exact names and `*` always mean what they say.
        if let Ok(allowed) = allowed {
            if patterns.iter().any(|p| p.trim() == "*" || p.trim() == flow) {
                prop_assert!(allowed, "{patterns:?} {flow:?}");
            }
        }
    }

    #[test]
    fn audit_chain_reader(lines in proptest::collection::vec(prop_oneof![jsonish(), "\\PC{0,80}"], 0..6)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let _ = flowhost::parse::audit_chain(&[path]);
    }
}

/// Text shaped like a JWT: three base64url parts, some of them real JSON.
fn jwtish() -> impl Strategy<Value = String> {
    use base64::Engine as _;
    let encode = |text: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let part = prop_oneof![
        Just(r#"{"alg":"RS256","kid":"k"}"#.to_string()),
        Just(r#"{"alg":"none"}"#.to_string()),
        Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_string()),
        Just(r#"{"alg":{"x":1},"kid":[1]}"#.to_string()),
        Just(r#"{"exp":18446744073709551616,"sub":1}"#.to_string()),
        Just(r#"{"exp":-1,"scope":["flow:*"]}"#.to_string()),
        "\\PC{0,40}",
    ]
    .prop_map(encode);
    proptest::collection::vec(prop_oneof![part, "[A-Za-z0-9_=.+/-]{0,20}"], 1..5)
        .prop_map(|parts| parts.join("."))
}

/// Glob-like patterns: classes, wildcards, escapes, unbalanced brackets.
fn globish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("*".to_string()),
            Just("?".to_string()),
            Just("[a-z]".to_string()),
            Just("[!x]".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("**".to_string()),
            Just("\\".to_string()),
            "[a-z_]{0,5}",
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}
