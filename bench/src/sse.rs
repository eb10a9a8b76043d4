//! Reading one SSE stream as a load client does: counting events across reads, the time to
//! the first byte, and whether it ended with `[DONE]`. Shared by `compare` and `load`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

/// One SSE stream: (chunks, saw [DONE], time to first chunk, total time, HTTP status).
pub async fn read_stream(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> (u64, bool, Duration, Duration, u16) {
    let started = Instant::now();
    let response = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(_) => return (0, false, Duration::ZERO, started.elapsed(), 0),
    };
    let status = response.status().as_u16();
    let mut stream = response.bytes_stream();
    let mut events = 0u64;
    let mut first = None;
    let mut last_byte = 0u8;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(Ok(bytes)) = stream.next().await {
        if first.is_none() && !bytes.is_empty() {
            first = Some(started.elapsed());
        }
        // Events end with a blank line; count "\n\n", also when split across reads.
        if last_byte == b'\n' && bytes.first() == Some(&b'\n') {
            events += 1;
        }
        events += memchr::memmem::find_iter(&bytes, b"\n\n").count() as u64;
        last_byte = bytes.last().copied().unwrap_or(last_byte);
        tail.extend_from_slice(&bytes[bytes.len().saturating_sub(32)..]);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 32);
        }
    }
    let done = memchr::memmem::find(&tail, b"[DONE]").is_some();
    let chunks = if done {
        events.saturating_sub(1)
    } else {
        events
    };
    (
        chunks,
        done,
        first.unwrap_or_default(),
        started.elapsed(),
        status,
    )
}
