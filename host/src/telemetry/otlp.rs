//! OTLP/HTTP's protobuf body (`ExportTraceServiceRequest`), written straight from the
//! records: each span as it ends ([`span`], into the exporter's buffer), the envelope around a
//! batch of them when it is sent ([`envelope`]).
//!
//! Why not opentelemetry-otlp's encoder: it converts every span into owned prost messages (a
//! string per attribute key, a vector per id), groups them in a hash map by scope, then
//! measures each nested message again at every level; callgrind put that at 16% of a traced
//! request's instructions, more than the request's own handler, and the budget for
//! tracing everything is 10%. This writes each field once, allocating nothing per span; an
//! attribute is written when it is set ([`key_value`], into the span's record), so a span's
//! end copies its attributes whole. The tests decode what it writes with the official
//! `opentelemetry-proto` definitions.
//!
//! A nested message's length is written as a 5-byte varint (`begin` / `end`): the length is
//! known only after the message, and a padded varint, valid protobuf that every decoder
//! reads, lets it be filled in place instead of measured first.

use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use prost::encoding::{decode_varint, encode_key, encode_varint, encoded_len_varint, WireType};

use super::record::{Record, Val};

/// The body of one export into `out`: `resource` (its attributes, as [`resource`] wrote
/// them) and `scope` (name, version) are the same for every span of this process; `spans` is
/// what [`span`] wrote.
#[cfg(test)]
pub(super) fn envelope(
    resource: &[u8],
    scope: (&str, Option<&str>),
    spans: &[u8],
    out: &mut Vec<u8>,
) {
    envelope_head(resource, scope, spans.len(), out);
    out.extend_from_slice(spans);
}

/// What goes before `spans_len` bytes of spans in the body of one export (see [`envelope`]):
/// the spans come last in every message around them, so the exporter sends this head and
/// then the spans where they were written, without copying them into one body.
pub(super) fn envelope_head(
    resource: &[u8],
    scope: (&str, Option<&str>),
    spans_len: usize,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.reserve(resource.len() + 64);
    // ExportTraceServiceRequest.resource_spans (1)
    let resource_spans = begin(out, 1);
    {
        // ResourceSpans.resource (1): Resource.attributes (1)
        let at = begin(out, 1);
        out.extend_from_slice(resource);
        end(out, at);
        // ResourceSpans.scope_spans (2)
        let scope_spans = begin(out, 2);
        // ScopeSpans.scope (1): InstrumentationScope.name (1), .version (2)
        let at = begin(out, 1);
        string(out, 1, scope.0);
        if let Some(version) = scope.1 {
            string(out, 2, version);
        }
        end(out, at);
        // ScopeSpans.spans (2), each already a whole field: they follow.
        end_before(out, scope_spans, spans_len);
    }
    end_before(out, resource_spans, spans_len);
}

