//! Compact frame transfer: send only the tiles that changed since the
//! reference frame, and rebuild the full frame on the other side.
//!
//! The frame is cut into tiles of `tile_width` × `tile_height` pixels (the
//! last column and row of tiles are clipped at the frame's edge). For NV12 a
//! tile is its luma block plus the chroma rows that belong to it
//! (`tile_height / 2` UV rows of the same byte columns), so one bit of the
//! bitmap covers both planes. Only the visible bytes of each row count: the
//! padding up to a stride is never compared, sent or written.
//!
//! Tile data order on the wire (what `raw_len` bytes decompress to): for each
//! row of tiles from top to bottom, for each plane, for each pixel row of
//! that plane inside the tile row, the bytes of the changed tiles from left
//! to right. Adjacent changed tiles thus form one contiguous run per row,
//! which is what lets [`CompactEncoder`] send uncompressed runs straight
//! from the caller's frame, without copying.
//!
//! [`apply`] checks everything about a COMPACT_FRAME before it writes one
//! byte, so a malformed one leaves the reference frame untouched.
//!
//! Compact frames carry the legacy formats only ([`WireFormat::ALL`]); the
//! negotiated ones (I420, YV12, YUY2, UYVY) come from decoders and cameras,
//! whose frames change everywhere, and always travel in full. [`Frame`] and
//! [`checksum`] cover every format.

use std::fmt;
use std::io::{self, IoSlice, Write};

use crate::ext::{CompactFrame, CompactHeader, TileEncoding, COMPACT_FIXED};
use crate::header::HEADER_LEN;
use crate::layout::{FrameLayout, WireFormat, MAX_DIMENSION};
use crate::message::{FrameRequest, FRAME_REQUEST_FIXED};
use crate::write::write_all_vectored;

/// Tile size `vsockenc` uses unless told otherwise.
pub const DEFAULT_TILE_SIZE: u16 = 64;
/// Smallest tile edge.
pub const MIN_TILE_SIZE: u16 = 8;
/// Largest tile edge.
pub const MAX_TILE_SIZE: u16 = 1024;

/// Whether a tile size is allowed: both edges multiples of 8 in 8..=1024
/// (even edges keep NV12 chroma aligned with its luma).
pub fn tile_size_valid(width: u16, height: u16) -> bool {
    let ok = |v: u16| (MIN_TILE_SIZE..=MAX_TILE_SIZE).contains(&v) && v.is_multiple_of(8);
    ok(width) && ok(height)
}

/// Why a frame could not be described, or a COMPACT_FRAME not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompactError {
    /// The planes given for a frame do not hold its rows.
    BadFrame(String),
    /// Tile size outside the allowed range.
    BadTileSize { width: u16, height: u16 },
    /// The COMPACT_FRAME describes a different frame than the reference.
    GeometryMismatch(String),
    /// Bitmap, counts or lengths contradict each other.
    Inconsistent(String),
    /// The LZ4 block is corrupt or does not decompress to `raw_len` bytes.
    Decompress(String),
    /// The reference frame it names is not the one held (or none is).
    NoReference { want: u32, have: Option<u32> },
}

impl fmt::Display for CompactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompactError::BadFrame(s) => write!(f, "bad frame: {s}"),
            CompactError::BadTileSize { width, height } => write!(
                f,
                "tile size {width}x{height} is not allowed (edges must be multiples of 8 in {MIN_TILE_SIZE}..={MAX_TILE_SIZE})"
            ),
            CompactError::GeometryMismatch(s) => {
                write!(f, "compact frame does not match its reference: {s}")
            }
            CompactError::Inconsistent(s) => write!(f, "inconsistent compact frame: {s}"),
            CompactError::Decompress(s) => write!(f, "compact frame tile data: {s}"),
            CompactError::NoReference { want, have } => match have {
                Some(h) => write!(
                    f,
                    "compact frame names reference frame {want}, but the host holds frame {h}"
                ),
                None => write!(
                    f,
                    "compact frame names reference frame {want}, but the host holds no reference frame"
                ),
            },
        }
    }
}

impl std::error::Error for CompactError {}

