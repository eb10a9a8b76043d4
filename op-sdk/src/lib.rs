//! The op SDK: what a flowhost plugin author writes against. Knows nothing of the host's runtime,
//! transports or flows; only ops, their context, and the stable ABI between plugin and host.
//!
//! A plugin is a crate built as a `cdylib` that implements [`Op`] for each op and lists them in
//! [`export_plugin!`]. A complete plugin:
//!
//! ```
//! use op_sdk::{Args, ChunkKind, Context, Error, Op};
//!
//! /// Shouts the request's `query` back, one word per chunk.
//! pub struct ShoutOp {
//!     suffix: String,
//! }
//!
//! impl Op for ShoutOp {
//!     const NAME: &'static str = "ShoutOp";
//!     const DESCRIPTION: &'static str = "Upper-cases the query, one word per answer chunk";
//!
//!     fn new(args: &Args) -> Result<Self, Error> {
//!         Ok(ShoutOp { suffix: args.str_or("suffix", "!")?.to_string() })
//!     }
//!
//!     fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
//!         let query = ctx.str("query")?.to_uppercase();
//!         for word in query.split_whitespace() {
//!             if !ctx.emit(ChunkKind::Answer, &format!("{word}{} ", self.suffix)) {
//!                 return Ok(()); // the consumer is gone: stop working
//!             }
//!         }
//!         ctx.set_answer(query);
//!         Ok(())
//!     }
//! }
//!
//! op_sdk::export_plugin!(ShoutOp);
//! # fn main() {}
//! ```
//!
//! Ops are synchronous: the host runs each call on a thread where it may block (a thread of
//! the host's op pool; an op that proved fast may run on a runtime thread, which the host
//! takes back as soon as it waits; with `isolation: process`, a worker process's thread). A
//! panic inside an op becomes an error result naming the op; it never takes the host down.
//!
//! Compatibility: a plugin is refused at load time unless it was built against an op-sdk whose
//! major.minor (0.x: minor) matches the host's and whose types have the same layout. The host
//! context of op-sdk 0.1.0 is frozen; services added later come through a separate services
//! object, and the host keeps a view of each older root module, so plugins built against older
//! 0.1.x SDKs keep loading (see ARCHITECTURE.md, "Growing the plugin ABI").
//!
//! Agents: an op that calls tools lists the sub-ops attached to it in the flow
//! (`AgentOp() << [SearchOp(), ShoutOp()]`) with [`Context::sub_ops`] and calls them with
//! [`Context::call_sub_op`] / [`Context::call_sub_ops`]; an op describes itself as a tool with
//! [`Op::tool`].

use std::fmt;

use serde_json::{Map, Value};

mod content;
#[doc(hidden)]
pub mod ffi;
pub mod testing;

pub use content::{
    Asked, Body, Content, NoContent, Prompt, PromptArgument, PromptMessage, Resource,
    ResourceContents, ResourceTemplate,
};

/// The kinds of chunk an op can stream (FlowLLM 0.2 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChunkKind {
    /// Part of the answer text.
    Answer = 0,
    /// Reasoning ("thinking") text.
    Think = 1,
    /// A tool call: JSON `{id, name, arguments}`.
    Tool = 2,
    /// Token usage: JSON with token counts.
    Usage = 3,
    /// An error message.
    Error = 4,
}

impl ChunkKind {
    /// Every kind, in wire order.
    pub const ALL: [ChunkKind; 5] = [
        ChunkKind::Answer,
        ChunkKind::Think,
        ChunkKind::Tool,
        ChunkKind::Usage,
        ChunkKind::Error,
    ];

    /// The FlowLLM `chunk_type` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChunkKind::Answer => "answer",
            ChunkKind::Think => "think",
            ChunkKind::Tool => "tool",
            ChunkKind::Usage => "usage",
            ChunkKind::Error => "error",
        }
    }

    /// The kind for a wire code; `None` for codes a newer SDK may define.
    pub const fn from_u8(code: u8) -> Option<ChunkKind> {
        match code {
            0 => Some(ChunkKind::Answer),
            1 => Some(ChunkKind::Think),
            2 => Some(ChunkKind::Tool),
            3 => Some(ChunkKind::Usage),
            4 => Some(ChunkKind::Error),
            _ => None,
        }
    }
}

/// Log levels for [`Context::log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

/// The error an op returns: a message the user will read, so say what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error(message.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Error {
        Error(format!("JSON error: {err}"))
    }
}

