//! The thread that sends SHM_RELEASE for the slots whose buffers the
//! encoder freed, as soon as they are: not queued behind the answers to
//! later frames (the connection's writer sends those in request order and
//! may be waiting for the encoder). One per connection that uses shared
//! memory, started with its first region.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use hxfr::ext::ExtMessage;
use hxfr::shm::ShmRelease;
use tracing::{debug, trace, Span};

/// How often the thread looks at `dead` while no release comes.
const POLL: Duration = Duration::from_millis(200);

/// Starts the thread; `write` sends one whole message (under the
/// connection's write lock, bounded in time). The thread ends when every
/// sender is gone, when `dead` is set, or when a write fails (it then sets
/// `dead`). `None` if no thread could be started.
pub fn spawn<W>(peer: Arc<str>, dead: Arc<AtomicBool>, write: W) -> Option<Sender<ShmRelease>>
where
    W: Fn(&[u8]) -> std::io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<ShmRelease>();
    let span = Span::current();
    std::thread::Builder::new()
        .name("client-shm".into())
        .spawn(move || {
            let _entered = span.enter();
            while !dead.load(Ordering::SeqCst) {
                let r = match rx.recv_timeout(POLL) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                trace!(
                    "{peer}: slot {} of frame {} released",
                    r.slot,
                    r.frame_index
                );
                let bytes = ExtMessage::ShmRelease(r).encode(hxfr::LEGACY_SESSION_ID);
                if let Err(e) = write(&bytes) {
                    debug!("{peer}: SHM_RELEASE not sent: {e}");
                    dead.store(true, Ordering::SeqCst);
                    return;
                }
            }
        })
        .ok()
        .map(|_| tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn releases_are_written_at_once_and_a_failed_write_ends_the_thread() {
        let written = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let dead = Arc::new(AtomicBool::new(false));
        let w = written.clone();
        let tx = spawn("t".into(), dead.clone(), move |b| {
            w.lock().unwrap().push(b.to_vec());
            if w.lock().unwrap().len() == 2 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        })
        .unwrap();
        tx.send(ShmRelease {
            slot: 3,
            frame_index: 7,
        })
        .unwrap();
        let t0 = std::time::Instant::now();
        while written.lock().unwrap().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            written.lock().unwrap()[0],
            ExtMessage::ShmRelease(ShmRelease {
                slot: 3,
                frame_index: 7
            })
            .encode(1)
        );
        tx.send(ShmRelease::default()).unwrap();
        while !dead.load(Ordering::SeqCst) {
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
