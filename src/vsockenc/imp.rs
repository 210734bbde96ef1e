//! GObject/GStreamer glue of the abstract base of the three elements
//! (`GstVsockBaseEnc`): properties, the `GstVideoEncoder` virtual methods,
//! and the pad templates and metadata each element builds for its codec.
//! The codec comes from the class struct ([`Class`]), which each element's
//! class sets. The logic lives in the sibling modules; [`super::state`]
//! describes the threads and how they wait.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use parking_lot::Mutex;

use super::link::Link;
use super::output;
use super::pending::DropReason;
use super::profile::{Label, Wanted};
use super::send::{FrameToSend, Sender};
use super::settings::*;
use super::state::Shared;
use super::stats;
use super::stream_lock;
use super::transport;
use super::CAT;
use hxfr::ext::CodecState;
use hxfr::profile::Level;
use hxfr::Codec;

/// How long negotiation waits for the host to say whether it speaks the
/// protocol extensions (one round trip; a legacy host answers the PING
/// right after the HELLO without a HELLO_ACK).
const NEGOTIATION_WAIT: Duration = Duration::from_secs(2);

/// The formats every HXFR host takes.
const LEGACY_FORMATS: [gst_video::VideoFormat; 5] = [
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Nv12,
];

/// Those and the formats a host takes after accepting the FORMATS
/// extension (what decoders and cameras produce).
const SINK_FORMATS: [gst_video::VideoFormat; 9] = [
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Nv12,
    gst_video::VideoFormat::I420,
    gst_video::VideoFormat::Yv12,
    gst_video::VideoFormat::Yuy2,
    gst_video::VideoFormat::Uyvy,
];

/// Raw video caps of `formats` in system memory and as DMA-BUFs.
fn sink_caps(formats: &[gst_video::VideoFormat]) -> gst::Caps {
    let raw = gst_video::VideoCapsBuilder::new()
        .format_list(formats.iter().copied())
        .width_range(1..=8192)
        .height_range(1..=8192)
        .build();
    let dmabuf = gst_video::VideoCapsBuilder::new()
        .features([gst_allocators::CAPS_FEATURE_MEMORY_DMABUF])
        .format_list(formats.iter().copied())
        .width_range(1..=8192)
        .height_range(1..=8192)
        .build();
    let mut caps = raw;
    caps.merge(dmabuf);
    caps
}

/// What exists only between `start()` and `stop()`.
struct Running {
    shared: Arc<Shared>,
    link: Arc<Link>,
    live: Arc<Live>,
    /// Used by the streaming thread only.
    sender: Arc<Mutex<Sender>>,
    info: Option<gst_video::VideoInfo>,
}

#[derive(Default)]
pub struct VsockBaseEnc {
    settings: Mutex<Settings>,
    running: Mutex<Option<Running>>,
    /// Counters of the last run, shown by `stats` after `stop()`.
    last_stats: Mutex<Option<gst::Structure>>,
}

/// The class struct of the base and of each element: the codec the
/// element asks the host for (set by the element's class, see
/// `super::VsockBaseEncImpl`).
#[repr(C)]
pub struct Class {
    parent: gst_video::ffi::GstVideoEncoderClass,
    pub(super) codec: Codec,
}

// SAFETY: `Class` is `#[repr(C)]` and starts with its parent class struct,
// as glib's subclassing requires of a class struct.
unsafe impl ClassStruct for Class {
    type Type = VsockBaseEnc;
}

impl std::ops::Deref for Class {
    type Target = glib::Class<gst_video::VideoEncoder>;

