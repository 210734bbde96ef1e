//! The output thread, and the drain that finishes ready frames.
//!
//! The output thread pushes a frame's output as soon as its response
//! arrives, even when no further input comes (a static desktop). It sleeps
//! on the pending table's output condvar, waking when the reader completes a
//! frame while `handle_frame`/`finish` are not running (they drain it
//! themselves otherwise, and hand over what they leave behind), at the
//! earliest frame deadline (to drop timed-out frames) and when the link
//! needs care (reconnect, keepalive); see the pending module doc. To finish
//! frames it takes the encoder's stream lock first and only then the
//! table's mutex, like `handle_frame`, which already holds the stream lock
//! when it drains. It only *tries* the stream lock: when it is busy, its
//! holder is nearly always `handle_frame`/`finish` draining the same table,
//! so the thread looks again a little later (2 ms, backing off to 50 ms, or
//! at once when that holder hands over frames it left behind) instead of
//! queueing (which would also hold up reconnects and keepalives).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::glib;
use gst_video::prelude::*;

use super::imp::CAT;
use super::pending::{Outcome, Ready};
use super::runtime::Shared;
use super::stream_lock::StreamLockGuard;

/// Longest sleep without a reason to wake, to notice a lost element.
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// How soon to retry when the stream lock is busy, doubling up to the max
/// while it stays busy (a sink blocked in preroll holds it for long).
const LOCK_RETRY: Duration = Duration::from_millis(2);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(50);

pub fn spawn(shared: Arc<Shared>, element: glib::WeakRef<super::VsockEnc>) -> std::io::Result<()> {
    let s = shared.clone();
    let handle = std::thread::Builder::new()
        .name("vsockenc-out".into())
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| run(&s, &element)));
            if r.is_err() {
                if let Some(el) = element.upgrade() {
                    gst::element_error!(
                        el,
                        gst::CoreError::Failed,
                        ("internal error: the vsockenc output thread panicked")
                    );
                }
                s.set_flow(Err(gst::FlowError::Error));
            }
        })?;
    *shared.output_thread.lock() = Some(handle);
    Ok(())
}

enum Wake {
    Drain,
    Maintain,
}

fn run(shared: &Arc<Shared>, element: &glib::WeakRef<super::VsockEnc>) {
    let mut retry = LOCK_RETRY;
    loop {
        let wake = {
            let mut t = shared.pending.lock();
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let now = Instant::now();
                // Link care first: a steady stream of ready frames must not
                // starve reconnects and keepalives.
                let maint = shared.next_maintenance();
                if maint.is_some_and(|m| m <= now) {
                    break Wake::Maintain;
                }
                if !t.is_flushing() && t.has_ready(now) {
                    break Wake::Drain;
                }
                let mut wake_at = now + IDLE_WAKE;
                // While flushing, expired frames wait for flush-stop to clear
                // them: their deadlines must not make this loop spin.
                let deadline = t.earliest_deadline().filter(|_| !t.is_flushing());
                for d in [deadline, maint].into_iter().flatten() {
                    wake_at = wake_at.min(d);
                }
                shared.pending.wait_output(&mut t, wake_at);
            }
        };
        match wake {
            Wake::Drain => {
                let Some(el) = element.upgrade() else { return };
                // Whoever holds the stream lock is almost always
                // handle_frame/finish, which drain themselves; rather than
                // queue behind it, look again shortly.
                let Some(_stream_lock) = StreamLockGuard::try_lock(&el) else {
                    let mut t = shared.pending.lock();
                    shared.pending.wait_output(&mut t, Instant::now() + retry);
                    retry = (retry * 2).min(LOCK_RETRY_MAX);
                    continue;
                };
                retry = LOCK_RETRY;
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let r = finish_ready(&el, shared);
                if let Err(e) = r {
                    shared.set_flow(Err(e));
                }
            }
            Wake::Maintain => shared.maintain(Instant::now()),
        }
    }
}

/// Finishes, in input order, every frame whose fate is known. The caller
/// holds the encoder's stream lock.
pub fn finish_ready(
    el: &super::VsockEnc,
    shared: &Shared,
) -> Result<gst::FlowSuccess, gst::FlowError> {
    let ready = shared.pending.lock().pop_ready(Instant::now());
    if ready.is_empty() {
        return Ok(gst::FlowSuccess::Ok);
    }
    // Capacity was freed: wake handle_frame / finish if they wait.
    shared.pending.notify_streaming();
    let mut ret = Ok(gst::FlowSuccess::Ok);
    for r in ready {
        let res = finish_one(el, r);
        if res.is_err() && ret.is_ok() {
            ret = res;
        }
    }
    if let Some((min, max)) = shared.latency_update() {
        gst::info!(
            CAT,
            obj = el,
            "host answers slower than reported: latency now {min} .. {max}"
        );
        el.set_latency(min, max);
    }
    ret
}

fn finish_one(el: &super::VsockEnc, r: Ready) -> Result<gst::FlowSuccess, gst::FlowError> {
    let Some(mut frame) = el.frame(r.frame_id as i32) else {
        // Flushed meanwhile.
        return Ok(gst::FlowSuccess::Ok);
    };
    match r.outcome {
        Outcome::Encoded(enc) => {
            gst::trace!(
                CAT,
                obj = el,
                "finishing frame {} (wire pts {}, {} bytes, keyframe {})",
                r.frame_id,
                r.wire_pts,
                enc.data.len(),
                enc.keyframe
            );
            if enc.keyframe {
                frame.set_flags(gst_video::VideoCodecFrameFlags::SYNC_POINT);
            }
            frame.set_output_buffer(gst::Buffer::from_mut_slice(enc.data));
            el.finish_frame(frame)
        }
        Outcome::Dropped(reason) => {
            gst::debug!(
                CAT,
                obj = el,
                "dropping frame {} (pts {:?}, wire pts {}): {}",
                r.frame_id,
                frame.pts(),
                r.wire_pts,
                reason.as_str()
            );
            // Without an output buffer the base class drops the frame.
            el.finish_frame(frame)
        }
    }
}
