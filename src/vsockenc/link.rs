//! The link's life: connecting, reconnecting after a loss, keep-alive PINGs,
//! and what the element says when the host misbehaves or goes away.
//!
//! A connection is made once in `start()` and again by the link thread
//! (`vsockenc-link`) whenever a loss scheduled a reconnect. The thread sleeps
//! on the state's `link` condvar until the schedule is due, a PING is due,
//! or the element stops. Every connection starts with a HELLO (when
//! `extensions` is on) and the stored CONFIG_REQ, and asks for a keyframe:
//! a new host session starts with one anyway.
//!
//! Stopping never waits on the host: [`Link::shutdown`] shuts the socket
//! down (a blocked write or read returns at once) and the link thread is
//! only waited for briefly; a connection attempt still in progress (a
//! host that does not answer SYNs) is abandoned and ends on its own within
//! `connect-timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use hxfr::ext::{ext_bits, CodecState, ProfileResponse};
use hxfr::profile::{Level, Profile};
use hxfr::ConfigRequest;
use parking_lot::Mutex;

use super::connection::Connection;
use super::delta::TILE;
use super::receiver::{self, ReaderContext, ReaderEvents};
use super::report::{self, Kind, Limiter};
use super::settings::Settings;
use super::shm::{GuestShm, Offer, Region};
use super::state::Shared;
use super::transport::{self, Address};
use super::VsockBaseEnc;

/// How long `join` waits for the link thread before leaving it to finish a
/// connection attempt on its own.
const JOIN_WAIT: Duration = Duration::from_millis(50);

const AGENT: &str = concat!("vsockenc/", env!("CARGO_PKG_VERSION"));

pub struct Link {
    settings: Settings,
    pub addr: Address,
    shared: Arc<Shared>,
    element: glib::WeakRef<VsockBaseEnc>,
    generation: AtomicU64,
    /// The connection whose host did not answer the HELLO in time.
    unanswered: AtomicU64,
    /// The last connection whose refusal of the codec was reported (once
    /// per connection, whoever finds it first).
    codec_reported: AtomicU64,
    /// The CONFIG_REQ of the current caps, sent on every new connection.
    config: Mutex<Option<ConfigRequest>>,
    thread: Mutex<Option<(JoinHandle<()>, mpsc::Receiver<()>)>>,
    /// Rate limits of the warnings posted about the host.
    limiter: Mutex<Limiter>,
    /// The shared-memory region of this run, if any.
    pub shm: Arc<GuestShm>,
}

enum Due {
    Connect,
    Keepalive(Arc<Connection>),
}

impl Link {
    pub fn new(settings: Settings, shared: Arc<Shared>, element: &VsockBaseEnc) -> Arc<Link> {
        let addr = settings.address();
        let shm = Arc::new(GuestShm::open(&settings, &addr));
        match (&shm.region, &shm.unavailable) {
            (Some(r), _) => gst::info!(
                crate::vsockenc::CAT,
                obj = element,
                "shared-memory region: {} of {} MiB",
                r.name,
                r.len() >> 20
            ),
            (None, Some(why)) if settings.shared_memory && settings.extensions => {
                shm.first_fallback();
                gst::info!(
                    crate::vsockenc::CAT,
                    obj = element,
                    "no shared memory ({why}): frames go over the socket to {addr} (logged once)"
                );
            }
            _ => {}
        }
        Arc::new(Link {
            shm,
            addr,
            settings,
            shared,
            element: element.downgrade(),
            generation: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            codec_reported: AtomicU64::new(0),
            config: Mutex::new(None),
            thread: Mutex::new(None),
            limiter: Mutex::new(Limiter::default()),
        })
    }

