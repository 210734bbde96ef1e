//! Section `side`: vsockenc side by side with the C element it replaces and
//! with the copy-bound limit, guest CPU per frame first.
//!
//! For every size (720p, 1080p), format (BGRx, NV12) and transport (Unix
//! socket, TCP loopback), three kinds of guest runs go against the same
//! instant host stand-in (a `--peer` process): vsockenc, the C element
//! (`../shared/baseline`), and a minimal writer that only copies each frame
//! into the socket (`guest.rs`). Each run is a process of its own; the kinds
//! are interleaved (the order rotates every repetition) and each figure is
//! the median of the repetitions, because single runs on this shared machine
//! move by ±30%. Guest CPU per frame is user + system time of the guest
//! process over its streaming, divided by frames.
//!
//! Then frames per second against a host that answers after 30 ms (where
//! frames in flight matter), and what the element and the transport add on
//! top of the host's own time: the answer time per frame (into the element
//! to out of it) of frames fed at 60 fps (a live source: no queue in front
//! of the socket) to a host whose own time is nil.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::args::Options;
use crate::frames::Format;
use crate::guest::{self, Baseline, Kind, Outcome, Spec};
use crate::json::J;
use crate::peer::PeerProcess;
use crate::sections::{note, say, Report};
use crate::sys;

