//! One guest-side run in a process of its own (`bench --guest …`), so that
//! vsockenc and the C element `gstvsockenc` (which registers an element of
//! the same name) are measured the same way, one at a time, and so that
//! each process's CPU time is its run's alone.
//!
//! Kinds of runs:
//! * `vsockenc`: `appsrc ! vsockenc ! fakesink`, the plugin registered
//!   statically (no other vsockenc is loaded);
//! * `c-element`: the same pipeline with the C element, loaded from the
//!   baseline directory the parent passes in `GST_PLUGIN_PATH` (with a
//!   registry of its own);
//! * `writer`: no GStreamer at all: frame-sized FRAME_REQUESTs written with
//!   `hxfr::write::write_frame_request` (vectored, no copy in user space)
//!   and the answers read back, at most `in-flight` outstanding: what one
//!   copy of each frame into the socket costs on its own, the limit.
//!
//! The child generates the same 16 frames the other sections use, then
//! measures `getrusage(RUSAGE_SELF)` over the streaming only, and prints one
//! `result` line that the parent parses.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::frames::{Format, Frames};
use crate::pipeline::{self, RunSpec};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Vsockenc,
    CElement,
    Writer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vsockenc => "vsockenc",
            Kind::CElement => "c-element",
            Kind::Writer => "writer",
        }
    }

    pub fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "vsockenc" => Ok(Kind::Vsockenc),
            "c-element" => Ok(Kind::CElement),
            "writer" => Ok(Kind::Writer),
            other => Err(format!("--guest: unknown kind {other:?}")),
        }
    }
}

/// What one guest run does.
#[derive(Debug, Clone)]
pub struct Spec {
    pub kind: Kind,
    /// `unix:PATH` or `tcp:HOST:PORT`, where the peer listens.
    pub addr: String,
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub in_flight: u32,
    /// Feed at this rate (a live source) instead of as fast as possible.
    pub pace_fps: Option<f64>,
}

impl Spec {
    fn args(&self) -> Vec<String> {
        vec![
            "--guest".into(),
            self.kind.name().into(),
            "--connect".into(),
            self.addr.clone(),
            "--format".into(),
            self.format.name().into(),
            "--size".into(),
            format!("{}x{}", self.width, self.height),
            "--frames".into(),
            self.frames.to_string(),
            "--in-flight".into(),
            self.in_flight.to_string(),
            "--pace".into(),
            self.pace_fps.map_or("0".into(), |f| f.to_string()),
        ]
    }

    /// The element's address properties, the same for both elements.
    fn address_props(&self) -> Result<String> {
        if let Some(p) = self.addr.strip_prefix("unix:") {
            Ok(format!("socket-path={p}"))
        } else if let Some(hp) = self.addr.strip_prefix("tcp:") {
            let (h, p) = hp.rsplit_once(':').context("tcp:HOST:PORT")?;
            Ok(format!("tcp-host={h} tcp-port={p}"))
        } else {
            bail!("bad address {}", self.addr)
        }
    }
}

/// What a guest run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub frames: u64,
    pub seconds: f64,
    pub fps: f64,
    pub cpu_seconds: f64,
    /// Voluntary context switches (wake-ups) of the whole process.
    pub wakeups: u64,
    /// Per-frame time into the element to out of it, milliseconds.
    pub latency_mean_ms: f64,
    pub latency_p99_ms: f64,
    pub error: Option<String>,
}

impl Outcome {
    pub fn cpu_ms_per_frame(&self) -> f64 {
        self.cpu_seconds * 1000.0 / self.frames.max(1) as f64
    }

    pub fn wakeups_per_frame(&self) -> f64 {
        self.wakeups as f64 / self.frames.max(1) as f64
    }

    fn line(&self) -> String {
        format!(
            "result frames={} seconds={} fps={} cpu={} wakeups={} lat_mean={} lat_p99={} error={}",
            self.frames,
            self.seconds,
            self.fps,
            self.cpu_seconds,
            self.wakeups,
            self.latency_mean_ms,
            self.latency_p99_ms,
            self.error
                .as_deref()
                .unwrap_or("-")
                .replace(char::is_whitespace, "_")
        )
    }

