//! A scripted HXFR peer (a fake `vsockenc-host`) for tests.
//!
//! Build one with [`PeerBuilder`], choosing how it answers: in order or
//! reordered, after a fixed or per-frame delay, with ERRORs, silence,
//! garbage bytes or a disconnect for chosen frames, with Annex-B, AVCC or
//! bare-NAL response chunks, and with canned access units (which carry the
//! request's PTS, see [`canned_pts`]) or real H.264 from an in-process
//! x264enc. Everything received is recorded ([`Record`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::prelude::*;
use hxfr::{ConfigRequest, Decoder, ErrorMessage, FrameRequest, FrameResponse, Message};

/// What the peer does with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer after the configured delay.
    Answer,
    /// Answer after this delay instead.
    AnswerAfter(Duration),
    /// Send an ERROR instead of a response.
    Error { code: i32, message: String },
    /// Never answer.
    Silence,
    /// Send these bytes (not HXFR) instead of a response.
    Garbage(Vec<u8>),
    /// Close the connection without answering.
    Disconnect,
}

/// The order responses leave in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By due time (request time plus delay).
    ByDueTime,
    /// Collect `n` answers, send them last first.
    Reverse(usize),
    /// Collect `batch` answers, send them in a pseudo-random order.
    Shuffle { batch: usize, seed: u64 },
}

/// How the access unit is cut into NAL chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One chunk, Annex-B with 4-byte start codes (current hosts).
    AnnexB,
    /// One chunk of 4-byte big-endian length-prefixed NALs (old VT host).
    Avcc,
    /// One chunk per NAL, no prefix at all.
    BareNal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Tiny fake access units carrying the request's PTS.
    Canned,
    /// Real H.264 from x264enc (decodable downstream).
    X264,
}

/// Facts about a frame, given to the script.
pub struct FrameInfo<'a> {
    /// Frames received so far on all connections, this one excluded.
    pub index: usize,
    /// Frames received so far on this connection, this one excluded.
    pub conn_index: usize,
    pub connection: usize,
    pub request: &'a FrameRequest,
}

type Script = Arc<dyn Fn(&FrameInfo) -> Action + Send + Sync>;
type DelayFn = Arc<dyn Fn(usize) -> Duration + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Received {
    pub connection: usize,
    pub request: FrameRequest,
    /// Pixel bytes that came with the request.
    pub pixel_len: usize,
    /// The pixels themselves, when the builder asked to keep them.
    pub pixels: Option<Vec<u8>>,
    pub at: Instant,
}

/// Everything the peer received and did.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub frames: Vec<Received>,
    pub configs: Vec<(usize, ConfigRequest)>,
    pub pings: usize,
    pub connections: usize,
    /// FRAME_RESPONSEs written.
    pub answered: usize,
    /// Most frames received and not answered yet at any time.
    pub max_outstanding: usize,
    outstanding: usize,
}

enum Listen {
    Unix(PathBuf),
    Tcp,
}

pub struct PeerBuilder {
    listen: Listen,
    delay: DelayFn,
    order: Order,
    style: Style,
    encoding: Encoding,
    script: Script,
    disconnect_after: Option<usize>,
    keep_pixels: bool,
    answer_ping: bool,
    own_pts_counter: bool,
}

impl PeerBuilder {
    fn new(listen: Listen) -> Self {
        PeerBuilder {
            listen,
            delay: Arc::new(|_| Duration::ZERO),
            order: Order::ByDueTime,
            style: Style::AnnexB,
            encoding: Encoding::Canned,
            script: Arc::new(|_| Action::Answer),
            disconnect_after: None,
            keep_pixels: false,
            answer_ping: true,
            own_pts_counter: false,
        }
    }

    /// Listens on a Unix socket (a stale file is removed first).
    pub fn unix(path: impl AsRef<Path>) -> Self {
        Self::new(Listen::Unix(path.as_ref().to_path_buf()))
    }

    /// Listens on TCP 127.0.0.1 on a free port.
    pub fn tcp() -> Self {
        Self::new(Listen::Tcp)
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Arc::new(move |_| d);
        self
    }

    /// Delay by global frame index.
    pub fn per_frame_delay(
        mut self,
        f: impl Fn(usize) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.delay = Arc::new(f);
        self
    }

