//! Logging: every module logs through `tracing`; one output, chosen at
//! start, writes the lines.
//!
//! * `human` (default on a terminal or a pipe): one line per event on
//!   stderr, `TIME LEVEL message`, as the daemon always wrote them.
//! * `json`: one JSON object per line on stderr, with the event's target
//!   and the fields of its connection's span (see [`crate::peer`]).
//! * `journald`: native journal entries with the span fields as
//!   `VSOCKENC_*` journal fields. `auto` picks it when stderr is the
//!   journal stream systemd set up for the service (`JOURNAL_STREAM` names
//!   stderr's device and inode), so a daemon started from a shell inside a
//!   unit's environment does not send its lines elsewhere.
//!
//! What is written is decided by `--log-level` and `--log-filter`
//! (RUST_LOG-style directives, see `--help`), in that order: a directive of
//! the filter overrides the level where both apply.

mod human;
pub mod ratelimit;

use std::os::fd::AsFd;
use std::time::Duration;

use ratelimit::RateLimit;

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::time::ChronoUtc;
use tracing_subscriber::prelude::*;

/// Refused and evicted connections, all together: a refused guest's element
/// reconnects at once and then periodically, a hostile one in a loop.
pub static REFUSALS: RateLimit = RateLimit::new(5, Duration::from_secs(10));

/// Running out of file descriptors: one ERROR line per refused connection
/// would repeat as fast as connections come.
pub static DESCRIPTOR_ERRORS: RateLimit = RateLimit::new(3, Duration::from_secs(10));

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<Level> for LevelFilter {
    fn from(l: Level) -> LevelFilter {
        match l {
            Level::Error => LevelFilter::ERROR,
            Level::Warn => LevelFilter::WARN,
            Level::Info => LevelFilter::INFO,
            Level::Debug => LevelFilter::DEBUG,
            Level::Trace => LevelFilter::TRACE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// journald when stderr is the service's journal stream, else human.
    Auto,
    Human,
    Json,
    Journald,
}

/// Journal fields of our own carry this prefix (`VSOCKENC_CONN=3`), so
/// they never collide with journald's (`_PID`, `PRIORITY`).
pub const JOURNAL_FIELD_PREFIX: &str = "VSOCKENC";

/// UTC with milliseconds, the format the daemon's lines always had.
fn timestamp() -> ChronoUtc {
    ChronoUtc::new("%Y-%m-%dT%H:%M:%S%.3fZ".into())
}

/// The filter for `--log-level` refined by `--log-filter`; an error names
/// the directive that does not parse.
pub fn filter(level: Level, directives: Option<&str>) -> Result<EnvFilter, String> {
    let directives = directives.unwrap_or("").trim();
    // A bare level among the directives replaces --log-level.
    let has_level = directives
        .split(',')
        .any(|d| d.trim().parse::<LevelFilter>().is_ok());
    let all = match (directives.is_empty(), has_level) {
        (true, _) => LevelFilter::from(level).to_string(),
        (false, true) => directives.to_string(),
        (false, false) => format!("{},{directives}", LevelFilter::from(level)),
    };
    EnvFilter::builder()
        .parse(&all)
        .map_err(|e| format!("{e} (expected comma-separated LEVEL, TARGET=LEVEL or [SPAN{{FIELD=VALUE}}]=LEVEL directives)"))
}

/// Installs the global subscriber. Returns a note to log once logging
/// works (why journald was not used), if any.
pub fn init(filter: EnvFilter, format: Format) -> Option<String> {
    let (layer, note) = match format {
        Format::Human => (human_layer(), None),
        Format::Json => (json_layer(), None),
        Format::Auto if !stderr_is_journal() => (human_layer(), None),
        Format::Auto | Format::Journald => match journald_layer() {
            Ok(l) => (l, None),
            Err(e) => (
                human_layer(),
                Some(format!(
                    "cannot log to journald ({e}); writing lines to stderr instead"
                )),
            ),
        },
    };
    // Fails only if a subscriber is already installed (never, in main).
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
    note
}

type BoxedLayer = Box<dyn tracing_subscriber::Layer<Layered> + Send + Sync>;
type Layered = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;

fn human_layer() -> BoxedLayer {
    tracing_subscriber::fmt::layer()
        .event_format(human::HumanLines)
        .with_writer(std::io::stderr)
        .boxed()
}

fn json_layer() -> BoxedLayer {
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_timer(timestamp())
        .with_writer(std::io::stderr)
        .boxed()
}

fn journald_layer() -> std::io::Result<BoxedLayer> {
    use tracing_journald::{Priority, PriorityMappings};
    // systemd's own daemons log routine lines as "info", not "notice".
    let priorities = PriorityMappings {
        info: Priority::Informational,
        debug: Priority::Debug,
        ..PriorityMappings::new()
    };
    Ok(tracing_journald::layer()?
        .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into()))
        .with_syslog_identifier("vsockenc-host".into())
        .with_priority_mappings(priorities)
        .boxed())
}

/// Whether stderr is the stream systemd connected to the journal for this
/// service (see systemd.exec(5), `$JOURNAL_STREAM`).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    // dev_t and ino_t are u64 on Linux, other widths elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let (dev, ino) = (st.st_dev as u64, st.st_ino as u64);
    names_stream(&value.to_string_lossy(), dev, ino)
}

/// Whether a `JOURNAL_STREAM` value (`DEVICE:INODE`) names this file.
fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235));
        assert!(!names_stream("9:1234", 8, 1234));
        assert!(!names_stream("", 8, 1234));
        assert!(!names_stream("8", 8, 1234));
        assert!(!names_stream("x:1234", 8, 1234));
    }

    #[test]
    fn the_filter_refines_the_level() {
        let f = filter(Level::Info, Some("vsockenc_host::client=debug")).unwrap();
        let s = f.to_string();
        assert!(s.contains("info"), "{s}");
        assert!(s.contains("vsockenc_host::client=debug"), "{s}");
        assert_eq!(f.max_level_hint(), Some(LevelFilter::DEBUG));
        // A bare level in the filter replaces --log-level.
        let f = filter(Level::Info, Some("warn")).unwrap();
        assert_eq!(f.max_level_hint(), Some(LevelFilter::WARN));
        let f = filter(Level::Debug, None).unwrap();
        assert_eq!(f.max_level_hint(), Some(LevelFilter::DEBUG));
        let e = filter(Level::Info, Some("[conn{conn=3}=debug")).unwrap_err();
        assert!(e.contains("directives"), "{e}");
    }
}
