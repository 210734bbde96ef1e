//! `vsockenc`, `vsockh265enc`, `vsockav1enc`: H.264, H.265 and AV1
//! encoding done by the VM host.
//!
//! The element sends each raw frame (or, for virtio-gpu DMA-BUFs, its
//! resource id) to `vsockenc-host` over one persistent AF_VSOCK, TCP or Unix
//! socket connection and pushes the access units that come back, in input
//! order, as `video/x-h264, stream-format=byte-stream, alignment=au`
//! (`vsockenc`), `video/x-h265, stream-format=byte-stream, alignment=au`
//! (`vsockh265enc`) or `video/x-av1, stream-format=obu-stream,
//! alignment=tu` (`vsockav1enc`).
//!
//! # One implementation, three elements
//!
//! GStreamer has one encoder element per codec (`x264enc`/`x265enc`,
//! `vah264enc`/`vah265enc`/`vaav1enc`), so that caps negotiation and
//! autoplugging see one output format per element. Here all three share one
//! implementation: the abstract base type `GstVsockBaseEnc`
//! ([`VsockBaseEnc`], `imp.rs`) holds the properties, the vfuncs and every
//! module below, and reads its codec from its class struct
//! ([`imp::Class`]). Each element is a thin subclass (`elements.rs`) that
//! only sets the codec ([`VsockBaseEncImpl::CODEC`]), its pad templates and
//! its metadata. So the properties, the `stats` and the behaviour are the
//! same for the three, and `vsockenc` stays the H.264 element legacy
//! pipelines name. The codec is asked for in the HELLO (the CODEC
//! extension): a host that cannot encode it (a legacy host, one without
//! the encoder) is reported as an error, and no frame is sent to it.
//!
//! Several frames are in flight at once (`max-in-flight`); a frame whose
//! response does not come within `response-timeout` is dropped and the next
//! frame is sent as a keyframe, so downstream never sees a broken reference
//! chain. The connection is re-established after a failure (`reconnect`),
//! and an idle stream sends PINGs (`keepalive-interval`).
//!
//! With `vsockenc-host` the element also uses the negotiated protocol
//! extensions (`extensions`, on by default; a legacy host only ever sees one
//! skipped HELLO): frames that differ little from the previous one go out as
//! the changed tiles only (optionally LZ4-compressed), errors name their
//! frame, and EOS ends with a drain handshake instead of timeouts. `stats`
//! shows `wire-bytes` against `raw-bytes`. See `docs/protocol.md`.
//!
//! Where the host can map the guest's memory (`shared-memory`, on by
//! default: a memfd over a Unix socket, an ivshmem-plain device otherwise)
//! pixels do not cross the socket at all: upstream writes into the buffer
//! pool the element offers, whose buffers are slots of that memory, and
//! each frame goes out as a slot description (`shm`).
//!
//! ```text
//! gst-launch-1.0 videotestsrc is-live=true ! video/x-raw,format=NV12 ! \
//!     vsockenc tcp-host=10.0.2.2 bitrate=6000 ! h264parse ! fakesink
//! ```
//!
//! Module map, top down: `elements` (the three elements: codec, pad
//! templates, metadata); `imp` (GObject glue, the vfuncs); `state` (the
//! one state mutex and its condvars: the threading rules); `output` (the
//! src-pad task that finishes frames); `send` (the send path); `link`
//! (connect, reconnect, keepalive, what the element reports about the
//! host); `receiver` (the reader thread: responses matched to frames);
//! `report` (rate-limited warnings, the host's health); `connection`
//! (one socket: writer, negotiation state); `pending` (the
//! frames in flight: matching, ordering, timeouts, drops); `profile`
//! (profile and level: downstream, host, stream); `packing`
//! (pixels to the wire), `convert` (NV12 for a host that does not take a
//! format), `delta` (compact frames), `shm` (shared-memory frames: region,
//! pool, slots), `dmabuf` (virtio-gpu
//! resource ids), `transport` (addresses, sockets), `stream_lock`,
//! `settings`, `stats`.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

