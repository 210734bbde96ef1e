//! Test vectors of the negotiated extensions (`hxfr::ext`), both directions:
//! the hand-assembled bytes decode to the expected message and the message
//! encodes to exactly those bytes. docs/protocol.md quotes these vectors;
//! keep the two in sync.

mod extsupport;

use extsupport::{hex, OwnedFrame};
use hxfr::compact::{self, CompactEncoder, Compression, Delta};
use hxfr::ext::{
    self, ext_bits, ext_type, CompactFrame, CompactHeader, ErrorPts, ExtMessage, FrameChecksum,
    Hello, HelloAck, ProfileRequest, ProfileResponse, TileEncoding,
};
use hxfr::layout::{FrameLayout, WireFormat};
use hxfr::shm::{RegionKind, ShmAck, ShmFrame, ShmOffer, ShmRelease, SlotPlane};
use hxfr::{Codec, Level, Profile};
use hxfr::{Decoded, Decoder, FrameRequest, Header, Limits, Message, ProtocolError};

/// HELLO, guest → host: version 1, COMPACT|LZ4|ERROR_PTS|DRAIN, 64x64 tiles,
/// agent "vsockenc/0.1.0".
pub const HELLO_HEX: &str = "
48 58 46 52 40 00 01 00 2c 00 00 00
01 00 00 00 0f 00 00 00 40 00 40 00
76 73 6f 63 6b 65 6e 63 2f 30 2e 31 2e 30 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";

/// HELLO_ACK, host → guest: version 1, COMPACT|ERROR_PTS|DRAIN accepted,
/// max_frame_bytes 64 MiB, agent "vsockenc-host/0.1.0".
pub const HELLO_ACK_HEX: &str = "
48 58 46 52 41 00 01 00 2c 00 00 00
01 00 00 00 0d 00 00 00 00 00 00 04
76 73 6f 63 6b 65 6e 63 2d 68 6f 73 74 2f 30 2e
31 2e 30 00 00 00 00 00 00 00 00 00 00 00 00 00";

/// HELLO, guest → host, asking for H.265: version 1, codec 1,
/// ERROR_PTS|DRAIN|CODEC, no tiles, agent "vsockenc/0.1.0".
pub const HELLO_H265_HEX: &str = "
48 58 46 52 40 00 01 00 2c 00 00 00
01 00 01 00 0c 01 00 00 00 00 00 00
76 73 6f 63 6b 65 6e 63 2f 30 2e 31 2e 30 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";

/// HELLO_ACK, host → guest: H.265 accepted (codec 1,
/// ERROR_PTS|DRAIN|CODEC), 64 MiB, agent "vsockenc-host/0.1.0".
pub const HELLO_ACK_H265_HEX: &str = "
48 58 46 52 41 00 01 00 2c 00 00 00
01 00 01 00 0c 01 00 00 00 00 00 04
76 73 6f 63 6b 65 6e 63 2d 68 6f 73 74 2f 30 2e
31 2e 30 00 00 00 00 00 00 00 00 00 00 00 00 00";

/// HELLO_ACK, host → guest: AV1 refused (codec 0, CODEC not accepted,
/// ERROR_PTS|DRAIN), 64 MiB, agent "vsockenc-host/0.1.0", text "no AV1
/// encoder".
pub const HELLO_ACK_REFUSED_HEX: &str = "
48 58 46 52 41 00 01 00 3e 00 00 00
01 00 00 00 0c 00 00 00 00 00 00 04
76 73 6f 63 6b 65 6e 63 2d 68 6f 73 74 2f 30 2e
31 2e 30 00 00 00 00 00 00 00 00 00 00 00 00 00
0e 00 00 00
6e 6f 20 41 56 31 20 65 6e 63 6f 64 65 72";

/// COMPACT_FRAME, guest → host: NV12 10x16, stride 10, pts 1000, duration
/// 16666667, reference frame 0, 8x8 tiles (2x2 of them, the right column
/// clipped to 2 pixels), raw. Only tile 1 (top right) changed: its 8 Y rows
/// of 2 bytes, then its 4 UV rows of 2 bytes.
pub const COMPACT_RAW_HEX: &str = "
48 58 46 52 42 00 01 00 5d 00 00 00
00 00 00 00 0a 00 00 00 10 00 00 00 4e 56 31 32 0a 00 00 00
e8 03 00 00 00 00 00 00 2b 50 fe 00 00 00 00 00
00 00 00 00 00 00 00 00
00 00 00 00 08 00 08 00 00 00 00 00
01 00 00 00 18 00 00 00 18 00 00 00
02
a1 a2 00 00 00 00 00 00 00 00 00 00 00 00 00 00
c1 c2 00 00 00 00 00 00";

