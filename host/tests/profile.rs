//! The PROFILE extension against the real daemon: a guest asks for an
//! H.264 profile (and the highest level it accepts), the daemon answers
//! with what its encoder produces or why it cannot, and the stream's SPS
//! then says exactly that (issue 12, defect 2).

mod common;

use common::*;
use hxfr::ext::{ext_bits, ProfileRequest, ProfileResponse};
use hxfr::nal::{first_sps, Sps};
use hxfr::{Decoded, Level, Message, Profile};

const WANT: u32 = ext_bits::PROFILE | ext_bits::ERROR_PTS;

fn request(token: u64, profile: Profile, max_level: Level, (w, h): (u32, u32)) -> ProfileRequest {
    ProfileRequest {
        token,
        profile,
        max_level,
        width: w,
        height: h,
        framerate_num: 30,
        framerate_den: 1,
    }
}

/// Streams `n` NV12 frames of `w` x `h`, the first one forced to a
/// keyframe (as the element does), and returns the SPS of the first
/// response, after checking that every response decodes.
fn stream_sps(g: &mut ExtGuest, (w, h): (u32, u32), n: u32, seed: u32) -> Sps {
    let frames: Vec<_> = (0..n)
        .map(|t| {
            let f = test_frame(Fmt::Nv12, w, h, w, t, seed);
            let req = f.request(t as i64, t == 0);
            (f.pixels, req)
        })
        .collect();
    let responses = g.stream(&frames, 2);
    assert!(responses[0].is_keyframe, "the forced frame is an IDR");
    let aus: Vec<Vec<u8>> = responses.iter().map(|r| r.annexb()).collect();
    assert_eq!(
        decode_to(&aus, "I420").len(),
        n as usize,
        "every frame decodes"
    );
    first_sps(&aus[0]).expect("an SPS in the first access unit")
}

fn assert_accepted(r: &ProfileResponse, encoder: &str, wanted: Profile) {
    assert!(r.accepted, "{wanted} refused: {}", r.reason);
    assert_eq!(r.encoder, encoder);
    assert!(r.reason.is_empty(), "{:?}", r.reason);
    assert!(
        r.profile.satisfies(wanted),
        "{encoder} answered {} for {wanted}",
        r.profile
    );
}

/// For each profile a WebRTC peer or a player asks for, both software
/// encoders produce it and say so; the SPS agrees with the answer.
#[test]
fn each_profile_asked_for_is_the_profile_of_the_stream() {
    for encoder in ["x264enc", "openh264enc"] {
        let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", encoder]);
        let mut g = ExtGuest::connect(&daemon);
        assert_eq!(g.hello(WANT), WANT);
        let size = (160, 96);
        for (i, name) in ["constrained-baseline", "baseline", "main", "high"]
            .into_iter()
            .enumerate()
        {
            let wanted = Profile::from_name(name).unwrap();
            let r = g.ask_profile(request(i as u64 + 1, wanted, Level::ANY, size));
            assert_accepted(&r, encoder, wanted);
            assert!(
                !r.level.is_any(),
                "{encoder} {name}: the trial tells the level"
            );
            let sps = stream_sps(&mut g, size, 6, i as u32);
            assert!(
                sps.profile.satisfies(wanted),
                "{encoder}: asked for {name}, the SPS says {}",
                sps.profile
            );
            assert_eq!(
                sps.profile, r.profile,
                "{encoder} {name}: the answer is the SPS's"
            );
            assert_eq!(sps.level(), r.level, "{encoder} {name}");
            assert_eq!((sps.chroma_format_idc, sps.bit_depth_luma), (1, 8));
        }
        daemon.wait_log_count("new encoding session", 3);
    }
}

