//! Typed HXFR messages and their exact byte layouts.
//!
//! Layouts (offsets from the start of the message, header included):
//!
//! | message | size | layout |
//! |---|---|---|
//! | FRAME_REQUEST | 56 (+ pixels) | resource_id u32 @12, width @16, height @20, format @24, stride @28, pts i64 @32, duration i64 @40, force_keyframe u8 @48, 7 reserved |
//! | FRAME_RESPONSE | 36 + chunks | pts i64 @12, dts i64 @20, is_keyframe u8 @28, 3 reserved, nal_count u32 @32, then nal_count × (u32 size, bytes) |
//! | CONFIG_REQ | 40 | width @12, height @16, bitrate (bit/s) @20, framerate_num @24, framerate_den @28, profile u8 @32, level×10 u8 @33, realtime u8 @34, 5 reserved |
//! | ERROR | 272 | error_code i32 @12, message 256 bytes NUL-padded @16 |
//! | PING, PONG, KEYFRAME_REQ | 12 | header only |

use crate::header::{msg_type, Header, FLAG_PIXELS, HEADER_LEN};

/// Size of the fixed part of a FRAME_REQUEST payload (before pixels).
pub const FRAME_REQUEST_FIXED: usize = 44;
/// Size of the fixed part of a FRAME_RESPONSE payload (before NAL chunks).
pub const FRAME_RESPONSE_FIXED: usize = 24;
/// Size of a CONFIG_REQ payload.
pub const CONFIG_REQ_FIXED: usize = 28;
/// Size of the NUL-padded text of an ERROR.
pub const ERROR_TEXT_LEN: usize = 256;
/// Size of an ERROR payload.
pub const ERROR_FIXED: usize = 4 + ERROR_TEXT_LEN;

/// Error codes seen from legacy hosts (and used by `vsockenc-host`), and
/// [`REFUSED`](error_code::REFUSED), which only `vsockenc-host` sends.
pub mod error_code {
    pub const INVALID_MESSAGE: i32 = -1;
    pub const RESOURCE_NOT_FOUND: i32 = -2;
    pub const NOT_METAL_TEXTURE: i32 = -3;
    pub const NO_IOSURFACE: i32 = -4;
    pub const ENCODE_FAILED: i32 = -5;
    pub const NOT_CONFIGURED: i32 = -6;
    /// The host will not serve this guest (`vsockenc-host`: over its
    /// `--max-clients`; access rules). Not a failure of the guest's frames:
    /// the connection is closed after it. A legacy guest sees an unknown
    /// code.
    pub const REFUSED: i32 = -10;
    pub const INTERNAL: i32 = -99;
}

/// The fixed part of a FRAME_REQUEST (guest → host). The pixels, when there
/// are any, travel separately: see [`crate::write::write_frame_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameRequest {
    /// virtio-gpu resource id; 0 when the pixels follow.
    pub resource_id: u32,
    pub width: u32,
    pub height: u32,
    /// DRM fourcc, see [`crate::WireFormat`].
    pub format: u32,
    /// Bytes per row of plane 0.
    pub stride: u32,
    /// Nanoseconds.
    pub pts: i64,
    /// Nanoseconds.
    pub duration: i64,
    pub force_keyframe: bool,
}

impl FrameRequest {
    /// Header plus fixed part, ready to be followed by `pixel_len` pixel bytes
    /// (`None`: no pixels, the flag is clear).
    pub fn encode_prefix(
        &self,
        session_id: u16,
        pixel_len: Option<usize>,
    ) -> [u8; HEADER_LEN + FRAME_REQUEST_FIXED] {
        let (flags, extra) = match pixel_len {
            Some(n) => (FLAG_PIXELS, n),
            None => (0, 0),
        };
        let payload = u32::try_from(FRAME_REQUEST_FIXED + extra)
            .expect("pixel block larger than 4 GiB cannot be framed");
        let mut b = [0u8; HEADER_LEN + FRAME_REQUEST_FIXED];
        b[..HEADER_LEN].copy_from_slice(
            &Header::new(msg_type::FRAME_REQUEST, flags, session_id, payload).to_bytes(),
        );
        self.encode_fixed(&mut b[HEADER_LEN..]);
        b
    }

