//! The FORMATS extension against the real daemon: I420, YV12, YUY2 and
//! UYVY frames, laid out as docs/protocol.md says, are read as the guest
//! meant them (FRAME_CHECKSUM agrees with the guest's own), encoded as
//! 4:2:0 and decode back to the input; a guest that did not negotiate them
//! is refused, and compact frames never carry them (issue 12, defect 4).

mod common;

use common::*;
use hxfr::compact::{self, Frame};
use hxfr::ext::{ext_bits, CompactFrame, CompactHeader, ExtMessage};
use hxfr::nal::first_sps;
use hxfr::{error_code, Decoded, FrameRequest, Message, WireFormat};

/// Smooth, moving content, chroma constant over each 2x2 block so that
/// 4:2:2 → 4:2:0 loses nothing.
fn luma(x: usize, y: usize, t: usize) -> u8 {
    (128.0 + 90.0 * ((x + 3 * t) as f64 / 9.0).sin() * ((y + t) as f64 / 13.0).cos()) as u8
}
fn cb(cx: usize, cy: usize) -> u8 {
    (128.0 + 60.0 * (cx as f64 / 7.0).sin() * (cy as f64 / 17.0).cos()) as u8
}
fn cr(cx: usize, cy: usize) -> u8 {
    (128.0 + 60.0 * ((cx + cy) as f64 / 11.0).cos()) as u8 + (cy % 3) as u8
}

/// A frame of `format` on the wire: its pixel block (padding bytes 0xEE)
/// and the planes a guest would hand to `hxfr::compact::Frame`.
struct WireFrame {
    pixels: Vec<u8>,
    /// (offset, stride) of each plane, in wire order.
    planes: Vec<(usize, usize)>,
}

fn wire_frame(format: WireFormat, w: usize, h: usize, stride: usize, t: usize) -> WireFrame {
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    match format {
        WireFormat::I420 | WireFormat::Yv12 => {
            let cs = stride.div_ceil(2);
            let mut px = vec![0xEE; stride * h + 2 * cs * ch];
            for y in 0..h {
                for x in 0..w {
                    px[y * stride + x] = luma(x, y, t);
                }
            }
            type Sample = fn(usize, usize) -> u8;
            let (first, second): (Sample, Sample) = if format == WireFormat::I420 {
                (cb, cr)
            } else {
                (cr, cb)
            };
            let (o1, o2) = (stride * h, stride * h + cs * ch);
            for cy in 0..ch {
                for cx in 0..cw {
                    px[o1 + cy * cs + cx] = first(cx, cy);
                    px[o2 + cy * cs + cx] = second(cx, cy);
                }
            }
            WireFrame {
                pixels: px,
                planes: vec![(0, stride), (o1, cs), (o2, cs)],
            }
        }
        WireFormat::Yuy2 | WireFormat::Uyvy => {
            let mut px = vec![0xEE; stride * h];
            for y in 0..h {
                for m in 0..cw {
                    let y1 = if 2 * m + 1 < w {
                        luma(2 * m + 1, y, t)
                    } else {
                        0x55
                    };
                    let (y0, u, v) = (luma(2 * m, y, t), cb(m, y / 2), cr(m, y / 2));
                    let mp = if format == WireFormat::Yuy2 {
                        [y0, u, y1, v]
                    } else {
                        [u, y0, v, y1]
                    };
                    px[y * stride + 4 * m..][..4].copy_from_slice(&mp);
                }
            }
            WireFrame {
                pixels: px,
                planes: vec![(0, stride)],
            }
        }
        other => panic!("{other} is not a negotiated format"),
    }
}

impl WireFrame {
    fn checksum(&self, format: WireFormat, w: u32, h: u32) -> u64 {
        let planes: Vec<&[u8]> = self
            .planes
            .iter()
            .map(|(o, _)| &self.pixels[*o..])
            .collect();
        let strides: Vec<usize> = self.planes.iter().map(|(_, s)| *s).collect();
        compact::checksum(&Frame::new(format, w, h, &planes, &strides).unwrap())
    }
}

fn psnr(pairs: impl Iterator<Item = (u8, u8)>) -> f64 {
    let (mut se, mut n) = (0f64, 0f64);
    for (a, b) in pairs {
        se += (a as f64 - b as f64).powi(2);
        n += 1.0;
    }
    if se == 0.0 {
        return 99.0;
    }
    10.0 * (255.0 * 255.0 * n / se).log10()
}

fn request(format: WireFormat, (w, h, stride): (u32, u32, u32), t: u32) -> FrameRequest {
    FrameRequest {
        width: w,
        height: h,
        format: format.fourcc(),
        stride,
        pts: t as i64 * 33_333_333,
        duration: 33_333_333,
        force_keyframe: t == 0,
        ..Default::default()
    }
}

