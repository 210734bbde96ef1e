//! The in-bench HXFR peer: a host stand-in that answers every FRAME_REQUEST
//! with a tiny valid access unit after a simulated encode latency.
//!
//! It runs as a child process (`bench --peer`) so that its CPU time is not
//! charged to the guest pipeline. Per connection, a reader thread decodes
//! requests as fast as they come (the pixels are received exactly like the
//! daemon receives them, with `hxfr::Decoder::read_from`) and hands each one
//! to a reply thread that waits until the request's due time and answers.
//! The latency is the same for every frame, so replies are due in arrival
//! order and a FIFO is a complete scheduler.

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use gst::prelude::*;
use hxfr::{FrameResponse, Message};

enum Reply {
    Frame { due: Instant, pts: i64 },
    Pong,
}

/// Runs the peer until its stdin closes (the parent went away).
pub fn run(listen: &str, latency: Duration) -> Result<()> {
    let au = tiny_access_unit();
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).with_context(|| format!("binding {path}"))?;
        announce(listen);
        for s in l.incoming() {
            let s = s?;
            let r = s.try_clone()?;
            spawn_connection(r, s, latency, au.clone());
        }
    } else if let Some(addr) = listen.strip_prefix("tcp:") {
        let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        announce(&format!("tcp:{}", l.local_addr()?));
        for s in l.incoming() {
            let s = s?;
            s.set_nodelay(true)?;
            let r = s.try_clone()?;
            spawn_connection(r, s, latency, au.clone());
        }
    } else {
        bail!("--listen wants unix:PATH or tcp:HOST:PORT, got {listen}");
    }
    Ok(())
}

fn announce(addr: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready {addr}");
    let _ = out.flush();
}

fn spawn_connection<R, W>(mut reader: R, mut writer: W, latency: Duration, au: Vec<u8>)
where
    R: std::io::Read + Send + 'static,
    W: std::io::Write + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Reply>();
    std::thread::spawn(move || {
        let mut dec = hxfr::Decoder::default();
        while let Ok(Some((_, msg))) = dec.read_from(&mut reader) {
            let reply = match msg {
                Message::FrameRequest { request, .. } => Reply::Frame {
                    due: Instant::now() + latency,
                    pts: request.pts,
                },
                Message::Ping => Reply::Pong,
                _ => continue,
            };
            if tx.send(reply).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for reply in rx {
            let bytes = match reply {
                Reply::Frame { due, pts } => {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    Message::FrameResponse(FrameResponse::single(pts, pts, true, au.clone()))
                        .encode(hxfr::LEGACY_SESSION_ID)
                }
                Reply::Pong => Message::Pong.encode(hxfr::LEGACY_SESSION_ID),
            };
            if writer.write_all(&bytes).is_err() {
                break;
            }
        }
    });
}

/// One IDR access unit (SPS, PPS, slice) of a 64x64 frame from x264, so
/// anything that parses the output finds real H.264. Falls back to a
/// hand-made IDR NAL if x264enc is missing.
pub fn tiny_access_unit() -> Vec<u8> {
    let encoded = (|| -> Result<Vec<u8>> {
        let p = gst::parse::launch(
            "videotestsrc num-buffers=1 ! video/x-raw,format=I420,width=64,height=64 ! \
             x264enc speed-preset=ultrafast tune=zerolatency ! \
             video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink",
        )?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
        let sink = p
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .map_err(|_| anyhow!("not an appsink"))?;
        p.set_state(gst::State::Playing)?;
        let sample = sink.pull_sample().map_err(|_| anyhow!("no sample"))?;
        let data = sample
            .buffer()
            .context("no buffer")?
            .map_readable()?
            .to_vec();
        p.set_state(gst::State::Null)?;
        Ok(data)
    })();
    encoded.map(strip_sei).unwrap_or_else(|_| {
        vec![
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x0a, 0xd9, 0x1e, 0x84, 0x00, 0, 0, 0, 1, 0x68, 0xcb,
            0x83, 0xcb, 0x20, 0, 0, 0, 1, 0x65, 0x88, 0x84, 0x0f, 0xff,
        ]
    })
}

/// Drops SEI NAL units (x264 writes its whole option string into one):
/// what is left is a few dozen bytes of SPS, PPS and slice.
fn strip_sei(au: Vec<u8>) -> Vec<u8> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(au.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(au.len(), |&n| n - 3);
        while end > s && au[end - 1] == 0 && starts.get(k + 1).is_some() {
            end -= 1;
        }
        if s < au.len() && au[s] & 0x1f != 6 {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&au[s..end]);
        }
    }
    out
}

/// A running peer child process.
pub struct PeerProcess {
    child: Child,
    _stdout: std::io::BufReader<ChildStdout>,
    pub addr: String,
}

impl PeerProcess {
    pub fn start(listen: &str, latency: Duration) -> Result<PeerProcess> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["--peer", "--listen", listen, "--latency-ms"])
            .arg(format!("{}", latency.as_secs_f64() * 1000.0))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the peer process")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // The peer prints one line once it listens; a dead peer gives EOF.
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("ready ")
            .ok_or_else(|| anyhow!("peer did not start: {line:?}"))?
            .to_string();
        Ok(PeerProcess {
            child,
            _stdout: stdout,
            addr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
