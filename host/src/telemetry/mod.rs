//! Traces: OpenTelemetry spans for requests (HTTP and MCP), runs, op calls, LLM calls and tool
//! calls, exported over OTLP/HTTP (protobuf) when an endpoint is set; W3C trace context read
//! from callers (`traceparent`, `tracestate`; MCP's `params._meta`), and the trace passed on
//! to upstreams. Nothing set: no exporter, and every [`Cx`] and [`Span`] here is empty, so a
//! call site costs one branch.
//!
//! `settings.rs` is the `telemetry:` settings with the standard `OTEL_*` variables over them;
//! `record.rs` the span recorder (ids, samplers, `traceparent`; why not the SDK's tracer:
//! there); `export.rs` the exporter's queue (bounded, never blocks a run, counts what it
//! drops) and its sender; `otlp.rs` the OTLP protobuf body, written straight from the spans.
//! Types (`SpanKind`, `Status`, `SpanContext`) are the OpenTelemetry API's; attributes are
//! [`Val`]s, written as OTLP when they are set.

mod export;
mod otlp;
mod record;
mod settings;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};

use record::Record;
pub(crate) use settings::{Conventions, Settings};

/// The process's tracer, once `init` made one.
static TRACER: OnceLock<Tracer> = OnceLock::new();
/// `telemetry.conventions` as a byte (read on every span with extra names).
static CONVENTIONS: AtomicU8 = AtomicU8::new(0);

struct Tracer {
    sampler: record::Sampler,
    queue: Arc<export::Queue>,
}

/// What `init` started: sends the spans still queued when dropped (at exit).
pub(crate) struct Guard(Arc<export::Queue>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(err) = self.0.shutdown(std::time::Duration::from_secs(3)) {
            tracing::warn!("telemetry: spans still queued at exit were not all sent: {err}");
        }
    }
}

