//! Pre-generated raw frames, so that producing pixels never limits a run.

use anyhow::{anyhow, Context, Result};
use gst::prelude::*;

/// Formats the benchmark feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Bgrx,
    Nv12,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Bgrx, Format::Nv12];

    pub fn name(self) -> &'static str {
        match self {
            Format::Bgrx => "BGRx",
            Format::Nv12 => "NV12",
        }
    }

    pub fn wire(self) -> hxfr::WireFormat {
        match self {
            Format::Bgrx => hxfr::WireFormat::Bgra,
            Format::Nv12 => hxfr::WireFormat::Nv12,
        }
    }

    /// Tightly packed size, the size GStreamer gives these frames.
    pub fn frame_bytes(self, width: u32, height: u32) -> usize {
        let w = self.wire();
        w.frame_bytes(height, w.min_stride(width) as u32) as usize
    }

    pub fn caps(self, width: u32, height: u32) -> gst::Caps {
        gst::Caps::builder("video/x-raw")
            .field("format", self.name())
            .field("width", width as i32)
            .field("height", height as i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .build()
    }
}

/// `count` distinct frames of a moving SMPTE pattern: content an encoder has
/// to work on a little (motion everywhere), identical from run to run.
pub struct Frames {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub caps: gst::Caps,
    pub buffers: Vec<gst::Buffer>,
}

pub const PATTERN: &str = "videotestsrc pattern=smpte horizontal-speed=8";

impl Frames {
    pub fn generate(format: Format, width: u32, height: u32, count: usize) -> Result<Frames> {
        let caps = format.caps(width, height);
        let desc = format!(
            "{PATTERN} num-buffers={count} ! capsfilter name=caps ! appsink name=sink sync=false"
        );
        let pipeline = gst::parse::launch(&desc)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("not a pipeline"))?;
        pipeline
            .by_name("caps")
            .unwrap()
            .set_property("caps", &caps);
        let sink = pipeline
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .map_err(|_| anyhow!("not an appsink"))?;
        pipeline.set_state(gst::State::Playing)?;
        let mut buffers = Vec::with_capacity(count);
        while let Ok(sample) = sink.pull_sample() {
            let buf = sample.buffer_owned().context("sample without buffer")?;
            // Our own copy: videotestsrc's buffers come from a pool we stop.
            let map = buf.map_readable()?;
            buffers.push(gst::Buffer::from_slice(map.as_slice().to_vec()));
        }
        pipeline.set_state(gst::State::Null)?;
        if buffers.len() != count {
            return Err(anyhow!(
                "videotestsrc produced {} of {count} frames",
                buffers.len()
            ));
        }
        let want = format.frame_bytes(width, height);
        if buffers[0].size() != want {
            return Err(anyhow!(
                "{} {width}x{height}: frame of {} bytes, expected {want}",
                format.name(),
                buffers[0].size()
            ));
        }
        Ok(Frames {
            format,
            width,
            height,
            caps,
            buffers,
        })
    }

    pub fn frame_bytes(&self) -> usize {
        self.buffers[0].size()
    }
}
