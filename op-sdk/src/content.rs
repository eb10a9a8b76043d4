//! What a plugin offers besides ops (op-sdk 0.1.3): resources (static, or read through a
//! function; text or binary), resource templates, and prompts with arguments. The host serves
//! them over MCP (`resources/*`, `prompts/*`) and HTTP (`GET /resources`, `GET /prompts`).
//!
//! ```
//! use op_sdk::{Content, Error, Prompt, PromptArgument, PromptMessage, Resource, ResourceContents};
//! use serde_json::{Map, Value};
//!
//! pub struct Docs;
//!
//! impl Content for Docs {
//!     fn resources() -> Vec<Resource> {
//!         vec![
//!             // Static: the host answers reads from the text given here.
//!             Resource::text("docs://readme", "readme", "Hello.").mime_type("text/markdown"),
//!             // Read through `read_resource` each time.
//!             Resource::dynamic("docs://clock", "clock").description("the time now"),
//!         ]
//!     }
//!
//!     fn read_resource(uri: &str) -> Result<Vec<ResourceContents>, Error> {
//!         match uri {
//!             "docs://clock" => Ok(vec![ResourceContents::text(uri, "12:00")]),
//!             _ => Err(Error::new(format!("no resource {uri}"))),
//!         }
//!     }
//!
//!     fn prompts() -> Vec<Prompt> {
//!         vec![Prompt::new("greet", "Greets someone")
//!             .argument(PromptArgument::required("name", "who to greet"))]
//!     }
//!
//!     fn get_prompt(name: &str, arguments: &Map<String, Value>) -> Result<Vec<PromptMessage>, Error> {
//!         let who = arguments.get("name").and_then(Value::as_str).unwrap_or("you");
//!         Ok(vec![PromptMessage::user(format!("Say hello to {who}."))])
//!     }
//! }
//! // op_sdk::export_plugin!(SomeOp; content = Docs);
//! ```

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::Error;

/// A plugin's resources, resource templates and prompts. Every method has a default (none), so
/// a plugin implements only what it offers. Called by the host from any thread, so keep them
/// quick: a read that needs the network should answer from a cache.
pub trait Content: 'static {
    /// The resources listed by `resources/list`.
    fn resources() -> Vec<Resource> {
        Vec::new()
    }

    /// URI templates (RFC 6570, e.g. `file:///{path}`) listed by `resources/templates/list`.
    /// Reads of URIs they match come to [`Content::read_resource`].
    fn resource_templates() -> Vec<ResourceTemplate> {
        Vec::new()
    }

    /// Reads a resource listed without contents ([`Resource::dynamic`]) or matching a template.
    /// An error reads as "resource not found" with its message.
    fn read_resource(uri: &str) -> Result<Vec<ResourceContents>, Error> {
        Err(Error::new(format!("no resource `{uri}`")))
    }

    /// The prompts listed by `prompts/list`.
    fn prompts() -> Vec<Prompt> {
        Vec::new()
    }

    /// The messages of one prompt, with the client's arguments (required ones are checked by
    /// the host first).
    fn get_prompt(name: &str, arguments: &Map<String, Value>) -> Result<Vec<PromptMessage>, Error> {
        let _ = arguments;
        Err(Error::new(format!("no prompt `{name}`")))
    }

    /// [`Content::get_prompt`] for a prompt that asks the user first (MCP 2026-07-28 clients
    /// answer in a second round). `asked.elicit(...)` gives the answer when the client has
    /// sent it, else `None`: return anything (the host answers the client with the questions
    /// and calls again once they are answered). The default asks nothing.
    fn get_prompt_asking(
        name: &str,
        arguments: &Map<String, Value>,
        asked: &Asked,
    ) -> Result<Vec<PromptMessage>, Error> {
        let _ = asked;
        Self::get_prompt(name, arguments)
    }
}

/// What a prompt may ask the client, and what it answered (see
/// [`Content::get_prompt_asking`]).
pub struct Asked {
    answers: Map<String, Value>,
    questions: std::cell::RefCell<Map<String, Value>>,
}

impl Asked {
    /// Asks the user (`key` names the question): `Some` once the client answered.
    pub fn elicit(&self, key: &str, message: &str, schema: &Value) -> Option<crate::Elicited> {
        match self.answers.get(key) {
            Some(answer) => Some(match answer["action"].as_str() {
                Some("accept") => crate::Elicited::Accept(
                    answer["content"].as_object().cloned().unwrap_or_default(),
                ),
                Some("decline") => crate::Elicited::Decline,
                _ => crate::Elicited::Cancel,
            }),
            None => {
                self.questions.borrow_mut().insert(
                    key.to_string(),
                    json!({"method": "elicitation/create", "params": {"message": message, "requestedSchema": schema}}),
                );
                None
            }
        }
    }
}

/// A plugin with no resources or prompts.
pub struct NoContent;

