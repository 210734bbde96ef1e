//! The compact codec rebuilds frames bit-exactly: apply(encode(prev, cur))
//! equals cur for random frames, sizes, formats, tile sizes and strides (the
//! guest's frames and the wire using different ones), raw and LZ4, over
//! chains of frames, through the real encoder → bytes → decoder → apply path.

mod extsupport;

use extsupport::{wire_visible, OwnedFrame, Rng};
use hxfr::compact::{self, CompactEncoder, Compression, Delta, Frame, FullReason};
use hxfr::ext::{ExtMessage, TileEncoding};
use hxfr::layout::{FrameLayout, WireFormat};
use hxfr::{Decoded, Decoder, FrameRequest, Limits};

const PAD_BYTE: u8 = 0x5a;

/// The host's copy of the last frame: a wire-layout buffer.
struct HostRef {
    layout: FrameLayout,
    pixels: Vec<u8>,
}

fn request_for(f: &OwnedFrame, wire_stride: usize, pts: i64) -> FrameRequest {
    FrameRequest {
        resource_id: 0,
        width: f.width,
        height: f.height,
        format: f.format.fourcc(),
        stride: wire_stride as u32,
        pts,
        duration: 1,
        force_keyframe: false,
    }
}

/// Copies `src` into a new frame with other stride paddings (a guest may
/// get buffers with different strides from one frame to the next).
fn restride(src: &OwnedFrame, pad: &[usize], rng: &mut Rng) -> OwnedFrame {
    let mut out = OwnedFrame::new(src.format, src.width, src.height, pad, rng);
    let dims = OwnedFrame::plane_dims(src.format, src.width, src.height);
    for (p, (rb, rows)) in dims.iter().enumerate() {
        for y in 0..*rows {
            let s = y * src.strides[p];
            let d = y * out.strides[p];
            out.planes[p][d..d + rb].copy_from_slice(&src.planes[p][s..s + rb]);
        }
    }
    out
}

/// Changes `f` in one of several ways that real content does.
fn mutate(f: &mut OwnedFrame, rng: &mut Rng) {
    let dims = OwnedFrame::plane_dims(f.format, f.width, f.height);
    match rng.range(0, 5) {
        0 => {} // still
        1 => {
            // a few scattered bytes (cursor blink, typing)
            for _ in 0..rng.range(1, 6) {
                let p = rng.range(0, dims.len() as u64 - 1) as usize;
                let (rb, rows) = dims[p];
                let (y, x) = (rng.range(0, rows as u64 - 1), rng.range(0, rb as u64 - 1));
                let v = f.planes[p][y as usize * f.strides[p] + x as usize];
                f.set(p, y as usize, x as usize, v.wrapping_add(1));
            }
        }
        2 | 3 => {
            // a rectangle of random or flat content (a moving window)
            let flat = rng.chance(50);
            let value = rng.next_u64() as u8;
            for (p, (rb, rows)) in dims.iter().enumerate() {
                let y0 = rng.range(0, *rows as u64 - 1) as usize;
                let y1 = rng.range(y0 as u64 + 1, *rows as u64) as usize;
                let x0 = rng.range(0, *rb as u64 - 1) as usize;
                let x1 = rng.range(x0 as u64 + 1, *rb as u64) as usize;
                for y in y0..y1 {
                    for x in x0..x1 {
                        let v = if flat { value } else { rng.next_u64() as u8 };
                        f.set(p, y, x, v);
                    }
                }
            }
        }
        4 => {
            // everything (full motion)
            for (p, (rb, rows)) in dims.iter().enumerate() {
                for y in 0..*rows {
                    for x in 0..*rb {
                        f.set(p, y, x, rng.next_u64() as u8);
                    }
                }
            }
        }
        _ => {
            // the last row and column only (edge tiles)
            for (p, (rb, rows)) in dims.iter().enumerate() {
                f.set(p, rows - 1, rb - 1, rng.next_u64() as u8);
            }
        }
    }
}

