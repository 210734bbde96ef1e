//! Frames in every wire format come back as decodable H.264 that matches
//! what was sent.

mod common;

use common::*;
use hxfr::{ConfigRequest, Message};

const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// Types of the NAL units of an Annex-B access unit.
fn nal_types(au: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            types.push(au[i + 3] & 0x1f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

/// profile_idc of the first SPS in an Annex-B access unit.
fn sps_profile(au: &[u8]) -> u8 {
    let at = au
        .windows(4)
        .position(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == NAL_SPS)
        .expect("an SPS");
    au[at + 4]
}

/// Sends `count` frames of one format and size (pts from `pts_of`), checks
/// the responses and the decoded pictures; returns the mean PSNR.
fn check_segment(
    client: &mut Client,
    fmt: Fmt,
    (w, h, stride): (u32, u32, u32),
    count: u32,
    seed: u32,
    pts_of: impl Fn(u32) -> i64,
) -> f64 {
    let frames: Vec<_> = (0..count)
        .map(|t| (test_frame(fmt, w, h, stride, t, seed), pts_of(t), false))
        .collect();
    let responses = stream_frames(client, &frames, 4);
    for (i, (r, (_, pts, _))) in responses.iter().zip(&frames).enumerate() {
        assert_eq!(
            r.pts, *pts,
            "{fmt:?} {w}x{h}: response {i} echoes its request's pts"
        );
        assert_eq!(r.dts, r.pts, "no B-frames: dts equals pts");
        assert_eq!(r.chunks.len(), 1, "one Annex-B chunk per response");
        assert!(r.chunks[0].starts_with(&[0, 0, 0, 1]) || r.chunks[0].starts_with(&[0, 0, 1]));
    }
    assert!(
        responses[0].is_keyframe,
        "a new session starts with a keyframe"
    );
    let types = nal_types(&responses[0].chunks[0]);
    assert!(
        types.contains(&NAL_SPS) && types.contains(&NAL_PPS),
        "SPS/PPS in-band: {types:?}"
    );
    let profile = sps_profile(&responses[0].chunks[0]);
    assert!(
        [66, 77, 100].contains(&profile),
        "{fmt:?}: a 4:2:0 profile any decoder plays, not profile_idc {profile}"
    );
    // Decode with sequential timestamps: the guest's pts need not be monotonic.
    let aus: Vec<(i64, Vec<u8>)> = responses
        .iter()
        .enumerate()
        .map(|(i, r)| (i as i64 * 33_333_333, r.annexb()))
        .collect();
    let pictures = decode(&aus, fmt);
    assert_eq!(
        pictures.len(),
        frames.len(),
        "{fmt:?} {w}x{h}: one picture per frame"
    );
    let mut sum = 0.0;
    for (i, (p, (f, _, _))) in pictures.iter().zip(&frames).enumerate() {
        assert_eq!(
            p.pts,
            Some(i as u64 * 33_333_333),
            "pictures come out in order"
        );
        assert_eq!((p.width, p.height), (w + w % 2, h + h % 2), "coded size");
        let db = psnr(f, p);
        assert!(
            db > 30.0,
            "{fmt:?} {w}x{h} stride {stride} frame {i}: PSNR {db:.1} dB"
        );
        sum += db;
    }
    sum / count as f64
}

#[test]
fn every_format_and_odd_sizes_with_padded_strides_decode_to_the_input() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut client = Client::tcp(daemon.tcp());
    // One connection switching format and size: each change re-creates the
    // session. Strides are padded beyond the row size.
    let cases = [
        (Fmt::Bgrx, (64, 48, 64 * 4)),
        (Fmt::Bgra, (97, 61, 97 * 4 + 12)),
        (Fmt::Rgbx, (160, 90, 160 * 4 + 64)),
        (Fmt::Rgba, (33, 17, 33 * 4 + 4)),
        (Fmt::Nv12, (64, 48, 64)),
        (Fmt::Nv12, (97, 61, 98 + 6)),
        (Fmt::Nv12, (35, 21, 36)),
        (Fmt::Bgrx, (64, 48, 64 * 4)),
    ];
    for (i, (fmt, size)) in cases.into_iter().enumerate() {
        let base = i as i64 * 1_000_000_000;
        let db = if i % 2 == 0 {
            check_segment(&mut client, fmt, size, 8, i as u32, |t| {
                base + t as i64 * 33_333_333
            })
        } else {
            // Non-monotonic, repeating guest pts: responses still map 1:1.
            check_segment(&mut client, fmt, size, 8, i as u32, |t| {
                base - (t as i64 % 3) * 7
            })
        };
        eprintln!("{fmt:?} {size:?}: mean PSNR {db:.1} dB");
    }
    client.ping(9);
    assert!(daemon.log().contains("new encoding session"));
}

#[test]
fn many_concurrent_clients_each_get_their_own_stream() {
    let dir = scratch("concurrent");
    let sock = dir.join("host.sock");
    let sock_arg = format!("unix:{}", sock.display());
    let daemon = Daemon::start(&[
        "--listen",
        "tcp:127.0.0.1:0",
        "--listen",
        &sock_arg,
        "--encoder",
        "x264enc",
    ]);
    let tcp = daemon.tcp();
    let handles: Vec<_> = (0..6u32)
        .map(|seed| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut client = if seed % 2 == 0 {
                    Client::tcp(tcp)
                } else {
                    Client::unix(&sock)
                };
                let fmt = [Fmt::Bgrx, Fmt::Nv12, Fmt::Rgba][seed as usize % 3];
                let w = 96 + 16 * seed;
                let stride = if fmt == Fmt::Nv12 { w } else { 4 * w };
                let frames: Vec<_> = (0..12)
                    .map(|t| {
                        let f = test_frame(fmt, w, 64, stride, t, seed);
                        (f, seed as i64 * 1000 + t as i64, false)
                    })
                    .collect();
                let responses = stream_frames(&mut client, &frames, 4);
                for (r, (_, pts, _)) in responses.iter().zip(&frames) {
                    assert_eq!(r.pts, *pts, "client {seed} got its own pts");
                }
                let aus: Vec<_> = responses
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i as i64 * 33_333_333, r.annexb()))
                    .collect();
                let pictures = decode(&aus, fmt);
                assert_eq!(pictures.len(), frames.len());
                for (p, (f, _, _)) in pictures.iter().zip(&frames) {
                    assert_eq!(p.width, w, "client {seed} got its own size");
                    let db = psnr(f, p);
                    assert!(db > 30.0, "client {seed}: PSNR {db:.1} dB");
                    // The comparison discriminates: another seed's picture
                    // is far off.
                    let other = test_frame(fmt, w, 64, stride, 0, seed + 100);
                    assert!(psnr(&other, p) < 25.0);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

#[test]
fn openh264enc_works() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "openh264enc"]);
    assert!(daemon.log().contains("encoder: openh264enc"));
    let mut client = Client::tcp(daemon.tcp());
    check_segment(&mut client, Fmt::Bgrx, (128, 96, 128 * 4), 8, 1, |t| {
        t as i64
    });
    check_segment(&mut client, Fmt::Nv12, (66, 50, 72), 8, 2, |t| {
        100 + t as i64
    });
}

