//! The body of the `decode` fuzz target, kept free of libFuzzer so that the
//! protocol crate's test suite compiles and runs it too
//! (`protocol/tests/fuzz_harness.rs`): the fuzz target cannot rot unnoticed.
//!
//! Input layout: byte 0 picks the piece size for [`Decoder::decode`], byte 1
//! the read size and the `WouldBlock` rhythm of the reader given to
//! [`Decoder::read_from`]; the rest is the byte stream. Every input is
//! decoded twice: as a legacy peer sees it, and with the negotiated
//! extensions enabled ([`Decoder::decode_ext`], [`Decoder::read_from_ext`]).

use std::io::{self, Read};

use hxfr::decoder::Decoded;
use hxfr::{Decoder, Header, Limits, Message};

/// Limits small enough that the fuzzer reaches every boundary quickly.
pub const FUZZ_LIMITS: Limits = Limits {
    max_pixel_bytes: 4096,
    max_response_bytes: 2048,
    max_nal_count: 8,
    max_skip_bytes: 1024,
    max_small_payload: 512,
};

/// One thing the decoder said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Message(Decoded),
    /// A recoverable error, as its display text.
    Error(String),
    /// The error that ended the stream (display text), if any.
    End(Option<String>),
}

/// Runs one fuzz input; panics when the decoder misbehaves.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (control, stream) = data.split_at(2);
    for extensions in [false, true] {
        let piece = 1 + control[0] as usize;
        let by_slices = decode_in_pieces(stream, FUZZ_LIMITS, piece, extensions);
        let mut reader = Choppy {
            data: stream,
            max_read: 1 + (control[1] & 0x3f) as usize,
            block_every: 1 + (control[1] >> 6) as usize,
            reads: 0,
        };
        let by_reader = read_all(&mut reader, FUZZ_LIMITS, extensions);
        assert_eq!(
            by_slices, by_reader,
            "decode() and read_from() disagree on the same bytes (extensions: {extensions})"
        );
        for event in &by_slices {
            if let Event::Message(d) = event {
                check_decoded(d, &FUZZ_LIMITS, extensions);
            }
        }
    }
}

fn new_decoder(limits: Limits, extensions: bool) -> Decoder {
    if extensions {
        Decoder::with_extensions(limits)
    } else {
        Decoder::new(limits)
    }
}

/// Feeds `stream` through [`Decoder::decode`] (or [`Decoder::decode_ext`])
/// in `piece`-byte slices.
pub fn decode_in_pieces(
    stream: &[u8],
    limits: Limits,
    piece: usize,
    extensions: bool,
) -> Vec<Event> {
    let mut dec = new_decoder(limits, extensions);
    let mut events = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        let mut input = chunk;
        while !input.is_empty() {
            let res = if extensions {
                dec.decode_ext(&mut input)
            } else {
                dec.decode(&mut input)
                    .map(|m| m.map(|(h, m)| Decoded::Legacy(h, m)))
            };
            match res {
                Ok(Some(d)) => events.push(Event::Message(d)),
                Ok(None) => assert!(input.is_empty(), "Ok(None) with input left"),
                Err(e) if e.is_fatal() => {
                    events.push(Event::End(Some(e.to_string())));
                    return events;
                }
                Err(e) => {
                    assert!(!e.is_timeout());
                    events.push(Event::Error(e.to_string()));
                }
            }
            // Every message and every error stands for at least one header.
            assert!(
                events.len() <= stream.len() / hxfr::HEADER_LEN + 1,
                "decode() reports more events than the bytes can hold"
            );
        }
    }
    events.push(Event::End(dec.finish().err().map(|e| e.to_string())));
    events
}

/// Reads `r` to its end through [`Decoder::read_from`] (or
/// [`Decoder::read_from_ext`]), retrying `WouldBlock`.
pub fn read_all<R: Read>(r: &mut R, limits: Limits, extensions: bool) -> Vec<Event> {
    let mut dec = new_decoder(limits, extensions);
    let mut events = Vec::new();
    let mut stalls = 0u32;
    loop {
        let res = if extensions {
            dec.read_from_ext(r)
        } else {
            dec.read_from(r)
                .map(|m| m.map(|(h, m)| Decoded::Legacy(h, m)))
        };
        match res {
            Ok(Some(d)) => events.push(Event::Message(d)),
            Ok(None) => {
                events.push(Event::End(None));
                return events;
            }
            Err(e) if e.is_timeout() => {
                stalls += 1;
                assert!(stalls < 1_000_000, "read_from() makes no progress");
            }
            Err(e) if e.is_fatal() => {
                events.push(Event::End(Some(e.to_string())));
                return events;
            }
            Err(e) => events.push(Event::Error(e.to_string())),
        }
    }
}

/// Checks a decoded message against the limits; an extension message may
/// only appear when extensions are enabled.
pub fn check_decoded(d: &Decoded, l: &Limits, extensions: bool) {
    match d {
        Decoded::Legacy(h, m) => check_within_limits(h, m, l),
        Decoded::Ext(h, _) => {
            assert!(extensions, "extension message from a legacy decoder");
            let max = l.max_pixel_bytes as u64 + 4096;
            assert!(h.payload_size as u64 <= max.max(l.max_small_payload as u64));
        }
    }
}

/// A decoded message never carries more than the limits let through.
pub fn check_within_limits(h: &Header, m: &Message, l: &Limits) {
    match m {
        Message::FrameRequest { pixels, .. } => {
            let n = pixels.as_ref().map_or(0, Vec::len);
            assert!(n <= l.max_pixel_bytes as usize);
        }
        Message::FrameResponse(r) => {
            assert!(r.chunks.len() <= l.max_nal_count as usize);
            assert!(r.payload_size() <= l.max_response_bytes as usize);
            assert_eq!(r.payload_size(), h.payload_size as usize);
        }
        Message::ConfigResponse(p) => assert!(p.len() <= l.max_small_payload as usize),
        Message::Skipped { payload_size, .. } => assert!(*payload_size <= l.max_skip_bytes),
        _ => assert!(h.payload_size <= l.max_small_payload),
    }
}

/// A reader that returns at most `max_read` bytes per call and fails with
/// `WouldBlock` on every `block_every`-th call.
struct Choppy<'a> {
    data: &'a [u8],
    max_read: usize,
    block_every: usize,
    reads: usize,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.reads.is_multiple_of(self.block_every + 1) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.max_read).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
