//! The span recorder: ids, the sampler, W3C `traceparent`, and what a sampled span holds
//! until it ends.
//!
//! Why not the OpenTelemetry SDK's tracer: under `always_on` a span of the SDK is a boxed
//! builder, a sampler call through a trait object, an `Arc` per context, its data moved into
//! a `SpanData` (instrumentation scope cloned) and sent to the exporter's thread, which
//! encoded it and freed it there (a free across threads, pages purged and faulted again):
//! tracing every request cost +50-60% of the host's CPU (BENCHMARKS.md), the budget is
//! 10%. Here a span is ids and, when sampled, one boxed record; it is written as OTLP
//! protobuf by the thread that ends it, into the exporter's buffer (`export.rs`).

use std::borrow::Cow;
use std::str::FromStr;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};

/// OpenTelemetry's default limits (`OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`,
/// `OTEL_SPAN_EVENT_COUNT_LIMIT`): what goes over them is counted, not kept.
const MAX_ATTRIBUTES: usize = 128;
const MAX_EVENTS: usize = 128;

/// Which new spans are recorded (`OTEL_TRACES_SAMPLER`), decided as the SDKs decide.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// `traceidratio`: a fixed share of traces, by trace id (every span of a trace alike).
    Ratio(f64),
    /// `parentbased_*`: a span with a parent does as its parent did; a root as the inner one.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// Whether a new span of trace `trace` under `parent` (invalid: a root) is sampled.
    pub(super) fn samples(&self, parent: &SpanContext, trace: TraceId) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(ratio) => ratio_samples(*ratio, trace),
            Sampler::ParentBased(root) => {
                if parent.is_valid() {
                    parent.is_sampled()
                } else {
                    root.samples(parent, trace)
                }
            }
        }
    }
}

/// As the OpenTelemetry SDKs decide `traceidratio` (Rust, Go, Java alike): the trace id's low
/// 64 bits, shifted right by one, under `ratio` × 2⁶³.
fn ratio_samples(ratio: f64, trace: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u128::from_be_bytes(trace.to_bytes()) as u64;
    (low >> 1) < bound
}

/// A random trace id (never the invalid zero). Ids need to be unique, not unguessable: the
/// SDK's generator is a small non-cryptographic generator too.
pub(super) fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

pub(super) fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return SpanId::from(id);
        }
    }
}

/// Nanoseconds since the Unix epoch (OTLP's times); 0 for a clock set before 1970. Read
/// with `clock_gettime` itself: `SystemTime`'s `duration_since` (a checked subtraction of two
/// timespecs) cost as much as the clock's read, six times a traced request.
#[inline]
pub(super) fn now() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a timespec the call may write; CLOCK_REALTIME always exists.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut time) } != 0 {
        return 0;
    }
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(time.tv_sec), u64::try_from(time.tv_nsec)) else {
        return 0;
    };
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// A W3C `traceparent` (and `tracestate`) as a remote span context, or `None` when it is not
/// a valid one, read as the SDK's `TraceContextPropagator` reads it: version 00 has exactly
/// four fields, a later version may have more; ids and flags lowercase hex, ids not zero;
/// flags other than `sampled` dropped; a `tracestate` that does not parse is ignored. Stricter
/// than the SDK in one place: a version 00 value is exactly its 55 characters (a trailing `-`
/// is not one).
pub(super) fn parse_traceparent(value: &str, state: Option<&str>) -> Option<SpanContext> {
    let value = value.trim();
    let parts: Vec<&str> = value.split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(parts[0], 2) || !hex(parts[1], 32) || !hex(parts[2], 16) || !hex(parts[3], 2) {
        return None;
    }
    let version = u8::from_str_radix(parts[0], 16).ok()?;
    if version == 0xff || (version == 0 && (parts.len() != 4 || value.len() != 55)) {
        return None;
    }
    let trace = TraceId::from_hex(parts[1]).ok()?;
    let span = SpanId::from_hex(parts[2]).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(parts[3], 16).ok()?) & TraceFlags::SAMPLED;
    let state = state
        .and_then(|text| TraceState::from_str(text).ok())
        .unwrap_or_default();
    let context = SpanContext::new(trace, span, flags, true, state);
    context.is_valid().then_some(context)
}

/// The `traceparent` of `context` (W3C, version 00; only the `sampled` flag).
pub(super) fn traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags() & TraceFlags::SAMPLED
    )
}

/// An attribute's value, borrowed where it can be: it is written as OTLP at once (see
/// [`Record::set`]), so nothing needs to own it.
#[derive(Debug)]
pub(crate) enum Val<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    F64(f64),
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(text: &'a str) -> Self {
        Val::Str(Cow::Borrowed(text))
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(text: &'a String) -> Self {
        Val::Str(Cow::Borrowed(text))
    }
}

