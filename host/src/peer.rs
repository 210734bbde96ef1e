//! Who is at the other end of an accepted connection, and the span that
//! every log line about that connection is written in.
//!
//! The span (`conn`) carries the connection number, the name the human
//! lines have always used (`client`: `tcp:ADDR#N`, `unix:PATH#N`,
//! `vsock:CID:PORT#N`), the listener, and the peer's identity as the
//! transport knows it: the TCP address, the Unix peer's uid, gid and pid
//! (`SO_PEERCRED`; uid and gid only on macOS), or the vsock CID and port.
//! Filters and log pipelines select a guest by these fields, e.g.
//! `--log-filter 'info,[conn{cid=3}]=debug'`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tracing::Span;

use crate::listen::ListenAddr;

/// A local peer's credentials, as the kernel recorded them at connect().
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Not available on macOS.
    pub pid: Option<i32>,
}

impl Credentials {
    /// The credentials of the process at the other end of a Unix socket.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn of(socket: &impl AsFd) -> io::Result<Credentials> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let c = getsockopt(socket, PeerCredentials)?;
        Ok(Credentials {
            uid: c.uid(),
            gid: c.gid(),
            pid: Some(c.pid()),
        })
    }

    /// The credentials of the process at the other end of a Unix socket.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub fn of(socket: &impl AsFd) -> io::Result<Credentials> {
        let (uid, gid) = nix::unistd::getpeereid(socket)?;
        Ok(Credentials {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            pid: None,
        })
    }
}

/// The peer of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// `None` when the kernel would not tell (it always does on Linux):
    /// an access rule must then treat the peer as unknown.
    Unix(Option<Credentials>),
    // Only Linux has AF_VSOCK listeners.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Vsock {
        cid: u32,
        port: u32,
    },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix(Some(c)) => {
                write!(f, "uid={} gid={}", c.uid, c.gid)?;
                match c.pid {
                    Some(pid) => write!(f, " pid={pid}"),
                    None => Ok(()),
                }
            }
            Peer::Unix(None) => write!(f, "unknown local process"),
            Peer::Vsock { cid, port } => write!(f, "cid={cid} port={port}"),
        }
    }
}

impl Peer {
    /// The connection's name in log lines: the peer's address for TCP and
    /// vsock, the socket path for Unix (its peers have no address), and
    /// the connection number.
    pub fn client_name(&self, listener: &ListenAddr, conn: u64) -> String {
        match self {
            Peer::Tcp(a) => format!("tcp:{a}#{conn}"),
            Peer::Unix(_) => format!("{listener}#{conn}"),
            Peer::Vsock { cid, port } => format!("vsock:{cid}:{port}#{conn}"),
        }
    }

    fn credentials(&self) -> Option<Credentials> {
        match self {
            Peer::Unix(c) => *c,
            _ => None,
        }
    }

    fn cid(&self) -> Option<u32> {
        match self {
            Peer::Vsock { cid, .. } => Some(*cid),
            _ => None,
        }
    }

    /// The span of connection number `conn`, accepted on `listener`. It is
    /// at ERROR level so that it exists whenever any line is written.
    pub fn span(&self, listener: &ListenAddr, conn: u64) -> Span {
        let creds = self.credentials();
        tracing::error_span!(
            "conn",
            conn,
            client = %self.client_name(listener, conn),
            listener = %listener,
            peer = %self,
            uid = creds.map(|c| c.uid),
            gid = creds.map(|c| c.gid),
            pid = creds.and_then(|c| c.pid),
            cid = self.cid(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_historical_log_prefixes() {
        let tcp: ListenAddr = "tcp:127.0.0.1:15937".parse().unwrap();
        let unix: ListenAddr = "unix:/run/v.sock".parse().unwrap();
        let vsock: ListenAddr = "vsock:5000".parse().unwrap();
        let p = Peer::Tcp("127.0.0.1:40000".parse().unwrap());
        assert_eq!(p.client_name(&tcp, 3), "tcp:127.0.0.1:40000#3");
        assert_eq!(p.to_string(), "127.0.0.1:40000");
        let p = Peer::Tcp("[::1]:40000".parse().unwrap());
        assert_eq!(p.client_name(&tcp, 4), "tcp:[::1]:40000#4");
        let p = Peer::Unix(Some(Credentials {
            uid: 1000,
            gid: 100,
            pid: Some(42),
        }));
        assert_eq!(p.client_name(&unix, 5), "unix:/run/v.sock#5");
        assert_eq!(p.to_string(), "uid=1000 gid=100 pid=42");
        let p = Peer::Vsock { cid: 3, port: 1035 };
        assert_eq!(p.client_name(&vsock, 6), "vsock:3:1035#6");
        assert_eq!(p.to_string(), "cid=3 port=1035");
    }

    #[test]
    fn unix_credentials_are_the_connecting_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = Credentials::of(&a).unwrap();
        assert_eq!(c.uid, nix::unistd::getuid().as_raw());
        assert_eq!(c.gid, nix::unistd::getgid().as_raw());
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(c.pid, Some(std::process::id() as i32));
    }
}
