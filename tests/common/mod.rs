//! Shared fixtures of the element tests: plugin registration, the scripted
//! HXFR peer ([`peer`]), and small helpers to drive harnesses and
//! pipelines with bounded waits.
#![allow(dead_code)]

pub mod peer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use gst::prelude::*;

/// Initialises GStreamer and registers the plugin from the rlib, once.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstvsockenc::plugin_register_static().expect("register vsockenc");
    });
}

/// A fresh Unix socket path in the temp dir, unique per process and call.
pub fn socket_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("vsockenc-{tag}-{}-{n}.sock", std::process::id()))
}

/// Pulls one buffer from a harness, waiting at most `timeout`.
pub fn pull(h: &mut gst_check::Harness, timeout: Duration) -> Option<gst::Buffer> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(b) = h.try_pull() {
            return Some(b);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A BGRx buffer of `w`x`h` whose bytes encode `seed`.
pub fn bgrx_buffer(w: u32, h: u32, seed: u8, pts: gst::ClockTime) -> gst::Buffer {
    let data: Vec<u8> = (0..(w * h * 4) as usize)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    let mut b = gst::Buffer::from_mut_slice(data);
    {
        let b = b.get_mut().unwrap();
        b.set_pts(pts);
        b.set_duration(gst::ClockTime::from_mseconds(33));
    }
    b
}

pub fn bgrx_caps(w: i32, h: i32) -> gst::Caps {
    gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Bgrx)
        .width(w)
        .height(h)
        .framerate(gst::Fraction::new(30, 1))
        .build()
}

/// A harness around a `vsockenc` talking to the Unix socket at `path`.
pub fn harness(path: &std::path::Path, props: &[(&str, &dyn ToValue)]) -> gst_check::Harness {
    init();
    let e = gst::ElementFactory::make("vsockenc")
        .property("socket-path", path.to_str().unwrap())
        .build()
        .unwrap();
    for (k, v) in props {
        e.set_property_from_value(k, &v.to_value());
    }
    harness_with(&e)
}

/// A harness around an already configured element (the harness starts it
/// at once, so properties must be set before).
pub fn harness_with(e: &gst::Element) -> gst_check::Harness {
    let mut h = gst_check::Harness::with_element(e, Some("sink"), Some("src"));
    h.set_src_caps(bgrx_caps(64, 48));
    h
}

/// The `stats` structure of a vsockenc element.
pub fn stats(e: &gst::Element) -> gst::Structure {
    e.property::<gst::Structure>("stats")
}

pub fn stat(e: &gst::Element, field: &str) -> u64 {
    stats(e).get::<u64>(field).unwrap()
}

/// Waits (bounded) until `pred` holds.
pub fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    pred()
}

/// Whether an output buffer is a keyframe as downstream sees it.
pub fn is_keyframe(b: &gst::BufferRef) -> bool {
    !b.flags().contains(gst::BufferFlags::DELTA_UNIT)
}

/// Collects messages of a bus until `stop` returns true for one, or the
/// timeout. Returns all messages seen.
pub fn collect_bus(
    bus: &gst::Bus,
    timeout: Duration,
    mut stop: impl FnMut(&gst::Message) -> bool,
) -> Vec<gst::Message> {
    let end = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < end {
        if let Some(m) = bus.timed_pop(gst::ClockTime::from_mseconds(20)) {
            let done = stop(&m);
            seen.push(m);
            if done {
                break;
            }
        }
    }
    seen
}
