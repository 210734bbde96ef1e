//! What operators get from the daemon's log: per-module and per-connection
//! filters, JSON lines, journald entries, and rate-limited warnings.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hxfr::{Decoder, Message};
use serde_json::Value;

/// The lines of `log` that contain `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// Sends a keyframe request (logged at debug level) and waits for the
/// answer to a PING behind it, so the request has been handled.
fn keyframe_request(c: &mut Client, session: u16) {
    c.send(&Message::KeyframeRequest);
    c.ping(session);
}

#[test]
fn a_span_directive_selects_the_lines_of_one_connection() {
    // A bare level in the filter replaces --log-level (debug, set by the
    // fixture): info for everything, debug for connection #2 only.
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--log-filter",
        "info,[conn{conn=2}]=debug",
    ]);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::tcp(d.tcp())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        keyframe_request(c, i as u16 + 1);
    }
    d.wait_log("#3: connected");
    let log = d.log();
    let debug_lines = lines_with(&log, "keyframe requested");
    assert_eq!(debug_lines.len(), 1, "{log}");
    assert!(debug_lines[0].contains(" DEBUG tcp:127.0.0.1:"), "{log}");
    assert!(debug_lines[0].contains("#2: keyframe requested"), "{log}");
    // The other connections' info lines are still there.
    for n in 1..=3 {
        assert_eq!(
            lines_with(&log, &format!("#{n}: connected")).len(),
            1,
            "{log}"
        );
    }
    assert!(lines_with(&log, " DEBUG ").len() == 1, "{log}");
}

#[test]
fn a_target_directive_selects_one_module() {
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--log-filter",
        "info,vsockenc_host::client=debug,vsockenc_host::stats=off",
    ]);
    let mut c = Client::tcp(d.tcp());
    keyframe_request(&mut c, 1);
    d.wait_log("#1: keyframe requested");
    // The fixture asks for a stats line every second: none may come.
    std::thread::sleep(Duration::from_millis(2500));
    c.ping(2);
    drop(c);
    d.wait_log("#1: disconnected;");
    let log = d.log();
    assert!(lines_with(&log, ": stats: ").is_empty(), "{log}");
    assert_eq!(lines_with(&log, "#1: connected").len(), 1, "{log}");
}

#[test]
fn without_a_filter_the_fixture_sees_the_stats_lines() {
    // The counterpart of the test above: the same daemon without the
    // stats=off directive logs a stats line every second.
    let d = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut c = Client::tcp(d.tcp());
    c.ping(1);
    d.wait_log("#1: stats: ");
}

#[test]
fn a_bad_filter_is_a_usage_error() {
    let (status, out) = run_to_exit(&["--log-filter", "[conn{conn=1}=debug"]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("--log-filter"), "{out}");
    assert!(out.contains("directives"), "{out}");
}

#[test]
fn help_documents_the_log_options() {
    let (status, out) = run_to_exit(&["--help"]);
    assert!(status.success());
    for needle in [
        "--log-filter",
        "--log-format",
        "VSOCKENC_HOST_LOG",
        "[conn{FIELD=VALUE}]=LEVEL",
        "[conn{conn=7}]=debug",
        "journald",
        "json",
        "vsockenc_host::client",
    ] {
        assert!(out.contains(needle), "--help lacks {needle:?}:\n{out}");
    }
}

/// The daemon with `--log-format json`: every line of its stderr parsed.
struct JsonDaemon {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    /// Lines that are not JSON objects (there must be none).
    garbage: Arc<Mutex<Vec<String>>>,
}

impl JsonDaemon {
    fn start(args: &[&str]) -> JsonDaemon {
        let mut child = Command::new("timeout")
            .args(["-s", "KILL", "110"])
            .arg(BIN)
            .args(["--log-format", "json", "--stats-interval", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vsockenc-host");
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let garbage: Arc<Mutex<Vec<String>>> = Arc::default();
        let (l, g) = (lines.clone(), garbage.clone());
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => l.lock().unwrap().push(v),
                    _ => g.lock().unwrap().push(line),
                }
            }
        });
        JsonDaemon {
            child,
            lines,
            garbage,
        }
    }

    /// Waits for the first line whose message contains `needle`.
    fn wait_message(&self, needle: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["message"].as_str().is_some_and(|m| m.contains(needle)))
            {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no JSON line with {needle:?}: {:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What `jq 'select(.span.conn == N)'` selects.
    fn of_connection(&self, n: u64) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["span"]["conn"].as_u64() == Some(n))
            .cloned()
            .collect()
    }
}

