//! What the element tells the application about the host, without flooding
//! the bus: per-kind rate limits for warnings, with a count of what was
//! held back, and the transitions of the host's health (it stopped
//! answering, it answers again), each reported once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Warnings of one kind let through per window.
const BURST: u32 = 3;
const WINDOW: Duration = Duration::from_secs(10);

/// The kinds of warnings limited separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The host reported an error for a frame (ERROR, ERROR_PTS).
    HostError,
    /// A message from the host was skipped (malformed, empty, wrong
    /// checksum).
    BadMessage,
    /// The connection was lost.
    Lost,
    /// The host refused to serve this guest.
    Refused,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    passed: u32,
    /// Held back since the last one that went out.
    suppressed: u64,
}

/// Per-kind rate limits: at most [`BURST`] warnings of a kind per
/// [`WINDOW`]; the rest are counted (and still logged at debug level by the
/// caller), and the next one let through says how many were held back.
#[derive(Debug, Default)]
pub struct Limiter {
    kinds: HashMap<Kind, Window>,
}

impl Limiter {
    /// Whether a warning of `kind` may go on the bus now: `Some(n)` with the
    /// number held back since the last one that went out, `None` to hold
    /// this one back.
    pub fn admit(&mut self, kind: Kind, now: Instant) -> Option<u64> {
        let w = self.kinds.entry(kind).or_default();
        if w.started
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW)
        {
            w.started = Some(now);
            w.passed = 0;
        }
        if w.passed < BURST {
            w.passed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// " (N similar warnings held back before this one)" when N > 0.
pub fn held_back(n: u64) -> String {
    match n {
        0 => String::new(),
        1 => " (1 similar warning was held back before this one)".into(),
        n => format!(" ({n} similar warnings were held back before this one)"),
    }
}

/// Whether the host answers, as the frames show it. Frames are compared by
/// wire PTS, which grows with every frame sent: a frame that times out after
/// a later one was answered was lost, but the host is answering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    silent: bool,
    /// The latest frame answered.
    answered_upto: Option<i64>,
}

impl Health {
    /// The frame with `wire_pts` timed out: true when this is news (the
    /// host was taken to be answering, and no later frame was answered).
    pub fn timed_out(&mut self, wire_pts: i64) -> bool {
        if self.answered_upto.is_some_and(|a| a > wire_pts) {
            return false;
        }
        !std::mem::replace(&mut self.silent, true)
    }

    /// The frame with `wire_pts` was answered: true when the host was
    /// silent before.
    pub fn answered(&mut self, wire_pts: i64) -> bool {
        self.answered_upto = Some(self.answered_upto.map_or(wire_pts, |a| a.max(wire_pts)));
        std::mem::replace(&mut self.silent, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_a_count_of_what_was_held_back() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.admit(Kind::BadMessage, t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(l.admit(Kind::BadMessage, t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(
            l.admit(Kind::HostError, t0),
            Some(0),
            "kinds are limited separately"
        );
        assert_eq!(l.admit(Kind::BadMessage, t0 + WINDOW), Some(1000));
        assert_eq!(l.admit(Kind::BadMessage, t0 + WINDOW), Some(0));
    }

    #[test]
    fn health_reports_each_transition_once() {
        let mut h = Health::default();
        assert!(!h.answered(0), "a first answer is no recovery");
        assert!(h.timed_out(1));
        assert!(!h.timed_out(2), "already silent");
        assert!(h.answered(3));
        assert!(!h.answered(4));
        // Frames sent before the last answered one that time out now were
        // lost, but the host answers.
        assert!(!h.timed_out(2));
        assert!(h.timed_out(5));
        let mut h = Health::default();
        assert!(h.timed_out(0), "a host that never answered is news too");
    }

    #[test]
    fn held_back_reads_well() {
        assert_eq!(held_back(0), "");
        assert!(held_back(1).contains("1 similar warning was"));
        assert!(held_back(7).contains("7 similar warnings were"));
    }
}
