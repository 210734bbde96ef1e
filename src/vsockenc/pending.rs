//! The pending-frames table: every frame between `handle_frame` and
//! `finish_frame`, in input order, keyed by its wire PTS. Plain data: the
//! locking and the wake-ups around it are in [`super::state`].
//!
//! # Drops and keyframes
//!
//! A frame that times out, is refused by the host, is lost in a disconnect or
//! has no host to go to is dropped. After a drop the next frame sent carries
//! `force_keyframe = 1`, and no encoded frame is output until a keyframe
//! comes back: the frames in between would reference a picture downstream
//! never saw.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::stats::Stats;

/// How many expired wire PTS are remembered to recognise late responses.
const LATE_MEMORY: usize = 512;

/// Why a frame produced no output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No response within `response-timeout`.
    Timeout,
    /// The host sent an ERROR.
    HostError,
    /// The connection broke while the frame was in flight.
    Disconnect,
    /// There was no connection to send the frame on.
    NoHost,
    /// Encoded fine, but an earlier frame was dropped and this one is not a
    /// keyframe: downstream could not decode it.
    AwaitingKeyframe,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Timeout => "response timeout",
            DropReason::HostError => "host error",
            DropReason::Disconnect => "disconnect",
            DropReason::NoHost => "no host",
            DropReason::AwaitingKeyframe => "awaiting keyframe",
        }
    }
}

/// One access unit, already in Annex-B form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub data: Vec<u8>,
    pub keyframe: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Encoded(Encoded),
    Dropped(DropReason),
}

#[derive(Debug)]
struct Entry {
    frame_id: u32,
    wire_pts: i64,
    sent_at: Instant,
    deadline: Option<Instant>,
    generation: u64,
    outcome: Option<Outcome>,
}

/// A frame whose fate is known, popped in input order.
#[derive(Debug, PartialEq, Eq)]
pub struct Ready {
    /// The `system_frame_number` of the `VideoCodecFrame`.
    pub frame_id: u32,
    pub wire_pts: i64,
    pub outcome: Outcome,
}

/// What became of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Matched,
    /// Its frame already timed out (or was flushed).
    Late,
    /// No frame with that PTS was ever sent.
    Unknown,
}

#[derive(Debug)]
pub struct Table {
    entries: VecDeque<Entry>,
    expired: VecDeque<i64>,
    awaiting_keyframe: bool,
    force_next: bool,
    last_wire_pts: Option<i64>,
    wire_offset: i64,
    rebase: bool,
    pub stats: Stats,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            entries: VecDeque::new(),
            expired: VecDeque::new(),
            // The first output must be a keyframe as well.
            awaiting_keyframe: true,
            force_next: false,
            last_wire_pts: None,
            wire_offset: 0,
            rebase: false,
            stats: Stats::default(),
        }
    }
}

impl Table {
    /// The PTS a frame carries on the wire: its own PTS when that is later
    /// than every PTS sent before, otherwise a synthetic one. After a flush
    /// the whole new segment is shifted past the old one, keeping its
    /// spacing.
    pub fn wire_pts(&mut self, pts: Option<u64>, duration: Option<u64>) -> i64 {
        let step = duration
            .filter(|d| *d > 0)
            .unwrap_or(1)
            .min(i64::MAX as u64) as i64;
        let next_min = self.last_wire_pts.map_or(0, |l| l.saturating_add(1));
        let wire = match pts {
            Some(p) => {
                let cand = (p.min(i64::MAX as u64) as i64).saturating_add(self.wire_offset);
                if cand >= next_min {
                    cand
                } else if self.rebase {
                    let target = self.last_wire_pts.map_or(0, |l| l.saturating_add(step));
                    self.wire_offset = self.wire_offset.saturating_add(target - cand);
                    target
                } else {
                    next_min
                }
            }
            None => self.last_wire_pts.map_or(0, |l| l.saturating_add(step)),
        };
        self.rebase = false;
        self.last_wire_pts = Some(wire);
        wire
    }

    /// Whether the next frame sent must be a keyframe (and forget it).
    pub fn take_force_keyframe(&mut self) -> bool {
        std::mem::take(&mut self.force_next)
    }

    /// Records a frame just sent (or about to be: the response may race the
    /// return of the write).
    pub fn insert_sent(
        &mut self,
        frame_id: u32,
        wire_pts: i64,
        now: Instant,
        timeout: Duration,
        generation: u64,
    ) {
        self.entries.push_back(Entry {
            frame_id,
            wire_pts,
            sent_at: now,
            deadline: Some(now + timeout),
            generation,
            outcome: None,
        });
    }

