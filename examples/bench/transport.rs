//! Section 1: the transport limit. Frame-sized FRAME_REQUESTs written with
//! `hxfr::write::write_frame_request` (what the element does) to a reader
//! thread that decodes them with `hxfr::Decoder::read_from` (what the daemon
//! does) and drops them. No encoder, no GStreamer: the most frames per second
//! this socket type can carry on this machine, for the same distinct frames
//! (cycled) that the pipeline runs send.

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use hxfr::{FrameRequest, Message};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Unix,
    Tcp,
}

impl Socket {
    pub fn name(self) -> &'static str {
        match self {
            Socket::Unix => "unix",
            Socket::Tcp => "tcp-loopback",
        }
    }
}

pub struct Limit {
    pub frames: u64,
    pub seconds: f64,
    pub fps: f64,
    pub mbytes_per_s: f64,
}

pub fn measure(
    socket: Socket,
    work_dir: &Path,
    req: FrameRequest,
    frames: &[&[u8]],
    duration: Duration,
) -> Result<Limit> {
    match socket {
        Socket::Unix => {
            let path = work_dir.join("transport.sock");
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)?;
            let w = UnixStream::connect(&path)?;
            let (r, _) = l.accept()?;
            let res = run(r, w.try_clone()?, req, frames, duration, || {
                let _ = w.shutdown(Shutdown::Write);
            });
            let _ = std::fs::remove_file(&path);
            res
        }
        Socket::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let w = TcpStream::connect(l.local_addr()?)?;
            w.set_nodelay(true)?;
            let (r, _) = l.accept()?;
            run(r, w.try_clone()?, req, frames, duration, || {
                let _ = w.shutdown(Shutdown::Write);
            })
        }
    }
}

fn run<R, W>(
    mut reader: R,
    mut writer: W,
    req: FrameRequest,
    frames: &[&[u8]],
    duration: Duration,
    close: impl FnOnce(),
) -> Result<Limit>
where
    R: std::io::Read + Send + 'static,
    W: Write,
{
    let frame_len = frames[0].len();
    let reader = std::thread::spawn(move || -> Result<(u64, Option<Instant>)> {
        let mut dec = hxfr::Decoder::default();
        let mut frames = 0u64;
        let mut last = None;
        while let Some((_, msg)) = dec.read_from(&mut reader)? {
            if let Message::FrameRequest { pixels, .. } = msg {
                std::hint::black_box(pixels);
                frames += 1;
                last = Some(Instant::now());
            }
        }
        Ok((frames, last))
    });
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration || sent < 3 {
        let r = FrameRequest {
            pts: sent as i64 * 33_333_333,
            ..req
        };
        // Cycle through the same distinct frames as the pipeline runs: one
        // frame sent over and over would stay in the CPU cache and make the
        // copy into the socket look cheaper than it is for real video.
        let pixels = frames[(sent % frames.len() as u64) as usize];
        hxfr::write::write_frame_request(&mut writer, 1, &r, &[pixels])?;
        sent += 1;
    }
    close();
    let (frames, last) = reader.join().expect("reader thread panicked")?;
    anyhow::ensure!(frames == sent, "sent {sent} frames, reader got {frames}");
    let seconds = last.map_or(0.0, |t| (t - start).as_secs_f64());
    let fps = frames as f64 / seconds;
    Ok(Limit {
        frames,
        seconds,
        fps,
        mbytes_per_s: fps * (frame_len + 56) as f64 / 1e6,
    })
}
