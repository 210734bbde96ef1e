//! Round trips: random values of every message type encode, decode to the
//! same value, and encode again to the same bytes.

mod common;

use common::{decode_all, decode_one, Rng};
use hxfr::{
    ConfigRequest, ErrorMessage, FrameRequest, FrameResponse, Message, WireFormat,
    LEGACY_SESSION_ID,
};

fn random_i64(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => 0,
        1 => -1 - rng.below(1000) as i64,
        2 => i64::MAX - rng.below(1000) as i64,
        _ => rng.next_u64() as i64,
    }
}

fn random_frame_request(rng: &mut Rng) -> Message {
    let format = *[
        WireFormat::Bgra.fourcc(),
        WireFormat::Rgba.fourcc(),
        WireFormat::Nv12.fourcc(),
        rng.next_u32(),
    ]
    .get(rng.below(4))
    .unwrap();
    let request = FrameRequest {
        resource_id: if rng.chance(1, 2) { 0 } else { rng.next_u32() },
        width: rng.next_u32(),
        height: rng.next_u32(),
        format,
        stride: rng.next_u32(),
        pts: random_i64(rng),
        duration: random_i64(rng),
        force_keyframe: rng.chance(1, 2),
    };
    let pixels = rng.chance(2, 3).then(|| {
        let n = rng.below(3000);
        rng.bytes(n)
    });
    Message::FrameRequest { request, pixels }
}

fn random_frame_response(rng: &mut Rng) -> Message {
    let chunks = (0..rng.below(6))
        .map(|_| {
            let n = rng.below(500);
            rng.bytes(n)
        })
        .collect();
    Message::FrameResponse(FrameResponse {
        pts: random_i64(rng),
        dts: random_i64(rng),
        is_keyframe: rng.chance(1, 2),
        chunks,
    })
}

fn random_config_request(rng: &mut Rng) -> Message {
    Message::ConfigRequest(ConfigRequest {
        width: rng.next_u32(),
        height: rng.next_u32(),
        bitrate: rng.next_u32(),
        framerate_num: rng.next_u32(),
        framerate_den: rng.next_u32(),
        profile: rng.next_u32() as u8,
        level: rng.next_u32() as u8,
        realtime: rng.chance(1, 2),
    })
}

fn random_error(rng: &mut Rng) -> Message {
    // Printable ASCII and some multi-byte characters, no NUL (the wire
    // text ends at the first NUL), at most 255 bytes.
    let alphabet: Vec<char> = ('a'..='z').chain([' ', 'é', '→', '✓']).collect();
    let mut text = String::new();
    for _ in 0..rng.below(120) {
        let c = alphabet[rng.below(alphabet.len())];
        if text.len() + c.len_utf8() > 255 {
            break;
        }
        text.push(c);
    }
    Message::Error(ErrorMessage::new(rng.next_u32() as i32, text))
}

fn random_message(rng: &mut Rng) -> Message {
    match rng.below(10) {
        0 | 1 => random_frame_request(rng),
        2 | 3 => random_frame_response(rng),
        4 => random_config_request(rng),
        5 => random_error(rng),
        6 => Message::ConfigResponse({
            let n = rng.below(40);
            rng.bytes(n)
        }),
        7 => Message::KeyframeRequest,
        8 => Message::Ping,
        _ => Message::Pong,
    }
}

#[test]
fn random_messages_round_trip() {
    let mut rng = Rng::new(0x5eed);
    for i in 0..3000 {
        let msg = random_message(&mut rng);
        let session = if rng.chance(1, 2) {
            LEGACY_SESSION_ID
        } else {
            rng.next_u32() as u16
        };
        let wire = msg.encode(session);
        let (h, back) = decode_one(&wire);
        assert_eq!(back, msg, "message {i}");
        assert_eq!(h.session_id, session);
        assert_eq!(h.msg_type, msg.msg_type());
        assert_eq!(h.payload_size as usize + 12, wire.len());
        assert_eq!(back.encode(session), wire, "message {i} re-encoded");
    }
}

#[test]
fn a_stream_of_random_messages_round_trips() {
    let mut rng = Rng::new(7);
    let msgs: Vec<Message> = (0..500).map(|_| random_message(&mut rng)).collect();
    let wire: Vec<u8> = msgs.iter().flat_map(|m| m.encode(1)).collect();
    let out = decode_all(&wire);
    assert_eq!(out.fatal, None);
    assert!(out.errors.is_empty());
    let back: Vec<Message> = out.messages.into_iter().map(|(_, m)| m).collect();
    assert_eq!(back, msgs);
}

/// `write_frame_request` and `Message::encode` agree byte for byte.
#[test]
fn vectored_write_equals_encode() {
    let mut rng = Rng::new(99);
    for _ in 0..500 {
        let Message::FrameRequest { request, pixels } = random_frame_request(&mut rng) else {
            unreachable!()
        };
        let Some(pixels) = pixels else { continue };
        let cut = rng.below(pixels.len() + 1);
        let mut wire = Vec::new();
        hxfr::write::write_frame_request(&mut wire, 3, &request, &[&pixels[..cut], &pixels[cut..]])
            .unwrap();
        let msg = Message::FrameRequest {
            request,
            pixels: Some(pixels),
        };
        assert_eq!(wire, msg.encode(3));
    }
}

/// Skipped messages encode as header plus zero bytes and decode back.
#[test]
fn skipped_round_trip() {
    for t in [0x20u8, 0x21, 0x22, 0x30, 0x31, 0x99, 0xfe] {
        for size in [0u32, 1, 17, 4096] {
            let msg = Message::Skipped {
                msg_type: t,
                payload_size: size,
            };
            let wire = msg.encode(1);
            assert_eq!(wire.len(), 12 + size as usize);
            assert_eq!(decode_one(&wire).1, msg);
        }
    }
}

/// A single Annex-B chunk, the way `vsockenc-host` answers.
#[test]
fn single_chunk_response_round_trips() {
    let au = vec![0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x65, 0x88];
    let msg = Message::FrameResponse(FrameResponse::single(10, 9, true, au.clone()));
    let (_, back) = decode_one(&msg.encode(1));
    let Message::FrameResponse(r) = back else {
        unreachable!()
    };
    assert_eq!(r.chunks, vec![au.clone()]);
    assert_eq!(r.annexb(), au);
    assert!(hxfr::nal::has_idr(&r.annexb()));
}