/// An op: one unit of work in a flow. A fresh instance is built for every call from the
/// arguments written in the flow (`CountOp(n=10)`), then executed once.
pub trait Op: Sized + Send + 'static {
    /// The name flows use; ends in `Op` (FlowLLM's convention).
    const NAME: &'static str;
    /// One line shown in `flowhost ops`, `/ops` and tool lists.
    const DESCRIPTION: &'static str = "";

    /// JSON Schema of the call arguments, if the op wants the host to show or check them.
    fn args_schema() -> Option<Value> {
        None
    }

    /// How the op looks as a tool an agent calls (FlowLLM's `build_tool_call`). `None`: the
    /// host's defaults (the name in snake case without `_op`, [`Op::DESCRIPTION`], any
    /// arguments). A tool's arguments become the op's context when an agent calls it.
    fn tool() -> Option<Tool> {
        None
    }

    /// Builds the op from its call arguments. Also called when a flow is loaded, to report bad
    /// arguments before any request arrives, so keep it cheap and free of side effects.
    fn new(args: &Args) -> Result<Self, Error>;

    /// Runs the op: read the context, emit chunks, write results back into the context.
    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error>;
}

/// An op described as a tool: what an LLM sees in `tools`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments (an object).
    pub input_schema: Value,
}

/// A sub-op attached to this op with `<<`: one of an agent's tools.
#[derive(Clone, Debug, PartialEq)]
pub struct SubOp {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

impl SubOp {
    /// The OpenAI `tools` entry for it.
    pub fn openai_tool(&self) -> Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.input_schema,
            }
        })
    }
}

/// What the client's model answered to [`Context::sample`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampled {
    /// The text of the answer (empty when the model answered with something else).
    pub text: String,
    /// The model that answered, as the client or LLM service names it.
    pub model: String,
    /// `endTurn`, `maxTokens`, `stopSequence`, ... (empty when not reported).
    pub stop_reason: String,
    /// The whole result as received (MCP `CreateMessageResult` shape).
    pub raw: Value,
}

/// What the user answered to [`Context::elicit`].
#[derive(Clone, Debug, PartialEq)]
pub enum Elicited {
    /// The user submitted the form: the values, checked against the schema by the client.
    Accept(Map<String, Value>),
    /// The user said no.
    Decline,
    /// The user dismissed the request without choosing.
    Cancel,
}

/// A root the client shares (a folder or project it lets servers see).
#[derive(Clone, Debug, PartialEq)]
pub struct Root {
    /// A `file://` URI.
    pub uri: String,
    pub name: Option<String>,
}

/// What a sub-op call gave back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubOpResult {
    /// Its `answer` write, else its answer chunks joined.
    pub answer: Value,
    /// Everything it wrote into its context.
    pub writes: Map<String, Value>,
}

/// The keyword arguments of an op call in a flow expression.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Args(Map<String, Value>);

impl Args {
    pub fn new(map: Map<String, Value>) -> Args {
        Args(map)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// A string argument, or `default` when absent; an error when present but not a string.
    pub fn str_or<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str, Error> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(type_error(name, "a string", other)),
        }
    }

    /// A non-negative integer argument, or `default` when absent.
    pub fn u64_or(&self, name: &str, default: u64) -> Result<u64, Error> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| type_error(name, "a non-negative integer", v)),
        }
    }

    /// A boolean argument, or `default` when absent.
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, Error> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| type_error(name, "true or false", v)),
        }
    }
}

fn type_error(name: &str, expected: &str, found: &Value) -> Error {
    Error(format!(
        "argument `{name}` must be {expected}, found {found}"
    ))
}

/// What an op sees while it runs: the flow context (request fields plus what earlier ops
/// wrote), the chunk sink, cancellation and the host's log.
pub struct Context<'a> {
    data: Map<String, Value>,
    writes: Map<String, Value>,
    host: &'a dyn Host,
}