    pub fn order(mut self, o: Order) -> Self {
        self.order = o;
        self
    }

    pub fn style(mut self, s: Style) -> Self {
        self.style = s;
        self
    }

    pub fn x264(mut self) -> Self {
        self.encoding = Encoding::X264;
        self
    }

    pub fn script(mut self, f: impl Fn(&FrameInfo) -> Action + Send + Sync + 'static) -> Self {
        self.script = Arc::new(f);
        self
    }

    /// Closes each connection after receiving `n` frames on it.
    pub fn disconnect_after(mut self, n: usize) -> Self {
        self.disconnect_after = Some(n);
        self
    }

    pub fn keep_pixels(mut self, keep: bool) -> Self {
        self.keep_pixels = keep;
        self
    }

    pub fn answer_ping(mut self, yes: bool) -> Self {
        self.answer_ping = yes;
        self
    }

    /// Answer with the peer's own PTS counter instead of echoing the PTS
    /// (one legacy host version did this).
    pub fn own_pts_counter(mut self) -> Self {
        self.own_pts_counter = true;
        self
    }

    pub fn start(self) -> Peer {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let conns: Arc<Mutex<Vec<PeerStream>>> = Arc::default();
        let (listener, path, port) = match &self.listen {
            Listen::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p).expect("bind test peer socket");
                l.set_nonblocking(true).unwrap();
                (PeerListener::Unix(l), Some(p.clone()), 0)
            }
            Listen::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind test peer port");
                l.set_nonblocking(true).unwrap();
                let port = l.local_addr().unwrap().port();
                (PeerListener::Tcp(l), None, port)
            }
        };
        let cfg = Arc::new(self);
        let ctx = Ctx {
            cfg: cfg.clone(),
            record: record.clone(),
            stop: stop.clone(),
            conns: conns.clone(),
            frame_counter: Arc::new(AtomicUsize::new(0)),
        };
        let accept = std::thread::spawn(move || accept_loop(listener, ctx));
        Peer {
            path,
            port,
            record,
            stop,
            conns,
            accept: Some(accept),
        }
    }
}

enum PeerListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

