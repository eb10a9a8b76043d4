//! Requests of the methods a client sends most, read straight as their own type.
//!
//! rmcp reads a client's request as an untagged union of every request type, tried in order
//! until one fits: a `tools/call` line was tried as thirteen other requests first, each miss
//! a formatted serde error, and the line buffered and copied for every try (27k instructions
//! of a 100k-instruction call over stdio). The method names its type, so a request of a method
//! below is read as that type alone. Anything else, or a line this cannot be sure of, takes
//! rmcp's own path: the answer is the same either way (a test compares them).

use std::sync::LazyLock;

use memchr::memmem::Finder;
use rmcp::model::{ClientRequest, JsonRpcMessage, JsonRpcRequest};
use rmcp::service::RxJsonRpcMessage;
use rmcp::RoleServer;
use serde::de::DeserializeOwned;

/// What leaves a line to rmcp: keys a request must not have, and any `\u` escape (searchers
/// made once: making one is most of a short search).
static REFUSED: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
    [
        Finder::new(b"\"result\""),
        Finder::new(b"\"error\""),
        Finder::new(b"\\u"),
    ]
});
static METHOD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"method\""));

/// The request on `text` read as its method's own type, or `None` when the line is anything
/// else (another method, a notification, a reply, malformed): rmcp's union then reads it.
pub(super) fn request(text: &[u8]) -> Option<RxJsonRpcMessage<RoleServer>> {
    // rmcp refuses a "request" that also carries a result or an error; a line that so much as
    // mentions either name is left to it, and so is one with a `\u` escape (a key can spell
    // `res\u0075lt`; serde reads keys unescaped).
    if REFUSED.iter().any(|key| key.find(text).is_some()) {
        return None;
    }
    // Only a hint: the type read next checks the method itself, so a `"method"` key met
    // first inside the params costs a second read, never a wrong answer.
    match method(text)? {
        b"tools/call" => typed(text, ClientRequest::CallToolRequest),
        b"tools/list" => typed(text, ClientRequest::ListToolsRequest),
        b"ping" => typed(text, ClientRequest::PingRequest),
        b"resources/read" => typed(text, ClientRequest::ReadResourceRequest),
        b"resources/list" => typed(text, ClientRequest::ListResourcesRequest),
        b"prompts/get" => typed(text, ClientRequest::GetPromptRequest),
        b"prompts/list" => typed(text, ClientRequest::ListPromptsRequest),
        _ => None,
    }
}

/// A request of one type; `None` if the line is not one (rmcp's union decides then: a request
/// whose params do not fit its method's type is a custom request there).
fn typed<R: DeserializeOwned>(
    text: &[u8],
    wrap: fn(R) -> ClientRequest,
) -> Option<RxJsonRpcMessage<RoleServer>> {
    let JsonRpcRequest {
        jsonrpc,
        id,
        request,
    } = serde_json::from_slice::<JsonRpcRequest<R>>(text).ok()?;
    Some(JsonRpcMessage::Request(JsonRpcRequest {
        jsonrpc,
        id,
        request: wrap(request),
    }))
}

/// The value of the first `"method"` key in `text` when it is a plain string (no escapes).
fn method(text: &[u8]) -> Option<&[u8]> {
    let key = METHOD.find(text)?;
    let rest = skip_space(&text[key + 8..]);
    let rest = skip_space(rest.strip_prefix(b":")?);
    let rest = rest.strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
}

fn skip_space(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rmcp's own reading of a line, as JSON (its request types have no `PartialEq`), with the
    /// request's method name.
    fn general(text: &str) -> Option<(serde_json::Value, String)> {
        let message = serde_json::from_str::<RxJsonRpcMessage<RoleServer>>(text).ok()?;
        Some(shown(&message))
    }

    fn shown(message: &RxJsonRpcMessage<RoleServer>) -> (serde_json::Value, String) {
        let method = match message {
            JsonRpcMessage::Request(request) => request.request.method().to_string(),
            _ => String::new(),
        };
        (serde_json::to_value(message).expect("serializable"), method)
    }

    #[test]
    fn requests_read_as_their_type_equal_rmcp_reading() {
        let meta = r#""_meta":{"progressToken":"t","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
        let lines = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"query":"q"}}}"#.to_string(),
            format!(r#"{{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{{"name":"echo","arguments":{{"query":"q"}},{meta}}}}}"#),
            r#"{ "method" : "tools/call", "params": {"name": "echo"}, "id": 7, "jsonrpc": "2.0" }"#.to_string(),
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"x"}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"flow://echo"}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":5,"method":"resources/list"}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":6,"method":"prompts/get","params":{"name":"echo","arguments":{"a":"b"}}}"#.to_string(),
            r#"{"jsonrpc":"2.0","id":6,"method":"prompts/list","params":{}}"#.to_string(),
        ];
        for line in &lines {
            let fast = request(line.as_bytes()).unwrap_or_else(|| panic!("not read: {line}"));
            assert_eq!(Some(shown(&fast)), general(line), "{line}");
        }
    }

    #[test]
    fn anything_unsure_is_left_to_rmcp() {
        for line in [
            // Not one of the methods, or not a request.
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo"}}"#,
            // A request that also carries a result, which rmcp refuses, its key escaped or not.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e"},"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e"},"res\u0075lt":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e"},"\u0065rror":{}}"#,
            // Params that do not fit `tools/call` (no name): a custom request to rmcp.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
            // A wrong version, an escaped method, a method met inside the params first.
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"e"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"e"}}"#,
            r#"{"params":{"name":"e","arguments":{"method":"ping"}},"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\"",
        ] {
            assert!(request(line.as_bytes()).is_none(), "read: {line}");
        }
        assert_eq!(method(br#"{"method" :	"a/b"}"#), Some(&b"a/b"[..]));
    }
}
