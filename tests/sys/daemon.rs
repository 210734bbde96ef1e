//! The real `vsockenc-host` daemon as a child process of the test.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tempdir::TempDir;

/// How long a freshly spawned daemon may take to print its `listening on`
/// line on a loaded machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the `vsockenc-host` binary built alongside this test.
///
/// The root package cannot use `CARGO_BIN_EXE_*` for another package's binary,
/// so it is found from the test executable: `<target>/<profile>/deps/<test>`
/// → `<target>/<profile>/vsockenc-host`. `VSOCKENC_HOST_BIN` overrides it.
pub fn host_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VSOCKENC_HOST_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "VSOCKENC_HOST_BIN={} is not a file",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()));
    let bin = profile_dir.join("vsockenc-host");
    assert!(
        bin.is_file(),
        "the daemon binary {} does not exist. The system tests run the real daemon: build it \
         first with the same profile and CARGO_TARGET_DIR as the tests \
         (`cargo build -p vsockenc-host`), or run the whole workspace \
         (`cargo nextest run --workspace`), or point VSOCKENC_HOST_BIN at it.",
        bin.display()
    );
    bin
}

/// Which socket the daemon listens on and the element connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
}

/// A concrete listening address.
#[derive(Clone, Debug)]
pub enum Addr {
    Unix(PathBuf),
    Tcp(u16),
}

impl Addr {
    /// A fresh address of the given kind: a socket in `dir`, or a free port.
    pub fn new(transport: Transport, dir: &TempDir) -> Addr {
        match transport {
            Transport::Unix => Addr::Unix(dir.join("host.sock")),
            Transport::Tcp => Addr::Tcp(free_tcp_port()),
        }
    }

    /// The daemon's `--listen` value.
    pub fn listen_arg(&self) -> String {
        match self {
            Addr::Unix(p) => format!("unix:{}", p.display()),
            Addr::Tcp(port) => format!("tcp:127.0.0.1:{port}"),
        }
    }

    /// The element properties selecting this address, for `gst::parse::launch`.
    pub fn element_props(&self) -> String {
        match self {
            Addr::Unix(p) => format!("socket-path=\"{}\"", p.display()),
            Addr::Tcp(port) => format!("tcp-host=127.0.0.1 tcp-port={port}"),
        }
    }
}

/// A TCP port that was free a moment ago. Racy by nature; [`Daemon::start`]
/// retries with another port if the bind fails.
pub fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing
/// test never leaves a daemon behind. The child also gets SIGKILL if the test
/// process dies (PR_SET_PDEATHSIG).
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildGuard> {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Ok(ChildGuard {
            child: Some(cmd.spawn()?),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Exit status if the child has exited already.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `vsockenc-host`.
pub struct Daemon {
    pub addr: Addr,
    /// Encoder factory named by the daemon's `encoder: <factory>` line.
    pub encoder: String,
    child: ChildGuard,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start the daemon on a fresh address of `transport` (in `dir` for Unix).
    pub fn start(transport: Transport, dir: &TempDir, extra: &[&str]) -> Daemon {
        let mut last_err = String::new();
        // A free TCP port can be taken between probing and binding: retry.
        for _ in 0..3 {
            let addr = Addr::new(transport, dir);
            match Daemon::try_start_on(addr, extra) {
                Ok(d) => return d,
                Err(e) => last_err = e,
            }
            if transport == Transport::Unix {
                break;
            }
        }
        panic!("{last_err}");
    }

    /// Start the daemon on exactly `addr` (used to restart on the same one).
    pub fn start_on(addr: Addr, extra: &[&str]) -> Daemon {
        Daemon::try_start_on(addr, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start_on(addr: Addr, extra: &[&str]) -> Result<Daemon, String> {
        let bin = host_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("--listen")
            .arg(addr.listen_arg())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child =
            ChildGuard::spawn(&mut cmd).map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let stderr = child.child.as_mut().unwrap().stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let pid = child.pid();
        {
            let log = log.clone();
            std::thread::Builder::new()
                .name(format!("host-{pid}-stderr"))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        // Shown by the test harness when the test fails.
                        eprintln!("[vsockenc-host {pid}] {line}");
                        log.lock().unwrap().push(line.clone());
                        let _ = tx.send(line);
                    }
                })
                .expect("spawn stderr reader");
        }

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut encoder = None;
        // One `listening on` line per listener: ours plus any in `extra`.
        let listeners = 1 + extra.iter().filter(|a| **a == "--listen").count();
        let mut listening = 0;
        while listening < listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find("encoder: ") {
                        let name = line[i + "encoder: ".len()..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        encoder = Some(name);
                    }
                    if line.contains("listening on") {
                        listening += 1;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "vsockenc-host --listen {} printed {listening} of {listeners} \
                         `listening on` lines within {:?}; log so far:\n{}",
                        addr.listen_arg(),
                        STARTUP_TIMEOUT,
                        log.lock().unwrap().join("\n")
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                    let status = child.try_wait();
                    return Err(format!(
                        "vsockenc-host --listen {} exited before listening (status {:?}); \
                         log:\n{}",
                        addr.listen_arg(),
                        status,
                        log.lock().unwrap().join("\n")
                    ));
                }
            }
        }
        let encoder = encoder.unwrap_or_else(|| {
            // The line may come after the listeners; give it a moment.
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                    if let Some(i) = line.find("encoder: ") {
                        return line[i + 9..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_string();
                    }
                }
            }
            String::new()
        });
        Ok(Daemon {
            addr,
            encoder,
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGKILL the daemon (no chance to clean up, like a crash).
    pub fn kill_hard(&mut self) {
        self.child.kill();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().is_none() && self.child.child.is_some()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Resident memory of the daemon in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }
}

/// `VmRSS` of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
