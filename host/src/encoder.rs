//! The per-connection GStreamer encoding session.
//!
//! A session is `appsrc ! [videoconvert ! 4:2:0 caps] ! <encoder> !
//! [video/x-h264,profile=…,level=…] ! h264parse config-interval=-1 !
//! video/x-h264,stream-format=byte-stream,alignment=au ! appsink`, with
//! the encoder, parser and caps of the connection's codec
//! ([`crate::codecs`]: `h265parse`, `av1parse ! video/x-av1,
//! stream-format=obu-stream, alignment=tu`). The caps after the encoder,
//! when a guest negotiated a profile, make the encoder produce it the way
//! downstream caps make it in any GStreamer pipeline ([`crate::profile`]);
//! a 10-bit profile (H.265 main-10) has the frames converted to a 10-bit
//! 4:2:0 format first.
//!
//! Frames enter with timestamps from an internal counter (never the
//! guest's pts, which may be anything) and a FIFO remembers, per counter
//! timestamp, which request it was; each encoded access unit is matched to
//! its request by that timestamp, so the guest's own pts is echoed exactly.

use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use gst::glib;
use gst::prelude::*;
use hxfr::{error_code, msg_type, ErrorMessage, FrameLayout, Header, WireFormat};
use tracing::{debug, trace, Span};

use crate::budget::Charged;
use crate::codecs::{self, EncoderChoice};
use crate::log::ratelimit::RateLimit;
use crate::pixels::{self, frame_buffer};
use crate::profile::Target;
use crate::stats::ClientStats;

/// Warnings about encoder outputs, all sessions together: a guest can make
/// an encoder drop frames at will.
pub(crate) static OUTPUT_WARNINGS: RateLimit = RateLimit::new(20, Duration::from_secs(10));

/// Settings a guest can change with CONFIG_REQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub bitrate_kbps: u32,
    pub fps_n: i32,
    pub fps_d: i32,
}

/// The 4:2:0 format to convert to for an encoder that cannot take the
/// guest's format. Left to itself, videoconvert picks the format closest to
/// RGB, which for x264enc is Y444: a High 4:4:4 stream that most (hardware)
/// decoders cannot play.
fn yuv420_caps(encoder: &gst::Element, bit_depth: u8) -> gst::Caps {
    let accepted = encoder.static_pad("sink").map(|p| p.query_caps(None));
    let formats: &[&str] = match bit_depth {
        10 => &["P010_10LE", "I420_10LE"],
        _ => &["NV12", "I420"],
    };
    for &format in formats {
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", format)
            .build();
        if accepted.as_ref().is_some_and(|a| a.can_intersect(&caps)) {
            return caps;
        }
    }
    gst::Caps::builder("video/x-raw").build()
}

/// What the writer of a connection gets back for one frame: the complete
/// FRAME_RESPONSE message, or the ERROR to send instead.
pub type Reply = Result<Vec<u8>, ErrorMessage>;

/// One frame handed to a session.
pub struct Job {
    pub pts: i64,
    pub session_id: u16,
    pub reply: SyncSender<Reply>,
    pub arrived: Instant,
}

struct Pending {
    counter_pts: gst::ClockTime,
    job: Job,
}

type Fifo = Arc<Mutex<VecDeque<Pending>>>;

/// What a session was created for; a frame with another key needs a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKey {
    pub format: WireFormat,
    pub width: u32,
    pub height: u32,
}

impl SessionKey {
    pub fn of(l: &FrameLayout) -> SessionKey {
        SessionKey {
            format: l.format,
            width: l.width,
            height: l.height,
        }
    }

    fn coded_size(&self) -> (u32, u32) {
        pixels::coded_size(self.width, self.height)
    }

    fn video_format(&self) -> gst_video::VideoFormat {
        pixels::video_format(self.format)
    }
}

pub struct Session {
    pub key: SessionKey,
    /// The frame rate the session was created with (`fps_n`, `fps_d`).
    pub framerate: (i32, i32),
    /// The profile and level negotiated for it, if any.
    pub target: Option<Target>,
    /// The bitrate its encoder runs at, kbit/s.
    pub bitrate_kbps: u32,
    factory: String,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    encoder: gst::Element,
    fifo: Fifo,
    /// Timestamps of frames to be forced to keyframes, in order.
    force_at: Arc<Mutex<VecDeque<gst::ClockTime>>>,
    counter: u64,
    frame_duration: gst::ClockTime,
}

