//! Flow control and the stream lock: saturation with a slow host, EOS with
//! frames in flight, and flushing seeks / state changes while blocked.

mod common;

use std::time::{Duration, Instant};

use common::peer::{Action, PeerBuilder};
use common::*;
use gst::prelude::*;

const T: Duration = Duration::from_secs(30);

fn pipeline(desc: &str) -> (gst::Pipeline, gst::Element) {
    init();
    let p = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let enc = p.by_name("enc").unwrap();
    (p, enc)
}

fn raw(n: Option<u32>) -> String {
    let nb = n.map_or(String::new(), |n| format!(" num-buffers={n}"));
    format!("videotestsrc{nb} ! video/x-raw,format=BGRx,width=64,height=48,framerate=30/1")
}

fn eos_or_error(p: &gst::Pipeline, timeout: Duration) -> Vec<gst::Message> {
    collect_bus(&p.bus().unwrap(), timeout, |m| {
        matches!(
            m.view(),
            gst::MessageView::Eos(_) | gst::MessageView::Error(_)
        )
    })
}

fn has_eos(msgs: &[gst::Message]) -> bool {
    msgs.iter()
        .any(|m| matches!(m.view(), gst::MessageView::Eos(_)))
}

#[test]
fn saturation_with_a_slow_host_does_not_deadlock() {
    let path = socket_path("sat");
    let peer = PeerBuilder::unix(&path)
        .delay(Duration::from_millis(15))
        .start();
    let (p, enc) = pipeline(&format!(
        "{} ! vsockenc name=enc max-in-flight=2 socket-path={} ! appsink name=out sync=false",
        raw(Some(40)),
        path.display()
    ));
    let out = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let mut pts = Vec::new();
    while let Some(s) = out.try_pull_sample(gst::ClockTime::from_seconds(20)) {
        pts.push(s.buffer().unwrap().pts().unwrap());
        if pts.len() == 40 {
            break;
        }
    }
    let msgs = eos_or_error(&p, T);
    let rec = peer.record();
    let sent = stat(&enc, "frames-sent");
    p.set_state(gst::State::Null).unwrap();
    assert!(has_eos(&msgs), "EOS reached: {msgs:?}");
    assert_eq!(pts.len(), 40, "every frame comes out");
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "in input order");
    assert_eq!(sent, 40);
    assert!(
        rec.max_outstanding <= 2,
        "never more than max-in-flight at the host: {}",
        rec.max_outstanding
    );
    assert_eq!(rec.max_outstanding, 2, "the window is actually used");
}

#[test]
fn eos_with_frames_in_flight_drains_them() {
    let path = socket_path("eosd");
    let _peer = PeerBuilder::unix(&path)
        .delay(Duration::from_millis(300))
        .start();
    let (p, _enc) = pipeline(&format!(
        "{} ! vsockenc name=enc socket-path={} ! appsink name=out sync=false",
        raw(Some(3)),
        path.display()
    ));
    let out = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    // appsink posts EOS only once its queue is empty: pull first.
    let mut n = 0;
    while out
        .try_pull_sample(gst::ClockTime::from_seconds(20))
        .is_some()
    {
        n += 1;
    }
    let msgs = eos_or_error(&p, T);
    p.set_state(gst::State::Null).unwrap();
    assert!(has_eos(&msgs), "{msgs:?}");
    assert_eq!(n, 3, "frames in flight at EOS are delivered before EOS");
}

#[test]
fn eos_with_a_silent_host_finishes_in_bounded_time() {
    let path = socket_path("eoss");
    let _peer = PeerBuilder::unix(&path).script(|_| Action::Silence).start();
    let (p, enc) = pipeline(&format!(
        "{} ! vsockenc name=enc response-timeout=500 socket-path={} ! fakesink",
        raw(Some(5)),
        path.display()
    ));
    let start = Instant::now();
    p.set_state(gst::State::Playing).unwrap();
    let msgs = eos_or_error(&p, T);
    let elapsed = start.elapsed();
    let dropped = stat(&enc, "dropped-timeout");
    p.set_state(gst::State::Null).unwrap();
    assert!(has_eos(&msgs), "{msgs:?}");
    assert!(elapsed < Duration::from_secs(10), "EOS took {elapsed:?}");
    assert_eq!(dropped, 5);
}

