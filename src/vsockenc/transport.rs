//! Where the host daemon is and how to reach it: address selection, connect
//! with a timeout, and the socket options each transport needs.
//!
//! * Unix socket: the connect is bounded too (a daemon that is frozen or
//!   whose backlog is full never accepts), a path that exists but is not a
//!   socket is named as such, and the send buffer is made as large as the
//!   kernel allows (`UNIX_SEND_BUFFER`).
//! * TCP: `TCP_NODELAY`, because a small FRAME_REQUEST prefix waiting for
//!   Nagle would add a round trip to every frame.
//! * AF_VSOCK: `SO_VM_SOCKETS_CONNECT_TIMEOUT` (the kernel default is 2 s and
//!   ignores `connect-timeout` otherwise) and large `SO_SNDBUF`/`SO_RCVBUF`
//!   so a multi-megabyte frame does not trickle through the default 256 KiB.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, setsockopt, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage,
    VsockAddr,
};
use nix::sys::time::{TimeVal, TimeValLike};
// `sockopt_impl!` expands to calls of these by their bare names.
use nix::{setsockopt_impl, sockopt_impl};
use vsock::VsockStream;

/// Send buffer asked for on Unix sockets. A writer of a frame larger than
/// its send buffer sleeps until the host has read a piece and is woken for
/// the next: with the kernel's default (208 KiB) a 1080p frame crosses in
/// 15 to 40 pieces, each costing the guest a sleep and a wake-up, which is
/// more CPU than the copy's own overhead. The kernel caps the value at
/// `net.core.wmem_max` (208 KiB by default, so on a default guest this
/// only doubles the buffer; raise `wmem_max` to let a frame cross whole).
const UNIX_SEND_BUFFER: usize = 8 << 20;
/// Socket buffer asked for on AF_VSOCK (the kernel may cap it).
const VSOCK_BUFFER_BYTES: u64 = 16 << 20;
/// `SO_VM_SOCKETS_BUFFER_SIZE` and friends, from `<linux/vm_sockets.h>`.
const SO_VM_SOCKETS_BUFFER_SIZE: i32 = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: i32 = 2;
const SO_VM_SOCKETS_CONNECT_TIMEOUT: i32 = 6;

// Neither nix nor socket2 names the AF_VSOCK-level options: nix's macro
// for its own options makes them typed, safe `setsockopt` options (its
// expansion calls libc's `setsockopt`: libc stays a dependency).
sockopt_impl!(
    /// `SO_VM_SOCKETS_CONNECT_TIMEOUT`.
    VmConnectTimeout,
    SetOnly,
    AddressFamily::Vsock as i32,
    SO_VM_SOCKETS_CONNECT_TIMEOUT,
    TimeVal
);
sockopt_impl!(
    /// `SO_VM_SOCKETS_BUFFER_SIZE`.
    VmBufferSize,
    SetOnly,
    AddressFamily::Vsock as i32,
    SO_VM_SOCKETS_BUFFER_SIZE,
    u64
);
sockopt_impl!(
    /// `SO_VM_SOCKETS_BUFFER_MAX_SIZE`.
    VmBufferMaxSize,
    SetOnly,
    AddressFamily::Vsock as i32,
    SO_VM_SOCKETS_BUFFER_MAX_SIZE,
    u64
);

/// The host daemon's address, in the same spelling `vsockenc-host --listen`
/// accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
    Vsock { cid: u32, port: u32 },
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

impl Address {
    /// What to tell a user whose connect failed with `e`.
    pub fn remedy_for(&self, e: &io::Error) -> String {
        if is_not_a_socket(e) {
            return format!(
                "set socket-path to the socket vsockenc-host listens on (`vsockenc-host --listen unix:PATH`), not {self}"
            );
        }
        self.remedy()
    }

    /// What to tell a user whose host is not there.
    pub fn remedy(&self) -> String {
        let listen = match self {
            Address::Vsock { port, .. } => format!("vsock:{port}"),
            other => other.to_string(),
        };
        format!("start `vsockenc-host --listen {listen}` on the host or set wait-for-host=true")
    }
}

/// A connected stream of any transport.
#[derive(Debug)]
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Vsock(VsockStream),
}

