//! The pixel-rate quota: how many pixels per second one peer may have
//! encoded, so that one guest cannot keep the encoders from the others.
//!
//! A token bucket per peer and listener, shared by all of the peer's
//! connections, holding at most one second of its rate. A frame takes its
//! pixels from the bucket; when the bucket is empty the guest's reader
//! waits until it has refilled: the guest is paced (its frames are
//! answered later, and its own flow control slows it down), not refused.
//! A frame larger than a second's worth is let through once the bucket is
//! full and leaves it in debt, so the average rate still holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::access::PeerKey;

#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }

    /// Takes `pixels` at `now`; the time to wait first (zero when they
    /// were there). The pixels are taken either way.
    pub fn take(&mut self, pixels: u64, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        let wait = if self.tokens >= pixels as f64 || self.tokens >= self.rate {
            Duration::ZERO
        } else {
            // Wait until the frame fits, or the bucket is full for a frame
            // larger than it.
            let need = (pixels as f64).min(self.rate) - self.tokens;
            Duration::from_secs_f64(need / self.rate)
        };
        self.tokens -= pixels as f64;
        // The wait refills what the frame took beyond the tokens.
        self.tokens += wait.as_secs_f64() * self.rate;
        self.last = now + wait;
        wait
    }
}

/// A peer's bucket, shared by its connections.
pub type SharedBucket = Arc<Mutex<Bucket>>;

/// The buckets of every peer that has a quota, per listener.
#[derive(Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<(usize, PeerKey), SharedBucket>>,
}

impl Quotas {
    /// The bucket of `peer` on listener number `listener`, shared with its
    /// other connections.
    pub fn bucket(&self, listener: usize, peer: &PeerKey, rate: u64) -> SharedBucket {
        let mut b = self.buckets.lock().unwrap();
        // Forget peers that have no connection left.
        b.retain(|_, v| Arc::strong_count(v) > 1);
        b.entry((listener, peer.clone()))
            .or_insert_with(|| Arc::new(Mutex::new(Bucket::new(rate, Instant::now()))))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_guest_under_its_rate_never_waits() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        for i in 0..100 {
            // 10 frames of 90 pixels a second: 900 < 1000.
            assert_eq!(b.take(90, t0 + i * S / 10), Duration::ZERO, "frame {i}");
        }
    }

    #[test]
    fn a_guest_over_its_rate_is_paced_to_it() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        // Frames of 250 pixels as fast as possible: the first second's
        // worth goes at once, then one every 250 ms.
        let mut now = t0;
        let mut waited = Duration::ZERO;
        for _ in 0..20 {
            let w = b.take(250, now);
            waited += w;
            now += w;
        }
        // 20 * 250 = 5000 pixels at 1000/s, 1000 of them free: 4 s.
        let got = waited.as_secs_f64();
        assert!((got - 4.0).abs() < 1e-6, "{got}");
    }

    #[test]
    fn a_frame_larger_than_the_bucket_waits_for_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        assert_eq!(b.take(3000, t0), Duration::ZERO);
        // 2000 in debt, then the bucket must fill to 1000 again: 3 s.
        let w = b.take(3000, t0);
        assert!((w.as_secs_f64() - 3.0).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn peers_share_a_bucket_per_listener_and_are_forgotten_when_gone() {
        let q = Quotas::default();
        let k = PeerKey::Cid(3);
        let a = q.bucket(0, &k, 100);
        let b = q.bucket(0, &k, 100);
        assert!(Arc::ptr_eq(&a, &b));
        let other = q.bucket(1, &k, 100);
        assert!(!Arc::ptr_eq(&a, &other));
        drop((a, b, other));
        let _c = q.bucket(0, &PeerKey::Cid(4), 100);
        assert_eq!(q.buckets.lock().unwrap().len(), 1);
    }
}
