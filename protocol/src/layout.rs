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
}

impl WireFormat {
    pub const ALL: [WireFormat; 3] = [WireFormat::Bgra, WireFormat::Rgba, WireFormat::Nv12];

    pub fn fourcc(self) -> u32 {
        match self {
            WireFormat::Bgra => 0x3432_5241,
            WireFormat::Rgba => 0x3432_4241,
            WireFormat::Nv12 => 0x3231_564E,
        }
    }

    pub fn from_fourcc(fourcc: u32) -> Option<Self> {
        WireFormat::ALL.into_iter().find(|f| f.fourcc() == fourcc)
    }

    pub fn name(self) -> &'static str {
        match self {
            WireFormat::Bgra => "BGRA/BGRx",
            WireFormat::Rgba => "RGBA/RGBx",
            WireFormat::Nv12 => "NV12",
        }
    }

    /// Bytes of one row of the widest plane: the smallest valid stride.
    pub fn min_stride(self, width: u32) -> u64 {
        match self {
            WireFormat::Bgra | WireFormat::Rgba => 4 * width as u64,
            WireFormat::Nv12 => 2 * (width as u64).div_ceil(2),
        }
    }

    /// Bytes the layout occupies for this size and stride.
    pub fn frame_bytes(self, height: u32, stride: u32) -> u64 {
        let rows: u64 = match self {
            WireFormat::Bgra | WireFormat::Rgba => height as u64,
            WireFormat::Nv12 => height as u64 + (height as u64).div_ceil(2),
        };
        rows * stride as u64
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
    pub stride: u32,
    /// Offset of each plane (NV12: Y, UV; RGB: one).
    pub offsets: [usize; 2],
    pub n_planes: usize,
    /// Bytes the layout uses (the block may be longer).
    pub size: usize,
}

/// Why a frame's description does not fit its pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    UnknownFormat(u32),
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
    /// Checks a frame request against the pixel bytes that came with it.
    pub fn validate(req: &FrameRequest, pixel_len: usize) -> Result<FrameLayout, LayoutError> {
        let format =
            WireFormat::from_fourcc(req.format).ok_or(LayoutError::UnknownFormat(req.format))?;
        FrameLayout::new(format, req.width, req.height, req.stride, pixel_len)
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
        let (offsets, n_planes) = match format {
            WireFormat::Nv12 => ([0, stride as usize * height as usize], 2),
            _ => ([0, 0], 1),
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
