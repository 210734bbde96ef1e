//! Waiting without the encoder's stream lock.
//!
//! `GstVideoEncoder` calls `handle_frame`, `set_format` and `finish` with
//! its stream lock held, and `finish_frame` (called by the output task)
//! takes the same lock. A subclass that waits in those vfuncs for frames to
//! be finished elsewhere must release the lock while it waits, as the C
//! encoders with asynchronous output do (`GST_VIDEO_ENCODER_STREAM_UNLOCK`
//! around the wait in v4l2videoenc's `handle_frame`); `handle_frame` also
//! releases it while it writes a frame to the host, which takes as long as
//! the host needs to read it. gstreamer-rs 0.25 has
//! no safe way to do that, so this is the one place where the element
//! touches the lock through FFI.

use gst::glib;
use gst::prelude::*;

/// Runs `wait` with the encoder's stream lock released and takes the lock
/// back afterwards, also if `wait` panics.
///
/// Only call this from `handle_frame`, `set_format` or `finish`, on the
/// streaming thread, after every `VideoCodecFrame` of the call has been
/// dropped (a frame holds the lock too), and do not take the stream lock
/// inside `wait` (nor call into the base class). Should the lock be held more than once there (it is not in
/// GStreamer 1.22), the wait still ends: it only keeps the output task
/// waiting meanwhile, since every wait of the element is bounded.
pub fn released<R>(encoder: &impl IsA<gst_video::VideoEncoder>, wait: impl FnOnce() -> R) -> R {
    struct Relock(*mut glib::ffi::GRecMutex);
    impl Drop for Relock {
        fn drop(&mut self) {
            // SAFETY: the mutex outlives the encoder reference the caller
            // holds; this thread unlocked it just before.
            unsafe { glib::ffi::g_rec_mutex_lock(self.0) }
        }
    }
    let enc: &gst_video::VideoEncoder = encoder.upcast_ref();
    // SAFETY: `stream_lock` is a GRecMutex initialised in the encoder's
    // instance_init and cleared only in its finalize; `enc` keeps the
    // instance alive for this call. The base class took it on this thread
    // before calling the vfunc we are in (the documented precondition), so
    // unlocking it once here is balanced by the lock in `Relock::drop`.
    let relock = unsafe {
        let raw: *mut gst_video::ffi::GstVideoEncoder = enc.as_ptr();
        let lock = std::ptr::addr_of_mut!((*raw).stream_lock);
        glib::ffi::g_rec_mutex_unlock(lock);
        Relock(lock)
    };
    let r = wait();
    drop(relock);
    r
}
