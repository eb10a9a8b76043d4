//! An op's questions to the MCP client (`ctx.sample`, `ctx.elicit`, `ctx.roots`): client
//! requests for 2025 revisions, input-required rounds for 2026-07-28 ([`Exchange`], with the
//! sealed `requestState` and its key), `tasks/update` once the call is a task.

use std::sync::Arc;

use rmcp::model::ErrorData;
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use serde_json::{json, Map, Value};

use super::tasks::TaskSlot;
use crate::exec;

/// Asks the MCP client of one `tools/call` on behalf of its ops (`ctx.sample`, `ctx.elicit`,
/// `ctx.roots`). 2025 revisions: `sampling/createMessage`, `elicitation/create` and
/// `roots/list` requests to clients that declared the capability. 2026-07-28 (no
/// server-to-client requests): through the call's [`Exchange`].
pub(crate) struct ClientAsker {
    pub(crate) peer: rmcp::service::Peer<RoleServer>,
    /// What the client declared (per request in 2026-07-28, at initialize before).
    pub(crate) capabilities: Option<rmcp::model::ClientCapabilities>,
    /// Set for 2026-07-28 calls (multi round-trip requests).
    pub(crate) exchange: Option<Arc<Exchange>>,
    /// Set once the call became a task: questions wait for `tasks/update`.
    pub(crate) task: Arc<TaskSlot>,
}

/// `ctx.sample`'s `{messages, options}` as MCP `CreateMessageRequest` params: string contents
/// become text blocks, the options are MCP's own params, `maxTokens` defaults to 1000. The
/// executor has checked that `messages` is a list.
fn sampling_params(request: &Value) -> Value {
    let messages: Vec<Value> = request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let content = match &m["content"] {
                Value::String(text) => json!({"type": "text", "text": text}),
                other => other.clone(),
            };
            json!({"role": m["role"].as_str().unwrap_or("user"), "content": content})
        })
        .collect();
    let mut params = match &request["options"] {
        Value::Object(options) => options.clone(),
        _ => serde_json::Map::new(),
    };
    params.insert("messages".into(), Value::Array(messages));
    params
        .entry("maxTokens")
        .or_insert_with(|| Value::from(1000));
    Value::Object(params)
}

/// The MCP method and client capability of each service.
fn service_method(service: &str) -> (&'static str, &'static str) {
    match service {
        "sample" => ("sampling/createMessage", "sampling"),
        "elicit" => ("elicitation/create", "elicitation"),
        _ => ("roots/list", "roots"),
    }
}

impl exec::Asker for ClientAsker {
    #[allow(deprecated)] // sampling and roots: deprecated by SEP-2577, part of the 2025 revisions
    fn ask(&self, service: &'static str, request: Value, name: Option<String>) -> exec::AskFuture {
        use exec::AskError;
        // First, so a 2026-07-28 question's key (a hash of method and params) is as before.
        let request = if service == "sample" {
            sampling_params(&request)
        } else {
            request
        };
        let peer = self.peer.clone();
        let (method, capability) = service_method(service);
        let declared = self
            .capabilities
            .as_ref()
            .is_some_and(|c| match capability {
                "sampling" => c.sampling.is_some(),
                "elicitation" => c.elicitation.is_some(),
                _ => c.roots.is_some(),
            });
        let exchange = self.exchange.clone();
        let slot = self.task.clone();
        Box::pin(async move {
            if let Some(task) = slot.wait().await {
                if !declared {
                    return Err(AskError::Unsupported(format!(
                        "the MCP client did not declare the {capability} capability"
                    )));
                }
                let request: rmcp::model::InputRequest =
                    serde_json::from_value(json!({"method": method, "params": request})).map_err(
                        |err| AskError::Failed(format!("not a valid MCP {method} request: {err}")),
                    )?;
                let key = name.unwrap_or_else(|| format!("{capability}-{}", uuid_like()));
                return task.request_input(key, request).await.map_err(|exit| {
                    AskError::Failed(match exit {
                        rmcp::task_manager::TaskExit::Cancelled => "the task was cancelled".into(),
                        rmcp::task_manager::TaskExit::Error(err) => err.message.to_string(),
                    })
                });
            }
            if let Some(exchange) = exchange {
                return exchange
                    .ask(method, capability, declared, request, name)
                    .await;
            }
            if !declared {
                return Err(AskError::Unsupported(format!(
                    "the MCP client did not declare the {capability} capability"
                )));
            }
            let failed = |err: rmcp::ServiceError| {
                AskError::Failed(format!("the MCP client's answer to {method} failed: {err}"))
            };
            let invalid = |err: serde_json::Error| {
                AskError::Failed(format!("not a valid MCP {method} request: {err}"))
            };
            let result = match service {
                "sample" => serde_json::to_value(
                    peer.create_message(serde_json::from_value(request).map_err(invalid)?)
                        .await
                        .map_err(failed)?,
                ),
                "elicit" => serde_json::to_value(
                    peer.create_elicitation(serde_json::from_value(request).map_err(invalid)?)
                        .await
                        .map_err(failed)?,
                ),
                _ => serde_json::to_value(peer.list_roots().await.map_err(failed)?),
            };
            result.map_err(|err| AskError::Failed(err.to_string()))
        })
    }
}

