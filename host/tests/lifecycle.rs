//! Startup, listeners, the stale-socket rules, limits and graceful shutdown.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;

use common::*;
use hxfr::{error_code, Message};

fn unix_arg(p: &Path) -> String {
    format!("unix:{}", p.display())
}

#[test]
fn help_documents_every_flag_and_address_form() {
    let (status, out) = run_to_exit(&["--help"]);
    assert!(status.success());
    for needle in [
        "--listen",
        "--encoder",
        "--bitrate",
        "--max-clients",
        "--max-frame-bytes",
        "--max-in-flight",
        "--socket-mode",
        "--stats-interval",
        "--log-level",
        "--write-timeout",
        "--encode-timeout",
        "--shutdown-timeout",
        "--idle-timeout",
        "--max-per-peer",
        "--pixel-rate",
        "--memory-budget",
        "--handshake-timeout",
        "--message-timeout",
        "--min-receive-rate",
        "--metrics",
        "cid=N",
        "uid=U, gid=G",
        "from=ADDR[/PREFIX]",
        "max-per-peer=N",
        "pixel-rate=N",
        "ERROR -10",
        "unix:/path",
        "tcp:HOST:PORT",
        "vsock:PORT",
        "vsock:CID:PORT",
        "<uds_path>_P",
        "unix:<uds_path>_5000",
        "Firecracker",
        "cloud-hypervisor",
        "vhost-device-vsock",
        "vsock:5000",
        "tcp:127.0.0.1:15937",
        "vtenc_h264_hw, nvh264enc",
    ] {
        assert!(out.contains(needle), "--help lacks {needle:?}:\n{out}");
    }
    let (status, out) = run_to_exit(&["--listen", "udp:1:2"]);
    assert_eq!(status.code(), Some(2), "{out}");
}

#[test]
fn tcp_and_unix_listeners_serve_at_once_and_report_stats() {
    let dir = scratch("both");
    let sock = dir.join("host.sock");
    let daemon = Daemon::start(&[
        "--listen",
        &unix_arg(&sock),
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--socket-mode",
        "0660",
    ]);
    assert!(daemon.log().contains("encoder: x264enc"));
    assert_eq!(daemon.listening[0], unix_arg(&sock));
    assert!(daemon.listening[1].starts_with("tcp:127.0.0.1:"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660);
    let mut u = Client::unix(&sock);
    let mut t = Client::tcp(daemon.tcp());
    u.ping(0x1234);
    t.ping(0xBEEF);
    let f = test_frame(Fmt::Bgrx, 48, 32, 192, 0, 1);
    assert_eq!(stream_frames(&mut u, &[(f, 99, false)], 1)[0].pts, 99);
    // Every line about a client names its peer; stats name it too.
    daemon.wait_log(&format!(
        "unix:{}#1: stats: frames in 1 out 1",
        sock.display()
    ));
    daemon.wait_log("tcp:127.0.0.1:");
    drop(u);
    daemon.wait_log(&format!(
        "unix:{}#1: disconnected; frames in 1 out 1",
        sock.display()
    ));
}

#[test]
fn a_stale_socket_from_a_killed_daemon_is_replaced() {
    let dir = scratch("stale");
    let sock = dir.join("host.sock");
    let first = Daemon::start(&["--listen", &unix_arg(&sock), "--encoder", "x264enc"]);
    Client::unix(&sock).ping(1);
    first.signal(libc::SIGKILL);
    let mut first = first;
    first.wait_exit();
    assert!(sock.exists(), "SIGKILL leaves the socket file behind");
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_err());

    let second = Daemon::start(&["--listen", &unix_arg(&sock), "--encoder", "x264enc"]);
    assert!(
        second.log().contains("stale socket file"),
        "{}",
        second.log()
    );
    assert!(second.log().contains("removed stale socket file"));
    Client::unix(&sock).ping(2);
}

