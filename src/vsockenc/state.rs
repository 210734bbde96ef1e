//! The one state mutex of a running element and the condition variables its
//! waiters sleep on.
//!
//! # Threads
//!
//! A running element has four kinds of threads:
//!
//! * the **streaming thread** (upstream's, holding the encoder's stream
//!   lock) runs `handle_frame`, `set_format` and `finish`. It sends frames
//!   and records them in the pending table ([`super::pending`]). It never
//!   finishes a frame. When it must wait (for room under `max-in-flight`,
//!   for the frames in flight to leave before new caps or EOS) it releases
//!   the stream lock first ([`super::stream_lock`]), so the output task can
//!   finish frames meanwhile;
//! * the **output task** ([`super::output`]), a task on the encoder's src
//!   pad, started when the pads are activated and after every flush,
//!   stopped on flush-start and before deactivation. It is the only thread
//!   that finishes frames: it pops the frames whose fate is known, in input
//!   order, and calls `finish_frame` for each (which takes the stream lock
//!   itself), never holding this mutex while it does;
//! * one **reader thread** per connection ([`super::receiver`]) completes
//!   table entries (a response, an ERROR, a lost connection) and reports
//!   events. It never takes the stream lock;
//! * the **link thread** ([`super::link`]) connects again after a loss,
//!   at the scheduled time, and sends keep-alive PINGs.
//!
//! # The rule
//!
//! Everything a waiter decides on lives in [`State`], behind one mutex:
//! stop, flushing, the stored flow result, the reconnect schedule, the
//! current connection and the frames (ready or not). Each waiter checks its
//! condition and goes to sleep on its condvar without releasing the mutex in
//! between, and every change of that state is made under the mutex and
//! followed by a notify of the condvars whose waiters care. A wake-up can
//! therefore never be lost: a notifier needs the mutex, which the waiter
//! only gives up by sleeping.
//!
//! There is one condvar per kind of sleeper, so a completion wakes only who
//! can act on it:
//!
//! * `output`: the output task. Notified when a frame's fate is known, on
//!   stop and flush.
//! * `streaming`: `handle_frame`, `set_format` and `finish`. Notified when
//!   the output task has finished frames (room under `max-in-flight`, an
//!   emptier table), on DRAIN_DONE, answers to the HELLO and to profile
//!   requests, stop, flush and flow errors. Not when a response completes
//!   a frame: that changes nothing a streaming waiter decides on until the
//!   frame is finished.
//! * `link`: the link thread. Notified when a reconnect is scheduled and
//!   on stop.
//!
//! # Lock order
//!
//! The stream lock (when held at all) comes before this mutex: nobody takes
//! the stream lock while holding this mutex, and nobody holds this mutex
//! across `finish_frame` or a socket write. The writer mutex of a
//! connection and its negotiation state are leaves: nothing else is locked
//! while they are held, except that the sender reads the negotiation state
//! before it writes.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::connection::Connection;
use super::pending::Table;
use super::profile::Label;
use super::report::Health;

/// What every waiter decides on. See the module doc.
pub struct State {
    /// Frames between `handle_frame` and `finish_frame`, and the counters.
    pub table: Table,
    /// The element is stopping: every wait ends, nothing new starts.
    pub stop: bool,
    /// Between flush-start and flush-stop.
    pub flushing: bool,
    /// A result found off the streaming thread (a downstream flow error, a
    /// lost connection without `reconnect`), returned by the next
    /// `handle_frame`.
    flow: Result<gst::FlowSuccess, gst::FlowError>,
    /// When the link thread should connect next (None: not scheduled).
    pub next_connect: Option<Instant>,
    /// The current connection, usable or not.
    pub link: Option<Arc<Connection>>,
    /// When the current (or last) connection was made (None: never). A
    /// connection lost sooner than `reconnect-interval` after it was made
    /// does not get an immediate retry.
    pub connected_at: Option<Instant>,
    /// Frames the output task has popped and not finished yet: the table
    /// is only really empty when this is 0 too.
    pub finishing: usize,
    /// While the output task sleeps: until when (`Some(None)`: until
    /// notified). A frame sent with an earlier deadline must wake it, or its
    /// timeout would not be seen.
    pub output_sleep: Option<Option<Instant>>,
    /// Latency reported to the pipeline: (min, max).
    pub latency: Option<(gst::ClockTime, gst::ClockTime)>,
    /// Whether the host answers (for the one warning when it stops).
    pub health: Health,
    /// The profile and level the current output caps state.
    pub label: Label,
}

impl Default for State {
    fn default() -> Self {
        State {
            table: Table::default(),
            stop: false,
            flushing: false,
            flow: Ok(gst::FlowSuccess::Ok),
            next_connect: None,
            link: None,
            connected_at: None,
            finishing: 0,
            output_sleep: None,
            latency: None,
            health: Health::default(),
            label: Label::default(),
        }
    }
}

