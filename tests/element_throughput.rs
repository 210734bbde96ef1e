//! Throughput of 1080p BGRx through vsockenc against an in-test peer that
//! answers at once or after 30 ms. Not part of the timed suite: run by hand
//! (release build) with
//!
//! ```text
//! cargo test --release -p gst-plugin-vsockenc --test element_throughput -- --ignored --nocapture --test-threads=1
//! ```

mod common;

use std::time::{Duration, Instant};

use common::peer::PeerBuilder;
use common::*;
use gst::prelude::*;

const FRAMES: u32 = 300;

fn run(desc: &str) -> (f64, Option<gst::Element>) {
    init();
    let p = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let enc = p.by_name("enc");
    let start = Instant::now();
    p.set_state(gst::State::Playing).unwrap();
    let msgs = collect_bus(&p.bus().unwrap(), Duration::from_secs(600), |m| {
        matches!(
            m.view(),
            gst::MessageView::Eos(_) | gst::MessageView::Error(_)
        )
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(
        msgs.iter()
            .any(|m| matches!(m.view(), gst::MessageView::Eos(_))),
        "{msgs:?}"
    );
    p.set_state(gst::State::Null).unwrap();
    (FRAMES as f64 / secs, enc)
}

const SRC: &str = "videotestsrc pattern=solid-color num-buffers=300 ! \
                   video/x-raw,format=BGRx,width=1920,height=1080,framerate=1000/1";

#[test]
#[ignore = "measurement, run by hand in release mode"]
fn throughput_1080p_bgrx() {
    let (fps, _) = run(&format!("{SRC} ! fakesink sync=false"));
    println!("source alone (no vsockenc): {fps:.1} fps");
    for (delay_ms, max_in_flight) in [(0u64, 4u32), (0, 1), (30, 4), (30, 1)] {
        let path = socket_path("tput");
        let _peer = PeerBuilder::unix(&path)
            .delay(Duration::from_millis(delay_ms))
            .start();
        let (fps, enc) = run(&format!(
            "{SRC} ! vsockenc name=enc max-in-flight={max_in_flight} socket-path={} ! fakesink sync=false",
            path.display()
        ));
        let enc = enc.unwrap();
        let s = stats(&enc);
        println!(
            "peer latency {delay_ms:>2} ms, max-in-flight {max_in_flight}: {fps:6.1} fps, {:6.1} MB/s of pixels, \
             latency mean {} us max {} us, dropped {}",
            fps * (1920.0 * 1080.0 * 4.0) / 1e6,
            s.get::<u64>("latency-mean-us").unwrap(),
            s.get::<u64>("latency-max-us").unwrap(),
            s.get::<u64>("frames-dropped").unwrap(),
        );
    }
}
