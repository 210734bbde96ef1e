//! What a connection may take, decided before a message's body is read:
//! the client slot and the memory of a frame (at its header), the answer
//! to a frame refused for either, the pixel-rate quota's pacing, and the
//! deadlines on progress (handshake, slow messages).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hxfr::ext::{ext_type, PTS_UNKNOWN};
use hxfr::{error_code, msg_type, ErrorMessage, Header, FLAG_PIXELS};

use tracing::trace;

use super::intake::Intake;
use super::{End, Reader, CONNECTION_LINES, POLL};
use crate::admission::Refusal;
use crate::budget::{Grant, Short};
use crate::stats::ClientStats;

/// How long a frame waits for the memory budget before it is refused
/// (the guest's own frames being encoded free memory meanwhile).
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// A COMPACT_FRAME refused before its body is read is handed to the
/// decoder as this (unknown) extension type, which it skips unbuffered.
pub(super) const SKIPPED_FRAME: u8 = ext_type::LAST;

/// Why a frame is refused before its body is read.
pub(super) enum Refused {
    /// No client slot: the connection closes after the answer.
    Slot(Refusal),
    Budget(Short),
}

impl Reader<'_> {
    /// Whether the connection missed a deadline on progress: no valid
    /// message within the handshake timeout, or a message arriving slower
    /// than its allowance.
    pub(super) fn overdue(&self, intake: &Intake, connected: Instant) -> Option<End> {
        let now = Instant::now();
        if !self.progressed && now.duration_since(connected) > self.cfg.handshake_timeout {
            self.cfg
                .metrics
                .refusal(&self.place.listener, "handshake_timeout");
            crate::log_limited!(
                CONNECTION_LINES,
                tracing::Level::INFO,
                "{}: no complete valid message within {:?} of connecting (--handshake-timeout); closing the connection",
                self.peer,
                self.cfg.handshake_timeout
            );
            return Some(End::Broken);
        }
        let late = intake.late(now)?;
        self.cfg
            .metrics
            .refusal(&self.place.listener, "message_timeout");
        let size = late
            .size
            .map_or("a message header".into(), |s| format!("a {s}-byte message"));
        crate::warn_conn!(
            self.warnings,
            "{}: {size} is arriving too slowly: {} bytes in {:.1}s, {:?} (--message-timeout) plus {}/s (--min-receive-rate) allowed; closing the connection",
            self.peer,
            late.received,
            late.elapsed.as_secs_f64(),
            late.allowed,
            crate::budget::bytes(self.cfg.pace.min_rate)
        );
        Some(End::Broken)
    }

    /// Decides about a message from its header, before its body is read:
    /// a frame takes a client slot (its first) and memory from the budget.
    /// Returns the header the decoder gets: a refused frame's header loses
    /// its pixel flag (the decoder reads the pts and skips the pixels), a
    /// refused COMPACT_FRAME becomes a type the decoder skips.
    pub(super) fn on_header(&mut self, h: &Header, shutdown: &AtomicBool) -> Header {
        let compact = h.msg_type == ext_type::COMPACT_FRAME;
        let pixels = h.msg_type == msg_type::FRAME_REQUEST && h.flags & FLAG_PIXELS != 0;
        if h.msg_type == ext_type::SHM_FRAME {
            // The pixels are in the guest's region: a slot, no memory.
            if let Err(r) = self.take_slot() {
                self.refused = Some(Refused::Slot(r));
                return Header {
                    msg_type: SKIPPED_FRAME,
                    ..*h
                };
            }
            return *h;
        }
        if !compact && h.msg_type != msg_type::FRAME_REQUEST {
            return *h;
        }
        if let Err(r) = self.take_slot() {
            self.refused = Some(Refused::Slot(r));
        } else if pixels || compact {
            let body = h.payload_size as u64;
            if body <= self.cfg.limits.max_pixel_bytes as u64 + 128 {
                match self.take_memory(body, shutdown) {
                    Ok(g) => self.body_grant = Some(g),
                    Err(short) => self.refused = Some(Refused::Budget(short)),
                }
            }
        }
        match (&self.refused, compact) {
            (None, _) => *h,
            (Some(_), false) => Header {
                flags: h.flags & !FLAG_PIXELS,
                ..*h
            },
            (Some(_), true) => Header {
                msg_type: SKIPPED_FRAME,
                ..*h
            },
        }
    }

    /// Makes this connection a client (a slot of --max-clients).
    pub(super) fn take_slot(&mut self) -> Result<(), Refusal> {
        if self.client {
            return Ok(());
        }
        self.place.admission.promote(self.place.id)?;
        self.client = true;
        self.account = Some(self.cfg.budget.open());
        Ok(())
    }

    /// `n` bytes from the budget, waiting a little for memory to come back.
    pub(super) fn take_memory(&self, n: u64, shutdown: &AtomicBool) -> Result<Grant, Short> {
        let account = self.account.as_ref().expect("a client has an account");
        account.take(n, BUDGET_WAIT, || {
            shutdown.load(Ordering::SeqCst) || self.dead.load(Ordering::SeqCst)
        })
    }

    /// Answers the frame `refused` was about; false when the connection
    /// closes.
    pub(super) fn answer_refused(&mut self, sid: u16, pts: i64, why: Refused) -> bool {
        ClientStats::add(&self.stats.frames_in, 1);
        let index = self.ext.next_frame();
        self.ext.forget_reference();
        match why {
            Refused::Slot(r) => {
                self.cfg.metrics.refusal(&self.place.listener, r.reason());
                let text = match &r {
                    Refusal::Full { max_clients } => format!(
                        "vsockenc-host is serving its maximum of {max_clients} clients; try again later"
                    ),
                    Refusal::PerPeer { peer, limit } => format!(
                        "vsockenc-host already serves {limit} connections of {peer} (max-per-peer); close one first"
                    ),
                };
                crate::warn_limited!(crate::log::REFUSALS, "{}: refused: {text}", self.peer);
                // Not about this frame but about the guest: a plain ERROR,
                // which a vsockenc guest reads as "not served" (and stops
                // asking for a while), then the connection closes.
                let e = ErrorMessage::new(error_code::REFUSED, text);
                self.stats.failed(r.reason());
                let _ = self.send_error(sid, e);
                false
            }
            Refused::Budget(short) => {
                let frame = match pts {
                    PTS_UNKNOWN => format!("compact frame {index} (its pts unread)"),
                    pts => format!("frame pts={pts}"),
                };
                let e = ErrorMessage::new(
                    error_code::REFUSED,
                    format!("{frame}: not buffered: {short}; send smaller or fewer frames, or ask the host's operator to raise --memory-budget"),
                );
                self.reject_because(sid, pts, index, e, "memory_budget")
            }
        }
    }

    /// Holds the reader until the peer's pixel-rate quota lets this frame
    /// through: the guest is paced, not refused.
    pub(super) fn pace(&self, width: u32, height: u32) {
        let Some(bucket) = &self.place.quota else {
            return;
        };
        let pixels = width as u64 * height as u64;
        let wait = bucket.lock().unwrap().take(pixels, Instant::now());
        if wait.is_zero() {
            return;
        }
        trace!("{}: pixel-rate quota: waiting {wait:?}", self.peer);
        self.stats.guest.paced(wait);
        let until = Instant::now() + wait;
        while !self.dead.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(POLL));
        }
    }
}
