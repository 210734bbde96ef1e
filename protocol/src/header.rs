//! The 12-byte header that starts every message.

/// `"HXFR"` read as a little-endian `u32`.
pub const MAGIC: u32 = 0x5246_5848;
/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 12;
/// The session id the legacy guest always sends.
pub const LEGACY_SESSION_ID: u16 = 1;
/// FRAME_REQUEST flag: raw pixels follow the fixed part.
pub const FLAG_PIXELS: u8 = 0x01;

/// Message type codes (byte 4 of the header).
pub mod msg_type {
    pub const FRAME_REQUEST: u8 = 0x01;
    pub const FRAME_RESPONSE: u8 = 0x02;
    pub const KEYFRAME_REQ: u8 = 0x03;
    pub const CONFIG_REQ: u8 = 0x04;
    pub const CONFIG_RESP: u8 = 0x05;
    pub const PING: u8 = 0x10;
    pub const PONG: u8 = 0x11;
    pub const ENABLE_SCANOUT: u8 = 0x20;
    pub const DISABLE_SCANOUT: u8 = 0x21;
    pub const SCANOUT_RESP: u8 = 0x22;
    pub const SUBSCRIBE: u8 = 0x30;
    pub const SUBSCRIBE_RESP: u8 = 0x31;
    pub const ERROR: u8 = 0xFF;

    /// Human-readable name of a message type, for logs and errors.
    pub fn name(t: u8) -> &'static str {
        match t {
            FRAME_REQUEST => "FRAME_REQUEST",
            FRAME_RESPONSE => "FRAME_RESPONSE",
            KEYFRAME_REQ => "KEYFRAME_REQ",
            CONFIG_REQ => "CONFIG_REQ",
            CONFIG_RESP => "CONFIG_RESP",
            PING => "PING",
            PONG => "PONG",
            ENABLE_SCANOUT => "ENABLE_SCANOUT",
            DISABLE_SCANOUT => "DISABLE_SCANOUT",
            SCANOUT_RESP => "SCANOUT_RESP",
            SUBSCRIBE => "SUBSCRIBE",
            SUBSCRIBE_RESP => "SUBSCRIBE_RESP",
            ERROR => "ERROR",
            _ => "unknown",
        }
    }
}

/// The header of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u8,
    pub flags: u8,
    pub session_id: u16,
    /// Bytes that follow the header.
    pub payload_size: u32,
}

impl Header {
    pub fn new(msg_type: u8, flags: u8, session_id: u16, payload_size: u32) -> Self {
        Header {
            msg_type,
            flags,
            session_id,
            payload_size,
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.msg_type;
        b[5] = self.flags;
        b[6..8].copy_from_slice(&self.session_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.payload_size.to_le_bytes());
        b
    }

    /// Parses a header; `Err` carries the magic that was found instead of
    /// [`MAGIC`].
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, u32> {
        let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if magic != MAGIC {
            return Err(magic);
        }
        Ok(Header {
            msg_type: b[4],
            flags: b[5],
            session_id: u16::from_le_bytes([b[6], b[7]]),
            payload_size: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    pub fn type_name(&self) -> &'static str {
        msg_type::name(self.msg_type)
    }
}
