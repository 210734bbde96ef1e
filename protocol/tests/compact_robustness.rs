//! The receiving side of the extensions against malformed input: applying a
//! corrupt COMPACT_FRAME never panics, never allocates beyond the frame's
//! size, leaves the reference frame untouched and says what is wrong; an
//! extension decoder fed garbage never panics and keeps its limits.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
mod extsupport;

use counting_alloc::measure;
use extsupport::{OwnedFrame, Rng};
use hxfr::compact::{self, CompactEncoder, CompactError, Compression, Delta};
use hxfr::ext::{ext_type, CompactFrame, CompactHeader, ExtMessage, TileEncoding};
use hxfr::layout::{FrameLayout, WireFormat};
use hxfr::{Decoded, Decoder, FrameRequest, Header, Limits};

fn request(f: &OwnedFrame, stride: u32) -> FrameRequest {
    FrameRequest {
        width: f.width,
        height: f.height,
        format: f.format.fourcc(),
        stride,
        pts: 5,
        ..Default::default()
    }
}

/// A reference frame on the host and a valid COMPACT_FRAME against it.
fn valid_case(rng: &mut Rng, lz4: bool) -> (FrameLayout, Vec<u8>, Vec<u8>) {
    let format = WireFormat::ALL[rng.range(0, 2) as usize];
    let (w, h) = (rng.range(16, 120) as u32, rng.range(16, 90) as u32);
    let mut prev = OwnedFrame::new(format, w, h, &[0], rng);
    for p in &mut prev.planes {
        p.fill(3);
    }
    let mut cur = prev.clone();
    for y in 0..8 {
        for x in 0..8 {
            cur.set(0, y + 4, x + 4, (x * y) as u8);
        }
    }
    let stride = format.min_stride(w) as usize;
    let compression = if lz4 {
        Compression::Always
    } else {
        Compression::Off
    };
    let mut enc = CompactEncoder::new(16, 8, compression);
    let Delta::Compact(m) = enc.encode(
        &prev.frame(),
        &cur.frame(),
        &request(&cur, stride as u32),
        0,
        1,
    ) else {
        panic!("expected compact")
    };
    let wire = prev.to_wire(stride, 0);
    let layout = FrameLayout::new(format, w, h, stride as u32, wire.len()).unwrap();
    (layout, wire, m.to_vec())
}

/// Applies whatever the decoder makes of `bytes`; checks the contract.
fn try_apply(
    layout: &FrameLayout,
    reference: &[u8],
    bytes: &[u8],
) -> Option<Result<(), CompactError>> {
    let mut dec = Decoder::with_extensions(Limits {
        max_pixel_bytes: 1 << 20,
        ..Limits::default()
    });
    let mut input = bytes;
    let cf = loop {
        match dec.decode_ext(&mut input) {
            Ok(Some(Decoded::Ext(_, ExtMessage::CompactFrame(cf)))) => break cf,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) if input.is_empty() => return None,
            Ok(None) => continue,
            Err(e) if e.is_fatal() => return None,
            Err(_) => continue,
        }
    };
    Some(apply_checked(layout, reference, &cf))
}

fn apply_checked(
    layout: &FrameLayout,
    reference: &[u8],
    cf: &CompactFrame,
) -> Result<(), CompactError> {
    let mut frame = reference.to_vec();
    let mut scratch = Vec::new();
    let (r, allocs) = measure(|| compact::apply(&mut frame, layout, cf, &mut scratch));
    let largest = allocs.largest;
    // Error texts are built with format!, so allow a little beyond the frame.
    assert!(
        largest <= reference.len().max(4096),
        "apply allocated {largest} bytes for a {}-byte frame",
        reference.len()
    );
    assert!(scratch.len() <= layout.size);
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            assert_eq!(frame, reference, "a failed apply changed the frame ({e})");
            assert!(!e.to_string().is_empty());
            Err(e)
        }
    }
}

