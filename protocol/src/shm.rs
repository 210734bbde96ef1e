//! Shared-memory frames (extension SHM): the guest's pixels stay in a
//! region both sides map, and the socket carries only a short description
//! of each frame. See `docs/protocol.md` for the normative text.
//!
//! * The guest offers one region per connection ([`ShmOffer`]): a memfd it
//!   passes with `SCM_RIGHTS` on a Unix socket ([`RegionKind::Memfd`]), or
//!   the region the host's operator bound to this guest, an `ivshmem`
//!   device's backing file ([`RegionKind::Bound`]). The guest first writes a
//!   [`RegionHeader`] with a random nonce at offset 0; the host accepts the
//!   offer ([`ShmAck`]) only when its own mapping shows the same header, which
//!   proves both sides see the same memory before any frame uses it.
//! * A frame ([`ShmFrame`]) names a slot: an id the guest chose and a range
//!   of the region, with the offset and stride of each plane inside it. The
//!   host checks all of it against the region ([`ShmFrame::validate`])
//!   before it reads a byte.
//! * The slot is the host's until it sends [`ShmRelease`] for it: when the
//!   buffer that wrapped the slot was freed by its encoder.
//!
//! Layouts (offsets from the start of the message, header included):
//!
//! | message | payload | layout |
//! |---|---|---|
//! | SHM_OFFER 0x49 | 40 | token u64 @12, kind u8 @20, 7 reserved, region_size u64 @28, nonce 16 bytes @36 |
//! | SHM_ACK 0x4A | 16 + text | token u64 @12, status u8 @20, 3 reserved, text_len u32 @24, text @28 |
//! | SHM_FRAME 0x4B | 92 | FRAME_REQUEST fixed part @12..56, slot u32 @56, n_planes u32 @60, slot_offset u64 @64, slot_len u64 @72, 3 x (offset u32, stride u32) @80 |
//! | SHM_RELEASE 0x4C | 8 | slot u32 @12, frame_index u32 @16 |

use std::fmt;

use crate::header::{Header, HEADER_LEN};
use crate::layout::{WireFormat, MAX_DIMENSION};
use crate::message::{get_u32, put_u32, FrameRequest, FRAME_REQUEST_FIXED};

/// Message type codes (in the extension range).
pub const SHM_OFFER: u8 = 0x49;
pub const SHM_ACK: u8 = 0x4A;
pub const SHM_FRAME: u8 = 0x4B;
pub const SHM_RELEASE: u8 = 0x4C;

/// Payload sizes of the fixed parts.
pub const SHM_OFFER_FIXED: usize = 40;
pub const SHM_ACK_FIXED: usize = 16;
pub const SHM_FRAME_FIXED: usize = FRAME_REQUEST_FIXED + 48;
pub const SHM_RELEASE_FIXED: usize = 8;
/// Longest SHM_ACK text this crate sends.
pub const SHM_ACK_MAX_TEXT: usize = 1024;

/// Most planes a frame has (I420, YV12).
pub const MAX_PLANES: usize = 3;

/// Bytes at the start of a region that belong to its header: slots start
/// at or after this offset.
pub const DATA_OFFSET: u64 = 4096;
/// The header's magic, `HXFRSHM1`.
pub const REGION_MAGIC: [u8; 8] = *b"HXFRSHM1";
/// Bytes of the header that carry meaning.
pub const REGION_HEADER_LEN: usize = 40;

/// How the host reaches the offered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// A memfd passed with this SHM_OFFER (`SCM_RIGHTS`, Unix sockets
    /// only), sealed against shrinking.
    Memfd,
    /// The region the host's operator bound to this guest (its listener
    /// or its vsock CID): the backing file of the guest's ivshmem device.
    Bound,
}

impl RegionKind {
    pub fn to_u8(self) -> u8 {
        match self {
            RegionKind::Memfd => 1,
            RegionKind::Bound => 2,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(RegionKind::Memfd),
            2 => Some(RegionKind::Bound),
            _ => None,
        }
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionKind::Memfd => "memfd",
            RegionKind::Bound => "bound region",
        })
    }
}

/// The first bytes of a region, written by the guest before it offers the
/// region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionHeader {
    pub region_size: u64,
    pub nonce: [u8; 16],
}

impl RegionHeader {
    /// magic, version u32 (1), reserved u32, region_size u64, nonce.
    pub fn to_bytes(&self) -> [u8; REGION_HEADER_LEN] {
        let mut b = [0u8; REGION_HEADER_LEN];
        b[..8].copy_from_slice(&REGION_MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&self.region_size.to_le_bytes());
        b[24..40].copy_from_slice(&self.nonce);
        b
    }

