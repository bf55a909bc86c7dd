//! The pretty format: tracing-subscriber's own, with `request_id=…` last on
//! every line logged while a request is served (see [`super::request`]).

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct PrettyLines {
    /// The format for a writer without colours, and for one with.
    plain: Format,
    coloured: Format,
}

impl Default for PrettyLines {
    fn default() -> Self {
        PrettyLines {
            plain: Format::default().with_ansi(false),
            coloured: Format::default().with_ansi(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for PrettyLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let format = if writer.has_ansi_escapes() {
            &self.coloured
        } else {
            &self.plain
        };
        let Some(id) = super::request::current() else {
            return format.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        format.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} request_id={id}")
    }
}
