//! Frames go to the host and come back: PTS, order, reordering, idle push,
//! response chunk styles, TCP, NV12 packing, CONFIG_REQ, real H.264.

mod common;

use std::time::Duration;

use common::peer::{self, Order, PeerBuilder, Style};
use common::*;
use gst::prelude::*;
use gst_video::prelude::*;

const T: Duration = Duration::from_secs(20);

fn ms(n: u64) -> gst::ClockTime {
    gst::ClockTime::from_mseconds(n)
}

#[test]
fn frames_round_trip_with_pts_and_order_intact() {
    let path = socket_path("rt");
    let peer = PeerBuilder::unix(&path).keep_pixels(true).start();
    let mut h = harness(&path, &[]);
    h.play();
    for i in 0..10u64 {
        h.push(bgrx_buffer(64, 48, i as u8, ms(i * 33))).unwrap();
    }
    for i in 0..10u64 {
        let b = pull(&mut h, T).expect("output for every input");
        assert_eq!(b.pts(), Some(ms(i * 33)), "output {i} in input order");
        let data = b.map_readable().unwrap();
        assert_eq!(
            peer::canned_pts(&data),
            Some((i * 33_000_000) as i64),
            "matched by pts"
        );
        if i == 0 {
            assert!(is_keyframe(&b), "stream starts with a keyframe");
        }
    }
    let rec = peer.record();
    assert_eq!(rec.frames.len(), 10);
    for (i, f) in rec.frames.iter().enumerate() {
        assert_eq!(f.request.pts, i as i64 * 33_000_000);
        assert_eq!(
            (f.request.width, f.request.height, f.request.stride),
            (64, 48, 256)
        );
        assert_eq!(f.request.format, hxfr::WireFormat::Bgra.fourcc());
        let expect = bgrx_buffer(64, 48, i as u8, ms(0));
        assert_eq!(
            f.pixels.as_deref().unwrap(),
            &expect.map_readable().unwrap()[..],
            "pixels of frame {i} arrive unchanged"
        );
    }
    assert!(rec.frames[0].request.force_keyframe);
    let e = h.element().unwrap();
    assert_eq!(stat(&e, "frames-sent"), 10);
    assert_eq!(stat(&e, "frames-returned"), 10);
    assert_eq!(stat(&e, "frames-dropped"), 0);
}

#[test]
fn out_of_order_responses_are_reordered() {
    let path = socket_path("ooo");
    let _peer = PeerBuilder::unix(&path)
        .order(Order::Shuffle { batch: 6, seed: 42 })
        .start();
    let mut h = harness(&path, &[("max-in-flight", &8u32)]);
    h.play();
    for i in 0..18u64 {
        h.push(bgrx_buffer(64, 48, 0, ms(i * 33))).unwrap();
    }
    for i in 0..18u64 {
        let b = pull(&mut h, T).expect("output");
        assert_eq!(b.pts(), Some(ms(i * 33)));
        let data = b.map_readable().unwrap();
        assert_eq!(peer::canned_pts(&data), Some((i * 33_000_000) as i64));
    }
}

#[test]
fn reversed_responses_and_a_host_pts_counter() {
    // Reversed batches are matched by PTS; a host numbering responses
    // itself is matched by arrival order.
    let path = socket_path("rev");
    let _peer = PeerBuilder::unix(&path).order(Order::Reverse(3)).start();
    let mut h = harness(&path, &[("max-in-flight", &4u32)]);
    h.play();
    for i in 0..9u64 {
        h.push(bgrx_buffer(64, 48, 0, ms(i * 33))).unwrap();
    }
    for i in 0..9u64 {
        let b = pull(&mut h, T).expect("output");
        assert_eq!(b.pts(), Some(ms(i * 33)));
        assert_eq!(
            peer::canned_pts(&b.map_readable().unwrap()),
            Some((i * 33_000_000) as i64)
        );
    }
    drop(h);

    let path = socket_path("ctr");
    let _peer = PeerBuilder::unix(&path).own_pts_counter().start();
    let mut h = harness(&path, &[]);
    h.play();
    for i in 0..5u64 {
        h.push(bgrx_buffer(64, 48, 0, ms(i * 33))).unwrap();
    }
    for i in 0..5u64 {
        let b = pull(&mut h, T).expect("output");
        assert_eq!(b.pts(), Some(ms(i * 33)));
        assert_eq!(
            peer::canned_pts(&b.map_readable().unwrap()),
            Some((i * 33_000_000) as i64)
        );
    }
}

