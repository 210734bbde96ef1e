//! The writer of one connection: sends each response once its turn comes,
//! in request order, never to a dead connection, and disconnects a guest
//! that stops reading its answers.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hxfr::ext::{ErrorPts, ExtMessage};
use hxfr::{ErrorMessage, Message};
use tracing::debug;

use super::{ClientConfig, POLL};
use crate::conn::Conn;
use crate::encoder::{encode_failed, Reply};
use crate::log::ratelimit::ConnLimits;
use crate::stats::ClientStats;

/// One response to send, in request order.
pub enum Outgoing {
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
pub fn write_responses(
    conn: &Conn,
    peer: &str,
    cfg: &ClientConfig,
    stats: &ClientStats,
    rx: Receiver<Outgoing>,
    dead: &AtomicBool,
    warnings: &ConnLimits,
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
                    stats.failed("encode_failed");
                    frame_failure(session_id, pts, error_pts_index, e)
                }
                None if dead.load(Ordering::SeqCst) => return,
                None => {
                    crate::warn_conn!(
                        warnings,
                        "{peer}: frame pts={pts}: no output from the encoder within {:?}",
                        cfg.encode_timeout
                    );
                    stats.failed("encode_timeout");
                    let e = encode_failed(pts, "no output from the encoder in time");
                    frame_failure(session_id, pts, error_pts_index, e)
                }
            },
        };
        if dead.load(Ordering::SeqCst) {
            return;
        }
        let written = {
            // SHM_RELEASE messages are written from another thread.
            let _w = conn.write_lock();
            write_bounded(conn, &bytes, cfg.write_timeout, dead)
        };
        match written {
            Ok(()) => ClientStats::add(&stats.bytes_out, bytes.len() as u64),
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    crate::warn_conn!(warnings, "{peer}: {e}; disconnecting it");
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
pub(super) fn write_bounded(
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
