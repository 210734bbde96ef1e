//! SIGINT/SIGTERM: the first asks for a clean shutdown (stop accepting,
//! answer every frame already read, remove the socket files), a second one
//! exits at once.
//!
//! `signal-hook` turns the signals into an iterator on a thread of ours, so
//! logging and exiting happen outside the signal handler. That thread sets
//! [`SHUTDOWN`] and makes [`Signals::wake`] readable, which ends the accept
//! loop's `poll` at once. The signals are blocked in every other thread:
//! only that one is interrupted, never a client, encoder or GStreamer
//! thread in the middle of a system call.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, Signal};
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing::{info, warn};

/// Set once a shutdown was requested.
pub static SHUTDOWN: AtomicBool = AtomicBool::new(false);

pub struct Signals {
    /// Becomes readable when a shutdown was requested (for `poll`).
    wake_read: UnixStream,
}

impl Signals {
    pub fn wake(&self) -> BorrowedFd<'_> {
        self.wake_read.as_fd()
    }
}

/// Installs the handlers and starts the thread that acts on them. Must run
/// before any other thread starts, so that every thread inherits the
/// blocked mask.
pub fn install() -> io::Result<Signals> {
    let mask = SigSet::from_iter([Signal::SIGINT, Signal::SIGTERM]);
    mask.thread_block()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let (wake_read, mut wake_write) = UnixStream::pair()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = mask.thread_unblock() {
                // Nothing could stop the daemon but SIGKILL: do not start.
                tracing::error!("cannot receive SIGINT/SIGTERM: {e}");
                std::process::exit(1);
            }
            for sig in signals.forever() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if SHUTDOWN.swap(true, Ordering::SeqCst) {
                    warn!("second {name}: exiting at once");
                    std::process::exit(130);
                }
                info!("{name}: shutting down (stop accepting, finish in-flight frames); send it again to exit at once");
                // Nobody reads it: it stays readable, and poll returns.
                let _ = wake_write.write_all(b"x");
            }
        })?;
    Ok(Signals { wake_read })
}