/// A frame in memory, each plane with its own stride (a mapped GStreamer
/// frame, or the pixel block of a FRAME_REQUEST).
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    format: WireFormat,
    width: u32,
    height: u32,
    planes: [&'a [u8]; 3],
    strides: [usize; 3],
}

impl<'a> Frame<'a> {
    /// `planes`/`strides`: one entry for BGRA/RGBA and the packed YUV
    /// formats, two (Y, UV) for NV12, three for I420 (Y, U, V) and YV12 (Y,
    /// V, U: wire order).
    pub fn new(
        format: WireFormat,
        width: u32,
        height: u32,
        planes: &[&'a [u8]],
        strides: &[usize],
    ) -> Result<Self, CompactError> {
        if !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
            return Err(CompactError::BadFrame(format!(
                "size {width}x{height} is outside 1..{MAX_DIMENSION}"
            )));
        }
        let geoms = plane_geometry(format, width, height);
        if planes.len() != geoms.len() || strides.len() != geoms.len() {
            return Err(CompactError::BadFrame(format!(
                "{format} has {} planes, got {} planes and {} strides",
                geoms.len(),
                planes.len(),
                strides.len()
            )));
        }
        let mut f = Frame {
            format,
            width,
            height,
            planes: [&[]; 3],
            strides: [0; 3],
        };
        for (i, g) in geoms.iter().enumerate() {
            let (data, stride) = (planes[i], strides[i]);
            if stride < g.row_bytes {
                return Err(CompactError::BadFrame(format!(
                    "plane {i}: stride {stride} is below its {} bytes per row",
                    g.row_bytes
                )));
            }
            let need = (g.rows - 1) * stride + g.row_bytes;
            if data.len() < need {
                return Err(CompactError::BadFrame(format!(
                    "plane {i}: {} bytes, {need} needed for {} rows of stride {stride}",
                    data.len(),
                    g.rows
                )));
            }
            f.planes[i] = data;
            f.strides[i] = stride;
        }
        Ok(f)
    }

    /// The frame inside a FRAME_REQUEST's pixel block.
    pub fn from_wire(layout: &FrameLayout, pixels: &'a [u8]) -> Result<Self, CompactError> {
        let n = layout.format.n_planes();
        let mut planes: [&[u8]; 3] = [&[]; 3];
        let mut strides = [0; 3];
        for (i, (p, s)) in planes.iter_mut().zip(&mut strides).enumerate().take(n) {
            let plane = layout.plane(i);
            *p = pixels.get(plane.offset..).unwrap_or(&[]);
            *s = plane.stride;
        }
        Frame::new(
            layout.format,
            layout.width,
            layout.height,
            &planes[..n],
            &strides[..n],
        )
    }

    pub fn format(&self) -> WireFormat {
        self.format
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes of the frame's visible rows (what a tight wire layout holds).
    pub fn visible_bytes(&self) -> usize {
        plane_geometry(self.format, self.width, self.height)
            .iter()
            .map(|g| g.rows * g.row_bytes)
            .sum()
    }

    /// Visible bytes of row `y` of plane `p`.
    #[inline]
    fn row(&self, p: usize, y: usize, row_bytes: usize) -> &'a [u8] {
        let start = y * self.strides[p];
        &self.planes[p][start..start + row_bytes]
    }

    /// Offset of row `y` of plane `p` inside `planes[p]`.
    #[inline]
    fn row_start(&self, p: usize, y: usize) -> usize {
        y * self.strides[p]
    }

    fn same_geometry(&self, other: &Frame<'_>) -> bool {
        self.format == other.format && self.width == other.width && self.height == other.height
    }
}

/// Rows and visible row bytes of one plane, and how many of its rows one
/// tile row spans per pixel row of plane 0 (1 for luma/RGB, ½ for chroma).
#[derive(Debug, Clone, Copy)]
struct PlaneGeom {
    rows: usize,
    row_bytes: usize,
    /// Plane rows per tile row = tile_height / row_div.
    row_div: usize,
}

