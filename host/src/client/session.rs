//! The encoding session's life on a connection: started (when its
//! descriptors and memory fit), fed, retired when a frame no longer fits
//! it (frame rate, bitrate, profile, size or format changed).

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Instant;

use hxfr::ext::ext_bits;
use hxfr::{error_code, ErrorMessage, FrameRequest};

use tracing::{debug, info};

use super::frames::Input;
use super::writer::Outgoing;
use super::Reader;
use crate::codecs::EncoderChoice;
use crate::encoder::{encode_failed, Job, Session, SessionKey};
use crate::fds;

impl<'a> Reader<'a> {
    /// Starts (or continues) the encoding session for `key` and queues the
    /// frame's answer, then hands the frame to the encoder (paced by the
    /// peer's pixel-rate quota).
    pub(super) fn encode(
        &mut self,
        sid: u16,
        req: &FrameRequest,
        key: SessionKey,
        index: u32,
        input: Input,
    ) -> bool {
        if let Some(why) = self.ext.codec_refusal() {
            let e = encode_failed(
                req.pts,
                &format!("this connection asked for a codec this host does not encode: {why}"),
            );
            return self.reject(sid, req.pts, index, e);
        }
        let force = std::mem::take(&mut self.force_keyframe) || req.force_keyframe;
        if force && !self.encoder().forces_keyframes {
            if let Some(old) = self.session.take() {
                debug!(
                    "{}: keyframe asked for at pts={}: {} makes none when asked, so a new session (which starts with one)",
                    self.peer,
                    req.pts,
                    self.encoder().factory
                );
                old.finish(self.cfg.drain_timeout);
            }
        }
        self.retire_outdated_session(&key);
        if self.session.is_none() {
            self.session_grant = None;
            if let Err(e) = self.room_for_session(&key, req.pts) {
                return self.reject_because(sid, req.pts, index, e.0, e.1);
            }
            match Session::new(
                self.encoder(),
                key,
                self.params,
                self.target,
                self.stats.clone(),
                self.peer.into(),
            ) {
                Ok(s) => {
                    info!(
                        "{}: encoding {}x{} {} with {} at {} kbit/s",
                        self.peer,
                        key.width,
                        key.height,
                        key.format,
                        self.encoder().factory,
                        self.params.bitrate_kbps
                    );
                    self.session = Some(s);
                }
                Err(e) => {
                    crate::log_conn_limited!(
                        self.warnings,
                        tracing::Level::ERROR,
                        "{}: cannot start an encoding session: {e:#}",
                        self.peer
                    );
                    let e = encode_failed(req.pts, &format!("cannot start the encoder: {e:#}"));
                    return self.reject(sid, req.pts, index, e);
                }
            }
        }

        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        if !self.queue(Outgoing::Frame {
            pts: req.pts,
            session_id: sid,
            reply: reply_rx,
            error_pts_index: self.ext.has(ext_bits::ERROR_PTS).then_some(index),
        }) {
            return false;
        }
        let job = Job {
            pts: req.pts,
            session_id: sid,
            reply: reply_tx,
            arrived: Instant::now(),
        };
        self.pace(key.width, key.height);
        let session = self.session.as_mut().unwrap();
        let mut failure = match input {
            Input::Owned(layout, pixels) => session.encode(&layout, pixels, job, force),
            Input::Slot(slot) => {
                session.encode_buffer(job, force, |pts, d| slot.into_buffer(pts, d))
            }
        }
        .err();
        if let Some(why) = session.take_error() {
            crate::log_conn_limited!(
                self.warnings,
                tracing::Level::ERROR,
                "{}: encoder error: {why}; the next frame starts a new session",
                self.peer
            );
            session.fail_all(&why);
            self.session = None;
        }
        if let Some((job, why)) = failure.take() {
            crate::warn_conn!(self.warnings, "{}: frame pts={}: {why}", self.peer, job.pts);
            let _ = job.reply.try_send(Err(encode_failed(job.pts, &why)));
            self.session = None;
        }
        true
    }

    /// Ends the running session when it cannot take a frame of `key`: the
    /// frame rate, the bitrate (for an encoder that cannot change it while
    /// encoding), the profile, or the frame's size or format changed. The
    /// next session starts with a keyframe of its own.
    fn retire_outdated_session(&mut self, key: &SessionKey) {
        let Some(s) = &self.session else {
            return;
        };
        let (fps_n, fps_d) = (self.params.fps_n, self.params.fps_d);
        let why = if s.framerate != (fps_n, fps_d) {
            format!("frame rate changed to {fps_n}/{fps_d}")
        } else if s.bitrate_kbps != self.params.bitrate_kbps {
            format!("bitrate changed to {} kbit/s", self.params.bitrate_kbps)
        } else if s.target != self.target {
            let to = self
                .target
                .map_or("the encoder's default".into(), |t| t.to_string());
            format!("profile changed to {to}")
        } else if s.key != *key {
            format!(
                "frame format changed from {}x{} {} to {}x{} {}",
                s.key.width, s.key.height, s.key.format, key.width, key.height, key.format
            )
        } else {
            return;
        };
        info!("{}: {why}: new encoding session", self.peer);
        if let Some(old) = self.session.take() {
            old.finish(self.cfg.drain_timeout);
        }
        self.force_keyframe = false;
    }

    /// The encoder of this connection's codec (H.264's until a HELLO asked
    /// for another; a refused codec's frames never reach it).
    pub(super) fn encoder(&self) -> &'a EncoderChoice {
        self.cfg
            .encoders
            .for_codec(self.ext.codec())
            .unwrap_or(&self.cfg.encoders.h264)
    }

    /// Checks that a new encoding session fits: file descriptors, and its
    /// own memory from the budget (kept while the session lives).
    fn room_for_session(
        &mut self,
        key: &SessionKey,
        pts: i64,
    ) -> Result<(), (ErrorMessage, &'static str)> {
        if !self.place.fds.room_for(fds::PER_CLIENT) {
            crate::error_limited!(
                crate::log::DESCRIPTOR_ERRORS,
                "{}: out of file descriptors (limit {}): no encoding session started; raise the limit (LimitNOFILE=, ulimit -n) or lower --max-clients",
                self.peer,
                self.place.fds.limit()
            );
            let e = ErrorMessage::new(
                error_code::REFUSED,
                format!(
                    "frame pts={pts}: vsockenc-host is out of file descriptors; try again later"
                ),
            );
            return Err((e, "descriptors"));
        }
        let cost = session_memory(key);
        match self.take_memory(cost, &AtomicBool::new(false)) {
            Ok(g) => {
                self.session_grant = Some(g);
                Ok(())
            }
            Err(short) => {
                let e = ErrorMessage::new(
                    error_code::REFUSED,
                    format!("frame pts={pts}: no encoding session started: {short}; ask the host's operator to raise --memory-budget"),
                );
                Err((e, "memory_budget"))
            }
        }
    }
}

/// What an encoding session holds of its own, as the budget counts it:
/// the encoder's reference and work frames and the conversion's buffer
/// pool, about 10 frames of the coded 4:2:0 size, plus a fixed part
/// (measured: x264enc at 3840x2160 BGRx, with videoconvert).
pub fn session_memory(key: &SessionKey) -> u64 {
    let (w, h) = (key.width as u64 + 1, key.height as u64 + 1);
    SESSION_FIXED + SESSION_FRAMES * (w * h * 3 / 2)
}

const SESSION_FRAMES: u64 = 10;

const SESSION_FIXED: u64 = 4 << 20;