impl From<String> for Val<'_> {
    fn from(text: String) -> Self {
        Val::Str(Cow::Owned(text))
    }
}

impl From<i64> for Val<'_> {
    fn from(number: i64) -> Self {
        Val::Int(number)
    }
}

impl From<bool> for Val<'_> {
    fn from(flag: bool) -> Self {
        Val::Bool(flag)
    }
}

impl From<f64> for Val<'_> {
    fn from(number: f64) -> Self {
        Val::F64(number)
    }
}

/// Attributes that many spans share (a route's method, scheme and template), written as OTLP
/// once and copied whole into each span that sets them ([`Record::extend`]).
#[derive(Debug, Default)]
pub(crate) struct Block {
    bytes: Vec<u8>,
    /// Each attribute's key, and where its field is in `bytes`.
    fields: Vec<(Box<str>, std::ops::Range<usize>)>,
    keys: u64,
}

impl Block {
    /// The attributes, a key given twice set once (its last value).
    pub(crate) fn new(attributes: &[(&str, Val<'_>)]) -> Block {
        let mut block = Block::default();
        for (at, (key, value)) in attributes.iter().enumerate() {
            if attributes[at + 1..].iter().any(|(later, _)| later == key) {
                continue;
            }
            let start = block.bytes.len();
            super::otlp::key_value(&mut block.bytes, 9, key, value);
            block.fields.push(((*key).into(), start..block.bytes.len()));
            block.keys |= key_bit(key);
        }
        block
    }
}

/// Texts that never change address: interned, never freed (`ops::intern`).
type Interned = [&'static str; 3];

/// The block `make` makes for `texts` at `site` (which caller: its blocks' keys differ from
/// another's), made once per process and kept for its life (a thread remembers the last 16 it
/// used; the others are found under a lock). `site` and `texts` must be interned or literals
/// (never freed): they are told apart by address and length, not compared.
pub(crate) fn block_of(
    site: &'static str,
    texts: Interned,
    make: impl FnOnce() -> Block,
) -> &'static Block {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = [(usize, usize); 4];
    type Known = (Vec<(Key, &'static Block)>, usize);
    const RECENT: usize = 16;
    thread_local! {
        static KNOWN: std::cell::RefCell<Known> = const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    static ALL: Mutex<Option<HashMap<Key, &'static Block>>> = Mutex::new(None);
    let address = |text: &str| (text.as_ptr() as usize, text.len());
    let key: Key = [
        address(site),
        address(texts[0]),
        address(texts[1]),
        address(texts[2]),
    ];
    let known = KNOWN.try_with(|known| {
        let known = known.borrow();
        known
            .0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, block)| *block)
    });
    if let Ok(Some(block)) = known {
        return block;
    }
    let block = {
        let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        *all.get_or_insert_with(HashMap::new)
            .entry(key)
            .or_insert_with(|| Box::leak(Box::new(make())))
    };
    let _ = KNOWN.try_with(|known| {
        let (known, next) = &mut *known.borrow_mut();
        if known.len() < RECENT {
            known.push((key, block));
        } else if let Some(slot) = known.get_mut(*next) {
            *slot = (key, block);
            *next = (*next + 1) % RECENT;
        }
    });
    block
}

/// What a sampled span holds until it ends.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) name: Cow<'static, str>,
    pub(super) kind: SpanKind,
    /// The parent's id and whether it came from another process; `None` for a root.
    pub(super) parent: Option<(SpanId, bool)>,
    pub(super) start: u64,
    /// The attributes as they will be sent: each a whole `Span.attributes` field (OTLP
    /// protobuf), written when it is set. Kept as `KeyValue`s, an attribute was a string
    /// copied in, a vector of them, each freed at the end after being encoded: a third of
    /// what tracing added to a request.
    pub(super) attributes: Vec<u8>,
    attribute_count: u32,
    /// A bit per key set so far, by [`key_bit`]: a key whose bit is clear was not set before,
    /// and the attributes need not be searched for it (most keys are set once).
    keys: u64,
    pub(super) dropped_attributes: u32,
    pub(super) events: Vec<Event>,
    pub(super) dropped_events: u32,
    pub(super) status: Status,
}

#[derive(Debug)]
pub(super) struct Event {
    pub(super) time: u64,
    pub(super) name: Cow<'static, str>,
    /// As [`Record::attributes`], as `Event.attributes` fields.
    pub(super) attributes: Vec<u8>,
}

/// One of 64 bits for `key` (its length and last two bytes: the host's keys differ there).
#[inline]
fn key_bit(key: &str) -> u64 {
    let bytes = key.as_bytes();
    let tail = match bytes {
        [.., a, b] => usize::from(*a) * 7 + usize::from(*b),
        [b] => usize::from(*b),
        [] => 0,
    };
    1 << ((bytes.len() * 13 + tail) & 63)
}

/// Room for what a span of the host sets (the server span's seven attributes are about 220
/// bytes): one allocation, not one per doubling.
const ATTRIBUTE_ROOM: usize = 256;

/// Records kept for reuse per thread (a span's record and its attributes' buffer were two
/// allocations at its start and two frees at its end: three spans a request).
const SPARE: usize = 32;

thread_local! {
    // Boxes kept whole: a box is what a span holds, and its allocation is what is reused.
    #[allow(clippy::vec_box)]
    static SPARES: std::cell::RefCell<Vec<Box<std::sync::Mutex<Record>>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A record for a new span: one this thread kept ([`recycle`]), or a new one.
pub(super) fn fresh(
    name: Cow<'static, str>,
    kind: SpanKind,
    parent: Option<(SpanId, bool)>,
    start: u64,
) -> Box<std::sync::Mutex<Record>> {
    let spare = SPARES
        .try_with(|spares| spares.borrow_mut().pop())
        .ok()
        .flatten();
    match spare {
        Some(mut boxed) => {
            let record = boxed.get_mut().unwrap_or_else(|p| p.into_inner());
            record.name = name;
            record.kind = kind;
            record.parent = parent;
            record.start = start;
            boxed
        }
        None => Box::new(std::sync::Mutex::new(Record::new(
            name, kind, parent, start,
        ))),
    }
}

/// Keeps an ended span's record for this thread's next span, emptied (its buffers kept
/// unless a span grew them large).
pub(super) fn recycle(mut boxed: Box<std::sync::Mutex<Record>>) {
    let Ok(record) = boxed.get_mut() else {
        return;
    };
    if record.attributes.capacity() > 4 * ATTRIBUTE_ROOM || record.events.capacity() > 8 {
        return;
    }
    record.name = Cow::Borrowed("");
    record.attributes.clear();
    record.attribute_count = 0;
    record.keys = 0;
    record.dropped_attributes = 0;
    record.events.clear();
    record.dropped_events = 0;
    record.status = Status::Unset;
    let _ = SPARES.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARE {
            spares.push(boxed);
        }
    });
}

impl Record {
    pub(super) fn new(
        name: Cow<'static, str>,
        kind: SpanKind,
        parent: Option<(SpanId, bool)>,
        start: u64,
    ) -> Record {
        Record {
            name,
            kind,
            parent,
            start,
            attributes: Vec::with_capacity(ATTRIBUTE_ROOM),
            attribute_count: 0,
            keys: 0,
            dropped_attributes: 0,
            events: Vec::new(),
            dropped_events: 0,
            status: Status::Unset,
        }
    }

