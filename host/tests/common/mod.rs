//! Test fixtures: a real `vsockenc-host` process, a raw HXFR client, test
//! frames in every wire format, and an H.264 decoder to check the output.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_video::prelude::*;
use hxfr::ext::{ExtMessage, Hello, ProfileRequest, ProfileResponse};
use hxfr::{Decoded, Decoder, FrameRequest, FrameResponse, Header, Message, WireFormat};

pub const BIN: &str = env!("CARGO_BIN_EXE_vsockenc-host");
/// Generous bound for anything a loaded 2-core machine should finish.
pub const WAIT: Duration = Duration::from_secs(40);

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| gst::init().unwrap());
}

/// A unique scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vsockenc-host-test-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Daemon {
    pub child: Child,
    /// Addresses from the "listening on" lines, in order.
    pub listening: Vec<String>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts the daemon (with `timeout` around it, so a stuck daemon can
    /// never outlive the test) and waits until every `--listen` is up.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_limited(args, None)
    }

    /// [`Daemon::start`] with at most `nofile` file descriptors (soft and
    /// hard limit, as `ulimit -n` sets them).
    pub fn start_limited(args: &[&str], nofile: Option<u64>) -> Daemon {
        let expected = args.iter().filter(|a| **a == "--listen").count().max(1);
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", "110"])
            .arg(BIN)
            .args(["--log-level", "debug", "--stats-interval", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; `timeout` and the
            // daemon inherit the limit.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn vsockenc-host");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((_, addr)) = line.split_once("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                if std::env::var_os("VSOCKENC_TEST_LOG").is_some() {
                    eprintln!("[daemon] {line}");
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut listening = Vec::new();
        let deadline = Instant::now() + WAIT;
        while listening.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(a) => listening.push(a),
                Err(_) => panic!(
                    "daemon did not start listening; log:\n{}",
                    log.lock().unwrap()
                ),
            }
        }
        Daemon {
            child,
            listening,
            log,
        }
    }

    pub fn tcp(&self) -> SocketAddr {
        let a = self
            .listening
            .iter()
            .find_map(|a| a.strip_prefix("tcp:"))
            .expect("a tcp listener");
        a.parse().unwrap()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?} {n} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PID of the daemon itself (the child is `timeout`, its parent).
    pub fn pid(&self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("pgrep")
                .args(["-P", &self.child.id().to_string()])
                .output()
                .unwrap();
            let s = String::from_utf8_lossy(&out.stdout);
            if let Some(pid) = s.split_whitespace().next() {
                return pid.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no daemon process under timeout");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child process we started.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// The address of the metrics endpoint, from its start-up line.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.wait_log("metrics on http://");
        let log = self.log();
        let rest = log.split("metrics on http://").nth(1).unwrap();
        rest.split('/').next().unwrap().parse().unwrap()
    }

    /// The daemon is still running.
    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "daemon died:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own children.
            unsafe {
                let pid = self.pid();
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the daemon expecting it to exit by itself; returns status and log.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// One sample of a scrape: metric name, labels, value.
pub type Sample = (String, std::collections::BTreeMap<String, String>, f64);

/// Scrapes `http://addr/metrics` and parses it with the Prometheus
/// project's own OpenMetrics parser (python3-prometheus-client), which
/// rejects text that is not valid OpenMetrics.
pub fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    // Debian's python3, which has Debian's python3-prometheus-client (a
    // python3 earlier in PATH, e.g. pyenv's, may not).
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs python3-prometheus-client)");
    py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the scrape: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (
                s[0].as_str().unwrap().to_string(),
                labels,
                s[2].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A raw HXFR client.
pub struct Client {
    pub stream: Box<dyn Stream>,
    decoder: Decoder,
}

impl Client {
    pub fn tcp(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client::new(Box::new(s))
    }

    pub fn unix(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        Client::new(Box::new(s))
    }

    fn new(stream: Box<dyn Stream>) -> Client {
        Client {
            stream,
            decoder: Decoder::default(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, msg: &Message) {
        self.send_raw(&msg.encode(1));
    }

    pub fn send_frame(&mut self, req: &FrameRequest, pixels: &[u8]) {
        hxfr::write::write_frame_request(&mut self.stream, 1, req, &[pixels]).unwrap();
    }

    /// The next message; panics on timeout or a closed connection.
    pub fn recv(&mut self) -> (Header, Message) {
        match self.decoder.read_from(&mut self.stream) {
            Ok(Some(m)) => m,
            Ok(None) => panic!("connection closed while waiting for a message"),
            Err(e) => panic!("reading a message failed: {e}"),
        }
    }

    /// The next message, or `None` once the daemon closed the connection.
    pub fn recv_or_closed(&mut self) -> Option<(Header, Message)> {
        match self.decoder.read_from(&mut self.stream) {
            Ok(m) => m,
            Err(e) if e.is_timeout() => panic!("timed out waiting for a message or close"),
            Err(_) => None,
        }
    }

    pub fn recv_response(&mut self) -> FrameResponse {
        match self.recv().1 {
            Message::FrameResponse(r) => r,
            other => panic!("expected FRAME_RESPONSE, got {other:?}"),
        }
    }

    pub fn recv_error(&mut self) -> hxfr::ErrorMessage {
        match self.recv().1 {
            Message::Error(e) => e,
            other => panic!("expected ERROR, got {other:?}"),
        }
    }

    pub fn ping(&mut self, session_id: u16) {
        self.send_raw(&Message::Ping.encode(session_id));
        let (h, m) = self.recv();
        assert_eq!(m, Message::Pong);
        assert_eq!(h.session_id, session_id);
    }
}

/// Pixel formats as a guest names them (BGRA and BGRx share a fourcc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    Bgrx,
    Bgra,
    Rgbx,
    Rgba,
    Nv12,
}

impl Fmt {
    pub fn wire(self) -> WireFormat {
        match self {
            Fmt::Bgrx | Fmt::Bgra => WireFormat::Bgra,
            Fmt::Rgbx | Fmt::Rgba => WireFormat::Rgba,
            Fmt::Nv12 => WireFormat::Nv12,
        }
    }

    /// The raw format decoded output is converted to for comparison.
    pub fn gst_name(self) -> &'static str {
        match self {
            Fmt::Bgrx | Fmt::Bgra => "BGRx",
            Fmt::Rgbx | Fmt::Rgba => "RGBx",
            Fmt::Nv12 => "NV12",
        }
    }
}

/// A test frame: smooth, moving content that survives 4:2:0 coding, with
/// `seed` giving each stream its own picture.
pub struct TestFrame {
    pub fmt: Fmt,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub pixels: Vec<u8>,
}

fn wave(v: f64, period: f64) -> f64 {
    (v / period * std::f64::consts::TAU).sin()
}

pub fn test_frame(fmt: Fmt, width: u32, height: u32, stride: u32, t: u32, seed: u32) -> TestFrame {
    let (w, h, s) = (width as usize, height as usize, stride as usize);
    let t = t as f64;
    let sd = seed as f64;
    let rgb = |x: usize, y: usize| -> [u8; 3] {
        let (x, y) = (x as f64, y as f64);
        let r = 128.0 + 90.0 * wave(x + 3.0 * t + 11.0 * sd, 61.0 + 7.0 * sd);
        let g = 128.0 + 90.0 * wave(y + 2.0 * t, 47.0 + 5.0 * sd);
        let b = 128.0 + 80.0 * wave(x + y - t + 19.0 * sd, 89.0);
        [r as u8, g as u8, b as u8]
    };
    let pixels = match fmt {
        Fmt::Nv12 => {
            let rows = h + h.div_ceil(2);
            let mut p = vec![0xEEu8; rows * s];
            for y in 0..h {
                for x in 0..w {
                    let [r, g, b] = rgb(x, y);
                    p[y * s + x] =
                        (16.0 + 0.257 * r as f64 + 0.504 * g as f64 + 0.098 * b as f64) as u8;
                }
            }
            for y in 0..h.div_ceil(2) {
                for x in 0..w.div_ceil(2) {
                    let [r, g, b] = rgb(2 * x, 2 * y);
                    let (r, g, b) = (r as f64, g as f64, b as f64);
                    let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
                    let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
                    p[(h + y) * s + 2 * x] = u as u8;
                    p[(h + y) * s + 2 * x + 1] = v as u8;
                }
            }
            p
        }
        _ => {
            let mut p = vec![0xEEu8; h * s];
            for y in 0..h {
                for x in 0..w {
                    let [r, g, b] = rgb(x, y);
                    let a = (x * 7 + y * 3) as u8;
                    let px = match fmt {
                        Fmt::Bgrx | Fmt::Bgra => [b, g, r, a],
                        _ => [r, g, b, a],
                    };
                    p[y * s + 4 * x..][..4].copy_from_slice(&px);
                }
            }
            p
        }
    };
    TestFrame {
        fmt,
        width,
        height,
        stride,
        pixels,
    }
}

impl TestFrame {
    pub fn request(&self, pts: i64, force_keyframe: bool) -> FrameRequest {
        FrameRequest {
            resource_id: 0,
            width: self.width,
            height: self.height,
            format: self.fmt.wire().fourcc(),
            stride: self.stride,
            pts,
            duration: 33_333_333,
            force_keyframe,
        }
    }
}

/// A decoded picture in the comparison format.
pub struct Picture {
    pub pts: Option<u64>,
    pub width: u32,
    pub height: u32,
    pub planes: Vec<(Vec<u8>, usize)>,
}

/// Decodes Annex-B access units with avdec_h264 into `fmt`'s raw format.
pub fn decode(aus: &[(i64, Vec<u8>)], fmt: Fmt) -> Vec<Picture> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=video/x-h264,stream-format=byte-stream,alignment=au \
         ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format={} \
         ! appsink name=sink sync=false",
        fmt.gst_name()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for (pts, au) in aus {
        let mut b = gst::Buffer::from_slice(au.clone());
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_nseconds(*pts as u64));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let mut out = Vec::new();
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
        let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
        let buffer = sample.buffer_owned().unwrap();
        let pts = buffer.pts().map(|p| p.nseconds());
        let frame = gst_video::VideoFrame::from_buffer_readable(buffer, &info).unwrap();
        let planes = (0..frame.n_planes())
            .map(|i| {
                (
                    frame.plane_data(i).unwrap().to_vec(),
                    frame.plane_stride()[i as usize] as usize,
                )
            })
            .collect();
        out.push(Picture {
            pts,
            width: info.width(),
            height: info.height(),
            planes,
        });
        if sink.is_eos() {
            break;
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

/// PSNR (dB) of the decoded picture against the frame sent, over the
/// visible `width` x `height` area (alpha ignored).
pub fn psnr(sent: &TestFrame, got: &Picture) -> f64 {
    let (w, h, s) = (
        sent.width as usize,
        sent.height as usize,
        sent.stride as usize,
    );
    assert!(got.width as usize >= w && got.height as usize >= h);
    let mut se = 0f64;
    let mut n = 0f64;
    let mut add = |a: u8, b: u8| {
        let d = a as f64 - b as f64;
        se += d * d;
        n += 1.0;
    };
    match sent.fmt {
        Fmt::Nv12 => {
            let (y, ys) = &got.planes[0];
            let (uv, uvs) = &got.planes[1];
            for r in 0..h {
                for c in 0..w {
                    add(sent.pixels[r * s + c], y[r * ys + c]);
                }
            }
            for r in 0..h.div_ceil(2) {
                for c in 0..2 * w.div_ceil(2) {
                    add(sent.pixels[(h + r) * s + c], uv[r * uvs + c]);
                }
            }
        }
        _ => {
            let (p, ps) = &got.planes[0];
            for r in 0..h {
                for c in 0..w {
                    for k in 0..3 {
                        add(sent.pixels[r * s + 4 * c + k], p[r * ps + 4 * c + k]);
                    }
                }
            }
        }
    }
    let mse = se / n;
    if mse == 0.0 {
        return 99.0;
    }
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// Streams `frames` over `client` with up to `in_flight` outstanding and
/// returns the responses in order.
pub fn stream_frames(
    client: &mut Client,
    frames: &[(TestFrame, i64, bool)],
    in_flight: usize,
) -> Vec<FrameResponse> {
    let mut out = Vec::new();
    let mut sent = 0;
    while out.len() < frames.len() {
        while sent < frames.len() && sent - out.len() < in_flight {
            let (f, pts, key) = &frames[sent];
            client.send_frame(&f.request(*pts, *key), &f.pixels);
            sent += 1;
        }
        out.push(client.recv_response());
    }
    out
}

/// A guest that says HELLO and speaks the extensions it was granted.
pub struct ExtGuest {
    pub stream: TcpStream,
    decoder: Decoder,
}

impl ExtGuest {
    pub fn connect(daemon: &Daemon) -> ExtGuest {
        let s = TcpStream::connect(daemon.tcp()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
        ExtGuest {
            stream: s,
            decoder: Decoder::with_extensions(hxfr::Limits::default()),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_frame(&mut self, req: &FrameRequest, pixels: &[u8]) {
        hxfr::write::write_frame_request(&mut self.stream, 1, req, &[pixels]).unwrap();
    }

    /// Says HELLO asking for `ext` and returns the accepted bits.
    pub fn hello(&mut self, ext: u32) -> u32 {
        self.send(
            &ExtMessage::Hello(Hello {
                version: 1,
                extensions: ext,
                agent: "host-test".into(),
                ..Default::default()
            })
            .encode(1),
        );
        match self.recv() {
            Decoded::Ext(_, ExtMessage::HelloAck(a)) => a.extensions,
            other => panic!("expected HELLO_ACK, got {other:?}"),
        }
    }

    pub fn recv(&mut self) -> Decoded {
        match self.decoder.read_from_ext(&mut self.stream) {
            Ok(Some(d)) => d,
            Ok(None) => panic!("connection closed"),
            Err(e) => panic!("read failed: {e}"),
        }
    }

    pub fn recv_response(&mut self) -> FrameResponse {
        match self.recv() {
            Decoded::Legacy(_, Message::FrameResponse(r)) => r,
            other => panic!("expected FRAME_RESPONSE, got {other:?}"),
        }
    }

    /// Sends a PROFILE_REQ and returns its answer.
    pub fn ask_profile(&mut self, req: ProfileRequest) -> ProfileResponse {
        self.send(&ExtMessage::ProfileRequest(req).encode(1));
        match self.recv() {
            Decoded::Ext(_, ExtMessage::ProfileResponse(r)) => {
                assert_eq!(r.token, req.token, "the answer names its request");
                r
            }
            other => panic!("expected PROFILE_RESP, got {other:?}"),
        }
    }

    /// Sends `frames` (pixels, request) with up to `in_flight` outstanding
    /// and returns the responses in order.
    pub fn stream(
        &mut self,
        frames: &[(Vec<u8>, FrameRequest)],
        in_flight: usize,
    ) -> Vec<FrameResponse> {
        let mut out = Vec::new();
        let mut sent = 0;
        while out.len() < frames.len() {
            while sent < frames.len() && sent - out.len() < in_flight {
                let (px, req) = &frames[sent];
                self.send_frame(req, px);
                sent += 1;
            }
            out.push(self.recv_response());
        }
        out
    }
}

/// Decodes Annex-B access units with avdec_h264 into raw `format` (a
/// GStreamer format name) and returns each picture's planes, tightly
/// packed.
pub fn decode_to(aus: &[Vec<u8>], format: &str) -> Vec<Vec<Vec<u8>>> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=video/x-h264,stream-format=byte-stream,alignment=au \
         ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format={format} \
         ! appsink name=sink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for (i, au) in aus.iter().enumerate() {
        let mut b = gst::Buffer::from_slice(au.clone());
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(33 * i as u64));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let mut out = Vec::new();
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
        let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
        let frame =
            gst_video::VideoFrame::from_buffer_readable(sample.buffer_owned().unwrap(), &info)
                .unwrap();
        let planes = (0..frame.n_planes())
            .map(|p| {
                let stride = frame.plane_stride()[p as usize] as usize;
                let data = frame.plane_data(p).unwrap();
                let (w, h) = plane_size(&info, p);
                (0..h)
                    .flat_map(|y| data[y * stride..][..w].to_vec())
                    .collect::<Vec<u8>>()
            })
            .collect();
        out.push(planes);
        if sink.is_eos() {
            break;
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

/// Bytes per row and rows of plane `p` of `info`.
fn plane_size(info: &gst_video::VideoInfo, p: u32) -> (usize, usize) {
    let fi = info.format_info();
    // The first component stored in this plane gives its subsampling.
    let comp = (0..fi.n_components())
        .find(|&c| fi.plane()[c as usize] == p)
        .unwrap();
    let w = fi.scale_width(comp as u8, info.width()) as usize;
    let h = fi.scale_height(comp as u8, info.height()) as usize;
    let pixel_stride = fi.pixel_stride()[comp as usize] as usize;
    (w * pixel_stride, h)
}

/// NAL types of the slices of an access unit with their slice types (0 P,
/// 1 B, 2 I, 3 SP, 4 SI).
pub fn slice_types(au: &[u8]) -> Vec<(u8, u32)> {
    hxfr::nal::split_annexb(au)
        .into_iter()
        .filter(|n| matches!(n.first().map(|h| h & 0x1f), Some(1 | 5)))
        .map(|n| {
            let rbsp = hxfr::nal::rbsp(&n[1..]);
            let mut bits = Bits {
                data: &rbsp,
                pos: 0,
            };
            let _first_mb = bits.ue();
            (n[0] & 0x1f, bits.ue() % 5)
        })
        .collect()
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> u32 {
        let b = self.data[self.pos / 8] >> (7 - self.pos % 8) & 1;
        self.pos += 1;
        b as u32
    }

    fn ue(&mut self) -> u32 {
        let mut zeros = 0;
        while self.bit() == 0 {
            zeros += 1;
        }
        (0..zeros).fold(1u32, |v, _| v << 1 | self.bit()) - 1
    }
}

/// A client that streams frames until told to stop, then checks that every
/// response was its own, in order, and decodes to what it sent.
pub struct Healthy {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<usize>,
    /// Time from the start to the first answer, once it came.
    first: Arc<Mutex<Option<Duration>>>,
}

impl Healthy {
    pub fn start(addr: SocketAddr) -> Healthy {
        let stop = Arc::new(AtomicBool::new(false));
        let first = Arc::new(Mutex::new(None));
        let (flag, first_answer) = (stop.clone(), first.clone());
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            let mut client = Client::tcp(addr);
            let mut frames = Vec::new();
            let mut responses = Vec::new();
            let mut t = 0u32;
            while !flag.load(Ordering::SeqCst) || frames.len() < 10 {
                let batch: Vec<_> = (0..4)
                    .map(|i| {
                        let f = test_frame(Fmt::Nv12, 80, 64, 80, t + i, 42);
                        (f, (t + i) as i64 * 1000, false)
                    })
                    .collect();
                t += 4;
                responses.extend(stream_frames(&mut client, &batch, 4));
                first_answer
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| started.elapsed());
                frames.extend(batch);
                assert!(frames.len() < 5000, "healthy client ran away");
            }
            for (r, (_, pts, _)) in responses.iter().zip(&frames) {
                assert_eq!(r.pts, *pts, "healthy client got exactly its own responses");
            }
            let aus: Vec<_> = responses
                .iter()
                .enumerate()
                .map(|(i, r)| (i as i64 * 33_333_333, r.annexb()))
                .collect();
            let pictures = decode(&aus, Fmt::Nv12);
            assert_eq!(pictures.len(), frames.len());
            for (i, (p, (f, _, _))) in pictures.iter().zip(&frames).enumerate() {
                let db = psnr(f, p);
                assert!(db > 30.0, "healthy frame {i}: PSNR {db:.1} dB");
            }
            client.ping(3);
            frames.len()
        });
        Healthy {
            stop,
            handle,
            first,
        }
    }

    /// When the first batch of answers came, counted from `start`.
    pub fn first_answer_after(&self) -> Option<Duration> {
        *self.first.lock().unwrap()
    }

    /// Stops streaming; the number of frames, every one of them checked.
    pub fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .expect("the healthy client's stream was disturbed")
    }
}
