//! Test vectors, both directions: the hand-assembled bytes of every message
//! type decode to the expected value, and the value encodes to exactly the
//! same bytes.

mod common;

use std::io::{IoSlice, Write};

use common::vectors::{self, Vector};
use common::{decode_all, decode_one, hex};
use hxfr::message::{CONFIG_REQ_FIXED, ERROR_FIXED, FRAME_REQUEST_FIXED, FRAME_RESPONSE_FIXED};
use hxfr::{msg_type, FrameRequest, Header, Message, HEADER_LEN, MAGIC};

fn check_decodes(v: &Vector) {
    let (header, message) = decode_one(&v.bytes);
    assert_eq!(header, v.header, "{}: header", v.name);
    assert_eq!(message, v.message, "{}: message", v.name);
    assert_eq!(message.msg_type(), v.header.msg_type, "{}", v.name);
}

fn check_encodes(v: &Vector) {
    assert!(v.encodes_back, "{} is decode-only", v.name);
    assert_eq!(
        v.message.encode(v.header.session_id),
        v.bytes,
        "{}: encoding differs from the vector",
        v.name
    );
}

#[test]
fn header_layout_is_magic_type_flags_session_size() {
    let h = hex("48 58 46 52  01  01  34 12  78 56 34 12");
    let parsed = Header::parse(&h.clone().try_into().unwrap()).unwrap();
    assert_eq!(parsed, Header::new(0x01, 0x01, 0x1234, 0x1234_5678));
    assert_eq!(parsed.to_bytes().to_vec(), h);
    assert_eq!(MAGIC.to_le_bytes(), *b"HXFR");
    assert_eq!(HEADER_LEN, 12);
    assert_eq!(parsed.type_name(), "FRAME_REQUEST");
}

#[test]
fn header_parse_reports_the_magic_it_found() {
    let h: [u8; 12] = hex("47 45 54 20  01 00 01 00 00 00 00 00")
        .try_into()
        .unwrap();
    assert_eq!(Header::parse(&h), Err(0x2054_4547)); // "GET "
}

#[test]
fn fixed_part_sizes_match_protocol_md() {
    assert_eq!(HEADER_LEN + FRAME_REQUEST_FIXED, 56);
    assert_eq!(HEADER_LEN + FRAME_RESPONSE_FIXED, 36);
    assert_eq!(HEADER_LEN + CONFIG_REQ_FIXED, 40);
    assert_eq!(HEADER_LEN + ERROR_FIXED, 272);
}

#[test]
fn vector_lengths_match_their_headers() {
    for v in vectors::all() {
        assert_eq!(
            v.bytes.len(),
            HEADER_LEN + v.header.payload_size as usize,
            "{}",
            v.name
        );
    }
}

#[test]
fn frame_request_without_pixels() {
    let v = vectors::frame_request_resource();
    assert_eq!(v.bytes.len(), 56);
    check_decodes(&v);
    check_encodes(&v);
}

#[test]
fn frame_request_with_pixels() {
    let v = vectors::frame_request_pixels();
    assert_eq!(v.bytes.len(), 56 + 16);
    check_decodes(&v);
    check_encodes(&v);
}

/// `write_frame_request`, the zero-copy path senders use, produces the same
/// bytes as the vectors, whatever the slicing of the pixels.
#[test]
fn write_frame_request_matches_vectors() {
    let v = vectors::frame_request_pixels();
    let Message::FrameRequest { request, .. } = v.message else {
        unreachable!()
    };
    let px = vectors::two_by_two_bgra();
    for slices in [
        vec![&px[..]],
        vec![&px[..8], &px[8..]],
        vec![&px[..0], &px[..3], &px[3..3], &px[3..]],
    ] {
        let mut wire = Vec::new();
        let n = hxfr::write::write_frame_request(&mut wire, 0x1234, &request, &slices).unwrap();
        assert_eq!(n, wire.len());
        assert_eq!(wire, v.bytes);
    }

    // A request naming a resource and no slices goes without pixels.
    let v = vectors::frame_request_resource();
    let Message::FrameRequest { request, .. } = v.message else {
        unreachable!()
    };
    let mut wire = Vec::new();
    hxfr::write::write_frame_request(&mut wire, 1, &request, &[]).unwrap();
    assert_eq!(wire, v.bytes);
}