    /// Connects now and makes the connection current. On success the
    /// HELLO and the stored CONFIG_REQ are sent before anything else, and
    /// the next frame is made a keyframe. Returns whether an earlier
    /// connection existed (a reconnect).
    pub fn connect(self: &Arc<Self>) -> std::io::Result<bool> {
        let s = &self.settings;
        let stream = transport::connect(&self.addr, s.connect_timeout())?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let write_timeout = s.response_timeout().max(Duration::from_secs(1));
        let (conn, read_half) = Connection::new(
            self.addr.clone(),
            generation,
            stream,
            write_timeout,
            self.shm.region.clone(),
        )?;
        // Negotiation starts over on every connection: until the host
        // answers the HELLO (a legacy host never does) this is legacy HXFR.
        let mut sent = 0u64;
        let requested = s.requested_extensions() | self.shm.requested();
        let mut pinged = false;
        if requested != 0 {
            match conn.send_hello(requested, s.codec, TILE, AGENT) {
                Ok(n) => sent += n as u64,
                Err(e) => log_weak!(warning, self.element, "HELLO to {} failed: {e}", self.addr),
            }
            // Answered after the HELLO_ACK by vsockenc-host, and without
            // one by a legacy host: within one round trip the element knows
            // which (GuestExt::on_pong), without waiting for a timeout.
            if let Ok(n) = conn.send_probe_ping() {
                sent += n as u64;
                pinged = true;
            }
        }
        let config = *self.config.lock();
        if let Some(cfg) = config {
            if let Ok(n) = conn.send_config(&cfg) {
                sent += n as u64;
            }
        }
        let (old, reconnected) = {
            let mut st = self.shared.lock();
            if st.stop {
                drop(st);
                conn.close();
                return Err(std::io::Error::other("the element is stopping"));
            }
            // Before the reader starts: if this connection dies at once (a
            // dying daemon still accepting), the reader schedules the next
            // attempt, and that schedule must stand.
            st.next_connect = None;
            let reconnected = st.connected_at.replace(Instant::now()).is_some();
            if reconnected {
                st.table.stats.reconnects += 1;
            }
            st.table.stats.extensions = 0;
            st.table.stats.bytes_sent += sent;
            st.table.stats.pings_sent += pinged as u64;
            st.table.request_keyframe();
            (st.link.replace(conn.clone()), reconnected)
        };
        let cx = ReaderContext {
            shared: self.shared.clone(),
            events: self.clone(),
            element: self.element.clone(),
            shm: self.shm.clone(),
            codec: s.codec,
        };
        let reader_conn = conn.clone();
        let reader = std::thread::Builder::new()
            .name(format!("vsockenc-rx-{generation}"))
            .spawn(move || receiver::run(reader_conn, read_half, cx));
        match reader {
            Ok(h) => conn.set_reader(h),
            Err(e) => conn.break_with(format!("cannot start the reader thread: {e}")),
        }
        if let Some(old) = old {
            old.close();
        }
        log_weak!(
            info,
            self.element,
            "connected to {} (connection {generation}{})",
            self.addr,
            if reconnected { ", a reconnect" } else { "" }
        );
        Ok(reconnected)
    }