/// A pipeline whose vsockenc is blocked in handle_frame: max-in-flight 1,
/// the host never answers, the response timeout is a minute.
fn blocked_pipeline(tag: &str) -> (gst::Pipeline, gst::Element, common::peer::Peer) {
    let path = socket_path(tag);
    let peer = PeerBuilder::unix(&path).script(|_| Action::Silence).start();
    let (p, enc) = pipeline(&format!(
        "{} ! vsockenc name=enc max-in-flight=1 response-timeout=60000 socket-path={} ! fakesink",
        raw(None),
        path.display()
    ));
    let _ = p.set_state(gst::State::Playing);
    assert!(
        peer.wait_for(T, |r| !r.frames.is_empty()),
        "first frame sent"
    );
    // Give the streaming thread time to block on the second frame.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(peer.record().frames.len(), 1, "blocked on capacity");
    (p, enc, peer)
}

#[test]
fn flushing_seek_while_blocked_returns_promptly() {
    let (p, enc, peer) = blocked_pipeline("seek");
    let start = Instant::now();
    let seeked = p.seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO);
    let elapsed = start.elapsed();
    assert!(seeked.is_ok(), "seek handled");
    assert!(
        elapsed < Duration::from_secs(10),
        "flushing seek took {elapsed:?}"
    );
    // Streaming resumed after the flush: another frame goes out.
    assert!(
        peer.wait_for(T, |r| r.frames.len() >= 2),
        "streaming resumes after the flush"
    );
    let start = Instant::now();
    p.set_state(gst::State::Null).unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(enc);
}

#[test]
fn state_change_while_blocked_returns_promptly() {
    let (p, _enc, _peer) = blocked_pipeline("state");
    let start = Instant::now();
    assert!(p.set_state(gst::State::Null).is_ok());
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "PLAYING->NULL took {elapsed:?}"
    );
}

#[test]
fn reported_latency_follows_a_slow_host() {
    let path = socket_path("lat");
    let _peer = PeerBuilder::unix(&path)
        .delay(Duration::from_millis(80))
        .start();
    let (p, enc) = pipeline(&format!(
        "{} ! vsockenc name=enc max-in-flight=8 response-timeout=3000 socket-path={} ! fakesink sync=false",
        raw(Some(40)),
        path.display()
    ));
    p.set_state(gst::State::Playing).unwrap();
    let msgs = eos_or_error(&p, T);
    let enc = enc.downcast::<gst_video::VideoEncoder>().unwrap();
    let (min, max) = gst_video::prelude::VideoEncoderExtManual::latency(&enc);
    p.set_state(gst::State::Null).unwrap();
    assert!(has_eos(&msgs), "{msgs:?}");
    assert!(
        min >= gst::ClockTime::from_mseconds(80),
        "min latency {min} covers the 80 ms host"
    );
    // The measured answer time, not rounded up to whole frames: the
    // element holds no frame back on top of the host.
    assert!(
        min < gst::ClockTime::from_mseconds(80 + 33),
        "min latency {min} adds no frame period to the 80 ms host"
    );
    assert_eq!(min.nseconds() % 1_000_000, 0, "whole milliseconds: {min}");
    assert_eq!(max, Some(gst::ClockTime::from_seconds(3)));
}

#[test]
fn reader_keeps_reading_while_downstream_blocks_the_stream_lock() {
    // appsink holds one buffer and then blocks the push, which holds the
    // encoder's stream lock. The socket reader must still take in every
    // answer: it never touches that lock.
    let path = socket_path("block");
    let peer = PeerBuilder::unix(&path)
        .delay(Duration::from_millis(100))
        .start();
    let (p, enc) = pipeline(&format!(
        "{} ! vsockenc name=enc max-in-flight=4 socket-path={} ! appsink name=out sync=false max-buffers=1",
        raw(Some(10)),
        path.display()
    ));
    let out = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(
        wait_until(T, || stat(&enc, "frames-returned") >= 4),
        "all four frames in flight are answered while output is blocked"
    );
    assert_eq!(stat(&enc, "frames-dropped"), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        peer.record().frames.len() < 10,
        "the stream really is blocked downstream"
    );
    let mut n = 0;
    while out
        .try_pull_sample(gst::ClockTime::from_seconds(20))
        .is_some()
    {
        n += 1;
    }
    let msgs = eos_or_error(&p, T);
    p.set_state(gst::State::Null).unwrap();
    assert!(has_eos(&msgs), "{msgs:?}");
    assert_eq!(n, 10);
}
