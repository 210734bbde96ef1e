//! The element against a scripted host that speaks the extensions: an
//! ERROR_PTS drops exactly the frame it names (and the next frame goes out
//! in full), and at EOS the DRAIN handshake ends the stream as soon as the
//! host says everything is answered, without waiting for `response-timeout`
//! for a frame the host never answers.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peer::canned_au;
use gst::prelude::*;
use hxfr::ext::{ext_bits, ErrorPts, ExtMessage, HelloAck};
use hxfr::{msg_type, Decoded, Decoder, FrameResponse, Limits, Message};

/// What the scripted host saw: (message type, frame index) in order.
#[derive(Default, Debug)]
struct Seen {
    frames: Vec<(u8, u32, i64)>,
    drains: usize,
}

/// Serves one connection: HELLO → HELLO_ACK {COMPACT|ERROR_PTS|DRAIN};
/// frame `fail` gets ERROR_PTS, frame `silent` no answer at all, every
/// other frame a canned keyframe; DRAIN → DRAIN_DONE.
fn ext_host(listener: UnixListener, seen: Arc<Mutex<Seen>>, fail: u32, silent: u32) {
    let Ok((mut s, _)) = listener.accept() else {
        return;
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w: UnixStream = s.try_clone().unwrap();
    let mut dec = Decoder::with_extensions(Limits::default());
    let mut index = 0u32;
    while let Ok(Some(d)) = dec.read_from_ext(&mut s) {
        let reply: Option<Vec<u8>> = match d {
            Decoded::Ext(h, ExtMessage::Hello(_)) => Some(
                ExtMessage::HelloAck(HelloAck {
                    version: 1,
                    extensions: ext_bits::COMPACT | ext_bits::ERROR_PTS | ext_bits::DRAIN,
                    max_frame_bytes: 0,
                    agent: "scripted".into(),
                    ..Default::default()
                })
                .encode(h.session_id),
            ),
            Decoded::Ext(h, ExtMessage::Drain { token }) => {
                seen.lock().unwrap().drains += 1;
                Some(ExtMessage::DrainDone { token }.encode(h.session_id))
            }
            Decoded::Ext(h, ExtMessage::CompactFrame(cf)) => {
                let pts = cf.header.request.pts;
                seen.lock().unwrap().frames.push((h.msg_type, index, pts));
                index += 1;
                answer(index - 1, pts, fail, silent, h.session_id)
            }
            Decoded::Legacy(h, Message::FrameRequest { request, .. }) => {
                let pts = request.pts;
                seen.lock().unwrap().frames.push((h.msg_type, index, pts));
                index += 1;
                answer(index - 1, pts, fail, silent, h.session_id)
            }
            Decoded::Legacy(h, Message::Ping) => Some(Message::Pong.encode(h.session_id)),
            _ => None,
        };
        if let Some(r) = reply {
            if w.write_all(&r).is_err() {
                return;
            }
        }
    }
}

fn answer(index: u32, pts: i64, fail: u32, silent: u32, sid: u16) -> Option<Vec<u8>> {
    if index == fail {
        return Some(
            ExtMessage::ErrorPts(ErrorPts {
                pts,
                frame_index: index,
                code: hxfr::error_code::ENCODE_FAILED,
                message: format!("scripted failure of frame {index}"),
            })
            .encode(sid),
        );
    }
    if index == silent {
        return None;
    }
    Some(
        Message::FrameResponse(FrameResponse::single(pts, pts, true, canned_au(pts, true)))
            .encode(sid),
    )
}

#[test]
fn error_pts_drops_its_frame_and_drain_ends_eos_without_timeouts() {
    common::init();
    let path = common::socket_path("ext-peer");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (fail, silent, frames) = (5u32, 18u32, 20usize);
    let host = {
        let seen = seen.clone();
        std::thread::spawn(move || ext_host(listener, seen, fail, silent))
    };
    // A still picture: after the first frames everything goes compact.
    let desc = format!(
        "videotestsrc num-buffers={frames} pattern=colors ! \
         video/x-raw,format=BGRx,width=128,height=96,framerate=30/1 ! \
         vsockenc name=enc socket-path={} keyframe-interval=0 response-timeout=30000 ! \
         fakesink sync=false",
        path.display()
    );
    let p = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let enc = p.by_name("enc").unwrap();
    let bus = p.bus().unwrap();
    let started = Instant::now();
    p.set_state(gst::State::Playing).unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(25),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let took = started.elapsed();
    let stats = enc.property::<gst::Structure>("stats");
    p.set_state(gst::State::Null).unwrap();
    let _ = std::fs::remove_file(&path);
    drop(host);
    assert!(
        matches!(
            msg.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "no EOS: {msg:?}; stats {stats}"
    );
    // Frame 18 was never answered: without DRAIN, EOS would wait the 30 s
    // response timeout for it.
    assert!(
        took < Duration::from_secs(15),
        "EOS took {took:?}: the drain did not end it; stats {stats}"
    );
    let get = |f: &str| stats.get::<u64>(f).unwrap();
    assert_eq!(get("frames-sent"), frames as u64, "{stats}");
    assert_eq!(get("dropped-host-error"), 2, "frames 5 and 18: {stats}");
    assert_eq!(get("frames-dropped"), 2, "nothing else: {stats}");
    assert_eq!(get("dropped-timeout"), 0, "{stats}");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.drains, 1);
    assert_eq!(seen.frames.len(), frames);
    // After the ERROR_PTS for frame 5 the element sends a full frame: the
    // error may arrive only after a few more frames went out, so look for
    // the first full frame after frame 5.
    let after: Vec<u8> = seen.frames[(fail as usize + 1)..]
        .iter()
        .map(|f| f.0)
        .collect();
    assert!(
        after.contains(&msg_type::FRAME_REQUEST),
        "a full frame follows the error: {after:02x?}"
    );
    assert!(
        seen.frames[1..fail as usize]
            .iter()
            .any(|f| f.0 == hxfr::ext::ext_type::COMPACT_FRAME),
        "compact frames before the error: {:?}",
        seen.frames
    );
}