impl Session {
    pub fn new(
        choice: &EncoderChoice,
        key: SessionKey,
        params: Params,
        target: Option<Target>,
        stats: Arc<ClientStats>,
        peer: Arc<str>,
    ) -> anyhow::Result<Session> {
        let (w, h) = key.coded_size();
        let (fps_n, fps_d) = if params.fps_n > 0 && params.fps_d > 0 {
            (params.fps_n, params.fps_d)
        } else {
            (30, 1)
        };
        let caps = gst_video::VideoInfo::builder(key.video_format(), w, h)
            .fps(gst::Fraction::new(fps_n, fps_d))
            .build()
            .context("raw video caps")?
            .to_caps()
            .context("raw video caps")?;
        let frame_duration = gst::ClockTime::SECOND
            .mul_div_floor(fps_d as u64, fps_n as u64)
            .unwrap_or(gst::ClockTime::from_mseconds(33))
            .max(gst::ClockTime::from_useconds(1));

        let pipeline = gst::Pipeline::new();
        let appsrc = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .max_bytes(0)
            .build();
        let encoder = gst::ElementFactory::make(&choice.factory)
            .build()
            .with_context(|| format!("cannot create {}", choice.factory))?;
        codecs::configure(&encoder, &choice.factory, params);
        let codec = choice.codec;
        let parse = codecs::parser(codec);
        let filter = gst::ElementFactory::make("capsfilter")
            .property("caps", codecs::output_caps(codec))
            .build()?;
        let appsink = gst_app::AppSink::builder()
            .sync(false)
            .async_(false)
            .build();

        let mut chain: Vec<gst::Element> = vec![appsrc.clone().upcast()];
        // The guest's frames are 8-bit: a deeper profile needs them
        // converted even when the encoder takes them as they are.
        let bit_depth = target.map_or(8, |t| t.bit_depth());
        let encoder_takes_format = bit_depth == 8
            && encoder
                .static_pad("sink")
                .map(|p| p.query_caps(None).can_intersect(&caps))
                .unwrap_or(false);
        if !encoder_takes_format {
            chain.push(gst::ElementFactory::make("videoconvert").build()?);
            chain.push(
                gst::ElementFactory::make("capsfilter")
                    .property("caps", yuv420_caps(&encoder, bit_depth))
                    .build()?,
            );
        }
        chain.push(encoder.clone());
        if let Some(t) = &target {
            chain.push(
                gst::ElementFactory::make("capsfilter")
                    .property("caps", t.caps())
                    .build()?,
            );
        }
        chain.extend([parse, filter, appsink.clone().upcast()]);
        pipeline.add_many(&chain)?;
        gst::Element::link_many(&chain).context("cannot link the encoding pipeline")?;

        let force_at = force_key_units_in_band(&appsrc);
        let fifo: Fifo = Arc::default();
        let cb_fifo = fifo.clone();
        let cb_peer = peer.clone();
        // Outputs arrive on a GStreamer thread: log them in the span of the
        // connection that created the session.
        let cb_span = Span::current();
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let _entered = cb_span.enter();
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    deliver(&sample, codec, &cb_fifo, &stats, &cb_peer);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| anyhow!("the {} pipeline does not start", choice.factory))?;
        debug!(
            "{peer}: session {}x{} {} (coded {w}x{h}) with {}{}{}",
            key.width,
            key.height,
            key.format,
            choice.factory,
            if encoder_takes_format {
                ""
            } else {
                " after videoconvert"
            },
            match &target {
                Some(t) => format!(", producing {t}"),
                None => String::new(),
            }
        );
        Ok(Session {
            key,
            factory: choice.factory.clone(),
            pipeline,
            appsrc,
            encoder,
            fifo,
            counter: 0,
            force_at,
            frame_duration,
            framerate: (params.fps_n, params.fps_d),
            target,
            bitrate_kbps: params.bitrate_kbps,
        })
    }

    /// Changes the bitrate of the running encoder; false when the encoder
    /// does not allow it while encoding (the caller starts a new session).
    pub fn set_bitrate(&mut self, kbps: u32) -> bool {
        if !codecs::bitrate_is_live(&self.encoder, &self.factory) {
            return false;
        }
        codecs::set_bitrate(&self.encoder, &self.factory, kbps);
        self.bitrate_kbps = kbps;
        true
    }

    /// Queues one frame. On failure the job comes back with the reason.
    pub fn encode(
        &mut self,
        layout: &FrameLayout,
        pixels: Charged,
        job: Job,
        force_keyframe: bool,
    ) -> Result<(), (Job, String)> {
        self.encode_buffer(job, force_keyframe, |pts, duration| {
            frame_buffer(layout, pixels, pts, duration)
        })
    }

    /// Queues one frame whose buffer `make` builds for the session's
    /// timestamps (a slot of shared memory, wrapped without a copy).
    pub fn encode_buffer<F>(
        &mut self,
        job: Job,
        force_keyframe: bool,
        make: F,
    ) -> Result<(), (Job, String)>
    where
        F: FnOnce(gst::ClockTime, gst::ClockTime) -> Result<gst::Buffer, glib::BoolError>,
    {
        let pts = self.frame_duration * self.counter;
        self.counter += 1;
        let buffer = match make(pts, self.frame_duration) {
            Ok(b) => b,
            Err(e) => return Err((job, format!("cannot wrap the pixels: {e}"))),
        };
        // A session's first frame is an IDR anyway, and forcing it makes
        // x264enc ignore every later request of the session (seen with
        // GStreamer 1.22, also with the event sent in-band). The event is
        // sent in-band, right before its buffer, by the probe set up in `new`.
        if force_keyframe && self.counter > 1 {
            self.force_at.lock().unwrap().push_back(pts);
        }
        self.fifo.lock().unwrap().push_back(Pending {
            counter_pts: pts,
            job,
        });
        if let Err(flow) = self.appsrc.push_buffer(buffer) {
            let job = self.fifo.lock().unwrap().pop_back().map(|p| p.job);
            if let Some(job) = job {
                return Err((job, format!("the encoder refused the frame ({flow:?})")));
            }
        }
        Ok(())
    }

    /// The first error the pipeline posted, if any.
    pub fn take_error(&self) -> Option<String> {
        let bus = self.pipeline.bus()?;
        let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
        error_text(&msg)
    }

    /// Ends the stream and waits (up to `timeout`) until the encoder has
    /// given up every frame it holds. `Err`: the error the pipeline posted
    /// instead.
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        let _ = self.appsrc.end_of_stream();
        let bus = self.pipeline.bus().ok_or("the pipeline has no bus")?;
        let deadline = gst::ClockTime::from_nseconds(timeout.as_nanos() as u64);
        match bus.timed_pop_filtered(deadline, &[gst::MessageType::Eos, gst::MessageType::Error]) {
            Some(msg) => error_text(&msg).map_or(Ok(()), Err),
            None => Err(format!("the encoder did not finish within {timeout:?}")),
        }
    }

    /// Answers every frame still in the session with an ERROR.
    pub fn fail_all(&self, why: &str) {
        let pending: Vec<Pending> = self.fifo.lock().unwrap().drain(..).collect();
        for p in pending {
            let _ = p.job.reply.try_send(Err(encode_failed(p.job.pts, why)));
        }
    }

    /// Ends the session gracefully: waits (up to `timeout`) until every
    /// queued frame is encoded and delivered.
    pub fn finish(self, timeout: Duration) {
        let pending = self.fifo.lock().unwrap().len();
        if pending == 0 {
            return;
        }
        debug!("finishing {pending} in-flight frame(s) (up to {timeout:?})");
        let _ = self.flush(timeout);
        self.fail_all("the encoding session ended before this frame was encoded");
    }
}

