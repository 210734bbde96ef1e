//! Shared-memory frames (extension SHM) between `vsockenc` and the real
//! `vsockenc-host`: over a Unix socket the element passes a sealed memfd;
//! over TCP it maps a file standing in for an ivshmem device (`shm-device`)
//! which the daemon was told belongs to that listener (`--ivshmem`). Every
//! frame's checksum from the daemon matches the guest's, the decoded
//! output matches the input, upstream writing into the offered pool costs
//! zero copies, and whenever shared memory cannot be used the frames still
//! arrive over the socket.

mod sys;

use std::time::Duration;

use gst::prelude::*;

use sys::daemon::{Addr, Daemon, Transport};
use sys::frames::{frame_psnr, FrameCollector};
use sys::pipeline::{self, Stats};
use sys::tempdir::TempDir;

const FRAMES: usize = 30;

/// Runs `source` (ending in a tee named `t`) through the element and back
/// through a decoder; returns the element's stats and the lowest luma PSNR.
fn round_trip(daemon_props: &str, source: &str, extra: &str) -> (Stats, f64) {
    let desc = format!(
        "{source} \
         t. ! queue ! videoconvert ! video/x-raw,format=I420 ! appsink name=ref sync=false \
         t. ! queue ! vsockenc name=enc {daemon_props} verify-frames=true response-timeout=20000 {extra} ! \
           h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420 ! \
           appsink name=out sync=false"
    );
    let p = pipeline::launch(&desc);
    let reference = FrameCollector::attach(&p, "ref");
    let output = FrameCollector::attach(&p, "out");
    let enc = pipeline::element(&p, "enc");
    pipeline::play(&p);
    let result = pipeline::wait_eos(&p, Duration::from_secs(90));
    let stats = Stats::of(&enc);
    pipeline::shutdown(&p);
    if let Err(e) = result {
        panic!("{desc}: no EOS: {e}\nstats: {stats}");
    }
    let (reference, output) = (reference.frames(), output.frames());
    assert_eq!(
        output.len(),
        reference.len(),
        "{desc}: frames lost: {stats}"
    );
    let psnr = reference
        .iter()
        .zip(&output)
        .map(|(a, b)| frame_psnr(a, b)[0])
        .fold(f64::MAX, f64::min);
    (stats, psnr)
}

fn pattern(format: &str, (w, h): (u32, u32)) -> String {
    format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! \
         video/x-raw,format={format},width={w},height={h},framerate=30/1 ! tee name=t"
    )
}

fn assert_all_shm(s: &Stats, ctx: &str) {
    assert_eq!(s.u64("frames-dropped"), 0, "{ctx}: {s}");
    assert_eq!(
        s.u64("shm-frames"),
        FRAMES as u64,
        "every frame by slot: {ctx}: {s}"
    );
    assert_eq!(s.u64("checksum-mismatches"), 0, "{ctx}: {s}");
    assert_eq!(
        s.u64("checksum-matches"),
        FRAMES as u64,
        "the daemon read exactly the guest's pixels: {ctx}: {s}"
    );
    // A slot description is ~100 bytes; the pixels never crossed.
    assert!(
        s.u64("wire-bytes") < 200 * FRAMES as u64,
        "{ctx}: wire {} bytes: {s}",
        s.u64("wire-bytes")
    );
}

#[test]
fn memfd_frames_through_the_daemon_decode_and_match_checksums() {
    sys::init();
    let dir = TempDir::new("shm-memfd");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    for (format, size) in [
        ("BGRx", (320, 240)),
        ("NV12", (320, 240)),
        ("I420", (321, 241)),
        ("YV12", (160, 120)),
        ("YUY2", (160, 120)),
        ("RGBx", (161, 121)),
    ] {
        let (s, psnr) = round_trip(&daemon.addr.element_props(), &pattern(format, size), "");
        let ctx = format!("{format} {size:?}");
        assert_all_shm(&s, &ctx);
        assert!(psnr > 30.0, "{ctx}: PSNR {psnr:.1}");
    }
    let log = daemon.log();
    assert!(
        log.iter()
            .any(|l| l.contains("shared memory in use: memfd")),
        "the daemon says so: {log:#?}"
    );
    assert!(log
        .iter()
        .any(|l| l.contains(&format!("{FRAMES} shared-memory frames"))));
}

