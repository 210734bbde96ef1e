//! Pixel layouts: the checks a host applies to a guest's frame before it
//! touches the pixels.

use hxfr::{FrameLayout, FrameRequest, LayoutError, WireFormat, MAX_DIMENSION};

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
fn fourccs_are_the_drm_codes_of_protocol_md() {
    assert_eq!(WireFormat::Bgra.fourcc(), 0x3432_5241);
    assert_eq!(WireFormat::Rgba.fourcc(), 0x3432_4241);
    assert_eq!(WireFormat::Nv12.fourcc(), 0x3231_564E);
    assert_eq!(&WireFormat::Bgra.fourcc().to_le_bytes(), b"AR24");
    assert_eq!(&WireFormat::Rgba.fourcc().to_le_bytes(), b"AB24");
    assert_eq!(&WireFormat::Nv12.fourcc().to_le_bytes(), b"NV12");
    for f in WireFormat::ALL {
        assert_eq!(WireFormat::from_fourcc(f.fourcc()), Some(f));
    }
    assert_eq!(WireFormat::from_fourcc(0x3231_5559), None); // YU12
}

#[test]
fn rgb_layout() {
    let l = FrameLayout::validate(&req(WireFormat::Bgra, 640, 360, 2560), 2560 * 360).unwrap();
    assert_eq!(l.n_planes, 1);
    assert_eq!(l.offsets[0], 0);
    assert_eq!(l.size, 2560 * 360);
    // Padded rows are fine.
    let l = FrameLayout::validate(&req(WireFormat::Rgba, 10, 3, 64), 64 * 3).unwrap();
    assert_eq!(l.size, 192);
}

#[test]
fn nv12_layout_is_y_then_uv_at_the_same_stride() {
    let l = FrameLayout::validate(&req(WireFormat::Nv12, 640, 360, 640), 640 * 540).unwrap();
    assert_eq!(l.n_planes, 2);
    assert_eq!(l.offsets, [0, 640 * 360]);
    assert_eq!(l.size, 640 * 540);
}

/// Odd NV12 sizes: the chroma plane has ceil(h/2) rows and each row holds
/// ceil(w/2) UV pairs, so the minimum stride is w rounded up to even.
#[test]
fn nv12_odd_sizes() {
    assert_eq!(WireFormat::Nv12.min_stride(641), 642);
    assert_eq!(WireFormat::Nv12.min_stride(1), 2);
    assert_eq!(WireFormat::Nv12.frame_bytes(361, 642), 642 * (361 + 181));
    let l = FrameLayout::validate(&req(WireFormat::Nv12, 641, 361, 642), 642 * 542).unwrap();
    assert_eq!(l.offsets[1], 642 * 361);
    assert_eq!(l.size, 642 * 542);
    // Stride = width (odd) is one byte short for the last UV pair.
    assert_eq!(
        FrameLayout::validate(&req(WireFormat::Nv12, 641, 361, 641), 1 << 20),
        Err(LayoutError::StrideTooSmall {
            stride: 641,
            min: 642,
            format: WireFormat::Nv12,
            width: 641
        })
    );
    // One byte fewer than the last chroma row needs.
    assert_eq!(
        FrameLayout::validate(&req(WireFormat::Nv12, 3, 3, 4), 4 * 5 - 1),
        Err(LayoutError::NotEnoughPixels { have: 19, need: 20 })
    );
    let l = FrameLayout::validate(&req(WireFormat::Nv12, 1, 1, 2), 4).unwrap();
    assert_eq!(l.offsets, [0, 2]);
}

#[test]
fn dimensions_outside_1_to_8192_are_refused() {
    for (w, h) in [
        (0, 1),
        (1, 0),
        (0, 0),
        (MAX_DIMENSION + 1, 1),
        (1, MAX_DIMENSION + 1),
        (u32::MAX, u32::MAX),
    ] {
        let e =
            FrameLayout::validate(&req(WireFormat::Bgra, w, h, u32::MAX), usize::MAX).unwrap_err();
        assert_eq!(
            e,
            LayoutError::BadDimensions {
                width: w,
                height: h
            }
        );
        assert_eq!(
            e.to_string(),
            format!("frame size {w}x{h} is outside 1..8192 in either dimension")
        );
    }
    // The largest size is fine.
    let s = 4 * MAX_DIMENSION;
    FrameLayout::validate(
        &req(WireFormat::Bgra, MAX_DIMENSION, MAX_DIMENSION, s),
        s as usize * 8192,
    )
    .unwrap();
}

#[test]
fn stride_below_a_row_is_refused() {
    let e = FrameLayout::validate(&req(WireFormat::Bgra, 640, 360, 2559), 1 << 30).unwrap_err();
    assert_eq!(
        e.to_string(),
        "stride 2559 is below the 2560 bytes a BGRA/BGRx row of width 640 needs"
    );
    // The legacy host's NV12 assumption (stride = width) is the minimum.
    FrameLayout::validate(&req(WireFormat::Nv12, 640, 360, 640), 640 * 540).unwrap();
    assert!(FrameLayout::validate(&req(WireFormat::Nv12, 640, 360, 639), 1 << 30).is_err());
}

#[test]
fn too_few_pixels_are_refused_and_extra_bytes_ignored() {
    let e = FrameLayout::validate(&req(WireFormat::Rgba, 2, 2, 8), 15).unwrap_err();
    assert_eq!(e, LayoutError::NotEnoughPixels { have: 15, need: 16 });
    assert_eq!(
        e.to_string(),
        "pixel block of 15 bytes is shorter than the 16 bytes its size, format and stride need"
    );
    // The legacy guest sent whole GStreamer buffers, longer than needed.
    let l = FrameLayout::validate(&req(WireFormat::Rgba, 2, 2, 8), 4096).unwrap();
    assert_eq!(l.size, 16);
}

#[test]
fn unknown_format_is_refused_with_its_code() {
    let mut r = req(WireFormat::Bgra, 2, 2, 8);
    r.format = 0x3231_5559;
    let e = FrameLayout::validate(&r, 16).unwrap_err();
    assert_eq!(e, LayoutError::UnknownFormat(0x3231_5559));
    assert!(e.to_string().starts_with("unknown pixel format 0x32315559"));
}

/// Huge strides and heights cannot overflow the size computation.
#[test]
fn sizes_do_not_overflow() {
    let e =
        FrameLayout::validate(&req(WireFormat::Nv12, 8192, 8192, u32::MAX), 1 << 20).unwrap_err();
    assert_eq!(
        e,
        LayoutError::NotEnoughPixels {
            have: 1 << 20,
            need: u32::MAX as u64 * (8192 + 4096)
        }
    );
}