    /// Whether the current host accepted the protocol extensions: waits up
    /// to `timeout` for its answer to the HELLO (one round trip: see
    /// `GuestExt::on_pong`). `None` without a connection, or when the host
    /// did not answer in time.
    pub fn extended(&self, timeout: Duration) -> Option<bool> {
        if self.settings.requested_extensions() == 0 {
            return Some(false);
        }
        let give_up = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            let conn = st.usable_link()?;
            if let Some(known) = conn.ext.lock().extended() {
                return Some(known);
            }
            // A host that did not answer once is not waited for again on
            // the same connection (caps queries come many at a time).
            if st.stop || self.unanswered.load(Ordering::Relaxed) == conn.generation {
                return None;
            }
            if Instant::now() >= give_up {
                self.unanswered.store(conn.generation, Ordering::Relaxed);
                log_weak!(
                    warning,
                    self.element,
                    "{} did not answer HELLO or PING within {} ms: negotiating as with a legacy host",
                    self.addr,
                    timeout.as_millis()
                );
                return None;
            }
            self.shared.wait_streaming(&mut st, Some(give_up));
        }
    }

    /// Whether the current host encodes this element's codec, after
    /// waiting up to `timeout` for its answer to the HELLO. `None` when that
    /// is not known (no connection, no answer in time).
    pub fn codec_state(&self, timeout: Duration) -> Option<CodecState> {
        self.extended(timeout)?;
        let conn = self.shared.lock().usable_link()?;
        let state = conn.ext.lock().codec_state().clone();
        Some(state)
    }

    /// The host of `conn` does not encode this element's codec: an error
    /// on the bus (once per connection) that says why and what to do, and
    /// a stored flow error that stops the stream. No frame is sent to such
    /// a host (send.rs): it would encode another codec than the caps say.
    pub fn codec_refused(&self, conn: &Connection, why: &str) {
        if self.codec_reported.swap(conn.generation, Ordering::SeqCst) == conn.generation {
            return;
        }
        {
            let mut st = self.shared.lock();
            st.set_flow(Err(gst::FlowError::Error));
        }
        self.shared.wake_all();
        let codec = self.settings.codec;
        let Some(el) = self.element.upgrade() else {
            return;
        };
        gst::element_error!(
            el,
            gst::CoreError::Negotiation,
            ("the host at {} cannot encode {}: {}", conn.addr, codec, why),
            [
                "{} needs a vsockenc-host with an {} encoder (--{}-encoder; see its startup log), or use vsockenc for H.264, which every host encodes",
                el.factory().map(|f| f.name().to_string()).unwrap_or_default(),
                codec,
                if codec == hxfr::Codec::Av1 { "av1" } else { "h265" }
            ]
        );
    }

    /// Whether the current host takes I420, YV12, YUY2 and UYVY (the
    /// FORMATS extension), after waiting up to `timeout` for its answer to
    /// the HELLO. `None` when that is not known (no connection).
    pub fn takes_negotiated_formats(&self, timeout: Duration) -> Option<bool> {
        match self.extended(timeout)? {
            false => Some(false),
            true => {
                let conn = self.shared.lock().usable_link()?;
                let formats = conn.ext.lock().formats();
                Some(formats)
            }
        }
    }

    /// Asks the current host for `profile` (at most `max_level`) for
    /// frames of `size` at `fps`, and waits up to `timeout` for its answer.
    /// `Ok(None)`: the host cannot be asked (no connection, a legacy host,
    /// or no PROFILE extension). `Err`: no answer in time.
    pub fn ask_profile(
        &self,
        profile: Profile,
        max_level: Level,
        size: (u32, u32),
        fps: (u32, u32),
        timeout: Duration,
    ) -> Result<Option<ProfileResponse>, String> {
        let Some(conn) = self.shared.lock().usable_link() else {
            return Ok(None);
        };
        let Some(req) = conn
            .ext
            .lock()
            .profile_request(profile, max_level, size, fps)
        else {
            return Ok(None);
        };
        let token = req.token;
        match conn.send_profile_request(req) {
            Ok(n) => self.shared.lock().table.stats.bytes_sent += n as u64,
            Err(e) => return Err(format!("cannot ask {} for a profile: {e}", self.addr)),
        }
        let give_up = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = conn.ext.lock().profile_response(token) {
                return Ok(Some(r.clone()));
            }
            if st.stop || conn.is_closed() {
                return Err(format!("the connection to {} ended", self.addr));
            }
            if Instant::now() >= give_up {
                return Err(format!(
                    "{} did not answer the profile request within {} ms",
                    self.addr,
                    timeout.as_millis()
                ));
            }
            self.shared.wait_streaming(&mut st, Some(give_up));
        }
    }

    /// Waits up to `timeout` until the host has answered the offer of the
    /// shared-memory region (when it accepted SHM), so that the frames of
    /// new caps go by slot from the first one.
    pub fn settle_shm(&self, timeout: Duration) {
        if self.shm.region.is_none() {
            return;
        }
        let give_up = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            let Some(conn) = st.usable_link() else {
                return;
            };
            let answered = {
                let ext = conn.ext.lock();
                match ext.extended() {
                    Some(true) if ext.has(ext_bits::SHM) => {
                        matches!(conn.shm.lock().offer, Offer::Accepted | Offer::Refused)
                    }
                    Some(_) => true,
                    None => false,
                }
            };
            if answered || st.stop || Instant::now() >= give_up {
                return;
            }
            self.shared.wait_streaming(&mut st, Some(give_up));
        }
    }

    /// The region whose slots upstream may write into.
    pub fn shm_region(&self) -> Option<Arc<Region>> {
        self.shm.region.clone()
    }

    /// Schedules connection attempts from `at` on (the link thread makes
    /// them).
    pub fn schedule_connect(&self, at: Instant) {
        self.shared.lock().next_connect = Some(at);
        self.shared.wake_link();
    }

    /// Starts the link thread.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let link = self.clone();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("vsockenc-link".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends.
                let _done = done_tx;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| link.run()));
                if r.is_err() {
                    link.fail("internal error: the vsockenc link thread panicked");
                }
            })?;
        *self.thread.lock() = Some((handle, done_rx));
        Ok(())
    }

    fn run(self: &Arc<Self>) {
        loop {
            let due = {
                let mut st = self.shared.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    let now = Instant::now();
                    let (due, at) = match st.usable_link() {
                        Some(c) => {
                            let at = self.next_keepalive(&c);
                            (Due::Keepalive(c), at)
                        }
                        None => (Due::Connect, st.next_connect),
                    };
                    if at.is_some_and(|t| t <= now) {
                        break due;
                    }
                    self.shared.wait_link(&mut st, at);
                }
            };
            match due {
                Due::Connect => self.reconnect(),
                Due::Keepalive(c) => self.keepalive(&c),
            }
        }
    }

    fn reconnect(self: &Arc<Self>) {
        match self.connect() {
            Ok(reconnected) => {
                if let Some(el) = self.element.upgrade() {
                    let what = if reconnected {
                        "frames are being encoded again"
                    } else {
                        "the host appeared; frames are being encoded from now on"
                    };
                    gst::element_info!(
                        el,
                        gst::ResourceError::OpenReadWrite,
                        ("connected to vsockenc host at {}", self.addr),
                        ["{what}"]
                    );
                }
            }
            Err(e) => {
                log_weak!(
                    debug,
                    self.element,
                    "connecting to {} failed: {}",
                    self.addr,
                    transport::describe(&e)
                );
                let mut st = self.shared.lock();
                if !st.stop {
                    st.next_connect = Some(Instant::now() + self.settings.reconnect_interval());
                }
            }
        }
    }

    /// When the current connection next needs the keepalive's attention
    /// (None: keepalive off).
    fn next_keepalive(&self, c: &Connection) -> Option<Instant> {
        let ka = self.settings.keepalive_interval()?;
        let t = c.times();
        Some(match t.ping_outstanding {
            Some(p) => p + self.dead_after(ka),
            None => t.last_write + ka,
        })
    }

    fn keepalive(&self, c: &Connection) {
        let Some(ka) = self.settings.keepalive_interval() else {
            return;
        };
        let now = Instant::now();
        let times = c.times();
        if let Some(ping) = times.ping_outstanding {
            if now.saturating_duration_since(ping) >= self.dead_after(ka) {
                c.break_with(format!(
                    "no answer to PING within {} ms",
                    self.dead_after(ka).as_millis()
                ));
            }
            return;
        }
        if now.saturating_duration_since(times.last_write) < ka {
            return;
        }
        match c.send_ping() {
            Ok(n) => {
                let mut st = self.shared.lock();
                st.table.stats.pings_sent += 1;
                st.table.stats.bytes_sent += n as u64;
                drop(st);
                log_weak!(trace, self.element, "PING to {}", self.addr);
            }
            Err(e) => log_weak!(debug, self.element, "PING to {} failed: {e}", self.addr),
        }
    }

    fn dead_after(&self, ka: Duration) -> Duration {
        ka.max(self.settings.response_timeout())
    }

    /// A new bitrate while running: the host hears of it at once (a new
    /// CONFIG_REQ) when the caps are known; otherwise the next `set_format`
    /// sends it.
    pub fn set_bitrate(&self, bps: u32) {
        let cfg = {
            let mut c = self.config.lock();
            let Some(cfg) = c.as_mut() else { return };
            if cfg.bitrate == bps {
                return;
            }
            cfg.bitrate = bps;
            *cfg
        };
        log_weak!(info, self.element, "bitrate now {} kbit/s", bps / 1000);
        self.send_config(cfg);
    }

    /// Stores the CONFIG_REQ and sends it if connected. Never waits for an
    /// answer: no legacy host sends one.
    pub fn set_config(&self, cfg: ConfigRequest) {
        *self.config.lock() = Some(cfg);
        self.send_config(cfg);
    }

    fn send_config(&self, cfg: ConfigRequest) {
        let conn = self.shared.lock().usable_link();
        let Some(c) = conn else { return };
        match c.send_config(&cfg) {
            Ok(n) => {
                self.shared.lock().table.stats.bytes_sent += n as u64;
                log_weak!(
                    debug,
                    self.element,
                    "sent CONFIG_REQ {cfg:?} to {}",
                    self.addr
                );
            }
            Err(e) => log_weak!(
                warning,
                self.element,
                "CONFIG_REQ to {} failed: {e}",
                self.addr
            ),
        }
    }

    /// EOS with DRAIN negotiated: asks the host to answer every frame sent
    /// on the current connection. Returns the connection and token to wait
    /// for (DRAIN_DONE), `None` without a connection or without DRAIN.
    pub fn start_drain(&self) -> Option<(Arc<Connection>, u64)> {
        static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
        let conn = self.shared.lock().usable_link()?;
        if !conn.ext.lock().has(ext_bits::DRAIN) {
            return None;
        }
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        match conn.send_drain(token) {
            Ok(n) => {
                self.shared.lock().table.stats.bytes_sent += n as u64;
                log_weak!(
                    debug,
                    self.element,
                    "EOS: DRAIN {token} sent to {}",
                    self.addr
                );
                Some((conn, token))
            }
            Err(e) => {
                log_weak!(
                    debug,
                    self.element,
                    "EOS: DRAIN to {} failed: {e}",
                    self.addr
                );
                None
            }
        }
    }

    /// Stops everything that could wait on the host: marks the state
    /// stopped (and flushing), wakes every waiter and shuts the connection
    /// down, so a write blocked on a host that does not read returns at
    /// once. Idempotent; does not wait for any thread.
    pub fn shutdown(&self) {
        let conn = {
            let mut st = self.shared.lock();
            st.stop = true;
            st.flushing = true;
            st.link.clone()
        };
        self.shared.wake_all();
        if let Some(c) = conn {
            c.shut_down();
        }
    }

    /// After [`Link::shutdown`]: closes the connection (joining its
    /// reader) and waits briefly for the link thread.
    pub fn join(&self) {
        let conn = self.shared.lock().link.take();
        if let Some(c) = conn {
            c.close();
        }
        let thread = self.thread.lock().take();
        if let Some((handle, done)) = thread {
            match done.recv_timeout(JOIN_WAIT) {
                Err(mpsc::RecvTimeoutError::Timeout) => log_weak!(
                    debug,
                    self.element,
                    "leaving the connection attempt to {} to end on its own",
                    self.addr
                ),
                _ => {
                    let _ = handle.join();
                }
            }
        }
    }

    /// An error that ends the stream (no reconnect, or a thread died).
    fn fail(&self, msg: &str) {
        self.shared.lock().set_flow(Err(gst::FlowError::Error));
        self.shared.wake_all();
        if let Some(el) = self.element.upgrade() {
            gst::element_error!(el, gst::CoreError::Failed, ("{}", msg));
        }
    }
}

