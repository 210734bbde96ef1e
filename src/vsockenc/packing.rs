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
//! * I420/YV12 (negotiated, FORMATS): three planes, the chroma ones with
//!   stride `ceil(stride / 2)` on the wire. A buffer whose strides already
//!   fit goes out as three slices; otherwise the stride is chosen so that
//!   every row fits in its source row and rows go out one slice each.
//! * YUY2/UYVY (negotiated): one plane, sent as it is, like RGB.
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
        V::I420 => Some(WireFormat::I420),
        V::Yv12 => Some(WireFormat::Yv12),
        V::Yuy2 => Some(WireFormat::Yuy2),
        V::Uyvy => Some(WireFormat::Uyvy),
        _ => None,
    }
}

/// One plane of `rows` rows at `stride` on the wire, from a source plane:
/// one slice when the strides agree, one slice per row otherwise (`stride`
/// must not exceed the source's).
fn plane_slices(p: Plane<'_>, rows: usize, stride: usize) -> Vec<&[u8]> {
    if rows == 0 {
        return Vec::new();
    }
    if p.stride == stride && p.data.len() >= stride * rows {
        return vec![&p.data[..stride * rows]];
    }
    (0..rows)
        .map(|i| &p.data[i * p.stride..i * p.stride + stride])
        .collect()
}

/// Checks that `p` holds `rows` rows of `row` visible bytes, each
/// followed by room up to `stride` bytes in its source row.
fn check_plane(
    name: &str,
    p: &Plane,
    rows: usize,
    row: usize,
    stride: usize,
) -> Result<(), String> {
    if p.stride < row || stride > p.stride || p.data.len() < p.stride * (rows - 1) + stride {
        return Err(format!(
            "{name} plane of {} bytes with stride {} cannot hold {rows} rows of {row} bytes sent at stride {stride}",
            p.data.len(),
            p.stride
        ));
    }
    Ok(())
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
        WireFormat::Yuy2 | WireFormat::Uyvy => {
            let p = planes.first().ok_or("frame has no plane")?;
            let row = 4 * w.div_ceil(2);
            check_plane("packed 4:2:2", p, h, row, p.stride)?;
            Ok(Packed {
                stride: p.stride as u32,
                slices: plane_slices(*p, h, p.stride),
            })
        }
        WireFormat::I420 | WireFormat::Yv12 => {
            let [y, u, v] = match planes {
                [y, u, v, ..] => [*y, *u, *v],
                _ => return Err(format!("{format} frame without three planes")),
            };
            // The widest wire stride every source row has room for: chroma
            // rows go out at ceil(stride / 2), so it is at most twice the
            // narrower chroma stride.
            let stride = y.stride.min(2 * u.stride.min(v.stride));
            let (c_rows, c_row) = format.plane_size(1, width, height);
            let c_stride = format.plane_stride(1, stride as u32);
            check_plane("Y", &y, h, w, stride)?;
            check_plane("first chroma", &u, c_rows, c_row, c_stride)?;
            check_plane("second chroma", &v, c_rows, c_row, c_stride)?;
            let mut slices = plane_slices(y, h, stride);
            slices.extend(plane_slices(u, c_rows, c_stride));
            slices.extend(plane_slices(v, c_rows, c_stride));
            Ok(Packed {
                stride: stride as u32,
                slices,
            })
        }
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
    fn i420_with_gstreamer_strides_is_laid_out_as_the_host_reads_it() {
        // Width 100: GStreamer's Y stride 100, chroma stride 52, not 50.
        let (w, h) = (100u32, 4u32);
        let y: Vec<u8> = (0..100 * 4).map(|i| i as u8).collect();
        let u: Vec<u8> = (0..52 * 2).map(|i| 200 - i as u8).collect();
        let v: Vec<u8> = (0..52 * 2).map(|i| 100 + i as u8).collect();
        let planes = [
            Plane {
                data: &y,
                stride: 100,
            },
            Plane {
                data: &u,
                stride: 52,
            },
            Plane {
                data: &v,
                stride: 52,
            },
        ];
        let p = pack(WireFormat::I420, w, h, &planes).unwrap();
        assert_eq!(p.stride, 100, "chroma goes out at 50 bytes a row");
        let bytes = concat(&p);
        let layout = FrameLayout::new(WireFormat::I420, w, h, p.stride, bytes.len()).unwrap();
        for (i, src) in [&u, &v].iter().enumerate() {
            let wire = layout.plane(i + 1);
            for row in 0..2 {
                let got = &bytes[wire.offset + row * wire.stride..][..50];
                assert_eq!(
                    got,
                    &src[row * 52..row * 52 + 50],
                    "chroma plane {i} row {row}"
                );
            }
        }
        assert_eq!(&bytes[..100], &y[..100]);
    }

    #[test]
    fn i420_whose_strides_fit_goes_out_as_three_slices() {
        let y = vec![1u8; 64 * 2];
        let c = vec![2u8; 32];
        let planes = [
            Plane {
                data: &y,
                stride: 64,
            },
            Plane {
                data: &c,
                stride: 32,
            },
            Plane {
                data: &c,
                stride: 32,
            },
        ];
        let p = pack(WireFormat::I420, 64, 2, &planes).unwrap();
        assert_eq!(p.slices.len(), 3);
        assert!(FrameLayout::new(WireFormat::I420, 64, 2, p.stride, p.len()).is_ok());
    }

    #[test]
    fn packed_yuv_goes_out_with_its_stride() {
        let data = vec![7u8; 20 * 3];
        let p = pack(
            WireFormat::Yuy2,
            5,
            3,
            &[Plane {
                data: &data,
                stride: 20,
            }],
        )
        .unwrap();
        assert_eq!(p.stride, 20);
        assert_eq!(p.slices.len(), 1);
        assert!(FrameLayout::new(WireFormat::Yuy2, 5, 3, 20, p.len()).is_ok());
        let short = vec![0u8; 10];
        assert!(pack(
            WireFormat::Uyvy,
            5,
            3,
            &[Plane {
                data: &short,
                stride: 10
            }]
        )
        .is_err());
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
