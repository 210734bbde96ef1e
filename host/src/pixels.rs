//! The guest's pixels as GStreamer buffers: wrapped without copying, with a
//! VideoMeta that gives the encoder the wire strides and plane offsets, and
//! padded to an even size when a frame's width or height is odd (H.264
//! 4:2:0 cannot code odd sizes).

use gst::glib;
use hxfr::{FrameLayout, WireFormat};

use crate::budget::Charged;

/// The size a frame is coded at: H.264 4:2:0 cannot code odd sizes, so odd
/// frames gain one column or row repeating the edge.
pub fn coded_size(width: u32, height: u32) -> (u32, u32) {
    (width + width % 2, height + height % 2)
}

/// The GStreamer format of a wire format (alpha is ignored).
pub fn video_format(format: WireFormat) -> gst_video::VideoFormat {
    use gst_video::VideoFormat as V;
    match format {
        WireFormat::Bgra => V::Bgrx,
        WireFormat::Rgba => V::Rgbx,
        WireFormat::Nv12 => V::Nv12,
        WireFormat::I420 => V::I420,
        WireFormat::Yv12 => V::Yv12,
        WireFormat::Yuy2 => V::Yuy2,
        WireFormat::Uyvy => V::Uyvy,
    }
}

/// Wraps the guest's pixels into a buffer without copying (odd sizes are
/// the exception: they are padded to even), with a VideoMeta that tells the
/// encoder the wire strides and plane offsets.
pub fn frame_buffer(
    layout: &FrameLayout,
    pixels: Charged,
    pts: gst::ClockTime,
    duration: gst::ClockTime,
) -> Result<gst::Buffer, glib::BoolError> {
    let (w, h) = coded_size(layout.width, layout.height);
    let (pixels, layout) = if (w, h) == (layout.width, layout.height) {
        (pixels, *layout)
    } else {
        let (padded, stride, _) = pad_to_even(layout, &pixels.pixels);
        let even = FrameLayout::new(layout.format, w, h, stride as u32, padded.len())
            .map_err(|e| glib::bool_error!("padded frame: {e}"))?;
        // The padded copy replaces the pixels and keeps their grant.
        (pixels.replace(padded), even)
    };
    let (offsets, strides): (Vec<usize>, Vec<i32>) =
        layout.planes().map(|p| (p.offset, p.stride as i32)).unzip();
    let mut buffer = gst::Buffer::from_mut_slice(pixels);
    {
        let b = buffer.get_mut().expect("a new buffer is writable");
        b.set_pts(pts);
        b.set_duration(duration);
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            video_format(layout.format),
            w,
            h,
            &offsets,
            &strides,
        )?;
    }
    Ok(buffer)
}

/// Copies a frame of odd width or height into the tightest wire layout of
/// the next even size, repeating the last column and row. Returns the
/// pixels, their stride and the offsets of the first two planes (as a
/// [`FrameLayout`] of the even size has them).
fn pad_to_even(l: &FrameLayout, px: &[u8]) -> (Vec<u8>, usize, [usize; 2]) {
    let (w2, h2) = coded_size(l.width, l.height);
    let stride = l.format.min_stride(w2) as u32;
    let size = l.format.frame_bytes(h2, stride) as usize;
    let even = FrameLayout::new(l.format, w2, h2, stride, size).expect("an even layout");
    let mut out = vec![0u8; size];
    for p in 0..l.n_planes {
        let (src, dst) = (l.plane(p), even.plane(p));
        for y in 0..dst.rows {
            let from = &px[src.offset + y.min(src.rows - 1) * src.stride..][..src.row_bytes];
            let to = &mut out[dst.offset + y * dst.stride..][..dst.row_bytes];
            to[..src.row_bytes].copy_from_slice(from);
            // A wider row gains one pixel: a copy of the last one. (The
            // chroma rows of odd sizes already cover the even size.)
            let extra = dst.row_bytes - src.row_bytes;
            if extra > 0 {
                to[src.row_bytes..].copy_from_slice(&from[src.row_bytes - extra..]);
            }
            repeat_last_luma_of_packed_row(l.format, l.width, to);
        }
    }
    (out, stride as usize, even.offsets)
}

/// In a packed 4:2:2 row of odd width, the last macropixel's second luma
/// sample lies outside the picture: make it a copy of the first.
fn repeat_last_luma_of_packed_row(format: WireFormat, width: u32, row: &mut [u8]) {
    if width.is_multiple_of(2) {
        return;
    }
    let last = 4 * (width as usize / 2);
    match format {
        WireFormat::Yuy2 => row[last + 2] = row[last],
        WireFormat::Uyvy => row[last + 3] = row[last + 1],
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_rgb_frames_repeat_their_edges() {
        let l = FrameLayout::new(WireFormat::Bgra, 3, 1, 16, 16).unwrap();
        let px: Vec<u8> = (0..16).collect();
        let (out, stride, _) = pad_to_even(&l, &px);
        assert_eq!(stride, 16);
        assert_eq!(out.len(), 32);
        assert_eq!(&out[..12], &px[..12]);
        assert_eq!(&out[12..16], &px[8..12]);
        assert_eq!(&out[16..], &out[..16]);
    }

    #[test]
    fn odd_nv12_frames_keep_their_chroma() {
        // 3x3: Y stride 4 (>= 2*ceil(3/2)), UV 2 rows.
        let l = FrameLayout::new(WireFormat::Nv12, 3, 3, 4, 20).unwrap();
        let px: Vec<u8> = (0..20).collect();
        let (out, stride, offsets) = pad_to_even(&l, &px);
        assert_eq!((stride, offsets), (4, [0, 16]));
        assert_eq!(
            &out[..16],
            &[0, 1, 2, 2, 4, 5, 6, 6, 8, 9, 10, 10, 8, 9, 10, 10]
        );
        assert_eq!(&out[16..], &px[12..20]);
    }

    #[test]
    fn odd_i420_frames_keep_their_chroma_planes() {
        // 3x3, stride 4: Y 3 rows of 4, U and V 2 rows of 2 each.
        let l = FrameLayout::new(WireFormat::I420, 3, 3, 4, 20).unwrap();
        let px: Vec<u8> = (0..20).collect();
        let (out, stride, offsets) = pad_to_even(&l, &px);
        assert_eq!((stride, offsets), (4, [0, 16]));
        assert_eq!(
            &out[..16],
            &[0, 1, 2, 2, 4, 5, 6, 6, 8, 9, 10, 10, 8, 9, 10, 10]
        );
        assert_eq!(&out[16..], &px[12..20], "U then V, 2x2 each");
    }

    #[test]
    fn odd_packed_yuv_frames_repeat_their_last_luma() {
        // YUY2 3x1: two macropixels (8 bytes), the last Y1 outside the picture.
        let l = FrameLayout::new(WireFormat::Yuy2, 3, 1, 8, 8).unwrap();
        let px = [10, 128, 11, 129, 12, 130, 99, 131];
        let (out, stride, _) = pad_to_even(&l, &px);
        assert_eq!(stride, 8);
        assert_eq!(&out[..8], &[10, 128, 11, 129, 12, 130, 12, 131]);
        assert_eq!(&out[8..], &out[..8], "the odd row repeats");
        let l = FrameLayout::new(WireFormat::Uyvy, 1, 2, 4, 8).unwrap();
        let (out, _, _) = pad_to_even(&l, &[128, 20, 130, 99, 128, 21, 130, 98]);
        assert_eq!(out, [128, 20, 130, 20, 128, 21, 130, 21]);
    }
}
