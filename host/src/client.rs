//! One guest connection: a reader that decodes and validates requests and
//! feeds the encoding session, and a writer that sends the responses back
//! strictly in request order.
//!
//! The two threads share only a bounded queue of [`Outgoing`] items (its
//! capacity is the per-client in-flight limit: the reader pauses when it is
//! full) and a `dead` flag. Once the guest is gone the flag is set and the
//! writer never writes again; the encoding session is dropped with the
//! connection, so nothing of it can reach a later connection.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hxfr::ext::{
    ext_bits, ext_type, CompactFrame, ErrorPts, ExtMessage, HostExt, ProfileRequest, PTS_UNKNOWN,
};
use hxfr::message::FRAME_REQUEST_FIXED;
use hxfr::shm::{RegionKind, ShmFrame, ShmOffer, ShmRelease};
use hxfr::{
    error_code, msg_type, ConfigRequest, Decoded, Decoder, ErrorMessage, FrameRequest, Header,
    Limits, Message, ProtocolError, HEADER_LEN,
};

use tracing::{debug, error, info, trace, warn, Span};

use crate::codecs::{EncoderChoice, Encoders};
use crate::conn::Conn;
use crate::encoder::{encode_failed, Job, Params, Reply, Session, SessionKey};
use crate::log::ratelimit::RateLimit;
use crate::profile::{Negotiator, Outcome, Target};
use crate::shm::{self, HostShm, SlotFrame};
use crate::stats::ClientStats;

/// Warnings logged per connection about its input before they go to debug.
const MAX_WARNINGS: u32 = 20;

/// Warnings about guests' input, all guests together: many connections
/// sending garbage at once (or one reconnecting) cannot flood the log.
static GUEST_INPUT_WARNINGS: RateLimit = RateLimit::new(50, Duration::from_secs(10));

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
}