fn plane_geometry(format: WireFormat, width: u32, height: u32) -> Vec<PlaneGeom> {
    (0..format.n_planes())
        .map(|p| {
            let (rows, row_bytes) = format.plane_size(p, width, height);
            PlaneGeom {
                rows,
                row_bytes,
                // Chroma of the 4:2:0 formats has one row per two.
                row_div: if p > 0 { 2 } else { 1 },
            }
        })
        .collect()
}

/// Bytes of one pixel column in every plane, for the formats compact frames
/// carry (`None`: always sent in full).
fn compact_bytes_per_pixel(format: WireFormat) -> Option<usize> {
    match format {
        WireFormat::Bgra | WireFormat::Rgba => Some(4),
        // Y: one byte per pixel; UV: a pair per two pixels.
        WireFormat::Nv12 => Some(1),
        _ => None,
    }
}

/// The tile grid of a frame: where every tile's bytes are in every plane.
#[derive(Debug, Clone)]
struct Grid {
    planes: Vec<PlaneGeom>,
    tiles_x: usize,
    tiles_y: usize,
    /// Bytes of one tile column in every plane (4 × tile_width for RGB,
    /// tile_width for both NV12 planes).
    tile_bytes: usize,
    tile_height: usize,
}

impl Grid {
    /// `None` for a format compact frames do not carry.
    fn new(format: WireFormat, width: u32, height: u32, tile_w: u16, tile_h: u16) -> Option<Grid> {
        let bpp = compact_bytes_per_pixel(format)?;
        Some(Grid {
            planes: plane_geometry(format, width, height),
            tiles_x: (width as usize).div_ceil(tile_w as usize),
            tiles_y: (height as usize).div_ceil(tile_h as usize),
            tile_bytes: bpp * tile_w as usize,
            tile_height: tile_h as usize,
        })
    }

    fn tiles(&self) -> usize {
        self.tiles_x * self.tiles_y
    }

    fn bitmap_len(&self) -> usize {
        self.tiles().div_ceil(8)
    }

    /// Rows of plane `p` inside tile row `ty`.
    #[inline]
    fn band_rows(&self, p: usize, ty: usize) -> std::ops::Range<usize> {
        let g = &self.planes[p];
        let per = self.tile_height / g.row_div;
        let start = (ty * per).min(g.rows);
        start..((ty + 1) * per).min(g.rows)
    }

    /// Byte columns of tiles `tx0..tx1` in a row of plane `p`.
    #[inline]
    fn cols(&self, p: usize, tx0: usize, tx1: usize) -> std::ops::Range<usize> {
        let rb = self.planes[p].row_bytes;
        (tx0 * self.tile_bytes).min(rb)..(tx1 * self.tile_bytes).min(rb)
    }

    /// Bytes that the changed tiles of `bitmap` hold (the raw tile data).
    fn raw_len(&self, bitmap: &[u8]) -> u64 {
        let mut total = 0u64;
        for ty in 0..self.tiles_y {
            for (tx0, tx1) in runs(bitmap, ty * self.tiles_x, self.tiles_x) {
                for p in 0..self.planes.len() {
                    let rows = self.band_rows(p, ty).len() as u64;
                    total += rows * self.cols(p, tx0, tx1).len() as u64;
                }
            }
        }
        total
    }
}

#[inline]
fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap[i / 8] & (1 << (i % 8)) != 0
}

/// Runs of consecutive set bits among `n` bits starting at bit `first`, as
/// tile column ranges `(tx0, tx1)`.
fn runs(bitmap: &[u8], first: usize, n: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut tx = 0;
    std::iter::from_fn(move || {
        while tx < n && !bit(bitmap, first + tx) {
            tx += 1;
        }
        if tx >= n {
            return None;
        }
        let start = tx;
        while tx < n && bit(bitmap, first + tx) {
            tx += 1;
        }
        Some((start, tx))
    })
}

/// Whether to try LZ4 on the changed tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Never (the peer did not accept LZ4).
    Off,
    /// When it is likely to pay off: the changed tiles are at most
    /// [`CompactEncoder::compress_max_fraction`] of the frame, and recent
    /// attempts compressed well.
    Auto,
    /// Whenever there is tile data.
    Always,
}

