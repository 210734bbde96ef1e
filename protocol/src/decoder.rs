//! Incremental decoding of an HXFR byte stream.
//!
//! The decoder is a small state machine (header, fixed part, variable tail,
//! skip) fed either with slices ([`Decoder::decode`]) or straight from a
//! reader ([`Decoder::read_from`]). Bytes may arrive in any pieces: a message
//! split across reads, several messages in one read. Every announced size is
//! checked against [`Limits`] before anything is reserved, and the variable
//! tail (pixels, NAL chunks) is read into one buffer of exactly the announced
//! size, so a multi-megabyte frame is copied from the socket once.
//!
//! After a recoverable error ([`ProtocolError::is_fatal`] is false) the
//! decoder has consumed or will skip exactly that message's bytes and carries
//! on with the next one. After a fatal one it keeps returning that error.
//!
//! Extension messages ([`crate::ext`]) are decoded only after
//! [`Decoder::set_extensions`]; use [`Decoder::decode_ext`] /
//! [`Decoder::read_from_ext`] to receive them. Without it, and through the
//! legacy [`Decoder::decode`] / [`Decoder::read_from`], they come out as
//! [`Message::Skipped`], exactly as a legacy peer sees them.

use std::io::{self, Read};

use crate::error::ProtocolError;
use crate::ext::{self, ext_type, ExtMessage};
use crate::header::{msg_type, Header, FLAG_PIXELS, HEADER_LEN};
use crate::limits::Limits;
use crate::message::{
    get_i64, get_u32, ConfigRequest, ErrorMessage, FrameRequest, FrameResponse, Message,
    CONFIG_REQ_FIXED, ERROR_FIXED, FRAME_REQUEST_FIXED, FRAME_RESPONSE_FIXED,
};

enum Phase {
    Header,
    /// Reading the fixed part into `fixed`, then the tail into `tail`.
    Body {
        header: Header,
        fixed_len: usize,
        tail_len: usize,
        /// Trailing bytes the message does not keep, skipped afterwards.
        skip_after: u64,
    },
    /// Discarding `left` bytes of a `msg_type` message; then `emit` (if
    /// any) is returned.
    Skip {
        msg_type: u8,
        left: u64,
        emit: Option<Decoded>,
    },
    /// A fatal error happened; it is reported again on every call.
    Failed {
        found: u32,
        offset: u64,
    },
}

/// A message decoded by [`Decoder::decode_ext`] or [`Decoder::read_from_ext`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A legacy message (or `Skipped` for a type nobody here handles).
    Legacy(Header, Message),
    /// An extension message; only produced when extensions are enabled.
    Ext(Header, ExtMessage),
}

impl Decoded {
    pub fn header(&self) -> &Header {
        match self {
            Decoded::Legacy(h, _) | Decoded::Ext(h, _) => h,
        }
    }

    /// What a caller of the legacy API sees: an extension message becomes
    /// `Skipped`.
    pub fn into_legacy(self) -> (Header, Message) {
        match self {
            Decoded::Legacy(h, m) => (h, m),
            Decoded::Ext(h, _) => (
                h,
                Message::Skipped {
                    msg_type: h.msg_type,
                    payload_size: h.payload_size,
                },
            ),
        }
    }
}

