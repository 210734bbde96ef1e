//! Counters of the element, exposed as the read-only `stats` structure.

use std::collections::VecDeque;
use std::time::Duration;

use super::pending::DropReason;

/// Answer times kept for the latency the element reports.
const RECENT_LATENCIES: usize = 32;

pub const STATS_NAME: &str = "vsockenc-stats";

/// Every field of the `stats` structure and what it counts, for the
/// property's blurb (gst-inspect-1.0).
const FIELDS: &[(&str, &str)] = &[
    ("frames-sent", "frames written to the host"),
    ("frames-returned", "frames the host answered in time"),
    (
        "frames-dropped",
        "frames without output: the sum of dropped-*",
    ),
    ("dropped-timeout", "no answer within response-timeout"),
    ("dropped-host-error", "the host reported an error"),
    (
        "dropped-disconnect",
        "the connection broke with the frame in flight",
    ),
    ("dropped-no-host", "no connection to send on"),
    (
        "dropped-awaiting-keyframe",
        "encoded, but after a drop and not a keyframe",
    ),
    (
        "late-responses",
        "answers that came after their frame's timeout",
    ),
    ("bytes-sent", "bytes written to the host"),
    ("bytes-received", "bytes read from the host"),
    ("in-flight", "frames at the host now"),
    ("reconnects", "connections made after the first"),
    ("host-errors", "ERROR messages from the host"),
    ("pings-sent", "keep-alive PINGs"),
    ("pongs-received", "their answers"),
    ("latency-mean-us", "mean time from request to answer"),
    ("latency-max-us", "longest time from request to answer"),
    ("wire-bytes", "bytes of frame messages on the wire"),
    (
        "raw-bytes",
        "what those frames cost as plain FRAME_REQUESTs",
    ),
    ("compact-frames", "frames sent as changed tiles only"),
    (
        "checksum-matches",
        "host checksums equal to the frame sent (verify-frames)",
    ),
    ("checksum-mismatches", "host checksums that differ"),
    (
        "frames-converted",
        "frames converted to NV12 in the guest for a host that does not take their format",
    ),
    ("extensions", "protocol extension bits the host accepted"),
    (
        "shm-frames",
        "frames whose pixels the host read from shared memory",
    ),
    (
        "shm-copied-frames",
        "of those, frames copied into shared memory because upstream's buffer was elsewhere (the rest took zero copies)",
    ),
];

/// The `stats` property's blurb: every field with what it counts.
pub fn blurb() -> String {
    let fields: Vec<String> = FIELDS.iter().map(|(n, d)| format!("{n} ({d})")).collect();
    format!(
        "Counters of the current (or last) run, a {STATS_NAME} structure: {}",
        fields.join(", ")
    )
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub frames_sent: u64,
    pub frames_returned: u64,
    pub dropped_timeout: u64,
    pub dropped_host_error: u64,
    pub dropped_disconnect: u64,
    pub dropped_no_host: u64,
    pub dropped_awaiting_keyframe: u64,
    pub late_responses: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub reconnects: u64,
    pub host_errors: u64,
    pub pings_sent: u64,
    pub pongs_received: u64,
    /// Bytes of frame messages written (FRAME_REQUEST or COMPACT_FRAME)...
    pub wire_bytes: u64,
    /// ...and what the same frames cost as full legacy FRAME_REQUESTs.
    pub raw_bytes: u64,
    /// Frames sent as COMPACT_FRAME (extension negotiated with the host).
    pub compact_frames: u64,
    /// Host FRAME_CHECKSUMs equal / not equal to the frame sent
    /// (`verify-frames`).
    pub checksum_matches: u64,
    pub checksum_mismatches: u64,
    /// Frames converted to NV12 in the guest for a host that does not take
    /// their format.
    pub frames_converted: u64,
    /// Extensions the host accepted on the current connection.
    pub extensions: u32,
    /// Frames sent as slot descriptions (SHM), and of those, the ones
    /// copied into a slot.
    pub shm_frames: u64,
    pub shm_copied_frames: u64,
    latency_sum_us: u64,
    latency_count: u64,
    pub latency_max_us: u64,
    /// The most recent answer times, in microseconds.
    recent_latency_us: VecDeque<u64>,
}