/// One response to send, in request order.
enum Outgoing {
    /// A complete message (PONG, ERROR).
    Now(Vec<u8>),
    /// A frame whose response the encoder will deliver.
    Frame {
        pts: i64,
        session_id: u16,
        reply: Receiver<Reply>,
        /// The frame's index when its failure goes out as ERROR_PTS
        /// (negotiated); `None`: as a legacy ERROR.
        error_pts_index: Option<u32>,
    },
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
    conn: Conn,
    peer: Arc<str>,
    cfg: Arc<ClientConfig>,
    stats: Arc<ClientStats>,
    shutdown: &AtomicBool,
    shm_access: shm::Access,
) {
    let conn = Arc::new(conn);
    if let Err(e) = conn
        .set_read_timeout(POLL)
        .and_then(|_| conn.set_write_timeout(POLL))
    {
        warn!("{peer}: cannot set socket timeouts: {e}; closing");
        return;
    }
    let (tx, rx) = mpsc::sync_channel::<Outgoing>(cfg.max_in_flight);
    let dead = Arc::new(AtomicBool::new(false));
    let writer = {
        let (conn, peer, cfg, stats, dead) = (
            conn.clone(),
            peer.clone(),
            cfg.clone(),
            stats.clone(),
            dead.clone(),
        );
        let span = Span::current();
        std::thread::Builder::new()
            .name("client-writer".into())
            .spawn(move || {
                let _entered = span.enter();
                write_responses(&conn, &peer, &cfg, &stats, rx, &dead)
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
                let r = write_bounded(&c, bytes, timeout, &d);
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
        complaints: Default::default(),
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
    drop(reader);
    let _ = writer.join();
    // Ends the release writer too.
    dead.store(true, Ordering::SeqCst);
    conn.shutdown();
    info!("{peer}: disconnected; {}", stats.summary());
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
    complaints: std::cell::Cell<u32>,
    /// Shared-memory frames (inert unless the guest offers a region).
    shm: HostShm,
    /// Starts the thread that sends SHM_RELEASE, at the first region.
    release_writer: Option<Box<dyn FnOnce() -> Option<std::sync::mpsc::Sender<ShmRelease>>>>,
}

impl<'a> Reader<'a> {
    fn run(&mut self, shutdown: &AtomicBool) -> End {
        // Extension messages are decoded from the start: a legacy guest
        // never sends one, and a HELLO must be recognised to be answered.
        let mut decoder = Decoder::with_extensions(self.cfg.limits);
        let mut src: &Conn = self.conn;
        let mut last_input = Instant::now();
        loop {
            if shutdown.load(Ordering::SeqCst) {
                debug!("{}: shutting down: reading no more requests", self.peer);
                return End::Shutdown;
            }
            if self.dead.load(Ordering::SeqCst) {
                return End::Gone;
            }
            let before = decoder.stream_offset();
            let res = decoder.read_from_ext(&mut src);
            let got = decoder.stream_offset() - before;
            ClientStats::add(&self.stats.bytes_in, got);
            if got > 0 {
                last_input = Instant::now();
            } else if let Some(idle) = self.cfg.idle_timeout {
                if last_input.elapsed() >= idle {
                    info!(
                        "{}: sent nothing for {idle:?} (--idle-timeout); closing the connection",
                        self.peer
                    );
                    return End::Broken;
                }
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
                    warn!("{}: {why}; closing this connection", self.peer);
                    self.count_error();
                    self.send_error(0, ErrorMessage::new(error_code::INVALID_MESSAGE, why));
                    return End::Broken;
                }
                Err(e) if e.is_fatal() => {
                    debug!("{}: connection ended: {e}", self.peer);
                    return End::Gone;
                }
                Err(e) => {
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
            Message::FrameRequest { request, pixels } => {
                let index = self.ext.next_frame();
                let wire = HEADER_LEN as u64 + header.payload_size as u64;
                self.frame(sid, request, pixels, index, wire, false)
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
                    info!(
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
        match self.ext.rebuild(index, &cf) {
            Ok(()) => {
                ClientStats::add(&self.stats.compact_frames, 1);
                let pixels = self.ext.reference().map(|(_, _, p)| p.to_vec());
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
        pixels: Option<Vec<u8>>,
        index: u32,
        wire: u64,
        rebuilt: bool,
    ) -> bool {
        ClientStats::add(&self.stats.frames_in, 1);
        let invalid =
            |code, why: String| ErrorMessage::new(code, format!("frame pts={}: {why}", req.pts));
        let pixels = match pixels {
            // A guest may set the pixel flag with an empty block next to a
            // resource id: that is still a GPU-memory frame.
            Some(p) if !(p.is_empty() && req.resource_id != 0) => p,
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
        let layout = match self.ext.layout(&req, pixels.len()) {
            Ok(l) => l,
            Err(e) => {
                let e = invalid(error_code::INVALID_MESSAGE, e.to_string());
                return self.reject(sid, req.pts, index, e);
            }
        };
        ClientStats::add(&self.stats.frame_wire_bytes, wire);
        ClientStats::add(
            &self.stats.frame_raw_bytes,
            (HEADER_LEN + FRAME_REQUEST_FIXED + pixels.len()) as u64,
        );
        if !rebuilt {
            self.ext.keep_full(index, &layout, &pixels);
        }
        if let Some(m) = self
            .ext
            .checksum_message(sid, req.pts, index, rebuilt, &layout, &pixels)
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
    /// frame's answer, then hands the frame to the encoder.
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
                    error!("{}: cannot start an encoding session: {e:#}", self.peer);
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
        let session = self.session.as_mut().unwrap();
        let mut failure = match input {
            Input::Owned(layout, pixels) => session.encode(&layout, pixels, job, force),
            Input::Slot(slot) => {
                session.encode_buffer(job, force, |pts, d| slot.into_buffer(pts, d))
            }
        }
        .err();
        if let Some(why) = session.take_error() {
            error!(
                "{}: encoder error: {why}; the next frame starts a new session",
                self.peer
            );
            session.fail_all(&why);
            self.session = None;
        }
        if let Some((job, why)) = failure.take() {
            warn!("{}: frame pts={}: {why}", self.peer, job.pts);
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

    /// Logs a problem with the guest's input: the first few as warnings,
    /// the rest at debug level, so a hostile guest cannot flood the log;
    /// the warnings of all guests together are rate-limited too.
    fn complain(&self, what: std::fmt::Arguments<'_>) {
        let n = self.complaints.get() + 1;
        self.complaints.set(n);
        match n.cmp(&MAX_WARNINGS) {
            std::cmp::Ordering::Less => {
                crate::warn_limited!(GUEST_INPUT_WARNINGS, "{}: {what}", self.peer)
            }
            std::cmp::Ordering::Equal => crate::warn_limited!(
                GUEST_INPUT_WARNINGS,
                "{}: {what} (further problems with this guest's input are logged at debug level)",
                self.peer
            ),
            std::cmp::Ordering::Greater => debug!("{}: {what}", self.peer),
        }
    }

    /// Refuses frame `index`: ERROR_PTS when negotiated, else ERROR.
    fn reject(&self, sid: u16, pts: i64, index: u32, e: ErrorMessage) -> bool {
        self.complain(format_args!("ERROR {}: {}", e.code, e.message));
        self.count_error();
        self.queue(Outgoing::Now(self.ext.frame_error(sid, pts, index, e)))
    }
}

/// The pixels of a frame to encode.
enum Input {
    /// Read from the socket (or rebuilt from a compact frame).
    Owned(hxfr::FrameLayout, Vec<u8>),
    /// In a shared-memory slot.
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

/// The message that reports a failed frame to the guest.
fn frame_failure(
    session_id: u16,
    pts: i64,
    error_pts_index: Option<u32>,
    e: ErrorMessage,
) -> Vec<u8> {
    match error_pts_index {
        Some(frame_index) => ExtMessage::ErrorPts(ErrorPts {
            pts,
            frame_index,
            code: e.code,
            message: e.message,
        })
        .encode(session_id),
        None => Message::Error(e).encode(session_id),
    }
}

/// The writer thread: sends each item once its turn comes, never to a dead
/// connection, and disconnects a guest that stops reading.
fn write_responses(
    conn: &Conn,
    peer: &str,
    cfg: &ClientConfig,
    stats: &ClientStats,
    rx: Receiver<Outgoing>,
    dead: &AtomicBool,
) {
    for item in rx {
        let bytes = match item {
            Outgoing::Now(b) => b,
            Outgoing::Frame {
                pts,
                session_id,
                reply,
                error_pts_index,
            } => match wait_reply(&reply, cfg.encode_timeout, dead) {
                Some(Ok(b)) => {
                    ClientStats::add(&stats.frames_out, 1);
                    b
                }
                Some(Err(e)) => {
                    ClientStats::add(&stats.errors, 1);
                    frame_failure(session_id, pts, error_pts_index, e)
                }
                None if dead.load(Ordering::SeqCst) => return,
                None => {
                    warn!(
                        "{peer}: frame pts={pts}: no output from the encoder within {:?}",
                        cfg.encode_timeout
                    );
                    ClientStats::add(&stats.errors, 1);
                    let e = encode_failed(pts, "no output from the encoder in time");
                    frame_failure(session_id, pts, error_pts_index, e)
                }
            },
        };
        if dead.load(Ordering::SeqCst) {
            return;
        }
        let written = {
            let _w = conn.write_lock();
            write_bounded(conn, &bytes, cfg.write_timeout, dead)
        };
        match written {
            Ok(()) => ClientStats::add(&stats.bytes_out, bytes.len() as u64),
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    warn!("{peer}: {e}; disconnecting it");
                } else {
                    debug!("{peer}: write failed: {e}");
                }
                dead.store(true, Ordering::SeqCst);
                conn.shutdown();
                return;
            }
        }
    }
}

/// Waits for a frame's reply; `None` on timeout or when the connection died.
fn wait_reply(reply: &Receiver<Reply>, timeout: Duration, dead: &AtomicBool) -> Option<Reply> {
    let deadline = Instant::now() + timeout;
    loop {
        if dead.load(Ordering::SeqCst) {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match reply.recv_timeout(left.min(POLL)) {
            Ok(r) => return Some(r),
            Err(RecvTimeoutError::Timeout) => {}
            // The session ended without answering (the reader dropped it).
            Err(RecvTimeoutError::Disconnected) if dead.load(Ordering::SeqCst) => return None,
            Err(RecvTimeoutError::Disconnected) => {
                return Some(Err(encode_failed(0, "the encoding session ended")))
            }
        }
    }
}

/// Writes all of `bytes`, failing with `TimedOut` when the guest accepts
/// nothing for `timeout`.
fn write_bounded(
    conn: &Conn,
    mut bytes: &[u8],
    timeout: Duration,
    dead: &AtomicBool,
) -> io::Result<()> {
    let mut w: &Conn = conn;
    let mut last_progress = Instant::now();
    while !bytes.is_empty() {
        if dead.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        match w.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                last_progress = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last_progress.elapsed() >= timeout {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the guest has not read its responses for {timeout:?}"),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
