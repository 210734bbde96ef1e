//! Taking the `GstVideoEncoder` stream lock from a thread of our own.
//!
//! gstreamer-rs 0.25 does not expose `GST_VIDEO_ENCODER_STREAM_LOCK`, yet the
//! output thread must hold it while it pops ready frames and calls
//! `finish_frame`, exactly like the streaming thread does in `handle_frame`.
//! The lock is the `GRecMutex` field `stream_lock` of the instance struct;
//! the guard below locks it and unlocks it on drop. It is recursive, so the
//! `VideoCodecFrame`s obtained while it is held (which lock it again) are
//! fine.

use std::marker::PhantomData;

use gst::glib;
use gst::prelude::*;

pub struct StreamLockGuard<'a> {
    lock: *mut glib::ffi::GRecMutex,
    _encoder: PhantomData<&'a gst_video::VideoEncoder>,
}

impl<'a> StreamLockGuard<'a> {
    pub fn lock(encoder: &'a impl IsA<gst_video::VideoEncoder>) -> Self {
        let enc: &gst_video::VideoEncoder = encoder.upcast_ref();
        // SAFETY: `enc` is a live GstVideoEncoder for 'a; `stream_lock` is
        // initialised in its instance_init and cleared only in finalize.
        unsafe {
            let raw: *mut gst_video::ffi::GstVideoEncoder = enc.as_ptr();
            let lock = std::ptr::addr_of_mut!((*raw).stream_lock);
            glib::ffi::g_rec_mutex_lock(lock);
            StreamLockGuard {
                lock,
                _encoder: PhantomData,
            }
        }
    }
}

impl<'a> StreamLockGuard<'a> {
    /// Locks only if nobody else holds the lock right now.
    pub fn try_lock(encoder: &'a impl IsA<gst_video::VideoEncoder>) -> Option<Self> {
        let enc: &gst_video::VideoEncoder = encoder.upcast_ref();
        // SAFETY: as in `lock`.
        unsafe {
            let raw: *mut gst_video::ffi::GstVideoEncoder = enc.as_ptr();
            let lock = std::ptr::addr_of_mut!((*raw).stream_lock);
            (glib::ffi::g_rec_mutex_trylock(lock) != glib::ffi::GFALSE).then_some(StreamLockGuard {
                lock,
                _encoder: PhantomData,
            })
        }
    }
}

impl Drop for StreamLockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: locked by this guard in `lock`, on this thread.
        unsafe { glib::ffi::g_rec_mutex_unlock(self.lock) }
    }
}
