//! Capturing raw frames and H.264 access units from appsinks, decoding
//! H.264 with `avdec_h264`, and comparing frames by PSNR.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_video::prelude::*;

/// A decoded or reference frame, converted to tightly packed I420.
#[derive(Clone)]
pub struct Frame {
    /// Buffer PTS, as the appsink received it.
    pub pts: Option<gst::ClockTime>,
    /// PTS as running time in the appsink's segment. Compare this one: an
    /// encoder may shift PTS and segment together (x264enc adds 1000 h).
    pub running_time: Option<gst::ClockTime>,
    pub width: u32,
    pub height: u32,
    /// Y, U, V, each `comp_width × comp_height` bytes, no padding.
    pub planes: [Vec<u8>; 3],
}

impl Frame {
    fn from_sample(sample: &gst::Sample) -> Frame {
        let caps = sample.caps().expect("sample without caps");
        let info = gst_video::VideoInfo::from_caps(caps).expect("raw video caps");
        assert_eq!(
            info.format(),
            gst_video::VideoFormat::I420,
            "frame capture expects I420 (put videoconvert ! video/x-raw,format=I420 before the appsink)"
        );
        let buffer = sample.buffer_owned().expect("sample without buffer");
        let pts = buffer.pts();
        let running_time = sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>())
            .and_then(|s| s.to_running_time(pts));
        let frame =
            gst_video::VideoFrame::from_buffer_readable(buffer, &info).expect("map video frame");
        let planes = std::array::from_fn(|i| {
            let w = info.comp_width(i as u8) as usize;
            let h = info.comp_height(i as u8) as usize;
            let stride = frame.plane_stride()[i] as usize;
            let data = frame.plane_data(i as u32).expect("plane data");
            let mut out = Vec::with_capacity(w * h);
            for row in 0..h {
                out.extend_from_slice(&data[row * stride..row * stride + w]);
            }
            out
        });
        Frame {
            pts,
            running_time,
            width: info.width(),
            height: info.height(),
            planes,
        }
    }
}

/// PSNR in dB of two equally sized 8-bit planes (100 dB when identical).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "PSNR of planes of different sizes");
    if a.is_empty() {
        return 100.0;
    }
    let sse: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as i64 - y as i64;
            (d * d) as u64
        })
        .sum();
    if sse == 0 {
        return 100.0;
    }
    let mse = sse as f64 / a.len() as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// PSNR of the Y, U and V planes of two frames of equal size.
///
/// With an odd width or height, the last chroma column or row covers a single
/// luma sample, and H.264 can only crop in steps of two luma samples: its
/// value depends on how the encoder padded the picture, so it is left out of
/// the chroma comparison. The luma plane is always compared in full.
pub fn frame_psnr(a: &Frame, b: &Frame) -> [f64; 3] {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "comparing frames of different sizes"
    );
    let full_w = a.width.div_ceil(2) as usize;
    let (cw, ch) = ((a.width / 2) as usize, (a.height / 2) as usize);
    let chroma = |p: &[u8]| -> Vec<u8> {
        p.chunks(full_w)
            .take(ch)
            .flat_map(|row| &row[..cw])
            .copied()
            .collect()
    };
    [
        psnr(&a.planes[0], &b.planes[0]),
        psnr(&chroma(&a.planes[1]), &chroma(&b.planes[1])),
        psnr(&chroma(&a.planes[2]), &chroma(&b.planes[2])),
    ]
}

/// Frames collected by an appsink (its caps must be I420).
#[derive(Clone, Default)]
pub struct FrameCollector {
    frames: Arc<Mutex<Vec<Frame>>>,
}

impl FrameCollector {
    /// Attach to the appsink named `name` in `bin`.
    pub fn attach(bin: &impl IsA<gst::Bin>, name: &str) -> FrameCollector {
        let sink = bin
            .by_name(name)
            .unwrap_or_else(|| panic!("no element named {name}"))
            .downcast::<gst_app::AppSink>()
            .unwrap_or_else(|_| panic!("{name} is not an appsink"));
        let c = FrameCollector::default();
        let frames = c.frames.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    frames.lock().unwrap().push(Frame::from_sample(&sample));
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        c
    }

    pub fn frames(&self) -> Vec<Frame> {
        self.frames.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.frames.lock().unwrap().len()
    }
}