impl Drop for Session {
    /// Stops the pipeline. Frames still pending are dropped unanswered
    /// (their writer either already left or answers them by timeout).
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        self.fifo.lock().unwrap().clear();
    }
}

/// The text of an error message (`None` for other messages), with the
/// last line of its debug details, which says why (`streaming stopped,
/// reason not-negotiated (-4)`); the lines before it name source files.
fn error_text(msg: &gst::Message) -> Option<String> {
    let gst::MessageView::Error(e) = msg.view() else {
        return None;
    };
    let src = e.src().map(|s| s.name().to_string()).unwrap_or_default();
    let why = e
        .debug()
        .and_then(|d| d.lines().last().map(|l| l.trim().to_string()));
    Some(match why {
        Some(why) if !why.is_empty() => format!("{src}: {} ({why})", e.error()),
        _ => format!("{src}: {}", e.error()),
    })
}

/// Sends a force-key-unit event right before each buffer whose timestamp is
/// queued in the returned list, from the streaming thread: in order with the
/// data, after stream-start/caps/segment, which `appsrc.send_event` does not
/// guarantee.
fn force_key_units_in_band(appsrc: &gst_app::AppSrc) -> Arc<Mutex<VecDeque<gst::ClockTime>>> {
    let force_at: Arc<Mutex<VecDeque<gst::ClockTime>>> = Arc::default();
    let queue = force_at.clone();
    let pad = appsrc.static_pad("src").expect("appsrc has a src pad");
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let due = {
            let mut q = queue.lock().unwrap();
            // Entries for frames that never got here (a refused push) are
            // stale: drop them.
            while q.front().is_some_and(|t| *t < pts) {
                q.pop_front();
            }
            q.front() == Some(&pts) && q.pop_front().is_some()
        };
        if due {
            if let Some(peer) = pad.peer() {
                let event = gst_video::DownstreamForceKeyUnitEvent::builder()
                    .timestamp(pts)
                    .stream_time(pts)
                    .running_time(pts)
                    .all_headers(true)
                    .build();
                peer.send_event(event);
            }
        }
        gst::PadProbeReturn::Ok
    });
    force_at
}

