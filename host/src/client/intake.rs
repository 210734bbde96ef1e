//! Reading a guest's messages with deadlines on progress, not just on
//! silence.
//!
//! The 12-byte header of each message is read here first, so that its size
//! is known before the body is: the reader decides about the message (a
//! client slot, memory from the budget) before anything is buffered, and
//! the message gets its deadline: once `floor` has passed since its first
//! byte, it must keep arriving at `min_rate` on average (so it is complete
//! by `floor + size / min_rate` at the latest). A guest trickling bytes
//! (one a second resets any idle timer) is closed soon after the floor,
//! whatever size it announced. The header is then handed, possibly rewritten (see
//! [`Intake::read`]), to the protocol decoder, which reads the body.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use hxfr::{Decoded, Decoder, Header, ProtocolError, HEADER_LEN};

/// The deadlines of messages.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// The least time any message is given.
    pub floor: Duration,
    /// Bytes per second a message must arrive at, at least.
    pub min_rate: u64,
}

impl Pace {
    /// Whether `received` bytes after `elapsed` are behind the pace.
    fn behind(&self, elapsed: Duration, received: u64) -> bool {
        let Some(over) = elapsed.checked_sub(self.floor) else {
            return false;
        };
        (received as f64) < over.as_secs_f64() * self.min_rate as f64
    }
}

/// A message that missed its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// Its size, when the header had arrived.
    pub size: Option<u64>,
    pub received: u64,
    pub elapsed: Duration,
    /// The floor.
    pub allowed: Duration,
}

pub struct Intake {
    decoder: Decoder,
    pace: Pace,
    head: [u8; HEADER_LEN],
    have: usize,
    /// When the current message's first byte came, its size once known,
    /// and the stream offset it started at.
    current: Option<(Instant, Option<u64>, u64)>,
}

impl Intake {
    pub fn new(decoder: Decoder, pace: Pace) -> Intake {
        Intake {
            decoder,
            pace,
            head: [0; HEADER_LEN],
            have: 0,
            current: None,
        }
    }

    /// Bytes consumed so far (as the decoder counts them).
    pub fn stream_offset(&self) -> u64 {
        self.decoder.stream_offset() + self.have as u64
    }

    /// The message in progress, if it has fallen behind its pace at `now`.
    pub fn late(&self, now: Instant) -> Option<Late> {
        let (start, size, from) = self.current?;
        let received = self.stream_offset() - from;
        let elapsed = now.saturating_duration_since(start);
        self.pace.behind(elapsed, received).then_some(Late {
            size,
            received,
            elapsed,
            allowed: self.pace.floor,
        })
    }

    /// Reads until one message is complete, like
    /// [`Decoder::read_from_ext`] (`Ok(None)`: the stream ended between
    /// messages; a timeout error keeps what was read). Each header is
    /// passed to `on_header` before its body is read; the decoder gets the
    /// header `on_header` returns, which may differ from the one received
    /// in ways that keep the framing (fewer flags, a type to be skipped).
    ///
    /// Returns within about `slice` even when bytes keep trickling in (as
    /// a timeout error), so that the caller can look at the deadlines.
    pub fn read<R: Read + ?Sized>(
        &mut self,
        src: &mut R,
        slice: Duration,
        mut on_header: impl FnMut(&Header) -> Header,
    ) -> Result<Option<Decoded>, ProtocolError> {
        let src = &mut Sliced {
            inner: src,
            until: Instant::now() + slice,
        };
        loop {
            if !self.decoder.is_idle() {
                let r = self.decoder.read_from_ext(src);
                if matches!(r, Ok(Some(_))) {
                    self.current = None;
                }
                return r;
            }
            let n = read_some(src, &mut self.head[self.have..])?;
            if n == 0 {
                if self.have == 0 {
                    return Ok(None);
                }
                // Let the decoder name the truncated message.
                let part = self.take_head();
                self.decoder.decode_ext(&mut &part[..])?;
                self.decoder.finish()?;
                return Ok(None);
            }
            if self.have == 0 {
                self.current = Some((Instant::now(), None, self.decoder.stream_offset()));
            }
            self.have += n;
            if self.have < HEADER_LEN {
                continue;
            }
            let raw = self.take_head();
            let arr: [u8; HEADER_LEN] = raw[..].try_into().expect("a full header");
            let bytes = match Header::parse(&arr) {
                Ok(h) => {
                    if let Some(c) = &mut self.current {
                        c.1 = Some(HEADER_LEN as u64 + h.payload_size as u64);
                    }
                    on_header(&h).to_bytes().to_vec()
                }
                // Bad magic: the decoder reports it (and stays failed).
                Err(_) => raw,
            };
            match self.decoder.decode_ext(&mut &bytes[..])? {
                Some(done) => {
                    self.current = None;
                    return Ok(Some(done));
                }
                None => continue,
            }
        }
    }

