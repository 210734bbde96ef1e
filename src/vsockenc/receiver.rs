//! The socket reader thread of one connection.
//!
//! It decodes responses with `hxfr::Decoder`, normalises NAL chunks to
//! Annex-B and hands each result to the pending table by wire PTS. It never
//! takes the encoder's stream lock and never calls into GStreamer's
//! streaming path: it only completes table entries under the state mutex,
//! wakes who can act on them and reports events (host errors, protocol
//! trouble, loss of the connection) through [`ReaderEvents`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use gst::glib;
use hxfr::ext::{ext_bits, ext_type, ChecksumCheck, CodecState, ExtMessage, PTS_UNKNOWN};
use hxfr::{Decoded, Decoder, FrameResponse, Message};

use super::connection::Connection;
use super::pending::{DropReason, Encoded, Match};
use super::shm::{GuestShm, Offer};
use super::state::Shared;
use super::transport::{self, ReadHalf};
use super::VsockBaseEnc;

/// What the reader needs besides its connection.
pub struct ReaderContext {
    pub shared: Arc<Shared>,
    pub events: Arc<dyn ReaderEvents>,
    /// For log lines only.
    pub element: glib::WeakRef<VsockBaseEnc>,
    /// The run's shared memory (for its one fallback log line).
    pub shm: Arc<GuestShm>,
    /// The element's codec: what a keyframe is.
    pub codec: hxfr::Codec,
}

impl ReaderContext {
    fn shm_fallback_once(&self) -> bool {
        self.shm.first_fallback()
    }
}

/// Malformed answers in a row (no valid answer between them) after which
/// the host is taken to be broken: the connection is dropped and made
/// again, instead of every frame waiting for its timeout.
const MALFORMED_IN_A_ROW: u32 = 4;

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
    /// Whether losing the connection ends the stream (no `reconnect`): the
    /// reader then stores the flow error together with the drops.
    fn loss_is_fatal(&self) -> bool;
    /// The host answers again after frames had timed out.
    fn answering_again(&self, conn: &Connection);
    /// The host refused to serve this guest (ERROR `REFUSED`).
    fn refused(&self, conn: &Connection, why: &str);
    /// The host does not encode the element's codec (its HELLO_ACK, or a
    /// legacy host's PONG, said so).
    fn codec_refused(&self, conn: &Connection, why: &str);
}

/// Counts malformed answers in a row.
#[derive(Default)]
struct Malformed {
    in_a_row: u32,
}

impl Malformed {
    /// A bad answer; `Some(why)` when the host is to be dropped.
    fn bad(&mut self, what: &str) -> Option<String> {
        self.in_a_row += 1;
        (self.in_a_row >= MALFORMED_IN_A_ROW).then(|| {
            format!(
                "{} malformed answers in a row (the last: {what}); the host is taken to be broken",
                self.in_a_row
            )
        })
    }

    fn good(&mut self) {
        self.in_a_row = 0;
    }
}

pub fn run(conn: Arc<Connection>, mut stream: ReadHalf, cx: ReaderContext) {
    let result = catch_unwind(AssertUnwindSafe(|| read_loop(&conn, &mut stream, &cx)));
    let why = match result {
        Ok(why) => why,
        Err(_) => "internal error: the reader thread panicked".to_string(),
    };
    let closed_by_us = conn.is_closing();
    let why = conn.broken_reason().unwrap_or(why);
    conn.break_with(why.clone());
    // The host reads no slot of a connection that is gone: back to the
    // pool and the region (dropped outside the lock).
    let slots = conn.shm.lock().clear();
    drop(slots);
    let fatal = !closed_by_us && cx.events.loss_is_fatal();
    let dropped = {
        let mut st = cx.shared.lock();
        let dropped = st
            .table
            .fail_generation(conn.generation, DropReason::Disconnect);
        // In the same critical section: a streaming thread that sees these
        // frames dropped must also see that the stream has failed.
        if fatal && !st.stop {
            st.set_flow(Err(gst::FlowError::Error));
        }
        dropped
    };
    if fatal {
        cx.shared.wake_all();
    } else {
        cx.shared.wake_completed();
    }
    if !closed_by_us {
        cx.events.lost(&conn, &why, &dropped);
    }
}

