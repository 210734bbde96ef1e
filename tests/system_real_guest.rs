// System tests over real virtio-vsock: boot a small Linux guest under QEMU
// (TCG) with a vhost-user vsock device (scripts/vm/run-guest.sh, recipe in
// shared/REAL-VM.md) and run the `vsockenc` element inside it.
//
// (a) `vsockenc cid=2 port=5000` in the guest, `vsockenc-host --listen
//     unix:RUNDIR/vm.vsock_5000` on the machine (vhost-device-vsock maps guest
//     connections to CID 2 port P onto the Unix socket RUNDIR/vm.vsock_P).
// (b) both the daemon (`--listen vsock:5000`) and the pipeline (`cid=1`)
//     inside the guest, through vsock_loopback.
// (c) as (a), in an arm64 guest (qemu-system-aarch64 -M virt, Debian's arm64
//     kernel and an arm64 Debian root with GStreamer, prepared by
//     `scripts/vm/prepare.sh --arch arm64`), running the plugin cross-built
//     for aarch64-unknown-linux-gnu by scripts/cross.sh; the daemon stays on
//     the machine.
//
// The guest writes the encoded stream to the per-run share; the test decodes
// it on the machine with avdec_h264 and compares every frame with the same
// videotestsrc frames regenerated here (PSNR > 30 dB, same frame count and
// dimensions).
//
// The x86_64 tests build nothing: they use the plugin and the `vsockenc-host`
// binary that `cargo build` put next to this test executable
// (<target>/<profile>/), as scripts/test.sh does before running the suite.
// The arm64 test runs scripts/cross.sh itself (a no-op when scripts/test.sh
// has cross-built already), so it never runs a stale arm64 plugin.
// scripts/vm/prepare.sh installs QEMU, the guest kernel and root and
// vhost-device-vsock when they are missing (as root) and caches them; without
// them the tests fail, they never pass by skipping.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_video::prelude::*;

