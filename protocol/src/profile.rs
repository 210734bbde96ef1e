//! H.264 profiles and levels as a sequence parameter set states them, and
//! the names GStreamer gives them in `video/x-h264` caps.
//!
//! A [`Profile`] is the SPS's `profile_idc` with its byte of
//! `constraint_set` flags: the first two bytes of an SDP `profile-level-id`
//! (`42e01f` is profile_idc 0x42, flags 0xe0, level 0x1f). The flags say
//! which further constraints the stream obeys, so one profile_idc covers
//! several profiles (66 with `constraint_set1` is constrained baseline).
//!
//! A [`Level`] is `10 × level`, with level 1b as 9, the convention of
//! GStreamer's codec utilities (an SPS writes 1b either as 9 or, in the
//! Baseline, Main and Extended profiles, as 11 with `constraint_set3`;
//! [`Level::from_sps`] turns both into 9).

use std::cmp::Ordering;
use std::fmt;

/// Bits of [`Profile::constraints`], as in the SPS (`constraint_set0_flag`
/// is the most significant bit).
pub mod constraint {
    pub const SET0: u8 = 0x80;
    pub const SET1: u8 = 0x40;
    pub const SET2: u8 = 0x20;
    pub const SET3: u8 = 0x10;
    pub const SET4: u8 = 0x08;
    pub const SET5: u8 = 0x04;
}

/// An H.264 profile: `profile_idc` and the `constraint_set` flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Profile {
    pub idc: u8,
    pub constraints: u8,
}

/// GStreamer's profile names and the profile each names. Where one name
/// needs a flag (constrained-baseline: `constraint_set1`), the flag is set;
/// the plain name of the same profile_idc comes after it.
const NAMES: [(&str, Profile); 22] = [
    ("constrained-baseline", Profile::new(66, constraint::SET1)),
    ("baseline", Profile::new(66, 0)),
    ("main", Profile::new(77, 0)),
    ("extended", Profile::new(88, 0)),
    (
        "constrained-high",
        Profile::new(100, constraint::SET4 | constraint::SET5),
    ),
    ("progressive-high", Profile::new(100, constraint::SET4)),
    ("high", Profile::new(100, 0)),
    ("high-10-intra", Profile::new(110, constraint::SET3)),
    ("progressive-high-10", Profile::new(110, constraint::SET4)),
    ("high-10", Profile::new(110, 0)),
    ("high-4:2:2-intra", Profile::new(122, constraint::SET3)),
    ("high-4:2:2", Profile::new(122, 0)),
    ("high-4:4:4-intra", Profile::new(244, constraint::SET3)),
    ("high-4:4:4", Profile::new(244, 0)),
    ("cavlc-4:4:4-intra", Profile::new(44, 0)),
    ("multiview-high", Profile::new(118, 0)),
    ("stereo-high", Profile::new(128, 0)),
    (
        "scalable-constrained-baseline",
        Profile::new(83, constraint::SET5),
    ),
    ("scalable-baseline", Profile::new(83, 0)),
    ("scalable-high-intra", Profile::new(86, constraint::SET3)),
    (
        "scalable-constrained-high",
        Profile::new(86, constraint::SET5),
    ),
    ("scalable-high", Profile::new(86, 0)),
];

impl Profile {
    /// "Whatever the encoder produces" in a request.
    pub const ANY: Profile = Profile::new(0, 0);
    pub const CONSTRAINED_BASELINE: Profile = Profile::new(66, constraint::SET1);
    pub const BASELINE: Profile = Profile::new(66, 0);
    pub const MAIN: Profile = Profile::new(77, 0);
    pub const HIGH: Profile = Profile::new(100, 0);
    pub const CONSTRAINED_HIGH: Profile = Profile::new(100, constraint::SET4 | constraint::SET5);

    pub const fn new(idc: u8, constraints: u8) -> Profile {
        Profile { idc, constraints }
    }

    pub fn is_any(self) -> bool {
        self.idc == 0
    }

