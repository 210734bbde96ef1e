//! What the element negotiates with upstream, downstream and the host:
//! input formats (I420, YV12, YUY2, UYVY when the host takes them, the
//! legacy ones otherwise) and the H.264 profile and level downstream asks
//! for, produced by the host and checked in the stream's SPS.

mod common;
mod sys;

use std::time::Duration;

use gst::prelude::*;
use hxfr::profile::Profile;

use common::peer::PeerBuilder;
use sys::daemon::{Daemon, Transport};
use sys::frames::{frame_psnr, AuCollector, FrameCollector};
use sys::pipeline::{self, Stats};
use sys::tempdir::TempDir;

const FRAMES: usize = 15;

fn x264_daemon(dir: &TempDir) -> Daemon {
    Daemon::start(Transport::Unix, dir, &["--encoder", "x264enc"])
}

#[test]
fn i420_yv12_yuy2_and_uyvy_go_to_the_host_as_they_are_and_decode() {
    sys::init();
    let dir = TempDir::new("formats");
    let daemon = x264_daemon(&dir);
    for format in ["I420", "YV12", "YUY2", "UYVY"] {
        // No videoconvert in front of vsockenc: upstream's format is taken
        // as it is (width 100 gives GStreamer's padded chroma stride).
        let p = pipeline::launch(&format!(
            "videotestsrc num-buffers={FRAMES} pattern=smpte horizontal-speed=3 ! \
               video/x-raw,format={format},width=100,height=60,framerate=30/1 ! tee name=t \
             t. ! queue ! videoconvert ! video/x-raw,format=I420 ! appsink name=ref sync=false \
             t. ! queue ! vsockenc name=enc {props} ! h264parse ! avdec_h264 ! \
               videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false",
            props = daemon.addr.element_props()
        ));
        let reference = FrameCollector::attach(&p, "ref");
        let output = FrameCollector::attach(&p, "out");
        let enc = pipeline::element(&p, "enc");
        pipeline::play(&p);
        let r = pipeline::wait_eos(&p, Duration::from_secs(60));
        let stats = Stats::of(&enc);
        pipeline::shutdown(&p);
        r.unwrap_or_else(|e| panic!("{format}: {e}\n{stats}"));
        let (reference, output) = (reference.frames(), output.frames());
        assert_eq!(
            output.len(),
            FRAMES,
            "{format}: every frame decoded\n{stats}"
        );
        for (i, (r, o)) in reference.iter().zip(&output).enumerate() {
            let psnr = frame_psnr(r, o);
            assert!(
                psnr.iter().all(|p| *p > 30.0),
                "{format} frame {i}: PSNR {psnr:?}"
            );
        }
        assert_eq!(
            stats.u64("frames-converted"),
            0,
            "{format} went to the host as it is: {stats}"
        );
    }
}

#[test]
fn a_decoder_feeds_the_element_without_a_converter() {
    // The issue's `uridecodebin ! vsockenc`: decoders output I420.
    sys::init();
    let dir = TempDir::new("decoder");
    let daemon = x264_daemon(&dir);
    let p = pipeline::launch(&format!(
        "videotestsrc num-buffers={FRAMES} ! video/x-raw,format=I420,width=160,height=120 ! x264enc ! \
           h264parse ! avdec_h264 ! vsockenc name=enc {props} ! appsink name=out sync=false",
        props = daemon.addr.element_props()
    ));
    let out = AuCollector::attach(&p, "out");
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    pipeline::shutdown(&p);
    r.unwrap();
    assert_eq!(out.len(), FRAMES);
}

/// The raw formats the element's sink pad offers upstream, once running.
fn offered_formats(props: &str) -> Vec<String> {
    let p = pipeline::launch(&format!(
        "videotestsrc ! video/x-raw,format=NV12 ! vsockenc name=enc {props} ! fakesink"
    ));
    pipeline::play(&p);
    let enc = pipeline::element(&p, "enc");
    let caps = enc.static_pad("sink").unwrap().query_caps(None);
    pipeline::shutdown(&p);
    let mut formats: Vec<String> = caps
        .iter()
        .flat_map(|s| {
            s.get::<gst::List>("format")
                .map(|l| {
                    l.iter()
                        .filter_map(|v| v.get::<String>().ok())
                        .collect::<Vec<_>>()
                })
                .or_else(|_| s.get::<String>("format").map(|f| vec![f]))
                .unwrap_or_default()
        })
        .collect();
    formats.sort();
    formats.dedup();
    formats
}

