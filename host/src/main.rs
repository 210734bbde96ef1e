//! `vsockenc-host`: the host-side H.264 encoder daemon for vsockenc guests.
//!
//! * `cli.rs`: flags and `--help`.
//! * `listen.rs`: listen addresses, binding, the Unix socket lock and
//!   stale-socket rules.
//! * `access.rs`: who may use a listener (rules) and what one peer may
//!   ask of it (quotas); `quota.rs`: the pixel-rate quota.
//! * `accept.rs`: the accept loop: access, descriptors, admission, client
//!   threads; `admission.rs`: client slots and pending connections.
//! * `conn.rs`: an accepted connection of any transport.
//! * `client.rs`: one guest: request decoding and dispatch, the in-flight
//!   limit, responses in request order (`client/intake.rs`: reading with
//!   deadlines; `client/admit.rs`: slot, memory and quota of a frame;
//!   `client/ext.rs`: HELLO and extension messages; `client/frames.rs`:
//!   the frame paths; `client/session.rs`: the encoding session;
//!   `client/writer.rs`: the writer thread).
//! * `budget.rs`: the memory budget; `fds.rs`: file descriptors.
//! * `units.rs`: numbers with K, M, G, T for flags and listener options.
//! * `metrics.rs`: Prometheus metrics and their endpoint.
//! * `codecs.rs`: per codec (H.264, H.265, AV1) the encoders known, the
//!   one chosen, their low-latency settings and parsers.
//! * `encoder.rs`: the GStreamer encoding session.
//! * `pixels.rs`: the guest's pixels as GStreamer buffers (strides, odd
//!   sizes).
//! * `profile.rs`: profile negotiation: the caps after the encoder, and a
//!   trial frame that proves the encoder honours them.
//! * `peer.rs`: who is connected (address, credentials, CID) and the
//!   per-connection log span.
//! * `shm/`: shared-memory frames: bound regions (`--ivshmem`), the
//!   handshake, slot checks, slots wrapped as buffers and released.
//! * `stats.rs`: per-client statistics.
//! * `shutdown.rs`: SIGINT/SIGTERM.
//! * `log/`: log output (human, JSON, journald), filters, rate limits.

mod accept;
mod access;
mod admission;
mod budget;
mod cli;
mod client;
mod codecs;
mod conn;
mod encoder;
mod fds;
mod keyframes;
mod listen;
mod log;
mod metrics;
mod peer;
mod pixels;
mod profile;
mod quota;
mod shm;
mod shutdown;
mod stats;
mod units;

use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tracing::{error, info, warn};

use crate::accept::{Served, Server};
use crate::access::ListenSpec;
use crate::admission::Admission;
use crate::budget::Budget;
use crate::cli::Cli;
use crate::client::{ClientConfig, Pace};
use crate::fds::Descriptors;
use crate::listen::{ListenAddr, Listener};
use crate::metrics::{Gauges, Metrics};
use crate::shutdown::Signals;
use crate::stats::Registry;