/// One ended span, as a `ScopeSpans.spans` field (2), appended to `out`; `state` is the
/// context's `tracestate` header, when the caller sent one. The fixed-size parts (ids, kind
/// and times, flags) are each put together on the stack and copied in one piece. Nothing here
/// panics (no indexing that can fail): a span is never left half written in `out`.
pub(super) fn span(
    out: &mut Vec<u8>,
    (context, state): (&SpanContext, Option<&str>),
    record: &Record,
    end_time: u64,
) {
    let events: usize = record
        .events
        .iter()
        .map(|event| 32 + event.name.len() + event.attributes.len())
        .sum();
    out.reserve(96 + record.name.len() + record.attributes.len() + events);
    let at = begin(out, 2);
    // Span.trace_id (1), .span_id (2): 16 and 8 bytes.
    let mut ids = [0u8; 28];
    ids[0] = 0x0a;
    ids[1] = 16;
    ids[2..18].copy_from_slice(&context.trace_id().to_bytes());
    ids[18] = 0x12;
    ids[19] = 8;
    ids[20..28].copy_from_slice(&context.span_id().to_bytes());
    out.extend_from_slice(&ids);
    // Span.trace_state (3)
    if let Some(state) = state {
        string(out, 3, state);
    }
    // Span.parent_span_id (4)
    if let Some((parent, _)) = record.parent {
        let mut field = [0u8; 10];
        field[0] = 0x22;
        field[1] = 8;
        field[2..10].copy_from_slice(&parent.to_bytes());
        out.extend_from_slice(&field);
    }
    string(out, 5, &record.name);
    // Span.kind (6, varint), .start_time_unix_nano (7), .end_time_unix_nano (8): fixed64.
    let kind = match record.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    let mut times = [0u8; 20];
    times[0] = 0x30;
    times[1] = kind;
    times[2] = 0x39;
    times[3..11].copy_from_slice(&record.start.to_le_bytes());
    times[11] = 0x41;
    times[12..20].copy_from_slice(&end_time.max(record.start).to_le_bytes());
    out.extend_from_slice(&times);
    out.extend_from_slice(&record.attributes);
    varint(out, 10, u64::from(record.dropped_attributes));
    for event in &record.events {
        // Span.events (11): Event.time_unix_nano (1), .name (2), .attributes (3)
        let at = begin(out, 11);
        fixed64(out, 1, event.time);
        string(out, 2, &event.name);
        out.extend_from_slice(&event.attributes);
        end(out, at);
    }
    varint(out, 12, u64::from(record.dropped_events));
    // Span.status (15): Status.message (2), .code (3: 1 ok, 2 error)
    match &record.status {
        Status::Unset => {}
        Status::Ok => {
            let at = begin(out, 15);
            varint(out, 3, 1);
            end(out, at);
        }
        Status::Error { description } => {
            let at = begin(out, 15);
            string(out, 2, description);
            varint(out, 3, 2);
            end(out, at);
        }
    }
    // Span.flags (16, fixed32: two bytes of key): the W3C trace flags, and whether the
    // parent is remote (bit 8: known, bit 9: remote).
    let mut flags = u32::from(context.trace_flags().to_u8()) | 0x100;
    if record.parent.is_some_and(|(_, remote)| remote) {
        flags |= 0x200;
    }
    let mut field = [0x85, 0x01, 0, 0, 0, 0];
    field[2..6].copy_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&field);
    end(out, at);
}

/// The process's resource attributes as `Resource.attributes` fields (1), written once.
pub(super) fn resource(attributes: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::new();
    for kv in attributes {
        let value = match &kv.value {
            Value::String(text) => Val::Str(text.as_str().into()),
            Value::Bool(flag) => Val::Bool(*flag),
            Value::I64(number) => Val::Int(*number),
            Value::F64(number) => Val::F64(*number),
            other => Val::Str(other.to_string().into()),
        };
        key_value(&mut out, 1, kv.key.as_str(), &value);
    }
    out
}

/// A `KeyValue` message as field `tag`: key (1), value (2: AnyValue with its one field:
/// string 1, bool 2, int 3, double 4), lengths measured first (no [`begin`] padding). Nearly
/// every attribute is under 128 bytes, its lengths one byte each: that case is a few stores
/// and the two texts' copies, inlined where the key is known (its lengths are then constants);
/// the rest is [`key_value_long`].
#[inline(always)]
pub(super) fn key_value(out: &mut Vec<u8>, tag: u32, key: &str, value: &Val<'_>) {
    let any = match value {
        Val::Str(text) => field_len(text.len()),
        Val::Bool(_) => 2,
        Val::Int(number) => 1 + encoded_len_varint(*number as u64),
        Val::F64(_) => 9,
    };
    let body = field_len(key.len()) + field_len(any);
    let field = ((tag << 3) | WireType::LengthDelimited as u32) as u8;
    if tag < 16 && body < 0x80 {
        // Every length here is under 128: one byte each.
        out.reserve(2 + body);
        out.extend_from_slice(&[field, body as u8, 0x0a, key.len() as u8]);
        out.extend_from_slice(key.as_bytes());
        match value {
            Val::Str(text) => {
                out.extend_from_slice(&[0x12, any as u8, 0x0a, text.len() as u8]);
                out.extend_from_slice(text.as_bytes());
            }
            Val::Bool(flag) => out.extend_from_slice(&[0x12, 2, 0x10, u8::from(*flag)]),
            Val::Int(number) => {
                out.extend_from_slice(&[0x12, any as u8, 0x18]);
                put_varint(out, *number as u64);
            }
            Val::F64(number) => {
                out.extend_from_slice(&[0x12, 9, 0x21]);
                out.extend_from_slice(&number.to_le_bytes());
            }
        }
        return;
    }
    key_value_long(out, tag, key, value, (body, any));
}