    pub(crate) fn encode_fixed(&self, b: &mut [u8]) {
        put_u32(b, 0, self.resource_id);
        put_u32(b, 4, self.width);
        put_u32(b, 8, self.height);
        put_u32(b, 12, self.format);
        put_u32(b, 16, self.stride);
        put_i64(b, 20, self.pts);
        put_i64(b, 28, self.duration);
        b[36] = self.force_keyframe as u8;
        // 37..44 reserved, zero
    }

    pub(crate) fn decode_fixed(b: &[u8]) -> Self {
        FrameRequest {
            resource_id: get_u32(b, 0),
            width: get_u32(b, 4),
            height: get_u32(b, 8),
            format: get_u32(b, 12),
            stride: get_u32(b, 16),
            pts: get_i64(b, 20),
            duration: get_i64(b, 28),
            force_keyframe: b[36] != 0,
        }
    }
}

/// A FRAME_RESPONSE (host → guest): one access unit, as NAL chunks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameResponse {
    pub pts: i64,
    pub dts: i64,
    pub is_keyframe: bool,
    /// Chunk contents exactly as received; see [`crate::nal`] to turn them
    /// into one Annex-B access unit.
    pub chunks: Vec<Vec<u8>>,
}

impl FrameResponse {
    /// A response carrying one Annex-B access unit in one chunk, the way
    /// current hosts (and `vsockenc-host`) send it.
    pub fn single(pts: i64, dts: i64, is_keyframe: bool, access_unit: Vec<u8>) -> Self {
        FrameResponse {
            pts,
            dts,
            is_keyframe,
            chunks: vec![access_unit],
        }
    }

    pub fn payload_size(&self) -> usize {
        FRAME_RESPONSE_FIXED + self.chunks.iter().map(|c| 4 + c.len()).sum::<usize>()
    }

    /// The whole access unit in Annex-B form.
    pub fn annexb(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload_size());
        for c in &self.chunks {
            crate::nal::normalize_chunk(c, &mut out);
        }
        out
    }

    /// The unit in the form `codec`'s caps say: an Annex-B access unit for
    /// H.264 and H.265 ([`FrameResponse::annexb`]), the chunks as they are
    /// for AV1, whose OBUs carry their own sizes (a start code would break
    /// the temporal unit).
    pub fn unit(&self, codec: crate::Codec) -> Vec<u8> {
        match codec {
            crate::Codec::H264 | crate::Codec::H265 => self.annexb(),
            crate::Codec::Av1 => self.chunks.concat(),
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        let mut fixed = [0u8; FRAME_RESPONSE_FIXED];
        put_i64(&mut fixed, 0, self.pts);
        put_i64(&mut fixed, 8, self.dts);
        fixed[16] = self.is_keyframe as u8;
        put_u32(&mut fixed, 20, self.chunks.len() as u32);
        out.extend_from_slice(&fixed);
        for c in &self.chunks {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
    }
}

/// A CONFIG_REQ (guest → host). Never answered by a legacy host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigRequest {
    pub width: u32,
    pub height: u32,
    /// Bits per second.
    pub bitrate: u32,
    pub framerate_num: u32,
    pub framerate_den: u32,
    /// 66 baseline, 77 main, 100 high; 0 = host's choice.
    pub profile: u8,
    /// Level × 10 (e.g. 41 for 4.1); 0 = host's choice.
    pub level: u8,
    pub realtime: bool,
}

impl ConfigRequest {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; CONFIG_REQ_FIXED];
        put_u32(&mut b, 0, self.width);
        put_u32(&mut b, 4, self.height);
        put_u32(&mut b, 8, self.bitrate);
        put_u32(&mut b, 12, self.framerate_num);
        put_u32(&mut b, 16, self.framerate_den);
        b[20] = self.profile;
        b[21] = self.level;
        b[22] = self.realtime as u8;
        out.extend_from_slice(&b);
    }

    pub(crate) fn decode_fixed(b: &[u8]) -> Self {
        ConfigRequest {
            width: get_u32(b, 0),
            height: get_u32(b, 4),
            bitrate: get_u32(b, 8),
            framerate_num: get_u32(b, 12),
            framerate_den: get_u32(b, 16),
            profile: b[20],
            level: b[21],
            realtime: b[22] != 0,
        }
    }
}

