//! Negotiated extensions of HXFR, spoken only between `vsockenc` and
//! `vsockenc-host` (see `docs/protocol.md` for the normative description).
//!
//! A guest announces itself with one [`Hello`]. A legacy host skips it like
//! any unknown message type and never answers, so the guest keeps speaking
//! legacy HXFR. `vsockenc-host` answers with a [`HelloAck`] naming the
//! extensions it accepts; only after it has arrived does the guest use them.
//!
//! Extension messages use the type codes `0x40..=0x4F`, which no legacy peer
//! uses ([`ext_type`]). A [`crate::Decoder`] decodes them only when told to
//! ([`crate::Decoder::set_extensions`]); otherwise they come out as
//! [`crate::Message::Skipped`], exactly as a legacy peer sees them.
//!
//! Layouts (offsets from the start of the message, header included; all
//! integers little-endian, packed):
//!
//! | message | payload | layout |
//! |---|---|---|
//! | HELLO 0x40 | 44 | version u16 @12, codec u8 @14, reserved u8 @15, extensions u32 @16, tile_width u16 @20, tile_height u16 @22, agent 32 bytes NUL-padded @24 |
//! | HELLO_ACK 0x41 | 44 (+ 4 + text) | version u16 @12, codec u8 @14, reserved u8 @15, extensions u32 @16, max_frame_bytes u32 @20, agent 32 bytes @24; optional text_len u32 @56, text (UTF-8) @60: why the codec asked for is not encoded |
//! | COMPACT_FRAME 0x42 | 68 + bitmap + data | FRAME_REQUEST fixed part @12..56, ref_index u32 @56, tile_width u16 @60, tile_height u16 @62, encoding u8 @64, 3 reserved, changed_tiles u32 @68, data_len u32 @72, raw_len u32 @76, bitmap @80, data |
//! | ERROR_PTS 0x43 | 20 + text | pts i64 @12, frame_index u32 @20, code i32 @24, text_len u32 @28, text (UTF-8) @32 |
//! | DRAIN 0x44 | 8 | token u64 @12 |
//! | DRAIN_DONE 0x45 | 8 | token u64 @12 |
//! | FRAME_CHECKSUM 0x46 | 24 | pts i64 @12, frame_index u32 @20, flags u32 @24, checksum u64 @28 |
//! | PROFILE_REQ 0x47 | 28 | token u64 @12, profile_idc u8 @20, constraint flags u8 @21, max_level u8 @22, reserved u8, width u32 @24, height u32 @28, framerate_num u32 @32, framerate_den u32 @36 |
//! | PROFILE_RESP 0x48 | 48 + text | token u64 @12, status u8 @20, profile_idc u8 @21, constraint flags u8 @22, level u8 @23, encoder 32 bytes NUL-padded @24, text_len u32 @56, text (UTF-8) @60 |
//! | SHM_OFFER .. SHM_RELEASE 0x49..0x4C | | see [`crate::shm`] |
//!
//! Like the legacy messages, a payload may be longer than its fixed part (a
//! newer peer may append fields); the extra bytes are ignored.

use crate::codec::Codec;
pub use crate::ext_state::{ChecksumCheck, CodecState, GuestExt, HostExt};
use crate::header::{Header, HEADER_LEN};
use crate::message::{get_i64, get_u32, put_u32, FrameRequest, FRAME_REQUEST_FIXED};
use crate::profile::{Level, Profile};
use crate::shm::{self, ShmAck, ShmFrame, ShmOffer, ShmRelease};

/// Version of the extension protocol this crate speaks.
pub const EXT_VERSION: u16 = 1;

/// Message type codes of the extensions. The whole range `0x40..=0x4F` is
/// reserved for them; codes without a meaning yet decode as `Skipped`.
pub mod ext_type {
    pub const HELLO: u8 = 0x40;
    pub const HELLO_ACK: u8 = 0x41;
    pub const COMPACT_FRAME: u8 = 0x42;
    pub const ERROR_PTS: u8 = 0x43;
    pub const DRAIN: u8 = 0x44;
    pub const DRAIN_DONE: u8 = 0x45;
    pub const FRAME_CHECKSUM: u8 = 0x46;
    pub const PROFILE_REQ: u8 = 0x47;
    pub const PROFILE_RESP: u8 = 0x48;
    pub const SHM_OFFER: u8 = crate::shm::SHM_OFFER;
    pub const SHM_ACK: u8 = crate::shm::SHM_ACK;
    pub const SHM_FRAME: u8 = crate::shm::SHM_FRAME;
    pub const SHM_RELEASE: u8 = crate::shm::SHM_RELEASE;
    /// First and last code reserved for extensions.
    pub const FIRST: u8 = 0x40;
    pub const LAST: u8 = 0x4F;