    /// Makes the next frame sent a keyframe (a new connection: the host
    /// starts a new session).
    pub fn request_keyframe(&mut self) {
        self.force_next = true;
    }

    /// Records a frame that is dropped before it was sent.
    pub fn insert_dropped(&mut self, frame_id: u32, wire_pts: i64, reason: DropReason) {
        self.force_next = true;
        self.entries.push_back(Entry {
            frame_id,
            wire_pts,
            sent_at: Instant::now(),
            deadline: None,
            generation: 0,
            outcome: Some(Outcome::Dropped(reason)),
        });
    }

    /// Matches a response to its frame by wire PTS.
    pub fn complete(&mut self, wire_pts: i64, encoded: Encoded, now: Instant) -> Match {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.wire_pts == wire_pts && e.outcome.is_none())
        {
            self.stats.frames_returned += 1;
            self.stats
                .record_latency(now.saturating_duration_since(e.sent_at));
            e.outcome = Some(Outcome::Encoded(encoded));
            return Match::Matched;
        }
        if self.expired.contains(&wire_pts) || self.entries.iter().any(|e| e.wire_pts == wire_pts) {
            self.stats.late_responses += 1;
            return Match::Late;
        }
        Match::Unknown
    }

    /// What [`Table::complete`] would make of a response with this PTS.
    pub fn lookup(&self, wire_pts: i64) -> Match {
        if self
            .entries
            .iter()
            .any(|e| e.wire_pts == wire_pts && e.outcome.is_none())
        {
            Match::Matched
        } else if self.expired.contains(&wire_pts)
            || self.entries.iter().any(|e| e.wire_pts == wire_pts)
        {
            Match::Late
        } else {
            Match::Unknown
        }
    }

    /// For hosts that answer with their own PTS counter: give the response
    /// to the oldest frame still waiting on that connection. Returns that
    /// frame's wire PTS.
    pub fn complete_oldest(
        &mut self,
        generation: u64,
        encoded: Encoded,
        now: Instant,
    ) -> Option<i64> {
        let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.outcome.is_none() && e.generation == generation)
        else {
            self.stats.late_responses += 1;
            return None;
        };
        self.stats.frames_returned += 1;
        self.stats
            .record_latency(now.saturating_duration_since(e.sent_at));
        e.outcome = Some(Outcome::Encoded(encoded));
        Some(e.wire_pts)
    }

    /// An ERROR carries no PTS: hosts encode in order, so it is taken to be
    /// about the oldest frame still waiting. Returns its wire PTS.
    pub fn fail_oldest(&mut self, generation: u64, reason: DropReason) -> Option<i64> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.outcome.is_none() && e.generation == generation)?;
        e.outcome = Some(Outcome::Dropped(reason));
        self.force_next = true;
        Some(e.wire_pts)
    }

    /// Fails one frame by its wire PTS (its write failed).
    pub fn fail(&mut self, wire_pts: i64, reason: DropReason) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.wire_pts == wire_pts && e.outcome.is_none())
        {
            e.outcome = Some(Outcome::Dropped(reason));
            self.force_next = true;
        }
    }

    /// Fails every frame still waiting on connection `generation`. Returns
    /// their wire PTS.
    pub fn fail_generation(&mut self, generation: u64, reason: DropReason) -> Vec<i64> {
        let mut lost = Vec::new();
        for e in self
            .entries
            .iter_mut()
            .filter(|e| e.outcome.is_none() && e.generation == generation)
        {
            e.outcome = Some(Outcome::Dropped(reason));
            remember(&mut self.expired, e.wire_pts);
            lost.push(e.wire_pts);
        }
        if !lost.is_empty() {
            self.force_next = true;
        }
        lost
    }

    /// Fails every frame still waiting, whatever its connection (new caps
    /// cannot wait for them any longer). Returns their wire PTS.
    pub fn fail_waiting(&mut self, reason: DropReason) -> Vec<i64> {
        let mut lost = Vec::new();
        for e in self.entries.iter_mut().filter(|e| e.outcome.is_none()) {
            e.outcome = Some(Outcome::Dropped(reason));
            remember(&mut self.expired, e.wire_pts);
            lost.push(e.wire_pts);
        }
        if !lost.is_empty() {
            self.force_next = true;
        }
        lost
    }

    /// Drops every waiting frame whose deadline has passed. Returns their
    /// wire PTS.
    pub fn expire(&mut self, now: Instant) -> Vec<i64> {
        let mut out = Vec::new();
        for e in self.entries.iter_mut().filter(|e| e.outcome.is_none()) {
            if e.deadline.is_some_and(|d| d <= now) {
                e.outcome = Some(Outcome::Dropped(DropReason::Timeout));
                remember(&mut self.expired, e.wire_pts);
                out.push(e.wire_pts);
            }
        }
        if !out.is_empty() {
            self.force_next = true;
        }
        out
    }

    /// Pops, in input order, every frame whose fate is known, applying the
    /// keyframe rule. Counts drops.
    pub fn pop_ready(&mut self, now: Instant) -> Vec<Ready> {
        self.expire(now);
        let mut out = Vec::new();
        while self.entries.front().is_some_and(|e| e.outcome.is_some()) {
            let e = self.entries.pop_front().unwrap();
            let outcome = match e.outcome.unwrap() {
                Outcome::Dropped(reason) => {
                    self.awaiting_keyframe = true;
                    Outcome::Dropped(reason)
                }
                Outcome::Encoded(enc) if self.awaiting_keyframe && !enc.keyframe => {
                    Outcome::Dropped(DropReason::AwaitingKeyframe)
                }
                Outcome::Encoded(enc) => {
                    if enc.keyframe {
                        self.awaiting_keyframe = false;
                    }
                    Outcome::Encoded(enc)
                }
            };
            if let Outcome::Dropped(reason) = outcome {
                self.stats.count_drop(reason);
                if reason == DropReason::AwaitingKeyframe && !self.has_waiting() {
                    // Nothing in flight can repair the stream: make sure the
                    // next frame sent is a keyframe.
                    self.force_next = true;
                }
            }
            out.push(Ready {
                frame_id: e.frame_id,
                wire_pts: e.wire_pts,
                outcome,
            });
        }
        out
    }

    fn has_waiting(&self) -> bool {
        self.entries.iter().any(|e| e.outcome.is_none())
    }

    /// Whether a drainer would pop something now.
    pub fn has_ready(&self, now: Instant) -> bool {
        self.entries
            .front()
            .is_some_and(|e| e.outcome.is_some() || e.deadline.is_some_and(|d| d <= now))
    }

    /// Frames sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.entries.iter().filter(|e| e.outcome.is_none()).count()
    }

    /// Frames not finished yet, answered or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|e| e.outcome.is_none())
            .filter_map(|e| e.deadline)
            .min()
    }

    /// Forgets every frame (the base class has dropped them in a flush).
    /// Their responses will count as late; the next output must be a
    /// keyframe and the next wire PTS moves past everything sent so far.
    pub fn clear(&mut self) {
        for e in self.entries.drain(..) {
            remember(&mut self.expired, e.wire_pts);
        }
        self.awaiting_keyframe = true;
        self.force_next = true;
        self.rebase = true;
    }
}

