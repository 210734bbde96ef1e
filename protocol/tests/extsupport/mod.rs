//! Helpers shared by the extension tests (ext_*.rs, compact_*.rs).
#![allow(dead_code)]

use hxfr::compact::Frame;
use hxfr::layout::WireFormat;

/// Bytes from hex text; whitespace is ignored.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).expect("hex digit"))
        .collect()
}

/// Small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

/// A frame owned by the test, each plane with its own stride and an
/// offset into its buffer (as a GStreamer frame may have).
#[derive(Clone, Debug)]
pub struct OwnedFrame {
    pub format: WireFormat,
    pub width: u32,
    pub height: u32,
    pub planes: Vec<Vec<u8>>,
    pub strides: Vec<usize>,
}

impl OwnedFrame {
    /// Row bytes and rows of each plane.
    pub fn plane_dims(format: WireFormat, width: u32, height: u32) -> Vec<(usize, usize)> {
        let (w, h) = (width as usize, height as usize);
        match format {
            WireFormat::Nv12 => vec![(w, h), (2 * w.div_ceil(2), h.div_ceil(2))],
            _ => vec![(4 * w, h)],
        }
    }

    /// A frame with `pad` bytes of stride padding per row (filled with junk
    /// that must never matter).
    pub fn new(format: WireFormat, width: u32, height: u32, pad: &[usize], rng: &mut Rng) -> Self {
        let dims = Self::plane_dims(format, width, height);
        let mut planes = Vec::new();
        let mut strides = Vec::new();
        for (i, (rb, rows)) in dims.iter().enumerate() {
            let stride = rb + pad[i % pad.len()];
            let mut p = vec![0u8; stride * rows];
            rng.fill(&mut p);
            planes.push(p);
            strides.push(stride);
        }
        OwnedFrame {
            format,
            width,
            height,
            planes,
            strides,
        }
    }

    pub fn frame(&self) -> Frame<'_> {
        let planes: Vec<&[u8]> = self.planes.iter().map(|p| &p[..]).collect();
        Frame::new(self.format, self.width, self.height, &planes, &self.strides).unwrap()
    }

    /// Visible bytes, plane by plane, row by row.
    pub fn visible(&self) -> Vec<Vec<u8>> {
        let dims = Self::plane_dims(self.format, self.width, self.height);
        let mut out = Vec::new();
        for (i, (rb, rows)) in dims.iter().enumerate() {
            for y in 0..*rows {
                let s = y * self.strides[i];
                out.push(self.planes[i][s..s + rb].to_vec());
            }
        }
        out
    }

    /// Sets visible byte `x` of row `y` of plane `p`.
    pub fn set(&mut self, p: usize, y: usize, x: usize, v: u8) {
        let s = self.strides[p];
        self.planes[p][y * s + x] = v;
    }

    /// The frame packed in the wire layout with `stride` (NV12: UV right
    /// after Y with the same stride); padding bytes are `pad_byte`.
    pub fn to_wire(&self, stride: usize, pad_byte: u8) -> Vec<u8> {
        let dims = Self::plane_dims(self.format, self.width, self.height);
        let rows: usize = dims.iter().map(|d| d.1).sum();
        let mut out = vec![pad_byte; rows * stride];
        let mut at = 0;
        for (i, (rb, rows)) in dims.iter().enumerate() {
            for y in 0..*rows {
                let s = y * self.strides[i];
                out[at..at + rb].copy_from_slice(&self.planes[i][s..s + rb]);
                at += stride;
            }
        }
        out
    }
}

/// Visible rows of a wire-layout frame, for comparison with
/// [`OwnedFrame::visible`].
pub fn wire_visible(
    format: WireFormat,
    width: u32,
    height: u32,
    stride: usize,
    wire: &[u8],
) -> Vec<Vec<u8>> {
    let dims = OwnedFrame::plane_dims(format, width, height);
    let mut out = Vec::new();
    let mut at = 0;
    for (rb, rows) in dims {
        for _ in 0..rows {
            out.push(wire[at..at + rb].to_vec());
            at += stride;
        }
    }
    out
}
