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

#[cfg(test)]
mod tests {
    use tracing::{info, info_span};

    use super::*;
    use crate::telemetry::testing::capture;

    /// The lines `log` logs through `format`, without their timestamps.
    fn lines<F>(format: F, log: impl FnOnce()) -> Vec<String>
    where
        F: FormatEvent<tracing_subscriber::Registry, tracing_subscriber::fmt::format::DefaultFields>
            + Send
            + Sync
            + 'static,
    {
        let subscriber = |buffer| {
            tracing_subscriber::fmt()
                .with_writer(buffer)
                .with_ansi(false)
                .event_format(format)
                .finish()
        };
        // Past the timestamp, which differs between runs.
        capture(subscriber, log)
            .iter()
            .map(|l| l.split_once(' ').unwrap().1.to_owned())
            .collect()
    }

    #[test]
    fn a_line_logged_for_a_request_ends_with_its_id_and_is_otherwise_tracing_subscribers() {
        let log = || {
            info!(n = 1, "plain");
            info_span!("inner", client_id = "c").in_scope(|| info!("nested"));
        };
        let theirs = lines(Format::default().with_ansi(false), log);
        let ours = lines(PrettyLines::default(), log);
        assert_eq!(ours, theirs, "outside a request, the same lines");
        let served = lines(PrettyLines::default(), || {
            crate::telemetry::request::run_for(Some("r-1".into()), log)
        });
        assert_eq!(served.len(), 2);
        for (mine, reference) in served.iter().zip(&theirs) {
            assert_eq!(mine, &format!("{reference} request_id=r-1"));
        }
    }
}
