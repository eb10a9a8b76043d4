//! The LLM service against a scripted upstream: an SSE replay server that dribbles scripted
//! bytes with delays and records requests and disconnects. A real local model is driven end
//! to end by host/tests/clients/test_llm_e2e.py (run by scripts/client-tests, which starts
//! scripts/local-llm), outside these tests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowhost::chunk::ChunkKind;
use flowhost::llm::{Config, Error, Model, Service, Timeouts};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::util::*;

#[derive(Clone, Debug)]
enum Step {
    /// Status line and headers (SSE content type unless the status is an error).
    Status(u16, &'static str),
    /// `data: {...}\n\n` with one `chat.completion.chunk` carrying this content delta.
    Token(&'static str),
    /// Bytes as given.
    Raw(&'static str),
    Sleep(u64),
    /// Keep the connection open, sending nothing.
    Hang,
}

use Step::*;

struct Upstream {
    url: String,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
    disconnects: Arc<Mutex<Vec<Instant>>>,
}

impl Upstream {
    /// Serves one script per connection, in order (the last one repeats).
    async fn start(scripts: Vec<Vec<Step>>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let disconnects = Arc::new(Mutex::new(Vec::new()));
        let scripts = Arc::new(Mutex::new(VecDeque::from(scripts)));
        {
            let (requests, bodies, disconnects) =
                (requests.clone(), bodies.clone(), disconnects.clone());
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let script = {
                        let mut scripts = scripts.lock().expect("lock");
                        if scripts.len() > 1 {
                            scripts.pop_front()
                        } else {
                            scripts.front().cloned()
                        }
                    }
                    .unwrap_or_default();
                    let (requests, bodies, disconnects) =
                        (requests.clone(), bodies.clone(), disconnects.clone());
                    tokio::spawn(async move {
                        serve(socket, script, &requests, &bodies, &disconnects).await;
                    });
                }
            });
        }
        Upstream {
            url,
            requests,
            bodies,
            disconnects,
        }
    }
}

async fn serve(
    mut socket: tokio::net::TcpStream,
    script: Vec<Step>,
    requests: &AtomicUsize,
    bodies: &Mutex<Vec<Value>>,
    disconnects: &Mutex<Vec<Instant>>,
) {
    // Read the request: headers, then Content-Length bytes of body.
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let headers = String::from_utf8_lossy(&buffer[..header_end]).to_lowercase();
    let length: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    if let Ok(body) = serde_json::from_slice(&buffer[header_end..header_end + length]) {
        bodies.lock().expect("lock").push(body);
    }
    for step in script {
        let bytes = match step {
            Status(code, extra) => {
                let kind = if code == 200 {
                    "text/event-stream"
                } else {
                    "application/json"
                };
                format!("HTTP/1.1 {code} Scripted\r\ncontent-type: {kind}\r\nconnection: close\r\n{extra}\r\n")
            }
            Token(text) => format!(
                "data: {}\n\n",
                json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})
            ),
            Raw(text) => text.to_string(),
            Sleep(ms) => {
                if closed_within(&mut socket, Duration::from_millis(ms)).await {
                    disconnects.lock().expect("lock").push(Instant::now());
                    return;
                }
                continue;
            }
            Hang => {
                if closed_within(&mut socket, Duration::from_secs(30)).await {
                    disconnects.lock().expect("lock").push(Instant::now());
                }
                return;
            }
        };
        if socket.write_all(bytes.as_bytes()).await.is_err() {
            disconnects.lock().expect("lock").push(Instant::now());
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// Waits `limit`; true if the client closed the connection meanwhile.
async fn closed_within(socket: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, socket.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

const SECRET: &str = "sk-test-secret-123";

fn service(upstream: &Upstream, timeouts: Timeouts, max_retries: u32) -> Service {
    let mut config = Config::default();
    config.models.insert(
        "default".into(),
        Model {
            model_name: "scripted".into(),
            params: serde_json::Map::new(),
            base_url: Some(upstream.url.clone()),
            api_key: Some(SECRET.into()),
            timeouts,
            max_retries,
        },
    );
    Service::new(config)
}

/// Timeouts no healthy exchange reaches on a loaded machine: for tests about what the service
/// sends and retries, not about timing.
fn patient() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(10),
        first_token: Duration::from_secs(30),
        idle: Duration::from_secs(30),
        total: Duration::from_secs(60),
    }
}

/// For the timeout tests: short enough to wait for, long enough for a loaded debug build to
/// answer a healthy request within.
fn short() -> Timeouts {
    Timeouts {
        first_token: Duration::from_secs(2),
        idle: Duration::from_secs(2),
        ..patient()
    }
}

