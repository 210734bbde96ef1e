//! A fuzz-style property test: thousands of random, mutated and truncated
//! byte streams fed in random pieces, through `decode` and `read_from`.
//! The decoder must never panic, both paths must agree, and (measured by a
//! counting global allocator) no single allocation made while decoding may
//! exceed what the configured limits allow. Small limits make the bound
//! sharp: a decoder that trusted an announced size would blow through it.
//!
//! Seeds are fixed, so a failure replays; the failing seed is in the panic
//! message. The `cargo fuzz` target in `protocol/fuzz` explores the same
//! property without end; its body (`protocol/fuzz/src/lib.rs`) is compiled
//! and run here too.

mod common;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "../fuzz/src/lib.rs"]
mod harness;

use common::{ChoppyReader, Rng};
use counting_alloc::measure;
use harness::FUZZ_LIMITS;
use hxfr::decoder::Decoded;
use hxfr::message::ERROR_FIXED;
use hxfr::{
    ConfigRequest, Decoder, ErrorMessage, FrameRequest, FrameResponse, Header, Limits, Message,
};

const STREAMS: u64 = 4000;

/// The largest single allocation decoding may make under `l`: the variable
/// tail of one message (pixels, NAL chunks, CONFIG_RESP), the fixed-part
/// buffer, or the table of NAL chunks.
fn allocation_bound(l: &Limits) -> usize {
    [
        l.max_pixel_bytes as usize,
        l.max_response_bytes as usize,
        l.max_small_payload as usize,
        ERROR_FIXED,
        l.max_nal_count as usize * std::mem::size_of::<Vec<u8>>(),
    ]
    .into_iter()
    .max()
    .unwrap()
}

/// A size near one of the limits, or anywhere.
fn interesting_size(rng: &mut Rng, l: &Limits) -> usize {
    let near = [
        0,
        l.max_pixel_bytes,
        l.max_response_bytes,
        l.max_small_payload,
        l.max_skip_bytes,
    ][rng.below(5)] as usize;
    match rng.below(4) {
        0 => rng.below(64),
        1 => rng.below(3 * near.max(1)),
        _ => (near + rng.below(5)).saturating_sub(2),
    }
}

fn random_message(rng: &mut Rng, l: &Limits) -> Message {
    match rng.below(12) {
        0..=2 => {
            let n = interesting_size(rng, l).min(8192);
            Message::FrameRequest {
                request: FrameRequest {
                    width: rng.range(0, 64) as u32,
                    height: rng.range(0, 64) as u32,
                    format: rng.next_u32(),
                    stride: rng.range(0, 300) as u32,
                    pts: rng.next_u64() as i64,
                    duration: rng.next_u64() as i64,
                    force_keyframe: rng.chance(1, 2),
                    resource_id: rng.next_u32(),
                },
                pixels: rng.chance(3, 4).then(|| rng.bytes(n)),
            }
        }
        3..=5 => {
            // A total near a limit, spread over a count near the limit.
            let count = rng.below(l.max_nal_count as usize + 3);
            let budget = interesting_size(rng, l).min(4096);
            let chunks = (0..count)
                .map(|_| {
                    let n = rng.below(budget / count.max(1) + 1);
                    rng.bytes(n)
                })
                .collect();
            Message::FrameResponse(FrameResponse {
                pts: rng.next_u64() as i64,
                dts: rng.next_u64() as i64,
                is_keyframe: rng.chance(1, 2),
                chunks,
            })
        }
        6 => Message::ConfigRequest(ConfigRequest {
            width: rng.next_u32(),
            bitrate: rng.next_u32(),
            profile: 100,
            ..Default::default()
        }),
        7 => Message::Error(ErrorMessage::new(rng.next_u32() as i32, "encode failed")),
        8 => Message::ConfigResponse({
            let n = interesting_size(rng, l).min(4096);
            rng.bytes(n)
        }),
        9 => Message::Skipped {
            msg_type: [0x20, 0x21, 0x22, 0x30, 0x31, 0x77][rng.below(6)],
            payload_size: interesting_size(rng, l).min(4096) as u32,
        },
        10 => Message::Ping,
        _ => [Message::Pong, Message::KeyframeRequest][rng.below(2)].clone(),
    }
}

/// An extension message (types 0x40..=0x46, see `hxfr::ext`): DRAIN and
/// DRAIN_DONE encoded properly, the others as a header with a payload of
/// random bytes around their fixed size, so the extension body decoders see
/// both sense and nonsense.
fn random_extension_message(rng: &mut Rng) -> Vec<u8> {
    use hxfr::ext::{self, ExtMessage};
    match rng.below(4) {
        0 => ExtMessage::Drain {
            token: rng.next_u64(),
        }
        .encode(1),
        1 => ExtMessage::DrainDone {
            token: rng.next_u64(),
        }
        .encode(1),
        _ => {
            let (t, fixed) = [
                (ext::ext_type::HELLO, ext::HELLO_FIXED),
                (ext::ext_type::HELLO_ACK, ext::HELLO_ACK_FIXED),
                (ext::ext_type::COMPACT_FRAME, ext::COMPACT_FIXED),
                (ext::ext_type::ERROR_PTS, ext::ERROR_PTS_FIXED),
                (ext::ext_type::FRAME_CHECKSUM, ext::FRAME_CHECKSUM_FIXED),
            ][rng.below(5)];
            let n = (fixed + rng.below(200)).saturating_sub(4);
            let mut out = Header::new(t, 0, 1, n as u32).to_bytes().to_vec();
            out.extend(rng.bytes(n));
            out
        }
    }
}

