//! Running real pipelines with bounded waits, and reading the element's
//! `stats`.

use std::time::Duration;

use gst::prelude::*;

/// How long tearing a pipeline down may take before the test calls it a hang.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// `gst::parse::launch` into a pipeline, panicking with the description.
pub fn launch(desc: &str) -> gst::Pipeline {
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("cannot build pipeline `{desc}`: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("not a pipeline")
}

/// Format an ERROR/WARNING message with its source and debug text.
pub fn describe(msg: &gst::MessageRef) -> String {
    let src = msg
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_default();
    match msg.view() {
        gst::MessageView::Error(e) => format!(
            "ERROR from {src}: {} ({})",
            e.error(),
            e.debug().map(|d| d.to_string()).unwrap_or_default()
        ),
        gst::MessageView::Warning(w) => format!(
            "WARNING from {src}: {} ({})",
            w.error(),
            w.debug().map(|d| d.to_string()).unwrap_or_default()
        ),
        _ => format!("{:?} from {src}", msg.type_()),
    }
}

/// Wait for EOS on the pipeline's bus; `Err` on an ERROR message or timeout.
pub fn wait_eos(pipeline: &gst::Pipeline, timeout: Duration) -> Result<(), String> {
    let bus = pipeline.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    match msg {
        None => Err(format!("no EOS within {timeout:?}")),
        Some(msg) => match msg.view() {
            gst::MessageView::Eos(_) => Ok(()),
            _ => Err(describe(&msg)),
        },
    }
}

/// Every ERROR message currently queued on the bus (drained), described.
pub fn pending_errors(pipeline: &gst::Pipeline) -> Vec<String> {
    let bus = pipeline.bus().unwrap();
    let mut out = Vec::new();
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        out.push(describe(&msg));
    }
    out
}

/// Set the pipeline to NULL on a helper thread and panic if that does not
/// finish in time: a hang in teardown is a bug the test must report, not wait
/// on forever.
pub fn shutdown(pipeline: &gst::Pipeline) {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = pipeline.clone();
    std::thread::spawn(move || {
        let r = p.set_state(gst::State::Null);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(SHUTDOWN_TIMEOUT) {
        Ok(r) => {
            r.expect("setting the pipeline to NULL failed");
        }
        Err(_) => panic!(
            "setting the pipeline to NULL did not finish within {SHUTDOWN_TIMEOUT:?}: \
             teardown hangs"
        ),
    }
}

/// Set PLAYING; panic with the bus error if the state change fails outright.
pub fn play(pipeline: &gst::Pipeline) {
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        let errors = pending_errors(pipeline);
        shutdown(pipeline);
        panic!("pipeline failed to go to PLAYING ({e}): {errors:?}");
    }
}

/// Send EOS into a (live) pipeline and wait for it to come out.
pub fn stop_with_eos(pipeline: &gst::Pipeline, timeout: Duration) -> Result<(), String> {
    pipeline.send_event(gst::event::Eos::new());
    wait_eos(pipeline, timeout)
}

/// The element's `stats` structure, with typed access.
#[derive(Clone, Debug)]
pub struct Stats(pub gst::Structure);

impl Stats {
    pub fn of(element: &gst::Element) -> Stats {
        let s = element.property::<gst::Structure>("stats");
        assert_eq!(s.name(), "vsockenc-stats", "stats structure name");
        Stats(s)
    }

    /// A u64 counter; panics naming the field if it is missing or mistyped.
    pub fn u64(&self, field: &str) -> u64 {
        self.0
            .get::<u64>(field)
            .unwrap_or_else(|e| panic!("stats field `{field}`: {e} (stats: {})", self.0))
    }

    pub fn in_flight(&self) -> u32 {
        self.0
            .get::<u32>("in-flight")
            .unwrap_or_else(|e| panic!("stats field `in-flight`: {e} (stats: {})", self.0))
    }

    /// Sum of the per-reason drop counters.
    pub fn dropped_by_reason(&self) -> u64 {
        [
            "dropped-timeout",
            "dropped-host-error",
            "dropped-disconnect",
            "dropped-no-host",
            "dropped-awaiting-keyframe",
        ]
        .iter()
        .map(|f| self.u64(f))
        .sum()
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The element named `name` in `pipeline`.
pub fn element(pipeline: &gst::Pipeline, name: &str) -> gst::Element {
    pipeline
        .by_name(name)
        .unwrap_or_else(|| panic!("no element named {name}"))
}