impl State {
    /// Stores a flow result; a fatal error sticks until the element is
    /// restarted.
    pub fn set_flow(&mut self, r: Result<gst::FlowSuccess, gst::FlowError>) {
        if self.flow != Err(gst::FlowError::Error) {
            self.flow = r;
        }
    }

    /// After a flush: everything but a fatal error is forgotten.
    pub fn reset_flow(&mut self) {
        self.set_flow(Ok(gst::FlowSuccess::Ok));
    }

    /// `Err(Flushing)` when stopping or flushing, else the stored result.
    pub fn check(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.stop || self.flushing {
            return Err(gst::FlowError::Flushing);
        }
        self.flow
    }

    /// The connection if frames can be sent on it.
    pub fn usable_link(&self) -> Option<Arc<Connection>> {
        self.link.clone().filter(|c| !c.is_closed())
    }

    /// Whether the output task sleeps past `deadline` (a frame just sent
    /// with that deadline must then wake it).
    pub fn output_sleeps_past(&self, deadline: Instant) -> bool {
        match self.output_sleep {
            Some(None) => true,
            Some(Some(t)) => deadline < t,
            None => false,
        }
    }

    /// Nothing left in the element: no frame in the table, none being
    /// finished.
    pub fn drained(&self) -> bool {
        self.table.is_empty() && self.finishing == 0
    }
}

/// The state mutex and its condvars.
#[derive(Default)]
pub struct Shared {
    state: Mutex<State>,
    output: Condvar,
    streaming: Condvar,
    link: Condvar,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    pub fn wake_output(&self) {
        self.output.notify_all();
    }

    pub fn wake_streaming(&self) {
        self.streaming.notify_all();
    }

    pub fn wake_link(&self) {
        self.link.notify_all();
    }

    /// Stop, flush, flow errors: everybody re-checks.
    pub fn wake_all(&self) {
        self.wake_output();
        self.wake_streaming();
        self.wake_link();
    }

    /// A frame's fate became known: the output task can pop it. Nothing
    /// the streaming thread waits for changes until the task has finished
    /// it (room under `max-in-flight` and an empty table both count frames
    /// until they are pushed), and the task wakes the streaming thread then:
    /// waking it here too would only make it sleep again, once per frame.
    pub fn wake_completed(&self) {
        self.wake_output();
    }

    /// Sleeps on `cv` until notified or `until` (None: no deadline).
    fn wait(cv: &Condvar, guard: &mut MutexGuard<'_, State>, until: Option<Instant>) {
        match until {
            Some(t) => {
                let _ = cv.wait_until(guard, t);
            }
            None => cv.wait(guard),
        }
    }

    pub fn wait_output(&self, guard: &mut MutexGuard<'_, State>, until: Option<Instant>) {
        guard.output_sleep = Some(until);
        Self::wait(&self.output, guard, until);
        guard.output_sleep = None;
    }

    pub fn wait_streaming(&self, guard: &mut MutexGuard<'_, State>, until: Option<Instant>) {
        Self::wait(&self.streaming, guard, until);
    }

    pub fn wait_link(&self, guard: &mut MutexGuard<'_, State>, until: Option<Instant>) {
        Self::wait(&self.link, guard, until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A notify sent while the waiter is between its check and its sleep
    /// is not lost: the waiter holds the mutex across both.
    #[test]
    fn a_stop_set_while_the_waiter_checks_wakes_it_at_once() {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut st = shared.lock();
                tx.send(()).unwrap();
                let started = Instant::now();
                while !st.stop {
                    shared.wait_output(&mut st, Some(started + Duration::from_secs(30)));
                }
                started.elapsed()
            })
        };
        rx.recv().unwrap();
        // The waiter holds the mutex until it sleeps: this lock waits for
        // that, then the notify reaches a sleeping waiter.
        shared.lock().stop = true;
        shared.wake_all();
        let waited = waiter.join().unwrap();
        assert!(
            waited < Duration::from_secs(5),
            "woken, not timed out: {waited:?}"
        );
    }

    #[test]
    fn a_fatal_flow_error_sticks() {
        let mut st = State::default();
        st.set_flow(Err(gst::FlowError::Error));
        st.set_flow(Err(gst::FlowError::Flushing));
        st.reset_flow();
        assert_eq!(st.check(), Err(gst::FlowError::Error));
        let mut st = State::default();
        st.set_flow(Err(gst::FlowError::NotLinked));
        st.reset_flow();
        assert_eq!(st.check(), Ok(gst::FlowSuccess::Ok));
        st.flushing = true;
        assert_eq!(st.check(), Err(gst::FlowError::Flushing));
    }
}
