//! Command-line options of the benchmark (hand-parsed: no extra dependency).

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: bench [options]

Measures vsockenc against the transport limit, the one-frame-in-flight design,
in-guest x264enc and plain gst-launch-1.0, in one run; prints a table and
writes JSON.

options:
  --quick                few frames per run: a smoke test in well under a minute
  --sections LIST        comma-separated subset of: transport,element,cpu,daemon,memory,side,shm
                         (or 1..8; 3, the in-flight ratio, comes with element)
                         default: all
  --duration SECS        seconds per throughput run (default 1.5, quick 0.5)
  --reps N               repetitions of each throughput run; the median counts
                         (default 3, quick 1: the machine is shared and noisy)
  --formats LIST         of section 2: BGRx,NV12 (default both)
  --latencies LIST       simulated host latencies in ms for section 2 (default 0,10,30)
  --in-flight LIST       max-in-flight values for section 2 (default 1,2,4)
  --json PATH            write the results as JSON to PATH
  --host-bin PATH        the vsockenc-host daemon (default: <target>/release/vsockenc-host
                         next to this executable's target dir)
  --memory-frames N      frames of the memory run (default 5000, quick 300)
  --memory-size WxH      frame size of the memory run (default 1280x720)
  --daemon-frames N      frames of the daemon throughput run (default 300, quick 40)
  --work-dir DIR         where sockets and temporary files go (default: a fresh dir in /tmp)
  --baseline DIR         the C element's directory for section shm (default ../shared/baseline
                         beside the repository)
  --shm-frames N         frames per run of section shm (default 300, quick 60)
  -h, --help             this text
";

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub transport: bool,
    pub element: bool,
    pub cpu: bool,
    pub daemon: bool,
    pub memory: bool,
    /// Section 7: side by side with the C element and the minimal writer.
    pub side: bool,
    /// Section 8: shared-memory frames against the socket path and the C
    /// element.
    pub shm: bool,
    pub baseline: PathBuf,
    pub shm_frames: u64,
    pub duration: Duration,
    pub reps: usize,
    pub formats: Vec<String>,
    pub latencies_ms: Vec<u64>,
    pub in_flight: Vec<u32>,
    pub json: Option<PathBuf>,
    pub host_bin: Option<PathBuf>,
    pub memory_frames: u64,
    pub memory_size: (u32, u32),
    pub daemon_frames: u64,
    pub work_dir: Option<PathBuf>,
}

