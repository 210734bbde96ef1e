//! The frame paths: a FRAME_REQUEST's pixels validated, a COMPACT_FRAME
//! rebuilt from its reference, an SHM_FRAME's slot checked, each then
//! handed to the encoding session; and the reference compact frames are
//! rebuilt from.

use std::sync::atomic::AtomicBool;

use hxfr::ext::{ext_bits, CompactFrame};
use hxfr::message::FRAME_REQUEST_FIXED;
use hxfr::shm::ShmFrame;
use hxfr::{error_code, ErrorMessage, FrameLayout, FrameRequest, Header, HEADER_LEN};

use tracing::{debug, trace};

use super::writer::Outgoing;
use super::Reader;
use crate::budget::{Charged, Grant};
use crate::encoder::SessionKey;
use crate::shm::SlotFrame;
use crate::stats::ClientStats;

/// The pixels of a frame to encode.
pub(super) enum Input {
    /// Read from the socket (or rebuilt from a compact frame), paid from
    /// the budget.
    Owned(FrameLayout, Charged),
    /// In a shared-memory slot: the guest's memory.
    Slot(SlotFrame),
}

impl Reader<'_> {
    /// Rebuilds a frame from a COMPACT_FRAME and its reference, then
    /// encodes it like a full one.
    pub(super) fn compact_frame(&mut self, sid: u16, header: Header, cf: CompactFrame) -> bool {
        let index = self.ext.next_frame();
        let wire = HEADER_LEN as u64 + header.payload_size as u64;
        let req = cf.header.request;
        // The body is decoded: its memory is given back; the rebuilt copy
        // is what the frame holds from now on.
        self.body_grant = None;
        let copy = self.ext.reference().map_or(0, |(_, _, p)| p.len() as u64);
        let grant = match self.take_memory(copy, &AtomicBool::new(false)) {
            Ok(g) => g,
            Err(short) => {
                ClientStats::add(&self.stats.frames_in, 1);
                self.ext.forget_reference();
                let e = ErrorMessage::new(
                    error_code::REFUSED,
                    format!("frame pts={}: not rebuilt: {short}; send smaller or fewer frames, or ask the host's operator to raise --memory-budget", req.pts),
                );
                return self.reject_because(sid, req.pts, index, e, "memory_budget");
            }
        };
        match self.ext.rebuild(index, &cf) {
            Ok(()) => {
                ClientStats::add(&self.stats.compact_frames, 1);
                let pixels = self
                    .ext
                    .reference()
                    .map(|(_, _, p)| Charged::new(p.to_vec(), Some(grant)));
                trace!(
                    "{}: frame pts={} rebuilt from {} changed tiles",
                    self.peer,
                    req.pts,
                    cf.header.changed_tiles
                );
                self.frame(sid, req, pixels, index, wire, true)
            }
            Err(e) => {
                ClientStats::add(&self.stats.frames_in, 1);
                let e = ErrorMessage::new(
                    error_code::INVALID_MESSAGE,
                    format!("frame pts={}: {e}; send a full frame", req.pts),
                );
                self.reject(sid, req.pts, index, e)
            }
        }
    }

    /// Validates and encodes frame `index`; `wire` is what it cost on the
    /// wire, `rebuilt` whether it came as a COMPACT_FRAME.
    pub(super) fn frame(
        &mut self,
        sid: u16,
        req: FrameRequest,
        pixels: Option<Charged>,
        index: u32,
        wire: u64,
        rebuilt: bool,
    ) -> bool {
        ClientStats::add(&self.stats.frames_in, 1);
        if self.take_slot().is_err() {
            // Only a frame that came without a header decision (none do).
            return false;
        }
        let invalid =
            |code, why: String| ErrorMessage::new(code, format!("frame pts={}: {why}", req.pts));
        let pixels = match pixels {
            // A guest may set the pixel flag with an empty block next to a
            // resource id: that is still a GPU-memory frame.
            Some(p) if !(p.pixels.is_empty() && req.resource_id != 0) => p,
            _ if req.resource_id != 0 => {
                let e = invalid(
                    error_code::RESOURCE_NOT_FOUND,
                    format!(
                        "names virtio-gpu resource {}, but this daemon cannot read guest GPU memory; send pixels (resource_id 0)",
                        req.resource_id
                    ),
                );
                return self.reject(sid, req.pts, index, e);
            }
            _ => {
                let e = invalid(
                    error_code::INVALID_MESSAGE,
                    "carries neither pixels (flag 0x01) nor a resource id".into(),
                );
                return self.reject(sid, req.pts, index, e);
            }
        };
        let layout = match self.ext.layout(&req, pixels.pixels.len()) {
            Ok(l) => l,
            Err(e) => {
                let e = invalid(error_code::INVALID_MESSAGE, e.to_string());
                return self.reject(sid, req.pts, index, e);
            }
        };
        ClientStats::add(&self.stats.frame_wire_bytes, wire);
        ClientStats::add(
            &self.stats.frame_raw_bytes,
            (HEADER_LEN + FRAME_REQUEST_FIXED + pixels.pixels.len()) as u64,
        );
        if !rebuilt {
            self.keep_reference(index, &layout, &pixels.pixels);
        }
        if let Some(m) =
            self.ext
                .checksum_message(sid, req.pts, index, rebuilt, &layout, &pixels.pixels)
        {
            if !self.queue(Outgoing::Now(m)) {
                return false;
            }
        }
        let key = SessionKey::of(&layout);
        self.encode(sid, &req, key, index, Input::Owned(layout, pixels))
    }

    /// Takes the slot of an SHM_FRAME after checking its description
    /// against the region, then encodes it like a full frame, without a
    /// copy. A bad description is refused (ERROR_PTS) and changes nothing.
    pub(super) fn shm_frame(&mut self, sid: u16, header: Header, f: ShmFrame) -> bool {
        let index = self.ext.next_frame();
        // A slot is no reference for compact frames: the guest owns it.
        self.ext.forget_reference();
        ClientStats::add(&self.stats.frames_in, 1);
        let req = f.request;
        let slot = match self
            .shm
            .take_frame(&f, index, self.ext.has(ext_bits::FORMATS))
        {
            Ok(s) => s,
            Err(why) => {
                let e = ErrorMessage::new(
                    error_code::INVALID_MESSAGE,
                    format!(
                        "frame pts={} (shared-memory slot {}): {why}",
                        req.pts, f.slot
                    ),
                );
                return self.reject(sid, req.pts, index, e);
            }
        };
        ClientStats::add(&self.stats.shm_frames, 1);
        ClientStats::add(
            &self.stats.frame_wire_bytes,
            HEADER_LEN as u64 + header.payload_size as u64,
        );
        let l = slot.layout;
        let raw = l
            .format
            .frame_bytes(l.height, l.format.min_stride(l.width) as u32);
        ClientStats::add(
            &self.stats.frame_raw_bytes,
            (HEADER_LEN + FRAME_REQUEST_FIXED) as u64 + raw,
        );
        if self.ext.has(ext_bits::FRAME_CHECKSUM) {
            if let Some(m) = slot
                .frame()
                .map(|fr| self.ext.checksum_of(sid, req.pts, index, false, &fr))
            {
                if !self.queue(Outgoing::Now(m)) {
                    return false;
                }
            }
        }
        let key = SessionKey {
            format: l.format,
            width: l.width,
            height: l.height,
        };
        self.encode(sid, &req, key, index, Input::Slot(slot))
    }

    /// Keeps a full frame as the reference of compact frames, if the
    /// budget can pay for the copy (and the decompression buffer that
    /// goes with it); otherwise compact frames are refused until a full
    /// frame fits, and the guest sends full frames.
    fn keep_reference(&mut self, index: u32, layout: &FrameLayout, pixels: &[u8]) {
        if !self.ext.has(ext_bits::COMPACT) {
            self.ext.keep_full(index, layout, pixels);
            return;
        }
        let copies = if self.ext.has(ext_bits::LZ4) { 2 } else { 1 };
        let want = copies * pixels.len() as u64;
        if self.reference_grant.as_ref().map(Grant::bytes) != Some(want) {
            self.reference_grant = None;
            match self.account.as_ref().map(|a| a.try_take(want)) {
                Some(Ok(g)) => self.reference_grant = Some(g),
                Some(Err(short)) => {
                    debug!(
                        "{}: frame {index} is not kept as a reference: {short}",
                        self.peer
                    );
                    self.ext.forget_reference();
                    return;
                }
                None => {}
            }
        }
        self.ext.keep_full(index, layout, pixels);
    }
}
