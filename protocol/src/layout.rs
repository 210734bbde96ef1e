//! Pixel layouts on the wire and the checks a host applies to a frame.
//!
//! * BGRA/BGRx (`AR24`) and RGBA/RGBx (`AB24`): `height` rows of `stride`
//!   bytes, `stride >= 4 * width`.
//! * NV12: the Y plane (`height` rows of `stride` bytes) immediately followed
//!   by the interleaved UV plane (`ceil(height / 2)` rows of the same
//!   `stride`), `stride >= 2 * ceil(width / 2)`. The legacy host ignores the
//!   stride of NV12 and assumes `stride == width`, so `vsockenc` always sends
//!   NV12 with the smallest stride (`width` rounded up to even).
//!
//! Formats a guest may send only after the FORMATS extension was accepted
//! ([`WireFormat::NEGOTIATED`]), never in a COMPACT_FRAME:
//!
//! * I420 (`YU12`) and YV12 (`YV12`): the Y plane (`height` rows of
//!   `stride` bytes), then the two chroma planes of `ceil(height / 2)` rows
//!   of `ceil(stride / 2)` bytes each, U then V for I420 and V then U for
//!   YV12, `stride >= width`.
//! * YUY2 (`YUYV`) and UYVY (`UYVY`): `height` rows of `stride` bytes, each
//!   row `ceil(width / 2)` macropixels of 4 bytes (Y0 U Y1 V, resp. U Y0 V
//!   Y1), `stride >= 4 * ceil(width / 2)`.
//!
//! The pixel block may be longer than the layout needs (the legacy guest sent
//! whole GStreamer buffers); the extra bytes are ignored.

use std::fmt;

use crate::message::FrameRequest;

/// Largest width or height either side accepts.
pub const MAX_DIMENSION: u32 = 8192;

/// Pixel formats that can travel on the wire, with their DRM fourccs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// `AR24` (DRM ARGB8888): bytes B, G, R, A in memory; also used for BGRx.
    Bgra,
    /// `AB24` (DRM ABGR8888): bytes R, G, B, A in memory; also used for RGBx.
    Rgba,
    /// `NV12`: 8-bit Y plane, then interleaved U/V at half resolution.
    Nv12,
    /// `YU12` (DRM YUV420): Y, U and V planes, chroma at half resolution.
    /// Negotiated (FORMATS).
    I420,
    /// `YV12` (DRM YVU420): like I420 with V before U. Negotiated.
    Yv12,
    /// `YUYV` (DRM YUYV, GStreamer YUY2): packed 4:2:2, bytes Y0 U Y1 V.
    /// Negotiated.
    Yuy2,
    /// `UYVY`: packed 4:2:2, bytes U Y0 V Y1. Negotiated.
    Uyvy,
}

impl WireFormat {
    /// The formats of legacy HXFR, which every peer accepts and compact
    /// frames carry.
    pub const ALL: [WireFormat; 3] = [WireFormat::Bgra, WireFormat::Rgba, WireFormat::Nv12];

    /// The formats a guest sends only after the host accepted the FORMATS
    /// extension, and only in full FRAME_REQUESTs.
    pub const NEGOTIATED: [WireFormat; 4] = [
        WireFormat::I420,
        WireFormat::Yv12,
        WireFormat::Yuy2,
        WireFormat::Uyvy,
    ];

    pub fn fourcc(self) -> u32 {
        match self {
            WireFormat::Bgra => 0x3432_5241,
            WireFormat::Rgba => 0x3432_4241,
            WireFormat::Nv12 => 0x3231_564E,
            WireFormat::I420 => 0x3231_5559,
            WireFormat::Yv12 => 0x3231_5659,
            WireFormat::Yuy2 => 0x5659_5559,
            WireFormat::Uyvy => 0x5956_5955,
        }
    }

    /// A legacy format ([`WireFormat::ALL`]), as every HXFR peer knows them.
    pub fn from_fourcc(fourcc: u32) -> Option<Self> {
        WireFormat::ALL.into_iter().find(|f| f.fourcc() == fourcc)
    }

    /// Any format, the negotiated ones included.
    pub fn from_fourcc_ext(fourcc: u32) -> Option<Self> {
        WireFormat::ALL
            .into_iter()
            .chain(WireFormat::NEGOTIATED)
            .find(|f| f.fourcc() == fourcc)
    }

