//! One accepted connection of any transport, as a plain socket descriptor.
//!
//! Unix, TCP and vsock streams all become a [`Conn`], so the client code is
//! transport-agnostic. Writes use `MSG_NOSIGNAL`: writing to a connection
//! whose guest has gone returns `EPIPE` instead of raising SIGPIPE.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

pub struct Conn {
    fd: OwnedFd,
}

impl Conn {
    pub fn new(fd: OwnedFd) -> io::Result<Conn> {
        let conn = Conn { fd };
        conn.set_blocking()?;
        Ok(conn)
    }

    fn set_blocking(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Read (`SO_RCVTIMEO`) or write (`SO_SNDTIMEO`) timeout.
    pub fn set_timeout(&self, option: libc::c_int, d: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval for the duration of the call.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_timeout(libc::SO_RCVTIMEO, d)
    }

    pub fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_timeout(libc::SO_SNDTIMEO, d)
    }

    /// Shuts both directions down: a thread blocked reading or writing this
    /// connection returns at once. The descriptor stays open (and cannot be
    /// reused by a later connection) until the last owner drops the `Conn`.
    pub fn shutdown(&self) {
        // SAFETY: shutdown on a descriptor we own; errors (ENOTCONN) are moot.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn check(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        check(unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        })
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        check(unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        })
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec; msghdr is zeroed
        // apart from the iovec array, which outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len().min(1024) as _;
        check(unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