    fn deref(&self) -> &Self::Target {
        // SAFETY: the class struct starts with its parent's.
        unsafe { &*(self as *const Self as *const Self::Target) }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for VsockBaseEnc {
    const NAME: &'static str = "GstVsockBaseEnc";
    const ABSTRACT: bool = true;
    type Type = super::VsockBaseEnc;
    type ParentType = gst_video::VideoEncoder;
    type Class = Class;
}

/// The metadata of the element for `codec`.
pub fn metadata(codec: Codec) -> gst::subclass::ElementMetadata {
    gst::subclass::ElementMetadata::new(
        &format!("VSOCK host {codec} encoder"),
        "Codec/Encoder/Video",
        &format!("Encodes video to {codec} by handing raw frames to vsockenc-host on the VM host over AF_VSOCK, TCP or a Unix socket"),
        "vsockenc developers",
    )
}

/// The pad templates of the element for `codec`.
pub fn pad_templates(codec: Codec) -> Vec<gst::PadTemplate> {
    let sink_caps = sink_caps(&SINK_FORMATS);
    let (format, alignment) = codec.stream_format();
    let src_caps = gst::Caps::builder(codec.media_type())
        .field("stream-format", format)
        .field("alignment", alignment)
        .field("width", gst::IntRange::new(1, 8192))
        .field("height", gst::IntRange::new(1, 8192))
        .field(
            "framerate",
            gst::FractionRange::new(gst::Fraction::new(0, 1), gst::Fraction::new(i32::MAX, 1)),
        )
        .build();
    vec![
        gst::PadTemplate::new(
            "sink",
            gst::PadDirection::Sink,
            gst::PadPresence::Always,
            &sink_caps,
        )
        .unwrap(),
        gst::PadTemplate::new(
            "src",
            gst::PadDirection::Src,
            gst::PadPresence::Always,
            &src_caps,
        )
        .unwrap(),
    ]
}

/// The caps of the encoded output of `codec`, before the stream's profile
/// and level are known.
pub(super) fn output_caps(codec: Codec) -> gst::Caps {
    let (format, alignment) = codec.stream_format();
    gst::Caps::builder(codec.media_type())
        .field("stream-format", format)
        .field("alignment", alignment)
        .build()
}

/// What a wait of the streaming thread waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Fewer than this many frames in the element (sent and not yet pushed
    /// downstream): the host's window, and backpressure from downstream,
    /// since `finish_frame` pushes without the stream lock.
    Room(usize),
    /// No frame left in the element (EOS, new caps).
    Drained,
}

impl VsockBaseEnc {
    /// The codec of this element (its class's).
    fn codec(&self) -> Codec {
        self.obj().codec()
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        self.running.lock().as_ref().map(|r| r.shared.clone())
    }

    fn link(&self) -> Option<Arc<Link>> {
        self.running.lock().as_ref().map(|r| r.link.clone())
    }

    /// Waits on the streaming thread, with the stream lock released, until
    /// `until` holds, the element stops or flushes (`Err(Flushing)`), a
    /// flow error is stored, or `give_up` (`Ok(false)`; None: no limit). Frames whose
    /// deadline passed are expired here too, so the wait does not depend on
    /// the output task's timing. With `drain`, a DRAIN_DONE for that token
    /// fails the frames still waiting on that connection: the host has
    /// answered everything it will.
    fn wait(
        &self,
        shared: &Shared,
        until: Until,
        give_up: Option<Instant>,
        drain: Option<&(Arc<super::connection::Connection>, u64)>,
    ) -> Result<bool, gst::FlowError> {
        // Called with the state locked; true when the wait is over.
        let done = |st: &mut super::state::State| -> Result<bool, gst::FlowError> {
            st.check()?;
            let now = Instant::now();
            let mut changed = !st.table.expire(now).is_empty();
            if let Some((conn, token)) = drain {
                if st.table.in_flight() > 0 && conn.ext.lock().drain_done(*token) {
                    changed |= !st
                        .table
                        .fail_generation(conn.generation, DropReason::HostError)
                        .is_empty();
                }
            }
            if changed {
                shared.wake_output();
            }
            Ok(match until {
                Until::Room(max) => st.table.len() + st.finishing < max,
                Until::Drained => st.drained(),
            })
        };
        loop {
            if done(&mut shared.lock())? {
                return Ok(true);
            }
            if give_up.is_some_and(|t| Instant::now() >= t) {
                return Ok(false);
            }
            let obj = self.obj();
            stream_lock::released(&*obj, || {
                let mut st = shared.lock();
                // Checked again under the same hold as the sleep: a change
                // made after the check above is not missed.
                if matches!(done(&mut st), Ok(false)) {
                    let wake = match (st.table.earliest_deadline(), give_up) {
                        (Some(d), Some(g)) => Some(d.min(g)),
                        (d, g) => d.or(g),
                    };
                    shared.wait_streaming(&mut st, wake);
                }
            });
        }
    }