/// The host side of a [`Context`]: implemented by the FFI glue in a plugin, by the flowhost
/// host itself (its op host, and a worker process's link back to it: one trait on both sides
/// of the ABI), and by test doubles ([`testing`]).
#[doc(hidden)]
pub trait Host {
    fn emit(&self, kind: u8, content: &str, json: bool) -> bool;
    fn is_cancelled(&self) -> bool;
    fn sleep(&self, millis: u64) -> bool;
    fn log(&self, level: Level, message: &str);
    fn chat_stream(
        &self,
        request: &str,
        on_chunk: &mut dyn FnMut(u8, &str, bool) -> bool,
    ) -> Result<String, String>;
    /// The sub-ops attached to this call, as a JSON array of `{name, description,
    /// input_schema}`.
    fn sub_ops(&self) -> String {
        "[]".into()
    }
    /// Calls sub-ops side by side: `calls` is a JSON array of `{name, arguments}`; the result a
    /// JSON array, in the same order, of `{"ok": {answer, writes}}` or `{"error": message}`.
    fn call_sub_ops(&self, calls: &str, forward: bool) -> String {
        let _ = (calls, forward);
        "this host cannot call sub-ops (it predates op-sdk 0.1.2); upgrade flowhost".into()
    }
    /// op-sdk 0.1.3: a named host service (`sample`, `elicit`), JSON in and out.
    fn call(&self, service: &str, request: &str) -> Result<String, String> {
        let _ = request;
        Err(format!("this host has no `{service}` service"))
    }
}

/// One chunk of an LLM stream, as [`Context::chat_stream`] hands it to the op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    pub kind: ChunkKind,
    /// Text, or JSON text when `json` is set (tool calls, usage).
    pub text: &'a str,
    pub json: bool,
}

/// What an LLM call produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatResponse {
    pub answer: String,
    pub think: String,
    /// `{id, name, arguments}` per tool call.
    pub tool_calls: Vec<Value>,
    pub usage: Option<Value>,
}

impl<'a> Context<'a> {
    #[doc(hidden)]
    pub fn new(data: Map<String, Value>, host: &'a dyn Host) -> Context<'a> {
        Context {
            data,
            writes: Map::new(),
            host,
        }
    }

    /// A context value: a request field or something an earlier op wrote.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }

    /// The whole context object.
    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }

    /// A required string value; the error names the missing or mistyped field.
    pub fn str(&self, key: &str) -> Result<&str, Error> {
        match self.data.get(key) {
            Some(Value::String(s)) => Ok(s),
            None | Some(Value::Null) => Err(Error(format!("missing input field `{key}`"))),
            Some(other) => Err(type_error(key, "a string", other)),
        }
    }