#[test]
fn negotiated_formats_decode_to_the_input() {
    for encoder in ["x264enc", "openh264enc"] {
        let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", encoder]);
        let want = ext_bits::FORMATS | ext_bits::FRAME_CHECKSUM | ext_bits::ERROR_PTS;
        let mut g = ExtGuest::connect(&daemon);
        assert_eq!(g.hello(want), want);
        for format in WireFormat::NEGOTIATED {
            let packed = matches!(format, WireFormat::Yuy2 | WireFormat::Uyvy);
            // Odd sizes with padded strides, and an even size packed tight.
            let geometries = if packed {
                [(97, 61, 4 * 49 + 8), (64, 48, 128)]
            } else {
                [(97, 61, 104), (64, 48, 64)]
            };
            for (w, h, stride) in geometries {
                let n = 4;
                let mut aus = Vec::new();
                let mut sent = Vec::new();
                for t in 0..n {
                    let f = wire_frame(format, w as usize, h as usize, stride as usize, t as usize);
                    g.send_frame(&request(format, (w, h, stride), t), &f.pixels);
                    match g.recv() {
                        Decoded::Ext(_, ExtMessage::FrameChecksum(c)) => assert_eq!(
                            c.checksum,
                            f.checksum(format, w, h),
                            "{encoder} {format} {w}x{h} stride {stride}: the host reads the frame the guest sent"
                        ),
                        other => panic!("expected FRAME_CHECKSUM, got {other:?}"),
                    }
                    aus.push(g.recv_response().annexb());
                    sent.push(f);
                }
                let sps = first_sps(&aus[0]).unwrap();
                assert_eq!(
                    (sps.chroma_format_idc, sps.bit_depth_luma),
                    (1, 8),
                    "{format} is coded as 8-bit 4:2:0"
                );
                assert!(sps.profile.is_8bit_420(), "{format}: {}", sps.profile);
                let pictures = decode_to(&aus, "I420");
                assert_eq!(pictures.len(), n as usize);
                let (w, h) = (w as usize, h as usize);
                let (w2, cw2) = (w + w % 2, w.div_ceil(2));
                for (t, pic) in pictures.iter().enumerate() {
                    let y =
                        psnr((0..h).flat_map(|r| {
                            (0..w).map(move |c| (luma(c, r, t), pic[0][r * w2 + c]))
                        }));
                    let u = psnr((0..h.div_ceil(2)).flat_map(|r| {
                        (0..w.div_ceil(2)).map(move |c| (cb(c, r), pic[1][r * cw2 + c]))
                    }));
                    let v = psnr((0..h.div_ceil(2)).flat_map(|r| {
                        (0..w.div_ceil(2)).map(move |c| (cr(c, r), pic[2][r * cw2 + c]))
                    }));
                    assert!(
                        y > 35.0 && u > 35.0 && v > 35.0,
                        "{encoder} {format} {w}x{h} frame {t}: PSNR Y {y:.1} U {u:.1} V {v:.1} dB"
                    );
                    if t == 0 {
                        eprintln!(
                            "{encoder} {format} {w}x{h} stride {stride}: PSNR Y {y:.1} U {u:.1} V {v:.1} dB"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn negotiated_formats_are_refused_without_the_extension() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let f = wire_frame(WireFormat::I420, 64, 48, 64, 0);
    // A legacy guest (no HELLO): the legacy ERROR.
    let mut legacy = Client::tcp(daemon.tcp());
    legacy.send_frame(&request(WireFormat::I420, (64, 48, 64), 0), &f.pixels);
    let e = legacy.recv_error();
    assert_eq!(e.code, error_code::INVALID_MESSAGE);
    assert!(
        e.message.contains("pixel format I420 (0x32315559) may only be sent after the host accepted the FORMATS extension"),
        "{e:?}"
    );
    legacy.ping(2);
    // A guest that negotiated other extensions: an ERROR_PTS naming it.
    let mut g = ExtGuest::connect(&daemon);
    g.hello(ext_bits::ERROR_PTS);
    let f = wire_frame(WireFormat::Yuy2, 64, 48, 128, 0);
    g.send_frame(&request(WireFormat::Yuy2, (64, 48, 128), 0), &f.pixels);
    match g.recv() {
        Decoded::Ext(_, ExtMessage::ErrorPts(e)) => {
            assert_eq!(
                (e.frame_index, e.pts, e.code),
                (0, 0, error_code::INVALID_MESSAGE)
            );
            assert!(e.message.contains("YUY2"), "{e:?}");
        }
        other => panic!("expected ERROR_PTS, got {other:?}"),
    }
}

#[test]
fn compact_frames_never_carry_negotiated_formats() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut g = ExtGuest::connect(&daemon);
    let want = ext_bits::FORMATS | ext_bits::COMPACT | ext_bits::ERROR_PTS;
    assert_eq!(g.hello(want), want);
    let geometry = (64, 48, 64);
    let f = wire_frame(WireFormat::I420, 64, 48, 64, 0);
    g.send_frame(&request(WireFormat::I420, geometry, 0), &f.pixels);
    assert!(g.recv_response().is_keyframe);
    // A COMPACT_FRAME "no tile changed" on that I420 reference.
    let header = CompactHeader {
        request: request(WireFormat::I420, geometry, 1),
        ref_index: 0,
        tile_width: 16,
        tile_height: 16,
        ..Default::default()
    };
    let body = vec![0u8; header.bitmap_len()];
    g.send(&ExtMessage::CompactFrame(CompactFrame { header, body }).encode(1));
    match g.recv() {
        Decoded::Ext(_, ExtMessage::ErrorPts(e)) => {
            assert_eq!(e.frame_index, 1);
            assert!(
                e.message
                    .contains("I420 frames are never sent as compact frames"),
                "{e:?}"
            );
        }
        other => panic!("expected ERROR_PTS, got {other:?}"),
    }
    // The next full frame is fine.
    g.send_frame(&request(WireFormat::I420, geometry, 2), &f.pixels);
    g.recv_response();
    g.send(&Message::Ping.encode(1));
    assert!(matches!(g.recv(), Decoded::Legacy(_, Message::Pong)));
}