/// Frames per case at 320x240 (the guest is emulated: keep it small).
const FRAMES_A: u32 = 90;
const FRAMES_B: u32 = 45;
/// The arm64 guest is emulated on another architecture: slower still.
const FRAMES_ARM64: u32 = 60;
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
/// Bound on scripts/vm/prepare.sh: on a cold cache it installs Debian
/// packages and compiles vhost-device-vsock (about 3 minutes on 2 idle
/// cores); cached, it takes well under a second. scripts/test.sh runs it
/// before the suite, so this normally finds everything cached.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on one guest run (boot + script + poweroff); a run takes 30-45 s on
/// a loaded 2-core machine (arm64: about a minute). Together with
/// PREPARE_TIMEOUT this stays under the 16 minutes .config/nextest.toml
/// allows a real-guest test.
const GUEST_RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on cross-building the arm64 plugin: cold (the standard library and
/// every crate for aarch64) 4-8 minutes on a loaded 2-core machine;
/// scripts/test.sh does that before the suite, so here it is a no-op.
const CROSS_BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound on the VM itself (passed to run-guest.sh, which stops QEMU then).
const VM_TIMEOUT_SECS: u64 = 240;
const MIN_PSNR_DB: f64 = 30.0;
/// The guest is emulated and the machine is loaded: starting x264enc inside
/// the guest took over 3 s once, so the default 2 s response timeout dropped
/// the first frames in flight. These tests check fidelity, not deadlines.
const GUEST_ELEMENT_TIMEOUTS: &str = "response-timeout=30000 connect-timeout=20000";

/// The videotestsrc settings used in the guest and for the reference here:
/// a moving SMPTE pattern, deterministic per frame number.
fn source_desc(frames: u32, width: u32, height: u32) -> String {
    format!(
        "videotestsrc num-buffers={frames} horizontal-speed=3 ! \
         video/x-raw,format=NV12,width={width},height={height},framerate=30/1"
    )
}

/// A child process that is stopped (SIGTERM, then SIGKILL to its process
/// group) when the guard is dropped, also when the test panics.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

struct Artifacts {
    host_bin: PathBuf,
    plugin_so: PathBuf,
}

fn artifacts() -> Artifacts {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/system_real_guest-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is not in <target>/<profile>/deps")
        .to_path_buf();
    let host_bin = profile_dir.join("vsockenc-host");
    let plugin_so = profile_dir.join("libgstvsockenc.so");
    for (what, p) in [("vsockenc-host binary", &host_bin), ("plugin", &plugin_so)] {
        assert!(
            p.is_file(),
            "{what} not found at {}: build the workspace first (`cargo build --workspace`, \
             as scripts/test.sh does) with the same profile and CARGO_TARGET_DIR as this test",
            p.display()
        );
    }
    Artifacts {
        host_bin,
        plugin_so,
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A per-run directory, shared read-write with the guest. Short path under
/// /tmp: Unix socket paths are limited to 108 bytes. Removed when the test
/// passes, kept (and its path printed) when it fails.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn new(name: &str) -> RunDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "vsockenc-rg-{name}-{}-{nanos:x}",
            std::process::id()
        ));
        fs::create_dir_all(path.join("plugins")).expect("create run dir");
        RunDir { path }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "real-guest run dir kept for inspection: {}",
                self.path.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Prepares the run dir: a private plugin directory holding only our plugin
/// (the profile dir also holds deps/ copies and proc-macro libraries that the
/// registry scan must not see) and a GStreamer registry built here, which the
/// guest reuses instead of rescanning every plugin under emulation.
fn setup_run_dir(run: &RunDir, art: &Artifacts) {
    let plugin_dir = run.path.join("plugins");
    fs::copy(&art.plugin_so, plugin_dir.join("libgstvsockenc.so")).expect("copy plugin");
    // The guest sees the machine's root read-only at the same paths, except
    // its private /tmp: keep everything the guest runs inside the run dir.
    fs::copy(&art.host_bin, run.path.join("vsockenc-host")).expect("copy vsockenc-host");
    let out = Command::new("timeout")
        .args(["120", "gst-inspect-1.0", "vsockenc"])
        .env("GST_PLUGIN_PATH", &plugin_dir)
        .env("GST_REGISTRY", run.path.join("registry.bin"))
        .output()
        .expect("run gst-inspect-1.0");
    assert!(
        out.status.success(),
        "gst-inspect-1.0 vsockenc failed on the machine with GST_PLUGIN_PATH={}: {}{}",
        plugin_dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn guest_env_lines(run: &RunDir) -> String {
    format!(
        "export GST_PLUGIN_PATH={p}/plugins\nexport GST_REGISTRY={p}/registry.bin\n\
         export GST_REGISTRY_UPDATE=no\nexport GST_DEBUG=${{GST_DEBUG:-2}}\n",
        p = run.path.display()
    )
}

fn read_lossy(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(p) {
        let mut b = Vec::new();
        let _ = f.read_to_end(&mut b);
        s = String::from_utf8_lossy(&b).into_owned();
    }
    s
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Waits for a child with a deadline; on timeout sends SIGTERM (run-guest.sh
/// traps it and stops QEMU and vhost-device-vsock), then SIGKILL to its
/// process group.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= deadline {
            terminate(child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: plain kill(2) on the pid of our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every child here is spawned as the leader of its own process group.
    // SAFETY: plain kill(2) on our own child's process group.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct GuestRun {
    status: Option<ExitStatus>,
    wall: Duration,
}

/// The guest's architecture, as scripts/vm/*.sh name it.
#[derive(Clone, Copy)]
enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
}

fn run_guest(run: &RunDir, script: &str, arch: Arch) -> GuestRun {
    run_guest_with(run, script, arch, &[])
}

/// `run_guest` with more environment for run-guest.sh (VSOCKENC_VM_IVSHMEM,
/// VSOCKENC_VM_NET).
fn run_guest_with(run: &RunDir, script: &str, arch: Arch, env: &[(&str, &str)]) -> GuestRun {
    let script_path = run.path.join("guest.sh");
    fs::write(&script_path, script).expect("write guest script");
    let start = Instant::now();
    let child = Command::new(repo_root().join("scripts/vm/run-guest.sh"))
        .args(["--arch", arch.name()])
        .arg(&run.path)
        .arg(&script_path)
        .env("VSOCKENC_VM_TIMEOUT", VM_TIMEOUT_SECS.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(fs::File::create(run.path.join("run-guest.out")).unwrap())
        .stderr(fs::File::create(run.path.join("run-guest.err")).unwrap())
        .process_group(0)
        .spawn()
        .expect("spawn scripts/vm/run-guest.sh");
    let mut child = ChildGuard(child);
    let status = wait_bounded(&mut child.0, GUEST_RUN_TIMEOUT);
    GuestRun {
        status,
        wall: start.elapsed(),
    }
}

fn diagnostics(run: &RunDir) -> String {
    let p = &run.path;
    format!(
        "--- run-guest.sh stderr:\n{}\n--- guest.log:\n{}\n--- console.log (tail):\n{}\n\
         --- host.log (tail):\n{}\n--- vhost.log (tail):\n{}\n(run dir {})",
        tail(&read_lossy(&p.join("run-guest.err")), 40),
        tail(&read_lossy(&p.join("guest.log")), 60),
        tail(&read_lossy(&p.join("console.log")), 40),
        tail(&read_lossy(&p.join("host.log")), 40),
        tail(&read_lossy(&p.join("vhost.log")), 20),
        p.display()
    )
}

fn assert_guest_ok(run: &RunDir, gr: &GuestRun) {
    match gr.status {
        None => panic!(
            "guest run timed out after {:?}\n{}",
            GUEST_RUN_TIMEOUT,
            diagnostics(run)
        ),
        Some(st) if !st.success() => panic!(
            "guest run failed ({st}; 124 = VM timeout, 125 = VM infrastructure failure)\n{}",
            diagnostics(run)
        ),
        Some(_) => {}
    }
}

/// How the guest writes the element's output to RUNDIR/out.h264: through
/// h264parse where the guest has it (the machine's own plugins), straight
/// from vsockenc (byte-stream, AU-aligned) in the arm64 root, which holds only
/// plugins-base.
fn guest_sink(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "h264parse ! video/x-h264,stream-format=byte-stream ! filesink",
        Arch::Arm64 => "filesink",
    }
}

/// Guest-side shell lines that run the pipeline with a hard bound, time it and
/// record the elapsed milliseconds in RUNDIR/pipeline_ms.
fn pipeline_lines(run: &RunDir, frames: u32, vsockenc_props: &str, arch: Arch) -> String {
    let p = run.path.display();
    format!(
        "t0=$(date +%s%N)\n\
         timeout -k 10 240 gst-launch-1.0 -e {src} ! vsockenc {vsockenc_props} ! \
         {sink} location={p}/out.h264 \
         > {p}/pipeline.log 2>&1\n\
         rc=$?\n\
         cat {p}/pipeline.log\n\
         t1=$(date +%s%N)\n\
         echo $(( (t1 - t0) / 1000000 )) > {p}/pipeline_ms\n\
         echo \"pipeline exit $rc after $(( (t1 - t0) / 1000000 )) ms\"\n",
        src = source_desc(frames, WIDTH, HEIGHT),
        sink = guest_sink(arch),
    )
}

/// Runs `desc` (ending in an appsink named "sink" producing I420) and returns
/// every frame, tightly packed, plus its dimensions.
fn collect_i420(desc: &str) -> Vec<(u32, u32, Vec<u8>)> {
    let pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("parse {desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).expect("play");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut frames = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "decoding {desc} took too long");
        if let Some(msg) = pipeline
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error])
        {
            let _ = pipeline.set_state(gst::State::Null);
            panic!("pipeline {desc} error: {msg:?}");
        }
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(500)) {
            Some(sample) => {
                let caps = sample.caps().expect("caps");
                let info = gst_video::VideoInfo::from_caps(caps).expect("video info");
                let buffer = sample.buffer().expect("buffer");
                let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
                    .expect("map frame");
                let (w, h) = (info.width(), info.height());
                let mut packed = Vec::with_capacity((w * h * 3 / 2) as usize);
                for plane in 0..3u32 {
                    let (pw, ph) = if plane == 0 {
                        (w, h)
                    } else {
                        (w.div_ceil(2), h.div_ceil(2))
                    };
                    let stride = frame.plane_stride()[plane as usize] as usize;
                    let data = frame.plane_data(plane).expect("plane");
                    for row in 0..ph as usize {
                        packed.extend_from_slice(&data[row * stride..row * stride + pw as usize]);
                    }
                }
                frames.push((w, h, packed));
            }
            None => {
                if sink.is_eos() {
                    break;
                }
            }
        }
    }
    pipeline.set_state(gst::State::Null).expect("stop");
    frames
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = *x as f64 - *y as f64;
            d * d
        })
        .sum();
    let mse = se / a.len() as f64;
    if mse == 0.0 {
        99.0
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// Decodes RUNDIR/out.h264 and compares it frame by frame with the reference.
fn check_output(run: &RunDir, frames: u32) {
    gst::init().unwrap();
    let out = run.path.join("out.h264");
    let size = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 0,
        "guest wrote no H.264 output\n{}",
        diagnostics(run)
    );
    let decoded = collect_i420(&format!(
        "filesrc location={} ! h264parse ! avdec_h264 ! videoconvert ! \
         video/x-raw,format=I420 ! appsink name=sink sync=false",
        out.display()
    ));
    let reference = collect_i420(&format!(
        "{} ! videoconvert ! video/x-raw,format=I420 ! appsink name=sink sync=false",
        source_desc(frames, WIDTH, HEIGHT)
    ));
    assert_eq!(reference.len(), frames as usize);
    // The pattern moves, so a lost, repeated or reordered frame cannot pass
    // the per-frame comparison below.
    let first_last = psnr(&reference[0].2, &reference[frames as usize - 1].2);
    assert!(
        first_last < MIN_PSNR_DB,
        "reference frames barely change ({first_last:.1} dB): the comparison would be weak"
    );
    assert_eq!(
        decoded.len(),
        frames as usize,
        "decoded frame count ({} bytes of H.264)\n{}",
        size,
        diagnostics(run)
    );
    let mut worst = f64::INFINITY;
    let mut sum = 0.0;
    for (i, ((dw, dh, d), (rw, rh, r))) in decoded.iter().zip(&reference).enumerate() {
        assert_eq!((dw, dh), (rw, rh), "frame {i} dimensions");
        let p = psnr(d, r);
        assert!(
            p > MIN_PSNR_DB,
            "frame {i}: PSNR {p:.2} dB <= {MIN_PSNR_DB} dB"
        );
        worst = worst.min(p);
        sum += p;
    }
    eprintln!(
        "real-guest: {}/{frames} frames decoded and matched, {WIDTH}x{HEIGHT}, {size} bytes H.264, \
         PSNR mean {:.2} dB, min {:.2} dB",
        decoded.len(),
        sum / decoded.len() as f64,
        worst
    );
}