const SIZES: [(u32, u32); 2] = [(1280, 720), (1920, 1080)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Transport {
    Unix,
    Tcp,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::Unix, Transport::Tcp];

    fn name(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
        }
    }

    fn peer(self, work: &Path, latency: Duration) -> Result<PeerProcess> {
        let listen = match self {
            Transport::Unix => format!("unix:{}", work.join("side.sock").display()),
            Transport::Tcp => "tcp:127.0.0.1:0".to_string(),
        };
        PeerProcess::start(&listen, latency)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians over the repetitions of one kind.
#[derive(Debug, Clone, Default)]
struct Medians {
    cpu_ms: f64,
    fps: f64,
    wakeups: f64,
    latency_mean_ms: f64,
    latency_p99_ms: f64,
    runs: usize,
    errors: Vec<String>,
}

impl Medians {
    fn of(runs: &[Outcome]) -> Medians {
        let ok: Vec<&Outcome> = runs.iter().filter(|o| o.error.is_none()).collect();
        let m = |f: &dyn Fn(&Outcome) -> f64| median(ok.iter().map(|o| f(o)).collect());
        Medians {
            cpu_ms: m(&|o| o.cpu_ms_per_frame()),
            fps: m(&|o| o.fps),
            wakeups: m(&|o| o.wakeups_per_frame()),
            latency_mean_ms: m(&|o| o.latency_mean_ms),
            latency_p99_ms: m(&|o| o.latency_p99_ms),
            runs: ok.len(),
            errors: runs.iter().filter_map(|o| o.error.clone()).collect(),
        }
    }

    fn json(&self) -> J {
        J::obj([
            ("cpu_ms_per_frame", J::num(self.cpu_ms)),
            ("fps", J::num(self.fps)),
            ("wakeups_per_frame", J::num(self.wakeups)),
            ("latency_mean_ms", J::num(self.latency_mean_ms)),
            ("latency_p99_ms", J::num(self.latency_p99_ms)),
            ("runs", J::num(self.runs as f64)),
            (
                "errors",
                J::Arr(self.errors.iter().map(|e| J::str(e.clone())).collect()),
            ),
        ])
    }
}

/// Runs every kind `reps` times against the peer at `addr`, interleaved.
fn interleaved(
    kinds: &[Kind],
    base: &Spec,
    baseline: Option<&Baseline>,
    reps: usize,
) -> HashMap<Kind, Medians> {
    let mut runs: HashMap<Kind, Vec<Outcome>> = HashMap::new();
    for rep in 0..reps {
        for i in 0..kinds.len() {
            let kind = kinds[(i + rep) % kinds.len()];
            let spec = Spec {
                kind,
                ..base.clone()
            };
            let outcome = guest::run(&spec, baseline).unwrap_or_else(|e| Outcome {
                error: Some(format!("{e:#}")),
                ..Outcome::default()
            });
            if let Some(e) = &outcome.error {
                note(&format!("{} run failed: {e}", kind.name()));
            }
            runs.entry(kind).or_default().push(outcome);
        }
    }
    runs.into_iter()
        .map(|(k, v)| (k, Medians::of(&v)))
        .collect()
}

pub fn section(o: &Options, work: &Path, r: &mut Report) -> Result<()> {
    let baseline = Baseline::locate(work);
    let reps = if o.quick { 1 } else { o.reps.max(5) };
    say(&format!(
        "\n== 7. Side by side: guest CPU per frame of vsockenc, the C element and a minimal writer \
         (copy into the socket), against an instant host; separate processes, interleaved, \
         median of {reps} ==",
    ));
    match &baseline {
        Some(b) => note(&format!("C element: {}", b.plugin_dir.display())),
        None => note(
            "the C element (../shared/baseline/libgstvsockenc.so) is missing: its rows are empty",
        ),
    }
    let mut kinds = vec![Kind::Vsockenc, Kind::Writer];
    if baseline.is_some() {
        kinds.insert(1, Kind::CElement);
    }
    say(&format!(
        "{:<9} {:<5} {:<5} | {:>9} {:>9} {:>9} | {:>6} {:>8} | {:>7} {:>7} {:>7} | {:>7} {:>7} | {:>7} {:>7}",
        "size", "fmt", "via", "vs ms/f", "C ms/f", "wr ms/f", "vs/C", "vs/wr", "vs fps", "C fps", "wr fps",
        "vs wk/f", "C wk/f", "ans ms", "ans p99"
    ));
    let mut rows = Vec::new();
    let mut worst_vs_c: f64 = 0.0;
    let mut worst_vs_writer: f64 = 0.0;
    let mut fps_shortfall: Vec<String> = Vec::new();
    let mut overhead_1080_unix: Vec<(String, f64, f64)> = Vec::new();
    for transport in Transport::ALL {
        let peer = transport.peer(work, Duration::ZERO)?;
        for (w, h) in SIZES {
            let frames = match (o.quick, h) {
                (true, _) => 30,
                (false, 1080) => 150,
                (false, _) => 250,
            };
            for format in Format::ALL
                .into_iter()
                .filter(|f| o.formats.iter().any(|n| n == f.name()))
            {
                let base = Spec {
                    kind: Kind::Vsockenc,
                    addr: peer.addr.clone(),
                    format,
                    width: w,
                    height: h,
                    frames,
                    in_flight: 4,
                    pace_fps: None,
                };
                let mut m = interleaved(&kinds, &base, baseline.as_ref(), reps);
                // What a live stream feels: the answer time of frames fed at
                // 60 fps (no queue in front of the socket), with an instant
                // host: what the element and the transport add.
                let paced = interleaved(
                    &[Kind::Vsockenc],
                    &Spec {
                        frames: if o.quick { 20 } else { 120 },
                        pace_fps: Some(60.0),
                        ..base.clone()
                    },
                    baseline.as_ref(),
                    reps.min(3),
                );
                if let (Some(v), Some(p)) = (m.get_mut(&Kind::Vsockenc), paced.get(&Kind::Vsockenc))
                {
                    v.latency_mean_ms = p.latency_mean_ms;
                    v.latency_p99_ms = p.latency_p99_ms;
                }
                let get = |k: Kind| m.get(&k).cloned().unwrap_or_default();
                let (vs, c, wr) = (get(Kind::Vsockenc), get(Kind::CElement), get(Kind::Writer));
                let vs_c = vs.cpu_ms / c.cpu_ms;
                let vs_wr = vs.cpu_ms / wr.cpu_ms;
                say(&format!(
                    "{:<9} {:<5} {:<5} | {:>9.3} {:>9.3} {:>9.3} | {:>6.2} {:>8.2} | {:>7.0} {:>7.0} {:>7.0} | {:>7.1} {:>7.1} | {:>7.2} {:>7.2}",
                    format!("{w}x{h}"), format.name(), transport.name(),
                    vs.cpu_ms, c.cpu_ms, wr.cpu_ms, vs_c, vs_wr, vs.fps, c.fps, wr.fps,
                    vs.wakeups, c.wakeups, vs.latency_mean_ms, vs.latency_p99_ms
                ));
                if vs_c.is_finite() {
                    worst_vs_c = worst_vs_c.max(vs_c);
                } else {
                    worst_vs_c = f64::NAN;
                }
                if vs_wr.is_finite() {
                    worst_vs_writer = worst_vs_writer.max(vs_wr);
                }
                if vs.fps < c.fps {
                    fps_shortfall.push(format!(
                        "{w}x{h} {} {}: {:.0} < {:.0}",
                        format.name(),
                        transport.name(),
                        vs.fps,
                        c.fps
                    ));
                }
                if h == 1080 && transport == Transport::Unix {
                    overhead_1080_unix.push((
                        format.name().to_string(),
                        vs.latency_mean_ms,
                        vs.latency_p99_ms,
                    ));
                }
                rows.push(J::obj([
                    ("size", J::str(format!("{w}x{h}"))),
                    ("format", J::str(format.name())),
                    ("transport", J::str(transport.name())),
                    ("frames_per_run", J::num(frames as f64)),
                    ("vsockenc", vs.json()),
                    ("c_element", c.json()),
                    ("writer", wr.json()),
                    ("vsockenc_over_c_cpu", J::num(vs_c)),
                    ("vsockenc_over_writer_cpu", J::num(vs_wr)),
                ]));
            }
        }
    }
    r.target(
        "guest CPU per frame against the C element",
        "<= 1.0 in every row (720p and 1080p, BGRx and NV12, Unix and TCP)".into(),
        format!("worst row {worst_vs_c:.2}"),
        (!worst_vs_c.is_nan()).then_some(worst_vs_c <= 1.0),
    );
    r.target(
        "guest CPU per frame against the minimal writer",
        "<= 1.15 in every row".into(),
        format!("worst row {worst_vs_writer:.2}"),
        Some(worst_vs_writer <= 1.15),
    );
    r.target(
        "frames/s at 0 ms host latency against the C element",
        ">= the C element's in every row".into(),
        if fps_shortfall.is_empty() {
            "every row".into()
        } else {
            fps_shortfall.join("; ")
        },
        Some(fps_shortfall.is_empty()),
    );
    let worst_overhead = overhead_1080_unix
        .iter()
        .map(|(_, mean, _)| *mean)
        .fold(0.0, f64::max);
    r.target(
        "what the element and the Unix socket add to a 1080p frame (answer time with an instant host)",
        "< 1 ms mean".into(),
        overhead_1080_unix
            .iter()
            .map(|(f, mean, p99)| format!("{f} mean {mean:.2} ms p99 {p99:.2} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        Some(worst_overhead < 1.0),
    );

    // Against a host that answers after 30 ms: frames in flight.
    say("\n   frames/s against a host answering after 30 ms (1080p, Unix socket):");
    let peer = Transport::Unix.peer(work, Duration::from_millis(30))?;
    let mut slow_rows = Vec::new();
    let mut worst_ratio = f64::INFINITY;
    let slow_kinds: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::Writer)
        .collect();
    for format in Format::ALL
        .into_iter()
        .filter(|f| o.formats.iter().any(|n| n == f.name()))
    {
        let base = Spec {
            kind: Kind::Vsockenc,
            addr: peer.addr.clone(),
            format,
            width: 1920,
            height: 1080,
            frames: if o.quick { 10 } else { 60 },
            in_flight: 4,
            pace_fps: None,
        };
        let m = interleaved(&slow_kinds, &base, baseline.as_ref(), reps.min(3));
        let vs = m.get(&Kind::Vsockenc).cloned().unwrap_or_default();
        let c = m.get(&Kind::CElement).cloned().unwrap_or_default();
        let ratio = vs.fps / c.fps;
        worst_ratio = if ratio.is_finite() {
            worst_ratio.min(ratio)
        } else {
            f64::NAN
        };
        say(&format!(
            "   {:<5} vsockenc (max-in-flight=4) {:>6.1} fps, C element {:>6.1} fps: {ratio:.2}x",
            format.name(),
            vs.fps,
            c.fps
        ));
        slow_rows.push(J::obj([
            ("format", J::str(format.name())),
            ("vsockenc", vs.json()),
            ("c_element", c.json()),
            ("ratio", J::num(ratio)),
        ]));
    }
    r.target(
        "frames/s at 30 ms host latency against the C element",
        ">= 3.5x".into(),
        format!("{worst_ratio:.2}x (worst format)"),
        (!worst_ratio.is_nan()).then_some(worst_ratio >= 3.5),
    );
    r.json.push((
        "side_by_side".into(),
        J::obj([
            ("reps", J::num(reps as f64)),
            ("loadavg", J::str(sys::loadavg())),
            ("rows", J::Arr(rows)),
            ("at_30ms", J::Arr(slow_rows)),
        ]),
    ));
    Ok(())
}
