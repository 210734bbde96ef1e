//! Rate limits for log lines that a peer can trigger at will: one per bad
//! message, per refused or failed connection. A hostile or broken guest must
//! not be able to fill the host's disk or drown other guests' lines.
//!
//! A [`RateLimit`] admits `burst` lines per `window`; lines past that are
//! counted, not written, and the first line admitted once the window has
//! passed carries the count (`[N similar lines suppressed in the last Ts]`).
//! The `*_limited!` macros log through one and send refused lines to the
//! debug level instead, so `--log-level debug` still shows every line.
//!
//! A limiter is cheap (a mutex and a few words) and `const`-constructible:
//! a `static` for a daemon-wide budget, a field for a per-connection one.
//! A count is reported only with the next admitted line: a burst that is
//! never followed by another line leaves its count unreported (the lines
//! are at debug level all the same).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fixed-window budget of log lines.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// When the current window opened; `None` before the first line.
    start: Option<Instant>,
    /// Lines admitted in the current window.
    admitted: u32,
    /// Lines refused since the last admitted one was reported.
    suppressed: u64,
    /// When the first of those refused lines came.
    first_suppressed: Option<Instant>,
}

/// The answer for one line that may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Lines refused since the previous admitted line (usually 0).
    pub suppressed: u64,
    /// Time from the first of those refused lines to this one.
    pub over: Duration,
}

impl Admitted {
    /// What the admitted line carries about the lines held back before it:
    /// `" [N similar lines{about} suppressed in the last Ts]"`, or "" when
    /// none were.
    pub fn note(&self, about: &str) -> String {
        if self.suppressed == 0 {
            return String::new();
        }
        format!(
            " [{} similar line{}{about} suppressed in the last {}s]",
            self.suppressed,
            if self.suppressed == 1 { "" } else { "s" },
            self.over.as_secs_f64().ceil() as u64
        )
    }
}

impl RateLimit {
    /// At most `burst` lines every `window` (a `burst` of 0 admits none).
    pub const fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            state: Mutex::new(Window {
                start: None,
                admitted: 0,
                suppressed: 0,
                first_suppressed: None,
            }),
        }
    }

    /// Whether a line may be written now; `None`: count it and stay quiet.
    pub fn admit(&self) -> Option<Admitted> {
        self.admit_at(Instant::now())
    }

    /// [`admit`](Self::admit) at a given time (for tests).
    pub fn admit_at(&self, now: Instant) -> Option<Admitted> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if expired {
            w.start = Some(now);
            w.admitted = 0;
        }
        if w.admitted >= self.burst {
            w.suppressed += 1;
            w.first_suppressed.get_or_insert(now);
            return None;
        }
        w.admitted += 1;
        let over = w
            .first_suppressed
            .take()
            .map_or(Duration::ZERO, |f| now.saturating_duration_since(f));
        Some(Admitted {
            suppressed: std::mem::take(&mut w.suppressed),
            over,
        })
    }
}

impl RateLimit {
    /// Gives back a line `admit` let through but that was not written
    /// after all (another limit refused it, and counts it): its place in
    /// the window, and the count it was to carry.
    pub fn refund(&self, a: Admitted) {
        if a.suppressed == 0 {
            let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
            w.admitted = w.admitted.saturating_sub(1);
            return;
        }
        self.refund_at(a, Instant::now())
    }

    fn refund_at(&self, a: Admitted, now: Instant) {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        w.admitted = w.admitted.saturating_sub(1);
        w.suppressed += a.suppressed;
        let first = now.checked_sub(a.over).unwrap_or(now);
        w.first_suppressed = Some(w.first_suppressed.map_or(first, |f| f.min(first)));
    }
}

/// The limits a line about one connection passes: the connection's own
/// (one guest cannot use up the daemon-wide budget alone) and the
/// daemon-wide one (many guests together cannot flood the log).
pub struct ConnLimits {
    pub conn: RateLimit,
    pub all: &'static RateLimit,
}

/// What the lines of one connection may use: 10 lines a minute.
pub const CONN_BURST: u32 = 10;
pub const CONN_WINDOW: Duration = Duration::from_secs(60);

impl ConnLimits {
    pub const fn new(all: &'static RateLimit) -> ConnLimits {
        ConnLimits {
            conn: RateLimit::new(CONN_BURST, CONN_WINDOW),
            all,
        }
    }

    /// Whether a line may be written now, and the note of what both
    /// limits held back before it ("" when nothing was).
    pub fn admit(&self) -> Option<String> {
        let c = self.conn.admit()?;
        let Some(a) = self.all.admit() else {
            self.conn.refund(c);
            return None;
        };
        Some(c.note(" about this connection") + &a.note(""))
    }
}

/// Logs `$level` through a connection's [`ConnLimits`]; a refused line
/// goes to the debug level instead.
#[macro_export]
macro_rules! log_conn_limited {
    ($limits:expr, $level:expr, $($arg:tt)+) => {
        match $crate::log::ratelimit::ConnLimits::admit(&$limits) {
            Some(note) if note.is_empty() => ::tracing::event!($level, $($arg)+),
            Some(note) => ::tracing::event!($level, "{}{}", format_args!($($arg)+), note),
            None => ::tracing::debug!($($arg)+),
        }
    };
}