    /// Whether `t` is one of the codes this crate decodes as an extension.
    pub fn is_known(t: u8) -> bool {
        (HELLO..=SHM_RELEASE).contains(&t)
    }

    /// Human-readable name, `None` for anything else.
    pub fn name(t: u8) -> Option<&'static str> {
        Some(match t {
            HELLO => "HELLO",
            HELLO_ACK => "HELLO_ACK",
            COMPACT_FRAME => "COMPACT_FRAME",
            ERROR_PTS => "ERROR_PTS",
            DRAIN => "DRAIN",
            DRAIN_DONE => "DRAIN_DONE",
            FRAME_CHECKSUM => "FRAME_CHECKSUM",
            PROFILE_REQ => "PROFILE_REQ",
            PROFILE_RESP => "PROFILE_RESP",
            SHM_OFFER => "SHM_OFFER",
            SHM_ACK => "SHM_ACK",
            SHM_FRAME => "SHM_FRAME",
            SHM_RELEASE => "SHM_RELEASE",
            _ => return None,
        })
    }
}

/// Extension bits of [`Hello::extensions`] and [`HelloAck::extensions`].
pub mod ext_bits {
    /// COMPACT_FRAME: only the tiles that changed since the reference frame.
    pub const COMPACT: u32 = 1 << 0;
    /// COMPACT_FRAME tile data may be LZ4-compressed (needs [`COMPACT`]).
    pub const LZ4: u32 = 1 << 1;
    /// Frame errors come as ERROR_PTS, naming the frame.
    pub const ERROR_PTS: u32 = 1 << 2;
    /// DRAIN / DRAIN_DONE handshake.
    pub const DRAIN: u32 = 1 << 3;
    /// FRAME_CHECKSUM for every frame the host receives (tests, debugging:
    /// it costs the host one pass over every frame). Only negotiated when a
    /// guest explicitly asks for it.
    pub const FRAME_CHECKSUM: u32 = 1 << 4;
    /// PROFILE_REQ / PROFILE_RESP: the guest asks for an H.264 profile and
    /// level, the host makes its encoder produce them or says why not.
    pub const PROFILE: u32 = 1 << 5;
    /// The guest may send the pixel formats of
    /// [`crate::WireFormat::NEGOTIATED`] (I420, YV12, YUY2, UYVY), always as
    /// full FRAME_REQUESTs.
    pub const FORMATS: u32 = 1 << 6;
    /// Shared-memory frames (SHM_OFFER, SHM_ACK, SHM_FRAME, SHM_RELEASE;
    /// [`crate::shm`]): pixels stay in a region both sides map.
    pub const SHM: u32 = 1 << 7;
    /// The HELLO's codec ([`crate::Codec`]) is what the host encodes on
    /// this connection. Without it (a legacy or older host, or a host
    /// without an encoder for that codec) the host encodes H.264.
    pub const CODEC: u32 = 1 << 8;
    /// Every bit this crate knows.
    pub const KNOWN: u32 =
        COMPACT | LZ4 | ERROR_PTS | DRAIN | FRAME_CHECKSUM | PROFILE | FORMATS | SHM | CODEC;

    /// Names of the bits set in `mask`, for logs (`"COMPACT|LZ4"`, `"none"`).
    pub fn describe(mask: u32) -> String {
        let names = [
            (COMPACT, "COMPACT"),
            (LZ4, "LZ4"),
            (ERROR_PTS, "ERROR_PTS"),
            (DRAIN, "DRAIN"),
            (FRAME_CHECKSUM, "FRAME_CHECKSUM"),
            (PROFILE, "PROFILE"),
            (FORMATS, "FORMATS"),
            (SHM, "SHM"),
            (CODEC, "CODEC"),
        ];
        let mut parts: Vec<String> = names
            .iter()
            .filter(|(b, _)| mask & b != 0)
            .map(|(_, n)| n.to_string())
            .collect();
        let unknown = mask & !KNOWN;
        if unknown != 0 {
            parts.push(format!("0x{unknown:x}"));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("|")
        }
    }
}

