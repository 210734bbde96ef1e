//! The recipe of the README's "encodebin and transcodebin" section, as
//! written there: raise vsockenc's rank above the software encoders and
//! give it its address through the encoding profile's element-properties.

mod sys;

use std::time::Duration;

use gst::prelude::*;

use sys::daemon::{Daemon, Transport};
use sys::pipeline;
use sys::tempdir::TempDir;

/// Whether `bin` holds a vsockenc, at any depth.
fn holds_vsockenc(bin: &gst::Bin) -> bool {
    bin.iterate_recurse()
        .into_iter()
        .flatten()
        .any(|e| e.factory().is_some_and(|f| f.name() == "vsockenc"))
}

/// Decoded frames of an MP4 file.
fn decoded_frames(path: &std::path::Path) -> usize {
    let p = pipeline::launch(&format!(
        "filesrc location={} ! qtdemux ! h264parse ! avdec_h264 ! appsink name=out sync=false",
        path.display()
    ));
    let out = sys::frames::AuCollector::attach(&p, "out");
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    pipeline::shutdown(&p);
    r.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out.len()
}

#[test]
fn encodebin_and_uritranscodebin_pick_vsockenc_from_the_profile() {
    sys::init();
    let dir = TempDir::new("encodebin");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    let socket = dir.join("host.sock");
    // GST_PLUGIN_FEATURE_RANK=vsockenc:300 does the same from outside.
    gst::Registry::get()
        .lookup_feature("vsockenc")
        .expect("vsockenc registered")
        .set_rank(gst::Rank::from(300));
    let profile = format!(
        "video/quicktime,variant=iso:video/x-h264|element-properties,socket-path={}",
        socket.display()
    );

    let first = dir.join("encodebin.mp4");
    let p = pipeline::launch(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         encodebin name=eb profile=\"{profile}\" ! filesink location={}",
        first.display()
    ));
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    let picked = holds_vsockenc(p.by_name("eb").unwrap().downcast_ref::<gst::Bin>().unwrap());
    pipeline::shutdown(&p);
    r.unwrap();
    assert!(picked, "encodebin used vsockenc");
    assert_eq!(decoded_frames(&first), 30);

    if gst::ElementFactory::find("uritranscodebin").is_none() {
        panic!("uritranscodebin is missing (gstreamer1.0-plugins-bad)");
    }
    let second = dir.join("transcoded.mp4");
    let p = pipeline::launch(&format!(
        "uritranscodebin source-uri=file://{} dest-uri=file://{} profile=\"{profile}\"",
        first.display(),
        second.display()
    ));
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    // A lone element: gst::parse::launch returns uritranscodebin itself
    // (it is a pipeline).
    let picked = holds_vsockenc(p.upcast_ref());
    pipeline::shutdown(&p);
    r.unwrap();
    assert!(picked, "uritranscodebin used vsockenc");
    assert_eq!(decoded_frames(&second), 30);
    let connections = daemon
        .log()
        .iter()
        .filter(|l| l.contains(": connected"))
        .count();
    assert_eq!(connections, 2, "both went through the daemon");
}