impl Stream {
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Vsock(s) => Stream::Vsock(s.try_clone()?),
        })
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(d),
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Vsock(s) => s.set_write_timeout(d),
        }
    }

    /// Writes `bytes` with `fd` attached (`SCM_RIGHTS`, Unix sockets only).
    pub fn write_all_with_fd(&mut self, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
        let Stream::Unix(s) = self else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "descriptors can only be passed over a Unix socket",
            ));
        };
        let fds = [fd.as_raw_fd()];
        let n = socket::sendmsg::<()>(
            s.as_raw_fd(),
            &[io::IoSlice::new(bytes)],
            &[socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        // The descriptor went with the first byte; the rest may follow.
        s.write_all(&bytes[n..])
    }

    /// Makes further writes fail; a reader still gets what the peer sent.
    pub fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Vsock(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Wakes a reader blocked on this socket (any clone) and makes further
    /// writes fail.
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Vsock(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
            Stream::Vsock(s) => s.as_fd(),
        }
    }
}

/// The read side of a connection as its reader thread uses it: it only
/// ever sleeps in `poll(POLLIN)`, never in `recv`.
///
/// A thread blocked in `recv` on a stream socket sleeps on the socket's
/// wait queue, and the kernel wakes that queue every time room to write
/// appears in the socket (each time the host has read another piece of a
/// frame): while the element writes a multi-megabyte frame, a reader
/// blocked in `recv` is woken, finds nothing, and sleeps again, dozens of
/// times per frame. A `poll` for POLLIN is woken only by data (or an error
/// or the end of the stream). Data is then taken with a non-blocking
/// `recv` (`MSG_DONTWAIT`: the socket itself stays blocking, since the
/// writer shares it).
pub struct ReadHalf {
    stream: Stream,
    /// How long one wait may last before `read` reports `TimedOut` (the
    /// caller then looks at its flags and waits again).
    idle: Duration,
}

impl ReadHalf {
    pub fn new(stream: Stream, idle: Duration) -> ReadHalf {
        ReadHalf { stream, idle }
    }

    /// Whether data (or the end of the stream, or an error) is there to
    /// read, waiting at most `idle`.
    fn wait_readable(&self) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = self.idle.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(n) => return Ok(n > 0),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsFd;
        loop {
            match socket::recv(self.stream.as_fd().as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => return Ok(n),
                Err(Errno::EAGAIN) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if !self.wait_readable()? {
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Vsock(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Vsock(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Vsock(s) => send_vectored(std::os::fd::AsFd::as_fd(s), bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One `sendmsg` of all `bufs` (up to IOV_MAX): `VsockStream` only
/// implements `write`, which would cost one syscall per row of a padded
/// frame. `MSG_NOSIGNAL` as in `VsockStream::write`: a host that went away
/// is an `EPIPE`, not a SIGPIPE that kills the application.
fn send_vectored(fd: BorrowedFd<'_>, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let bufs = &bufs[..bufs.len().min(1024)];
    Ok(socket::sendmsg::<SockaddrStorage>(
        fd.as_raw_fd(),
        bufs,
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?)
}

/// Whether an error means "nobody is listening there (any more)" rather
/// than a local problem.
pub fn is_host_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(
            Errno::ECONNRESET
                | Errno::ECONNREFUSED
                | Errno::ETIMEDOUT
                | Errno::ENOENT
                | Errno::EPIPE
                | Errno::ENODEV
                | Errno::EHOSTUNREACH
                | Errno::ENETUNREACH
        )
    ) || matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::TimedOut
            | io::ErrorKind::NotFound
            | io::ErrorKind::BrokenPipe
    )
}

/// What `connect` says when `socket-path` names something that is not a
/// socket (a regular file, a directory).
#[derive(Debug)]
pub struct NotASocket {
    pub what: &'static str,
}

impl fmt::Display for NotASocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the path is {}, not a socket", self.what)
    }
}

impl std::error::Error for NotASocket {}

/// Whether a connect error means the address names something that is not a
/// socket: starting a host daemon there would not help.
pub fn is_not_a_socket(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<NotASocket>())
}

fn connect_unix(path: &std::path::Path, timeout: Duration) -> io::Result<UnixStream> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let ft = meta.file_type();
        if !ft.is_socket() {
            let what = if ft.is_dir() {
                "a directory"
            } else if ft.is_file() {
                "a regular file"
            } else {
                "a special file"
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                NotASocket { what },
            ));
        }
    }
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // A blocking Unix connect waits for room in the listener's backlog for
    // at most the send timeout: that is the connect timeout.
    setsockopt(&fd, sockopt::SendTimeout, &timeval(timeout))?;
    let addr = socket::UnixAddr::new(path)?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::EAGAIN) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out: the daemon accepts no connection (frozen, or its backlog is full)",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    setsockopt(&fd, sockopt::SendTimeout, &timeval(Duration::ZERO))?;
    // Best effort, like the vsock buffer sizes: see UNIX_SEND_BUFFER.
    let _ = setsockopt(&fd, sockopt::SndBuf, &UNIX_SEND_BUFFER);
    Ok(UnixStream::from(fd))
}