/// The extensions a host accepts: what the guest asked for, the host
/// supports and this crate knows; LZ4 only together with COMPACT.
pub fn negotiate(requested: u32, supported: u32) -> u32 {
    let mut accepted = requested & supported & ext_bits::KNOWN;
    if accepted & ext_bits::COMPACT == 0 {
        accepted &= !ext_bits::LZ4;
    }
    accepted
}

/// Size of the NUL-padded agent string of HELLO and HELLO_ACK.
pub const AGENT_LEN: usize = 32;
/// Payload of HELLO.
pub const HELLO_FIXED: usize = 12 + AGENT_LEN;
/// Payload of HELLO_ACK.
pub const HELLO_ACK_FIXED: usize = 12 + AGENT_LEN;
/// Fixed part of a COMPACT_FRAME payload (before bitmap and tile data).
pub const COMPACT_FIXED: usize = FRAME_REQUEST_FIXED + 24;
/// Fixed part of an ERROR_PTS payload (before the text).
pub const ERROR_PTS_FIXED: usize = 20;
/// Longest ERROR_PTS text this crate sends.
pub const ERROR_PTS_MAX_TEXT: usize = 1024;
/// Payload of DRAIN and DRAIN_DONE.
pub const DRAIN_FIXED: usize = 8;
/// Payload of FRAME_CHECKSUM.
pub const FRAME_CHECKSUM_FIXED: usize = 24;
/// Payload of PROFILE_REQ.
pub const PROFILE_REQ_FIXED: usize = 28;
/// Fixed part of a PROFILE_RESP payload (before the text).
pub const PROFILE_RESP_FIXED: usize = 12 + ENCODER_LEN + 4;
/// Size of the NUL-padded encoder name of PROFILE_RESP.
pub const ENCODER_LEN: usize = 32;
/// Longest PROFILE_RESP text this crate sends.
pub const PROFILE_RESP_MAX_TEXT: usize = 1024;
/// Longest HELLO_ACK text this crate sends.
pub const HELLO_ACK_MAX_TEXT: usize = 1024;

/// HELLO (guest → host): the guest's announcement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    pub version: u16,
    /// The codec the guest wants ([`Codec::to_u8`]), meaningful with
    /// [`ext_bits::CODEC`] only: H.264 otherwise, which is what the
    /// reserved byte of an older guest's HELLO says. Kept as sent, so that
    /// a codec this crate does not know is refused, not taken for H.264.
    pub codec: u8,
    /// [`ext_bits`] the guest supports and wants.
    pub extensions: u32,
    /// Tile size the guest intends to use for COMPACT_FRAME (informative;
    /// every COMPACT_FRAME names its own). 0 when it does not matter.
    pub tile_width: u16,
    pub tile_height: u16,
    /// Free text naming the guest software, up to 31 bytes on the wire.
    pub agent: String,
}

impl Hello {
    /// The codec asked for: `Ok(H264)` without [`ext_bits::CODEC`],
    /// `Err(code)` for a codec this crate does not know.
    pub fn wanted_codec(&self) -> Result<Codec, u8> {
        if self.extensions & ext_bits::CODEC == 0 {
            return Ok(Codec::H264);
        }
        Codec::from_u8(self.codec).ok_or(self.codec)
    }
}

/// HELLO_ACK (host → guest): the extensions the host accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HelloAck {
    /// The version both sides speak: the lower of the two.
    pub version: u16,
    /// The codec the host encodes on this connection: the HELLO's when
    /// [`ext_bits::CODEC`] is accepted, else H.264.
    pub codec: Codec,
    /// Why the HELLO's codec is not accepted (empty otherwise), for people:
    /// sent after the fixed part, which older guests skip.
    pub reason: String,
    /// A subset of the HELLO's extensions (see [`negotiate`]).
    pub extensions: u32,
    /// Largest pixel block the host accepts (its `--max-frame-bytes`); 0 if
    /// it does not say.
    pub max_frame_bytes: u32,
    /// Free text naming the host software, up to 31 bytes on the wire.
    pub agent: String,
}

