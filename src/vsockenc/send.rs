//! The send path: one frame from `handle_frame` to the socket.
//!
//! The [`Sender`] belongs to the streaming thread (it is only used from
//! `handle_frame`); it picks the wire PTS and the keyframe flag, records the
//! frame in the pending table, and writes it: by virtio-gpu resource id for
//! a DMA-BUF the host can read, as a COMPACT_FRAME against the previous
//! frame when the host accepted compact frames and that is smaller, else as
//! a legacy FRAME_REQUEST whose pixels go out as I/O slices straight from
//! the mapped buffer. With no usable connection the frame is recorded as
//! dropped instead.

use std::time::Instant;

use gst_video::prelude::*;
use hxfr::compact;
use hxfr::ext::ext_bits;
use hxfr::message::FRAME_REQUEST_FIXED;
use hxfr::{FrameRequest, WireFormat, HEADER_LEN, LEGACY_SESSION_ID};

use super::connection::Connection;
use super::convert::ToNv12;
use super::delta::{self, DeltaSender, Plan};
use super::dmabuf::ResourceLookup;
use super::packing::{self, Plane};
use super::pending::DropReason;
use super::settings::{Live, Settings};
use super::shm;
use super::state::Shared;
use super::{VsockBaseEnc, CAT};

/// A frame to send, as `handle_frame` sees it.
pub struct FrameToSend<'a> {
    pub frame_id: u32,
    /// The owned input buffer: compact frames keep a reference to it (not a
    /// copy) as the next reference frame.
    pub input: &'a gst::Buffer,
    pub info: &'a gst_video::VideoInfo,
    pub pts: Option<gst::ClockTime>,
    pub duration: Option<gst::ClockTime>,
    /// A force-key-unit event asked for this frame.
    pub force_requested: bool,
}

pub struct Sender {
    settings: Settings,
    live: std::sync::Arc<Live>,
    /// Frames sent since the last forced keyframe (`u64::MAX`: force the
    /// next one).
    frames_since_key: u64,
    dmabuf: ResourceLookup,
    /// The frame the host holds (compact frames are sent against it).
    delta: DeltaSender,
    to_nv12: ToNv12,
    conversion_reported: bool,
}

impl Sender {
    pub fn new(settings: Settings, live: std::sync::Arc<Live>) -> Sender {
        Sender {
            settings,
            live,
            frames_since_key: u64::MAX,
            dmabuf: ResourceLookup::default(),
            delta: DeltaSender::default(),
            to_nv12: ToNv12::default(),
            conversion_reported: false,
        }
    }

