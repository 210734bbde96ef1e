//! One live connection to the host: the serialized writer, the per-connection
//! negotiation state and the handle of its reader thread.
//!
//! Every write (frames, CONFIG_REQ, PING, extension messages) goes through
//! one writer mutex, so messages never interleave. A write that fails or
//! times out leaves the byte stream in an unknown state, so the connection is
//! shut down; its reader then sees the end of the stream and fails the frames
//! still in flight on it. A connection is never reused after that: the link
//! makes a new one with the next generation number, and pending frames
//! remember the generation they were sent on.
//!
//! Shutting the socket down (`close`, `break_with`) is what makes stopping
//! independent of the host: a write blocked on a host that does not read, and
//! a read waiting for one that does not answer, both return at once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hxfr::compact::CompactMessage;
use hxfr::ext::{ExtMessage, GuestExt};
use hxfr::{ConfigRequest, FrameRequest, Message, LEGACY_SESSION_ID};
use parking_lot::Mutex;

use super::shm::{Region, ShmLink};
use super::transport::{self, Address, ReadHalf, Stream};
use super::write_gate::WriteGate;

/// How long the reader sleeps at most before it looks at its flags again (a
/// shutdown wakes it at once; this only bounds the wait if a platform does
/// not).
const READ_IDLE: Duration = Duration::from_millis(500);

pub struct Connection {
    pub addr: Address,
    pub generation: u64,
    writer: Mutex<Stream>,
    /// Told when a write begins and ends, for the reader (TCP and AF_VSOCK).
    gate: Option<Arc<WriteGate>>,
    /// Closed on purpose by the element (stop, replaced): no report.
    closing: AtomicBool,
    /// The host refused to serve this guest (and closes the connection).
    refused: AtomicBool,
    /// Why the connection was found broken (the first reason wins).
    broken: OnceLock<String>,
    /// A handle used only to shut the socket down from any thread.
    control: Stream,
    reader: Mutex<Option<JoinHandle<()>>>,
    times: Mutex<Times>,
    /// The negotiated extensions of this connection (nothing until the
    /// host answers our HELLO, nothing ever from a legacy host).
    pub ext: Mutex<GuestExt>,
    /// The shared-memory offer and the slots the host holds (a leaf lock
    /// like `ext`).
    pub shm: Mutex<ShmLink>,
}

/// Activity timestamps used by the keepalive.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub last_write: Instant,
    /// When the last PING went out, if nothing was read since.
    pub ping_outstanding: Option<Instant>,
}

impl Connection {
    /// Takes over a connected stream. Returns the connection and the read
    /// half for its reader thread (see [`Connection::set_reader`]).
    pub fn new(
        addr: Address,
        generation: u64,
        stream: Stream,
        write_timeout: Duration,
        region: Option<Arc<Region>>,
    ) -> io::Result<(Arc<Connection>, ReadHalf)> {
        stream.set_write_timeout(Some(write_timeout))?;
        let gate = stream
            .send_and_receive_share_a_lock()
            .then(|| Arc::new(WriteGate::default()));
        let read_half = ReadHalf::new(stream.try_clone()?, READ_IDLE, gate.clone());
        let control = stream.try_clone()?;
        let conn = Arc::new(Connection {
            addr,
            generation,
            writer: Mutex::new(stream),
            gate,
            closing: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            broken: OnceLock::new(),
            control,
            reader: Mutex::new(None),
            times: Mutex::new(Times {
                last_write: Instant::now(),
                ping_outstanding: None,
            }),
            ext: Mutex::new(GuestExt::new(0)),
            shm: Mutex::new(ShmLink::new(region)),
        });
        Ok((conn, read_half))
    }

    /// Hands over the reader thread, joined by [`Connection::close`].
    pub fn set_reader(&self, handle: JoinHandle<()>) {
        *self.reader.lock() = Some(handle);
    }