#[test]
fn keyframes_come_when_asked_for() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut client = Client::tcp(daemon.tcp());
    // Frame 0 is forced too: the element always forces a new session's first frame.
    let forced = [0usize, 10, 17];
    let frames: Vec<_> = (0..30u32)
        .map(|t| {
            let f = test_frame(Fmt::Nv12, 64, 48, 64, t, 3);
            (f, t as i64, forced.contains(&(t as usize)))
        })
        .collect();
    let mut responses = stream_frames(&mut client, &frames[..25], 1);
    // KEYFRAME_REQ applies to the next frame.
    client.send(&Message::KeyframeRequest);
    responses.extend(stream_frames(&mut client, &frames[25..], 1));
    let keys: Vec<usize> = responses
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_keyframe)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(keys, vec![0, 10, 17, 25]);
    for &k in &keys {
        let types = nal_types(&responses[k].chunks[0]);
        assert!(types.contains(&NAL_SPS) && types.contains(&NAL_PPS) && types.contains(&5));
    }
}

#[test]
fn config_req_sets_the_bitrate_without_a_response() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let total = |bitrate: u32| {
        let mut client = Client::tcp(daemon.tcp());
        client.send(&Message::ConfigRequest(ConfigRequest {
            width: 320,
            height: 240,
            bitrate,
            framerate_num: 30,
            framerate_den: 1,
            profile: 66,
            level: 31,
            realtime: true,
        }));
        // The next message is the PONG: CONFIG_REQ gets no answer.
        client.ping(4);
        let frames: Vec<_> = (0..20)
            .map(|t| {
                (
                    test_frame(Fmt::Bgrx, 320, 240, 1280, t * 5, 7),
                    t as i64,
                    false,
                )
            })
            .collect();
        let r = stream_frames(&mut client, &frames, 4);
        r.iter().skip(1).map(|r| r.chunks[0].len()).sum::<usize>()
    };
    let low = total(100_000);
    let high = total(20_000_000);
    assert!(
        low * 2 < high,
        "100 kbit/s gave {low} bytes, 20 Mbit/s gave {high}"
    );
    daemon.wait_log("bitrate now 100 kbit/s");
}

#[test]
fn a_framerate_change_restarts_the_session_with_a_keyframe() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    let mut client = Client::tcp(daemon.tcp());
    let frames = |from: u32| -> Vec<_> {
        (from..from + 4)
            .map(|t| (test_frame(Fmt::Nv12, 64, 48, 64, t, 1), t as i64, false))
            .collect()
    };
    let first = stream_frames(&mut client, &frames(0), 2);
    assert!(first[0].is_keyframe && !first[3].is_keyframe);
    client.send(&Message::ConfigRequest(ConfigRequest {
        width: 64,
        height: 48,
        bitrate: 2_000_000,
        framerate_num: 60,
        framerate_den: 1,
        ..Default::default()
    }));
    let second = stream_frames(&mut client, &frames(4), 2);
    assert!(
        second[0].is_keyframe,
        "the new session starts with a keyframe"
    );
    assert_eq!(second[0].pts, 4);
    daemon.wait_log("frame rate changed to 60/1: new encoding session");
}

#[test]
fn forced_keyframes_land_on_their_frames_with_many_in_flight() {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", "x264enc"]);
    for (round, forced) in [vec![0usize, 1, 2, 7, 8, 20], vec![1, 3, 4, 15, 29]]
        .into_iter()
        .enumerate()
    {
        let mut client = Client::tcp(daemon.tcp());
        let frames: Vec<_> = (0..30u32)
            .map(|t| {
                let f = test_frame(Fmt::Bgrx, 96, 64, 384, t, round as u32);
                (f, t as i64, forced.contains(&(t as usize)))
            })
            .collect();
        // Eight in flight: requests are queued ahead of the encoder.
        let responses = stream_frames(&mut client, &frames, 8);
        let keys: Vec<usize> = responses
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_keyframe)
            .map(|(i, _)| i)
            .collect();
        let mut want = forced.clone();
        if !want.contains(&0) {
            want.insert(0, 0);
        }
        assert_eq!(keys, want, "round {round}");
    }
}