    /// Sends one frame, or records it as dropped when there is nowhere to
    /// send it. Never blocks longer than the socket write timeout, and not
    /// at all once the element stops (the socket is shut down).
    pub fn send(
        &mut self,
        el: &VsockBaseEnc,
        shared: &Shared,
        f: FrameToSend<'_>,
    ) -> Result<(), gst::FlowError> {
        let pts = f.pts.map(|p| p.nseconds());
        let duration = f.duration.map(|d| d.nseconds());
        let conn = {
            let mut st = shared.lock();
            // A host that has not said it encodes this element's codec
            // (H.265, AV1) may encode the frame as H.264: it is not sent.
            let link = st
                .usable_link()
                .filter(|c| matches!(c.ext.lock().codec_state(), hxfr::ext::CodecState::Confirmed));
            match link {
                Some(c) => c,
                None => {
                    let reason = if st.connected_at.is_some() {
                        DropReason::Disconnect
                    } else {
                        DropReason::NoHost
                    };
                    let wire = st.table.wire_pts(pts, duration);
                    st.table.insert_dropped(f.frame_id, wire, reason);
                    drop(st);
                    shared.wake_completed();
                    gst::debug!(
                        CAT,
                        obj = el,
                        "no connection to a host that encodes {}: dropping frame {} (wire pts {wire})",
                        self.settings.codec,
                        f.frame_id
                    );
                    return Ok(());
                }
            }
        };

        let format = packing::wire_format(f.info.format()).ok_or_else(|| {
            gst::error!(CAT, obj = el, "format {:?} cannot be sent", f.info.format());
            gst::FlowError::NotNegotiated
        })?;
        // A negotiated format the current host does not take: convert it
        // here rather than send what the host would misread (convert.rs).
        let converted;
        let (f, format) = if format.is_negotiated() && !conn.ext.lock().formats() {
            converted = self.to_nv12.convert(f.input, f.info).map_err(|e| {
                gst::element_error!(
                    el,
                    gst::StreamError::Format,
                    (
                        "cannot convert frame {} for the host at {}: {e}",
                        f.frame_id,
                        conn.addr
                    )
                );
                gst::FlowError::Error
            })?;
            if !self.conversion_reported {
                self.conversion_reported = true;
                gst::warning!(
                    CAT,
                    obj = el,
                    "the host at {} does not take {:?} frames (a legacy host, or one without the FORMATS extension): converting them to NV12 in the guest (logged once)",
                    conn.addr,
                    f.info.format()
                );
            }
            shared.lock().table.stats.frames_converted += 1;
            let f = FrameToSend {
                input: &converted.0,
                info: &converted.1,
                ..f
            };
            (f, WireFormat::Nv12)
        } else {
            (f, format)
        };

        let resource_id = self.dmabuf_resource_id(el, f.input);
        let vframe = match resource_id {
            Some(_) => None,
            None => Some(
                gst_video::VideoFrameRef::from_buffer_ref_readable(f.input, f.info).map_err(
                    |e| {
                        gst::element_error!(
                            el,
                            gst::StreamError::Encode,
                            ("cannot map input frame {}: {e}", f.frame_id)
                        );
                        gst::FlowError::Error
                    },
                )?,
            ),
        };
        let (stride, slices, pixel_bytes) = match &vframe {
            Some(vf) => {
                let planes: Vec<Plane> = (0..vf.n_planes())
                    .map(|i| Plane {
                        data: vf.plane_data(i).unwrap_or(&[]),
                        stride: vf.plane_stride()[i as usize].max(0) as usize,
                    })
                    .collect();
                let packed = packing::pack(format, f.info.width(), f.info.height(), &planes)
                    .map_err(|e| {
                        gst::element_error!(
                            el,
                            gst::StreamError::Encode,
                            ("cannot lay out input frame {}: {e}", f.frame_id)
                        );
                        gst::FlowError::Error
                    })?;
                let len = packed.len();
                (packed.stride, packed.slices, len)
            }
            None => (dmabuf_stride(f.input, f.info), Vec::new(), 0),
        };

        let (wire_pts, force, wake_output) = {
            let mut st = shared.lock();
            let wire = st.table.wire_pts(pts, duration);
            let after_drop = st.table.take_force_keyframe();
            let force = self.keyframe_due(f.force_requested || after_drop);
            let now = Instant::now();
            let timeout = self.settings.response_timeout();
            st.table
                .insert_sent(f.frame_id, wire, now, timeout, conn.generation);
            st.table.stats.frames_sent += 1;
            (wire, force, st.output_sleeps_past(now + timeout))
        };
        if wake_output {
            // The task sleeps without a deadline (nothing was in flight) or
            // past this frame's: it must wake in time to drop it.
            shared.wake_output();
        }

        let req = FrameRequest {
            resource_id: resource_id.unwrap_or(0),
            width: f.info.width(),
            height: f.info.height(),
            format: format.fourcc(),
            stride,
            pts: wire_pts,
            duration: f.duration.map_or(0, |d| d.nseconds() as i64),
            force_keyframe: force,
        };
        gst::trace!(
            CAT,
            obj = el,
            "sending frame {} wire pts {wire_pts} force_keyframe {force}",
            f.frame_id
        );
        let raw = (HEADER_LEN + FRAME_REQUEST_FIXED + pixel_bytes) as u64;
        match self.write(&conn, &req, &f, vframe.as_ref(), &slices) {
            Ok((n, sent)) => {
                let mut st = shared.lock();
                let s = &mut st.table.stats;
                s.bytes_sent += n as u64;
                s.wire_bytes += n as u64;
                s.raw_bytes += raw;
                match sent {
                    Sent::Compact => s.compact_frames += 1,
                    Sent::Shm { copied } => {
                        s.shm_frames += 1;
                        s.shm_copied_frames += copied as u64;
                    }
                    Sent::Full => {}
                }
            }
            Err(e) => {
                gst::warning!(
                    CAT,
                    obj = el,
                    "sending frame {} (wire pts {wire_pts}) to {} failed: {e}",
                    f.frame_id,
                    conn.addr
                );
                shared.lock().table.fail(wire_pts, DropReason::Disconnect);
                shared.wake_completed();
            }
        }
        Ok(())
    }