pub fn encode_failed(pts: i64, why: &str) -> ErrorMessage {
    ErrorMessage::new(
        error_code::ENCODE_FAILED,
        format!("encode failed for frame pts={pts}: {why}"),
    )
}

/// Matches an encoded access unit to its request and hands the response to
/// the connection's writer.
fn deliver(sample: &gst::Sample, codec: hxfr::Codec, fifo: &Fifo, stats: &ClientStats, peer: &str) {
    let Some(buffer) = sample.buffer() else {
        return;
    };
    // Encoders may shift timestamps (x264enc adds 1000 hours so that dts
    // can precede pts) along with the segment: compare running times.
    let out_pts = match sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
    {
        Some(seg) => buffer.pts().and_then(|p| seg.to_running_time(p)),
        None => buffer.pts(),
    };
    let mut fifo = fifo.lock().unwrap();
    // Frames before this one that never came out were dropped by the encoder.
    while let (Some(front), Some(pts)) = (fifo.front(), out_pts) {
        if front.counter_pts >= pts {
            break;
        }
        let p = fifo.pop_front().unwrap();
        crate::warn_limited!(
            OUTPUT_WARNINGS,
            "{peer}: the encoder dropped frame pts={} (its output at {}, next output at {:?})",
            p.job.pts,
            p.counter_pts,
            out_pts
        );
        let _ = p
            .job
            .reply
            .try_send(Err(encode_failed(p.job.pts, "the encoder dropped it")));
    }
    let matches = match (fifo.front(), out_pts) {
        (Some(front), Some(pts)) => front.counter_pts == pts,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !matches {
        crate::warn_limited!(
            OUTPUT_WARNINGS,
            "{peer}: encoded output at {out_pts:?} matches no pending frame; discarded"
        );
        return;
    }
    let p = fifo.pop_front().unwrap();
    drop(fifo);
    let Ok(map) = buffer.map_readable() else {
        let _ = p
            .job
            .reply
            .try_send(Err(encode_failed(p.job.pts, "unreadable output buffer")));
        return;
    };
    stats.record_latency(p.job.arrived.elapsed());
    // A keyframe is an access unit a decoder can start from: one with an
    // IDR slice (H.264, H.265), a key frame with its sequence header (AV1).
    // The parsers' flag also marks the I slices an encoder puts at scene
    // cuts, which need the pictures before them.
    let keyframe = codec.is_keyframe(&map);
    let msg = frame_response(p.job.session_id, p.job.pts, keyframe, &map);
    trace!(
        "{peer}: encoded pts={} ({} bytes{})",
        p.job.pts,
        map.len(),
        if keyframe { ", keyframe" } else { "" }
    );
    let _ = p.job.reply.try_send(Ok(msg));
}

/// A FRAME_RESPONSE with one Annex-B chunk; dts equals pts (no B-frames).
fn frame_response(session_id: u16, pts: i64, keyframe: bool, au: &[u8]) -> Vec<u8> {
    let payload = 24 + 4 + au.len();
    let mut out = Vec::with_capacity(hxfr::HEADER_LEN + payload);
    out.extend_from_slice(
        &Header::new(msg_type::FRAME_RESPONSE, 0, session_id, payload as u32).to_bytes(),
    );
    out.extend_from_slice(&pts.to_le_bytes());
    out.extend_from_slice(&pts.to_le_bytes());
    out.extend_from_slice(&[keyframe as u8, 0, 0, 0]);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(au.len() as u32).to_le_bytes());
    out.extend_from_slice(au);
    out
}
