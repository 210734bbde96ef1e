//! Per-client statistics, printed at the stats interval and at disconnect.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tracing::{info, Span};

use crate::metrics::GuestMetrics;

/// Latencies kept for the p99 (a sliding window of the most recent frames).
const LATENCY_WINDOW: usize = 4096;

/// One count of a connection; the guest's metric counter, if it has one,
/// counts along.
#[derive(Default)]
pub struct Count {
    n: AtomicU64,
    also: Option<Counter>,
}

impl Count {
    fn linked(c: &Counter) -> Count {
        Count {
            n: AtomicU64::new(0),
            also: Some(c.clone()),
        }
    }

    pub fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct ClientStats {
    pub frames_in: Count,
    pub frames_out: Count,
    pub bytes_in: Count,
    pub bytes_out: Count,
    pub errors: Count,
    /// Bytes of frame messages as they came over the wire (FRAME_REQUEST
    /// and COMPACT_FRAME, headers included)...
    pub frame_wire_bytes: Count,
    /// ...and what the same frames cost as full legacy FRAME_REQUESTs.
    pub frame_raw_bytes: Count,
    /// Frames rebuilt from a COMPACT_FRAME.
    pub compact_frames: Count,
    /// Frames whose pixels were in a shared-memory slot (SHM_FRAME).
    pub shm_frames: Count,
    latency: Mutex<Latency>,
    /// The guest's counters for the metrics endpoint.
    pub guest: GuestMetrics,
}

#[derive(Default)]
struct Latency {
    sum_us: u128,
    count: u64,
    recent: VecDeque<u32>,
}

impl ClientStats {
    /// Statistics whose frame and byte counts also go to `guest`.
    pub fn new(guest: GuestMetrics) -> ClientStats {
        ClientStats {
            frames_in: Count::linked(&guest.frames_in),
            frames_out: Count::linked(&guest.frames_out),
            bytes_in: Count::linked(&guest.bytes_in),
            bytes_out: Count::linked(&guest.bytes_out),
            guest,
            ..ClientStats::default()
        }
    }

    pub fn add(counter: &Count, n: u64) {
        counter.n.fetch_add(n, Ordering::Relaxed);
        if let Some(c) = &counter.also {
            c.inc_by(n);
        }
    }

    /// A frame answered with an ERROR: counted per reason in the metrics.
    pub fn failed(&self, reason: &str) {
        Self::add(&self.errors, 1);
        self.guest.failed(reason);
    }

    /// Records the time from a frame's arrival to its encoded output.
    pub fn record_latency(&self, d: Duration) {
        self.guest.latency(d);
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        let mut l = self.latency.lock().unwrap();
        l.sum_us += us as u128;
        l.count += 1;
        if l.recent.len() == LATENCY_WINDOW {
            l.recent.pop_front();
        }
        l.recent.push_back(us);
    }

    /// (mean, p99) in microseconds over all frames / the recent window.
    pub fn latency_us(&self) -> (u64, u64) {
        let l = self.latency.lock().unwrap();
        if l.count == 0 {
            return (0, 0);
        }
        let mean = (l.sum_us / l.count as u128) as u64;
        let mut v: Vec<u32> = l.recent.iter().copied().collect();
        v.sort_unstable();
        let idx = ((v.len() * 99).div_ceil(100)).saturating_sub(1);
        (mean, v[idx] as u64)
    }

    pub fn summary(&self) -> String {
        let get = |c: &Count| c.get();
        let (mean, p99) = self.latency_us();
        let (wire, raw) = (get(&self.frame_wire_bytes), get(&self.frame_raw_bytes));
        format!(
            "frames in {} out {}, encode latency mean {:.1} ms p99 {:.1} ms, bytes in {} out {}, errors {}, frame bytes on the wire {wire} for {raw} raw ({:.1}%), {} compact frames, {} shared-memory frames",
            get(&self.frames_in),
            get(&self.frames_out),
            mean as f64 / 1000.0,
            p99 as f64 / 1000.0,
            get(&self.bytes_in),
            get(&self.bytes_out),
            get(&self.errors),
            if raw > 0 { 100.0 * wire as f64 / raw as f64 } else { 100.0 },
            get(&self.compact_frames),
            get(&self.shm_frames),
        )
    }
}

/// The clients alive now, for the periodic report.
#[derive(Default)]
pub struct Registry {
    /// Name, span (the report is logged in it) and statistics of each.
    clients: Mutex<Vec<(String, Span, Weak<ClientStats>)>>,
}

impl Registry {
    pub fn register(&self, peer: &str, span: &Span, stats: &Arc<ClientStats>) {
        let mut c = self.clients.lock().unwrap();
        c.retain(|(_, _, w)| w.strong_count() > 0);
        c.push((peer.to_string(), span.clone(), Arc::downgrade(stats)));
    }

    pub fn report(&self) {
        let mut c = self.clients.lock().unwrap();
        c.retain(|(_, _, w)| w.strong_count() > 0);
        for (peer, span, w) in c.iter() {
            if let Some(s) = w.upgrade() {
                span.in_scope(|| info!("{peer}: stats: {}", s.summary()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_mean_and_p99() {
        let s = ClientStats::default();
        assert_eq!(s.latency_us(), (0, 0));
        for ms in 1..=100 {
            s.record_latency(Duration::from_millis(ms));
        }
        let (mean, p99) = s.latency_us();
        assert_eq!(mean, 50_500);
        assert_eq!(p99, 99_000);
        assert!(s.summary().contains("p99 99.0 ms"));
    }
}
