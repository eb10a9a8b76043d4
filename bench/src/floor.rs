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
