//! JSON lines, written straight into the line's buffer.
//!
//! The same lines as tracing-subscriber's own JSON format with
//! `flatten_event(true)`: `timestamp`, `level`, the event's fields, `target`,
//! and, inside a span, `span` (the current one) and `spans` (root first),
//! where a request being served ([`super::request`]) is the outermost span.
//! That format sends every value through serde into a map, checks each
//! chunk it writes for UTF-8, and keeps a span's fields as a JSON object
//! that it parses again for every line logged inside the span: about a
//! tenth of the server's CPU on a request as cheap as the JWKS. Here values
//! are escaped as they are written, and a span keeps its fields as the text
//! that goes between the braces (in the order they were recorded, where the
//! parsed object had them sorted by name).

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The event format: one JSON object per line.
pub struct JsonLines;

/// A span's fields as `"name":value` pairs, comma-separated, no braces.
pub struct JsonFieldList;

impl<S> FormatEvent<S, JsonFieldList> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFieldList>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields::new(&mut writer, false);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        let leaf = ctx.lookup_current();
        let request = super::request::with_id(|id| -> fmt::Result {
            writer.write_str(",\"span\":")?;
            match &current {
                Some(span) => span_object(&mut writer, span)?,
                None => request_object(&mut writer, id)?,
            }
            writer.write_str(",\"spans\":[")?;
            request_object(&mut writer, id)?;
            spans(&mut writer, leaf.as_ref(), true)
        });
        match (request, current) {
            (Some(written), _) => written?,
            (None, Some(span)) => {
                writer.write_str(",\"span\":")?;
                span_object(&mut writer, &span)?;
                writer.write_str(",\"spans\":[")?;
                spans(&mut writer, leaf.as_ref(), false)?;
            }
            (None, None) => {}
        }
        writer.write_str("}\n")
    }
}

impl<'w> FormatFields<'w> for JsonFieldList {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Fields::new(&mut writer, true);
        fields.record(&mut visitor);
        visitor.result
    }

    /// Fields recorded after the span started follow the others.
    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &Record<'_>) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = Fields::new(&mut writer, first);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Now, as tracing-subscriber's `SystemTime` writes it (for example
/// `2026-11-26T22:05:16.754914Z`); the text down to the second is made once
/// a second per thread.
fn timestamp(out: &mut Writer<'_>) -> fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let written = SECOND.try_with(|second| {
        let Ok(mut second) = second.try_borrow_mut() else {
            return SystemTime.format_time(out);
        };
        let (cached, text) = &mut *second;
        if *cached != now.as_secs() {
            *cached = now.as_secs();
            *text = crate::rfc3339(i64::try_from(*cached).unwrap_or(i64::MAX));
            text.pop(); // the `Z`
        }
        out.write_str(text)?;
        let mut fraction = *b".000000Z";
        let mut micros = now.subsec_micros();
        for digit in fraction[1..7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
    });
    // This thread is being torn down.
    written.unwrap_or_else(|_| SystemTime.format_time(out))
}

/// The entered spans from the root, each after a comma if `after`, and the
/// closing `]`. Like tracing-subscriber: the entered spans, whatever the
/// event's explicit parent.
fn spans<S>(out: &mut Writer<'_>, leaf: Option<&SpanRef<'_, S>>, after: bool) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
{
    if let Some(leaf) = leaf {
        for (n, span) in leaf.scope().from_root().enumerate() {
            if after || n > 0 {
                out.write_char(',')?;
            }
            span_object(out, &span)?;
        }
    }
    out.write_char(']')
}

/// The request being served, as the outermost span: `{"request_id":…,"name":"request"}`.
fn request_object(out: &mut Writer<'_>, id: &str) -> fmt::Result {
    out.write_str("{\"request_id\":")?;
    string(out, id)?;
    out.write_str(",\"name\":\"request\"}")
}

/// `{fields…,"name":"…"}` for one span.
fn span_object<S>(out: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
{
    out.write_char('{')?;
    let extensions = span.extensions();
    if let Some(fields) = extensions.get::<FormattedFields<JsonFieldList>>()
        && !fields.fields.is_empty()
    {
        out.write_str(&fields.fields)?;
        out.write_char(',')?;
    }
    out.write_str("\"name\":")?;
    string(out, span.metadata().name())?;
    out.write_char('}')
}

/// Writes each field as `,"name":value` (the first without its comma),
/// valued as tracing-serde values them: numbers and booleans as such, a
/// non-finite float as `null`, anything else as the string of its `Debug`
/// (a `%` field's is its `Display`).
struct Fields<'a, W: ?Sized> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<'a, W: fmt::Write + ?Sized> Fields<'a, W> {
    fn new(out: &'a mut W, first: bool) -> Self {
        Fields {
            out,
            first,
            result: Ok(()),
        }
    }

    /// Writes one field unless an earlier one failed.
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.write_entry(field, value);
        }
    }

    fn write_entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.out.write_char(',')?;
        }
        string(self.out, field.name())?;
        self.out.write_char(':')?;
        value(self.out)
    }
}

impl<W: fmt::Write + ?Sized> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| string(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |out| {
            if value.is_finite() {
                out.write_str(ryu::Buffer::new().format_finite(value))
            } else {
                out.write_str("null")
            }
        });
    }
}

/// `s` as a JSON string.
fn string<W: fmt::Write + ?Sized>(out: &mut W, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(s)?;
    out.write_char('"')
}

