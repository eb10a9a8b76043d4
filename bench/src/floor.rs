//! The floor: a bare axum server that writes pre-serialised SSE chunks in batches of 64 and
//! answers the non-stream endpoint with a fixed body. What the machine does without any host
//! logic; every flowhost figure is compared with it.

use axum::body::{Body, Bytes};
use axum::extract::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

const CHUNK: &str = "data:{\"flow_id\":\"floor\",\"chunk_type\":\"answer\",\"chunk\":\"hello \",\"done\":false,\"metadata\":{\"op\":\"CountOp\"}}\n\n";

pub async fn serve(port: u16) {
    let batch = Bytes::from(CHUNK.repeat(64));
    let app = Router::new()
        .route("/health", get(|| async { "{\"status\":\"healthy\"}" }))
        .route(
            "/fake_stream_flow",
            post(move |Json(body): Json<Value>| {
                let batch = batch.clone();
                async move { stream(body["n"].as_u64().unwrap_or(1000), batch) }
            }),
        )
        .route(
            "/fake_echo_flow",
            post(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"answer\":\"hi\",\"success\":true,\"metadata\":{}}",
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind floor port");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("floor server");
}

fn stream(n: u64, batch: Bytes) -> Response {
    let full = n / 64;
    let rest = (n % 64) as usize;
    let tail = Bytes::from(format!("{}data:[DONE]\n\n", CHUNK.repeat(rest)));
    let body = futures_util::stream::iter(
        (0..full)
            .map(move |_| Ok::<_, std::convert::Infallible>(batch.clone()))
            .chain(std::iter::once(Ok(tail))),
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

/// A slow OpenAI-compatible upstream for the chat-stream figures: every request streams
/// `tokens` content deltas, one every `interval`, then usage and `[DONE]`.
pub async fn serve_slow_llm(port: u16, tokens: u64, interval: std::time::Duration) {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || async move {
            let delta = Bytes::from_static(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"tok \"}}]}\n\n",
            );
            let body = futures_util::stream::unfold(0u64, move |sent| {
                let delta = delta.clone();
                async move {
                    if sent > tokens {
                        return None;
                    }
                    if sent == tokens {
                        let tail = Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\ndata: [DONE]\n\n");
                        return Some((Ok::<_, std::convert::Infallible>(tail), sent + 1));
                    }
                    if sent > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    Some((Ok(delta), sent + 1))
                }
            });
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                Body::from_stream(body),
            )
                .into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind slow LLM port");
    axum::serve(listener, app).await.expect("slow LLM server");
}

/// An upstream for agent figures (`flowhost-bench tool-llm PORT`): when the last message is
/// not a tool result it asks for the first tool with `{"query": "ping"}`, else it answers.
/// Both replies are pre-serialised and sent at once, so what is timed is the host.
pub async fn serve_tool_llm(port: u16) {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            let last_is_tool = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .is_some_and(|m| m["role"] == "tool");
            let tool = body["tools"][0]["function"]["name"].as_str().unwrap_or("echo");
            let text = if last_is_tool || body.get("tools").is_none() {
                "data: {\"choices\":[{\"delta\":{\"content\":\"done\"}}]}\n\ndata: [DONE]\n\n"
                    .to_string()
            } else {
                format!(
                    "data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{{\"name\":\"{tool}\",\"arguments\":\"{{\\\"query\\\": \\\"ping\\\"}}\"}}}}]}}}}]}}\n\ndata: [DONE]\n\n"
                )
            };
            ([(header::CONTENT_TYPE, "text/event-stream")], text).into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind tool LLM port");
    axum::serve(listener, app).await.expect("tool LLM server");
}