/// Decodes a stream of HXFR messages. See the module documentation.
pub struct Decoder {
    limits: Limits,
    /// Whether extension types are decoded (else skipped like a legacy peer).
    extensions: bool,
    phase: Phase,
    head: [u8; HEADER_LEN],
    head_len: usize,
    fixed: Vec<u8>,
    tail: Vec<u8>,
    /// Stream offset of the next byte to consume.
    offset: u64,
    /// Stream offset of the header of the message being decoded.
    msg_start: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            extensions: false,
            phase: Phase::Header,
            head: [0; HEADER_LEN],
            head_len: 0,
            fixed: Vec::with_capacity(ERROR_FIXED),
            tail: Vec::new(),
            offset: 0,
            msg_start: 0,
        }
    }

    /// A decoder that also decodes extension messages.
    pub fn with_extensions(limits: Limits) -> Self {
        let mut d = Decoder::new(limits);
        d.extensions = true;
        d
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether extension messages (type codes `0x40..=0x48`) are decoded.
    /// Takes effect from the next message header on.
    pub fn set_extensions(&mut self, enabled: bool) {
        self.extensions = enabled;
    }

    pub fn extensions(&self) -> bool {
        self.extensions
    }

    /// Total bytes consumed so far.
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    /// Whether the decoder sits between two messages.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Header) && self.head_len == 0
    }

    /// Consumes bytes from the front of `input` until one message is
    /// complete (returned) or `input` is used up (`Ok(None)`).
    pub fn decode(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<(Header, Message)>, ProtocolError> {
        Ok(self.decode_ext(input)?.map(Decoded::into_legacy))
    }

    /// Like [`Decoder::decode`], but hands out extension messages as
    /// [`Decoded::Ext`] (when enabled).
    pub fn decode_ext(&mut self, input: &mut &[u8]) -> Result<Option<Decoded>, ProtocolError> {
        loop {
            match &mut self.phase {
                Phase::Failed { found, offset } => {
                    return Err(ProtocolError::BadMagic {
                        found: *found,
                        offset: *offset,
                    })
                }
                Phase::Header => {
                    let n = take_into(&mut self.head[self.head_len..], input);
                    self.head_len += n;
                    self.offset += n as u64;
                    if self.head_len < HEADER_LEN {
                        return Ok(None);
                    }
                    self.start_message()?;
                }
                Phase::Body {
                    fixed_len,
                    tail_len,
                    ..
                } => {
                    let (fixed_len, tail_len) = (*fixed_len, *tail_len);
                    let n = extend_from(&mut self.fixed, fixed_len, input);
                    let m = extend_from(&mut self.tail, tail_len, input);
                    self.offset += (n + m) as u64;
                    if self.fixed.len() < fixed_len || self.tail.len() < tail_len {
                        return Ok(None);
                    }
                    if let Some(done) = self.finish_body()? {
                        return Ok(Some(done));
                    }
                }
                Phase::Skip { left, .. } => {
                    let n = (*left).min(input.len() as u64) as usize;
                    *left -= n as u64;
                    *input = &input[n..];
                    self.offset += n as u64;
                    if let Some(done) = self.finish_skip() {
                        return Ok(Some(done));
                    }
                    if !matches!(self.phase, Phase::Header) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Tells the decoder the stream has ended: an error if a message was cut
    /// short.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match &self.phase {
            Phase::Header if self.head_len == 0 => Ok(()),
            Phase::Failed { found, offset } => Err(ProtocolError::BadMagic {
                found: *found,
                offset: *offset,
            }),
            _ => Err(self.truncated()),
        }
    }

    /// Reads from `r` until one message is complete. `Ok(None)` means the
    /// stream ended cleanly between messages. A `WouldBlock`/`TimedOut` read
    /// error is returned as [`ProtocolError::Io`] with the partial message
    /// kept: call again to continue.
    pub fn read_from<R: Read + ?Sized>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<(Header, Message)>, ProtocolError> {
        Ok(self.read_from_ext(r)?.map(Decoded::into_legacy))
    }

    /// Like [`Decoder::read_from`], but hands out extension messages as
    /// [`Decoded::Ext`] (when enabled).
    pub fn read_from_ext<R: Read + ?Sized>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Decoded>, ProtocolError> {
        loop {
            match &mut self.phase {
                Phase::Failed { .. } => return self.finish().map(|_| None),
                Phase::Header => {
                    let n = read_some(r, &mut self.head[self.head_len..])?;
                    if n == 0 {
                        return match self.head_len {
                            0 => Ok(None),
                            _ => Err(self.truncated()),
                        };
                    }
                    self.head_len += n;
                    self.offset += n as u64;
                    if self.head_len == HEADER_LEN {
                        self.start_message()?;
                    }
                }
                Phase::Body {
                    fixed_len,
                    tail_len,
                    ..
                } => {
                    let (fixed_len, tail_len) = (*fixed_len, *tail_len);
                    let buf = if self.fixed.len() < fixed_len {
                        (&mut self.fixed, fixed_len)
                    } else {
                        (&mut self.tail, tail_len)
                    };
                    let (vec, want) = buf;
                    if vec.len() < want {
                        let before = vec.len();
                        let res = r.take((want - before) as u64).read_to_end(vec);
                        let got = vec.len() - before;
                        self.offset += got as u64;
                        match res {
                            Ok(_) if vec.len() < want => return Err(self.truncated()),
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(ProtocolError::Io(e)),
                        }
                    }
                    if self.fixed.len() == fixed_len && self.tail.len() == tail_len {
                        if let Some(done) = self.finish_body()? {
                            return Ok(Some(done));
                        }
                    }
                }
                Phase::Skip { left, .. } => {
                    let mut scratch = [0u8; 16 * 1024];
                    let want = (*left).min(scratch.len() as u64) as usize;
                    if want > 0 {
                        let n = read_some(r, &mut scratch[..want])?;
                        if n == 0 {
                            return Err(self.truncated());
                        }
                        if let Phase::Skip { left, .. } = &mut self.phase {
                            *left -= n as u64;
                        }
                        self.offset += n as u64;
                    }
                    if let Some(done) = self.finish_skip() {
                        return Ok(Some(done));
                    }
                }
            }
        }
    }

    /// A complete header is in `head`: validate it and pick the next phase.
    fn start_message(&mut self) -> Result<(), ProtocolError> {
        self.head_len = 0;
        let header = match Header::parse(&self.head) {
            Ok(h) => h,
            Err(found) => {
                let offset = self.offset - HEADER_LEN as u64;
                self.phase = Phase::Failed { found, offset };
                return Err(ProtocolError::BadMagic { found, offset });
            }
        };
        self.msg_start = self.offset - HEADER_LEN as u64;
        let size = header.payload_size;
        let l = self.limits;
        let (min, max, fixed) = match header.msg_type {
            msg_type::FRAME_REQUEST => (
                FRAME_REQUEST_FIXED,
                FRAME_REQUEST_FIXED as u64 + l.max_pixel_bytes as u64,
                FRAME_REQUEST_FIXED,
            ),
            msg_type::FRAME_RESPONSE => (
                FRAME_RESPONSE_FIXED,
                l.max_response_bytes as u64,
                FRAME_RESPONSE_FIXED,
            ),
            msg_type::CONFIG_REQ => (
                CONFIG_REQ_FIXED,
                l.max_small_payload as u64,
                CONFIG_REQ_FIXED,
            ),
            msg_type::ERROR => (ERROR_FIXED, l.max_small_payload as u64, ERROR_FIXED),
            msg_type::CONFIG_RESP => (0, l.max_small_payload as u64, 0),
            msg_type::PING | msg_type::PONG | msg_type::KEYFRAME_REQ => {
                (0, l.max_small_payload as u64, 0)
            }
            t if self.decodes_ext(t) => {
                let (fixed, _) = ext::fixed_part(t).expect("known extension type");
                let max = match t {
                    ext_type::COMPACT_FRAME => fixed as u64 + l.max_pixel_bytes as u64,
                    _ => l.max_small_payload as u64,
                };
                (fixed, max, fixed)
            }
            _ => (0, l.max_skip_bytes as u64, 0),
        };
        if size as u64 > max {
            self.phase = Phase::Skip {
                msg_type: header.msg_type,
                left: size as u64,
                emit: None,
            };
            return Err(ProtocolError::PayloadTooLarge {
                msg_type: header.msg_type,
                payload_size: size,
                limit: max,
                offset: self.msg_start,
            });
        }
        if (size as usize) < min {
            // An empty payload leaves nothing to skip: the next header
            // follows (a pending zero-byte skip would make `finish` report
            // a truncated stream).
            self.phase = match size {
                0 => Phase::Header,
                _ => Phase::Skip {
                    msg_type: header.msg_type,
                    left: size as u64,
                    emit: None,
                },
            };
            return Err(ProtocolError::PayloadTooSmall {
                msg_type: header.msg_type,
                payload_size: size,
                min: min as u32,
                offset: self.msg_start,
            });
        }
        let header_only = match header.msg_type {
            msg_type::PING => Some(Message::Ping),
            msg_type::PONG => Some(Message::Pong),
            msg_type::KEYFRAME_REQ => Some(Message::KeyframeRequest),
            msg_type::FRAME_REQUEST
            | msg_type::FRAME_RESPONSE
            | msg_type::CONFIG_REQ
            | msg_type::CONFIG_RESP
            | msg_type::ERROR => None,
            t if self.decodes_ext(t) => None,
            t => Some(Message::Skipped {
                msg_type: t,
                payload_size: size,
            }),
        };
        if let Some(msg) = header_only {
            self.phase = Phase::Skip {
                msg_type: header.msg_type,
                left: size as u64,
                emit: Some(Decoded::Legacy(header, msg)),
            };
            return Ok(());
        }
        // Only what the message keeps is buffered: a FRAME_REQUEST without
        // the pixel flag, CONFIG_REQ and ERROR drop their trailing bytes.
        let keeps_tail = match header.msg_type {
            msg_type::FRAME_REQUEST => header.flags & FLAG_PIXELS != 0,
            msg_type::FRAME_RESPONSE | msg_type::CONFIG_RESP => true,
            t if self.decodes_ext(t) => ext::fixed_part(t).is_some_and(|(_, keeps)| keeps),
            _ => false,
        };
        let tail_len = size as usize - fixed;
        self.fixed.clear();
        self.tail = Vec::new();
        if keeps_tail {
            self.tail.reserve_exact(tail_len);
        }
        self.phase = Phase::Body {
            header,
            fixed_len: fixed,
            tail_len: if keeps_tail { tail_len } else { 0 },
            skip_after: if keeps_tail { 0 } else { tail_len as u64 },
        };
        Ok(())
    }
}

impl Decoder {
    /// Whether message type `t` is decoded as an extension message.
    fn decodes_ext(&self, t: u8) -> bool {
        self.extensions && ext_type::is_known(t)
    }

    /// The body of a message is complete: build the message. Returns `None`
    /// when trailing bytes still have to be skipped before it is emitted.
    fn finish_body(&mut self) -> Result<Option<Decoded>, ProtocolError> {
        let Phase::Body {
            header, skip_after, ..
        } = self.phase
        else {
            unreachable!("finish_body outside a body")
        };
        self.phase = Phase::Header;
        let tail = std::mem::take(&mut self.tail);
        let f = &self.fixed;
        if self.decodes_ext(header.msg_type) {
            let msg = ext::decode_body(header.msg_type, f, tail).map_err(|what| {
                // The trailing bytes are still skipped: framing stays intact.
                if skip_after > 0 {
                    self.phase = Phase::Skip {
                        msg_type: header.msg_type,
                        left: skip_after,
                        emit: None,
                    };
                }
                ProtocolError::Malformed {
                    msg_type: header.msg_type,
                    offset: self.msg_start,
                    what: format!("{}: {what}", ext_type::name(header.msg_type).unwrap_or("?")),
                }
            })?;
            return Ok(self.emit_after_skip(Decoded::Ext(header, msg), skip_after));
        }
        let msg = match header.msg_type {
            msg_type::FRAME_REQUEST => Message::FrameRequest {
                request: FrameRequest::decode_fixed(f),
                pixels: (header.flags & FLAG_PIXELS != 0).then_some(tail),
            },
            msg_type::FRAME_RESPONSE => Message::FrameResponse(self.parse_response(f, &tail)?),
            msg_type::CONFIG_REQ => Message::ConfigRequest(ConfigRequest::decode_fixed(f)),
            msg_type::ERROR => Message::Error(ErrorMessage::decode_fixed(f)),
            msg_type::CONFIG_RESP => Message::ConfigResponse(tail),
            t => unreachable!("message type 0x{t:02x} has no body phase"),
        };
        Ok(self.emit_after_skip(Decoded::Legacy(header, msg), skip_after))
    }

    /// Hands out `msg` now, or after `skip_after` trailing bytes are skipped.
    fn emit_after_skip(&mut self, msg: Decoded, skip_after: u64) -> Option<Decoded> {
        if skip_after > 0 {
            self.phase = Phase::Skip {
                msg_type: msg.header().msg_type,
                left: skip_after,
                emit: Some(msg),
            };
            return self.finish_skip();
        }
        Some(msg)
    }

    fn parse_response(&self, fixed: &[u8], tail: &[u8]) -> Result<FrameResponse, ProtocolError> {
        let offset = self.msg_start;
        let count = get_u32(fixed, 20);
        if count > self.limits.max_nal_count {
            return Err(ProtocolError::TooManyNals {
                count,
                limit: self.limits.max_nal_count,
                offset,
            });
        }
        let malformed = |what: String| ProtocolError::Malformed {
            msg_type: msg_type::FRAME_RESPONSE,
            offset,
            what,
        };
        // Each chunk needs at least its 4-byte size field: a count the tail
        // cannot hold must not size the table.
        let mut chunks = Vec::with_capacity((count as usize).min(tail.len() / 4));
        let mut rest = tail;
        for i in 0..count {
            if rest.len() < 4 {
                return Err(malformed(format!(
                    "NAL chunk {i} of {count}: its size field is cut off ({} bytes left)",
                    rest.len()
                )));
            }
            let size = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if size > rest.len() {
                return Err(malformed(format!(
                    "NAL chunk {i} of {count} claims {size} bytes but only {} remain",
                    rest.len()
                )));
            }
            chunks.push(rest[..size].to_vec());
            rest = &rest[size..];
        }
        if !rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes left over after the last of {count} NAL chunks",
                rest.len()
            )));
        }
        Ok(FrameResponse {
            pts: get_i64(fixed, 0),
            dts: get_i64(fixed, 8),
            is_keyframe: fixed[16] != 0,
            chunks,
        })
    }

    /// If a skip is complete, go back to reading headers and hand out what
    /// it was holding.
    fn finish_skip(&mut self) -> Option<Decoded> {
        if let Phase::Skip { left: 0, emit, .. } = &mut self.phase {
            let emit = emit.take();
            self.phase = Phase::Header;
            return emit;
        }
        None
    }

    fn truncated(&self) -> ProtocolError {
        let (msg_type, have, want) = match &self.phase {
            Phase::Header => (None, self.head_len as u64, HEADER_LEN as u64),
            Phase::Body {
                header,
                fixed_len,
                tail_len,
                skip_after,
            } => (
                Some(header.msg_type),
                HEADER_LEN as u64 + (self.fixed.len() + self.tail.len()) as u64,
                HEADER_LEN as u64 + (*fixed_len + *tail_len) as u64 + *skip_after,
            ),
            Phase::Skip { msg_type, left, .. } => {
                let have = self.offset - self.msg_start;
                (Some(*msg_type), have, have + *left)
            }
            Phase::Failed { .. } => (None, 0, 0),
        };
        let offset = if msg_type.is_none() && matches!(self.phase, Phase::Header) {
            self.offset - self.head_len as u64
        } else {
            self.msg_start
        };
        ProtocolError::Truncated {
            msg_type,
            offset,
            have,
            want,
        }
    }
}

/// Moves as many bytes as fit from the front of `input` into `dst`.
fn take_into(dst: &mut [u8], input: &mut &[u8]) -> usize {
    let n = dst.len().min(input.len());
    dst[..n].copy_from_slice(&input[..n]);
    *input = &input[n..];
    n
}

/// Appends bytes from the front of `input` to `v` until it holds `want`.
fn extend_from(v: &mut Vec<u8>, want: usize, input: &mut &[u8]) -> usize {
    let n = want.saturating_sub(v.len()).min(input.len());
    v.extend_from_slice(&input[..n]);
    *input = &input[n..];
    n
}

/// One `read`, retried on `Interrupted`.
fn read_some<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
}