/// Upstream that allocates from the element's pool writes into shared
/// memory: no copy in the guest. Buffers from elsewhere (an appsrc's own)
/// are copied once.
#[test]
fn upstream_writing_into_the_pool_takes_zero_copies() {
    sys::init();
    let dir = TempDir::new("shm-pool");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    let props = daemon.addr.element_props();
    for source in [
        // videotestsrc allocates from downstream's pool...
        "videotestsrc num-buffers=30 ! video/x-raw,format=NV12,width=640,height=360,framerate=30/1",
        // ...and so does videoconvert for its output.
        "videotestsrc num-buffers=30 ! video/x-raw,format=BGRx,width=640,height=360,framerate=30/1 ! \
         videoconvert ! video/x-raw,format=NV12",
    ] {
        let desc = format!("{source} ! vsockenc name=enc {props} ! fakesink name=out");
        let p = pipeline::launch(&desc);
        let enc = pipeline::element(&p, "enc");
        pipeline::play(&p);
        let r = pipeline::wait_eos(&p, Duration::from_secs(60));
        let s = Stats::of(&enc);
        pipeline::shutdown(&p);
        r.unwrap_or_else(|e| panic!("{desc}: {e}: {s}"));
        assert_eq!(s.u64("shm-frames"), 30, "{desc}: {s}");
        assert_eq!(s.u64("shm-copied-frames"), 0, "zero copies: {desc}: {s}");
        assert_eq!(s.u64("frames-returned"), 30, "{desc}: {s}");
    }
    // One picture sent over and over (imagefreeze pushes the same buffer):
    // a slot may be in flight several times at once.
    let desc = format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! \
         imagefreeze num-buffers=30 ! vsockenc name=enc {props} max-in-flight=8 ! fakesink"
    );
    let p = pipeline::launch(&desc);
    let enc = pipeline::element(&p, "enc");
    pipeline::play(&p);
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    let s = Stats::of(&enc);
    pipeline::shutdown(&p);
    r.unwrap_or_else(|e| panic!("{desc}: {e}: {s}"));
    assert_eq!(s.u64("shm-frames"), 30, "{desc}: {s}");
    assert_eq!(s.u64("frames-returned"), 30, "{desc}: {s}");
    assert_eq!(s.u64("host-errors"), 0, "{desc}: {s}");
    // An appsrc with buffers of its own: each is copied into a slot once.
    let p = pipeline::launch(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=NV12,width=64,height=48,framerate=30/1 ! \
         vsockenc name=enc {props} ! fakesink"
    ));
    let src = pipeline::element(&p, "src")
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let enc = pipeline::element(&p, "enc");
    pipeline::play(&p);
    for i in 0..10u64 {
        let mut b = gst::Buffer::from_mut_slice(vec![i as u8; 64 * 48 * 3 / 2]);
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(33 * i));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let r = pipeline::wait_eos(&p, Duration::from_secs(60));
    let s = Stats::of(&enc);
    pipeline::shutdown(&p);
    r.unwrap_or_else(|e| panic!("appsrc: {e}: {s}"));
    assert_eq!(s.u64("shm-frames"), 10, "{s}");
    assert_eq!(s.u64("shm-copied-frames"), 10, "{s}");
}

/// A file standing in for an ivshmem device: the element maps it
/// (`shm-device`), the daemon maps the file bound to the TCP listener.
/// With the right binding frames go by slot; with a binding to another
/// file the handshake fails and the frames go over the socket, and so
/// they do without any binding.
#[test]
fn a_bound_region_over_tcp_and_the_fallbacks() {
    sys::init();
    let dir = TempDir::new("shm-bound");
    let region = std::path::PathBuf::from(format!(
        "/dev/shm/vsockenc-test-{}-bound",
        std::process::id()
    ));
    let other = region.with_extension("other");
    for f in [&region, &other] {
        let file = std::fs::File::create(f).unwrap();
        file.set_len(32 << 20).unwrap();
    }
    let cases = [
        (Some(&region), FRAMES as u64, "the bound file"),
        (Some(&other), 0, "another file bound: the handshake fails"),
        (None, 0, "nothing bound"),
    ];
    for (bound, shm_frames, what) in cases {
        let addr = Addr::Tcp(sys::daemon::free_tcp_port());
        let binding = bound.map(|b| format!("{}={}", addr.listen_arg(), b.display()));
        let extra: Vec<&str> = match &binding {
            Some(b) => vec!["--ivshmem", b],
            None => vec![],
        };
        let daemon = Daemon::start_on(addr, &extra);
        let (s, psnr) = round_trip(
            &daemon.addr.element_props(),
            &pattern("NV12", (320, 240)),
            &format!("shm-device={}", region.display()),
        );
        assert_eq!(s.u64("shm-frames"), shm_frames, "{what}: {s}");
        assert_eq!(s.u64("checksum-matches"), FRAMES as u64, "{what}: {s}");
        assert_eq!(s.u64("frames-dropped"), 0, "{what}: {s}");
        assert!(psnr > 30.0, "{what}: PSNR {psnr:.1}");
        if bound == Some(&other) {
            assert!(
                daemon
                    .log()
                    .iter()
                    .any(|l| l.contains("not the memory this guest sees")),
                "{what}: {:#?}",
                daemon.log()
            );
        }
    }
    for f in [&region, &other] {
        let _ = std::fs::remove_file(f);
    }
    let _ = dir;
}

/// `shared-memory=false` is the socket path, as before.
#[test]
fn shared_memory_off_sends_pixels() {
    sys::init();
    let dir = TempDir::new("shm-off");
    let daemon = Daemon::start(Transport::Unix, &dir, &[]);
    let (s, _) = round_trip(
        &daemon.addr.element_props(),
        &pattern("NV12", (160, 120)),
        "shared-memory=false",
    );
    assert_eq!(s.u64("shm-frames"), 0, "{s}");
    assert_eq!(s.u64("checksum-matches"), FRAMES as u64, "{s}");
}
