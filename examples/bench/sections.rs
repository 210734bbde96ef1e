//! The six sections of the benchmark, the printed table and the JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::args::Options;
use crate::daemon::{self, Daemon};
use crate::frames::{Format, Frames};
use crate::json::J;
use crate::peer::PeerProcess;
use crate::pipeline::{self, RunResult, RunSpec};
use crate::sys;
use crate::transport::{self, Socket};

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
const X264_GUEST: &str = "x264enc name=enc speed-preset=ultrafast tune=zerolatency";

struct Target {
    name: String,
    goal: String,
    measured: String,
    met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub json: Vec<(String, J)>,
    targets: Vec<Target>,
}

impl Report {
    pub fn target(&mut self, name: &str, goal: String, measured: String, met: Option<bool>) {
        self.targets.push(Target {
            name: name.into(),
            goal,
            measured,
            met,
        });
    }
}

/// Prints as it goes (stdout), so a long run shows progress.
pub fn say(s: &str) {
    println!("{s}");
}

pub fn note(s: &str) {
    eprintln!("[bench] {s}");
}

pub fn run_all(o: Options) -> Result<()> {
    let machine = sys::machine();
    let work = match &o.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("vsockenc-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let started = Instant::now();
    let command: Vec<String> = std::env::args().collect();
    let command = format!("{} {}", "bench", command[1..].join(" "));
    let mut r = Report::default();
    let load_start = sys::loadavg();
    say(&format!(
        "vsockenc benchmark{}\nmachine: {} cores, {}, kernel {}, {}; load average at start {load_start}\n",
        if o.quick {
            " (--quick: few frames, figures are rough)"
        } else {
            ""
        },
        machine.nproc,
        machine.cpu_model,
        machine.kernel,
        machine.gstreamer
    ));

    // Memory runs first so the process's VmHWM covers that run alone; it is
    // printed last.
    let memory = o.memory.then(|| memory_section(&o, &work));

    let need_1080 = o.transport || o.element || o.cpu || o.daemon;
    let frames: HashMap<&str, Frames> = if need_1080 {
        note("generating 1080p frames");
        let k = if o.quick { 4 } else { 16 };
        let mut m = HashMap::new();
        for f in Format::ALL {
            m.insert(f.name(), Frames::generate(f, WIDTH, HEIGHT, k)?);
        }
        m
    } else {
        HashMap::new()
    };

    let mut limits: HashMap<(&str, &str), f64> = HashMap::new();
    if o.transport {
        section_or_error(&mut r, "transport", |r| {
            transport_section(&o, &work, &frames, &mut limits, r)
        });
    }
    if o.element {
        section_or_error(&mut r, "element", |r| {
            element_section(&o, &work, &frames, &limits, r)
        });
    }
    if o.cpu {
        section_or_error(&mut r, "cpu", |r| cpu_section(&o, &work, &frames, r));
    }
    if o.daemon {
        section_or_error(&mut r, "daemon", |r| {
            daemon_section(&o, &work, &frames[Format::Nv12.name()], r)
        });
    }
    if o.side {
        section_or_error(&mut r, "side", |r| crate::side::section(&o, &work, r));
    }
    if o.shm {
        section_or_error(&mut r, "shm", |r| shm_section(&o, &work, r));
    }
    if let Some(m) = memory {
        section_or_error(&mut r, "memory", |r| {
            m.and_then(|m| memory_report(&o, m, r))
        });
    }

    say("\n== Targets (measured here, not asserted) ==");
    for t in &r.targets {
        let verdict = match t.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "n/a",
        };
        say(&format!(
            "  [{verdict:7}] {}: {} (target {})",
            t.name, t.measured, t.goal
        ));
    }
    let total = started.elapsed().as_secs_f64();
    let load_end = sys::loadavg();
    say(&format!(
        "\ntotal run time {total:.0} s; load average at end {load_end}"
    ));

    if let Some(path) = &o.json {
        let mut top = vec![
            ("command".to_string(), J::str(command)),
            ("quick".to_string(), J::Bool(o.quick)),
            (
                "commit".to_string(),
                std::env::var("BENCH_COMMIT").map_or(J::Null, J::Str),
            ),
            (
                "machine".to_string(),
                J::obj([
                    ("nproc", J::num(machine.nproc as f64)),
                    ("cpu_model", J::str(machine.cpu_model.clone())),
                    ("kernel", J::str(machine.kernel.clone())),
                    ("gstreamer", J::str(machine.gstreamer.clone())),
                ]),
            ),
            (
                "duration_per_run_s".to_string(),
                J::num(o.duration.as_secs_f64()),
            ),
            ("reps".to_string(), J::num(o.reps as f64)),
            ("loadavg_start".to_string(), J::str(load_start)),
            ("loadavg_end".to_string(), J::str(load_end)),
            ("total_run_time_s".to_string(), J::num(total)),
        ];
        top.append(&mut r.json);
        top.push((
            "targets".into(),
            J::Arr(
                r.targets
                    .iter()
                    .map(|t| {
                        J::obj([
                            ("name", J::str(t.name.clone())),
                            ("goal", J::str(t.goal.clone())),
                            ("measured", J::str(t.measured.clone())),
                            ("met", t.met.map_or(J::Null, J::Bool)),
                        ])
                    })
                    .collect(),
            ),
        ));
        std::fs::write(path, J::Obj(top).render())
            .with_context(|| format!("writing {}", path.display()))?;
        note(&format!("wrote {}", path.display()));
    }
    if o.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// Section 7 (see `shm.rs`): the element's guest CPU per 1080p frame with
/// shared memory, the socket path and the C element, and 4K NV12 through
/// shared memory.
fn shm_section(o: &Options, work: &Path, r: &mut Report) -> Result<()> {
    use crate::shm::{Setup, Variant};
    let exe = std::env::current_exe()?;
    // <target>/<profile>/examples/bench
    let plugin = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("libgstvsockenc.so"))
        .context("no profile directory")?;
    let setup = Setup::new(work, &plugin, &o.baseline)?;
    setup.start_peer()?;
    let reps = o.reps.max(1);
    let n = o.shm_frames;
    say(&format!(
        "\n== 7. shm: guest CPU per frame, 1920x1080, {n} frames per run, median of {reps} rotations =="
    ));
    say("  (each pipeline its own process, long run minus short run; the host an instant peer)");
    say(
        "  format  variant                                     CPU ms/frame  element ms/frame  fps",
    );
    let mut rows = Vec::new();
    let mut element_ms: HashMap<(String, Variant), f64> = HashMap::new();
    for format in ["BGRx", "NV12"] {
        let mut samples: HashMap<Variant, Vec<crate::shm::Sample>> = HashMap::new();
        for _ in 0..reps {
            for v in Variant::ALL {
                let s = setup.run(v, format, (WIDTH, HEIGHT), n)?;
                samples.entry(v).or_default().push(s);
            }
        }
        let median = |v: Variant| median_by(samples[&v].clone(), |s| s.cpu_ms_per_frame());
        let source = median(Variant::Source).cpu_ms_per_frame();
        for v in Variant::ALL {
            let s = median(v);
            let own = (s.cpu_ms_per_frame() - source).max(0.0);
            if v != Variant::Source {
                element_ms.insert((format.to_string(), v), own);
            }
            say(&format!(
                "  {format:6}  {:42}  {:12.3}  {:>16}  {:5.0}",
                v.label(),
                s.cpu_ms_per_frame(),
                if v == Variant::Source {
                    "-".to_string()
                } else {
                    format!("{own:.3}")
                },
                s.fps()
            ));
            rows.push(J::obj([
                ("format", J::str(format.to_string())),
                ("variant", J::str(v.key().to_string())),
                ("cpu_ms_per_frame", J::num(s.cpu_ms_per_frame())),
                ("element_ms_per_frame", J::num(own)),
                ("fps", J::num(s.fps())),
                (
                    "all_cpu_ms_per_frame",
                    J::Arr(
                        samples[&v]
                            .iter()
                            .map(|s| J::num(s.cpu_ms_per_frame()))
                            .collect(),
                    ),
                ),
            ]));
        }
        let (shm, c) = (
            element_ms[&(format.to_string(), Variant::Shm)],
            element_ms[&(format.to_string(), Variant::CElement)],
        );
        r.target(
            &format!("16: guest CPU per 1080p {format} frame, shared memory vs C element"),
            "at most 0.25x".into(),
            format!(
                "{shm:.3} ms vs {c:.3} ms = {:.2}x (with max-in-flight=1 like the C element {:.3} ms = {:.2}x; socket path {:.3} ms)",
                shm / c,
                element_ms[&(format.to_string(), Variant::ShmOne)],
                element_ms[&(format.to_string(), Variant::ShmOne)] / c,
                element_ms[&(format.to_string(), Variant::Socket)]
            ),
            Some(shm <= 0.25 * c),
        );
    }
    // What a live stream feels through shared memory: the answer time
    // with an instant host (issue 15's < 1 ms at 1080p on Unix sockets).
    let live = if o.quick { 60 } else { 300 };
    let mut answer_rows = Vec::new();
    for format in ["BGRx", "NV12"] {
        let a = setup.answer_times(format, (WIDTH, HEIGHT), live)?;
        let (mean, p99) = (a.mean(), crate::sys::percentile(&a.ms, 99.0));
        say(&format!(
            "  answer time, 1080p {format} at 60 fps through shared memory: mean {mean:.3} ms, p99 {p99:.3} ms ({} frames by slot, {} copied into one)",
            a.shm_frames, a.copied_frames
        ));
        r.target(
            &format!("15: what the element and a Unix socket add to a 1080p {format} frame, shared memory (the default)"),
            "< 1 ms mean".into(),
            format!("mean {mean:.3} ms, p99 {p99:.3} ms over {} frames", a.ms.len()),
            Some(mean < 1.0 && a.shm_frames > 0),
        );
        answer_rows.push(J::obj([
            ("format", J::str(format.to_string())),
            ("frames", J::num(a.ms.len() as f64)),
            ("mean_ms", J::num(mean)),
            ("p99_ms", J::num(p99)),
            ("shm_frames", J::num(a.shm_frames as f64)),
            ("copied_frames", J::num(a.copied_frames as f64)),
        ]));
    }
    // 4K NV12: does the guest keep up 60 fps through shared memory?
    let frames_4k = if o.quick { 60 } else { 600 };
    let mut k4 = Vec::new();
    for _ in 0..reps {
        for v in [Variant::Source, Variant::Shm] {
            k4.push((v, setup.run(v, "NV12", (3840, 2160), frames_4k)?));
        }
    }
    let pick = |v: Variant| {
        median_by(
            k4.iter()
                .filter(|(w, _)| *w == v)
                .map(|(_, s)| *s)
                .collect(),
            |s| s.fps(),
        )
    };
    let (src, shm) = (pick(Variant::Source), pick(Variant::Shm));
    say(&format!(
        "  4K NV12 through shared memory, {frames_4k} frames: {:.0} fps, {:.2} ms CPU per frame (the source alone: {:.0} fps, {:.2} ms)",
        shm.fps(),
        shm.cpu_ms_per_frame(),
        src.fps(),
        src.cpu_ms_per_frame()
    ));
    r.target(
        "16: 4K NV12 at 60 fps through shared memory against an instant peer",
        "at least 60 fps".into(),
        format!("{:.0} fps", shm.fps()),
        Some(shm.fps() >= 60.0),
    );
    r.json.push((
        "shm".into(),
        J::obj([
            ("frames", J::num(n as f64)),
            ("rows", J::Arr(rows)),
            ("answer_times_1080p", J::Arr(answer_rows)),
            (
                "nv12_4k",
                J::obj([
                    ("frames", J::num(frames_4k as f64)),
                    ("shm_fps", J::num(shm.fps())),
                    ("shm_cpu_ms_per_frame", J::num(shm.cpu_ms_per_frame())),
                    ("source_fps", J::num(src.fps())),
                    ("source_cpu_ms_per_frame", J::num(src.cpu_ms_per_frame())),
                ]),
            ),
        ]),
    ));
    Ok(())
}

