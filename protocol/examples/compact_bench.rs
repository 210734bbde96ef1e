//! Measures the compact frame codec on 1080p content: bytes on the wire
//! against raw bytes, and the guest's CPU time per frame (compare, encode
//! and write into a Unix socket) next to legacy mode (write the whole
//! frame), plus the host's cost to apply a COMPACT_FRAME.
//!
//! With `link`, frames are instead paced at 60 fps through a proxy that caps
//! the link at 150 MB/s, and the frames per second that get through are
//! counted, legacy against compact.
//!
//! ```sh
//! cargo run --release -p vsockenc-protocol --example compact_bench [frames]
//! cargo run --release -p vsockenc-protocol --example compact_bench link [seconds]
//! ```

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use hxfr::compact::{self, CompactEncoder, Compression, Delta, Frame};
use hxfr::ext::ExtMessage;
use hxfr::layout::{FrameLayout, WireFormat};
use hxfr::write::write_frame_request;
use hxfr::{Decoded, Decoder, FrameRequest, Limits};

const W: usize = 1920;
const H: usize = 1080;

/// A BGRx canvas the scenes draw into; NV12 is derived from it.
struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn wallpaper() -> Canvas {
        let mut px = vec![0u8; W * H * 4];
        for y in 0..H {
            for x in 0..W {
                let i = (y * W + x) * 4;
                px[i] = (x / 8) as u8;
                px[i + 1] = (y / 5) as u8;
                px[i + 2] = ((x + y) / 16) as u8;
                px[i + 3] = 255;
            }
        }
        Canvas { px }
    }

    fn rect(
        &mut self,
        x0: usize,
        y0: usize,
        w: usize,
        h: usize,
        f: impl Fn(usize, usize) -> [u8; 3],
    ) {
        for y in y0..(y0 + h).min(H) {
            for x in x0..(x0 + w).min(W) {
                let i = (y * W + x) * 4;
                let c = f(x - x0, y - y0);
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    fn nv12(&self) -> Vec<u8> {
        let mut out = vec![0u8; W * H * 3 / 2];
        for y in 0..H {
            for x in 0..W {
                let i = (y * W + x) * 4;
                let (b, g, r) = (
                    self.px[i] as u32,
                    self.px[i + 1] as u32,
                    self.px[i + 2] as u32,
                );
                out[y * W + x] = ((r + 2 * g + b) / 4) as u8;
            }
        }
        for y in 0..H / 2 {
            for x in 0..W / 2 {
                let i = (2 * y * W + 2 * x) * 4;
                let (b, r) = (self.px[i] as u32, self.px[i + 2] as u32);
                out[W * H + y * W + 2 * x] = (128 + b / 2 - r / 4) as u8;
                out[W * H + y * W + 2 * x + 1] = (128 + r / 2 - b / 4) as u8;
            }
        }
        out
    }
}

fn text_like(x: usize, y: usize) -> [u8; 3] {
    if (x % 9 < 6)
        && (y % 18 < 13)
        && !(x / 9 + y / 18).is_multiple_of(7)
        && ((x * 7 + y * 3) % 5 < 2)
    {
        [20, 20, 20]
    } else {
        [240, 240, 236]
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Frame `n` of a scene, as BGRx.
fn scene(name: &str, n: usize, rng: &mut Rng) -> Canvas {
    let mut c = Canvas::wallpaper();
    match name {
        "static" => {}
        "typing" => {
            // An editor window; one more character per frame, plus a caret.
            c.rect(200, 150, 1200, 700, text_like);
            let chars = n;
            let (cx, cy) = (210 + (chars % 120) * 9, 160 + (chars / 120) * 18);
            c.rect(cx, cy, 9, 18, |_, _| [0, 0, 0]);
            c.rect(cx + 9, cy, 2, 18, |_, _| [0, 0, 255]);
        }
        "desktop" => {
            // A window dragged across a still desktop, and a cursor.
            c.rect(100, 80, 800, 600, text_like);
            let (wx, wy) = (300 + (n * 6) % 900, 200 + (n * 3) % 500);
            c.rect(wx, wy, 480, 320, |x, y| {
                if y < 24 {
                    [90, 60, 30]
                } else {
                    text_like(x, y)
                }
            });
            c.rect(wx + 240, wy + 160, 16, 24, |_, _| [255, 255, 255]);
        }
        "gradient" => {
            // Every pixel changes, smoothly (full motion, compressible).
            for y in 0..H {
                for x in 0..W {
                    let i = (y * W + x) * 4;
                    c.px[i] = (x + n * 3) as u8;
                    c.px[i + 1] = (y + n * 2) as u8;
                    c.px[i + 2] = (x / 2 + y / 2 + n) as u8;
                }
            }
        }
        "ball+noise" => {
            // videotestsrc pattern=ball plus noise: everything changes.
            for p in c.px.iter_mut() {
                *p = (rng.next() >> 56) as u8;
            }
            let (bx, by) = (200 + (n * 17) % 1400, 200 + (n * 11) % 600);
            c.rect(bx, by, 120, 120, |_, _| [255, 255, 255]);
        }
        _ => unreachable!(),
    }
    c
}

struct Sink {
    stream: UnixStream,
    reader: std::thread::JoinHandle<u64>,
}

fn sink() -> Sink {
    let (a, mut b) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    Sink { stream: a, reader }
}

struct Row {
    scene: &'static str,
    format: WireFormat,
    raw: u64,
    wire: u64,
    legacy_cpu: Duration,
    compact_cpu: Duration,
    encode_only: Duration,
    apply: Duration,
    frames: usize,
    compact_frames: usize,
}

// Frame i and its predecessor are both needed, so indices read best.
#[allow(clippy::needless_range_loop)]
fn run(scene_name: &'static str, format: WireFormat, frames: usize) -> Row {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let pics: Vec<Vec<u8>> = (0..frames + 1)
        .map(|n| {
            let c = scene(scene_name, n, &mut rng);
            match format {
                WireFormat::Nv12 => c.nv12(),
                _ => c.px,
            }
        })
        .collect();
    let stride = format.min_stride(W as u32) as u32;
    let layout = FrameLayout::new(format, W as u32, H as u32, stride, pics[0].len()).unwrap();
    let frame = |i: usize| Frame::from_wire(&layout, &pics[i]).unwrap();
    let req = |i: usize| FrameRequest {
        width: W as u32,
        height: H as u32,
        format: format.fourcc(),
        stride,
        pts: i as i64,
        duration: 16_666_667,
        ..Default::default()
    };

    // Legacy and compact alternate frame by frame, each into its own
    // socket, so both see the same machine load; per-frame costs are the
    // writing thread's CPU time (user + system), and medians are reported.
    let mut legacy = sink();
    let mut compact = sink();
    let tile = tile_size();
    let mut enc = CompactEncoder::new(tile, tile, Compression::Auto);
    let mut wire = 0u64;
    let mut compact_frames = 0;
    let mut messages = Vec::new();
    let (mut t_legacy, mut t_compact, mut t_encode) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=frames {
        let t = cpu_now();
        write_frame_request(&mut legacy.stream, 1, &req(i), &[&pics[i]]).unwrap();
        t_legacy.push(cpu_now() - t);

        let t = cpu_now();
        let (prev, cur) = (frame(i - 1), frame(i));
        let delta = enc.encode(&prev, &cur, &req(i), i as u32 - 1, 1);
        let encoded = cpu_now() - t;
        match delta {
            Delta::Compact(mut m) => {
                wire += m.write_to(&mut compact.stream).unwrap() as u64;
                compact_frames += 1;
                if messages.len() < 9 {
                    messages.push((i, m.to_vec()));
                }
            }
            Delta::Full(_) => {
                wire += write_frame_request(&mut compact.stream, 1, &req(i), &[&pics[i]]).unwrap()
                    as u64;
            }
        }
        t_compact.push(cpu_now() - t);
        t_encode.push(encoded);
    }
    for s in [legacy, compact] {
        drop(s.stream);
        s.reader.join().unwrap();
    }

    // Host: apply COMPACT_FRAMEs onto their reference.
    let mut t_apply = Vec::new();
    let mut scratch = Vec::new();
    for (i, bytes) in &messages {
        let mut reference = pics[i - 1].clone();
        let mut dec = Decoder::with_extensions(Limits::default());
        let Some(Decoded::Ext(_, ExtMessage::CompactFrame(cf))) =
            dec.decode_ext(&mut &bytes[..]).unwrap()
        else {
            panic!()
        };
        let t = cpu_now();
        compact::apply(&mut reference, &layout, &cf, &mut scratch).unwrap();
        t_apply.push(cpu_now() - t);
        assert_eq!(
            compact::checksum(&Frame::from_wire(&layout, &reference).unwrap()),
            compact::checksum(&frame(*i)),
            "rebuilt frame differs"
        );
    }

    Row {
        scene: scene_name,
        format,
        raw: (layout.size as u64 + 56) * frames as u64,
        wire,
        legacy_cpu: median(t_legacy),
        compact_cpu: median(t_compact),
        encode_only: median(t_encode),
        apply: median(t_apply),
        frames,
        compact_frames,
    }
}

/// CPU time of the calling thread (user + system).
fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("link") {
        return link_main();
    }
    let frames: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("frames"))
        .unwrap_or(60);
    println!(
        "1080p, {frames} frames per row, {t}x{t} tiles, compression auto. Median CPU time per frame of the sending thread (user+system): legacy = write the whole frame into a Unix socket; compact = compare + encode + write what it decided.",
        t = tile_size()
    );
    println!(
        "| scene | format | wire/raw | compact frames | legacy CPU µs | compact CPU µs | compact/legacy | compare+encode µs | host apply µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for scene in ["static", "typing", "desktop", "gradient", "ball+noise"] {
        for format in [WireFormat::Bgra, WireFormat::Nv12] {
            let r = run(scene, format, frames);
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "| {} | {} | {:.2}% | {}/{} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} |",
                r.scene,
                if r.format == WireFormat::Nv12 {
                    "NV12"
                } else {
                    "BGRx"
                },
                100.0 * r.wire as f64 / r.raw as f64,
                r.compact_frames,
                r.frames,
                us(r.legacy_cpu),
                us(r.compact_cpu),
                r.compact_cpu.as_secs_f64() / r.legacy_cpu.as_secs_f64(),
                us(r.encode_only),
                us(r.apply),
            );
        }
    }
}

/// Tile edge from `COMPACT_TILE` (default 64).
fn tile_size() -> u16 {
    std::env::var("COMPACT_TILE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(compact::DEFAULT_TILE_SIZE)
}

/// Link emulation: bytes per second the proxy lets through.
const LINK_RATE: f64 = 150e6;
/// Frames per second the sender offers.
const OFFERED_FPS: f64 = 60.0;

/// Copies `from` to `to`, never faster than `rate` bytes per second.
fn rate_limited_proxy(mut from: UnixStream, mut to: UnixStream, rate: f64) {
    use std::io::Write;
    let mut buf = vec![0u8; 64 << 10];
    let start = std::time::Instant::now();
    let mut sent = 0f64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        sent += n as f64;
        let due = Duration::from_secs_f64(sent / rate);
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// Runs `secs` seconds of 1080p `scene` through the capped link; returns
/// (frames delivered per second, mean bytes per frame).
fn link_run(
    scene_name: &'static str,
    format: WireFormat,
    compact_mode: bool,
    secs: f64,
) -> (f64, f64) {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let distinct = 60;
    let pics: Vec<Vec<u8>> = (0..distinct)
        .map(|n| {
            let c = scene(scene_name, n, &mut rng);
            match format {
                WireFormat::Nv12 => c.nv12(),
                _ => c.px,
            }
        })
        .collect();
    let stride = format.min_stride(W as u32) as u32;
    let layout = FrameLayout::new(format, W as u32, H as u32, stride, pics[0].len()).unwrap();
    let (mut tx, proxy_in) = UnixStream::pair().unwrap();
    let (proxy_out, mut rx) = UnixStream::pair().unwrap();
    std::thread::spawn(move || rate_limited_proxy(proxy_in, proxy_out, LINK_RATE));
    let receiver = std::thread::spawn(move || {
        let mut dec = Decoder::with_extensions(Limits::default());
        let mut arrivals = Vec::new();
        while let Ok(Some(_)) = dec.read_from_ext(&mut rx) {
            arrivals.push(std::time::Instant::now());
        }
        arrivals
    });
    let mut enc = CompactEncoder::new(tile_size(), tile_size(), Compression::Auto);
    let start = std::time::Instant::now();
    let mut bytes = 0u64;
    let mut i = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        let due = Duration::from_secs_f64(i as f64 / OFFERED_FPS);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let cur_px = &pics[i % distinct];
        let req = FrameRequest {
            width: W as u32,
            height: H as u32,
            format: format.fourcc(),
            stride,
            pts: i as i64,
            duration: 16_666_667,
            ..Default::default()
        };
        let mut sent = false;
        if compact_mode && i > 0 {
            let prev = Frame::from_wire(&layout, &pics[(i - 1) % distinct]).unwrap();
            let cur = Frame::from_wire(&layout, cur_px).unwrap();
            if let Delta::Compact(mut m) = enc.encode(&prev, &cur, &req, i as u32 - 1, 1) {
                bytes += m.write_to(&mut tx).unwrap() as u64;
                sent = true;
            }
        }
        if !sent {
            bytes += write_frame_request(&mut tx, 1, &req, &[cur_px]).unwrap() as u64;
        }
        i += 1;
    }
    drop(tx);
    let arrivals = receiver.join().unwrap();
    // Frames that arrived within the run's duration.
    let end = start + Duration::from_secs_f64(secs);
    let delivered = arrivals.iter().filter(|t| **t <= end).count();
    (delivered as f64 / secs, bytes as f64 / i as f64)
}

fn link_main() {
    let secs: f64 = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("seconds"))
        .unwrap_or(4.0);
    println!(
        "1080p desktop-like content offered at {OFFERED_FPS} fps through a link capped at {} MB/s, {secs} s per row",
        LINK_RATE / 1e6
    );
    println!("| scene | format | mode | bytes/frame | fps delivered |");
    println!("|---|---|---|---|---|");
    for scene in ["desktop", "typing"] {
        for format in [WireFormat::Nv12, WireFormat::Bgra] {
            for compact_mode in [false, true] {
                let (fps, per_frame) = link_run(scene, format, compact_mode, secs);
                println!(
                    "| {scene} | {} | {} | {:.0} | {:.1} |",
                    if format == WireFormat::Nv12 {
                        "NV12"
                    } else {
                        "BGRx"
                    },
                    if compact_mode { "compact" } else { "legacy" },
                    per_frame,
                    fps
                );
            }
        }
    }
}
