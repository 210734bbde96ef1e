//! Listen addresses, binding, and the rules that keep Unix socket files safe.
//!
//! A Unix listener holds an exclusive `flock` on `<path>.lock` for the
//! daemon's lifetime. On start, a socket file whose lock is free and whose
//! connect probe is refused was left by a crashed daemon and is replaced; a
//! held lock, or a socket that accepts the probe, means a live daemon and the
//! new one refuses to start. Every unlink is checked and reported.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

use crate::conn::Conn;
use crate::peer::{Credentials, Peer};

/// `VMADDR_CID_ANY`.
pub const VSOCK_CID_ANY: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
    Vsock { cid: u32, port: u32 },
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let forms = "expected unix:/path, tcp:HOST:PORT, vsock:PORT or vsock:CID:PORT";
        let (scheme, rest) = s.split_once(':').ok_or_else(|| format!("{s:?}: {forms}"))?;
        match scheme {
            "unix" if !rest.is_empty() => Ok(ListenAddr::Unix(PathBuf::from(rest))),
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| format!("{s:?}: no port ({forms})"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(format!("{s:?}: no host ({forms})"));
                }
                let port = port
                    .parse()
                    .map_err(|e| format!("{s:?}: bad port {port:?}: {e}"))?;
                Ok(ListenAddr::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            "vsock" => {
                let num = |v: &str| {
                    v.parse::<u32>()
                        .map_err(|e| format!("{s:?}: bad number {v:?}: {e}"))
                };
                match rest.split_once(':') {
                    None => Ok(ListenAddr::Vsock {
                        cid: VSOCK_CID_ANY,
                        port: num(rest)?,
                    }),
                    Some((cid, port)) => Ok(ListenAddr::Vsock {
                        cid: num(cid)?,
                        port: num(port)?,
                    }),
                }
            }
            _ => Err(format!("{s:?}: {forms}")),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            ListenAddr::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            ListenAddr::Vsock { cid, port } if *cid == VSOCK_CID_ANY => write!(f, "vsock:{port}"),
            ListenAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// Whether this host can open and bind an AF_VSOCK stream socket.
#[cfg(target_os = "linux")]
pub fn vsock_available(port: u32) -> Result<(), io::Error> {
    vsock::VsockListener::bind_with_cid_port(VSOCK_CID_ANY, port).map(drop)
}

/// Whether this host can open and bind an AF_VSOCK stream socket.
#[cfg(not(target_os = "linux"))]
pub fn vsock_available(_port: u32) -> Result<(), io::Error> {
    Err(no_vsock())
}

#[cfg(not(target_os = "linux"))]
fn no_vsock() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "AF_VSOCK listeners exist only on Linux hosts",
    )
}

/// What to do when there is no AF_VSOCK listener, for this kind of host.
#[cfg(target_os = "linux")]
pub const VSOCK_REMEDY: &str = "load vhost_vsock for VM guests over AF_VSOCK";
/// What to do when there is no AF_VSOCK listener, for this kind of host. The
/// macOS kernel's AF_VSOCK does not reach QEMU or UTM guests at all.
#[cfg(target_os = "macos")]
pub const VSOCK_REMEDY: &str = "on macOS, QEMU and UTM guests reach the daemon over TCP through \
     user networking (10.0.2.2:15937 in the guest), vfkit guests through the Unix socket \
     of their virtio-vsock device (--listen unix:<socketURL>)";
/// What to do when there is no AF_VSOCK listener, for this kind of host.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub const VSOCK_REMEDY: &str = "guests reach the daemon over --listen tcp:HOST:PORT or unix:PATH";

