//! DMA-BUF input. The virtio-gpu path (resource id, no pixels) needs a
//! virtio-gpu VM; here a memfd wrapped as DMA-BUF memory takes the
//! fallback: the pixels are mapped and sent, and must arrive intact.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use common::peer::PeerBuilder;
use common::*;
use gst_allocators::prelude::*;

const W: u32 = 64;
const H: u32 = 48;
const STRIDE: u32 = 320; // padded: 64 * 4 = 256 bytes of pixels per row

fn memfd_with(bytes: &[u8]) -> OwnedFd {
    let name = c"vsockenc-test";
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, bytes).unwrap();
    OwnedFd::from(f)
}

fn dmabuf_frame(seed: u8, pts: gst::ClockTime) -> (gst::Buffer, Vec<u8>) {
    let size = (STRIDE * H) as usize;
    let bytes: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect();
    let fd = memfd_with(&bytes);
    let alloc = gst_allocators::DmaBufAllocator::new();
    // SAFETY: the allocator takes ownership of the fd.
    let mem = unsafe { alloc.alloc_dmabuf(fd, size) }.unwrap();
    assert!(mem.is_memory_type::<gst_allocators::DmaBufMemory>());
    let mut buf = gst::Buffer::new();
    {
        let b = buf.get_mut().unwrap();
        b.append_memory(mem);
        b.set_pts(pts);
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::Bgrx,
            W,
            H,
            &[0],
            &[STRIDE as i32],
        )
        .unwrap();
    }
    (buf, bytes)
}

#[test]
fn dmabuf_that_is_not_a_virtio_gpu_resource_falls_back_to_pixels() {
    let path = socket_path("dmabuf");
    let peer = PeerBuilder::unix(&path).keep_pixels(true).start();
    let mut h = harness(&path, &[]);
    h.set_src_caps(
        gst_video::VideoCapsBuilder::new()
            .features([gst_allocators::CAPS_FEATURE_MEMORY_DMABUF])
            .format(gst_video::VideoFormat::Bgrx)
            .width(W as i32)
            .height(H as i32)
            .framerate(gst::Fraction::new(30, 1))
            .build(),
    );
    h.play();
    let mut sent = Vec::new();
    for i in 0..3u64 {
        let (buf, bytes) = dmabuf_frame(i as u8, gst::ClockTime::from_mseconds(i * 33));
        sent.push(bytes);
        h.push(buf).unwrap();
    }
    for i in 0..3u64 {
        let b = pull(&mut h, Duration::from_secs(20)).expect("output");
        assert_eq!(b.pts(), Some(gst::ClockTime::from_mseconds(i * 33)));
    }
    let rec = peer.record();
    assert_eq!(rec.frames.len(), 3);
    for (f, bytes) in rec.frames.iter().zip(&sent) {
        assert_eq!(
            f.request.resource_id, 0,
            "no virtio-gpu here: pixels instead"
        );
        assert_eq!(
            f.request.stride, STRIDE,
            "the DMA-BUF's stride from its video meta"
        );
        assert_eq!(
            f.pixels.as_deref().unwrap(),
            &bytes[..],
            "pixels arrive intact"
        );
    }
}