#[derive(Default, Debug)]
struct Counts {
    full_not_smaller: usize,
    raw: usize,
    lz4: usize,
    empty: usize,
}

/// Sends `cur` the way the element will: compact if possible, else full.
/// Returns the bytes on the wire.
#[allow(clippy::too_many_arguments)]
fn send(
    enc: &mut CompactEncoder,
    host: &mut HostRef,
    prev: &OwnedFrame,
    cur: &OwnedFrame,
    wire_stride: usize,
    index: u32,
    rng: &mut Rng,
    counts: &mut Counts,
) {
    let req = request_for(cur, wire_stride, index as i64);
    let (prev_f, cur_f) = (prev.frame(), cur.frame());
    match enc.encode(&prev_f, &cur_f, &req, index - 1, 7) {
        Delta::Full(reason) => {
            assert_eq!(reason, FullReason::NotSmaller);
            counts.full_not_smaller += 1;
            host.pixels = cur.to_wire(wire_stride, PAD_BYTE);
        }
        Delta::Compact(msg) => {
            match (msg.encoding, msg.changed_tiles) {
                (_, 0) => counts.empty += 1,
                (TileEncoding::Raw, _) => counts.raw += 1,
                (TileEncoding::Lz4, _) => counts.lz4 += 1,
            }
            let bytes = msg.to_vec();
            assert_eq!(bytes.len(), msg.wire_len);
            // Through the decoder, in random pieces.
            let mut dec = Decoder::with_extensions(Limits::default());
            let mut got = None;
            let mut at = 0;
            while at < bytes.len() {
                let n = rng.range(1, 97) as usize;
                let mut piece = &bytes[at..(at + n).min(bytes.len())];
                at += piece.len();
                while !piece.is_empty() {
                    if let Some(d) = dec.decode_ext(&mut piece).unwrap() {
                        got = Some(d);
                    }
                }
            }
            let Some(Decoded::Ext(h, ExtMessage::CompactFrame(cf))) = got else {
                panic!("no COMPACT_FRAME decoded")
            };
            assert_eq!(h.session_id, 7);
            assert_eq!(cf.header.ref_index, index - 1);
            assert_eq!(cf.header.request.pts, index as i64);
            let mut scratch = Vec::new();
            let applied =
                compact::apply(&mut host.pixels, &host.layout, &cf, &mut scratch).unwrap();
            assert_eq!(applied.raw_len, msg.raw_len);
            assert!(scratch.len() <= host.layout.size);
        }
    }
    let f = cur;
    assert_eq!(
        wire_visible(f.format, f.width, f.height, wire_stride, &host.pixels),
        f.visible(),
        "rebuilt frame differs ({}x{} {}, wire stride {wire_stride}, tiles {:?})",
        f.width,
        f.height,
        f.format,
        enc.tile_size()
    );
    // Stride padding on the host is never touched.
    let dims = OwnedFrame::plane_dims(f.format, f.width, f.height);
    let mut at = 0;
    for (rb, rows) in dims {
        for _ in 0..rows {
            assert!(host.pixels[at + rb..at + wire_stride]
                .iter()
                .all(|&b| b == PAD_BYTE));
            at += wire_stride;
        }
    }
    // And the checksums agree whatever the strides.
    let rebuilt = Frame::from_wire(&host.layout, &host.pixels).unwrap();
    assert_eq!(compact::checksum(&rebuilt), compact::checksum(&cur.frame()));
}