    /// Whether nothing can be sent on it any more.
    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::SeqCst) || self.broken.get().is_some()
    }

    /// Whether the element closed it on purpose.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn mark_refused(&self) {
        self.refused.store(true, Ordering::SeqCst);
    }

    /// Whether the host refused to serve this guest on this connection.
    pub fn was_refused(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
    }

    /// Why it broke, if it did.
    pub fn broken_reason(&self) -> Option<String> {
        self.broken.get().cloned()
    }

    /// Declares the connection broken and wakes its reader, which then
    /// fails the frames in flight and reports `why`. Any thread.
    pub fn break_with(&self, why: impl Into<String>) {
        let _ = self.broken.set(why.into());
        self.control.shutdown();
    }

    /// Marks it closed on purpose and shuts the socket down: a write or a
    /// read blocked on it returns at once. Does not wait.
    pub fn shut_down(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.control.shutdown();
    }

    /// Shuts it down and waits for the reader thread (never call this from
    /// the reader thread, nor while holding the state mutex: the reader
    /// takes it).
    pub fn close(&self) {
        self.shut_down();
        let reader = self.reader.lock().take();
        if let Some(h) = reader {
            let _ = h.join();
        }
    }

    pub fn times(&self) -> Times {
        *self.times.lock()
    }

    /// Something arrived from the host: it is alive.
    pub fn note_read(&self) {
        self.times.lock().ping_outstanding = None;
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
        if let Some(g) = &self.gate {
            g.begin();
        }
        let written = f(&mut w);
        if let Some(g) = &self.gate {
            g.end();
        }
        match written {
            Ok(n) => {
                self.times.lock().last_write = Instant::now();
                Ok(n)
            }
            Err(e) => {
                drop(w);
                let why = format!("write failed: {}", transport::describe(&e));
                if transport::is_host_absent(&e) {
                    // The host closed its end: what it sent before (an
                    // ERROR saying why) is still to be read, and the reader
                    // then sees the end of the stream on its own.
                    let _ = self.broken.set(why);
                    self.control.shutdown_write();
                } else {
                    self.break_with(why);
                }
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
    pub fn send_hello(
        &self,
        requested: u32,
        codec: hxfr::Codec,
        tile: u16,
        agent: &str,
    ) -> io::Result<usize> {
        let hello = {
            let mut ext = self.ext.lock();
            *ext = GuestExt::with_codec(requested, codec);
            ext.hello(tile, tile, agent)
        };
        self.send_bytes(&ExtMessage::Hello(hello).encode(LEGACY_SESSION_ID))
    }

    /// Sends a COMPACT_FRAME (extension COMPACT).
    pub fn send_compact(&self, m: &mut CompactMessage<'_>) -> io::Result<usize> {
        self.write_with(|w| m.write_to(w))
    }

    /// Offers the region (extension SHM); a memfd goes with the message.
    pub fn send_shm_offer(
        &self,
        offer: &hxfr::shm::ShmOffer,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> io::Result<usize> {
        let bytes = ExtMessage::ShmOffer(*offer).encode(LEGACY_SESSION_ID);
        match fd {
            Some(fd) => self.write_with(|w| w.write_all_with_fd(&bytes, fd).map(|_| bytes.len())),
            None => self.send_bytes(&bytes),
        }
    }

    /// Describes a frame whose pixels are in a slot (extension SHM).
    pub fn send_shm_frame(&self, f: &hxfr::shm::ShmFrame) -> io::Result<usize> {
        self.send_bytes(&f.encode(LEGACY_SESSION_ID))
    }

    /// Asks the host for a profile (extension PROFILE).
    pub fn send_profile_request(&self, req: hxfr::ext::ProfileRequest) -> io::Result<usize> {
        self.send_bytes(&ExtMessage::ProfileRequest(req).encode(LEGACY_SESSION_ID))
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

    /// A PING that only asks what kind of host this is (sent right after
    /// the HELLO): a host that does not answer it is not dropped for that;
    /// the keepalive has its own PINGs.
    pub fn send_probe_ping(&self) -> io::Result<usize> {
        self.send_message(&Message::Ping)
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
        self.send_bytes(&m.encode(LEGACY_SESSION_ID))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.control.shutdown();
    }
}