/// The same COMPACT_FRAME with the 24 bytes of tile data as a hand-made
/// 15-byte LZ4 block: literals `a1 a2 00` + match (offset 1, length 13),
/// then literals `c1 c2 00 00 00 00 00 00`.
pub const COMPACT_LZ4_HEX: &str = "
48 58 46 52 42 00 01 00 54 00 00 00
00 00 00 00 0a 00 00 00 10 00 00 00 4e 56 31 32 0a 00 00 00
e8 03 00 00 00 00 00 00 2b 50 fe 00 00 00 00 00
00 00 00 00 00 00 00 00
00 00 00 00 08 00 08 00 01 00 00 00
01 00 00 00 0f 00 00 00 18 00 00 00
02
39 a1 a2 00 01 00 80 c1 c2 00 00 00 00 00 00";

/// ERROR_PTS, host → guest: pts 33333333, frame 7, code -5, "encode failed".
pub const ERROR_PTS_HEX: &str = "
48 58 46 52 43 00 01 00 21 00 00 00
55 a0 fc 01 00 00 00 00 07 00 00 00 fb ff ff ff 0d 00 00 00
65 6e 63 6f 64 65 20 66 61 69 6c 65 64";

/// DRAIN, guest → host: token 0x0102030405060708.
pub const DRAIN_HEX: &str = "48 58 46 52 44 00 01 00 08 00 00 00 08 07 06 05 04 03 02 01";

/// DRAIN_DONE, host → guest: token 0x0102030405060708.
pub const DRAIN_DONE_HEX: &str = "48 58 46 52 45 00 01 00 08 00 00 00 08 07 06 05 04 03 02 01";

/// FRAME_CHECKSUM, host → guest: pts 0, frame 1, rebuilt, checksum
/// 0xaf63dc4c8601ec8c (FNV-1a 64 of the single byte "a").
pub const FRAME_CHECKSUM_HEX: &str = "
48 58 46 52 46 00 01 00 18 00 00 00
00 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00
8c ec 01 86 4c dc 63 af";

/// PROFILE_REQ, guest → host: token 7, WebRTC's profile-level-id 42e01f
/// (profile_idc 66, constraint_set0|1|2, level 3.1 at most), 1280x720 at
/// 30/1 fps.
pub const PROFILE_REQ_HEX: &str = "
48 58 46 52 47 00 01 00 1c 00 00 00
07 00 00 00 00 00 00 00 42 e0 1f 00
00 05 00 00 d0 02 00 00 1e 00 00 00 01 00 00 00";

/// PROFILE_RESP, host → guest: token 7 accepted, x264enc produces profile
/// 66 with constraint_set0|1 (constrained baseline) at level 3.1, no text.
pub const PROFILE_RESP_ACCEPTED_HEX: &str = "
48 58 46 52 48 00 01 00 30 00 00 00
07 00 00 00 00 00 00 00 00 42 c0 1f
78 32 36 34 65 6e 63 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00";

/// PROFILE_RESP, host → guest: token 8 refused by openh264enc, profile and
/// level 0, reason "openh264enc cannot produce extended" (35 bytes).
pub const PROFILE_RESP_REFUSED_HEX: &str = "
48 58 46 52 48 00 01 00 53 00 00 00
08 00 00 00 00 00 00 00 01 00 00 00
6f 70 65 6e 68 32 36 34 65 6e 63 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
23 00 00 00
6f 70 65 6e 68 32 36 34 65 6e 63 20 63 61 6e 6e 6f 74 20
70 72 6f 64 75 63 65 20 65 78 74 65 6e 64 65 64";

/// SHM_OFFER, guest → host: token 5, a memfd (passed with the message) of
/// 1 GiB, nonce 00..0f.
pub const SHM_OFFER_HEX: &str = "
48 58 46 52 49 00 01 00 28 00 00 00
05 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00
00 00 00 40 00 00 00 00
00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f";

/// SHM_ACK, host → guest: offer 5 accepted.
pub const SHM_ACK_ACCEPTED_HEX: &str = "
48 58 46 52 4a 00 01 00 10 00 00 00
05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";

/// SHM_ACK, host → guest: offer 6 refused, "no region is bound" (18 bytes).
pub const SHM_ACK_REFUSED_HEX: &str = "
48 58 46 52 4a 00 01 00 22 00 00 00
06 00 00 00 00 00 00 00 01 00 00 00 12 00 00 00
6e 6f 20 72 65 67 69 6f 6e 20 69 73 20 62 6f 75 6e 64";

