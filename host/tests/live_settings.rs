//! Settings a guest changes on a running session take effect without a new
//! encoding session: the output bitrate follows a CONFIG_REQ within about a
//! second, and forced keyframes keep landing where they are asked for
//! (issue 12, defect 3).

mod common;

use common::*;
use hxfr::{ConfigRequest, FrameRequest, Message, WireFormat};

const FPS: usize = 30;
const W: u32 = 640;
const H: u32 = 360;

/// NV12 frames that cost bits: a moving pattern under pixel noise.
fn frame(t: usize, seed: &mut u64) -> Vec<u8> {
    let (w, h) = (W as usize, H as usize);
    let mut px = vec![128u8; w * h * 3 / 2];
    for y in 0..h {
        for x in 0..w {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let noise = (*seed % 48) as i32 - 24;
            let base = ((x + 4 * t) / 16 + y / 16) % 2 * 120 + 60;
            px[y * w + x] = (base as i32 + noise).clamp(0, 255) as u8;
        }
    }
    px
}

fn config(bitrate: u32) -> Message {
    Message::ConfigRequest(ConfigRequest {
        width: W,
        height: H,
        bitrate,
        framerate_num: FPS as u32,
        framerate_den: 1,
        ..Default::default()
    })
}

/// kbit/s of each second of output (30 frames of 1/30 s).
fn kbps_per_second(sizes: &[usize]) -> Vec<u64> {
    sizes
        .chunks(FPS)
        .map(|c| c.iter().sum::<usize>() as u64 * 8 / 1000)
        .collect()
}

fn bitrate_follows(encoder: &str) {
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0", "--encoder", encoder]);
    let mut c = Client::tcp(daemon.tcp());
    c.send(&config(4_000_000));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut sizes = Vec::new();
    let mut keys = Vec::new();
    let seconds = 6;
    for t in 0..seconds * FPS {
        if t == 3 * FPS {
            c.send(&config(500_000));
        }
        let req = FrameRequest {
            width: W,
            height: H,
            format: WireFormat::Nv12.fourcc(),
            stride: W,
            pts: t as i64,
            duration: 33_333_333,
            // keyframe-interval=30, as the element forces them.
            force_keyframe: t % FPS == 0,
            ..Default::default()
        };
        c.send_frame(&req, &frame(t, &mut seed));
        let r = c.recv_response();
        let au = r.annexb();
        assert_eq!(r.is_keyframe, hxfr::nal::has_idr(&au));
        if r.is_keyframe {
            keys.push(t);
        }
        sizes.push(au.len());
    }
    let kbps = kbps_per_second(&sizes);
    eprintln!("{encoder}: kbit/s per second of stream, 4000 until 3 s, then 500: {kbps:?}");
    // The first second holds the ramp-up; seconds 2 and 3 are at 4000.
    let before = (kbps[1] + kbps[2]) / 2;
    let (first_after, after) = (kbps[3], (kbps[4] + kbps[5]) / 2);
    assert!(
        (2400..=5600).contains(&before),
        "{encoder}: {before} kbit/s at 4000"
    );
    assert!(
        first_after < before / 3,
        "{encoder}: the second after the change is at {first_after} kbit/s (before {before})"
    );
    assert!(
        (250..=900).contains(&after),
        "{encoder}: {after} kbit/s at 500"
    );
    let wanted: Vec<usize> = (0..seconds).map(|s| s * FPS).collect();
    assert_eq!(
        keys, wanted,
        "{encoder}: forced keyframes before and after the change"
    );
    daemon.wait_log("bitrate now 500 kbit/s");
    assert_eq!(
        daemon.log().matches(&format!("encoding {W}x{H}")).count(),
        1,
        "{encoder}: one encoding session throughout"
    );
}

#[test]
fn x264enc_bitrate_follows_a_config_req_within_a_second() {
    bitrate_follows("x264enc");
}

#[test]
fn openh264enc_bitrate_follows_a_config_req_within_a_second() {
    bitrate_follows("openh264enc");
}
