//! What a broken or hostile peer gets: exact error texts for oversize
//! claims, bad counts, short payloads, truncation and bad magic; nothing
//! allocated for a 4 GiB claim; and framing that survives every
//! recoverable error.

mod common;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use std::io::Cursor;

use common::vectors;
use common::{cat, decode_all, first_error, hex, read_all};
use counting_alloc::measure;
use hxfr::{msg_type, Decoder, Header, Limits, Message, ProtocolError};

/// Every type code the legacy protocol defines, plus one nobody does.
const TYPES: [(u8, &str); 14] = [
    (0x01, "FRAME_REQUEST"),
    (0x02, "FRAME_RESPONSE"),
    (0x03, "KEYFRAME_REQ"),
    (0x04, "CONFIG_REQ"),
    (0x05, "CONFIG_RESP"),
    (0x10, "PING"),
    (0x11, "PONG"),
    (0x20, "ENABLE_SCANOUT"),
    (0x21, "DISABLE_SCANOUT"),
    (0x22, "SCANOUT_RESP"),
    (0x30, "SUBSCRIBE"),
    (0x31, "SUBSCRIBE_RESP"),
    (0xff, "ERROR"),
    (0x99, "unknown message type 0x99"),
];

/// The payload limit the default [`Limits`] put on each type.
fn default_limit(t: u8) -> u64 {
    match t {
        // The fixed part plus the 64 MiB pixel block the legacy host allows.
        0x01 => 44 + (64 << 20),
        0x02 => 64 << 20,
        0x03 | 0x04 | 0x05 | 0x10 | 0x11 | 0xff => 64 << 10,
        _ => 64 << 20,
    }
}

fn header(t: u8, flags: u8, size: u32) -> Vec<u8> {
    Header::new(t, flags, 1, size).to_bytes().to_vec()
}

#[test]
fn default_limits_are_documented_values() {
    let l = Limits::default();
    assert_eq!(l.max_pixel_bytes, 67_108_864);
    assert_eq!(l.max_response_bytes, 67_108_864);
    assert_eq!(l.max_nal_count, 1024);
    assert_eq!(l.max_skip_bytes, 67_108_864);
    assert_eq!(l.max_small_payload, 65_536);
}

/// A 4 GiB claim of every type is refused with the exact text, before a
/// single byte is allocated.
#[test]
fn four_gib_claims_are_refused_without_allocating() {
    for (t, name) in TYPES {
        for flags in [0u8, 1] {
            let h = header(t, flags, u32::MAX);
            let mut dec = Decoder::default();
            let mut input = &h[..];
            let (res, allocs) = measure(|| dec.decode(&mut input));
            let e = res.unwrap_err();
            assert_eq!(allocs.count, 0, "{name}: {allocs:?}");
            assert_eq!(
                e.to_string(),
                format!(
                    "payload_size 4294967295 exceeds limit {} for {name} at stream offset 0",
                    default_limit(t)
                )
            );
            assert!(!e.is_fatal(), "the payload is skipped, framing stays");
            assert!(matches!(
                e,
                ProtocolError::PayloadTooLarge {
                    payload_size: u32::MAX,
                    offset: 0,
                    ..
                }
            ));

            // The same through read_from; the stream then ends inside the
            // 4 GiB the decoder was skipping.
            let mut dec = Decoder::default();
            let mut r = Cursor::new(h.clone());
            let (res, allocs) = measure(|| dec.read_from(&mut r));
            assert_eq!(allocs.count, 0, "{name} via read_from: {allocs:?}");
            assert!(matches!(res, Err(ProtocolError::PayloadTooLarge { .. })));
            let (res, allocs) = measure(|| dec.read_from(&mut r));
            assert_eq!(allocs.count, 0, "{name} truncated: {allocs:?}");
            let e = res.unwrap_err();
            assert!(e.is_fatal());
            assert_eq!(
                e.to_string(),
                format!(
                    "stream ended inside {name} at stream offset 0: 12 of 4294967307 bytes received"
                )
            );
        }
    }
}

