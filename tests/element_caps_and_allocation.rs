//! Caps changes mid-stream and what the element offers upstream in the
//! allocation query.

mod common;

use std::time::Duration;

use common::peer::PeerBuilder;
use common::*;
use gst::prelude::*;

const FRAMES_PER_SIZE: u64 = 10;

fn caps(w: i32, h: i32) -> gst::Caps {
    bgrx_caps(w, h)
}

#[test]
fn frames_in_flight_at_a_caps_change_leave_under_their_own_caps() {
    // A slow host keeps four frames in flight when the caps change; each of
    // them must be pushed under the caps it was encoded with.
    init();
    let path = socket_path("capschange");
    let _peer = PeerBuilder::unix(&path)
        .delay(Duration::from_millis(80))
        .start();
    let p = gst::parse::launch(&format!(
        "appsrc name=src format=time ! vsockenc max-in-flight=4 socket-path={} ! appsink name=out sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = p
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let out = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let sizes = [(64u32, 48u32), (80, 60)];
    let mut expected = std::collections::HashMap::new();
    for (k, (w, h)) in sizes.iter().enumerate() {
        src.set_caps(Some(&caps(*w as i32, *h as i32)));
        for i in 0..FRAMES_PER_SIZE {
            let n = k as u64 * FRAMES_PER_SIZE + i;
            let pts = gst::ClockTime::from_mseconds(33 * n);
            src.push_buffer(bgrx_buffer(*w, *h, n as u8, pts)).unwrap();
            expected.insert(pts, (*w, *h));
        }
    }
    src.end_of_stream().unwrap();
    let mut seen = 0;
    while let Some(s) = out.try_pull_sample(gst::ClockTime::from_seconds(20)) {
        let b = s.buffer().unwrap();
        let pts = b.pts().unwrap();
        let c = s.caps().unwrap().structure(0).unwrap();
        let got = (
            c.get::<i32>("width").unwrap() as u32,
            c.get::<i32>("height").unwrap() as u32,
        );
        assert_eq!(
            Some(&got),
            expected.get(&pts),
            "output at {pts} pushed under caps {got:?}"
        );
        seen += 1;
    }
    p.set_state(gst::State::Null).unwrap();
    assert_eq!(seen, 2 * FRAMES_PER_SIZE, "every frame came out");
}

#[test]
fn the_allocation_query_is_answered_with_video_meta() {
    let path = socket_path("allocq");
    let _peer = PeerBuilder::unix(&path).start();
    let h = harness(&path, &[]);
    let enc = h.element().unwrap();
    let sink = enc.static_pad("sink").unwrap();
    let mut q = gst::query::Allocation::new(Some(&caps(64, 48)), true);
    assert!(sink.query(&mut q));
    assert!(
        q.find_allocation_meta::<gst_video::VideoMeta>().is_some(),
        "upstream is told that buffers with any stride are welcome"
    );
    // Also when the query already carries a pool (the base class then
    // adds nothing of its own).
    let mut q = gst::query::Allocation::new(Some(&caps(64, 48)), true);
    let pool = gst_video::VideoBufferPool::new();
    q.add_allocation_pool(Some(&pool), 64 * 48 * 4, 0, 0);
    assert!(sink.query(&mut q));
    assert!(q.find_allocation_meta::<gst_video::VideoMeta>().is_some());
}

/// A `w`x`h` BGRx buffer whose rows are `stride` bytes apart, described by
/// a VideoMeta, with row `y` of pixel bytes `(y * 3 + x) as u8` and the
/// padding filled with 0xEE.
fn padded_bgrx(w: u32, h: u32, stride: usize) -> gst::Buffer {
    let mut data = vec![0xEEu8; stride * h as usize];
    for y in 0..h as usize {
        for x in 0..(4 * w) as usize {
            data[y * stride + x] = (y * 3 + x) as u8;
        }
    }
    let mut b = gst::Buffer::from_mut_slice(data);
    {
        let b = b.get_mut().unwrap();
        b.set_pts(gst::ClockTime::ZERO);
        b.set_duration(gst::ClockTime::from_mseconds(33));
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::Bgrx,
            w,
            h,
            &[0],
            &[stride as i32],
        )
        .unwrap();
    }
    b
}

#[test]
fn a_padded_upstream_buffer_goes_out_with_its_own_stride() {
    // Upstream used the VideoMeta offered above: rows padded to 320 bytes.
    // The element sends plane 0 as it is (the wire carries the stride), no
    // repacking copy; the host sees exactly upstream's bytes.
    let (w, h, stride) = (64u32, 48u32, 4 * 64 + 64);
    let path = socket_path("padded");
    let peer = PeerBuilder::unix(&path).keep_pixels(true).start();
    let mut hs = harness(&path, &[]);
    let input = padded_bgrx(w, h, stride);
    let expected = input.map_readable().unwrap().to_vec();
    hs.push(input).unwrap();
    assert!(pull(&mut hs, Duration::from_secs(20)).is_some());
    let rec = peer.record();
    let f = &rec.frames[0];
    assert_eq!(
        f.request.stride as usize, stride,
        "the wire stride is the buffer's"
    );
    assert_eq!(f.pixel_len, stride * h as usize);
    assert_eq!(
        f.pixels.as_deref(),
        Some(&expected[..]),
        "upstream's bytes, unchanged"
    );
}
