//! The socket reader thread of one connection.
//!
//! It decodes responses with `hxfr::Decoder` (a read timeout lets it notice
//! a local close), normalises NAL chunks to Annex-B and hands each result to
//! the pending table by wire PTS. It never takes the encoder's stream lock
//! and never calls into GStreamer's streaming path: it only completes table
//! entries, wakes the table's waiters and reports events (host errors,
//! protocol trouble, loss of the connection) through [`ReaderEvents`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use hxfr::ext::{ext_bits, ext_type, ChecksumCheck, ExtMessage, PTS_UNKNOWN};
use hxfr::{nal, Decoded, Decoder, FrameResponse, Message};

use crate::vsockenc::connection::Connection;
use crate::vsockenc::imp::CAT;
use crate::vsockenc::pending::{DropReason, Encoded, Match, Pending};
use crate::vsockenc::transport::{self, Stream};

/// What the reader tells the element about.
pub trait ReaderEvents: Send + Sync {
    /// The host sent an ERROR; `pts` is the frame it was taken to be about.
    fn host_error(&self, conn: &Connection, code: i32, message: &str, pts: Option<i64>);
    /// A bad message the reader skipped (framing intact), or an empty
    /// response.
    fn protocol_warning(&self, conn: &Connection, what: &str);
    /// The connection is gone; the frames in flight with these wire PTS
    /// were lost. Not called when the element closed the connection itself.
    fn lost(&self, conn: &Connection, why: &str, dropped: &[i64]);
}

pub fn run(
    conn: Arc<Connection>,
    mut stream: Stream,
    pending: Arc<Pending>,
    events: Arc<dyn ReaderEvents>,
) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        read_loop(&conn, &mut stream, &pending, &*events)
    }));
    let why = match result {
        Ok(why) => why,
        Err(_) => "internal error: the reader thread panicked".to_string(),
    };
    let closed_by_us = conn.is_closing();
    let why = conn.broken_reason().unwrap_or(why);
    conn.break_with(why.clone());
    let dropped = pending
        .lock()
        .fail_generation(conn.generation, DropReason::Disconnect);
    pending.notify();
    if !closed_by_us {
        events.lost(&conn, &why, &dropped);
    }
}

/// Returns why the loop ended.
fn read_loop(
    conn: &Connection,
    stream: &mut Stream,
    pending: &Pending,
    events: &dyn ReaderEvents,
) -> String {
    // Extension messages are decoded from the start; only a host that
    // accepted our HELLO sends them.
    let mut decoder = Decoder::with_extensions(hxfr::Limits::default());
    let mut counted = 0u64;
    loop {
        if conn.is_closed() {
            return "closed".into();
        }
        let res = decoder.read_from_ext(stream);
        let offset = decoder.stream_offset();
        if offset > counted {
            pending.lock().stats.bytes_received += offset - counted;
            counted = offset;
        }
        match res {
            Ok(Some(Decoded::Ext(_, msg))) => {
                conn.note_read();
                handle_ext(conn, msg, pending, events);
            }
            Ok(Some(Decoded::Legacy(_, msg))) => {
                conn.note_read();
                handle(conn, msg, pending, events);
            }
            Ok(None) => return "the host closed the connection".into(),
            Err(e) if e.is_timeout() => continue,
            // Skipping gigabytes a peer claims to send would only hide the
            // breakage for that long: start over on a new connection.
            Err(e @ hxfr::ProtocolError::PayloadTooLarge { .. }) => return e.to_string(),
            Err(e) if !e.is_fatal() => {
                events.protocol_warning(conn, &format!("skipped a bad message: {e}"));
            }
            Err(hxfr::ProtocolError::Io(e)) if transport::is_host_absent(&e) => {
                return format!("connection lost ({})", transport::describe(&e));
            }
            Err(e) => return e.to_string(),
        }
    }
}

