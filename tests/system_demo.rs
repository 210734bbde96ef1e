//! System test of the demo program `examples/encode_test_pattern.rs` (the
//! README's first command runs it): against the real daemon it writes an MP4
//! that demuxes and decodes to every frame; without a daemon it says so.

mod sys;

#[allow(dead_code)]
#[path = "../examples/encode_test_pattern.rs"]
mod demo;

use std::time::Duration;

use sys::daemon::{Addr, Daemon, Transport};
use sys::frames::FrameCollector;
use sys::pipeline;
use sys::tempdir::TempDir;

/// Demux and decode an MP4 file; the decoded frames.
fn decode_mp4(path: &std::path::Path) -> Vec<sys::frames::Frame> {
    let desc = format!(
        "filesrc location=\"{}\" ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! \
         video/x-raw,format=I420 ! appsink name=out sync=false",
        path.display()
    );
    let p = pipeline::launch(&desc);
    let out = FrameCollector::attach(&p, "out");
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    pipeline::shutdown(&p);
    r.unwrap_or_else(|e| panic!("{} does not play: {e}", path.display()));
    out.frames()
}

#[test]
fn demo_writes_a_playable_mp4() {
    sys::init();
    let dir = TempDir::new("demo");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    let Addr::Unix(socket) = daemon.addr.clone() else {
        unreachable!()
    };
    let opts = demo::Options {
        socket,
        output: dir.join("ball.mp4"),
        frames: 45,
        width: 320,
        height: 240,
    };
    let summary = demo::run(&opts).unwrap_or_else(|e| panic!("demo failed: {e}"));
    println!("encoder {}\n{summary}", daemon.encoder);
    assert_eq!(summary.frames, 45, "{summary}");
    assert!(summary.encoded_bytes > 0 && summary.output_bytes > summary.encoded_bytes);
    assert_eq!(summary.stats.get::<u64>("frames-dropped").unwrap(), 0);
    assert!(summary.stats.get::<u64>("latency-mean-us").unwrap() > 0);
    let text = summary.to_string();
    for needle in ["frames:", "fps", "bytes per frame", "latency", "dropped"] {
        assert!(text.contains(needle), "summary lacks `{needle}`:\n{text}");
    }

    let frames = decode_mp4(&opts.output);
    assert_eq!(frames.len(), 45, "decoded frame count of the MP4");
    assert!(frames.iter().all(|f| (f.width, f.height) == (320, 240)));
}

#[test]
fn demo_without_daemon_says_what_is_missing() {
    sys::init();
    let dir = TempDir::new("demo-nohost");
    let socket = dir.join("nobody.sock");
    let opts = demo::Options {
        socket: socket.clone(),
        output: dir.join("x.mp4"),
        frames: 5,
        width: 64,
        height: 48,
    };
    let err = demo::run(&opts).expect_err("the demo ran without a daemon");
    assert!(
        err.contains("no vsockenc-host is listening")
            && err.contains(&socket.display().to_string())
            && err.contains("vsockenc-host --listen unix:"),
        "unhelpful error: {err}"
    );

    // A stale socket file (a daemon that died) is told apart.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(listener);
    let err = demo::run(&opts).expect_err("the demo ran against a dead socket");
    assert!(err.contains("nobody accepts"), "unhelpful error: {err}");
    assert!(!opts.output.exists(), "an output file was written anyway");
}

#[test]
fn demo_arguments() {
    let args = |a: &[&str]| demo::parse_args(a.iter().map(|s| s.to_string()));
    let o = args(&[
        "--socket", "/s", "--frames", "10", "--width", "8", "--height", "6",
    ])
    .unwrap();
    assert_eq!((o.frames, o.width, o.height), (10, 8, 6));
    assert_eq!(o.socket, std::path::PathBuf::from("/s"));
    assert!(args(&[]).unwrap_err().contains("--socket is required"));
    assert!(args(&["--socket", "/s", "--frames", "x"])
        .unwrap_err()
        .contains("not a positive number"));
    assert!(args(&["--bogus"]).unwrap_err().contains("unknown argument"));
}
