//! Which region belongs to which guest: `--ivshmem SCOPE=PATH`.
//!
//! The daemon maps only files its operator bound to a guest, never a path
//! a guest names. SCOPE is a listener exactly as given to `--listen`
//! (every guest of that listener: a per-VM Unix socket such as
//! vhost-device-vsock's `<uds-path>_5000`, or a per-VM TCP port for QEMU
//! user networking), or `cid=N` (the vsock guest with that CID, on any
//! vsock listener). A CID binding wins over a listener binding.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::listen::ListenAddr;
use crate::peer::Peer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Listener(ListenAddr),
    Cid(u32),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Listener(a) => write!(f, "{a}"),
            Scope::Cid(c) => write!(f, "cid={c}"),
        }
    }
}

/// One `--ivshmem` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub scope: Scope,
    pub path: PathBuf,
}

impl FromStr for Binding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let form = "expected LISTEN_ADDR=/PATH or cid=N=/PATH, e.g. unix:/run/vm1.vsock_5000=/dev/shm/vm1-vsockenc";
        let (scope, path) = s.rsplit_once('=').ok_or_else(|| format!("{s:?}: {form}"))?;
        if !path.starts_with('/') {
            return Err(format!("{s:?}: the path must be absolute ({form})"));
        }
        let scope = match scope.strip_prefix("cid=") {
            Some(n) => Scope::Cid(
                n.parse()
                    .map_err(|e| format!("{s:?}: bad CID {n:?}: {e}"))?,
            ),
            None => Scope::Listener(scope.parse().map_err(|e| format!("{e} ({form})"))?),
        };
        Ok(Binding {
            scope,
            path: PathBuf::from(path),
        })
    }
}

/// Every binding of the daemon.
#[derive(Debug, Clone, Default)]
pub struct Bindings(pub Vec<Binding>);

impl Bindings {
    /// The file bound to a guest that connected to `listener` as `peer`.
    pub fn for_connection(&self, listener: &ListenAddr, peer: &Peer) -> Option<&Path> {
        let by_cid = match peer {
            Peer::Vsock { cid, .. } => self
                .0
                .iter()
                .find(|b| b.scope == Scope::Cid(*cid))
                .map(|b| b.path.as_path()),
            _ => None,
        };
        by_cid.or_else(|| {
            self.0
                .iter()
                .find(|b| matches!(&b.scope, Scope::Listener(a) if a == listener))
                .map(|b| b.path.as_path())
        })
    }

    /// A binding whose listener is not among `listeners` can never apply:
    /// a mistake the operator should hear about at start.
    pub fn check(&self, listeners: &[ListenAddr]) -> Result<(), String> {
        for b in &self.0 {
            match &b.scope {
                Scope::Listener(a) if !listeners.contains(a) => {
                    return Err(format!(
                        "--ivshmem {}={}: no --listen {a}",
                        b.scope,
                        b.path.display()
                    ))
                }
                Scope::Cid(_)
                    if !listeners
                        .iter()
                        .any(|l| matches!(l, ListenAddr::Vsock { .. })) =>
                {
                    return Err(format!(
                        "--ivshmem {}={}: CID bindings need a vsock listener",
                        b.scope,
                        b.path.display()
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_by_listener_and_by_cid() {
        let b = Bindings(vec![
            "unix:/run/vm1.vsock_5000=/dev/shm/vm1".parse().unwrap(),
            "tcp:127.0.0.1:15940=/dev/shm/vm2".parse().unwrap(),
            "vsock:5000=/dev/shm/any".parse().unwrap(),
            "cid=4=/dev/shm/vm4".parse().unwrap(),
        ]);
        let vsock: ListenAddr = "vsock:5000".parse().unwrap();
        let unix: ListenAddr = "unix:/run/vm1.vsock_5000".parse().unwrap();
        let tcp: ListenAddr = "tcp:127.0.0.1:15940".parse().unwrap();
        let other: ListenAddr = "tcp:127.0.0.1:15937".parse().unwrap();
        let cid = |c| Peer::Vsock { cid: c, port: 1 };
        let local = Peer::Tcp("127.0.0.1:5555".parse().unwrap());
        assert_eq!(
            b.for_connection(&vsock, &cid(4)),
            Some(Path::new("/dev/shm/vm4"))
        );
        assert_eq!(
            b.for_connection(&vsock, &cid(5)),
            Some(Path::new("/dev/shm/any"))
        );
        assert_eq!(
            b.for_connection(&unix, &Peer::Unix(None)),
            Some(Path::new("/dev/shm/vm1"))
        );
        assert_eq!(
            b.for_connection(&tcp, &local),
            Some(Path::new("/dev/shm/vm2"))
        );
        assert_eq!(b.for_connection(&other, &local), None);
        assert!(b.check(&[vsock.clone(), unix, tcp]).is_ok());
        assert!(b.check(&[vsock]).unwrap_err().contains("no --listen"));
    }

    #[test]
    fn bad_bindings_are_usage_errors() {
        for bad in [
            "/dev/shm/x",
            "cid=x=/dev/shm/x",
            "vsock:5000=rel/path",
            "udp:1=/x",
        ] {
            assert!(bad.parse::<Binding>().is_err(), "{bad}");
        }
    }
}