/// Starts the exporter when an endpoint is set (by `telemetry.*` or the `OTEL_*` variables
/// `env` reads); `Ok(None)` when tracing is off. Once per process; a second call changes
/// nothing. A TLS provider must be installed first for an https endpoint.
pub(crate) fn init(
    settings: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Guard>, String> {
    let Some(resolved) = settings.resolve(env)? else {
        return Ok(None);
    };
    if TRACER.get().is_some() {
        return Ok(None);
    }
    let queue = export::start(&resolved)?;
    CONVENTIONS.store(resolved.conventions as u8, Ordering::Relaxed);
    tracing::info!(
        endpoint = %settings::shown(&resolved.endpoint),
        sampler = %resolved.sampler_name,
        service = %resolved.service,
        "telemetry: exporting traces over OTLP/HTTP"
    );
    let _ = TRACER.set(Tracer {
        sampler: resolved.sampler,
        queue: queue.clone(),
    });
    Ok(Some(Guard(queue)))
}

/// What `flowhost config` shows: where traces would go with these settings and `env`'s
/// variables (header values hidden), or why not.
pub(crate) fn describe(
    settings: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> serde_json::Value {
    match settings.resolve(env) {
        Ok(None) => {
            serde_json::json!({"traces": "off (no telemetry.endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)"})
        }
        Ok(Some(resolved)) => serde_json::json!({
            "traces": "otlp http/protobuf",
            "endpoint": settings::shown(&resolved.endpoint),
            "service_name": resolved.service,
            "sampler": resolved.sampler_name,
            "headers": resolved.headers.keys().map(|k| (k.clone(), "(set)".into())).collect::<serde_json::Map<String, serde_json::Value>>(),
            "conventions": resolved.conventions,
        }),
        Err(err) => serde_json::json!({"traces": format!("error: {err}")}),
    }
}

/// Whether spans are made at all.
#[inline]
pub(crate) fn enabled() -> bool {
    TRACER.get().is_some()
}

fn conventions() -> Conventions {
    match CONVENTIONS.load(Ordering::Relaxed) {
        1 => Conventions::Openinference,
        2 => Conventions::Langfuse,
        _ => Conventions::Otel,
    }
}

/// The W3C headers, as names made once (a name given as text is parsed and hashed again on
/// every lookup).
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Where new spans go: the span context they belong under (a request's, a run's, an op
/// call's; an invalid one starts a new trace). Empty when tracing is off; `Default` is empty.
#[derive(Clone, Default, Debug)]
pub(crate) struct Cx(Option<SpanContext>);

impl Cx {
    /// A context with no parent (a new trace), or empty when tracing is off.
    pub(crate) fn root() -> Cx {
        Cx(enabled().then(SpanContext::empty_context))
    }

    /// The caller's trace context from HTTP headers (`traceparent`, `tracestate`), or a new
    /// trace; empty when tracing is off. A caller's `baggage` is not read: nothing here uses
    /// it, and it is never passed on (what a caller put there is not for a third party, an
    /// LLM provider, to read). Several `tracestate` headers are one list, joined with commas
    /// (W3C Trace Context, 3.3.1.1).
    pub(crate) fn from_headers(headers: &http::HeaderMap) -> Cx {
        if !enabled() {
            return Cx(None);
        }
        // A request's few headers are compared by name, not hashed: the lookup was most of
        // what an unsampled request paid for its server span's context (the name's hash, the
        // map's probe). The first value, as `HeaderMap::get` gives it.
        let parent = if headers.len() <= 16 {
            headers
                .iter()
                .find_map(|(name, value)| (*name == TRACEPARENT).then_some(value))
        } else {
            headers.get(&TRACEPARENT)
        };
        let remote = parent
            .and_then(|value| value.to_str().ok())
            .and_then(|parent| {
                let mut states = headers
                    .get_all(&TRACESTATE)
                    .iter()
                    .filter_map(|value| value.to_str().ok());
                // One header (the usual case) is read where it is.
                let state = match (states.next(), states.next()) {
                    (None, _) => None,
                    (Some(one), None) => Some(Cow::Borrowed(one)),
                    (Some(first), Some(second)) => Some(Cow::Owned(
                        [first, second]
                            .into_iter()
                            .chain(states)
                            .collect::<Vec<_>>()
                            .join(","),
                    )),
                };
                record::parse_traceparent(parent, state.as_deref())
            });
        Cx(Some(remote.unwrap_or_else(SpanContext::empty_context)))
    }

    /// The caller's trace context from an MCP request's `params._meta` (`traceparent`,
    /// `tracestate`); `None` when it carries none.
    pub(crate) fn from_meta(meta: &serde_json::Map<String, serde_json::Value>) -> Option<Cx> {
        if !enabled() {
            return None;
        }
        let text = |name: &str| meta.get(name).and_then(serde_json::Value::as_str);
        record::parse_traceparent(text("traceparent")?, text("tracestate")).map(|cx| Cx(Some(cx)))
    }

    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// A span under this one (empty when this is), its name and attributes made only when it
    /// is sampled: an unsampled request (`traceidratio`) costs ids and a sampling decision,
    /// not strings.
    pub(crate) fn start_with<N: Into<Cow<'static, str>>>(
        &self,
        kind: SpanKind,
        name: impl FnOnce() -> N,
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) -> Span {
        let (Some(parent), Some(tracer)) = (&self.0, TRACER.get()) else {
            return Span(None);
        };
        // Under an unsampled span of this process nothing is sampled either, with every
        // sampler `telemetry.sampler` offers (the trace id decides `traceidratio`, the parent
        // the `parentbased_*` ones; `always_on` never made such a span): the context goes on
        // as it is, unsampled (an upstream gets the parent's ids). Most spans of a
        // `traceidratio 0.01` host are these.
        if parent.is_valid() && !parent.is_remote() && !parent.is_sampled() {
            return Span(Some(Live {
                context: parent.clone(),
                record: None,
            }));
        }
        let trace = if parent.is_valid() {
            parent.trace_id()
        } else {
            record::new_trace_id()
        };
        let sampled = tracer.sampler.samples(parent, trace);
        let state = if parent.is_valid() {
            parent.trace_state().clone()
        } else {
            TraceState::default()
        };
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = SpanContext::new(trace, record::new_span_id(), flags, false, state);
        let record = sampled.then(|| {
            let mut record = record::fresh(
                name().into(),
                kind,
                parent
                    .is_valid()
                    .then(|| (parent.span_id(), parent.is_remote())),
                record::now(),
            );
            attributes(&mut Attributes(
                record.get_mut().unwrap_or_else(|p| p.into_inner()),
            ));
            record
        });
        Span(Some(Live { context, record }))
    }

    /// The trace and span ids for log lines (they show as hex), when there is a sampled
    /// span.
    pub(crate) fn ids(&self) -> Option<(TraceId, SpanId)> {
        let context = self.0.as_ref()?;
        // An unsampled trace is kept nowhere: its ids would lead nowhere.
        (context.is_valid() && context.is_sampled())
            .then(|| (context.trace_id(), context.span_id()))
    }

    /// Writes this context into outgoing HTTP headers (`traceparent`, and `tracestate` when
    /// the caller sent one). Never the caller's `baggage`.
    pub(crate) fn inject(&self, headers: &mut http::HeaderMap) {
        let Some(context) = self.0.as_ref().filter(|cx| cx.is_valid()) else {
            return;
        };
        if let Ok(value) = http::HeaderValue::from_str(&record::traceparent(context)) {
            headers.insert(TRACEPARENT, value);
        }
        let state = context.trace_state().header();
        if let Ok(value) = http::HeaderValue::from_str(&state) {
            if !state.is_empty() {
                headers.insert(TRACESTATE, value);
            }
        }
    }

    /// This context's `traceparent` (W3C), when it has a sampled span (an unsampled one is
    /// kept nowhere).
    pub(crate) fn traceparent(&self) -> Option<String> {
        let context = self.0.as_ref()?;
        (context.is_valid() && context.is_sampled()).then(|| record::traceparent(context))
    }
}

/// One span, ended when dropped (or by [`Span::end`]). Empty when tracing is off or its
/// parent was empty: every method is then a no-op; so is every method but [`Span::cx`] of a
/// span that is not sampled.
#[derive(Default, Debug)]
pub(crate) struct Span(Option<Live>);

#[derive(Debug)]
struct Live {
    context: SpanContext,
    /// What it records, when it is sampled.
    record: Option<Box<Mutex<Record>>>,
}

/// What a span is, for the names other tools read (`telemetry.conventions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A request (HTTP or MCP) or a run of a flow.
    Chain,
    /// One op call.
    Op,
    /// A sub-op or agent tool call, or an MCP `tools/call`.
    Tool,
    /// An LLM call.
    Llm,
}

impl Span {
    /// The context for spans under this one.
    pub(crate) fn cx(&self) -> Cx {
        Cx(self.0.as_ref().map(|live| live.context.clone()))
    }

    /// Whether it records (is sampled): attributes worth computing only then.
    pub(crate) fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|live| live.record.is_some())
    }

    #[inline(always)]
    fn with(&self, change: impl FnOnce(&mut Record)) {
        if let Some(record) = self.0.as_ref().and_then(|live| live.record.as_ref()) {
            change(&mut record.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    #[inline]
    pub(crate) fn set<'v>(&self, key: &str, value: impl Into<Val<'v>>) {
        self.with(|record| record.set(key, &value.into()));
    }

    /// Sets several attributes at once (one lock).
    #[inline]
    pub(crate) fn set_all(&self, attributes: &[(&str, Val<'_>)]) {
        self.with(|record| {
            for (key, value) in attributes {
                record.set(key, value);
            }
        });
    }

    pub(crate) fn event(&self, name: &'static str, attributes: &[(&str, Val<'_>)]) {
        self.with(|record| record.event(name.into(), attributes));
    }

    /// An attribute an op sent as JSON (`ctx.span`): strings, whole numbers, numbers and
    /// booleans as themselves, anything else as its JSON text.
    pub(crate) fn set_dynamic(&self, key: &str, value: &serde_json::Value) {
        self.with(|record| {
            let value: Val<'_> = match value {
                serde_json::Value::String(text) => text.into(),
                serde_json::Value::Bool(flag) => (*flag).into(),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(whole) => whole.into(),
                    None => n.as_f64().unwrap_or_default().into(),
                },
                other => other.to_string().into(),
            };
            record.set(key, &value);
        });
    }

    /// An event with a name an op chose (`ctx.span`).
    pub(crate) fn event_named(&self, name: &str) {
        self.with(|record| record.event(name.to_string().into(), &[]));
    }

    /// Marks the span failed with `message` (the error chunk's text).
    pub(crate) fn fail(&self, message: &str) {
        self.with(|record| record.status = Status::error(message.to_string()));
    }

    /// The names other tools read for what this span is (`telemetry.conventions`).
    pub(crate) fn role(&self, role: Role) {
        if !self.is_recording() {
            return;
        }
        match conventions() {
            Conventions::Otel => {}
            Conventions::Openinference => self.set(
                "openinference.span.kind",
                match role {
                    Role::Chain | Role::Op => "CHAIN",
                    Role::Tool => "TOOL",
                    Role::Llm => "LLM",
                },
            ),
            Conventions::Langfuse => self.set(
                "langfuse.observation.type",
                match role {
                    Role::Chain | Role::Op => "span",
                    Role::Tool => "tool",
                    Role::Llm => "generation",
                },
            ),
        }
    }

    /// An LLM call's model, under the GenAI names and the chosen conventions' own.
    pub(crate) fn model(&self, model: &str) {
        if !self.is_recording() {
            return;
        }
        self.set("gen_ai.request.model", model);
        match conventions() {
            Conventions::Otel => {}
            Conventions::Openinference => self.set("llm.model_name", model),
            Conventions::Langfuse => self.set("langfuse.observation.model.name", model),
        }
    }

    /// An LLM call's token counts (its `usage`).
    pub(crate) fn usage(&self, input: Option<i64>, output: Option<i64>) {
        if !self.is_recording() {
            return;
        }
        if let Some(input) = input {
            self.set("gen_ai.usage.input_tokens", input);
        }
        if let Some(output) = output {
            self.set("gen_ai.usage.output_tokens", output);
        }
        match conventions() {
            Conventions::Otel => {}
            Conventions::Openinference => {
                if let Some(input) = input {
                    self.set("llm.token_count.prompt", input);
                }
                if let Some(output) = output {
                    self.set("llm.token_count.completion", output);
                }
                if let (Some(input), Some(output)) = (input, output) {
                    self.set("llm.token_count.total", input + output);
                }
            }
            Conventions::Langfuse => {
                let mut details = serde_json::Map::new();
                if let Some(input) = input {
                    details.insert("input".into(), input.into());
                }
                if let Some(output) = output {
                    details.insert("output".into(), output.into());
                }
                let details = serde_json::Value::Object(details);
                self.set("langfuse.observation.usage_details", details.to_string());
            }
        }
    }

    /// A tool call's name, under the GenAI name and the chosen conventions' own.
    pub(crate) fn tool(&self, name: &str) {
        if !self.is_recording() {
            return;
        }
        self.set("gen_ai.tool.name", name);
        if conventions() == Conventions::Openinference {
            self.set("tool.name", name);
        }
    }

    /// Ends the span now (later calls and the drop do nothing): a sampled one goes to the
    /// exporter's queue.
    pub(crate) fn end(&mut self) {
        let Some(Live {
            context,
            record: Some(record),
        }) = self.0.take()
        else {
            return;
        };
        let end = record::now();
        let mut record = record;
        if let Some(tracer) = TRACER.get() {
            let written = record.get_mut().unwrap_or_else(|p| p.into_inner());
            tracer.queue.push(&context, written, end);
        }
        record::recycle(record);
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.end();
    }
}

