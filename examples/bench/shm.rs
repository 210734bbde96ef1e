//! Section `shm`: guest CPU per frame with shared-memory frames, with the
//! socket path, and with the C element (`../shared/baseline`), side by side
//! in one run; and 4K NV12 through shared memory.
//!
//! Every guest pipeline runs as its own `gst-launch-1.0` process (the C
//! element is also named `vsockenc`, so it cannot share a process with
//! ours), and its CPU time is that process's, from `wait4`:
//!
//! ```text
//! videotestsrc num-buffers=N pattern=blink ! video/x-raw,format=F,WxH ! ELEMENT ! fakesink
//! ```
//!
//! `blink` alternates black and white frames: every pixel changes every
//! frame (no compact frame can shortcut it) and drawing it costs little.
//! Starting a process (loading GStreamer, connecting) costs tens of
//! milliseconds, so each figure is the difference between a long and a
//! short run of the same pipeline: CPU per frame = (CPU(long) - CPU(short))
//! / (frames(long) - frames(short)), and the same for wall time. The
//! element's own cost per frame is the pipeline's minus that of the same
//! source into `fakesink` alone, measured in the same rotation (a source
//! writing into the element's pool costs what it costs into its own).
//! Rows rotate within each repetition (source, shm, socket, C) so a change
//! of the machine's load hits them all; the median of the repetitions is
//! reported.
//!
//! The host is an instant peer in this process (its CPU is not the
//! guest's): it answers every frame at once with a tiny access unit, takes
//! the shared-memory region without mapping it (the daemon's side of a
//! slot is a buffer wrap; see the `daemon` section for encoding), and
//! releases each slot with its answer.
//!
//! Then the answer time with shared memory: what the element and the
//! transport add to a frame when the host's own time is nil, from a live
//! source at 60 fps writing into the element's pool (the default path on a
//! Unix socket to a current daemon), measured in this process with pad
//! probes on the element (into it, out of it).

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;
use hxfr::ext::{ext_bits, ExtMessage, HelloAck};
use hxfr::shm::{ShmAck, ShmRelease};
use hxfr::{Decoded, Decoder, FrameResponse, Limits, Message};

/// One row: a pipeline's CPU and wall time for its frames.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub cpu: Duration,
    pub wall: Duration,
    pub frames: u64,
}

impl Sample {
    pub fn cpu_ms_per_frame(&self) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / self.frames as f64
    }

    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.wall.as_secs_f64()
    }
}

/// The element variants compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `videotestsrc ! fakesink`: the cost of producing the pixels.
    Source,
    /// The default, four frames in flight.
    Shm,
    /// One frame in flight, like the C element: fewer pool buffers in
    /// rotation, so the source's writes stay in the cache.
    ShmOne,
    Socket,
    CElement,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Source,
        Variant::Shm,
        Variant::ShmOne,
        Variant::Socket,
        Variant::CElement,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::Source => "source only",
            Variant::Shm => "vsockenc, shared memory",
            Variant::ShmOne => "vsockenc, shared memory, max-in-flight=1",
            Variant::Socket => "vsockenc, socket (shared-memory=false)",
            Variant::CElement => "C element (one frame in flight)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Variant::Source => "source",
            Variant::Shm => "shm",
            Variant::ShmOne => "shm_in_flight_1",
            Variant::Socket => "socket",
            Variant::CElement => "c_element",
        }
    }
}

/// Where the pieces are.
pub struct Setup {
    /// A directory holding only our plugin, and its registry.
    ours: (PathBuf, PathBuf),
    /// The C element's directory, and its registry.
    baseline: (PathBuf, PathBuf),
    socket: PathBuf,
}

impl Setup {
    /// `plugin`: our `libgstvsockenc.so`; `baseline`: the directory of the
    /// C element's.
    pub fn new(work: &Path, plugin: &Path, baseline: &Path) -> Result<Setup> {
        let dir = work.join("shm-plugin");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(plugin, dir.join("libgstvsockenc.so"))
            .with_context(|| format!("copying {}", plugin.display()))?;
        if !baseline.join("libgstvsockenc.so").is_file() {
            bail!(
                "the C element is not at {}/libgstvsockenc.so (--baseline)",
                baseline.display()
            );
        }
        Ok(Setup {
            ours: (dir, work.join("shm-registry-ours.bin")),
            baseline: (baseline.to_path_buf(), work.join("shm-registry-c.bin")),
            socket: work.join("shm-peer.sock"),
        })
    }