/// SHM_FRAME, guest → host: NV12 64x48 in slot 3 (4608 bytes at offset
/// 4096), Y at 0 and UV at 3072, both with stride 64; pts 1000.
pub const SHM_FRAME_HEX: &str = "
48 58 46 52 4b 00 01 00 5c 00 00 00
00 00 00 00 40 00 00 00 30 00 00 00 4e 56 31 32 40 00 00 00
e8 03 00 00 00 00 00 00 2b 50 fe 00 00 00 00 00
00 00 00 00 00 00 00 00
03 00 00 00 02 00 00 00
00 10 00 00 00 00 00 00 00 12 00 00 00 00 00 00
00 00 00 00 40 00 00 00 00 0c 00 00 40 00 00 00 00 00 00 00 00 00 00 00";

/// SHM_RELEASE, host → guest: slot 3, held by frame 7, is free again.
pub const SHM_RELEASE_HEX: &str = "48 58 46 52 4c 00 01 00 08 00 00 00 03 00 00 00 07 00 00 00";

fn shm_frame() -> ShmFrame {
    let mut planes = [SlotPlane::default(); 3];
    planes[0] = SlotPlane {
        offset: 0,
        stride: 64,
    };
    planes[1] = SlotPlane {
        offset: 3072,
        stride: 64,
    };
    ShmFrame {
        request: FrameRequest {
            width: 64,
            height: 48,
            format: WireFormat::Nv12.fourcc(),
            stride: 64,
            pts: 1000,
            duration: 16_666_667,
            ..Default::default()
        },
        slot: 3,
        n_planes: 2,
        slot_offset: 4096,
        slot_len: 4608,
        planes,
    }
}

fn compact_request() -> FrameRequest {
    FrameRequest {
        resource_id: 0,
        width: 10,
        height: 16,
        format: WireFormat::Nv12.fourcc(),
        stride: 10,
        pts: 1000,
        duration: 16_666_667,
        force_keyframe: false,
    }
}

fn compact_tile_data() -> Vec<u8> {
    let mut d = vec![0u8; 24];
    d[..2].copy_from_slice(&[0xa1, 0xa2]);
    d[16..18].copy_from_slice(&[0xc1, 0xc2]);
    d
}