#[test]
fn a_legacy_host_is_offered_only_the_formats_it_takes() {
    sys::init();
    let dir = TempDir::new("legacyfmt");
    let path = dir.join("legacy.sock");
    let _peer = PeerBuilder::unix(&path).start();
    let legacy = offered_formats(&format!("socket-path={}", path.display()));
    assert_eq!(
        legacy,
        ["BGRA", "BGRx", "NV12", "RGBA", "RGBx"],
        "{legacy:?}"
    );

    let daemon = x264_daemon(&dir);
    let ours = offered_formats(&daemon.addr.element_props());
    for f in ["I420", "YV12", "YUY2", "UYVY", "NV12", "BGRx"] {
        assert!(ours.iter().any(|o| o == f), "{f} offered: {ours:?}");
    }
}

/// Runs a few frames through `vsockenc ! video/x-h264,profile=…` and
/// returns the output caps and access units, or the error.
fn encode_with(
    props: &str,
    downstream: &str,
) -> Result<(gst::Caps, Vec<sys::frames::AccessUnit>), String> {
    let p = pipeline::launch(&format!(
        "videotestsrc num-buffers={FRAMES} ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! \
         vsockenc {props} ! {downstream} ! appsink name=out sync=false"
    ));
    let out = AuCollector::attach(&p, "out");
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    pipeline::shutdown(&p);
    r?;
    Ok((out.caps().expect("output caps"), out.aus()))
}

#[test]
fn each_profile_downstream_asks_for_is_produced_and_stated() {
    sys::init();
    let dir = TempDir::new("profiles");
    let daemon = x264_daemon(&dir);
    for (name, idc) in [
        ("constrained-baseline", 66),
        ("baseline", 66),
        ("main", 77),
        ("high", 100),
    ] {
        let (caps, aus) = encode_with(
            &daemon.addr.element_props(),
            &format!("video/x-h264,profile={name}"),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let s = caps.structure(0).unwrap();
        assert_eq!(s.get::<String>("profile").unwrap(), name, "{caps}");
        let level = s.get::<String>("level").expect("the level is stated");
        let sps = aus
            .iter()
            .find_map(|a| hxfr::nal::first_sps(&a.data))
            .expect("an SPS");
        assert_eq!(sps.profile.idc, idc, "{name}: profile_idc in the SPS");
        assert!(
            sps.profile.satisfies(Profile::from_name(name).unwrap()),
            "{name}: the SPS ({:?}) is that profile",
            sps.profile
        );
        assert_eq!(sps.level_name(), Some(level.as_str()), "{name}: level");
        eprintln!("{name}: SPS {:?} level {level}", sps.profile);
    }
}

#[test]
fn a_profile_the_host_cannot_produce_fails_negotiation_saying_why() {
    sys::init();
    let dir = TempDir::new("noprofile");
    let daemon = x264_daemon(&dir);
    let err = encode_with(
        &daemon.addr.element_props(),
        "video/x-h264,profile=high-4:4:4",
    )
    .expect_err("no mislabelled stream");
    eprintln!("{err}");
    assert!(
        err.contains("no H.264 profile that downstream accepts"),
        "{err}"
    );
    assert!(err.contains("high-4:4:4"), "{err}");
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn a_legacy_host_stream_is_labelled_from_its_sps_or_refused() {
    // The scripted legacy peer answers with a constrained-baseline level 3
    // SPS; a legacy host cannot be asked for anything else.
    sys::init();
    let dir = TempDir::new("legacyprofile");
    let path = dir.join("legacy.sock");
    let _peer = PeerBuilder::unix(&path).start();
    let props = format!("socket-path={}", path.display());
    let (caps, _) = encode_with(&props, "video/x-h264").unwrap();
    let s = caps.structure(0).unwrap();
    assert_eq!(s.get::<String>("profile").unwrap(), "constrained-baseline");
    assert_eq!(s.get::<String>("level").unwrap(), "3");

    let err = encode_with(&props, "video/x-h264,profile=high").expect_err("not mislabelled");
    eprintln!("{err}");
    assert!(
        err.contains(
            "produces H.264 profile constrained-baseline level 3, which downstream does not accept"
        ),
        "{err}"
    );
}