/// Oversize payloads that do arrive are skipped whole: the next message
/// decodes.
#[test]
fn refused_payload_is_skipped_and_the_next_message_decodes() {
    let limits = Limits {
        max_pixel_bytes: 8,
        max_response_bytes: 30,
        max_nal_count: 1024,
        max_skip_bytes: 4,
        max_small_payload: 2,
    };
    let cases = [
        (
            vectors::frame_request_pixels(),
            "payload_size 60 exceeds limit 52 for FRAME_REQUEST at stream offset 0",
        ),
        (
            vectors::frame_response_annexb(),
            "payload_size 41 exceeds limit 30 for FRAME_RESPONSE at stream offset 0",
        ),
        (
            vectors::config_resp(),
            "payload_size 3 exceeds limit 2 for CONFIG_RESP at stream offset 0",
        ),
        (
            vectors::config_req(),
            "payload_size 28 exceeds limit 2 for CONFIG_REQ at stream offset 0",
        ),
        (
            vectors::enable_scanout(),
            "payload_size 8 exceeds limit 4 for ENABLE_SCANOUT at stream offset 0",
        ),
        (
            vectors::unknown(),
            "payload_size 5 exceeds limit 4 for unknown message type 0x99 at stream offset 0",
        ),
    ];
    for (v, text) in cases {
        let stream = cat(&[&v.bytes, &vectors::pong().bytes]);
        for piece in [1, 5, stream.len()] {
            let mut dec = Decoder::new(limits);
            let out = common::decode_in_pieces(&mut dec, &stream, || piece);
            assert_eq!(out.errors, vec![text.to_string()], "{}", v.name);
            assert_eq!(out.fatal, None);
            let msgs: Vec<_> = out.messages.into_iter().map(|(_, m)| m).collect();
            assert_eq!(msgs, vec![Message::Pong], "{}", v.name);
        }
        let mut dec = Decoder::new(limits);
        let out = read_all(&mut dec, &mut Cursor::new(stream));
        assert_eq!(out.errors, vec![text.to_string()], "{}", v.name);
        assert_eq!(out.messages.len(), 1);
    }
}

/// Exactly at the limit is accepted, one byte over is refused.
#[test]
fn limits_are_inclusive() {
    let limits = Limits {
        max_pixel_bytes: 16,
        max_response_bytes: 41,
        max_nal_count: 1,
        max_skip_bytes: 8,
        max_small_payload: 3,
    };
    let ok = [
        vectors::frame_request_pixels(),  // 16 pixel bytes
        vectors::frame_response_annexb(), // payload 41, one chunk
        vectors::config_resp(),           // payload 3
        vectors::enable_scanout(),        // payload 8
    ];
    for v in &ok {
        let mut dec = Decoder::new(limits);
        let mut input = &v.bytes[..];
        let (h, m) = dec.decode(&mut input).unwrap().unwrap();
        assert_eq!((h, m), (v.header, v.message.clone()), "{}", v.name);
    }
    let tighter = [
        Limits {
            max_pixel_bytes: 15,
            ..limits
        },
        Limits {
            max_response_bytes: 40,
            ..limits
        },
        Limits {
            max_small_payload: 2,
            ..limits
        },
        Limits {
            max_skip_bytes: 7,
            ..limits
        },
    ];
    for (v, l) in ok.iter().zip(tighter) {
        let mut dec = Decoder::new(l);
        let mut input = &v.bytes[..];
        let e = dec.decode(&mut input).unwrap_err();
        assert!(
            matches!(e, ProtocolError::PayloadTooLarge { .. }),
            "{}: {e}",
            v.name
        );
    }
}

fn response_with_count(count: u32, chunks: &[u8]) -> Vec<u8> {
    let payload = 24 + chunks.len() as u32;
    cat(&[
        &header(0x02, 0, payload),
        &hex("01 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  00 00 00 00"),
        &count.to_le_bytes(),
        chunks,
    ])
}

#[test]
fn nal_count_over_the_limit() {
    for count in [1025u32, 100_000, u32::MAX] {
        let stream = cat(&[&response_with_count(count, &[]), &vectors::ping().bytes]);
        let mut dec = Decoder::default();
        let mut input = &stream[..];
        let (res, allocs) = measure(|| dec.decode(&mut input));
        let e = res.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("nal_count {count} exceeds limit 1024 for FRAME_RESPONSE at stream offset 0")
        );
        assert!(!e.is_fatal());
        assert!(allocs.largest <= 4096, "{allocs:?}");
        assert_eq!(dec.decode(&mut input).unwrap().unwrap().1, Message::Ping);
    }
    // 1024 is still fine.
    let chunks: Vec<u8> = (0..1024).flat_map(|_| hex("01 00 00 00 65")).collect();
    let (_, m) = common::decode_one(&response_with_count(1024, &chunks));
    let Message::FrameResponse(r) = m else {
        unreachable!()
    };
    assert_eq!(r.chunks.len(), 1024);
}

