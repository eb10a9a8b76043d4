//! Traces: OpenTelemetry spans for requests (HTTP and MCP), runs, op calls, LLM calls and tool
//! calls, exported over OTLP/HTTP (protobuf) when an endpoint is set; W3C trace context read
//! from callers (`traceparent`, `tracestate`, `baggage`; MCP's `params._meta`), and the trace
//! (not the baggage) passed on to upstreams. Nothing set: no tracer, and every [`Cx`] and [`Span`] here is empty, so a
//! call site costs one branch.
//!
//! `settings.rs` is the `telemetry:` settings with the standard `OTEL_*` variables over them;
//! `export.rs` the exporter's queue (bounded, never blocks a run, counts what it drops) and
//! its sender; `otlp.rs` the OTLP protobuf body, written straight from the spans.

mod export;
mod otlp;
mod settings;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

pub(crate) use settings::{Conventions, Settings};

/// The process's tracer, once `init` made one.
static TRACER: OnceLock<opentelemetry_sdk::trace::SdkTracer> = OnceLock::new();
/// `telemetry.conventions` as a byte (read on every span with extra names).
static CONVENTIONS: AtomicU8 = AtomicU8::new(0);

/// What `init` started: flushes the spans still queued when dropped (at exit).
pub(crate) struct Guard(opentelemetry_sdk::trace::SdkTracerProvider);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(err) = self
            .0
            .shutdown_with_timeout(std::time::Duration::from_secs(3))
        {
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
    let (provider, tracer) = export::start(&resolved)?;
    CONVENTIONS.store(resolved.conventions as u8, Ordering::Relaxed);
    tracing::info!(
        endpoint = %settings::shown(&resolved.endpoint),
        sampler = %resolved.sampler_name,
        service = %resolved.service,
        "telemetry: exporting traces over OTLP/HTTP"
    );
    let _ = TRACER.set(tracer);
    Ok(Some(Guard(provider)))
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

fn propagator() -> &'static impl TextMapPropagator {
    static PROPAGATOR: OnceLock<opentelemetry::propagation::TextMapCompositePropagator> =
        OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        opentelemetry::propagation::TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    })
}

/// Where new spans go: the context of the span they belong under (a request's, a run's, an
/// op call's). Empty when tracing is off; `Default` is empty.
#[derive(Clone, Default, Debug)]
pub(crate) struct Cx(Option<Context>);

impl Cx {
    /// A context with no parent (a new trace), or empty when tracing is off.
    pub(crate) fn root() -> Cx {
        Cx(enabled().then(Context::new))
    }

    /// The caller's trace context from HTTP headers (`traceparent`, `tracestate`, `baggage`),
    /// or a new trace; empty when tracing is off.
    pub(crate) fn from_headers(headers: &http::HeaderMap) -> Cx {
        if !enabled() {
            return Cx(None);
        }
        // Most requests carry no context: a new trace without the propagators' work (`tracestate`
        // alone means nothing without a `traceparent`).
        if !headers.contains_key("traceparent") && !headers.contains_key("baggage") {
            return Cx(Some(Context::new()));
        }
        Cx(Some(propagator().extract(&Headers(headers))))
    }

    /// The caller's trace context from an MCP request's `params._meta` (`traceparent`,
    /// `tracestate`, `baggage`); `None` when it carries none.
    pub(crate) fn from_meta(meta: &serde_json::Map<String, serde_json::Value>) -> Option<Cx> {
        if !enabled() || !meta.contains_key("traceparent") {
            return None;
        }
        let cx = propagator().extract(&Meta(meta));
        cx.span().span_context().is_valid().then_some(Cx(Some(cx)))
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
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let (Some(parent), Some(tracer)) = (&self.0, TRACER.get()) else {
            return Span(None);
        };
        // Under an unsampled span of this process nothing is sampled either, with every
        // sampler `telemetry.sampler` offers (the trace id decides `traceidratio`, the parent
        // the `parentbased_*` ones; `always_on` never made such a span): the context goes on
        // as it is, unsampled (an upstream gets the parent's ids), and no span object is made.
        // Most spans of a `traceidratio 0.01` host are these. Ending it ends nothing: none of
        // these samplers records a span it does not sample. (Sampled, not recording: a
        // sampled parent that already ended still gets its children.)
        {
            let context = parent.span().span_context().clone();
            if context.is_valid() && !context.is_remote() && !context.is_sampled() {
                return Span(Some(parent.clone()));
            }
        }
        let span = tracer
            .span_builder("")
            .with_kind(kind)
            .start_with_context(tracer, parent);
        let cx = parent.with_span(span);
        {
            let span = cx.span();
            if span.is_recording() {
                span.update_name(name().into());
                span.set_attributes(attributes());
            }
        }
        Span(Some(cx))
    }

