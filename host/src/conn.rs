//! One accepted connection of any transport, as a plain socket descriptor.
//!
//! Unix, TCP and vsock streams all become a [`Conn`], so the client code is
//! transport-agnostic. On Linux, writes use `MSG_NOSIGNAL`: writing to a
//! connection whose guest has gone returns `EPIPE` instead of raising
//! SIGPIPE. macOS has no such send flag; there every socket gets
//! `SO_NOSIGPIPE`, which does the same per socket. Both hold whatever the
//! process's SIGPIPE disposition (the Rust runtime ignores it, a library
//! could restore it).
//!
//! Unix connections are read with `recvmsg`, so that descriptors a guest
//! passes (`SCM_RIGHTS`: the memfd of shared-memory frames) are kept for
//! the message they came with ([`Conn::take_passed_fd`]); a few at most,
//! the rest are closed at once.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{self, setsockopt, sockopt, MsgFlags, SockaddrStorage};
use nix::sys::time::{TimeVal, TimeValLike};

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: MsgFlags = MsgFlags::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: MsgFlags = MsgFlags::empty();

/// Descriptors the guest passes are close-on-exec from the start.
#[cfg(any(target_os = "linux", target_os = "android"))]
const RECV_FLAGS: MsgFlags = MsgFlags::MSG_CMSG_CLOEXEC;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RECV_FLAGS: MsgFlags = MsgFlags::empty();

/// More buffers than this in one `sendmsg` fail with EMSGSIZE (IOV_MAX).
const MAX_IOVECS: usize = 1024;

/// Descriptors kept from the guest at most (more are closed).
const MAX_PASSED_FDS: usize = 4;

pub struct Conn {
    fd: OwnedFd,
    /// Descriptors passed with `SCM_RIGHTS` (Unix sockets only), oldest
    /// first; `None` on other transports.
    passed: Option<Mutex<VecDeque<OwnedFd>>>,
    /// Held while one complete message is written, so that writers on
    /// two threads never interleave their bytes.
    writing: Mutex<()>,
}

impl Conn {
    /// Takes an accepted socket; it is made blocking (reads and writes are
    /// bounded by the timeouts instead).
    pub fn new(fd: OwnedFd) -> io::Result<Conn> {
        let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags.difference(OFlag::O_NONBLOCK)))?;
        #[cfg(target_vendor = "apple")]
        no_sigpipe(&fd)?;
        let unix = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .is_ok_and(|a| a.as_unix_addr().is_some());
        Ok(Conn {
            fd,
            passed: unix.then(Mutex::default),
            writing: Mutex::new(()),
        })
    }

    /// Whether the guest can pass descriptors on this connection.
    pub fn passes_fds(&self) -> bool {
        self.passed.is_some()
    }

    /// The oldest descriptor the guest passed and nobody took yet.
    pub fn take_passed_fd(&self) -> Option<OwnedFd> {
        self.passed.as_ref()?.lock().unwrap().pop_front()
    }

    /// Taken around the writing of one whole message.
    pub fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recv_with_fds(
        &self,
        buf: &mut [u8],
        passed: &Mutex<VecDeque<OwnedFd>>,
    ) -> io::Result<usize> {
        let mut space = nix::cmsg_space!([RawFd; MAX_PASSED_FDS]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg =
            socket::recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut space), RECV_FLAGS)?;
        let n = msg.bytes;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let socket::ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors
                    // in this process for us; nobody else owns them.
                    fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
        }
        if !fds.is_empty() {
            let mut q = passed.lock().unwrap();
            for fd in fds {
                if q.len() < MAX_PASSED_FDS {
                    q.push_back(fd);
                }
            }
        }
        Ok(n)
    }

    /// Reads fail with `WouldBlock` after `d` without data.
    pub fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        Ok(setsockopt(&self.fd, sockopt::ReceiveTimeout, &timeval(d))?)
    }

    /// Writes fail with `WouldBlock` after `d` without progress.
    pub fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        Ok(setsockopt(&self.fd, sockopt::SendTimeout, &timeval(d))?)
    }

    /// Shuts both directions down: a thread blocked reading or writing this
    /// connection returns at once. The descriptor stays open (and cannot be
    /// reused by a later connection) until the last owner drops the `Conn`.
    pub fn shutdown(&self) {
        // Errors (ENOTCONN: the guest already went) are moot.
        let _ = socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Both);
    }
}

/// `SO_NOSIGPIPE` (nix has no wrapper for it).
#[cfg(target_vendor = "apple")]
fn no_sigpipe(fd: &OwnedFd) -> io::Result<()> {
    use nix::libc;
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call and its size is passed along.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn timeval(d: Duration) -> TimeVal {
    TimeVal::microseconds(d.as_micros().try_into().unwrap_or(i64::MAX))
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.passed {
            Some(passed) => self.recv_with_fds(buf, passed),
            None => Ok(socket::recv(self.fd.as_raw_fd(), buf, MsgFlags::empty())?),
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(socket::send(self.fd.as_raw_fd(), buf, SEND_FLAGS)?)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_IOVECS)];
        Ok(socket::sendmsg::<SockaddrStorage>(
            self.fd.as_raw_fd(),
            bufs,
            &[],
            SEND_FLAGS,
            None,
        )?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(OwnedFd::from(a)).unwrap(), b)
    }

    #[test]
    fn reads_time_out_and_writes_reach_the_peer() {
        let (c, mut peer) = pair();
        c.set_read_timeout(Duration::from_millis(50)).unwrap();
        let mut buf = [0u8; 8];
        // Made blocking: the read waits for the timeout, not EAGAIN at once.
        let t = std::time::Instant::now();
        let e = (&c).read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t.elapsed()
        );
        let mut w = &c;
        assert_eq!(
            w.write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
                .unwrap(),
            4
        );
        peer.read_exact(&mut buf[..4]).unwrap();
        assert_eq!(&buf[..4], b"abcd");
        peer.write_all(b"xyz").unwrap();
        assert_eq!((&c).read(&mut buf).unwrap(), 3);
    }

    #[test]
    fn descriptors_passed_by_the_guest_are_kept_in_order() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let (c, peer) = pair();
        assert!(c.passes_fds());
        let files: Vec<std::fs::File> = (0..2)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        for f in &files {
            let fds = [f.as_raw_fd()];
            sendmsg::<()>(
                peer.as_raw_fd(),
                &[IoSlice::new(b"x")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        }
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < 2 {
            got += (&c).read(&mut buf).unwrap();
        }
        assert!(c.take_passed_fd().is_some());
        assert!(c.take_passed_fd().is_some());
        assert!(c.take_passed_fd().is_none());
    }

    #[test]
    fn writing_to_a_gone_peer_fails_with_broken_pipe() {
        let (c, peer) = pair();
        drop(peer);
        let e = (&c).write(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn shutdown_wakes_a_blocked_reader() {
        let (c, _peer) = pair();
        let c = std::sync::Arc::new(c);
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || (&*c).read(&mut [0u8; 4]))
        };
        std::thread::sleep(Duration::from_millis(50));
        c.shutdown();
        assert_eq!(reader.join().unwrap().unwrap(), 0);
    }
}