impl Link {
    /// Whether a warning of `kind` goes on the bus now (see
    /// [`report::Limiter`]): the text to append about what was held back.
    fn admit(&self, kind: Kind) -> Option<String> {
        self.limiter
            .lock()
            .admit(kind, Instant::now())
            .map(report::held_back)
    }
}

impl ReaderEvents for Link {
    fn codec_refused(&self, conn: &Connection, why: &str) {
        Link::codec_refused(self, conn, why);
    }

    fn host_error(&self, conn: &Connection, code: i32, message: &str, pts: Option<i64>) {
        let frame = pts.map_or("no frame in flight".to_string(), |p| {
            format!("frame pts {p} dropped")
        });
        let Some(el) = self.element.upgrade() else {
            return;
        };
        gst::warning!(
            crate::vsockenc::CAT,
            obj = el,
            "host {} reported error {code}: \"{message}\" ({frame})",
            conn.addr
        );
        let Some(held) = self.admit(Kind::HostError) else {
            return;
        };
        gst::element_warning!(
            el,
            gst::StreamError::Encode,
            (
                "vsockenc host at {} failed to encode: {}",
                conn.addr,
                message
            ),
            ["error code {code}; {frame}; the next frame is sent as a keyframe{held}"]
        );
    }

    fn protocol_warning(&self, conn: &Connection, what: &str) {
        let Some(el) = self.element.upgrade() else {
            return;
        };
        gst::warning!(crate::vsockenc::CAT, obj = el, "from {}: {what}", conn.addr);
        let Some(held) = self.admit(Kind::BadMessage) else {
            return;
        };
        gst::element_warning!(
            el,
            gst::StreamError::Decode,
            ("bad message from vsockenc host at {}", conn.addr),
            [
                "{what}; the stream goes on (a frame without answer is dropped at its timeout; \
                 a host whose answers keep being malformed is disconnected){held}"
            ]
        );
    }

