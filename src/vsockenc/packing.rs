//! Turning a mapped video frame into the pixel slices of a FRAME_REQUEST,
//! without copying it.
//!
//! * BGRx/BGRA/RGBx/RGBA: plane 0 goes out as one slice with the buffer's
//!   own stride (from `GstVideoMeta` when there is one); hosts honour the
//!   stride of RGB frames.
//! * NV12: legacy hosts assume a tightly packed frame (Y stride = width, UV
//!   right after Y), so the wire stride is the width rounded up to even. A
//!   buffer that already has that stride goes out as two slices (Y and UV,
//!   wherever they are in memory); a padded one goes out as one slice per
//!   row, which `writev` gathers without a user-space copy.
//!
//! See `hxfr::layout` for the wire layout the host checks.

use hxfr::WireFormat;

/// One plane of a mapped frame.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
}

/// The pixels of one frame as they go on the wire.
#[derive(Debug)]
pub struct Packed<'a> {
    /// The stride announced in the FRAME_REQUEST.
    pub stride: u32,
    pub slices: Vec<&'a [u8]>,
}

impl Packed<'_> {
    /// Pixel bytes on the wire.
    pub fn len(&self) -> usize {
        self.slices.iter().map(|s| s.len()).sum()
    }
}

/// The wire format of a GStreamer raw video format, if it can travel.
pub fn wire_format(f: gst_video::VideoFormat) -> Option<WireFormat> {
    use gst_video::VideoFormat as V;
    match f {
        V::Bgrx | V::Bgra => Some(WireFormat::Bgra),
        V::Rgbx | V::Rgba => Some(WireFormat::Rgba),
        V::Nv12 => Some(WireFormat::Nv12),
        _ => None,
    }
}

/// Lays out `planes` for the wire. Errors say what does not fit.
pub fn pack<'a>(
    format: WireFormat,
    width: u32,
    height: u32,
    planes: &[Plane<'a>],
) -> Result<Packed<'a>, String> {
    let (w, h) = (width as usize, height as usize);
    match format {
        WireFormat::Bgra | WireFormat::Rgba => {
            let p = planes.first().ok_or("frame has no plane")?;
            let need = p.stride * h;
            if p.stride < 4 * w || p.data.len() < need {
                return Err(format!(
                    "plane 0 of {} bytes with stride {} cannot hold {w}x{h} {format}",
                    p.data.len(),
                    p.stride
                ));
            }
            Ok(Packed {
                stride: p.stride as u32,
                slices: vec![&p.data[..need]],
            })
        }
        WireFormat::Nv12 => {
            let [y, uv] = match planes {
                [y, uv, ..] => [*y, *uv],
                _ => return Err("NV12 frame without two planes".into()),
            };
            let row = w.div_ceil(2) * 2;
            let uv_rows = h.div_ceil(2);
            for (name, p, rows) in [("Y", y, h), ("UV", uv, uv_rows)] {
                if p.stride < row || p.data.len() < p.stride * (rows - 1) + row {
                    return Err(format!(
                        "NV12 {name} plane of {} bytes with stride {} cannot hold {rows} rows of {row} bytes",
                        p.data.len(),
                        p.stride
                    ));
                }
            }
            let slices = if y.stride == row && uv.stride == row {
                vec![&y.data[..row * h], &uv.data[..row * uv_rows]]
            } else {
                let rows_of = |p: Plane<'a>, n: usize| {
                    (0..n).map(move |i| &p.data[i * p.stride..i * p.stride + row])
                };
                rows_of(y, h).chain(rows_of(uv, uv_rows)).collect()
            };
            Ok(Packed {
                stride: row as u32,
                slices,
            })
        }
        // `wire_format` never picks the negotiated formats (I420, YV12,
        // YUY2, UYVY) yet.
        _ => Err(format!("{format} frames are not packed by this element")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hxfr::FrameLayout;

    fn concat(p: &Packed) -> Vec<u8> {
        p.slices.concat()
    }

    #[test]
    fn rgb_keeps_the_buffer_stride_in_one_slice() {
        let data: Vec<u8> = (0..(20 * 3)).map(|i| i as u8).collect();
        let p = pack(
            WireFormat::Bgra,
            4,
            3,
            &[Plane {
                data: &data,
                stride: 20,
            }],
        )
        .unwrap();
        assert_eq!(p.stride, 20);
        assert_eq!(p.slices.len(), 1);
        assert!(FrameLayout::new(WireFormat::Bgra, 4, 3, p.stride, p.len()).is_ok());
    }

    #[test]
    fn padded_nv12_is_sent_tightly_packed_row_by_row() {
        // 5x3 NV12 with stride 8: wire stride 6, 3 Y rows and 2 UV rows.
        let y: Vec<u8> = (0..24).collect();
        let uv: Vec<u8> = (100..116).collect();
        let p = pack(
            WireFormat::Nv12,
            5,
            3,
            &[
                Plane {
                    data: &y,
                    stride: 8,
                },
                Plane {
                    data: &uv,
                    stride: 8,
                },
            ],
        )
        .unwrap();
        assert_eq!(p.stride, 6);
        assert_eq!(p.slices.len(), 5);
        let bytes = concat(&p);
        assert_eq!(&bytes[..6], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(&bytes[6..12], &[8, 9, 10, 11, 12, 13]);
        assert_eq!(&bytes[18..24], &[100, 101, 102, 103, 104, 105]);
        assert_eq!(&bytes[24..30], &[108, 109, 110, 111, 112, 113]);
        let layout = FrameLayout::new(WireFormat::Nv12, 5, 3, p.stride, p.len()).unwrap();
        assert_eq!(layout.size, p.len());
    }

    #[test]
    fn tight_nv12_goes_out_as_two_slices() {
        let y = vec![1u8; 4 * 2];
        let uv = vec![2u8; 4];
        let p = pack(
            WireFormat::Nv12,
            4,
            2,
            &[
                Plane {
                    data: &y,
                    stride: 4,
                },
                Plane {
                    data: &uv,
                    stride: 4,
                },
            ],
        )
        .unwrap();
        assert_eq!(p.slices.len(), 2);
        assert_eq!(p.len(), 12);
    }

    #[test]
    fn short_planes_are_refused() {
        let y = vec![0u8; 10];
        assert!(pack(
            WireFormat::Bgra,
            4,
            3,
            &[Plane {
                data: &y,
                stride: 16
            }]
        )
        .is_err());
        assert!(pack(
            WireFormat::Nv12,
            4,
            3,
            &[Plane {
                data: &y,
                stride: 4
            }]
        )
        .is_err());
    }
}