fn main() -> ExitCode {
    budget::tune_allocator();
    let cli = Cli::parse();
    if let Some(note) = log::init(cli.log_filter(), cli.log_format) {
        warn!("{note}");
    }
    let signals = match shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    match run(cli, signals) {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli, signals: Signals) -> anyhow::Result<()> {
    gst::init().context("cannot initialise GStreamer")?;
    let (fds, note) = Descriptors::init();
    info!("{note}");
    let fds = Arc::new(fds);
    let mut encoders = codecs::Encoders::choose(&cli.encoder, &cli.h265_encoder, &cli.av1_encoder)?;
    // The H.264 encoders are known to; the others are asked.
    for choice in [encoders.h265.as_mut(), encoders.av1.as_mut()]
        .into_iter()
        .flatten()
    {
        match keyframes::honoured(choice, cli.encode_timeout()) {
            Ok(true) => {}
            Ok(false) => {
                choice.forces_keyframes = false;
                info!(
                    "{}: makes no keyframe when asked: every keyframe a guest asks for starts a new session",
                    choice.factory
                );
            }
            Err(e) => warn!(
                "{}: the keyframe trial failed ({e}); keyframes are asked of it as of any encoder",
                choice.factory
            ),
        }
    }
    for (codec, choice) in [
        (hxfr::Codec::H265, encoders.h265.as_ref()),
        (hxfr::Codec::Av1, encoders.av1.as_ref()),
    ] {
        match choice {
            Ok(c) => info!("{codec} guests: {} ({})", c.factory, c.reason),
            Err(why) => info!("{codec} guests are refused: {why}"),
        }
    }
    // Last, and as it always was: scripts and tests read it.
    info!(
        "encoder: {} ({})",
        encoders.h264.factory, encoders.h264.reason
    );

    let bindings = shm::Bindings(cli.ivshmem.clone());
    let addrs: Vec<ListenAddr> = cli.listen.iter().map(|s| s.addr.clone()).collect();
    bindings.check(&addrs).map_err(|e| anyhow::anyhow!("{e}"))?;
    for b in &bindings.0 {
        if !b.path.exists() {
            warn!(
                "--ivshmem {}: {} does not exist yet (QEMU creates it when the VM starts)",
                b.path.display(),
                b.path.display()
            );
        }
    }
    let served = bind_all(&cli)?;
    for s in &served {
        info!("listening on {}", s.listener.addr);
        if let Some(d) = s.policy.describe() {
            info!("{}: {d}", s.listener.addr);
        }
    }
    let budget = Budget::new(cli.memory_budget());
    info!(
        "memory budget: {}{}",
        budget::bytes(budget.limit()),
        if cli.memory_budget.is_none() {
            " (a quarter of this machine's memory; --memory-budget)"
        } else {
            ""
        }
    );
    let metrics = Arc::new(Metrics::new());
    let admission = Arc::new(Admission::new(cli.max_clients));
    info!(
        "serving at most {} clients, and {} connections that have not sent a frame yet",
        cli.max_clients,
        admission.max_pending()
    );

    let limits = hxfr::Limits {
        max_pixel_bytes: cli.max_frame_bytes,
        ..hxfr::Limits::default()
    };
    let cfg = Arc::new(ClientConfig {
        encoders,
        default_bitrate_kbps: cli.bitrate,
        max_in_flight: cli.max_in_flight as usize,
        limits,
        write_timeout: cli.write_timeout(),
        encode_timeout: cli.encode_timeout(),
        drain_timeout: cli.shutdown_timeout().min(Duration::from_secs(5)),
        idle_timeout: cli.idle_timeout(),
        handshake_timeout: Duration::from_secs(cli.handshake_timeout),
        pace: Pace {
            floor: Duration::from_secs(cli.message_timeout),
            min_rate: cli.min_receive_rate,
        },
        budget: budget.clone(),
        metrics: metrics.clone(),
    });
    if let Some(addr) = cli.metrics {
        let (budget, admission, fds) = (budget.clone(), admission.clone(), fds.clone());
        metrics::serve(addr, metrics.clone(), move |m| {
            let (clients, pending) = admission.counts();
            m.set_gauges(Gauges {
                clients,
                pending,
                budget_limit: budget.limit(),
                budget_in_use: budget.in_use(),
                fds_in_use: fds::in_use().unwrap_or(0) as u64,
                fds_limit: fds.limit(),
            })
        })?;
    }
    let registry = Arc::new(Registry::default());
    if cli.stats_interval > 0 {
        let (registry, every) = (registry.clone(), Duration::from_secs(cli.stats_interval));
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                registry.report();
            })?;
    }

    let server = Server {
        cfg,
        registry,
        admission,
        quotas: Default::default(),
        fds,
        metrics,
        active: Arc::new((Mutex::new(0u32), Condvar::new())),
        bindings,
    };
    server.run(&served, &signals);

    // Stop accepting: close the listeners and remove their socket files.
    drop(served);
    let deadline = Instant::now() + cli.shutdown_timeout();
    let (count, cv) = &*server.active;
    let mut n = count.lock().unwrap();
    while *n > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            warn!(
                "{n} client(s) still finishing after {:?}; exiting anyway",
                cli.shutdown_timeout()
            );
            break;
        }
        n = cv.wait_timeout(n, left).unwrap().0;
    }
    Ok(())
}

fn bind_all(cli: &Cli) -> anyhow::Result<Vec<Served>> {
    let mut specs: Vec<ListenSpec> = Vec::new();
    if cli.listen.is_empty() {
        match listen::vsock_available(cli::DEFAULT_VSOCK_PORT) {
            Ok(()) => specs.push(ListenSpec {
                addr: ListenAddr::Vsock {
                    cid: listen::VSOCK_CID_ANY,
                    port: cli::DEFAULT_VSOCK_PORT,
                },
                policy: Default::default(),
            }),
            Err(e) => info!(
                "not listening on vsock:{}: {e} ({})",
                cli::DEFAULT_VSOCK_PORT,
                listen::VSOCK_REMEDY
            ),
        }
        specs.push(cli::DEFAULT_TCP.parse().expect("valid default"));
    }
    specs.extend(cli.listen.iter().cloned());
    let mut served = Vec::new();
    for mut spec in specs {
        // Flags are the defaults of listeners that do not set their own.
        spec.policy.max_per_peer = spec.policy.max_per_peer.or(cli.max_per_peer);
        spec.policy.pixel_rate = spec.policy.pixel_rate.or(cli.pixel_rate);
        let listener = Listener::bind(&spec.addr, cli.socket_mode)?;
        served.push(Served {
            name: listener.addr.to_string().into(),
            listener,
            policy: spec.policy,
        });
    }
    Ok(served)
}