/// gst-launch's "Execution ended after H:MM:SS.NNNNNNNNN" (PLAYING to EOS).
fn execution_secs(log: &str) -> Option<f64> {
    let rest = log.split("Execution ended after ").nth(1)?;
    let stamp = rest.split_whitespace().next()?;
    let mut parts = stamp.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn report_timing(run: &RunDir, name: &str, frames: u32, gr: &GuestRun) {
    let ms: f64 = read_lossy(&run.path.join("pipeline_ms"))
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    let exec = execution_secs(&read_lossy(&run.path.join("pipeline.log"))).unwrap_or(f64::NAN);
    eprintln!(
        "real-guest {name}: whole guest run {:.1} s; in-guest gst-launch {frames} frames \
         {WIDTH}x{HEIGHT}: {:.1} s including start-up, {:.2} s PLAYING to EOS = {:.1} fps",
        gr.wall.as_secs_f64(),
        ms / 1000.0,
        exec,
        frames as f64 / exec
    );
}

/// Runs prepare.sh on its own first so a cold-cache install is bounded and
/// reported separately from the guest run.
fn prepare(arch: Arch) {
    let start = Instant::now();
    let child = Command::new(repo_root().join("scripts/vm/prepare.sh"))
        .args(["--arch", arch.name()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn scripts/vm/prepare.sh");
    let mut child = ChildGuard(child);
    match wait_bounded(&mut child.0, PREPARE_TIMEOUT) {
        Some(st) if st.success() => {}
        other => panic!("scripts/vm/prepare.sh failed: {other:?} (its stderr is above)"),
    }
    eprintln!(
        "real-guest: prepare.sh --arch {} took {:.1} s",
        arch.name(),
        start.elapsed().as_secs_f64()
    );
}

/// Cross-builds the plugin for aarch64 (scripts/cross.sh, into the same
/// target directory as this test) and returns the arm64 `.so`.
fn cross_build_arm64_plugin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/system_real_guest-<hash>
    let target_dir = exe
        .ancestors()
        .nth(3)
        .expect("test executable is not in <target>/<profile>/deps")
        .to_path_buf();
    let start = Instant::now();
    let child = Command::new(repo_root().join("scripts/cross.sh"))
        .args([
            "build",
            "aarch64-unknown-linux-gnu",
            "-p",
            "gst-plugin-vsockenc",
            "--lib",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn scripts/cross.sh");
    let mut child = ChildGuard(child);
    match wait_bounded(&mut child.0, CROSS_BUILD_TIMEOUT) {
        Some(st) if st.success() => {}
        other => panic!(
            "scripts/cross.sh build aarch64-unknown-linux-gnu failed: {other:?} (its stderr is above)"
        ),
    }
    eprintln!(
        "real-guest: cross-building the arm64 plugin took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let so = target_dir.join("cross/aarch64-unknown-linux-gnu/debug/libgstvsockenc.so");
    assert!(
        so.is_file(),
        "scripts/cross.sh did not produce {}",
        so.display()
    );
    so
}

/// Starts `vsockenc-host` on the machine where vhost-device-vsock forwards
/// guest connections to CID 2 port 5000, and waits until it listens.
fn start_daemon_for_cid2(run: &RunDir, art: &Artifacts) -> ChildGuard {
    let listen = run.path.join("vm.vsock_5000");
    let daemon = Command::new(&art.host_bin)
        .arg("--listen")
        .arg(format!("unix:{}", listen.display()))
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(run.path.join("host.out")).unwrap())
        .stderr(fs::File::create(run.path.join("host.log")).unwrap())
        .process_group(0)
        .spawn()
        .expect("spawn vsockenc-host");
    let mut daemon = ChildGuard(daemon);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listen.exists() {
        if let Ok(Some(st)) = daemon.0.try_wait() {
            panic!("vsockenc-host exited early ({st})\n{}", diagnostics(run));
        }
        assert!(
            Instant::now() < deadline,
            "vsockenc-host did not create {}\n{}",
            listen.display(),
            diagnostics(run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

#[test]
fn real_guest_cid2_to_host_daemon_over_vhost_vsock() {
    let art = artifacts();
    prepare(Arch::X86_64);
    let run = RunDir::new("cid2");
    setup_run_dir(&run, &art);
    let daemon = start_daemon_for_cid2(&run, &art);

    let script = format!(
        "#!/bin/sh\n{}{}exit $rc\n",
        guest_env_lines(&run),
        pipeline_lines(
            &run,
            FRAMES_A,
            &format!("cid=2 port=5000 {GUEST_ELEMENT_TIMEOUTS}"),
            Arch::X86_64
        )
    );
    let gr = run_guest(&run, &script, Arch::X86_64);
    drop(daemon);
    assert_guest_ok(&run, &gr);
    report_timing(&run, "cid2->host daemon", FRAMES_A, &gr);
    check_output(&run, FRAMES_A);
}

#[test]
fn real_guest_arm64_cid2_to_host_daemon_over_vhost_vsock() {
    let art = artifacts();
    prepare(Arch::Arm64);
    let plugin = cross_build_arm64_plugin();
    let run = RunDir::new("arm64");
    fs::copy(&plugin, run.path.join("plugins/libgstvsockenc.so")).expect("copy arm64 plugin");
    let daemon = start_daemon_for_cid2(&run, &art);

    // The machine cannot load an arm64 plugin, so the guest builds its own
    // registry (the first gst-launch scans plugins-base and the plugin).
    let p = run.path.display();
    let script = format!(
        "#!/bin/sh\n\
         export GST_PLUGIN_PATH={p}/plugins\nexport GST_REGISTRY={p}/registry.bin\n\
         export GST_DEBUG=${{GST_DEBUG:-2}}\n\
         echo \"guest: $(uname -m)\"\n\
         [ \"$(uname -m)\" = aarch64 ] || exit 4\n\
         {}exit $rc\n",
        pipeline_lines(
            &run,
            FRAMES_ARM64,
            &format!("cid=2 port=5000 {GUEST_ELEMENT_TIMEOUTS}"),
            Arch::Arm64
        )
    );
    let gr = run_guest(&run, &script, Arch::Arm64);
    drop(daemon);
    assert_guest_ok(&run, &gr);
    // The guest really was arm64, and the frames really went through the
    // daemon on the machine.
    let guest_log = read_lossy(&run.path.join("guest.log"));
    assert!(
        guest_log.contains("guest: aarch64"),
        "the guest did not report aarch64\n{}",
        diagnostics(&run)
    );
    let host_log = read_lossy(&run.path.join("host.log"));
    assert!(
        host_log.contains(": connected"),
        "the daemon on the machine logged no guest\n{}",
        diagnostics(&run)
    );
    report_timing(&run, "arm64 cid2->host daemon", FRAMES_ARM64, &gr);
    check_output(&run, FRAMES_ARM64);
}

#[test]
fn real_guest_vsock_loopback_daemon_and_pipeline_in_guest() {
    let art = artifacts();
    prepare(Arch::X86_64);
    let run = RunDir::new("loop");
    setup_run_dir(&run, &art);

    let p = run.path.display();
    // Start the daemon inside the guest on AF_VSOCK port 5000, wait for its
    // listener line (bounded), run the pipeline against CID 1, stop the daemon.
    let script = format!(
        "#!/bin/sh\n{env}\
         {host} --listen vsock:5000 --log-level info > {p}/host.out 2> {p}/host.log &\n\
         hp=$!\n\
         i=0\n\
         while ! grep -q 'listening on' {p}/host.log 2>/dev/null; do\n\
           i=$((i + 1)); if [ $i -gt 600 ] || ! kill -0 $hp 2>/dev/null; then\n\
             echo 'vsockenc-host did not start listening'; cat {p}/host.log; kill $hp; exit 3; fi\n\
           sleep 0.2\n\
         done\n\
         {pipeline}\
         kill $hp 2>/dev/null\n\
         i=0; while kill -0 $hp 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done\n\
         kill -9 $hp 2>/dev/null\n\
         exit $rc\n",
        env = guest_env_lines(&run),
        host = run.path.join("vsockenc-host").display(),
        pipeline = pipeline_lines(
            &run,
            FRAMES_B,
            &format!("cid=1 port=5000 {GUEST_ELEMENT_TIMEOUTS}"),
            Arch::X86_64
        ),
    );
    let gr = run_guest(&run, &script, Arch::X86_64);
    assert_guest_ok(&run, &gr);
    // The in-guest daemon served the pipeline on its AF_VSOCK listener.
    let host_log = read_lossy(&run.path.join("host.log"));
    assert!(
        host_log.contains("listening on vsock"),
        "the in-guest daemon did not report an AF_VSOCK listener\n{}",
        diagnostics(&run)
    );
    report_timing(&run, "cid1 loopback, daemon in guest", FRAMES_B, &gr);
    check_output(&run, FRAMES_B);
}

/// Starts `vsockenc-host` on the machine with `args`, logging to
/// RUNDIR/host.log, and waits until it listens on every `--listen`.
fn start_daemon(run: &RunDir, art: &Artifacts, args: &[String]) -> ChildGuard {
    let daemon = Command::new(&art.host_bin)
        .args(args)
        .args(["--log-level", "info", "--stats-interval", "0"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(run.path.join("host.out")).unwrap())
        .stderr(fs::File::create(run.path.join("host.log")).unwrap())
        .process_group(0)
        .spawn()
        .expect("spawn vsockenc-host");
    let mut daemon = ChildGuard(daemon);
    let listeners = args.iter().filter(|a| *a == "--listen").count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_lossy(&run.path.join("host.log"))
        .matches("listening on")
        .count()
        < listeners
    {
        if let Ok(Some(st)) = daemon.0.try_wait() {
            panic!("vsockenc-host exited early ({st})\n{}", diagnostics(run));
        }
        assert!(
            Instant::now() < deadline,
            "vsockenc-host did not start listening\n{}",
            diagnostics(run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

/// A file in /dev/shm backing the guest's ivshmem-plain device (removed on
/// drop). 64 MiB: a power of two, room for many 320x240 slots.
struct IvshmemFile(PathBuf);

impl IvshmemFile {
    fn new(name: &str) -> IvshmemFile {
        let p = PathBuf::from(format!(
            "/dev/shm/vsockenc-rg-{name}-{}",
            std::process::id()
        ));
        fs::File::create(&p)
            .and_then(|f| f.set_len(64 << 20))
            .expect("create the ivshmem backing file in /dev/shm");
        IvshmemFile(p)
    }
}

impl Drop for IvshmemFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The guest-side lines that bring up QEMU user networking (the machine's
/// 127.0.0.1 is 10.0.2.2).
const GUEST_NETWORK: &str = "modprobe virtio_net && ip link set eth0 up && \
     ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 || \
     { echo 'cannot bring up eth0'; exit 4; }\n";

/// Checks what both sides say about shared memory: the element's stats
/// (in its log at GST_DEBUG=vsockenc:4) count every frame as a
/// zero-copy slot, and the daemon mapped the bound file.
fn check_shm_used(run: &RunDir, frames: u32, region: &IvshmemFile) {
    let log = read_lossy(&run.path.join("pipeline.log"));
    let stat = |name: &str| -> Option<u64> {
        let rest = log.split(&format!("{name}=(guint64)")).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    assert_eq!(
        stat("shm-frames"),
        Some(frames as u64),
        "every frame by slot\n{}",
        diagnostics(run)
    );
    assert_eq!(
        (stat("checksum-matches"), stat("checksum-mismatches")),
        (Some(frames as u64), Some(0)),
        "the daemon encoded exactly the guest's pixels (verify-frames)\n{}",
        diagnostics(run)
    );
    assert_eq!(
        stat("shm-copied-frames"),
        Some(0),
        "upstream wrote into the ivshmem pool\n{}",
        diagnostics(run)
    );
    let host = read_lossy(&run.path.join("host.log"));
    assert!(
        host.contains(&format!("shared memory in use: {}", region.0.display())),
        "the daemon mapped the bound file\n{}",
        diagnostics(run)
    );
}

#[test]
fn real_guest_ivshmem_over_vhost_vsock() {
    let art = artifacts();
    prepare(Arch::X86_64);
    let run = RunDir::new("ivs-vsock");
    setup_run_dir(&run, &art);
    let region = IvshmemFile::new("vsock");
    let listen = format!("unix:{}", run.path.join("vm.vsock_5000").display());
    let daemon = start_daemon(
        &run,
        &art,
        &[
            "--listen".into(),
            listen.clone(),
            "--ivshmem".into(),
            format!("{listen}={}", region.0.display()),
        ],
    );
    let script = format!(
        "#!/bin/sh\n{}export GST_DEBUG=2,vsockenc:4\n{}exit $rc\n",
        guest_env_lines(&run),
        pipeline_lines(
            &run,
            FRAMES_A,
            &format!("cid=2 port=5000 verify-frames=true {GUEST_ELEMENT_TIMEOUTS}"),
            Arch::X86_64,
        )
    );
    let ivs = region.0.display().to_string();
    let gr = run_guest_with(
        &run,
        &script,
        Arch::X86_64,
        &[("VSOCKENC_VM_IVSHMEM", &ivs)],
    );
    drop(daemon);
    assert_guest_ok(&run, &gr);
    report_timing(&run, "ivshmem, cid2->host daemon", FRAMES_A, &gr);
    check_shm_used(&run, FRAMES_A, &region);
    check_output(&run, FRAMES_A);
}

#[test]
fn real_guest_ivshmem_over_user_networking_tcp() {
    let art = artifacts();
    prepare(Arch::X86_64);
    let run = RunDir::new("ivs-tcp");
    setup_run_dir(&run, &art);
    let region = IvshmemFile::new("tcp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let daemon = start_daemon(
        &run,
        &art,
        &[
            "--listen".into(),
            listen.clone(),
            "--ivshmem".into(),
            format!("{listen}={}", region.0.display()),
        ],
    );
    let script = format!(
        "#!/bin/sh\n{}{GUEST_NETWORK}export GST_DEBUG=2,vsockenc:4\n{}exit $rc\n",
        guest_env_lines(&run),
        pipeline_lines(
            &run,
            FRAMES_A,
            &format!(
                "tcp-host=10.0.2.2 tcp-port={port} verify-frames=true {GUEST_ELEMENT_TIMEOUTS}"
            ),
            Arch::X86_64,
        )
    );
    let ivs = region.0.display().to_string();
    let gr = run_guest_with(
        &run,
        &script,
        Arch::X86_64,
        &[("VSOCKENC_VM_IVSHMEM", &ivs), ("VSOCKENC_VM_NET", "user")],
    );
    drop(daemon);
    assert_guest_ok(&run, &gr);
    report_timing(&run, "ivshmem, user-networking TCP", FRAMES_A, &gr);
    check_shm_used(&run, FRAMES_A, &region);
    check_output(&run, FRAMES_A);
}