/// [`key_value`] with lengths of any size: `body` the `KeyValue`'s, `any` its value's.
#[inline(never)]
fn key_value_long(
    out: &mut Vec<u8>,
    tag: u32,
    key: &str,
    value: &Val<'_>,
    (body, any): (usize, usize),
) {
    out.reserve(1 + encoded_len_varint(body as u64) + body);
    put_key(out, tag, WireType::LengthDelimited);
    put_varint(out, body as u64);
    put_key(out, 1, WireType::LengthDelimited);
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key.as_bytes());
    put_key(out, 2, WireType::LengthDelimited);
    put_varint(out, any as u64);
    match value {
        Val::Str(text) => {
            put_key(out, 1, WireType::LengthDelimited);
            put_varint(out, text.len() as u64);
            out.extend_from_slice(text.as_bytes());
        }
        Val::Bool(flag) => {
            put_key(out, 2, WireType::Varint);
            out.push(u8::from(*flag));
        }
        Val::Int(number) => {
            put_key(out, 3, WireType::Varint);
            put_varint(out, *number as u64);
        }
        Val::F64(number) => {
            put_key(out, 4, WireType::SixtyFourBit);
            out.extend_from_slice(&number.to_le_bytes());
        }
    }
}

/// Where the attribute with `key` is in `fields` (what [`key_value`] wrote, one field after
/// another), if it is there.
pub(super) fn find_key(fields: &[u8], key: &str) -> Option<std::ops::Range<usize>> {
    let length = |cursor: &mut &[u8]| usize::try_from(decode_varint(cursor).ok()?).ok();
    let mut rest = fields;
    // Each field: its key (one byte: tags here are under 16), its length, the message.
    while let Some((_, mut cursor)) = rest.split_first() {
        let start = fields.len() - rest.len();
        let len = length(&mut cursor)?;
        let body = cursor.get(..len)?;
        rest = cursor.get(len..)?;
        // KeyValue.key (1): its key byte, length and text.
        let mut inner = body.get(1..)?;
        let key_len = length(&mut inner)?;
        if inner.get(..key_len) == Some(key.as_bytes()) {
            return Some(start..fields.len() - rest.len());
        }
    }
    None
}

/// The bytes of a length-delimited field of `len` bytes after its one-byte tag, tag included.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// A field's key: one byte for the tags here (all under 16), written in place.
#[inline]
fn put_key(out: &mut Vec<u8>, tag: u32, wire: WireType) {
    if tag < 16 {
        out.push(((tag << 3) | wire as u32) as u8);
    } else {
        encode_key(tag, wire, out);
    }
}

/// A varint: one byte, written in place, for what is under 128 (most lengths here).
#[inline]
fn put_varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
    } else {
        encode_varint(value, out);
    }
}

/// Starts a nested message as field `tag`: its length is filled in by [`end`].
fn begin(out: &mut Vec<u8>, tag: u32) -> usize {
    put_key(out, tag, WireType::LengthDelimited);
    let at = out.len();
    out.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x00]);
    at
}

/// Writes the length of the message begun at `at` as a 5-byte varint.
fn end(out: &mut [u8], at: usize) {
    end_before(out, at, 0);
}

/// [`end`] of a message whose last `more` bytes are not written yet.
fn end_before(out: &mut [u8], at: usize, more: usize) {
    let len = (out.len() - at - 5 + more) as u64;
    for (i, byte) in out[at..at + 5].iter_mut().enumerate() {
        let bits = ((len >> (7 * i)) & 0x7f) as u8;
        *byte = if i < 4 { bits | 0x80 } else { bits };
    }
}

