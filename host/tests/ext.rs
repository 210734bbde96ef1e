//! The negotiated extensions against the real daemon: HELLO/HELLO_ACK,
//! compact frames rebuilt bit-exactly (proved by FRAME_CHECKSUM against the
//! guest's own frames, and by decoding the H.264), ERROR_PTS naming the
//! frame, DRAIN_DONE after every response, and a legacy guest that never
//! sees an extension message.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use hxfr::compact::{self, CompactEncoder, Compression, Delta, Frame};
use hxfr::ext::{ext_bits, ExtMessage, FrameChecksum, Hello, HelloAck, CHECKSUM_FLAG_REBUILT};
use hxfr::{Decoded, Decoder, FrameLayout, FrameResponse, Limits, Message};

/// A guest speaking the extensions.
struct ExtClient {
    stream: TcpStream,
    decoder: Decoder,
}

impl ExtClient {
    fn connect(daemon: &Daemon) -> ExtClient {
        let s = TcpStream::connect(daemon.tcp()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
        ExtClient {
            stream: s,
            decoder: Decoder::with_extensions(Limits::default()),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn hello(&mut self, ext: u32) -> HelloAck {
        self.send(
            &ExtMessage::Hello(Hello {
                version: 1,
                extensions: ext,
                tile_width: 16,
                tile_height: 16,
                agent: "ext-test".into(),
                ..Default::default()
            })
            .encode(1),
        );
        match self.recv() {
            Decoded::Ext(_, ExtMessage::HelloAck(a)) => a,
            other => panic!("expected HELLO_ACK, got {other:?}"),
        }
    }

    fn recv(&mut self) -> Decoded {
        match self.decoder.read_from_ext(&mut self.stream) {
            Ok(Some(d)) => d,
            Ok(None) => panic!("connection closed"),
            Err(e) => panic!("read failed: {e}"),
        }
    }

    fn recv_checksum(&mut self) -> FrameChecksum {
        match self.recv() {
            Decoded::Ext(_, ExtMessage::FrameChecksum(c)) => c,
            other => panic!("expected FRAME_CHECKSUM, got {other:?}"),
        }
    }

    fn recv_response(&mut self) -> FrameResponse {
        match self.recv() {
            Decoded::Legacy(_, Message::FrameResponse(r)) => r,
            other => panic!("expected FRAME_RESPONSE, got {other:?}"),
        }
    }
}

fn layout_of(f: &TestFrame) -> FrameLayout {
    FrameLayout::validate(&f.request(0, false), f.pixels.len()).unwrap()
}

fn frame_of(f: &TestFrame) -> Frame<'_> {
    Frame::from_wire(&layout_of(f), &f.pixels).unwrap()
}

/// A desktop-like change: a small square that moves, on a still picture.
fn moved(base: &TestFrame, t: u32) -> TestFrame {
    let mut f = TestFrame {
        fmt: base.fmt,
        width: base.width,
        height: base.height,
        stride: base.stride,
        pixels: base.pixels.clone(),
    };
    let bpp = if base.fmt == Fmt::Nv12 { 1 } else { 4 };
    let (x0, y0) = (4 + 3 * t as usize, 6 + 2 * t as usize);
    for y in y0..(y0 + 12).min(base.height as usize) {
        for x in x0 * bpp..((x0 + 12).min(base.width as usize)) * bpp {
            f.pixels[y * base.stride as usize + x] = 235;
        }
    }
    f
}

#[test]
fn compact_frames_are_rebuilt_bit_exactly_and_encoded() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    for (fmt, (w, h, stride)) in [
        (Fmt::Bgrx, (96, 64, 96 * 4 + 16)),
        (Fmt::Nv12, (97, 61, 98)),
    ] {
        let mut c = ExtClient::connect(&daemon);
        let want = ext_bits::COMPACT
            | ext_bits::LZ4
            | ext_bits::ERROR_PTS
            | ext_bits::DRAIN
            | ext_bits::FRAME_CHECKSUM;
        let ack = c.hello(want);
        assert_eq!(
            ack.extensions, want,
            "the daemon accepts everything asked for"
        );
        let base = test_frame(fmt, w, h, stride, 0, 1);
        let frames: Vec<TestFrame> = (0..12).map(|t| moved(&base, t)).collect();
        let mut enc = CompactEncoder::new(16, 16, Compression::Auto);
        let mut aus = Vec::new();
        let mut compact_sent = 0;
        for (i, f) in frames.iter().enumerate() {
            let pts = 1_000 + i as i64 * 33_333_333;
            let req = f.request(pts, false);
            let full = i == 0 || i == 6;
            let delta = if full {
                Delta::Full(compact::FullReason::Geometry)
            } else {
                enc.encode(
                    &frame_of(&frames[i - 1]),
                    &frame_of(f),
                    &req,
                    i as u32 - 1,
                    1,
                )
            };
            match delta {
                Delta::Compact(mut m) => {
                    m.write_to(&mut c.stream).unwrap();
                    compact_sent += 1;
                }
                Delta::Full(_) => c.send(&{
                    let mut v = Vec::new();
                    hxfr::write::write_frame_request(&mut v, 1, &req, &[&f.pixels]).unwrap();
                    v
                }),
            }
            let sum = c.recv_checksum();
            assert_eq!(sum.frame_index, i as u32);
            assert_eq!(sum.pts, pts);
            assert_eq!(sum.flags & CHECKSUM_FLAG_REBUILT != 0, !full);
            assert_eq!(
                sum.checksum,
                compact::checksum(&frame_of(f)),
                "{fmt:?} frame {i}: the daemon encodes other pixels than the guest had"
            );
            let r = c.recv_response();
            assert_eq!(r.pts, pts);
            aus.push((i as i64 * 33_333_333, r.annexb()));
        }
        assert_eq!(compact_sent, 10);
        let pictures = decode(&aus, fmt);
        assert_eq!(pictures.len(), frames.len());
        for (i, (p, f)) in pictures.iter().zip(&frames).enumerate() {
            let db = psnr(f, p);
            assert!(db > 30.0, "{fmt:?} frame {i}: PSNR {db:.1} dB");
        }
    }
    daemon.wait_log("compact");
}

#[test]
fn a_wrong_reference_is_an_error_naming_the_frame_and_a_full_frame_recovers() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut c = ExtClient::connect(&daemon);
    c.hello(ext_bits::COMPACT | ext_bits::ERROR_PTS);
    let base = test_frame(Fmt::Bgrx, 64, 48, 256, 0, 2);
    let f1 = moved(&base, 1);
    let mut v = Vec::new();
    hxfr::write::write_frame_request(&mut v, 1, &base.request(10, false), &[&base.pixels]).unwrap();
    c.send(&v);
    assert_eq!(c.recv_response().pts, 10);
    let mut enc = CompactEncoder::new(16, 16, Compression::Off);
    // Frame 1 names frame 7 as its reference; frame 2 names frame 1, which
    // was refused: both fail with ERROR_PTS, and name themselves.
    for (index, ref_index, pts) in [(1u32, 7u32, 20i64), (2, 1, 30)] {
        let Delta::Compact(mut m) = enc.encode(
            &frame_of(&base),
            &frame_of(&f1),
            &f1.request(pts, false),
            ref_index,
            1,
        ) else {
            panic!()
        };
        m.write_to(&mut c.stream).unwrap();
        match c.recv() {
            Decoded::Ext(_, ExtMessage::ErrorPts(e)) => {
                assert_eq!((e.pts, e.frame_index), (pts, index));
                assert_eq!(e.code, hxfr::error_code::INVALID_MESSAGE);
                assert!(e.message.contains("reference frame"), "{}", e.message);
            }
            other => panic!("expected ERROR_PTS, got {other:?}"),
        }
    }
    // A full frame, then a compact frame against it, work again.
    let mut v = Vec::new();
    hxfr::write::write_frame_request(&mut v, 1, &base.request(40, false), &[&base.pixels]).unwrap();
    c.send(&v);
    assert_eq!(c.recv_response().pts, 40);
    let Delta::Compact(mut m) = enc.encode(
        &frame_of(&base),
        &frame_of(&f1),
        &f1.request(50, false),
        3,
        1,
    ) else {
        panic!()
    };
    m.write_to(&mut c.stream).unwrap();
    assert_eq!(c.recv_response().pts, 50);
}

