//! The state of a running element, shared by the streaming thread, the
//! output thread and the reader thread: the link to the host (connect,
//! reconnect with backoff, keepalive), the send path and the error policy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst_video::prelude::*;
use hxfr::compact;
use hxfr::ext::ext_bits;
use hxfr::message::FRAME_REQUEST_FIXED;
use hxfr::{ConfigRequest, FrameRequest, WireFormat, HEADER_LEN, LEGACY_SESSION_ID};
use parking_lot::Mutex;

use super::connection::Connection;
use super::delta::{self, DeltaSender, Plan};
use super::dmabuf::ResourceLookup;
use super::imp::CAT;
use super::packing::{self, Plane};
use super::pending::{DropReason, Pending};
use super::receiver::ReaderEvents;
use super::settings::Settings;
use super::transport::{self, Address};

/// A frame to send, as `handle_frame` sees it.
pub struct FrameToSend<'a> {
    pub frame_id: u32,
    /// The owned input buffer: compact frames keep a reference to it (not a
    /// copy) as the next reference frame.
    pub input: &'a gst::Buffer,
    pub info: &'a gst_video::VideoInfo,
    pub pts: Option<gst::ClockTime>,
    pub duration: Option<gst::ClockTime>,
    /// A force-key-unit event asked for this frame.
    pub force_requested: bool,
}

pub struct Shared {
    pub settings: Settings,
    pub addr: Address,
    pub pending: Arc<Pending>,
    element: glib::WeakRef<super::VsockEnc>,
    link: Mutex<Option<Arc<Connection>>>,
    generation: AtomicU64,
    /// When the output thread should try to connect next (None: never).
    next_connect: Mutex<Option<Instant>>,
    /// When the current (or last) connection was established (None: never).
    /// A connection lost sooner than `reconnect-interval` after it was made
    /// does not get an immediate retry.
    connected_at: Mutex<Option<Instant>>,
    config: Mutex<Option<ConfigRequest>>,
    pub stop: AtomicBool,
    /// An error found off the streaming thread, returned by the next
    /// `handle_frame`.
    flow: Mutex<Result<gst::FlowSuccess, gst::FlowError>>,
    frames_since_key: Mutex<u64>,
    dmabuf: Mutex<ResourceLookup>,
    /// The frame the host holds (compact frames are sent against it).
    delta: Mutex<DeltaSender>,
    pub output_thread: Mutex<Option<JoinHandle<()>>>,
    /// Latency reported to the pipeline: (frame duration, min, max).
    latency: Mutex<Option<(gst::ClockTime, gst::ClockTime, gst::ClockTime)>>,
}

impl Shared {
    pub fn new(settings: Settings, element: &super::VsockEnc) -> Arc<Shared> {
        Arc::new(Shared {
            addr: settings.address(),
            settings,
            pending: Arc::new(Pending::default()),
            element: element.downgrade(),
            link: Mutex::new(None),
            generation: AtomicU64::new(0),
            next_connect: Mutex::new(None),
            connected_at: Mutex::new(None),
            config: Mutex::new(None),
            stop: AtomicBool::new(false),
            flow: Mutex::new(Ok(gst::FlowSuccess::Ok)),
            frames_since_key: Mutex::new(0),
            dmabuf: Mutex::new(ResourceLookup::default()),
            delta: Mutex::new(DeltaSender::default()),
            output_thread: Mutex::new(None),
            latency: Mutex::new(None),
        })
    }

    /// The connection if it is usable.
    pub fn link(&self) -> Option<Arc<Connection>> {
        self.link.lock().clone().filter(|c| !c.is_closed())
    }

    pub fn flow(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        *self.flow.lock()
    }

    pub fn set_flow(&self, r: Result<gst::FlowSuccess, gst::FlowError>) {
        let mut f = self.flow.lock();
        // A fatal error sticks until the element is restarted.
        if *f != Err(gst::FlowError::Error) {
            *f = r;
        }
    }

    pub fn reset_flow(&self) {
        let mut f = self.flow.lock();
        if *f != Err(gst::FlowError::Error) {
            *f = Ok(gst::FlowSuccess::Ok);
        }
    }