/// How the tile data of a COMPACT_FRAME is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TileEncoding {
    /// The changed tiles' bytes as they are.
    #[default]
    Raw,
    /// One LZ4 block (no frame header) that decompresses to exactly
    /// `raw_len` bytes.
    Lz4,
}

impl TileEncoding {
    pub fn to_u8(self) -> u8 {
        match self {
            TileEncoding::Raw => 0,
            TileEncoding::Lz4 => 1,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(TileEncoding::Raw),
            1 => Some(TileEncoding::Lz4),
            _ => None,
        }
    }
}

/// The fixed part of a COMPACT_FRAME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactHeader {
    /// The frame as a FRAME_REQUEST would describe it. `resource_id` is 0;
    /// `stride` is the stride of the rebuilt frame, equal to the reference
    /// frame's.
    pub request: FrameRequest,
    /// Index of the reference frame: frame messages (FRAME_REQUEST and
    /// COMPACT_FRAME) on this connection are numbered from 0 in the order
    /// they are sent.
    pub ref_index: u32,
    /// Tile size in pixels (of plane 0): multiples of 8 in 8..=1024.
    pub tile_width: u16,
    pub tile_height: u16,
    pub encoding: TileEncoding,
    /// Number of bits set in the bitmap.
    pub changed_tiles: u32,
    /// Bytes of tile data on the wire (after the bitmap).
    pub data_len: u32,
    /// Bytes of tile data once decompressed (equal to `data_len` when raw).
    pub raw_len: u32,
}

impl CompactHeader {
    /// Bytes of the changed-tile bitmap for this frame's geometry (0 if the
    /// geometry is invalid; the frame is then rejected when applied).
    pub fn bitmap_len(&self) -> usize {
        let (w, h) = (self.request.width as usize, self.request.height as usize);
        let (tw, th) = (self.tile_width as usize, self.tile_height as usize);
        if tw == 0 || th == 0 {
            return 0;
        }
        (w.div_ceil(tw) * h.div_ceil(th)).div_ceil(8)
    }

    /// Payload size of the COMPACT_FRAME this header describes.
    pub fn payload_size(&self) -> usize {
        COMPACT_FIXED + self.bitmap_len() + self.data_len as usize
    }

    /// Header and fixed part, ready to be followed by the bitmap and the
    /// tile data.
    pub fn encode_prefix(&self, session_id: u16) -> [u8; HEADER_LEN + COMPACT_FIXED] {
        let mut b = [0u8; HEADER_LEN + COMPACT_FIXED];
        let payload = u32::try_from(self.payload_size())
            .expect("COMPACT_FRAME larger than 4 GiB cannot be framed");
        b[..HEADER_LEN].copy_from_slice(
            &Header::new(ext_type::COMPACT_FRAME, 0, session_id, payload).to_bytes(),
        );
        let p = &mut b[HEADER_LEN..];
        self.request.encode_fixed(&mut p[..FRAME_REQUEST_FIXED]);
        let q = &mut p[FRAME_REQUEST_FIXED..];
        put_u32(q, 0, self.ref_index);
        q[4..6].copy_from_slice(&self.tile_width.to_le_bytes());
        q[6..8].copy_from_slice(&self.tile_height.to_le_bytes());
        q[8] = self.encoding.to_u8();
        // 9..12 reserved
        put_u32(q, 12, self.changed_tiles);
        put_u32(q, 16, self.data_len);
        put_u32(q, 20, self.raw_len);
        b
    }

    /// Parses the fixed part; `Err` names what is wrong.
    pub(crate) fn decode_fixed(b: &[u8]) -> Result<Self, String> {
        let q = &b[FRAME_REQUEST_FIXED..];
        let encoding = TileEncoding::from_u8(q[8])
            .ok_or_else(|| format!("unknown tile encoding {} (0 raw, 1 LZ4)", q[8]))?;
        Ok(CompactHeader {
            request: FrameRequest::decode_fixed(b),
            ref_index: get_u32(q, 0),
            tile_width: u16::from_le_bytes([q[4], q[5]]),
            tile_height: u16::from_le_bytes([q[6], q[7]]),
            encoding,
            changed_tiles: get_u32(q, 12),
            data_len: get_u32(q, 16),
            raw_len: get_u32(q, 20),
        })
    }
}

