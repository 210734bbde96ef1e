//! Run a `gst-launch-1.0`-style pipeline and print the CPU time this process
//! spent on it, without GStreamer's own start-up: for measuring an element's
//! steady cost per frame where process start is expensive and noisy (an
//! emulated guest reading its programs over 9p, `scripts/vm/measure-guest-cpu.sh`).
//!
//! ```text
//! pipeline_cpu [--warmup N] PIPELINE-DESCRIPTION...
//! ```
//!
//! The description is built and run to EOS `N` times first (default 1), so
//! that code pages and one-time set-up are paid before the measured run; then
//! once more, measured: user and system time of the whole process (every
//! thread, `getrusage(RUSAGE_SELF)`) and wall time, from just before the
//! pipeline goes to PLAYING to its EOS (element creation and plugin loading
//! are outside, connecting to a host and caps negotiation inside). Output, one
//! line on stdout: `PIPELINE_CPU user=<s> sys=<s> wall=<s>`. Which plugins load
//! is up to `GST_PLUGIN_PATH`/`GST_REGISTRY`: this program registers none of
//! its own, so it runs the C `vsockenc` just as well as ours.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gst::prelude::*;

const USAGE: &str = "usage: pipeline_cpu [--warmup N] PIPELINE-DESCRIPTION...";

fn cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Builds the pipeline, runs it to EOS and returns (user, sys, wall) of the
/// part from PLAYING to EOS.
fn run_once(desc: &str) -> Result<(Duration, Duration, Duration), String> {
    let pipeline = gst::parse::launch(desc).map_err(|e| format!("cannot build '{desc}': {e}"))?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let (u0, s0) = cpu_times();
    let t0 = Instant::now();
    let outcome = match pipeline.set_state(gst::State::Playing) {
        Err(e) => Err(format!("cannot start '{desc}': {e}")),
        Ok(_) => loop {
            let msg = bus
                .timed_pop_filtered(
                    gst::ClockTime::NONE,
                    &[gst::MessageType::Eos, gst::MessageType::Error],
                )
                .expect("waits without timeout");
            match msg.view() {
                gst::MessageView::Eos(_) => break Ok(()),
                gst::MessageView::Error(e) => {
                    break Err(format!(
                        "'{desc}': error from {}: {} ({:?})",
                        e.src()
                            .map(|s| s.path_string().to_string())
                            .unwrap_or_default(),
                        e.error(),
                        e.debug()
                    ))
                }
                _ => continue,
            }
        },
    };
    let wall = t0.elapsed();
    let (u1, s1) = cpu_times();
    let _ = pipeline.set_state(gst::State::Null);
    outcome.map(|()| (u1 - u0, s1 - s0, wall))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let mut warmup = 1u32;
    if args.peek().map(String::as_str) == Some("--warmup") {
        args.next();
        match args.next().and_then(|v| v.parse().ok()) {
            Some(n) => warmup = n,
            None => {
                eprintln!("pipeline_cpu: --warmup needs a number\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let desc = args.collect::<Vec<_>>().join(" ");
    if desc.is_empty() || desc.starts_with("--") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    if let Err(e) = gst::init() {
        eprintln!("pipeline_cpu: cannot initialise GStreamer: {e}");
        return ExitCode::FAILURE;
    }
    let mut last = None;
    for _ in 0..=warmup {
        match run_once(&desc) {
            Ok(r) => last = Some(r),
            Err(e) => {
                eprintln!("pipeline_cpu: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (user, sys, wall) = last.expect("ran at least once");
    println!(
        "PIPELINE_CPU user={:.6} sys={:.6} wall={:.6}",
        user.as_secs_f64(),
        sys.as_secs_f64(),
        wall.as_secs_f64()
    );
    ExitCode::SUCCESS
}