#[test]
fn output_is_pushed_without_further_input() {
    let path = socket_path("idle");
    let _peer = PeerBuilder::unix(&path)
        .delay(Duration::from_millis(150))
        .start();
    let mut h = harness(&path, &[]);
    h.play();
    h.push(bgrx_buffer(64, 48, 0, ms(0))).unwrap();
    // push() returned long before the 150 ms answer: only the output thread
    // can deliver it.
    assert!(h.try_pull().is_none());
    let b = pull(&mut h, T).expect("the single frame comes out with no second input");
    assert_eq!(b.pts(), Some(ms(0)));
}

fn check_style(style: Style) {
    let path = socket_path("style");
    let _peer = PeerBuilder::unix(&path).style(style).start();
    let mut h = harness(&path, &[]);
    h.play();
    for i in 0..3u64 {
        h.push(bgrx_buffer(64, 48, 0, ms(i * 33))).unwrap();
    }
    for i in 0..3u64 {
        let b = pull(&mut h, T).expect("output");
        let data = b.map_readable().unwrap();
        let pts = (i * 33_000_000) as i64;
        assert_eq!(
            &data[..],
            &peer::canned_au(pts, i == 0)[..],
            "{style:?} response {i} becomes the exact Annex-B access unit"
        );
        let types = hxfr::nal::nal_types(&data);
        if i == 0 {
            assert_eq!(types, vec![7, 8, 5]);
        } else {
            assert_eq!(types, vec![1]);
        }
    }
}

#[test]
fn legacy_avcc_responses_come_out_as_annexb() {
    check_style(Style::Avcc);
}

#[test]
fn bare_nal_responses_come_out_as_annexb() {
    check_style(Style::BareNal);
}

#[test]
fn round_trip_over_tcp() {
    init();
    let peer = PeerBuilder::tcp().start();
    let e = gst::ElementFactory::make("vsockenc")
        .property("tcp-host", "127.0.0.1")
        .property("tcp-port", peer.tcp_port() as u32)
        .build()
        .unwrap();
    let mut h = harness_with(&e);
    h.play();
    for i in 0..5u64 {
        h.push(bgrx_buffer(64, 48, 0, ms(i * 33))).unwrap();
    }
    for i in 0..5u64 {
        let b = pull(&mut h, T).expect("output over TCP");
        assert_eq!(b.pts(), Some(ms(i * 33)));
    }
    assert_eq!(peer.record().frames.len(), 5);
}

#[test]
fn config_request_carries_bitrate_in_bits_per_second() {
    let path = socket_path("cfg");
    let peer = PeerBuilder::unix(&path).start();
    let mut h = harness(&path, &[("bitrate", &2500i32)]);
    h.play();
    h.push(bgrx_buffer(64, 48, 0, ms(0))).unwrap();
    pull(&mut h, T).expect("output");
    let rec = peer.record();
    assert_eq!(rec.configs.len(), 1, "one CONFIG_REQ after negotiation");
    let c = rec.configs[0].1;
    assert_eq!((c.width, c.height), (64, 48));
    assert_eq!(c.bitrate, 2_500_000);
    assert_eq!((c.framerate_num, c.framerate_den), (30, 1));
    assert!(c.realtime);
}

