//! The per-connection bookkeeping of the extensions, without any I/O: what
//! was negotiated, frame indices, the host's reference frame, which pixel
//! formats the host accepts, and the guest's outstanding checksums, drains
//! and profile requests. `vsockenc` keeps one
//! [`GuestExt`] and `vsockenc-host` one [`HostExt`] per connection; both
//! start over on every new connection.

use std::collections::VecDeque;

use crate::codec::Codec;
use crate::compact::{self, CompactError, Frame};
use crate::ext::{
    ext_bits, negotiate, CompactFrame, ErrorPts, ExtMessage, FrameChecksum, Hello, HelloAck,
    ProfileRequest, ProfileResponse, CHECKSUM_FLAG_REBUILT, EXT_VERSION,
};
use crate::layout::{FrameLayout, LayoutError};
use crate::message::{ErrorMessage, FrameRequest, Message};
use crate::profile::{Level, Profile};

/// The host's side of one connection.
#[derive(Debug)]
pub struct HostExt {
    supported: u32,
    max_frame_bytes: u32,
    agent: String,
    /// Accepted extensions; 0 until a HELLO was answered.
    accepted: u32,
    answered: bool,
    /// The codec this connection's frames are encoded in.
    codec: Codec,
    /// Why the codec the guest asked for is not encoded here: its frames
    /// are refused rather than encoded in another codec.
    codec_refused: Option<String>,
    next_index: u32,
    reference: Option<Reference>,
    scratch: Vec<u8>,
}

#[derive(Debug)]
struct Reference {
    index: u32,
    layout: FrameLayout,
    pixels: Vec<u8>,
}

impl HostExt {
    /// `supported`: the [`ext_bits`] this host offers.
    pub fn new(supported: u32, max_frame_bytes: u32, agent: &str) -> Self {
        HostExt {
            supported,
            max_frame_bytes,
            agent: agent.to_string(),
            accepted: 0,
            answered: false,
            codec: Codec::H264,
            codec_refused: None,
            next_index: 0,
            reference: None,
            scratch: Vec::new(),
        }
    }

    /// The HELLO_ACK to send for this HELLO, for a host that encodes H.264
    /// only; `None` for a repeated HELLO, which is ignored.
    pub fn on_hello(&mut self, hello: &Hello) -> Option<HelloAck> {
        self.on_hello_with(hello, |c| match c {
            Codec::H264 => Ok(()),
            other => Err(format!("this host encodes H.264 only, not {other}")),
        })
    }

    /// The HELLO_ACK to send for this HELLO; `encodes` says whether the
    /// host can encode a codec, or why not. A guest that asks for a codec
    /// the host cannot encode gets CODEC refused with that reason, and its
    /// frames are refused ([`HostExt::codec_refusal`]): they are never
    /// encoded in another codec than the one asked for.
    pub fn on_hello_with<F>(&mut self, hello: &Hello, encodes: F) -> Option<HelloAck>
    where
        F: FnOnce(Codec) -> Result<(), String>,
    {
        if self.answered {
            return None;
        }
        self.answered = true;
        self.accepted = negotiate(hello.extensions, self.supported);
        let refusal = match hello.wanted_codec() {
            Ok(Codec::H264) => None,
            Ok(c) if self.accepted & ext_bits::CODEC == 0 => Some(format!(
                "this host does not offer codecs other than H.264, not {c}"
            )),
            Ok(c) => match encodes(c) {
                Ok(()) => {
                    self.codec = c;
                    None
                }
                Err(why) => Some(why),
            },
            Err(code) => Some(format!(
                "codec {code} is not one this host knows (0 H.264, 1 H.265, 2 AV1)"
            )),
        };
        if refusal.is_some() {
            self.accepted &= !ext_bits::CODEC;
        }
        self.codec_refused = refusal.clone();
        Some(HelloAck {
            version: hello.version.clamp(1, EXT_VERSION),
            codec: self.codec,
            reason: refusal.unwrap_or_default(),
            extensions: self.accepted,
            max_frame_bytes: self.max_frame_bytes,
            agent: self.agent.clone(),
        })
    }

    /// The codec this connection's frames are encoded in.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Why this connection's frames are refused: the guest asked for a
    /// codec this host does not encode.
    pub fn codec_refusal(&self) -> Option<&str> {
        self.codec_refused.as_deref()
    }