    /// Sets an attribute: a key set before gets the new value (OTLP keys are unique).
    #[inline(always)]
    pub(super) fn set(&mut self, key: &str, value: &Val<'_>) {
        if self.room_for(key) {
            super::otlp::key_value(&mut self.attributes, 9, key, value);
            self.attribute_count += 1;
        }
    }

    /// Makes room for the attribute `key` (a whole `Span.attributes` field the caller then
    /// writes and counts): its old field removed if it was set before; `false` (counted as
    /// dropped) when the span has all the attributes it may keep.
    #[inline(always)]
    fn room_for(&mut self, key: &str) -> bool {
        let bit = key_bit(key);
        if self.keys & bit != 0 {
            if let Some(old) = super::otlp::find_key(&self.attributes, key) {
                self.attributes.drain(old);
                self.attribute_count -= 1;
            }
        }
        self.keys |= bit;
        if (self.attribute_count as usize) < MAX_ATTRIBUTES {
            true
        } else {
            self.dropped_attributes += 1;
            false
        }
    }

    /// Sets every attribute of `block`: copied whole when none of its keys was set before.
    pub(super) fn extend(&mut self, block: &Block) {
        let count = block.fields.len();
        if self.keys & block.keys == 0 && self.attribute_count as usize + count <= MAX_ATTRIBUTES {
            self.attributes.extend_from_slice(&block.bytes);
            self.attribute_count += count as u32;
            self.keys |= block.keys;
            return;
        }
        for (key, at) in &block.fields {
            if self.room_for(key) {
                let field = block.bytes.get(at.clone()).unwrap_or_default();
                self.attributes.extend_from_slice(field);
                self.attribute_count += 1;
            }
        }
    }

