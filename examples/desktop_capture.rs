//! The guest side of a desktop-streaming stack: capture the screen with
//! PipeWire, hand the frames to `vsockenc`, and pull H.264 access units from
//! an `appsink`, as a streaming server (WebRTC, RTSP, a custom sender) would.
//!
//! ```text
//! # in the guest, against a host daemon on vsock port 5000 (the default)
//! cargo run --example desktop_capture -- --vsock 2:5000
//! # anywhere, without PipeWire: a live test pattern instead of the desktop
//! vsockenc-host --listen unix:/tmp/vsockenc.sock &
//! cargo run --example desktop_capture -- --test-source --socket /tmp/vsockenc.sock --seconds 5
//! ```
//!
//! The pipeline is the shape a real deployment uses:
//!
//! ```text
//! pipewiresrc ! videoconvert ! video/x-raw,format=NV12
//!   ! queue max-size-buffers=1 leaky=downstream
//!   ! vsockenc … ! h264parse ! video/x-h264,stream-format=byte-stream,alignment=au
//!   ! appsink
//! ```
//!
//! The leaky one-buffer queue is what keeps a live desktop live: when the
//! host is slower than the screen, old frames are thrown away before
//! `vsockenc` instead of piling up, so the picture the viewer gets is always
//! the newest one. Every `--stats-every` seconds the program prints how many
//! access units arrived and the element's `stats`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gst::prelude::*;

const USAGE: &str = "usage: desktop_capture [--test-source | --pipewire-props PROPS] [--socket PATH | --tcp HOST:PORT | --vsock CID:PORT]
                       [--bitrate KBPS] [--keyframe-interval N] [--seconds N] [--stats-every N]
                       [--width W --height H]
  --test-source         videotestsrc is-live=true instead of pipewiresrc (runs without a desktop)
  --pipewire-props P    extra pipewiresrc properties, e.g. \"path=42\" (the ScreenCast node)
  --socket PATH         host daemon on a Unix socket (vsockenc-host --listen unix:PATH)
  --tcp HOST:PORT       host daemon over TCP (QEMU user networking: 10.0.2.2:15937)
  --vsock CID:PORT      host daemon over AF_VSOCK (default 2:5000)
  --bitrate KBPS        target bitrate (default 4000)
  --keyframe-interval N force a keyframe every N frames (default 60)
  --seconds N           stop after N seconds with EOS (default 0 = run until killed)
  --stats-every N       print progress and stats every N seconds (default 1)
  --width W, --height H test source size (default 1280x720; the desktop keeps its own size)";

/// Where the host daemon is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Unix(String),
    Tcp(String, u16),
    Vsock(u32, u32),
}

impl Host {
    /// The `vsockenc` properties that select this transport.
    fn properties(&self) -> String {
        match self {
            Host::Unix(path) => format!("socket-path=\"{path}\""),
            Host::Tcp(host, port) => format!("tcp-host={host} tcp-port={port}"),
            Host::Vsock(cid, port) => format!("cid={cid} port={port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub test_source: bool,
    /// Extra pipewiresrc properties, e.g. `path=42` or `fd=7`.
    pub pipewire_props: String,
    pub host: Host,
    pub bitrate: u32,
    pub keyframe_interval: u32,
    /// 0 = until killed.
    pub seconds: u64,
    pub stats_every: u64,
    pub width: u32,
    pub height: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            test_source: false,
            pipewire_props: String::new(),
            host: Host::Vsock(2, 5000),
            bitrate: 4000,
            keyframe_interval: 60,
            seconds: 0,
            stats_every: 1,
            width: 1280,
            height: 720,
        }
    }
}

pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    fn value(flag: &str, v: Option<String>) -> Result<String, String> {
        v.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
    }
    fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = value(flag, v)?;
        v.parse()
            .map_err(|_| format!("{flag}: `{v}` is not a number"))
    }
    fn pair<A: std::str::FromStr, B: std::str::FromStr>(
        flag: &str,
        v: Option<String>,
    ) -> Result<(A, B), String> {
        let v = value(flag, v)?;
        let (a, b) = v
            .rsplit_once(':')
            .ok_or_else(|| format!("{flag}: `{v}` is not A:B"))?;
        match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err(format!("{flag}: cannot parse `{v}`")),
        }
    }
    let mut o = Options::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--test-source" => o.test_source = true,
            "--pipewire-props" => o.pipewire_props = value("--pipewire-props", args.next())?,
            "--socket" => o.host = Host::Unix(value("--socket", args.next())?),
            "--tcp" => {
                let (h, p) = pair::<String, u16>("--tcp", args.next())?;
                o.host = Host::Tcp(h, p);
            }
            "--vsock" => {
                let (c, p) = pair::<u32, u32>("--vsock", args.next())?;
                o.host = Host::Vsock(c, p);
            }
            "--bitrate" => o.bitrate = number("--bitrate", args.next())?,
            "--keyframe-interval" => {
                o.keyframe_interval = number("--keyframe-interval", args.next())?
            }
            "--seconds" => o.seconds = number("--seconds", args.next())?,
            "--stats-every" => o.stats_every = number::<u64>("--stats-every", args.next())?.max(1),
            "--width" => o.width = number("--width", args.next())?,
            "--height" => o.height = number("--height", args.next())?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(o)
}

