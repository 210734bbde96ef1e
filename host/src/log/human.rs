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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::prelude::*;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// `TIME LEVEL rest` with TIME as `2026-01-02T03:04:05.678Z`.
    fn split(line: &str) -> (&str, &str, &str) {
        let (time, rest) = line.split_at(24);
        let (level, rest) = rest[1..].split_at(5);
        let shape = time.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
        assert!(shape, "{line}");
        (time, level, rest.strip_prefix(' ').expect(line))
    }

    #[test]
    fn lines_keep_their_historical_shape() {
        let out = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(HumanLines)
                .with_writer(out.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("listening on tcp:127.0.0.1:15937");
            let span = tracing::error_span!("conn", conn = 3u64, client = "tcp:1.2.3.4:5#3");
            span.in_scope(|| tracing::warn!("tcp:1.2.3.4:5#3: bad magic"));
            tracing::error!(suppressed = 4u64, "accept failed");
            tracing::debug!("d");
            tracing::trace!("t");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<(&str, &str, &str)> = text.lines().map(split).collect();
        let rest: Vec<(&str, &str)> = lines.iter().map(|(_, l, r)| (*l, *r)).collect();
        assert_eq!(
            rest,
            [
                ("INFO ", "listening on tcp:127.0.0.1:15937"),
                // The span's fields are not repeated on the line.
                ("WARN ", "tcp:1.2.3.4:5#3: bad magic"),
                ("ERROR", "accept failed suppressed=4"),
                ("DEBUG", "d"),
                ("TRACE", "t"),
            ]
        );
    }
}