    /// Lets every frame in the element leave (finished by the output task)
    /// before new caps: they were encoded under the old ones. What has not
    /// been answered within the response timeout is dropped, and the next
    /// frame is a keyframe.
    fn drain_for_new_caps(&self, shared: &Shared, timeout: Duration) -> Result<(), gst::FlowError> {
        let give_up = Instant::now() + timeout;
        if self.wait(shared, Until::Drained, Some(give_up), None)? {
            return Ok(());
        }
        let lost = shared.lock().table.fail_waiting(DropReason::Timeout);
        shared.wake_output();
        gst::warning!(
            CAT,
            imp = self,
            "new caps: {} frames of the old format still unanswered after {} ms were dropped",
            lost.len(),
            timeout.as_millis()
        );
        // The drops are ready at once: give the output task a moment.
        self.wait(
            shared,
            Until::Drained,
            Some(Instant::now() + Duration::from_millis(500)),
            None,
        )?;
        Ok(())
    }

    /// The profile and level the output caps state. With a host that
    /// takes PROFILE requests, each profile downstream accepts is asked for
    /// in downstream's order, and the first the host can produce is what the
    /// caps say; `Err` names why none can be. Otherwise (a legacy host, no
    /// host yet) nothing is stated now, and the output task labels the
    /// stream from its first SPS.
    fn choose_label(
        &self,
        link: &Link,
        size: (u32, u32),
        fps: (u32, u32),
        settings: &Settings,
    ) -> Result<Label, String> {
        let codec = self.codec();
        let allowed = self.obj().src_pad().allowed_caps();
        let wanted = allowed
            .as_ref()
            .map(|c| Wanted::from_caps(c, codec))
            .unwrap_or(Wanted {
                profiles: Vec::new(),
                max_level: Level::ANY,
            });
        if link.extended(NEGOTIATION_WAIT) != Some(true) {
            gst::debug!(
                CAT,
                imp = self,
                "profile not negotiable with this host; downstream wants {wanted:?}: the stream is labelled from its SPS"
            );
            return Ok(Label::default());
        }
        let mut refusals = Vec::new();
        for (name, profile) in wanted.requests(codec) {
            let answer = link.ask_profile(
                profile,
                wanted.max_level,
                size,
                fps,
                settings.response_timeout(),
            )?;
            let Some(r) = answer else {
                return Ok(Label::default());
            };
            if !r.accepted {
                refusals.push(r.reason.clone());
                continue;
            }
            let mut label = Label::of_stream(codec, r.profile, r.level);
            // A downstream that asked for `baseline` may not list the more
            // specific `constrained-baseline` the host makes: the name it
            // asked for is true of the stream too.
            if let (Some(asked), Some(allowed)) = (name, &allowed) {
                let mut probe = gst::Caps::builder(codec.media_type()).build();
                label.apply(&mut probe);
                if !probe.can_intersect(allowed) {
                    label.profile = Some(asked.to_string());
                }
            }
            gst::info!(
                CAT,
                imp = self,
                "host {} produces profile {:?} level {:?} with {} (downstream accepts {:?}, up to level {:?})",
                link.addr,
                label.profile,
                label.level,
                r.encoder,
                wanted.profiles,
                codec.level_name(wanted.max_level)
            );
            return Ok(label);
        }
        Err(format!(
            "downstream accepts profile {} up to level {}; the host at {} refused: {}",
            wanted.profiles.join(", "),
            codec.level_name(wanted.max_level).unwrap_or("any"),
            link.addr,
            refusals.join("; ")
        ))
    }

