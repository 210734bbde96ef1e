//! The profile and level of the output: what downstream accepts, what the
//! host is asked for, and what the stream actually is. Names and numbers
//! are the element's codec's ([`Codec`]: H.264, H.265 profile and level,
//! AV1 profile only).
//!
//! Downstream says which profiles (in its order of preference) and the
//! highest level it accepts, through the caps it allows on the src pad (a
//! WebRTC payloader turns the SDP's `profile-level-id=42e01f` into
//! `profile=constrained-baseline, level=3.1`). A host that accepted the
//! PROFILE extension is asked for each profile in turn and says what it will
//! produce, or why it cannot; the element's caps then carry the profile and
//! level produced. A legacy host cannot be asked: its stream is labelled
//! from the SPS of the first keyframe, and refused if downstream does not
//! accept what it is. Either way the SPS of every keyframe is checked
//! against the caps, so a stream is never mislabelled.

use hxfr::profile::{Level, Profile};
use hxfr::Codec;

/// What downstream accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Profile names in downstream's order of preference; empty: any.
    pub profiles: Vec<String>,
    /// The highest level any accepted structure allows ([`Level::ANY`]:
    /// no limit).
    pub max_level: Level,
}

/// The strings of a caps field that is a string or a list of strings.
fn strings(s: &gst::StructureRef, field: &str) -> Option<Vec<String>> {
    if let Ok(v) = s.get::<String>(field) {
        return Some(vec![v]);
    }
    let list = s.get::<gst::List>(field).ok()?;
    Some(list.iter().filter_map(|v| v.get::<String>().ok()).collect())
}

impl Wanted {
    /// From the caps downstream allows on the src pad (already intersected
    /// with the template).
    pub fn from_caps(allowed: &gst::CapsRef, codec: Codec) -> Wanted {
        let mut profiles: Vec<String> = Vec::new();
        let mut any_profile = allowed.is_empty() || allowed.is_any();
        let mut max_level = Some(Level::ANY);
        let mut levels_seen = false;
        for s in allowed.iter() {
            match strings(s, "profile") {
                Some(list) => {
                    for p in list {
                        if !profiles.contains(&p) {
                            profiles.push(p);
                        }
                    }
                }
                None => any_profile = true,
            }
            match strings(s, "level")
                .map(|l| l.iter().filter_map(|n| codec.level_from_name(n)).max())
            {
                Some(Some(l)) => {
                    levels_seen = true;
                    max_level = max_level.map(|m| if m.is_any() { l } else { m.max(l) });
                }
                // A structure without a level limit lifts the limit.
                _ => max_level = None,
            }
        }
        Wanted {
            profiles: if any_profile { Vec::new() } else { profiles },
            max_level: match max_level {
                Some(l) if levels_seen => l,
                _ => Level::ANY,
            },
        }
    }

    /// The profiles to ask the host for, in order: downstream's (the
    /// names GStreamer knows), or "any" when downstream does not care.
    pub fn requests(&self, codec: Codec) -> Vec<(Option<&str>, Profile)> {
        if self.profiles.is_empty() {
            return vec![(None, Profile::ANY)];
        }
        self.profiles
            .iter()
            .filter_map(|n| codec.profile_from_name(n).map(|p| (Some(n.as_str()), p)))
            .collect()
    }
}

/// The profile and level the src caps carry (`None`: not stated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Label {
    pub profile: Option<String>,
    pub level: Option<String>,
}

impl Label {
    /// The label of a stream whose parameter set says `profile` and
    /// `level`.
    pub fn of_stream(codec: Codec, profile: Profile, level: Level) -> Label {
        Label {
            profile: codec.profile_name(profile).map(str::to_string),
            level: codec.level_name(level).map(str::to_string),
        }
    }

    /// Whether a stream whose parameter set says `profile` and `level` is
    /// what this label says: the same level, and a profile that is the
    /// labelled one (a constrained-baseline stream is a baseline stream).
    pub fn matches(&self, codec: Codec, profile: Profile, level: Level) -> bool {
        let profile_ok = match self
            .profile
            .as_deref()
            .and_then(|n| codec.profile_from_name(n))
        {
            Some(p) => codec.satisfies(profile, p),
            None => false,
        };
        profile_ok && self.level.as_deref() == codec.level_name(level)
    }

