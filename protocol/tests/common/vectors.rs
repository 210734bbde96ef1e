//! Hand-assembled test vectors, one or more per message type of
//! PROTOCOL.md. The bytes are written out field by field from the tables in
//! PROTOCOL.md (little-endian, packed), not produced by our encoder; each
//! vector also states the value it must decode to.

use hxfr::{ConfigRequest, ErrorMessage, FrameRequest, FrameResponse, Header, Message};

use super::{cat, hex, zeros};

#[derive(Clone)]
pub struct Vector {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub header: Header,
    pub message: Message,
    /// Whether `message.encode(header.session_id)` must give `bytes` back.
    /// False where the wire carries something the typed value drops on
    /// purpose (the payload of a skipped message).
    pub encodes_back: bool,
}

fn v(
    name: &'static str,
    bytes: Vec<u8>,
    header: (u8, u8, u16, u32),
    message: Message,
    encodes_back: bool,
) -> Vector {
    Vector {
        name,
        bytes,
        header: Header::new(header.0, header.1, header.2, header.3),
        message,
        encodes_back,
    }
}

/// A FRAME_REQUEST naming a virtio-gpu resource, no pixels (flag clear).
pub fn frame_request_resource() -> Vector {
    let bytes = hex("
        48 58 46 52  01  00  01 00  2c 00 00 00   # HXFR, FRAME_REQUEST, flags 0, session 1, payload 44
        07 00 00 00                              # resource_id 7
        80 07 00 00  38 04 00 00                 # 1920 x 1080
        4e 56 31 32                              # NV12
        80 07 00 00                              # stride 1920
        00 ca 9a 3b 00 00 00 00                  # pts 1 s
        55 a0 fc 01 00 00 00 00                  # duration 33333333 ns
        01                                       # force_keyframe
        00 00 00 00 00 00 00                     # reserved
    ");
    let request = FrameRequest {
        resource_id: 7,
        width: 1920,
        height: 1080,
        format: 0x3231_564E,
        stride: 1920,
        pts: 1_000_000_000,
        duration: 33_333_333,
        force_keyframe: true,
    };
    v(
        "FRAME_REQUEST without pixels",
        bytes,
        (0x01, 0x00, 1, 44),
        Message::FrameRequest {
            request,
            pixels: None,
        },
        true,
    )
}

/// The 16 pixel bytes of [`frame_request_pixels`].
pub fn two_by_two_bgra() -> Vec<u8> {
    (0u8..16).collect()
}

/// A 2x2 BGRA FRAME_REQUEST carrying its 16 pixel bytes (flag set), with a
/// session id and pts that show the byte order.
pub fn frame_request_pixels() -> Vector {
    let bytes = hex("
        48 58 46 52  01  01  34 12  3c 00 00 00   # FRAME_REQUEST, flags PIXELS, session 0x1234, payload 60
        00 00 00 00                              # resource_id 0: pixels follow
        02 00 00 00  02 00 00 00                 # 2 x 2
        41 52 32 34                              # AR24 (BGRA/BGRx)
        08 00 00 00                              # stride 8
        08 07 06 05 04 03 02 01                  # pts 0x0102030405060708
        fb ff ff ff ff ff ff ff                  # duration -5
        00                                       # force_keyframe 0
        00 00 00 00 00 00 00                     # reserved
        00 01 02 03 04 05 06 07                  # row 0
        08 09 0a 0b 0c 0d 0e 0f                  # row 1
    ");
    let request = FrameRequest {
        resource_id: 0,
        width: 2,
        height: 2,
        format: 0x3432_5241,
        stride: 8,
        pts: 0x0102_0304_0506_0708,
        duration: -5,
        force_keyframe: false,
    };
    v(
        "FRAME_REQUEST with pixels",
        bytes,
        (0x01, 0x01, 0x1234, 60),
        Message::FrameRequest {
            request,
            pixels: Some(two_by_two_bgra()),
        },
        true,
    )
}

/// The Annex-B access unit of [`frame_response_annexb`]: AUD, then an IDR
/// slice header stub, 4-byte start codes.
pub fn annexb_au() -> Vec<u8> {
    hex("00 00 00 01 09 f0  00 00 00 01 65 88 84")
}

/// A FRAME_RESPONSE the way current hosts send it: one Annex-B chunk.
pub fn frame_response_annexb() -> Vector {
    let bytes = hex("
        48 58 46 52  02  00  01 00  29 00 00 00   # FRAME_RESPONSE, session 1, payload 41 = 24 + 4 + 13
        00 ca 9a 3b 00 00 00 00                  # pts 1 s
        ab 29 9e 39 00 00 00 00                  # dts 966666667 ns
        01  00 00 00                             # is_keyframe, reserved
        01 00 00 00                              # nal_count 1
        0d 00 00 00                              # chunk of 13 bytes:
        00 00 00 01 09 f0  00 00 00 01 65 88 84
    ");
    v(
        "FRAME_RESPONSE, one Annex-B chunk",
        bytes,
        (0x02, 0x00, 1, 41),
        Message::FrameResponse(FrameResponse {
            pts: 1_000_000_000,
            dts: 966_666_667,
            is_keyframe: true,
            chunks: vec![annexb_au()],
        }),
        true,
    )
}

/// The AVCC chunks of [`frame_response_avcc`].
pub fn avcc_chunks() -> Vec<Vec<u8>> {
    vec![
        hex("00 00 00 02 09 f0"),                       // AUD
        hex("00 00 00 03 06 05 80"),                    // SEI stub
        hex("00 00 00 02 41 9a  00 00 00 03 01 02 03"), // two NAL units in one chunk
    ]
}

/// A FRAME_RESPONSE the way the older VideoToolbox host sent it: several
/// chunks in AVCC form (big-endian lengths inside little-endian framing).
pub fn frame_response_avcc() -> Vector {
    let bytes = hex("
        48 58 46 52  02  00  01 00  3e 00 00 00   # FRAME_RESPONSE, payload 62 = 24 + (4+6) + (4+7) + (4+13)
        ff ff ff ff ff ff ff ff                  # pts -1
        fe ff ff ff ff ff ff ff                  # dts -2
        00  00 00 00                             # not a keyframe, reserved
        03 00 00 00                              # nal_count 3
        06 00 00 00  00 00 00 02 09 f0
        07 00 00 00  00 00 00 03 06 05 80
        0d 00 00 00  00 00 00 02 41 9a 00 00 00 03 01 02 03
    ");
    v(
        "FRAME_RESPONSE, three AVCC chunks",
        bytes,
        (0x02, 0x00, 1, 62),
        Message::FrameResponse(FrameResponse {
            pts: -1,
            dts: -2,
            is_keyframe: false,
            chunks: avcc_chunks(),
        }),
        true,
    )
}

/// A FRAME_RESPONSE without any NAL chunk (nal_count 0).
pub fn frame_response_empty() -> Vector {
    let bytes = hex("
        48 58 46 52  02  00  01 00  18 00 00 00   # FRAME_RESPONSE, payload 24
        64 00 00 00 00 00 00 00                  # pts 100
        64 00 00 00 00 00 00 00                  # dts 100
        00  00 00 00
        00 00 00 00                              # nal_count 0
    ");
    v(
        "FRAME_RESPONSE, empty",
        bytes,
        (0x02, 0x00, 1, 24),
        Message::FrameResponse(FrameResponse {
            pts: 100,
            dts: 100,
            is_keyframe: false,
            chunks: vec![],
        }),
        true,
    )
}

pub fn keyframe_req() -> Vector {
    v(
        "KEYFRAME_REQ",
        hex("48 58 46 52  03  00  01 00  00 00 00 00"),
        (0x03, 0x00, 1, 0),
        Message::KeyframeRequest,
        true,
    )
}

pub fn config_req() -> Vector {
    let bytes = hex("
        48 58 46 52  04  00  01 00  1c 00 00 00   # CONFIG_REQ, payload 28
        00 05 00 00  d0 02 00 00                 # 1280 x 720
        00 09 3d 00                              # bitrate 4000000 bit/s
        1e 00 00 00  01 00 00 00                 # 30/1 fps
        64  29  01                               # profile 100 (high), level 4.1, realtime
        00 00 00 00 00                           # reserved
    ");
    v(
        "CONFIG_REQ",
        bytes,
        (0x04, 0x00, 1, 28),
        Message::ConfigRequest(ConfigRequest {
            width: 1280,
            height: 720,
            bitrate: 4_000_000,
            framerate_num: 30,
            framerate_den: 1,
            profile: 100,
            level: 41,
            realtime: true,
        }),
        true,
    )
}

/// No known host sends CONFIG_RESP; its payload is kept opaque.
pub fn config_resp() -> Vector {
    v(
        "CONFIG_RESP",
        hex("48 58 46 52  05  00  01 00  03 00 00 00  aa bb cc"),
        (0x05, 0x00, 1, 3),
        Message::ConfigResponse(vec![0xaa, 0xbb, 0xcc]),
        true,
    )
}

pub fn ping() -> Vector {
    v(
        "PING",
        hex("48 58 46 52  10  00  01 00  00 00 00 00"),
        (0x10, 0x00, 1, 0),
        Message::Ping,
        true,
    )
}

/// PONG echoing a session id other than 1.
pub fn pong() -> Vector {
    v(
        "PONG",
        hex("48 58 46 52  11  00  07 00  00 00 00 00"),
        (0x11, 0x00, 7, 0),
        Message::Pong,
        true,
    )
}

pub fn error() -> Vector {
    let bytes = cat(&[
        &hex("
            48 58 46 52  ff  00  01 00  04 01 00 00   # ERROR, payload 260
            fb ff ff ff                              # error_code -5 (encode failed)
            65 6e 63 6f 64 65 20 66 61 69 6c 65 64   # 'encode failed' (13 bytes)
        "),
        &zeros(256 - 13), // NUL padding of the 256-byte text
    ]);
    v(
        "ERROR",
        bytes,
        (0xff, 0x00, 1, 260),
        Message::Error(ErrorMessage::new(-5, "encode failed")),
        true,
    )
}

/// The scanout/subscribe family: recognised and skipped. `payload` shows the
/// skipped bytes are not interpreted; an all-zero payload also encodes back.
fn skipped(name: &'static str, t: u8, payload: &str, encodes_back: bool) -> Vector {
    let payload = hex(payload);
    let len = payload.len() as u8;
    let bytes = cat(&[
        &[0x48, 0x58, 0x46, 0x52, t, 0x00, 0x01, 0x00, len, 0, 0, 0],
        &payload,
    ]);
    v(
        name,
        bytes,
        (t, 0x00, 1, len as u32),
        Message::Skipped {
            msg_type: t,
            payload_size: len as u32,
        },
        encodes_back,
    )
}

pub fn enable_scanout() -> Vector {
    skipped("ENABLE_SCANOUT", 0x20, "01 00 00 00  3c 00 00 00", false)
}

pub fn disable_scanout() -> Vector {
    skipped("DISABLE_SCANOUT", 0x21, "", true)
}

pub fn scanout_resp() -> Vector {
    skipped("SCANOUT_RESP", 0x22, "00 00 00 00 00 00 00 00", true)
}

pub fn subscribe() -> Vector {
    skipped("SUBSCRIBE", 0x30, "ff 00 ff 00", false)
}

pub fn subscribe_resp() -> Vector {
    skipped("SUBSCRIBE_RESP", 0x31, "00 00 00 00", true)
}

/// A type no peer defines: read and discarded, like a legacy host does.
pub fn unknown() -> Vector {
    skipped("unknown type 0x99", 0x99, "de ad be ef 00", false)
}

/// Every vector, each message type at least once.
pub fn all() -> Vec<Vector> {
    vec![
        frame_request_resource(),
        frame_request_pixels(),
        frame_response_annexb(),
        frame_response_avcc(),
        frame_response_empty(),
        keyframe_req(),
        config_req(),
        config_resp(),
        ping(),
        pong(),
        error(),
        enable_scanout(),
        disable_scanout(),
        scanout_resp(),
        subscribe(),
        subscribe_resp(),
        unknown(),
    ]
}

/// An I420 FRAME_REQUEST (FORMATS extension): 3x3, stride 4, so the chroma
/// planes have ceil(4/2) = 2 bytes per row and ceil(3/2) = 2 rows; padding
/// bytes are `ee`.
pub fn frame_request_i420() -> Vector {
    let bytes = hex("
        48 58 46 52  01  01  01 00  40 00 00 00   # FRAME_REQUEST, flags PIXELS, session 1, payload 64 = 44 + 20
        00 00 00 00                              # resource_id 0: pixels follow
        03 00 00 00  03 00 00 00                 # 3 x 3
        59 55 31 32                              # YU12 (I420)
        04 00 00 00                              # stride 4 (Y); U and V: 2
        00 00 00 00 00 00 00 00                  # pts 0
        55 a0 fc 01 00 00 00 00                  # duration 33333333 ns
        00                                       # force_keyframe 0
        00 00 00 00 00 00 00                     # reserved
        10 11 12 ee  13 14 15 ee  16 17 18 ee    # Y: 3 rows of 4 bytes
        80 81  82 83                             # U: 2 rows of 2 bytes
        90 91  92 93                             # V: 2 rows of 2 bytes
    ");
    let pixels = bytes[56..].to_vec();
    v(
        "frame_request_i420",
        bytes,
        (0x01, 0x01, 1, 64),
        Message::FrameRequest {
            request: FrameRequest {
                width: 3,
                height: 3,
                format: 0x3231_5559,
                stride: 4,
                duration: 33_333_333,
                ..Default::default()
            },
            pixels: Some(pixels),
        },
        true,
    )
}

/// A YUY2 FRAME_REQUEST (FORMATS extension): 3x2, stride 8 = 4 x ceil(3/2);
/// the second luma sample of each row's last macropixel lies outside the
/// picture (`ee`).
pub fn frame_request_yuy2() -> Vector {
    let bytes = hex("
        48 58 46 52  01  01  01 00  3c 00 00 00   # FRAME_REQUEST, flags PIXELS, session 1, payload 60 = 44 + 16
        00 00 00 00                              # resource_id 0
        03 00 00 00  02 00 00 00                 # 3 x 2
        59 55 59 56                              # YUYV (YUY2)
        08 00 00 00                              # stride 8
        00 00 00 00 00 00 00 00                  # pts 0
        55 a0 fc 01 00 00 00 00                  # duration 33333333 ns
        00                                       # force_keyframe 0
        00 00 00 00 00 00 00                     # reserved
        10 80 11 90  12 81 ee 91                 # row 0: Y0 U Y1 V, Y2 U (Y3) V
        13 82 14 92  15 83 ee 93                 # row 1
    ");
    let pixels = bytes[56..].to_vec();
    v(
        "frame_request_yuy2",
        bytes,
        (0x01, 0x01, 1, 60),
        Message::FrameRequest {
            request: FrameRequest {
                width: 3,
                height: 2,
                format: 0x5659_5559,
                stride: 8,
                duration: 33_333_333,
                ..Default::default()
            },
            pixels: Some(pixels),
        },
        true,
    )
}

/// The frames of the FORMATS extension (kept out of [`all`]: a legacy host
/// refuses them).
pub fn negotiated_formats() -> Vec<Vector> {
    vec![frame_request_i420(), frame_request_yuy2()]
}