/// The pixels reach the writer as the caller's own slices: nothing is
/// copied into an intermediate buffer on the way.
#[test]
fn write_frame_request_hands_out_the_callers_slices() {
    struct Recorder {
        bytes: Vec<u8>,
        pointers: Vec<(usize, usize)>,
        max_accept: usize,
    }
    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            // Accept at most `max_accept` bytes per call to exercise the
            // partial-write loop.
            let mut left = self.max_accept;
            let mut n = 0;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = b.len().min(left);
                self.pointers.push((b.as_ptr() as usize, take));
                self.bytes.extend_from_slice(&b[..take]);
                left -= take;
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let plane_y = vec![0x10u8; 4096];
    let plane_uv = vec![0x80u8; 2048];
    let req = FrameRequest {
        width: 64,
        height: 64,
        format: hxfr::WireFormat::Nv12.fourcc(),
        stride: 64,
        ..Default::default()
    };
    let mut w = Recorder {
        bytes: Vec::new(),
        pointers: Vec::new(),
        max_accept: 1000,
    };
    hxfr::write::write_frame_request(&mut w, 1, &req, &[&plane_y, &plane_uv]).unwrap();
    assert_eq!(w.bytes.len(), 56 + 6144);
    assert_eq!(&w.bytes[56..56 + 4096], &plane_y[..]);
    assert_eq!(&w.bytes[56 + 4096..], &plane_uv[..]);
    let inside = |p: usize, len: usize, buf: &[u8]| {
        let start = buf.as_ptr() as usize;
        p >= start && p + len <= start + buf.len()
    };
    let pixel_writes = w
        .pointers
        .iter()
        .filter(|&&(p, len)| inside(p, len, &plane_y) || inside(p, len, &plane_uv))
        .map(|&(_, len)| len)
        .sum::<usize>();
    assert_eq!(
        pixel_writes, 6144,
        "every pixel byte must come straight from the caller's planes"
    );
}

#[test]
fn frame_response_one_annexb_chunk() {
    let v = vectors::frame_response_annexb();
    check_decodes(&v);
    check_encodes(&v);
    let Message::FrameResponse(r) = &v.message else {
        unreachable!()
    };
    assert_eq!(r.annexb(), vectors::annexb_au());
    assert_eq!(r.payload_size(), 41);
    let single =
        hxfr::FrameResponse::single(1_000_000_000, 966_666_667, true, vectors::annexb_au());
    assert_eq!(&single, r);
}

#[test]
fn frame_response_several_avcc_chunks() {
    let v = vectors::frame_response_avcc();
    check_decodes(&v);
    check_encodes(&v);
    let Message::FrameResponse(r) = &v.message else {
        unreachable!()
    };
    assert_eq!(
        r.annexb(),
        hex("00 00 00 01 09 f0  00 00 00 01 06 05 80  00 00 00 01 41 9a  00 00 00 01 01 02 03")
    );
}

#[test]
fn frame_response_empty() {
    let v = vectors::frame_response_empty();
    check_decodes(&v);
    check_encodes(&v);
    let Message::FrameResponse(r) = &v.message else {
        unreachable!()
    };
    assert!(r.annexb().is_empty());
}

#[test]
fn keyframe_req() {
    let v = vectors::keyframe_req();
    check_decodes(&v);
    check_encodes(&v);
}

#[test]
fn config_req() {
    let v = vectors::config_req();
    assert_eq!(v.bytes.len(), 40);
    check_decodes(&v);
    check_encodes(&v);
}

#[test]
fn config_resp() {
    let v = vectors::config_resp();
    check_decodes(&v);
    check_encodes(&v);
}

#[test]
fn ping_and_pong() {
    for v in [vectors::ping(), vectors::pong()] {
        check_decodes(&v);
        check_encodes(&v);
    }
}

#[test]
fn error() {
    let v = vectors::error();
    assert_eq!(v.bytes.len(), 272);
    check_decodes(&v);
    check_encodes(&v);
}

/// A legacy host may fill all 256 bytes of the text without a NUL.
#[test]
fn error_text_without_nul_terminator() {
    let mut bytes = hex("48 58 46 52  ff  00  01 00  04 01 00 00  9d ff ff ff"); // -99
    bytes.extend(std::iter::repeat_n(b'x', 256));
    let (_, m) = decode_one(&bytes);
    assert_eq!(
        m,
        Message::Error(hxfr::ErrorMessage::new(
            hxfr::error_code::INTERNAL,
            "x".repeat(256)
        ))
    );
}