/// A fresh key for a task's question (keys must not repeat within a task).
fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "{:x}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// One 2026-07-28 `tools/call` round (SEP-2322 multi round-trip requests). The run is the same
/// code every round: what the client answered so far (`inputResponses`, plus the earlier
/// rounds' answers sealed in `requestState`) is looked up by a key made from the request, so
/// an op that asks the same thing again gets its answer at once; a new question becomes an
/// input request of this round's result. Nothing is kept between rounds on the server: any
/// replica sharing `http.mcp_state_key` can serve the next round.
pub(crate) struct Exchange {
    pub(crate) answers: Map<String, Value>,
    /// Questions of this round: key → `{method, params}`.
    pub(crate) requests: std::sync::Mutex<Map<String, Value>>,
    /// A capability an op needed that the client did not declare.
    missing: std::sync::Mutex<Option<&'static str>>,
    pub(crate) asked: Arc<tokio::sync::Notify>,
}

impl Exchange {
    /// Opens a round from the request's `requestState` and `inputResponses`. A state that was
    /// not sealed by this host (or a replica with the same key) is refused.
    pub(crate) fn open(
        request_state: Option<&str>,
        responses: Option<&std::collections::BTreeMap<String, Value>>,
    ) -> Result<Exchange, ErrorData> {
        let mut answers = match request_state {
            None => Map::new(),
            Some(sealed) => state_codec().open_json::<Map<String, Value>>(sealed).map_err(|err| {
                ErrorData::invalid_params(
                    format!("requestState failed its integrity check ({err}): it was changed, expired, or sealed by a host with another http.mcp_state_key; start the call again without it"),
                    None,
                )
            })?,
        };
        for (key, value) in responses.into_iter().flatten() {
            if !value.is_object() {
                return Err(ErrorData::invalid_params(
                    format!("inputResponses.{key} must be an object (the client's result for that input request: an ElicitResult, CreateMessageResult or ListRootsResult), found {value}"),
                    None,
                ));
            }
            answers.insert(key.clone(), value.clone());
        }
        Ok(Exchange {
            answers,
            requests: Default::default(),
            missing: Default::default(),
            asked: Arc::default(),
        })
    }

    async fn ask(
        &self,
        method: &'static str,
        capability: &'static str,
        declared: bool,
        params: Value,
        name: Option<String>,
    ) -> Result<Value, exec::AskError> {
        // The op's name for the question, else one made from the question itself: the same
        // every round, so the answer finds its way back.
        let key = name.unwrap_or_else(|| {
            format!(
                "{}-{:016x}",
                capability,
                crate::util::stable_hash(format!("{method}\u{0}{params}").as_bytes())
            )
        });
        if let Some(answer) = self.answers.get(&key) {
            return Ok(answer.clone());
        }
        if !declared {
            *self.missing.lock().unwrap_or_else(|p| p.into_inner()) = Some(capability);
            return Err(exec::AskError::Unsupported(format!(
                "the MCP client did not declare the {capability} capability in this request"
            )));
        }
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, json!({"method": method, "params": params}));
        self.asked.notify_one();
        // The call answers with the question and stops the run; this op waits until then.
        std::future::pending().await
    }

    pub(crate) fn has_requests(&self) -> bool {
        !self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub(crate) fn missing(&self) -> Option<ErrorData> {
        let capability = (*self.missing.lock().unwrap_or_else(|p| p.into_inner()))?;
        let mut required = Map::new();
        required.insert(capability.into(), json!({}));
        let required = serde_json::from_value(Value::Object(required)).ok()?;
        Some(ErrorData::missing_required_client_capability(required))
    }

    /// This round's result: the questions, and every answer so far sealed for the next round.
    pub(crate) fn input_required(&self) -> Result<rmcp::model::InputRequiredResult, ErrorData> {
        let requests =
            std::mem::take(&mut *self.requests.lock().unwrap_or_else(|p| p.into_inner()));
        let requests = serde_json::from_value(Value::Object(requests)).map_err(|err| {
            ErrorData::internal_error(
                format!("an op asked something MCP cannot carry: {err}"),
                None,
            )
        })?;
        let state = state_codec().seal_json(&self.answers).map_err(|err| {
            ErrorData::internal_error(format!("cannot seal the request state: {err}"), None)
        })?;
        Ok(rmcp::model::InputRequiredResult::new(
            Some(requests),
            Some(state),
        ))
    }
}

static STATE_CODEC: std::sync::OnceLock<rmcp::model::RequestStateCodec> =
    std::sync::OnceLock::new();

/// Sets the key `requestState` is sealed with (`http.mcp_state_key`: replicas behind one proxy
/// share it). Without one, each process draws a random key at its first use.
pub(crate) fn set_state_key(key: &str) -> Result<(), String> {
    let codec = rmcp::model::RequestStateCodec::try_new(key.as_bytes().to_vec())
        .map_err(|err| format!("http.mcp_state_key: {err} (use at least 32 bytes)"))?;
    let _ = STATE_CODEC.set(codec);
    Ok(())
}

fn state_codec() -> &'static rmcp::model::RequestStateCodec {
    STATE_CODEC.get_or_init(|| {
        let key: [u8; 32] = rand_key();
        rmcp::model::RequestStateCodec::new_unchecked(key.to_vec())
    })
}

/// 32 random bytes from the OS.
fn rand_key() -> [u8; 32] {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .expect("read /dev/urandom for the request-state key");
    key
}

/// Whether a protocol version is 2026-07-28 or later (dates compare as text).
pub(crate) fn is_2026(version: &str) -> bool {
    version >= rmcp::model::ProtocolVersion::V_2026_07_28.as_str()
}

/// Whether this request speaks 2026-07-28 or later (no server-to-client requests; questions
/// go back as input-required results).
pub(crate) fn speaks_2026(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|v| is_2026(v.as_str()))
}