    fn parse(line: &str) -> Result<Outcome> {
        let mut o = Outcome::default();
        let rest = line
            .strip_prefix("result ")
            .ok_or_else(|| anyhow!("not a result line: {line}"))?;
        for kv in rest.split(' ') {
            let (k, v) = kv.split_once('=').context("key=value")?;
            match k {
                "frames" => o.frames = v.parse()?,
                "seconds" => o.seconds = v.parse()?,
                "fps" => o.fps = v.parse()?,
                "cpu" => o.cpu_seconds = v.parse()?,
                "wakeups" => o.wakeups = v.parse()?,
                "lat_mean" => o.latency_mean_ms = v.parse()?,
                "lat_p99" => o.latency_p99_ms = v.parse()?,
                "error" if v != "-" => o.error = Some(v.replace('_', " ")),
                _ => {}
            }
        }
        Ok(o)
    }
}

/// Where the C element is, and the registry it gets (its own, so that it is
/// never mixed with ours).
#[derive(Debug, Clone)]
pub struct Baseline {
    pub plugin_dir: PathBuf,
    pub registry: PathBuf,
}

impl Baseline {
    /// `VSOCKENC_BASELINE`, or `shared/baseline` in the nearest directory
    /// above the repository that has one (`../shared/baseline` of a clone).
    pub fn locate(work_dir: &Path) -> Option<Baseline> {
        let dir = std::env::var_os("VSOCKENC_BASELINE")
            .map(PathBuf::from)
            .or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .ancestors()
                    .skip(1)
                    .map(|a| a.join("shared/baseline"))
                    .find(|d| d.join("libgstvsockenc.so").is_file())
            })?;
        dir.join("libgstvsockenc.so").is_file().then(|| Baseline {
            plugin_dir: dir,
            registry: work_dir.join("c-baseline-registry.bin"),
        })
    }
}