/// The longest Unix socket path `bind` takes here, in bytes: `sun_path`
/// less its terminating NUL (107 on Linux, 103 on macOS and the BSDs).
pub fn max_unix_path_len() -> usize {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let addr: nix::libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

/// A clear error for a socket path the kernel cannot take, before anything
/// (lock file, stale-socket probe) is done for it.
fn check_unix_path_len(path: &Path) -> anyhow::Result<()> {
    let len = path.as_os_str().len();
    let max = max_unix_path_len();
    if len > max {
        bail!(
            "cannot listen on unix:{}: the path is {len} bytes, and a Unix socket path can \
             have at most {max} here ({} bytes of sun_path with its NUL); use a shorter path, \
             e.g. in /tmp or /run",
            path.display(),
            max + 1
        );
    }
    Ok(())
}

enum Kind {
    Unix {
        listener: UnixListener,
        path: PathBuf,
        lock: Option<LockFile>,
    },
    Tcp(TcpListener),
    #[cfg(target_os = "linux")]
    Vsock(vsock::VsockListener),
}

/// A bound listener. Dropping a Unix listener removes its socket file, then
/// its lock file, then releases the lock.
pub struct Listener {
    kind: Kind,
    /// The address actually bound (a TCP port 0 resolved).
    pub addr: ListenAddr,
}

impl Listener {
    pub fn bind(addr: &ListenAddr, socket_mode: u32) -> anyhow::Result<Listener> {
        match addr {
            ListenAddr::Unix(path) => bind_unix(path, socket_mode),
            ListenAddr::Tcp { host, port } => bind_tcp(host, *port),
            ListenAddr::Vsock { cid, port } => bind_vsock(addr, *cid, *port),
        }
    }

    /// Accepts one pending connection; `Ok(None)` if none is pending.
    pub fn accept(&self) -> io::Result<Option<(Conn, Peer)>> {
        let res = match &self.kind {
            Kind::Unix { listener, .. } => listener.accept().map(|(s, _)| {
                // Linux always answers; elsewhere an unknown peer is still
                // served (access rules decide what "unknown" may do).
                let creds = Credentials::of(&s).ok();
                (OwnedFd::from(s), Peer::Unix(creds))
            }),
            Kind::Tcp(l) => l.accept().map(|(s, a)| (OwnedFd::from(s), Peer::Tcp(a))),
            #[cfg(target_os = "linux")]
            Kind::Vsock(l) => l.accept().map(|(s, a)| {
                let peer = Peer::Vsock {
                    cid: a.cid(),
                    port: a.port(),
                };
                (OwnedFd::from(s), peer)
            }),
        };
        match res {
            Ok((fd, peer)) => Ok(Some((Conn::new(fd)?, peer))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            Kind::Unix { listener, .. } => listener.as_fd(),
            Kind::Tcp(l) => l.as_fd(),
            #[cfg(target_os = "linux")]
            Kind::Vsock(l) => l.as_fd(),
        }
    }
}

#[cfg(target_os = "linux")]
fn bind_vsock(addr: &ListenAddr, cid: u32, port: u32) -> anyhow::Result<Listener> {
    let listener = vsock::VsockListener::bind_with_cid_port(cid, port).map_err(|e| {
        anyhow!(
            "cannot bind vsock port {port} ({addr}): {e}; is the vhost_vsock module loaded? (modprobe vhost_vsock)"
        )
    })?;
    listener.set_nonblocking(true)?;
    deepen_backlog(&listener);
    Ok(Listener {
        kind: Kind::Vsock(listener),
        addr: addr.clone(),
    })
}

#[cfg(not(target_os = "linux"))]
fn bind_vsock(addr: &ListenAddr, _cid: u32, _port: u32) -> anyhow::Result<Listener> {
    Err(anyhow!(
        "cannot listen on {addr}: {}; {VSOCK_REMEDY}",
        no_vsock()
    ))
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Kind::Unix { path, lock, .. } = &mut self.kind {
            match fs::remove_file(&*path) {
                Ok(()) => info!("removed socket file {}", path.display()),
                Err(e) => warn!("cannot remove socket file {}: {e}", path.display()),
            }
            // Unlink the lock file while still holding it: a daemon that
            // locks the old inode afterwards notices it is no longer linked.
            if let Some(lock) = lock.take() {
                if let Err(e) = fs::remove_file(&lock.path) {
                    warn!("cannot remove lock file {}: {e}", lock.path.display());
                }
            }
        }
    }
}

fn bind_tcp(host: &str, port: u16) -> anyhow::Result<Listener> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve tcp:{host}:{port}"))?
        .collect();
    let listener = TcpListener::bind(&addrs[..]).map_err(|e| {
        anyhow!("cannot bind tcp:{host}:{port}: {e} (another process may already use the port; pick another with --listen tcp:HOST:PORT)")
    })?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        warn!("*****************************************************************");
        warn!("tcp:{local} is NOT a loopback address: guest frames and encoded");
        warn!("video cross the network unencrypted and anyone who can reach this");
        warn!("address can use this encoder. Bind 127.0.0.1 unless you mean it.");
        warn!("*****************************************************************");
    }
    listener.set_nonblocking(true)?;
    deepen_backlog(&listener);
    Ok(Listener {
        kind: Kind::Tcp(listener),
        addr: ListenAddr::Tcp {
            host: local.ip().to_string(),
            port: local.port(),
        },
    })
}

