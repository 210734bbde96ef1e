//! System tests with real GStreamer consumers of the element's output,
//! through the real daemon (x264enc): a segmenting muxer whose every
//! fragment must decode on its own, an adaptive-bitrate change while
//! PLAYING, and the pipeline's latency next to in-guest x264enc.

mod sys;

use std::time::{Duration, Instant};

use gst::prelude::*;

use sys::daemon::{Daemon, Transport};
use sys::frames::AuCollector;
use sys::pipeline::{self, Stats};
use sys::tempdir::TempDir;

/// An exp-Golomb reader over RBSP bytes (emulation prevention removed),
/// enough for the first fields of a slice header.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b as u32)
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let mut v = 0u32;
        for _ in 0..zeros {
            v = (v << 1) | self.bit()?;
        }
        Some((1u32 << zeros) - 1 + v)
    }
}

fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Whether the access unit's first slice is an I slice (slice_type 2 or 7),
/// read from the slice header itself, not from any flag.
fn is_intra(au: &[u8]) -> bool {
    hxfr::nal::split_annexb(au).into_iter().any(|nal| {
        let Some(&h) = nal.first() else { return false };
        if !matches!(h & 0x1f, 1 | 5) {
            return false;
        }
        let r = rbsp(&nal[1..]);
        let mut bits = Bits { data: &r, pos: 0 };
        let _first_mb = bits.ue();
        matches!(bits.ue(), Some(2) | Some(7))
    })
}

#[test]
fn scene_cut_intra_frames_are_not_keyframes_and_every_segment_decodes() {
    sys::init();
    let dir = TempDir::new("scenecut");
    let daemon = Daemon::start(Transport::Unix, &dir, &["--encoder", "x264enc"]);
    let frames = 90;
    // The content: a fast-moving SMPTE pattern makes x264 insert
    // scene-cut I-frames that are not IDR. The segmenter takes the
    // element's output as it is (an h264parse in between would flag those
    // I-frames as keyframes itself, for any encoder).
    let p = pipeline::launch(&format!(
        "videotestsrc num-buffers={frames} pattern=smpte horizontal-speed=4 ! \
           video/x-raw,format=NV12,width=1280,height=720,framerate=30/1 ! \
         vsockenc name=enc {props} response-timeout=20000 ! tee name=t \
         t. ! queue ! appsink name=out sync=false \
         t. ! queue ! splitmuxsink muxer=mpegtsmux max-size-time=500000000 location={dir}/frag%02d.ts",
        props = daemon.addr.element_props(),
        dir = dir.path().display()
    ));
    let out = AuCollector::attach(&p, "out");
    let enc = pipeline::element(&p, "enc");
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(120));
    let stats = Stats::of(&enc);
    pipeline::shutdown(&p);
    r.unwrap_or_else(|e| panic!("{e}\nstats: {stats}"));

    let aus = out.aus();
    assert_eq!(aus.len(), frames, "every frame encoded; stats: {stats}");
    let flagged = aus.iter().filter(|a| a.keyframe_flag).count();
    let idr = aus.iter().filter(|a| a.has_idr()).count();
    let intra_not_idr = aus
        .iter()
        .filter(|a| !a.has_idr() && is_intra(&a.data))
        .count();
    eprintln!(
        "{frames} frames: {flagged} flagged as keyframes, {idr} hold an IDR slice, \
         {intra_not_idr} are non-IDR I-frames"
    );
    assert!(
        intra_not_idr > 0,
        "the content must make the encoder insert non-IDR I-frames, or this test checks nothing"
    );
    for (i, a) in aus.iter().enumerate() {
        assert_eq!(
            a.keyframe_flag,
            a.has_idr(),
            "frame {i}: keyframe flag {} but IDR {}",
            a.keyframe_flag,
            a.has_idr()
        );
    }

    // Each fragment on its own, as a player joining a live HLS stream sees
    // it: every frame in it must decode.
    let mut fragments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ts"))
        .collect();
    fragments.sort();
    assert!(
        fragments.len() >= 2,
        "splitmuxsink cut the stream: {fragments:?}"
    );
    let mut decoded_total = 0;
    for f in &fragments {
        let (decoded, in_fragment) = decode_fragment(f);
        eprintln!("{}: {decoded}/{in_fragment} frames decode", f.display());
        assert!(in_fragment > 0, "{}: empty fragment", f.display());
        assert_eq!(
            decoded,
            in_fragment,
            "{}: a fragment must start at a point a decoder can start at",
            f.display()
        );
        decoded_total += decoded;
    }
    assert_eq!(decoded_total, frames, "the fragments hold every frame");
}