fn run_chains(seed: u64, chains: usize, max_w: u64, max_h: u64) -> Counts {
    let mut rng = Rng::new(seed);
    let mut counts = Counts::default();
    const TILES: [u16; 6] = [8, 16, 24, 32, 64, 128];
    for _ in 0..chains {
        let format = WireFormat::ALL[rng.range(0, 2) as usize];
        let width = rng.range(1, max_w) as u32;
        let height = rng.range(1, max_h) as u32;
        let tw = TILES[rng.range(0, 5) as usize];
        let th = TILES[rng.range(0, 5) as usize];
        let compression =
            [Compression::Off, Compression::Auto, Compression::Always][rng.range(0, 2) as usize];
        let mut enc = CompactEncoder::new(tw, th, compression);
        let wire_stride = (format.min_stride(width) + rng.range(0, 9) * rng.range(0, 1)) as usize;
        let pad = |rng: &mut Rng| [rng.range(0, 13) as usize, rng.range(0, 13) as usize];
        let first_pad = pad(&mut rng);
        let mut prev = OwnedFrame::new(format, width, height, &first_pad, &mut rng);
        if rng.chance(30) {
            // Flat start: compressible content.
            for p in &mut prev.planes {
                p.fill(0x10);
            }
        }
        let wire = prev.to_wire(wire_stride, PAD_BYTE);
        let layout =
            FrameLayout::new(format, width, height, wire_stride as u32, wire.len()).unwrap();
        let mut host = HostRef {
            layout,
            pixels: wire,
        };
        for index in 1..=6u32 {
            let p = pad(&mut rng);
            let mut cur = restride(&prev, &p, &mut rng);
            mutate(&mut cur, &mut rng);
            send(
                &mut enc,
                &mut host,
                &prev,
                &cur,
                wire_stride,
                index,
                &mut rng,
                &mut counts,
            );
            prev = cur;
        }
    }
    counts
}

#[test]
fn random_chains_rebuild_bit_exactly() {
    let counts = run_chains(1, 250, 150, 90);
    eprintln!("{counts:?}");
    // Every path was exercised.
    assert!(counts.full_not_smaller > 10, "{counts:?}");
    assert!(counts.raw > 50, "{counts:?}");
    assert!(counts.lz4 > 50, "{counts:?}");
    assert!(counts.empty > 20, "{counts:?}");
}

#[test]
fn random_chains_small_and_odd_sizes() {
    let counts = run_chains(2, 300, 20, 20);
    assert!(counts.raw + counts.lz4 > 50, "{counts:?}");
}

#[test]
fn random_chains_wider_than_tiles() {
    let counts = run_chains(3, 20, 700, 300);
    assert!(counts.raw + counts.lz4 > 5, "{counts:?}");
}

fn frame(format: WireFormat, w: u32, h: u32, rng: &mut Rng) -> OwnedFrame {
    OwnedFrame::new(format, w, h, &[0], rng)
}

#[test]
fn still_frame_is_an_empty_compact_frame() {
    let mut rng = Rng::new(4);
    let f = frame(WireFormat::Bgra, 1920, 1080, &mut rng);
    let mut enc = CompactEncoder::new(64, 64, Compression::Auto);
    let req = request_for(&f, 1920 * 4, 0);
    let Delta::Compact(m) = enc.encode(&f.frame(), &f.frame(), &req, 0, 1) else {
        panic!()
    };
    assert_eq!(m.changed_tiles, 0);
    assert_eq!(m.total_tiles, 30 * 17);
    // header + fixed part + 510-bit bitmap, nothing else
    assert_eq!(m.wire_len, 12 + 68 + 64);
    assert_eq!(m.slice_count(), 1);
}

#[test]
fn noise_everywhere_means_full_frame() {
    let mut rng = Rng::new(5);
    for format in WireFormat::ALL {
        let a = frame(format, 200, 100, &mut rng);
        let b = frame(format, 200, 100, &mut rng);
        let stride = format.min_stride(200) as usize;
        for c in [Compression::Off, Compression::Auto, Compression::Always] {
            let mut enc = CompactEncoder::new(64, 64, c);
            let d = enc.encode(&a.frame(), &b.frame(), &request_for(&b, stride, 0), 0, 1);
            assert!(matches!(d, Delta::Full(FullReason::NotSmaller)), "{d:?}");
        }
    }
}