fn remember(expired: &mut VecDeque<i64>, pts: i64) {
    if expired.len() == LATE_MEMORY {
        expired.pop_front();
    }
    expired.push_back(pts);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(100);

    fn enc(key: bool) -> Encoded {
        Encoded {
            data: vec![0, 0, 0, 1, if key { 0x65 } else { 0x41 }],
            keyframe: key,
        }
    }

    fn ids(r: &[Ready]) -> Vec<u32> {
        r.iter().map(|r| r.frame_id).collect()
    }

    #[test]
    fn wire_pts_is_strictly_increasing() {
        let mut t = Table::default();
        assert_eq!(t.wire_pts(Some(100), None), 100);
        assert_eq!(t.wire_pts(Some(100), None), 101);
        assert_eq!(t.wire_pts(Some(50), None), 102);
        assert_eq!(t.wire_pts(None, Some(10)), 112);
        assert_eq!(t.wire_pts(Some(200), None), 200);
    }

    #[test]
    fn after_a_flush_the_new_segment_is_shifted_past_the_old_one() {
        let mut t = Table::default();
        t.wire_pts(Some(1000), Some(10));
        t.clear();
        let a = t.wire_pts(Some(0), Some(10));
        let b = t.wire_pts(Some(10), Some(10));
        assert!(a > 1000);
        assert_eq!(b - a, 10, "spacing kept");
    }

    #[test]
    fn responses_are_matched_by_pts_and_output_in_input_order() {
        let mut t = Table::default();
        let now = Instant::now();
        for i in 0..3 {
            t.insert_sent(i, i as i64 * 10, now, T, 1);
        }
        assert_eq!(t.complete(20, enc(false), now), Match::Matched);
        assert!(t.pop_ready(now).is_empty(), "frame 0 still waiting");
        assert_eq!(t.complete(0, enc(true), now), Match::Matched);
        assert_eq!(ids(&t.pop_ready(now)), vec![0]);
        assert_eq!(t.complete(10, enc(false), now), Match::Matched);
        let r = t.pop_ready(now);
        assert_eq!(ids(&r), vec![1, 2]);
        assert!(r.iter().all(|r| matches!(r.outcome, Outcome::Encoded(_))));
        assert_eq!(t.stats.frames_returned, 3);
    }

    #[test]
    fn first_output_must_be_a_keyframe() {
        let mut t = Table::default();
        let now = Instant::now();
        t.insert_sent(0, 0, now, T, 1);
        t.complete(0, enc(false), now);
        assert_eq!(
            t.pop_ready(now)[0].outcome,
            Outcome::Dropped(DropReason::AwaitingKeyframe)
        );
        assert!(t.take_force_keyframe());
    }

    #[test]
    fn timeout_drops_forces_a_keyframe_and_filters_until_one_arrives() {
        let mut t = Table::default();
        let now = Instant::now();
        t.insert_sent(0, 0, now, T, 1);
        t.complete(0, enc(true), now);
        t.pop_ready(now);
        t.insert_sent(1, 10, now, T, 1);
        t.insert_sent(2, 20, now, T, 1);
        t.complete(20, enc(false), now);
        let later = now + T;
        let r = t.pop_ready(later);
        assert_eq!(r[0].outcome, Outcome::Dropped(DropReason::Timeout));
        assert_eq!(r[1].outcome, Outcome::Dropped(DropReason::AwaitingKeyframe));
        assert!(t.take_force_keyframe());
        assert_eq!(t.complete(10, enc(false), later), Match::Late);
        t.insert_sent(3, 30, later, T, 1);
        t.complete(30, enc(true), later);
        assert!(matches!(t.pop_ready(later)[0].outcome, Outcome::Encoded(_)));
        assert_eq!(t.stats.dropped_timeout, 1);
        assert_eq!(t.stats.dropped_awaiting_keyframe, 1);
        assert_eq!(t.stats.late_responses, 1);
    }

    #[test]
    fn disconnect_fails_only_that_connection() {
        let mut t = Table::default();
        let now = Instant::now();
        t.insert_sent(0, 0, now, T, 1);
        t.insert_sent(1, 10, now, T, 2);
        assert_eq!(t.fail_generation(1, DropReason::Disconnect), vec![0]);
        assert_eq!(t.in_flight(), 1);
        assert!(t.take_force_keyframe());
    }

    #[test]
    fn host_error_fails_the_oldest_waiting_frame() {
        let mut t = Table::default();
        let now = Instant::now();
        t.insert_sent(0, 0, now, T, 1);
        t.insert_sent(1, 10, now, T, 1);
        assert_eq!(t.fail_oldest(1, DropReason::HostError), Some(0));
        let r = t.pop_ready(now);
        assert_eq!(r[0].outcome, Outcome::Dropped(DropReason::HostError));
        assert_eq!(t.stats.dropped_host_error, 1);
    }

    #[test]
    fn unknown_pts_falls_back_to_the_oldest_frame() {
        let mut t = Table::default();
        let now = Instant::now();
        t.insert_sent(0, 0, now, T, 1);
        assert_eq!(t.complete(12345, enc(true), now), Match::Unknown);
        assert_eq!(t.complete_oldest(1, enc(true), now), Some(0));
        assert_eq!(ids(&t.pop_ready(now)), vec![0]);
    }

    #[test]
    fn earliest_deadline_and_flush() {
        let mut t = Table::default();
        let now = Instant::now();
        t.insert_sent(0, 0, now, T, 1);
        t.insert_dropped(1, 10, DropReason::NoHost);
        assert_eq!(t.earliest_deadline(), Some(now + T));
        assert!(!t.has_ready(now));
        assert!(t.has_ready(now + T));
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.complete(0, enc(true), now), Match::Late);
    }
}
