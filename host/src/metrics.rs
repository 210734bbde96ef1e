//! Metrics for operators: Prometheus counters per guest and for the whole
//! daemon, served as text at `http://ADDR/metrics` with `--metrics ADDR`.
//!
//! The counters always exist (they are a few atomics per guest); only the
//! endpoint is opt-in. A guest's series are labelled with its listener and
//! its peer (`cid:3`, `uid:1000`, `127.0.0.1`), not its connection, so
//! reconnecting guests do not multiply series. The encoding is
//! `prometheus-client`'s (OpenMetrics text, which Prometheus scrapes).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuestLabels {
    pub listener: String,
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailedLabels {
    pub listener: String,
    pub peer: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub listener: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

type LatencyFamily = Family<GuestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    frames_in: Family<GuestLabels, Counter>,
    frames_out: Family<GuestLabels, Counter>,
    bytes_in: Family<GuestLabels, Counter>,
    bytes_out: Family<GuestLabels, Counter>,
    failed: Family<FailedLabels, Counter>,
    latency: LatencyFamily,
    paced: Family<GuestLabels, Counter<f64, AtomicU64>>,
    connections: Family<ListenerLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    clients: Family<StateLabels, Gauge>,
    budget_limit: Gauge,
    budget_in_use: Gauge,
    fds_in_use: Gauge,
    fds_limit: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("vsockenc_host");
        let m = Metrics {
            frames_in: Family::default(),
            frames_out: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            failed: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            paced: Family::default(),
            connections: Family::default(),
            refusals: Family::default(),
            clients: Family::default(),
            budget_limit: Gauge::default(),
            budget_in_use: Gauge::default(),
            fds_in_use: Gauge::default(),
            fds_limit: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "frames_received",
            "Frames received from the guest",
            m.frames_in.clone(),
        );
        r.register(
            "frames_encoded",
            "Frames answered with their encoded access unit",
            m.frames_out.clone(),
        );
        r.register(
            "frames_failed",
            "Frames answered with an ERROR instead, by reason",
            m.failed.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes received from the guest",
            m.bytes_in.clone(),
        );
        r.register("sent_bytes", "Bytes sent to the guest", m.bytes_out.clone());
        r.register(
            "encode_latency_seconds",
            "Time from a frame's arrival to its encoded output",
            m.latency.clone(),
        );
        r.register(
            "paced_seconds",
            "Time the guest's reading was paused by its pixel-rate quota",
            m.paced.clone(),
        );
        r.register("connections", "Connections accepted", m.connections.clone());
        r.register(
            "refusals",
            "Connections refused or closed by the daemon's protections, by reason",
            m.refusals.clone(),
        );
        r.register(
            "clients",
            "Connections now: clients (sent a frame) and pending ones",
            m.clients.clone(),
        );
        r.register(
            "memory_budget_bytes",
            "The memory budget (--memory-budget)",
            m.budget_limit.clone(),
        );
        r.register(
            "memory_in_use_bytes",
            "Memory held against the budget now",
            m.budget_in_use.clone(),
        );
        r.register(
            "open_fds",
            "File descriptors open now",
            m.fds_in_use.clone(),
        );
        r.register("max_fds", "The file descriptor limit", m.fds_limit.clone());
        Metrics { registry: r, ..m }
    }

    /// The counters of one guest (peer) on one listener.
    pub fn guest(self: &Arc<Self>, listener: &str, peer: &str) -> GuestMetrics {
        let l = GuestLabels {
            listener: listener.to_string(),
            peer: peer.to_string(),
        };
        GuestMetrics {
            frames_in: self.frames_in.get_or_create(&l).clone(),
            frames_out: self.frames_out.get_or_create(&l).clone(),
            bytes_in: self.bytes_in.get_or_create(&l).clone(),
            bytes_out: self.bytes_out.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
            paced: self.paced.get_or_create(&l).clone(),
            failed: Some((self.clone(), l)),
        }
    }

    pub fn connection(&self, listener: &str) {
        self.connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
    }

    pub fn refusal(&self, listener: &str, reason: &str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets the gauges that are read rather than counted.
    pub fn set_gauges(&self, g: Gauges) {
        for (state, n) in [("client", g.clients), ("pending", g.pending)] {
            self.clients
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.budget_limit.set(g.budget_limit as i64);
        self.budget_in_use.set(g.budget_in_use as i64);
        self.fds_in_use.set(g.fds_in_use as i64);
        self.fds_limit.set(g.fds_limit.min(i64::MAX as u64) as i64);
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Values of the gauges at a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub clients: u32,
    pub pending: u32,
    pub budget_limit: u64,
    pub budget_in_use: u64,
    pub fds_in_use: u64,
    pub fds_limit: u64,
}

/// One guest's counters, held by its connection's statistics.
pub struct GuestMetrics {
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    latency: Histogram,
    paced: Counter<f64, AtomicU64>,
    /// Detached counters (tests, no registry) have none.
    failed: Option<(Arc<Metrics>, GuestLabels)>,
}

impl Default for GuestMetrics {
    /// Counters that belong to no registry.
    fn default() -> Self {
        GuestMetrics {
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            latency: latency_histogram(),
            paced: Counter::default(),
            failed: None,
        }
    }
}

impl GuestMetrics {
    pub fn latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    pub fn paced(&self, d: Duration) {
        self.paced.inc_by(d.as_secs_f64());
    }

    pub fn failed(&self, reason: &str) {
        if let Some((m, l)) = &self.failed {
            m.failed
                .get_or_create(&FailedLabels {
                    listener: l.listener.clone(),
                    peer: l.peer.clone(),
                    reason: reason.to_string(),
                })
                .inc();
        }
    }
}

/// Parses `--metrics`: `HOST:PORT` or `tcp:HOST:PORT`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let a = s.strip_prefix("tcp:").unwrap_or(s);
    a.to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e} (expected HOST:PORT, e.g. 127.0.0.1:9464)"))?
        .next()
        .ok_or_else(|| format!("{s:?}: no address"))
}