/// Runs one chat; returns (kind, text) chunks and the result.
async fn chat(service: &Service) -> (Vec<(ChunkKind, String)>, Result<Value, Error>) {
    let mut chunks = Vec::new();
    let request = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.1});
    let result = service
        .chat_stream(&request, &CancellationToken::new(), |kind, text, _| {
            chunks.push((kind, text.to_string()));
            true
        })
        .await;
    (chunks, result)
}

fn answer(chunks: &[(ChunkKind, String)]) -> String {
    chunks
        .iter()
        .filter(|(k, _)| *k == ChunkKind::Answer)
        .map(|(_, t)| t.as_str())
        .collect()
}

const OK: &[Step] = &[
    Status(200, ""),
    Token("Hel"),
    Token("lo"),
    Raw("data: [DONE]\n\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_sends_what_the_op_asked_for() {
    let upstream = Upstream::start(vec![vec![
        Status(200, ""),
        Raw(": keep-alive comment\n\n"),
        Raw("data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"thinking\"}}]}\n\n"),
        Token("Hel"),
        Token("lo"),
        Raw("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n"),
        Raw("data: [DONE]\n\n"),
    ]])
    .await;
    let (chunks, result) = chat(&service(&upstream, patient(), 0)).await;
    let result = result.unwrap();
    assert_eq!(result["answer"], "Hello");
    assert_eq!(result["think"], "thinking");
    assert_eq!(result["usage"]["total_tokens"], 5);
    let kinds: Vec<ChunkKind> = chunks.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            ChunkKind::Think,
            ChunkKind::Answer,
            ChunkKind::Answer,
            ChunkKind::Usage
        ]
    );
    let body = upstream.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["model"], "scripted");
    assert_eq!(body["stream"], true);
    assert_eq!(body["temperature"], 0.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_stream_is_reported_without_retry() {
    let upstream = Upstream::start(vec![vec![
        Status(200, ""),
        Token("partial "),
        Raw("data: {\"error\":{\"message\":\"model overloaded\"}}\n\n"),
    ]])
    .await;
    let (chunks, result) = chat(&service(&upstream, patient(), 3)).await;
    let Err(Error::Failed(message)) = result else {
        panic!("{result:?}")
    };
    assert!(message.contains("model overloaded"), "{message}");
    assert_eq!(answer(&chunks), "partial ");
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        1,
        "no retry after the first token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_for_retry_after_then_succeeds_once() {
    let upstream = Upstream::start(vec![
        vec![
            Status(429, "retry-after: 1\r\n"),
            Raw("{\"error\":{\"message\":\"slow down\"}}"),
        ],
        OK.to_vec(),
    ])
    .await;
    let started = Instant::now();
    let (chunks, result) = chat(&service(&upstream, patient(), 2)).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After not honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(answer(&chunks), "Hello", "no duplicated output");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_with_backoff() {
    let upstream = Upstream::start(vec![
        vec![Status(500, ""), Raw("{\"error\":\"boom\"}")],
        vec![Status(503, ""), Raw("busy")],
        OK.to_vec(),
    ])
    .await;
    let (chunks, result) = chat(&service(&upstream, patient(), 3)).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(answer(&chunks), "Hello");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 3);

    // Out of retries: the error names the status and quotes the body, never the key.
    let upstream = Upstream::start(vec![vec![
        Status(500, ""),
        Raw(r#"{"error":"internal", "key": "sk-test-secret-123"}"#),
    ]])
    .await;
    let (_, result) = chat(&service(&upstream, patient(), 1)).await;
    let Err(Error::Failed(message)) = result else {
        panic!("{result:?}")
    };
    assert!(
        message.contains("HTTP 500") && message.contains("internal"),
        "{message}"
    );
    assert!(message.contains("gave up after 2 attempts"), "{message}");
    assert!(!message.contains(SECRET), "the API key leaked: {message}");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let upstream = Upstream::start(vec![vec![
        Status(401, ""),
        Raw(r#"{"error":{"message":"bad key"}}"#),
    ]])
    .await;
    let (_, result) = chat(&service(&upstream, patient(), 3)).await;
    let Err(Error::Failed(message)) = result else {
        panic!("{result:?}")
    };
    assert!(
        message.contains("HTTP 401") && message.contains("bad key"),
        "{message}"
    );
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_before_the_first_token_times_out_and_is_retried() {
    let upstream = Upstream::start(vec![vec![Status(200, ""), Hang], OK.to_vec()]).await;
    let started = Instant::now();
    let (chunks, result) = chat(&service(&upstream, short(), 1)).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(answer(&chunks), "Hello");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 2);

    let upstream = Upstream::start(vec![vec![Status(200, ""), Hang]]).await;
    let (_, result) = chat(&service(&upstream, short(), 0)).await;
    let Err(Error::Failed(message)) = result else {
        panic!("{result:?}")
    };
    assert!(message.contains("first-token timeout"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_mid_stream_hits_the_idle_timeout_without_retry() {
    let upstream = Upstream::start(vec![vec![Status(200, ""), Token("one "), Hang]]).await;
    let (chunks, result) = chat(&service(&upstream, short(), 3)).await;
    let Err(Error::Failed(message)) = result else {
        panic!("{result:?}")
    };
    assert!(message.contains("idle timeout"), "{message}");
    assert_eq!(answer(&chunks), "one ");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sse_lines_are_skipped() {
    let upstream = Upstream::start(vec![vec![
        Status(200, ""),
        Token("a"),
        Raw("data: {not json\n\n"),
        Raw("garbage line without a field\n\n"),
        Raw("event: ping\ndata: \n\n"),
        Token("b"),
        Raw("data: [DONE]\n\n"),
    ]])
    .await;
    let (chunks, result) = chat(&service(&upstream, patient(), 0)).await;
    assert_eq!(result.unwrap()["answer"], "ab");
    assert_eq!(answer(&chunks), "ab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_closes_the_upstream_connection() {
    let upstream = Upstream::start(vec![vec![
        Status(200, ""),
        Token("1"),
        Sleep(50),
        Token("2"),
        Sleep(5000),
        Token("never"),
    ]])
    .await;
    let service = service(&upstream, patient(), 0);
    let cancel = CancellationToken::new();
    let request = json!({"messages": [{"role": "user", "content": "hi"}]});
    let mut seen = 0;
    let result = service
        .chat_stream(&request, &cancel, |_, _, _| {
            seen += 1;
            seen < 2
        })
        .await;
    assert_eq!(result, Err(Error::Cancelled));
    let started = Instant::now();
    while upstream.disconnects.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "upstream connection left open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_disconnect_reaches_the_upstream() {
    let mut script = vec![Status(200, "")];
    for _ in 0..3 {
        script.push(Token("tok "));
        script.push(Sleep(100));
    }
    script.push(Sleep(10_000));
    let upstream = Upstream::start(vec![script]).await;
    let flows = folder(&[(
        "chat.yaml",
        "demo:\n  flow_content: GenSystemPromptOp() >> StreamChatOp()\n  stream: true\n",
    )]);
    let server = Server::start_with_env(
        flows.path(),
        &[],
        &[
            ("FLOW_LLM_BASE_URL", upstream.url.as_str()),
            ("FLOW_LLM_API_KEY", SECRET),
        ],
    );
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();
    let response = client
        .post(server.url("/demo"))
        .json(&json!({"query": "hi"}))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("\"chunk\":\"tok \""),
        "{first:?}"
    );
    let body = upstream.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        body["messages"][0]["role"], "system",
        "GenSystemPromptOp's prompt is sent"
    );
    assert_eq!(body["messages"][1]["content"], "hi");
    drop(stream);
    let dropped = Instant::now();
    loop {
        if let Some(at) = upstream.disconnects.lock().unwrap().first() {
            eprintln!(
                "client disconnect -> upstream closed in {:?}",
                at.duration_since(dropped)
            );
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(30),
            "upstream still open: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_llm_the_flow_fails_with_what_to_set_and_others_work() {
    let flows = folder(&[(
        "chat.yaml",
        "demo:\n  flow_content: GenSystemPromptOp() >> StreamChatOp()\n  stream: true\necho:\n  flow_content: EchoOp()\n",
    )]);
    let dir = flows.path().to_str().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowhost"))
        .args(["run", "demo", "--flows", dir, "query=hi"])
        .env_remove("FLOW_LLM_BASE_URL")
        .env_remove("FLOW_LLM_API_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("set FLOW_LLM_BASE_URL and FLOW_LLM_API_KEY"),
        "{stdout}"
    );
    let (code, out, _) = flowhost(&["run", "echo", "--flows", dir, "query=fine"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"answer\":\"fine\""));
}

/// The OpenAI route passes the request's sampling parameters to the chat op, over the flow's
/// own; other OpenAI fields stay out of the flow; `n` other than 1 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sampling_parameters_reach_the_upstream() {
    let script = vec![Status(200, ""), Token("ok")];
    let upstream = Upstream::start(vec![script.clone(), script]).await;
    let flows = folder(&[(
        "chat.yaml",
        "demo:\n  flow_content: StreamChatOp(temperature=0.9, max_tokens=50, top_p=0.5)\n  stream: true\n",
    )]);
    let server = Server::start_with_env(
        flows.path(),
        &[],
        &[
            ("FLOW_LLM_BASE_URL", upstream.url.as_str()),
            ("FLOW_LLM_API_KEY", SECRET),
        ],
    );
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();
    let refused = client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "demo", "n": 2, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`n` must be 1"));
    for stream in [false, true] {
        let response = client
            .post(server.url("/v1/chat/completions"))
            .json(&json!({
                "model": "demo", "stream": stream, "n": 1, "user": "u-1",
                "temperature": 0.1, "max_completion_tokens": 7, "stop": ["\n"], "seed": 42,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        if stream {
            let last = text
                .split("\n\n")
                .filter(|e| e.starts_with("data: {"))
                .last()
                .unwrap()
                .to_string();
            assert!(
                last.contains("\"choices\":[]") && last.contains("\"usage\""),
                "{text}"
            );
        }
    }
    let bodies = upstream.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    for body in bodies {
        assert_eq!(body["temperature"], 0.1, "the request wins: {body}");
        assert_eq!(body["top_p"], 0.5, "the flow's own stays: {body}");
        assert_eq!(body["max_completion_tokens"], 7);
        assert_eq!(body["stop"], json!(["\n"]));
        assert_eq!(body["seed"], 42);
        for absent in ["n", "user", "llm_params"] {
            assert!(body.get(absent).is_none(), "{absent} leaked: {body}");
        }
    }
}

/// An isolated chat op (`isolation: process`) reaches the LLM through the host: the request
/// crosses the worker pipe, the tokens stream back to the op and on to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_chat_op_streams_through_the_host() {
    let script = vec![
        Status(200, ""),
        Raw("data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n"),
        Token("Hel"),
        Token("lo"),
        Raw("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n"),
        Raw("data: [DONE]\n\n"),
    ];
    let upstream = Upstream::start(vec![script.clone(), script]).await;
    let flows = folder(&[(
        "chat.yaml",
        "demo:\n  flow_content: GenSystemPromptOp() >> StreamChatOp()\n  stream: true\n  isolation: process\nplain:\n  flow_content: ChatOp()\n  isolation: process\n",
    )]);
    let server = Server::start_with_env(
        flows.path(),
        &[],
        &[
            ("FLOW_LLM_BASE_URL", upstream.url.as_str()),
            ("FLOW_LLM_API_KEY", SECRET),
        ],
    );
    flowhost::llm::tls_init();
    let client = reqwest::Client::new();
    let body = client
        .post(server.url("/demo"))
        .json(&json!({"query": "hi"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let chunks: Vec<Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data:"))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let kinds: Vec<&str> = chunks
        .iter()
        .map(|c| c["chunk_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["think", "answer", "answer", "usage"], "{body}");
    assert_eq!(chunks[1]["chunk"], "Hel");
    let sent = upstream.bodies.lock().unwrap()[0].clone();
    assert_eq!(sent["messages"][0]["role"], "system", "{sent}");
    let answer: Value = client
        .post(server.url("/plain"))
        .json(&json!({"query": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["answer"], "Hello", "{answer}");
}

/// A credential in the base URL (`?api-key=…`, as Azure-style gateways take it, or a
/// `user:password@`) is never repeated in what the client sees, nor in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_in_the_base_url_is_never_repeated() {
    let upstream = Upstream::start(vec![vec![
        Status(401, ""),
        Raw(r#"{"error":{"message":"bad key"}}"#),
    ]])
    .await;
    let base = format!(
        "{}?api-key=query-secret-42",
        upstream
            .url
            .replace("http://", "http://user:pass-secret-43@")
    );
    let flows = folder(&[(
        "chat.yaml",
        "demo:\n  flow_content: GenSystemPromptOp() >> StreamChatOp()\n",
    )]);
    let server = Server::start_with_env(
        flows.path(),
        &[],
        &[
            ("FLOW_LLM_BASE_URL", base.as_str()),
            ("FLOW_LLM_API_KEY", SECRET),
        ],
    );
    flowhost::llm::tls_init();
    let response = reqwest::Client::new()
        .post(server.url("/demo"))
        .json(&json!({"query": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let text = response.text().await.unwrap();
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("api-key=***"), "{text}");
    for secret in ["query-secret-42", "pass-secret-43", SECRET] {
        assert!(!text.contains(secret), "{secret} in the answer: {text}");
        assert!(!server.log().contains(secret), "{secret} in the log");
    }
}
