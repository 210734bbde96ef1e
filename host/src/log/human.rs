//! The default line format, unchanged since the hand-written logger:
//! `2026-01-02T03:04:05.678Z INFO  tcp:127.0.0.1:40000#3: connected`.
//!
//! Time (UTC, milliseconds), the level padded to five characters, then the
//! message, which names the connection itself; the connection's span
//! fields are not repeated (they are in the JSON and journald output).
//! Fields of the event other than the message follow as `key=value`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::timestamp;

pub struct HumanLines;

fn label(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN ",
        Level::INFO => "INFO ",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

impl<S, N> FormatEvent<S, N> for HumanLines
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
        timestamp().format_time(&mut writer)?;
        write!(writer, " {} ", label(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