    /// Starts the instant peer (threads of this process, until it exits).
    pub fn start_peer(&self) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let l = UnixListener::bind(&self.socket)
            .with_context(|| format!("binding {}", self.socket.display()))?;
        let au = std::sync::Arc::new(crate::peer::tiny_access_unit());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let au = au.clone();
                std::thread::spawn(move || serve(s, &au));
            }
        });
        Ok(())
    }

    /// The steady-state cost of `frames` frames of `format` at `size`
    /// through `variant`: a run of `frames + frames / 10` less a run of
    /// `frames / 10`.
    pub fn run(
        &self,
        variant: Variant,
        format: &str,
        size: (u32, u32),
        frames: u64,
    ) -> Result<Sample> {
        let short = (frames / 10).max(2);
        let a = self.run_once(variant, format, size, short)?;
        let b = self.run_once(variant, format, size, short + frames)?;
        Ok(Sample {
            cpu: b.cpu.saturating_sub(a.cpu),
            wall: b.wall.saturating_sub(a.wall).max(Duration::from_micros(1)),
            frames,
        })
    }

    fn run_once(
        &self,
        variant: Variant,
        format: &str,
        (w, h): (u32, u32),
        frames: u64,
    ) -> Result<Sample> {
        let sock = self.socket.display();
        let element = match variant {
            Variant::Source => String::new(),
            Variant::Shm => format!("vsockenc socket-path={sock} max-in-flight=4 ! "),
            Variant::ShmOne => format!("vsockenc socket-path={sock} max-in-flight=1 ! "),
            Variant::Socket => {
                format!("vsockenc socket-path={sock} max-in-flight=4 shared-memory=false ! ")
            }
            Variant::CElement => format!("vsockenc socket-path={sock} ! "),
        };
        let desc = format!(
            "videotestsrc num-buffers={frames} pattern=blink ! \
             video/x-raw,format={format},width={w},height={h},framerate=60/1 ! \
             {element}fakesink sync=false"
        );
        let (dir, registry) = match variant {
            Variant::CElement => &self.baseline,
            _ => &self.ours,
        };
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.arg("-q")
            .args(desc.split_whitespace())
            .env("GST_PLUGIN_PATH", dir)
            .env("GST_REGISTRY", registry)
            .env_remove("GST_DEBUG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (cpu, wall, ok, err) = run_measured(cmd, Duration::from_secs(600))?;
        if !ok {
            bail!("{desc}: failed: {err}");
        }
        Ok(Sample { cpu, wall, frames })
    }
}

/// Answer times of a live stream through shared memory.
#[derive(Debug, Clone, Default)]
pub struct AnswerTimes {
    /// Sorted, milliseconds, one per frame that came out.
    pub ms: Vec<f64>,
    /// Frames that went by slot, and those copied into one (a source that
    /// writes into the element's pool needs no copy).
    pub shm_frames: u64,
    pub copied_frames: u64,
}

impl AnswerTimes {
    pub fn mean(&self) -> f64 {
        if self.ms.is_empty() {
            return f64::NAN;
        }
        self.ms.iter().sum::<f64>() / self.ms.len() as f64
    }
}

