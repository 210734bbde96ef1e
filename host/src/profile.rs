//! Profile negotiation (the PROFILE extension): turning a guest's
//! PROFILE_REQ into caps after the encoder, and finding out before any of
//! the guest's frames is encoded whether the encoder can honour them.
//!
//! The answer comes from the encoder itself. A profile its src pad
//! template does not list is refused at once; otherwise one grey frame of
//! the request's size and rate goes through a throw-away session with the
//! same caps, and the SPS it produces is the answer: its profile must be
//! the one asked for (the same profile_idc, at least the constraints asked
//! for) and its level within the highest level accepted. Encoders differ
//! here: x264enc writes exactly the level in its caps and fails to
//! negotiate when the picture needs more; openh264enc writes the level in
//! its caps or silently a higher one. Either way the guest learns it now,
//! not from a mislabelled stream.
//!
//! The same goes for every codec (the connection's, [`hxfr::Codec`]): the
//! profile and level are read in its terms, the trial's parameter set is
//! its SPS or sequence header, and the profiles produced are its 4:2:0
//! ones (H.265 main and main-10, AV1 main).

use std::fmt;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hxfr::codec::StreamInfo;
use hxfr::ext::ProfileRequest;
use hxfr::ext::ProfileResponse;
use hxfr::{Codec, Decoder, FrameLayout, Level, Message, Profile, WireFormat, MAX_DIMENSION};
use tracing::debug;

use crate::codecs::EncoderChoice;
use crate::encoder::{Job, Params, Session, SessionKey};
use crate::stats::ClientStats;

/// The size a request that does not name one is tried at.
const DEFAULT_TRIAL_SIZE: (u32, u32) = (320, 240);

/// What a session is asked to produce: the caps after its encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub codec: Codec,
    /// [`Profile::ANY`]: no profile in the caps.
    pub profile: Profile,
    /// [`Level::ANY`]: no level in the caps.
    pub level: Level,
}

impl Target {
    /// The target of a request; `None` when it asks for nothing (the
    /// encoder's defaults, as without the extension).
    fn of(codec: Codec, req: &ProfileRequest) -> Option<Target> {
        (!req.profile.is_any() || !req.max_level.is_any()).then_some(Target {
            codec,
            profile: req.profile,
            level: req.max_level,
        })
    }

    /// `video/x-h264,profile=…,level=…` (or the codec's): a level in the
    /// caps is the highest the guest accepts, which encoders take as the
    /// level to write.
    pub fn caps(&self) -> gst::Caps {
        let mut b = gst::Caps::builder(self.codec.media_type());
        if let Some(p) = self.codec.profile_name(self.profile) {
            b = b.field("profile", p);
        }
        if let Some(l) = self.codec.level_name(self.level) {
            b = b.field("level", l);
        }
        b.build()
    }