#[test]
fn drain_done_comes_after_every_response() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut c = ExtClient::connect(&daemon);
    c.hello(ext_bits::DRAIN | ext_bits::ERROR_PTS);
    let mut bytes = Vec::new();
    for i in 0..8 {
        let f = test_frame(Fmt::Nv12, 64, 48, 64, i, 3);
        hxfr::write::write_frame_request(
            &mut bytes,
            1,
            &f.request(i as i64 * 100, false),
            &[&f.pixels],
        )
        .unwrap();
    }
    // A frame the daemon refuses (no pixels, no resource): ERROR_PTS.
    let bad = hxfr::FrameRequest {
        width: 64,
        height: 48,
        pts: 999,
        ..Default::default()
    };
    bytes.extend_from_slice(&bad.encode_prefix(1, None));
    bytes.extend_from_slice(&ExtMessage::Drain { token: 77 }.encode(1));
    c.send(&bytes);
    let mut responses = Vec::new();
    loop {
        match c.recv() {
            Decoded::Legacy(_, Message::FrameResponse(r)) => responses.push(r.pts),
            Decoded::Ext(_, ExtMessage::ErrorPts(e)) => {
                assert_eq!((e.pts, e.frame_index), (999, 8));
                responses.push(e.pts);
            }
            Decoded::Ext(_, ExtMessage::DrainDone { token }) => {
                assert_eq!(token, 77);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(responses, vec![0, 100, 200, 300, 400, 500, 600, 700, 999]);
    // The connection still works after a drain.
    let f = test_frame(Fmt::Nv12, 64, 48, 64, 9, 3);
    let mut v = Vec::new();
    hxfr::write::write_frame_request(&mut v, 1, &f.request(5000, false), &[&f.pixels]).unwrap();
    c.send(&v);
    let r = c.recv_response();
    assert_eq!(r.pts, 5000);
    assert!(
        r.is_keyframe,
        "a drained encoder starts again with a keyframe"
    );
}

/// A guest that never says HELLO gets legacy answers only: ERROR, not
/// ERROR_PTS, and no checksums.
#[test]
fn legacy_guest_sees_only_legacy_messages() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut c = ExtClient::connect(&daemon);
    let f = test_frame(Fmt::Bgrx, 64, 48, 256, 0, 4);
    let mut v = Vec::new();
    hxfr::write::write_frame_request(&mut v, 1, &f.request(1, false), &[&f.pixels]).unwrap();
    let bad = hxfr::FrameRequest {
        width: 64,
        height: 48,
        pts: 2,
        ..Default::default()
    };
    v.extend_from_slice(&bad.encode_prefix(1, None));
    v.extend_from_slice(&Message::Ping.encode(1));
    c.send(&v);
    assert!(matches!(
        c.recv(),
        Decoded::Legacy(_, Message::FrameResponse(_))
    ));
    assert!(matches!(c.recv(), Decoded::Legacy(_, Message::Error(_))));
    assert!(matches!(c.recv(), Decoded::Legacy(_, Message::Pong)));
}

/// The daemon's statistics count wire bytes against raw bytes.
#[test]
fn stats_show_wire_against_raw_bytes() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut c = ExtClient::connect(&daemon);
    c.hello(ext_bits::COMPACT);
    let base = test_frame(Fmt::Bgrx, 320, 240, 1280, 0, 5);
    let mut v = Vec::new();
    hxfr::write::write_frame_request(&mut v, 1, &base.request(0, false), &[&base.pixels]).unwrap();
    c.send(&v);
    c.recv_response();
    let mut enc = CompactEncoder::new(64, 64, Compression::Off);
    for i in 1..10u32 {
        let prev = moved(&base, i - 1);
        let cur = moved(&base, i);
        let Delta::Compact(mut m) = enc.encode(
            &frame_of(&prev),
            &frame_of(&cur),
            &cur.request(i as i64, false),
            i - 1,
            1,
        ) else {
            panic!()
        };
        m.write_to(&mut c.stream).unwrap();
        c.recv_response();
    }
    drop(c);
    daemon.wait_log("9 compact frames");
}

