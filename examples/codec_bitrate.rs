//! Bitrate at equal quality: how much bitrate `vsockh265enc` and
//! `vsockav1enc` need for the PSNR `vsockenc` (H.264) reaches, on
//! desktop-like content and on full motion, through the real
//! `vsockenc-host` and the encoders it picks (printed), in one run.
//!
//! Each content is encoded by each element at a ladder of bitrates (CBR,
//! `keyframe-interval=0`: one keyframe, then the encoder's own GOP), the
//! stream is decoded (`avdec_h264`, `avdec_h265`, `av1dec`) and compared
//! with the input frame by frame (luma PSNR; the bitrate is what came out,
//! not the target). For each H.264 point, the bitrate another codec needs
//! for the same PSNR is read off that codec's own curve (linear in PSNR
//! against log bitrate between the two ladder points around it; points
//! outside its measured range are not extrapolated). The summary is the
//! geometric mean of those ratios.
//!
//! Content, generated here (identical every run, I420):
//! * `desktop`: windows of text-like glyphs on flat backgrounds, a
//!   terminal that scrolls a line every 10 frames, a line being typed, a
//!   moving mouse pointer: sharp edges, little motion;
//! * `motion`: a multi-octave noise landscape (down to 2-pixel detail)
//!   panned 6 px right and 2 px down per frame: every pixel moves, every
//!   frame.
//!
//! ```sh
//! scripts/bench-codecs.sh                      # release build, full run, docs/codec-bitrate.json
//! cargo run --release --example codec_bitrate -- --frames 30 --width 320 --height 180
//! ```
//!
//! Not part of the test suite: x265 and libaom at several bitrates take
//! minutes on a small machine.

#[path = "bench/daemon.rs"]
#[allow(dead_code)]
mod daemon;
#[path = "bench/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;
use hxfr::Codec;

const CODECS: [Codec; 3] = [Codec::H264, Codec::H265, Codec::Av1];

struct Options {
    width: u32,
    height: u32,
    frames: usize,
    contents: Vec<Content>,
    json: Option<PathBuf>,
    host_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Content {
    Desktop,
    Motion,
}

impl Content {
    fn name(self) -> &'static str {
        match self {
            Content::Desktop => "desktop",
            Content::Motion => "motion",
        }
    }

    /// Target bitrates in kbit/s for 640x360 at 30 fps (scaled by area).
    /// The same for every codec; the lowest is there so that the more
    /// efficient codecs' curves reach down to H.264's lowest PSNR.
    fn ladder(self) -> [u32; 5] {
        match self {
            Content::Desktop => [100, 150, 225, 350, 550],
            Content::Motion => [250, 500, 1000, 2000, 4000],
        }
    }
}