    /// The profile a GStreamer caps name (`constrained-baseline`, `main`,
    /// `high`, …) stands for.
    pub fn from_name(name: &str) -> Option<Profile> {
        NAMES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    /// GStreamer's caps name of a stream whose SPS says this: the most
    /// specific profile whose flags are all set (66 with `constraint_set1`
    /// is `constrained-baseline`, 100 with `constraint_set4` and `5` is
    /// `constrained-high`). `None` for a profile_idc GStreamer has no name
    /// for.
    pub fn name(self) -> Option<&'static str> {
        self.named().map(|(n, _)| n)
    }

    /// The entry of `NAMES` this profile is: its name and the flags that
    /// make it that profile.
    fn named(self) -> Option<(&'static str, Profile)> {
        NAMES
            .iter()
            .find(|(_, p)| p.idc == self.idc && self.constraints & p.constraints == p.constraints)
            .copied()
    }

    /// Whether a stream of this profile is a `wanted` stream: the same
    /// profile_idc, with the flags that make `wanted` the profile it is (a
    /// constrained-baseline stream is a baseline stream, a baseline one is
    /// not constrained-baseline). Other flags do not matter: WebRTC's
    /// `42e0` (constraint_set0, 1 and 2) asks for constrained baseline,
    /// which x264's `42c0` is. Anything satisfies [`Profile::ANY`].
    pub fn satisfies(self, wanted: Profile) -> bool {
        if wanted.is_any() {
            return true;
        }
        let needed = wanted
            .named()
            .map_or(wanted.constraints, |(_, p)| p.constraints);
        self.idc == wanted.idc && self.constraints & needed == needed
    }

    /// Whether the profile codes 8-bit 4:2:0 video at most (what
    /// `vsockenc-host` produces): Baseline, Main, Extended and the High
    /// profile family without its 10-bit, 4:2:2 and 4:4:4 members.
    pub fn is_8bit_420(self) -> bool {
        matches!(self.idc, 66 | 77 | 88 | 100)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            return f.write_str("any profile");
        }
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(
                f,
                "profile_idc {} (constraints 0x{:02x})",
                self.idc, self.constraints
            ),
        }
    }
}

/// An H.264 level as `10 × level`, 9 for level 1b; 0 means unknown or, in a
/// request, any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Level(pub u8);

const LEVELS: [(&str, u8); 20] = [
    ("1", 10),
    ("1b", 9),
    ("1.1", 11),
    ("1.2", 12),
    ("1.3", 13),
    ("2", 20),
    ("2.1", 21),
    ("2.2", 22),
    ("3", 30),
    ("3.1", 31),
    ("3.2", 32),
    ("4", 40),
    ("4.1", 41),
    ("4.2", 42),
    ("5", 50),
    ("5.1", 51),
    ("5.2", 52),
    ("6", 60),
    ("6.1", 61),
    ("6.2", 62),
];

impl Level {
    pub const ANY: Level = Level(0);
    pub const L1B: Level = Level(9);

    /// The level of an SPS's `level_idc` in a stream of `profile`: level
    /// 1b is written as 11 with `constraint_set3` in Baseline, Main and
    /// Extended streams.
    pub fn from_sps(level_idc: u8, profile: Profile) -> Level {
        let one_b = level_idc == 11
            && profile.constraints & constraint::SET3 != 0
            && matches!(profile.idc, 66 | 77 | 88);
        Level(if one_b { 9 } else { level_idc })
    }

    pub fn is_any(self) -> bool {
        self.0 == 0
    }