    /// Connects now. On success the stored CONFIG_REQ is sent and the next
    /// frame is made a keyframe.
    pub fn connect(self: &Arc<Self>) -> std::io::Result<()> {
        let s = &self.settings;
        let stream = transport::connect(&self.addr, s.connect_timeout())?;
        // Before the reader thread starts: if this connection dies at once
        // (a dying daemon still accepting), the reader's `lost()` schedules
        // the next attempt, and that schedule must not be cleared below.
        *self.next_connect.lock() = None;
        let reconnected = self.connected_at.lock().replace(Instant::now()).is_some();
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let write_timeout = s.response_timeout().max(Duration::from_secs(1));
        let events: Arc<dyn ReaderEvents> = self.clone();
        let conn = Connection::start(
            self.addr.clone(),
            generation,
            stream,
            write_timeout,
            self.pending.clone(),
            events,
        )?;
        // Negotiation starts over on every connection: until the host
        // answers the HELLO (a legacy host never does) this is legacy HXFR.
        self.delta.lock().forget();
        self.pending.lock().stats.extensions = 0;
        let requested = s.requested_extensions();
        if requested != 0 {
            match conn.send_hello(requested) {
                Ok(n) => self.pending.lock().stats.bytes_sent += n as u64,
                Err(e) => gst::warning!(CAT, "HELLO to {} failed: {e}", self.addr),
            }
        }
        if let Some(cfg) = *self.config.lock() {
            let _ = conn.send_config(&cfg);
        }
        let old = self.link.lock().replace(conn);
        if let Some(old) = old {
            old.close();
        }
        {
            let mut t = self.pending.lock();
            if reconnected {
                t.stats.reconnects += 1;
            }
            // A new host session starts with a keyframe anyway; ask for it
            // so the keyframe rule is satisfied without waiting.
            let _ = t.take_force_keyframe();
        }
        self.force_next_keyframe();
        gst::info!(CAT, "connected to {} (connection {generation})", self.addr);
        self.pending.notify();
        Ok(())
    }

    fn force_next_keyframe(&self) {
        *self.frames_since_key.lock() = u64::MAX;
    }

    /// Schedules connection attempts from now on.
    pub fn schedule_connect(&self, at: Instant) {
        *self.next_connect.lock() = Some(at);
        self.pending.notify();
    }

    /// Stores the CONFIG_REQ and sends it if connected. Never waits for an
    /// answer: no legacy host sends one.
    pub fn set_config(&self, cfg: ConfigRequest) {
        *self.config.lock() = Some(cfg);
        if let Some(c) = self.link() {
            match c.send_config(&cfg) {
                Ok(n) => {
                    self.pending.lock().stats.bytes_sent += n as u64;
                    gst::debug!(CAT, "sent CONFIG_REQ {cfg:?} to {}", self.addr);
                }
                Err(e) => gst::warning!(CAT, "CONFIG_REQ to {} failed: {e}", self.addr),
            }
        }
    }

    /// Records the latency just reported in `set_format`.
    pub fn set_reported_latency(
        &self,
        frame: gst::ClockTime,
        min: gst::ClockTime,
        max: gst::ClockTime,
    ) {
        *self.latency.lock() = Some((frame, min, max));
    }

    /// A higher minimum latency when the measured mean response time
    /// exceeds the reported one (rounded up to whole frames, capped at the
    /// maximum), so live sinks are told the truth. Only ever grows.
    pub fn latency_update(&self) -> Option<(gst::ClockTime, gst::ClockTime)> {
        const MIN_SAMPLES: u64 = 16;
        let mean_us = {
            let t = self.pending.lock();
            if t.stats.latency_samples() < MIN_SAMPLES {
                return None;
            }
            t.stats.latency_mean_us()
        };
        let mut l = self.latency.lock();
        let (frame, min, max) = (*l)?;
        let mean = gst::ClockTime::from_useconds(mean_us);
        if mean <= min {
            return None;
        }
        let new_min = match frame.nseconds() {
            0 => mean,
            f => gst::ClockTime::from_nseconds(mean.nseconds().div_ceil(f) * f),
        }
        .min(max);
        if new_min <= min {
            return None;
        }
        *l = Some((frame, new_min, max));
        Some((new_min, max))
    }