impl Drop for JsonDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(s: &mut (impl std::io::Read + std::io::Write), session: u16) {
    s.write_all(&Message::Ping.encode(session)).unwrap();
    let (h, m) = Decoder::default().read_from(s).unwrap().unwrap();
    assert_eq!((h.session_id, m), (session, Message::Pong));
}

fn is_utc_millis(ts: &str) -> bool {
    // 2026-01-02T03:04:05.678Z
    ts.len() == 24
        && ts.ends_with('Z')
        && ts.as_bytes()[10] == b'T'
        && ts.as_bytes()[19] == b'.'
        && ts[20..23].bytes().all(|b| b.is_ascii_digit())
}

#[test]
fn json_lines_carry_the_connection_span() {
    let dir = scratch("json");
    let sock = dir.join("host.sock");
    let unix = format!("unix:{}", sock.display());
    let d = JsonDaemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--listen",
        &unix,
        "--encoder",
        "x264enc",
    ]);
    let listening = d.wait_message("listening on tcp:");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "vsockenc_host");
    assert!(listening.get("span").is_none(), "{listening}");
    assert!(
        is_utc_millis(listening["timestamp"].as_str().unwrap()),
        "{listening}"
    );
    let tcp_listener = listening["message"]
        .as_str()
        .unwrap()
        .trim_start_matches("listening on ")
        .to_string();
    d.wait_message(&format!("listening on {unix}"));

    let mut tcp = TcpStream::connect(tcp_listener.trim_start_matches("tcp:")).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    ping(&mut tcp, 1);
    let mut local = UnixStream::connect(&sock).unwrap();
    local.set_read_timeout(Some(WAIT)).unwrap();
    ping(&mut local, 2);
    d.wait_message("#2: connected");
    d.wait_message("#1: stats: ");
    drop(tcp);
    d.wait_message("#1: disconnected;");

    let me = tcp_me(&tcp_listener, &d);
    let first = d.of_connection(1);
    let names: Vec<&str> = first
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    // Every line about the connection, whichever thread wrote it (accept
    // loop, client thread, stats thread), is in its span.
    for needle in ["#1: connected", "#1: stats: ", "#1: disconnected;"] {
        assert!(names.iter().any(|m| m.contains(needle)), "{names:#?}");
    }
    for v in &first {
        let span = &v["span"];
        assert_eq!(span["name"], "conn", "{v}");
        assert_eq!(span["listener"], tcp_listener.as_str(), "{v}");
        assert_eq!(span["peer"], me.as_str(), "{v}");
        assert_eq!(span["client"], format!("tcp:{me}#1"), "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("tcp:{me}#1: ")),
            "{v}"
        );
        assert!(
            span.get("uid").is_none() && span.get("cid").is_none(),
            "{v}"
        );
    }
    let second = d.of_connection(2);
    assert!(!second.is_empty());
    for v in &second {
        let span = &v["span"];
        assert_eq!(span["listener"], unix.as_str(), "{v}");
        assert_eq!(span["client"], format!("{unix}#2"), "{v}");
        let uid = nix::unistd::getuid().as_raw() as u64;
        assert_eq!(span["uid"].as_u64(), Some(uid), "{v}");
        assert_eq!(span["pid"].as_u64(), Some(std::process::id() as u64), "{v}");
        assert!(span["peer"].as_str().unwrap().starts_with("uid="), "{v}");
    }
    assert!(
        d.garbage.lock().unwrap().is_empty(),
        "non-JSON lines: {:?}",
        d.garbage.lock().unwrap()
    );
}

/// Our own address as the daemon saw it: the peer of its connection #1.
fn tcp_me(listener: &str, d: &JsonDaemon) -> String {
    let connected = d.wait_message("#1: connected");
    let m = connected["message"].as_str().unwrap();
    let me = m
        .trim_start_matches("tcp:")
        .trim_end_matches("#1: connected")
        .to_string();
    assert!(me.starts_with("127.0.0.1:"), "{m} (listener {listener})");
    me
}