    /// Parses a header; `None` if the magic or version is wrong.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < REGION_HEADER_LEN || b[..8] != REGION_MAGIC || get_u32(b, 8) != 1 {
            return None;
        }
        Some(RegionHeader {
            region_size: u64::from_le_bytes(b[16..24].try_into().unwrap()),
            nonce: b[24..40].try_into().unwrap(),
        })
    }
}

/// SHM_OFFER (guest → host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmOffer {
    /// Chosen by the guest; the SHM_ACK echoes it.
    pub token: u64,
    pub kind: RegionKind,
    /// Bytes of the region as the guest maps it.
    pub region_size: u64,
    /// The nonce of the [`RegionHeader`] the guest wrote at offset 0.
    pub nonce: [u8; 16],
}

/// SHM_ACK (host → guest): whether frames may use the offered region.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShmAck {
    pub token: u64,
    pub accepted: bool,
    /// Why not (empty when accepted), for people.
    pub reason: String,
}

/// Status byte of an accepting SHM_ACK; anything else refuses.
pub const SHM_ACCEPTED: u8 = 0;
pub const SHM_REFUSED: u8 = 1;

/// One plane of a slot: where it starts (from the slot's first byte) and
/// its bytes per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotPlane {
    pub offset: u32,
    pub stride: u32,
}

/// SHM_FRAME (guest → host): a frame whose pixels are in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShmFrame {
    /// As a FRAME_REQUEST would describe the frame; `stride` is plane 0's,
    /// `resource_id` is 0.
    pub request: FrameRequest,
    /// The guest's id of the slot; the SHM_RELEASE names it.
    pub slot: u32,
    /// Number of planes (must be the format's).
    pub n_planes: u32,
    /// The slot's range in the region.
    pub slot_offset: u64,
    pub slot_len: u64,
    pub planes: [SlotPlane; MAX_PLANES],
}

/// SHM_RELEASE (host → guest): the host no longer reads the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShmRelease {
    pub slot: u32,
    /// Index of the frame that held the slot.
    pub frame_index: u32,
}

/// A frame's planes in the region, checked: every byte the host reads is
/// inside the slot, and the slot inside the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    pub format: WireFormat,
    pub width: u32,
    pub height: u32,
    pub slot_offset: usize,
    pub slot_len: usize,
    pub n_planes: usize,
    /// Offset from the slot's start, stride, rows and visible bytes per row.
    pub planes: [PlaneSpan; MAX_PLANES],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaneSpan {
    pub offset: usize,
    pub stride: usize,
    pub rows: usize,
    pub row_bytes: usize,
}

impl SlotLayout {
    /// Bytes of the slot that hold pixels: up to the end of the last row of
    /// the plane that ends last.
    pub fn used_len(&self) -> usize {
        self.planes[..self.n_planes]
            .iter()
            .map(|p| p.offset + (p.rows - 1) * p.stride + p.row_bytes)
            .max()
            .unwrap_or(0)
    }
}

/// Why an SHM_FRAME is refused. The texts name the numbers involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotError(pub String);

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SlotError {}

impl ShmFrame {
    /// Checks the description against a region of `region_size` bytes:
    /// the format (negotiated formats only with `formats`), the size, the
    /// slot inside the region's data area, every plane inside the slot.
    /// All arithmetic is checked; nothing is read.
    pub fn validate(&self, region_size: u64, formats: bool) -> Result<SlotLayout, SlotError> {
        let err = |s: String| Err(SlotError(s));
        let r = &self.request;
        let Some(format) = WireFormat::from_fourcc_ext(r.format) else {
            return err(format!("unknown pixel format 0x{:08x}", r.format));
        };
        if format.is_negotiated() && !formats {
            return err(format!(
                "pixel format {format} may only be sent after the host accepted the FORMATS extension"
            ));
        }
        if !(1..=MAX_DIMENSION).contains(&r.width) || !(1..=MAX_DIMENSION).contains(&r.height) {
            return err(format!(
                "size {}x{} is outside 1..{MAX_DIMENSION}",
                r.width, r.height
            ));
        }
        let n = format.n_planes();
        if self.n_planes as usize != n {
            return err(format!(
                "{format} has {n} planes, the frame names {}",
                self.n_planes
            ));
        }
        let end = self.slot_offset.checked_add(self.slot_len);
        if self.slot_offset < DATA_OFFSET || end.is_none_or(|e| e > region_size) {
            return err(format!(
                "slot {} (offset {}, {} bytes) is not inside the region's data area {DATA_OFFSET}..{region_size}",
                self.slot, self.slot_offset, self.slot_len
            ));
        }
        let mut planes = [PlaneSpan::default(); MAX_PLANES];
        for (i, span) in planes.iter_mut().enumerate().take(n) {
            let p = self.planes[i];
            let (rows, row_bytes) = format.plane_size(i, r.width, r.height);
            let (offset, stride) = (p.offset as u64, p.stride as u64);
            if stride < row_bytes as u64 {
                return err(format!(
                    "plane {i}: stride {stride} is below its {row_bytes} bytes per row"
                ));
            }
            let last = offset + (rows as u64 - 1) * stride + row_bytes as u64;
            if last > self.slot_len {
                return err(format!(
                    "plane {i} (offset {offset}, {rows} rows of stride {stride}) ends at byte {last} of slot {}, which has {} bytes",
                    self.slot, self.slot_len
                ));
            }
            *span = PlaneSpan {
                offset: p.offset as usize,
                stride: p.stride as usize,
                rows,
                row_bytes,
            };
        }
        Ok(SlotLayout {
            format,
            width: r.width,
            height: r.height,
            slot_offset: self.slot_offset as usize,
            slot_len: self.slot_len as usize,
            n_planes: n,
            planes,
        })
    }
}