pub(crate) use opentelemetry::trace::SpanKind as Kind;
pub(crate) use record::{block_of, Block, Val};

/// A new span's first attributes (`Cx::start_with`), set only when it is sampled.
pub(crate) struct Attributes<'r>(&'r mut Record);

impl Attributes<'_> {
    // Inlined where the key is a literal: its lengths and filter bit fold into constants.
    #[inline(always)]
    pub(crate) fn set<'v>(&mut self, key: &str, value: impl Into<Val<'v>>) {
        self.0.set(key, &value.into());
    }

    /// A run's flow, as the trace's name where the conventions have one.
    pub(crate) fn flow(&mut self, flow: &str) {
        self.set("flowhost.flow", flow);
        if conventions() == Conventions::Langfuse {
            self.set("langfuse.trace.name", flow);
        }
    }

    /// Sets every attribute of `block` (made once, copied whole).
    pub(crate) fn extend(&mut self, block: &Block) {
        self.0.extend(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_comes_from_headers_and_meta_only_when_tracing_is_on() {
        // Off (no init in unit tests): nothing is read, nothing is made.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        assert!(!Cx::from_headers(&headers).is_on());
        let meta = serde_json::json!({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"});
        assert!(Cx::from_meta(meta.as_object().expect("object")).is_none());
        let span = Cx::root().start_with(Kind::Internal, || "x", |_| {});
        assert!(!span.is_recording());
        assert!(span.cx().ids().is_none());
    }

    #[test]
    fn a_remote_context_round_trips_through_headers() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        headers.insert("baggage", http::HeaderValue::from_static("user=alice"));
        let parent = headers["traceparent"].to_str().expect("text");
        let cx = Cx(record::parse_traceparent(parent, None));
        let (trace, span) = cx.ids().expect("valid");
        assert_eq!(trace.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span.to_string(), "b7ad6b7169203331");
        let mut out = http::HeaderMap::new();
        cx.inject(&mut out);
        assert_eq!(
            out["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert!(
            out.get("baggage").is_none(),
            "a caller's baggage stays here"
        );
        assert_eq!(
            cx.traceparent().as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
    }
}