    /// Whether the format needs the FORMATS extension.
    pub fn is_negotiated(self) -> bool {
        WireFormat::NEGOTIATED.contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            WireFormat::Bgra => "BGRA/BGRx",
            WireFormat::Rgba => "RGBA/RGBx",
            WireFormat::Nv12 => "NV12",
            WireFormat::I420 => "I420",
            WireFormat::Yv12 => "YV12",
            WireFormat::Yuy2 => "YUY2",
            WireFormat::Uyvy => "UYVY",
        }
    }

    /// Number of planes on the wire.
    pub fn n_planes(self) -> usize {
        match self {
            WireFormat::Bgra | WireFormat::Rgba | WireFormat::Yuy2 | WireFormat::Uyvy => 1,
            WireFormat::Nv12 => 2,
            WireFormat::I420 | WireFormat::Yv12 => 3,
        }
    }

    /// Rows and visible bytes per row of plane `p` (in wire order) of a
    /// `width` x `height` frame.
    pub fn plane_size(self, p: usize, width: u32, height: u32) -> (usize, usize) {
        let (w, h) = (width as usize, height as usize);
        match (self, p) {
            (WireFormat::Bgra | WireFormat::Rgba, _) => (h, 4 * w),
            (WireFormat::Yuy2 | WireFormat::Uyvy, _) => (h, 4 * w.div_ceil(2)),
            (_, 0) => (h, w),
            (WireFormat::Nv12, _) => (h.div_ceil(2), 2 * w.div_ceil(2)),
            _ => (h.div_ceil(2), w.div_ceil(2)),
        }
    }

    /// Bytes per row of plane `p` on the wire, for the FRAME_REQUEST's
    /// `stride` (the stride of plane 0): the same for every plane except
    /// the chroma planes of I420 and YV12, `ceil(stride / 2)`.
    pub fn plane_stride(self, p: usize, stride: u32) -> usize {
        match self {
            WireFormat::I420 | WireFormat::Yv12 if p > 0 => (stride as usize).div_ceil(2),
            _ => stride as usize,
        }
    }

    /// Bytes of one row of the widest plane: the smallest valid stride.
    pub fn min_stride(self, width: u32) -> u64 {
        match self {
            WireFormat::Bgra | WireFormat::Rgba => 4 * width as u64,
            WireFormat::Nv12 => 2 * (width as u64).div_ceil(2),
            WireFormat::I420 | WireFormat::Yv12 => width as u64,
            WireFormat::Yuy2 | WireFormat::Uyvy => 4 * (width as u64).div_ceil(2),
        }
    }

    /// Bytes the layout occupies for this size and stride.
    pub fn frame_bytes(self, height: u32, stride: u32) -> u64 {
        let (h, s) = (height as u64, stride as u64);
        match self {
            WireFormat::Bgra | WireFormat::Rgba | WireFormat::Yuy2 | WireFormat::Uyvy => h * s,
            WireFormat::Nv12 => (h + h.div_ceil(2)) * s,
            WireFormat::I420 | WireFormat::Yv12 => h * s + 2 * h.div_ceil(2) * s.div_ceil(2),
        }
    }
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the planes of a validated frame are inside its pixel block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    pub format: WireFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per row of plane 0 (the FRAME_REQUEST's stride).
    pub stride: u32,
    /// Offset of the first two planes (NV12: Y, UV; I420: Y, U; YV12: Y, V;
    /// packed formats: one). The third plane of I420 and YV12 follows the
    /// second directly; [`FrameLayout::plane`] describes every plane.
    pub offsets: [usize; 2],
    pub n_planes: usize,
    /// Bytes the layout uses (the block may be longer).
    pub size: usize,
}

/// One plane of a frame inside its pixel block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plane {
    pub offset: usize,
    pub stride: usize,
    pub rows: usize,
    /// Visible bytes of each row (the rest of the stride is padding).
    pub row_bytes: usize,
}

