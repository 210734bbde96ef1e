//! Fixtures shared by the system tests (`tests/system_*.rs`): a real
//! `vsockenc-host` child process, real pipelines with bounded waits, and
//! frame comparison by PSNR.
//!
//! Each system test file does `mod sys;` and uses only what it needs, so
//! helpers unused by one file are not dead code overall.
#![allow(dead_code)]

pub mod daemon;
pub mod frames;
pub mod pipeline;
pub mod tempdir;

use std::sync::Once;

/// Initialise GStreamer and register the `vsockenc` plugin from the rlib
/// (no `GST_PLUGIN_PATH` needed). Safe to call from every test.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init failed");
        gstvsockenc::plugin_register_static().expect("registering the vsockenc plugin failed");
        for factory in [
            "vsockenc",
            "videotestsrc",
            "h264parse",
            "avdec_h264",
            "appsink",
        ] {
            assert!(
                gst::ElementFactory::find(factory).is_some(),
                "GStreamer element `{factory}` is not available: the system tests need \
                 gstreamer1.0-plugins-base/-good/-bad and gstreamer1.0-libav"
            );
        }
    });
}