/// Why [`CompactEncoder::encode`] wants a full frame sent instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// Size or format differs from the reference, the tile size is bad, or
    /// the format is one compact frames do not carry.
    Geometry,
    /// The compact form would not be smaller than the full frame.
    NotSmaller,
}

/// The outcome of [`CompactEncoder::encode`].
#[derive(Debug)]
pub enum Delta<'a> {
    /// Send an ordinary FRAME_REQUEST with the whole frame.
    Full(FullReason),
    /// Send this COMPACT_FRAME.
    Compact(CompactMessage<'a>),
}

/// A COMPACT_FRAME ready to be written: header, fixed part and bitmap from
/// the encoder, tile data straight from the current frame (raw) or from the
/// encoder's compression buffer (LZ4).
#[derive(Debug)]
pub struct CompactMessage<'a> {
    slices: Vec<IoSlice<'a>>,
    /// Bytes of the whole message, header included.
    pub wire_len: usize,
    /// Bytes of the changed tiles before compression.
    pub raw_len: usize,
    pub changed_tiles: u32,
    pub total_tiles: u32,
    pub encoding: TileEncoding,
}

impl CompactMessage<'_> {
    /// Writes the whole message (one vectored write, retried as needed).
    pub fn write_to<W: Write + ?Sized>(&mut self, w: &mut W) -> io::Result<usize> {
        write_all_vectored(w, &mut self.slices)?;
        Ok(self.wire_len)
    }

    /// The message as one buffer (tests, small frames).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.wire_len);
        for s in &self.slices {
            v.extend_from_slice(s);
        }
        v
    }

    /// How many slices the message is made of (diagnostics).
    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }
}

/// Turns consecutive frames into COMPACT_FRAMEs. Keeps its buffers between
/// frames, so steady-state encoding does not allocate beyond the slice list.
#[derive(Debug)]
pub struct CompactEncoder {
    tile_width: u16,
    tile_height: u16,
    compression: Compression,
    /// With [`Compression::Auto`], LZ4 is tried only when the changed tiles
    /// are at most this fraction of the frame's visible bytes: compressing
    /// a mostly-changed frame costs more guest CPU than sending it.
    pub compress_max_fraction: f32,
    /// With [`Compression::Auto`], after a poor ratio (compressed > 90% of
    /// raw) LZ4 is not tried for this many frames.
    pub compress_backoff_frames: u32,
    backoff: u32,
    bitmap: Vec<u8>,
    prefix: Vec<u8>,
    gather: Vec<u8>,
    lz4: Vec<u8>,
}

impl CompactEncoder {
    pub fn new(tile_width: u16, tile_height: u16, compression: Compression) -> Self {
        CompactEncoder {
            tile_width,
            tile_height,
            compression,
            compress_max_fraction: 0.5,
            compress_backoff_frames: 30,
            backoff: 0,
            bitmap: Vec::new(),
            prefix: Vec::new(),
            gather: Vec::new(),
            lz4: Vec::new(),
        }
    }

    pub fn set_compression(&mut self, compression: Compression) {
        self.compression = compression;
        self.backoff = 0;
    }

    pub fn tile_size(&self) -> (u16, u16) {
        (self.tile_width, self.tile_height)
    }

