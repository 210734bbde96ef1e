//! Errors of the decoder, each naming what was wrong and where in the stream.

use std::borrow::Cow;
use std::fmt;
use std::io;

use crate::header::msg_type;

#[derive(Debug)]
pub enum ProtocolError {
    /// The stream is not HXFR (or lost sync). Fatal: there is no resync.
    BadMagic { found: u32, offset: u64 },
    /// A peer announced more bytes than the limits allow. Nothing was
    /// allocated; the decoder skips the payload, so framing stays intact.
    PayloadTooLarge {
        msg_type: u8,
        payload_size: u32,
        limit: u64,
        offset: u64,
    },
    /// The payload is shorter than the message's fixed part. Its bytes are
    /// skipped; framing stays intact.
    PayloadTooSmall {
        msg_type: u8,
        payload_size: u32,
        min: u32,
        offset: u64,
    },
    /// A FRAME_RESPONSE announces more NAL chunks than the limit.
    TooManyNals { count: u32, limit: u32, offset: u64 },
    /// The body of a message is inconsistent (for example NAL chunk sizes
    /// that do not add up to the payload). Framing stays intact.
    Malformed {
        msg_type: u8,
        offset: u64,
        what: String,
    },
    /// The stream ended in the middle of a message.
    Truncated {
        msg_type: Option<u8>,
        offset: u64,
        have: u64,
        want: u64,
    },
    /// Reading failed. `WouldBlock`/`TimedOut` keep the decoder's state: call
    /// again to continue.
    Io(io::Error),
}

impl ProtocolError {
    /// Whether the byte stream can no longer be decoded (reconnect).
    pub fn is_fatal(&self) -> bool {
        match self {
            ProtocolError::BadMagic { .. } | ProtocolError::Truncated { .. } => true,
            ProtocolError::Io(e) => !is_timeout(e),
            _ => false,
        }
    }

    /// A read timed out (or would block); the partial message is kept.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProtocolError::Io(e) if is_timeout(e))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The name of a message type, or its code when it has none, so that an
/// error about an unknown type still says which one.
fn type_label(t: u8) -> Cow<'static, str> {
    match msg_type::name(t) {
        "unknown" => Cow::Owned(format!("unknown message type 0x{t:02x}")),
        name => Cow::Borrowed(name),
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::BadMagic { found, offset } => write!(
                f,
                "bad magic 0x{found:08x} at stream offset {offset} (expected 0x52465848, \"HXFR\"): the peer does not speak HXFR or the stream lost sync"
            ),
            ProtocolError::PayloadTooLarge {
                msg_type: t,
                payload_size,
                limit,
                offset,
            } => write!(
                f,
                "payload_size {payload_size} exceeds limit {limit} for {} at stream offset {offset}",
                type_label(*t)
            ),
            ProtocolError::PayloadTooSmall {
                msg_type: t,
                payload_size,
                min,
                offset,
            } => write!(
                f,
                "payload_size {payload_size} is below the {min} bytes a {} needs, at stream offset {offset}",
                type_label(*t)
            ),
            ProtocolError::TooManyNals {
                count,
                limit,
                offset,
            } => write!(
                f,
                "nal_count {count} exceeds limit {limit} for FRAME_RESPONSE at stream offset {offset}"
            ),
            ProtocolError::Malformed {
                msg_type: t,
                offset,
                what,
            } => write!(
                f,
                "malformed {} at stream offset {offset}: {what}",
                type_label(*t)
            ),
            ProtocolError::Truncated {
                msg_type: t,
                offset,
                have,
                want,
            } => {
                let name = t.map(type_label).unwrap_or(Cow::Borrowed("header"));
                write!(
                    f,
                    "stream ended inside {name} at stream offset {offset}: {have} of {want} bytes received"
                )
            }
            ProtocolError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtocolError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ProtocolError {
    fn from(e: io::Error) -> Self {
        ProtocolError::Io(e)
    }
}