/// The element's debug category, shared by all its modules.
pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vsockenc",
        gst::DebugColorFlags::empty(),
        Some("H.264, H.265 and AV1 encoding by the VM host over AF_VSOCK/TCP/Unix socket"),
    )
});

/// Logs to [`CAT`] with the element as the object when it is still alive,
/// for threads that hold only a weak reference to it. The element is only
/// upgraded when the level is enabled.
macro_rules! log_weak {
    ($level:ident, $weak:expr, $($args:tt)*) => {{
        let level = log_weak!(@level $level);
        if $crate::vsockenc::CAT.threshold() >= level {
            match $weak.upgrade() {
                Some(el) => gst::$level!($crate::vsockenc::CAT, obj = el, $($args)*),
                None => gst::$level!($crate::vsockenc::CAT, $($args)*),
            }
        }
    }};
    (@level error) => { gst::DebugLevel::Error };
    (@level warning) => { gst::DebugLevel::Warning };
    (@level info) => { gst::DebugLevel::Info };
    (@level debug) => { gst::DebugLevel::Debug };
    (@level trace) => { gst::DebugLevel::Trace };
}

mod connection;
mod convert;
mod delta;
mod dmabuf;
mod elements;
mod imp;
mod link;
mod output;
mod packing;
mod pending;
mod profile;
mod receiver;
mod report;
mod send;
mod settings;
mod shm;
mod state;
mod stats;
mod stream_lock;
mod transport;
mod write_gate;

pub use elements::{VsockAv1Enc, VsockEnc, VsockH265Enc};

glib::wrapper! {
    /// The abstract base of the three elements: everything but the codec.
    pub struct VsockBaseEnc(ObjectSubclass<imp::VsockBaseEnc>)
        @extends gst_video::VideoEncoder, gst::Element, gst::Object;
}

impl VsockBaseEnc {
    /// The codec of this element (its class's).
    pub(crate) fn codec(&self) -> hxfr::Codec {
        self.class().as_ref().codec
    }
}

/// What a subclass of [`VsockBaseEnc`] provides: its codec (and, as an
/// element, its pad templates and metadata).
pub trait VsockBaseEncImpl: gst_video::subclass::prelude::VideoEncoderImpl {
    const CODEC: hxfr::Codec;
}

// SAFETY: `VsockBaseEnc`'s class struct (`imp::Class`) is `#[repr(C)]` with
// `GstVideoEncoderClass` first, and `class_init` below only writes fields of
// the element's own class struct and calls the element's class init.
unsafe impl<T: VsockBaseEncImpl> glib::subclass::types::IsSubclassable<T> for VsockBaseEnc {
    /// Only the element's class init runs for a subclass (its metadata and
    /// pad templates), not `GstVideoEncoder`'s: that would point every
    /// encoder vfunc at the subclass's trampolines, which wrap each frame
    /// in a second `VideoCodecFrame` around the base's, and so hold the
    /// stream lock twice where the base releases it once to wait
    /// (stream_lock.rs). The encoder vfuncs stay the base's, copied from
    /// its class.
    fn class_init(class: &mut glib::Class<Self>) {
        <gst::Element as glib::subclass::types::IsSubclassable<T>>::class_init(
            class.upcast_ref_mut(),
        );
        class.as_mut().codec = T::CODEC;
    }
}

/// The name of the element that encodes `codec` (`vsockenc` stays H.264,
/// for drop-in compatibility with the C element).
pub fn element_name(codec: hxfr::Codec) -> &'static str {
    match codec {
        hxfr::Codec::H264 => "vsockenc",
        hxfr::Codec::H265 => "vsockh265enc",
        hxfr::Codec::Av1 => "vsockav1enc",
    }
}

/// Registers `vsockenc`, `vsockh265enc` and `vsockav1enc` with rank NONE:
/// they need a host daemon, so they must never be autoplugged; applications
/// pick them by name.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    for (codec, t) in [
        (hxfr::Codec::H264, VsockEnc::static_type()),
        (hxfr::Codec::H265, VsockH265Enc::static_type()),
        (hxfr::Codec::Av1, VsockAv1Enc::static_type()),
    ] {
        gst::Element::register(Some(plugin), element_name(codec), gst::Rank::NONE, t)?;
    }
    Ok(())
}