    /// Compares `cur` with `prev` (the reference the peer holds) and builds
    /// the COMPACT_FRAME that turns the one into the other, or says to send
    /// the full frame. `request` describes the frame as a FRAME_REQUEST
    /// would (its `stride` is the wire stride of the reference, its
    /// `resource_id` is ignored); `ref_index` is the reference's frame index
    /// on this connection.
    pub fn encode<'s>(
        &'s mut self,
        prev: &Frame<'_>,
        cur: &Frame<'s>,
        request: &FrameRequest,
        ref_index: u32,
        session_id: u16,
    ) -> Delta<'s> {
        let (tw, th) = (self.tile_width, self.tile_height);
        if !tile_size_valid(tw, th)
            || !prev.same_geometry(cur)
            || request.format != cur.format.fourcc()
            || request.width != cur.width
            || request.height != cur.height
            || (request.stride as u64) < cur.format.min_stride(cur.width)
        {
            return Delta::Full(FullReason::Geometry);
        }
        let Some(grid) = Grid::new(cur.format, cur.width, cur.height, tw, th) else {
            return Delta::Full(FullReason::Geometry);
        };
        let changed = diff_tiles(&grid, prev, cur, &mut self.bitmap);
        let raw_len = grid.raw_len(&self.bitmap) as usize;
        let full_payload =
            FRAME_REQUEST_FIXED as u64 + cur.format.frame_bytes(cur.height, request.stride);
        let fixed_and_bitmap = COMPACT_FIXED + grid.bitmap_len();

        let mut encoding = TileEncoding::Raw;
        let mut data_len = raw_len;
        if self.should_compress(raw_len, cur.visible_bytes()) {
            let n = self.compress(&grid, cur, raw_len);
            if n < raw_len {
                encoding = TileEncoding::Lz4;
                data_len = n;
            }
            if n * 10 > raw_len * 9 {
                self.backoff = self.compress_backoff_frames;
            }
        } else {
            self.backoff = self.backoff.saturating_sub(1);
        }
        if (fixed_and_bitmap + data_len) as u64 >= full_payload {
            return Delta::Full(FullReason::NotSmaller);
        }

        let mut req = *request;
        req.resource_id = 0;
        let header = CompactHeader {
            request: req,
            ref_index,
            tile_width: tw,
            tile_height: th,
            encoding,
            changed_tiles: changed,
            data_len: data_len as u32,
            raw_len: raw_len as u32,
        };
        self.prefix.clear();
        self.prefix
            .extend_from_slice(&header.encode_prefix(session_id));
        self.prefix.extend_from_slice(&self.bitmap);

        let mut slices = Vec::new();
        slices.push(IoSlice::new(&self.prefix));
        match encoding {
            TileEncoding::Lz4 => slices.push(IoSlice::new(&self.lz4[..data_len])),
            TileEncoding::Raw => push_runs(&grid, &self.bitmap, cur, &mut slices),
        }
        Delta::Compact(CompactMessage {
            slices,
            wire_len: HEADER_LEN + fixed_and_bitmap + data_len,
            raw_len,
            changed_tiles: changed,
            total_tiles: grid.tiles() as u32,
            encoding,
        })
    }

    fn should_compress(&self, raw_len: usize, visible: usize) -> bool {
        match self.compression {
            Compression::Off => false,
            Compression::Always => raw_len > 0,
            Compression::Auto => {
                raw_len >= 64
                    && self.backoff == 0
                    && (raw_len as f64) <= self.compress_max_fraction as f64 * visible as f64
            }
        }
    }

    /// Gathers the changed tiles in wire order and compresses them into
    /// `self.lz4`; returns the compressed size.
    fn compress(&mut self, grid: &Grid, cur: &Frame<'_>, raw_len: usize) -> usize {
        self.gather.clear();
        self.gather.reserve(raw_len);
        for_each_run(grid, &self.bitmap, |p, y, cols| {
            let start = cur.row_start(p, y);
            self.gather
                .extend_from_slice(&cur.planes[p][start + cols.start..start + cols.end]);
        });
        debug_assert_eq!(self.gather.len(), raw_len);
        let max = lz4_flex::block::get_maximum_output_size(raw_len);
        if self.lz4.len() < max {
            self.lz4.resize(max, 0);
        }
        lz4_flex::block::compress_into(&self.gather, &mut self.lz4)
            .expect("LZ4 output buffer sized by get_maximum_output_size")
    }
}

/// Calls `f(plane, row, byte columns)` for every run of changed tiles, in
/// wire order.
fn for_each_run(
    grid: &Grid,
    bitmap: &[u8],
    mut f: impl FnMut(usize, usize, std::ops::Range<usize>),
) {
    let mut band_runs: Vec<(usize, usize)> = Vec::new();
    for ty in 0..grid.tiles_y {
        band_runs.clear();
        band_runs.extend(runs(bitmap, ty * grid.tiles_x, grid.tiles_x));
        if band_runs.is_empty() {
            continue;
        }
        for p in 0..grid.planes.len() {
            for y in grid.band_rows(p, ty) {
                for &(tx0, tx1) in &band_runs {
                    f(p, y, grid.cols(p, tx0, tx1));
                }
            }
        }
    }
}