impl Setup {
    /// `videotestsrc is-live=true` at 60 fps into our element (in this
    /// process, registered statically), against the instant peer: the time
    /// from a frame entering the element to its access unit leaving it.
    pub fn answer_times(
        &self,
        format: &str,
        (w, h): (u32, u32),
        frames: u64,
    ) -> Result<AnswerTimes> {
        let desc = format!(
            "videotestsrc is-live=true num-buffers={frames} pattern=blink ! \
             video/x-raw,format={format},width={w},height={h},framerate=60/1 ! \
             vsockenc name=enc socket-path={} max-in-flight=4 ! fakesink sync=false",
            self.socket.display()
        );
        let pipeline = gst::parse::launch(&desc)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("not a pipeline"))?;
        let enc = pipeline.by_name("enc").context("no enc")?;
        let into: Arc<Mutex<std::collections::HashMap<u64, Instant>>> = Default::default();
        let times: Arc<Mutex<Vec<f64>>> = Default::default();
        {
            let into = into.clone();
            enc.static_pad("sink")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                        into.lock().unwrap().insert(pts.nseconds(), Instant::now());
                    }
                    gst::PadProbeReturn::Ok
                });
        }
        {
            let (into, times) = (into.clone(), times.clone());
            enc.static_pad("src")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    let now = Instant::now();
                    let sent = info
                        .buffer()
                        .and_then(|b| b.pts())
                        .and_then(|pts| into.lock().unwrap().remove(&pts.nseconds()));
                    if let Some(sent) = sent {
                        times
                            .lock()
                            .unwrap()
                            .push((now - sent).as_secs_f64() * 1000.0);
                    }
                    gst::PadProbeReturn::Ok
                });
        }
        pipeline.set_state(gst::State::Playing)?;
        let bus = pipeline.bus().context("no bus")?;
        let limit = gst::ClockTime::from_seconds(30 + frames / 30);
        let outcome = match bus
            .timed_pop_filtered(limit, &[gst::MessageType::Eos, gst::MessageType::Error])
        {
            Some(m) => match m.view() {
                gst::MessageView::Eos(_) => Ok(()),
                gst::MessageView::Error(e) => Err(anyhow!("{desc}: {}", e.error())),
                _ => unreachable!(),
            },
            None => Err(anyhow!("{desc}: no EOS within {limit}")),
        };
        let stats = enc.property::<gst::Structure>("stats");
        pipeline.set_state(gst::State::Null)?;
        outcome?;
        let mut ms = std::mem::take(&mut *times.lock().unwrap());
        ms.sort_by(f64::total_cmp);
        Ok(AnswerTimes {
            ms,
            shm_frames: stats.get::<u64>("shm-frames").unwrap_or(0),
            copied_frames: stats.get::<u64>("shm-copied-frames").unwrap_or(0),
        })
    }
}

/// Spawns `cmd`, waits for it with `wait4` (bounded) and returns its CPU
/// time (user + system), wall time, success and stderr.
fn run_measured(mut cmd: Command, limit: Duration) -> Result<(Duration, Duration, bool, String)> {
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawning gst-launch-1.0")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: wait4 writes only into the two structs we hand it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
            let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
            let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            return Ok((cpu, start.elapsed(), ok, reader.join().unwrap_or_default()));
        }
        if r < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            bail!("the pipeline took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One guest connection of the instant peer.
fn serve(s: UnixStream, au: &[u8]) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = s;
    let mut d = Decoder::with_extensions(Limits::default());
    let mut index = 0u32;
    let answer = |pts: i64| {
        Message::FrameResponse(FrameResponse::single(pts, pts, true, au.to_vec())).encode(1)
    };
    while let Ok(Some(m)) = d.read_from_ext(&mut r) {
        let reply: Vec<u8> = match m {
            Decoded::Ext(h, ExtMessage::Hello(hello)) => ExtMessage::HelloAck(HelloAck {
                version: 1,
                extensions: hello.extensions & (ext_bits::SHM | ext_bits::ERROR_PTS),
                max_frame_bytes: 0,
                agent: "bench instant peer".into(),
                ..Default::default()
            })
            .encode(h.session_id),
            Decoded::Ext(h, ExtMessage::ShmOffer(o)) => ExtMessage::ShmAck(ShmAck {
                token: o.token,
                accepted: true,
                reason: String::new(),
            })
            .encode(h.session_id),
            Decoded::Ext(_, ExtMessage::ShmFrame(f)) => {
                let mut b = answer(f.request.pts);
                b.extend(
                    ExtMessage::ShmRelease(ShmRelease {
                        slot: f.slot,
                        frame_index: index,
                    })
                    .encode(1),
                );
                index += 1;
                b
            }
            Decoded::Ext(_, ExtMessage::CompactFrame(c)) => {
                index += 1;
                answer(c.header.request.pts)
            }
            Decoded::Legacy(_, Message::FrameRequest { request, .. }) => {
                index += 1;
                answer(request.pts)
            }
            Decoded::Legacy(h, Message::Ping) => Message::Pong.encode(h.session_id),
            _ => continue,
        };
        if w.write_all(&reply).is_err() {
            return;
        }
    }
}
