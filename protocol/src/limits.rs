//! Hard limits on what a peer may make us allocate.
//!
//! Every size a peer announces is checked against these before a single byte
//! is reserved for it, so a peer that claims a 4 GiB payload gets an error,
//! not an allocation.

/// Largest pixel block accepted by default: 64 MiB, the same bound the legacy
/// host applies. It holds a 4096x4096 BGRx frame or an 8K (7680x4320) NV12
/// frame; raise it on both sides for larger RGB frames.
pub const DEFAULT_MAX_PIXEL_BYTES: u32 = 64 << 20;
/// Largest FRAME_RESPONSE payload accepted by default: 64 MiB. A 1080p
/// access unit is rarely above 1 MiB even at very high bitrates.
pub const DEFAULT_MAX_RESPONSE_BYTES: u32 = 64 << 20;
/// Most NAL chunks in one FRAME_RESPONSE: an access unit has a handful of
/// NAL units (AUD, SPS, PPS, SEI, a few slices); AVCC hosts send one chunk
/// per NAL unit, Annex-B hosts one chunk in all.
pub const DEFAULT_MAX_NAL_COUNT: u32 = 1024;
/// Largest payload of a message we only skip (scanout, subscribe, unknown
/// types). Skipping never allocates, but a larger claim is almost certainly
/// garbage, and reporting it beats silently eating the stream.
pub const DEFAULT_MAX_SKIP_BYTES: u32 = 64 << 20;
/// Largest payload of the small fixed-size messages (CONFIG_REQ, ERROR, ...)
/// including any trailing bytes a newer peer may append.
pub const DEFAULT_MAX_SMALL_PAYLOAD: u32 = 64 << 10;

/// Limits applied by a [`crate::Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pixel bytes after the 44-byte fixed part of a FRAME_REQUEST.
    pub max_pixel_bytes: u32,
    /// Whole payload of a FRAME_RESPONSE.
    pub max_response_bytes: u32,
    /// `nal_count` of a FRAME_RESPONSE.
    pub max_nal_count: u32,
    /// Payload of a message that is skipped rather than decoded.
    pub max_skip_bytes: u32,
    /// Payload of any other message type.
    pub max_small_payload: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixel_bytes: DEFAULT_MAX_PIXEL_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_nal_count: DEFAULT_MAX_NAL_COUNT,
            max_skip_bytes: DEFAULT_MAX_SKIP_BYTES,
            max_small_payload: DEFAULT_MAX_SMALL_PAYLOAD,
        }
    }
}
