//! The fallback for a format the current host cannot take.
//!
//! I420, YV12, YUY2 and UYVY travel as they are to a host that accepted the
//! FORMATS extension, and the element offers them upstream only then. A
//! frame in such a format can still meet a host that does not take it: the
//! caps were set while no host was there (`wait-for-host`), or a reconnect
//! reached an older host. Such frames are converted to NV12 in the guest,
//! with GStreamer's own converter, rather than sent to a host that would
//! misread them or dropped.

#[derive(Default)]
pub struct ToNv12 {
    /// The converter for the last input geometry, and its output info.
    cached: Option<(
        gst_video::VideoInfo,
        gst_video::VideoConverter,
        gst_video::VideoInfo,
    )>,
}

impl ToNv12 {
    /// `input` (described by `info`) as a new NV12 buffer, with its info.
    pub fn convert(
        &mut self,
        input: &gst::Buffer,
        info: &gst_video::VideoInfo,
    ) -> Result<(gst::Buffer, gst_video::VideoInfo), String> {
        if self.cached.as_ref().is_none_or(|(i, _, _)| i != info) {
            let out = gst_video::VideoInfo::builder(
                gst_video::VideoFormat::Nv12,
                info.width(),
                info.height(),
            )
            .fps(info.fps())
            .par(info.par())
            .build()
            .map_err(|e| format!("no NV12 layout for {}x{}: {e}", info.width(), info.height()))?;
            let conv = gst_video::VideoConverter::new(info, &out, None)
                .map_err(|e| format!("cannot convert {:?} to NV12: {e}", info.format()))?;
            self.cached = Some((info.clone(), conv, out));
        }
        let (_, conv, out) = self.cached.as_ref().expect("set above");
        let src = gst_video::VideoFrameRef::from_buffer_ref_readable(input.as_ref(), info)
            .map_err(|e| format!("cannot map the input frame: {e}"))?;
        let mut buffer = gst::Buffer::with_size(out.size())
            .map_err(|e| format!("cannot allocate an NV12 frame: {e}"))?;
        {
            let b = buffer.get_mut().expect("a new buffer is writable");
            let mut dst = gst_video::VideoFrameRef::from_buffer_ref_writable(b, out)
                .map_err(|e| format!("cannot map the NV12 frame: {e}"))?;
            conv.frame_ref(&src, &mut dst);
        }
        Ok((buffer, out.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i420_becomes_the_same_picture_in_nv12() {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 8, 4)
            .build()
            .unwrap();
        let mut input = gst::Buffer::with_size(info.size()).unwrap();
        {
            let b = input.get_mut().unwrap();
            let mut f = gst_video::VideoFrameRef::from_buffer_ref_writable(b, &info).unwrap();
            f.plane_data_mut(0).unwrap().fill(100);
            f.plane_data_mut(1).unwrap().fill(50);
            f.plane_data_mut(2).unwrap().fill(200);
        }
        let (out, out_info) = ToNv12::default().convert(&input, &info).unwrap();
        assert_eq!(out_info.format(), gst_video::VideoFormat::Nv12);
        let f =
            gst_video::VideoFrameRef::from_buffer_ref_readable(out.as_ref(), &out_info).unwrap();
        assert!(f.plane_data(0).unwrap()[..8].iter().all(|&y| y == 100));
        let uv = &f.plane_data(1).unwrap()[..8];
        assert_eq!(
            uv,
            &[50, 200, 50, 200, 50, 200, 50, 200],
            "U then V, interleaved"
        );
    }
}