fn vectors() -> Vec<(&'static str, &'static str, ExtMessage)> {
    let bitmap_and = |data: &[u8]| {
        let mut b = vec![0x02];
        b.extend_from_slice(data);
        b
    };
    vec![
        (
            "HELLO",
            HELLO_HEX,
            ExtMessage::Hello(Hello {
                version: 1,
                extensions: ext_bits::COMPACT
                    | ext_bits::LZ4
                    | ext_bits::ERROR_PTS
                    | ext_bits::DRAIN,
                tile_width: 64,
                tile_height: 64,
                agent: "vsockenc/0.1.0".into(),
                codec: 0,
            }),
        ),
        (
            "HELLO H.265",
            HELLO_H265_HEX,
            ExtMessage::Hello(Hello {
                version: 1,
                codec: Codec::H265.to_u8(),
                extensions: ext_bits::ERROR_PTS | ext_bits::DRAIN | ext_bits::CODEC,
                tile_width: 0,
                tile_height: 0,
                agent: "vsockenc/0.1.0".into(),
            }),
        ),
        (
            "HELLO_ACK H.265",
            HELLO_ACK_H265_HEX,
            ExtMessage::HelloAck(HelloAck {
                version: 1,
                codec: Codec::H265,
                reason: String::new(),
                extensions: ext_bits::ERROR_PTS | ext_bits::DRAIN | ext_bits::CODEC,
                max_frame_bytes: 64 << 20,
                agent: "vsockenc-host/0.1.0".into(),
            }),
        ),
        (
            "HELLO_ACK refused",
            HELLO_ACK_REFUSED_HEX,
            ExtMessage::HelloAck(HelloAck {
                version: 1,
                codec: Codec::H264,
                reason: "no AV1 encoder".into(),
                extensions: ext_bits::ERROR_PTS | ext_bits::DRAIN,
                max_frame_bytes: 64 << 20,
                agent: "vsockenc-host/0.1.0".into(),
            }),
        ),
        (
            "PROFILE_REQ",
            PROFILE_REQ_HEX,
            ExtMessage::ProfileRequest(ProfileRequest {
                token: 7,
                profile: Profile::new(66, 0xe0),
                max_level: Level(31),
                width: 1280,
                height: 720,
                framerate_num: 30,
                framerate_den: 1,
            }),
        ),
        (
            "PROFILE_RESP accepted",
            PROFILE_RESP_ACCEPTED_HEX,
            ExtMessage::ProfileResponse(ProfileResponse {
                token: 7,
                accepted: true,
                profile: Profile::new(66, 0xc0),
                level: Level(31),
                encoder: "x264enc".into(),
                reason: String::new(),
            }),
        ),
        (
            "PROFILE_RESP refused",
            PROFILE_RESP_REFUSED_HEX,
            ExtMessage::ProfileResponse(ProfileResponse {
                token: 8,
                accepted: false,
                profile: Profile::ANY,
                level: Level::ANY,
                encoder: "openh264enc".into(),
                reason: "openh264enc cannot produce extended".into(),
            }),
        ),
        (
            "HELLO_ACK",
            HELLO_ACK_HEX,
            ExtMessage::HelloAck(HelloAck {
                version: 1,
                extensions: ext_bits::COMPACT | ext_bits::ERROR_PTS | ext_bits::DRAIN,
                max_frame_bytes: 64 << 20,
                agent: "vsockenc-host/0.1.0".into(),
                codec: Codec::H264,
                reason: String::new(),
            }),
        ),
        (
            "COMPACT_FRAME raw",
            COMPACT_RAW_HEX,
            ExtMessage::CompactFrame(CompactFrame {
                header: CompactHeader {
                    request: compact_request(),
                    ref_index: 0,
                    tile_width: 8,
                    tile_height: 8,
                    encoding: TileEncoding::Raw,
                    changed_tiles: 1,
                    data_len: 24,
                    raw_len: 24,
                },
                body: bitmap_and(&compact_tile_data()),
            }),
        ),
        (
            "COMPACT_FRAME lz4",
            COMPACT_LZ4_HEX,
            ExtMessage::CompactFrame(CompactFrame {
                header: CompactHeader {
                    request: compact_request(),
                    ref_index: 0,
                    tile_width: 8,
                    tile_height: 8,
                    encoding: TileEncoding::Lz4,
                    changed_tiles: 1,
                    data_len: 15,
                    raw_len: 24,
                },
                body: bitmap_and(&hex("39 a1 a2 00 01 00 80 c1 c2 00 00 00 00 00 00")),
            }),
        ),
        (
            "ERROR_PTS",
            ERROR_PTS_HEX,
            ExtMessage::ErrorPts(ErrorPts {
                pts: 33_333_333,
                frame_index: 7,
                code: hxfr::error_code::ENCODE_FAILED,
                message: "encode failed".into(),
            }),
        ),
        (
            "DRAIN",
            DRAIN_HEX,
            ExtMessage::Drain {
                token: 0x0102_0304_0506_0708,
            },
        ),
        (
            "DRAIN_DONE",
            DRAIN_DONE_HEX,
            ExtMessage::DrainDone {
                token: 0x0102_0304_0506_0708,
            },
        ),
        (
            "SHM_OFFER",
            SHM_OFFER_HEX,
            ExtMessage::ShmOffer(ShmOffer {
                token: 5,
                kind: RegionKind::Memfd,
                region_size: 1 << 30,
                nonce: std::array::from_fn(|i| i as u8),
            }),
        ),
        (
            "SHM_ACK accepted",
            SHM_ACK_ACCEPTED_HEX,
            ExtMessage::ShmAck(ShmAck {
                token: 5,
                accepted: true,
                reason: String::new(),
            }),
        ),
        (
            "SHM_ACK refused",
            SHM_ACK_REFUSED_HEX,
            ExtMessage::ShmAck(ShmAck {
                token: 6,
                accepted: false,
                reason: "no region is bound".into(),
            }),
        ),
        (
            "SHM_FRAME",
            SHM_FRAME_HEX,
            ExtMessage::ShmFrame(shm_frame()),
        ),
        (
            "SHM_RELEASE",
            SHM_RELEASE_HEX,
            ExtMessage::ShmRelease(ShmRelease {
                slot: 3,
                frame_index: 7,
            }),
        ),
        (
            "FRAME_CHECKSUM",
            FRAME_CHECKSUM_HEX,
            ExtMessage::FrameChecksum(FrameChecksum {
                pts: 0,
                frame_index: 1,
                flags: ext::CHECKSUM_FLAG_REBUILT,
                checksum: 0xaf63_dc4c_8601_ec8c,
            }),
        ),
    ]
}

fn ext_decode_one(bytes: &[u8]) -> (Header, ExtMessage) {
    let mut dec = Decoder::with_extensions(Limits::default());
    let mut input = bytes;
    match dec.decode_ext(&mut input).unwrap() {
        Some(Decoded::Ext(h, m)) => {
            assert!(input.is_empty(), "bytes left over");
            assert!(dec.is_idle());
            (h, m)
        }
        other => panic!("expected an extension message, got {other:?}"),
    }
}