/// Slices of `cur` for every run, merging runs that are adjacent in memory
/// (whole rows of a tightly packed plane become one slice).
fn push_runs<'a>(grid: &Grid, bitmap: &[u8], cur: &Frame<'a>, out: &mut Vec<IoSlice<'a>>) {
    let mut pending: Option<(usize, usize, usize)> = None; // plane, start, end
    let planes = cur.planes;
    let flush = |out: &mut Vec<IoSlice<'a>>, (p, s, e): (usize, usize, usize)| {
        out.push(IoSlice::new(&planes[p][s..e]));
    };
    for_each_run(grid, bitmap, |p, y, cols| {
        let row = cur.row_start(p, y);
        let (s, e) = (row + cols.start, row + cols.end);
        match &mut pending {
            Some((pp, _, pe)) if *pp == p && *pe == s => *pe = e,
            _ => {
                if let Some(run) = pending.take() {
                    flush(out, run);
                }
                pending = Some((p, s, e));
            }
        }
    });
    if let Some(run) = pending {
        flush(out, run);
    }
}

/// Fills `bitmap` with the tiles where `cur` differs from `prev`; returns how
/// many there are. Rows are compared whole first (a still row costs one
/// `memcmp`); only a differing row is compared tile by tile, and a tile
/// known to have changed is not compared again.
fn diff_tiles(grid: &Grid, prev: &Frame<'_>, cur: &Frame<'_>, bitmap: &mut Vec<u8>) -> u32 {
    bitmap.clear();
    bitmap.resize(grid.bitmap_len(), 0);
    let mut changed_total = 0u32;
    let mut changed = vec![false; grid.tiles_x];
    for ty in 0..grid.tiles_y {
        changed.fill(false);
        let mut left = grid.tiles_x;
        'band: for (p, g) in grid.planes.iter().enumerate() {
            for y in grid.band_rows(p, ty) {
                let a = prev.row(p, y, g.row_bytes);
                let b = cur.row(p, y, g.row_bytes);
                if a == b {
                    continue;
                }
                for (tx, c) in changed.iter_mut().enumerate() {
                    if *c {
                        continue;
                    }
                    let cols = grid.cols(p, tx, tx + 1);
                    if a[cols.clone()] != b[cols] {
                        *c = true;
                        left -= 1;
                    }
                }
                if left == 0 {
                    break 'band;
                }
            }
        }
        for (tx, &c) in changed.iter().enumerate() {
            if c {
                let i = ty * grid.tiles_x + tx;
                bitmap[i / 8] |= 1 << (i % 8);
                changed_total += 1;
            }
        }
    }
    changed_total
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub changed_tiles: u32,
    pub total_tiles: u32,
    /// Bytes written into the frame.
    pub raw_len: usize,
}

