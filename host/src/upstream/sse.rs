//! The HTTP+SSE transport of MCP 2024-11-05 (`type: sse`, what FlowLLM's shipped configs use;
//! rmcp's client no longer has it): `GET url` opens an event stream whose first `endpoint`
//! event names where to `POST` messages; the server's messages arrive as `message` events.
//! reqwest and eventsource-stream, as the LLM service uses them.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use tokio::sync::mpsc;

/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(30);

/// A message to POST, and where to say how it went.
type Outgoing = (
    TxJsonRpcMessage<RoleClient>,
    tokio::sync::oneshot::Sender<Result<(), std::io::Error>>,
);

/// An open SSE session: the writer that POSTs messages in the order they were sent (rmcp runs
/// each send as its own task), and the server's messages as they arrive.
pub(super) struct SseTransport {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    incoming: mpsc::Receiver<RxJsonRpcMessage<RoleClient>>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Opens the event stream and waits (up to `within`) for the `endpoint` event.
pub(super) async fn connect(
    url: &str,
    headers: &[(String, String)],
    within: Duration,
) -> Result<SseTransport, String> {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) {
            map.insert(name, value);
        }
    }
    let client = reqwest::Client::builder()
        .connect_timeout(within)
        .build()
        .map_err(|err| format!("no HTTP client: {err}"))?;
    let response = client
        .get(url)
        .headers(map.clone())
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .map_err(|err| format!("GET failed: {}", without_url(&err)))?;
    if !response.status().is_success() {
        return Err(format!("GET answered {}", response.status()));
    }
    let base = response.url().clone();
    let mut events = response.bytes_stream().eventsource();
    let endpoint = tokio::time::timeout(within, async {
        while let Some(event) = events.next().await {
            match event {
                Ok(event) if event.event == "endpoint" => return Ok(event.data),
                Ok(_) => continue,
                Err(err) => return Err(format!("the event stream failed: {err}")),
            }
        }
        Err("the event stream ended before its `endpoint` event".to_string())
    })
    .await
    .map_err(|_| format!("no `endpoint` event within {}s", within.as_secs()))??;
    let endpoint = base
        .join(endpoint.trim())
        .map_err(|err| format!("the `endpoint` event is not a URL: {err}"))?;
    // Messages (and the configured headers) go only where the stream came from, as the
    // official SDKs insist.
    if endpoint.origin() != base.origin() {
        return Err(format!(
            "the `endpoint` event names another origin ({}), refused",
            super::settings::shown_url(endpoint.as_str())
        ));
    }
    let (tx, incoming) = mpsc::channel(256);
    let reader = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let Ok(event) = event else { return };
            if !(event.event.is_empty() || event.event == "message") {
                continue;
            }
            match serde_json::from_str::<RxJsonRpcMessage<RoleClient>>(&event.data) {
                Ok(message) => {
                    if tx.send(message).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(
                    "an MCP server sent a message that is not JSON-RPC ({err}); ignored"
                ),
            }
        }
    });
    let (outgoing, mut queue) = mpsc::unbounded_channel::<Outgoing>();
    let endpoint: Arc<str> = endpoint.as_str().into();
    let writer = tokio::spawn(async move {
        while let Some((message, done)) = queue.recv().await {
            let posted = client
                .post(&*endpoint)
                .headers(map.clone())
                .timeout(POST_TIMEOUT)
                .json(&message)
                .send()
                .await;
            let result = match posted {
                Err(err) => Err(std::io::Error::other(without_url(&err))),
                Ok(response) if !response.status().is_success() => Err(std::io::Error::other(
                    format!("POST answered {}", response.status()),
                )),
                // Read to the end: the connection is reused.
                Ok(response) => response
                    .bytes()
                    .await
                    .map(drop)
                    .map_err(|err| std::io::Error::other(without_url(&err))),
            };
            let _ = done.send(result);
        }
    });
    Ok(SseTransport {
        outgoing,
        incoming,
        reader,
        writer,
    })
}

/// reqwest's error text without its URL (which may carry a key in its query).
fn without_url(err: &reqwest::Error) -> String {
    let text = err.to_string();
    match err.url() {
        Some(url) => text.replace(url.as_str(), &super::settings::shown_url(url.as_str())),
        None => text,
    }
}

impl rmcp::transport::Transport<RoleClient> for SseTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        // Queued now, in the caller's order; the future waits for its POST.
        let (done, posted) = tokio::sync::oneshot::channel();
        let queued = self.outgoing.send((item, done));
        async move {
            queued.map_err(|_| std::io::Error::other("the SSE session is closed"))?;
            posted
                .await
                .map_err(|_| std::io::Error::other("the SSE session is closed"))?
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        self.incoming.recv().await
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader.abort();
        self.writer.abort();
        self.incoming.close();
        Ok(())
    }
}