    /// Extensions in force (0 for a legacy guest).
    pub fn accepted(&self) -> u32 {
        self.accepted
    }

    pub fn has(&self, bit: u32) -> bool {
        self.accepted & bit != 0
    }

    /// Numbers a frame message (FRAME_REQUEST or COMPACT_FRAME, refused
    /// ones too). Call once per frame message, in stream order.
    pub fn next_frame(&mut self) -> u32 {
        let i = self.next_index;
        self.next_index = self.next_index.wrapping_add(1);
        i
    }

    /// Checks a frame's description against its pixels: the negotiated
    /// formats (I420, YV12, YUY2, UYVY) only when FORMATS was accepted.
    pub fn layout(&self, req: &FrameRequest, pixel_len: usize) -> Result<FrameLayout, LayoutError> {
        FrameLayout::validate_ext(req, pixel_len, self.has(ext_bits::FORMATS))
    }

    /// A full frame was accepted: it becomes the reference (a copy is kept
    /// only when COMPACT is in force).
    pub fn keep_full(&mut self, index: u32, layout: &FrameLayout, pixels: &[u8]) {
        if !self.has(ext_bits::COMPACT) {
            self.reference = None;
            return;
        }
        match &mut self.reference {
            // Reuse the buffer: steady-state full frames do not allocate.
            Some(r) if r.pixels.len() == pixels.len() => {
                r.pixels.copy_from_slice(pixels);
                r.index = index;
                r.layout = *layout;
            }
            _ => {
                self.reference = Some(Reference {
                    index,
                    layout: *layout,
                    pixels: pixels.to_vec(),
                })
            }
        }
    }

    /// Forgets the reference: every COMPACT_FRAME is refused until the next
    /// full frame.
    pub fn forget_reference(&mut self) {
        self.reference = None;
    }

    /// Rebuilds frame `index` from a COMPACT_FRAME. On success it is the new
    /// reference (see [`HostExt::reference`]); on error the reference is
    /// forgotten.
    pub fn rebuild(&mut self, index: u32, cf: &CompactFrame) -> Result<(), CompactError> {
        let r = self.try_rebuild(index, cf);
        if r.is_err() {
            self.reference = None;
        }
        r
    }

    /// The reference frame: its index, layout and pixels.
    pub fn reference(&self) -> Option<(u32, &FrameLayout, &[u8])> {
        self.reference
            .as_ref()
            .map(|r| (r.index, &r.layout, &r.pixels[..]))
    }

    fn try_rebuild(&mut self, index: u32, cf: &CompactFrame) -> Result<(), CompactError> {
        if !self.has(ext_bits::COMPACT) {
            return Err(CompactError::GeometryMismatch(
                "COMPACT was not negotiated on this connection".into(),
            ));
        }
        if cf.header.encoding == crate::ext::TileEncoding::Lz4 && !self.has(ext_bits::LZ4) {
            return Err(CompactError::Decompress(
                "LZ4 was not negotiated on this connection".into(),
            ));
        }
        let want = cf.header.ref_index;
        let Some(r) = self.reference.as_mut() else {
            return Err(CompactError::NoReference { want, have: None });
        };
        if r.index != want {
            return Err(CompactError::NoReference {
                want,
                have: Some(r.index),
            });
        }
        compact::apply(&mut r.pixels, &r.layout, cf, &mut self.scratch)?;
        r.index = index;
        Ok(())
    }

    /// The message that reports a failed frame: ERROR_PTS when negotiated,
    /// else the legacy ERROR.
    pub fn frame_error(&self, session_id: u16, pts: i64, index: u32, e: ErrorMessage) -> Vec<u8> {
        if self.has(ext_bits::ERROR_PTS) {
            ExtMessage::ErrorPts(ErrorPts {
                pts,
                frame_index: index,
                code: e.code,
                message: e.message,
            })
            .encode(session_id)
        } else {
            Message::Error(e).encode(session_id)
        }
    }

