//! Soak run (not in the default suite): a live 640x360 stream through the
//! real daemon for minutes. Memory of both processes must stay flat, no frame
//! may be lost, and the host's response latency must stay stable.
//!
//! Run it with `scripts/soak.sh [SECONDS]` (default 180 s), which wraps
//! `cargo nextest run --run-ignored only --test system_soak` with a matching
//! time bound and `VSOCKENC_SOAK_SECS`.

mod sys;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;

use sys::daemon::{rss_kib, Daemon, Transport};
use sys::pipeline::{self, Stats};
use sys::tempdir::TempDir;

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const FPS: u64 = 30;

struct Sample {
    at: Duration,
    host_rss_kib: u64,
    self_rss_kib: u64,
    returned: u64,
    /// Cumulative mean response latency at this point.
    latency_mean_us: u64,
    aus: u64,
    dropped: u64,
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

/// Growth of a memory series: mean of its second half over its first half
/// (after warm-up), in KiB.
fn growth_kib(series: &[u64]) -> f64 {
    let half = series.len() / 2;
    mean(&series[half..]) - mean(&series[..half])
}

#[test]
#[ignore = "soak run, minutes long: scripts/soak.sh [SECONDS]"]
fn soak_live_stream() {
    sys::init();
    let secs: u64 = std::env::var("VSOCKENC_SOAK_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("VSOCKENC_SOAK_SECS must be a number of seconds")
        })
        .unwrap_or(180);
    assert!(secs >= 30, "a soak run shorter than 30 s measures nothing");
    let dir = TempDir::new("soak");
    let daemon = Daemon::start(Transport::Unix, &dir, &["--stats-interval", "30"]);
    let desc = format!(
        "videotestsrc is-live=true pattern=ball ! \
           video/x-raw,format=NV12,width=640,height=360,framerate={FPS}/1 ! \
         vsockenc name=enc {props} bitrate=3000 keyframe-interval=60 ! \
         h264parse ! fakesink name=out sync=false",
        props = daemon.addr.element_props()
    );
    let p = pipeline::launch(&desc);
    let enc = pipeline::element(&p, "enc");
    let count = |element: &gst::Element, pad: &str| {
        let n = Arc::new(AtomicU64::new(0));
        let m = n.clone();
        element
            .static_pad(pad)
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                m.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        n
    };
    let frames_in = count(&enc, "sink");
    let aus = count(&pipeline::element(&p, "out"), "sink");

    let started = Instant::now();
    pipeline::play(&p);
    let mut samples = Vec::new();
    let end = started + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(SAMPLE_EVERY.min(end.saturating_duration_since(Instant::now())));
        let errors = pipeline::pending_errors(&p);
        if !errors.is_empty() {
            pipeline::shutdown(&p);
            panic!("pipeline failed during the soak: {errors:?}");
        }
        let stats = Stats::of(&enc);
        samples.push(Sample {
            at: started.elapsed(),
            host_rss_kib: daemon.rss_kib().expect("daemon RSS (did it die?)"),
            self_rss_kib: rss_kib(std::process::id()).unwrap(),
            returned: stats.u64("frames-returned"),
            latency_mean_us: stats.u64("latency-mean-us"),
            aus: aus.load(Ordering::Relaxed),
            dropped: stats.u64("frames-dropped"),
        });
    }
    let eos = pipeline::stop_with_eos(&p, Duration::from_secs(30));
    let stats = Stats::of(&enc);
    pipeline::shutdown(&p);
    eos.unwrap_or_else(|e| panic!("no EOS at the end of the soak: {e}; {stats}"));

    println!(
        "{:>7} {:>10} {:>10} {:>8} {:>8} {:>12}",
        "t(s)", "host KiB", "guest KiB", "AUs", "dropped", "lat ms (int)"
    );
    // Per-interval mean latency, from the cumulative mean and counts.
    let mut interval_latency = Vec::new();
    let mut prev: Option<&Sample> = None;
    for s in &samples {
        let lat = match prev {
            Some(q) if s.returned > q.returned => {
                let sum = s.latency_mean_us as f64 * s.returned as f64
                    - q.latency_mean_us as f64 * q.returned as f64;
                sum / (s.returned - q.returned) as f64
            }
            _ => s.latency_mean_us as f64,
        };
        interval_latency.push(lat);
        println!(
            "{:>7.1} {:>10} {:>10} {:>8} {:>8} {:>12.2}",
            s.at.as_secs_f64(),
            s.host_rss_kib,
            s.self_rss_kib,
            s.aus,
            s.dropped,
            lat / 1000.0
        );
        prev = Some(s);
    }

    // Warm-up (encoder start, allocator pools) is excluded from the trends.
    let warm = (samples.len() / 5).max(2);
    let steady = &samples[warm..];
    let host: Vec<u64> = steady.iter().map(|s| s.host_rss_kib).collect();
    let guest: Vec<u64> = steady.iter().map(|s| s.self_rss_kib).collect();
    let (host_growth, guest_growth) = (growth_kib(&host), growth_kib(&guest));
    let mut lat: Vec<f64> = interval_latency[warm..].to_vec();
    lat.sort_by(f64::total_cmp);
    let lat_median = lat[lat.len() / 2];
    let lat_worst = *lat.last().unwrap();
    let frames_in = frames_in.load(Ordering::Relaxed);
    let aus = aus.load(Ordering::Relaxed);
    let wall = started.elapsed().as_secs_f64();
    println!(
        "soak {secs} s ({}): {frames_in} frames in, {aus} AUs out ({:.1} fps); \
         host RSS growth {:.0} KiB, guest RSS growth {:.0} KiB (steady state); \
         interval latency median {:.2} ms, worst {:.2} ms, max single {:.2} ms; stats {stats}",
        daemon.encoder,
        aus as f64 / wall,
        host_growth,
        guest_growth,
        lat_median / 1000.0,
        lat_worst / 1000.0,
        stats.u64("latency-max-us") as f64 / 1000.0
    );

    assert_eq!(stats.u64("frames-dropped"), 0, "frames were lost: {stats}");
    assert_eq!(frames_in, aus, "frames in != AUs out: {stats}");
    assert_eq!(stats.in_flight(), 0, "{stats}");
    assert!(
        aus as f64 / wall > FPS as f64 * 0.8,
        "the stream did not keep up with the live rate"
    );
    let allowed = |series: &[u64]| (mean(series) * 0.05).max(4096.0);
    assert!(
        host_growth < allowed(&host),
        "daemon memory grows: +{host_growth:.0} KiB over the steady state"
    );
    assert!(
        guest_growth < allowed(&guest),
        "guest (pipeline) memory grows: +{guest_growth:.0} KiB over the steady state"
    );
    assert!(
        lat_worst < lat_median * 3.0 + 5000.0,
        "latency is not stable: an interval averaged {:.2} ms against a median of {:.2} ms",
        lat_worst / 1000.0,
        lat_median / 1000.0
    );
}
