//! `vsockenc-host`: the host-side H.264 encoder daemon for vsockenc guests.
//!
//! * `cli.rs`: flags and `--help`.
//! * `listen.rs`: listen addresses, binding, the Unix socket lock and
//!   stale-socket rules.
//! * `conn.rs`: an accepted connection of any transport.
//! * `client.rs`: one guest: request decoding and validation, the in-flight
//!   limit, responses in request order.
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

mod cli;
mod client;
mod codecs;
mod conn;
mod encoder;
mod keyframes;
mod listen;
mod log;
mod peer;
mod pixels;
mod profile;
mod shm;
mod shutdown;
mod stats;

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use tracing::{error, info, warn, Span};

use crate::cli::Cli;
use crate::client::ClientConfig;
use crate::conn::Conn;
use crate::listen::{ListenAddr, Listener};
use crate::log::ratelimit::RateLimit;
use crate::shutdown::{Signals, SHUTDOWN};
use crate::stats::{ClientStats, Registry};

/// Failing accepts (EMFILE and the like) repeat every 100 ms per listener.
static ACCEPT_FAILURES: RateLimit = RateLimit::new(5, Duration::from_secs(30));
/// A refused guest's element reconnects at once and then periodically.
static REFUSALS: RateLimit = RateLimit::new(5, Duration::from_secs(10));

fn main() -> ExitCode {
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
    bindings
        .check(&cli.listen)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for b in &bindings.0 {
        if !b.path.exists() {
            warn!(
                "--ivshmem {}: {} does not exist yet (QEMU creates it when the VM starts)",
                b.path.display(),
                b.path.display()
            );
        }
    }
    let listeners = bind_all(&cli)?;
    for l in &listeners {
        info!("listening on {}", l.addr);
    }

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
    });
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

    let active = Arc::new((Mutex::new(0u32), Condvar::new()));
    accept_loop(
        &listeners, &signals, &cli, &cfg, &registry, &active, &bindings,
    );

    // Stop accepting: close the listeners and remove their socket files.
    drop(listeners);
    let deadline = Instant::now() + cli.shutdown_timeout();
    let (count, cv) = &*active;
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

fn bind_all(cli: &Cli) -> anyhow::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    if cli.listen.is_empty() {
        match listen::vsock_available(cli::DEFAULT_VSOCK_PORT) {
            Ok(()) => listeners.push(Listener::bind(
                &ListenAddr::Vsock {
                    cid: listen::VSOCK_CID_ANY,
                    port: cli::DEFAULT_VSOCK_PORT,
                },
                cli.socket_mode,
            )?),
            Err(e) => info!(
                "not listening on vsock:{}: {e} ({})",
                cli::DEFAULT_VSOCK_PORT,
                listen::VSOCK_REMEDY
            ),
        }
        let tcp: ListenAddr = cli::DEFAULT_TCP.parse().expect("valid default");
        listeners.push(Listener::bind(&tcp, cli.socket_mode)?);
    }
    for addr in &cli.listen {
        listeners.push(Listener::bind(addr, cli.socket_mode)?);
    }
    Ok(listeners)
}

fn accept_loop(
    listeners: &[Listener],
    signals: &Signals,
    cli: &Cli,
    cfg: &Arc<ClientConfig>,
    registry: &Arc<Registry>,
    active: &Arc<(Mutex<u32>, Condvar)>,
    bindings: &shm::Bindings,
) {
    let mut next_id = 1u64;
    while !SHUTDOWN.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| l.as_fd())
            .chain([signals.wake()])
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        match nix::poll::poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                error!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(true)).collect();
        for (l, _) in listeners.iter().zip(ready).filter(|(_, r)| *r) {
            loop {
                match l.accept() {
                    Ok(Some((conn, peer))) => {
                        let shm = shm::Access {
                            fd_passing: conn.passes_fds(),
                            bound: bindings
                                .for_connection(&l.addr, &peer)
                                .map(|p| p.to_path_buf()),
                        };
                        let client = NewClient {
                            shm,
                            conn,
                            name: peer.client_name(&l.addr, next_id).into(),
                            span: peer.span(&l.addr, next_id),
                        };
                        next_id += 1;
                        start_client(client, cli, cfg, registry, active);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // EMFILE and the like: do not spin on a listener
                        // that stays readable.
                        crate::warn_limited!(ACCEPT_FAILURES, "{}: accept failed: {e}", l.addr);
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
    }
}

/// An accepted connection, its name in log lines and its span.
struct NewClient {
    conn: Conn,
    /// What shared memory the connection may use.
    shm: shm::Access,
    name: Arc<str>,
    span: Span,
}

fn start_client(
    client: NewClient,
    cli: &Cli,
    cfg: &Arc<ClientConfig>,
    registry: &Arc<Registry>,
    active: &Arc<(Mutex<u32>, Condvar)>,
) {
    let NewClient {
        conn,
        name: peer,
        span,
        shm,
    } = client;
    let entered = span.enter();
    {
        let mut n = active.0.lock().unwrap();
        if *n >= cli.max_clients {
            crate::warn_limited!(
                REFUSALS,
                "{peer}: refused: already serving {n} clients (--max-clients {})",
                cli.max_clients
            );
            refuse(&conn, cli.max_clients);
            return;
        }
        *n += 1;
    }
    info!("{peer}: connected");
    let stats = Arc::new(ClientStats::default());
    registry.register(&peer, &span, &stats);
    drop(entered);
    let (cfg, active_count) = (cfg.clone(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("client".into())
        .spawn(move || {
            let _entered = span.enter();
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                client::serve(conn, peer.clone(), cfg, stats, &SHUTDOWN, shm)
            }));
            if res.is_err() {
                error!("{peer}: the client thread panicked; connection closed, daemon continues");
            }
            let (count, cv) = &*active_count;
            *count.lock().unwrap() -= 1;
            cv.notify_all();
        });
    if let Err(e) = spawned {
        error!("cannot start a client thread: {e}");
        *active.0.lock().unwrap() -= 1;
    }
}

/// Tells a client over the limit why it is closed, with the code that says
/// "not served" rather than "failed".
fn refuse(conn: &Conn, limit: u32) {
    use std::io::Write;
    let _ = conn.set_write_timeout(Duration::from_millis(200));
    let e = hxfr::ErrorMessage::new(
        hxfr::error_code::REFUSED,
        format!("vsockenc-host is serving its maximum of {limit} clients; try again later"),
    );
    let mut w: &Conn = conn;
    let _ = w.write_all(&hxfr::Message::Error(e).encode(hxfr::LEGACY_SESSION_ID));
    conn.shutdown();
}
