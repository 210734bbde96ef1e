//! vsockenc benchmark: one run, on one machine and transport, measures
//!
//! 1. `transport`: the transport limit, frame-sized FRAME_REQUESTs
//!    (`hxfr::write::write_frame_request`) to a reader thread
//!    (`hxfr::Decoder::read_from`) over a Unix socket and TCP loopback,
//!    1080p BGRx and NV12;
//! 2. `element`: `appsrc ! vsockenc socket-path=… max-in-flight=N ! fakesink`
//!    through an HXFR peer process (this program with `--peer`) that answers
//!    every frame with a tiny access unit after 0, 10 or 30 ms, N = 1, 2, 4;
//! 3. with 2, the one-frame-in-flight baseline (the C element's design): the
//!    ratio of each N to N = 1;
//! 4. `cpu`: guest CPU per 1080p frame (getrusage of this process; the peer
//!    is another process) with vsockenc against in-guest x264enc ultrafast;
//! 5. `daemon`: the real `vsockenc-host` with x264enc against plain
//!    `gst-launch-1.0` with the daemon's encoder settings (fps, latency
//!    p50/p99);
//! 6. `memory`: peak RSS of the guest and the daemon over a 5,000-frame run,
//!    first against last thousand frames;
//! 7. `side`: guest CPU per frame and frames/s of vsockenc side by side with
//!    the C element (`../shared/baseline`) and a minimal writer (one copy of
//!    each frame into the socket), 720p and 1080p, BGRx and NV12, Unix socket
//!    and TCP, each run a process of its own, interleaved, medians; frames/s
//!    against a 30 ms host; the answer time an instant host sees;
//! 8. `shm`: guest CPU per 1080p BGRx and NV12 frame with shared-memory
//!    frames, with the socket path and with the C element
//!    (`../shared/baseline`), each as its own `gst-launch-1.0` process
//!    against an instant peer, rotated within each repetition; and 4K NV12
//!    frames per second through shared memory;
//!
//! then prints each target of issues 6, 15 and 16 as met or not, with the
//! figures.
//!
//! ```sh
//! scripts/bench.sh              # release build + full run + docs/bench-results.json + plot
//! scripts/bench.sh --quick      # smoke test, well under a minute
//! cargo run --release --example bench -- --sections transport,element --json out.json
//! cargo run --release --example bench -- --help
//! ```
//!
//! Sections 5 and 6 need the daemon binary (`cargo build --release -p
//! vsockenc-host`, or `--host-bin`). See docs/PERFORMANCE.md for results.

#[path = "bench/args.rs"]
mod args;
#[path = "bench/daemon.rs"]
mod daemon;
#[path = "bench/frames.rs"]
mod frames;
#[path = "bench/guest.rs"]
mod guest;
#[path = "bench/json.rs"]
mod json;
#[path = "bench/peer.rs"]
mod peer;
#[path = "bench/pipeline.rs"]
mod pipeline;
#[path = "bench/sections.rs"]
mod sections;
#[path = "bench/shm.rs"]
mod shm;
#[path = "bench/side.rs"]
mod side;
#[path = "bench/sys.rs"]
mod sys;
#[path = "bench/transport.rs"]
mod transport;

use anyhow::Result;

fn main() {
    let mode = match args::parse(std::env::args().skip(1)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let res = match mode {
        args::Mode::Help => {
            print!("{}", args::USAGE);
            Ok(())
        }
        args::Mode::Peer { listen, latency } => init().and_then(|_| peer::run(&listen, latency)),
        // The guest registers (or not) the plugin itself: the C element
        // must be the only vsockenc in its process.
        args::Mode::Guest(spec) => guest::child(spec),
        args::Mode::Bench(o) => init().and_then(|_| sections::run_all(o)),
    };
    if let Err(e) = res {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

fn init() -> Result<()> {
    gst::init()?;
    gstvsockenc::plugin_register_static()?;
    Ok(())
}