/// The pipeline description for these options.
pub fn pipeline_description(o: &Options) -> String {
    let source = if o.test_source {
        format!(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,width={},height={},framerate=30/1",
            o.width, o.height
        )
    } else {
        // A screen-capture application passes the node (path=) or the fd
        // it got from the ScreenCast portal in --pipewire-props.
        format!("pipewiresrc {}", o.pipewire_props)
    };
    format!(
        "{source} ! videoconvert ! video/x-raw,format=NV12 \
         ! queue max-size-buffers=1 leaky=downstream \
         ! vsockenc name=enc {} bitrate={} keyframe-interval={} \
         ! h264parse ! video/x-h264,stream-format=byte-stream,alignment=au \
         ! appsink name=sink sync=false max-buffers=30",
        o.host.properties(),
        o.bitrate,
        o.keyframe_interval
    )
}

/// Counts over one run.
#[derive(Debug, Default)]
pub struct Summary {
    pub access_units: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub wall: Duration,
    /// The element's `stats` at the end.
    pub stats: Option<gst::Structure>,
}

fn stat(s: &gst::StructureRef, field: &str) -> u64 {
    s.get::<u64>(field).unwrap_or(0)
}

fn stats_line(s: &gst::StructureRef) -> String {
    format!(
        "sent {} returned {} dropped {} (timeout {}, host error {}, disconnect {}, no host {}, \
         awaiting keyframe {}) in-flight {} reconnects {} latency mean {:.1} ms max {:.1} ms",
        stat(s, "frames-sent"),
        stat(s, "frames-returned"),
        stat(s, "frames-dropped"),
        stat(s, "dropped-timeout"),
        stat(s, "dropped-host-error"),
        stat(s, "dropped-disconnect"),
        stat(s, "dropped-no-host"),
        stat(s, "dropped-awaiting-keyframe"),
        s.get::<u32>("in-flight").unwrap_or(0),
        stat(s, "reconnects"),
        stat(s, "latency-mean-us") as f64 / 1000.0,
        stat(s, "latency-max-us") as f64 / 1000.0,
    )
}

fn bus_error(msg: &gst::MessageRef) -> Option<String> {
    match msg.view() {
        gst::MessageView::Error(e) => Some(format!(
            "error from {}: {}{}",
            msg.src().map(|s| s.name().to_string()).unwrap_or_default(),
            e.error(),
            e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
        )),
        _ => None,
    }
}

/// Print element warnings (lost connection, host errors) as they come: a
/// streaming server would log them.
fn report_warnings(bus: &gst::Bus) {
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Warning]) {
        if let gst::MessageView::Warning(w) = msg.view() {
            eprintln!(
                "warning from {}: {}",
                msg.src().map(|s| s.name().to_string()).unwrap_or_default(),
                w.error()
            );
        }
    }
}