    /// Bits per sample of the frames the encoder must be given: 10 for a
    /// 10-bit profile (H.265 main-10), else 8 (the guest's frames).
    pub fn bit_depth(&self) -> u8 {
        match (self.codec, self.profile.idc) {
            (Codec::H265, 2) => 10,
            _ => 8,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, l) = (
            self.codec.describe_profile(self.profile),
            self.codec.describe_level(self.level),
        );
        match (self.profile.is_any(), self.level.is_any()) {
            (false, false) => write!(f, "{} {p} up to {l}", self.codec),
            (false, true) => write!(f, "{} {p}", self.codec),
            _ => write!(f, "{} up to {l}", self.codec),
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Frames from now on are encoded for this target (`None`: the
    /// encoder's defaults).
    Accepted(Option<Target>),
    /// The encoding stays as it was.
    Refused,
}

/// What the daemon needs to answer a request.
pub struct Negotiator<'a> {
    pub encoder: &'a EncoderChoice,
    /// Bitrate and frame rate in force on the connection.
    pub params: Params,
    /// How long the trial frame may take.
    pub timeout: Duration,
    /// Largest pixel block the daemon accepts (`--max-frame-bytes`).
    pub max_frame_bytes: u32,
    pub peer: Arc<str>,
}

impl Negotiator<'_> {
    /// The PROFILE_RESP for `req`, and what it means for the frames that
    /// follow.
    pub fn answer(&self, req: &ProfileRequest) -> (ProfileResponse, Outcome) {
        let codec = self.encoder.codec;
        let mut resp = ProfileResponse {
            token: req.token,
            encoder: self.encoder.factory.clone(),
            ..Default::default()
        };
        match self.try_answer(req) {
            Ok(info) => {
                resp.accepted = true;
                resp.profile = info.profile;
                // A trial at a made-up size says nothing about the level.
                if req.width != 0 && req.height != 0 {
                    resp.level = info.level;
                }
                (resp, Outcome::Accepted(Target::of(codec, req)))
            }
            Err(why) => {
                resp.reason = why;
                (resp, Outcome::Refused)
            }
        }
    }

    /// What the stream the encoder produces for the request says, or why
    /// it cannot.
    fn try_answer(&self, req: &ProfileRequest) -> Result<StreamInfo, String> {
        let factory = &self.encoder.factory;
        let codec = self.encoder.codec;
        let wanted = req.profile;
        if !wanted.is_any() {
            if codec.profile_name(wanted).is_none() {
                return Err(format!(
                    "profile_idc {} (constraints 0x{:02x}) is not an {codec} profile this daemon knows",
                    wanted.idc, wanted.constraints
                ));
            }
            if codec.max_bit_depth(wanted).is_none() {
                return Err(format!(
                    "vsockenc-host encodes 4:2:0 video only ({}), not {codec} profile {}",
                    match codec {
                        Codec::H264 => "8-bit",
                        Codec::H265 => "H.265 main and main-10",
                        Codec::Av1 => "AV1 main",
                    },
                    codec.describe_profile(wanted)
                ));
            }
        }
        if !req.max_level.is_any() && codec.level_name(req.max_level).is_none() {
            return Err(format!(
                "level_idc {} is not an {codec} level",
                req.max_level.0
            ));
        }
        let target = Target::of(codec, req);
        if let Some(t) = &target {
            offered(factory, t)?;
        }
        let (w, h) = match (req.width, req.height) {
            (0, _) | (_, 0) => DEFAULT_TRIAL_SIZE,
            size => size,
        };
        if w > MAX_DIMENSION || h > MAX_DIMENSION {
            return Err(format!(
                "{w}x{h} is larger than the {MAX_DIMENSION}x{MAX_DIMENSION} frames this daemon takes"
            ));
        }
        let nv12_bytes = WireFormat::Nv12.frame_bytes(h, w + w % 2);
        if nv12_bytes > self.max_frame_bytes as u64 {
            return Err(format!(
                "{w}x{h} frames are larger than this daemon's --max-frame-bytes {}",
                self.max_frame_bytes
            ));
        }
        let mut params = self.params;
        if req.framerate_num > 0
            && req.framerate_den > 0
            && req.framerate_num <= i32::MAX as u32
            && req.framerate_den <= i32::MAX as u32
        {
            params.fps_n = req.framerate_num as i32;
            params.fps_d = req.framerate_den as i32;
        }
        let what = |t: &Option<Target>| match t {
            Some(t) => t.to_string(),
            None => "its default profile".into(),
        };
        let started = Instant::now();
        let info = self.trial(w, h, params, target).map_err(|e| {
            format!(
                "{factory} cannot produce {} for {w}x{h} at {}/{} fps: {e}",
                what(&target),
                params.fps_n,
                params.fps_d
            )
        })?;
        let (profile, level) = (
            codec.describe_profile(info.profile),
            codec.describe_level(info.level),
        );
        debug!(
            "{}: {factory} produced {codec} {profile} {level} for {w}x{h} at {}/{} fps in {:?} (asked for {})",
            self.peer,
            params.fps_n,
            params.fps_d,
            started.elapsed(),
            what(&target)
        );
        if !codec.satisfies(info.profile, wanted) {
            return Err(format!(
                "{factory} produces {profile} when asked for {}",
                codec.describe_profile(wanted)
            ));
        }
        if !info.level.fits(req.max_level) {
            return Err(format!(
                "{factory} produces {level} for {w}x{h} at {}/{} fps, above the highest level accepted ({})",
                params.fps_n,
                params.fps_d,
                codec.describe_level(req.max_level)
            ));
        }
        let depth = target.map_or(8, |t| t.bit_depth());
        if info.chroma_format_idc != 1
            || info.bit_depth_luma != depth
            || info.bit_depth_chroma != depth
        {
            return Err(format!(
                "{factory} produces chroma format {} at {}/{} bits, not {depth}-bit 4:2:0",
                info.chroma_format_idc, info.bit_depth_luma, info.bit_depth_chroma
            ));
        }
        Ok(info)
    }

    /// Encodes one grey NV12 frame in a session of its own and returns what
    /// the parameter set of its output says.
    fn trial(
        &self,
        w: u32,
        h: u32,
        params: Params,
        target: Option<Target>,
    ) -> Result<StreamInfo, String> {
        let key = SessionKey {
            format: WireFormat::Nv12,
            width: w,
            height: h,
        };
        let stride = w + w % 2;
        let size = WireFormat::Nv12.frame_bytes(h, stride) as usize;
        let layout =
            FrameLayout::new(WireFormat::Nv12, w, h, stride, size).map_err(|e| e.to_string())?;
        let mut session = Session::new(
            self.encoder,
            key,
            params,
            target,
            Arc::new(ClientStats::default()),
            self.peer.clone(),
        )
        .map_err(|e| format!("{e:#}"))?;
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            pts: 0,
            session_id: 0,
            reply,
            arrived: Instant::now(),
        };
        // One grey frame, gone when the trial ends: not worth a grant.
        let grey = crate::budget::Charged::new(vec![128u8; size], None);
        session
            .encode(&layout, grey, job, false)
            .map_err(|(_, why)| why)?;
        if let Some(e) = session.take_error() {
            return Err(e);
        }
        session.flush(self.timeout)?;
        let bytes = match answer.try_recv() {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Err(e.message),
            Err(_) => return Err("no output for the trial frame".into()),
        };
        let au = match Decoder::default().decode(&mut &bytes[..]) {
            Ok(Some((_, Message::FrameResponse(r)))) => r.unit(self.encoder.codec),
            _ => return Err("unreadable output for the trial frame".into()),
        };
        self.encoder
            .codec
            .stream_info(&au)
            .ok_or_else(|| "its output has no sequence parameter set".into())
    }
}