const USAGE: &str = "usage: codec_bitrate [--width W] [--height H] [--frames N] \
[--contents desktop,motion] [--json PATH] [--host-bin PATH]\n";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options> {
    let mut o = Options {
        width: 640,
        height: 360,
        frames: 300,
        contents: vec![Content::Desktop, Content::Motion],
        json: None,
        host_bin: None,
    };
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--width" => o.width = value()?.parse()?,
            "--height" => o.height = value()?.parse()?,
            "--frames" => o.frames = value()?.parse()?,
            "--json" => o.json = Some(value()?.into()),
            "--host-bin" => o.host_bin = Some(value()?.into()),
            "--contents" => {
                o.contents = value()?
                    .split(',')
                    .map(|c| match c {
                        "desktop" => Ok(Content::Desktop),
                        "motion" => Ok(Content::Motion),
                        other => Err(anyhow!("unknown content {other:?} (desktop, motion)")),
                    })
                    .collect::<Result<_>>()?
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !o.width.is_multiple_of(2)
        || !o.height.is_multiple_of(2)
        || o.width < 64
        || o.height < 64
        || o.frames < 10
    {
        bail!("--width/--height must be even and at least 64, --frames at least 10");
    }
    Ok(o)
}

/// An I420 frame, tightly packed.
#[derive(Clone)]
struct Frame {
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl Frame {
    fn new(w: usize, h: usize, y: u8, u: u8, v: u8) -> Frame {
        Frame {
            y: vec![y; w * h],
            u: vec![u; w * h / 4],
            v: vec![v; w * h / 4],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        [&self.y[..], &self.u[..], &self.v[..]].concat()
    }
}

/// xorshift64*: the same pseudo-random content in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A filled rectangle in all three planes (chroma at half resolution).
#[allow(clippy::too_many_arguments)]
fn fill(
    f: &mut Frame,
    w: usize,
    h: usize,
    x0: usize,
    y0: usize,
    rw: usize,
    rh: usize,
    yuv: (u8, u8, u8),
) {
    for y in y0.min(h)..(y0 + rh).min(h) {
        f.y[y * w + x0.min(w)..y * w + (x0 + rw).min(w)].fill(yuv.0);
    }
    let (cw, ch) = (w / 2, h / 2);
    for y in (y0 / 2).min(ch)..((y0 + rh) / 2).min(ch) {
        f.u[y * cw + (x0 / 2).min(cw)..y * cw + ((x0 + rw) / 2).min(cw)].fill(yuv.1);
        f.v[y * cw + (x0 / 2).min(cw)..y * cw + ((x0 + rw) / 2).min(cw)].fill(yuv.2);
    }
}

/// A 5x7 glyph-like pattern of `seed` with its top left at (x, y), luma
/// only (text is grey on grey).
fn glyph(f: &mut Frame, w: usize, h: usize, x: usize, y: usize, seed: u64, ink: u8) {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let bits = r.next();
    for gy in 0..7 {
        for gx in 0..5 {
            if bits >> (gy * 5 + gx) & 1 == 1 && x + gx < w && y + gy < h {
                f.y[(y + gy) * w + x + gx] = ink;
            }
        }
    }
}

/// A line of text: `n` glyphs of a line-specific sequence.
#[allow(clippy::too_many_arguments)]
fn text_line(f: &mut Frame, w: usize, h: usize, x: usize, y: usize, line: u64, n: usize, ink: u8) {
    for i in 0..n {
        // Spaces between words.
        if (line.wrapping_mul(31) + i as u64 * 7).is_multiple_of(9) {
            continue;
        }
        glyph(f, w, h, x + i * 6, y, line * 1000 + i as u64, ink);
    }
}

fn desktop(w: usize, h: usize, frames: usize) -> Vec<Frame> {
    let mut base = Frame::new(w, h, 110, 140, 120); // a bluish-grey desktop
                                                    // Editor window: title bar and white page with text.
    let (ex, ey, ew, eh) = (w / 20, h / 12, w * 11 / 20, h * 3 / 4);
    fill(&mut base, w, h, ex, ey, ew, 14, (70, 160, 110));
    fill(&mut base, w, h, ex, ey + 14, ew, eh - 14, (235, 128, 128));
    let cols = (ew - 12) / 6;
    let lines = (eh - 24) / 11;
    for l in 0..lines.saturating_sub(2) {
        text_line(
            &mut base,
            w,
            h,
            ex + 6,
            ey + 20 + l * 11,
            l as u64,
            cols.saturating_sub((l * 7) % 13),
            40,
        );
    }
    // Terminal window.
    let (tx, ty, tw, th) = (w * 5 / 8, h / 6, w * 7 / 20, h * 2 / 3);
    fill(&mut base, w, h, tx, ty, tw, 14, (90, 128, 128));
    let tcols = (tw - 8) / 6;
    let tlines = (th - 20) / 10;
    let mut out = Vec::with_capacity(frames);
    for i in 0..frames {
        let mut f = base.clone();
        // The terminal scrolls a line every 10 frames.
        fill(&mut f, w, h, tx, ty + 14, tw, th - 14, (20, 128, 128));
        let first = i / 10;
        for l in 0..tlines {
            let n = (first + l) as u64;
            text_line(
                &mut f,
                w,
                h,
                tx + 4,
                ty + 18 + l * 10,
                5000 + n,
                tcols.saturating_sub((n as usize * 5) % 11),
                200,
            );
        }
        // A line being typed in the editor: one more glyph every 2 frames.
        let typed = (i / 2) % cols.max(1);
        let ly = ey + 20 + lines.saturating_sub(2) * 11;
        text_line(&mut f, w, h, ex + 6, ly, 777, typed, 40);
        fill(
            &mut f,
            w,
            h,
            ex + 6 + typed * 6,
            ly - 1,
            1,
            9,
            (0, 128, 128),
        ); // caret
           // The pointer moves along a slow curve.
        let t = i as f64 / frames as f64 * std::f64::consts::TAU;
        let px = (w as f64 * (0.5 + 0.35 * t.cos())) as usize;
        let py = (h as f64 * (0.5 + 0.3 * (2.0 * t).sin())) as usize;
        for r in 0..12 {
            fill(&mut f, w, h, px, py + r, r / 2 + 1, 1, (250, 128, 128));
        }
        out.push(f);
    }
    out
}

/// Smooth value noise of several octaves, as luma and two chroma fields.
fn landscape(w: usize, h: usize) -> Frame {
    let lattice = |seed: u64, cell: usize| {
        let (gw, gh) = (w / cell + 2, h / cell + 2);
        let mut r = Rng(seed);
        let grid: Vec<f64> = (0..gw * gh)
            .map(|_| (r.next() >> 11) as f64 / (1u64 << 53) as f64)
            .collect();
        move |x: usize, y: usize| {
            let (fx, fy) = (x as f64 / cell as f64, y as f64 / cell as f64);
            let (ix, iy) = (fx as usize, fy as usize);
            let (tx, ty) = (fx - ix as f64, fy - iy as f64);
            let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
            let g = |a: usize, b: usize| grid[b * gw + a];
            let top = g(ix, iy) * (1.0 - sx) + g(ix + 1, iy) * sx;
            let bottom = g(ix, iy + 1) * (1.0 - sx) + g(ix + 1, iy + 1) * sx;
            top * (1.0 - sy) + bottom * sy
        }
    };
    let octaves: Vec<_> = [(96, 0.45), (32, 0.2), (12, 0.15), (4, 0.12), (2, 0.08)]
        .iter()
        .enumerate()
        .map(|(i, &(cell, amp))| (lattice(11 + i as u64, cell), amp))
        .collect();
    let hue = lattice(99, 160);
    let sat = lattice(98, 200);
    let mut f = Frame::new(w, h, 0, 128, 128);
    for y in 0..h {
        for x in 0..w {
            let v: f64 = octaves.iter().map(|(o, a)| o(x, y) * a).sum();
            f.y[y * w + x] = (16.0 + v * 219.0).clamp(0.0, 255.0) as u8;
        }
    }
    for y in 0..h / 2 {
        for x in 0..w / 2 {
            f.u[y * (w / 2) + x] = (96.0 + hue(2 * x, 2 * y) * 64.0) as u8;
            f.v[y * (w / 2) + x] = (96.0 + sat(2 * x, 2 * y) * 64.0) as u8;
        }
    }
    f
}

fn motion(w: usize, h: usize, frames: usize) -> Vec<Frame> {
    let (bw, bh) = (w + 6 * frames + 2, h + 2 * frames + 2);
    let big = landscape(bw, bh);
    (0..frames)
        .map(|i| {
            let (ox, oy) = (6 * i, 2 * i);
            let mut f = Frame::new(w, h, 0, 128, 128);
            for y in 0..h {
                f.y[y * w..(y + 1) * w]
                    .copy_from_slice(&big.y[(y + oy) * bw + ox..(y + oy) * bw + ox + w]);
            }
            let (cw, bcw) = (w / 2, bw / 2);
            for y in 0..h / 2 {
                let src = (y + oy / 2) * bcw + ox / 2;
                f.u[y * cw..(y + 1) * cw].copy_from_slice(&big.u[src..src + cw]);
                f.v[y * cw..(y + 1) * cw].copy_from_slice(&big.v[src..src + cw]);
            }
            f
        })
        .collect()
}

fn decoder(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => "h264parse ! avdec_h264",
        Codec::H265 => "h265parse ! avdec_h265",
        Codec::Av1 => "av1parse ! av1dec",
    }
}

fn raw_caps(w: u32, h: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", w as i32)
        .field("height", h as i32)
        .field("framerate", gst::Fraction::new(30, 1))
        .build()
}

fn frame_duration() -> gst::ClockTime {
    gst::ClockTime::from_nseconds(1_000_000_000 / 30)
}

fn run_to_eos(p: &gst::Pipeline, what: &str, timeout: Duration) -> Result<()> {
    p.set_state(gst::State::Playing)
        .with_context(|| format!("{what}: cannot start"))?;
    let bus = p.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let _ = p.set_state(gst::State::Null);
    match msg {
        None => bail!("{what}: no EOS within {timeout:?}"),
        Some(m) => match m.view() {
            gst::MessageView::Eos(_) => Ok(()),
            gst::MessageView::Error(e) => bail!(
                "{what}: {} ({})",
                e.error(),
                e.debug().map(|d| d.to_string()).unwrap_or_default()
            ),
            _ => unreachable!(),
        },
    }
}

/// Pushes `frames` into `appsrc name=src` of `p`, then EOS.
fn feed(p: &gst::Pipeline, buffers: Vec<gst::Buffer>) {
    let src = p
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let mut queue = buffers.into_iter();
    src.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| match queue.next() {
                Some(b) => {
                    let _ = src.push_buffer(b);
                }
                None => {
                    let _ = src.end_of_stream();
                }
            })
            .build(),
    );
}

