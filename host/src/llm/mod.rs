//! The LLM service ops reach through their context: OpenAI-compatible chat completions,
//! streamed with reqwest and parsed as SSE. `reasoning_content` becomes think chunks, `content`
//! answer chunks, tool-call deltas are accumulated into one tool chunk per call, usage becomes a
//! usage chunk. Retries (exponential backoff with jitter, `Retry-After` honoured) happen only
//! before the first token, so output is never duplicated. Knows nothing of flows or transports.

use std::collections::BTreeMap;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::chunk::ChunkKind;
use crate::telemetry::{Cx, Kind, Role, Span};
use wire::{request_body, Accumulated};

mod wire;

/// One named LLM (FlowLLM's `llm: {name: {backend, model_name, params}}`).
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub model_name: String,
    pub params: Map<String, Value>,
    /// `FLOW_LLM_BASE_URL` unless the entry sets `base_url`.
    pub base_url: Option<String>,
    /// `FLOW_LLM_API_KEY` unless the entry sets `api_key`.
    pub api_key: Option<String>,
    pub timeouts: Timeouts,
    /// Attempts after the first, before the first token only.
    pub max_retries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            first_token: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

/// The configured LLMs, by name (`default` unless an op asks for another).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub models: BTreeMap<String, Model>,
}

/// The HTTP client and the configuration; shared by every op call.
pub struct Service {
    config: Config,
    client: reqwest::Client,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("models", &self.config.models.keys())
            .finish()
    }
}

/// How a chat request failed.
#[derive(Debug, PartialEq)]
pub enum Error {
    /// Nothing to call: the message names what to set.
    NotConfigured(String),
    Cancelled,
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotConfigured(message) | Error::Failed(message) => f.write_str(message),
            Error::Cancelled => f.write_str("the LLM request was cancelled"),
        }
    }
}

impl Error {
    /// The span's `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            Error::NotConfigured(_) => "not_configured",
            Error::Cancelled => "cancelled",
            Error::Failed(_) => "failed",
        }
    }
}