/// Decodes one MPEG-TS fragment alone: (frames decoded, access units in it).
fn decode_fragment(path: &std::path::Path) -> (usize, usize) {
    let p = pipeline::launch(&format!(
        "filesrc location={} ! tsdemux ! h264parse ! tee name=t \
         t. ! queue ! appsink name=aus sync=false \
         t. ! queue ! avdec_h264 ! appsink name=frames sync=false",
        path.display()
    ));
    let count = |name: &str| {
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = n.clone();
        p.by_name(name)
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap()
            .set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |s| {
                        s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
        n
    };
    let aus = count("aus");
    let frames = count("frames");
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    pipeline::shutdown(&p);
    r.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let get = |n: &std::sync::Arc<std::sync::atomic::AtomicUsize>| {
        n.load(std::sync::atomic::Ordering::SeqCst)
    };
    (get(&frames), get(&aus))
}

#[test]
fn bitrate_changed_while_playing_takes_effect_within_a_second() {
    sys::init();
    let dir = TempDir::new("livebitrate");
    let daemon = Daemon::start(Transport::Unix, &dir, &["--encoder", "x264enc"]);
    let p = pipeline::launch(&format!(
        "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! \
           video/x-raw,format=NV12,width=1280,height=720,framerate=30/1 ! \
         vsockenc name=enc {props} bitrate=4000 keyframe-interval=60 response-timeout=20000 ! \
         appsink name=out sync=false",
        props = daemon.addr.element_props()
    ));
    let out = AuCollector::attach(&p, "out");
    let enc = pipeline::element(&p, "enc");
    pipeline::play(&p);
    let deadline = Instant::now() + Duration::from_secs(60);
    let changed_at = out.wait_for_pts(3.0, deadline);
    enc.set_property("bitrate", 500i32);
    assert_eq!(enc.property::<i32>("bitrate"), 500);
    out.wait_for_pts(changed_at + 3.0, deadline);
    let stats = Stats::of(&enc);
    pipeline::shutdown(&p);
    let aus = out.aus();
    assert!(
        sys::frames::last_pts_secs(&aus) >= changed_at + 3.0,
        "the stream ran 3 s past the change; stats: {stats}"
    );
    let before = sys::frames::kbps(&aus, 1.0, changed_at);
    let after = sys::frames::kbps(&aus, changed_at + 1.0, changed_at + 3.0);
    eprintln!(
        "bitrate before the change {before:.0} kbit/s, from 1 s after it {after:.0} kbit/s \
         (changed 4000 -> 500 at pts {changed_at:.2} s)"
    );
    assert!(before > 2000.0, "4000 kbit/s reached before: {before:.0}");
    assert!(
        after < 800.0,
        "500 kbit/s followed within a second: {after:.0} kbit/s"
    );
    let sessions = daemon
        .log()
        .iter()
        .filter(|l| l.contains(": encoding "))
        .count();
    assert_eq!(sessions, 1, "no new encoding session: {:?}", daemon.log());
}

/// The pipeline's (live, min) latency once `frames` buffers went through.
fn live_latency(encoder: &str, frames: usize) -> (gst::ClockTime, u64) {
    let p = pipeline::launch(&format!(
        "videotestsrc is-live=true ! \
           video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! \
         {encoder} ! appsink name=out sync=true"
    ));
    let out = AuCollector::attach(&p, "out");
    pipeline::play(&p);
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < frames && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut q = gst::query::Latency::new();
    assert!(p.query(&mut q), "latency query answered");
    let (live, min, _max) = q.result();
    let answer_us = p
        .by_name("enc")
        .map_or(0, |e| Stats::of(&e).u64("latency-mean-us"));
    pipeline::shutdown(&p);
    assert!(live, "a live pipeline");
    assert!(
        out.len() >= frames,
        "{encoder}: {frames} frames went through"
    );
    (min, answer_us)
}

#[test]
fn reported_latency_is_the_host_answer_time_not_a_frame_more() {
    sys::init();
    let dir = TempDir::new("latency");
    let daemon = Daemon::start(Transport::Unix, &dir, &["--encoder", "x264enc"]);
    let (x264, _) = live_latency("x264enc tune=zerolatency speed-preset=ultrafast", 40);
    let (vsock, answer_us) = live_latency(
        &format!("vsockenc name=enc {}", daemon.addr.element_props()),
        40,
    );
    let frame = gst::ClockTime::from_nseconds(33_333_333);
    let answer = gst::ClockTime::from_useconds(answer_us);
    eprintln!(
        "pipeline minimum latency: x264enc tune=zerolatency {x264}, vsockenc {vsock} \
         (the host answered in {answer} on average)"
    );
    let added = vsock.saturating_sub(x264);
    assert!(
        added < frame,
        "vsockenc adds {added} over x264enc: a whole frame period or more"
    );
    // What it adds is the measured answer time, rounded up to 1 ms, with
    // room for the mean moving between the report and the end of the run.
    assert!(
        added <= answer * 2 + gst::ClockTime::from_mseconds(2),
        "vsockenc adds {added}, the host answered in {answer}"
    );
}
