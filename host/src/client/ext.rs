//! The messages that change what a connection does rather than carry a
//! frame: the extension messages' dispatch (HELLO, DRAIN, SHM_OFFER,
//! PROFILE_REQ) and CONFIG_REQ.

use hxfr::ext::{ext_bits, ext_type, ExtMessage, ProfileRequest};
use hxfr::shm::{RegionKind, ShmOffer};
use hxfr::{ConfigRequest, Header};

use tracing::{debug, error, info};

use super::writer::Outgoing;
use super::{Reader, CONNECTION_LINES};
use crate::profile::{Negotiator, Outcome};

/// What this daemon offers a guest that says HELLO: everything it knows
/// (FRAME_CHECKSUM only to a guest that asks for it; PROFILE and FORMATS
/// work with any encoder: the answer to a profile request comes from the
/// encoder itself), shared memory only where the connection can have it
/// ([`HostShm::supported`](crate::shm::HostShm::supported)).
pub(super) const SUPPORTED_EXTENSIONS: u32 = ext_bits::KNOWN & !ext_bits::SHM;

impl Reader<'_> {
    /// Handles one extension message; false when the connection must close.
    pub(super) fn handle_ext(&mut self, header: Header, msg: ExtMessage) -> bool {
        let sid = header.session_id;
        match msg {
            ExtMessage::Hello(h) => match self.ext.on_hello_with(&h, |c| {
                self.cfg
                    .encoders
                    .for_codec(c)
                    .map(|_| ())
                    .map_err(str::to_string)
            }) {
                Some(ack) => {
                    crate::log_limited!(
                        CONNECTION_LINES,
                        tracing::Level::INFO,
                        "{}: HELLO from {:?} (version {}, offers {}); accepted {}; encoding {} with {}",
                        self.peer,
                        h.agent,
                        h.version,
                        ext_bits::describe(h.extensions),
                        ext_bits::describe(ack.extensions),
                        ack.codec,
                        self.encoder().factory
                    );
                    if let Some(why) = self.ext.codec_refusal() {
                        let asked = hxfr::Codec::from_u8(h.codec)
                            .map_or(format!("codec {}", h.codec), |c| c.to_string());
                        self.complain(format_args!(
                            "the guest asked for {asked}, refused: {why}; its frames are refused"
                        ));
                    }
                    self.queue(Outgoing::Now(ExtMessage::HelloAck(ack).encode(sid)))
                }
                None => {
                    debug!("{}: repeated HELLO ignored", self.peer);
                    true
                }
            },
            ExtMessage::CompactFrame(cf) => self.compact_frame(sid, header, cf),
            ExtMessage::ShmOffer(o) if self.ext.has(ext_bits::SHM) => self.shm_offer(sid, &o),
            ExtMessage::ShmFrame(f) if self.ext.has(ext_bits::SHM) => {
                self.shm_frame(sid, header, f)
            }
            ExtMessage::Drain { token } => {
                // Flush the encoder so that every frame received so far is
                // answered; DRAIN_DONE is queued behind all those answers.
                debug!("{}: DRAIN {token}", self.peer);
                if let Some(s) = self.session.take() {
                    s.finish(self.cfg.drain_timeout);
                }
                self.queue(Outgoing::Now(ExtMessage::DrainDone { token }.encode(sid)))
            }
            ExtMessage::ProfileRequest(req) if self.ext.has(ext_bits::PROFILE) => {
                self.profile_request(sid, &req)
            }
            other => {
                debug!(
                    "{}: ignored {} from the guest",
                    self.peer,
                    ext_type::name(other.msg_type()).unwrap_or("extension message")
                );
                true
            }
        }
    }

    /// Answers a PROFILE_REQ; queued behind the answers to every earlier
    /// frame, and in force from the next frame on.
    fn profile_request(&mut self, sid: u16, req: &ProfileRequest) -> bool {
        let negotiator = Negotiator {
            encoder: self.encoder(),
            params: self.params,
            timeout: self.cfg.encode_timeout,
            max_frame_bytes: self.cfg.limits.max_pixel_bytes,
            peer: self.peer.into(),
        };
        let (resp, outcome) = negotiator.answer(req);
        let codec = self.ext.codec();
        let asked = format!(
            "{} up to {} for {}x{} at {}/{} fps",
            codec.describe_profile(req.profile),
            codec.describe_level(req.max_level),
            req.width,
            req.height,
            req.framerate_num,
            req.framerate_den
        );
        match outcome {
            Outcome::Accepted(target) => {
                info!(
                    "{}: PROFILE_REQ {} ({asked}): accepted, {} produces {} {}",
                    self.peer,
                    req.token,
                    resp.encoder,
                    codec.describe_profile(resp.profile),
                    codec.describe_level(resp.level)
                );
                self.target = target;
            }
            Outcome::Refused => self.complain(format_args!(
                "PROFILE_REQ {} ({asked}) refused: {}",
                req.token, resp.reason
            )),
        }
        self.queue(Outgoing::Now(ExtMessage::ProfileResponse(resp).encode(sid)))
    }

    pub(super) fn configure(&mut self, c: ConfigRequest) {
        if c.bitrate > 0 {
            self.params.bitrate_kbps = (c.bitrate / 1000).max(1);
            if let Some(s) = &mut self.session {
                if !s.set_bitrate(self.params.bitrate_kbps) {
                    info!(
                        "{}: {} cannot change its bitrate while encoding: a new encoding session (starting with a keyframe) takes it at the next frame",
                        self.peer,
                        self.encoder().factory
                    );
                }
            }
        }
        if c.framerate_num > 0
            && c.framerate_den > 0
            && c.framerate_num <= i32::MAX as u32
            && c.framerate_den <= i32::MAX as u32
        {
            // The rate is in the session's caps: a change re-creates the
            // session at the next frame.
            self.params.fps_n = c.framerate_num as i32;
            self.params.fps_d = c.framerate_den as i32;
        }
        info!(
            "{}: CONFIG_REQ {}x{} {} bit/s {}/{} fps: bitrate now {} kbit/s",
            self.peer,
            c.width,
            c.height,
            c.bitrate,
            c.framerate_num,
            c.framerate_den,
            self.params.bitrate_kbps
        );
    }

    /// Answers an SHM_OFFER: the region is mapped and its header compared
    /// with the offer's before any frame may use it.
    fn shm_offer(&mut self, sid: u16, offer: &ShmOffer) -> bool {
        let fd = match offer.kind {
            RegionKind::Memfd => self.conn.take_passed_fd(),
            RegionKind::Bound => None,
        };
        let ack = self.shm.on_offer(offer, fd);
        if ack.accepted {
            if self.shm.needs_release_writer() {
                match self.release_writer.take().and_then(|start| start()) {
                    Some(tx) => self.shm.set_release_writer(tx),
                    None => {
                        error!(
                            "{}: cannot start the shared-memory release writer; closing",
                            self.peer
                        );
                        return false;
                    }
                }
            }
            info!(
                "{}: shared memory in use: {} (offer {}); frames arrive as slot descriptions",
                self.peer,
                self.shm.describe().unwrap_or_default(),
                offer.token
            );
        } else {
            self.complain(format_args!(
                "shared-memory offer {} ({}) refused: {}; the guest sends pixels over the socket",
                offer.token, offer.kind, ack.reason
            ));
        }
        self.queue(Outgoing::Now(ExtMessage::ShmAck(ack).encode(sid)))
    }
}