    /// The FRAME_CHECKSUM of an accepted frame, when negotiated.
    pub fn checksum_message(
        &self,
        session_id: u16,
        pts: i64,
        index: u32,
        rebuilt: bool,
        layout: &FrameLayout,
        pixels: &[u8],
    ) -> Option<Vec<u8>> {
        if !self.has(ext_bits::FRAME_CHECKSUM) {
            return None;
        }
        let frame = Frame::from_wire(layout, pixels).ok()?;
        Some(self.checksum_of(session_id, pts, index, rebuilt, &frame))
    }

    /// The FRAME_CHECKSUM of `frame` (planes anywhere, e.g. in a
    /// shared-memory slot).
    pub fn checksum_of(
        &self,
        session_id: u16,
        pts: i64,
        index: u32,
        rebuilt: bool,
        frame: &Frame<'_>,
    ) -> Vec<u8> {
        ExtMessage::FrameChecksum(FrameChecksum {
            pts,
            frame_index: index,
            flags: if rebuilt { CHECKSUM_FLAG_REBUILT } else { 0 },
            checksum: compact::checksum(frame),
        })
        .encode(session_id)
    }
}

/// The guest's side of one connection.
#[derive(Debug)]
pub struct GuestExt {
    requested: u32,
    /// Accepted extensions, once HELLO_ACK arrived.
    accepted: Option<u32>,
    next_index: u32,
    /// Index of the last frame the host holds pixels of, if a COMPACT_FRAME
    /// may refer to it.
    reference: Option<u32>,
    checksums: VecDeque<(u32, u64)>,
    pub checksum_matches: u64,
    pub checksum_mismatches: u64,
    drains_done: VecDeque<u64>,
    next_token: u64,
    profile_answers: VecDeque<ProfileResponse>,
    /// A PONG came before any HELLO_ACK: the host skipped the HELLO.
    legacy: bool,
    /// The codec the guest wants, and whether the host encodes it.
    codec: Codec,
    codec_state: CodecState,
}

/// Whether the host encodes the codec the guest wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecState {
    /// Not known yet: the host has answered neither the HELLO nor the PING
    /// after it.
    Pending,
    /// Every frame of this connection is encoded in the codec asked for
    /// (always so for H.264).
    Confirmed,
    /// The host encodes something else; the text says why.
    Refused(String),
}

/// Most checksums remembered while waiting for the host's.
const MAX_CHECKSUMS: usize = 256;

/// What a FRAME_CHECKSUM from the host told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumCheck {
    Match,
    /// The host encodes other pixels than the guest had.
    Mismatch {
        expected: u64,
        host: u64,
    },
    /// No checksum was recorded for that frame.
    Unknown,
}

impl GuestExt {
    pub fn new(requested: u32) -> Self {
        GuestExt {
            requested,
            accepted: None,
            next_index: 0,
            reference: None,
            checksums: VecDeque::new(),
            checksum_matches: 0,
            checksum_mismatches: 0,
            drains_done: VecDeque::new(),
            next_token: 1,
            profile_answers: VecDeque::new(),
            legacy: false,
            codec: Codec::H264,
            codec_state: CodecState::Confirmed,
        }
    }

    /// A guest that wants `codec`: anything but H.264 is asked for with
    /// [`ext_bits::CODEC`], and is pending until the host answers.
    pub fn with_codec(requested: u32, codec: Codec) -> Self {
        let mut g = GuestExt::new(requested);
        g.codec = codec;
        if codec != Codec::H264 {
            g.requested |= ext_bits::CODEC;
            g.codec_state = CodecState::Pending;
        }
        g
    }

    /// Whether the host encodes the codec this guest wants.
    pub fn codec_state(&self) -> &CodecState {
        &self.codec_state
    }

    /// The HELLO that opens the connection.
    pub fn hello(&self, tile_width: u16, tile_height: u16, agent: &str) -> Hello {
        Hello {
            version: EXT_VERSION,
            codec: self.codec.to_u8(),
            extensions: self.requested,
            tile_width,
            tile_height,
            agent: agent.to_string(),
        }
    }