    fn refused(&self, conn: &Connection, why: &str) {
        // The host closes the connection after this; the loss that follows
        // says nothing new.
        conn.mark_refused();
        let Some(el) = self.element.upgrade() else {
            return;
        };
        gst::warning!(
            crate::vsockenc::CAT,
            obj = el,
            "host {} refused this guest: {why}",
            conn.addr
        );
        let Some(held) = self.admit(Kind::Refused) else {
            return;
        };
        let next = if self.settings.reconnect {
            format!(
                "frames are dropped; the element asks again every {} ms (reconnect-interval)",
                self.settings.reconnect_interval_ms
            )
        } else {
            "set reconnect=true to keep asking".to_string()
        };
        gst::element_warning!(
            el,
            gst::ResourceError::OpenReadWrite,
            (
                "vsockenc host at {} does not serve this guest: {}",
                conn.addr,
                why
            ),
            ["{next}{held}"]
        );
    }

    fn answering_again(&self, conn: &Connection) {
        if let Some(el) = self.element.upgrade() {
            gst::element_info!(
                el,
                gst::ResourceError::Read,
                ("vsockenc host at {} answers again", conn.addr),
                ["frames are being encoded again after some got no answer in time"]
            );
        }
    }

    fn loss_is_fatal(&self) -> bool {
        !self.settings.reconnect
    }