/// One encoded access unit as it left the pipeline.
#[derive(Clone, Debug)]
pub struct AccessUnit {
    pub pts: Option<gst::ClockTime>,
    pub data: Vec<u8>,
    /// When the appsink received it.
    pub arrived: Instant,
    /// The buffer was not flagged DELTA_UNIT.
    pub keyframe_flag: bool,
}

impl AccessUnit {
    pub fn has_idr(&self) -> bool {
        hxfr::nal::has_idr(&self.data)
    }
}

/// Access units collected by an appsink, plus the caps it saw.
#[derive(Clone, Default)]
pub struct AuCollector {
    aus: Arc<Mutex<Vec<AccessUnit>>>,
    caps: Arc<Mutex<Option<gst::Caps>>>,
}

impl AuCollector {
    pub fn attach(bin: &impl IsA<gst::Bin>, name: &str) -> AuCollector {
        let sink = bin
            .by_name(name)
            .unwrap_or_else(|| panic!("no element named {name}"))
            .downcast::<gst_app::AppSink>()
            .unwrap_or_else(|_| panic!("{name} is not an appsink"));
        let c = AuCollector::default();
        let (aus, caps) = (c.aus.clone(), c.caps.clone());
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let arrived = Instant::now();
                    if let Some(c) = sample.caps() {
                        *caps.lock().unwrap() = Some(c.to_owned());
                    }
                    let buffer = sample.buffer().expect("sample without buffer");
                    let map = buffer.map_readable().expect("map AU");
                    aus.lock().unwrap().push(AccessUnit {
                        pts: buffer.pts(),
                        data: map.as_slice().to_vec(),
                        arrived,
                        keyframe_flag: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                    });
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        c
    }

    pub fn aus(&self) -> Vec<AccessUnit> {
        self.aus.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.aus.lock().unwrap().len()
    }

    pub fn caps(&self) -> Option<gst::Caps> {
        self.caps.lock().unwrap().clone()
    }

    /// Waits (20 ms at a time) until an access unit with a PTS of `secs`
    /// seconds or later has come out, or until `deadline`; returns the last
    /// PTS in seconds. A live source stamps frames with the running time,
    /// so these are (about) seconds since PLAYING.
    pub fn wait_for_pts(&self, secs: f64, deadline: Instant) -> f64 {
        while last_pts_secs(&self.aus()) < secs && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        last_pts_secs(&self.aus())
    }
}

/// The PTS of the last access unit in seconds (0 before any).
pub fn last_pts_secs(aus: &[AccessUnit]) -> f64 {
    aus.last()
        .and_then(|a| a.pts)
        .map_or(0.0, |p| p.nseconds() as f64 / 1e9)
}

/// kbit/s of the access units whose PTS lies in `[from, to)` seconds.
pub fn kbps(aus: &[AccessUnit], from: f64, to: f64) -> f64 {
    let bytes: usize = aus
        .iter()
        .filter(|a| {
            a.pts
                .is_some_and(|p| (from..to).contains(&(p.nseconds() as f64 / 1e9)))
        })
        .map(|a| a.data.len())
        .sum();
    bytes as f64 * 8.0 / 1000.0 / (to - from)
}

/// Decode Annex-B access units with `avdec_h264` (through `h264parse`), one
/// I420 frame per decodable AU. Bounded in time.
pub fn decode_annexb(aus: &[AccessUnit]) -> Vec<Frame> {
    let pipeline = gst::parse::launch(
        "appsrc name=src format=time \
           caps=video/x-h264,stream-format=byte-stream,alignment=au ! \
         h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420 ! \
         appsink name=out sync=false",
    )
    .expect("decode pipeline")
    .downcast::<gst::Pipeline>()
    .unwrap();
    let out = FrameCollector::attach(&pipeline, "out");
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_max_bytes(0); // unlimited queue: everything is pushed up front
    pipeline
        .set_state(gst::State::Playing)
        .expect("decode pipeline to PLAYING");
    for au in aus {
        let mut buffer = gst::Buffer::from_slice(au.data.clone());
        buffer.get_mut().unwrap().set_pts(au.pts);
        src.push_buffer(buffer).expect("push AU into decoder");
    }
    src.end_of_stream().expect("appsrc EOS");
    let result = super::pipeline::wait_eos(&pipeline, Duration::from_secs(60));
    super::pipeline::shutdown(&pipeline);
    if let Err(e) = result {
        panic!("decoding {} access units failed: {e}", aus.len());
    }
    out.frames()
}
