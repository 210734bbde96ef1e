//! System tests of `vsockh265enc` and `vsockav1enc` with the real daemon
//! and the software encoders Debian has (x265enc, av1enc):
//!
//! * the stream decodes (`avdec_h265`, `av1dec`) to the input frames, by
//!   PSNR, one frame per input frame, with the codec's caps;
//! * keyframes come exactly at `keyframe-interval`, flagged as sync points,
//!   and are IDR pictures with VPS/SPS/PPS (H.265) or key frames with their
//!   sequence header (AV1); no other frame is flagged;
//! * downstream's `profile=main-10` is asked for and produced (10-bit);
//! * a bitrate change while PLAYING reaches the encoder;
//! * a host that cannot encode the codec (a legacy host, a daemon run with
//!   `--h265-encoder none`) is an error that says so, and gets no frame.
//!
//! Sizes are small (320x240, 20 to 30 frames): x265 and libaom are slow on
//! a loaded 2-core machine.

mod common;
mod sys;

use std::time::{Duration, Instant};

use gst::prelude::*;
use hxfr::Codec;

use sys::daemon::{Daemon, Transport};
use sys::frames::{frame_psnr, AuCollector, FrameCollector};
use sys::pipeline::{self, Stats};
use sys::tempdir::TempDir;

const FRAMES: usize = 20;
const KEYFRAME_INTERVAL: usize = 8;
/// Mean luma PSNR of the decoded frames against the input at 2 Mbit/s for
/// 320x240 SMPTE bars in motion (x265 and libaom reach 40 dB and more).
const MIN_MEAN_PSNR_DB: f64 = 32.0;
/// No single frame (chroma included) may be far off.
const MIN_FRAME_PSNR_DB: f64 = 26.0;

fn decoder(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => "h264parse ! avdec_h264",
        Codec::H265 => "h265parse ! avdec_h265",
        Codec::Av1 => "av1parse ! av1dec",
    }
}

fn init() {
    sys::init();
    for f in [
        "vsockh265enc",
        "vsockav1enc",
        "x265enc",
        "av1enc",
        "avdec_h265",
        "av1dec",
        "h265parse",
        "av1parse",
    ] {
        assert!(
            gst::ElementFactory::find(f).is_some(),
            "`{f}` is missing (gstreamer1.0-plugins-bad, gstreamer1.0-libav: scripts/setup.sh)"
        );
    }
}

/// Encodes `FRAMES` moving SMPTE frames through the daemon with the
/// element of `codec`, keeps the units and decodes them beside the input.
fn decodes_to_the_input(codec: Codec) {
    init();
    let dir = TempDir::new("codecs");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    let desc = format!(
        "videotestsrc num-buffers={FRAMES} pattern=smpte horizontal-speed=3 ! \
           video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! tee name=t \
         t. ! queue ! appsink name=ref sync=false \
         t. ! queue ! {el} name=enc {props} bitrate=2000 keyframe-interval={KEYFRAME_INTERVAL} \
              response-timeout=20000 ! tee name=e \
         e. ! queue ! appsink name=units sync=false \
         e. ! queue ! {dec} ! videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false",
        el = gstvsockenc::vsockenc::element_name(codec),
        dec = decoder(codec),
        props = daemon.addr.element_props()
    );
    let p = pipeline::launch(&desc);
    let reference = FrameCollector::attach(&p, "ref");
    let output = FrameCollector::attach(&p, "out");
    let units = AuCollector::attach(&p, "units");
    let enc = pipeline::element(&p, "enc");
    pipeline::play(&p);
    let result = pipeline::wait_eos(&p, Duration::from_secs(120));
    let stats = Stats::of(&enc);
    pipeline::shutdown(&p);
    if let Err(e) = result {
        panic!(
            "{codec}: no EOS: {e}\nstats: {stats}\ndaemon: {:?}",
            daemon.log()
        );
    }

    let caps = units.caps().expect("caps on the encoded stream");
    let s = caps.structure(0).unwrap();
    assert_eq!(s.name(), codec.media_type(), "{caps}");
    let (format, alignment) = codec.stream_format();
    assert_eq!(s.get::<String>("stream-format").unwrap(), format);
    assert_eq!(s.get::<String>("alignment").unwrap(), alignment);
    assert_eq!(
        s.get::<String>("profile").unwrap(),
        "main",
        "the stream's profile is in the caps: {caps}"
    );

    let units = units.aus();
    assert_eq!(
        units.len(),
        FRAMES,
        "{codec}: one unit per frame; stats {stats}"
    );
    for (i, u) in units.iter().enumerate() {
        let due = i % KEYFRAME_INTERVAL == 0;
        assert_eq!(
            u.keyframe_flag, due,
            "{codec}: frame {i} flagged keyframe={} (interval {KEYFRAME_INTERVAL})",
            u.keyframe_flag
        );
        assert_eq!(
            codec.is_keyframe(&u.data),
            due,
            "{codec}: frame {i}: what the unit is agrees with the flag"
        );
        if due {
            let info = codec
                .stream_info(&u.data)
                .unwrap_or_else(|| panic!("{codec}: keyframe {i} carries its parameter sets"));
            assert_eq!((info.chroma_format_idc, info.bit_depth_luma), (1, 8));
        }
    }
    if codec == Codec::H265 {
        for (i, u) in units.iter().enumerate().step_by(KEYFRAME_INTERVAL) {
            assert!(
                matches!(
                    hxfr::h265::picture_type(&u.data),
                    Some(hxfr::h265::nal_type::IDR_W_RADL | hxfr::h265::nal_type::IDR_N_LP)
                ),
                "H.265 keyframe {i} is an IDR picture, not a CRA"
            );
        }
    }

    let (reference, output) = (reference.frames(), output.frames());
    assert_eq!(reference.len(), FRAMES);
    assert_eq!(output.len(), FRAMES, "{codec}: every frame decodes");
    let mut sum_y = 0.0;
    for (i, (r, o)) in reference.iter().zip(&output).enumerate() {
        let psnr = frame_psnr(r, o);
        for (plane, v) in psnr.iter().enumerate() {
            assert!(
                *v >= MIN_FRAME_PSNR_DB,
                "{codec}: frame {i} plane {plane} PSNR {v:.1} dB"
            );
        }
        sum_y += psnr[0];
    }
    let mean = sum_y / FRAMES as f64;
    eprintln!(
        "{codec} via {}: mean luma PSNR {mean:.1} dB over {FRAMES} frames",
        codec.name()
    );
    assert!(mean >= MIN_MEAN_PSNR_DB, "{codec}: mean PSNR {mean:.1} dB");
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains(&format!("encoding {codec} with"))),
        "the daemon says which codec and encoder: {:?}",
        daemon.log()
    );
}

