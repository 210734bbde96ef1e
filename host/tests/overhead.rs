//! The daemon's overhead: 1080p encode throughput through `vsockenc-host`
//! against the same encoder settings in a plain `gst-launch-1.0` pipeline,
//! in the same run. Not part of the timed suite; run it on a release build:
//!
//! ```text
//! cargo test --release -p vsockenc-host --test overhead -- --ignored --nocapture
//! ```

mod common;

use std::process::Command;
use std::time::Instant;

use common::*;
use gst::prelude::*;
use hxfr::{FrameRequest, WireFormat};

const FRAMES: usize = 300;
const IN_FLIGHT: usize = 4;
/// What `vsockenc-host` sets on x264enc (see host/src/encoder.rs).
const X264: &str = "x264enc tune=zerolatency speed-preset=veryfast bframes=0 b-adapt=false \
                    rc-lookahead=0 sliced-threads=true bitrate=4000";
const SOURCE: &str = "videotestsrc horizontal-speed=8";

/// fps of `gst-launch-1.0` encoding FRAMES frames of `format` (process
/// start-up included). x264enc cannot take BGRx: `convert` adds the
/// conversion to NV12 the daemon does too. `queue` puts the test source in its own
/// thread, as the daemon's client is.
fn gst_launch_fps(format: &str, convert: bool, queue: bool) -> (f64, String) {
    let cmd = format!(
        "{SOURCE} num-buffers={FRAMES} ! video/x-raw,format={format},width=1920,height=1080,framerate=30/1 ! {}{}{X264} ! h264parse config-interval=-1 ! fakesink",
        if queue { "queue max-size-buffers=4 ! " } else { "" },
        if convert {
            "videoconvert ! video/x-raw,format=NV12 ! "
        } else {
            ""
        }
    );
    let t = Instant::now();
    let out = Command::new("timeout")
        .args(["300", "gst-launch-1.0", "-q"])
        .args(cmd.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        FRAMES as f64 / t.elapsed().as_secs_f64(),
        format!("gst-launch-1.0 {cmd}"),
    )
}

/// fps through the daemon: a client pulls the same test frames from
/// videotestsrc and keeps IN_FLIGHT frames outstanding.
fn daemon_fps(format: &str) -> f64 {
    init();
    let dir = scratch("overhead");
    let sock = dir.join("host.sock");
    let daemon = Daemon::start(&[
        "--listen",
        &format!("unix:{}", sock.display()),
        "--encoder",
        "x264enc",
    ]);
    let mut client = Client::unix(&sock);
    let pipeline = gst::parse::launch(&format!(
        "{SOURCE} num-buffers={FRAMES} ! video/x-raw,format={format},width=1920,height=1080,framerate=30/1 ! appsink name=sink sync=false max-buffers=8"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (wire, stride) = match format {
        "NV12" => (WireFormat::Nv12, 1920),
        _ => (WireFormat::Bgra, 1920 * 4),
    };
    let t = Instant::now();
    let (mut sent, mut received) = (0usize, 0usize);
    while received < FRAMES {
        while sent < FRAMES && sent - received < IN_FLIGHT {
            let sample = sink
                .try_pull_sample(gst::ClockTime::from_seconds(30))
                .expect("test frame");
            let map = sample.buffer().unwrap().map_readable().unwrap();
            let req = FrameRequest {
                resource_id: 0,
                width: 1920,
                height: 1080,
                format: wire.fourcc(),
                stride,
                pts: sent as i64 * 33_333_333,
                duration: 33_333_333,
                force_keyframe: false,
            };
            hxfr::write::write_frame_request(&mut client.stream, 1, &req, &[&map]).unwrap();
            sent += 1;
        }
        let r = client.recv_response();
        assert_eq!(r.pts, received as i64 * 33_333_333);
        received += 1;
    }
    let fps = FRAMES as f64 / t.elapsed().as_secs_f64();
    pipeline.set_state(gst::State::Null).unwrap();
    drop(daemon);
    fps
}

#[test]
#[ignore = "a measurement: run on a release build with --ignored --nocapture"]
fn overhead_1080p_x264enc() {
    for (format, convert) in [("BGRx", true), ("NV12", false)] {
        // Interleaved, so that a change of machine load hits all three.
        let (plain, cmd) = gst_launch_fps(format, convert, false);
        let (queued, qcmd) = gst_launch_fps(format, convert, true);
        let through = daemon_fps(format);
        let (plain2, _) = gst_launch_fps(format, convert, false);
        let (queued2, _) = gst_launch_fps(format, convert, true);
        let plain = (plain + plain2) / 2.0;
        let queued = (queued + queued2) / 2.0;
        println!("{format} 1920x1080, {FRAMES} frames, x264enc:");
        println!("  plain:        {plain:.1} fps (mean of two runs)  [{cmd}]");
        println!("  plain+queue:  {queued:.1} fps (mean of two runs)  [{qcmd}]");
        println!(
            "  daemon:       {through:.1} fps ({IN_FLIGHT} in flight, unix socket)  => {:.0}% of plain+queue",
            100.0 * through / queued
        );
    }
}
