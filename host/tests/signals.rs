//! A second SIGTERM ends a shutdown that is waiting for guests.

mod common;

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hxfr::FrameRequest;
use nix::sys::signal::Signal;

#[test]
fn a_second_signal_exits_at_once() {
    // A guest that sends big frames and never reads its responses holds
    // the writer (--write-timeout 60) and so the shutdown (60 s).
    let mut d = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--max-in-flight",
        "2",
        "--write-timeout",
        "60",
        "--shutdown-timeout",
        "60",
        "--bitrate",
        "100000",
    ]);
    let s = TcpStream::connect(d.tcp()).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(90))).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (mut w, sent) = (s.try_clone().unwrap(), sent.clone());
        std::thread::spawn(move || {
            // Noise barely compresses: each response is hundreds of KB.
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let noise: Vec<u8> = (0..640 * 480 * 4)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let req = FrameRequest {
                resource_id: 0,
                width: 640,
                height: 480,
                format: hxfr::WireFormat::Bgra.fourcc(),
                stride: 2560,
                pts: 0,
                duration: 0,
                force_keyframe: false,
            };
            for pts in 0..2000 {
                let r = FrameRequest { pts, ..req };
                if hxfr::write::write_frame_request(&mut w, 1, &r, &[&noise]).is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Wait until the daemon stopped reading: its writer is stuck.
    let deadline = Instant::now() + WAIT;
    let mut last = (0, Instant::now());
    loop {
        let now = sent.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if now > 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon kept reading");
        std::thread::sleep(Duration::from_millis(50));
    }

    d.signal(Signal::SIGTERM as i32);
    d.wait_log("SIGTERM: shutting down");
    std::thread::sleep(Duration::from_secs(2));
    d.assert_alive();
    let t = Instant::now();
    d.signal(Signal::SIGTERM as i32);
    let status = d.wait_exit();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{:?}\n{}",
        t.elapsed(),
        d.log()
    );
    assert_eq!(status.code(), Some(130), "{}", d.log());
    assert!(d.log().contains("second SIGTERM: exiting at once"));
    drop(s);
    sender.join().unwrap();
}