#[test]
fn h265_stream_decodes_to_the_input_with_idr_keyframes_at_the_interval() {
    decodes_to_the_input(Codec::H265);
}

#[test]
fn av1_stream_decodes_to_the_input_with_key_frames_at_the_interval() {
    decodes_to_the_input(Codec::Av1);
}

#[test]
fn h265_main_10_is_asked_for_and_produced() {
    init();
    let dir = TempDir::new("main10");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    let p = pipeline::launch(&format!(
        "videotestsrc num-buffers=10 pattern=smpte ! \
           video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! \
         vsockh265enc name=enc {props} response-timeout=20000 ! \
           video/x-h265,profile=main-10 ! tee name=e \
         e. ! queue ! appsink name=units sync=false \
         e. ! queue ! h265parse ! avdec_h265 ! appsink name=raw sync=false",
        props = daemon.addr.element_props()
    ));
    let units = AuCollector::attach(&p, "units");
    let raw = AuCollector::attach(&p, "raw");
    pipeline::play(&p);
    let result = pipeline::wait_eos(&p, Duration::from_secs(90));
    pipeline::shutdown(&p);
    result.unwrap_or_else(|e| panic!("{e}\ndaemon: {:?}", daemon.log()));
    let caps = units.caps().unwrap();
    assert_eq!(
        caps.structure(0).unwrap().get::<String>("profile").unwrap(),
        "main-10"
    );
    let first = &units.aus()[0];
    let info = Codec::H265.stream_info(&first.data).unwrap();
    assert_eq!(info.profile.idc, 2, "general_profile_idc 2: Main 10");
    assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (10, 10));
    let raw_caps = raw.caps().unwrap();
    let format = raw_caps
        .structure(0)
        .unwrap()
        .get::<String>("format")
        .unwrap();
    assert!(format.contains("10"), "decoded as 10-bit: {raw_caps}");
    assert_eq!(raw.len(), 10);
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("PROFILE_REQ") && l.contains("accepted, x265enc produces main-10")),
        "{:?}",
        daemon.log()
    );
}

