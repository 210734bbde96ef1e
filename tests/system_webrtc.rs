//! A real WebRTC consumer: `vsockenc ! rtph264pay ! webrtcbin`, answered to
//! a second `webrtcbin` in the same process whose SDP offer asks for
//! constrained baseline (`profile-level-id=42e01f`), as browsers do. Frames
//! are decoded on the receiving side.

mod sys;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use sys::daemon::{Daemon, Transport};
use sys::pipeline;
use sys::tempdir::TempDir;

/// What the receiving browser offers: H.264 constrained baseline level 3.1,
/// packetization mode 1.
const OFFERED: &str = "application/x-rtp,media=video,encoding-name=H264,payload=96,\
                       clock-rate=90000,packetization-mode=(string)1,\
                       profile-level-id=(string)42e01f";

// The session descriptions are handled as opaque values (the typed
// bindings would need gstreamer-plugins-bad's development files).

fn set_description(bin: &gst::Element, signal: &str, sdp: &gst::glib::SendValue) {
    let promise = gst::Promise::new();
    bin.emit_by_name_with_values(signal, &[sdp.to_value(), promise.to_value()]);
    promise.wait();
}

/// Emits `create-offer`/`create-answer` and returns the description.
fn create(bin: &gst::Element, signal: &str, field: &str) -> gst::glib::SendValue {
    let promise = gst::Promise::new();
    bin.emit_by_name::<()>(signal, &[&None::<gst::Structure>, &promise]);
    assert_eq!(promise.wait(), gst::PromiseResult::Replied, "{signal}");
    promise
        .get_reply()
        .and_then(|r| r.value(field).ok().cloned())
        .unwrap_or_else(|| panic!("{signal} gave no {field}"))
}

#[test]
fn webrtc_peer_asking_for_constrained_baseline_receives_it_and_decodes_it() {
    sys::init();
    for f in ["webrtcbin", "rtph264pay", "rtph264depay", "nicesrc"] {
        assert!(
            gst::ElementFactory::find(f).is_some(),
            "{f} is missing: gstreamer1.0-plugins-bad/-good and gstreamer1.0-nice"
        );
    }
    let dir = TempDir::new("webrtc");
    let daemon = Daemon::start(Transport::Unix, &dir, &["--encoder", "x264enc"]);
    // The sender follows the offer it will answer: its payloader is held
    // to the offered profile-level-id, which rtph264pay turns into
    // `profile=constrained-baseline` (up to level 3.1) for vsockenc.
    let p = pipeline::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! \
           video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! \
         vsockenc name=enc {props} ! rtph264pay config-interval=-1 aggregate-mode=zero-latency ! \
           {OFFERED} ! webrtcbin name=send bundle-policy=max-bundle \
         webrtcbin name=recv bundle-policy=max-bundle",
        props = daemon.addr.element_props()
    ));
    let send = pipeline::element(&p, "send");
    let recv = pipeline::element(&p, "recv");

    // ICE candidates go straight to the other side.
    for (from, to) in [(&send, &recv), (&recv, &send)] {
        let to = to.downgrade();
        from.connect("on-ice-candidate", false, move |v| {
            let mline = v[1].get::<u32>().unwrap();
            let cand = v[2].get::<String>().unwrap();
            if let Some(to) = to.upgrade() {
                to.emit_by_name::<()>("add-ice-candidate", &[&mline, &cand]);
            }
            None
        });
    }

    // The receiving side decodes what arrives and counts the frames.
    let decoded = Arc::new(AtomicUsize::new(0));
    let received_caps: Arc<Mutex<Option<gst::Caps>>> = Arc::default();
    {
        let (decoded, received_caps) = (decoded.clone(), received_caps.clone());
        let pipe = p.downgrade();
        recv.connect_pad_added(move |_, pad| {
            if pad.direction() != gst::PadDirection::Src {
                return;
            }
            let Some(pipe) = pipe.upgrade() else { return };
            let bin = gst::parse::bin_from_description(
                "rtph264depay ! h264parse name=parse ! avdec_h264 ! appsink name=frames sync=false",
                true,
            )
            .unwrap();
            let sink = bin
                .by_name("frames")
                .unwrap()
                .downcast::<gst_app::AppSink>()
                .unwrap();
            let d = decoded.clone();
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |s| {
                        s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        d.fetch_add(1, Ordering::SeqCst);
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            let rc = received_caps.clone();
            bin.by_name("parse")
                .unwrap()
                .static_pad("src")
                .unwrap()
                .connect_notify(Some("caps"), move |pad, _| {
                    *rc.lock().unwrap() = pad.current_caps();
                });
            pipe.add(&bin).unwrap();
            bin.sync_state_with_parent().unwrap();
            pad.link(&bin.static_pad("sink").unwrap()).unwrap();
        });
    }

    // The receiver offers to receive H.264 constrained baseline level 3.1
    // only (its SDP's profile-level-id comes from these caps).
    let caps: gst::Caps = OFFERED.parse().unwrap();
    let direction = gst::glib::EnumClass::with_type(
        gst::glib::Type::from_name("GstWebRTCRTPTransceiverDirection").unwrap(),
    )
    .unwrap()
    .to_value_by_nick("recvonly")
    .unwrap();
    recv.emit_by_name_with_values("add-transceiver", &[direction, caps.to_value()]);
    pipeline::play(&p);

    let offer = create(&recv, "create-offer", "offer");
    set_description(&recv, "set-local-description", &offer);
    set_description(&send, "set-remote-description", &offer);
    let answer = create(&send, "create-answer", "answer");
    set_description(&send, "set-local-description", &answer);
    set_description(&recv, "set-remote-description", &answer);

    let want = 60;
    let deadline = Instant::now() + Duration::from_secs(60);
    while decoded.load(Ordering::SeqCst) < want && Instant::now() < deadline {
        if let Some(e) = pipeline::pending_errors(&p).first() {
            panic!("{e}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let enc = pipeline::element(&p, "enc");
    let enc_caps = enc.static_pad("src").unwrap().current_caps();
    let got = decoded.load(Ordering::SeqCst);
    let rcaps = received_caps.lock().unwrap().clone();
    pipeline::shutdown(&p);
    eprintln!("decoded {got} frames; vsockenc caps {enc_caps:?}; received {rcaps:?}");
    assert!(got >= want, "the receiving peer decoded {got} frames");
    let enc_caps = enc_caps.expect("vsockenc negotiated");
    let s = enc_caps.structure(0).unwrap();
    assert_eq!(s.get::<String>("profile").unwrap(), "constrained-baseline");
    let level = hxfr::profile::Level::from_name(&s.get::<String>("level").unwrap()).unwrap();
    assert!(
        level <= hxfr::profile::Level::from_name("3.1").unwrap(),
        "{enc_caps}"
    );
    let rcaps = rcaps.expect("the receiver parsed the stream");
    assert_eq!(
        rcaps
            .structure(0)
            .unwrap()
            .get::<String>("profile")
            .unwrap(),
        "constrained-baseline",
        "what the browser asked for arrived: {rcaps}"
    );
}
