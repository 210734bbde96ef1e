//! One guest connection: a reader that decodes and validates requests and
//! feeds the encoding session, and a writer that sends the responses back
//! strictly in request order.
//!
//! The two threads share only a bounded queue of [`Outgoing`] items (its
//! capacity is the per-client in-flight limit: the reader pauses when it is
//! full) and a `dead` flag. Once the guest is gone the flag is set and the
//! writer never writes again; the encoding session is dropped with the
//! connection, so nothing of it can reach a later connection.
//!
//! * `intake.rs`: reading messages header first, with deadlines.
//! * `admit.rs`: what a frame's header may take (client slot, memory),
//!   refused frames, the pixel-rate quota, deadlines on progress.
//! * `ext.rs`: HELLO and the other extension messages, CONFIG_REQ.
//! * `frames.rs`: the frame, compact-frame and shared-memory frame paths,
//!   and the reference of compact frames.
//! * `session.rs`: the encoding session: started, fed, retired.
//! * `writer.rs`: the writer thread.
//!
//! The reader also keeps the connection within what the accept side
//! granted it ([`Place`]): its first frame takes a client slot, its frames
//! and copies are paid from the memory budget, its pixels from its peer's
//! pixel-rate quota.

mod admit;
mod ext;
mod frames;
mod intake;
mod session;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hxfr::ext::{ext_type, HostExt, PTS_UNKNOWN};
use hxfr::shm::ShmRelease;
use hxfr::{
    error_code, msg_type, Decoded, Decoder, ErrorMessage, Header, Limits, Message, ProtocolError,
    HEADER_LEN,
};

use tracing::{debug, error, info, trace, warn, Span};

use crate::admission::Admission;
use crate::budget::{Account, Budget, Charged, Grant};
use crate::codecs::Encoders;
use crate::conn::Conn;
use crate::encoder::{Params, Session};
use crate::fds::Descriptors;
use crate::log::ratelimit::{ConnLimits, RateLimit};
use crate::metrics::Metrics;
use crate::profile::Target;
use crate::quota::Bucket;
use crate::shm::{self, HostShm};
use crate::stats::ClientStats;
use admit::{Refused, SKIPPED_FRAME};
use ext::SUPPORTED_EXTENSIONS;
use intake::Intake;
pub use intake::Pace;
use writer::{write_responses, Outgoing};

/// Warnings about guests, all guests together: many connections sending
/// garbage at once (or one reconnecting) cannot flood the log.
pub static GUEST_WARNINGS: RateLimit = RateLimit::new(50, Duration::from_secs(10));

/// Lines about connections coming and going, all together: a guest that
/// connects thousands of times a second does not flood the log either.
pub static CONNECTION_LINES: RateLimit = RateLimit::new(50, Duration::from_secs(10));

/// How often blocked reads and waits look at the shutdown flag.
const POLL: Duration = Duration::from_millis(200);

/// What every client of this daemon is configured with.
pub struct ClientConfig {
    /// The encoder of each codec; a guest gets H.264 unless it asks for
    /// another (CODEC).
    pub encoders: Encoders,
    pub default_bitrate_kbps: u32,
    pub max_in_flight: usize,
    pub limits: Limits,
    pub write_timeout: Duration,
    pub encode_timeout: Duration,
    pub drain_timeout: Duration,
    /// Disconnect a guest that sends nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// A connection must complete a valid message within this time.
    pub handshake_timeout: Duration,
    /// How long a message may take to arrive.
    pub pace: Pace,
    pub budget: Arc<Budget>,
    pub metrics: Arc<Metrics>,
}

/// What the accept side decided about one connection, and the state it
/// shares with the others.
pub struct Place {
    /// The connection's number.
    pub id: u64,
    /// The listener, as metrics name it.
    pub listener: Arc<str>,
    pub admission: Arc<Admission<Arc<Conn>>>,
    /// The peer's pixel-rate bucket, when its listener has a quota.
    pub quota: Option<Arc<Mutex<Bucket>>>,
    pub fds: Arc<Descriptors>,
}

/// Why the reader stopped.
enum End {
    /// The guest closed or reset the connection: discard in-flight work.
    Gone,
    /// The daemon is shutting down: finish in-flight work first.
    Shutdown,
    /// The stream is garbage (bad magic) or the writer gave up: close.
    Broken,
}