/// A count the payload cannot hold does not size any allocation.
#[test]
fn nal_count_larger_than_the_payload_allocates_nothing_big() {
    let bytes = response_with_count(1000, &hex("02 00 00 00 09 f0"));
    let mut dec = Decoder::default();
    let mut input = &bytes[..];
    let (res, allocs) = measure(|| dec.decode(&mut input));
    assert_eq!(
        res.unwrap_err().to_string(),
        "malformed FRAME_RESPONSE at stream offset 0: NAL chunk 1 of 1000: its size field is cut off (0 bytes left)"
    );
    assert!(allocs.largest < 1024, "{allocs:?}");
}

#[test]
fn nal_chunk_overruns_the_payload() {
    let cases = [
        (
            response_with_count(1, &hex("64 00 00 00  aa bb cc")),
            "NAL chunk 0 of 1 claims 100 bytes but only 3 remain",
        ),
        (
            response_with_count(1, &hex("ff ff ff ff  aa")),
            "NAL chunk 0 of 1 claims 4294967295 bytes but only 1 remain",
        ),
        (
            response_with_count(2, &hex("01 00 00 00 09  02 00")),
            "NAL chunk 1 of 2: its size field is cut off (2 bytes left)",
        ),
        (
            response_with_count(1, &hex("01 00 00 00 09  01 02 03")),
            "3 bytes left over after the last of 1 NAL chunks",
        ),
        (
            response_with_count(0, &hex("00")),
            "1 bytes left over after the last of 0 NAL chunks",
        ),
    ];
    for (bytes, what) in cases {
        let stream = cat(&[&vectors::ping().bytes, &bytes, &vectors::pong().bytes]);
        let out = decode_all(&stream);
        assert_eq!(
            out.errors,
            vec![format!(
                "malformed FRAME_RESPONSE at stream offset 12: {what}"
            )]
        );
        assert_eq!(out.fatal, None);
        let msgs: Vec<_> = out.messages.into_iter().map(|(_, m)| m).collect();
        assert_eq!(msgs, vec![Message::Ping, Message::Pong]);
    }
}

#[test]
fn payload_shorter_than_the_fixed_part() {
    let cases = [
        (0x01u8, 43u32, "FRAME_REQUEST", 44),
        (0x01, 0, "FRAME_REQUEST", 44),
        (0x02, 23, "FRAME_RESPONSE", 24),
        (0x04, 27, "CONFIG_REQ", 28),
        (0xff, 259, "ERROR", 260),
        (0xff, 4, "ERROR", 260),
    ];
    for (t, size, name, min) in cases {
        let stream = cat(&[
            &header(t, 0, size),
            &vec![0xab; size as usize],
            &vectors::ping().bytes,
        ]);
        let out = decode_all(&stream);
        assert_eq!(
            out.errors,
            vec![format!(
                "payload_size {size} is below the {min} bytes a {name} needs, at stream offset 0"
            )]
        );
        assert_eq!(out.fatal, None);
        let msgs: Vec<_> = out.messages.into_iter().map(|(_, m)| m).collect();
        assert_eq!(msgs, vec![Message::Ping], "{name} {size}");
    }
}

#[test]
fn truncated_stream_names_message_and_offset() {
    let ping = vectors::ping().bytes;
    let req = vectors::frame_request_pixels().bytes; // 72 bytes
    let err = vectors::error().bytes;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            cat(&[&ping, &req[..5]]),
            "stream ended inside header at stream offset 12: 5 of 12 bytes received",
        ),
        (
            cat(&[&ping, &req[..30]]),
            "stream ended inside FRAME_REQUEST at stream offset 12: 30 of 72 bytes received",
        ),
        (
            cat(&[&ping, &req[..60]]),
            "stream ended inside FRAME_REQUEST at stream offset 12: 60 of 72 bytes received",
        ),
        (
            err[..100].to_vec(),
            "stream ended inside ERROR at stream offset 0: 100 of 272 bytes received",
        ),
        (
            vectors::enable_scanout().bytes[..15].to_vec(),
            "stream ended inside ENABLE_SCANOUT at stream offset 0: 15 of 20 bytes received",
        ),
        (
            // Trailing bytes of a CONFIG_REQ that announced 2 more.
            cat(&[&header(0x04, 0, 30), &[0; 28]]),
            "stream ended inside CONFIG_REQ at stream offset 0: 40 of 42 bytes received",
        ),
    ];
    for (bytes, text) in cases {
        // decode + finish
        let e = first_error(&bytes);
        assert_eq!(e.to_string(), text);
        assert!(e.is_fatal());
        assert!(matches!(e, ProtocolError::Truncated { .. }));
        // read_from at end of stream
        let out = read_all(&mut Decoder::default(), &mut Cursor::new(bytes.clone()));
        assert_eq!(out.fatal.as_deref(), Some(text));
    }
}

