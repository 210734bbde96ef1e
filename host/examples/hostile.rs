//! Hostile neighbours against a `vsockenc-host` binary: the measurements of
//! issue 13, one case at a time, each with a healthy guest streaming
//! alongside. Not a test (the bounded versions of these cases are in
//! `host/tests/hostile.rs`): it runs the full-size attacks and prints the
//! figures, so that the same command can be run against two builds.
//!
//!   scripts/hostile.sh [--host-bin PATH] CASE...
//!   cargo run --release -p vsockenc-host --example hostile -- --host-bin PATH CASE...
//!
//! CASE: `slowloris`, `churn`, `memory`, `fds`, `access`, `keep` (case 6),
//! or `all`. Extra daemon flags can be added with `--daemon-arg ARG`
//! (repeatable), e.g. `--daemon-arg --memory-budget=1G`.
//!
//! The healthy guest behaves like the vsockenc element with its defaults:
//! HELLO, 640x360 NV12 at 30 fps, at most 4 frames in flight, a frame
//! without answer after 2 s is dropped, reconnect at once and then every
//! second. Every answer is checked (the pts it names, an H.264 access unit
//! that is not empty).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hxfr::compact::{CompactEncoder, Compression, Delta, Frame};
use hxfr::ext::{ext_bits, ExtMessage, Hello};
use hxfr::{Decoded, Decoder, FrameLayout, FrameRequest, Limits, Message, WireFormat};

fn main() {
    let mut bin = String::from("target/release/vsockenc-host");
    let mut extra: Vec<String> = Vec::new();
    let mut cases: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--host-bin" => bin = args.next().expect("--host-bin PATH"),
            "--daemon-arg" => extra.push(args.next().expect("--daemon-arg ARG")),
            "-h" | "--help" => {
                println!("hostile [--host-bin PATH] [--daemon-arg ARG]... slowloris|churn|memory|fds|access|keep|all...");
                return;
            }
            c => cases.push(c.to_string()),
        }
    }
    if cases.is_empty() || cases.iter().any(|c| c == "all") {
        cases = ["slowloris", "churn", "memory", "fds", "access", "keep"]
            .map(String::from)
            .to_vec();
    }
    println!("host binary: {bin}");
    println!("load: {}", load());
    for c in &cases {
        let t = Instant::now();
        println!("== case {c}");
        match c.as_str() {
            "slowloris" => slowloris(&bin, &extra),
            "churn" => churn(&bin, &extra),
            "memory" => memory(&bin, &extra),
            "fds" => fds(&bin, &extra),
            "access" => access(&bin, &extra),
            "keep" => keep(&bin, &extra),
            other => panic!("unknown case {other}"),
        }
        println!(
            "   ({:.0} s; load after: {})",
            t.elapsed().as_secs_f64(),
            load()
        );
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---- the daemon ---------------------------------------------------------

struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(bin: &str, args: &[&str], extra: &[String], nofile: Option<u64>) -> Daemon {
        Daemon::try_start(bin, args, extra, nofile)
            .unwrap_or_else(|log| panic!("the daemon did not start:\n{log}"))
    }

    /// The daemon, or its output when it did not start listening.
    fn try_start(
        bin: &str,
        args: &[&str],
        extra: &[String],
        nofile: Option<u64>,
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"])
            .args(["--stats-interval", "0", "--log-format", "human"])
            .args(args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe.
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
        let mut child = cmd.spawn().expect("start the daemon");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, a)) = line.split_once("listening on tcp:") {
                    let _ = tx.send(a.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(200));
                return Err(log.lock().unwrap().join("\n"));
            }
        };
        Ok(Daemon { child, addr, log })
    }

    fn rss_kib(&self) -> u64 {
        status_field(self.child.id(), "VmRSS:")
    }

    fn threads(&self) -> u64 {
        status_field(self.child.id(), "Threads:")
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn lines(&self, needle: &str, n: usize) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .take(n)
            .cloned()
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the daemon's RSS every 50 ms; the peak so far.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s) = (peak.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(status_field(pid, "VmRSS:"), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(50));
            }
        });
        RssPeak { peak, stop }
    }
    fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

// ---- the healthy guest --------------------------------------------------

#[derive(Debug, Default, Clone)]
struct GuestReport {
    frames: u64,
    answered: u64,
    dropped_error: u64,
    dropped_timeout: u64,
    dropped_disconnect: u64,
    dropped_no_connection: u64,
    refusals: u64,
    connects: u64,
    bad_answers: u64,
    first_frame_after: Option<Duration>,
    errors: Vec<String>,
}

