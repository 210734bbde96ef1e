//! The codecs `vsockenc-host` encodes for its guests (the CODEC extension),
//! and the one view of their streams both sides need: is this access unit
//! a keyframe, and which profile, level, chroma format and bit depth does
//! its stream have ([`StreamInfo`]).
//!
//! Profiles and levels travel in PROFILE_REQ/PROFILE_RESP as the same two
//! bytes for every codec ([`Profile`], [`Level`]); what the numbers mean is
//! the codec's:
//!
//! | codec | profile (`Profile::idc`, `constraints`) | level (`Level`) |
//! |---|---|---|
//! | H.264 | SPS `profile_idc` and `constraint_set` flags | `level_idc` (9 for 1b) |
//! | H.265 | `general_profile_idc`, 0 | `general_level_idc` (30 × level) |
//! | AV1 | `seq_profile` + 1 (0 stays "any"), 0 | not negotiated: 0 |
//!
//! GStreamer names them in caps (`profile=main-10`, `level=3.1`); AV1 caps
//! carry a profile only.

use std::fmt;

use crate::profile::{Level, Profile};
use crate::{av1, h265, nal};

/// A codec a guest may ask its host for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Codec {
    /// What every legacy host produces, and what a HELLO without the CODEC
    /// extension means.
    #[default]
    H264 = 0,
    H265 = 1,
    Av1 = 2,
}

/// H.265 profiles by `general_profile_idc`, as GStreamer names them. The
/// range extensions (4) are told apart by constraint flags this protocol
/// does not carry: they are not negotiable.
const H265_PROFILES: [(&str, u8); 3] = [("main", 1), ("main-10", 2), ("main-still-picture", 3)];

/// H.265 levels: `general_level_idc` is 30 × level.
const H265_LEVELS: [(&str, u8); 13] = [
    ("1", 30),
    ("2", 60),
    ("2.1", 63),
    ("3", 90),
    ("3.1", 93),
    ("4", 120),
    ("4.1", 123),
    ("5", 150),
    ("5.1", 153),
    ("5.2", 156),
    ("6", 180),
    ("6.1", 183),
    ("6.2", 186),
];

/// AV1 profiles: `seq_profile` + 1.
const AV1_PROFILES: [(&str, u8); 3] = [("main", 1), ("high", 2), ("professional", 3)];