/// Serves `GET /metrics` on `addr` from a thread of its own; `refresh`
/// sets the gauges before each scrape. Returns the address bound.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: impl Fn(&Metrics) + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .context("the metrics server has no IP address")?;
    if !bound.ip().is_loopback() {
        warn!("metrics on {bound}, not a loopback address: anyone who reaches it sees which guests use this host");
    }
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("");
                let resp = if req.method() == &tiny_http::Method::Get && path == "/metrics" {
                    refresh(&metrics);
                    let ctype = tiny_http::Header::from_bytes(
                        "Content-Type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .expect("a valid header");
                    tiny_http::Response::from_string(metrics.encode()).with_header(ctype)
                } else {
                    tiny_http::Response::from_string("vsockenc-host: metrics are at /metrics\n")
                        .with_status_code(404)
                };
                if let Err(e) = req.respond(resp) {
                    debug!("metrics: answering a scrape failed: {e}");
                }
            }
        })?;
    info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_and_the_daemon_are_encoded() {
        let m = Arc::new(Metrics::new());
        let g = m.guest("vsock:5000", "cid:3");
        g.frames_in.inc_by(3);
        g.frames_out.inc_by(2);
        g.failed("memory_budget");
        g.latency(Duration::from_millis(12));
        m.refusal("vsock:5000", "access");
        m.set_gauges(Gauges {
            clients: 1,
            budget_limit: 1 << 30,
            ..Gauges::default()
        });
        let text = m.encode();
        for line in [
            "vsockenc_host_frames_received_total{listener=\"vsock:5000\",peer=\"cid:3\"} 3",
            "vsockenc_host_frames_encoded_total{listener=\"vsock:5000\",peer=\"cid:3\"} 2",
            "vsockenc_host_frames_failed_total{listener=\"vsock:5000\",peer=\"cid:3\",reason=\"memory_budget\"} 1",
            "vsockenc_host_refusals_total{listener=\"vsock:5000\",reason=\"access\"} 1",
            "vsockenc_host_encode_latency_seconds_count{listener=\"vsock:5000\",peer=\"cid:3\"} 1",
            "vsockenc_host_memory_budget_bytes 1073741824",
            "vsockenc_host_clients{state=\"client\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        // A second connection of the same peer adds to the same series.
        m.guest("vsock:5000", "cid:3").frames_in.inc();
        assert!(m.encode().contains(
            "vsockenc_host_frames_received_total{listener=\"vsock:5000\",peer=\"cid:3\"} 4"
        ));
    }

    #[test]
    fn addresses_take_an_optional_scheme() {
        assert_eq!(parse_addr("127.0.0.1:9464").unwrap().port(), 9464);
        assert_eq!(parse_addr("tcp:127.0.0.1:9").unwrap().port(), 9);
        assert!(parse_addr("nowhere").is_err());
    }
}