#[test]
fn bad_magic_names_what_was_found_and_where() {
    let stream = cat(&[
        &vectors::ping().bytes,
        &vectors::config_req().bytes, // 40 bytes: the bad header is at 52
        b"HTTP/1.1 200 OK\r\n",
    ]);
    let text = "bad magic 0x50545448 at stream offset 52 (expected 0x52465848, \"HXFR\"): \
                the peer does not speak HXFR or the stream lost sync";
    let out = decode_all(&stream);
    assert_eq!(out.messages.len(), 2);
    assert_eq!(out.fatal.as_deref(), Some(text));

    let mut dec = Decoder::default();
    let out = read_all(&mut dec, &mut Cursor::new(stream.clone()));
    assert_eq!(out.messages.len(), 2);
    assert_eq!(out.fatal.as_deref(), Some(text));
    // There is no resync: the error sticks, whatever comes next.
    let e = dec
        .read_from(&mut Cursor::new(vectors::ping().bytes))
        .unwrap_err();
    assert_eq!(e.to_string(), text);
    let mut input = &vectors::ping().bytes[..];
    assert_eq!(dec.decode(&mut input).unwrap_err().to_string(), text);
    assert_eq!(dec.finish().unwrap_err().to_string(), text);
    assert!(matches!(
        dec.finish().unwrap_err(),
        ProtocolError::BadMagic {
            found: 0x5054_5448,
            offset: 52
        }
    ));
}

#[test]
fn bad_magic_at_the_start_of_the_stream() {
    let e = first_error(b"GET / HTTP/1.1\r\n");
    assert!(e.is_fatal());
    assert!(e
        .to_string()
        .starts_with("bad magic 0x20544547 at stream offset 0 "));
}

/// A reader error other than a timeout is fatal; a timeout keeps state.
#[test]
fn io_errors_are_classified() {
    let timeout = ProtocolError::Io(std::io::ErrorKind::WouldBlock.into());
    assert!(timeout.is_timeout() && !timeout.is_fatal());
    let timeout = ProtocolError::Io(std::io::ErrorKind::TimedOut.into());
    assert!(timeout.is_timeout() && !timeout.is_fatal());
    let reset = ProtocolError::Io(std::io::ErrorKind::ConnectionReset.into());
    assert!(!reset.is_timeout() && reset.is_fatal());
    assert!(std::error::Error::source(&reset).is_some());
}

/// The payload limits are checked against the announced size before any
/// body byte arrives, whatever type it is.
#[test]
fn limits_apply_to_every_type_from_the_header_alone() {
    let limits = Limits {
        max_pixel_bytes: 100,
        max_response_bytes: 100,
        max_nal_count: 4,
        max_skip_bytes: 100,
        max_small_payload: 300,
    };
    for (t, _) in TYPES {
        let mut dec = Decoder::new(limits);
        let h = header(t, 1, 100_000);
        let mut input = &h[..];
        let (res, allocs) = measure(|| dec.decode(&mut input));
        assert!(
            matches!(res, Err(ProtocolError::PayloadTooLarge { .. })),
            "{}",
            msg_type::name(t)
        );
        assert_eq!(allocs.count, 0);
    }
}

/// The counting allocator sees allocations: the zero counts above mean
/// something.
#[test]
fn counting_allocator_counts() {
    let (v, allocs) = measure(|| vec![7u8; 5000]);
    assert_eq!(v.len(), 5000);
    assert_eq!(allocs.count, 1);
    assert_eq!(allocs.largest, 5000);
    let (_, allocs) = measure(|| {
        let mut v = Vec::with_capacity(10);
        v.extend_from_slice(&[1u8; 100]);
        v
    });
    assert_eq!(allocs.count, 2);
    assert!(allocs.largest >= 100);
}

/// A too-short payload of zero bytes leaves nothing to skip: the stream may
/// end right after it (found by `fuzz_property`).
#[test]
fn empty_payload_below_the_minimum_then_end_of_stream() {
    for t in [0x01u8, 0x02, 0x04, 0xff] {
        let h = header(t, 0, 0);
        let mut dec = Decoder::default();
        let mut input = &h[..];
        assert!(matches!(
            dec.decode(&mut input),
            Err(ProtocolError::PayloadTooSmall { .. })
        ));
        assert!(dec.is_idle());
        dec.finish().unwrap();
        let out = read_all(&mut Decoder::default(), &mut Cursor::new(h));
        assert_eq!(out.fatal, None);
        assert_eq!(out.errors.len(), 1);
    }
}