/// One journal entry in the native protocol: `KEY=value` lines, or `KEY`,
/// a little-endian u64 length and the bytes for values with newlines.
fn parse_journal_entry(mut b: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n').expect("field ends");
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            b = &b[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &b[nl + 9..nl + 9 + len];
            fields.push((key, String::from_utf8_lossy(value).into_owned()));
            b = &b[nl + 9 + len + 1..];
        }
    }
    fields
}

fn field<'a>(entry: &'a [(String, String)], key: &str) -> Option<&'a str> {
    entry
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A stand-in for journald: the daemon runs in a private mount namespace
/// (as root, with util-linux's `unshare`) where our datagram socket is
/// mounted at /run/systemd/journal/socket, and its stderr is the stream
/// `JOURNAL_STREAM` names, as under systemd.
#[test]
fn under_systemd_lines_go_to_journald_with_the_span_fields() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a fake journald socket in a private mount namespace: run it as root"
    );
    let dir = scratch("journal");
    let journal_dir = dir.join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let journal = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    journal.set_read_timeout(Some(WAIT)).unwrap();
    let stderr_path = dir.join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let st = nix::sys::stat::fstat(&stderr).unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         mount --bind '{}' /run/systemd/journal && \
         exec timeout -s KILL 60 '{BIN}' --listen tcp:127.0.0.1:0 --encoder x264enc --log-level debug",
        journal_dir.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("unshare");
    let _kill = KillOnDrop(&mut child);

    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    let next = |entries: &mut Vec<Vec<(String, String)>>, needle: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = entries
                .iter()
                .find(|e| field(e, "MESSAGE").is_some_and(|m| m.contains(needle)))
            {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no journal entry with {needle:?}; stderr: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
            let mut buf = vec![0u8; 64 << 10];
            match journal.recv(&mut buf) {
                Ok(n) if n > 0 => entries.push(parse_journal_entry(&buf[..n])),
                Ok(_) => {}
                Err(e) => panic!(
                    "journal socket: {e}; stderr: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                ),
            }
        }
    };
    let listening = next(&mut entries, "listening on tcp:");
    assert_eq!(field(&listening, "PRIORITY"), Some("6"), "{listening:?}");
    assert_eq!(
        field(&listening, "SYSLOG_IDENTIFIER"),
        Some("vsockenc-host")
    );
    assert_eq!(field(&listening, "TARGET"), Some("vsockenc_host"));
    let addr = field(&listening, "MESSAGE")
        .unwrap()
        .trim_start_matches("listening on tcp:")
        .to_string();

    let mut c = Client::tcp(addr.parse().unwrap());
    keyframe_request(&mut c, 1);
    let connected = next(&mut entries, "#1: connected");
    let debug = next(&mut entries, "#1: keyframe requested");
    assert_eq!(field(&debug, "PRIORITY"), Some("7"), "{debug:?}");
    for e in [&connected, &debug] {
        assert_eq!(field(e, "SPAN_NAME"), Some("conn"), "{e:?}");
        assert_eq!(field(e, "VSOCKENC_CONN"), Some("1"), "{e:?}");
        assert_eq!(
            field(e, "VSOCKENC_LISTENER"),
            Some(format!("tcp:{addr}").as_str())
        );
        let client = field(e, "VSOCKENC_CLIENT").unwrap();
        assert!(client.starts_with("tcp:127.0.0.1:") && client.ends_with("#1"));
        let peer = field(e, "VSOCKENC_PEER").unwrap();
        assert_eq!(client, format!("tcp:{peer}#1"));
    }
    // Nothing went to stderr: journald has every line.
    let written = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(written.is_empty(), "{written}");
}

#[test]
fn journal_stream_naming_another_file_keeps_the_plain_lines() {
    let dir = scratch("notjournal");
    let other = std::fs::File::create(dir.join("other")).unwrap();
    let st = nix::sys::stat::fstat(&other).unwrap();
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(BIN)
        .args(["--listen", "tcp:127.0.0.1:0", "--encoder", "nosuchenc"])
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(" ERROR encoder \"nosuchenc\" cannot be used: not installed"),
        "{err}"
    );
}