/// An ERROR (host → guest).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorMessage {
    pub code: i32,
    /// The host's text, up to 255 bytes on the wire (longer text is cut at a
    /// character boundary when encoded).
    pub message: String,
}

impl ErrorMessage {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        ErrorMessage {
            code,
            message: message.into(),
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.code.to_le_bytes());
        let mut text = [0u8; ERROR_TEXT_LEN];
        let mut n = self.message.len().min(ERROR_TEXT_LEN - 1);
        while !self.message.is_char_boundary(n) {
            n -= 1;
        }
        text[..n].copy_from_slice(&self.message.as_bytes()[..n]);
        out.extend_from_slice(&text);
    }

    pub(crate) fn decode_fixed(b: &[u8]) -> Self {
        let code = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let text = &b[4..4 + ERROR_TEXT_LEN];
        let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
        ErrorMessage {
            code,
            message: String::from_utf8_lossy(&text[..end]).into_owned(),
        }
    }
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `pixels` is `Some` when the header's [`FLAG_PIXELS`] was set.
    FrameRequest {
        request: FrameRequest,
        pixels: Option<Vec<u8>>,
    },
    FrameResponse(FrameResponse),
    /// The payload, if a peer sends one, is ignored.
    KeyframeRequest,
    ConfigRequest(ConfigRequest),
    /// No known host sends one; the payload is kept opaque.
    ConfigResponse(Vec<u8>),
    Ping,
    Pong,
    Error(ErrorMessage),
    /// A message this side does not handle (scanout, subscribe, unknown
    /// types): its payload was read and discarded, like a legacy host does.
    Skipped {
        msg_type: u8,
        payload_size: u32,
    },
}

impl Message {
    pub fn msg_type(&self) -> u8 {
        match self {
            Message::FrameRequest { .. } => msg_type::FRAME_REQUEST,
            Message::FrameResponse(_) => msg_type::FRAME_RESPONSE,
            Message::KeyframeRequest => msg_type::KEYFRAME_REQ,
            Message::ConfigRequest(_) => msg_type::CONFIG_REQ,
            Message::ConfigResponse(_) => msg_type::CONFIG_RESP,
            Message::Ping => msg_type::PING,
            Message::Pong => msg_type::PONG,
            Message::Error(_) => msg_type::ERROR,
            Message::Skipped { msg_type, .. } => *msg_type,
        }
    }

    /// The whole message, header included. Meant for small messages and
    /// tests; a sender of frames should use
    /// [`crate::write::write_frame_request`] to avoid copying pixels. A
    /// `Skipped` message encodes as its header and `payload_size` zero bytes.
    pub fn encode(&self, session_id: u16) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut flags = 0;
        match self {
            Message::FrameRequest { request, pixels } => {
                let prefix = request.encode_prefix(session_id, pixels.as_ref().map(Vec::len));
                let mut out = prefix.to_vec();
                if let Some(p) = pixels {
                    out.extend_from_slice(p);
                }
                return out;
            }
            Message::FrameResponse(r) => r.encode_payload(&mut payload),
            Message::ConfigRequest(c) => c.encode_payload(&mut payload),
            Message::ConfigResponse(p) => payload.extend_from_slice(p),
            Message::Error(e) => e.encode_payload(&mut payload),
            Message::KeyframeRequest | Message::Ping | Message::Pong => {}
            Message::Skipped { payload_size, .. } => {
                payload.resize(*payload_size as usize, 0);
                flags = 0;
            }
        }
        let header = Header::new(self.msg_type(), flags, session_id, payload.len() as u32);
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_i64(b: &mut [u8], at: usize, v: i64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(crate) fn get_i64(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