/// Checks the encoder's src pad template against the caps of `t`; the
/// error lists what the encoder offers.
fn offered(factory: &str, t: &Target) -> Result<(), String> {
    let Some(f) = gst::ElementFactory::find(factory) else {
        return Err(format!("{factory} is not installed"));
    };
    let src: Vec<gst::Caps> = f
        .static_pad_templates()
        .iter()
        .filter(|p| p.direction() == gst::PadDirection::Src)
        .map(|p| p.caps())
        .collect();
    if src.iter().any(|c| c.can_intersect(&t.caps())) {
        return Ok(());
    }
    let profiles: Vec<String> = src
        .iter()
        .flat_map(|c| c.iter().flat_map(profiles_of).collect::<Vec<_>>())
        .collect();
    Err(match profiles.is_empty() {
        true => format!("{factory} cannot produce {t}"),
        false => format!(
            "{factory} cannot produce {t} (it offers profile {})",
            profiles.join(", ")
        ),
    })
}

/// The `profile` values of a caps structure (a string or a list of them).
fn profiles_of(s: &gst::StructureRef) -> Vec<String> {
    if let Ok(list) = s.get::<gst::List>("profile") {
        return list.iter().filter_map(|v| v.get::<String>().ok()).collect();
    }
    s.get::<String>("profile").into_iter().collect()
}