/// Why a frame's description does not fit its pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    UnknownFormat(u32),
    /// A format of [`WireFormat::NEGOTIATED`] from a peer that did not
    /// negotiate the FORMATS extension.
    NotNegotiated(WireFormat),
    BadDimensions {
        width: u32,
        height: u32,
    },
    StrideTooSmall {
        stride: u32,
        min: u64,
        format: WireFormat,
        width: u32,
    },
    NotEnoughPixels {
        have: usize,
        need: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::UnknownFormat(fourcc) => write!(
                f,
                "unknown pixel format 0x{fourcc:08x} (supported: AR24 0x34325241 BGRA/BGRx, AB24 0x34324241 RGBA/RGBx, NV12 0x3231564e)"
            ),
            LayoutError::NotNegotiated(format) => write!(
                f,
                "pixel format {format} (0x{:08x}) may only be sent after the host accepted the FORMATS extension",
                format.fourcc()
            ),
            LayoutError::BadDimensions { width, height } => write!(
                f,
                "frame size {width}x{height} is outside 1..{MAX_DIMENSION} in either dimension"
            ),
            LayoutError::StrideTooSmall {
                stride,
                min,
                format,
                width,
            } => write!(
                f,
                "stride {stride} is below the {min} bytes a {format} row of width {width} needs"
            ),
            LayoutError::NotEnoughPixels { have, need } => write!(
                f,
                "pixel block of {have} bytes is shorter than the {need} bytes its size, format and stride need"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

impl FrameLayout {
    /// Checks a frame request against the pixel bytes that came with it;
    /// only the legacy formats ([`WireFormat::ALL`]) are known.
    pub fn validate(req: &FrameRequest, pixel_len: usize) -> Result<FrameLayout, LayoutError> {
        let format =
            WireFormat::from_fourcc(req.format).ok_or(LayoutError::UnknownFormat(req.format))?;
        FrameLayout::new(format, req.width, req.height, req.stride, pixel_len)
    }

    /// Like [`FrameLayout::validate`], for a peer that negotiated FORMATS
    /// (`formats`) or not: a negotiated format from a peer that did not is
    /// [`LayoutError::NotNegotiated`].
    pub fn validate_ext(
        req: &FrameRequest,
        pixel_len: usize,
        formats: bool,
    ) -> Result<FrameLayout, LayoutError> {
        let format = WireFormat::from_fourcc_ext(req.format)
            .ok_or(LayoutError::UnknownFormat(req.format))?;
        if format.is_negotiated() && !formats {
            return Err(LayoutError::NotNegotiated(format));
        }
        FrameLayout::new(format, req.width, req.height, req.stride, pixel_len)
    }

    /// Plane `p` (in wire order; `p < n_planes`).
    pub fn plane(&self, p: usize) -> Plane {
        let (rows, row_bytes) = self.format.plane_size(p, self.width, self.height);
        let offset = match p {
            0 | 1 => self.offsets[p],
            _ => {
                let (rows1, _) = self.format.plane_size(1, self.width, self.height);
                self.offsets[1] + rows1 * self.format.plane_stride(1, self.stride)
            }
        };
        Plane {
            offset,
            stride: self.format.plane_stride(p, self.stride),
            rows,
            row_bytes,
        }
    }

    /// Every plane, in wire order.
    pub fn planes(&self) -> impl Iterator<Item = Plane> + '_ {
        (0..self.n_planes).map(|p| self.plane(p))
    }

    pub fn new(
        format: WireFormat,
        width: u32,
        height: u32,
        stride: u32,
        pixel_len: usize,
    ) -> Result<FrameLayout, LayoutError> {
        if !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
            return Err(LayoutError::BadDimensions { width, height });
        }
        let min = format.min_stride(width);
        if (stride as u64) < min {
            return Err(LayoutError::StrideTooSmall {
                stride,
                min,
                format,
                width,
            });
        }
        let need = format.frame_bytes(height, stride);
        if (pixel_len as u64) < need {
            return Err(LayoutError::NotEnoughPixels {
                have: pixel_len,
                need,
            });
        }
        let n_planes = format.n_planes();
        let offsets = match n_planes {
            1 => [0, 0],
            _ => [0, stride as usize * height as usize],
        };
        Ok(FrameLayout {
            format,
            width,
            height,
            stride,
            offsets,
            n_planes,
            size: need as usize,
        })
    }
}