    /// Writes a value into the context for later ops (and the caller) to see.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        self.data.insert(key.clone(), value.clone());
        self.writes.insert(key, value);
    }

    /// Sets the flow's answer (the `answer` context key).
    pub fn set_answer(&mut self, answer: impl Into<Value>) {
        self.set("answer", answer);
    }

    /// Streams a text chunk. Returns `false` when the consumer is gone (client disconnected,
    /// timeout, cancel): stop working and return.
    #[inline]
    pub fn emit(&self, kind: ChunkKind, text: &str) -> bool {
        self.host.emit(kind as u8, text, false)
    }

    /// Streams a JSON chunk (tool calls, usage). Same return value as [`Context::emit`].
    pub fn emit_json(&self, kind: ChunkKind, value: &Value) -> bool {
        self.host.emit(kind as u8, &value.to_string(), true)
    }

    /// Whether the run was cancelled; check it during long silent phases.
    pub fn is_cancelled(&self) -> bool {
        self.host.is_cancelled()
    }

    /// Sleeps for `duration` unless the run is cancelled first; `false` if it was cancelled.
    /// Use it instead of `std::thread::sleep` so a cancelled run stops at once.
    pub fn sleep(&self, duration: std::time::Duration) -> bool {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.host.sleep(millis)
    }

    /// Streams a chat completion from the host's LLM service. `request` is a JSON object:
    /// `messages` (OpenAI shape), optionally `llm` (a name from the host's `llm:` config,
    /// default `default`), `tools`, and OpenAI parameters (`temperature`, `max_tokens`, ...).
    /// `on_chunk` sees every think / answer / tool / usage chunk as it arrives; return `false`
    /// to stop (pass them on with [`Context::forward`]). Retries, timeouts and cancellation
    /// are the host's.
    pub fn chat_stream(
        &self,
        request: &Value,
        mut on_chunk: impl FnMut(Delta<'_>) -> bool,
    ) -> Result<ChatResponse, Error> {
        let mut callback = |kind: u8, text: &str, json: bool| match ChunkKind::from_u8(kind) {
            Some(kind) => on_chunk(Delta { kind, text, json }),
            None => true,
        };
        let result = self
            .host
            .chat_stream(&request.to_string(), &mut callback)
            .map_err(Error)?;
        let value: Value = serde_json::from_str(&result)?;
        Ok(ChatResponse {
            answer: value["answer"].as_str().unwrap_or_default().to_string(),
            think: value["think"].as_str().unwrap_or_default().to_string(),
            tool_calls: value["tool_calls"].as_array().cloned().unwrap_or_default(),
            usage: value.get("usage").filter(|u| !u.is_null()).cloned(),
        })
    }

    /// A chat completion without streaming: the whole response at once.
    pub fn chat(&self, request: &Value) -> Result<ChatResponse, Error> {
        self.chat_stream(request, |_| !self.is_cancelled())
    }

    /// The sub-ops attached to this call with `<<` (an agent's tools), in flow order.
    pub fn sub_ops(&self) -> Vec<SubOp> {
        let list: Value = serde_json::from_str(&self.host.sub_ops()).unwrap_or(Value::Null);
        list.as_array()
            .into_iter()
            .flatten()
            .map(|sub| SubOp {
                name: sub["name"].as_str().unwrap_or_default().to_string(),
                description: sub["description"].as_str().unwrap_or_default().to_string(),
                input_schema: sub["input_schema"].clone(),
            })
            .collect()
    }

    /// Calls one sub-op with JSON arguments (an object: they become its context). Its chunks
    /// go to this flow's stream when `forward`, else nowhere; cancellation, limits and its
    /// own keywords (`max_retries`, ...) apply inside.
    pub fn call_sub_op(
        &self,
        name: &str,
        arguments: &Value,
        forward: bool,
    ) -> Result<SubOpResult, Error> {
        self.call_sub_ops(&[(name, arguments.clone())], forward)
            .pop()
            .unwrap_or_else(|| Err(Error::new("the host returned no result")))
    }

    /// Calls several sub-ops side by side (an LLM's tool calls of one turn); the results come
    /// back in the order asked.
    pub fn call_sub_ops(
        &self,
        calls: &[(&str, Value)],
        forward: bool,
    ) -> Vec<Result<SubOpResult, Error>> {
        let request: Vec<Value> = calls
            .iter()
            .map(|(name, arguments)| serde_json::json!({"name": name, "arguments": arguments}))
            .collect();
        let reply = self
            .host
            .call_sub_ops(&Value::Array(request).to_string(), forward);
        let Ok(Value::Array(results)) = serde_json::from_str::<Value>(&reply) else {
            // Not JSON: the host's message for why it could not call them at all.
            return calls
                .iter()
                .map(|_| Err(Error::new(reply.clone())))
                .collect();
        };
        let mut out: Vec<Result<SubOpResult, Error>> = results
            .into_iter()
            .map(|result| match (result.get("ok"), result.get("error")) {
                (Some(ok), _) => Ok(SubOpResult {
                    answer: ok["answer"].clone(),
                    writes: ok["writes"].as_object().cloned().unwrap_or_default(),
                }),
                (_, Some(error)) => Err(Error::new(error.as_str().unwrap_or("the sub-op failed"))),
                _ => Err(Error::new("the host returned a result of an unknown shape")),
            })
            .collect();
        out.resize_with(calls.len(), || {
            Err(Error::new("the host returned no result"))
        });
        out
    }

    /// Asks the client's model (op-sdk 0.1.3). `messages` are MCP sampling messages
    /// (`[{"role": "user", "content": {"type": "text", "text": "..."}}]`; a plain string
    /// content is accepted too); `options` may hold `maxTokens` (default 1000), `systemPrompt`,
    /// `temperature`, `stopSequences`, `modelPreferences`, `includeContext`.
    ///
    /// Over MCP this is a `sampling/createMessage` request to the client (2025 revisions) or
    /// an input request in the tool result (2026-07-28); over HTTP, and when the client cannot
    /// sample, the host's LLM service answers. An error says why neither could.
    pub fn sample(&self, messages: &Value, options: &Value) -> Result<Sampled, Error> {
        self.sample_named("", messages, options)
    }

    /// [`Context::sample`] with a name for the question: a 2026-07-28 client sees it as the
    /// key of the input request (else the host makes one from the question).
    pub fn sample_named(
        &self,
        name: &str,
        messages: &Value,
        options: &Value,
    ) -> Result<Sampled, Error> {
        let request = serde_json::json!({"name": name, "messages": messages, "options": options});
        let reply = self
            .host
            .call("sample", &request.to_string())
            .map_err(Error)?;
        let raw: Value = serde_json::from_str(&reply)?;
        let text = match &raw["content"] {
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join(""),
            block => block["text"].as_str().unwrap_or_default().to_string(),
        };
        Ok(Sampled {
            text,
            model: raw["model"].as_str().unwrap_or_default().to_string(),
            stop_reason: raw["stopReason"].as_str().unwrap_or_default().to_string(),
            raw,
        })
    }

    /// Asks the user through the client (op-sdk 0.1.3): `message` is shown with a form built
    /// from `schema` (a flat JSON Schema object of string, number, boolean and enum fields).
    ///
    /// Only an MCP client can answer; over HTTP, or when the client did not declare the
    /// elicitation capability, this is an error that says so.
    pub fn elicit(&self, message: &str, schema: &Value) -> Result<Elicited, Error> {
        self.elicit_named("", message, schema)
    }

    /// [`Context::elicit`] with a name for the question (see [`Context::sample_named`]).
    pub fn elicit_named(
        &self,
        name: &str,
        message: &str,
        schema: &Value,
    ) -> Result<Elicited, Error> {
        let request =
            serde_json::json!({"name": name, "message": message, "requestedSchema": schema});
        let reply = self
            .host
            .call("elicit", &request.to_string())
            .map_err(Error)?;
        let reply: Value = serde_json::from_str(&reply)?;
        match reply["action"].as_str() {
            Some("accept") => Ok(Elicited::Accept(
                reply["content"].as_object().cloned().unwrap_or_default(),
            )),
            Some("decline") => Ok(Elicited::Decline),
            Some("cancel") => Ok(Elicited::Cancel),
            other => Err(Error(format!(
                "the client answered the elicitation with action {other:?}"
            ))),
        }
    }

    /// The roots the client shares (op-sdk 0.1.3): MCP `roots/list` (or an input request on
    /// 2026-07-28). Only an MCP client that declares roots can answer.
    pub fn roots(&self) -> Result<Vec<Root>, Error> {
        let reply = self.host.call("roots", "{}").map_err(Error)?;
        let reply: Value = serde_json::from_str(&reply)?;
        Ok(reply["roots"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|root| Root {
                uri: root["uri"].as_str().unwrap_or_default().to_string(),
                name: root["name"].as_str().map(str::to_string),
            })
            .collect())
    }

    /// Passes an LLM chunk on to the flow's consumer. Same return value as [`Context::emit`].
    pub fn forward(&self, delta: Delta<'_>) -> bool {
        self.host.emit(delta.kind as u8, delta.text, delta.json)
    }

    /// Writes a line to the host's log, tagged with the op.
    pub fn log(&self, level: Level, message: &str) {
        self.host.log(level, message)
    }

    /// A span of the op's own in the run's trace (op-sdk 0.1.4), under the op call's span
    /// (or under the op's innermost span still open): `let span = ctx.span("parse");
    /// span.set("rows", 42);` and it ends when dropped. When the host does not trace (no
    /// exporter, not sampled, or a host older than 0.1.4), every method does nothing.
    pub fn span(&self, name: &str) -> Span<'a> {
        let request = serde_json::json!({"start": name});
        let id = self
            .host
            .call("span", &request.to_string())
            .ok()
            .and_then(|reply| serde_json::from_str::<Value>(&reply).ok())
            .and_then(|reply| reply["id"].as_u64())
            .unwrap_or(0);
        Span {
            id,
            host: self.host,
        }
    }

    #[doc(hidden)]
    pub fn into_writes(self) -> Map<String, Value> {
        self.writes
    }
}

