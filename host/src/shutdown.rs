//! SIGINT/SIGTERM handling without async-signal-unsafe code: the signals
//! are blocked in every thread and one thread receives them with `sigwait`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a shutdown was requested.
pub static SHUTDOWN: AtomicBool = AtomicBool::new(false);

pub struct Signals {
    /// Becomes readable when a shutdown was requested (for `poll`).
    wake_read: OwnedFd,
}

impl Signals {
    pub fn wake_fd(&self) -> RawFd {
        self.wake_read.as_raw_fd()
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Must run before any other thread starts, so that every thread inherits
/// the blocked mask.
pub fn install() -> io::Result<Signals> {
    let set = signal_set();
    // SAFETY: changes this thread's mask; no other thread exists yet.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (wake_read, wake_write) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_for_signals(wake_write))?;
    Ok(Signals { wake_read })
}

fn wait_for_signals(wake_write: OwnedFd) {
    let set = signal_set();
    loop {
        let mut sig = 0;
        // SAFETY: set and sig are valid; the signals are blocked everywhere.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        let name = if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        if SHUTDOWN.swap(true, Ordering::SeqCst) {
            warn!("second {name}: exiting at once");
            std::process::exit(130);
        }
        info!("{name}: shutting down (stop accepting, finish in-flight frames); send it again to exit at once");
        // SAFETY: writing one byte from a valid buffer to our pipe.
        unsafe {
            libc::write(
                wake_write.as_raw_fd(),
                b"x".as_ptr() as *const libc::c_void,
                1,
            )
        };
    }
}