fn timeval(d: Duration) -> TimeVal {
    TimeVal::microseconds(d.as_micros().min(i64::MAX as u128) as i64)
}

/// A short description of a connect failure for messages.
pub fn describe(e: &io::Error) -> String {
    if e.get_ref().is_some() {
        // Ours (not a socket, a daemon that does not accept): it says it.
        return e.to_string();
    }
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ECONNREFUSED) => "connection refused".into(),
        Some(Errno::ENOENT) => "no such socket file".into(),
        Some(Errno::ETIMEDOUT) => "timed out".into(),
        Some(Errno::ECONNRESET) => "connection reset".into(),
        _ if e.kind() == io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Opens a connection to `addr`, giving up after `timeout`.
pub fn connect(addr: &Address, timeout: Duration) -> io::Result<Stream> {
    match addr {
        Address::Unix(path) => connect_unix(path, timeout).map(Stream::Unix),
        Address::Tcp { host, port } => {
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} does not resolve to any address"),
            );
            for sa in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&sa, timeout) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        Address::Vsock { cid, port } => connect_vsock(*cid, *port, timeout).map(Stream::Vsock),
    }
}

fn connect_vsock(cid: u32, port: u32, timeout: Duration) -> io::Result<VsockStream> {
    let fd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let micros = timeout.as_micros().try_into().unwrap_or(i64::MAX);
    setsockopt(&fd, VmConnectTimeout, &TimeVal::microseconds(micros))?;
    // Best effort: the buffer options are advisory.
    let _ = setsockopt(&fd, VmBufferMaxSize, &VSOCK_BUFFER_BYTES);
    let _ = setsockopt(&fd, VmBufferSize, &VSOCK_BUFFER_BYTES);
    let _ = setsockopt(&fd, sockopt::SndBuf, &(VSOCK_BUFFER_BYTES as usize));
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(VSOCK_BUFFER_BYTES as usize));
    socket::connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
    Ok(VsockStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_spelled_like_the_daemon_flags() {
        assert_eq!(
            Address::Unix("/run/x.sock".into()).to_string(),
            "unix:/run/x.sock"
        );
        let tcp = Address::Tcp {
            host: "10.0.2.2".into(),
            port: 15937,
        };
        assert_eq!(tcp.to_string(), "tcp:10.0.2.2:15937");
        assert_eq!(
            Address::Vsock { cid: 2, port: 5000 }.to_string(),
            "vsock:2:5000"
        );
        assert!(Address::Vsock { cid: 2, port: 5000 }
            .remedy()
            .contains("--listen vsock:5000"));
    }

    #[test]
    fn missing_unix_socket_counts_as_absent_host() {
        let e = connect(
            &Address::Unix("/nonexistent/vsockenc-test.sock".into()),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(is_host_absent(&e), "{e}");
    }

    #[test]
    fn vsock_connect_sets_its_options_and_reports_an_absent_host() {
        // Nothing listens on the host side of this machine's AF_VSOCK: the
        // socket options must be accepted and the failure must read as
        // "host not there" (ECONNRESET or ETIMEDOUT depending on transport).
        let e = connect(
            &Address::Vsock {
                cid: 2,
                port: 59_999,
            },
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(is_host_absent(&e), "{e} ({:?})", e.raw_os_error());
    }

    #[test]
    fn refused_tcp_counts_as_absent_host() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = connect(
            &Address::Tcp {
                host: "127.0.0.1".into(),
                port,
            },
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(is_host_absent(&e), "{e}");
    }
}
