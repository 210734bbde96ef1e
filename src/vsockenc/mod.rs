//! `vsockenc`: H.264 encoding done by the VM host.
//!
//! The element sends each raw frame (or, for virtio-gpu DMA-BUFs, its
//! resource id) to `vsockenc-host` over one persistent AF_VSOCK, TCP or Unix
//! socket connection and pushes the access units that come back, in input
//! order, as `video/x-h264, stream-format=byte-stream, alignment=au`.
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
//! ```text
//! gst-launch-1.0 videotestsrc is-live=true ! video/x-raw,format=NV12 ! \
//!     vsockenc tcp-host=10.0.2.2 bitrate=6000 ! h264parse ! fakesink
//! ```
//!
//! Module map: [`transport`] (addresses, sockets), [`connection`] (writer,
//! reader thread ownership), [`receiver`] (decoding responses),
//! [`pending`] (frames in flight, matching, ordering, drops; the threading
//! design), [`output`] (the output thread), [`packing`] (pixels to the
//! wire), [`dmabuf`] (virtio-gpu resource ids), [`delta`] (compact frames:
//! the reference frame and the compact-or-full choice), [`runtime`] (reconnect,
//! keepalive, send path), [`stats`], [`settings`].

use gst::glib;
use gst::prelude::*;

pub mod connection;
pub mod delta;
pub mod dmabuf;
mod imp;
pub mod output;
pub mod packing;
pub mod pending;
pub mod receiver;
pub mod runtime;
pub mod settings;
pub mod stats;
pub mod stream_lock;
pub mod transport;

glib::wrapper! {
    pub struct VsockEnc(ObjectSubclass<imp::VsockEnc>)
        @extends gst_video::VideoEncoder, gst::Element, gst::Object;
}

/// Registers `vsockenc` with rank NONE: it needs a host daemon, so it must
/// never be autoplugged; applications pick it by name.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "vsockenc",
        gst::Rank::NONE,
        VsockEnc::static_type(),
    )
}
