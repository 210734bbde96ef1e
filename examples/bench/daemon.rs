//! The real `vsockenc-host` daemon as a child process, and the plain
//! `gst-launch-1.0` pipeline it is compared against.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// What `vsockenc-host --encoder x264enc` runs for an NV12 guest (x264enc
/// takes NV12 as it is, so no videoconvert), from host/src/encoder.rs
/// (`configure` and `Session::new`): the low-latency x264 settings, the
/// bitrate from CONFIG_REQ (the element's default `bitrate`, 4000 kbit/s),
/// then h264parse to byte-stream access units. The element runs with
/// `keyframe-interval=0` here, so neither side forces keyframes. Kept in
/// step with host/src by hand: the plain pipeline must use the same settings.
pub const DAEMON_X264_CHAIN: &str = "x264enc name=enc tune=zerolatency speed-preset=veryfast bframes=0 b-adapt=false rc-lookahead=0 sliced-threads=true bitrate=4000 ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au";

/// Where `scripts/bench.sh` puts the daemon: `<target>/release/vsockenc-host`,
/// next to `<target>/release/examples/bench`. Falls back to the other
/// profile's directory, then to `vsockenc-host` on PATH.
pub fn default_host_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let target_dir = profile_dir.parent()?;
    let mut candidates = vec![profile_dir.join("vsockenc-host")];
    for profile in ["release", "debug"] {
        candidates.push(target_dir.join(profile).join("vsockenc-host"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("vsockenc-host")));
    }
    let found = candidates.iter().find(|c| c.is_file()).cloned();
    Some(found.unwrap_or_else(|| candidates.swap_remove(0)))
}

pub struct Daemon {
    child: Child,
    pub encoder: String,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(bin: &Path, socket: &Path, log: PathBuf) -> Result<Daemon> {
        if !bin.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p vsockenc-host` \
                 (scripts/bench.sh does) or pass --host-bin",
                bin.display()
            );
        }
        let _ = std::fs::remove_file(socket);
        let mut child = Command::new(bin)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--encoder", "x264enc", "--stats-interval", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().unwrap();
        let mut logfile = std::fs::File::create(&log)?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(logfile, "{line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut encoder = String::from("?");
        let mut daemon = Daemon {
            child,
            encoder: String::new(),
            log,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find("encoder: ") {
                        encoder = line[i + 9..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("?")
                            .to_string();
                    }
                    if line.contains("listening on") && socket.exists() {
                        break;
                    }
                }
                Err(_) => bail!(
                    "vsockenc-host did not report `listening on` within 15 s (log: {})",
                    daemon.log.display()
                ),
            }
        }
        // Keep draining stderr so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        daemon.encoder = encoder;
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
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

pub struct PlainRun {
    pub command: String,
    pub frames: u64,
    pub seconds: f64,
    pub fps: f64,
}

/// Writes the frames where [`plain_gst_launch`] reads them.
pub fn write_frame_files(frames: &crate::frames::Frames, dir: &Path) -> Result<()> {
    for (i, b) in frames.buffers.iter().enumerate() {
        let map = b.map_readable()?;
        std::fs::write(dir.join(format!("frame-{i:03}.raw")), map.as_slice())?;
    }
    Ok(())
}

pub fn remove_frame_files(frames: &crate::frames::Frames, dir: &Path) {
    for i in 0..frames.buffers.len() {
        let _ = std::fs::remove_file(dir.join(format!("frame-{i:03}.raw")));
    }
}

/// Runs `gst-launch-1.0` on the same frames (written to files, read back by
/// multifilesrc and timestamped by rawvideoparse) with the daemon's encoder
/// settings, and takes its own "Execution ended after" time. The queue puts
/// file reading on its own thread, as appsrc does for the other runs;
/// without it reading and encoding take turns and plain is slower.
pub fn plain_gst_launch(
    frames: &crate::frames::Frames,
    dir: &Path,
    count: u64,
) -> Result<PlainRun> {
    let k = frames.buffers.len();
    let fmt = match frames.format {
        crate::frames::Format::Nv12 => "nv12",
        crate::frames::Format::Bgrx => "bgrx",
    };
    let chain = DAEMON_X264_CHAIN.replace("name=enc ", "");
    let command = format!(
        "gst-launch-1.0 multifilesrc location={dir}/frame-%03d.raw index=0 stop-index={last} loop=true num-buffers={count} \
         ! rawvideoparse format={fmt} width={w} height={h} framerate=30/1 ! queue ! {chain} ! fakesink sync=false",
        dir = dir.display(),
        last = k - 1,
        w = frames.width,
        h = frames.height,
    );
    let out = Command::new("timeout")
        .arg("300")
        .arg("sh")
        .arg("-c")
        .arg(&command)
        .output()
        .context("running gst-launch-1.0")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "gst-launch-1.0 failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "Execution ended after 0:00:04.123456789"
    let t = text
        .lines()
        .find_map(|l| l.split("Execution ended after ").nth(1))
        .ok_or_else(|| anyhow!("no `Execution ended after` in gst-launch output: {text}"))?;
    let seconds = parse_clock(t.trim())?;
    Ok(PlainRun {
        command,
        frames: count,
        seconds,
        fps: count as f64 / seconds,
    })
}

fn parse_clock(s: &str) -> Result<f64> {
    let mut total = 0.0;
    for part in s.split(':') {
        total = total * 60.0 + part.parse::<f64>().map_err(|e| anyhow!("{s}: {e}"))?;
    }
    Ok(total)
}