/// Runs the capture pipeline, printing progress to stdout.
pub fn run(o: &Options) -> Result<Summary, String> {
    gst::init().map_err(|e| format!("GStreamer could not be initialised: {e}"))?;
    // A copy of this program would rely on the installed plugin instead.
    gstvsockenc::plugin_register_static()
        .map_err(|e| format!("registering the vsockenc plugin failed: {e}"))?;
    let source = if o.test_source {
        "videotestsrc"
    } else {
        "pipewiresrc"
    };
    if gst::ElementFactory::find(source).is_none() {
        return Err(format!(
            "the GStreamer element {source} is missing (pipewiresrc: gstreamer1.0-pipewire); \
             --test-source runs without a desktop"
        ));
    }

    let desc = pipeline_description(o);
    println!("pipeline: {desc}");
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("cannot build the pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let enc = pipeline.by_name("enc").expect("enc");
    let sink = pipeline
        .by_name("sink")
        .expect("sink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    let bus = pipeline.bus().expect("bus");

    let result = pull_access_units(o, &pipeline, &sink, &enc, &bus);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn pull_access_units(
    o: &Options,
    pipeline: &gst::Pipeline,
    sink: &gst_app::AppSink,
    enc: &gst::Element,
    bus: &gst::Bus,
) -> Result<Summary, String> {
    if pipeline.set_state(gst::State::Playing).is_err() {
        let why = bus
            .pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| bus_error(&m))
            .unwrap_or_else(|| "the pipeline refused to start".into());
        return Err(why);
    }
    let started = Instant::now();
    let stop_at = (o.seconds > 0).then(|| started + Duration::from_secs(o.seconds));
    let every = Duration::from_secs(o.stats_every);
    let mut next_report = started + every;
    let mut sum = Summary::default();
    let mut eos_sent = false;
    let mut eos_deadline = None;

    loop {
        // Short pulls so that stats, warnings and the stop time are serviced
        // while the desktop is static and no access unit comes.
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            Some(sample) => {
                if let Some(buffer) = sample.buffer() {
                    sum.access_units += 1;
                    sum.bytes += buffer.size() as u64;
                    if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                        sum.keyframes += 1;
                    }
                    // A real application sends the access unit on here.
                }
            }
            None if sink.is_eos() => break,
            None => {}
        }
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            return Err(bus_error(&msg).unwrap_or_default());
        }
        report_warnings(bus);

        let now = Instant::now();
        if now >= next_report {
            let s = enc.property::<gst::Structure>("stats");
            println!(
                "{:6.1} s: {} AUs ({} keyframes), {:.0} kbit/s; {}",
                now.duration_since(started).as_secs_f64(),
                sum.access_units,
                sum.keyframes,
                sum.bytes as f64 * 8.0 / 1000.0 / now.duration_since(started).as_secs_f64(),
                stats_line(&s)
            );
            next_report += every;
        }
        if !eos_sent && stop_at.is_some_and(|t| now >= t) {
            // EOS drains the frames still at the host before the sink ends.
            pipeline.send_event(gst::event::Eos::new());
            eos_sent = true;
            eos_deadline = Some(now + Duration::from_secs(30));
        }
        if eos_deadline.is_some_and(|t| now >= t) {
            return Err("no end of stream within 30 s of sending EOS".into());
        }
    }
    sum.wall = started.elapsed();
    sum.stats = Some(enc.property::<gst::Structure>("stats"));
    Ok(sum)
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
        Ok(sum) => {
            println!(
                "done: {} access units ({} keyframes, {} bytes) in {:.1} s",
                sum.access_units,
                sum.keyframes,
                sum.bytes,
                sum.wall.as_secs_f64()
            );
            if let Some(s) = &sum.stats {
                println!("final stats: {}", stats_line(s));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("desktop_capture: {e}");
            ExitCode::FAILURE
        }
    }
}
