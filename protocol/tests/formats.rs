//! The pixel formats of the FORMATS extension (I420, YV12, YUY2, UYVY):
//! their fourccs, the layouts docs/protocol.md gives them, what a host
//! accepts from a guest that did or did not negotiate them, checksums, and
//! that compact frames never carry them.

mod common;
mod extsupport;

use common::vectors;
use extsupport::Rng;
use hxfr::compact::{self, CompactEncoder, Compression, Delta, Frame, FullReason};
use hxfr::ext::{CompactFrame, CompactHeader};
use hxfr::{Decoder, FrameLayout, FrameRequest, LayoutError, Message, Plane, WireFormat};

fn req(format: WireFormat, width: u32, height: u32, stride: u32) -> FrameRequest {
    FrameRequest {
        width,
        height,
        format: format.fourcc(),
        stride,
        ..Default::default()
    }
}

#[test]
fn fourccs_are_the_drm_codes() {
    for (f, code) in [
        (WireFormat::I420, b"YU12"),
        (WireFormat::Yv12, b"YV12"),
        (WireFormat::Yuy2, b"YUYV"),
        (WireFormat::Uyvy, b"UYVY"),
    ] {
        assert_eq!(&f.fourcc().to_le_bytes(), code);
        assert!(f.is_negotiated());
        assert_eq!(WireFormat::from_fourcc(f.fourcc()), None, "legacy lookup");
        assert_eq!(WireFormat::from_fourcc_ext(f.fourcc()), Some(f));
    }
    for f in WireFormat::ALL {
        assert!(!f.is_negotiated());
        assert_eq!(WireFormat::from_fourcc_ext(f.fourcc()), Some(f));
    }
}

#[test]
fn planar_layouts_have_half_stride_chroma_planes_after_luma() {
    // 641x361 with stride 648: U and V have 324-byte rows, 181 of them.
    for f in [WireFormat::I420, WireFormat::Yv12] {
        assert_eq!(f.min_stride(641), 641);
        let need = 648 * 361 + 2 * 324 * 181;
        assert_eq!(f.frame_bytes(361, 648), need as u64);
        let l = FrameLayout::validate_ext(&req(f, 641, 361, 648), need, true).unwrap();
        assert_eq!((l.n_planes, l.size, l.offsets), (3, need, [0, 648 * 361]));
        let planes: Vec<Plane> = l.planes().collect();
        assert_eq!(
            planes,
            [
                Plane {
                    offset: 0,
                    stride: 648,
                    rows: 361,
                    row_bytes: 641
                },
                Plane {
                    offset: 648 * 361,
                    stride: 324,
                    rows: 181,
                    row_bytes: 321
                },
                Plane {
                    offset: 648 * 361 + 324 * 181,
                    stride: 324,
                    rows: 181,
                    row_bytes: 321
                },
            ]
        );
        // An odd stride rounds up for chroma: 5 -> 3.
        let l = FrameLayout::validate_ext(&req(f, 5, 2, 5), 10 + 2 * 3, true).unwrap();
        assert_eq!((l.plane(1).stride, l.plane(2).offset), (3, 13));
        assert_eq!(
            FrameLayout::validate_ext(&req(f, 5, 2, 4), 100, true),
            Err(LayoutError::StrideTooSmall {
                stride: 4,
                min: 5,
                format: f,
                width: 5
            })
        );
        assert!(matches!(
            FrameLayout::validate_ext(&req(f, 5, 2, 5), 15, true),
            Err(LayoutError::NotEnoughPixels { have: 15, need: 16 })
        ));
    }
}

#[test]
fn packed_layouts_are_whole_macropixels() {
    for f in [WireFormat::Yuy2, WireFormat::Uyvy] {
        assert_eq!(f.min_stride(3), 8, "ceil(3/2) macropixels of 4 bytes");
        assert_eq!(f.min_stride(4), 8);
        let l = FrameLayout::validate_ext(&req(f, 3, 2, 8), 16, true).unwrap();
        assert_eq!(
            l.planes().collect::<Vec<_>>(),
            [Plane {
                offset: 0,
                stride: 8,
                rows: 2,
                row_bytes: 8
            }]
        );
        assert!(FrameLayout::validate_ext(&req(f, 3, 2, 7), 16, true).is_err());
    }
}

#[test]
fn a_host_takes_them_only_from_a_guest_that_negotiated_them() {
    let r = req(WireFormat::Yuy2, 2, 2, 4);
    assert_eq!(
        FrameLayout::validate(&r, 8),
        Err(LayoutError::UnknownFormat(WireFormat::Yuy2.fourcc())),
        "the legacy check does not know them"
    );
    let e = FrameLayout::validate_ext(&r, 8, false).unwrap_err();
    assert_eq!(e, LayoutError::NotNegotiated(WireFormat::Yuy2));
    assert_eq!(
        e.to_string(),
        "pixel format YUY2 (0x56595559) may only be sent after the host accepted the FORMATS extension"
    );
    assert!(FrameLayout::validate_ext(&r, 8, true).is_ok());
    // Legacy formats need no negotiation.
    assert!(FrameLayout::validate_ext(&req(WireFormat::Nv12, 2, 2, 2), 6, false).is_ok());
}