#[test]
fn every_vector_decodes_to_its_message() {
    for (name, text, want) in vectors() {
        let bytes = hex(text);
        let (h, m) = ext_decode_one(&bytes);
        assert_eq!(m, want, "{name}");
        assert_eq!(h.msg_type, want.msg_type(), "{name}");
        assert_eq!(h.session_id, 1, "{name}");
        assert_eq!(h.payload_size as usize, bytes.len() - 12, "{name}");
    }
}

#[test]
fn every_message_encodes_to_its_vector() {
    for (name, text, msg) in vectors() {
        assert_eq!(msg.encode(1), hex(text), "{name}");
    }
}

#[test]
fn vectors_decode_split_at_every_byte_and_through_read_from() {
    let stream: Vec<u8> = vectors().iter().flat_map(|(_, t, _)| hex(t)).collect();
    let want: Vec<ExtMessage> = vectors().into_iter().map(|(_, _, m)| m).collect();
    // One byte at a time.
    let mut dec = Decoder::with_extensions(Limits::default());
    let mut got = Vec::new();
    for b in &stream {
        let mut input = std::slice::from_ref(b);
        while !input.is_empty() {
            if let Some(Decoded::Ext(_, m)) = dec.decode_ext(&mut input).unwrap() {
                got.push(m);
            }
        }
    }
    assert_eq!(got, want);
    // From a reader.
    let mut dec = Decoder::with_extensions(Limits::default());
    let mut r = &stream[..];
    let mut got = Vec::new();
    while let Some(d) = dec.read_from_ext(&mut r).unwrap() {
        match d {
            Decoded::Ext(_, m) => got.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, want);
}

/// A legacy decoder (and an extension-aware one that was not told to use
/// extensions) skips every extension message as `Skipped`, exactly like a
/// legacy host, and keeps its framing: the PING after each one decodes.
#[test]
fn legacy_decoder_skips_every_extension_message() {
    let ping = Message::Ping.encode(1);
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for (_, text, m) in vectors() {
        let bytes = hex(text);
        want.push(Message::Skipped {
            msg_type: m.msg_type(),
            payload_size: (bytes.len() - 12) as u32,
        });
        want.push(Message::Ping);
        stream.extend_from_slice(&bytes);
        stream.extend_from_slice(&ping);
    }
    for mut dec in [
        Decoder::default(),
        Decoder::new(Limits::default()),
        Decoder::with_extensions(Limits::default()),
    ] {
        dec.set_extensions(false);
        let mut input = &stream[..];
        let mut got = Vec::new();
        while let Some((_, m)) = dec.decode(&mut input).unwrap() {
            got.push(m);
        }
        assert_eq!(got, want);
        assert!(dec.is_idle());
        // decode_ext of a non-extension decoder gives the same.
        let mut dec = Decoder::default();
        let mut r = &stream[..];
        let mut got = Vec::new();
        while let Some(d) = dec.read_from_ext(&mut r).unwrap() {
            match d {
                Decoded::Legacy(_, m) => got.push(m),
                Decoded::Ext(..) => panic!("legacy decoder produced an extension message"),
            }
        }
        assert_eq!(got, want);
    }
}

/// The legacy API of an extension-enabled decoder reports extension
/// messages as `Skipped` too (it has no other way to show them).
#[test]
fn legacy_api_of_extension_decoder_reports_skipped() {
    let bytes = hex(DRAIN_HEX);
    let mut dec = Decoder::with_extensions(Limits::default());
    let (h, m) = dec.decode(&mut &bytes[..]).unwrap().unwrap();
    assert_eq!(h.msg_type, ext_type::DRAIN);
    assert_eq!(
        m,
        Message::Skipped {
            msg_type: ext_type::DRAIN,
            payload_size: 8
        }
    );
}

/// Legacy messages decode unchanged on an extension decoder, and unknown
/// codes of the extension range still skip.
#[test]
fn extension_decoder_still_speaks_legacy() {
    let mut stream = Message::Pong.encode(3);
    stream.extend_from_slice(&hex("48 58 46 52 4f 00 01 00 03 00 00 00 01 02 03"));
    stream.extend_from_slice(&Message::Ping.encode(3));
    let mut dec = Decoder::with_extensions(Limits::default());
    let mut input = &stream[..];
    let got: Vec<Decoded> = std::iter::from_fn(|| dec.decode_ext(&mut input).unwrap()).collect();
    assert_eq!(got.len(), 3);
    assert!(matches!(&got[0], Decoded::Legacy(_, Message::Pong)));
    assert!(matches!(
        &got[1],
        Decoded::Legacy(
            _,
            Message::Skipped {
                msg_type: 0x4f,
                payload_size: 3
            }
        )
    ));
    assert!(matches!(&got[2], Decoded::Legacy(_, Message::Ping)));
}

fn vector_frames() -> (OwnedFrame, OwnedFrame) {
    let zero = OwnedFrame {
        format: WireFormat::Nv12,
        width: 10,
        height: 16,
        planes: vec![vec![0; 10 * 16], vec![0; 10 * 8]],
        strides: vec![10, 10],
    };
    let mut cur = zero.clone();
    cur.set(0, 0, 8, 0xa1);
    cur.set(0, 0, 9, 0xa2);
    cur.set(1, 0, 8, 0xc1);
    cur.set(1, 0, 9, 0xc2);
    (zero, cur)
}

/// The raw COMPACT_FRAME vector is exactly what the encoder produces, and
/// both vectors rebuild the current frame from the reference.
#[test]
fn compact_vectors_match_encoder_and_apply() {
    let (prev, cur) = vector_frames();
    let mut enc = CompactEncoder::new(8, 8, Compression::Off);
    let Delta::Compact(msg) = enc.encode(&prev.frame(), &cur.frame(), &compact_request(), 0, 1)
    else {
        panic!("expected a compact frame")
    };
    assert_eq!(msg.to_vec(), hex(COMPACT_RAW_HEX));
    assert_eq!(msg.changed_tiles, 1);
    assert_eq!(msg.total_tiles, 4);

    let layout = FrameLayout::new(WireFormat::Nv12, 10, 16, 10, 240).unwrap();
    for text in [COMPACT_RAW_HEX, COMPACT_LZ4_HEX] {
        let (_, m) = ext_decode_one(&hex(text));
        let ExtMessage::CompactFrame(cf) = m else {
            panic!()
        };
        let mut wire = prev.to_wire(10, 0);
        let mut scratch = Vec::new();
        let applied = compact::apply(&mut wire, &layout, &cf, &mut scratch).unwrap();
        assert_eq!(applied.changed_tiles, 1);
        assert_eq!(applied.raw_len, 24);
        assert_eq!(wire, cur.to_wire(10, 0));
    }
}

#[test]
fn fnv1a_reference_values() {
    let mut h = compact::Fnv1a64::new();
    assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
    h.write(b"a");
    assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    let mut h = compact::Fnv1a64::new();
    h.write(b"foobar");
    assert_eq!(h.finish(), 0x8594_4171_f739_67e8);
}

#[test]
fn negotiation_rules() {
    use ext_bits::*;
    assert_eq!(ext::negotiate(KNOWN, KNOWN), KNOWN);
    assert_eq!(
        ext::negotiate(LZ4 | DRAIN, KNOWN),
        DRAIN,
        "LZ4 needs COMPACT"
    );
    assert_eq!(ext::negotiate(COMPACT | LZ4, COMPACT), COMPACT);
    assert_eq!(
        ext::negotiate(0xffff_ffff, KNOWN & !FRAME_CHECKSUM),
        KNOWN & !FRAME_CHECKSUM
    );
    assert_eq!(ext::negotiate(DRAIN, 0), 0);
    assert_eq!(describe(COMPACT | DRAIN | 0x1000), "COMPACT|DRAIN|0x1000");
    assert_eq!(describe(CODEC), "CODEC");
    assert_eq!(describe(0), "none");
}

#[test]
fn long_texts_are_cut_at_a_character_boundary() {
    let msg = ExtMessage::ErrorPts(ErrorPts {
        pts: 1,
        frame_index: 2,
        code: -99,
        message: "é".repeat(600),
    });
    let (_, m) = ext_decode_one(&msg.encode(1));
    let ExtMessage::ErrorPts(e) = m else { panic!() };
    assert_eq!(e.message, "é".repeat(512));
    let hello = ExtMessage::Hello(Hello {
        agent: "x".repeat(40),
        ..Default::default()
    });
    let (_, m) = ext_decode_one(&hello.encode(1));
    let ExtMessage::Hello(h) = m else { panic!() };
    assert_eq!(h.agent, "x".repeat(31));
}

/// A newer peer may append fields: trailing bytes are ignored and framing
/// holds.
#[test]
fn trailing_bytes_are_ignored() {
    for (name, text, want) in vectors() {
        let mut bytes = hex(text);
        if matches!(want, ExtMessage::CompactFrame(_) | ExtMessage::ErrorPts(_))
            || matches!(&want, ExtMessage::HelloAck(a) if !a.reason.is_empty())
        {
            continue; // their tail is data, checked separately
        }
        let size = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) + 5;
        bytes[8..12].copy_from_slice(&size.to_le_bytes());
        bytes.extend_from_slice(&[9; 5]);
        bytes.extend_from_slice(&Message::Ping.encode(1));
        let mut dec = Decoder::with_extensions(Limits::default());
        let mut input = &bytes[..];
        let Some(Decoded::Ext(_, m)) = dec.decode_ext(&mut input).unwrap() else {
            panic!("{name}")
        };
        assert_eq!(m, want, "{name}");
        assert!(matches!(
            dec.decode_ext(&mut input).unwrap(),
            Some(Decoded::Legacy(_, Message::Ping))
        ));
    }
    // ERROR_PTS: bytes after the text are ignored too.
    let mut bytes = hex(ERROR_PTS_HEX);
    bytes[8] += 3;
    bytes.extend_from_slice(&[1, 2, 3]);
    let (_, m) = ext_decode_one(&bytes);
    let ExtMessage::ErrorPts(e) = m else { panic!() };
    assert_eq!(e.message, "encode failed");
}