pub(crate) fn encode_offer(o: &ShmOffer, p: &mut Vec<u8>) {
    p.extend_from_slice(&o.token.to_le_bytes());
    p.push(o.kind.to_u8());
    p.extend_from_slice(&[0; 7]);
    p.extend_from_slice(&o.region_size.to_le_bytes());
    p.extend_from_slice(&o.nonce);
}

pub(crate) fn decode_offer(f: &[u8]) -> Result<ShmOffer, String> {
    let kind = RegionKind::from_u8(f[8])
        .ok_or_else(|| format!("unknown region kind {} (1 memfd, 2 bound region)", f[8]))?;
    Ok(ShmOffer {
        token: u64::from_le_bytes(f[..8].try_into().unwrap()),
        kind,
        region_size: u64::from_le_bytes(f[16..24].try_into().unwrap()),
        nonce: f[24..40].try_into().unwrap(),
    })
}

pub(crate) fn encode_ack(a: &ShmAck, p: &mut Vec<u8>, text: &str) {
    p.extend_from_slice(&a.token.to_le_bytes());
    p.push(if a.accepted {
        SHM_ACCEPTED
    } else {
        SHM_REFUSED
    });
    p.extend_from_slice(&[0; 3]);
    p.extend_from_slice(&(text.len() as u32).to_le_bytes());
    p.extend_from_slice(text.as_bytes());
}

pub(crate) fn decode_ack(f: &[u8], tail: &[u8]) -> Result<ShmAck, String> {
    let text_len = get_u32(f, 12) as usize;
    if text_len > tail.len() {
        return Err(format!(
            "text_len {text_len} exceeds the {} bytes that follow",
            tail.len()
        ));
    }
    Ok(ShmAck {
        token: u64::from_le_bytes(f[..8].try_into().unwrap()),
        accepted: f[8] == SHM_ACCEPTED,
        reason: String::from_utf8_lossy(&tail[..text_len]).into_owned(),
    })
}

impl ShmFrame {
    /// The whole message, header included (no pixels follow: they are in
    /// the slot).
    pub fn encode(&self, session_id: u16) -> [u8; HEADER_LEN + SHM_FRAME_FIXED] {
        let mut b = [0u8; HEADER_LEN + SHM_FRAME_FIXED];
        b[..HEADER_LEN].copy_from_slice(
            &Header::new(SHM_FRAME, 0, session_id, SHM_FRAME_FIXED as u32).to_bytes(),
        );
        let p = &mut b[HEADER_LEN..];
        self.request.encode_fixed(&mut p[..FRAME_REQUEST_FIXED]);
        let q = &mut p[FRAME_REQUEST_FIXED..];
        put_u32(q, 0, self.slot);
        put_u32(q, 4, self.n_planes);
        q[8..16].copy_from_slice(&self.slot_offset.to_le_bytes());
        q[16..24].copy_from_slice(&self.slot_len.to_le_bytes());
        for (i, pl) in self.planes.iter().enumerate() {
            put_u32(q, 24 + 8 * i, pl.offset);
            put_u32(q, 28 + 8 * i, pl.stride);
        }
        b
    }