/// What `main` should do.
pub enum Mode {
    Bench(Options),
    /// Internal: the HXFR test peer, run as a child process so that its CPU
    /// time is not charged to the guest side.
    Peer {
        listen: String,
        latency: Duration,
    },
    /// Internal: one guest-side run in a process of its own (guest.rs).
    Guest(crate::guest::Spec),
    Help,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Mode, String> {
    let mut args = args.into_iter();
    let mut o = Options {
        quick: false,
        transport: true,
        element: true,
        cpu: true,
        daemon: true,
        memory: true,
        side: true,
        shm: true,
        baseline: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/baseline")),
        shm_frames: 300,
        duration: Duration::from_millis(1500),
        reps: 3,
        formats: vec!["BGRx".into(), "NV12".into()],
        latencies_ms: vec![0, 10, 30],
        in_flight: vec![1, 2, 4],
        json: None,
        host_bin: None,
        memory_frames: 5000,
        memory_size: (1280, 720),
        daemon_frames: 300,
        work_dir: None,
    };
    let mut duration = None;
    let mut reps = None;
    let mut memory_frames: Option<u64> = None;
    let mut daemon_frames: Option<u64> = None;
    let mut peer_listen = None;
    let mut peer_latency = Duration::ZERO;
    let mut is_peer = false;
    let mut guest: Option<crate::guest::Spec> = None;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Ok(Mode::Help),
            "--quick" => o.quick = true,
            "--sections" => {
                let list = value("--sections")?;
                o.transport = false;
                o.element = false;
                o.cpu = false;
                o.daemon = false;
                o.memory = false;
                o.side = false;
                o.shm = false;
                for s in list.split(',').map(str::trim) {
                    match s {
                        "1" | "transport" => o.transport = true,
                        "2" | "3" | "element" | "baseline" => o.element = true,
                        "4" | "cpu" => o.cpu = true,
                        "5" | "daemon" => o.daemon = true,
                        "6" | "memory" => o.memory = true,
                        "7" | "side" => o.side = true,
                        "8" | "shm" => o.shm = true,
                        "all" => {
                            o.transport = true;
                            o.element = true;
                            o.cpu = true;
                            o.daemon = true;
                            o.memory = true;
                            o.side = true;
                            o.shm = true;
                        }
                        other => return Err(format!("unknown section {other:?}")),
                    }
                }
            }
            "--duration" => {
                let v: f64 = value("--duration")?
                    .parse()
                    .map_err(|e| format!("--duration: {e}"))?;
                duration = Some(Duration::from_secs_f64(v.max(0.1)));
            }
            "--reps" => {
                reps = Some(
                    value("--reps")?
                        .parse::<usize>()
                        .map_err(|e| format!("--reps: {e}"))?
                        .max(1),
                )
            }
            "--formats" => {
                o.formats = Vec::new();
                for f in value("--formats")?.split(',') {
                    match f.trim().to_ascii_uppercase().as_str() {
                        "BGRX" => o.formats.push("BGRx".into()),
                        "NV12" => o.formats.push("NV12".into()),
                        other => return Err(format!("--formats: unknown {other:?}")),
                    }
                }
            }
            "--latencies" => o.latencies_ms = list(&value("--latencies")?, "--latencies")?,
            "--in-flight" if guest.is_some() => {
                let v = value("--in-flight")?;
                guest.as_mut().unwrap().in_flight =
                    v.parse().map_err(|e| format!("--in-flight: {e}"))?;
            }
            "--in-flight" => {
                o.in_flight = list(&value("--in-flight")?, "--in-flight")?;
                if o.in_flight.iter().any(|n| !(1..=64).contains(n)) {
                    return Err("--in-flight: values 1..64".into());
                }
            }
            "--json" => o.json = Some(value("--json")?.into()),
            "--host-bin" => o.host_bin = Some(value("--host-bin")?.into()),
            "--memory-frames" => {
                memory_frames = Some(
                    value("--memory-frames")?
                        .parse()
                        .map_err(|e| format!("--memory-frames: {e}"))?,
                )
            }
            "--daemon-frames" => {
                daemon_frames = Some(
                    value("--daemon-frames")?
                        .parse()
                        .map_err(|e| format!("--daemon-frames: {e}"))?,
                )
            }
            "--memory-size" => {
                let v = value("--memory-size")?;
                let (w, h) = v
                    .split_once('x')
                    .ok_or_else(|| format!("--memory-size: want WxH, got {v}"))?;
                o.memory_size = (
                    w.parse().map_err(|e| format!("--memory-size: {e}"))?,
                    h.parse().map_err(|e| format!("--memory-size: {e}"))?,
                );
            }
            "--work-dir" => o.work_dir = Some(value("--work-dir")?.into()),
            "--baseline" => o.baseline = value("--baseline")?.into(),
            "--shm-frames" => {
                o.shm_frames = value("--shm-frames")?
                    .parse::<u64>()
                    .map_err(|e| format!("--shm-frames: {e}"))?
                    .max(10)
            }
            "--peer" => is_peer = true,
            // Internal: a guest run (guest.rs); the parent passes all of these.
            "--guest" => {
                guest = Some(crate::guest::Spec {
                    kind: crate::guest::Kind::parse(&value("--guest")?)?,
                    addr: String::new(),
                    format: crate::frames::Format::Nv12,
                    width: 0,
                    height: 0,
                    frames: 0,
                    in_flight: 1,
                    pace_fps: None,
                })
            }
            "--pace" => {
                let v: f64 = value("--pace")?
                    .parse()
                    .map_err(|e| format!("--pace: {e}"))?;
                guest.as_mut().ok_or("--pace after --guest")?.pace_fps = (v > 0.0).then_some(v);
            }
            "--connect" => {
                let v = value("--connect")?;
                guest.as_mut().ok_or("--connect after --guest")?.addr = v;
            }
            "--format" => {
                let v = value("--format")?;
                guest.as_mut().ok_or("--format after --guest")?.format = match v.as_str() {
                    "BGRx" => crate::frames::Format::Bgrx,
                    "NV12" => crate::frames::Format::Nv12,
                    other => return Err(format!("--format: unknown {other:?}")),
                };
            }
            "--size" => {
                let v = value("--size")?;
                let (w, h) = v.split_once('x').ok_or("--size WxH")?;
                let g = guest.as_mut().ok_or("--size after --guest")?;
                g.width = w.parse().map_err(|e| format!("--size: {e}"))?;
                g.height = h.parse().map_err(|e| format!("--size: {e}"))?;
            }
            "--frames" => {
                let v = value("--frames")?;
                guest.as_mut().ok_or("--frames after --guest")?.frames =
                    v.parse().map_err(|e| format!("--frames: {e}"))?;
            }
            "--listen" => peer_listen = Some(value("--listen")?),
            "--latency-ms" => {
                let ms: f64 = value("--latency-ms")?
                    .parse()
                    .map_err(|e| format!("--latency-ms: {e}"))?;
                peer_latency = Duration::from_secs_f64(ms / 1000.0);
            }
            other => return Err(format!("unknown option {other:?}\n\n{USAGE}")),
        }
    }
    if let Some(g) = guest {
        return Ok(Mode::Guest(g));
    }
    if is_peer {
        let listen = peer_listen.ok_or("--peer needs --listen")?;
        return Ok(Mode::Peer {
            listen,
            latency: peer_latency,
        });
    }
    if o.quick {
        o.duration = Duration::from_millis(500);
        o.reps = 1;
        o.memory_frames = 300;
        o.daemon_frames = 40;
        o.shm_frames = o.shm_frames.min(60);
    }
    if let Some(d) = duration {
        o.duration = d;
    }
    if let Some(n) = reps {
        o.reps = n;
    }
    if let Some(n) = memory_frames {
        o.memory_frames = n.max(10);
    }
    if let Some(n) = daemon_frames {
        o.daemon_frames = n.max(10);
    }
    Ok(Mode::Bench(o))
}

fn list<T: std::str::FromStr>(v: &str, name: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    v.split(',')
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|e| format!("{name}: {x:?}: {e}"))
        })
        .collect()
}