/// Sizes are checked before anything is allocated, with the legacy error
/// style; after a recoverable error the next message decodes.
#[test]
fn sizes_and_bodies_are_checked() {
    let ping = Message::Ping.encode(1);
    let limits = Limits {
        max_pixel_bytes: 1000,
        ..Limits::default()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // COMPACT_FRAME larger than fixed part + max_pixel_bytes.
        (
            hex("48 58 46 52 42 00 01 00 ff ff ff ff"),
            "payload_size 4294967295 exceeds limit 1068",
        ),
        // HELLO shorter than its 44 bytes.
        (
            {
                let mut b = hex("48 58 46 52 40 00 01 00 04 00 00 00");
                b.extend_from_slice(&[1, 0, 0, 0]);
                b
            },
            "payload_size 4 is below the 44 bytes",
        ),
        // ERROR_PTS whose text_len points past the payload.
        (
            {
                let mut b = hex(ERROR_PTS_HEX);
                b[28] = 0x40;
                b
            },
            "ERROR_PTS: text_len 64 exceeds the 13 bytes that follow",
        ),
        // COMPACT_FRAME whose data_len does not match the payload.
        (
            {
                let mut b = hex(COMPACT_RAW_HEX);
                b[72] = 0x17;
                b
            },
            "COMPACT_FRAME: bitmap (1 bytes for 10x16 in 8x8 tiles) and data_len 23 add up to 24 bytes, but 25 follow",
        ),
        // COMPACT_FRAME with an unknown tile encoding.
        (
            {
                let mut b = hex(COMPACT_RAW_HEX);
                b[64] = 7;
                b
            },
            "COMPACT_FRAME: unknown tile encoding 7",
        ),
    ];
    for (bytes, want) in cases {
        let mut stream = bytes.clone();
        stream.extend_from_slice(&ping);
        let mut dec = Decoder::with_extensions(limits);
        let mut input = &stream[..];
        let err = loop {
            match dec.decode_ext(&mut input) {
                Err(e) => break e,
                Ok(Some(d)) => panic!("decoded {d:?} from a bad message"),
                Ok(None) if input.is_empty() => {
                    // The oversize claim is being skipped; the stream ends
                    // inside it.
                    break dec.finish().unwrap_err();
                }
                Ok(None) => {}
            }
        };
        if bytes.len() == 12 {
            assert!(
                matches!(err, ProtocolError::PayloadTooLarge { .. }),
                "{err}"
            );
            assert!(err.to_string().contains(want), "{err}");
            continue;
        }
        assert!(!err.is_fatal(), "{err}");
        assert!(err.to_string().contains(want), "got: {err}\nwant: {want}");
        assert!(matches!(
            dec.decode_ext(&mut input).unwrap(),
            Some(Decoded::Legacy(_, Message::Ping))
        ));
        assert!(dec.is_idle());
    }
}