/// Serves one connection until it ends. `peer` names it in every log line.
pub fn serve(
    conn: Arc<Conn>,
    peer: Arc<str>,
    cfg: Arc<ClientConfig>,
    stats: Arc<ClientStats>,
    place: Place,
    shutdown: &AtomicBool,
    shm_access: shm::Access,
) {
    if let Err(e) = conn
        .set_read_timeout(POLL)
        .and_then(|_| conn.set_write_timeout(POLL))
    {
        warn!("{peer}: cannot set socket timeouts: {e}; closing");
        return;
    }
    let (tx, rx) = mpsc::sync_channel::<Outgoing>(cfg.max_in_flight);
    let dead = Arc::new(AtomicBool::new(false));
    let warnings = Arc::new(ConnLimits::new(&GUEST_WARNINGS));
    let writer = {
        let (conn, peer, cfg, stats, dead, warnings) = (
            conn.clone(),
            peer.clone(),
            cfg.clone(),
            stats.clone(),
            dead.clone(),
            warnings.clone(),
        );
        let span = Span::current();
        std::thread::Builder::new()
            .name("client-writer".into())
            .spawn(move || {
                let _entered = span.enter();
                write_responses(&conn, &peer, &cfg, &stats, rx, &dead, &warnings)
            })
    };
    let writer = match writer {
        Ok(w) => w,
        Err(e) => {
            error!("{peer}: cannot start the writer thread: {e}");
            return;
        }
    };

    let shm = HostShm::new(shm_access);
    let release_writer = {
        let (conn, peer, dead, timeout) =
            (conn.clone(), peer.clone(), dead.clone(), cfg.write_timeout);
        Box::new(move || {
            let (c, d) = (conn.clone(), dead.clone());
            shm::release::spawn(peer, dead, move |bytes| {
                let _w = c.write_lock();
                let r = writer::write_bounded(&c, bytes, timeout, &d);
                if r.is_err() {
                    c.shutdown();
                }
                r
            })
        })
    };
    let mut reader = Reader {
        conn: &conn,
        peer: &peer,
        cfg: &cfg,
        stats: &stats,
        tx,
        dead: &dead,
        session: None,
        ext: HostExt::new(
            SUPPORTED_EXTENSIONS | shm.supported(),
            cfg.limits.max_pixel_bytes,
            concat!("vsockenc-host/", env!("CARGO_PKG_VERSION")),
        ),
        params: Params {
            bitrate_kbps: cfg.default_bitrate_kbps,
            fps_n: 30,
            fps_d: 1,
        },
        force_keyframe: false,
        target: None,
        warnings,
        place: &place,
        client: false,
        progressed: false,
        account: None,
        refused: None,
        body_grant: None,
        reference_grant: None,
        session_grant: None,
        shm,
        release_writer: Some(release_writer),
    };
    let end = reader.run(shutdown);
    let session = reader.session.take();
    match end {
        End::Gone => {
            dead.store(true, Ordering::SeqCst);
            drop(session);
        }
        End::Shutdown | End::Broken if !dead.load(Ordering::SeqCst) => {
            if let Some(s) = session {
                s.finish(cfg.drain_timeout);
            }
        }
        // The writer gave up on this guest: nothing more can be sent.
        End::Shutdown | End::Broken => drop(session),
    }
    let was_client = reader.client;
    drop(reader);
    let _ = writer.join();
    // Ends the release writer too.
    dead.store(true, Ordering::SeqCst);
    conn.shutdown();
    place.admission.leave(place.id);
    if was_client {
        info!("{peer}: disconnected; {}", stats.summary());
        // Its frames and session are gone: give their memory back.
        crate::budget::return_freed_memory();
    } else {
        crate::log_limited!(
            CONNECTION_LINES,
            tracing::Level::INFO,
            "{peer}: disconnected; {}",
            stats.summary()
        );
    }
}

