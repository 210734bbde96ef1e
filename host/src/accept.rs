//! The accept side: takes connections from every listener in turn, decides
//! whether each is served (access rules, descriptors, the admission of
//! [`crate::admission`]) and starts a client thread for it.
//!
//! A refused connection is told why (ERROR -10, "refused") and closed at
//! once. Each listener gets at most [`BATCH`] accepts per turn, so a flood
//! of connections on one listener does not keep the others waiting.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use tracing::{error, Span};

use crate::access::{PeerKey, Policy};
use crate::admission::Admission;
use crate::client::{self, ClientConfig, Place, CONNECTION_LINES};
use crate::conn::Conn;
use crate::fds::{self, Descriptors};
use crate::listen::Listener;
use crate::log::ratelimit::RateLimit;
use crate::log::{DESCRIPTOR_ERRORS, REFUSALS};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::quota::Quotas;
use crate::shm;
use crate::shutdown::{Signals, SHUTDOWN};
use crate::stats::{ClientStats, Registry};

/// Accepts per listener and turn.
const BATCH: usize = 16;

/// Failing accepts (ENFILE, ENOMEM) repeat every 100 ms per listener.
static ACCEPT_FAILURES: RateLimit = RateLimit::new(5, Duration::from_secs(30));

/// A listener and what it lets in.
pub struct Served {
    pub listener: Listener,
    pub policy: Policy,
    /// Its name in metrics and logs.
    pub name: Arc<str>,
}

/// Everything the accept loop shares with the clients it starts.
pub struct Server {
    pub cfg: Arc<ClientConfig>,
    pub registry: Arc<Registry>,
    pub admission: Arc<Admission<Arc<Conn>>>,
    pub quotas: Quotas,
    pub fds: Arc<Descriptors>,
    pub metrics: Arc<Metrics>,
    /// Client threads running, for the shutdown to wait on.
    pub active: Arc<(Mutex<u32>, Condvar)>,
    /// The shared-memory files bound to guests (`--ivshmem`).
    pub bindings: shm::Bindings,
}