mod common;

/// Byte strings quoted in docs/protocol.md: every fenced block, and every
/// inline code span made only of hex bytes (at least a header's worth).
/// Text after `#` on a line is a comment; tokens that are not two hex
/// digits (`×`, counts) are left out.
fn doc_byte_blocks() -> Vec<Vec<u8>> {
    let doc = include_str!("../../docs/protocol.md");
    let is_hex_byte = |t: &str| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit());
    let parse = |text: &str| -> Vec<u8> {
        text.lines()
            .flat_map(|l| l.split('#').next().unwrap().split_whitespace())
            .filter(|t| is_hex_byte(t))
            .map(|t| u8::from_str_radix(t, 16).unwrap())
            .collect()
    };
    let mut blocks = Vec::new();
    let mut fenced: Option<String> = None;
    let mut prose = String::new();
    for line in doc.lines() {
        if line.starts_with("```") {
            match fenced.take() {
                Some(block) => blocks.push(parse(&block)),
                None => fenced = Some(String::new()),
            }
            continue;
        }
        match &mut fenced {
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {
                prose.push_str(line);
                prose.push(' ');
            }
        }
    }
    for (i, span) in prose.split('`').enumerate() {
        let toks: Vec<&str> = span.split_whitespace().collect();
        if i % 2 == 1 && toks.len() >= 12 && toks.iter().all(|t| is_hex_byte(t)) {
            blocks.push(parse(span));
        }
    }
    blocks
}