/// Installs rustls' crypto provider for the process (idempotent). reqwest is built without
/// one so that ring, lighter to build than aws-lc, can be chosen; call this before building any
/// reqwest client.
pub fn tls_init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Service {
    pub fn new(config: Config) -> Service {
        tls_init();
        let connect = config
            .models
            .values()
            .map(|m| m.timeouts.connect)
            .max()
            .unwrap_or(Timeouts::default().connect);
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Service { config, client }
    }

    fn model(&self, name: &str) -> Result<(&Model, &str, &str), Error> {
        let Some(model) = self.config.models.get(name) else {
            let known: Vec<&str> = self.config.models.keys().map(String::as_str).collect();
            return Err(Error::NotConfigured(format!(
                "no LLM named `{name}` in the llm: config (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        let missing: Vec<&str> = [
            ("FLOW_LLM_BASE_URL", model.base_url.is_none()),
            ("FLOW_LLM_API_KEY", model.api_key.is_none()),
        ]
        .iter()
        .filter(|(_, missing)| *missing)
        .map(|(name, _)| *name)
        .collect();
        if !missing.is_empty() {
            return Err(Error::NotConfigured(format!(
                "no LLM is configured: set {} (for example FLOW_LLM_BASE_URL=https://api.openai.com/v1; scripts/local-llm runs a local model and prints the values)",
                missing.join(" and ")
            )));
        }
        Ok((
            model,
            model.base_url.as_deref().unwrap_or_default(),
            model.api_key.as_deref().unwrap_or_default(),
        ))
    }

    /// Streams one chat completion. `on_chunk` gets each chunk (kind, text, is JSON) and
    /// returns `false` to stop; the result is `{answer, think, tool_calls, usage}`.
    pub async fn chat_stream(
        &self,
        request: &Value,
        cancel: &CancellationToken,
        on_chunk: impl FnMut(ChunkKind, &str, bool) -> bool,
    ) -> Result<Value, Error> {
        self.chat_traced(request, cancel, &Cx::default(), on_chunk)
            .await
    }

    /// [`Service::chat_stream`] as a GenAI client span under `trace` (`chat {model}`: the
    /// model, token usage, time to first token as an event, retries as events), whose
    /// `traceparent` goes upstream with the request.
    pub(crate) async fn chat_traced(
        &self,
        request: &Value,
        cancel: &CancellationToken,
        trace: &Cx,
        on_chunk: impl FnMut(ChunkKind, &str, bool) -> bool,
    ) -> Result<Value, Error> {
        let name = request
            .get("llm")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let model_name = request
            .get("model")
            .and_then(Value::as_str)
            .or_else(|| self.config.models.get(name).map(|m| m.model_name.as_str()))
            .unwrap_or(name);
        let span = trace.start_with(
            Kind::Client,
            || format!("chat {model_name}"),
            |attributes| {
                attributes.set("gen_ai.operation.name", "chat");
                attributes.set("gen_ai.system", "openai");
                attributes.set("gen_ai.provider.name", "openai");
            },
        );
        span.model(model_name);
        span.role(Role::Llm);
        let result = self.chat_in(request, name, cancel, &span, on_chunk).await;
        match &result {
            Ok(done) => {
                let usage = &done["usage"];
                span.usage(
                    usage["prompt_tokens"].as_i64(),
                    usage["completion_tokens"].as_i64(),
                );
            }
            Err(err) => {
                span.set("error.type", err.kind());
                span.fail(&err.to_string());
            }
        }
        result
    }

    async fn chat_in(
        &self,
        request: &Value,
        name: &str,
        cancel: &CancellationToken,
        span: &Span,
        mut on_chunk: impl FnMut(ChunkKind, &str, bool) -> bool,
    ) -> Result<Value, Error> {
        let (model, base_url, api_key) = self.model(name)?;
        let body = request_body(model, request)?;
        let target = chat_url(base_url);
        // Messages (to the log and to clients) show the URL without its credentials.
        let secrets = Secrets::new(api_key, &target);
        let url = secrets.shown.clone();
        if span.is_recording() {
            if let Ok(parsed) = reqwest::Url::parse(&target) {
                if let Some(host) = parsed.host_str() {
                    span.set("server.address", host.to_string());
                }
                if let Some(port) = parsed.port_or_known_default() {
                    span.set("server.port", i64::from(port));
                }
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        span.cx().inject(&mut headers);
        let deadline = tokio::time::Instant::now() + model.timeouts.total;
        let mut attempt = 0u32;
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep_until(deadline) => return Err(Error::Failed(format!(
                    "LLM request to {url} did not finish within {}s (total timeout)",
                    model.timeouts.total.as_secs_f64()
                ))),
                outcome = self.attempt((&target, &url, api_key), &body, model, (&headers, span), &mut on_chunk) => outcome,
            };
            match outcome {
                Attempt::Done(result) => return Ok(result),
                Attempt::Stopped => return Err(Error::Cancelled),
                Attempt::Fatal(message) => return Err(Error::Failed(secrets.scrub(&message))),
                Attempt::Retry { message, after } => {
                    if attempt >= model.max_retries {
                        return Err(Error::Failed(secrets.scrub(&format!(
                            "{message} (gave up after {} attempts)",
                            attempt + 1
                        ))));
                    }
                    let wait = after.unwrap_or_else(|| backoff(attempt));
                    if span.is_recording() {
                        span.event(
                            "retry",
                            &[("exception.message", secrets.scrub(&message).into())],
                        );
                    }
                    tracing::warn!(
                        "LLM request failed before the first token: {}; retrying in {:.2}s",
                        secrets.scrub(&message),
                        wait.as_secs_f64()
                    );
                    attempt += 1;
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(Error::Cancelled),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One request to `target`; its messages name the URL as `url` (without credentials).
    async fn attempt(
        &self,
        (target, url, api_key): (&str, &str, &str),
        body: &Value,
        model: &Model,
        (headers, span): (&reqwest::header::HeaderMap, &Span),
        on_chunk: &mut impl FnMut(ChunkKind, &str, bool) -> bool,
    ) -> Attempt {
        let response = self
            .client
            .post(target)
            .headers(headers.clone())
            .bearer_auth(api_key)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(body)
            .send();
        let response = match tokio::time::timeout(model.timeouts.first_token, response).await {
            Err(_) => {
                return Attempt::Retry {
                    message: format!(
                        "no response from {url} within {}s (first-token timeout)",
                        model.timeouts.first_token.as_secs_f64()
                    ),
                    after: None,
                }
            }
            Ok(Err(err)) => {
                return Attempt::Retry {
                    message: format!("cannot reach {url}: {}", error_chain(&err)),
                    after: None,
                }
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let after = retry_after(response.headers());
            let text = response.text().await.unwrap_or_default();
            let message = format!(
                "LLM request to {url} failed: HTTP {status}: {}",
                excerpt(&text)
            );
            let retryable = status.as_u16() == 429 || status.is_server_error();
            return if retryable {
                Attempt::Retry { message, after }
            } else {
                Attempt::Fatal(message)
            };
        }
        let mut events = response.bytes_stream().eventsource();
        let mut state = Accumulated::default();
        let mut first = true;
        loop {
            let wait = if first {
                model.timeouts.first_token
            } else {
                model.timeouts.idle
            };
            let event = match tokio::time::timeout(wait, events.next()).await {
                Err(_) if first => {
                    return Attempt::Retry {
                        message: format!(
                            "no first token from {url} within {}s (first-token timeout)",
                            wait.as_secs_f64()
                        ),
                        after: None,
                    }
                }
                Err(_) => {
                    return Attempt::Fatal(format!(
                        "the LLM stream from {url} stalled: no data for {}s (idle timeout)",
                        wait.as_secs_f64()
                    ))
                }
                Ok(None) => break,
                Ok(Some(Err(err))) if first => {
                    return Attempt::Retry {
                        message: format!("the LLM stream from {url} failed: {err}"),
                        after: None,
                    }
                }
                Ok(Some(Err(err))) => {
                    return Attempt::Fatal(format!(
                        "the LLM stream from {url} broke after {} chunks: {err}",
                        state.chunks
                    ))
                }
                Ok(Some(Ok(event))) => event,
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                break;
            }
            let value: Value = match serde_json::from_str(data) {
                Ok(value) => value,
                Err(_) => {
                    tracing::warn!(
                        "skipping a malformed SSE event from {url}: {}",
                        excerpt(data)
                    );
                    continue;
                }
            };
            if let Some(error) = value.get("error") {
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| error.to_string(), str::to_string);
                let message = format!("the LLM at {url} reported an error: {}", excerpt(&message));
                return if first {
                    Attempt::Retry {
                        message,
                        after: None,
                    }
                } else {
                    Attempt::Fatal(message)
                };
            }
            if first {
                span.event("gen_ai.first_token", &[]);
            }
            first = false;
            if !state.absorb(&value, on_chunk) {
                return Attempt::Stopped;
            }
        }
        if first {
            return Attempt::Retry {
                message: format!("the LLM stream from {url} ended without any data"),
                after: None,
            };
        }
        match state.finish(on_chunk) {
            Some(result) => Attempt::Done(result),
            None => Attempt::Stopped,
        }
    }
}

enum Attempt {
    Done(Value),
    /// The consumer went away.
    Stopped,
    Fatal(String),
    Retry {
        message: String,
        after: Option<Duration>,
    },
}

/// 0.5 s, 1 s, 2 s, ... up to 20 s, each ±25% so clients that failed together do not retry
/// together.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 0.5 * 2f64.powi(attempt.min(6) as i32);
    let jitter = 0.75 + fastrand::f64() * 0.5;
    Duration::from_secs_f64((base * jitter).min(20.0))
}

/// `Retry-After` in seconds (an HTTP date is ignored), capped at a minute.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(60.0)))
}

/// The first 300 characters of an upstream body, on one line.
fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 300 {
        format!("{}…", flat.chars().take(300).collect::<String>())
    } else if flat.is_empty() {
        "(empty body)".to_string()
    } else {
        flat
    }
}

/// Never let the API key reach a log line or an error chunk.
/// A URL as it may be shown (in `flowhost config`, in messages): credentials as `***`.
pub(crate) fn shown_url(url: &str) -> String {
    Secrets::new("", url).shown
}

fn chat_url(base_url: &str) -> String {
    match reqwest::Url::parse(base_url) {
        // `https://host/v1?api-version=x` → `https://host/v1/chat/completions?api-version=x`
        Ok(mut parsed) if parsed.query().is_some() => {
            let path = format!("{}/chat/completions", parsed.path().trim_end_matches('/'));
            parsed.set_path(&path);
            parsed.to_string()
        }
        _ => format!("{}/chat/completions", base_url.trim_end_matches('/')),
    }
}

/// What no message may repeat: the API key, and the credentials a `base_url` can carry (its
/// query values, as in `?api-key=…`, and a `user:password@`).
struct Secrets {
    values: Vec<String>,
    url: String,
    /// The URL with those replaced by `***`.
    shown: String,
}

impl Secrets {
    fn new(api_key: &str, url: &str) -> Secrets {
        let mut values = vec![api_key.to_string()];
        let shown = match reqwest::Url::parse(url) {
            Ok(mut parsed) => {
                if let Some(password) = parsed.password() {
                    values.push(password.to_string());
                    let _ = parsed.set_password(Some("***"));
                }
                if parsed.query().is_some() {
                    let pairs: Vec<(String, String)> = parsed
                        .query_pairs()
                        .map(|(k, v)| {
                            values.push(v.into_owned());
                            (k.into_owned(), "***".to_string())
                        })
                        .collect();
                    if let Some(raw) = parsed.query() {
                        values.push(raw.to_string());
                    }
                    parsed.query_pairs_mut().clear().extend_pairs(pairs);
                }
                parsed.to_string()
            }
            Err(_) => url.split('?').next().unwrap_or_default().to_string(),
        };
        values.retain(|v| v.len() >= 4);
        // Longest first, so a value inside another is not left half replaced.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Secrets {
            values,
            url: url.to_string(),
            shown,
        }
    }

    fn scrub(&self, message: &str) -> String {
        let mut message = if self.url.is_empty() {
            message.to_string()
        } else {
            message.replace(&self.url, &self.shown)
        };
        for value in &self.values {
            message = message.replace(value.as_str(), "***");
        }
        message
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deltas_become_chunks_and_tool_calls_accumulate() {
        let mut seen = Vec::new();
        let mut sink = |kind: ChunkKind, text: &str, _json: bool| {
            seen.push((kind, text.to_string()));
            true
        };
        let mut state = Accumulated::default();
        for event in [
            json!({"choices": [{"delta": {"reasoning_content": "hmm"}}]}),
            json!({"choices": [{"delta": {"content": "Hel"}}]}),
            json!({"choices": [{"delta": {"content": "lo"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get", "arguments": "{\"a\""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
        ] {
            assert!(state.absorb(&event, &mut sink));
        }
        let result = state.finish(&mut sink).unwrap();
        assert_eq!(result["answer"], "Hello");
        assert_eq!(result["think"], "hmm");
        assert_eq!(
            result["tool_calls"],
            json!([{"id": "c1", "name": "get", "arguments": "{\"a\":1}"}])
        );
        assert_eq!(result["usage"]["total_tokens"], 5);
        let kinds: Vec<ChunkKind> = seen.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                ChunkKind::Think,
                ChunkKind::Answer,
                ChunkKind::Answer,
                ChunkKind::Tool,
                ChunkKind::Usage
            ]
        );
    }

    #[test]
    fn request_body_layers_params() {
        let model = Model {
            model_name: "m".into(),
            params: json!({"temperature": 0.6, "max_tokens": 10})
                .as_object()
                .cloned()
                .unwrap(),
            base_url: None,
            api_key: None,
            timeouts: Timeouts::default(),
            max_retries: 0,
        };
        let body = request_body(
            &model,
            &json!({"llm": "x", "messages": [], "temperature": 0, "stream": false}),
        )
        .unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["max_tokens"], 10);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(body.get("llm").is_none());
    }

    #[test]
    fn secrets_and_sizes() {
        let plain = Secrets::new("sk-secret-1", "http://h/v1/chat/completions");
        assert_eq!(plain.scrub("key sk-secret-1 leaked"), "key *** leaked");
        // A credential in the base URL's query or userinfo is never repeated.
        let url = chat_url("https://u:hunter22@llm.example/v1?api-key=abcd1234&api-version=2024");
        assert_eq!(
            url,
            "https://u:hunter22@llm.example/v1/chat/completions?api-key=abcd1234&api-version=2024"
        );
        let secrets = Secrets::new("", &url);
        assert_eq!(
            secrets.shown,
            "https://u:***@llm.example/v1/chat/completions?api-key=***&api-version=***"
        );
        let said = secrets.scrub(&format!(
            "error sending request for url ({url}): connection refused; key abcd1234"
        ));
        assert!(
            !said.contains("abcd1234") && !said.contains("hunter22"),
            "{said}"
        );
        assert!(
            said.contains("llm.example/v1/chat/completions?api-key=***"),
            "{said}"
        );
        assert_eq!(excerpt(&"x ".repeat(400)).chars().count(), 301);
        assert!(
            backoff(0) >= Duration::from_millis(375) && backoff(0) <= Duration::from_millis(625)
        );
        assert!(backoff(30) <= Duration::from_secs(20));
    }
}