    /// The trace and span ids for log lines, when there is a sampled span.
    pub(crate) fn ids(&self) -> Option<(String, String)> {
        let cx = self.0.as_ref()?;
        let span = cx.span();
        let context = span.span_context();
        // An unsampled trace is kept nowhere: its ids would lead nowhere.
        (context.is_valid() && context.is_sampled()).then(|| {
            (
                context.trace_id().to_string(),
                context.span_id().to_string(),
            )
        })
    }

    /// Writes this context into outgoing HTTP headers (`traceparent`, `tracestate`). Never
    /// the caller's `baggage`: what a caller put there is not for a third party (an LLM
    /// provider) to read.
    pub(crate) fn inject(&self, headers: &mut http::HeaderMap) {
        if let Some(cx) = &self.0 {
            TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
        }
    }

    /// This context's `traceparent` (W3C), when it has a sampled span (an unsampled one is
    /// kept nowhere).
    pub(crate) fn traceparent(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let span = cx.span();
        let context = span.span_context();
        // W3C trace context, version 00, flags `sampled` only, as `TraceContextPropagator`
        // writes it (written here directly: its injector goes through a map, and the audit
        // trail asks for it on every request).
        (context.is_valid() && context.is_sampled())
            .then(|| format!("00-{}-{}-01", context.trace_id(), context.span_id()))
    }
}

/// One span, ended when dropped (or by [`Span::end`]). Empty when tracing is off or its
/// parent was empty: every method is then a no-op.
#[derive(Default, Debug)]
pub(crate) struct Span(Option<Context>);

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
        Cx(self.0.clone())
    }

    /// Whether it records (is sampled): attributes worth computing only then.
    pub(crate) fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|cx| cx.span().is_recording())
    }

    pub(crate) fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    pub(crate) fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Some(cx) = &self.0 {
            cx.span().add_event(name, attributes);
        }
    }

    /// An attribute an op sent as JSON (`ctx.span`): strings, whole numbers, numbers and
    /// booleans as themselves, anything else as its JSON text.
    pub(crate) fn set_dynamic(&self, key: &str, value: &serde_json::Value) {
        let Some(cx) = &self.0 else {
            return;
        };
        let value: opentelemetry::Value = match value {
            serde_json::Value::String(text) => text.clone().into(),
            serde_json::Value::Bool(flag) => (*flag).into(),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(whole) => whole.into(),
                None => n.as_f64().unwrap_or_default().into(),
            },
            other => other.to_string().into(),
        };
        cx.span()
            .set_attribute(KeyValue::new(key.to_string(), value));
    }

    /// An event with a name an op chose (`ctx.span`).
    pub(crate) fn event_named(&self, name: &str) {
        if let Some(cx) = &self.0 {
            cx.span().add_event(name.to_string(), Vec::new());
        }
    }

    /// Marks the span failed with `message` (the error chunk's text).
    pub(crate) fn fail(&self, message: &str) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(message.to_string()));
        }
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
        self.set("gen_ai.request.model", model.to_string());
        match conventions() {
            Conventions::Otel => {}
            Conventions::Openinference => self.set("llm.model_name", model.to_string()),
            Conventions::Langfuse => self.set("langfuse.observation.model.name", model.to_string()),
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
        self.set("gen_ai.tool.name", name.to_string());
        if conventions() == Conventions::Openinference {
            self.set("tool.name", name.to_string());
        }
    }

    /// A run's flow, as the trace's name where the conventions have one.
    pub(crate) fn flow(&self, flow: &'static str) {
        if !self.is_recording() {
            return;
        }
        self.set("flowhost.flow", flow);
        if conventions() == Conventions::Langfuse {
            self.set("langfuse.trace.name", flow.to_string());
        }
    }

    /// Ends the span now (later calls and the drop do nothing).
    pub(crate) fn end(&mut self) {
        if let Some(cx) = self.0.take() {
            cx.span().end();
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.end();
    }
}

pub(crate) use opentelemetry::trace::SpanKind as Kind;
pub(crate) use opentelemetry::KeyValue as Attr;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct Meta<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl Extractor for Meta<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(serde_json::Value::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
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
        let span = Cx::root().start_with(Kind::Internal, || "x", Vec::new);
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
        let cx = Cx(Some(propagator().extract(&Headers(&headers))));
        let (trace, span) = cx.ids().expect("valid");
        assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span, "b7ad6b7169203331");
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