impl Stats {
    pub fn count_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::Timeout => self.dropped_timeout += 1,
            DropReason::HostError => self.dropped_host_error += 1,
            DropReason::Disconnect => self.dropped_disconnect += 1,
            DropReason::NoHost => self.dropped_no_host += 1,
            DropReason::AwaitingKeyframe => self.dropped_awaiting_keyframe += 1,
        }
    }

    pub fn frames_dropped(&self) -> u64 {
        self.dropped_timeout
            + self.dropped_host_error
            + self.dropped_disconnect
            + self.dropped_no_host
            + self.dropped_awaiting_keyframe
    }

    pub fn record_latency(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.latency_sum_us = self.latency_sum_us.saturating_add(us);
        self.latency_count += 1;
        self.latency_max_us = self.latency_max_us.max(us);
        if self.recent_latency_us.len() == RECENT_LATENCIES {
            self.recent_latency_us.pop_front();
        }
        self.recent_latency_us.push_back(us);
    }

    /// Median of the most recent answer times (the upper one of the middle
    /// two), once there are at least `min_samples` of them. The median, not
    /// the mean: one answer delayed by a busy host CPU must not move the
    /// pipeline latency, which never shrinks again.
    pub fn recent_latency_median_us(&self, min_samples: usize) -> Option<u64> {
        let n = self.recent_latency_us.len();
        if n < min_samples.max(1) {
            return None;
        }
        let mut v: Vec<u64> = self.recent_latency_us.iter().copied().collect();
        let (_, median, _) = v.select_nth_unstable(n / 2);
        Some(*median)
    }

    pub fn latency_mean_us(&self) -> u64 {
        self.latency_sum_us
            .checked_div(self.latency_count)
            .unwrap_or(0)
    }

    pub fn to_structure(&self, in_flight: u32) -> gst::Structure {
        gst::Structure::builder(STATS_NAME)
            .field("frames-sent", self.frames_sent)
            .field("frames-returned", self.frames_returned)
            .field("frames-dropped", self.frames_dropped())
            .field("dropped-timeout", self.dropped_timeout)
            .field("dropped-host-error", self.dropped_host_error)
            .field("dropped-disconnect", self.dropped_disconnect)
            .field("dropped-no-host", self.dropped_no_host)
            .field("dropped-awaiting-keyframe", self.dropped_awaiting_keyframe)
            .field("late-responses", self.late_responses)
            .field("bytes-sent", self.bytes_sent)
            .field("bytes-received", self.bytes_received)
            .field("in-flight", in_flight)
            .field("reconnects", self.reconnects)
            .field("host-errors", self.host_errors)
            .field("pings-sent", self.pings_sent)
            .field("pongs-received", self.pongs_received)
            .field("latency-mean-us", self.latency_mean_us())
            .field("latency-max-us", self.latency_max_us)
            .field("wire-bytes", self.wire_bytes)
            .field("raw-bytes", self.raw_bytes)
            .field("compact-frames", self.compact_frames)
            .field("checksum-matches", self.checksum_matches)
            .field("checksum-mismatches", self.checksum_mismatches)
            .field("frames-converted", self.frames_converted)
            .field("extensions", self.extensions)
            .field("shm-frames", self.shm_frames)
            .field("shm-copied-frames", self.shm_copied_frames)
            .build()
    }
}

/// The `stats` property value before the element ever ran.
pub fn empty_structure() -> gst::Structure {
    Stats::default().to_structure(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blurb_names_every_field_in_order() {
        gst::init().unwrap();
        let s = empty_structure();
        let names: Vec<&str> = s.fields().map(|f| f.as_str()).collect();
        let documented: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, documented);
        let b = blurb();
        assert!(names.iter().all(|n| b.contains(n)));
    }

    #[test]
    fn recent_latency_needs_enough_samples() {
        let mut s = Stats::default();
        for ms in [30, 5, 5, 5] {
            s.record_latency(Duration::from_millis(ms));
        }
        assert_eq!(s.recent_latency_median_us(8), None);
        // One slow answer among fast ones does not move the estimate.
        assert_eq!(s.recent_latency_median_us(4), Some(5_000));
        for ms in [40, 40, 40] {
            s.record_latency(Duration::from_millis(ms));
        }
        // A host that became slow does.
        assert_eq!(s.recent_latency_median_us(4), Some(30_000));
    }
}
