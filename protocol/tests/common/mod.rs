//! Helpers shared by the protocol test binaries: hex literals, a seeded
//! PRNG, readers that misbehave on purpose, and the hand-assembled test
//! vectors.
#![allow(dead_code)] // each test binary uses a different subset

pub mod vectors;

use std::io::{self, Read};

use hxfr::{Decoder, Header, Message, ProtocolError};

/// Parses whitespace-separated hex bytes; `#` starts a comment that runs to
/// the end of the line. Panics on anything else, so a typo in a vector
/// fails loudly instead of silently changing it.
pub fn hex(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split('#').next().unwrap();
        for tok in code.split_whitespace() {
            assert!(
                tok.len().is_multiple_of(2),
                "hex token {tok:?} has an odd number of digits"
            );
            for i in (0..tok.len()).step_by(2) {
                let byte = u8::from_str_radix(&tok[i..i + 2], 16)
                    .unwrap_or_else(|_| panic!("bad hex token {tok:?}"));
                out.push(byte);
            }
        }
    }
    out
}

/// `n` zero bytes (the NUL padding of an ERROR text, reserved fields).
pub fn zeros(n: usize) -> Vec<u8> {
    vec![0; n]
}

/// Concatenates byte strings.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// SplitMix64: small, seeded, and good enough to drive test inputs. Every
/// failure prints its seed so it can be replayed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        (self.next_u32() % den) < num
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A reader over `data` that hands out random small pieces and, at random
/// points, fails with `WouldBlock` or `Interrupted` instead of reading,
/// the way a non-blocking or timed-out socket does.
pub struct ChoppyReader {
    data: Vec<u8>,
    pos: usize,
    rng: Rng,
    max_piece: usize,
    /// How many reads failed with `WouldBlock`.
    pub would_blocks: usize,
}

impl ChoppyReader {
    pub fn new(data: Vec<u8>, seed: u64, max_piece: usize) -> Self {
        ChoppyReader {
            data,
            pos: 0,
            rng: Rng::new(seed),
            max_piece: max_piece.max(1),
            would_blocks: 0,
        }
    }
}

impl Read for ChoppyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.rng.below(8) {
            0 => {
                self.would_blocks += 1;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            1 => return Err(io::ErrorKind::Interrupted.into()),
            _ => {}
        }
        let left = self.data.len() - self.pos;
        let n = buf.len().min(left).min(self.rng.range(1, self.max_piece));
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Everything the decoder said about a stream, in order.
#[derive(Debug, Default)]
pub struct Outcome {
    pub messages: Vec<(Header, Message)>,
    /// Display texts of the non-fatal errors.
    pub errors: Vec<String>,
    /// The fatal error that ended decoding, if any.
    pub fatal: Option<String>,
}

/// Feeds `data` to `dec` through [`Decoder::decode`] in pieces whose sizes
/// come from `piece`, then calls [`Decoder::finish`].
pub fn decode_in_pieces(
    dec: &mut Decoder,
    data: &[u8],
    mut piece: impl FnMut() -> usize,
) -> Outcome {
    let mut out = Outcome::default();
    let mut rest = data;
    'feed: while !rest.is_empty() {
        let n = piece().clamp(1, rest.len());
        let mut input = &rest[..n];
        rest = &rest[n..];
        while !input.is_empty() {
            match dec.decode(&mut input) {
                Ok(Some(m)) => out.messages.push(m),
                Ok(None) => assert!(input.is_empty(), "Ok(None) with input left"),
                Err(e) if e.is_fatal() => {
                    out.fatal = Some(e.to_string());
                    break 'feed;
                }
                Err(e) => out.errors.push(e.to_string()),
            }
        }
    }
    if out.fatal.is_none() {
        if let Err(e) = dec.finish() {
            out.fatal = Some(e.to_string());
        }
    }
    out
}

/// Decodes all of `data` in one call sequence.
pub fn decode_all(data: &[u8]) -> Outcome {
    decode_in_pieces(&mut Decoder::default(), data, || usize::MAX)
}

/// Reads messages with [`Decoder::read_from`] until the end of the stream
/// or a fatal error, retrying after `WouldBlock`/`Interrupted`.
pub fn read_all<R: Read>(dec: &mut Decoder, r: &mut R) -> Outcome {
    let mut out = Outcome::default();
    // A decoder that stops making progress would loop forever here; the
    // bound turns that into a failure.
    for _ in 0..10_000_000 {
        match dec.read_from(r) {
            Ok(Some(m)) => out.messages.push(m),
            Ok(None) => return out,
            Err(e) if e.is_timeout() => {}
            Err(e) if e.is_fatal() => {
                out.fatal = Some(e.to_string());
                return out;
            }
            Err(e) => out.errors.push(e.to_string()),
        }
    }
    panic!("read_from made no progress");
}

/// The single message `bytes` decodes to, checking that every byte was
/// consumed and the decoder ends between messages.
pub fn decode_one(bytes: &[u8]) -> (Header, Message) {
    let mut dec = Decoder::default();
    let mut input = bytes;
    let got = dec
        .decode(&mut input)
        .unwrap_or_else(|e| panic!("decode failed: {e}"))
        .expect("a complete message");
    assert!(input.is_empty(), "{} bytes left unconsumed", input.len());
    assert!(dec.is_idle());
    assert_eq!(dec.stream_offset(), bytes.len() as u64);
    dec.finish().unwrap();
    got
}

/// The error `bytes` produces on a fresh decoder fed all at once.
pub fn first_error(bytes: &[u8]) -> ProtocolError {
    let mut dec = Decoder::default();
    let mut input = bytes;
    loop {
        match dec.decode(&mut input) {
            Err(e) => return e,
            Ok(Some(_)) => continue,
            Ok(None) => {
                return dec
                    .finish()
                    .expect_err("the bytes decoded without an error")
            }
        }
    }
}
