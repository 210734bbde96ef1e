//! The copyable examples `examples/desktop_capture.rs` (with `--test-source`)
//! and `examples/read_stats.rs` run briefly against the real daemon and
//! produce what their doc comments promise.

mod sys;

#[allow(dead_code)]
#[path = "../examples/desktop_capture.rs"]
mod desktop_capture;

#[allow(dead_code)]
#[path = "../examples/read_stats.rs"]
mod read_stats;

use std::time::Duration;

use sys::daemon::{Addr, Daemon, Transport};
use sys::tempdir::TempDir;

fn args(list: &[&str]) -> impl Iterator<Item = String> {
    list.iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .into_iter()
}

#[test]
fn desktop_capture_with_test_source_pulls_access_units() {
    sys::init();
    let dir = TempDir::new("desktop-capture");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    let Addr::Unix(socket) = daemon.addr.clone() else {
        unreachable!()
    };
    let socket = socket.to_str().unwrap().to_string();
    let opts = desktop_capture::parse_args(args(&[
        "--test-source",
        "--socket",
        &socket,
        "--seconds",
        "3",
        "--width",
        "320",
        "--height",
        "240",
    ]))
    .unwrap();
    let desc = desktop_capture::pipeline_description(&opts);
    for shape in [
        "videotestsrc is-live=true",
        "videoconvert ! video/x-raw,format=NV12",
        "queue max-size-buffers=1 leaky=downstream",
        "vsockenc name=enc socket-path=",
        "h264parse",
        "appsink",
    ] {
        assert!(desc.contains(shape), "`{shape}` missing from {desc}");
    }

    let sum = desktop_capture::run(&opts).unwrap_or_else(|e| panic!("desktop_capture: {e}"));
    let stats = sum.stats.expect("stats at the end");
    let sent = stats.get::<u64>("frames-sent").unwrap();
    let returned = stats.get::<u64>("frames-returned").unwrap();
    println!(
        "{} AUs, {} keyframes, {} bytes in {:?}; {stats}",
        sum.access_units, sum.keyframes, sum.bytes, sum.wall
    );
    // Live 30 fps for 3 s; a loaded machine may drop frames in the leaky
    // queue, so only ask for a steady fraction.
    assert!(sum.access_units >= 15, "only {} AUs", sum.access_units);
    assert!(sum.keyframes >= 1);
    assert_eq!(
        returned, sum.access_units,
        "every returned frame reached appsink"
    );
    assert_eq!(stats.get::<u64>("frames-dropped").unwrap(), 0, "{stats}");
    assert!(sent >= returned);
    assert_eq!(stats.get::<u32>("in-flight").unwrap(), 0, "EOS drained");
}

#[test]
fn desktop_capture_explains_a_missing_pipewire_or_host() {
    sys::init();
    // Parsing and the pipeline shape of the real (PipeWire) mode.
    let o = desktop_capture::parse_args(args(&["--vsock", "2:5000"])).unwrap();
    let desc = desktop_capture::pipeline_description(&o);
    assert!(desc.starts_with("pipewiresrc"), "{desc}");
    assert!(desc.contains("cid=2 port=5000"), "{desc}");
    assert!(desktop_capture::parse_args(args(&["--tcp", "nohost"])).is_err());

    // No daemon at the socket: a clear error, not a hang.
    let dir = TempDir::new("desktop-capture-nohost");
    let missing = dir.join("absent.sock");
    let o = desktop_capture::parse_args(args(&[
        "--test-source",
        "--socket",
        missing.to_str().unwrap(),
        "--seconds",
        "2",
    ]))
    .unwrap();
    let err = desktop_capture::run(&o).expect_err("no host");
    assert!(err.contains("vsockenc-host"), "{err}");
}

#[test]
fn read_stats_prints_periodic_and_final_stats() {
    sys::init();
    let dir = TempDir::new("read-stats");
    let daemon = Daemon::start(Transport::Tcp, &dir, &[]);
    let Addr::Tcp(port) = daemon.addr.clone() else {
        unreachable!()
    };
    let opts = read_stats::parse_args(args(&[
        "--tcp",
        &format!("127.0.0.1:{port}"),
        "--frames",
        "45",
        "--interval-ms",
        "300",
    ]))
    .unwrap();
    assert_eq!(opts.interval, Duration::from_millis(300));
    let lines = read_stats::run(&opts).unwrap_or_else(|e| panic!("read_stats: {e}"));
    assert!(lines.len() >= 2, "periodic reads expected: {lines:#?}");
    let last = lines.last().unwrap();
    assert!(last.starts_with("eos: "), "{last}");
    for field in [
        "frames-sent=45",
        "frames-returned=45",
        "frames-dropped=0",
        "in-flight=0",
        "latency-mean-us=",
        "bytes-sent=",
    ] {
        assert!(last.contains(field), "`{field}` missing: {last}");
    }
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.ends_with(char::is_numeric) && l.contains(" s: frames-sent=")),
        "{lines:#?}"
    );
}
