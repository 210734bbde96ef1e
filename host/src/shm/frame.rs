//! A checked slot as the encoder sees it: a GStreamer buffer over the
//! mapped bytes (no copy) with a VideoMeta naming the guest's plane
//! offsets and strides. The buffer owns a [`Release`]: when the encoder
//! frees it, the slot is given back and its SHM_RELEASE sent.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use gst::glib;
use hxfr::compact::Frame;
use hxfr::shm::{ShmRelease, SlotLayout};
use hxfr::FrameLayout;

use super::region::Region;
use super::slots::HeldSlots;
use crate::pixels;

/// Gives a slot back when dropped.
pub struct Release {
    pub slot: u32,
    pub held: Arc<Mutex<HeldSlots>>,
    pub to: Option<Sender<ShmRelease>>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let index = self.held.lock().unwrap().release(self.slot);
        if let (Some(frame_index), Some(to)) = (index, &self.to) {
            // The connection may be gone: then nobody needs to hear it.
            let _ = to.send(ShmRelease {
                slot: self.slot,
                frame_index,
            });
        }
    }
}

/// The bytes of one slot, owned by the buffer that wraps them.
struct SlotBytes {
    region: Arc<Region>,
    offset: usize,
    len: usize,
    _release: Release,
}

impl AsRef<[u8]> for SlotBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `SlotLayout` was checked to lie inside the region.
        unsafe { self.region.bytes(self.offset, self.len) }
    }
}

/// A frame whose slot the daemon holds.
pub struct SlotFrame {
    region: Arc<Region>,
    pub layout: SlotLayout,
    release: Release,
}

impl SlotFrame {
    pub(super) fn new(region: Arc<Region>, layout: SlotLayout, release: Release) -> SlotFrame {
        SlotFrame {
            region,
            layout,
            release,
        }
    }

    /// The plane bytes, for the checksum of verify-frames.
    pub fn frame(&self) -> Option<Frame<'_>> {
        let l = &self.layout;
        // SAFETY: checked to lie inside the region.
        let slot = unsafe { self.region.bytes(l.slot_offset, l.slot_len) };
        let planes: Vec<&[u8]> = l.planes[..l.n_planes]
            .iter()
            .map(|p| &slot[p.offset..])
            .collect();
        let strides: Vec<usize> = l.planes[..l.n_planes].iter().map(|p| p.stride).collect();
        Frame::new(l.format, l.width, l.height, &planes, &strides).ok()
    }

    /// The frame as a buffer for the encoder: the slot itself, or for an
    /// odd size (which the encoder needs padded) a padded copy, in which
    /// case the slot goes back at once.
    pub fn into_buffer(
        self,
        pts: gst::ClockTime,
        duration: gst::ClockTime,
    ) -> Result<gst::Buffer, glib::BoolError> {
        let l = self.layout;
        if pixels::coded_size(l.width, l.height) != (l.width, l.height) {
            let (wire, bytes) = self.tight_copy();
            // A copy of one odd-sized frame, gone with its buffer: the
            // budget pays for socket frames, not these.
            let bytes = crate::budget::Charged::new(bytes, None);
            return pixels::frame_buffer(&wire, bytes, pts, duration);
        }
        let offsets: Vec<usize> = l.planes[..l.n_planes].iter().map(|p| p.offset).collect();
        let strides: Vec<i32> = l.planes[..l.n_planes]
            .iter()
            .map(|p| p.stride as i32)
            .collect();
        let used = l.used_len();
        let mut buffer = gst::Buffer::from_slice(SlotBytes {
            region: self.region,
            offset: l.slot_offset,
            len: used,
            _release: self.release,
        });
        let b = buffer.get_mut().expect("a new buffer is writable");
        b.set_pts(pts);
        b.set_duration(duration);
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            pixels::video_format(l.format),
            l.width,
            l.height,
            &offsets,
            &strides,
        )?;
        Ok(buffer)
    }

    /// The planes copied into the tightest wire layout.
    fn tight_copy(&self) -> (FrameLayout, Vec<u8>) {
        let l = &self.layout;
        let stride = l.format.min_stride(l.width) as u32;
        let size = l.format.frame_bytes(l.height, stride) as usize;
        let wire = FrameLayout::new(l.format, l.width, l.height, stride, size)
            .expect("a tight layout of a checked size");
        let mut out = vec![0u8; size];
        // SAFETY: checked to lie inside the region.
        let slot = unsafe { self.region.bytes(l.slot_offset, l.slot_len) };
        for (i, p) in l.planes[..l.n_planes].iter().enumerate() {
            let dst = wire.plane(i);
            for y in 0..p.rows {
                out[dst.offset + y * dst.stride..][..p.row_bytes]
                    .copy_from_slice(&slot[p.offset + y * p.stride..][..p.row_bytes]);
            }
        }
        (wire, out)
    }
}