/// An op's own span ([`Context::span`]); ends when dropped.
pub struct Span<'a> {
    /// 0: the host does not trace this call.
    id: u64,
    host: &'a dyn Host,
}

impl Span<'_> {
    /// Whether the host records this span: skip computing attributes when it does not.
    pub fn is_recording(&self) -> bool {
        self.id != 0
    }

    /// Sets an attribute (a string, number or boolean; anything else is kept as JSON text).
    pub fn set(&self, key: &str, value: impl Into<Value>) {
        if self.id != 0 {
            self.send(serde_json::json!({"set": self.id, "key": key, "value": value.into()}));
        }
    }

    /// Records an event (a point in time) on the span.
    pub fn event(&self, name: &str) {
        if self.id != 0 {
            self.send(serde_json::json!({"event": self.id, "name": name}));
        }
    }

    /// Marks the span failed with `message`.
    pub fn fail(&self, message: &str) {
        if self.id != 0 {
            self.send(serde_json::json!({"fail": self.id, "message": message}));
        }
    }

    fn send(&self, request: Value) {
        let _ = self.host.call("span", &request.to_string());
    }
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        if self.id != 0 {
            self.send(serde_json::json!({"end": self.id}));
        }
    }
}

/// Exports a plugin's ops: `op_sdk::export_plugin!(EchoOp, CountOp);` once, in the crate root.
/// The plugin's name and version are the crate's. A plugin that also offers resources and
/// prompts names its [`Content`] type last: `op_sdk::export_plugin!(EchoOp; content = Docs);`.
#[macro_export]
macro_rules! export_plugin {
    ($($op:ty),+ ; content = $content:ty $(,)?) => {
        $crate::export_plugin!(@export [$($op),+] $content);
    };
    ($($op:ty),+ $(,)?) => {
        $crate::export_plugin!(@export [$($op),+] $crate::NoContent);
    };
    (@export [$($op:ty),+] $content:ty) => {
        #[doc(hidden)]
        pub struct __OpSdkPlugin;

        impl $crate::ffi::Plugin for __OpSdkPlugin {
            const NAME: &'static str = env!("CARGO_PKG_NAME");
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
            const OPS: &'static [$crate::ffi::OpEntry] = &[$($crate::ffi::OpEntry::of::<$op>()),+];
            fn content(request: &$crate::ffi::JsonValue) -> Result<$crate::ffi::JsonValue, String> {
                $crate::ffi::serve_content::<$content>(request)
            }
        }

        // The symbol abi_stable's loader looks up (`abi_stable::library::ROOT_MODULE_LOADER_NAME`);
        // written out so plugin crates need no direct abi_stable dependency.
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __OP_SDK_LIB_HEADER: $crate::ffi::LibHeader = {
            extern "C" fn constructor() -> $crate::ffi::RootModuleResult {
                $crate::ffi::call_root_module_loader($crate::ffi::root_module::<__OpSdkPlugin>)
            }
            // SAFETY: `constructor` returns the root module type named here, as abi_stable's
            // `export_root_module` attribute would generate.
            unsafe { $crate::ffi::LibHeader::from_constructor::<$crate::ffi::OpLib_Ref>(constructor, $crate::ffi::CheckTypeLayout::Yes) }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AskOp;

    impl Op for AskOp {
        const NAME: &'static str = "AskOp";

        fn new(_args: &Args) -> Result<Self, Error> {
            Ok(AskOp)
        }

        fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
            let schema =
                serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}});
            let name = match ctx.elicit("Name?", &schema)? {
                Elicited::Accept(values) => values["name"].as_str().unwrap_or_default().to_string(),
                _ => "nobody".into(),
            };
            let sampled = ctx.sample(
                &serde_json::json!([{"role": "user", "content": "hi"}]),
                &serde_json::json!({"maxTokens": 5}),
            )?;
            ctx.set_answer(format!("{name}: {} ({})", sampled.text, sampled.model));
            Ok(())
        }
    }

    #[test]
    fn the_harness_scripts_the_client() {
        let run = testing::Harness::new()
            .client(|service, request| match service {
                "elicit" => {
                    assert_eq!(request["message"], "Name?");
                    Ok(serde_json::json!({"action": "accept", "content": {"name": "Ada"}}))
                }
                "sample" => {
                    assert_eq!(request["maxTokens"], 5);
                    Ok(serde_json::json!({"role": "assistant", "content": {"type": "text", "text": "hello"}, "model": "m"}))
                }
                other => Err(format!("unexpected {other}")),
            })
            .run::<AskOp>()
            .expect("runs");
        assert_eq!(run.writes["answer"], "Ada: hello (m)");
        let unscripted = testing::Harness::new()
            .run::<AskOp>()
            .expect_err("no client");
        assert!(
            unscripted.message().contains("Harness::client"),
            "{unscripted}"
        );
    }

    #[test]
    fn loader_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn args_report_types() {
        let args = Args::new(
            serde_json::json!({"n": "x", "s": 3})
                .as_object()
                .cloned()
                .unwrap(),
        );
        assert_eq!(
            args.u64_or("n", 1).unwrap_err().message(),
            "argument `n` must be a non-negative integer, found \"x\""
        );
        assert_eq!(args.u64_or("m", 7).unwrap(), 7);
        assert!(args.str_or("s", "").is_err());
    }
}