/// Collects the buffers reaching `appsink name=out` of `p`.
fn collect(p: &gst::Pipeline) -> std::sync::Arc<std::sync::Mutex<Vec<gst::Buffer>>> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = p
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let o = out.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                o.lock().unwrap().push(sample.buffer_owned().unwrap());
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    out
}

struct Point {
    target_kbps: u32,
    kbps: f64,
    psnr_y: f64,
    psnr_yuv: f64,
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let mse = se / a.len() as f64;
    if mse == 0.0 {
        100.0
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Encodes `frames` with `codec` at `kbps` through the daemon on `socket`,
/// decodes the result and compares it with `frames`.
fn measure(codec: Codec, socket: &str, o: &Options, frames: &[Frame], kbps: u32) -> Result<Point> {
    let what = format!("{codec} at {kbps} kbit/s");
    let enc = gst::parse::launch(&format!(
        "appsrc name=src format=time ! {el} socket-path={socket} bitrate={kbps} \
         keyframe-interval=0 response-timeout=60000 ! appsink name=out sync=false",
        el = gstvsockenc::vsockenc::element_name(codec)
    ))?
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = enc
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&raw_caps(o.width, o.height)));
    let buffers = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut b = gst::Buffer::from_mut_slice(f.bytes());
            let m = b.get_mut().unwrap();
            m.set_pts(frame_duration() * i as u64);
            m.set_duration(frame_duration());
            b
        })
        .collect();
    feed(&enc, buffers);
    let units = collect(&enc);
    run_to_eos(&enc, &what, Duration::from_secs(600))?;
    let units = std::mem::take(&mut *units.lock().unwrap());
    if units.len() != frames.len() {
        bail!("{what}: {} units for {} frames", units.len(), frames.len());
    }
    let bytes: usize = units.iter().map(|b| b.size()).sum();
    let seconds = frames.len() as f64 / 30.0;

    let (format, alignment) = codec.stream_format();
    let dec = gst::parse::launch(&format!(
        "appsrc name=src format=time caps={media},stream-format={format},alignment={alignment} ! \
         {dec} ! videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false",
        media = codec.media_type(),
        dec = decoder(codec)
    ))?
    .downcast::<gst::Pipeline>()
    .unwrap();
    feed(&dec, units);
    let decoded = collect(&dec);
    run_to_eos(&dec, &format!("decoding {what}"), Duration::from_secs(600))?;
    let decoded = std::mem::take(&mut *decoded.lock().unwrap());
    if decoded.len() != frames.len() {
        bail!(
            "{what}: {} frames decoded of {}",
            decoded.len(),
            frames.len()
        );
    }
    let (mut sum_y, mut sum_yuv) = (0.0, 0.0);
    for (f, d) in frames.iter().zip(&decoded) {
        let map = d.map_readable()?;
        let bytes = map.as_slice();
        let (ys, cs) = (f.y.len(), f.u.len());
        if bytes.len() < ys + 2 * cs {
            bail!("{what}: a decoded frame of {} bytes", bytes.len());
        }
        let py = psnr(&f.y, &bytes[..ys]);
        let pu = psnr(&f.u, &bytes[ys..ys + cs]);
        let pv = psnr(&f.v, &bytes[ys + cs..ys + 2 * cs]);
        sum_y += py;
        sum_yuv += (6.0 * py + pu + pv) / 8.0;
    }
    let n = frames.len() as f64;
    Ok(Point {
        target_kbps: kbps,
        kbps: bytes as f64 * 8.0 / 1000.0 / seconds,
        psnr_y: sum_y / n,
        psnr_yuv: sum_yuv / n,
    })
}