/// A decoded COMPACT_FRAME: its fixed part and the bitmap followed by the
/// tile data, kept in one buffer as they arrived (no copy).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactFrame {
    pub header: CompactHeader,
    /// Bitmap, then tile data. Its length is checked by the decoder.
    pub body: Vec<u8>,
}

impl CompactFrame {
    /// One bit per tile, tile `i = ty * tiles_x + tx` at bit `i % 8` of byte
    /// `i / 8`.
    pub fn bitmap(&self) -> &[u8] {
        &self.body[..self.header.bitmap_len().min(self.body.len())]
    }

    /// The changed tiles' bytes, raw or compressed.
    pub fn data(&self) -> &[u8] {
        &self.body[self.header.bitmap_len().min(self.body.len())..]
    }
}

/// ERROR_PTS (host → guest): an error that names its frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorPts {
    /// pts of the failed frame; [`PTS_UNKNOWN`] when the host could not
    /// read it (the frame was refused before its fields were read).
    pub pts: i64,
    /// Index of the failed frame on this connection (see
    /// [`CompactHeader::ref_index`]).
    pub frame_index: u32,
    /// One of [`crate::error_code`].
    pub code: i32,
    pub message: String,
}

/// [`ErrorPts::pts`] of a frame whose pts the host never read.
pub const PTS_UNKNOWN: i64 = i64::MIN;

/// FRAME_CHECKSUM flag: the frame was rebuilt from a COMPACT_FRAME.
pub const CHECKSUM_FLAG_REBUILT: u32 = 1;

/// FRAME_CHECKSUM (host → guest): a checksum of the frame as the host will
/// encode it. See [`crate::compact::checksum`] for what is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameChecksum {
    pub pts: i64,
    pub frame_index: u32,
    /// [`CHECKSUM_FLAG_REBUILT`] or 0.
    pub flags: u32,
    pub checksum: u64,
}

/// PROFILE_REQ (guest → host): the H.264 profile and the highest level
/// the guest's downstream accepts, for the frames it sends from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProfileRequest {
    /// Chosen by the guest; the PROFILE_RESP echoes it.
    pub token: u64,
    /// [`Profile::ANY`]: whatever the host's encoder produces by default.
    pub profile: Profile,
    /// Highest level accepted; [`Level::ANY`] for no limit.
    pub max_level: Level,
    /// Size and rate of the frames that will follow (0: not known). The
    /// host tries the encoder on them, which is what tells the level.
    pub width: u32,
    pub height: u32,
    pub framerate_num: u32,
    pub framerate_den: u32,
}

/// PROFILE_RESP status: the host produces what was asked for.
pub const PROFILE_ACCEPTED: u8 = 0;
/// PROFILE_RESP status: the host cannot; its encoding is unchanged.
pub const PROFILE_REFUSED: u8 = 1;

/// PROFILE_RESP (host → guest): the answer to the PROFILE_REQ with the
/// same token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileResponse {
    pub token: u64,
    pub accepted: bool,
    /// The profile of the stream the host produces (an SPS's profile_idc and
    /// flags); [`Profile::ANY`] when refused.
    pub profile: Profile,
    /// The level it produces for the request's size and rate;
    /// [`Level::ANY`] when not known or refused.
    pub level: Level,
    /// The host's encoder (a GStreamer factory name, up to 31 bytes).
    pub encoder: String,
    /// Why a request was refused (empty when accepted), for people.
    pub reason: String,
}

/// One decoded extension message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtMessage {
    Hello(Hello),
    HelloAck(HelloAck),
    CompactFrame(CompactFrame),
    ErrorPts(ErrorPts),
    /// Guest → host: answer with DRAIN_DONE once every earlier frame of this
    /// connection has been answered.
    Drain {
        token: u64,
    },
    /// Host → guest: every frame before the DRAIN with this token has had
    /// its response (FRAME_RESPONSE or ERROR_PTS) sent.
    DrainDone {
        token: u64,
    },
    FrameChecksum(FrameChecksum),
    ProfileRequest(ProfileRequest),
    ProfileResponse(ProfileResponse),
    ShmOffer(ShmOffer),
    ShmAck(ShmAck),
    ShmFrame(ShmFrame),
    ShmRelease(ShmRelease),
}