/// Text longer than the field is cut to 255 bytes (keeping a NUL) at a
/// character boundary.
#[test]
fn error_text_is_cut_to_fit() {
    let long = "é".repeat(200); // 400 bytes
    let wire = Message::Error(hxfr::ErrorMessage::new(-1, long)).encode(1);
    assert_eq!(wire.len(), 272);
    let text = &wire[16..];
    assert_eq!(text[254], 0, "a 2-byte character may not be split");
    assert_eq!(text[255], 0);
    let (_, m) = decode_one(&wire);
    let Message::Error(e) = m else { unreachable!() };
    assert_eq!(e.message, "é".repeat(127));
}

#[test]
fn scanout_and_subscribe_are_parsed_and_skipped() {
    for v in [
        vectors::enable_scanout(),
        vectors::disable_scanout(),
        vectors::scanout_resp(),
        vectors::subscribe(),
        vectors::subscribe_resp(),
    ] {
        check_decodes(&v);
        if v.encodes_back {
            check_encodes(&v);
        }
    }
}

#[test]
fn unknown_type_is_skipped() {
    let v = vectors::unknown();
    check_decodes(&v);
    assert_eq!(hxfr::msg_type::name(0x99), "unknown");
}

/// Skipping keeps the framing: whatever follows a skipped message decodes.
#[test]
fn skipped_messages_keep_the_stream_in_sync() {
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for v in [
        vectors::enable_scanout(),
        vectors::subscribe(),
        vectors::unknown(),
    ] {
        stream.extend_from_slice(&v.bytes);
        want.push(v.message.clone());
        stream.extend_from_slice(&vectors::ping().bytes);
        want.push(Message::Ping);
    }
    let got = decode_all(&stream);
    assert_eq!(got.fatal, None);
    assert!(got.errors.is_empty(), "{:?}", got.errors);
    let got: Vec<Message> = got.messages.into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, want);
}

/// Every message type of PROTOCOL.md has a vector.
#[test]
fn every_message_type_has_a_vector() {
    let covered: Vec<u8> = vectors::all().iter().map(|v| v.header.msg_type).collect();
    for t in [
        msg_type::FRAME_REQUEST,
        msg_type::FRAME_RESPONSE,
        msg_type::KEYFRAME_REQ,
        msg_type::CONFIG_REQ,
        msg_type::CONFIG_RESP,
        msg_type::PING,
        msg_type::PONG,
        msg_type::ENABLE_SCANOUT,
        msg_type::DISABLE_SCANOUT,
        msg_type::SCANOUT_RESP,
        msg_type::SUBSCRIBE,
        msg_type::SUBSCRIBE_RESP,
        msg_type::ERROR,
    ] {
        assert!(covered.contains(&t), "no vector for {}", msg_type::name(t));
        assert_ne!(msg_type::name(t), "unknown");
    }
}

/// Trailing bytes a newer peer may append to a fixed-size message are
/// skipped, and the message still decodes.
#[test]
fn trailing_bytes_after_fixed_parts_are_ignored() {
    let cases = [
        (vectors::config_req(), 3usize),
        (vectors::error(), 5),
        (vectors::frame_request_resource(), 8),
        (vectors::ping(), 2),
        (vectors::keyframe_req(), 1),
    ];
    for (v, extra) in cases {
        let mut bytes = v.bytes.clone();
        let size = v.header.payload_size + extra as u32;
        bytes[8..12].copy_from_slice(&size.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0xee, extra));
        bytes.extend_from_slice(&vectors::pong().bytes);
        let got = decode_all(&bytes);
        assert_eq!(got.fatal, None, "{}", v.name);
        assert!(got.errors.is_empty(), "{}: {:?}", v.name, got.errors);
        assert_eq!(got.messages.len(), 2, "{}", v.name);
        assert_eq!(got.messages[0].1, v.message, "{}", v.name);
        assert_eq!(got.messages[1].1, Message::Pong, "{}", v.name);
    }
}

/// A FRAME_REQUEST with the pixel flag and nothing after the fixed part has
/// an empty pixel block, not none.
#[test]
fn frame_request_flag_set_without_pixel_bytes() {
    let mut bytes = vectors::frame_request_resource().bytes;
    bytes[5] = 0x01;
    let (h, m) = decode_one(&bytes);
    assert_eq!(h.flags, 0x01);
    let Message::FrameRequest { pixels, .. } = m else {
        unreachable!()
    };
    assert_eq!(pixels, Some(vec![]));
}
