//! Encode a moving test pattern through a running `vsockenc-host` and write a
//! playable MP4:
//!
//! ```text
//! vsockenc-host --listen unix:/tmp/vsockenc.sock &
//! cargo run --example encode_test_pattern -- --socket /tmp/vsockenc.sock \
//!     --output ball.mp4 --frames 150 --width 640 --height 360
//! ```
//!
//! It runs `videotestsrc pattern=ball ! video/x-raw,width=…,height=…,
//! framerate=30/1 ! vsockenc socket-path=… ! h264parse ! mp4mux ! filesink`,
//! waits for EOS and prints what happened: frames, wall time, fps, bytes per
//! frame, and the host's response latency and drops from the element's
//! `stats`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;

const USAGE: &str = "usage: encode_test_pattern --socket PATH [--output FILE] [--frames N] \
                     [--width W] [--height H]
  --socket PATH   Unix socket of a running `vsockenc-host --listen unix:PATH` (required)
  --output FILE   MP4 file to write (default: test-pattern.mp4)
  --frames N      frames to encode at 30 fps (default: 150)
  --width W       picture width (default: 640)
  --height H      picture height (default: 360)";

#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    pub output: PathBuf,
    pub frames: u32,
    pub width: u32,
    pub height: u32,
}

/// What one run produced.
#[derive(Debug)]
pub struct Summary {
    pub frames: u64,
    pub encoded_bytes: u64,
    pub wall: Duration,
    pub output: PathBuf,
    pub output_bytes: u64,
    /// The element's `stats` at EOS.
    pub stats: gst::Structure,
}

impl Summary {
    fn stat(&self, field: &str) -> u64 {
        self.stats.get::<u64>(field).unwrap_or(0)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.wall.as_secs_f64();
        writeln!(
            f,
            "wrote {} ({} bytes)",
            self.output.display(),
            self.output_bytes
        )?;
        writeln!(f, "frames:          {}", self.frames)?;
        writeln!(
            f,
            "wall time:       {secs:.2} s ({:.1} fps)",
            self.frames as f64 / secs.max(1e-9)
        )?;
        writeln!(
            f,
            "bytes per frame: {:.0}",
            self.encoded_bytes as f64 / self.frames.max(1) as f64
        )?;
        writeln!(
            f,
            "host latency:    mean {:.2} ms, max {:.2} ms",
            self.stat("latency-mean-us") as f64 / 1000.0,
            self.stat("latency-max-us") as f64 / 1000.0
        )?;
        write!(
            f,
            "dropped:         {} (timeout {}, host error {}, disconnect {}, no host {})",
            self.stat("frames-dropped"),
            self.stat("dropped-timeout"),
            self.stat("dropped-host-error"),
            self.stat("dropped-disconnect"),
            self.stat("dropped-no-host")
        )
    }
}

pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut socket = None;
    let mut opts = Options {
        socket: PathBuf::new(),
        output: PathBuf::from("test-pattern.mp4"),
        frames: 150,
        width: 640,
        height: 360,
    };
    fn number(flag: &str, v: Option<String>) -> Result<u32, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{flag}: `{v}` is not a positive number")),
        }
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = Some(args.next().ok_or("--socket needs a path")?),
            "--output" => opts.output = args.next().ok_or("--output needs a file name")?.into(),
            "--frames" => opts.frames = number("--frames", args.next())?,
            "--width" => opts.width = number("--width", args.next())?,
            "--height" => opts.height = number("--height", args.next())?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    opts.socket = socket
        .ok_or_else(|| format!("--socket is required\n{USAGE}"))?
        .into();
    Ok(opts)
}

/// The GStreamer elements the demo needs, and the package that ships each.
const NEEDED: [(&str, &str); 5] = [
    ("videotestsrc", "gstreamer1.0-plugins-base"),
    ("h264parse", "gstreamer1.0-plugins-bad"),
    ("mp4mux", "gstreamer1.0-plugins-good"),
    ("filesink", "libgstreamer1.0-0 (core elements)"),
    ("vsockenc", "this project's plugin"),
];