    /// `caps` with the label's fields set (or removed).
    pub fn apply(&self, caps: &mut gst::Caps) {
        let caps = caps.make_mut();
        for s in caps.iter_mut() {
            match &self.profile {
                Some(p) => s.set("profile", p),
                None => s.remove_field("profile"),
            }
            match &self.level {
                Some(l) => s.set("level", l),
                None => s.remove_field("level"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(s: &str) -> gst::Caps {
        gst::init().unwrap();
        s.parse().unwrap()
    }

    #[test]
    fn downstream_without_a_profile_takes_any() {
        let w = Wanted::from_caps(
            &caps("video/x-h264, stream-format=byte-stream"),
            Codec::H264,
        );
        assert!(w.profiles.is_empty());
        assert_eq!(w.max_level, Level::ANY);
        assert_eq!(w.requests(Codec::H264), vec![(None, Profile::ANY)]);
    }

    #[test]
    fn a_webrtc_payloader_asks_for_constrained_baseline_up_to_a_level() {
        let w = Wanted::from_caps(&caps(
            "video/x-h264, profile=(string)constrained-baseline, level=(string){ 1, 1b, 1.1, 3.1 }",
        ), Codec::H264);
        assert_eq!(w.profiles, vec!["constrained-baseline".to_string()]);
        assert_eq!(w.max_level, Level::from_name("3.1").unwrap());
        assert_eq!(
            w.requests(Codec::H264),
            vec![(Some("constrained-baseline"), Profile::CONSTRAINED_BASELINE)]
        );
    }

    #[test]
    fn profiles_keep_downstreams_order_and_any_structure_without_one_wins() {
        let w = Wanted::from_caps(&caps(
            "video/x-h264, profile=(string){ main, high }; video/x-h264, profile=(string)baseline",
        ), Codec::H264);
        assert_eq!(w.profiles, vec!["main", "high", "baseline"]);
        let w = Wanted::from_caps(
            &caps("video/x-h264, profile=(string)main; video/x-h264"),
            Codec::H264,
        );
        assert!(
            w.profiles.is_empty(),
            "the second structure takes any profile"
        );
    }

    #[test]
    fn a_label_matches_the_stream_it_names() {
        let l = Label::of_stream(
            Codec::H264,
            Profile::CONSTRAINED_BASELINE,
            Level::from_name("3.1").unwrap(),
        );
        assert_eq!(l.profile.as_deref(), Some("constrained-baseline"));
        assert!(l.matches(
            Codec::H264,
            Profile::new(66, 0xc0),
            Level::from_name("3.1").unwrap()
        ));
        assert!(!l.matches(Codec::H264, Profile::HIGH, Level::from_name("3.1").unwrap()));
        assert!(!l.matches(
            Codec::H264,
            Profile::CONSTRAINED_BASELINE,
            Level::from_name("4").unwrap()
        ));
        let baseline = Label {
            profile: Some("baseline".into()),
            level: Some("3.1".into()),
        };
        assert!(
            baseline.matches(
                Codec::H264,
                Profile::CONSTRAINED_BASELINE,
                Level::from_name("3.1").unwrap()
            ),
            "a constrained-baseline stream is a baseline stream"
        );
        assert!(!Label::default().matches(Codec::H264, Profile::HIGH, Level::ANY));
    }

    #[test]
    fn h265_and_av1_profiles_and_levels_are_read_in_their_codec() {
        let w = Wanted::from_caps(
            &caps("video/x-h265, profile=(string){ main-10, main }, level=(string){ 3, 4.1 }"),
            Codec::H265,
        );
        assert_eq!(w.max_level, Level(123));
        assert_eq!(
            w.requests(Codec::H265),
            vec![
                (Some("main-10"), Profile::new(2, 0)),
                (Some("main"), Profile::new(1, 0))
            ]
        );
        let l = Label::of_stream(Codec::H265, Profile::new(2, 0), Level(93));
        assert_eq!(
            (l.profile.as_deref(), l.level.as_deref()),
            (Some("main-10"), Some("3.1"))
        );
        assert!(l.matches(Codec::H265, Profile::new(2, 0), Level(93)));
        assert!(!l.matches(Codec::H265, Profile::new(1, 0), Level(93)));
        // AV1 caps carry a profile, no level.
        let w = Wanted::from_caps(&caps("video/x-av1, profile=(string)main"), Codec::Av1);
        assert_eq!(
            w.requests(Codec::Av1),
            vec![(Some("main"), Profile::new(1, 0))]
        );
        let l = Label::of_stream(Codec::Av1, Profile::new(1, 0), Level::ANY);
        assert_eq!(
            (l.profile.as_deref(), l.level.as_deref()),
            (Some("main"), None)
        );
        assert!(l.matches(Codec::Av1, Profile::new(1, 0), Level::ANY));
    }

    #[test]
    fn apply_sets_and_removes_fields() {
        let mut c = caps("video/x-h264, profile=(string)high, level=(string)4");
        Label {
            profile: Some("main".into()),
            level: None,
        }
        .apply(&mut c);
        let s = c.structure(0).unwrap();
        assert_eq!(s.get::<String>("profile").unwrap(), "main");
        assert!(!s.has_field("level"));
    }
}