    /// HELLO_ACK arrived: returns the extensions now in force (never more
    /// than were asked for).
    pub fn on_ack(&mut self, ack: &HelloAck) -> u32 {
        let mut a = ack.extensions & self.requested & ext_bits::KNOWN;
        if a & ext_bits::COMPACT == 0 {
            a &= !ext_bits::LZ4;
        }
        self.accepted = Some(a);
        if self.codec != Codec::H264 {
            self.codec_state = if a & ext_bits::CODEC != 0 && ack.codec == self.codec {
                CodecState::Confirmed
            } else if !ack.reason.is_empty() {
                CodecState::Refused(ack.reason.clone())
            } else {
                CodecState::Refused(format!(
                    "the host ({:?}) encodes {} on this connection: it does not know the CODEC extension (an older vsockenc-host)",
                    ack.agent, ack.codec
                ))
            };
        }
        a
    }

    /// Extensions in force: 0 until HELLO_ACK.
    pub fn accepted(&self) -> u32 {
        self.accepted.unwrap_or(0)
    }

    pub fn has(&self, bit: u32) -> bool {
        self.accepted() & bit != 0
    }

    /// Whether HELLO_ACK has arrived.
    pub fn acknowledged(&self) -> bool {
        self.accepted.is_some()
    }

    /// A PONG arrived. A guest that sends a PING right after its HELLO
    /// learns from the order of the answers what kind of host it talks to:
    /// hosts answer in order, so `vsockenc-host` sends HELLO_ACK before
    /// that PONG, and a PONG without a HELLO_ACK before it comes from a
    /// legacy host, which skipped the HELLO. Returns true when this settled
    /// it.
    pub fn on_pong(&mut self) -> bool {
        if self.accepted.is_some() || self.legacy {
            return false;
        }
        self.legacy = true;
        if self.codec != Codec::H264 {
            self.codec_state = CodecState::Refused(
                "a legacy HXFR host, which encodes H.264 only (it skipped the HELLO)".into(),
            );
        }
        true
    }

    /// What the guest knows about its host: `Some(true)` when it accepted
    /// the HELLO, `Some(false)` for a legacy host (see
    /// [`GuestExt::on_pong`]), `None` while neither answer has arrived.
    pub fn extended(&self) -> Option<bool> {
        match (self.accepted, self.legacy) {
            (Some(_), _) => Some(true),
            (None, true) => Some(false),
            (None, false) => None,
        }
    }

    /// Whether extension `bit` is or may still become usable: asked for,
    /// and accepted or not answered yet.
    pub fn may_use(&self, bit: u32) -> bool {
        match self.accepted {
            Some(a) => a & bit != 0,
            None => self.requested & bit != 0,
        }
    }

    /// Whether to record checksums of the frames sent: FRAME_CHECKSUM was
    /// accepted, or was asked for and the answer is still out (the host
    /// checksums every frame after its HELLO_ACK, including those the guest
    /// sent before it arrived).
    pub fn wants_checksums(&self) -> bool {
        match self.accepted {
            Some(a) => a & ext_bits::FRAME_CHECKSUM != 0,
            None => self.requested & ext_bits::FRAME_CHECKSUM != 0,
        }
    }

    /// The reference a COMPACT_FRAME for the next frame may use, if any: a
    /// frame the host holds, COMPACT negotiated, no error since, and no
    /// keyframe forced.
    pub fn compact_reference(&self, force_keyframe: bool) -> Option<u32> {
        if force_keyframe || !self.has(ext_bits::COMPACT) {
            return None;
        }
        self.reference
            .filter(|r| r.wrapping_add(1) == self.next_index)
    }

    /// Numbers the frame about to be sent.
    pub fn next_frame(&mut self) -> u32 {
        let i = self.next_index;
        self.next_index = self.next_index.wrapping_add(1);
        i
    }

    /// Frame `index` went out; `with_pixels`: the host now holds its pixels.
    pub fn frame_sent(&mut self, index: u32, with_pixels: bool) {
        self.reference = with_pixels.then_some(index);
    }

    /// An error (ERROR, ERROR_PTS) arrived: the next frame goes out in full.
    pub fn invalidate(&mut self) {
        self.reference = None;
    }

    /// Remembers the checksum of frame `index` to compare with the host's.
    pub fn expect_checksum(&mut self, index: u32, checksum: u64) {
        if self.checksums.len() == MAX_CHECKSUMS {
            self.checksums.pop_front();
        }
        self.checksums.push_back((index, checksum));
    }