/// A forced keyframe sent as a full frame after compact frames is a
/// keyframe, like in legacy mode.
#[test]
fn forced_keyframe_after_compact_frames() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut c = ExtClient::connect(&daemon);
    c.hello(ext_bits::COMPACT | ext_bits::ERROR_PTS);
    let base = test_frame(Fmt::Bgrx, 96, 64, 384, 0, 6);
    let frames: Vec<TestFrame> = (0..8).map(|t| moved(&base, t)).collect();
    let mut enc = CompactEncoder::new(16, 16, Compression::Off);
    let mut keys = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let force = i == 0 || i == 5;
        let req = f.request(i as i64 * 100, force);
        if force {
            let mut v = Vec::new();
            hxfr::write::write_frame_request(&mut v, 1, &req, &[&f.pixels]).unwrap();
            c.send(&v);
        } else {
            let Delta::Compact(mut m) = enc.encode(
                &frame_of(&frames[i - 1]),
                &frame_of(f),
                &req,
                i as u32 - 1,
                1,
            ) else {
                panic!()
            };
            m.write_to(&mut c.stream).unwrap();
        }
        keys.push(c.recv_response().is_keyframe);
    }
    assert_eq!(keys, [true, false, false, false, false, true, false, false]);
}

/// Malformed extension messages: each is refused with an error naming what
/// is wrong, nothing crashes, and the connection keeps working.
#[test]
fn malformed_extension_messages_are_refused_and_the_connection_survives() {
    use hxfr::ext::{ext_type, CompactHeader, TileEncoding};
    use hxfr::Header;
    init();
    let daemon = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--encoder",
        "x264enc",
        "--max-frame-bytes",
        "1000000",
    ]);
    let mut c = ExtClient::connect(&daemon);
    c.hello(ext_bits::COMPACT | ext_bits::LZ4 | ext_bits::ERROR_PTS);
    let base = test_frame(Fmt::Bgrx, 64, 48, 256, 0, 7);
    let mut v = Vec::new();
    hxfr::write::write_frame_request(&mut v, 1, &base.request(1, false), &[&base.pixels]).unwrap();
    c.send(&v);
    assert_eq!(c.recv_response().pts, 1);

    // Each case follows a full frame (a refused compact frame makes the
    // daemon forget its reference): full frame 2i+1, case 2i+2.
    let compact = |i: u32, encoding, data: &[u8], bitmap: u8, raw_len: u32, changed: u32| {
        let header = CompactHeader {
            request: base.request(2, false),
            ref_index: 2 * i + 1,
            tile_width: 64,
            tile_height: 64,
            encoding,
            changed_tiles: changed,
            data_len: data.len() as u32,
            raw_len,
        };
        let mut body = vec![bitmap];
        body.extend_from_slice(data);
        ExtMessage::CompactFrame(hxfr::ext::CompactFrame { header, body }).encode(1)
    };
    let full_tile = 48 * 256;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            compact(0, TileEncoding::Lz4, &[0xff, 0xff, 0xff], 1, full_tile, 1),
            "LZ4 block is corrupt",
        ),
        (
            compact(1, TileEncoding::Raw, &[1, 2, 3], 1, 3, 1),
            "raw_len 3 but the changed tiles hold 12288 bytes",
        ),
        (
            compact(2, TileEncoding::Raw, &[], 3, 0, 2),
            "bitmap has bits set past its 1 tiles",
        ),
        // Over --max-frame-bytes: skipped unread, framing kept.
        (
            Header::new(ext_type::COMPACT_FRAME, 0, 1, 2_000_000)
                .to_bytes()
                .to_vec(),
            "exceeds limit",
        ),
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        let oversize = bytes.len() == 12;
        let mut v = Vec::new();
        let full = base.request(100 + i as i64, false);
        hxfr::write::write_frame_request(&mut v, 1, &full, &[&base.pixels]).unwrap();
        c.send(&v);
        assert_eq!(c.recv_response().pts, 100 + i as i64);
        c.send(&bytes);
        if oversize {
            // The payload the header announced follows; the daemon skips it.
            c.send(&vec![0u8; 2_000_000]);
        }
        match c.recv() {
            Decoded::Ext(_, ExtMessage::ErrorPts(e)) => {
                assert!(e.message.contains(want), "case {i}: {}", e.message);
                assert_eq!(e.frame_index, 2 * i as u32 + 2, "case {i}");
            }
            other => panic!("case {i}: expected ERROR_PTS, got {other:?}"),
        }
    }
    // Truncated HELLO (below its 44 bytes) after the fact: a legacy ERROR.
    let mut short = Header::new(ext_type::HELLO, 0, 1, 4).to_bytes().to_vec();
    short.extend_from_slice(&[1, 0, 0, 0]);
    c.send(&short);
    match c.recv() {
        Decoded::Legacy(_, Message::Error(e)) => {
            assert!(e.message.contains("below the 44 bytes"), "{}", e.message)
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    // Still serving: a full frame encodes, PING answers.
    let mut v = Vec::new();
    hxfr::write::write_frame_request(&mut v, 1, &base.request(9, false), &[&base.pixels]).unwrap();
    c.send(&v);
    assert_eq!(c.recv_response().pts, 9);
    c.send(&Message::Ping.encode(3));
    assert!(matches!(c.recv(), Decoded::Legacy(_, Message::Pong)));
}