#[test]
fn geometry_changes_mean_full_frame() {
    let mut rng = Rng::new(6);
    let a = frame(WireFormat::Bgra, 64, 64, &mut rng);
    let b = frame(WireFormat::Bgra, 64, 63, &mut rng);
    let c = frame(WireFormat::Rgba, 64, 64, &mut rng);
    let mut enc = CompactEncoder::new(64, 64, Compression::Off);
    for (prev, cur) in [(&a, &b), (&a, &c)] {
        let d = enc.encode(&prev.frame(), &cur.frame(), &request_for(cur, 256, 0), 0, 1);
        assert!(matches!(d, Delta::Full(FullReason::Geometry)));
    }
    // A request that does not describe the frame.
    let mut req = request_for(&a, 256, 0);
    req.stride = 200;
    let d = enc.encode(&a.frame(), &a.frame(), &req, 0, 1);
    assert!(matches!(d, Delta::Full(FullReason::Geometry)));
    // A bad tile size.
    let mut enc = CompactEncoder::new(12, 64, Compression::Off);
    let d = enc.encode(&a.frame(), &a.frame(), &request_for(&a, 256, 0), 0, 1);
    assert!(matches!(d, Delta::Full(FullReason::Geometry)));
}

/// Uncompressed tile data is not copied: runs that are adjacent in the
/// frame's memory go out as one slice, so a changed full-width band of a
/// tightly packed frame is a single slice after the prefix.
#[test]
fn raw_runs_are_zero_copy_and_coalesced() {
    let mut rng = Rng::new(7);
    let prev = frame(WireFormat::Bgra, 256, 256, &mut rng);
    let mut cur = prev.clone();
    for y in 64..128 {
        for x in 0..1024 {
            cur.set(0, y, x, rng.next_u64() as u8);
        }
    }
    let mut enc = CompactEncoder::new(64, 64, Compression::Off);
    let Delta::Compact(m) = enc.encode(
        &prev.frame(),
        &cur.frame(),
        &request_for(&cur, 1024, 0),
        0,
        1,
    ) else {
        panic!()
    };
    assert_eq!(m.changed_tiles, 4);
    assert_eq!(m.raw_len, 64 * 1024);
    assert_eq!(m.slice_count(), 2);
    // The first and last tile of one band: the last tile of a row and the
    // first of the next row touch in memory, so they merge too: the first
    // tile's first row, 63 merged pairs, the last tile's last row.
    let mut cur = prev.clone();
    cur.set(0, 70, 0, !prev.planes[0][70 * 1024]);
    cur.set(0, 70, 1023, !prev.planes[0][70 * 1024 + 1023]);
    let Delta::Compact(m) = enc.encode(
        &prev.frame(),
        &cur.frame(),
        &request_for(&cur, 1024, 0),
        0,
        1,
    ) else {
        panic!()
    };
    assert_eq!(m.changed_tiles, 2);
    assert_eq!(m.slice_count(), 1 + 1 + 63 + 1);
}

#[test]
fn flat_content_is_compressed() {
    let mut rng = Rng::new(8);
    let mut prev = frame(WireFormat::Nv12, 640, 480, &mut rng);
    for p in &mut prev.planes {
        p.fill(0x20);
    }
    let mut cur = prev.clone();
    for y in 100..300 {
        for x in 100..400 {
            cur.set(0, y, x, 0xee);
        }
    }
    let mut enc = CompactEncoder::new(64, 64, Compression::Auto);
    let Delta::Compact(m) = enc.encode(
        &prev.frame(),
        &cur.frame(),
        &request_for(&cur, 640, 0),
        0,
        1,
    ) else {
        panic!()
    };
    assert_eq!(m.encoding, TileEncoding::Lz4);
    assert!(
        m.wire_len * 20 < m.raw_len,
        "{} vs {}",
        m.wire_len,
        m.raw_len
    );
}