struct Reader<'a> {
    conn: &'a Conn,
    peer: &'a str,
    cfg: &'a ClientConfig,
    stats: &'a Arc<ClientStats>,
    tx: SyncSender<Outgoing>,
    dead: &'a AtomicBool,
    session: Option<Session>,
    /// Negotiated extensions, frame indices and the reference frame of
    /// compact frames (all inert for a guest that never says HELLO).
    ext: HostExt,
    params: Params,
    force_keyframe: bool,
    /// The profile and level the guest negotiated (PROFILE), if any.
    target: Option<Target>,
    warnings: Arc<ConnLimits>,
    place: &'a Place,
    /// Holds a client slot (sent a frame).
    client: bool,
    /// Completed a valid message.
    progressed: bool,
    /// The client's standing with the memory budget.
    account: Option<Account>,
    /// The frame whose header came last is refused: answer it so.
    refused: Option<Refused>,
    /// Pays for the body of the frame message being read.
    body_grant: Option<Grant>,
    /// Pays for the reference frame of compact frames.
    reference_grant: Option<Grant>,
    /// Pays for the encoding session's own memory.
    session_grant: Option<Grant>,
    /// Shared-memory frames (inert unless the guest offers a region).
    shm: HostShm,
    /// Starts the thread that sends SHM_RELEASE, at the first region.
    release_writer: Option<Box<dyn FnOnce() -> Option<std::sync::mpsc::Sender<ShmRelease>>>>,
}