    fn set_flushing(&self, flushing: bool) {
        if let Some(shared) = self.shared() {
            shared.lock().flushing = flushing;
            shared.wake_all();
        }
    }
}

impl ObjectImpl for VsockBaseEnc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Unix socket path")
                    .blurb("Path of the host daemon's Unix socket; when set, it is used instead of TCP and AF_VSOCK")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("tcp-host")
                    .nick("TCP host")
                    .blurb("Host name or address of the host daemon (e.g. 10.0.2.2 with QEMU user networking); used when socket-path is not set, instead of AF_VSOCK")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("tcp-port")
                    .nick("TCP port")
                    .blurb("TCP port of the host daemon (1-65535)")
                    .minimum(1)
                    .maximum(65535)
                    .default_value(DEFAULT_TCP_PORT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("cid")
                    .nick("VSOCK CID")
                    .blurb("AF_VSOCK context id of the host daemon (2 = the host); used when neither socket-path nor tcp-host is set")
                    .default_value(DEFAULT_CID)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("port")
                    .nick("VSOCK port")
                    .blurb("AF_VSOCK port of the host daemon")
                    .default_value(DEFAULT_PORT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("keyframe-interval")
                    .nick("Keyframe interval")
                    .blurb("Ask the host for a keyframe every this many frames (0 = never forced; the host encoder's own GOP applies). Live: a change while PLAYING counts from the last keyframe")
                    .minimum(0)
                    .maximum(i32::MAX)
                    .default_value(DEFAULT_KEYFRAME_INTERVAL)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecInt::builder("bitrate")
                    .nick("Bitrate")
                    .blurb("Target bitrate in kbit/s, sent to the host in CONFIG_REQ (as bit/s). Like x264enc; the C gstvsockenc took bit/s here and ignored it. Live: a change while PLAYING reaches the host at once (vsockenc-host applies it to the running encoder)")
                    .minimum(1)
                    .maximum(MAX_BITRATE)
                    .default_value(DEFAULT_BITRATE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("response-timeout")
                    .nick("Response timeout")
                    .blurb("Milliseconds to wait for a frame's encoded response before dropping the frame (the next frame is then sent as a keyframe)")
                    .minimum(MIN_RESPONSE_TIMEOUT)
                    .maximum(MAX_RESPONSE_TIMEOUT)
                    .default_value(DEFAULT_RESPONSE_TIMEOUT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-in-flight")
                    .nick("Maximum frames in flight")
                    .blurb("Frames sent to the host and not yet pushed downstream before the element blocks upstream (the host's window; a frame leaves it when its output is pushed or it is dropped)")
                    .minimum(1)
                    .maximum(MAX_MAX_IN_FLIGHT)
                    .default_value(DEFAULT_MAX_IN_FLIGHT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("connect-timeout")
                    .nick("Connect timeout")
                    .blurb("Milliseconds one connection attempt to the host may take")
                    .minimum(MIN_CONNECT_TIMEOUT)
                    .maximum(MAX_CONNECT_TIMEOUT)
                    .default_value(DEFAULT_CONNECT_TIMEOUT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("reconnect")
                    .nick("Reconnect")
                    .blurb("Reconnect (every reconnect-interval) when the connection to the host is lost, dropping frames until then; false: a lost connection is an error")
                    .default_value(DEFAULT_RECONNECT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("reconnect-interval")
                    .nick("Reconnect interval")
                    .blurb("Milliseconds between connection attempts while the host is away")
                    .minimum(MIN_RECONNECT_INTERVAL)
                    .maximum(MAX_RECONNECT_INTERVAL)
                    .default_value(DEFAULT_RECONNECT_INTERVAL)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-host")
                    .nick("Wait for host")
                    .blurb("Start even if the host daemon is not there yet and drop frames until it appears; false: a missing host at start is an error")
                    .default_value(DEFAULT_WAIT_FOR_HOST)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("keepalive-interval")
                    .nick("Keepalive interval")
                    .blurb("Milliseconds of silence after which a PING is sent (legacy hosts drop clients silent for 30 s); 0 = off")
                    .maximum(MAX_KEEPALIVE_INTERVAL)
                    .default_value(DEFAULT_KEEPALIVE_INTERVAL)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("extensions")
                    .nick("Protocol extensions")
                    .blurb("Announce the protocol extensions to the host (one HELLO, which legacy hosts skip) and use those it accepts: compact frames (only changed tiles, LZ4), errors naming their frame, drain at EOS. false = pure legacy HXFR")
                    .default_value(DEFAULT_EXTENSIONS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("verify-frames")
                    .nick("Verify frames")
                    .blurb("Ask an extension-capable host for a checksum of every frame it encodes and compare it with the frame sent (stats: checksum-matches, checksum-mismatches). For tests and debugging: costs CPU on both sides")
                    .default_value(DEFAULT_VERIFY_FRAMES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("shared-memory")
                    .nick("Shared memory")
                    .blurb("Share frames with the host through memory instead of the socket when both sides can: a memfd passed over the Unix socket, or the ivshmem-plain device of a QEMU/KVM guest (needs extensions=true and a vsockenc-host with the region bound to this guest). Upstream is offered a buffer pool in that memory (zero copies); other buffers are copied once. Falls back to the socket, logged once. stats: shm-frames, shm-copied-frames")
                    .default_value(DEFAULT_SHARED_MEMORY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("shm-device")
                    .nick("Shared-memory device")
                    .blurb("The ivshmem device for shared-memory frames over AF_VSOCK or TCP: a sysfs resource file (/sys/bus/pci/devices/ADDR/resource2), a UIO device (/dev/uioN) or a file mappable from offset 0; unset: the first ivshmem-plain device in sysfs. Over a Unix socket it replaces the memfd")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(&stats::blurb())
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock();
        match pspec.name() {
            "socket-path" => s.socket_path = value.get().expect("type checked upstream"),
            "tcp-host" => s.tcp_host = value.get().expect("type checked upstream"),
            "tcp-port" => s.tcp_port = value.get().expect("type checked upstream"),
            "cid" => s.cid = value.get().expect("type checked upstream"),
            "port" => s.port = value.get().expect("type checked upstream"),
            "keyframe-interval" => {
                s.keyframe_interval = value.get().expect("type checked upstream");
                if let Some(r) = self.running.lock().as_ref() {
                    r.live.set_keyframe_interval(s.keyframe_interval);
                }
            }
            "bitrate" => {
                s.bitrate_kbps = value.get().expect("type checked upstream");
                // Not under the settings lock: this may write to the host.
                let running = self
                    .running
                    .lock()
                    .as_ref()
                    .map(|r| (r.live.clone(), r.link.clone()));
                drop(s);
                if let Some((live, link)) = running {
                    live.set_bitrate_kbps(value.get().expect("type checked upstream"));
                    link.set_bitrate(live.bitrate_bps());
                }
                gst::debug!(CAT, imp = self, "bitrate set");
                return;
            }
            "response-timeout" => {
                s.response_timeout_ms = value.get().expect("type checked upstream")
            }
            "max-in-flight" => s.max_in_flight = value.get().expect("type checked upstream"),
            "connect-timeout" => s.connect_timeout_ms = value.get().expect("type checked upstream"),
            "reconnect" => s.reconnect = value.get().expect("type checked upstream"),
            "reconnect-interval" => {
                s.reconnect_interval_ms = value.get().expect("type checked upstream")
            }
            "wait-for-host" => s.wait_for_host = value.get().expect("type checked upstream"),
            "keepalive-interval" => {
                s.keepalive_interval_ms = value.get().expect("type checked upstream")
            }
            "extensions" => s.extensions = value.get().expect("type checked upstream"),
            "verify-frames" => s.verify_frames = value.get().expect("type checked upstream"),
            "shared-memory" => s.shared_memory = value.get().expect("type checked upstream"),
            "shm-device" => s.shm_device = value.get().expect("type checked upstream"),
            other => unimplemented!("property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set", pspec.name());
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            if let Some(shared) = self.shared() {
                let st = shared.lock();
                return st
                    .table
                    .stats
                    .to_structure(st.table.in_flight() as u32)
                    .to_value();
            }
            return self
                .last_stats
                .lock()
                .clone()
                .unwrap_or_else(stats::empty_structure)
                .to_value();
        }
        let s = self.settings.lock();
        match pspec.name() {
            "socket-path" => s.socket_path.to_value(),
            "tcp-host" => s.tcp_host.to_value(),
            "tcp-port" => s.tcp_port.to_value(),
            "cid" => s.cid.to_value(),
            "port" => s.port.to_value(),
            "keyframe-interval" => s.keyframe_interval.to_value(),
            "bitrate" => s.bitrate_kbps.to_value(),
            "response-timeout" => s.response_timeout_ms.to_value(),
            "max-in-flight" => s.max_in_flight.to_value(),
            "connect-timeout" => s.connect_timeout_ms.to_value(),
            "reconnect" => s.reconnect.to_value(),
            "reconnect-interval" => s.reconnect_interval_ms.to_value(),
            "wait-for-host" => s.wait_for_host.to_value(),
            "keepalive-interval" => s.keepalive_interval_ms.to_value(),
            "extensions" => s.extensions.to_value(),
            "verify-frames" => s.verify_frames.to_value(),
            "shared-memory" => s.shared_memory.to_value(),
            "shm-device" => s.shm_device.to_value(),
            other => unimplemented!("property {other}"),
        }
    }
}

impl GstObjectImpl for VsockBaseEnc {}

impl ElementImpl for VsockBaseEnc {
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::PausedToReady {
            // Before the pads are deactivated: end every wait and shut the
            // socket down, so neither the streaming thread nor the output
            // task can be held by the host, then stop the task.
            if let Some(link) = self.link() {
                link.shutdown();
            }
            output::stop(&self.obj());
        }
        let ret = self.parent_change_state(transition)?;
        if transition == gst::StateChange::ReadyToPaused {
            if let Some(shared) = self.shared() {
                output::start(&self.obj(), shared).map_err(|e| {
                    gst::error!(CAT, imp = self, "cannot start the output task: {e}");
                    gst::StateChangeError
                })?;
            }
        }
        Ok(ret)
    }
}

impl VideoEncoderImpl for VsockBaseEnc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let mut settings = self.settings.lock().clone();
        settings.codec = self.codec();
        if settings.codec != Codec::H264 && !settings.extensions {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                [
                    "{} needs extensions=true: the codec is asked for with a protocol extension, and a pure legacy HXFR connection is H.264",
                    settings.codec
                ]
            ));
        }
        let obj = self.obj();
        let shared = Arc::new(Shared::default());
        let link = Link::new(settings.clone(), shared.clone(), &obj);
        let addr = link.addr.clone();
        gst::info!(CAT, imp = self, "connecting to {addr}");
        if let Err(e) = link.connect() {
            let why = transport::describe(&e);
            if transport::is_not_a_socket(&e) {
                // Waiting cannot help: the daemon never replaces a file
                // that is not a socket.
                return Err(gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    ["cannot connect to {addr}: {why}; {}", addr.remedy_for(&e)]
                ));
            }
            if !settings.wait_for_host {
                return Err(gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    [
                        "no vsockenc-host listening on {addr} ({why}); {}",
                        addr.remedy_for(&e)
                    ]
                ));
            }
            gst::warning!(
                CAT,
                imp = self,
                "no vsockenc-host on {addr} yet ({why}); dropping frames until it appears, retrying every {} ms",
                settings.reconnect_interval_ms
            );
            link.schedule_connect(Instant::now() + settings.reconnect_interval());
        }
        if let Err(e) = link.spawn() {
            link.shutdown();
            link.join();
            return Err(gst::error_msg!(
                gst::CoreError::Failed,
                ["cannot start the link thread: {e}"]
            ));
        }
        let live = Arc::new(Live::new(&settings));
        *self.running.lock() = Some(Running {
            shared,
            link,
            sender: Arc::new(Mutex::new(Sender::new(settings, live.clone()))),
            live,
            info: None,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let Some(running) = self.running.lock().take() else {
            return Ok(());
        };
        running.link.shutdown();
        running.link.join();
        let st = running.shared.lock();
        let stats = st.table.stats.to_structure(st.table.in_flight() as u32);
        gst::info!(CAT, imp = self, "stopped; {stats}");
        *self.last_stats.lock() = Some(st.table.stats.to_structure(0));
        Ok(())
    }

    fn set_format(
        &self,
        state: &gst_video::VideoCodecState<'static, gst_video::video_codec_state::Readable>,
    ) -> Result<(), gst::LoggableError> {
        let info = state.info().clone();
        let (shared, link, live) = {
            let r = self.running.lock();
            let r = r
                .as_ref()
                .ok_or_else(|| gst::loggable_error!(CAT, "set_format before start"))?;
            (r.shared.clone(), r.link.clone(), r.live.clone())
        };
        let settings = self.settings.lock().clone();
        self.drain_for_new_caps(&shared, settings.response_timeout())
            .map_err(|e| gst::loggable_error!(CAT, "new caps while {e:?}"))?;

        let obj = self.obj();
        let fps = info.fps();
        let (num, den) = if fps.numer() > 0 && fps.denom() > 0 {
            (fps.numer() as u32, fps.denom() as u32)
        } else {
            (0, 1)
        };
        link.set_config(hxfr::ConfigRequest {
            width: info.width(),
            height: info.height(),
            bitrate: live.bitrate_bps(),
            framerate_num: num,
            framerate_den: den,
            profile: 0,
            level: 0,
            realtime: true,
        });

        let codec = self.codec();
        // Before anything is asked of the host: one that does not encode
        // this codec is an error now, not a stream mislabelled later.
        if let Some(CodecState::Refused(why)) = link.codec_state(NEGOTIATION_WAIT) {
            if let Some(conn) = shared.lock().usable_link() {
                link.codec_refused(&conn, &why);
            }
            return Err(gst::loggable_error!(
                CAT,
                "the host at {} does not encode {codec}: {why}",
                link.addr
            ));
        }
        let label = self
            .choose_label(&link, (info.width(), info.height()), (num, den), &settings)
            .map_err(|why| {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    (
                        "no {} profile that downstream accepts can be produced",
                        codec
                    ),
                    ["{why}"]
                );
                gst::loggable_error!(CAT, "{why}")
            })?;
        link.settle_shm(NEGOTIATION_WAIT);
        let mut caps = output_caps(codec);
        label.apply(&mut caps);
        let output_state = obj
            .set_output_state(caps.clone(), Some(state))
            .map_err(|_| gst::loggable_error!(CAT, "cannot set the output state"))?;
        obj.negotiate(output_state)
            .map_err(|_| gst::loggable_error!(CAT, "downstream refused {caps}"))?;
        shared.lock().label = label;

        // The element holds no frame back: what it adds is the host's
        // answer time. Nothing is measured yet on the first caps, so the
        // minimum starts at what earlier answers showed (0 at first) and
        // the output task raises it as answers come (output.rs). A frame
        // leaves at the latest when its response times out.
        let max = gst::ClockTime::from_mseconds(settings.response_timeout_ms as u64);
        let min = {
            let mut st = shared.lock();
            let min = st
                .latency
                .map_or(gst::ClockTime::ZERO, |(min, _)| min.min(max));
            st.latency = Some((min, max));
            min
        };
        obj.set_latency(min, max);
        gst::info!(CAT, imp = self, "format {info:?}; latency {min} .. {max}");

        if let Some(r) = self.running.lock().as_mut() {
            r.info = Some(info);
        }
        Ok(())
    }

    /// Upstream is offered the formats the host takes: all of them when it
    /// accepted the FORMATS extension (or when no host is there yet: a
    /// frame the host turns out not to take is converted, convert.rs), the
    /// legacy ones for a legacy host.
    fn caps(&self, filter: Option<&gst::Caps>) -> gst::Caps {
        let legacy_host = self
            .link()
            .and_then(|l| l.takes_negotiated_formats(NEGOTIATION_WAIT))
            == Some(false);
        if !legacy_host {
            return self.parent_caps(filter);
        }
        gst::debug!(CAT, imp = self, "the host takes the legacy formats only");
        self.obj()
            .proxy_getcaps(Some(&sink_caps(&LEGACY_FORMATS)), filter)
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // With shared memory, upstream gets a pool whose buffers are slots
        // of the region: what it writes there reaches the host without a
        // copy (shm/pool.rs).
        let region = self.link().and_then(|l| l.shm_region());
        if let (Some(region), (Some(caps), _)) = (region, query.get_owned()) {
            if let Some((pool, size)) = super::shm::pool(&region, &caps) {
                gst::debug!(
                    CAT,
                    imp = self,
                    "offering a pool of shared-memory slots for {caps}"
                );
                query.add_allocation_pool(Some(&pool), size, 0, 0);
            }
        }
        // The send path takes any stride and plane offset (packing.rs):
        // upstream need not copy to produce default strides. The base class
        // offers its pool and VideoMeta only when the query holds no pool
        // yet; say it in every case.
        self.parent_propose_allocation(query)?;
        if query
            .find_allocation_meta::<gst_video::VideoMeta>()
            .is_none()
        {
            query.add_allocation_meta::<gst_video::VideoMeta>(None);
        }
        Ok(())
    }

    fn handle_frame(
        &self,
        frame: gst_video::VideoCodecFrame,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (shared, sender, info, max_in_flight) = {
            let r = self.running.lock();
            let r = r.as_ref().ok_or(gst::FlowError::Flushing)?;
            let s = self.settings.lock();
            (
                r.shared.clone(),
                r.sender.clone(),
                r.info.clone().ok_or(gst::FlowError::NotNegotiated)?,
                s.max_in_flight.max(1) as usize,
            )
        };
        shared.lock().check()?;
        let frame_id = frame.system_frame_number();
        let pts = frame.pts();
        let duration = frame.duration();
        let force_requested = frame
            .flags()
            .contains(gst_video::VideoCodecFrameFlags::FORCE_KEYFRAME);
        let input = frame.input_buffer_owned().ok_or(gst::FlowError::Error)?;
        // The frame stays in the base class's list; the output task takes
        // it back by number. Dropping it here also releases the stream lock
        // reference it holds, so the wait below can release the lock.
        drop(frame);

        // Frames at the host expire by their deadline, so this only waits
        // longer than the response timeout while downstream does not take
        // output (backpressure, e.g. a paused sink), or until a flush or
        // stop.
        self.wait(&shared, Until::Room(max_in_flight), None, None)?;
        // Writing a frame takes as long as the host needs to read it (a
        // millisecond or more for 1080p): the output task must be able to
        // push the answers of earlier frames meanwhile, so the stream lock
        // is released around the write too, not only around waits.
        let obj = self.obj();
        stream_lock::released(&*obj, || {
            sender.lock().send(
                &obj,
                &shared,
                FrameToSend {
                    frame_id,
                    input: &input,
                    info: &info,
                    pts,
                    duration,
                    force_requested,
                },
            )
        })?;
        let st = shared.lock();
        st.check()
    }

    fn finish(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(shared) = self.shared() else {
            return Ok(gst::FlowSuccess::Ok);
        };
        let Some(link) = self.link() else {
            return Ok(gst::FlowSuccess::Ok);
        };
        let timeout = self.settings.lock().response_timeout();
        // With DRAIN negotiated the host says when it has answered every
        // frame: no waiting for timeouts to learn that the stream is done.
        let drain = link.start_drain();
        let give_up = Instant::now() + timeout + Duration::from_millis(200);
        if !self.wait(&shared, Until::Drained, Some(give_up), drain.as_ref())? {
            gst::warning!(
                CAT,
                imp = self,
                "EOS: giving up on {} frames",
                shared.lock().table.len()
            );
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn flush(&self) -> bool {
        if let Some(shared) = self.shared() {
            {
                let mut st = shared.lock();
                st.table.clear();
                st.flushing = false;
                st.reset_flow();
            }
            shared.wake_all();
            if let Err(e) = output::start(&self.obj(), shared) {
                gst::error!(CAT, imp = self, "cannot restart the output task: {e}");
                return false;
            }
        }
        true
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::FlushStart(_) = event.view() {
            // Wake every wait, let downstream unblock (the event goes on
            // downstream), then stop the task until flush-stop.
            self.set_flushing(true);
            let ret = self.parent_sink_event(event);
            output::stop(&self.obj());
            return ret;
        }
        self.parent_sink_event(event)
    }
}