#[test]
fn journald_out_of_reach_falls_back_to_stderr_with_a_warning() {
    // No journald listens on this machine (or in CI): asking for it anyway
    // still gives the lines, on stderr, after saying why.
    if Path::new("/run/systemd/journal/socket").exists() {
        panic!("a journald socket exists here: this test needs a machine without journald");
    }
    let (status, out) = run_to_exit(&["--log-format", "journald", "--encoder", "nosuchenc"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains(" WARN  cannot log to journald ("), "{out}");
    assert!(out.contains("writing lines to stderr instead"), "{out}");
    assert!(out.contains(" ERROR encoder \"nosuchenc\""), "{out}");
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn warnings_about_guest_input_are_rate_limited_across_guests() {
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--log-filter",
        "info",
    ]);
    let bad = |c: &mut Client, pts: i64| {
        let f = test_frame(Fmt::Bgrx, 16, 16, 64, 0, 1);
        let r = hxfr::FrameRequest {
            width: 0,
            ..f.request(pts, false)
        };
        c.send_frame(&r, &f.pixels);
        assert_eq!(c.recv_error().code, hxfr::error_code::INVALID_MESSAGE);
    };
    // Six guests, 20 warnings each, 10 of them within their own limit
    // (per connection): the first five use up the daemon-wide budget (50
    // per 10 s), all 20 of the sixth are held back daemon-wide.
    let mut first = None;
    for _ in 0..6 {
        let mut c = Client::tcp(d.tcp());
        for pts in 0..20 {
            bad(&mut c, pts);
            // The window opened before the first answer came.
            first.get_or_insert_with(Instant::now);
        }
    }
    let first = first.unwrap();
    assert!(
        first.elapsed() < Duration::from_secs(8),
        "too slow to test a 10 s window: {:?}",
        first.elapsed()
    );
    let rejected = |log: &str| lines_with(log, "outside 1..8192").len();
    d.wait_log("#6: disconnected;");
    assert_eq!(rejected(&d.log()), 50, "{}", d.log());
    // After the window, the next warning says how many were held back.
    std::thread::sleep(Duration::from_millis(10_500).saturating_sub(first.elapsed()));
    let mut c = Client::tcp(d.tcp());
    bad(&mut c, 99);
    c.ping(1);
    d.wait_log("similar lines suppressed in the last");
    let log = d.log();
    let last = lines_with(&log, "similar lines suppressed");
    assert_eq!(last.len(), 1, "{log}");
    assert!(last[0].contains(" WARN  tcp:127.0.0.1:"), "{log}");
    assert!(last[0].contains("#7: ERROR -1: frame pts=99"), "{log}");
    assert!(
        last[0].contains("[20 similar lines suppressed in the last"),
        "{log}"
    );
}

#[test]
fn off_and_a_span_directive_show_one_guest_only() {
    // The operator's "only guest #2, everything about it" command.
    let dir = scratch("oneguest");
    let sock = dir.join("host.sock");
    let mut child = Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(BIN)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .args(["--encoder", "x264enc", "--stats-interval", "1"])
        .args(["--log-filter", "off,[conn{conn=2}]=trace"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let _kill = KillOnDrop(&mut child);
    // Nothing says when it listens (everything but guest #2 is off).
    let deadline = Instant::now() + WAIT;
    let mut clients = Vec::new();
    while clients.is_empty() {
        match UnixStream::connect(&sock) {
            Ok(s) => clients.push(s),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("daemon never listened on {}: {e}", sock.display()),
        }
    }
    clients.push(UnixStream::connect(&sock).unwrap());
    clients.push(UnixStream::connect(&sock).unwrap());
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(WAIT)).unwrap();
        ping(c, i as u16);
    }
    // Long enough for a stats line of #2.
    std::thread::sleep(Duration::from_millis(1500));
    drop(clients);
    std::thread::sleep(Duration::from_millis(500));
    let pid = pid_under_timeout(_kill.0.id());
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let log = reader.join().unwrap();
    let name = format!("unix:{}#2: ", sock.display());
    for needle in ["connected", "PING", "stats: ", "disconnected; "] {
        assert!(log.contains(&format!("{name}{needle}")), "{needle}:\n{log}");
    }
    for line in log.lines() {
        assert!(line.contains(&name), "a line not about guest #2:\n{log}");
    }
}

/// The daemon's pid: the only child of `timeout`.
fn pid_under_timeout(timeout_pid: u32) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("pgrep")
            .args(["-P", &timeout_pid.to_string()])
            .output()
            .unwrap();
        if let Some(pid) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
        {
            return pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no daemon under timeout");
        std::thread::sleep(Duration::from_millis(20));
    }
}