/// `warn!` through a connection's [`ConnLimits`].
#[macro_export]
macro_rules! warn_conn {
    ($limits:expr, $($arg:tt)+) => {
        $crate::log_conn_limited!($limits, ::tracing::Level::WARN, $($arg)+)
    };
}

/// Logs `$level` through the [`RateLimit`] `$limit`; a refused line is
/// logged at debug level instead. The arguments are a format string and
/// its arguments (no `key = value` fields).
#[macro_export]
macro_rules! log_limited {
    ($limit:expr, $level:expr, $($arg:tt)+) => {
        match $crate::log::ratelimit::RateLimit::admit(&$limit) {
            Some(a) if a.suppressed == 0 => ::tracing::event!($level, $($arg)+),
            Some(a) => ::tracing::event!(
                $level,
                suppressed = a.suppressed,
                "{}{}",
                format_args!($($arg)+),
                a.note(""),
            ),
            None => ::tracing::debug!($($arg)+),
        }
    };
}

/// `warn!` through a [`RateLimit`]; see [`log_limited!`](crate::log_limited).
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        $crate::log_limited!($limit, ::tracing::Level::WARN, $($arg)+)
    };
}

/// `error!` through a [`RateLimit`]; see [`log_limited!`](crate::log_limited).
#[macro_export]
macro_rules! error_limited {
    ($limit:expr, $($arg:tt)+) => {
        $crate::log_limited!($limit, ::tracing::Level::ERROR, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn admitted(n: u64, over: Duration) -> Option<Admitted> {
        Some(Admitted {
            suppressed: n,
            over,
        })
    }

    #[test]
    fn admits_a_burst_per_window_then_reports_what_it_held_back() {
        let l = RateLimit::new(3, 10 * SEC);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(l.admit_at(t0 + i * SEC), admitted(0, Duration::ZERO));
        }
        for i in 3..10 {
            assert_eq!(l.admit_at(t0 + i * SEC), None, "line at {i}s");
        }
        // The window (from t0) reopens at 10 s: the first line carries the
        // 7 held back, counted from the first of them (3 s).
        assert_eq!(l.admit_at(t0 + 10 * SEC), admitted(7, 7 * SEC));
        assert_eq!(l.admit_at(t0 + 11 * SEC), admitted(0, Duration::ZERO));
        assert_eq!(l.admit_at(t0 + 12 * SEC), admitted(0, Duration::ZERO));
        assert_eq!(l.admit_at(t0 + 13 * SEC), None);
    }

    #[test]
    fn a_quiet_limiter_never_suppresses() {
        let l = RateLimit::new(1, SEC);
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(l.admit_at(t0 + i * SEC), admitted(0, Duration::ZERO));
        }
    }

    #[test]
    fn the_window_opens_at_the_first_line_after_a_pause() {
        let l = RateLimit::new(2, 10 * SEC);
        let t0 = Instant::now();
        assert!(l.admit_at(t0).is_some());
        // Long after the first window: a fresh window starts at 100 s, so
        // 101 s and 109 s fall in it.
        assert!(l.admit_at(t0 + 100 * SEC).is_some());
        assert!(l.admit_at(t0 + 101 * SEC).is_some());
        assert_eq!(l.admit_at(t0 + 109 * SEC), None);
        assert_eq!(l.admit_at(t0 + 110 * SEC), admitted(1, SEC));
    }

    #[test]
    fn a_zero_burst_admits_nothing() {
        let l = RateLimit::new(0, SEC);
        let t0 = Instant::now();
        assert_eq!(l.admit_at(t0), None);
        assert_eq!(l.admit_at(t0 + 5 * SEC), None);
    }

    #[test]
    fn a_connection_and_the_daemon_both_limit_and_both_report() {
        static ALL: RateLimit = RateLimit::new(3, Duration::from_secs(3600));
        let a = ConnLimits::new(&ALL);
        let b = ConnLimits::new(&ALL);
        // One connection alone uses at most its own burst.
        let written = (0..50).filter(|_| a.admit().is_some()).count();
        assert_eq!(written, 3, "the daemon-wide 3 come first");
        assert!(b.admit().is_none(), "the daemon-wide budget is used up");
        // A line refused daemon-wide is counted there, and leaves the
        // connection's own budget untouched.
        assert_eq!(
            b.conn.admit_at(Instant::now()).map(|x| x.suppressed),
            Some(0)
        );
        let later = Instant::now() + Duration::from_secs(3601);
        assert_eq!(ALL.admit_at(later).map(|x| x.suppressed), Some(48));
    }

    #[test]
    fn a_connection_line_carries_the_count_it_held_back() {
        static ALL: RateLimit = RateLimit::new(1000, Duration::from_secs(3600));
        let c = ConnLimits::new(&ALL);
        let t0 = Instant::now();
        for _ in 0..CONN_BURST {
            assert_eq!(c.conn.admit_at(t0).map(|x| x.suppressed), Some(0));
        }
        for _ in 0..5 {
            assert!(c.conn.admit_at(t0).is_none());
        }
        let next = c.conn.admit_at(t0 + CONN_WINDOW).unwrap();
        assert_eq!(next.suppressed, 5);
    }

    #[test]
    fn threads_share_one_budget() {
        static L: RateLimit = RateLimit::new(10, Duration::from_secs(3600));
        let admitted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..50).filter(|_| L.admit().is_some()).count()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 10);
    }
}