#[inline]
fn bytes(out: &mut Vec<u8>, tag: u32, data: &[u8]) {
    put_key(out, tag, WireType::LengthDelimited);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// A string field; an empty one is left out (proto3's default).
#[inline]
fn string(out: &mut Vec<u8>, tag: u32, text: &str) {
    if !text.is_empty() {
        bytes(out, tag, text.as_bytes());
    }
}

/// A varint field; zero is left out (proto3's default).
fn varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        put_key(out, tag, WireType::Varint);
        put_varint(out, value);
    }
}

fn fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
    put_key(out, tag, WireType::SixtyFourBit);
    out.extend_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::Event;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;

    #[test]
    fn what_it_writes_decodes_with_the_official_definitions() {
        let context = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            SpanId::from(0xb7ad6b7169203331),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut record = Record::new(
            "chat m".into(),
            SpanKind::Client,
            Some((SpanId::from(7), true)),
            1_700_000_000_123,
        );
        record.set("s", &"old".into());
        record.set("i", &Val::Int(-5));
        record.set("b", &Val::Bool(true));
        record.set("f", &Val::F64(0.5));
        record.set("s", &"text".into());
        record.set("long", &"y".repeat(200).into());
        record.set("long", &"x".repeat(300).into());
        record.set("i", &Val::Int(-5));
        record.events.push(Event {
            time: 1_700_000_000_200,
            name: "first token".into(),
            attributes: Vec::new(),
        });
        key_value(&mut record.events[0].attributes, 3, "n", &Val::Int(1));
        record.dropped_events = 2;
        record.status = Status::error("disk on fire");
        let mut spans = Vec::new();
        let with_state = SpanContext::new(
            context.trace_id(),
            context.span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "x")]).expect("a tracestate"),
        );
        span(
            &mut spans,
            (&with_state, Some(&with_state.trace_state().header())),
            &record,
            1_700_003_000_123,
        );
        span(&mut spans, (&context, None), &record, 1_700_003_000_123);
        let mut out = Vec::new();
        envelope(
            &resource(&[KeyValue::new("service.name", "svc")]),
            ("flowhost", Some("1.2.3")),
            &spans,
            &mut out,
        );
        let request = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");
        let resource = &request.resource_spans[0];
        assert_eq!(
            resource.resource.as_ref().expect("resource").attributes[0].key,
            "service.name"
        );
        let scope = &resource.scope_spans[0];
        assert_eq!(scope.scope.as_ref().expect("scope").version, "1.2.3");
        assert_eq!(scope.spans.len(), 2);
        assert_eq!(scope.spans[0].trace_state, "vendor=x");
        assert_eq!(scope.spans[1].trace_state, "");
        let got = &scope.spans[1];
        assert_eq!(got.name, "chat m");
        assert_eq!(got.kind, 3);
        assert_eq!(
            got.trace_id,
            0x0af7651916cd43dd8448eb211c80319c_u128.to_be_bytes()
        );
        assert_eq!(got.parent_span_id, 7u64.to_be_bytes());
        assert_eq!(got.start_time_unix_nano, 1_700_000_000_123);
        assert_eq!(got.end_time_unix_nano, 1_700_003_000_123);
        assert_eq!(got.flags, 0x301);
        assert_eq!(got.events[0].name, "first token");
        assert_eq!(got.events[0].time_unix_nano, 1_700_000_000_200);
        assert_eq!(got.dropped_events_count, 2);
        let status = got.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "disk on fire"));
        // A key set again is sent once, with its last value.
        let attributes: Vec<(&str, Option<Any>)> = got
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().and_then(|v| v.value.clone()),
                )
            })
            .collect();
        assert_eq!(
            attributes,
            [
                ("b", Some(Any::BoolValue(true))),
                ("f", Some(Any::DoubleValue(0.5))),
                ("s", Some(Any::StringValue("text".into()))),
                ("long", Some(Any::StringValue("x".repeat(300)))),
                ("i", Some(Any::IntValue(-5))),
            ]
        );
        assert_eq!(got.events[0].attributes[0].key, "n");
    }
}
