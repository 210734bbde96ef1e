//! The decoder on a byte stream that arrives in arbitrary pieces: every
//! message split at every byte position, several messages in one buffer,
//! and readers that stop with `WouldBlock` at random points.

mod common;

use std::io::{self, Cursor, Read};

use common::vectors::{self, Vector};
use common::{decode_in_pieces, read_all, ChoppyReader, Rng};
use hxfr::{Decoder, FrameRequest, Header, Message, WireFormat};

fn expected(vs: &[Vector]) -> Vec<(Header, Message)> {
    vs.iter().map(|v| (v.header, v.message.clone())).collect()
}

fn concatenated(vs: &[Vector]) -> Vec<u8> {
    vs.iter().flat_map(|v| v.bytes.iter().copied()).collect()
}

#[test]
fn every_message_split_at_every_byte_position() {
    for v in vectors::all() {
        for cut in 0..=v.bytes.len() {
            let mut dec = Decoder::default();
            let mut got = Vec::new();
            for part in [&v.bytes[..cut], &v.bytes[cut..]] {
                let mut input = part;
                while !input.is_empty() {
                    if let Some(m) = dec.decode(&mut input).unwrap() {
                        got.push(m);
                    }
                }
                if got.is_empty() {
                    assert_eq!(dec.is_idle(), cut == 0, "{} cut at {cut}", v.name);
                }
            }
            assert_eq!(
                got,
                vec![(v.header, v.message.clone())],
                "{} cut at {cut}",
                v.name
            );
            assert!(dec.is_idle());
            assert_eq!(dec.stream_offset(), v.bytes.len() as u64);
            dec.finish().unwrap();
        }
    }
}

/// The same split through `read_from`: the first piece, then a
/// `WouldBlock`, then the rest. The partial message must survive the error.
#[test]
fn every_message_split_at_every_byte_position_via_read_from() {
    /// Serves `first`, fails once with `WouldBlock`, then serves `second`.
    struct TwoReads<'a> {
        first: &'a [u8],
        second: &'a [u8],
        blocked: bool,
    }
    impl Read for TwoReads<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.first.is_empty() && !self.blocked {
                self.blocked = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let part = if self.first.is_empty() {
                &mut self.second
            } else {
                &mut self.first
            };
            let n = buf.len().min(part.len());
            buf[..n].copy_from_slice(&part[..n]);
            *part = &part[n..];
            Ok(n)
        }
    }
    for v in vectors::all() {
        for cut in 0..=v.bytes.len() {
            let mut r = TwoReads {
                first: &v.bytes[..cut],
                second: &v.bytes[cut..],
                blocked: false,
            };
            let mut dec = Decoder::default();
            let out = read_all(&mut dec, &mut r);
            assert_eq!(out.fatal, None, "{} cut at {cut}", v.name);
            assert_eq!(
                out.messages,
                vec![(v.header, v.message.clone())],
                "{} cut at {cut}",
                v.name
            );
            assert_eq!(dec.stream_offset(), v.bytes.len() as u64);
        }
    }
}

#[test]
fn one_byte_at_a_time() {
    let vs = vectors::all();
    let stream = concatenated(&vs);
    let out = decode_in_pieces(&mut Decoder::default(), &stream, || 1);
    assert_eq!(out.fatal, None);
    assert!(out.errors.is_empty());
    assert_eq!(out.messages, expected(&vs));
}

#[test]
fn many_messages_in_one_buffer() {
    let vs = vectors::all();
    let stream = concatenated(&vs);
    let mut dec = Decoder::default();
    let mut input = &stream[..];
    let mut got = Vec::new();
    while let Some(m) = dec.decode(&mut input).unwrap() {
        got.push(m);
    }
    assert!(input.is_empty());
    assert_eq!(got, expected(&vs));
    assert_eq!(dec.stream_offset(), stream.len() as u64);
    dec.finish().unwrap();
}