/// Returns why the loop ended.
fn read_loop(conn: &Connection, stream: &mut ReadHalf, cx: &ReaderContext) -> String {
    // Extension messages are decoded from the start; only a host that
    // accepted our HELLO sends them.
    let mut decoder = Decoder::with_extensions(hxfr::Limits::default());
    let mut counted = 0u64;
    let mut malformed = Malformed::default();
    loop {
        // Not `is_closed`: after a failed write to a host that went away,
        // what it sent before (an ERROR saying why) is still read; the read
        // then ends the loop with the end of the stream.
        if conn.is_closing() {
            return "closed".into();
        }
        let res = decoder.read_from_ext(stream);
        let offset = decoder.stream_offset();
        if offset > counted {
            cx.shared.lock().table.stats.bytes_received += offset - counted;
            counted = offset;
        }
        let bad = match res {
            Ok(Some(Decoded::Ext(_, msg))) => {
                conn.note_read();
                handle_ext(conn, msg, cx)
            }
            Ok(Some(Decoded::Legacy(_, msg))) => {
                conn.note_read();
                handle(conn, msg, cx)
            }
            Ok(None) => return "the host closed the connection".into(),
            Err(e) if e.is_timeout() => continue,
            // Skipping gigabytes a peer claims to send would only hide the
            // breakage for that long: start over on a new connection.
            Err(e @ hxfr::ProtocolError::PayloadTooLarge { .. }) => return e.to_string(),
            Err(e) if !e.is_fatal() => {
                let what = format!("skipped a bad message: {e}");
                cx.events.protocol_warning(conn, &what);
                Answer::Bad(what)
            }
            Err(hxfr::ProtocolError::Io(e)) if transport::is_host_absent(&e) => {
                return format!("connection lost ({})", transport::describe(&e));
            }
            Err(e) => return e.to_string(),
        };
        match bad {
            Answer::Good => malformed.good(),
            Answer::Bad(what) => {
                if let Some(why) = malformed.bad(&what) {
                    return why;
                }
            }
            Answer::Other => {}
        }
    }
}

/// What a message says about the host's answers.
enum Answer {
    /// A frame was answered.
    Good,
    /// A malformed answer.
    Bad(String),
    /// Anything else.
    Other,
}

fn handle(conn: &Connection, msg: Message, cx: &ReaderContext) -> Answer {
    match msg {
        Message::FrameResponse(r) => return handle_response(conn, r, cx),
        Message::Error(e) if e.code == hxfr::error_code::REFUSED => {
            // Not about a frame: the host does not serve this guest (its
            // client limit, its access rules) and closes the connection.
            cx.shared.lock().table.stats.host_errors += 1;
            cx.events.refused(conn, &e.message);
            return Answer::Good;
        }
        Message::Error(e) => {
            // The host's copy of our last frame may be gone: next frame full.
            conn.ext.lock().invalidate();
            let pts = {
                let mut st = cx.shared.lock();
                st.table.stats.host_errors += 1;
                st.table.fail_oldest(conn.generation, DropReason::HostError)
            };
            cx.shared.wake_completed();
            cx.events.host_error(conn, e.code, &e.message, pts);
            return Answer::Good;
        }
        Message::Pong => {
            let (settled, codec) = {
                let mut ext = conn.ext.lock();
                (ext.on_pong(), ext.codec_state().clone())
            };
            cx.shared.lock().table.stats.pongs_received += 1;
            if let (true, CodecState::Refused(why)) = (settled, &codec) {
                cx.events.codec_refused(conn, why);
            }
            if settled {
                log_weak!(
                    info,
                    cx.element,
                    "host {} answered PING but not HELLO: a legacy host; speaking legacy HXFR",
                    conn.addr
                );
                // Negotiation waits decide on this under the state mutex.
                let _st = cx.shared.lock();
                cx.shared.wake_streaming();
            }
        }
        Message::ConfigResponse(_) | Message::Skipped { .. } => {}
        other => log_weak!(
            debug,
            cx.element,
            "ignored unexpected {} from {}",
            hxfr::msg_type::name(other.msg_type()),
            conn.addr
        ),
    }
    Answer::Other
}

fn handle_response(conn: &Connection, r: FrameResponse, cx: &ReaderContext) -> Answer {
    let now = Instant::now();
    let data = r.unit(cx.codec);
    if data.is_empty() {
        {
            let mut st = cx.shared.lock();
            st.table.stats.host_errors += 1;
            st.table.fail_oldest(conn.generation, DropReason::HostError);
        }
        cx.shared.wake_completed();
        let what = format!("empty FRAME_RESPONSE for pts {}", r.pts);
        cx.events.protocol_warning(conn, &what);
        return Answer::Bad(what);
    }
    // A keyframe is an access unit with an IDR slice (a key frame with its
    // sequence header in AV1), whatever the host says: hosts have flagged
    // every I-frame (x264's scene cuts), and a decoder, muxer or segmenter
    // starting at a non-IDR I-frame may need parameter sets or references
    // it never saw.
    let keyframe = cx.codec.is_keyframe(&data);
    if keyframe != r.is_keyframe {
        log_weak!(
            trace,
            cx.element,
            "host {} flags pts {} keyframe={} but the access unit {} an IDR slice",
            conn.addr,
            r.pts,
            r.is_keyframe,
            if keyframe { "holds" } else { "holds no" }
        );
    }
    let encoded = Encoded { data, keyframe };
    let (matched, recovered) = {
        let mut st = cx.shared.lock();
        let t = &mut st.table;
        let matched = match t.lookup(r.pts) {
            // A host that numbers responses itself: fall back to arrival order.
            Match::Unknown => t.complete_oldest(conn.generation, encoded, now),
            _ => (t.complete(r.pts, encoded, now) == Match::Matched).then_some(r.pts),
        };
        (
            matched.is_some(),
            matched.is_some_and(|w| st.health.answered(w)),
        )
    };
    if recovered {
        cx.events.answering_again(conn);
    }
    if matched {
        cx.shared.wake_completed();
    } else {
        log_weak!(
            debug,
            cx.element,
            "late response from {} for pts {} discarded",
            conn.addr,
            r.pts
        );
    }
    Answer::Good
}

