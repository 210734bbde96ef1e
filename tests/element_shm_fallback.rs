//! The element falls back to the socket when its shared-memory region is
//! refused (a host that accepted SHM but could not take the descriptor or
//! the region): every frame still arrives, as FRAME_REQUEST with pixels,
//! and no SHM_FRAME is ever sent. A scripted host stands in for the daemon.

mod common;

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use hxfr::ext::{ext_bits, ExtMessage, HelloAck};
use hxfr::shm::ShmAck;
use hxfr::{Decoded, Decoder, FrameResponse, Limits, Message};

#[derive(Default, Debug)]
struct Seen {
    offers: u32,
    shm_frames: u32,
    full_frames: u32,
}

fn refusing_host(l: UnixListener, seen: Arc<Mutex<Seen>>) {
    let Ok((mut s, _)) = l.accept() else { return };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut d = Decoder::with_extensions(Limits::default());
    while let Ok(Some(m)) = d.read_from_ext(&mut s) {
        let reply = match m {
            Decoded::Ext(h, ExtMessage::Hello(hello)) => Some(
                ExtMessage::HelloAck(HelloAck {
                    version: 1,
                    extensions: hello.extensions & (ext_bits::SHM | ext_bits::ERROR_PTS),
                    ..Default::default()
                })
                .encode(h.session_id),
            ),
            Decoded::Ext(h, ExtMessage::ShmOffer(o)) => {
                seen.lock().unwrap().offers += 1;
                Some(
                    ExtMessage::ShmAck(ShmAck {
                        token: o.token,
                        accepted: false,
                        reason: "no descriptor came with the memfd offer".into(),
                    })
                    .encode(h.session_id),
                )
            }
            Decoded::Ext(_, ExtMessage::ShmFrame(_)) => {
                seen.lock().unwrap().shm_frames += 1;
                None
            }
            Decoded::Legacy(h, Message::FrameRequest { request, .. }) => {
                seen.lock().unwrap().full_frames += 1;
                Some(
                    Message::FrameResponse(FrameResponse::single(
                        request.pts,
                        request.pts,
                        true,
                        common::peer::canned_au(request.pts, true),
                    ))
                    .encode(h.session_id),
                )
            }
            Decoded::Legacy(h, Message::Ping) => Some(Message::Pong.encode(h.session_id)),
            _ => None,
        };
        if let Some(r) = reply {
            if std::io::Write::write_all(&mut w, &r).is_err() {
                return;
            }
        }
    }
}

#[test]
fn a_refused_region_falls_back_to_the_socket() {
    common::init();
    let path = common::socket_path("shm-refused");
    let l = UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let host = {
        let seen = seen.clone();
        std::thread::spawn(move || refusing_host(l, seen))
    };
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=20 ! video/x-raw,format=NV12,width=160,height=120 ! \
         vsockenc name=enc socket-path={} ! fakesink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let enc = p.by_name("enc").unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let msg = p
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS in time");
    assert_eq!(msg.type_(), gst::MessageType::Eos, "{msg:?}");
    let stats = common::stats(&enc);
    p.set_state(gst::State::Null).unwrap();
    drop(p);
    let _ = host.join();
    let _ = std::fs::remove_file(&path);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.offers, 1, "{seen:?}");
    assert_eq!(seen.shm_frames, 0, "{seen:?}");
    assert_eq!(seen.full_frames, 20, "{seen:?}");
    assert_eq!(stats.get::<u64>("shm-frames").unwrap(), 0, "{stats}");
    assert_eq!(stats.get::<u64>("frames-returned").unwrap(), 20, "{stats}");
}
