//! One timed pipeline run: `appsrc (pre-generated frames) ! <encoder> !
//! fakesink`, with pad probes that time every frame into and out of the
//! element named `enc`, and the process CPU time over the run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use gst::prelude::*;

use crate::frames::Frames;
use crate::sys;

#[derive(Clone)]
pub struct RunSpec<'a> {
    pub frames: &'a Frames,
    /// Launch fragment between appsrc and fakesink; one element in it is
    /// named `enc` (its pads are probed). Empty: source only.
    pub encoder: String,
    /// Stop feeding after this many frames...
    pub max_frames: u64,
    /// ...or once this much time has passed and `min_frames` were fed.
    pub duration: Option<Duration>,
    pub min_frames: u64,
    /// Feed at this rate instead of as fast as the pipeline takes frames.
    pub pace_fps: Option<f64>,
    /// Frames out of the encoder so far, for an outside sampler.
    pub progress: Option<Arc<AtomicU64>>,
    /// Give up waiting for EOS after this long.
    pub timeout: Duration,
}

#[derive(Default)]
pub struct RunResult {
    pub frames_in: u64,
    pub frames_out: u64,
    pub seconds: f64,
    pub fps: f64,
    pub cpu_seconds: f64,
    /// Voluntary and involuntary context switches of the process during
    /// the run.
    pub context_switches: (u64, u64),
    /// Sorted per-frame latencies (into `enc` to out of it), milliseconds.
    pub latencies_ms: Vec<f64>,
    /// The element's `stats` property at the end, when it has one.
    pub stats: Option<gst::Structure>,
    pub error: Option<String>,
}

impl RunResult {
    pub fn cpu_ms_per_frame(&self) -> f64 {
        self.cpu_seconds * 1000.0 / self.frames_out.max(1) as f64
    }

    /// Voluntary context switches (sleeps, hence wake-ups) per frame.
    pub fn wakeups_per_frame(&self) -> f64 {
        self.context_switches.0 as f64 / self.frames_out.max(1) as f64
    }

    pub fn latency_p(&self, p: f64) -> f64 {
        sys::percentile(&self.latencies_ms, p)
    }

    pub fn stat_u64(&self, name: &str) -> Option<u64> {
        let s = self.stats.as_ref()?;
        s.get::<u64>(name)
            .ok()
            .or_else(|| s.get::<u32>(name).ok().map(u64::from))
    }
}

#[derive(Default)]
struct Timing {
    sent: HashMap<u64, Instant>,
    out: Vec<Instant>,
    latencies_ms: Vec<f64>,
}

/// Runs `spec` `reps` times and keeps the run with the median fps: the
/// machine is shared, and one unlucky run should not decide a figure.
pub fn run_median(spec: RunSpec<'_>, reps: usize) -> Result<RunResult> {
    let mut runs = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        runs.push(run(spec.clone())?);
    }
    runs.sort_by(|a, b| a.fps.total_cmp(&b.fps));
    let mid = runs.len() / 2;
    Ok(runs.swap_remove(mid))
}