#[test]
fn padded_nv12_arrives_tightly_packed() {
    init();
    let path = socket_path("nv12");
    let peer = PeerBuilder::unix(&path).keep_pixels(true).start();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=3 pattern=smpte ! video/x-raw,format=NV12,width=33,height=17,framerate=30/1 ! \
         tee name=t ! queue ! vsockenc socket-path={} ! fakesink \
         t. ! queue ! appsink name=raw sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let raw = pipeline
        .by_name("raw")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut inputs = Vec::new();
    for _ in 0..3 {
        let s = raw
            .try_pull_sample(gst::ClockTime::from_seconds(20))
            .expect("raw frame");
        let info = gst_video::VideoInfo::from_caps(s.caps().unwrap()).unwrap();
        let f =
            gst_video::VideoFrameRef::from_buffer_ref_readable(s.buffer().unwrap(), &info).unwrap();
        // Tightly packed: rows of 34 bytes (33 rounded up to even).
        let mut tight = Vec::new();
        for (plane, rows) in [(0u32, 17usize), (1, 9)] {
            let stride = f.plane_stride()[plane as usize] as usize;
            assert!(stride > 34, "GStreamer pads NV12 rows here ({stride})");
            let d = f.plane_data(plane).unwrap();
            for r in 0..rows {
                tight.extend_from_slice(&d[r * stride..r * stride + 34]);
            }
        }
        inputs.push(tight);
    }
    let bus = pipeline.bus().unwrap();
    let msgs = collect_bus(&bus, T, |m| {
        matches!(
            m.view(),
            gst::MessageView::Eos(_) | gst::MessageView::Error(_)
        )
    });
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        msgs.iter()
            .any(|m| matches!(m.view(), gst::MessageView::Eos(_))),
        "EOS: {msgs:?}"
    );
    let rec = peer.record();
    assert_eq!(rec.frames.len(), 3);
    for (f, want) in rec.frames.iter().zip(&inputs) {
        assert_eq!(f.request.stride, 34);
        assert_eq!(f.request.format, hxfr::WireFormat::Nv12.fourcc());
        assert_eq!(f.pixel_len, 34 * 17 + 34 * 9);
        assert_eq!(f.pixels.as_deref().unwrap(), &want[..]);
    }
}

#[test]
fn real_h264_round_trip_decodes() {
    init();
    let path = socket_path("x264");
    let _peer = PeerBuilder::unix(&path).x264().start();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=20 ! video/x-raw,format=BGRx,width=160,height=120,framerate=30/1 ! \
         vsockenc socket-path={} ! h264parse ! avdec_h264 ! appsink name=out sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let out = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut decoded = Vec::new();
    while let Some(s) = out.try_pull_sample(gst::ClockTime::from_seconds(20)) {
        decoded.push(s.buffer().unwrap().pts().unwrap());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(decoded.len(), 20, "every frame decodes");
    for (i, pts) in decoded.iter().enumerate() {
        assert_eq!(
            pts.nseconds(),
            gst::ClockTime::SECOND.nseconds() * i as u64 / 30
        );
    }
}

#[test]
fn keyframe_interval_and_force_key_unit_events_set_force_keyframe() {
    let path = socket_path("kf");
    let peer = PeerBuilder::unix(&path).start();
    let mut h = harness(&path, &[("keyframe-interval", &5i32)]);
    h.play();
    for i in 0..12u64 {
        if i == 7 {
            h.push_event(
                gst_video::DownstreamForceKeyUnitEvent::builder()
                    .all_headers(true)
                    .build(),
            );
        }
        h.push(bgrx_buffer(64, 48, 0, ms(i * 33))).unwrap();
    }
    for i in 0..12u64 {
        let b = pull(&mut h, T).expect("output");
        assert_eq!(b.pts(), Some(ms(i * 33)));
    }
    let forced: Vec<usize> = peer
        .record()
        .frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.request.force_keyframe)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        forced,
        vec![0, 5, 7],
        "first frame, every 5th, and the event"
    );
}