/// Applies a COMPACT_FRAME to the reference frame `frame` (laid out as
/// `layout`, the layout of the reference's FRAME_REQUEST), in place.
///
/// Everything is validated first (geometry against `layout`, tile size,
/// bitmap padding bits, `changed_tiles`, `raw_len` against the bitmap,
/// `data_len`, the LZ4 block): on error `frame` is unchanged. `scratch`
/// receives decompressed data; it never grows beyond the frame's size.
pub fn apply(
    frame: &mut [u8],
    layout: &FrameLayout,
    compact: &CompactFrame,
    scratch: &mut Vec<u8>,
) -> Result<Applied, CompactError> {
    let h = &compact.header;
    let r = &h.request;
    // A FrameLayout is plain data: re-derive it rather than trust it.
    let layout = &FrameLayout::new(
        layout.format,
        layout.width,
        layout.height,
        layout.stride,
        frame.len(),
    )
    .map_err(|e| CompactError::GeometryMismatch(format!("reference frame: {e}")))?;
    if r.format != layout.format.fourcc()
        || r.width != layout.width
        || r.height != layout.height
        || r.stride != layout.stride
    {
        return Err(CompactError::GeometryMismatch(format!(
            "it describes {}x{} format 0x{:08x} stride {}, the reference is {}x{} {} stride {}",
            r.width,
            r.height,
            r.format,
            r.stride,
            layout.width,
            layout.height,
            layout.format,
            layout.stride
        )));
    }
    if !tile_size_valid(h.tile_width, h.tile_height) {
        return Err(CompactError::BadTileSize {
            width: h.tile_width,
            height: h.tile_height,
        });
    }
    let grid = Grid::new(
        layout.format,
        layout.width,
        layout.height,
        h.tile_width,
        h.tile_height,
    )
    .ok_or_else(|| {
        CompactError::GeometryMismatch(format!(
            "{} frames are never sent as compact frames",
            layout.format
        ))
    })?;
    let bl = grid.bitmap_len();
    if compact.body.len() as u64 != bl as u64 + h.data_len as u64 {
        return Err(CompactError::Inconsistent(format!(
            "body of {} bytes, but bitmap {bl} + data_len {} expected",
            compact.body.len(),
            h.data_len
        )));
    }
    let (bitmap, data) = compact.body.split_at(bl);
    let tiles = grid.tiles();
    if !tiles.is_multiple_of(8) && bitmap[bl - 1] >> (tiles % 8) != 0 {
        return Err(CompactError::Inconsistent(format!(
            "bitmap has bits set past its {tiles} tiles"
        )));
    }
    let set: u32 = bitmap.iter().map(|b| b.count_ones()).sum();
    if set != h.changed_tiles {
        return Err(CompactError::Inconsistent(format!(
            "changed_tiles {} but the bitmap has {set} bits set",
            h.changed_tiles
        )));
    }
    let raw_len = grid.raw_len(bitmap);
    if raw_len != h.raw_len as u64 {
        return Err(CompactError::Inconsistent(format!(
            "raw_len {} but the changed tiles hold {raw_len} bytes",
            h.raw_len
        )));
    }
    let raw_len = raw_len as usize;
    let src: &[u8] = match h.encoding {
        TileEncoding::Raw => {
            if data.len() != raw_len {
                return Err(CompactError::Inconsistent(format!(
                    "data_len {} differs from raw_len {raw_len} for raw tile data",
                    data.len()
                )));
            }
            data
        }
        TileEncoding::Lz4 => {
            // raw_len was derived from the geometry, so this is bounded by
            // the frame size.
            scratch.clear();
            scratch.resize(raw_len, 0);
            let n = lz4_flex::block::decompress_into(data, scratch)
                .map_err(|e| CompactError::Decompress(format!("LZ4 block is corrupt: {e}")))?;
            if n != raw_len {
                return Err(CompactError::Decompress(format!(
                    "LZ4 block decompresses to {n} bytes, raw_len is {raw_len}"
                )));
            }
            scratch
        }
    };
    let mut at = 0;
    for_each_run(&grid, bitmap, |p, y, cols| {
        let plane = layout.plane(p);
        let dst = plane.offset + y * plane.stride;
        let n = cols.len();
        frame[dst + cols.start..dst + cols.end].copy_from_slice(&src[at..at + n]);
        at += n;
    });
    debug_assert_eq!(at, raw_len);
    Ok(Applied {
        changed_tiles: set,
        total_tiles: tiles as u32,
        raw_len,
    })
}

/// The FRAME_CHECKSUM of a frame: 64-bit FNV-1a over its visible bytes,
/// plane by plane in wire order (NV12: Y then UV; I420: Y, U, V; YV12: Y,
/// V, U), row by row, without stride padding.
/// The same on both sides whatever strides each uses.
pub fn checksum(frame: &Frame<'_>) -> u64 {
    let mut h = Fnv1a64::new();
    for (p, g) in plane_geometry(frame.format, frame.width, frame.height)
        .iter()
        .enumerate()
    {
        for y in 0..g.rows {
            h.write(frame.row(p, y, g.row_bytes));
        }
    }
    h.finish()
}

/// 64-bit FNV-1a.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> Self {
        Fnv1a64(Self::OFFSET_BASIS)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}
