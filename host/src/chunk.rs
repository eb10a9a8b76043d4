//! The chunk: the unit every flow run streams, and its FlowLLM wire form. Knows nothing of
//! transports beyond the JSON shape of one chunk.

use std::fmt::Write as _;

pub use crate::ops::ChunkKind;

/// One streamed piece of output. `text` is plain text, or JSON text when `json` is set (tool
/// calls, usage). `op` names the op that emitted it (interned, see [`crate::ops::intern`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub kind: ChunkKind,
    pub(crate) json: bool,
    pub op: &'static str,
    pub text: String,
    /// An `error` chunk of an op whose failure the flow tolerates (`raise_exception=False`):
    /// the wire metadata says `"raise_exception": false` and the run goes on.
    pub tolerated: bool,
    /// On an op's `error` chunk: how many times the op was called (`max_retries`); the wire
    /// metadata says `"attempts": n`. 0 elsewhere (not written).
    pub attempts: u8,
    /// The first chunk of a durable run resumed after its host stopped (the wire metadata
    /// says `"resumed": true`; `op` is the op the run goes on from).
    pub resumed: bool,
}

impl Chunk {
    pub(crate) fn text(kind: ChunkKind, op: &'static str, text: impl Into<String>) -> Chunk {
        Chunk {
            kind,
            json: false,
            op,
            text: text.into(),
            tolerated: false,
            attempts: 0,
            resumed: false,
        }
    }

    pub(crate) fn error(op: &'static str, message: impl Into<String>) -> Chunk {
        Chunk::text(ChunkKind::Error, op, message)
    }

    /// The chunk content as a JSON value (a string, or the parsed JSON).
    pub(crate) fn content(&self) -> serde_json::Value {
        if self.json {
            serde_json::from_str(&self.text)
                .unwrap_or_else(|_| serde_json::Value::String(self.text.clone()))
        } else {
            serde_json::Value::String(self.text.clone())
        }
    }

    /// Appends the FlowLLM wire form
    /// `{"flow_id":..,"chunk_type":..,"chunk":..,"done":false,"metadata":{"op":..}}`.
    pub fn write_json(&self, flow_id: &str, out: &mut String) {
        out.push_str("{\"flow_id\":");
        push_json_str(out, flow_id);
        out.push_str(",\"chunk_type\":\"");
        out.push_str(self.kind.as_str());
        out.push_str("\",\"chunk\":");
        if self.json && serde_json::from_str::<&serde_json::value::RawValue>(&self.text).is_ok() {
            out.push_str(&self.text);
        } else {
            push_json_str(out, &self.text);
        }
        out.push_str(",\"done\":false,\"metadata\":{\"op\":");
        push_json_str(out, self.op);
        if self.tolerated {
            out.push_str(",\"raise_exception\":false");
        }
        if self.attempts > 0 {
            let _ = write!(out, ",\"attempts\":{}", self.attempts);
        }
        if self.resumed {
            out.push_str(",\"resumed\":true");
        }
        out.push_str("}}");
    }
}

/// A chunk's kind by its wire name (`answer`, `think`, `tool`, `usage`, `error`).
pub(crate) fn kind_named(name: &str) -> Option<ChunkKind> {
    [
        ChunkKind::Answer,
        ChunkKind::Think,
        ChunkKind::Tool,
        ChunkKind::Usage,
        ChunkKind::Error,
    ]
    .into_iter()
    .find(|kind| kind.as_str() == name)
}

/// The name `op` goes by in chunks (interned: chunks name ops by `&'static str`).
pub(crate) fn op_named(op: &str) -> &'static str {
    crate::ops::intern(op)
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_valid_json() {
        let cases = [
            Chunk::text(ChunkKind::Answer, "EchoOp", "he said \"hi\"\n\u{1}é"),
            Chunk {
                kind: ChunkKind::Tool,
                json: true,
                op: "X",
                text: r#"{"id":"1","name":"f","arguments":"{}"}"#.into(),
                tolerated: false,
                attempts: 0,
                resumed: false,
            },
            Chunk {
                kind: ChunkKind::Usage,
                json: true,
                op: "X",
                text: "not json".into(),
                tolerated: true,
                attempts: 3,
                resumed: true,
            },
        ];
        for chunk in cases {
            let mut out = String::new();
            chunk.write_json("f-1", &mut out);
            let value: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(value["chunk"], chunk.content());
            assert_eq!(value["chunk_type"], chunk.kind.as_str());
            assert_eq!(value["metadata"]["op"], chunk.op);
            assert_eq!(value["done"], false);
            if chunk.tolerated {
                assert_eq!(value["metadata"]["raise_exception"], false);
                assert_eq!(value["metadata"]["attempts"], 3);
                assert_eq!(value["metadata"]["resumed"], true);
            }
        }
    }
}
