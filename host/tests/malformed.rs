//! A guest is untrusted: malformed and hostile input gets ERRORs or a closed
//! connection, never hurts the daemon or another guest's stream.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use hxfr::{error_code, msg_type, FrameRequest, Header, Message};

fn header(t: u8, flags: u8, payload: u32) -> Vec<u8> {
    Header::new(t, flags, 1, payload).to_bytes().to_vec()
}

fn valid_request() -> FrameRequest {
    FrameRequest {
        resource_id: 0,
        width: 16,
        height: 16,
        format: hxfr::WireFormat::Bgra.fourcc(),
        stride: 64,
        pts: 77,
        duration: 0,
        force_keyframe: false,
    }
}

/// Sends a frame request with the given fields and pixel count; expects
/// an ERROR with `code` whose text contains `why`, then a working PING.
fn expect_frame_error(c: &mut Client, req: FrameRequest, pixels: usize, code: i32, why: &str) {
    c.send_frame(&req, &vec![0x80; pixels]);
    let e = c.recv_error();
    assert_eq!(e.code, code, "{e:?}");
    assert!(
        e.message.contains(why),
        "{:?} should say {why:?}",
        e.message
    );
    c.ping(5);
}

#[test]
fn hand_made_malformed_messages_get_errors_and_framing_survives() {
    let daemon = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--max-frame-bytes",
        "1000000",
    ]);
    let addr = daemon.tcp();
    let healthy = Healthy::start(addr);

    // Invalid fields of a FRAME_REQUEST, all on one connection.
    let mut c = Client::tcp(addr);
    let r = valid_request();
    let inv = error_code::INVALID_MESSAGE;
    expect_frame_error(
        &mut c,
        FrameRequest { width: 0, ..r },
        1024,
        inv,
        "outside 1..8192",
    );
    expect_frame_error(
        &mut c,
        FrameRequest { height: 9000, ..r },
        1024,
        inv,
        "outside 1..8192",
    );
    expect_frame_error(
        &mut c,
        FrameRequest { stride: 60, ..r },
        1024,
        inv,
        "stride 60",
    );
    expect_frame_error(
        &mut c,
        FrameRequest {
            format: 0x1234_5678,
            ..r
        },
        1024,
        inv,
        "unknown pixel format",
    );
    expect_frame_error(&mut c, r, 1000, inv, "shorter than the 1024 bytes");
    expect_frame_error(
        &mut c,
        FrameRequest {
            format: hxfr::WireFormat::Nv12.fourcc(),
            stride: 16,
            ..r
        },
        300,
        inv,
        "384 bytes",
    );
    // A virtio-gpu resource instead of pixels.
    c.send_frame(
        &FrameRequest {
            resource_id: 9,
            ..r
        },
        &[],
    );
    let e = c.recv_error();
    assert_eq!(e.code, error_code::RESOURCE_NOT_FOUND);
    assert!(e.message.contains("cannot read guest GPU memory"), "{e:?}");
    assert!(e.message.contains("resource_id 0"), "{e:?}");
    // Neither pixels nor a resource.
    c.send_raw(&valid_request().encode_prefix(1, None));
    assert!(c.recv_error().message.contains("neither pixels"));
    // Payloads shorter than the fixed part: skipped, framing intact.
    let mut m = header(msg_type::FRAME_REQUEST, 1, 10);
    m.extend([0u8; 10]);
    c.send_raw(&m);
    assert!(c.recv_error().message.contains("below the 44 bytes"));
    let mut m = header(msg_type::CONFIG_REQ, 0, 3);
    m.extend([1u8; 3]);
    c.send_raw(&m);
    assert!(c.recv_error().message.contains("CONFIG_REQ"));
    c.ping(6);
    // A frame above --max-frame-bytes is refused before it is buffered and
    // its bytes are skipped.
    let big = 1_100_000usize;
    let req = FrameRequest {
        width: 500,
        height: 550,
        stride: 2000,
        ..r
    };
    c.send_frame(&req, &vec![0u8; big]);
    let e = c.recv_error();
    assert!(e.message.contains("exceeds limit"), "{e:?}");
    c.ping(7);
    // Unknown and out-of-scope types are skipped silently.
    let mut m = header(0x77, 0, 100);
    m.extend([0xAB; 100]);
    m.extend(header(msg_type::ENABLE_SCANOUT, 0, 8));
    m.extend([0u8; 8]);
    m.extend(header(msg_type::PONG, 0, 0));
    m.extend(header(msg_type::FRAME_RESPONSE, 0, 24));
    m.extend([0u8; 24]);
    c.send_raw(&m);
    c.ping(8);
    // The same connection still encodes.
    let f = test_frame(Fmt::Bgrx, 32, 32, 128, 0, 1);
    let resp = stream_frames(&mut c, &[(f, 1234, false)], 1);
    assert_eq!(resp[0].pts, 1234);
    assert!(resp[0].is_keyframe);

    // A huge payload_size is answered without allocating; the guest then
    // goes away.
    let mut c2 = Client::tcp(addr);
    c2.send_raw(&header(msg_type::FRAME_REQUEST, 1, 0xFFFF_FFF0));
    assert!(c2.recv_error().message.contains("exceeds limit"));
    drop(c2);
    let mut c3 = Client::tcp(addr);
    c3.send_raw(&header(0x42, 0, 0xFFFF_FFF0));
    assert!(c3.recv_error().message.contains("exceeds limit"));
    drop(c3);

    // Bad magic closes that connection only (after an ERROR saying why).
    let mut c4 = Client::tcp(addr);
    c4.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // recv_or_closed panics on a timeout: the loop ends only by a close.
    while let Some((_, msg)) = c4.recv_or_closed() {
        match msg {
            Message::Error(e) => assert!(e.message.contains("bad magic"), "{e:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    // Truncated messages, then close.
    for cut in [5usize, 12, 30, 56, 300] {
        let f = test_frame(Fmt::Bgrx, 16, 16, 64, 0, 1);
        let mut bytes = f
            .request(1, false)
            .encode_prefix(1, Some(f.pixels.len()))
            .to_vec();
        bytes.extend(&f.pixels);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&bytes[..cut]).unwrap();
        drop(s);
    }

    // A guest sending nothing but garbage cannot flood the log with warnings.
    let mut noisy = Client::tcp(addr);
    for _ in 0..25 {
        noisy.send_frame(&FrameRequest { width: 0, ..r }, &[0u8; 64]);
        assert_eq!(noisy.recv_error().code, inv);
    }
    noisy.ping(9);
    // 10 warnings a minute per connection: the first connection wrote its
    // first two such lines, the noisy one ten; the rest went to debug.
    let warned = |log: &str| {
        log.lines()
            .filter(|l| l.contains(" WARN ") && l.contains("outside 1..8192"))
            .count()
    };
    daemon.wait_log_count("outside 1..8192", 27);
    assert_eq!(warned(&daemon.log()), 12, "{}", daemon.log());

    c.ping(10);
    let n = healthy.finish();
    assert!(n >= 10);
    let mut daemon = daemon;
    daemon.assert_alive();
    let mut fresh = Client::tcp(addr);
    fresh.ping(11);
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn fuzzed_garbage_never_disturbs_a_healthy_client() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let addr = daemon.tcp();
    let healthy = Healthy::start(addr);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conns = 0;
    while conns < 150 && Instant::now() < deadline {
        conns += 1;
        let mut bytes = Vec::new();
        for _ in 0..1 + rng.below(6) {
            match rng.below(4) {
                // Pure noise.
                0 => bytes.extend((0..rng.below(300)).map(|_| rng.next() as u8)),
                // A valid header with random type, flags and a plausible size,
                // then random payload of that size.
                1 | 2 => {
                    let t = [
                        0x01, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11, 0x20, 0x30, 0xFF, 0x99,
                    ][rng.below(11) as usize];
                    let size = rng.below(400) as u32;
                    bytes.extend(Header::new(t, rng.next() as u8, 1, size).to_bytes());
                    bytes.extend((0..size).map(|_| rng.next() as u8));
                }
                // A frame request with random fields and some pixels.
                _ => {
                    let req = FrameRequest {
                        resource_id: if rng.below(4) == 0 {
                            rng.next() as u32
                        } else {
                            0
                        },
                        width: rng.below(80) as u32,
                        height: rng.below(80) as u32,
                        format: [0x3432_5241, 0x3432_4241, 0x3231_564E, rng.next() as u32]
                            [rng.below(4) as usize],
                        stride: rng.below(400) as u32,
                        pts: rng.next() as i64,
                        duration: rng.next() as i64,
                        force_keyframe: rng.below(2) == 0,
                    };
                    let n = rng.below(30_000) as usize;
                    bytes.extend(req.encode_prefix(1, Some(n)));
                    bytes.extend((0..n).map(|_| rng.next() as u8));
                }
            }
        }
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&bytes);
        if rng.below(2) == 0 {
            // Half close, then read what the daemon says until it closes.
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    let n = healthy.finish();
    eprintln!("{conns} fuzz connections; healthy client streamed {n} frames");
    let mut daemon = daemon;
    daemon.assert_alive();
    Client::tcp(addr).ping(12);
}

#[test]
fn a_guest_vanishing_mid_encode_leaves_the_daemon_healthy() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let addr = daemon.tcp();
    let healthy = Healthy::start(addr);
    for round in 0..5 {
        let mut c = Client::tcp(addr);
        for t in 0..8 {
            let f = test_frame(Fmt::Bgrx, 640, 480, 2560, t, round);
            c.send_frame(&f.request(t as i64, false), &f.pixels);
        }
        // Gone without reading a single response.
        drop(c);
    }
    // Every vanished guest was noticed and cleaned up.
    daemon.wait_log_count("disconnected;", 5);
    let n = healthy.finish();
    assert!(n >= 10);
    let mut daemon = daemon;
    daemon.assert_alive();
    let mut c = Client::tcp(addr);
    let f = test_frame(Fmt::Bgrx, 640, 480, 2560, 0, 9);
    let r = stream_frames(&mut c, &[(f, 5, false)], 1);
    assert_eq!(r[0].pts, 5);
}

#[test]
fn a_guest_that_stops_reading_is_disconnected() {
    let daemon = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--max-in-flight",
        "2",
        "--write-timeout",
        "2",
        "--bitrate",
        "100000",
    ]);
    let addr = daemon.tcp();
    let healthy = Healthy::start(addr);
    let s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // Noise frames at a huge bitrate: big responses that fill the socket
    // buffers quickly. The guest never reads.
    let mut rng = Rng(7);
    let noise: Vec<u8> = (0..640 * 480 * 4).map(|_| rng.next() as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
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
        while sent < 2000 {
            let r = FrameRequest { pts: sent, ..req };
            if hxfr::write::write_frame_request(&mut w, 1, &r, &[&noise]).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    daemon.wait_log("has not read its responses");
    let sent = sender.join().unwrap();
    assert!(
        sent < 2000,
        "the daemon kept reading from a guest that does not read"
    );
    drop(s);
    let n = healthy.finish();
    assert!(n >= 10);
    let mut daemon = daemon;
    daemon.assert_alive();
    Client::tcp(addr).ping(13);
}