impl GuestReport {
    fn dropped(&self) -> u64 {
        self.dropped_error
            + self.dropped_timeout
            + self.dropped_disconnect
            + self.dropped_no_connection
    }
    fn line(&self) -> String {
        format!(
            "healthy guest: {} frames, {} answered, {} dropped (error {}, timeout {}, disconnect {}, no connection {}), {} refusals, {} connects, {} bad answers, first frame answered after {}{}",
            self.frames,
            self.answered,
            self.dropped(),
            self.dropped_error,
            self.dropped_timeout,
            self.dropped_disconnect,
            self.dropped_no_connection,
            self.refusals,
            self.connects,
            self.bad_answers,
            self.first_frame_after
                .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "never".into()),
            self.errors
                .first()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        )
    }
}

/// In-flight frames of the guest: (pts, sent at).
type InFlight = Arc<Mutex<Vec<(i64, Instant)>>>;

struct GuestConn {
    stream: TcpStream,
    alive: Arc<AtomicBool>,
}

fn nv12(width: u32, height: u32, t: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut p = vec![128u8; w * h + w * h / 2];
    for y in 0..h {
        for x in 0..w {
            p[y * w + x] = ((x + y + 4 * t as usize) % 220 + 16) as u8;
        }
    }
    p
}

/// Streams `frames` frames at 30 fps against `addr` and reports.
fn healthy_guest(addr: SocketAddr, frames: u32) -> GuestReport {
    let report = Arc::new(Mutex::new(GuestReport::default()));
    let inflight: InFlight = Arc::default();
    let start = Instant::now();
    let pics: Vec<Vec<u8>> = (0..8).map(|t| nv12(640, 360, t)).collect();
    let mut conn: Option<GuestConn> = None;
    let mut next_connect = Instant::now();
    let period = Duration::from_nanos(1_000_000_000 / 30);
    for i in 0..frames {
        let due = start + period * i;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        // Timeouts.
        {
            let mut f = inflight.lock().unwrap();
            let before = f.len();
            f.retain(|(_, t)| t.elapsed() < Duration::from_secs(2));
            report.lock().unwrap().dropped_timeout += (before - f.len()) as u64;
        }
        if conn
            .as_ref()
            .is_some_and(|c| !c.alive.load(Ordering::SeqCst))
        {
            conn = None;
            let lost = std::mem::take(&mut *inflight.lock().unwrap()).len();
            report.lock().unwrap().dropped_disconnect += lost as u64;
            // The element reconnects at once after a loss.
            next_connect = Instant::now();
        }
        if conn.is_none() && Instant::now() >= next_connect {
            conn = guest_connect(addr, &report, &inflight, start);
            if conn.is_none() {
                next_connect = Instant::now() + Duration::from_secs(1);
            }
        }
        report.lock().unwrap().frames += 1;
        let Some(c) = conn.as_mut() else {
            report.lock().unwrap().dropped_no_connection += 1;
            continue;
        };
        if inflight.lock().unwrap().len() >= 4 {
            // The element blocks; at 30 fps a leaky queue upstream drops.
            report.lock().unwrap().dropped_timeout += 1;
            continue;
        }
        let pts = i as i64 * 33_333_333;
        let req = FrameRequest {
            resource_id: 0,
            width: 640,
            height: 360,
            format: WireFormat::Nv12.fourcc(),
            stride: 640,
            pts,
            duration: 33_333_333,
            force_keyframe: false,
        };
        inflight.lock().unwrap().push((pts, Instant::now()));
        if hxfr::write::write_frame_request(&mut c.stream, 1, &req, &[&pics[i as usize % 8]])
            .is_err()
        {
            c.alive.store(false, Ordering::SeqCst);
        }
    }
    // Let the last answers come.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !inflight.lock().unwrap().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left = inflight.lock().unwrap().len() as u64;
    let mut r = report.lock().unwrap().clone();
    r.dropped_timeout += left;
    if let Some(c) = conn {
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
    }
    r
}

