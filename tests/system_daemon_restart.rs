//! System test: the daemon dies (SIGKILL, no clean-up) in the middle of a
//! live stream and is started again on the same address. With
//! `reconnect=true` the pipeline must neither hang nor fail, the stream must
//! resume with a keyframe, and the lost frames must show in `stats`.

mod sys;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;

use sys::daemon::{Daemon, Transport};
use sys::frames::{decode_annexb, AuCollector};
use sys::pipeline::{self, Stats};
use sys::tempdir::TempDir;

const FPS: u64 = 30;
/// Long enough that no scheduled keyframe hides a missing forced one.
const KEYFRAME_INTERVAL: u32 = 900;
const OUTAGE: Duration = Duration::from_millis(1500);

/// Wait until `cond` holds, checking the bus for errors. On failure the
/// pipeline is torn down (bounded) and the panic names the element's stats.
fn wait_until(
    p: &gst::Pipeline,
    enc: &gst::Element,
    what: &str,
    timeout: Duration,
    cond: impl Fn() -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let errors = pipeline::pending_errors(p);
        let failure = if !errors.is_empty() {
            format!("the pipeline failed while waiting for {what}: {errors:?}")
        } else if cond() {
            return;
        } else if Instant::now() > deadline {
            format!("timed out after {timeout:?} waiting for {what}")
        } else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let stats = Stats::of(enc);
        // Said before the teardown, which may hang too.
        eprintln!("{failure}; stats {stats}");
        pipeline::shutdown(p);
        panic!("{failure}; stats {stats}");
    }
}

fn daemon_killed_and_restarted(transport: Transport) {
    sys::init();
    let dir = TempDir::new("restart");
    let mut daemon = Daemon::start(transport, &dir, &[]);
    let addr = daemon.addr.clone();
    let desc = format!(
        "videotestsrc is-live=true pattern=ball ! \
           video/x-raw,format=NV12,width=160,height=120,framerate={FPS}/1 ! \
         vsockenc name=enc {props} reconnect=true reconnect-interval=200 \
           response-timeout=1000 connect-timeout=1000 keyframe-interval={KEYFRAME_INTERVAL} ! \
         h264parse ! video/x-h264,stream-format=byte-stream,alignment=au ! \
         appsink name=out sync=false",
        props = addr.element_props()
    );
    let p = pipeline::launch(&desc);
    let out = AuCollector::attach(&p, "out");
    let enc = pipeline::element(&p, "enc");
    // Every frame the element is given, to check the accounting.
    let frames_in = Arc::new(AtomicU64::new(0));
    {
        let frames_in = frames_in.clone();
        enc.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                frames_in.fetch_add(1, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            });
    }
    let started = Instant::now();
    pipeline::play(&p);

    wait_until(
        &p,
        &enc,
        "30 AUs before the kill",
        Duration::from_secs(20),
        || out.len() >= 30,
    );
    let before_kill = out.len();
    daemon.kill_hard();
    std::thread::sleep(OUTAGE);
    // The element must survive the outage without posting an error.
    wait_until(&p, &enc, "the end of the outage", Duration::ZERO, || true);
    let during_outage = out.len() - before_kill;

    let daemon = Daemon::start_on(addr, &[]);
    let restarted_at = Instant::now();
    let after = |au: &sys::frames::AccessUnit| au.arrived > restarted_at;
    wait_until(
        &p,
        &enc,
        "30 AUs after the restart",
        Duration::from_secs(30),
        || out.aus().iter().filter(|a| after(a)).count() >= 30,
    );
    let resumed_after = out
        .aus()
        .iter()
        .find(|a| after(a))
        .map(|a| a.arrived - restarted_at)
        .unwrap();
    let eos = pipeline::stop_with_eos(&p, Duration::from_secs(20));
    let stats = Stats::of(&enc);
    pipeline::shutdown(&p);
    let wall = started.elapsed();
    eos.unwrap_or_else(|e| panic!("pipeline did not drain on EOS after the restart: {e}; {stats}"));

    let aus = out.aus();
    let frames_in = frames_in.load(Ordering::SeqCst);
    println!(
        "{transport:?}: {} AUs ({before_kill} before the kill, {during_outage} during the \
         {OUTAGE:?} outage); first AU {:.2} s after the restart; {frames_in} frames in; \
         wall {:.1} s; stats {stats}",
        aus.len(),
        resumed_after.as_secs_f64(),
        wall.as_secs_f64()
    );

    // The outage is the largest PTS gap in the output; the first AU after it
    // must start a new GOP.
    let frame = 1_000_000_000 / FPS;
    let (gap_at, gap) = aus
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let d = w[1].pts.unwrap().nseconds() - w[0].pts.unwrap().nseconds();
            (i + 1, d)
        })
        .max_by_key(|&(_, d)| d)
        .unwrap();
    assert!(
        gap > 10 * frame,
        "no gap in the output PTS although the daemon was down for {OUTAGE:?} \
         (largest gap {} ms)",
        gap / 1_000_000
    );
    assert!(
        aus[gap_at].has_idr(),
        "the first AU after the outage (index {gap_at}, NAL types {:?}) holds no IDR: \
         downstream cannot decode the resumed stream",
        hxfr::nal::nal_types(&aus[gap_at].data)
    );
    assert!(aus[0].has_idr(), "the stream does not start with an IDR");

    // The whole output, outage included, decodes.
    let decoded = decode_annexb(&aus);
    assert_eq!(decoded.len(), aus.len(), "not every AU decoded");

    // Accounting (src/vsockenc/pending.rs): every frame given to the element
    // gets one table entry, which ends as exactly one AU or one counted drop;
    // a returned frame is output unless it is a delta frame while the stream
    // waits for a keyframe; nothing is in flight after EOS.
    assert!(stats.u64("reconnects") >= 1, "{stats}");
    let lost = stats.u64("dropped-disconnect") + stats.u64("dropped-no-host");
    assert!(
        lost > 0,
        "frames were lost during the outage but stats count none: {stats}"
    );
    assert_eq!(stats.in_flight(), 0, "{stats}");
    assert_eq!(
        stats.u64("frames-dropped"),
        stats.dropped_by_reason(),
        "frames-dropped is not the sum of the per-reason counters: {stats}"
    );
    assert_eq!(
        frames_in,
        aus.len() as u64 + stats.u64("frames-dropped"),
        "frames in ({frames_in}) != AUs out ({}) + frames-dropped: {stats}",
        aus.len()
    );
    assert_eq!(
        stats.u64("frames-returned"),
        aus.len() as u64 + stats.u64("dropped-awaiting-keyframe"),
        "frames-returned != AUs out ({}) + dropped-awaiting-keyframe: {stats}",
        aus.len()
    );
    // Frames sent either came back or were lost for a reason counted on sent
    // frames (dropped-disconnect also counts frames that found no connection,
    // hence <=); frames never sent are the rest of the input.
    assert!(
        stats.u64("frames-sent")
            <= stats.u64("frames-returned")
                + stats.u64("dropped-timeout")
                + stats.u64("dropped-host-error")
                + stats.u64("dropped-disconnect"),
        "{stats}"
    );
    assert!(stats.u64("frames-sent") < frames_in, "{stats}");
    drop(daemon);
}

#[test]
fn daemon_sigkill_and_restart_unix() {
    daemon_killed_and_restarted(Transport::Unix);
}

#[test]
fn daemon_sigkill_and_restart_tcp() {
    daemon_killed_and_restarted(Transport::Tcp);
}