#[test]
fn a_stale_socket_without_a_lock_file_is_replaced_but_not_other_files() {
    let dir = scratch("stale2");
    let sock = dir.join("host.sock");
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let d = Daemon::start(&["--listen", &unix_arg(&sock), "--encoder", "x264enc"]);
    Client::unix(&sock).ping(3);
    drop(d);

    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    let (status, out) = run_to_exit(&["--listen", &unix_arg(&file), "--encoder", "x264enc"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("is not a socket; refusing to replace it"),
        "{out}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}

#[test]
fn a_live_duplicate_exits_with_a_clear_message() {
    let dir = scratch("dup");
    let sock = dir.join("host.sock");
    let first = Daemon::start(&["--listen", &unix_arg(&sock), "--encoder", "x264enc"]);
    let (status, out) = run_to_exit(&["--listen", &unix_arg(&sock), "--encoder", "x264enc"]);
    assert_eq!(status.code(), Some(1), "{out}");
    let msg = format!(
        "another vsockenc-host is already listening on unix:{}",
        sock.display()
    );
    assert!(out.contains(&msg), "{out}");
    // The first daemon is untouched.
    Client::unix(&sock).ping(4);
    drop(first);

    // A live listener that holds no lock (another program, a legacy host).
    let other = dir.join("other.sock");
    let _live = UnixListener::bind(&other).unwrap();
    let (status, out) = run_to_exit(&["--listen", &unix_arg(&other), "--encoder", "x264enc"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("already listening on unix:"), "{out}");
    assert!(other.exists());
}

#[test]
fn bind_failures_say_what_to_do() {
    let (status, out) = run_to_exit(&["--listen", "vsock:4000000000:5000", "--encoder", "x264enc"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("cannot bind vsock port 5000"), "{out}");
    assert!(out.contains("is the vhost_vsock module loaded?"), "{out}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let arg = format!("tcp:127.0.0.1:{port}");
    let (status, out) = run_to_exit(&["--listen", &arg, "--encoder", "x264enc"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("cannot bind {arg}")), "{out}");

    let (status, out) = run_to_exit(&["--listen", "tcp:127.0.0.1:0", "--encoder", "nosuchenc"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("encoder \"nosuchenc\" cannot be used: not installed"),
        "{out}"
    );
}

#[test]
fn non_loopback_tcp_is_warned_about() {
    let d = Daemon::start(&["--listen", "tcp:0.0.0.0:0", "--encoder", "x264enc"]);
    assert!(d.log().contains("is NOT a loopback address"), "{}", d.log());
}

#[test]
fn clients_over_the_limit_are_told_and_closed() {
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--max-clients",
        "1",
    ]);
    let f = || test_frame(Fmt::Bgrx, 48, 32, 192, 0, 1);
    // A slot is taken by the first frame, not by connecting.
    let mut first = Client::tcp(d.tcp());
    let mut second = Client::tcp(d.tcp());
    second.ping(5);
    assert_eq!(stream_frames(&mut first, &[(f(), 1, false)], 1)[0].pts, 1);
    second.ping(6);
    let frame = f();
    second.send_frame(&frame.request(2, false), &frame.pixels);
    let e = second.recv_error();
    assert_eq!(e.code, error_code::REFUSED, "not served, not failed");
    assert!(e.message.contains("maximum of 1 clients"), "{e:?}");
    assert!(second.recv_or_closed().is_none());
    first.ping(2);
    drop(first);
    d.wait_log("disconnected; frames in 1 out 1");
    let mut third = Client::tcp(d.tcp());
    assert_eq!(stream_frames(&mut third, &[(f(), 3, false)], 1)[0].pts, 3);
}

#[test]
fn sigterm_finishes_in_flight_frames_and_removes_the_socket() {
    let dir = scratch("term");
    let sock = dir.join("host.sock");
    let lock = dir.join("host.sock.lock");
    let mut d = Daemon::start(&["--listen", &unix_arg(&sock), "--encoder", "x264enc"]);
    assert!(lock.exists());
    let mut c = Client::unix(&sock);
    c.ping(1);
    let frames: Vec<_> = (0..8)
        .map(|t| {
            (
                test_frame(Fmt::Bgrx, 640, 480, 2560, t, 5),
                1000 + t as i64,
                false,
            )
        })
        .collect();
    for (f, pts, _) in &frames {
        c.send_frame(&f.request(*pts, false), &f.pixels);
    }
    d.signal(libc::SIGTERM);
    // Every frame sent before the signal is answered, in order, then the
    // connection closes.
    for (_, pts, _) in &frames {
        match c.recv().1 {
            Message::FrameResponse(r) => assert_eq!(r.pts, *pts),
            other => panic!("expected the response of pts={pts}, got {other:?}"),
        }
    }
    assert!(c.recv_or_closed().is_none());
    let status = d.wait_exit();
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(!sock.exists(), "socket file removed");
    assert!(!lock.exists(), "lock file removed");
    assert!(d.log().contains("SIGTERM: shutting down"));
    assert!(d
        .log()
        .contains(&format!("removed socket file {}", sock.display())));
    // A new daemon starts on the same path at once.
    let _again = Daemon::start(&["--listen", &unix_arg(&sock), "--encoder", "x264enc"]);
    Client::unix(&sock).ping(2);
}

#[test]
fn silent_guests_are_dropped_after_the_idle_timeout() {
    let d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--idle-timeout",
        "2",
    ]);
    let mut silent = Client::tcp(d.tcp());
    let mut pinging = Client::tcp(d.tcp());
    let start = std::time::Instant::now();
    // recv_or_closed panics on a timeout: this ends only by the close.
    let closer = std::thread::spawn(move || {
        assert!(silent.recv_or_closed().is_none());
    });
    while start.elapsed() < std::time::Duration::from_secs(5) {
        pinging.ping(1);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    closer.join().unwrap();
    d.wait_log("sent nothing for 2s (--idle-timeout); closing the connection");
    pinging.ping(2);
}
