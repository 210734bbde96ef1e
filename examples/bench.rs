//! vsockenc benchmark: one run measures the transport limit, vsockenc through
//! a simulated host at several latencies and in-flight limits, the guest CPU
//! per frame against in-guest x264enc, the real `vsockenc-host` daemon
//! against plain `gst-launch-1.0`, and memory over a long run.
//!
//! ```sh
//! scripts/bench.sh              # release build + full run + docs/bench-results.json + plot
//! cargo run --release --example bench -- --quick
//! cargo run --release --example bench -- --sections transport,element --json out.json
//! ```
//!
//! See docs/PERFORMANCE.md for the results on the project's machine.

#[path = "bench/args.rs"]
mod args;
#[path = "bench/daemon.rs"]
mod daemon;
#[path = "bench/frames.rs"]
mod frames;
#[path = "bench/json.rs"]
mod json;
#[path = "bench/peer.rs"]
mod peer;
#[path = "bench/pipeline.rs"]
mod pipeline;
#[path = "bench/sections.rs"]
mod sections;
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