impl Server {
    /// Accepts until a shutdown is requested.
    pub fn run(&self, served: &[Served], signals: &Signals) {
        let mut next_id = 1u64;
        while !SHUTDOWN.load(Ordering::SeqCst) {
            let mut fds: Vec<PollFd> = served
                .iter()
                .map(|s| s.listener.as_fd())
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
            for (index, s) in served.iter().enumerate().filter(|(i, _)| ready[*i]) {
                for _ in 0..BATCH {
                    match s.listener.accept() {
                        Ok(Some((conn, peer))) => {
                            self.take(index, s, conn, peer, next_id);
                            next_id += 1;
                        }
                        Ok(None) => break,
                        Err(e) if out_of_descriptors(&e) => {
                            if !self.refuse_one_without_descriptors(s, &e) {
                                std::thread::sleep(Duration::from_millis(100));
                                break;
                            }
                        }
                        Err(e) => {
                            // Do not spin on a listener that stays readable.
                            crate::warn_limited!(
                                ACCEPT_FAILURES,
                                "{}: accept failed: {e}",
                                s.listener.addr
                            );
                            std::thread::sleep(Duration::from_millis(100));
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Out of descriptors: accepts one waiting connection with the reserve
    /// descriptor, tells it so and closes it. False when even that failed.
    fn refuse_one_without_descriptors(&self, s: &Served, e: &io::Error) -> bool {
        let accepted = self.fds.with_reserve(|| s.listener.accept());
        let limit = self.fds.limit();
        crate::error_limited!(
            DESCRIPTOR_ERRORS,
            "{}: out of file descriptors (limit {limit}: {e}): refusing new connections; raise the limit (LimitNOFILE=, ulimit -n) or lower --max-clients",
            s.listener.addr
        );
        match accepted {
            Some(Ok(Some((conn, _)))) => {
                self.metrics.refusal(&s.name, "descriptors");
                refuse(&conn, out_of_descriptors_text());
                true
            }
            _ => false,
        }
    }

    /// Decides about a new connection and starts serving it.
    fn take(&self, index: usize, s: &Served, conn: Conn, peer: Peer, id: u64) {
        let name: Arc<str> = peer.client_name(&s.listener.addr, id).into();
        let span = peer.span(&s.listener.addr, id);
        let entered = span.enter();
        self.metrics.connection(&s.name);
        if let Err(d) = s.policy.admit(&s.listener.addr, &peer) {
            crate::warn_limited!(REFUSALS, "{name}: refused: {}", d.log);
            self.metrics.refusal(&s.name, "access");
            refuse(&conn, &d.guest);
            return;
        }
        // Every pending connection may start a session soon: keep their
        // descriptors free too, so that a guest taken on can be served.
        let (_, pending) = self.admission.counts();
        if !self.fds.room_for(fds::PER_CLIENT * (pending as u64 + 1)) {
            crate::error_limited!(
                DESCRIPTOR_ERRORS,
                "{name}: refused: out of file descriptors (limit {}); raise the limit (LimitNOFILE=, ulimit -n) or lower --max-clients",
                self.fds.limit()
            );
            self.metrics.refusal(&s.name, "descriptors");
            refuse(&conn, out_of_descriptors_text());
            return;
        }
        let key = PeerKey::of(&peer);
        let shm = shm::Access {
            fd_passing: conn.passes_fds(),
            bound: self
                .bindings
                .for_connection(&s.listener.addr, &peer)
                .map(|p| p.to_path_buf()),
        };
        let conn = Arc::new(conn);
        let evicted = match self.admission.arrive(
            id,
            (index, key.clone()),
            s.policy.max_per_peer,
            conn.clone(),
        ) {
            Ok(ev) => ev,
            Err(r) => {
                let text = match &r {
                        crate::admission::Refusal::PerPeer { peer, limit } => format!(
                            "vsockenc-host already serves {limit} connections of {peer} on this address (max-per-peer); close one first"
                        ),
                        crate::admission::Refusal::Full { max_clients } => format!(
                            "vsockenc-host is serving its maximum of {max_clients} clients; try again later"
                        ),
                    };
                crate::warn_limited!(REFUSALS, "{name}: refused: {text}");
                self.metrics.refusal(&s.name, r.reason());
                refuse(&conn, &text);
                return;
            }
        };
        for victim in evicted {
            // Its reader notices, logs and ends.
            victim.shutdown();
            self.metrics.refusal(&s.name, "evicted");
            crate::log_limited!(
                REFUSALS,
                tracing::Level::INFO,
                "{name}: a connection that sent no frame was closed to make room for it"
            );
        }
        crate::log_limited!(CONNECTION_LINES, tracing::Level::INFO, "{name}: connected");
        let stats = Arc::new(ClientStats::new(self.metrics.guest(&s.name, &key.label())));
        self.registry.register(&name, &span, &stats);
        drop(entered);
        let quota = s
            .policy
            .pixel_rate
            .map(|rate| self.quotas.bucket(index, &key, rate));
        let place = Place {
            id,
            listener: s.name.clone(),
            admission: self.admission.clone(),
            quota,
            fds: self.fds.clone(),
        };
        self.spawn(conn, name, span, stats, place, shm);
    }

    fn spawn(
        &self,
        conn: Arc<Conn>,
        name: Arc<str>,
        span: Span,
        stats: Arc<ClientStats>,
        place: Place,
        shm: shm::Access,
    ) {
        let (cfg, active) = (self.cfg.clone(), self.active.clone());
        let admission = self.admission.clone();
        let id = place.id;
        *active.0.lock().unwrap() += 1;
        let spawned = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                let _entered = span.enter();
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    client::serve(conn, name.clone(), cfg, stats, place, &SHUTDOWN, shm)
                }));
                if res.is_err() {
                    error!(
                        "{name}: the client thread panicked; connection closed, daemon continues"
                    );
                    admission.leave(id);
                }
                let (count, cv) = &*active;
                *count.lock().unwrap() -= 1;
                cv.notify_all();
            });
        if let Err(e) = spawned {
            error!("cannot start a client thread: {e}");
            self.admission.leave(id);
            *self.active.0.lock().unwrap() -= 1;
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}

fn out_of_descriptors_text() -> &'static str {
    "vsockenc-host is out of file descriptors and cannot serve another guest now; try again later"
}

/// Tells a connection it is not served, and closes it.
fn refuse(conn: &Conn, why: &str) {
    let _ = conn.set_write_timeout(Duration::from_millis(200));
    let e = hxfr::ErrorMessage::new(hxfr::error_code::REFUSED, why.to_string());
    let mut w: &Conn = conn;
    let _ = w.write_all(&hxfr::Message::Error(e).encode(hxfr::LEGACY_SESSION_ID));
    conn.shutdown();
}