    fn take_head(&mut self) -> Vec<u8> {
        let v = self.head[..self.have].to_vec();
        self.have = 0;
        v
    }
}

/// A reader that reports a timeout once its time is up, even while bytes
/// keep coming: the decoder's reads of a body end then, keeping what they
/// got.
struct Sliced<'a, R: ?Sized> {
    inner: &'a mut R,
    until: Instant,
}

impl<R: Read + ?Sized> Read for Sliced<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.until {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.inner.read(buf)
    }
}

fn read_some<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hxfr::{FrameRequest, Limits, Message, WireFormat, FLAG_PIXELS};

    const PACE: Pace = Pace {
        floor: Duration::from_secs(2),
        min_rate: 1000,
    };

    fn frame(pts: i64) -> Vec<u8> {
        let req = FrameRequest {
            width: 2,
            height: 2,
            format: WireFormat::Bgra.fourcc(),
            stride: 8,
            pts,
            ..Default::default()
        };
        let mut v = req.encode_prefix(1, Some(16)).to_vec();
        v.extend_from_slice(&[7u8; 16]);
        v
    }

    #[test]
    fn a_message_is_behind_when_the_rate_owes_more_after_the_floor() {
        assert!(!PACE.behind(Duration::from_secs(2), 0));
        assert!(PACE.behind(Duration::from_secs(3), 999));
        assert!(!PACE.behind(Duration::from_secs(3), 1000));
    }

    #[test]
    fn messages_in_pieces_come_out_whole_and_headers_are_seen_first() {
        let mut bytes = frame(5);
        bytes.extend(Message::Ping.encode(3));
        bytes.extend(frame(6));
        let mut it = Intake::new(Decoder::with_extensions(Limits::default()), PACE);
        let mut seen = Vec::new();
        let mut out = Vec::new();
        // One byte per read: the worst split.
        let mut src = bytes
            .chunks(1)
            .map(|c| c.to_vec())
            .collect::<Vec<_>>()
            .into_iter();
        let mut reader = std::iter::from_fn(|| src.next()).flatten();
        struct ByteReader<'a, I: Iterator<Item = u8>>(&'a mut I);
        impl<I: Iterator<Item = u8>> Read for ByteReader<'_, I> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match self.0.next() {
                    Some(b) => {
                        buf[0] = b;
                        Ok(1)
                    }
                    None => Ok(0),
                }
            }
        }
        let mut r = ByteReader(&mut reader);
        while let Some(d) = it
            .read(&mut r, Duration::from_secs(60), |h| {
                seen.push(h.msg_type);
                *h
            })
            .unwrap()
        {
            out.push(d);
        }
        assert_eq!(seen, [0x01, 0x10, 0x01]);
        assert_eq!(out.len(), 3);
        assert_eq!(it.stream_offset(), bytes.len() as u64);
        assert!(it.late(Instant::now()).is_none());
    }

    #[test]
    fn a_header_without_its_pixel_flag_skips_the_pixels_unbuffered() {
        let mut bytes = frame(9);
        bytes.extend(frame(10));
        let mut it = Intake::new(Decoder::with_extensions(Limits::default()), PACE);
        let mut first = true;
        let mut r = &bytes[..];
        let d = it
            .read(&mut r, Duration::from_secs(60), |h| {
                let mut h = *h;
                if std::mem::take(&mut first) {
                    h.flags &= !FLAG_PIXELS;
                }
                h
            })
            .unwrap()
            .unwrap();
        match d {
            Decoded::Legacy(_, Message::FrameRequest { request, pixels }) => {
                assert_eq!((request.pts, pixels), (9, None));
            }
            other => panic!("{other:?}"),
        }
        // The stream stays in step: the next frame is whole.
        match it
            .read(&mut r, Duration::from_secs(60), |h| *h)
            .unwrap()
            .unwrap()
        {
            Decoded::Legacy(_, Message::FrameRequest { request, pixels }) => {
                assert_eq!((request.pts, pixels.map(|p| p.len())), (10, Some(16)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_trickled_message_is_late_after_its_allowance() {
        let bytes = frame(1);
        let mut it = Intake::new(Decoder::with_extensions(Limits::default()), PACE);
        let mut r = &bytes[..20];
        // The header and a few body bytes; then nothing.
        // The slice ends mid-message: a truncation error, the message
        // still in progress.
        assert!(it.read(&mut r, Duration::from_secs(60), |h| *h).is_err());
        let t = Instant::now() + Duration::from_secs(3);
        let late = it.late(t).expect("behind its pace 1 s after the 2 s floor");
        assert_eq!(late.size, Some(bytes.len() as u64));
        assert_eq!(late.received, 20);
        assert!(it.late(Instant::now()).is_none());
    }
}