impl<'a> Reader<'a> {
    fn run(&mut self, shutdown: &AtomicBool) -> End {
        // Extension messages are decoded from the start: a legacy guest
        // never sends one, and a HELLO must be recognised to be answered.
        let decoder = Decoder::with_extensions(self.cfg.limits);
        let mut intake = Intake::new(decoder, self.cfg.pace);
        let mut src: &Conn = self.conn;
        let connected = Instant::now();
        let mut last_input = connected;
        loop {
            if shutdown.load(Ordering::SeqCst) {
                debug!("{}: shutting down: reading no more requests", self.peer);
                return End::Shutdown;
            }
            if self.dead.load(Ordering::SeqCst) {
                return End::Gone;
            }
            if !self.place.admission.holds(self.place.id) {
                debug!("{}: closed to make room for another connection", self.peer);
                return End::Gone;
            }
            if let Some(why) = self.overdue(&intake, connected) {
                return why;
            }
            let before = intake.stream_offset();
            let res = intake.read(&mut src, POLL, |h| self.on_header(h, shutdown));
            let got = intake.stream_offset() - before;
            ClientStats::add(&self.stats.bytes_in, got);
            if got > 0 {
                last_input = Instant::now();
            } else if let Some(idle) = self.cfg.idle_timeout {
                if last_input.elapsed() >= idle {
                    crate::log_limited!(
                        CONNECTION_LINES,
                        tracing::Level::INFO,
                        "{}: sent nothing for {idle:?} (--idle-timeout); closing the connection",
                        self.peer
                    );
                    return End::Broken;
                }
            }
            if res.as_ref().is_ok_and(|m| m.is_some()) && !self.progressed {
                self.progressed = true;
                self.place.admission.progressed(self.place.id);
            }
            match res {
                Ok(None) => {
                    debug!("{}: the guest closed the connection", self.peer);
                    return End::Gone;
                }
                Ok(Some(Decoded::Legacy(header, msg))) => {
                    if !self.handle(header, msg) {
                        return End::Broken;
                    }
                }
                Ok(Some(Decoded::Ext(header, msg))) => {
                    if !self.handle_ext(header, msg) {
                        return End::Broken;
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e @ ProtocolError::BadMagic { .. }) => {
                    let why = e.to_string();
                    crate::warn_conn!(
                        self.warnings,
                        "{}: {why}; closing this connection",
                        self.peer
                    );
                    self.count_error();
                    self.send_error(0, ErrorMessage::new(error_code::INVALID_MESSAGE, why));
                    return End::Broken;
                }
                Err(e) if e.is_fatal() => {
                    debug!("{}: connection ended: {e}", self.peer);
                    return End::Gone;
                }
                Err(e) => {
                    // A frame refused at its header that did not decode.
                    self.refused = None;
                    self.body_grant = None;
                    self.complain(format_args!("{e}"));
                    self.count_error();
                    let error = ErrorMessage::new(error_code::INVALID_MESSAGE, e.to_string());
                    let bytes = if is_frame_message(&e) {
                        // A refused frame still takes its frame index, and
                        // the reference of compact frames is gone.
                        ClientStats::add(&self.stats.frames_in, 1);
                        let index = self.ext.next_frame();
                        self.ext.forget_reference();
                        self.ext.frame_error(0, PTS_UNKNOWN, index, error)
                    } else {
                        Message::Error(error).encode(0)
                    };
                    if !self.queue(Outgoing::Now(bytes)) {
                        return End::Broken;
                    }
                }
            }
        }
    }

    fn count_error(&self) {
        ClientStats::add(&self.stats.errors, 1);
    }

    /// Queues a message for the writer; false if the writer is gone.
    fn queue(&self, item: Outgoing) -> bool {
        self.tx.send(item).is_ok()
    }

    fn send_error(&self, session_id: u16, e: ErrorMessage) -> bool {
        self.queue(Outgoing::Now(Message::Error(e).encode(session_id)))
    }

    /// Handles one message; false when the connection must close.
    fn handle(&mut self, header: Header, msg: Message) -> bool {
        let sid = header.session_id;
        match msg {
            Message::FrameRequest { request, .. } if self.refused.is_some() => {
                let why = self.refused.take().expect("checked");
                self.answer_refused(sid, request.pts, why)
            }
            Message::FrameRequest { request, pixels } => {
                let index = self.ext.next_frame();
                let wire = HEADER_LEN as u64 + header.payload_size as u64;
                let grant = self.body_grant.take();
                let pixels = pixels.map(|p| Charged::new(p, grant));
                self.frame(sid, request, pixels, index, wire, false)
            }
            Message::Skipped { msg_type, .. } if msg_type == SKIPPED_FRAME => {
                match self.refused.take() {
                    Some(why) => self.answer_refused(sid, PTS_UNKNOWN, why),
                    None => true,
                }
            }
            Message::Ping => {
                trace!("{}: PING", self.peer);
                self.queue(Outgoing::Now(Message::Pong.encode(sid)))
            }
            Message::KeyframeRequest => {
                debug!("{}: keyframe requested", self.peer);
                self.force_keyframe = true;
                true
            }
            Message::ConfigRequest(c) => {
                self.configure(c);
                true
            }
            Message::Error(e) => {
                self.complain(format_args!(
                    "the guest sent ERROR {}: {}",
                    e.code, e.message
                ));
                true
            }
            other => {
                debug!(
                    "{}: skipped {} message (type 0x{:02x}, {} bytes)",
                    self.peer,
                    msg_type::name(other.msg_type()),
                    other.msg_type(),
                    header.payload_size
                );
                true
            }
        }
    }

    /// Logs a problem with the guest's input, rate-limited per connection
    /// and for all guests together (lines over the limits go to debug).
    fn complain(&self, what: std::fmt::Arguments<'_>) {
        crate::warn_conn!(self.warnings, "{}: {what}", self.peer);
    }

    /// Refuses frame `index`: ERROR_PTS when negotiated, else ERROR.
    fn reject(&self, sid: u16, pts: i64, index: u32, e: ErrorMessage) -> bool {
        let reason = match e.code {
            error_code::RESOURCE_NOT_FOUND => "gpu_resource",
            error_code::ENCODE_FAILED => "encode_failed",
            error_code::REFUSED => "refused",
            _ => "invalid",
        };
        self.reject_because(sid, pts, index, e, reason)
    }

    /// [`reject`](Self::reject), counted under `reason` in the metrics.
    fn reject_because(
        &self,
        sid: u16,
        pts: i64,
        index: u32,
        e: ErrorMessage,
        reason: &str,
    ) -> bool {
        self.complain(format_args!("ERROR {}: {}", e.code, e.message));
        self.stats.failed(reason);
        self.queue(Outgoing::Now(self.ext.frame_error(sid, pts, index, e)))
    }
}

/// Whether a decoding error is about a frame message (it then takes a
/// frame index).
fn is_frame_message(e: &ProtocolError) -> bool {
    let t = match e {
        ProtocolError::PayloadTooLarge { msg_type, .. }
        | ProtocolError::PayloadTooSmall { msg_type, .. }
        | ProtocolError::Malformed { msg_type, .. } => *msg_type,
        _ => return false,
    };
    t == msg_type::FRAME_REQUEST || t == ext_type::COMPACT_FRAME
}