/// Runs `spec` in a child process of this program and returns what it
/// measured.
pub fn run(spec: &Spec, baseline: Option<&Baseline>) -> Result<Outcome> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(spec.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if spec.kind == Kind::CElement {
        let b = baseline.context("the C element is not available (../shared/baseline)")?;
        cmd.env("GST_PLUGIN_PATH", &b.plugin_dir)
            .env("GST_REGISTRY", &b.registry);
    } else {
        cmd.env_remove("GST_PLUGIN_PATH");
    }
    let out = cmd.output().context("running a guest child")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().rev().find(|l| l.starts_with("result ")) {
        Some(l) => Outcome::parse(l),
        None => bail!(
            "the {} child gave no result (exit {:?}): {}",
            spec.kind.name(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    }
}

/// The child side (`bench --guest …`).
pub fn child(spec: Spec) -> Result<()> {
    gst::init()?;
    if spec.kind == Kind::Vsockenc {
        gstvsockenc::plugin_register_static()?;
    }
    let frames = Frames::generate(spec.format, spec.width, spec.height, 16)?;
    let outcome = match spec.kind {
        Kind::Writer => writer(&spec, &frames)?,
        Kind::Vsockenc | Kind::CElement => element(&spec, &frames)?,
    };
    println!("{}", outcome.line());
    Ok(())
}

fn element(spec: &Spec, frames: &Frames) -> Result<Outcome> {
    if spec.kind == Kind::CElement {
        // Fail loudly if ours sneaked in: both are called vsockenc.
        let f = gst::ElementFactory::find("vsockenc").context("no vsockenc element")?;
        let file = gst::prelude::PluginFeatureExt::plugin(&f)
            .and_then(|p| p.filename())
            .unwrap_or_default();
        if !file.to_string_lossy().contains("baseline") {
            bail!("the vsockenc found is {file:?}, not the C baseline");
        }
    }
    let in_flight = match spec.kind {
        Kind::Vsockenc => format!(" max-in-flight={}", spec.in_flight),
        _ => String::new(),
    };
    let res = pipeline::run(RunSpec {
        frames,
        encoder: format!("vsockenc name=enc {}{in_flight}", spec.address_props()?),
        max_frames: spec.frames,
        duration: None,
        min_frames: spec.frames,
        pace_fps: spec.pace_fps,
        progress: None,
        timeout: Duration::from_secs(300),
    })?;
    let mut error = res.error.clone();
    // The C element pushes a frame's output when the next frame comes in,
    // so at EOS its last frame stays inside: that is its design, not a
    // failure of the run.
    if spec.kind == Kind::CElement
        && res.frames_out + 1 >= res.frames_in
        && res.frames_out > 0
        && error
            .as_deref()
            .is_some_and(|e| e.contains("frames came out"))
    {
        error = None;
    }
    let mean = if res.latencies_ms.is_empty() {
        0.0
    } else {
        res.latencies_ms.iter().sum::<f64>() / res.latencies_ms.len() as f64
    };
    Ok(Outcome {
        frames: res.frames_out,
        seconds: res.seconds,
        fps: res.fps,
        cpu_seconds: res.cpu_seconds,
        wakeups: res.context_switches.0,
        latency_mean_ms: mean,
        latency_p99_ms: res.latency_p(99.0),
        error,
    })
}

/// A connected socket of either kind.
enum Sock {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Sock {
    fn connect(addr: &str) -> Result<Sock> {
        if let Some(p) = addr.strip_prefix("unix:") {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            // The same send buffer the element asks for (transport.rs): the
            // limit is the copy, not the kernel's default buffer size.
            let _ = nix::sys::socket::setsockopt(
                &s,
                nix::sys::socket::sockopt::SndBuf,
                &(8usize << 20),
            );
            Ok(Sock::Unix(s))
        } else if let Some(hp) = addr.strip_prefix("tcp:") {
            let s = std::net::TcpStream::connect(hp)?;
            s.set_nodelay(true)?;
            Ok(Sock::Tcp(s))
        } else {
            bail!("bad address {addr}")
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Sock::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    fn split(&self) -> Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        Ok(match self {
            Sock::Unix(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
            Sock::Tcp(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
        })
    }
}

/// The copy-bound limit: one thread writes each frame with one vectored
/// write and reads answers only while the window is full, so it never
/// sleeps in `recv` while it writes, and nothing but the copy and the
/// socket's own waiting costs CPU.
fn writer(spec: &Spec, frames: &Frames) -> Result<Outcome> {
    let sock = Sock::connect(&spec.addr)?;
    let (mut r, mut w) = sock.split()?;
    let format = spec.format.wire();
    let stride = format.min_stride(spec.width) as u32;
    let maps: Vec<gst::MappedBuffer<gst::buffer::Readable>> = frames
        .buffers
        .iter()
        .map(|b| b.clone().into_mapped_buffer_readable().unwrap())
        .collect();
    let mut dec = hxfr::Decoder::default();
    let mut answered = 0u64;
    let mut read_answer = |answered: &mut u64| -> Result<()> {
        match dec.read_from(&mut r)? {
            Some(_) => {
                *answered += 1;
                Ok(())
            }
            None => bail!("the peer closed the connection"),
        }
    };
    let cpu0 = sys::process_cpu();
    let cs0 = sys::process_context_switches();
    let t0 = Instant::now();
    for n in 0..spec.frames {
        // At most in-flight frames outstanding, like the element.
        while n - answered >= spec.in_flight as u64 {
            read_answer(&mut answered)?;
        }
        let req = hxfr::FrameRequest {
            resource_id: 0,
            width: spec.width,
            height: spec.height,
            format: format.fourcc(),
            stride,
            pts: n as i64,
            duration: 33_333_333,
            force_keyframe: false,
        };
        let pixels = maps[(n % maps.len() as u64) as usize].as_slice();
        hxfr::write::write_frame_request(&mut w, 1, &req, &[pixels])?;
    }
    while answered < spec.frames {
        read_answer(&mut answered)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = sys::process_cpu() - cpu0;
    let cs1 = sys::process_context_switches();
    sock.shutdown();
    Ok(Outcome {
        frames: spec.frames,
        seconds,
        fps: spec.frames as f64 / seconds,
        cpu_seconds: cpu.as_secs_f64(),
        wakeups: cs1.0 - cs0.0,
        ..Outcome::default()
    })
}
