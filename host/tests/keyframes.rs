//! A FRAME_RESPONSE is flagged as a keyframe exactly when its access unit
//! holds an IDR slice: the I slices x264 puts at scene cuts need the
//! pictures before them, and a guest that starts a fragment or a decoder
//! there gets garbage (issue 12, defect 1).

mod common;

use common::*;
use gst::prelude::*;
use hxfr::{FrameRequest, WireFormat};

const NAL_IDR: u8 = 5;
const SLICE_I: u32 = 2;

/// The content the issue measured: 1280x720 SMPTE bars moving 4 pixels a
/// frame, as NV12 frames from videotestsrc.
fn smpte_frames(n: usize) -> Vec<Vec<u8>> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc pattern=smpte horizontal-speed=4 num-buffers={n} \
         ! video/x-raw,format=NV12,width=1280,height=720,framerate=30/1 \
         ! appsink name=sink sync=false"
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
    let mut frames = Vec::new();
    while let Some(s) = sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
        frames.push(s.buffer().unwrap().map_readable().unwrap().to_vec());
        if frames.len() == n {
            break;
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(frames.len(), n);
    frames
}

#[test]
fn only_access_units_with_an_idr_slice_are_keyframes() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut client = Client::tcp(daemon.tcp());
    let frames = smpte_frames(90);
    let mut responses = Vec::new();
    for (i, px) in frames.iter().enumerate() {
        let req = FrameRequest {
            width: 1280,
            height: 720,
            format: WireFormat::Nv12.fourcc(),
            stride: 1280,
            pts: i as i64 * 33_333_333,
            duration: 33_333_333,
            // The element's default keyframe-interval (60) forces these.
            force_keyframe: i % 60 == 0,
            ..Default::default()
        };
        client.send_frame(&req, px);
        responses.push(client.recv_response());
    }
    let mut flagged = Vec::new();
    let mut idr = Vec::new();
    let mut scene_cuts = Vec::new();
    for (i, r) in responses.iter().enumerate() {
        let au = r.annexb();
        let slices = slice_types(&au);
        assert!(!slices.is_empty(), "response {i} has slices");
        if r.is_keyframe {
            flagged.push(i);
        }
        if slices.iter().any(|(t, _)| *t == NAL_IDR) {
            idr.push(i);
        } else if slices.iter().all(|(_, s)| *s == SLICE_I) {
            scene_cuts.push(i);
        }
    }
    eprintln!(
        "90 frames of 1280x720 smpte horizontal-speed=4: {} flagged as keyframes, {} with an IDR slice, {} non-IDR I pictures",
        flagged.len(),
        idr.len(),
        scene_cuts.len()
    );
    assert!(
        !scene_cuts.is_empty(),
        "the content must make x264 insert non-IDR I pictures, or this test proves nothing"
    );
    assert_eq!(
        flagged, idr,
        "keyframe flag on exactly the IDR access units"
    );
    assert!(
        idr.contains(&0) && idr.contains(&60),
        "forced keyframes are IDR: {idr:?}"
    );
}