/// The bitrate `curve` needs for `psnr`: linear in PSNR against log
/// bitrate between the two points around it; `None` outside the curve.
fn bitrate_for(curve: &[Point], psnr: f64) -> Option<f64> {
    let mut pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.psnr_y, p.kbps.ln())).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts.windows(2).find_map(|w| {
        let ((p0, r0), (p1, r1)) = (w[0], w[1]);
        (p0 <= psnr && psnr <= p1 && p1 > p0)
            .then(|| (r0 + (r1 - r0) * (psnr - p0) / (p1 - p0)).exp())
    })
}

fn main() -> Result<()> {
    let o = parse_args(std::env::args().skip(1))?;
    gst::init()?;
    gstvsockenc::plugin_register_static()?;
    let bin = o
        .host_bin
        .clone()
        .or_else(daemon::default_host_bin)
        .ok_or_else(|| anyhow!("no vsockenc-host binary: pass --host-bin"))?;
    let dir = std::env::temp_dir().join(format!("codec-bitrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("host.sock");
    let host = daemon::Daemon::start(&bin, &socket, dir.join("host.log"))?;
    let log = std::fs::read_to_string(&host.log).unwrap_or_default();
    let encoder_of = |codec: Codec| -> String {
        let key = match codec {
            Codec::H264 => "encoder: ".to_string(),
            other => format!("{other} guests: "),
        };
        log.lines()
            .find_map(|l| {
                l.find(&key).map(|i| {
                    l[i + key.len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("?")
                        .to_string()
                })
            })
            .unwrap_or_else(|| "?".into())
    };
    let socket = socket.to_str().context("socket path")?.to_string();
    let area = (o.width * o.height) as f64 / (640.0 * 360.0);
    let mut json = String::from("{\n");
    let _ = writeln!(
        json,
        "  \"width\": {}, \"height\": {}, \"frames\": {}, \"encoders\": {{ \"H.264\": \"{}\", \"H.265\": \"{}\", \"AV1\": \"{}\" }},",
        o.width,
        o.height,
        o.frames,
        encoder_of(Codec::H264),
        encoder_of(Codec::H265),
        encoder_of(Codec::Av1)
    );
    json.push_str("  \"contents\": [\n");
    println!(
        "{}x{}, {} frames at 30 fps; encoders: H.264 {}, H.265 {}, AV1 {} (vsockenc-host, CBR, low latency)",
        o.width,
        o.height,
        o.frames,
        encoder_of(Codec::H264),
        encoder_of(Codec::H265),
        encoder_of(Codec::Av1)
    );
    for (ci, &content) in o.contents.iter().enumerate() {
        let started = Instant::now();
        let (w, h) = (o.width as usize, o.height as usize);
        let frames = match content {
            Content::Desktop => desktop(w, h, o.frames),
            Content::Motion => motion(w, h, o.frames),
        };
        let mut curves = Vec::new();
        for codec in CODECS {
            let mut curve = Vec::new();
            for target in content.ladder() {
                let kbps = ((target as f64 * area).round() as u32).max(20);
                let p = measure(codec, &socket, &o, &frames, kbps)?;
                println!(
                    "  {:<8} {:<6} target {:>5} kbit/s: {:>7.0} kbit/s, PSNR Y {:.2} dB, YUV {:.2} dB",
                    content.name(),
                    codec.name(),
                    p.target_kbps,
                    p.kbps,
                    p.psnr_y,
                    p.psnr_yuv
                );
                curve.push(p);
            }
            curves.push((codec, curve));
        }
        println!(
            "\n{} ({:.0} s): bitrate for H.264's PSNR",
            content.name(),
            started.elapsed().as_secs_f64()
        );
        println!(
            "  {:>10} {:>9} | {:>16} | {:>16}",
            "H.264 kbps", "PSNR Y", "H.265 kbps (×)", "AV1 kbps (×)"
        );
        let h264 = &curves[0].1;
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); CODECS.len()];
        let _ = writeln!(
            json,
            "    {{ \"content\": \"{}\", \"points\": [",
            content.name()
        );
        for (pi, p) in h264.iter().enumerate() {
            let mut row = format!("  {:>10.0} {:>9.2}", p.kbps, p.psnr_y);
            let mut jrow = format!(
                "      {{ \"h264_kbps\": {:.1}, \"psnr_y\": {:.3}",
                p.kbps, p.psnr_y
            );
            for (k, (codec, curve)) in curves.iter().enumerate().skip(1) {
                match bitrate_for(curve, p.psnr_y) {
                    Some(r) => {
                        let x = r / p.kbps;
                        ratios[k].push(x);
                        let _ = write!(row, " | {:>9.0} ({:.2})", r, x);
                        let _ = write!(jrow, ", \"{}_kbps\": {:.1}", codec.name(), r);
                    }
                    None => {
                        let _ = write!(row, " | {:>16}", "out of range");
                        let _ = write!(jrow, ", \"{}_kbps\": null", codec.name());
                    }
                }
            }
            println!("{row}");
            jrow.push_str(if pi + 1 < h264.len() { " },\n" } else { " }\n" });
            json.push_str(&jrow);
        }
        json.push_str("    ], \"mean_ratio\": {");
        let mut summary = format!(
            "  {}: bitrate for equal PSNR, geometric mean over the H.264 points in range:",
            content.name()
        );
        for (k, (codec, _)) in curves.iter().enumerate().skip(1) {
            let r = &ratios[k];
            let mean = (!r.is_empty())
                .then(|| (r.iter().map(|x| x.ln()).sum::<f64>() / r.len() as f64).exp());
            match mean {
                Some(m) => {
                    let _ = write!(
                        summary,
                        " {} {:.2}× ({:+.0}%, {} points)",
                        codec.name(),
                        m,
                        (m - 1.0) * 100.0,
                        r.len()
                    );
                    let _ = write!(
                        json,
                        " \"{}\": {:.3}{}",
                        codec.name(),
                        m,
                        if k == 1 { "," } else { "" }
                    );
                }
                None => {
                    let _ = write!(summary, " {} out of range", codec.name());
                    let _ = write!(
                        json,
                        " \"{}\": null{}",
                        codec.name(),
                        if k == 1 { "," } else { "" }
                    );
                }
            }
        }
        println!("{summary}\n");
        json.push_str(" },\n      \"curves\": {");
        for (k, (codec, curve)) in curves.iter().enumerate() {
            let pts: Vec<String> = curve
                .iter()
                .map(|p| format!("[{:.1}, {:.3}, {:.3}]", p.kbps, p.psnr_y, p.psnr_yuv))
                .collect();
            let _ = write!(
                json,
                " \"{}\": [{}]{}",
                codec.name(),
                pts.join(", "),
                if k + 1 < curves.len() { "," } else { "" }
            );
        }
        json.push_str(if ci + 1 < o.contents.len() {
            " } },\n"
        } else {
            " } }\n"
        });
    }
    json.push_str("  ]\n}\n");
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(path) = &o.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
