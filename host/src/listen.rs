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
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};

use crate::conn::Conn;

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
pub fn vsock_available(port: u32) -> Result<(), io::Error> {
    vsock::VsockListener::bind_with_cid_port(VSOCK_CID_ANY, port).map(drop)
}

enum Kind {
    Unix {
        listener: UnixListener,
        path: PathBuf,
        lock: Option<LockFile>,
    },
    Tcp(TcpListener),
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
            ListenAddr::Vsock { cid, port } => {
                let listener = vsock::VsockListener::bind_with_cid_port(*cid, *port)
                    .map_err(|e| {
                        anyhow!(
                            "cannot bind vsock port {port} ({addr}): {e}; is the vhost_vsock module loaded? (modprobe vhost_vsock)"
                        )
                    })?;
                listener.set_nonblocking(true)?;
                Ok(Listener {
                    kind: Kind::Vsock(listener),
                    addr: addr.clone(),
                })
            }
        }
    }

    /// Accepts one pending connection; `Ok(None)` if none is pending. The
    /// second value names the peer.
    pub fn accept(&self) -> io::Result<Option<(Conn, String)>> {
        let res = match &self.kind {
            Kind::Unix { listener, path, .. } => listener
                .accept()
                .map(|(s, _)| (OwnedFd::from(s), format!("unix:{}", path.display()))),
            Kind::Tcp(l) => l
                .accept()
                .map(|(s, a)| (OwnedFd::from(s), format!("tcp:{a}"))),
            Kind::Vsock(l) => l.accept().map(|(s, a)| {
                // SAFETY: the stream's descriptor is moved into the OwnedFd.
                let fd = unsafe {
                    <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
                        std::os::fd::IntoRawFd::into_raw_fd(s),
                    )
                };
                (fd, format!("vsock:{}:{}", a.cid(), a.port()))
            }),
        };
        match res {
            Ok((fd, peer)) => Ok(Some((Conn::new(fd)?, peer))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        match &self.kind {
            Kind::Unix { listener, .. } => listener.as_raw_fd(),
            Kind::Tcp(l) => l.as_raw_fd(),
            Kind::Vsock(l) => l.as_raw_fd(),
        }
    }
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
    Ok(Listener {
        kind: Kind::Tcp(listener),
        addr: ListenAddr::Tcp {
            host: local.ip().to_string(),
            port: local.port(),
        },
    })
}

/// An exclusive `flock` on `<socket>.lock`, held as long as the file is open.
struct LockFile {
    _file: File,
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
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                bail!(
                    "another vsockenc-host is already listening on unix:{} (it holds {}); stop it first or choose another path",
                    socket.display(),
                    path.display()
                );
            }
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
        // The holder we raced with may have unlinked the file we locked:
        // only a lock on the file that is at `path` now counts.
        let ours = file.metadata()?;
        match fs::metadata(&path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                return Ok(LockFile { _file: file, path })
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
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

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