/// Noise takes every bit an encoder is given: the bitrate of the stream is
/// the encoder's target, before and after the change.
fn bitrate_follows_a_change_while_playing(codec: Codec) {
    init();
    let dir = TempDir::new("codecrate");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    let p = pipeline::launch(&format!(
        "videotestsrc is-live=true pattern=snow ! \
           video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         {el} name=enc {props} bitrate=1500 keyframe-interval=0 response-timeout=20000 ! \
         appsink name=out sync=false",
        el = gstvsockenc::vsockenc::element_name(codec),
        props = daemon.addr.element_props()
    ));
    let out = AuCollector::attach(&p, "out");
    let enc = pipeline::element(&p, "enc");
    pipeline::play(&p);
    let deadline = Instant::now() + Duration::from_secs(90);
    let changed_at = out.wait_for_pts(3.0, deadline);
    enc.set_property("bitrate", 500i32);
    out.wait_for_pts(changed_at + 3.0, deadline);
    let stats = Stats::of(&enc);
    pipeline::shutdown(&p);
    let aus = out.aus();
    assert!(
        sys::frames::last_pts_secs(&aus) >= changed_at + 3.0,
        "{codec}: the stream ran 3 s past the change; stats {stats}\ndaemon {:?}",
        daemon.log()
    );
    let before = sys::frames::kbps(&aus, 1.0, changed_at);
    let after = sys::frames::kbps(&aus, changed_at + 1.0, changed_at + 3.0);
    eprintln!(
        "{codec}: {before:.0} kbit/s before, {after:.0} kbit/s from 1 s after 1500 -> 500 at {changed_at:.2} s"
    );
    assert!(before > 900.0, "{codec}: 1500 kbit/s reached: {before:.0}");
    assert!(
        after < 800.0,
        "{codec}: 500 kbit/s followed within a second: {after:.0}"
    );
}

#[test]
fn h265_bitrate_changed_while_playing_reaches_the_encoder() {
    bitrate_follows_a_change_while_playing(Codec::H265);
}

#[test]
fn av1_bitrate_changed_while_playing_reaches_the_encoder() {
    bitrate_follows_a_change_while_playing(Codec::Av1);
}

/// Runs the element of `codec` against `props` until the bus has an error
/// (or EOS); returns the error text.
fn first_error(codec: Codec, props: &str) -> String {
    let p = pipeline::launch(&format!(
        "videotestsrc num-buffers=10 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! \
         {el} name=enc {props} ! fakesink",
        el = gstvsockenc::vsockenc::element_name(codec)
    ));
    let _ = p.set_state(gst::State::Playing);
    let r = pipeline::wait_eos(&p, Duration::from_secs(30));
    let enc = pipeline::element(&p, "enc");
    let stats = Stats::of(&enc);
    let mut errors = vec![r.expect_err("the element must fail, not encode")];
    errors.extend(pipeline::pending_errors(&p));
    pipeline::shutdown(&p);
    // The element's own error comes first; upstream's not-negotiated may
    // follow it.
    let e = errors.join("\n");
    assert_eq!(
        stats.u64("frames-sent"),
        0,
        "no frame reaches a host that would encode it in another codec: {stats}"
    );
    e
}

#[test]
fn a_legacy_host_gets_no_h265_frame_and_the_element_says_why() {
    init();
    let path = common::socket_path("legacy265");
    let peer = common::peer::PeerBuilder::unix(&path).start();
    let e = first_error(Codec::H265, &format!("socket-path={}", path.display()));
    assert!(
        e.contains("cannot encode H.265") && e.contains("legacy"),
        "the error names the codec and the legacy host: {e}"
    );
    assert!(e.contains("vsockenc for H.264"), "and the remedy: {e}");
    assert!(
        peer.record().frames.is_empty(),
        "the legacy host got no frame"
    );
}

#[test]
fn a_daemon_without_the_encoder_refuses_with_its_reason() {
    init();
    let dir = TempDir::new("noav1");
    let daemon = Daemon::start(Transport::Unix, &dir, &["--av1-encoder", "none"]);
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("AV1 guests are refused")),
        "the startup log says so: {:?}",
        daemon.log()
    );
    let e = first_error(Codec::Av1, &daemon.addr.element_props());
    assert!(
        e.contains("cannot encode AV1") && e.contains("--av1-encoder none"),
        "the host's reason reaches the pipeline: {e}"
    );
    // H.264 guests of the same daemon are served as ever.
    let p = pipeline::launch(&format!(
        "videotestsrc num-buffers=5 ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 ! \
         vsockenc {} ! h264parse ! fakesink",
        daemon.addr.element_props()
    ));
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    pipeline::shutdown(&p);
    r.unwrap();
}

#[test]
fn av1_without_extensions_is_refused_at_start() {
    init();
    let p = pipeline::launch(
        "videotestsrc num-buffers=1 ! vsockav1enc extensions=false socket-path=/nonexistent ! fakesink",
    );
    assert!(p.set_state(gst::State::Playing).is_err());
    let errors = pipeline::pending_errors(&p);
    pipeline::shutdown(&p);
    assert!(
        errors.iter().any(|e| e.contains("needs extensions=true")),
        "{errors:?}"
    );
}