    /// Writes one frame: as a slot description when the host maps our
    /// shared memory, else as a COMPACT_FRAME against the frame the host
    /// holds when the host accepted COMPACT and that is smaller, else as the
    /// legacy FRAME_REQUEST. The frame (a buffer reference, no copy) becomes
    /// the next reference. Returns the bytes written and how the frame went.
    fn write(
        &mut self,
        conn: &Connection,
        req: &FrameRequest,
        f: &FrameToSend<'_>,
        vframe: Option<&gst_video::VideoFrameRef<&gst::BufferRef>>,
        slices: &[&[u8]],
    ) -> std::io::Result<(usize, Sent)> {
        let cur = vframe
            .zip(WireFormat::from_fourcc_ext(req.format))
            .and_then(|(vf, format)| delta::hx_frame(vf, format));
        let (index, ref_index, verify, lz4, keep) = {
            let mut ext = conn.ext.lock();
            let ref_index = cur
                .as_ref()
                .and_then(|_| ext.compact_reference(req.force_keyframe));
            (
                ext.next_frame(),
                ref_index,
                ext.wants_checksums(),
                ext.has(ext_bits::LZ4),
                ext.may_use(ext_bits::COMPACT),
            )
        };
        if let (true, Some(c)) = (verify, &cur) {
            // Recorded before the write: the host's FRAME_CHECKSUM may come
            // back before the write returns.
            conn.ext.lock().expect_checksum(index, compact::checksum(c));
        }
        if let Some(placed) = vframe.and_then(|vf| place_in_shm(conn, f.input, vf, req)) {
            let copied = placed.copied;
            let mut frame = placed.frame;
            // Recorded before the write: the release may come back first.
            frame.slot = conn.shm.lock().hold(placed.held);
            let n = conn.send_shm_frame(&frame)?;
            // A slot is no reference for compact frames: the guest owns it.
            conn.ext.lock().frame_sent(index, false);
            self.delta.forget();
            return Ok((n, Sent::Shm { copied }));
        }
        self.delta.set_compression(lz4);
        let plan = match &cur {
            Some(c) => self.delta.plan(
                conn.generation,
                ref_index,
                c,
                f.info,
                req,
                LEGACY_SESSION_ID,
            ),
            None => Plan::Full,
        };
        let (result, sent) = match plan {
            Plan::Compact(mut m) => (conn.send_compact(&mut m), Sent::Compact),
            Plan::Full => (conn.send_frame(req, slices), Sent::Full),
        };
        match result {
            Ok(n) => {
                conn.ext.lock().frame_sent(index, cur.is_some());
                // Holding the buffer only pays off while compact frames
                // may follow (not with a legacy host).
                if cur.is_some() && keep {
                    self.delta.remember(
                        conn.generation,
                        index,
                        f.input.clone(),
                        f.info,
                        req.stride,
                    );
                } else {
                    self.delta.forget();
                }
                Ok((n, sent))
            }
            Err(e) => {
                self.delta.forget();
                Err(e)
            }
        }
    }

    /// Whether this frame goes out with force_keyframe, counting frames for
    /// `keyframe-interval`.
    fn keyframe_due(&mut self, requested: bool) -> bool {
        let interval = self.live.keyframe_interval();
        let since = self.frames_since_key;
        let due = requested || since == u64::MAX || (interval > 0 && since + 1 >= interval as u64);
        self.frames_since_key = if due { 0 } else { since + 1 };
        due
    }

    fn dmabuf_resource_id(&mut self, el: &VsockBaseEnc, input: &gst::BufferRef) -> Option<u32> {
        if input.n_memory() != 1 {
            return None;
        }
        let mem = input.peek_memory(0);
        let dmabuf = mem.downcast_memory_ref::<gst_allocators::DmaBufMemory>()?;
        match self.dmabuf.resource_id(dmabuf.fd()) {
            Ok(id) => Some(id),
            Err(e) => {
                if !self.dmabuf.failure_reported {
                    self.dmabuf.failure_reported = true;
                    gst::warning!(
                        CAT,
                        obj = el,
                        "DMA-BUF input is not a virtio-gpu resource ({e}); sending pixels instead (logged once)"
                    );
                }
                None
            }
        }
    }
}

/// How a frame went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Full,
    Compact,
    /// As a slot description; `copied`: into a slot (else zero copies).
    Shm {
        copied: bool,
    },
}

/// The frame placed in the connection's shared memory, if the host maps it
/// and there is room (else the frame goes over the socket).
fn place_in_shm(
    conn: &Connection,
    input: &gst::Buffer,
    vf: &gst_video::VideoFrameRef<&gst::BufferRef>,
    req: &FrameRequest,
) -> Option<shm::Placed> {
    let region = conn.shm.lock().usable()?.clone();
    let format = WireFormat::from_fourcc_ext(req.format)?;
    let planes: Vec<shm::InputPlane> = (0..vf.n_planes())
        .map(|i| shm::InputPlane {
            data: vf.plane_data(i).unwrap_or(&[]),
            stride: vf.plane_stride()[i as usize].max(0) as usize,
        })
        .collect();
    let mut req = *req;
    req.stride = planes.first()?.stride as u32;
    shm::place(&region, input, format, &req, &planes)
}

/// The stride of plane 0 of a buffer sent by resource id.
fn dmabuf_stride(input: &gst::BufferRef, info: &gst_video::VideoInfo) -> u32 {
    let stride = input
        .meta::<gst_video::VideoMeta>()
        .map(|m| m.stride()[0])
        .unwrap_or(info.stride()[0]);
    stride.max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_are_forced_every_interval_and_after_a_request() {
        let settings = Settings {
            keyframe_interval: 3,
            ..Settings::default()
        };
        let live = std::sync::Arc::new(Live::new(&settings));
        let mut s = Sender::new(settings, live.clone());
        let due: Vec<bool> = (0..7).map(|_| s.keyframe_due(false)).collect();
        assert_eq!(due, [true, false, false, true, false, false, true]);
        assert!(!s.keyframe_due(false));
        assert!(s.keyframe_due(true), "a request forces one at once");
        assert!(!s.keyframe_due(false), "and restarts the count");
        // A change while running counts from the last keyframe.
        live.set_keyframe_interval(2);
        assert!(s.keyframe_due(false));
        live.set_keyframe_interval(0);
        assert!((0..100).all(|_| !s.keyframe_due(false)), "0: never forced");
    }
}