/// docs/protocol.md quotes the extension vectors of this file and the
/// legacy vectors of tests/common/vectors.rs byte for byte.
#[test]
fn docs_quote_the_vectors() {
    let blocks = doc_byte_blocks();
    for (name, text, _) in vectors() {
        assert!(
            blocks.contains(&hex(text)),
            "docs/protocol.md does not quote the {name} vector"
        );
    }
    let legacy = [
        common::vectors::frame_request_resource(),
        common::vectors::frame_request_pixels(),
        common::vectors::frame_response_annexb(),
        common::vectors::frame_response_avcc(),
        common::vectors::frame_response_empty(),
        common::vectors::keyframe_req(),
        common::vectors::config_req(),
        common::vectors::config_resp(),
        common::vectors::ping(),
        common::vectors::pong(),
        common::vectors::enable_scanout(),
    ];
    for v in legacy {
        assert!(
            blocks.contains(&v.bytes),
            "docs/protocol.md does not quote the legacy vector {:?}",
            v.name
        );
    }
    // ERROR is quoted with its 243 bytes of NUL padding abbreviated.
    let error = common::vectors::error().bytes;
    assert!(
        blocks
            .iter()
            .any(|b| b.len() > 29 && error.starts_with(&b[..29])),
        "docs/protocol.md does not quote the ERROR vector"
    );
}

/// docs/protocol.md quotes the frames of the FORMATS extension too.
#[test]
fn docs_quote_the_negotiated_format_vectors() {
    let blocks = doc_byte_blocks();
    for v in common::vectors::negotiated_formats() {
        assert!(
            blocks.contains(&v.bytes),
            "docs/protocol.md does not quote the vector {:?}",
            v.name
        );
    }
}

/// The PROFILE messages in detail: the profile and level read back as
/// GStreamer names, a status other than 0 is no acceptance, the text is cut
/// at 1024 bytes, and a text_len past the payload is refused.
#[test]
fn profile_messages() {
    let (_, m) = ext_decode_one(&hex(PROFILE_REQ_HEX));
    let ExtMessage::ProfileRequest(r) = m else {
        panic!()
    };
    assert_eq!(r.profile.name(), Some("constrained-baseline"));
    assert_eq!(r.max_level.name(), Some("3.1"));
    let mut b = hex(PROFILE_RESP_ACCEPTED_HEX);
    b[20] = 7; // a status this crate does not know
    let (_, m) = ext_decode_one(&b);
    let ExtMessage::ProfileResponse(r) = m else {
        panic!()
    };
    assert!(!r.accepted);
    let long = ExtMessage::ProfileResponse(ProfileResponse {
        reason: "ü".repeat(600),
        ..Default::default()
    });
    let (_, m) = ext_decode_one(&long.encode(1));
    let ExtMessage::ProfileResponse(r) = m else {
        panic!()
    };
    assert_eq!(r.reason, "ü".repeat(512));
    let mut b = hex(PROFILE_RESP_REFUSED_HEX);
    b[56] = 0x24;
    let mut dec = Decoder::with_extensions(Limits::default());
    let e = dec.decode_ext(&mut &b[..]).unwrap_err();
    assert!(!e.is_fatal());
    assert!(
        e.to_string()
            .contains("PROFILE_RESP: text_len 36 exceeds the 35 bytes that follow"),
        "{e}"
    );
    assert_eq!(ext_type::name(ext_type::PROFILE_REQ), Some("PROFILE_REQ"));
    assert_eq!(
        ext_bits::describe(ext_bits::PROFILE | ext_bits::FORMATS),
        "PROFILE|FORMATS"
    );
}