#[derive(Debug)]
enum PeerStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl PeerStream {
    fn try_clone(&self) -> io::Result<PeerStream> {
        Ok(match self {
            PeerStream::Unix(s) => PeerStream::Unix(s.try_clone()?),
            PeerStream::Tcp(s) => PeerStream::Tcp(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            PeerStream::Unix(s) => s.shutdown(Shutdown::Both),
            PeerStream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
    fn set_read_timeout(&self, d: Duration) {
        let _ = match self {
            PeerStream::Unix(s) => s.set_read_timeout(Some(d)),
            PeerStream::Tcp(s) => s.set_read_timeout(Some(d)),
        };
    }
}

impl Read for PeerStream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Unix(s) => s.read(b),
            PeerStream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Unix(s) => s.write(b),
            PeerStream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
struct Ctx {
    cfg: Arc<PeerBuilder>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<PeerStream>>>,
    frame_counter: Arc<AtomicUsize>,
}

/// A running peer; stops (closing every connection) when dropped.
pub struct Peer {
    path: Option<PathBuf>,
    port: u16,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<PeerStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Peer {
    pub fn socket_path(&self) -> &Path {
        self.path.as_deref().expect("not a Unix socket peer")
    }

    pub fn tcp_port(&self) -> u16 {
        self.port
    }

    pub fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds for the record.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Record) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if pred(&self.record.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Closes the connections that are open now (the listener stays).
    pub fn drop_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.shutdown();
        }
    }

    /// Stops listening, closes every connection, removes the socket file.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.drop_connections();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn accept_loop(listener: PeerListener, ctx: Ctx) {
    let mut workers = Vec::new();
    let mut n = 0;
    while !ctx.stop.load(Ordering::SeqCst) {
        let accepted = match &listener {
            PeerListener::Unix(l) => l.accept().map(|(s, _)| {
                s.set_nonblocking(false).unwrap();
                PeerStream::Unix(s)
            }),
            PeerListener::Tcp(l) => l.accept().map(|(s, _)| {
                s.set_nonblocking(false).unwrap();
                s.set_nodelay(true).unwrap();
                PeerStream::Tcp(s)
            }),
        };
        match accepted {
            Ok(s) => {
                ctx.conns.lock().unwrap().push(s.try_clone().unwrap());
                ctx.record.lock().unwrap().connections += 1;
                let c = ctx.clone();
                let id = n;
                n += 1;
                workers.push(std::thread::spawn(move || serve(s, id, c)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for c in ctx.conns.lock().unwrap().drain(..) {
        c.shutdown();
    }
    for w in workers {
        let _ = w.join();
    }
}

/// What the responder thread writes, and when.
struct Out {
    due: Instant,
    seq: u64,
    bytes: Vec<u8>,
    is_response: bool,
    /// Close the connection here (after everything due before).
    close: bool,
}

impl PartialEq for Out {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Out {}
impl PartialOrd for Out {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Out {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

fn serve(stream: PeerStream, connection: usize, ctx: Ctx) {
    let mut writer = stream.try_clone().unwrap();
    let control = stream.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<Out>();
    let record = ctx.record.clone();
    let stop = ctx.stop.clone();
    let responder = std::thread::spawn(move || {
        let mut heap: BinaryHeap<Reverse<Out>> = BinaryHeap::new();
        loop {
            let now = Instant::now();
            while heap.peek().is_some_and(|Reverse(o)| o.due <= now) {
                let Reverse(o) = heap.pop().unwrap();
                if o.close {
                    if let Ok(s) = writer.try_clone() {
                        s.shutdown();
                    }
                    return;
                }
                // Counted before the write: once the guest has the answer
                // it may send the next frame at once.
                if o.is_response {
                    let mut r = record.lock().unwrap();
                    r.answered += 1;
                    r.outstanding = r.outstanding.saturating_sub(1);
                }
                if writer.write_all(&o.bytes).is_err() {
                    return;
                }
            }
            let wait = heap
                .peek()
                .map(|Reverse(o)| o.due.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(20))
                .min(Duration::from_millis(20));
            match rx.recv_timeout(wait) {
                Ok(o) => heap.push(Reverse(o)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if heap.is_empty() {
                        return;
                    }
                }
            }
        }
    });

    let mut reader = stream;
    reader.set_read_timeout(Duration::from_millis(50));
    let mut dec = Decoder::default();
    let mut seq = 0u64;
    let mut conn_index = 0usize;
    let mut batch: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut batch_started: Option<Instant> = None;
    let mut x264: Option<X264> = None;
    let mut pts_counter = 0i64;
    let mut rng = 0u64;
    let cfg = ctx.cfg.clone();
    let send_out = |due: Instant, bytes: Vec<u8>, is_response: bool, close: bool, seq: &mut u64| {
        *seq += 1;
        let _ = tx.send(Out {
            due,
            seq: *seq,
            bytes,
            is_response,
            close,
        });
    };
    let send = |due: Instant, bytes: Vec<u8>, is_response: bool, seq: &mut u64| {
        send_out(due, bytes, is_response, false, seq)
    };
    loop {
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        // Release a partial batch that waited too long (EOS, timeouts).
        if batch_started.is_some_and(|t| t.elapsed() > Duration::from_millis(300)) {
            flush_batch(&mut batch, cfg.order, &mut rng, &mut |d, b| {
                send(d, b, true, &mut seq)
            });
            batch_started = None;
        }
        let msg = match dec.read_from(&mut reader) {
            Ok(Some((_, m))) => m,
            Ok(None) => break,
            Err(e) if e.is_timeout() => continue,
            Err(_) => break,
        };
        match msg {
            Message::FrameRequest { request, pixels } => {
                let index = ctx.frame_counter.fetch_add(1, Ordering::SeqCst);
                {
                    let mut r = ctx.record.lock().unwrap();
                    r.frames.push(Received {
                        connection,
                        request,
                        pixel_len: pixels.as_ref().map_or(0, |p| p.len()),
                        pixels: if cfg.keep_pixels {
                            pixels.clone()
                        } else {
                            None
                        },
                        at: Instant::now(),
                    });
                    r.outstanding += 1;
                    r.max_outstanding = r.max_outstanding.max(r.outstanding);
                }
                let info = FrameInfo {
                    index,
                    conn_index,
                    connection,
                    request: &request,
                };
                let action = (cfg.script)(&info);
                let first = conn_index == 0;
                conn_index += 1;
                let now = Instant::now();
                match action {
                    Action::Answer | Action::AnswerAfter(_) => {
                        let delay = match action {
                            Action::AnswerAfter(d) => d,
                            _ => (cfg.delay)(index),
                        };
                        let (au, key) = match cfg.encoding {
                            Encoding::Canned => {
                                let key = request.force_keyframe || first;
                                (canned_au(request.pts, key), key)
                            }
                            Encoding::X264 => x264
                                .get_or_insert_with(|| X264::new(&request))
                                .encode(&request, pixels.as_deref().unwrap_or(&[]), first),
                        };
                        let pts = if cfg.own_pts_counter {
                            pts_counter += 1;
                            pts_counter * 1000 + 7
                        } else {
                            request.pts
                        };
                        let resp = FrameResponse {
                            pts,
                            dts: pts,
                            is_keyframe: key,
                            chunks: chunks(&au, cfg.style),
                        };
                        let bytes = Message::FrameResponse(resp).encode(1);
                        if cfg.order == Order::ByDueTime {
                            send(now + delay, bytes, true, &mut seq);
                        } else {
                            batch.push((now + delay, bytes));
                            batch_started.get_or_insert(now);
                            let n = match cfg.order {
                                Order::Reverse(n) => n,
                                Order::Shuffle { batch, .. } => batch,
                                Order::ByDueTime => 1,
                            };
                            if batch.len() >= n {
                                flush_batch(&mut batch, cfg.order, &mut rng, &mut |d, b| {
                                    send(d, b, true, &mut seq)
                                });
                                batch_started = None;
                            }
                        }
                    }
                    Action::Error { code, message } => {
                        let bytes = Message::Error(ErrorMessage::new(code, message)).encode(1);
                        send(now + (cfg.delay)(index), bytes, true, &mut seq);
                    }
                    Action::Silence => {}
                    Action::Garbage(g) => send(now, g, false, &mut seq),
                    Action::Disconnect => {
                        // Answers already due go out first; later ones are lost.
                        send_out(Instant::now(), Vec::new(), false, true, &mut seq);
                        break;
                    }
                }
                if cfg.disconnect_after.is_some_and(|n| conn_index >= n) {
                    send_out(Instant::now(), Vec::new(), false, true, &mut seq);
                    break;
                }
            }
            Message::ConfigRequest(c) => ctx.record.lock().unwrap().configs.push((connection, c)),
            Message::Ping => {
                ctx.record.lock().unwrap().pings += 1;
                if cfg.answer_ping {
                    send(Instant::now(), Message::Pong.encode(1), false, &mut seq);
                }
            }
            _ => {}
        }
    }

    drop(tx);
    let _ = responder.join();
    control.shutdown();
}

fn flush_batch(
    batch: &mut Vec<(Instant, Vec<u8>)>,
    order: Order,
    rng: &mut u64,
    send: &mut dyn FnMut(Instant, Vec<u8>),
) {
    if batch.is_empty() {
        return;
    }
    let due = batch.iter().map(|(d, _)| *d).max().unwrap();
    let mut items: Vec<Vec<u8>> = batch.drain(..).map(|(_, b)| b).collect();
    match order {
        Order::Reverse(_) => items.reverse(),
        Order::Shuffle { seed, .. } => {
            if *rng == 0 {
                *rng = seed | 1;
            }
            for i in (1..items.len()).rev() {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                items.swap(i, (*rng % (i as u64 + 1)) as usize);
            }
        }
        Order::ByDueTime => {}
    }
    for b in items {
        send(due, b);
    }
}

/// A fake SPS NAL (type 7).
pub const CANNED_SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80];
/// A fake PPS NAL (type 8).
pub const CANNED_PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

/// The NAL units of a canned access unit: SPS, PPS and an IDR slice for a
/// keyframe, a non-IDR slice otherwise; the slice carries the PTS as hex
/// digits (no zero bytes, so no false start codes).
pub fn canned_nals(pts: i64, key: bool) -> Vec<Vec<u8>> {
    let mut slice = vec![if key { 0x65 } else { 0x41 }, 0x88];
    slice.extend_from_slice(format!("P{pts:016x}").as_bytes());
    if key {
        vec![CANNED_SPS.to_vec(), CANNED_PPS.to_vec(), slice]
    } else {
        vec![slice]
    }
}

/// The canned access unit in Annex-B form.
pub fn canned_au(pts: i64, key: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for n in canned_nals(pts, key) {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&n);
    }
    out
}

/// The PTS a canned access unit carries, if `au` is one.
pub fn canned_pts(au: &[u8]) -> Option<i64> {
    let i = au
        .windows(2)
        .position(|w| w == b"P0" || (w[0] == b'P' && w[1].is_ascii_hexdigit()))?;
    let hex = std::str::from_utf8(au.get(i + 1..i + 17)?).ok()?;
    i64::from_str_radix(hex, 16).ok()
}

/// Cuts an Annex-B access unit into chunks of the given style.
pub fn chunks(au: &[u8], style: Style) -> Vec<Vec<u8>> {
    let nals: Vec<Vec<u8>> = hxfr::nal::split_annexb(au)
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| n.to_vec())
        .collect();
    match style {
        Style::AnnexB => vec![au.to_vec()],
        Style::Avcc => {
            let mut c = Vec::new();
            for n in &nals {
                c.extend_from_slice(&(n.len() as u32).to_be_bytes());
                c.extend_from_slice(n);
            }
            vec![c]
        }
        Style::BareNal => nals,
    }
}

/// An in-process x264enc for one connection.
struct X264 {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    sink: gst_app::AppSink,
    format: gst_video::VideoFormat,
    n: u64,
}

impl X264 {
    fn new(req: &FrameRequest) -> X264 {
        let format = match hxfr::WireFormat::from_fourcc(req.format) {
            Some(hxfr::WireFormat::Bgra) => gst_video::VideoFormat::Bgrx,
            Some(hxfr::WireFormat::Rgba) => gst_video::VideoFormat::Rgbx,
            _ => gst_video::VideoFormat::Nv12,
        };
        let caps = gst_video::VideoCapsBuilder::new()
            .format(format)
            .width(req.width as i32)
            .height(req.height as i32)
            .framerate(gst::Fraction::new(30, 1))
            .build();
        let pipeline = gst::parse::launch(
            "appsrc name=src format=time ! videoconvert ! \
             x264enc tune=zerolatency speed-preset=ultrafast key-int-max=100000 ! \
             video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false",
        )
        .expect("x264 pipeline")
        .downcast::<gst::Pipeline>()
        .unwrap();
        let src = pipeline
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        src.set_caps(Some(&caps));
        let sink = pipeline
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        X264 {
            pipeline,
            src,
            sink,
            format,
            n: 0,
        }
    }

    fn encode(&mut self, req: &FrameRequest, pixels: &[u8], first: bool) -> (Vec<u8>, bool) {
        let (w, h, stride) = (req.width, req.height, req.stride as usize);
        let mut buf = gst::Buffer::from_mut_slice(pixels.to_vec());
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(self.n * 33));
            let (offsets, strides): (Vec<usize>, Vec<i32>) = match self.format {
                gst_video::VideoFormat::Nv12 => (
                    vec![0, stride * h as usize],
                    vec![stride as i32, stride as i32],
                ),
                _ => (vec![0], vec![stride as i32]),
            };
            gst_video::VideoMeta::add_full(
                b,
                gst_video::VideoFrameFlags::empty(),
                self.format,
                w,
                h,
                &offsets,
                &strides,
            )
            .unwrap();
        }
        self.n += 1;
        if req.force_keyframe && !first {
            let ev = gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            self.sink.static_pad("sink").unwrap().push_event(ev);
        }
        self.src.push_buffer(buf).unwrap();
        let sample = self
            .sink
            .try_pull_sample(gst::ClockTime::from_seconds(10))
            .expect("x264enc produced no output within 10 s");
        let out = sample.buffer().unwrap();
        let key = !out.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let bytes = out.map_readable().unwrap().to_vec();
        (bytes, key)
    }
}

impl Drop for X264 {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
