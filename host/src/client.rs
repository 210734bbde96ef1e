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
//! * `writer.rs`: the writer thread.
//!
//! The reader also keeps the connection within what the accept side
//! granted it ([`Place`]): its first frame takes a client slot, its frames
//! and copies are paid from the memory budget, its pixels from its peer's
//! pixel-rate quota.

mod intake;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hxfr::ext::{
    ext_bits, ext_type, CompactFrame, ExtMessage, HostExt, ProfileRequest, PTS_UNKNOWN,
};
use hxfr::message::FRAME_REQUEST_FIXED;
use hxfr::shm::{RegionKind, ShmFrame, ShmOffer, ShmRelease};
use hxfr::{
    error_code, msg_type, ConfigRequest, Decoded, Decoder, ErrorMessage, FrameLayout, FrameRequest,
    Header, Limits, Message, ProtocolError, FLAG_PIXELS, HEADER_LEN,
};

use tracing::{debug, error, info, trace, warn, Span};

use crate::admission::{Admission, Refusal};
use crate::budget::{Account, Budget, Charged, Grant, Short};
use crate::codecs::{EncoderChoice, Encoders};
use crate::conn::Conn;
use crate::encoder::{encode_failed, Job, Params, Session, SessionKey};
use crate::fds::{self, Descriptors};
use crate::log::ratelimit::{ConnLimits, RateLimit};
use crate::metrics::Metrics;
use crate::profile::{Negotiator, Outcome, Target};
use crate::quota::Bucket;
use crate::shm::{self, HostShm, SlotFrame};
use crate::stats::ClientStats;
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

/// How long a frame waits for the memory budget before it is refused
/// (the guest's own frames being encoded free memory meanwhile).
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// A COMPACT_FRAME refused before its body is read is handed to the
/// decoder as this (unknown) extension type, which it skips unbuffered.
const SKIPPED_FRAME: u8 = ext_type::LAST;

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

/// Why a frame is refused before its body is read.
enum Refused {
    /// No client slot: the connection closes after the answer.
    Slot(Refusal),
    Budget(Short),
}

