//! File descriptors: the daemon's limit, how many are in use, and one kept
//! in reserve.
//!
//! Every guest costs descriptors: its socket, and its encoding session
//! (GStreamer's bus and poll objects, a hardware encoder's device nodes).
//! Running out half-way through starting a session leaves GStreamer
//! objects broken (CRITICAL assertions, a session that never answers), so
//! the daemon checks the headroom before it takes a connection on or starts
//! a session, and refuses with an ERROR that says why. When `accept` itself
//! fails with EMFILE, the reserve descriptor is closed for a moment so that
//! the waiting connection can be accepted, told, and closed, instead of
//! waiting in the backlog unanswered.

use std::fs::File;
use std::io;
use std::sync::Mutex;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors a client may need: its socket and an encoding session
/// (measured: x264enc uses 3 in all; hardware encoders open device nodes).
pub const PER_CLIENT: u64 = 8;
/// Descriptors kept free for everything else (log files, journald, the
/// metrics endpoint, a GStreamer plugin loading a library).
pub const SPARE: u64 = 8;

pub struct Descriptors {
    limit: u64,
    reserve: Mutex<Option<File>>,
    /// The last count, and the descriptors checks let in since.
    estimate: Mutex<(u64, u64)>,
}

impl Descriptors {
    /// Raises the soft limit to the hard one (the kernel's default soft
    /// limit of 1024 is there for select(), which the daemon does not use)
    /// and opens the reserve descriptor. Returns the limits for the log.
    pub fn init() -> (Descriptors, String) {
        let note = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            {
                Ok(()) => format!(
                    "file descriptors: raised the limit from {soft} to {hard} ({} in use)",
                    in_use().unwrap_or(0)
                ),
                Err(e) => {
                    format!("file descriptors: limit {soft} (cannot raise it to {hard}: {e})")
                }
            },
            Ok((soft, _)) => format!(
                "file descriptors: limit {soft} ({} in use)",
                in_use().unwrap_or(0)
            ),
            Err(e) => format!("file descriptors: limit unknown ({e})"),
        };
        let limit = getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(u64::MAX);
        let d = Descriptors {
            limit,
            reserve: Mutex::new(open_reserve().ok()),
            estimate: Mutex::new((0, 0)),
        };
        (d, note)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether `need` more descriptors leave the spare ones free. `true`
    /// when the count is unknown (no /proc or /dev/fd). Counting reads a
    /// directory, so while far from the limit the last count, plus what
    /// the checks since then may have let in, is trusted instead.
    pub fn room_for(&self, need: u64) -> bool {
        let (last, since) = {
            let mut e = self.estimate.lock().unwrap();
            e.1 += need;
            *e
        };
        if last > 0 && last + since + need + SPARE <= self.limit / 2 {
            return true;
        }
        match in_use() {
            Some(n) => {
                *self.estimate.lock().unwrap() = (n as u64, 0);
                n as u64 + need + SPARE <= self.limit
            }
            None => true,
        }
    }

    /// Runs `f` with the reserve descriptor closed (so that one accept
    /// can succeed when the process is out of descriptors), then takes the
    /// reserve back. `None` if there was no reserve to give.
    pub fn with_reserve<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let mut r = self.reserve.lock().unwrap();
        let file = r.take()?;
        drop(file);
        let out = f();
        *r = open_reserve().ok();
        Some(out)
    }
}

fn open_reserve() -> io::Result<File> {
    File::open("/dev/null")
}

/// Descriptors open in this process now.
pub fn in_use() -> Option<usize> {
    for dir in ["/proc/self/fd", "/dev/fd"] {
        if let Ok(d) = std::fs::read_dir(dir) {
            // The directory's own descriptor is counted too: one more is
            // the safe side.
            return Some(d.count());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_given_up_and_taken_back() {
        let (d, note) = Descriptors::init();
        assert!(note.starts_with("file descriptors: "), "{note}");
        assert!(in_use().unwrap() > 3);
        assert_eq!(d.with_reserve(|| 7), Some(7));
        assert!(d.reserve.lock().unwrap().is_some(), "taken back");
        *d.reserve.lock().unwrap() = None;
        assert_eq!(d.with_reserve(|| 7), None, "no reserve to give");
        assert!(d.room_for(1));
        assert!(!d.room_for(d.limit()));
    }
}