/// With compression Auto, a large change is not compressed (guest CPU), and
/// a poor ratio makes the encoder stop trying for a while.
#[test]
fn auto_compression_policy() {
    let mut rng = Rng::new(9);
    let prev = frame(WireFormat::Bgra, 256, 256, &mut rng);
    // 3/4 of the frame changed with flat content: compressible, but over
    // the fraction.
    let mut cur = prev.clone();
    for y in 0..192 {
        for x in 0..1024 {
            cur.set(0, y, x, 1);
        }
    }
    let mut enc = CompactEncoder::new(64, 64, Compression::Auto);
    let Delta::Compact(m) = enc.encode(
        &prev.frame(),
        &cur.frame(),
        &request_for(&cur, 1024, 0),
        0,
        1,
    ) else {
        panic!()
    };
    assert_eq!(m.encoding, TileEncoding::Raw);
    enc.compress_max_fraction = 1.0;
    let Delta::Compact(m) = enc.encode(
        &prev.frame(),
        &cur.frame(),
        &request_for(&cur, 1024, 0),
        0,
        1,
    ) else {
        panic!()
    };
    assert_eq!(m.encoding, TileEncoding::Lz4);
    // Noise in one tile: compression fails, then is not tried.
    let mut noisy = prev.clone();
    for y in 0..64 {
        for x in 0..256 {
            noisy.set(0, y, x, rng.next_u64() as u8);
        }
    }
    let mut enc = CompactEncoder::new(64, 64, Compression::Auto);
    enc.compress_backoff_frames = 3;
    for _ in 0..2 {
        let Delta::Compact(m) = enc.encode(
            &prev.frame(),
            &noisy.frame(),
            &request_for(&noisy, 1024, 0),
            0,
            1,
        ) else {
            panic!()
        };
        assert_eq!(m.encoding, TileEncoding::Raw);
    }
    // Flat change right after: still backing off, then tried again.
    let mut flat = prev.clone();
    for y in 0..64 {
        for x in 0..256 {
            flat.set(0, y, x, 9);
        }
    }
    let mut encodings = Vec::new();
    for _ in 0..4 {
        let Delta::Compact(m) = enc.encode(
            &prev.frame(),
            &flat.frame(),
            &request_for(&flat, 1024, 0),
            0,
            1,
        ) else {
            panic!()
        };
        encodings.push(m.encoding);
    }
    assert_eq!(
        encodings,
        [
            TileEncoding::Raw,
            TileEncoding::Raw,
            TileEncoding::Lz4,
            TileEncoding::Lz4
        ]
    );
}

#[test]
fn checksum_ignores_stride_padding() {
    let mut rng = Rng::new(10);
    for format in WireFormat::ALL {
        let a = OwnedFrame::new(format, 33, 17, &[0, 5], &mut rng);
        let b = restride(&a, &[7, 1], &mut rng);
        assert_eq!(compact::checksum(&a.frame()), compact::checksum(&b.frame()));
        let mut c = b.clone();
        c.set(0, 16, 3, c.planes[0][16 * c.strides[0] + 3] ^ 1);
        assert_ne!(compact::checksum(&a.frame()), compact::checksum(&c.frame()));
    }
    // The documented value for a 1x1 BGRA frame of bytes 61 62 63 64.
    let px = [0x61u8, 0x62, 0x63, 0x64];
    let f = Frame::new(WireFormat::Bgra, 1, 1, &[&px], &[4]).unwrap();
    let mut h = compact::Fnv1a64::new();
    h.write(b"abcd");
    assert_eq!(compact::checksum(&f), h.finish());
}

#[test]
fn frames_with_short_planes_are_refused() {
    let y = vec![0u8; 100];
    let e = Frame::new(WireFormat::Nv12, 10, 10, &[&y, &y[..49]], &[10, 10]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad frame: plane 1: 49 bytes, 50 needed for 5 rows of stride 10"
    );
    let e = Frame::new(WireFormat::Bgra, 10, 10, &[&y], &[30]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad frame: plane 0: stride 30 is below its 40 bytes per row"
    );
    assert!(Frame::new(WireFormat::Bgra, 0, 10, &[&y], &[40]).is_err());
    assert!(Frame::new(WireFormat::Nv12, 10, 10, &[&y], &[10]).is_err());
    // The last row needs no padding.
    let last = vec![0u8; 9 * 12 + 10];
    assert!(Frame::new(
        WireFormat::Nv12,
        10,
        10,
        &[&last, &last[..4 * 12 + 10]],
        &[12, 12]
    )
    .is_ok());
}
