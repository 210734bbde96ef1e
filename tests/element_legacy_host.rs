//! A legacy host never sees an extended message: a peer that behaves like
//! the legacy host (skips unknown types, answers only FRAME_REQUEST and
//! PING, never says HELLO_ACK) records everything it receives from
//! `vsockenc`. After the one HELLO, only legacy messages arrive, every frame
//! is a full FRAME_REQUEST with pixels, and every frame comes back.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::peer::canned_au;
use gst::prelude::*;
use hxfr::ext::ext_type;
use hxfr::{msg_type, Decoder, FrameResponse, Message};

#[derive(Debug, Default)]
struct Seen {
    /// Message types in arrival order, over all connections.
    types: Vec<u8>,
    frames_with_pixels: usize,
}

/// Serves connections like the legacy host: legacy decoder, answers
/// FRAME_REQUEST with a canned keyframe carrying its pts, PING with PONG.
fn legacy_host(listener: UnixListener, seen: Arc<Mutex<Seen>>) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { return };
        let seen = seen.clone();
        std::thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut w: UnixStream = s.try_clone().unwrap();
            let mut dec = Decoder::default();
            while let Ok(Some((h, m))) = dec.read_from(&mut s) {
                let mut st = seen.lock().unwrap();
                st.types.push(h.msg_type);
                let reply = match m {
                    Message::FrameRequest { request, pixels } => {
                        st.frames_with_pixels += pixels.is_some() as usize;
                        let au = canned_au(request.pts, true);
                        Some(Message::FrameResponse(FrameResponse::single(
                            request.pts,
                            request.pts,
                            true,
                            au,
                        )))
                    }
                    Message::Ping => Some(Message::Pong),
                    _ => None,
                };
                drop(st);
                if let Some(r) = reply {
                    if w.write_all(&r.encode(h.session_id)).is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[test]
fn after_the_single_hello_a_legacy_host_gets_only_legacy_messages() {
    common::init();
    let path = common::socket_path("legacy-host");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    {
        let seen = seen.clone();
        std::thread::spawn(move || legacy_host(listener, seen));
    }
    let frames = 30;
    let desc = format!(
        "videotestsrc is-live=true num-buffers={frames} pattern=ball background-color=0xff204060 ! \
         video/x-raw,format=BGRx,width=160,height=120,framerate=30/1 ! \
         vsockenc name=enc socket-path={} keyframe-interval=10 keepalive-interval=10 \
         verify-frames=true ! appsink name=out sync=false",
        path.display()
    );
    let p = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let enc = p.by_name("enc").unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let mut out = 0;
    while sink
        .try_pull_sample(gst::ClockTime::from_seconds(30))
        .is_some()
    {
        out += 1;
    }
    let stats = enc.property::<gst::Structure>("stats");
    p.set_state(gst::State::Null).unwrap();
    let _ = std::fs::remove_file(&path);

    assert_eq!(out, frames, "every frame came back; stats: {stats}");
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.types.first(),
        Some(&ext_type::HELLO),
        "the connection opens with HELLO: {:02x?}",
        seen.types
    );
    let legacy = [
        msg_type::FRAME_REQUEST,
        msg_type::CONFIG_REQ,
        msg_type::PING,
    ];
    for (i, t) in seen.types.iter().enumerate().skip(1) {
        assert!(
            legacy.contains(t),
            "message {i} has type 0x{t:02x}, not a legacy guest message: {:02x?}",
            seen.types
        );
    }
    assert_eq!(
        seen.types
            .iter()
            .filter(|&&t| t == msg_type::FRAME_REQUEST)
            .count(),
        frames
    );
    assert_eq!(
        seen.frames_with_pixels, frames,
        "all frames are full frames"
    );
    assert!(seen.types.contains(&msg_type::PING), "{:02x?}", seen.types);
    assert_eq!(stats.get::<u64>("compact-frames").unwrap(), 0);
    // Nobody answered with a checksum: nothing matched, nothing mismatched.
    assert_eq!(stats.get::<u64>("checksum-mismatches").unwrap(), 0);
}