/// Escapes what passes through for the inside of a JSON string, as
/// serde_json does: `"`, `\` and the control characters; the rest as it is.
struct Escaped<'a, W: ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            // Every byte escaped is ASCII, so `i` is a character boundary.
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use tracing::{info, info_span, warn};

    use super::super::testing::capture;
    use super::*;

    /// Events of every shape: each kind of value, awkward text, nested
    /// spans, a field recorded late, an explicit parent.
    fn log_everything() {
        let text = "quote \" backslash \\ newline \n tab \t bell \u{7} escape \u{1b} del \u{7f} é 😀";
        info!("plain");
        warn!(
            s = text,
            i = -5i64,
            u = 7u64,
            b = true,
            f = 0.1 + 0.2,
            small = 3.361e-3,
            nan = f64::NAN,
            big = 1i128 << 100,
            d = ?vec!["a\"b"],
            disp = %"x\ty",
            "formatted {} {text:?}",
            42
        );
        let error = std::io::Error::other("boom \"quoted\"");
        let outer = info_span!("outer", a = "1", n = 3);
        let _outer = outer.enter();
        info!("in one span");
        let inner = info_span!("inner", client_id = "c\"", late = tracing::field::Empty);
        inner.record("late", "recorded later");
        let _inner = inner.enter();
        info!(
            error = &error as &(dyn std::error::Error + 'static),
            "in two spans"
        );
        info!(parent: &outer, "explicit parent");
        let bare = info_span!("bare");
        let _bare = bare.enter();
        info!(status = 200u16, "no fields on the span");
    }

    fn without_timestamp(line: &str) -> (serde_json::Value, String) {
        let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
        let timestamp = value
            .as_object_mut()
            .unwrap()
            .remove("timestamp")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        (value, timestamp)
    }

    #[test]
    fn the_timestamp_is_written_as_tracing_subscriber_writes_it() {
        // Taken within a minute of each other, bar bad luck at a boundary.
        for _ in 0..3 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            timestamp(&mut Writer::new(&mut ours)).unwrap();
            SystemTime.format_time(&mut Writer::new(&mut theirs)).unwrap();
            assert_eq!(ours.len(), "2026-11-26T22:05:16.754914Z".len(), "{ours}");
            assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
            if ours[..16] == theirs[..16] {
                return;
            }
        }
        panic!("our timestamps and tracing-subscriber's disagree");
    }

    /// The lines `log` logs in our format.
    fn ours(log: impl FnOnce()) -> Vec<String> {
        let subscriber = |buffer| {
            tracing_subscriber::fmt()
                .with_writer(buffer)
                .fmt_fields(JsonFieldList)
                .event_format(JsonLines)
                .finish()
        };
        capture(subscriber, log)
    }

    /// The lines `log` logs in tracing-subscriber's JSON format.
    fn theirs(log: impl FnOnce()) -> Vec<String> {
        let subscriber = |buffer| {
            tracing_subscriber::fmt()
                .with_writer(buffer)
                .json()
                .flatten_event(true)
                .finish()
        };
        capture(subscriber, log)
    }

    /// A line logged while a request is served reads as if inside a span
    /// `request` with the field `request_id`, as it was when that was a span.
    #[test]
    fn a_request_reads_as_the_outermost_span() {
        fn log(in_request: bool) {
            let request = in_request.then(|| info_span!("request", request_id = "r-1"));
            let _request = request.as_ref().map(|span| span.enter());
            info!(n = 1, "plain");
            let inner = info_span!("inner", client_id = "c");
            inner.in_scope(|| warn!(n = 2, "nested"));
        }
        let ours = ours(|| super::super::request::run_for(Some("r-1".into()), || log(false)));
        let theirs = theirs(|| log(true));
        assert_eq!(ours.len(), 2);
        for (mine, reference) in ours.iter().zip(&theirs) {
            assert_eq!(
                without_timestamp(mine).0,
                without_timestamp(reference).0,
                "\n ours: {mine}\n theirs: {reference}"
            );
        }
        assert!(
            ours[0].contains(r#""span":{"request_id":"r-1","name":"request"}"#),
            "{}",
            ours[0]
        );
    }

    #[test]
    fn lines_say_what_tracing_subscribers_json_lines_say() {
        let (ours, theirs) = (ours(log_everything), theirs(log_everything));
        assert_eq!(ours.len(), 6);
        assert_eq!(ours.len(), theirs.len());
        for (mine, reference) in ours.iter().zip(&theirs) {
            let (mine_value, mine_time) = without_timestamp(mine);
            let (reference_value, reference_time) = without_timestamp(reference);
            assert_eq!(
                mine_value, reference_value,
                "\n ours: {mine}\n theirs: {reference}"
            );
            assert_eq!(
                mine_time.len(),
                reference_time.len(),
                "{mine_time} against {reference_time}"
            );
            assert!(
                mine_time.ends_with('Z') && mine_time.as_bytes()[10] == b'T',
                "{mine_time}"
            );
            // The same keys in the same order, timestamp first.
            let keys = |line: &str| -> Vec<String> {
                let top: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
                let mut keys: Vec<(usize, String)> = top
                    .keys()
                    .map(|k| (line.find(&format!("\"{k}\":")).unwrap(), k.clone()))
                    .collect();
                keys.sort();
                keys.into_iter().map(|(_, k)| k).collect()
            };
            assert_eq!(keys(mine), keys(reference));
            assert!(mine.starts_with("{\"timestamp\":\""), "{mine}");
        }
        // Spot checks that do not lean on the reference.
        assert!(ours[1].contains(r#""nan":null"#), "{}", ours[1]);
        assert!(ours[1].contains(r#""small":0.003361"#), "{}", ours[1]);
        assert!(
            ours[1].contains(r#"bell \u0007 escape \u001b del "#),
            "{}",
            ours[1]
        );
        assert!(
            ours[3].contains(r#""span":{"client_id":"c\"","late":"recorded later","name":"inner"}"#),
            "{}",
            ours[3]
        );
    }
}