/// What this daemon offers a guest that says HELLO: everything it knows
/// (FRAME_CHECKSUM only to a guest that asks for it; PROFILE and FORMATS
/// work with any encoder: the answer to a profile request comes from the
/// encoder itself), shared memory only where the connection can have it
/// ([`HostShm::supported`]).
const SUPPORTED_EXTENSIONS: u32 = ext_bits::KNOWN & !ext_bits::SHM;

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

    /// Whether the connection missed a deadline on progress: no valid
    /// message within the handshake timeout, or a message arriving slower
    /// than its allowance.
    fn overdue(&self, intake: &Intake, connected: Instant) -> Option<End> {
        let now = Instant::now();
        if !self.progressed && now.duration_since(connected) > self.cfg.handshake_timeout {
            self.cfg
                .metrics
                .refusal(&self.place.listener, "handshake_timeout");
            crate::log_limited!(
                CONNECTION_LINES,
                tracing::Level::INFO,
                "{}: no complete valid message within {:?} of connecting (--handshake-timeout); closing the connection",
                self.peer,
                self.cfg.handshake_timeout
            );
            return Some(End::Broken);
        }
        let late = intake.late(now)?;
        self.cfg
            .metrics
            .refusal(&self.place.listener, "message_timeout");
        let size = late
            .size
            .map_or("a message header".into(), |s| format!("a {s}-byte message"));
        crate::warn_conn!(
            self.warnings,
            "{}: {size} is arriving too slowly: {} bytes in {:.1}s, {:?} (--message-timeout) plus {}/s (--min-receive-rate) allowed; closing the connection",
            self.peer,
            late.received,
            late.elapsed.as_secs_f64(),
            late.allowed,
            crate::budget::bytes(self.cfg.pace.min_rate)
        );
        Some(End::Broken)
    }

    /// Decides about a message from its header, before its body is read:
    /// a frame takes a client slot (its first) and memory from the budget.
    /// Returns the header the decoder gets: a refused frame's header loses
    /// its pixel flag (the decoder reads the pts and skips the pixels), a
    /// refused COMPACT_FRAME becomes a type the decoder skips.
    fn on_header(&mut self, h: &Header, shutdown: &AtomicBool) -> Header {
        let compact = h.msg_type == ext_type::COMPACT_FRAME;
        let pixels = h.msg_type == msg_type::FRAME_REQUEST && h.flags & FLAG_PIXELS != 0;
        if h.msg_type == ext_type::SHM_FRAME {
            // The pixels are in the guest's region: a slot, no memory.
            if let Err(r) = self.take_slot() {
                self.refused = Some(Refused::Slot(r));
                return Header {
                    msg_type: SKIPPED_FRAME,
                    ..*h
                };
            }
            return *h;
        }
        if !compact && h.msg_type != msg_type::FRAME_REQUEST {
            return *h;
        }
        if let Err(r) = self.take_slot() {
            self.refused = Some(Refused::Slot(r));
        } else if pixels || compact {
            let body = h.payload_size as u64;
            if body <= self.cfg.limits.max_pixel_bytes as u64 + 128 {
                match self.take_memory(body, shutdown) {
                    Ok(g) => self.body_grant = Some(g),
                    Err(short) => self.refused = Some(Refused::Budget(short)),
                }
            }
        }
        match (&self.refused, compact) {
            (None, _) => *h,
            (Some(_), false) => Header {
                flags: h.flags & !FLAG_PIXELS,
                ..*h
            },
            (Some(_), true) => Header {
                msg_type: SKIPPED_FRAME,
                ..*h
            },
        }
    }

    /// Makes this connection a client (a slot of --max-clients).
    fn take_slot(&mut self) -> Result<(), Refusal> {
        if self.client {
            return Ok(());
        }
        self.place.admission.promote(self.place.id)?;
        self.client = true;
        self.account = Some(self.cfg.budget.open());
        Ok(())
    }

    /// `n` bytes from the budget, waiting a little for memory to come back.
    fn take_memory(&self, n: u64, shutdown: &AtomicBool) -> Result<Grant, Short> {
        let account = self.account.as_ref().expect("a client has an account");
        account.take(n, BUDGET_WAIT, || {
            shutdown.load(Ordering::SeqCst) || self.dead.load(Ordering::SeqCst)
        })
    }

    /// Answers the frame `refused` was about; false when the connection
    /// closes.
    fn answer_refused(&mut self, sid: u16, pts: i64, why: Refused) -> bool {
        ClientStats::add(&self.stats.frames_in, 1);
        let index = self.ext.next_frame();
        self.ext.forget_reference();
        match why {
            Refused::Slot(r) => {
                self.cfg.metrics.refusal(&self.place.listener, r.reason());
                let text = match &r {
                    Refusal::Full { max_clients } => format!(
                        "vsockenc-host is serving its maximum of {max_clients} clients; try again later"
                    ),
                    Refusal::PerPeer { peer, limit } => format!(
                        "vsockenc-host already serves {limit} connections of {peer} (max-per-peer); close one first"
                    ),
                };
                crate::warn_limited!(crate::log::REFUSALS, "{}: refused: {text}", self.peer);
                // Not about this frame but about the guest: a plain ERROR,
                // which a vsockenc guest reads as "not served" (and stops
                // asking for a while), then the connection closes.
                let e = ErrorMessage::new(error_code::REFUSED, text);
                self.stats.failed(r.reason());
                let _ = self.send_error(sid, e);
                false
            }
            Refused::Budget(short) => {
                let frame = match pts {
                    PTS_UNKNOWN => format!("compact frame {index} (its pts unread)"),
                    pts => format!("frame pts={pts}"),
                };
                let e = ErrorMessage::new(
                    error_code::REFUSED,
                    format!("{frame}: not buffered: {short}; send smaller or fewer frames, or ask the host's operator to raise --memory-budget"),
                );
                self.reject_because(sid, pts, index, e, "memory_budget")
            }
        }
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

    /// Handles one extension message; false when the connection must close.
    fn handle_ext(&mut self, header: Header, msg: ExtMessage) -> bool {
        let sid = header.session_id;
        match msg {
            ExtMessage::Hello(h) => match self.ext.on_hello_with(&h, |c| {
                self.cfg
                    .encoders
                    .for_codec(c)
                    .map(|_| ())
                    .map_err(str::to_string)
            }) {
                Some(ack) => {
                    crate::log_limited!(
                        CONNECTION_LINES,
                        tracing::Level::INFO,
                        "{}: HELLO from {:?} (version {}, offers {}); accepted {}; encoding {} with {}",
                        self.peer,
                        h.agent,
                        h.version,
                        ext_bits::describe(h.extensions),
                        ext_bits::describe(ack.extensions),
                        ack.codec,
                        self.encoder().factory
                    );
                    if let Some(why) = self.ext.codec_refusal() {
                        let asked = hxfr::Codec::from_u8(h.codec)
                            .map_or(format!("codec {}", h.codec), |c| c.to_string());
                        self.complain(format_args!(
                            "the guest asked for {asked}, refused: {why}; its frames are refused"
                        ));
                    }
                    self.queue(Outgoing::Now(ExtMessage::HelloAck(ack).encode(sid)))
                }
                None => {
                    debug!("{}: repeated HELLO ignored", self.peer);
                    true
                }
            },
            ExtMessage::CompactFrame(cf) => self.compact_frame(sid, header, cf),
            ExtMessage::ShmOffer(o) if self.ext.has(ext_bits::SHM) => self.shm_offer(sid, &o),
            ExtMessage::ShmFrame(f) if self.ext.has(ext_bits::SHM) => {
                self.shm_frame(sid, header, f)
            }
            ExtMessage::Drain { token } => {
                // Flush the encoder so that every frame received so far is
                // answered; DRAIN_DONE is queued behind all those answers.
                debug!("{}: DRAIN {token}", self.peer);
                if let Some(s) = self.session.take() {
                    s.finish(self.cfg.drain_timeout);
                }
                self.queue(Outgoing::Now(ExtMessage::DrainDone { token }.encode(sid)))
            }
            ExtMessage::ProfileRequest(req) if self.ext.has(ext_bits::PROFILE) => {
                self.profile_request(sid, &req)
            }
            other => {
                debug!(
                    "{}: ignored {} from the guest",
                    self.peer,
                    ext_type::name(other.msg_type()).unwrap_or("extension message")
                );
                true
            }
        }
    }

    /// Rebuilds a frame from a COMPACT_FRAME and its reference, then
    /// encodes it like a full one.
    fn compact_frame(&mut self, sid: u16, header: Header, cf: CompactFrame) -> bool {
        let index = self.ext.next_frame();
        let wire = HEADER_LEN as u64 + header.payload_size as u64;
        let req = cf.header.request;
        // The body is decoded: its memory is given back; the rebuilt copy
        // is what the frame holds from now on.
        self.body_grant = None;
        let copy = self.ext.reference().map_or(0, |(_, _, p)| p.len() as u64);
        let grant = match self.take_memory(copy, &AtomicBool::new(false)) {
            Ok(g) => g,
            Err(short) => {
                ClientStats::add(&self.stats.frames_in, 1);
                self.ext.forget_reference();
                let e = ErrorMessage::new(
                    error_code::REFUSED,
                    format!("frame pts={}: not rebuilt: {short}; send smaller or fewer frames, or ask the host's operator to raise --memory-budget", req.pts),
                );
                return self.reject_because(sid, req.pts, index, e, "memory_budget");
            }
        };
        match self.ext.rebuild(index, &cf) {
            Ok(()) => {
                ClientStats::add(&self.stats.compact_frames, 1);
                let pixels = self
                    .ext
                    .reference()
                    .map(|(_, _, p)| Charged::new(p.to_vec(), Some(grant)));
                trace!(
                    "{}: frame pts={} rebuilt from {} changed tiles",
                    self.peer,
                    req.pts,
                    cf.header.changed_tiles
                );
                self.frame(sid, req, pixels, index, wire, true)
            }
            Err(e) => {
                ClientStats::add(&self.stats.frames_in, 1);
                let e = ErrorMessage::new(
                    error_code::INVALID_MESSAGE,
                    format!("frame pts={}: {e}; send a full frame", req.pts),
                );
                self.reject(sid, req.pts, index, e)
            }
        }
    }

    /// Answers a PROFILE_REQ; queued behind the answers to every earlier
    /// frame, and in force from the next frame on.
    fn profile_request(&mut self, sid: u16, req: &ProfileRequest) -> bool {
        let negotiator = Negotiator {
            encoder: self.encoder(),
            params: self.params,
            timeout: self.cfg.encode_timeout,
            max_frame_bytes: self.cfg.limits.max_pixel_bytes,
            peer: self.peer.into(),
        };
        let (resp, outcome) = negotiator.answer(req);
        let codec = self.ext.codec();
        let asked = format!(
            "{} up to {} for {}x{} at {}/{} fps",
            codec.describe_profile(req.profile),
            codec.describe_level(req.max_level),
            req.width,
            req.height,
            req.framerate_num,
            req.framerate_den
        );
        match outcome {
            Outcome::Accepted(target) => {
                info!(
                    "{}: PROFILE_REQ {} ({asked}): accepted, {} produces {} {}",
                    self.peer,
                    req.token,
                    resp.encoder,
                    codec.describe_profile(resp.profile),
                    codec.describe_level(resp.level)
                );
                self.target = target;
            }
            Outcome::Refused => self.complain(format_args!(
                "PROFILE_REQ {} ({asked}) refused: {}",
                req.token, resp.reason
            )),
        }
        self.queue(Outgoing::Now(ExtMessage::ProfileResponse(resp).encode(sid)))
    }

    fn configure(&mut self, c: ConfigRequest) {
        if c.bitrate > 0 {
            self.params.bitrate_kbps = (c.bitrate / 1000).max(1);
            if let Some(s) = &mut self.session {
                if !s.set_bitrate(self.params.bitrate_kbps) {
                    info!(
                        "{}: {} cannot change its bitrate while encoding: a new encoding session (starting with a keyframe) takes it at the next frame",
                        self.peer,
                        self.encoder().factory
                    );
                }
            }
        }
        if c.framerate_num > 0
            && c.framerate_den > 0
            && c.framerate_num <= i32::MAX as u32
            && c.framerate_den <= i32::MAX as u32
        {
            // The rate is in the session's caps: a change re-creates the
            // session at the next frame.
            self.params.fps_n = c.framerate_num as i32;
            self.params.fps_d = c.framerate_den as i32;
        }
        info!(
            "{}: CONFIG_REQ {}x{} {} bit/s {}/{} fps: bitrate now {} kbit/s",
            self.peer,
            c.width,
            c.height,
            c.bitrate,
            c.framerate_num,
            c.framerate_den,
            self.params.bitrate_kbps
        );
    }

    /// Validates and encodes frame `index`; `wire` is what it cost on the
    /// wire, `rebuilt` whether it came as a COMPACT_FRAME.
    fn frame(
        &mut self,
        sid: u16,
        req: FrameRequest,
        pixels: Option<Charged>,
        index: u32,
        wire: u64,
        rebuilt: bool,
    ) -> bool {
        ClientStats::add(&self.stats.frames_in, 1);
        if self.take_slot().is_err() {
            // Only a frame that came without a header decision (none do).
            return false;
        }
        let invalid =
            |code, why: String| ErrorMessage::new(code, format!("frame pts={}: {why}", req.pts));
        let pixels = match pixels {
            // A guest may set the pixel flag with an empty block next to a
            // resource id: that is still a GPU-memory frame.
            Some(p) if !(p.pixels.is_empty() && req.resource_id != 0) => p,
            _ if req.resource_id != 0 => {
                let e = invalid(
                    error_code::RESOURCE_NOT_FOUND,
                    format!(
                        "names virtio-gpu resource {}, but this daemon cannot read guest GPU memory; send pixels (resource_id 0)",
                        req.resource_id
                    ),
                );
                return self.reject(sid, req.pts, index, e);
            }
            _ => {
                let e = invalid(
                    error_code::INVALID_MESSAGE,
                    "carries neither pixels (flag 0x01) nor a resource id".into(),
                );
                return self.reject(sid, req.pts, index, e);
            }
        };
        let layout = match self.ext.layout(&req, pixels.pixels.len()) {
            Ok(l) => l,
            Err(e) => {
                let e = invalid(error_code::INVALID_MESSAGE, e.to_string());
                return self.reject(sid, req.pts, index, e);
            }
        };
        ClientStats::add(&self.stats.frame_wire_bytes, wire);
        ClientStats::add(
            &self.stats.frame_raw_bytes,
            (HEADER_LEN + FRAME_REQUEST_FIXED + pixels.pixels.len()) as u64,
        );
        if !rebuilt {
            self.keep_reference(index, &layout, &pixels.pixels);
        }
        if let Some(m) =
            self.ext
                .checksum_message(sid, req.pts, index, rebuilt, &layout, &pixels.pixels)
        {
            if !self.queue(Outgoing::Now(m)) {
                return false;
            }
        }
        let key = SessionKey::of(&layout);
        self.encode(sid, &req, key, index, Input::Owned(layout, pixels))
    }

    /// Takes the slot of an SHM_FRAME after checking its description
    /// against the region, then encodes it like a full frame, without a
    /// copy. A bad description is refused (ERROR_PTS) and changes nothing.
    fn shm_frame(&mut self, sid: u16, header: Header, f: ShmFrame) -> bool {
        let index = self.ext.next_frame();
        // A slot is no reference for compact frames: the guest owns it.
        self.ext.forget_reference();
        ClientStats::add(&self.stats.frames_in, 1);
        let req = f.request;
        let slot = match self
            .shm
            .take_frame(&f, index, self.ext.has(ext_bits::FORMATS))
        {
            Ok(s) => s,
            Err(why) => {
                let e = ErrorMessage::new(
                    error_code::INVALID_MESSAGE,
                    format!(
                        "frame pts={} (shared-memory slot {}): {why}",
                        req.pts, f.slot
                    ),
                );
                return self.reject(sid, req.pts, index, e);
            }
        };
        ClientStats::add(&self.stats.shm_frames, 1);
        ClientStats::add(
            &self.stats.frame_wire_bytes,
            HEADER_LEN as u64 + header.payload_size as u64,
        );
        let l = slot.layout;
        let raw = l
            .format
            .frame_bytes(l.height, l.format.min_stride(l.width) as u32);
        ClientStats::add(
            &self.stats.frame_raw_bytes,
            (HEADER_LEN + FRAME_REQUEST_FIXED) as u64 + raw,
        );
        if self.ext.has(ext_bits::FRAME_CHECKSUM) {
            if let Some(m) = slot
                .frame()
                .map(|fr| self.ext.checksum_of(sid, req.pts, index, false, &fr))
            {
                if !self.queue(Outgoing::Now(m)) {
                    return false;
                }
            }
        }
        let key = SessionKey {
            format: l.format,
            width: l.width,
            height: l.height,
        };
        self.encode(sid, &req, key, index, Input::Slot(slot))
    }

    /// Answers an SHM_OFFER: the region is mapped and its header compared
    /// with the offer's before any frame may use it.
    fn shm_offer(&mut self, sid: u16, offer: &ShmOffer) -> bool {
        let fd = match offer.kind {
            RegionKind::Memfd => self.conn.take_passed_fd(),
            RegionKind::Bound => None,
        };
        let ack = self.shm.on_offer(offer, fd);
        if ack.accepted {
            if self.shm.needs_release_writer() {
                match self.release_writer.take().and_then(|start| start()) {
                    Some(tx) => self.shm.set_release_writer(tx),
                    None => {
                        error!(
                            "{}: cannot start the shared-memory release writer; closing",
                            self.peer
                        );
                        return false;
                    }
                }
            }
            info!(
                "{}: shared memory in use: {} (offer {}); frames arrive as slot descriptions",
                self.peer,
                self.shm.describe().unwrap_or_default(),
                offer.token
            );
        } else {
            self.complain(format_args!(
                "shared-memory offer {} ({}) refused: {}; the guest sends pixels over the socket",
                offer.token, offer.kind, ack.reason
            ));
        }
        self.queue(Outgoing::Now(ExtMessage::ShmAck(ack).encode(sid)))
    }

    /// Starts (or continues) the encoding session for `key` and queues the
    /// frame's answer, then hands the frame to the encoder (paced by the
    /// peer's pixel-rate quota).
    fn encode(
        &mut self,
        sid: u16,
        req: &FrameRequest,
        key: SessionKey,
        index: u32,
        input: Input,
    ) -> bool {
        if let Some(why) = self.ext.codec_refusal() {
            let e = encode_failed(
                req.pts,
                &format!("this connection asked for a codec this host does not encode: {why}"),
            );
            return self.reject(sid, req.pts, index, e);
        }
        let force = std::mem::take(&mut self.force_keyframe) || req.force_keyframe;
        if force && !self.encoder().forces_keyframes {
            if let Some(old) = self.session.take() {
                debug!(
                    "{}: keyframe asked for at pts={}: {} makes none when asked, so a new session (which starts with one)",
                    self.peer,
                    req.pts,
                    self.encoder().factory
                );
                old.finish(self.cfg.drain_timeout);
            }
        }
        self.retire_outdated_session(&key);
        if self.session.is_none() {
            self.session_grant = None;
            if let Err(e) = self.room_for_session(&key, req.pts) {
                return self.reject_because(sid, req.pts, index, e.0, e.1);
            }
            match Session::new(
                self.encoder(),
                key,
                self.params,
                self.target,
                self.stats.clone(),
                self.peer.into(),
            ) {
                Ok(s) => {
                    info!(
                        "{}: encoding {}x{} {} with {} at {} kbit/s",
                        self.peer,
                        key.width,
                        key.height,
                        key.format,
                        self.encoder().factory,
                        self.params.bitrate_kbps
                    );
                    self.session = Some(s);
                }
                Err(e) => {
                    crate::log_conn_limited!(
                        self.warnings,
                        tracing::Level::ERROR,
                        "{}: cannot start an encoding session: {e:#}",
                        self.peer
                    );
                    let e = encode_failed(req.pts, &format!("cannot start the encoder: {e:#}"));
                    return self.reject(sid, req.pts, index, e);
                }
            }
        }

        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        if !self.queue(Outgoing::Frame {
            pts: req.pts,
            session_id: sid,
            reply: reply_rx,
            error_pts_index: self.ext.has(ext_bits::ERROR_PTS).then_some(index),
        }) {
            return false;
        }
        let job = Job {
            pts: req.pts,
            session_id: sid,
            reply: reply_tx,
            arrived: Instant::now(),
        };
        self.pace(key.width, key.height);
        let session = self.session.as_mut().unwrap();
        let mut failure = match input {
            Input::Owned(layout, pixels) => session.encode(&layout, pixels, job, force),
            Input::Slot(slot) => {
                session.encode_buffer(job, force, |pts, d| slot.into_buffer(pts, d))
            }
        }
        .err();
        if let Some(why) = session.take_error() {
            crate::log_conn_limited!(
                self.warnings,
                tracing::Level::ERROR,
                "{}: encoder error: {why}; the next frame starts a new session",
                self.peer
            );
            session.fail_all(&why);
            self.session = None;
        }
        if let Some((job, why)) = failure.take() {
            crate::warn_conn!(self.warnings, "{}: frame pts={}: {why}", self.peer, job.pts);
            let _ = job.reply.try_send(Err(encode_failed(job.pts, &why)));
            self.session = None;
        }
        true
    }

    /// Ends the running session when it cannot take a frame of `key`: the
    /// frame rate, the bitrate (for an encoder that cannot change it while
    /// encoding), the profile, or the frame's size or format changed. The
    /// next session starts with a keyframe of its own.
    fn retire_outdated_session(&mut self, key: &SessionKey) {
        let Some(s) = &self.session else {
            return;
        };
        let (fps_n, fps_d) = (self.params.fps_n, self.params.fps_d);
        let why = if s.framerate != (fps_n, fps_d) {
            format!("frame rate changed to {fps_n}/{fps_d}")
        } else if s.bitrate_kbps != self.params.bitrate_kbps {
            format!("bitrate changed to {} kbit/s", self.params.bitrate_kbps)
        } else if s.target != self.target {
            let to = self
                .target
                .map_or("the encoder's default".into(), |t| t.to_string());
            format!("profile changed to {to}")
        } else if s.key != *key {
            format!(
                "frame format changed from {}x{} {} to {}x{} {}",
                s.key.width, s.key.height, s.key.format, key.width, key.height, key.format
            )
        } else {
            return;
        };
        info!("{}: {why}: new encoding session", self.peer);
        if let Some(old) = self.session.take() {
            old.finish(self.cfg.drain_timeout);
        }
        self.force_keyframe = false;
    }

    /// The encoder of this connection's codec (H.264's until a HELLO asked
    /// for another; a refused codec's frames never reach it).
    fn encoder(&self) -> &'a EncoderChoice {
        self.cfg
            .encoders
            .for_codec(self.ext.codec())
            .unwrap_or(&self.cfg.encoders.h264)
    }

    /// Keeps a full frame as the reference of compact frames, if the
    /// budget can pay for the copy (and the decompression buffer that
    /// goes with it); otherwise compact frames are refused until a full
    /// frame fits, and the guest sends full frames.
    fn keep_reference(&mut self, index: u32, layout: &FrameLayout, pixels: &[u8]) {
        if !self.ext.has(ext_bits::COMPACT) {
            self.ext.keep_full(index, layout, pixels);
            return;
        }
        let copies = if self.ext.has(ext_bits::LZ4) { 2 } else { 1 };
        let want = copies * pixels.len() as u64;
        if self.reference_grant.as_ref().map(Grant::bytes) != Some(want) {
            self.reference_grant = None;
            match self.account.as_ref().map(|a| a.try_take(want)) {
                Some(Ok(g)) => self.reference_grant = Some(g),
                Some(Err(short)) => {
                    debug!(
                        "{}: frame {index} is not kept as a reference: {short}",
                        self.peer
                    );
                    self.ext.forget_reference();
                    return;
                }
                None => {}
            }
        }
        self.ext.keep_full(index, layout, pixels);
    }

    /// Checks that a new encoding session fits: file descriptors, and its
    /// own memory from the budget (kept while the session lives).
    fn room_for_session(
        &mut self,
        key: &SessionKey,
        pts: i64,
    ) -> Result<(), (ErrorMessage, &'static str)> {
        if !self.place.fds.room_for(fds::PER_CLIENT) {
            crate::error_limited!(
                crate::log::DESCRIPTOR_ERRORS,
                "{}: out of file descriptors (limit {}): no encoding session started; raise the limit (LimitNOFILE=, ulimit -n) or lower --max-clients",
                self.peer,
                self.place.fds.limit()
            );
            let e = ErrorMessage::new(
                error_code::REFUSED,
                format!(
                    "frame pts={pts}: vsockenc-host is out of file descriptors; try again later"
                ),
            );
            return Err((e, "descriptors"));
        }
        let cost = session_memory(key);
        match self.take_memory(cost, &AtomicBool::new(false)) {
            Ok(g) => {
                self.session_grant = Some(g);
                Ok(())
            }
            Err(short) => {
                let e = ErrorMessage::new(
                    error_code::REFUSED,
                    format!("frame pts={pts}: no encoding session started: {short}; ask the host's operator to raise --memory-budget"),
                );
                Err((e, "memory_budget"))
            }
        }
    }

    /// Holds the reader until the peer's pixel-rate quota lets this frame
    /// through: the guest is paced, not refused.
    fn pace(&self, width: u32, height: u32) {
        let Some(bucket) = &self.place.quota else {
            return;
        };
        let pixels = width as u64 * height as u64;
        let wait = bucket.lock().unwrap().take(pixels, Instant::now());
        if wait.is_zero() {
            return;
        }
        trace!("{}: pixel-rate quota: waiting {wait:?}", self.peer);
        self.stats.guest.paced(wait);
        let until = Instant::now() + wait;
        while !self.dead.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(POLL));
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

/// What an encoding session holds of its own, as the budget counts it:
/// the encoder's reference and work frames and the conversion's buffer
/// pool, about 10 frames of the coded 4:2:0 size, plus a fixed part
/// (measured: x264enc at 3840x2160 BGRx, with videoconvert).
pub fn session_memory(key: &SessionKey) -> u64 {
    let (w, h) = (key.width as u64 + 1, key.height as u64 + 1);
    SESSION_FIXED + SESSION_FRAMES * (w * h * 3 / 2)
}

const SESSION_FRAMES: u64 = 10;
const SESSION_FIXED: u64 = 4 << 20;

/// The pixels of a frame to encode.
enum Input {
    /// Read from the socket (or rebuilt from a compact frame), paid from
    /// the budget.
    Owned(FrameLayout, Charged),
    /// In a shared-memory slot: the guest's memory.
    Slot(SlotFrame),
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