pub fn run(spec: RunSpec<'_>) -> Result<RunResult> {
    let fragment = if spec.encoder.is_empty() {
        "identity name=enc".to_string()
    } else {
        spec.encoder.clone()
    };
    let desc = format!("appsrc name=src ! {fragment} ! fakesink name=sink sync=false");
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
    let appsrc = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| anyhow!("not an appsrc"))?;
    let frame_bytes = spec.frames.frame_bytes() as u64;
    appsrc.set_caps(Some(&spec.frames.caps));
    appsrc.set_format(gst::Format::Time);
    appsrc.set_max_bytes(2 * frame_bytes);
    let enc = pipeline
        .by_name("enc")
        .ok_or_else(|| anyhow!("no element named enc in {desc}"))?;

    let timing = Arc::new(Mutex::new(Timing::default()));
    {
        let timing = timing.clone();
        enc.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                    timing
                        .lock()
                        .unwrap()
                        .sent
                        .insert(pts.nseconds(), Instant::now());
                }
                gst::PadProbeReturn::Ok
            });
    }
    {
        let timing = timing.clone();
        let progress = spec.progress.clone();
        enc.static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let now = Instant::now();
                let mut t = timing.lock().unwrap();
                t.out.push(now);
                // x264enc shifts its output by 1000 h (room for negative
                // dts); undo that to find the input frame.
                const X264_OFFSET: u64 = 1000 * 3600 * 1_000_000_000;
                let sent = info.buffer().and_then(|b| b.pts()).and_then(|pts| {
                    let pts = pts.nseconds();
                    t.sent
                        .remove(&pts)
                        .or_else(|| pts.checked_sub(X264_OFFSET).and_then(|p| t.sent.remove(&p)))
                });
                if let Some(sent) = sent {
                    t.latencies_ms.push((now - sent).as_secs_f64() * 1000.0);
                }
                if let Some(p) = &progress {
                    p.fetch_add(1, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            });
    }

    // Frames are pushed from appsrc's own streaming thread when it asks for
    // data (need-data), so feeding costs no thread hand-off: the source adds
    // no wake-ups of its own to what is measured.
    let fed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Mutex::new(None::<Instant>));
    {
        let buffers = spec.frames.buffers.clone();
        let (fed, done, start) = (fed.clone(), done.clone(), start.clone());
        let (max_frames, min_frames, duration, pace) = (
            spec.max_frames,
            spec.min_frames,
            spec.duration,
            spec.pace_fps,
        );
        let frame_ns = 1_000_000_000u64 / 30;
        appsrc.set_callbacks(
            gst_app::AppSrcCallbacks::builder()
                .need_data(move |appsrc, _| {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    let start = *start.lock().unwrap().get_or_insert_with(Instant::now);
                    let n = fed.load(Ordering::Relaxed);
                    let out_of_time =
                        duration.is_some_and(|d| n >= min_frames && start.elapsed() >= d);
                    if n >= max_frames || out_of_time {
                        done.store(true, Ordering::Relaxed);
                        let _ = appsrc.end_of_stream();
                        return;
                    }
                    if let Some(fps) = pace {
                        let due = start + Duration::from_secs_f64(n as f64 / fps);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    // A shallow copy shares the pixels; only the metadata is new.
                    let mut b = buffers[(n % buffers.len() as u64) as usize].copy();
                    {
                        let b = b.get_mut().unwrap();
                        b.set_pts(gst::ClockTime::from_nseconds(n * frame_ns));
                        b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
                    }
                    if appsrc.push_buffer(b).is_ok() {
                        fed.store(n + 1, Ordering::Relaxed);
                    }
                })
                .build(),
        );
    }

    let cpu0 = sys::process_cpu();
    let cs0 = sys::process_context_switches();
    let wall0 = Instant::now();
    pipeline.set_state(gst::State::Playing)?;

    let bus = pipeline.bus().unwrap();
    let mut error = None;
    match bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(spec.timeout.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(msg) => {
            if let gst::MessageView::Error(e) = msg.view() {
                error = Some(format!(
                    "{}: {}",
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default()
                ));
            }
        }
        None => error = Some(format!("no EOS within {:?}", spec.timeout)),
    }
    let cpu = sys::process_cpu() - cpu0;
    let cs1 = sys::process_context_switches();
    let stats = enc
        .find_property("stats")
        .and_then(|_| enc.property::<Option<gst::Structure>>("stats"));
    done.store(true, Ordering::Relaxed);
    pipeline.set_state(gst::State::Null)?;
    let frames_in = fed.load(Ordering::Relaxed);

    let mut t = timing.lock().unwrap();
    let n = t.out.len();
    let warm = (n / 10).min(5);
    let (seconds, fps) = if n >= 2 && n - 1 > warm {
        let s = (t.out[n - 1] - t.out[warm]).as_secs_f64();
        (s, (n - 1 - warm) as f64 / s)
    } else {
        (wall0.elapsed().as_secs_f64(), 0.0)
    };
    let mut latencies_ms = std::mem::take(&mut t.latencies_ms);
    latencies_ms.sort_by(f64::total_cmp);
    if error.is_none() && (n as u64) < frames_in {
        error = Some(format!("{} of {frames_in} frames came out", n));
    }
    Ok(RunResult {
        frames_in,
        frames_out: n as u64,
        seconds,
        fps,
        cpu_seconds: cpu.as_secs_f64(),
        context_switches: (cs1.0 - cs0.0, cs1.1 - cs0.1),
        latencies_ms,
        stats,
        error,
    })
}