    /// Compares the host's FRAME_CHECKSUM with the recorded one.
    pub fn on_checksum(&mut self, c: &FrameChecksum) -> ChecksumCheck {
        let Some(pos) = self.checksums.iter().position(|(i, _)| *i == c.frame_index) else {
            return ChecksumCheck::Unknown;
        };
        let (_, expected) = self.checksums.remove(pos).unwrap();
        // Older entries were for frames the host never accepted.
        self.checksums.drain(..pos);
        if expected == c.checksum {
            self.checksum_matches += 1;
            ChecksumCheck::Match
        } else {
            self.checksum_mismatches += 1;
            ChecksumCheck::Mismatch {
                expected,
                host: c.checksum,
            }
        }
    }

    /// DRAIN_DONE arrived.
    pub fn on_drain_done(&mut self, token: u64) {
        if self.drains_done.len() == 16 {
            self.drains_done.pop_front();
        }
        self.drains_done.push_back(token);
    }

    /// Whether DRAIN_DONE with `token` has arrived.
    pub fn drain_done(&self, token: u64) -> bool {
        self.drains_done.contains(&token)
    }

    /// Whether frames of [`crate::WireFormat::NEGOTIATED`] may be sent.
    pub fn formats(&self) -> bool {
        self.has(ext_bits::FORMATS)
    }

