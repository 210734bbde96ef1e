//! One live connection to the host: the serialized writer and the reader
//! thread that owns the read half.
//!
//! Every write (FRAME_REQUEST, CONFIG_REQ, PING) goes through one writer
//! mutex, so messages never interleave. A write that fails or times out
//! leaves the byte stream in an unknown state, so the connection is shut
//! down; the reader then sees the end of the stream and fails the frames
//! still in flight on it. A connection is never reused after that: a
//! reconnect makes a new one with the next generation number, and pending
//! frames remember the generation they were sent on.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hxfr::compact::CompactMessage;
use hxfr::ext::{ExtMessage, GuestExt};
use hxfr::{ConfigRequest, FrameRequest, Message, LEGACY_SESSION_ID};
use parking_lot::Mutex;

use crate::vsockenc::pending::Pending;
use crate::vsockenc::receiver::{self, ReaderEvents};
use crate::vsockenc::transport::{Address, Stream};

/// How often a blocked read wakes up to look at the `closed` flag.
const READ_POLL: Duration = Duration::from_millis(500);

pub struct Connection {
    pub addr: Address,
    pub generation: u64,
    writer: Mutex<Stream>,
    /// Closed on purpose by the element (stop, replaced): no report.
    closing: AtomicBool,
    /// Set when the connection was found broken; the reason is reported.
    broken: Mutex<Option<String>>,
    /// A handle used only to shut the socket down from any thread.
    control: Stream,
    reader: Mutex<Option<JoinHandle<()>>>,
    times: Mutex<Times>,
    /// The negotiated extensions of this connection (nothing until the
    /// host answers our HELLO, nothing ever from a legacy host).
    pub ext: Mutex<GuestExt>,
}

/// Activity timestamps used by the keepalive.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub last_write: Instant,
    pub last_read: Instant,
    /// When the last PING went out, if nothing was read since.
    pub ping_outstanding: Option<Instant>,
}

impl Connection {
    /// Takes over a connected stream and starts its reader thread.
    pub fn start(
        addr: Address,
        generation: u64,
        stream: Stream,
        write_timeout: Duration,
        pending: Arc<Pending>,
        events: Arc<dyn ReaderEvents>,
    ) -> io::Result<Arc<Connection>> {
        stream.set_write_timeout(Some(write_timeout))?;
        let read_half = stream.try_clone()?;
        read_half.set_read_timeout(Some(READ_POLL))?;
        let control = stream.try_clone()?;
        let now = Instant::now();
        let conn = Arc::new(Connection {
            addr,
            generation,
            writer: Mutex::new(stream),
            closing: AtomicBool::new(false),
            broken: Mutex::new(None),
            control,
            reader: Mutex::new(None),
            times: Mutex::new(Times {
                last_write: now,
                last_read: now,
                ping_outstanding: None,
            }),
            ext: Mutex::new(GuestExt::new(0)),
        });
        let c = conn.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vsockenc-rx-{generation}"))
            .spawn(move || receiver::run(c, read_half, pending, events))?;
        *conn.reader.lock() = Some(handle);
        Ok(conn)
    }

    /// Whether nothing can be sent on it any more.
    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::SeqCst) || self.broken.lock().is_some()
    }

    /// Whether the element closed it on purpose.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Why it broke, if it did (first reason wins).
    pub fn broken_reason(&self) -> Option<String> {
        self.broken.lock().clone()
    }

    /// Declares the connection broken and wakes its reader, which then
    /// fails the frames in flight and reports `why`. Any thread.
    pub fn break_with(&self, why: impl Into<String>) {
        self.broken.lock().get_or_insert_with(|| why.into());
        self.control.shutdown();
    }

    /// Closes on purpose and waits for the reader thread (never call this
    /// from the reader thread).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.control.shutdown();
        if let Some(h) = self.reader.lock().take() {
            let _ = h.join();
        }
    }

    pub fn times(&self) -> Times {
        *self.times.lock()
    }

    pub(crate) fn note_read(&self) {
        let mut t = self.times.lock();
        t.last_read = Instant::now();
        t.ping_outstanding = None;
    }

    fn write_with<F>(&self, f: F) -> io::Result<usize>
    where
        F: FnOnce(&mut Stream) -> io::Result<usize>,
    {
        if self.is_closed() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection already closed",
            ));
        }
        let mut w = self.writer.lock();
        match f(&mut w) {
            Ok(n) => {
                self.times.lock().last_write = Instant::now();
                Ok(n)
            }
            Err(e) => {
                drop(w);
                self.break_with(format!(
                    "write failed: {}",
                    crate::vsockenc::transport::describe(&e)
                ));
                Err(e)
            }
        }
    }

    /// Sends a FRAME_REQUEST; `pixels` empty with a resource id sends no
    /// pixels. Returns bytes written.
    pub fn send_frame(&self, req: &FrameRequest, pixels: &[&[u8]]) -> io::Result<usize> {
        self.write_with(|w| hxfr::write::write_frame_request(w, LEGACY_SESSION_ID, req, pixels))
    }

    /// Announces the extensions the element supports: the first message on
    /// a connection. A legacy host skips it; ours answers HELLO_ACK.
    pub fn send_hello(&self, requested: u32) -> io::Result<usize> {
        let hello = {
            let mut ext = self.ext.lock();
            *ext = GuestExt::new(requested);
            ext.hello(
                crate::vsockenc::delta::TILE,
                crate::vsockenc::delta::TILE,
                concat!("vsockenc/", env!("CARGO_PKG_VERSION")),
            )
        };
        self.send_bytes(&ExtMessage::Hello(hello).encode(LEGACY_SESSION_ID))
    }

    /// Sends a COMPACT_FRAME (extension COMPACT).
    pub fn send_compact(&self, m: &mut CompactMessage<'_>) -> io::Result<usize> {
        self.write_with(|w| m.write_to(w))
    }

    /// Asks the host to answer every frame sent so far (extension DRAIN).
    pub fn send_drain(&self, token: u64) -> io::Result<usize> {
        self.send_bytes(&ExtMessage::Drain { token }.encode(LEGACY_SESSION_ID))
    }

    fn send_bytes(&self, bytes: &[u8]) -> io::Result<usize> {
        self.write_with(|w| {
            io::Write::write_all(w, bytes)?;
            Ok(bytes.len())
        })
    }

    pub fn send_config(&self, cfg: &ConfigRequest) -> io::Result<usize> {
        self.send_message(&Message::ConfigRequest(*cfg))
    }

    pub fn send_ping(&self) -> io::Result<usize> {
        // Marked before the write: the PONG may be read before the write
        // call returns.
        self.times
            .lock()
            .ping_outstanding
            .get_or_insert(Instant::now());
        self.send_message(&Message::Ping)
    }

    fn send_message(&self, m: &Message) -> io::Result<usize> {
        let bytes = m.encode(LEGACY_SESSION_ID);
        self.write_with(|w| {
            io::Write::write_all(w, &bytes)?;
            Ok(bytes.len())
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.control.shutdown();
    }
}