    fn lost(&self, conn: &Connection, why: &str, lost: &[i64]) {
        let dropped = describe_lost(lost);
        let retry_at = {
            let mut st = self.shared.lock();
            if st.stop {
                return;
            }
            if self.settings.reconnect {
                // Retry at once after a connection that lived a while (a
                // host restart), but at most once per reconnect-interval: a
                // host that accepts and then closes at once (for example at
                // its --max-clients) must not be hammered.
                let now = Instant::now();
                let at = match st.connected_at {
                    Some(t) => (t + self.settings.reconnect_interval()).max(now),
                    None => now,
                };
                st.next_connect = Some(at);
                Some(at)
            } else {
                st.set_flow(Err(gst::FlowError::Error));
                None
            }
        };
        self.shared.wake_all();
        let Some(el) = self.element.upgrade() else {
            return;
        };
        if retry_at.is_some() {
            gst::warning!(
                crate::vsockenc::CAT,
                obj = el,
                "lost connection to {}: {why} ({dropped})",
                conn.addr
            );
            if conn.was_refused() {
                return;
            }
            let Some(held) = self.admit(Kind::Lost) else {
                return;
            };
            gst::element_warning!(
                el,
                gst::ResourceError::Read,
                ("lost connection to vsockenc host at {}: {}", conn.addr, why),
                [
                    "{dropped}; reconnecting every {} ms (frames are dropped until then){held}",
                    self.settings.reconnect_interval_ms
                ]
            );
        } else {
            gst::element_error!(
                el,
                gst::ResourceError::Read,
                ("lost connection to vsockenc host at {}: {}", conn.addr, why),
                ["{dropped}; set reconnect=true to keep streaming through host restarts"]
            );
        }
    }
}

/// "no frame in flight" / "frame pts 1 dropped" / "3 frames in flight
/// (pts 1 .. 3) dropped", wire PTS in nanoseconds.
fn describe_lost(lost: &[i64]) -> String {
    match lost {
        [] => "no frame was in flight".into(),
        [one] => format!("the frame in flight (pts {one} ns) was dropped"),
        [first, .., last] => format!(
            "{} frames in flight (pts {first} .. {last} ns) were dropped",
            lost.len()
        ),
    }
}