    /// The PROFILE_REQ to send (with a fresh token) for frames of `width`
    /// x `height` at `framerate` (0s when unknown), or `None` when the host
    /// has not accepted PROFILE (a legacy host cannot be asked).
    pub fn profile_request(
        &mut self,
        profile: Profile,
        max_level: Level,
        (width, height): (u32, u32),
        (framerate_num, framerate_den): (u32, u32),
    ) -> Option<ProfileRequest> {
        if !self.has(ext_bits::PROFILE) {
            return None;
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        Some(ProfileRequest {
            token,
            profile,
            max_level,
            width,
            height,
            framerate_num,
            framerate_den,
        })
    }

    /// PROFILE_RESP arrived.
    pub fn on_profile_response(&mut self, r: ProfileResponse) {
        if self.profile_answers.len() == 16 {
            self.profile_answers.pop_front();
        }
        self.profile_answers.push_back(r);
    }

    /// The answer to the PROFILE_REQ with `token`, once it has arrived.
    pub fn profile_response(&self, token: u64) -> Option<&ProfileResponse> {
        self.profile_answers.iter().rev().find(|r| r.token == token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::{CompactEncoder, Compression, Delta};
    use crate::ext::ext_bits::*;
    use crate::layout::WireFormat;
    use crate::message::FrameRequest;
    use crate::{Decoded, Decoder, Limits};

    #[test]
    fn a_pong_before_the_ack_means_a_legacy_host() {
        let mut g = GuestExt::new(ext_bits::KNOWN);
        assert_eq!(g.extended(), None);
        assert!(g.on_pong());
        assert_eq!(g.extended(), Some(false));
        assert!(!g.on_pong(), "settled once");
        let mut g = GuestExt::new(ext_bits::KNOWN);
        g.on_ack(&HelloAck {
            extensions: ext_bits::KNOWN,
            ..HelloAck::default()
        });
        assert!(!g.on_pong(), "the PONG after the ack settles nothing");
        assert_eq!(g.extended(), Some(true));
    }

    fn hello(ext: u32) -> Hello {
        Hello {
            version: 1,
            extensions: ext,
            ..Default::default()
        }
    }

    #[test]
    fn a_codec_is_encoded_only_by_a_host_that_has_it() {
        let mut guest = GuestExt::with_codec(ERROR_PTS, Codec::H265);
        assert_eq!(guest.codec_state(), &CodecState::Pending);
        let hello = guest.hello(0, 0, "g");
        assert_eq!(hello.extensions, ERROR_PTS | CODEC);
        assert_eq!(hello.wanted_codec(), Ok(Codec::H265));
        // A host with an H.265 encoder.
        let mut host = HostExt::new(KNOWN, 0, "h");
        let ack = host
            .on_hello_with(&hello, |c| {
                assert_eq!(c, Codec::H265);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            (ack.codec, ack.extensions),
            (Codec::H265, ERROR_PTS | CODEC)
        );
        assert_eq!(host.codec(), Codec::H265);
        assert!(host.codec_refusal().is_none());
        guest.on_ack(&ack);
        assert_eq!(guest.codec_state(), &CodecState::Confirmed);
        // A host without one says why, and refuses the guest's frames.
        let mut guest = GuestExt::with_codec(ERROR_PTS, Codec::Av1);
        let mut host = HostExt::new(KNOWN, 0, "h");
        let ack = host
            .on_hello_with(&guest.hello(0, 0, "g"), |_| Err("no AV1 encoder".into()))
            .unwrap();
        assert_eq!((ack.codec, ack.extensions), (Codec::H264, ERROR_PTS));
        assert_eq!(host.codec_refusal(), Some("no AV1 encoder"));
        guest.on_ack(&ack);
        assert_eq!(
            guest.codec_state(),
            &CodecState::Refused("no AV1 encoder".into())
        );
        // An older host answers without CODEC and without a reason.
        let mut guest = GuestExt::with_codec(ERROR_PTS, Codec::H265);
        guest.on_ack(&HelloAck {
            extensions: ERROR_PTS,
            ..HelloAck::default()
        });
        assert!(matches!(guest.codec_state(), CodecState::Refused(why) if why.contains("older")));
        // A legacy host never answers the HELLO.
        let mut guest = GuestExt::with_codec(0, Codec::H265);
        guest.on_pong();
        assert!(matches!(guest.codec_state(), CodecState::Refused(why) if why.contains("legacy")));
        // H.264 needs nothing from anyone.
        let mut guest = GuestExt::with_codec(ERROR_PTS, Codec::H264);
        assert_eq!(guest.codec_state(), &CodecState::Confirmed);
        assert_eq!(guest.hello(0, 0, "g").extensions, ERROR_PTS);
        guest.on_pong();
        assert_eq!(guest.codec_state(), &CodecState::Confirmed);
    }

    #[test]
    fn an_unknown_or_unoffered_codec_is_refused_not_taken_for_h264() {
        let unknown = Hello {
            version: 1,
            codec: 9,
            extensions: CODEC,
            ..Default::default()
        };
        let mut host = HostExt::new(KNOWN, 0, "h");
        let ack = host.on_hello_with(&unknown, |_| Ok(())).unwrap();
        assert_eq!(ack.extensions & CODEC, 0);
        assert!(host.codec_refusal().unwrap().contains("codec 9"));
        // A host that does not offer CODEC at all.
        let mut host = HostExt::new(KNOWN & !CODEC, 0, "h");
        let ack = host
            .on_hello_with(
                &GuestExt::with_codec(0, Codec::H265).hello(0, 0, "g"),
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(ack.codec, Codec::H264);
        assert!(host.codec_refusal().is_some());
        // The plain `on_hello` is a host that encodes H.264 only.
        let mut host = HostExt::new(KNOWN, 0, "h");
        host.on_hello(&GuestExt::with_codec(0, Codec::Av1).hello(0, 0, "g"));
        assert!(host.codec_refusal().unwrap().contains("H.264 only"));
    }

    #[test]
    fn host_answers_the_first_hello_only() {
        let mut h = HostExt::new(COMPACT | LZ4 | ERROR_PTS | DRAIN, 1000, "host");
        assert_eq!(h.accepted(), 0);
        let ack = h.on_hello(&hello(KNOWN)).unwrap();
        assert_eq!(ack.extensions, COMPACT | LZ4 | ERROR_PTS | DRAIN);
        assert_eq!(ack.max_frame_bytes, 1000);
        assert_eq!(ack.version, 1);
        assert!(h.on_hello(&hello(DRAIN)).is_none());
        assert_eq!(h.accepted(), COMPACT | LZ4 | ERROR_PTS | DRAIN);
    }

    #[test]
    fn frame_errors_follow_the_negotiation() {
        let legacy = HostExt::new(KNOWN, 0, "h");
        let e = ErrorMessage::new(-5, "x");
        let bytes = legacy.frame_error(1, 7, 3, e.clone());
        assert_eq!(bytes, Message::Error(e.clone()).encode(1));
        let mut ext = HostExt::new(KNOWN, 0, "h");
        ext.on_hello(&hello(ERROR_PTS));
        let bytes = ext.frame_error(1, 7, 3, e);
        let mut d = Decoder::with_extensions(Limits::default());
        let Some(Decoded::Ext(_, ExtMessage::ErrorPts(p))) = d.decode_ext(&mut &bytes[..]).unwrap()
        else {
            panic!()
        };
        assert_eq!((p.pts, p.frame_index, p.code), (7, 3, -5));
    }

    /// Guest and host state machines together: full frame, compact frames,
    /// a wrong reference, recovery with a full frame; checksums agree.
    #[test]
    fn guest_and_host_agree() {
        let mut guest = GuestExt::new(COMPACT | FRAME_CHECKSUM);
        let mut host = HostExt::new(KNOWN, 0, "h");
        let ack = host.on_hello(&guest.hello(16, 16, "g")).unwrap();
        // Frame 0 goes out before the ack: legacy, full.
        let (w, h) = (40u32, 24u32);
        let layout = FrameLayout::new(WireFormat::Bgra, w, h, 160, 160 * 24).unwrap();
        let mut pixels = vec![1u8; 160 * 24];
        assert_eq!(guest.compact_reference(false), None);
        let i0 = guest.next_frame();
        guest.frame_sent(i0, true);
        let hi0 = host.next_frame();
        assert_eq!(i0, hi0);
        host.keep_full(hi0, &layout, &pixels);
        assert_eq!(guest.on_ack(&ack), COMPACT | FRAME_CHECKSUM);
        // COMPACT was not accepted when frame 0 arrived? It was: the host
        // answered the HELLO first, so it kept frame 0.
        let mut enc = CompactEncoder::new(16, 16, Compression::Off);
        for n in 1..4u8 {
            let mut next = pixels.clone();
            next[n as usize * 10] = n;
            let r = guest.compact_reference(false).expect("compact allowed");
            let idx = guest.next_frame();
            let prev_f = Frame::from_wire(&layout, &pixels).unwrap();
            let cur_f = Frame::from_wire(&layout, &next).unwrap();
            let req = FrameRequest {
                width: w,
                height: h,
                format: WireFormat::Bgra.fourcc(),
                stride: 160,
                pts: n as i64,
                ..Default::default()
            };
            let Delta::Compact(m) = enc.encode(&prev_f, &cur_f, &req, r, 1) else {
                panic!()
            };
            guest.frame_sent(idx, true);
            guest.expect_checksum(idx, compact::checksum(&cur_f));
            let bytes = m.to_vec();
            let mut d = Decoder::with_extensions(Limits::default());
            let Some(Decoded::Ext(_, ExtMessage::CompactFrame(cf))) =
                d.decode_ext(&mut &bytes[..]).unwrap()
            else {
                panic!()
            };
            let hi = host.next_frame();
            host.rebuild(hi, &cf).unwrap();
            let (ri, l, px) = host.reference().unwrap();
            assert_eq!((ri, px), (hi, &next[..]));
            let msg = host.checksum_message(1, n as i64, hi, true, l, px).unwrap();
            let Some(Decoded::Ext(_, ExtMessage::FrameChecksum(c))) =
                d.decode_ext(&mut &msg[..]).unwrap()
            else {
                panic!()
            };
            assert_eq!(guest.on_checksum(&c), ChecksumCheck::Match);
            pixels = next;
        }
        assert_eq!(guest.checksum_matches, 3);
        // A COMPACT_FRAME naming the wrong reference is refused and the
        // reference forgotten.
        let idx = host.next_frame();
        let mut cf = CompactFrame::default();
        cf.header.ref_index = 99;
        let e = host.rebuild(idx, &cf).unwrap_err();
        assert_eq!(
            e.to_string(),
            "compact frame names reference frame 99, but the host holds frame 3"
        );
        cf.header.ref_index = 3;
        let e = host.rebuild(idx + 1, &cf).unwrap_err();
        assert_eq!(
            e.to_string(),
            "compact frame names reference frame 3, but the host holds no reference frame"
        );
        // The guest learns of the error and sends a full frame.
        guest.invalidate();
        assert_eq!(guest.compact_reference(false), None);
        // A forced keyframe is always full.
        let i = guest.next_frame();
        guest.frame_sent(i, true);
        assert_eq!(guest.compact_reference(true), None);
        assert!(guest.compact_reference(false).is_some());
    }

    #[test]
    fn guest_never_uses_what_it_did_not_ask_for() {
        let mut g = GuestExt::new(DRAIN);
        assert_eq!(g.accepted(), 0);
        assert!(!g.acknowledged());
        let a = g.on_ack(&HelloAck {
            extensions: KNOWN,
            ..Default::default()
        });
        assert_eq!(a, DRAIN);
        assert!(g.compact_reference(false).is_none());
        let mut g = GuestExt::new(LZ4 | DRAIN);
        assert_eq!(
            g.on_ack(&HelloAck {
                extensions: KNOWN,
                ..Default::default()
            }),
            DRAIN
        );
    }

    #[test]
    fn profile_requests_need_the_extension_and_match_by_token() {
        let mut g = GuestExt::new(PROFILE | FORMATS);
        let size = (1280, 720);
        assert!(
            g.profile_request(Profile::MAIN, Level(31), size, (30, 1))
                .is_none(),
            "no HELLO_ACK yet"
        );
        g.on_ack(&HelloAck {
            extensions: PROFILE,
            ..Default::default()
        });
        assert!(!g.formats(), "FORMATS was not accepted");
        let a = g
            .profile_request(Profile::MAIN, Level(31), size, (30, 1))
            .unwrap();
        let b = g
            .profile_request(Profile::HIGH, Level::ANY, size, (30, 1))
            .unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(
            (a.width, a.framerate_num, a.max_level),
            (1280, 30, Level(31))
        );
        g.on_profile_response(ProfileResponse {
            token: b.token,
            accepted: true,
            profile: Profile::HIGH,
            ..Default::default()
        });
        assert!(g.profile_response(a.token).is_none());
        assert!(g.profile_response(b.token).unwrap().accepted);
        let mut legacy = GuestExt::new(PROFILE);
        legacy.on_ack(&HelloAck::default());
        assert!(legacy
            .profile_request(Profile::MAIN, Level::ANY, size, (30, 1))
            .is_none());
    }

    #[test]
    fn negotiated_formats_need_the_extension() {
        let req = FrameRequest {
            width: 4,
            height: 2,
            format: WireFormat::I420.fourcc(),
            stride: 4,
            ..Default::default()
        };
        let mut h = HostExt::new(KNOWN, 0, "h");
        assert_eq!(
            h.layout(&req, 12),
            Err(LayoutError::NotNegotiated(WireFormat::I420)),
            "a legacy guest"
        );
        h.on_hello(&hello(FORMATS));
        let l = h.layout(&req, 12).unwrap();
        assert_eq!(l.format, WireFormat::I420);
        let mut without = HostExt::new(KNOWN & !FORMATS, 0, "h");
        without.on_hello(&hello(FORMATS));
        assert!(without.layout(&req, 12).is_err());
    }

    #[test]
    fn checksums_and_drains() {
        let mut g = GuestExt::new(FRAME_CHECKSUM);
        assert!(g.wants_checksums(), "asked for, answer still out");
        assert!(!GuestExt::new(COMPACT).wants_checksums());
        assert!(GuestExt::new(COMPACT).may_use(COMPACT));
        assert!(!GuestExt::new(DRAIN).may_use(COMPACT));
        let mut refused = GuestExt::new(FRAME_CHECKSUM);
        refused.on_ack(&HelloAck::default());
        assert!(!refused.wants_checksums());
        g.expect_checksum(1, 11);
        g.expect_checksum(2, 22);
        g.expect_checksum(3, 33);
        let c = |i, s| FrameChecksum {
            frame_index: i,
            checksum: s,
            ..Default::default()
        };
        assert_eq!(g.on_checksum(&c(2, 22)), ChecksumCheck::Match);
        assert_eq!(g.on_checksum(&c(1, 11)), ChecksumCheck::Unknown);
        assert_eq!(
            g.on_checksum(&c(3, 34)),
            ChecksumCheck::Mismatch {
                expected: 33,
                host: 34
            }
        );
        assert_eq!((g.checksum_matches, g.checksum_mismatches), (1, 1));
        assert!(!g.drain_done(5));
        g.on_drain_done(5);
        assert!(g.drain_done(5));
    }
}