#[test]
fn mutated_compact_frames_never_panic() {
    let mut rng = Rng::new(11);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..400 {
        let (layout, reference, valid) = valid_case(&mut rng, case % 2 == 0);
        for _ in 0..8 {
            let mut bytes = valid.clone();
            match rng.range(0, 3) {
                0 => {
                    // flip bytes in the fixed part and bitmap
                    for _ in 0..rng.range(1, 3) {
                        let i = rng.range(12, (12 + 68 + 4).min(bytes.len() as u64 - 1)) as usize;
                        bytes[i] = rng.next_u64() as u8;
                    }
                }
                1 => {
                    // flip bytes anywhere in the payload
                    let i = rng.range(12, bytes.len() as u64 - 1) as usize;
                    bytes[i] ^= 1 << rng.range(0, 7);
                }
                2 => {
                    // cut or grow the payload, keeping the header honest
                    let n = rng.range(80, bytes.len() as u64 + 40) as usize;
                    bytes.resize(n, rng.next_u64() as u8);
                    let size = (n - 12) as u32;
                    bytes[8..12].copy_from_slice(&size.to_le_bytes());
                }
                _ => {
                    // garbage tile data of the announced length
                    let start = (12 + 68 + 1).min(bytes.len());
                    rng.fill(&mut bytes[start..]);
                }
            }
            match try_apply(&layout, &reference, &bytes) {
                Some(Ok(())) => ok += 1,
                Some(Err(_)) => refused += 1,
                None => {}
            }
        }
    }
    // Mutations in the tile data still apply; most others are caught.
    assert!(ok > 100 && refused > 300, "ok {ok}, refused {refused}");
}

/// Hand-built frames that no decoder would produce (apply does not rely on
/// the decoder's checks).
#[test]
fn arbitrary_headers_never_panic() {
    let mut rng = Rng::new(12);
    let mut refused = 0;
    for _ in 0..3000 {
        let format = WireFormat::ALL[rng.range(0, 2) as usize];
        let (w, h) = (rng.range(1, 64) as u32, rng.range(1, 64) as u32);
        let stride = format.min_stride(w) as u32 + rng.range(0, 3) as u32;
        let reference = vec![7u8; format.frame_bytes(h, stride) as usize];
        let layout = FrameLayout::new(format, w, h, stride, reference.len()).unwrap();
        let pick = |rng: &mut Rng, good: u32| -> u32 {
            match rng.range(0, 5) {
                0 => rng.next_u64() as u32,
                1 => 0,
                2 => u32::MAX,
                _ => good,
            }
        };
        let tw = [0u16, 8, 16, 7, 1024, 2048, 64][rng.range(0, 6) as usize];
        let th = [0u16, 8, 16, 9, 1024, 4096, 64][rng.range(0, 6) as usize];
        let body_len = rng.range(0, 300) as usize;
        let (some_tiles, some_len) = (rng.range(0, 4) as u32, rng.range(0, 5000) as u32);
        let mut body = vec![0u8; body_len];
        rng.fill(&mut body);
        let cf = CompactFrame {
            header: CompactHeader {
                request: FrameRequest {
                    width: pick(&mut rng, w),
                    height: pick(&mut rng, h),
                    format: pick(&mut rng, format.fourcc()),
                    stride: pick(&mut rng, stride),
                    ..Default::default()
                },
                ref_index: 0,
                tile_width: tw,
                tile_height: th,
                encoding: if rng.chance(50) {
                    TileEncoding::Lz4
                } else {
                    TileEncoding::Raw
                },
                changed_tiles: pick(&mut rng, some_tiles),
                data_len: pick(&mut rng, body_len.saturating_sub(1) as u32),
                raw_len: pick(&mut rng, some_len),
            },
            body,
        };
        if apply_checked(&layout, &reference, &cf).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 2500);
}

