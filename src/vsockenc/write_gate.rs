//! Keeps the reader thread off a TCP or AF_VSOCK socket while a frame is
//! being written to it.
//!
//! On these sockets sending and receiving take the same per-socket lock
//! (`lock_sock`): a reader woken by an answer in the middle of a
//! multi-megabyte write finds the socket owned by the writer and sleeps
//! again on the lock, the writer then processes the packets that queued up
//! behind it (the answer, and the wake-up of the reader it owes) and, when
//! the reader finally holds the lock for its `recv`, the writer's next
//! `sendmsg` waits for it in turn. Measured on TCP loopback
//! (`scripts/bench_compare.py`, 720p NV12, 4 frames in flight), that
//! ping-pong cost the guest about 1.9x the CPU per frame of one frame in
//! flight, which never reads and writes at the same time.
//!
//! So while a write is in progress the reader waits here, off the socket's
//! wait queues, and the writer lets it go when the write ends. The wait is
//! bounded ([`MAX_DEFER`]): a host that stops reading our frame until we
//! have read its answers (a single-threaded legacy host with a full send
//! buffer) gets its answers read all the same, so the deferral can delay an
//! answer by at most that long and never deadlocks the two ends.
//!
//! Unix sockets need none of this (send and receive take separate locks)
//! and get no gate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// The longest a reader waits for a write to end before it reads anyway.
pub const MAX_DEFER: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct WriteGate {
    /// A write is in progress (read without the mutex on the reader's fast
    /// path).
    writing: AtomicBool,
    /// Writes ended so far: the reader waits for the end of the write in
    /// progress when it came, not for a gap between two writes (which the
    /// next write, following at once, would never leave it).
    ended: AtomicU64,
    /// The reader is waiting in [`WriteGate::wait_for_writer`].
    reader_waiting: Mutex<bool>,
    cv: Condvar,
}

impl WriteGate {
    /// Called by the writer before a write.
    pub fn begin(&self) {
        self.writing.store(true, Ordering::SeqCst);
    }

    /// Called by the writer after a write, whatever its outcome.
    pub fn end(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
        self.writing.store(false, Ordering::SeqCst);
        let waiting = self.reader_waiting.lock();
        if *waiting {
            self.cv.notify_one();
        }
    }

    /// Called by the reader before it touches the socket: returns at once
    /// when no write is in progress, otherwise when it ends or after
    /// `MAX_DEFER`, whichever comes first. Returns whether it waited.
    pub fn wait_for_writer(&self) -> bool {
        let ended = self.ended.load(Ordering::SeqCst);
        if !self.writing.load(Ordering::SeqCst) {
            return false;
        }
        let deadline = Instant::now() + MAX_DEFER;
        let mut waiting = self.reader_waiting.lock();
        *waiting = true;
        // `end` counts and clears `writing` before it takes the mutex, so a
        // write that ends between the loads above and this loop is seen here.
        while self.writing.load(Ordering::SeqCst) && self.ended.load(Ordering::SeqCst) == ended {
            if self.cv.wait_until(&mut waiting, deadline).timed_out() {
                break;
            }
        }
        *waiting = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_reader_passes_at_once_when_nothing_is_written() {
        let g = WriteGate::default();
        let t = Instant::now();
        assert!(!g.wait_for_writer());
        assert!(t.elapsed() < MAX_DEFER);
    }

    #[test]
    fn a_reader_waits_for_the_write_to_end() {
        let g = Arc::new(WriteGate::default());
        g.begin();
        let g2 = g.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            g2.end();
        });
        let t = Instant::now();
        assert!(g.wait_for_writer());
        let waited = t.elapsed();
        writer.join().unwrap();
        assert!(waited >= Duration::from_millis(4), "{waited:?}");
        assert!(!g.writing.load(Ordering::SeqCst));
    }

    #[test]
    fn the_next_write_does_not_hold_the_reader_back_again() {
        let g = Arc::new(WriteGate::default());
        g.begin();
        let g2 = g.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            // One write ends and the next begins before the reader runs.
            let _waiting = g2.reader_waiting.lock();
            g2.ended.fetch_add(1, Ordering::SeqCst);
            g2.cv.notify_one();
        });
        let t = Instant::now();
        assert!(g.wait_for_writer());
        let waited = t.elapsed();
        writer.join().unwrap();
        assert!(waited < MAX_DEFER, "{waited:?}");
    }

    #[test]
    fn a_write_that_does_not_end_holds_the_reader_back_no_longer_than_max_defer() {
        let g = WriteGate::default();
        g.begin();
        let t = Instant::now();
        assert!(g.wait_for_writer());
        let waited = t.elapsed();
        assert!(waited >= MAX_DEFER, "{waited:?}");
        assert!(waited < MAX_DEFER * 10, "{waited:?}");
    }
}
