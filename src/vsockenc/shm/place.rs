//! A frame as a slot description. When every plane of the input buffer
//! already lies in the region (upstream wrote into a buffer of our pool)
//! the buffer itself is the slot: no byte is copied. Otherwise the visible
//! rows are copied once into a free range of the region.

use std::sync::Arc;

use hxfr::shm::{ShmFrame, SlotPlane, MAX_PLANES};
use hxfr::{FrameRequest, WireFormat};

use super::link::Held;
use super::region::Region;

/// A frame ready to be described to the host.
pub struct Placed {
    /// The description; its slot id is set when the slot is recorded.
    pub frame: ShmFrame,
    pub held: Held,
    /// Whether the pixels had to be copied into the region.
    pub copied: bool,
}

/// One plane of the mapped input: its bytes (from the first visible
/// byte) and stride.
pub struct InputPlane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
}

/// Places a frame in `region`; `None` when it is neither there already nor
/// can be copied there (the region is full): the frame then goes over the
/// socket.
pub fn place(
    region: &Arc<Region>,
    input: &gst::Buffer,
    format: WireFormat,
    req: &FrameRequest,
    planes: &[InputPlane<'_>],
) -> Option<Placed> {
    let n = format.n_planes();
    if planes.len() < n || n > MAX_PLANES {
        return None;
    }
    let geometry: Vec<(usize, usize)> = (0..n)
        .map(|i| format.plane_size(i, req.width, req.height))
        .collect();
    // Zero copy: every plane inside the region.
    let spans: Option<Vec<(usize, usize)>> = planes[..n]
        .iter()
        .zip(&geometry)
        .map(|(p, &(rows, row))| {
            let len = (rows - 1) * p.stride + row;
            if p.data.len() < len {
                return None;
            }
            region.offset_of(p.data.as_ptr(), len).map(|o| (o, len))
        })
        .collect();
    if let Some(spans) = spans {
        let start = spans.iter().map(|s| s.0).min()?;
        let end = spans.iter().map(|s| s.0 + s.1).max()?;
        let mut f = describe(req, n, start, end - start);
        for (i, (s, p)) in spans.iter().zip(planes).enumerate() {
            f.planes[i] = SlotPlane {
                offset: (s.0 - start) as u32,
                stride: p.stride as u32,
            };
        }
        return Some(Placed {
            frame: f,
            held: Held::Buffer(input.clone()),
            copied: false,
        });
    }
    // One copy, rows at their visible length.
    let total: usize = geometry.iter().map(|(rows, row)| rows * row).sum();
    let mut slot = region.alloc(total)?;
    let mut f = describe(req, n, slot.offset(), total);
    let dst = slot.as_mut();
    let mut at = 0;
    for (i, (p, &(rows, row))) in planes.iter().zip(&geometry).enumerate() {
        for y in 0..rows {
            dst[at + y * row..][..row].copy_from_slice(&p.data[y * p.stride..][..row]);
        }
        f.planes[i] = SlotPlane {
            offset: at as u32,
            stride: row as u32,
        };
        at += rows * row;
    }
    Some(Placed {
        frame: f,
        held: Held::Copy(slot),
        copied: true,
    })
}

fn describe(req: &FrameRequest, n: usize, offset: usize, len: usize) -> ShmFrame {
    ShmFrame {
        request: *req,
        slot: 0,
        n_planes: n as u32,
        slot_offset: offset as u64,
        slot_len: len as u64,
        planes: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_outside_the_region_are_copied_once_and_described_exactly() {
        gst::init().unwrap();
        let region = Arc::new(Region::memfd(1 << 20).unwrap());
        // NV12 4x2 with padded strides of 8.
        let y: Vec<u8> = (0..16).collect();
        let uv: Vec<u8> = (100..108).collect();
        let req = FrameRequest {
            width: 4,
            height: 2,
            format: WireFormat::Nv12.fourcc(),
            stride: 8,
            ..Default::default()
        };
        let planes = [
            InputPlane {
                data: &y,
                stride: 8,
            },
            InputPlane {
                data: &uv,
                stride: 8,
            },
        ];
        let p = place(
            &region,
            &gst::Buffer::new(),
            WireFormat::Nv12,
            &req,
            &planes,
        )
        .unwrap();
        assert!(p.copied);
        let l = p.frame.validate(region.len() as u64, false).unwrap();
        assert_eq!(l.planes[0].stride, 4);
        assert_eq!(l.planes[1].offset, 8);
        let Held::Copy(mut slot) = p.held else {
            panic!()
        };
        assert_eq!(
            &slot.as_mut()[..12],
            &[0, 1, 2, 3, 8, 9, 10, 11, 100, 101, 102, 103]
        );
    }

    #[test]
    fn frames_in_the_region_are_described_where_they_are() {
        gst::init().unwrap();
        let region = Arc::new(Region::memfd(1 << 20).unwrap());
        let mut slot = region.alloc(64).unwrap();
        let base = slot.offset();
        let bytes = slot.as_mut();
        let (y, uv) = bytes.split_at(32);
        let req = FrameRequest {
            width: 4,
            height: 4,
            format: WireFormat::Nv12.fourcc(),
            stride: 8,
            ..Default::default()
        };
        let planes = [
            InputPlane { data: y, stride: 8 },
            InputPlane {
                data: uv,
                stride: 8,
            },
        ];
        let p = place(
            &region,
            &gst::Buffer::new(),
            WireFormat::Nv12,
            &req,
            &planes,
        )
        .unwrap();
        assert!(!p.copied);
        assert_eq!(p.frame.slot_offset, base as u64);
        assert_eq!(p.frame.planes[1].offset, 32);
        assert_eq!(region.used(), 4096, "nothing was allocated for it");
    }
}
