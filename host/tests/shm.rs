//! Shared-memory frames against the real daemon, from a raw guest: the
//! region handshake (a sealed memfd passed over the Unix socket), slot
//! descriptions the daemon must refuse without reading a byte or
//! disturbing anything, a good frame after them encoded from the slot
//! (its FRAME_CHECKSUM equal to the guest's) and its slot released, and
//! offers the daemon refuses: an unsealed memfd, a memfd offer without a
//! descriptor, shared memory over TCP without a bound region.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use common::*;
use hxfr::compact::{self, Frame};
use hxfr::ext::{ext_bits, ExtMessage, Hello};
use hxfr::shm::{RegionHeader, RegionKind, ShmFrame, ShmOffer, SlotPlane, DATA_OFFSET};
use hxfr::{Decoded, Decoder, FrameRequest, Limits, Message, WireFormat};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

const REGION: u64 = 8 << 20;
const NONCE: [u8; 16] = *b"0123456789abcdef";

struct Guest {
    s: UnixStream,
    d: Decoder,
}

impl Guest {
    fn connect(path: &std::path::Path, ext: u32) -> (Guest, u32) {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut g = Guest {
            s,
            d: Decoder::with_extensions(Limits::default()),
        };
        g.send(
            &ExtMessage::Hello(Hello {
                version: 1,
                extensions: ext,
                agent: "shm-test".into(),
                ..Default::default()
            })
            .encode(1),
        );
        let accepted = match g.recv() {
            Decoded::Ext(_, ExtMessage::HelloAck(a)) => a.extensions,
            other => panic!("expected HELLO_ACK, got {other:?}"),
        };
        (g, accepted)
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    fn recv(&mut self) -> Decoded {
        match self.d.read_from_ext(&mut self.s) {
            Ok(Some(d)) => d,
            other => panic!("no message: {other:?}"),
        }
    }

    fn offer(&mut self, fd: Option<&OwnedFd>) -> hxfr::shm::ShmAck {
        let bytes = ExtMessage::ShmOffer(ShmOffer {
            token: 5,
            kind: RegionKind::Memfd,
            region_size: REGION,
            nonce: NONCE,
        })
        .encode(1);
        match fd {
            Some(fd) => {
                let fds = [fd.as_raw_fd()];
                let n = sendmsg::<()>(
                    self.s.as_raw_fd(),
                    &[std::io::IoSlice::new(&bytes)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .unwrap();
                self.send(&bytes[n..]);
            }
            None => self.send(&bytes),
        }
        match self.recv() {
            Decoded::Ext(_, ExtMessage::ShmAck(a)) => a,
            other => panic!("expected SHM_ACK, got {other:?}"),
        }
    }
}

fn memfd(seal: bool) -> OwnedFd {
    let fd = memfd_create("shm-test", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&fd, REGION as i64).unwrap();
    let h = RegionHeader {
        region_size: REGION,
        nonce: NONCE,
    };
    nix::sys::uio::pwrite(&fd, &h.to_bytes(), 0).unwrap();
    if seal {
        fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
    }
    fd
}

/// An NV12 64x48 frame at `offset` of the region, tightly packed.
fn nv12_frame(slot: u32, offset: u64, pts: i64) -> ShmFrame {
    let (w, h) = (64u32, 48u32);
    let mut planes = [SlotPlane::default(); 3];
    planes[0] = SlotPlane {
        offset: 0,
        stride: w,
    };
    planes[1] = SlotPlane {
        offset: w * h,
        stride: w,
    };
    ShmFrame {
        request: FrameRequest {
            width: w,
            height: h,
            format: WireFormat::Nv12.fourcc(),
            stride: w,
            pts,
            duration: 33_333_333,
            ..Default::default()
        },
        slot,
        n_planes: 2,
        slot_offset: offset,
        slot_len: (w * h * 3 / 2) as u64,
        planes,
    }
}

fn unix_daemon(name: &str) -> (Daemon, std::path::PathBuf) {
    let path = scratch(name).join("host.sock");
    let listen = format!("unix:{}", path.display());
    (Daemon::start(&["--listen", &listen]), path)
}

#[test]
fn malformed_slot_descriptions_get_error_pts_and_change_nothing() {
    init();
    let (daemon, path) = unix_daemon("shm-malformed");
    let want = ext_bits::SHM | ext_bits::ERROR_PTS | ext_bits::FRAME_CHECKSUM;
    let (mut g, accepted) = Guest::connect(&path, want);
    assert_eq!(accepted, want);
    let fd = memfd(true);
    let pixels: Vec<u8> = (0..64 * 48 * 3 / 2).map(|i| (i * 7 % 251) as u8).collect();
    nix::sys::uio::pwrite(&fd, &pixels, DATA_OFFSET as i64).unwrap();
    let ack = g.offer(Some(&fd));
    assert!(ack.accepted, "{ack:?}");
    assert_eq!(ack.token, 5);

    let good = nv12_frame(1, DATA_OFFSET, 0);
    let mut bad = Vec::new();
    let mut b = good;
    b.slot_offset = 0;
    bad.push((b, "data area"));
    let mut b = good;
    b.slot_offset = REGION - 100;
    bad.push((b, "data area"));
    let mut b = good;
    b.slot_offset = u64::MAX - 10;
    bad.push((b, "data area"));
    let mut b = good;
    b.planes[1].offset = u32::MAX - 5;
    bad.push((b, "plane 1"));
    let mut b = good;
    b.planes[0].stride = 10;
    bad.push((b, "stride 10 is below"));
    let mut b = good;
    b.request.format = 0xdead_beef;
    bad.push((b, "unknown pixel format"));
    let mut b = good;
    b.n_planes = 3;
    bad.push((b, "the frame names 3"));
    let mut b = good;
    b.request.width = 100_000;
    bad.push((b, "outside"));
    for (i, (f, why)) in bad.iter().enumerate() {
        let mut f = *f;
        f.request.pts = 1000 + i as i64;
        g.send(&ExtMessage::ShmFrame(f).encode(1));
        match g.recv() {
            Decoded::Ext(_, ExtMessage::ErrorPts(e)) => {
                assert_eq!(e.pts, f.request.pts);
                assert_eq!(e.frame_index, i as u32);
                assert!(e.message.contains(why), "{why:?} not in {:?}", e.message);
            }
            other => panic!("frame {i}: expected ERROR_PTS, got {other:?}"),
        }
    }
    // The connection and the region still serve the good frame.
    g.send(&ExtMessage::ShmFrame(nv12_frame(1, DATA_OFFSET, 77)).encode(1));
    let index = bad.len() as u32;
    let layout_frame = Frame::new(
        WireFormat::Nv12,
        64,
        48,
        &[&pixels[..64 * 48], &pixels[64 * 48..]],
        &[64, 64],
    )
    .unwrap();
    let (mut checksum, mut response, mut release) = (None, None, None);
    while checksum.is_none() || response.is_none() || release.is_none() {
        match g.recv() {
            Decoded::Ext(_, ExtMessage::FrameChecksum(c)) => checksum = Some(c),
            Decoded::Ext(_, ExtMessage::ShmRelease(r)) => release = Some(r),
            Decoded::Legacy(_, Message::FrameResponse(r)) => response = Some(r),
            other => panic!("unexpected {other:?}"),
        }
    }
    let c = checksum.unwrap();
    assert_eq!(c.frame_index, index);
    assert_eq!(
        c.checksum,
        compact::checksum(&layout_frame),
        "the daemon read the slot"
    );
    let r = response.unwrap();
    assert_eq!(r.pts, 77);
    assert!(r.is_keyframe && !r.annexb().is_empty());
    let rel = release.unwrap();
    assert_eq!((rel.slot, rel.frame_index), (1, index));
    // Once released, the slot may be named again.
    g.send(&ExtMessage::ShmFrame(nv12_frame(1, DATA_OFFSET, 78)).encode(1));
    loop {
        if let Decoded::Legacy(_, Message::FrameResponse(r)) = g.recv() {
            assert_eq!(r.pts, 78);
            break;
        }
    }
    daemon.wait_log("shared memory in use: memfd of 8 MiB");
}

#[test]
fn offers_the_daemon_cannot_trust_are_refused() {
    init();
    let (_daemon, path) = unix_daemon("shm-refused");
    let want = ext_bits::SHM | ext_bits::ERROR_PTS;
    // A memfd that could shrink under the daemon's mapping.
    let (mut g, _) = Guest::connect(&path, want);
    let ack = g.offer(Some(&memfd(false)));
    assert!(!ack.accepted);
    assert!(ack.reason.contains("F_SEAL_SHRINK"), "{}", ack.reason);
    g.send(&ExtMessage::ShmFrame(nv12_frame(0, DATA_OFFSET, 5)).encode(1));
    match g.recv() {
        Decoded::Ext(_, ExtMessage::ErrorPts(e)) => {
            assert!(
                e.message.contains("no shared-memory region"),
                "{}",
                e.message
            )
        }
        other => panic!("expected ERROR_PTS, got {other:?}"),
    }
    // A memfd offer whose descriptor did not come (fd passing refused on
    // the way): refused, and the guest goes on over the socket.
    let (mut g, _) = Guest::connect(&path, want);
    let ack = g.offer(None);
    assert!(!ack.accepted);
    assert!(ack.reason.contains("no descriptor"), "{}", ack.reason);
    let f = test_frame(Fmt::Nv12, 64, 48, 64, 0, 1);
    hxfr::write::write_frame_request(&mut g.s, 1, &f.request(9, false), &[&f.pixels]).unwrap();
    loop {
        if let Decoded::Legacy(_, Message::FrameResponse(r)) = g.recv() {
            assert_eq!(r.pts, 9);
            break;
        }
    }
}

#[test]
fn no_shared_memory_over_tcp_without_a_bound_region() {
    init();
    let daemon = Daemon::start(&["--listen", "tcp:127.0.0.1:0"]);
    let mut c = std::net::TcpStream::connect(daemon.tcp()).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(
        &ExtMessage::Hello(Hello {
            version: 1,
            extensions: ext_bits::SHM | ext_bits::DRAIN,
            ..Default::default()
        })
        .encode(1),
    )
    .unwrap();
    let mut d = Decoder::with_extensions(Limits::default());
    match d.read_from_ext(&mut c).unwrap() {
        Some(Decoded::Ext(_, ExtMessage::HelloAck(a))) => {
            assert_eq!(a.extensions, ext_bits::DRAIN, "no SHM without a region")
        }
        other => panic!("{other:?}"),
    }
}

/// A guest that keeps rewriting its slots while they are encoded spoils
/// only its own pictures: its frames are still answered, the daemon stays
/// up, and another guest's frames are encoded from exactly its pixels.
#[test]
fn rewriting_slots_mid_encode_spoils_only_that_guests_pictures() {
    init();
    let (mut daemon, path) = unix_daemon("shm-rewrite");
    let (mut a, _) = Guest::connect(&path, ext_bits::SHM | ext_bits::ERROR_PTS);
    let fd = memfd(true);
    assert!(a.offer(Some(&fd)).accepted);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let fd = fd.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v = v.wrapping_add(37);
                let junk = vec![v; 16 * 4608];
                nix::sys::uio::pwrite(&fd, &junk, DATA_OFFSET as i64).unwrap();
            }
        })
    };
    let (mut b, _) = Guest::connect(&path, ext_bits::FRAME_CHECKSUM | ext_bits::ERROR_PTS);
    let n = 20;
    for i in 0..n {
        // Guest A: slots over the 16 places of the region being rewritten
        // (fresh ids: a slot id comes back only with its release).
        let f = nv12_frame(i, DATA_OFFSET + (i % 16) as u64 * 4608, i as i64);
        a.send(&ExtMessage::ShmFrame(f).encode(1));
        // Guest B: ordinary frames, checked by checksum.
        let t = test_frame(Fmt::Nv12, 64, 48, 64, i, 3);
        hxfr::write::write_frame_request(&mut b.s, 1, &t.request(i as i64, false), &[&t.pixels])
            .unwrap();
        let frame = Frame::new(
            WireFormat::Nv12,
            64,
            48,
            &[&t.pixels[..64 * 48], &t.pixels[64 * 48..]],
            &[64, 64],
        )
        .unwrap();
        let mut got = (false, false);
        while !(got.0 && got.1) {
            match b.recv() {
                Decoded::Ext(_, ExtMessage::FrameChecksum(c)) => {
                    assert_eq!(
                        c.checksum,
                        compact::checksum(&frame),
                        "frame {i} of guest B"
                    );
                    got.0 = true;
                }
                Decoded::Legacy(_, Message::FrameResponse(r)) => {
                    assert_eq!(r.pts, i as i64);
                    got.1 = true;
                }
                other => panic!("guest B: unexpected {other:?}"),
            }
        }
    }
    // Guest A's frames were all answered (pictures of whatever was there).
    let mut answered = 0;
    let mut released = 0;
    while answered < n || released < n {
        match a.recv() {
            Decoded::Legacy(_, Message::FrameResponse(_)) => answered += 1,
            Decoded::Ext(_, ExtMessage::ShmRelease(_)) => released += 1,
            Decoded::Ext(_, ExtMessage::ErrorPts(e)) => panic!("guest A: {}", e.message),
            other => panic!("guest A: unexpected {other:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    daemon.assert_alive();
}