    pub(super) fn event(&mut self, name: Cow<'static, str>, attributes: &[(&str, Val<'_>)]) {
        if self.events.len() < MAX_EVENTS {
            let mut encoded = Vec::new();
            for (key, value) in attributes.iter().take(MAX_ATTRIBUTES) {
                super::otlp::key_value(&mut encoded, 3, key, value);
            }
            self.events.push(Event {
                time: now(),
                name,
                attributes: encoded,
            });
        } else {
            self.dropped_events += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_the_w3c_spec_and_the_sdk_read_it() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse_traceparent(good, Some("vendor=x")).expect("valid");
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(context.trace_state().header(), "vendor=x");
        assert_eq!(traceparent(&context), good);
        // Unknown flags are dropped; a later version may carry more fields.
        let later = parse_traceparent(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-more",
            None,
        )
        .expect("a later version");
        assert_eq!(traceparent(&later), good);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_block_is_copied_whole_and_keys_stay_unique() {
        let block = Block::new(&[
            ("a", "first".into()),
            ("b", Val::Int(2)),
            ("a", "last".into()),
        ]);
        let by_sets = |sets: &[(&str, Val<'_>)]| {
            let mut record = Record::new("x".into(), SpanKind::Internal, None, 0);
            for (key, value) in sets {
                record.set(key, value);
            }
            record
        };
        let expected = by_sets(&[("b", Val::Int(2)), ("a", "last".into())]);
        // Nothing set before: copied whole, a key given twice in the block kept once.
        let mut record = Record::new("x".into(), SpanKind::Internal, None, 0);
        record.extend(&block);
        assert_eq!(record.attributes, expected.attributes);
        assert_eq!(record.attribute_count, 2);
        // A key set before takes the block's value, once.
        let mut record = by_sets(&[("b", Val::Int(9))]);
        record.extend(&block);
        assert_eq!(record.attributes, expected.attributes);
        assert_eq!(record.attribute_count, 2);
        // At the limit: what does not fit is counted as dropped, as with single attributes.
        let mut full = Record::new("x".into(), SpanKind::Internal, None, 0);
        for n in 0..MAX_ATTRIBUTES - 1 {
            full.set(&format!("k{n}"), &Val::Int(1));
        }
        full.extend(&block);
        assert_eq!(full.attribute_count as usize, MAX_ATTRIBUTES);
        assert_eq!(full.dropped_attributes, 1);
    }

    #[test]
    fn a_kept_record_starts_empty() {
        let mut first = fresh("one".into(), SpanKind::Server, None, 1);
        {
            let record = first.get_mut().expect("not poisoned");
            record.set("k", &"v".into());
            record.event("e".into(), &[]);
            record.status = Status::error("failed");
            record.dropped_attributes = 3;
            record.dropped_events = 4;
        }
        let at = std::ptr::from_ref::<std::sync::Mutex<Record>>(&first);
        recycle(first);
        let mut again = fresh("two".into(), SpanKind::Internal, None, 2);
        assert_eq!(std::ptr::from_ref(&*again), at, "the same box, kept");
        let record = again.get_mut().expect("not poisoned");
        assert_eq!(record.name, "two");
        assert_eq!(record.kind, SpanKind::Internal);
        assert_eq!(record.start, 2);
        assert!(record.attributes.is_empty() && record.attribute_count == 0 && record.keys == 0);
        assert!(record.events.is_empty() && record.status == Status::Unset);
        assert_eq!((record.dropped_attributes, record.dropped_events), (0, 0));
    }

    #[test]
    fn the_samplers_decide_as_the_sdks_do() {
        let root = SpanContext::empty_context();
        // Low 64 bits shifted right: 0 samples at any ratio above 0, the top never below 1.
        let low = TraceId::from(0x1234_u128 << 64);
        let high = TraceId::from(u128::from(u64::MAX));
        assert!(Sampler::Ratio(0.01).samples(&root, low));
        assert!(!Sampler::Ratio(0.99).samples(&root, high));
        assert!(Sampler::Ratio(1.0).samples(&root, high));
        assert!(!Sampler::Ratio(0.0).samples(&root, low));
        let sampled = parse_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            None,
        )
        .expect("valid");
        let unsampled = parse_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            None,
        )
        .expect("valid");
        let parent_based = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        assert!(parent_based.samples(&sampled, high));
        assert!(!parent_based.samples(&unsampled, high));
        assert!(!parent_based.samples(&root, low));
        assert!(Sampler::AlwaysOn.samples(&unsampled, high));
        // About the ratio's share of random trace ids.
        let hits = (0..20_000)
            .filter(|_| Sampler::Ratio(0.25).samples(&root, new_trace_id()))
            .count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
    }
}
