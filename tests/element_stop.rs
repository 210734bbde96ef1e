//! Stopping never waits: not for a wake-up (every wait of the element is on
//! one state mutex, so a stop cannot be missed), not for a host that does
//! not read (the socket is shut down under a blocked write).

mod common;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::peer::{Action, PeerBuilder};
use common::*;
use gst::prelude::*;

fn pipeline(desc: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap()
}

/// Sets the pipeline to NULL and returns how long that took.
fn time_to_null(p: &gst::Pipeline) -> Duration {
    let started = Instant::now();
    p.set_state(gst::State::Null).unwrap();
    started.elapsed()
}

#[test]
fn stopping_while_every_thread_waits_returns_at_once() {
    // A host that takes frames and never answers, a long response timeout
    // and max-in-flight=1: handle_frame waits for room, the output task for
    // an answer, the link thread for a keepalive, the reader for bytes.
    let path = socket_path("stopwait");
    let peer = PeerBuilder::unix(&path).script(|_| Action::Silence).start();
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=BGRx,width=64,height=48,framerate=30/1 \
         ! vsockenc name=enc max-in-flight=1 response-timeout=60000 socket-path={} ! fakesink",
        path.display()
    ));
    p.set_state(gst::State::Playing).unwrap();
    assert!(
        peer.wait_for(Duration::from_secs(20), |r| r.frames.len() == 1),
        "the first frame reached the host"
    );
    // Let handle_frame reach its wait for room.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(peer.record().frames.len(), 1, "the window is full");
    let took = time_to_null(&p);
    eprintln!("PLAYING -> NULL with every thread waiting: {took:?}");
    assert!(
        took < Duration::from_millis(50),
        "stopping took {took:?}: a wait did not see the stop"
    );
}

#[test]
fn stopping_while_a_write_is_blocked_on_a_host_that_does_not_read() {
    // The host accepts and never reads (a frozen VMM, a stopped daemon): a
    // 1080p frame fills the socket buffer and the write blocks.
    init();
    let path = socket_path("stopfrozen");
    let listener = UnixListener::bind(&path).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let accepted = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // Read nothing (not even the HELLO: the element gives up waiting
        // for its answer after a while); keep the connection open until the
        // test is over.
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
        let mut b = [0u8; 1];
        let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
        let _ = s.read(&mut b);
    });
    let p = pipeline(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=BGRx,width=1920,height=1080,framerate=30/1 \
         ! vsockenc name=enc response-timeout=10000 socket-path={} ! fakesink",
        path.display()
    ));
    let enc = p.by_name("enc").unwrap();
    p.set_state(gst::State::Playing).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || stat(&enc, "frames-sent") >= 1),
        "a frame is being written"
    );
    // The write of 8 MB into a socket nobody reads is blocked by now.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stat(&enc, "wire-bytes"),
        0,
        "the first frame's write never completed"
    );
    let took = time_to_null(&p);
    eprintln!("PLAYING -> NULL with a write blocked on the host: {took:?}");
    assert!(
        took < Duration::from_millis(100),
        "stopping took {took:?}: it waited on the host"
    );
    done_tx.send(()).unwrap();
    accepted.join().unwrap();
}

#[test]
fn a_flush_while_a_frame_is_in_flight_restarts_output() {
    // Flushing stops the output task and flush-stop starts it again: frames
    // sent after the flush still come out.
    let path = socket_path("flushrestart");
    let _peer = PeerBuilder::unix(&path)
        .delay(Duration::from_millis(50))
        .start();
    let mut h = harness(&path, &[]);
    for i in 0..3 {
        h.push(bgrx_buffer(
            64,
            48,
            i as u8,
            gst::ClockTime::from_mseconds(33 * i),
        ))
        .unwrap();
    }
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    // Flush-stop resets the segment: send a new one before data.
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    let after = gst::ClockTime::from_seconds(1);
    for i in 0..3u64 {
        h.push(bgrx_buffer(
            64,
            48,
            10 + i as u8,
            after + gst::ClockTime::from_mseconds(33 * i),
        ))
        .unwrap();
    }
    // Output of the frames before the flush may or may not have left.
    let mut got = 0;
    let end = Instant::now() + Duration::from_secs(20);
    while got < 3 && Instant::now() < end {
        if let Some(b) = pull(&mut h, Duration::from_millis(100)) {
            if b.pts().is_some_and(|p| p >= after) {
                got += 1;
            }
        }
    }
    assert_eq!(got, 3, "every frame sent after the flush is pushed");
}
