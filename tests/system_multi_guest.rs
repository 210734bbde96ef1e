//! System test: four guests stream at once through one daemon (two over its
//! Unix listener, two over its TCP listener), each with different content in
//! a different format; each must get back exactly its own stream.

mod sys;

use std::time::{Duration, Instant};

use gst::prelude::*;

use sys::daemon::{free_tcp_port, Addr, Daemon, Transport};
use sys::frames::{frame_psnr, Frame, FrameCollector};
use sys::pipeline::{self, Stats};
use sys::tempdir::TempDir;

const FRAMES: usize = 30;
const WIDTH: u32 = 256;
const HEIGHT: u32 = 192;

struct Guest {
    pattern: &'static str,
    format: &'static str,
    via_tcp: bool,
}

const GUESTS: [Guest; 4] = [
    Guest {
        pattern: "smpte",
        format: "BGRx",
        via_tcp: false,
    },
    Guest {
        pattern: "ball",
        format: "NV12",
        via_tcp: true,
    },
    Guest {
        pattern: "pinwheel",
        format: "RGBA",
        via_tcp: false,
    },
    Guest {
        pattern: "colors",
        format: "RGBx",
        via_tcp: true,
    },
];

struct Running {
    pipeline: gst::Pipeline,
    reference: FrameCollector,
    output: FrameCollector,
    enc: gst::Element,
}

#[test]
fn four_guests_one_daemon() {
    sys::init();
    let dir = TempDir::new("multi");
    let port = free_tcp_port();
    let tcp = Addr::Tcp(port);
    let tcp_listen = tcp.listen_arg();
    let daemon = Daemon::start(Transport::Unix, &dir, &["--listen", &tcp_listen]);

    let started = Instant::now();
    let running: Vec<Running> = GUESTS
        .iter()
        .map(|g| {
            let addr = if g.via_tcp { &tcp } else { &daemon.addr };
            let desc = format!(
                "videotestsrc num-buffers={FRAMES} pattern={pattern} ! \
                   video/x-raw,format={format},width={WIDTH},height={HEIGHT},framerate=30/1 ! \
                   tee name=t \
                 t. ! queue ! videoconvert ! video/x-raw,format=I420 ! \
                   appsink name=ref sync=false \
                 t. ! queue ! vsockenc name=enc {props} bitrate=6000 ! h264parse ! avdec_h264 ! \
                   videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false",
                pattern = g.pattern,
                format = g.format,
                props = addr.element_props()
            );
            let pipeline = pipeline::launch(&desc);
            Running {
                reference: FrameCollector::attach(&pipeline, "ref"),
                output: FrameCollector::attach(&pipeline, "out"),
                enc: pipeline::element(&pipeline, "enc"),
                pipeline,
            }
        })
        .collect();
    // All four connect and stream concurrently.
    for r in &running {
        pipeline::play(&r.pipeline);
    }
    let mut failures = Vec::new();
    for (g, r) in GUESTS.iter().zip(&running) {
        if let Err(e) = pipeline::wait_eos(&r.pipeline, Duration::from_secs(60)) {
            failures.push(format!(
                "guest {} ({}): {e}; stats {}",
                g.pattern,
                g.format,
                Stats::of(&r.enc)
            ));
        }
    }
    let wall = started.elapsed();
    let stats: Vec<Stats> = running.iter().map(|r| Stats::of(&r.enc)).collect();
    for r in &running {
        pipeline::shutdown(&r.pipeline);
    }
    assert!(failures.is_empty(), "{failures:#?}");

    let refs: Vec<Vec<Frame>> = running.iter().map(|r| r.reference.frames()).collect();
    let outs: Vec<Vec<Frame>> = running.iter().map(|r| r.output.frames()).collect();
    for (i, g) in GUESTS.iter().enumerate() {
        assert_eq!(
            refs[i].len(),
            FRAMES,
            "guest {}: reference count",
            g.pattern
        );
        assert_eq!(
            outs[i].len(),
            FRAMES,
            "guest {}: decoded frame count; stats {}",
            g.pattern,
            stats[i]
        );
        assert_eq!(stats[i].u64("frames-dropped"), 0, "{}", stats[i]);
    }

    // Own content: every frame matches. Others' content: the same frame index
    // of every other guest does not.
    let mut min_own = f64::MAX;
    let mut max_cross = 0.0f64;
    for (i, g) in GUESTS.iter().enumerate() {
        for (n, (r, o)) in refs[i].iter().zip(&outs[i]).enumerate() {
            assert_eq!(
                o.running_time, r.running_time,
                "guest {}: frame {n} timestamp",
                g.pattern
            );
            let own = frame_psnr(r, o)[0];
            assert!(
                own > 30.0,
                "guest {} ({}): frame {n} Y PSNR against its own input is {own:.1} dB",
                g.pattern,
                g.format
            );
            min_own = min_own.min(own);
            for (j, other) in GUESTS.iter().enumerate() {
                if j == i {
                    continue;
                }
                let cross = frame_psnr(&refs[j][n], o)[0];
                assert!(
                    cross < 20.0,
                    "guest {}'s frame {n} looks like guest {}'s input ({cross:.1} dB): \
                     streams crossed in the daemon?",
                    g.pattern,
                    other.pattern
                );
                max_cross = max_cross.max(cross);
            }
        }
    }
    println!(
        "4 guests x {FRAMES} frames {WIDTH}x{HEIGHT} through one daemon ({}) in {:.2} s: \
         own-content Y PSNR >= {min_own:.1} dB, cross-content <= {max_cross:.1} dB",
        daemon.encoder,
        wall.as_secs_f64()
    );
}

#[test]
fn a_guest_over_the_client_limit_is_told_it_is_not_served() {
    sys::init();
    let dir = TempDir::new("refused");
    let daemon = Daemon::start(Transport::Unix, &dir, &["--max-clients", "1"]);
    let live = |name: &str| {
        pipeline::launch(&format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=64,height=48,framerate=30/1 ! \
             vsockenc name={name} {} reconnect-interval=200 ! fakesink",
            daemon.addr.element_props()
        ))
    };
    let first = live("first");
    pipeline::play(&first);
    let first_enc = pipeline::element(&first, "first");
    let t0 = Instant::now();
    while Stats::of(&first_enc).u64("frames-returned") < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the first guest is served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = live("second");
    pipeline::play(&second);
    let bus = second.bus().unwrap();
    let mut warnings = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Some(m) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(50),
            &[gst::MessageType::Warning],
        ) {
            warnings.push(pipeline::describe(&m));
        }
    }
    pipeline::shutdown(&second);
    pipeline::shutdown(&first);
    eprintln!("{warnings:#?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("does not serve this guest")
                && w.contains("serving its maximum of 1 clients")),
        "{warnings:#?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("failed to encode")),
        "a refusal is not an encoding failure: {warnings:#?}"
    );
    assert!(
        warnings.len() <= 3,
        "asking again every 200 ms does not flood the bus: {warnings:#?}"
    );
}