/// Two messages in one buffer, the cut anywhere in the pair: covers a
/// message boundary inside a piece at every position.
#[test]
fn every_pair_of_messages_split_at_every_position() {
    let vs = vectors::all();
    for a in &vs {
        for b in &vs {
            let pair = concatenated(&[a.clone(), b.clone()]);
            let want = vec![(a.header, a.message.clone()), (b.header, b.message.clone())];
            for cut in 0..=pair.len() {
                let mut dec = Decoder::default();
                let mut got = Vec::new();
                for part in [&pair[..cut], &pair[cut..]] {
                    let mut input = part;
                    while !input.is_empty() {
                        if let Some(m) = dec.decode(&mut input).unwrap() {
                            got.push(m);
                        }
                    }
                }
                assert_eq!(got, want, "{} + {} cut at {cut}", a.name, b.name);
            }
        }
    }
}

#[test]
fn random_piece_sizes() {
    let vs = vectors::all();
    let stream = concatenated(&vs);
    for seed in 0..500 {
        let mut rng = Rng::new(seed);
        let max = 1 + rng.below(64);
        let out = decode_in_pieces(&mut Decoder::default(), &stream, || rng.range(1, max));
        assert_eq!(out.fatal, None, "seed {seed}");
        assert_eq!(out.messages, expected(&vs), "seed {seed}");
    }
}

#[test]
fn read_from_a_plain_reader() {
    let vs = vectors::all();
    let mut r = Cursor::new(concatenated(&vs));
    let mut dec = Decoder::default();
    let out = read_all(&mut dec, &mut r);
    assert_eq!(out.fatal, None);
    assert!(out.errors.is_empty());
    assert_eq!(out.messages, expected(&vs));
    // The end of the stream between messages is a clean end, every time.
    assert!(dec.read_from(&mut r).unwrap().is_none());
}

#[test]
fn read_from_with_would_block_at_random_points() {
    let vs = vectors::all();
    let stream = concatenated(&vs);
    let mut blocked = 0;
    for seed in 0..500 {
        let mut r = ChoppyReader::new(stream.clone(), seed, 1 + (seed as usize % 40));
        let mut dec = Decoder::default();
        let out = read_all(&mut dec, &mut r);
        assert_eq!(out.fatal, None, "seed {seed}");
        assert_eq!(out.messages, expected(&vs), "seed {seed}");
        blocked += r.would_blocks;
    }
    assert!(blocked > 1000, "the reader must actually block ({blocked})");
}

/// A large frame arriving in socket-sized pieces with stalls in between.
#[test]
fn large_frame_through_a_choppy_reader() {
    let (w, h) = (640u32, 360u32);
    let pixels: Vec<u8> = (0..(w * h * 3 / 2)).map(|i| (i % 251) as u8).collect();
    let req = FrameRequest {
        width: w,
        height: h,
        format: WireFormat::Nv12.fourcc(),
        stride: w,
        pts: 5,
        duration: 1,
        ..Default::default()
    };
    let mut wire = Vec::new();
    let (y, uv) = pixels.split_at((w * h) as usize);
    hxfr::write::write_frame_request(&mut wire, 1, &req, &[y, uv]).unwrap();
    wire.extend_from_slice(&vectors::ping().bytes);
    wire.extend_from_slice(&wire.clone());
    for seed in 0..20 {
        let mut r = ChoppyReader::new(wire.clone(), seed, 64 * 1024);
        let out = read_all(&mut Decoder::default(), &mut r);
        assert_eq!(out.fatal, None);
        assert_eq!(out.messages.len(), 4, "seed {seed}");
        for pair in out.messages.chunks(2) {
            assert_eq!(
                pair[0].1,
                Message::FrameRequest {
                    request: req,
                    pixels: Some(pixels.clone())
                }
            );
            assert_eq!(pair[1].1, Message::Ping);
        }
    }
}

/// `decode` and `read_from` can be mixed on one decoder: the state is the
/// same whichever fed the previous bytes.
#[test]
fn decode_and_read_from_share_state() {
    let vs = vectors::all();
    let stream = concatenated(&vs);
    for cut in (0..stream.len()).step_by(7) {
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        let mut input = &stream[..cut];
        while !input.is_empty() {
            if let Some(m) = dec.decode(&mut input).unwrap() {
                got.push(m);
            }
        }
        let mut r = Cursor::new(&stream[cut..]);
        let out = read_all(&mut dec, &mut r);
        assert_eq!(out.fatal, None, "cut at {cut}");
        got.extend(out.messages);
        assert_eq!(got, expected(&vs), "cut at {cut}");
    }
}
