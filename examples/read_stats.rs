//! Read the `stats` property of `vsockenc` from an application: every
//! `--interval-ms` while the stream runs, and once more at the end of the
//! stream, printing every field of the `vsockenc-stats` structure.
//!
//! ```text
//! vsockenc-host --listen unix:/tmp/vsockenc.sock &
//! cargo run --example read_stats -- --socket /tmp/vsockenc.sock --frames 90
//! ```
//!
//! The pipeline is `videotestsrc is-live=true num-buffers=N ! vsockenc ! fakesink`.
//! `stats` is a read-only `GstStructure`; reading it is cheap and safe from
//! any thread at any time (in NULL it holds the counters of the last run).
//! The fields are printed generically, so fields added in later versions
//! show up without changing this program.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gst::prelude::*;

const USAGE: &str = "usage: read_stats [--socket PATH | --tcp HOST:PORT | --vsock CID:PORT] [--frames N] [--interval-ms MS]
  --socket PATH      host daemon on a Unix socket
  --tcp HOST:PORT    host daemon over TCP
  --vsock CID:PORT   host daemon over AF_VSOCK (default 2:5000)
  --frames N         frames of a live 30 fps 320x240 test pattern (default 90)
  --interval-ms MS   how often to read stats while running (default 1000)";

#[derive(Debug, Clone)]
pub struct Options {
    /// The `vsockenc` properties that select the host.
    pub host_properties: String,
    pub frames: u32,
    pub interval: Duration,
}

pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        host_properties: "cid=2 port=5000".into(),
        frames: 90,
        interval: Duration::from_secs(1),
    };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let v = args
            .next()
            .ok_or(format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--socket" => o.host_properties = format!("socket-path=\"{v}\""),
            "--tcp" | "--vsock" => {
                let (a, b) = v
                    .rsplit_once(':')
                    .ok_or(format!("{flag}: `{v}` is not A:B"))?;
                o.host_properties = if flag == "--tcp" {
                    format!("tcp-host={a} tcp-port={b}")
                } else {
                    format!("cid={a} port={b}")
                };
            }
            "--frames" => o.frames = v.parse().map_err(|_| format!("--frames: `{v}`"))?,
            "--interval-ms" => {
                let ms: u64 = v.parse().map_err(|_| format!("--interval-ms: `{v}`"))?;
                o.interval = Duration::from_millis(ms.max(1));
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(o)
}

/// `frames-sent=30 frames-returned=29 …`: every field, in structure order.
pub fn format_stats(s: &gst::StructureRef) -> String {
    s.iter()
        .map(|(name, value)| {
            let v = value
                .get::<u64>()
                .map(|v| v.to_string())
                .or_else(|_| value.get::<u32>().map(|v| v.to_string()))
                .unwrap_or_else(|_| format!("{value:?}"));
            format!("{name}={v}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the pipeline to EOS; returns every line printed (periodic reads,
/// then the final one at EOS).
pub fn run(o: &Options) -> Result<Vec<String>, String> {
    gst::init().map_err(|e| format!("GStreamer could not be initialised: {e}"))?;
    // A copy of this program would rely on the installed plugin instead.
    gstvsockenc::plugin_register_static()
        .map_err(|e| format!("registering the vsockenc plugin failed: {e}"))?;
    let desc = format!(
        "videotestsrc is-live=true num-buffers={} ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 \
         ! vsockenc name=enc {} ! fakesink",
        o.frames, o.host_properties
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("cannot build the pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let enc = pipeline.by_name("enc").expect("enc");
    let result = read_until_eos(o, &pipeline, &enc);
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn read_until_eos(
    o: &Options,
    pipeline: &gst::Pipeline,
    enc: &gst::Element,
) -> Result<Vec<String>, String> {
    let bus = pipeline.bus().expect("bus");
    let error = |msg: &gst::MessageRef| match msg.view() {
        gst::MessageView::Error(e) => format!(
            "{}{}",
            e.error(),
            e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        _ => "unexpected message".into(),
    };
    if pipeline.set_state(gst::State::Playing).is_err() {
        return Err(bus
            .pop_filtered(&[gst::MessageType::Error])
            .map(|m| error(&m))
            .unwrap_or_else(|| "the pipeline refused to start".into()));
    }
    let started = Instant::now();
    // Live at 30 fps, plus generous slack for a slow host.
    let give_up = started + Duration::from_secs(60 + u64::from(o.frames) / 10);
    let mut lines = Vec::new();
    let mut print = |label: String, s: &gst::StructureRef| {
        let line = format!("{label}: {}", format_stats(s));
        println!("{line}");
        lines.push(line);
    };
    loop {
        let wait = gst::ClockTime::from_nseconds(o.interval.as_nanos() as u64);
        let msg = bus.timed_pop_filtered(wait, &[gst::MessageType::Eos, gst::MessageType::Error]);
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => {
                // The element has drained every frame in flight by now.
                let s = enc.property::<gst::Structure>("stats");
                print("eos".into(), &s);
                return Ok(lines);
            }
            Some(_) => return Err(error(msg.as_ref().unwrap())),
            None => {
                let s = enc.property::<gst::Structure>("stats");
                print(format!("{:.1} s", started.elapsed().as_secs_f64()), &s);
            }
        }
        if Instant::now() >= give_up {
            return Err("no end of stream in time: is the host answering?".into());
        }
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
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("read_stats: {e}");
            ExitCode::FAILURE
        }
    }
}
