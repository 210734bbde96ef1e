//! The daemon's overhead: 1080p encode throughput through `vsockenc-host`
//! against the same encoder settings in a plain `gst-launch-1.0` pipeline,
//! in the same run. Not part of the timed suite; run it on a release build:
//!
//! ```text
//! cargo test --release -p vsockenc-host --test overhead -- --ignored --nocapture
//! ```
//!
//! Both wall-clock fps and CPU time are reported: on a loaded machine the
//! CPU time per frame is the steadier measure, since wall time depends on
//! how the scheduler shares the cores among everybody's threads.

mod common;

use std::process::Command;
use std::time::Instant;

use common::*;
use gst::prelude::*;
use hxfr::{FrameRequest, WireFormat};

const FRAMES: usize = 300;
const IN_FLIGHT: usize = 4;
/// What `vsockenc-host` sets on x264enc (see host/src/encoder.rs).
const X264: &str = "x264enc tune=zerolatency speed-preset=veryfast bframes=0 b-adapt=false \
                    rc-lookahead=0 sliced-threads=true bitrate=4000";
const SOURCE: &str = "videotestsrc horizontal-speed=8";

/// Wall-clock throughput and CPU seconds spent.
#[derive(Default, Clone, Copy)]
struct Run {
    fps: f64,
    cpu: f64,
}

impl Run {
    fn mean(self, other: Run) -> Run {
        Run {
            fps: (self.fps + other.fps) / 2.0,
            cpu: (self.cpu + other.cpu) / 2.0,
        }
    }

    fn cpu_ms_per_frame(self) -> f64 {
        1000.0 * self.cpu / FRAMES as f64
    }
}

fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(who, &mut ru) }, 0);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds a live process has used so far (utime + stime of stat(5)).
fn process_cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat(5); this slice starts at field 3.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// `gst-launch-1.0` encoding FRAMES frames of `format` (process start-up
/// included). x264enc cannot take BGRx: `convert` adds the conversion to
/// NV12 the daemon does too. `queue` puts the test source in its own
/// thread, as the daemon's client is.
fn gst_launch(format: &str, convert: bool, queue: bool) -> (Run, String) {
    let cmd = format!(
        "{SOURCE} num-buffers={FRAMES} ! video/x-raw,format={format},width=1920,height=1080,framerate=30/1 ! {}{}{X264} ! h264parse config-interval=-1 ! fakesink",
        if queue { "queue max-size-buffers=4 ! " } else { "" },
        if convert {
            "videoconvert ! video/x-raw,format=NV12 ! "
        } else {
            ""
        }
    );
    let t = Instant::now();
    let cpu0 = cpu_seconds(libc::RUSAGE_CHILDREN);
    let out = Command::new("timeout")
        .args(["300", "gst-launch-1.0", "-q"])
        .args(cmd.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fps = FRAMES as f64 / t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - cpu0;
    (Run { fps, cpu }, format!("gst-launch-1.0 {cmd}"))
}

/// Throughput through the daemon: a client pulls the same test frames from
/// videotestsrc and keeps IN_FLIGHT frames outstanding. Returns the run
/// with the daemon's CPU time, and the client's CPU seconds.
fn through_daemon(format: &str) -> (Run, f64) {
    init();
    let dir = scratch("overhead");
    let sock = dir.join("host.sock");
    let daemon = Daemon::start(&[
        "--listen",
        &format!("unix:{}", sock.display()),
        "--encoder",
        "x264enc",
    ]);
    let mut client = Client::unix(&sock);
    let pipeline = gst::parse::launch(&format!(
        "{SOURCE} num-buffers={FRAMES} ! video/x-raw,format={format},width=1920,height=1080,framerate=30/1 ! appsink name=sink sync=false max-buffers=8"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (wire, stride) = match format {
        "NV12" => (WireFormat::Nv12, 1920),
        _ => (WireFormat::Bgra, 1920 * 4),
    };
    let pid = daemon.pid();
    let t = Instant::now();
    let daemon_cpu0 = process_cpu_seconds(pid);
    let client_cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let (mut sent, mut received) = (0usize, 0usize);
    while received < FRAMES {
        while sent < FRAMES && sent - received < IN_FLIGHT {
            let sample = sink
                .try_pull_sample(gst::ClockTime::from_seconds(30))
                .expect("test frame");
            let map = sample.buffer().unwrap().map_readable().unwrap();
            let req = FrameRequest {
                resource_id: 0,
                width: 1920,
                height: 1080,
                format: wire.fourcc(),
                stride,
                pts: sent as i64 * 33_333_333,
                duration: 33_333_333,
                force_keyframe: false,
            };
            hxfr::write::write_frame_request(&mut client.stream, 1, &req, &[&map]).unwrap();
            sent += 1;
        }
        let r = client.recv_response();
        assert_eq!(r.pts, received as i64 * 33_333_333);
        received += 1;
    }
    let fps = FRAMES as f64 / t.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid) - daemon_cpu0;
    let client_cpu = cpu_seconds(libc::RUSAGE_SELF) - client_cpu0;
    pipeline.set_state(gst::State::Null).unwrap();
    drop(daemon);
    (Run { fps, cpu }, client_cpu)
}

#[test]
#[ignore = "a measurement: run on a release build with --ignored --nocapture"]
fn overhead_1080p_x264enc() {
    for (format, convert) in [("BGRx", true), ("NV12", false)] {
        // Interleaved, so that a change of machine load hits all three.
        let (plain, cmd) = gst_launch(format, convert, false);
        let (queued, qcmd) = gst_launch(format, convert, true);
        let (daemon, client_cpu) = through_daemon(format);
        let plain = plain.mean(gst_launch(format, convert, false).0);
        let queued = queued.mean(gst_launch(format, convert, true).0);
        let client = 1000.0 * client_cpu / FRAMES as f64;
        println!("{format} 1920x1080, {FRAMES} frames, x264enc:");
        println!(
            "  plain:        {:.1} fps, {:.1} CPU ms/frame (mean of two runs)  [{cmd}]",
            plain.fps,
            plain.cpu_ms_per_frame()
        );
        println!(
            "  plain+queue:  {:.1} fps, {:.1} CPU ms/frame (mean of two runs)  [{qcmd}]",
            queued.fps,
            queued.cpu_ms_per_frame()
        );
        println!(
            "  daemon:       {:.1} fps ({IN_FLIGHT} in flight, unix socket); daemon {:.1} CPU ms/frame, client (videotestsrc + socket writes) {client:.1} CPU ms/frame",
            daemon.fps,
            daemon.cpu_ms_per_frame()
        );
        println!(
            "  => daemon + client CPU = {:.0}% of plain; daemon fps = {:.0}% of plain+queue",
            100.0 * (daemon.cpu_ms_per_frame() + client) / plain.cpu_ms_per_frame(),
            100.0 * daemon.fps / queued.fps
        );
    }
}