impl ExtMessage {
    pub fn msg_type(&self) -> u8 {
        match self {
            ExtMessage::Hello(_) => ext_type::HELLO,
            ExtMessage::HelloAck(_) => ext_type::HELLO_ACK,
            ExtMessage::CompactFrame(_) => ext_type::COMPACT_FRAME,
            ExtMessage::ErrorPts(_) => ext_type::ERROR_PTS,
            ExtMessage::Drain { .. } => ext_type::DRAIN,
            ExtMessage::DrainDone { .. } => ext_type::DRAIN_DONE,
            ExtMessage::FrameChecksum(_) => ext_type::FRAME_CHECKSUM,
            ExtMessage::ProfileRequest(_) => ext_type::PROFILE_REQ,
            ExtMessage::ProfileResponse(_) => ext_type::PROFILE_RESP,
            ExtMessage::ShmOffer(_) => ext_type::SHM_OFFER,
            ExtMessage::ShmAck(_) => ext_type::SHM_ACK,
            ExtMessage::ShmFrame(_) => ext_type::SHM_FRAME,
            ExtMessage::ShmRelease(_) => ext_type::SHM_RELEASE,
        }
    }

    /// The whole message, header included. A COMPACT_FRAME is better sent
    /// with [`crate::compact::CompactEncoder`], which does not copy pixels.
    pub fn encode(&self, session_id: u16) -> Vec<u8> {
        let mut payload = Vec::new();
        match self {
            ExtMessage::Hello(h) => {
                payload.extend_from_slice(&h.version.to_le_bytes());
                payload.extend_from_slice(&[h.codec, 0]);
                payload.extend_from_slice(&h.extensions.to_le_bytes());
                payload.extend_from_slice(&h.tile_width.to_le_bytes());
                payload.extend_from_slice(&h.tile_height.to_le_bytes());
                payload.extend_from_slice(&agent_bytes(&h.agent));
            }
            ExtMessage::HelloAck(a) => {
                payload.extend_from_slice(&a.version.to_le_bytes());
                payload.extend_from_slice(&[a.codec.to_u8(), 0]);
                payload.extend_from_slice(&a.extensions.to_le_bytes());
                payload.extend_from_slice(&a.max_frame_bytes.to_le_bytes());
                payload.extend_from_slice(&agent_bytes(&a.agent));
                // The text only when there is one: a HELLO_ACK without it
                // is byte for byte what hosts sent before CODEC.
                if !a.reason.is_empty() {
                    let text = cut_at_char_boundary(&a.reason, HELLO_ACK_MAX_TEXT);
                    payload.extend_from_slice(&(text.len() as u32).to_le_bytes());
                    payload.extend_from_slice(text.as_bytes());
                }
            }
            ExtMessage::CompactFrame(c) => {
                let mut out = c.header.encode_prefix(session_id).to_vec();
                out.extend_from_slice(&c.body);
                // Keep the header honest even for a hand-built body.
                let size = (out.len() - HEADER_LEN) as u32;
                out[8..12].copy_from_slice(&size.to_le_bytes());
                return out;
            }
            ExtMessage::ErrorPts(e) => {
                let text = cut_at_char_boundary(&e.message, ERROR_PTS_MAX_TEXT);
                payload.extend_from_slice(&e.pts.to_le_bytes());
                payload.extend_from_slice(&e.frame_index.to_le_bytes());
                payload.extend_from_slice(&e.code.to_le_bytes());
                payload.extend_from_slice(&(text.len() as u32).to_le_bytes());
                payload.extend_from_slice(text.as_bytes());
            }
            ExtMessage::Drain { token } | ExtMessage::DrainDone { token } => {
                payload.extend_from_slice(&token.to_le_bytes());
            }
            ExtMessage::FrameChecksum(c) => {
                payload.extend_from_slice(&c.pts.to_le_bytes());
                payload.extend_from_slice(&c.frame_index.to_le_bytes());
                payload.extend_from_slice(&c.flags.to_le_bytes());
                payload.extend_from_slice(&c.checksum.to_le_bytes());
            }
            ExtMessage::ProfileRequest(r) => {
                payload.extend_from_slice(&r.token.to_le_bytes());
                payload.extend_from_slice(&[
                    r.profile.idc,
                    r.profile.constraints,
                    r.max_level.0,
                    0,
                ]);
                for v in [r.width, r.height, r.framerate_num, r.framerate_den] {
                    payload.extend_from_slice(&v.to_le_bytes());
                }
            }
            ExtMessage::ProfileResponse(r) => {
                let status = if r.accepted {
                    PROFILE_ACCEPTED
                } else {
                    PROFILE_REFUSED
                };
                let text = cut_at_char_boundary(&r.reason, PROFILE_RESP_MAX_TEXT);
                payload.extend_from_slice(&r.token.to_le_bytes());
                payload.extend_from_slice(&[
                    status,
                    r.profile.idc,
                    r.profile.constraints,
                    r.level.0,
                ]);
                payload.extend_from_slice(&agent_bytes(&r.encoder));
                payload.extend_from_slice(&(text.len() as u32).to_le_bytes());
                payload.extend_from_slice(text.as_bytes());
            }
            ExtMessage::ShmOffer(o) => shm::encode_offer(o, &mut payload),
            ExtMessage::ShmAck(a) => shm::encode_ack(
                a,
                &mut payload,
                cut_at_char_boundary(&a.reason, shm::SHM_ACK_MAX_TEXT),
            ),
            ExtMessage::ShmFrame(f) => return f.encode(session_id).to_vec(),
            ExtMessage::ShmRelease(r) => shm::encode_release(r, &mut payload),
        }
        let header = Header::new(self.msg_type(), 0, session_id, payload.len() as u32);
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

/// Minimum payload, and whether the bytes after the fixed part are kept
/// (`true`) or skipped, for each known extension type.
pub(crate) fn fixed_part(t: u8) -> Option<(usize, bool)> {
    Some(match t {
        ext_type::HELLO => (HELLO_FIXED, false),
        ext_type::HELLO_ACK => (HELLO_ACK_FIXED, true),
        ext_type::COMPACT_FRAME => (COMPACT_FIXED, true),
        ext_type::ERROR_PTS => (ERROR_PTS_FIXED, true),
        ext_type::DRAIN | ext_type::DRAIN_DONE => (DRAIN_FIXED, false),
        ext_type::FRAME_CHECKSUM => (FRAME_CHECKSUM_FIXED, false),
        ext_type::PROFILE_REQ => (PROFILE_REQ_FIXED, false),
        ext_type::PROFILE_RESP => (PROFILE_RESP_FIXED, true),
        ext_type::SHM_OFFER => (shm::SHM_OFFER_FIXED, false),
        ext_type::SHM_ACK => (shm::SHM_ACK_FIXED, true),
        ext_type::SHM_FRAME => (shm::SHM_FRAME_FIXED, false),
        ext_type::SHM_RELEASE => (shm::SHM_RELEASE_FIXED, false),
        _ => return None,
    })
}

/// Builds a message from its fixed part and kept tail. `Err` is the text of
/// a `Malformed` error.
pub(crate) fn decode_body(t: u8, f: &[u8], tail: Vec<u8>) -> Result<ExtMessage, String> {
    Ok(match t {
        ext_type::HELLO => ExtMessage::Hello(Hello {
            version: u16::from_le_bytes([f[0], f[1]]),
            codec: f[2],
            extensions: get_u32(f, 4),
            tile_width: u16::from_le_bytes([f[8], f[9]]),
            tile_height: u16::from_le_bytes([f[10], f[11]]),
            agent: agent_string(&f[12..12 + AGENT_LEN]),
        }),
        ext_type::HELLO_ACK => {
            // The text is optional: older hosts send the fixed part only.
            // A tail that is not a text (a field of a newer host) is
            // ignored like any appended field: the negotiation it carries
            // matters more than an explanation.
            let reason = tail
                .get(..4)
                .and_then(|n| {
                    let text_len = u32::from_le_bytes(n.try_into().unwrap()) as usize;
                    tail.get(4..4usize.checked_add(text_len)?)
                })
                .map(|text| String::from_utf8_lossy(text).into_owned())
                .unwrap_or_default();
            ExtMessage::HelloAck(HelloAck {
                version: u16::from_le_bytes([f[0], f[1]]),
                codec: Codec::from_u8(f[2]).unwrap_or(Codec::H264),
                reason,
                extensions: get_u32(f, 4),
                max_frame_bytes: get_u32(f, 8),
                agent: agent_string(&f[12..12 + AGENT_LEN]),
            })
        }
        ext_type::COMPACT_FRAME => {
            let header = CompactHeader::decode_fixed(f)?;
            let want = header.bitmap_len() as u64 + header.data_len as u64;
            if want != tail.len() as u64 {
                return Err(format!(
                    "bitmap ({} bytes for {}x{} in {}x{} tiles) and data_len {} add up to {want} bytes, but {} follow the fixed part",
                    header.bitmap_len(),
                    header.request.width,
                    header.request.height,
                    header.tile_width,
                    header.tile_height,
                    header.data_len,
                    tail.len()
                ));
            }
            ExtMessage::CompactFrame(CompactFrame { header, body: tail })
        }
        ext_type::ERROR_PTS => {
            let text_len = get_u32(f, 16) as usize;
            if text_len > tail.len() {
                return Err(format!(
                    "text_len {text_len} exceeds the {} bytes that follow",
                    tail.len()
                ));
            }
            let text = &tail[..text_len];
            let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
            ExtMessage::ErrorPts(ErrorPts {
                pts: get_i64(f, 0),
                frame_index: get_u32(f, 8),
                code: i32::from_le_bytes([f[12], f[13], f[14], f[15]]),
                message: String::from_utf8_lossy(&text[..end]).into_owned(),
            })
        }
        ext_type::DRAIN => ExtMessage::Drain {
            token: u64::from_le_bytes(f[..8].try_into().unwrap()),
        },
        ext_type::DRAIN_DONE => ExtMessage::DrainDone {
            token: u64::from_le_bytes(f[..8].try_into().unwrap()),
        },
        ext_type::FRAME_CHECKSUM => ExtMessage::FrameChecksum(FrameChecksum {
            pts: get_i64(f, 0),
            frame_index: get_u32(f, 8),
            flags: get_u32(f, 12),
            checksum: u64::from_le_bytes(f[16..24].try_into().unwrap()),
        }),
        ext_type::PROFILE_REQ => ExtMessage::ProfileRequest(ProfileRequest {
            token: u64::from_le_bytes(f[..8].try_into().unwrap()),
            profile: Profile::new(f[8], f[9]),
            max_level: Level(f[10]),
            width: get_u32(f, 12),
            height: get_u32(f, 16),
            framerate_num: get_u32(f, 20),
            framerate_den: get_u32(f, 24),
        }),
        ext_type::PROFILE_RESP => {
            let text_len = get_u32(f, 12 + ENCODER_LEN) as usize;
            if text_len > tail.len() {
                return Err(format!(
                    "text_len {text_len} exceeds the {} bytes that follow",
                    tail.len()
                ));
            }
            ExtMessage::ProfileResponse(ProfileResponse {
                token: u64::from_le_bytes(f[..8].try_into().unwrap()),
                // A status this crate does not know is no acceptance.
                accepted: f[8] == PROFILE_ACCEPTED,
                profile: Profile::new(f[9], f[10]),
                level: Level(f[11]),
                encoder: agent_string(&f[12..12 + ENCODER_LEN]),
                reason: String::from_utf8_lossy(&tail[..text_len]).into_owned(),
            })
        }
        ext_type::SHM_OFFER => ExtMessage::ShmOffer(shm::decode_offer(f)?),
        ext_type::SHM_ACK => ExtMessage::ShmAck(shm::decode_ack(f, &tail)?),
        ext_type::SHM_FRAME => ExtMessage::ShmFrame(ShmFrame::decode_fixed(f)),
        ext_type::SHM_RELEASE => ExtMessage::ShmRelease(shm::decode_release(f)),
        t => unreachable!("0x{t:02x} is not a known extension type"),
    })
}

fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

fn agent_bytes(agent: &str) -> [u8; AGENT_LEN] {
    let mut b = [0u8; AGENT_LEN];
    let s = cut_at_char_boundary(agent, AGENT_LEN - 1);
    b[..s.len()].copy_from_slice(s.as_bytes());
    b
}

fn agent_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

// The documented sizes, checked at compile time.
const _: () = assert!(COMPACT_FIXED == 68);
const _: () = assert!(HELLO_FIXED == 44 && HELLO_ACK_FIXED == 44);
const _: () = assert!(PROFILE_REQ_FIXED == 28 && PROFILE_RESP_FIXED == 48);
