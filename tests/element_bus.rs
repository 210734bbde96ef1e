//! Bus discipline: what the element posts about a misbehaving host is
//! bounded and says what happened, once.

mod common;

use std::time::{Duration, Instant};

use common::peer::{Action, PeerBuilder};
use common::*;
use gst::prelude::*;

/// A FRAME_RESPONSE whose framing is intact (the stream stays in sync) but
/// whose payload is malformed: it announces one NAL chunk and holds none.
fn malformed_response(pts: i64) -> Vec<u8> {
    let mut m = hxfr::Header::new(hxfr::msg_type::FRAME_RESPONSE, 0, 1, 24)
        .to_bytes()
        .to_vec();
    m.extend_from_slice(&pts.to_le_bytes());
    m.extend_from_slice(&pts.to_le_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&1u32.to_le_bytes());
    m
}

/// Runs `frames` live frames through a vsockenc on `path` and collects every
/// message until EOS, an error, or `timeout`. Returns the messages, the
/// element and how long the run took.
fn run_live(
    path: &std::path::Path,
    frames: u32,
    props: &str,
    timeout: Duration,
) -> (Vec<gst::Message>, gst::Element, Duration) {
    init();
    let p = gst::parse::launch(&format!(
        "videotestsrc is-live=true num-buffers={frames} ! \
           video/x-raw,format=BGRx,width=64,height=48,framerate=30/1 ! \
         vsockenc name=enc socket-path={} {props} ! fakesink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let enc = p.by_name("enc").unwrap();
    let started = Instant::now();
    p.set_state(gst::State::Playing).unwrap();
    let msgs = collect_bus(&p.bus().unwrap(), timeout, |m| {
        matches!(
            m.view(),
            gst::MessageView::Eos(_) | gst::MessageView::Error(_)
        )
    });
    let took = started.elapsed();
    p.set_state(gst::State::Null).unwrap();
    (msgs, enc, took)
}

fn texts(msgs: &[gst::Message], kind: gst::MessageType) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.type_() == kind)
        .map(|m| match m.view() {
            gst::MessageView::Warning(w) => format!(
                "{} | {}",
                w.error(),
                w.debug().map(|d| d.to_string()).unwrap_or_default()
            ),
            gst::MessageView::Info(i) => format!(
                "{} | {}",
                i.error(),
                i.debug().map(|d| d.to_string()).unwrap_or_default()
            ),
            gst::MessageView::Error(e) => format!(
                "{} | {}",
                e.error(),
                e.debug().map(|d| d.to_string()).unwrap_or_default()
            ),
            _ => String::new(),
        })
        .collect()
}

#[test]
fn a_host_flooding_malformed_answers_is_disconnected_and_warned_about_a_few_times() {
    // Every frame is answered with a thousand malformed messages: before,
    // one WARNING each (about 100,000 in 10 s), and frames waited for their
    // timeout (2 fps).
    let path = socket_path("flood");
    let _peer = PeerBuilder::unix(&path)
        .script(|f| Action::Garbage(malformed_response(f.request.pts).repeat(1000)))
        .start();
    let (msgs, enc, took) = run_live(&path, 30, "reconnect-interval=100", Duration::from_secs(30));
    let warnings = texts(&msgs, gst::MessageType::Warning);
    eprintln!("{} warnings in {took:?}: {warnings:#?}", warnings.len());
    assert!(
        msgs.iter()
            .any(|m| matches!(m.view(), gst::MessageView::Eos(_))),
        "the stream ends: {msgs:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "30 live frames (1 s) take {took:?}: throughput sank"
    );
    assert!(
        warnings.len() <= 9,
        "at most 3 per kind (bad message, lost connection, host error) per 10 s: {}",
        warnings.len()
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("malformed answers in a row")),
        "the disconnect says why: {warnings:#?}"
    );
    assert!(stat(&enc, "reconnects") >= 1, "the element connected again");
}

#[test]
fn with_reconnect_off_a_host_of_malformed_answers_is_an_error() {
    let path = socket_path("floodfatal");
    let _peer = PeerBuilder::unix(&path)
        .script(|f| Action::Garbage(malformed_response(f.request.pts).repeat(10)))
        .start();
    let (msgs, _enc, took) = run_live(&path, 30, "reconnect=false", Duration::from_secs(30));
    let errors = texts(&msgs, gst::MessageType::Error);
    assert_eq!(errors.len(), 1, "{msgs:?}");
    assert!(
        errors[0].contains("malformed answers in a row"),
        "{errors:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_host_that_stops_answering_is_reported_once_and_its_recovery_once() {
    // Frames 10..40 (one second of a 30 fps live stream) get no answer.
    let path = socket_path("silent");
    let _peer = PeerBuilder::unix(&path)
        .script(|f| {
            if (10..40).contains(&f.index) {
                Action::Silence
            } else {
                Action::Answer
            }
        })
        .start();
    let (msgs, enc, _took) = run_live(
        &path,
        75,
        "response-timeout=200 max-in-flight=8",
        Duration::from_secs(30),
    );
    assert!(
        msgs.iter()
            .any(|m| matches!(m.view(), gst::MessageView::Eos(_))),
        "{msgs:?}"
    );
    let warnings = texts(&msgs, gst::MessageType::Warning);
    let infos = texts(&msgs, gst::MessageType::Info);
    let stopped: Vec<_> = warnings
        .iter()
        .filter(|w| w.contains("stopped answering"))
        .collect();
    let again: Vec<_> = infos
        .iter()
        .filter(|w| w.contains("answers again"))
        .collect();
    assert_eq!(stopped.len(), 1, "one WARNING when it stops: {warnings:#?}");
    assert_eq!(again.len(), 1, "one message when it recovers: {infos:#?}");
    assert!(stat(&enc, "dropped-timeout") >= 20, "frames were dropped");
    assert!(
        stat(&enc, "frames-returned") >= 40,
        "and encoded again after"
    );
}