    /// Closes the link and forgets it (stop).
    pub fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let link = self.link.lock().take();
        if let Some(c) = link {
            c.close();
        }
        self.pending.notify();
    }

    /// Sends one frame, or records it as dropped when there is nowhere to
    /// send it. Never blocks longer than the socket write timeout.
    pub fn send(&self, f: FrameToSend<'_>) -> Result<(), gst::FlowError> {
        let Some(conn) = self.link() else {
            let reason = if self.connected_at.lock().is_some() {
                DropReason::Disconnect
            } else {
                DropReason::NoHost
            };
            let mut t = self.pending.lock();
            let wire = t.wire_pts(
                f.pts.map(|p| p.nseconds()),
                f.duration.map(|d| d.nseconds()),
            );
            gst::debug!(
                CAT,
                "no connection to {}: dropping frame with wire pts {wire}",
                self.addr
            );
            t.insert_dropped(f.frame_id, wire, reason);
            drop(t);
            self.pending.notify();
            return Ok(());
        };

        let format = packing::wire_format(f.info.format()).ok_or_else(|| {
            gst::error!(CAT, "format {:?} cannot be sent", f.info.format());
            gst::FlowError::NotNegotiated
        })?;

        let resource_id = self.dmabuf_resource_id(f.input);
        let vframe = if resource_id.is_none() {
            Some(
                gst_video::VideoFrameRef::from_buffer_ref_readable(f.input, f.info).map_err(
                    |e| {
                        self.post_error(&format!("cannot map input frame: {e}"));
                        gst::FlowError::Error
                    },
                )?,
            )
        } else {
            None
        };
        let (stride, slices) = match &vframe {
            Some(vf) => {
                let planes: Vec<Plane> = (0..vf.n_planes())
                    .map(|i| Plane {
                        data: vf.plane_data(i).unwrap_or(&[]),
                        stride: vf.plane_stride()[i as usize].max(0) as usize,
                    })
                    .collect();
                let packed = packing::pack(format, f.info.width(), f.info.height(), &planes)
                    .map_err(|e| {
                        self.post_error(&format!("cannot lay out input frame: {e}"));
                        gst::FlowError::Error
                    })?;
                (packed.stride, packed.slices)
            }
            None => (dmabuf_stride(f.input, f.info, format), Vec::new()),
        };

        let (wire_pts, force) = {
            let mut t = self.pending.lock();
            let wire = t.wire_pts(
                f.pts.map(|p| p.nseconds()),
                f.duration.map(|d| d.nseconds()),
            );
            let after_drop = t.take_force_keyframe();
            let force = self.keyframe_due(f.force_requested || after_drop);
            t.insert_sent(
                f.frame_id,
                wire,
                Instant::now(),
                self.settings.response_timeout(),
                conn.generation,
            );
            t.stats.frames_sent += 1;
            (wire, force)
        };

        let req = FrameRequest {
            resource_id: resource_id.unwrap_or(0),
            width: f.info.width(),
            height: f.info.height(),
            format: format.fourcc(),
            stride,
            pts: wire_pts,
            duration: f.duration.map_or(0, |d| d.nseconds() as i64),
            force_keyframe: force,
        };
        gst::trace!(
            CAT,
            "sending frame {} wire pts {wire_pts} force_keyframe {force}",
            f.frame_id
        );
        match self.send_frame_ext(&conn, &req, &f, vframe.as_ref(), &slices) {
            Ok(n) => {
                self.pending.lock().stats.bytes_sent += n as u64;
            }
            Err(e) => {
                gst::warning!(
                    CAT,
                    "sending frame with pts {wire_pts} to {} failed: {e}",
                    self.addr
                );
                self.pending.lock().fail(wire_pts, DropReason::Disconnect);
                self.pending.notify();
            }
        }
        Ok(())
    }

    /// Sends one frame: as a COMPACT_FRAME against the frame the host holds
    /// when the host accepted COMPACT and that is smaller, else as the
    /// legacy FRAME_REQUEST. The frame (a buffer reference, no copy) becomes
    /// the next reference. Counts wire against raw bytes.
    fn send_frame_ext(
        &self,
        conn: &Connection,
        req: &FrameRequest,
        f: &FrameToSend<'_>,
        vframe: Option<&gst_video::VideoFrameRef<&gst::BufferRef>>,
        slices: &[&[u8]],
    ) -> std::io::Result<usize> {
        let cur = vframe
            .zip(WireFormat::from_fourcc(req.format))
            .and_then(|(vf, format)| delta::hx_frame(vf, format));
        let (index, ref_index, verify, lz4, keep) = {
            let mut ext = conn.ext.lock();
            let ref_index = cur
                .as_ref()
                .and_then(|_| ext.compact_reference(req.force_keyframe));
            (
                ext.next_frame(),
                ref_index,
                ext.wants_checksums(),
                ext.has(ext_bits::LZ4),
                ext.may_use(ext_bits::COMPACT),
            )
        };
        if let (true, Some(c)) = (verify, &cur) {
            // Recorded before the write: the host's FRAME_CHECKSUM may come
            // back before the write returns.
            conn.ext.lock().expect_checksum(index, compact::checksum(c));
        }
        let raw = (HEADER_LEN + FRAME_REQUEST_FIXED + slices.iter().map(|s| s.len()).sum::<usize>())
            as u64;
        let mut delta = self.delta.lock();
        delta.set_compression(lz4);
        let plan = match &cur {
            Some(c) => delta.plan(
                conn.generation,
                ref_index,
                c,
                f.info,
                req,
                LEGACY_SESSION_ID,
            ),
            None => Plan::Full,
        };
        let (result, compact_sent) = match plan {
            Plan::Compact(mut m) => (conn.send_compact(&mut m), true),
            Plan::Full => (conn.send_frame(req, slices), false),
        };
        match &result {
            Ok(n) => {
                conn.ext.lock().frame_sent(index, cur.is_some());
                // Holding the buffer only pays off while compact frames
                // may follow (not with a legacy host).
                if cur.is_some() && keep {
                    delta.remember(conn.generation, index, f.input.clone(), f.info, req.stride);
                } else {
                    delta.forget();
                }
                let mut t = self.pending.lock();
                t.stats.wire_bytes += *n as u64;
                t.stats.raw_bytes += raw;
                t.stats.compact_frames += compact_sent as u64;
            }
            Err(_) => delta.forget(),
        }
        result
    }

    /// EOS with DRAIN negotiated: asks the host to answer every frame sent
    /// on the current connection. Returns the connection and token to wait
    /// for (DRAIN_DONE), `None` without a connection or without DRAIN.
    pub fn start_drain(&self) -> Option<(Arc<Connection>, u64)> {
        static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
        let conn = self.link()?;
        if !conn.ext.lock().has(ext_bits::DRAIN) {
            return None;
        }
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        match conn.send_drain(token) {
            Ok(n) => {
                self.pending.lock().stats.bytes_sent += n as u64;
                gst::debug!(CAT, "EOS: DRAIN {token} sent to {}", self.addr);
                Some((conn, token))
            }
            Err(e) => {
                gst::debug!(CAT, "EOS: DRAIN to {} failed: {e}", self.addr);
                None
            }
        }
    }

    /// Whether this frame goes out with force_keyframe, counting frames for
    /// `keyframe-interval`.
    fn keyframe_due(&self, requested: bool) -> bool {
        let interval = self.settings.keyframe_interval;
        let mut since = self.frames_since_key.lock();
        let due =
            requested || *since == u64::MAX || (interval > 0 && *since + 1 >= interval as u64);
        *since = if due { 0 } else { *since + 1 };
        due
    }

    fn dmabuf_resource_id(&self, input: &gst::BufferRef) -> Option<u32> {
        if input.n_memory() != 1 {
            return None;
        }
        let mem = input.peek_memory(0);
        let dmabuf = mem.downcast_memory_ref::<gst_allocators::DmaBufMemory>()?;
        let mut lookup = self.dmabuf.lock();
        match lookup.resource_id(dmabuf.fd()) {
            Ok(id) => Some(id),
            Err(e) => {
                if !lookup.failure_reported {
                    lookup.failure_reported = true;
                    gst::warning!(
                        CAT,
                        "DMA-BUF input is not a virtio-gpu resource ({e}); sending pixels instead (logged once)"
                    );
                }
                None
            }
        }
    }

    /// The output thread's housekeeping: reconnect when due, keepalive.
    pub fn maintain(self: &Arc<Self>, now: Instant) {
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        // Bind first: a guard in the match scrutinee would live through the
        // arms, and `connect()` locks `link` again.
        let link = self.link.lock().clone();
        match link {
            Some(c) if !c.is_closed() => self.keepalive(&c, now),
            _ => {
                let due = self.next_connect.lock().is_some_and(|t| t <= now);
                if due {
                    self.try_reconnect(now);
                }
            }
        }
    }

    fn try_reconnect(self: &Arc<Self>, now: Instant) {
        match self.connect() {
            Ok(()) => {
                if let Some(el) = self.element.upgrade() {
                    gst::element_info!(
                        el,
                        gst::ResourceError::OpenReadWrite,
                        ("connected to vsockenc host at {}", self.addr),
                        ["frames are being encoded again"]
                    );
                }
            }
            Err(e) => {
                gst::debug!(
                    CAT,
                    "connecting to {} failed: {}",
                    self.addr,
                    transport::describe(&e)
                );
                *self.next_connect.lock() = Some(now + self.settings.reconnect_interval());
            }
        }
    }

    fn keepalive(&self, c: &Connection, now: Instant) {
        let Some(ka) = self.settings.keepalive_interval() else {
            return;
        };
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
        if now.saturating_duration_since(times.last_write) >= ka {
            match c.send_ping() {
                Ok(n) => {
                    let mut t = self.pending.lock();
                    t.stats.pings_sent += 1;
                    t.stats.bytes_sent += n as u64;
                    gst::trace!(CAT, "PING to {}", self.addr);
                }
                Err(e) => gst::debug!(CAT, "PING to {} failed: {e}", self.addr),
            }
        }
    }

    fn dead_after(&self, ka: Duration) -> Duration {
        ka.max(self.settings.response_timeout())
    }

    /// When `maintain` has something to do next.
    pub fn next_maintenance(&self) -> Option<Instant> {
        let link = self.link.lock().clone();
        match link {
            Some(c) if !c.is_closed() => {
                let ka = self.settings.keepalive_interval()?;
                let t = c.times();
                Some(match t.ping_outstanding {
                    Some(p) => p + self.dead_after(ka),
                    None => t.last_write + ka,
                })
            }
            _ => *self.next_connect.lock(),
        }
    }

    fn post_error(&self, msg: &str) {
        if let Some(el) = self.element.upgrade() {
            gst::element_error!(el, gst::StreamError::Encode, ("{}", msg));
        }
    }
}