/// Each check names what is wrong.
#[test]
fn errors_say_what_is_wrong() {
    let mut rng = Rng::new(13);
    let prev = OwnedFrame::new(WireFormat::Bgra, 32, 16, &[0], &mut rng);
    let mut cur = prev.clone();
    cur.set(0, 0, 0, !prev.planes[0][0]);
    let mut enc = CompactEncoder::new(16, 16, Compression::Off);
    let Delta::Compact(m) = enc.encode(&prev.frame(), &cur.frame(), &request(&cur, 128), 0, 1)
    else {
        panic!()
    };
    let mut dec = Decoder::with_extensions(Limits::default());
    let Some(Decoded::Ext(_, ExtMessage::CompactFrame(good))) =
        dec.decode_ext(&mut &m.to_vec()[..]).unwrap()
    else {
        panic!()
    };
    let layout = FrameLayout::new(WireFormat::Bgra, 32, 16, 128, 2048).unwrap();
    let reference = prev.to_wire(128, 0);
    let check = |cf: &CompactFrame, want: &str| {
        let e = apply_checked(&layout, &reference, cf).unwrap_err();
        assert_eq!(e.to_string(), want);
    };
    let mut cf = good.clone();
    cf.header.request.stride = 132;
    check(&cf, "compact frame does not match its reference: it describes 32x16 format 0x34325241 stride 132, the reference is 32x16 BGRA/BGRx stride 128");
    let mut cf = good.clone();
    cf.header.tile_width = 12;
    check(
        &cf,
        "tile size 12x16 is not allowed (edges must be multiples of 8 in 8..=1024)",
    );
    let mut cf = good.clone();
    cf.body[0] |= 0x04;
    check(
        &cf,
        "inconsistent compact frame: bitmap has bits set past its 2 tiles",
    );
    let mut cf = good.clone();
    cf.body[0] = 0x03;
    check(
        &cf,
        "inconsistent compact frame: changed_tiles 1 but the bitmap has 2 bits set",
    );
    let mut cf = good.clone();
    cf.header.raw_len = 5;
    check(
        &cf,
        "inconsistent compact frame: raw_len 5 but the changed tiles hold 1024 bytes",
    );
    let mut cf = good.clone();
    cf.header.data_len += 1;
    check(
        &cf,
        "inconsistent compact frame: body of 1025 bytes, but bitmap 1 + data_len 1025 expected",
    );
    let mut cf = good.clone();
    cf.header.encoding = TileEncoding::Lz4;
    cf.body.truncate(1);
    cf.body.extend_from_slice(&[0x10, 0x01]);
    cf.header.data_len = 2;
    let e = apply_checked(&layout, &reference, &cf).unwrap_err();
    assert!(matches!(e, CompactError::Decompress(_)), "{e}");
    assert!(
        e.to_string().starts_with("compact frame tile data: "),
        "{e}"
    );
    // A valid block of the wrong length.
    let mut cf = good.clone();
    cf.header.encoding = TileEncoding::Lz4;
    cf.body.truncate(1);
    cf.body.extend_from_slice(&[0x30, 1, 2, 3]);
    cf.header.data_len = 4;
    check(
        &cf,
        "compact frame tile data: LZ4 block decompresses to 3 bytes, raw_len is 1024",
    );
    // A reference buffer shorter than its layout claims.
    let e = compact::apply(&mut [0; 100], &layout, &good, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, CompactError::GeometryMismatch(_)), "{e}");
}

/// Random bytes (with a valid magic and extension types now and then) into
/// an extension decoder: errors, never panics, never allocates past the
/// limits.
#[test]
fn extension_decoder_survives_garbage() {
    let mut rng = Rng::new(14);
    let limits = Limits {
        max_pixel_bytes: 4096,
        max_response_bytes: 4096,
        max_small_payload: 512,
        max_skip_bytes: 8192,
        ..Limits::default()
    };
    for _ in 0..300 {
        let mut stream = Vec::new();
        for _ in 0..20 {
            let t = if rng.chance(80) {
                rng.range(ext_type::FIRST as u64, ext_type::LAST as u64) as u8
            } else {
                rng.next_u64() as u8
            };
            let size = match rng.range(0, 3) {
                0 => rng.next_u64() as u32,
                1 => rng.range(0, 100) as u32,
                _ => rng.range(60, 200) as u32,
            };
            stream.extend_from_slice(&Header::new(t, 0, 1, size).to_bytes());
            let mut body = vec![0u8; (size as usize).min(rng.range(0, 200) as usize)];
            rng.fill(&mut body);
            stream.extend_from_slice(&body);
        }
        let mut dec = Decoder::with_extensions(limits);
        let mut input = &stream[..];
        let ((), allocs) = measure(|| {
            while !input.is_empty() {
                match dec.decode_ext(&mut input) {
                    Err(e) if e.is_fatal() => break,
                    _ => {}
                }
            }
        });
        let largest = allocs.largest;
        assert!(
            largest <= 4096 + 68 + 1024,
            "decoder allocated {largest} bytes"
        );
    }
}