/// Connections that may wait to be accepted: more than the standard
/// library's 128, so that a burst of connections from one guest does not
/// overflow the queue (the kernel then drops the next guest's connection
/// request, and its retry comes only a second later); not so many that a
/// guest queued behind a flood waits long (the accept loop takes a
/// connection in well under a millisecond).
const BACKLOG: i32 = 1024;

fn deepen_backlog(listener: &impl AsFd) {
    use nix::sys::socket::{listen, Backlog};
    let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN);
    if let Err(e) = listen(listener, backlog) {
        warn!("cannot raise the listen backlog: {e}");
    }
}

/// An exclusive `flock` on `<socket>.lock`, held until this is dropped.
struct LockFile {
    _lock: Flock<File>,
    path: PathBuf,
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn acquire_lock(socket: &Path) -> anyhow::Result<LockFile> {
    let path = lock_path(socket);
    for _ in 0..10 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => bail!(
                "another vsockenc-host is already listening on unix:{} (it holds {}); stop it first or choose another path",
                socket.display(),
                path.display()
            ),
            Err((_, e)) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("cannot lock {}", path.display()))
            }
        };
        // The holder we raced with may have unlinked the file we locked:
        // only a lock on the file that is at `path` now counts.
        let ours = lock.metadata()?;
        match fs::metadata(&path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                return Ok(LockFile { _lock: lock, path })
            }
            _ => continue,
        }
    }
    bail!(
        "cannot take the lock {}: it keeps being replaced",
        path.display()
    )
}

fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<Listener> {
    check_unix_path_len(path)?;
    let lock = acquire_lock(path)?;
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; refusing to replace it (remove it yourself if it is not needed)",
                    path.display()
                );
            }
            match UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another vsockenc-host is already listening on unix:{} (a process accepted a connection there although {} was free); stop it first or choose another path",
                    path.display(),
                    lock.path.display()
                ),
                Err(e) => {
                    info!(
                        "unix:{}: stale socket file (lock free, connect failed: {e}); replacing it",
                        path.display()
                    );
                    fs::remove_file(path).with_context(|| {
                        format!("cannot remove stale socket file {}", path.display())
                    })?;
                    info!("removed stale socket file {}", path.display());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind unix:{}", path.display()))?;
    // From here on, Drop removes the socket file whatever happens.
    let l = Listener {
        kind: Kind::Unix {
            listener,
            path: path.to_path_buf(),
            lock: Some(lock),
        },
        addr: ListenAddr::Unix(path.to_path_buf()),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))?;
    if let Kind::Unix { listener, .. } = &l.kind {
        listener.set_nonblocking(true)?;
        deepen_backlog(listener);
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_path_length_limit_is_the_kernels() {
        let dir = std::env::temp_dir().join(format!("vsockenc-pathlen-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let max = max_unix_path_len();
        let named = |len: usize| {
            let base = dir.as_os_str().len() + 1;
            dir.join("s".repeat(len - base))
        };
        // The longest path we allow really binds ...
        let longest = named(max);
        let l = bind_unix(&longest, 0o600).expect("a path of the maximum length binds");
        drop(l);
        // ... and one byte more gets our error, naming the path and the limit.
        let too_long = named(max + 1);
        let e = bind_unix(&too_long, 0o600)
            .err()
            .expect("too long")
            .to_string();
        assert!(e.contains(&format!("{} bytes", max + 1)), "{e}");
        assert!(e.contains(&format!("at most {max}")), "{e}");
        assert!(e.contains(&*too_long.to_string_lossy()), "{e}");
        assert!(
            !lock_path(&too_long).exists(),
            "no lock file for a refused path"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "unix:/run/x.sock".parse(),
            Ok(ListenAddr::Unix("/run/x.sock".into()))
        );
        assert_eq!(
            "tcp:127.0.0.1:15937".parse(),
            Ok(ListenAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 15937
            })
        );
        assert_eq!(
            "tcp:[::1]:80".parse(),
            Ok(ListenAddr::Tcp {
                host: "::1".into(),
                port: 80
            })
        );
        assert_eq!(
            "vsock:5000".parse(),
            Ok(ListenAddr::Vsock {
                cid: VSOCK_CID_ANY,
                port: 5000
            })
        );
        assert_eq!(
            "vsock:3:5000".parse(),
            Ok(ListenAddr::Vsock { cid: 3, port: 5000 })
        );
        for bad in ["", "unix:", "tcp:1.2.3.4", "tcp::80", "vsock:x", "udp:1:2"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            "vsock:5000".parse::<ListenAddr>().unwrap().to_string(),
            "vsock:5000"
        );
    }
}
