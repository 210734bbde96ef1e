//! The CODEC extension against the real daemon, at the protocol level: a
//! guest that asks for H.265 or AV1 gets its HELLO_ACK with the codec and
//! that codec's units (keyframes asked for included); a profile request is
//! read in the codec; a daemon without the encoder refuses the codec with
//! its reason, and every frame of that connection, rather than encode it
//! in another codec; a guest that asks for nothing still gets H.264.

mod common;

use common::*;
use hxfr::ext::{ext_bits, ExtMessage, Hello, HelloAck, ProfileRequest};
use hxfr::{Codec, Decoded, Level, Message, Profile};

const WANT: u32 = ext_bits::ERROR_PTS | ext_bits::PROFILE | ext_bits::CODEC;

fn hello(g: &mut ExtGuest, codec: Codec, ext: u32) -> HelloAck {
    g.send(
        &ExtMessage::Hello(Hello {
            version: 1,
            codec: codec.to_u8(),
            extensions: ext,
            agent: "codec-test".into(),
            ..Default::default()
        })
        .encode(1),
    );
    match g.recv() {
        Decoded::Ext(_, ExtMessage::HelloAck(a)) => a,
        other => panic!("expected HELLO_ACK, got {other:?}"),
    }
}

/// Sends `n` NV12 frames (the `force`d ones asking for a keyframe) and
/// returns the units, in the codec's form.
fn stream(g: &mut ExtGuest, codec: Codec, n: u32, force: &[u32]) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let f = test_frame(Fmt::Nv12, 160, 96, 160, i, 3);
            g.send_frame(
                &f.request(i as i64 * 33_333_333, force.contains(&i)),
                &f.pixels,
            );
            g.recv_response().unit(codec)
        })
        .collect()
}

#[test]
fn h265_and_av1_guests_get_their_codec_and_keyframes_when_they_ask() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0"]);
    for codec in [Codec::H265, Codec::Av1] {
        let mut g = ExtGuest::connect(&daemon);
        let ack = hello(&mut g, codec, WANT);
        assert_eq!((ack.codec, ack.extensions & WANT), (codec, WANT), "{codec}");
        assert!(ack.reason.is_empty());
        let units = stream(&mut g, codec, 8, &[0, 5]);
        for (i, u) in units.iter().enumerate() {
            assert_eq!(
                codec.is_keyframe(u),
                i == 0 || i == 5,
                "{codec}: frame {i} is a keyframe only when asked for"
            );
        }
        let info = codec
            .stream_info(&units[5])
            .expect("parameter sets with the keyframe");
        assert_eq!((info.chroma_format_idc, info.bit_depth_luma), (1, 8));
    }
    daemon.wait_log("encoding H.265 with x265enc");
    daemon.wait_log("encoding AV1 with av1enc");
}

#[test]
fn profiles_are_read_in_the_connections_codec() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0"]);
    let mut g = ExtGuest::connect(&daemon);
    hello(&mut g, Codec::H265, WANT);
    let main10 = Codec::H265.profile_from_name("main-10").unwrap();
    let r = g.ask_profile(ProfileRequest {
        token: 1,
        profile: main10,
        max_level: Level::ANY,
        width: 160,
        height: 96,
        framerate_num: 30,
        framerate_den: 1,
    });
    assert!(r.accepted, "{}", r.reason);
    assert_eq!((r.profile, r.encoder.as_str()), (main10, "x265enc"));
    let units = stream(&mut g, Codec::H265, 2, &[0]);
    let info = Codec::H265.stream_info(&units[0]).unwrap();
    assert_eq!((info.profile, info.bit_depth_luma), (main10, 10));
    // 4:4:4 is not produced, and the refusal says so in H.265's words.
    let r = g.ask_profile(ProfileRequest {
        token: 2,
        profile: Profile::new(4, 0),
        ..ProfileRequest::default()
    });
    assert!(!r.accepted);
    assert!(r.reason.contains("H.265"), "{}", r.reason);
}

#[test]
fn a_daemon_without_the_encoder_refuses_the_codec_and_every_frame() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--h265-encoder", "none"]);
    daemon.wait_log("H.265 guests are refused");
    let mut g = ExtGuest::connect(&daemon);
    let ack = hello(&mut g, Codec::H265, WANT);
    assert_eq!(ack.codec, Codec::H264);
    assert_eq!(ack.extensions & ext_bits::CODEC, 0);
    assert!(ack.reason.contains("--h265-encoder none"), "{}", ack.reason);
    // A guest that sends frames anyway gets them refused, not encoded in
    // H.264.
    let f = test_frame(Fmt::Nv12, 160, 96, 160, 0, 1);
    g.send_frame(&f.request(7, true), &f.pixels);
    match g.recv() {
        Decoded::Ext(_, ExtMessage::ErrorPts(e)) => {
            assert_eq!(e.pts, 7);
            assert!(e.message.contains("codec"), "{}", e.message);
        }
        other => panic!("expected ERROR_PTS, got {other:?}"),
    }
    // The same daemon serves H.264 guests, with or without CODEC.
    for ext in [ext_bits::ERROR_PTS, WANT] {
        let mut g = ExtGuest::connect(&daemon);
        let ack = hello(&mut g, Codec::H264, ext);
        assert_eq!(ack.codec, Codec::H264);
        let units = stream(&mut g, Codec::H264, 1, &[]);
        assert!(Codec::H264.is_keyframe(&units[0]));
    }
    // And a legacy guest (no HELLO at all) too.
    let mut c = Client::tcp(daemon.tcp());
    let f = test_frame(Fmt::Nv12, 160, 96, 160, 0, 1);
    c.send_frame(&f.request(1, false), &f.pixels);
    assert!(matches!(c.recv().1, Message::FrameResponse(_)));
}
