//! The HXFR frame-export wire protocol, as spoken by `vsockenc` (guest) and
//! `vsockenc-host` (host), byte-compatible with the legacy C element
//! `gstvsockenc` and the QEMU/UTM `helix-frame-export` host.
//!
//! Every message is a 12-byte [`Header`] followed by `payload_size` bytes. All
//! integers are little-endian and all structures packed. This crate has no
//! GStreamer dependency: both sides of the link use it.
//!
//! * [`message`]: the typed messages and their byte layouts.
//! * [`decoder`]: an incremental decoder for a byte stream that arrives in
//!   arbitrary pieces, with every size checked against [`Limits`] before
//!   anything is allocated.
//! * [`write`]: zero-copy (vectored) writing of a frame request's pixels.
//! * [`layout`]: how pixels of each wire format are laid out, and the checks a
//!   host applies to a guest's frame.
//! * [`nal`]: normalisation of the NAL chunks of a response to Annex-B,
//!   IDR detection and the sequence parameter set.
//! * [`profile`]: H.264 profiles and levels, and their GStreamer names.
//! * [`codec`]: the codecs a guest may ask for (H.264, H.265, AV1): what
//!   a keyframe is in each, their profiles and levels; [`h265`] and
//!   [`av1`] read those codecs' parameter sets.
//! * [`ext`]: the negotiated extensions of `vsockenc`/`vsockenc-host`
//!   (HELLO, compact frames, errors that name their frame, drain, profile
//!   negotiation, more pixel formats).
//! * [`shm`]: shared-memory frames: the region handshake, slot
//!   descriptions and their checks.
//! * [`compact`]: the compact frame codec (changed tiles, optional LZ4) and
//!   the frame checksum that proves a rebuilt frame bit-identical.

pub mod av1;
pub mod codec;
pub mod compact;
pub mod decoder;
pub mod error;
pub mod ext;
pub mod ext_state;
pub mod h265;
pub mod header;
pub mod layout;
pub mod limits;
pub mod message;
pub mod nal;
pub mod profile;
pub mod shm;
pub mod write;

pub use codec::Codec;
pub use decoder::{Decoded, Decoder};
pub use error::ProtocolError;
pub use ext::ExtMessage;
pub use header::{msg_type, Header, FLAG_PIXELS, HEADER_LEN, LEGACY_SESSION_ID, MAGIC};
pub use layout::{FrameLayout, LayoutError, Plane, WireFormat, MAX_DIMENSION};
pub use limits::Limits;
pub use message::{error_code, ConfigRequest, ErrorMessage, FrameRequest, FrameResponse, Message};
pub use profile::{Level, Profile};