    /// A GStreamer caps level (`"1b"`, `"3.1"`, `"4"`).
    pub fn from_name(name: &str) -> Option<Level> {
        LEVELS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| Level(*v))
    }

    /// GStreamer's name of this level; `None` for 0 and undefined values.
    pub fn name(self) -> Option<&'static str> {
        LEVELS.iter().find(|(_, v)| *v == self.0).map(|(n, _)| *n)
    }

    /// Position in the order of levels: 1 < 1b < 1.1 < … (undefined values
    /// sort by their number).
    fn rank(self) -> u16 {
        if self.0 == 9 {
            21 // between 1 (20) and 1.1 (22)
        } else {
            self.0 as u16 * 2
        }
    }

    /// Whether a stream of this level is within `max` ([`Level::ANY`]
    /// accepts everything; an unknown level fits nothing but `ANY`).
    pub fn fits(self, max: Level) -> bool {
        max.is_any() || (!self.is_any() && self <= max)
    }
}

impl PartialOrd for Level {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Level {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            _ if self.is_any() => f.write_str("any level"),
            Some(n) => write!(f, "level {n}"),
            None => write!(f, "level_idc {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_follow_the_flags() {
        for (name, p) in NAMES {
            assert_eq!(Profile::from_name(name), Some(p), "{name}");
            assert_eq!(p.name(), Some(name), "{name}");
        }
        // What x264 writes for "baseline": constraint_set0 and 1, which is
        // constrained baseline (and satisfies a baseline request).
        let x264_baseline = Profile::new(66, 0xc0);
        assert_eq!(x264_baseline.name(), Some("constrained-baseline"));
        assert!(x264_baseline.satisfies(Profile::BASELINE));
        assert!(x264_baseline.satisfies(Profile::CONSTRAINED_BASELINE));
        assert!(!Profile::BASELINE.satisfies(Profile::CONSTRAINED_BASELINE));
        let webrtc = Profile::new(0x42, 0xe0);
        assert!(
            x264_baseline.satisfies(webrtc),
            "42c0 is what 42e0 asks for"
        );
        assert!(!Profile::new(0x42, 0xa0).satisfies(webrtc));
        // openh264's high: constraint_set4 and 5, constrained high.
        let oh_high = Profile::new(100, 0x0c);
        assert_eq!(oh_high.name(), Some("constrained-high"));
        assert!(oh_high.satisfies(Profile::HIGH));
        assert!(!Profile::MAIN.satisfies(Profile::HIGH));
        assert!(!Profile::HIGH.satisfies(Profile::MAIN));
        assert!(Profile::MAIN.satisfies(Profile::ANY));
        assert_eq!(Profile::new(100, 0x08).name(), Some("progressive-high"));
        assert_eq!(Profile::new(77, 0x4c).name(), Some("main"));
        assert_eq!(Profile::new(7, 0).name(), None);
        assert_eq!(Profile::from_name("High"), None);
        assert!(Profile::HIGH.is_8bit_420() && !Profile::new(122, 0).is_8bit_420());
        assert_eq!(
            Profile::new(7, 0x40).to_string(),
            "profile_idc 7 (constraints 0x40)"
        );
    }

    #[test]
    fn levels_name_and_order() {
        for (name, v) in LEVELS {
            assert_eq!(Level::from_name(name), Some(Level(v)));
            assert_eq!(Level(v).name(), Some(name));
        }
        assert!(Level(10) < Level::L1B && Level::L1B < Level(11));
        assert!(Level(31) < Level(40));
        assert!(Level(31).fits(Level(31)) && Level(31).fits(Level::ANY));
        assert!(!Level(32).fits(Level(31)));
        assert!(
            !Level::ANY.fits(Level(31)),
            "an unknown level fits no limit"
        );
        assert_eq!(Level::from_sps(11, Profile::new(66, 0x50)), Level::L1B);
        assert_eq!(Level::from_sps(11, Profile::new(66, 0x40)), Level(11));
        assert_eq!(
            Level::from_sps(11, Profile::new(110, constraint::SET3)),
            Level(11),
            "constraint_set3 means intra in the High 10 profile, not 1b"
        );
        assert_eq!(Level::from_sps(9, Profile::HIGH), Level::L1B);
        assert_eq!(Level(31).to_string(), "level 3.1");
        assert_eq!(Level(0).to_string(), "any level");
        assert_eq!(Level(77).to_string(), "level_idc 77");
    }
}