fn guest_connect(
    addr: SocketAddr,
    report: &Arc<Mutex<GuestReport>>,
    inflight: &InFlight,
    start: Instant,
) -> Option<GuestConn> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    report.lock().unwrap().connects += 1;
    let hello = ExtMessage::Hello(Hello {
        version: 1,
        extensions: ext_bits::ERROR_PTS,
        tile_width: 64,
        tile_height: 64,
        agent: "hostile-healthy".into(),
        ..Default::default()
    })
    .encode(1);
    s.write_all(&hello).ok()?;
    let alive = Arc::new(AtomicBool::new(true));
    let (mut r, a, rep, inf) = (
        s.try_clone().ok()?,
        alive.clone(),
        report.clone(),
        inflight.clone(),
    );
    thread::spawn(move || {
        let mut dec = Decoder::with_extensions(Limits::default());
        loop {
            match dec.read_from_ext(&mut r) {
                Ok(Some(Decoded::Legacy(_, Message::FrameResponse(resp)))) => {
                    let mut f = inf.lock().unwrap();
                    let mut rep = rep.lock().unwrap();
                    // Not in flight: already dropped by its timeout.
                    if let Some(i) = f.iter().position(|(p, _)| *p == resp.pts) {
                        f.remove(i);
                        let au: usize = resp.chunks.iter().map(|n| n.len()).sum();
                        if au == 0
                            || !resp
                                .chunks
                                .iter()
                                .all(|n| n.starts_with(&[0, 0, 0, 1]) || n.starts_with(&[0, 0, 1]))
                        {
                            rep.bad_answers += 1;
                        } else {
                            rep.answered += 1;
                            rep.first_frame_after.get_or_insert(start.elapsed());
                        }
                    }
                }
                Ok(Some(Decoded::Ext(_, ExtMessage::ErrorPts(e)))) => {
                    let mut f = inf.lock().unwrap();
                    let mut rep = rep.lock().unwrap();
                    if let Some(i) = f.iter().position(|(p, _)| *p == e.pts) {
                        f.remove(i);
                        rep.dropped_error += 1;
                    }
                    if e.code == -10 || e.code == -99 {
                        rep.refusals += 1;
                    }
                    rep.errors.push(format!("{} {}", e.code, e.message));
                }
                Ok(Some(Decoded::Legacy(_, Message::Error(e)))) => {
                    let mut rep = rep.lock().unwrap();
                    if e.code == -10 || e.code == -99 {
                        rep.refusals += 1;
                    }
                    rep.errors.push(format!("{} {}", e.code, e.message));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        a.store(false, Ordering::SeqCst);
    });
    Some(GuestConn { stream: s, alive })
}

// ---- attackers ----------------------------------------------------------

fn hello_bytes(ext: u32) -> Vec<u8> {
    ExtMessage::Hello(Hello {
        version: 1,
        extensions: ext,
        tile_width: 64,
        tile_height: 64,
        agent: "hostile".into(),
        ..Default::default()
    })
    .encode(1)
}

/// Case 1: clients that trickle one byte per second.
fn slowloris(bin: &str, extra: &[String]) {
    let d = Daemon::start(
        bin,
        &["--max-clients", "4", "--idle-timeout", "10"],
        extra,
        None,
    );
    let t0 = Instant::now();
    let closed_after: Arc<Mutex<Vec<Option<Duration>>>> = Arc::new(Mutex::new(vec![None; 4]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for i in 0..4 {
        let (addr, closed, stop) = (d.addr, closed_after.clone(), stop.clone());
        hs.push(thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut probe = s.try_clone().unwrap();
            probe.set_nonblocking(true).unwrap();
            // A valid FRAME_REQUEST for a 4K BGRA frame, one byte a second.
            let req = FrameRequest {
                width: 3840,
                height: 2160,
                format: WireFormat::Bgra.fourcc(),
                stride: 3840 * 4,
                ..Default::default()
            };
            let bytes = req.encode_prefix(1, Some(3840 * 2160 * 4));
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(45) {
                let b = bytes.get(k).copied().unwrap_or(0);
                if s.write_all(&[b]).is_err() {
                    break;
                }
                k += 1;
                // The daemon closing shows as EOF or a reset on read.
                let mut buf = [0u8; 512];
                let mut gone = false;
                let until = Instant::now() + Duration::from_secs(1);
                while Instant::now() < until {
                    match probe.read(&mut buf) {
                        Ok(0) => gone = true,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => gone = true,
                    }
                    if gone {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                if gone {
                    break;
                }
            }
            if t0.elapsed() < Duration::from_secs(45) && !stop.load(Ordering::Relaxed) {
                closed.lock().unwrap()[i] = Some(t0.elapsed());
            }
        }));
    }
    thread::sleep(Duration::from_secs(20));
    println!("   guest starts at {:.0} s", t0.elapsed().as_secs_f64());
    let g = healthy_guest(d.addr, 90);
    println!("   {}", g.line());
    for h in hs {
        let _ = h.join();
    }
    stop.store(true, Ordering::Relaxed);
    let c = closed_after.lock().unwrap();
    println!(
        "   tricklers closed by the daemon after: {}",
        c.iter()
            .map(|c| c
                .map(|d| format!("{:.0} s", d.as_secs_f64()))
                .unwrap_or("not within 45 s".into()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Case 2: 4 x N connections that say HELLO and close.
fn churn(bin: &str, extra: &[String]) {
    let n: u32 = std::env::var("HOSTILE_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let d = Daemon::start(bin, &[], extra, None);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let hello = hello_bytes(ext_bits::ERROR_PTS);
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..4 {
        let (addr, stop, done, hello) = (d.addr, stop.clone(), done.clone(), hello.clone());
        hs.push(thread::spawn(move || {
            for _ in 0..n {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(&hello);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Newcomers at intervals while the churn goes on.
    for k in 0..4u64 {
        thread::sleep(Duration::from_secs(if k == 0 { 2 } else { 5 }));
        if done.load(Ordering::Relaxed) >= 4 * n as u64 {
            break;
        }
        println!(
            "   guest {k} starts at {:.0} s, {} churn connections so far",
            t0.elapsed().as_secs_f64(),
            done.load(Ordering::Relaxed)
        );
        let g = healthy_guest(d.addr, 150);
        println!("   {}", g.line());
    }
    let at_guest_end = done.load(Ordering::Relaxed);
    for h in hs {
        let _ = h.join();
    }
    println!(
        "   churn: {} connections in {:.0} s ({} during the guest's stream); daemon alive: {}; refusal lines: {}",
        done.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
        at_guest_end,
        is_alive(&d),
        d.count("refused")
    );
}

fn is_alive(d: &Daemon) -> bool {
    std::fs::metadata(format!("/proc/{}", d.child.id())).is_ok()
        && status_field(d.child.id(), "VmRSS:") > 0
}

/// Case 3: 4 clients each sending 30 all-tiles compact 4K frames.
fn memory(bin: &str, extra: &[String]) {
    let d = Daemon::start(bin, &[], extra, None);
    // "Before they came": a daemon that has served a guest (its encoder
    // and conversion libraries are loaded), idle again.
    let warm = healthy_guest(d.addr, 10);
    assert!(warm.answered > 0, "warm-up: {}", warm.line());
    thread::sleep(Duration::from_secs(3));
    let idle_before = d.rss_kib();
    let peak = RssPeak::start(d.child.id());
    let (w, h) = (3840u32, 2160u32);
    let stride = w * 4;
    let a = vec![0x10u8; (stride * h) as usize];
    let b = vec![0x80u8; (stride * h) as usize];
    let layout = FrameLayout::new(WireFormat::Bgra, w, h, stride, a.len()).unwrap();
    let guest = {
        let addr = d.addr;
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(1));
            healthy_guest(addr, 150)
        })
    };
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    for c in 0..4 {
        let (addr, a, b, sizes) = (d.addr, a.clone(), b.clone(), sizes.clone());
        hs.push(thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&hello_bytes(
                ext_bits::COMPACT | ext_bits::LZ4 | ext_bits::ERROR_PTS,
            ))
            .unwrap();
            let mut r = s.try_clone().unwrap();
            let answers = thread::spawn(move || {
                let mut dec = Decoder::with_extensions(Limits::default());
                let (mut ok, mut err) = (0u32, 0u32);
                let mut first_err = None;
                loop {
                    match dec.read_from_ext(&mut r) {
                        Ok(Some(Decoded::Legacy(_, Message::FrameResponse(_)))) => ok += 1,
                        Ok(Some(Decoded::Ext(_, ExtMessage::ErrorPts(e)))) => {
                            err += 1;
                            first_err.get_or_insert(e.message);
                        }
                        Ok(Some(Decoded::Legacy(_, Message::Error(e)))) => {
                            err += 1;
                            first_err.get_or_insert(e.message);
                        }
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                    if ok + err == 31 {
                        break;
                    }
                }
                (ok, err, first_err)
            });
            let req = |pts: i64| FrameRequest {
                width: w,
                height: h,
                format: WireFormat::Bgra.fourcc(),
                stride,
                pts,
                duration: 33_333_333,
                ..Default::default()
            };
            hxfr::write::write_frame_request(&mut s, 1, &req(0), &[&a]).unwrap();
            let mut enc = CompactEncoder::new(64, 64, Compression::Always);
            let fa = Frame::from_wire(&layout, &a).unwrap();
            let fb = Frame::from_wire(&layout, &b).unwrap();
            for i in 1..=30u32 {
                let (prev, cur) = if i % 2 == 1 { (&fa, &fb) } else { (&fb, &fa) };
                match enc.encode(prev, cur, &req(i as i64), i - 1, 1) {
                    Delta::Compact(mut m) => {
                        if c == 0 && i == 1 {
                            sizes.lock().unwrap().push(m.wire_len);
                        }
                        if m.write_to(&mut s).is_err() {
                            break;
                        }
                    }
                    Delta::Full(r) => panic!("no compact frame: {r:?}"),
                }
            }
            let r = answers.join().unwrap();
            drop(s);
            r
        }));
    }
    let results: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let g = guest.join().unwrap();
    let peak_kib = peak.peak_kib();
    // Idle: wait for the daemon to settle after every client left.
    thread::sleep(Duration::from_secs(8));
    let idle_after = d.rss_kib();
    println!(
        "   idle after: RssAnon {}, RssFile {}, threads {}",
        mib(status_field(d.child.id(), "RssAnon:")),
        mib(status_field(d.child.id(), "RssFile:")),
        d.threads()
    );
    if std::env::var_os("HOSTILE_SMAPS").is_some() {
        let smaps =
            std::fs::read_to_string(format!("/proc/{}/smaps", d.child.id())).unwrap_or_default();
        let mut regions: Vec<(u64, String)> = Vec::new();
        let mut name = String::new();
        for l in smaps.lines() {
            if l.contains('-') && !l.starts_with(|c: char| c.is_ascii_uppercase()) {
                name = l.split_whitespace().nth(5).unwrap_or("[anon]").to_string();
            } else if let Some(v) = l.strip_prefix("Rss:") {
                let kib: u64 = v.split_whitespace().next().unwrap().parse().unwrap();
                regions.push((kib, name.clone()));
            }
        }
        regions.sort();
        for (k, n) in regions.iter().rev().take(12) {
            println!("     {k} KiB {n}");
        }
    }
    println!(
        "   compact frame on the wire: {} bytes (rebuilds {} bytes)",
        sizes.lock().unwrap().first().copied().unwrap_or(0),
        a.len()
    );
    for (i, (ok, err, e)) in results.iter().enumerate() {
        println!(
            "   attacker {i}: {ok} answered, {err} errors{}",
            e.as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    println!("   {}", g.line());
    println!(
        "   RSS: idle before {}, peak {}, idle after {} ({:.2}x before)",
        mib(idle_before),
        mib(peak_kib),
        mib(idle_after),
        idle_after as f64 / idle_before.max(1) as f64
    );
    if let Some(l) = d.lines("memory budget", 1).first() {
        println!("   daemon: {l}");
    }
}

/// Case 4: out of file descriptors.
fn fds(bin: &str, extra: &[String]) {
    let d = Daemon::start(bin, &[], extra, Some(32));
    let guest = {
        let addr = d.addr;
        thread::spawn(move || healthy_guest(addr, 150))
    };
    thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let answered_after: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let mut hs = Vec::new();
    let pic = nv12(320, 240, 0);
    for _ in 0..40 {
        let (addr, out, pic) = (d.addr, answered_after.clone(), pic.clone());
        hs.push(thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(addr) else {
                out.lock()
                    .unwrap()
                    .push((t0.elapsed(), "connect failed".into()));
                return;
            };
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let req = FrameRequest {
                width: 320,
                height: 240,
                format: WireFormat::Nv12.fourcc(),
                stride: 320,
                pts: 1,
                duration: 33_333_333,
                ..Default::default()
            };
            let _ = hxfr::write::write_frame_request(&mut s, 1, &req, &[&pic]);
            let mut dec = Decoder::default();
            let what = match dec.read_from(&mut s) {
                Ok(Some((_, Message::FrameResponse(_)))) => "encoded".to_string(),
                Ok(Some((_, Message::Error(e)))) => format!("ERROR {}: {}", e.code, e.message),
                Ok(Some((_, m))) => format!("{m:?}"),
                Ok(None) => "closed".into(),
                Err(e) => format!("read failed: {e}"),
            };
            out.lock().unwrap().push((t0.elapsed(), what));
            // Hold the connection a little, as a guest would.
            thread::sleep(Duration::from_secs(2));
        }));
    }
    for h in hs {
        let _ = h.join();
    }
    let g = guest.join().unwrap();
    let out = answered_after.lock().unwrap();
    let slowest = out.iter().map(|(d, _)| *d).max().unwrap_or_default();
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, w) in out.iter() {
        let k: String = w.chars().take(70).collect();
        *kinds.entry(k).or_default() += 1;
    }
    println!(
        "   40 clients: slowest answer after {:.1} s",
        slowest.as_secs_f64()
    );
    for (k, n) in kinds {
        println!("     {n} x {k}");
    }
    println!("   {}", g.line());
    println!(
        "   daemon log: {} 'accept failed' lines, {} CRITICAL lines, {} ERROR lines, {} 'encoding' lines, {} 'out of file descriptors' lines",
        d.count("accept failed"),
        d.count("CRITICAL"),
        d.count(" ERROR "),
        d.count(": encoding "),
        d.count("out of file descriptors")
    );
    for l in d.lines(" ERROR ", 2) {
        println!("     {l}");
    }
}

/// Case 5: can the operator keep a peer out?
fn access(bin: &str, extra: &[String]) {
    // TCP: allow only 127.0.0.2; the guest comes from 127.0.0.1.
    let restricted = ["--listen", "tcp:127.0.0.1:0,from=127.0.0.2"];
    let d = match Daemon::try_start(bin, &restricted, extra, None) {
        Ok(d) => d,
        Err(log) => {
            println!(
                "   this daemon has no access rules: {}",
                log.lines()
                    .find(|l| l.contains("error"))
                    .unwrap_or("(no error line)")
            );
            let d = Daemon::start(bin, &[], extra, None);
            let g = healthy_guest(d.addr, 30);
            println!("   any local peer is served: {}", g.line());
            return;
        }
    };
    // The second listener is the restricted one: wait for its line.
    let t = Instant::now();
    while d.count("listening on tcp:") < 2 && t.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(20));
    }
    let addr: SocketAddr = {
        let log = d.log.lock().unwrap();
        log.iter()
            .filter_map(|l| {
                l.split_once("listening on tcp:")
                    .map(|(_, a)| a.trim().to_string())
            })
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d.addr)
    };
    let g = healthy_guest(addr, 30);
    println!(
        "   denied peer (127.0.0.1 on a listener allowing 127.0.0.2): {}",
        g.line()
    );
}

/// Case 6: what must keep working.
fn keep(bin: &str, extra: &[String]) {
    let d = Daemon::start(bin, &[], extra, None);
    // A client that never reads its answers is cut off: noise frames at
    // 100 Mbit/s make answers large enough to fill the socket buffers.
    let mut s = TcpStream::connect(d.addr).unwrap();
    let cfg = hxfr::ConfigRequest {
        width: 640,
        height: 480,
        bitrate: 100_000_000,
        framerate_num: 30,
        framerate_den: 1,
        ..Default::default()
    };
    s.write_all(&Message::ConfigRequest(cfg).encode(1)).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..640 * 480 * 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let t0 = Instant::now();
    let mut cut = None;
    for i in 0..100_000 {
        let req = FrameRequest {
            width: 640,
            height: 480,
            format: WireFormat::Bgra.fourcc(),
            stride: 2560,
            pts: i,
            duration: 33_333_333,
            ..Default::default()
        };
        if hxfr::write::write_frame_request(&mut s, 1, &req, &[&noise]).is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    println!(
        "   never-reading client cut off after {}",
        cut.map(|d| format!("{:.0} s", d.as_secs_f64()))
            .unwrap_or("never (60 s)".into())
    );
    drop(s);
    thread::sleep(Duration::from_secs(2));
    let (fd0, th0, rss0) = (d.fds(), d.threads(), d.rss_kib());
    for _ in 0..2000 {
        if let Ok(mut s) = TcpStream::connect(d.addr) {
            let _ = s.write_all(&hello_bytes(ext_bits::ERROR_PTS));
        }
    }
    thread::sleep(Duration::from_secs(3));
    println!(
        "   2,000-connection churn: fds {} -> {}, threads {} -> {}, RSS {} -> {}",
        fd0,
        d.fds(),
        th0,
        d.threads(),
        mib(rss0),
        mib(d.rss_kib())
    );
}