impl Content for NoContent {}

/// The body of a resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Text(String),
    Blob(Vec<u8>),
}

/// One resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub uri: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    /// `Some`: a static resource, read from here. `None`: read through
    /// [`Content::read_resource`].
    pub body: Option<Body>,
}

impl Resource {
    /// A static text resource (`text/plain` unless [`Resource::mime_type`] says otherwise).
    pub fn text(
        uri: impl Into<String>,
        name: impl Into<String>,
        text: impl Into<String>,
    ) -> Resource {
        Resource {
            uri: uri.into(),
            name: name.into(),
            title: None,
            description: None,
            mime_type: Some("text/plain".into()),
            body: Some(Body::Text(text.into())),
        }
    }

    /// A static binary resource (sent base64-encoded).
    pub fn blob(
        uri: impl Into<String>,
        name: impl Into<String>,
        mime_type: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
    ) -> Resource {
        Resource {
            uri: uri.into(),
            name: name.into(),
            title: None,
            description: None,
            mime_type: Some(mime_type.into()),
            body: Some(Body::Blob(bytes.into())),
        }
    }

    /// A resource read through [`Content::read_resource`] each time.
    pub fn dynamic(uri: impl Into<String>, name: impl Into<String>) -> Resource {
        Resource {
            uri: uri.into(),
            name: name.into(),
            title: None,
            description: None,
            mime_type: None,
            body: None,
        }
    }

    pub fn title(mut self, title: impl Into<String>) -> Resource {
        self.title = Some(title.into());
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> Resource {
        self.description = Some(description.into());
        self
    }

    pub fn mime_type(mut self, mime_type: impl Into<String>) -> Resource {
        self.mime_type = Some(mime_type.into());
        self
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut out = json!({"uri": self.uri, "name": self.name});
        put(&mut out, "title", &self.title);
        put(&mut out, "description", &self.description);
        put(&mut out, "mimeType", &self.mime_type);
        if let Some(body) = &self.body {
            out["size"] = json!(match body {
                Body::Text(text) => text.len(),
                Body::Blob(bytes) => bytes.len(),
            });
            out["static"] = json!(true);
        }
        out
    }

    pub(crate) fn contents(&self) -> Option<ResourceContents> {
        Some(ResourceContents {
            uri: self.uri.clone(),
            mime_type: self.mime_type.clone(),
            body: self.body.clone()?,
        })
    }
}

/// A family of resources named by an RFC 6570 URI template.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceTemplate {
    pub uri_template: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
}

impl ResourceTemplate {
    pub fn new(uri_template: impl Into<String>, name: impl Into<String>) -> ResourceTemplate {
        ResourceTemplate {
            uri_template: uri_template.into(),
            name: name.into(),
            title: None,
            description: None,
            mime_type: None,
        }
    }

    pub fn title(mut self, title: impl Into<String>) -> ResourceTemplate {
        self.title = Some(title.into());
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> ResourceTemplate {
        self.description = Some(description.into());
        self
    }

    pub fn mime_type(mut self, mime_type: impl Into<String>) -> ResourceTemplate {
        self.mime_type = Some(mime_type.into());
        self
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut out = json!({"uriTemplate": self.uri_template, "name": self.name});
        put(&mut out, "title", &self.title);
        put(&mut out, "description", &self.description);
        put(&mut out, "mimeType", &self.mime_type);
        out
    }
}

/// What a read returns: one or more bodies (a read of a folder-like URI may return several).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceContents {
    pub uri: String,
    pub mime_type: Option<String>,
    pub body: Body,
}

impl ResourceContents {
    pub fn text(uri: impl Into<String>, text: impl Into<String>) -> ResourceContents {
        ResourceContents {
            uri: uri.into(),
            mime_type: Some("text/plain".into()),
            body: Body::Text(text.into()),
        }
    }

    pub fn blob(
        uri: impl Into<String>,
        mime_type: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
    ) -> ResourceContents {
        ResourceContents {
            uri: uri.into(),
            mime_type: Some(mime_type.into()),
            body: Body::Blob(bytes.into()),
        }
    }

    pub fn mime_type(mut self, mime_type: impl Into<String>) -> ResourceContents {
        self.mime_type = Some(mime_type.into());
        self
    }