/// Bends a valid stream into a broken one.
fn mutate(rng: &mut Rng, stream: &mut Vec<u8>, l: &Limits) {
    for _ in 0..rng.range(1, 4) {
        if stream.is_empty() {
            stream.extend(rng.bytes(20));
        }
        let at = rng.below(stream.len());
        match rng.below(8) {
            // Flip a few bits.
            0 => {
                for _ in 0..rng.range(1, 8) {
                    let i = rng.below(stream.len());
                    stream[i] ^= 1 << rng.below(8);
                }
            }
            // Overwrite a 32-bit field (a size, a count) with a telling value.
            1 | 2 => {
                let v: u32 = match rng.below(6) {
                    0 => u32::MAX,
                    1 => l.max_pixel_bytes + 45,
                    2 => l.max_nal_count + 1,
                    3 => l.max_response_bytes,
                    4 => rng.below(100) as u32,
                    _ => rng.next_u32(),
                };
                if at + 4 <= stream.len() {
                    stream[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            // Truncate.
            3 => stream.truncate(at),
            // Insert junk.
            4 => {
                let n = rng.range(1, 16);
                let junk = rng.bytes(n);
                stream.splice(at..at, junk);
            }
            // Remove a stretch.
            5 => {
                let end = (at + rng.range(1, 32)).min(stream.len());
                stream.drain(at..end);
            }
            // Change a message type byte (or any byte) to another type.
            6 => stream[at] = [0x01, 0x02, 0x04, 0x05, 0xff, 0x20, 0x42][rng.below(7)],
            // Throw it all away: random bytes, sometimes behind a magic.
            _ => {
                let n = rng.below(300);
                *stream = rng.bytes(n);
                if rng.chance(1, 2) {
                    stream.splice(0..0, *b"HXFR");
                }
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Event {
    Message(Decoded),
    Error(String),
    End(Option<String>),
}

fn new_decoder(l: Limits, extensions: bool) -> Decoder {
    if extensions {
        Decoder::with_extensions(l)
    } else {
        Decoder::new(l)
    }
}

/// Feeds `stream` to `decode` (or `decode_ext`) in random pieces, measuring
/// every call.
fn decode_measured(
    stream: &[u8],
    l: Limits,
    ext: bool,
    rng: &mut Rng,
    largest: &mut usize,
) -> Vec<Event> {
    let mut dec = new_decoder(l, ext);
    let mut events = Vec::new();
    let max_piece = [1, 7, 64, 1000, usize::MAX][rng.below(5)];
    let mut rest = stream;
    while !rest.is_empty() {
        let n = rng.range(1, max_piece.min(rest.len()));
        let mut input = &rest[..n];
        rest = &rest[n..];
        while !input.is_empty() {
            let (res, a) = measure(|| match ext {
                true => dec.decode_ext(&mut input),
                false => dec
                    .decode(&mut input)
                    .map(|m| m.map(|(h, m)| Decoded::Legacy(h, m))),
            });
            *largest = (*largest).max(a.largest);
            match res {
                Ok(Some(d)) => events.push(Event::Message(d)),
                Ok(None) => assert!(input.is_empty()),
                Err(e) if e.is_fatal() => {
                    events.push(Event::End(Some(e.to_string())));
                    return events;
                }
                Err(e) => events.push(Event::Error(e.to_string())),
            }
        }
    }
    events.push(Event::End(dec.finish().err().map(|e| e.to_string())));
    events
}

/// Reads `stream` through `read_from` (or `read_from_ext`) from a reader
/// that blocks and interrupts at random, measuring every call.
fn read_measured(
    stream: &[u8],
    l: Limits,
    ext: bool,
    seed: u64,
    largest: &mut usize,
) -> Vec<Event> {
    let mut dec = new_decoder(l, ext);
    let mut r = ChoppyReader::new(stream.to_vec(), seed, 1 + (seed as usize % 700));
    let mut events = Vec::new();
    for _ in 0..10_000_000 {
        let (res, a) = measure(|| match ext {
            true => dec.read_from_ext(&mut r),
            false => dec
                .read_from(&mut r)
                .map(|m| m.map(|(h, m)| Decoded::Legacy(h, m))),
        });
        *largest = (*largest).max(a.largest);
        match res {
            Ok(Some(d)) => events.push(Event::Message(d)),
            Ok(None) => {
                events.push(Event::End(None));
                return events;
            }
            Err(e) if e.is_timeout() => {}
            Err(e) if e.is_fatal() => {
                events.push(Event::End(Some(e.to_string())));
                return events;
            }
            Err(e) => events.push(Event::Error(e.to_string())),
        }
    }
    panic!("read_from made no progress");
}

/// Runs one stream through both paths, as a legacy peer and with the
/// extensions enabled, and checks every property.
fn check_stream(stream: &[u8], l: Limits, rng: &mut Rng, seed: u64) -> usize {
    let bound = allocation_bound(&l);
    let mut largest = 0;
    for ext in [false, true] {
        let by_slices = decode_measured(stream, l, ext, rng, &mut largest);
        let by_reader = read_measured(stream, l, ext, seed, &mut largest);
        assert!(
            largest <= bound,
            "seed {seed} (extensions: {ext}): an allocation of {largest} bytes exceeds the bound {bound} set by {l:?}"
        );
        assert_eq!(
            by_slices, by_reader,
            "seed {seed} (extensions: {ext}): decode and read_from disagree"
        );
        for e in &by_slices {
            if let Event::Message(d) = e {
                harness::check_decoded(d, &l, ext);
            }
        }
    }
    largest
}

#[test]
fn random_and_mutated_streams_never_panic_or_overallocate() {
    let l = FUZZ_LIMITS;
    let mut largest_seen = 0;
    let mut messages_decoded = 0usize;
    let mut ext_decoded = 0usize;
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 0..STREAMS {
        let mut rng = Rng::new(seed);
        let mut stream = Vec::new();
        for _ in 0..rng.range(1, 12) {
            if rng.chance(1, 6) {
                stream.extend(random_extension_message(&mut rng));
            } else {
                stream.extend(random_message(&mut rng, &l).encode(1));
            }
        }
        if seed % 5 != 0 {
            mutate(&mut rng, &mut stream, &l);
        }
        largest_seen = largest_seen.max(check_stream(&stream, l, &mut rng, seed));
        let out = decode_measured(&stream, l, true, &mut rng, &mut 0);
        for e in &out {
            match e {
                Event::Message(d) => {
                    messages_decoded += 1;
                    ext_decoded += matches!(d, Decoded::Ext(..)) as usize;
                    kinds.insert(format!("message {:#04x}", d.header().msg_type));
                }
                Event::Error(t) | Event::End(Some(t)) => {
                    kinds.insert(t.split(" at ").next().unwrap().chars().take(24).collect());
                }
                Event::End(None) => {}
            }
        }
        // The libFuzzer target's body, with its own piece sizes.
        let mut input = vec![seed as u8, (seed >> 8) as u8];
        input.extend_from_slice(&stream);
        harness::run(&input);
    }
    // The property is only as good as the streams: make sure they reached
    // the interesting places.
    assert!(
        largest_seen > allocation_bound(&l) / 2,
        "no stream came near the limits ({largest_seen})"
    );
    assert!(messages_decoded > 5000, "{messages_decoded}");
    assert!(ext_decoded > 300, "{ext_decoded} extension messages");
    for needle in [
        "payload_size",
        "nal_count",
        "malformed FRAME_RESPONSE",
        "bad magic",
        "stream ended inside",
    ] {
        assert!(
            kinds.iter().any(|k| k.starts_with(needle)),
            "no stream produced {needle:?}: {kinds:?}"
        );
    }
}

/// Pure noise, with and without a leading magic, in every piece size.
#[test]
fn pure_noise_never_panics() {
    let l = FUZZ_LIMITS;
    for seed in 0..2000 {
        let mut rng = Rng::new(seed ^ 0xdead_beef);
        let n = rng.below(2000);
        let mut stream = rng.bytes(n);
        if seed % 2 == 0 {
            // A valid header in front of noise reaches the body decoders.
            let t = [0x01, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11, 0xff, 0x20][rng.below(9)];
            let size = rng.below(stream.len() + 1) as u32;
            let h = Header::new(t, rng.below(2) as u8, 1, size).to_bytes();
            stream.splice(0..0, h);
        }
        check_stream(&stream, l, &mut rng, seed);
    }
}

/// With the default limits, claims of every size up to 4 GiB in a short
/// stream never allocate more than the 64 MiB limit (and only that much
/// when a claim is under the limit).
#[test]
fn default_limits_bound_allocations_too() {
    let l = Limits::default();
    let mut rng = Rng::new(42);
    for _ in 0..300 {
        let t = [0x01, 0x02, 0x05, 0xff, 0x10, 0x30][rng.below(6)];
        let size = match rng.below(3) {
            0 => u32::MAX - rng.below(1000) as u32,
            1 => l.max_pixel_bytes + rng.below(100) as u32,
            _ => rng.next_u32(),
        };
        let mut stream = Header::new(t, 1, 1, size).to_bytes().to_vec();
        let n = rng.below(500);
        stream.extend(rng.bytes(n));
        check_stream(&stream, l, &mut rng, 0);
    }
}