/// The stride of plane 0 of a buffer sent by resource id.
fn dmabuf_stride(
    input: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    format: hxfr::WireFormat,
) -> u32 {
    let stride = input
        .meta::<gst_video::VideoMeta>()
        .map(|m| m.stride()[0])
        .unwrap_or(info.stride()[0]);
    let _ = format;
    stride.max(0) as u32
}

impl ReaderEvents for Shared {
    fn host_error(&self, conn: &Connection, code: i32, message: &str, pts: Option<i64>) {
        let frame = pts.map_or("no frame in flight".to_string(), |p| {
            format!("frame pts {p} dropped")
        });
        gst::warning!(
            CAT,
            "host {} reported error {code}: \"{message}\" ({frame})",
            conn.addr
        );
        if let Some(el) = self.element.upgrade() {
            gst::element_warning!(
                el,
                gst::StreamError::Encode,
                (
                    "vsockenc host at {} failed to encode: {}",
                    conn.addr,
                    message
                ),
                ["error code {code}; {frame}; the next frame is sent as a keyframe"]
            );
        }
    }

    fn protocol_warning(&self, conn: &Connection, what: &str) {
        gst::warning!(CAT, "from {}: {what}", conn.addr);
        if let Some(el) = self.element.upgrade() {
            gst::element_warning!(
                el,
                gst::StreamError::Decode,
                ("bad message from vsockenc host at {}", conn.addr),
                ["{what}; the stream goes on (a frame without answer is dropped at its timeout)"]
            );
        }
    }

    fn lost(&self, conn: &Connection, why: &str, lost: &[i64]) {
        let dropped = describe_lost(lost);
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(el) = self.element.upgrade() else {
            return;
        };
        if self.settings.reconnect {
            gst::element_warning!(
                el,
                gst::ResourceError::Read,
                ("lost connection to vsockenc host at {}: {}", conn.addr, why),
                [
                    "{dropped}; reconnecting every {} ms (frames are dropped until then)",
                    self.settings.reconnect_interval_ms
                ]
            );
            // Retry at once after a connection that lived a while (a host
            // restart), but at most once per reconnect-interval: a host that
            // accepts and then closes at once (for example at its
            // --max-clients) must not be hammered.
            let now = Instant::now();
            let at = match *self.connected_at.lock() {
                Some(t) => (t + self.settings.reconnect_interval()).max(now),
                None => now,
            };
            self.schedule_connect(at);
        } else {
            gst::element_error!(
                el,
                gst::ResourceError::Read,
                ("lost connection to vsockenc host at {}: {}", conn.addr, why),
                ["{dropped}; set reconnect=true to keep streaming through host restarts"]
            );
            self.set_flow(Err(gst::FlowError::Error));
            self.pending.notify();
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