/// The hand-assembled vectors decode, encode back, and their pixels sit
/// where the layout says.
#[test]
fn vectors_decode_and_lay_out_as_documented() {
    for v in vectors::negotiated_formats() {
        let (h, m) = Decoder::default()
            .decode(&mut &v.bytes[..])
            .unwrap()
            .unwrap();
        assert_eq!(h, v.header, "{}", v.name);
        assert_eq!(m, v.message, "{}", v.name);
        assert_eq!(m.encode(1), v.bytes, "{}", v.name);
        let Message::FrameRequest {
            request,
            pixels: Some(px),
        } = m
        else {
            panic!()
        };
        let l = FrameLayout::validate_ext(&request, px.len(), true).unwrap();
        let rows: Vec<Vec<u8>> = l
            .planes()
            .flat_map(|p| {
                let px = &px;
                (0..p.rows).map(move |y| px[p.offset + y * p.stride..][..p.row_bytes].to_vec())
            })
            .collect();
        let want: Vec<Vec<u8>> = match l.format {
            WireFormat::I420 => vec![
                vec![0x10, 0x11, 0x12],
                vec![0x13, 0x14, 0x15],
                vec![0x16, 0x17, 0x18],
                vec![0x80, 0x81],
                vec![0x82, 0x83],
                vec![0x90, 0x91],
                vec![0x92, 0x93],
            ],
            WireFormat::Yuy2 => vec![
                vec![0x10, 0x80, 0x11, 0x90, 0x12, 0x81, 0xee, 0x91],
                vec![0x13, 0x82, 0x14, 0x92, 0x15, 0x83, 0xee, 0x93],
            ],
            f => panic!("{f}"),
        };
        assert_eq!(rows, want, "{}", v.name);
        // The checksum hashes exactly these visible bytes, in this order.
        let frame = Frame::from_wire(&l, &px).unwrap();
        let mut h = compact::Fnv1a64::new();
        want.iter().for_each(|r| h.write(r));
        assert_eq!(compact::checksum(&frame), h.finish(), "{}", v.name);
    }
}

/// A guest's I420 frame, mapped with its own strides, has the checksum of
/// the same frame on the wire.
#[test]
fn checksums_ignore_strides_for_every_plane() {
    let mut rng = Rng::new(3);
    let (w, h) = (33usize, 17usize);
    let (cw, ch) = (17usize, 9usize);
    let mut y = vec![0u8; 40 * h];
    let mut u = vec![0u8; 24 * ch];
    let mut v = vec![0u8; 20 * ch];
    rng.fill(&mut y);
    rng.fill(&mut u);
    rng.fill(&mut v);
    let guest = Frame::new(WireFormat::I420, 33, 17, &[&y, &u, &v], &[40, 24, 20]).unwrap();
    let stride = 36usize;
    let cs = stride / 2;
    let mut wire = vec![0xEEu8; stride * h + 2 * cs * ch];
    for r in 0..h {
        wire[r * stride..][..w].copy_from_slice(&y[r * 40..][..w]);
    }
    for r in 0..ch {
        wire[stride * h + r * cs..][..cw].copy_from_slice(&u[r * 24..][..cw]);
        wire[stride * h + cs * ch + r * cs..][..cw].copy_from_slice(&v[r * 20..][..cw]);
    }
    let l =
        FrameLayout::validate_ext(&req(WireFormat::I420, 33, 17, 36), wire.len(), true).unwrap();
    let host = Frame::from_wire(&l, &wire).unwrap();
    assert_eq!(compact::checksum(&guest), compact::checksum(&host));
    // Swapping U and V (YV12 read as I420) changes it.
    let swapped = Frame::new(WireFormat::I420, 33, 17, &[&y, &v, &u], &[40, 20, 24]).unwrap();
    assert_ne!(compact::checksum(&guest), compact::checksum(&swapped));
}

#[test]
fn compact_frames_never_carry_them() {
    let mut rng = Rng::new(4);
    for f in WireFormat::NEGOTIATED {
        let stride = f.min_stride(64) as u32;
        let size = f.frame_bytes(32, stride) as usize;
        let mut a = vec![0u8; size];
        rng.fill(&mut a);
        let mut b = a.clone();
        b[0] ^= 1;
        let l = FrameLayout::new(f, 64, 32, stride, size).unwrap();
        let (fa, fb) = (
            Frame::from_wire(&l, &a).unwrap(),
            Frame::from_wire(&l, &b).unwrap(),
        );
        let r = FrameRequest {
            width: 64,
            height: 32,
            format: f.fourcc(),
            stride,
            ..Default::default()
        };
        let mut enc = CompactEncoder::new(16, 16, Compression::Auto);
        assert!(
            matches!(
                enc.encode(&fa, &fb, &r, 0, 1),
                Delta::Full(FullReason::Geometry)
            ),
            "{f}"
        );
        let header = CompactHeader {
            request: r,
            tile_width: 16,
            tile_height: 16,
            ..Default::default()
        };
        let cf = CompactFrame {
            body: vec![0; header.bitmap_len()],
            header,
        };
        let e = compact::apply(&mut a, &l, &cf, &mut Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("compact frame does not match its reference: {f} frames are never sent as compact frames")
        );
    }
}