/// Offers the region once the host accepted SHM; says once why frames go
/// over the socket when it did not.
fn shm_offer(conn: &Connection, accepted: u32, cx: &ReaderContext) {
    let Some(region) = conn.shm.lock().region.clone() else {
        return;
    };
    if accepted & ext_bits::SHM == 0 {
        if cx.shm_fallback_once() {
            log_weak!(
                info,
                cx.element,
                "host {} does not take shared memory on this connection (no region bound to this guest, or an older host): frames go over the socket (logged once)",
                conn.addr
            );
        }
        return;
    }
    let token = conn.generation;
    conn.shm.lock().offer = Offer::Sent(token);
    if let Err(e) = conn.send_shm_offer(&region.offer(token), region.memfd_fd()) {
        conn.shm.lock().offer = Offer::Refused;
        let _st = cx.shared.lock();
        cx.shared.wake_streaming();
        log_weak!(
            warning,
            cx.element,
            "cannot offer the shared-memory region to {}: {e}",
            conn.addr
        );
    }
}

/// Extension messages: only a host that accepted our HELLO sends them.
fn handle_ext(conn: &Connection, msg: ExtMessage, cx: &ReaderContext) -> Answer {
    match msg {
        ExtMessage::HelloAck(ack) => {
            let (accepted, codec) = {
                let mut ext = conn.ext.lock();
                (ext.on_ack(&ack), ext.codec_state().clone())
            };
            if let CodecState::Refused(why) = &codec {
                cx.events.codec_refused(conn, why);
            }
            cx.shared.lock().table.stats.extensions = accepted;
            cx.shared.wake_streaming();
            shm_offer(conn, accepted, cx);
            log_weak!(
                info,
                cx.element,
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
                let mut st = cx.shared.lock();
                st.table.stats.host_errors += 1;
                if e.pts == PTS_UNKNOWN {
                    st.table.fail_oldest(conn.generation, DropReason::HostError)
                } else {
                    st.table.fail(e.pts, DropReason::HostError);
                    Some(e.pts)
                }
            };
            cx.shared.wake_completed();
            cx.events.host_error(conn, e.code, &e.message, pts);
            return Answer::Good;
        }
        ExtMessage::ProfileResponse(r) => {
            log_weak!(
                debug,
                cx.element,
                "host {} answered profile request {}: accepted {} profile {:?} level {:?} ({})",
                conn.addr,
                r.token,
                r.accepted,
                r.profile.name(),
                r.level.name(),
                r.reason
            );
            conn.ext.lock().on_profile_response(r);
            // `set_format` waits for it under the state mutex.
            let _st = cx.shared.lock();
            cx.shared.wake_streaming();
        }
        ExtMessage::DrainDone { token } => {
            conn.ext.lock().on_drain_done(token);
            // `finish` decides on this under the state mutex: notify under it.
            let _st = cx.shared.lock();
            cx.shared.wake_streaming();
        }
        ExtMessage::FrameChecksum(c) => {
            let check = conn.ext.lock().on_checksum(&c);
            match check {
                ChecksumCheck::Match => cx.shared.lock().table.stats.checksum_matches += 1,
                ChecksumCheck::Mismatch { expected, host } => {
                    cx.shared.lock().table.stats.checksum_mismatches += 1;
                    cx.events.protocol_warning(
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
        ExtMessage::ShmAck(a) => {
            let mut shm = conn.shm.lock();
            let region = shm.region.as_ref().map(|r| (r.name.clone(), r.len() >> 20));
            shm.offer = if a.accepted {
                Offer::Accepted
            } else {
                Offer::Refused
            };
            drop(shm);
            {
                // `set_format` waits for it under the state mutex.
                let _st = cx.shared.lock();
                cx.shared.wake_streaming();
            }
            if a.accepted {
                log_weak!(
                    info,
                    cx.element,
                    "host {} maps the shared-memory region ({:?}): frames go as slot descriptions, their pixels stay in shared memory",
                    conn.addr,
                    region
                );
            } else if cx.shm_fallback_once() {
                log_weak!(
                    warning,
                    cx.element,
                    "host {} refused the shared-memory region {:?}: {}; frames go over the socket (logged once)",
                    conn.addr,
                    region,
                    a.reason
                );
            }
        }
        ExtMessage::ShmRelease(r) => {
            let held = conn.shm.lock().release(r.slot);
            if held.is_none() {
                log_weak!(
                    debug,
                    cx.element,
                    "host {} released slot {} (frame {}), which it did not hold",
                    conn.addr,
                    r.slot,
                    r.frame_index
                );
            }
            // The buffer goes back to its pool here, outside the lock.
            drop(held);
        }
        other => log_weak!(
            debug,
            cx.element,
            "ignored unexpected {} from {}",
            ext_type::name(other.msg_type()).unwrap_or("extension message"),
            conn.addr
        ),
    }
    Answer::Other
}
