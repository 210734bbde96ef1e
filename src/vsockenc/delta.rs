//! Compact frames on the guest side (negotiated extension COMPACT): the
//! reference frame the host holds, kept as a reference to the previous sent
//! `GstBuffer` (no copy), and the choice between a COMPACT_FRAME and a full
//! FRAME_REQUEST. The codec itself is `hxfr::compact`.

use gst_video::prelude::*;
use hxfr::compact::{self, CompactEncoder, Compression, Delta, Frame};
use hxfr::{FrameRequest, WireFormat};

/// Tile edge used for compact frames.
pub const TILE: u16 = compact::DEFAULT_TILE_SIZE;

/// The last frame the host holds pixels of, on one connection.
struct Reference {
    generation: u64,
    index: u32,
    buffer: gst::Buffer,
    info: gst_video::VideoInfo,
    /// Stride of its FRAME_REQUEST: a COMPACT_FRAME must name the same
    /// (buffers from another pool may have another stride).
    wire_stride: u32,
}

pub struct DeltaSender {
    encoder: CompactEncoder,
    lz4: bool,
    reference: Option<Reference>,
}

/// What to send for a frame.
pub enum Plan<'a> {
    Full,
    Compact(compact::CompactMessage<'a>),
}

impl Default for DeltaSender {
    fn default() -> Self {
        DeltaSender {
            encoder: CompactEncoder::new(TILE, TILE, Compression::Off),
            lz4: false,
            reference: None,
        }
    }
}

/// The planes of a mapped frame as `hxfr::compact` sees them.
pub fn hx_frame<'a>(
    vf: &'a gst_video::VideoFrameRef<&gst::BufferRef>,
    format: WireFormat,
) -> Option<Frame<'a>> {
    let n = vf.n_planes() as usize;
    let planes: Vec<&[u8]> = (0..n as u32)
        .map(|i| vf.plane_data(i).unwrap_or(&[]))
        .collect();
    let strides: Vec<usize> = vf.plane_stride()[..n]
        .iter()
        .map(|s| (*s).max(0) as usize)
        .collect();
    Frame::new(format, vf.width(), vf.height(), &planes, &strides).ok()
}

impl DeltaSender {
    /// Forgets the reference: the next frame goes out in full.
    pub fn forget(&mut self) {
        self.reference = None;
    }

    /// Whether LZ4 may be used (the host accepted it). Only a change
    /// resets the encoder's compression back-off.
    pub fn set_compression(&mut self, lz4: bool) {
        if lz4 == self.lz4 {
            return;
        }
        self.lz4 = lz4;
        self.encoder.set_compression(if lz4 {
            Compression::Auto
        } else {
            Compression::Off
        });
    }

    /// The reference index usable on connection `generation` for frame
    /// geometry `info`, if the host holds exactly frame `ref_index`.
    fn usable(
        &self,
        generation: u64,
        ref_index: u32,
        info: &gst_video::VideoInfo,
        wire_stride: u32,
    ) -> bool {
        self.reference.as_ref().is_some_and(|r| {
            r.generation == generation
                && r.index == ref_index
                && r.wire_stride == wire_stride
                && r.info.format() == info.format()
                && r.info.width() == info.width()
                && r.info.height() == info.height()
        })
    }

    /// Encodes `cur` against the reference when possible. `ref_index` is
    /// what the connection's negotiation state allows (None: full frame).
    pub fn plan<'s>(
        &'s mut self,
        generation: u64,
        ref_index: Option<u32>,
        cur: &Frame<'s>,
        info: &gst_video::VideoInfo,
        req: &FrameRequest,
        session_id: u16,
    ) -> Plan<'s> {
        let Some(ref_index) = ref_index.filter(|r| self.usable(generation, *r, info, req.stride))
        else {
            return Plan::Full;
        };
        let r = self.reference.as_ref().unwrap();
        let Ok(prev_map) =
            gst_video::VideoFrameRef::from_buffer_ref_readable(r.buffer.as_ref(), &r.info)
        else {
            return Plan::Full;
        };
        let format = WireFormat::from_fourcc_ext(req.format).expect("wire format");
        let Some(prev) = hx_frame(&prev_map, format) else {
            return Plan::Full;
        };
        match self.encoder.encode(&prev, cur, req, ref_index, session_id) {
            Delta::Compact(m) => Plan::Compact(m),
            Delta::Full(_) => Plan::Full,
        }
    }

    /// Frame `index` went out with pixels: it is the new reference.
    pub fn remember(
        &mut self,
        generation: u64,
        index: u32,
        buffer: gst::Buffer,
        info: &gst_video::VideoInfo,
        wire_stride: u32,
    ) {
        self.reference = Some(Reference {
            generation,
            index,
            buffer,
            info: info.clone(),
            wire_stride,
        });
    }
}
