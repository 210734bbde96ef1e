//! The output task: the one thread that finishes frames.
//!
//! It runs as a task on the encoder's src pad (like the asynchronous C
//! encoders, e.g. v4l2videoenc): started once the pads are active and after
//! every flush, stopped on flush-start and before the pads are deactivated.
//! Each iteration sleeps on the state's `output` condvar until a frame's fate
//! is known (a response, an error, a drop) or the earliest frame deadline
//! passes, pops every ready frame in input order, and calls `finish_frame`
//! for each after releasing the state mutex (`finish_frame` takes the
//! encoder's stream lock itself and pushes downstream). So output leaves as
//! soon as its answer arrives, even when no further input comes (a static
//! desktop), and always in input order, because no other thread finishes
//! frames.

use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst_video::prelude::*;

use super::pending::{DropReason, Outcome, Ready};
use super::profile::Label;
use super::state::{Shared, State};
use super::{VsockBaseEnc, CAT};

/// Starts (or restarts) the task on the encoder's src pad.
pub fn start(el: &VsockBaseEnc, shared: std::sync::Arc<Shared>) -> Result<(), glib::BoolError> {
    let weak = el.downgrade();
    el.src_pad().start_task(move || {
        let Some(el) = weak.upgrade() else {
            return;
        };
        if !iterate(&el, &shared) {
            // Stopping or flushing: pause until restarted (pausing from the
            // task itself does not wait for it).
            let _ = el.src_pad().pause_task();
        }
    })
}

/// Stops the task and waits until its current iteration is over. The
/// caller has woken it first (stop or flushing set).
pub fn stop(el: &VsockBaseEnc) {
    let _ = el.src_pad().stop_task();
}

/// One iteration: waits for ready frames and finishes them. False when the
/// element is stopping or flushing.
fn iterate(el: &VsockBaseEnc, shared: &Shared) -> bool {
    let (ready, went_silent) = {
        let mut st = shared.lock();
        loop {
            if st.stop || st.flushing {
                return false;
            }
            let now = Instant::now();
            if st.table.has_ready(now) {
                let ready = st.table.pop_ready(now);
                st.finishing += ready.len();
                let mut timeouts = 0;
                let mut news = false;
                for r in &ready {
                    if r.outcome == Outcome::Dropped(DropReason::Timeout) {
                        timeouts += 1;
                        news |= st.health.timed_out(r.wire_pts);
                    }
                }
                let went_silent = news.then(|| {
                    let addr = st.link.as_ref().map(|c| c.addr.to_string());
                    (timeouts, addr.unwrap_or_else(|| "(no connection)".into()))
                });
                break (ready, went_silent);
            }
            let until = st.table.earliest_deadline();
            shared.wait_output(&mut st, until);
        }
    };
    if let Some((n, addr)) = went_silent {
        gst::element_warning!(
            el,
            gst::ResourceError::Read,
            ("vsockenc host at {} stopped answering", addr),
            [
                "{n} frame(s) got no answer within response-timeout and were dropped; \
                 frames are dropped (and the next one is sent as a keyframe) until the host \
                 answers again (this is reported once, and once more when it recovers)"
            ]
        );
    }
    let n = ready.len();
    let mut ret = Ok(gst::FlowSuccess::Ok);
    for r in ready {
        let res = check_label(el, shared, &r).and_then(|_| finish_one(el, r));
        if res.is_err() && ret.is_ok() {
            ret = res;
        }
    }
    let latency = {
        let mut st = shared.lock();
        st.finishing -= n;
        if let Err(e) = ret {
            gst::debug!(CAT, obj = el, "downstream returned {e:?}");
            st.set_flow(Err(e));
        }
        latency_update(&mut st)
    };
    // The table may be empty now (EOS and caps changes wait for that), and
    // a flow error must reach handle_frame.
    shared.wake_streaming();
    if let Some((min, max)) = latency {
        gst::info!(
            CAT,
            obj = el,
            "measured host answer time: latency now {min} .. {max}"
        );
        el.set_latency(min, max);
    }
    true
}

/// Before a keyframe leaves: the profile and level its SPS states must be
/// what the src caps say. When they are not (a legacy host, which could not
/// be asked, or a host that changed its mind) the caps are corrected, if
/// downstream accepts the stream as it is; otherwise the stream stops with
/// an error that says why. A stream is never pushed mislabelled.
fn check_label(el: &VsockBaseEnc, shared: &Shared, r: &Ready) -> Result<(), gst::FlowError> {
    let Outcome::Encoded(enc) = &r.outcome else {
        return Ok(());
    };
    if !enc.keyframe {
        return Ok(());
    }
    let codec = el.codec();
    let Some(info) = codec.stream_info(&enc.data) else {
        return Ok(());
    };
    let (profile, level) = (info.profile, info.level);
    if shared.lock().label.matches(codec, profile, level) {
        return Ok(());
    }
    let label = Label::of_stream(codec, profile, level);
    let Some(old) = el.output_state() else {
        return Ok(());
    };
    let mut caps = old
        .caps_owned()
        .unwrap_or_else(|| super::imp::output_caps(codec));
    label.apply(&mut caps);
    let accepted = el
        .src_pad()
        .peer()
        .is_none_or(|peer| peer.query_accept_caps(&caps));
    if !accepted {
        gst::element_error!(
            el,
            gst::StreamError::Format,
            (
                "the host produces {} profile {} level {}, which downstream does not accept",
                codec,
                label.profile.as_deref().unwrap_or("(unknown)"),
                label.level.as_deref().unwrap_or("(unknown)")
            ),
            [
                "downstream accepts {}; a legacy host cannot be asked for a profile: run vsockenc-host (extensions=true) or configure the host's encoder",
                el.src_pad()
                    .peer()
                    .map(|p| p.query_caps(None).to_string())
                    .unwrap_or_default()
            ]
        );
        return Err(gst::FlowError::NotNegotiated);
    }
    gst::info!(
        CAT,
        obj = el,
        "the stream is profile {:?} level {:?}: output caps now {caps}",
        label.profile,
        label.level
    );
    el.set_output_state(caps, Some(&old)).map_err(|_| {
        gst::error!(CAT, obj = el, "cannot set the output state");
        gst::FlowError::NotNegotiated
    })?;
    shared.lock().label = label;
    Ok(())
}

fn finish_one(el: &VsockBaseEnc, r: Ready) -> Result<gst::FlowSuccess, gst::FlowError> {
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

/// The minimum latency the element reports is the host's measured answer
/// time (the median of the last 32 answers, rounded up to a millisecond), and
/// nothing more: the element itself holds no frame back. It starts at 0 and
/// is raised as answers are measured; it never shrinks (a live pipeline
/// would re-time its sinks on every dip), and stays under the maximum.
/// The median rather than the mean or a high percentile: one answer held up
/// by a busy host would otherwise raise the latency for good, while answers
/// somewhat slower than the median are absorbed by the sink's own slack
/// (`processing-deadline` and `max-lateness`, 20 ms each by default).
fn latency_update(st: &mut State) -> Option<(gst::ClockTime, gst::ClockTime)> {
    /// Answers measured before the first estimate: the first one includes
    /// the host encoder's start-up.
    const MIN_SAMPLES: usize = 8;
    let median_us = st.table.stats.recent_latency_median_us(MIN_SAMPLES)?;
    let (min, max) = st.latency?;
    let measured = gst::ClockTime::from_mseconds(median_us.div_ceil(1000)).min(max);
    if measured <= min {
        return None;
    }
    st.latency = Some((measured, max));
    Some((measured, max))
}