/// A level in the request is the highest the guest accepts: x264enc writes
/// it; openh264enc may need a higher one for the picture, which is refused
/// before any frame rather than sent mislabelled.
#[test]
fn levels_are_honoured_or_refused_with_the_reason() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut g = ExtGuest::connect(&daemon);
    g.hello(WANT);
    // WebRTC's profile-level-id=42e01f: constrained baseline, level 3.1.
    let webrtc = Profile::new(0x42, 0xe0);
    let r = g.ask_profile(request(1, webrtc, Level(0x1f), (640, 360)));
    assert_accepted(&r, "x264enc", Profile::CONSTRAINED_BASELINE);
    assert_eq!(r.level, Level(31));
    let sps = stream_sps(&mut g, (640, 360), 4, 1);
    assert_eq!(sps.profile_name(), Some("constrained-baseline"));
    assert_eq!(sps.level_name(), Some("3.1"));
    // 1280x720 at 30 fps is more than level 1 allows.
    let r = g.ask_profile(request(2, Profile::MAIN, Level(10), (1280, 720)));
    assert!(!r.accepted);
    assert_eq!(r.profile, Profile::ANY);
    assert!(
        r.reason.starts_with(
            "x264enc cannot produce H.264 main up to level 1 for 1280x720 at 30/1 fps"
        ),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("not-negotiated"), "{}", r.reason);
    // The refusal left the accepted profile, and the session, in force.
    let sessions = daemon.log().matches("encoding 640x360").count();
    let sps = stream_sps(&mut g, (640, 360), 3, 2);
    assert_eq!(sps.profile_name(), Some("constrained-baseline"));
    assert_eq!(daemon.log().matches("encoding 640x360").count(), sessions);

    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "openh264enc"]);
    let mut g = ExtGuest::connect(&daemon);
    g.hello(WANT);
    let r = g.ask_profile(request(1, Profile::MAIN, Level(30), (1280, 720)));
    assert!(!r.accepted);
    assert_eq!(
        r.reason,
        "openh264enc produces level 3.1 for 1280x720 at 30/1 fps, above the highest level accepted (level 3)"
    );
    let r = g.ask_profile(request(2, Profile::MAIN, Level(31), (1280, 720)));
    assert_accepted(&r, "openh264enc", Profile::MAIN);
    assert_eq!(r.level, Level(31));
}

/// What an encoder cannot produce is refused before any frame, naming the
/// encoder and why.
#[test]
fn impossible_profiles_are_refused_naming_why() {
    for encoder in ["x264enc", "openh264enc"] {
        let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", encoder]);
        let mut g = ExtGuest::connect(&daemon);
        g.hello(WANT);
        let r = g.ask_profile(request(
            1,
            Profile::from_name("extended").unwrap(),
            Level::ANY,
            (320, 240),
        ));
        assert!(!r.accepted);
        assert_eq!(r.encoder, encoder);
        assert!(
            r.reason.starts_with(&format!(
                "{encoder} cannot produce H.264 extended (it offers profile "
            )),
            "{}",
            r.reason
        );
        assert!(
            r.reason.contains("main"),
            "the offer lists the profiles: {}",
            r.reason
        );
        let r = g.ask_profile(request(
            2,
            Profile::from_name("high-4:2:2").unwrap(),
            Level::ANY,
            (320, 240),
        ));
        assert!(!r.accepted);
        assert_eq!(
            r.reason,
            "vsockenc-host encodes 4:2:0 video only (8-bit), not H.264 profile high-4:2:2"
        );
        let r = g.ask_profile(request(3, Profile::new(7, 0), Level::ANY, (320, 240)));
        assert!(!r.accepted);
        assert!(r.reason.contains("profile_idc 7"), "{}", r.reason);
        daemon.wait_log("PROFILE_REQ 3 (profile_idc 7");
    }
}

/// A guest that never asks gets today's stream; one that did not negotiate
/// PROFILE gets no answer to a PROFILE_REQ (it is not its to send).
#[test]
fn without_the_extension_nothing_changes() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut legacy = Client::tcp(daemon.tcp());
    let frames: Vec<_> = (0..3)
        .map(|t| (test_frame(Fmt::Nv12, 64, 48, 64, t, 1), t as i64, false))
        .collect();
    let r = stream_frames(&mut legacy, &frames, 1);
    let sps = first_sps(&r[0].annexb()).unwrap();
    assert_eq!(
        sps.profile_name(),
        Some("high"),
        "x264enc's default, as before"
    );

    let mut g = ExtGuest::connect(&daemon);
    assert_eq!(g.hello(ext_bits::ERROR_PTS), ext_bits::ERROR_PTS);
    g.send(
        &hxfr::ext::ExtMessage::ProfileRequest(request(9, Profile::BASELINE, Level::ANY, (64, 48)))
            .encode(1),
    );
    g.send(&Message::Ping.encode(5));
    assert!(
        matches!(g.recv(), Decoded::Legacy(_, Message::Pong)),
        "no PROFILE_RESP for a guest that did not negotiate PROFILE"
    );
    let sps = stream_sps(&mut g, (64, 48), 2, 3);
    assert_eq!(sps.profile_name(), Some("high"));
    daemon.wait_log("ignored PROFILE_REQ");
}
