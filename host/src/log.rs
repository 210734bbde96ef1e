//! Logging to stderr with a global level. Lines look like
//! `2026-01-02T03:04:05.678Z INFO  tcp:127.0.0.1:40000#3: message`.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let line = format!("{} {} {args}\n", timestamp(), level.label());
    // One write per line so that lines of concurrent threads never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`, without a date crate.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

macro_rules! log_at {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)*))
        }
    };
}

macro_rules! error {
    ($($arg:tt)*) => { log_at!($crate::log::Level::Error, $($arg)*) };
}
macro_rules! warn {
    ($($arg:tt)*) => { log_at!($crate::log::Level::Warn, $($arg)*) };
}
macro_rules! info {
    ($($arg:tt)*) => { log_at!($crate::log::Level::Info, $($arg)*) };
}
macro_rules! debug {
    ($($arg:tt)*) => { log_at!($crate::log::Level::Debug, $($arg)*) };
}
macro_rules! trace {
    ($($arg:tt)*) => { log_at!($crate::log::Level::Trace, $($arg)*) };
}