fn check_elements() -> Result<(), String> {
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(name, _)| gst::ElementFactory::find(name).is_none())
        .map(|(name, pkg)| format!("  {name} (from {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing GStreamer elements:\n{}\ninstall the packages named above",
            missing.join("\n")
        ))
    }
}

/// Say precisely why the daemon cannot be reached, before building anything.
fn check_daemon(socket: &std::path::Path) -> Result<(), String> {
    let start_it = format!(
        "start the daemon first: vsockenc-host --listen unix:{}",
        socket.display()
    );
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "no vsockenc-host is listening at {}: the socket does not exist; {start_it}",
            socket.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(format!(
            "no vsockenc-host is listening at {}: the socket file exists but nobody \
             accepts on it (left over by a daemon that died?); {start_it}",
            socket.display()
        )),
        Err(e) => Err(format!(
            "cannot reach vsockenc-host at {}: {e}; {start_it}",
            socket.display()
        )),
    }
}

fn bus_error(msg: &gst::MessageRef) -> String {
    let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
    match msg.view() {
        gst::MessageView::Error(e) => format!(
            "pipeline error from {src}: {}{}",
            e.error(),
            e.debug().map(|d| format!("\n  ({d})")).unwrap_or_default()
        ),
        _ => format!("unexpected message from {src}"),
    }
}

/// Encode `opts.frames` frames of the ball pattern into `opts.output`.
pub fn run(opts: &Options) -> Result<Summary, String> {
    gst::init().map_err(|e| format!("GStreamer could not be initialised: {e}"))?;
    gstvsockenc::plugin_register_static()
        .map_err(|e| format!("registering the vsockenc plugin failed: {e}"))?;
    check_elements()?;
    check_daemon(&opts.socket)?;

    let desc = format!(
        "videotestsrc pattern=ball num-buffers={} ! \
           video/x-raw,width={},height={},framerate=30/1 ! \
         vsockenc name=enc ! h264parse ! mp4mux ! filesink name=sink",
        opts.frames, opts.width, opts.height
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("cannot build the pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let enc = pipeline.by_name("enc").expect("enc");
    enc.set_property("socket-path", opts.socket.to_str());
    pipeline
        .by_name("sink")
        .expect("sink")
        .set_property("location", opts.output.to_str());

    // Encoded frames and bytes, counted where they leave the encoder.
    let frames = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    {
        let (frames, bytes) = (frames.clone(), bytes.clone());
        enc.static_pad("src").expect("src pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                if let Some(buffer) = info.buffer() {
                    frames.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(buffer.size() as u64, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            },
        );
    }

    let started = Instant::now();
    let result = run_to_eos(&pipeline, opts.frames);
    let wall = started.elapsed();
    let stats = enc.property::<gst::Structure>("stats");
    let _ = pipeline.set_state(gst::State::Null);
    result?;

    let output_bytes = std::fs::metadata(&opts.output)
        .map_err(|e| format!("{}: {e}", opts.output.display()))?
        .len();
    Ok(Summary {
        frames: frames.load(Ordering::Relaxed),
        encoded_bytes: bytes.load(Ordering::Relaxed),
        wall,
        output: opts.output.clone(),
        output_bytes,
        stats,
    })
}

fn run_to_eos(pipeline: &gst::Pipeline, frames: u32) -> Result<(), String> {
    pipeline.set_state(gst::State::Playing).map_err(|_| {
        let bus = pipeline.bus().unwrap();
        bus.pop_filtered(&[gst::MessageType::Error])
            .map(|m| bus_error(&m))
            .unwrap_or_else(|| "the pipeline refused to start".to_string())
    })?;
    // Generous: a slow machine encodes far below real time.
    let timeout = gst::ClockTime::from_seconds(60 + u64::from(frames) / 5);
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(timeout, &[gst::MessageType::Eos, gst::MessageType::Error])
        .ok_or_else(|| format!("no end of stream within {timeout}: the host stopped answering?"))?;
    match msg.view() {
        gst::MessageView::Eos(_) => Ok(()),
        _ => Err(bus_error(&msg)),
    }
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("encode_test_pattern: {e}");
            ExitCode::FAILURE
        }
    }
}