impl Codec {
    pub const ALL: [Codec; 3] = [Codec::H264, Codec::H265, Codec::Av1];

    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.to_u8() == v)
    }

    /// For people: `H.264`, `H.265`, `AV1`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "H.264",
            Codec::H265 => "H.265",
            Codec::Av1 => "AV1",
        }
    }

    /// The GStreamer media type: `video/x-h264`, `video/x-h265`,
    /// `video/x-av1`.
    pub fn media_type(self) -> &'static str {
        match self {
            Codec::H264 => "video/x-h264",
            Codec::H265 => "video/x-h265",
            Codec::Av1 => "video/x-av1",
        }
    }

    /// The stream-format and alignment of what the host sends back: Annex-B
    /// access units, or temporal units of the low-overhead OBU format.
    pub fn stream_format(self) -> (&'static str, &'static str) {
        match self {
            Codec::H264 | Codec::H265 => ("byte-stream", "au"),
            Codec::Av1 => ("obu-stream", "tu"),
        }
    }

    /// Whether a decoder can start at this access (temporal) unit: an IDR
    /// picture for H.264 and H.265, a shown key frame with its sequence
    /// header for AV1.
    pub fn is_keyframe(self, au: &[u8]) -> bool {
        match self {
            Codec::H264 => nal::has_idr(au),
            Codec::H265 => h265::has_idr(au),
            Codec::Av1 => av1::is_keyframe(au),
        }
    }

    /// What the stream's parameter set in this unit (an SPS, a sequence
    /// header) says, if it has one that parses.
    pub fn stream_info(self, au: &[u8]) -> Option<StreamInfo> {
        match self {
            Codec::H264 => nal::first_sps(au).map(|s| StreamInfo {
                profile: s.profile,
                level: s.level(),
                chroma_format_idc: s.chroma_format_idc,
                bit_depth_luma: s.bit_depth_luma,
                bit_depth_chroma: s.bit_depth_chroma,
            }),
            Codec::H265 => h265::first_sps(au).map(|s| StreamInfo {
                profile: Profile::new(s.profile_idc, 0),
                level: Level(s.level_idc),
                chroma_format_idc: s.chroma_format_idc,
                bit_depth_luma: s.bit_depth_luma,
                bit_depth_chroma: s.bit_depth_chroma,
            }),
            Codec::Av1 => av1::sequence_header(au).map(|s| StreamInfo {
                profile: Profile::new(s.profile + 1, 0),
                level: Level::ANY,
                chroma_format_idc: s.chroma_format_idc(),
                bit_depth_luma: s.bit_depth,
                bit_depth_chroma: s.bit_depth,
            }),
        }
    }

    /// The profile a GStreamer caps name stands for in this codec.
    pub fn profile_from_name(self, name: &str) -> Option<Profile> {
        match self {
            Codec::H264 => Profile::from_name(name),
            Codec::H265 => find_by_name(&H265_PROFILES, name).map(|v| Profile::new(v, 0)),
            Codec::Av1 => find_by_name(&AV1_PROFILES, name).map(|v| Profile::new(v, 0)),
        }
    }

    /// GStreamer's caps name of a profile of this codec.
    pub fn profile_name(self, p: Profile) -> Option<&'static str> {
        match self {
            Codec::H264 => p.name(),
            Codec::H265 => find_by_value(&H265_PROFILES, p.idc),
            Codec::Av1 => find_by_value(&AV1_PROFILES, p.idc),
        }
    }

    /// The level a GStreamer caps name stands for (none for AV1, whose caps
    /// carry no level).
    pub fn level_from_name(self, name: &str) -> Option<Level> {
        match self {
            Codec::H264 => Level::from_name(name),
            Codec::H265 => find_by_name(&H265_LEVELS, name).map(Level),
            Codec::Av1 => None,
        }
    }

    /// GStreamer's caps name of a level of this codec.
    pub fn level_name(self, l: Level) -> Option<&'static str> {
        match self {
            Codec::H264 => l.name(),
            Codec::H265 => find_by_value(&H265_LEVELS, l.0),
            Codec::Av1 => None,
        }
    }

    /// Whether a stream of profile `have` is a `wanted` stream (anything
    /// is [`Profile::ANY`]). H.264 follows its constraint flags
    /// ([`Profile::satisfies`]); the others compare the profile number.
    pub fn satisfies(self, have: Profile, wanted: Profile) -> bool {
        match self {
            Codec::H264 => have.satisfies(wanted),
            _ => wanted.is_any() || have.idc == wanted.idc,
        }
    }

    /// The deepest bits per sample of a 4:2:0 profile this codec's host
    /// sessions produce (they convert every input to 4:2:0); `None` for a
    /// profile they do not produce (4:2:2, 4:4:4, intra-only, unknown).
    pub fn max_bit_depth(self, p: Profile) -> Option<u8> {
        match self {
            Codec::H264 if p.is_8bit_420() => Some(8),
            Codec::H265 if p.idc == 1 => Some(8),
            Codec::H265 if p.idc == 2 => Some(10),
            Codec::Av1 if p.idc == 1 => Some(10),
            _ => None,
        }
    }

    /// A profile for people, in this codec's words.
    pub fn describe_profile(self, p: Profile) -> String {
        if p.is_any() {
            return "any profile".into();
        }
        match (self, self.profile_name(p)) {
            (Codec::H264, _) => p.to_string(),
            (_, Some(n)) => n.to_string(),
            (Codec::H265, None) => format!("general_profile_idc {}", p.idc),
            (Codec::Av1, None) => format!("seq_profile {}", p.idc.wrapping_sub(1)),
        }
    }

    /// A level for people, in this codec's words.
    pub fn describe_level(self, l: Level) -> String {
        match (self, self.level_name(l)) {
            _ if l.is_any() => "any level".into(),
            (Codec::H264, _) => l.to_string(),
            (_, Some(n)) => format!("level {n}"),
            (_, None) => format!("level_idc {}", l.0),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn find_by_name(table: &[(&'static str, u8)], name: &str) -> Option<u8> {
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn find_by_value(table: &[(&'static str, u8)], v: u8) -> Option<&'static str> {
    table.iter().find(|(_, x)| *x == v).map(|(n, _)| *n)
}

/// What a stream's parameter set says, in every codec's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub profile: Profile,
    /// [`Level::ANY`] where the codec's level is not negotiated (AV1).
    pub level: Level,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names() {
        for c in Codec::ALL {
            assert_eq!(Codec::from_u8(c.to_u8()), Some(c));
        }
        assert_eq!(Codec::from_u8(3), None);
        assert_eq!(Codec::default(), Codec::H264);
        assert_eq!(Codec::H265.stream_format(), ("byte-stream", "au"));
        assert_eq!(Codec::Av1.stream_format(), ("obu-stream", "tu"));
        assert_eq!(Codec::Av1.to_string(), "AV1");
    }

    #[test]
    fn profiles_and_levels_by_codec() {
        let main10 = Codec::H265.profile_from_name("main-10").unwrap();
        assert_eq!(main10, Profile::new(2, 0));
        assert_eq!(Codec::H265.profile_name(main10), Some("main-10"));
        assert_eq!(Codec::H265.max_bit_depth(main10), Some(10));
        assert_eq!(Codec::H265.profile_from_name("main-444"), None);
        assert_eq!(Codec::H265.level_from_name("3.1"), Some(Level(93)));
        assert_eq!(Codec::H265.level_name(Level(186)), Some("6.2"));
        assert_eq!(Codec::H264.profile_from_name("main-10"), None);
        let main = Codec::Av1.profile_from_name("main").unwrap();
        assert!(!main.is_any(), "AV1's profile 0 is not 'any' on the wire");
        assert_eq!(Codec::Av1.describe_profile(main), "main");
        assert_eq!(Codec::Av1.level_from_name("3.1"), None);
        assert!(Codec::H265.satisfies(Profile::new(1, 0), Profile::ANY));
        assert!(!Codec::H265.satisfies(Profile::new(1, 0), main10));
        assert_eq!(Codec::H265.describe_level(Level(93)), "level 3.1");
        assert_eq!(
            Codec::H265.describe_profile(Profile::new(4, 0)),
            "general_profile_idc 4"
        );
    }

    #[test]
    fn stream_info_of_each_codec() {
        let h265 = Codec::H265
            .stream_info(crate::h265::tests::X265_IDR)
            .unwrap();
        assert_eq!((h265.profile.idc, h265.level), (1, Level(63)));
        assert!(Codec::H265.is_keyframe(crate::h265::tests::X265_IDR));
        let av1 = Codec::Av1.stream_info(crate::av1::tests::AOM_KEY).unwrap();
        assert_eq!(Codec::Av1.profile_name(av1.profile), Some("main"));
        assert_eq!((av1.chroma_format_idc, av1.bit_depth_luma), (1, 8));
        assert!(Codec::Av1.is_keyframe(crate::av1::tests::AOM_KEY));
        assert!(!Codec::H264.is_keyframe(crate::av1::tests::AOM_KEY));
    }
}