fn section_or_error(r: &mut Report, name: &str, f: impl FnOnce(&mut Report) -> Result<()>) {
    if let Err(e) = f(r) {
        let msg = format!("{e:#}");
        say(&format!("!! section {name} failed: {msg}"));
        r.json.push((format!("{name}_error"), J::str(msg)));
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn err_json(res: &RunResult) -> J {
    res.error.clone().map_or(J::Null, J::Str)
}

// ---------------------------------------------------------------- section 1

fn transport_section(
    o: &Options,
    work: &Path,
    frames: &HashMap<&str, Frames>,
    limits: &mut HashMap<(&'static str, &'static str), f64>,
    r: &mut Report,
) -> Result<()> {
    say("== 1. Transport limit: FRAME_REQUESTs to a reader thread (write_frame_request -> Decoder::read_from) ==");
    say(&format!(
        "{:<14} {:<6} {:>12} {:>10} {:>10}",
        "socket", "format", "frame bytes", "fps", "MB/s"
    ));
    let mut rows = Vec::new();
    for socket in [Socket::Unix, Socket::Tcp] {
        for f in Format::ALL {
            let fr = &frames[f.name()];
            let maps = fr
                .buffers
                .iter()
                .map(|b| b.map_readable())
                .collect::<Result<Vec<_>, _>>()?;
            let slices: Vec<&[u8]> = maps.iter().map(|m| m.as_slice()).collect();
            let map = &maps[0];
            let req = hxfr::FrameRequest {
                width: WIDTH,
                height: HEIGHT,
                format: f.wire().fourcc(),
                stride: f.wire().min_stride(WIDTH) as u32,
                duration: 33_333_333,
                ..Default::default()
            };
            let mut runs = Vec::new();
            for _ in 0..o.reps {
                runs.push(transport::measure(socket, work, req, &slices, o.duration)?);
            }
            runs.sort_by(|a, b| a.fps.total_cmp(&b.fps));
            let lim = runs.swap_remove(runs.len() / 2);
            say(&format!(
                "{:<14} {:<6} {:>12} {:>10.1} {:>10.0}",
                socket.name(),
                f.name(),
                map.len(),
                lim.fps,
                lim.mbytes_per_s
            ));
            limits.insert((socket.name(), f.name()), lim.fps);
            rows.push(J::obj([
                ("socket", J::str(socket.name())),
                ("format", J::str(f.name())),
                ("frame_bytes", J::num(map.len() as f64)),
                ("frames", J::num(lim.frames as f64)),
                ("seconds", J::num(lim.seconds)),
                ("fps", J::num(lim.fps)),
                ("mbytes_per_s", J::num(lim.mbytes_per_s)),
            ]));
        }
    }
    r.json.push(("transport_limit".into(), J::Arr(rows)));
    Ok(())
}

// ------------------------------------------------------------ sections 2, 3

fn element_section(
    o: &Options,
    work: &Path,
    frames: &HashMap<&str, Frames>,
    limits: &HashMap<(&str, &str), f64>,
    r: &mut Report,
) -> Result<()> {
    let formats: Vec<Format> = Format::ALL
        .into_iter()
        .filter(|f| o.formats.iter().any(|n| n == f.name()))
        .collect();
    say("\n== 2. vsockenc throughput: appsrc ! vsockenc socket-path=... max-in-flight=N ! fakesink, HXFR peer process with simulated host latency ==");
    let mut src_rows = Vec::new();
    for &f in &formats {
        let res = pipeline::run_median(
            RunSpec {
                frames: &frames[f.name()],
                encoder: String::new(),
                max_frames: u64::MAX,
                duration: Some(o.duration),
                min_frames: 10,
                pace_fps: None,
                progress: None,
                timeout: o.duration + Duration::from_secs(60),
            },
            o.reps,
        )?;
        say(&format!(
            "source only (appsrc ! identity ! fakesink), {}: {:.0} fps",
            f.name(),
            res.fps
        ));
        src_rows.push(J::obj([
            ("format", J::str(f.name())),
            ("fps", J::num(res.fps)),
            ("frames", J::num(res.frames_out as f64)),
        ]));
    }
    r.json.push(("source_only".into(), J::Arr(src_rows)));
    say(&format!(
        "{:<6} {:>7} {:>4} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7}  note",
        "format", "host ms", "N", "fps", "ideal", "/ideal", "/limit", "/N=1", "rtt ms", "frames"
    ));
    say("(at 0 ms the unix transport limit is measured again, interleaved with each row's runs, and the row is compared with that)");
    say("(ideal = min(unix transport limit, N / host latency); /N=1 = fps over the max-in-flight 1 row; rtt = the element's mean request-to-response time, stats latency-mean-us; median of --reps runs)");
    let mut rows = Vec::new();
    let mut n1: HashMap<(&str, u64), f64> = HashMap::new();
    let mut fps_at: HashMap<(&str, u64, u32), f64> = HashMap::new();
    let mut paired_limit: HashMap<(&str, u32), f64> = HashMap::new();
    for &lat in &o.latencies_ms {
        let sock = work.join(format!("peer-{lat}ms.sock"));
        let peer = PeerProcess::start(&format!("unix:{}", sock.display()), ms(lat))?;
        note(&format!(
            "peer (host latency {lat} ms) at {}, pid {}",
            peer.addr,
            peer.pid()
        ));
        for &f in &formats {
            let limit = limits.get(&("unix", f.name())).copied();
            for &mif in &o.in_flight {
                let spec = RunSpec {
                    frames: &frames[f.name()],
                    encoder: format!(
                        "vsockenc name=enc socket-path={} max-in-flight={mif}",
                        sock.display()
                    ),
                    max_frames: u64::MAX,
                    duration: Some(o.duration),
                    min_frames: 10,
                    pace_fps: None,
                    progress: None,
                    timeout: o.duration + Duration::from_secs(60),
                };
                // At 0 ms the row is compared with the transport limit, so
                // the limit is measured again interleaved with this row's
                // runs: background load drifts over minutes on a shared
                // machine, and a pair measured together shares it.
                let (res, limit) = if lat == 0 {
                    let (mut runs, mut lims) = (Vec::new(), Vec::new());
                    for _ in 0..o.reps {
                        lims.push(limit_once(o, work, &frames[f.name()])?);
                        runs.push(pipeline::run(spec.clone())?);
                    }
                    let paired = median_by(lims, |v| *v);
                    paired_limit.insert((f.name(), mif), paired);
                    (median_by(runs, |r| r.fps), Some(paired))
                } else {
                    (pipeline::run_median(spec, o.reps)?, limit)
                };
                if mif == 1 {
                    n1.insert((f.name(), lat), res.fps);
                }
                fps_at.insert((f.name(), lat, mif), res.fps);
                let by_latency = (lat > 0).then(|| mif as f64 * 1000.0 / lat as f64);
                let ideal = match (limit, by_latency) {
                    (Some(l), Some(b)) => Some(l.min(b)),
                    (l, b) => l.or(b),
                };
                let ratio_n1 = n1.get(&(f.name(), lat)).map(|b| res.fps / b);
                let dropped = res.stat_u64("frames-dropped");
                let mut notes = String::new();
                if let Some(d) = dropped.filter(|d| *d > 0) {
                    let _ = write!(notes, "dropped {d} ");
                }
                if let Some(e) = &res.error {
                    let _ = write!(notes, "{e}");
                }
                say(&format!(
                    "{:<6} {:>7} {:>4} {:>9.1} {:>9} {:>8} {:>8} {:>8} {:>9.2} {:>7}  {}",
                    f.name(),
                    lat,
                    mif,
                    res.fps,
                    fmt_opt(ideal, 1),
                    fmt_opt(ideal.map(|i| res.fps / i), 2),
                    fmt_opt(limit.map(|l| res.fps / l), 2),
                    fmt_opt(ratio_n1, 2),
                    res.stat_u64("latency-mean-us")
                        .map_or(f64::NAN, |us| us as f64 / 1000.0),
                    res.frames_out,
                    notes.trim()
                ));
                rows.push(J::obj([
                    ("format", J::str(f.name())),
                    ("host_latency_ms", J::num(lat as f64)),
                    ("max_in_flight", J::num(mif)),
                    ("fps", J::num(res.fps)),
                    ("frames", J::num(res.frames_out as f64)),
                    ("seconds", J::num(res.seconds)),
                    ("ideal_fps", J::opt(ideal)),
                    ("ratio_to_ideal", J::opt(ideal.map(|i| res.fps / i))),
                    (
                        "ratio_to_transport_limit",
                        J::opt(limit.map(|l| res.fps / l)),
                    ),
                    (
                        "paired_transport_limit_fps",
                        J::opt(paired_limit.get(&(f.name(), mif)).copied()),
                    ),
                    ("ratio_to_max_in_flight_1", J::opt(ratio_n1)),
                    ("in_out_latency_p50_ms", J::num(res.latency_p(50.0))),
                    ("in_out_latency_p99_ms", J::num(res.latency_p(99.0))),
                    (
                        "element_latency_mean_ms",
                        J::opt(res.stat_u64("latency-mean-us").map(|us| us as f64 / 1000.0)),
                    ),
                    ("cpu_ms_per_frame", J::num(res.cpu_ms_per_frame())),
                    ("frames_dropped", J::opt(dropped.map(|d| d as f64))),
                    ("error", err_json(&res)),
                ]));
            }
        }
        drop(peer);
    }
    r.json.push(("vsockenc_throughput".into(), J::Arr(rows)));

    say("\n== 3. One-frame-in-flight baseline (the C element's design): fps(N) / fps(N=1) ==");
    say(&format!(
        "{:<6} {:>7} {:>9} {:>8} {:>8}",
        "format", "host ms", "N=1 fps", "N=2", "N=4"
    ));
    let mut base = Vec::new();
    for &f in &formats {
        for &lat in &o.latencies_ms {
            let Some(&b) = fps_at.get(&(f.name(), lat, 1)) else {
                continue;
            };
            let r2 = fps_at.get(&(f.name(), lat, 2)).map(|v| v / b);
            let r4 = fps_at.get(&(f.name(), lat, 4)).map(|v| v / b);
            say(&format!(
                "{:<6} {:>7} {:>9.1} {:>7}x {:>7}x",
                f.name(),
                lat,
                b,
                fmt_opt(r2, 2),
                fmt_opt(r4, 2)
            ));
            base.push(J::obj([
                ("format", J::str(f.name())),
                ("host_latency_ms", J::num(lat as f64)),
                ("fps_n1", J::num(b)),
                ("ratio_n2", J::opt(r2)),
                ("ratio_n4", J::opt(r4)),
            ]));
        }
    }
    r.json.push(("one_in_flight_baseline".into(), J::Arr(base)));

    for &f in &formats {
        let limit = limits.get(&("unix", f.name())).copied();
        let paired = paired_limit.get(&(f.name(), 4)).copied();
        if let (Some(l0), Some(&fps)) = (paired.or(limit), fps_at.get(&(f.name(), 0, 4))) {
            let ratio = fps / l0;
            r.target(
                &format!("{} 1080p at 0 ms host latency, max-in-flight 4", f.name()),
                ">= 0.90 of the unix transport limit".into(),
                format!(
                    "{fps:.1} fps = {ratio:.2} of {l0:.1} fps (limit measured interleaved with these runs{})",
                    limit
                        .map(|l| format!("; section 1 measured {l:.1} fps"))
                        .unwrap_or_default()
                ),
                Some(ratio >= 0.9),
            );
        }
        let ideal_by_lat = 4.0 * 1000.0 / 30.0;
        let ideal = limit.map_or(ideal_by_lat, |l| l.min(ideal_by_lat));
        if let (Some(&fps), Some(&n1fps)) = (
            fps_at.get(&(f.name(), 30, 4)),
            fps_at.get(&(f.name(), 30, 1)),
        ) {
            // What a slot really holds: the frame's transfer at the
            // transport limit plus the host latency.
            let model = limit.map(|l| 4.0 / (0.030 + 1.0 / l));
            r.target(
                &format!("{} 1080p at 30 ms host latency, max-in-flight 4", f.name()),
                ">= 0.90 of min(transport limit, 4/30 ms)".into(),
                format!(
                    "{fps:.1} fps = {:.2} of {ideal:.1} fps; {:.2}x the one-in-flight {n1fps:.1} fps{}",
                    fps / ideal,
                    fps / n1fps,
                    model
                        .map(|m| format!(
                            "; 4 / (30 ms + one frame's transfer) = {m:.1} fps, {:.2} of it",
                            fps / m
                        ))
                        .unwrap_or_default()
                ),
                Some(fps / ideal >= 0.9),
            );
        }
    }
    Ok(())
}

/// One transport-limit measurement of a frame of `frames` over a Unix
/// socket, in fps.
fn limit_once(o: &Options, work: &Path, frames: &Frames) -> Result<f64> {
    let f = frames.format;
    let maps = frames
        .buffers
        .iter()
        .map(|b| b.map_readable())
        .collect::<Result<Vec<_>, _>>()?;
    let slices: Vec<&[u8]> = maps.iter().map(|m| m.as_slice()).collect();
    let req = hxfr::FrameRequest {
        width: frames.width,
        height: frames.height,
        format: f.wire().fourcc(),
        stride: f.wire().min_stride(frames.width) as u32,
        duration: 33_333_333,
        ..Default::default()
    };
    Ok(transport::measure(Socket::Unix, work, req, &slices, o.duration)?.fps)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

// ---------------------------------------------------------------- section 4

fn cpu_section(
    o: &Options,
    work: &Path,
    frames: &HashMap<&str, Frames>,
    r: &mut Report,
) -> Result<()> {
    say("\n== 4. Guest CPU per 1080p frame (getrusage RUSAGE_SELF of the bench process; the peer is another process) ==");
    let sock = work.join("peer-cpu.sock");
    let peer = PeerProcess::start(&format!("unix:{}", sock.display()), Duration::ZERO)?;
    let (n_vsock, n_x264) = if o.quick { (30, 15) } else { (300, 120) };
    say(&format!(
        "{:<6} {:<58} {:>7} {:>9} {:>12} {:>13}",
        "format", "pipeline", "frames", "fps", "CPU ms/frame", "wakeups/frame"
    ));
    let mut rows = Vec::new();
    for f in Format::ALL {
        let x264 = match f {
            Format::Nv12 => X264_GUEST.to_string(),
            Format::Bgrx => format!("videoconvert ! {X264_GUEST}"),
        };
        let cases = [
            ("source only", String::new(), n_vsock),
            (
                "vsockenc",
                format!(
                    "vsockenc name=enc socket-path={} max-in-flight=4",
                    sock.display()
                ),
                n_vsock,
            ),
            ("x264enc", x264, n_x264),
        ];
        let mut cpu = HashMap::new();
        for (label, enc, n) in cases {
            let res = pipeline::run(RunSpec {
                frames: &frames[f.name()],
                encoder: enc.clone(),
                max_frames: n,
                duration: None,
                min_frames: n,
                pace_fps: None,
                progress: None,
                timeout: Duration::from_secs(300),
            })?;
            let shown = if enc.is_empty() {
                "appsrc ! identity ! fakesink".to_string()
            } else {
                enc.replace(&format!("socket-path={}", sock.display()), "socket-path=…")
                    .replace("name=enc ", "")
            };
            say(&format!(
                "{:<6} {:<58} {:>7} {:>9.1} {:>12.3} {:>13.1}{}",
                f.name(),
                shown,
                res.frames_out,
                res.fps,
                res.cpu_ms_per_frame(),
                res.wakeups_per_frame(),
                res.error
                    .as_deref()
                    .map(|e| format!("  {e}"))
                    .unwrap_or_default()
            ));
            cpu.insert(label, res.cpu_ms_per_frame());
            rows.push(J::obj([
                ("format", J::str(f.name())),
                ("case", J::str(label)),
                ("pipeline", J::str(shown)),
                ("frames", J::num(res.frames_out as f64)),
                ("fps", J::num(res.fps)),
                ("cpu_seconds", J::num(res.cpu_seconds)),
                ("cpu_ms_per_frame", J::num(res.cpu_ms_per_frame())),
                ("wakeups_per_frame", J::num(res.wakeups_per_frame())),
                ("error", err_json(&res)),
            ]));
        }
        let ratio = cpu["vsockenc"] / cpu["x264enc"];
        say(&format!(
            "{:<6} vsockenc / x264enc CPU per frame = {ratio:.3}",
            f.name()
        ));
        r.target(
            &format!("guest CPU per {} 1080p frame", f.name()),
            "<= 1/4 of in-guest x264enc ultrafast".into(),
            format!(
                "vsockenc {:.2} ms vs x264enc {:.2} ms = {ratio:.3}",
                cpu["vsockenc"], cpu["x264enc"]
            ),
            Some(ratio <= 0.25),
        );
    }
    drop(peer);
    r.json.push(("guest_cpu".into(), J::Arr(rows)));
    Ok(())
}

// ---------------------------------------------------------------- section 5

fn host_bin(o: &Options) -> Result<PathBuf> {
    o.host_bin
        .clone()
        .or_else(daemon::default_host_bin)
        .context("cannot locate vsockenc-host; pass --host-bin")
}

fn daemon_section(o: &Options, work: &Path, frames: &Frames, r: &mut Report) -> Result<()> {
    say("\n== 5. Real daemon: appsrc ! vsockenc max-in-flight=4 keyframe-interval=0 ! fakesink -> vsockenc-host --encoder x264enc, vs plain gst-launch-1.0 ==");
    let chain = daemon::DAEMON_X264_CHAIN.replace("name=enc ", "");
    say(&format!(
        "daemon encoder settings (from host/src/encoder.rs): {chain}"
    ));
    let sock = work.join("daemon.sock");
    let d = Daemon::start(&host_bin(o)?, &sock, work.join("daemon-section5.log"))?;
    let encoder = d.encoder.clone();
    let n = o.daemon_frames;
    let enc = format!(
        "vsockenc name=enc socket-path={} max-in-flight=4 keyframe-interval=0",
        sock.display()
    );
    let unpaced = |encoder: &str| RunSpec {
        frames,
        encoder: encoder.to_string(),
        max_frames: n,
        duration: None,
        min_frames: n,
        pace_fps: None,
        progress: None,
        timeout: Duration::from_secs(300),
    };
    daemon::write_frame_files(frames, work)?;
    // Interleaved repetitions: load from elsewhere on the machine hits all
    // three alike.
    let (mut thr, mut plain, mut inproc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.reps {
        thr.push(pipeline::run(unpaced(&enc))?);
        plain.push(daemon::plain_gst_launch(frames, work, n)?);
        inproc.push(pipeline::run(unpaced(daemon::DAEMON_X264_CHAIN))?);
    }
    daemon::remove_frame_files(frames, work);
    let thr = median_by(thr, |r| r.fps);
    let plain = median_by(plain, |r| r.fps);
    let inproc = median_by(inproc, |r| r.fps);
    // Latency is measured below capacity (0.7 of the slowest, at most 30 fps,
    // the same rate for both), so it shows encoding and transport, not a
    // queue.
    let pace = (thr.fps.min(plain.fps).min(inproc.fps) * 0.7).clamp(1.0, 30.0);
    let lat_frames = n.min(if o.quick { 30 } else { 150 });
    let paced = |encoder: &str| RunSpec {
        frames,
        encoder: encoder.to_string(),
        max_frames: lat_frames,
        duration: None,
        min_frames: lat_frames,
        pace_fps: Some(pace),
        progress: None,
        timeout: Duration::from_secs(300),
    };
    let lat = pipeline::run(paced(&enc))?;
    drop(d);
    let plain_lat = pipeline::run(paced(daemon::DAEMON_X264_CHAIN))?;
    say(&format!(
        "{:<52} {:>7} {:>9} {:>13} {:>9} {:>9}",
        "NV12 1080p", "frames", "fps", "paced at fps", "p50 ms", "p99 ms"
    ));
    let errs = |rs: &[&RunResult]| {
        rs.iter()
            .filter_map(|r| r.error.as_deref())
            .map(|e| format!("  {e}"))
            .collect::<String>()
    };
    say(&format!(
        "{:<52} {:>7} {:>9.1} {:>13.1} {:>9.2} {:>9.2}{}",
        format!("vsockenc -> vsockenc-host ({encoder})"),
        thr.frames_out,
        thr.fps,
        pace,
        lat.latency_p(50.0),
        lat.latency_p(99.0),
        errs(&[&thr, &lat])
    ));
    say(&format!(
        "{:<52} {:>7} {:>9.1} {:>13} {:>9} {:>9}",
        "plain gst-launch-1.0 (multifilesrc ! rawvideoparse ! queue)",
        plain.frames,
        plain.fps,
        "-",
        "-",
        "-"
    ));
    say(&format!(
        "{:<52} {:>7} {:>9.1} {:>13.1} {:>9.2} {:>9.2}{}",
        "same chain in-process (appsrc ! x264enc ...)",
        inproc.frames_out,
        inproc.fps,
        pace,
        plain_lat.latency_p(50.0),
        plain_lat.latency_p(99.0),
        errs(&[&inproc, &plain_lat])
    ));
    say(&format!("plain command: {}", plain.command));
    let ratio = thr.fps / plain.fps;
    let ratio_inproc = thr.fps / inproc.fps;
    say(&format!(
        "daemon / plain gst-launch-1.0 = {ratio:.2}; daemon / in-process chain = {ratio_inproc:.2} (median of {} interleaved runs)",
        o.reps
    ));
    r.target(
        "daemon throughput, NV12 1080p x264enc",
        ">= 0.90 of plain gst-launch-1.0".into(),
        format!(
            "{:.1} fps vs {:.1} fps = {ratio:.2} (vs the same chain in-process {:.1} fps: {ratio_inproc:.2})",
            thr.fps, plain.fps, inproc.fps
        ),
        Some(ratio >= 0.9),
    );
    r.json.push((
        "daemon".into(),
        J::obj([
            ("encoder", J::str(encoder)),
            ("encoder_settings", J::str(chain)),
            ("format", J::str("NV12")),
            ("frames_fed", J::num(thr.frames_in as f64)),
            ("frames", J::num(thr.frames_out as f64)),
            ("fps", J::num(thr.fps)),
            (
                "element_latency_mean_ms",
                J::opt(thr.stat_u64("latency-mean-us").map(|v| v as f64 / 1000.0)),
            ),
            ("guest_cpu_ms_per_frame", J::num(thr.cpu_ms_per_frame())),
            ("paced_fps", J::num(pace)),
            ("latency_p50_ms", J::num(lat.latency_p(50.0))),
            ("latency_p99_ms", J::num(lat.latency_p(99.0))),
            ("plain_command", J::str(plain.command.clone())),
            ("plain_fps", J::num(plain.fps)),
            ("plain_seconds", J::num(plain.seconds)),
            ("inprocess_fps", J::num(inproc.fps)),
            (
                "inprocess_latency_p50_ms",
                J::num(plain_lat.latency_p(50.0)),
            ),
            (
                "inprocess_latency_p99_ms",
                J::num(plain_lat.latency_p(99.0)),
            ),
            ("ratio_to_plain", J::num(ratio)),
            ("ratio_to_inprocess", J::num(ratio_inproc)),
            ("error", err_json(&thr)),
        ]),
    ));
    Ok(())
}

fn median_by<T>(mut v: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = v.len() / 2;
    v.swap_remove(mid)
}

// ---------------------------------------------------------------- section 6

struct Memory {
    width: u32,
    height: u32,
    frames: u64,
    fps: f64,
    window: u64,
    samples: Vec<(u64, u64, u64)>,
    guest_hwm: u64,
    daemon_hwm: u64,
    error: Option<String>,
}

fn memory_section(o: &Options, work: &Path) -> Result<Memory> {
    let (w, h) = o.memory_size;
    note(&format!(
        "memory run: {} frames NV12 {w}x{h} through vsockenc-host",
        o.memory_frames
    ));
    let frames = Frames::generate(Format::Nv12, w, h, if o.quick { 4 } else { 16 })?;
    let sock = work.join("daemon-mem.sock");
    let d = Daemon::start(&host_bin(o)?, &sock, work.join("daemon-memory.log"))?;
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (progress, stop, samples) = (progress.clone(), stop.clone(), samples.clone());
        let (me, daemon_pid) = (std::process::id(), d.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let done = progress.load(Ordering::Relaxed);
                if let (Some((g, _)), Some((dm, _))) = (sys::rss_kib(me), sys::rss_kib(daemon_pid))
                {
                    samples.lock().unwrap().push((done, g, dm));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let res = pipeline::run(RunSpec {
        frames: &frames,
        encoder: format!(
            "vsockenc name=enc socket-path={} max-in-flight=4 keyframe-interval=0",
            sock.display()
        ),
        max_frames: o.memory_frames,
        duration: None,
        min_frames: o.memory_frames,
        pace_fps: None,
        progress: Some(progress),
        timeout: Duration::from_secs(600),
    });
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let guest_hwm = sys::rss_kib(std::process::id()).map_or(0, |v| v.1);
    let daemon_hwm = sys::rss_kib(d.pid()).map_or(0, |v| v.1);
    drop(d);
    let res = res?;
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    Ok(Memory {
        width: w,
        height: h,
        frames: res.frames_out,
        fps: res.fps,
        window: (o.memory_frames / 5).min(1000),
        samples,
        guest_hwm,
        daemon_hwm,
        error: res.error,
    })
}

fn memory_report(o: &Options, m: Memory, r: &mut Report) -> Result<()> {
    say(&format!(
        "\n== 6. Memory: {} frames NV12 {}x{} through vsockenc-host (x264enc), max-in-flight 4, {:.1} fps ==",
        m.frames, m.width, m.height, m.fps
    ));
    if (m.width, m.height) != (WIDTH, HEIGHT) {
        say("(a modest size: 5,000 frames at 1080p through x264 would take several minutes on 2 cores; --memory-size 1920x1080 runs it)");
    }
    let total = o.memory_frames;
    let peak = |lo: u64, hi: u64, pick: fn(&(u64, u64, u64)) -> u64| {
        m.samples
            .iter()
            .filter(|s| s.0 >= lo && s.0 < hi)
            .map(pick)
            .max()
    };
    let w = m.window;
    let first_g = peak(0, w, |s| s.1);
    let last_g = peak(total.saturating_sub(w), u64::MAX, |s| s.1);
    let first_d = peak(0, w, |s| s.2);
    let last_d = peak(total.saturating_sub(w), u64::MAX, |s| s.2);
    let mib = |v: Option<u64>| fmt_opt(v.map(|k| k as f64 / 1024.0), 1);
    say(&format!(
        "{:<22} {:>12} {:>22} {:>22} {:>8}",
        "process",
        "VmHWM MiB",
        format!("peak RSS first {w} MiB"),
        format!("peak RSS last {w} MiB"),
        "growth"
    ));
    let mut rows = Vec::new();
    for (name, hwm, first, last) in [
        ("guest (bench process)", m.guest_hwm, first_g, last_g),
        ("vsockenc-host", m.daemon_hwm, first_d, last_d),
    ] {
        let growth = match (first, last) {
            (Some(a), Some(b)) if a > 0 => Some(b as f64 / a as f64 - 1.0),
            _ => None,
        };
        say(&format!(
            "{:<22} {:>12.1} {:>22} {:>22} {:>8}",
            name,
            hwm as f64 / 1024.0,
            mib(first),
            mib(last),
            fmt_opt(growth.map(|g| g * 100.0), 1) + "%"
        ));
        r.target(
            &format!("{name} RSS flat over {} frames", m.frames),
            "last vs first thousand within 10%".into(),
            format!(
                "{} -> {} MiB ({}%)",
                mib(first),
                mib(last),
                fmt_opt(growth.map(|g| g * 100.0), 1)
            ),
            growth.map(|g| g.abs() <= 0.10),
        );
        rows.push(J::obj([
            ("process", J::str(name)),
            ("vmhwm_kib", J::num(hwm as f64)),
            ("peak_rss_first_kib", J::opt(first.map(|v| v as f64))),
            ("peak_rss_last_kib", J::opt(last.map(|v| v as f64))),
            ("growth", J::opt(growth)),
        ]));
    }
    if let Some(e) = &m.error {
        say(&format!("note: {e}"));
    }
    r.json.push((
        "memory".into(),
        J::obj([
            ("width", J::num(m.width)),
            ("height", J::num(m.height)),
            ("format", J::str("NV12")),
            ("frames", J::num(m.frames as f64)),
            ("fps", J::num(m.fps)),
            ("window_frames", J::num(m.window as f64)),
            ("processes", J::Arr(rows)),
            (
                "samples_frames_guest_daemon_kib",
                J::Arr(
                    m.samples
                        .iter()
                        .step_by((m.samples.len() / 200).max(1))
                        .map(|s| {
                            J::Arr(vec![
                                J::num(s.0 as f64),
                                J::num(s.1 as f64),
                                J::num(s.2 as f64),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("error", m.error.clone().map_or(J::Null, J::Str)),
        ]),
    ));
    Ok(())
}
