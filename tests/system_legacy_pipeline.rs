//! System test: the pipeline shape a real desktop stack runs in the guest
//! (live source, NV12, a leaky one-buffer queue, TCP to the host, parsed
//! byte-stream AUs into an appsink), against the real daemon.

mod sys;

use std::time::{Duration, Instant};

use sys::daemon::{Daemon, Transport};
use sys::frames::{decode_annexb, AuCollector};
use sys::pipeline::{self, Stats};
use sys::tempdir::TempDir;

const FPS: u32 = 30;
const KEYFRAME_INTERVAL: usize = 30;
/// How long the live stream runs once the first AU came out.
const RUN: Duration = Duration::from_secs(4);

#[test]
fn legacy_desktop_pipeline_over_tcp() {
    sys::init();
    let dir = TempDir::new("legacy");
    let daemon = Daemon::start(Transport::Tcp, &dir, &[]);
    let desc = format!(
        "videotestsrc is-live=true pattern=ball ! \
           video/x-raw,width=320,height=240,framerate={FPS}/1 ! \
         videoconvert ! video/x-raw,format=NV12 ! \
         queue max-size-buffers=1 leaky=downstream ! \
         vsockenc name=enc {props} bitrate=1500 keyframe-interval={KEYFRAME_INTERVAL} ! \
         h264parse ! video/x-h264,stream-format=byte-stream,alignment=au ! \
         appsink name=out sync=false",
        props = daemon.addr.element_props()
    );
    let p = pipeline::launch(&desc);
    let out = AuCollector::attach(&p, "out");
    let enc = pipeline::element(&p, "enc");
    pipeline::play(&p);

    // Wait for the first AU (connection + encoder start-up on a loaded
    // machine), then let it run.
    let first_deadline = Instant::now() + Duration::from_secs(20);
    while out.len() == 0 {
        let errors = pipeline::pending_errors(&p);
        if !errors.is_empty() || Instant::now() > first_deadline {
            let stats = Stats::of(&enc);
            pipeline::shutdown(&p);
            panic!("no access unit within 20 s; errors {errors:?}; stats {stats}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let window_start = Instant::now();
    std::thread::sleep(RUN);
    let in_window = out.len() - 1;
    let window = window_start.elapsed();
    let eos = pipeline::stop_with_eos(&p, Duration::from_secs(20));
    let stats = Stats::of(&enc);
    pipeline::shutdown(&p);
    eos.unwrap_or_else(|e| panic!("live pipeline did not drain on EOS: {e}; stats {stats}"));

    let aus = out.aus();
    let rate = in_window as f64 / window.as_secs_f64();
    println!(
        "{} AUs in total; {in_window} in {:.2} s = {rate:.1} fps (source {FPS} fps); \
         encoder {}; stats {stats}",
        aus.len(),
        window.as_secs_f64(),
        daemon.encoder
    );

    let caps = out.caps().expect("appsink saw no caps");
    let s = caps.structure(0).unwrap();
    assert_eq!(s.name(), "video/x-h264");
    assert_eq!(s.get::<&str>("stream-format").unwrap(), "byte-stream");
    assert_eq!(s.get::<&str>("alignment").unwrap(), "au");

    // About the live rate: the leaky queue may drop a few frames on a loaded
    // machine, but the element must keep up with 30 fps of 320x240.
    assert!(
        rate > FPS as f64 * 0.6 && rate < FPS as f64 * 1.25,
        "output rate {rate:.1} fps is not about the live rate of {FPS} fps"
    );

    // Keyframes: the stream starts with one, and no run of delta AUs is longer
    // than keyframe-interval (frames dropped by the leaky queue never reach
    // the element, so they do not count).
    assert!(aus[0].has_idr(), "the first AU holds no IDR slice");
    let idr: Vec<usize> = (0..aus.len()).filter(|&i| aus[i].has_idr()).collect();
    let max_gap = idr
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain(std::iter::once(aus.len() - idr.last().unwrap()))
        .max()
        .unwrap();
    println!("IDR at AU indices {idr:?}");
    assert!(
        max_gap <= KEYFRAME_INTERVAL,
        "{max_gap} AUs between keyframes, keyframe-interval is {KEYFRAME_INTERVAL}: IDRs at {idr:?}"
    );
    for &i in &idr {
        let types = hxfr::nal::nal_types(&aus[i].data);
        assert!(
            types.contains(&7) && types.contains(&8),
            "keyframe AU {i} carries no SPS/PPS (NAL types {types:?}): a decoder joining \
             there cannot start"
        );
        assert!(aus[i].keyframe_flag, "IDR AU {i} is flagged DELTA_UNIT");
    }
    for w in aus.windows(2) {
        assert!(w[1].pts > w[0].pts, "AU timestamps do not increase");
    }

    // Every AU decodes.
    let decoded = decode_annexb(&aus);
    assert_eq!(decoded.len(), aus.len(), "not every AU decoded");
    assert!(decoded.iter().all(|f| (f.width, f.height) == (320, 240)));

    assert_eq!(
        stats.in_flight(),
        0,
        "frames still in flight after EOS: {stats}"
    );
    assert_eq!(
        stats.u64("frames-returned"),
        aus.len() as u64,
        "every returned frame leaves as one AU: {stats}"
    );
    assert_eq!(stats.u64("frames-dropped"), 0, "{stats}");
}