fn handle(conn: &Connection, msg: Message, pending: &Pending, events: &dyn ReaderEvents) {
    match msg {
        Message::FrameResponse(r) => handle_response(conn, r, pending, events),
        Message::Error(e) => {
            // The host's copy of our last frame may be gone: next frame full.
            conn.ext.lock().invalidate();
            let pts = {
                let mut t = pending.lock();
                t.stats.host_errors += 1;
                t.fail_oldest(conn.generation, DropReason::HostError)
            };
            pending.notify();
            events.host_error(conn, e.code, &e.message, pts);
        }
        Message::Pong => pending.lock().stats.pongs_received += 1,
        Message::ConfigResponse(_) | Message::Skipped { .. } => {}
        other => gst::debug!(
            CAT,
            "ignored unexpected {} from {}",
            hxfr::msg_type::name(other.msg_type()),
            conn.addr
        ),
    }
}

fn handle_response(
    conn: &Connection,
    r: FrameResponse,
    pending: &Pending,
    events: &dyn ReaderEvents,
) {
    let now = Instant::now();
    let data = r.annexb();
    if data.is_empty() {
        {
            let mut t = pending.lock();
            t.stats.host_errors += 1;
            t.fail_oldest(conn.generation, DropReason::HostError);
        }
        pending.notify();
        events.protocol_warning(conn, &format!("empty FRAME_RESPONSE for pts {}", r.pts));
        return;
    }
    let keyframe = r.is_keyframe || nal::has_idr(&data);
    let encoded = Encoded { data, keyframe };
    let mut t = pending.lock();
    let matched = match t.lookup(r.pts) {
        // A host that numbers responses itself: fall back to arrival order.
        Match::Unknown => t.complete_oldest(conn.generation, encoded, now),
        _ => t.complete(r.pts, encoded, now) == Match::Matched,
    };
    if matched {
        pending.notify_completed(t);
    } else {
        drop(t);
        gst::debug!(
            CAT,
            "late response from {} for pts {} discarded",
            conn.addr,
            r.pts
        );
    }
}

/// Extension messages: only a host that accepted our HELLO sends them.
fn handle_ext(conn: &Connection, msg: ExtMessage, pending: &Pending, events: &dyn ReaderEvents) {
    match msg {
        ExtMessage::HelloAck(ack) => {
            let accepted = conn.ext.lock().on_ack(&ack);
            pending.lock().stats.extensions = accepted;
            gst::info!(
                CAT,
                "host {} ({:?}) accepted protocol extensions {}",
                conn.addr,
                ack.agent,
                ext_bits::describe(accepted)
            );
        }
        ExtMessage::ErrorPts(e) => {
            // The frame is named: drop exactly that one. Its reference is
            // gone on the host too, so the next frame goes out in full.
            conn.ext.lock().invalidate();
            let pts = {
                let mut t = pending.lock();
                t.stats.host_errors += 1;
                if e.pts == PTS_UNKNOWN {
                    t.fail_oldest(conn.generation, DropReason::HostError)
                } else {
                    t.fail(e.pts, DropReason::HostError);
                    Some(e.pts)
                }
            };
            pending.notify();
            events.host_error(conn, e.code, &e.message, pts);
        }
        ExtMessage::DrainDone { token } => {
            conn.ext.lock().on_drain_done(token);
            pending.notify();
        }
        ExtMessage::FrameChecksum(c) => {
            let check = conn.ext.lock().on_checksum(&c);
            match check {
                ChecksumCheck::Match => pending.lock().stats.checksum_matches += 1,
                ChecksumCheck::Mismatch { expected, host } => {
                    pending.lock().stats.checksum_mismatches += 1;
                    events.protocol_warning(
                        conn,
                        &format!(
                            "frame pts {} (frame {} of this connection): the host encodes other pixels than were sent (checksum {host:016x}, expected {expected:016x})",
                            c.pts, c.frame_index
                        ),
                    );
                }
                ChecksumCheck::Unknown => {}
            }
        }
        other => gst::debug!(
            CAT,
            "ignored unexpected {} from {}",
            ext_type::name(other.msg_type()).unwrap_or("extension message"),
            conn.addr
        ),
    }
}