    pub(crate) fn decode_fixed(b: &[u8]) -> Self {
        let q = &b[FRAME_REQUEST_FIXED..];
        let mut planes = [SlotPlane::default(); MAX_PLANES];
        for (i, pl) in planes.iter_mut().enumerate() {
            *pl = SlotPlane {
                offset: get_u32(q, 24 + 8 * i),
                stride: get_u32(q, 28 + 8 * i),
            };
        }
        ShmFrame {
            request: FrameRequest::decode_fixed(b),
            slot: get_u32(q, 0),
            n_planes: get_u32(q, 4),
            slot_offset: u64::from_le_bytes(q[8..16].try_into().unwrap()),
            slot_len: u64::from_le_bytes(q[16..24].try_into().unwrap()),
            planes,
        }
    }
}

pub(crate) fn encode_release(r: &ShmRelease, p: &mut Vec<u8>) {
    p.extend_from_slice(&r.slot.to_le_bytes());
    p.extend_from_slice(&r.frame_index.to_le_bytes());
}

pub(crate) fn decode_release(f: &[u8]) -> ShmRelease {
    ShmRelease {
        slot: get_u32(f, 0),
        frame_index: get_u32(f, 4),
    }
}

const _: () = assert!(SHM_FRAME_FIXED == 92);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(format: WireFormat, w: u32, h: u32, planes: &[(u32, u32)]) -> ShmFrame {
        let mut f = ShmFrame {
            request: FrameRequest {
                width: w,
                height: h,
                format: format.fourcc(),
                stride: planes[0].1,
                ..Default::default()
            },
            slot: 3,
            n_planes: planes.len() as u32,
            slot_offset: DATA_OFFSET,
            slot_len: 1 << 20,
            ..Default::default()
        };
        for (i, (o, s)) in planes.iter().enumerate() {
            f.planes[i] = SlotPlane {
                offset: *o,
                stride: *s,
            };
        }
        f
    }

    #[test]
    fn a_good_nv12_slot_validates() {
        let f = frame(WireFormat::Nv12, 64, 48, &[(0, 64), (64 * 48, 64)]);
        let l = f.validate(8 << 20, false).unwrap();
        assert_eq!(l.n_planes, 2);
        assert_eq!(l.planes[1].rows, 24);
        assert_eq!(l.used_len(), 64 * 48 + 64 * 24);
        assert_eq!(l.slot_offset, DATA_OFFSET as usize);
    }

    #[test]
    fn every_bad_description_names_what_is_wrong() {
        let good = frame(WireFormat::Bgra, 16, 16, &[(0, 64)]);
        let region = 1 << 21;
        let cases: Vec<(ShmFrame, &str)> = vec![
            (
                ShmFrame {
                    slot_offset: 0,
                    ..good
                },
                "not inside the region's data area",
            ),
            (
                ShmFrame {
                    slot_offset: u64::MAX - 4,
                    slot_len: 100,
                    ..good
                },
                "not inside the region's data area",
            ),
            (
                ShmFrame {
                    slot_len: region,
                    ..good
                },
                "not inside the region's data area",
            ),
            (
                ShmFrame {
                    slot_len: 64 * 15,
                    ..good
                },
                "ends at byte 1024 of slot 3, which has 960 bytes",
            ),
            (
                ShmFrame {
                    n_planes: 2,
                    ..good
                },
                "BGRA/BGRx has 1 planes, the frame names 2",
            ),
            (
                frame(WireFormat::Bgra, 16, 16, &[(0, 63)]),
                "stride 63 is below its 64 bytes per row",
            ),
            (
                frame(WireFormat::Bgra, 16, 16, &[(u32::MAX, 64)]),
                "plane 0 (offset 4294967295",
            ),
            (
                frame(WireFormat::Bgra, 0, 16, &[(0, 64)]),
                "size 0x16 is outside",
            ),
            (
                frame(WireFormat::I420, 16, 16, &[(0, 16), (256, 8), (320, 8)]),
                "FORMATS extension",
            ),
        ];
        for (f, want) in cases {
            let e = f.validate(region, false).unwrap_err();
            assert!(e.0.contains(want), "{e} does not say {want:?}");
        }
        let mut unknown = good;
        unknown.request.format = 0x1234;
        assert!(unknown
            .validate(region, false)
            .unwrap_err()
            .0
            .contains("unknown pixel format"));
    }

    #[test]
    fn headers_round_trip_and_reject_strangers() {
        let h = RegionHeader {
            region_size: 64 << 20,
            nonce: [7; 16],
        };
        let b = h.to_bytes();
        assert_eq!(RegionHeader::parse(&b), Some(h));
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(RegionHeader::parse(&bad), None);
        assert_eq!(RegionHeader::parse(&b[..20]), None);
    }
}