    /// The MCP wire shape: `{uri, mimeType, text}` or `{uri, mimeType, blob}` (base64).
    pub fn to_json(&self) -> Value {
        let mut out = json!({"uri": self.uri});
        put(&mut out, "mimeType", &self.mime_type);
        match &self.body {
            Body::Text(text) => out["text"] = json!(text),
            Body::Blob(bytes) => {
                out["blob"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
        out
    }
}

/// One argument of a prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptArgument {
    pub name: String,
    pub description: String,
    pub required: bool,
}

impl PromptArgument {
    pub fn required(name: impl Into<String>, description: impl Into<String>) -> PromptArgument {
        PromptArgument {
            name: name.into(),
            description: description.into(),
            required: true,
        }
    }

    pub fn optional(name: impl Into<String>, description: impl Into<String>) -> PromptArgument {
        PromptArgument {
            name: name.into(),
            description: description.into(),
            required: false,
        }
    }
}

/// One prompt (a message template the client fills in with arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    pub name: String,
    pub title: Option<String>,
    pub description: String,
    pub arguments: Vec<PromptArgument>,
}

impl Prompt {
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Prompt {
        Prompt {
            name: name.into(),
            title: None,
            description: description.into(),
            arguments: Vec::new(),
        }
    }

    pub fn title(mut self, title: impl Into<String>) -> Prompt {
        self.title = Some(title.into());
        self
    }

    pub fn argument(mut self, argument: PromptArgument) -> Prompt {
        self.arguments.push(argument);
        self
    }

    pub(crate) fn to_json(&self) -> Value {
        let arguments: Vec<Value> = self
            .arguments
            .iter()
            .map(|a| json!({"name": a.name, "description": a.description, "required": a.required}))
            .collect();
        let mut out =
            json!({"name": self.name, "description": self.description, "arguments": arguments});
        put(&mut out, "title", &self.title);
        out
    }
}

/// One message of a prompt: a role (`user` or `assistant`) and an MCP content block.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptMessage {
    pub role: String,
    /// `{"type": "text", "text": ...}`, `{"type": "image", "data", "mimeType"}`, or
    /// `{"type": "resource", "resource": {...}}`.
    pub content: Value,
}

impl PromptMessage {
    /// A user text message.
    pub fn user(text: impl Into<String>) -> PromptMessage {
        PromptMessage::text("user", text)
    }

    /// An assistant text message.
    pub fn assistant(text: impl Into<String>) -> PromptMessage {
        PromptMessage::text("assistant", text)
    }

    pub fn text(role: impl Into<String>, text: impl Into<String>) -> PromptMessage {
        PromptMessage {
            role: role.into(),
            content: json!({"type": "text", "text": text.into()}),
        }
    }

    /// An image (bytes, sent base64-encoded).
    pub fn image(role: impl Into<String>, mime_type: &str, bytes: &[u8]) -> PromptMessage {
        PromptMessage {
            role: role.into(),
            content: json!({
                "type": "image",
                "mimeType": mime_type,
                "data": base64::engine::general_purpose::STANDARD.encode(bytes),
            }),
        }
    }

    /// An embedded resource.
    pub fn resource(role: impl Into<String>, contents: &ResourceContents) -> PromptMessage {
        PromptMessage {
            role: role.into(),
            content: json!({"type": "resource", "resource": contents.to_json()}),
        }
    }
}

fn put(out: &mut Value, key: &str, value: &Option<String>) {
    if let Some(value) = value {
        out[key] = json!(value);
    }
}

/// Answers the host's content requests (JSON in, JSON out; see `ffi::OpLib::content`):
/// `{"method": "list"}`, `{"method": "read", "uri"}`, `{"method": "prompt", "name", "arguments"}`.
pub fn serve<C: Content>(request: &Value) -> Result<Value, String> {
    match request["method"].as_str() {
        Some("list") => Ok(json!({
            "resources": C::resources().iter().map(Resource::to_json).collect::<Vec<_>>(),
            "templates": C::resource_templates().iter().map(ResourceTemplate::to_json).collect::<Vec<_>>(),
            "prompts": C::prompts().iter().map(Prompt::to_json).collect::<Vec<_>>(),
        })),
        Some("read") => {
            let uri = request["uri"].as_str().unwrap_or_default();
            let fixed = C::resources()
                .into_iter()
                .find(|r| r.uri == uri)
                .and_then(|r| r.contents());
            let contents = match fixed {
                Some(contents) => vec![contents],
                None => C::read_resource(uri).map_err(|e| e.0)?,
            };
            Ok(
                json!({"contents": contents.iter().map(ResourceContents::to_json).collect::<Vec<_>>()}),
            )
        }
        Some("prompt") => {
            let name = request["name"].as_str().unwrap_or_default();
            let empty = Map::new();
            let arguments = request["arguments"].as_object().unwrap_or(&empty);
            let asked = Asked {
                answers: request["answers"].as_object().cloned().unwrap_or_default(),
                questions: Default::default(),
            };
            let messages = C::get_prompt_asking(name, arguments, &asked).map_err(|e| e.0)?;
            let questions = asked.questions.into_inner();
            if !questions.is_empty() {
                return Ok(json!({"questions": questions}));
            }
            Ok(json!({"messages": messages
                .into_iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect::<Vec<_>>()}))
        }
        other => Err(format!(
            "unknown content request {other:?} (this plugin's op-sdk knows list, read, prompt)"
        )),
    }
}
