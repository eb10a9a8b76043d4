//! Plain-text log lines (`--log-format text` when stderr is not a terminal: log files, pipes,
//! shippers), written exactly as tracing-subscriber's default format writes them without
//! colour (`2026-12-04T17:45:54.123456Z  INFO span{a=1}: message key=value`), in less time.
//!
//! Why not its own formatter: with colour off it still goes through `nu_ansi_term` for every
//! field name, `=` and span name (writing empty styles), passes a message through its ANSI
//! escaper one character at a time, and formats the timestamp field by field. At the default
//! `info` level that is one line per HTTP request: the request line cost about 10k
//! instructions of a ~56k-instruction request (callgrind, BENCHMARKS.md, issue 21). Here the
//! message is checked for what needs escaping a piece at a time and written whole when
//! nothing does (the same escapes otherwise), field names are written as they are, and the
//! date and time to the second are made once a second per thread. A terminal keeps
//! tracing-subscriber's own coloured format (`main.rs`).

use std::cell::RefCell;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format: time, level, spans with their fields, then the event's fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainLines;

impl<S, N> FormatEvent<S, N> for PlainLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_time(&mut writer, std::time::SystemTime::now())?;
        writer.write_str(match *event.metadata().level() {
            Level::TRACE => "TRACE ",
            Level::DEBUG => "DEBUG ",
            Level::INFO => " INFO ",
            Level::WARN => " WARN ",
            Level::ERROR => "ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        writer.write_char('{')?;
                        writer.write_str(fields)?;
                        writer.write_char('}')?;
                    }
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ ` (UTC, microseconds), as tracing-subscriber's `SystemTime`
/// timer writes it; the part to the second is made once a second.
fn write_time(writer: &mut Writer<'_>, now: std::time::SystemTime) -> fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let Ok(since) = now.duration_since(std::time::UNIX_EPOCH) else {
        // A clock before 1970: tracing-subscriber's own timer writes it.
        use tracing_subscriber::fmt::time::FormatTime;
        if tracing_subscriber::fmt::time::SystemTime
            .format_time(writer)
            .is_err()
        {
            writer.write_str("<unknown time>")?;
        }
        return writer.write_char(' ');
    };
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            let _ = write_second(&mut cached.1, secs);
            cached.0 = secs;
        }
        writer.write_str(&cached.1)
    })?;
    let mut digits = [b'0'; 9];
    let mut rest = micros;
    for slot in digits[..6].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    digits[6] = b'Z';
    digits[7] = b' ';
    writer.write_str(std::str::from_utf8(&digits[..8]).map_err(|_| fmt::Error)?)
}

/// `YYYY-MM-DDTHH:MM:SS.` for seconds since the Unix epoch (the proleptic Gregorian calendar,
/// Howard Hinnant's `civil_from_days`).
fn write_second(out: &mut String, secs: u64) -> fmt::Result {
    let days = (secs / 86_400) as i64;
    let of_day = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year > 9999 {
        write!(out, "+{year}")?;
    } else {
        write!(out, "{year:04}")?;
    }
    write!(
        out,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The field format: the message first as it is (escaped), then `name=value` (a string
/// quoted, as `Debug` writes it), separated by spaces. Span fields too.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainFieldsVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> PlainFieldsVisitor<'a> {
        PlainFieldsVisitor {
            writer,
            empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's or span's fields.
pub struct PlainFieldsVisitor<'a> {
    writer: Writer<'a>,
    empty: bool,
    result: fmt::Result,
}

impl PlainFieldsVisitor<'_> {
    fn pad(&mut self) {
        if self.empty {
            self.empty = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
    }
}

impl Visit for PlainFieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if let Some(source) = value.source() {
            self.record_debug(
                field,
                &format_args!(
                    "{} {}.sources={}",
                    Escaped(value),
                    field.name(),
                    Sources(source)
                ),
            );
        } else {
            self.record_debug(field, &format_args!("{}", Escaped(value)));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // What the `log` crate's records carry as fields (were its bridge ever on) is not
        // written, as tracing-subscriber does not.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.pad();
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        self.result = match name {
            // What a caller sent may be in it: no terminal escapes get through.
            "message" => write!(
                Escaping {
                    inner: &mut self.writer
                },
                "{value:?}"
            ),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                self.writer
                    .write_str(name)
                    .and_then(|()| self.writer.write_char('='))
                    .and_then(|()| write!(self.writer, "{value:?}"))
            }
        };
    }
}

impl VisitOutput<fmt::Result> for PlainFieldsVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainFieldsVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// An error's sources, as tracing-subscriber lists them (`["a", "b"]`, each escaped).
struct Sources<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut current = Some(self.0);
        while let Some(error) = current {
            list.entry(&format_args!("{}", Escaped(error)));
            current = error.source();
        }
        list.finish()
    }
}

/// Something displayed through [`Escaping`].
struct Escaped<'a, T: ?Sized>(&'a T);

impl<T: fmt::Display + ?Sized> fmt::Display for Escaped<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping { inner: f }, "{}", self.0)
    }
}

impl<T: fmt::Display + ?Sized> fmt::Debug for Escaped<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Escapes what a terminal would act on (ESC, BEL, BS, FF, DEL and the C1 controls), as
/// tracing-subscriber's escaper does; a piece with none of them is written whole.
struct Escaping<'a, W: Write + ?Sized> {
    inner: &'a mut W,
}

impl<W: Write + ?Sized> Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // The C1 controls (U+0080-U+009F) are 0xC2 0x80-0x9F in UTF-8.
        let clean = !text
            .bytes()
            .any(|b| matches!(b, 0x07 | 0x08 | 0x0c | 0x1b | 0x7f | 0xc2));
        if clean {
            return self.inner.write_str(text);
        }
        for ch in text.chars() {
            match ch {
                '\x1b' => self.inner.write_str("\\x1b")?,
                '\x07' => self.inner.write_str("\\x07")?,
                '\x08' => self.inner.write_str("\\x08")?,
                '\x0c' => self.inner.write_str("\\x0c")?,
                '\x7f' => self.inner.write_str("\\x7f")?,
                ch if ('\u{80}'..='\u{9f}').contains(&ch) => {
                    write!(self.inner, "\\u{{{:x}}}", ch as u32)?
                }
                ch => self.inner.write_char(ch)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written to it, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the inner \x1b cause")
        }
    }
    impl std::error::Error for Inner {}

    #[derive(Debug)]
    struct Outer(Inner);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer\x07 failure")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn events() {
        let outer = tracing::info_span!("request", trace_id = %"4bf92f35", n = 3, text = "a b");
        let _outer = outer.enter();
        let inner = tracing::info_span!("empty");
        let _inner = inner.enter();
        tracing::info!(
            method = %"POST",
            uri = %"/echo_flow",
            latency_ms = 0.2,
            status = 200u16,
            "finished processing request"
        );
        tracing::warn!(
            server = "py",
            r#type = "x",
            flag = true,
            negative = -5i64,
            big = u128::MAX,
            list = ?vec!["a", "b"],
            "MCP server `{}` is down: {}",
            "py",
            "gone\x1b[31m red \u{9b} é"
        );
        drop(_inner);
        let error = Outer(Inner);
        tracing::error!(
            error = &error as &(dyn std::error::Error + 'static),
            "failed"
        );
        tracing::error!(error = &Inner as &(dyn std::error::Error + 'static));
        drop(_outer);
        tracing::info!(only = 1);
        tracing::debug!("a line with no fields \x0c");
        tracing::trace!(message = "as a field", after = "x");
    }

    fn lines(subscriber: impl Subscriber + Send + Sync + 'static, out: &Captured) -> String {
        tracing::subscriber::with_default(subscriber, events);
        String::from_utf8(out.0.lock().expect("lock").clone()).expect("UTF-8")
    }

    #[test]
    fn lines_are_tracing_subscribers_own_without_colour() {
        let theirs = Captured::default();
        let ours = Captured::default();
        let (a, b) = (theirs.clone(), ours.clone());
        let theirs = lines(
            tracing_subscriber::fmt()
                .with_writer(move || a.clone())
                .with_ansi(false)
                .with_target(false)
                .with_max_level(Level::TRACE)
                .finish(),
            &theirs,
        );
        let ours = lines(
            tracing_subscriber::fmt()
                .with_writer(move || b.clone())
                .with_ansi(false)
                .with_target(false)
                .with_max_level(Level::TRACE)
                .fmt_fields(PlainFields)
                .event_format(PlainLines)
                .finish(),
            &ours,
        );
        let (theirs, ours): (Vec<&str>, Vec<&str>) =
            (theirs.lines().collect(), ours.lines().collect());
        // `trace!` may be compiled out (a static max level): seven lines or eight.
        assert!(theirs.len() >= 7, "{theirs:#?}");
        assert_eq!(theirs.len(), ours.len(), "{theirs:#?}\n{ours:#?}");
        for (theirs, ours) in theirs.iter().zip(&ours) {
            // The time differs; its shape does not.
            let shape = |line: &str| -> String {
                line[..27]
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '0' } else { c })
                    .collect()
            };
            assert_eq!(shape(theirs), shape(ours), "{theirs}\n{ours}");
            assert_eq!(theirs[27..], ours[27..]);
        }
    }

    #[test]
    fn the_date_is_the_calendars() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (1_709_164_799, "2024-02-28T23:59:59."),
            (1_709_251_199, "2024-02-29T23:59:59."),
            (1_796_406_354, "2026-12-04T17:45:54."),
            (4_102_444_800, "2100-01-01T00:00:00."),
            (253_402_300_799, "9999-12-31T23:59:59."),
            (253_402_300_800, "+10000-01-01T00:00:00."),
        ] {
            let mut out = String::new();
            write_second(&mut out, secs).expect("formats");
            assert_eq!(out, text, "{secs}");
        }
    }

    #[test]
    fn what_a_terminal_acts_on_is_escaped_and_the_rest_written_whole() {
        let mut out = String::new();
        write!(Escaping { inner: &mut out }, "plain text, é ° £").expect("writes");
        assert_eq!(out, "plain text, é ° £");
        out.clear();
        write!(
            Escaping { inner: &mut out },
            "a\x1b[31mred\x07\x08\x0c\x7f\u{9b}b"
        )
        .expect("writes");
        assert_eq!(out, "a\\x1b[31mred\\x07\\x08\\x0c\\x7f\\u{9b}b");
    }
}
